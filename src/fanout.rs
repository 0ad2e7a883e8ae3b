//! Invalidation fan-out: what one replica changes, every replica's caches
//! forget within a second.
//!
//! Each replica caches keys, tenants, roles, projects, users and sessions
//! (that is what makes the hot path fast). With a shared store another
//! replica's write must evict those entries everywhere. The shared store
//! writes a [`Change`] into its outbox table in the same transaction as the
//! write itself, so an acknowledged write always has its event. Two paths
//! carry the events to the other replicas:
//!
//! - **Redis pub/sub** (fast, milliseconds): the writing replica publishes
//!   each committed change on `<prefix>:changes`; every replica subscribes.
//!   Pub/sub drops messages while a subscriber is disconnected, so
//! - **the outbox** (sure, one poll period): every replica reads the
//!   changes of the last few seconds every `store.invalidation_poll`
//!   (250 ms by default) and at once after each (re)subscription.
//!
//! A change is applied once per path it arrives by at most, and applying
//! one twice is harmless (it only evicts). A load racing an eviction cannot
//! put the old entry back (see [`crate::generation`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::Notify;

use crate::authn::api_key::ApiKeys;
use crate::authz::Authz;
use crate::metrics;
use crate::sso::Sso;
use crate::store::Change;
use crate::store::postgres::PgStore;
use crate::usage::Usage;

/// Outbox rows older than this are deleted (every replica has long read them).
const OUTBOX_KEEP: Duration = Duration::from_secs(3600);
/// How often the outbox is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for Redis when publishing (the outbox is the sure path).
const REDIS_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to (re)subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The caches a change evicts from. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Caches {
    /// Key and tenant lookups.
    pub keys: ApiKeys,
    /// Custom roles and projects.
    pub authz: Authz,
    /// Usage counters (dropped with a deleted tenant).
    pub usage: Usage,
    /// Users and sessions, with single sign-on.
    pub sso: Option<Arc<Sso>>,
}

impl Caches {
    /// Evicts what `change` makes stale.
    pub async fn apply(&self, change: &Change) {
        match change {
            Change::KeyHashes { hashes } => self.keys.forget_hashes(hashes).await,
            Change::Tenant { tenant_id, deleted } => {
                self.keys.forget_tenant(tenant_id).await;
                self.authz.forget_tenant(tenant_id).await;
                if *deleted {
                    self.usage.forget_tenant(tenant_id);
                }
            }
            Change::User { tenant_id, user_id } => {
                if let Some(sso) = &self.sso {
                    sso.forget_user(tenant_id, user_id).await;
                }
            }
            Change::Roles { tenant_id } => self.authz.forget_tenant(tenant_id).await,
            Change::Session { token_hash } => {
                if let Some(sso) = &self.sso {
                    sso.sessions.evict(token_hash).await;
                }
            }
        }
    }
}

/// Where the pub/sub path connects.
#[derive(Clone)]
pub struct PubSub {
    /// The Redis client (its URL may hold a password: not printed).
    pub client: redis::Client,
    /// The channel, `<prefix>:changes`.
    pub channel: String,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// One event as published: the outbox id names it on both paths.
#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    id: i64,
    change: Change,
}

/// The running fan-out. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Fanout(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Arc<PgStore>,
    caches: Caches,
    /// Outbox ids applied, with when: a change arriving by the second path
    /// is not applied again. Pruned past the outbox window.
    seen: Mutex<HashMap<i64, Instant>>,
    window: Duration,
    /// Wakes the outbox poll early (after a resubscription).
    poll_now: Notify,
    pubsub_up: AtomicBool,
    applied_outbox: AtomicU64,
    applied_pubsub: AtomicU64,
    applied_local: AtomicU64,
    published: AtomicU64,
    errors: AtomicU64,
}

impl Fanout {
    /// Starts the outbox poll (every `poll`), and with `pubsub` the
    /// subscriber and the publisher of this replica's own commits.
    pub fn start(
        store: Arc<PgStore>,
        caches: Caches,
        poll: Duration,
        pubsub: Option<PubSub>,
    ) -> Self {
        // The window each poll reads: long enough that a change committed
        // late (ids are assigned before commit, so they can become visible
        // out of order) is still read by a later poll.
        let window = (poll * 8).max(Duration::from_secs(5));
        let fanout = Self(Arc::new(Inner {
            store,
            caches,
            seen: Mutex::new(HashMap::new()),
            window,
            poll_now: Notify::new(),
            pubsub_up: AtomicBool::new(false),
            applied_outbox: AtomicU64::new(0),
            applied_pubsub: AtomicU64::new(0),
            applied_local: AtomicU64::new(0),
            published: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }));
        tokio::spawn(fanout.clone().poll_outbox(poll));
        tokio::spawn(fanout.clone().forward_commits(pubsub.clone()));
        if let Some(pubsub) = pubsub {
            tokio::spawn(fanout.clone().subscribe(pubsub));
        }
        fanout
    }

