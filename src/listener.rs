//! Accepting connections: the connection limit, TLS, HTTP/1.1 + HTTP/2
//! (hyper-util's auto builder: h2 by ALPN over TLS, h2c by prior knowledge
//! in clear), the header-read and idle timeouts, and graceful drain.
//!
//! The proxy port is served by the per-core workers ([`crate::worker`]):
//! one socket per worker, all bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the workers
//! and each connection is accepted, served and forwarded on one thread. (The
//! kernel only lets sockets of the same user share the port.) The admin
//! port has one socket on the main runtime.
//!
//! Each served connection holds a permit of the listener's semaphore until
//! it closes. That one semaphore bounds concurrent connections (an accept
//! loop that has accepted a connection waits for a permit before serving it
//! or accepting another, so excess clients queue in the kernel backlog, at
//! most one per worker waiting accepted) and tells the drain when the last
//! connection is gone.
//!
//! So that one client cannot take every permit, connections are also counted
//! per source address (IPv6: per /64): one over `max_connections_per_source`
//! is closed at once (trusted proxies, which carry many clients, are exempt),
//! and every connection is asked to close gracefully at
//! `max_connection_age`. The idle timeout counts request progress, not bytes
//! (see `activity`).

mod activity;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use activity::{Activity, OpenBody, TrackedIo};

/// What a request handler knows about the connection it arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer's IP as a header value, rendered once per connection.
    pub peer_value: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Something that answers requests: the proxy pipeline or the admin router.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body type.
    type Body: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
    /// Answers one request. Never fails: errors become responses inside.
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A listener could not bind its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({listener}): {source}")]
pub struct BindError {
    /// `proxy` or `admin`.
    pub listener: &'static str,
    /// The configured address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A bound listener and what it needs to serve.
pub struct Listener<H> {
    /// One per worker (or one, served on the caller's runtime).
    sockets: Vec<std::net::TcpListener>,
    /// The runtimes the sockets are served on; empty: the caller's.
    workers: Vec<Handle>,
    accept: Accept<H>,
    /// Told when every socket is closed (see [`Listener::on_closed`]).
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What every accept loop of a listener shares.
struct Accept<H> {
    tls: Option<TlsAcceptor>,
    handler: H,
    limits: Limits,
    /// One permit per open connection; see the module docs.
    connections: Arc<Semaphore>,
    /// Open connections per source.
    sources: Arc<Sources>,
    /// Peers not held to the per-source cap.
    exempt: Vec<IpNet>,
    name: &'static str,
}

/// Open connections per source address (IPv4, or IPv6 /64), for the
/// per-source cap.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

impl Sources {
    /// The address connections are counted under: IPv4 (also when mapped
    /// into IPv6), or the /64 of an IPv6 address (one host may own a /64).
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// A slot for one more connection from `ip`, or `None` at the cap.
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<SourceSlot> {
        let key = Self::key(ip);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), key))
    }
}

