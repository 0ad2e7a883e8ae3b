//! The pipeline driven in-process: in-memory requests through the real
//! stages (store, shipped policy, limits, audit log) and the real upstream
//! client to a loopback upstream, with no listener in front.

use std::convert::Infallible;
use std::sync::Mutex;

use http::{HeaderName, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::*;
use crate::admin::auth::Caller;
use crate::config::{self, FileConfig};
use crate::server::Server;

/// A server (not serving: only its wiring is used), one tenant with a
/// viewer key, and the upstream's log of what reached it.
struct World {
    server: Server,
    proxy: Proxy<Full<Bytes>>,
    tenant: String,
    key: String,
    upstream_saw: Arc<Mutex<Vec<HeaderMap>>>,
    _data: tempfile::TempDir,
}

async fn world() -> World {
    let upstream_saw = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let saw = upstream_saw.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let saw = saw.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    saw.lock().unwrap().push(req.headers().clone());
                    async {
                        let body = Full::new(Bytes::from_static(b"{\"items\":[]}"));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let data = tempfile::tempdir().unwrap();
    let mut file = FileConfig::default();
    file.proxy.listen = "127.0.0.1:0".into();
    file.admin.listen = "127.0.0.1:0".into();
    file.proxy.upstream = format!("http://{up}");
    file.store.path = data.path().join("store");
    file.policy.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    file.log.access_log = false;
    let server = Server::bind(&config::from_file(file).unwrap())
        .await
        .unwrap();
    let tenant = server
        .ops()
        .create_tenant(
            &Caller::Root,
            serde_json::from_value(
                json!({"organization_name": "Acme", "admin_email": "a@acme.example", "tier": "enterprise"}),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .tenant_id;
    let (_, key) = server
        .ops()
        .create_key(
            &Caller::Root,
            &tenant,
            serde_json::from_value(json!({"roles": ["viewer"]})).unwrap(),
        )
        .await
        .unwrap();
    World {
        proxy: server.pipeline(),
        server,
        tenant,
        key,
        upstream_saw,
        _data: data,
    }
}

fn conn() -> ConnInfo {
    ConnInfo {
        peer: "127.0.0.1:40000".parse().unwrap(),
        peer_value: HeaderValue::from_static("127.0.0.1"),
        tls: false,
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", "costs.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// Status, headers and body (JSON, or `null` when it is not JSON).
async fn send(
    proxy: &Proxy<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Value) {
    let resp = proxy.serve(req, &conn()).await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_is_a_401_with_a_challenge_and_never_reaches_the_upstream() {
    let w = world().await;
    let path = format!("/v1/tenants/{}/costs", w.tenant);
    let (status, headers, body) = send(&w.proxy, get(&path, &[("x-request-id", "req-1")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"costguard\"");
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(body["error"]["request_id"], "req-1");
    assert!(w.upstream_saw.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_key_is_forwarded_with_trusted_identity_and_without_its_credential() {
    let w = world().await;
    let path = format!("/v1/tenants/{}/costs?month=2026-11", w.tenant);
    let auth = format!("Bearer {}", w.key);
    let req = get(
        &path,
        &[
            ("authorization", &auth),
            ("x-costops-tenant-id", "org-forged"),
        ],
    );
    let (status, headers, body) = send(&w.proxy, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.contains_key("x-request-id"));
    let saw = w.upstream_saw.lock().unwrap();
    let up = &saw[0];
    assert_eq!(up["x-costops-tenant-id"], w.tenant.as_str());
    assert_eq!(up["x-costops-auth-method"], "api_key");
    assert_eq!(up["x-costops-roles"], "viewer");
    assert_eq!(
        up.get_all(HeaderName::from_static("x-costops-tenant-id"))
            .iter()
            .count(),
        1
    );
    assert!(!up.contains_key("authorization"));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_route_is_a_403_tenant_mismatch() {
    let w = world().await;
    let auth = format!("Bearer {}", w.key);
    let req = get(
        "/v1/tenants/org-someone-else/costs",
        &[("authorization", &auth)],
    );
    let (status, _, body) = send(&w.proxy, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "tenant_mismatch");
    assert!(w.upstream_saw.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_credentials_are_a_400_before_any_lookup() {
    let w = world().await;
    let auth = format!("Bearer {}", w.key);
    let path = format!("/v1/tenants/{}/costs", w.tenant);
    let req = get(&path, &[("authorization", &auth), ("x-api-key", &w.key)]);
    let (status, _, body) = send(&w.proxy, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "ambiguous_credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_are_a_431() {
    let w = world().await;
    let big = "x".repeat(200 * 1024);
    let path = format!("/v1/tenants/{}/costs", w.tenant);
    let (status, _, body) = send(&w.proxy, get(&path, &[("x-big", &big)])).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body["error"]["code"], "headers_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_endpoints_without_single_sign_on_are_a_404() {
    let w = world().await;
    let (status, _, body) = send(&w.proxy, get("/auth/login", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["message"], "single sign-on is not configured");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_answered_locally() {
    let w = world().await;
    let (status, _, body) = send(&w.proxy, get("/health", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert!(w.upstream_saw.lock().unwrap().is_empty());
    drop(w.server);
}
