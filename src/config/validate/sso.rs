//! `[sso]` and `[[sso.oidc]]` → [`SsoConfig`]: URLs parsed, secrets read
//! from their files, claim mapping checked, every problem collected.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::Checker;
use crate::config::file::{FileConfig, OidcSection};

/// `[sso]`, validated.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// Session cookie name.
    pub session_cookie: String,
    /// Absolute session lifetime.
    pub session_lifetime: Duration,
    /// Idle timeout.
    pub session_idle_timeout: Duration,
    /// Login cookie lifetime.
    pub login_timeout: Duration,
    /// Login cookie signing key file.
    pub cookie_key_file: PathBuf,
    /// Per-call timeout to identity providers.
    pub http_timeout: Duration,
    /// Response size bound.
    pub max_response_bytes: usize,
    /// Extra trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// Key set refetch period.
    pub jwks_ttl: Duration,
    /// Least time between unknown-kid refetches.
    pub jwks_refetch_cooldown: Duration,
    /// Leeway on time claims.
    pub clock_skew: Duration,
    /// Sessions cached in memory.
    pub session_cache_capacity: u64,
    /// Verified bearer tokens cached.
    pub token_cache_capacity: u64,
    /// The OpenID providers.
    pub oidc: Vec<OidcProviderConfig>,
}

/// One `[[sso.oidc]]`, validated.
#[derive(Clone)]
pub struct OidcProviderConfig {
    /// Unique name.
    pub name: String,
    /// The issuer, exactly as in `iss`.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret; `None`: public client.
    pub client_secret: Option<String>,
    /// Callback URL.
    pub redirect_url: String,
    /// After the provider's logout.
    pub post_logout_redirect_url: Option<String>,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// The one tenant of this provider.
    pub tenant: Option<String>,
    /// Claim with the tenant id.
    pub tenant_claim: Option<String>,
    /// Lower-case email domain → tenant.
    pub email_domains: BTreeMap<String, String>,
    /// Claim with role names.
    pub roles_claim: Option<String>,
    /// Claim with group names.
    pub groups_claim: Option<String>,
    /// Group → roles.
    pub group_roles: BTreeMap<String, Vec<String>>,
    /// Roles everyone gets.
    pub default_roles: Vec<String>,
    /// Claim with the email.
    pub email_claim: String,
    /// Claim that becomes the user id.
    pub user_claim: String,
    /// Accepted `aud` values of bearer JWTs.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// HS256 secret, when configured.
    pub hs256_secret: Option<Vec<u8>>,
    /// May grant `system_admin`.
    pub allow_system_admin: bool,
}

impl std::fmt::Debug for OidcProviderConfig {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProviderConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Role and claim names go into headers and policy lookups: keep them plain.
/// `https`, or `http` to a loopback host: the provider's URLs.
fn check_url(c: &mut Checker, key: &str, value: &str) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(url) if crate::sso::http::secure_url(&url) => Some(url),
        Ok(_) => {
            c.fail(
                key,
                format!("must be an https URL (http only on loopback), got {value:?}"),
            );
            None
        }
        Err(_) => {
            c.fail(key, format!("not a URL: {value:?}"));
            None
        }
    }
}

