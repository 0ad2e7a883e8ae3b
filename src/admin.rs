//! The admin port: `/health`, `/ready`, and the admin API under
//! `/admin/v1/` (tenants, keys, projects, users, usage). JSON in and out;
//! strict bodies; every error in the contract's shape. The admin API is
//! served on this port only.

pub mod audit_query;
pub mod auth;
pub mod ops;
pub mod requests;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::access_log::{Exchange, LoggedBody};
use crate::audit::{Audit, Details, Durability, Event, EventType};
use crate::authn::AuthnError;
use crate::context::Context;
use crate::listener::{ConnInfo, Handler};
use crate::response::{self, ErrorResponse, Problem, json_response};
use crate::store::StoreError;
use crate::throttle::{self, Port};
use auth::AdminAuth;
use ops::{AdminOps, key_view};

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not authenticated (401/400/403 as for the proxy).
    #[error(transparent)]
    Authn(#[from] AuthnError),
    /// The request is invalid; nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The path names another tenant than the caller's.
    #[error("the caller belongs to another tenant")]
    TenantMismatch,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists, with other methods.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A tier limit is reached (409).
    #[error("{0}")]
    LimitReached(String),
    /// Conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is over `admin.max_body_bytes`.
    #[error("request body too large")]
    TooLarge,
    /// The store failed.
    #[error("store failure")]
    Store(#[source] StoreError),
    /// Too many failed authentications from this address (429).
    #[error(transparent)]
    Limited(#[from] throttle::Limited),
    /// The action could not be recorded in the audit log (503).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A bounded resource is in use (429, `Retry-After: 1`).
    #[error("{0}")]
    Busy(&'static str),
}

impl ErrorResponse for ApiError {
    fn problem(&self) -> Problem<'_> {
        use StatusCode as S;
        let fixed = |status, code, message: &'static str| Problem::new(status, code, message);
        let told = |status, code, message: &str| Problem {
            status,
            code,
            message: message.to_owned().into(),
        };
        match self {
            ApiError::BadRequest(m) => told(S::BAD_REQUEST, "invalid_request", m),
            ApiError::Forbidden(m) => told(S::FORBIDDEN, "forbidden", m),
            ApiError::TenantMismatch => fixed(
                S::FORBIDDEN,
                "tenant_mismatch",
                "the caller belongs to another tenant",
            ),
            ApiError::NotFound(m) => told(S::NOT_FOUND, "not_found", m),
            ApiError::NoRoute => fixed(S::NOT_FOUND, "not_found", "no such endpoint"),
            ApiError::MethodNotAllowed(_) => fixed(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            ),
            ApiError::LimitReached(m) => told(S::CONFLICT, "limit_reached", m),
            ApiError::Conflict(m) => told(S::CONFLICT, "conflict", m),
            ApiError::Busy(m) => fixed(S::TOO_MANY_REQUESTS, "busy", m),
            ApiError::Store(_) => fixed(
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the store failed; nothing was changed",
            ),
            ApiError::Audit(e) => e.problem(),
            ApiError::TooLarge => response::BODY_TOO_LARGE,
            ApiError::Limited(l) => l.problem(),
            ApiError::Authn(e) => e.problem(),
        }
    }

    fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            ApiError::Authn(e) => e.add_headers(headers),
            ApiError::Limited(l) => l.add_headers(headers),
            ApiError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            _ => {}
        }
    }
}

impl ApiError {
    /// A 400 with this message.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// A 403 with this message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }
}

/// The admin port's handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admin(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    context: Context,
    auth: AdminAuth,
    ops: AdminOps,
    max_body: usize,
}

impl Admin {
    /// Builds the admin router.
    pub fn new(context: Context, auth: AdminAuth, ops: AdminOps, max_body: usize) -> Self {
        Self(Arc::new(Inner {
            context,
            auth,
            ops,
            max_body,
        }))
    }

