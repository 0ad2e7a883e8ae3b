//! `costguard audit verify --shipped`: checks every stream in PostgreSQL
//! from the database alone (its pod and files may be gone).
//!
//! For each stream, in seq order from its first shipped record: each row's
//! line parses, its hash recomputes (the writer's own hashing,
//! [`Record::compute_hash`]), its columns agree with its line, its seq
//! follows the previous one and its `prev_hash` is the previous hash; then
//! the last hash at the anchored head's seq is the anchor's, and the
//! anchor's HMAC verifies with the audit key.
//!
//! Retention: a stream may start after seq 1, or jump, only where the
//! shipper recorded a gap with the retention anchor that covered it (the
//! writer's key signed that the chain up to there ended with that hash);
//! any other missing row is reported. Rows after the anchored head (a
//! batch shipped before its head was synced) are checked as a chain and
//! counted, but no signature covers them yet.

use std::collections::HashMap;

use deadpool_postgres::Pool;

use super::ShipError;
use super::pg::jsonb_view;
use crate::audit::writer::Head;
use crate::audit::{GENESIS, Record};

/// Rows read per round trip.
const PAGE: i64 = 5000;

/// One stream's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// The stream id.
    pub stream: String,
    /// Rows checked.
    pub records: u64,
    /// First and last seq shipped (0 when none).
    pub first_seq: u64,
    /// Last seq shipped.
    pub last_seq: u64,
    /// The anchored head's seq (0: none).
    pub head_seq: u64,
    /// When the anchor was last moved (RFC 3339), if anchored: a stream
    /// whose anchor stopped moving belongs to a replica that stopped.
    pub anchored_at: Option<String>,
    /// Records removed by local retention before shipping, covered by a
    /// signed retention anchor.
    pub pruned: u64,
    /// `None`: intact; otherwise the first broken place.
    pub broken: Option<String>,
}

impl StreamReport {
    /// Whether the stream verified.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

struct Anchor {
    head: Head,
    at: String,
}

/// Verifies every stream in the database with the audit HMAC `key`.
pub async fn verify_shipped(pool: &Pool, key: &[u8]) -> Result<Vec<StreamReport>, ShipError> {
    let client = pool.get().await?;
    let mut anchors: HashMap<String, Anchor> = HashMap::new();
    for r in client
        .query(
            "SELECT stream, head_seq, head_hash, head_file, head_signature, \
             to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM audit_streams",
            &[],
        )
        .await?
    {
        anchors.insert(
            r.get(0),
            Anchor {
                head: Head {
                    seq: r.get::<_, i64>(1) as u64,
                    hash: r.get(2),
                    file: r.get(3),
                    mac: r.get(4),
                },
                at: r.get(5),
            },
        );
    }
    let mut streams: Vec<String> = client
        .query("SELECT DISTINCT stream FROM audit_records", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in anchors.keys() {
        if !streams.contains(s) {
            streams.push(s.clone());
        }
    }
    streams.sort();
    let mut out = Vec::new();
    for stream in streams {
        let anchor = anchors.remove(&stream);
        out.push(verify_stream(&client, &stream, anchor, key).await?);
    }
    Ok(out)
}

/// The gaps the shipper recorded for `stream`, by the seq after each.
async fn gaps(
    client: &deadpool_postgres::Client,
    stream: &str,
) -> Result<HashMap<u64, Head>, ShipError> {
    Ok(client
        .query(
            "SELECT before_seq, anchor_file, anchor_seq, anchor_hash, anchor_signature \
             FROM audit_gaps WHERE stream = $1",
            &[&stream],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                Head {
                    file: r.get(1),
                    seq: r.get::<_, i64>(2) as u64,
                    hash: r.get(3),
                    mac: r.get(4),
                },
            )
        })
        .collect())
}

