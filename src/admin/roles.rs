//! Roles: the one place roles are granted to keys and users, tenant-wide
//! ([`AdminOps::assign_roles`]) or on some projects
//! ([`AdminOps::assign_grants`]), under one rule (`grantable`); and a
//! tenant's custom roles (`/admin/v1/tenants/{tenant}/roles[/{name}]`):
//! define, list, read, delete, never beyond what the caller holds nor
//! under a key or user more powerful than the caller.

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use super::requests::{self as req, PutRole};
use crate::authn::AuthnError;
use crate::authz::policy::Policy;
use crate::grants;
use crate::model::{self, CustomRole, Grant, GrantConditions, KeyStatus};
use crate::roles::{Permission, Permissions};

impl AdminOps {
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
            self.grantable(caller, &policy, tenant_id, role).await?;
            if !granted.contains(role) {
                granted.push(role.clone());
            }
        }
        tracing::info!(tenant_id = %tenant_id, subject = %subject, roles = ?granted, actor = %caller.actor(), "Roles assigned.");
        Ok(granted)
    }

    /// The rule for granting `role` to anyone, tenant-wide or on some
    /// projects: it exists (a policy role, else the tenant's) and its
    /// permissions are within the caller's. Returns its permissions.
    async fn grantable(
        &self,
        caller: &Caller,
        policy: &Policy,
        tenant_id: &str,
        role: &str,
    ) -> Result<Permissions, ApiError> {
        let perms = self
            .authz
            .role(policy, tenant_id, role)
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
        Ok(perms)
    }

    /// The one place project-scoped grants are given (to keys and users):
    /// each role as [`Self::assign_roles`] would allow it, never one
    /// holding `system_admin` (crossing tenants is not project-scoped);
    /// each project a `proj-` id of this tenant's (another tenant's project
    /// is refused exactly like one that does not exist); conditions well
    /// formed; no duplicate project in a grant nor two identical grants;
    /// within the bounds of [`grants`]. Returns them normalised
    /// (networks as `addr/len`, an empty `conditions` dropped).
    pub async fn assign_grants(
        &self,
        caller: &Caller,
        tenant_id: &str,
        subject: &str,
        requested: &[Grant],
    ) -> Result<Vec<Grant>, ApiError> {
        if requested.len() > grants::MAX_GRANTS {
            return Err(ApiError::bad(format!(
                "at most {} grants",
                grants::MAX_GRANTS
            )));
        }
        let policy = self.authz.policy();
        let mut out: Vec<Grant> = Vec::with_capacity(requested.len());
        // Checked in two passes: everything that needs no store first, so
        // a malformed request is refused before any lookup.
        for g in requested {
            let role = &g.role;
            if g.projects.is_empty() || g.projects.len() > grants::MAX_PROJECTS {
                return Err(ApiError::bad(format!(
                    "grant of {role:?}: projects must list 1 to {} project ids",
                    grants::MAX_PROJECTS
                )));
            }
            let mut projects: Vec<String> = Vec::with_capacity(g.projects.len());
            for p in &g.projects {
                if !model::is_project_id(p) {
                    return Err(ApiError::bad(format!(
                        "grant of {role:?}: {p:?} is not a project id (proj-…)"
                    )));
                }
                if projects.contains(p) {
                    return Err(ApiError::bad(format!(
                        "grant of {role:?}: project {p:?} is listed twice"
                    )));
                }
                projects.push(p.clone());
            }
            let conditions = match &g.conditions {
                None => None,
                Some(c) => {
                    if c.networks.len() > grants::MAX_NETWORKS {
                        return Err(ApiError::bad(format!(
                            "grant of {role:?}: at most {} networks",
                            grants::MAX_NETWORKS
                        )));
                    }
                    let mut networks = Vec::with_capacity(c.networks.len());
                    for n in &c.networks {
                        let Some(net) = grants::parse_network(n) else {
                            return Err(ApiError::bad(format!(
                                "grant of {role:?}: {n:?} is not a network (CIDR such as 10.0.0.0/8, or one address)"
                            )));
                        };
                        networks.push(net.to_string());
                    }
                    if !grants::is_hours_ok(c.hours_utc) {
                        return Err(ApiError::bad(format!(
                            "grant of {role:?}: hours_utc needs start and end hours 0-23, not equal"
                        )));
                    }
                    let c = GrantConditions {
                        networks,
                        hours_utc: c.hours_utc,
                    };
                    (c != GrantConditions::default()).then_some(c)
                }
            };
            let grant = Grant {
                role: role.clone(),
                projects,
                conditions,
            };
            if out.contains(&grant) {
                return Err(ApiError::bad(format!("grant of {role:?} is listed twice")));
            }
            out.push(grant);
        }
        for g in &out {
            let perms = self.grantable(caller, &policy, tenant_id, &g.role).await?;
            if perms.contains(Permission::SystemAdmin) {
                return Err(ApiError::bad(format!(
                    "role {:?} holds system_admin, which is not project-scoped: grant it tenant-wide or not at all",
                    g.role
                )));
            }
            for p in &g.projects {
                let found = self
                    .store
                    .get_project(tenant_id, p)
                    .await
                    .map_err(store_error)?
                    .filter(|found| found.tenant_id == tenant_id);
                if found.is_none() {
                    return Err(ApiError::bad(format!(
                        "grant of {:?}: {p:?} is not a project of this tenant",
                        g.role
                    )));
                }
            }
        }
        if !out.is_empty() {
            tracing::info!(tenant_id = %tenant_id, subject = %subject, grants = ?out, actor = %caller.actor(), "Project grants assigned.");
        }
        Ok(out)
    }

    /// Creates or replaces a tenant's custom role. It may use only existing
    /// permissions the caller holds, never `system_admin`, and never a
    /// policy role's name. Returns it and whether it was created.
    pub async fn put_role(
        &self,
        caller: &Caller,
        tenant_id: &str,
        name: &str,
        body: PutRole,
    ) -> Result<(CustomRole, bool), ApiError> {
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
    pub async fn list_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, ApiError> {
        self.tenant(tenant_id).await?;
        self.store.list_roles(tenant_id).await.map_err(store_error)
    }

    /// One custom role.
    pub async fn get_role(&self, tenant_id: &str, name: &str) -> Result<CustomRole, ApiError> {
        self.list_roles(tenant_id)
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
            if key.status != KeyStatus::Revoked && holds(&key.roles, &key.grants, role) {
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
            .filter(|u| holds(&u.roles, &u.grants, role))
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
}

/// Whether an identity with `roles` and `grants` holds `role` anywhere.
fn holds(roles: &[String], grants: &[Grant], role: &str) -> bool {
    roles.iter().any(|r| r == role) || grants.iter().any(|g| g.role == role)
}
