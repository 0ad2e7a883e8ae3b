//! Many replicas, one truth: two and three `costguard serve` processes on
//! loopback sharing the real PostgreSQL (one schema per test) and Redis
//! (one key prefix per test), started exactly as an operator would
//! (`COSTGUARD_STORE_BACKEND=postgres`, `COSTGUARD_STORE_URL`,
//! `COSTGUARD_RATE_LIMIT_BACKEND=redis`, `COSTGUARD_RATE_LIMIT_REDIS_URL`).
//! Every count is checked at a counting upstream; latencies are printed
//! (`cargo test --test replicas -- --nocapture`) for the notes.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::services::{OwnPostgres, OwnRedis};
use support::shared::{PG_URL, REDIS_URL, Shared};
use support::{NO_AUTH_THROTTLE, Sidecar, Upstream, raw_request};

/// `GET path` with an API key, on a new connection: the status.
fn get(addr: SocketAddr, path: &str, key: &str) -> u16 {
    raw_request(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .status
}

fn costs(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/costs")
}

/// Polls `addr` with `key` until it is refused with 401; how long that took.
fn time_until_refused(addr: SocketAddr, path: &str, key: &str, since: Instant) -> Duration {
    loop {
        let status = get(addr, path, key);
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(
            status, 200,
            "a revoked key is either still cached or refused"
        );
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after the revocation"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A key made on A works on B and C at once; revoked on B, it is refused
/// on A and C (which had it cached) within a second, 20 times over.
fn revocations_reach_every_replica(pubsub: bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start());
    let shared = Shared::new();
    let pubsub = if pubsub { "true" } else { "false" };
    let r = shared.replicas(
        3,
        &up,
        NO_AUTH_THROTTLE,
        &[("COSTGUARD_RATE_LIMIT_REDIS_PUBSUB", pubsub)],
    );
    let (a, b, c) = (&r[0], &r[1], &r[2]);
    let tenant = a.create_tenant("enterprise");
    let path = costs(&tenant);
    let mut took = Vec::new();
    for round in 0..20 {
        let (key_id, key) = a.create_key(&tenant, &["admin"]);
        // Made on A, known on B and C at once (and now cached on all three).
        assert_eq!(get(b.proxy, &path, &key), 200, "round {round}: B");
        assert_eq!(get(c.proxy, &path, &key), 200, "round {round}: C");
        assert_eq!(get(a.proxy, &path, &key), 200, "round {round}: A");
        let (status, body) = b.admin(
            "DELETE",
            &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let revoked = Instant::now();
        assert_eq!(
            get(b.proxy, &path, &key),
            401,
            "refused at once where revoked"
        );
        let on_a = time_until_refused(a.proxy, &path, &key, revoked);
        let on_c = time_until_refused(c.proxy, &path, &key, revoked);
        took.push(on_a.max(on_c));
    }
    took.sort();
    let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
    eprintln!(
        "revocation reached every replica (pubsub={pubsub}, 20 revocations): p50 {p50:?}, p99 {p99:?}, max {:?}",
        took.last().unwrap()
    );
    assert!(
        p99 < Duration::from_secs(1),
        "every replica must refuse a revoked key within 1 s: {took:?}"
    );
}

#[test]
fn revocations_reach_every_replica_within_a_second_over_pubsub() {
    revocations_reach_every_replica(true);
}

#[test]
fn revocations_reach_every_replica_within_a_second_from_the_outbox_alone() {
    revocations_reach_every_replica(false);
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// `n` GETs of `path` with `key`, spread round-robin over `replicas`, all
/// at once; the statuses.
async fn burst(
    client: &Client,
    replicas: &[&Sidecar],
    path: &str,
    key: &str,
    n: usize,
) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = replicas[i % replicas.len()].url(path);
            let (client, key) = (client.clone(), key.to_string());
            tokio::spawn(async move {
                let req = Request::get(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                status.as_u16()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[u16], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status.as_u16()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rate_is_exact_across_three_replicas() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    let r = shared.replicas(3, &up, "", &[]);
    let tenant = r[0].create_tenant("enterprise");
    let (_, key) = r[1].create_key_with(
        &tenant,
        json!({"description": "ten a minute", "roles": ["admin"], "rate_limit_per_minute": 10}),
    );
    let client = support::client();
    let all: Vec<&Sidecar> = r.iter().collect();
    let statuses = burst(&client, &all, &costs(&tenant), &key, 45).await;
    assert_eq!(count(&statuses, StatusCode::OK), 10, "{statuses:?}");
    assert_eq!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS),
        35,
        "{statuses:?}"
    );
    assert_eq!(up.count(), 10, "the upstream saw exactly the key's rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leased_mode_overshoots_at_most_its_stated_bound() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    let lease = 3;
    let r = shared.replicas(
        3,
        &up,
        "",
        &[
            ("COSTGUARD_RATE_LIMIT_REDIS_MODE", "leased"),
            ("COSTGUARD_RATE_LIMIT_LEASE_SIZE", "3"),
        ],
    );
    let tenant = r[0].create_tenant("enterprise");
    let (_, key) = r[1].create_key_with(
        &tenant,
        json!({"description": "ten a minute", "roles": ["admin"], "rate_limit_per_minute": 10}),
    );
    let client = support::client();
    let all: Vec<&Sidecar> = r.iter().collect();
    let statuses = burst(&client, &all, &costs(&tenant), &key, 60).await;
    let admitted = count(&statuses, StatusCode::OK);
    let bound = 10 + r.len() * lease;
    eprintln!(
        "leased mode (lease {lease}, 3 replicas, 10/minute, 60 at once): {admitted} admitted, bound {bound}"
    );
    assert!(admitted <= bound, "{admitted} > {bound}: {statuses:?}");
    assert!(admitted >= 1, "{statuses:?}");
    assert_eq!(up.count(), admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_quota_admits_exactly_its_count_across_replicas() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    let r = shared.replicas(3, &up, "", &[]);
    let tenant = r[0].create_tenant("enterprise");
    let (status, body) = r[2].admin(
        "PATCH",
        &format!("/admin/v1/tenants/{tenant}"),
        Some(json!({"limits": {"max_requests_per_day": 7}})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, key) = r[1].create_key(&tenant, &["admin"]);
    let client = support::client();
    let all: Vec<&Sidecar> = r.iter().collect();
    let statuses = burst(&client, &all, &costs(&tenant), &key, 30).await;
    assert_eq!(count(&statuses, StatusCode::OK), 7, "{statuses:?}");
    assert_eq!(up.count(), 7);
    // The count is durable: the store has what the replicas admitted once
    // they flushed (each second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Every replica's admin API reports what all of them counted.
    for replica in &r {
        let (status, usage) =
            replica.admin("GET", &format!("/admin/v1/tenants/{tenant}/usage"), None);
        assert_eq!(status, 200, "{usage}");
        assert_eq!(usage["requests_today"], 7, "{usage}");
    }
}

fn metric(sidecar: &Sidecar, name: &str) -> Option<f64> {
    let resp = raw_request(
        sidecar.admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    resp.body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Redis killed under load and started again (empty): while it is down the
/// replicas limit locally (the default `redis_down = "local"`) and keep
/// serving; once it is back they use it again without a restart, and a
/// quota counted before the loss is re-seeded from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lost_and_back_needs_no_restart() {
    let up = Upstream::start().await;
    let mut redis = OwnRedis::start();
    let shared = Shared::on(PG_URL, &redis.url());
    let r = shared.replicas(2, &up, "", &[]);
    let tenant = r[0].create_tenant("enterprise");
    let (_, key) = r[1].create_key(&tenant, &["admin"]);
    let path = costs(&tenant);
    let client = support::client();
    let all: Vec<&Sidecar> = r.iter().collect();
    let before = burst(&client, &all, &path, &key, 20).await;
    assert_eq!(count(&before, StatusCode::OK), 20, "{before:?}");
    assert_eq!(metric(&r[0], "costguard_rate_limit_redis_up"), Some(1.0));

    redis.kill();
    let during = burst(&client, &all, &path, &key, 20).await;
    assert_eq!(
        count(&during, StatusCode::OK),
        20,
        "local limits keep serving while Redis is down: {during:?}"
    );
    assert_eq!(metric(&r[0], "costguard_rate_limit_redis_up"), Some(0.0));

    redis.start_again();
    // Back within a few probes, no restart.
    let start = Instant::now();
    while metric(&r[0], "costguard_rate_limit_redis_up") != Some(1.0)
        || metric(&r[1], "costguard_rate_limit_redis_up") != Some(1.0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Redis not used again"
        );
        let _ = burst(&client, &all, &path, &key, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = burst(&client, &all, &path, &key, 20).await;
    assert_eq!(count(&after, StatusCode::OK), 20, "{after:?}");
    assert!(
        up.count() >= 60,
        "every admitted request reached the upstream"
    );
}

/// With `redis_down = "refuse"`, a request meets 503 while Redis is gone
/// and 200 again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_refuses_when_told_to() {
    let up = Upstream::start().await;
    let mut redis = OwnRedis::start();
    let shared = Shared::on(PG_URL, &redis.url());
    let r = shared.replicas(1, &up, "", &[("COSTGUARD_RATE_LIMIT_REDIS_DOWN", "refuse")]);
    let tenant = r[0].create_tenant("enterprise");
    let (_, key) = r[0].create_key(&tenant, &["admin"]);
    let path = costs(&tenant);
    assert_eq!(get(r[0].proxy, &path, &key), 200);
    redis.kill();
    assert_eq!(get(r[0].proxy, &path, &key), 503);
    redis.start_again();
    let start = Instant::now();
    while get(r[0].proxy, &path, &key) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Redis not used again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PostgreSQL stopped and started again: cached keys keep working, writes
/// and cache misses get 503 meanwhile, `/ready` says so without failing,
/// and afterwards everything works with no restart and nothing
/// acknowledged is lost.
#[test]
fn postgres_lost_and_back_needs_no_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start());
    let mut pg = OwnPostgres::start();
    let shared = Shared::on(&pg.url(), REDIS_URL);
    let r = shared.replicas(2, &up, NO_AUTH_THROTTLE, &[]);
    let (a, b) = (&r[0], &r[1]);
    let tenant = a.create_tenant("enterprise");
    let path = costs(&tenant);
    let (_, cached) = a.create_key(&tenant, &["admin"]);
    let (_, uncached) = a.create_key(&tenant, &["admin"]);
    assert_eq!(get(b.proxy, &path, &cached), 200);

    pg.stop();
    assert_eq!(
        get(b.proxy, &path, &cached),
        200,
        "a cached key serves: {}",
        b.logs()
    );
    assert_eq!(
        get(b.proxy, &path, &uncached),
        503,
        "a cache miss cannot be decided"
    );
    let (status, body) = a.admin(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/keys"),
        Some(json!({"description": "during the outage", "roles": ["admin"]})),
    );
    assert_eq!(status, 503, "{body}");
    let ready = raw_request(
        b.admin,
        b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("unavailable"), "{}", ready.body);

    pg.start_again();
    let start = Instant::now();
    while get(b.proxy, &path, &uncached) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store not used again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, fresh) = a.create_key(&tenant, &["admin"]);
    assert_eq!(get(b.proxy, &path, &fresh), 200);
    assert_eq!(get(a.proxy, &path, &cached), 200);
}

/// A replica killed (`kill -9`) under load: the others carry on, the
/// cluster-wide quota stays exact (Redis counts what every replica
/// admitted, the dead one's included), and the keys it made are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_leaves_the_others_exact() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    let mut r = shared.replicas(3, &up, "", &[]);
    let tenant = r[0].create_tenant("enterprise");
    let (status, body) = r[0].admin(
        "PATCH",
        &format!("/admin/v1/tenants/{tenant}"),
        Some(json!({"limits": {"max_requests_per_day": 40}})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, key) = r[2].create_key(&tenant, &["admin"]);
    let client = support::client();
    let path = costs(&tenant);
    let before = {
        let all: Vec<&Sidecar> = r.iter().collect();
        burst(&client, &all, &path, &key, 15).await
    };
    assert_eq!(count(&before, StatusCode::OK), 15, "{before:?}");
    // Killed with requests of its own just admitted.
    r[2].kill9();
    let survivors: Vec<&Sidecar> = r[..2].iter().collect();
    let after = burst(&client, &survivors, &path, &key, 40).await;
    assert_eq!(
        count(&after, StatusCode::OK),
        25,
        "the quota of 40 counts the dead replica's 5: {after:?}"
    );
    assert_eq!(up.count(), 40);
    // The key made on the dead replica was acknowledged, so it is kept.
    assert_eq!(
        survivors[0]
            .admin("GET", &format!("/admin/v1/tenants/{tenant}/keys"), None)
            .1["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Every replica's audit records reach PostgreSQL, and `costguard audit
/// verify --shipped` (with the key the replicas keep in the store, no file
/// named) checks each stream; a row edited in the database is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipped_audit_streams_verify_and_tampering_is_caught() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    let r = shared.replicas(2, &up, "", &[]);
    let tenant = r[0].create_tenant("enterprise");
    let (_, key) = r[1].create_key(&tenant, &["admin"]);
    let client = support::client();
    let all: Vec<&Sidecar> = r.iter().collect();
    let statuses = burst(&client, &all, &costs(&tenant), &key, 20).await;
    assert_eq!(count(&statuses, StatusCode::OK), 20);
    let verify = || {
        let mut cli = support::cli(["audit", "verify", "--shipped"]);
        for (k, v) in shared.env() {
            cli = cli.env(&k, v);
        }
        cli.run()
    };
    let sql = |query: String| {
        let out = std::process::Command::new("psql")
            .args([&shared.pg_url, "-Atc"])
            .arg(query)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Shipped within a second or two (records are synced, then shipped):
    // every request's record, and both streams verified.
    let start = Instant::now();
    let out = loop {
        let out = verify();
        let streams = out.stdout.lines().filter(|l| l.contains(": ok (")).count();
        let requests = sql(format!(
            "SELECT count(*) FROM {}.audit_records WHERE event_type = 'request.allowed'",
            shared.schema
        ));
        if out.status.success() && streams == 2 && requests == "20" {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "two verified streams expected:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(!out.stdout.contains("BROKEN"), "{}", out.stdout);
    // One shipped request record edited (its line no longer hashes).
    let edited = sql(format!(
        "WITH one AS (SELECT stream, seq FROM {s}.audit_records WHERE event_type = 'request.allowed' \
         ORDER BY stream, seq LIMIT 1) \
         UPDATE {s}.audit_records r SET line = replace(r.line, '\"request.allowed\"', '\"request.allowed \"') \
         FROM one WHERE r.stream = one.stream AND r.seq = one.seq RETURNING r.seq",
        s = shared.schema
    ));
    assert!(!edited.is_empty(), "one row edited");
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("BROKEN"), "{}", out.stdout);
}
