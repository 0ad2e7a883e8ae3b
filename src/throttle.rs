//! The limits stage, between authorization and forwarding: per-key rate
//! (429 `rate_limited`), budget on cost-incurring routes (402
//! `budget_exceeded`), per-tenant daily quota (429 `quota_exceeded`), in
//! that order, so a refused request consumes neither quota nor spend. A
//! refused request never reaches the upstream.
//!
//! Before authentication it also refuses sources that sent too many bad
//! credentials (429, no key lookup), and after the response it adds the
//! cost the upstream reported to the tenant's and project's spend.
//!
//! The proxy port and the admin port count failed authentications in
//! separate tables ([`Port`]): behind an ingress every proxy client may
//! share one address, and a flood of bad keys there must not lock the
//! operators out of the admin port (nor the other way round).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use prometheus_client::encoding::DescriptorEncoder;

use crate::authn::AuthnError;
use crate::authz::Permit;
use crate::config::{BudgetConfig, RateLimitConfig};
use crate::metrics;
use crate::model::Tenant;
use crate::principal::Authenticated;
use crate::rate_limit::failed_auth::{Blocked, FailedAuth};
use crate::rate_limit::redis::{Ask, BudgetAsk, RedisLimits, Refused as SharedRefused};
use crate::rate_limit::{LimiterError, RateLimiter, RateStatus};
use crate::response::{ErrorResponse, Problem};
use crate::usage::{self, AdmitError, Usage};

/// Why a request was held back.
#[derive(Debug, thiserror::Error)]
pub enum Limited {
    /// The key's rate is used up (429).
    #[error("rate limit reached")]
    Rate(RateStatus),
    /// Too many failed authentications from this source (429).
    #[error("too many failed authentication attempts")]
    AuthFailures(Blocked),
    /// The tenant's daily request quota is used up (429).
    #[error("daily request quota reached")]
    Quota(RateStatus),
    /// The tenant's or the project's monthly budget is spent (402).
    #[error("the {0} budget for this month is spent")]
    Budget(&'static str),
    /// A limiter or counter could not answer (503: fail closed).
    #[error("limits cannot be checked right now: {0}")]
    Unavailable(String),
}

impl ErrorResponse for Limited {
    fn problem(&self) -> Problem<'_> {
        use http::StatusCode as S;
        match self {
            Limited::Rate(_) => Problem::new(
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "the API key's rate limit is reached; retry after the time in Retry-After",
            ),
            Limited::AuthFailures(_) => Problem::new(
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed authentication attempts from this address; retry after the time in Retry-After",
            ),
            Limited::Quota(_) => Problem::new(
                S::TOO_MANY_REQUESTS,
                "quota_exceeded",
                "the tenant's daily request quota is used up; it starts again at 00:00 UTC",
            ),
            Limited::Budget(scope) => Problem {
                status: S::PAYMENT_REQUIRED,
                code: "budget_exceeded",
                message: format!("the {scope}'s budget for this month is spent").into(),
            },
            Limited::Unavailable(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "limits cannot be checked right now",
            ),
        }
    }

    /// `RateLimit-*` and `Retry-After` for the limits a client can wait out.
    fn add_headers(&self, headers: &mut HeaderMap) {
        match self {
            Limited::Rate(status) | Limited::Quota(status) => status.apply(headers),
            Limited::AuthFailures(blocked) => blocked.status().apply(headers),
            Limited::Budget(_) | Limited::Unavailable(_) => {}
        }
    }
}

impl From<LimiterError> for Limited {
    fn from(e: LimiterError) -> Self {
        Limited::Unavailable(e.to_string())
    }
}

/// Which listener a failed authentication happened on: each has its own
/// failed-authentication table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The proxy port (API keys, JWTs, sessions, single sign-on endpoints).
    Proxy,
    /// The admin port (admin token, admin-capable API keys).
    Admin,
}

