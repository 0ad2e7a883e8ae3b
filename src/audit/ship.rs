//! Shipping: each replica's audit log, copied to PostgreSQL, so the admin
//! API's query and report cover every replica and a lost pod's records
//! survive it (issue 17, "many replicas, one truth").
//!
//! The files stay the record: the writer appends and signs its head
//! exactly as with one pod, and never waits for the database. A shipper
//! task per replica reads the files back behind the writer and copies
//! them to `audit_records` (`src/store/postgres/migrations/0002_audit.sql`):
//! - one **stream** per audit directory: a random id created once in
//!   `DIR/stream-id` and kept across restarts (a pod that keeps its volume
//!   keeps its stream; a new volume is a new stream);
//! - only **synced** records leave the replica: those up to the signed
//!   head (`audit.head`, which names only records on disk), so the
//!   database never holds a record a power loss could take back from the
//!   files;
//! - rows are idempotent by `(stream, seq)` (`ON CONFLICT DO NOTHING`),
//!   sent in batches of at most [`BATCH`] rows (one `INSERT … UNNEST`);
//!   the shipper resumes from `max(seq)` of its stream, asked at start and
//!   after every error;
//! - the stream's **anchor** (`audit_streams`) is the writer's signed head
//!   itself (seq, hash, file, HMAC), written in the transaction that
//!   commits the records up to it, so it never leads the shipped rows,
//!   and `costguard audit verify --shipped` ([`verify`]) can check a
//!   stream from the database alone, even once its pod and files are gone;
//! - **retention**: records local retention removed before they were
//!   shipped (a database outage longer than the retention) are a gap the
//!   shipper records in `audit_gaps` with the retention anchor
//!   (`audit.anchor`, signed with the same key) that covers it; the
//!   verifier accepts a gap, or a stream starting after seq 1, only with
//!   such a signed anchor, so deleted rows are still detected;
//! - a database **outage** never blocks the writer: the shipper only reads
//!   files, retries with backoff (up to [`MAX_BACKOFF`]) and catches up,
//!   holding at most one batch in memory.
//!
//! Counters for `/metrics` ([`ShipStats`]): `costguard_audit_shipped_total`,
//! `costguard_audit_ship_lag_records`, `costguard_audit_ship_errors_total`,
//! `costguard_audit_ship_up`.

mod pg;
mod reader;
pub mod shared;
pub mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::watch;

pub use pg::connect;

use super::Audit;
use super::writer::{HEAD, Head};
use crate::metrics;
use reader::Cursor;

/// Most rows per `INSERT`.
pub const BATCH: usize = 500;
/// About the most bytes of records held per batch.
pub const BATCH_BYTES: usize = 4 << 20;
/// How often a caught-up shipper looks for new records.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between retries while the database is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The stream id's file in the audit directory.
pub const STREAM_FILE: &str = "stream-id";

/// Why a shipping step (or a shared query, or a verification) failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The database (or the pool) failed.
    #[error("database: {0}")]
    Db(String),
    /// The files could not be read.
    #[error("audit files: {0}")]
    Io(#[from] io::Error),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
}

impl From<tokio_postgres::Error> for ShipError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's messages name the failing step and the server's
        // answer, never the connection's password.
        ShipError::Db(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for ShipError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ShipError::Db(e.to_string())
    }
}

/// The stream id of the log in `dir`: read from `DIR/stream-id`, or
/// created there once (16 random bytes, hex) and kept across restarts.
pub fn stream_id(dir: &Path) -> io::Result<String> {
    let path = dir.join(STREAM_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    let id = crate::model::hex(&bytes);
    let tmp = dir.join("stream-id.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    // A concurrent creator (two shippers on one directory) loses nothing:
    // whichever rename lands last is read back by both.
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}

/// The shipper's counters, rendered on `/metrics` by [`Audit::metrics`]
/// once the shipper is attached to the log.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Records committed to the database by this process.
    pub shipped: AtomicU64,
    /// Synced records not yet in the database (at the last look).
    pub lag: AtomicU64,
    /// Failed shipping steps.
    pub errors: AtomicU64,
    /// Set while the last step reached the database.
    pub up: AtomicBool,
    /// Held by the shipper for each step, and by an erasure while it
    /// rewrites the files and the rows: the shipper never reads a file
    /// mid-rewrite nor inserts a row the erasure has already passed.
    pub gate: tokio::sync::Mutex<()>,
    /// Bumped by each erasure (line lengths changed): the shipper finds
    /// its place in the files again.
    pub epoch: AtomicU64,
}

impl ShipStats {
    /// The shipper's metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        metrics::counter(
            enc,
            "costguard_audit_shipped",
            "Audit records shipped to PostgreSQL by this process.",
            self.shipped.load(Ordering::Relaxed),
        )?;
        metrics::gauge(
            enc,
            "costguard_audit_ship_lag_records",
            "Synced audit records not yet shipped to PostgreSQL.",
            self.lag.load(Ordering::Relaxed),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_ship_errors",
            "Audit shipping attempts that failed (retried).",
            self.errors.load(Ordering::Relaxed),
        )?;
        metrics::gauge(
            enc,
            "costguard_audit_ship_up",
            "1 while the audit shipper reaches PostgreSQL.",
            u64::from(self.up.load(Ordering::Relaxed)),
        )
    }
}

