//! The proxy's per-request cost, in process.
//!
//! - `stages/*`: the work costguard adds before forwarding (request id,
//!   size limits, header hygiene) on a typical API request, no I/O.
//! - `roundtrip/*`: one keep-alive HTTP/1.1 request (a real route, a real
//!   viewer key) over loopback, either
//!   straight to an upstream (`direct`) or through a real costguard server
//!   in the same process (`costguard`). The difference is the proxy hop.
//!
//! `cargo bench --bench pipeline`
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use costguard::config::{self, FileConfig};
use costguard::forward::headers::{Hygiene, Origin};
use costguard::header_pattern::HeaderPattern;
use costguard::server::Server;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "costs.example.com"),
        ("user-agent", "python-httpx/0.27.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        (
            "authorization",
            "Bearer costops_0123456789abcdef0123456789abcdef",
        ),
        ("content-type", "application/json"),
        ("x-request-id", "req-0123456789"),
        ("x-costops-tenant-id", "org-forged"),
        ("connection", "keep-alive"),
    ] {
        h.insert(
            http::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    h
}

fn stages(c: &mut Criterion) {
    let config = config::from_file(FileConfig::default()).unwrap();
    let strip: Vec<HeaderPattern> = config.proxy.strip_headers.clone();
    let hygiene = Hygiene::new(strip, config.proxy.trusted_proxies.clone());
    let headers = typical_headers();
    let peer_value = HeaderValue::from_static("10.0.0.7");
    let origin = Origin {
        peer: "10.0.0.7".parse().unwrap(),
        peer_value: &peer_value,
        tls: false,
    };
    let host = HeaderValue::from_static("costs.example.com");
    let mut g = c.benchmark_group("stages");
    g.bench_function("request_id", |b| {
        b.iter(|| costguard::request_id::take_or_generate(&headers))
    });
    g.bench_function("request_id_generated", |b| {
        b.iter(costguard::request_id::generate)
    });
    g.bench_function("limits", |b| {
        b.iter(|| costguard::limits::check(&headers, &config.limits))
    });
    g.bench_function("header_hygiene", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| {
                let rid = HeaderValue::from_static("req-0123456789");
                hygiene.request(h, origin, &host, &rid)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"items\":[]}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn roundtrip(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
    auth: &str,
) {
    let req = Request::get(path)
        .header("host", "costs.example.com")
        .header("authorization", auth)
        .body(Empty::new())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

fn roundtrips(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (up, proxy, path, auth) = rt.block_on(async {
        let up = upstream().await;
        let mut file = FileConfig::default();
        file.proxy.listen = "127.0.0.1:0".into();
        file.admin.listen = "127.0.0.1:0".into();
        file.proxy.upstream = format!("http://{up}");
        file.store.path = data.path().join("store");
        file.log.access_log = false;
        let config = config::from_file(file).unwrap();
        let server = Server::bind(&config).await.unwrap();
        let proxy = server.proxy_addr();
        // A real tenant and viewer key, made through the admin operations;
        // a rate high enough that criterion's iterations are never refused.
        let root = costguard::admin::auth::Caller::Root;
        let tenant = server
            .ops()
            .create_tenant(&root, serde_json::from_value(serde_json::json!({"organization_name": "Bench", "admin_email": "b@bench.example", "tier": "enterprise"})).unwrap())
            .await
            .unwrap();
        let (_, key) = server
            .ops()
            .create_key(&root, &tenant.tenant_id, serde_json::from_value(serde_json::json!({"roles": ["viewer"], "rate_limit_per_minute": 1_000_000})).unwrap())
            .await
            .unwrap();
        tokio::spawn(server.run(std::future::pending()));
        let path = format!("/v1/tenants/{}/costs?month=2026-11", tenant.tenant_id);
        (up, proxy, path, format!("Bearer {key}"))
    });
    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(5));
    for (name, addr) in [("direct", up), ("costguard", proxy)] {
        let mut send = rt.block_on(connect(addr));
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(roundtrip(&mut send, &path, &auth)))
        });
    }
    g.finish();
}

criterion_group!(benches, stages, roundtrips);
criterion_main!(benches);
