//! No admin action lifts a caller above their own permissions: rotating,
//! revoking, reshaping or deleting a more powerful key, user or custom
//! role is refused; a key's rate can only lower its tenant's; the number of
//! keys per tenant is bounded. (Issue 15 §2, reproduced against the real
//! binary before the fix.)

mod support;

use serde_json::json;
use support::{NO_AUTH_THROTTLE, Sidecar, Upstream, get_as, sidecar};

/// A custom role `name` with `permissions` in `tenant`, made by the root token.
fn custom_role(cg: &Sidecar, tenant: &str, name: &str, permissions: &[&str]) {
    let (status, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{tenant}/roles/{name}"),
        Some(json!({"description": "test", "permissions": permissions})),
    );
    assert!(status == 200 || status == 201, "{status} {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_manager_cannot_rotate_or_revoke_a_more_powerful_key() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, NO_AUTH_THROTTLE);
    let t = cg.create_tenant("enterprise");
    custom_role(&cg, &t, "key_manager", &["manage_api_keys"]);
    let (_, manager) = cg.create_key(&t, &["key_manager"]);
    let (root_id, root_key) = cg.create_key(&t, &["system_admin"]);
    let (admin_id, admin_key) = cg.create_key(&t, &["admin"]);

    // Creating one was already refused; rotating and revoking are now too.
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &manager,
        Some(&json!({"description": "x", "roles": ["system_admin"]})),
    );
    assert_eq!(status, 403, "{body}");
    for (id, what) in [(&root_id, "system_admin key"), (&admin_id, "admin key")] {
        let (status, body) = cg.admin_call(
            "POST",
            &format!("/admin/v1/tenants/{t}/keys/{id}/rotate"),
            &manager,
            Some(&json!({"grace_seconds": 3600})),
        );
        assert_eq!(status, 403, "rotate {what}: {body}");
        assert!(
            body.get("api_key").is_none(),
            "no secret handed out: {body}"
        );
        let (status, body) = cg.admin_call(
            "DELETE",
            &format!("/admin/v1/tenants/{t}/keys/{id}"),
            &manager,
            None,
        );
        assert_eq!(status, 403, "revoke {what}: {body}");
    }
    // An admin key (all tenant permissions, not system_admin) may not
    // touch the system_admin key either.
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{root_id}/rotate"),
        &admin_key,
        None,
    );
    assert_eq!(status, 403, "{body}");
    // Both keys still work with their old secrets.
    let (status, body) = cg.admin_call("GET", "/admin/v1/tenants", &root_key, None);
    assert_eq!(status, 200, "the system_admin key is intact: {body}");
    let (status, _, _) = get_as(&cg.url(&format!("/v1/tenants/{t}/costs")), &admin_key).await;
    assert_eq!(status, 200);

    // Within their power the same actions work: the admin key rotates and
    // revokes a viewer key; the system_admin key its own kind.
    let (viewer_id, _) = cg.create_key(&t, &["viewer"]);
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{viewer_id}/rotate"),
        &admin_key,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["api_key"].as_str().unwrap().starts_with("costops_"));
    let (status, body) = cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{viewer_id}"),
        &admin_key,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{admin_id}"),
        &root_key,
        None,
    );
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_role_held_by_someone_more_powerful_cannot_be_changed() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, NO_AUTH_THROTTLE);
    let t = cg.create_tenant("enterprise");
    custom_role(&cg, &t, "user_manager", &["manage_users", "view_costs"]);
    custom_role(&cg, &t, "extra", &["view_costs"]);
    let (_, manager) = cg.create_key(&t, &["user_manager"]);
    // An admin key also holds `extra`: changing `extra` would change it.
    cg.create_key(&t, &["admin", "extra"]);
    let (status, body) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{t}/roles/extra"),
        &manager,
        Some(&json!({"description": "grown", "permissions": ["view_costs", "manage_users"]})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/roles/extra"),
        &manager,
        None,
    );
    assert_eq!(status, 403, "{body}");
    let (_, role) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/roles/extra"), None);
    assert_eq!(role["permissions"], json!(["view_costs"]), "unchanged");

    // A user with more permissions than the manager: neither replaced nor
    // deleted by them.
    let (status, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/boss"),
        Some(json!({"email": "boss@test.example", "roles": ["admin"]})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/boss"),
        &manager,
        Some(&json!({"email": "boss@test.example", "roles": ["extra"]})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/users/boss"),
        &manager,
        None,
    );
    assert_eq!(status, 403, "{body}");

    // A role nobody more powerful holds is the manager's to change.
    custom_role(&cg, &t, "mine", &["view_costs"]);
    cg.create_key(&t, &["mine"]);
    let (status, body) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{t}/roles/mine"),
        &manager,
        Some(&json!({"description": "ok", "permissions": ["view_costs", "manage_users"]})),
    );
    assert_eq!(status, 200, "{body}");
    // The root token may change anything.
    let (status, body) = cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/roles/extra"),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_can_only_lower_its_tenants_rate_and_keys_are_bounded() {
    let up = Upstream::start().await;
    let cg = sidecar(
        &up,
        &format!("{NO_AUTH_THROTTLE}free = \"3/minute\"\n[auth]\nmax_keys_free = 3\n"),
    );
    let t = cg.create_tenant("free");
    let (_, admin) = cg.create_key(&t, &["admin"]);
    // A tenant admin cannot lift the tier's 3/minute through a key.
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "fast", "rate_limit_per_minute": 1_000_000})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("lower"),
        "{body}"
    );
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "four", "rate_limit_per_minute": 4})),
    );
    assert_eq!(status, 400, "4/minute is above the tier's 3/minute: {body}");
    // A system admin raises the tenant's rate; keys without their own
    // rate get it, and the tenant admin may then go up to it.
    let (status, body) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"limits": {"rate_limit_per_minute": 5}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"]["rate_limit_per_minute"], 5);
    let costs = cg.url(&format!("/v1/tenants/{t}/costs"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get_as(&costs, &admin).await.0.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429],
        "the tenant's 5/minute"
    );
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "within", "rate_limit_per_minute": 2})),
    );
    assert_eq!(status, 201, "{body}");
    let slow = body["api_key"].as_str().unwrap().to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_as(&costs, &slow).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "the key's own, lower 2/minute");

    // Three live keys at most (admin, slow, one more); a revoked one makes room.
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "third"})),
    );
    assert_eq!(status, 201, "{body}");
    let third = body["key_id"].as_str().unwrap().to_string();
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "fourth"})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "limit_reached", "{body}");
    let (_, keys) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/keys"), None);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3, "nothing written");
    let (status, _) = cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{third}"),
        None,
    );
    assert_eq!(status, 200);
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "fourth"})),
    );
    assert_eq!(status, 201, "{body}");
    // A system admin can raise the tenant's own bound.
    let (status, body) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"limits": {"max_api_keys": 10}})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &admin,
        Some(&json!({"description": "fifth"})),
    );
    assert_eq!(status, 201, "{body}");
}
