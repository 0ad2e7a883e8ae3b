//! Helpers shared by the targets (included with `#[path]`).

#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Every method a policy route may name.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Header lines `name: value` (one per `\n`); lines that are not a valid
/// field are skipped, as hyper would have refused them. Names are ASCII
/// case-insensitive (lower-cased by `HeaderName`), values kept byte for
/// byte (surrounding spaces included, as some clients send them).
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Percent-decodes `s` (`None`: a `%` without two hex digits).
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = (*s.get(i + 1)? as char).to_digit(16)?;
            let l = (*s.get(i + 2)? as char).to_digit(16)?;
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}