    /// `GET /metrics`: Prometheus text. Counts and sizes only, never an id
    /// or a secret, so it needs no credential (the admin port is loopback
    /// unless configured otherwise).
    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut text = String::new();
        self.0.context.throttle.metrics(&mut text);
        if let Some(audit) = &self.0.context.audit {
            audit.metrics(&mut text);
        }
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        client: IpAddr,
        request_id: &http::HeaderValue,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix("/admin/v1/") else {
            return Err(ApiError::NoRoute);
        };
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ApiError::NoRoute);
        }
        // Refuse unknown routes before looking at credentials, but check
        // credentials before reading any body.
        let allowed = allowed_methods(&segments).ok_or(ApiError::NoRoute)?;
        if !allowed.split(", ").any(|m| m == req.method().as_str()) {
            return Err(ApiError::MethodNotAllowed(allowed));
        }
        // Guessing admin tokens or keys is limited per source, in the admin
        // port's own table: checked before the token, so a blocked source
        // cannot go on guessing it, and apart from the proxy port's, so bad
        // keys sent through a shared ingress address do not lock admins out.
        let throttle = &self.0.context.throttle;
        throttle.before_authentication(Port::Admin, client)?;
        let audited = AdminFacts {
            client,
            user_agent: crate::audit::user_agent(req.headers()),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            method: req.method().clone(),
            path: path.clone(),
        };
        let caller = match self.0.auth.caller(req.headers()).await {
            Ok(caller) => caller,
            Err(e) => {
                throttle.authentication_failed(Port::Admin, client, &e);
                if e.is_bad_credential() {
                    self.audit_denied(&audited, &e).await;
                }
                return Err(e.into());
            }
        };
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_string);
        let body = self.body(req).await?;
        let (result, authorized) = auth::tracking_authorization(self.dispatch(
            &caller,
            &method,
            &segments,
            &body,
            query.as_deref(),
        ))
        .await;
        if method != Method::GET {
            let done = Done {
                result: &result,
                authorized,
            };
            self.audit_action(&audited, &caller, &segments, &body, done)
                .await?;
        }
        let (status, value) = result?;
        Ok(json_response(status, &value))
    }

    /// Records a refused admin credential (nobody authenticated: aggregated
    /// per source like the proxy's anonymous denials).
    async fn audit_denied(&self, facts: &AdminFacts, e: &AuthnError) {
        let Some(audit) = &self.0.context.audit else {
            return;
        };
        let Problem { status, code, .. } = e.problem();
        let event = Event {
            details: Details::Json(json!({
                "action": facts.action(),
                "decision": "deny",
                "reason": code,
                "port": "admin",
            })),
            ..facts.event(EventType::AccessDenied)
        };
        if let Err(e) = audit
            .record_anonymous_denial(event, code, status.as_u16())
            .await
        {
            tracing::error!(error = %e, "Refused admin credential not recorded in the audit log.");
        }
    }

    /// Records an admin call refused before its caller was authorized for
    /// it, or naming a tenant that does not exist: under the caller's own
    /// tenant (none for the admin token), as a denial, without the body.
    /// Whatever a refused caller sends, no record appears in another
    /// tenant's log, nothing it invented is written, and no index file is
    /// made for a tenant that does not exist.
    async fn audit_refused(
        &self,
        audit: &Audit,
        facts: &AdminFacts,
        caller: &auth::Caller,
        e: &ApiError,
    ) -> Result<(), ApiError> {
        let Problem { status, code, .. } = e.problem();
        let event = Event {
            tenant_id: caller.tenant_id().to_string(),
            details: Details::Json(json!({
                "action": facts.action(),
                "actor": caller.actor(),
                "decision": "deny",
                "reason": code,
                "status": status.as_u16(),
                "port": "admin",
            })),
            ..facts.event_as(caller, EventType::AccessDenied)
        };
        audit.record(event, Durability::Written).await?;
        Ok(())
    }

    /// Records an admin mutation, successful or not: actor, target, what
    /// changed. A successful one is on disk before its 2xx goes out; if it
    /// cannot be recorded the caller gets 503 (the change itself stands).
    async fn audit_action(
        &self,
        facts: &AdminFacts,
        caller: &auth::Caller,
        segments: &[&str],
        body: &Bytes,
        done: Done<'_>,
    ) -> Result<(), ApiError> {
        let Some(audit) = &self.0.context.audit else {
            return Ok(());
        };
        let result = done.result;
        if let Err(e) = result {
            let named = match segments {
                ["tenants", t, ..] => Some(*t),
                _ => None,
            };
            let exists = match named {
                Some(t) => self.0.ops.tenant_exists(t).await,
                None => true,
            };
            // Refused on the target too (a key or user more powerful than
            // the caller): as unauthorised as a refusal for the tenant.
            let forbidden = matches!(e, ApiError::Forbidden(_) | ApiError::TenantMismatch);
            if !done.authorized || !exists || forbidden {
                return self.audit_refused(audit, facts, caller, e).await;
            }
        }
        let (status, outcome, error_code) = match result {
            Ok((status, _)) => (*status, "success", None),
            Err(e) => {
                let Problem { status, code, .. } = e.problem();
                (status, "failure", Some(code))
            }
        };
        let created = result.as_ref().ok().map(|(_, v)| v);
        let tenant = segments
            .get(1)
            .map(|t| t.to_string())
            .or_else(|| created.and_then(|v| v["tenant_id"].as_str().map(str::to_string)))
            .unwrap_or_default();
        // What changed: the request body (admin bodies never carry a
        // secret) and the ids the response names (never the key it returns).
        let changes: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut target = serde_json::Map::new();
        if let Some(v) = created {
            for id in ["tenant_id", "key_id", "project_id", "user_id", "name"] {
                if let Some(x) = v.get(id).filter(|x| x.is_string()) {
                    target.insert(id.to_string(), x.clone());
                }
            }
        }
        let kinds = admin_event_types(&facts.method, segments, status, &changes);
        let mut events = Vec::new();
        for event_type in kinds {
            events.push(Event {
                tenant_id: tenant.clone(),
                details: Details::Json(json!({
                    "action": facts.action(),
                    "actor": caller.actor(),
                    "target": target,
                    "changes": changes,
                    "outcome": outcome,
                    "status": status.as_u16(),
                    "error": error_code,
                })),
                ..facts.event_as(caller, event_type)
            });
        }
        let durability = if outcome == "success" {
            Durability::Synced
        } else {
            Durability::Written
        };
        for event in events {
            audit.record(event, durability).await?;
        }
        Ok(())
    }

    /// Runs one admin operation.
    async fn dispatch(
        &self,
        caller: &auth::Caller,
        method: &Method,
        segments: &[&str],
        body: &Bytes,
        query: Option<&str>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let ops = &self.0.ops;
        let ok = |v: Value| Ok((StatusCode::OK, v));
        let created = |v: Value| Ok((StatusCode::CREATED, v));
        match (method.clone(), segments) {
            (Method::POST, ["tenants"]) => {
                created(json!(ops.create_tenant(caller, parse(body)?).await?))
            }
            (Method::GET, ["tenants"]) => ok(json!({"tenants": ops.list_tenants(caller).await?})),
            (Method::GET, ["tenants", t]) => ok(json!(ops.get_tenant(caller, t).await?)),
            (Method::PATCH, ["tenants", t]) => {
                ok(json!(ops.patch_tenant(caller, t, parse(body)?).await?))
            }
            (Method::DELETE, ["tenants", t]) => {
                ops.delete_tenant(caller, t).await?;
                ok(json!({"tenant_id": t, "deleted": true}))
            }
            (Method::POST, ["tenants", t, "keys"]) => {
                let (key, secret) = ops.create_key(caller, t, parse(body)?).await?;
                created(with_secret(key_view(&key), secret))
            }
            (Method::GET, ["tenants", t, "keys"]) => {
                let keys: Vec<Value> = ops
                    .list_keys(caller, t)
                    .await?
                    .iter()
                    .map(key_view)
                    .collect();
                ok(json!({"keys": keys}))
            }
            (Method::DELETE, ["tenants", t, "keys", k]) => {
                ok(key_view(&ops.revoke_key(caller, t, k).await?))
            }
            (Method::POST, ["tenants", t, "keys", k, "rotate"]) => {
                let body = parse(body)?;
                let (key, secret) = ops.rotate_key(caller, t, k, body).await?;
                ok(with_secret(key_view(&key), secret))
            }
            (Method::POST, ["tenants", t, "projects"]) => {
                created(json!(ops.create_project(caller, t, parse(body)?).await?))
            }
            (Method::GET, ["tenants", t, "projects"]) => {
                ok(json!({"projects": ops.list_projects(caller, t).await?}))
            }
            (Method::PUT, ["tenants", t, "users", u]) => {
                let (user, was_created) = ops.put_user(caller, t, u, parse(body)?).await?;
                if was_created {
                    created(json!(user))
                } else {
                    ok(json!(user))
                }
            }
            (Method::GET, ["tenants", t, "users"]) => {
                ok(json!({"users": ops.list_users(caller, t).await?}))
            }
            (Method::DELETE, ["tenants", t, "users", u]) => {
                ops.delete_user(caller, t, u).await?;
                ok(json!({"user_id": u, "deleted": true}))
            }
            (Method::GET, ["tenants", t, "sessions"]) => {
                ok(json!({"sessions": ops.list_sessions(caller, t).await?}))
            }
            (Method::DELETE, ["tenants", t, "sessions", id]) => {
                ops.revoke_session(caller, t, id).await?;
                ok(json!({"session_id": id, "revoked": true}))
            }
            (Method::GET, ["tenants", t, "usage"]) => ok(ops.usage(caller, t).await?),
            (Method::GET, ["tenants", t, "roles"]) => {
                ok(json!({"roles": ops.list_roles(caller, t).await?}))
            }
            (Method::GET, ["tenants", t, "roles", r]) => {
                ok(json!(ops.get_role(caller, t, r).await?))
            }
            (Method::PUT, ["tenants", t, "roles", r]) => {
                let (role, was_created) = ops.put_role(caller, t, r, parse(body)?).await?;
                if was_created {
                    created(json!(role))
                } else {
                    ok(json!(role))
                }
            }
            (Method::DELETE, ["tenants", t, "roles", r]) => {
                ops.delete_role(caller, t, r).await?;
                ok(json!({"name": r, "deleted": true}))
            }
            (Method::GET, ["audit", rest @ ..]) => {
                let Some(audit) = &self.0.context.audit else {
                    return Err(ApiError::NotFound(
                        "the audit log is disabled (audit.enabled)".into(),
                    ));
                };
                let params = audit_query::query_params(query);
                match rest {
                    [] => ok(audit_query::query(audit, caller, &params).await?),
                    _ => {
                        let _slot = self.0.ops.report_slot()?;
                        ok(audit_query::report(audit, caller, &params).await?)
                    }
                }
            }
            _ => Err(ApiError::NoRoute),
        }
    }

    /// Reads the body, bounded.
    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        // Any Content-Type is accepted (curl -d sends a form type): the body
        // must parse as strict JSON. Authentication is a bearer token, not a
        // cookie, so there is no cross-site form to defend against here.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.0.max_body as u64) {
            return Err(ApiError::TooLarge);
        }
        match Limited::new(req.into_body(), self.0.max_body)
            .collect()
            .await
        {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
            Err(_) => Err(ApiError::bad("request body could not be read")),
        }
    }
}

