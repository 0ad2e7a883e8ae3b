//! The proxy pipeline: the one place that orders the stages of a request.
//!
//! ```text
//! request id → local endpoints → size limits → target check (path safety,
//! authority) → [/auth/*: single sign-on endpoints, never proxied] → route
//! match → [public route: no authn] authn (API key, JWT or session →
//! Principal; from a source blocked for failed authentications only what the
//! caches already vouch for, else 429; cross-site session writes refused) → authz (route,
//! tenant, project, permission → Permit) → shadow policy (logged) → limits
//! (key rate, budget, daily quota) → forward (header hygiene, credentials
//! out, identity headers in, W3C traceparent continued or started, pooled
//! upstream client) → response hygiene,
//! cost recorded, RateLimit-* headers
//!              any stage error → response::error → JSON error response
//! every response → X-Request-Id echoed, access-log line when its body ends
//! ```
//! Every decision is recorded in the audit log: an allowed request's record
//! is written (to the OS) before it is forwarded, a denial's before it is
//! answered (anonymous denials aggregated
//! per source, see [`crate::audit::anonymous`]). While the log cannot be
//! written, requests are refused (503) unless `audit.fail_open`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access_log::{Exchange, LoggedBody, Observed, Traced};
use crate::audit::{AuditError, Details, Event, EventType, RequestDetails};
use crate::authn::{Authenticator, AuthnError};
use crate::authz::matcher::{Access, Match};
use crate::authz::policy::Policy;
use crate::authz::{self, AuthzOutcome, BadTarget, Denied, Permit};
use crate::business_events;
use crate::config::{Config, Limits};
use crate::context::Context;
use crate::forward::headers::{self, Hygiene};
use crate::forward::upstream::Upstream;
use crate::forward::{self, ForwardError, ResponseBody};
use crate::limits::TooLarge;
use crate::listener::{ConnInfo, Handler};
use crate::metrics::{self, Decision, Outcome, RequestMetrics, UpstreamError, UpstreamStatus};
use crate::model::Tenant;
use crate::otlp::{RequestSpans, Stage};
use crate::principal::{AuthMethod, Principal};
use crate::rate_limit::RateStatus;
use crate::residency::{ResidencyViolation, Upstreams};
use crate::response::{self, ErrorResponse, Problem};
use crate::sso::Sso;
use crate::sso::endpoints::Endpoints;
use crate::throttle::{Limited, Port};
use crate::trace_context::TraceContext;

