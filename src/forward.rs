//! Forwarding: turn a checked client request into an upstream request, send
//! it through the pooled client, and hand the response back, streaming both
//! bodies without buffering.

pub mod headers;
pub mod upstream;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

use crate::authn;
use crate::authz::Permit;
use crate::listener::ConnInfo;
use crate::response::{self, ErrorResponse, Problem};
use headers::{Hygiene, Origin};

/// What goes upstream: the client's body, cut off at the configured limit.
pub type UpstreamBody<B = Incoming> = Limited<B>;

/// What goes back to the client: the upstream's body as it streams in, or a
/// small body costguard made itself (errors, health).
pub type ResponseBody<B = Incoming> = Either<upstream::UpstreamResponse<B>, Full<Bytes>>;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request cannot be expressed to the upstream.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body passed `limits.max_body_bytes` while streaming.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client's body broke off (disconnect, bad chunking).
    #[error("request body could not be read")]
    BodyRead(#[source] hyper::Error),
    /// No connection to the upstream could be made in time.
    #[error("upstream unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream accepted the request but failed before a response.
    #[error("upstream failed")]
    Failed(#[source] hyper::Error),
    /// The upstream did not answer within `proxy.upstream_response_timeout`.
    #[error("upstream did not respond in time")]
    Timeout,
}

impl ErrorResponse for ForwardError {
    fn problem(&self) -> Problem<'_> {
        use http::StatusCode as S;
        match self {
            ForwardError::BadRequest(why) => Problem::new(S::BAD_REQUEST, "bad_request", why),
            ForwardError::BodyTooLarge { .. } => response::BODY_TOO_LARGE,
            ForwardError::BodyRead(_) => Problem::new(
                S::BAD_REQUEST,
                "bad_request",
                "request body could not be read",
            ),
            ForwardError::Unavailable(_) => Problem::new(
                S::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream service is unavailable",
            ),
            ForwardError::Failed(_) => Problem::new(
                S::BAD_GATEWAY,
                "upstream_error",
                "the upstream service failed to respond",
            ),
            ForwardError::Timeout => Problem::new(
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream service did not respond in time",
            ),
        }
    }
}

/// Rewrites a permitted client request into the upstream request: same
/// method, path and query byte for byte, headers cleaned by `hygiene`, the
/// client's credentials removed and the permit's identity added, HTTP/1.1 to
/// the upstream, body limited to `max_body` bytes. Without a [`Permit`]
/// nothing is forwarded.
pub fn prepare<B>(
    req: Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    hygiene: &Hygiene,
    permit: &Permit,
    max_body: u64,
) -> Result<Request<UpstreamBody<B>>, ForwardError> {
    if req.method() == Method::CONNECT {
        return Err(ForwardError::BadRequest("CONNECT is not supported"));
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !path.as_str().starts_with('/') {
        return Err(ForwardError::BadRequest("request target must be a path"));
    }
    // HTTP/1.1 carries the authority in Host; HTTP/2 in :authority (and in
    // the absolute-form URI of an HTTP/1.1 proxy request).
    let host = match (parts.headers.get(header::HOST), parts.uri.authority()) {
        (Some(h), _) => h.clone(),
        (None, Some(a)) => HeaderValue::from_str(a.as_str())
            .map_err(|_| ForwardError::BadRequest("invalid authority"))?,
        (None, None) => return Err(ForwardError::BadRequest("missing Host header")),
    };
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let origin = Origin {
        peer: conn.peer.ip(),
        peer_value: &conn.peer_value,
        tls: conn.tls,
    };
    hygiene.request(&mut parts.headers, origin, &host, request_id);
    authn::strip_credentials(&mut parts.headers);
    if let Some(principal) = permit.principal() {
        principal.headers.apply(&mut parts.headers);
    }
    parts.headers.insert(header::HOST, host);
    // Origin-form (`/path?query`): the connection is already the upstream's.
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(
        parts,
        Limited::new(body, usize_limit(max_body)),
    ))
}

fn usize_limit(max: u64) -> usize {
    usize::try_from(max).unwrap_or(usize::MAX)
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs one
/// (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}
