//! JWT signature verification on `ring`, the crypto library the proxy's
//! TLS already uses, plugged into `jsonwebtoken` as its crypto provider.
//!
//! Why: `jsonwebtoken`'s pure-Rust backend (`rsa`, `p256`) takes about
//! 390 µs to verify one RS256 or ES256 token on our CI machines; `ring`
//! does it in a fraction of that, and every bearer token not yet in the
//! verified-token cache pays it. Signing (tests, benches) and key
//! utilities stay with the pure-Rust backend: costguard never signs a JWT.
//! The key's family must fit the algorithm (no HMAC with an RSA key).

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::hmac;
use ring::signature as sig;

/// Verifies one algorithm with one key.
struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let bad = |_| signature::Error::new();
        let bytes = match self.key.kind() {
            DecodingKeyKind::SecretOrDer(b) => Some(b.as_slice()),
            DecodingKeyKind::RsaModulusExponent { .. } => None,
        };
        let asymmetric: &'static dyn sig::VerificationAlgorithm = match self.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let which = match self.alg {
                    Algorithm::HS256 => hmac::HMAC_SHA256,
                    Algorithm::HS384 => hmac::HMAC_SHA384,
                    _ => hmac::HMAC_SHA512,
                };
                let key = hmac::Key::new(which, bytes.ok_or_else(signature::Error::new)?);
                return hmac::verify(&key, msg, signature).map_err(bad);
            }
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &sig::ED25519,
            _ => {
                let params = rsa_params(self.alg);
                return match self.key.kind() {
                    DecodingKeyKind::SecretOrDer(der) => {
                        sig::UnparsedPublicKey::new(params, der).verify(msg, signature)
                    }
                    DecodingKeyKind::RsaModulusExponent { n, e } => {
                        sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
                    }
                }
                .map_err(bad);
            }
        };
        let key = bytes.ok_or_else(signature::Error::new)?;
        sig::UnparsedPublicKey::new(asymmetric, key)
            .verify(msg, signature)
            .map_err(bad)
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_params(alg: Algorithm) -> &'static sig::RsaParameters {
    match alg {
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => &sig::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

/// `ring` for verification, the pure-Rust backend for the rest.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: RUST_CRYPTO.signer_factory,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: RUST_CRYPTO
            .key_utils
            .rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: RUST_CRYPTO
            .key_utils
            .rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: RUST_CRYPTO
            .key_utils
            .ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: RUST_CRYPTO
            .key_utils
            .ed_pub_components_from_private_key,
        compute_digest: RUST_CRYPTO.key_utils.compute_digest,
    },
};

/// Makes `ring` verify JWT signatures (idempotent; call before the first
/// token is checked).
pub fn install() {
    // Already installed (by an earlier call) is fine.
    let _ = PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};

    #[test]
    fn ring_verifies_what_the_pure_rust_backend_signs_and_refuses_the_rest() {
        install();
        let claims = serde_json::json!({"sub": "a", "exp": 4_000_000_000u64});
        let secret = b"0123456789abcdef0123456789abcdef";
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.required_spec_claims.clear();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_secret(secret),
                &v
            )
            .is_ok()
        );
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_secret(b"another secret, also 32 bytes!!!"),
                &v
            )
            .is_err()
        );
        // An RSA public key never verifies as an HMAC secret.
        let rsa = DecodingKey::from_rsa_components("AQAB", "AQAB").unwrap();
        assert!(new_verifier(&Algorithm::HS256, &rsa).is_err());
    }
}
