//! Single sign-on sessions of a tenant
//! (`/admin/v1/tenants/{tenant}/sessions[/{session}]`): list (never a
//! secret) and revoke.

use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use super::requests as req;

impl AdminOps {
    /// A tenant's live SSO sessions (never a secret: no cookie hash, no
    /// provider token).
    pub async fn list_sessions(&self, tenant_id: &str) -> Result<Vec<Value>, ApiError> {
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
}
