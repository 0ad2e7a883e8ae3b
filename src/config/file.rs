//! The configuration file as operators write it: serde structs whose doc
//! comments are the operator documentation. Nothing here is validated beyond
//! its type; `config::validate` turns a [`FileConfig`] into a [`Config`].
//!
//! [`Config`]: super::Config

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::{AttributeNames, ClaimNames, IdentityMapping};

/// The whole file. Every section and key is optional and has a default, so an
/// empty file is a valid configuration (proxy on :8080 to 127.0.0.1:9000).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    /// The proxy listener and the upstream it forwards to.
    pub proxy: ProxySection,
    /// Bounds on what a client may send and how long it may take.
    pub limits: LimitsSection,
    /// The admin listener.
    pub admin: AdminSection,
    /// API key authentication.
    pub auth: AuthSection,
    /// Per-key request rates and failed-authentication limits.
    pub rate_limit: RateLimitSection,
    /// Spend reported by the upstream (budgets).
    pub budget: BudgetSection,
    /// Where tenants, keys, users and sessions are kept: the embedded store
    /// (one pod) or PostgreSQL (many replicas).
    pub store: StoreSection,
    /// Route and role policy.
    pub policy: PolicySection,
    /// Logging.
    pub log: LogSection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
    /// Trace export over OTLP.
    pub tracing: TracingSection,
    /// The audit log.
    pub audit: AuditSection,
    /// Single sign-on: sessions and `[[sso.oidc]]` providers.
    pub sso: SsoSection,
}

/// `[proxy]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxySection {
    /// Address the proxy listens on (`COSTGUARD_PROXY_LISTEN`).
    pub listen: String,
    /// Base URL of the upstream service, `http://host:port` (`COSTGUARD_PROXY_UPSTREAM`).
    pub upstream: String,
    /// Data residency: region name → that region's upstream
    /// (`[proxy.region_upstreams]`, `"eu-west-1" = "http://10.0.0.5:9000"`;
    /// `COSTGUARD_PROXY_REGION_UPSTREAMS="eu-west-1=http://…,us-east-1=http://…"`).
    /// When set, a tenant's requests go only to the upstream of its
    /// `settings.data_region`, and a tenant whose region has none here is
    /// refused (403 `residency_violation`), so one costguard can front
    /// several regions or, with one entry, serve one region and refuse the
    /// rest. Requests that concern no tenant (public routes) go to
    /// `upstream`. Empty (the default): every request goes to `upstream`.
    pub region_upstreams: BTreeMap<String, String>,
    /// PEM certificate chain; with `tls_key_file`, the proxy port speaks TLS
    /// (HTTP/2 by ALPN, HTTP/1.1 otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// CIDRs of proxies whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP`
    /// headers are believed. Default: none, so those headers are replaced.
    pub trusted_proxies: Vec<String>,
    /// Inbound headers removed before forwarding because an upstream might
    /// take them as identity. A trailing `*` matches a prefix. `_` and `.`
    /// match `-`, and case is ignored. `X-CostOps-*` is always removed.
    pub strip_headers: Vec<String>,
    /// Time allowed to open a TCP connection to the upstream (then 502).
    #[serde(with = "duration")]
    pub upstream_connect_timeout: Duration,
    /// Time allowed from sending a request (including its body) until the
    /// upstream's response headers arrive (then 504).
    #[serde(with = "duration")]
    pub upstream_response_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    #[serde(with = "duration")]
    pub upstream_pool_idle_timeout: Duration,
    /// Most idle pooled connections kept to the upstream.
    pub upstream_pool_max_idle: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before the process exits anyway. Keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads serving the proxy port, each with its own single-threaded
    /// runtime, listening socket (`SO_REUSEPORT`: the kernel spreads new
    /// connections) and upstream connection pool. 0: as many as the CPUs
    /// the process may use (the container's CPU quota, rounded down, at
    /// least 1; `COSTGUARD_PROXY_WORKERS`).
    pub workers: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            upstream: "http://127.0.0.1:9000".into(),
            region_upstreams: BTreeMap::new(),
            tls_cert_file: None,
            tls_key_file: None,
            trusted_proxies: Vec::new(),
            strip_headers: default_strip_headers(),
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_pool_idle_timeout: Duration::from_secs(90),
            upstream_pool_max_idle: 256,
            shutdown_grace: Duration::from_secs(25),
            workers: 0,
        }
    }
}

