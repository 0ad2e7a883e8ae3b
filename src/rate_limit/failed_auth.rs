//! Failed authentications per client address: after `N` bad keys or tokens
//! in a minute from one source, its further attempts get 429 before any key
//! lookup, so a guessing or flooding client costs a map read (and a cache
//! read: the pipeline still lets through credentials its caches hold as
//! valid, since behind an ingress one address may carry many clients).
//!
//! Each source holds one GCRA timestamp (its "theoretical arrival time"):
//! a failure moves it `60 s / N` later, and the source is blocked while it
//! is more than `N - 1` intervals ahead of now. So `N` failures at once
//! block the source for one interval, and a steady `N` per minute never
//! does. The pre-authentication check is one map read. IPv6 sources are
//! counted per /64 (one host owns a whole /64 and could otherwise rotate
//! through it). The table is bounded: when it holds `max_sources` sources,
//! failures of new sources share one overflow entry, which then also
//! decides for sources not in the table; sources already tracked keep their
//! own.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::ceil_secs;

/// Where failures are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
    /// Every new source once the table is full.
    Overflow,
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The failed-authentication limiter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FailedAuth(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Source → its theoretical arrival time.
    sources: DashMap<Source, Instant>,
    /// `sources.len()`, kept beside it: DashMap's own `len` locks every
    /// shard, and the pre-check runs on every authenticated request.
    tracked: AtomicUsize,
    /// 60 s / N.
    interval: Duration,
    /// (N - 1) intervals: how far ahead of now a source may be.
    tolerance: Duration,
    max_sources: usize,
    per_minute: u32,
}

/// A source that must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Seconds until it may try again (`Retry-After`).
    pub retry_after: u64,
    /// Failures allowed per minute.
    pub limit: u32,
}

impl Blocked {
    /// The `RateLimit-*` view of the block (window: one minute).
    pub fn status(&self) -> super::RateStatus {
        super::RateStatus {
            limit: self.limit,
            remaining: 0,
            reset: self.retry_after,
            window: 60,
            retry_after: Some(self.retry_after),
        }
    }
}

impl FailedAuth {
    /// `per_minute` failures per source per minute, `max_sources` sources tracked.
    pub fn new(per_minute: NonZeroU32, max_sources: usize) -> Self {
        let interval = Duration::from_secs(60) / per_minute.get();
        Self(Arc::new(Inner {
            sources: DashMap::new(),
            tracked: AtomicUsize::new(0),
            interval,
            tolerance: interval * (per_minute.get() - 1),
            max_sources: max_sources.max(1),
            per_minute: per_minute.get(),
        }))
    }

    /// The entry that decides for `ip`.
    fn source(&self, ip: IpAddr) -> Source {
        let this = &*self.0;
        let source = Source::of(ip);
        if this.tracked.load(Ordering::Relaxed) >= this.max_sources
            && !this.sources.contains_key(&source)
        {
            Source::Overflow
        } else {
            source
        }
    }

    fn blocked(&self, tat: Instant, now: Instant) -> Option<Blocked> {
        let until = tat.checked_sub(self.0.tolerance)?;
        (until > now).then(|| Blocked {
            retry_after: ceil_secs(until - now).max(1),
            limit: self.0.per_minute,
        })
    }

    /// Whether `ip` may attempt authentication now; called before any lookup.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        // Nothing tracked (the usual case): no clock read, no map read.
        if self.0.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Blocked> {
        if self.0.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let tat = self.0.sources.get(&self.source(ip)).map(|t| *t);
        match tat.and_then(|tat| self.blocked(tat, now)) {
            Some(b) => Err(b),
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`; returns the block it
    /// caused, if this failure used the source's last attempt.
    pub fn failed(&self, ip: IpAddr) -> Option<Blocked> {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) -> Option<Blocked> {
        let source = self.source(ip);
        let mut tat = self.0.sources.entry(source).or_insert_with(|| {
            self.0.tracked.fetch_add(1, Ordering::Relaxed);
            now
        });
        *tat = (*tat).max(now) + self.0.interval;
        let tat = *tat;
        self.blocked(tat, now)
    }

    /// Drops sources whose failures have all expired.
    pub fn cleanup(&self) {
        let now = Instant::now();
        self.0.sources.retain(|_, tat| *tat > now);
        self.0.sources.shrink_to_fit();
        self.0
            .tracked
            .store(self.0.sources.len(), Ordering::Relaxed);
    }

    /// Sources currently tracked.
    pub fn sources(&self) -> usize {
        self.0.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(n: u32, max: usize) -> FailedAuth {
        FailedAuth::new(NonZeroU32::new(n).unwrap(), max)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn n_failures_then_blocked_until_an_interval_passes() {
        let l = limiter(3, 100);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(l.failed_at(a, t0), None);
        assert_eq!(l.failed_at(a, t0), None);
        assert!(l.check_at(a, t0).is_ok());
        assert_eq!(
            l.failed_at(a, t0),
            Some(Blocked {
                retry_after: 20,
                limit: 3
            })
        );
        assert_eq!(
            l.check_at(a, t0),
            Err(Blocked {
                retry_after: 20,
                limit: 3
            })
        );
        assert!(
            l.check_at(ip("10.0.0.2"), t0).is_ok(),
            "other sources unaffected"
        );
        let later = t0 + Duration::from_secs(20);
        assert!(l.check_at(a, later).is_ok());
        assert!(
            l.failed_at(a, later).is_some(),
            "one attempt back, spent at once"
        );
        // A steady N per minute never blocks.
        let b = ip("10.0.0.3");
        for i in 0..30 {
            assert_eq!(l.failed_at(b, t0 + Duration::from_secs(20 * i)), None);
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = limiter(2, 100);
        let t0 = Instant::now();
        l.failed_at(ip("2001:db8::1"), t0);
        l.failed_at(ip("2001:db8::2"), t0);
        assert!(l.check_at(ip("2001:db8::ffff"), t0).is_err());
        assert!(l.check_at(ip("2001:db8:0:1::1"), t0).is_ok());
        l.failed_at(ip("::ffff:10.0.0.9"), t0);
        l.failed_at(ip("10.0.0.9"), t0);
        assert!(l.check_at(ip("10.0.0.9"), t0).is_err());
    }

    #[test]
    fn a_full_table_shares_one_overflow_entry() {
        let l = limiter(2, 2);
        let t0 = Instant::now();
        l.failed_at(ip("10.0.0.1"), t0);
        l.failed_at(ip("10.0.0.2"), t0);
        // Table full: new sources count together.
        l.failed_at(ip("10.0.0.3"), t0);
        l.failed_at(ip("10.0.0.4"), t0);
        assert!(l.check_at(ip("10.0.0.5"), t0).is_err());
        assert!(
            l.check_at(ip("10.0.0.1"), t0).is_ok(),
            "tracked sources keep their own"
        );
        assert_eq!(l.sources(), 3);
    }
}
