//! Calls through the route table against a real store (sled in a
//! temporary directory): the permission check runs before the operation
//! and is what `tracking_authorization` sees; a body is read before it;
//! and every row reaches its operation with its path's parameters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::super::super::auth::{AdminAuth, Caller, tracking_authorization};
use super::super::super::error::ApiError;
use super::super::super::ops::AdminOps;
use super::super::super::requests::{CreateKey, CreateTenant, PutRole};
use super::super::super::router::{Access, Call, Reply};
use super::super::{ROUTER, ROUTES};
use super::split;
use crate::authn::api_key::ApiKeys;
use crate::authz::Authz;
use crate::authz::reload::{PolicyHandle, Source};
use crate::config::FileConfig;
use crate::model::{KeyStatus, Tier};
use crate::store::Store;
use crate::store::sled::SledStore;
use crate::usage::Usage;

struct Fixture {
    _dir: tempfile::TempDir,
    ops: AdminOps,
    auth: AdminAuth,
    a: String,
    b: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let policy = PolicyHandle::load(Source::BuiltIn).unwrap();
    let ttl = Duration::from_secs(60);
    let authz = Authz::new(policy, store.clone(), 100, ttl);
    let keys = ApiKeys::new(store.clone(), 100, ttl);
    let config = crate::config::from_file(FileConfig::default()).unwrap();
    let ops = AdminOps::new(
        store.clone(),
        keys.clone(),
        authz.clone(),
        Usage::new(store),
        config.auth.clone(),
        config.rate_limit.clone(),
    );
    let auth = AdminAuth::new(None, keys, authz);
    let tenant = |name: &str| CreateTenant {
        organization_name: name.into(),
        admin_email: "a@example.com".into(),
        tier: Tier::Enterprise,
        limits: None,
        data_region: None,
        settings: None,
    };
    let a = ops.create_tenant(&Caller::Root, tenant("A")).await.unwrap();
    let b = ops.create_tenant(&Caller::Root, tenant("B")).await.unwrap();
    Fixture {
        _dir: dir,
        ops,
        auth,
        a: a.tenant_id,
        b: b.tenant_id,
    }
}

impl Fixture {
    /// A key of `tenant` with `role`: its id, and it as a caller.
    async fn key(&self, tenant: &str, role: &str) -> (String, Caller) {
        let body = CreateKey {
            description: String::new(),
            roles: Some(vec![role.to_string()]),
            grants: vec![],
            scopes: vec![],
            rate_limit_per_minute: None,
            expires_at: None,
        };
        let (key, secret) = self
            .ops
            .create_key(&Caller::Root, tenant, body)
            .await
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {secret}")).unwrap(),
        );
        (key.key_id, self.auth.caller(&headers).await.unwrap())
    }

    /// `method path` with `body`, as `caller`, through the table: its
    /// answer, and whether the caller passed authorization.
    async fn call(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Value,
    ) -> (Reply, bool) {
        let segments = split(path);
        let found = ROUTER.find(&method, &segments).unwrap();
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let call = Call {
            ops: &self.ops,
            audit: None,
            caller,
            body: &body,
            query: None,
        };
        tracking_authorization(found.dispatch(call)).await
    }
}