/// Identity headers other auth proxies set (oauth2-proxy, Pomerium, Apache
/// `REMOTE_USER`, home-grown gateways) that an upstream might believe, and
/// target rewrites some frameworks honour (IIS/Symfony/Laravel
/// `X-Original-URL`, `X-Rewrite-URL`; `X-Original-Method`): the path and
/// method costguard authorized are the ones the upstream must act on.
pub fn default_strip_headers() -> Vec<String> {
    [
        "X-Tenant-Id",
        "X-User-Id",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Auth-Request-*",
        "Remote-User",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Original-Method",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsSection {
    /// Time a client has to send a complete request head, and to finish the
    /// TLS handshake (slowloris defence). Then the connection is closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection is closed (HTTP/2 gets a GOAWAY) when for this long
    /// either no request was open or started (whatever bytes moved: HTTP/2
    /// PINGs and SETTINGS do not keep it open), or no bytes moved while no
    /// request waited for its response.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A connection older than this is asked to close gracefully (HTTP/1.1:
    /// `Connection: close` on the next response; HTTP/2: GOAWAY, open
    /// streams finish), so no client holds a connection slot for ever.
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// Most simultaneous connections from one client address (IPv6: per
    /// /64) per listener; a connection over it is closed at once. Peers in
    /// `proxy.trusted_proxies` (an ingress carrying many clients) are exempt.
    pub max_connections_per_source: u64,
    /// Most bytes of request header names and values (then 431).
    pub max_header_bytes: u64,
    /// Most request header fields (then 431).
    pub max_header_count: u64,
    /// Most request body bytes, counted while streaming (then 413).
    pub max_body_bytes: u64,
    /// Most simultaneous client connections per listener; further clients
    /// wait in the kernel's accept queue.
    pub max_connections: u64,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(3600),
            max_connections_per_source: 256,
            max_header_bytes: 32 * 1024,
            max_header_count: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 128,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminSection {
    /// Address of the admin listener; loopback unless you mean otherwise.
    pub listen: String,
    /// File holding the bootstrap admin token (acts as system_admin). The
    /// usual way: a Kubernetes secret mounted as a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The bootstrap admin token itself (prefer `token_file`; the
    /// environment variable `COSTGUARD_ADMIN_TOKEN` also works). At least 16
    /// characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Most bytes of an admin request body (then 413).
    pub max_body_bytes: u64,
    /// Most audit reports (`/admin/v1/audit/report`, up to a million index
    /// entries each) computed at once; more get 429 with `Retry-After`.
    pub max_concurrent_reports: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token_file: None,
            token: None,
            max_body_bytes: 64 * 1024,
            max_concurrent_reports: 2,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSection {
    /// Most cached API key lookups (known and unknown keys) and tenants.
    pub key_cache_capacity: u64,
    /// How long a cached lookup is trusted. Revocation and rotation on this
    /// instance take effect at once regardless; this bounds how long another
    /// instance sharing the store may lag.
    #[serde(with = "duration")]
    pub key_cache_ttl: Duration,
    /// How long the old secret keeps working after a rotation, unless the
    /// rotate request says otherwise. "0s": it stops at once.
    #[serde(with = "duration")]
    pub rotation_grace: Duration,
    /// Most live (not revoked) API keys a free-tier tenant may hold; -1:
    /// no bound. A system admin can set a tenant's own
    /// (`limits.max_api_keys`).
    pub max_keys_free: i64,
    /// The same for standard-tier tenants.
    pub max_keys_standard: i64,
    /// The same for enterprise-tier tenants.
    pub max_keys_enterprise: i64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            key_cache_capacity: 100_000,
            key_cache_ttl: Duration::from_secs(30),
            rotation_grace: Duration::ZERO,
            max_keys_free: 20,
            max_keys_standard: 200,
            max_keys_enterprise: 2_000,
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitSection {
    /// Per-key rate limits (GCRA) and the failed-authentication limit. The
    /// daily request quota of a tenant's tier applies regardless.
    pub enabled: bool,
    /// Default rate of a key without its own `rate_limit_per_minute`, by
    /// the key's tenant tier: "N/second", "N/minute", "N/hour", "N/day" or
    /// "unlimited". The seed's default is 1000 per hour.
    pub free: String,
    /// As `free`, for standard tenants.
    pub standard: String,
    /// As `free`, for enterprise tenants.
    pub enterprise: String,
    /// How much of a key's rate may be used back to back, in percent of it
    /// (100: a key may spend a whole period's requests at once; 10: a tenth
    /// at once, the rest paced evenly).
    pub burst_percent: u64,
    /// Failed authentications (bad keys or tokens) one client address may
    /// make per minute; further attempts get 429 without a key lookup until
    /// one is allowed again, except with a credential the caches already
    /// hold as valid. IPv6 addresses count per /64. The admin port keeps
    /// its own count, checked before the admin token.
    pub failed_auth_per_minute: u64,
    /// Client addresses tracked for failed authentications; beyond it, new
    /// addresses share one counter.
    pub failed_auth_max_sources: u64,
    /// Where per-key rates and daily quotas are counted
    /// (`COSTGUARD_RATE_LIMIT_BACKEND`): `local` (in this process: exact for
    /// one pod) or `redis` (shared by every replica: exact across them).
    pub backend: String,
    /// Redis URL (`COSTGUARD_RATE_LIMIT_REDIS_URL`), `redis://host:6379/0`
    /// or `rediss://` for TLS. A URL with a password belongs in
    /// `redis_url_file`. Never logged.
    pub redis_url: String,
    /// File holding the Redis URL (a mounted Secret).
    pub redis_url_file: PathBuf,
    /// Prefix of every Redis key and channel costguard uses, so several
    /// deployments can share one Redis.
    pub redis_prefix: String,
    /// `exact`: one Redis round trip per request, exact across replicas.
    /// `leased`: each replica takes up to `lease_size` requests of a key's
    /// rate ahead and spends them locally; fewer round trips, and a key may
    /// get up to `replicas × lease_size` more than its rate in one period.
    pub redis_mode: String,
    /// Requests a replica takes ahead per key in `leased` mode.
    pub lease_size: u64,
    /// How long a lease may be spent before its rest is dropped.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// Longest wait for Redis before a request is handled as `redis_down` says.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// When Redis does not answer: `refuse` (503), `local` (each replica
    /// limits on its own, to the rate divided by the replicas last seen
    /// alive), or `allow` (no rate limit, quota counted locally).
    pub redis_down: String,
    /// Carry cache invalidations over Redis pub/sub (milliseconds), beside
    /// the PostgreSQL outbox every replica also polls. Off: outbox only.
    pub redis_pubsub: bool,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            enabled: true,
            free: "1000/hour".into(),
            standard: "1000/hour".into(),
            enterprise: "1000/hour".into(),
            burst_percent: 100,
            failed_auth_per_minute: 20,
            failed_auth_max_sources: 100_000,
            backend: "local".into(),
            redis_url: String::new(),
            redis_url_file: PathBuf::new(),
            redis_prefix: "costguard".into(),
            redis_mode: "exact".into(),
            lease_size: 5,
            lease_ttl: Duration::from_secs(1),
            redis_timeout: Duration::from_millis(250),
            redis_down: "local".into(),
            redis_pubsub: true,
        }
    }
}

/// `[budget]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetSection {
    /// The upstream response header that carries a request's cost in USD
    /// (for example "X-CostOps-Cost-USD", or LiteLLM's
    /// "x-litellm-response-cost"). Empty: spend is not counted.
    pub cost_header: String,
}

impl Default for BudgetSection {
    fn default() -> Self {
        Self {
            cost_header: "X-CostOps-Cost-USD".into(),
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditSection {
    /// Write the audit log. Off: no record is written (and none is asked for).
    pub enabled: bool,
    /// Directory of the JSON-lines files. Empty: `audit` under `store.path`.
    pub dir: PathBuf,
    /// The HMAC key that signs the log's head (a Kubernetes secret in
    /// production; at least 16 characters). Empty: `audit-hmac.key` under
    /// `store.path`, created on first start.
    pub hmac_key_file: PathBuf,
    /// A new file starts before one would pass this size, in bytes.
    pub max_file_bytes: u64,
    /// A new file starts after this long.
    #[serde(with = "duration")]
    pub rotate_interval: Duration,
    /// Records queued for the writer before requests wait for it.
    pub channel_capacity: u64,
    /// Under load (more than one record waiting when the writer wakes),
    /// how long it lets the batch grow before one write: fewer, larger
    /// writes and far fewer thread switches. A lone record is written at
    /// once, so a quiet proxy adds no latency; 0: never wait.
    #[serde(with = "duration")]
    pub batch_interval: Duration,
    /// When the log cannot be written: false (default) refuses proxied
    /// requests with 503; true lets them through unrecorded and counts them.
    pub fail_open: bool,
    /// Also print every record on stdout, for the cluster's log collector.
    pub stdout: bool,
    /// How often records past their tenant's `retention_days` are purged
    /// (from the index; files once every tenant's retention has passed).
    #[serde(with = "duration")]
    pub retention_interval: Duration,
    /// Longest string a record stores (user agent, path, ids, reason,
    /// every string in `details`), in bytes; longer ones are cut on a
    /// UTF-8 boundary and end with `…[+N bytes]`.
    pub max_field_bytes: u64,
    /// Denials of callers nobody authenticated (missing or bad credential,
    /// the failed-authentication block, malformed requests) are recorded
    /// once per source address and reason per window; the rest are counted
    /// into one record (`details.count`) when the window closes.
    #[serde(with = "duration")]
    pub anonymous_window: Duration,
    /// Source addresses tracked per window; beyond, they share one entry.
    pub anonymous_max_sources: u64,
    /// Below this much free space in the audit directory, `/metrics` shows
    /// `costguard_audit_disk_low 1` and the log warns. 0: never.
    pub min_free_bytes: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::new(),
            hmac_key_file: PathBuf::new(),
            max_file_bytes: 64 << 20,
            rotate_interval: Duration::from_secs(24 * 3600),
            channel_capacity: 65_536,
            batch_interval: Duration::from_micros(500),
            fail_open: false,
            stdout: false,
            retention_interval: Duration::from_secs(3600),
            max_field_bytes: 512,
            anonymous_window: Duration::from_secs(10),
            anonymous_max_sources: 10_000,
            min_free_bytes: 1 << 30,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreSection {
    /// Storage backend (`COSTGUARD_STORE_BACKEND`): `sled` (embedded, the
    /// default: one pod, no database) or `postgres` (shared by every
    /// replica; needs `url`).
    pub backend: String,
    /// Directory of the embedded store (sled). With `postgres` it still
    /// holds the default audit directory and keys.
    pub path: PathBuf,
    /// Bytes of the embedded store's page cache (memory it may keep).
    pub cache_bytes: u64,
    /// PostgreSQL connection URL (`COSTGUARD_STORE_URL`), e.g.
    /// `postgres://costguard@db:5432/costguard?sslmode=require`. A URL with
    /// a password belongs in `url_file`. Never logged.
    pub url: String,
    /// File holding the URL (a mounted Secret); wins over nothing: set one
    /// of `url` and `url_file`.
    pub url_file: PathBuf,
    /// Schema costguard's tables live in (created by the migrations).
    pub schema: String,
    /// Connections per replica.
    pub pool_size: u64,
    /// How long a request waits for a connection or a connection attempt.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest a statement may run (`statement_timeout`); a slower one fails
    /// and the request gets 503.
    #[serde(with = "duration")]
    pub statement_timeout: Duration,
    /// PEM CA bundle to verify the server with when the URL asks for TLS
    /// (`sslmode=require`); empty: the system's roots. TLS is rustls, and
    /// always checks the certificate and host name.
    pub tls_ca_file: PathBuf,
    /// How often each replica reads the invalidation outbox (cache
    /// evictions other replicas published): the bound on how stale a
    /// revoked key can be when Redis pub/sub loses a message.
    #[serde(with = "duration")]
    pub invalidation_poll: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: "sled".into(),
            path: PathBuf::from("./costguard-data"),
            cache_bytes: 64 << 20,
            url: String::new(),
            url_file: PathBuf::new(),
            schema: "public".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            tls_ca_file: PathBuf::new(),
            invalidation_poll: Duration::from_millis(250),
        }
    }
}

/// `[policy]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicySection {
    /// Directory of `*.toml` policy files (roles, routes, public routes).
    /// Reloaded live; an invalid change keeps the previous policy.
    pub dir: PathBuf,
    /// How often the files are checked for changes (SIGHUP forces a check).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSection {
    /// `human` or `json` (one JSON object per line).
    pub format: String,
    /// A tracing filter: `info`, `debug`, `costguard=debug,hyper=info`, …
    pub level: String,
    /// One line per request: request id, method, path (never the query),
    /// status, latency and bytes.
    pub access_log: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
            access_log: true,
        }
    }
}

