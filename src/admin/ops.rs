//! The admin operations, independent of HTTP (the demo calls them too).
//! Each checks the caller, validates everything before it writes, and
//! writes once: a rejected request changes nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::requests::{
    self as req, CreateKey, CreateProject, CreateTenant, LimitsPatch, PatchTenant, PutRole,
    PutUser, RotateKey, SettingsPatch,
};
use crate::authn::AuthnError;
use crate::authn::api_key::{self, ApiKeys};
use crate::authz::Authz;
use crate::config::{AuthConfig, RateLimitConfig};
use crate::model::{
    self, ApiKey, CustomRole, KeyStatus, Project, Session, Tenant, TenantLimits, TenantSettings,
    TenantStatus, User, UserStatus,
};
use crate::rate_limit::Rate;
use crate::roles::{Permission, Permissions};
use crate::store::{Store, StoreError};
use crate::usage::{self, Usage};

use Permission as P;

/// Longest grace period a rotation may give the old secret.
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The admin API's operations.
#[derive(Clone, Debug)]
pub struct AdminOps {
    store: Arc<dyn Store>,
    keys: ApiKeys,
    authz: Authz,
    usage: Usage,
    /// Rotation grace and live keys per tier.
    auth: AuthConfig,
    /// The tier rates a key's own rate may only lower.
    rates: RateLimitConfig,
    /// Single sign-on's sessions, when configured.
    sso: Option<Arc<crate::sso::Sso>>,
    /// Slots for audit reports (each may read a million index entries):
    /// bounded so a few callers cannot occupy the blocking pool.
    report_slots: Arc<tokio::sync::Semaphore>,
}

