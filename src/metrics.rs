//! `/metrics`: what the proxy decided, why, how long it took, and the health
//! of every stage, encoded by the Prometheus project's client library
//! (`prometheus-client`): the Prometheus text format by default, OpenMetrics
//! when the scraper asks for it.
//!
//! Two kinds of numbers:
//! - **Per request** ([`RequestMetrics`]): `costguard_requests_total` by
//!   decision, reason, auth method, method and route template, upstream
//!   status class; the latency histograms of the whole request and of the
//!   decision alone; upstream errors by kind. Each proxy worker thread counts
//!   into its own shard (an uncontended lock, no shared cache line), and a
//!   scrape adds the shards up, the way linkerd and Envoy keep per-thread
//!   stats.
//! - **Per stage** (audit, limits, caches, policy, sign-on, …): each stage
//!   keeps its own atomics and writes them at scrape time through the
//!   helpers here ([`counter`], [`gauge`], …) into the library's encoder.
//!
//! Cardinality is bounded by construction: every label value comes from a
//! fixed set (decisions, the contract's error codes, auth methods, the seven
//! standard methods + `other`, status classes) or from the operator's
//! configuration (route templates of the policy, provider and cache names);
//! nothing a client sends becomes a label value. A shard that still reached
//! [`MAX_SERIES`] series (a policy with thousands of routes, many reloads)
//! counts further new series under `route="overflow"`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Most `costguard_requests_total` series one shard keeps before new ones
/// are counted under `route="overflow"`.
pub const MAX_SERIES: usize = 4096;

/// Upper bounds of the decision-latency buckets, seconds (1 µs to 100 ms:
/// the decision is microseconds unless a store or Redis answers slowly).
const DECISION_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.1,
];

/// Upper bounds of the whole-request buckets, seconds (the upstream's time
/// included, so up to its timeouts).
const REQUEST_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// What became of a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// Authorized (forwarded, or failed after the decision: see `reason`).
    Allowed,
    /// Refused: authentication, authorization, limits, bounds.
    Denied,
    /// No decision could be made (a store or policy error): refused, 503.
    Undecided,
    /// Answered by costguard itself (probes, sign-on endpoints).
    Local,
}

impl Decision {
    const ALL: [Decision; 4] = [
        Decision::Allowed,
        Decision::Denied,
        Decision::Undecided,
        Decision::Local,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Undecided => "undecided",
            Decision::Local => "local",
        }
    }
}

/// The upstream's side of a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamStatus {
    /// Not forwarded.
    None,
    /// Forwarded and answered: the status divided by 100 (1 to 5).
    Class(u8),
    /// Forwarded, no usable answer (see `costguard_upstream_errors_total`).
    Error,
}

impl UpstreamStatus {
    /// The class of an upstream response's status.
    pub fn of(status: http::StatusCode) -> Self {
        UpstreamStatus::Class((status.as_u16() / 100) as u8)
    }

    fn as_str(self) -> &'static str {
        match self {
            UpstreamStatus::None => "none",
            UpstreamStatus::Class(1) => "1xx",
            UpstreamStatus::Class(2) => "2xx",
            UpstreamStatus::Class(3) => "3xx",
            UpstreamStatus::Class(4) => "4xx",
            UpstreamStatus::Class(_) => "5xx",
            UpstreamStatus::Error => "error",
        }
    }
}

/// Why forwarding failed, for `costguard_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection (refused, unreachable, connect timeout).
    Connect,
    /// The upstream did not answer within `proxy.upstream_timeout`.
    Timeout,
    /// The connection failed while sending or receiving.
    Response,
}

impl UpstreamError {
    const ALL: [UpstreamError; 3] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Response,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Response => "response",
        }
    }
}

/// The labels of one `costguard_requests_total` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outcome {
    /// What was decided.
    pub decision: Decision,
    /// The contract's error code of the response costguard made (`none`
    /// when the upstream answered or the request was answered locally).
    pub reason: &'static str,
    /// How the caller authenticated (`none` if not).
    pub auth_method: &'static str,
    /// The request method, one of the standard ones or `other`.
    pub method: &'static str,
    /// The matched route's template (`/v1/tenants/{tenant}/costs`), never
    /// the path itself; `None`: no route matched.
    pub route: Option<Arc<str>>,
    /// The upstream's status class.
    pub upstream: UpstreamStatus,
}

