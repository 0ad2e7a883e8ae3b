//! The admin API's users as the authority over single sign-on identities.
//!
//! An identity provider says who someone is; the admin API says what they
//! may do here. A user the admin API disabled or deleted cannot log in,
//! and their sessions and tokens stop working; a user it knows gets the
//! roles assigned there (per provider: `role_source`). Roles that reach
//! `system_admin` only through the provider are dropped unless the provider
//! may grant it, judged by the permissions a role resolves to under the
//! current policy, not by its name.
//!
//! Lookups are cached (bounded, TTL); every change through the admin API
//! forgets the user and bumps [`Directory::epoch`], so principals built
//! before it (session and bearer-token caches) are rebuilt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use super::claims::{ClaimError, Identity, Mapping};
use crate::authn::AuthnError;
use crate::authz::Authz;
use crate::config::RoleSource;
use crate::model::{User, UserStatus};
use crate::roles::Permission;
use crate::store::{Store, StoreError};

/// Users as the admin API set them, cached.
#[derive(Debug)]
pub struct Directory {
    store: Arc<dyn Store>,
    authz: Authz,
    /// (tenant, user) → the stored user, or `None` (unknown to the admin API).
    users: Cache<(String, String), Option<Arc<User>>>,
    /// Bumped on every user change: a principal built under an older epoch
    /// is rebuilt before it is used again.
    epoch: AtomicU64,
}

impl Directory {
    /// `capacity`/`ttl` bound the user cache; the TTL is how long another
    /// replica sharing the store may lag behind a change.
    pub fn new(store: Arc<dyn Store>, authz: Authz, capacity: u64, ttl: Duration) -> Self {
        Self {
            store,
            authz,
            users: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The current epoch (see the module doc).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forgets a changed user; cached principals are rebuilt.
    pub async fn forget(&self, tenant_id: &str, user_id: &str) {
        self.users
            .invalidate(&(tenant_id.to_string(), user_id.to_string()))
            .await;
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<Arc<User>>, AuthnError> {
        let key = (tenant_id.to_string(), user_id.to_string());
        let store = self.store.clone();
        self.users
            .try_get_with(key, async move {
                Ok::<_, StoreError>(store.get_user(tenant_id, user_id).await?.map(Arc::new))
            })
            .await
            .map_err(AuthnError::Store)
    }

    /// The identity costguard acts on for what the provider (`mapping`)
    /// said: refused when the admin API disabled or deleted the user; roles
    /// per the provider's `role_source`; provider-given roles that resolve
    /// to `system_admin` dropped unless the provider may grant it.
    pub async fn resolve(
        &self,
        mapping: &Mapping<'_>,
        mut identity: Identity,
    ) -> Result<Identity, AuthnError> {
        let user = self.user(&identity.tenant_id, &identity.user_id).await?;
        if let Some(u) = &user
            && u.status != UserStatus::Active
        {
            return Err(AuthnError::Claims(ClaimError::UserDisabled));
        }
        if !mapping.allow_system_admin {
            let policy = self.authz.policy();
            identity.roles.retain(|r| {
                !policy
                    .role(r)
                    .is_some_and(|p| p.contains(Permission::SystemAdmin))
            });
        }
        if let Some(u) = user {
            match mapping.role_source {
                RoleSource::Idp => {}
                RoleSource::Admin => identity.roles = u.roles.clone(),
                RoleSource::Both => identity.roles.extend(u.roles.iter().cloned()),
            }
            identity.roles.sort();
            identity.roles.dedup();
        }
        Ok(identity)
    }
}
