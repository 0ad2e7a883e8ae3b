//! The query index: fixed-width entries in append-only files beside the log.
//!
//! The files are the record; the index only says where each record is and
//! what queries filter on, so `GET /admin/v1/audit` reads a page of records
//! back by position and never scans the log. Measured under load, keeping
//! this index in the store's B-trees (three tree inserts per record) cost
//! the proxy more CPU than the request itself; appending 64 bytes to two
//! files per batch costs next to nothing.
//!
//! Layout of `DIR/index/`:
//! - `all.idx`: one [`ENTRY`]-byte entry per record, in seq order (so also
//!   in time order: the writer never lets time go backwards);
//! - `t-<hash>.idx`: the same entries for one tenant;
//! - `key`: 32 random bytes keying the hashes of tenant, user and event
//!   type. Entries hold keyed 64-bit hashes, not strings, so every entry
//!   has the same size and nobody can craft an id that collides with
//!   another; callers still compare the strings of the records they read
//!   back, so a filter is exact;
//! - `purged`: per tenant, what retention removed (entries up to a seq and
//!   before a time): they leave `t-*.idx` at once, and `all.idx` when the
//!   log file they point into is removed.
//!
//! The index is a cache of the files: whatever it lacks is added back from
//! them at startup ([`Index::catch_up`]); a torn entry from a crash is cut
//! off; after any write failure the index stops taking entries until the
//! next start (so it never has a gap the catch-up would not fill).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::files;
use super::{Record, Severity};

/// Bytes per entry.
pub const ENTRY: usize = 64;
/// Entries read per `pread` while scanning.
const CHUNK: usize = 1024;
/// Most entries one query page looks at before returning a cursor (a
/// filter that matches rarely still answers promptly).
pub const SCAN_LIMIT: usize = 200_000;
/// Tenant files kept open for appending.
const OPEN_TENANT_FILES: usize = 256;

/// Where one record is, and what queries filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The record's seq.
    pub seq: u64,
    /// Its time, Unix microseconds.
    pub micros: i64,
    /// Byte offset of its line in its file.
    pub offset: u64,
    /// `audit-NNNNNN.jsonl`'s number.
    pub file_no: u32,
    /// Length of its line, without the newline.
    pub len: u32,
    /// Keyed hash of the tenant id (0: no tenant).
    pub tenant: u64,
    /// Keyed hash of the user or key id (0: none).
    pub user: u64,
    /// Keyed hash of the event type.
    pub event: u64,
    /// Severity.
    pub severity: Severity,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.micros.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.file_no.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.tenant.to_le_bytes());
        out.extend_from_slice(&self.user.to_le_bytes());
        out.extend_from_slice(&self.event.to_le_bytes());
        out.push(match self.severity {
            Severity::High => 0,
            Severity::Medium => 1,
            Severity::Low => 2,
        });
        out.extend_from_slice(&[0; 3]);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// `None` for a torn or corrupt entry.
    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; ENTRY] = b.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..60]) != u32_at(60) {
            return None;
        }
        Some(Self {
            seq: u64_at(0),
            micros: u64_at(8) as i64,
            offset: u64_at(16),
            file_no: u32_at(24),
            len: u32_at(28),
            tenant: u64_at(32),
            user: u64_at(40),
            event: u64_at(48),
            severity: match b[56] {
                0 => Severity::High,
                1 => Severity::Medium,
                _ => Severity::Low,
            },
        })
    }
}

/// Where a record moved to within its file (erasure rewrote the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Its line's new offset.
    pub offset: u64,
    /// Its line's new length.
    pub len: u32,
    /// Its new user hash (erased: the pseudonym's), if it changed.
    pub user: Option<u64>,
}

/// A marker in the index directory: set while erasure rewrites log files
/// and their entries; an index found with it at start is rebuilt from
/// the files (a crash left entries pointing at old offsets).
const STALE: &str = "stale";

/// Turns ids into the index's keyed hashes.
#[derive(Clone)]
pub struct Hasher {
    key: [u8; 32],
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// The first 8 bytes of SHA-256(key ‖ s); 0 for "".
    pub fn hash(&self, s: &str) -> u64 {
        if s.is_empty() {
            return 0;
        }
        let d = crate::model::sha256_parts(&[&self.key, s.as_bytes()]);
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes")).max(1)
    }
}

