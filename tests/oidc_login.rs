//! Single sign-on through a real OpenID provider (npm `oidc-provider` on
//! 127.0.0.2) and, for the full flow, a real browser (headless Chromium):
//! login, the session reaching the upstream as the user, logout, expiry,
//! refresh, revocation, and what an attacker tries at the callback.

mod support;
#[path = "support/idp.rs"]
mod idp;

use std::time::Duration;

use idp::*;
use serde_json::{Value, json};
use support::{Sidecar, Upstream, error_code};

/// One provider (RS256 confidential client "web"), one enterprise tenant
/// whose user alice is a viewer (plus analyst through the finance group).
struct World {
    cg: Sidecar,
    idp: Idp,
    up: Upstream,
    tenant: String,
    other: String,
    port: u16,
    _store: tempfile::TempDir,
}

async fn world(extra_sso: &str, extra_provider: &str, ttl: Option<Value>) -> World {
    let (store, tenants) = tenants_in_store(&["enterprise", "enterprise"]);
    let (tenant, other) = (tenants[0].clone(), tenants[1].clone());
    let port = free_port();
    let mut config = json!({
        "clients": [client("web", Some("web-secret-0123456789"), "RS256", port)],
        "users": {
            "alice": user("alice-pw", "alice@acme.example", &tenant, &["viewer"], &["finance"]),
            "mallory": user("mallory-pw", "mallory@other.example", &other, &["admin"], &[]),
        },
    });
    if let Some(ttl) = ttl {
        config["ttl"] = ttl;
    }
    let idp = Idp::start(&config);
    let up = Upstream::start().await;
    let secret = secret_file(store.path(), "web.secret", "web-secret-0123456789");
    let toml = format!(
        "[proxy]\nupstream = \"{}\"\n[sso]\n{extra_sso}\n{}",
        up.url(),
        provider_toml(
            "corp",
            &idp.issuer,
            "web",
            Some(&secret),
            port,
            &format!(
                "scopes = [\"openid\", \"email\", \"profile\", \"tenant\"]\ntenant_claim = \"tenant_id\"\n\
                 roles_claim = \"roles\"\ngroups_claim = \"groups\"\n\
                 group_roles = {{ finance = [\"analyst\"] }}\n{extra_provider}"
            ),
        )
    );
    let cg = start_sidecar(&store, port, &toml);
    World {
        cg,
        idp,
        up,
        tenant,
        other,
        port,
        _store: store,
    }
}

fn costs(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/costs")
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_login_reaches_the_upstream_as_the_user_and_logout_ends_it() {
    let w = world("", "", None).await;
    let base = format!("http://127.0.0.1:{}", w.port);
    let page = format!("{base}{}", costs(&w.tenant));
    let report = browser(json!([
        {"goto": format!("{base}/auth/login?rd={}", costs(&w.tenant))},
        {"fill": {"selector": "input[name=username]", "value": "alice"}},
        {"fill": {"selector": "input[name=password]", "value": "alice-pw"}},
        {"click": "#login"},
        {"wait_url": page},
        {"save": "protected"},
        {"cookies": "after_login"},
        {"goto": format!("{base}/auth/userinfo")},
        {"save": "userinfo"},
        {"goto": format!("{base}/auth/logout")},
        {"wait_url": format!("{base}/bye")},
        {"goto": page},
        {"save": "after_logout"},
    ]));
    let results = report["results"].as_array().unwrap();
    let by_name = |name: &str| {
        results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
            .clone()
    };
    // The protected page came from the upstream, which saw the user.
    let protected = by_name("protected");
    assert_eq!(protected["status"], 200, "{protected:#}");
    let seen = w
        .up
        .seen()
        .into_iter()
        .find(|s| s.target == costs(&w.tenant))
        .expect("the upstream got the page request");
    assert_eq!(seen.headers["x-costops-auth-method"], "oidc");
    assert_eq!(seen.headers["x-costops-user-id"], "alice");
    assert_eq!(seen.headers["x-costops-tenant-id"], w.tenant.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "analyst,viewer");
    assert!(!seen.headers.contains_key("x-costops-key-id"));
    // The session cookie never reaches the upstream.
    let upstream_cookies = seen
        .headers
        .get("cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(!upstream_cookies.contains("costguard_"), "{upstream_cookies}");
    // The session cookie: HttpOnly, Secure, SameSite=Lax, host-only.
    let cookies = by_name("after_login")["cookies"].clone();
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "costguard_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:#}"))
        .clone();
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["domain"], "127.0.0.1", "host-only: {session}");
    let info: Value = serde_json::from_str(by_name("userinfo")["text"].as_str().unwrap()).unwrap();
    assert_eq!(info["user_id"], "alice");
    assert_eq!(info["tenant_id"], w.tenant.as_str());
    assert_eq!(info["auth_method"], "oidc");
    assert_eq!(info["email"], "alice@acme.example");
    // After logout (through the provider's end-session and back), the page is refused.
    let after = by_name("after_logout");
    assert_eq!(after["status"], 401, "{after:#}");
    let records = audit_events(&w.cg, "auth.login");
    assert!(
        records
            .iter()
            .any(|r| r["user_id"] == "alice" && r["tenant_id"] == w.tenant.as_str()),
        "{records:#?}"
    );
    assert!(!audit_events(&w.cg, "auth.logout").is_empty());
}
