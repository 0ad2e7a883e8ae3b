//! Startup and shutdown: open the store, bind both listeners, serve until a
//! shutdown signal, then drain as Kubernetes expects: `/ready` answers 503
//! at once, the proxy port stops accepting, in-flight requests get up to
//! `proxy.shutdown_grace` to finish. The admin port keeps answering probes
//! until the proxy has drained.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::admin::auth::AdminAuth;
use crate::admin::ops::AdminOps;
use crate::admin::{Admin, MetricsPort};
use crate::audit::Audit;
use crate::audit::index::Index;
use crate::audit::retention;
use crate::audit::writer::{self, Bounds, WriterConfig};
use crate::authn::api_key::ApiKeys;
use crate::authn::{Authenticator, Loader};
use crate::authz::Authz;
use crate::authz::policy::PolicyError;
use crate::authz::reload::{PolicyHandle, Source};
use crate::config::{Config, RedisDown};
use crate::context::Context;
use crate::fanout::{Caches, Fanout, PubSub};
use crate::health::{Check, DependencyCheck, Readiness};
use crate::listener::{BindError, Listener};
use crate::metrics::{self, Exposition, FnSource, RequestMetrics};
use crate::otlp::Tracer;
use crate::pipeline::Proxy;
use crate::rate_limit::LocalRateLimiter;
use crate::rate_limit::redis::RedisLimits;
use crate::sso::users::Directory;
use crate::sso::{BearerTokens, SessionCookies, Sso};
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::store::{Store, StoreError};
use crate::throttle::Throttle;
use crate::usage::Usage;
use crate::worker::Workers;
use prometheus_client::encoding::DescriptorEncoder;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy does not compile: costguard refuses to start.
    #[error("invalid policy:\n{0}")]
    Policy(#[from] PolicyError),
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The proxy's worker threads could not be started.
    #[error("proxy workers: {0}")]
    Workers(#[source] std::io::Error),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[source] std::io::Error),
    /// Single sign-on could not be set up (its key or CA file).
    #[error("single sign-on: {0}")]
    Sso(String),
    /// The shared limiter could not be set up (its URL).
    #[error("rate limiter: {0}")]
    Limiter(String),
    /// The trace exporter could not start.
    #[error("tracing: {0}")]
    Tracing(String),
}

/// A key every replica must share (the audit HMAC key, the login-cookie
/// key): the file the operator named (one Secret mounted into every pod);
/// else, with the shared store, the store's copy (created by the first
/// replica); else `default`, a file under `store.path` created on first
/// start (one pod).
async fn replica_key(
    named: &Path,
    default: &Path,
    shared: Option<&PgStore>,
    name: &str,
) -> std::io::Result<Vec<u8>> {
    match shared {
        Some(pg) if named == default => {
            tracing::info!(
                key = name,
                "No key file named: every replica uses the shared store's copy of this key (mount one Secret into every pod to keep it out of the database)."
            );
            pg.shared_key(name).await.map_err(std::io::Error::other)
        }
        _ => writer::load_or_create_key(named),
    }
}

/// What `/ready` checks beyond the store: the shared limiter's Redis. Down,
/// it fails readiness only when `redis_down = "refuse"` (then this replica
/// refuses every limited request); otherwise it is reported.
fn dependencies(config: &Config, throttle: &Throttle) -> Vec<(&'static str, DependencyCheck)> {
    let Some(redis) = &config.rate_limit.redis else {
        return Vec::new();
    };
    let throttle = throttle.clone();
    let down = redis.down;
    let check: DependencyCheck = Arc::new(move || {
        if throttle.redis_up() {
            return Check::Ok;
        }
        match down {
            RedisDown::Refuse => Check::Failing(
                "Redis unavailable (redis_down = refuse: limited requests get 503)".into(),
            ),
            RedisDown::Local => {
                Check::Degraded("Redis unavailable (limiting locally per replica)".into())
            }
            RedisDown::Allow => Check::Degraded("Redis unavailable (rate limits off)".into()),
        }
    });
    vec![("rate_limit", check)]
}

/// The Redis pub/sub path of the invalidation fan-out, when configured.
fn pubsub(config: &Config) -> Option<PubSub> {
    let redis = config.rate_limit.redis.as_ref().filter(|r| r.pubsub)?;
    match redis::Client::open(redis.url.as_str()) {
        Ok(client) => Some(PubSub {
            client,
            channel: format!("{}:changes", redis.prefix),
        }),
        Err(e) => {
            // Not the URL: it may hold a password.
            tracing::warn!(error = ?e.kind(), "rate_limit.redis_url is not usable for pub/sub; invalidations travel through the outbox only.");
            None
        }
    }
}

/// A started server: store open, both ports bound, not yet serving.
pub struct Server {
    proxy: Listener<Proxy>,
    /// The proxy port's per-core threads (see [`crate::worker`]).
    workers: Workers,
    admin: Listener<Admin>,
    /// The read-only metrics listener (`metrics.listen`), if configured.
    metrics: Option<Listener<MetricsPort>>,
    readiness: Arc<Readiness>,
    store: Arc<dyn Store>,
    usage: Usage,
    throttle: Throttle,
    audit: Option<Audit>,
    /// The audit log's HMAC key (retention signs its anchor with it).
    audit_key: Option<Vec<u8>>,
    retention_interval: Duration,
    ops: AdminOps,
    policy: Arc<PolicyHandle>,
    reload_interval: Duration,
    access_log: Option<AccessLog>,
    grace: Duration,
    sso: Option<Arc<Sso>>,
    /// Ships this replica's audit stream to the shared store.
    shipper: Option<crate::audit::ship::ShipperHandle>,
    /// What the proxy port's pipeline was built from, for
    /// [`Server::pipeline`].
    wiring: (Config, Context, Authenticator),
}

impl Server {
    /// Opens the store and binds both ports.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let policy = PolicyHandle::load(Source::Dir(config.policy.dir.clone()))?;
        // The embedded store is also kept as itself, for backups.
        /// The store as the server uses it, the shared one, the embedded one.
        type Stores = (Arc<dyn Store>, Option<Arc<PgStore>>, Option<Arc<SledStore>>);
        let (store, shared, embedded): Stores = match &config.store.postgres {
            Some(pg) => {
                let shared = Arc::new(PgStore::connect(pg).await?);
                (shared.clone(), Some(shared), None)
            }
            None => {
                let sled = Arc::new(SledStore::open_with_cache(
                    &config.store.path,
                    config.store.cache_bytes,
                )?);
                (sled.clone(), None, Some(sled))
            }
        };
        let keys = ApiKeys::new(
            store.clone(),
            config.auth.key_cache_capacity,
            config.auth.key_cache_ttl,
        );
        let authz = Authz::new(
            policy.clone(),
            store.clone(),
            config.auth.key_cache_capacity,
            config.auth.key_cache_ttl,
        );
        let (audit, audit_key) = if config.audit.enabled {
            let key = replica_key(
                &config.audit.hmac_key_file,
                &config.store.path.join("audit-hmac.key"),
                shared.as_deref(),
                "audit-hmac",
            )
            .await
            .map_err(StartError::Audit)?;
            // Opening the index adds whatever the files hold beyond it.
            let index = Index::open(&config.audit.dir).map_err(StartError::Audit)?;
            let (audit, _writer) = writer::start_bounded(
                WriterConfig {
                    dir: config.audit.dir.clone(),
                    key: key.clone(),
                    max_file_bytes: config.audit.max_file_bytes,
                    rotate_interval: config.audit.rotate_interval,
                    capacity: config.audit.channel_capacity,
                    batch_interval: config.audit.batch_interval,
                    stdout: config.audit.stdout,
                    fail_open: config.audit.fail_open,
                },
                Bounds {
                    max_field_bytes: config.audit.max_field_bytes,
                    anonymous_window: config.audit.anonymous_window,
                    anonymous_max_sources: config.audit.anonymous_max_sources,
                    min_free_bytes: config.audit.min_free_bytes,
                },
                Some(Arc::new(index)),
            )
            .map_err(StartError::Audit)?;
            (Some(audit), Some(key))
        } else {
            (None, None)
        };
        // Each replica ships its own audit stream to the shared store, so
        // queries cover every replica and a lost pod's records are known.
        let shipper = match (&shared, &audit, &audit_key) {
            (Some(pg), Some(audit), Some(key)) => Some(
                crate::audit::ship::start(pg.pool().clone(), audit, key.clone())
                    .map_err(StartError::Audit)?,
            ),
            _ => None,
        };
        let usage = Usage::new(store.clone());
        let mut throttle = Throttle::new(
            Arc::new(LocalRateLimiter::default()),
            &config.rate_limit,
            &config.budget,
            usage.clone(),
        );
        if config.rate_limit.redis.is_some() && shared.is_none() {
            // Works (one pod, or limits shared while each pod keeps its
            // own keys), but each pod's durable counts are its own.
            tracing::warn!(
                "rate_limit.backend = \"redis\" with the embedded store: limits are shared through Redis, but keys, tenants and the durable usage counts stay in this pod; use store.backend = \"postgres\" for many replicas."
            );
        }
        if let Some(redis) = &config.rate_limit.redis {
            throttle = throttle.with_redis(
                RedisLimits::new(redis, usage.clone())
                    .map_err(|e| StartError::Limiter(e.to_string()))?,
            );
        }
        let readiness = Readiness::with(
            store.clone(),
            shared.is_none(),
            policy.clone(),
            dependencies(config, &throttle),
        );
        let sso = if config.sso.oidc.is_empty() && config.sso.saml.is_empty() {
            None
        } else {
            Some(
                Sso::start(
                    &config.sso,
                    store.clone(),
                    keys.clone(),
                    Arc::new(Directory::new(
                        store.clone(),
                        authz.clone(),
                        config.auth.key_cache_capacity,
                        config.auth.key_cache_ttl,
                    )),
                    audit.clone(),
                    crate::sso::session::system_clock(),
                    &replica_key(
                        &config.sso.cookie_key_file,
                        &config.store.path.join("sso-cookie.key"),
                        shared.as_deref(),
                        "sso-cookie",
                    )
                    .await
                    .map_err(|e| StartError::Sso(format!("sso.cookie_key_file: {e}")))?,
                )
                .await
                .map_err(StartError::Sso)?,
            )
        };
        let ops = AdminOps::new(
            store.clone(),
            keys.clone(),
            authz.clone(),
            usage.clone(),
            config.auth.clone(),
            config.rate_limit.clone(),
        )
        .with_sso(sso.clone())
        .with_report_limit(config.admin.max_concurrent_reports)
        .with_compliance(Arc::new(crate::compliance::Compliance::new(
            config.clone(),
            store.clone(),
            policy.clone(),
            audit.clone(),
            audit_key.clone(),
        )));
        let fanout = shared.as_ref().map(|pg| {
            Fanout::start(
                pg.clone(),
                Caches {
                    keys: keys.clone(),
                    authz: authz.clone(),
                    usage: usage.clone(),
                    sso: sso.clone(),
                },
                config
                    .store
                    .postgres
                    .as_ref()
                    .map_or(Duration::from_millis(250), |p| p.invalidation_poll),
                pubsub(config),
            )
        });
        let access_log = config
            .log
            .access_log
            .then(|| AccessLog::start(config.log.format));
        let context = Context {
            readiness: readiness.clone(),
            authz: authz.clone(),
            throttle: throttle.clone(),
            audit: audit.clone(),
            access_log: access_log.clone(),
            fanout,
            metrics: config
                .metrics
                .enabled
                .then(|| Arc::new(RequestMetrics::new(config.proxy.workers))),
            tracer: Tracer::start(&config.tracing).map_err(StartError::Tracing)?,
        };
        let loaders: Vec<Arc<dyn Loader>> = match &sso {
            Some(sso) => vec![
                Arc::new(BearerTokens(sso.clone())),
                Arc::new(SessionCookies(sso.clone())),
            ],
            None => Vec::new(),
        };
        let authn = Authenticator::new(keys.clone(), loaders);
        if let Some(audit) = &audit {
            audit.resolve_regions_with(Arc::new(CachedRegions(keys.clone())));
        }
        let wiring = (config.clone(), context.clone(), authn.clone());
        let proxy = Proxy::new(config, context.clone(), authn, sso.clone());
        let workers =
            Workers::start("costguard-proxy", config.proxy.workers).map_err(StartError::Workers)?;
        let proxy = Listener::bind_workers(
            "proxy",
            config.proxy.listen,
            config.proxy.tls.clone(),
            proxy,
            config.limits.clone(),
            workers.handles(),
        )?
        .exempt_sources(config.proxy.trusted_proxies.clone());
        warn_about_exposure(config);
        if config.admin.token_hash.is_none() {
            tracing::warn!(
                "No admin token configured (admin.token_file): only API keys with admin roles can use the admin API, and nobody can create tenants."
            );
        }
        let exposition = Arc::new(exposition(&context, &keys, sso.clone()));
        let metrics = match config.metrics.listen {
            Some(addr) => Some(Listener::bind(
                "metrics",
                addr,
                None,
                MetricsPort(exposition.clone()),
                config.limits.clone(),
            )?),
            None => None,
        };
        let admin = Admin::new(
            context,
            AdminAuth::new(config.admin.token_hash, keys, authz),
            ops.clone(),
            config.admin.max_body_bytes,
            exposition,
            Some(Arc::new(crate::backup::snapshot::Source::new(
                embedded,
                config.store.path.clone(),
                audit.clone(),
            ))),
        );
        let admin = Listener::bind(
            "admin",
            config.admin.listen,
            None,
            admin,
            config.limits.clone(),
        )?;
        let server = Self {
            proxy,
            workers,
            admin,
            metrics,
            readiness,
            store,
            usage,
            throttle,
            audit,
            audit_key,
            retention_interval: config.audit.retention_interval,
            ops,
            policy,
            reload_interval: config.policy.reload_interval,
            access_log,
            grace: config.proxy.shutdown_grace,
            sso,
            shipper,
            wiring,
        };
        tracing::info!(
            proxy = %server.proxy_addr(),
            admin = %server.admin_addr(),
            metrics = %server.metrics_addr().map(|a| a.to_string()).unwrap_or_default(),
            upstream = %config.proxy.upstream.authority,
            tls = config.proxy.tls.is_some(),
            workers = server.workers.len(),
            "Listening."
        );
        Ok(server)
    }

    /// The bound proxy address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .expect("bound socket has an address")
    }

    /// The bound read-only metrics address, if `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound socket has an address")
    }

    /// A proxy pipeline wired exactly like the proxy port's (same store,
    /// policy, limits, audit log, single sign-on) over request bodies of
    /// type `B`: tests drive the stages with in-memory requests, no socket
    /// in front.
    pub fn pipeline<B>(&self) -> Proxy<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (config, context, authn) = &self.wiring;
        Proxy::new(config, context.clone(), authn.clone(), self.sso.clone())
    }

    /// The admin operations (the demo seeds data through them).
    pub fn ops(&self) -> &AdminOps {
        &self.ops
    }

    /// Serves until `shutdown` resolves, then drains. Returns whether every
    /// in-flight request finished within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let flusher = tokio::spawn(self.usage.clone().run_flusher(Duration::from_secs(1)));
        let watcher = tokio::spawn(
            self.policy
                .clone()
                .watch(self.reload_interval, self.audit.clone()),
        );
        let janitor = tokio::spawn(cleanup(self.throttle.clone()));
        let sweeper = self.sso.clone().map(|sso| tokio::spawn(sweep(sso)));
        let retention = match (&self.audit, &self.audit_key) {
            (Some(audit), Some(key)) => Some(tokio::spawn(retain(
                self.store.clone(),
                audit.clone(),
                key.clone(),
                self.retention_interval,
            ))),
            _ => None,
        };
        let (stop_proxy, proxy_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let mut proxy = self.proxy;
        let proxy_closed = proxy.on_closed();
        let proxy = tokio::spawn(proxy.serve(proxy_rx, self.grace));
        let admin = tokio::spawn(self.admin.serve(admin_rx.clone(), Duration::from_secs(1)));
        let metrics = self
            .metrics
            .map(|m| tokio::spawn(m.serve(admin_rx, Duration::from_secs(1))));
        shutdown.await;
        tracing::info!(grace = ?self.grace, "Shutting down: draining in-flight requests.");
        // The proxy port closes first (its workers close their sockets),
        // then readiness says draining: once it does, no new connection
        // is accepted.
        let _ = stop_proxy.send(true);
        let _ = proxy_closed.await;
        self.readiness.start_draining();
        let drained = proxy.await.unwrap_or(false);
        let _ = stop_admin.send(true);
        let _ = admin.await;
        if let Some(m) = metrics {
            let _ = m.await;
        }
        flusher.abort();
        watcher.abort();
        janitor.abort();
        if let Some(s) = sweeper {
            s.abort();
        }
        if let Some(r) = retention {
            r.abort();
        }
        self.usage.flush().await;
        if let Some(audit) = &self.audit {
            // Bounded: a log that cannot be written (the writer retrying)
            // must not keep the pod from stopping.
            match tokio::time::timeout(Duration::from_secs(5), audit.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Audit records queued at shutdown could not be written.")
                }
                Err(_) => tracing::error!(
                    "Audit records queued at shutdown were not written within 5 s (the log is unwritable)."
                ),
            }
        }
        if let Some(shipper) = self.shipper {
            // One last bounded catch-up: what is not shipped now is
            // shipped by the next start on the same volume.
            shipper.shutdown(Duration::from_secs(5)).await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "Store flush failed at shutdown.");
        }
        if let Some(log) = &self.access_log {
            log.flush();
        }
        // Last: a worker's runtime may drive connections the steps above
        // used (a database connection first opened by a request).
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        tracing::info!(drained, "Stopped.");
        drained
    }
}

