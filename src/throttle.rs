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

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

use crate::authn::AuthnError;
use crate::authz::Permit;
use crate::config::{BudgetConfig, RateLimitConfig};
use crate::model::Tenant;
use crate::principal::Authenticated;
use crate::rate_limit::failed_auth::{Blocked, FailedAuth};
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
        }
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
    }

    /// Drops idle rate-limit state (buckets that are full again, expired
    /// blocks), so memory follows the keys and sources in use.
    pub fn cleanup(&self) {
        self.limiter.cleanup();
        self.failed_auth.cleanup();
        self.admin_failed_auth.cleanup();
    }

    /// The stage's Prometheus metrics (text exposition format).
    pub fn metrics(&self, out: &mut String) {
        let r = &*self.refused;
        let _ = writeln!(
            out,
            "# HELP costguard_limited_requests_total Requests held back by the limits stage, by reason.\n\
             # TYPE costguard_limited_requests_total counter"
        );
        for (reason, n) in [
            ("rate_limited", &r.rate),
            ("quota_exceeded", &r.quota),
            ("budget_exceeded", &r.budget),
            ("failed_auth_blocked", &r.auth_failures),
        ] {
            let _ = writeln!(
                out,
                "costguard_limited_requests_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP costguard_rate_limit_buckets Per-key rate-limit buckets held in memory.\n\
             # TYPE costguard_rate_limit_buckets gauge\n\
             costguard_rate_limit_buckets {}\n\
             # HELP costguard_failed_auth_sources Client addresses tracked for failed authentications on the proxy port.\n\
             # TYPE costguard_failed_auth_sources gauge\n\
             costguard_failed_auth_sources {}\n\
             # HELP costguard_admin_failed_auth_sources Client addresses tracked for failed authentications on the admin port.\n\
             # TYPE costguard_admin_failed_auth_sources gauge\n\
             costguard_admin_failed_auth_sources {}",
            self.limiter.buckets(),
            self.failed_auth.sources(),
            self.admin_failed_auth.sources()
        );
    }
}
