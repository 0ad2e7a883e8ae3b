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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderMap;
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;
    use crate::authn::AuthnError;
    use crate::authz::{AuthzOutcome, Denied};
    use crate::forward::ForwardError;
    use crate::limits::TooLarge;
    use crate::store::StoreError;
    use crate::throttle::Limited;

    const ID: &str = "req-7f3a9c1e-test";

    /// What a client receives for `err`: status, headers and the body
    /// text, after checking what every error answer must carry.
    async fn answer_text<E: ErrorResponse>(err: &E) -> (StatusCode, HeaderMap, String) {
        let resp = error(err, &HeaderValue::from_static(ID));
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let h = &parts.headers;
        assert_eq!(h[header::CONTENT_TYPE], "application/json", "{err}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{err}");
        assert_eq!(h[&X_REQUEST_ID], ID, "the request id is echoed: {err}");
        let text = String::from_utf8(bytes.to_vec()).expect("the body is UTF-8");
        (parts.status, parts.headers, text)
    }

    /// As [`answer_text`], with the body parsed.
    async fn answer<E: ErrorResponse>(err: &E) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, text) = answer_text(err).await;
        let body = serde_json::from_str(&text).expect("the body is JSON");
        (status, headers, body)
    }

    /// The contract's body, exactly (no extra fields, none missing).
    fn body(code: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message, "request_id": ID}})
    }

    fn store_error() -> Arc<StoreError> {
        Arc::new(StoreError::Backend(
            "sled: corrupted page 4711 in /var/lib/costguard/db/snap.0000A1".into(),
        ))
    }

    #[tokio::test]
    async fn missing_credential_is_401_with_a_bare_bearer_challenge() {
        let (status, h, b) = answer(&AuthnError::Missing).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(b, body("unauthenticated", "credentials are required"));
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer realm=\"costguard\"");
        assert_eq!(h.get_all(header::WWW_AUTHENTICATE).iter().count(), 1);
    }

    #[tokio::test]
    async fn unknown_key_is_401_invalid_key_with_an_invalid_token_challenge() {
        let (status, h, b) = answer(&AuthnError::UnknownKey).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(b, body("invalid_key", "the API key is not valid"));
        assert_eq!(
            h[header::WWW_AUTHENTICATE],
            "Bearer realm=\"costguard\", error=\"invalid_token\""
        );
    }

    #[tokio::test]
    async fn non_401_refusals_carry_no_challenge() {
        // A challenge on 403 invites the client to retry with another
        // credential, which cannot help.
        let (status, h, b) = answer(&AuthnError::TenantSuspended).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(b, body("tenant_suspended", "the tenant is suspended"));
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
    }

    #[tokio::test]
    async fn spent_budget_is_402_budget_exceeded_naming_the_scope() {
        let (status, h, b) = answer(&Limited::Budget("tenant")).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(
            b,
            body(
                "budget_exceeded",
                "the tenant's budget for this month is spent"
            )
        );
        // Waiting does not help within the month: no Retry-After.
        assert!(h.get(header::RETRY_AFTER).is_none());
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
        let (_, _, b) = answer(&Limited::Budget("project")).await;
        assert_eq!(
            b["error"]["message"],
            "the project's budget for this month is spent"
        );
    }

    #[tokio::test]
    async fn a_rate_refusal_goes_out_with_its_retry_headers() {
        let limited = Limited::Rate(crate::rate_limit::RateStatus {
            limit: 60,
            remaining: 0,
            reset: 7,
            window: 60,
            retry_after: Some(7),
        });
        let (status, h, b) = answer(&limited).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(b["error"]["code"], "rate_limited");
        assert_eq!(h[header::RETRY_AFTER], "7");
        assert_eq!(h["ratelimit-limit"], "60");
        assert_eq!(h["ratelimit-remaining"], "0");
    }

    #[tokio::test]
    async fn oversized_headers_are_431() {
        let err = TooLarge::Headers {
            max_bytes: 16_384,
            max_count: 100,
        };
        let (status, _, b) = answer(&err).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(
            b,
            body("headers_too_large", "request headers are too large")
        );
        let (status, _, b) = answer(&TooLarge::Body { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(b, body("body_too_large", "request body is too large"));
    }

    #[tokio::test]
    async fn upstream_timeout_is_504() {
        let (status, h, b) = answer(&ForwardError::Timeout).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            b,
            body(
                "upstream_timeout",
                "the upstream service did not respond in time"
            )
        );
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
    }

    /// A 5xx answer: the fixed message, nothing of the cause.
    async fn assert_cause_hidden<E: ErrorResponse>(err: &E, message: &str) {
        let (status, h, text) = answer_text(err).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{message}");
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
        for secret in [
            "sled",
            "corrupted",
            "/var/lib",
            "redis",
            "10.1.2.3",
            "backend",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked: {text}");
        }
        let b: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(b, body("unavailable", message));
    }

    #[tokio::test]
    async fn server_errors_never_carry_their_internal_cause() {
        assert_cause_hidden(
            &AuthnError::Store(store_error()),
            "credentials cannot be checked right now",
        )
        .await;
        assert_cause_hidden(
            &AuthzOutcome::Store(store_error()),
            "authorization data cannot be read right now",
        )
        .await;
        assert_cause_hidden(
            &Limited::Unavailable("redis at 10.1.2.3:6379: connection refused".into()),
            "limits cannot be checked right now",
        )
        .await;
    }

    #[tokio::test]
    async fn denials_tell_apart_tenant_and_permission_but_not_project_existence() {
        let (status, _, b) = answer(&AuthzOutcome::Denied(Denied::TenantMismatch)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(b["error"]["code"], "tenant_mismatch");
        // A project of another tenant reads like another tenant.
        let (status, _, b) = answer(&AuthzOutcome::Denied(Denied::ForeignProject)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(b["error"]["code"], "tenant_mismatch");
        let (status, _, b) = answer(&AuthzOutcome::Denied(Denied::Missing(
            crate::roles::Permission::ExportCosts,
        )))
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(b["error"]["code"], "forbidden");
    }

    #[tokio::test]
    async fn the_request_id_is_whatever_the_request_carried() {
        let id = HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c");
        let resp = error(&AuthnError::Missing, &id);
        assert_eq!(resp.headers()[&X_REQUEST_ID], id);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let b: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(b["error"]["request_id"], "0af7651916cd43dd8448eb211c80319c");
    }

    #[tokio::test]
    async fn a_problem_is_written_as_the_contracts_body() {
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the login state is not valid",
        );
        let resp = problem_body(&problem, &HeaderValue::from_static(ID));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[&X_REQUEST_ID], ID);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let b: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(b, body("bad_request", "the login state is not valid"));
    }

    #[test]
    fn error_chain_shows_every_source() {
        let err = AuthnError::Store(store_error());
        assert_eq!(
            ErrorChain(&err).to_string(),
            "credential store unavailable: store backend: sled: corrupted page 4711 in /var/lib/costguard/db/snap.0000A1"
        );
    }
}