/// Anything a proxied request can fail with: one stage's error each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Over a size limit.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// Not authenticated.
    #[error(transparent)]
    Authn(#[from] AuthnError),
    /// The request target could be read two ways.
    #[error(transparent)]
    BadTarget(#[from] BadTarget),
    /// Authorization refused (or could not decide).
    #[error(transparent)]
    Authz(#[from] AuthzOutcome),
    /// Held back by a rate, quota or budget.
    #[error(transparent)]
    Limited(#[from] Limited),
    /// The tenant's data region has no upstream here.
    #[error(transparent)]
    Residency(#[from] ResidencyViolation),
    /// Forwarding failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The audit log could not record the request (fail closed).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl Error {
    /// The stage's own error.
    fn stage(&self) -> &dyn ErrorResponse {
        match self {
            Error::TooLarge(e) => e,
            Error::Authn(e) => e,
            Error::BadTarget(e) => e,
            Error::Authz(e) => e,
            Error::Limited(e) => e,
            Error::Residency(e) => e,
            Error::Forward(e) => e,
            Error::Audit(e) => e,
        }
    }

    /// Whether the error is an access decision (a denial the audit log
    /// records), rather than a failure after the request was allowed.
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            Error::TooLarge(_)
                | Error::Authn(_)
                | Error::BadTarget(_)
                | Error::Authz(AuthzOutcome::Denied(_))
                | Error::Limited(_)
                | Error::Residency(_)
        )
    }
}

impl ErrorResponse for Error {
    fn problem(&self) -> Problem<'_> {
        self.stage().problem()
    }

    fn add_headers(&self, headers: &mut HeaderMap) {
        self.stage().add_headers(headers);
    }
}

/// The proxy port's handler, for request bodies of type `B` (the
/// listener's `Incoming`; tests drive it in-process with in-memory bodies).
/// Cheap to clone.
#[derive(Debug)]
pub struct Proxy<B = Incoming>(Arc<Inner<B>>);

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[derive(Debug)]
struct Inner<B> {
    limits: Limits,
    hygiene: Hygiene,
    upstreams: Upstreams<B>,
    context: Context,
    authn: Authenticator,
    /// Single sign-on, when configured: its `/auth/*` endpoints and cookies.
    sso: Option<Arc<Sso>>,
}

/// What the pipeline learned about a request, for its audit record and
/// its metrics.
#[derive(Debug, Default)]
struct Trail {
    client: Option<std::net::IpAddr>,
    principal: Option<Arc<Principal>>,
    /// The tenant whose data the request concerns, as it is now: the
    /// caller's, or the one a system admin's call names. Its data region
    /// picks the upstream and goes into the records.
    tenant: Option<Arc<Tenant>>,
    route: Option<Arc<str>>,
    /// The matched route's template (a metrics label, never the path).
    template: Option<Arc<str>>,
    permission: Option<&'static str>,
    /// The route's business event (`audit_event`), recorded once the
    /// upstream has answered.
    audit_event: Option<EventType>,
    /// Answered by costguard itself (probes, sign-on endpoints).
    local: bool,
    /// Whether a permit was issued (a later failure is not a denial).
    permitted: bool,
    /// How long `decide` took, when metrics or tracing are on.
    decision_time: Option<Duration>,
    /// The stages' spans, when this request is traced: when it arrived,
    /// and each stage's offsets from then.
    spans: Option<(Instant, Vec<Stage>)>,
}

impl Trail {
    /// Notes a stage that ran from `start` to now, if traced.
    fn stage(&mut self, name: &'static str, start: Instant) {
        if let Some((arrived, stages)) = &mut self.spans {
            stages.push(Stage {
                name,
                start: start.saturating_duration_since(*arrived),
                end: arrived.elapsed(),
            });
        }
    }
}

/// The request as the audit record shows it (captured before the body is
/// handed on): never the query string, never a credential.
#[derive(Debug, Clone)]
struct Facts {
    method: http::Method,
    path: String,
    user_agent: String,
}

impl Facts {
    fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            user_agent: crate::audit::user_agent(req.headers()),
        }
    }

    /// The record of this request; `denied` carries (reason, status).
    fn event(
        self,
        trail: &Trail,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        denied: Option<(&'static str, u16)>,
    ) -> Event {
        let p = trail.principal.as_deref();
        let details = RequestDetails {
            auth_method: p.map(|p| p.method.as_str()),
            decision: if denied.is_some() { "deny" } else { "allow" },
            method: self.method,
            path: self.path,
            permission: trail.permission,
            reason: denied.map(|d| d.0),
            route: trail.route.clone(),
            status: denied.map(|d| d.1),
        };
        Event {
            event_type: if denied.is_some() {
                EventType::AccessDenied
            } else {
                EventType::RequestAllowed
            },
            user_id: p.map(|p| p.user_id.to_string()).unwrap_or_default(),
            tenant_id: p.map(|p| p.tenant_id.to_string()).unwrap_or_default(),
            region: trail
                .tenant
                .as_ref()
                .map(|t| t.settings.data_region.clone())
                .unwrap_or_default(),
            details: Details::Request(Box::new(details)),
            ip_address: trail.client.unwrap_or(conn.peer.ip()).to_string(),
            user_agent: self.user_agent,
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        }
    }
}

