//! A provider's signing keys (its JWKS), cached. Keys are refetched when
//! the set is older than `jwks_ttl`, and once when a token names a key id
//! the set does not have (the provider rotated); that refetch happens at
//! most once per `jwks_refetch_cooldown`, so a flood of tokens with made-up
//! key ids costs the provider one request per cooldown. Each fetch replaces
//! the whole set: a key the provider dropped stops verifying at once.
//! Symmetric (`oct`) and encryption keys in a JWKS are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::http::IdpClient;

/// One verification key.
pub struct Key {
    /// The key.
    pub decoding: DecodingKey,
    /// The algorithm the provider bound it to, if it did.
    pub alg: Option<Algorithm>,
}

/// The keys of one fetch.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (usable only when the set has exactly one).
    anonymous: Vec<Arc<Key>>,
}

/// Why no key could be found.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The provider does not publish (or no longer publishes) that key.
    #[error("unknown signing key")]
    Unknown,
}

/// The cached key set of one provider.
pub struct Jwks {
    /// The provider's `jwks_uri` (set by discovery).
    uri: ArcSwap<String>,
    client: IdpClient,
    keys: ArcSwap<KeySet>,
    /// When the last fetch was tried (successful or not).
    last_attempt: std::sync::Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// SHA-256 of the last key set document.
    last_document: std::sync::Mutex<[u8; 32]>,
    ttl: Duration,
    cooldown: Duration,
    /// Fetches that succeeded and failed, for `/metrics`.
    fetched: [AtomicU64; 2],
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("uri", &self.uri.load())
            .field("keys", &self.keys.load().by_kid.len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// An empty cache; discovery gives it the set's URL ([`Jwks::set_uri`])
    /// and fills it ([`Jwks::refresh`]).
    pub fn new(client: IdpClient, ttl: Duration, cooldown: Duration) -> Self {
        Self {
            uri: ArcSwap::from_pointee(String::new()),
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_attempt: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_document: std::sync::Mutex::new([0; 32]),
            ttl,
            cooldown,
            fetched: Default::default(),
        }
    }

    /// Points the cache at the key set's URL (from discovery).
    pub fn set_uri(&self, uri: String) {
        self.uri.store(Arc::new(uri));
    }

    /// The key a token names: from the cache; after one refetch when the
    /// set is stale or (at most once per cooldown) does not have it.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        if self.older_than(self.ttl) {
            // One request refreshes a stale set; the others go on with the
            // keys they have rather than queue behind the provider.
            if let Ok(_one) = self.fetching.try_lock()
                && self.older_than(self.ttl)
            {
                self.fetch_logged().await;
            }
        }
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if self.older_than(self.cooldown) {
            let _one = self.fetching.lock().await;
            // Checked again under the lock: of a burst of unknown key ids,
            // only the first fetches.
            if self.older_than(self.cooldown) {
                self.fetch_logged().await;
            }
            if let Some(key) = self.lookup(kid) {
                return Ok(key);
            }
        }
        Err(KeyError::Unknown)
    }

    /// Whether the last fetch was tried longer than `interval` ago (or never).
    fn older_than(&self, interval: Duration) -> bool {
        self.since_last_attempt().is_none_or(|s| s >= interval)
    }

    /// Changes when a fetch brings a different key set (cached verified
    /// tokens of an older generation are verified again).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn since_last_attempt(&self) -> Option<Duration> {
        self.last_attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    fn lookup(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let set = self.keys.load();
        match kid {
            Some(kid) => set.by_kid.get(kid).cloned(),
            None if set.anonymous.len() + set.by_kid.len() == 1 => set
                .anonymous
                .first()
                .or_else(|| set.by_kid.values().next())
                .cloned(),
            None => None,
        }
    }

    async fn fetch_logged(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(jwks_uri = %self.uri.load(), error = %e, "Signing keys not refreshed; keeping the previous set.");
        }
    }

    /// Fetches that succeeded and that failed since the start.
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.fetched[0].load(Ordering::Relaxed),
            self.fetched[1].load(Ordering::Relaxed),
        )
    }

    /// Fetches the set now and replaces the cached one (the old one stays
    /// on failure).
    pub async fn refresh(&self) -> Result<usize, String> {
        let fetched = self.fetch().await;
        self.fetched[usize::from(fetched.is_err())].fetch_add(1, Ordering::Relaxed);
        fetched
    }

    async fn fetch(&self) -> Result<usize, String> {
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let uri = self.uri.load_full();
        let req = http::Request::get(uri.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.send(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{uri} answered {}", resp.status()));
        }
        let set = parse(resp.body())?;
        let n = set.by_kid.len() + set.anonymous.len();
        if n == 0 {
            return Err(format!("{uri}: no usable signing key"));
        }
        let digest = crate::model::sha256(resp.body());
        self.keys.store(Arc::new(set));
        let mut last = self.last_document.lock().unwrap_or_else(|e| e.into_inner());
        if *last != digest {
            *last = digest;
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Parses a JWKS document, keeping the signing keys it can use.
fn parse(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut set = KeySet::default();
    for value in doc.keys {
        // A key this build cannot read is skipped, not fatal: the others work.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            )
        {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => {
                let name = serde_json::to_value(a).ok();
                match name
                    .as_ref()
                    .and_then(|n| n.as_str()?.parse::<Algorithm>().ok())
                {
                    Some(a) => Some(a),
                    None => continue, // bound to an algorithm we do not verify
                }
            }
            None => None,
        };
        let key = Arc::new(Key { decoding, alg });
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.anonymous.push(key),
        }
    }
    Ok(set)
}
