//! What the proxy port's and the admin port's handlers share, built once by
//! the server and handed to each as one value instead of argument by
//! argument.

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::audit::Audit;
use crate::authz::Authz;
use crate::fanout::Fanout;
use crate::health::Readiness;
use crate::metrics::RequestMetrics;
use crate::otlp::Tracer;
use crate::throttle::Throttle;

/// The stages and sinks both ports use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    /// `/health` and `/ready`.
    pub readiness: Arc<Readiness>,
    /// Policy, roles, tenant isolation.
    pub authz: Authz,
    /// Rates, quotas, budgets and the failed-authentication limit.
    pub throttle: Throttle,
    /// The audit log, when enabled.
    pub audit: Option<Audit>,
    /// The access log, when enabled.
    pub access_log: Option<AccessLog>,
    /// The invalidation fan-out, with a shared store (for `/metrics`).
    pub fanout: Option<Fanout>,
    /// Per-request counts and latencies, unless `metrics.enabled = false`.
    pub metrics: Option<Arc<RequestMetrics>>,
    /// Span export, when `tracing.otlp_endpoint` is set.
    pub tracer: Option<Tracer>,
}
