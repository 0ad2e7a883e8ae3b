//! The audit log: one record per decision (allowed or denied) and per admin
//! action, tamper-evident and never dropped.
//!
//! Proxied requests append their own record under the writer's lock;
//! everything else goes to one writer thread ([`writer`]) over a bounded
//! channel: a full channel makes callers wait (backpressure), never drops.
//! Records go to JSON-lines files, each chained to the previous one with
//! SHA-256 (`prev_hash`, `hash`); after each sync (at least once a second
//! while records are written) the writer replaces a signed head
//! (`audit.head`, HMAC-SHA256) naming the last record synced, so a flipped
//! byte, a removed record, a truncated tail and a deleted file are all
//! detected by [`verify`].
//!
//! What a caller waits for, and what a crash can lose:
//! - a proxied request's record is appended to the file on the request
//!   path when the decision is made, before the request is forwarded (or
//!   the denial answered): one `write(2)` into the page cache, a few
//!   microseconds, under the lock the writer thread shares (a hand-off to
//!   the thread and back cost two wake-ups, measured at a third of the
//!   throughput). So **a response the client received always has its
//!   record written** to the operating system: killing the process
//!   (`kill -9`, OOM) loses no answered request's record;
//! - a power failure can lose what the kernel had not yet put on disk: the
//!   records written since the last `fdatasync`, which the writer does at
//!   least once a second (and for every admin action, whose record is
//!   synced before its 2xx);
//! - anonymous denials (no authenticated caller: missing or bad credential,
//!   the failed-authentication block, malformed targets) are aggregated per
//!   source address, reason and `audit.anonymous_window`: the first is
//!   recorded like any denial, the others are counted and written as one
//!   record with `count` when the window closes (a crash loses the count
//!   of the open window, never a first record);
//! - every stored string is bounded by `audit.max_field_bytes` (cut on a
//!   UTF-8 boundary, with a marker), so no caller decides how large a
//!   record is.
//!
//! A record's personal fields (user id, address, user agent, the user an
//! admin record is about) are committed to through a salted digest the
//! chain hash covers, not hashed directly ([`subject`]), so a deleted
//! user can be pseudonymised in the log without breaking the chain
//! ([`erasure`]).
//!
//! If the files cannot be written, the writer keeps the batch and retries;
//! meanwhile proxied requests get 503 (fail closed) unless
//! `audit.fail_open` is set, which lets them through unrecorded and counts
//! them.

pub mod anonymous;
pub mod erasure;
mod event_type;
pub mod files;
pub mod index;
mod line;
pub mod retention;
pub mod ship;
pub mod subject;
pub mod verify;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use event_type::{EventType, Severity, UnknownEventType};

use crate::metrics;

/// One audit record as written (design.md's fields, plus `seq`, the
/// record's position in the chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1, never reused.
    pub seq: u64,
    /// UUIDv7.
    pub event_id: String,
    /// RFC 3339 UTC with microseconds.
    pub timestamp: String,
    /// `request.allowed`, `security.access_denied`, `apikey.created`, …
    pub event_type: String,
    /// The user, or the key id for keys; `admin-token` for the bootstrap
    /// token; empty when unknown.
    pub user_id: String,
    /// The tenant concerned; empty when none.
    pub tenant_id: String,
    /// The data region of the tenant concerned (its `settings.data_region`
    /// when the record was written); empty when the record concerns no
    /// tenant. Absent only in records written before costguard recorded
    /// regions (so they still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Event specifics: route, permission, decision, reason, target, changes.
    pub details: Details,
    /// The client address.
    pub ip_address: String,
    /// The client's `User-Agent`, as sent (JSON-escaped, so it cannot break
    /// the line).
    pub user_agent: String,
    /// HIGH, MEDIUM or LOW.
    pub severity: Severity,
    /// The request's id.
    pub request_id: String,
    /// SHA-256 commitment to the record's personal fields (see
    /// [`subject`]): the chain hash covers this digest and not the fields
    /// themselves, so erasure can pseudonymise them without breaking the
    /// chain. Absent in records written before (they verify as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_digest: Option<String>,
    /// The digest's random salt, hex; outside the chain hash. Removed by
    /// erasure, which leaves the digest unguessable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_salt: Option<String>,
    /// Set by erasure instead of the salt: an HMAC (audit key) over the
    /// record's hash and its pseudonymised fields, so with the key an
    /// altered pseudonym is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_seal: Option<String>,
    /// `hash` of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form with `hash` empty, hex.
    pub hash: String,
}

