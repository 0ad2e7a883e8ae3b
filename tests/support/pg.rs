//! A throwaway PostgreSQL schema per test, on the local server
//! (127.0.0.1:5432, user postgres, trust, database `test`). Not reachable
//! is a failure, never a skip: the shared store is tested or it is not.

use std::time::Duration;

use costguard::config::PostgresConfig;

pub const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Schema `cgtest_<random hex>`, dropped (with everything in it) when this
/// is dropped, also while a failing test unwinds. Best effort: a drop that
/// cannot connect or waits too long on a lock leaves the schema behind.
pub struct TestSchema {
    schema: String,
    config: PostgresConfig,
}

impl TestSchema {
    /// A fresh name (nothing is created: the store's migrations create it).
    /// Panics when the server does not answer.
    pub async fn new() -> Self {
        let schema = format!("cgtest_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL 15 must be running at {URL} for these tests: {e}")
            });
        tokio::spawn(conn);
        client.simple_query("").await.expect("PostgreSQL answers");
        let config = PostgresConfig {
            url: URL.into(),
            schema: schema.clone(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            tls_ca_file: None,
            invalidation_poll: Duration::from_secs(1),
        };
        Self { schema, config }
    }

    /// The store configuration for this schema.
    pub fn config(&self) -> PostgresConfig {
        self.config.clone()
    }

    pub fn url(&self) -> &str {
        URL
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A plain connection with `search_path` set to this schema, to look
    /// at (or tamper with) the tables directly.
    pub async fn client(&self) -> tokio_postgres::Client {
        let url = format!(
            "{URL}?options=-c%20search_path%3D{}&application_name=cgtest",
            self.schema
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Its own thread and runtime: this may run inside a runtime (or while
        // one unwinds), where blocking on a future is not allowed.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((client, conn)) = tokio_postgres::connect(URL, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let drop =
                    format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                if client.batch_execute(&drop).await.is_ok() {
                    return;
                }
                // A session still holds a lock in it (say, a cancelled
                // operation's ROLLBACK not yet sent because the test's
                // runtime is the thread blocked here): end those sessions.
                let _ = client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await;
                if let Err(e) = client.batch_execute(&drop).await {
                    eprintln!(
                        "test schema {schema} left behind: {e}: {:?}",
                        e.as_db_error()
                    );
                }
            });
        });
        let _ = cleanup.join();
    }
}
