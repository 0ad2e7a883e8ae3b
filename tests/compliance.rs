//! The compliance report through the real binary: `GET
//! /admin/v1/compliance` computed from the configuration the server runs
//! with (a weak one fails its controls, naming the settings; a hardened
//! one passes them), who may see which report, `costguard compliance`'s
//! output and exit codes, and the HTML page (its headers, escaping, and
//! how headless Chromium renders it under its CSP, with a screenshot in
//! `target/tmp/compliance.png`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Sidecar, cli, config_for, raw_request, test_pki};

/// Nothing is proxied here: the upstreams are only configured.
const UPSTREAM: &str = "http://127.0.0.1:9";

const ALL_FRAMEWORKS: [&str; 15] = [
    "SOC2 CC6.1",
    "SOC2 CC6.2",
    "SOC2 CC6.3",
    "SOC2 CC7.2",
    "SOC2 CC8.1",
    "GDPR Art. 5(1)(e)",
    "GDPR Art. 17",
    "GDPR Art. 30",
    "GDPR Art. 32",
    "GDPR Art. 44",
    "HIPAA 164.312(a)(1)",
    "HIPAA 164.312(b)",
    "HIPAA 164.312(c)(1)",
    "HIPAA 164.312(d)",
    "HIPAA 164.312(e)(1)",
];

const SCRIPT: &str = "<script>alert(1)</script>";

