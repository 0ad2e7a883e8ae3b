//! costguard: an authentication/authorization reverse-proxy sidecar for the
//! LLM Cost Ops service. It takes every request first, decides who is
//! calling and what they may do, and forwards only what is allowed, with
//! identity headers the upstream can trust.
//!
//! # Layout
//! Bottom (used by every stage, import nothing above them):
//! - [`principal`]: who is calling (`Principal`, `AuthMethod`, the
//!   `X-CostOps-*` identity headers).
//! - [`response`]: the one path from an error to its JSON response
//!   (`ErrorResponse`, implemented next to each stage's error type).
//! - [`model`], [`roles`]: tenants, keys, projects, users; the seed's RBAC table.
//! - [`grants`]: project-scoped grants as a principal carries them (roles on
//!   some projects only, with network and time conditions).
//! - [`store`]: the `Store` trait, its sled backend (one pod) and its
//!   PostgreSQL backend (many replicas; the conformance suite behind the
//!   test-only `conformance` feature); [`config`]: TOML file +
//!   `COSTGUARD_*` environment → validated [`config::Config`].
//! - [`request_id`], [`header_pattern`], [`limits`], [`rate_limit`], [`usage`], [`private_files`],
//!   [`telemetry`], [`generation`] (cache tombstones).
//!
//! The stages, in the order a request meets them:
//! - [`listener`]: accept loop, connection limits, TLS, HTTP/1.1 + HTTP/2, timeouts.
//! - [`access_log`]: request id and access-log line around every request ([`access_log::Exchange`]).
//! - [`trace_context`]: W3C `traceparent`/`tracestate`, continued or started, sent upstream.
//! - [`otlp`]: spans of each request and its stages, exported over OTLP/HTTP when configured.
//! - [`metrics`]: `/metrics` (Prometheus client library): per-request counts and latencies by
//!   worker shard, every stage's counters at scrape time, bounded label values.
//! - [`health`]: `/health` and `/ready`.
//! - [`sso`]: single sign-on (OpenID Connect and SAML logins, sessions,
//!   IdP-issued JWTs, the `/auth/*` endpoints), plugged into `authn` as loaders.
//! - [`authn`]: credentials → `Principal` (API keys, then the registered loaders).
//! - [`authz`]: path safety, policy (files → compiled snapshot, live
//!   reload), route match, tenant isolation, permissions → the `Permit`
//!   only it can issue.
//! - [`throttle`]: key rate, budget, daily quota, failed-authentication block.
//! - [`audit`]: the tamper-evident log (one record per decision and admin action).
//! - [`forward`]: header hygiene and the pooled upstream client.
//!
//! Top: [`context`] (what both ports share), [`pipeline`] (the proxy port:
//! the one function that orders the stages), [`admin`] (the admin port: one
//! route table), [`fanout`] (with a shared store: other replicas' writes
//! evict this replica's caches), [`server`] (startup, shutdown), [`backup`]
//! (`costguard backup` / `restore`: the store and audit log), [`compliance`]
//! (the compliance report: controls computed from live config and state), [`demo`]
//! and [`echo`].
//!
//! # Request flow (proxy port)
//! 1. `listener` accepts and hands each request to [`pipeline::Proxy::serve`].
//! 2. `access_log::Exchange` keeps a valid `X-Request-Id` or makes a UUIDv7.
//! 3. `/health` and `/ready` are answered locally.
//! 4. `limits` rejects oversized headers (431) or declared bodies (413);
//!    `authz::check_target` rejects targets that read two ways (400).
//! 5. `/auth/*` is answered by [`sso::endpoints`].
//! 6. The route is matched; a public route skips 7-9.
//! 7. `authn` finds exactly one credential and resolves it (API key, JWT,
//!    session cookie) to a `Principal` (401/400/403; 429 for a source with
//!    too many bad credentials).
//! 8. `authz` checks tenant, project and permission and issues the `Permit`.
//! 9. `throttle` applies the key's rate (429), the budget of cost routes
//!    (402) and the tenant's daily quota (429).
//! 10. `residency` picks the upstream of the tenant's data region, or
//!     refuses (403 `residency_violation`) when this costguard has none.
//! 11. `audit` records the decision (before forwarding; fail closed).
//! 12. `forward` cleans the headers, replaces the credential with the
//!     identity headers and streams to the upstream (502/504/413).
//! 13. `business_events`: when the upstream's response head arrives, the
//!     route's business event (`cost.exported`, …) or the failure, and any
//!     `budget.alert` the upstream raised, are recorded before the response
//!     is forwarded.
//! 14. Any stage error → [`response::error`]; `access_log` writes one line
//!     when the response body is done.

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod backup;
pub mod business_events;
pub mod compliance;
pub mod config;
pub mod context;
pub mod demo;
pub mod echo;
pub mod fanout;
pub mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod grants;
pub mod header_pattern;
pub mod health;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod pipeline;
pub mod principal;
pub mod private_files;
pub mod rate_limit;
pub mod request_id;
pub mod residency;
pub mod response;
pub mod roles;
pub mod server;
pub mod sso;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod trace_context;
pub mod usage;
pub mod worker;
