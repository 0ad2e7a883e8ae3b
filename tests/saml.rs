//! Single sign-on through a real SAML 2.0 identity provider (pysaml2 with
//! xmlsec1 on 127.0.0.2): a browser login in headless Chromium, and the
//! hostile responses an attacker posts to `/auth/saml/acs`.

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::error_code;
use support::idp::*;
use support::saml_idp::*;
use support::sso::{
    Setup, World, assert_no_costguard_cookie, costs, failure_reasons, session_cookie, step,
};

async fn world(sign: &str, extra: &str) -> World<SamlIdp> {
    let setup = Setup::new(&["enterprise", "enterprise"]);
    let (tenant, other, port) = (&setup.tenants[0], &setup.tenants[1], setup.port);
    let idp = SamlIdp::start(
        port,
        json!({
            "alice": saml_user("alice-pw", "alice@acme.example", tenant, &["analyst", "viewer"]),
            "mallory": saml_user("mallory-pw", "mallory@other.example", other, &["admin"]),
            "evil": saml_user("evil-pw", "victim@acme.example.evil.test", tenant, &["viewer"]),
        }),
        sign,
    );
    // Dozens of refused responses come from one address here.
    let toml = format!(
        "[rate_limit]\nfailed_auth_per_minute = 1000\n{}",
        saml_toml(&idp, port, extra)
    );
    setup.start(idp, &toml).await
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_login_through_saml_reaches_the_upstream_as_the_user() {
    let w = world("assertion", "").await;
    let base = format!("http://127.0.0.1:{}", w.port);
    let page = format!("{base}{}", costs(&w.tenant));
    let report = browser(json!([
        {"goto": format!("{base}/auth/login?rd={}", costs(&w.tenant))},
        {"fill": {"selector": "#username", "value": "alice"}},
        {"fill": {"selector": "#password", "value": "alice-pw"}},
        {"click": "#login"},
        {"wait_url": page},
        {"save": "protected"},
        {"cookies": "after_login"},
        {"goto": format!("{base}/auth/userinfo")},
        {"save": "userinfo"},
        {"goto": format!("{base}/auth/logout")},
        {"goto": page},
        {"save": "after_logout"},
    ]));
    let by_name = |name: &str| step(&report, name);
    assert_eq!(by_name("protected")["status"], 200, "{report:#}");
    let seen =
        w.up.seen()
            .into_iter()
            .find(|s| s.target == costs(&w.tenant))
            .expect("the upstream got the page request");
    assert_eq!(seen.headers["x-costops-auth-method"], "saml");
    assert_eq!(seen.headers["x-costops-user-id"], "alice@acme.example");
    assert_eq!(seen.headers["x-costops-tenant-id"], w.tenant.as_str());
    assert_eq!(seen.headers["x-costops-roles"], "analyst,viewer");
    assert_no_costguard_cookie(&seen);
    let cookies = by_name("after_login")["cookies"].clone();
    session_cookie(&cookies);
    // The SAML login cookie was cleared at the ACS.
    assert!(
        !cookies
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "costguard_saml"),
        "{cookies:#}"
    );
    let info: Value = serde_json::from_str(by_name("userinfo")["text"].as_str().unwrap()).unwrap();
    assert_eq!(info["auth_method"], "saml");
    assert_eq!(info["provider"], "corp");
    assert_eq!(info["email"], "alice@acme.example");
    assert_eq!(by_name("after_logout")["status"], 401);
    // The IdP got our AuthnRequest (HTTP-Redirect): our entity id, our
    // ACS, email NameIDs.
    let stats = w.idp.stats().await;
    let req = &stats["last_authn_request"];
    assert_eq!(
        req["issuer"],
        format!("{base}/auth/saml/metadata"),
        "{stats}"
    );
    assert_eq!(req["acs_url"], format!("{base}/auth/saml/acs"), "{stats}");
    assert_eq!(
        req["name_id_policy_format"],
        "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    );
    let logins = audit_events(&w.cg, "auth.login");
    assert!(
        logins.iter().any(|r| r["details"]["auth_method"] == "saml"
            && r["user_id"] == "alice@acme.example"
            && r["tenant_id"] == w.tenant.as_str()),
        "{logins:#?}"
    );
    assert!(!audit_events(&w.cg, "auth.logout").is_empty());
    // The SP metadata names the entity id and the ACS.
    let (status, headers, body) =
        send("GET", &w.cg.url("/auth/saml/metadata"), &[], String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/samlmetadata+xml");
    assert!(
        body.contains(&format!(r#"entityID="{base}/auth/saml/metadata""#)),
        "{body}"
    );
    assert!(
        body.contains(&format!(r#"Location="{base}/auth/saml/acs""#)),
        "{body}"
    );
    assert!(
        body.contains("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"),
        "{body}"
    );
    assert!(body.contains(r#"WantAssertionsSigned="true""#), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_responses_are_refused_and_audited() {
    let w = world("assertion", "").await;
    let rd = costs(&w.tenant);
    let pending = start_saml_login(&w.cg, &format!("rd={rd}")).await;
    // The login cookie: signed, Secure, HttpOnly, SameSite=None (the IdP's
    // POST is cross-site), __Host- (no sibling subdomain can set it).
    for attr in ["Secure", "HttpOnly", "SameSite=None", "Path=/;"] {
        assert!(pending.set_cookie.contains(attr), "{}", pending.set_cookie);
    }
    let acs = format!("http://127.0.0.1:{}/auth/saml/acs", w.port);
    let base = json!({"user": "alice", "in_response_to": pending.request_id});
    let with = |extra: Value| {
        let mut spec = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "name id changed after signing",
            with(json!({"attack": "tamper_name_id"})),
            "bad_signature",
        ),
        (
            "tenant changed after signing",
            with(json!({"attack": "tamper_attribute", "attribute": "tenant_id", "value": w.other})),
            "bad_signature",
        ),
        (
            "roles changed after signing",
            with(
                json!({"attack": "tamper_attribute", "attribute": "roles", "value": "system_admin"}),
            ),
            "bad_signature",
        ),
        (
            "another key, its cert in KeyInfo",
            with(json!({"key": "attacker"})),
            "bad_signature",
        ),
        ("unsigned", with(json!({"sign": "none"})), "unsigned"),
        (
            "signed Response around an unsigned Assertion",
            with(json!({"sign": "response"})),
            "unsigned",
        ),
        (
            "expired",
            with(json!({"not_before": -900, "not_on_or_after": -300})),
            "expired",
        ),
        (
            "not yet valid",
            with(json!({"not_before": 600, "not_on_or_after": 900})),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            with(json!({"audience": "https://other-sp.example"})),
            "wrong_audience",
        ),
        (
            "wrong recipient",
            with(json!({"recipient": "https://other-sp.example/acs"})),
            "wrong_recipient",
        ),
        (
            "wrong destination",
            with(json!({"destination": "https://other-sp.example/acs"})),
            "wrong_destination",
        ),
        (
            "wrong issuer",
            with(json!({"issuer": "https://evil-idp.example"})),
            "wrong_issuer",
        ),
        (
            "unknown InResponseTo",
            with(json!({"in_response_to": "_0123456789abcdef0123456789abcdef"})),
            "unknown_in_response_to",
        ),
        (
            "unsolicited",
            with(json!({"in_response_to": null})),
            "unknown_in_response_to",
        ),
        (
            "evil assertion before the signed one",
            with(json!({"attack": "xsw_before"})),
            "assertion_count",
        ),
        (
            "evil assertion after the signed one",
            with(json!({"attack": "xsw_after"})),
            "assertion_count",
        ),
        (
            "evil assertion around the signed one",
            with(json!({"attack": "xsw_wrap"})),
            "assertion_count",
        ),
        (
            "signed assertion moved into Extensions",
            with(json!({"attack": "xsw_extensions"})),
            "assertion_count",
        ),
        (
            "signed assertion moved into ds:Object",
            with(json!({"attack": "xsw_object"})),
            "assertion_count",
        ),
        (
            "evil assertion with the signed one's ID",
            with(json!({"attack": "duplicate_id"})),
            "duplicate_id",
        ),
        (
            "signed Response wrapped in an evil one",
            with(json!({"attack": "xsw_response", "sign": "both"})),
            "assertion_count",
        ),
        (
            "comment inside the NameID",
            with(
                json!({"user": "evil", "attack": "comment_in_name_id", "value": "victim@acme.example.evil.test"}),
            ),
            "comment_in_value",
        ),
        (
            "DOCTYPE with an internal entity",
            with(json!({"attack": "doctype_entity"})),
            "dtd_refused",
        ),
        (
            "external entity",
            with(json!({"attack": "external_entity"})),
            "dtd_refused",
        ),
        (
            "billion laughs",
            with(json!({"attack": "billion_laughs"})),
            "dtd_refused",
        ),
        (
            "2 MiB",
            with(json!({"attack": "oversize", "size": 2 << 20})),
            "response_too_large",
        ),
        (
            "300 KiB (over the 256 KiB bound, under the body limit)",
            with(json!({"attack": "oversize", "size": 300 << 10})),
            "response_too_large",
        ),
    ];
    let mut expected = Vec::new();
    for (what, spec, reason) in &cases {
        let response = w.idp.response(spec.clone()).await;
        let (status, headers, body) = post_acs(&w.cg, &response, Some(&pending.cookie)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(error_code(&body), "login_failed", "{what}");
        assert!(body.contains(reason), "{what}: expected {reason}: {body}");
        assert!(
            !set_cookies(&headers).contains_key("costguard_session"),
            "{what}: a session was made"
        );
        expected.push(reason.to_string());
    }
    // Not signed for us at all, and garbage.
    for (what, form, reason) in [
        ("not base64", "SAMLResponse=%%%", "malformed_response"),
        ("not XML", "SAMLResponse=PG5vdA%3D%3D", "malformed_response"),
        ("no SAMLResponse", "RelayState=x", "missing_saml_response"),
    ] {
        let (status, _, body) = send(
            "POST",
            &acs,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", &pending.cookie),
            ],
            form.to_string(),
        )
        .await;
        assert!(status == 400 || status == 401, "{what}: {status} {body}");
        assert!(body.contains(reason), "{what}: {body}");
        expected.push(reason.to_string());
    }
    // A declared encoding other than UTF-8 (UTF-7 hides markup from one XML
    // parser and not the other), and the login cookie twice.
    let valid = w.idp.response(base.clone()).await;
    let xml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&valid)
            .unwrap(),
    )
    .unwrap();
    let body_start = if xml.starts_with("<?xml") {
        xml.find("?>").unwrap() + 2
    } else {
        0
    };
    let utf7 = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-7\"?>{}",
        &xml[body_start..]
    );
    let utf7 = base64::engine::general_purpose::STANDARD.encode(utf7);
    let (status, _, body) = post_acs(&w.cg, &utf7, Some(&pending.cookie)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bad_encoding"), "{body}");
    let twice = format!("{}; {}", pending.cookie, pending.cookie);
    let (status, _, body) = post_acs(&w.cg, &valid, Some(&twice)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_login_cookie"), "{body}");
    expected.extend([
        "bad_encoding".to_string(),
        "invalid_login_cookie".to_string(),
    ]);
    // Without the browser's login cookie (a response injected into another
    // browser) nothing is accepted, even a valid one.
    let (status, _, body) = post_acs(&w.cg, &valid, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing_login_cookie"), "{body}");
    expected.push("missing_login_cookie".into());
    assert_eq!(w.up.count(), 0, "nothing reached the upstream");

    // The valid response, with its cookie: a session for alice, back to rd.
    let (status, headers, body) = post_acs(&w.cg, &valid, Some(&pending.cookie)).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(location(&headers), rd);
    let session = set_cookies(&headers)["costguard_session"].clone();
    let (status, _, body) = send(
        "GET",
        &w.cg.url(&rd),
        &[("cookie", &format!("costguard_session={session}"))],
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-auth-method"], "saml");
    // Posted again: a replay. Another assertion for the same request: the
    // request was answered already.
    let (status, _, body) = post_acs(&w.cg, &valid, Some(&pending.cookie)).await;
    assert_eq!(status, 401);
    assert!(body.contains("replayed"), "{body}");
    let second = w.idp.response(base.clone()).await;
    let (status, _, body) = post_acs(&w.cg, &second, Some(&pending.cookie)).await;
    assert_eq!(status, 401);
    assert!(body.contains("replayed_request"), "{body}");
    expected.extend(["replayed".to_string(), "replayed_request".to_string()]);

    // Every refusal is in the audit log with its reason; the attacks also
    // as security.suspicious; no SAML response or cookie in the logs.
    let (failed, suspicious) = failure_reasons(&w.cg);
    for reason in &expected {
        assert!(failed.contains(reason), "{reason} not in {failed:?}");
    }
    for reason in [
        "bad_signature",
        "assertion_count",
        "duplicate_id",
        "dtd_refused",
        "comment_in_value",
        "replayed",
    ] {
        assert!(
            suspicious.contains(&reason.to_string()),
            "{reason} not in {suspicious:?}"
        );
    }
    let logs = w.cg.logs();
    assert!(!logs.contains(&valid[..40]), "a SAML response in the logs");
    assert!(!logs.contains(&session), "a session cookie in the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_for_another_tenant_and_rbac_apply_to_saml_users() {
    let w = world("both", "").await;
    // Asked for tenant A, the IdP's user is in B: refused after verification.
    let pending = start_saml_login(&w.cg, &format!("tenant={}", w.tenant)).await;
    let response = w
        .idp
        .response(json!({"user": "mallory", "in_response_to": pending.request_id, "sign": "both"}))
        .await;
    let (status, _, body) = post_acs(&w.cg, &response, Some(&pending.cookie)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tenant_mismatch"), "{body}");
    // Mallory (admin in B) logs in for B and cannot read A.
    let pending = start_saml_login(&w.cg, "").await;
    let response = w
        .idp
        .response(json!({"user": "mallory", "in_response_to": pending.request_id, "sign": "both"}))
        .await;
    let (status, headers, body) = post_acs(&w.cg, &response, Some(&pending.cookie)).await;
    assert_eq!(status, 302, "{body}");
    let cookie = format!(
        "costguard_session={}",
        set_cookies(&headers)["costguard_session"]
    );
    let get = |path: String| {
        let cookie = cookie.clone();
        let url = w.cg.url(&path);
        async move { send("GET", &url, &[("cookie", &cookie)], String::new()).await }
    };
    let (status, _, _) = get(costs(&w.other)).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(costs(&w.tenant)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "tenant_mismatch");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsolicited_responses_and_response_only_signatures_are_opt_in() {
    // A second pinned certificate (rotation): the "attacker" pair stands in
    // for the IdP's next key.
    let setup = Setup::new(&["enterprise"]);
    let port = setup.port;
    let idp = SamlIdp::start(
        port,
        json!({"alice": saml_user("alice-pw", "alice@acme.example", &setup.tenants[0], &["viewer"])}),
        "assertion",
    );
    let toml = saml_toml(
        &idp,
        port,
        &format!(
            "allow_unsolicited = true\nrequire_signed_assertion = false\nidp_cert_files = [\"{}\"]\n",
            idp.attacker_cert_file
        ),
    );
    let w = setup.start(idp, &toml).await;
    // IdP-initiated: no cookie, no InResponseTo; RelayState is kept only
    // as a same-origin path.
    for (spec, ok) in [
        (json!({"user": "alice"}), true),
        (json!({"user": "alice", "sign": "response"}), true),
        (json!({"user": "alice", "sign": "both"}), true),
        (json!({"user": "alice", "key": "attacker"}), true),
        (json!({"user": "alice", "sign": "none"}), false),
        (json!({"user": "alice", "attack": "xsw_response"}), false),
        (
            json!({"user": "alice", "in_response_to": "_0123456789abcdef0123456789abcdef"}),
            false,
        ),
    ] {
        let response = w.idp.response(spec.clone()).await;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &response)
            .append_pair("RelayState", "//evil.example/")
            .finish();
        let (status, headers, body) = send(
            "POST",
            &w.cg.url("/auth/saml/acs"),
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
        if ok {
            assert_eq!(status, 302, "{spec}: {body}");
            assert_eq!(location(&headers), "/", "{spec}");
            assert!(set_cookies(&headers).contains_key("costguard_session"));
        } else {
            assert_eq!(status, 401, "{spec}: {body}");
        }
    }
}
