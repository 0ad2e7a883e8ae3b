//! The limits stage's per-request work without I/O: one GCRA check (one
//! key; one of 100,000 keys), the failed-authentication pre-check, the
//! daily-quota check-and-increment, and the trait call the pipeline makes;
//! then the shared limiter's exact-mode check (one script call: GCRA and
//! daily quota, with and without a budget) against the Redis on
//! 127.0.0.1:6379, under a random key prefix deleted at the end.
//!
//! `cargo bench --bench rate_limit`
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use costguard::config::{RedisConfig, RedisDown, RedisMode};
use costguard::rate_limit::failed_auth::FailedAuth;
use costguard::rate_limit::redis::{Ask, BudgetAsk, RedisLimits};
use costguard::rate_limit::{LocalRateLimiter, Rate, RateLimiter};
use costguard::store::Store;
use costguard::store::sled::SledStore;
use costguard::usage::Usage;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A rate no benchmark exhausts: every check is an allowed one, the
    // common case.
    let rate = Rate::new(NonZeroU32::new(u32::MAX).unwrap(), Duration::from_secs(60));
    let limiter = LocalRateLimiter::default();
    let one: Arc<str> = "0195f3a2-7c1e-7d4b-9a1e-5f6a7b8c9d0e".into();
    let many: Vec<Arc<str>> = (0..100_000)
        .map(|i| Arc::from(format!("key-{i:08}")))
        .collect();
    for k in &many {
        limiter.check_now(k, rate);
    }

    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("gcra_one_key", |b| {
        b.iter(|| black_box(limiter.check_now(black_box(&one), rate)))
    });
    let mut i = 0usize;
    g.bench_function("gcra_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % many.len();
            black_box(limiter.check_now(&many[i], rate))
        })
    });
    let dyn_limiter: Arc<dyn RateLimiter> = Arc::new(LocalRateLimiter::default());
    g.bench_function("gcra_via_trait", |b| {
        b.iter(|| {
            rt.block_on(dyn_limiter.check(black_box(&one), rate))
                .unwrap()
        })
    });

    let failed = FailedAuth::new(NonZeroU32::new(20).unwrap(), 100_000);
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    g.bench_function("failed_auth_check_none_blocked", |b| {
        b.iter(|| black_box(failed.check(black_box(client))))
    });
    for n in 0..1000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + n));
        for _ in 0..20 {
            failed.failed(ip);
        }
    }
    g.bench_function("failed_auth_check_1000_blocked", |b| {
        b.iter(|| black_box(failed.check(black_box(client))))
    });

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let usage = Usage::new(store);
    let tenant: Arc<str> = "org-1a2b3c4d".into();
    rt.block_on(usage.admit_request(&tenant, -1)).unwrap();
    g.bench_function("daily_quota_admit", |b| {
        b.iter(|| {
            rt.block_on(usage.admit_request(black_box(&tenant), -1))
                .unwrap()
        })
    });
    g.finish();
}

fn bench_redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let prefix = format!("cgbench-{}", uuid::Uuid::new_v4().simple());
    let config = RedisConfig {
        url: "redis://127.0.0.1:6379".into(),
        prefix: prefix.clone(),
        mode: RedisMode::Exact,
        lease_size: 100,
        lease_ttl: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        down: RedisDown::Refuse,
        pubsub: false,
    };
    let limits = RedisLimits::new(&config, Usage::new(store)).unwrap();
    let rate = Rate::new(NonZeroU32::new(u32::MAX).unwrap(), Duration::from_secs(60));
    let bucket: Arc<str> = "0195f3a2-7c1e-7d4b-9a1e-5f6a7b8c9d0e".into();
    let tenant: Arc<str> = "org-1a2b3c4d".into();
    let project: Arc<str> = "proj-1a2b3c4d".into();
    let ask = Ask {
        bucket: &bucket,
        rate: Some(rate),
        tenant: &tenant,
        max_per_day: i64::MAX,
        budget: None,
    };
    let with_budget = Ask {
        budget: Some(BudgetAsk {
            tenant: &tenant,
            tenant_limit: Some(u64::MAX / 2),
            project: Some((&project, Some(u64::MAX / 2))),
        }),
        ..ask
    };
    // Seeds the counters, and fails the bench if Redis is not there.
    rt.block_on(limits.check(&with_budget))
        .expect("the Redis on 127.0.0.1:6379 must answer");
    let mut g = c.benchmark_group("rate_limit_redis");
    g.bench_function("exact_rate_and_quota", |b| {
        b.iter(|| rt.block_on(limits.check(black_box(&ask))).unwrap())
    });
    g.bench_function("exact_rate_budget_and_quota", |b| {
        b.iter(|| rt.block_on(limits.check(black_box(&with_budget))).unwrap())
    });
    g.finish();
    rt.block_on(async {
        let mut conn = redis::Client::open("redis://127.0.0.1:6379")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
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
    });
}

criterion_group!(benches, bench, bench_redis);
criterion_main!(benches);
