//! The one place where errors become responses.
//!
//! Stages return their own small error types; [`rescue`] maps each to a
//! status and a stable `code`, logs the full cause (5xx at `warn`), and
//! writes the contract's body:
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
//! Client-facing messages never include internals.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::admin::ApiError;
use crate::authn::AuthnError;
use crate::authz::{AuthzOutcome, BadTarget, Denied};
use crate::forward::ForwardError;
use crate::forward::headers::X_REQUEST_ID;
use crate::limits::TooLarge;
use crate::throttle::Limited;

/// Anything a request can fail with.
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
    /// Forwarding failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// An admin API request failed.
    #[error(transparent)]
    Admin(#[from] ApiError),
    /// The audit log could not record the request (fail closed).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// `WWW-Authenticate` for a request without a credential, and for one with
/// a bad credential (RFC 6750 §3).
static CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"costguard\"");
static CHALLENGE_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"costguard\", error=\"invalid_token\"");

/// The status, code and message of an authentication failure.
pub fn authn(e: &AuthnError) -> (StatusCode, &'static str, &'static str) {
    use AuthnError as A;
    match e {
        A::Missing => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "credentials are required",
        ),
        A::Ambiguous => (
            StatusCode::BAD_REQUEST,
            "ambiguous_credentials",
            "send exactly one credential (one Authorization or one X-API-Key header)",
        ),
        A::Malformed | A::UnknownKey => (
            StatusCode::UNAUTHORIZED,
            "invalid_key",
            "the API key is not valid",
        ),
        A::UnsupportedToken => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the bearer token is not valid",
        ),
        A::RevokedKey => (
            StatusCode::UNAUTHORIZED,
            "revoked_key",
            "the API key has been revoked",
        ),
        A::ExpiredKey => (
            StatusCode::UNAUTHORIZED,
            "expired_key",
            "the API key has expired",
        ),
        A::Claims(crate::sso::claims::ClaimError::UserDisabled) => (
            StatusCode::UNAUTHORIZED,
            "user_disabled",
            "the user has been disabled or deleted",
        ),
        A::Token(_) | A::Claims(_) => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the bearer token is not valid",
        ),
        A::CrossSite => (
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "a session may not be used for this request from another site",
        ),
        A::NoSession => (
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "the session has ended; log in again at /auth/login",
        ),
        A::TenantSuspended => (
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            "the tenant is suspended",
        ),
        A::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "credentials cannot be checked right now",
        ),
    }
}

/// The status, stable code and client-facing message of an error.
pub fn classify(err: &Error) -> (StatusCode, &'static str, Cow<'_, str>) {
    use ForwardError as F;
    match err {
        Error::TooLarge(TooLarge::Headers { .. }) => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "request headers are too large".into(),
        ),
        Error::TooLarge(TooLarge::Body { .. }) | Error::Forward(F::BodyTooLarge { .. }) => {
            BODY_TOO_LARGE
        }
        Error::Authn(e) => {
            let (status, code, message) = authn(e);
            (status, code, message.into())
        }
        Error::BadTarget(e) => (StatusCode::BAD_REQUEST, "bad_request", e.to_string().into()),
        Error::Authz(AuthzOutcome::Denied(d)) => match d {
            Denied::TenantMismatch | Denied::ForeignProject => (
                StatusCode::FORBIDDEN,
                "tenant_mismatch",
                d.to_string().into(),
            ),
            Denied::NoRoute | Denied::Missing(_) => {
                (StatusCode::FORBIDDEN, "forbidden", d.to_string().into())
            }
        },
        Error::Authz(AuthzOutcome::Store(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "authorization data cannot be read right now".into(),
        ),
        Error::Limited(l) => limited(l),
        Error::Forward(F::BadRequest(why)) => {
            (StatusCode::BAD_REQUEST, "bad_request", (*why).into())
        }
        Error::Forward(F::BodyRead(_)) => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body could not be read".into(),
        ),
        Error::Forward(F::Unavailable(_)) => (
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "the upstream service is unavailable".into(),
        ),
        Error::Forward(F::Failed(_)) => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream service failed to respond".into(),
        ),
        Error::Forward(F::Timeout) => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream service did not respond in time".into(),
        ),
        Error::Admin(e) => classify_admin(e),
        Error::Audit(_) => AUDIT_UNAVAILABLE,
    }
}