/// One connection's place in [`Sources`], given back on drop.
struct SourceSlot(Arc<Sources>, IpAddr);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Listen backlog of every socket (what tokio's own `bind` uses).
const BACKLOG: i32 = 1024;

/// A listening socket on `addr`; `shared`: `SO_REUSEPORT`, so the workers'
/// sockets can share the address.
fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl<H: Handler> Listener<H> {
    /// Binds `addr` (port 0 picks a free port), one socket served on the
    /// caller's runtime.
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: H,
        limits: Limits,
    ) -> Result<Self, BindError> {
        let failed = |source| BindError {
            listener: name,
            addr,
            source,
        };
        let socket = listen(addr, false).map_err(failed)?;
        Ok(Self::bind_with(vec![socket], name, tls, handler, limits))
    }

    /// Binds `addr` once per worker (`SO_REUSEPORT`; port 0 picks one free
    /// port for all), each socket served on its worker's runtime. The
    /// connection limits hold for the listener as a whole.
    pub fn bind_workers(
        name: &'static str,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: H,
        limits: Limits,
        workers: &[Handle],
    ) -> Result<Self, BindError> {
        let failed = |source| BindError {
            listener: name,
            addr,
            source,
        };
        if addr.port() != 0 {
            // Another process listening here with SO_REUSEPORT (a second
            // costguard of the same user, an old one still draining) would
            // otherwise silently share this port's connections: a plain
            // bind first fails if anything listens on it.
            drop(listen(addr, false).map_err(failed)?);
        }
        let first = listen(addr, true).map_err(failed)?;
        let bound = first.local_addr().map_err(failed)?;
        let mut sockets = vec![first];
        for _ in 1..workers.len() {
            sockets.push(listen(bound, true).map_err(failed)?);
        }
        let mut listener = Self::bind_with(sockets, name, tls, handler, limits);
        listener.workers = workers.to_vec();
        Ok(listener)
    }

    fn bind_with(
        sockets: Vec<std::net::TcpListener>,
        name: &'static str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: H,
        limits: Limits,
    ) -> Self {
        Self {
            sockets,
            workers: Vec::new(),
            closed: None,
            accept: Accept {
                tls: tls.map(TlsAcceptor::from),
                handler,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
                sources: Arc::default(),
                exempt: Vec::new(),
                limits,
                name,
            },
        }
    }

    /// Exempts these peers (trusted proxies) from the per-source cap.
    pub fn exempt_sources(mut self, nets: Vec<IpNet>) -> Self {
        self.accept.exempt = nets;
        self
    }

    /// Resolves once [`Listener::serve`] has stopped accepting and closed
    /// its sockets (before the drain), so a caller can say "draining" only
    /// when no new connection can arrive.
    pub fn on_closed(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.closed = Some(tx);
        rx
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    /// Accepts until `shutdown` turns true, then stops accepting (the
    /// sockets are closed), asks every connection to finish gracefully, and
    /// waits up to `grace` for them. Returns whether every connection
    /// finished.
    pub async fn serve(self, shutdown: watch::Receiver<bool>, grace: Duration) -> bool {
        let Listener {
            sockets,
            workers,
            accept,
            closed,
        } = self;
        let accept = Arc::new(accept);
        let mut loops = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let task = accept.clone().run(socket, shutdown.clone());
            loops.push(match workers.get(i) {
                Some(worker) => worker.spawn(task),
                None => tokio::spawn(task),
            });
        }
        for task in loops {
            let _ = task.await;
        }
        if let Some(closed) = closed {
            let _ = closed.send(());
        }
        let all = u32::try_from(accept.limits.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, accept.connections.acquire_many(all))
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                listener = accept.name,
                "Grace period over with connections still open; closing them."
            );
        }
        drained
    }
}

impl<H: Handler> Accept<H> {
    /// One socket's accept loop, on the runtime it runs on (the socket is
    /// registered with that runtime's reactor), until `shutdown`.
    async fn run(
        self: Arc<Self>,
        socket: std::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let tcp = match TcpListener::from_std(socket) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::error!(listener = self.name, error = %e, "Cannot serve a listening socket.");
                return;
            }
        };
        let builder = Arc::new(http_builder(&self.limits));
        loop {
            let (stream, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = self.name, error = %e, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            let canonical = peer.ip().to_canonical();
            let slot = if self.exempt.iter().any(|net| net.contains(&canonical)) {
                None
            } else {
                match self
                    .sources
                    .take(peer.ip(), self.limits.max_connections_per_source)
                {
                    Some(slot) => Some(slot),
                    None => {
                        // Closed at once, before it takes a connection permit.
                        tracing::debug!(listener = self.name, peer = %peer, "Too many connections from this source; closed.");
                        continue;
                    }
                }
            };
            // Accepted first, then a permit: with one socket per worker, a
            // loop holding a permit while it waits in `accept` could keep
            // the only free slot from the worker the kernel hands the next
            // connection to.
            let permit = tokio::select! {
                p = self.connections.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = stopped(&mut shutdown) => break,
            };
            let conn = Connection {
                stream,
                peer,
                tls: self.tls.clone(),
                handler: self.handler.clone(),
                builder: builder.clone(),
                header_read_timeout: self.limits.header_read_timeout,
                idle_timeout: self.limits.idle_timeout,
                max_age: self.limits.max_connection_age,
                shutdown: shutdown.clone(),
            };
            tokio::spawn(async move {
                conn.run().await;
                drop(slot);
                drop(permit);
            });
        }
    }
}

