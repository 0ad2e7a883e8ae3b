//! The shipper's SQL, and a pool built from `[store]` for the command
//! line (the server gets its pool from the shared store).

use deadpool_postgres::Pool;
use serde_json::Value;

use super::ShipError;
use super::reader::Line;
use crate::audit::writer::Head;
use crate::store::postgres::PostgresConfig;

/// A pool for `config` (the store's own settings: schema, timeouts, TLS
/// when the URL says `sslmode=require`), for the command line; the server
/// reuses the shared store's pool.
pub fn connect(config: &PostgresConfig) -> Result<Pool, ShipError> {
    crate::store::postgres::pool(config).map_err(|e| ShipError::Config(e.to_string()))
}

/// What the database has of `stream`: the last shipped seq and its hash,
/// and the anchored head's seq (0s when nothing).
pub(crate) async fn position(
    pool: &Pool,
    stream: &str,
) -> Result<(u64, Option<String>, u64), ShipError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT seq, hash FROM audit_records WHERE stream = $1 ORDER BY seq DESC LIMIT 1",
            &[&stream],
        )
        .await?;
    let (seq, hash) = match row {
        Some(r) => (r.get::<_, i64>(0) as u64, Some(r.get::<_, String>(1))),
        None => (0, None),
    };
    let anchored = client
        .query_opt(
            "SELECT head_seq FROM audit_streams WHERE stream = $1",
            &[&stream],
        )
        .await?
        .map_or(0, |r| r.get::<_, i64>(0) as u64);
    Ok((seq, hash, anchored))
}

/// The record as the `record` jsonb column keeps it: jsonb cannot hold a
/// NUL character, so each becomes U+FFFD (the exact record is `line`).
pub(crate) fn jsonb_view(record: &crate::audit::Record) -> Value {
    fn clean(v: &mut Value) {
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            Value::Array(a) => a.iter_mut().for_each(clean),
            Value::Object(o) => o.values_mut().for_each(clean),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    clean(&mut v);
    v
}

/// Unix microseconds as SQL: `$n` → a timestamptz, exactly.
pub(crate) fn at(param: &str) -> String {
    format!("(timestamptz 'epoch' + {param}::int8 * interval '1 microsecond')")
}

/// A timestamptz column as Unix microseconds, exactly.
pub(crate) fn micros(column: &str) -> String {
    format!("(extract(epoch from {column}) * 1000000)::int8")
}

/// What one shipping transaction writes.
pub(crate) struct Batch<'a> {
    pub(crate) stream: &'a str,
    pub(crate) lines: &'a [Line],
    /// A retention anchor covering the records before the first line.
    pub(crate) gap: Option<&'a Head>,
    /// The signed head, when the batch ends at it.
    pub(crate) head: Option<&'a Head>,
}

/// Inserts the batch (rows already there are left as they are) and, in
/// the same transaction, the gap and the anchor: the anchor is committed
/// with the records it names, never before them.
pub(crate) async fn ship(pool: &Pool, batch: Batch<'_>) -> Result<(), ShipError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = batch.lines.len();
    let (mut seqs, mut times, mut types, mut tenants) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut records, mut lines, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for l in batch.lines {
        seqs.push(l.record.seq as i64);
        times.push(l.micros);
        types.push(l.record.event_type.as_str());
        tenants.push(l.record.tenant_id.as_str());
        // The line itself is the jsonb document (PostgreSQL parses it
        // once, and it travels once); only a line with an escaped NUL,
        // which jsonb refuses, sends its cleaned form beside it.
        records.push(
            l.text
                .contains("\\u0000")
                .then(|| {
                    serde_json::from_str::<crate::audit::Record>(&l.text)
                        .map(|r| jsonb_view(&r).to_string())
                })
                .transpose()
                .map_err(|e| ShipError::Io(std::io::Error::other(e)))?,
        );
        lines.push(l.text.as_str());
        hashes.push(l.record.hash.as_str());
    }
    if let Some(gap) = batch.gap {
        let before = batch.lines.first().map_or(0, |l| l.record.seq as i64);
        tx.execute(
            "INSERT INTO audit_gaps (stream, before_seq, anchor_file, anchor_seq, anchor_hash, anchor_signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, before_seq) DO NOTHING",
            &[&batch.stream, &before, &gap.file, &(gap.seq as i64), &gap.hash, &gap.mac],
        )
        .await?;
    }
    if n > 0 {
        let sql = format!(
            "INSERT INTO audit_records (stream, seq, at, event_type, tenant_id, record, line, hash) \
             SELECT $1, s, {}, e, t, COALESCE(r, l)::jsonb, l, h \
             FROM UNNEST($2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
               AS u(s, m, e, t, r, l, h) \
             ON CONFLICT (stream, seq) DO NOTHING",
            at("m")
        );
        tx.execute(
            &sql,
            &[
                &batch.stream,
                &seqs,
                &times,
                &types,
                &tenants,
                &records,
                &lines,
                &hashes,
            ],
        )
        .await?;
    }
    if let Some(head) = batch.head {
        tx.execute(
            "INSERT INTO audit_streams (stream, head_seq, head_hash, head_file, head_signature, updated_at) \
             VALUES ($1, $2, $3, $4, $5, now()) \
             ON CONFLICT (stream) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash, \
               head_file = excluded.head_file, head_signature = excluded.head_signature, updated_at = now() \
             WHERE audit_streams.head_seq <= excluded.head_seq",
            &[&batch.stream, &(head.seq as i64), &head.hash, &head.file, &head.mac],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
