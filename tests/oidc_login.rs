//! Single sign-on through a real OpenID provider (npm `oidc-provider` on
//! 127.0.0.2) and, for the full flow, a real browser (headless Chromium):
//! login, the session reaching the upstream as the user, logout, expiry,
//! refresh, revocation, and what an attacker tries at the callback.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::error_code;
use support::idp::*;
use support::sso::{
    Setup, World, assert_no_costguard_cookie, costs, failure_reasons, session_cookie, step,
};

/// One provider (RS256 confidential client "web"), one enterprise tenant
/// whose user alice is a viewer (plus analyst through the finance group).
async fn world(extra_sso: &str, extra_provider: &str, ttl: Option<Value>) -> World<Idp> {
    let setup = Setup::new(&["enterprise", "enterprise"]);
    let (tenant, other, port) = (&setup.tenants[0], &setup.tenants[1], setup.port);
    let mut config = json!({
        "clients": [client("web", Some("web-secret-0123456789"), "RS256", port)],
        "users": {
            "alice": user("alice-pw", "alice@acme.example", tenant, &["viewer"], &["finance"]),
            "mallory": user("mallory-pw", "mallory@other.example", other, &["admin"], &[]),
        },
    });
    if let Some(ttl) = ttl {
        config["ttl"] = ttl;
    }
    let idp = Idp::start(&config);
    let secret = secret_file(setup.store.path(), "web.secret", "web-secret-0123456789");
    let toml = format!(
        "[sso]\n{extra_sso}\n{}",
        provider_toml(
            "corp",
            &idp.issuer,
            "web",
            Some(&secret),
            port,
            &format!(
                "{}tenant_claim = \"tenant_id\"\n\
                 roles_claim = \"roles\"\ngroups_claim = \"groups\"\n\
                 group_roles = {{ finance = [\"analyst\"] }}\n{extra_provider}",
                if extra_provider.contains("scopes") {
                    ""
                } else {
                    "scopes = [\"openid\", \"email\", \"profile\", \"tenant\"]\n"
                }
            ),
        )
    );
    setup.start(idp, &toml).await
}

/// A key of the tenant that may manage users (and view costs), nothing more.
fn user_manager_key(w: &World<Idp>) -> String {
    let (status, _) = w.cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{}/roles/user_manager", w.tenant),
        Some(json!({"description": "users only", "permissions": ["manage_users", "view_costs"]})),
    );
    assert_eq!(status, 201);
    w.cg.create_key(&w.tenant, &["user_manager"]).1
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
    let by_name = |name: &str| step(&report, name);
    // The protected page came from the upstream, which saw the user.
    let protected = by_name("protected");
    assert_eq!(protected["status"], 200, "{protected:#}");
    let seen =
        w.up.seen()
            .into_iter()
            .find(|s| s.target == costs(&w.tenant))
            .expect("the upstream got the page request");
    assert_eq!(seen.headers["x-costops-auth-method"], "oidc");
    assert_eq!(seen.headers["x-costops-user-id"], "alice");
    assert_eq!(seen.headers["x-costops-tenant-id"], w.tenant.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "analyst,viewer");
    assert!(!seen.headers.contains_key("x-costops-key-id"));
    // The session cookie never reaches the upstream.
    assert_no_costguard_cookie(&seen);
    // The session cookie: HttpOnly, Secure, SameSite=Lax, host-only.
    let session = session_cookie(&by_name("after_login")["cookies"]);
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

