//! The admin operations, independent of HTTP (the demo calls them too):
//! [`AdminOps`], what the operations share (the tenant lookup, store
//! errors, and the rule for acting on an identity), and nothing else. The
//! operations themselves are in one file per resource: `tenants`, `keys`,
//! `projects`, `users`, `sessions`, `roles`, `usage`.
//!
//! Every operation validates everything before it writes, and writes
//! once: a rejected request changes nothing. The caller's permission for
//! the operation (system_admin, or a permission within the path's tenant)
//! is checked by the route table before an operation runs
//! (`admin::routes`); an operation checks only what is particular to it:
//! its target (no acting on an identity more powerful than the caller),
//! the roles it grants, the rates it sets. Called directly (the demo), the
//! caller must be one the route would have let through. The reads that
//! need nothing of the caller beyond that check still take it
//! (`_caller`), so every operation is called alike.

use std::sync::Arc;

use super::auth::Caller;
use super::error::ApiError;
use super::requests as req;
use crate::authn::AuthnError;
use crate::authn::api_key::{self, ApiKeys};
use crate::authz::Authz;
use crate::config::{AuthConfig, RateLimitConfig};
use crate::model::{ApiKey, Session, Tenant, User, UserStatus};
use crate::roles::{Permission, Permissions};
use crate::store::{Store, StoreError};
use crate::usage::Usage;

/// The admin API's operations.
#[derive(Clone, Debug)]
pub struct AdminOps {
    pub(super) store: Arc<dyn Store>,
    pub(super) keys: ApiKeys,
    pub(super) authz: Authz,
    pub(super) usage: Usage,
    /// Rotation grace and live keys per tier.
    pub(super) auth: AuthConfig,
    /// The tier rates a key's own rate may only lower.
    pub(super) rates: RateLimitConfig,
    /// Single sign-on's sessions, when configured.
    pub(super) sso: Option<Arc<crate::sso::Sso>>,
    /// Slots for audit reports (each may read a million index entries):
    /// bounded so a few callers cannot occupy the blocking pool.
    report_slots: Arc<tokio::sync::Semaphore>,
    /// The compliance report's inputs (`None`: not offered here).
    pub(super) compliance: Option<Arc<crate::compliance::Compliance>>,
}

/// A time as the API shows it.
pub(super) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A store failure as the API reports it: missing, over a limit, taken, or
/// (anything else) a 500 that names nothing.
pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
        StoreError::LimitReached { what, max } => ApiError::LimitReached(format!(
            "{what} limit reached: the tenant's tier allows {max} {what}s"
        )),
        StoreError::AlreadyExists(what) => ApiError::Conflict(format!("{what} already exists")),
        other => ApiError::Store(other),
    }
}

impl AdminOps {
    /// `auth`: how long an old secret works after a rotation unless the
    /// request says otherwise, and how many keys a tenant may hold;
    /// `rates`: the tenants' rates, which a key's own may only lower.
    pub fn new(
        store: Arc<dyn Store>,
        keys: ApiKeys,
        authz: Authz,
        usage: Usage,
        auth: AuthConfig,
        rates: RateLimitConfig,
    ) -> Self {
        Self {
            store,
            keys,
            authz,
            usage,
            auth,
            rates,
            sso: None,
            report_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            compliance: None,
        }
    }

