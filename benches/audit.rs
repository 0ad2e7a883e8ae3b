//! The audit log off the request path and its queries:
//! - one record through the writer (channel → batch → chain → write → ack),
//!   alone and 64 at once;
//! - queries on an index of 1,000,000 records (100 tenants): a tenant's
//!   page, a filtered page, the newest records, and a 10,000-record report
//!   scan (index work only: a page then reads its ≤ 1000 records back from
//!   the files by position).
//!
//! `cargo bench --bench audit`
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use costguard::audit::writer::{self, WriterConfig};
use costguard::audit::{Durability, Event, Severity};
use costguard::store::sled::SledStore;
use costguard::store::{AuditPointer, AuditQuery, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (audit, _w) = rt.block_on(async {
        writer::start(
            WriterConfig {
                dir: dir.path().join("audit"),
                key: b"bench-key-0123456789abcdef".to_vec(),
                max_file_bytes: 256 << 20,
                rotate_interval: Duration::from_secs(86_400),
                capacity: 65_536,
                stdout: false,
                fail_open: false,
            },
            None,
        )
        .unwrap()
    });
    let event = || Event {
        tenant_id: "org-1a2b3c4d".into(),
        user_id: "0195f3a2-7c1e-7d4b-9a1e-5f6a7b8c9d0e".into(),
        ip_address: "10.1.2.3".into(),
        user_agent: "bench/1.0".into(),
        request_id: "01a21df6-67d0-70e2-a902-5e55df858b48".into(),
        ..Event::new(
            "request.allowed",
            json!({"method": "GET", "path": "/v1/tenants/org-1a2b3c4d/costs", "route": "routes.toml:9", "permission": "view_costs", "decision": "allow"}),
        )
    };
    let mut g = c.benchmark_group("audit_write");
    g.bench_function("one_record_written", |b| {
        b.iter(|| {
            rt.block_on(audit.record(event(), Durability::Written))
                .unwrap()
        })
    });
    g.bench_function("64_concurrent_records_written", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let a = audit.clone();
                        let e = event();
                        tokio::spawn(async move { a.record(e, Durability::Written).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();

    // An index of 1,000,000 records, 100 tenants, over 10 days.
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(store_dir.path()).unwrap());
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let record = |seq: u64| {
        let t = start + time::Duration::milliseconds(seq as i64 * 864);
        AuditPointer {
            seq,
            micros: (t.unix_timestamp_nanos() / 1000) as i64,
            file_no: 1 + seq / 100_000,
            offset: (seq % 100_000) * 600,
            len: 599,
            severity: Severity::Low,
            tenant_id: format!("org-{:08}", seq % 100),
            user_id: format!("user-{}", seq % 1000),
            event_type: if seq.is_multiple_of(10) {
                "security.access_denied"
            } else {
                "request.allowed"
            }
            .into(),
        }
    };
    // What the writer adds per batch (100 records here).
    let index_dir = tempfile::tempdir().unwrap();
    let index_store: Arc<dyn Store> = Arc::new(SledStore::open(index_dir.path()).unwrap());
    let mut next = 0u64;
    c.bench_function("audit_index/batch_of_100", |b| {
        b.iter(|| {
            let batch: Vec<AuditPointer> = (0..100).map(|i| record(next + i + 1)).collect();
            next += 100;
            rt.block_on(index_store.index_audit(&batch)).unwrap()
        })
    });
    let built = Instant::now();
    rt.block_on(async {
        let mut batch = Vec::with_capacity(10_000);
        for seq in 1..=1_000_000u64 {
            batch.push(record(seq));
            if batch.len() == 10_000 {
                store.index_audit(&batch).await.unwrap();
                batch.clear();
            }
        }
    });
    eprintln!("indexed 1,000,000 records in {:?}", built.elapsed());
    let mut g = c.benchmark_group("audit_query_1m");
    let q = |f: AuditQuery| rt.block_on(store.query_audit(&f)).unwrap();
    g.bench_function("tenant_page_100", |b| {
        b.iter(|| {
            q(AuditQuery {
                tenant_id: Some("org-00000042".into()),
                limit: 100,
                ..AuditQuery::default()
            })
        })
    });
    let mid = (start + time::Duration::days(5)).unix_timestamp() * 1_000_000;
    g.bench_function("tenant_time_range_event_filter_100", |b| {
        b.iter(|| {
            q(AuditQuery {
                tenant_id: Some("org-00000042".into()),
                event_type: Some("security.access_denied".into()),
                start_micros: Some(mid),
                limit: 100,
                ..AuditQuery::default()
            })
        })
    });
    g.bench_function("all_tenants_page_100", |b| {
        b.iter(|| {
            q(AuditQuery {
                start_micros: Some(mid),
                limit: 100,
                ..AuditQuery::default()
            })
        })
    });
    g.sample_size(10);
    g.bench_function("tenant_all_10000_records", |b| {
        b.iter(|| {
            let mut n = 0;
            let mut query = AuditQuery {
                tenant_id: Some("org-00000042".into()),
                limit: 1000,
                ..AuditQuery::default()
            };
            loop {
                let page = q(query.clone());
                n += page.entries.len();
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            assert_eq!(n, 10_000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