/// `[tracing]`: W3C `traceparent` is always propagated; spans are exported
/// only when `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TracingSection {
    /// OTLP/HTTP traces endpoint, e.g.
    /// `http://otel-collector.observability:4318/v1/traces` (protobuf).
    /// Unset: no spans are recorded or exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (no sampled `traceparent` from the caller) that
    /// are sampled and exported, 0 to 1. A caller's sampling decision is
    /// kept.
    pub sample_ratio: f64,
    /// Requests whose spans may wait for export; beyond, they are dropped
    /// (counted in `costguard_trace_requests_dropped_total`).
    pub max_queue: u64,
    /// Longest one export call may take.
    #[serde(with = "duration")]
    pub export_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for an `https` endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "costguard".into(),
            sample_ratio: 1.0,
            max_queue: 4096,
            export_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSection {
    /// Count every proxied request (`costguard_requests_total`, the latency
    /// histograms) and serve `/metrics` on the admin port. `false` turns the
    /// per-request counting off (a few hundred nanoseconds a request); the
    /// stages' own counters stay on `/metrics`.
    pub enabled: bool,
    /// Optional address of a read-only listener that serves only `GET
    /// /metrics`, for a Prometheus outside the pod while the admin port
    /// stays on loopback (oauth2-proxy's `--metrics-address`). Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

/// Durations are written as `"250ms"`, `"10s"`, `"5m"`, `"1h 30m"`.
/// `[sso]`: browser sessions and the identity providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SsoSection {
    /// Name of the session cookie (`Secure`, `HttpOnly`, `SameSite=Lax`,
    /// host-only).
    pub session_cookie: String,
    /// A session ends this long after login, whatever happens (the seed's 8 hours).
    #[serde(with = "duration")]
    pub session_lifetime: Duration,
    /// A session unused for this long ends.
    #[serde(with = "duration")]
    pub session_idle_timeout: Duration,
    /// Time from `/auth/login` to `/auth/callback` (the login cookie's life).
    #[serde(with = "duration")]
    pub login_timeout: Duration,
    /// Key that signs the short-lived login cookie (state, nonce, PKCE
    /// verifier). Every replica must share it. Empty: `sso-cookie.key`
    /// under `store.path`, created on first start.
    pub cookie_key_file: PathBuf,
    /// Time allowed for one call to an identity provider (discovery, JWKS, token).
    #[serde(with = "duration")]
    pub http_timeout: Duration,
    /// Largest response accepted from an identity provider, in bytes.
    pub max_response_bytes: u64,
    /// PEM CA certificates trusted for `https` identity providers besides
    /// the system's roots. Empty: the system's roots only.
    pub ca_file: PathBuf,
    /// Signing keys are refetched this long after the last fetch.
    #[serde(with = "duration")]
    pub jwks_ttl: Duration,
    /// A token signed with an unknown key id triggers one refetch of the
    /// provider's keys, at most once per this interval (an unknown-kid flood
    /// cannot hammer the provider).
    #[serde(with = "duration")]
    pub jwks_refetch_cooldown: Duration,
    /// Leeway on `exp`, `nbf` and `iat`.
    #[serde(with = "duration")]
    pub clock_skew: Duration,
    /// Sessions kept in memory (the store holds them all).
    pub session_cache_capacity: u64,
    /// Verified bearer JWTs remembered until they expire (at most 5 minutes),
    /// so a token is checked once, not per request. 0: verify every time.
    pub token_cache_capacity: u64,
    /// One table per OpenID provider.
    pub oidc: Vec<OidcSection>,
    /// Largest SAML response accepted at `/auth/saml/acs` (the XML, after
    /// base64), in bytes.
    pub saml_max_response_bytes: u64,
    /// One table per SAML identity provider.
    pub saml: Vec<SamlSection>,
}