impl Outcome {
    /// Where new series go once a shard holds [`MAX_SERIES`].
    fn overflow(&self) -> Self {
        Self {
            route: Some(Arc::from("overflow")),
            reason: "overflow",
            auth_method: "overflow",
            method: "overflow",
            ..*self
        }
    }
}

/// A method as a label value: the standard ones by name, anything else
/// (an extension method is a client's free text) as `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A histogram's per-bucket counts (the last bucket is `+Inf`) and sum.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        let i = bounds.partition_point(|b| *b < seconds);
        self.counts[i] += 1;
        self.sum += seconds;
    }

    fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    fn encode(
        &self,
        bounds: &[f64],
        enc: &mut prometheus_client::encoding::MetricEncoder<'_>,
    ) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect();
        let count = self.counts.iter().sum();
        enc.encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }
}

/// The series map: keys are label sets costguard builds from fixed values
/// and the policy's routes, never from client input, so the fast hash
/// hashbrown uses by default is safe here (and a third of SipHash's cost).
type Series = HashMap<Outcome, u64, foldhash::fast::RandomState>;

/// One worker's counts.
#[derive(Debug)]
struct Shard {
    requests: Series,
    /// Whole-request latency, by [`Decision`] (index = `Decision as usize`).
    request_seconds: [Histogram; 4],
    decision_seconds: Histogram,
    upstream_errors: [u64; 3],
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            requests: Series::default(),
            request_seconds: std::array::from_fn(|_| Histogram::new(REQUEST_BUCKETS)),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            upstream_errors: [0; 3],
        }
    }
}

/// A shard on its own cache lines, so two workers never write one line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The per-request counts. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct RequestMetrics {
    /// One shard per proxy worker, plus one for every other thread.
    shards: Box<[Padded]>,
}

impl RequestMetrics {
    /// Counts for `workers` proxy worker threads.
    pub fn new(workers: usize) -> Self {
        Self {
            shards: (0..workers.max(1) + 1).map(|_| Padded::default()).collect(),
        }
    }

    fn shard(&self) -> &Mutex<Shard> {
        let last = self.shards.len() - 1;
        let i = crate::worker::index().map_or(last, |i| i.min(last));
        &self.shards[i].0
    }

    /// Counts one finished request: its outcome, its whole latency, the
    /// decision's share of it (when a decision was made), and why
    /// forwarding failed (when it did).
    pub fn record(
        &self,
        outcome: &Outcome,
        total: Duration,
        decision: Option<Duration>,
        upstream_error: Option<UpstreamError>,
    ) {
        let mut shard = self.shard().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = shard.requests.get_mut(outcome) {
            *n += 1;
        } else {
            let key = if shard.requests.len() < MAX_SERIES {
                outcome.clone()
            } else {
                outcome.overflow()
            };
            *shard.requests.entry(key).or_default() += 1;
        }
        shard.request_seconds[outcome.decision as usize]
            .observe(REQUEST_BUCKETS, total.as_secs_f64());
        if let Some(d) = decision {
            shard
                .decision_seconds
                .observe(DECISION_BUCKETS, d.as_secs_f64());
        }
        if let Some(e) = upstream_error {
            shard.upstream_errors[e as usize] += 1;
        }
    }

    /// The shards added up.
    fn total(&self) -> Shard {
        let mut total = Shard::default();
        for shard in &self.shards {
            let shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in &shard.requests {
                *total.requests.entry(k.clone()).or_default() += n;
            }
            for (a, b) in total.request_seconds.iter_mut().zip(&shard.request_seconds) {
                a.add(b);
            }
            total.decision_seconds.add(&shard.decision_seconds);
            for (a, b) in total.upstream_errors.iter_mut().zip(shard.upstream_errors) {
                *a += b;
            }
        }
        total
    }

