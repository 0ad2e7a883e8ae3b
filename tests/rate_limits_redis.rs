//! The shared limiter against a real Redis 7: the one on 127.0.0.1:6379
//! (each test under its own random key prefix, deleted at the end; never
//! flushed) and, for outages, a `redis-server` of the test's own on a free
//! port, killed by its pid and restarted on the same port.
//!
//! Two `RedisLimits` over two connections are two replicas. A missing
//! Redis fails these tests: they never skip.
#![allow(missing_docs)]

use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use costguard::config::{RedisConfig, RedisDown, RedisMode};
use costguard::rate_limit::Rate;
use costguard::rate_limit::redis::{Ask, BudgetAsk, RedisLimits, Refused};
use costguard::store::sled::SledStore;
use costguard::store::{Counter, Store, UsageKey};
use costguard::usage::{self, Usage};

const SHARED: &str = "redis://127.0.0.1:6379";

fn config(url: &str, prefix: &str, mode: RedisMode, down: RedisDown) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        prefix: prefix.into(),
        mode,
        lease_size: 10,
        lease_ttl: Duration::from_secs(10),
        timeout: Duration::from_millis(500),
        down,
        pubsub: false,
    }
}

/// One test's world: a store both replicas flush to, and a key prefix.
struct World {
    prefix: String,
    url: String,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let world = Self {
            prefix: format!("cgtest-{}", uuid::Uuid::new_v4().simple()),
            url: url.into(),
            store,
            _dir: dir,
        };
        let pong: String = redis::cmd("PING")
            .query_async(&mut world.conn().await)
            .await
            .expect("Redis must answer for these tests");
        assert_eq!(pong, "PONG");
        world
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must answer for these tests")
    }

    /// A replica: its own connection and its own usage counters.
    fn replica(&self, mode: RedisMode, down: RedisDown) -> (RedisLimits, Usage) {
        self.replica_with(config(&self.url, &self.prefix, mode, down))
    }

    fn replica_with(&self, config: RedisConfig) -> (RedisLimits, Usage) {
        let usage = Usage::new(self.store.clone());
        (RedisLimits::new(&config, usage.clone()).unwrap(), usage)
    }

    async fn get(&self, key: &str) -> Option<i64> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Deletes this test's keys (never anything else).
    async fn clean(&self) {
        let mut conn = self.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

impl Drop for World {
    /// Deletes this test's keys even when it failed before `clean`.
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}:*", self.prefix));
        let _ = std::thread::spawn(move || {
            let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
        })
        .join();
    }
}

fn rate(limit: u32, secs: u64) -> Rate {
    Rate::new(NonZeroU32::new(limit).unwrap(), Duration::from_secs(secs))
}

fn metric(l: &RedisLimits, name: &str) -> u64 {
    let l = l.clone();
    let out = costguard::metrics::text_of(move |enc| l.encode(enc));
    out.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{out}"))
        .parse()
        .unwrap()
}

struct Req {
    bucket: Arc<str>,
    tenant: Arc<str>,
    rate: Option<Rate>,
    per_day: i64,
}

impl Req {
    fn new(bucket: &str, tenant: &str, rate: Option<Rate>, per_day: i64) -> Self {
        Self {
            bucket: bucket.into(),
            tenant: tenant.into(),
            rate,
            per_day,
        }
    }

    fn ask(&self) -> Ask<'_> {
        Ask {
            bucket: &self.bucket,
            rate: self.rate,
            tenant: &self.tenant,
            max_per_day: self.per_day,
            budget: None,
        }
    }
}