fn login_failed(resp: &(http::StatusCode, http::HeaderMap, String), status: u16, reason: &str) {
    let (st, headers, body) = resp;
    assert_eq!(st.as_u16(), status, "{reason}: {body}");
    assert_eq!(error_code(body), "login_failed", "{body}");
    assert!(body.contains(reason), "expected {reason}: {body}");
    assert!(
        !set_cookies(headers).contains_key("costguard_session"),
        "no session on a failed login"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callback_refuses_what_an_attacker_sends() {
    let w = world("", "", None).await;
    let s = start_login(&w.cg, "rd=/x").await;
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    // No login cookie (a callback URL replayed into another browser).
    let r = send("GET", &cb, &[], String::new()).await;
    login_failed(&r, 401, "missing_login_cookie");
    // The state does not match the cookie's.
    let r = callback(&with_param(&cb, "state", "forged-state"), &s.login_cookie).await;
    login_failed(&r, 401, "state_mismatch");
    // A login cookie changed by the browser.
    let mut forged = s.login_cookie.clone();
    let flip = if forged.starts_with('e') { "f" } else { "e" };
    forged.replace_range(0..1, flip);
    let r = callback(&cb, &forged).await;
    login_failed(&r, 401, "invalid_login_cookie");
    // The real thing works once...
    let (status, headers, body) = callback(&cb, &s.login_cookie).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(location(&headers), "/x");
    assert!(set_cookies(&headers).contains_key("costguard_session"));
    // ...and not twice.
    let r = callback(&cb, &s.login_cookie).await;
    login_failed(&r, 401, "replayed_state");
    // The used code with a fresh login's state and cookie: the provider refuses it.
    let fresh = start_login(&w.cg, "").await;
    let state = param(&fresh.authorize_url, "state").unwrap();
    let r = callback(&with_param(&cb, "state", &state), &fresh.login_cookie).await;
    login_failed(&r, 401, "code_rejected");
    // Another login's nonce injected into this login's authorization request.
    let victim = start_login(&w.cg, "").await;
    let other = start_login(&w.cg, "").await;
    let url = with_param(
        &victim.authorize_url,
        "nonce",
        &param(&other.authorize_url, "nonce").unwrap(),
    );
    let cb = authorize(&url, "alice", "alice-pw").await;
    let r = callback(&cb, &victim.login_cookie).await;
    login_failed(&r, 401, "nonce_mismatch");
    // The provider names another issuer (RFC 9207 mix-up).
    let s = start_login(&w.cg, "").await;
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    let r = callback(
        &with_param(&cb, "iss", "http://127.0.0.2:1/evil"),
        &s.login_cookie,
    )
    .await;
    login_failed(&r, 401, "wrong_issuer");
    // The provider reports an error.
    let s = start_login(&w.cg, "").await;
    let state = param(&s.authorize_url, "state").unwrap();
    let r = callback(
        &format!(
            "http://127.0.0.1:{}/auth/callback?error=access_denied&state={state}",
            w.port
        ),
        &s.login_cookie,
    )
    .await;
    login_failed(&r, 401, "provider_error:access_denied");
    // A login started for another tenant than the user's.
    let s = start_login(&w.cg, &format!("tenant={}", w.other)).await;
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    let r = callback(&cb, &s.login_cookie).await;
    login_failed(&r, 403, "tenant_mismatch");
    // Nothing of this reached the upstream; all of it is in the audit log.
    assert_eq!(w.up.count(), 0);
    let (failed, suspicious) = failure_reasons(&w.cg);
    for reason in [
        "missing_login_cookie",
        "state_mismatch",
        "invalid_login_cookie",
        "wrong_issuer",
        "replayed_state",
        "code_rejected",
        "nonce_mismatch",
        "provider_error:access_denied",
        "tenant_mismatch",
    ] {
        assert!(failed.iter().any(|r| r == reason), "{reason}: {failed:?}");
    }
    for reason in [
        "invalid_login_cookie",
        "wrong_issuer",
        "replayed_state",
        "code_rejected",
        "nonce_mismatch",
    ] {
        assert!(
            suspicious.iter().any(|r| r == reason),
            "{reason}: {suspicious:?}"
        );
    }
    // No secret in the logs: not the client secret, not a code, not a cookie.
    let logs = w.cg.logs();
    assert!(!logs.contains("web-secret-0123456789"));
    assert!(!logs.contains(&param(&cb, "code").unwrap()));
    assert!(!logs.contains(&s.login_cookie));
}

/// The `rd` a login cookie carries (its payload is signed, not secret).
fn rd_of(login_cookie: &str) -> String {
    use base64::Engine as _;
    let payload = login_cookie.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["rd"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_login_only_same_origin_paths_are_followed() {
    let w = world("", "", None).await;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    for evil in [
        "https://evil.example/",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%252F%252Fevil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\tevil.example",
        "/%09/evil.example",
        "/\r\nSet-Cookie: x=y",
        "http:/evil.example",
        "/..//evil.example",
    ] {
        let s = start_login(&w.cg, &format!("rd={}", enc(evil))).await;
        assert_eq!(rd_of(&s.login_cookie), "/", "{evil:?}");
    }
    let good = format!("{}?month=2026-11", costs(&w.tenant));
    let s = start_login(&w.cg, &format!("rd={}", enc(&good))).await;
    assert_eq!(rd_of(&s.login_cookie), good);
    // End to end: the callback's Location is the checked rd.
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    let (status, headers, _) = callback(&cb, &s.login_cookie).await;
    assert_eq!(status, 302);
    assert_eq!(location(&headers), good);
    let s = start_login(&w.cg, "rd=%2F%2Fevil.example").await;
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    let (status, headers, _) = callback(&cb, &s.login_cookie).await;
    assert_eq!(status, 302);
    assert_eq!(location(&headers), "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_extend_the_session_with_one_refresh_at_a_time() {
    let w = world(
        "",
        "scopes = [\"openid\", \"email\", \"profile\", \"tenant\", \"offline_access\"]",
        Some(json!({"AccessToken": 2, "IdToken": 2})),
    )
    .await;
    let session = login(&w.cg, "", "alice", "alice-pw").await;
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "{body}");
    let before = w.idp.stats().await["token_requests"].as_u64().unwrap();
    // Past the access token's life: the next requests refresh it, once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, cookie) = (
            w.cg.url(&costs(&w.tenant)),
            format!("costguard_session={session}"),
        );
        requests.spawn(async move {
            send("GET", &url, &[("cookie", &cookie)], String::new())
                .await
                .0
        });
    }
    let statuses = requests.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = w.idp.stats().await["token_requests"].as_u64().unwrap();
    assert_eq!(
        after - before,
        1,
        "one refresh for eight concurrent requests"
    );
    // And again after the refreshed token's life: the session lives on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.idp.stats().await["token_requests"].as_u64().unwrap() - after,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_when_idle_at_their_lifetime_and_when_revoked() {
    let w = world(
        "session_lifetime = \"4s\"\nsession_idle_timeout = \"2s\"",
        "",
        None,
    )
    .await;
    let path = costs(&w.tenant);
    // Idle for longer than the idle timeout.
    let session = login(&w.cg, "", "alice", "alice-pw").await;
    assert_eq!(get_with_session(&w.cg, &path, &session).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, headers, body) = get_with_session(&w.cg, &path, &session).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "session_expired");
    assert!(headers.contains_key("www-authenticate"));
    // Used every second, it still ends at its absolute lifetime.
    let session = login(&w.cg, "", "alice", "alice-pw").await;
    let started = std::time::Instant::now();
    let mut ended_after = None;
    while started.elapsed() < Duration::from_secs(7) {
        if get_with_session(&w.cg, &path, &session).await.0 == 401 {
            ended_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let ended_after = ended_after.expect("the session ended");
    assert!(
        ended_after >= Duration::from_millis(3500),
        "{ended_after:?}"
    );
    // An admin lists the tenant's sessions (no secrets) and revokes one: it ends at once.
    let session = login(&w.cg, "", "alice", "alice-pw").await;
    let (status, body) = w.cg.admin(
        "GET",
        &format!("/admin/v1/tenants/{}/sessions", w.tenant),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let listed = body["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    let text = body.to_string();
    for secret in ["token_hash", "refresh_token", "id_token", &session] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let id = listed[0]["session_id"].as_str().unwrap();
    assert_eq!(listed[0]["user_id"], "alice");
    let (status, body) = w.cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{}/sessions/{id}", w.tenant),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_with_session(&w.cg, &path, &session).await.0, 401);
    // Another tenant's admin cannot see or end them.
    let (status, _) = w.cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{}/sessions/{id}", w.other),
        None,
    );
    assert_eq!(status, 404);
    // Deleting the user ends the user's sessions.
    let (status, body) = w.cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{}/users/alice", w.tenant),
        Some(json!({"email": "alice@acme.example", "roles": ["viewer"]})),
    );
    assert!(status == 200 || status == 201, "{body}");
    let session = login(&w.cg, "", "alice", "alice-pw").await;
    assert_eq!(get_with_session(&w.cg, &path, &session).await.0, 200);
    let (status, body) = w.cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{}/users/alice", w.tenant),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_with_session(&w.cg, &path, &session).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_replaces_the_session_it_came_with_and_rbac_applies() {
    let w = world("", "", None).await;
    let first = login(&w.cg, "", "alice", "alice-pw").await;
    // A second login in the same browser (or over a cookie an attacker planted).
    let s = start_login(&w.cg, "").await;
    let cb = authorize(&s.authorize_url, "alice", "alice-pw").await;
    let (status, headers, body) = send(
        "GET",
        &cb,
        &[(
            "cookie",
            &format!(
                "costguard_login={}; costguard_session={first}",
                s.login_cookie
            ),
        )],
        String::new(),
    )
    .await;
    assert_eq!(status, 302, "{body}");
    let second = set_cookies(&headers).remove("costguard_session").unwrap();
    assert_ne!(first, second);
    assert_eq!(
        get_with_session(&w.cg, &costs(&w.tenant), &first).await.0,
        401
    );
    assert_eq!(
        get_with_session(&w.cg, &costs(&w.tenant), &second).await.0,
        200
    );
    // The user is a viewer and analyst of their own tenant only.
    let (status, _, body) = send(
        "POST",
        &w.cg.url(&format!("/v1/tenants/{}/budgets", w.tenant)),
        &[("cookie", &format!("costguard_session={second}"))],
        String::new(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "forbidden");
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.other), &second).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "tenant_mismatch");
    // A state-changing request with the session cookie from another site
    // (login CSRF's sibling) is refused; from this origin it goes through.
    let base = format!("http://127.0.0.1:{}", w.port);
    let write = |headers: Vec<(&'static str, String)>| {
        let (url, cookie) = (
            w.cg.url("/v1/things"),
            format!("costguard_session={second}"),
        );
        async move {
            let mut h: Vec<(&str, &str)> = vec![("cookie", cookie.as_str())];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            send("POST", &url, &h, String::new()).await
        }
    };
    for cross in [
        vec![("origin", "http://evil.example".to_string())],
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![("sec-fetch-site", "same-site".to_string())],
        vec![("origin", "null".to_string())],
    ] {
        let (status, _, body) = write(cross.clone()).await;
        assert_eq!(status, 403, "{cross:?}: {body}");
        assert_eq!(error_code(&body), "cross_site_request");
    }
    let before = w.up.count();
    for same in [
        vec![("origin", base.clone())],
        vec![("sec-fetch-site", "same-origin".to_string())],
        vec![],
    ] {
        let (status, _, body) = write(same.clone()).await;
        assert_eq!(status, 200, "{same:?}: {body}");
    }
    assert_eq!(w.up.count(), before + 3);
    // A made-up cookie is no session.
    let (status, _, body) = get_with_session(
        &w.cg,
        &costs(&w.tenant),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_and_public_clients_log_in_and_providers_are_chosen_by_tenant_or_email() {
    let setup = Setup::new(&["enterprise", "standard"]);
    let (a, b, port) = (
        setup.tenants[0].clone(),
        setup.tenants[1].clone(),
        setup.port,
    );
    let idp = Idp::start(&json!({
        "clients": [
            client("es", Some("es-secret-0123456789"), "ES256", port),
            client("spa", None, "RS256", port),
        ],
        "users": {
            "alice": user("alice-pw", "alice@a.example", &a, &["viewer"], &[]),
            "bob": user("bob-pw", "bob@b.example", &b, &[], &["finance"]),
        },
    }));
    let secret = secret_file(setup.store.path(), "es.secret", "es-secret-0123456789");
    let config = format!(
        "{}{}",
        provider_toml(
            "a-es256",
            &idp.issuer,
            "es",
            Some(&secret),
            port,
            &format!(
                "tenant = \"{a}\"\ntenant_claim = \"tenant_id\"\nscopes = [\"openid\", \"email\", \"tenant\"]\nroles_claim = \"roles\"\nalgorithms = [\"ES256\"]\nemail_domains = {{ \"a.example\" = \"{a}\" }}"
            ),
        ),
        provider_toml(
            "b-public",
            &idp.issuer,
            "spa",
            None,
            port,
            &format!(
                "tenant = \"{b}\"\nscopes = [\"openid\", \"email\", \"tenant\"]\ngroups_claim = \"groups\"\ngroup_roles = {{ finance = [\"analyst\"] }}\nemail_domains = {{ \"b.example\" = \"{b}\" }}"
            ),
        ),
    );
    let w = setup.start(idp, &config).await;
    // ES256 ID tokens, provider picked by tenant.
    let s = start_login(&w.cg, &format!("tenant={a}")).await;
    assert!(
        s.authorize_url.contains("client_id=es"),
        "{}",
        s.authorize_url
    );
    assert_eq!(
        param(&s.authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let session = finish_login(&s, "alice", "alice-pw").await;
    assert_eq!(get_with_session(&w.cg, &costs(&a), &session).await.0, 200);
    assert_eq!(w.up.last().headers["x-costops-auth-method"], "oidc");
    assert_eq!(w.up.last().headers["x-costops-roles"], "viewer");
    // The public client (PKCE, no secret), provider picked by email domain.
    let s = start_login(&w.cg, "email=bob%40b.example").await;
    assert!(
        s.authorize_url.contains("client_id=spa"),
        "{}",
        s.authorize_url
    );
    assert_eq!(
        param(&s.authorize_url, "login_hint").as_deref(),
        Some("bob@b.example")
    );
    let session = finish_login(&s, "bob", "bob-pw").await;
    assert_eq!(get_with_session(&w.cg, &costs(&b), &session).await.0, 200);
    assert_eq!(w.up.last().headers["x-costops-tenant-id"], b.as_str());
    assert_eq!(w.up.last().headers["x-costops-roles"], "analyst");
    // Tenant A's provider never makes a session for tenant B's user.
    let s = start_login(&w.cg, &format!("tenant={a}")).await;
    let cb = authorize(&s.authorize_url, "bob", "bob-pw").await;
    let r = callback(&cb, &s.login_cookie).await;
    login_failed(&r, 401, "wrong_tenant");
    // Several providers and nothing to choose by: a clear 400.
    let (status, _, body) = send("GET", &w.cg.url("/auth/login"), &[], String::new()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "bad_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_answer_to_the_admin_apis_user() {
    let w = world("", "", None).await;
    let session = login(
        &w.cg,
        &format!("rd={}", costs(&w.tenant)),
        "alice",
        "alice-pw",
    )
    .await;
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "analyst,viewer");

    // A key that may manage users but holds less than alice (a signed-in
    // analyst) can neither take her identity over nor end her session.
    let user = format!("/admin/v1/tenants/{}/users/alice", w.tenant);
    let manager = user_manager_key(&w);
    let (status, body) = w.cg.admin_call(
        "PUT",
        &user,
        &manager,
        Some(&json!({"email": "alice@acme.example", "roles": [], "disabled": true})),
    );
    assert_eq!(status, 403, "{body}");
    let (_, sessions) = w.cg.admin(
        "GET",
        &format!("/admin/v1/tenants/{}/sessions", w.tenant),
        None,
    );
    let sid = sessions["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = w.cg.admin_call(
        "DELETE",
        &format!("/admin/v1/tenants/{}/sessions/{sid}", w.tenant),
        &manager,
        None,
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "untouched: {body}");

    // The admin API's roles replace the provider's for a user it knows.
    let (status, body) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["budget_manager"]})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "budget_manager");

    // Disabled: the live session stops at once, and no new login.
    let (status, _) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["viewer"], "disabled": true})),
    );
    assert_eq!(status, 200);
    let before = w.up.count();
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (401, "user_disabled"),
        "{body}"
    );
    let started = start_login(&w.cg, &format!("rd={}", costs(&w.tenant))).await;
    let cb = authorize(&started.authorize_url, "alice", "alice-pw").await;
    let (status, headers, body) = callback(&cb, &started.login_cookie).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("user_disabled"), "{body}");
    assert!(!set_cookies(&headers).contains_key("costguard_session"));

    // Deleted: still no login (the provider still vouches for alice).
    let (status, _) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["viewer"]})),
    );
    assert_eq!(status, 200);
    let (status, _) = w.cg.admin("DELETE", &user, None);
    assert_eq!(status, 200);
    let started = start_login(&w.cg, &format!("rd={}", costs(&w.tenant))).await;
    let cb = authorize(&started.authorize_url, "alice", "alice-pw").await;
    let (status, _, body) = callback(&cb, &started.login_cookie).await;
    assert_eq!(
        status, 403,
        "a deleted user cannot log straight back in: {body}"
    );
    assert_eq!(w.up.count(), before);
    let failed = audit_events(&w.cg, "auth.login_failed");
    assert!(
        failed
            .iter()
            .any(|r| r["details"]["reason"] == "user_disabled"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_role_a_signed_in_user_holds_from_the_provider_is_guarded() {
    // Everyone the provider signs in also gets the tenant's custom role
    // `ops_custom` (default_roles): alice (an analyst) holds it.
    let w = world("", "default_roles = [\"ops_custom\"]\n", None).await;
    let role = format!("/admin/v1/tenants/{}/roles/ops_custom", w.tenant);
    let (status, _) = w.cg.admin(
        "PUT",
        &role,
        Some(json!({"description": "ops", "permissions": ["view_costs"]})),
    );
    assert_eq!(status, 201);
    let manager = user_manager_key(&w);
    // Nobody holds it yet: the manager may reshape it.
    let (status, body) = w.cg.admin_call(
        "PUT",
        &role,
        &manager,
        Some(&json!({"description": "ops", "permissions": ["view_costs"]})),
    );
    assert_eq!(status, 200, "{body}");
    let session = login(
        &w.cg,
        &format!("rd={}", costs(&w.tenant)),
        "alice",
        "alice-pw",
    )
    .await;
    let (status, _, body) = get_with_session(&w.cg, &costs(&w.tenant), &session).await;
    assert_eq!(status, 200, "{body}");
    // Now a signed-in analyst holds it: not the manager's to change.
    let (status, body) = w.cg.admin_call(
        "PUT",
        &role,
        &manager,
        Some(&json!({"description": "grown", "permissions": ["view_costs", "manage_users"]})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = w.cg.admin_call("DELETE", &role, &manager, None);
    assert_eq!(status, 403, "{body}");
    let (status, _) = w.cg.admin("DELETE", &role, None);
    assert_eq!(status, 200, "the root token may");
}
