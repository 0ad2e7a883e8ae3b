//! Copies every tenant and API key of an embedded (sled) store into the
//! shared store the `COSTGUARD_STORE_*` environment names, so a bench can
//! send one key to a single-pod build and to a shared-mode build.
//!
//!   COSTGUARD_STORE_BACKEND=postgres COSTGUARD_STORE_URL=… COSTGUARD_STORE_SCHEMA=… \
//!     cargo run --release --example copy_store -- /path/to/sled-store

use std::path::PathBuf;

use costguard::config::{Env, load};
use costguard::store::Store;
use costguard::store::postgres::PgStore;
use costguard::store::sled::SledStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let from = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow::anyhow!("usage: copy_store SLED_STORE_DIR (target from COSTGUARD_STORE_*)")
        })?;
    let config = load(None, &Env::from_process())?;
    let target = config.store.postgres.as_ref().ok_or_else(|| {
        anyhow::anyhow!("set COSTGUARD_STORE_BACKEND=postgres and COSTGUARD_STORE_URL")
    })?;
    let from = SledStore::open(&from)?;
    let to = PgStore::connect(target).await?;
    let (mut tenants, mut keys) = (0, 0);
    for tenant in from.list_tenants().await? {
        to.insert_tenant(&tenant).await?;
        tenants += 1;
        for key in from.list_keys(&tenant.tenant_id).await? {
            to.insert_key(&key, -1).await?;
            keys += 1;
        }
    }
    println!("copied {tenants} tenants and {keys} keys");
    Ok(())
}
