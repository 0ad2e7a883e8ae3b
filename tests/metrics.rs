//! `/metrics` through the real binary: every decision kind shows up under
//! its labels, the page is valid for Prometheus (`promtool check metrics`),
//! label values never come from what a client sends (10,000 distinct paths
//! and tenants add no series), the read-only metrics listener serves
//! nothing else, and `metrics.enabled = false` stops the per-request
//! counting.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use support::{Sidecar, Upstream, get, get_as, send};

/// The admin port's `/metrics`, as Prometheus text.
async fn scrape(cg: &Sidecar) -> String {
    let (status, headers, body) = get(&format!("http://{}/metrics", cg.admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    body
}

use support::metric_sample as sample;

fn requests_series(page: &str) -> Vec<&str> {
    page.lines()
        .filter(|l| l.starts_with("costguard_requests_total{"))
        .collect()
}

/// `promtool check metrics` (the Debian `prometheus` package, installed by
/// tests/peers/install.sh) must accept the page.
fn promtool_accepts(page: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (tests/peers/install.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 3 for lint advice and 1 for an unparsable page: the
    // page must parse and draw no advice.
    assert!(out.status.success(), "promtool: {said}\n{page}");
}

fn series(decision: &str, reason: &str, auth: &str, method: &str, route: &str, up: &str) -> String {
    format!(
        "costguard_requests_total{{decision=\"{decision}\",reason=\"{reason}\",auth_method=\"{auth}\",method=\"{method}\",route=\"{route}\",upstream_status=\"{up}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_decision_kind_is_counted_under_its_labels() {
    let up = Upstream::start().await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = support::test_policy(policy_dir.path());
    let cg = support::sidecar_with_policy(
        &up,
        &format!(
            "{}[policy]\nreload_interval = \"100ms\"\n",
            support::NO_AUTH_THROTTLE
        ),
        &policy,
    );
    let t = cg.create_tenant("standard");
    let other = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let (_, limited) = cg.create_key_with(
        &t,
        serde_json::json!({"roles": ["viewer"], "rate_limit_per_minute": 1}),
    );
    let costs = cg.url(&format!("/v1/tenants/{t}/costs"));

    // Allowed, the upstream answering 200 twice and 503 once.
    for _ in 0..2 {
        assert_eq!(get_as(&costs, &key).await.0, 200);
    }
    let (status, _, _) = send(
        "GET",
        &costs,
        &[("x-api-key", key.as_str()), ("x-test-status", "503")],
        String::new(),
    )
    .await;
    assert_eq!(status, 503);
    // Denied: no credential, an unknown key, a missing permission, another
    // tenant, the key's rate.
    assert_eq!(get(&costs).await.0, 401);
    let unknown = "cg_live_unknownunknownunknownunknown00";
    assert_eq!(
        send("GET", &costs, &[("x-api-key", unknown)], String::new())
            .await
            .0,
        401
    );
    let budgets = cg.url(&format!("/v1/tenants/{t}/budgets"));
    assert_eq!(
        send(
            "POST",
            &budgets,
            &[("x-api-key", key.as_str())],
            "{}".to_string()
        )
        .await
        .0,
        403
    );
    let theirs = cg.url(&format!("/v1/tenants/{other}/costs"));
    assert_eq!(get_as(&theirs, &key).await.0, 403);
    assert_eq!(get_as(&costs, &limited).await.0, 200);
    assert_eq!(get_as(&costs, &limited).await.0, 429);
    // Answered locally.
    assert_eq!(get(&cg.url("/health")).await.0, 200);
    // A policy change that does not compile.
    std::fs::write(policy.join("broken.toml"), "[[routes]]\nmethod = \n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut page = scrape(&cg).await;
    while sample(&page, "costguard_policy_last_reload_rejected") != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = scrape(&cg).await;
    }

    let route = "/v1/tenants/{tenant}/costs";
    for (s, n) in [
        (
            series("allowed", "none", "api_key", "GET", route, "2xx"),
            3.0,
        ),
        (
            series("allowed", "none", "api_key", "GET", route, "5xx"),
            1.0,
        ),
        (
            series("denied", "unauthenticated", "none", "GET", route, "none"),
            1.0,
        ),
        (
            series("denied", "invalid_key", "none", "GET", route, "none"),
            1.0,
        ),
        (
            series(
                "denied",
                "forbidden",
                "api_key",
                "POST",
                "/v1/tenants/{tenant}/budgets",
                "none",
            ),
            1.0,
        ),
        (
            series("denied", "tenant_mismatch", "api_key", "GET", route, "none"),
            1.0,
        ),
        (
            series("denied", "rate_limited", "api_key", "GET", route, "none"),
            1.0,
        ),
        (
            series("local", "none", "none", "GET", "unmatched", "none"),
            1.0,
        ),
    ] {
        assert_eq!(sample(&page, &s), Some(n), "{s} in\n{page}");
    }
    for s in [
        "costguard_request_duration_seconds_count{decision=\"allowed\"} 4",
        "costguard_request_duration_seconds_count{decision=\"denied\"} 5",
        "costguard_request_duration_seconds_count{decision=\"local\"} 1",
        // A decision was made for every request but the local one.
        "costguard_decision_duration_seconds_count 9",
        "costguard_limited_requests_total{reason=\"rate_limited\"} 1",
        "costguard_policy_reloads_total{result=\"rejected\"} 1",
        "costguard_upstream_errors_total{kind=\"connect\"} 0",
    ] {
        assert!(page.lines().any(|l| l == s), "{s} in\n{page}");
    }
    // Each request's key was looked up: cache misses for the first use of
    // each key, hits after.
    assert!(
        sample(
            &page,
            "costguard_cache_requests_total{cache=\"api_keys\",result=\"hit\"}"
        )
        .unwrap()
            >= 4.0
    );
    assert!(
        sample(
            &page,
            "costguard_cache_requests_total{cache=\"api_keys\",result=\"miss\"}"
        )
        .unwrap()
            >= 2.0
    );
    assert!(sample(&page, "costguard_audit_records_total").unwrap() >= 10.0);
    assert!(sample(&page, "costguard_audit_disk_used_bytes").unwrap() > 0.0);
    assert_eq!(sample(&page, "costguard_audit_queue_depth"), Some(0.0));
    assert!(
        page.contains("costguard_policy_info{fingerprint=\""),
        "{page}"
    );
    assert!(page.contains("costguard_build_info{version=\""), "{page}");
    promtool_accepts(&page);
    // Kept as a test artifact (the page an operator would see).
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/metrics-every-decision.prom"),
        &page,
    )
    .unwrap();

    // OpenMetrics when asked for.
    let (status, headers, body) = send(
        "GET",
        &format!("http://{}/metrics", cg.admin),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_is_down_is_counted_as_a_connect_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cg = Sidecar::start(
        &support::config_for(&format!("http://127.0.0.1:{port}"), ""),
        &[],
    );
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let (status, _, body) = get_as(&cg.url(&format!("/v1/tenants/{t}/costs")), &key).await;
    assert_eq!(status, 502, "{body}");
    let page = scrape(&cg).await;
    let s = series(
        "allowed",
        "upstream_unavailable",
        "api_key",
        "GET",
        "/v1/tenants/{tenant}/costs",
        "error",
    );
    assert_eq!(sample(&page, &s), Some(1.0), "{s} in\n{page}");
    assert_eq!(
        sample(&page, "costguard_upstream_errors_total{kind=\"connect\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_distinct_paths_and_tenants_add_no_series() {
    let up = Upstream::start().await;
    let cg = support::sidecar(&up, support::NO_AUTH_THROTTLE);
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    for batch in 0..100 {
        let calls = (0..100).map(|i| {
            let n = batch * 100 + i;
            // In turn: a fresh tenant's route (403), a fresh path (the test
            // policy's catch-all route allows it), a fresh extension method.
            let (method, path) = match n % 3 {
                0 => ("GET", format!("/v1/tenants/org-{n:08x}/costs")),
                1 => ("GET", format!("/anything/{n}/x%{n:02x}?q={n}")),
                _ => ("X-CUSTOM-{n}", format!("/v1/tenants/{t}/costs/{n}")),
            };
            let url = cg.url(&path);
            let key = key.clone();
            async move {
                let method = if method.starts_with("X-") {
                    format!("X-CUSTOM-{n}")
                } else {
                    method.to_string()
                };
                send(&method, &url, &[("x-api-key", key.as_str())], String::new())
                    .await
                    .0
            }
        });
        for status in join_all(calls).await {
            assert!(status.as_u16() < 500, "{status}");
        }
    }
    let page = scrape(&cg).await;
    let found = requests_series(&page);
    assert!(
        found.len() <= 6,
        "{} series after 10,000 distinct requests:\n{}",
        found.len(),
        found.join("\n")
    );
    let total: f64 = found
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 10_000.0, "every request counted once");
    // No label value on the whole page holds a tenant id or a path segment
    // a client chose.
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("org-0"), "{line}");
        assert!(!line.contains("/anything/"), "{line}");
        assert!(!line.contains("X-CUSTOM"), "{line}");
    }
    let methods: BTreeSet<&str> = found
        .iter()
        .filter_map(|l| l.split(",method=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(methods, BTreeSet::from(["GET", "other"]));
    assert!(page.lines().count() < 400, "{} lines", page.lines().count());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_serves_only_metrics() {
    let up = Upstream::start().await;
    let cg = Sidecar::start(
        &support::config_for(&up.url(), ""),
        &[("COSTGUARD_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let addr = cg
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "Listening.")
        .and_then(|v| v["metrics"].as_str().map(str::to_string))
        .expect("the Listening line names the metrics address");
    let (status, _, body) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("costguard_build_info"), "{body}");
    for path in ["/admin/v1/tenants", "/ready", "/health", "/metrics/x"] {
        let (status, _, _) = get(&format!("http://{addr}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = send(
        "POST",
        &format!("http://{addr}/admin/v1/tenants"),
        &[("authorization", &format!("Bearer {}", support::ADMIN_TOKEN))],
        "{}".to_string(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        "POST",
        &format!("http://{addr}/metrics"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_metrics_off_requests_are_not_counted() {
    let up = Upstream::start().await;
    let cg = Sidecar::start(
        &support::config_for(&up.url(), ""),
        &[("COSTGUARD_METRICS_ENABLED", "false")],
    );
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    assert_eq!(
        get_as(&cg.url(&format!("/v1/tenants/{t}/costs")), &key)
            .await
            .0,
        200
    );
    let page = scrape(&cg).await;
    assert!(requests_series(&page).is_empty(), "{page}");
    assert!(
        !page.contains("costguard_request_duration_seconds"),
        "{page}"
    );
    // The stages' own counters stay.
    assert!(sample(&page, "costguard_audit_records_total").unwrap() >= 1.0);
}