/// GET `path` on the admin port with `credential`: status, headers, body.
fn admin_get(cg: &Sidecar, path: &str, credential: &str) -> support::RawResponse {
    raw_request(
        cg.admin,
        format!(
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nAuthorization: Bearer {credential}\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn report(cg: &Sidecar, query: &str, credential: &str) -> Value {
    let r = admin_get(cg, &format!("/admin/v1/compliance{query}"), credential);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn control<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no control {id} in {report:#}"))
}

fn status_of(report: &Value, id: &str) -> String {
    control(report, id)["status"].as_str().unwrap().to_string()
}

fn evidence(report: &Value, id: &str) -> String {
    control(report, id)["evidence"]
        .as_str()
        .unwrap()
        .to_string()
}

fn tenant(cg: &Sidecar, body: Value) -> String {
    let (status, t) = cg.admin("POST", "/admin/v1/tenants", Some(body));
    assert_eq!(status, 201, "{t}");
    t["tenant_id"].as_str().unwrap().to_string()
}

/// A server with what a compliance review flags: audit fail-open, plain
/// HTTP on every interface, no residency map.
fn weak_server() -> Sidecar {
    Sidecar::start(
        &config_for(UPSTREAM, "[audit]\nfail_open = true\n"),
        &[("COSTGUARD_PROXY_LISTEN", "0.0.0.0:0")],
    )
}

/// A server with TLS on the proxy port, the audit log failing closed and
/// a region map; `dir` holds its certificate.
fn hardened_server(dir: &Path) -> Sidecar {
    let (_, cert, key) = test_pki();
    let cert_file = dir.join("proxy.pem");
    let key_file = dir.join("proxy-key.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    Sidecar::start(
        &config_for(
            UPSTREAM,
            &format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[proxy.region_upstreams]\n\"eu-west-1\" = \"{}\"\n[audit]\nfail_open = false\n",
                cert_file.display(),
                key_file.display(),
                UPSTREAM
            ),
        ),
        &[],
    )
}

#[test]
fn a_weak_configuration_fails_its_controls_with_the_settings_as_evidence() {
    let cg = weak_server();
    let t = tenant(
        &cg,
        json!({"organization_name": "Weak", "admin_email": "a@weak.example", "tier": "standard"}),
    );
    let (key_id, secret) = cg.create_key(&t, &["viewer"]);
    let r = report(&cg, "", ADMIN_TOKEN);

    // The shape: every control has its fields; every clause is rolled up.
    let controls = r["controls"].as_array().unwrap();
    assert!(controls.len() >= 12, "{r:#}");
    for c in controls {
        for field in ["id", "title", "evidence", "remediation"] {
            assert!(c[field].is_string(), "{field} in {c}");
        }
        assert!(["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
        assert!(!c["frameworks"].as_array().unwrap().is_empty(), "{c}");
    }
    let mentioned: Vec<&str> = controls
        .iter()
        .flat_map(|c| c["frameworks"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    for f in ALL_FRAMEWORKS {
        assert!(mentioned.contains(&f), "{f} on no control");
        let rollup = r["frameworks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == f)
            .unwrap_or_else(|| panic!("{f} not rolled up"));
        assert!(
            rollup["summary"]["total"].as_u64().unwrap() >= 1,
            "{rollup}"
        );
    }
    let s = &r["summary"];
    assert_eq!(
        s["pass"].as_u64().unwrap() + s["warn"].as_u64().unwrap() + s["fail"].as_u64().unwrap(),
        controls.len() as u64
    );
    assert_eq!(s["total"].as_u64().unwrap(), controls.len() as u64);
    assert_eq!(r["scope"]["all"], true, "{r:#}");
    assert_eq!(r["status"], "fail");
    assert!(r["generated_at"].as_str().unwrap().ends_with('Z'), "{r:#}");

    // Statuses follow the configuration, and the evidence names it.
    assert_eq!(status_of(&r, "proxy-tls"), "fail");
    let e = evidence(&r, "proxy-tls");
    assert!(
        e.contains("proxy.listen 0.0.0.0:") && e.contains("tls_cert_file"),
        "{e}"
    );
    assert_eq!(status_of(&r, "audit-fail-closed"), "fail");
    assert!(
        evidence(&r, "audit-fail-closed").contains("audit.fail_open = true"),
        "{r:#}"
    );
    assert_eq!(status_of(&r, "data-residency"), "fail");
    assert!(evidence(&r, "data-residency").contains("proxy.region_upstreams is empty"));
    assert_eq!(status_of(&r, "admin-loopback"), "pass");
    assert!(evidence(&r, "admin-loopback").contains("admin.listen 127.0.0.1:"));
    assert_eq!(status_of(&r, "audit-enabled"), "pass");
    assert_eq!(status_of(&r, "audit-chain"), "pass", "{r:#}");
    assert_eq!(status_of(&r, "policy-reload"), "pass");
    assert_eq!(status_of(&r, "erasure"), "pass");
    // A standard tenant has SSO off by default.
    assert_eq!(status_of(&r, "sso-enforced"), "warn");
    assert!(evidence(&r, "sso-enforced").contains(&t));

    // The key without expiry is named by id; its secret and hash never appear.
    assert_eq!(status_of(&r, "key-expiry"), "fail");
    assert!(evidence(&r, "key-expiry").contains(&key_id), "{r:#}");
    let text = r.to_string();
    let hash = costguard::model::hex(&costguard::model::sha256(secret.as_bytes()));
    assert!(!text.contains(&secret));
    assert!(!text.contains(&hash));
    assert!(!text.contains(ADMIN_TOKEN));
}

#[test]
fn a_hardened_configuration_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let cg = hardened_server(dir.path());
    let t = tenant(
        &cg,
        json!({"organization_name": "Hard", "admin_email": "a@hard.example", "tier": "standard", "data_region": "eu-west-1"}),
    );
    let (key_id, _) = cg.create_key_with(
        &t,
        json!({"description": "ci", "roles": ["viewer"], "expires_at": "2027-06-01T00:00:00Z"}),
    );
    let r = report(&cg, &format!("?tenant_id={t}"), ADMIN_TOKEN);
    assert_eq!(r["scope"]["tenant_id"], t.as_str(), "{r:#}");
    assert_eq!(status_of(&r, "proxy-tls"), "pass", "{r:#}");
    assert!(evidence(&r, "proxy-tls").contains("serves TLS"));
    assert_eq!(status_of(&r, "audit-fail-closed"), "pass");
    assert!(evidence(&r, "audit-fail-closed").contains("audit.fail_open = false"));
    assert_eq!(status_of(&r, "data-residency"), "pass", "{r:#}");
    assert!(evidence(&r, "data-residency").contains("eu-west-1"));
    assert_eq!(status_of(&r, "key-expiry"), "pass", "{r:#}");
    assert!(!evidence(&r, "key-expiry").contains(&key_id));
    assert_eq!(status_of(&r, "key-rotation"), "pass");
    assert_eq!(status_of(&r, "audit-retention"), "pass", "{r:#}");

    // A tenant whose region has no upstream: its requests are refused.
    let other = tenant(
        &cg,
        json!({"organization_name": "Elsewhere", "admin_email": "a@else.example", "tier": "standard", "data_region": "ap-south-1"}),
    );
    let r = report(&cg, &format!("?tenant_id={other}"), ADMIN_TOKEN);
    assert_eq!(status_of(&r, "data-residency"), "warn");
    let e = evidence(&r, "data-residency");
    assert!(
        e.contains("ap-south-1") && e.contains("residency_violation"),
        "{e}"
    );
}

#[test]
fn a_tenant_admin_sees_only_its_tenant_and_others_are_refused() {
    let cg = Sidecar::start(&config_for(UPSTREAM, ""), &[]);
    let a = tenant(
        &cg,
        json!({"organization_name": "A", "admin_email": "a@a.example", "tier": "standard"}),
    );
    let b = tenant(
        &cg,
        json!({"organization_name": "B", "admin_email": "b@b.example", "tier": "free"}),
    );
    let (_, admin_a) = cg.create_key(&a, &["admin"]);
    let (_, viewer_a) = cg.create_key(&a, &["viewer"]);
    let (b_key_id, _) = cg.create_key(&b, &["viewer"]);

    let r = report(&cg, "", &admin_a);
    assert_eq!(r["scope"]["tenant_id"], a.as_str(), "{r:#}");
    let text = r.to_string();
    assert!(!text.contains(&b), "another tenant's id in {r:#}");
    assert!(!text.contains(&b_key_id), "another tenant's key in {r:#}");
    // Its own tenant, asked by name, is fine.
    assert_eq!(
        report(&cg, &format!("?tenant_id={a}"), &admin_a)["scope"]["tenant_id"],
        a.as_str()
    );

    for path in ["/admin/v1/compliance", "/admin/compliance"] {
        let cross = admin_get(&cg, &format!("{path}?tenant_id={b}"), &admin_a);
        assert_eq!(cross.status, 403, "{path}: {}", cross.body);
        assert!(!cross.body.contains(&b_key_id));
        let viewer = admin_get(&cg, path, &viewer_a);
        assert_eq!(viewer.status, 403, "{path}: {}", viewer.body);
        let nobody = admin_get(&cg, path, "costops_00000000000000000000000000000000");
        assert_eq!(nobody.status, 401, "{path}: {}", nobody.body);
    }
    assert_eq!(
        admin_get(&cg, "/admin/v1/compliance?tenant_id=org-nope", ADMIN_TOKEN).status,
        404
    );
    assert_eq!(
        admin_get(&cg, "/admin/v1/compliance?tenant=x", ADMIN_TOKEN).status,
        400
    );

    // system_admin: one tenant on request, all otherwise.
    let rb = report(&cg, &format!("?tenant_id={b}"), ADMIN_TOKEN);
    assert_eq!(rb["scope"]["tenant_id"], b.as_str());
    assert!(!rb.to_string().contains(&a));
    let all = report(&cg, "", ADMIN_TOKEN);
    assert_eq!(all["scope"]["tenants"], 2);
    let sso = evidence(&all, "sso-enforced");
    assert!(sso.contains(&a) && sso.contains(&b), "{sso}");
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

#[test]
fn the_cli_prints_the_report_and_exits_by_its_worst_status() {
    let dir = tempfile::tempdir().unwrap();
    let root = token_file(dir.path(), "root", ADMIN_TOKEN);
    let weak = weak_server();
    let t = weak.create_tenant("standard");
    let (key_id, _) = weak.create_key(&t, &["viewer"]);
    let url = format!("http://{}", weak.admin);

    let run = cli(["compliance", "--admin-url", &url, "--token-file"])
        .arg(&root)
        .run();
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("FAIL  proxy-tls"), "{}", run.stdout);
    assert!(
        run.stdout.contains("audit.fail_open = true"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&key_id), "{}", run.stdout);
    assert!(run.stdout.contains("HIPAA 164.312(e)(1)"), "{}", run.stdout);
    assert!(!run.stdout.contains(ADMIN_TOKEN));

    // --json is the server's report; --config resolves the admin port and
    // the token as `costguard backup` does.
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{}\"\ntoken_file = \"{}\"\n",
            weak.admin,
            root.display()
        ),
    )
    .unwrap();
    let run = cli(["compliance", "--json", "--tenant", &t, "--config"])
        .arg(&config)
        .run();
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["scope"]["tenant_id"], t.as_str());
    assert_eq!(status_of(&json, "audit-fail-closed"), "fail");

    // Exit 2: a refused token, an unreachable server, a bad tenant id, no token.
    let wrong = token_file(dir.path(), "wrong", "not-the-token");
    let run = cli(["compliance", "--admin-url", &url, "--token-file"])
        .arg(&wrong)
        .run();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = cli(["compliance", "--admin-url", &gone, "--token-file"])
        .arg(&root)
        .run();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    let run = cli([
        "compliance",
        "--admin-url",
        &url,
        "--tenant",
        "../x",
        "--token-file",
    ])
    .arg(&root)
    .run();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = cli(["compliance", "--admin-url", &url])
        .env("COSTGUARD_ADMIN_TOKEN_FILE", dir.path().join("missing"))
        .run();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = cli(["compliance", "--bogus"]).run();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);

    let help = cli(["compliance", "--help"]).run();
    let out = help.success_stdout();
    for needle in [
        "--tenant",
        "--json",
        "--token-file",
        "Exits 0 when no control fails",
    ] {
        assert!(out.contains(needle), "{needle} in {out}");
    }

    // A hardened server with a key that expires: nothing fails, exit 0.
    let hard = hardened_server(dir.path());
    let h = tenant(
        &hard,
        json!({"organization_name": "Hard", "admin_email": "a@hard.example", "tier": "standard", "data_region": "eu-west-1"}),
    );
    hard.create_key_with(
        &h,
        json!({"description": "ci", "roles": ["viewer"], "expires_at": "2027-06-01T00:00:00Z"}),
    );
    let run = cli(["compliance", "--admin-url"])
        .arg(format!("http://{}", hard.admin))
        .arg("--token-file")
        .arg(&root)
        .run();
    assert_eq!(run.status.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("\nFAIL "), "{}", run.stdout);
}

#[test]
fn the_page_is_self_contained_escaped_and_renders_under_its_csp_in_chromium() {
    let cg = weak_server();
    let t = tenant(
        &cg,
        json!({"organization_name": SCRIPT, "admin_email": "a@x.example", "tier": "standard"}),
    );
    let (key_id, _) = cg.create_key_with(
        &t,
        json!({"description": format!("ci {SCRIPT}"), "roles": ["admin"]}),
    );
    let (_, admin_key) = cg.create_key(&t, &["admin"]);

    let page = admin_get(
        &cg,
        &format!("/admin/compliance?tenant_id={t}"),
        ADMIN_TOKEN,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let h = &page.headers;
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = &h["content-security-policy"];
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    for d in [
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(d), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    // No script and no external asset; the names are escaped.
    let body = &page.body;
    assert!(!body.contains("<script"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(body.contains(&key_id));
    for external in ["src=", "href=\"http", "<link", "@import", "url("] {
        assert!(!body.contains(external), "{external} in the page");
    }
    assert_eq!(
        admin_get(
            &cg,
            "/admin/compliance",
            "costops_00000000000000000000000000000000"
        )
        .status,
        401
    );

    // Headless Chromium, as the tenant's admin (its own tenant).
    support::idp::ensure_peers();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compliance.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(support::idp::peers_dir().join("compliance_page.mjs"))
        .arg("--url")
        .arg(format!("http://{}/admin/compliance", cg.admin))
        .arg("--screenshot")
        .arg(&shot)
        .env("COMPLIANCE_TOKEN", &admin_key)
        .output()
        .expect("node runs");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "compliance_page.mjs: no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(seen["ok"], true, "{seen:#}");
    assert_eq!(seen["status"], 200, "{seen:#}");
    assert_eq!(seen["console"], json!([]), "console errors: {seen:#}");
    assert_eq!(seen["violations"], json!([]), "CSP violations: {seen:#}");
    assert_eq!(seen["summary_visible"], true, "{seen:#}");
    let summary = seen["summary_text"].as_str().unwrap();
    assert!(
        summary.contains("pass") && summary.contains("fail"),
        "{summary}"
    );
    assert!(seen["controls"].as_u64().unwrap() >= 12, "{seen:#}");
    // The stylesheet applied (its hash matches the CSP): a fail badge is red.
    assert_eq!(seen["fail_badge_color"], "rgb(207, 34, 46)", "{seen:#}");
    assert!(seen["title"].as_str().unwrap().contains(&t), "{seen:#}");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
}

#[test]
fn an_altered_audit_record_fails_the_chain_control() {
    let audit = tempfile::tempdir().unwrap();
    let cg = Sidecar::start(
        &config_for(UPSTREAM, ""),
        &[("COSTGUARD_AUDIT_DIR", audit.path().to_str().unwrap())],
    );
    let t = cg.create_tenant("standard");
    let file = audit.path().join("audit-000001.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"tenant.created\""), "{text}");
    // Same length, so the writer's offsets stay valid: only the chain
    // can tell.
    std::fs::write(
        &file,
        text.replacen("\"tenant.created\"", "\"tenant.deleted\"", 1),
    )
    .unwrap();
    let r = report(&cg, &format!("?tenant_id={t}"), ADMIN_TOKEN);
    assert_eq!(status_of(&r, "audit-chain"), "fail", "{r:#}");
    let e = evidence(&r, "audit-chain");
    assert!(
        e.contains("audit-000001.jsonl") && e.contains("hash mismatch"),
        "{e}"
    );
}
