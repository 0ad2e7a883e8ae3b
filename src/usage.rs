//! Usage counters, counted by the proxy: requests per tenant per UTC day
//! (the daily quota) and spend per tenant and per project per UTC month
//! (budgets).
//!
//! Each counter is read from the store once per process and period, then
//! kept in memory: a check-and-increment is one short lock, so the quota is
//! exact under any concurrency (of N+1 simultaneous requests with N left,
//! exactly N pass). Increments are added to the store by a flusher once a
//! second, in one transaction, so **a crash loses at most the last second
//! of counts** (one flush interval); a clean shutdown flushes everything.
//! With one store per pod (sled) the in-memory value is the truth; a shared
//! store brings a shared counter with the distributed-mode issue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use crate::store::{Counter, Store, StoreError, UsageKey};

/// The current UTC day, as days since 1970-01-01.
pub fn today() -> u32 {
    (unix_secs() / 86_400) as u32
}

/// Seconds until the next UTC midnight (when daily quotas start again).
pub fn secs_until_tomorrow() -> u64 {
    86_400 - unix_secs() % 86_400
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current UTC month as `year * 12 + month - 1`.
pub fn this_month() -> u32 {
    let now = OffsetDateTime::now_utc();
    now.year() as u32 * 12 + u32::from(u8::from(now.month())) - 1
}

/// `2026-11` for a [`this_month`] value.
pub fn month_name(month: u32) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

/// `2026-11-27` for a [`today`] value.
pub fn day_name(day: u32) -> String {
    time::Date::from_julian_day(2_440_588 + day as i32)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

/// Micro-USD per USD: spend is counted in integers, so budgets are reached
/// exactly (no float drift over millions of small costs).
pub const MICROS_PER_USD: u64 = 1_000_000;

/// Reads a cost the upstream reported (`0.0123`, `12`, `1.5e-3` is not
/// accepted): non-negative decimal USD, rounded half-up to the micro-dollar,
/// at most $1,000,000,000 per request. `None` for anything else.
pub fn parse_usd(s: &str) -> Option<u64> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 10
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut micros = 0u64;
    for (i, b) in frac.bytes().take(6).enumerate() {
        micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
    }
    if frac.as_bytes().get(6).is_some_and(|b| *b >= b'5') {
        micros += 1;
    }
    let total = whole.checked_mul(MICROS_PER_USD)?.checked_add(micros)?;
    (total <= 1_000_000_000 * MICROS_PER_USD).then_some(total)
}

/// USD for micro-USD, for JSON.
pub fn usd(micros: u64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// A limit in USD (`-1`: unlimited) as micro-USD.
pub fn limit_micros(usd: f64) -> Option<u64> {
    (usd >= 0.0).then(|| (usd * MICROS_PER_USD as f64).round() as u64)
}

/// The daily quota is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("daily request quota of {limit} reached")]
pub struct QuotaExceeded {
    /// The tenant's requests per day.
    pub limit: u64,
}

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Over the quota (429).
    #[error(transparent)]
    Exceeded(#[from] QuotaExceeded),
    /// The stored count could not be read (503: fail closed).
    #[error("usage counters unavailable")]
    Store(#[source] StoreError),
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    /// Stored plus counted here (counted here only until `loaded`).
    value: u64,
    /// Counted here, not yet in the store.
    pending: u64,
    /// Whether `value` includes the stored count. [`Usage::count`] records
    /// what a shared limiter admitted without waiting for the store; the
    /// next check that needs the value reads the store and adds it.
    loaded: bool,
}

/// The usage counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Usage {
    store: Arc<dyn Store>,
    /// Counters of the current periods in use. A std mutex: held for one
    /// map operation, never across an await.
    counts: Arc<Mutex<HashMap<UsageKey, Count>>>,
}

impl Usage {
    /// Counters over `store`; call [`Usage::run_flusher`] to persist.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            counts: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UsageKey, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `key` from the store into memory unless it is there.
    async fn load(&self, key: &UsageKey) -> Result<(), StoreError> {
        if self.lock().get(key).is_some_and(|c| c.loaded) {
            return Ok(());
        }
        let stored = self.store.usage(key).await?;
        // Another task may have loaded it meanwhile; its count wins (it
        // may already hold increments). Counts taken before any load
        // (`count`) are added to the stored value.
        let mut counts = self.lock();
        let c = counts.entry(key.clone()).or_default();
        if !c.loaded {
            c.value = c.value.saturating_add(stored);
            c.loaded = true;
        }
        Ok(())
    }

    /// The loaded counter `key`, if it is.
    fn loaded<'a>(
        counts: &'a mut HashMap<UsageKey, Count>,
        key: &UsageKey,
    ) -> Option<&'a mut Count> {
        counts.get_mut(key).filter(|c| c.loaded)
    }

    /// Counts `n` on `key` without a limit and without reading the store:
    /// a shared limiter (Redis) already decided, and this replica only
    /// owes the store the delta it admitted (flushed as usual).
    pub fn count(&self, key: UsageKey, n: u64) {
        let mut counts = self.lock();
        let c = counts.entry(key).or_default();
        c.value = c.value.saturating_add(n);
        c.pending = c.pending.saturating_add(n);
    }

    /// The durable value of `key`: the store's count plus what this
    /// replica counted and has not flushed yet. A shared limiter seeds a
    /// counter it lost (Redis restarted or evicted it) from this.
    pub async fn durable(&self, key: &UsageKey) -> Result<u64, StoreError> {
        let stored = self.store.usage(key).await?;
        let pending = self.lock().get(key).map_or(0, |c| c.pending);
        Ok(stored.saturating_add(pending))
    }

    /// Counts one request of `tenant` today unless that would pass
    /// `max_per_day` (-1: unlimited). The request that reaches the limit is
    /// the last one admitted.
    pub async fn admit_request(
        &self,
        tenant: &Arc<str>,
        max_per_day: i64,
    ) -> Result<u64, AdmitError> {
        let key = UsageKey {
            tenant_id: tenant.clone(),
            counter: Counter::Requests { day: today() },
        };
        loop {
            if let Some(c) = Self::loaded(&mut self.lock(), &key) {
                if max_per_day >= 0 && c.value >= max_per_day as u64 {
                    return Err(QuotaExceeded {
                        limit: max_per_day as u64,
                    }
                    .into());
                }
                c.value += 1;
                c.pending += 1;
                return Ok(c.value);
            }
            self.load(&key).await.map_err(AdmitError::Store)?;
        }
    }

    /// Adds `n` to a counter.
    pub async fn add(&self, key: UsageKey, n: u64) -> Result<(), StoreError> {
        loop {
            if let Some(c) = Self::loaded(&mut self.lock(), &key) {
                c.value = c.value.saturating_add(n);
                c.pending = c.pending.saturating_add(n);
                return Ok(());
            }
            self.load(&key).await?;
        }
    }

    /// Adds a request's cost to its tenant's and its project's spend this month.
    pub async fn add_spend(
        &self,
        tenant: &Arc<str>,
        project: Option<&Arc<str>>,
        micros: u64,
    ) -> Result<(), StoreError> {
        let month = this_month();
        self.add(
            UsageKey {
                tenant_id: tenant.clone(),
                counter: Counter::Spend {
                    month,
                    project: None,
                },
            },
            micros,
        )
        .await?;
        if let Some(p) = project {
            self.add(
                UsageKey {
                    tenant_id: tenant.clone(),
                    counter: Counter::Spend {
                        month,
                        project: Some(p.clone()),
                    },
                },
                micros,
            )
            .await?;
        }
        Ok(())
    }

    /// A counter's value: stored plus not yet flushed.
    pub async fn value(&self, key: &UsageKey) -> Result<u64, StoreError> {
        loop {
            if let Some(c) = Self::loaded(&mut self.lock(), key) {
                return Ok(c.value);
            }
            self.load(key).await?;
        }
    }

    /// Requests of `tenant` on `day`.
    pub async fn requests_on(&self, tenant: &str, day: u32) -> Result<u64, StoreError> {
        self.value(&UsageKey {
            tenant_id: tenant.into(),
            counter: Counter::Requests { day },
        })
        .await
    }

    /// Spend of `tenant` (or one of its projects) in `month`, in micro-USD.
    pub async fn spend_in(
        &self,
        tenant: &str,
        project: Option<&str>,
        month: u32,
    ) -> Result<u64, StoreError> {
        self.value(&UsageKey {
            tenant_id: tenant.into(),
            counter: Counter::Spend {
                month,
                project: project.map(Into::into),
            },
        })
        .await
    }

    /// Forgets a tenant's counters (it was deleted; the store dropped them).
    pub fn forget_tenant(&self, tenant: &str) {
        self.lock().retain(|k, _| &*k.tenant_id != tenant);
    }

    /// Moves pending counts into the store in one transaction. A failed
    /// batch is put back whole and retried on the next flush. Counters of
    /// past periods with nothing pending are dropped from memory.
    pub async fn flush(&self) {
        let batch: Vec<(UsageKey, u64)> = {
            let (day, month) = (today(), this_month());
            let mut counts = self.lock();
            counts.retain(|k, c| {
                c.pending > 0
                    || match k.counter {
                        Counter::Requests { day: d } => d >= day,
                        Counter::Spend { month: m, .. } => m >= month,
                    }
            });
            counts
                .iter_mut()
                .filter(|(_, c)| c.pending > 0)
                .map(|(k, c)| {
                    let n = std::mem::take(&mut c.pending);
                    if !c.loaded {
                        // Not loaded, the value is only what was counted
                        // here: once in the store, the load adds it back.
                        c.value = c.value.saturating_sub(n);
                    }
                    (k.clone(), n)
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.add_usage(&batch).await {
            tracing::warn!(error = %e, counters = batch.len(), "Usage flush failed; will retry.");
            let mut counts = self.lock();
            for (key, n) in batch {
                let c = counts.entry(key).or_default();
                c.pending += n;
                if !c.loaded {
                    c.value = c.value.saturating_add(n);
                }
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

#[cfg(test)]
mod tests {

    /// Counts a shared limiter recorded, flushed before anything loaded
    /// the counter, are counted once: the load finds them in the store.
    #[tokio::test]
    async fn counts_flushed_before_a_load_are_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sled::SledStore::open(&dir.path().join("db")).unwrap());
        let usage = Usage::new(store.clone());
        let key = UsageKey {
            tenant_id: "org-1".into(),
            counter: Counter::Requests { day: today() },
        };
        usage.count(key.clone(), 5);
        usage.flush().await;
        assert_eq!(store.usage(&key).await.unwrap(), 5);
        usage.count(key.clone(), 2);
        assert_eq!(usage.durable(&key).await.unwrap(), 7);
        assert_eq!(usage.value(&key).await.unwrap(), 7, "5 stored + 2 pending");
        usage.flush().await;
        assert_eq!(store.usage(&key).await.unwrap(), 7);
        assert_eq!(usage.value(&key).await.unwrap(), 7);
    }

    use super::*;
    use crate::store::sled::SledStore;

    #[test]
    fn costs_parse_exactly_to_the_micro_dollar() {
        assert_eq!(parse_usd("0.25"), Some(250_000));
        assert_eq!(parse_usd(" 12 "), Some(12_000_000));
        assert_eq!(parse_usd(".5"), Some(500_000));
        assert_eq!(parse_usd("3."), Some(3_000_000));
        assert_eq!(parse_usd("0.0000004"), Some(0));
        assert_eq!(parse_usd("0.0000005"), Some(1));
        assert_eq!(parse_usd("0.000123456789"), Some(123));
        assert_eq!(
            parse_usd("1000000000"),
            Some(1_000_000_000 * MICROS_PER_USD)
        );
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "NaN",
            "inf",
            "1,5",
            "0x10",
            "+1",
            "1000000001",
            "99999999999",
        ] {
            assert_eq!(parse_usd(bad), None, "{bad}");
        }
        assert_eq!(limit_micros(-1.0), None);
        assert_eq!(limit_micros(100.0), Some(100 * MICROS_PER_USD));
        assert_eq!(month_name(2026 * 12 + 10), "2026-11");
    }

    #[tokio::test]
    async fn quota_admits_exactly_the_limit_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let usage = Usage::new(store.clone());
        let t: Arc<str> = "org-00000001".into();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (usage, t) = (usage.clone(), t.clone());
                tokio::spawn(async move { usage.admit_request(&t, 20).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, 20);
        usage.flush().await;
        // A new process reads the count back.
        let again = Usage::new(store);
        assert!(matches!(
            again.admit_request(&t, 20).await,
            Err(AdmitError::Exceeded(QuotaExceeded { limit: 20 }))
        ));
        assert_eq!(again.admit_request(&t, 21).await.unwrap(), 21);
        assert_eq!(again.admit_request(&t, -1).await.unwrap(), 22);
        assert_eq!(again.requests_on(&t, today()).await.unwrap(), 22);
    }
}
