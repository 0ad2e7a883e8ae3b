//! The writer: chains, appends, rotates, signs the head.
//!
//! The files' [`State`] sits behind one mutex, so record order is the
//! chain order. A proxied request appends its own record under it
//! ([`State::write_inline`]: no sync, never waits for a retry); the writer
//! thread takes everything else queued (admin actions, aggregated counts,
//! sync requests; up to [`MAX_BATCH`]), gives each record its `seq`,
//! `prev_hash` and `hash`, appends the batch with one `write`, syncs when a
//! record in it asked for it (or a second has passed), then replaces
//! `audit.head`, and only then answers the callers.
//!
//! Files are `audit-000001.jsonl`, `audit-000002.jsonl`, …; a new one
//! starts when the current one would pass `max_file_bytes` or is older
//! than `rotate_interval`. At startup the chain continues from the last
//! complete record; a torn last line (a crash mid-write, never
//! acknowledged) is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::anonymous::Window;
use super::files::{file_name, files};
use super::index::{Entry, Index};
use super::{Audit, AuditError, Durability, GENESIS, Message, Record, Stats};

/// Most records per write.
pub const MAX_BATCH: usize = 4096;
/// The signed head's file name.
pub const HEAD: &str = "audit.head";
/// The head's size on disk: its JSON padded with spaces, always the same
/// length, so an overwrite never leaves a longer old tail behind.
const HEAD_BYTES: usize = 512;

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The directory of the files.
    pub dir: PathBuf,
    /// The HMAC key that signs the head.
    pub key: Vec<u8>,
    /// Start a new file before this size.
    pub max_file_bytes: u64,
    /// Start a new file after this long.
    pub rotate_interval: Duration,
    /// Queued records before callers wait.
    pub capacity: usize,
    /// Under load (more than one record already waiting when the writer
    /// wakes), how long the batch may grow before it is written; a lone
    /// record is written at once. Every proxied response waits for its
    /// record's write, so this is what load adds to their latency, in
    /// exchange for one write and one wake-up per batch.
    pub batch_interval: Duration,
    /// Also print every record on stdout (for the cluster's log collector).
    pub stdout: bool,
    /// Let proxied requests through when the log cannot be written.
    pub fail_open: bool,
}

#[cfg(test)]
impl WriterConfig {
    /// A log in `dir` signed with `key` for unit tests: fail-closed, no
    /// stdout copy, one file until 1 MiB, batches of at most 1 ms.
    pub(crate) fn for_test(dir: &std::path::Path, key: &[u8]) -> Self {
        Self {
            dir: dir.to_path_buf(),
            key: key.to_vec(),
            max_file_bytes: 1 << 20,
            rotate_interval: Duration::from_secs(3600),
            capacity: 64,
            batch_interval: Duration::from_millis(1),
            stdout: false,
            fail_open: false,
        }
    }
}

/// What keeps the log small whoever calls: bounds beside [`WriterConfig`]
/// (`[audit]`'s `max_field_bytes`, `anonymous_window`,
/// `anonymous_max_sources`, `min_free_bytes`).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Longest stored string, in bytes.
    pub max_field_bytes: usize,
    /// Anonymous denials are aggregated per source and reason over this.
    pub anonymous_window: Duration,
    /// Sources tracked per window before they share one entry.
    pub anonymous_max_sources: usize,
    /// Warn (and say so on `/metrics`) below this much free space; 0: never.
    pub min_free_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_field_bytes: 512,
            anonymous_window: Duration::from_secs(10),
            anonymous_max_sources: 10_000,
            min_free_bytes: 1 << 30,
        }
    }
}

/// The signed head: the last record written, so a cut tail or a removed
/// last file is detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// The file holding the last record.
    pub file: String,
    /// The last record's seq.
    pub seq: u64,
    /// The last record's hash.
    pub hash: String,
    /// HMAC-SHA256 over the fields above, hex.
    pub mac: String,
}

impl Head {
    fn message(file: &str, seq: u64, hash: &str) -> String {
        format!("costguard-audit-head\n{file}\n{seq}\n{hash}")
    }

