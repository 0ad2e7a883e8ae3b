//! Reading the audit log a test's costguard wrote.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{RawResponse, Sidecar, Upstream, cli, config_for, raw_request};

/// `dir`'s log files (`*.jsonl`), oldest first.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Every record in `dir`'s log files, in order.
pub fn records(dir: &Path) -> Vec<Value> {
    log_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("one JSON record per line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The records of one event type.
pub fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event_type"] == t).collect()
}

/// `costguard audit verify DIR`: (exit code, stdout).
pub fn verify(dir: &Path) -> (i32, String) {
    let out = cli(["audit", "verify"]).arg(dir).run();
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// costguard in front of `up` with its store (and audit log) in `store`.
pub fn start(up: &Upstream, store: &Path, extra: &str) -> Sidecar {
    Sidecar::start_with_store(&config_for(&up.url(), extra), &[], Some(store))
}

/// A fresh enterprise tenant and a viewer key of it that may send
/// `per_minute` requests a minute: (tenant id, key).
pub fn viewer(cg: &Sidecar, per_minute: u64) -> (String, String) {
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key_with(
        &t,
        serde_json::json!({"roles": ["viewer"], "rate_limit_per_minute": per_minute}),
    );
    (t, key)
}

/// `GET path` on the proxy over a fresh connection, with extra header lines.
pub fn get(cg: &Sidecar, path: &str, headers: &str) -> RawResponse {
    raw_request(
        cg.proxy,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{headers}\r\n").as_bytes(),
    )
}
