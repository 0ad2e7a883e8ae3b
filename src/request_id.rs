//! Request ids: keep a client's `X-Request-Id` when it is safe to log and
//! forward, otherwise make a UUIDv7 (time-ordered, so ids sort by arrival).

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`: kept when valid, generated otherwise, sent both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest inbound id kept.
const MAX_LEN: usize = 128;

/// The request's id: the single inbound `X-Request-Id` if it is 1 to 128
/// characters of `[A-Za-z0-9._:-]`, else a fresh UUIDv7.
pub fn take_or_generate(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next())
        && is_valid(v.as_bytes())
    {
        return v.clone();
    }
    generate()
}

/// A fresh UUIDv7 as a header value.
pub fn generate() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

fn is_valid(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-request-id", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn valid_ids_are_kept() {
        assert_eq!(take_or_generate(&with(&["abc-123_x.y:z"])), "abc-123_x.y:z");
    }

    #[test]
    fn invalid_or_repeated_ids_are_replaced() {
        let long = "a".repeat(129);
        for bad in [
            vec!["has space"],
            vec![""],
            vec![long.as_str()],
            vec!["a", "b"],
            vec!["<script>"],
        ] {
            let id = take_or_generate(&with(&bad));
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{bad:?}");
        }
    }
}
