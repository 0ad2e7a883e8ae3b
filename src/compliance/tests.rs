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
}
