//! The admin API on the admin port: tenants, keys, projects, users, usage;
//! who may do what; and every 4xx with its message, leaving state intact.

mod support;

use serde_json::json;
use support::{ADMIN_TOKEN, Upstream, get_as, raw_request, sidecar};

fn is_hex_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|h| {
        h.len() == 8
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_lifecycle_with_tier_defaults_and_overrides() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let (status, t) = cg.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"organization_name": "Acme Corporation", "admin_email": "admin@acme.com", "tier": "free",
                    "limits": {"max_projects": 4}, "data_region": "eu-west-1"})),
    );
    assert_eq!(status, 201, "{t}");
    let id = t["tenant_id"].as_str().unwrap().to_string();
    assert!(is_hex_id(&id, "org-"), "{id}");
    assert_eq!(t["tier"], "free");
    assert_eq!(t["status"], "active");
    assert_eq!(
        t["limits"],
        json!({"max_requests_per_day": 1000, "max_projects": 4, "max_users": 5, "max_monthly_cost": 100.0, "retention_days": 30})
    );
    assert_eq!(t["settings"]["data_region"], "eu-west-1");
    assert_eq!(t["settings"]["sso_enabled"], false);

    let (status, e) = cg.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"organization_name": "Big", "admin_email": "a@big.example", "tier": "enterprise"})),
    );
    assert_eq!(status, 201);
    assert_eq!(e["limits"]["max_requests_per_day"], -1);
    assert_eq!(e["limits"]["retention_days"], 365);
    assert_eq!(e["settings"]["sso_enabled"], true);
    let (status, s) = cg.admin(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"organization_name": "Startup Inc", "admin_email": "founder@startup.com", "tier": "standard"})),
    );
    assert_eq!(status, 201);
    assert_eq!(s["limits"]["max_requests_per_day"], 100000);
    assert_eq!(s["limits"]["max_users"], 50);

    let (status, list) = cg.admin("GET", "/admin/v1/tenants", None);
    assert_eq!(status, 200);
    assert_eq!(list["tenants"].as_array().unwrap().len(), 3);
    let (status, got) = cg.admin("GET", &format!("/admin/v1/tenants/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(got, t);

    // Changing the tier resets limits to the new tier's defaults.
    let (status, p) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{id}"),
        Some(json!({"tier": "standard", "organization_name": "Acme Corp"})),
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["limits"]["max_projects"], 25);
    assert_eq!(p["organization_name"], "Acme Corp");
    assert_eq!(p["created_at"], t["created_at"]);

    let (status, _) = cg.admin("DELETE", &format!("/admin/v1/tenants/{id}"), None);
    assert_eq!(status, 200);
    let (status, body) = cg.admin("GET", &format!("/admin/v1/tenants/{id}"), None);
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let tenant = cg.create_tenant("free");
    let cases: Vec<(&str, String, serde_json::Value, u16, &str, &str)> = vec![
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "X", "admin_email": "x@x.example", "tier": "gold"}),
            400,
            "invalid_request",
            "unknown variant",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "X", "admin_email": "x@x.example"}),
            400,
            "invalid_request",
            "missing field `tier`",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "", "admin_email": "x@x.example", "tier": "free"}),
            400,
            "invalid_request",
            "organization_name",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "X", "admin_email": "nope", "tier": "free"}),
            400,
            "invalid_request",
            "admin_email",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "X", "admin_email": "x@x.example", "tier": "free", "limits": {"max_projects": -5}}),
            400,
            "invalid_request",
            "max_projects",
        ),
        (
            "POST",
            "/admin/v1/tenants".into(),
            json!({"organization_name": "X", "admin_email": "x@x.example", "tier": "free", "tenant_id": "org-12345678"}),
            400,
            "invalid_request",
            "unknown field `tenant_id`",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"tenant_id": "org-00000000"}),
            400,
            "invalid_request",
            "unknown field `tenant_id`",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"roles": ["overlord"]}),
            400,
            "invalid_request",
            "unknown role",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"scopes": ["read"]}),
            400,
            "invalid_request",
            "unknown scope",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "invalid_request",
            "future",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"rate_limit_per_minute": 0}),
            400,
            "invalid_request",
            "rate_limit_per_minute",
        ),
        (
            "POST",
            format!("/admin/v1/tenants/{tenant}/projects"),
            json!({"name": "P", "budget": -1}),
            400,
            "invalid_request",
            "budget",
        ),
        (
            "PUT",
            format!("/admin/v1/tenants/{tenant}/users/bob"),
            json!({"email": "bob@x.example", "roles": ["viewer"], "tenant_id": "org-00000000"}),
            400,
            "invalid_request",
            "unknown field",
        ),
        (
            "PUT",
            format!("/admin/v1/tenants/{tenant}/users/b%20b"),
            json!({"email": "bob@x.example", "roles": ["viewer"]}),
            400,
            "invalid_request",
            "user_id",
        ),
        (
            "POST",
            "/admin/v1/tenants/org-00000000/keys".into(),
            json!({}),
            404,
            "not_found",
            "tenant not found",
        ),
        (
            "DELETE",
            format!("/admin/v1/tenants/{tenant}/keys/00000000-0000-0000-0000-000000000000"),
            json!(null),
            404,
            "not_found",
            "key not found",
        ),
        (
            "GET",
            "/admin/v1/nothing".into(),
            json!(null),
            404,
            "not_found",
            "no such endpoint",
        ),
        (
            "PUT",
            "/admin/v1/tenants".into(),
            json!({}),
            405,
            "method_not_allowed",
            "not allowed",
        ),
    ];
    for (method, path, body, status, code, words) in cases {
        let body = (!body.is_null()).then_some(body);
        let (got, resp) = cg.admin(method, &path, body.clone());
        assert_eq!(got, status, "{method} {path} {body:?}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{method} {path}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(words),
            "{method} {path}: {message:?} lacks {words:?}"
        );
    }
    // Not JSON, wrong content type, too large.
    let req = "POST /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer test-admin-token-0123456789\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope";
    let resp = raw_request(cg.admin, req.as_bytes());
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("invalid JSON"), "{}", resp.body);
    // Whatever the Content-Type says (curl -d sends a form type), the body
    // must be strict JSON.
    let req = "POST /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer test-admin-token-0123456789\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 2\r\n\r\n{}";
    let resp = raw_request(cg.admin, req.as_bytes());
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("missing field"), "{}", resp.body);
    let big = format!("{{\"organization_name\": \"{}\"}}", "x".repeat(70_000));
    let req = format!(
        "POST /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    assert_eq!(raw_request(cg.admin, req.as_bytes()).status, 413);
    let resp = raw_request(cg.admin, format!("PUT /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n").as_bytes());
    assert_eq!(resp.headers["allow"], "GET, POST");

    // Nothing was created by any of that.
    let (_, list) = cg.admin("GET", "/admin/v1/tenants", None);
    assert_eq!(list["tenants"].as_array().unwrap().len(), 1);
    let (_, keys) = cg.admin("GET", &format!("/admin/v1/tenants/{tenant}/keys"), None);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 0);
    let (_, users) = cg.admin("GET", &format!("/admin/v1/tenants/{tenant}/users"), None);
    assert_eq!(users["users"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_credentials_are_checked() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    // No credential: 401 with a challenge.
    let resp = raw_request(
        cg.admin,
        b"GET /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 401);
    assert!(resp.headers["www-authenticate"].starts_with("Bearer"));
    // Wrong token, near-miss token, key-shaped garbage.
    for bad in [
        "wrong-token-0123456789",
        "test-admin-token-012345678",
        "test-admin-token-01234567890",
        "costops_0123456789abcdef0123456789abcdef",
    ] {
        let (status, body) = cg.admin_call("GET", "/admin/v1/tenants", bad, None);
        assert_eq!(status, 401, "{bad}: {body}");
    }
    // The admin API is not served on the proxy port: there the admin token
    // is no credential, and nothing is created.
    let body = r#"{"organization_name":"Evil","admin_email":"e@evil.example","tier":"free"}"#;
    let req = format!(
        "POST /admin/v1/tenants HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw_request(cg.proxy, req.as_bytes()).status, 401);
    let (_, list) = cg.admin("GET", "/admin/v1/tenants", None);
    assert!(list["tenants"].as_array().unwrap().is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_admin_keys_manage_only_their_own_tenant() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let a = cg.create_tenant("standard");
    let b = cg.create_tenant("standard");
    let (_, a_admin) = cg.create_key(&a, &["admin"]);
    let (_, a_viewer) = cg.create_key(&a, &["viewer"]);
    let (_, a_projects) = cg.create_key(&a, &["project_admin"]);

    // Own tenant: keys, users, projects.
    let (status, k) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{a}/keys"),
        &a_admin,
        Some(&json!({"description": "ci", "roles": ["analyst"]})),
    );
    assert_eq!(status, 201, "{k}");
    assert!(k["created_by"].as_str().unwrap().starts_with("key:"));
    let (status, _) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{a}/users/alice"),
        &a_admin,
        Some(&json!({"email": "alice@a.example", "roles": ["budget_manager"]})),
    );
    assert_eq!(status, 201);
    let (status, _) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{a}/projects"),
        &a_projects,
        Some(&json!({"name": "Bot", "budget": 10})),
    );
    assert_eq!(status, 201);
    let (status, _) = cg.admin_call("GET", &format!("/admin/v1/tenants/{a}"), &a_admin, None);
    assert_eq!(status, 200);

    // Another tenant: 403 tenant_mismatch, whatever the operation.
    for (method, path) in [
        ("GET", format!("/admin/v1/tenants/{b}")),
        ("GET", format!("/admin/v1/tenants/{b}/keys")),
        ("POST", format!("/admin/v1/tenants/{b}/keys")),
        ("GET", format!("/admin/v1/tenants/{b}/usage")),
    ] {
        let body = (method == "POST").then(|| json!({}));
        let (status, resp) = cg.admin_call(method, &path, &a_admin, body.as_ref());
        assert_eq!(status, 403, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "tenant_mismatch");
    }
    // System operations: 403 forbidden.
    let (status, resp) = cg.admin_call("GET", "/admin/v1/tenants", &a_admin, None);
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = cg.admin_call(
        "POST",
        "/admin/v1/tenants",
        &a_admin,
        Some(&json!({"organization_name": "X", "admin_email": "x@x.example", "tier": "free"})),
    );
    assert_eq!(status, 403);
    let (status, _) = cg.admin_call(
        "PATCH",
        &format!("/admin/v1/tenants/{a}"),
        &a_admin,
        Some(&json!({"tier": "enterprise"})),
    );
    assert_eq!(status, 403, "a tenant cannot upgrade itself");
    // Missing permission: a viewer cannot make keys; a project admin cannot manage users.
    let (status, resp) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{a}/keys"),
        &a_viewer,
        Some(&json!({})),
    );
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = cg.admin_call(
        "GET",
        &format!("/admin/v1/tenants/{a}/users"),
        &a_projects,
        None,
    );
    assert_eq!(status, 403);
    // Escalation: an admin cannot grant system_admin; a project admin cannot grant admin.
    let (status, resp) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{a}/keys"),
        &a_admin,
        Some(&json!({"roles": ["system_admin"]})),
    );
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("system_admin")
    );
    let (status, _) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{a}/users/mallory"),
        &a_admin,
        Some(&json!({"email": "m@a.example", "roles": ["system_admin"]})),
    );
    assert_eq!(status, 403);
    // The bootstrap admin can grant it.
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{a}/keys"),
        Some(json!({"roles": ["system_admin"]})),
    );
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_listed_without_secrets_or_hashes() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("free");
    let (status, created) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        Some(json!({"description": "reporting job", "roles": ["analyst"], "scopes": ["view_costs"], "rate_limit_per_minute": 60, "expires_at": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(status, 201);
    let secret = created["api_key"].as_str().unwrap();
    assert!(secret.starts_with("costops_") && secret.len() == 40);
    assert!(uuid::Uuid::parse_str(created["key_id"].as_str().unwrap()).is_ok());
    assert_eq!(created["rate_limit_per_minute"], 60);
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");
    let (_, list) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/keys"), None);
    let text = list.to_string();
    assert!(
        !text.contains(secret) && !text.contains(&secret[8..]),
        "{text}"
    );
    assert!(!text.contains("hash"), "{text}");
    let key = &list["keys"][0];
    assert_eq!(key["description"], "reporting job");
    assert_eq!(key["roles"], json!(["analyst"]));
    assert_eq!(key["scopes"], json!(["view_costs"]));
    assert_eq!(key["status"], "active");
    assert!(key.get("api_key").is_none());
    // Every field of a key is optional: no body makes a viewer key.
    let (status, bare) = cg.admin("POST", &format!("/admin/v1/tenants/{t}/keys"), None);
    assert_eq!(status, 201, "{bare}");
    assert_eq!(bare["roles"], json!(["viewer"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tier_limits_give_409_and_usage_counts_real_requests() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("free");
    for i in 0..3 {
        let (status, p) = cg.admin(
            "POST",
            &format!("/admin/v1/tenants/{t}/projects"),
            Some(json!({"name": format!("P{i}"), "budget": 100.0})),
        );
        assert_eq!(status, 201, "{p}");
        assert!(is_hex_id(p["project_id"].as_str().unwrap(), "proj-"));
    }
    let (status, body) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/projects"),
        Some(json!({"name": "P3", "budget": 1.0})),
    );
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "limit_reached");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("project limit reached"),
        "{body}"
    );
    for i in 0..5 {
        let (status, _) = cg.admin(
            "PUT",
            &format!("/admin/v1/tenants/{t}/users/u{i}"),
            Some(json!({"email": format!("u{i}@t.example"), "roles": ["viewer"]})),
        );
        assert_eq!(status, 201);
    }
    let (status, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/u5"),
        Some(json!({"email": "u5@t.example", "roles": ["viewer"]})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("limit_reached"))
    );
    // Replacing an existing user at the limit is fine; deleting makes room.
    let (status, u) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/u0"),
        Some(json!({"email": "new@t.example", "roles": ["analyst"]})),
    );
    assert_eq!(status, 200);
    assert_eq!(u["roles"], json!(["analyst"]));
    let (status, _) = cg.admin("DELETE", &format!("/admin/v1/tenants/{t}/users/u4"), None);
    assert_eq!(status, 200);
    let (status, _) = cg.admin("DELETE", &format!("/admin/v1/tenants/{t}/users/u4"), None);
    assert_eq!(status, 404);

    let (_, key) = cg.create_key(&t, &["viewer"]);
    for _ in 0..7 {
        let (status, _, _) = get_as(&cg.url(&format!("/v1/tenants/{t}/costs")), &key).await;
        assert_eq!(status, 200);
    }
    // Rejected requests are not counted.
    let (status, _, _) = support::get(&cg.url(&format!("/v1/tenants/{t}/costs"))).await;
    assert_eq!(status, 401);
    let (status, usage) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/usage"), None);
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["requests_today"], 7);
    assert_eq!(usage["projects"], 3);
    assert_eq!(usage["users"], 4);
    assert_eq!(usage["utilization"]["requests"], 0.7);
    assert_eq!(usage["utilization"]["projects"], 100.0);
    assert_eq!(usage["utilization"]["users"], 80.0);
    assert_eq!(usage["limits"]["max_requests_per_day"], 1000);
}