    /// At most `n` audit reports at once.
    pub fn with_report_limit(mut self, n: usize) -> Self {
        self.report_slots = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// A slot for one audit report, held while it runs; 429 when all are taken.
    pub fn report_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.report_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy("other audit reports are running; try again shortly"))
    }

    /// Offers the compliance report (`GET /admin/v1/compliance`).
    pub fn with_compliance(mut self, compliance: Arc<crate::compliance::Compliance>) -> Self {
        self.compliance = Some(compliance);
        self
    }

    /// Lets the admin API list and revoke single sign-on sessions.
    pub fn with_sso(mut self, sso: Option<Arc<crate::sso::Sso>>) -> Self {
        self.sso = sso;
        self
    }

    /// Whether `tenant_id` names a tenant (a store failure counts as no:
    /// the caller is then recorded as refused, under its own tenant).
    pub async fn tenant_exists(&self, tenant_id: &str) -> bool {
        self.tenant(tenant_id).await.is_ok()
    }

    /// The tenant `tenant_id` names, or 404.
    pub(super) async fn tenant(&self, tenant_id: &str) -> Result<Tenant, ApiError> {
        if !req::is_id(tenant_id) {
            return Err(ApiError::NotFound("tenant not found".into()));
        }
        self.store
            .get_tenant(tenant_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::NotFound("tenant not found".into()))
    }

    /// The permissions `roles` grant in `tenant_id` now.
    pub(super) async fn roles_permissions(
        &self,
        tenant_id: &str,
        roles: &[String],
    ) -> Result<Permissions, ApiError> {
        self.authz
            .roles_permissions(&self.authz.policy(), tenant_id, roles)
            .await
            .map_err(|e| ApiError::Authn(AuthnError::Store(e)))
    }

    /// A key's effective permissions now: its roles' and its grants' (on
    /// any of their projects: acting on a key needs all it can do
    /// somewhere), narrowed by its scopes.
    pub(super) async fn key_permissions(&self, key: &ApiKey) -> Result<Permissions, ApiError> {
        let roles: Vec<String> = key
            .roles
            .iter()
            .cloned()
            .chain(key.grants.iter().map(|g| g.role.clone()))
            .collect();
        let perms = self.roles_permissions(&key.tenant_id, &roles).await?;
        Ok(match api_key::scopes(key) {
            Some(scopes) => perms.intersect(scopes),
            None => perms,
        })
    }

    /// The rule for every action on an existing key, user, session or
    /// custom role: the caller holds at least the target's effective
    /// permissions, so nobody can take over (rotate), silence (revoke) or
    /// reshape (roles) an identity more powerful than their own.
    pub(super) fn may_act_on(
        caller: &Caller,
        target: Permissions,
        what: &str,
    ) -> Result<(), ApiError> {
        if caller.permissions().includes(target) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this {what} has permissions you do not hold"
            )))
        }
    }

    /// The tenant's live single sign-on sessions (none without SSO).
    pub(super) async fn live_sessions(&self, tenant_id: &str) -> Result<Vec<Session>, ApiError> {
        match &self.sso {
            Some(sso) => sso.sessions.list(tenant_id).await.map_err(store_error),
            None => Ok(Vec::new()),
        }
    }

    /// What an identity of the tenant can do now: its stored roles and
    /// grants (on any of their projects) and the roles its live sessions
    /// (`sessions`, the tenant's) carry from the provider. `takeover`: the caller would create or replace the
    /// identity's record; under single sign-on a user id the admin API does
    /// not hold (or holds only as a tombstone) may be an identity whose
    /// provider roles are unknown until it logs in, so taking it over needs
    /// every tenant permission.
    pub(super) async fn identity_permissions(
        &self,
        tenant_id: &str,
        user_id: &str,
        stored: Option<&User>,
        sessions: &[Session],
        takeover: bool,
    ) -> Result<Permissions, ApiError> {
        let stored = stored.filter(|u| u.status != UserStatus::Deleted);
        let mut roles: Vec<String> = stored.map(|u| u.roles.clone()).unwrap_or_default();
        roles.extend(
            stored
                .iter()
                .flat_map(|u| u.grants.iter().map(|g| g.role.clone())),
        );
        for s in sessions.iter().filter(|s| s.user_id == user_id) {
            roles.extend(s.roles.iter().cloned());
        }
        let perms = if takeover && stored.is_none() && self.sso.is_some() {
            Permissions::ALL.without(Permission::SystemAdmin)
        } else {
            Permissions::NONE
        };
        Ok(perms.union(self.roles_permissions(tenant_id, &roles).await?))
    }

    /// The store (the audit queries read its index).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