/// `n` concurrent checks of `req`, alternating between the replicas.
async fn burst(replicas: &[RedisLimits], req: &Arc<Req>, n: usize) -> Vec<Result<(), Refused>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let l = replicas[i % replicas.len()].clone();
            let req = req.clone();
            tokio::spawn(async move { l.check(&req.ask()).await.map(|_| ()) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn passed(results: &[Result<(), Refused>]) -> usize {
    results.iter().filter(|r| r.is_ok()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_n_plus_one_concurrent_requests_across_two_replicas_exactly_n_pass() {
    let w = World::new(SHARED).await;
    let (a, _) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let (b, _) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    const N: u32 = 40;
    let req = Arc::new(Req::new("key-1", "org-00000001", Some(rate(N, 3600)), -1));
    let results = burst(&[a.clone(), b.clone()], &req, N as usize + 1).await;
    assert_eq!(passed(&results), N as usize);
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    match refused[..] {
        [Refused::Rate(s)] => {
            assert_eq!((s.limit, s.remaining), (N, 0));
            // One request every 90 s at 40/hour.
            assert!((89..=90).contains(&s.retry_after.unwrap()), "{s:?}");
        }
        _ => panic!("{refused:?}"),
    }
    // The GCRA key expires when the bucket is full again (one hour).
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:{{org-00000001}}:rate:key-1", w.prefix))
        .query_async(&mut w.conn().await)
        .await
        .unwrap();
    assert!((3_500_000..=3_600_001).contains(&ttl), "{ttl}");
    w.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_consumes_nothing() {
    let w = World::new(SHARED).await;
    let (a, ua) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let tenant = "org-00000002";
    let slow = Req::new("key-slow", tenant, Some(rate(1, 3600)), 2);
    assert!(a.check(&slow.ask()).await.is_ok());
    for _ in 0..3 {
        assert!(matches!(a.check(&slow.ask()).await, Err(Refused::Rate(_))));
    }
    let day = usage::today();
    let quota_key = format!("{}:{{{tenant}}}:quota:{day}", w.prefix);
    assert_eq!(
        w.get(&quota_key).await,
        Some(1),
        "rate refusals took no quota"
    );
    // The day's second request is still there, then the quota refuses,
    // and a quota refusal takes no rate from a fresh key either.
    let other = Req::new("key-b", tenant, Some(rate(5, 3600)), 2);
    assert!(a.check(&other.ask()).await.is_ok());
    let third = Req::new("key-c", tenant, Some(rate(5, 3600)), 2);
    match a.check(&third.ask()).await {
        Err(Refused::Quota(q)) => assert_eq!((q.limit, q.remaining, q.window), (2, 0, 86_400)),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.get(&quota_key).await, Some(2));
    assert_eq!(
        w.get(&format!("{}:{{{tenant}}}:rate:key-c", w.prefix))
            .await,
        None,
        "the quota-refused request wrote no rate key"
    );
    // The durable count is what was admitted.
    assert_eq!(ua.requests_on(tenant, day).await.unwrap(), 2);
    w.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_of_n_across_two_replicas_admits_exactly_n() {
    let w = World::new(SHARED).await;
    let (a, ua) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let (b, ub) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    const N: usize = 30;
    let req = Arc::new(Req::new("k", "org-00000003", None, N as i64));
    let results = burst(&[a, b], &req, N + 15).await;
    assert_eq!(passed(&results), N);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|r| matches!(r, Refused::Quota(_)))
    );
    // Each replica flushes what it admitted; the store holds the sum.
    ua.flush().await;
    ub.flush().await;
    let key = UsageKey {
        tenant_id: "org-00000003".into(),
        counter: Counter::Requests {
            day: usage::today(),
        },
    };
    assert_eq!(w.store.usage(&key).await.unwrap(), N as u64);
    w.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_after_spend_recorded_on_another_replica() {
    let w = World::new(SHARED).await;
    let (a, ua) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let (b, _) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let tenant: Arc<str> = "org-00000004".into();
    let project: Arc<str> = "proj-00000001".into();
    let req = Req::new("k", &tenant, None, -1);
    let ask = |tenant_limit, project_limit| Ask {
        budget: Some(BudgetAsk {
            tenant: &tenant,
            tenant_limit,
            project: Some((&project, project_limit)),
        }),
        ..req.ask()
    };
    // The first check seeds the spend counters from the store (0).
    assert!(b.check(&ask(Some(1_000_000), Some(500_000))).await.is_ok());
    // A records a cost as the stage does: durable usage, then Redis.
    ua.add_spend(&tenant, Some(&project), 499_999)
        .await
        .unwrap();
    a.add_spend(&tenant, Some(&project), 499_999).await;
    assert!(b.check(&ask(Some(1_000_000), Some(500_000))).await.is_ok());
    ua.add_spend(&tenant, Some(&project), 1).await.unwrap();
    a.add_spend(&tenant, Some(&project), 1).await;
    assert_eq!(
        b.check(&ask(Some(1_000_000), Some(500_000))).await,
        Err(Refused::Budget("project"))
    );
    // Without a project budget the tenant's (1.00 USD) still has room.
    assert!(b.check(&ask(Some(1_000_000), None)).await.is_ok());
    ua.add_spend(&tenant, None, 500_000).await.unwrap();
    a.add_spend(&tenant, None, 500_000).await;
    assert_eq!(
        b.check(&ask(Some(1_000_000), None)).await,
        Err(Refused::Budget("tenant"))
    );
    let month = format!("{}:{{{tenant}}}:spend:{}", w.prefix, usage::this_month());
    assert_eq!(w.get(&month).await, Some(1_000_000));
    assert_eq!(w.get(&format!("{month}:{project}")).await, Some(500_000));
    w.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_refusals_spare_round_trips() {
    let w = World::new(SHARED).await;
    let (a, _) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let req = Req::new("key-r", "org-00000005", Some(rate(1, 3600)), -1);
    assert!(a.check(&req.ask()).await.is_ok());
    assert!(a.check(&req.ask()).await.is_err());
    let trips = metric(&a, "costguard_rate_limit_redis_round_trips_total");
    for _ in 0..50 {
        match a.check(&req.ask()).await {
            Err(Refused::Rate(s)) => assert!(s.retry_after.unwrap() > 3500),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        metric(&a, "costguard_rate_limit_redis_round_trips_total"),
        trips,
        "refused locally"
    );
    assert_eq!(metric(&a, "costguard_rate_limit_local_refusals_total"), 50);
    // Another bucket is asked of Redis.
    let faster = Req::new("key-s", "org-00000005", Some(rate(1, 3600)), -1);
    assert!(a.check(&faster.ask()).await.is_ok());
    assert_eq!(
        metric(&a, "costguard_rate_limit_redis_round_trips_total"),
        trips + 1
    );
    w.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_mode_stays_within_its_bound() {
    let w = World::new(SHARED).await;
    let (a, _) = w.replica(RedisMode::Leased, RedisDown::Refuse);
    let (b, _) = w.replica(RedisMode::Leased, RedisDown::Refuse);
    let both = [a.clone(), b.clone()];
    const L: usize = 10; // lease_size
    // A slow rate: leases are taken from GCRA's count, so at most the
    // limit passes, and at most 2 × L of it stays unspent in leases.
    const N: usize = 100;
    let req = Arc::new(Req::new(
        "key-l",
        "org-00000006",
        Some(rate(N as u32, 3600)),
        -1,
    ));
    let mut admitted = 0;
    for _ in 0..6 {
        admitted += passed(&burst(&both, &req, 50).await);
    }
    eprintln!("leased, {N}/hour: {admitted} admitted");
    assert!((N - 2 * L..=N).contains(&admitted), "{admitted}");
    let trips = metric(&a, "costguard_rate_limit_redis_round_trips_total")
        + metric(&b, "costguard_rate_limit_redis_round_trips_total");
    assert!(trips < 300 / 2, "{trips} round trips for 300 requests");
    // A fast rate hammered for two seconds: GCRA allows burst + rate × t;
    // leases add at most 2 × L.
    let fast = Arc::new(Req::new("key-f", "org-00000006", Some(rate(50, 1)), -1));
    let start = Instant::now();
    let mut admitted = 0;
    while start.elapsed() < Duration::from_secs(2) {
        admitted += passed(&burst(&both, &fast, 20).await);
    }
    let secs = start.elapsed().as_secs_f64();
    let bound = 50.0 + 50.0 * secs + (2 * L) as f64;
    eprintln!("leased, 50/s for {secs:.2}s: {admitted} admitted (bound {bound:.0})");
    assert!((admitted as f64) <= bound, "{admitted} > {bound}");
    // The quota is never passed.
    let quota = Arc::new(Req::new("key-q", "org-00000007", None, 35));
    let mut admitted = 0;
    for _ in 0..4 {
        admitted += passed(&burst(&both, &quota, 20).await);
    }
    eprintln!("leased, quota 35: {admitted} admitted");
    assert!((35 - 2 * L..=35).contains(&admitted), "{admitted}");
    w.clean().await;
}

// === Outages: a Redis of the test's own ===

struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::on(port)
    }

    fn on(port: u16) -> Self {
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (by its pid) and waits for it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        *self = Self::on(self.port);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills Redis under a replica configured with `down`, checks the
/// fallback, restarts Redis and checks the replica decides in it again.
async fn outage(down: RedisDown) -> (usize, usize) {
    let mut redis = OwnRedis::start();
    let w = World::new(&redis.url()).await;
    let (a, _) = w.replica(RedisMode::Exact, down);
    let (b, _) = w.replica(RedisMode::Exact, down);
    // Both heartbeat: two live replicas.
    until("two replicas seen", || {
        a.replicas() == 2 && b.replicas() == 2
    })
    .await;
    let tenant = "org-00000008";
    let warm = Req::new("key-warm", tenant, Some(rate(10, 60)), 3);
    assert!(a.check(&warm.ask()).await.is_ok());
    assert!(a.redis_up());
    redis.kill();
    let req = Req::new("key-down", tenant, Some(rate(10, 60)), 3);
    // The first request meets the failure and falls back; later ones fall
    // back at once, without waiting for the timeout.
    let first = a.check(&req.ask()).await;
    assert!(!a.redis_up());
    let start = Instant::now();
    let mut results = vec![first];
    for _ in 0..11 {
        results.push(a.check(&req.ask()).await);
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let mut fallbacks = 0;
    for mode in ["refuse", "local", "allow"] {
        fallbacks += metric(
            &a,
            &format!("costguard_rate_limit_fallback_total{{mode=\"{mode}\"}}"),
        );
    }
    assert_eq!(fallbacks, 12);
    assert_eq!(metric(&a, "costguard_rate_limit_redis_up"), 0);
    assert!(metric(&a, "costguard_rate_limit_redis_errors_total") >= 1);
    match down {
        RedisDown::Refuse => assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(Refused::Unavailable(_))))
        ),
        // The quota of 3 is counted locally, and it knows the request
        // Redis admitted before the outage.
        RedisDown::Local | RedisDown::Allow => {
            assert_eq!(ok, 2, "{results:?}");
            assert!(matches!(results[2], Err(Refused::Quota(_))));
        }
    }
    let rated = Req::new("key-rated", "org-00000009", Some(rate(10, 60)), -1);
    let local_ok = (0..10)
        .filter(|_| futures_ready(a.check(&rated.ask())))
        .count();
    // Back up on the same port: no new limiter, no restart.
    redis.restart();
    until("Redis seen up again", || a.redis_up()).await;
    let trips = metric(&a, "costguard_rate_limit_redis_round_trips_total");
    let again = Req::new("key-again", tenant, Some(rate(2, 60)), -1);
    assert!(a.check(&again.ask()).await.is_ok());
    assert!(a.check(&again.ask()).await.is_ok());
    assert!(matches!(a.check(&again.ask()).await, Err(Refused::Rate(_))));
    assert_eq!(
        metric(&a, "costguard_rate_limit_redis_round_trips_total"),
        trips + 3,
        "decided in Redis again"
    );
    w.clean().await;
    (ok, local_ok)
}

/// Polls a future that never waits (the fallback path does no I/O for
/// keys it has loaded): true if it completed with a pass.
fn futures_ready<
    F: std::future::Future<Output = Result<Option<costguard::rate_limit::RateStatus>, Refused>>,
>(
    f: F,
) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.is_ok(),
        std::task::Poll::Pending => panic!("the fallback waited"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuse_then_recovers() {
    let (ok, local) = outage(RedisDown::Refuse).await;
    assert_eq!((ok, local), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_local_splits_the_rate_then_recovers() {
    let (_, local) = outage(RedisDown::Local).await;
    assert_eq!(local, 5, "10/min over two live replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allow_has_no_rate_then_recovers() {
    let (_, local) = outage(RedisDown::Allow).await;
    assert_eq!(local, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_lost_with_redis_is_reseeded_from_the_store() {
    let mut redis = OwnRedis::start();
    let w = World::new(&redis.url()).await;
    let (a, ua) = w.replica(RedisMode::Exact, RedisDown::Refuse);
    let tenant = "org-0000000a";
    let req = Req::new("k", tenant, None, 10);
    for _ in 0..6 {
        assert!(a.check(&req.ask()).await.is_ok());
    }
    ua.flush().await;
    redis.restart();
    until("Redis seen up again", || {
        // A request finds it down, the probe finds it up again.
        a.redis_up()
    })
    .await;
    let quota_key = format!("{}:{{{tenant}}}:quota:{}", w.prefix, usage::today());
    let mut passed = 0;
    for _ in 0..10 {
        match a.check(&req.ask()).await {
            Ok(_) => passed += 1,
            Err(Refused::Quota(_)) => {}
            Err(Refused::Unavailable(_)) => {
                // The request that met the dead connection; wait for the probe.
                until("Redis up", || a.redis_up()).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(passed, 4, "6 of 10 were counted before Redis lost them");
    assert_eq!(w.get(&quota_key).await, Some(10));
    w.clean().await;
}
