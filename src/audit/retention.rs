//! Retention: records older than their tenant tier's `retention_days`
//! leave the query index, and log files whose every record is older than
//! the longest retention of any tenant are removed, oldest first, after an
//! `audit.anchor` (signed like the head) names where the chain now starts,
//! so `verify` still passes. Each purge is itself recorded
//! (`audit.purged`).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::files;
use super::index::{self, Index};
use super::writer::Head;
use super::{Audit, Durability, Event, EventType, Record, off_runtime};
use crate::store::Store;

/// The anchor's file name: where the chain starts once old files were
/// removed (a [`Head`] naming the first kept file and the seq and hash its
/// first record continues from, signed with the head's key).
pub const ANCHOR: &str = "audit.anchor";

const DAY: i64 = 86_400 * 1_000_000;

/// One retention pass at `now_micros`.
pub async fn purge(
    store: &Arc<dyn Store>,
    audit: &Audit,
    key: &[u8],
    now_micros: i64,
) -> Result<(), String> {
    let tenants = store.list_tenants().await.map_err(|e| e.to_string())?;
    // Not while an erasure rewrites files (it could bring back a file
    // removed here).
    let _one_at_a_time = audit.maintenance().await;
    let mut longest = 0i64;
    for t in &tenants {
        let days = t.limits.retention_days.max(0);
        longest = longest.max(days);
        let Some(index) = audit.index().cloned() else {
            continue;
        };
        let before = now_micros - days * DAY;
        let tenant = index.hasher().hash(&t.tenant_id);
        // File rewrites: off the async workers.
        let removed = off_runtime(move || index.purge_tenant(tenant, before))
            .await
            .map_err(|e| e.to_string())?;
        if removed > 0 {
            let event = Event {
                tenant_id: t.tenant_id.clone(),
                region: t.settings.data_region.clone(),
                ..Event::new(
                    EventType::AuditPurged,
                    json!({"removed_from_index": removed, "retention_days": days, "before_micros": before}),
                )
            };
            audit
                .record(event, Durability::Synced)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let (dir, key, index) = (
        audit.dir().to_path_buf(),
        key.to_vec(),
        audit.index().cloned(),
    );
    let cutoff = now_micros - longest * DAY;
    let removed_files = off_runtime(move || remove_old_files(&dir, &key, cutoff, index.as_ref()))
        .await
        .map_err(|e| e.to_string())?;
    if !removed_files.is_empty() {
        audit
            .record(
                Event::new(
                    EventType::AuditPurged,
                    json!({"files_removed": removed_files, "retention_days": longest}),
                ),
                Durability::Synced,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes the files entirely older than `cutoff` (never the one being
/// written), anchoring the chain at the first kept file before each
/// removal. Returns the removed files' names.
fn remove_old_files(
    dir: &Path,
    key: &[u8],
    cutoff: i64,
    index: Option<&Arc<Index>>,
) -> std::io::Result<Vec<String>> {
    let files = files::files(dir)?;
    let mut removed = Vec::new();
    let mut first_kept = None;
    for window in files.windows(2) {
        let (path, (next_no, next)) = (&window[0].1, &window[1]);
        let mut last: Option<Record> = None;
        let text = fs::read(path)?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            last = serde_json::from_slice(line).ok();
        }
        let Some(last) = last else { break };
        if index::record_micros(&last) >= cutoff {
            break;
        }
        let next_name = next
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let anchor = Head::signed(key, next_name, last.seq, last.hash.clone());
        let tmp = dir.join("audit.anchor.tmp");
        fs::write(&tmp, serde_json::to_vec(&anchor).expect("serializes"))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dir.join(ANCHOR))?;
        fs::remove_file(path)?;
        first_kept = Some(*next_no);
        removed.push(
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string(),
        );
    }
    if let Some(first_kept) = first_kept {
        fs::File::open(dir)?.sync_all()?;
        if let Some(index) = index {
            index.drop_files_before(first_kept)?;
        }
    }
    Ok(removed)
}
