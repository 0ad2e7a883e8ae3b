//! Rate limits, daily quotas, budgets and the failed-authentication limit,
//! through the real binary: exact counts under concurrency (many HTTP/1.1
//! connections, one multiplexed HTTP/2 connection), what the upstream saw,
//! the headers, and counts that survive a restart and a crash.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::{
    Sidecar, Upstream, config_for, error_code, policy_table, raw_request, sidecar, test_policy,
};

/// GETs `url` `n` times at once through `client`; returns each response's
/// status, headers and body.
async fn burst(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
    key: &str,
    n: usize,
) -> Vec<(StatusCode, HeaderMap, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.to_string(), key.to_string());
            tokio::spawn(async move {
                let req = Request::get(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                (
                    parts.status,
                    parts.headers,
                    String::from_utf8_lossy(&body).into_owned(),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks a burst against a limit of `n`: exactly `n` 200s whose
/// `RateLimit-Remaining` values are exactly n-1 … 0 (each request took its
/// own cell), the rest 429 `code` with `Retry-After`.
fn assert_exactly(results: &[(StatusCode, HeaderMap, String)], n: u64, code: &str) {
    let mut remaining: Vec<u64> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .map(|(_, h, _)| {
            assert_eq!(header_u64(h, "ratelimit-limit"), n);
            header_u64(h, "ratelimit-remaining")
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..n).collect::<Vec<_>>(),
        "one cell per allowed request"
    );
    for (status, h, body) in results.iter().filter(|(s, _, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(error_code(body), code);
        assert!(header_u64(h, "retry-after") >= 1);
        assert_eq!(header_u64(h, "ratelimit-remaining"), 0);
        assert_eq!(header_u64(h, "ratelimit-limit"), n);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rate_is_exact_over_many_http1_connections() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key_with(
        &t,
        json!({"roles": ["viewer"], "rate_limit_per_minute": 50}),
    );
    // No pooling: every request on its own connection.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let results = burst(&client, &cg.url("/v1/things"), &key, 80).await;
    assert_exactly(&results, 50, "rate_limited");
    assert_eq!(
        up.count(),
        50,
        "the upstream saw exactly the allowed requests"
    );
    let (_, h, _) = results
        .iter()
        .find(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    // 50 per minute: one request back every 1.2 s, the whole bucket in a minute.
    assert!(header_u64(h, "retry-after") <= 2, "{h:?}");
    assert!(
        (59..=61).contains(&header_u64(h, "ratelimit-reset")),
        "{h:?}"
    );
    assert_eq!(h["ratelimit-policy"], "50;w=60");
    assert_eq!(
        metric(
            &cg,
            "costguard_limited_requests_total{reason=\"rate_limited\"}"
        )
        .await,
        30
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rate_is_exact_over_one_multiplexed_http2_connection() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key_with(
        &t,
        json!({"roles": ["viewer"], "rate_limit_per_minute": 40}),
    );
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let results = burst(&client, &cg.url("/v1/things"), &key, 70).await;
    assert_exactly(&results, 40, "rate_limited");
    assert_eq!(up.count(), 40);
    assert!(
        up.seen()
            .iter()
            .all(|s| s.headers["x-costops-tenant-id"] == t.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bucket_per_key_whatever_carries_it_and_whatever_xff_says() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key_with(&t, json!({"roles": ["viewer"], "rate_limit_per_minute": 4}));
    let (_, other) =
        cg.create_key_with(&t, json!({"roles": ["viewer"], "rate_limit_per_minute": 4}));
    let carriers = [
        format!("Authorization: Bearer {key}\r\nX-Forwarded-For: 198.51.100.1\r\n"),
        format!("X-API-Key: {key}\r\nX-Forwarded-For: 198.51.100.2\r\n"),
        format!("authorization: bearer {key}\r\nX-Real-IP: 198.51.100.3\r\n"),
        format!("x-api-key: {key}\r\n"),
    ];
    let send = |headers: &str| {
        raw_request(
            cg.proxy,
            format!("GET /v1/things HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{headers}\r\n")
                .as_bytes(),
        )
    };
    for (i, headers) in carriers.iter().enumerate() {
        let resp = send(headers);
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.headers["ratelimit-remaining"], (3 - i).to_string());
    }
    for headers in &carriers {
        let resp = send(headers);
        assert_eq!(resp.status, 429, "{headers}: {resp:?}");
        assert_eq!(error_code(&resp.body), "rate_limited");
    }
    assert_eq!(up.count(), 4);
    // Another key of the same tenant has its own bucket.
    let resp = send(&format!("X-API-Key: {other}\r\n"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["ratelimit-remaining"], "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn tier_default_rate_applies_to_keys_without_their_own() {
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        "[rate_limit]\nfree = \"3/minute\"\nstandard = \"unlimited\"\n",
    );
    let free = cg.create_tenant("free");
    let (_, key) = cg.create_key(&free, &["viewer"]);
    let client = support::client();
    let results = burst(&client, &cg.url("/v1/things"), &key, 5).await;
    assert_exactly(&results, 3, "rate_limited");
    let standard = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&standard, &["viewer"]);
    let results = burst(&client, &cg.url("/v1/things"), &key, 5).await;
    assert!(
        results
            .iter()
            .all(|(s, h, _)| *s == 200 && !h.contains_key("ratelimit-limit"))
    );
}

fn quota_tenant(cg: &Sidecar, per_day: i64) -> String {
    let (status, body) = cg.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({
            "organization_name": "Quota Corp",
            "admin_email": "ops@quota.example",
            "tier": "free",
            "limits": {"max_requests_per_day": per_day},
        })),
    );
    assert_eq!(status, 201, "{body}");
    body["tenant_id"].as_str().unwrap().to_string()
}

fn requests_today(cg: &Sidecar, tenant: &str) -> u64 {
    let (status, body) = cg.admin("GET", &format!("/admin/v1/tenants/{tenant}/usage"), None);
    assert_eq!(status, 200, "{body}");
    body["requests_today"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_quota_is_exact_and_survives_restart_and_crash() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let config = config_for(&up.url(), "");
    let start = || Sidecar::start_with_store(&config, &[], Some(store.path()));
    let mut cg = start();
    let t = quota_tenant(&cg, 12);
    // Two keys share the tenant's quota; their own rates are not the limit.
    let keys: Vec<String> = (0..2)
        .map(|_| {
            cg.create_key_with(
                &t,
                json!({"roles": ["viewer"], "rate_limit_per_minute": 1000}),
            )
            .1
        })
        .collect();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let url = cg.url("/v1/things");
    let (a, b) = tokio::join!(
        burst(&client, &url, &keys[0], 10),
        burst(&client, &url, &keys[1], 10)
    );
    let ok = a.iter().chain(&b).filter(|(s, _, _)| *s == 200).count();
    assert_eq!(
        ok, 12,
        "the request that reaches the limit is the last allowed"
    );
    assert_eq!(up.count(), 12);
    let (_, h, body) = a
        .iter()
        .chain(&b)
        .find(|(s, _, _)| *s != 200)
        .unwrap()
        .clone();
    assert_eq!(error_code(&body), "quota_exceeded");
    let retry = header_u64(&h, "retry-after");
    assert!((1..=86_400).contains(&retry), "until 00:00 UTC: {retry}");
    assert_eq!(header_u64(&h, "ratelimit-limit"), 12);
    assert_eq!(header_u64(&h, "ratelimit-remaining"), 0);
    assert_eq!(requests_today(&cg, &t), 12);

    // A clean restart keeps the count.
    cg.terminate();
    assert!(cg.wait(Duration::from_secs(10)).success());
    let mut cg = start();
    let resp = raw_request(
        cg.proxy,
        format!(
            "GET /v1/things HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: {}\r\n\r\n",
            keys[0]
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(requests_today(&cg, &t), 12);

    // A crash loses at most one flush interval (1 s) of counts: raise the
    // quota, count 3 more, wait out the interval, kill -9.
    let (status, body) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"limits": {"max_requests_per_day": 15}})),
    );
    assert_eq!(status, 200, "{body}");
    let results = burst(&client, &cg.url("/v1/things"), &keys[1], 5).await;
    assert_eq!(results.iter().filter(|(s, _, _)| *s == 200).count(), 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cg.kill9();
    let cg = start();
    assert_eq!(requests_today(&cg, &t), 15);
    let results = burst(&client, &cg.url("/v1/things"), &keys[0], 2).await;
    assert!(results.iter().all(|(s, _, _)| *s == 429));
    assert_eq!(up.count(), 15);
}

/// A policy with a cost-incurring route, beside the test catch-all.
fn cost_policy(dir: &std::path::Path) -> std::path::PathBuf {
    let policy = test_policy(dir);
    std::fs::write(
        policy.join("cost.toml"),
        r#"[[routes]]
method = "POST"
path = "/v1/tenants/{tenant}/projects/{project}/completions"
permission = "view_costs"
cost = true

[[routes]]
method = "POST"
path = "/v1/tenants/{tenant}/completions"
permission = "view_costs"
cost = true
"#,
    )
    .unwrap();
    policy
}

fn post(cg: &Sidecar, path: &str, key: &str, cost: &str) -> support::RawResponse {
    raw_request(
        cg.proxy,
        format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: {key}\r\nx-test-cost: {cost}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_stop_cost_routes_exactly_at_the_limit_and_persist() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let config = config_for(&up.url(), &policy_table(&cost_policy(dir.path())));
    let cg = Sidecar::start_with_store(&config, &[], Some(&store));
    let (status, body) = cg.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({
            "organization_name": "Budget Corp",
            "admin_email": "ops@budget.example",
            "tier": "standard",
            "limits": {"max_monthly_cost": 2.0},
        })),
    );
    assert_eq!(status, 201, "{body}");
    let t = body["tenant_id"].as_str().unwrap().to_string();
    let (_, key) = cg.create_key(&t, &["admin"]);
    let (status, body) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/projects"),
        Some(json!({"name": "chatbot", "budget": 1.0})),
    );
    assert_eq!(status, 201, "{body}");
    let p = body["project_id"].as_str().unwrap().to_string();
    let project_route = format!("/v1/tenants/{t}/projects/{p}/completions");

    // 4 × $0.25 reaches the project's $1.00 exactly; the 5th is refused
    // and never reaches the upstream.
    for i in 0..4 {
        let resp = post(&cg, &project_route, &key, "0.25");
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let resp = post(&cg, &project_route, &key, "0.25");
    assert_eq!(resp.status, 402, "{resp:?}");
    assert_eq!(error_code(&resp.body), "budget_exceeded");
    assert_eq!(up.count(), 4);
    // Routes without cost still work; the tenant has $1.00 left.
    assert_eq!(raw_request(cg.proxy, format!("GET /v1/tenants/{t}/costs HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: {key}\r\n\r\n").as_bytes()).status, 200);
    let tenant_route = format!("/v1/tenants/{t}/completions");
    assert_eq!(post(&cg, &tenant_route, &key, "0.6").status, 200);
    assert_eq!(post(&cg, &tenant_route, &key, "0.399999").status, 200);
    assert_eq!(
        post(&cg, &tenant_route, &key, "0").status,
        200,
        "$1.999999 < $2"
    );
    assert_eq!(post(&cg, &tenant_route, &key, "0.000001").status, 200);
    let resp = post(&cg, &tenant_route, &key, "0.01");
    assert_eq!(resp.status, 402, "$2.000000 reached: {resp:?}");
    // A malformed or negative cost is not counted (and cannot refund).
    let (_, usage) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/usage"), None);
    assert_eq!(usage["spend_usd"], 2.0, "{usage}");
    assert_eq!(usage["project_spend"][&p]["spend_usd"], 1.0, "{usage}");
    assert_eq!(usage["utilization"]["cost"], 100.0, "{usage}");

    // Spend survives a crash once flushed (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cg = cg;
    cg.kill9();
    let cg = Sidecar::start_with_store(&config, &[], Some(&store));
    let (_, usage) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/usage"), None);
    assert_eq!(usage["spend_usd"], 2.0, "{usage}");
    assert_eq!(post(&cg, &project_route, &key, "0.25").status, 402);
    assert_eq!(post(&cg, &tenant_route, &key, "0.25").status, 402);
    assert_eq!(up.count(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cost_values_are_ignored() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&up.url(), &policy_table(&cost_policy(dir.path())));
    let cg = Sidecar::start(&config, &[]);
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let route = format!("/v1/tenants/{t}/completions");
    for bad in ["-5", "1e9", "NaN", "abc", "0x10", "99999999999"] {
        assert_eq!(post(&cg, &route, &key, bad).status, 200, "{bad}");
    }
    assert_eq!(post(&cg, &route, &key, "1.5").status, 200);
    let (_, usage) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/usage"), None);
    assert_eq!(usage["spend_usd"], 1.5, "{usage}");
}

fn attempt(cg: &Sidecar, key: &str, xff: Option<&str>) -> support::RawResponse {
    let xff = xff
        .map(|ip| format!("X-Forwarded-For: {ip}\r\n"))
        .unwrap_or_default();
    raw_request(
        cg.proxy,
        format!("GET /v1/things HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: {key}\r\n{xff}\r\n")
            .as_bytes(),
    )
}

const BAD_KEY: &str = "costops_00000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_block_the_source_not_others() {
    let up = Upstream::start().await;
    // The test client is 127.0.0.1: trusted as a proxy, so X-Forwarded-For
    // names the sources.
    let cg = sidecar(
        &up,
        "trusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nfailed_auth_per_minute = 5\n",
    );
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    for i in 0..5 {
        let resp = attempt(&cg, BAD_KEY, Some("203.0.113.7"));
        assert_eq!(resp.status, 401, "attempt {i}: {resp:?}");
    }
    for k in [BAD_KEY, "not-even-a-key", key.as_str()] {
        let resp = attempt(&cg, k, Some("203.0.113.7"));
        assert_eq!(resp.status, 429, "{resp:?}");
        assert_eq!(error_code(&resp.body), "rate_limited");
        let retry: u64 = resp.headers["retry-after"].parse().unwrap();
        assert!(
            (1..=12).contains(&retry),
            "one attempt back within 60 s / 5: {retry}"
        );
    }
    // Another client behind the same proxy is unaffected, and a valid key
    // is not a failure.
    assert_eq!(attempt(&cg, &key, Some("203.0.113.8")).status, 200);
    assert_eq!(attempt(&cg, BAD_KEY, Some("203.0.113.8")).status, 401);
    // The client cannot escape by prepending addresses: the rightmost
    // untrusted entry is the source. (A bad key: the valid one is cached
    // by now, and a cached valid key passes a blocked source.)
    let resp = attempt(&cg, BAD_KEY, Some("192.0.2.1, 203.0.113.7"));
    assert_eq!(resp.status, 429);
    assert_eq!(up.count(), 1);
}

/// Issue 15 §4a. Behind an ingress or SNAT every client shares one address
/// (here, as in such a deployment, no proxy is trusted): one client's bad
/// keys must not lock out the valid keys the instance already knows, while
/// anything it does not know from that source waits out the block.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_source_still_passes_with_a_cached_valid_key() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[rate_limit]\nfailed_auth_per_minute = 5\n");
    let t = cg.create_tenant("enterprise");
    let (_, warm) = cg.create_key(&t, &["viewer"]);
    let (_, cold) = cg.create_key(&t, &["viewer"]);
    assert_eq!(attempt(&cg, &warm, None).status, 200, "warms the key cache");
    for i in 0..5 {
        let resp = attempt(&cg, BAD_KEY, None);
        assert_eq!(resp.status, 401, "attempt {i}: {resp:?}");
    }
    let resp = attempt(&cg, BAD_KEY, None);
    assert_eq!(resp.status, 429, "the shared address is blocked: {resp:?}");
    for _ in 0..3 {
        let resp = attempt(&cg, &warm, None);
        assert_eq!(resp.status, 200, "a cached valid key passes: {resp:?}");
    }
    // Not in the caches: refused before any store lookup, valid or not.
    let unknown = "costops_0123456789abcdef0123456789abcdef";
    for k in [unknown, cold.as_str(), "not-even-a-key"] {
        let resp = attempt(&cg, k, None);
        assert_eq!(resp.status, 429, "{k}: {resp:?}");
        assert_eq!(error_code(&resp.body), "rate_limited");
    }
    // The admin port keeps its own table: the operators are not locked out.
    let (status, body) = cg.admin("GET", "/admin/v1/tenants", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.count(), 4);
    let (_, _, metrics) = support::get(&format!("http://{}/metrics", cg.admin)).await;
    assert!(
        metrics.contains("costguard_limited_requests_total{reason=\"failed_auth_blocked\"} 4"),
        "only refused requests count: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_forwarded_for_never_changes_the_source() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[rate_limit]\nfailed_auth_per_minute = 3\n");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    for i in 0..3 {
        let resp = attempt(&cg, BAD_KEY, Some(&format!("198.51.100.{i}")));
        assert_eq!(resp.status, 401);
    }
    let resp = attempt(&cg, &key, Some("198.51.100.200"));
    assert_eq!(resp.status, 429, "the socket peer is the source: {resp:?}");
    assert_eq!(up.count(), 0);
}

/// Reads one sample from the admin port's `/metrics`.
async fn metric(cg: &Sidecar, name: &str) -> u64 {
    let (status, _, text) = support::get(&format!("http://{}/metrics", cg.admin)).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_keys_keep_memory_bounded() {
    use costguard::authn::api_key;
    use costguard::model::Tier;
    use costguard::store::Store;
    use costguard::store::conformance::{sample_key, sample_tenant};
    use costguard::store::sled::SledStore;

    const KEYS: usize = 100_000;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("data");
    let t0 = std::time::Instant::now();
    let tenant = sample_tenant(Tier::Enterprise);
    let secrets: Vec<String> = (0..KEYS).map(|_| api_key::generate()).collect();
    {
        let store = SledStore::open(&store_path).unwrap();
        store.insert_tenant(&tenant).await.unwrap();
        let keys: Vec<_> = secrets
            .iter()
            .map(|s| sample_key(&tenant.tenant_id, &api_key::hash_hex(s)))
            .collect();
        store.import_keys(&keys).await.unwrap();
    }
    println!("imported {KEYS} keys in {:?}", t0.elapsed());
    // A small key cache, so what grows with the keys is the limiter's state;
    // 10/second, so a bucket is full again 100 ms after its one request.
    let config = config_for(
        &up.url(),
        "[auth]\nkey_cache_capacity = 1000\n[store]\ncache_bytes = 16777216\n[rate_limit]\nenterprise = \"10/second\"\n",
    );
    let setup = std::time::Instant::now();
    let cg = Sidecar::start_with_store(&config, &[], Some(&store_path));
    let rss_before = cg.peak_rss_kib();
    let client = support::client();
    let url = cg.url("/v1/things");
    let secrets = std::sync::Arc::new(secrets);
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (client, url, secrets) = (client.clone(), url.clone(), secrets.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                for secret in secrets.iter().skip(w).step_by(32) {
                    let req = Request::get(&url)
                        .header("x-api-key", secret)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let resp = client.request(req).await.unwrap();
                    ok += usize::from(resp.status() == StatusCode::OK);
                    resp.into_body().collect().await.unwrap();
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for w in workers {
        ok += w.await.unwrap();
    }
    assert_eq!(ok, KEYS, "every key got its own full bucket");
    println!("{KEYS} requests in {:?}", setup.elapsed());
    assert_eq!(up.count(), KEYS);
    let grew_mib = (cg.peak_rss_kib() - rss_before) / 1024;
    println!("{KEYS} distinct keys: peak RSS grew {grew_mib} MiB");
    // Bounded by the configured caches (16 MiB store pages, 1,000 keys),
    // allocator arenas and the limiter's buckets, not by the keys seen
    // (what the limiter holds is checked exactly below).
    assert!(grew_mib < 128, "memory grew {grew_mib} MiB for {KEYS} keys");
    // Idle buckets are dropped by the next cleanup (every 10 s).
    let started = std::time::Instant::now();
    loop {
        let buckets = metric(&cg, "costguard_rate_limit_buckets").await;
        if buckets == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{buckets} idle buckets still held"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("idle buckets dropped after {:?}", started.elapsed());
}

/// Issue 15 §4b: the admin port counts its failures in its own table, and
/// checks it before the admin token (a blocked source cannot go on guessing
/// the token, even with the right one); the proxy port is not affected.
#[tokio::test(flavor = "multi_thread")]
async fn admin_credential_guessing_is_limited_in_its_own_table() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[rate_limit]\nfailed_auth_per_minute = 3\n");
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    for _ in 0..3 {
        let (status, body) =
            cg.admin_call("GET", "/admin/v1/tenants", "not-the-admin-token-0123", None);
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = cg.admin("GET", "/admin/v1/tenants", None);
    assert_eq!(status, 429, "even the right token waits: {body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // The proxy port keeps its own count: a key never seen before is looked
    // up, and a bad one is a plain 401.
    assert_eq!(attempt(&cg, &key, None).status, 200);
    assert_eq!(attempt(&cg, BAD_KEY, None).status, 401);
    let (_, _, metrics) = support::get(&format!("http://{}/metrics", cg.admin)).await;
    assert!(
        metrics.contains("costguard_limited_requests_total{reason=\"failed_auth_blocked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("costguard_admin_failed_auth_sources 1"),
        "{metrics}"
    );
}
