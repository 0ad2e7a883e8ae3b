//! Live policy reload: a valid change applies within seconds with no failed
//! request; an invalid one keeps the last good policy and says why; a
//! Kubernetes ConfigMap symlink swap and SIGHUP both work; an invalid policy
//! at startup refuses to start; the operator tools.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{
    Upstream, cli, copy_shipped_policy, get, get_as, policy_table, shipped_policy, sidecar,
};

const FORECAST: &str = "\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{tenant}/forecast\"\npermission = \"view_costs\"\n";

fn routes_with(extra: &str) -> String {
    std::fs::read_to_string(shipped_policy().join("routes.toml")).unwrap() + extra
}

/// Replaces a file atomically (write + rename), as editors and tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for_status(url: &str, key: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if get_as(url, key).await.0 == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_changes_apply_under_load_and_invalid_ones_are_kept_out() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies");
    copy_shipped_policy(&policy);
    let cg = sidecar(&up, &policy_table(&policy));
    let t = cg.create_tenant("enterprise");
    // Steady load needs more than the default 1000 requests per hour.
    let (_, key) = cg.create_key_with(
        &t,
        serde_json::json!({"roles": ["viewer"], "rate_limit_per_minute": 1_000_000}),
    );

    // Steady load on an existing route for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (url, key) = (cg.url(&format!("/v1/tenants/{t}/costs")), key.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get_as(&url, &key).await.0.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let forecast = cg.url(&format!("/v1/tenants/{t}/forecast"));
    assert_eq!(get_as(&forecast, &key).await.0, 403, "not a route yet");

    replace(&policy.join("routes.toml"), &routes_with(FORECAST));
    let took = wait_for_status(&forecast, &key, 200, Duration::from_secs(10)).await;
    println!("a valid change applied after {took:?}");

    // An invalid change: the good policy stays, the error is visible.
    replace(
        &policy.join("routes.toml"),
        &(routes_with(FORECAST)
            + "\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/x\"\npermission = \"view_everything\"\n"),
    );
    let started = Instant::now();
    let ready = loop {
        let (status, _, body) = get(&format!("http://{}/ready", cg.admin)).await;
        assert_eq!(status, 200, "still serving the previous policy: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !v["checks"]["policy"]["last_error"].is_null() {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rejection never showed in /ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = ready["checks"]["policy"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("routes.toml:") && error.contains("view_everything"),
        "{error}"
    );
    assert!(
        ready["checks"]["policy"]["rejected_reloads"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        get_as(&forecast, &key).await.0,
        200,
        "the last good policy is still in force"
    );
    assert!(
        cg.logs().contains("Policy change rejected"),
        "the error is logged"
    );

    // Removing the route again applies (and clears the error).
    replace(&policy.join("routes.toml"), &routes_with(""));
    wait_for_status(&forecast, &key, 403, Duration::from_secs(10)).await;
    let (_, _, body) = get(&format!("http://{}/ready", cg.admin)).await;
    assert!(body.contains("\"last_error\":null"), "{body}");

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across three reloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_symlink_swap_is_applied() {
    // Kubernetes mounts a ConfigMap as: ..2026_x/ (real files), ..data ->
    // ..2026_x, and routes.toml -> ..data/routes.toml. An update writes a new
    // timestamped directory and renames a new ..data symlink over the old.
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("policies");
    std::fs::create_dir_all(&mount).unwrap();
    copy_shipped_policy(&mount.join("..2026_11_27_v1"));
    std::os::unix::fs::symlink("..2026_11_27_v1", mount.join("..data")).unwrap();
    for f in ["roles.toml", "routes.toml"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), mount.join(f)).unwrap();
    }
    let cg = sidecar(&up, &policy_table(&mount));
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let forecast = cg.url(&format!("/v1/tenants/{t}/forecast"));
    assert_eq!(get_as(&forecast, &key).await.0, 403);

    let v2 = mount.join("..2026_11_27_v2");
    copy_shipped_policy(&v2);
    std::fs::write(v2.join("routes.toml"), routes_with(FORECAST)).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_27_v1")).unwrap();
    wait_for_status(&forecast, &key, 200, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_forces_a_reload() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies");
    copy_shipped_policy(&policy);
    // Files are only checked hourly here: the change must come from SIGHUP.
    let cg = sidecar(
        &up,
        &format!("{}reload_interval = \"1h\"\n", policy_table(&policy)),
    );
    let t = cg.create_tenant("enterprise");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let forecast = cg.url(&format!("/v1/tenants/{t}/forecast"));
    replace(&policy.join("routes.toml"), &routes_with(FORECAST));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get_as(&forecast, &key).await.0,
        403,
        "no reload without the signal"
    );
    cg.signal("HUP");
    wait_for_status(&forecast, &key, 200, Duration::from_secs(5)).await;
}

#[test]
fn an_invalid_policy_at_startup_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies");
    copy_shipped_policy(&policy);
    std::fs::write(
        policy.join("extra.toml"),
        "[[routes]]\nmethod = \"GET\"\npath = \"/a\"\npermission = \"nope\"\n",
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\ndir = \"{}\"\n[store]\npath = \"{}\"\n",
            policy.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = cli(["serve", "--config"])
        .arg(&config)
        .env("COSTGUARD_PROXY_LISTEN", "127.0.0.1:0")
        .env("COSTGUARD_ADMIN_LISTEN", "127.0.0.1:0")
        .run();
    assert!(!out.status.success());
    let stderr = &out.stderr;
    assert!(
        stderr.contains("extra.toml:4: unknown permission \"nope\""),
        "{stderr}"
    );
    let out = cli(["serve", "--check-config", "--config"])
        .arg(&config)
        .run();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("extra.toml:4"));
}

#[test]
fn policy_check_and_explain() {
    let out = cli(["policy", "check"]).arg(shipped_policy()).run();
    assert!(out.success_stdout().contains("6 roles, 10 routes"));

    let dir = tempfile::tempdir().unwrap();
    copy_shipped_policy(dir.path());
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{tenant}/costs\"\npermission = \"view_costs\"\n\n[[routes]]\nmethod = \"GTE\"\npath = \"/b\"\npermission = \"view_costs\"\n",
    )
    .unwrap();
    let out = cli(["policy", "check"]).arg(dir.path()).run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = &out.stderr;
    assert!(stderr.contains("routes.toml:13: route \"/v1/tenants/{tenant}/costs\" conflicts with the route at bad.toml:1"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains("bad.toml:7: unknown method \"GTE\""),
        "{stderr}"
    );

    let explain = |args: &[&str]| {
        let out = cli(["policy", "explain", "--policy"])
            .arg(shipped_policy())
            .args(args)
            .run();
        (out.status.code(), out.stdout)
    };
    let (code, text) = explain(&["--role", "viewer", "GET", "/v1/tenants/org-1/costs/export"]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("needs: export_costs") && text.contains("decision: DENY"),
        "{text}"
    );
    assert!(text.contains("route: routes.toml:"), "{text}");
    let (code, text) = explain(&[
        "--role",
        "analyst",
        "--tenant",
        "org-1",
        "GET",
        "/v1/tenants/org-1/costs/export",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = explain(&[
        "--role",
        "admin",
        "--tenant",
        "org-1",
        "GET",
        "/v1/tenants/org-2/costs",
    ]);
    assert_eq!(code, Some(1));
    assert!(text.contains("tenant_mismatch"), "{text}");
    let (code, text) = explain(&[
        "--role",
        "analyst",
        "--scopes",
        "view_costs",
        "GET",
        "/v1/tenants/org-1/costs/export",
    ]);
    assert_eq!(code, Some(1), "{text}");
}
