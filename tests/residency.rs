//! Data residency through the real binary, with two regional upstreams on
//! loopback: each tenant's requests reach only its region's upstream, a
//! tenant whose region has none here is refused (403
//! `residency_violation`, audited with the region, never forwarded), every
//! record carries the region, and only a system admin may move a tenant.

mod support;

use serde_json::{Value, json};
use support::audit::{get, of_type, records, start, verify};
use support::{Sidecar, Upstream, cli};

fn flush(cg: &Sidecar) {
    let (status, _) = cg.admin("DELETE", "/admin/v1/tenants/org-ffffffff", None);
    assert_eq!(status, 404);
}

/// A tenant in `region` (`None`: the default) and a viewer key of it.
fn tenant_in(cg: &Sidecar, region: Option<&str>) -> (String, String) {
    let mut body = json!({"organization_name": "Resident", "admin_email": "ops@test.example", "tier": "enterprise"});
    if let Some(r) = region {
        body["data_region"] = json!(r);
    }
    let (status, t) = cg.admin("POST", "/admin/v1/tenants", Some(body));
    assert_eq!(status, 201, "{t}");
    let id = t["tenant_id"].as_str().unwrap().to_string();
    assert_eq!(
        t["settings"]["data_region"],
        region.unwrap_or("us-east-1"),
        "{t}"
    );
    let (_, key) = cg.create_key(&id, &["viewer"]);
    (id, key)
}

fn costs(cg: &Sidecar, tenant: &str, key: &str) -> support::RawResponse {
    get(
        cg,
        &format!("/v1/tenants/{tenant}/costs"),
        &format!("X-API-Key: {key}\r\n"),
    )
}

/// How many requests for `tenant` each upstream saw.
fn seen_for(up: &Upstream, tenant: &str) -> usize {
    up.seen()
        .iter()
        .filter(|s| s.target.contains(tenant))
        .count()
}

/// costguard with a default upstream and two regional ones (us-east-1,
/// eu-west-1), its store under `dir`.
struct Regions {
    fallback: Upstream,
    us: Upstream,
    eu: Upstream,
    dir: tempfile::TempDir,
    store: std::path::PathBuf,
    cg: Sidecar,
}

