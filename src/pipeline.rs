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
//! out, identity headers in, pooled upstream client) → response hygiene,
//! cost recorded, RateLimit-* headers
//!              any stage error → error::rescue → JSON error response
//! every response → X-Request-Id echoed, access-log line when its body ends
//! ```
//! Every decision is recorded in the audit log: an allowed request's record
//! is written (to the OS) before it is forwarded, a denial's before it is
//! answered (anonymous denials aggregated
//! per source, see [`crate::audit::anonymous`]). While the log cannot be
//! written, requests are refused (503) unless `audit.fail_open`.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access_log::{AccessLog, LoggedBody};
use crate::audit::{Audit, Details, Event, EventType, RequestDetails};
use crate::authn::{AuthMethod, Authenticator, Principal};
use crate::authz::matcher::{Access, Match};
use crate::authz::policy::Policy;
use crate::authz::{self, Authz, AuthzOutcome, Denied, Permit};
use crate::config::{Config, Limits, UpstreamTarget};
use crate::error::{self, Error};
use crate::forward::headers::{self, Hygiene, X_REQUEST_ID};
use crate::forward::upstream::Upstream;
use crate::forward::{self, ResponseBody};
use crate::health::Readiness;
use crate::listener::{ConnInfo, Handler};
use crate::rate_limit::RateStatus;
use crate::request_id;
use crate::throttle::{Port, Throttle};

/// The proxy port's handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limits: Limits,
    hygiene: Hygiene,
    target: UpstreamTarget,
    upstream: Upstream,
    readiness: Arc<Readiness>,
    authn: Authenticator,
    authz: Authz,
    throttle: Throttle,
    audit: Option<Audit>,
    access_log: Option<AccessLog>,
}

/// What the pipeline learned about a request, for its audit record.
#[derive(Debug, Default)]
struct Trail {
    client: Option<std::net::IpAddr>,
    principal: Option<Arc<Principal>>,
    route: Option<Arc<str>>,
    permission: Option<&'static str>,
}

/// The request as the audit record shows it (captured before the body is
/// handed on): never the query string, never a credential.
#[derive(Debug)]
struct Facts {
    method: http::Method,
    path: String,
    user_agent: String,
}

impl Facts {
    fn of(req: &Request<Incoming>) -> Self {
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
            details: Details::Request(Box::new(details)),
            ip_address: trail.client.unwrap_or(conn.peer.ip()).to_string(),
            user_agent: self.user_agent,
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        }
    }
}

impl Proxy {
    /// Builds the pipeline once from the configuration.
    pub fn new(
        config: &Config,
        readiness: Arc<Readiness>,
        authn: Authenticator,
        authz: Authz,
        throttle: Throttle,
        audit: Option<Audit>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self(Arc::new(Inner {
            limits: config.limits.clone(),
            hygiene: Hygiene::new(
                config.proxy.strip_headers.clone(),
                config.proxy.trusted_proxies.clone(),
            ),
            target: config.proxy.upstream.clone(),
            upstream: Upstream::new(&config.proxy, config.limits.max_body_bytes),
            readiness,
            authn,
            authz,
            throttle,
            audit,
            access_log,
        }))
    }

    /// The stages in order. Each returns early with an error, which
    /// [`error::rescue`] turns into the response.
    async fn stages(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        facts: &mut Option<Facts>,
        trail: &mut Trail,
    ) -> Result<Response<ResponseBody>, Error> {
        let this = &*self.0;
        this.hygiene
            .notice_untrusted_proxy(conn.peer.ip(), req.headers());
        // Probes are answered here and never reach the upstream; the public
        // port's `/ready` says ready or not, the details are on the admin port.
        if let Some(resp) = this
            .readiness
            .respond(req.method(), req.uri().path(), false)
            .await
        {
            return Ok(resp.map(Either::Right));
        }
        // Bounds first: nothing below reads an oversized request.
        crate::limits::check(req.headers(), &this.limits)?;
        // One reading of the target, or 400: what is checked is forwarded.
        authz::check_target(&req)?;
        if req.uri().path().starts_with("/auth/") {
            return Ok(self
                .auth_endpoint(req, conn, request_id)
                .await
                .map(Either::Right));
        }
        let (permit, rate) = self.decide(&req, conn, trail).await?;
        let mut req = req;
        if let Some(sso) = this.authn.sso() {
            sso.strip_cookies(req.headers_mut());
        }
        if let (Some(audit), Some(facts)) = (&this.audit, facts.take()) {
            let event = facts.event(trail, conn, request_id, None);
            audit.record_request(event).await?;
        }
        let upstream_req = forward::prepare(
            req,
            conn,
            request_id,
            &this.hygiene,
            &permit,
            &this.target,
            this.limits.max_body_bytes,
        )?;
        let mut resp = this.upstream.send(upstream_req).await?;
        headers::response(resp.headers_mut());
        if permit.principal.is_some() {
            this.throttle.record_cost(resp.headers(), &permit).await;
        }
        if let Some(rate) = rate {
            rate.apply(resp.headers_mut());
        }
        Ok(resp.map(Either::Left))
    }

