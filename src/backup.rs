//! Backup and restore of the embedded store and the audit log
//! (`costguard backup DIR`, `costguard restore DIR`).
//!
//! The serving process holds sled's directory lock, so a backup is made by
//! the server itself, as Vault, etcd and Consul do: `GET /admin/v1/backup`
//! (system_admin only, audited as `audit.backup`) takes a snapshot and
//! streams it; the command line writes it into a directory. Nobody over
//! HTTP names a path on the server.
//!
//! # Layout
//! - this file: the backup's format, shared by both sides: the directory
//!   ([`STORE_FILE`], [`AUDIT_DIR`], [`MANIFEST`]), the [`Manifest`], the
//!   stream's [`Frame`]s, which paths a backup may hold ([`allowed_path`]).
//! - `snapshot`: the server's side: one consistent snapshot (the store
//!   under its backup gate, then the audit log cut at a record boundary)
//!   and the response body that streams it.
//! - `client`: the command line's side of `backup`: fetch, check, write
//!   the directory atomically.
//! - `restore`: `restore`, offline: check every file against the
//!   manifest, then build the store and the audit directory beside their
//!   targets and rename them into place.
//!
//! # What a backup holds
//! `store.jsonl`: every record of every tree of the store (tenants, API
//! keys with their SHA-256 hashes, projects, users, custom roles, usage
//! counters, sessions with their cookie hashes and sealed provider tokens,
//! one-time SAML assertion ids). `audit/`: the log files, the signed head
//! naming the last record copied, and the retention anchor if any. Never
//! the admin token, the audit HMAC key or the cookie key (they stay with
//! the operator's secrets), never a key or cookie in clear: the store
//! holds only hashes. It still holds who may do what, so the directory is
//! made 0700 and its files 0600.

pub mod client;
pub mod restore;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::writer::Head;

/// The backup format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The store export's file name (JSON lines, `store::sled::ExportLine`).
pub const STORE_FILE: &str = "store.jsonl";
/// The audit log's directory in a backup.
pub const AUDIT_DIR: &str = "audit";

/// What a backup directory holds, written last (`manifest.json`): restore
/// trusts nothing it does not list with a matching size and SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The server's version that took it.
    pub costguard_version: String,
    /// When the snapshot was taken (RFC 3339 UTC).
    pub created_at: String,
    /// The store part.
    pub store: StoreSummary,
    /// The audit part (`None`: the server's audit log is disabled).
    pub audit: Option<AuditSummary>,
    /// Every file, with its size and SHA-256.
    pub files: Vec<FileEntry>,
}

/// The store part of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSummary {
    /// `sled` (the only backend a backup is taken of).
    pub backend: String,
    /// Records per tree.
    pub records: BTreeMap<String, u64>,
    /// How long the server's store writes waited for the snapshot, in
    /// microseconds.
    pub writes_paused_micros: u64,
}

/// The audit part of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSummary {
    /// The signed head naming the last record in the backup (`None`: no
    /// record yet).
    pub head: Option<Head>,
    /// The first record's seq (after a retention anchor, its seq + 1).
    pub first_seq: u64,
    /// The last record's seq (the head's).
    pub last_seq: u64,
    /// Records in the backup.
    pub records: u64,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its path in the backup directory (`/`-separated; see [`allowed_path`]).
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its lines (records of the store export or of an audit file).
    pub lines: u64,
}

/// One frame of the backup stream: a line of JSON, followed (for a file)
/// by exactly `bytes` bytes of it. The stream ends with the manifest, or
/// with an error when the server failed after the response had started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Frame {
    /// A file's bytes follow.
    File {
        /// Its path in the backup directory.
        path: String,
        /// How many bytes follow.
        bytes: u64,
    },
    /// The last frame: the manifest of everything sent.
    Manifest(Box<Manifest>),
    /// The server could not finish; the backup is unusable.
    Error(String),
}

/// The longest frame line a reader accepts (a manifest lists one entry per
/// audit file; a million files would be far beyond any log).
pub const MAX_FRAME_LINE: usize = 64 << 20;

/// Whether `path` is one a backup may hold: the store export, or an audit
/// log file, head or anchor under [`AUDIT_DIR`]. Nothing else, so neither a
/// server's stream nor an edited manifest can name a path outside the
/// backup or the restored directories.
pub fn allowed_path(path: &str) -> bool {
    if path == STORE_FILE {
        return true;
    }
    let Some(name) = path
        .strip_prefix(AUDIT_DIR)
        .and_then(|p| p.strip_prefix('/'))
    else {
        return false;
    };
    name == crate::audit::writer::HEAD
        || name == crate::audit::retention::ANCHOR
        || (crate::audit::files::file_number(name).is_some()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

/// A backup could not be taken, checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store is not one a backup can be taken of (PostgreSQL).
    #[error("{0}")]
    Unsupported(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The audit log could not be cut (a batch waits for a retry).
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Reading or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The backup is damaged or not one (checksums, sizes, format).
    #[error("invalid backup: {0}")]
    Invalid(String),
    /// A target is not fresh (holds data, or a server uses it).
    #[error("{0}")]
    Refused(String),
    /// Another backup is being taken.
    #[error("another backup is being taken")]
    Busy,
}

impl BackupError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}

/// SHA-256 over a stream of chunks, hex at the end.
pub(crate) struct Hasher(ring::digest::Context);

impl Hasher {
    pub(crate) fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> String {
        crate::model::hex(self.0.finish().as_ref())
    }
}

/// Writes `bytes` to `path` (new, mode 0600) and syncs it.
pub(crate) fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let mut f = new_file(path)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(BackupError::io(format!("write {}", path.display())))
}