impl Facts {
    /// The second record of a request on a route that names a business
    /// event, once it was answered with `status`: the event itself, or
    /// `request.failed` for an error status (`error`: costguard's own
    /// code when the upstream could not be reached).
    fn outcome(
        self,
        trail: &Trail,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        status: u16,
        error: Option<&'static str>,
    ) -> Event {
        let mut event = self.event(trail, conn, request_id, None);
        event.event_type = match trail.audit_event {
            Some(business) if status < 400 => business,
            _ => EventType::RequestFailed,
        };
        if let Details::Request(d) = &mut event.details {
            d.status = Some(status);
            d.reason = error;
        }
        event
    }
}

/// A `budget.alert` record for one alert header of the upstream's
/// response (see [`business_events`]).
fn budget_alert(
    trail: &Trail,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    status: http::StatusCode,
    alert: &HeaderValue,
) -> Event {
    let p = trail.principal.as_deref();
    let mut details = business_events::alert_details(alert);
    details.insert("route".into(), trail.route.as_deref().into());
    details.insert("status".into(), status.as_u16().into());
    // The budget is the tenant's whose data the request concerned.
    let tenant = match &trail.tenant {
        Some(t) => t.tenant_id.clone(),
        None => p.map(|p| p.tenant_id.to_string()).unwrap_or_default(),
    };
    Event {
        user_id: p.map(|p| p.user_id.to_string()).unwrap_or_default(),
        tenant_id: tenant,
        region: trail
            .tenant
            .as_ref()
            .map(|t| t.settings.data_region.clone())
            .unwrap_or_default(),
        ip_address: trail.client.unwrap_or(conn.peer.ip()).to_string(),
        request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        ..Event::new(EventType::BudgetAlert, serde_json::Value::Object(details))
    }
}

