//! The cluster-wide limiter: every replica counts rates, daily quotas and
//! budgets in one Redis, so 3 or 20 replicas limit exactly as one.
//!
//! # Exact mode
//! One atomic Lua script per request (`redis/check.lua`, sent as EVALSHA,
//! reloaded on NOSCRIPT) does the key's GCRA (integer microseconds), the
//! tenant's and the project's monthly budget, then the tenant's daily
//! quota, in the limits stage's order, with Redis's `TIME` as the one clock
//! (the UTC day and month are computed from it in the script). Nothing is
//! written unless every check passes, so a refused request consumes
//! nothing. Keys are `<prefix>:{<tenant>}:rate:<bucket>`,
//! `<prefix>:{<tenant>}:quota:<day>` and
//! `<prefix>:{<tenant>}:spend:<month>[:<project>]`: one hash tag, so one
//! Redis Cluster slot per script. Every key expires: a GCRA key when its
//! bucket is full again, a quota key an hour after its day, a spend key
//! after its month.
//!
//! # Durability
//! Redis holds the live values; the store keeps the durable sum: each
//! replica still counts what it admitted and spent in [`Usage`], whose
//! flusher adds the deltas to the store once a second. A counter Redis lost
//! (restart, eviction) is seeded from the store: the script answers "seed
//! needed" instead of deciding, the replica reads the store's value (plus
//! its own unflushed count; concurrent requests share one read) and asks again, and the
//! script sets it only if still missing. So a Redis loss forgets at most
//! the last second of other replicas' counts.
//!
//! # Hiding the round trip
//! A refusal is remembered locally: a rate bucket until the time Redis gave
//! (it cannot pass earlier; a new rate is a new bucket), a quota or budget
//! for one second (an admin may raise the limit). Those requests are
//! refused without a round trip (`costguard_rate_limit_local_refusals_total`).
//! A remembered refusal of a later check may answer before an earlier check
//! would have: the reason can differ, nothing is consumed either way.
//!
//! # Leased mode
//! A replica takes up to `lease_size` tokens of a key's rate and of its
//! tenant's quota in one script call, spends them locally and drops what
//! is left after `lease_ttl` (a quota lease also at midnight UTC); a cost
//! route's budget is re-checked in Redis at least every `lease_ttl`.
//! Leased tokens are taken from Redis's counts when leased, so with R
//! replicas, L = `lease_size` and M the requests of one replica that find
//! its lease empty at the same moment (each asks for a lease; M = 1 when
//! requests for a key do not overlap):
//!
//! - rate: tokens held in leases are at most R × M × L, and admitted ≤
//!   what GCRA allows + R × M × L over any stretch of time (a lease taken
//!   near the end of one window may be spent in the next, within
//!   `lease_ttl`); over the long run never more than the rate;
//! - quota: never more than the quota; at most R × M × L of it leased and
//!   never spent (a lease dropped after `lease_ttl` gives nothing back);
//! - budget: admissions continue up to `lease_ttl` after the budget is
//!   spent (exact mode has no such lag).
//!
//! A request refused by Redis first spends tokens another task of its
//! replica leased meanwhile, so concurrent misses strand no tokens while
//! traffic lasts. `RateLimit-Remaining` on a request admitted from a lease
//! is what the lease has left, not the cluster's count.
//!
//! # Redis down
//! A connection error or no answer within `timeout` marks Redis down: the
//! request and every later one fall back at once (`down = refuse`: 503;
//! `local`: this process's limiter at the rate divided by the live
//! replica count, and the local [`Usage`] for quota and budget; `allow`: no
//! rate, local quota and budget) while a background task probes Redis once
//! a second; when it answers, Redis decides again. No restart is needed, and
//! construction never waits for Redis. Replicas heartbeat every 5 s into
//! `<prefix>:replicas` (a sorted set scored by Redis time); the live count
//! is the members seen in the last 15 s, remembered for when Redis is gone
//! (1 until first known).

mod fallback;
mod leased;
mod memo;
mod settings;

