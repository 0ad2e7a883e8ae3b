//! The shared store's connection settings, as validated configuration
//! builds them (`[store]` with `backend = "postgres"`). Defined beside the
//! store that reads them, so the store needs nothing from `config`.

use std::path::PathBuf;
use std::time::Duration;

/// The shared store's connection settings.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection URL (may hold a password: never printed).
    pub url: String,
    /// Schema of costguard's tables.
    pub schema: String,
    /// Connections per replica.
    pub pool_size: usize,
    /// Connection and pool wait bound.
    pub connect_timeout: Duration,
    /// `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    /// CA bundle for TLS (`None`: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Outbox poll period.
    pub invalidation_poll: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("invalidation_poll", &self.invalidation_poll)
            .finish()
    }
}
