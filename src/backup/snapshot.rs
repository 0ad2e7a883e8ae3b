//! The server's side of a backup: [`Source::take`] makes one snapshot,
//! [`Snapshot::stream`] sends it.
//!
//! Consistency: the store is copied raw under its backup gate (writes
//! wait, reads go on) into an unnamed temporary file beside the store;
//! right after the gate is released, the audit log is cut at a record
//! boundary (a few field reads under the writer's lock) and the files up
//! to the cut are opened; then the raw copy is encoded as the backup's JSON
//! lines into a second temporary file, with writes going again. So the
//! audit part ends at or after the store snapshot: an admin change in the
//! store copy has its record in the audit copy unless its record was
//! still being written at that instant. Once opened, the files are read
//! while the server goes on serving: closed log files never change, the
//! current one is read only up to the cut, and the open handles keep a
//! file readable even if retention removes it meanwhile.
//!
//! Bounded: one backup at a time (a second gets 429), the response is
//! streamed from the files in 64 KiB chunks through a channel of four, so
//! memory does not grow with the store, and a client that goes away stops
//! the copy (the temporary file disappears with its handle).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame as BodyFrame};
use tokio::sync::mpsc;

use super::{
    AUDIT_DIR, AuditSummary, BackupError, FORMAT, FileEntry, Frame, Hasher, Manifest, STORE_FILE,
    StoreSummary,
};
use crate::audit::writer::{Cut, HEAD, Head};
use crate::audit::{Audit, files, retention};
use crate::store::sled::SledStore;

/// Chunk size of the stream.
const CHUNK: usize = 64 << 10;
/// Chunks buffered between the reading thread and the connection.
const CHANNEL: usize = 4;

/// What a server can back up: its embedded store and its audit log.
#[derive(Debug)]
pub struct Source {
    /// The store (`None`: the shared store, which is backed up with
    /// `pg_dump` instead).
    store: Option<Arc<SledStore>>,
    /// Where the temporary export file is made: the store's directory
    /// (the data volume, writable even on a read-only root file system).
    scratch: PathBuf,
    audit: Option<Audit>,
    /// One backup at a time.
    busy: Arc<tokio::sync::Semaphore>,
}