pub use fallback::divide;
use fallback::heartbeat;
pub use settings::{RedisConfig, RedisDown, RedisMode};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Script};
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::Notify;

use self::memo::{Expiring, Lease, Refusal, Subject};
use super::{LimiterError, LocalRateLimiter, Rate, RateStatus, ceil_secs};
use crate::metrics;
use crate::store::{Counter, UsageKey};
use crate::usage::{self, Usage};

static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("redis/clock.lua"),
        include_str!("redis/check.lua")
    ))
});
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("redis/clock.lua"),
        include_str!("redis/spend.lua")
    ))
});
static REPLICAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("redis/clock.lua"),
        include_str!("redis/replicas.lua")
    ))
});

/// Heartbeat period while Redis answers.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Probe period while it does not.
const PROBE: Duration = Duration::from_secs(1);
/// A replica is live if it heartbeat within this many seconds.
const LIVE_WINDOW_SECS: u64 = 15;
/// How long a quota or budget refusal is answered locally: short, because
/// an admin may raise the limit.
const LIMIT_RECHECK: Duration = Duration::from_secs(1);
/// Upper bound on how long a seed read from the store is kept: the cache
/// only merges the reads of requests that meet one lost counter together
/// (each entry is dropped once read).
const SEED_TTL: Duration = Duration::from_millis(250);

/// One request's limits, as the limits stage knows them.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// The rate bucket (the principal's key or user id).
    pub bucket: &'a Arc<str>,
    /// Its rate (`None`: no rate limit).
    pub rate: Option<Rate>,
    /// The caller's tenant, whose daily quota the request uses.
    pub tenant: &'a Arc<str>,
    /// The caller's tenant's requests per day (-1: unlimited).
    pub max_per_day: i64,
    /// Set on cost routes: the budgets the request must fit.
    pub budget: Option<BudgetAsk<'a>>,
}

/// The budgets a cost route checks.
#[derive(Clone, Copy, Debug)]
pub struct BudgetAsk<'a> {
    /// The route's tenant (a system admin's target, else the caller's).
    pub tenant: &'a Arc<str>,
    /// Its monthly budget in micro-USD (`None`: unlimited).
    pub tenant_limit: Option<u64>,
    /// The route's project and its budget in micro-USD, if any.
    pub project: Option<(&'a Arc<str>, Option<u64>)>,
}

/// Why the shared limiter held a request back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The key's rate (429).
    Rate(RateStatus),
    /// The `"tenant"`'s or `"project"`'s monthly budget (402).
    Budget(&'static str),
    /// The tenant's daily quota (429).
    Quota(RateStatus),
    /// Neither Redis nor the store could decide (503).
    Unavailable(String),
}

/// A round trip that failed: Redis is down (or its answer made no sense).
struct Down;

/// What a check call failed with.
enum Fail {
    Down,
    Refused(Refused),
}

impl From<Down> for Fail {
    fn from(_: Down) -> Self {
        Fail::Down
    }
}

/// The check script's answer (see `redis/check.lua`).
#[derive(Clone, Copy, Debug)]
struct Reply {
    status: i64,
    rate_granted: u64,
    rate_remaining: u64,
    reset_us: u64,
    retry_us: u64,
    quota_granted: u64,
    day_left: u64,
    day: u32,
    month: u32,
    seed_mask: i64,
}

impl Reply {
    fn parse(v: &[i64]) -> Option<Self> {
        let u = |i: usize| v.get(i).map(|x| (*x).max(0) as u64);
        Some(Self {
            status: *v.first()?,
            rate_granted: u(1)?,
            rate_remaining: u(2)?,
            reset_us: u(3)?,
            retry_us: u(4)?,
            quota_granted: u(5)?,
            day_left: u(7)?,
            day: u(8)? as u32,
            month: u(9)? as u32,
            seed_mask: *v.get(10)?,
        })
    }
}

const ALLOWED: i64 = 0;
const RATE: i64 = 1;
const TENANT_BUDGET: i64 = 2;
const PROJECT_BUDGET: i64 = 3;
const QUOTA: i64 = 4;
const SEEDS: i64 = 5;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    errors: AtomicU64,
    round_trips: AtomicU64,
    local_refusals: AtomicU64,
    fallback: [AtomicU64; 3],
}

