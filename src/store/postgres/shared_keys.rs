//! Keys all replicas must agree on, kept in the database when the operator
//! did not mount one Secret into every pod (see `server`).

use deadpool_postgres::Pool;

use super::{PgStore, StoreError, pg, pool_error};

impl PgStore {
    /// The key named `name`, 32 bytes from the OS CSPRNG created by the
    /// first replica that asks and the same for every replica afterwards,
    /// as a key file holds it (lower-case hex, which is what signs).
    pub async fn shared_key(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh)
            .map_err(|e| StoreError::Backend(format!("random source: {e}")))?;
        let client = self.client().await?;
        // Insert-if-absent, then read: of two replicas racing, both read
        // the one row that won.
        client
            .execute(
                "INSERT INTO shared_keys (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &&fresh[..]],
            )
            .await
            .map_err(pg)?;
        read(&client, name)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("shared key {name} vanished")))
    }
}

async fn read(client: &tokio_postgres::Client, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let row = client
        .query_opt("SELECT value FROM shared_keys WHERE name = $1", &[&name])
        .await
        .map_err(pg)?;
    row.map(|r| {
        r.try_get::<_, Vec<u8>>(0)
            .map(|k| crate::model::hex(&k).into_bytes())
            .map_err(pg)
    })
    .transpose()
}

/// The key named `name` as replicas use it (lower-case hex, as a key file
/// holds it), or `None` when no replica created it: for tools that verify
/// what the replicas signed.
pub async fn read_shared_key(pool: &Pool, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    read(&client, name).await
}