/// What a log attached to a shipper shares: the pool and its own stream
/// (the admin query reads other streams from the database and its own
/// from the local index), and the counters.
pub struct Link {
    /// The shared database.
    pub pool: Pool,
    /// This replica's stream.
    pub stream: String,
    /// The shipper's counters.
    pub stats: Arc<ShipStats>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// What one [`Shipper::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Shipped a batch; more synced records wait.
    More,
    /// Everything synced is shipped and anchored.
    CaughtUp,
}

/// One replica's shipper: reads its files from where the database's copy
/// of its stream ends and ships them. [`start`] runs it as a task; tests
/// call [`Shipper::step`] directly.
pub struct Shipper {
    pool: Pool,
    dir: PathBuf,
    key: Vec<u8>,
    stream: String,
    stats: Arc<ShipStats>,
    /// Ask the database where the stream ends before the next step.
    resync: bool,
    /// The last seq (and its hash) known to be in the database.
    shipped: u64,
    shipped_hash: Option<String>,
    /// The anchored head's seq.
    anchored: u64,
    cursor: Option<Cursor>,
    /// An unusable head was already logged.
    head_warned: bool,
    /// The erasure epoch the cursor was found in ([`ShipStats`]).
    epoch: u64,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("stream", &self.stream)
            .field("shipped", &self.shipped)
            .finish_non_exhaustive()
    }
}

/// The signed head, if one was written (an unreadable one, e.g. read while
/// being replaced, counts as none for this turn).
fn read_head(dir: &Path) -> Option<Head> {
    let bytes = std::fs::read(dir.join(HEAD)).ok()?;
    serde_json::from_slice::<Head>(&bytes)
        .ok()
        .filter(|h| h.seq > 0)
}

