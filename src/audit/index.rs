//! The query index in the store, and retention.
//!
//! The files are the record; the store holds a copy of each record keyed
//! by time and by tenant so `GET /admin/v1/audit` never reads files. The
//! writer indexes every batch it writes; at startup [`catch_up`] indexes
//! whatever the files hold beyond the store's last indexed seq (a crash
//! between the write and the index).
//!
//! Retention ([`purge`]): a tenant's records older than its tier's
//! `retention_days` leave the index; files whose every record is older
//! than the longest retention of any tenant are removed, oldest first,
//! after an `audit.anchor` (signed like the head) names where the chain
//! now starts, so `verify` still passes. Each purge is itself recorded
//! (`audit.purged`).

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::writer::{self, Head};
use super::{Audit, Durability, Event, Record};
use crate::store::sled::record_micros;
use crate::store::{AuditPointer, Store};

/// The anchor's file name: where the chain starts once old files were
/// removed (a [`Head`] naming the first kept file and the seq and hash its
/// first record continues from, signed with the head's key).
pub const ANCHOR: &str = "audit.anchor";

/// Reads every record in the log's files, in order, with its pointer.
pub fn read_all(dir: &Path, mut each: impl FnMut(Record, AuditPointer)) -> io::Result<()> {
    for (file_no, path) in writer::files(dir)? {
        let text = fs::read(&path)?;
        let mut offset = 0usize;
        for line in text.split(|b| *b == b'\n') {
            let start = offset;
            offset += line.len() + 1;
            if line.is_empty() {
                continue;
            }
            if let Ok(r) = serde_json::from_slice::<Record>(line) {
                let pointer = AuditPointer {
                    seq: r.seq,
                    micros: record_micros(&r),
                    file_no,
                    offset: start as u64,
                    len: line.len() as u32,
                    severity: r.severity,
                    tenant_id: r.tenant_id.clone(),
                    user_id: r.user_id.clone(),
                    event_type: r.event_type.clone(),
                };
                each(r, pointer);
            }
        }
    }
    Ok(())
}

/// Reads one record back from the files (`None` if its file is gone).
pub fn read_record(dir: &Path, p: &AuditPointer) -> Option<Record> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(dir.join(format!("audit-{:06}.jsonl", p.file_no))).ok()?;
    let mut line = vec![0u8; p.len as usize];
    file.read_exact_at(&mut line, p.offset).ok()?;
    let record: Record = serde_json::from_slice(&line).ok()?;
    (record.seq == p.seq).then_some(record)
}

/// Indexes the records the store has not seen yet.
pub async fn catch_up(store: &Arc<dyn Store>, dir: &Path) -> Result<u64, String> {
    let indexed = store.audit_indexed_seq().await.map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    read_all(dir, |r, p| {
        if r.seq > indexed {
            pending.push(p);
        }
    })
    .map_err(|e| e.to_string())?;
    for chunk in pending.chunks(4096) {
        store.index_audit(chunk).await.map_err(|e| e.to_string())?;
    }
    Ok(pending.len() as u64)
}

/// One retention pass at `now_micros`.
pub async fn purge(
    store: &Arc<dyn Store>,
    audit: &Audit,
    dir: &Path,
    key: &[u8],
    now_micros: i64,
) -> Result<(), String> {
    const DAY: i64 = 86_400 * 1_000_000;
    let tenants = store.list_tenants().await.map_err(|e| e.to_string())?;
    let mut longest = 0i64;
    for t in &tenants {
        let days = t.limits.retention_days.max(0);
        longest = longest.max(days);
        let before = now_micros - days * DAY;
        let removed = store
            .purge_audit(&t.tenant_id, before)
            .await
            .map_err(|e| e.to_string())?;
        if removed > 0 {
            let event = Event {
                tenant_id: t.tenant_id.clone(),
                ..Event::new(
                    "audit.purged",
                    json!({"removed_from_index": removed, "retention_days": days, "before_micros": before}),
                )
            };
            audit
                .record(event, Durability::Synced)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    // Files: only those entirely older than every tenant's retention, and
    // never the one being written.
    let cutoff = now_micros - longest * DAY;
    let files = writer::files(dir).map_err(|e| e.to_string())?;
    let mut removed_files = Vec::new();
    for window in files.windows(2) {
        let (path, next) = (&window[0].1, &window[1].1);
        let mut last: Option<Record> = None;
        let text = fs::read(path).map_err(|e| e.to_string())?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            last = serde_json::from_slice(line).ok();
        }
        let Some(last) = last else { break };
        if record_micros(&last) >= cutoff {
            break;
        }
        let next_name = next
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let anchor = Head::signed(key, next_name, last.seq, last.hash.clone());
        let tmp = dir.join("audit.anchor.tmp");
        fs::write(&tmp, serde_json::to_vec(&anchor).expect("serializes"))
            .map_err(|e| e.to_string())?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        fs::rename(&tmp, dir.join(ANCHOR)).map_err(|e| e.to_string())?;
        fs::remove_file(path).map_err(|e| e.to_string())?;
        removed_files.push(
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string(),
        );
    }
    if !removed_files.is_empty() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        audit
            .record(
                Event::new(
                    "audit.purged",
                    json!({"files_removed": removed_files, "retention_days": longest}),
                ),
                Durability::Synced,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
