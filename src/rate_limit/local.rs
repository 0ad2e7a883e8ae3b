//! The in-process limiter: one governor keyed limiter per distinct rate.
//!
//! governor's keyed limiter has one quota for all its keys, while keys here
//! have their own rates; rates are few (tier defaults and the handful an
//! admin sets), so each distinct [`Rate`] gets its own keyed limiter, and a
//! key's bucket is one atomic word in that limiter's map. A key whose rate
//! changes starts a fresh bucket at the new rate.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;

use super::{LimiterError, Rate, RateLimiter, RateStatus, ceil_secs};

type Keyed<C> =
    governor::RateLimiter<Arc<str>, DashMapStateStore<Arc<str>>, C, StateInformationMiddleware>;

/// GCRA buckets in this process's memory. Exact under concurrency (each
/// bucket is a compare-and-swap on one word); memory follows the keys used
/// within their rate's period, because [`RateLimiter::cleanup`] drops full
/// buckets.
#[derive(Debug)]
pub struct LocalRateLimiter<C: Clock = DefaultClock> {
    clock: C,
    /// Rate → its limiter. Checks hold the read lock (so cleanup never drops
    /// a limiter a check is using); only a new rate or cleanup writes.
    limiters: RwLock<HashMap<Rate, Keyed<C>>>,
}

impl Default for LocalRateLimiter<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalRateLimiter<C> {
    /// A limiter reading time from `clock` (tests use a fake one).
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            limiters: RwLock::default(),
        }
    }

    fn quota(rate: Rate) -> Quota {
        let interval = rate.interval().max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .expect("the interval is not zero")
            .allow_burst(rate.burst)
    }

    fn decide(&self, limiter: &Keyed<C>, bucket: &Arc<str>, rate: Rate) -> RateStatus {
        let burst = rate.burst.get();
        let interval = rate.interval();
        let window = rate.period.as_secs().max(1);
        match limiter.check_key(bucket) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(burst);
                RateStatus {
                    limit: rate.limit.get(),
                    remaining,
                    reset: ceil_secs(interval * (burst - remaining)),
                    window,
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateStatus {
                    limit: rate.limit.get(),
                    remaining: 0,
                    reset: ceil_secs(wait + interval * (burst - 1)),
                    window,
                    retry_after: Some(ceil_secs(wait).max(1)),
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Rate, Keyed<C>>> {
        self.limiters.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Rate, Keyed<C>>> {
        self.limiters.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The synchronous check behind [`RateLimiter::check`].
    pub fn check_now(&self, bucket: &Arc<str>, rate: Rate) -> RateStatus {
        if let Some(limiter) = self.read().get(&rate) {
            return self.decide(limiter, bucket, rate);
        }
        let mut limiters = self.write();
        let limiter = limiters.entry(rate).or_insert_with(|| {
            governor::RateLimiter::<_, _, C, StateInformationMiddleware>::new(
                Self::quota(rate),
                DashMapStateStore::default(),
                self.clock.clone(),
            )
        });
        self.decide(limiter, bucket, rate)
    }
}

#[async_trait]
impl<C> RateLimiter for LocalRateLimiter<C>
where
    C: Clock + Clone + Send + Sync + std::fmt::Debug + 'static,
    C::Instant: Send + Sync,
{
    async fn check(&self, bucket: &Arc<str>, rate: Rate) -> Result<RateStatus, LimiterError> {
        Ok(self.check_now(bucket, rate))
    }

    fn buckets(&self) -> usize {
        self.read().values().map(|l| l.len()).sum()
    }

    fn cleanup(&self) {
        let mut limiters = self.write();
        limiters.retain(|_, l| {
            l.retain_recent();
            l.shrink_to_fit();
            !l.is_empty()
        });
        limiters.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn nonzero(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limiter() -> (LocalRateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalRateLimiter::with_clock(clock.clone()), clock)
    }

    #[test]
    fn n_allowed_then_refused_with_headers_then_replenished() {
        let (l, clock) = limiter();
        let rate = Rate::per_minute(nonzero(5));
        let key: Arc<str> = "k1".into();
        for left in (0..5).rev() {
            let s = l.check_now(&key, rate);
            assert!(s.allowed());
            assert_eq!((s.limit, s.remaining), (5, left));
        }
        let s = l.check_now(&key, rate);
        assert_eq!(s.retry_after, Some(12), "one request every 12 s");
        assert_eq!((s.remaining, s.reset), (0, 60));
        clock.advance(Duration::from_secs(12));
        let s = l.check_now(&key, rate);
        assert!(s.allowed());
        assert_eq!((s.remaining, s.reset), (0, 60));
        // Another key, and the same key at another rate, are other buckets.
        assert!(l.check_now(&"k2".into(), rate).allowed());
        assert!(l.check_now(&key, Rate::per_minute(nonzero(6))).allowed());
    }

    #[test]
    fn exact_under_concurrency() {
        let l = Arc::new(LocalRateLimiter::default());
        let rate = Rate::new(nonzero(1000), Duration::from_secs(3600));
        let key: Arc<str> = "shared".into();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..500)
                            .filter(|_| l.check_now(&key, rate).allowed())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn a_hundred_thousand_keys_are_dropped_once_idle() {
        let (l, clock) = limiter();
        let rate = Rate::per_minute(nonzero(10));
        for i in 0..100_000 {
            assert!(l.check_now(&format!("key-{i}").into(), rate).allowed());
        }
        assert_eq!(l.buckets(), 100_000);
        l.cleanup();
        assert_eq!(l.buckets(), 100_000, "buckets not yet full are kept");
        // Once every bucket is full again it is indistinguishable from a
        // fresh one, so it goes.
        clock.advance(Duration::from_secs(60));
        l.cleanup();
        assert_eq!(l.buckets(), 0);
        assert!(l.read().is_empty(), "empty limiters go too");
    }
}
