//! Startup and shutdown: open the store, bind both listeners, serve until a
//! shutdown signal, then drain as Kubernetes expects: `/ready` answers 503
//! at once, the proxy port stops accepting, in-flight requests get up to
//! `proxy.shutdown_grace` to finish. The admin port keeps answering probes
//! until the proxy has drained.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::health::Readiness;
use crate::listener::Listener;
use crate::pipeline::Proxy;
use crate::store::{Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        listener: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started server: store open, both ports bound, not yet serving.
pub struct Server {
    proxy: Listener<Proxy>,
    admin: Listener<Admin>,
    readiness: Arc<Readiness>,
    store: Store,
    grace: Duration,
}

impl Server {
    /// Opens the store and binds both ports.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let store = Store::open(&config.store.path)?;
        let readiness = Readiness::new(store.clone());
        let proxy = Proxy::new(config, readiness.clone());
        let proxy = Listener::bind(
            "proxy",
            config.proxy.listen,
            config.proxy.tls.clone(),
            proxy,
            config.limits.clone(),
        )
        .await
        .map_err(|source| StartError::Bind {
            listener: "proxy",
            addr: config.proxy.listen,
            source,
        })?;
        let admin = Admin::new(readiness.clone(), config.log.access_log);
        let admin = Listener::bind(
            "admin",
            config.admin.listen,
            None,
            admin,
            config.limits.clone(),
        )
        .await
        .map_err(|source| StartError::Bind {
            listener: "admin",
            addr: config.admin.listen,
            source,
        })?;
        let server = Self {
            proxy,
            admin,
            readiness,
            store,
            grace: config.proxy.shutdown_grace,
        };
        tracing::info!(
            proxy = %server.proxy_addr(),
            admin = %server.admin_addr(),
            upstream = %config.proxy.upstream.authority,
            tls = config.proxy.tls.is_some(),
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

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Serves until `shutdown` resolves, then drains. Returns whether every
    /// in-flight request finished within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let (stop_proxy, proxy_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let proxy = tokio::spawn(self.proxy.serve(proxy_rx, self.grace));
        let admin = tokio::spawn(self.admin.serve(admin_rx, Duration::from_secs(1)));
        shutdown.await;
        tracing::info!(grace = ?self.grace, "Shutting down: draining in-flight requests.");
        self.readiness.start_draining();
        let _ = stop_proxy.send(true);
        let drained = proxy.await.unwrap_or(false);
        let _ = stop_admin.send(true);
        let _ = admin.await;
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "Store flush failed at shutdown.");
        }
        tracing::info!(drained, "Stopped.");
        drained
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
