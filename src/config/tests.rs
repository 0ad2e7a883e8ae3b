use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

#[test]
fn empty_file_is_the_defaults() {
    let c = parse("", "t.toml", &Env::default()).unwrap();
    assert_eq!(c.proxy.listen, "0.0.0.0:8080");
    assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
}

#[test]
fn env_overrides_file_with_typed_values() {
    let c = parse(
        "[proxy]\nlisten = \"127.0.0.1:1\"\n",
        "t.toml",
        &env(&[
            ("COSTGUARD_PROXY_LISTEN", "127.0.0.1:2"),
            ("COSTGUARD_LIMITS_MAX_BODY_BYTES", "42"),
            ("COSTGUARD_LOG_ACCESS_LOG", "false"),
            (
                "COSTGUARD_PROXY_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.0.0/16",
            ),
            ("COSTGUARD_CONFIG", "ignored.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(c.proxy.listen, "127.0.0.1:2");
    assert_eq!(c.limits.max_body_bytes, 42);
    assert!(!c.log.access_log);
    assert_eq!(c.proxy.trusted_proxies, ["10.0.0.0/8", "192.168.0.0/16"]);
}

#[test]
fn every_unknown_and_mistyped_key_is_reported() {
    let text = r#"
[proxy]
lisen = "x"
upstream_connect_timeout = "soon"
[limits]
max_body_bytes = "big"
max_header_count = 10
[nonsense]
a = 1
"#;
    let err = parse(
        text,
        "t.toml",
        &env(&[("COSTGUARD_LIMITS_MAX_HEADER_BYTES", "lots")]),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "proxy.lisen",
        "proxy.upstream_connect_timeout",
        "limits.max_body_bytes",
        "nonsense",
        "COSTGUARD_LIMITS_MAX_HEADER_BYTES",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    assert!(!keys.contains(&"limits.max_header_count"));
}

#[test]
fn unknown_env_setting_is_an_error() {
    let err = parse("", "t.toml", &env(&[("COSTGUARD_PROXY_LISTN", "x")])).unwrap_err();
    assert_eq!(
        err.problems[0].key,
        "proxy.listn (from COSTGUARD_PROXY_LISTN)"
    );
    let err = parse("", "t.toml", &env(&[("COSTGUARD_NOPE_X", "x")])).unwrap_err();
    assert_eq!(err.problems[0].key, "COSTGUARD_NOPE_X");
}

#[test]
fn syntax_error_names_the_line() {
    let err = parse("[proxy]\nlisten = \n", "t.toml", &Env::default()).unwrap_err();
    assert!(err.problems[0].message.contains("line 2"), "{}", err);
}

#[test]
fn validation_collects_every_problem() {
    let text = r#"
[proxy]
listen = "nowhere"
upstream = "ftp://x/y"
tls_cert_file = "/nonexistent/cert.pem"
trusted_proxies = ["10.0.0.0/33"]
strip_headers = ["bad header"]
[limits]
max_header_count = 0
[store]
backend = "etcd"
[log]
format = "xml"
"#;
    let file = parse(text, "t.toml", &Env::default()).unwrap();
    let err = validate::validate(file).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "proxy.listen",
        "proxy.upstream",
        "proxy.tls_key_file",
        "proxy.trusted_proxies[0]",
        "proxy.strip_headers[0]",
        "limits.max_header_count",
        "store.backend",
        "log.format",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
}

#[test]
fn admin_token_is_hashed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "a-long-enough-admin-token\n").unwrap();
    let text = format!("[admin]\ntoken_file = \"{}\"\n", file.display());
    let config = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap();
    assert_eq!(
        config.admin.token_hash,
        Some(crate::authn::api_key::hash("a-long-enough-admin-token")),
        "trailing newline is trimmed"
    );
    for (text, key) in [
        ("[admin]\ntoken = \"short\"\n".to_string(), "admin.token"),
        (
            "[admin]\ntoken = \"costops_0123456789abcdef0123456789abcdef\"\n".to_string(),
            "admin.token",
        ),
        (
            format!(
                "[admin]\ntoken = \"a-long-enough-admin-token\"\ntoken_file = \"{}\"\n",
                file.display()
            ),
            "admin.token",
        ),
        (
            "[admin]\ntoken_file = \"/nonexistent/token\"\n".to_string(),
            "admin.token_file",
        ),
    ] {
        let err = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap_err();
        assert_eq!(err.problems[0].key, key, "{text}");
    }
    let env = env(&[("COSTGUARD_ADMIN_TOKEN", "from-the-environment-123")]);
    let config = validate::validate(parse("", "t.toml", &env).unwrap()).unwrap();
    assert!(config.admin.token_hash.is_some());
}

#[test]
fn saml_providers_are_checked_key_by_key() {
    // An incomplete table names every missing piece.
    let text = "[[sso.saml]]\nname = \"corp\"\nidp_entity_id = \"https://idp.example.com\"\n";
    let err = validate::validate(parse(text, "t.toml", &Env::default()).unwrap()).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "sso.saml[0].idp_sso_url",
        "sso.saml[0].idp_cert_file",
        "sso.saml[0].sp_entity_id",
        "sso.saml[0].acs_url",
        "sso.saml[0].tenant",
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    // design.md's example, with a real certificate.
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["idp.example.com".into()]).unwrap();
    let pem = dir.path().join("saml-corp.pem");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let text = format!(
        r#"[[sso.saml]]
name = "corp-saml"
idp_entity_id = "https://idp.example.com/saml"
idp_sso_url = "https://idp.example.com/saml/sso"
idp_cert_file = "{}"
sp_entity_id = "https://costs.example.com/auth/saml/metadata"
acs_url = "https://costs.example.com/auth/saml/acs"
tenant_attribute = "tenant_id"
roles_attribute = "roles"
"#,
        pem.display()
    );
    let config = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let p = &config.sso.saml[0];
    assert_eq!(p.idp_certs.len(), 1);
    assert_eq!(p.name_id_format, crate::config::NAME_ID_EMAIL);
    assert!(p.require_signed_assertion && !p.allow_unsolicited);
    // A wrong ACS path, plain http off loopback, a file that is not a
    // certificate: each refused under its key.
    let bad = text.replace("/auth/saml/acs", "/saml/acs").replace(
        "https://idp.example.com/saml/sso",
        "http://idp.example.com/sso",
    );
    let err = validate::validate(parse(&bad, "t.toml", &Env::default()).unwrap()).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"sso.saml[0].acs_url"), "{keys:?}");
    assert!(keys.contains(&"sso.saml[0].idp_sso_url"), "{keys:?}");
    std::fs::write(&pem, "not a certificate").unwrap();
    let err = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("idp_cert_file"), "{err}");
}