impl Default for SsoSection {
    fn default() -> Self {
        Self {
            session_cookie: "costguard_session".into(),
            session_lifetime: Duration::from_secs(8 * 3600),
            session_idle_timeout: Duration::from_secs(3600),
            login_timeout: Duration::from_secs(600),
            cookie_key_file: PathBuf::new(),
            http_timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            ca_file: PathBuf::new(),
            jwks_ttl: Duration::from_secs(600),
            jwks_refetch_cooldown: Duration::from_secs(30),
            clock_skew: Duration::from_secs(60),
            session_cache_capacity: 100_000,
            token_cache_capacity: 100_000,
            oidc: Vec::new(),
            saml_max_response_bytes: 256 << 10,
            saml: Vec::new(),
        }
    }
}

/// `[[sso.oidc]]`: one OpenID provider, for browser logins and for the
/// JWT access tokens it issues.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
// Unknown keys: refused by the flattened `IdentityMapping` (see there).
#[serde(default)]
pub struct OidcSection {
    /// A short name, unique, shown in audit records and `/auth/login?provider=`.
    pub name: String,
    /// The issuer URL exactly as the provider's tokens carry it in `iss`
    /// (`https`, or `http` on a loopback address only).
    pub issuer: String,
    /// This client's id at the provider (also the expected `aud`).
    pub client_id: String,
    /// File holding the client secret. Empty: a public client (PKCE only).
    pub client_secret_file: PathBuf,
    /// The callback URL registered at the provider; its path must be `/auth/callback`.
    pub redirect_url: String,
    /// Where the provider sends the browser after its logout (RP-initiated
    /// logout). Empty: the provider's default.
    pub post_logout_redirect_url: String,
    /// Scopes asked for; must include `openid`. Add `offline_access` for
    /// refresh tokens.
    pub scopes: Vec<String>,
    /// Tenant, roles and user id: `tenant`, `tenant_claim`, `email_domains`,
    /// `roles_claim`, `groups_claim`, `group_roles`, `default_roles`,
    /// `email_claim`, `user_claim`, `allow_system_admin`, `role_source`.
    #[serde(flatten)]
    pub mapping: IdentityMapping<ClaimNames>,
    /// Audiences accepted on bearer JWTs. Empty: the client id.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (pinned). `HS256` only with `hs256_secret_file`.
    pub algorithms: Vec<String>,
    /// The shared secret for HS256 tokens of this issuer; only when the
    /// provider cannot sign asymmetrically.
    pub hs256_secret_file: PathBuf,
}

