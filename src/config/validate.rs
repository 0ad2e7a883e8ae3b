//! [`FileConfig`] → [`Config`]: every value parsed, bounded and loaded (TLS
//! certificates included), every problem collected with its key path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

mod shared;
mod sso;

pub use sso::{NAME_ID_EMAIL, OidcProviderConfig, SamlProviderConfig, SsoConfig};

use super::file::FileConfig;
use super::{ConfigError, Problem};
use crate::header_pattern::HeaderPattern;
use crate::model::Tenant;
use crate::rate_limit::Rate;
use crate::rate_limit::redis::RedisConfig;
use crate::store::postgres::PostgresConfig;
use shared::{postgres_config, redis_config};

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener and upstream.
    pub proxy: ProxyConfig,
    /// Request bounds.
    pub limits: Limits,
    /// Admin listener.
    pub admin: AdminConfig,
    /// API key authentication.
    pub auth: AuthConfig,
    /// Per-key rates, failed-authentication limit.
    pub rate_limit: RateLimitConfig,
    /// Spend counting.
    pub budget: BudgetConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Embedded store.
    pub store: StoreConfig,
    /// Policy.
    pub policy: PolicyConfig,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
    /// Single sign-on.
    pub sso: SsoConfig,
    /// Sections accepted but not acted on by this build, to warn about.
    pub warnings: Vec<String>,
}

/// `[proxy]`, validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Proxy listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where requests go.
    pub upstream: UpstreamTarget,
    /// Data residency: each region's upstream; empty: no residency (every
    /// request goes to `upstream`). See `[proxy] region_upstreams`.
    pub region_upstreams: BTreeMap<Arc<str>, UpstreamTarget>,
    /// TLS termination, when a certificate and key are configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Identity headers removed from requests.
    pub strip_headers: Vec<HeaderPattern>,
    /// TCP connect timeout to the upstream.
    pub upstream_connect_timeout: Duration,
    /// Time to the upstream's response head.
    pub upstream_response_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub upstream_pool_idle_timeout: Duration,
    /// Idle pooled connections kept.
    pub upstream_pool_max_idle: usize,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Proxy worker threads (resolved: never 0).
    pub workers: usize,
}

/// The upstream's scheme and authority; the request's own path and query are
/// appended unchanged.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// Always `http` (the upstream is in the same pod).
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
}

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request head and TLS handshake deadline.
    pub header_read_timeout: Duration,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// Connection lifetime, after which it is closed gracefully.
    pub max_connection_age: Duration,
    /// Connections per client address (per listener).
    pub max_connections_per_source: usize,
    /// Bytes of header names and values.
    pub max_header_bytes: usize,
    /// Header fields.
    pub max_header_count: usize,
    /// Request body bytes.
    pub max_body_bytes: u64,
    /// Connections per listener.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address.
    pub listen: SocketAddr,
    /// SHA-256 of the bootstrap admin token; the token itself is not kept.
    pub token_hash: Option<[u8; 32]>,
    /// Admin request body bound.
    pub max_body_bytes: usize,
    /// Audit reports computed at once.
    pub max_concurrent_reports: usize,
}

/// `[auth]`, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Cache entries.
    pub key_cache_capacity: u64,
    /// Cache lifetime.
    pub key_cache_ttl: Duration,
    /// Default rotation grace period.
    pub rotation_grace: Duration,
    /// Live keys per tenant by tier (free, standard, enterprise); -1: no bound.
    pub max_keys: [i64; 3],
}

impl AuthConfig {
    /// How many live keys `tenant` may hold: its own bound, else its tier's.
    pub fn max_keys_of(&self, tenant: &crate::model::Tenant) -> i64 {
        tenant
            .limits
            .max_api_keys
            .unwrap_or(self.max_keys[tenant.tier as usize])
    }
}

/// `[rate_limit]`, validated.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Per-key rates on.
    pub enabled: bool,
    /// Default rates per tier (`None`: unlimited): free, standard, enterprise.
    pub tier_defaults: [Option<Rate>; 3],
    /// Burst, in percent of the rate.
    pub burst_percent: u8,
    /// Failed authentications per client address per minute.
    pub failed_auth_per_minute: NonZeroU32,
    /// Client addresses tracked.
    pub failed_auth_max_sources: usize,
    /// Set with `backend = "redis"`: the limiter shared by every replica.
    pub redis: Option<RedisConfig>,
}

