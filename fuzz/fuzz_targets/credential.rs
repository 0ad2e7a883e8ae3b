//! Credential extraction (`authn::credential`) from raw header lines:
//! `Authorization`, `X-API-Key`, cookies, duplicates, any casing, odd
//! whitespace.
//!
//! Properties:
//! - no credential header (any casing of either name): `Ok(None)`;
//!   two or more (same or different names): `Err` (ambiguous);
//! - a credential found is the one header's value (trimmed), or its
//!   token after a case-insensitive `Bearer ` scheme; never empty of
//!   meaning (no surrounding whitespace); an API key is reported as one
//!   only when it is;
//! - after `strip_credentials`, no credential header remains and the
//!   request carries none.
#![no_main]

use costguard::authn::{self, Credential};
use http::header;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut headers = common::headers(data);
    let values: Vec<(bool, Vec<u8>)> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| (true, v.as_bytes().to_vec()))
        .chain(
            headers
                .get_all("x-api-key")
                .iter()
                .map(|v| (false, v.as_bytes().to_vec())),
        )
        .collect();
    let got = authn::credential(&headers);
    match values.as_slice() {
        [] => assert!(matches!(got, Ok(None)), "{got:?}"),
        [(is_authorization, value)] => {
            if let Ok(Some(c)) = got {
                let token = match c {
                    Credential::ApiKey(t) | Credential::Bearer(t) => t,
                };
                assert_eq!(token, token.trim());
                let value = std::str::from_utf8(value).unwrap();
                if *is_authorization {
                    let (scheme, rest) = value.trim().split_once(' ').unwrap();
                    assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
                    assert_eq!(rest.trim(), token);
                    assert_eq!(
                        matches!(c, Credential::ApiKey(_)),
                        token.starts_with("costops_"),
                        "{value:?}"
                    );
                } else {
                    assert_eq!(c, Credential::ApiKey(value.trim()));
                }
            } else {
                assert!(got.is_err(), "one credential header, none found: {got:?}");
            }
        }
        _ => assert!(got.is_err(), "{} credential headers: {got:?}", values.len()),
    }
    authn::strip_credentials(&mut headers);
    assert!(matches!(authn::credential(&headers), Ok(None)));
    assert!(!headers.contains_key(header::AUTHORIZATION));
    assert!(!headers.contains_key("x-api-key"));
});