fn limited(l: &Limited) -> (StatusCode, &'static str, Cow<'_, str>) {
    match l {
        Limited::Rate(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the API key's rate limit is reached; retry after the time in Retry-After".into(),
        ),
        Limited::AuthFailures(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentication attempts from this address; retry after the time in Retry-After".into(),
        ),
        Limited::Quota(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            "the tenant's daily request quota is used up; it starts again at 00:00 UTC".into(),
        ),
        Limited::Budget(scope) => (
            StatusCode::PAYMENT_REQUIRED,
            "budget_exceeded",
            format!("the {scope}'s budget for this month is spent").into(),
        ),
        Limited::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "limits cannot be checked right now".into(),
        ),
    }
}

/// The status, code and message of an admin API error.
pub fn classify_admin(e: &ApiError) -> (StatusCode, &'static str, Cow<'_, str>) {
    match e {
        ApiError::BadRequest(m) => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            m.as_str().into(),
        ),
        ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.as_str().into()),
        ApiError::TenantMismatch => (
            StatusCode::FORBIDDEN,
            "tenant_mismatch",
            "the caller belongs to another tenant".into(),
        ),
        ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.as_str().into()),
        ApiError::NoRoute => (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint".into(),
        ),
        ApiError::MethodNotAllowed(_) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint".into(),
        ),
        ApiError::LimitReached(m) => (StatusCode::CONFLICT, "limit_reached", m.as_str().into()),
        ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.as_str().into()),
        ApiError::Busy(m) => (StatusCode::TOO_MANY_REQUESTS, "busy", (*m).into()),
        ApiError::Store(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the store failed; nothing was changed".into(),
        ),
        ApiError::Audit(_) => AUDIT_UNAVAILABLE,
        ApiError::TooLarge => BODY_TOO_LARGE,
        ApiError::Limited(l) => limited(l),
        ApiError::Authn(e) => {
            let (status, code, message) = authn(e);
            (status, code, message.into())
        }
    }
}

const BODY_TOO_LARGE: (StatusCode, &str, Cow<'_, str>) = (
    StatusCode::PAYLOAD_TOO_LARGE,
    "body_too_large",
    Cow::Borrowed("request body is too large"),
);

const AUDIT_UNAVAILABLE: (StatusCode, &str, Cow<'_, str>) = (
    StatusCode::SERVICE_UNAVAILABLE,
    "audit_unavailable",
    Cow::Borrowed("the audit log cannot be written right now"),
);

/// Whether the error is an access decision (a denial the audit log
/// records), rather than a failure after the request was allowed.
pub fn is_denial(err: &Error) -> bool {
    matches!(
        err,
        Error::TooLarge(_)
            | Error::Authn(_)
            | Error::BadTarget(_)
            | Error::Authz(AuthzOutcome::Denied(_))
            | Error::Limited(_)
    )
}

/// Turns an error into its response, logging the cause.
pub fn rescue(err: &Error, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let (status, code, message) = classify(err);
    if status.is_server_error() {
        tracing::warn!(request_id = ?request_id, error = %ErrorChain(err), "Request failed.");
    } else {
        tracing::debug!(request_id = ?request_id, error = %ErrorChain(err), "Request rejected.");
    }
    let mut resp = json_error(status, code, &message, request_id);
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match err {
            Error::Authn(AuthnError::Missing)
            | Error::Admin(ApiError::Authn(AuthnError::Missing)) => &CHALLENGE,
            _ => &CHALLENGE_INVALID,
        };
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.clone());
    }
    match err {
        Error::Limited(Limited::Rate(status) | Limited::Quota(status)) => {
            status.apply(resp.headers_mut());
        }
        Error::Limited(Limited::AuthFailures(blocked))
        | Error::Admin(ApiError::Limited(Limited::AuthFailures(blocked))) => {
            blocked.status().apply(resp.headers_mut());
        }
        _ => {}
    }
    if let Error::Admin(ApiError::Busy(_)) = err {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Error::Admin(ApiError::MethodNotAllowed(allow)) = err {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// The contract's error body.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

/// A small JSON response that is never cached.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Displays an error with its sources: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
