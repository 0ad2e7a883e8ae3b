//! The floor our stack can reach: a bare hyper 1.x + hyper-util reverse
//! proxy with a pooled HTTP/1.1 client and nothing else (no header hygiene,
//! no limits, no logging). The load harness runs it beside costguard to show
//! what costguard's own work costs.
//!
//! `cargo run --release --example bare_forwarder -- --listen 127.0.0.1:18091 --upstream http://127.0.0.1:18080`

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = Either<Incoming, Full<bytes::Bytes>>;

fn arg(name: &str) -> String {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args
                .next()
                .unwrap_or_else(|| panic!("{name} needs a value"));
        }
    }
    panic!("usage: bare_forwarder --listen ADDR --upstream http://HOST:PORT");
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = arg("--listen").parse().expect("--listen ADDR");
    let upstream: Uri = arg("--upstream").parse().expect("--upstream URL");
    let authority = upstream.authority().expect("upstream host").clone();
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                        .to_string();
                    *req.uri_mut() = Uri::builder()
                        .scheme("http")
                        .authority(authority)
                        .path_and_query(path)
                        .build()
                        .expect("valid URI");
                    let resp: Response<Body> = match client.request(req).await {
                        Ok(resp) => resp.map(Either::Left),
                        Err(_) => {
                            let mut r = Response::new(Either::Right(Full::new(
                                bytes::Bytes::from_static(b"bad gateway"),
                            )));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        }
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
