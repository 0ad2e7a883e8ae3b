//! API keys of a tenant (`/admin/v1/tenants/{tenant}/keys[/{key}[/rotate]]`):
//! create (the secret is shown once), list, revoke, rotate with a grace
//! period, and the one view of a key the API shows (never a secret or a
//! hash).

use std::time::Duration;

use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, rfc3339, store_error};
use super::requests::{self as req, CreateKey, RotateKey};
use crate::authn::api_key;
use crate::model::{self, ApiKey, KeyStatus};
use crate::rate_limit::Rate;
use crate::roles::Permission;

/// Longest grace period a rotation may give the old secret.
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A key as the API shows it: never the secret, never a hash.
pub(super) fn key_view(k: &ApiKey) -> Value {
    json!({
        "key_id": k.key_id,
        "tenant_id": k.tenant_id,
        "description": k.description,
        "roles": k.roles,
        "grants": k.grants,
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

impl AdminOps {
    /// Creates a key; the secret is returned here and never again.
    pub async fn create_key(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: CreateKey,
    ) -> Result<(ApiKey, String), ApiError> {
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
        let grants = self
            .assign_grants(caller, tenant_id, &key_id, &body.grants)
            .await?;
        let secret = api_key::generate();
        let key = ApiKey {
            key_id,
            tenant_id: tenant.tenant_id,
            description,
            roles,
            grants,
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
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, ApiError> {
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
}
