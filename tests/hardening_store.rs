//! What costguard keeps on disk is its own user's alone, and the admin
//! API's heavy reads are bounded (issue 15 §5).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{ADMIN_TOKEN, Sidecar, Upstream, config_for, send, sidecar};

/// Every file and directory under `root` with group or other bits.
fn shared_with_others(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!(
                "{} {:o}",
                p.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_and_audit_files_are_private() {
    let up = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("data");
    // A store left world-readable by an older version is tightened too.
    std::fs::create_dir_all(store.join("audit")).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(store.join("audit").join("notes.txt"), "old").unwrap();
    std::fs::set_permissions(
        store.join("audit").join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cg = Sidecar::start_with_store(&config_for(&up.url(), ""), &[], Some(&store));
    let t = cg.tenant_and_key();
    let (status, _, _) =
        support::get_as(&cg.url(&format!("/v1/tenants/{}/costs", t.tenant)), &t.key).await;
    assert_eq!(status, 200);
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{}/projects", t.tenant),
        Some(serde_json::json!({"name": "p", "budget": 10.0})),
    );
    assert_eq!(status, 201);
    let files = std::fs::read_dir(&store).unwrap().count();
    assert!(files > 1, "the store wrote files");
    assert!(
        store.join("audit").read_dir().unwrap().count() > 1,
        "and the audit log"
    );
    let open = shared_with_others(&store);
    assert!(open.is_empty(), "readable by others: {open:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_reports_run_a_bounded_number_at_once() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[admin]\nmax_concurrent_reports = 1\n");
    let t = cg.tenant_and_key();
    // Some records to report on.
    let costs = cg.url(&format!("/v1/tenants/{}/costs", t.tenant));
    for _ in 0..200 {
        support::get_as(&costs, &t.key).await;
    }
    let report = format!(
        "http://{}/admin/v1/audit/report?tenant_id={}&days=1",
        cg.admin, t.tenant
    );
    // Bursts of concurrent reports against one slot: some are refused with
    // 429 and Retry-After, the rest answer in full. Bounded: at most 20
    // bursts of 16.
    let mut refused = 0;
    let mut answered = 0;
    for _ in 0..20 {
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let report = report.clone();
            burst.spawn(async move {
                send(
                    "GET",
                    &report,
                    &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                    String::new(),
                )
                .await
            });
        }
        while let Some(r) = burst.join_next().await {
            let (status, headers, body) = r.unwrap();
            match status.as_u16() {
                200 => {
                    answered += 1;
                    assert!(body.contains("total_events"), "{body}");
                }
                429 => {
                    refused += 1;
                    assert_eq!(headers["retry-after"], "1");
                    assert_eq!(support::error_code(&body), "busy", "{body}");
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(answered > 0);
    assert!(refused > 0, "16 reports at once never met the bound of 1");
}
