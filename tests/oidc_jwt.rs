//! JWT bearer tokens issued by a real OpenID provider (npm `oidc-provider`
//! on 127.0.0.2), end to end through the real binary: valid RS256/ES256
//! tokens reach the upstream as the user, RBAC and tenant isolation still
//! apply, forged or malformed tokens are refused before the upstream, key
//! rotation at the provider, the unknown-kid refetch cooldown, per-tenant
//! providers, HS256 only where configured, and `system_admin` only from a
//! provider allowed to grant it.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use support::idp::*;
use support::sso::{Setup, World, costs};
use support::{NO_AUTH_THROTTLE, Sidecar, error_code};

/// One provider process, one costguard, one recording upstream, two
/// enterprise tenants. The provider "corp" (client id `cg`) reads the
/// tenant from `tenant_id` and roles from `roles`. Failed authentications
/// are not throttled: these tests send many refused tokens from 127.0.0.1
/// on purpose.
///
/// `sso_extra`: keys of `[sso]`; `corp_extra`: keys of the corp table;
/// `more`: further `[[sso.oidc]]` tables (`{issuer}` and `{port}` replaced).
async fn world(sso_extra: &str, corp_extra: &str, more: &str) -> World<Idp> {
    world_throttled(NO_AUTH_THROTTLE, sso_extra, corp_extra, more).await
}

/// [`world`] with `throttle` (a `[rate_limit]` section) instead of no
/// failed-authentication throttle.
async fn world_throttled(
    throttle: &str,
    sso_extra: &str,
    corp_extra: &str,
    more: &str,
) -> World<Idp> {
    let setup = Setup::new(&["enterprise", "enterprise"]);
    let port = setup.port;
    let idp = Idp::start(&json!({"clients": [client("cg", None, "RS256", port)], "users": {}}));
    let more = more
        .replace("{issuer}", &idp.issuer)
        .replace("{port}", &port.to_string());
    let toml = format!(
        "{throttle}[sso]\n{sso_extra}\n{}{more}",
        provider_toml(
            "corp",
            &idp.issuer,
            "cg",
            None,
            port,
            &format!("tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\n{corp_extra}"),
        ),
    );
    setup.start(idp, &toml).await
}

