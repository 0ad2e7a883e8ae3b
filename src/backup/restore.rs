//! `costguard restore DIR`: a backup onto a fresh data directory, offline.
//!
//! In order, and nothing is written before step 3:
//! 1. [`check`]: the manifest is this format, lists only files a backup
//!    holds, and every file has the listed size and SHA-256; no other file
//!    is there (a flipped byte, a cut file, a removed or added file: the
//!    backup is refused).
//! 2. The targets are fresh (missing or empty: a server using a store has
//!    files in it, so this also refuses a live one), and the audit key
//!    given is the one that signed the backup's head.
//! 3. The store is imported into a hidden staging directory (beside the
//!    data directory, or inside it when it exists: a volume's mount point
//!    cannot be renamed onto; see `Staging`), the audit files copied with
//!    it, and `audit verify` run on the copy with the key; only then are
//!    they put in place.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{AUDIT_DIR, BackupError, FORMAT, Hasher, MANIFEST, Manifest, STORE_FILE, allowed_path};
use crate::store::sled::SledStore;

/// Where a backup is restored to.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The store's directory (store.path).
    pub data_dir: PathBuf,
    /// The audit log's directory (audit.dir); `None`: the audit part is
    /// not restored (the configuration disables the log).
    pub audit_dir: Option<PathBuf>,
    /// Where the server reads the audit HMAC key (audit.hmac_key_file).
    pub key_file: PathBuf,
    /// The key the backup's head was signed with, if not already at
    /// `key_file` (copied there).
    pub key_from: Option<PathBuf>,
}

/// What was restored.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Records per store tree.
    pub records: BTreeMap<String, u64>,
    /// Audit records restored (0 without an audit part).
    pub audit_records: u64,
    /// Whether the audit key was written to `key_file`.
    pub key_written: bool,
}

