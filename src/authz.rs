//! Authorization: route match, tenant isolation, permission check.
//!
//! The policy snapshot ([`reload::PolicyHandle`]) decides which route a
//! request is and what it needs. A `{tenant}` segment must be the caller's
//! tenant and a `{project}` segment one of that tenant's projects (checked in
//! the store, cached); only `system_admin` crosses tenants. The caller's
//! permissions are the union of its roles (policy roles, then the tenant's
//! custom roles), narrowed by the key's scopes. No route: denied.
//! A successful decision is a [`Permit`], which forwarding requires.

pub mod explain;
pub mod matcher;
pub mod path;
pub mod policy;
pub mod reload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use moka::future::Cache;

use crate::principal::Principal;
use crate::response::{ErrorResponse, Problem};
use crate::roles::{Permission, Permissions};
use crate::store::{Store, StoreError};
use matcher::{Access, Match};
use policy::Policy;
use reload::PolicyHandle;

/// Why a request was refused after authentication.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// No policy route covers this method and path.
    #[error("no route allows this request")]
    NoRoute,
    /// The path names another tenant.
    #[error("the path names another tenant than the caller's")]
    TenantMismatch,
    /// The `{project}` is not a project of the tenant.
    #[error("the project is not one of the tenant's projects")]
    ForeignProject,
    /// The caller lacks the route's permission.
    #[error("missing permission {0}")]
    Missing(Permission),
}

/// A request target that could be read two ways (400).
#[derive(Debug, thiserror::Error)]
pub enum BadTarget {
    /// See [`path::UnsafePath`].
    #[error(transparent)]
    Path(#[from] path::UnsafePath),
    /// An absolute-form target whose authority is not the Host header.
    #[error("the request target's authority differs from the Host header")]
    Authority,
    /// More than one `Host` field (RFC 9112 §3.2: 400): which one a
    /// component reads decides where the request goes.
    #[error("more than one Host header")]
    DuplicateHost,
    /// A `Transfer-Encoding` other than one field saying `chunked` (RFC
    /// 9112 §6.1): stacked or repeated codings are read differently by
    /// different parsers (request smuggling); costguard decodes none but
    /// chunked.
    #[error("Transfer-Encoding must be exactly \"chunked\"")]
    TransferCoding,
}

/// Proof that a request may be forwarded; `forward` requires one. Only
/// this module makes one ([`Authz::authorize`], [`Permit::public`]): its
/// fields are private, so no other stage can forge or widen it.
#[derive(Debug)]
pub struct Permit {
    principal: Option<Arc<Principal>>,
    cost: bool,
    tenant: Option<Arc<str>>,
    project: Option<(Arc<str>, f64)>,
    route: Arc<str>,
}

impl Permit {
    /// The permit of a public route: nobody authenticated, no tenant.
    pub fn public(m: &Match<'_, '_>) -> Option<Self> {
        (m.route.access == Access::Public).then(|| Self {
            principal: None,
            cost: m.route.cost,
            tenant: None,
            project: None,
            route: m.route.origin.clone(),
        })
    }

    /// Who is calling; `None` on a public route.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
    }

    /// Whether the route incurs cost.
    pub fn cost(&self) -> bool {
        self.cost
    }

    /// The tenant whose route it is: the `{tenant}` segment, else the
    /// caller's. `None` on a public route.
    pub fn tenant(&self) -> Option<&Arc<str>> {
        self.tenant.as_ref()
    }

    /// Whether the route's tenant is not the caller's (only a system admin
    /// gets such a permit).
    pub fn crosses_tenants(&self) -> bool {
        match (&self.principal, &self.tenant) {
            (Some(p), Some(t)) => *p.tenant_id != **t,
            _ => false,
        }
    }

    /// The route's `{project}` and its monthly budget in USD, if it names one.
    pub fn project(&self) -> Option<&(Arc<str>, f64)> {
        self.project.as_ref()
    }

    /// The route that allowed it, `file:line`.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }
}

/// Checks the request head: one Host, no transfer coding but a single
/// `chunked`, the authority (absolute form vs Host) and the path.
pub fn check_target<B>(req: &Request<B>) -> Result<(), BadTarget> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(BadTarget::DuplicateHost);
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some()
            || !first
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")))
    {
        return Err(BadTarget::TransferCoding);
    }
    if let (Some(authority), Some(host)) = (req.uri().authority(), req.headers().get(header::HOST))
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(BadTarget::Authority);
    }
    path::check(req.uri().path())?;
    Ok(())
}

/// The authorization stage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authz {
    policy: Arc<PolicyHandle>,
    store: Arc<dyn Store>,
    /// Tenant → its custom roles. Bounded, TTL; invalidated on change here.
    custom_roles: Cache<String, Arc<HashMap<String, Permissions>>>,
    /// (tenant, project) → its monthly budget in USD (`None`: no such
    /// project). Bounded, TTL.
    projects: Cache<(String, String), Option<f64>>,
}

impl Authz {
    /// `capacity`/`ttl` bound the caches of custom roles and projects.
    pub fn new(
        policy: Arc<PolicyHandle>,
        store: Arc<dyn Store>,
        capacity: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            policy,
            store,
            custom_roles: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            projects: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The policy in force (an `Arc`, so it can be held across awaits).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current_full()
    }

