//! The admin port: `/health`, `/ready`, `/metrics`, and the admin API
//! under `/admin/v1/` (tenants, keys, projects, users, sessions, roles,
//! usage, the audit log). JSON in and out; strict bodies; every error in
//! the contract's shape. The admin API is served on this port only.
//!
//! # Layout
//! - this file: the port's handler; one admin call, in order: route,
//!   throttle, authenticate, read the body, dispatch, record. Also
//!   `GET /admin/v1/backup`, outside the route table because its answer
//!   is a stream, not JSON (see [`crate::backup`]).
//! - `routes`: the table of endpoints, one row each: method, path,
//!   permission, audit event types, handler.
//! - `router`: what is read from that table: matching (404, 405 and
//!   `Allow`), the permission check before an operation, the event types
//!   of a mutation.
//! - `record`: the audit records of admin calls.
//! - `auth`: who calls (admin token or API key) and what they may do.
//! - `ops`: [`ops::AdminOps`], the operations, independent of HTTP, with
//!   one file per resource: `tenants`, `keys`, `projects`, `users`,
//!   `sessions`, `roles`, `usage`; `audit_query` reads the audit log;
//!   `compliance` decides who sees which compliance report, and serves
//!   its HTML page (`GET /admin/compliance`, outside the route table:
//!   its answer is not JSON).
//! - `requests`: the request bodies; `error`: [`ApiError`].

pub mod audit_query;
pub mod auth;
mod compliance;
mod error;
mod keys;
pub mod ops;
mod projects;
mod record;
pub mod requests;
mod roles;
mod router;
mod routes;
mod sessions;
mod tenants;
mod usage;
mod users;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

pub use self::error::ApiError;
use crate::access_log::{Exchange, LoggedBody};
use crate::backup::snapshot::{BackupBody, Source as BackupSource};
use crate::context::Context;
use crate::listener::{ConnInfo, Handler};
use crate::metrics::Exposition;
use crate::response::{self, json_response};
use crate::throttle::Port;
use auth::AdminAuth;
use ops::AdminOps;
use record::{Done, Facts, Mutation};
use router::Call;
use routes::ROUTER;

/// The admin port's handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admin(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    context: Context,
    auth: AdminAuth,
    ops: AdminOps,
    max_body: usize,
    exposition: Arc<Exposition>,
    /// What `GET /admin/v1/backup` snapshots (`None`: no backups here).
    backup: Option<Arc<BackupSource>>,
}

/// An admin response's body: JSON (or text), or a backup's stream.
pub type AdminBody = Either<Full<Bytes>, BackupBody>;

/// The backup endpoint's path (not in the route table: its answer is a
/// stream, not JSON).
const BACKUP_PATH: &str = "/admin/v1/backup";

impl Admin {
    /// Builds the admin router; `backup`: what `GET /admin/v1/backup`
    /// snapshots, if anything.
    pub fn new(
        context: Context,
        auth: AdminAuth,
        ops: AdminOps,
        max_body: usize,
        exposition: Arc<Exposition>,
        backup: Option<Arc<BackupSource>>,
    ) -> Self {
        Self(Arc::new(Inner {
            context,
            auth,
            ops,
            exposition,
            max_body,
            backup,
        }))
    }

