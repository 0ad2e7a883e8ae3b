//! Issue 15 §4c-d and §5e-g, through the real binary: connection slots
//! (idle timeout that HTTP/2 PINGs do not reset, maximum connection age,
//! per-source connection cap), startup and runtime warnings about exposure,
//! request framing (duplicate Host, transfer codings), headers that must
//! never reach the upstream, and what the public `/ready` tells.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Sidecar, Upstream, config_for, raw_request, sidecar, try_raw_request};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// How an HTTP/2 connection that only ever PINGs ended, and when.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The server sent GOAWAY (and then closed, or not yet).
    GoAway,
    /// The server closed the connection.
    Closed,
    /// Still open when the test stopped waiting.
    StillOpen,
}

/// Speaks h2c prior knowledge: preface, SETTINGS, then a PING every
/// `every` and no request at all, for up to `wait`.
fn ping_only_h2(addr: SocketAddr, every: Duration, wait: Duration) -> (Ended, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut last_ping = Instant::now() - every;
    let mut n = 0u64;
    while started.elapsed() < wait {
        if last_ping.elapsed() >= every {
            n += 1;
            if s.write_all(&frame(PING, 0, 0, &n.to_be_bytes())).is_err() {
                return (Ended::Closed, started.elapsed());
            }
            last_ping = Instant::now();
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return (Ended::Closed, started.elapsed()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (Ended::Closed, started.elapsed()),
        }
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            if kind == GOAWAY {
                return (Ended::GoAway, started.elapsed());
            }
            if kind == SETTINGS && flags & 1 == 0 {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[]));
            }
            buf.drain(..9 + len);
        }
    }
    (Ended::StillOpen, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nidle_timeout = \"1s\"\n");
    // A PING every 200 ms: bytes move all the time, no request ever starts.
    let (ended, after) = tokio::task::spawn_blocking({
        let addr = cg.proxy;
        move || ping_only_h2(addr, Duration::from_millis(200), Duration::from_secs(8))
    })
    .await
    .unwrap();
    assert_ne!(ended, Ended::StillOpen, "PINGs held the connection");
    assert!(
        after < Duration::from_secs(4),
        "closed between one and two idle timeouts (plus a second): {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_closed_at_their_maximum_age() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nmax_connection_age = \"1s\"\n");
    // HTTP/2: GOAWAY at the age, though PINGs are not idle by bytes and the
    // idle timeout (60 s) is far.
    let (ended, after) = tokio::task::spawn_blocking({
        let addr = cg.proxy;
        move || ping_only_h2(addr, Duration::from_millis(200), Duration::from_secs(8))
    })
    .await
    .unwrap();
    assert_eq!(ended, Ended::GoAway, "after {after:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "{after:?}"
    );
    // HTTP/1.1 keep-alive: served, then closed once the age is reached.
    let mut s = TcpStream::connect(cg.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "closed, not timed out: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Opens a keep-alive connection and completes one request on it, so the
/// server has surely accepted (and counted) it.
fn open_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .ok()?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("{\"status\":\"ok\"}") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
        }
    }
    Some(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_source_are_capped() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nmax_connections_per_source = 3\n");
    let addr = cg.proxy;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..3)
            .map(|i| open_connection(addr).unwrap_or_else(|| panic!("connection {i}")))
            .collect();
        assert!(
            open_connection(addr).is_none(),
            "the fourth connection from this address is closed at once"
        );
        assert!(
            try_raw_request(
                addr,
                b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            .is_none()
        );
        drop(held);
        // The slots come back once the connections are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if open_connection(addr).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "slots not given back");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_are_exempt_from_the_per_source_cap() {
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        "trusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_source = 2\n",
    );
    let addr = cg.proxy;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..5)
            .map(|i| open_connection(addr).unwrap_or_else(|| panic!("connection {i}")))
            .collect();
        drop(held);
    })
    .await
    .unwrap();
}