    /// A head signed with `key`.
    pub fn signed(key: &[u8], file: String, seq: u64, hash: String) -> Self {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let tag = ring::hmac::sign(&k, Self::message(&file, seq, &hash).as_bytes());
        Self {
            mac: crate::model::hex(tag.as_ref()),
            file,
            seq,
            hash,
        }
    }

    /// The head as the file `audit.head` holds it: its JSON padded with
    /// spaces to a fixed size (see `HEAD_BYTES`).
    pub fn block(&self) -> Vec<u8> {
        let mut block = serde_json::to_vec(self).expect("a head serializes");
        block.resize(HEAD_BYTES.max(block.len()), b' ');
        block
    }

    /// Whether the signature is `key`'s (constant time).
    pub fn is_signed_by(&self, key: &[u8]) -> bool {
        let Some(tag) = crate::model::unhex(&self.mac) else {
            return false;
        };
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::verify(
            &k,
            Self::message(&self.file, self.seq, &self.hash).as_bytes(),
            &tag,
        )
        .is_ok()
    }
}

/// The running writer; dropping every [`Audit`] stops it after it has
/// written everything queued.
pub struct Writer {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Waits until the writer has written everything and stopped (call
    /// after the last [`Audit`] clone is gone).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The files and the chain's end, behind the writer's mutex.
pub struct State {
    config: WriterConfig,
    file: File,
    file_no: u64,
    file_bytes: u64,
    opened: Instant,
    last_sync: Instant,
    seq: u64,
    hash: String,
    /// The last batch's time: a batch never gets an earlier one (the index
    /// relies on time order, and so does anyone reading the log).
    last_micros: i64,
    stats: Arc<Stats>,
    out: Vec<u8>,
    /// Index entries of the batch being written; offsets relative to
    /// `out` until the append places them.
    entries: Vec<Entry>,
    index: Option<Arc<Index>>,
    /// Recent ids' index hashes (tenants, keys and event types repeat).
    hashes: std::collections::HashMap<String, u64>,
    head: File,
    /// Set while a request's own record is written: its index entry is
    /// left to the writer thread's next turn (or the next query), keeping
    /// the request path to one `write(2)`.
    defer: bool,
    /// Index entries written but not yet in the index (in seq order).
    pending: Vec<Entry>,
    /// A batch that could not be written (fail closed) and waits in `out`
    /// for the writer thread's retry, with its number of records: its
    /// records are in the chain, so nothing else is appended before it.
    held: Option<usize>,
    /// The seq the signed head names. The head is only replaced after the
    /// records it names are synced, so it may lag the files, never lead
    /// (not even after a power loss).
    head_seq: u64,
    /// Each record's subject salt.
    salts: super::subject::Salts,
}

/// A point in the log at a record boundary, taken under the writer's lock
/// ([`crate::audit::Audit::cut`]): the files before `file_no` whole, and
/// `file_no` up to `file_bytes`, hold exactly the records up to the head's.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The file being written.
    pub file_no: u64,
    /// Its length at the cut (what was appended before, in the page cache
    /// if not yet synced: a copy reads it back the same).
    pub file_bytes: u64,
    /// A head naming the last record before the cut (record 0 when
    /// nothing was recorded yet), signed with the log's key as the writer
    /// signs its own. It is the head the writer would write after its next
    /// sync; `verify` checks a copy with it exactly as it checks the live
    /// log.
    pub head: Head,
}

/// Ids whose index hash the writer remembers.
const HASH_CACHE: usize = 4096;

/// Opens (or continues) the log in `config.dir` and starts the writer.
///
/// With an `index`, every written batch is added to it on the writer
/// thread (a few `write`s per batch).
pub fn start(config: WriterConfig, index: Option<Arc<Index>>) -> io::Result<(Audit, Writer)> {
    start_bounded(config, Bounds::default(), index)
}

/// [`start`] with `bounds`.
pub fn start_bounded(
    config: WriterConfig,
    bounds: Bounds,
    index: Option<Arc<Index>>,
) -> io::Result<(Audit, Writer)> {
    fs::create_dir_all(&config.dir)?;
    crate::private_files::restrict_tree(&config.dir)?;
    let (file_no, seq, hash, last_micros) = recover(&config.dir)?;
    let path = config.dir.join(file_name(file_no));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let file_bytes = file.metadata()?.len();
    let head = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(config.dir.join(HEAD))?;
    let written = fs::read(config.dir.join(HEAD))?;
    // Records the head signed are gone from the files (cut while stopped):
    // continuing would chain over the gap and hide it from `audit verify`.
    if let Ok(signed) = serde_json::from_slice::<Head>(&written)
        && signed.is_signed_by(&config.key)
        && signed.seq > seq
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the audit log in {} ends at record {seq} but its signed head names record {}: records were removed while costguard was stopped; run `costguard audit verify` on it, then move the directory aside (keep it as evidence) to start a new log",
                config.dir.display(),
                signed.seq
            ),
        ));
    }
    // A new log's head is signed at once (record 0, or the last record of
    // a log whose head was never written), so `audit verify` can tell an
    // empty log from one whose files and head were all removed.
    if written.iter().all(u8::is_ascii_whitespace) {
        use std::os::unix::fs::FileExt;
        let signed = Head::signed(&config.key, file_name(file_no), seq, hash.clone());
        head.write_all_at(&signed.block(), 0)?;
        head.sync_all()?;
    }
    sync_dir(&config.dir)?;
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(config.capacity.max(1));
    let (dir, fail_open) = (config.dir.clone(), config.fail_open);
    let now = Instant::now();
    let state = Arc::new(std::sync::Mutex::new(State {
        config,
        file,
        file_no,
        file_bytes,
        opened: now,
        last_sync: now,
        seq,
        hash,
        last_micros,
        stats: stats.clone(),
        out: Vec::with_capacity(1 << 16),
        entries: Vec::with_capacity(MAX_BATCH),
        index: index.clone(),
        hashes: std::collections::HashMap::new(),
        head,
        defer: false,
        pending: Vec::new(),
        held: None,
        head_seq: seq,
        salts: super::subject::Salts::new()?,
    }));
    let sync_queued = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let audit = Audit {
        tx,
        writer: state.clone(),
        sync_queued: sync_queued.clone(),
        dir: Arc::new(dir),
        index,
        fail_open,
        stats: stats.clone(),
        max_field_bytes: bounds.max_field_bytes,
        anonymous: Arc::new(Window::new(
            bounds.anonymous_window,
            bounds.anonymous_max_sources,
        )),
        min_free_bytes: bounds.min_free_bytes,
        regions: Arc::default(),
        maintenance: Arc::default(),
    };
    watch_windows_and_disk(&audit)?;
    let thread = std::thread::Builder::new()
        .name("costguard-audit".into())
        .spawn(move || run(&state, &sync_queued, rx))?;
    Ok((
        audit,
        Writer {
            thread: Some(thread),
        },
    ))
}