/// The shared limiter. Cheap to clone; must be created inside a tokio
/// runtime (it spawns its heartbeat task, which ends when the last clone
/// is dropped).
#[derive(Clone)]
pub struct RedisLimits {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisLimits {
    /// Never the URL: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.inner.prefix)
            .field("mode", &self.inner.mode)
            .field("down", &self.inner.down)
            .field("up", &self.redis_up())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Multiplexed, reconnects on its own; cloned per call.
    conn: ConnectionManager,
    prefix: String,
    mode: RedisMode,
    lease_size: u64,
    lease_ttl: Duration,
    timeout: Duration,
    down: RedisDown,
    usage: Usage,
    /// Whether the last round trip (request or probe) succeeded.
    up: AtomicBool,
    /// Wakes the heartbeat task to probe at once after a failure. Shared
    /// with the task, which holds only a weak reference to the rest.
    wake: Arc<Notify>,
    /// Live replicas at the last heartbeat (1 until known).
    replicas: AtomicU64,
    /// This replica's heartbeat member.
    id: String,
    /// The fallback limiter (`down = local`).
    local: LocalRateLimiter,
    refusals: Expiring<Refusal>,
    leases: Expiring<Lease>,
    seeds: moka::future::Cache<UsageKey, u64>,
    counters: Counters,
}

impl RedisLimits {
    /// A limiter over the Redis at `config.url`, counting durable usage in
    /// `usage`. Does not connect: the first request or the heartbeat does,
    /// so a Redis that is down never delays startup. Fails only on a URL
    /// the client cannot use (the message never repeats the URL).
    pub fn new(config: &RedisConfig, usage: Usage) -> Result<Self, LimiterError> {
        let client = ::redis::Client::open(config.url.as_str())
            .map_err(|e| LimiterError(format!("rate_limit.redis_url: {:?}", e.kind())))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| LimiterError(format!("redis connection manager: {:?}", e.kind())))?;
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            conn,
            prefix: config.prefix.clone(),
            mode: config.mode,
            lease_size: u64::from(config.lease_size.max(1)),
            lease_ttl: config.lease_ttl,
            timeout: config.timeout,
            down: config.down,
            usage,
            up: AtomicBool::new(true),
            wake: wake.clone(),
            replicas: AtomicU64::new(1),
            id: uuid::Uuid::new_v4().to_string(),
            local: LocalRateLimiter::default(),
            refusals: Expiring::new(|r: &Refusal| r.until),
            leases: Expiring::new(|l: &Lease| l.expires),
            seeds: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(SEED_TTL)
                .build(),
            counters: Counters::default(),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&inner), wake));
        Ok(Self { inner })
    }

    /// Whether Redis answered the last round trip (for `/ready`). Cheap.
    pub fn redis_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Live replicas at the last heartbeat (1 until known).
    pub fn replicas(&self) -> u64 {
        self.inner.replicas.load(Ordering::Relaxed)
    }

    /// Rate, budget and quota for one request: one script call in exact
    /// mode (none when a remembered refusal or, in leased mode, a lease
    /// answers). Returns the rate status for the response's headers.
    pub async fn check(&self, ask: &Ask<'_>) -> Result<Option<RateStatus>, Refused> {
        let inner = &*self.inner;
        if !self.redis_up() {
            return inner.fallback(ask).await;
        }
        let now = Instant::now();
        let decided = match inner.mode {
            RedisMode::Exact => inner.exact(ask, now).await,
            RedisMode::Leased => inner.leased(ask, now).await,
        };
        match decided {
            Ok(status) => Ok(status),
            Err(Fail::Refused(r)) => Err(r),
            Err(Fail::Down) => inner.fallback(ask).await,
        }
    }

    /// Adds a request's cost to the tenant's and project's spend in Redis
    /// (counters Redis holds; a missing one is seeded from the store at the
    /// next budget check). The caller counts it in [`Usage`] too, which
    /// makes it durable. Skipped while Redis is down.
    pub async fn add_spend(&self, tenant: &Arc<str>, project: Option<&Arc<str>>, micros: u64) {
        if !self.redis_up() {
            return;
        }
        let inner = &*self.inner;
        let mut call = SPEND.key(inner.base(tenant));
        call.arg(micros).arg(project.map_or("", |p| &**p));
        let _ = inner.round_trip::<i64>(&call).await;
    }

    /// Drops expired remembered refusals and leases, and idle buckets of
    /// the fallback limiter.
    pub fn cleanup(&self) {
        let now = Instant::now();
        self.inner.refusals.cleanup(now);
        self.inner.leases.cleanup(now);
        super::RateLimiter::cleanup(&self.inner.local);
    }

    /// The shared limiter's metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::gauge(
            enc,
            "costguard_rate_limit_redis_up",
            "Whether Redis answered the last round trip.",
            u64::from(self.redis_up()),
        )?;
        metrics::counter(
            enc,
            "costguard_rate_limit_redis_errors",
            "Redis round trips that failed or timed out.",
            load(&c.errors),
        )?;
        metrics::counter(
            enc,
            "costguard_rate_limit_redis_round_trips",
            "Script calls sent to Redis.",
            load(&c.round_trips),
        )?;
        metrics::counter(
            enc,
            "costguard_rate_limit_local_refusals",
            "Requests refused from a remembered Redis refusal, without a round trip.",
            load(&c.local_refusals),
        )?;
        metrics::gauge(
            enc,
            "costguard_rate_limit_redis_replicas",
            "Live replicas at the last heartbeat.",
            self.replicas(),
        )?;
        metrics::counters(
            enc,
            "costguard_rate_limit_fallback",
            "Requests decided without Redis, by the configured behaviour.",
            "mode",
            ["refuse", "local", "allow"]
                .iter()
                .enumerate()
                .map(|(i, mode)| (*mode, load(&c.fallback[i]))),
        )
    }

    /// Remembered refusals and leases held (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.inner.refusals.len() + self.inner.leases.len()
    }
}