#[test]
fn the_audit_log_lives_under_the_store_unless_told() {
    let text = "[audit]\ndir = \"./costguard-data/audit\"\n";
    let config = validate::validate(parse(text, "t.toml", &Env::default()).unwrap()).unwrap();
    assert_eq!(
        config.audit.dir,
        std::path::Path::new("./costguard-data/audit")
    );
    // Without a dir, the log goes under the store.
    let config = validate::validate(
        parse(
            "[store]\npath = \"/var/lib/cg\"\n",
            "t.toml",
            &Env::default(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config.audit.dir, std::path::Path::new("/var/lib/cg/audit"));
    assert_eq!(
        config.audit.hmac_key_file,
        std::path::Path::new("/var/lib/cg/audit-hmac.key")
    );
    assert!(
        validate::validate(FileConfig::default())
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn rate_limits_and_budget_are_validated() {
    let c = validate::validate(
        parse(
            "[rate_limit]\nfree = \"60/minute\"\nenterprise = \"unlimited\"\n[budget]\ncost_header = \"x-litellm-response-cost\"\n",
        "t.toml",
            &env(&[("COSTGUARD_RATE_LIMIT_STANDARD", "5/s")]),
        )
        .unwrap(),
    )
    .unwrap();
    let free = c
        .rate_limit
        .rate_for(None, &tenant(crate::model::Tier::Free))
        .unwrap();
    assert_eq!((free.limit.get(), free.period.as_secs()), (60, 60));
    let standard = c
        .rate_limit
        .rate_for(None, &tenant(crate::model::Tier::Standard))
        .unwrap();
    assert_eq!((standard.limit.get(), standard.period.as_secs()), (5, 1));
    assert!(
        c.rate_limit
            .rate_for(None, &tenant(crate::model::Tier::Enterprise))
            .is_none()
    );
    let own = c
        .rate_limit
        .rate_for(Some(7), &tenant(crate::model::Tier::Enterprise))
        .unwrap();
    assert_eq!(
        (own.limit.get(), own.period.as_secs()),
        (7, 60),
        "a key's own rate applies when the tier has none"
    );
    let mut overridden = tenant(crate::model::Tier::Free);
    overridden.limits.rate_limit_per_minute = Some(600);
    let rate = c.rate_limit.rate_for(None, &overridden).unwrap();
    assert_eq!(
        (rate.limit.get(), rate.period.as_secs()),
        (600, 60),
        "a system admin's tenant rate replaces the tier's"
    );
    assert!(
        !crate::rate_limit::Rate::per_minute(std::num::NonZeroU32::new(61).unwrap()).at_most(&free),
        "61/minute is more than the free tier's 60/minute"
    );
    assert_eq!(c.budget.cost_header.unwrap(), "x-litellm-response-cost");

    let err = validate::validate(
        parse(
            "[rate_limit]\nfree = \"lots\"\nstandard = \"0/minute\"\nburst_percent = 0\nfailed_auth_per_minute = 0\n[budget]\ncost_header = \"bad header\"\n",
            "t.toml",
            &Env::default(),
        )
        .unwrap(),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "rate_limit.free",
        "rate_limit.standard",
        "rate_limit.burst_percent",
        "rate_limit.failed_auth_per_minute",
        "budget.cost_header",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
}

#[test]
fn providers_of_one_issuer_cannot_take_each_others_tokens() {
    let provider = |name: &str, client: &str, extra: &str| {
        format!(
            "[[sso.oidc]]\nname = \"{name}\"\nissuer = \"https://idp.example.com\"\nclient_id = \"{client}\"\n\
             redirect_url = \"https://costs.example.com/auth/callback\"\ntenant_claim = \"tenant_id\"\n{extra}"
        )
    };
    let check = |text: String| validate::validate(parse(&text, "t.toml", &Env::default()).unwrap());
    assert!(check(provider("a", "one", "") + &provider("b", "two", "")).is_ok());
    let same_client = check(provider("a", "one", "") + &provider("b", "one", "")).unwrap_err();
    assert!(
        same_client.to_string().contains("same client"),
        "{same_client}"
    );
    let shared_aud = check(
        provider("a", "one", "audiences = [\"api\"]\n")
            + &provider("b", "two", "audiences = [\"api\"]\n"),
    )
    .unwrap_err();
    assert!(shared_aud.to_string().contains("audience"), "{shared_aud}");
    // Plain http only to loopback; the callback path is fixed; HS256 needs its secret.
    let bad = check(
        provider("a", "one", "").replace("https://idp.example.com", "http://idp.example.com"),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("sso.oidc[0].issuer"), "{bad}");
    let bad = check(provider("a", "one", "").replace("/auth/callback", "/cb")).unwrap_err();
    assert!(bad.to_string().contains("/auth/callback"), "{bad}");
    let bad = check(provider("a", "one", "algorithms = [\"HS256\"]\n")).unwrap_err();
    assert!(bad.to_string().contains("hs256_secret_file"), "{bad}");
    let bad = check(provider(
        "a",
        "one",
        "tenant = \"org-aaaaaaaa\"\nallow_system_admin = true\n",
    ))
    .unwrap_err();
    assert!(bad.to_string().contains("system_admin"), "{bad}");
}

#[test]
fn both_kinds_of_provider_share_one_identity_mapping_under_their_own_keys() {
    let oidc = "[[sso.oidc]]\nname = \"corp\"\nissuer = \"https://idp.example.com\"\n\
                client_id = \"cg\"\nredirect_url = \"https://costs.example.com/auth/callback\"\n";
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["idp.example.com".into()]).unwrap();
    let pem = dir.path().join("idp.pem");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let saml = format!(
        "[[sso.saml]]\nname = \"corp-saml\"\nidp_entity_id = \"https://idp.example.com/saml\"\n\
         idp_sso_url = \"https://idp.example.com/saml/sso\"\nidp_cert_file = \"{}\"\n\
         sp_entity_id = \"https://costs.example.com/sp\"\nacs_url = \"https://costs.example.com/auth/saml/acs\"\n",
        pem.display()
    );
    let text = format!(
        "{oidc}tenant_claim = \" tenant_id \"\nemail_domains = {{ \"ACME.example\" = \"org-aaaaaaaa\" }}\n\
         roles_claim = \"roles\"\ngroups_claim = \"\"\nrole_source = \"both\"\n\
         {saml}tenant = \"org-bbbbbbbb\"\nroles_attribute = \"roles\"\nemail_attribute = \"mail\"\n"
    );
    let config = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap();
    let o = &config.sso.oidc[0].mapping;
    assert_eq!(o.tenant, None);
    assert_eq!(o.sources.tenant.as_deref(), Some("tenant_id"));
    assert_eq!(o.sources.roles.as_deref(), Some("roles"));
    assert_eq!(o.sources.groups, None, "blank: unset");
    assert_eq!(
        (o.sources.email.as_str(), o.sources.user.as_str()),
        ("email", "sub")
    );
    assert_eq!(o.email_domains["acme.example"], "org-aaaaaaaa");
    assert_eq!(o.role_source(), RoleSource::Both);
    let s = &config.sso.saml[0].mapping;
    assert_eq!(s.tenant.as_deref(), Some("org-bbbbbbbb"));
    assert_eq!(s.sources.tenant, None);
    assert_eq!(
        (s.sources.email.as_str(), s.sources.user.as_str()),
        ("mail", NAME_ID)
    );
    assert_eq!(s.role_source(), RoleSource::Admin);

    // Each kind takes its own keys only, and nothing unknown.
    for (text, section, field) in [
        (
            format!("{oidc}tenant_attribute = \"t\"\n"),
            "sso.oidc",
            "tenant_attribute",
        ),
        (
            format!("{oidc}tenant_claim = \"t\"\nrole = \"x\"\n"),
            "sso.oidc",
            "role",
        ),
        (
            format!("{saml}tenant_claim = \"t\"\n"),
            "sso.saml",
            "tenant_claim",
        ),
        (
            format!("{saml}user_claim = \"uid\"\n"),
            "sso.saml",
            "user_claim",
        ),
    ] {
        let err = parse(&text, "t.toml", &Env::default()).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, section, "{err}");
        assert!(
            err.problems[0]
                .message
                .contains(&format!("unknown field `{field}`")),
            "{err}"
        );
    }
    // Validation names the kind's key.
    let err = validate::validate(parse(&saml, "t.toml", &Env::default()).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("tenant_attribute or email_domains"),
        "{err}"
    );
    let err = validate::validate(
        parse(
            &format!("{oidc}tenant_claim = \"t\"\nrole_source = \" nobody \"\n"),
            "t.toml",
            &Env::default(),
        )
        .unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.problems[0].key, "sso.oidc[0].role_source", "{err}");
    assert!(
        err.problems[0].message.starts_with("\"nobody\": expected"),
        "{err}"
    );
}

fn tenant(tier: crate::model::Tier) -> crate::model::Tenant {
    crate::store::conformance::sample_tenant(tier)
}

#[test]
fn shared_mode_takes_urls_from_the_environment_or_files_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, "redis://:s3cret@cache:6379/0\n").unwrap();
    let file = parse(
        "",
        "t.toml",
        &env(&[
            ("COSTGUARD_STORE_BACKEND", "postgres"),
            (
                "COSTGUARD_STORE_URL",
                "postgres://cg:hunter2@db:5432/costguard",
            ),
            ("COSTGUARD_STORE_SCHEMA", "tenant_a"),
            ("COSTGUARD_RATE_LIMIT_BACKEND", "redis"),
            (
                "COSTGUARD_RATE_LIMIT_REDIS_URL_FILE",
                url_file.to_str().unwrap(),
            ),
            ("COSTGUARD_RATE_LIMIT_REDIS_MODE", "leased"),
            ("COSTGUARD_RATE_LIMIT_REDIS_DOWN", "refuse"),
        ]),
    )
    .unwrap();
    let config = validate::validate(file).unwrap();
    let pg = config.store.postgres.as_ref().unwrap();
    assert_eq!(pg.url, "postgres://cg:hunter2@db:5432/costguard");
    assert_eq!(pg.schema, "tenant_a");
    let redis = config.rate_limit.redis.as_ref().unwrap();
    assert_eq!(redis.url, "redis://:s3cret@cache:6379/0", "trimmed");
    assert_eq!(redis.mode, RedisMode::Leased);
    assert_eq!(redis.down, RedisDown::Refuse);
    let printed = format!("{config:?}");
    assert!(
        !printed.contains("hunter2") && !printed.contains("s3cret"),
        "{printed}"
    );
}

#[test]
fn shared_mode_problems_are_all_named() {
    let text = r#"
[store]
backend = "postgres"
schema = "Robert'); DROP TABLE students;--"
pool_size = 0
[rate_limit]
backend = "redis"
redis_url = "http://cache"
redis_mode = "sloppy"
redis_down = "shrug"
"#;
    let err = validate::validate(parse(text, "t.toml", &Env::default()).unwrap()).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in ["store.url", "rate_limit.redis_url"] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    // With a URL, the rest is checked too.
    let text = text
        .replace(
            "backend = \"postgres\"",
            "backend = \"postgres\"\nurl = \"postgres://db/x\"",
        )
        .replace("http://cache", "redis://cache");
    let err = validate::validate(parse(&text, "t.toml", &Env::default()).unwrap()).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "store.schema",
        "store.pool_size",
        "rate_limit.redis_mode",
        "rate_limit.redis_down",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    // Redis limits with one pod's embedded store are allowed (warned at
    // start: the durable counts stay in the pod).
    let config = validate::validate(
        parse(
            "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://cache\"\n",
            "t.toml",
            &Env::default(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(config.rate_limit.redis.is_some() && config.store.postgres.is_none());
}

#[test]
fn proxy_workers_default_to_the_usable_cpus_and_are_bounded() {
    let resolved =
        |text: &str, pairs: &[(&str, &str)]| from_file(parse(text, "t.toml", &env(pairs)).unwrap());
    assert_eq!(
        resolved("", &[]).unwrap().proxy.workers,
        crate::worker::available_cpus()
    );
    let c = resolved("", &[("COSTGUARD_PROXY_WORKERS", "3")]).unwrap();
    assert_eq!(c.proxy.workers, 3);
    let err = resolved("[proxy]\nworkers = 5000\n", &[]).unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.key == "proxy.workers"),
        "{err:?}"
    );
}
