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
    /// Records after the one the signed head names. The writer moves the
    /// head after every batch, so a log closed cleanly has none; a crash
    /// between a batch and its head leaves at most that batch. Their hash
    /// chain holds, but nothing signed covers them: anyone who can write
    /// the files could have appended them.
    pub after_head: u64,
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
    let mut hash_at: Option<String> = None;
    let head_path = dir.join(HEAD);
    // The head is the witness that this directory holds a log, and of how
    // far it goes: the writer writes a signed one (record 0) when it
    // starts, so a directory emptied of its files and head, or of its
    // files with the head blanked, is BROKEN, not an intact empty log.
    let head: Head = match fs::read(&head_path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            return Err(broken(
                &head_path,
                None,
                "the head is empty: nothing signed says what this log holds (the head was emptied, or a writer stopped while creating the log: start costguard on this directory once to write it)",
            ));
        }
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| broken(&head_path, None, format!("unreadable head: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(broken(
                &head_path,
                None,
                "head missing: not an audit log directory, or its head was removed",
            ));
        }
        Err(e) => return Err(broken(&head_path, None, format!("cannot read: {e}"))),
    };
    if let Some(key) = key
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
    let prev_hash_at_start = prev_hash.clone();
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
        // Every line before the final newline (checked above) is a record.
        let Some((_, lines)) = bytes.split_last() else {
            continue;
        };
        for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
            let at = Some(i as u64 + 1);
            if line.is_empty() {
                return Err(broken(path, at, "empty line (the writer writes none)"));
            }
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
            // The hash covers the record's fields; the line must also be
            // exactly the bytes the writer wrote for them (its serde form),
            // so a field added that `Record` ignores, or a line re-encoded
            // or reordered, is an alteration too.
            if serde_json::to_vec(&record).map_or(true, |written| written != line) {
                return Err(broken(
                    path,
                    at,
                    "the line is not as written (fields added, reordered or re-encoded)",
                ));
            }
            match super::subject::check(&record, key) {
                Ok(super::subject::Subject::Erased) => erased += 1,
                Ok(_) => {}
                Err(reason) => return Err(broken(path, at, reason)),
            }
            if head.seq == record.seq {
                hash_at = Some(record.hash.clone());
            }
            prev_hash = record.hash;
            expected_seq += 1;
        }
    }
    let records = expected_seq - first_seq;
    let last_seq = expected_seq - 1;
    if last_seq < head.seq {
        return Err(broken(
            &head_path,
            None,
            format!(
                "the log ends at record {last_seq} but the head names record {} (tail or last file removed)",
                head.seq
            ),
        ));
    }
    // The head may lag the files by one batch after a crash, never lead.
    let named = if head.seq == first_seq - 1 {
        // No record since the start (record 0) or since retention's anchor.
        head.hash == prev_hash_at_start
    } else {
        hash_at.is_some_and(|hash| hash == head.hash)
    };
    if !named {
        return Err(broken(
            &head_path,
            None,
            format!("record {} is not the one the head names", head.seq),
        ));
    }
    Ok(Report {
        files: files.len(),
        records,
        signature_checked: key.is_some(),
        erased,
        after_head: last_seq - head.seq,
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::audit::writer::{self, WriterConfig};

    const KEY: &[u8] = b"verify-unit-test-key-0123456789a";

    fn start(dir: &Path) -> std::io::Result<(crate::audit::Audit, writer::Writer)> {
        writer::start(WriterConfig::for_test(dir, KEY), None)
    }

    /// A writer started and stopped after `records` records.
    fn log_of(dir: &Path, records: usize) {
        let (audit, w) = start(dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for i in 0..records {
            let event = crate::audit::Event::new(
                crate::audit::EventType::AdminAction,
                serde_json::json!({ "i": i }),
            );
            rt.block_on(audit.record(event, crate::audit::Durability::Synced))
                .unwrap();
        }
        drop(audit);
        w.join();
    }

    fn empty_log(dir: &Path) {
        log_of(dir, 0);
    }

    #[test]
    fn the_writer_will_not_chain_over_records_cut_while_it_was_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        log_of(&dir, 3);
        assert_eq!(verify(&dir, Some(KEY)).unwrap().records, 3);
        let file = dir.join(files::file_name(1));
        let text = fs::read_to_string(&file).unwrap();
        let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        fs::write(&file, kept).unwrap();
        let Err(err) = start(&dir) else {
            panic!("the writer started on a log cut behind its head")
        };
        let err = err.to_string();
        assert!(
            err.contains("ends at record 2 but its signed head names record 3"),
            "{err}"
        );
        // Nothing was written by the refused start: still BROKEN, same way.
        let broken = verify(&dir, Some(KEY)).unwrap_err();
        assert!(
            broken.reason.contains("the log ends at record 2"),
            "{broken}"
        );
    }

    #[test]
    fn an_empty_log_verifies_and_an_emptied_directory_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        empty_log(&dir);
        let report = verify(&dir, Some(KEY)).unwrap();
        assert_eq!((report.records, report.after_head), (0, 0));
        assert!(report.signature_checked);
        assert!(verify(&dir, Some(b"another-key-0123456789abcdef")).is_err());

        // A head left blank by an older version (or emptied) is refused;
        // starting the writer again signs it.
        fs::write(dir.join(HEAD), "").unwrap();
        let err = verify(&dir, Some(KEY)).unwrap_err();
        assert!(err.reason.starts_with("the head is empty"), "{err}");
        empty_log(&dir);
        verify(&dir, Some(KEY)).unwrap();

        fs::remove_file(dir.join(HEAD)).unwrap();
        let err = verify(&dir, None).unwrap_err();
        assert!(err.reason.starts_with("head missing"), "{err}");
        // Not an audit log at all.
        let err = verify(tmp.path(), None).unwrap_err();
        assert!(err.reason.starts_with("head missing"), "{err}");
    }
}