/// Warns at startup about settings that expose more than they seem to:
/// trusting every address's forwarding headers (any client then picks the
/// address its failed authentications, rate limits and audit records are
/// kept under), and an admin port reachable off the host in clear text.
fn warn_about_exposure(config: &Config) {
    if let Some(net) = config
        .proxy
        .trusted_proxies
        .iter()
        .find(|net| net.prefix_len() == 0)
    {
        tracing::warn!(
            trusted_proxy = %net,
            "proxy.trusted_proxies trusts EVERY address: any client can forge X-Forwarded-For and so choose the address its failed-authentication blocks, per-source limits and audit records are kept under. List only your ingress or load balancer's addresses."
        );
    }
    let admin = config.admin.listen.ip();
    if !admin.is_loopback() {
        tracing::warn!(
            admin = %config.admin.listen,
            "The admin port listens on a non-loopback address without TLS: the admin token and API keys cross the network in clear text. Bind it to 127.0.0.1 (kubectl port-forward reaches it), or keep it behind a NetworkPolicy and a TLS-terminating proxy."
        );
    }
}

/// Drops idle rate-limit state every ten seconds, so memory follows the
/// keys and client addresses in use.
async fn cleanup(throttle: Throttle) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        throttle.cleanup();
    }
}

/// Removes ended and idle single sign-on sessions every ten minutes (a
/// session whose cookie never comes back would otherwise stay in the store).
async fn sweep(sso: Arc<Sso>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sso.sessions.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "Ended sessions removed."),
            Err(e) => tracing::error!(error = %e, "Session sweep failed; will retry."),
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = sso.store().sweep_remembered(now).await {
            tracing::error!(error = %e, "Sweep of used SAML assertion ids failed; will retry.");
        }
    }
}