/// What to look for. Hashes from [`Index::hasher`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this tenant's records (served from its own file).
    pub tenant: Option<u64>,
    /// Only this user's (or key's).
    pub user: Option<u64>,
    /// Only this event type.
    pub event: Option<u64>,
    /// From this time (Unix microseconds), inclusive.
    pub start_micros: Option<i64>,
    /// Until this time, inclusive.
    pub end_micros: Option<i64>,
    /// Only records after this seq (a previous page's cursor).
    pub after_seq: Option<u64>,
    /// Most entries to return.
    pub limit: usize,
}

/// One page, oldest first.
#[derive(Debug, Default)]
pub struct Page {
    /// The matching entries.
    pub entries: Vec<Entry>,
    /// The seq to continue after, when there may be more.
    pub next: Option<u64>,
}

/// The index of one log directory.
pub struct Index {
    dir: PathBuf,
    hasher: Hasher,
    state: Mutex<State>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish()
    }
}

struct State {
    all: File,
    tenants: HashMap<u64, File>,
    last_seq: u64,
    /// Per tenant: entries with seq ≤ .1 and time < .0 were purged.
    purged: HashMap<u64, (i64, u64)>,
    /// Set by a failed write: no more entries until the next start.
    broken: bool,
    buf: Vec<u8>,
}

fn index_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("index")
}

fn tenant_file(dir: &Path, tenant: u64) -> PathBuf {
    dir.join(format!("t-{tenant:016x}.idx"))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Number of whole entries in `file`.
fn entries_in(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len() / ENTRY as u64)
}

fn entry_at(file: &File, i: u64) -> io::Result<Option<Entry>> {
    let mut b = [0u8; ENTRY];
    file.read_exact_at(&mut b, i * ENTRY as u64)?;
    Ok(Entry::decode(&b))
}

/// The first position in `[0, n)` whose entry is not `before` (entries
/// are ordered, so this is a binary search; an unreadable entry counts as
/// "not before").
fn lower_bound(file: &File, n: u64, before: impl Fn(&Entry) -> bool) -> io::Result<u64> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry_at(file, mid)?.is_some_and(|e| before(&e)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Cuts `path` back to whole, valid entries with seq ≤ `max_seq`, and
/// returns the last one's seq.
fn repair(path: &Path, max_seq: u64) -> io::Result<u64> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut n = entries_in(&file)?;
    let mut last = 0;
    while n > 0 {
        match entry_at(&file, n - 1)? {
            Some(e) if e.seq <= max_seq => {
                last = e.seq;
                break;
            }
            _ => n -= 1,
        }
    }
    if file.metadata()?.len() != n * ENTRY as u64 {
        tracing::warn!(file = %path.display(), entries = n, "Cutting the audit index back to its last whole entry.");
        file.set_len(n * ENTRY as u64)?;
    }
    Ok(last)
}

/// Copies the entries of `path` from position `from` on into a new file
/// and puts it in `path`'s place. The copy runs without `state`'s lock;
/// only the entries appended meanwhile are copied under it.
fn rewrite_from(index: &Index, path: &Path, from: u64, tenant: Option<u64>) -> io::Result<()> {
    let tmp = path.with_extension("idx.tmp");
    let src = File::open(path)?;
    let mut out = File::create(&tmp)?;
    let copy = |out: &mut File, from: u64, to: u64| -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK * ENTRY];
        let mut at = from;
        while at < to {
            let n = (to - at).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n * ENTRY], at * ENTRY as u64)?;
            out.write_all(&buf[..n * ENTRY])?;
            at += n as u64;
        }
        Ok(())
    };
    let first = entries_in(&src)?;
    copy(&mut out, from, first)?;
    let mut state = index.state.lock().expect("index lock");
    copy(&mut out, first, entries_in(&src)?)?;
    out.sync_data()?;
    fs::rename(&tmp, path)?;
    match tenant {
        Some(t) => {
            state.tenants.remove(&t);
        }
        None => state.all = open_append(path)?,
    }
    Ok(())
}

