//! How an admin request fails: [`ApiError`], one variant per condition,
//! and (its [`ErrorResponse`]) the status, code and message each becomes
//! through `response::error`.

use http::{StatusCode, header};

use crate::authn::AuthnError;
use crate::response::{self, ErrorResponse, Problem};
use crate::store::StoreError;
use crate::throttle;

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
    /// A backup could not be taken (500; the cause is in the server's log).
    #[error("the backup could not be taken")]
    Backup,
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
            ApiError::Store(StoreError::Unavailable(_)) => fixed(
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is unavailable; nothing was changed, try again",
            ),
            ApiError::Store(_) => fixed(
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the store failed; nothing was changed",
            ),
            ApiError::Audit(e) => e.problem(),
            ApiError::Backup => fixed(
                S::INTERNAL_SERVER_ERROR,
                "backup_failed",
                "the backup could not be taken; see the server's log",
            ),
            ApiError::TooLarge => response::BODY_TOO_LARGE,
            ApiError::Limited(l) => l.problem(),
            ApiError::Authn(e) => e.problem(),
        }
    }

    fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            ApiError::Authn(e) => e.add_headers(headers),
            ApiError::Store(StoreError::Unavailable(_)) => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
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
