//! Storage behind one async trait, so backends are interchangeable: sled
//! ([`sled::SledStore`]) is the embedded default for one pod; PostgreSQL
//! ([`postgres::PgStore`]) is the shared backend for many replicas: it
//! implements the same trait and passes the same conformance suite
//! (`store::conformance`, behind the test-only `conformance` feature, which
//! `cargo test` turns on).
//!
//! Durability contract: every method that changes data returns only after
//! the change is on disk, so an acknowledged admin write survives `kill -9`
//! (PostgreSQL: after its COMMIT returned).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod postgres;
pub mod sled;

use async_trait::async_trait;

use std::sync::Arc;

use crate::model::{ApiKey, CustomRole, Project, Session, Tenant, User};

/// A persisted usage counter: what is counted, for which tenant, in which
/// period. Deleting a tenant deletes its counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// The tenant.
    pub tenant_id: Arc<str>,
    /// What is counted.
    pub counter: Counter,
}

/// The counters costguard keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Proxied requests on a UTC day (days since 1970-01-01).
    Requests {
        /// The day.
        day: u32,
    },
    /// Spend in micro-USD in a UTC month (`year * 12 + month - 1`), of the
    /// whole tenant (`project: None`) or one project.
    Spend {
        /// The month.
        month: u32,
        /// The project, or the tenant as a whole.
        project: Option<Arc<str>>,
    },
}

impl UsageKey {
    /// The counter's name within its tenant (`20419`, `spend/24322`,
    /// `spend/24322/proj-1a2b3c4d`), stable across versions: stores use it
    /// as their key.
    pub fn name(&self) -> String {
        match &self.counter {
            Counter::Requests { day } => day.to_string(),
            Counter::Spend {
                month,
                project: None,
            } => format!("spend/{month}"),
            Counter::Spend {
                month,
                project: Some(p),
            } => format!("spend/{month}/{p}"),
        }
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing to change does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A tier limit would be passed.
    #[error("{what} limit reached ({max})")]
    LimitReached {
        /// `project` or `user`.
        what: &'static str,
        /// The limit.
        max: i64,
    },
    /// The id is taken.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The backend failed (I/O, corruption, encoding).
    #[error("store backend: {0}")]
    Backend(String),
    /// The backend cannot be reached right now (a shared store's database
    /// is down, a connection or statement timed out): retrying later may
    /// work, and nothing was changed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What a tenant deletion removed, so caches can forget it.
#[derive(Debug, Default)]
pub struct Removed {
    /// Key hashes (current and previous) that no longer authenticate.
    pub key_hashes: Vec<String>,
}

/// A committed write other replicas' caches must hear about. A shared store
/// records each one in its outbox *in the write's own transaction* (so a
/// crash cannot commit the write and lose the event); every replica polls
/// the outbox, and Redis pub/sub carries the same events faster. Applying
/// one twice is harmless: each only evicts cache entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// These key hashes (a key's current and previous, before the write)
    /// may no longer authenticate as cached: revoke, rotate, update.
    KeyHashes {
        /// The hashes.
        hashes: Vec<String>,
    },
    /// A tenant changed (status, tier, limits) or was deleted: its cached
    /// keys, tenant record, roles and projects go.
    Tenant {
        /// The tenant.
        tenant_id: String,
        /// Deleted (its usage counters go too).
        deleted: bool,
    },
    /// A user was changed or deleted.
    User {
        /// The tenant.
        tenant_id: String,
        /// The user.
        user_id: String,
    },
    /// A tenant's custom roles or projects changed.
    Roles {
        /// The tenant.
        tenant_id: String,
    },
    /// A session ended or changed.
    Session {
        /// Its cookie secret's hash (what caches are keyed by).
        token_hash: String,
    },
}

/// Everything costguard persists.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A real read, for `/ready`.
    async fn check(&self) -> Result<(), StoreError>;

    /// Adds a tenant; its id must be new.
    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    /// One tenant.
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError>;
    /// All tenants, by id.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Replaces an existing tenant.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    /// Removes a tenant and everything it owns (keys, projects, users, roles, usage).
    async fn delete_tenant(&self, tenant_id: &str) -> Result<Removed, StoreError>;

