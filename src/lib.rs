//! costguard: an authentication/authorization reverse-proxy sidecar for the
//! LLM Cost Ops service. It takes every request first, decides who is
//! calling and what they may do, and forwards only what is allowed, with
//! identity headers the upstream can trust.
//!
//! # Layout
//! - [`config`]: TOML file + `COSTGUARD_*` environment → validated [`config::Config`].
//! - [`server`]: startup (store, listeners) and graceful shutdown.
//! - [`listener`]: accept loop, connection limit, TLS, HTTP/1.1 + HTTP/2, timeouts.
//! - [`pipeline`]: the one function that orders the proxy's stages.
//! - [`request_id`]: keep or make the request id.
//! - [`limits`]: header and body size bounds.
//! - [`forward`]: header hygiene ([`forward::headers`]) and the pooled upstream client ([`forward::upstream`]).
//! - [`error`]: the one place errors become JSON responses.
//! - [`access_log`]: one line per request, written when its body ends.
//! - [`health`]: `/health` and `/ready`.
//! - [`admin`]: the admin port and API (tenants, keys, projects, users, usage).
//! - [`store`]: the `Store` trait, its sled backend and (for tests, feature `conformance`) conformance suite.
//! - [`model`]: tenants, keys, projects, users; [`roles`]: the seed's RBAC table.
//! - [`authn`]: credentials → `Principal` ([`authn::api_key`]; JWTs and sessions through [`sso`]).
//! - [`sso`]: OpenID Connect logins, sessions, IdP-issued JWTs, the `/auth/*` endpoints.
//! - [`authz`]: path safety, policy (files → compiled snapshot, live reload),
//!   route match, tenant isolation, permissions → `Permit`.
//! - [`throttle`]: the limits stage (key rate, budget, daily quota, failed-auth block).
//! - [`rate_limit`]: GCRA buckets behind the `RateLimiter` trait; failed authentications per source.
//! - [`usage`]: persisted counters: requests per tenant per day, spend per tenant and project per month.
//! - [`echo`]: the demo's echo upstream; [`demo`]: the demo's seed data.
//! - [`telemetry`]: log setup; [`private_files`]: what costguard writes is 0600/0700.
//!
//! # Request flow
//! 1. `listener` accepts under the connection semaphore, finishes TLS, and
//!    hands each request to the pipeline (HTTP/1.1 or HTTP/2).
//! 2. `request_id` keeps a valid `X-Request-Id` or makes a UUIDv7.
//! 3. `/health` and `/ready` are answered locally.
//! 4. `limits` rejects oversized headers (431) or declared bodies (413).
//! 5. `/auth/*` is answered by `sso` (login, callback, logout, userinfo).
//!    `authn` finds exactly one credential (API key, an IdP-issued JWT, or
//!    else a session cookie) and resolves it to a `Principal` through the
//!    key cache, the JWKS cache or the session store (401/400/403 otherwise); a source
//!    with too many bad credentials is refused first (429).
//!    `authz` matches the route and checks tenant, project and permission;
//!    `throttle` applies the key's rate (429), the budget of cost routes
//!    (402) and the tenant's daily quota (429), counting the request.
//! 6. `forward::headers` strips hop-by-hop, `X-CostOps-*` look-alikes,
//!    foreign identity headers and untrusted forwarding headers, then adds
//!    `X-Forwarded-*` and `X-Request-Id`.
//! 7. `forward` removes the credential, adds the `X-CostOps-*` identity
//!    headers, and `forward::upstream` streams the request to the upstream pool and the
//!    response back (502 when unreachable, 504 on timeout, 413 mid-stream).
//!    The upstream's cost header is added to the spend; the response gets
//!    `RateLimit-*` headers.
//! 8. `error::rescue` turns any stage error into the JSON error body.
//! 9. `access_log` writes one line when the response body is done.

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod config;
pub mod demo;
pub mod echo;
pub mod error;
pub mod forward;
pub mod health;
pub mod limits;
pub mod listener;
pub mod model;
pub mod pipeline;
pub mod private_files;
pub mod rate_limit;
pub mod request_id;
pub mod roles;
pub mod server;
pub mod sso;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod usage;
