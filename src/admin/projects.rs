//! Projects of a tenant (`/admin/v1/tenants/{tenant}/projects`): create,
//! within the tier's `max_projects`, and list.

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use super::requests::{self as req, CreateProject};
use crate::model::{self, Project};
use crate::store::StoreError;

impl AdminOps {
    /// Creates a project, within the tier's `max_projects`.
    pub async fn create_project(
        &self,
        caller: &Caller,
        tenant_id: &str,
        body: CreateProject,
    ) -> Result<Project, ApiError> {
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
    pub async fn list_projects(&self, tenant_id: &str) -> Result<Vec<Project>, ApiError> {
        self.tenant(tenant_id).await?;
        self.store
            .list_projects(tenant_id)
            .await
            .map_err(store_error)
    }
}
