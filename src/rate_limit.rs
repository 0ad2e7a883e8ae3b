//! Per-key request rates: GCRA (the "generic cell rate algorithm" of ATM
//! networks, as in governor), which needs one timestamp per bucket and no
//! background refill, and is exact under concurrency (a compare-and-swap per
//! check).
//!
//! A bucket is named by the principal's key id (or user id), never by the
//! credential's bytes, so a key has one bucket whichever header carried it
//! and across rotations. The limiter sits behind [`RateLimiter`] so a
//! cluster-wide implementation (Redis) can replace the in-process one
//! ([`LocalRateLimiter`]) without touching the pipeline.
//!
//! Every proxied response carries the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`; a limited request gets 429
//! with `Retry-After` and never reaches the upstream.

pub mod failed_auth;
mod local;
pub mod redis;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

pub use local::LocalRateLimiter;

/// `RateLimit-Limit`
pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `RateLimit-Policy`
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// A request rate: `limit` requests per `period`, of which up to `burst`
/// may come at once (the rest are paced at `period / limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period.
    pub limit: NonZeroU32,
    /// The period.
    pub period: Duration,
    /// Requests allowed back to back when the bucket is full (≤ `limit`).
    pub burst: NonZeroU32,
}

impl Rate {
    /// `limit` per `period`, all of it usable at once.
    pub fn new(limit: NonZeroU32, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: limit,
        }
    }

    /// `n` per minute (an API key's `rate_limit_per_minute`).
    pub fn per_minute(n: NonZeroU32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// The same rate with the burst set to `percent` of the limit (at least 1).
    pub fn with_burst_percent(self, percent: u8) -> Self {
        let burst = (u64::from(self.limit.get()) * u64::from(percent.clamp(1, 100))).div_ceil(100);
        Self {
            burst: NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN),
            ..self
        }
    }

    /// Whether this rate's sustained throughput is at most `other`'s
    /// (`a/p ≤ b/q` as `a·q ≤ b·p`, exact).
    pub fn at_most(&self, other: &Rate) -> bool {
        u128::from(self.limit.get()) * other.period.as_nanos()
            <= u128::from(other.limit.get()) * self.period.as_nanos()
    }

    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / self.limit.get()
    }

    /// Parses `N/second`, `N/minute`, `N/hour` or `N/day` (also `s`, `m`,
    /// `h`, `d`); `unlimited` is `None`.
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(None);
        }
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("expected N/minute, N/hour, … or \"unlimited\", got {s:?}"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a whole number of requests"))?;
        let n =
            NonZeroU32::new(n).ok_or("a rate of 0 admits nothing; use \"unlimited\" or N ≥ 1")?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            other => {
                return Err(format!(
                    "unknown period {other:?} (second, minute, hour, day)"
                ));
            }
        };
        Ok(Some(Rate::new(n, Duration::from_secs(period))))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.limit, self.period.as_secs())
    }
}

/// What the limiter decided, with what the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateStatus {
    /// The bucket's limit (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests still allowed now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset: u64,
    /// The window, for `RateLimit-Policy`.
    pub window: u64,
    /// Set when the request is refused: seconds until one would be allowed
    /// (`Retry-After`, at least 1).
    pub retry_after: Option<u64>,
}

impl RateStatus {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset));
        if let Ok(policy) = HeaderValue::try_from(format!("{};w={}", self.limit, self.window)) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
    }
}

/// Whole seconds, rounded up (a client waiting that long is not refused again).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The limiter could not decide (a remote backend failed).
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

/// Decides per-bucket rates. Implementations must be exact under
/// concurrency: of N+1 simultaneous requests to a bucket with N left,
/// exactly N are allowed.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug + 'static {
    /// Takes one request from `bucket` at `rate`, or says when to retry.
    async fn check(&self, bucket: &Arc<str>, rate: Rate) -> Result<RateStatus, LimiterError>;

    /// Buckets currently held (bounded: idle ones are dropped).
    fn buckets(&self) -> usize;

    /// Drops buckets indistinguishable from fresh ones (full again), so
    /// memory follows the keys in use, not every key ever seen.
    fn cleanup(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let r = Rate::parse("1000/hour").unwrap().unwrap();
        assert_eq!(r.limit.get(), 1000);
        assert_eq!(r.period, Duration::from_secs(3600));
        assert_eq!(r.burst.get(), 1000);
        assert_eq!(r.interval(), Duration::from_millis(3600));
        assert_eq!(
            Rate::parse(" 5 / m ").unwrap().unwrap().period.as_secs(),
            60
        );
        assert_eq!(Rate::parse("UNLIMITED").unwrap(), None);
        for bad in [
            "",
            "10",
            "0/minute",
            "-1/minute",
            "ten/minute",
            "10/fortnight",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn burst_is_a_rounded_up_share_of_the_limit() {
        let r = Rate::per_minute(NonZeroU32::new(10).unwrap());
        assert_eq!(r.with_burst_percent(100).burst.get(), 10);
        assert_eq!(r.with_burst_percent(25).burst.get(), 3);
        assert_eq!(r.with_burst_percent(0).burst.get(), 1);
        assert_eq!(r.with_burst_percent(200).burst.get(), 10);
    }

    #[test]
    fn status_renders_the_draft_headers() {
        let mut h = HeaderMap::new();
        RateStatus {
            limit: 5,
            remaining: 0,
            reset: 12,
            window: 60,
            retry_after: Some(12),
        }
        .apply(&mut h);
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "12");
        assert_eq!(h["ratelimit-policy"], "5;w=60");
        assert_eq!(h["retry-after"], "12");
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }
}
