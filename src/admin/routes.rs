//! The admin API's endpoints, one row each ([`ROUTES`]): method, path
//! under `/admin/v1/`, who may call it, the audit event types it is
//! recorded under, and its handler (read the request, then call the
//! operation and shape its answer). The router, the permission check and
//! the event types of a mutation are all read from these rows (see
//! `router`), so nothing else describes an endpoint.

use std::sync::LazyLock;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::audit_query;
use super::error::ApiError;
use super::keys::key_view;
use super::router::{Access, EventType, Events, Reply, Route, Router, run};
use crate::roles::Permission as P;

#[cfg(test)]
mod tests;

/// The admin API, one row per endpoint. Rows of one path sit together;
/// the order of rows does not matter otherwise (`Allow` lists methods in
/// `router::METHOD_ORDER`).
pub(super) static ROUTES: &[Route] = &[
    // === tenants ===
    Route {
        method: Method::POST,
        path: "tenants",
        access: Access::System,
        events: Events::One(EventType::TenantCreated),
        handler: |c, _| {
            let body = c.body()?;
            run(async move { created(json!(c.ops.create_tenant(c.caller, body).await?)) })
        },
    },
    Route {
        method: Method::GET,
        path: "tenants",
        access: Access::System,
        events: Events::None,
        handler: |c, _| run(async move { ok(json!({"tenants": c.ops.list_tenants().await?})) }),
    },
    Route {
        method: Method::GET,
        path: "tenants/{tenant}",
        access: Access::Tenant(&[P::ManageUsers, P::ManageProjects, P::ManageApiKeys]),
        events: Events::None,
        handler: |c, p| run(async move { ok(json!(c.ops.get_tenant(p.arg("tenant")).await?)) }),
    },
    Route {
        method: Method::PATCH,
        path: "tenants/{tenant}",
        access: Access::System,
        events: Events::TenantChange {
            updated: EventType::TenantUpdated,
            suspended: EventType::TenantSuspended,
            region: EventType::TenantRegionChanged,
        },
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                ok(json!(
                    c.ops.patch_tenant(c.caller, p.arg("tenant"), body).await?
                ))
            })
        },
    },
    Route {
        method: Method::DELETE,
        path: "tenants/{tenant}",
        access: Access::System,
        events: Events::One(EventType::TenantDeleted),
        handler: |c, p| {
            run(async move {
                let t = p.arg("tenant");
                c.ops.delete_tenant(c.caller, t).await?;
                ok(json!({"tenant_id": t, "deleted": true}))
            })
        },
    },
    // === keys ===
    Route {
        method: Method::POST,
        path: "tenants/{tenant}/keys",
        access: Access::Tenant(&[P::ManageApiKeys]),
        events: Events::One(EventType::ApiKeyCreated),
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                let (key, secret) = c.ops.create_key(c.caller, p.arg("tenant"), body).await?;
                created(with_secret(key_view(&key), secret))
            })
        },
    },
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/keys",
        access: Access::Tenant(&[P::ManageApiKeys]),
        events: Events::None,
        handler: |c, p| {
            run(async move {
                let keys = c.ops.list_keys(p.arg("tenant")).await?;
                let keys: Vec<Value> = keys.iter().map(key_view).collect();
                ok(json!({"keys": keys}))
            })
        },
    },
    Route {
        method: Method::DELETE,
        path: "tenants/{tenant}/keys/{key}",
        access: Access::Tenant(&[P::ManageApiKeys]),
        events: Events::One(EventType::ApiKeyRevoked),
        handler: |c, p| {
            run(async move {
                let key = c
                    .ops
                    .revoke_key(c.caller, p.arg("tenant"), p.arg("key"))
                    .await?;
                ok(key_view(&key))
            })
        },
    },
    Route {
        method: Method::POST,
        path: "tenants/{tenant}/keys/{key}/rotate",
        access: Access::Tenant(&[P::ManageApiKeys]),
        events: Events::One(EventType::ApiKeyRotated),
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                let (t, k) = (p.arg("tenant"), p.arg("key"));
                let (key, secret) = c.ops.rotate_key(c.caller, t, k, body).await?;
                ok(with_secret(key_view(&key), secret))
            })
        },
    },
    // === projects ===
    Route {
        method: Method::POST,
        path: "tenants/{tenant}/projects",
        access: Access::Tenant(&[P::ManageProjects]),
        events: Events::One(EventType::ProjectCreated),
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                created(json!(
                    c.ops
                        .create_project(c.caller, p.arg("tenant"), body)
                        .await?
                ))
            })
        },
    },
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/projects",
        access: Access::Tenant(&[P::ManageProjects]),
        events: Events::None,
        handler: |c, p| {
            run(async move { ok(json!({"projects": c.ops.list_projects(p.arg("tenant")).await?})) })
        },
    },
    // === users ===
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/users",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::None,
        handler: |c, p| {
            run(async move { ok(json!({"users": c.ops.list_users(p.arg("tenant")).await?})) })
        },
    },
    Route {
        method: Method::PUT,
        path: "tenants/{tenant}/users/{user}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::UserPut {
            created: EventType::UserCreated,
            updated: EventType::UserUpdated,
            roles: EventType::RoleAssigned,
        },
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                let (t, u) = (p.arg("tenant"), p.arg("user"));
                let (user, was_created) = c.ops.put_user(c.caller, t, u, body).await?;
                created_or_ok(was_created, json!(user))
            })
        },
    },
    Route {
        method: Method::DELETE,
        path: "tenants/{tenant}/users/{user}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::One(EventType::UserDeleted),
        handler: |c, p| {
            run(async move {
                let (t, u) = (p.arg("tenant"), p.arg("user"));
                let user = match c.ops.delete_user(c.caller, t, u).await {
                    Ok(user) => user,
                    Err(ApiError::NotFound(why)) => {
                        // Deleted before: erase again (idempotent; it
                        // finishes an erasure a crash cut short), still 404.
                        if let (Some(audit), Some(gone)) = (c.audit, c.ops.deleted_user(t, u).await)
                        {
                            erase_user(audit, &gone).await?;
                        }
                        return Err(ApiError::NotFound(why));
                    }
                    Err(e) => return Err(e),
                };
                let erasure = match c.audit {
                    Some(audit) => Some(erase_user(audit, &user).await?),
                    None => None,
                };
                ok(json!({"user_id": u, "deleted": true, "audit_erasure": erasure}))
            })
        },
    },
    // === sessions ===
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/sessions",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::None,
        handler: |c, p| {
            run(async move { ok(json!({"sessions": c.ops.list_sessions(p.arg("tenant")).await?})) })
        },
    },
    Route {
        method: Method::DELETE,
        path: "tenants/{tenant}/sessions/{session}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::One(EventType::Logout),
        handler: |c, p| {
            run(async move {
                let id = p.arg("session");
                c.ops.revoke_session(c.caller, p.arg("tenant"), id).await?;
                ok(json!({"session_id": id, "revoked": true}))
            })
        },
    },
    // === usage ===
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/usage",
        access: Access::Tenant(&[P::ManageUsers, P::ManageProjects, P::ManageApiKeys]),
        events: Events::None,
        handler: |c, p| run(async move { ok(c.ops.usage(p.arg("tenant")).await?) }),
    },
    // === custom roles ===
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/roles",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::None,
        handler: |c, p| {
            run(async move { ok(json!({"roles": c.ops.list_roles(p.arg("tenant")).await?})) })
        },
    },
    Route {
        method: Method::GET,
        path: "tenants/{tenant}/roles/{role}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::None,
        handler: |c, p| {
            run(async move {
                let (t, r) = (p.arg("tenant"), p.arg("role"));
                ok(json!(c.ops.get_role(t, r).await?))
            })
        },
    },
    Route {
        method: Method::PUT,
        path: "tenants/{tenant}/roles/{role}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::One(EventType::RoleDefined),
        handler: |c, p| {
            let body = c.body()?;
            run(async move {
                let (t, r) = (p.arg("tenant"), p.arg("role"));
                let (role, was_created) = c.ops.put_role(c.caller, t, r, body).await?;
                created_or_ok(was_created, json!(role))
            })
        },
    },
    Route {
        method: Method::DELETE,
        path: "tenants/{tenant}/roles/{role}",
        access: Access::Tenant(&[P::ManageUsers]),
        events: Events::One(EventType::RoleDeleted),
        handler: |c, p| {
            run(async move {
                let r = p.arg("role");
                c.ops.delete_role(c.caller, p.arg("tenant"), r).await?;
                ok(json!({"name": r, "deleted": true}))
            })
        },
    },
    // === audit log ===
    Route {
        method: Method::GET,
        path: "audit",
        access: Access::Handler,
        events: Events::None,
        handler: |c, _| {
            run(async move {
                let audit = c.audit_log()?;
                let params = audit_query::query_params(c.query);
                ok(audit_query::query(audit, c.caller, &params).await?)
            })
        },
    },
    Route {
        method: Method::GET,
        path: "audit/report",
        access: Access::Handler,
        events: Events::None,
        handler: |c, _| {
            run(async move {
                let audit = c.audit_log()?;
                let params = audit_query::query_params(c.query);
                let _slot = c.ops.report_slot()?;
                ok(audit_query::report(audit, c.caller, &params).await?)
            })
        },
    },
    // === compliance ===
    Route {
        method: Method::GET,
        path: "compliance",
        access: Access::Handler,
        events: Events::None,
        handler: |c, _| {
            run(async move {
                let report = super::compliance::report(c.ops, c.caller, c.query).await?;
                ok(json!(report))
            })
        },
    },
];

