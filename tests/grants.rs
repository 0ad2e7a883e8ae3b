//! Project-scoped grants through the real binary (issue 20 part 2): a key
//! holding `viewer` tenant-wide and `analyst` on one project may export
//! that project's costs and no other's; grants are validated like roles
//! (they exist, no escalation, only this tenant's projects, bounded) and a
//! refused request creates nothing; network conditions; a route naming its
//! project in the query (`project_query`). Every denial is checked to reach
//! no upstream.

mod support;

use serde_json::{Value, json};
use support::{
    NO_AUTH_THROTTLE, Sidecar, Upstream, copy_shipped_policy, error_code, policy_table,
    raw_request, sidecar,
};

/// Routes the shipped policy lacks: an `export_costs` route per project
/// (viewer lacks it, analyst has it) and one naming the project in the
/// query.
const GRANT_ROUTES: &str = r#"
[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/projects/{project}/costs/export"
permission = "export_costs"

[[routes]]
method = "GET"
path = "/v1/tenants/{tenant}/exports"
permission = "export_costs"
project_query = "project_id"
"#;

/// A sidecar on the shipped policy plus [`GRANT_ROUTES`].
fn start(up: &Upstream, dir: &tempfile::TempDir) -> Sidecar {
    copy_shipped_policy(dir.path());
    std::fs::write(dir.path().join("zz-grants.toml"), GRANT_ROUTES).unwrap();
    sidecar(
        up,
        &format!("{NO_AUTH_THROTTLE}{}", policy_table(dir.path())),
    )
}

fn project(cg: &Sidecar, tenant: &str) -> String {
    let (status, p) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/projects"),
        Some(json!({"name": "P", "budget": 100})),
    );
    assert_eq!(status, 201, "{p}");
    p["project_id"].as_str().unwrap().to_string()
}

/// `GET path_and_query` on the proxy with `key`: status and body.
fn get(cg: &Sidecar, path_and_query: &str, key: &str) -> (u16, String) {
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: costs.example\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    let resp = raw_request(cg.proxy, req.as_bytes());
    (resp.status, resp.body)
}

/// Asserts `path` is allowed for `key` and reached the upstream as sent.
fn assert_allowed(cg: &Sidecar, up: &Upstream, path: &str, key: &str) {
    let before = up.count();
    let (status, body) = get(cg, path, key);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(up.count(), before + 1, "{path}: the upstream saw it once");
    assert_eq!(up.last().target, path);
}

/// Asserts `path` is refused 403 `code` for `key` and reached no upstream.
fn assert_denied(cg: &Sidecar, up: &Upstream, path: &str, key: &str, code: &str) {
    let before = up.count();
    let (status, body) = get(cg, path, key);
    assert_eq!(status, 403, "{path}: {body}");
    assert_eq!(error_code(&body), code, "{path}: {body}");
    assert_eq!(up.count(), before, "{path}: the upstream saw it");
}

fn keys(cg: &Sidecar, tenant: &str) -> Vec<Value> {
    let (status, body) = cg.admin("GET", &format!("/admin/v1/tenants/{tenant}/keys"), None);
    assert_eq!(status, 200, "{body}");
    body["keys"].as_array().unwrap().clone()
}

