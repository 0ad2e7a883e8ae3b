//! Authorization: route match, tenant isolation, permission check.
//!
//! The policy snapshot ([`reload::PolicyHandle`]) decides which route a
//! request is and what it needs. A `{tenant}` segment must be the caller's
//! tenant and a `{project}` segment one of that tenant's projects (checked in
//! the store, cached); only `system_admin` crosses tenants. The caller's
//! permissions are the union of its roles (policy roles, then the tenant's
//! custom roles), narrowed by the key's scopes. No route: denied.
//! On a route that names a project (its `{project}` segment, or the query
//! parameter its `project_query` names), the roles of the caller's
//! project-scoped grants on that project count too, while their
//! conditions hold ([`crate::grants`]); only in the caller's own tenant,
//! and before the scopes narrow. A successful decision is a [`Permit`],
//! which forwarding requires.

pub mod explain;
pub mod matcher;
pub mod path;
pub mod policy;
pub mod reload;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use moka::future::Cache;

use crate::grants;
use crate::metrics::CacheStats;
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

/// What a decision may look at besides the route and the caller: the
/// request's attributes that project-scoped grants read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    /// The client address as resolved through `proxy.trusted_proxies`
    /// (`None`: unknown, and a grant with a `networks` condition does not
    /// apply).
    pub client: Option<IpAddr>,
    /// The request's query, for a route's `project_query`.
    pub query: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    /// The attributes of `req` from `client`.
    pub fn of<B>(req: &'a Request<B>, client: IpAddr) -> Self {
        Self {
            client: Some(client),
            query: req.uri().query(),
        }
    }
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
    /// Bumped by every eviction, so a load racing one does not keep what it read.
    generation: Arc<crate::generation::Generation>,
    /// Hits and misses of `custom_roles` and `projects`, for `/metrics`.
    stats: Arc<[CacheStats; 2]>,
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
            generation: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// The caches' hits and misses, by cache name.
    pub fn cache_stats(&self) -> [(&'static str, &CacheStats); 2] {
        [
            ("custom_roles", &self.stats[0]),
            ("projects", &self.stats[1]),
        ]
    }

    /// The policy and its reloads (for `/metrics`).
    pub fn policy_handle(&self) -> &PolicyHandle {
        &self.policy
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
            self.stats[0].hit();
            return Ok(hit);
        }
        self.stats[0].miss();
        let noted = self.generation.current();
        let loaded = self
            .custom_roles
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
            .await?;
        if self.generation.moved_since(noted) {
            self.custom_roles.invalidate(tenant_id).await;
        }
        Ok(loaded)
    }

    /// Forgets a tenant's cached custom roles and projects.
    pub async fn forget_tenant(&self, tenant_id: &str) {
        self.generation.bump();
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

    /// The caller's tenant-wide permissions under `policy`: its roles',
    /// narrowed by its scopes. Project-scoped grants are not in it (they
    /// count only on a route naming one of their projects).
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

    /// The permissions of the caller's grants that apply on `project`
    /// (in the caller's own tenant) for a request with `attrs`.
    pub async fn grants_permissions(
        &self,
        policy: &Policy,
        principal: &Principal,
        project: &str,
        attrs: &Attributes<'_>,
    ) -> Result<Permissions, Arc<StoreError>> {
        let mut perms = Permissions::NONE;
        for grant in &principal.grants {
            if grant
                .applies(project, attrs.client, time::OffsetDateTime::now_utc)
                .is_ok()
                // Boxed: see `ApiKeys::authenticate`.
                && let Some(p) =
                    Box::pin(self.role(policy, &principal.tenant_id, grant.role())).await?
            {
                perms = perms.union(p);
            }
        }
        Ok(perms)
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
                        // Boxed: see `ApiKeys::authenticate`.
                        custom = Some(Box::pin(self.tenant_roles(tenant_id)).await?);
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
        attrs: &Attributes<'_>,
    ) -> Result<Permit, AuthzOutcome> {
        let narrow = |perms: Permissions| match principal.scopes {
            Some(scopes) => perms.intersect(scopes),
            None => perms,
        };
        let held = self
            .roles_permissions(policy, &principal.tenant_id, &principal.roles)
            .await
            .map_err(AuthzOutcome::Store)?;
        let mut perms = narrow(held);
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
                Some(hit) => {
                    self.stats[1].hit();
                    hit
                }
                None => {
                    self.stats[1].miss();
                    let store = self.store.clone();
                    let (t, p) = key.clone();
                    let noted = self.generation.current();
                    // Boxed: see `ApiKeys::authenticate`.
                    let loaded = Box::pin(self.projects.try_get_with(key.clone(), async move {
                        store.get_project(&t, &p).await.map(|p| p.map(|p| p.budget))
                    }))
                    .await
                    .map_err(AuthzOutcome::Store)?;
                    if self.generation.moved_since(noted) {
                        self.projects.invalidate(&key).await;
                    }
                    loaded
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
            // Grants count only in the caller's own tenant (never towards
            // crossing), on the project the route names, and are looked at
            // only when the tenant-wide roles fall short.
            if !principal.grants.is_empty()
                && tenant == &*principal.tenant_id
                && let Some(project) = match (m.param("project"), &m.route.project_query) {
                    (Some(project), _) => Some(project),
                    (None, Some(name)) => grants::query_project(attrs.query, name).ok(),
                    (None, None) => None,
                }
            {
                let granted = self
                    .grants_permissions(policy, principal, project, attrs)
                    .await
                    .map_err(AuthzOutcome::Store)?;
                perms = narrow(held.union(granted));
            }
            if !perms.contains(p) {
                return Err(AuthzOutcome::Denied(Denied::Missing(p)));
            }
        }
        let tenant = if tenant == &*principal.tenant_id {
            principal.tenant_id.clone()
        } else {
            Arc::from(tenant)
        };
        Ok(Permit {
            cost: m.route.cost,
            route: m.route.origin.clone(),
            tenant: Some(tenant),
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

#[cfg(test)]
pub(crate) mod tests {
    //! Decisions on a policy written for the tests (so a change to the
    //! shipped policy does not move them), over a real sled store. The
    //! fixture is shared with the limits stage's tests.

    use http::Method;
    use tempfile::TempDir;

    use super::*;
    use crate::model::{self, CustomRole, Project};
    use crate::principal::{AuthMethod, IdentityHeaders};
    use crate::store::sled::SledStore;

    pub(crate) const TENANT_A: &str = "org-aaaa0001";
    pub(crate) const TENANT_B: &str = "org-bbbb0002";
    /// A project of tenant A (budget [`PROJECT_A_BUDGET`] USD).
    pub(crate) const PROJECT_A: &str = "proj-aaaa00a1";
    pub(crate) const PROJECT_A_BUDGET: f64 = 0.5;
    /// Another project of tenant A (budget [`PROJECT_A_BUDGET`] USD).
    pub(crate) const PROJECT_A2: &str = "proj-aaaa00a2";
    /// A project of tenant B (budget 75 USD).
    pub(crate) const PROJECT_B: &str = "proj-bbbb00b1";

    const ROLES: &str = r#"
[roles.viewer]
permissions = ["view_costs", "view_budgets", "view_analytics"]

[roles.admin]
permissions = ["view_costs", "export_costs", "view_budgets", "create_budgets", "edit_budgets", "delete_budgets", "view_analytics", "create_reports", "manage_users", "manage_projects", "manage_api_keys", "view_audit_logs"]

[roles.system_admin]
permissions = ["*"]
"#;

    const ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/costs"
permission = "view_costs"

[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/costs/export"
permission = "export_costs"

[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/projects/{project}/costs"
permission = "view_costs"

[[routes]]
method = "POST"
path = "/v1/tenants/{tenant}/completions"
permission = "view_costs"
cost = true

[[routes]]
method = "POST"
path = "/v1/tenants/{tenant}/projects/{project}/completions"
permission = "view_costs"
cost = true

[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/projects/{project}/export"
permission = "export_costs"

[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/exports"
permission = "export_costs"
project_query = "project_id"

[[public]]
method = "GET"
path = "/v1/status"
"#;

    /// The authorization stage over the test policy and a store holding
    /// [`PROJECT_A`], [`PROJECT_A2`] and [`PROJECT_B`].
    pub(crate) struct Fixture {
        pub(crate) store: Arc<dyn Store>,
        pub(crate) authz: Authz,
        _dir: TempDir,
    }

    pub(crate) async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("roles.toml"), ROLES).unwrap();
        std::fs::write(policy_dir.join("routes.toml"), ROUTES).unwrap();
        let policy = PolicyHandle::load(reload::Source::Dir(policy_dir)).unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        for (tenant, project, budget) in [
            (TENANT_A, PROJECT_A, PROJECT_A_BUDGET),
            (TENANT_A, PROJECT_A2, PROJECT_A_BUDGET),
            (TENANT_B, PROJECT_B, 75.0),
        ] {
            store
                .insert_project(
                    &Project {
                        project_id: project.into(),
                        tenant_id: tenant.into(),
                        name: project.into(),
                        budget,
                        created_at: model::now(),
                    },
                    -1,
                )
                .await
                .unwrap();
        }
        let authz = Authz::new(policy, store.clone(), 100, Duration::from_secs(300));
        Fixture {
            store,
            authz,
            _dir: dir,
        }
    }

    /// An API key's principal: key `key_id` of `tenant` with `roles`.
    pub(crate) fn principal(tenant: &str, key_id: &str, roles: &[&str]) -> Principal {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let key_id: Arc<str> = key_id.into();
        Principal {
            tenant_id: tenant.into(),
            user_id: key_id.clone(),
            rate_key: key_id.clone(),
            headers: IdentityHeaders::new(
                tenant,
                &key_id,
                Some(&*key_id),
                &roles,
                AuthMethod::ApiKey,
            )
            .unwrap(),
            key_id: Some(key_id),
            roles: roles.into(),
            grants: Box::default(),
            scopes: None,
            rate_per_minute: None,
            method: AuthMethod::ApiKey,
        }
    }

    /// The decision on `method path` for `who`, as the pipeline asks it.
    pub(crate) async fn decide(
        authz: &Authz,
        method: Method,
        path: &str,
        who: &Arc<Principal>,
    ) -> Result<Permit, AuthzOutcome> {
        let policy = authz.policy();
        let m = policy
            .enforce
            .find(&method, path)
            .unwrap_or_else(|| panic!("no test route for {method} {path}"));
        authz
            .authorize(&policy, &m, who, &Attributes::default())
            .await
    }

    fn costs(tenant: &str) -> String {
        format!("/v1/tenants/{tenant}/costs")
    }

    fn project_costs(tenant: &str, project: &str) -> String {
        format!("/v1/tenants/{tenant}/projects/{project}/costs")
    }

    #[tokio::test]
    async fn own_tenant_route_is_permitted_for_the_callers_tenant() {
        let f = fixture().await;
        let viewer = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        let permit = decide(&f.authz, Method::GET, &costs(TENANT_A), &viewer)
            .await
            .unwrap();
        assert_eq!(permit.tenant().map(|t| &**t), Some(TENANT_A));
        assert!(!permit.crosses_tenants());
        assert!(Arc::ptr_eq(permit.principal().unwrap(), &viewer));
        assert!(!permit.cost());
        assert!(permit.project().is_none());
        assert_eq!(&**permit.route(), "routes.toml:2");
    }

    #[tokio::test]
    async fn another_tenants_route_is_refused_unless_system_admin() {
        let f = fixture().await;
        let path = costs(TENANT_B);
        // Holding every tenant permission is not enough to cross tenants.
        for roles in [&["viewer"][..], &["admin"], &["viewer", "admin"]] {
            let who = Arc::new(principal(TENANT_A, "key-a", roles));
            assert!(
                matches!(
                    decide(&f.authz, Method::GET, &path, &who).await,
                    Err(AuthzOutcome::Denied(Denied::TenantMismatch))
                ),
                "{roles:?}"
            );
        }
        let sysadmin = Arc::new(principal(TENANT_A, "key-root", &["system_admin"]));
        let permit = decide(&f.authz, Method::GET, &path, &sysadmin)
            .await
            .unwrap();
        assert_eq!(permit.tenant().map(|t| &**t), Some(TENANT_B));
        assert!(permit.crosses_tenants());
        // On its own tenant a system admin does not cross.
        let own = decide(&f.authz, Method::GET, &costs(TENANT_A), &sysadmin)
            .await
            .unwrap();
        assert!(!own.crosses_tenants());
    }

    #[tokio::test]
    async fn another_tenants_project_route_does_not_reveal_whether_the_project_exists() {
        let f = fixture().await;
        let viewer = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        for project in [PROJECT_B, "proj-nonexist"] {
            assert!(
                matches!(
                    decide(
                        &f.authz,
                        Method::GET,
                        &project_costs(TENANT_B, project),
                        &viewer
                    )
                    .await,
                    Err(AuthzOutcome::Denied(Denied::TenantMismatch))
                ),
                "{project}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_permission_is_denied_naming_it() {
        let f = fixture().await;
        let viewer = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        assert!(matches!(
            decide(
                &f.authz,
                Method::GET,
                "/v1/tenants/org-aaaa0001/costs/export",
                &viewer
            )
            .await,
            Err(AuthzOutcome::Denied(Denied::Missing(
                Permission::ExportCosts
            )))
        ));
        // Unknown role names grant nothing.
        let nobody = Arc::new(principal(TENANT_A, "key-n", &["no_such_role"]));
        assert!(matches!(
            decide(&f.authz, Method::GET, &costs(TENANT_A), &nobody).await,
            Err(AuthzOutcome::Denied(Denied::Missing(Permission::ViewCosts)))
        ));
    }

    #[tokio::test]
    async fn a_keys_scopes_narrow_what_its_roles_grant() {
        let f = fixture().await;
        let mut scoped = principal(TENANT_A, "key-s", &["admin"]);
        scoped.scopes = Some(Permissions::of(&[Permission::ViewCosts]));
        let scoped = Arc::new(scoped);
        assert!(
            decide(&f.authz, Method::GET, &costs(TENANT_A), &scoped)
                .await
                .is_ok()
        );
        assert!(matches!(
            decide(
                &f.authz,
                Method::GET,
                "/v1/tenants/org-aaaa0001/costs/export",
                &scoped
            )
            .await,
            Err(AuthzOutcome::Denied(Denied::Missing(
                Permission::ExportCosts
            )))
        ));
        // A scope cannot take a system admin across tenants once narrowed.
        let mut root = principal(TENANT_A, "key-r", &["system_admin"]);
        root.scopes = Some(Permissions::of(&[Permission::ViewCosts]));
        assert!(matches!(
            decide(&f.authz, Method::GET, &costs(TENANT_B), &Arc::new(root)).await,
            Err(AuthzOutcome::Denied(Denied::TenantMismatch))
        ));
    }

    #[tokio::test]
    async fn custom_roles_grant_only_in_their_own_tenant() {
        let f = fixture().await;
        let role = |tenant: &str, perms: &[&str]| CustomRole {
            tenant_id: tenant.into(),
            name: "exporter".into(),
            description: "exports".into(),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            updated_at: model::now(),
        };
        f.store
            .put_role(&role(TENANT_A, &["export_costs"]))
            .await
            .unwrap();
        let export_a = "/v1/tenants/org-aaaa0001/costs/export";
        let export_b = "/v1/tenants/org-bbbb0002/costs/export";
        let in_a = Arc::new(principal(TENANT_A, "key-a", &["exporter"]));
        assert!(decide(&f.authz, Method::GET, export_a, &in_a).await.is_ok());
        // The same role name in another tenant is that tenant's (here: none).
        let in_b = Arc::new(principal(TENANT_B, "key-b", &["exporter"]));
        assert!(matches!(
            decide(&f.authz, Method::GET, export_b, &in_b).await,
            Err(AuthzOutcome::Denied(Denied::Missing(
                Permission::ExportCosts
            )))
        ));
        // A change applies once the tenant's cache entry is forgotten.
        f.store
            .put_role(&role(TENANT_B, &["export_costs"]))
            .await
            .unwrap();
        f.authz.forget_tenant(TENANT_B).await;
        assert!(decide(&f.authz, Method::GET, export_b, &in_b).await.is_ok());
    }

    #[tokio::test]
    async fn a_project_route_needs_a_project_of_the_routes_tenant() {
        let f = fixture().await;
        let viewer = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        let permit = decide(
            &f.authz,
            Method::GET,
            &project_costs(TENANT_A, PROJECT_A),
            &viewer,
        )
        .await
        .unwrap();
        assert_eq!(
            permit.project().map(|(p, b)| (&**p, *b)),
            Some((PROJECT_A, PROJECT_A_BUDGET))
        );
        // Unknown here, and another tenant's project under one's own tenant.
        for project in ["proj-nonexist", PROJECT_B] {
            assert!(
                matches!(
                    decide(
                        &f.authz,
                        Method::GET,
                        &project_costs(TENANT_A, project),
                        &viewer
                    )
                    .await,
                    Err(AuthzOutcome::Denied(Denied::ForeignProject))
                ),
                "{project}"
            );
        }
        // A system admin's project is looked up in the route's tenant.
        let root = Arc::new(principal(TENANT_A, "key-r", &["system_admin"]));
        let permit = decide(
            &f.authz,
            Method::GET,
            &project_costs(TENANT_B, PROJECT_B),
            &root,
        )
        .await
        .unwrap();
        assert_eq!(
            permit.project().map(|(p, b)| (&**p, *b)),
            Some((PROJECT_B, 75.0))
        );
        assert!(matches!(
            decide(
                &f.authz,
                Method::GET,
                &project_costs(TENANT_B, PROJECT_A),
                &root
            )
            .await,
            Err(AuthzOutcome::Denied(Denied::ForeignProject))
        ));
    }

    #[tokio::test]
    async fn a_project_route_without_the_permission_is_still_denied() {
        let f = fixture().await;
        let nobody = Arc::new(principal(TENANT_A, "key-n", &["no_such_role"]));
        assert!(matches!(
            decide(
                &f.authz,
                Method::GET,
                &project_costs(TENANT_A, PROJECT_A),
                &nobody
            )
            .await,
            Err(AuthzOutcome::Denied(Denied::Missing(Permission::ViewCosts)))
        ));
    }

    #[tokio::test]
    async fn cost_routes_say_so_on_the_permit() {
        let f = fixture().await;
        let viewer = Arc::new(principal(TENANT_A, "key-a", &["viewer"]));
        let permit = decide(
            &f.authz,
            Method::POST,
            "/v1/tenants/org-aaaa0001/completions",
            &viewer,
        )
        .await
        .unwrap();
        assert!(permit.cost());
    }

    #[tokio::test]
    async fn only_a_public_route_gives_a_public_permit() {
        let f = fixture().await;
        let policy = f.authz.policy();
        let m = policy.enforce.find(&Method::GET, "/v1/status").unwrap();
        let permit = Permit::public(&m).expect("a public route");
        assert!(permit.principal().is_none());
        assert!(permit.tenant().is_none());
        assert!(permit.project().is_none());
        assert!(!permit.crosses_tenants());
        assert!(!permit.cost());
        let path = costs(TENANT_A);
        let protected = policy.enforce.find(&Method::GET, &path).unwrap();
        assert!(Permit::public(&protected).is_none());
    }

    /// `principal` with `grants` (compiled as authentication would).
    fn with_grants(mut p: Principal, grants: &[model::Grant]) -> Arc<Principal> {
        p.grants = crate::grants::compile_all(grants);
        Arc::new(p)
    }

    fn grant(role: &str, projects: &[&str]) -> model::Grant {
        model::Grant {
            role: role.into(),
            projects: projects.iter().map(|p| p.to_string()).collect(),
            conditions: None,
        }
    }

    async fn decide_with(
        authz: &Authz,
        path_and_query: &str,
        who: &Arc<Principal>,
        client: Option<IpAddr>,
    ) -> Result<Permit, AuthzOutcome> {
        let policy = authz.policy();
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let m = policy.enforce.find(&Method::GET, path).unwrap();
        authz
            .authorize(&policy, &m, who, &Attributes { client, query })
            .await
    }

    fn missing_export(r: Result<Permit, AuthzOutcome>) -> bool {
        matches!(
            r,
            Err(AuthzOutcome::Denied(Denied::Missing(
                Permission::ExportCosts
            )))
        )
    }

    #[tokio::test]
    async fn a_grant_counts_only_on_its_projects() {
        let f = fixture().await;
        let who = with_grants(
            principal(TENANT_A, "key-g", &["viewer"]),
            &[grant("admin", &[PROJECT_A])],
        );
        let export = |p: &str| format!("/v1/tenants/{TENANT_A}/projects/{p}/export");
        assert!(
            decide_with(&f.authz, &export(PROJECT_A), &who, None)
                .await
                .is_ok()
        );
        assert!(missing_export(
            decide_with(&f.authz, &export(PROJECT_A2), &who, None).await
        ));
        // Not on the tenant-wide route either.
        assert!(missing_export(
            decide_with(
                &f.authz,
                &format!("/v1/tenants/{TENANT_A}/costs/export"),
                &who,
                None
            )
            .await
        ));
        // A grant never crosses tenants, even on a project id it names.
        let export_b = format!("/v1/tenants/{TENANT_B}/projects/{PROJECT_A}/export");
        assert!(matches!(
            decide_with(&f.authz, &export_b, &who, None).await,
            Err(AuthzOutcome::Denied(Denied::TenantMismatch))
        ));
    }

    #[tokio::test]
    async fn scopes_narrow_what_a_grant_gives() {
        let f = fixture().await;
        let mut p = principal(TENANT_A, "key-g", &["viewer"]);
        p.scopes = Some(Permissions::of(&[Permission::ViewCosts]));
        let who = with_grants(p, &[grant("admin", &[PROJECT_A])]);
        assert!(missing_export(
            decide_with(
                &f.authz,
                &format!("/v1/tenants/{TENANT_A}/projects/{PROJECT_A}/export"),
                &who,
                None
            )
            .await
        ));
    }

    #[tokio::test]
    async fn a_grant_of_a_custom_role_follows_the_role() {
        let f = fixture().await;
        let who = with_grants(
            principal(TENANT_A, "key-g", &["viewer"]),
            &[grant("exporter", &[PROJECT_A])],
        );
        let path = format!("/v1/tenants/{TENANT_A}/projects/{PROJECT_A}/export");
        assert!(missing_export(
            decide_with(&f.authz, &path, &who, None).await
        ));
        f.store
            .put_role(&CustomRole {
                tenant_id: TENANT_A.into(),
                name: "exporter".into(),
                description: String::new(),
                permissions: vec!["export_costs".into()],
                updated_at: model::now(),
            })
            .await
            .unwrap();
        f.authz.forget_tenant(TENANT_A).await;
        assert!(decide_with(&f.authz, &path, &who, None).await.is_ok());
    }

    #[tokio::test]
    async fn project_query_routes_count_grants_on_exactly_one_named_project() {
        let f = fixture().await;
        let who = with_grants(
            principal(TENANT_A, "key-g", &["viewer"]),
            &[grant("admin", &[PROJECT_A])],
        );
        let exports = format!("/v1/tenants/{TENANT_A}/exports");
        assert!(
            decide_with(
                &f.authz,
                &format!("{exports}?project_id={PROJECT_A}"),
                &who,
                None
            )
            .await
            .is_ok()
        );
        for query in [
            String::new(),
            format!("?project_id={PROJECT_A2}"),
            format!("?project_id={PROJECT_A}&project_id={PROJECT_A2}"),
            format!("?project_id={PROJECT_A2}&project_id={PROJECT_A}"),
            format!("?project_id={PROJECT_A}&project%5fid={PROJECT_A2}"),
            "?project_id=proj-%61aaa00a1".to_string(),
            format!("?other={PROJECT_A}"),
        ] {
            assert!(
                missing_export(
                    decide_with(&f.authz, &format!("{exports}{query}"), &who, None).await
                ),
                "{query}"
            );
        }
        // A route without project_query ignores the query.
        assert!(missing_export(
            decide_with(
                &f.authz,
                &format!("/v1/tenants/{TENANT_A}/costs/export?project_id={PROJECT_A}"),
                &who,
                None
            )
            .await
        ));
    }

    #[tokio::test]
    async fn a_network_condition_needs_a_client_inside_it() {
        let f = fixture().await;
        let mut g = grant("admin", &[PROJECT_A]);
        g.conditions = Some(model::GrantConditions {
            networks: vec!["10.0.0.0/8".into()],
            hours_utc: None,
        });
        let who = with_grants(principal(TENANT_A, "key-g", &["viewer"]), &[g]);
        let path = format!("/v1/tenants/{TENANT_A}/projects/{PROJECT_A}/export");
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(
            decide_with(&f.authz, &path, &who, ip("10.9.8.7"))
                .await
                .is_ok()
        );
        assert!(missing_export(
            decide_with(&f.authz, &path, &who, ip("127.0.0.1")).await
        ));
        // No client address: the condition cannot be evaluated.
        assert!(missing_export(
            decide_with(&f.authz, &path, &who, None).await
        ));
    }
}
