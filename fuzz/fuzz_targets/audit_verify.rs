//! `costguard audit verify` (`audit::verify::verify(dir, key)`), on a log
//! written by the real writer (several files, a signed head), then altered
//! by the fuzzer: bytes flipped, inserted, removed, files cut, removed or
//! swapped.
//!
//! Property: whenever `verify` reports the log intact (with the key), the
//! log files are byte for byte the ones written (same names, same bytes)
//! and the head names what the written head named (its padding is not
//! covered: it is read as JSON). So no removed, added, reordered or
//! re-encoded record, no removed file and no emptied directory verifies.
//!
//! Only the public `verify` and the writer's public API are used, so this
//! target survives changes inside `src/audit*`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use costguard::audit::files;
use costguard::audit::writer::{self, HEAD, Head, WriterConfig};
use costguard::audit::{Durability, Event, EventType, Record, verify};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-audit-key-0123456789abcdef0";

struct Golden {
    files: Vec<(String, Vec<u8>)>,
    records: Vec<Record>,
    scratch: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

/// Every record of the log files (as `audit::files` lists them), in order.
fn read_records(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for (_, path) in files::files(dir).unwrap() {
        for line in std::fs::read(&path).unwrap().split(|b| *b == b'\n') {
            if !line.is_empty() {
                out.push(serde_json::from_slice(line).expect("verify read it"));
            }
        }
    }
    out
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (audit, w) = writer::start(
                WriterConfig {
                    dir: log.clone(),
                    key: KEY.to_vec(),
                    max_file_bytes: 1500,
                    rotate_interval: Duration::from_secs(3600),
                    capacity: 64,
                    batch_interval: Duration::from_millis(1),
                    stdout: false,
                    fail_open: false,
                },
                None,
            )
            .unwrap();
            for i in 0..9 {
                let event = Event {
                    tenant_id: format!("org-{i:08}"),
                    user_id: format!("user-{}", i % 3),
                    ip_address: "192.0.2.7".into(),
                    user_agent: "fuzz/1 \"quoted\" \\ é".into(),
                    request_id: format!("req-{i}"),
                    ..Event::new(
                        if i % 2 == 0 {
                            EventType::RequestAllowed
                        } else {
                            EventType::AdminAction
                        },
                        serde_json::json!({"i": i, "path": "/v1/x", "nested": {"b": [1, 2], "a": "\u{1}"}}),
                    )
                };
                audit.record(event, Durability::Synced).await.unwrap();
            }
            drop(audit);
            w.join();
        });
        verify::verify(&log, Some(KEY)).expect("the golden log verifies");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        let records = read_records(&log);
        assert!(records.len() == 9 && files.len() >= 3, "{files:?}");
        Golden {
            files,
            records,
            scratch: tempfile::tempdir().unwrap(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let g = golden();
    let mut files = g.files.clone();
    for op in data.chunks(4) {
        let [which, kind, a, b] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let n = files.len();
        if n == 0 {
            break;
        }
        let f = which as usize % n;
        let bytes = &mut files[f].1;
        let at = (a as usize * 256 + b as usize) % (bytes.len() + 1);
        match kind % 8 {
            0 | 1 if at < bytes.len() => bytes[at] = b,
            2 => bytes.insert(at, b),
            3 if at < bytes.len() => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            5 => {
                files.remove(f);
            }
            6 => {
                let other = b as usize % n;
                let (x, y) = (files[f].1.clone(), files[other].1.clone());
                files[f].1 = y;
                files[other].1 = x;
            }
            _ => {
                // Duplicate a line elsewhere (a replayed record).
                let line: Vec<u8> = bytes
                    .split(|c| *c == b'\n')
                    .nth(a as usize % 4)
                    .unwrap_or_default()
                    .to_vec();
                let at = at.min(bytes.len());
                bytes.splice(at..at, line.into_iter().chain([b'\n']));
            }
        }
    }
    let dir = g.scratch.path();
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    if verify::verify(dir, Some(KEY)).is_err() {
        return;
    }
    // Intact by verify: then it must be what was written.
    let names: Vec<&String> = files.iter().map(|(n, _)| n).collect();
    let want: Vec<&String> = g.files.iter().map(|(n, _)| n).collect();
    assert_eq!(names, want, "files added or removed, and verify is OK");
    for ((name, bytes), (_, written)) in files.iter().zip(&g.files) {
        if name == HEAD {
            let read = |b: &[u8]| serde_json::from_slice::<Head>(b).expect("verify read it");
            assert_eq!(read(bytes), read(written), "another head, and verify is OK");
        } else {
            assert!(bytes == written, "{name} differs from what was written, and verify is OK");
        }
    }
    assert_eq!(read_records(dir), g.records);
});
