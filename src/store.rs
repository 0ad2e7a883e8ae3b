//! The embedded store (sled). So far it only has to open and answer, which
//! is what `/ready` checks; tenants, keys and sessions come with their issues.
//! No sled type leaks out of this module.

use std::path::Path;

/// Opening or using the store failed.
#[derive(Debug, thiserror::Error)]
#[error("store {what}: {source}")]
pub struct StoreError {
    what: &'static str,
    #[source]
    source: sled::Error,
}

/// The open store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (creating if needed) the store in `path`. Fails if another
    /// process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError {
                what: "open",
                source,
            })?;
        Ok(Self { db })
    }

    /// A real read, so a broken store shows up in `/ready`.
    pub fn check(&self) -> Result<(), StoreError> {
        self.db
            .get(b"__costguard_ready_probe")
            .map(drop)
            .map_err(|source| StoreError {
                what: "read",
                source,
            })
    }

    /// Flushes pending writes to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|source| StoreError {
            what: "flush",
            source,
        })
    }
}