impl Index {
    /// Opens (creating if needed) the index of the log in `log_dir`, cuts
    /// off torn entries, and adds what the log has beyond it.
    pub fn open(log_dir: &Path) -> io::Result<Self> {
        let dir = index_dir(log_dir);
        fs::create_dir_all(&dir)?;
        let key_path = dir.join("key");
        let key = match fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) | Err(_) => {
                // A new key makes every hash new: start the index over.
                for (_, path) in Self::files(&dir)? {
                    fs::remove_file(path)?;
                }
                let _ = fs::remove_file(dir.join("all.idx"));
                let _ = fs::remove_file(dir.join("purged"));
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(io::Error::other)?;
                let tmp = dir.join("key.tmp");
                fs::write(&tmp, &k)?;
                File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, &key_path)?;
                k
            }
        };
        if dir.join(STALE).exists() {
            // An erasure stopped between rewriting a log file and its
            // entries: start the entries over (the key and retention's
            // purges are kept; the catch-up below re-adds every record).
            tracing::warn!(dir = %dir.display(), "Rebuilding the audit index: an erasure was interrupted.");
            for (_, path) in Self::files(&dir)? {
                fs::remove_file(path)?;
            }
            let _ = fs::remove_file(dir.join("all.idx"));
            fs::remove_file(dir.join(STALE))?;
            File::open(&dir)?.sync_all()?;
        }
        let all_path = dir.join("all.idx");
        let all = open_append(&all_path)?;
        let last_seq = repair(&all_path, u64::MAX)?;
        for (_, path) in Self::files(&dir)? {
            repair(&path, last_seq)?;
        }
        let purged = match fs::read(dir.join("purged")) {
            Ok(text) => serde_json::from_slice::<Vec<(u64, (i64, u64))>>(&text)
                .map(|v| v.into_iter().collect())
                .unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        let index = Self {
            hasher: Hasher {
                key: key.try_into().expect("32 bytes"),
            },
            dir,
            state: Mutex::new(State {
                all,
                tenants: HashMap::new(),
                last_seq,
                purged,
                broken: false,
                buf: Vec::new(),
            }),
        };
        let added = index.catch_up(log_dir)?;
        if added > 0 {
            tracing::info!(records = added, "Audit index caught up from the files.");
        }
        Ok(index)
    }

    fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(h) = name
                .strip_prefix("t-")
                .and_then(|n| n.strip_suffix(".idx"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                out.push((h, path));
            }
        }
        Ok(out)
    }

    /// The hasher for [`Query`] fields and new entries.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// The seq of the last indexed record.
    pub fn last_seq(&self) -> u64 {
        self.state.lock().expect("index lock").last_seq
    }

    /// Appends entries (in seq order, after [`Index::last_seq`]): each
    /// tenant's file first, then `all.idx`, so `all.idx` never names an
    /// entry a tenant file lacks.
    pub fn append(&self, entries: &[Entry]) -> io::Result<()> {
        let mut state = self.state.lock().expect("index lock");
        let state = &mut *state;
        if state.broken {
            return Ok(());
        }
        let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > state.last_seq).collect();
        let Some(last) = fresh.last() else {
            return Ok(());
        };
        let last = last.seq;
        let result = (|| {
            let mut by_tenant: Vec<(u64, Vec<u8>)> = Vec::new();
            for e in fresh.iter().filter(|e| e.tenant != 0) {
                let i = match by_tenant.iter().position(|(t, _)| *t == e.tenant) {
                    Some(i) => i,
                    None => {
                        by_tenant.push((e.tenant, Vec::new()));
                        by_tenant.len() - 1
                    }
                };
                e.encode(&mut by_tenant[i].1);
            }
            for (tenant, bytes) in &by_tenant {
                if !state.tenants.contains_key(tenant) {
                    if state.tenants.len() >= OPEN_TENANT_FILES {
                        state.tenants.clear();
                    }
                    let file = open_append(&tenant_file(&self.dir, *tenant))?;
                    state.tenants.insert(*tenant, file);
                }
                state.tenants[tenant].write_all_at_end(bytes)?;
            }
            state.buf.clear();
            for e in &fresh {
                e.encode(&mut state.buf);
            }
            state.all.write_all_at_end(&state.buf)
        })();
        match result {
            Ok(()) => {
                state.last_seq = last;
                Ok(())
            }
            Err(e) => {
                state.broken = true;
                Err(e)
            }
        }
    }

    /// One page of entries matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> io::Result<Page> {
        let path = match q.tenant {
            Some(t) => tenant_file(&self.dir, t),
            None => self.dir.join("all.idx"),
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Page::default()),
            Err(e) => return Err(e),
        };
        let purged = self.state.lock().expect("index lock").purged.clone();
        let n = entries_in(&file)?;
        let start = q.start_micros.unwrap_or(i64::MIN);
        let end = q.end_micros.unwrap_or(i64::MAX);
        let mut at = lower_bound(&file, n, |e| e.micros < start)?;
        if let Some(after) = q.after_seq {
            at = at.max(lower_bound(&file, n, |e| e.seq <= after)?);
        }
        let mut page = Page::default();
        let mut scanned = 0usize;
        let mut buf = vec![0u8; CHUNK * ENTRY];
        while at < n {
            let count = (n - at).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..count * ENTRY], at * ENTRY as u64)?;
            for raw in buf[..count * ENTRY].chunks_exact(ENTRY) {
                at += 1;
                scanned += 1;
                let Some(e) = Entry::decode(raw) else {
                    continue;
                };
                if e.micros > end {
                    return Ok(page);
                }
                let matches = q.tenant.is_none_or(|t| t == e.tenant)
                    && q.user.is_none_or(|u| u == e.user)
                    && q.event.is_none_or(|v| v == e.event)
                    && purged
                        .get(&e.tenant)
                        .is_none_or(|(before, upto)| e.micros >= *before || e.seq > *upto);
                if matches {
                    page.entries.push(e);
                }
                if page.entries.len() >= q.limit || scanned >= SCAN_LIMIT {
                    if at < n {
                        page.next = Some(e.seq);
                    }
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// Retention for one tenant: its entries before `before_micros` leave
    /// the index. Returns how many left.
    pub fn purge_tenant(&self, tenant: u64, before_micros: i64) -> io::Result<u64> {
        let path = tenant_file(&self.dir, tenant);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let cut = lower_bound(&file, entries_in(&file)?, |e| e.micros < before_micros)?;
        if cut == 0 {
            return Ok(0);
        }
        {
            let mut state = self.state.lock().expect("index lock");
            let was = state.purged.get(&tenant).map_or(i64::MIN, |p| p.0);
            let upto = state.last_seq;
            state.purged.insert(tenant, (was.max(before_micros), upto));
            let list: Vec<(u64, (i64, u64))> = state.purged.iter().map(|(t, p)| (*t, *p)).collect();
            let tmp = self.dir.join("purged.tmp");
            fs::write(&tmp, serde_json::to_vec(&list).expect("serializes"))?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, self.dir.join("purged"))?;
        }
        rewrite_from(self, &path, cut, Some(tenant))?;
        Ok(cut)
    }

    /// After log files before `first_kept` were removed: their entries
    /// leave `all.idx`.
    pub fn drop_files_before(&self, first_kept: u64) -> io::Result<()> {
        let path = self.dir.join("all.idx");
        let file = File::open(&path)?;
        let cut = lower_bound(&file, entries_in(&file)?, |e| {
            u64::from(e.file_no) < first_kept
        })?;
        if cut > 0 {
            rewrite_from(self, &path, cut, None)?;
        }
        Ok(())
    }

    /// Marks the index stale (see [`STALE`]) until [`Index::clear_stale`].
    pub fn mark_stale(&self) -> io::Result<()> {
        let path = self.dir.join(STALE);
        if !path.exists() {
            File::create(&path)?.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Every entry is right again.
    pub fn clear_stale(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(STALE)) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// After log file `file_no` (records `first..=last`) was rewritten:
    /// its entries in `all.idx` and in the files of `tenants` (the tenants
    /// with records in it) take their records' new places, in place.
    pub fn relocate(
        &self,
        file_no: u64,
        first: u64,
        last: u64,
        moves: &HashMap<u64, Move>,
        tenants: &[u64],
    ) -> io::Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
        let _state = self.state.lock().expect("index lock");
        let paths = std::iter::once(self.dir.join("all.idx"))
            .chain(tenants.iter().map(|t| tenant_file(&self.dir, *t)));
        let mut buf = Vec::with_capacity(ENTRY);
        for path in paths {
            // Not the append handle: a positioned write on a file opened
            // for appending would append.
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let n = entries_in(&file)?;
            let mut at = lower_bound(&file, n, |e| e.seq < first)?;
            while at < n {
                let Some(mut e) = entry_at(&file, at)? else {
                    at += 1;
                    continue;
                };
                if e.seq > last {
                    break;
                }
                if u64::from(e.file_no) == file_no
                    && let Some(m) = moves.get(&e.seq)
                {
                    e.offset = m.offset;
                    e.len = m.len;
                    if let Some(user) = m.user {
                        e.user = user;
                    }
                    buf.clear();
                    e.encode(&mut buf);
                    file.write_all_at(&buf, at * ENTRY as u64)?;
                }
                at += 1;
            }
            file.sync_data()?;
        }
        Ok(())
    }

    /// Indexes the records of the log in `log_dir` beyond
    /// [`Index::last_seq`] (a crash between a write and its entries, a
    /// failed index write, or a lost index). Returns how many.
    pub fn catch_up(&self, log_dir: &Path) -> io::Result<u64> {
        let last = self.last_seq();
        let files = files::files(log_dir)?;
        let mut added = 0u64;
        let mut batch = Vec::new();
        for (i, (file_no, path)) in files.iter().enumerate() {
            // Skip a file whose successor starts at or before the next seq
            // to index: everything in it is indexed already.
            if let Some((_, next)) = files.get(i + 1)
                && first_seq(next)?.is_some_and(|s| s <= last + 1)
            {
                continue;
            }
            read_file(path, *file_no, |record, mut entry| {
                if record.seq > last {
                    entry.tenant = self.hasher.hash(&record.tenant_id);
                    entry.user = self.hasher.hash(&record.user_id);
                    entry.event = self.hasher.hash(&record.event_type);
                    batch.push(entry);
                }
            })?;
            added += batch.len() as u64;
            for chunk in batch.chunks(4096) {
                self.append(chunk)?;
            }
            batch.clear();
        }
        Ok(added)
    }
}

trait WriteAtEnd {
    fn write_all_at_end(&self, bytes: &[u8]) -> io::Result<()>;
}

impl WriteAtEnd for File {
    /// `write_all` on a shared handle opened for appending.
    fn write_all_at_end(&self, bytes: &[u8]) -> io::Result<()> {
        let mut f: &File = self;
        f.write_all(bytes)
    }
}

/// A record's time as Unix microseconds.
pub fn record_micros(record: &Record) -> i64 {
    time::OffsetDateTime::parse(
        &record.timestamp,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
    .unwrap_or(0)
}

fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut head = Vec::new();
    File::open(path)?.take(64 * 1024).read_to_end(&mut head)?;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<Record>(line).ok().map(|r| r.seq))
}

