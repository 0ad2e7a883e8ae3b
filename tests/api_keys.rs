//! API keys through the real proxy: what the upstream receives, every way a
//! credential can be wrong, and the key lifecycle (revoke, rotate, expire,
//! suspend, delete, crash).

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Sidecar, Upstream, config_for, error_code, get, get_as, raw_request, sidecar};

fn request(auth_headers: &str) -> String {
    format!("GET /v1/things HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth_headers}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_key_forwards_with_identity_headers_and_without_itself() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (key_id, key) = cg.create_key(&t, &["analyst", "budget_manager"]);
    for headers in [
        format!("Authorization: Bearer {key}\r\n"),
        format!("X-API-Key: {key}\r\n"),
        format!("authorization: bearer {key}\r\n"),
    ] {
        let resp = raw_request(cg.proxy, request(&headers).as_bytes());
        assert_eq!(resp.status, 200, "{headers}: {resp:?}");
        let seen = up.last();
        assert_eq!(seen.headers["x-costops-tenant-id"], t.as_str());
        assert_eq!(seen.headers["x-costops-user-id"], key_id.as_str());
        assert_eq!(seen.headers["x-costops-key-id"], key_id.as_str());
        assert_eq!(seen.headers["x-costops-roles"], "analyst,budget_manager");
        assert_eq!(seen.headers["x-costops-auth-method"], "api_key");
        assert!(!seen.headers.contains_key("authorization"));
        assert!(!seen.headers.contains_key("x-api-key"));
        for v in seen.headers.values() {
            assert!(
                !v.to_str().unwrap_or_default().contains(&key[8..]),
                "the key reached the upstream"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_are_refused_before_the_upstream() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let unknown = "costops_00000000000000000000000000000000";
    let cases: Vec<(String, u16, &str)> = vec![
        (String::new(), 401, "unauthenticated"),
        (
            "Authorization: Bearer costops_short\r\n".into(),
            401,
            "invalid_key",
        ),
        (
            "Authorization: Bearer costops_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ\r\n".into(),
            401,
            "invalid_key",
        ),
        (
            format!(
                "Authorization: Bearer {}\r\n",
                key.to_uppercase().replace("COSTOPS_", "costops_")
            ),
            401,
            "invalid_key",
        ),
        (
            format!("Authorization: Bearer {unknown}\r\n"),
            401,
            "invalid_key",
        ),
        (format!("X-API-Key: {unknown}\r\n"), 401, "invalid_key"),
        (
            format!("Authorization: Basic {key}\r\n"),
            401,
            "invalid_key",
        ),
        (
            "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\r\n".into(),
            401,
            "invalid_token",
        ),
        ("Authorization: Bearer\r\n".into(), 401, "invalid_key"),
        (
            format!("Authorization: Bearer {key}\r\nX-API-Key: {key}\r\n"),
            400,
            "ambiguous_credentials",
        ),
        (
            format!("Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n"),
            400,
            "ambiguous_credentials",
        ),
        (
            format!("X-API-Key: {key}\r\nX-API-Key: {unknown}\r\n"),
            400,
            "ambiguous_credentials",
        ),
        (
            format!("X-API-Key: {key}\r\nAuthorization: Basic Zm9vOmJhcg==\r\n"),
            400,
            "ambiguous_credentials",
        ),
    ];
    for (headers, status, code) in cases {
        let resp = raw_request(cg.proxy, request(&headers).as_bytes());
        assert_eq!(resp.status, status, "{headers:?}: {resp:?}");
        assert_eq!(error_code(&resp.body), code, "{headers:?}");
        if status == 401 {
            let challenge = &resp.headers["www-authenticate"];
            assert!(
                challenge.starts_with("Bearer realm=\"costguard\""),
                "{challenge}"
            );
        }
    }
    assert_eq!(up.count(), 0, "no bad credential reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_takes_effect_at_once() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (key_id, key) = cg.create_key(&t, &["viewer"]);
    // Warm the cache.
    for _ in 0..3 {
        assert_eq!(get_as(&cg.url("/v1/x"), &key).await.0, 200);
    }
    let (status, revoked) = cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    let (status, _, body) = get_as(&cg.url("/v1/x"), &key).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "revoked_key");
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        None,
    );
    assert_eq!(
        status, 409,
        "a revoked key cannot be brought back by rotation"
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_without_grace_switches_secrets_at_once() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (key_id, old) = cg.create_key(&t, &["viewer"]);
    assert_eq!(get_as(&cg.url("/v1/x"), &old).await.0, 200);
    let (status, rotated) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        None,
    );
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["key_id"], key_id.as_str(), "same key id");
    let new = rotated["api_key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(get_as(&cg.url("/v1/x"), &old).await.0, 401);
    assert_eq!(get_as(&cg.url("/v1/x"), &new).await.0, 200);
    assert_eq!(up.last().headers["x-costops-key-id"], key_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_with_grace_keeps_the_old_secret_until_it_ends() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (key_id, old) = cg.create_key(&t, &["viewer"]);
    let (status, rotated) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 2})),
    );
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["previous_key_valid_until"].is_string());
    let new = rotated["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        get_as(&cg.url("/v1/x"), &old).await.0,
        200,
        "old secret within grace"
    );
    assert_eq!(get_as(&cg.url("/v1/x"), &new).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        get_as(&cg.url("/v1/x"), &old).await.0,
        401,
        "old secret after grace"
    );
    assert_eq!(get_as(&cg.url("/v1/x"), &new).await.0, 200);
    // Rotating again ends the earlier grace for the first secret for good.
    let (_, again) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    );
    let newest = again["api_key"].as_str().unwrap();
    assert_eq!(get_as(&cg.url("/v1/x"), &old).await.0, 401);
    assert_eq!(
        get_as(&cg.url("/v1/x"), &new).await.0,
        200,
        "the secret just rotated out is in its grace"
    );
    assert_eq!(get_as(&cg.url("/v1/x"), newest).await.0, 200);
    let (status, _) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 99999999})),
    );
    assert_eq!(status, 400, "grace is bounded");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_rotation_grace_is_the_default() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[auth]\nrotation_grace = \"1h\"\n");
    let t = cg.create_tenant("standard");
    let (key_id, old) = cg.create_key(&t, &["viewer"]);
    let (_, rotated) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        None,
    );
    assert!(rotated["previous_key_valid_until"].is_string());
    assert_eq!(get_as(&cg.url("/v1/x"), &old).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_stop_working() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires = expires.replace_nanosecond(0).unwrap();
    let (status, k) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys"),
        Some(json!({"expires_at": expires.format(&time::format_description::well_known::Rfc3339).unwrap()})),
    );
    assert_eq!(status, 201, "{k}");
    let key = k["api_key"].as_str().unwrap();
    assert_eq!(get_as(&cg.url("/v1/x"), key).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, body) = get_as(&cg.url("/v1/x"), key).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "expired_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspended_and_deleted_tenants_keys_stop_working() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    let t = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    assert_eq!(get_as(&cg.url("/v1/x"), &key).await.0, 200);
    let (status, _) = cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"status": "suspended"})),
    );
    assert_eq!(status, 200);
    let (status, _, body) = get_as(&cg.url("/v1/x"), &key).await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&body), "tenant_suspended");
    let (status, _) = cg.admin_call("GET", &format!("/admin/v1/tenants/{t}/keys"), &key, None);
    assert_eq!(status, 403, "nor on the admin port");
    cg.admin(
        "PATCH",
        &format!("/admin/v1/tenants/{t}"),
        Some(json!({"status": "active"})),
    );
    assert_eq!(get_as(&cg.url("/v1/x"), &key).await.0, 200);
    let (status, _) = cg.admin("DELETE", &format!("/admin/v1/tenants/{t}"), None);
    assert_eq!(status, 200);
    let (status, _, body) = get_as(&cg.url("/v1/x"), &key).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "invalid_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_key_survives_kill_9() {
    let up = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store");
    let config = config_for(&up.url(), "");
    let mut cg = Sidecar::start_with_store(&config, &[], Some(&store));
    let t = cg.create_tenant("standard");
    let (key_id, key) = cg.create_key(&t, &["analyst"]);
    cg.kill9();
    let cg = Sidecar::start_with_store(&config, &[], Some(&store));
    let (status, _, _) = get_as(&cg.url("/v1/x"), &key).await;
    assert_eq!(
        status, 200,
        "the key acknowledged before kill -9 works after restart"
    );
    assert_eq!(up.last().headers["x-costops-key-id"], key_id.as_str());
    // And the request counter survived a clean shutdown path too.
    let (status, _) = cg.admin("GET", &format!("/admin/v1/tenants/{t}/usage"), None);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_hash_or_token_in_any_log_line() {
    use sha2::Digest;
    let up = Upstream::start().await;
    let cg = sidecar(&up, "[log]\nlevel = \"trace\"\n");
    let t = cg.create_tenant("standard");
    let (key_id, key) = cg.create_key(&t, &["viewer"]);
    assert_eq!(get_as(&cg.url("/v1/x"), &key).await.0, 200);
    let (_, rotated) = cg.admin(
        "POST",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    );
    let new = rotated["api_key"].as_str().unwrap().to_string();
    assert_eq!(get_as(&cg.url("/v1/x"), &new).await.0, 200);
    assert_eq!(
        get_as(&cg.url("/v1/x"), "costops_0123456789abcdef0123456789abcdef")
            .await
            .0,
        401
    );
    cg.admin(
        "DELETE",
        &format!("/admin/v1/tenants/{t}/keys/{key_id}"),
        None,
    );
    assert_eq!(get(&cg.url("/health")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = cg.logs();
    assert!(
        logs.contains(&key_id),
        "the key id may be logged (it is not a secret)"
    );
    let hex = |s: &str| {
        sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for secret in [
        key.as_str(),
        &key[8..],
        &new,
        &new[8..],
        &hex(&key),
        &hex(&new),
        support::ADMIN_TOKEN,
        "0123456789abcdef0123456789abcdef",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret appears in the logs: {secret}"
        );
    }
}