/// The limits stage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Throttle {
    limiter: Arc<dyn RateLimiter>,
    rates: Arc<RateLimitConfig>,
    failed_auth: FailedAuth,
    admin_failed_auth: FailedAuth,
    usage: Usage,
    cost_header: Option<http::HeaderName>,
    refused: Arc<Refused>,
    /// Set in shared mode (`rate_limit.backend = "redis"`): rate, budget
    /// and quota are decided by one Redis script call instead of
    /// `limiter` and `usage`'s local checks.
    shared: Option<RedisLimits>,
}

/// Requests held back, by reason, since start (for `/metrics`).
#[derive(Debug, Default)]
struct Refused {
    rate: AtomicU64,
    quota: AtomicU64,
    budget: AtomicU64,
    auth_failures: AtomicU64,
}

impl Refused {
    fn count(&self, limited: &Limited) {
        let counter = match limited {
            Limited::Rate(_) => &self.rate,
            Limited::Quota(_) => &self.quota,
            Limited::Budget(_) => &self.budget,
            Limited::AuthFailures(_) => &self.auth_failures,
            Limited::Unavailable(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Throttle {
    /// The stage over a limiter (local or shared) and the usage counters.
    pub fn new(
        limiter: Arc<dyn RateLimiter>,
        rates: &RateLimitConfig,
        budget: &BudgetConfig,
        usage: Usage,
    ) -> Self {
        Self {
            limiter,
            failed_auth: FailedAuth::new(
                rates.failed_auth_per_minute,
                rates.failed_auth_max_sources,
            ),
            admin_failed_auth: FailedAuth::new(
                rates.failed_auth_per_minute,
                rates.failed_auth_max_sources,
            ),
            rates: Arc::new(rates.clone()),
            usage,
            cost_header: budget.cost_header.clone(),
            refused: Arc::default(),
            shared: None,
        }
    }

    /// The same stage deciding in Redis, shared by every replica (the
    /// local limiter then only serves `redis_down = "local"`'s fallback
    /// inside `shared`, and `usage` keeps the durable counts).
    pub fn with_redis(mut self, shared: RedisLimits) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether the shared limiter's Redis answers (always true without
    /// one), for `/ready`.
    pub fn redis_up(&self) -> bool {
        self.shared.as_ref().is_none_or(RedisLimits::redis_up)
    }

    fn table(&self, port: Port) -> &FailedAuth {
        match port {
            Port::Proxy => &self.failed_auth,
            Port::Admin => &self.admin_failed_auth,
        }
    }

    /// Refuses a source that is out of authentication attempts on `port`.
    pub fn before_authentication(&self, port: Port, client: IpAddr) -> Result<(), Limited> {
        self.blocked(port, client)
            .inspect_err(|limited| self.refuse(limited))
    }

    /// Whether `client` is out of authentication attempts on `port`, without
    /// counting a refusal: the caller may still let a credential the caches
    /// already vouch for through, and calls [`Throttle::refuse`] if not.
    pub fn blocked(&self, port: Port, client: IpAddr) -> Result<(), Limited> {
        if !self.rates.enabled {
            return Ok(());
        }
        self.table(port)
            .check(client)
            .map_err(Limited::AuthFailures)
    }

    /// Counts a request held back (for `/metrics`).
    pub fn refuse(&self, limited: &Limited) {
        self.refused.count(limited);
    }

    /// Counts a failed authentication against its source on `port`.
    pub fn authentication_failed(&self, port: Port, client: IpAddr, error: &AuthnError) {
        if error.is_bad_credential() {
            self.count_failure(port, client);
        }
    }

    /// Counts a failure that is not a credential, such as a refused single
    /// sign-on callback (each one may cost the identity provider a call).
    pub fn count_failure(&self, port: Port, client: IpAddr) {
        if self.rates.enabled
            && let Some(blocked) = self.table(port).failed(client)
        {
            tracing::warn!(
                client = %client,
                port = ?port,
                retry_after = blocked.retry_after,
                "Too many failed authentications; refusing this source's attempts for a while."
            );
        }
    }

    /// Rate, budget and quota for an authorized request. `target` is the
    /// tenant whose route it is when that is not the caller's own (a
    /// system admin's cross-tenant call); its budget applies. Returns the
    /// rate status for the response's headers.
    pub async fn admit(
        &self,
        auth: &Authenticated,
        permit: &Permit,
        target: Option<&Tenant>,
    ) -> Result<Option<RateStatus>, Limited> {
        let decision = self.decide(auth, permit, target).await;
        if let Err(limited) = &decision {
            self.refused.count(limited);
        }
        decision
    }

    async fn decide(
        &self,
        auth: &Authenticated,
        permit: &Permit,
        target: Option<&Tenant>,
    ) -> Result<Option<RateStatus>, Limited> {
        let principal = &auth.principal;
        let rate = self.rates.rate_for(principal.rate_per_minute, &auth.tenant);
        if let Some(shared) = &self.shared {
            // Boxed: the shared path's future (Redis, the store) is large,
            // and inline it would grow every request's future.
            return Box::pin(self.decide_shared(shared, auth, permit, target, rate)).await;
        }
        let status = match rate {
            Some(rate) => {
                let status = self.limiter.check(&principal.rate_key, rate).await?;
                if !status.allowed() {
                    return Err(Limited::Rate(status));
                }
                Some(status)
            }
            None => None,
        };
        if permit.cost() {
            self.check_budget(target.unwrap_or(&auth.tenant), permit)
                .await?;
        }
        let max = auth.tenant.limits.max_requests_per_day;
        match self.usage.admit_request(&principal.tenant_id, max).await {
            Ok(_) => Ok(status),
            Err(AdmitError::Exceeded(q)) => {
                let reset = usage::secs_until_tomorrow();
                Err(Limited::Quota(RateStatus {
                    limit: u32::try_from(q.limit).unwrap_or(u32::MAX),
                    remaining: 0,
                    reset,
                    window: 86_400,
                    retry_after: Some(reset.max(1)),
                }))
            }
            Err(AdmitError::Store(e)) => Err(Limited::Unavailable(e.to_string())),
        }
    }

    /// [`Throttle::decide`] in shared mode: one script call (or none).
    async fn decide_shared(
        &self,
        shared: &RedisLimits,
        auth: &Authenticated,
        permit: &Permit,
        target: Option<&Tenant>,
        rate: Option<crate::rate_limit::Rate>,
    ) -> Result<Option<RateStatus>, Limited> {
        let principal = &auth.principal;
        let budget_tenant = target.unwrap_or(&auth.tenant);
        // The route's tenant is the target's id on a cross-tenant call.
        let budget_id = match target {
            Some(_) => permit.tenant().unwrap_or(&principal.tenant_id),
            None => &principal.tenant_id,
        };
        let budget = permit.cost().then(|| BudgetAsk {
            tenant: budget_id,
            tenant_limit: usage::limit_micros(budget_tenant.limits.max_monthly_cost),
            project: permit
                .project()
                .map(|(p, budget)| (p, usage::limit_micros(*budget))),
        });
        let ask = Ask {
            bucket: &principal.rate_key,
            rate,
            tenant: &principal.tenant_id,
            max_per_day: auth.tenant.limits.max_requests_per_day,
            budget,
        };
        shared.check(&ask).await.map_err(|r| match r {
            SharedRefused::Rate(s) => Limited::Rate(s),
            SharedRefused::Budget(scope) => Limited::Budget(scope),
            SharedRefused::Quota(s) => Limited::Quota(s),
            SharedRefused::Unavailable(e) => Limited::Unavailable(e),
        })
    }

    async fn check_budget(&self, tenant: &Tenant, permit: &Permit) -> Result<(), Limited> {
        let month = usage::this_month();
        let unavailable = |e: crate::store::StoreError| Limited::Unavailable(e.to_string());
        if let Some(limit) = usage::limit_micros(tenant.limits.max_monthly_cost) {
            let spent = self
                .usage
                .spend_in(&tenant.tenant_id, None, month)
                .await
                .map_err(unavailable)?;
            if spent >= limit {
                return Err(Limited::Budget("tenant"));
            }
        }
        if let Some((project, budget)) = permit.project()
            && let Some(limit) = usage::limit_micros(*budget)
        {
            let spent = self
                .usage
                .spend_in(&tenant.tenant_id, Some(project), month)
                .await
                .map_err(unavailable)?;
            if spent >= limit {
                return Err(Limited::Budget("project"));
            }
        }
        Ok(())
    }

    /// Adds the cost the upstream reported (if any) to the spend of the
    /// request's tenant and project. A value that is not a non-negative
    /// decimal is ignored and logged; the response goes out regardless.
    pub async fn record_cost(&self, response: &HeaderMap, permit: &Permit) {
        let (Some(name), Some(tenant)) = (&self.cost_header, permit.tenant()) else {
            return;
        };
        let Some(value) = response.get(name) else {
            return;
        };
        let Some(micros) = value.to_str().ok().and_then(usage::parse_usd) else {
            tracing::warn!(header = %name, route = %permit.route(), "The upstream's cost header is not a non-negative USD amount; not counted.");
            return;
        };
        if micros == 0 {
            return;
        }
        let project = permit.project().map(|(p, _)| p);
        if let Err(e) = self.usage.add_spend(tenant, project, micros).await {
            tracing::error!(tenant = %tenant, error = %e, "Could not count the request's cost.");
        }
        if let Some(shared) = &self.shared {
            shared.add_spend(tenant, project, micros).await;
        }
    }

    /// Drops idle rate-limit state (buckets that are full again, expired
    /// blocks), so memory follows the keys and sources in use.
    pub fn cleanup(&self) {
        self.limiter.cleanup();
        self.failed_auth.cleanup();
        self.admin_failed_auth.cleanup();
        if let Some(shared) = &self.shared {
            shared.cleanup();
        }
    }

    /// The stage's metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &*self.refused;
        metrics::counters(
            enc,
            "costguard_limited_requests",
            "Requests held back by the limits stage, by reason.",
            "reason",
            [
                ("rate_limited", &r.rate),
                ("quota_exceeded", &r.quota),
                ("budget_exceeded", &r.budget),
                ("failed_auth_blocked", &r.auth_failures),
            ]
            .map(|(reason, n)| (reason, n.load(Ordering::Relaxed))),
        )?;
        metrics::gauge(
            enc,
            "costguard_rate_limit_buckets",
            "Per-key rate-limit buckets held in memory.",
            self.limiter.buckets() as u64,
        )?;
        metrics::gauge(
            enc,
            "costguard_failed_auth_sources",
            "Client addresses tracked for failed authentications on the proxy port.",
            self.failed_auth.sources() as u64,
        )?;
        metrics::gauge(
            enc,
            "costguard_admin_failed_auth_sources",
            "Client addresses tracked for failed authentications on the admin port.",
            self.admin_failed_auth.sources() as u64,
        )?;
        if let Some(shared) = &self.shared {
            shared.encode(enc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::{HeaderValue, Method, StatusCode};

    use super::*;
    use crate::authz::tests::{
        PROJECT_A, PROJECT_A2, TENANT_A, TENANT_B, decide, fixture, principal,
    };
    use crate::config::FileConfig;
    use crate::model::Tier;
    use crate::principal::Principal;
    use crate::rate_limit::LocalRateLimiter;
    use crate::rate_limit::failed_auth::Blocked;
    use crate::store::Store;
    use crate::store::conformance::sample_tenant;
    use crate::store::sled::SledStore;

    /// Bad credentials a source may send per minute in these tests.
    const N: u32 = 3;

    /// The stage as the server builds it, from the default configuration
    /// with `N` failed authentications a minute and a cost header.
    fn throttle(store: Arc<dyn Store>, edit: impl FnOnce(&mut FileConfig)) -> (Throttle, Usage) {
        let mut file = FileConfig::default();
        file.rate_limit.failed_auth_per_minute = N.into();
        file.budget.cost_header = "x-cost-usd".into();
        edit(&mut file);
        let config = crate::config::from_file(file).unwrap();
        let usage = Usage::new(store);
        let throttle = Throttle::new(
            Arc::new(LocalRateLimiter::default()),
            &config.rate_limit,
            &config.budget,
            usage.clone(),
        );
        (throttle, usage)
    }

    /// A stage over its own store, for the tests that never reach it.
    fn bare(edit: impl FnOnce(&mut FileConfig)) -> (Throttle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        (throttle(store, edit).0, dir)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn fail(t: &Throttle, port: Port, client: IpAddr, times: u32) {
        for _ in 0..times {
            t.authentication_failed(port, client, &AuthnError::UnknownKey);
        }
    }

    fn metric(t: &Throttle, line: &str) -> u64 {
        let t = t.clone();
        let out = crate::metrics::text_of(move |enc| t.encode(enc));
        out.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {line} in\n{out}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn a_source_is_refused_after_n_bad_credentials() {
        let (t, _dir) = bare(|_| {});
        let client = ip(7);
        fail(&t, Port::Proxy, client, N - 1);
        assert!(t.blocked(Port::Proxy, client).is_ok(), "N - 1 are allowed");
        fail(&t, Port::Proxy, client, 1);
        match t.blocked(Port::Proxy, client) {
            Err(Limited::AuthFailures(Blocked { limit, retry_after })) => {
                assert_eq!(limit, N);
                assert!(
                    (1..=60 / u64::from(N)).contains(&retry_after),
                    "{retry_after}"
                );
            }
            other => panic!("not blocked: {other:?}"),
        }
        assert!(
            t.before_authentication(Port::Proxy, client).is_err(),
            "the pre-authentication check agrees"
        );
        assert!(
            t.blocked(Port::Proxy, ip(8)).is_ok(),
            "another source is not"
        );
        assert!(t.before_authentication(Port::Proxy, ip(8)).is_ok());
    }

    #[test]
    fn only_bad_credentials_count_against_a_source() {
        let (t, _dir) = bare(|_| {});
        let client = ip(9);
        // No credential, a suspended tenant, a store outage: the client did
        // not guess wrong, so it must not be locked out.
        for err in [
            AuthnError::Missing,
            AuthnError::Ambiguous,
            AuthnError::TenantSuspended,
            AuthnError::Store(Arc::new(crate::store::StoreError::Backend("down".into()))),
        ] {
            for _ in 0..N * 2 {
                t.authentication_failed(Port::Proxy, client, &err);
            }
        }
        assert!(t.blocked(Port::Proxy, client).is_ok());
        for _ in 0..N {
            t.authentication_failed(Port::Proxy, client, &AuthnError::RevokedKey);
        }
        assert!(t.blocked(Port::Proxy, client).is_err());
    }

    #[test]
    fn the_admin_port_counts_failures_apart_from_the_proxy_port() {
        let (t, _dir) = bare(|_| {});
        let shared = ip(10);
        fail(&t, Port::Proxy, shared, N);
        assert!(t.blocked(Port::Proxy, shared).is_err());
        assert!(
            t.blocked(Port::Admin, shared).is_ok(),
            "a proxy flood must not lock operators out"
        );
        let other = ip(11);
        fail(&t, Port::Admin, other, N);
        assert!(t.blocked(Port::Admin, other).is_err());
        assert!(t.blocked(Port::Proxy, other).is_ok());
        assert_eq!(metric(&t, "costguard_failed_auth_sources"), 1);
        assert_eq!(metric(&t, "costguard_admin_failed_auth_sources"), 1);
    }

    #[test]
    fn with_rate_limits_off_no_source_is_refused() {
        let (t, _dir) = bare(|f| f.rate_limit.enabled = false);
        let client = ip(12);
        fail(&t, Port::Proxy, client, N * 3);
        t.count_failure(Port::Admin, client);
        assert!(t.blocked(Port::Proxy, client).is_ok());
        assert!(t.before_authentication(Port::Admin, client).is_ok());
    }

    #[test]
    fn refusals_are_counted_once_and_only_when_refused() {
        let (t, _dir) = bare(|_| {});
        let client = ip(13);
        fail(&t, Port::Proxy, client, N);
        let reason = "costguard_limited_requests_total{reason=\"failed_auth_blocked\"}";
        // `blocked` only asks: the caller may still let a cached credential in.
        assert!(t.blocked(Port::Proxy, client).is_err());
        assert_eq!(metric(&t, reason), 0);
        assert!(t.before_authentication(Port::Proxy, client).is_err());
        assert_eq!(metric(&t, reason), 1);
        assert!(t.before_authentication(Port::Proxy, ip(14)).is_ok());
        assert_eq!(metric(&t, reason), 1);
    }

    #[test]
    fn an_auth_failure_refusal_carries_retry_after_and_ratelimit_headers() {
        let (t, _dir) = bare(|_| {});
        let client = ip(15);
        fail(&t, Port::Proxy, client, N);
        let limited = t.blocked(Port::Proxy, client).unwrap_err();
        let p = limited.problem();
        assert_eq!(
            (p.status, p.code),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        let mut h = HeaderMap::new();
        limited.add_headers(&mut h);
        let retry: u64 = h[http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert_eq!(h["ratelimit-limit"], HeaderValue::from(N));
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], HeaderValue::from(retry));
        assert_eq!(h["ratelimit-policy"], format!("{N};w=60").as_str());
        // Waiting out a month's budget is not a retry: no headers.
        let mut h = HeaderMap::new();
        Limited::Budget("tenant").add_headers(&mut h);
        Limited::Unavailable("x".into()).add_headers(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    // admit(): the permits come from the authorization stage's fixture.

    fn caller(p: Principal, tenant: &crate::model::Tenant) -> Authenticated {
        Authenticated {
            principal: Arc::new(p),
            tenant: Arc::new(tenant.clone()),
        }
    }

    fn tenant(id: &str, edit: impl FnOnce(&mut crate::model::TenantLimits)) -> Tenant {
        let mut t = sample_tenant(Tier::Standard);
        t.tenant_id = id.into();
        edit(&mut t.limits);
        t
    }

    fn cost(usd: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-cost-usd", HeaderValue::from_str(usd).unwrap());
        h
    }

    const COSTS_A: &str = "/v1/tenants/org-aaaa0001/costs";
    const COMPLETIONS_A: &str = "/v1/tenants/org-aaaa0001/completions";

    fn project_completions(project: &str) -> String {
        format!("/v1/tenants/{TENANT_A}/projects/{project}/completions")
    }

    #[tokio::test]
    async fn a_keys_rate_is_its_own_and_refused_with_retry_after() {
        let f = fixture().await;
        let (t, _) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |_| {});
        let mut slow = principal(TENANT_A, "key-slow", &["viewer"]);
        slow.rate_per_minute = Some(2);
        let slow = caller(slow, &home);
        let permit = decide(&f.authz, Method::GET, COSTS_A, &slow.principal)
            .await
            .unwrap();
        let first = t.admit(&slow, &permit, None).await.unwrap().unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1));
        let second = t.admit(&slow, &permit, None).await.unwrap().unwrap();
        assert_eq!(second.remaining, 0);
        assert!(second.allowed());
        match t.admit(&slow, &permit, None).await {
            Err(Limited::Rate(status)) => {
                assert!(!status.allowed());
                assert!(status.retry_after.is_some_and(|s| s >= 1));
            }
            other => panic!("not rate limited: {other:?}"),
        }
        assert_eq!(
            metric(
                &t,
                "costguard_limited_requests_total{reason=\"rate_limited\"}"
            ),
            1
        );
        // Another key of the same tenant has its own bucket.
        let other = caller(principal(TENANT_A, "key-other", &["viewer"]), &home);
        assert!(t.admit(&other, &permit, None).await.is_ok());
    }

    #[tokio::test]
    async fn with_rate_limits_off_no_rate_is_applied() {
        let f = fixture().await;
        let (t, _) = throttle(f.store.clone(), |f| f.rate_limit.enabled = false);
        let home = tenant(TENANT_A, |_| {});
        let mut slow = principal(TENANT_A, "key-slow", &["viewer"]);
        slow.rate_per_minute = Some(1);
        let slow = caller(slow, &home);
        let permit = decide(&f.authz, Method::GET, COSTS_A, &slow.principal)
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(t.admit(&slow, &permit, None).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn the_daily_quota_refuses_the_request_after_the_limit() {
        let f = fixture().await;
        let (t, usage) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |l| l.max_requests_per_day = 2);
        let who = caller(principal(TENANT_A, "key-a", &["viewer"]), &home);
        let permit = decide(&f.authz, Method::GET, COSTS_A, &who.principal)
            .await
            .unwrap();
        t.admit(&who, &permit, None).await.unwrap();
        t.admit(&who, &permit, None).await.unwrap();
        match t.admit(&who, &permit, None).await {
            Err(Limited::Quota(q)) => {
                assert_eq!((q.limit, q.remaining, q.window), (2, 0, 86_400));
                assert!(q.retry_after.is_some_and(|s| s >= 1));
                let p = Limited::Quota(q).problem().code;
                assert_eq!(p, "quota_exceeded");
            }
            other => panic!("not over quota: {other:?}"),
        }
        assert_eq!(
            usage.requests_on(TENANT_A, usage::today()).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_rate_refused_request_uses_no_quota() {
        let f = fixture().await;
        let (t, _) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |l| l.max_requests_per_day = 2);
        let mut slow = principal(TENANT_A, "key-slow", &["viewer"]);
        slow.rate_per_minute = Some(1);
        let slow = caller(slow, &home);
        let permit = decide(&f.authz, Method::GET, COSTS_A, &slow.principal)
            .await
            .unwrap();
        t.admit(&slow, &permit, None).await.unwrap();
        for _ in 0..3 {
            assert!(matches!(
                t.admit(&slow, &permit, None).await,
                Err(Limited::Rate(_))
            ));
        }
        // The tenant's second request of the day is still there.
        let other = caller(principal(TENANT_A, "key-b", &["viewer"]), &home);
        assert!(t.admit(&other, &permit, None).await.is_ok());
    }

    #[tokio::test]
    async fn a_spent_tenant_budget_refuses_cost_routes_only_and_uses_no_quota() {
        let f = fixture().await;
        let (t, usage) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |l| {
            l.max_monthly_cost = 1.0;
            l.max_requests_per_day = 1;
        });
        let who = caller(principal(TENANT_A, "key-a", &["viewer"]), &home);
        let spend = decide(&f.authz, Method::POST, COMPLETIONS_A, &who.principal)
            .await
            .unwrap();
        t.record_cost(&cost("1.00"), &spend).await;
        assert_eq!(
            usage
                .spend_in(TENANT_A, None, usage::this_month())
                .await
                .unwrap(),
            1_000_000
        );
        assert!(matches!(
            t.admit(&who, &spend, None).await,
            Err(Limited::Budget("tenant"))
        ));
        assert_eq!(
            metric(
                &t,
                "costguard_limited_requests_total{reason=\"budget_exceeded\"}"
            ),
            1
        );
        // A route without cost is not held back by the budget, and the
        // refused request did not take the day's only request.
        let read = decide(&f.authz, Method::GET, COSTS_A, &who.principal)
            .await
            .unwrap();
        assert!(t.admit(&who, &read, None).await.is_ok());
    }

    #[tokio::test]
    async fn a_spent_project_budget_refuses_that_project_only() {
        let f = fixture().await;
        let (t, usage) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |l| l.max_monthly_cost = -1.0);
        let who = caller(principal(TENANT_A, "key-a", &["viewer"]), &home);
        let on_a = decide(
            &f.authz,
            Method::POST,
            &project_completions(PROJECT_A),
            &who.principal,
        )
        .await
        .unwrap();
        let on_a2 = decide(
            &f.authz,
            Method::POST,
            &project_completions(PROJECT_A2),
            &who.principal,
        )
        .await
        .unwrap();
        assert!(t.admit(&who, &on_a, None).await.is_ok());
        // Just under the project's 0.50 USD, then over it.
        t.record_cost(&cost("0.499999"), &on_a).await;
        assert!(t.admit(&who, &on_a, None).await.is_ok());
        t.record_cost(&cost("0.000001"), &on_a).await;
        let month = usage::this_month();
        assert_eq!(
            usage
                .spend_in(TENANT_A, Some(PROJECT_A), month)
                .await
                .unwrap(),
            500_000
        );
        assert_eq!(
            usage.spend_in(TENANT_A, None, month).await.unwrap(),
            500_000,
            "a project's spend is also the tenant's"
        );
        assert!(matches!(
            t.admit(&who, &on_a, None).await,
            Err(Limited::Budget("project"))
        ));
        assert!(t.admit(&who, &on_a2, None).await.is_ok());
    }

    #[tokio::test]
    async fn a_system_admins_cross_tenant_call_spends_the_target_tenants_budget() {
        let f = fixture().await;
        let (t, usage) = throttle(f.store.clone(), |_| {});
        let home = tenant(TENANT_A, |l| l.max_monthly_cost = -1.0);
        let target = tenant(TENANT_B, |l| l.max_monthly_cost = 1.0);
        let root = caller(principal(TENANT_A, "key-root", &["system_admin"]), &home);
        let permit = decide(
            &f.authz,
            Method::POST,
            "/v1/tenants/org-bbbb0002/completions",
            &root.principal,
        )
        .await
        .unwrap();
        assert!(permit.crosses_tenants());
        t.record_cost(&cost("1"), &permit).await;
        let month = usage::this_month();
        assert_eq!(
            usage.spend_in(TENANT_B, None, month).await.unwrap(),
            1_000_000
        );
        assert_eq!(
            usage.spend_in(TENANT_A, None, month).await.unwrap(),
            0,
            "the caller's own tenant is not charged"
        );
        assert!(matches!(
            t.admit(&root, &permit, Some(&target)).await,
            Err(Limited::Budget("tenant"))
        ));
    }

    #[tokio::test]
    async fn a_cost_that_is_not_a_usd_amount_is_not_counted() {
        let f = fixture().await;
        let (t, usage) = throttle(f.store.clone(), |_| {});
        let who = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        let permit = decide(&f.authz, Method::POST, COMPLETIONS_A, &who)
            .await
            .unwrap();
        for bad in ["-1", "1e3", "NaN", "free", "0"] {
            t.record_cost(&cost(bad), &permit).await;
        }
        t.record_cost(&HeaderMap::new(), &permit).await;
        assert_eq!(
            usage
                .spend_in(TENANT_A, None, usage::this_month())
                .await
                .unwrap(),
            0
        );
        // Without a configured header nothing is read at all.
        let (quiet, usage) = throttle(f.store.clone(), |f| f.budget.cost_header.clear());
        quiet.record_cost(&cost("5"), &permit).await;
        assert_eq!(
            usage
                .spend_in(TENANT_A, None, usage::this_month())
                .await
                .unwrap(),
            0
        );
    }
}
