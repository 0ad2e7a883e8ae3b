//! The shared store: PostgreSQL, for many replicas serving one tenant base.
//!
//! Client and pool: tokio-postgres with deadpool-postgres. Every connection
//! runs in its own task, so a request future dropped mid-query (a client
//! disconnect, a timeout) never leaves a half-read reply on the socket; a
//! dropped [`tokio_postgres::Transaction`] (or a `transaction()` call
//! dropped while its `BEGIN` is in flight) queues a `ROLLBACK` on that
//! connection at once, ahead of anything the next borrower sends; and the
//! pool recycles with [`RecyclingMethod::Verified`], a round trip behind
//! that `ROLLBACK`, so a connection is never handed out inside a
//! transaction (and a dead one is replaced). `Clean` would do the same and
//! also reset session state we never change, at seven statements a checkout.
//!
//! Semantics are the embedded store's ([`super::sled`]), method by method;
//! tier limits are exact across replicas because each check-and-insert runs
//! in one transaction under a per-tenant advisory lock. Every write that
//! can change what another replica's cache decides records a
//! [`Change`] in the `outbox` table in the same transaction; after the
//! COMMIT the same events go out on [`PgStore::subscribe_commits`].
//!
//! The URL is never logged nor put in an error: it may hold a password.

mod migrate;
mod records;
mod sessions;
mod settings;
mod shared_keys;
mod tls;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{GenericClient, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};

pub use migrate::migrate;
pub use settings::PostgresConfig;
pub use shared_keys::read_shared_key;

use super::{Change, StoreError};

/// Capacity of the post-commit event channel; a receiver that falls further
/// behind gets `Lagged` and should fall back to the outbox.
const COMMIT_CHANNEL: usize = 1024;

/// Most rows [`PgStore::recent_changes`] returns at once.
const RECENT_LIMIT: i64 = 10_000;

/// The PostgreSQL-backed [`super::Store`]. Cheap to share behind an `Arc`;
/// each handle has its own pool.
pub struct PgStore {
    pool: Pool,
    /// Lock class of this schema's per-tenant advisory locks.
    lock_class: i32,
    commits: broadcast::Sender<(i64, Change)>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL.
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// An error and its causes, `: `-separated (tokio-postgres's own text is
/// only the kind, "db error"; the server's message is the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// A backend error from a driver error, without the URL (tokio-postgres
/// never puts it in its messages; the text is the server's or the socket's).
fn pg(e: tokio_postgres::Error) -> StoreError {
    let text = format!("postgres: {}", chain(&e));
    if transient(&e) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// Whether a retry later may succeed: the connection is gone (a restart, a
/// network cut), the server is shutting down or starting, or the statement
/// ran out of time. Callers answer 503, not 500.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the socket failed (an I/O error underneath), or
        // a value did not convert (not transient).
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c == SqlState::QUERY_CANCELED.code() // statement_timeout
                || c == SqlState::ADMIN_SHUTDOWN.code()
                || c == SqlState::CRASH_SHUTDOWN.code()
                || c == SqlState::CANNOT_CONNECT_NOW.code()
                || c == SqlState::T_R_SERIALIZATION_FAILURE.code()
                || c == SqlState::T_R_DEADLOCK_DETECTED.code()
        }
    }
}

/// Like [`pg`], but a unique violation means `what` already exists.
fn pg_unique(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            StoreError::AlreadyExists(what)
        } else {
            pg(e)
        }
    }
}

/// No connection within `connect_timeout`, or none could be made: the
/// database is unreachable for now.
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres pool: {}", chain(&e)))
}

/// A schema name that needs no quoting (what the configuration checks;
/// checked again here because the name is spliced into SQL).
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "store.schema {schema:?} is not a plain SQL identifier"
        )))
    }
}

/// SHA-256 of `label` and the schema, as the first 8 bytes: advisory lock
/// keys that differ per schema, so tests and deployments sharing one
/// database do not serialize on each other.
fn schema_hash(label: &str, schema: &str) -> [u8; 8] {
    let digest = crate::model::sha256(format!("costguard:{label}:{schema}").as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// The driver configuration of `cfg`: URL plus our session settings.
/// `statement_timeout: None` leaves statements unbounded (migrations, which
/// wait on a lock and may rewrite tables).
fn pg_config(
    cfg: &PostgresConfig,
    statement_timeout: Option<Duration>,
) -> Result<tokio_postgres::Config, StoreError> {
    check_schema(&cfg.schema)?;
    // The parser's message could quote part of the URL: not passed on.
    let mut pg = tokio_postgres::Config::from_str(&cfg.url).map_err(|_| {
        StoreError::Backend(
            "store.url is not a valid PostgreSQL URL (not shown: it may hold a password)".into(),
        )
    })?;
    let timeout_ms = statement_timeout.map_or(0, |t| t.as_millis().max(1));
    pg.application_name("costguard");
    pg.options(format!(
        "-c search_path={} -c statement_timeout={timeout_ms}",
        cfg.schema
    ));
    if !cfg.connect_timeout.is_zero() {
        pg.connect_timeout(cfg.connect_timeout);
    }
    Ok(pg)
}

/// A pool of connections to `cfg`'s schema (`pool_size`, waits and
/// connects bounded by `connect_timeout`, TLS when the URL says
/// `sslmode=require`, `statement_timeout` on every connection), without
/// migrating or connecting yet: also what read-only tools (`costguard audit
/// verify --shipped`) use.
pub fn pool(cfg: &PostgresConfig) -> Result<Pool, StoreError> {
    let pg_cfg = pg_config(cfg, Some(cfg.statement_timeout))?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let manager = match tls::connector(cfg, &pg_cfg)? {
        Some(tls) => deadpool_postgres::Manager::from_config(pg_cfg, tls, manager_config),
        None => {
            deadpool_postgres::Manager::from_config(pg_cfg, tokio_postgres::NoTls, manager_config)
        }
    };
    let bound = (!cfg.connect_timeout.is_zero()).then_some(cfg.connect_timeout);
    Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .wait_timeout(bound)
        .create_timeout(bound)
        .recycle_timeout(bound)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))
}