/// Asserts a key request is refused with `status` and `code` and that the
/// tenant still has exactly the keys it had.
fn assert_key_refused(
    cg: &Sidecar,
    tenant: &str,
    as_key: &str,
    req: Value,
    status: u16,
    code: &str,
) {
    let before = keys(cg, tenant).len();
    let (got, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/keys"),
        as_key,
        Some(&req),
    );
    assert_eq!(got, status, "{req}: {body}");
    assert_eq!(body["error"]["code"], code, "{req}: {body}");
    assert!(body.get("api_key").is_none(), "{body}");
    assert_eq!(keys(cg, tenant).len(), before, "{req}: a key was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_counts_only_on_the_projects_it_names() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let (a, b) = (project(&cg, &t), project(&cg, &t));
    let (key_id, key) = cg.create_key_with(
        &t,
        json!({"description": "a-only analyst", "roles": ["viewer"],
               "grants": [{"role": "analyst", "projects": [a]}]}),
    );
    let export = |p: &str| format!("/v1/tenants/{t}/projects/{p}/costs/export");
    assert_allowed(&cg, &up, &export(&a), &key);
    assert_denied(&cg, &up, &export(&b), &key, "forbidden");
    // Tenant-wide, the key is a viewer: no export there.
    assert_denied(
        &cg,
        &up,
        &format!("/v1/tenants/{t}/costs/export"),
        &key,
        "forbidden",
    );
    // Its tenant-wide roles still work everywhere.
    assert_allowed(
        &cg,
        &up,
        &format!("/v1/tenants/{t}/projects/{b}/costs"),
        &key,
    );
    // A key without the grant gets nothing on A.
    let (_, viewer) = cg.create_key(&t, &["viewer"]);
    assert_denied(&cg, &up, &export(&a), &viewer, "forbidden");

    // Shown in the listing, as written.
    let listed = keys(&cg, &t);
    let shown = listed
        .iter()
        .find(|k| k["key_id"] == key_id.as_str())
        .unwrap();
    assert_eq!(
        shown["grants"],
        json!([{"role": "analyst", "projects": [a]}])
    );
    assert_eq!(shown["roles"], json!(["viewer"]));

    // A rotation keeps the grant.
    let (status, body) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 0})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["grants"],
        json!([{"role": "analyst", "projects": [a]}])
    );
    let rotated = body["api_key"].as_str().unwrap().to_string();
    assert_allowed(&cg, &up, &export(&a), &rotated);
    assert_denied(&cg, &up, &export(&b), &rotated, "forbidden");

    // The key's creation is audited with the grant it was given.
    let (status, body) = cg.admin(
        "GET",
        &format!("/admin/v1/audit?tenant_id={t}&event_type=apikey.created&limit=100"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let created = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["details"]["target"]["key_id"] == key_id.as_str())
        .unwrap_or_else(|| panic!("no apikey.created record for the key: {body}"));
    assert_eq!(
        created["details"]["changes"]["grants"],
        json!([{"role": "analyst", "projects": [a]}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_or_foreign_grant_is_refused_and_creates_nothing() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let other = cg.create_tenant("enterprise");
    let a = project(&cg, &t);
    let foreign = project(&cg, &other);
    let root = support::ADMIN_TOKEN;
    let key = |grants: Value| json!({"description": "x", "roles": ["viewer"], "grants": grants});
    // Another tenant's project is refused exactly like one that does not exist.
    for p in [foreign.as_str(), "proj-00000000"] {
        assert_key_refused(
            &cg,
            &t,
            root,
            key(json!([{"role": "analyst", "projects": [p]}])),
            400,
            "invalid_request",
        );
    }
    let (_, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        root,
        Some(&key(json!([{"role": "analyst", "projects": [foreign]}]))),
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not a project of this tenant"),
        "{message}"
    );
    let bad = [
        json!([{"role": "no_such_role", "projects": [a]}]),
        json!([{"role": "analyst", "projects": []}]),
        json!([{"role": "analyst", "projects": ["org-1234"]}]),
        json!([{"role": "analyst", "projects": [a, a]}]),
        json!([{"role": "analyst", "projects": [a]}, {"role": "analyst", "projects": [a]}]),
        json!([{"role": "analyst", "projects": [a], "conditions": {"networks": ["10.0.0.0/33"]}}]),
        json!([{"role": "analyst", "projects": [a], "conditions": {"hours_utc": {"start": 9, "end": 9}}}]),
        json!([{"role": "analyst", "projects": [a], "conditions": {"hours_utc": {"start": 9, "end": 24}}}]),
        // A condition this build does not evaluate is refused, not ignored.
        json!([{"role": "analyst", "projects": [a], "conditions": {"data_region": "eu"}}]),
        json!([{"role": "analyst", "projects": [a], "scope": "x"}]),
        // system_admin crosses tenants: it cannot be project-scoped.
        json!([{"role": "system_admin", "projects": [a]}]),
        json!((0..17).map(|i| json!({"role": "analyst", "projects": [a], "conditions": {"networks": [format!("10.0.0.{i}")]}})).collect::<Vec<_>>()),
    ];
    for grants in bad {
        assert_key_refused(&cg, &t, root, key(grants), 400, "invalid_request");
    }
    // Users: the same rules; nothing is created.
    let (status, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/bob"),
        Some(json!({"email": "bob@example.com", "roles": ["viewer"],
                    "grants": [{"role": "analyst", "projects": [foreign]}]})),
    );
    assert_eq!(status, 400, "{body}");
    let (_, users) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/users"), None);
    assert_eq!(users["users"], json!([]), "{users}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_cannot_hand_out_more_than_the_caller_holds() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let a = project(&cg, &t);
    let (status, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/roles/key_manager"),
        Some(json!({"description": "keys", "permissions": ["manage_api_keys", "manage_users", "view_costs", "view_budgets", "view_analytics"]})),
    );
    assert!(status == 200 || status == 201, "{status} {body}");
    let (_, manager) = cg.create_key(&t, &["key_manager"]);
    // Within its power: a viewer grant.
    let (status, body) = cg.admin_call(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        &manager,
        Some(&json!({"description": "ok", "roles": ["viewer"],
                     "grants": [{"role": "viewer", "projects": [a]}]})),
    );
    assert_eq!(status, 201, "{body}");
    // Beyond it: analyst (export_costs, create_reports) on one project.
    assert_key_refused(
        &cg,
        &t,
        &manager,
        json!({"description": "x", "roles": ["viewer"],
               "grants": [{"role": "analyst", "projects": [a]}]}),
        403,
        "forbidden",
    );
    let (status, body) = cg.admin_call(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/carol"),
        &manager,
        Some(&json!({"email": "carol@example.com", "roles": ["viewer"],
                     "grants": [{"role": "analyst", "projects": [a]}]})),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (_, users) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/users"), None);
    assert_eq!(users["users"], json!([]), "{users}");
    // A key whose grant holds more than the manager cannot be revoked by it.
    let (strong_id, _) = cg.create_key_with(
        &t,
        json!({"description": "strong", "roles": ["viewer"],
               "grants": [{"role": "analyst", "projects": [a]}]}),
    );
    let (status, body) = cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{strong_id}"),
        &manager,
        None,
    );
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_condition_is_matched_against_the_client_address() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let a = project(&cg, &t);
    let with_networks = |networks: &[&str]| {
        cg.create_key_with(
            &t,
            json!({"description": "net", "roles": ["viewer"],
                   "grants": [{"role": "analyst", "projects": [a],
                               "conditions": {"networks": networks}}]}),
        )
        .1
    };
    let export = format!("/v1/tenants/{t}/projects/{a}/costs/export");
    let elsewhere = with_networks(&["10.0.0.0/8", "2001:db8::/32"]);
    assert_denied(&cg, &up, &export, &elsewhere, "forbidden");
    let local = with_networks(&["10.0.0.0/8", "127.0.0.0/8"]);
    assert_allowed(&cg, &up, &export, &local);
    // A forwarded address from an untrusted peer changes nothing.
    let before = up.count();
    let req = format!(
        "GET {export} HTTP/1.1\r\nHost: costs.example\r\nConnection: close\r\nAuthorization: Bearer {elsewhere}\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
    );
    let resp = raw_request(cg.proxy, req.as_bytes());
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert_eq!(up.count(), before);
    // Written normalised.
    let listed = keys(&cg, &t);
    assert!(
        listed
            .iter()
            .any(|k| k["grants"][0]["conditions"]["networks"]
                == json!(["10.0.0.0/8", "127.0.0.0/8"])),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_query_route_counts_a_grant_on_exactly_one_named_project() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let (a, b) = (project(&cg, &t), project(&cg, &t));
    let (_, key) = cg.create_key_with(
        &t,
        json!({"description": "q", "roles": ["viewer"],
               "grants": [{"role": "analyst", "projects": [a]}]}),
    );
    let exports = format!("/v1/tenants/{t}/exports");
    assert_allowed(&cg, &up, &format!("{exports}?project_id={a}"), &key);
    assert_allowed(
        &cg,
        &up,
        &format!("{exports}?format=csv&project_id={a}"),
        &key,
    );
    for query in [
        String::new(),
        format!("?project_id={b}"),
        format!("?project_id={a}&project_id={b}"),
        format!("?project_id={b}&project_id={a}"),
        format!("?project_id={a}&project%5Fid={b}"),
        format!("?project_id={a};project_id={b}"),
        format!("?project_id={a}&project_id%5B%5D={b}"),
        format!("?project_id={a}&project.id={b}"),
        format!("?projectid={a}"),
    ] {
        assert_denied(&cg, &up, &format!("{exports}{query}"), &key, "forbidden");
    }
    // An analyst tenant-wide needs no project at all.
    let (_, analyst) = cg.create_key(&t, &["analyst"]);
    assert_allowed(&cg, &up, &exports, &analyst);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_grants_are_stored_shown_and_replaced_with_the_user() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let a = project(&cg, &t);
    let path = format!("/admin/v1/tenants/{t}/users/dana");
    let grants = json!([{"role": "analyst", "projects": [a],
                         "conditions": {"hours_utc": {"start": 22, "end": 6}}}]);
    let (status, body) = cg.admin(
        "PUT",
        &path,
        Some(json!({"email": "dana@example.com", "roles": ["viewer"], "grants": grants})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["grants"], grants);
    let (_, users) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/users"), None);
    assert_eq!(users["users"][0]["grants"], grants, "{users}");
    // A put without grants replaces them with none.
    let (status, body) = cg.admin(
        "PUT",
        &path,
        Some(json!({"email": "dana@example.com", "roles": ["viewer"]})),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.get("grants").is_none(), "{body}");
}

#[test]
fn policy_explain_shows_grants_and_project_query() {
    let dir = tempfile::tempdir().unwrap();
    copy_shipped_policy(dir.path());
    std::fs::write(dir.path().join("zz-grants.toml"), GRANT_ROUTES).unwrap();
    let explain = |args: &[&str]| {
        let out = support::cli(["policy", "explain", "--policy"])
            .arg(dir.path())
            .args(args)
            .run();
        (out.status.code(), out.stdout, out.stderr)
    };
    let grant = [
        "--role",
        "viewer",
        "--grant",
        "analyst:proj-0000000a",
        "--tenant",
        "org-1",
    ];
    let (code, text, err) = explain(
        &[
            &grant[..],
            &[
                "GET",
                "/v1/tenants/org-1/projects/proj-0000000a/costs/export",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(
        text.contains(
            "grant analyst on proj-0000000a: applies on proj-0000000a: view_costs, export_costs"
        ),
        "{text}"
    );
    let (code, text, _) = explain(
        &[
            &grant[..],
            &[
                "GET",
                "/v1/tenants/org-1/projects/proj-0000000b/costs/export",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "grant analyst on proj-0000000a: does not apply: the project is not one of the grant's"
        ),
        "{text}"
    );
    assert!(text.contains("decision: DENY (403 forbidden"), "{text}");
    // The query route says where its project comes from.
    let (code, text, _) = explain(
        &[
            &grant[..],
            &["GET", "/v1/tenants/org-1/exports?project_id=proj-0000000a"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("project: from the query parameter project_id"),
        "{text}"
    );
    // A JSON grant with a network condition, with and without --client.
    let json_grant = r#"{"role": "analyst", "projects": ["proj-0000000a"], "conditions": {"networks": ["10.0.0.0/8"]}}"#;
    let path = "/v1/tenants/org-1/projects/proj-0000000a/costs/export";
    let (code, text, _) = explain(&["--role", "viewer", "--grant", json_grant, "GET", path]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no client address"), "{text}");
    let (code, text, _) = explain(&[
        "--role", "viewer", "--grant", json_grant, "--client", "10.2.3.4", "GET", path,
    ]);
    assert_eq!(code, Some(0), "{text}");
    // A malformed grant is a usage error.
    let (code, _, err) = explain(&["--grant", "analyst", "GET", path]);
    assert_eq!(code, Some(2), "{err}");
}

/// Shared mode (PostgreSQL + Redis, two replicas): a key with a grant made
/// on one replica is enforced the same on the other, and a change to the
/// custom role a grant names reaches the other replica like any role
/// change.
#[tokio::test(flavor = "multi_thread")]
async fn grants_behave_the_same_on_every_replica_of_a_shared_store() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    copy_shipped_policy(dir.path());
    std::fs::write(dir.path().join("zz-grants.toml"), GRANT_ROUTES).unwrap();
    let shared = support::shared::Shared::new();
    let r = shared.replicas(
        2,
        &up,
        &format!("{NO_AUTH_THROTTLE}{}", policy_table(dir.path())),
        &[],
    );
    let (a, b) = (&r[0], &r[1]);
    let t = a.create_tenant("enterprise");
    let (pa, pb) = (project(a, &t), project(a, &t));
    let role = |permissions: &[&str]| {
        let (status, body) = a.admin(
            "PUT",
            &format!("/admin/v1/tenants/{t}/roles/exporter"),
            Some(json!({"description": "x", "permissions": permissions})),
        );
        assert!(status == 200 || status == 201, "{status} {body}");
    };
    role(&["view_costs"]);
    let (_, key) = a.create_key_with(
        &t,
        json!({"description": "shared", "roles": ["viewer"],
               "grants": [{"role": "exporter", "projects": [pa]}]}),
    );
    let export = |p: &str| format!("/v1/tenants/{t}/projects/{p}/costs/export");
    assert_denied(b, &up, &export(&pa), &key, "forbidden");
    role(&["view_costs", "export_costs"]);
    let since = std::time::Instant::now();
    loop {
        let (status, body) = get(b, &export(&pa), &key);
        if status == 200 {
            break;
        }
        assert_eq!(status, 403, "{body}");
        assert!(
            since.elapsed() < std::time::Duration::from_secs(5),
            "the role change did not reach the other replica"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_allowed(a, &up, &export(&pa), &key);
    assert_denied(b, &up, &export(&pb), &key, "forbidden");
    assert_denied(a, &up, &export(&pb), &key, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hours_condition_is_matched_against_the_utc_clock() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cg = start(&up, &dir);
    let t = cg.create_tenant("enterprise");
    let a = project(&cg, &t);
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24;
    // Windows two hours wide, so an hour boundary during the test moves
    // neither across `now`.
    let with_hours = |start: u64, end: u64| {
        cg.create_key_with(
            &t,
            json!({"description": "hours", "roles": ["viewer"],
                   "grants": [{"role": "analyst", "projects": [a],
                               "conditions": {"hours_utc": {"start": start % 24, "end": end % 24}}}]}),
        )
        .1
    };
    let export = format!("/v1/tenants/{t}/projects/{a}/costs/export");
    let now = with_hours(hour, hour + 2);
    assert_allowed(&cg, &up, &export, &now);
    let later = with_hours(hour + 2, hour + 4);
    assert_denied(&cg, &up, &export, &later, "forbidden");
}

/// A user's grants through the real single sign-on path: an IdP-issued
/// JWT (npm `oidc-provider` on 127.0.0.2) for a user the admin API gave
/// `viewer` and `analyst` on one project; replacing the user without the
/// grant takes it away from the next request, like a role change.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_grant_applies_to_their_jwt_and_goes_with_the_user() {
    use support::idp::{Idp, client, now, provider_toml};
    let setup = support::sso::Setup::new(&["enterprise"]);
    let port = setup.port;
    let idp = Idp::start(&json!({"clients": [client("cg", None, "RS256", port)], "users": {}}));
    let dir = tempfile::tempdir().unwrap();
    copy_shipped_policy(dir.path());
    std::fs::write(dir.path().join("zz-grants.toml"), GRANT_ROUTES).unwrap();
    let toml = format!(
        "{NO_AUTH_THROTTLE}{}[sso]\n{}",
        policy_table(dir.path()),
        provider_toml(
            "corp",
            &idp.issuer,
            "cg",
            None,
            port,
            "tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\n",
        ),
    );
    let w = setup.start(idp, &toml).await;
    let (cg, up, t) = (&w.cg, &w.up, &w.tenant);
    let (a, b) = (project(cg, t), project(cg, t));
    let put = |grants: Value| {
        let (status, body) = cg.admin(
            "PUT",
            &format!("/admin/v1/tenants/{t}/users/alice"),
            Some(json!({"email": "alice@example.com", "roles": ["viewer"], "grants": grants})),
        );
        assert!(status == 200 || status == 201, "{status} {body}");
    };
    put(json!([{"role": "analyst", "projects": [a]}]));
    // The provider says only viewer; the grant comes from the admin API.
    let token = w
        .idp
        .mint(
            json!({"iss": w.idp.issuer, "aud": "cg", "sub": "alice", "exp": now() + 300,
                   "iat": now(), "tenant_id": t, "roles": ["viewer"],
                   "jti": uuid::Uuid::new_v4().to_string()}),
            json!({}),
            "RS256",
            None,
        )
        .await;
    let export = |p: &str| format!("/v1/tenants/{t}/projects/{p}/costs/export");
    assert_allowed(cg, up, &export(&a), &token);
    let seen = up.last();
    assert_eq!(seen.headers["x-costops-user-id"], "alice");
    assert_eq!(seen.headers["x-costops-auth-method"], "jwt");
    assert_denied(cg, up, &export(&b), &token, "forbidden");
    // The grant goes with the user's next version, for the same token.
    put(json!([]));
    assert_denied(cg, up, &export(&a), &token, "forbidden");
    // And comes back with it.
    put(json!([{"role": "analyst", "projects": [b]}]));
    assert_allowed(cg, up, &export(&b), &token);
    assert_denied(cg, up, &export(&a), &token, "forbidden");
}
