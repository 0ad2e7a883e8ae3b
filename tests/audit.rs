//! The audit log through the real binary: a record per decision and per
//! admin action, nothing lost under load or `kill -9`, tampering detected
//! by `costguard audit verify`, fail-closed when the log is unwritable.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::audit::{get, log_files, of_type, records, start, verify, viewer};
use support::{Sidecar, Upstream};

/// An admin action (recorded and synced in order after the proxied
/// records) is the barrier a test waits on before reading the files.
fn flush(cg: &Sidecar) {
    let (status, _) = cg.admin("DELETE", "/admin/v1/tenants/org-ffffffff", None);
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_decision_and_admin_action_is_recorded() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let policy = support::test_policy(dir.path());
    let cg = start(&up, &store, &support::policy_table(&policy));
    let t = cg.create_tenant("standard");
    let (key_id, key) =
        cg.create_key_with(&t, json!({"roles": ["viewer"], "rate_limit_per_minute": 2}));
    let (other_id, _) = cg.create_key(&t, &["viewer"]);
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        cg.admin(
            "DELETE",
            &format!("/admin/v1/tenants/{t}/keys/{other_id}"),
            None
        )
        .0,
        200
    );
    assert_eq!(
        cg.admin(
            "POST",
            &format!("/admin/v1/tenants/{t}/projects"),
            Some(json!({"name": "p", "budget": 5.0}))
        )
        .0,
        201
    );
    let user = format!("/admin/v1/tenants/{t}/users/alice");
    assert_eq!(
        cg.admin(
            "PUT",
            &user,
            Some(json!({"email": "a@x.example", "roles": ["analyst"]}))
        )
        .0,
        201
    );
    assert_eq!(cg.admin("DELETE", &user, None).0, 200);
    // A failed attempt is recorded too.
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        Some(json!({"roles": ["no_such_role"]})),
    );
    assert_eq!(status, 400);

    // Proxy decisions; the user agent tries to break out of its record.
    let ok = get(
        &cg,
        &format!("/v1/tenants/{t}/costs?secret=in-query"),
        &format!("X-API-Key: {key}\r\nUser-Agent: evil\\\"}} {{\"event_type\":\"forged\"}}\r\n"),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        get(
            &cg,
            &format!("/v1/tenants/{t}/costs"),
            "X-API-Key: costops_00000000000000000000000000000000\r\n"
        )
        .status,
        401
    );
    assert_eq!(
        get(
            &cg,
            &format!("/v1/tenants/{t}/costs/export"),
            &format!("X-API-Key: {key}\r\n")
        )
        .status,
        403
    );
    let costs = format!("/v1/tenants/{t}/costs");
    let with_key = format!("X-API-Key: {key}\r\n");
    assert_eq!(get(&cg, &costs, &with_key).status, 200);
    assert_eq!(get(&cg, &costs, &with_key).status, 429, "third over 2/min");

    // Custom roles, tenant changes, and live policy changes.
    let role = format!("/admin/v1/tenants/{t}/roles/auditor");
    let (status, body) = cg.admin(
        "PUT",
        &role,
        Some(json!({"description": "reads audit logs", "permissions": ["view_audit_logs"]})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(cg.admin("DELETE", &role, None).0, 200);
    let other = cg.create_tenant("free");
    let (status, _) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{other}"),
        Some(json!({"status": "suspended"})),
    );
    assert_eq!(status, 200);
    let (status, _) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{other}"),
        Some(json!({"limits": {"max_projects": 2}})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        cg.admin("DELETE", &format!("/admin/v1/tenants/{other}"), None)
            .0,
        200
    );
    std::fs::write(
        policy.join("extra.toml"),
        "[[routes]]\nmethod = \"GET\"\npath = \"/v1/extra\"\npermission = \"view_costs\"\n",
    )
    .unwrap();
    let wait_for = |event: &'static str| {
        let log = store.join("audit");
        async move {
            let started = Instant::now();
            while of_type(&records(&log), event).is_empty() {
                assert!(started.elapsed() < Duration::from_secs(10), "no {event}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("policy.reloaded").await;
    std::fs::write(policy.join("extra.toml"), "[[routes]]\nmethod = \"GET\"\n").unwrap();
    wait_for("policy.rejected").await;

    let all = records(&store.join("audit"));
    for (t, n) in [
        ("tenant.created", 2),
        ("apikey.created", 3),
        ("apikey.rotated", 1),
        ("apikey.revoked", 1),
        ("project.created", 1),
        ("user.created", 1),
        ("role.assigned", 1),
        ("user.deleted", 1),
        ("request.allowed", 2),
        ("role.defined", 1),
        ("role.deleted", 1),
        ("tenant.suspended", 1),
        ("tenant.updated", 1),
        ("tenant.deleted", 1),
        ("policy.reloaded", 1),
        ("policy.rejected", 1),
    ] {
        assert_eq!(of_type(&all, t).len(), n, "{t}: {all:#?}");
    }
    assert!(of_type(&all, "forged").is_empty());
    let failed = all
        .iter()
        .find(|r| r["details"]["outcome"] == "failure")
        .expect("the failed key creation");
    assert_eq!(failed["event_type"], "apikey.created");
    assert_eq!(failed["details"]["error"], "invalid_request");
    let denied = of_type(&all, "security.access_denied");
    let reasons: Vec<&str> = denied
        .iter()
        .map(|r| r["details"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["invalid_key", "forbidden", "rate_limited"],
        "{denied:#?}"
    );
    assert!(denied.iter().all(|r| r["severity"] == "HIGH"));
    let allowed = of_type(&all, "request.allowed")[0];
    assert_eq!(allowed["tenant_id"], t.as_str());
    assert_eq!(allowed["user_id"], key_id.as_str());
    assert_eq!(allowed["ip_address"], "127.0.0.1");
    assert_eq!(allowed["details"]["path"], format!("/v1/tenants/{t}/costs"));
    assert_eq!(allowed["details"]["permission"], "view_costs");
    assert_eq!(allowed["details"]["decision"], "allow");
    assert!(allowed["user_agent"].as_str().unwrap().contains("forged"));
    assert!(!allowed["request_id"].as_str().unwrap().is_empty());
    let revoked = of_type(&all, "apikey.revoked")[0];
    assert_eq!(revoked["severity"], "HIGH");
    assert_eq!(revoked["user_id"], "admin-token");
    assert_eq!(revoked["details"]["target"]["key_id"], other_id.as_str());
    // Never a secret, never the query string.
    let text = std::fs::read_to_string(store.join("audit/audit-000001.jsonl")).unwrap();
    assert!(
        !text.contains(&key[8..]),
        "a key secret is in the audit log"
    );
    assert!(!text.contains(support::ADMIN_TOKEN));
    assert!(!text.contains("in-query"));

    let (code, out) = verify(&store.join("audit"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK") && out.contains("head signature verified"),
        "{out}"
    );
}

/// Copies `from` into a fresh directory named `audit` (beside a copy of
/// the key), for one tampering case.
fn copy_log(from: &Path, to: &Path) -> PathBuf {
    let audit = to.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            continue; // the query index
        }
        std::fs::copy(e.path(), audit.join(e.file_name())).unwrap();
    }
    std::fs::copy(
        from.parent().unwrap().join("audit-hmac.key"),
        to.join("audit-hmac.key"),
    )
    .unwrap();
    audit
}

fn rewrite(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_is_detected() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    // Small files and batches: several rotations (a batch is never split).
    let mut cg = start(
        &up,
        &store,
        "[audit]\nmax_file_bytes = 4096\nbatch_interval = \"1ms\"\n",
    );
    let (_, key) = viewer(&cg, 1000);
    for _ in 0..40 {
        assert_eq!(
            get(&cg, "/v1/x", &format!("X-API-Key: {key}\r\n")).status,
            200
        );
    }
    cg.terminate();
    assert!(cg.wait(Duration::from_secs(10)).success());
    let log = store.join("audit");
    let files = log_files(&log).len();
    assert!(files >= 4, "rotation made {files} files");
    assert_eq!(verify(&log).0, 0, "{}", verify(&log).1);

    let case = |name: &str, damage: &dyn Fn(&Path), expect: &str| {
        let work = tempfile::tempdir().unwrap();
        let copy = copy_log(&log, work.path());
        damage(&copy);
        let (code, out) = verify(&copy);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.starts_with("BROKEN") && out.contains(expect),
            "{name}: {out}"
        );
    };
    case(
        "flipped byte",
        &|d| {
            rewrite(&d.join("audit-000002.jsonl"), |t| {
                t.replacen("GET", "PUT", 1)
            })
        },
        "audit-000002.jsonl:1: hash mismatch",
    );
    case(
        "deleted middle record",
        &|d| {
            rewrite(&d.join("audit-000002.jsonl"), |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.remove(1);
                lines.join("\n") + "\n"
            })
        },
        "audit-000002.jsonl:2: sequence jumps",
    );
    case(
        "truncated tail",
        &|d| {
            let last = support_last_file(d);
            rewrite(&last, |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.pop();
                lines.join("\n") + if lines.is_empty() { "" } else { "\n" }
            })
        },
        "audit.head: the log ends at record",
    );
    case(
        "deleted middle file",
        &|d| std::fs::remove_file(d.join("audit-000002.jsonl")).unwrap(),
        "audit-000002.jsonl: file missing",
    );
    case(
        "deleted last file",
        &|d| std::fs::remove_file(support_last_file(d)).unwrap(),
        "audit.head",
    );
    // Every file and the head removed, or the files removed and the head
    // emptied: no longer an intact empty log.
    let every_file = |d: &Path| {
        for f in log_files(d) {
            std::fs::remove_file(f).unwrap();
        }
    };
    case(
        "every file and the head deleted",
        &|d| {
            every_file(d);
            std::fs::remove_file(d.join("audit.head")).unwrap();
        },
        "audit.head: head missing",
    );
    case(
        "every file deleted, the head emptied",
        &|d| {
            every_file(d);
            std::fs::write(d.join("audit.head"), "").unwrap();
        },
        "audit.head: the head is empty",
    );
    // The record's fields unchanged, its line not: a field the record does
    // not know, white space, an escape.
    for (name, edit) in [
        ("added field", r#"{"granted":true,"seq":"#),
        ("white space", r#"{ "seq":"#),
    ] {
        case(
            name,
            &|d| {
                rewrite(&d.join("audit-000002.jsonl"), |t| {
                    t.replacen(r#"{"seq":"#, edit, 1)
                })
            },
            "audit-000002.jsonl:1: the line is not as written",
        );
    }
    case(
        "escaped character",
        &|d| {
            rewrite(&d.join("audit-000002.jsonl"), |t| {
                t.replacen("/v1/x", r"\/v1/x", 1)
            })
        },
        "audit-000002.jsonl:1: the line is not as written",
    );
    case(
        "blank line",
        &|d| {
            rewrite(&d.join("audit-000002.jsonl"), |t| {
                t.replacen('\n', "\n\n", 1)
            })
        },
        "audit-000002.jsonl:2: empty line",
    );
    case(
        "forged head",
        &|d| {
            rewrite(&d.join("audit.head"), |t| {
                t.replacen("\"seq\":", "\"seq\":1", 1)
            })
        },
        "signature does not verify",
    );
}

fn support_last_file(dir: &Path) -> PathBuf {
    log_files(dir).pop().unwrap()
}

async fn hammer(url: String, key: String, n: usize, conns: usize) -> (usize, usize) {
    let client = support::client();
    let tasks: Vec<_> = (0..conns)
        .map(|w| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let (mut ok, mut other) = (0, 0);
                for _ in (w..n).step_by(conns) {
                    let req = Request::get(&url)
                        .header("x-api-key", &key)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match client.request(req).await {
                        Ok(resp) => {
                            if resp.status() == 200 {
                                ok += 1;
                            } else {
                                other += 1;
                            }
                            let _ = resp.into_body().collect().await;
                        }
                        Err(_) => {
                            // The proxy is gone (the kill -9 test): stop.
                            other += 1;
                            break;
                        }
                    }
                }
                (ok, other)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        total.0 += a;
        total.1 += b;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_concurrent_requests_are_all_recorded() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let cg = start(&up, &store, "");
    let (_, key) = viewer(&cg, 1_000_000);
    let (ok, other) = hammer(cg.url("/v1/load"), key, 10_000, 64).await;
    assert_eq!((ok, other), (10_000, 0));
    flush(&cg);
    let all = records(&store.join("audit"));
    assert_eq!(of_type(&all, "request.allowed").len(), 10_000);
    assert_eq!(up.count(), 10_000);
    assert_eq!(verify(&store.join("audit")).0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_under_load_loses_nothing_acknowledged_and_at_most_the_last_second() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let mut cg = start(&up, &store, "");
    let (t, key) = viewer(&cg, 1_000_000);
    let load = tokio::spawn(hammer(cg.url("/v1/load"), key, 1_000_000, 32));
    // Admin actions acknowledged while the load runs.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (status, body) = cg.admin(
            "POST",
            &format!("/admin/v1/tenants/{t}/keys"),
            Some(json!({"description": format!("k{i}")})),
        );
        assert_eq!(status, 201);
        acknowledged.push(body["key_id"].as_str().unwrap().to_string());
    }
    // The bound: records queued more than a second before the crash are
    // on disk. The upstream's count is the requests forwarded so far, each
    // queued its record first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forwarded_a_second_before = up.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cg.kill9();
    let (ok, _) = load.await.unwrap();
    assert!(ok > 100, "the load ran ({ok} answered)");
    let log = store.join("audit");
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "after kill -9: {out}");
    let all = records(&log);
    let created: Vec<&str> = of_type(&all, "apikey.created")
        .iter()
        .filter_map(|r| r["details"]["target"]["key_id"].as_str())
        .collect();
    for id in &acknowledged {
        assert!(
            created.contains(&id.as_str()),
            "acknowledged key {id} has no record"
        );
    }
    let allowed = of_type(&all, "request.allowed").len();
    assert!(
        allowed >= forwarded_a_second_before,
        "{allowed} records, but {forwarded_a_second_before} requests were forwarded a second before the crash"
    );
    println!(
        "kill -9 after {ok} answered requests: {allowed} request records on disk, {forwarded_a_second_before} forwarded a second before"
    );
    // The chain continues after a restart.
    let cg = start(&up, &store, "");
    assert_eq!(cg.admin("GET", "/admin/v1/tenants", None).0, 200);
    assert_eq!(
        cg.admin(
            "DELETE",
            &format!("/admin/v1/tenants/{t}/keys/{}", acknowledged[0]),
            None
        )
        .0,
        200
    );
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "after restart: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_log_fails_closed_or_open_as_configured() {
    for fail_open in [false, true] {
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data");
        // The next file the writer will rotate to cannot be created (a
        // directory is in its place; permissions do not stop root).
        std::fs::create_dir_all(store.join("audit/audit-000002.jsonl")).unwrap();
        let cg = start(
            &up,
            &store,
            &format!("[audit]\nmax_file_bytes = 4096\nfail_open = {fail_open}\n"),
        );
        let (t, key) = viewer(&cg, 1000);
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(get(&cg, "/v1/x", &format!("X-API-Key: {key}\r\n")).status);
        }
        let seen = up.count();
        if fail_open {
            // A barrier: an admin action's record queues behind every
            // request record above, and its answer (503 here) comes once
            // its batch was handled (written, or given up).
            cg.admin("DELETE", "/admin/v1/tenants/org-ffffffff", None);
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
            let (_, _, metrics) = support::get(&format!("http://{}/metrics", cg.admin)).await;
            let failed_open: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix("costguard_audit_failed_open_total "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(failed_open > 0, "{metrics}");
            assert_eq!(
                failed_open as usize
                    + of_type(&records(&store.join("audit")), "request.allowed").len(),
                30
            );
        } else {
            let refused = statuses.iter().filter(|s| **s == 503).count();
            assert!(refused > 0, "{statuses:?}");
            assert_eq!(
                refused + seen,
                30,
                "every request either recorded and forwarded, or refused: {statuses:?}"
            );
            let resp = get(&cg, "/v1/x", &format!("X-API-Key: {key}\r\n"));
            assert_eq!(support::error_code(&resp.body), "audit_unavailable");
            // An admin action whose record cannot be written either: it is
            // answered 503 and its record held for the writer's retry,
            // which never makes proxied requests wait: they are still
            // refused at once (a retry under the shared lock hung them).
            let (status, _) = cg.admin(
                "POST",
                &format!("/admin/v1/tenants/{t}/projects"),
                Some(json!({"name": "held", "budget": 1.0})),
            );
            assert_eq!(status, 503);
            for _ in 0..3 {
                // (A request stuck behind the retry would end at the test
                // client's read timeout without a status.)
                let resp = get(&cg, "/v1/x", &format!("X-API-Key: {key}\r\n"));
                assert_eq!(resp.status, 503, "refused at once: {}", resp.body);
            }
            let (status, _) = cg.admin("GET", "/admin/v1/tenants", None);
            assert_eq!(status, 200, "the admin port answers reads meanwhile");
        }
    }
}

fn admin_get(cg: &Sidecar, path: &str, credential: &str) -> (u16, Value) {
    cg.admin_call("GET", path, credential, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_filter_page_and_stay_within_the_tenant() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let cg = start(&up, &store, "");
    let a = cg.create_tenant("enterprise");
    let b = cg.create_tenant("enterprise");
    let (a_admin_id, a_admin) = cg.create_key(&a, &["admin"]);
    let (_, a_viewer) = cg.create_key(&a, &["viewer"]);
    let (_, b_key) = cg.create_key(&b, &["admin"]);
    for _ in 0..3 {
        assert_eq!(
            get(
                &cg,
                &format!("/v1/tenants/{a}/costs"),
                &format!("X-API-Key: {a_admin}\r\n")
            )
            .status,
            200
        );
    }
    assert_eq!(
        get(
            &cg,
            &format!("/v1/tenants/{b}/costs"),
            &format!("X-API-Key: {a_admin}\r\n")
        )
        .status,
        403
    );
    for _ in 0..2 {
        assert_eq!(
            get(
                &cg,
                &format!("/v1/tenants/{b}/costs"),
                &format!("X-API-Key: {b_key}\r\n")
            )
            .status,
            200
        );
    }
    // Proxied requests do not wait for their records: wait for the writer.
    flush(&cg);
    let all = records(&store.join("audit"));
    let of_a: Vec<&Value> = all
        .iter()
        .filter(|r| r["tenant_id"] == a.as_str())
        .collect();

    // system_admin: one tenant, filters, pages.
    let root = support::ADMIN_TOKEN;
    let (status, body) = admin_get(
        &cg,
        &format!("/admin/v1/audit?tenant_id={a}&limit=1000"),
        root,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["count"].as_u64().unwrap() as usize,
        of_a.len(),
        "{body}"
    );
    assert!(
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant_id"] == a.as_str())
    );
    let (_, body) = admin_get(
        &cg,
        &format!("/admin/v1/audit?tenant_id={a}&event_type=request.allowed"),
        root,
    );
    assert_eq!(body["count"], 3);
    let (_, body) = admin_get(
        &cg,
        &format!(
            "/admin/v1/audit?tenant_id={a}&event_type=security.access_denied&user_id={a_admin_id}"
        ),
        root,
    );
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["records"][0]["details"]["reason"], "tenant_mismatch");
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = admin_get(
            &cg,
            &format!("/admin/v1/audit?tenant_id={a}&limit=2{cursor}"),
            root,
        );
        for r in page["records"].as_array().unwrap() {
            seen.push(r["seq"].as_u64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<u64> = of_a.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, expected, "pages cover every record once, in order");
    let (_, body) = admin_get(
        &cg,
        &format!("/admin/v1/audit?tenant_id={a}&end=2000-01-01T00:00:00Z"),
        root,
    );
    assert_eq!(body["count"], 0);
    // Without a tenant filter, system_admin sees every tenant's records
    // (and those of no tenant).
    let (_, body) = admin_get(&cg, "/admin/v1/audit?limit=1000", root);
    let tenants: std::collections::BTreeSet<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tenant_id"].as_str().unwrap())
        .collect();
    assert!(
        tenants.contains(a.as_str()) && tenants.contains(b.as_str()),
        "{tenants:?}"
    );
    assert!(
        body["count"].as_u64().unwrap() as usize >= all.len(),
        "system_admin sees all"
    );
    assert_eq!(
        admin_get(&cg, "/admin/v1/audit?start=yesterday", root).0,
        400
    );
    assert_eq!(admin_get(&cg, "/admin/v1/audit?limit=0", root).0, 400);

    // A tenant's admin: own tenant only.
    let (status, body) = admin_get(&cg, "/admin/v1/audit?limit=1000", &a_admin);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant_id"] == a.as_str())
    );
    let (status, body) = admin_get(&cg, &format!("/admin/v1/audit?tenant_id={b}"), &a_admin);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_mismatch"))
    );
    assert_eq!(
        admin_get(&cg, "/admin/v1/audit", &a_viewer).0,
        403,
        "viewer lacks view_audit_logs"
    );

    // The report's figures are the events generated.
    let (status, report) = admin_get(
        &cg,
        &format!("/admin/v1/audit/report?tenant_id={a}&days=1"),
        &a_admin,
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["total_events"].as_u64().unwrap() as usize,
        of_a.len()
    );
    let high = of_a.iter().filter(|r| r["severity"] == "HIGH").count();
    assert_eq!(
        report["high_severity_events"].as_u64().unwrap() as usize,
        high
    );
    let dist = report["event_distribution"].as_array().unwrap();
    let allowed = dist
        .iter()
        .find(|d| d["event_type"] == "request.allowed")
        .unwrap();
    assert_eq!(allowed["events"], 3);
    assert_eq!(
        report["most_active_users"][0]["user_id"],
        a_admin_id.as_str()
    );
    assert_eq!(
        report["recent_high_severity"].as_array().unwrap().len(),
        high.min(5)
    );
}

/// Retention through the library with an injected clock (the pass runs as
/// if two days had passed), on a real store and real files.
#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_the_index_and_old_files_and_verify_still_passes() {
    use costguard::audit::index::{Index, Query};
    use costguard::audit::writer::{self, WriterConfig};
    use costguard::audit::{Durability, Event, EventType, files, retention};
    use costguard::model::Tier;
    use costguard::store::Store;
    use costguard::store::conformance::sample_tenant;
    use costguard::store::sled::SledStore;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).unwrap());
    let mut tenant = sample_tenant(Tier::Free);
    tenant.limits.retention_days = 1;
    store.insert_tenant(&tenant).await.unwrap();
    let key = b"retention-test-key-0123456789".to_vec();
    std::fs::write(dir.path().join("audit-hmac.key"), &key).unwrap();
    let index = Arc::new(Index::open(&log).unwrap());
    let (audit, _writer) = writer::start(
        WriterConfig {
            dir: log.clone(),
            key: key.clone(),
            max_file_bytes: 4096,
            rotate_interval: Duration::from_secs(3600),
            capacity: 1024,
            batch_interval: Duration::from_millis(2),
            stdout: false,
            fail_open: false,
        },
        Some(index.clone()),
    )
    .unwrap();
    for i in 0..40 {
        let event = Event {
            tenant_id: tenant.tenant_id.clone(),
            region: tenant.settings.data_region.clone(),
            user_id: format!("user-{}", i % 3),
            ..Event::new(EventType::RequestAllowed, json!({"i": i}))
        };
        audit.record(event, Durability::Written).await.unwrap();
    }
    let files_before = files::files(&log).unwrap().len();
    assert!(files_before >= 4, "{files_before} files");
    let in_index = |t: &str| -> Vec<String> {
        index
            .query(&Query {
                tenant: Some(index.hasher().hash(t)),
                limit: 1000,
                ..Query::default()
            })
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                costguard::audit::index::read_record(&log, e)
                    .unwrap()
                    .event_type
            })
            .collect()
    };
    // Acknowledged records are written and indexed.
    assert_eq!(in_index(&tenant.tenant_id).len(), 40);

    // Two days later.
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
        + 2 * 86_400 * 1_000_000;
    retention::purge(&store, &audit, &key, now).await.unwrap();
    let left = in_index(&tenant.tenant_id);
    assert_eq!(
        left,
        ["audit.purged"],
        "only the purge's own record is left"
    );
    let files_after = files::files(&log).unwrap().len();
    assert!(
        files_after < files_before,
        "{files_after} of {files_before} files left"
    );
    let all = records(&log);
    assert_eq!(
        of_type(&all, "audit.purged").len(),
        2,
        "index purge and file removal"
    );
    assert!(log.join("audit.anchor").exists());
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("head signature verified"), "{out}");
    // Without the anchor the cut shows.
    let work = tempfile::tempdir().unwrap();
    let copy = copy_log(&log, work.path());
    std::fs::remove_file(copy.join("audit.anchor")).unwrap();
    let (code, out) = verify(&copy);
    assert_eq!(code, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_fields_stay_inside_one_record_and_stdout_gets_a_copy() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let cg = start(&up, &store, "[audit]\nstdout = true\n");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let ua = r#"x"}, {"event_type": "forged", "severity": "LOW"} \" \\"#;
    let path = "/v1/%22%7D%7B%22event_type%22:%22forged%22%7D/'";
    let with = |k: &str| format!("X-API-Key: {k}\r\nUser-Agent: {ua}\r\n");
    assert_eq!(get(&cg, path, &with(&key)).status, 200);
    assert_eq!(
        get(&cg, path, &with(&format!("costops_{}", "1".repeat(32)))).status,
        401
    );
    // Encoded CR/LF in the path is refused (400), and that denial recorded.
    let crlf = "/v1/%0D%0A%7B%22event_type%22:%22forged%22%7D";
    assert_eq!(get(&cg, crlf, &with(&key)).status, 400);
    flush(&cg);
    let text = std::fs::read_to_string(store.join("audit/audit-000001.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(parsed.iter().all(|r| r["event_type"] != "forged"));
    let hostile: Vec<&Value> = parsed.iter().filter(|r| r["user_agent"] == ua).collect();
    assert_eq!(
        hostile.len(),
        3,
        "the user agent kept byte for byte, in its own field"
    );
    assert!(
        hostile
            .iter()
            .all(|r| { r["details"]["path"].as_str().unwrap().starts_with("/v1/%") })
    );
    // The collector's copy on stdout: the same records, one per line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = cg.logs();
    let copies = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event_type").is_some() && v.get("hash").is_some())
        .count();
    assert_eq!(copies, parsed.len(), "{logs}");
    assert_eq!(verify(&store.join("audit")).0, 0);
}