/// Claims of a good access token for `aud`, tenant and roles.
fn claims(issuer: &str, aud: &str, tenant: &str, roles: &[&str]) -> Value {
    json!({
        "iss": issuer,
        "aud": aud,
        "sub": "alice",
        "exp": now() + 300,
        "iat": now(),
        "tenant_id": tenant,
        "roles": roles,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// `METHOD path` on the proxy with `Authorization: Bearer token`.
async fn call(
    cg: &Sidecar,
    method: &str,
    path: &str,
    token: &str,
) -> (StatusCode, HeaderMap, String) {
    let body = if method == "GET" { "" } else { "{}" };
    send(
        method,
        &cg.url(path),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Asserts a refusal as a bad token: 401, `invalid_token`, the RFC 6750
/// challenge, and the upstream saw nothing.
async fn assert_refused(w: &World<Idp>, path: &str, token: &str, what: &str) {
    let before = w.up.count();
    let (status, headers, body) = call(&w.cg, "GET", path, token).await;
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(error_code(&body), "invalid_token", "{what}: {body}");
    let challenge = headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
        "{what}: WWW-Authenticate {challenge:?}"
    );
    assert_eq!(w.up.count(), before, "{what}: the upstream saw the request");
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A token MACed with `secret` (HS256), made here, not at the provider.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// An ES256 token signed with a key the attacker just made; with
/// `embed`, the header carries that key as `jwk` (the "trust the key in
/// the token" attack).
fn attacker_es256(header: Value, claims: &Value, embed: bool) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref(); // 0x04 || x || y
    let mut header = header;
    header["alg"] = json!("ES256");
    if embed {
        header["jwk"] = json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(&public[1..33]), "y": b64(&public[33..65]),
        });
    }
    let input = format!("{}.{}", b64_json(&header), b64_json(claims));
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

/// A second provider "hs" (client id `cg-hs`) of the same issuer that
/// takes only HS256 tokens, keyed with the secret in `file`.
fn hs_provider(file: &std::path::Path) -> String {
    format!(
        "[[sso.oidc]]\nname = \"hs\"\nissuer = \"{{issuer}}\"\nclient_id = \"cg-hs\"\n\
         redirect_url = \"http://127.0.0.1:{{port}}/auth/callback\"\n\
         tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\nalgorithms = [\"HS256\"]\n\
         hs256_secret_file = \"{}\"\n",
        file.display()
    )
}

/// The provider's key ids starting with `prefix` ("rs256-", "es256-").
async fn kids(idp: &Idp, prefix: &str) -> Vec<String> {
    idp.get_json("/__test/keys").await["kids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|k| k.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A token signed by `idp`'s current RS256 key.
async fn token(c: Value, idp: &Idp) -> String {
    idp.mint(c, json!({}), "RS256", None).await
}

async fn jwks_fetches(idp: &Idp) -> u64 {
    idp.stats().await["jwks_fetches"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_reach_the_upstream_as_the_user_and_rbac_still_applies() {
    let w = world("", "", "").await;
    for alg in ["RS256", "ES256"] {
        let c = claims(&w.idp.issuer, "cg", &w.tenant, &["viewer", "analyst"]);
        let token = w.idp.mint(c, json!({}), alg, None).await;
        let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
        assert_eq!(status, 200, "{alg}: {body}");
        let seen = w.up.last();
        assert_eq!(seen.target, costs(&w.tenant), "{alg}");
        let h = &seen.headers;
        assert_eq!(h["x-costops-auth-method"], "jwt", "{alg}");
        assert_eq!(h["x-costops-user-id"], "alice", "{alg}");
        assert_eq!(h["x-costops-tenant-id"], w.tenant.as_str(), "{alg}");
        assert_eq!(h["x-costops-roles"], "analyst,viewer", "{alg}");
        assert!(
            !h.contains_key("authorization"),
            "{alg}: token forwarded: {h:?}"
        );
        assert!(!h.contains_key("x-costops-key-id"), "{alg}: {h:?}");
    }
    // A client's own identity headers never pass, even beside a good token.
    let token = w
        .idp
        .mint(
            claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]),
            json!({}),
            "RS256",
            None,
        )
        .await;
    let (status, _, body) = send(
        "GET",
        &w.cg.url(&costs(&w.tenant)),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-costops-roles", "system_admin"),
            ("x-costops-tenant-id", &w.other),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h = w.up.last().headers;
    assert_eq!(h.get_all("x-costops-roles").iter().count(), 1);
    assert_eq!(h["x-costops-roles"], "viewer");
    assert_eq!(h["x-costops-tenant-id"], w.tenant.as_str());
    // RBAC: a viewer may not create budgets; nor reach another tenant.
    let before = w.up.count();
    let path = format!("/v1/tenants/{}/budgets", w.tenant);
    let (status, _, body) = call(&w.cg, "POST", &path, &token).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "forbidden"),
        "{body}"
    );
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.other), &token).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "tenant_mismatch"),
        "{body}"
    );
    assert_eq!(
        w.up.count(),
        before,
        "a denied request reached the upstream"
    );
    // A budget manager's token may create budgets.
    let manager = w
        .idp
        .mint(
            claims(&w.idp.issuer, "cg", &w.tenant, &["budget_manager"]),
            json!({}),
            "ES256",
            None,
        )
        .await;
    let (status, _, body) = call(&w.cg, "POST", &path, &manager).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "budget_manager");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_and_malformed_tokens_are_refused_before_the_upstream() {
    let w = world("", "", "").await;
    let iss = w.idp.issuer.clone();
    let good = || claims(&iss, "cg", &w.tenant, &["viewer"]);
    let without = |name: &str| {
        let mut c = good();
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let with = |name: &str, v: Value| {
        let mut c = good();
        c[name] = v;
        c
    };
    let rs = async |c: Value, header: Value| w.idp.mint(c, header, "RS256", None).await;
    // The world works: a good token passes.
    let ok = rs(good(), json!({})).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &ok).await;
    assert_eq!(status, 200, "{body}");

    let rsa_kid = kids(&w.idp, "rs256-").await[0].clone();
    let mut table: Vec<(&str, String)> = vec![
        (
            "wrong aud",
            rs(with("aud", json!("someone-else")), json!({})).await,
        ),
        (
            "aud list without us",
            rs(with("aud", json!(["a", "b"])), json!({})).await,
        ),
        ("aud missing", rs(without("aud"), json!({})).await),
        ("exp missing", rs(without("exp"), json!({})).await),
        (
            "expired beyond leeway",
            rs(with("exp", json!(now() - 3600)), json!({})).await,
        ),
        (
            "exp as a string",
            rs(with("exp", json!((now() + 300).to_string())), json!({})).await,
        ),
        (
            "nbf in the future",
            rs(with("nbf", json!(now() + 3600)), json!({})).await,
        ),
        (
            "nbf as a string",
            rs(with("nbf", json!("0")), json!({})).await,
        ),
        (
            "iat far in the future",
            rs(with("iat", json!(now() + 3600)), json!({})).await,
        ),
        (
            "iat as a string",
            rs(with("iat", json!(now().to_string())), json!({})).await,
        ),
        ("iss missing", rs(without("iss"), json!({})).await),
        (
            "an ID token (nonce) as a bearer token",
            rs(with("nonce", json!("n-0123456789")), json!({})).await,
        ),
        (
            "an ID token (at_hash) as a bearer token",
            rs(with("at_hash", json!("abc")), json!({})).await,
        ),
        (
            "iss of an unconfigured issuer",
            rs(with("iss", json!("http://127.0.0.2:1")), json!({})).await,
        ),
        (
            "iss with a trailing slash",
            rs(with("iss", json!(format!("{iss}/"))), json!({})).await,
        ),
        ("sub missing", rs(without("sub"), json!({})).await),
        (
            "tenant of no tenant",
            rs(with("tenant_id", json!("org-nonexist")), json!({})).await,
        ),
        (
            "alg none",
            w.idp.mint(good(), json!({}), "none", None).await,
        ),
        (
            "alg none, kid of a real key",
            w.idp
                .mint(good(), json!({"kid": rsa_kid.clone()}), "none", None)
                .await,
        ),
        (
            "HS256 keyed with the RSA public PEM",
            w.idp.mint(good(), json!({}), "HS256", None).await,
        ),
        (
            "ES256 signature, header says RS256",
            w.idp
                .mint(good(), json!({"alg": "RS256"}), "ES256", None)
                .await,
        ),
        (
            "attacker key in jwk",
            attacker_es256(json!({"typ": "JWT"}), &good(), true),
        ),
        (
            "attacker key in jwk, real kid",
            attacker_es256(json!({"kid": rsa_kid.clone()}), &good(), true),
        ),
        (
            "attacker key, real kid",
            attacker_es256(
                json!({"kid": kids(&w.idp, "es256-").await[0]}),
                &good(),
                false,
            ),
        ),
        (
            "jwk header on a provider-signed token",
            rs(
                good(),
                json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
            )
            .await,
        ),
        (
            "jku",
            rs(good(), json!({"jku": "http://127.0.0.1:9/jwks"})).await,
        ),
        (
            "x5u",
            rs(good(), json!({"x5u": "http://127.0.0.1:9/cert"})).await,
        ),
        (
            "x5c",
            rs(
                good(),
                json!({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
            )
            .await,
        ),
        ("crit", rs(good(), json!({"crit": ["exp"], "exp": 1})).await),
        ("typ JWE", rs(good(), json!({"typ": "JWE"})).await),
        ("garbage in three parts", "abc.def.ghi".to_string()),
        ("empty parts", "..".to_string()),
    ];
    // The signature altered: one character in its middle changed.
    let mut parts: Vec<String> = ok.split('.').map(str::to_string).collect();
    let mid = parts[2].len() / 2;
    let flipped = if &parts[2][mid..=mid] == "A" {
        "B"
    } else {
        "A"
    };
    parts[2].replace_range(mid..=mid, flipped);
    table.push(("signature altered", parts.join(".")));
    // The payload altered after signing: roles raised to admin.
    let parts: Vec<&str> = ok.split('.').collect();
    let mut payload = decode_part(parts[1]);
    payload["roles"] = json!(["admin"]);
    table.push((
        "payload altered (roles admin)",
        format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2]),
    ));
    // The signature of another token on these claims.
    let other = rs(good(), json!({})).await;
    table.push((
        "signature of another token",
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            other.split('.').nth(2).unwrap()
        ),
    ));

    for (what, token) in &table {
        assert_refused(&w, &costs(&w.tenant), token, what).await;
    }
    // After all that, the good token still works.
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &ok).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_audited_as_access_denied() {
    let w = world("", "", "").await;
    let c = claims(&w.idp.issuer, "wrong-audience", &w.tenant, &["viewer"]);
    let token = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, headers, body) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
    assert_eq!(status, 401, "{body}");
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let records = audit_events(&w.cg, "security.access_denied");
        if let Some(r) = records
            .iter()
            .find(|r| r["request_id"] == request_id.as_str())
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no access_denied record for {request_id}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = record.to_string();
    assert!(text.contains("invalid_token"), "{record:#}");
    assert!(text.contains(&costs(&w.tenant)), "{record:#}");
    assert!(
        !text.contains(&token),
        "the token is in the audit log: {record:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kid_flood_costs_the_provider_at_most_one_jwks_fetch() {
    // A short cooldown so the flood does trigger its one refetch.
    let cooldown = Duration::from_secs(2);
    let w = world(
        "jwks_ttl = \"1h\"\njwks_refetch_cooldown = \"2s\"\ntoken_cache_capacity = 0\n",
        "",
        "",
    )
    .await;
    let good = w
        .idp
        .mint(
            claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]),
            json!({}),
            "RS256",
            None,
        )
        .await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &good).await;
    assert_eq!(status, 200, "{body}");
    // 200 tokens, each naming a key id the provider never had.
    let mut minting = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let c = claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
        let kid = uuid::Uuid::new_v4().to_string();
        let (issuer, body) = (
            w.idp.issuer.clone(),
            json!({"claims": c, "header": {"kid": kid}, "alg": "RS256"}),
        );
        minting.spawn(async move {
            let (status, _, text) = send(
                "POST",
                &format!("{issuer}/__test/mint"),
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await;
            assert!(status.is_success(), "{text}");
            serde_json::from_str::<Value>(&text).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        });
    }
    let tokens: Vec<String> = minting.join_all().await;
    // Past the cooldown since the start-up fetch: the first unknown kid may refetch.
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    let before = jwks_fetches(&w.idp).await;
    let seen_before = w.up.count();
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for token in tokens {
        let url = w.cg.url(&costs(&w.tenant));
        flood.spawn(async move {
            let (status, _, body) = send(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                String::new(),
            )
            .await;
            (status, body)
        });
    }
    let answers = flood.join_all().await;
    let took = started.elapsed();
    let after = jwks_fetches(&w.idp).await;
    for (status, body) in &answers {
        assert_eq!(*status, 401, "{body}");
        assert_eq!(error_code(body), "invalid_token", "{body}");
    }
    assert_eq!(w.up.count(), seen_before);
    assert!(
        took < cooldown,
        "the flood took {took:?}, longer than the cooldown: inconclusive"
    );
    assert_eq!(
        after - before,
        1,
        "JWKS fetches during a 200-token unknown-kid flood"
    );
    // A second flood inside the cooldown costs nothing; good tokens still pass.
    for _ in 0..20 {
        let c = claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
        let kid = uuid::Uuid::new_v4().to_string();
        let token = w.idp.mint(c, json!({"kid": kid}), "RS256", None).await;
        let (status, _, _) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        jwks_fetches(&w.idp).await,
        after,
        "a refetch inside the cooldown"
    );
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &good).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_keys_are_picked_up_with_one_refetch_and_retired_keys_stop_verifying() {
    let ttl = Duration::from_secs(2);
    let w = world(
        "jwks_ttl = \"2s\"\njwks_refetch_cooldown = \"1s\"\ntoken_cache_capacity = 0\n",
        "",
        "",
    )
    .await;
    let fresh = || claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
    let old_kid = kids(&w.idp, "rs256-").await[0].clone();
    let old = w.idp.mint(fresh(), json!({}), "RS256", None).await;
    assert_eq!(
        decode_part(old.split('.').next().unwrap())["kid"],
        old_kid.as_str()
    );
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &old).await;
    assert_eq!(status, 200, "{body}");

    // Rotation: the new key signs from now on.
    let new_kid = w.idp.post("/__test/rotate", json!({"alg": "RS256"})).await["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_kid, old_kid);
    let new = w.idp.mint(fresh(), json!({}), "RS256", None).await;
    assert_eq!(
        decode_part(new.split('.').next().unwrap())["kid"],
        new_kid.as_str()
    );
    // Mint the old-kid token now: once retired, the provider cannot sign with it.
    let late_old = w
        .idp
        .mint(fresh(), json!({}), "RS256", Some(&old_kid))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refetch cooldown
    let before = jwks_fetches(&w.idp).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &new).await;
    assert_eq!(status, 200, "new key: {body}");
    assert_eq!(
        jwks_fetches(&w.idp).await - before,
        1,
        "refetches for the new key"
    );
    // Both keys are published: the old one still verifies.
    let old_again = w
        .idp
        .mint(fresh(), json!({}), "RS256", Some(&old_kid))
        .await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &old_again).await;
    assert_eq!(status, 200, "old key while published: {body}");

    // Retirement: after the key set's TTL, the old key no longer verifies.
    let left = w.idp.post("/__test/retire", json!({"kid": old_kid})).await;
    assert!(!left.to_string().contains(&old_kid), "{left}");
    let retired_at = Instant::now();
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert!(retired_at.elapsed() > ttl);
    let before = jwks_fetches(&w.idp).await;
    let seen = w.up.count();
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &late_old).await;
    assert_eq!(status, 401, "retired key: {body}");
    assert_eq!(error_code(&body), "invalid_token");
    assert_eq!(w.up.count(), seen);
    assert_eq!(
        jwks_fetches(&w.idp).await - before,
        1,
        "refetches for the retired key"
    );
    // Tokens of the new key, seen or not, still pass.
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &new).await;
    assert_eq!(status, 200, "{body}");
    let newer = w.idp.mint(fresh(), json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &newer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-auth-method"], "jwt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_own_provider_speaks_for_that_tenant_only() {
    // Three tenants: A and B each with their own provider (own issuer), C
    // served by a shared multi-tenant provider.
    let setup = Setup::new(&["enterprise", "enterprise", "enterprise"]);
    let t = &setup.tenants;
    let (ta, tb, tc) = (t[0].clone(), t[1].clone(), t[2].clone());
    let port = setup.port;
    let start =
        |id: &str| Idp::start(&json!({"clients": [client(id, None, "RS256", port)], "users": {}}));
    let (ia, ib, is) = (start("cg-a"), start("cg-b"), start("cg-shared"));
    assert!(ia.issuer != ib.issuer && ib.issuer != is.issuer);
    let pinned = |t: &str| {
        format!("tenant = \"{t}\"\ntenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\n")
    };
    let toml = format!(
        "{NO_AUTH_THROTTLE}[sso]\ntoken_cache_capacity = 0\n{}{}{}",
        provider_toml("a", &ia.issuer, "cg-a", None, port, &pinned(&ta)),
        provider_toml("b", &ib.issuer, "cg-b", None, port, &pinned(&tb)),
        provider_toml(
            "shared",
            &is.issuer,
            "cg-shared",
            None,
            port,
            "tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\n"
        ),
    );
    let w = setup.start(ia, &toml).await;
    let ia = &w.idp;
    let no_tenant = |iss: &str, aud: &str| {
        let mut c = claims(iss, aud, "", &["viewer"]);
        c.as_object_mut().unwrap().remove("tenant_id");
        c
    };

    // A's provider, no tenant claim: tenant A.
    let a_plain = token(no_tenant(&ia.issuer, "cg-a"), ia).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&ta), &a_plain).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-tenant-id"], ta.as_str());
    // ... on B's routes: tenant_mismatch.
    let (status, _, body) = call(&w.cg, "GET", &costs(&tb), &a_plain).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "tenant_mismatch"),
        "{body}"
    );
    // A's provider naming tenant B: refused outright.
    let a_says_b = token(claims(&ia.issuer, "cg-a", &tb, &["viewer"]), ia).await;
    assert_refused(&w, &costs(&tb), &a_says_b, "A's provider naming tenant B").await;
    assert_refused(
        &w,
        &costs(&ta),
        &a_says_b,
        "A's provider naming tenant B, on A",
    )
    .await;
    // B's own tokens work for B only.
    let b_own = token(claims(&ib.issuer, "cg-b", &tb, &["viewer"]), &ib).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&tb), &b_own).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-tenant-id"], tb.as_str());
    let (status, _, body) = call(&w.cg, "GET", &costs(&ta), &b_own).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "tenant_mismatch"),
        "{body}"
    );
    // B's provider signs a token claiming A's issuer (and A's audience): refused.
    for aud in ["cg-a", "cg-b"] {
        let forged = token(claims(&ia.issuer, aud, &ta, &["viewer"]), &ib).await;
        assert_refused(
            &w,
            &costs(&ta),
            &forged,
            &format!("B-signed, iss A, aud {aud}"),
        )
        .await;
        let forged = token(no_tenant(&ia.issuer, aud), &ib).await;
        assert_refused(
            &w,
            &costs(&ta),
            &forged,
            &format!("B-signed, iss A, no tenant, aud {aud}"),
        )
        .await;
    }
    // B's issuer with A's audience: refused.
    let cross_aud = token(claims(&ib.issuer, "cg-a", &tb, &["viewer"]), &ib).await;
    assert_refused(&w, &costs(&tb), &cross_aud, "B's issuer, A's audience").await;
    // The shared provider serves C, but not A or B, which have their own.
    let shared_c = token(claims(&is.issuer, "cg-shared", &tc, &["viewer"]), &is).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&tc), &shared_c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-tenant-id"], tc.as_str());
    for t in [&ta, &tb] {
        let shared = token(claims(&is.issuer, "cg-shared", t, &["viewer"]), &is).await;
        assert_refused(
            &w,
            &costs(t),
            &shared,
            "the shared provider naming a tenant with its own",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_is_accepted_only_from_the_provider_configured_with_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "an-hs256-shared-secret-of-more-than-32-bytes";
    let file = secret_file(dir.path(), "hs.secret", secret);
    let w = world("token_cache_capacity = 0\n", "", &hs_provider(&file)).await;
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let hs_claims = || claims(&w.idp.issuer, "cg-hs", &w.tenant, &["viewer"]);
    // With the configured secret: accepted, as the user.
    let good = hs256(&header, &hs_claims(), secret.as_bytes());
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &good).await;
    assert_eq!(status, 200, "{body}");
    let h = w.up.last().headers;
    assert_eq!(h["x-costops-auth-method"], "jwt");
    assert_eq!(h["x-costops-user-id"], "alice");
    assert_eq!(h["x-costops-tenant-id"], w.tenant.as_str());
    // Another secret, or the provider's RSA public key as the secret: refused.
    let wrong = hs256(
        &header,
        &hs_claims(),
        b"another-secret-of-more-than-32-bytes!!",
    );
    assert_refused(&w, &costs(&w.tenant), &wrong, "HS256 with another secret").await;
    let pem = w.idp.mint(hs_claims(), json!({}), "HS256", None).await;
    assert_refused(
        &w,
        &costs(&w.tenant),
        &pem,
        "HS256 keyed with the RSA public PEM",
    )
    .await;
    // The RS256 provider of the same issuer takes no HS256, even with the secret.
    let rs_aud = hs256(
        &header,
        &claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]),
        secret.as_bytes(),
    );
    assert_refused(
        &w,
        &costs(&w.tenant),
        &rs_aud,
        "HS256 for the RS256-only provider",
    )
    .await;
    // The HS256-only provider takes no RS256 token: its algorithms are pinned.
    let rs = w.idp.mint(hs_claims(), json!({}), "RS256", None).await;
    assert_refused(
        &w,
        &costs(&w.tenant),
        &rs,
        "RS256 for the HS256-only provider",
    )
    .await;
    // Still the right secret, but expired: refused.
    let mut c = hs_claims();
    c["exp"] = json!(now() - 3600);
    let expired = hs256(&header, &c, secret.as_bytes());
    assert_refused(&w, &costs(&w.tenant), &expired, "expired HS256").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn system_admin_from_a_token_needs_a_provider_allowed_to_grant_it() {
    let more = "[[sso.oidc]]\nname = \"ops\"\nissuer = \"{issuer}\"\nclient_id = \"cg-ops\"\n\
                redirect_url = \"http://127.0.0.1:{port}/auth/callback\"\n\
                tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\nallow_system_admin = true\n";
    let w = world("", "", more).await;
    // corp may not grant it: the role is dropped.
    let c = claims(&w.idp.issuer, "cg", &w.tenant, &["system_admin", "viewer"]);
    let token = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "viewer");
    let before = w.up.count();
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.other), &token).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "tenant_mismatch"),
        "{body}"
    );
    let c = claims(&w.idp.issuer, "cg", &w.tenant, &["system_admin"]);
    let only = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &only).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "forbidden"),
        "{body}"
    );
    assert_eq!(w.up.count(), before);
    // ops may: the same claims cross tenants.
    let c = claims(&w.idp.issuer, "cg-ops", &w.tenant, &["system_admin"]);
    let admin = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.other), &admin).await;
    assert_eq!(status, 200, "{body}");
    let h = w.up.last().headers;
    assert_eq!(h["x-costops-roles"], "system_admin");
    assert_eq!(h["x-costops-tenant-id"], w.tenant.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_stops_working_once_its_key_is_retired() {
    // The token cache on (the default), a short key set TTL.
    let w = world(
        "jwks_ttl = \"2s\"\njwks_refetch_cooldown = \"1s\"\n",
        "",
        "",
    )
    .await;
    let fresh = || claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
    let old_kid = kids(&w.idp, "rs256-").await[0].clone();
    let old = w.idp.mint(fresh(), json!({}), "RS256", None).await;
    for _ in 0..2 {
        let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &old).await;
        assert_eq!(status, 200, "{body}");
    }
    w.idp.post("/__test/rotate", json!({"alg": "RS256"})).await;
    w.idp.post("/__test/retire", json!({"kid": old_kid})).await;
    tokio::time::sleep(Duration::from_millis(2300)).await; // past the key set's TTL
    let before = jwks_fetches(&w.idp).await;
    let new = w.idp.mint(fresh(), json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &new).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks_fetches(&w.idp).await - before, 1);
    // The key set no longer has the old key: its cached token is refused too.
    assert_refused(&w, &costs(&w.tenant), &old, "cached token of a retired key").await;
}