/// The methods each route accepts, or `None` when there is no such route.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["tenants"] => "GET, POST",
        ["tenants", _] => "GET, PATCH, DELETE",
        ["tenants", _, "keys"] => "GET, POST",
        ["tenants", _, "keys", _] => "DELETE",
        ["tenants", _, "keys", _, "rotate"] => "POST",
        ["tenants", _, "projects"] => "GET, POST",
        ["tenants", _, "users"] => "GET",
        ["tenants", _, "users", _] => "PUT, DELETE",
        ["tenants", _, "sessions"] => "GET",
        ["tenants", _, "sessions", _] => "DELETE",
        ["tenants", _, "usage"] => "GET",
        ["tenants", _, "roles"] => "GET",
        ["tenants", _, "roles", _] => "GET, PUT, DELETE",
        ["audit"] | ["audit", "report"] => "GET",
        _ => return None,
    })
}

fn with_secret(mut view: Value, secret: String) -> Value {
    view["api_key"] = Value::String(secret);
    view
}

/// Parses a strict JSON body; an empty body reads as `{}`, so requests whose
/// fields are all optional (create a key, rotate) need none, and the others
/// get "missing field …".
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

impl Handler for Admin {
    type Body = LoggedBody<Full<Bytes>>;

    async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Self::Body> {
        let context = &self.0.context;
        let exchange = Exchange::begin(context.access_log.as_ref(), "admin", &req, conn.peer.ip());
        let request_id = &exchange.request_id;
        let resp = match context
            .readiness
            .respond(req.method(), req.uri().path(), true)
            .await
        {
            Some(resp) => resp,
            None if req.method() == Method::GET && req.uri().path() == "/metrics" => self.metrics(),
            None => match self.route(req, conn.peer.ip(), request_id).await {
                Ok(resp) => resp,
                Err(e) => response::error(&e, request_id),
            },
        };
        exchange.finish(resp)
    }
}

