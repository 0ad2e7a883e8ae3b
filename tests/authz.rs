//! The policy through the real proxy: the seed's role × permission matrix on
//! the default routes, tenant and project isolation, path tricks, scopes,
//! custom roles, shadow mode. Every denial is checked to reach no upstream.

mod support;

use std::collections::HashMap;

use costguard::roles::{BUILT_IN, Permission};
use serde_json::json;
use support::{
    Sidecar, Upstream, copy_shipped_policy, error_code, policy_table, raw_request, shipped_policy,
    sidecar, sidecar_with_policy,
};

/// A sidecar on the shipped policy plus one more policy file.
fn sidecar_with(up: &Upstream, dir: &tempfile::TempDir, file: &str, text: &str) -> Sidecar {
    copy_shipped_policy(dir.path());
    std::fs::write(dir.path().join(file), text).unwrap();
    sidecar(up, &policy_table(dir.path()))
}

fn call(cg: &Sidecar, method: &str, path: &str, key: &str) -> (u16, String) {
    let body = if matches!(method, "POST" | "PUT" | "PATCH") {
        "{}"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: costs.example\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_request(cg.proxy, req.as_bytes());
    (resp.status, resp.body)
}

fn project(cg: &Sidecar, tenant: &str) -> String {
    let (status, p) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/projects"),
        Some(json!({"name": "Bot", "budget": 100})),
    );
    assert_eq!(status, 201, "{p}");
    p["project_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_role_permission_matrix_on_the_default_routes() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let t = cg.create_tenant("enterprise");
    let proj = project(&cg, &t);
    let routes: Vec<(&str, String, Permission)> = vec![
        (
            "GET",
            format!("/v1/tenants/{t}/costs"),
            Permission::ViewCosts,
        ),
        (
            "GET",
            format!("/v1/tenants/{t}/costs/export"),
            Permission::ExportCosts,
        ),
        (
            "GET",
            format!("/v1/tenants/{t}/projects/{proj}/costs"),
            Permission::ViewCosts,
        ),
        (
            "GET",
            format!("/v1/tenants/{t}/budgets"),
            Permission::ViewBudgets,
        ),
        (
            "POST",
            format!("/v1/tenants/{t}/budgets"),
            Permission::CreateBudgets,
        ),
        (
            "PUT",
            format!("/v1/tenants/{t}/budgets/b-1"),
            Permission::EditBudgets,
        ),
        (
            "PATCH",
            format!("/v1/tenants/{t}/budgets/b-1"),
            Permission::EditBudgets,
        ),
        (
            "DELETE",
            format!("/v1/tenants/{t}/budgets/b-1"),
            Permission::DeleteBudgets,
        ),
        (
            "GET",
            format!("/v1/tenants/{t}/analytics/trends/daily"),
            Permission::ViewAnalytics,
        ),
        (
            "POST",
            format!("/v1/tenants/{t}/reports"),
            Permission::CreateReports,
        ),
        (
            "GET",
            format!("/v1/tenants/{t}/audit"),
            Permission::ViewAuditLogs,
        ),
    ];
    let mut outcomes: HashMap<(&str, &str, String), u16> = HashMap::new();
    for (role, _, perms) in BUILT_IN {
        let (_, key) = cg.create_key(&t, &[role]);
        for (method, path, needed) in &routes {
            let before = up.count();
            let (status, body) = call(&cg, method, path, &key);
            let expected = if perms.contains(*needed) { 200 } else { 403 };
            assert_eq!(status, expected, "{role} {method} {path}: {body}");
            if expected == 403 {
                assert_eq!(error_code(&body), "forbidden");
                assert_eq!(up.count(), before, "a denied request reached the upstream");
            } else {
                assert_eq!(
                    up.last().method,
                    *method,
                    "the checked method is the forwarded one"
                );
            }
            outcomes.insert((role, method, path.clone()), status);
        }
    }
    // The seed's statements, spelled out.
    let o =
        |role: &'static str, method: &'static str, path: String| outcomes[&(role, method, path)];
    assert_eq!(
        o("viewer", "GET", format!("/v1/tenants/{t}/costs")),
        200,
        "viewer reads costs"
    );
    assert_eq!(
        o("viewer", "GET", format!("/v1/tenants/{t}/costs/export")),
        403,
        "viewer cannot export"
    );
    assert_eq!(
        o("analyst", "GET", format!("/v1/tenants/{t}/costs/export")),
        200,
        "analyst exports"
    );
    assert_eq!(
        o(
            "budget_manager",
            "DELETE",
            format!("/v1/tenants/{t}/budgets/b-1")
        ),
        200,
        "budget_manager deletes budgets"
    );
    assert_eq!(
        o("project_admin", "POST", format!("/v1/tenants/{t}/budgets")),
        200,
        "project_admin creates budgets"
    );
    assert_eq!(
        o(
            "project_admin",
            "DELETE",
            format!("/v1/tenants/{t}/budgets/b-1")
        ),
        403,
        "project_admin cannot delete"
    );
    assert_eq!(
        o("admin", "GET", format!("/v1/tenants/{t}/audit")),
        200,
        "admin reads audit"
    );
    assert_eq!(o("analyst", "GET", format!("/v1/tenants/{t}/audit")), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_projects_are_isolated() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let a = cg.create_tenant("enterprise");
    let b = cg.create_tenant("enterprise");
    let a_proj = project(&cg, &a);
    let b_proj = project(&cg, &b);
    let (_, a_admin) = cg.create_key(&a, &["admin"]);
    let (_, a_root) = cg.create_key(&a, &["system_admin"]);

    for path in [
        format!("/v1/tenants/{b}/costs"),
        format!("/v1/tenants/{b}/budgets"),
        format!("/v1/tenants/{b}/projects/{b_proj}/costs"),
        format!("/v1/tenants/{a}/projects/{b_proj}/costs"),
        format!("/v1/tenants/{a}/projects/proj-00000000/costs"),
    ] {
        let (status, body) = call(&cg, "GET", &path, &a_admin);
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(error_code(&body), "tenant_mismatch", "{path}");
    }
    assert_eq!(
        up.count(),
        0,
        "no cross-tenant request reached the upstream"
    );
    assert_eq!(
        call(
            &cg,
            "GET",
            &format!("/v1/tenants/{a}/projects/{a_proj}/costs"),
            &a_admin
        )
        .0,
        200
    );
    // Only system_admin crosses tenants (its project must still be the tenant's).
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{b}/costs"), &a_root).0,
        200
    );
    assert_eq!(
        call(
            &cg,
            "GET",
            &format!("/v1/tenants/{b}/projects/{b_proj}/costs"),
            &a_root
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &cg,
            "GET",
            &format!("/v1/tenants/{b}/projects/{a_proj}/costs"),
            &a_root
        )
        .0,
        403
    );
    assert_eq!(
        up.last().headers["x-costops-tenant-id"],
        a.as_str(),
        "identity stays the caller's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_denied_and_public_routes_need_no_key() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = sidecar_with(
        &up,
        &dir,
        "public.toml",
        "[[public]]\nmethod = \"GET\"\npath = \"/v1/status\"\n",
    );
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["admin"]);
    for path in [
        "/v1/unknown",
        "/",
        &format!("/v1/tenants/{t}"),
        &format!("/v1/tenants/{t}/costs/"),
        &format!("/V1/tenants/{t}/costs"),
    ] {
        let (status, body) = call(&cg, "GET", path, &key);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "forbidden"),
            "{path}"
        );
    }
    assert_eq!(
        call(&cg, "POST", &format!("/v1/tenants/{t}/costs"), &key).0,
        403,
        "method not in the route"
    );
    // Without credentials an unknown route is 401 (who you are comes first).
    let resp = raw_request(
        cg.proxy,
        b"GET /v1/unknown HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 401);
    assert_eq!(up.count(), 0);
    // A public route is forwarded without a credential and without identity.
    let resp = raw_request(cg.proxy, b"GET /v1/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-CostOps-Tenant-Id: forged\r\n\r\n");
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-costops")),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_are_refused_before_anything_else() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["system_admin"]);
    let tricks = [
        format!("/v1/tenants/{t}%2Fcosts"),
        format!("/v1/tenants/{t}%2fcosts"),
        format!("/v1/tenants/{t}%5Ccosts"),
        format!("/v1/tenants/{t}\\costs"),
        format!("/v1/tenants/{t}/budgets/../costs"),
        format!("/v1/tenants/{t}/./costs"),
        format!("/v1/tenants/{t}/%2e%2e/costs"),
        format!("/v1/tenants/{t}/costs/%2E"),
        format!("/v1/tenants/{t}/costs;x=1"),
        format!("/v1/tenants/{t};/costs"),
        format!("/v1/tenants//{t}/costs"),
        format!("/v1/tenants/{t}/costs%00"),
        format!("/v1/%74enants/{t}/costs"),
        format!("/v1/tenants/{t}/c%6Fsts"),
        format!("/v1/tenants/{t}/costs%zz"),
    ];
    for path in &tricks {
        let (status, body) = call(&cg, "GET", path, &key);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    // Absolute form whose authority is not the Host.
    let req = format!(
        "GET http://evil.example/v1/tenants/{t}/costs HTTP/1.1\r\nHost: costs.example\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    assert_eq!(raw_request(cg.proxy, req.as_bytes()).status, 400);
    assert_eq!(up.count(), 0, "no trick reached the upstream");
    let req = format!(
        "GET http://costs.example/v1/tenants/{t}/costs HTTP/1.1\r\nHost: costs.example\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    assert_eq!(
        raw_request(cg.proxy, req.as_bytes()).status,
        200,
        "absolute form with the same authority is fine"
    );
    assert_eq!(up.last().target, format!("/v1/tenants/{t}/costs"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checked_method_is_the_forwarded_method() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["project_admin"]);
    let req = format!(
        "POST /v1/tenants/{t}/budgets HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
         X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nX_HTTP_Method_Override: DELETE\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert_eq!(raw_request(cg.proxy, req.as_bytes()).status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    for h in seen.headers.keys() {
        let name = h.as_str().replace('_', "-");
        assert!(
            !name.starts_with("x-http-method") && name != "x-method-override",
            "{h} reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_narrow_a_keys_roles() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let t = cg.create_tenant("enterprise");
    let (status, k) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        Some(json!({"roles": ["analyst"], "scopes": ["view_costs"]})),
    );
    assert_eq!(status, 201);
    let key = k["api_key"].as_str().unwrap();
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{t}/costs"), key).0,
        200
    );
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{t}/costs/export"), key).0,
        403,
        "analyst could, the scope cannot"
    );
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{t}/budgets"), key).0,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_roles_live_within_their_tenant() {
    let up = Upstream::start().await;
    let cg = sidecar_with_policy(&up, "", &shipped_policy());
    let a = cg.create_tenant("enterprise");
    let b = cg.create_tenant("enterprise");
    let (_, a_admin) = cg.create_key(&a, &["admin"]);
    let role = json!({"description": "reads the audit trail", "permissions": ["view_audit_logs", "view_costs"]});
    let (status, r) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{a}/roles/auditor"),
        &a_admin,
        Some(&role),
    );
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["permissions"], json!(["view_audit_logs", "view_costs"]));
    let (status, got) = cg.admin_call(
        "GET",
        &format!("/admin/v1/tenants/{a}/roles/auditor"),
        &a_admin,
        None,
    );
    assert_eq!((status, &got["name"]), (200, &json!("auditor")));
    // Assignable in its tenant, by a caller who holds its permissions.
    let (status, k) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{a}/keys"),
        &a_admin,
        Some(&json!({"roles": ["auditor"]})),
    );
    assert_eq!(status, 201, "{k}");
    let key = k["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{a}/audit"), &key).0,
        200
    );
    assert_eq!(up.last().headers["x-costops-roles"], "auditor");
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{a}/costs/export"), &key).0,
        403
    );
    // Changing the role changes what its holders may do, at once.
    let narrower = json!({"permissions": ["view_costs"]});
    assert_eq!(
        cg.admin_call(
            "PUT",
            &format!("/admin/v1/tenants/{a}/roles/auditor"),
            &a_admin,
            Some(&narrower)
        )
        .0,
        200
    );
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{a}/audit"), &key).0,
        403
    );
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{a}/costs"), &key).0,
        200
    );
    // Invisible and unassignable in another tenant.
    let (status, _) = cg.admin("GET", &format!("/admin/v1/tenants/{b}/roles/auditor"), None);
    assert_eq!(status, 404);
    let (status, body) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{b}/keys"),
        Some(json!({"roles": ["auditor"]})),
    );
    assert_eq!(status, 400, "{body}");
    // Refused definitions, each with its reason; nothing changes.
    for (name, body, status) in [
        ("viewer", json!({"permissions": ["view_costs"]}), 409),
        ("admin", json!({"permissions": ["view_costs"]}), 409),
        ("x", json!({"permissions": ["view_everything"]}), 400),
        ("x", json!({"permissions": []}), 400),
        ("x", json!({"permissions": ["system_admin"]}), 403),
        ("Bad-Name", json!({"permissions": ["view_costs"]}), 400),
        (
            "x",
            json!({"permissions": ["view_costs"], "tenant_id": b}),
            400,
        ),
    ] {
        let (got, resp) = cg.admin_call(
            "PUT",
            &format!("/admin/v1/tenants/{a}/roles/{name}"),
            &a_admin,
            Some(&body),
        );
        assert_eq!(got, status, "{name} {body}: {resp}");
    }
    // A role cannot hold permissions its creator lacks.
    let (_, a_pm) = cg.create_key(&a, &["project_admin"]);
    let (status, _) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{a}/roles/y"),
        &a_pm,
        Some(&json!({"permissions": ["view_costs"]})),
    );
    assert_eq!(status, 403, "project_admin lacks manage_users");
    let (_, list) = cg.admin_call(
        "GET",
        &format!("/admin/v1/tenants/{a}/roles"),
        &a_admin,
        None,
    );
    assert_eq!(list["roles"].as_array().unwrap().len(), 1);
    // Deleting it takes its permissions away from its holders.
    assert_eq!(
        cg.admin_call(
            "DELETE",
            &format!("/admin/v1/tenants/{a}/roles/auditor"),
            &a_admin,
            None
        )
        .0,
        200
    );
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{a}/costs"), &key).0,
        403
    );
    assert_eq!(
        cg.admin_call(
            "DELETE",
            &format!("/admin/v1/tenants/{a}/roles/auditor"),
            &a_admin,
            None
        )
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_routes_are_logged_not_enforced() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = sidecar_with(
        &up,
        &dir,
        "stricter.toml",
        "mode = \"shadow\"\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{tenant}/costs\"\npermission = \"export_costs\"\n",
    );
    let t = cg.create_tenant("standard");
    let (_, viewer) = cg.create_key(&t, &["viewer"]);
    assert_eq!(
        call(&cg, "GET", &format!("/v1/tenants/{t}/costs"), &viewer).0,
        200,
        "enforced policy allows"
    );
    let mut line = None;
    for _ in 0..50 {
        line = cg
            .logs()
            .lines()
            .find(|l| l.contains("Shadow policy decision."))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let v: serde_json::Value =
        serde_json::from_str(&line.expect("a shadow decision is logged")).unwrap();
    assert_eq!(v["shadow_decision"], "deny");
    assert_eq!(v["enforced_decision"], "allow");
    assert!(v["route"].as_str().unwrap().starts_with("stricter.toml:"));
}