impl RateLimitConfig {
    /// The rate every key of `tenant` is held to: a system admin's
    /// override for the tenant, else its tier's default; `None`: unlimited.
    pub fn tenant_rate(&self, tenant: &Tenant) -> Option<Rate> {
        match tenant
            .limits
            .rate_limit_per_minute
            .and_then(NonZeroU32::new)
        {
            Some(n) => Some(Rate::per_minute(n)),
            None => self.tier_defaults[tenant.tier as usize],
        }
    }

    /// The rate of a key of `tenant`: its own per-minute rate, else the
    /// tenant's; `None`: not limited. (Only a system admin can give a key
    /// a rate above its tenant's: the admin API checks it when the key is
    /// made.)
    pub fn rate_for(&self, own_per_minute: Option<u32>, tenant: &Tenant) -> Option<Rate> {
        if !self.enabled {
            return None;
        }
        let rate = match own_per_minute.and_then(NonZeroU32::new) {
            Some(n) => Rate::per_minute(n),
            None => self.tenant_rate(tenant)?,
        };
        Some(rate.with_burst_percent(self.burst_percent))
    }
}

/// `[budget]`, validated.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// The upstream's cost header; `None`: spend is not counted.
    pub cost_header: Option<http::HeaderName>,
}

/// `[audit]`, validated.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Write it.
    pub enabled: bool,
    /// Files.
    pub dir: PathBuf,
    /// The head's HMAC key (created if missing).
    pub hmac_key_file: PathBuf,
    /// Rotation size.
    pub max_file_bytes: u64,
    /// Rotation age.
    pub rotate_interval: Duration,
    /// Queue before backpressure.
    pub channel_capacity: usize,
    /// Batch gathering time.
    pub batch_interval: Duration,
    /// Let requests through when unwritable.
    pub fail_open: bool,
    /// Also to stdout.
    pub stdout: bool,
    /// Retention pass period.
    pub retention_interval: Duration,
    /// Longest stored string.
    pub max_field_bytes: usize,
    /// Anonymous denials' aggregation window.
    pub anonymous_window: Duration,
    /// Sources tracked per window.
    pub anonymous_max_sources: usize,
    /// Free-space warning threshold (0: none).
    pub min_free_bytes: u64,
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the sled database (and the default home of the audit
    /// files and keys with either backend).
    pub path: PathBuf,
    /// Page cache bound.
    pub cache_bytes: u64,
    /// Set with `backend = "postgres"`: the shared store.
    pub postgres: Option<PostgresConfig>,
}

