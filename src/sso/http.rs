//! The HTTP client for identity providers (discovery, key sets, token
//! calls): hyper and rustls, the stack the proxy already runs on, no second
//! one. One connection per call: these calls are rare (startup, a key
//! refetch, one token exchange per login), and a fresh connection never
//! carries state between providers. Every call is bounded in time and size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

/// A call to an identity provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be called.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connect, TLS or HTTP failure.
    #[error("{0}")]
    Io(String),
    /// No answer within the configured time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer is larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// Calls identity providers. Cheap to clone.
#[derive(Clone)]
pub struct IdpClient {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for IdpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `openidconnect` calls the provider through this.
impl<'c> openidconnect::AsyncHttpClient<'c> for IdpClient {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Vec<u8>>, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: Request<Vec<u8>>) -> Self::Future {
        Box::pin(self.send(request))
    }
}

impl IdpClient {
    /// A client trusting the system's roots plus the PEM certificates in
    /// `ca_file`.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot parse is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| HttpError::Io(format!("{}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| HttpError::Io(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(HttpError::Io(format!(
                    "{}: no certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| HttpError::Io(format!("{}: {e}", path.display())))?;
            }
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
            max_bytes,
        })
    }

    /// Sends one request (absolute URI) and reads the whole answer.
    pub async fn send(&self, req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, HttpError> {
        tokio::time::timeout(self.timeout, self.send_unbounded(req))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    async fn send_unbounded(&self, req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, HttpError> {
        let uri = req.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Url(uri.to_string()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(uri.to_string())),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| HttpError::Io(format!("connect {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (mut parts, body) = req.into_parts();
        // Origin-form on the wire, with the Host header set.
        let authority = uri.authority().map(|a| a.as_str().to_string());
        parts.uri = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| HttpError::Url(uri.to_string()))?;
        if let Some(a) = authority {
            parts.headers.insert(
                http::header::HOST,
                a.parse().map_err(|_| HttpError::Url(uri.to_string()))?,
            );
        }
        let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
        if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| HttpError::Url(uri.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Io(format!("TLS to {host}: {e}")))?;
            self.exchange(TokioIo::new(tls), req).await
        } else {
            self.exchange(TokioIo::new(tcp), req).await
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Vec<u8>>, HttpError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| HttpError::Io(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(self.max_bytes)
                    } else {
                        HttpError::Io(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body.to_vec()))
        }
        .await;
        driver.abort();
        result
    }
}
