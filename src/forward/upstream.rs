//! The HTTP/1.1 connections to the upstream: one keep-alive pool per proxy
//! worker, and the mapping of failures to [`ForwardError`].
//!
//! Each worker ([`crate::worker`]) takes connections from its own shard of
//! the pool, so the connection's task runs on the thread that serves the
//! client, and taking or returning a connection is an uncontended lock and
//! a `Vec` push or pop (hyper-util's pooled client instead takes one global
//! lock, boxes a future and hashes the pool key per request). Threads that
//! are not workers (the main runtime, tests) share one more shard.
//!
//! A connection is taken for one request and given back when its response
//! body has been read to the end (the [`UpstreamResponse`] body does that
//! when it is dropped): one whose response was cut off is closed, never
//! reused. The most recently returned connection is used first, so the
//! spare ones go idle and are closed after `upstream_pool_idle_timeout`.
//! A request that a pooled connection could not even start (the upstream
//! had closed it) is retried once on a new connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ForwardError, UpstreamBody};
use crate::config::{ProxyConfig, UpstreamTarget};

/// The upstream client, for request bodies of type `B` (the listener's
/// `Incoming`; in-process tests send in-memory bodies). Cheap to clone (the
/// pool is shared).
#[derive(Debug)]
pub struct Upstream<B = Incoming>(Arc<Pool<B>>);

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[derive(Debug)]
struct Pool<B> {
    /// `host:port`, resolved per new connection.
    authority: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per shard.
    max_idle: usize,
    max_body: u64,
    /// One per worker, then one for every other thread.
    shards: Box<[Mutex<Vec<Idle<B>>>]>,
}

type Sender<B> = http1::SendRequest<UpstreamBody<B>>;

/// A pooled connection waiting for its next request.
#[derive(Debug)]
struct Idle<B> {
    sender: Sender<B>,
    state: Arc<ConnState>,
}

/// A connection's state, shared by the pool and the connection's task (so
/// the task can close it when it has idled too long, and a taker never gets
/// a connection being closed).
#[derive(Debug)]
struct ConnState(AtomicU8);

const BUSY: u8 = 0;
const IDLE: u8 = 1;
const CLOSED: u8 = 2;

