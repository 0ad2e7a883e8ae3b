//! The log files' names: `audit-000001.jsonl`, `audit-000002.jsonl`, … in
//! the log's directory. The writer makes them, and everything that reads
//! the log back (the query index, retention, `verify`) finds them here.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `audit-000042.jsonl` → 42.
pub fn file_number(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// `audit-000042.jsonl` for 42.
pub fn file_name(n: u64) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The log files in `dir`, in order.
pub fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(n) = entry.file_name().to_str().and_then(file_number) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}
