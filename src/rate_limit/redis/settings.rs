//! The shared limiter's settings, as validated configuration builds them
//! (`[rate_limit]` with `backend = "redis"`). Defined beside the limiter
//! that reads them, so the limiter needs nothing from `config`.

use std::time::Duration;

/// How the shared limiter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One round trip per request; exact across replicas.
    Exact,
    /// Up to `lease_size` requests per key taken ahead by each replica.
    Leased,
}

/// What a request meets when Redis does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisDown {
    /// 503 `service_unavailable`.
    Refuse,
    /// Local limits at the rate divided by the live replica count.
    Local,
    /// No rate limit (quota counted locally).
    Allow,
}

/// The shared limiter's settings (`rate_limit.backend = "redis"`).
#[derive(Clone)]
pub struct RedisConfig {
    /// Connection URL (may hold a password: never printed).
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Exact or leased.
    pub mode: RedisMode,
    /// Requests per lease.
    pub lease_size: u32,
    /// A lease's lifetime.
    pub lease_ttl: Duration,
    /// Longest wait for an answer.
    pub timeout: Duration,
    /// Behaviour without Redis.
    pub down: RedisDown,
    /// Invalidations over pub/sub too.
    pub pubsub: bool,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("lease_size", &self.lease_size)
            .field("lease_ttl", &self.lease_ttl)
            .field("timeout", &self.timeout)
            .field("down", &self.down)
            .field("pubsub", &self.pubsub)
            .finish()
    }
}