/// `[policy]`, validated.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Directory of policy files.
    pub dir: PathBuf,
    /// Check interval.
    pub reload_interval: Duration,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// Where spans are sent (`http(s)://host:port/v1/traces`); `None`: off.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of new traces sampled (and exported), 0 to 1.
    pub sample_ratio: f64,
    /// Requests whose spans may wait for export; more are dropped.
    pub max_queue: usize,
    /// Longest an export call may take.
    pub export_timeout: Duration,
    /// Extra CA certificates (PEM) for an `https` endpoint.
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[metrics]`, validated.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Whether every proxied request is counted.
    pub enabled: bool,
    /// The read-only metrics listener, if any.
    pub listen: Option<SocketAddr>,
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
    /// Whether to write one access-log line per request.
    pub access_log: bool,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for collectors.
    Json,
}

impl LogFormat {
    /// Parses `human` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "human" => Some(Self::Human),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Collects problems while building values; a failed value becomes a
/// placeholder that is never used because `finish` returns the problems.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.fail(
                key,
                format!("expected host:port with an IP address, got {value:?}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, key: &str, d: Duration) -> Duration {
        if d.is_zero() || d > Duration::from_secs(24 * 3600) {
            self.fail(key, "must be more than 0 and at most 24h");
        }
        d
    }

    fn batch_interval(&mut self, d: Duration) -> Duration {
        if d > Duration::from_secs(1) {
            self.fail("audit.batch_interval", "must be between 0 and 1s");
        }
        d
    }

    fn bounded(&mut self, key: &str, value: u64, min: u64, max: u64) -> u64 {
        if value < min || value > max {
            self.fail(key, format!("must be between {min} and {max}, got {value}"));
        }
        value.clamp(min, max)
    }
}

/// Validates a parsed file, reporting every problem at once.
pub(crate) fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let p = &file.proxy;
    let listen = c.socket_addr("proxy.listen", &p.listen);
    let upstream = upstream_target(&mut c, "proxy.upstream", &p.upstream);
    let region_upstreams = p
        .region_upstreams
        .iter()
        .filter_map(|(region, url)| {
            let key = format!("proxy.region_upstreams.{region}");
            if !crate::model::is_region(region) {
                c.fail(
                    key,
                    "a region name is 1 to 128 of A-Z a-z 0-9 . _ - (as in `us-east-1`)",
                );
                return None;
            }
            Some((
                Arc::from(region.as_str()),
                upstream_target(&mut c, &key, url),
            ))
        })
        .collect();
    let tls = tls(
        &mut c,
        p.tls_cert_file.as_deref(),
        p.tls_key_file.as_deref(),
    );
    let trusted_proxies = p
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
            parsed
                .map_err(|_| {
                    c.fail(
                        format!("proxy.trusted_proxies[{i}]"),
                        format!("not a CIDR or IP address: {s:?}"),
                    )
                })
                .ok()
        })
        .collect();
    let strip_headers = p
        .strip_headers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            HeaderPattern::parse(s)
                .map_err(|e| c.fail(format!("proxy.strip_headers[{i}]"), e))
                .ok()
        })
        .collect();
    let proxy = ProxyConfig {
        listen,
        upstream,
        region_upstreams,
        tls,
        trusted_proxies,
        strip_headers,
        upstream_connect_timeout: c
            .duration("proxy.upstream_connect_timeout", p.upstream_connect_timeout),
        upstream_response_timeout: c.duration(
            "proxy.upstream_response_timeout",
            p.upstream_response_timeout,
        ),
        upstream_pool_idle_timeout: c.duration(
            "proxy.upstream_pool_idle_timeout",
            p.upstream_pool_idle_timeout,
        ),
        upstream_pool_max_idle: c.bounded(
            "proxy.upstream_pool_max_idle",
            p.upstream_pool_max_idle,
            0,
            100_000,
        ) as usize,
        shutdown_grace: c.duration("proxy.shutdown_grace", p.shutdown_grace),
        workers: match c.bounded("proxy.workers", p.workers, 0, 1024) {
            0 => crate::worker::available_cpus(),
            n => n as usize,
        },
    };

    let l = &file.limits;
    let limits = Limits {
        header_read_timeout: c.duration("limits.header_read_timeout", l.header_read_timeout),
        idle_timeout: c.duration("limits.idle_timeout", l.idle_timeout),
        max_connection_age: c.duration("limits.max_connection_age", l.max_connection_age),
        max_connections_per_source: c.bounded(
            "limits.max_connections_per_source",
            l.max_connections_per_source,
            1,
            1_000_000,
        ) as usize,
        max_header_bytes: c.bounded("limits.max_header_bytes", l.max_header_bytes, 1024, 1 << 20)
            as usize,
        max_header_count: c.bounded("limits.max_header_count", l.max_header_count, 8, 1000)
            as usize,
        max_body_bytes: c.bounded("limits.max_body_bytes", l.max_body_bytes, 0, u64::MAX),
        max_connections: c.bounded("limits.max_connections", l.max_connections, 1, 1_000_000)
            as usize,
        max_concurrent_streams: c.bounded(
            "limits.max_concurrent_streams",
            l.max_concurrent_streams,
            1,
            10_000,
        ) as u32,
    };

    let admin = AdminConfig {
        listen: c.socket_addr("admin.listen", &file.admin.listen),
        token_hash: admin_token(&mut c, &file.admin),
        max_body_bytes: c.bounded(
            "admin.max_body_bytes",
            file.admin.max_body_bytes,
            1024,
            16 << 20,
        ) as usize,
        max_concurrent_reports: c.bounded(
            "admin.max_concurrent_reports",
            file.admin.max_concurrent_reports,
            1,
            64,
        ) as usize,
    };
    let auth = AuthConfig {
        key_cache_capacity: c.bounded(
            "auth.key_cache_capacity",
            file.auth.key_cache_capacity,
            1,
            100_000_000,
        ),
        key_cache_ttl: c.duration("auth.key_cache_ttl", file.auth.key_cache_ttl),
        rotation_grace: file.auth.rotation_grace,
        max_keys: [
            ("auth.max_keys_free", file.auth.max_keys_free),
            ("auth.max_keys_standard", file.auth.max_keys_standard),
            ("auth.max_keys_enterprise", file.auth.max_keys_enterprise),
        ]
        .map(|(key, n)| {
            if !(-1..=1_000_000).contains(&n) {
                c.fail(key, "must be -1 (no bound) or 0 to 1000000");
            }
            n
        }),
    };
    if file.auth.rotation_grace > Duration::from_secs(7 * 24 * 3600) {
        c.fail("auth.rotation_grace", "must be at most 7 days");
    }
    let r = &file.rate_limit;
    let mut tier_rate = |key: &str, value: &str| {
        Rate::parse(value)
            .map_err(|e| c.fail(format!("rate_limit.{key}"), e))
            .ok()
            .flatten()
    };
    let tier_defaults = [
        tier_rate("free", &r.free),
        tier_rate("standard", &r.standard),
        tier_rate("enterprise", &r.enterprise),
    ];
    let rate_limit = RateLimitConfig {
        enabled: r.enabled,
        tier_defaults,
        burst_percent: c.bounded("rate_limit.burst_percent", r.burst_percent, 1, 100) as u8,
        failed_auth_per_minute: NonZeroU32::new(c.bounded(
            "rate_limit.failed_auth_per_minute",
            r.failed_auth_per_minute,
            1,
            1_000_000,
        ) as u32)
        .unwrap_or(NonZeroU32::MIN),
        failed_auth_max_sources: c.bounded(
            "rate_limit.failed_auth_max_sources",
            r.failed_auth_max_sources,
            1,
            100_000_000,
        ) as usize,
        redis: redis_config(&mut c, r),
    };
    let cost_header = file.budget.cost_header.trim();
    let budget = BudgetConfig {
        cost_header: if cost_header.is_empty() {
            None
        } else {
            http::HeaderName::try_from(cost_header)
                .map_err(|_| {
                    c.fail(
                        "budget.cost_header",
                        format!("not a header name: {cost_header:?}"),
                    )
                })
                .ok()
        },
    };
    let postgres = match file.store.backend.as_str() {
        "sled" => None,
        "postgres" => postgres_config(&mut c, &file.store),
        other => {
            c.fail(
                "store.backend",
                format!("unknown backend {other:?}; supported: \"sled\", \"postgres\""),
            );
            None
        }
    };
    if file.store.path.as_os_str().is_empty() {
        c.fail("store.path", "must not be empty");
    }
    let store = StoreConfig {
        path: file.store.path.clone(),
        cache_bytes: c.bounded(
            "store.cache_bytes",
            file.store.cache_bytes,
            1 << 20,
            1 << 40,
        ),
        postgres,
    };
    if !file.policy.dir.is_dir() {
        c.fail(
            "policy.dir",
            format!("{}: not a directory", file.policy.dir.display()),
        );
    }
    let policy = PolicyConfig {
        dir: file.policy.dir.clone(),
        reload_interval: c.duration("policy.reload_interval", file.policy.reload_interval),
    };
    let format = LogFormat::parse(&file.log.format).unwrap_or_else(|| {
        c.fail(
            "log.format",
            format!("expected \"human\" or \"json\", got {:?}", file.log.format),
        );
        LogFormat::Human
    });
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
        c.fail(
            "log.level",
            format!("invalid filter {:?}: {e}", file.log.level),
        );
    }
    let t = &file.tracing;
    if let Some(url) = &t.otlp_endpoint {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => c.fail(
                "tracing.otlp_endpoint",
                format!("expected an http:// or https:// URL, got {url:?}"),
            ),
        }
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        c.fail(
            "tracing.sample_ratio",
            format!("must be between 0 and 1, got {}", t.sample_ratio),
        );
    }
    if t.service_name.is_empty() || t.service_name.len() > 255 {
        c.fail("tracing.service_name", "must be 1 to 255 characters");
    }
    let tracing = TracingConfig {
        otlp_endpoint: t.otlp_endpoint.clone(),
        service_name: t.service_name.clone(),
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
        max_queue: c.bounded("tracing.max_queue", t.max_queue, 1, 1_000_000) as usize,
        export_timeout: c.duration("tracing.export_timeout", t.export_timeout),
        ca_file: t.ca_file.clone(),
    };
    let metrics = MetricsConfig {
        enabled: file.metrics.enabled,
        listen: file
            .metrics
            .listen
            .as_deref()
            .map(|a| c.socket_addr("metrics.listen", a)),
    };
    let log = LogConfig {
        format,
        level: file.log.level.clone(),
        access_log: file.log.access_log,
    };

    let a = &file.audit;
    let under_store = |p: &Path, default: &str| {
        if p.as_os_str().is_empty() {
            file.store.path.join(default)
        } else {
            p.to_path_buf()
        }
    };
    let audit = AuditConfig {
        enabled: a.enabled,
        dir: under_store(&a.dir, "audit"),
        hmac_key_file: under_store(&a.hmac_key_file, "audit-hmac.key"),
        max_file_bytes: c.bounded("audit.max_file_bytes", a.max_file_bytes, 4096, 1 << 40),
        rotate_interval: c.duration("audit.rotate_interval", a.rotate_interval),
        channel_capacity: c.bounded("audit.channel_capacity", a.channel_capacity, 1, 10_000_000)
            as usize,
        batch_interval: c.batch_interval(a.batch_interval),
        fail_open: a.fail_open,
        stdout: a.stdout,
        retention_interval: c.duration("audit.retention_interval", a.retention_interval),
        max_field_bytes: c.bounded("audit.max_field_bytes", a.max_field_bytes, 64, 1 << 20)
            as usize,
        anonymous_window: c.duration("audit.anonymous_window", a.anonymous_window),
        anonymous_max_sources: c.bounded(
            "audit.anonymous_max_sources",
            a.anonymous_max_sources,
            1,
            10_000_000,
        ) as usize,
        min_free_bytes: a.min_free_bytes,
    };
    let sso = sso::validate(&mut c, &file);
    let warnings = sso.warnings.clone();
    if c.problems.is_empty() {
        Ok(Config {
            proxy,
            limits,
            admin,
            auth,
            rate_limit,
            budget,
            audit,
            store,
            policy,
            log,
            metrics,
            tracing,
            sso,
            warnings,
        })
    } else {
        Err(ConfigError {
            problems: c.problems,
        })
    }
}

fn upstream_target(c: &mut Checker, key: &str, value: &str) -> UpstreamTarget {
    let fallback = UpstreamTarget {
        scheme: Scheme::HTTP,
        authority: Authority::from_static("127.0.0.1:9000"),
    };
    let uri: http::Uri = match value.parse() {
        Ok(u) => u,
        Err(e) => {
            c.fail(key, format!("not a URL ({e}): {value:?}"));
            return fallback;
        }
    };
    if uri.scheme() != Some(&Scheme::HTTP) {
        c.fail(
            key,
            format!("must start with http:// (the upstream runs in the same pod), got {value:?}"),
        );
        return fallback;
    }
    let Some(authority) = uri.authority().cloned() else {
        c.fail(key, "has no host");
        return fallback;
    };
    if authority.as_str().contains('@') {
        c.fail(key, "must not contain credentials");
        return fallback;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        c.fail(
            key,
            "must be scheme://host:port only; a path prefix is not supported",
        );
        return fallback;
    }
    UpstreamTarget {
        scheme: Scheme::HTTP,
        authority,
    }
}

fn tls(
    c: &mut Checker,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Option<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = match (cert, key) {
        (None, None) => return None,
        (Some(_), None) => {
            c.fail("proxy.tls_key_file", "required when tls_cert_file is set");
            return None;
        }
        (None, Some(_)) => {
            c.fail("proxy.tls_cert_file", "required when tls_key_file is set");
            return None;
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let certs: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_file_iter(cert_path).and_then(|it| it.collect());
    let certs = match certs {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            c.fail(
                "proxy.tls_cert_file",
                format!("{}: no PEM certificate found", cert_path.display()),
            );
            None
        }
        Err(e) => {
            c.fail(
                "proxy.tls_cert_file",
                format!("{}: {e}", cert_path.display()),
            );
            None
        }
    };
    // The message never includes key material: rustls' errors describe only
    // the file and the parse failure.
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(k) => Some(k),
        Err(e) => {
            c.fail("proxy.tls_key_file", format!("{}: {e}", key_path.display()));
            None
        }
    };
    let (certs, key) = (certs?, key?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let built = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key));
    match built {
        Ok(mut config) => {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(Arc::new(config))
        }
        Err(e) => {
            c.fail(
                "proxy.tls_cert_file",
                format!("certificate and key do not work together: {e}"),
            );
            None
        }
    }
}

/// Reads the bootstrap admin token (file or inline) and keeps its hash.
fn admin_token(c: &mut Checker, admin: &super::file::AdminSection) -> Option<[u8; 32]> {
    let token = match (&admin.token, &admin.token_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            c.fail(
                "admin.token",
                "set admin.token or admin.token_file, not both",
            );
            return None;
        }
        (Some(t), None) => ("admin.token", t.trim().to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => ("admin.token_file", t.trim().to_string()),
            Err(e) => {
                c.fail("admin.token_file", format!("{}: {e}", path.display()));
                return None;
            }
        },
    };
    let (key, token) = token;
    if token.len() < 16
        || token
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        c.fail(
            key,
            "the admin token must be at least 16 characters, without spaces",
        );
        return None;
    }
    if token.starts_with(crate::authn::api_key::PREFIX) {
        c.fail(
            key,
            "the admin token must not look like an API key (costops_…)",
        );
        return None;
    }
    Some(crate::authn::api_key::hash(&token))
}