/// Time claims at the ends of the integer range, validly signed (HS256
/// with the configured secret, so the test can sign what it likes).
#[tokio::test(flavor = "multi_thread")]
async fn extreme_time_claims_are_refused_not_a_dropped_connection() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "an-hs256-shared-secret-of-more-than-32-bytes";
    let file = secret_file(dir.path(), "hs.secret", secret);
    let w = world("token_cache_capacity = 0\n", "", &hs_provider(&file)).await;
    let header = json!({"alg": "HS256", "typ": "JWT"});
    for (name, v) in [
        ("exp", json!(i64::MAX)),
        ("exp", json!(u64::MAX)),
        ("iat", json!(i64::MIN)),
        ("nbf", json!(i64::MIN)),
    ] {
        let mut c = claims(&w.idp.issuer, "cg-hs", &w.tenant, &["viewer"]);
        c[name] = v.clone();
        let token = hs256(&header, &c, secret.as_bytes());
        let req = http::Request::get(w.cg.url(&costs(&w.tenant)))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = support::client().request(req).await;
        let status = resp
            .as_ref()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("{name} = {v}: no response ({e:?})"));
        assert_eq!(status, 401, "{name} = {v}");
    }
    assert!(!w.cg.logs().contains("panicked"), "the proxy panicked");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_apis_user_is_authoritative_over_token_roles() {
    // A policy that also has a role granting everything under another name.
    let policy = tempfile::tempdir().unwrap();
    let dir = support::test_policy(policy.path());
    std::fs::write(
        dir.join("zz-superuser.toml"),
        "[roles.superuser]\ndescription = \"everything\"\npermissions = [\"*\"]\n",
    )
    .unwrap();
    let w = world(&support::policy_table(&dir), "", "").await;
    let export = format!("/v1/tenants/{}/costs/export", w.tenant);
    let c = claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
    let token = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &export, &token).await;
    assert_eq!(status, 403, "a viewer cannot export: {body}");

    // The admin API assigns alice `analyst`: the same token now exports.
    let user = format!("/admin/v1/tenants/{}/users/alice", w.tenant);
    let (status, body) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["analyst"]})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = call(&w.cg, "GET", &export, &token).await;
    assert_eq!(status, 200, "admin-assigned roles apply: {body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "analyst");

    // Disabled: the token stops working at once.
    let (status, body) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["analyst"], "disabled": true})),
    );
    assert_eq!(status, 200, "{body}");
    let before = w.up.count();
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (401, "user_disabled"),
        "{body}"
    );
    // Enabled again, then deleted: deleted users stay out, with old and
    // new tokens alike.
    let (status, _) = w.cg.admin(
        "PUT",
        &user,
        Some(json!({"email": "alice@acme.example", "roles": ["viewer"]})),
    );
    assert_eq!(status, 200);
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &token).await;
    assert_eq!(status, 200, "{body}");
    let before_delete = w.up.count();
    let (status, body) = w.cg.admin("DELETE", &user, None);
    assert_eq!(status, 200, "{body}");
    let c = claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
    let fresh = w.idp.mint(c, json!({}), "RS256", None).await;
    for t in [&token, &fresh] {
        let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), t).await;
        assert_eq!(
            (status.as_u16(), error_code(&body).as_str()),
            (401, "user_disabled"),
            "{body}"
        );
    }
    assert_eq!(w.up.count(), before_delete);
    assert!(before < before_delete);
    let (_, users) = w.cg.admin(
        "GET",
        &format!("/admin/v1/tenants/{}/users", w.tenant),
        None,
    );
    assert_eq!(users["users"], json!([]), "a deleted user is not listed");

    // A role resolving to system_admin under another name is dropped like
    // system_admin itself (corp may not grant it).
    let mut c = claims(&w.idp.issuer, "cg", &w.tenant, &["superuser", "viewer"]);
    c["sub"] = json!("bob");
    let bob = w.idp.mint(c, json!({}), "RS256", None).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.other), &bob).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (403, "tenant_mismatch"),
        "{body}"
    );
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &bob).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.up.last().headers["x-costops-roles"], "viewer");
}

