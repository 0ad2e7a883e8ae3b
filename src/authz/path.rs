//! Path safety: one canonical reading of the request path, or 400.
//!
//! costguard matches policy routes against the raw path and forwards that
//! same path byte for byte, so the path must not mean something else to the
//! upstream (which may decode, normalise or split it differently). Anything
//! that could be read two ways is refused:
//! - encoded `/` or `\` (`%2F`, `%5C`), a literal `\`;
//! - dot segments (`.`, `..`) and any encoded dot (`%2E`);
//! - percent-encoded unreserved characters (`%41` for `A`): the upstream
//!   would see a different word than the one checked;
//! - invalid percent-encoding, NUL (`%00`) and other control characters;
//! - `;` in a segment (matrix parameters some servers strip);
//! - empty segments (`//`), which some servers collapse.
//!
//! A trailing `/` is kept and simply does not match routes without one.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    /// Not `/`-rooted.
    #[error("the path must start with /")]
    NotAbsolute,
    /// `%2F`, `%5C` or `\`.
    #[error("encoded slash or backslash in the path")]
    EncodedSeparator,
    /// `.`/`..` segments or `%2E`.
    #[error("dot segment in the path")]
    DotSegment,
    /// A percent-encoded letter, digit, `-`, `_` or `~`.
    #[error("percent-encoded unreserved character in the path")]
    EncodedUnreserved,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path")]
    BadEncoding,
    /// NUL or another control character, encoded or not.
    #[error("control character in the path")]
    ControlCharacter,
    /// `;` parameters.
    #[error("';' in the path")]
    Semicolon,
    /// `//`.
    #[error("empty segment in the path")]
    EmptySegment,
    /// More segments than any route could need.
    #[error("too many path segments")]
    TooDeep,
}

/// Most segments a checked path may have.
pub const MAX_SEGMENTS: usize = 64;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Checks a raw path (without the query). `Ok` means every segment reads
/// the same to costguard and to any upstream.
pub fn check(path: &str) -> Result<(), UnsafePath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(UnsafePath::NotAbsolute);
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(UnsafePath::EncodedSeparator),
            b';' => return Err(UnsafePath::Semicolon),
            b if b < 0x20 || b == 0x7f => return Err(UnsafePath::ControlCharacter),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) else {
                    return Err(UnsafePath::BadEncoding);
                };
                let decoded = h * 16 + l;
                match decoded {
                    b'/' | b'\\' => return Err(UnsafePath::EncodedSeparator),
                    b'.' => return Err(UnsafePath::DotSegment),
                    b';' => return Err(UnsafePath::Semicolon),
                    b'%' => {} // "%25" is a literal percent sign: one reading.
                    b if b < 0x20 || b == 0x7f => return Err(UnsafePath::ControlCharacter),
                    b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' => {
                        return Err(UnsafePath::EncodedUnreserved);
                    }
                    _ => {}
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut segments = path[1..].split('/').peekable();
    let mut count = 0;
    while let Some(seg) = segments.next() {
        count += 1;
        if count > MAX_SEGMENTS {
            return Err(UnsafePath::TooDeep);
        }
        match seg {
            "." | ".." => return Err(UnsafePath::DotSegment),
            // Only the last segment may be empty (a trailing slash, or "/").
            "" if segments.peek().is_some() => return Err(UnsafePath::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass() {
        for ok in [
            "/",
            "/v1/tenants/org-12345678/costs",
            "/v1/tenants/org-1/costs/",
            "/v1/items/caf%C3%A9/x%20y",
            "/a/%25/b",
            "/a/b.c/d..e/.f",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use UnsafePath::*;
        for (bad, why) in [
            ("v1/x", NotAbsolute),
            ("/v1/tenants/org-1%2Fcosts", EncodedSeparator),
            ("/v1/tenants/org-1%2fcosts", EncodedSeparator),
            ("/v1/tenants/org-1%5Ccosts", EncodedSeparator),
            ("/v1\\tenants", EncodedSeparator),
            ("/v1/tenants/../admin", DotSegment),
            ("/v1/./tenants", DotSegment),
            ("/v1/tenants/..", DotSegment),
            ("/v1/%2e%2e/admin", DotSegment),
            ("/v1/%2E/x", DotSegment),
            ("/v1/%74enants", EncodedUnreserved),
            ("/v1/tenants/org%2D1", EncodedUnreserved),
            ("/v1/%7Euser", EncodedUnreserved),
            ("/v1/%zz", BadEncoding),
            ("/v1/%4", BadEncoding),
            ("/v1/%", BadEncoding),
            ("/v1/a%00b", ControlCharacter),
            ("/v1/a%0Ab", ControlCharacter),
            ("/v1/tenants;x=1/costs", Semicolon),
            ("/v1/tenants/org-1/costs;jsessionid=1", Semicolon),
            ("/v1/a%3Bb", Semicolon),
            ("/v1//tenants", EmptySegment),
            ("//v1/tenants", EmptySegment),
        ] {
            assert_eq!(check(bad), Err(why), "{bad}");
        }
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(check(&deep), Err(TooDeep));
    }
}