/// The chain's start.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Record {
    /// The bytes the hash covers: the record serialized with `hash` empty.
    /// Serialization is canonical: fields in declaration order, `details`
    /// maps with sorted keys (serde_json without `preserve_order`). A
    /// record with a `subject_digest` is hashed with its personal fields
    /// blanked and without its salt and seal (see [`subject`]); one without
    /// (written before) as it is.
    pub fn canonical(&self) -> Vec<u8> {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        if unhashed.subject_digest.is_some() {
            subject::blank(&mut unhashed);
        }
        serde_json::to_vec(&unhashed).expect("a record serializes")
    }

    /// SHA-256 of [`Record::canonical`], hex.
    pub fn compute_hash(&self) -> String {
        crate::model::hex(&crate::model::sha256(&self.canonical()))
    }

    /// Appends the record's line (no newline) to `out` with its hash and
    /// returns the hash, serializing once (by hand, exactly as serde does:
    /// see `line`): the line ends with `"hash":""`, so the hash goes in
    /// before the final `"}`. A record whose details hold no personal
    /// field (every proxied request's) is hashed from the line itself with
    /// the personal values and the salt cut out (which is
    /// [`Record::canonical`]'s form); an admin record's details hold
    /// personal fields too, so it is hashed from [`Record::canonical`]
    /// (a second serialization, off the request path). `self.hash` must be
    /// empty.
    pub fn append_to(&self, out: &mut Vec<u8>) -> String {
        debug_assert!(self.hash.is_empty());
        let start = out.len();
        let spans = line::write(self, out);
        debug_assert!(out.ends_with(br#""hash":""}"#));
        let digest = match &self.subject_digest {
            None => crate::model::sha256(&out[start..]),
            // Admin records: personal fields inside `details` too.
            Some(_) if subject::details_personal(&self.details) => {
                crate::model::sha256(&self.canonical())
            }
            Some(_) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut at = start;
                for cut in spans.personal() {
                    ctx.update(&out[at..cut.start]);
                    at = cut.end;
                }
                ctx.update(&out[at..]);
                ctx.finish().as_ref().try_into().expect("32 bytes")
            }
        };
        let hash = crate::model::hex(&digest);
        out.truncate(out.len() - 2);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}");
        hash
    }
}

/// A record before the writer gives it its place in the chain.
#[derive(Debug, Clone)]
pub struct Event {
    /// Event type.
    pub event_type: EventType,
    /// User or key id.
    pub user_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The tenant's data region; left empty, the audit handle looks it up
    /// (see [`Audit::resolve_regions_with`]).
    pub region: String,
    /// Specifics.
    pub details: Details,
    /// Client address.
    pub ip_address: String,
    /// Client user agent.
    pub user_agent: String,
    /// Request id.
    pub request_id: String,
}

impl Event {
    /// Cuts every string of the event to at most `max` bytes (see
    /// [`bound`]): whatever a caller sends, a record stays small.
    pub fn bound(&mut self, max: usize) {
        for s in [
            &mut self.user_id,
            &mut self.tenant_id,
            &mut self.region,
            &mut self.ip_address,
            &mut self.user_agent,
            &mut self.request_id,
        ] {
            bound(s, max);
        }
        match &mut self.details {
            Details::Json(v) => bound_json(v, max),
            Details::Request(r) => {
                bound(&mut r.path, max);
                if r.route.as_ref().is_some_and(|x| x.len() > max) {
                    let mut route = r.route.as_deref().unwrap_or_default().to_string();
                    bound(&mut route, max);
                    r.route = Some(route.into());
                }
            }
        }
    }

    /// An event of `event_type` with `details`; the rest filled by setters.
    pub fn new(event_type: EventType, details: Value) -> Self {
        Self {
            event_type,
            user_id: String::new(),
            tenant_id: String::new(),
            region: String::new(),
            details: Details::Json(details),
            ip_address: String::new(),
            user_agent: String::new(),
            request_id: String::new(),
        }
    }
}

/// A record's `details`: any JSON object, or a proxied request's decision
/// built without a JSON tree (the request path's share of the audit cost;
/// written exactly as the same object would be, so hashes and `verify`
/// cannot tell them apart).
#[derive(Debug, Clone, PartialEq)]
pub enum Details {
    /// Any JSON (admin actions, policy, retention).
    Json(Value),
    /// A proxied request's decision.
    Request(Box<RequestDetails>),
}