/// A key as the API shows it: never the secret, never a hash.
pub fn key_view(k: &ApiKey) -> Value {
    json!({
        "key_id": k.key_id,
        "tenant_id": k.tenant_id,
        "description": k.description,
        "roles": k.roles,
        "scopes": k.scopes,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "expires_at": k.expires_at.map(rfc3339),
        "status": k.status,
        "created_at": rfc3339(k.created_at),
        "rotated_at": k.rotated_at.map(rfc3339),
        "previous_key_valid_until": k.previous_valid_until.map(rfc3339),
        "created_by": k.created_by,
    })
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn store_error(e: StoreError) -> ApiError {
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

    async fn tenant(&self, tenant_id: &str) -> Result<Tenant, ApiError> {
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
    async fn roles_permissions(
        &self,
        tenant_id: &str,
        roles: &[String],
    ) -> Result<Permissions, ApiError> {
        self.authz
            .roles_permissions(&self.authz.policy(), tenant_id, roles)
            .await
            .map_err(|e| ApiError::Authn(AuthnError::Store(e)))
    }

    /// A key's effective permissions now: its roles', narrowed by its scopes.
    async fn key_permissions(&self, key: &ApiKey) -> Result<Permissions, ApiError> {
        let perms = self.roles_permissions(&key.tenant_id, &key.roles).await?;
        Ok(match api_key::scopes(key) {
            Some(scopes) => perms.intersect(scopes),
            None => perms,
        })
    }

    /// The rule for every action on an existing key, user, session or
    /// custom role: the caller holds at least the target's effective
    /// permissions, so nobody can take over (rotate), silence (revoke) or
    /// reshape (roles) an identity more powerful than their own.
    fn may_act_on(caller: &Caller, target: Permissions, what: &str) -> Result<(), ApiError> {
        if caller.permissions().includes(target) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this {what} has permissions you do not hold"
            )))
        }
    }

    /// The tenant's live single sign-on sessions (none without SSO).
    async fn live_sessions(&self, tenant_id: &str) -> Result<Vec<Session>, ApiError> {
        match &self.sso {
            Some(sso) => sso.sessions.list(tenant_id).await.map_err(store_error),
            None => Ok(Vec::new()),
        }
    }

    /// What an identity of the tenant can do now: its stored roles and the
    /// roles its live sessions (`sessions`, the tenant's) carry from the
    /// provider. `takeover`: the caller would create or replace the
    /// identity's record; under single sign-on a user id the admin API does
    /// not hold (or holds only as a tombstone) may be an identity whose
    /// provider roles are unknown until it logs in, so taking it over needs
    /// every tenant permission.
    async fn identity_permissions(
        &self,
        tenant_id: &str,
        user_id: &str,
        stored: Option<&User>,
        sessions: &[Session],
        takeover: bool,
    ) -> Result<Permissions, ApiError> {
        let stored = stored.filter(|u| u.status != UserStatus::Deleted);
        let mut roles: Vec<String> = stored.map(|u| u.roles.clone()).unwrap_or_default();
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

    /// Refuses a change to `role` while a key, a user, or a signed-in user
    /// (whose provider gave them the role) holding it has permissions the
    /// caller does not.
    async fn may_change_role(
        &self,
        caller: &Caller,
        tenant_id: &str,
        role: &str,
    ) -> Result<(), ApiError> {
        if caller.permissions().includes(Permissions::ALL) {
            return Ok(());
        }
        for key in self.store.list_keys(tenant_id).await.map_err(store_error)? {
            if key.status != KeyStatus::Revoked && key.roles.iter().any(|r| r == role) {
                let held = self.key_permissions(&key).await?;
                Self::may_act_on(caller, held, "role is held by a key that")?;
            }
        }
        let sessions = self.live_sessions(tenant_id).await?;
        let users = self
            .store
            .list_users(tenant_id)
            .await
            .map_err(store_error)?;
        let mut holders: Vec<&str> = users
            .iter()
            .filter(|u| u.roles.iter().any(|r| r == role))
            .map(|u| u.user_id.as_str())
            .collect();
        holders.extend(
            sessions
                .iter()
                .filter(|s| s.roles.iter().any(|r| r == role))
                .map(|s| s.user_id.as_str()),
        );
        holders.sort_unstable();
        holders.dedup();
        for user_id in holders {
            let stored = users.iter().find(|u| u.user_id == user_id);
            let held = self
                .identity_permissions(tenant_id, user_id, stored, &sessions, false)
                .await?;
            Self::may_act_on(caller, held, "role is held by a user who")?;
        }
        Ok(())
    }

    // === tenants ===

    /// Creates a tenant (system_admin).
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        body: CreateTenant,
    ) -> Result<Tenant, ApiError> {
        caller.authorize(None, &[P::SystemAdmin])?;
        let mut limits = body.tier.default_limits();
        apply_limits(&mut limits, body.limits.as_ref())?;
        let mut settings = TenantSettings {
            data_region: "us-east-1".into(),
            encryption_enabled: true,
            audit_logging: true,
            sso_enabled: body.tier == model::Tier::Enterprise,
            custom_domain: None,
        };
        apply_settings(
            &mut settings,
            body.settings.as_ref(),
            body.data_region.as_deref(),
        )?;
        let now = model::now();
        let mut tenant = Tenant {
            tenant_id: model::new_id("org-"),
            organization_name: req::text("organization_name", &body.organization_name, 200)?,
            admin_email: req::email("admin_email", &body.admin_email)?,
            tier: body.tier,
            limits,
            status: TenantStatus::Active,
            settings,
            created_at: now,
            updated_at: now,
        };
        // Ids are 32 random bits: retry the rare collision.
        for _ in 0..3 {
            match self.store.insert_tenant(&tenant).await {
                Err(StoreError::AlreadyExists(_)) => tenant.tenant_id = model::new_id("org-"),
                other => {
                    other.map_err(store_error)?;
                    tracing::info!(tenant_id = %tenant.tenant_id, actor = %caller.actor(), "Tenant created.");
                    return Ok(tenant);
                }
            }
        }
        Err(ApiError::Conflict("could not allocate a tenant id".into()))
    }

    /// All tenants (system_admin).
    pub async fn list_tenants(&self, caller: &Caller) -> Result<Vec<Tenant>, ApiError> {
        caller.authorize(None, &[P::SystemAdmin])?;
        self.store.list_tenants().await.map_err(store_error)
    }

    /// One tenant (system_admin, or the tenant's own administrators).
    pub async fn get_tenant(&self, caller: &Caller, tenant_id: &str) -> Result<Tenant, ApiError> {
        caller.authorize(
            Some(tenant_id),
            &[P::ManageUsers, P::ManageProjects, P::ManageApiKeys],
        )?;
        self.tenant(tenant_id).await
    }

    /// Changes a tenant (system_admin).
    pub async fn patch_tenant(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: PatchTenant,
    ) -> Result<Tenant, ApiError> {
        caller.authorize(None, &[P::SystemAdmin])?;
        let mut t = self.tenant(tenant_id).await?;
        if let Some(name) = &body.organization_name {
            t.organization_name = req::text("organization_name", name, 200)?;
        }
        if let Some(email) = &body.admin_email {
            t.admin_email = req::email("admin_email", email)?;
        }
        if let Some(tier) = body.tier {
            t.tier = tier;
            t.limits = tier.default_limits();
        }
        apply_limits(&mut t.limits, body.limits.as_ref())?;
        apply_settings(
            &mut t.settings,
            body.settings.as_ref(),
            body.data_region.as_deref(),
        )?;
        if let Some(status) = body.status {
            t.status = status;
        }
        t.updated_at = model::now();
        self.store.update_tenant(&t).await.map_err(store_error)?;
        self.keys.forget_tenant(&t.tenant_id).await;
        tracing::info!(tenant_id = %t.tenant_id, actor = %caller.actor(), "Tenant updated.");
        Ok(t)
    }

    /// Deletes a tenant and everything it owns (system_admin). Its keys
    /// stop working at once.
    pub async fn delete_tenant(&self, caller: &Caller, tenant_id: &str) -> Result<(), ApiError> {
        caller.authorize(None, &[P::SystemAdmin])?;
        self.tenant(tenant_id).await?;
        let removed = self
            .store
            .delete_tenant(tenant_id)
            .await
            .map_err(store_error)?;
        self.keys.forget_tenant(tenant_id).await;
        self.keys.forget_hashes(&removed.key_hashes).await;
        self.authz.forget_tenant(tenant_id).await;
        self.usage.forget_tenant(tenant_id);
        tracing::info!(tenant_id = %tenant_id, actor = %caller.actor(), "Tenant deleted.");
        Ok(())
    }

    // === roles ===

    /// The one place roles are granted (to keys and users): each must exist
    /// and be grantable by the caller (its permissions within the caller's).
    /// The audit stage hooks here.
    pub async fn assign_roles(
        &self,
        caller: &Caller,
        tenant_id: &str,
        subject: &str,
        roles: &[String],
    ) -> Result<Vec<String>, ApiError> {
        if roles.len() > 16 {
            return Err(ApiError::bad("at most 16 roles"));
        }
        let policy = self.authz.policy();
        let mut granted: Vec<String> = Vec::with_capacity(roles.len());
        for role in roles {
            let perms = self
                .authz
                .role(&policy, tenant_id, role)
                .await
                .map_err(|e| ApiError::Authn(AuthnError::Store(e)))?;
            let Some(perms) = perms else {
                return Err(ApiError::bad(format!(
                    "unknown role {role:?}: not a policy role nor one of the tenant's roles"
                )));
            };
            if !caller.permissions().includes(perms) {
                return Err(ApiError::forbidden(format!(
                    "you cannot grant role {role:?}: it has permissions you do not"
                )));
            }
            if !granted.contains(role) {
                granted.push(role.clone());
            }
        }
        tracing::info!(tenant_id = %tenant_id, subject = %subject, roles = ?granted, actor = %caller.actor(), "Roles assigned.");
        Ok(granted)
    }

    // === custom roles ===

    /// Creates or replaces a tenant's custom role (manage_users). It may use
    /// only existing permissions the caller holds, never `system_admin`, and
    /// never a policy role's name. Returns it and whether it was created.
    pub async fn put_role(
        &self,
        caller: &Caller,
        tenant_id: &str,
        name: &str,
        body: PutRole,
    ) -> Result<(CustomRole, bool), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        let tenant = self.tenant(tenant_id).await?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ApiError::bad("role names are 1 to 64 of a-z 0-9 _"));
        }
        if self.authz.policy().role(name).is_some() {
            return Err(ApiError::Conflict(format!(
                "{name:?} is a built-in role and cannot be redefined by a tenant"
            )));
        }
        if body.permissions.is_empty() || body.permissions.len() > 13 {
            return Err(ApiError::bad(
                "permissions must list 1 to 13 permission names",
            ));
        }
        let mut perms = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for p in &body.permissions {
            let Some(perm) = Permission::parse(p) else {
                return Err(ApiError::bad(format!("unknown permission {p:?}")));
            };
            if perm == Permission::SystemAdmin {
                return Err(ApiError::forbidden(
                    "a tenant role cannot hold system_admin",
                ));
            }
            perms.push(perm);
            if !names.contains(p) {
                names.push(p.clone());
            }
        }
        if !caller.permissions().includes(Permissions::of(&perms)) {
            return Err(ApiError::forbidden(
                "a role cannot hold permissions you do not have",
            ));
        }
        self.may_change_role(caller, tenant_id, name).await?;
        let role = CustomRole {
            tenant_id: tenant.tenant_id.clone(),
            name: name.to_string(),
            description: if body.description.trim().is_empty() {
                String::new()
            } else {
                req::text("description", &body.description, 500)?
            },
            permissions: names,
            updated_at: model::now(),
        };
        let created = self.store.put_role(&role).await.map_err(store_error)?;
        self.authz.forget_tenant(tenant_id).await;
        tracing::info!(tenant_id = %tenant_id, role = %name, permissions = ?role.permissions, actor = %caller.actor(), "Custom role saved.");
        Ok((role, created))
    }

    /// A tenant's custom roles.
    pub async fn list_roles(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<CustomRole>, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        self.store.list_roles(tenant_id).await.map_err(store_error)
    }

    /// One custom role.
    pub async fn get_role(
        &self,
        caller: &Caller,
        tenant_id: &str,
        name: &str,
    ) -> Result<CustomRole, ApiError> {
        self.list_roles(caller, tenant_id)
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::NotFound("role not found".into()))
    }

    /// Deletes a custom role; keys and users holding it lose its permissions.
    pub async fn delete_role(
        &self,
        caller: &Caller,
        tenant_id: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        if req::is_id(name) {
            self.may_change_role(caller, tenant_id, name).await?;
        }
        if !req::is_id(name)
            || !self
                .store
                .delete_role(tenant_id, name)
                .await
                .map_err(store_error)?
        {
            return Err(ApiError::NotFound("role not found".into()));
        }
        self.authz.forget_tenant(tenant_id).await;
        tracing::info!(tenant_id = %tenant_id, role = %name, actor = %caller.actor(), "Custom role deleted.");
        Ok(())
    }

    // === keys ===

    /// Creates a key; the secret is returned here and never again.
    pub async fn create_key(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: CreateKey,
    ) -> Result<(ApiKey, String), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageApiKeys])?;
        let tenant = self.tenant(tenant_id).await?;
        let description = if body.description.trim().is_empty() {
            String::new()
        } else {
            req::text("description", &body.description, 500)?
        };
        let mut scopes: Vec<String> = Vec::new();
        for s in &body.scopes {
            if Permission::parse(s).is_none() {
                return Err(ApiError::bad(format!(
                    "unknown scope {s:?}: scopes are permission names"
                )));
            }
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        if body.rate_limit_per_minute == Some(0)
            || body.rate_limit_per_minute.is_some_and(|r| r > 1_000_000)
        {
            return Err(ApiError::bad(
                "rate_limit_per_minute must be between 1 and 1000000",
            ));
        }
        // A key's own rate may only lower its tenant's, unless a system
        // admin sets it (their per-key override).
        if !caller.permissions().contains(Permission::SystemAdmin)
            && let (Some(own), Some(ceiling)) = (
                body.rate_limit_per_minute
                    .and_then(std::num::NonZeroU32::new)
                    .map(Rate::per_minute),
                self.rates.tenant_rate(&tenant),
            )
            && !own.at_most(&ceiling)
        {
            return Err(ApiError::bad(format!(
                "rate_limit_per_minute can only lower the tenant's rate of {ceiling}; a system admin can raise the tenant's"
            )));
        }
        let max_keys = self.auth.max_keys_of(&tenant);
        if body
            .expires_at
            .is_some_and(|t| t <= time::OffsetDateTime::now_utc())
        {
            return Err(ApiError::bad("expires_at must be in the future"));
        }
        let key_id = uuid::Uuid::new_v4().to_string();
        let roles = self
            .assign_roles(
                caller,
                tenant_id,
                &key_id,
                body.roles.as_deref().unwrap_or(&["viewer".to_string()]),
            )
            .await?;
        let secret = api_key::generate();
        let key = ApiKey {
            key_id,
            tenant_id: tenant.tenant_id,
            description,
            roles,
            scopes,
            rate_limit_per_minute: body.rate_limit_per_minute,
            expires_at: body.expires_at,
            status: KeyStatus::Active,
            hash: api_key::hash_hex(&secret),
            previous_hash: None,
            previous_valid_until: None,
            created_at: model::now(),
            rotated_at: None,
            created_by: caller.actor(),
        };
        self.store
            .insert_key(&key, max_keys)
            .await
            .map_err(store_error)?;
        self.keys.forget_hashes([&key.hash]).await;
        tracing::info!(tenant_id = %key.tenant_id, key_id = %key.key_id, actor = %caller.actor(), "API key created.");
        Ok((key, secret))
    }

    /// A tenant's keys (no secrets, no hashes).
    pub async fn list_keys(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<ApiKey>, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageApiKeys])?;
        self.tenant(tenant_id).await?;
        self.store.list_keys(tenant_id).await.map_err(store_error)
    }

    async fn key_of(&self, tenant_id: &str, key_id: &str) -> Result<ApiKey, ApiError> {
        self.tenant(tenant_id).await?;
        let key = if req::is_id(key_id) {
            self.store
                .get_key(tenant_id, key_id)
                .await
                .map_err(store_error)?
        } else {
            None
        };
        key.filter(|k| k.tenant_id == tenant_id)
            .ok_or_else(|| ApiError::NotFound("key not found".into()))
    }

    /// Revokes a key: refused from this moment on.
    pub async fn revoke_key(
        &self,
        caller: &Caller,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<ApiKey, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageApiKeys])?;
        let mut key = self.key_of(tenant_id, key_id).await?;
        Self::may_act_on(caller, self.key_permissions(&key).await?, "key")?;
        let hashes: Vec<String> = std::iter::once(key.hash.clone())
            .chain(key.previous_hash.clone())
            .collect();
        key.status = KeyStatus::Revoked;
        key.previous_hash = None;
        key.previous_valid_until = None;
        self.store.update_key(&key).await.map_err(store_error)?;
        self.keys.forget_hashes(&hashes).await;
        tracing::info!(tenant_id = %tenant_id, key_id = %key.key_id, actor = %caller.actor(), "API key revoked.");
        Ok(key)
    }

    /// Issues a new secret under the same key id; the old one keeps working
    /// for the grace period.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        tenant_id: &str,
        key_id: &str,
        body: RotateKey,
    ) -> Result<(ApiKey, String), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageApiKeys])?;
        let grace = match body.grace_seconds {
            Some(s) if Duration::from_secs(s) > MAX_GRACE => {
                return Err(ApiError::bad(format!(
                    "grace_seconds must be at most {}",
                    MAX_GRACE.as_secs()
                )));
            }
            Some(s) => Duration::from_secs(s),
            None => self.auth.rotation_grace,
        };
        let mut key = self.key_of(tenant_id, key_id).await?;
        Self::may_act_on(caller, self.key_permissions(&key).await?, "key")?;
        if key.status == KeyStatus::Revoked {
            return Err(ApiError::Conflict("a revoked key cannot be rotated".into()));
        }
        let mut stale: Vec<String> = vec![key.hash.clone()];
        stale.extend(key.previous_hash.clone());
        let secret = api_key::generate();
        let now = model::now();
        if grace.is_zero() {
            key.previous_hash = None;
            key.previous_valid_until = None;
        } else {
            key.previous_hash = Some(key.hash.clone());
            key.previous_valid_until = Some(now + grace);
        }
        key.hash = api_key::hash_hex(&secret);
        key.rotated_at = Some(now);
        self.store.update_key(&key).await.map_err(store_error)?;
        stale.push(key.hash.clone());
        self.keys.forget_hashes(&stale).await;
        tracing::info!(tenant_id = %tenant_id, key_id = %key.key_id, grace = ?grace, actor = %caller.actor(), "API key rotated.");
        Ok((key, secret))
    }

    // === projects ===

    /// Creates a project, within the tier's `max_projects`.
    pub async fn create_project(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: CreateProject,
    ) -> Result<Project, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageProjects])?;
        let tenant = self.tenant(tenant_id).await?;
        let mut project = Project {
            project_id: model::new_id("proj-"),
            tenant_id: tenant.tenant_id.clone(),
            name: req::text("name", &body.name, 200)?,
            budget: req::amount("budget", body.budget, false)?,
            created_at: model::now(),
        };
        for _ in 0..3 {
            match self
                .store
                .insert_project(&project, tenant.limits.max_projects)
                .await
            {
                Err(StoreError::AlreadyExists(_)) => project.project_id = model::new_id("proj-"),
                other => {
                    other.map_err(store_error)?;
                    tracing::info!(tenant_id = %tenant_id, project_id = %project.project_id, actor = %caller.actor(), "Project created.");
                    return Ok(project);
                }
            }
        }
        Err(ApiError::Conflict("could not allocate a project id".into()))
    }

    /// A tenant's projects.
    pub async fn list_projects(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<Project>, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageProjects])?;
        self.tenant(tenant_id).await?;
        self.store
            .list_projects(tenant_id)
            .await
            .map_err(store_error)
    }

    // === users ===

    /// Creates or replaces a user (within `max_users` when creating).
    /// Returns the user and whether it was created.
    pub async fn put_user(
        &self,
        caller: &Caller,
        tenant_id: &str,
        user_id: &str,
        body: PutUser,
    ) -> Result<(User, bool), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        if !req::is_id(user_id) {
            return Err(ApiError::bad(
                "user_id must be 1 to 128 of A-Z a-z 0-9 . _ @ -",
            ));
        }
        let tenant = self.tenant(tenant_id).await?;
        let email = req::email("email", &body.email)?;
        let old = self
            .store
            .get_user(tenant_id, user_id)
            .await
            .map_err(store_error)?;
        let sessions = self.live_sessions(tenant_id).await?;
        let held = self
            .identity_permissions(tenant_id, user_id, old.as_ref(), &sessions, true)
            .await?;
        Self::may_act_on(caller, held, "user")?;
        let roles = self
            .assign_roles(caller, tenant_id, user_id, &body.roles)
            .await?;
        let user = User {
            user_id: user_id.to_string(),
            tenant_id: tenant.tenant_id.clone(),
            email,
            roles,
            status: if body.disabled {
                UserStatus::Disabled
            } else {
                UserStatus::Active
            },
            updated_at: model::now(),
        };
        let created = self
            .store
            .put_user(&user, tenant.limits.max_users)
            .await
            .map_err(store_error)?;
        if let Some(sso) = &self.sso {
            sso.forget_user(tenant_id, user_id).await;
        }
        Ok((user, created))
    }

    /// A tenant's users.
    pub async fn list_users(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<User>, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        self.store.list_users(tenant_id).await.map_err(store_error)
    }

    /// Removes a user.
    pub async fn delete_user(
        &self,
        caller: &Caller,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        let user = if req::is_id(user_id) {
            self.store
                .get_user(tenant_id, user_id)
                .await
                .map_err(store_error)?
        } else {
            None
        }
        .filter(|u| u.status != UserStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound("user not found".into()))?;
        let sessions = self.live_sessions(tenant_id).await?;
        let held = self
            .identity_permissions(tenant_id, user_id, Some(&user), &sessions, false)
            .await?;
        Self::may_act_on(caller, held, "user")?;
        if !self
            .store
            .delete_user(tenant_id, user_id)
            .await
            .map_err(store_error)?
        {
            return Err(ApiError::NotFound("user not found".into()));
        }
        // A deleted user's browser sessions end with them; cached tokens
        // are checked against the store again.
        if let Some(sso) = &self.sso {
            sso.forget_user(tenant_id, user_id).await;
            for s in sessions.iter().filter(|s| s.user_id == user_id) {
                sso.sessions
                    .end(tenant_id, &s.session_id)
                    .await
                    .map_err(store_error)?;
            }
        }
        tracing::info!(tenant_id = %tenant_id, user_id = %user_id, actor = %caller.actor(), "User deleted.");
        Ok(())
    }

    // === sessions ===

    /// A tenant's live SSO sessions (never a secret: no cookie hash, no
    /// provider token).
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<Value>, ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        let Some(sso) = &self.sso else {
            return Ok(Vec::new());
        };
        let sessions = sso.sessions.list(tenant_id).await.map_err(store_error)?;
        Ok(sessions
            .iter()
            .map(|s| {
                json!({
                    "session_id": s.session_id,
                    "tenant_id": s.tenant_id,
                    "user_id": s.user_id,
                    "email": s.email,
                    "roles": s.roles,
                    "auth_method": s.auth_method,
                    "provider": s.provider,
                    "created_at": s.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                    "expires_at": s.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Ends a session at once (on this instance; other replicas within
    /// their session cache's 30 s).
    pub async fn revoke_session(
        &self,
        caller: &Caller,
        tenant_id: &str,
        session_id: &str,
    ) -> Result<(), ApiError> {
        caller.authorize(Some(tenant_id), &[P::ManageUsers])?;
        self.tenant(tenant_id).await?;
        let ended = match &self.sso {
            Some(sso) if req::is_id(session_id) => {
                let sessions = sso.sessions.list(tenant_id).await.map_err(store_error)?;
                if let Some(s) = sessions.iter().find(|s| s.session_id == session_id) {
                    let stored = self
                        .store
                        .get_user(tenant_id, &s.user_id)
                        .await
                        .map_err(store_error)?;
                    let held = self
                        .identity_permissions(
                            tenant_id,
                            &s.user_id,
                            stored.as_ref(),
                            &sessions,
                            false,
                        )
                        .await?;
                    Self::may_act_on(caller, held, "session")?;
                }
                sso.sessions
                    .end(tenant_id, session_id)
                    .await
                    .map_err(store_error)?
            }
            _ => false,
        };
        if !ended {
            return Err(ApiError::NotFound("session not found".into()));
        }
        tracing::info!(tenant_id = %tenant_id, session_id = %session_id, actor = %caller.actor(), "Session revoked.");
        Ok(())
    }

    /// The store (the audit queries read its index).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // === usage ===

    /// Real counters and utilisation against the tier's limits.
    pub async fn usage(&self, caller: &Caller, tenant_id: &str) -> Result<Value, ApiError> {
        caller.authorize(
            Some(tenant_id),
            &[P::ManageUsers, P::ManageProjects, P::ManageApiKeys],
        )?;
        let t = self.tenant(tenant_id).await?;
        let day = usage::today();
        let requests = self
            .usage
            .requests_on(tenant_id, day)
            .await
            .map_err(store_error)?;
        let projects = self
            .store
            .list_projects(tenant_id)
            .await
            .map_err(store_error)?;
        let month = usage::this_month();
        let spend = self
            .usage
            .spend_in(tenant_id, None, month)
            .await
            .map_err(store_error)?;
        let mut project_spend = serde_json::Map::new();
        for p in &projects {
            let spent = self
                .usage
                .spend_in(tenant_id, Some(&p.project_id), month)
                .await
                .map_err(store_error)?;
            project_spend.insert(
                p.project_id.clone(),
                json!({
                    "name": p.name,
                    "spend_usd": usage::usd(spent),
                    "budget_usd": p.budget,
                    "utilization": pct_of(spent, usage::limit_micros(p.budget)),
                }),
            );
        }
        let projects = projects.len() as u64;
        let users = self
            .store
            .list_users(tenant_id)
            .await
            .map_err(store_error)?
            .len() as u64;
        let pct = |used: u64, max: i64| pct_of(used, u64::try_from(max).ok());
        let date = usage::day_name(day);
        Ok(json!({
            "tenant_id": t.tenant_id,
            "organization": t.organization_name,
            "tier": t.tier,
            "date": date,
            "requests_today": requests,
            "projects": projects,
            "users": users,
            "month": usage::month_name(month),
            "spend_usd": usage::usd(spend),
            "project_spend": project_spend,
            "limits": t.limits,
            "utilization": {
                "requests": pct(requests, t.limits.max_requests_per_day),
                "projects": pct(projects, t.limits.max_projects),
                "users": pct(users, t.limits.max_users),
                "cost": pct_of(spend, usage::limit_micros(t.limits.max_monthly_cost)),
            }
        }))
    }
}

fn apply_limits(limits: &mut TenantLimits, patch: Option<&LimitsPatch>) -> Result<(), ApiError> {
    let Some(p) = patch else { return Ok(()) };
    if let Some(v) = p.max_requests_per_day {
        limits.max_requests_per_day = req::limit("max_requests_per_day", v)?;
    }
    if let Some(v) = p.max_projects {
        limits.max_projects = req::limit("max_projects", v)?;
    }
    if let Some(v) = p.max_users {
        limits.max_users = req::limit("max_users", v)?;
    }
    if let Some(v) = p.max_monthly_cost {
        limits.max_monthly_cost = req::amount("limits.max_monthly_cost", v, true)?;
    }
    if let Some(v) = p.retention_days {
        if !(1..=3650).contains(&v) {
            return Err(ApiError::bad(
                "limits.retention_days must be between 1 and 3650",
            ));
        }
        limits.retention_days = v;
    }
    if let Some(v) = p.rate_limit_per_minute {
        if v > 1_000_000 {
            return Err(ApiError::bad(
                "limits.rate_limit_per_minute must be at most 1000000 (0: the tier's rate)",
            ));
        }
        limits.rate_limit_per_minute = (v > 0).then_some(v);
    }
    if let Some(v) = p.max_api_keys {
        limits.max_api_keys = Some(req::limit("max_api_keys", v)?);
    }
    Ok(())
}

fn apply_settings(
    s: &mut TenantSettings,
    patch: Option<&SettingsPatch>,
    data_region: Option<&str>,
) -> Result<(), ApiError> {
    let region = data_region.or(patch.and_then(|p| p.data_region.as_deref()));
    if let Some(r) = region {
        if !req::is_id(r) {
            return Err(ApiError::bad(
                "data_region must be 1 to 128 of A-Z a-z 0-9 . _ -",
            ));
        }
        s.data_region = r.to_string();
    }
    let Some(p) = patch else { return Ok(()) };
    if let Some(v) = p.encryption_enabled {
        s.encryption_enabled = v;
    }
    if let Some(v) = p.audit_logging {
        s.audit_logging = v;
    }
    if let Some(v) = p.sso_enabled {
        s.sso_enabled = v;
    }
    if let Some(domain) = &p.custom_domain {
        s.custom_domain = match domain {
            Some(d) => Some(req::text("settings.custom_domain", d, 253)?),
            None => None,
        };
    }
    Ok(())
}

/// `used` as a percentage of `limit` (two decimals); `null` when unlimited.
fn pct_of(used: u64, limit: Option<u64>) -> Value {
    match limit {
        None => Value::Null,
        Some(0) => json!(if used == 0 { 0.0 } else { 100.0 }),
        Some(max) => json!(((used as f64 / max as f64) * 10_000.0).round() / 100.0),
    }
}