/// A taken snapshot, not yet sent.
#[derive(Debug)]
pub struct Snapshot {
    created_at: String,
    /// The store export (its name already removed: it lives as long as
    /// this handle), its size and summary.
    store: (File, u64, StoreSummary),
    audit: Option<AuditPart>,
    /// Held until the stream ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Debug)]
struct AuditPart {
    /// (path in the backup, open file, bytes to send).
    files: Vec<(String, File, u64)>,
    /// The anchor's bytes, if retention left one.
    anchor: Option<Vec<u8>>,
    head: Option<Head>,
    first_seq: u64,
}

impl Source {
    /// `store`: the embedded store, if that is the backend; `scratch`: the
    /// store's directory.
    pub fn new(store: Option<Arc<SledStore>>, scratch: PathBuf, audit: Option<Audit>) -> Self {
        Self {
            store,
            scratch,
            audit,
            busy: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Reserves the one backup slot, or says why no backup can be taken
    /// (another is running; the store is the shared one). Cheap: the
    /// caller records the backup between this and [`Reserved::take`].
    pub fn reserve(&self) -> Result<Reserved<'_>, BackupError> {
        let Some(store) = self.store.clone() else {
            return Err(BackupError::Unsupported(
                "this server uses the shared PostgreSQL store: back it up with pg_dump (see the README, Backup and restore); Redis holds only rate-limit windows and needs no backup".into(),
            ));
        };
        let permit = self
            .busy
            .clone()
            .try_acquire_owned()
            .map_err(|_| BackupError::Busy)?;
        Ok(Reserved {
            source: self,
            store,
            permit,
        })
    }
}

/// The backup slot, held: [`Reserved::take`] makes the snapshot.
#[derive(Debug)]
pub struct Reserved<'a> {
    source: &'a Source,
    store: Arc<SledStore>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Reserved<'_> {
    /// Takes the snapshot (off the async workers).
    pub async fn take(self) -> Result<Snapshot, BackupError> {
        let Reserved {
            source,
            store,
            permit,
        } = self;
        let (scratch, audit) = (source.scratch.clone(), source.audit.clone());
        let (created_at, store, audit) = tokio::task::spawn_blocking(move || {
            let created_at = crate::model::now();
            let (raw, exported) = snapshot_store(&store, &scratch)?;
            // Cut the log right after the store copy, then encode.
            let audit = match &audit {
                Some(audit) => Some(cut_audit(audit)?),
                None => None,
            };
            let store = encode_store(raw, exported, &scratch)?;
            Ok::<_, BackupError>((created_at, store, audit))
        })
        .await
        .map_err(|e| BackupError::io("backup task")(std::io::Error::other(e)))??;
        Ok(Snapshot {
            created_at: created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            store,
            audit,
            _permit: permit,
        })
    }
}

/// A new file in `scratch` for the snapshot, readable and writable, whose
/// name is removed at once: its data lives as long as the handle, and a
/// crash leaves nothing behind.
fn scratch_file(scratch: &std::path::Path, tag: &str) -> Result<File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = super::sibling(&scratch.join("backup"), tag);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(BackupError::io(format!("create {}", path.display())))?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

fn rewind(f: &mut File) -> Result<(), BackupError> {
    f.seek(SeekFrom::Start(0))
        .map(drop)
        .map_err(BackupError::io("store snapshot"))
}

/// Snapshots the store under its gate into a raw scratch file (the
/// writers' pause).
fn snapshot_store(
    store: &SledStore,
    scratch: &std::path::Path,
) -> Result<(File, crate::store::sled::Exported), BackupError> {
    let mut raw = std::io::BufWriter::with_capacity(1 << 20, scratch_file(scratch, "snapshot")?);
    let exported = store.snapshot(&mut raw)?;
    let mut raw = raw
        .into_inner()
        .map_err(|e| BackupError::io("store snapshot")(e.into_error()))?;
    rewind(&mut raw)?;
    Ok((raw, exported))
}

/// With writes going again, turns the raw snapshot into the backup's JSON
/// lines in a second scratch file.
fn encode_store(
    raw: File,
    exported: crate::store::sled::Exported,
    scratch: &std::path::Path,
) -> Result<(File, u64, StoreSummary), BackupError> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, scratch_file(scratch, "export")?);
    SledStore::raw_to_lines(
        &mut std::io::BufReader::with_capacity(1 << 20, raw),
        &mut out,
    )?;
    let mut file = out
        .into_inner()
        .map_err(|e| BackupError::io("store export")(e.into_error()))?;
    let bytes = file
        .seek(SeekFrom::End(0))
        .map_err(BackupError::io("store export"))?;
    rewind(&mut file)?;
    tracing::info!(
        paused_ms = exported.writes_paused.as_secs_f64() * 1000.0,
        bytes,
        "Store snapshot taken for a backup; writes waited meanwhile."
    );
    Ok((
        file,
        bytes,
        StoreSummary {
            backend: "sled".into(),
            records: exported.records,
            writes_paused_micros: exported.writes_paused.as_micros() as u64,
        },
    ))
}

/// Cuts the audit log and opens its files up to the cut. Retention may
/// remove old files meanwhile: the anchor is read first and a file gone
/// before it was opened makes the whole listing start over (a few times).
fn cut_audit(audit: &Audit) -> Result<AuditPart, BackupError> {
    // No erasure rewrites a file between the cut and the opens below (the
    // opened files are read as they were, whatever is renamed over them
    // later): the lengths cut are those of the files opened.
    let _no_rewrite = audit.maintenance_blocking();
    let Cut {
        file_no,
        file_bytes,
        head,
    } = audit.cut()?;
    let dir = audit.dir();
    'attempt: for _ in 0..5 {
        let anchor_path = dir.join(retention::ANCHOR);
        let anchor = match std::fs::read(&anchor_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(BackupError::io(format!("read {}", anchor_path.display()))(
                    e,
                ));
            }
        };
        let (first_file, first_seq) = match &anchor {
            Some(bytes) => {
                let a: Head = serde_json::from_slice(bytes)
                    .map_err(|e| BackupError::Invalid(format!("{}: {e}", anchor_path.display())))?;
                (files::file_number(&a.file).unwrap_or(1), a.seq + 1)
            }
            None => (1, 1),
        };
        let listed =
            files::files(dir).map_err(BackupError::io(format!("list {}", dir.display())))?;
        let mut out = Vec::new();
        for (no, path) in listed {
            if no < first_file || no > file_no {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'attempt;
                }
                Err(e) => return Err(BackupError::io(format!("open {}", path.display()))(e)),
            };
            let bytes = if no == file_no {
                file_bytes
            } else {
                file.metadata()
                    .map_err(BackupError::io(format!("stat {}", path.display())))?
                    .len()
            };
            let name = files::file_name(no);
            out.push((format!("{AUDIT_DIR}/{name}"), file, bytes));
        }
        return Ok(AuditPart {
            files: out,
            anchor,
            head: Some(head),
            first_seq,
        });
    }
    Err(BackupError::Invalid(
        "the audit files kept changing (retention running); try again".into(),
    ))
}

