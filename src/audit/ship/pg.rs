//! The shipper's SQL, and a pool built from `[store]` for the command
//! line (the server gets its pool from the shared store).

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;

use super::ShipError;
use super::reader::Line;
use crate::audit::writer::Head;
use crate::config::PostgresConfig;

/// A pool for `config`: its URL, its schema first on the `search_path`,
/// its timeouts, and TLS through rustls (the system's roots plus
/// `tls_ca_file`) unless the URL says `sslmode=disable`.
pub fn connect(config: &PostgresConfig) -> Result<Pool, ShipError> {
    let mut pg: tokio_postgres::Config = config
        .url
        .parse()
        // The parser's message never repeats the URL (which may hold a
        // password).
        .map_err(|e| ShipError::Config(format!("store.url: {e}")))?;
    let schema = config.schema.replace('"', "\"\"");
    pg.options(format!(
        "-c search_path=\"{schema}\" -c statement_timeout={}",
        config.statement_timeout.as_millis()
    ));
    pg.connect_timeout(config.connect_timeout);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
    } else {
        Manager::from_config(pg, tls(config)?, manager_config)
    };
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .build()
        .map_err(|e| ShipError::Config(e.to_string()))
}

fn tls(config: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ShipError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.tls_ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ShipError::Config(format!("{}: {e}", path.display())))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ShipError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ShipError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
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
