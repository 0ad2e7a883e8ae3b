//! IdP-issued JWTs: the header pre-checks before any key is chosen
//! (`sso::token::header`) and the claims checks after the signature
//! (`sso::token::verify`).
//!
//! Properties:
//! - header: an accepted header has an algorithm of the pinned set, no
//!   field that lets a token choose its key (`jwk`, `jku`, `x5u`, `x5c`,
//!   `crit`, …), and when the verifier's own header reader
//!   (`jsonwebtoken::decode_header`) also reads it, both see the same
//!   `alg` and `kid` (no algorithm confusion between the two readers);
//! - claims (HS256 tokens the target signs, claims bytes as fuzzed, so
//!   duplicate keys and odd JSON reach the reader): a verified token's
//!   claims, read independently, have exactly the issuer, one of the
//!   audiences, an `exp` not past (with the leeway), an `nbf`/`iat` not
//!   in the future, and no ID-token claim on an access token.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use costguard::sso::token::{self, Expect};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256];
const FORBIDDEN: [&str; 8] = ["jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"];
const KEY: &[u8] = b"fuzz-hs256-key-0123456789abcdef!";
const ISSUER: &str = "https://idp.example";
const NOW: i64 = 1_780_000_000;

fn header_case(token: &str) {
    let Ok(h) = token::header(token, &ALLOWED) else {
        return;
    };
    assert!(ALLOWED.contains(&h.alg));
    let first = token.split('.').next().unwrap();
    let map: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).unwrap()).unwrap();
    for f in FORBIDDEN {
        assert!(!map.contains_key(f), "{f} in an accepted header: {map:?}");
    }
    if let Ok(theirs) = jsonwebtoken::decode_header(token) {
        assert_eq!(theirs.alg, h.alg, "{token:?}");
        assert_eq!(theirs.kid, h.kid, "{token:?}");
    }
}

fn claims_case(flags: u8, claims: &[u8]) {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(KEY),
        Algorithm::HS256,
    )
    .unwrap();
    let token = format!("{message}.{sig}");
    let h = token::header(&token, &ALLOWED).expect("our own header");
    let audiences = vec!["costguard".to_string(), "other-api".to_string()];
    let access_token = flags & 1 != 0;
    let expect = Expect {
        issuer: ISSUER,
        audiences: &audiences,
        leeway: Duration::from_secs(60),
        id_token: None,
        access_token,
        now: NOW,
    };
    let Ok(v) = token::verify(&token, &h, &DecodingKey::from_secret(KEY), None, &expect) else {
        return;
    };
    let c: Map<String, Value> = serde_json::from_slice(claims).expect("verified claims are JSON");
    assert_eq!(c.get("iss"), Some(&Value::String(ISSUER.into())), "{c:?}");
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(v)) => v
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    assert!(aud_ok, "{c:?}");
    let exp = c.get("exp").and_then(Value::as_i64).expect("exp an integer");
    assert_eq!(exp, v.exp);
    assert!(exp + 60 >= NOW, "{c:?}");
    for t in ["nbf", "iat"] {
        if let Some(x) = c.get(t) {
            let x = x.as_i64().expect("an integer time");
            assert!(x - 60 <= NOW, "{t} in the future: {c:?}");
        }
    }
    if access_token {
        for id in ["nonce", "at_hash", "c_hash"] {
            assert!(!c.contains_key(id), "{c:?}");
        }
    }
    if let Some(sub) = c.get("sub") {
        assert!(sub.as_str().is_some_and(|s| !s.is_empty()), "{c:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 == 0 {
        if let Ok(t) = std::str::from_utf8(rest) {
            header_case(t);
        }
    } else {
        claims_case(mode, rest);
    }
});