/// Creates `path` (it must not exist), mode 0600.
pub(crate) fn new_file(path: &std::path::Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(BackupError::io(format!("create {}", path.display())))
}

/// Creates the directory `path` (it must not exist), mode 0700.
pub(crate) fn new_dir(path: &std::path::Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(BackupError::io(format!("create {}", path.display())))
}

/// Syncs a directory (its entries: created files, renames).
pub(crate) fn sync_dir(path: &std::path::Path) -> Result<(), BackupError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io(format!("sync {}", path.display())))
}

/// Whether `path` is missing or an empty directory: a fresh target.
pub(crate) fn is_fresh(path: &std::path::Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::io(format!("read {}", path.display()))(e)),
    }
}

/// Where a directory is built before it is put in place, so a target is
/// either complete or as it was. A missing target is built beside it
/// (`.NAME.TAG-RANDOM`, same file system) and renamed onto it. An existing
/// (empty) target may be a volume's mount point, which cannot be renamed
/// onto, and whose parent may be read-only: it is built inside it
/// (`.TAG-RANDOM`), then the entries are moved up one by one, the one
/// named `last` (the manifest) last, and the staging directory removed.
#[derive(Debug)]
pub(crate) struct Staging {
    /// The directory to build in.
    pub(crate) dir: PathBuf,
    target: PathBuf,
    inside: bool,
}

impl Staging {
    /// Makes the staging directory for `target` (0700).
    pub(crate) fn new(target: &Path, tag: &str) -> Result<Self, BackupError> {
        let inside = target.is_dir();
        let dir = if inside {
            let mut b = [0u8; 6];
            getrandom::fill(&mut b).expect("the OS random source works");
            target.join(format!(".{tag}-{}", crate::model::hex(&b)))
        } else {
            let parent = client::parent(target);
            std::fs::create_dir_all(&parent)
                .map_err(BackupError::io(format!("create {}", parent.display())))?;
            sibling(target, tag)
        };
        new_dir(&dir)?;
        Ok(Self {
            dir,
            target: target.to_path_buf(),
            inside,
        })
    }

    /// Puts the built directory in place (synced).
    pub(crate) fn commit(self, last: Option<&str>) -> Result<(), BackupError> {
        sync_dir(&self.dir)?;
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(BackupError::io(format!(
                "rename {} to {}",
                from.display(),
                to.display()
            )))
        };
        if !self.inside {
            rename(&self.dir, &self.target)?;
            return sync_dir(&client::parent(&self.target));
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .map_err(BackupError::io(format!("read {}", self.dir.display())))?
        {
            let entry = entry.map_err(BackupError::io(format!("read {}", self.dir.display())))?;
            names.push(entry.file_name());
        }
        names.sort_by_key(|n| Some(n.as_os_str()) == last.map(std::ffi::OsStr::new));
        for name in names {
            rename(&self.dir.join(&name), &self.target.join(&name))?;
        }
        std::fs::remove_dir(&self.dir)
            .map_err(BackupError::io(format!("remove {}", self.dir.display())))?;
        sync_dir(&self.target)
    }

    /// Removes what was built (after a failure).
    pub(crate) fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sibling of `path` to build into before renaming onto it (same file
/// system, so the rename is atomic): `.NAME.TAG-RANDOM`.
pub(crate) fn sibling(path: &std::path::Path, tag: &str) -> std::path::PathBuf {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source works");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "costguard".into());
    path.with_file_name(format!(".{name}.{tag}-{}", crate::model::hex(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the store export and audit files: no traversal, no other name.
    #[test]
    fn allowed_paths_are_the_backup_files_only() {
        for ok in [
            "store.jsonl",
            "audit/audit.head",
            "audit/audit.anchor",
            "audit/audit-000001.jsonl",
            "audit/audit-123456.jsonl",
        ] {
            assert!(allowed_path(ok), "{ok}");
        }
        for bad in [
            "",
            "manifest.json",
            "../store.jsonl",
            "/etc/passwd",
            "audit/../store.jsonl",
            "audit/index/key",
            "audit/audit-+1.jsonl",
            "audit/audit-000001.jsonl/x",
            "audit//audit.head",
            "store.jsonl/",
        ] {
            assert!(!allowed_path(bad), "{bad}");
        }
    }
}
