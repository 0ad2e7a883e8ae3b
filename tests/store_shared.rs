//! The PostgreSQL store as several replicas see it: two `PgStore` handles
//! (two pools, as two processes would have) on one schema. Writes are
//! shared, tier limits and one-time values are exact across them, the
//! outbox tells the other replica what changed, migrations apply once and
//! refuse a database they do not describe, and a cancelled operation never
//! leaves a connection inside a transaction.

mod support;

use std::sync::Arc;
use std::time::Duration;

use costguard::model::{self, KeyStatus, Tier, User, UserStatus};
use costguard::store::conformance::{sample_key, sample_tenant};
use costguard::store::postgres::{PgStore, migrate};
use costguard::store::{Change, Store, StoreError};
use support::pg::TestSchema;
use tokio::task::JoinSet;

/// Every migration this build embeds, in order.
const MIGRATIONS: [&str; 3] = ["0001_store", "0002_audit", "0003_shared_keys"];

async fn two_replicas(schema: &TestSchema) -> (Arc<PgStore>, Arc<PgStore>) {
    let a = PgStore::connect(&schema.config()).await.unwrap();
    let b = PgStore::connect(&schema.config()).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

/// Runs `attempts` creations alternating between the replicas, all at
/// once; returns (successes, limit refusals).
async fn race<F, Fut>(
    a: &Arc<PgStore>,
    b: &Arc<PgStore>,
    attempts: usize,
    create: F,
) -> (usize, usize)
where
    F: Fn(Arc<PgStore>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for i in 0..attempts {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(create(store, i));
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(result) = set.join_next().await {
        match result.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::LimitReached { .. }) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_read_on_the_other() {
    let schema = TestSchema::new().await;
    let (a, b) = two_replicas(&schema).await;
    let t = sample_tenant(Tier::Standard);
    a.insert_tenant(&t).await.unwrap();
    assert_eq!(b.get_tenant(&t.tenant_id).await.unwrap(), Some(t.clone()));
    let key = sample_key(&t.tenant_id, "shared01");
    b.insert_key(&key, -1).await.unwrap();
    assert_eq!(a.key_by_hash("shared01").await.unwrap(), Some(key.clone()));
    let mut revoked = key.clone();
    revoked.status = KeyStatus::Revoked;
    a.update_key(&revoked).await.unwrap();
    assert_eq!(
        b.key_by_hash("shared01").await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
    b.delete_tenant(&t.tenant_id).await.unwrap();
    assert!(a.get_tenant(&t.tenant_id).await.unwrap().is_none());
    assert!(a.key_by_hash("shared01").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_limits_are_exact_across_replicas() {
    const MAX: i64 = 5;
    let schema = TestSchema::new().await;
    let (a, b) = two_replicas(&schema).await;
    let t = sample_tenant(Tier::Standard);
    a.insert_tenant(&t).await.unwrap();
    let tenant: Arc<str> = t.tenant_id.clone().into();

    for round in 0..3 {
        let id = tenant.clone();
        let keys = race(&a, &b, MAX as usize + 1, move |store, i| {
            let key = sample_key(&id, &format!("race-{round}-{i}"));
            async move { store.insert_key(&key, MAX).await }
        })
        .await;
        assert_eq!(keys, (MAX as usize, 1), "keys, round {round}");
        // Revoke them all: the next round races for room again.
        for key in a.list_keys(&tenant).await.unwrap() {
            let mut k = key.clone();
            k.status = KeyStatus::Revoked;
            b.update_key(&k).await.unwrap();
        }
    }

    let id = tenant.clone();
    let projects = race(&a, &b, MAX as usize + 1, move |store, i| {
        let project = model::Project {
            project_id: model::new_id("proj-"),
            tenant_id: id.to_string(),
            name: format!("p{i}"),
            budget: 1.0,
            created_at: model::now(),
        };
        async move { store.insert_project(&project, MAX).await }
    })
    .await;
    assert_eq!(projects, (MAX as usize, 1), "projects");
    assert_eq!(b.list_projects(&tenant).await.unwrap().len(), MAX as usize);

    let id = tenant.clone();
    let users = race(&a, &b, MAX as usize + 1, move |store, i| {
        let user = User {
            user_id: format!("u{i}"),
            tenant_id: id.to_string(),
            email: format!("u{i}@example.com"),
            roles: vec!["viewer".into()],
            grants: vec![],
            status: UserStatus::Active,
            updated_at: model::now(),
        };
        async move { store.put_user(&user, MAX).await.map(drop) }
    })
    .await;
    assert_eq!(users, (MAX as usize, 1), "users");
    assert_eq!(a.list_users(&tenant).await.unwrap().len(), MAX as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_once_has_one_winner_across_replicas() {
    let schema = TestSchema::new().await;
    let (a, b) = two_replicas(&schema).await;
    for round in 0..5 {
        let key = format!("saml:race-{round}");
        let until = model::now().unix_timestamp() + 60;
        let mut set = JoinSet::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.clone();
            set.spawn(async move { store.remember_once(&key, until).await.unwrap() });
        }
        let mut wins = 0;
        while let Some(won) = set.join_next().await {
            wins += usize::from(won.unwrap());
        }
        assert_eq!(wins, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_tells_the_other_replica_what_changed() {
    let schema = TestSchema::new().await;
    let (a, b) = two_replicas(&schema).await;
    let mut commits = a.subscribe_commits();
    let t = sample_tenant(Tier::Standard);
    a.insert_tenant(&t).await.unwrap();
    let mut key = sample_key(&t.tenant_id, "old-hash");
    a.insert_key(&key, -1).await.unwrap();
    key.hash = "new-hash".into();
    key.status = KeyStatus::Revoked;
    a.update_key(&key).await.unwrap();

    let has_old = |c: &Change| matches!(c, Change::KeyHashes { hashes } if hashes.contains(&"old-hash".to_string()) && hashes.contains(&"new-hash".to_string()));
    let seen = b.recent_changes(Duration::from_secs(60)).await.unwrap();
    assert!(
        seen.iter().any(|(_, c)| has_old(c)),
        "B sees the rotation's hashes: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ordered by id");
    assert!(seen.contains(&(
        seen[0].0,
        Change::Tenant {
            tenant_id: t.tenant_id.clone(),
            deleted: false
        }
    )));

    // A's own subscribers hear the same rows, with the same ids, at once.
    let mut heard = Vec::new();
    while let Ok(event) = commits.try_recv() {
        heard.push(event);
    }
    assert_eq!(
        heard, seen,
        "the broadcast carries exactly the committed rows"
    );

    // A failed write announces nothing.
    let ghost = sample_key(&t.tenant_id, "ghost");
    assert!(a.update_key(&ghost).await.is_err());
    assert!(commits.try_recv().is_err());

    assert_eq!(b.prune_changes(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(
        b.prune_changes(Duration::ZERO).await.unwrap(),
        seen.len() as u64
    );
    assert!(
        a.recent_changes(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let schema = TestSchema::new().await;
    let config = schema.config();
    let (first, second) = tokio::join!(PgStore::connect(&config), PgStore::connect(&config));
    first.unwrap();
    second.unwrap();
    let client = schema.client().await;
    let rows = client
        .query(
            "SELECT version, name FROM costguard_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(names, MIGRATIONS, "each applied once");
    assert!(migrate(&schema.config()).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let schema = TestSchema::new().await;
    assert_eq!(migrate(&schema.config()).await.unwrap(), MIGRATIONS);
    let client = schema.client().await;
    client
        .execute(
            "UPDATE costguard_migrations SET checksum = 'tampered' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let err = PgStore::connect(&schema.config())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("migration 0001_store was edited after it was applied"),
        "{err}"
    );
}

#[tokio::test]
async fn a_database_from_a_newer_costguard_is_refused() {
    let schema = TestSchema::new().await;
    migrate(&schema.config()).await.unwrap();
    let client = schema.client().await;
    client
        .execute(
            "INSERT INTO costguard_migrations (version, name, checksum) \
             VALUES (9999, '9999_future', 'x')",
            &[],
        )
        .await
        .unwrap();
    let err = PgStore::connect(&schema.config())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("database schema is newer"), "{err}");
    assert!(err.contains("9999"), "{err}");
}

#[tokio::test]
async fn the_migrate_command_applies_then_reports_up_to_date() {
    let schema = TestSchema::new().await;
    let migrate = || {
        support::cli(["migrate"])
            .env("COSTGUARD_STORE_BACKEND", "postgres")
            .env("COSTGUARD_STORE_URL", schema.url())
            .env("COSTGUARD_STORE_SCHEMA", schema.schema())
            .run()
    };
    let first = migrate();
    assert!(first.status.success(), "{}", first.stderr);
    assert!(
        first.stdout.contains("applied 0001_store"),
        "{}",
        first.stdout
    );
    let second = migrate();
    assert!(second.status.success(), "{}", second.stderr);
    assert!(second.stdout.contains("up to date"), "{}", second.stdout);

    let sled = support::cli(["migrate"])
        .env("COSTGUARD_STORE_BACKEND", "sled")
        .run();
    assert_eq!(sled.status.code(), Some(2));
    assert!(
        sled.stderr.contains("store.backend is not"),
        "{}",
        sled.stderr
    );
}

/// Sessions of ours sitting idle inside a transaction for over a second
/// (longer than any operation here keeps one open).
async fn stuck_in_transaction(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'costguard' AND datname = current_database() \
             AND state LIKE 'idle in transaction%' \
             AND state_change < clock_timestamp() - interval '1 second'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_operations_never_leave_a_connection_in_a_transaction() {
    let schema = TestSchema::new().await;
    let store = Arc::new(PgStore::connect(&schema.config()).await.unwrap());
    let t = sample_tenant(Tier::Standard);
    store.insert_tenant(&t).await.unwrap();
    let key = sample_key(&t.tenant_id, "cancel-00");
    store.insert_key(&key, -1).await.unwrap();

    // 1. Cancelled for certain inside the transaction: another session
    // holds the key's row, so update_key waits in its SELECT … FOR UPDATE
    // until the timeout drops it.
    let mut blocker = schema.client().await;
    let hold = blocker.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM api_keys WHERE key_id = $1 FOR UPDATE",
        &[&key.key_id],
    )
    .await
    .unwrap();
    for i in 0..12 {
        let mut changed = key.clone();
        changed.hash = format!("cancel-blocked-{i}");
        let r = tokio::time::timeout(Duration::from_millis(50), store.update_key(&changed)).await;
        assert!(r.is_err(), "blocked update {i} finished: {r:?}");
    }
    hold.rollback().await.unwrap();

    // 2. Cancelled anywhere: timeouts from 0 to 3 ms over writes that open
    // transactions (some finish, some do not; both are fine).
    for i in 0..200u64 {
        let delay = Duration::from_micros((i * 157) % 3000);
        let mut k = sample_key(&t.tenant_id, &format!("cancel-any-{i}"));
        let _ = tokio::time::timeout(delay, store.insert_key(&k, 1_000)).await;
        k.status = KeyStatus::Revoked;
        let _ = tokio::time::timeout(delay, store.update_key(&k)).await;
        let _ = tokio::time::timeout(delay, store.remember_once(&format!("c{i}"), 0)).await;
    }

    // Every blocked update was rolled back: the key is as it was.
    assert_eq!(
        store.get_key(&t.tenant_id, &key.key_id).await.unwrap(),
        Some(key.clone())
    );
    assert!(
        store
            .key_by_hash("cancel-blocked-0")
            .await
            .unwrap()
            .is_none()
    );

    // Every pooled connection is outside any transaction: on a leaked one,
    // now() would be the old transaction's start, not this statement's.
    let pool = store.pool();
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        let c = pool.get().await.unwrap();
        // One simple-protocol message: an implicit transaction starts
        // with the statement, so the two are equal unless one was open.
        let answer = c
            .simple_query("SELECT now() = statement_timestamp()")
            .await
            .unwrap();
        let fresh = answer.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
            _ => false,
        });
        assert!(fresh, "a pooled connection came back inside a transaction");
        held.push(c);
    }
    drop(held);

    // And the server agrees: nothing of ours idles in a transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let observer = schema.client().await;
    assert_eq!(stuck_in_transaction(&observer).await, 0);

    // The store works on as before.
    for i in 0..20 {
        let k = sample_key(&t.tenant_id, &format!("after-{i}"));
        store.insert_key(&k, -1).await.unwrap();
        assert_eq!(store.key_by_hash(&k.hash).await.unwrap(), Some(k));
    }
}

/// `sslmode=require` speaks TLS (rustls) and checks the server against
/// `tls_ca_file`: the right CA connects and stores; another CA is refused
/// (no silent fallback to plain text), and so is a server without TLS.
#[tokio::test]
async fn tls_to_postgres_verifies_the_server() {
    let (ca, cert, key) = support::test_pki();
    let pg = support::services::OwnPostgres::start_with_tls(Some((&cert, &key)));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (other_ca, _, _) = support::test_pki();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, &other_ca).unwrap();

    let config = |url: String, ca: &std::path::Path| costguard::config::PostgresConfig {
        url,
        schema: "cgtls".into(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        tls_ca_file: Some(ca.to_path_buf()),
        invalidation_poll: Duration::from_secs(1),
    };
    let url = format!("{}?sslmode=require", pg.url());
    let store = PgStore::connect(&config(url.clone(), &ca_file))
        .await
        .expect("TLS with the server's CA");
    let tenant = sample_tenant(Tier::Free);
    store.insert_tenant(&tenant).await.unwrap();
    assert_eq!(
        store.get_tenant(&tenant.tenant_id).await.unwrap(),
        Some(tenant)
    );
    let ssl_in_use = {
        let client = store.pool().get().await.unwrap();
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(ssl_in_use, "the connection is encrypted");

    let err = PgStore::connect(&config(url, &other_file))
        .await
        .expect_err("a server certificate from another CA");
    assert!(
        format!("{err}").to_lowercase().contains("certificate"),
        "{err}"
    );
    // The machine's server has no TLS: `require` refuses it.
    let err = PgStore::connect(&config(
        format!("{}?sslmode=require", support::pg::URL),
        &ca_file,
    ))
    .await
    .expect_err("sslmode=require against a server without TLS");
    let _ = err;
}