impl PgStore {
    /// Connects (pool of `pool_size`, waits and connects bounded by
    /// `connect_timeout`, TLS when the URL says `sslmode=require`), applies
    /// pending migrations ([`migrate`]), and checks one connection works.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        migrate::migrate(cfg).await?;
        let pool = pool(cfg)?;
        let class = schema_hash("tenant-lock", &cfg.schema);
        let store = Self {
            pool,
            lock_class: i32::from_be_bytes([class[0], class[1], class[2], class[3]]),
            commits: broadcast::channel(COMMIT_CHANNEL).0,
        };
        store.client().await?.simple_query("").await.map_err(pg)?;
        Ok(store)
    }

    /// The pool (audit shipping writes through it too).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Events of transactions this handle committed, each `(outbox id,
    /// change)`, sent right after the COMMIT so the fan-out can publish
    /// them at once. Best effort: an operation cancelled between its COMMIT
    /// and the send loses only this copy; the outbox row is there to poll.
    pub fn subscribe_commits(&self) -> broadcast::Receiver<(i64, Change)> {
        self.commits.subscribe()
    }

    /// The outbox rows written within `window` (by the database's clock),
    /// by id, at most 10 000. Ids are allocated before COMMIT, so a row may
    /// appear after one with a higher id: pollers re-read a window rather
    /// than resume from an id.
    pub async fn recent_changes(&self, window: Duration) -> Result<Vec<(i64, Change)>, StoreError> {
        let micros = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, change FROM outbox \
                 WHERE at > clock_timestamp() - $1::bigint * interval '1 microsecond' \
                 ORDER BY id LIMIT $2",
            )
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&micros, &RECENT_LIMIT])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0).map_err(pg)?;
                let Json(change): Json<Change> = row.try_get(1).map_err(pg)?;
                Ok((id, change))
            })
            .collect()
    }

    /// Deletes outbox rows older than `older_than`; returns how many.
    pub async fn prune_changes(&self, older_than: Duration) -> Result<u64, StoreError> {
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM outbox \
                 WHERE at < clock_timestamp() - $1::bigint * interval '1 microsecond'",
                &[&micros],
            )
            .await
            .map_err(pg)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Serializes a tenant's limit checks and cascades across replicas,
    /// until the transaction ends.
    async fn lock_tenant(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tenant_id: &str,
    ) -> Result<(), StoreError> {
        let stmt = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&self.lock_class, &tenant_id])
            .await
            .map(drop)
            .map_err(pg)
    }

    /// Commits `tx` after writing `changes` to the outbox in it, then
    /// announces them.
    async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let mut written = Vec::with_capacity(changes.len());
        if !changes.is_empty() {
            let stmt = tx
                .prepare_cached("INSERT INTO outbox (change) VALUES ($1) RETURNING id")
                .await
                .map_err(pg)?;
            for change in changes {
                let row = tx.query_one(&stmt, &[&Json(&change)]).await.map_err(pg)?;
                written.push((row.try_get::<_, i64>(0).map_err(pg)?, change));
            }
        }
        tx.commit().await.map_err(pg)?;
        for event in written {
            // No receiver is fine: the fan-out may not be running.
            let _ = self.commits.send(event);
        }
        Ok(())
    }
}

/// Ends `tx` with a ROLLBACK now and returns `outcome`. Dropping it would
/// roll back too, but lazily: the ROLLBACK is queued and goes out when the
/// connection's task next runs, and until then the session sits idle in
/// its transaction, holding its locks (the tenant's, a row's).
async fn rollback<T>(
    tx: deadpool_postgres::Transaction<'_>,
    outcome: Result<T, StoreError>,
) -> Result<T, StoreError> {
    // A failed ROLLBACK leaves a broken connection, which recycling drops.
    let _ = tx.rollback().await;
    outcome
}

/// Runs `sql` with `params` (on a pooled connection or in a transaction)
/// and decodes the first
/// column of each row as a JSON document.
async fn docs<T: serde::de::DeserializeOwned>(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<T>, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(pg)?;
    let rows = client.query(&stmt, params).await.map_err(pg)?;
    rows.iter()
        .map(|row| row.try_get::<_, Json<T>>(0).map(|j| j.0).map_err(pg))
        .collect()
}

/// Like [`docs`], for at most one row.
async fn doc<T: serde::de::DeserializeOwned>(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, StoreError> {
    let stmt = client.prepare_cached(sql).await.map_err(pg)?;
    let row = client.query_opt(&stmt, params).await.map_err(pg)?;
    row.map(|row| row.try_get::<_, Json<T>>(0).map(|j| j.0).map_err(pg))
        .transpose()
}

/// Unix nanoseconds, saturated to `i64` (years 1677 to 2262).
fn nanos(t: time::OffsetDateTime) -> i64 {
    let n = t.unix_timestamp_nanos();
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}
