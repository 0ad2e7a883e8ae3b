//! The answers costguard writes itself, and the one path from an error to
//! its response.
//!
//! Each stage's error type says what the client is told by implementing
//! [`ErrorResponse`] next to its definition (status, stable `code`,
//! message, extra headers); [`error`] is the only function that turns an
//! error into a response: it logs the full cause (5xx at `warn`) and writes
//! the contract's body
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
//! Client-facing messages never include internals. This module sits at the
//! bottom, so every stage can answer without importing another.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::request_id::X_REQUEST_ID;

/// What a client is told about an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem<'a> {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine-readable code (design.md's error codes).
    pub code: &'static str,
    /// The client-facing message.
    pub message: Cow<'a, str>,
}

impl Problem<'static> {
    /// A problem with a fixed message.
    pub const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message: Cow::Borrowed(message),
        }
    }
}

/// An error that knows how it is answered.
pub trait ErrorResponse: std::error::Error + 'static {
    /// Status, code and message.
    fn problem(&self) -> Problem<'_>;

    /// Headers the answer carries beside the body (`WWW-Authenticate`,
    /// `Retry-After`, `RateLimit-*`, `Allow`); none by default.
    fn add_headers(&self, _headers: &mut HeaderMap) {}
}

/// The response for an error, logging its cause.
pub fn error<E: ErrorResponse>(err: &E, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let problem = err.problem();
    if problem.status.is_server_error() {
        tracing::warn!(request_id = ?request_id, error = %ErrorChain(err), "Request failed.");
    } else {
        tracing::debug!(request_id = ?request_id, error = %ErrorChain(err), "Request rejected.");
    }
    let mut resp = problem_body(&problem, request_id);
    err.add_headers(resp.headers_mut());
    resp
}

/// The contract's error body for a problem.
fn problem_body(problem: &Problem<'_>, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {
            "code": problem.code,
            "message": problem.message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let mut resp = json_response(problem.status, &body);
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

/// `413 body_too_large`, shared by the proxy's and the admin API's bounds.
pub const BODY_TOO_LARGE: Problem<'static> = Problem::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "body_too_large",
    "request body is too large",
);

/// `503 audit_unavailable`: the audit log cannot take the record (fail closed).
pub const AUDIT_UNAVAILABLE: Problem<'static> = Problem::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "audit_unavailable",
    "the audit log cannot be written right now",
);
