//! Users of a tenant (`/admin/v1/tenants/{tenant}/users[/{user}]`):
//! create or replace (within `max_users`), list, delete (their single
//! sign-on sessions end with them).

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use super::requests::{self as req, PutUser};
use crate::model::{self, User, UserStatus};

impl AdminOps {
    /// Creates or replaces a user (within `max_users` when creating).
    /// Returns the user and whether it was created.
    pub async fn put_user(
        &self,
        caller: &Caller,
        tenant_id: &str,
        user_id: &str,
        body: PutUser,
    ) -> Result<(User, bool), ApiError> {
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
        let grants = self
            .assign_grants(caller, tenant_id, user_id, &body.grants)
            .await?;
        let user = User {
            user_id: user_id.to_string(),
            tenant_id: tenant.tenant_id.clone(),
            email,
            roles,
            grants,
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
    pub async fn list_users(&self, tenant_id: &str) -> Result<Vec<User>, ApiError> {
        self.tenant(tenant_id).await?;
        self.store.list_users(tenant_id).await.map_err(store_error)
    }

    /// A deleted user's tombstone (what the store keeps of them: id,
    /// email, status `deleted`), if `user_id` was deleted: a `DELETE` of
    /// it runs the audit erasure again (finishing one a crash cut short).
    pub async fn deleted_user(&self, tenant_id: &str, user_id: &str) -> Option<User> {
        if !req::is_id(user_id) {
            return None;
        }
        self.store
            .get_user(tenant_id, user_id)
            .await
            .ok()
            .flatten()
            .filter(|u| u.status == UserStatus::Deleted)
    }

    /// Removes a user; returns them as they were (the audit erasure needs
    /// their email).
    pub async fn delete_user(
        &self,
        caller: &Caller,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<User, ApiError> {
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
        // The id is personal data the audit erasure removes from the log:
        // not repeated in the process log either.
        tracing::info!(tenant_id = %tenant_id, actor = %caller.actor(), "User deleted.");
        Ok(user)
    }
}
