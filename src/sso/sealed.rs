//! Provider tokens sealed at rest. A session keeps the provider's refresh
//! token (to renew it) and ID token (the logout hint); whoever reads the
//! store files must not be able to use them. They are encrypted with
//! AES-256-GCM under a key derived from the cookie key (the one secret every
//! replica already shares), each with a fresh random nonce; the session id
//! is the associated data, so a sealed token moved to another session does
//! not open.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

/// Marks a sealed value (a value without it is a token stored before
/// sealing existed, read as it is and sealed at its next write).
const PREFIX: &str = "sealed.v1.";

/// Seals and opens provider tokens.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

/// A sealed token that does not open (another key, or changed bytes).
#[derive(Debug, thiserror::Error)]
#[error("a sealed token does not open")]
pub struct Unsealable;

impl Sealer {
    /// A sealer whose key is derived from `cookie_key` (HMAC-SHA256 with a
    /// fixed label, so it differs from the cookie-signing key).
    pub fn new(cookie_key: &[u8]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, cookie_key),
            b"costguard session token sealing v1",
        );
        let key = UnboundKey::new(&AES_256_GCM, derived.as_ref())
            .expect("HMAC-SHA256 gives 32 bytes, an AES-256 key");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// `token` sealed for the session `session_id`.
    pub fn seal(&self, session_id: &str, token: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let mut buf = token.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(session_id.as_bytes()),
                &mut buf,
            )
            .expect("a token fits AES-GCM's limits");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The token in `stored` (sealed, or a plain legacy value).
    pub fn open(&self, session_id: &str, stored: &str) -> Result<String, Unsealable> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| Unsealable)?;
        if bytes.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN]).map_err(|_| Unsealable)?;
        let plain = self
            .key
            .open_in_place(
                nonce,
                Aad::from(session_id.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| Unsealable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_what_was_changed() {
        let s = Sealer::new(&[7u8; 32]);
        let sealed = s.seal("sess-1", "refresh-token-value");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("refresh-token-value"));
        assert_eq!(s.open("sess-1", &sealed).unwrap(), "refresh-token-value");
        assert_ne!(
            sealed,
            s.seal("sess-1", "refresh-token-value"),
            "fresh nonce"
        );
        assert!(s.open("sess-2", &sealed).is_err(), "bound to its session");
        assert!(Sealer::new(&[8u8; 32]).open("sess-1", &sealed).is_err());
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            s.open("sess-1", std::str::from_utf8(&flipped).unwrap())
                .is_err()
        );
        assert_eq!(s.open("sess-1", "legacy-plain").unwrap(), "legacy-plain");
    }
}
