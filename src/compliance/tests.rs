use super::*;

fn control(id: &'static str, status: Status, evidence: &str) -> Control {
    let d = CONTROLS.iter().find(|d| d.id == id).unwrap();
    Control {
        id: d.id,
        title: d.title,
        frameworks: d.frameworks,
        applies: d.applies,
        status,
        evidence: evidence.into(),
        remediation: "do <this> & that".into(),
    }
}

#[test]
fn every_framework_clause_has_a_control_and_every_control_known_clauses() {
    for f in FRAMEWORKS {
        assert!(
            CONTROLS.iter().any(|c| c.frameworks.contains(&f)),
            "{f} has no control"
        );
    }
    let mut ids = std::collections::HashSet::new();
    for c in CONTROLS {
        assert!(ids.insert(c.id), "duplicate id {}", c.id);
        assert!(!c.frameworks.is_empty(), "{}", c.id);
        for f in c.frameworks {
            assert!(FRAMEWORKS.contains(f), "{}: unknown clause {f}", c.id);
        }
    }
}

#[test]
fn the_worst_status_rolls_up_per_framework() {
    let report = Report::new(
        Scope::All {
            all: true,
            tenants: 0,
        },
        vec![
            control("proxy-tls", Status::Fail, "plain"),
            control("admin-loopback", Status::Pass, "lo"),
            control("erasure", Status::Warn, "x"),
        ],
    );
    assert_eq!(report.status, Status::Fail);
    assert_eq!(
        (
            report.summary.pass,
            report.summary.warn,
            report.summary.fail
        ),
        (1, 1, 1)
    );
    let fw = |id: &str| report.frameworks.iter().find(|f| f.id == id).unwrap();
    assert_eq!(fw("SOC2 CC6.1").status, Status::Fail);
    assert_eq!(fw("SOC2 CC6.1").controls, ["proxy-tls", "admin-loopback"]);
    assert_eq!(fw("HIPAA 164.312(a)(1)").status, Status::Pass);
    assert_eq!(fw("GDPR Art. 17").status, Status::Warn);
    // A clause with no control in this report passes vacuously, with 0.
    assert_eq!(fw("SOC2 CC8.1").summary.total, 0);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scope"]["all"], true);
    assert_eq!(json["controls"][0]["status"], "fail");
}

#[test]
fn the_page_escapes_every_dynamic_string_and_its_csp_allows_only_its_stylesheet() {
    let report = Report::new(
        Scope::Tenant {
            tenant_id: "org-<b>".into(),
            organization_name: "Acme <i>".into(),
        },
        vec![control(
            "key-expiry",
            Status::Fail,
            "key <script>alert(1)</script> \"quoted\" 'single'",
        )],
    );
    let page = html::render(&report);
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&quot;quoted&quot; &#39;single&#39;"));
    assert!(page.contains("org-&lt;b&gt;"));
    assert!(page.contains("Acme &lt;i&gt;"));
    assert!(page.contains("do &lt;this&gt; &amp; that"));
    assert!(!page.contains("style=\""), "no inline style attributes");
    let csp = html::csp();
    let digest = crate::model::sha256(html::CSS.as_bytes());
    use base64::Engine as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(digest);
    assert!(csp.contains(&format!("style-src 'sha256-{hash}'")), "{csp}");
    assert!(csp.starts_with("default-src 'none'"));
    for d in [
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(d), "{csp}");
    }
    assert!(page.contains(&format!("<style>{}</style>", html::CSS)));
}

