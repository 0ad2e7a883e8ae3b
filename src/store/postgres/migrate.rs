//! Schema migrations, embedded in the binary.
//!
//! Each migration runs in its own transaction and is recorded in
//! `costguard_migrations` with the SHA-256 of its SQL. The whole run holds
//! a session advisory lock keyed by the schema, on one dedicated
//! connection, so replicas starting together apply each migration once
//! (the others wait, then find nothing to do). A migration edited after it
//! was applied, or a database migrated by a newer costguard, is refused:
//! running against a schema this binary does not describe would corrupt it.

use tokio_postgres::Client;

use super::PostgresConfig;
use super::{pg, pg_config, schema_hash};
use crate::store::StoreError;

/// One embedded migration.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// `migration!(2, "0002_audit")` embeds `migrations/0002_audit.sql`.
macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("migrations/", $name, ".sql")),
        }
    };
}

/// Every migration, in order. Adding one is adding a line (never edit or
/// reorder an applied one: its checksum is checked at every start).
const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_store"),
    migration!(2, "0002_audit"),
    migration!(3, "0003_shared_keys"),
];

fn checksum(sql: &str) -> String {
    crate::model::hex(&crate::model::sha256(sql.as_bytes()))
}

/// Applies the migrations `cfg`'s schema lacks (creating the schema if
/// needed); returns the names of those applied, in order (empty: up to
/// date). Fails, applying nothing, when an applied migration was edited or
/// the database has a version this binary does not know.
pub async fn migrate(cfg: &PostgresConfig) -> Result<Vec<String>, StoreError> {
    // No statement timeout: waiting for another replica's migrations, or a
    // migration rewriting a big table, may take longer than a query should.
    let pg_cfg = pg_config(cfg, None)?;
    let mut client = match super::tls::connector(cfg, &pg_cfg)? {
        Some(tls) => {
            let (client, conn) = pg_cfg.connect(tls).await.map_err(pg)?;
            tokio::spawn(conn);
            client
        }
        None => {
            let (client, conn) = pg_cfg.connect(tokio_postgres::NoTls).await.map_err(pg)?;
            tokio::spawn(conn);
            client
        }
    };
    let key = i64::from_be_bytes(schema_hash("migrate", &cfg.schema));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(pg)?;
    let result = apply(&mut client, &cfg.schema).await;
    // Closing the connection would release the lock too; this is quicker
    // for the replica waiting on it. Dropping `client` closes it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    result
}

async fn apply(client: &mut Client, schema: &str) -> Result<Vec<String>, StoreError> {
    // `schema` is a checked identifier (pg_config); search_path names it.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.costguard_migrations (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(pg)?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM costguard_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.try_get(0).map_err(pg)?;
        let name: String = row.try_get(1).map_err(pg)?;
        let sum: String = row.try_get(2).map_err(pg)?;
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(StoreError::Backend(format!(
                "database schema is newer than this costguard: schema {schema} has migration \
                 {version} ({name}), which this binary does not know; run a costguard at least \
                 that new, or point store.schema at another schema"
            )));
        };
        if checksum(known.sql) != sum {
            return Err(StoreError::Backend(format!(
                "migration {} was edited after it was applied (schema {schema}: its checksum \
                 differs); restore the original file and put the change in a new migration",
                known.name
            )));
        }
        applied.push(version);
    }
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        // A failure drops the transaction, which rolls it back before the
        // unlock that follows.
        let outcome = async {
            let tx = client.transaction().await?;
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO costguard_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &checksum(m.sql)],
            )
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = outcome {
            return Err(StoreError::Backend(format!(
                "migration {} failed: {}",
                m.name,
                pg(e)
            )));
        }
        tracing::info!(migration = m.name, schema, "Applied a store migration.");
        done.push(m.name.to_string());
    }
    Ok(done)
}
