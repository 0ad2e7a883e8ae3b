//! HTTP/2 (h2c prior knowledge, and h2 by ALPN over TLS) and TLS
//! termination with a certificate generated here.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Upstream, sidecar};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_is_served_and_forwarded_as_http11() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let who = cg.tenant_and_key();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    // Several concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        let url = cg.url(&format!("/v1/items/{i}?h2=1"));
        let key = who.key.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method("POST")
                .uri(url)
                .header("authorization", format!("Bearer {key}"))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(Full::new(Bytes::from(vec![b'x'; 1000 + i])))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("upstream saw {} bytes", 1000 + i));
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 8);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(
            s.headers["host"],
            cg.proxy.to_string().as_str(),
            ":authority becomes Host"
        );
        assert_eq!(
            s.headers["cookie"], "a=1; b=2",
            "HTTP/2 cookie fields are joined"
        );
        assert!(s.target.starts_with("/v1/items/") && s.target.ends_with("?h2=1"));
    }
}

struct Pki {
    ca_pem: String,
    dir: tempfile::TempDir,
}

/// A CA and a leaf for 127.0.0.1 / localhost, the leaf's files in a
/// directory.
fn pki() -> Pki {
    let (ca_pem, cert, key) = support::test_pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    Pki { ca_pem, dir }
}

fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_termination_serves_h2_by_alpn_and_http11() {
    let pki = pki();
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            pki.dir.path().join("cert.pem").display(),
            pki.dir.path().join("key.pem").display()
        ),
    );
    let who = cg.tenant_and_key();
    let name = ServerName::try_from("localhost").unwrap();

    // HTTP/2 by ALPN.
    let tcp = tokio::net::TcpStream::connect(cg.proxy).await.unwrap();
    let tls = tls_connector(&pki.ca_pem, &[b"h2"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .header("x-api-key", &who.key)
        .uri(format!(
            "https://localhost:{}/v1/secure?x=1",
            cg.proxy.port()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/v1/secure?x=1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // HTTP/1.1 over TLS.
    let tcp = tokio::net::TcpStream::connect(cg.proxy).await.unwrap();
    let tls = tls_connector(&pki.ca_pem, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/v1/secure11")
        .header("x-api-key", &who.key)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().target, "/v1/secure11");

    // Plain HTTP on the TLS port gets nowhere.
    let resp = support::try_raw_request(
        cg.proxy,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.is_none(), "{resp:?}");
    assert_eq!(up.count(), 2);
}