/// Starts the thread that closes anonymous-denial windows (writing their
/// counts) and watches the directory's free space. It holds no sender: it
/// stops once every [`Audit`] is gone, and never keeps the writer alive.
fn watch_windows_and_disk(audit: &Audit) -> io::Result<()> {
    /// The free-space check's period, and the longest between warnings.
    const DISK_CHECK: Duration = Duration::from_secs(10);
    const WARN_EVERY: Duration = Duration::from_secs(60);
    /// Records written since the last turn are synced (and the head
    /// replaced) within this, even when no more traffic comes.
    const SYNC_EVERY: Duration = Duration::from_secs(1);
    let weak = audit.tx.downgrade();
    let (stats, sync_queued) = (audit.stats.clone(), audit.sync_queued.clone());
    let window = audit.anonymous.clone();
    let (dir, min_free, max_field) = (
        audit.dir.clone(),
        audit.min_free_bytes,
        audit.max_field_bytes,
    );
    let tick = window.length().min(SYNC_EVERY);
    std::thread::Builder::new()
        .name("costguard-audit-watch".into())
        .spawn(move || {
            let mut opened = Instant::now();
            let mut warned: Option<Instant> = None;
            let mut checked = Instant::now();
            let mut written = stats.written.load(Ordering::Relaxed);
            loop {
                std::thread::sleep(tick);
                let Some(tx) = weak.upgrade() else { return };
                let now_written = stats.written.load(Ordering::Relaxed);
                if now_written != written && !sync_queued.swap(true, Ordering::AcqRel) {
                    written = now_written;
                    let barrier = Message {
                        event: None,
                        durability: Durability::Synced,
                        ack: None,
                        proxied: false,
                    };
                    if tx.try_send(barrier).is_err() {
                        sync_queued.store(false, Ordering::Release);
                    }
                }
                if opened.elapsed() >= window.length() {
                    opened = Instant::now();
                    for mut event in window.close() {
                        event.bound(max_field);
                        let m = Message {
                            event: Some(event),
                            durability: Durability::Written,
                            ack: None,
                            proxied: false,
                        };
                        if tx.blocking_send(m).is_err() {
                            return;
                        }
                    }
                }
                drop(tx);
                if checked.elapsed() < DISK_CHECK {
                    continue;
                }
                checked = Instant::now();
                let free = super::disk_free_bytes(&dir);
                if min_free > 0
                    && let Some(free) = free.filter(|f| *f < min_free)
                    && warned.is_none_or(|w| w.elapsed() >= WARN_EVERY)
                {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        dir = %dir.display(),
                        free_bytes = free,
                        min_free_bytes = min_free,
                        "Audit log disk space is low: once it is full, proxied requests are refused (503) unless audit.fail_open."
                    );
                }
            }
        })?;
    Ok(())
}