    /// `GET /admin/v1/backup`: a consistent snapshot of the store and the
    /// audit log, streamed (see [`crate::backup`]). `system_admin` only
    /// (the admin token, or a key holding it), throttled and authenticated
    /// like every admin call, and recorded (`audit.backup`, synced) before
    /// the snapshot is taken, so the backup holds its own record and no
    /// backup is taken unrecorded. The caller names nothing on the server.
    async fn backup(
        &self,
        req: Request<Incoming>,
        client: IpAddr,
        request_id: &http::HeaderValue,
    ) -> Result<Response<AdminBody>, ApiError> {
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed("GET"));
        }
        let throttle = &self.0.context.throttle;
        throttle.before_authentication(Port::Admin, client)?;
        let audit = self.0.context.audit.as_ref();
        let facts = Facts::of(&req, client, request_id, BACKUP_PATH.to_string());
        let caller = self.authenticate(req.headers(), client, &facts).await?;
        if let Err(e) = caller.authorize(None, &[crate::roles::Permission::SystemAdmin]) {
            if let Some(audit) = audit {
                record::refused(audit, &facts, &caller, &e).await?;
            }
            return Err(e);
        }
        let Some(source) = &self.0.backup else {
            return Err(ApiError::NotFound(
                "backups are not available on this server".into(),
            ));
        };
        let refused = |e| match e {
            crate::backup::BackupError::Busy => {
                ApiError::Busy("another backup is being taken; try again shortly")
            }
            crate::backup::BackupError::Unsupported(m) => ApiError::Conflict(m),
            crate::backup::BackupError::Audit(e) => ApiError::Audit(e),
            other => {
                tracing::error!(error = %other, "Backup failed.");
                ApiError::Backup
            }
        };
        // The slot first: a backup that cannot start is not recorded as one.
        let reserved = source.reserve().map_err(refused)?;
        if let Some(audit) = audit {
            record::backup(audit, &facts, &caller).await?;
        }
        let snapshot = reserved.take().await.map_err(refused)?;
        tracing::info!(actor = %caller.actor(), "Backup taken; streaming it.");
        let mut resp = Response::new(Either::Right(snapshot.stream()));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-costguard-backup"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        Ok(resp)
    }

    /// The caller of an admin call; a refused credential is counted
    /// against its source and recorded.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        client: IpAddr,
        facts: &Facts,
    ) -> Result<auth::Caller, ApiError> {
        match self.0.auth.caller(headers).await {
            Ok(caller) => Ok(caller),
            Err(e) => {
                self.0
                    .context
                    .throttle
                    .authentication_failed(Port::Admin, client, &e);
                if let Some(audit) = self.0.context.audit.as_ref()
                    && e.is_bad_credential()
                {
                    record::refused_credential(audit, facts, &e).await;
                }
                Err(e.into())
            }
        }
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
        let found = ROUTER.find(req.method(), &segments)?;
        // Guessing admin tokens or keys is limited per source, in the admin
        // port's own table: checked before the token, so a blocked source
        // cannot go on guessing it, and apart from the proxy port's, so bad
        // keys sent through a shared ingress address do not lock admins out.
        let throttle = &self.0.context.throttle;
        throttle.before_authentication(Port::Admin, client)?;
        let audit = self.0.context.audit.as_ref();
        let facts = Facts::of(&req, client, request_id, path.clone());
        let caller = self.authenticate(req.headers(), client, &facts).await?;
        let query = req.uri().query().map(str::to_string);
        let body = self.body(req).await?;
        let call = Call {
            ops: &self.0.ops,
            audit,
            caller: &caller,
            body: &body,
            query: query.as_deref(),
        };
        let (result, authorized) = auth::tracking_authorization(found.dispatch(call)).await;
        if let Some(audit) = audit
            && facts.method != Method::GET
        {
            let mutation = Mutation {
                facts: &facts,
                caller: &caller,
                found: &found,
                body: &body,
            };
            let done = Done {
                result: &result,
                authorized,
            };
            record::mutation(audit, &self.0.ops, mutation, done).await?;
        }
        let (status, value) = result?;
        Ok(json_response(status, &value))
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

impl Handler for Admin {
    type Body = LoggedBody<AdminBody>;

    async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Self::Body> {
        let context = &self.0.context;
        let exchange = Exchange::begin(
            context.access_log.as_ref(),
            "admin",
            &req,
            conn.peer.ip(),
            None,
        );
        let request_id = &exchange.request_id;
        let resp = match context
            .readiness
            .respond(req.method(), req.uri().path(), true)
            .await
        {
            Some(resp) => resp.map(Either::Left),
            None if req.method() == Method::GET && req.uri().path() == "/metrics" => {
                metrics_page(&self.0.exposition, req.headers()).map(Either::Left)
            }
            None if req.uri().path() == BACKUP_PATH => {
                match self.backup(req, conn.peer.ip(), request_id).await {
                    Ok(resp) => resp,
                    Err(e) => response::error(&e, request_id).map(Either::Left),
                }
            }
            None if req.uri().path() == compliance::PAGE_PATH => {
                match self.compliance_page(req, conn.peer.ip(), request_id).await {
                    Ok(resp) => resp.map(Either::Left),
                    Err(e) => response::error(&e, request_id).map(Either::Left),
                }
            }
            None => match self.route(req, conn.peer.ip(), request_id).await {
                Ok(resp) => resp.map(Either::Left),
                Err(e) => response::error(&e, request_id).map(Either::Left),
            },
        };
        exchange.finish(resp)
    }
}

/// `GET /metrics`: counts, sizes, durations and configured names only,
/// never an id or a secret, so it needs no credential (the admin port is
/// loopback unless configured otherwise). OpenMetrics when the scraper
/// asks for it (`Accept: application/openmetrics-text`), else the
/// Prometheus text format.
fn metrics_page(exposition: &Exposition, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = exposition.render(openmetrics);
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// The read-only metrics listener (`metrics.listen`): `GET /metrics` and
/// nothing else, so a Prometheus outside the pod can scrape while the admin
/// API stays on loopback. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetricsPort(pub Arc<Exposition>);

impl Handler for MetricsPort {
    type Body = Full<Bytes>;

    async fn handle(&self, req: Request<Incoming>, _conn: &ConnInfo) -> Response<Self::Body> {
        let request_id = crate::request_id::take_or_generate(req.headers());
        if req.uri().path() != "/metrics" {
            return response::error(&ApiError::NoRoute, &request_id);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return response::error(&ApiError::MethodNotAllowed("GET, HEAD"), &request_id);
        }
        metrics_page(&self.0, req.headers())
    }
}
