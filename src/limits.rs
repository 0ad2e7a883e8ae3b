//! Request bounds checked before anything else reads the request: header
//! size and count (431) and a declared body length over the limit (413).
//! Bodies without a length are cut off while streaming (see `forward`).

use http::{HeaderMap, header};

use crate::config::Limits;
use crate::response::{self, ErrorResponse, Problem};

/// A request over a configured bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TooLarge {
    /// More header bytes or fields than allowed.
    #[error("request headers exceed {max_bytes} bytes or {max_count} fields")]
    Headers {
        /// `limits.max_header_bytes`
        max_bytes: usize,
        /// `limits.max_header_count`
        max_count: usize,
    },
    /// `Content-Length` over the body limit.
    #[error("request body larger than {limit} bytes")]
    Body {
        /// `limits.max_body_bytes`
        limit: u64,
    },
}

impl ErrorResponse for TooLarge {
    fn problem(&self) -> Problem<'_> {
        match self {
            TooLarge::Headers { .. } => Problem::new(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "request headers are too large",
            ),
            TooLarge::Body { .. } => response::BODY_TOO_LARGE,
        }
    }
}

/// Checks header count and bytes (names plus values) and a declared
/// `Content-Length`.
pub fn check(headers: &HeaderMap, limits: &Limits) -> Result<(), TooLarge> {
    let headers_too_large = TooLarge::Headers {
        max_bytes: limits.max_header_bytes,
        max_count: limits.max_header_count,
    };
    if headers.len() > limits.max_header_count {
        return Err(headers_too_large);
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(headers_too_large);
    }
    if let Some(len) = headers.get(header::CONTENT_LENGTH)
        && let Some(len) = len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok())
        && len > limits.max_body_bytes
    {
        return Err(TooLarge::Body {
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}