    /// Adds a key and indexes its hash, unless the tenant already has
    /// `max` live (neither revoked nor expired) keys (-1: no limit).
    async fn insert_key(&self, key: &ApiKey, max: i64) -> Result<(), StoreError>;
    /// One key of a tenant by id.
    async fn get_key(&self, tenant_id: &str, key_id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The key whose current or previous hash is `hash`.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// A tenant's keys, by id.
    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Replaces an existing key and re-indexes its hashes (rotation,
    /// revocation): hashes it no longer has stop resolving.
    async fn update_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Adds a project unless the tenant already has `max` (-1: no limit).
    async fn insert_project(&self, project: &Project, max: i64) -> Result<(), StoreError>;
    /// A tenant's projects, by id.
    async fn list_projects(&self, tenant_id: &str) -> Result<Vec<Project>, StoreError>;
    /// One project of a tenant.
    async fn get_project(
        &self,
        tenant_id: &str,
        project_id: &str,
    ) -> Result<Option<Project>, StoreError>;

    /// Creates or replaces a user; creating (also over a deleted user's
    /// tombstone) fails when the tenant already has `max` users (-1: no
    /// limit). Returns whether the user was created.
    async fn put_user(&self, user: &User, max: i64) -> Result<bool, StoreError>;
    /// A tenant's users, by id (never the deleted ones).
    async fn list_users(&self, tenant_id: &str) -> Result<Vec<User>, StoreError>;
    /// One user, including a deleted user's tombstone (status `deleted`),
    /// so single sign-on can refuse a user the admin API removed.
    async fn get_user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError>;
    /// Deletes a user, leaving a tombstone (status `deleted`, no roles);
    /// returns whether a live user existed.
    async fn delete_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, StoreError>;

    /// Creates or replaces a tenant's custom role; returns whether it was created.
    async fn put_role(&self, role: &CustomRole) -> Result<bool, StoreError>;
    /// A tenant's custom roles, by name.
    async fn list_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, StoreError>;
    /// Removes a custom role; returns whether it existed.
    async fn delete_role(&self, tenant_id: &str, name: &str) -> Result<bool, StoreError>;

    /// Adds each amount to its counter (created at 0), all durable on return.
    async fn add_usage(&self, batch: &[(UsageKey, u64)]) -> Result<(), StoreError>;
    /// A counter's value (0 if never counted).
    async fn usage(&self, key: &UsageKey) -> Result<u64, StoreError>;

    /// Creates or replaces a session (by tenant and session id).
    async fn put_session(&self, session: &Session) -> Result<(), StoreError>;
    /// Replaces a session only if it still exists (activity, refresh), so
    /// a late write cannot bring back a session that was ended. Returns
    /// whether it existed.
    async fn update_session(&self, session: &Session) -> Result<bool, StoreError>;
    /// Sets a session's `last_seen` (only that, and only if the session
    /// still exists and the time is later).
    async fn touch_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        last_seen: time::OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Removes every session that ended by `now` (absolute lifetime) or
    /// was unused for `idle`; returns how many.
    async fn sweep_sessions(
        &self,
        now: time::OffsetDateTime,
        idle: std::time::Duration,
    ) -> Result<u64, StoreError>;
    /// The session whose cookie secret hashes to `token_hash`.
    async fn session_by_token(&self, token_hash: &str) -> Result<Option<Session>, StoreError>;
    /// A tenant's sessions, by id (expired ones included until removed).
    async fn list_sessions(&self, tenant_id: &str) -> Result<Vec<Session>, StoreError>;
    /// Ends a session; returns whether it existed.
    async fn delete_session(&self, tenant_id: &str, session_id: &str) -> Result<bool, StoreError>;

    /// Remembers `key` until `until` (unix seconds), durably, if it is not
    /// remembered already: true the first time, false while it is (a
    /// replay). Atomic: of two callers with one key, one gets true. Used
    /// for one-time values shared by every replica (SAML assertion IDs).
    async fn remember_once(&self, key: &str, until: i64) -> Result<bool, StoreError>;
    /// Forgets remembered keys whose time passed by `now`; returns how many.
    async fn sweep_remembered(&self, now: i64) -> Result<u64, StoreError>;

    /// Forces everything written so far to disk.
    async fn flush(&self) -> Result<(), StoreError>;
}
