//! Bounds and upstream failures: 413, 431, 502, 504, slowloris, idle
//! connections, and a 1 GiB upload streamed with bounded memory.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::{Sidecar, Upstream, config_for, error_code, get_as, raw_request, sidecar};

#[tokio::test(flavor = "multi_thread")]
async fn declared_body_over_the_limit_is_413_before_the_upstream() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nmax_body_bytes = 1024\n");
    let who = cg.tenant_and_key();
    let auth = who.auth_line();
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 1025\r\n\r\n{}",
        "a".repeat(1025)
    );
    let resp = raw_request(cg.proxy, req.as_bytes());
    assert_eq!(resp.status, 413);
    assert_eq!(error_code(&resp.body), "body_too_large");
    assert_eq!(up.count(), 0);
    // At the limit is fine.
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}Content-Length: 1024\r\n\r\n{}",
        "a".repeat(1024)
    );
    assert_eq!(raw_request(cg.proxy, req.as_bytes()).status, 200);
    assert_eq!(up.last().body_len, 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_over_the_limit_is_cut_off_with_413() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nmax_body_bytes = 1024\n");
    let who = cg.tenant_and_key();
    let mut req = format!(
        "POST /sink HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{}Transfer-Encoding: chunked\r\n\r\n",
        who.auth_line()
    )
    .into_bytes();
    for _ in 0..4 {
        req.extend_from_slice(format!("200\r\n{}\r\n", "b".repeat(512)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(cg.proxy, &req);
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(error_code(&resp.body), "body_too_large");
    assert!(
        up.seen().iter().all(|s| !s.complete),
        "the upstream never saw a complete request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_or_too_large_headers_are_431() {
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        "[limits]\nmax_header_count = 20\nmax_header_bytes = 4096\n",
    );
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..20 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw_request(cg.proxy, req.as_bytes());
    assert_eq!(resp.status, 431);
    assert_eq!(error_code(&resp.body), "headers_too_large");

    let req = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    let resp = raw_request(cg.proxy, req.as_bytes());
    assert_eq!(resp.status, 431);
    assert_eq!(error_code(&resp.body), "headers_too_large");

    // Far beyond the limit hyper itself stops reading and answers 431; the
    // client may see a reset instead, as the rest of its head is unread.
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Huge: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    if let Some(resp) = support::try_raw_request(cg.proxy, req.as_bytes()) {
        assert_eq!(resp.status, 431);
    }
    assert_eq!(up.count(), 0);

    let who = cg.tenant_and_key();
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{}X-Fine: 1\r\n\r\n",
        who.auth_line()
    );
    assert_eq!(raw_request(cg.proxy, req.as_bytes()).status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_without_hanging() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cg = Sidecar::start(
        &config_for(
            &format!("http://127.0.0.1:{port}"),
            "upstream_connect_timeout = \"1s\"\n",
        ),
        &[],
    );
    let started = Instant::now();
    let who = cg.tenant_and_key();
    let (status, headers, body) = get_as(&cg.url("/v1/x"), &who.key).await;
    assert_eq!(status, 502);
    assert_eq!(error_code(&body), "upstream_unavailable");
    assert!(headers.contains_key("x-request-id"));
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_at_the_response_timeout() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "upstream_response_timeout = \"500ms\"\n");
    let who = cg.tenant_and_key();
    let (status, _, body) = get_as(&cg.url("/hang"), &who.key).await;
    assert_eq!(status, 504);
    assert_eq!(error_code(&body), "upstream_timeout");
    let (status, _, _) = get_as(&cg.url("/slow/10"), &who.key).await;
    assert_eq!(status, 200, "a fast answer is not affected");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_closed_at_the_header_timeout_while_others_are_served() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nheader_read_timeout = \"1s\"\n");
    let who = cg.tenant_and_key();
    let addr = cg.proxy;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").unwrap();
        let started = Instant::now();
        // Drip one header line every 200 ms, for up to 10 s.
        for i in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            if s.write_all(format!("X-Drip-{i}: x\r\n").as_bytes())
                .is_err()
            {
                return started.elapsed();
            }
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => return started.elapsed(), // hyper may answer 408 before closing
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
        }
        panic!("the slow connection was never closed");
    });
    // Meanwhile normal requests keep working.
    for _ in 0..5 {
        let (status, _, _) = get_as(&cg.url("/v1/ok"), &who.key).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    assert_eq!(up.count(), 5, "the slow request never reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_idle_connections_are_closed_at_the_idle_timeout() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nidle_timeout = \"1s\"\n");
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(cg.proxy).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Keep-alive connection left idle after one request.
    let mut kept = TcpStream::connect(cg.proxy).unwrap();
    let who = cg.tenant_and_key();
    kept.write_all(format!("GET /x HTTP/1.1\r\nHost: a\r\n{}\r\n", who.auth_line()).as_bytes())
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let started = Instant::now();
    loop {
        match kept.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle keep-alive closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_upload_streams_with_bounded_memory() {
    const CHUNK: usize = 256 * 1024;
    const TOTAL: u64 = 1 << 30;
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        "upstream_response_timeout = \"10m\"\n[limits]\nmax_body_bytes = 2147483648\n",
    );
    let who = cg.tenant_and_key();
    let body = RepeatBody {
        chunk: Bytes::from(vec![b'z'; CHUNK]),
        left: (TOTAL / CHUNK as u64) as usize,
    };
    let req = Request::builder()
        .method("POST")
        .uri(cg.url("/sink"))
        .header("x-api-key", &who.key)
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("upstream saw {TOTAL} bytes"));
    assert_eq!(up.last().body_len, TOTAL);
    let peak = cg.peak_rss_kib();
    println!("peak RSS after a 1 GiB upload: {peak} KiB");
    assert!(
        peak < 128 * 1024,
        "peak RSS {peak} KiB for a 1 GiB body: it was buffered"
    );
}

/// `left` copies of `chunk`, produced as fast as they are taken.
struct RepeatBody {
    chunk: Bytes,
    left: usize,
}

impl http_body::Body for RepeatBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_wait_until_one_closes() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[limits]\nmax_connections = 1\n");
    let who = cg.tenant_and_key();
    let auth = who.auth_line();
    let mut first = TcpStream::connect(cg.proxy).unwrap();
    first
        .write_all(format!("GET /first HTTP/1.1\r\nHost: a\r\n{auth}\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        first.read(&mut buf).unwrap() > 0,
        "the first connection is served"
    );

    // The second connection is accepted by the kernel but not served while
    // the first holds the only slot.
    let mut second = TcpStream::connect(cg.proxy).unwrap();
    second
        .write_all(
            format!("GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}\r\n")
                .as_bytes(),
        )
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        second.read(&mut buf).is_err(),
        "served beyond max_connections"
    );
    assert_eq!(up.count(), 1);

    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = second.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(up.last().target, "/second");
}