    /// Writes the per-request metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let total = self.total();
        let mut series: Vec<_> = total.requests.into_iter().collect();
        series.sort_unstable();
        let mut m = enc.encode_descriptor(
            "costguard_requests",
            "Proxied requests by decision, reason (the contract's error code), auth method, method, route template and upstream status class.",
            None,
            MetricType::Counter,
        )?;
        for (o, n) in &series {
            let labels = [
                ("decision", o.decision.as_str()),
                ("reason", o.reason),
                ("auth_method", o.auth_method),
                ("method", o.method),
                ("route", o.route.as_deref().unwrap_or("unmatched")),
                ("upstream_status", o.upstream.as_str()),
            ];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, f64>(n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "costguard_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by decision.",
            None,
            MetricType::Histogram,
        )?;
        for d in Decision::ALL {
            let h = &total.request_seconds[d as usize];
            h.encode(
                REQUEST_BUCKETS,
                &mut m.encode_family(&[("decision", d.as_str())])?,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "costguard_decision_duration_seconds",
            "Time to decide a proxied request: route, authentication, authorization, limits (the upstream's time excluded).",
            None,
            MetricType::Histogram,
        )?;
        total.decision_seconds.encode(DECISION_BUCKETS, &mut m)?;
        counters(
            enc,
            "costguard_upstream_errors",
            "Requests the upstream did not answer, by kind: connect, timeout, response.",
            "kind",
            UpstreamError::ALL.map(|e| (e.as_str(), total.upstream_errors[e as usize])),
        )
    }

    /// How many `costguard_requests_total` series exist now (tests).
    pub fn series(&self) -> usize {
        self.total().requests.len()
    }
}

/// Hits and misses of one cache, counted by its owner.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl CacheStats {
    /// Counts a lookup the cache answered.
    pub fn hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a lookup that went to the store.
    pub fn miss(&self) {
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a hit or a miss.
    pub fn count(&self, hit: bool) {
        if hit { self.hit() } else { self.miss() }
    }

    fn load(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }
}

/// Writes `costguard_cache_requests_total{cache, result}` for `caches`.
pub fn caches(enc: &mut DescriptorEncoder<'_>, caches: &[(&str, &CacheStats)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "costguard_cache_requests",
        "Cache lookups by cache and result (hit: answered from memory; miss: went to the store).",
        None,
        MetricType::Counter,
    )?;
    for (name, stats) in caches {
        let (hits, misses) = stats.load();
        for (result, n) in [("hit", hits), ("miss", misses)] {
            m.encode_family(&[("cache", *name), ("result", result)])?
                .encode_counter::<NoLabelSet, _, f64>(&n, None)?;
        }
    }
    Ok(())
}

/// Writes one unlabelled counter (`name` without `_total`: the encoder
/// adds it).
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, f64>(&value, None)
}

/// Writes one counter family with one label.
pub fn counters<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        m.encode_family(&[(label, value)])?
            .encode_counter::<NoLabelSet, _, f64>(&n, None)?;
    }
    Ok(())
}

/// Writes one unlabelled gauge.
pub fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// Writes an info metric (`name_info{labels} 1`; `name` without `_info`).
pub fn info(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &impl EncodeLabelSet,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Info)?
        .encode_info(labels)
}

/// Something that writes its metrics at scrape time.
pub trait Source: fmt::Debug + Send + Sync + 'static {
    /// Writes the metrics.
    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

/// A closure as a [`Source`]: how the server gathers the stages it wired.
pub struct FnSource<F>(pub F);

impl<F> fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSource")
    }
}

impl<F> Source for FnSource<F>
where
    F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        (self.0)(enc)
    }
}

/// The Prometheus text of what `f` writes (tests of each stage's metrics).
pub fn text_of<F>(f: F) -> String
where
    F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
{
    Exposition::new(FnSource(f)).render(false).0
}

/// Adapts a [`Source`] to the library's collector.
#[derive(Debug)]
struct Collect<S>(S);

impl<S: Source> Collector for Collect<S> {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut enc)
    }
}