    /// A tenant's custom roles.
    pub async fn tenant_roles(
        &self,
        tenant_id: &str,
    ) -> Result<Arc<HashMap<String, Permissions>>, Arc<StoreError>> {
        if let Some(hit) = self.custom_roles.get(tenant_id).await {
            return Ok(hit);
        }
        self.custom_roles
            .try_get_with_by_ref(tenant_id, async {
                let roles = self.store.list_roles(tenant_id).await?;
                Ok(Arc::new(
                    roles
                        .into_iter()
                        .map(|r| {
                            let perms: Vec<Permission> = r
                                .permissions
                                .iter()
                                .filter_map(|p| Permission::parse(p))
                                .collect();
                            (r.name, Permissions::of(&perms))
                        })
                        .collect(),
                ))
            })
            .await
    }

    /// Forgets a tenant's cached custom roles and projects.
    pub async fn forget_tenant(&self, tenant_id: &str) {
        self.custom_roles.invalidate(tenant_id).await;
        // Projects are rarely removed (only with their tenant): dropping the
        // whole cache is simpler than tracking keys per tenant.
        self.projects.invalidate_all();
    }

    /// The permissions of a role: the policy's, else the tenant's own.
    pub async fn role(
        &self,
        policy: &Policy,
        tenant_id: &str,
        role: &str,
    ) -> Result<Option<Permissions>, Arc<StoreError>> {
        if let Some(p) = policy.role(role) {
            return Ok(Some(p));
        }
        Ok(self.tenant_roles(tenant_id).await?.get(role).copied())
    }

    /// The caller's effective permissions under `policy`.
    pub async fn permissions(
        &self,
        policy: &Policy,
        principal: &Principal,
    ) -> Result<Permissions, Arc<StoreError>> {
        let perms = self
            .roles_permissions(policy, &principal.tenant_id, &principal.roles)
            .await?;
        Ok(match principal.scopes {
            Some(scopes) => perms.intersect(scopes),
            None => perms,
        })
    }

    /// The union of `roles`' permissions in `tenant_id` under `policy`
    /// (policy roles, else the tenant's custom roles; unknown names grant
    /// nothing).
    pub async fn roles_permissions(
        &self,
        policy: &Policy,
        tenant_id: &str,
        roles: &[String],
    ) -> Result<Permissions, Arc<StoreError>> {
        let mut perms = Permissions::NONE;
        let mut custom: Option<Arc<HashMap<String, Permissions>>> = None;
        for role in roles {
            match policy.role(role) {
                Some(p) => perms = perms.union(p),
                None => {
                    if custom.is_none() {
                        custom = Some(self.tenant_roles(tenant_id).await?);
                    }
                    if let Some(p) = custom.as_ref().and_then(|c| c.get(role.as_str())) {
                        perms = perms.union(*p);
                    }
                }
            }
        }
        Ok(perms)
    }

    /// Decides an authenticated request on a matched route. Returns the
    /// budget of the route's `{project}`, if it has one.
    pub async fn authorize(
        &self,
        policy: &Policy,
        m: &Match<'_, '_>,
        principal: &Arc<Principal>,
    ) -> Result<Permit, AuthzOutcome> {
        let perms = self
            .permissions(policy, principal)
            .await
            .map_err(AuthzOutcome::Store)?;
        // The one cross-tenant rule: a route naming another tenant is
        // refused unless the caller is a system admin.
        let tenant = match m.param("tenant") {
            Some(t) if t != &*principal.tenant_id && !perms.contains(Permission::SystemAdmin) => {
                return Err(AuthzOutcome::Denied(Denied::TenantMismatch));
            }
            Some(t) => t,
            None => &principal.tenant_id,
        };
        let mut budget = None;
        if let Some(project) = m.param("project") {
            let key = (tenant.to_string(), project.to_string());
            let found = match self.projects.get(&key).await {
                Some(hit) => hit,
                None => {
                    let store = self.store.clone();
                    let (t, p) = key.clone();
                    self.projects
                        .try_get_with(key, async move {
                            store.get_project(&t, &p).await.map(|p| p.map(|p| p.budget))
                        })
                        .await
                        .map_err(AuthzOutcome::Store)?
                }
            };
            match found {
                Some(b) => budget = Some(b),
                None => return Err(AuthzOutcome::Denied(Denied::ForeignProject)),
            }
        }
        if let Access::Permission(p) = m.route.access
            && !perms.contains(p)
        {
            return Err(AuthzOutcome::Denied(Denied::Missing(p)));
        }
        Ok(Permit {
            cost: m.route.cost,
            route: m.route.origin.clone(),
            tenant: Some(match m.param("tenant") {
                Some(t) if t != &*principal.tenant_id => Arc::from(t),
                _ => principal.tenant_id.clone(),
            }),
            project: m.param("project").zip(budget).map(|(p, b)| (p.into(), b)),
            principal: Some(principal.clone()),
        })
    }
}

impl ErrorResponse for BadTarget {
    fn problem(&self) -> Problem<'_> {
        Problem {
            status: http::StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: self.to_string().into(),
        }
    }
}

impl ErrorResponse for AuthzOutcome {
    fn problem(&self) -> Problem<'_> {
        let code = match self {
            AuthzOutcome::Denied(Denied::TenantMismatch | Denied::ForeignProject) => {
                "tenant_mismatch"
            }
            AuthzOutcome::Denied(Denied::NoRoute | Denied::Missing(_)) => "forbidden",
            AuthzOutcome::Store(_) => {
                return Problem::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "authorization data cannot be read right now",
                );
            }
        };
        Problem {
            status: http::StatusCode::FORBIDDEN,
            code,
            message: self.to_string().into(),
        }
    }
}

/// A failed authorization.
#[derive(Debug, thiserror::Error)]
pub enum AuthzOutcome {
    /// Refused (403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The store could not answer (503).
    #[error("authorization data unavailable")]
    Store(#[source] Arc<StoreError>),
}