#[test]
fn the_text_table_names_each_control_and_a_fail_is_found() {
    let report = Report::new(
        Scope::Tenant {
            tenant_id: "org-1".into(),
            organization_name: "One".into(),
        },
        vec![
            control("proxy-tls", Status::Fail, "proxy.listen 0.0.0.0:8080"),
            control("erasure", Status::Pass, "delete"),
        ],
    );
    let json = serde_json::to_value(&report).unwrap();
    assert!(client::any_fail(&json));
    let text = client::render_text(&json);
    assert!(text.contains("tenant org-1"), "{text}");
    assert!(text.contains("FAIL  proxy-tls"), "{text}");
    assert!(
        text.contains("evidence:    proxy.listen 0.0.0.0:8080"),
        "{text}"
    );
    assert!(text.contains("GDPR Art. 17"), "{text}");
    assert!(
        text.contains(&format!("{:<22} FAIL      0    0    1\n", "SOC2 CC6.1")),
        "{text}"
    );
}

// === the decisions, on synthetic state ===

use crate::authz::reload::{PolicyHandle, Source};
use crate::model::{ApiKey, KeyStatus, Tenant, TenantStatus, Tier};
use time::OffsetDateTime;

fn config(edit: impl FnOnce(&mut crate::config::FileConfig)) -> Config {
    let mut file = crate::config::FileConfig::default();
    edit(&mut file);
    crate::config::from_file(file).unwrap()
}

fn tenant(id: &str, tier: Tier, region: &str) -> Tenant {
    let now = OffsetDateTime::now_utc();
    Tenant {
        tenant_id: id.into(),
        organization_name: id.into(),
        admin_email: "a@example.com".into(),
        tier,
        limits: tier.default_limits(),
        status: TenantStatus::Active,
        settings: crate::model::TenantSettings {
            data_region: region.into(),
            encryption_enabled: true,
            audit_logging: true,
            sso_enabled: false,
            custom_domain: None,
        },
        created_at: now,
        updated_at: now,
    }
}

fn key(id: &str, age_days: i64, expires: bool) -> ApiKey {
    let now = OffsetDateTime::now_utc();
    ApiKey {
        key_id: id.into(),
        tenant_id: "org-a".into(),
        description: "ci \"bot\"".into(),
        roles: vec!["viewer".into()],
        scopes: vec![],
        grants: vec![],
        rate_limit_per_minute: None,
        expires_at: expires.then(|| now + time::Duration::days(30)),
        status: KeyStatus::Active,
        hash: "00".repeat(32),
        previous_hash: None,
        previous_valid_until: None,
        created_at: now - time::Duration::days(age_days),
        rotated_at: None,
        created_by: "admin-token".into(),
    }
}

fn facts(tenant: Tenant, keys: Vec<ApiKey>, key_use: KeyUse) -> TenantFacts {
    TenantFacts {
        tenant,
        keys,
        keys_truncated: false,
        key_use,
    }
}

fn seen(used: &[&str], truncated: bool) -> KeyUse {
    let now = OffsetDateTime::now_utc();
    KeyUse::Seen {
        since_micros: ((now - time::Duration::days(KEY_MAX_AGE_DAYS)).unix_timestamp_nanos() / 1000)
            as i64,
        window_days: KEY_MAX_AGE_DAYS,
        used: used.iter().map(|s| s.to_string()).collect(),
        truncated,
    }
}

fn evaluate(config: &Config, tenants: &[TenantFacts], one: bool) -> Vec<Control> {
    let policy = PolicyHandle::load(Source::BuiltIn).unwrap();
    let inputs = controls::Inputs {
        config,
        policy: &policy,
        audit: None,
        chain: &None,
        tenants,
        tenants_truncated: 0,
        one_tenant: one,
        now: OffsetDateTime::now_utc(),
    };
    controls::evaluate(&inputs)
}

fn find<'a>(controls: &'a [Control], id: &str) -> &'a Control {
    controls.iter().find(|c| c.id == id).unwrap()
}

