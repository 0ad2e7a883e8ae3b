//! `costguard audit verify DIR`: walks every file in order and checks each
//! record's hash, its link to the previous record, the sequence, the file
//! numbering, and finally the signed head, so an altered byte, a removed
//! record, a removed file and a cut tail each name the first broken place.
//! Each record's personal fields are checked against its subject digest,
//! or (erased records, with the key) its erasure seal: see
//! [`super::subject`].

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::files;
use super::writer::{HEAD, Head};
use super::{GENESIS, Record};

/// An intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files checked.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// Whether the head's signature was checked (a key was given).
    pub signature_checked: bool,
    /// Records whose personal fields were pseudonymised by an erasure
    /// (their seals checked only with a key).
    pub erased: u64,
}

/// The first broken place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The file (or the directory, or the head).
    pub file: PathBuf,
    /// 1-based line, when it is a record.
    pub line: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

fn broken(file: &Path, line: Option<u64>, reason: impl Into<String>) -> Broken {
    Broken {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Verifies the log in `dir`; with `key`, also the head's signature.
pub fn verify(dir: &Path, key: Option<&[u8]>) -> Result<Report, Broken> {
    let files = files::files(dir).map_err(|e| broken(dir, None, format!("cannot list: {e}")))?;
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut hash_at: Option<(u64, String)> = None;
    let head_path = dir.join(HEAD);
    let head: Option<Head> = match fs::read(&head_path) {
        // Created, never written (nothing was recorded yet).
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => None,
        Ok(bytes) if serde_json::from_slice::<Head>(&bytes).is_ok_and(|h| h.seq == 0) => None,
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| broken(&head_path, None, format!("unreadable head: {e}")))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(broken(&head_path, None, format!("cannot read: {e}"))),
    };
    if let (Some(head), Some(key)) = (&head, key)
        && !head.is_signed_by(key)
    {
        return Err(broken(
            &head_path,
            None,
            "the head's signature does not verify (altered, or another key)",
        ));
    }
    // After retention removed old files, a signed anchor says where the
    // chain now starts.
    let anchor_path = dir.join(super::retention::ANCHOR);
    let mut first_file = 1u64;
    match fs::read(&anchor_path) {
        Ok(bytes) => {
            let anchor: Head = serde_json::from_slice(&bytes)
                .map_err(|e| broken(&anchor_path, None, format!("unreadable anchor: {e}")))?;
            if let Some(key) = key
                && !anchor.is_signed_by(key)
            {
                return Err(broken(
                    &anchor_path,
                    None,
                    "the anchor's signature does not verify (altered, or another key)",
                ));
            }
            first_file = files::file_number(&anchor.file)
                .ok_or_else(|| broken(&anchor_path, None, "the anchor names no log file"))?;
            expected_seq = anchor.seq + 1;
            prev_hash = anchor.hash;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(broken(&anchor_path, None, format!("cannot read: {e}"))),
    }
    let first_seq = expected_seq;
    let mut erased = 0u64;
    let files: Vec<_> = files
        .into_iter()
        .filter(|(no, _)| *no >= first_file)
        .collect();
    for (expected_file, (no, path)) in (first_file..).zip(files.iter()) {
        if *no != expected_file {
            return Err(broken(
                &dir.join(files::file_name(expected_file)),
                None,
                "file missing (the numbering skips it)",
            ));
        }
        let bytes = fs::read(path).map_err(|e| broken(path, None, format!("cannot read: {e}")))?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let line = bytes.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            return Err(broken(
                path,
                Some(line),
                "incomplete record (file cut mid-line)",
            ));
        }
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let at = Some(i as u64 + 1);
            let record: Record = serde_json::from_slice(line)
                .map_err(|e| broken(path, at, format!("not a valid record: {e}")))?;
            if record.seq != expected_seq {
                return Err(broken(
                    path,
                    at,
                    format!(
                        "sequence jumps from {} to {} (records removed)",
                        expected_seq - 1,
                        record.seq
                    ),
                ));
            }
            if record.prev_hash != prev_hash {
                return Err(broken(
                    path,
                    at,
                    "prev_hash does not match the previous record (chain broken)",
                ));
            }
            if record.compute_hash() != record.hash {
                return Err(broken(path, at, "hash mismatch (record altered)"));
            }
            match super::subject::check(&record, key) {
                Ok(super::subject::Subject::Erased) => erased += 1,
                Ok(_) => {}
                Err(reason) => return Err(broken(path, at, reason)),
            }
            if head.as_ref().is_some_and(|h| h.seq == record.seq) {
                hash_at = Some((record.seq, record.hash.clone()));
            }
            prev_hash = record.hash;
            expected_seq += 1;
        }
    }
    let records = expected_seq - first_seq;
    let last_seq = expected_seq - 1;
    match &head {
        None if last_seq > 0 => {
            return Err(broken(&head_path, None, "head missing"));
        }
        None => {}
        Some(h) if last_seq < h.seq => {
            return Err(broken(
                &head_path,
                None,
                format!(
                    "the log ends at record {last_seq} but the head names record {} (tail or last file removed)",
                    h.seq
                ),
            ));
        }
        // The head may lag the files by one batch after a crash, never lead.
        Some(h) if hash_at.as_ref().is_none_or(|(_, hash)| *hash != h.hash) => {
            return Err(broken(
                &head_path,
                None,
                format!("record {} is not the one the head names", h.seq),
            ));
        }
        Some(_) => {}
    }
    Ok(Report {
        files: files.len(),
        records,
        signature_checked: key.is_some() && head.is_some(),
        erased,
    })
}