impl<B> Proxy<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Builds the pipeline once from the configuration.
    pub fn new(
        config: &Config,
        context: Context,
        authn: Authenticator,
        sso: Option<Arc<Sso>>,
    ) -> Self {
        Self(Arc::new(Inner {
            limits: config.limits.clone(),
            hygiene: Hygiene::new(
                config.proxy.strip_headers.clone(),
                config.proxy.trusted_proxies.clone(),
            ),
            upstreams: Upstreams::new(&config.proxy, config.limits.max_body_bytes),
            context,
            authn,
            sso,
        }))
    }

    /// Answers one request: the stages, then the audit record of a denial
    /// and the error response. What the listener calls for each request;
    /// tests call it directly with an in-memory request.
    pub async fn serve(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Response<LoggedBody<ResponseBody<B>>> {
        let context = &self.0.context;
        let mut trace = TraceContext::continue_or_start(req.headers());
        if let Some(tracer) = &context.tracer
            && !trace.continued
        {
            tracer.sample_new(&mut trace);
        }
        let exchange = Exchange::begin(
            context.access_log.as_ref(),
            "proxy",
            &req,
            conn.peer.ip(),
            Some(&trace),
        );
        let request_id = &exchange.request_id;
        let mut facts = context.audit.as_ref().map(|_| Facts::of(&req));
        let mut trail = Trail::default();
        let method = metrics::method_label(req.method());
        let counted = context.metrics.as_ref().map(|m| (m, Instant::now()));
        let traced = context
            .tracer
            .as_ref()
            .filter(|_| trace.flags & 1 == 1)
            .map(|t| (t, Instant::now(), SystemTime::now()));
        if let Some((_, start, _)) = traced {
            trail.spans = Some((start, Vec::with_capacity(3)));
        }
        let result = self
            .stages(req, conn, request_id, &trace, &mut facts, &mut trail)
            .await;
        let observed = counted.map(|(m, start)| observe(m, start, method, &trail, &result));
        let traced = traced.map(|(tracer, start, arrived)| {
            let end = conclude(&trail, &result);
            Box::new(Traced {
                tracer: tracer.clone(),
                start,
                spans: RequestSpans {
                    trace,
                    arrived,
                    duration: Duration::ZERO,
                    stages: trail.spans.take().map(|s| s.1).unwrap_or_default(),
                    method,
                    route: trail.template.clone(),
                    status: 0,
                    decision: end.decision.as_str(),
                    reason: end.reason,
                    request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                },
            })
        });
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if let (Some(audit), Some(facts)) = (&context.audit, facts.take())
                    && e.is_denial()
                {
                    let Problem { status, code, .. } = e.problem();
                    let event =
                        facts.event(&trail, conn, request_id, Some((code, status.as_u16())));
                    // Nobody authenticated: aggregated per source.
                    let recorded = if trail.principal.is_none() {
                        audit
                            .record_anonymous_denial(event, code, status.as_u16())
                            .await
                    } else {
                        audit.record_request(event).await
                    };
                    // The denial stands whether or not it could be recorded.
                    if let Err(audit_error) = recorded {
                        tracing::error!(error = %audit_error, "Denial not recorded in the audit log.");
                    }
                }
                response::error(&e, request_id).map(Either::Right)
            }
        };
        exchange.finish_observed(resp, observed, traced)
    }

    /// The stages in order. Each returns early with an error, which
    /// [`response::error`] turns into the response.
    async fn stages(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        trace: &TraceContext,
        facts: &mut Option<Facts>,
        trail: &mut Trail,
    ) -> Result<Response<ResponseBody<B>>, Error> {
        let this = &*self.0;
        this.hygiene
            .notice_untrusted_proxy(conn.peer.ip(), req.headers());
        // Probes are answered here and never reach the upstream; the public
        // port's `/ready` says ready or not, the details are on the admin port.
        if let Some(resp) = this
            .context
            .readiness
            .respond(req.method(), req.uri().path(), false)
            .await
        {
            trail.local = true;
            return Ok(resp.map(Either::Right));
        }
        // Bounds first: nothing below reads an oversized request.
        crate::limits::check(req.headers(), &this.limits)?;
        // One reading of the target, or 400: what is checked is forwarded.
        authz::check_target(&req)?;
        if req.uri().path().starts_with("/auth/") {
            let endpoints = Endpoints {
                authn: &this.authn,
                throttle: &this.context.throttle,
            };
            let ip = this.hygiene.client_ip(conn.peer.ip(), req.headers());
            // Boxed: the sign-on flows' future is ~10 KB, and inline it
            // would grow every proxied request's future by as much.
            let resp = Box::pin(endpoints.serve(this.sso.as_deref(), req, ip, request_id)).await;
            trail.local = true;
            return Ok(resp.map(Either::Right));
        }
        let decided = if this.context.metrics.is_some() || trail.spans.is_some() {
            let start = Instant::now();
            let decided = self.decide(&req, conn, trail).await;
            trail.decision_time = Some(start.elapsed());
            trail.stage("costguard.decide", start);
            decided
        } else {
            self.decide(&req, conn, trail).await
        };
        let (permit, rate, upstream) = decided?;
        trail.permitted = true;
        let mut req = req;
        if let Some(sso) = &this.sso {
            sso.strip_cookies(req.headers_mut());
        }
        // The business record (if the route names one) needs the facts
        // again once the upstream has answered.
        let mut outcome_facts = None;
        if let (Some(audit), Some(facts)) = (&this.context.audit, facts.take()) {
            let start = trail.spans.is_some().then(Instant::now);
            if trail.audit_event.is_some() {
                outcome_facts = Some(facts.clone());
            }
            let event = facts.event(trail, conn, request_id, None);
            audit.record_request(event).await?;
            if let Some(start) = start {
                trail.stage("costguard.audit", start);
            }
        }
        let mut upstream_req = forward::prepare(
            req,
            conn,
            request_id,
            &this.hygiene,
            &permit,
            this.limits.max_body_bytes,
        )?;
        trace.apply(upstream_req.headers_mut());
        let start = trail.spans.is_some().then(Instant::now);
        let sent = upstream.send(upstream_req).await;
        if let Some(start) = start {
            trail.stage("costguard.upstream", start);
        }
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                if let (Some(audit), Some(facts)) = (&this.context.audit, outcome_facts) {
                    let Problem { status, code, .. } = e.problem();
                    let event = facts.outcome(trail, conn, request_id, status.as_u16(), Some(code));
                    if let Err(audit_error) = audit.record_request(event).await {
                        tracing::error!(error = %audit_error, "Failed request not recorded in the audit log.");
                    }
                }
                return Err(e.into());
            }
        };
        let alerts = business_events::take_budget_alerts(resp.headers_mut());
        if let Some(audit) = &this.context.audit {
            if let Some(facts) = outcome_facts {
                let event = facts.outcome(trail, conn, request_id, resp.status().as_u16(), None);
                audit.record_request(event).await?;
            }
            for alert in &alerts {
                audit
                    .record_request(budget_alert(trail, conn, request_id, resp.status(), alert))
                    .await?;
            }
        }
        headers::response(resp.headers_mut());
        if permit.principal().is_some() {
            this.context
                .throttle
                .record_cost(resp.headers(), &permit)
                .await;
        }
        if let Some(rate) = rate {
            rate.apply(resp.headers_mut());
        }
        Ok(resp.map(Either::Left))
    }

    /// Route, authentication, authorization, limits: a [`Permit`] (and the
    /// rate status for the response headers) or the reason not.
    async fn decide(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        trail: &mut Trail,
    ) -> Result<(Permit, Option<RateStatus>, &Upstream<B>), Error> {
        let this = &*self.0;
        let Context {
            authz, throttle, ..
        } = &this.context;
        let policy = authz.policy();
        let (method, path) = (req.method(), req.uri().path());
        let matched = policy.enforce.find(method, path);
        if let Some(m) = &matched {
            trail.route = Some(m.route.origin.clone());
            trail.template = Some(m.route.pattern.clone());
            if let Access::Permission(p) = m.route.access {
                trail.permission = Some(p.as_str());
            }
            trail.audit_event = m.route.audit_event;
        }
        if let Some(permit) = matched.as_ref().and_then(Permit::public) {
            // About no tenant: `[proxy] upstream`.
            let upstream = this.upstreams.pick(None)?;
            return Ok((permit, None, upstream));
        }
        let client = this.hygiene.client_ip(conn.peer.ip(), req.headers());
        trail.client = Some(client);
        // Who is calling: exactly one valid credential, or 401. A source out
        // of attempts is refused before any store lookup, except for a
        // credential the caches already hold as valid: behind an ingress
        // every client may share one address, and one client's bad keys must
        // not lock out everyone else's good ones.
        let auth = match throttle.blocked(Port::Proxy, client) {
            Ok(()) => match this.authn.authenticate(req.headers()).await {
                Ok(auth) => auth,
                Err(e) => {
                    throttle.authentication_failed(Port::Proxy, client, &e);
                    return Err(e.into());
                }
            },
            Err(limited) => match this.authn.authenticate_cached(req.headers()).await {
                Some(auth) => auth,
                None => {
                    throttle.refuse(&limited);
                    return Err(limited.into());
                }
            },
        };
        let principal = &auth.principal;
        trail.principal = Some(principal.clone());
        trail.tenant = Some(auth.tenant.clone());
        if matches!(principal.method, AuthMethod::Oidc | AuthMethod::Saml)
            && crate::sso::cross_site_write(req.method(), req.headers())
        {
            return Err(AuthnError::CrossSite.into());
        }
        let decision = match &matched {
            None => Err(AuthzOutcome::Denied(Denied::NoRoute)),
            Some(m) => {
                let attrs = authz::Attributes::of(req, client);
                authz.authorize(&policy, m, principal, &attrs).await
            }
        };
        self.shadow(&policy, req, principal, client, decision.is_ok())
            .await;
        let permit = decision?;
        // A system admin's call on another tenant's route: that tenant's
        // budget (cost routes) and data region (the upstream, the records).
        let crossing = permit.crosses_tenants();
        let target = match permit.tenant() {
            Some(t) if crossing => this.authn.tenant(t).await?,
            _ => None,
        };
        // The data concerned is the named tenant's; one that does not
        // exist has no region, which residency refuses.
        let region = if crossing {
            trail.tenant = target.clone();
            target
                .as_ref()
                .map_or("", |t| t.settings.data_region.as_str())
        } else {
            auth.tenant.settings.data_region.as_str()
        };
        let upstream = this.upstreams.pick(Some(region))?;
        let rate = throttle.admit(&auth, &permit, target.as_deref()).await?;
        Ok((permit, rate, upstream))
    }

    /// Evaluates the shadow routes, if one matches, and logs what they would
    /// have decided beside what was decided.
    async fn shadow(
        &self,
        policy: &Policy,
        req: &Request<B>,
        principal: &Arc<Principal>,
        client: std::net::IpAddr,
        enforced_allow: bool,
    ) {
        let Some(m): Option<Match<'_, '_>> = policy.shadow.find(req.method(), req.uri().path())
        else {
            return;
        };
        let attrs = authz::Attributes::of(req, client);
        let would = self
            .0
            .context
            .authz
            .authorize(policy, &m, principal, &attrs)
            .await;
        tracing::info!(
            route = %m.route.origin,
            tenant_id = %principal.tenant_id,
            user_id = %principal.user_id,
            method = %req.method(),
            path = req.uri().path(),
            shadow_decision = if would.is_ok() { "allow" } else { "deny" },
            shadow_reason = %would.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            enforced_decision = if enforced_allow { "allow" } else { "deny" },
            "Shadow policy decision."
        );
    }
}

