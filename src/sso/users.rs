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
//! bumps its tenant's [`Directory::epoch`], so that tenant's principals
//! built before it (session and bearer-token caches) and user lookups
//! loaded before it are rebuilt; other tenants' are untouched.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use moka::future::Cache;

use super::claims::{ClaimError, Identity};
use crate::authn::AuthnError;
use crate::authz::Authz;
use crate::config::{IdentityMapping, RoleSource};
use crate::model::{User, UserStatus};
use crate::roles::Permission;
use crate::store::{Store, StoreError};

/// A cached user lookup: the tenant's epoch when it started, and the
/// stored user (`None`: unknown to the admin API).
type Lookup = (u64, Option<Arc<User>>);

/// Users as the admin API set them, cached.
#[derive(Debug)]
pub struct Directory {
    store: Arc<dyn Store>,
    authz: Authz,
    /// (tenant, user) → the tenant's epoch when the lookup started, and the
    /// stored user or `None` (unknown to the admin API). A value from an
    /// older epoch is read again: a lookup racing a change cannot keep the
    /// user as it was before.
    users: Cache<(String, String), Lookup>,
    /// Tenant → bumped on each of its user changes: a principal built
    /// under an older epoch is rebuilt before it is used again. One entry
    /// per tenant whose users changed since the start.
    epochs: DashMap<String, u64>,
    /// Hits and misses of `users`, for `/metrics`.
    pub stats: crate::metrics::CacheStats,
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
            epochs: DashMap::new(),
            stats: Default::default(),
        }
    }

    /// The tenant's current epoch (see the module doc).
    pub fn epoch(&self, tenant_id: &str) -> u64 {
        self.epochs.get(tenant_id).map_or(0, |e| *e)
    }

    /// Forgets a changed user (call after the store has the change): the
    /// tenant's cached principals are rebuilt.
    pub async fn forget(&self, tenant_id: &str, user_id: &str) {
        *self.epochs.entry(tenant_id.to_string()).or_insert(0) += 1;
        self.users
            .invalidate(&(tenant_id.to_string(), user_id.to_string()))
            .await;
    }

    async fn user(
        &self,
        tenant_id: &str,
        user_id: &str,
        epoch: u64,
    ) -> Result<Option<Arc<User>>, AuthnError> {
        let key = (tenant_id.to_string(), user_id.to_string());
        if let Some((at, user)) = self.users.get(&key).await
            && at == epoch
        {
            self.stats.hit();
            return Ok(user);
        }
        self.stats.miss();
        let user = self
            .store
            .get_user(tenant_id, user_id)
            .await
            .map_err(|e: StoreError| AuthnError::Store(Arc::new(e)))?
            .map(Arc::new);
        self.users.insert(key, (epoch, user.clone())).await;
        Ok(user)
    }

    /// The identity costguard acts on for what the provider (`mapping`)
    /// said: refused when the admin API disabled or deleted the user; roles
    /// per the provider's `role_source`; provider-given roles that resolve
    /// to `system_admin` dropped unless the provider may grant it. Also
    /// returns the tenant's epoch it was resolved under (read before the
    /// lookup), for the caller's cache.
    pub async fn resolve(
        &self,
        mapping: &IdentityMapping,
        mut identity: Identity,
    ) -> Result<(Identity, u64), AuthnError> {
        let epoch = self.epoch(&identity.tenant_id);
        let user = self
            .user(&identity.tenant_id, &identity.user_id, epoch)
            .await?;
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
            // Grants follow the admin API's roles: where the provider
            // alone decides roles, the admin API's grants do not count
            // either.
            match mapping.role_source() {
                RoleSource::Idp => {}
                RoleSource::Admin => {
                    identity.roles = u.roles.clone();
                    identity.grants = u.grants.clone();
                }
                RoleSource::Both => {
                    identity.roles.extend(u.roles.iter().cloned());
                    identity.grants = u.grants.clone();
                }
            }
            identity.roles.sort();
            identity.roles.dedup();
        }
        Ok((identity, epoch))
    }
}

#[cfg(test)]
mod tests {
    //! A single sign-on user's project-scoped grants: they come from the
    //! admin API's user (never the provider), follow `role_source`, and
    //! count on the user's principal like a key's.

    use super::*;
    use crate::authz::tests::{PROJECT_A, PROJECT_A2, TENANT_A, fixture};
    use crate::authz::{Attributes, AuthzOutcome, Denied};
    use crate::model::{self, Grant};
    use crate::principal::AuthMethod;
    use crate::roles::Permission;

    fn identity() -> Identity {
        Identity {
            tenant_id: TENANT_A.into(),
            user_id: "alice".into(),
            email: None,
            roles: vec!["viewer".into()],
            grants: Vec::new(),
        }
    }

    fn mapping(role_source: &str) -> IdentityMapping {
        IdentityMapping {
            tenant: None,
            sources: crate::config::Sources {
                tenant: Some("tenant_id".into()),
                roles: Some("roles".into()),
                groups: None,
                email: "email".into(),
                user: "sub".into(),
            },
            email_domains: Default::default(),
            group_roles: Default::default(),
            default_roles: Vec::new(),
            allow_system_admin: false,
            role_source: role_source.into(),
        }
    }

    #[tokio::test]
    async fn a_users_grants_reach_its_principal_and_count_on_their_projects_only() {
        let f = fixture().await;
        f.store
            .put_user(
                &User {
                    user_id: "alice".into(),
                    tenant_id: TENANT_A.into(),
                    email: "alice@example.com".into(),
                    roles: vec!["viewer".into()],
                    grants: vec![Grant {
                        role: "admin".into(),
                        projects: vec![PROJECT_A.into()],
                        conditions: None,
                    }],
                    status: UserStatus::Active,
                    updated_at: model::now(),
                },
                -1,
            )
            .await
            .unwrap();
        let dir = Directory::new(
            f.store.clone(),
            f.authz.clone(),
            100,
            Duration::from_secs(60),
        );
        // The provider's word alone: the admin API's grants do not count.
        let (idp, _) = dir.resolve(&mapping("idp"), identity()).await.unwrap();
        assert!(idp.grants.is_empty());
        let (both, _) = dir.resolve(&mapping("both"), identity()).await.unwrap();
        assert_eq!(both.grants.len(), 1);
        let (resolved, _) = dir.resolve(&mapping(""), identity()).await.unwrap();
        assert_eq!(resolved.grants.len(), 1);

        let who = crate::sso::principal(&resolved, AuthMethod::Oidc).unwrap();
        let policy = f.authz.policy();
        let decide = |project: &str| {
            let path = format!("/v1/tenants/{TENANT_A}/projects/{project}/export");
            let (authz, policy, who) = (&f.authz, &policy, &who);
            async move {
                let m = policy.enforce.find(&http::Method::GET, &path).unwrap();
                authz
                    .authorize(policy, &m, who, &Attributes::default())
                    .await
                    .map(|_| ())
            }
        };
        assert!(decide(PROJECT_A).await.is_ok());
        assert!(matches!(
            decide(PROJECT_A2).await,
            Err(AuthzOutcome::Denied(Denied::Missing(
                Permission::ExportCosts
            )))
        ));
    }
}
