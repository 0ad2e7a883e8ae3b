//! The pooled HTTP/1.1 client to the upstream (keep-alive, bounded pool) and
//! the mapping of its failures to [`ForwardError`].

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{ForwardError, UpstreamBody};
use crate::config::ProxyConfig;

/// The upstream client, for request bodies of type `B` (the listener's
/// `Incoming`; in-process tests send in-memory bodies). Cheap to clone (the
/// pool is shared).
#[derive(Clone, Debug)]
pub struct Upstream<B = Incoming> {
    client: Client<HttpConnector, UpstreamBody<B>>,
    response_timeout: Duration,
    max_body: u64,
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Builds the client from `[proxy]`; `max_body` is reported in 413s.
    pub fn new(config: &ProxyConfig, max_body: u64) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.upstream_pool_idle_timeout)
            .pool_max_idle_per_host(config.upstream_pool_max_idle)
            .set_host(false)
            .build(connector);
        Self {
            client,
            response_timeout: config.upstream_response_timeout,
            max_body,
        }
    }

    /// Sends `req` and waits for the response head, at most the response
    /// timeout. The response body is not read here: it streams to the client.
    pub async fn send(
        &self,
        req: Request<UpstreamBody<B>>,
    ) -> Result<Response<Incoming>, ForwardError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.classify(e)),
        }
    }

    fn classify(&self, e: hyper_util::client::legacy::Error) -> ForwardError {
        let mut limit_hit = false;
        let mut body_broke = false;
        let mut source = e.source();
        while let Some(s) = source {
            limit_hit |= s.is::<LengthLimitError>();
            body_broke |= s
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user);
            source = s.source();
        }
        if limit_hit {
            return ForwardError::BodyTooLarge {
                limit: self.max_body,
            };
        }
        // A body error that is not our limit: the client's body broke off.
        if body_broke {
            return ForwardError::BodyRead(e);
        }
        if e.is_connect() {
            ForwardError::Unavailable(e)
        } else {
            ForwardError::Failed(e)
        }
    }
}
