//! Server-side sessions. The cookie carries 32 random bytes; the store
//! keeps the session under their SHA-256, so logout and revocation end a
//! session everywhere the store is read, and a copy of the store holds no
//! usable cookie. A session ends at its absolute lifetime (8 hours by
//! default), after the idle timeout, at logout, or when an admin revokes it.
//! Recently used sessions are cached in memory (revocation on this
//! instance removes them from the cache at once); `last_seen` is written
//! back at most once a minute.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::claims::Identity;
use super::sealed::Sealer;
use crate::model::{self, Session};
use crate::store::{Store, StoreError};

/// What time it is (injectable for tests).
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// A session in use.
#[derive(Debug)]
pub struct Live {
    /// The record as last seen or written.
    pub session: Mutex<Session>,
    /// One refresh at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    /// The principal built from the record, reused by every request until
    /// a refresh changes the record (which clears it) or a user changes
    /// through the admin API (a newer [`super::users::Directory::epoch`]).
    pub principal: arc_swap::ArcSwapOption<BuiltPrincipal>,
    /// When `last_seen` was last written to the store.
    written: Mutex<OffsetDateTime>,
}

/// A session's principal and the user epoch it was built under.
#[derive(Debug)]
pub struct BuiltPrincipal {
    /// [`super::users::Directory::epoch`] when it was built.
    pub epoch: u64,
    /// The principal.
    pub principal: Arc<crate::principal::Principal>,
}