#[test]
fn the_default_configuration_is_judged_by_its_settings() {
    let c = config(|_| {});
    let out = evaluate(&c, &[], false);
    assert_eq!(out.len(), CONTROLS.len());
    let tls = find(&out, "proxy-tls");
    assert_eq!(tls.status, Status::Fail, "{tls:?}");
    assert!(
        tls.evidence
            .contains("proxy.listen 0.0.0.0:8080 serves plain HTTP")
    );
    assert_eq!(find(&out, "admin-loopback").status, Status::Pass);
    assert_eq!(find(&out, "policy-enforce").status, Status::Pass);
    assert_eq!(find(&out, "policy-reload").status, Status::Pass);
    assert_eq!(find(&out, "rate-limits").status, Status::Pass);
    assert_eq!(find(&out, "data-residency").status, Status::Fail);
    // No audit log here: nothing records, nothing to verify.
    assert_eq!(find(&out, "audit-enabled").status, Status::Fail);
    assert_eq!(find(&out, "audit-chain").status, Status::Fail);

    let loopback = config(|f| f.proxy.listen = "127.0.0.1:8080".into());
    assert_eq!(
        find(&evaluate(&loopback, &[], false), "proxy-tls").status,
        Status::Warn
    );
    let exposed = config(|f| f.admin.listen = "0.0.0.0:9090".into());
    let admin = find(&evaluate(&exposed, &[], false), "admin-loopback").clone();
    assert_eq!(admin.status, Status::Fail);
    assert!(
        admin
            .evidence
            .contains("admin.listen 0.0.0.0:9090 is not a loopback address")
    );
    let off = config(|f| f.rate_limit.enabled = false);
    let rl = find(&evaluate(&off, &[], false), "rate-limits").clone();
    assert_eq!(rl.status, Status::Fail);
    assert!(rl.evidence.contains("rate_limit.enabled = false"));
}

#[test]
fn keys_are_judged_by_expiry_age_and_recorded_use() {
    let c = config(|_| {});
    let t = facts(
        tenant("org-a", Tier::Standard, "us-east-1"),
        vec![
            key("k-used", 200, true),
            key("k-idle", 200, true),
            key("k-new", 3, false),
        ],
        seen(&["k-used"], false),
    );
    let out = evaluate(&c, &[t], true);
    let expiry = find(&out, "key-expiry");
    assert_eq!(expiry.status, Status::Fail);
    assert!(
        expiry.evidence.contains("1 of 3 active key(s)")
            && expiry.evidence.contains("k-new (\"ci \\\"bot\\\"\")"),
        "{}",
        expiry.evidence
    );
    let rotation = find(&out, "key-rotation");
    assert_eq!(rotation.status, Status::Warn);
    assert!(rotation.evidence.contains("k-used") && rotation.evidence.contains("k-idle"));
    assert!(!rotation.evidence.contains("k-new"));
    let unused = find(&out, "key-unused");
    assert_eq!(unused.status, Status::Warn, "{}", unused.evidence);
    assert!(
        unused.evidence.contains("1 of 2 active key(s)") && unused.evidence.contains("k-idle"),
        "{}",
        unused.evidence
    );
    assert!(!unused.evidence.contains("k-used ("), "{}", unused.evidence);
    assert!(
        unused.evidence.contains("not judged (1)"),
        "{}",
        unused.evidence
    );

    // All used: pass. A scan that stopped short: not known, said so.
    let used = facts(
        tenant("org-a", Tier::Standard, "us-east-1"),
        vec![key("k-used", 200, true)],
        seen(&["k-used"], false),
    );
    assert_eq!(
        find(&evaluate(&c, &[used], true), "key-unused").status,
        Status::Pass
    );
    let short = facts(
        tenant("org-a", Tier::Standard, "us-east-1"),
        vec![key("k-idle", 200, true)],
        seen(&[], true),
    );
    let out = evaluate(&c, &[short], true);
    let u = find(&out, "key-unused");
    assert_eq!(u.status, Status::Warn);
    assert!(u.evidence.contains("cannot be known"), "{}", u.evidence);
    let unknown = facts(
        tenant("org-a", Tier::Standard, "us-east-1"),
        vec![key("k-idle", 200, true)],
        KeyUse::Unknown("the audit log is disabled".into()),
    );
    let out = evaluate(&c, &[unknown], true);
    let u = find(&out, "key-unused");
    assert_eq!(u.status, Status::Warn);
    assert!(
        u.evidence.contains("the audit log is disabled"),
        "{}",
        u.evidence
    );
}