    /// `/auth/*`: single sign-on's endpoints, answered here, never proxied.
    async fn auth_endpoint(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Response<http_body_util::Full<bytes::Bytes>> {
        let this = &*self.0;
        let Some(sso) = this.authn.sso() else {
            return error::json_error(
                http::StatusCode::NOT_FOUND,
                "not_found",
                "single sign-on is not configured",
                request_id,
            );
        };
        let headers = req.headers();
        let ip = this.hygiene.client_ip(conn.peer.ip(), headers);
        let path = req.uri().path();
        // A source out of attempts cannot make costguard call the provider.
        let guarded = matches!(path, "/auth/callback" | "/auth/userinfo" | "/auth/saml/acs");
        if guarded && let Err(limited) = this.throttle.before_authentication(Port::Proxy, ip) {
            return error::rescue(&Error::Limited(limited), request_id);
        }
        if path == "/auth/userinfo" {
            return match this.authn.authenticate(headers).await {
                Ok(auth) => {
                    let session = match auth.principal.method {
                        AuthMethod::Oidc | AuthMethod::Saml => sso.session_record(headers).await,
                        _ => None,
                    };
                    crate::sso::Sso::userinfo(&auth, session.as_ref())
                }
                Err(e) => {
                    this.throttle.authentication_failed(Port::Proxy, ip, &e);
                    error::rescue(&Error::Authn(e), request_id)
                }
            };
        }
        let client = crate::sso::Client {
            ip: ip.to_string(),
            user_agent: crate::audit::user_agent(headers),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        };
        if path == "/auth/saml/acs" && req.method() == http::Method::POST {
            let resp = self.saml_acs(sso, req, &client, request_id).await;
            if resp.status().is_client_error() {
                this.throttle.count_failure(Port::Proxy, ip);
            }
            return resp;
        }
        let resp = sso
            .respond(
                req.method(),
                path,
                req.uri().query(),
                headers,
                &client,
                request_id,
            )
            .await;
        if guarded && resp.status().is_client_error() {
            this.throttle.count_failure(Port::Proxy, ip);
        }
        resp
    }

    /// `POST /auth/saml/acs`: the form body, bounded (the response's size
    /// bound, base64 and URL-encoded, plus room for RelayState), then the
    /// SAML checks.
    async fn saml_acs(
        &self,
        sso: &crate::sso::Sso,
        req: Request<Incoming>,
        client: &crate::sso::Client,
        request_id: &HeaderValue,
    ) -> Response<http_body_util::Full<bytes::Bytes>> {
        use http_body_util::BodyExt as _;
        let form = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            return error::json_error(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the SAML response must be posted as application/x-www-form-urlencoded",
                request_id,
            );
        }
        let (parts, body) = req.into_parts();
        let limit = sso.acs_body_limit();
        let body = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return sso
                    .acs_refused("response_too_large", client, request_id)
                    .await;
            }
            Err(_) => {
                return error::json_error(
                    http::StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                    request_id,
                );
            }
        };
        sso.acs(&body, &parts.headers, client, request_id).await
    }

    /// Route, authentication, authorization, limits: a [`Permit`] (and the
    /// rate status for the response headers) or the reason not.
    async fn decide(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
        trail: &mut Trail,
    ) -> Result<(Permit, Option<RateStatus>), Error> {
        let this = &*self.0;
        let policy = this.authz.policy();
        let (method, path) = (req.method(), req.uri().path());
        let matched = policy.enforce.find(method, path);
        if let Some(m) = &matched {
            trail.route = Some(m.route.origin.clone());
            if let Access::Permission(p) = m.route.access {
                trail.permission = Some(p.as_str());
            }
        }
        if let Some(m) = &matched
            && m.route.access == Access::Public
        {
            let permit = Permit {
                principal: None,
                cost: m.route.cost,
                route: m.route.origin.clone(),
                tenant: None,
                project: None,
            };
            return Ok((permit, None));
        }
        let client = this.hygiene.client_ip(conn.peer.ip(), req.headers());
        trail.client = Some(client);
        // Who is calling: exactly one valid credential, or 401. A source out
        // of attempts is refused before any store lookup, except for a
        // credential the caches already hold as valid: behind an ingress
        // every client may share one address, and one client's bad keys must
        // not lock out everyone else's good ones.
        let auth = match this.throttle.blocked(Port::Proxy, client) {
            Ok(()) => match this.authn.authenticate(req.headers()).await {
                Ok(auth) => auth,
                Err(e) => {
                    this.throttle.authentication_failed(Port::Proxy, client, &e);
                    return Err(e.into());
                }
            },
            Err(limited) => match this.authn.authenticate_cached(req.headers()).await {
                Some(auth) => auth,
                None => {
                    this.throttle.refuse(&limited);
                    return Err(limited.into());
                }
            },
        };
        let principal = &auth.principal;
        trail.principal = Some(principal.clone());
        if matches!(principal.method, AuthMethod::Oidc | AuthMethod::Saml)
            && crate::sso::cross_site_write(req.method(), req.headers())
        {
            return Err(crate::authn::AuthnError::CrossSite.into());
        }
        let decision = match &matched {
            None => Err(AuthzOutcome::Denied(Denied::NoRoute)),
            Some(m) => this
                .authz
                .authorize(&policy, m, principal)
                .await
                .map(|budget| (m, budget)),
        };
        self.shadow(&policy, req, principal, decision.is_ok()).await;
        let (m, budget) = decision?;
        // Whose route it is: the caller's own tenant, unless a system admin
        // addressed another one (whose budget then applies).
        let foreign = m
            .param("tenant")
            .filter(|t| *t != &*principal.tenant_id)
            .map(Arc::<str>::from);
        let permit = Permit {
            cost: m.route.cost,
            route: m.route.origin.clone(),
            tenant: Some(
                foreign
                    .clone()
                    .unwrap_or_else(|| principal.tenant_id.clone()),
            ),
            project: m.param("project").zip(budget).map(|(p, b)| (p.into(), b)),
            principal: Some(principal.clone()),
        };
        let target = match &foreign {
            Some(t) if permit.cost => this.authn.tenant(t).await?,
            _ => None,
        };
        let rate = this
            .throttle
            .admit(&auth, &permit, target.as_deref())
            .await?;
        Ok((permit, rate))
    }

    /// Evaluates the shadow routes, if one matches, and logs what they would
    /// have decided beside what was decided.
    async fn shadow(
        &self,
        policy: &Policy,
        req: &Request<Incoming>,
        principal: &Principal,
        enforced_allow: bool,
    ) {
        let Some(m): Option<Match<'_, '_>> = policy.shadow.find(req.method(), req.uri().path())
        else {
            return;
        };
        let would = self.0.authz.authorize(policy, &m, principal).await;
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

impl Handler for Proxy {
    type Body = LoggedBody<ResponseBody>;

    async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Self::Body> {
        let request_id = request_id::take_or_generate(req.headers());
        let entry = self
            .0
            .access_log
            .as_ref()
            .map(|log| log.entry("proxy", &req, &request_id, conn.peer.ip()));
        let mut facts = self.0.audit.as_ref().map(|_| Facts::of(&req));
        let mut trail = Trail::default();
        let mut resp = match self
            .stages(req, conn, &request_id, &mut facts, &mut trail)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                if let (Some(audit), Some(facts)) = (&self.0.audit, facts.take())
                    && error::is_denial(&e)
                {
                    let (status, code, _) = error::classify(&e);
                    let event =
                        facts.event(&trail, conn, &request_id, Some((code, status.as_u16())));
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
                error::rescue(&e, &request_id).map(Either::Right)
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        let status = resp.status();
        resp.map(|body| LoggedBody::new(body, entry, status))
    }
}
