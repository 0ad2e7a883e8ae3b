//! The demo's built-in upstream: answers every request with what it
//! received (method, raw path, query, headers, body size) as JSON, so you can
//! see exactly what costguard forwards. Bodies are counted, not buffered;
//! up to 64 KiB of UTF-8 body is echoed back as text.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::response::json_response;

const ECHO_BODY_MAX: usize = 64 * 1024;

/// Binds `addr` and serves the echo upstream in the background.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });
    Ok(local)
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let mut body_bytes: u64 = 0;
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "body read failed"}),
            ));
        };
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
            if kept.len() + data.len() <= ECHO_BODY_MAX {
                kept.extend_from_slice(data);
            }
        }
    }
    let body_text = (body_bytes as usize == kept.len())
        .then(|| std::str::from_utf8(&kept).ok().map(str::to_owned))
        .flatten();
    let resp = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "body": body_text,
    });
    Ok(json_response(StatusCode::OK, &resp))
}
