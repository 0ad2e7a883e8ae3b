//! JWT verification: ID tokens from a login and bearer access tokens.
//!
//! Before any key is looked up the header is read by hand, because
//! `jsonwebtoken`'s header type ignores fields it does not know: a token
//! that names its own key (`jwk`, `jku`, `x5u`, `x5c`), asks for critical
//! extensions (`crit`), is not a plain JWS (`b64`, `zip`, `enc`, five
//! parts), or uses an algorithm outside the provider's pinned set is refused.
//! Then the signature is checked with the provider's published key (whose
//! type must fit the algorithm), and `iss`, `aud`, `exp` are required;
//! `nbf` and `iat` are checked with the configured leeway. Registered
//! claims must have their JSON types (a string `exp` is refused).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use crate::authn::refusal::TokenError;

/// What the header says, once it passed the checks.
#[derive(Debug)]
pub struct Header {
    /// The algorithm (in the pinned set).
    pub alg: Algorithm,
    /// The key id, if any.
    pub kid: Option<String>,
}

/// Header fields refused outright.
const FORBIDDEN: [&str; 8] = ["jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"];

/// Reads and checks the header of a compact JWS.
pub fn header(token: &str, allowed: &[Algorithm]) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Malformed)?;
    let map: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    for name in FORBIDDEN {
        if map.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    let alg = match map.get("alg") {
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| TokenError::Algorithm)?,
        _ => return Err(TokenError::Algorithm),
    };
    if !allowed.contains(&alg) {
        return Err(TokenError::Algorithm);
    }
    match map.get("typ") {
        None => {}
        Some(Value::String(t))
            if ["jwt", "at+jwt", "application/jwt", "application/at+jwt"]
                .contains(&t.to_ascii_lowercase().as_str()) => {}
        Some(_) => return Err(TokenError::Type),
    }
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(Header { alg, kid })
}

/// The registered claims, with their JSON types enforced.
#[derive(Debug, Deserialize)]
struct Registered {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    aud: Audience,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// What the verification needs besides the token.
#[derive(Debug)]
pub struct Expect<'a> {
    /// The provider's issuer.
    pub issuer: &'a str,
    /// Accepted audiences.
    pub audiences: &'a [String],
    /// Leeway on time claims.
    pub leeway: Duration,
    /// For an ID token: the client id `azp` must name when there are
    /// several audiences, and the login's nonce.
    pub id_token: Option<IdTokenExpect<'a>>,
    /// A bearer access token: an ID token (`nonce`, `at_hash`, `c_hash`)
    /// is refused, since it was issued to a browser login, not to call APIs,
    /// and logout could not end it.
    pub access_token: bool,
    /// Seconds since the epoch, now.
    pub now: i64,
}

/// The ID-token-only checks.
#[derive(Debug)]
pub struct IdTokenExpect<'a> {
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce sent with the authorization request.
    pub nonce: &'a str,
}

/// A verified token's claims and expiry.
#[derive(Debug)]
pub struct Verified {
    /// All claims.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub exp: i64,
}