impl Default for Details {
    fn default() -> Self {
        Details::Json(Value::Null)
    }
}

/// What a proxied request's record says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDetails {
    /// How the caller authenticated (`api_key`, …), if it did.
    pub auth_method: Option<&'static str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The HTTP method.
    pub method: http::Method,
    /// The path (never the query string).
    pub path: String,
    /// The permission the route requires, once matched.
    pub permission: Option<&'static str>,
    /// Why it was denied (an error code).
    pub reason: Option<&'static str>,
    /// The policy route that matched.
    pub route: Option<Arc<str>>,
    /// The denial's status.
    pub status: Option<u16>,
}

impl Serialize for Details {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Details::Json(v) => v.serialize(s),
            Details::Request(r) => {
                // Keys in sorted order, as a `Value` object writes them;
                // `reason` and `status` only on denials.
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("auth_method", &r.auth_method)?;
                m.serialize_entry("decision", r.decision)?;
                m.serialize_entry("method", r.method.as_str())?;
                m.serialize_entry("path", &r.path)?;
                m.serialize_entry("permission", &r.permission)?;
                if let Some(reason) = r.reason {
                    m.serialize_entry("reason", reason)?;
                }
                m.serialize_entry("route", &r.route.as_deref())?;
                if let Some(status) = r.status {
                    m.serialize_entry("status", &status)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Details::Json)
    }
}

/// Cuts `s` to at most `max` bytes on a UTF-8 boundary, ending with a
/// marker saying how many bytes were cut (`…[+N bytes]`), so a reader sees
/// that the field was longer. `max` below the marker's length cuts to the
/// marker alone.
pub fn bound(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    // The marker counts the bytes cut, which depend on where the cut falls:
    // size it for the largest count (the whole string).
    let room = max.saturating_sub(marker(s.len()).len());
    let mut cut = room.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mark = marker(s.len() - cut);
    s.truncate(cut);
    s.push_str(&mark);
}

fn marker(cut: usize) -> String {
    format!("…[+{cut} bytes]")
}

/// [`bound`] for every string in a JSON value (object keys are kept: admin
/// bodies are parsed into known fields before they are recorded).
fn bound_json(v: &mut Value, max: usize) {
    match v {
        Value::String(s) => bound(s, max),
        Value::Array(a) => a.iter_mut().for_each(|x| bound_json(x, max)),
        Value::Object(o) => o.values_mut().for_each(|x| bound_json(x, max)),
        _ => {}
    }
}

/// Runs file work (index reads and rewrites, retention) on the blocking
/// pool, off the async workers.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// A request's `User-Agent` as the audit record keeps it (any bytes; the
/// JSON encoding keeps it inside its field).
pub fn user_agent(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// What the caller waits for before going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Handed to the kernel (survives the process being killed).
    Written,
    /// On disk (survives the machine losing power).
    Synced,
}

impl crate::response::ErrorResponse for AuditError {
    fn problem(&self) -> crate::response::Problem<'_> {
        crate::response::AUDIT_UNAVAILABLE
    }
}

/// The audit log could not take the record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The files cannot be written.
    #[error("audit log unwritable: {0}")]
    Unwritable(String),
    /// The writer has stopped (shutdown).
    #[error("audit log closed")]
    Closed,
    /// The query index or the files could not be read.
    #[error("audit log unreadable: {0}")]
    Unreadable(String),
}

pub(crate) struct Message {
    /// `None`: no record, a barrier (answered once everything queued
    /// before it is written, and synced if asked).
    pub(crate) event: Option<Event>,
    pub(crate) durability: Durability,
    /// `None`: nobody waits (an aggregated count).
    pub(crate) ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    /// A proxied request's record: under `fail_open`, given up with its
    /// batch when the files cannot be written (and counted).
    pub(crate) proxied: bool,
}