impl Regions {
    async fn start() -> Self {
        let (fallback, us, eu) = (
            Upstream::start().await,
            Upstream::start().await,
            Upstream::start().await,
        );
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data");
        let extra = format!(
            "[proxy.region_upstreams]\n\"us-east-1\" = \"{}\"\n\"eu-west-1\" = \"{}\"\n",
            us.url(),
            eu.url()
        );
        let cg = start(&fallback, &store, &extra);
        Self {
            fallback,
            us,
            eu,
            dir,
            store,
            cg,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_reaches_only_its_regions_upstream() {
    let Regions {
        fallback,
        us,
        eu,
        dir: _dir,
        store,
        cg,
    } = Regions::start().await;
    let (a, a_key) = tenant_in(&cg, None);
    let (b, b_key) = tenant_in(&cg, Some("eu-west-1"));
    let (c, c_key) = tenant_in(&cg, Some("ap-south-1"));

    for _ in 0..3 {
        assert_eq!(costs(&cg, &a, &a_key).status, 200);
        assert_eq!(costs(&cg, &b, &b_key).status, 200);
    }
    let refused = costs(&cg, &c, &c_key);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "residency_violation");
    assert_eq!((seen_for(&us, &a), seen_for(&eu, &a)), (3, 0));
    assert_eq!((seen_for(&us, &b), seen_for(&eu, &b)), (0, 3));
    assert_eq!(seen_for(&us, &c) + seen_for(&eu, &c), 0);
    assert_eq!(
        fallback.count(),
        0,
        "nothing about a tenant goes to the default upstream"
    );
    // Public routes (about no tenant) are costguard's own here; the
    // regional upstreams never see a probe.
    assert_eq!(get(&cg, "/health", "").status, 200);

    // A system admin's call on another tenant's route goes to that
    // tenant's region, and is refused for a region served nowhere.
    let (_, root) = cg.create_key(&a, &["system_admin"]);
    let root = format!("X-API-Key: {root}\r\n");
    assert_eq!(
        get(&cg, &format!("/v1/tenants/{b}/costs"), &root).status,
        200
    );
    assert_eq!(seen_for(&eu, &b), 4);
    let cross = get(&cg, &format!("/v1/tenants/{c}/costs"), &root);
    assert_eq!(cross.status, 403);
    assert_eq!(cross.json()["error"]["code"], "residency_violation");
    assert_eq!(seen_for(&us, &c) + seen_for(&eu, &c), 0);
    flush(&cg);

    let all = records(&store.join("audit"));
    assert!(
        all.iter()
            .all(|r| r.get("region").is_some_and(Value::is_string)),
        "every record carries the region: {all:#?}"
    );
    let denials: Vec<&Value> = of_type(&all, "security.access_denied")
        .into_iter()
        .filter(|r| r["details"]["reason"] == "residency_violation")
        .collect();
    assert_eq!(denials.len(), 2, "{all:#?}");
    assert_eq!(denials[0]["tenant_id"], c.as_str());
    assert_eq!(denials[0]["region"], "ap-south-1");
    assert_eq!(denials[0]["details"]["status"], 403);
    assert_eq!(denials[0]["severity"], "HIGH");
    // The cross-tenant one is recorded with the region of the data asked for.
    assert_eq!(denials[1]["tenant_id"], a.as_str());
    assert_eq!(denials[1]["region"], "ap-south-1");
    let allowed = of_type(&all, "request.allowed");
    for r in &allowed {
        let expected = if r["tenant_id"] == b.as_str()
            || r["details"]["path"].as_str().unwrap().contains(&b)
        {
            "eu-west-1"
        } else {
            "us-east-1"
        };
        assert_eq!(r["region"], expected, "{r}");
    }
    let created = of_type(&all, "tenant.created");
    assert!(
        created.iter().any(|r| r["region"] == "eu-west-1"),
        "{created:#?}"
    );
    let (code, out) = verify(&store.join("audit"));
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_system_admin_moves_a_tenant_and_its_traffic_follows_at_once() {
    let Regions {
        fallback,
        us,
        eu,
        dir: _dir,
        store,
        cg,
    } = Regions::start().await;
    let (t, key) = tenant_in(&cg, None);
    let (_, tenant_admin) = cg.create_key(&t, &["admin"]);
    assert_eq!(costs(&cg, &t, &key).status, 200);
    assert_eq!(seen_for(&us, &t), 1);

    // A tenant admin cannot move its own tenant: nothing changes.
    for body in [
        json!({"data_region": "eu-west-1"}),
        json!({"settings": {"data_region": "eu-west-1"}}),
    ] {
        let (status, _) = cg.admin_call(
            "PATCH",
            &format!("/admin/v1/tenants/{t}"),
            &tenant_admin,
            Some(&body),
        );
        assert_eq!(status, 403);
    }
    let (_, now) = cg.admin("GET", &format!("/admin/v1/tenants/{t}"), None);
    assert_eq!(now["settings"]["data_region"], "us-east-1");
    // A malformed region changes nothing.
    let (status, _) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"data_region": "eu west/1"})),
    );
    assert_eq!(status, 400);
    assert_eq!(costs(&cg, &t, &key).status, 200);
    assert_eq!(seen_for(&us, &t), 2);

    let (status, moved) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"settings": {"data_region": "eu-west-1"}})),
    );
    assert_eq!(status, 200, "{moved}");
    assert_eq!(costs(&cg, &t, &key).status, 200);
    assert_eq!((seen_for(&us, &t), seen_for(&eu, &t)), (2, 1));
    assert_eq!(fallback.count(), 0);
    flush(&cg);

    let all = records(&store.join("audit"));
    // The malformed change is recorded as a failure, the real one as done.
    let changed = of_type(&all, "tenant.region_changed");
    let outcomes: Vec<&str> = changed
        .iter()
        .map(|r| r["details"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failure", "success"], "{changed:#?}");
    let changed = &changed[1..];
    assert_eq!(changed[0]["user_id"], "admin-token");
    assert_eq!(changed[0]["severity"], "MEDIUM");
    assert_eq!(changed[0]["region"], "eu-west-1");
    assert_eq!(
        changed[0]["details"]["changes"]["settings"]["data_region"],
        "eu-west-1"
    );
    let refused: Vec<&Value> = of_type(&all, "security.access_denied")
        .into_iter()
        .filter(|r| r["details"]["action"] == format!("PATCH /admin/v1/tenants/{t}"))
        .collect();
    assert_eq!(refused.len(), 2, "{all:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_region_served_means_every_other_region_is_refused() {
    let (fallback, eu) = (Upstream::start().await, Upstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let cg = Sidecar::start_with_store(
        &support::config_for(&fallback.url(), ""),
        &[(
            "COSTGUARD_PROXY_REGION_UPSTREAMS",
            &format!("eu-west-1={}", eu.url()),
        )],
        Some(&store),
    );
    let (us_tenant, us_key) = tenant_in(&cg, None);
    let (eu_tenant, eu_key) = tenant_in(&cg, Some("eu-west-1"));
    assert_eq!(costs(&cg, &eu_tenant, &eu_key).status, 200);
    let refused = costs(&cg, &us_tenant, &us_key);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "residency_violation");
    assert_eq!(eu.count(), 1);
    assert_eq!(fallback.count(), 0);
}

#[test]
fn bad_region_upstreams_are_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("costguard.toml");
    std::fs::write(
        &config,
        "[proxy.region_upstreams]\n\"eu west\" = \"http://127.0.0.1:9001\"\n\"us-east-1\" = \"https://127.0.0.1:9002\"\n\"eu-west-1\" = \"http://127.0.0.1:9003/prefix\"\n",
    )
    .unwrap();
    let out = cli(["serve", "--check-config", "--config"])
        .arg(&config)
        .run();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    for key in [
        "proxy.region_upstreams.eu west",
        "proxy.region_upstreams.us-east-1",
        "proxy.region_upstreams.eu-west-1",
    ] {
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }
}