// === impl Inner ===

impl Inner {
    fn base(&self, tenant: &str) -> String {
        format!("{}:{{{tenant}}}", self.prefix)
    }

    /// One script call with the timeout; a failure marks Redis down.
    async fn round_trip<T: ::redis::FromRedisValue>(
        &self,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(self.timeout, call.invoke_async::<T>(&mut conn)).await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed(Some(&e));
                Err(Down)
            }
            Err(_) => {
                self.failed(None);
                Err(Down)
            }
        }
    }

    fn failed(&self, error: Option<&RedisError>) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            let error = error.map_or_else(
                || "no answer within the timeout".to_owned(),
                |e| e.to_string(),
            );
            tracing::warn!(error = %error, down = ?self.down, "Redis does not answer; limits fall back until it does.");
            self.wake.notify_one();
        }
    }

    /// A remembered refusal that still holds, in the stage's order.
    fn remembered(&self, ask: &Ask<'_>, now: Instant) -> Option<Refused> {
        if let Some(rate) = ask.rate
            && let Some(r) = self
                .refusals
                .get(&Subject::Rate(ask.bucket.clone(), rate), now)
        {
            return Some(Refused::Rate(memo::rate_status(rate, r.until - now)));
        }
        if let Some(b) = &ask.budget {
            if b.tenant_limit.is_some()
                && self
                    .refusals
                    .get(&Subject::Budget(b.tenant.clone(), None), now)
                    .is_some()
            {
                return Some(Refused::Budget("tenant"));
            }
            if let Some((p, Some(_))) = b.project
                && self
                    .refusals
                    .get(&Subject::Budget(b.tenant.clone(), Some(p.clone())), now)
                    .is_some()
            {
                return Some(Refused::Budget("project"));
            }
        }
        if ask.max_per_day >= 0
            && let Some(r) = self.refusals.get(&Subject::Quota(ask.tenant.clone()), now)
            && r.limit == ask.max_per_day as u64
        {
            return Some(Refused::Quota(memo::quota_status(
                r.limit,
                usage::secs_until_tomorrow(),
            )));
        }
        None
    }

    /// Runs the check script for `tenant`'s keys, seeding lost counters
    /// from the store when the script asks for them.
    async fn run(
        &self,
        tenant: &Arc<str>,
        bucket: Option<(&Arc<str>, Rate, u64)>,
        quota: Option<(i64, u64)>,
        budget: Option<&BudgetAsk<'_>>,
    ) -> Result<Reply, Fail> {
        let base = self.base(tenant);
        let rate_key = match bucket {
            Some((b, ..)) => format!("{base}:rate:{b}"),
            None => format!("{base}:rate:"),
        };
        let mut seeds = [-1i64; 3];
        for _ in 0..3 {
            let mut call = CHECK.key(&rate_key);
            call.key(&base);
            match bucket {
                Some((_, rate, want)) => {
                    let interval = (rate.period.as_micros() / u128::from(rate.limit.get())).max(1);
                    let tau = interval * u128::from(rate.burst.get());
                    call.arg(want).arg(interval as u64).arg(tau as u64)
                }
                None => call.arg(0).arg(1).arg(0),
            };
            match quota {
                Some((limit, want)) => call.arg(want).arg(limit),
                None => call.arg(0).arg(-1),
            };
            call.arg(seeds[0]);
            let limit = |l: Option<u64>| l.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
            match budget {
                Some(b) => {
                    call.arg(limit(b.tenant_limit)).arg(seeds[1]);
                    match b.project {
                        Some((p, l)) => call.arg(&**p).arg(limit(l)),
                        None => call.arg("").arg(-1),
                    };
                }
                None => {
                    call.arg(-1).arg(-1).arg("").arg(-1);
                }
            }
            call.arg(seeds[2]);
            let raw: Vec<i64> = self.round_trip(&call).await?;
            let reply = Reply::parse(&raw).ok_or_else(|| {
                self.failed(None);
                Fail::Down
            })?;
            if reply.status != SEEDS {
                return Ok(reply);
            }
            let key = |counter| UsageKey {
                tenant_id: tenant.clone(),
                counter,
            };
            let project = budget.and_then(|b| b.project).map(|(p, _)| p.clone());
            let wanted = [
                (1, key(Counter::Requests { day: reply.day })),
                (
                    2,
                    key(Counter::Spend {
                        month: reply.month,
                        project: None,
                    }),
                ),
                (
                    4,
                    key(Counter::Spend {
                        month: reply.month,
                        project,
                    }),
                ),
            ];
            for (i, (bit, key)) in wanted.into_iter().enumerate() {
                if reply.seed_mask & bit != 0 {
                    seeds[i] = self.seed(key).await? as i64;
                }
            }
        }
        self.failed(None);
        Err(Fail::Down)
    }

    /// The store's value of a counter Redis lost (concurrent readers share one read).
    async fn seed(&self, key: UsageKey) -> Result<u64, Fail> {
        let usage = self.usage.clone();
        let k = key.clone();
        let seed = self
            .seeds
            .try_get_with(key.clone(), async move { usage.durable(&k).await })
            .await;
        // The cache only merges concurrent reads: a seed kept longer could
        // predate counts made since (Redis may lose the counter again).
        self.seeds.invalidate(&key).await;
        seed.map_err(|e| {
            tracing::error!(error = %e, "Could not read a usage counter to seed Redis.");
            Fail::Refused(Refused::Unavailable("usage counters unavailable".into()))
        })
    }

    /// The request's budgets, for the script of `tenant`'s slot: a system
    /// admin's call to another tenant checks that tenant's budget in its
    /// own slot first (read-only), then its own rate and quota.
    async fn decide(&self, ask: &Ask<'_>, rate_want: u64, quota_want: u64) -> Result<Reply, Fail> {
        let budget = ask
            .budget
            .filter(|b| b.tenant_limit.is_some() || b.project.is_some_and(|(_, l)| l.is_some()));
        let same_slot = budget.filter(|b| b.tenant == ask.tenant);
        if let Some(b) = budget
            && b.tenant != ask.tenant
        {
            let reply = self.run(b.tenant, None, None, Some(&b)).await?;
            if reply.status != ALLOWED {
                return Ok(reply);
            }
        }
        let bucket = ask
            .rate
            .filter(|_| rate_want > 0)
            .map(|r| (ask.bucket, r, rate_want));
        let quota =
            (ask.max_per_day >= 0 && quota_want > 0).then_some((ask.max_per_day, quota_want));
        self.run(ask.tenant, bucket, quota, same_slot.as_ref())
            .await
    }

    /// Turns a refusal into the stage's answer and remembers it.
    fn refused(&self, ask: &Ask<'_>, reply: &Reply, now: Instant) -> Refused {
        let budget_tenant = ask.budget.map_or(ask.tenant, |b| b.tenant);
        match reply.status {
            RATE => {
                let rate = ask.rate.expect("a rate refusal has a rate");
                let wait = Duration::from_micros(reply.retry_us);
                let until = now + wait;
                self.refusals.insert(
                    Subject::Rate(ask.bucket.clone(), rate),
                    Refusal { until, limit: 0 },
                    now,
                );
                Refused::Rate(memo::rate_status(rate, wait))
            }
            TENANT_BUDGET | PROJECT_BUDGET => {
                let (scope, project) = if reply.status == TENANT_BUDGET {
                    ("tenant", None)
                } else {
                    (
                        "project",
                        ask.budget.and_then(|b| b.project).map(|(p, _)| p.clone()),
                    )
                };
                let until = now + LIMIT_RECHECK;
                self.refusals.insert(
                    Subject::Budget(budget_tenant.clone(), project),
                    Refusal { until, limit: 0 },
                    now,
                );
                Refused::Budget(scope)
            }
            QUOTA => {
                let limit = ask.max_per_day.max(0) as u64;
                let until = now + LIMIT_RECHECK.min(Duration::from_secs(reply.day_left));
                self.refusals.insert(
                    Subject::Quota(ask.tenant.clone()),
                    Refusal { until, limit },
                    now,
                );
                Refused::Quota(memo::quota_status(limit, reply.day_left))
            }
            _ => Refused::Unavailable("unexpected answer from Redis".into()),
        }
    }

    /// Counts an admitted request in the durable usage (flushed as usual).
    fn count(&self, ask: &Ask<'_>, day: u32) {
        self.usage.count(
            UsageKey {
                tenant_id: ask.tenant.clone(),
                counter: Counter::Requests { day },
            },
            1,
        );
    }

    /// A remembered refusal, counted.
    fn remembered_counted(&self, ask: &Ask<'_>, now: Instant) -> Result<(), Fail> {
        match self.remembered(ask, now) {
            Some(refused) => {
                self.counters.local_refusals.fetch_add(1, Ordering::Relaxed);
                Err(Fail::Refused(refused))
            }
            None => Ok(()),
        }
    }

    async fn exact(&self, ask: &Ask<'_>, now: Instant) -> Result<Option<RateStatus>, Fail> {
        self.remembered_counted(ask, now)?;
        if ask.rate.is_none() && ask.max_per_day < 0 && ask.budget.is_none() {
            // Nothing shared to check: only the durable count.
            self.count(ask, usage::today());
            return Ok(None);
        }
        let reply = self.decide(ask, 1, 1).await?;
        if reply.status != ALLOWED {
            return Err(Fail::Refused(self.refused(ask, &reply, now)));
        }
        self.count(ask, reply.day);
        Ok(ask.rate.map(|rate| allowed_status(rate, &reply)))
    }
}

/// A rate's status after an admission Redis decided.
fn allowed_status(rate: Rate, reply: &Reply) -> RateStatus {
    RateStatus {
        limit: rate.limit.get(),
        remaining: reply.rate_remaining.min(u64::from(rate.burst.get())) as u32,
        reset: ceil_secs(Duration::from_micros(reply.reset_us)),
        window: rate.period.as_secs().max(1),
        retry_after: None,
    }
}