/// Sends records to the writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
    /// The files, shared with the writer thread: a proxied request's
    /// record is appended right on the request path (a `write(2)` into the
    /// page cache, no thread hand-off), everything else by the thread.
    writer: Arc<std::sync::Mutex<writer::State>>,
    /// A sync of the proxied records is queued (at most one at a time).
    sync_queued: Arc<std::sync::atomic::AtomicBool>,
    dir: Arc<std::path::PathBuf>,
    index: Option<Arc<index::Index>>,
    fail_open: bool,
    stats: Arc<Stats>,
    /// Longest stored string (`audit.max_field_bytes`).
    max_field_bytes: usize,
    /// Anonymous denials counted in the current window.
    anonymous: Arc<anonymous::Window>,
    /// Below this much free space in `dir`, `/metrics` says so and the log
    /// warns (`audit.min_free_bytes`; 0: never).
    min_free_bytes: u64,
    /// Where a tenant's region comes from, for records whose producer did
    /// not know it (set once at start-up, after the store is open).
    regions: Arc<std::sync::OnceLock<Arc<dyn TenantRegions>>>,
    /// Held while log files are rewritten or removed (erasure, retention):
    /// one at a time, so neither brings back or loses the other's work.
    maintenance: Arc<tokio::sync::Mutex<()>>,
}

/// Looks up a tenant's data region for its audit records (the server
/// answers from the authenticator's tenant cache).
pub trait TenantRegions: Send + Sync + std::fmt::Debug {
    /// The tenant's `settings.data_region`; `None` if it does not exist or
    /// cannot be read now.
    fn region_of<'a>(
        &'a self,
        tenant_id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Option<String>>;
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records written.
    pub written: AtomicU64,
    /// Write failures (batches).
    pub failures: AtomicU64,
    /// Requests let through unrecorded because of `fail_open`.
    pub failed_open: AtomicU64,
    /// Batches the query index missed.
    pub index_failures: AtomicU64,
    /// Bytes appended to the log files.
    pub bytes_written: AtomicU64,
    /// Anonymous denials counted instead of recorded one by one.
    pub anonymous_aggregated: AtomicU64,
    /// Set while the files cannot be written.
    pub unwritable: std::sync::atomic::AtomicBool,
    /// Set once a shipper copies this log to PostgreSQL ([`ship::start`]):
    /// its counters join `/metrics`, and the admin query reads the other
    /// replicas' streams through its pool. Kept here, beside the counters
    /// every clone of [`Audit`] shares, so attaching needs no new wiring.
    shipping: std::sync::OnceLock<Arc<ship::Link>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("event_type", &self.event.as_ref().map(|e| e.event_type))
            .finish()
    }
}

impl Audit {
    /// From now on, records that name a tenant but not its region get the
    /// region `regions` gives (once; later calls are ignored).
    pub fn resolve_regions_with(&self, regions: Arc<dyn TenantRegions>) {
        let _ = self.regions.set(regions);
    }

    /// Fills in the region of the event's tenant if its producer left it
    /// empty.
    async fn fill_region(&self, event: &mut Event) {
        if event.region.is_empty()
            && !event.tenant_id.is_empty()
            && let Some(regions) = self.regions.get()
            && let Some(region) = regions.region_of(&event.tenant_id).await
        {
            event.region = region;
        }
    }

    /// Records `event` and waits until it is `durability`; returns the seq
    /// of the last record written with it.
    /// Waits while the channel is full.
    pub async fn record(
        &self,
        mut event: Event,
        durability: Durability,
    ) -> Result<u64, AuditError> {
        self.fill_region(&mut event).await;
        event.bound(self.max_field_bytes);
        self.queue(Some(event), durability).await
    }

