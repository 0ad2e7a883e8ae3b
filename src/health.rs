//! `/health` (the process answers) and `/ready` (configuration loaded, store
//! open, not draining), served locally on both ports; `/ready`'s details
//! only on the admin port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::authz::reload::PolicyHandle;
use crate::response::json_response;
use crate::store::Store;

/// Shared readiness state. `draining` flips once, on SIGTERM/SIGINT.
#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    store: Arc<dyn Store>,
    policy: Arc<PolicyHandle>,
}

impl Readiness {
    /// Ready as long as `store` answers and no shutdown has begun.
    pub fn new(store: Arc<dyn Store>, policy: Arc<PolicyHandle>) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            store,
            policy,
        })
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
        !self.draining.load(Ordering::SeqCst) && self.store.check().await.is_ok()
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
        let store = self.store.check().await;
        let ok = !draining && store.is_ok();
        let body = json!({
            "status": if ok { "ready" } else { "not_ready" },
            "checks": {
                "config": "ok",
                "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
                "shutdown": if draining { "draining" } else { "no" },
                "policy": self.policy.status(),
            }
        });
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}
