//! The audit log off the request path and its queries:
//! - one record through the writer (channel → batch → chain → write → ack),
//!   alone and 64 at once; the same for proxied requests' records with the
//!   default writer (no gathering: what a response waits for);
//! - the writer's per-record work (serialize once, SHA-256);
//! - the query index: a batch append, and queries on 1,000,000 records
//!   (100 tenants): a tenant's page, a filtered page, the newest records,
//!   a tenant's 10,000 records (a report's scan) and a user filter over
//!   all of them (index work only: a page then reads its ≤ 1000 records
//!   back from the files by position).
//!
//! `cargo bench --bench audit`
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use costguard::audit::index::{Entry, Index, Query};
use costguard::audit::writer::{self, WriterConfig};
use costguard::audit::{
    Details, Durability, Event, EventType, Record, RequestDetails, Severity, subject,
};
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
                batch_interval: Duration::from_millis(2),
                stdout: false,
                fail_open: false,
            },
            None,
        )
        .unwrap()
    });
    let event = || Event {
        tenant_id: "org-1a2b3c4d".into(),
        region: "us-east-1".into(),
        user_id: "0195f3a2-7c1e-7d4b-9a1e-5f6a7b8c9d0e".into(),
        ip_address: "10.1.2.3".into(),
        user_agent: "bench/1.0".into(),
        request_id: "01a21df6-67d0-70e2-a902-5e55df858b48".into(),
        ..Event::new(
            EventType::RequestAllowed,
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

    // A proxied request's path with the default writer (no gathering):
    // hand the record over, then wait for its write, as a response does.
    let dir0 = tempfile::tempdir().unwrap();
    let (proxied, _w0) = rt.block_on(async {
        writer::start(
            WriterConfig {
                dir: dir0.path().join("audit"),
                key: b"bench-key-0123456789abcdef".to_vec(),
                max_file_bytes: 256 << 20,
                rotate_interval: Duration::from_secs(86_400),
                capacity: 65_536,
                batch_interval: Duration::ZERO,
                stdout: false,
                fail_open: false,
            },
            None,
        )
        .unwrap()
    });
    let mut g = c.benchmark_group("audit_request");
    g.bench_function("one_request_record_written", |b| {
        b.iter(|| rt.block_on(async { proxied.record_request(event()).await.unwrap() }))
    });
    g.bench_function("64_concurrent_request_records_written", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let a = proxied.clone();
                        let e = event();
                        tokio::spawn(async move { a.record_request(e).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();

    // The writer's work per record: serialize once, hash, chain.
    c.bench_function("audit_record/serialize_and_hash", |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            let e = event();
            let record = Record {
                seq: 42,
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: "2026-11-27T18:00:00.123456Z".into(),
                event_type: e.event_type.as_str().into(),
                user_id: e.user_id,
                tenant_id: e.tenant_id,
                region: Some(e.region),
                details: e.details,
                ip_address: e.ip_address,
                user_agent: e.user_agent,
                severity: Severity::Low,
                request_id: e.request_id,
                subject_digest: None,
                subject_salt: None,
                subject_seal: None,
                prev_hash: "0".repeat(64),
                hash: String::new(),
            };
            record.append_to(&mut out)
        })
    });

    // A proxied request's record (typed details), in the form written
    // before erasure existed and in the chained form (salt, subject
    // digest, hash over the line with the personal values cut out).
    let request_record = |chained: bool, salts: &mut subject::Salts| {
        let mut record = Record {
            seq: 42,
            event_id: uuid::Uuid::now_v7().to_string(),
            timestamp: "2026-11-27T18:00:00.123456Z".into(),
            event_type: "request.allowed".into(),
            user_id: "0195f3a2-7c1e-7d4b-9a1e-5f6a7b8c9d0e".into(),
            tenant_id: "org-1a2b3c4d".into(),
            region: Some("us-east-1".into()),
            details: Details::Request(Box::new(RequestDetails {
                auth_method: Some("api_key"),
                decision: "allow",
                method: http::Method::GET,
                path: "/v1/tenants/org-1a2b3c4d/costs".into(),
                permission: Some("view_costs"),
                reason: None,
                route: Some("routes.toml:9".into()),
                status: None,
            })),
            ip_address: "10.1.2.3".into(),
            user_agent: "bench/1.0".into(),
            severity: Severity::Low,
            request_id: "01a21df6-67d0-70e2-a902-5e55df858b48".into(),
            subject_digest: None,
            subject_salt: None,
            subject_seal: None,
            prev_hash: "0".repeat(64),
            hash: String::new(),
        };
        if chained {
            let salt = salts.next_salt();
            record.subject_digest = Some(subject::digest(&salt, &record));
            record.subject_salt = Some(costguard::model::hex(&salt));
        }
        record
    };
    for (name, chained) in [
        ("audit_record/request_legacy_form", false),
        ("audit_record/request_chained_form", true),
    ] {
        c.bench_function(name, |b| {
            let mut out = Vec::with_capacity(1 << 16);
            let mut salts = subject::Salts::new().unwrap();
            b.iter(|| {
                out.clear();
                request_record(chained, &mut salts).append_to(&mut out)
            })
        });
    }

    // An index of 1,000,000 records, 100 tenants, over 10 days.
    let index_dir = tempfile::tempdir().unwrap();
    let index = Index::open(index_dir.path()).unwrap();
    let h = index.hasher().clone();
    let tenants: Vec<u64> = (0..100).map(|t| h.hash(&format!("org-{t:08}"))).collect();
    let users: Vec<u64> = (0..1000).map(|u| h.hash(&format!("user-{u}"))).collect();
    let (allowed, denied) = (h.hash("request.allowed"), h.hash("security.access_denied"));
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let entry = |seq: u64| {
        let t = start + time::Duration::milliseconds(seq as i64 * 864);
        Entry {
            seq,
            micros: (t.unix_timestamp_nanos() / 1000) as i64,
            file_no: 1 + (seq / 100_000) as u32,
            offset: (seq % 100_000) * 600,
            len: 599,
            severity: Severity::Low,
            tenant: tenants[(seq % 100) as usize],
            user: users[(seq % 1000) as usize],
            event: if seq.is_multiple_of(10) {
                denied
            } else {
                allowed
            },
        }
    };
    let built = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for seq in 1..=1_000_000u64 {
        batch.push(entry(seq));
        if batch.len() == 10_000 {
            index.append(&batch).unwrap();
            batch.clear();
        }
    }
    eprintln!("indexed 1,000,000 records in {:?}", built.elapsed());
    // What the writer adds per batch (100 records here, 100 tenants).
    let mut next = 1_000_000u64;
    c.bench_function("audit_index/batch_of_100", |b| {
        b.iter(|| {
            let batch: Vec<Entry> = (0..100).map(|i| entry(next + i + 1)).collect();
            next += 100;
            index.append(&batch).unwrap()
        })
    });
    let mut g = c.benchmark_group("audit_query_1m");
    let q = |f: Query| index.query(&f).unwrap();
    let t42 = tenants[42];
    g.bench_function("tenant_page_100", |b| {
        b.iter(|| {
            q(Query {
                tenant: Some(t42),
                limit: 100,
                ..Query::default()
            })
        })
    });
    let mid = (start + time::Duration::days(5)).unix_timestamp() * 1_000_000;
    g.bench_function("tenant_time_range_event_filter_100", |b| {
        b.iter(|| {
            q(Query {
                tenant: Some(t42),
                event: Some(denied),
                start_micros: Some(mid),
                limit: 100,
                ..Query::default()
            })
        })
    });
    g.bench_function("all_tenants_page_100", |b| {
        b.iter(|| {
            q(Query {
                start_micros: Some(mid),
                limit: 100,
                ..Query::default()
            })
        })
    });
    g.sample_size(10);
    g.bench_function("tenant_all_10000_records", |b| {
        b.iter(|| {
            let page = q(Query {
                tenant: Some(t42),
                limit: usize::MAX,
                ..Query::default()
            });
            assert!(page.entries.len() >= 10_000);
        })
    });
    g.bench_function("all_1m_user_filter_scan", |b| {
        b.iter(|| {
            let mut n = 0;
            let mut query = Query {
                user: Some(users[7]),
                limit: usize::MAX,
                ..Query::default()
            };
            loop {
                let page = q(query.clone());
                n += page.entries.len();
                match page.next {
                    Some(next) => query.after_seq = Some(next),
                    None => break,
                }
            }
            assert!(n >= 1000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