/// Waits up to 5 s for a log line containing `needle`; returns the logs.
fn wait_for_log(cg: &Sidecar, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = cg.logs();
        if logs.contains(needle) || Instant::now() > deadline {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_warns_about_trusting_everyone_and_an_exposed_admin_port() {
    let up = Upstream::start().await;
    let cg = Sidecar::start(
        &config_for(
            &up.url(),
            "trusted_proxies = [\"10.0.0.0/8\", \"0.0.0.0/0\", \"::/0\"]\n",
        ),
        &[("COSTGUARD_ADMIN_LISTEN", "0.0.0.0:0")],
    );
    let logs = wait_for_log(&cg, "non-loopback");
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    assert!(
        warns
            .iter()
            .any(|l| l.contains("trusts EVERY address") && l.contains("0.0.0.0/0")),
        "{logs}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("non-loopback") && l.contains("without TLS")),
        "{logs}"
    );
    // The defaults warn about neither.
    let quiet = sidecar(&up, "");
    std::thread::sleep(Duration::from_millis(300));
    let logs = quiet.logs();
    assert!(!logs.contains("trusts EVERY address"), "{logs}");
    assert!(!logs.contains("non-loopback"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_an_untrusted_private_peer_warn_once() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let needle = "proxy.trusted_proxies is empty";
    // Without forwarding headers: nothing to say.
    raw_request(
        cg.proxy,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..3 {
        let resp = raw_request(
            cg.proxy,
            b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
        );
        assert_eq!(resp.status, 401);
    }
    let logs = wait_for_log(&cg, needle);
    let hits = logs
        .lines()
        .filter(|l| l.contains(needle) && l.contains("\"level\":\"WARN\""))
        .count();
    assert_eq!(hits, 1, "{logs}");
    // Once a proxy is trusted there is nothing to warn about.
    let trusted = sidecar(&up, "trusted_proxies = [\"127.0.0.1\"]\n");
    raw_request(
        trusted.proxy,
        b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!trusted.logs().contains(needle));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_host_fields_are_refused_never_forwarded() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    for hosts in [
        "Host: a\r\nHost: b\r\n",
        "Host: a\r\nHost: a\r\n",
        "Host: a\r\nX-Other: 1\r\nhost: evil.example\r\n",
    ] {
        let resp = raw_request(
            cg.proxy,
            format!(
                "GET /v1/x HTTP/1.1\r\n{hosts}{}Connection: close\r\n\r\n",
                who.auth_line()
            )
            .as_bytes(),
        );
        assert_eq!(resp.status, 400, "{hosts:?}: {resp:?}");
    }
    assert_eq!(up.count(), 0);
    // One Host is fine.
    let resp = raw_request(
        cg.proxy,
        format!(
            "GET /v1/x HTTP/1.1\r\nHost: a\r\n{}Connection: close\r\n\r\n",
            who.auth_line()
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_codings_other_than_one_chunked_are_refused() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
    ] {
        let resp = try_raw_request(
            cg.proxy,
            format!(
                "POST /v1/x HTTP/1.1\r\nHost: a\r\n{}{te}Connection: close\r\n\r\n{body}",
                who.auth_line()
            )
            .as_bytes(),
        );
        let status = resp.map(|r| r.status);
        assert_eq!(status, Some(400), "{te:?}");
    }
    assert_eq!(up.count(), 0);
    let resp = raw_request(
        cg.proxy,
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
            who.auth_line()
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(up.last().body.as_deref(), Some(&b"hello"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn target_rewrites_and_credential_lookalikes_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let resp = raw_request(
        cg.proxy,
        format!(
            "GET /v1/x HTTP/1.1\r\nHost: a\r\n{}\
             X-Original-URL: /admin/everything\r\n\
             X-Rewrite-URL: /admin/everything\r\n\
             X-Original-Method: DELETE\r\n\
             x_api_key: costops_0123456789abcdef0123456789abcdef\r\n\
             X_API-Key: costops_0123456789abcdef0123456789abcdef\r\n\
             x.api.key: costops_0123456789abcdef0123456789abcdef\r\n\
             X-Api_Key: costops_0123456789abcdef0123456789abcdef\r\n\
             Cookie: theme=dark\r\n\
             X-Kept: yes\r\n\
             Connection: close\r\n\r\n",
            who.auth_line()
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = up.last();
    for gone in [
        "x-original-url",
        "x-rewrite-url",
        "x-original-method",
        "x_api_key",
        "x_api-key",
        "x.api.key",
        "x-api_key",
        "x-api-key",
        "authorization",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["cookie"], "theme=dark", "real cookies pass");
    assert_eq!(seen.headers["x-kept"], "yes");
    // The list is configurable: an operator can narrow it.
    let narrow = sidecar(&up, "strip_headers = [\"X-Tenant-Id\"]\n");
    let who = narrow.tenant_and_key();
    let resp = raw_request(
        narrow.proxy,
        format!(
            "GET /v1/x HTTP/1.1\r\nHost: a\r\n{}X-Original-URL: /x\r\nx_api_key: k\r\nConnection: close\r\n\r\n",
            who.auth_line()
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-original-url"], "/x");
    assert!(
        !seen.headers.contains_key("x_api_key"),
        "credential look-alikes are always stripped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_ready_shows_the_status_only() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let public = raw_request(
        cg.proxy,
        b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(public.status, 200);
    assert_eq!(public.json(), serde_json::json!({"status": "ready"}));
    let admin = raw_request(
        cg.admin,
        b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(admin.status, 200);
    let details = admin.json();
    assert_eq!(details["status"], "ready");
    assert_eq!(details["checks"]["store"], "ok", "{details}");
    assert!(
        details["checks"]["policy"].is_object() || details["checks"]["policy"].is_string(),
        "{details}"
    );
    assert_eq!(up.count(), 0);
}