/// Everything `/metrics` shows, built once when the admin port starts.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl Exposition {
    /// Exposes `source` (the process's stages) and the build information.
    pub fn new(source: impl Source) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect(source)));
        registry.register_collector(Box::new(Collect(BuildInfo)));
        Self { registry }
    }

    /// The page, in OpenMetrics when `openmetrics`, else the Prometheus
    /// text format; with its content type.
    pub fn render(&self, openmetrics: bool) -> (String, &'static str) {
        let mut text = String::with_capacity(16 * 1024);
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
            (text, OPENMETRICS)
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
            (text, PROMETHEUS_TEXT)
        }
    }
}

/// `costguard_build_info{version, saml}`.
#[derive(Debug)]
struct BuildInfo;

impl Source for BuildInfo {
    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        info(
            enc,
            "costguard_build",
            "The running build: its version and whether SAML is compiled in.",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "saml",
                    if cfg!(feature = "saml") {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(route: &str, decision: Decision) -> Outcome {
        Outcome {
            decision,
            reason: "none",
            auth_method: "api_key",
            method: "GET",
            route: Some(Arc::from(route)),
            upstream: UpstreamStatus::Class(2),
        }
    }

    #[derive(Debug)]
    struct Requests(Arc<RequestMetrics>);

    impl Source for Requests {
        fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
            self.0.encode(enc)
        }
    }

    #[test]
    fn shards_add_up_and_the_page_is_what_prometheus_reads() {
        let m = Arc::new(RequestMetrics::new(2));
        let o = outcome("/v1/tenants/{tenant}/costs", Decision::Allowed);
        m.record(
            &o,
            Duration::from_micros(700),
            Some(Duration::from_micros(3)),
            None,
        );
        m.record(
            &o,
            Duration::from_millis(2),
            Some(Duration::from_micros(30)),
            None,
        );
        let d = Outcome {
            reason: "forbidden",
            upstream: UpstreamStatus::None,
            ..outcome("/v1/tenants/{tenant}/costs", Decision::Denied)
        };
        m.record(
            &d,
            Duration::from_micros(100),
            Some(Duration::from_micros(4)),
            None,
        );
        m.record(
            &o,
            Duration::from_secs(100),
            None,
            Some(UpstreamError::Timeout),
        );
        let page = Exposition::new(Requests(m)).render(false).0;
        assert!(page.contains(
            "costguard_requests_total{decision=\"allowed\",reason=\"none\",auth_method=\"api_key\",method=\"GET\",route=\"/v1/tenants/{tenant}/costs\",upstream_status=\"2xx\"} 3\n"
        ), "{page}");
        assert!(
            page.contains("decision=\"denied\",reason=\"forbidden\""),
            "{page}"
        );
        assert!(
            page.contains("costguard_decision_duration_seconds_count 3\n"),
            "{page}"
        );
        assert!(
            page.contains("costguard_decision_duration_seconds_bucket{le=\"5e-06\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains(
                "costguard_request_duration_seconds_bucket{decision=\"allowed\",le=\"0.001\"} 1\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "costguard_request_duration_seconds_bucket{decision=\"allowed\",le=\"+Inf\"} 3\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("costguard_upstream_errors_total{kind=\"timeout\"} 1\n"),
            "{page}"
        );
        assert!(page.contains("costguard_build_info{version=\""), "{page}");
    }

    #[test]
    fn a_full_shard_counts_new_series_as_overflow() {
        let m = RequestMetrics::new(1);
        for i in 0..MAX_SERIES + 50 {
            m.record(
                &outcome(&format!("/r{i}"), Decision::Allowed),
                Duration::ZERO,
                None,
                None,
            );
        }
        assert_eq!(m.series(), MAX_SERIES + 1);
        let total = m.total();
        let overflow = total
            .requests
            .iter()
            .find(|(k, _)| k.route.as_deref() == Some("overflow"))
            .map(|(_, n)| *n);
        assert_eq!(overflow, Some(50));
    }

    #[test]
    fn only_standard_methods_are_label_values() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"X-ANYTHING").unwrap()),
            "other"
        );
    }
}