/// The retention anchor, if retention removed files.
fn read_anchor(dir: &Path) -> Option<Head> {
    let bytes = std::fs::read(dir.join(super::retention::ANCHOR)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Shipper {
    /// A shipper of the log in `dir` (its stream from [`stream_id`]); `key`
    /// is the audit HMAC key (heads and anchors whose signature does not
    /// verify with it are never anchored).
    pub fn new(pool: Pool, dir: &Path, key: Vec<u8>) -> io::Result<Self> {
        Ok(Self {
            pool,
            stream: stream_id(dir)?,
            dir: dir.to_path_buf(),
            key,
            stats: Arc::new(ShipStats::default()),
            resync: true,
            shipped: 0,
            shipped_hash: None,
            anchored: 0,
            cursor: None,
            head_warned: false,
            epoch: 0,
        })
    }

    /// This replica's stream id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ShipStats> {
        &self.stats
    }

    /// Ships from `seq` on again at the next step (what is already there
    /// is left as it is: rows are idempotent).
    pub fn rewind(&mut self, seq: u64) {
        self.resync = false;
        self.shipped = seq.saturating_sub(1);
        self.shipped_hash = None;
        self.cursor = None;
    }

    /// Ships one batch of synced records (and anchors the head once they
    /// reach it). After an error, the next step asks the database again
    /// where the stream ends.
    pub async fn step(&mut self) -> Result<Step, ShipError> {
        let stats = self.stats.clone();
        let _gate = stats.gate.lock().await;
        let epoch = stats.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.cursor = None;
        }
        let result = self.try_step().await;
        match &result {
            Ok(_) => self.stats.up.store(true, Ordering::Relaxed),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, ShipError::Io(_)) {
                    self.stats.up.store(false, Ordering::Relaxed);
                }
                self.resync = true;
                self.cursor = None;
            }
        }
        result
    }

    async fn try_step(&mut self) -> Result<Step, ShipError> {
        // Read first, so the lag is known (from the last known shipped
        // seq) even while the database is down.
        let head = read_head(&self.dir);
        let head_seq = head.as_ref().map_or(0, |h| h.seq);
        self.stats
            .lag
            .store(head_seq.saturating_sub(self.shipped), Ordering::Relaxed);
        if self.resync {
            let (seq, hash, anchored) = pg::position(&self.pool, &self.stream).await?;
            self.shipped = seq;
            self.shipped_hash = hash;
            self.anchored = anchored;
            self.resync = false;
            self.cursor = None;
        }
        let Some(head) = head else {
            return Ok(Step::CaughtUp);
        };
        let head_ok = head.is_signed_by(&self.key);
        if !head_ok && !self.head_warned {
            self.head_warned = true;
            tracing::error!(
                dir = %self.dir.display(),
                "The audit head's signature does not verify with the audit key: records are shipped but the stream is not anchored (run costguard audit verify)."
            );
        }
        self.stats
            .lag
            .store(head.seq.saturating_sub(self.shipped), Ordering::Relaxed);
        if head.seq <= self.shipped {
            if head.seq == self.shipped
                && self.anchored < head.seq
                && head_ok
                && self.shipped_hash.as_deref() == Some(head.hash.as_str())
            {
                pg::ship(
                    &self.pool,
                    pg::Batch {
                        stream: &self.stream,
                        lines: &[],
                        gap: None,
                        head: Some(&head),
                    },
                )
                .await?;
                self.anchored = head.seq;
            }
            return Ok(Step::CaughtUp);
        }
        let dir = self.dir.clone();
        let next = self.shipped + 1;
        let cursor = self.cursor.take();
        let upto = head.seq;
        let (lines, cursor) = super::off_runtime(move || {
            let cursor = match cursor {
                Some(c) => c,
                None => reader::locate(&dir, next)?,
            };
            reader::read_batch(&dir, cursor, upto, BATCH, BATCH_BYTES)
        })
        .await?;
        self.cursor = Some(cursor);
        let Some(first) = lines.first() else {
            // The head names records not readable yet (or removed).
            return Ok(Step::CaughtUp);
        };
        let gap = if first.record.seq > next {
            let anchor = read_anchor(&self.dir).filter(|a| {
                a.seq + 1 == first.record.seq
                    && a.hash == first.record.prev_hash
                    && a.is_signed_by(&self.key)
            });
            if anchor.is_some() {
                tracing::warn!(
                    stream = %self.stream,
                    from = next,
                    to = first.record.seq - 1,
                    "Audit records removed by local retention before they were shipped; the gap is recorded with its signed retention anchor."
                );
            } else {
                tracing::error!(
                    stream = %self.stream,
                    from = next,
                    to = first.record.seq - 1,
                    "Audit records missing from the local files with no retention anchor covering them; shipping on (verification will report the gap)."
                );
            }
            anchor
        } else {
            None
        };
        let last = lines.last().expect("not empty");
        let reaches_head = last.record.seq == head.seq;
        let anchor = (reaches_head && head_ok && last.record.hash == head.hash).then_some(&head);
        pg::ship(
            &self.pool,
            pg::Batch {
                stream: &self.stream,
                lines: &lines,
                gap: gap.as_ref(),
                head: anchor,
            },
        )
        .await?;
        self.shipped = last.record.seq;
        self.shipped_hash = Some(last.record.hash.clone());
        if anchor.is_some() {
            self.anchored = head.seq;
        }
        self.stats
            .shipped
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        self.stats
            .lag
            .store(head.seq.saturating_sub(self.shipped), Ordering::Relaxed);
        Ok(if reaches_head {
            Step::CaughtUp
        } else {
            Step::More
        })
    }

    /// Steps until caught up (or an error).
    pub async fn catch_up(&mut self) -> Result<(), ShipError> {
        while self.step().await? == Step::More {}
        Ok(())
    }
}

/// The running shipper task.
#[derive(Debug)]
pub struct ShipperHandle {
    /// `Some(grace)`: stop after one last catch-up of at most `grace`.
    stop: watch::Sender<Option<Duration>>,
    task: tokio::task::JoinHandle<()>,
    stream: String,
    stats: Arc<ShipStats>,
}

