//! `costguard demo`: the seed's two example tenants, their three projects,
//! and one fresh key per seed role, created through the admin operations
//! (so everything the demo shows is real: real keys, real counters).
//! Running the demo again reuses the tenants and projects and replaces the
//! demo keys (the old ones are revoked: their secrets were shown once).

use crate::admin::ApiError;
use crate::admin::auth::Caller;
use crate::admin::ops::AdminOps;
use crate::admin::requests::{CreateKey, CreateProject, CreateTenant};
use crate::model::{KeyStatus, Tier};
use crate::roles::BUILT_IN;

const DEMO_KEY: &str = "demo key";

/// A key the demo created.
#[derive(Debug)]
pub struct DemoKey {
    /// Tenant id.
    pub tenant_id: String,
    /// Organization name.
    pub organization: String,
    /// Its one role.
    pub role: String,
    /// The secret (shown once).
    pub secret: String,
}

/// Seeds (or refreshes) the demo data; returns the new keys.
pub async fn seed(ops: &AdminOps) -> Result<Vec<DemoKey>, ApiError> {
    let root = Caller::Root;
    let acme = tenant(ops, "Acme Corporation", "admin@acme.com", Tier::Enterprise).await?;
    let startup = tenant(ops, "Startup Inc", "founder@startup.com", Tier::Standard).await?;
    project(ops, &acme, "Customer Support Bot", 5000.0).await?;
    project(ops, &acme, "Content Generation", 3000.0).await?;
    project(ops, &startup, "MVP Chatbot", 500.0).await?;

    let mut keys = Vec::new();
    for (tenant_id, organization) in [(&acme, "Acme Corporation"), (&startup, "Startup Inc")] {
        for old in ops.list_keys(tenant_id).await? {
            if old.description.starts_with(DEMO_KEY) && old.status == KeyStatus::Active {
                ops.revoke_key(&root, tenant_id, &old.key_id).await?;
            }
        }
        let roles: Vec<&str> = if tenant_id == &acme {
            BUILT_IN.iter().map(|(name, _, _)| *name).collect()
        } else {
            vec!["admin"]
        };
        for role in roles {
            let (_, secret) = ops
                .create_key(
                    &root,
                    tenant_id,
                    CreateKey {
                        description: format!("{DEMO_KEY}: {role}"),
                        roles: Some(vec![role.to_string()]),
                        grants: vec![],
                        scopes: vec![],
                        rate_limit_per_minute: None,
                        expires_at: None,
                    },
                )
                .await?;
            keys.push(DemoKey {
                tenant_id: tenant_id.clone(),
                organization: organization.to_string(),
                role: role.to_string(),
                secret,
            });
        }
    }
    Ok(keys)
}

async fn tenant(ops: &AdminOps, name: &str, email: &str, tier: Tier) -> Result<String, ApiError> {
    let root = Caller::Root;
    if let Some(t) = ops
        .list_tenants()
        .await?
        .into_iter()
        .find(|t| t.organization_name == name)
    {
        return Ok(t.tenant_id);
    }
    let body = CreateTenant {
        organization_name: name.into(),
        admin_email: email.into(),
        tier,
        limits: None,
        data_region: None,
        settings: None,
    };
    Ok(ops.create_tenant(&root, body).await?.tenant_id)
}

async fn project(ops: &AdminOps, tenant_id: &str, name: &str, budget: f64) -> Result<(), ApiError> {
    let root = Caller::Root;
    if ops
        .list_projects(tenant_id)
        .await?
        .iter()
        .any(|p| p.name == name)
    {
        return Ok(());
    }
    ops.create_project(
        &root,
        tenant_id,
        CreateProject {
            name: name.into(),
            budget,
        },
    )
    .await?;
    Ok(())
}