/// Verifies signature and claims with `key`, which the caller found by the
/// checked `header`.
pub fn verify(
    token: &str,
    header: &Header,
    key: &DecodingKey,
    key_alg: Option<Algorithm>,
    expect: &Expect<'_>,
) -> Result<Verified, TokenError> {
    if key_alg.is_some_and(|a| a != header.alg) {
        return Err(TokenError::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(expect.audiences);
    validation.leeway = expect.leeway.as_secs();
    validation.validate_nbf = true;
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::Signature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
                    TokenError::Algorithm
                }
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::Issuer,
                K::InvalidAudience => TokenError::Audience,
                K::MissingRequiredClaim(c) if c == "iss" => TokenError::Claim("iss"),
                K::MissingRequiredClaim(c) if c == "aud" => TokenError::Claim("aud"),
                K::MissingRequiredClaim(_) => TokenError::Claim("exp"),
                _ => TokenError::Malformed,
            }
        })?;
    let claims = data.claims;
    let reg: Registered = serde_json::from_value(Value::Object(claims.clone()))
        .map_err(|_| TokenError::Claim("registered claim"))?;
    // jsonwebtoken checked these; checked again here so the rules do not
    // depend on a library default.
    if reg.iss != expect.issuer {
        return Err(TokenError::Issuer);
    }
    let auds: Vec<&str> = match &reg.aud {
        Audience::One(a) => vec![a.as_str()],
        Audience::Many(v) => v.iter().map(String::as_str).collect(),
    };
    if !auds.iter().any(|a| expect.audiences.iter().any(|e| e == a)) {
        return Err(TokenError::Audience);
    }
    // A time outside years 1970-9999 is not a time a provider meant.
    const LAST: i64 = 253_402_300_799;
    if [Some(reg.exp), reg.nbf, reg.iat]
        .into_iter()
        .flatten()
        .any(|t| !(0..=LAST).contains(&t))
    {
        return Err(TokenError::Claim("time out of range"));
    }
    let leeway = expect.leeway.as_secs() as i64;
    if reg.exp.saturating_add(leeway) < expect.now {
        return Err(TokenError::Expired);
    }
    if reg
        .nbf
        .is_some_and(|n| n.saturating_sub(leeway) > expect.now)
    {
        return Err(TokenError::NotYetValid);
    }
    if reg
        .iat
        .is_some_and(|t| t.saturating_sub(leeway) > expect.now)
    {
        return Err(TokenError::NotYetValid);
    }
    if expect.access_token
        && ["nonce", "at_hash", "c_hash"]
            .iter()
            .any(|c| claims.contains_key(*c))
    {
        return Err(TokenError::IdTokenAsBearer);
    }
    if reg.sub.as_deref().is_some_and(str::is_empty) {
        return Err(TokenError::Claim("sub"));
    }
    if let Some(id) = &expect.id_token {
        if reg.sub.is_none() {
            return Err(TokenError::Claim("sub"));
        }
        if reg.iat.is_none() {
            return Err(TokenError::Claim("iat"));
        }
        if !auds.contains(&id.client_id) {
            return Err(TokenError::Audience);
        }
        if (auds.len() > 1 || reg.azp.is_some()) && reg.azp.as_deref() != Some(id.client_id) {
            return Err(TokenError::AuthorizedParty);
        }
        let nonce_ok = reg.nonce.as_deref().is_some_and(|n| {
            use subtle::ConstantTimeEq;
            bool::from(n.as_bytes().ct_eq(id.nonce.as_bytes()))
        });
        if !nonce_ok {
            return Err(TokenError::Nonce);
        }
    }
    Ok(Verified {
        claims,
        exp: reg.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value) -> String {
        format!(
            "{}.{}.sig",
            b64(&header),
            b64(&serde_json::json!({"iss": "x"}))
        )
    }

    #[test]
    fn header_refuses_what_lets_a_token_pick_its_key() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        let ok = header(
            &token(serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})),
            &allowed,
        )
        .unwrap();
        assert_eq!((ok.alg, ok.kid.as_deref()), (Algorithm::RS256, Some("k1")));
        for (h, want) in [
            (serde_json::json!({"alg": "none"}), TokenError::Algorithm),
            (serde_json::json!({"alg": "HS256"}), TokenError::Algorithm),
            (serde_json::json!({"kid": "k"}), TokenError::Algorithm),
            (serde_json::json!({"alg": 5}), TokenError::Algorithm),
            (
                serde_json::json!({"alg": "RS256", "jwk": {"kty": "RSA"}}),
                TokenError::ForbiddenHeader("jwk"),
            ),
            (
                serde_json::json!({"alg": "RS256", "jku": "https://evil"}),
                TokenError::ForbiddenHeader("jku"),
            ),
            (
                serde_json::json!({"alg": "RS256", "x5u": "https://evil"}),
                TokenError::ForbiddenHeader("x5u"),
            ),
            (
                serde_json::json!({"alg": "RS256", "x5c": ["MII"]}),
                TokenError::ForbiddenHeader("x5c"),
            ),
            (
                serde_json::json!({"alg": "RS256", "crit": ["exp"]}),
                TokenError::ForbiddenHeader("crit"),
            ),
            (
                serde_json::json!({"alg": "RS256", "b64": false}),
                TokenError::ForbiddenHeader("b64"),
            ),
            (
                serde_json::json!({"alg": "RS256", "typ": "JWE"}),
                TokenError::Type,
            ),
            (
                serde_json::json!({"alg": "RS256", "kid": 7}),
                TokenError::Malformed,
            ),
        ] {
            assert_eq!(
                header(&token(h.clone()), &allowed).unwrap_err(),
                want,
                "{h}"
            );
        }
        for bad in ["", "a.b", "a.b.c.d.e", "!!.b.c", "e30.b"] {
            assert_eq!(header(bad, &allowed).unwrap_err(), TokenError::Malformed);
        }
    }
}
