use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::audit::index::{Query, read_record};
use crate::audit::writer::{self, HEAD, Head, WriterConfig};
use crate::audit::{Details, Durability, Event, EventType, GENESIS, RequestDetails, Severity};

const KEY: &[u8] = b"erasure-unit-test-key-0123456789";

fn start(dir: &Path, max_file_bytes: u64) -> (Audit, writer::Writer, Arc<Index>) {
    let index = Arc::new(Index::open(dir).unwrap());
    let (audit, w) = writer::start(
        WriterConfig {
            max_file_bytes,
            capacity: 1024,
            ..WriterConfig::for_test(dir, KEY)
        },
        Some(index.clone()),
    )
    .unwrap();
    (audit, w, index)
}

fn admin_event(user: &str, email: &str) -> Event {
    Event {
        tenant_id: "org-u".into(),
        user_id: "admin-token".into(),
        ip_address: "10.9.9.9".into(),
        ..Event::new(
            EventType::UserCreated,
            json!({"action": format!("PUT /admin/v1/tenants/org-u/users/{user}"),
                   "actor": "admin-token", "target": {"user_id": user},
                   "changes": {"email": email}}),
        )
    }
}

fn request_event(user: &str) -> Event {
    Event {
        tenant_id: "org-u".into(),
        user_id: user.into(),
        ip_address: "10.1.1.1".into(),
        user_agent: format!("{user}-agent"),
        details: Details::Request(Box::new(RequestDetails {
            auth_method: Some("jwt"),
            decision: "allow",
            method: http::Method::GET,
            path: "/v1/tenants/org-u/costs".into(),
            permission: Some("view_costs"),
            reason: None,
            route: Some("routes.toml:1".into()),
            status: None,
        })),
        ..Event::new(EventType::RequestAllowed, serde_json::Value::Null)
    }
}

/// A log written before the subject fields existed: whole-line hashes.
fn write_legacy(dir: &Path, user: &str, n: u64) {
    fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    let mut prev = GENESIS.to_string();
    for seq in 1..=n {
        let r = Record {
            seq,
            event_id: format!("legacy-{seq}"),
            timestamp: format!("2026-01-01T00:00:{seq:02}Z"),
            event_type: "request.allowed".into(),
            user_id: user.into(),
            tenant_id: "org-u".into(),
            region: None,
            details: Details::Json(json!({"path": "/v1/x"})),
            ip_address: "10.0.0.1".into(),
            user_agent: "old".into(),
            severity: Severity::Low,
            request_id: String::new(),
            subject_digest: None,
            subject_salt: None,
            subject_seal: None,
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        prev = r.append_to(&mut out);
        out.push(b'\n');
    }
    fs::write(dir.join("audit-000001.jsonl"), &out).unwrap();
    let head = Head::signed(KEY, "audit-000001.jsonl".into(), n, prev);
    fs::write(dir.join(HEAD), head.block()).unwrap();
}

/// A log written in the old form verifies; the writer continues it in the
/// new form; erasure pseudonymises the new records, leaves (and counts)
/// the old ones, and the whole log still verifies, with and without key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_log_verifies_and_is_continued_and_erased_around() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    write_legacy(&dir, "carol", 5);
    let report = crate::audit::verify::verify(&dir, Some(KEY)).unwrap();
    assert_eq!((report.records, report.erased), (5, 0));
    let (audit, _w, index) = start(&dir, 2048);
    for _ in 0..10 {
        audit.record_request(request_event("carol")).await.unwrap();
        audit.record_request(request_event("dan")).await.unwrap();
    }
    audit
        .record(admin_event("carol", "carol@x.example"), Durability::Written)
        .await
        .unwrap();
    audit.flush().await.unwrap();
    assert!(files(&dir).unwrap().len() >= 3);
    let outcome = audit
        .erase_user("org-u", "carol", Some("carol@x.example"))
        .await
        .unwrap();
    assert_eq!((outcome.records, outcome.legacy), (11, 5));
    assert_eq!(outcome.pseudonym, subject::pseudonym(KEY, "org-u", "carol"));
    for key in [Some(KEY), None] {
        let report = crate::audit::verify::verify(&dir, key).unwrap();
        assert_eq!((report.records, report.erased), (26, 11), "{key:?}");
    }
    let text: String = files(&dir)
        .unwrap()
        .iter()
        .map(|(_, p)| fs::read_to_string(p).unwrap())
        .collect();
    // Only the five legacy lines still name carol.
    assert_eq!(text.lines().filter(|l| l.contains("carol")).count(), 5);
    assert_eq!(text.lines().filter(|l| l.contains("dan-agent")).count(), 10);
    // Every index entry still reads its record back.
    let all = index
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .entries;
    assert_eq!(all.len(), 26);
    for e in &all {
        assert!(read_record(&dir, e).is_some(), "{e:?}");
    }
    // Run again: nothing changes.
    let again = audit
        .erase_user("org-u", "carol", Some("carol@x.example"))
        .await
        .unwrap();
    assert_eq!((again.records, again.files, again.legacy), (0, 0, 5));
}

/// Requests keep appending (on their own path, under the writer's lock)
/// while the erasure rewrites the files: nothing is lost, the chain
/// verifies, the index reads every record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_runs_beside_the_live_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (audit, _w, index) = start(&dir, 8192);
    for i in 0..200 {
        let who = if i % 2 == 0 { "erin" } else { "frank" };
        audit.record_request(request_event(who)).await.unwrap();
    }
    audit.flush().await.unwrap();
    let writer = {
        let audit = audit.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let who = if i % 2 == 0 { "erin" } else { "frank" };
                audit.record_request(request_event(who)).await.unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let outcome = audit.erase_user("org-u", "erin", None).await.unwrap();
    writer.await.unwrap();
    audit.flush().await.unwrap();
    assert!(outcome.records >= 100, "{outcome:?}");
    let report = crate::audit::verify::verify(&dir, Some(KEY)).unwrap();
    assert_eq!(report.records, 600);
    assert_eq!(report.erased, outcome.records);
    audit.catch_up();
    let all = index
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .entries;
    assert_eq!(all.len(), 600);
    for e in &all {
        assert!(read_record(&dir, e).is_some(), "{e:?}");
    }
    // The records written after the erasure name erin as they should (she
    // was not deleted here); a second erasure takes them too.
    let second = audit.erase_user("org-u", "erin", None).await.unwrap();
    assert_eq!(outcome.records + second.records, 300);
    assert_eq!(
        crate::audit::verify::verify(&dir, None).unwrap().erased,
        300
    );
}

/// An index left stale by a crash mid-erasure is rebuilt at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_index_is_rebuilt_from_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    {
        let (audit, w, index) = start(&dir, 4096);
        for _ in 0..30 {
            audit.record_request(request_event("gina")).await.unwrap();
        }
        audit.flush().await.unwrap();
        index.mark_stale().unwrap();
        // The crash: a file rewritten, its entries not.
        let (_, first) = files(&dir).unwrap()[0].clone();
        let text = fs::read_to_string(&first).unwrap();
        fs::write(&first, format!("{}\n{text}", " ".repeat(7)).trim_start()).unwrap();
        drop(audit);
        w.join();
    }
    let index = Index::open(&dir).unwrap();
    assert!(!dir.join("index").join("stale").exists());
    let all = index
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .entries;
    assert_eq!(all.len(), 30);
    for e in &all {
        assert!(read_record(&dir, e).is_some(), "{e:?}");
    }
}