    /// Applies `change` unless outbox id `id` was applied already; returns
    /// whether it was applied now.
    async fn apply_once(&self, id: i64, change: &Change) -> bool {
        {
            let mut seen = self.0.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(id, Instant::now()).is_some() {
                return false;
            }
        }
        self.0.caches.apply(change).await;
        true
    }

    async fn poll_outbox(self, every: Duration) {
        let mut last_prune = Instant::now();
        loop {
            match self.0.store.recent_changes(self.0.window).await {
                Ok(changes) => {
                    for (id, change) in changes {
                        if self.apply_once(id, &change).await {
                            self.0.applied_outbox.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    self.0.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Could not read the invalidation outbox; retrying.");
                }
            }
            let keep = self.0.window * 2;
            self.0
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, at| at.elapsed() < keep);
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                if let Err(e) = self.0.store.prune_changes(OUTBOX_KEEP).await {
                    tracing::warn!(error = %e, "Could not prune the invalidation outbox.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.0.poll_now.notified() => {}
            }
        }
    }

    /// This replica's own commits: applied here at once (sweeps and
    /// refreshes have no admin call that evicts them) and published for
    /// the others.
    async fn forward_commits(self, pubsub: Option<PubSub>) {
        let mut commits = self.0.store.subscribe_commits();
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        loop {
            let (id, change) = match commits.recv().await {
                Ok(c) => c,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // The outbox still has them.
                    tracing::warn!(
                        missed = n,
                        "Invalidations were produced faster than published; the outbox poll carries them."
                    );
                    self.0.poll_now.notify_one();
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if self.apply_once(id, &change).await {
                self.0.applied_local.fetch_add(1, Ordering::Relaxed);
            }
            let Some(pubsub) = &pubsub else { continue };
            if conn.is_none() {
                // Bounded: while Redis is unreachable this replica's own
                // changes must still be applied here without delay.
                conn = match tokio::time::timeout(
                    REDIS_WAIT,
                    redis::aio::ConnectionManager::new(pubsub.client.clone()),
                )
                .await
                {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "Cannot reach Redis to publish invalidations; the outbox carries them.");
                        None
                    }
                    Err(_) => None,
                };
            }
            let Some(c) = conn.as_mut() else {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Ok(payload) = serde_json::to_string(&Message { id, change }) else {
                continue;
            };
            let sent = tokio::time::timeout(
                REDIS_WAIT,
                redis::cmd("PUBLISH")
                    .arg(&pubsub.channel)
                    .arg(payload)
                    .query_async::<i64>(c),
            )
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer in time",
                )))
            });
            match sent {
                Ok(_) => {
                    self.0.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.0.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Could not publish an invalidation; the outbox carries it.");
                }
            }
        }
    }

    async fn subscribe(self, pubsub: PubSub) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let connected = tokio::time::timeout(REDIS_WAIT, pubsub.client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no answer in time",
                    )))
                });
            match connected {
                Ok(mut conn) => match conn.subscribe(&pubsub.channel).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        self.0.pubsub_up.store(true, Ordering::Relaxed);
                        // Whatever was published while we were away.
                        self.0.poll_now.notify_one();
                        let mut messages = conn.on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<Message>(&payload) {
                                Ok(m) => {
                                    if self.apply_once(m.id, &m.change).await {
                                        self.0.applied_pubsub.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "Ignoring a malformed invalidation message.")
                                }
                            }
                        }
                        self.0.pubsub_up.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            "Lost the Redis invalidation subscription; resubscribing (the outbox covers the gap)."
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot subscribe to invalidations; retrying.")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot reach Redis for invalidations; retrying (the outbox carries them).")
                }
            }
            self.0.pubsub_up.store(false, Ordering::Relaxed);
            self.0.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Whether the pub/sub path is connected.
    pub fn pubsub_up(&self) -> bool {
        self.0.pubsub_up.load(Ordering::Relaxed)
    }

    /// The fan-out's Prometheus metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let i = &*self.0;
        metrics::counters(
            enc,
            "costguard_invalidations_applied",
            "Cache invalidations applied, by the path they arrived on first.",
            "source",
            [
                ("pubsub", i.applied_pubsub.load(Ordering::Relaxed)),
                ("outbox", i.applied_outbox.load(Ordering::Relaxed)),
                ("local", i.applied_local.load(Ordering::Relaxed)),
            ],
        )?;
        metrics::counter(
            enc,
            "costguard_invalidations_published",
            "This replica's changes published on Redis.",
            i.published.load(Ordering::Relaxed),
        )?;
        metrics::counter(
            enc,
            "costguard_invalidation_errors",
            "Failed outbox reads, publishes and subscriptions.",
            i.errors.load(Ordering::Relaxed),
        )?;
        metrics::gauge(
            enc,
            "costguard_invalidation_pubsub_up",
            "Whether the Redis invalidation subscription is live.",
            u64::from(self.pubsub_up()),
        )
    }
}
