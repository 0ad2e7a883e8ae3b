//! The seed's business events through the real binary: a route's
//! `audit_event` is recorded once the upstream answered (the failure
//! instead when it answered with an error), budget alerts from the cost
//! service become `budget.alert` records and never reach the client, the
//! audit report counts them, and a policy naming anything but a business
//! event is refused.

mod support;

use serde_json::{Value, json};
use support::audit::{get, of_type, records, start, verify};
use support::{Sidecar, Upstream, cli};

/// An admin action (recorded and synced after the proxied records) is the
/// barrier a test waits on before reading the files.
fn flush(cg: &Sidecar) {
    let (status, _) = cg.admin("DELETE", "/admin/v1/tenants/org-ffffffff", None);
    assert_eq!(status, 404);
}

/// A request with `method` on the proxy, with extra header lines.
fn send(cg: &Sidecar, method: &str, path: &str, headers: &str) -> support::RawResponse {
    support::raw_request(
        cg.proxy,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
        )
        .as_bytes(),
    )
}

/// The records of one request, in order.
fn of_request<'a>(all: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|r| r["request_id"] == request_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_route_records_its_business_event_once_the_upstream_answered() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let policy = dir.path().join("policies");
    support::copy_shipped_policy(&policy);
    let cg = start(&up, &store, &support::policy_table(&policy));
    let t = cg.create_tenant("enterprise");
    let (key_id, key) = cg.create_key(&t, &["admin"]);
    let (_, viewer) = cg.create_key(&t, &["viewer"]);
    let auth = format!("X-API-Key: {key}\r\n");
    let cases = [
        ("GET", format!("/v1/tenants/{t}/costs"), "cost.viewed"),
        (
            "GET",
            format!("/v1/tenants/{t}/costs/export"),
            "cost.exported",
        ),
        ("POST", format!("/v1/tenants/{t}/budgets"), "budget.created"),
        (
            "PATCH",
            format!("/v1/tenants/{t}/budgets/bud-1"),
            "budget.updated",
        ),
        (
            "PUT",
            format!("/v1/tenants/{t}/budgets/bud-1"),
            "budget.updated",
        ),
        (
            "DELETE",
            format!("/v1/tenants/{t}/budgets/bud-1"),
            "budget.deleted",
        ),
        (
            "POST",
            format!("/v1/tenants/{t}/reports"),
            "report.generated",
        ),
    ];
    let mut ids = Vec::new();
    for (method, path, _) in &cases {
        let resp = send(&cg, method, path, &auth);
        assert_eq!(resp.status, 200, "{method} {path}: {}", resp.body);
        ids.push(resp.headers["x-request-id"].clone());
    }
    // A route without an event: the decision only.
    let plain = send(&cg, "GET", &format!("/v1/tenants/{t}/budgets"), &auth);
    assert_eq!(plain.status, 200);
    // The upstream's error: the failure, not the export.
    let failed = send(
        &cg,
        "GET",
        &format!("/v1/tenants/{t}/costs/export"),
        &format!("{auth}x-test-status: 503\r\n"),
    );
    assert_eq!(failed.status, 503);
    let not_found = send(
        &cg,
        "DELETE",
        &format!("/v1/tenants/{t}/budgets/bud-9"),
        &format!("{auth}x-test-status: 404\r\n"),
    );
    assert_eq!(not_found.status, 404);
    // A denial never reaches the upstream and records no business event.
    let denied = get(
        &cg,
        &format!("/v1/tenants/{t}/costs/export"),
        &format!("X-API-Key: {viewer}\r\n"),
    );
    assert_eq!(denied.status, 403);
    assert_eq!(up.count(), cases.len() + 3);
    flush(&cg);

    let all = records(&store.join("audit"));
    for ((method, path, event), id) in cases.iter().zip(&ids) {
        let mine = of_request(&all, id);
        let types: Vec<&str> = mine
            .iter()
            .map(|r| r["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["request.allowed", event],
            "{method} {path}: {mine:#?}"
        );
        let (decision, business) = (mine[0], mine[1]);
        assert!(business["seq"].as_u64() > decision["seq"].as_u64());
        assert_eq!(business["user_id"], key_id.as_str());
        assert_eq!(business["tenant_id"], t.as_str());
        assert_eq!(business["region"], "us-east-1");
        assert_eq!(business["details"]["status"], 200);
        assert_eq!(business["details"]["path"], path.as_str());
        assert_eq!(business["details"]["method"], *method);
        assert_eq!(business["details"]["decision"], "allow");
        // The seed's severities.
        let severity = if *event == "budget.deleted" {
            "MEDIUM"
        } else {
            "LOW"
        };
        assert_eq!(business["severity"], severity, "{event}");
    }
    let plain = of_request(&all, &plain.headers["x-request-id"]);
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["event_type"], "request.allowed");
    for (resp, status) in [(&failed, 503), (&not_found, 404)] {
        let mine = of_request(&all, &resp.headers["x-request-id"]);
        let types: Vec<&str> = mine
            .iter()
            .map(|r| r["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["request.allowed", "request.failed"], "{mine:#?}");
        assert_eq!(mine[1]["details"]["status"], status);
    }
    let denied = of_request(&all, &denied.headers["x-request-id"]);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["event_type"], "security.access_denied");
    assert_eq!(of_type(&all, "cost.exported").len(), 1);
    assert_eq!(of_type(&all, "budget.updated").len(), 2);
    assert_eq!(of_type(&all, "budget.deleted").len(), 1);

    // The report counts every business event type.
    let (status, report) = cg.admin(
        "GET",
        &format!("/admin/v1/audit/report?tenant_id={t}&days=1"),
        None,
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["business_events"],
        json!({
            "cost.viewed": 1, "cost.exported": 1, "report.generated": 1,
            "budget.created": 1, "budget.updated": 2, "budget.deleted": 1,
            "budget.alert": 0,
        })
    );

    let (code, out) = verify(&store.join("audit"));
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_alerts_become_records_and_never_reach_the_client() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let policy = dir.path().join("policies");
    support::copy_shipped_policy(&policy);
    let cg = start(&up, &store, &support::policy_table(&policy));
    let t = cg.create_tenant("standard");
    let (key_id, key) = cg.create_key(&t, &["viewer"]);
    let resp = get(
        &cg,
        &format!("/v1/tenants/{t}/budgets"),
        &format!(
            "X-API-Key: {key}\r\n\
             x-test-budget-alert: budget=bud-1; threshold=80; spent=812.50; limit=1000\r\n\
             x-test-budget-alert: not pairs at all\r\n"
        ),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        !resp.headers.contains_key("x-costops-budget-alert"),
        "{:?}",
        resp.headers
    );
    // Without an alert, nothing extra.
    let quiet = get(
        &cg,
        &format!("/v1/tenants/{t}/budgets"),
        &format!("X-API-Key: {key}\r\n"),
    );
    assert_eq!(quiet.status, 200);
    flush(&cg);

    let all = records(&store.join("audit"));
    let alerts = of_type(&all, "budget.alert");
    assert_eq!(alerts.len(), 2, "{all:#?}");
    for a in &alerts {
        assert_eq!(a["tenant_id"], t.as_str());
        assert_eq!(a["user_id"], key_id.as_str());
        assert_eq!(a["region"], "us-east-1");
        assert_eq!(a["severity"], "LOW");
        assert_eq!(a["request_id"], resp.headers["x-request-id"].as_str());
        assert_eq!(a["details"]["status"], 200);
        assert!(
            a["details"]["route"]
                .as_str()
                .unwrap()
                .starts_with("routes.toml:")
        );
    }
    assert_eq!(
        alerts[0]["details"]["alert"],
        json!({"budget": "bud-1", "threshold": "80", "spent": "812.50", "limit": "1000"})
    );
    assert_eq!(alerts[1]["details"]["alert_raw"], "not pairs at all");
    assert!(of_request(&all, &quiet.headers["x-request-id"]).len() == 1);

    let (status, report) = cg.admin(
        "GET",
        &format!("/admin/v1/audit/report?tenant_id={t}&days=1"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(report["business_events"]["budget.alert"], 2);
}

#[test]
fn only_business_events_can_be_named_and_explain_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies");
    support::copy_shipped_policy(&policy);
    let out = cli(["policy", "explain", "--policy"])
        .arg(&policy)
        .args(["--role", "analyst", "GET", "/v1/tenants/org-1/costs/export"])
        .run();
    assert!(
        out.stdout
            .contains("then cost.exported once the upstream answers 1xx-3xx"),
        "{out:?}"
    );
    // A policy may not make a request look like a sign-in or a denial.
    for forged in [
        "auth.login",
        "security.access_denied",
        "apikey.created",
        "cost.stolen",
    ] {
        std::fs::write(
            policy.join("extra.toml"),
            format!(
                "[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{{tenant}}/extra\"\npermission = \"view_costs\"\naudit_event = \"{forged}\"\n"
            ),
        )
        .unwrap();
        let out = cli(["policy", "check"]).arg(&policy).run();
        assert_eq!(out.status.code(), Some(1), "{forged}: {out:?}");
        assert!(
            out.stderr.contains("extra.toml:5")
                && out.stderr.contains("is not a business event")
                && out.stderr.contains("cost.exported"),
            "{forged}: {}",
            out.stderr
        );
    }
}