impl ConnState {
    fn swap(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The pool for `target` (`[proxy]`'s upstream or a region's), with
    /// `[proxy]`'s timeouts and sharded for its workers; `max_body` is
    /// reported in 413s.
    pub fn new(config: &ProxyConfig, target: &UpstreamTarget, max_body: u64) -> Self {
        let shards = config.workers.max(1) + 1;
        Self(Arc::new(Pool {
            authority: target.authority.to_string(),
            connect_timeout: config.upstream_connect_timeout,
            response_timeout: config.upstream_response_timeout,
            idle_timeout: config.upstream_pool_idle_timeout,
            max_idle: config.upstream_pool_max_idle.div_ceil(shards),
            max_body,
            shards: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
        }))
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the response
    /// head, at most the response timeout. The response body is not read
    /// here: it streams to the client, and its connection returns to the
    /// pool when it has been read to the end.
    pub async fn send(
        &self,
        req: Request<UpstreamBody<B>>,
    ) -> Result<Response<UpstreamResponse<B>>, ForwardError> {
        let pool = &self.0;
        let shard = crate::worker::index()
            .filter(|i| *i + 1 < pool.shards.len())
            .unwrap_or(pool.shards.len() - 1);
        let exchange = async {
            let mut req = req;
            // A pooled connection first; if it could not start the request
            // (closed by the upstream meanwhile), once more on a new one.
            if let Some(mut idle) = self.take(shard) {
                match idle.sender.try_send_request(req).await {
                    Ok(resp) => return Ok(self.checked_out(resp, idle, shard)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(self.classify(e.into_error())),
                    },
                }
            }
            let mut conn = self.connect().await?;
            match conn.sender.send_request(req).await {
                Ok(resp) => Ok(self.checked_out(resp, conn, shard)),
                Err(e) => Err(self.classify(e)),
            }
        };
        match tokio::time::timeout(pool.response_timeout, exchange).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(result) => result,
        }
    }

    /// The most recently returned open connection of `shard`, marked busy.
    fn take(&self, shard: usize) -> Option<Idle<B>> {
        let mut idle = self.0.shards[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let conn = &idle[i];
            if conn.sender.is_closed() {
                idle.remove(i);
            } else if conn.sender.is_ready() && conn.state.swap(IDLE, BUSY) {
                return Some(idle.remove(i));
            }
            // Else (rarely) not quite done with its last exchange: left for
            // the next taker.
        }
        None
    }

    /// A new connection, its task spawned on the caller's runtime (the
    /// worker's): it ends when the upstream closes it, when its handle is
    /// dropped, or after idling in the pool for the idle timeout.
    async fn connect(&self) -> Result<Idle<B>, ForwardError> {
        let pool = &self.0;
        let stream = tokio::time::timeout(
            pool.connect_timeout,
            TcpStream::connect(pool.authority.as_str()),
        )
        .await
        .map_err(|_| ForwardError::Unavailable("connect timed out".into()))?
        .map_err(|e| ForwardError::Unavailable(e.into()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ForwardError::Unavailable(e.into()))?;
        let state = Arc::new(ConnState(AtomicU8::new(BUSY)));
        tokio::spawn(run_connection(conn, state.clone(), pool.idle_timeout));
        Ok(Idle { sender, state })
    }

    fn checked_out(
        &self,
        resp: Response<Incoming>,
        conn: Idle<B>,
        shard: usize,
    ) -> Response<UpstreamResponse<B>> {
        resp.map(|body| UpstreamResponse {
            body,
            ended: false,
            checkin: Some(Checkin {
                pool: self.0.clone(),
                shard,
                conn,
            }),
        })
    }

    fn classify(&self, e: hyper::Error) -> ForwardError {
        use std::error::Error as _;
        let mut limit_hit = false;
        let mut source = e.source();
        while let Some(s) = source {
            limit_hit |= s.is::<LengthLimitError>();
            source = s.source();
        }
        if limit_hit {
            return ForwardError::BodyTooLarge {
                limit: self.0.max_body,
            };
        }
        // A body error that is not our limit: the client's body broke off.
        if e.is_user() {
            ForwardError::BodyRead(e)
        } else {
            ForwardError::Failed(e)
        }
    }
}

/// Drives one upstream connection until it ends, closing it once it has
/// sat idle in the pool for one to two `idle_timeout`s (one timer per
/// connection, re-armed only when it fires, instead of one per request).
async fn run_connection<B>(
    conn: http1::Connection<TokioIo<TcpStream>, UpstreamBody<B>>,
    state: Arc<ConnState>,
    idle_timeout: Duration,
) where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let mut was_idle = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "Upstream connection ended with an error.");
                }
                break;
            }
            _ = tokio::time::sleep_until(Instant::now() + idle_timeout) => {
                // Idle at two checks in a row, a timeout apart: closed,
                // unless a request takes it at this very moment.
                let idle = state.0.load(Ordering::Acquire) == IDLE;
                if idle && was_idle && state.swap(IDLE, CLOSED) {
                    break;
                }
                was_idle = idle;
            }
        }
    }
    state.0.store(CLOSED, Ordering::Release);
}

/// A connection on loan to one response, returned to its shard when the
/// response body has been read to the end.
#[derive(Debug)]
struct Checkin<B> {
    pool: Arc<Pool<B>>,
    shard: usize,
    conn: Idle<B>,
}

impl<B> Checkin<B> {
    fn give_back(self) {
        let Checkin { pool, shard, conn } = self;
        if conn.sender.is_closed() || !conn.state.swap(BUSY, IDLE) {
            return;
        }
        let mut idle = pool.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < pool.max_idle {
            idle.push(conn);
        }
    }
}

/// The upstream's response body as it streams in; its connection goes
/// back to the pool when the body has been read to the end.
#[derive(Debug)]
pub struct UpstreamResponse<B = Incoming> {
    body: Incoming,
    ended: bool,
    checkin: Option<Checkin<B>>,
}

impl<B> Body for UpstreamResponse<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for UpstreamResponse<B> {
    fn drop(&mut self) {
        if let Some(checkin) = self.checkin.take()
            && (self.ended || self.body.is_end_stream())
        {
            checkin.give_back();
        }
    }
}
