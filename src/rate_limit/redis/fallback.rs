//! Without Redis: the configured fallback, and the heartbeat that counts
//! live replicas and probes Redis until it answers again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::RedisDown;
use super::memo;
use super::{Ask, Down, HEARTBEAT, Inner, LIVE_WINDOW_SECS, PROBE, REPLICAS, Refused};
use crate::rate_limit::{Rate, RateStatus};
use crate::usage::{self, AdmitError};

impl Inner {
    /// Decides without Redis, as configured.
    pub(super) async fn fallback(&self, ask: &Ask<'_>) -> Result<Option<RateStatus>, Refused> {
        let slot = match self.down {
            RedisDown::Refuse => 0,
            RedisDown::Local => 1,
            RedisDown::Allow => 2,
        };
        self.counters.fallback[slot].fetch_add(1, Ordering::Relaxed);
        let status = match (self.down, ask.rate) {
            (RedisDown::Refuse, _) => {
                return Err(Refused::Unavailable("Redis does not answer".into()));
            }
            (RedisDown::Local, Some(rate)) => {
                let share = divide(rate, self.replicas.load(Ordering::Relaxed));
                let status = self.local.check_now(ask.bucket, share);
                if !status.allowed() {
                    return Err(Refused::Rate(status));
                }
                Some(status)
            }
            _ => None,
        };
        if let Some(b) = &ask.budget {
            let month = usage::this_month();
            let unavailable = |e: crate::store::StoreError| Refused::Unavailable(e.to_string());
            if let Some(limit) = b.tenant_limit
                && self
                    .usage
                    .spend_in(b.tenant, None, month)
                    .await
                    .map_err(unavailable)?
                    >= limit
            {
                return Err(Refused::Budget("tenant"));
            }
            if let Some((p, Some(limit))) = b.project
                && self
                    .usage
                    .spend_in(b.tenant, Some(p), month)
                    .await
                    .map_err(unavailable)?
                    >= limit
            {
                return Err(Refused::Budget("project"));
            }
        }
        match self.usage.admit_request(ask.tenant, ask.max_per_day).await {
            Ok(_) => Ok(status),
            Err(AdmitError::Exceeded(q)) => Err(Refused::Quota(memo::quota_status(
                q.limit,
                usage::secs_until_tomorrow(),
            ))),
            Err(AdmitError::Store(e)) => Err(Refused::Unavailable(e.to_string())),
        }
    }

    /// Heartbeat (or probe): records this replica, learns the live count.
    pub(super) async fn heartbeat(&self) -> bool {
        let mut call = REPLICAS.key(format!("{}:replicas", self.prefix));
        call.arg(&self.id).arg(LIVE_WINDOW_SECS);
        match self.round_trip::<u64>(&call).await {
            Ok(n) => {
                self.replicas.store(n.max(1), Ordering::Relaxed);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        replicas = n,
                        "Redis answers again; limits are shared again."
                    );
                }
                true
            }
            Err(Down) => false,
        }
    }
}

/// `rate` shared among `replicas` (at least one request per period each).
pub fn divide(rate: Rate, replicas: u64) -> Rate {
    let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
    let share = |x: std::num::NonZeroU32| {
        std::num::NonZeroU32::new(x.get() / n).unwrap_or(std::num::NonZeroU32::MIN)
    };
    Rate {
        limit: share(rate.limit),
        burst: share(rate.burst),
        period: rate.period,
    }
}

/// Beats every [`HEARTBEAT`] while Redis answers and probes every [`PROBE`]
/// while it does not (at once when a request finds it down). Ends when the
/// limiter is dropped.
pub(super) async fn heartbeat(limits: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = limits.upgrade() else {
            return;
        };
        let wait = if inner.heartbeat().await {
            HEARTBEAT
        } else {
            PROBE
        };
        drop(inner);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_rate_is_split_among_live_replicas_never_below_one() {
        let r = Rate::new(NonZeroU32::new(10).unwrap(), Duration::from_secs(60));
        let half = divide(r, 2);
        assert_eq!(
            (half.limit.get(), half.burst.get(), half.period),
            (5, 5, r.period)
        );
        assert_eq!(divide(r, 0), r, "unknown count: the whole rate");
        assert_eq!(divide(r, 30).limit.get(), 1);
    }
}
