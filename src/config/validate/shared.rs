//! The shared backends' sections: `[store]` with `backend = "postgres"`
//! and `[rate_limit]` with `backend = "redis"` → their settings, URLs read
//! from the file or the file they name (never echoed: they may hold a
//! password), every problem collected.

use std::path::Path;
use std::time::Duration;

use super::Checker;
use crate::config::file::{RateLimitSection, StoreSection};
use crate::rate_limit::redis::{RedisConfig, RedisDown, RedisMode};
use crate::store::postgres::PostgresConfig;

/// A connection URL given inline or in a file (exactly one of them).
fn url_setting(c: &mut Checker, key: &str, inline: &str, file: &Path) -> Option<String> {
    let file_key = format!("{key}_file");
    match (inline.trim().is_empty(), file.as_os_str().is_empty()) {
        (true, true) => {
            c.fail(key, format!("required (or {file_key})"));
            None
        }
        (false, false) => {
            c.fail(key, format!("set {key} or {file_key}, not both"));
            None
        }
        (false, true) => Some(inline.trim().to_string()),
        (true, false) => match std::fs::read_to_string(file) {
            Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
            Ok(_) => {
                c.fail(file_key.clone(), format!("{}: empty", file.display()));
                None
            }
            Err(e) => {
                c.fail(file_key.clone(), format!("{}: {e}", file.display()));
                None
            }
        },
    }
}

/// `[store]` with `backend = "postgres"`.
pub(super) fn postgres_config(c: &mut Checker, s: &StoreSection) -> Option<PostgresConfig> {
    let url = url_setting(c, "store.url", &s.url, &s.url_file)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Not echoed: it may hold a password.
        c.fail("store.url", "expected a postgres:// or postgresql:// URL");
        return None;
    }
    if !is_identifier(&s.schema) {
        c.fail(
            "store.schema",
            "must be a plain SQL identifier (a-z, 0-9, _; at most 63 bytes)",
        );
    }
    let invalidation_poll = c.duration("store.invalidation_poll", s.invalidation_poll);
    if invalidation_poll > Duration::from_secs(60) {
        c.fail("store.invalidation_poll", "must be at most 60s");
    }
    Some(PostgresConfig {
        url,
        schema: s.schema.clone(),
        pool_size: c.bounded("store.pool_size", s.pool_size, 1, 1_000) as usize,
        connect_timeout: c.duration("store.connect_timeout", s.connect_timeout),
        statement_timeout: c.duration("store.statement_timeout", s.statement_timeout),
        tls_ca_file: (!s.tls_ca_file.as_os_str().is_empty()).then(|| s.tls_ca_file.clone()),
        invalidation_poll,
    })
}

/// A lower-case SQL identifier that needs no quoting.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[rate_limit]` with `backend = "redis"`.
pub(super) fn redis_config(c: &mut Checker, r: &RateLimitSection) -> Option<RedisConfig> {
    match r.backend.as_str() {
        "local" => return None,
        "redis" => {}
        other => {
            c.fail(
                "rate_limit.backend",
                format!("unknown backend {other:?}; supported: \"local\", \"redis\""),
            );
            return None;
        }
    }
    let url = url_setting(c, "rate_limit.redis_url", &r.redis_url, &r.redis_url_file)?;
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        c.fail(
            "rate_limit.redis_url",
            "expected a redis:// or rediss:// URL",
        );
        return None;
    }
    if r.redis_prefix.is_empty()
        || r.redis_prefix.len() > 64
        || !r
            .redis_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        c.fail(
            "rate_limit.redis_prefix",
            "1 to 64 of a-z, A-Z, 0-9, '-', '_', '.', ':'",
        );
    }
    let mode = match r.redis_mode.as_str() {
        "exact" => RedisMode::Exact,
        "leased" => RedisMode::Leased,
        other => {
            c.fail(
                "rate_limit.redis_mode",
                format!("unknown mode {other:?}; supported: \"exact\", \"leased\""),
            );
            RedisMode::Exact
        }
    };
    let down = match r.redis_down.as_str() {
        "refuse" => RedisDown::Refuse,
        "local" => RedisDown::Local,
        "allow" => RedisDown::Allow,
        other => {
            c.fail(
                "rate_limit.redis_down",
                format!("unknown choice {other:?}; supported: \"refuse\", \"local\", \"allow\""),
            );
            RedisDown::Local
        }
    };
    let timeout = c.duration("rate_limit.redis_timeout", r.redis_timeout);
    if timeout > Duration::from_secs(10) {
        c.fail("rate_limit.redis_timeout", "must be at most 10s");
    }
    let lease_ttl = c.duration("rate_limit.lease_ttl", r.lease_ttl);
    if lease_ttl > Duration::from_secs(60) {
        c.fail("rate_limit.lease_ttl", "must be at most 60s");
    }
    Some(RedisConfig {
        url,
        prefix: r.redis_prefix.clone(),
        mode,
        lease_size: c.bounded("rate_limit.lease_size", r.lease_size, 1, 10_000) as u32,
        lease_ttl,
        timeout,
        down,
        pubsub: r.redis_pubsub,
    })
}
