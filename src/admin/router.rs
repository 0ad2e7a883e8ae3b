//! How a table of admin routes is read: a row's shape ([`Route`]: method,
//! path, [`Access`], [`Events`], handler), and from the rows the router
//! (404 for a path no row has, 405 with the path's `Allow` for a method
//! it lacks), the permission check that runs before an operation, and the
//! audit event types of a mutation. The admin API's rows are in `routes`.
//!
//! A handler first reads the request: its body is parsed then, so a body
//! that does not parse is refused before the permission check (as the
//! operations always did). It returns the operation, which runs only once
//! the route's [`Access`] let the caller through. What is particular to an
//! operation (acting only on identities no more powerful than the caller,
//! granting only roles the caller holds, the audit log's own scoping)
//! stays in the operation.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::Caller;
use super::error::ApiError;
use super::ops::AdminOps;
use crate::audit::Audit;
use crate::roles::Permission;

pub(super) use crate::audit::EventType;

/// The event type of a mutation whose row names none.
const UNNAMED: EventType = EventType::AdminAction;

/// The order `Allow` lists a path's methods in.
pub(super) const METHOD_ORDER: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// One endpoint.
pub(super) struct Route {
    /// Its method.
    pub(super) method: Method,
    /// Its path under `/admin/v1/`: `/`-separated segments, each a literal
    /// or a `{name}` parameter; `{tenant}` names the tenant it acts in.
    pub(super) path: &'static str,
    /// Who may call it, checked before its operation runs.
    pub(super) access: Access,
    /// The event types of its audit records (mutations are recorded).
    pub(super) events: Events,
    /// What it does.
    pub(super) handler: Handler,
}

/// Who may call a route. A pass is noted for
/// [`super::auth::tracking_authorization`], which tells the audit of a
/// refused call from that of a failed one.
#[derive(Debug, Clone, Copy)]
pub(super) enum Access {
    /// `system_admin` only (the admin token, or a key holding it): not one
    /// tenant's business.
    System,
    /// `system_admin`, or a caller of the path's `{tenant}` holding any of
    /// these (named in this order when refused).
    Tenant(&'static [Permission]),
    /// Decided by the handler: the audit log's readers see their own
    /// tenant, `system_admin` all (see `audit_query`).
    Handler,
}

/// The event types a route's mutation is recorded under (design.md's names).
#[derive(Debug, Clone, Copy)]
pub(super) enum Events {
    /// None: a read, which is not recorded (a mutation would be
    /// `admin.action`).
    None,
    /// Always this one.
    One(EventType),
    /// `suspended` when the body sets `"status": "suspended"`, else `updated`.
    TenantChange {
        /// Any other change.
        updated: EventType,
        /// A suspension.
        suspended: EventType,
        /// A change of data region, besides the above (where the tenant's
        /// requests may go changed).
        region: EventType,
    },
    /// `created` when it answered 201, else `updated`; and `roles` as well
    /// when the body holds a `roles` array.
    UserPut {
        /// A new user.
        created: EventType,
        /// A replaced one.
        updated: EventType,
        /// Roles were (re)assigned.
        roles: EventType,
    },
}

/// What an operation answers: a status and its JSON body.
pub(super) type Reply = Result<(StatusCode, Value), ApiError>;

/// An operation, not yet started: it runs when awaited.
pub(super) type Operation<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// Reads a call (parsing its body now) and returns its operation.
pub(super) type Handler = for<'a> fn(Call<'a>, Params<'a>) -> Result<Operation<'a>, ApiError>;

/// What a handler is given besides its path parameters.
#[derive(Clone, Copy)]
pub(super) struct Call<'a> {
    /// The operations.
    pub(super) ops: &'a AdminOps,
    /// The audit log, when enabled (its routes read it).
    pub(super) audit: Option<&'a Audit>,
    /// Who calls.
    pub(super) caller: &'a Caller,
    /// The request body, read in full (bounded).
    pub(super) body: &'a Bytes,
    /// The query string.
    pub(super) query: Option<&'a str>,
}

impl Call<'_> {
    /// The body, strict JSON; an empty body reads as `{}`, so requests whose
    /// fields are all optional (create a key, rotate) need none, and the
    /// others get "missing field …".
    pub(super) fn body<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            self.body
        };
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
    }

    /// The audit log, or 404 when it is disabled.
    pub(super) fn audit_log(&self) -> Result<&Audit, ApiError> {
        self.audit
            .ok_or_else(|| ApiError::NotFound("the audit log is disabled (audit.enabled)".into()))
    }
}

/// A handler's operation, boxed.
pub(super) fn run<'a>(
    op: impl Future<Output = Reply> + Send + 'a,
) -> Result<Operation<'a>, ApiError> {
    Ok(Box::pin(op))
}

// === the router ===

/// A path segment of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// This text exactly.
    Literal(&'static str),
    /// Any (non-empty) segment, named.
    Param(&'static str),
}

/// A path of the table, with what it allows.
#[derive(Debug)]
struct Pattern {
    segments: Vec<Segment>,
    /// Its methods, as the `Allow` header lists them.
    allow: String,
}

impl Pattern {
    fn parse(path: &'static str) -> Vec<Segment> {
        path.split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name),
                    None => Segment::Literal(s),
                },
            )
            .collect()
    }

    fn matches(&self, segments: &[&str]) -> bool {
        self.segments.len() == segments.len()
            && self.segments.iter().zip(segments).all(|(p, s)| match p {
                Segment::Literal(l) => l == s,
                Segment::Param(_) => !s.is_empty(),
            })
    }
}

