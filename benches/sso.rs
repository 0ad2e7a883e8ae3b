//! The JWT bearer path: checking the header, then verifying an RS256 or
//! ES256 token's signature and claims with the provider's key already in
//! the cache (what every request pays with `sso.token_cache_capacity = 0`),
//! with ring (as the server runs), and the verified-token cache hit (SHA-256 of the token + a cache read,
//! what a repeated token pays by default).
//!
//! The keys in `benches/fixtures/` are throwaway keys made for this bench.

use std::sync::Arc;
use std::time::Duration;

use costguard::sso::token::{self, Expect};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

const RSA: &[u8] = include_bytes!("fixtures/bench-rsa.pem");
const RSA_PUB: &[u8] = include_bytes!("fixtures/bench-rsa.pub.pem");
const EC: &[u8] = include_bytes!("fixtures/bench-ec.pem");
const EC_PUB: &[u8] = include_bytes!("fixtures/bench-ec.pub.pem");

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn mint(alg: Algorithm, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    let claims = json!({
        "iss": "https://idp.example.com", "aud": "costguard", "sub": "alice",
        "iat": now(), "exp": now() + 3600, "tenant_id": "org-1a2b3c4d",
        "roles": ["viewer", "analyst"], "email": "alice@acme.example",
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn verify_bench(c: &mut Criterion) {
    // As the server does: signatures verified with ring.
    costguard::sso::crypto::install();
    let allowed = [Algorithm::RS256, Algorithm::ES256];
    let audiences = ["costguard".to_string()];
    let cases = [
        (
            "rs256",
            mint(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA).unwrap()),
            DecodingKey::from_rsa_pem(RSA_PUB).unwrap(),
        ),
        (
            "es256",
            mint(Algorithm::ES256, &EncodingKey::from_ec_pem(EC).unwrap()),
            DecodingKey::from_ec_pem(EC_PUB).unwrap(),
        ),
    ];
    for (name, raw, key) in &cases {
        c.bench_function(&format!("jwt_verify_{name}_cached_key"), |b| {
            b.iter(|| {
                let header = token::header(raw, &allowed).unwrap();
                let expect = Expect {
                    issuer: "https://idp.example.com",
                    audiences: &audiences,
                    leeway: Duration::from_secs(60),
                    id_token: None,
                    access_token: true,
                    now: now(),
                };
                token::verify(raw, &header, key, None, &expect).unwrap()
            })
        });
    }
    // The cache hit: hash the token, read the cache.
    let cache: moka::sync::Cache<[u8; 32], Arc<i64>> = moka::sync::Cache::new(100_000);
    let raw = &cases[0].1;
    let digest = costguard::model::sha256(raw.as_bytes());
    cache.insert(digest, Arc::new(now() + 3600));
    c.bench_function("jwt_verified_cache_hit", |b| {
        b.iter(|| {
            let digest = costguard::model::sha256(raw.as_bytes());
            cache.get(&digest).unwrap()
        })
    });
}

criterion_group!(benches, verify_bench);
criterion_main!(benches);