/// Checks a backup directory against its manifest (step 1).
pub fn check(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        BackupError::Invalid(format!("{}: cannot read the manifest: {e}", path.display()))
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Invalid(format!("{}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Invalid(format!(
            "backup format {} (this costguard reads {FORMAT})",
            manifest.format
        )));
    }
    if !manifest.files.iter().any(|f| f.path == STORE_FILE) {
        return Err(BackupError::Invalid(format!("no {STORE_FILE} listed")));
    }
    let mut listed = std::collections::HashSet::new();
    for f in &manifest.files {
        if !allowed_path(&f.path) || !listed.insert(f.path.as_str()) {
            return Err(BackupError::Invalid(format!(
                "the manifest lists an unexpected file: {:?}",
                f.path
            )));
        }
        let file_path = dir.join(&f.path);
        let file = std::fs::File::open(&file_path)
            .map_err(|e| BackupError::Invalid(format!("{}: {e}", file_path.display())))?;
        let mut hasher = Hasher::new();
        let mut bytes = 0u64;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(BackupError::io(format!("read {}", file_path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        if bytes != f.bytes {
            return Err(BackupError::Invalid(format!(
                "{}: {bytes} bytes, the manifest says {} (truncated or altered)",
                file_path.display(),
                f.bytes
            )));
        }
        if hasher.finish() != f.sha256 {
            return Err(BackupError::Invalid(format!(
                "{}: SHA-256 does not match the manifest (altered)",
                file_path.display()
            )));
        }
    }
    // Nothing else: an added file is as suspect as a changed one.
    for top in read_names(dir)? {
        if top == MANIFEST || top == STORE_FILE {
            continue;
        }
        if top == AUDIT_DIR {
            for name in read_names(&dir.join(AUDIT_DIR))? {
                let p = format!("{AUDIT_DIR}/{name}");
                if !listed.contains(p.as_str()) {
                    return Err(BackupError::Invalid(format!(
                        "{}: not in the manifest",
                        dir.join(p).display()
                    )));
                }
            }
            continue;
        }
        return Err(BackupError::Invalid(format!(
            "{}: not in the manifest",
            dir.join(top).display()
        )));
    }
    Ok(manifest)
}

fn read_names(dir: &Path) -> Result<Vec<String>, BackupError> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(BackupError::io(format!("read {}", dir.display())))?
    {
        let entry = entry.map_err(BackupError::io(format!("read {}", dir.display())))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Restores the backup in `dir` onto `targets` (steps 1 to 3).
pub fn restore(dir: &Path, targets: &Targets) -> Result<Restored, BackupError> {
    let manifest = check(dir)?;
    let fresh = |p: &Path, what: &str| -> Result<(), BackupError> {
        if super::is_fresh(p)? {
            Ok(())
        } else {
            Err(BackupError::Refused(format!(
                "{}: the {what} is not empty (a live store, or another one): restore only onto a new or empty directory, with no server running on it",
                p.display()
            )))
        }
    };
    fresh(&targets.data_dir, "data directory")?;
    let audit = match (&manifest.audit, &targets.audit_dir) {
        (Some(summary), Some(audit_dir)) => {
            fresh(audit_dir, "audit directory")?;
            Some((summary, audit_dir))
        }
        _ => None,
    };
    // The key that signed the head: given, or already where the server
    // reads it; never in the backup.
    let mut key_written = false;
    let key = match audit.and_then(|(s, _)| s.head.as_ref()) {
        None => None,
        Some(head) => {
            let existing = targets.key_file.exists();
            let source = match (&targets.key_from, existing) {
                (Some(from), _) => from.clone(),
                (None, true) => targets.key_file.clone(),
                (None, false) => {
                    return Err(BackupError::Refused(format!(
                        "the backup's audit head is signed with the audit HMAC key, which a backup never holds, and {} does not exist: give the key with --audit-key-file (the old audit.hmac_key_file, or its Secret)",
                        targets.key_file.display()
                    )));
                }
            };
            let key = crate::audit::writer::read_key(&source).map_err(BackupError::io(format!(
                "read the audit key {}",
                source.display()
            )))?;
            if !head.is_signed_by(&key) {
                return Err(BackupError::Refused(format!(
                    "{}: not the key that signed this backup's audit head",
                    source.display()
                )));
            }
            if existing && targets.key_from.is_some() {
                let there = crate::audit::writer::read_key(&targets.key_file).ok();
                if there.as_deref() != Some(key.as_slice()) {
                    return Err(BackupError::Refused(format!(
                        "{} holds another audit key: remove it or name the same key",
                        targets.key_file.display()
                    )));
                }
            }
            key_written = !existing;
            Some(key)
        }
    };
    let data = super::Staging::new(&targets.data_dir, "restore")?;
    let audit_dir = audit.map(|(_, d)| d);
    // The audit files: inside the data directory's copy when the log lives
    // there (the default), else in their own staging directory.
    let separate = match audit_dir {
        Some(d) if !is_inside(d, &targets.data_dir) => match super::Staging::new(d, "restore") {
            Ok(s) => Some(s),
            Err(e) => {
                data.abandon();
                return Err(e);
            }
        },
        _ => None,
    };
    match build(
        dir,
        &manifest,
        targets,
        audit_dir,
        key.as_deref(),
        &data.dir,
        separate.as_ref().map(|s| s.dir.as_path()),
    ) {
        Ok(Built {
            records,
            audit_records,
            key_outside,
        }) => {
            // Into place: the data directory, then the audit directory,
            // then the key (the targets were checked fresh).
            data.commit(None)?;
            if let Some(s) = separate {
                s.commit(None)?;
            }
            if let Some(key) = key_outside {
                if let Some(p) = targets.key_file.parent() {
                    std::fs::create_dir_all(p)
                        .map_err(BackupError::io(format!("create {}", p.display())))?;
                }
                super::write_new(&targets.key_file, &key)?;
            }
            Ok(Restored {
                records,
                audit_records,
                key_written,
            })
        }
        Err(e) => {
            data.abandon();
            if let Some(s) = separate {
                s.abandon();
            }
            Err(e)
        }
    }
}

/// Whether `path` is `dir` or inside it.
fn is_inside(path: &Path, dir: &Path) -> bool {
    relative(path, dir).is_some()
}

/// `inside`'s path relative to `dir`, if it is inside it.
fn relative(inside: &Path, dir: &Path) -> Option<PathBuf> {
    inside.strip_prefix(dir).ok().map(Path::to_path_buf)
}

/// Builds the store (and the audit log and key, when they live in the
/// data directory) in `data_tmp`, the audit log in `audit_tmp` when it
/// lives elsewhere, and verifies the log. Returns the records per tree, the
/// audit records, and the key to write outside the data directory.
fn build(
    dir: &Path,
    manifest: &Manifest,
    targets: &Targets,
    audit_dir: Option<&PathBuf>,
    key: Option<&[u8]>,
    data_tmp: &Path,
    audit_tmp: Option<&Path>,
) -> Result<Built, BackupError> {
    let store = std::fs::File::open(dir.join(STORE_FILE)).map_err(BackupError::io(format!(
        "open {}",
        dir.join(STORE_FILE).display()
    )))?;
    let records = SledStore::import(data_tmp, BufReader::with_capacity(1 << 20, store))?;
    for (tree, n) in &manifest.store.records {
        if records.get(tree).copied().unwrap_or(0) != *n {
            return Err(BackupError::Invalid(format!(
                "tree {tree}: {} records imported, the manifest says {n}",
                records.get(tree).copied().unwrap_or(0)
            )));
        }
    }
    let mut audit_records = 0;
    if let Some(audit_dir) = audit_dir {
        let tmp = match (audit_tmp, relative(audit_dir, &targets.data_dir)) {
            (Some(t), _) => t.to_path_buf(),
            (None, Some(rel)) => data_tmp.join(rel),
            (None, None) => {
                unreachable!("an audit directory outside the data directory is staged apart")
            }
        };
        std::fs::create_dir_all(&tmp)
            .map_err(BackupError::io(format!("create {}", tmp.display())))?;
        crate::private_files::restrict_tree(&tmp)
            .map_err(BackupError::io(format!("restrict {}", tmp.display())))?;
        for f in manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(AUDIT_DIR))
        {
            let name = &f.path[AUDIT_DIR.len() + 1..];
            let bytes = std::fs::read(dir.join(&f.path)).map_err(BackupError::io(format!(
                "read {}",
                dir.join(&f.path).display()
            )))?;
            super::write_new(&tmp.join(name), &bytes)?;
        }
        super::sync_dir(&tmp)?;
        // A backup of a log that never recorded anything, taken before the
        // writer signed a new log's head at start, has no head and only
        // empty files: nothing to verify (the server signs it when it
        // starts). Anything else must verify.
        let never_written = !tmp.join(crate::audit::writer::HEAD).exists()
            && manifest
                .files
                .iter()
                .all(|f| !f.path.starts_with(AUDIT_DIR) || f.bytes == 0);
        if !never_written {
            let report = crate::audit::verify::verify(&tmp, key).map_err(|broken| {
                BackupError::Invalid(format!("the restored audit log does not verify: {broken}"))
            })?;
            audit_records = report.records;
        }
    }
    // The key, where the server will read it, if it was given.
    let mut key_outside = None;
    if let Some(key) = key
        && !targets.key_file.exists()
    {
        match relative(&targets.key_file, &targets.data_dir) {
            Some(rel) if !rel.as_os_str().is_empty() => {
                let to = data_tmp.join(rel);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p)
                        .map_err(BackupError::io(format!("create {}", p.display())))?;
                }
                super::write_new(&to, key)?;
            }
            _ => key_outside = Some(key.to_vec()),
        }
    }
    Ok(Built {
        records,
        audit_records,
        key_outside,
    })
}

/// What [`build`] made.
struct Built {
    records: BTreeMap<String, u64>,
    audit_records: u64,
    /// The audit key, to write where the server reads it (outside the data
    /// directory) once everything is in place.
    key_outside: Option<Vec<u8>>,
}