/// How a request ended, for its metrics and spans.
struct Conclusion {
    decision: Decision,
    reason: &'static str,
    upstream: UpstreamStatus,
    upstream_error: Option<UpstreamError>,
}

/// How a request ended, from what the stages learned and their result.
fn conclude<T>(trail: &Trail, result: &Result<Response<T>, Error>) -> Conclusion {
    let (decision, reason, upstream, upstream_error) = match result {
        Ok(_) if trail.local => (Decision::Local, "none", UpstreamStatus::None, None),
        Ok(resp) => (
            Decision::Allowed,
            "none",
            UpstreamStatus::of(resp.status()),
            None,
        ),
        Err(e) => {
            let decision = if e.is_denial() {
                Decision::Denied
            } else if trail.permitted {
                Decision::Allowed
            } else {
                Decision::Undecided
            };
            let upstream_error = match e {
                Error::Forward(ForwardError::Unavailable(_)) => Some(UpstreamError::Connect),
                Error::Forward(ForwardError::Timeout) => Some(UpstreamError::Timeout),
                Error::Forward(ForwardError::Failed(_)) => Some(UpstreamError::Response),
                _ => None,
            };
            let upstream = if upstream_error.is_some() {
                UpstreamStatus::Error
            } else {
                UpstreamStatus::None
            };
            (decision, e.problem().code, upstream, upstream_error)
        }
    };
    Conclusion {
        decision,
        reason,
        upstream,
        upstream_error,
    }
}

/// A request's metrics series.
fn observe<T>(
    metrics: &Arc<RequestMetrics>,
    start: Instant,
    method: &'static str,
    trail: &Trail,
    result: &Result<Response<T>, Error>,
) -> Box<Observed> {
    let Conclusion {
        decision,
        reason,
        upstream,
        upstream_error,
    } = conclude(trail, result);
    Box::new(Observed {
        metrics: metrics.clone(),
        outcome: Outcome {
            decision,
            reason,
            auth_method: trail
                .principal
                .as_ref()
                .map_or("none", |p| p.method.as_str()),
            method,
            route: trail.template.clone(),
            upstream,
        },
        start,
        decision: trail.decision_time,
        upstream_error,
    })
}

impl Handler for Proxy {
    type Body = LoggedBody<ResponseBody>;

    async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Self::Body> {
        self.serve(req, conn).await
    }
}

#[cfg(test)]
mod tests;
