//! The store contract suite, run on the sled and PostgreSQL backends; and
//! durability across a reopen.

mod support;

use costguard::store::Store;
use costguard::store::conformance;
use costguard::store::postgres::PgStore;
use costguard::store::sled::SledStore;
use support::pg::TestSchema;

#[tokio::test]
async fn sled_passes_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    conformance::run(&store).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let tenant = conformance::sample_tenant(costguard::model::Tier::Free);
    let key = conformance::sample_key(&tenant.tenant_id, "ab12");
    {
        let store = SledStore::open(&path).unwrap();
        store.insert_tenant(&tenant).await.unwrap();
        store.insert_key(&key, -1).await.unwrap();
    }
    // sled's flusher thread lets go of the file lock a moment after the
    // last handle is dropped (a busy machine can stretch that moment).
    let start = std::time::Instant::now();
    let store = loop {
        match SledStore::open(&path) {
            Ok(store) => break store,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(
        store.get_tenant(&tenant.tenant_id).await.unwrap(),
        Some(tenant)
    );
    assert_eq!(store.key_by_hash("ab12").await.unwrap(), Some(key));
}

#[tokio::test]
async fn a_store_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let _first = SledStore::open(&path).unwrap();
    let second = SledStore::open(&path);
    assert!(second.is_err(), "two writers on one sled database");
}

#[tokio::test]
async fn postgres_passes_the_store_contract() {
    let schema = TestSchema::new().await;
    let store = PgStore::connect(&schema.config()).await.unwrap();
    conformance::run(&store).await;
}

#[tokio::test]
async fn postgres_acknowledged_writes_survive_a_reconnect() {
    let schema = TestSchema::new().await;
    let tenant = conformance::sample_tenant(costguard::model::Tier::Free);
    let key = conformance::sample_key(&tenant.tenant_id, "ab12");
    {
        let store = PgStore::connect(&schema.config()).await.unwrap();
        store.insert_tenant(&tenant).await.unwrap();
        store.insert_key(&key, -1).await.unwrap();
        // Dropped here: its pool and every connection close.
    }
    let store = PgStore::connect(&schema.config()).await.unwrap();
    assert_eq!(
        store.get_tenant(&tenant.tenant_id).await.unwrap(),
        Some(tenant)
    );
    assert_eq!(store.key_by_hash("ab12").await.unwrap(), Some(key));
}