fn message(reply: &Reply) -> String {
    match reply {
        Err(ApiError::Forbidden(m)) => m.clone(),
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test]
async fn the_table_refuses_before_the_operation_runs() {
    let f = fixture().await;
    let (a, b) = (f.a.as_str(), f.b.as_str());
    let (_, viewer) = f.key(a, "viewer").await;
    let (_, projects) = f.key(a, "project_admin").await;
    let (admin_id, admin) = f.key(a, "admin").await;

    // Missing the permission in its own tenant.
    let (reply, authorized) = f
        .call(
            &viewer,
            Method::GET,
            &format!("tenants/{a}/keys"),
            Value::Null,
        )
        .await;
    assert_eq!(message(&reply), "this operation needs manage_api_keys");
    assert!(!authorized);
    let (reply, _) = f
        .call(
            &viewer,
            Method::GET,
            &format!("tenants/{a}/usage"),
            Value::Null,
        )
        .await;
    assert_eq!(
        message(&reply),
        "this operation needs manage_users or manage_projects or manage_api_keys"
    );
    // Another tenant, even one that does not exist: refused on the tenant,
    // before any lookup.
    for other in [b, "org-ffffffff"] {
        let (reply, authorized) = f
            .call(
                &admin,
                Method::GET,
                &format!("tenants/{other}/keys"),
                Value::Null,
            )
            .await;
        assert!(matches!(reply, Err(ApiError::TenantMismatch)), "{reply:?}");
        assert!(!authorized);
    }
    // System-wide routes need system_admin.
    for (method, path) in [
        (Method::GET, "tenants".to_string()),
        (Method::PATCH, format!("tenants/{a}")),
        (Method::DELETE, format!("tenants/{a}")),
    ] {
        let (reply, authorized) = f.call(&admin, method, &path, json!({})).await;
        assert_eq!(
            message(&reply),
            "this operation needs system_admin",
            "{path}"
        );
        assert!(!authorized);
    }
    // A refused revocation does not run: the key stays active.
    let path = format!("tenants/{a}/keys/{admin_id}");
    let (reply, authorized) = f.call(&viewer, Method::DELETE, &path, Value::Null).await;
    assert_eq!(message(&reply), "this operation needs manage_api_keys");
    assert!(!authorized);
    let keys = f.ops.list_keys(a).await.unwrap();
    let key = keys.iter().find(|k| k.key_id == admin_id).unwrap();
    assert_eq!(key.status, KeyStatus::Active);

    // Any one of a route's permissions lets the caller through.
    let (reply, authorized) = f
        .call(&projects, Method::GET, &format!("tenants/{a}"), Value::Null)
        .await;
    assert_eq!(reply.unwrap().1["tenant_id"], a);
    assert!(authorized);
    let (reply, authorized) = f
        .call(
            &admin,
            Method::GET,
            &format!("tenants/{a}/keys"),
            Value::Null,
        )
        .await;
    assert_eq!(reply.unwrap().1["keys"].as_array().unwrap().len(), 3);
    assert!(authorized);
    // Past the table, the operation's own checks: a key holding only
    // manage_api_keys passes the table, but cannot revoke the admin's key,
    // which has permissions it does not.
    let role = PutRole {
        description: String::new(),
        permissions: vec!["manage_api_keys".into()],
    };
    f.ops
        .put_role(&Caller::Root, a, "key_keeper", role)
        .await
        .unwrap();
    let (_, keeper) = f.key(a, "key_keeper").await;
    let (reply, authorized) = f.call(&keeper, Method::DELETE, &path, Value::Null).await;
    assert_eq!(message(&reply), "this key has permissions you do not hold");
    assert!(authorized);
}

#[tokio::test]
async fn a_body_that_does_not_parse_is_refused_before_the_check() {
    let f = fixture().await;
    let a = f.a.as_str();
    let (_, viewer) = f.key(a, "viewer").await;
    let (_, admin) = f.key(a, "admin").await;
    let keys = format!("tenants/{a}/keys");
    // As it always was: the body is read first, so a bad one is a 400 for
    // anyone, recorded as refused (not authorized) either way.
    for caller in [&viewer, &admin, &Caller::Root] {
        let (reply, authorized) = f
            .call(caller, Method::POST, &keys, json!({"roles": "not-a-list"}))
            .await;
        assert!(matches!(reply, Err(ApiError::BadRequest(_))), "{reply:?}");
        assert!(!authorized);
    }
    // A good body from a caller without the permission is a 403.
    let (reply, authorized) = f.call(&viewer, Method::POST, &keys, json!({})).await;
    assert_eq!(message(&reply), "this operation needs manage_api_keys");
    assert!(!authorized);
    // And from one with it, the operation runs (and fails on its own
    // rules, authorized).
    let (reply, authorized) = f
        .call(&admin, Method::POST, &keys, json!({"scopes": ["nope"]}))
        .await;
    assert!(matches!(reply, Err(ApiError::BadRequest(_))), "{reply:?}");
    assert!(authorized);
}

/// Every row reaches its operation with its path's parameters: as the
/// admin token, on tenant A, each answers as that operation does.
#[tokio::test]
async fn every_row_reaches_its_operation() {
    let f = fixture().await;
    let a = f.a.as_str();
    let root = Caller::Root;
    let (key, _) = f.key(a, "viewer").await;
    let key_id = key.as_str();
    let not_found =
        |m: &'static str| move |r: &Reply| matches!(r, Err(ApiError::NotFound(x)) if x == m);
    let ok = |s: StatusCode| move |r: &Reply| matches!(r, Ok((got, _)) if *got == s);
    type Check<'a> = Box<dyn Fn(&Reply) -> bool + 'a>;
    let cases: Vec<(Method, String, Value, Check<'_>)> = vec![
        (
            Method::GET,
            "tenants".into(),
            Value::Null,
            Box::new(
                |r: &Reply| matches!(r, Ok((_, v)) if v["tenants"].as_array().is_some_and(|t| t.len() == 2)),
            ),
        ),
        (
            Method::POST,
            "tenants".into(),
            json!({"organization_name": "C", "admin_email": "c@example.com", "tier": "free"}),
            Box::new(ok(StatusCode::CREATED)),
        ),
        (
            Method::GET,
            format!("tenants/{a}"),
            Value::Null,
            Box::new(move |r: &Reply| matches!(r, Ok((_, v)) if v["tenant_id"] == a)),
        ),
        (
            Method::PATCH,
            format!("tenants/{a}"),
            json!({"organization_name": "A2"}),
            Box::new(move |r: &Reply| matches!(r, Ok((_, v)) if v["organization_name"] == "A2")),
        ),
        (
            Method::GET,
            format!("tenants/{a}/keys"),
            Value::Null,
            Box::new(
                |r: &Reply| matches!(r, Ok((_, v)) if v["keys"].as_array().is_some_and(|k| k.len() == 1)),
            ),
        ),
        (
            Method::POST,
            format!("tenants/{a}/keys"),
            json!({}),
            Box::new(
                |r: &Reply| matches!(r, Ok((s, v)) if *s == StatusCode::CREATED && v["api_key"].is_string()),
            ),
        ),
        (
            Method::POST,
            format!("tenants/{a}/keys/{key_id}/rotate"),
            Value::Null,
            Box::new(
                move |r: &Reply| matches!(r, Ok((_, v)) if v["key_id"] == key_id && v["api_key"].is_string()),
            ),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}/keys/{key_id}"),
            Value::Null,
            Box::new(
                move |r: &Reply| matches!(r, Ok((_, v)) if v["key_id"] == key_id && v["status"] == "revoked"),
            ),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}/keys/nope"),
            Value::Null,
            Box::new(not_found("key not found")),
        ),
        (
            Method::POST,
            format!("tenants/{a}/projects"),
            json!({"name": "P", "budget": 10.0}),
            Box::new(ok(StatusCode::CREATED)),
        ),
        (
            Method::GET,
            format!("tenants/{a}/projects"),
            Value::Null,
            Box::new(
                |r: &Reply| matches!(r, Ok((_, v)) if v["projects"].as_array().is_some_and(|p| p.len() == 1)),
            ),
        ),
        (
            Method::PUT,
            format!("tenants/{a}/users/u-1"),
            json!({"email": "u@example.com", "roles": ["viewer"]}),
            Box::new(
                |r: &Reply| matches!(r, Ok((s, v)) if *s == StatusCode::CREATED && v["user_id"] == "u-1"),
            ),
        ),
        (
            Method::PUT,
            format!("tenants/{a}/users/u-1"),
            json!({"email": "u@example.com", "roles": []}),
            Box::new(ok(StatusCode::OK)),
        ),
        (
            Method::GET,
            format!("tenants/{a}/users"),
            Value::Null,
            Box::new(|r: &Reply| matches!(r, Ok((_, v)) if v["users"][0]["user_id"] == "u-1")),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}/users/u-1"),
            Value::Null,
            Box::new(
                // No audit log here, so nothing to pseudonymise.
                |r: &Reply| matches!(r, Ok((_, v)) if *v == json!({"user_id": "u-1", "deleted": true, "audit_erasure": null})),
            ),
        ),
        (
            Method::GET,
            format!("tenants/{a}/sessions"),
            Value::Null,
            Box::new(|r: &Reply| matches!(r, Ok((_, v)) if *v == json!({"sessions": []}))),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}/sessions/s-1"),
            Value::Null,
            Box::new(not_found("session not found")),
        ),
        (
            Method::GET,
            format!("tenants/{a}/usage"),
            Value::Null,
            Box::new(
                move |r: &Reply| matches!(r, Ok((_, v)) if v["tenant_id"] == a && v["projects"] == 1),
            ),
        ),
        (
            Method::PUT,
            format!("tenants/{a}/roles/auditor"),
            json!({"permissions": ["view_costs"]}),
            Box::new(ok(StatusCode::CREATED)),
        ),
        (
            Method::GET,
            format!("tenants/{a}/roles"),
            Value::Null,
            Box::new(|r: &Reply| matches!(r, Ok((_, v)) if v["roles"][0]["name"] == "auditor")),
        ),
        (
            Method::GET,
            format!("tenants/{a}/roles/auditor"),
            Value::Null,
            Box::new(|r: &Reply| matches!(r, Ok((_, v)) if v["name"] == "auditor")),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}/roles/auditor"),
            Value::Null,
            Box::new(
                |r: &Reply| matches!(r, Ok((_, v)) if *v == json!({"name": "auditor", "deleted": true})),
            ),
        ),
        (
            Method::GET,
            "audit".into(),
            Value::Null,
            Box::new(not_found("the audit log is disabled (audit.enabled)")),
        ),
        (
            Method::GET,
            "audit/report".into(),
            Value::Null,
            Box::new(not_found("the audit log is disabled (audit.enabled)")),
        ),
        (
            Method::GET,
            "compliance".into(),
            Value::Null,
            Box::new(not_found(
                "the compliance report is not available on this server",
            )),
        ),
        (
            Method::DELETE,
            format!("tenants/{a}"),
            Value::Null,
            Box::new(
                move |r: &Reply| matches!(r, Ok((_, v)) if *v == json!({"tenant_id": a, "deleted": true})),
            ),
        ),
    ];
    let mut reached = Vec::new();
    for (method, path, body, check) in cases {
        let (reply, authorized) = f.call(&root, method.clone(), &path, body).await;
        assert!(check(&reply), "{method} {path}: {reply:?}");
        let segments = split(&path);
        let row = ROUTER.find(&method, &segments).unwrap().route();
        if !matches!(row.access, Access::Handler) {
            assert!(authorized, "{method} {path}");
        }
        reached.push(row as *const _);
    }
    // Every row was called.
    for row in ROUTES {
        assert!(
            reached.contains(&(row as *const _)),
            "{} {} not called",
            row.method,
            row.path
        );
    }
}