/// Issue 15 §4a: behind an ingress every client shares one address. Once it
/// is blocked for bad tokens, a token this instance already verified (in
/// the verified-token cache) still passes; a token it has not seen waits
/// out the block, valid or not, without a key-set fetch or a verification.
#[tokio::test(flavor = "multi_thread")]
async fn a_verified_cached_token_passes_a_blocked_source() {
    let w = world_throttled("[rate_limit]\nfailed_auth_per_minute = 3\n", "", "", "").await;
    let fresh = || claims(&w.idp.issuer, "cg", &w.tenant, &["viewer"]);
    let known = token(fresh(), &w.idp).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &known).await;
    assert_eq!(status, 200, "verified and cached: {body}");
    let forged = attacker_es256(json!({"kid": "nope"}), &fresh(), true);
    for i in 0..3 {
        let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &forged).await;
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &forged).await;
    assert_eq!(status, 429, "the address is blocked: {body}");
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &known).await;
    assert_eq!(status, 200, "a cached verified token passes: {body}");
    let unseen = token(fresh(), &w.idp).await;
    let (status, _, body) = call(&w.cg, "GET", &costs(&w.tenant), &unseen).await;
    assert_eq!(status, 429, "a token not in the cache waits: {body}");
    assert_eq!(error_code(&body), "rate_limited");
    assert_eq!(w.up.count(), 2);
}
