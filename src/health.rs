//! `/health` (the process answers) and `/ready` (configuration loaded, store
//! open, not draining), served locally on both ports; `/ready`'s details
//! only on the admin port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::authz::reload::PolicyHandle;
use crate::response::json_response;
use crate::store::Store;

/// How long `/ready` waits for the store's answer: a probe must not hang
/// on a database that stopped answering.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a dependency's check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Working.
    Ok,
    /// Not working, but this replica still serves most requests (from
    /// caches, or by a configured fallback): reported, still ready.
    Degraded(String),
    /// Not working, and this replica would refuse most requests: not ready.
    Failing(String),
}

/// A dependency's check: cheap, no I/O (reads state kept by its owner).
pub type DependencyCheck = Arc<dyn Fn() -> Check + Send + Sync>;

/// Shared readiness state. `draining` flips once, on SIGTERM/SIGINT.
pub struct Readiness {
    draining: AtomicBool,
    store: Arc<dyn Store>,
    /// Whether a store that does not answer makes this replica unready:
    /// yes for the embedded store (nothing works without it); no for a
    /// shared store, whose cached keys, tenants and sessions keep serving.
    store_required: bool,
    policy: Arc<PolicyHandle>,
    dependencies: Vec<(&'static str, DependencyCheck)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.draining)
            .field("store_required", &self.store_required)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Ready as long as `store` answers and no shutdown has begun.
    pub fn new(store: Arc<dyn Store>, policy: Arc<PolicyHandle>) -> Arc<Self> {
        Self::with(store, true, policy, Vec::new())
    }

    /// Readiness over a store (required or merely reported) and further
    /// dependencies (the shared limiter).
    pub fn with(
        store: Arc<dyn Store>,
        store_required: bool,
        policy: Arc<PolicyHandle>,
        dependencies: Vec<(&'static str, DependencyCheck)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            store,
            store_required,
            policy,
            dependencies,
        })
    }

    async fn check_store(&self) -> Check {
        let result = tokio::time::timeout(STORE_CHECK_TIMEOUT, self.store.check()).await;
        let error = match result {
            Ok(Ok(())) => return Check::Ok,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {STORE_CHECK_TIMEOUT:?}"),
        };
        if self.store_required {
            Check::Failing(error)
        } else {
            Check::Degraded(format!("unavailable (serving from caches): {error}"))
        }
    }

    /// From now on `/ready` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Answers `/health` and `/ready` (GET or HEAD); `None` for anything
    /// else. Only with `detailed` (the admin port) does `/ready` say why:
    /// policy file names, the last policy error and store errors tell an
    /// attacker on the public port how the deployment is laid out and what
    /// is failing.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        detailed: bool,
    ) -> Option<Response<Full<Bytes>>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            "/health" => Some(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            "/ready" if detailed => Some(self.ready().await),
            "/ready" => Some(self.ready_status().await),
            _ => None,
        }
    }

    /// Whether the process should receive traffic.
    async fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && !matches!(self.check_store().await, Check::Failing(_))
            && !self
                .dependencies
                .iter()
                .any(|(_, check)| matches!(check(), Check::Failing(_)))
    }

    /// `/ready` with the status only.
    async fn ready_status(&self) -> Response<Full<Bytes>> {
        let (status, word) = if self.is_ready().await {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
        };
        json_response(status, &json!({ "status": word }))
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        let draining = self.draining.load(Ordering::SeqCst);
        let store = self.check_store().await;
        let mut failing = matches!(store, Check::Failing(_));
        let mut checks = json!({
            "config": "ok",
            "store": describe(&store),
            "shutdown": if draining { "draining" } else { "no" },
            "policy": self.policy.status(),
        });
        for (name, check) in &self.dependencies {
            let state = check();
            failing |= matches!(state, Check::Failing(_));
            checks[*name] = json!(describe(&state));
        }
        let ok = !draining && !failing;
        let body = json!({
            "status": if ok { "ready" } else { "not_ready" },
            "checks": checks,
        });
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}

fn describe(check: &Check) -> String {
    match check {
        Check::Ok => "ok".into(),
        Check::Degraded(why) | Check::Failing(why) => why.clone(),
    }
}