/// hyper's built-in (inline) header array size.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 itself when the head outgrows its buffer: twice
        // our byte limit, so what reaches `limits::check` gets our JSON 431
        // and nothing unbounded is ever buffered.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
        .keep_alive(true);
    // hyper's own header array holds 100 fields at no per-request cost;
    // a custom size costs a heap array per request (measured: ~25% of
    // throughput). Up to 100, `limits::check` enforces the count (JSON 431)
    // and hyper refuses beyond 100; above, hyper gets the exact limit.
    if limits.max_header_count > HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(limits.max_header_count);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes + 32 * limits.max_header_count)
                .unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(limits.max_concurrent_streams);
    builder
}

/// One accepted connection, until it closes.
struct Connection<H> {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: H,
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_age: Duration,
    shutdown: watch::Receiver<bool>,
}

impl<H: Handler> Connection<H> {
    async fn run(self) {
        let Connection {
            stream,
            peer,
            tls,
            handler,
            builder,
            header_read_timeout,
            idle_timeout,
            max_age,
            shutdown,
        } = self;
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TrackedIo::new(stream, activity.clone());
        let info = ConnInfo {
            peer,
            peer_value: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .expect("an IP address is a valid header value"),
            tls: tls.is_some(),
        };
        let serve = Serve {
            info,
            handler,
            activity,
            idle_timeout,
            closes_at: tokio::time::Instant::now() + max_age,
            shutdown,
        };
        match tls {
            None => serve.http(io, &builder).await,
            Some(acceptor) => match tokio::time::timeout(header_read_timeout, acceptor.accept(io))
                .await
            {
                Ok(Ok(tls)) => serve.http(tls, &builder).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed."),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out."),
            },
        }
    }
}

/// What serving HTTP on one connection needs, whatever its IO type.
struct Serve<H> {
    info: ConnInfo,
    handler: H,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    /// When the connection reaches `max_connection_age`.
    closes_at: tokio::time::Instant,
    shutdown: watch::Receiver<bool>,
}

/// Why a connection is being closed.
enum Closing {
    Idle,
    Aged,
    Draining,
}

impl<H: Handler> Serve<H> {
    async fn http<IO>(self, io: IO, builder: &auto::Builder<TokioExecutor>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Serve {
            info,
            handler,
            activity,
            idle_timeout,
            closes_at,
            mut shutdown,
        } = self;
        let peer = info.peer;
        let in_flight = activity.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            let info = info.clone();
            let (guard, open) = in_flight.request_started();
            // Boxed: hyper moves the service's future into its dispatcher,
            // and the pipeline's future is several kilobytes; one
            // allocation beats copying it (measured: 13k instructions of
            // memcpy per request).
            Box::pin(async move {
                let resp = handler.handle(req, &info).await;
                drop(guard);
                Ok::<_, Infallible>(resp.map(|body| OpenBody::new(body, open)))
            })
        });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let closing = tokio::select! {
            // Fixed order: the connection first (it is what usually woke us),
            // and no random branch choice per poll.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
                }
                return;
            }
            _ = activity.idle(idle_timeout) => Closing::Idle,
            _ = tokio::time::sleep_until(closes_at) => Closing::Aged,
            _ = stopped(&mut shutdown) => Closing::Draining,
        };
        // Finish the requests in progress (if any), then close: HTTP/1.1
        // stops keep-alive, HTTP/2 sends GOAWAY. A drain is bounded by the
        // listener's grace period; an idle close by one second; an aged
        // connection's requests run on while they make progress (bounded
        // by the idle timeout as ever), then get one second.
        conn.as_mut().graceful_shutdown();
        match closing {
            Closing::Idle => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            }
            Closing::Draining => {
                let _ = conn.await;
            }
            Closing::Aged => {
                tracing::debug!(peer = %peer, "Connection reached its maximum age; closing it.");
                tokio::select! {
                    biased;
                    _ = conn.as_mut() => return,
                    _ = activity.idle(idle_timeout) => {}
                    _ = stopped(&mut shutdown) => {
                        let _ = conn.await;
                        return;
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            }
        }
    }
}

/// Resolves once the shutdown flag is true (the guard is dropped inside,
/// keeping callers `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