fn read_secret(c: &mut Checker, key: &str, path: &PathBuf) -> Option<String> {
    if path.as_os_str().is_empty() {
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Ok(_) => {
            c.fail(key, format!("{}: empty", path.display()));
            None
        }
        Err(e) => {
            c.fail(key, format!("{}: {e}", path.display()));
            None
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn provider(c: &mut Checker, i: usize, p: &OidcSection) -> OidcProviderConfig {
    let key = |k: &str| format!("sso.oidc[{i}].{k}");
    if !crate::sso::claims::is_plain_name(&p.name) {
        c.fail(key("name"), "must be 1-128 of [A-Za-z0-9_.:-]");
    }
    check_url(c, &key("issuer"), &p.issuer);
    if p.client_id.trim().is_empty() {
        c.fail(key("client_id"), "must be set");
    }
    if check_url(c, &key("redirect_url"), &p.redirect_url)
        .is_some_and(|u| u.path() != "/auth/callback")
    {
        c.fail(key("redirect_url"), "its path must be /auth/callback");
    }
    let post_logout = non_empty(&p.post_logout_redirect_url);
    if let Some(url) = &post_logout {
        check_url(c, &key("post_logout_redirect_url"), url);
    }
    let mut scopes: Vec<String> = if p.scopes.is_empty() {
        vec!["openid".into(), "email".into(), "profile".into()]
    } else {
        p.scopes.clone()
    };
    if !scopes.iter().any(|s| s == "openid") {
        c.fail(key("scopes"), "must include \"openid\"");
    }
    scopes.retain(|s| s != "openid");
    let tenant = non_empty(&p.tenant);
    let tenant_claim = non_empty(&p.tenant_claim);
    let email_domains: BTreeMap<String, String> = p
        .email_domains
        .iter()
        .map(|(d, t)| (d.trim().to_ascii_lowercase(), t.trim().to_string()))
        .collect();
    if tenant.is_none() && tenant_claim.is_none() && email_domains.is_empty() {
        c.fail(
            key("tenant"),
            "set tenant (one tenant), tenant_claim or email_domains: a login must name its tenant",
        );
    }
    for t in tenant.iter().chain(email_domains.values()) {
        if !crate::model::is_tenant_id(t) {
            c.fail(key("tenant"), format!("not a tenant id: {t:?}"));
        }
    }
    if let Some(t) = &tenant
        && email_domains.values().any(|d| d != t)
    {
        c.fail(
            key("email_domains"),
            "a provider pinned to one tenant cannot map domains to another",
        );
    }
    let all_roles = p
        .default_roles
        .iter()
        .chain(p.group_roles.values().flatten());
    for r in all_roles {
        if !crate::sso::claims::is_plain_name(r) {
            c.fail(key("group_roles"), format!("not a role name: {r:?}"));
        }
    }
    if p.allow_system_admin && tenant.is_some() {
        c.fail(
            key("allow_system_admin"),
            "a provider pinned to one tenant may not grant system_admin",
        );
    }
    let names = if p.algorithms.is_empty() {
        vec!["RS256".to_string(), "ES256".to_string()]
    } else {
        p.algorithms.clone()
    };
    let mut algorithms = Vec::new();
    for name in &names {
        match name.parse::<Algorithm>() {
            Ok(a) => algorithms.push(a),
            Err(_) => c.fail(key("algorithms"), format!("unknown algorithm {name:?}")),
        }
    }
    let hs256_secret =
        read_secret(c, &key("hs256_secret_file"), &p.hs256_secret_file).map(String::into_bytes);
    let symmetric = algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    match (symmetric, &hs256_secret) {
        (true, None) => c.fail(
            key("algorithms"),
            "HMAC algorithms need hs256_secret_file (a shared secret is never assumed)",
        ),
        (false, Some(_)) => c.fail(
            key("hs256_secret_file"),
            "set only with HS256 in algorithms",
        ),
        (true, Some(s)) if s.len() < 32 => {
            c.fail(key("hs256_secret_file"), "must hold at least 32 bytes")
        }
        _ => {}
    }
    if algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::HS384 | Algorithm::HS512))
    {
        c.fail(
            key("algorithms"),
            "of the HMAC algorithms only HS256 is supported",
        );
    }
    OidcProviderConfig {
        name: p.name.clone(),
        issuer: p.issuer.trim().to_string(),
        client_id: p.client_id.trim().to_string(),
        client_secret: read_secret(c, &key("client_secret_file"), &p.client_secret_file),
        redirect_url: p.redirect_url.trim().to_string(),
        post_logout_redirect_url: post_logout,
        scopes,
        tenant,
        tenant_claim,
        email_domains,
        roles_claim: non_empty(&p.roles_claim),
        groups_claim: non_empty(&p.groups_claim),
        group_roles: p.group_roles.clone(),
        default_roles: p.default_roles.clone(),
        email_claim: non_empty(&p.email_claim).unwrap_or_else(|| "email".into()),
        user_claim: non_empty(&p.user_claim).unwrap_or_else(|| "sub".into()),
        audiences: if p.audiences.is_empty() {
            vec![p.client_id.trim().to_string()]
        } else {
            p.audiences.clone()
        },
        algorithms,
        hs256_secret,
        allow_system_admin: p.allow_system_admin,
    }
}

/// Validates `[sso]`.
pub(super) fn validate(c: &mut Checker, file: &FileConfig) -> SsoConfig {
    let s = &file.sso;
    let cookie = s.session_cookie.trim();
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        c.fail("sso.session_cookie", "must be 1 or more of [A-Za-z0-9_-]");
    }
    let oidc: Vec<_> = s
        .oidc
        .iter()
        .enumerate()
        .map(|(i, p)| provider(c, i, p))
        .collect();
    let mut names = HashSet::new();
    for p in &oidc {
        if !names.insert(p.name.as_str()) {
            c.fail("sso.oidc", format!("two providers are named {:?}", p.name));
        }
    }
    // Providers of one issuer must not be able to take each other's
    // tokens: distinct clients, disjoint bearer audiences.
    for (i, a) in oidc.iter().enumerate() {
        for b in &oidc[i + 1..] {
            if a.issuer != b.issuer {
                continue;
            }
            if a.client_id == b.client_id {
                c.fail(
                    "sso.oidc",
                    format!(
                        "providers {:?} and {:?} are the same client of one issuer",
                        a.name, b.name
                    ),
                );
            }
            if let Some(aud) = a.audiences.iter().find(|x| b.audiences.contains(x)) {
                c.fail(
                    "sso.oidc",
                    format!(
                        "providers {:?} and {:?} of one issuer both accept audience {aud:?}",
                        a.name, b.name
                    ),
                );
            }
        }
    }
    // A tenant with its own provider is reached through it alone.
    for p in oidc.iter().filter(|p| p.tenant.is_none()) {
        for (domain, t) in &p.email_domains {
            if oidc.iter().any(|o| o.tenant.as_deref() == Some(t)) {
                c.fail(
                    format!("sso.oidc.{}.email_domains", p.name),
                    format!("{domain:?} maps to {t}, which has its own provider"),
                );
            }
        }
    }
    let mut domains = HashSet::new();
    for d in oidc.iter().flat_map(|p| p.email_domains.keys()) {
        if !domains.insert(d.as_str()) {
            c.fail(
                "sso.oidc",
                format!("email domain {d:?} is mapped by two providers"),
            );
        }
    }
    let lifetime = c.duration("sso.session_lifetime", s.session_lifetime);
    let idle = c.duration("sso.session_idle_timeout", s.session_idle_timeout);
    SsoConfig {
        session_cookie: cookie.to_string(),
        session_lifetime: lifetime,
        session_idle_timeout: idle.min(lifetime),
        login_timeout: c.duration("sso.login_timeout", s.login_timeout),
        cookie_key_file: if s.cookie_key_file.as_os_str().is_empty() {
            file.store.path.join("sso-cookie.key")
        } else {
            s.cookie_key_file.clone()
        },
        http_timeout: c.duration("sso.http_timeout", s.http_timeout),
        max_response_bytes: c.bounded(
            "sso.max_response_bytes",
            s.max_response_bytes,
            4096,
            64 << 20,
        ) as usize,
        ca_file: (!s.ca_file.as_os_str().is_empty()).then(|| s.ca_file.clone()),
        jwks_ttl: c.duration("sso.jwks_ttl", s.jwks_ttl),
        jwks_refetch_cooldown: c.duration("sso.jwks_refetch_cooldown", s.jwks_refetch_cooldown),
        clock_skew: if s.clock_skew > Duration::from_secs(600) {
            c.fail("sso.clock_skew", "must be at most 10m");
            s.clock_skew
        } else {
            s.clock_skew
        },
        session_cache_capacity: c.bounded(
            "sso.session_cache_capacity",
            s.session_cache_capacity,
            1,
            100_000_000,
        ),
        token_cache_capacity: c.bounded(
            "sso.token_cache_capacity",
            s.token_cache_capacity,
            0,
            100_000_000,
        ),
        oidc,
    }
}
