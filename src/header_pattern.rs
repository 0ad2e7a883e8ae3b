//! Header names as a sloppy upstream compares them, and the `Name` /
//! `Prefix-*` patterns of `proxy.strip_headers`. At the bottom so the
//! configuration can parse patterns and forwarding can match them without
//! either importing the other.

use http::HeaderName;

/// Compares header names the way a sloppy upstream might: case-insensitive,
/// with `_` and `.` read as `-` (CGI/WSGI turn `X_CostOps` into `X-COSTOPS`).
pub fn canon(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether `name` starts with `prefix` (already canonical), as [`canon`] reads it.
pub fn canon_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| canon(*a) == *b)
}

/// Whether `name` is `other` (already canonical), as [`canon`] reads it.
pub fn canon_eq(name: &[u8], other: &[u8]) -> bool {
    name.len() == other.len() && canon_starts_with(name, other)
}

/// A header name or a prefix (`X-Auth-Request-*`), matched as [`canon`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPattern {
    canonical: Box<[u8]>,
    prefix: bool,
}

impl HeaderPattern {
    /// Parses `Name` or `Prefix-*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.is_empty() || HeaderName::from_bytes(body.as_bytes()).is_err() {
            return Err(format!("not a header name (optionally ending in *): {s:?}"));
        }
        Ok(Self {
            canonical: body.bytes().map(canon).collect(),
            prefix,
        })
    }

    /// Whether `name` is this header, or starts with this prefix.
    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            canon_starts_with(name.as_bytes(), &self.canonical)
        } else {
            canon_eq(name.as_bytes(), &self.canonical)
        }
    }
}
