//! Tenants: create, list, read, change (tier, limits, settings, status)
//! and delete (`/admin/v1/tenants[/{tenant}]`), and how a request's limits
//! and settings overrides apply.

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use super::requests::{self as req, CreateTenant, LimitsPatch, PatchTenant, SettingsPatch};
use crate::model::{self, Tenant, TenantLimits, TenantSettings, TenantStatus};
use crate::store::StoreError;

impl AdminOps {
    /// Creates a tenant.
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        body: CreateTenant,
    ) -> Result<Tenant, ApiError> {
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

    /// All tenants.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ApiError> {
        self.store.list_tenants().await.map_err(store_error)
    }

    /// One tenant.
    pub async fn get_tenant(&self, tenant_id: &str) -> Result<Tenant, ApiError> {
        self.tenant(tenant_id).await
    }

    /// Changes a tenant.
    pub async fn patch_tenant(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: PatchTenant,
    ) -> Result<Tenant, ApiError> {
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

    /// Deletes a tenant and everything it owns. Its keys stop working at
    /// once.
    pub async fn delete_tenant(&self, caller: &Caller, tenant_id: &str) -> Result<(), ApiError> {
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
}

/// Applies a request's limit overrides (-1: unlimited), each checked.
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

/// Applies a request's settings overrides; `data_region` (the shortcut)
/// wins over `settings.data_region`.
fn apply_settings(
    s: &mut TenantSettings,
    patch: Option<&SettingsPatch>,
    data_region: Option<&str>,
) -> Result<(), ApiError> {
    let region = data_region.or(patch.and_then(|p| p.data_region.as_deref()));
    if let Some(r) = region {
        if !model::is_region(r) {
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