/// The admin API's router.
pub(super) static ROUTER: LazyLock<Router> = LazyLock::new(|| Router::new(ROUTES));

fn ok(v: Value) -> Reply {
    Ok((StatusCode::OK, v))
}

fn created(v: Value) -> Reply {
    Ok((StatusCode::CREATED, v))
}

fn created_or_ok(was_created: bool, v: Value) -> Reply {
    if was_created { created(v) } else { ok(v) }
}

fn with_secret(mut view: Value, secret: String) -> Value {
    view["api_key"] = Value::String(secret);
    view
}

/// The audit erasure of a deleted user (GDPR): their identifiers in the
/// tenant's audit records become their pseudonym. What the response (and
/// the `user.deleted` record) says of it names no plaintext identifier.
async fn erase_user(
    audit: &crate::audit::Audit,
    user: &crate::model::User,
) -> Result<Value, ApiError> {
    let email = (!user.email.is_empty()).then_some(user.email.as_str());
    let outcome = audit
        .erase_user(&user.tenant_id, &user.user_id, email)
        .await?;
    Ok(json!({
        "pseudonym": outcome.pseudonym,
        "records_pseudonymised": outcome.records,
        "files_rewritten": outcome.files,
        "legacy_records_left": outcome.legacy,
        "shipped_rows_pseudonymised": outcome.shipped_rows,
    }))
}