/// Reads every complete record of one log file with its entry (hashes
/// left 0 for the caller to fill).
pub fn read_file(path: &Path, file_no: u64, mut each: impl FnMut(Record, Entry)) -> io::Result<()> {
    let text = fs::read(path)?;
    let mut offset = 0usize;
    for line in text.split(|b| *b == b'\n') {
        let start = offset;
        offset += line.len() + 1;
        if line.is_empty() || offset > text.len() {
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(line) {
            let entry = Entry {
                seq: r.seq,
                micros: record_micros(&r),
                offset: start as u64,
                file_no: file_no as u32,
                len: line.len() as u32,
                tenant: 0,
                user: 0,
                event: 0,
                severity: r.severity,
            };
            each(r, entry);
        }
    }
    Ok(())
}

/// Reads one record back from the log (`None` if its file is gone).
pub fn read_record(log_dir: &Path, e: &Entry) -> Option<Record> {
    let file = File::open(log_dir.join(files::file_name(u64::from(e.file_no)))).ok()?;
    let mut line = vec![0u8; e.len as usize];
    file.read_exact_at(&mut line, e.offset).ok()?;
    let record: Record = serde_json::from_slice(&line).ok()?;
    (record.seq == e.seq).then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, micros: i64, tenant: u64, user: u64) -> Entry {
        Entry {
            seq,
            micros,
            offset: seq * 100,
            file_no: 1 + (seq / 10) as u32,
            len: 99,
            tenant,
            user,
            event: 7,
            severity: if seq.is_multiple_of(5) {
                Severity::High
            } else {
                Severity::Low
            },
        }
    }

    fn q(tenant: Option<u64>, user: Option<u64>, limit: usize) -> Query {
        Query {
            tenant,
            user,
            limit,
            ..Query::default()
        }
    }

    #[test]
    fn entries_round_trip_and_corruption_is_seen() {
        let e = entry(42, -5, u64::MAX, 3);
        let mut b = Vec::new();
        e.encode(&mut b);
        assert_eq!(b.len(), ENTRY);
        assert_eq!(Entry::decode(&b), Some(e));
        b[9] ^= 1;
        assert_eq!(Entry::decode(&b), None);
    }

    #[test]
    fn queries_filter_page_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=100)
            .map(|s| entry(s, 1000 + s as i64 * 10, 1 + s % 2, 100 + s % 3))
            .collect();
        index.append(&entries[..60]).unwrap();
        index.append(&entries[50..]).unwrap(); // overlap ignored
        assert_eq!(index.last_seq(), 100);
        assert_eq!(index.query(&q(None, None, 1000)).unwrap().entries, entries);
        let t1 = index.query(&q(Some(1), None, 1000)).unwrap().entries;
        assert_eq!(t1.len(), 50);
        assert!(t1.iter().all(|e| e.tenant == 1));
        let filtered = index.query(&q(Some(2), Some(101), 1000)).unwrap().entries;
        let expected: Vec<u64> = (1..=100).filter(|s| s % 2 == 1 && s % 3 == 1).collect();
        assert_eq!(filtered.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
        // Pages with a cursor.
        let mut seen = Vec::new();
        let mut query = q(Some(1), None, 7);
        loop {
            let page = index.query(&query).unwrap();
            seen.extend(page.entries.iter().map(|e| e.seq));
            match page.next {
                Some(n) => query.after_seq = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (2..=100).step_by(2).collect::<Vec<_>>());
        // Time range, inclusive.
        let range = index
            .query(&Query {
                start_micros: Some(1100),
                end_micros: Some(1200),
                limit: 1000,
                ..Query::default()
            })
            .unwrap()
            .entries;
        assert_eq!(range.first().unwrap().seq, 10);
        assert_eq!(range.last().unwrap().seq, 20);
        drop(index);

        // A crash mid-append: half an entry at the end of all.idx, and a
        // tenant file ahead of all.idx.
        let idx = dir.path().join("index");
        let mut all = OpenOptions::new()
            .append(true)
            .open(idx.join("all.idx"))
            .unwrap();
        all.write_all(&[1u8; 30]).unwrap();
        let mut ahead = Vec::new();
        entry(101, 3000, 1, 100).encode(&mut ahead);
        OpenOptions::new()
            .append(true)
            .open(tenant_file(&idx, 1))
            .unwrap()
            .write_all(&ahead)
            .unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.last_seq(), 100);
        assert_eq!(
            index.query(&q(Some(1), None, 1000)).unwrap().entries.len(),
            50
        );
        index.append(&[entry(101, 3000, 1, 100)]).unwrap();
        assert_eq!(
            index.query(&q(Some(1), None, 1000)).unwrap().entries.len(),
            51
        );
    }

    #[test]
    fn retention_removes_a_tenants_old_entries_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=40).map(|s| entry(s, s as i64, 1 + s % 2, 0)).collect();
        index.append(&entries).unwrap();
        assert_eq!(index.purge_tenant(1, 21).unwrap(), 10);
        assert_eq!(index.purge_tenant(1, 21).unwrap(), 0);
        let t1: Vec<u64> = index
            .query(&q(Some(1), None, 100))
            .unwrap()
            .entries
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(t1, (22..=40).step_by(2).collect::<Vec<_>>());
        let all = index.query(&q(None, None, 100)).unwrap().entries;
        assert_eq!(all.len(), 30, "tenant 1's old entries are hidden");
        // Appending after a purge goes to the new file.
        index.append(&[entry(41, 41, 1, 0)]).unwrap();
        assert_eq!(
            index.query(&q(Some(1), None, 100)).unwrap().entries.len(),
            11
        );
        // Files 1..=2 removed: all.idx drops their entries for good.
        index.drop_files_before(3).unwrap();
        let all = index.query(&q(None, None, 100)).unwrap().entries;
        assert_eq!(all.first().unwrap().seq, 21, "20 is tenant 1's, purged");
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.query(&q(None, None, 100)).unwrap().entries.len(), 21);
        assert_eq!(index.last_seq(), 41);
    }

    #[test]
    fn keyed_hashes_differ_per_key_and_empty_is_zero() {
        let a = Hasher { key: [1; 32] };
        let b = Hasher { key: [2; 32] };
        assert_eq!(a.hash(""), 0);
        assert_ne!(a.hash("org-1"), b.hash("org-1"));
        assert_eq!(a.hash("org-1"), a.hash("org-1"));
        assert_ne!(a.hash("org-1"), a.hash("org-2"));
    }
}