impl ShipperHandle {
    /// This replica's stream id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ShipStats> {
        &self.stats
    }

    /// Stops the task after one last catch-up of at most `grace` (call
    /// after the writer's final flush, so the last records leave too).
    /// Dropping the handle stops it without that catch-up.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        if tokio::time::timeout(grace + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            tracing::warn!("Audit shipper did not stop in time.");
        }
    }
}

/// Starts shipping `audit`'s log to `pool` and attaches the shipper to
/// it: `/metrics` ([`Audit::metrics`]) then shows the shipping counters,
/// and the admin audit query and report ([`crate::admin::audit_query`])
/// answer for every replica. `key` is the audit HMAC key
/// (`audit.hmac_key_file`). Must be called inside the Tokio runtime.
pub fn start(pool: Pool, audit: &Audit, key: Vec<u8>) -> io::Result<ShipperHandle> {
    start_every(pool, audit, key, INTERVAL)
}

/// [`start`], looking for new records every `interval`.
pub fn start_every(
    pool: Pool,
    audit: &Audit,
    key: Vec<u8>,
    interval: Duration,
) -> io::Result<ShipperHandle> {
    let mut shipper = Shipper::new(pool.clone(), audit.dir(), key)?;
    let stats = shipper.stats.clone();
    let stream = shipper.stream.clone();
    audit.attach_shipping(Arc::new(Link {
        pool,
        stream: stream.clone(),
        stats: stats.clone(),
    }));
    let (stop, mut stopped) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = interval;
        let mut down = false;
        loop {
            let wait = tokio::select! {
                r = shipper.step() => match r {
                    Ok(Step::More) => Duration::ZERO,
                    Ok(Step::CaughtUp) => {
                        if down {
                            down = false;
                            tracing::info!(stream = %shipper.stream, "Audit shipping to PostgreSQL resumed.");
                        }
                        backoff = interval;
                        interval
                    }
                    Err(e) => {
                        if down {
                            tracing::debug!(error = %e, "Audit shipping still failing; retrying.");
                        } else {
                            down = true;
                            tracing::warn!(error = %e, stream = %shipper.stream, "Audit shipping to PostgreSQL failed; the files keep every record and shipping retries with backoff.");
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                },
                _ = stopped.changed() => break,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => break,
            }
        }
        // The last records (after the writer's final flush): one bounded
        // catch-up, when shut down (not when the handle was dropped).
        let grace = *stopped.borrow();
        if let Some(grace) = grace {
            let _ = tokio::time::timeout(grace, shipper.catch_up()).await;
        }
    });
    Ok(ShipperHandle {
        stop,
        task,
        stream,
        stats,
    })
}

/// Erasure in the shipped copy: every row of the target's tenant naming
/// the user (any replica's stream, so also records whose replica is
/// gone) is pseudonymised as the files are ([`super::subject::erase`]);
/// its `line` and `record` are replaced, its hash stays. Returns how many
/// rows changed. Pages through the candidates by `(stream, seq)`.
pub(crate) async fn erase_rows(
    link: &Link,
    target: &super::subject::Target<'_>,
    key: &[u8],
) -> Result<u64, ShipError> {
    const PAGE: i64 = 500;
    let client = link.pool.get().await?;
    let (mut stream, mut seq) = (String::new(), -1i64);
    let mut changed = 0u64;
    loop {
        let rows = client
            .query(
                "SELECT stream, seq, line FROM audit_records \
                 WHERE tenant_id = $1 AND (stream, seq) > ($2, $3) \
                 AND (strpos(line, $4) > 0 OR strpos(line, $5) > 0) \
                 ORDER BY stream, seq LIMIT $6",
                &[
                    &target.tenant_id,
                    &stream,
                    &seq,
                    &target.user_id,
                    &target.email.unwrap_or(target.user_id),
                    &PAGE,
                ],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        (stream, seq) = (last.get(0), last.get(1));
        for row in &rows {
            let line: String = row.get(2);
            let Ok(mut record) = serde_json::from_str::<super::Record>(&line) else {
                continue;
            };
            if super::subject::erase(&mut record, target, key) != super::subject::Erased::Changed {
                continue;
            }
            let line = serde_json::to_string(&record).expect("a record serializes");
            let view = pg::jsonb_view(&record).to_string();
            client
                .execute(
                    "UPDATE audit_records SET line = $3, record = $4::text::jsonb \
                     WHERE stream = $1 AND seq = $2",
                    &[
                        &row.get::<_, String>(0),
                        &row.get::<_, i64>(1),
                        &line,
                        &view,
                    ],
                )
                .await?;
            changed += 1;
        }
    }
    Ok(changed)
}