/// Where the chain ends: (file number to append to, last seq, last hash,
/// last time).
fn recover(dir: &Path) -> io::Result<(u64, u64, String, i64)> {
    let files = files(dir)?;
    let Some(&(last_no, _)) = files.last() else {
        return Ok((1, 0, GENESIS.to_string(), i64::MIN));
    };
    for (_, path) in files.iter().rev() {
        let mut text = Vec::new();
        File::open(path)?.read_to_end(&mut text)?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            // A torn line from a crash mid-write: never acknowledged.
            tracing::warn!(file = %path.display(), bytes = text.len() - complete, "Cutting off an incomplete last audit record (crash during a write).");
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(complete as u64)?;
            f.sync_all()?;
        }
        let Some(line) = text[..complete]
            .split(|b| *b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
        else {
            continue;
        };
        let last: Record = serde_json::from_slice(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: last record unreadable: {e}", path.display()),
            )
        })?;
        let micros = super::index::record_micros(&last);
        return Ok((last_no, last.seq, last.hash, micros));
    }
    Ok((last_no, 0, GENESIS.to_string(), i64::MIN))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The writer thread: everything but proxied records, batch by batch. It
/// never waits for the disk under the lock that requests append under:
/// fsync and the retry of a failed batch happen outside it.
fn run(state: &std::sync::Mutex<State>, sync_queued: &AtomicBool, mut rx: mpsc::Receiver<Message>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let batch_interval = lock().config.batch_interval;
    let mut batch: Vec<Message> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        let drain = |batch: &mut Vec<Message>, rx: &mut mpsc::Receiver<Message>| {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch, &mut rx);
        // Under load, let the batch grow a moment: one write for many.
        if batch.len() > 1 && !batch_interval.is_zero() {
            std::thread::sleep(batch_interval);
            drain(&mut batch, &mut rx);
        }
        // A sync request is in this batch: the next one may be queued.
        sync_queued.store(false, Ordering::Release);
        // Callers that asked for a sync (admin actions, flushes) are
        // answered after it; the others once their records are written.
        let asked = batch.iter().any(|m| m.durability == Durability::Synced);
        let synced: Vec<_> = batch
            .iter_mut()
            .filter(|m| m.durability == Durability::Synced)
            .filter_map(|m| m.ack.take())
            .collect();
        let (mut result, wants_sync, held) = {
            let mut s = lock();
            let wants_sync = asked || s.last_sync.elapsed() >= Duration::from_secs(1);
            (
                s.write_batch(&mut batch, false),
                wants_sync,
                s.held.is_some(),
            )
        };
        if wants_sync && result.is_ok() {
            result = sync_outside_the_lock(state);
        }
        for ack in synced {
            let _ = ack.send(result.clone());
        }
        // A batch that could not be written is retried before the next
        // one (its callers were told it failed; its records stay due).
        if held {
            let _ = retry_held(state);
        }
    }
    let _ = sync_outside_the_lock(state);
    let s = lock();
    tracing::info!(
        records = s.seq,
        "Audit writer stopped; everything queued was written."
    );
}

