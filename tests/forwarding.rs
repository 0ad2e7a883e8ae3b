//! What the upstream receives: exact method, path, query, headers and body;
//! nothing a client could use to impersonate; costguard's own headers.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{Sidecar, Upstream, client, config_for, raw_request, sidecar};

#[tokio::test(flavor = "multi_thread")]
async fn forwards_method_path_query_headers_and_body_exactly() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let target = "/v1/items/caf%C3%A9/x%20y/%5Buser%5D/a.b?q=a%20b&q=2&empty=&plus=a+b&%7E=~";
    let req = Request::builder()
        .method("PATCH")
        .uri(cg.url(target))
        .header("authorization", format!("Bearer {}", who.key))
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}")))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-upstream"],
        "yes",
        "upstream headers come back"
    );
    assert!(
        !resp.headers().contains_key("x-upstream-private"),
        "response Connection tokens are stripped"
    );
    assert!(!resp.headers().contains_key("keep-alive"));
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "upstream saw 17 bytes");

    let seen = up.last();
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.target, target, "path and query byte for byte");
    assert_eq!(seen.version, http::Version::HTTP_11);
    let custom: Vec<_> = seen.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["one", "two"]);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["accept-encoding"], "gzip");
    assert_eq!(
        seen.headers["host"],
        cg.proxy.to_string().as_str(),
        "the client's Host is kept"
    );
    assert_eq!(seen.headers["x-request-id"], rid.as_str());
    assert_eq!(seen.body.as_deref(), Some(&b"{\"hello\":\"world\"}"[..]));
    // Identity from the key; the key itself never reaches the upstream.
    assert_eq!(seen.headers["x-costops-tenant-id"], who.tenant.as_str());
    assert_eq!(seen.headers["x-costops-user-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-costops-key-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "admin");
    assert_eq!(seen.headers["x-costops-auth-method"], "api_key");
    assert!(!seen.headers.contains_key("authorization"));
}

#[tokio::test(flavor = "multi_thread")]
async fn strips_hop_by_hop_costops_lookalikes_and_foreign_identity_headers() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let request = format!(
        "GET /v1/tenants/{}/costs HTTP/1.1\r\n\
        Host: api.example\r\n{}",
        who.tenant,
        who.auth_line()
    ) + "\
        Connection: close, X-Private-Hop\r\n\
        X-Private-Hop: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        TE: trailers\r\n\
        Upgrade: websocket\r\n\
        X-CostOps-Tenant-Id: org-evil\r\n\
        x-costops-roles: system_admin\r\n\
        X_CostOps_User_Id: root\r\n\
        x.costops.key-id: k\r\n\
        X-COSTOPS-AUTH-METHOD: api_key\r\n\
        X-Tenant-Id: org-evil\r\n\
        X-User-Id: root\r\n\
        X-Forwarded-User: root\r\n\
        X-Forwarded-Email: root@example.com\r\n\
        X-Auth-Request-Email: root@example.com\r\n\
        X-Auth-Request-Groups: admins\r\n\
        Remote-User: root\r\n\
        Remote_User: root\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.example\r\n\
        X-Forwarded-Port: 443\r\n\
        Forwarded: for=6.6.6.6;proto=https\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        X-Keep-Me: yes\r\n\
        \r\n";
    let resp = raw_request(cg.proxy, request.as_bytes());
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = up.last();
    let names: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).collect();
    for gone in [
        "connection",
        "x-private-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
        "x-tenant-id",
        "x-user-id",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-auth-request-email",
        "x-auth-request-groups",
        "remote-user",
        "remote_user",
        "x-forwarded-port",
        "forwarded",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream: {names:?}"
        );
    }
    // The only X-CostOps-* headers upstream are costguard's, with its values.
    for name in &names {
        let canon = name.replace(['_', '.'], "-");
        if canon.starts_with("x-costops") {
            assert_eq!(canon, *name, "look-alike {name} reached the upstream");
            assert_eq!(
                seen.headers.get_all(*name).iter().count(),
                1,
                "{name} twice"
            );
        }
    }
    assert_eq!(seen.headers["x-costops-tenant-id"], who.tenant.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "admin");
    assert_eq!(seen.headers["x-costops-auth-method"], "api_key");
    assert_eq!(seen.headers["x-costops-user-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-costops-key-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-keep-me"], "yes");
    assert_eq!(seen.headers["host"], "api.example");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "spoofed X-Forwarded-For is replaced"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_header_cannot_strip_costguards_own_headers() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\n{}\
        Connection: close, X-CostOps-Tenant-Id, X-CostOps-Roles, X-CostOps-User-Id, X-CostOps-Key-Id, X-CostOps-Auth-Method, X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP, Host\r\n\
        X-Request-Id: keep-me-123\r\n\r\n",
        who.auth_line()
    );
    let resp = raw_request(cg.proxy, request.as_bytes());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["x-request-id"], "keep-me-123");
    let seen = up.last();
    assert_eq!(seen.headers["x-request-id"], "keep-me-123");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "a");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["host"], "a");
    assert_eq!(seen.headers["x-costops-tenant-id"], who.tenant.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "admin");
    assert_eq!(seen.headers["x-costops-user-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-costops-key-id"], who.key_id.as_str());
    assert_eq!(seen.headers["x-costops-auth-method"], "api_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "trusted_proxies = [\"127.0.0.0/8\"]\n");
    let who = cg.tenant_and_key();
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{}",
        who.auth_line()
    ) + "\
        X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: costs.example.com\r\n\
        Forwarded: for=203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-User: mallory\r\n\r\n";
    assert_eq!(raw_request(cg.proxy, request.as_bytes()).status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "costs.example.com");
    assert_eq!(seen.headers["forwarded"], "for=203.0.113.7");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.7");
    assert!(
        !seen.headers.contains_key("x-forwarded-user"),
        "identity headers go even from trusted proxies"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_strip_list_replaces_the_default() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "strip_headers = [\"X-Internal-*\"]\n");
    let who = cg.tenant_and_key();
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{}",
        who.auth_line()
    ) + "\
        X-Internal-Role: admin\r\nX-Tenant-Id: org-1\r\nX-CostOps-Tenant-Id: org-evil\r\n\r\n";
    assert_eq!(raw_request(cg.proxy, request.as_bytes()).status, 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x-internal-role"));
    assert_eq!(
        seen.headers["x-tenant-id"], "org-1",
        "no longer in the list"
    );
    assert_eq!(
        seen.headers["x-costops-tenant-id"],
        who.tenant.as_str(),
        "X-CostOps-* from clients always goes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_kept_when_valid_and_generated_otherwise() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let auth = who.auth_line();
    let resp = raw_request(
        cg.proxy,
        format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}X-Request-Id: abc-123\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(resp.headers["x-request-id"], "abc-123");
    assert_eq!(up.last().headers["x-request-id"], "abc-123");

    let resp = raw_request(
        cg.proxy,
        format!("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}X-Request-Id: bad id\"<>\r\n\r\n").as_bytes(),
    );
    let rid = resp.headers["x-request-id"].clone();
    let uuid = uuid::Uuid::parse_str(&rid).expect("a generated id is a UUID");
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(up.last().headers["x-request-id"], rid.as_str());

    // Errors and health answers carry the id too.
    let resp = raw_request(
        cg.proxy,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Request-Id: hc-1\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["x-request-id"], "hc-1");
    assert_eq!(up.count(), 2, "/health is answered locally");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_line_per_request_and_no_secrets() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let request = format!(
        "POST /v1/things?api_key=query-secret-1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
        X-API-Key: {}\r\n\
        Cookie: costguard_session=cookie-secret-2\r\n\
        X-Request-Id: logged-1\r\nContent-Length: 5\r\n\r\nhello",
        who.key
    );
    assert_eq!(raw_request(cg.proxy, request.as_bytes()).status, 200);
    // A wrong key and a malformed one are refused, and not logged either.
    let bad = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
        Authorization: Bearer costops_0123456789abcdef0123456789abcdef\r\n\r\n";
    assert_eq!(raw_request(cg.proxy, bad.as_bytes()).status, 401);
    let bad = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-API-Key: costops_fedcba9876543210-not-hex\r\n\r\n";
    assert_eq!(raw_request(cg.proxy, bad.as_bytes()).status, 401);
    // The line is written when the body ends; give the writer a moment.
    let mut line = None;
    for _ in 0..100 {
        line = cg
            .logs()
            .lines()
            .find(|l| l.contains("logged-1"))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line: serde_json::Value = serde_json::from_str(&line.expect("an access-log line")).unwrap();
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/things");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], "upstream saw 5 bytes".len());
    assert!(line["latency_us"].as_u64().is_some());
    let logs = cg.logs();
    assert_eq!(logs.lines().filter(|l| l.contains("logged-1")).count(), 1);
    for secret in [
        "query-secret-1",
        "0123456789abcdef",
        "fedcba9876543210",
        "cookie-secret-2",
        "Bearer",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_workers_serve_one_port_and_keep_their_upstream_connections() {
    let up = Upstream::start().await;
    let cg = Sidecar::start(
        &config_for(&up.url(), ""),
        &[("COSTGUARD_PROXY_WORKERS", "3")],
    );
    let who = cg.tenant_and_key();
    assert!(
        cg.logs().contains("\"workers\":3"),
        "the start says how many workers serve: {}",
        cg.logs()
    );
    // 12 clients at once, each its own connection, 5 requests each.
    let mut tasks = Vec::new();
    for c in 0..12 {
        let url = cg.url(&format!("/v1/items/{c}"));
        let key = who.key.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..5 {
                let req = Request::get(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.count(), 60, "every request reached the upstream once");
    // Pooled per worker: at most one upstream connection per request in
    // flight at once (12), never one per request (60).
    let opened = up.connections();
    assert!(
        (1..=12).contains(&opened),
        "{opened} upstream connections for 60 requests from 12 clients"
    );
}

/// An upstream that answers every request with 200 `ok` and then, per
/// `close_after`, closes the connection at once (`None`: never) or after it
/// sat idle that long, as servers with a short keep-alive timeout do.
/// Returns its address and the number of connections it accepted.
fn closing_upstream(
    close_after: Option<std::time::Duration>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    stream
                        .set_read_timeout(close_after.filter(|d| !d.is_zero()))
                        .unwrap();
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return, // closed, or idle too long
                        Ok(n) => n,
                    };
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let close = close_after.is_none_or(|d| d.is_zero());
                        let reply: &[u8] = if close {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if stream.write_all(reply).is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn get_ok(cg: &Sidecar, key: &str, path: &str) {
    let req = Request::get(cg.url(path))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_closes_every_connection_is_never_answered_with_502() {
    let (addr, accepted) = closing_upstream(Some(std::time::Duration::ZERO));
    let cg = Sidecar::start(&config_for(&format!("http://{addr}"), ""), &[]);
    let who = cg.tenant_and_key();
    for i in 0..20 {
        get_ok(&cg, &who.key, &format!("/v1/items/{i}")).await;
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        20,
        "one connection per request, none reused after the upstream closed it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_the_upstream_closed_while_idle_are_not_used() {
    // The upstream closes a connection idle for 30 ms; requests come 80 ms
    // apart, so every pooled connection is stale by the next request.
    let (addr, accepted) = closing_upstream(Some(std::time::Duration::from_millis(30)));
    let cg = Sidecar::start(&config_for(&format!("http://{addr}"), ""), &[]);
    let who = cg.tenant_and_key();
    for i in 0..10 {
        get_ok(&cg, &who.key, &format!("/v1/items/{i}")).await;
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 10);
}

/// The access-log line of the request with `X-Request-Id: id` (written
/// when its body ends, so polled briefly).
async fn access_line(cg: &support::Sidecar, id: &str) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(l) = cg
            .logs()
            .lines()
            .find(|l| l.contains(id) && l.contains("Request served."))
        {
            return serde_json::from_str(l).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no access-log line for {id}:\n{}", cg.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_is_continued_or_started_and_named_in_the_access_log() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let url = cg.url("/v1/things");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // The caller's trace: same trace id and flags, our span as parent, its
    // tracestate forwarded.
    let (status, _, _) = support::send(
        "GET",
        &url,
        &[
            ("x-api-key", who.key.as_str()),
            ("x-request-id", "traced-1"),
            ("traceparent", parent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    let sent = seen.headers["traceparent"].to_str().unwrap().to_string();
    assert_eq!(sent.len(), 55, "{sent}");
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "{sent}");
    assert_ne!(&sent[36..52], "00f067aa0ba902b7", "costguard's own span");
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(
        access_line(&cg, "traced-1").await["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // No trace: a new sampled one, the same id upstream and in the log.
    let (status, _, _) = support::send(
        "GET",
        &url,
        &[
            ("x-api-key", who.key.as_str()),
            ("x-request-id", "traced-2"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sent.starts_with("00-") && sent.ends_with("-01") && sent.len() == 55,
        "{sent}"
    );
    assert_eq!(access_line(&cg, "traced-2").await["trace_id"], sent[3..35]);

    // An invalid parent (upper-case hex) starts a new trace; its state is
    // dropped with it.
    let (status, _, _) = support::send(
        "GET",
        &url,
        &[
            ("x-api-key", who.key.as_str()),
            ("traceparent", &parent.to_uppercase()),
            ("tracestate", "evil=1"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    let sent = seen.headers["traceparent"].to_str().unwrap();
    assert!(!sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{sent}");
    assert!(seen.headers.get("tracestate").is_none());
}