/// Purges audit records past their retention every `every`.
async fn retain(store: Arc<dyn Store>, audit: Audit, key: Vec<u8>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        if let Err(e) = retention::purge(&store, &audit, &key, now).await {
            tracing::error!(error = %e, "Audit retention pass failed; will retry.");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Everything `/metrics` shows: the per-request counts, then each stage's
/// own counters, gathered at scrape time.
fn exposition(context: &Context, keys: &ApiKeys, sso: Option<Arc<Sso>>) -> Exposition {
    let (context, keys) = (context.clone(), keys.clone());
    Exposition::new(FnSource(move |enc: &mut DescriptorEncoder<'_>| {
        if let Some(requests) = &context.metrics {
            requests.encode(enc)?;
        }
        context.authz.policy_handle().encode(enc)?;
        let mut caches: Vec<_> = keys.cache_stats().into();
        caches.extend(context.authz.cache_stats());
        if let Some(sso) = &sso {
            caches.extend(sso.cache_stats());
        }
        metrics::caches(enc, &caches)?;
        context.throttle.encode(enc)?;
        if let Some(audit) = &context.audit {
            audit.encode(enc)?;
        }
        if let Some(fanout) = &context.fanout {
            fanout.encode(enc)?;
        }
        if let Some(sso) = &sso {
            sso.encode(enc)?;
        }
        if let Some(tracer) = &context.tracer {
            tracer.encode(enc)?;
        }
        Ok(())
    }))
}

/// Tenants' data regions for the audit records whose producer did not know
/// them (admin actions, sign-ins), from the key cache's tenants.
#[derive(Debug)]
struct CachedRegions(ApiKeys);

impl crate::audit::TenantRegions for CachedRegions {
    fn region_of<'a>(
        &'a self,
        tenant_id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let tenant = self.0.tenant(tenant_id).await.ok().flatten()?;
            Some(tenant.settings.data_region.clone())
        })
    }
}