/// Retries the held batch every 200 ms until it is written, sleeping
/// outside the lock (requests meanwhile are refused at once, or let
/// through and counted under `fail_open`).
fn retry_held(state: &std::sync::Mutex<State>) -> Result<u64, AuditError> {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(records) = s.held else {
            return Ok(s.seq);
        };
        if s.append().is_ok() {
            s.held = None;
            s.written(records);
            s.stats.unwritable.store(false, Ordering::Relaxed);
            tracing::info!(
                records,
                "Audit log writable again; the held batch is written."
            );
            return Ok(s.seq);
        }
    }
}

/// Syncs what is written and then replaces the signed head with the last
/// record synced: the data file's fsync runs on a second handle outside
/// the lock, so requests appending meanwhile never wait for the disk, and
/// the head never names a record that a power loss could take back.
fn sync_outside_the_lock(state: &std::sync::Mutex<State>) -> Result<u64, AuditError> {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let unwritable = |e: io::Error| AuditError::Unwritable(e.to_string());
    let (file, head, file_no, seq, hash) = {
        let mut s = lock();
        s.catch_up();
        (
            s.file.try_clone(),
            s.head.try_clone(),
            s.file_no,
            s.seq,
            s.hash.clone(),
        )
    };
    file.and_then(|f| f.sync_data()).map_err(unwritable)?;
    {
        let mut s = lock();
        s.last_sync = Instant::now();
        if seq > s.head_seq {
            s.write_head(file_no, seq, hash).map_err(unwritable)?;
            s.head_seq = seq;
        }
    }
    head.and_then(|h| h.sync_data()).map_err(unwritable)?;
    Ok(seq)
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("file_no", &self.file_no)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Appends a proxied request's record (`batch` holds that one message)
    /// on the caller's thread: never syncs, never holds a failed write for
    /// a retry. Returns the write's result and whether a sync is due (a
    /// second since the last one).
    pub(crate) fn write_inline(
        &mut self,
        batch: &mut Vec<Message>,
    ) -> (Result<u64, AuditError>, bool) {
        self.defer = true;
        let result = self.write_batch(batch, true);
        self.defer = false;
        (result, self.last_sync.elapsed() >= Duration::from_secs(1))
    }

    /// Where the chain ends right now, for a backup (see [`Cut`]). Fails
    /// while a batch waits to be retried: its records are in the chain but
    /// not in the file, so no cut would match a record boundary.
    pub(crate) fn cut(&self) -> Result<Cut, AuditError> {
        if self.held.is_some() {
            return Err(AuditError::Unwritable(
                "a batch waits to be written; try the backup again".into(),
            ));
        }
        let head = Head::signed(
            &self.config.key,
            file_name(self.file_no),
            self.seq,
            self.hash.clone(),
        );
        Ok(Cut {
            file_no: self.file_no,
            file_bytes: self.file_bytes,
            head,
        })
    }

    /// The audit HMAC key (erasure keys its pseudonyms and seals with it).
    pub(crate) fn key(&self) -> &[u8] {
        &self.config.key
    }

    /// The number of the file being written.
    pub(crate) fn file_no(&self) -> u64 {
        self.file_no
    }

    /// Whether a failed batch waits to be written (its records are in the
    /// chain, not yet in the file).
    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Continues on the file now at the current file's path (erasure put a
    /// rewritten copy there): appends go to it, from its end.
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        let path = self.config.dir.join(file_name(self.file_no));
        let file = OpenOptions::new().append(true).open(&path)?;
        self.file_bytes = file.metadata()?.len();
        self.file = file;
        Ok(())
    }

    /// Brings the index up to the last record written (the writer thread
    /// at each sync; a query before it reads the index).
    pub(crate) fn catch_up(&mut self) {
        self.index_batch();
    }

    /// Chains and appends the batch's records (never syncs: the writer
    /// thread does, outside the lock) and answers the callers still
    /// holding their acks. `inline`: a proxied record on the request path,
    /// given up at once when it cannot be written (its caller is refused,
    /// or counted under `fail_open`); the writer thread's batches are held
    /// for a retry instead (fail closed). Returns what the callers are told.
    fn write_batch(&mut self, batch: &mut Vec<Message>, inline: bool) -> Result<u64, AuditError> {
        if self.held.is_some() {
            // A held batch goes first; until it is written, nothing else is.
            let err = AuditError::Unwritable("the log cannot be written; retrying".into());
            if self.config.fail_open {
                let proxied = batch.iter().filter(|m| m.proxied).count();
                self.stats
                    .failed_open
                    .fetch_add(proxied as u64, Ordering::Relaxed);
            }
            for m in batch.drain(..) {
                if let Some(ack) = m.ack {
                    let _ = ack.send(Err(err.clone()));
                }
            }
            return Err(err);
        }
        self.entries.clear();
        let (seq0, hash0) = (self.seq, self.hash.clone());
        self.out.clear();
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        let micros = now.max(self.last_micros);
        self.last_micros = micros;
        let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        for m in batch.iter_mut() {
            // `None`: a flush barrier: no record, answered with the batch.
            let Some(e) = m.event.take() else { continue };
            self.seq += 1;
            let mut record = Record {
                seq: self.seq,
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: timestamp.clone(),
                event_type: e.event_type.as_str().to_string(),
                user_id: e.user_id,
                tenant_id: e.tenant_id,
                region: Some(e.region),
                details: e.details,
                ip_address: e.ip_address,
                user_agent: e.user_agent,
                severity: e.event_type.severity(),
                request_id: e.request_id,
                subject_digest: None,
                subject_salt: None,
                subject_seal: None,
                prev_hash: std::mem::take(&mut self.hash),
                hash: String::new(),
            };
            // The personal fields' commitment (see `subject`): what lets
            // erasure pseudonymise them later without breaking the chain.
            let salt = self.salts.next_salt();
            record.subject_digest = Some(super::subject::digest(&salt, &record));
            record.subject_salt = Some(crate::model::hex(&salt));
            let start = self.out.len();
            self.hash = record.append_to(&mut self.out);
            if self.index.is_some() {
                let entry = Entry {
                    seq: record.seq,
                    micros,
                    offset: start as u64,
                    file_no: 0,
                    len: (self.out.len() - start) as u32,
                    tenant: self.index_hash(&record.tenant_id),
                    user: self.index_hash(&record.user_id),
                    event: self.index_hash(&record.event_type),
                    severity: record.severity,
                };
                self.entries.push(entry);
            }
            self.out.push(b'\n');
        }
        if self.out.is_empty() {
            // Only sync requests: nothing to append.
            for m in batch.drain(..) {
                if let Some(ack) = m.ack {
                    let _ = ack.send(Ok(self.seq));
                }
            }
            return Ok(self.seq);
        }
        // The records this batch appended (the loop above took the events
        // out of their messages, so they are counted by sequence number).
        let records = (self.seq - seq0) as usize;
        match self.append() {
            Ok(()) => {
                self.written(records);
                self.stats.unwritable.store(false, Ordering::Relaxed);
                for m in batch.drain(..) {
                    if let Some(ack) = m.ack {
                        let _ = ack.send(Ok(self.seq));
                    }
                }
                Ok(self.seq)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.unwritable.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, records = batch.len(), "Audit batch could not be written.");
                let err = AuditError::Unwritable(e.to_string());
                let proxied = batch.iter().filter(|m| m.proxied).count();
                // Everyone waiting is told: admin actions answer 503;
                // proxied responses are refused (503), or go out under
                // `fail_open` (their receipts accept the error).
                for m in batch.iter_mut() {
                    if let Some(ack) = m.ack.take() {
                        let _ = ack.send(Err(err.clone()));
                    }
                }
                if self.config.fail_open || inline {
                    // Fail open, or a request's own record (its caller is
                    // refused now, and the next request tries again): the
                    // batch is given up; under fail_open its proxied
                    // requests are counted as let through unrecorded.
                    if self.config.fail_open {
                        self.stats
                            .failed_open
                            .fetch_add(proxied as u64, Ordering::Relaxed);
                    }
                    self.seq = seq0;
                    self.hash = hash0;
                    self.entries.clear();
                } else {
                    // Fail closed: nothing of the batch is in the file and
                    // its records stay valid (the chain is where they left
                    // it), so the same bytes are written once the files
                    // can be (the writer thread retries, outside the lock);
                    // new requests are refused meanwhile.
                    self.held = Some(records);
                }
                batch.clear();
                Err(err)
            }
        }
    }

    /// After `self.out` (`records` messages) reached the file: counts it,
    /// copies it to stdout if asked, and indexes it.
    fn written(&mut self, records: usize) {
        self.place_pointers();
        self.stats
            .written
            .fetch_add(records as u64, Ordering::Relaxed);
        if self.config.stdout {
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(&self.out);
            let _ = stdout.flush();
        }
        self.index_batch();
    }

    /// Turns the batch's offsets within `out` into file positions (after a
    /// successful append: the batch ends where the file now ends).
    fn place_pointers(&mut self) {
        let base = self.file_bytes - self.out.len() as u64;
        for e in &mut self.entries {
            e.file_no = self.file_no as u32;
            e.offset += base;
        }
    }

    /// Adds the written batch to the query index. A failure is counted and
    /// logged; the index then waits for the next start to catch up from
    /// the files (which hold the records either way).
    fn index_batch(&mut self) {
        let Some(index) = &self.index else { return };
        self.pending.append(&mut self.entries);
        if self.defer || self.pending.is_empty() {
            return;
        }
        match index.append(&self.pending) {
            Ok(()) => {}
            Err(e) => {
                self.stats.index_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "Audit index not written; queries miss new records until a restart re-indexes them from the files.");
            }
        }
        self.pending.clear();
    }

    /// The index hash of `id`, remembered for the next records.
    fn index_hash(&mut self, id: &str) -> u64 {
        if let Some(h) = self.hashes.get(id) {
            return *h;
        }
        let Some(index) = &self.index else { return 0 };
        let h = index.hasher().hash(id);
        if self.hashes.len() >= HASH_CACHE {
            self.hashes.clear();
        }
        self.hashes.insert(id.to_string(), h);
        h
    }

    /// Appends `self.out` (rotating first if due). On a failed append the
    /// file is cut back to where it was.
    fn append(&mut self) -> io::Result<()> {
        let len = self.out.len() as u64;
        if self.file_bytes > 0
            && (self.file_bytes + len > self.config.max_file_bytes
                || self.opened.elapsed() >= self.config.rotate_interval)
        {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(&self.out) {
            let _ = self.file.set_len(self.file_bytes);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(e);
        }
        self.file_bytes += len;
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let next = self.file_no + 1;
        let path = self.config.dir.join(file_name(next));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.config.dir)?;
        self.file = file;
        self.file_no = next;
        self.file_bytes = 0;
        self.opened = Instant::now();
        Ok(())
    }

    /// Overwrites the head in place: one `pwrite` of a fixed-size block
    /// (the JSON padded with spaces), which a killed process cannot tear,
    /// instead of a create-and-rename per batch (hundreds of microseconds).
    /// Replaces the signed head with one naming record `seq` (in file
    /// `file_no`, with `hash`); the caller syncs it.
    fn write_head(&self, file_no: u64, seq: u64, hash: String) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let head = Head::signed(&self.config.key, file_name(file_no), seq, hash);
        self.head.write_all_at(&head.block(), 0)
    }
}

/// Reads the HMAC key in `path` (surrounding whitespace ignored; at least
/// 16 characters).
pub fn read_key(path: &Path) -> io::Result<Vec<u8>> {
    let key = fs::read_to_string(path)?.trim().as_bytes().to_vec();
    if key.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: an audit key needs at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(key)
}

/// Reads the HMAC key from `path`, or creates one there (32 random bytes,
/// hex, mode 0600) if it does not exist.
pub fn load_or_create_key(path: &Path) -> io::Result<Vec<u8>> {
    match read_key(path) {
        Ok(key) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the OS random source works");
            let key = crate::model::hex(&bytes);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options.open(path)?;
            f.write_all(key.as_bytes())?;
            f.sync_all()?;
            Ok(key.into_bytes())
        }
        Err(e) => Err(e),
    }
}
