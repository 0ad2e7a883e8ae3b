//! The login cookie: what `/auth/callback` must find again (provider,
//! `state`, `nonce`, PKCE verifier, where to go after, the tenant asked
//! for), signed with HMAC-SHA256 so the browser can carry it but not change
//! it, and short-lived. Nothing is stored server-side before the callback,
//! so `/auth/login` cannot be used to fill the store, and any replica with
//! the shared key can finish a login another one started.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Name of the login cookie.
pub const COOKIE: &str = "costguard_login";

/// A login in progress.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Provider name.
    pub provider: String,
    /// `state` sent to the provider.
    pub state: String,
    /// `nonce` sent to the provider.
    pub nonce: String,
    /// PKCE verifier.
    pub verifier: String,
    /// Same-origin path to return to.
    pub rd: String,
    /// The tenant the login was started for, if named.
    pub tenant: Option<String>,
    /// Unix seconds after which the cookie is refused.
    pub expires: i64,
}

impl std::fmt::Debug for LoginState {
    /// Never prints the state, nonce or PKCE verifier.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("provider", &self.provider)
            .field("rd", &self.rd)
            .field("tenant", &self.tenant)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why a login cookie was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginStateError {
    /// Not ours, or changed.
    #[error("login cookie invalid")]
    Invalid,
    /// Too old.
    #[error("login cookie expired")]
    Expired,
}

/// Seals and opens login cookies.
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    /// A signer with this key (at least 16 bytes).
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// `payload.signature`, both base64url.
    pub fn seal(&self, state: &LoginState) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(state).expect("serializes"));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks the signature (constant time) and the expiry.
    pub fn open(&self, cookie: &str, now: i64) -> Result<LoginState, LoginStateError> {
        let (payload, tag) = cookie.split_once('.').ok_or(LoginStateError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| LoginStateError::Invalid)?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).map_err(|_| LoginStateError::Invalid)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| LoginStateError::Invalid)?;
        let state: LoginState =
            serde_json::from_slice(&bytes).map_err(|_| LoginStateError::Invalid)?;
        if now > state.expires {
            return Err(LoginStateError::Expired);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_changes_and_age() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let state = LoginState {
            provider: "corp".into(),
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            rd: "/x".into(),
            tenant: None,
            expires: 1000,
        };
        let sealed = signer.seal(&state);
        assert_eq!(signer.open(&sealed, 999).unwrap(), state);
        assert_eq!(signer.open(&sealed, 1001), Err(LoginStateError::Expired));
        let mut forged = state.clone();
        forged.rd = "//evil".into();
        let forged_payload = signer.seal(&forged);
        let spliced = format!(
            "{}.{}",
            forged_payload.split_once('.').unwrap().0,
            sealed.split_once('.').unwrap().1
        );
        assert_eq!(signer.open(&spliced, 0), Err(LoginStateError::Invalid));
        let other = Signer::new(b"another key, also 32 bytes long!");
        assert_eq!(other.open(&sealed, 0), Err(LoginStateError::Invalid));
        assert_eq!(signer.open("garbage", 0), Err(LoginStateError::Invalid));
    }
}