/// `[[sso.saml]]`: one SAML 2.0 identity provider (costguard is the
/// service provider; Web Browser SSO profile, HTTP-Redirect out, HTTP-POST back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
// Unknown keys: refused by the flattened `IdentityMapping` (see there).
#[serde(default)]
pub struct SamlSection {
    /// A short name, unique among all providers.
    pub name: String,
    /// The IdP's entity id, exactly as its assertions carry it in `Issuer`.
    pub idp_entity_id: String,
    /// The IdP's single sign-on URL (HTTP-Redirect binding).
    pub idp_sso_url: String,
    /// PEM file with the IdP's signing certificate(s). Only these verify
    /// (a key sent inside a response is never used); put the old and the
    /// new certificate here while the IdP rotates.
    pub idp_cert_file: PathBuf,
    /// More certificate files, also trusted (rotation).
    pub idp_cert_files: Vec<PathBuf>,
    /// costguard's entity id at this IdP (the `Audience` it must name).
    pub sp_entity_id: String,
    /// costguard's assertion consumer URL; its path must be `/auth/saml/acs`.
    pub acs_url: String,
    /// NameID format asked for (and, when the response names one, required).
    pub name_id_format: String,
    /// Tenant, roles and user id: `tenant`, `tenant_attribute`,
    /// `email_domains`, `roles_attribute`, `groups_attribute`,
    /// `group_roles`, `default_roles`, `email_attribute`, `user_attribute`,
    /// `allow_system_admin`, `role_source`.
    #[serde(flatten)]
    pub mapping: IdentityMapping<AttributeNames>,
    /// Accept IdP-initiated logins (no AuthnRequest, no `InResponseTo`).
    /// Off: every response must answer a request this browser started.
    pub allow_unsolicited: bool,
    /// Require the Assertion itself to be signed (default). Off: a signed
    /// Response around an unsigned Assertion is also accepted.
    pub require_signed_assertion: Option<bool>,
    /// Leeway on NotBefore / NotOnOrAfter. Empty: `sso.clock_skew`.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<Duration>,
}

mod opt_duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"30s\", \"2m\""
            ))
        })
    }
}

mod duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"500ms\", \"10s\", \"2m\""
            ))
        })
    }
}
