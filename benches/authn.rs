//! API key authentication cost.
//!
//! - `authn/cached_key`: a known key, cache warm (the steady state).
//! - `authn/uncached_key_1m`: a cache miss (key and tenant read from sled)
//!   with 1,000,000 keys in the store.
//! - then, printed: p50/p99 of 20,000 distinct cache misses, and the store's
//!   size on disk.
//!
//! The 1M-key store is built once under `target/bench-authn-1m-v2` (about a
//! minute) and reused. `cargo bench --bench authn`
#![allow(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use costguard::authn::api_key::{self, ApiKeys};
use costguard::model::Tier;
use costguard::store::Store;
use costguard::store::conformance::{sample_key, sample_tenant};
use costguard::store::sled::SledStore;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const KEYS: u64 = 1_000_000;
const BATCH: u64 = 50_000;

fn secret(i: u64) -> String {
    format!("{}{:032x}", api_key::PREFIX, i)
}

async fn store_with_keys(path: &Path) -> (Arc<SledStore>, String) {
    let marker = path.join("tenant-id");
    if let Ok(tenant) = std::fs::read_to_string(&marker) {
        return (Arc::new(SledStore::open(&path.join("db")).unwrap()), tenant);
    }
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).unwrap();
    let store = SledStore::open(&path.join("db")).unwrap();
    let tenant = sample_tenant(Tier::Enterprise);
    store.insert_tenant(&tenant).await.unwrap();
    let started = Instant::now();
    for start in (0..KEYS).step_by(BATCH as usize) {
        let keys: Vec<_> = (start..start + BATCH)
            .map(|i| sample_key(&tenant.tenant_id, &api_key::hash_hex(&secret(i))))
            .collect();
        store.import_keys(&keys).await.unwrap();
    }
    eprintln!("built {KEYS} keys in {:?}", started.elapsed());
    std::fs::write(&marker, &tenant.tenant_id).unwrap();
    (Arc::new(store), tenant.tenant_id)
}

fn authn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-authn-1m-v2");
    let (store, _tenant) = rt.block_on(store_with_keys(&dir));
    let dyn_store: Arc<dyn Store> = store.clone();

    let mut g = c.benchmark_group("authn");
    let warm = ApiKeys::new(dyn_store.clone(), 100_000, Duration::from_secs(3600));
    let known = secret(42);
    rt.block_on(warm.authenticate(&known)).unwrap();
    g.bench_function("cached_key", |b| {
        b.iter(|| rt.block_on(warm.authenticate(&known)).unwrap())
    });

    let mut i = 0u64;
    g.bench_function("uncached_key_1m", |b| {
        b.to_async(&rt).iter_batched(
            || {
                i = (i + 7919) % KEYS;
                (
                    ApiKeys::new(dyn_store.clone(), 16, Duration::from_secs(60)),
                    secret(i),
                )
            },
            |(keys, s)| async move { keys.authenticate(&s).await.unwrap() },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // p50/p99 of distinct misses through one cold cache.
    let cold = ApiKeys::new(dyn_store.clone(), 100_000, Duration::from_secs(3600));
    let mut samples: Vec<Duration> = (0..20_000u64)
        .map(|n| {
            let s = secret((n * 48_271) % KEYS);
            let t = Instant::now();
            rt.block_on(cold.authenticate(&s)).unwrap();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let pct = |p: usize| samples[samples.len() * p / 100];
    println!(
        "uncached lookups, 1M keys: p50 {:?}  p99 {:?}  max {:?}; store size on disk {:.1} MiB",
        pct(50),
        pct(99),
        samples.last().unwrap(),
        store.size_on_disk().unwrap() as f64 / (1 << 20) as f64
    );
}

criterion_group!(benches, authn);
criterion_main!(benches);
