//! API keys: `costops_` + 32 hex characters from the OS CSPRNG, stored only
//! as SHA-256. Lookups go through bounded caches (moka, with a TTL) so a
//! known key costs a hash and a cache hit; revocation, rotation and tenant
//! changes invalidate the cache entries they affect at once.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use time::OffsetDateTime;

use super::AuthnError;
use crate::generation::Generation;
use crate::metrics::CacheStats;
use crate::model::{self, ApiKey, KeyStatus, Tenant, TenantStatus};
use crate::principal::{AuthMethod, Authenticated, IdentityHeaders, Principal};
use crate::roles::{Permission, Permissions};
use crate::store::Store;

/// Every API key starts with this.
pub const PREFIX: &str = "costops_";
const HEX_LEN: usize = 32;

/// A new API key secret.
pub fn generate() -> String {
    let mut bytes = [0u8; HEX_LEN / 2];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{PREFIX}{}", model::hex(&bytes))
}

/// SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    model::sha256(key.as_bytes())
}

/// SHA-256 of a key, lower-case hex (what the store indexes).
pub fn hash_hex(key: &str) -> String {
    model::hex(&hash(key))
}

/// Whether `key` has the shape of a costguard key (checked before any lookup).
pub fn is_well_formed(key: &str) -> bool {
    key.len() == PREFIX.len() + HEX_LEN
        && key.starts_with(PREFIX)
        && key[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A key's scopes as a permission set (`None` when it has none).
pub fn scopes(key: &ApiKey) -> Option<Permissions> {
    if key.scopes.is_empty() {
        return None;
    }
    let scopes = key
        .scopes
        .iter()
        .filter_map(|s| Permission::parse(s))
        .collect::<Vec<_>>();
    Some(Permissions::of(&scopes))
}

/// What the cache keeps for one hash.
#[derive(Debug)]
struct CachedKey {
    principal: Arc<Principal>,
    revoked: bool,
    expires_at: Option<OffsetDateTime>,
    /// Set when this hash is the key's previous secret: when it stops.
    previous_until: Option<OffsetDateTime>,
}

/// Authenticates API keys. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    store: Arc<dyn Store>,
    /// SHA-256 → key (or `None`: no such key, so floods of one bad key do
    /// not reach the store). Bounded, with a TTL.
    keys: Cache<[u8; 32], Option<Arc<CachedKey>>>,
    /// Tenant id → tenant (`None`: deleted): status, tier and limits.
    tenants: Cache<String, Option<Arc<Tenant>>>,
    /// Bumped by every eviction, so a load racing one does not keep what it read.
    generation: Arc<Generation>,
    /// Hits and misses of `keys` and `tenants`, for `/metrics`.
    stats: Arc<[CacheStats; 2]>,
}

impl ApiKeys {
    /// Caches hold at most `capacity` entries each, for at most `ttl`.
    pub fn new(store: Arc<dyn Store>, capacity: u64, ttl: Duration) -> Self {
        Self {
            store,
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            tenants: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// The caches' hits and misses, by cache name.
    pub fn cache_stats(&self) -> [(&'static str, &CacheStats); 2] {
        [("api_keys", &self.stats[0]), ("tenants", &self.stats[1])]
    }

    /// Checks a presented API key.
    pub async fn authenticate(&self, key: &str) -> Result<Authenticated, AuthnError> {
        if !is_well_formed(key) {
            return Err(AuthnError::Malformed);
        }
        let digest = hash(key);
        // A plain read first: the hit path skips the initializer machinery.
        let cached = match self.keys.get(&digest).await {
            Some(hit) => {
                self.stats[0].hit();
                hit
            }
            None => {
                self.stats[0].miss();
                let noted = self.generation.current();
                // Boxed (here and on the other cache misses of the request
                // path): the store's futures are large, and inline they
                // would make every request's future, hits included, as
                // large (moved and copied per request).
                let loaded = Box::pin(self.keys.try_get_with(digest, self.load(digest)))
                    .await
                    .map_err(AuthnError::Store)?;
                if self.generation.moved_since(noted) {
                    self.keys.invalidate(&digest).await;
                }
                loaded
            }
        };
        let Some(entry) = cached else {
            return Err(AuthnError::UnknownKey);
        };
        let tenant = self.tenant(&entry.principal.tenant_id).await?;
        Self::accept(&entry, tenant)
    }

    /// Checks a presented API key against the caches only: the key's
    /// lookup and its tenant must both be cached, or `None` (never a store
    /// read). For sources blocked for failed authentications, which may
    /// still use a key this instance already knows to be valid.
    pub async fn authenticate_cached(&self, key: &str) -> Option<Authenticated> {
        if !is_well_formed(key) {
            return None;
        }
        let entry = self.keys.get(&hash(key)).await.flatten()?;
        let tenant = self.cached_tenant(&entry.principal.tenant_id).await?;
        Self::accept(&entry, tenant).ok()
    }

    /// A known key's verdict, given its tenant as it is now (`None`: deleted).
    fn accept(entry: &CachedKey, tenant: Option<Arc<Tenant>>) -> Result<Authenticated, AuthnError> {
        if entry.revoked {
            return Err(AuthnError::RevokedKey);
        }
        if entry.expires_at.is_some() || entry.previous_until.is_some() {
            let now = OffsetDateTime::now_utc();
            if entry.previous_until.is_some_and(|until| now >= until) {
                return Err(AuthnError::UnknownKey);
            }
            if entry.expires_at.is_some_and(|at| now >= at) {
                return Err(AuthnError::ExpiredKey);
            }
        }
        match tenant {
            None => Err(AuthnError::UnknownKey),
            Some(t) if t.status == TenantStatus::Suspended => Err(AuthnError::TenantSuspended),
            Some(tenant) => Ok(Authenticated {
                principal: entry.principal.clone(),
                tenant,
            }),
        }
    }

    /// A tenant from the cache only: `None` when not cached, `Some(None)`
    /// when cached as deleted.
    pub async fn cached_tenant(&self, tenant_id: &str) -> Option<Option<Arc<Tenant>>> {
        self.tenants.get(tenant_id).await
    }

    /// A tenant (status, tier, limits), through the cache; `None`: deleted.
    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<Arc<Tenant>>, AuthnError> {
        if let Some(hit) = self.tenants.get(tenant_id).await {
            self.stats[1].hit();
            return Ok(hit);
        }
        self.stats[1].miss();
        let noted = self.generation.current();
        let loaded = Box::pin(self.tenants.try_get_with_by_ref(tenant_id, async {
            Ok::<_, crate::store::StoreError>(self.store.get_tenant(tenant_id).await?.map(Arc::new))
        }))
        .await
        .map_err(AuthnError::Store)?;
        if self.generation.moved_since(noted) {
            self.tenants.invalidate(tenant_id).await;
        }
        Ok(loaded)
    }

    async fn load(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<Arc<CachedKey>>, crate::store::StoreError> {
        let hex = model::hex(&digest);
        let Some(key) = self.store.key_by_hash(&hex).await? else {
            return Ok(None);
        };
        let headers = match IdentityHeaders::new(
            &key.tenant_id,
            &key.key_id,
            Some(&key.key_id),
            &key.roles,
            AuthMethod::ApiKey,
        ) {
            Ok(h) => h,
            Err(_) => {
                tracing::error!(key_id = %key.key_id, "Stored key has ids that are not valid header values; refusing it.");
                return Ok(None);
            }
        };
        let key_id: Arc<str> = key.key_id.as_str().into();
        let principal = Principal {
            tenant_id: key.tenant_id.as_str().into(),
            user_id: key_id.clone(),
            rate_key: key_id.clone(),
            key_id: Some(key_id),
            roles: key.roles.clone().into(),
            grants: crate::grants::compile_all(&key.grants),
            scopes: scopes(&key),
            rate_per_minute: key.rate_limit_per_minute,
            method: AuthMethod::ApiKey,
            headers,
        };
        let previous_until = if key.hash == hex {
            None
        } else {
            // The previous secret during a grace period; without an end it
            // is already out.
            Some(
                key.previous_valid_until
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            )
        };
        Ok(Some(Arc::new(CachedKey {
            principal: Arc::new(principal),
            revoked: key.status == KeyStatus::Revoked,
            expires_at: key.expires_at,
            previous_until,
        })))
    }

    /// Forgets cached lookups of these hashes (hex), after a key changed.
    pub async fn forget_hashes<'a>(&self, hashes: impl IntoIterator<Item = &'a String>) {
        self.generation.bump();
        for hex in hashes {
            if let Some(digest) = unhex(hex) {
                self.keys.invalidate(&digest).await;
            }
        }
    }

    /// Forgets a tenant's cached status, after it changed or was deleted.
    pub async fn forget_tenant(&self, tenant_id: &str) {
        self.generation.bump();
        self.tenants.invalidate(tenant_id).await;
    }
}

/// A 64-character hex SHA-256 as its 32 bytes.
fn unhex(s: &str) -> Option<[u8; 32]> {
    model::unhex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(is_well_formed(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(unhex(&hash_hex(&a)), Some(hash(&a)));
        for bad in [
            "costops_",
            "costops_0123456789abcdef0123456789abcde",
            "costops_0123456789abcdef0123456789abcdeg",
            "costops_0123456789ABCDEF0123456789abcdef",
            "COSTOPS_0123456789abcdef0123456789abcdef",
            "costops_0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