    /// Queues `event` (`None`: a barrier) for the writer thread and waits
    /// for its answer.
    async fn queue(&self, event: Option<Event>, durability: Durability) -> Result<u64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Message {
                event,
                durability,
                ack: Some(ack),
                proxied: false,
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// For a proxied request, before it is forwarded (or before a denial
    /// is answered): appends its record to the file right here, so a
    /// response never goes out without its record (a `write(2)` of one
    /// line into the page cache: a few microseconds, and no thread
    /// hand-off, whose two wake-ups cost more than the write). Records are
    /// synced at least once a second by the writer thread. While the log
    /// cannot be written, the request is refused (fail closed) unless
    /// `fail_open`, which lets it through unrecorded and counts it.
    pub async fn record_request(&self, mut event: Event) -> Result<(), AuditError> {
        self.fill_region(&mut event).await;
        event.bound(self.max_field_bytes);
        let mut batch = vec![Message {
            event: Some(event),
            durability: Durability::Written,
            ack: None,
            proxied: true,
        }];
        let (result, sync_due) = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_inline(&mut batch);
        if sync_due && !self.sync_queued.swap(true, Ordering::AcqRel) {
            // The writer thread syncs (off the request path); a full queue
            // means it is busy writing and will sync soon anyway.
            let barrier = Message {
                event: None,
                durability: Durability::Synced,
                ack: None,
                proxied: false,
            };
            if self.tx.try_send(barrier).is_err() {
                self.sync_queued.store(false, Ordering::Release);
            }
        }
        match result {
            Ok(_) => Ok(()),
            // Counted by the writer as let through unrecorded.
            Err(_) if self.fail_open => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A denial of a caller nobody authenticated (no or a bad credential,
    /// the failed-authentication block): the first per source, reason and
    /// status in the window is recorded (as [`Audit::record_request`]), the
    /// rest only counted and written as one record when the window closes.
    pub async fn record_anonymous_denial(
        &self,
        event: Event,
        reason: &'static str,
        status: u16,
    ) -> Result<(), AuditError> {
        if !self.anonymous.first(&event.ip_address, reason, status) {
            self.stats
                .anonymous_aggregated
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.record_request(event).await
    }

    /// Writes the counts of the closing anonymous-denial window (one
    /// record per source and reason with more than one denial) and opens
    /// the next window.
    pub(crate) async fn close_anonymous_window(&self) -> Result<(), AuditError> {
        for mut event in self.anonymous.close() {
            event.bound(self.max_field_bytes);
            self.tx
                .send(Message {
                    event: Some(event),
                    durability: Durability::Written,
                    ack: None,
                    proxied: false,
                })
                .await
                .map_err(|_| AuditError::Closed)?;
        }
        Ok(())
    }

    /// Waits until everything queued before this call is written and
    /// synced (shutdown, and tests).
    /// The open anonymous-denial window's counts are written first.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.close_anonymous_window().await?;
        self.queue(None, Durability::Synced).await.map(|_| ())
    }

    /// Brings the query index (and the head) up to the last record written:
    /// proxied records leave theirs to the writer thread, so a query calls
    /// this first and sees every record written before it.
    pub fn catch_up(&self) {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .catch_up();
    }

    /// Where the chain ends now, at a record boundary (for a backup: see
    /// [`writer::Cut`]). Takes the writer's lock for a few field reads;
    /// nothing is synced or written.
    pub fn cut(&self) -> Result<writer::Cut, AuditError> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).cut()
    }

    /// The directory of the files (queries read records back from it).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The query index, when the writer keeps one.
    pub fn index(&self) -> Option<&Arc<index::Index>> {
        self.index.as_ref()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Attaches a shipper (once; a second call is ignored): see
    /// [`Stats`]'s `shipping`.
    pub fn attach_shipping(&self, link: Arc<ship::Link>) {
        let _ = self.stats.shipping.set(link);
    }

    /// The shipper attached to this log, if any: its pool, stream and
    /// counters.
    pub fn shipping(&self) -> Option<&Arc<ship::Link>> {
        self.stats.shipping.get()
    }

    /// Free bytes (for unprivileged writers) on the file system of the
    /// log's directory, if it can be read.
    pub fn disk_free_bytes(&self) -> Option<u64> {
        disk_free_bytes(&self.dir)
    }

    /// Whether the log's file system has less free space than
    /// `audit.min_free_bytes`.
    pub fn disk_low(&self) -> bool {
        self.min_free_bytes > 0
            && self
                .disk_free_bytes()
                .is_some_and(|free| free < self.min_free_bytes)
    }

    /// The audit log's metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &*self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter(
            enc,
            "costguard_audit_records",
            "Audit records written.",
            load(&s.written),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_write_failures",
            "Audit batches that could not be written.",
            load(&s.failures),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_failed_open",
            "Requests let through unrecorded (audit.fail_open).",
            load(&s.failed_open),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_index_failures",
            "Batches the query index could not take (a restart re-indexes them).",
            load(&s.index_failures),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_bytes_written",
            "Bytes appended to the audit log files.",
            load(&s.bytes_written),
        )?;
        metrics::counter(
            enc,
            "costguard_audit_anonymous_aggregated",
            "Anonymous denials counted into a per-window record instead of one record each.",
            load(&s.anonymous_aggregated),
        )?;
        metrics::gauge(
            enc,
            "costguard_audit_unwritable",
            "1 while the audit files cannot be written (requests get 503 unless audit.fail_open).",
            u64::from(s.unwritable.load(Ordering::Relaxed)),
        )?;
        metrics::gauge(
            enc,
            "costguard_audit_queue_depth",
            "Audit records waiting for the writer thread.",
            (self.tx.max_capacity() - self.tx.capacity()) as u64,
        )?;
        if let Ok(files) = files::files(&self.dir) {
            let bytes: u64 = files
                .iter()
                .filter_map(|(_, path)| std::fs::metadata(path).ok())
                .map(|m| m.len())
                .sum();
            metrics::gauge(
                enc,
                "costguard_audit_disk_used_bytes",
                "Bytes of the audit log files on disk.",
                bytes,
            )?;
        }
        if let Some(free) = self.disk_free_bytes() {
            metrics::gauge(
                enc,
                "costguard_audit_disk_free_bytes",
                "Free space on the audit directory's file system.",
                free,
            )?;
            metrics::gauge(
                enc,
                "costguard_audit_disk_low",
                "1 while that free space is below audit.min_free_bytes.",
                u64::from(self.min_free_bytes > 0 && free < self.min_free_bytes),
            )?;
        }
        if let Some(link) = self.shipping() {
            link.stats.encode(enc)?;
        }
        Ok(())
    }
}

/// Free bytes for unprivileged writers on `dir`'s file system.
pub fn disk_free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(details: Details) -> Record {
        Record {
            seq: 7,
            event_id: "e".into(),
            timestamp: "2026-11-27T00:00:00Z".into(),
            event_type: "request.allowed".into(),
            user_id: "u\"\n".into(),
            tenant_id: "t".into(),
            region: Some("us-east-1".into()),
            details,
            ip_address: "::1".into(),
            user_agent: "x\r\n\"}{".into(),
            severity: Severity::Low,
            request_id: "r".into(),
            subject_digest: None,
            subject_salt: None,
            subject_seal: None,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    /// Long strings are cut on a UTF-8 boundary, end with the marker, and
    /// never pass the bound; short ones are untouched.
    #[test]
    fn bound_cuts_on_a_char_boundary_with_a_marker() {
        for max in [0, 5, 17, 18, 19, 64, 512] {
            let mut s = "é".repeat(300);
            bound(&mut s, max);
            assert!(s.len() <= max.max(marker(600).len()), "{max}: {}", s.len());
            assert!(s.ends_with(" bytes]"), "{s}");
            let kept = s.len() - marker(600 - s.find('…').unwrap()).len();
            assert_eq!(kept % 2, 0, "whole characters only");
        }
        let mut short = "short".to_string();
        bound(&mut short, 5);
        assert_eq!(short, "short");
        let mut event = Event::new(EventType::AdminAction, json!({"a": ["y".repeat(100)]}));
        event.user_agent = "u".repeat(100);
        event.bound(40);
        assert!(event.user_agent.len() <= 40);
        match &event.details {
            Details::Json(v) => assert!(v["a"][0].as_str().unwrap().len() <= 40),
            Details::Request(_) => unreachable!(),
        }
    }

    /// A typed request record is written byte for byte as the same JSON
    /// object would be, so its hash is what `verify` recomputes from the
    /// line it reads back.
    #[test]
    fn typed_request_details_write_the_canonical_json_and_hash() {
        let allow = RequestDetails {
            auth_method: Some("api_key"),
            decision: "allow",
            method: http::Method::GET,
            path: "/v1/\"x\"".into(),
            permission: Some("view_costs"),
            reason: None,
            route: Some("routes.toml:9".into()),
            status: None,
        };
        let deny = RequestDetails {
            auth_method: None,
            decision: "deny",
            permission: None,
            reason: Some("invalid_key"),
            route: None,
            status: Some(401),
            ..allow.clone()
        };
        let as_json = [
            json!({"auth_method": "api_key", "decision": "allow", "method": "GET",
                   "path": "/v1/\"x\"", "permission": "view_costs", "route": "routes.toml:9"}),
            json!({"auth_method": null, "decision": "deny", "method": "GET", "path": "/v1/\"x\"",
                   "permission": null, "reason": "invalid_key", "route": null, "status": 401}),
        ];
        for (typed, json) in [allow, deny].into_iter().zip(as_json) {
            let typed = record(Details::Request(Box::new(typed)));
            let plain = record(Details::Json(json));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let hash = typed.append_to(&mut a);
            plain.append_to(&mut b);
            assert_eq!(
                String::from_utf8(a.clone()).unwrap(),
                String::from_utf8(b).unwrap()
            );
            let back: Record = serde_json::from_slice(&a).unwrap();
            assert_eq!(back.hash, hash);
            assert_eq!(back.compute_hash(), hash);
        }
    }
}