#[test]
fn retention_and_residency_follow_the_tenant_and_the_region_map() {
    let mut short = tenant("org-short", Tier::Enterprise, "eu-west-1");
    short.limits.retention_days = 30;
    let mut long = tenant("org-long", Tier::Free, "ap-south-1");
    long.limits.retention_days = 400;
    let exact = tenant("org-exact", Tier::Standard, "eu-west-1");
    let c = config(|f| {
        f.proxy
            .region_upstreams
            .insert("eu-west-1".into(), "http://10.0.0.5:9000".into());
    });
    let all: Vec<TenantFacts> = [short, long, exact]
        .into_iter()
        .map(|t| facts(t, vec![], seen(&[], false)))
        .collect();
    let out = evaluate(&c, &all, false);
    let r = find(&out, "audit-retention");
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.evidence
            .contains("org-short: limits.retention_days = 30 against the enterprise tier's 365"),
        "{}",
        r.evidence
    );
    let d = find(&out, "data-residency");
    assert_eq!(d.status, Status::Warn);
    assert!(
        d.evidence.contains("ap-south-1 (org-long)") && d.evidence.contains("residency_violation"),
        "{}",
        d.evidence
    );
    assert!(
        d.evidence.contains("eu-west-1 → http://10.0.0.5:9000"),
        "{}",
        d.evidence
    );

    // One tenant at a time: only its own facts.
    let out = evaluate(&c, &all[1..2], true);
    let r = find(&out, "audit-retention");
    assert_eq!(r.status, Status::Warn, "{}", r.evidence);
    assert!(!r.evidence.contains("org-short"));
    let out = evaluate(&c, &all[2..3], true);
    assert_eq!(find(&out, "audit-retention").status, Status::Pass);
    assert_eq!(find(&out, "data-residency").status, Status::Pass);
    assert!(!find(&out, "data-residency").evidence.contains("org-long"));
}

#[test]
fn key_use_is_read_from_the_tenants_index_entries_within_bounds() {
    use crate::audit::Severity;
    use crate::audit::index::{Entry, Index};
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let h = index.hasher().clone();
    let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let day = 86_400 * 1_000_000i64;
    // (user, tenant, age in days): k1 by a proxied request, k2 by an
    // admin call, k3 only before the window, k4 only in another tenant.
    let records = [
        ("k3", "org-a", 120),
        ("k1", "org-a", 10),
        ("key:k2", "org-a", 5),
        ("k4", "org-b", 1),
    ];
    let mut entries: Vec<Entry> = records
        .iter()
        .enumerate()
        .map(|(i, (user, tenant, age))| Entry {
            seq: i as u64 + 1,
            micros: now - age * day,
            offset: 0,
            file_no: 1,
            len: 1,
            tenant: h.hash(tenant),
            user: h.hash(user),
            event: h.hash("request.allowed"),
            severity: Severity::Low,
        })
        .collect();
    // Filler for the bound: 50 more of another user.
    for n in 0..50 {
        entries.push(Entry {
            seq: 10 + n,
            micros: now - day,
            user: h.hash("someone"),
            ..entries[0]
        });
    }
    index.append(&entries).unwrap();
    let keys: Vec<String> = ["k1", "k2", "k3", "k4"].map(String::from).to_vec();
    let since = now - 90 * day;
    let (used, truncated, _) = super::scan_key_use(&index, "org-a", &keys, since, 1000).unwrap();
    let mut used: Vec<String> = used.into_iter().collect();
    used.sort();
    assert_eq!(used, ["k1", "k2"]);
    assert!(!truncated);
    // Stops when every key was seen.
    let (used, truncated, read) =
        super::scan_key_use(&index, "org-a", &keys[..1], since, 1000).unwrap();
    assert_eq!(used.len(), 1);
    assert!(!truncated);
    assert!(read <= 53, "{read}");
}