async fn verify_stream(
    client: &deadpool_postgres::Client,
    stream: &str,
    anchor: Option<Anchor>,
    key: &[u8],
) -> Result<StreamReport, ShipError> {
    let mut report = StreamReport {
        stream: stream.to_string(),
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head_seq: anchor.as_ref().map_or(0, |a| a.head.seq),
        anchored_at: anchor.as_ref().map(|a| a.at.clone()),
        pruned: 0,
        broken: None,
    };
    let gaps = gaps(client, stream).await?;
    // The gap at `seq` is acceptable if its signed anchor ends the chain
    // just before it with the hash `prev_hash` continues from.
    let covered = |seq: u64, prev_hash: &str| -> bool {
        gaps.get(&seq)
            .is_some_and(|a| a.seq + 1 == seq && a.hash == prev_hash && a.is_signed_by(key))
    };
    let mut prev: Option<(u64, String)> = None;
    let mut head_hash: Option<String> = None;
    let mut after = 0i64;
    'pages: loop {
        let rows = client
            .query(
                "SELECT seq, (extract(epoch from at) * 1000000)::int8, event_type, tenant_id, \
                 record, line, hash FROM audit_records WHERE stream = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&stream, &after, &PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        for row in &rows {
            let seq = row.get::<_, i64>(0) as u64;
            let broken = |why: String| Some(format!("record {seq}: {why}"));
            let line: &str = row.get(5);
            let record: Record = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) => {
                    report.broken = broken(format!("not a valid record ({e})"));
                    break 'pages;
                }
            };
            report.broken = check_row(row, seq, &record, key);
            if report.broken.is_some() {
                break 'pages;
            }
            match &prev {
                None if seq == 1 && record.prev_hash == GENESIS => {}
                None if covered(seq, &record.prev_hash) => report.pruned += seq - 1,
                None => {
                    report.broken = broken(format!(
                        "the stream starts at record {seq} and no signed retention anchor covers records 1 to {} (rows deleted)",
                        seq - 1
                    ));
                }
                Some((p, _)) if seq != p + 1 && covered(seq, &record.prev_hash) => {
                    report.pruned += seq - p - 1;
                }
                Some((p, _)) if seq != p + 1 => {
                    report.broken =
                        broken(format!("sequence jumps from {p} to {seq} (rows deleted)"));
                }
                Some((_, h)) if record.prev_hash != *h => {
                    report.broken = broken(
                        "prev_hash does not match the previous record (chain broken)".into(),
                    );
                }
                Some(_) => {}
            }
            if report.broken.is_some() {
                break 'pages;
            }
            if report.records == 0 {
                report.first_seq = seq;
            }
            report.records += 1;
            report.last_seq = seq;
            if seq == report.head_seq {
                head_hash = Some(record.hash.clone());
            }
            prev = Some((seq, record.hash));
        }
    }
    if report.broken.is_some() {
        return Ok(report);
    }
    report.broken = match &anchor {
        None if report.records > 0 => {
            Some("no anchored head (the stream was never anchored)".into())
        }
        None => None,
        Some(a) if a.head.seq > report.last_seq => Some(format!(
            "the anchored head names record {} but the stream ends at record {} (rows deleted)",
            a.head.seq, report.last_seq
        )),
        Some(a) if head_hash.as_deref() != Some(a.head.hash.as_str()) => Some(format!(
            "the anchored head's hash is not record {}'s (anchor or rows altered)",
            a.head.seq
        )),
        Some(a) if !a.head.is_signed_by(key) => {
            Some("the anchored head's signature does not verify (altered, or another key)".into())
        }
        Some(_) => None,
    };
    Ok(report)
}

/// A row's columns against its line (the line is what the hash covers;
/// the columns are what queries filter on).
fn check_row(row: &tokio_postgres::Row, seq: u64, record: &Record, key: &[u8]) -> Option<String> {
    let broken = |why: &str| Some(format!("record {seq}: {why}"));
    if record.compute_hash() != record.hash {
        return broken("hash mismatch (record altered)");
    }
    // Personal fields against their digest, or an erased record's seal.
    if let Err(why) = crate::audit::subject::check(record, Some(key)) {
        return broken(why);
    }
    if record.seq != seq || row.get::<_, String>(6) != record.hash {
        return broken("the row's seq or hash is not its record's (row altered)");
    }
    if row.get::<_, i64>(1) != crate::audit::index::record_micros(record)
        || row.get::<_, String>(2) != record.event_type
        || row.get::<_, String>(3) != record.tenant_id
        || row.get::<_, serde_json::Value>(4) != jsonb_view(record)
    {
        return broken("the row's columns do not match its record (row altered)");
    }
    None
}
