//! Data residency: which upstream a permitted request may reach.
//!
//! Each tenant's data lives in one region (`settings.data_region`). With
//! `[proxy.region_upstreams]` set, a request about a tenant goes to that
//! region's upstream and to no other; a tenant whose region has no upstream
//! here is refused (403 `residency_violation`) before anything is
//! forwarded or counted, so one costguard can front several regional
//! upstreams, or serve one region and refuse the others. Requests about no
//! tenant (public routes) go to `[proxy] upstream`. Without
//! `region_upstreams` every request goes to `[proxy] upstream`, as before.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;

use crate::config::ProxyConfig;
use crate::forward::upstream::Upstream;
use crate::response::{ErrorResponse, Problem};

/// A request that would take a tenant's data out of its region.
#[derive(Debug, thiserror::Error)]
#[error("no upstream for data region {region:?}")]
pub struct ResidencyViolation {
    /// The tenant's region (empty: the tenant could not be found).
    pub region: String,
}

impl ErrorResponse for ResidencyViolation {
    fn problem(&self) -> Problem<'_> {
        Problem::new(
            StatusCode::FORBIDDEN,
            "residency_violation",
            "this tenant's data region is not served here",
        )
    }
}

/// The upstreams, by region.
#[derive(Debug)]
pub struct Upstreams<B> {
    /// `[proxy] upstream`: everything when residency is off, and requests
    /// about no tenant.
    default: Upstream<B>,
    /// `[proxy.region_upstreams]`; empty: residency is off.
    regions: HashMap<Arc<str>, Upstream<B>>,
}

impl<B> Upstreams<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// One connection pool per configured upstream.
    pub fn new(config: &ProxyConfig, max_body: u64) -> Self {
        Self {
            default: Upstream::new(config, &config.upstream, max_body),
            regions: config
                .region_upstreams
                .iter()
                .map(|(region, target)| (region.clone(), Upstream::new(config, target, max_body)))
                .collect(),
        }
    }
}

impl<B> Upstreams<B> {
    /// The upstream for a request about a tenant in `region` (`None`: the
    /// request is about no tenant; `Some("")`: about a tenant that could
    /// not be found, which is refused when residency is on).
    pub fn pick(&self, region: Option<&str>) -> Result<&Upstream<B>, ResidencyViolation> {
        match region {
            _ if self.regions.is_empty() => Ok(&self.default),
            None => Ok(&self.default),
            Some(r) => self.regions.get(r).ok_or_else(|| ResidencyViolation {
                region: r.to_string(),
            }),
        }
    }
}
