//! Per-tenant request counts per UTC day, counted by the proxy. Requests
//! are counted in memory and added to the store once a second, so the hot
//! path takes a short lock instead of a disk write. A crash loses at most
//! the counts of the last second (one flush interval).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{Store, StoreError};

/// The current UTC day, as days since 1970-01-01.
pub fn today() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 86_400) as u32
}

/// Requests not yet in the store, per (tenant, day).
type Pending = HashMap<(Arc<str>, u32), u64>;

/// Counts requests per (tenant, day). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Usage {
    store: Arc<dyn Store>,
    /// Counts not yet in the store. A std mutex: held for one map update,
    /// never across an await.
    pending: Arc<Mutex<Pending>>,
}

impl Usage {
    /// A counter over `store`; call [`Usage::run_flusher`] to persist.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            pending: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request of `tenant` today.
    pub fn record(&self, tenant: &Arc<str>) {
        *self.lock().entry((tenant.clone(), today())).or_insert(0) += 1;
    }

    /// Requests of `tenant` on `day`: stored plus not yet flushed.
    pub async fn requests_on(&self, tenant: &str, day: u32) -> Result<u64, StoreError> {
        let stored = self.store.requests_on(tenant, day).await?;
        let pending = self
            .lock()
            .iter()
            .filter(|((t, d), _)| &**t == tenant && *d == day)
            .map(|(_, n)| *n)
            .sum::<u64>();
        Ok(stored + pending)
    }

    /// Moves pending counts into the store. Counts that fail to persist are
    /// put back and retried on the next flush.
    pub async fn flush(&self) {
        let batch = std::mem::take(&mut *self.lock());
        for ((tenant, day), n) in batch {
            if let Err(e) = self.store.add_requests(&tenant, day, n).await {
                tracing::warn!(tenant = %tenant, error = %e, "Usage flush failed; will retry.");
                *self.lock().entry((tenant, day)).or_insert(0) += n;
            }
        }
    }

    /// Flushes every `interval` until the task is dropped.
    pub async fn run_flusher(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }
}