/// How an admin operation ended, for its record.
struct Done<'a> {
    result: &'a Result<(StatusCode, Value), ApiError>,
    /// Its caller passed the operation's authorization.
    authorized: bool,
}

/// The request facts an admin audit record carries.
struct AdminFacts {
    client: IpAddr,
    user_agent: String,
    request_id: String,
    method: Method,
    path: String,
}

impl AdminFacts {
    fn event(&self, event_type: EventType) -> Event {
        Event {
            ip_address: self.client.to_string(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            ..Event::new(event_type, Value::Null)
        }
    }

    /// `METHOD /path`, as the records show the action.
    fn action(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn event_as(&self, caller: &auth::Caller, event_type: EventType) -> Event {
        Event {
            user_id: caller.actor(),
            ..self.event(event_type)
        }
    }
}

/// The audit event types of an admin mutation (design.md's names). A user
/// PUT with roles is also a `role.assigned`.
fn admin_event_types(
    method: &Method,
    segments: &[&str],
    status: StatusCode,
    changes: &Value,
) -> Vec<EventType> {
    let one = |t: EventType| vec![t];
    match (method.as_str(), segments) {
        ("POST", ["tenants"]) => one(EventType::TenantCreated),
        ("PATCH", ["tenants", _]) => {
            if changes["status"] == "suspended" {
                one(EventType::TenantSuspended)
            } else {
                one(EventType::TenantUpdated)
            }
        }
        ("DELETE", ["tenants", _]) => one(EventType::TenantDeleted),
        ("POST", ["tenants", _, "keys"]) => one(EventType::ApiKeyCreated),
        ("DELETE", ["tenants", _, "keys", _]) => one(EventType::ApiKeyRevoked),
        ("POST", ["tenants", _, "keys", _, "rotate"]) => one(EventType::ApiKeyRotated),
        ("POST", ["tenants", _, "projects"]) => one(EventType::ProjectCreated),
        ("PUT", ["tenants", _, "users", _]) => {
            let user = if status == StatusCode::CREATED {
                EventType::UserCreated
            } else {
                EventType::UserUpdated
            };
            if changes.get("roles").is_some_and(|r| r.is_array()) {
                vec![user, EventType::RoleAssigned]
            } else {
                vec![user]
            }
        }
        ("DELETE", ["tenants", _, "users", _]) => one(EventType::UserDeleted),
        ("DELETE", ["tenants", _, "sessions", _]) => one(EventType::Logout),
        ("PUT", ["tenants", _, "roles", _]) => one(EventType::RoleDefined),
        ("DELETE", ["tenants", _, "roles", _]) => one(EventType::RoleDeleted),
        _ => one(EventType::AdminAction),
    }
}