impl Live {
    /// A copy of the record.
    pub fn snapshot(&self) -> Session {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The session manager.
pub struct Sessions {
    store: Arc<dyn Store>,
    cache: moka::future::Cache<String, Arc<Live>>,
    /// Cookie hashes of sessions ended in the last minute: a lookup that
    /// read the store just before the end cannot put the session back into
    /// the cache.
    ended: moka::sync::Cache<String, ()>,
    lifetime: Duration,
    idle: Duration,
    clock: Clock,
    /// Seals the provider's tokens before they reach the store.
    sealer: Sealer,
    /// Bumped by every eviction another replica asked for.
    generation: crate::generation::Generation,
    /// Hits and misses of `cache`, for `/metrics`.
    pub stats: crate::metrics::CacheStats,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("lifetime", &self.lifetime)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// What a login brings to a new session.
#[derive(Debug)]
pub struct NewSession<'a> {
    /// Who.
    pub identity: &'a Identity,
    /// `oidc` or `saml`.
    pub method: &'a str,
    /// Provider name.
    pub provider: &'a str,
    /// Refresh token, if any.
    pub refresh_token: Option<String>,
    /// When the provider's tokens expire (refresh due then).
    pub refresh_at: Option<OffsetDateTime>,
    /// The ID token (logout hint).
    pub id_token: Option<String>,
    /// The provider's own end of the session, if earlier than the lifetime.
    pub ends_by: Option<OffsetDateTime>,
}

/// SHA-256 hex of a cookie secret.
pub fn token_hash(cookie: &str) -> String {
    model::hex(&model::sha256(cookie.as_bytes()))
}

impl Sessions {
    /// A manager over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        lifetime: Duration,
        idle: Duration,
        cache_capacity: u64,
        clock: Clock,
        sealer: Sealer,
    ) -> Self {
        Self {
            store,
            cache: moka::future::Cache::builder()
                .max_capacity(cache_capacity)
                // Another replica's revocation is seen within this time
                // even if its invalidation never arrives.
                .time_to_live(Duration::from_secs(30))
                .build(),
            ended: moka::sync::Cache::builder()
                .max_capacity(cache_capacity)
                .time_to_live(Duration::from_secs(60))
                .build(),
            lifetime,
            idle,
            clock,
            sealer,
            generation: Default::default(),
            stats: Default::default(),
        }
    }

    /// The record as stored: provider tokens sealed.
    fn sealed(&self, s: &Session) -> Session {
        let mut out = s.clone();
        out.refresh_token = s
            .refresh_token
            .as_deref()
            .map(|t| self.sealer.seal(&s.session_id, t));
        out.id_token = s
            .id_token
            .as_deref()
            .map(|t| self.sealer.seal(&s.session_id, t));
        out
    }

    /// A stored record with its provider tokens opened; a token that does
    /// not open (another cookie key) is dropped: the session lives on
    /// without refresh or logout hint.
    fn opened(&self, mut s: Session) -> Session {
        let id = s.session_id.clone();
        let open = |t: Option<String>| {
            t.and_then(|t| match self.sealer.open(&id, &t) {
                Ok(plain) => Some(plain),
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "Provider token dropped.");
                    None
                }
            })
        };
        s.refresh_token = open(s.refresh_token.take());
        s.id_token = open(s.id_token.take());
        s
    }

    /// Now, by the manager's clock.
    pub fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    /// Creates a session (a new id and secret every login) and returns the
    /// cookie value with the record.
    pub async fn create(&self, new: NewSession<'_>) -> Result<(String, Session), StoreError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| StoreError::Backend(e.to_string()))?;
        let cookie = URL_SAFE_NO_PAD.encode(secret);
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| StoreError::Backend(e.to_string()))?;
        let now = self.now();
        let session = Session {
            session_id: format!("sess-{}", model::hex(&id)),
            token_hash: token_hash(&cookie),
            tenant_id: new.identity.tenant_id.clone(),
            user_id: new.identity.user_id.clone(),
            email: new.identity.email.clone(),
            roles: new.identity.roles.clone(),
            auth_method: new.method.to_string(),
            provider: new.provider.to_string(),
            created_at: now,
            expires_at: new
                .ends_by
                .map_or(now + self.lifetime, |t| t.min(now + self.lifetime)),
            last_seen: now,
            refresh_at: new.refresh_at,
            refresh_token: new.refresh_token,
            id_token: new.id_token,
        };
        self.store.put_session(&self.sealed(&session)).await?;
        Ok((cookie, session))
    }

    /// The live session of a cookie, or `None` if there is none or it ended
    /// (an ended session is removed).
    pub async fn get(&self, cookie: &str) -> Result<Option<Arc<Live>>, StoreError> {
        if cookie.len() != 43 {
            return Ok(None);
        }
        let hash = token_hash(cookie);
        let noted = self.generation.current();
        let missed = std::sync::atomic::AtomicBool::new(false);
        // One load per session however many requests arrive at once, so
        // they share one `Live` (and its one-refresh-at-a-time lock).
        let loaded = self
            .cache
            .try_get_with_by_ref(&hash, async {
                missed.store(true, std::sync::atomic::Ordering::Relaxed);
                match self.store.session_by_token(&hash).await {
                    Ok(Some(session)) => Ok(Arc::new(Live {
                        written: Mutex::new(session.last_seen),
                        session: Mutex::new(self.opened(session)),
                        refreshing: tokio::sync::Mutex::new(()),
                        principal: arc_swap::ArcSwapOption::empty(),
                    })),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        self.stats
            .count(!missed.load(std::sync::atomic::Ordering::Relaxed));
        if self.generation.moved_since(noted) {
            // Another replica changed or ended a session meanwhile: what
            // was read may be stale, so it is not kept.
            self.cache.invalidate(&hash).await;
        }
        let live = match loaded {
            Ok(live) => live,
            Err(e) => {
                return match &*e {
                    None => Ok(None),
                    Some(e) => Err(StoreError::Backend(e.to_string())),
                };
            }
        };
        self.settle(&hash, live).await
    }

    /// Like [`Sessions::get`], from the cache only: `Ok(None)` also when the
    /// session is not cached (no store read to find it).
    pub async fn get_cached(&self, cookie: &str) -> Result<Option<Arc<Live>>, StoreError> {
        if cookie.len() != 43 {
            return Ok(None);
        }
        let hash = token_hash(cookie);
        match self.cache.get(&hash).await {
            Some(live) => self.settle(&hash, live).await,
            None => Ok(None),
        }
    }

    /// A found session, unless it ended (then it is removed); its activity
    /// is noted.
    async fn settle(&self, hash: &str, live: Arc<Live>) -> Result<Option<Arc<Live>>, StoreError> {
        if self.ended.contains_key(hash) {
            self.cache.invalidate(hash).await;
            return Ok(None);
        }
        let now = self.now();
        let (ended, write) = {
            let mut s = live.session.lock().unwrap_or_else(|e| e.into_inner());
            let ended = now >= s.expires_at || now - s.last_seen >= self.idle;
            if !ended {
                s.last_seen = now;
            }
            let mut written = live.written.lock().unwrap_or_else(|e| e.into_inner());
            let due = now - *written >= (self.idle / 4).min(Duration::from_secs(60));
            if due && !ended {
                *written = now;
            }
            (ended.then(|| s.clone()), (due && !ended).then(|| s.clone()))
        };
        if let Some(s) = ended {
            self.cache.invalidate(hash).await;
            self.store
                .delete_session(&s.tenant_id, &s.session_id)
                .await?;
            return Ok(None);
        }
        if let Some(s) = write {
            // last_seen is advisory: a lost write only shortens the idle
            // window. Only last_seen is written, so this late write cannot
            // undo a refresh or bring back an ended session.
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store
                    .touch_session(&s.tenant_id, &s.session_id, s.last_seen)
                    .await
                {
                    tracing::warn!(error = %e, "Session activity not saved.");
                }
            });
        }
        Ok(Some(live))
    }

    /// Saves a changed session (after a refresh); `false` if it ended meanwhile.
    pub async fn save(&self, live: &Live) -> Result<bool, StoreError> {
        let s = live.snapshot();
        self.store.update_session(&self.sealed(&s)).await
    }

    /// Ends the session of a cookie (logout). Returns it, if there was one.
    pub async fn end_by_cookie(&self, cookie: &str) -> Result<Option<Session>, StoreError> {
        let hash = token_hash(cookie);
        self.forget(&hash).await;
        let Some(s) = self.store.session_by_token(&hash).await? else {
            return Ok(None);
        };
        let s = self.opened(s);
        self.store
            .delete_session(&s.tenant_id, &s.session_id)
            .await?;
        Ok(Some(s))
    }

    /// Marks a session ended on this instance before it leaves the store.
    async fn forget(&self, hash: &str) {
        self.ended.insert(hash.to_string(), ());
        self.cache.invalidate(hash).await;
    }

    /// Drops a session from the cache after another replica changed or
    /// ended it (the next request reads the store again).
    pub async fn evict(&self, token_hash: &str) {
        self.generation.bump();
        self.cache.invalidate(token_hash).await;
    }

    /// Removes ended and idle sessions from the store (a periodic task).
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        self.store.sweep_sessions(self.now(), self.idle).await
    }

    /// Ends a session by id (admin revocation). Returns whether it existed.
    pub async fn end(&self, tenant_id: &str, session_id: &str) -> Result<bool, StoreError> {
        let sessions = self.store.list_sessions(tenant_id).await?;
        let Some(s) = sessions.iter().find(|s| s.session_id == session_id) else {
            return Ok(false);
        };
        self.forget(&s.token_hash).await;
        self.store.delete_session(tenant_id, session_id).await
    }

    /// A tenant's sessions that have not ended.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<Session>, StoreError> {
        let now = self.now();
        Ok(self
            .store
            .list_sessions(tenant_id)
            .await?
            .into_iter()
            .filter(|s| now < s.expires_at && now - s.last_seen < self.idle)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A manager over `store`: 8 h lifetime, 1 h idle timeout.
    fn manager(store: Arc<dyn Store>, clock: Clock) -> Sessions {
        Sessions::new(
            store,
            Duration::from_secs(8 * 3600),
            Duration::from_secs(3600),
            100,
            clock,
            Sealer::new(&[9u8; 32]),
        )
    }

    fn identity() -> Identity {
        Identity {
            tenant_id: "org-aaaaaaaa".into(),
            user_id: "alice".into(),
            email: None,
            roles: vec!["viewer".into()],
            grants: Vec::new(),
        }
    }

    #[tokio::test]
    async fn absolute_and_idle_expiry_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let t = Arc::new(AtomicI64::new(1_700_000_000));
        let clock: Clock = {
            let t = t.clone();
            Arc::new(move || OffsetDateTime::from_unix_timestamp(t.load(Ordering::SeqCst)).unwrap())
        };
        let sessions = manager(store.clone(), clock);
        let id = identity();
        let new = || NewSession {
            identity: &id,
            method: "oidc",
            provider: "corp",
            refresh_token: None,
            refresh_at: None,
            id_token: None,
            ends_by: None,
        };
        let (cookie, first) = sessions.create(new()).await.unwrap();
        // Used every 50 minutes, it lives until 8 hours after login, not longer.
        for _ in 0..10 {
            assert!(sessions.get(&cookie).await.unwrap().is_some());
            t.fetch_add(50 * 60, Ordering::SeqCst);
        }
        assert!(t.load(Ordering::SeqCst) - 1_700_000_000 >= 8 * 3600);
        assert!(sessions.get(&cookie).await.unwrap().is_none());
        assert!(
            store
                .session_by_token(&first.token_hash)
                .await
                .unwrap()
                .is_none()
        );
        // Idle for an hour: ended.
        let (cookie, _) = sessions.create(new()).await.unwrap();
        t.fetch_add(3599, Ordering::SeqCst);
        assert!(sessions.get(&cookie).await.unwrap().is_some());
        t.fetch_add(3600, Ordering::SeqCst);
        assert!(sessions.get(&cookie).await.unwrap().is_none());
        // A new login is a new id and secret; revocation by id ends it at once.
        let (c1, s1) = sessions.create(new()).await.unwrap();
        let (c2, s2) = sessions.create(new()).await.unwrap();
        assert_ne!(
            (c1.clone(), s1.session_id.clone()),
            (c2.clone(), s2.session_id.clone())
        );
        assert!(sessions.get(&c1).await.unwrap().is_some());
        assert!(sessions.end("org-aaaaaaaa", &s1.session_id).await.unwrap());
        assert!(sessions.get(&c1).await.unwrap().is_none());
        assert!(sessions.get(&c2).await.unwrap().is_some());
        assert!(sessions.get("not-a-cookie").await.unwrap().is_none());
    }

    /// What a source blocked for failed authentications may still use: a
    /// session this instance holds in its cache, never one only the store knows.
    #[tokio::test]
    async fn cache_only_lookup_finds_cached_live_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let sessions = manager(store, system_clock());
        let id = identity();
        let (cookie, s) = sessions
            .create(NewSession {
                identity: &id,
                method: "oidc",
                provider: "corp",
                refresh_token: None,
                refresh_at: None,
                id_token: None,
                ends_by: None,
            })
            .await
            .unwrap();
        assert!(
            sessions.get_cached(&cookie).await.unwrap().is_none(),
            "in the store, not yet in the cache"
        );
        assert!(sessions.get(&cookie).await.unwrap().is_some());
        assert!(sessions.get_cached(&cookie).await.unwrap().is_some());
        assert!(sessions.end("org-aaaaaaaa", &s.session_id).await.unwrap());
        assert!(sessions.get_cached(&cookie).await.unwrap().is_none());
        assert!(sessions.get_cached("not-a-cookie").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn provider_tokens_are_sealed_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let sessions = manager(store.clone(), system_clock());
        let id = identity();
        let (cookie, s) = sessions
            .create(NewSession {
                identity: &id,
                method: "oidc",
                provider: "corp",
                refresh_token: Some("rt-secret-value".into()),
                refresh_at: None,
                id_token: Some("id-token-value".into()),
                ends_by: None,
            })
            .await
            .unwrap();
        let stored = store
            .session_by_token(&s.token_hash)
            .await
            .unwrap()
            .unwrap();
        let raw = format!(
            "{stored:?} {:?} {:?}",
            stored.refresh_token, stored.id_token
        );
        assert!(!raw.contains("rt-secret-value") && !raw.contains("id-token-value"));
        assert!(stored.refresh_token.unwrap().starts_with("sealed.v1."));
        let live = sessions.get(&cookie).await.unwrap().unwrap();
        let opened = live.snapshot();
        assert_eq!(opened.refresh_token.as_deref(), Some("rt-secret-value"));
        assert_eq!(opened.id_token.as_deref(), Some("id-token-value"));
        let ended = sessions.end_by_cookie(&cookie).await.unwrap().unwrap();
        assert_eq!(
            ended.id_token.as_deref(),
            Some("id-token-value"),
            "the logout hint"
        );
    }
}
