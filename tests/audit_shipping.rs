//! Issue 17, "many replicas, one truth": every replica's audit log shipped
//! to a real PostgreSQL (127.0.0.1:5432, user postgres, database test),
//! each test in a fresh schema `cgtest_<hex>` dropped afterwards. These
//! tests fail, never skip, when PostgreSQL is unreachable.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use costguard::admin::audit_query;
use costguard::admin::auth::Caller;
use costguard::audit::index::Index;
use costguard::audit::ship::{self, Link, Shipper, Step};
use costguard::audit::writer::{self, Head, WriterConfig};
use costguard::audit::{Audit, Durability, Event, EventType, Record, files};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::json;

const SCHEMA_SQL: &str = include_str!("../src/store/postgres/migrations/0002_audit.sql");
const KEY: &[u8] = b"shipping-test-key-0123456789abcdef";

fn pg_config(port: u16, schema: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("test")
        .connect_timeout(Duration::from_secs(2));
    if !schema.is_empty() {
        c.options(format!("-c search_path={schema}"));
    }
    c
}

fn pool_at(port: u16, schema: &str) -> Pool {
    let manager = Manager::from_config(
        pg_config(port, schema),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(3)))
        .create_timeout(Some(Duration::from_secs(3)))
        .build()
        .unwrap()
}

/// A fresh schema with the audit tables; dropped on drop (also when the
/// test panics), best effort.
struct Db {
    schema: String,
    pool: Pool,
}

