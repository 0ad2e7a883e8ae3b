//! The one place where errors become responses.
//!
//! Stages return their own small error types; [`rescue`] maps each to a
//! status and a stable `code`, logs the full cause (5xx at `warn`), and
//! writes the contract's body:
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
//! Client-facing messages never include internals.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::forward::ForwardError;
use crate::forward::headers::X_REQUEST_ID;
use crate::limits::TooLarge;

/// Anything a request can fail with before or while it is forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Over a size limit.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// Forwarding failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// No such endpoint (admin port).
    #[error("not found")]
    NotFound,
}

/// Turns an error into its response, logging the cause.
pub fn rescue(err: &Error, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    use ForwardError as F;
    let (status, code, message) = match err {
        Error::TooLarge(TooLarge::Headers { .. }) => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "request headers are too large",
        ),
        Error::TooLarge(TooLarge::Body { .. }) | Error::Forward(F::BodyTooLarge { .. }) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is too large",
        ),
        Error::Forward(F::BadRequest(why)) => (StatusCode::BAD_REQUEST, "bad_request", *why),
        Error::Forward(F::BodyRead(_)) => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body could not be read",
        ),
        Error::Forward(F::Unavailable(_)) => (
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "the upstream service is unavailable",
        ),
        Error::Forward(F::Failed(_)) => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream service failed to respond",
        ),
        Error::Forward(F::Timeout) => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream service did not respond in time",
        ),
        Error::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    if status.is_server_error() {
        tracing::warn!(request_id = ?request_id, error = %ErrorChain(err), "Request failed.");
    } else {
        tracing::debug!(request_id = ?request_id, error = %ErrorChain(err), "Request rejected.");
    }
    json_error(status, code, message, request_id)
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