/// The table, compiled once: its distinct paths, and each row's.
pub(super) struct Router {
    routes: &'static [Route],
    patterns: Vec<Pattern>,
    /// For each row of `routes`, its index in `patterns`.
    pattern_of: Vec<usize>,
}

impl Router {
    /// Compiles `routes`.
    pub(super) fn new(routes: &'static [Route]) -> Self {
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut pattern_of = Vec::with_capacity(routes.len());
        for route in routes {
            let segments = Pattern::parse(route.path);
            let i = match patterns.iter().position(|p| p.segments == segments) {
                Some(i) => i,
                None => {
                    patterns.push(Pattern {
                        segments,
                        allow: String::new(),
                    });
                    patterns.len() - 1
                }
            };
            pattern_of.push(i);
        }
        for (i, pattern) in patterns.iter_mut().enumerate() {
            let methods: Vec<&str> = METHOD_ORDER
                .iter()
                .filter(|m| {
                    routes
                        .iter()
                        .zip(&pattern_of)
                        .any(|(r, &p)| p == i && r.method == **m)
                })
                .map(Method::as_str)
                .collect();
            pattern.allow = methods.join(", ");
        }
        Self {
            routes,
            patterns,
            pattern_of,
        }
    }

    /// The route for `method` on `segments` (the path under `/admin/v1/`,
    /// split at `/`): `NoRoute` when no row has the path,
    /// `MethodNotAllowed` (with the path's `Allow`) when none has the
    /// method.
    pub(super) fn find<'p>(
        &'static self,
        method: &Method,
        segments: &'p [&'p str],
    ) -> Result<Found<'p>, ApiError> {
        let (i, pattern) = self
            .patterns
            .iter()
            .enumerate()
            .find(|(_, p)| p.matches(segments))
            .ok_or(ApiError::NoRoute)?;
        let route = self
            .routes
            .iter()
            .zip(&self.pattern_of)
            .find(|&(r, &p)| p == i && r.method == method)
            .map(|(r, _)| r)
            .ok_or(ApiError::MethodNotAllowed(&pattern.allow))?;
        Ok(Found {
            route,
            params: Params { pattern, segments },
        })
    }
}

/// A request's route and its path parameters.
pub(super) struct Found<'p> {
    route: &'static Route,
    params: Params<'p>,
}

impl Found<'_> {
    /// The tenant the path names, if it has a `{tenant}`.
    pub(super) fn tenant(&self) -> Option<&str> {
        self.params.get("tenant")
    }

    /// The user the path names, if it has a `{user}`.
    pub(super) fn user(&self) -> Option<&str> {
        self.params.get("user")
    }

    /// Runs the call: the handler reads it (a body that does not parse is
    /// refused here), the caller's access is checked, then the operation
    /// runs.
    pub(super) async fn dispatch(&self, call: Call<'_>) -> Reply {
        let caller = call.caller;
        let operation = (self.route.handler)(call, self.params)?;
        self.route.access.check(caller, self.tenant())?;
        operation.await
    }

    /// The route found.
    #[cfg(test)]
    pub(super) fn route(&self) -> &'static Route {
        self.route
    }

    /// The event types of this mutation's audit records, by its status
    /// and its body (`changes`).
    pub(super) fn event_types(&self, status: StatusCode, changes: &Value) -> Vec<EventType> {
        self.route.events.of(status, changes)
    }
}

/// A request's path parameters, by the names its route's path gives them.
#[derive(Clone, Copy)]
pub(super) struct Params<'p> {
    pattern: &'static Pattern,
    segments: &'p [&'p str],
}

impl<'p> Params<'p> {
    /// The parameter `name`, if the path has it.
    fn get(&self, name: &str) -> Option<&'p str> {
        self.pattern
            .segments
            .iter()
            .position(|s| matches!(s, Segment::Param(n) if *n == name))
            .and_then(|i| self.segments.get(i).copied())
    }

    /// The parameter `name`. A handler asks only for its path's own
    /// parameters (checked in debug builds, and every row is called by the
    /// routes' tests); were one missing, it would read as empty, which
    /// names nothing: no tenant, key or user has an empty id.
    pub(super) fn arg(&self, name: &str) -> &'p str {
        let value = self.get(name);
        debug_assert!(value.is_some(), "no {{{name}}} in this route's path");
        value.unwrap_or_default()
    }
}

impl Access {
    /// Lets `caller` through, or says why not.
    fn check(self, caller: &Caller, tenant: Option<&str>) -> Result<(), ApiError> {
        match self {
            Access::System => caller.authorize(None, &[Permission::SystemAdmin]),
            Access::Tenant(any_of) => caller.authorize(tenant, any_of),
            Access::Handler => Ok(()),
        }
    }
}

impl Events {
    /// The event types of a mutation that answered `status` to the body
    /// `changes`.
    pub(super) fn of(self, status: StatusCode, changes: &Value) -> Vec<EventType> {
        match self {
            Events::None => vec![UNNAMED],
            Events::One(t) => vec![t],
            Events::TenantChange {
                updated,
                suspended,
                region,
            } => {
                let mut events = if changes["status"] == "suspended" {
                    vec![suspended]
                } else {
                    vec![updated]
                };
                if changes["data_region"].is_string()
                    || changes["settings"]["data_region"].is_string()
                {
                    events.push(region);
                }
                events
            }
            Events::UserPut {
                created,
                updated,
                roles,
            } => {
                let user = if status == StatusCode::CREATED {
                    created
                } else {
                    updated
                };
                if changes.get("roles").is_some_and(|r| r.is_array()) {
                    vec![user, roles]
                } else {
                    vec![user]
                }
            }
        }
    }
}