impl Snapshot {
    /// The response body: the frames of [`super::Frame`], read from the
    /// files on a blocking thread as the client takes them.
    pub fn stream(self) -> BackupBody {
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::task::spawn_blocking(move || {
            let result = self.send(&tx);
            if let Err(e) = result {
                tracing::error!(error = %e, "Backup stream failed.");
                let _ = tx.blocking_send(Ok(frame_line(&Frame::Error(e.to_string()))));
            }
        });
        BackupBody { rx }
    }

    fn send(self, tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) -> Result<(), BackupError> {
        let Snapshot {
            created_at,
            store: (store_file, store_bytes, store),
            audit,
            _permit,
        } = self;
        let mut entries = Vec::new();
        entries.push(send_file(tx, STORE_FILE, store_file, store_bytes)?);
        let audit = match audit {
            None => None,
            Some(part) => {
                let mut last_seq = part.first_seq.saturating_sub(1);
                for (path, file, bytes) in part.files {
                    let entry = send_file(tx, &path, file, bytes)?;
                    last_seq += entry.lines;
                    entries.push(entry);
                }
                if let Some(head) = &part.head {
                    let block = head.block();
                    entries.push(send_bytes(tx, &format!("{AUDIT_DIR}/{HEAD}"), &block)?);
                    if head.seq != last_seq {
                        return Err(BackupError::Invalid(format!(
                            "the audit files hold records up to {last_seq} but the cut was at {}",
                            head.seq
                        )));
                    }
                }
                if let Some(anchor) = &part.anchor {
                    entries.push(send_bytes(
                        tx,
                        &format!("{AUDIT_DIR}/{}", retention::ANCHOR),
                        anchor,
                    )?);
                }
                Some(AuditSummary {
                    head: part.head,
                    first_seq: part.first_seq,
                    last_seq,
                    records: (last_seq + 1).saturating_sub(part.first_seq),
                })
            }
        };
        let manifest = Manifest {
            format: FORMAT,
            costguard_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at,
            store,
            audit,
            files: entries,
        };
        put(tx, frame_line(&Frame::Manifest(Box::new(manifest))))
    }
}

fn frame_line(frame: &Frame) -> Bytes {
    let mut line = serde_json::to_vec(frame).expect("a frame serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// Sends one chunk; the client going away ends the copy.
fn put(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, b: Bytes) -> Result<(), BackupError> {
    tx.blocking_send(Ok(b)).map_err(|_| {
        BackupError::io("backup stream")(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the client went away",
        ))
    })
}

/// Sends `bytes` bytes of `file` as the file `path`.
fn send_file(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    path: &str,
    file: File,
    bytes: u64,
) -> Result<FileEntry, BackupError> {
    put(
        tx,
        frame_line(&Frame::File {
            path: path.to_string(),
            bytes,
        }),
    )?;
    let mut hasher = Hasher::new();
    let mut lines = 0u64;
    let mut left = bytes;
    let mut reader = file.take(bytes);
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        let n = reader
            .read(&mut buf)
            .map_err(BackupError::io(format!("read {path}")))?;
        if n == 0 {
            return Err(BackupError::Invalid(format!(
                "{path}: shorter than at the snapshot ({} bytes missing)",
                left
            )));
        }
        buf.truncate(n);
        hasher.update(&buf);
        lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        left -= n as u64;
        put(tx, Bytes::from(buf))?;
    }
    Ok(FileEntry {
        path: path.to_string(),
        bytes,
        sha256: hasher.finish(),
        lines,
    })
}

/// Sends `data` as the file `path`.
fn send_bytes(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    path: &str,
    data: &[u8],
) -> Result<FileEntry, BackupError> {
    put(
        tx,
        frame_line(&Frame::File {
            path: path.to_string(),
            bytes: data.len() as u64,
        }),
    )?;
    let mut hasher = Hasher::new();
    hasher.update(data);
    put(tx, Bytes::copy_from_slice(data))?;
    Ok(FileEntry {
        path: path.to_string(),
        bytes: data.len() as u64,
        sha256: hasher.finish(),
        lines: 0,
    })
}

/// The backup response's body: chunks from the reading thread.
#[derive(Debug)]
pub struct BackupBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for BackupBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(BodyFrame::data)))
    }
}