impl Db {
    async fn new() -> Self {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let schema = format!("cgtest_{}", costguard::model::hex(&b));
        let (client, conn) = pg_config(5432, "")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, database test) is required");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let db = Self {
            pool: pool_at(5432, &schema),
            schema,
        };
        db.pool
            .get()
            .await
            .unwrap()
            .batch_execute(SCHEMA_SQL)
            .await
            .unwrap();
        db
    }

    async fn exec(&self, sql: &str) -> u64 {
        self.pool
            .get()
            .await
            .unwrap()
            .execute(sql, &[])
            .await
            .unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.pool
            .get()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn verify(&self, key: &[u8]) -> Vec<ship::verify::StreamReport> {
        ship::verify::verify_shipped(&self.pool, key).await.unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = pg_config(5432, "").connect(tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A replica's log: a real writer with its index in `dir`.
fn replica(dir: &Path, max_file_bytes: u64) -> (Audit, writer::Writer, Arc<Index>) {
    let index = Arc::new(Index::open(dir).unwrap());
    let (audit, w) = writer::start(
        WriterConfig {
            dir: dir.to_path_buf(),
            key: KEY.to_vec(),
            max_file_bytes,
            rotate_interval: Duration::from_secs(3600),
            capacity: 1024,
            batch_interval: Duration::from_millis(1),
            stdout: false,
            fail_open: false,
        },
        Some(index.clone()),
    )
    .unwrap();
    (audit, w, index)
}

async fn write(audit: &Audit, tenant: &str, n: usize, tag: &str) {
    for i in 0..n {
        let event_type = if i % 5 == 4 {
            EventType::AccessDenied
        } else {
            EventType::RequestAllowed
        };
        let event = Event {
            tenant_id: tenant.to_string(),
            region: String::new(),
            user_id: format!("{tag}-user-{}", i % 3),
            // Some records hold a NUL (jsonb refuses it: shipped in a
            // cleaned form beside the exact line), most do not.
            ..Event::new(
                event_type,
                if i % 7 == 3 {
                    json!({"i": i, "tag": tag, "nul": "a\u{0}b"})
                } else {
                    json!({"i": i, "tag": tag})
                },
            )
        };
        audit.record(event, Durability::Written).await.unwrap();
    }
}

fn head(dir: &Path) -> Head {
    serde_json::from_slice(&std::fs::read(dir.join(writer::HEAD)).unwrap()).unwrap()
}

/// Records written by a real writer (rotating over many files) are shipped
/// in bounded batches and anchored at the signed head; the anchor moves
/// with new records; verification passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_shipped_in_batches_and_anchored_at_the_signed_head() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, _) = replica(&dir, 64 * 1024);
    write(&audit, "org-a", 1200, "a").await;
    audit.flush().await.unwrap();
    assert!(files::files(&dir).unwrap().len() > 3, "rotated");
    let mut shipper = Shipper::new(db.pool.clone(), &dir, KEY.to_vec()).unwrap();
    assert_eq!(
        shipper.step().await.unwrap(),
        Step::More,
        "500 rows a batch"
    );
    shipper.catch_up().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM audit_records").await, 1200);
    let h = head(&dir);
    assert_eq!(h.seq, 1200);
    let row = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT stream, head_seq, head_hash, head_file, head_signature FROM audit_streams",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), shipper.stream());
    assert_eq!(row.get::<_, i64>(1), 1200);
    assert_eq!(row.get::<_, String>(2), h.hash);
    assert_eq!(row.get::<_, String>(3), h.file);
    assert_eq!(row.get::<_, String>(4), h.mac);
    // The stream id is kept in the directory across restarts.
    assert_eq!(ship::stream_id(&dir).unwrap(), shipper.stream());
    write(&audit, "org-a", 10, "b").await;
    audit.flush().await.unwrap();
    shipper.catch_up().await.unwrap();
    assert_eq!(
        db.count("SELECT max(head_seq) FROM audit_streams").await,
        1210
    );
    assert_eq!(
        shipper
            .stats()
            .lag
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let reports = db.verify(KEY).await;
    assert_eq!(reports.len(), 1);
    assert!(reports[0].ok(), "{reports:?}");
    assert_eq!((reports[0].first_seq, reports[0].last_seq), (1, 1210));
}

/// Records written but not yet synced (beyond the signed head) stay home;
/// shipping the same records again adds no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_twice_is_idempotent_and_only_synced_records_leave() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, _) = replica(&dir, 1 << 20);
    write(&audit, "org-a", 40, "a").await;
    audit.flush().await.unwrap();
    let mut shipper = Shipper::new(db.pool.clone(), &dir, KEY.to_vec()).unwrap();
    shipper.catch_up().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM audit_records").await, 40);
    // From the start again, and a second shipper of the same directory.
    shipper.rewind(1);
    shipper.catch_up().await.unwrap();
    let mut again = Shipper::new(db.pool.clone(), &dir, KEY.to_vec()).unwrap();
    again.rewind(1);
    again.catch_up().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM audit_records").await, 40);
    assert_eq!(
        db.count("SELECT count(DISTINCT (stream, seq)) FROM audit_records")
            .await,
        40
    );
    // A head naming an earlier record: what follows it is not shipped.
    let h = head(&dir);
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path().join("audit");
    std::fs::create_dir_all(&dir2).unwrap();
    for (_, path) in files::files(&dir).unwrap() {
        std::fs::copy(&path, dir2.join(path.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(dir2.join(files::file_name(1))).unwrap();
    let r20: Record = serde_json::from_str(text.lines().nth(19).unwrap()).unwrap();
    let early = Head::signed(KEY, h.file.clone(), 20, r20.hash.clone());
    std::fs::write(dir2.join(writer::HEAD), serde_json::to_vec(&early).unwrap()).unwrap();
    let mut partial = Shipper::new(db.pool.clone(), &dir2, KEY.to_vec()).unwrap();
    partial.catch_up().await.unwrap();
    let stream2 = partial.stream().to_string();
    let n = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*), max(seq) FROM audit_records WHERE stream = $1",
            &[&stream2],
        )
        .await
        .unwrap();
    assert_eq!((n.get::<_, i64>(0), n.get::<_, i64>(1)), (20, 20));
    assert!(db.verify(KEY).await.iter().all(|r| r.ok()));
}

/// A tiny TCP forwarder to PostgreSQL on a port that refuses connections
/// until it is started: "the database comes back".
async fn forward(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// PostgreSQL unreachable: the writer keeps writing at full speed, the
/// shipper counts errors and says it is down; once the database answers,
/// the same shipper catches up and anchors everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_never_stops_the_writer_and_the_shipper_catches_up() {
    let db = Db::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, _) = replica(&dir, 1 << 20);
    let handle = ship::start_every(
        pool_at(port, &db.schema),
        &audit,
        KEY.to_vec(),
        Duration::from_millis(100),
    )
    .unwrap();
    let began = Instant::now();
    write(&audit, "org-a", 300, "a").await;
    audit.flush().await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the writer did not wait for the database: {:?}",
        began.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = handle.stats().clone();
    assert!(stats.errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(!stats.up.load(std::sync::atomic::Ordering::Relaxed));
    let metrics = {
        let audit = audit.clone();
        costguard::metrics::text_of(move |enc| audit.encode(enc))
    };
    assert!(metrics.contains("costguard_audit_ship_up 0"), "{metrics}");
    assert!(
        metrics.contains("costguard_audit_ship_lag_records 300"),
        "{metrics}"
    );
    // Still written meanwhile.
    write(&audit, "org-a", 50, "b").await;
    audit.flush().await.unwrap();
    // The database comes back.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let fwd = tokio::spawn(forward(listener));
    let deadline = Instant::now() + Duration::from_secs(30);
    // (The database shows the commit a moment before the shipper has
    // read its answer: wait for both.)
    while db
        .count("SELECT coalesce(max(head_seq), 0) FROM audit_streams")
        .await
        < 350
        || stats.shipped.load(std::sync::atomic::Ordering::Relaxed) < 350
    {
        assert!(Instant::now() < deadline, "the shipper did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db.count("SELECT count(*) FROM audit_records").await, 350);
    let metrics = {
        let audit = audit.clone();
        costguard::metrics::text_of(move |enc| audit.encode(enc))
    };
    assert!(metrics.contains("costguard_audit_ship_up 1"), "{metrics}");
    assert!(
        metrics.contains("costguard_audit_shipped_total 350"),
        "{metrics}"
    );
    assert!(
        metrics.contains("costguard_audit_ship_lag_records 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("costguard_audit_ship_errors_total"),
        "{metrics}"
    );
    // Shut down after a last write: the final catch-up ships it.
    write(&audit, "org-a", 5, "c").await;
    audit.flush().await.unwrap();
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(db.count("SELECT count(*) FROM audit_records").await, 355);
    fwd.abort();
    assert!(db.verify(KEY).await.iter().all(|r| r.ok()));
}

async fn broken_reason(db: &Db, key: &[u8]) -> String {
    let reports = db.verify(key).await;
    assert_eq!(reports.len(), 1);
    reports[0].broken.clone().expect("verification must fail")
}

/// Verification fails, naming why, on a tampered line, a tampered query
/// column, a deleted row, deleted last rows, and an anchor whose hash or
/// signature does not match (or another key); each restored, it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_names_tampered_rows_gaps_and_bad_anchors() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, _) = replica(&dir, 1 << 20);
    write(&audit, "org-a", 30, "a").await;
    audit.flush().await.unwrap();
    let mut shipper = Shipper::new(db.pool.clone(), &dir, KEY.to_vec()).unwrap();
    shipper.catch_up().await.unwrap();
    assert!(db.verify(KEY).await[0].ok());
    db.exec("CREATE TABLE backup AS SELECT * FROM audit_records")
        .await;
    db.exec("CREATE TABLE backup_streams AS SELECT * FROM audit_streams")
        .await;
    let restore = || async {
        db.exec("DELETE FROM audit_records").await;
        db.exec("INSERT INTO audit_records SELECT * FROM backup")
            .await;
        db.exec("DELETE FROM audit_streams").await;
        db.exec("INSERT INTO audit_streams SELECT * FROM backup_streams")
            .await;
        assert!(db.verify(KEY).await[0].ok());
    };

    db.exec("UPDATE audit_records SET line = replace(line, 'a-user-1', 'a-user-9') WHERE seq = 5")
        .await;
    // A user id is a personal field: the chain hash covers it through the
    // record's subject digest, which no longer matches.
    let why = broken_reason(&db, KEY).await;
    assert!(
        why.contains("record 5") && why.contains("subject digest mismatch"),
        "{why}"
    );
    restore().await;

    db.exec(
        "UPDATE audit_records SET record = jsonb_set(record, '{user_id}', '\"someone-else\"') WHERE seq = 6",
    )
    .await;
    let why = broken_reason(&db, KEY).await;
    assert!(
        why.contains("record 6") && why.contains("columns do not match"),
        "{why}"
    );
    restore().await;

    db.exec("DELETE FROM audit_records WHERE seq = 7").await;
    let why = broken_reason(&db, KEY).await;
    assert!(why.contains("jumps from 6 to 8"), "{why}");
    restore().await;

    db.exec("DELETE FROM audit_records WHERE seq <= 3").await;
    let why = broken_reason(&db, KEY).await;
    assert!(why.contains("starts at record 4"), "{why}");
    restore().await;

    db.exec("DELETE FROM audit_records WHERE seq > 25").await;
    let why = broken_reason(&db, KEY).await;
    assert!(
        why.contains("names record 30 but the stream ends at record 25"),
        "{why}"
    );
    restore().await;

    db.exec(&format!(
        "UPDATE audit_streams SET head_hash = '{}'",
        "ab".repeat(32)
    ))
    .await;
    let why = broken_reason(&db, KEY).await;
    assert!(why.contains("anchored head's hash"), "{why}");
    restore().await;

    db.exec(&format!(
        "UPDATE audit_streams SET head_signature = '{}'",
        "00".repeat(32)
    ))
    .await;
    let why = broken_reason(&db, KEY).await;
    assert!(why.contains("signature does not verify"), "{why}");
    restore().await;

    let why = broken_reason(&db, b"another-key-0123456789abcdef").await;
    assert!(why.contains("signature does not verify"), "{why}");

    db.exec("DELETE FROM audit_streams").await;
    let why = broken_reason(&db, KEY).await;
    assert!(why.contains("no anchored head"), "{why}");
    restore().await;
}

/// Local retention removed the oldest files before they were shipped (a
/// long outage): the shipper records the gap with the signed retention
/// anchor, and the shipped stream verifies from seq 1's successor on; the
/// gap without its anchor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_pruned_before_shipping_are_a_signed_gap_not_a_failure() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, _) = replica(&dir, 4096);
    write(&audit, "org-a", 60, "a").await;
    audit.flush().await.unwrap();
    let all = files::files(&dir).unwrap();
    assert!(all.len() >= 4);
    // What retention does: anchor at the first kept file, remove the older.
    let first_kept = &all[2];
    let text = std::fs::read_to_string(&first_kept.1).unwrap();
    let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let anchor = Head::signed(
        KEY,
        files::file_name(first_kept.0),
        first.seq - 1,
        first.prev_hash.clone(),
    );
    std::fs::write(
        dir.join(costguard::audit::retention::ANCHOR),
        serde_json::to_vec(&anchor).unwrap(),
    )
    .unwrap();
    for (_, path) in &all[..2] {
        std::fs::remove_file(path).unwrap();
    }
    assert!(costguard::audit::verify::verify(&dir, Some(KEY)).is_ok());
    let mut shipper = Shipper::new(db.pool.clone(), &dir, KEY.to_vec()).unwrap();
    shipper.catch_up().await.unwrap();
    let reports = db.verify(KEY).await;
    assert!(reports[0].ok(), "{reports:?}");
    assert_eq!(reports[0].first_seq, first.seq);
    assert_eq!(reports[0].pruned, first.seq - 1);
    assert_eq!(reports[0].last_seq, 60);
    db.exec("DELETE FROM audit_gaps").await;
    let why = broken_reason(&db, KEY).await;
    assert!(
        why.contains(&format!("starts at record {}", first.seq)),
        "{why}"
    );
}

async fn query(audit: &Audit, params: &[(&str, &str)]) -> serde_json::Value {
    let params: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    audit_query::query(audit, &Caller::Root, &params)
        .await
        .unwrap()
}

/// Two replicas (two audit directories) ship into one schema; replica A's
/// admin query and report cover both: B's shipped records and A's own
/// written a moment ago (never shipped yet), each once across pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_query_and_report_cover_every_replica() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    let (audit_a, _wa, _) = replica(&dir_a, 1 << 20);
    let (audit_b, _wb, _) = replica(&dir_b, 1 << 20);
    write(&audit_a, "org-t", 7, "a").await;
    write(&audit_b, "org-t", 9, "b").await;
    write(&audit_b, "org-other", 4, "b").await;
    audit_a.flush().await.unwrap();
    audit_b.flush().await.unwrap();
    let mut ship_b = Shipper::new(db.pool.clone(), &dir_b, KEY.to_vec()).unwrap();
    ship_b.catch_up().await.unwrap();
    let mut ship_a = Shipper::new(db.pool.clone(), &dir_a, KEY.to_vec()).unwrap();
    ship_a.catch_up().await.unwrap();
    audit_a.attach_shipping(Arc::new(Link {
        pool: db.pool.clone(),
        stream: ship_a.stream().to_string(),
        stats: ship_a.stats().clone(),
    }));
    // Written by A after its last shipping: found through its own index.
    write(&audit_a, "org-t", 3, "fresh").await;

    let all = query(&audit_a, &[("tenant_id", "org-t"), ("limit", "1000")]).await;
    assert_eq!(all["count"], 19, "{all}");
    assert_eq!(all["next_cursor"], serde_json::Value::Null);
    let tags: Vec<&str> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["details"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags.iter().filter(|t| **t == "a").count(), 7);
    assert_eq!(tags.iter().filter(|t| **t == "b").count(), 9);
    assert_eq!(tags.iter().filter(|t| **t == "fresh").count(), 3);
    assert!(
        all["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant_id"] == "org-t")
    );

    // Pages of 4: every record once, in time order.
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("tenant_id", "org-t"), ("limit", "4")];
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let page = query(&audit_a, &params).await;
        pages += 1;
        for r in page["records"].as_array().unwrap() {
            assert!(
                seen.insert(r["event_id"].as_str().unwrap().to_string()),
                "twice: {r}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 20);
    }
    assert_eq!(seen.len(), 19);

    // Filters apply to both sources; the other tenant stays out.
    let b_user = query(&audit_a, &[("user_id", "b-user-1"), ("tenant_id", "org-t")]).await;
    assert_eq!(b_user["count"], 3, "{b_user}");
    let denied = query(
        &audit_a,
        &[
            ("event_type", "security.access_denied"),
            ("tenant_id", "org-t"),
        ],
    )
    .await;
    assert_eq!(denied["count"], 1 + 1, "{denied}");
    let bad = audit_query::query(
        &audit_a,
        &Caller::Root,
        &HashMap::from([("cursor".to_string(), "42".to_string())]),
    )
    .await;
    assert!(bad.is_err(), "a one-replica cursor is refused");

    let params = HashMap::from([("tenant_id".to_string(), "org-t".to_string())]);
    let report = audit_query::report(&audit_a, &Caller::Root, &params)
        .await
        .unwrap();
    assert_eq!(report["total_events"], 19, "{report}");
    assert_eq!(report["high_severity_events"], 2, "{report}");
    assert_eq!(report["recent_high_severity"].as_array().unwrap().len(), 2);
    let dist = report["event_distribution"].as_array().unwrap();
    assert_eq!(
        dist[0],
        json!({"event_type": "request.allowed", "events": 17})
    );
    assert_eq!(report["most_active_users"].as_array().unwrap().len(), 5);

    // Without a shipper the same query is the one-replica one: A only.
    let (solo, _ws, _) = replica(&tmp.path().join("solo"), 1 << 20);
    write(&solo, "org-t", 2, "solo").await;
    let only = query(&solo, &[("tenant_id", "org-t")]).await;
    assert_eq!(only["count"], 2);
    assert_eq!(only["next_cursor"], serde_json::Value::Null);
}

/// GDPR erasure in shared mode: the rows of every replica's stream naming
/// the erased user are pseudonymised as the local files are, the shipped
/// copy still verifies (`audit verify --shipped`), and the erasing
/// replica's shipper, whose files changed under it, ships on from the
/// right place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_pseudonymises_the_shipped_rows_of_every_stream() {
    let db = Db::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    let (audit_a, _wa, index_a) = replica(&dir_a, 16 * 1024);
    let (audit_b, _wb, _) = replica(&dir_b, 1 << 20);
    // Users x-user-0..2 in org-e on both replicas, and org-f's.
    write(&audit_a, "org-e", 150, "x").await;
    write(&audit_a, "org-f", 30, "x").await;
    write(&audit_b, "org-e", 40, "x").await;
    audit_a.flush().await.unwrap();
    audit_b.flush().await.unwrap();
    let mut ship_a = Shipper::new(db.pool.clone(), &dir_a, KEY.to_vec()).unwrap();
    let mut ship_b = Shipper::new(db.pool.clone(), &dir_b, KEY.to_vec()).unwrap();
    ship_a.catch_up().await.unwrap();
    ship_b.catch_up().await.unwrap();
    audit_a.attach_shipping(Arc::new(Link {
        pool: db.pool.clone(),
        stream: ship_a.stream().to_string(),
        stats: ship_a.stats().clone(),
    }));
    let naming = "SELECT count(*) FROM audit_records WHERE tenant_id = 'org-e' \
                  AND (strpos(line, 'x-user-1') > 0 OR strpos(record::text, 'x-user-1') > 0)";
    let before = db.count(naming).await;
    assert_eq!(before, 50 + 13, "150/3 on A, 40/3 on B");
    assert!(files::files(&dir_a).unwrap().len() > 2, "several files");

    let outcome = audit_a.erase_user("org-e", "x-user-1", None).await.unwrap();
    assert_eq!(outcome.records, 50);
    assert_eq!(outcome.shipped_rows, 63);
    assert_eq!(db.count(naming).await, 0);
    // org-f's x-user-1 is another tenant's user: untouched.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM audit_records WHERE tenant_id = 'org-f' \
             AND strpos(line, 'x-user-1') > 0"
        )
        .await,
        10
    );
    let p = outcome.pseudonym.clone();
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM audit_records WHERE record->>'user_id' = '{p}'"
        ))
        .await,
        63
    );
    for report in db.verify(KEY).await {
        assert_eq!(report.broken, None, "{report:?}");
    }
    assert!(
        costguard::audit::verify::verify(&dir_a, Some(KEY))
            .unwrap()
            .erased
            == 50
    );
    // The index answers for the pseudonym, from the rewritten files.
    let entries = index_a
        .query(&costguard::audit::index::Query {
            user: Some(index_a.hasher().hash(&p)),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .entries;
    assert_eq!(entries.len(), 50);
    for e in &entries {
        let r = costguard::audit::index::read_record(&dir_a, e).expect("readable at its new place");
        assert_eq!(r.user_id, p);
    }

    // A tampered pseudonym in a row is caught.
    db.exec(&format!(
        "UPDATE audit_records SET line = replace(line, '{p}', 'erased-0000000000000000') \
         WHERE seq = (SELECT min(seq) FROM audit_records WHERE record->>'user_id' = '{p}' \
         AND stream = '{}') AND stream = '{}'",
        ship_b.stream(),
        ship_b.stream()
    ))
    .await;
    let reasons: Vec<String> = db
        .verify(KEY)
        .await
        .into_iter()
        .filter_map(|r| r.broken)
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("erasure seal mismatch"), "{reasons:?}");

    // A's shipper ships on from the right place after its files changed.
    write(&audit_a, "org-e", 20, "y").await;
    audit_a.flush().await.unwrap();
    ship_a.catch_up().await.unwrap();
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM audit_records WHERE stream = '{}'",
            ship_a.stream()
        ))
        .await,
        200
    );
}
