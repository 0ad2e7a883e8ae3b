//! `[sso]`, `[[sso.oidc]]` and `[[sso.saml]]` → [`SsoConfig`]: URLs
//! parsed, secrets and certificates read from their files, identity
//! mapping checked, every problem collected.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::Checker;
use crate::config::checks::{is_plain_name, secure_url};
use crate::config::file::{FileConfig, OidcSection, SamlSection};
use crate::config::identity::{IdentityMapping, RoleSource, SourceNames};

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
    /// Largest SAML response (XML bytes).
    pub saml_max_response_bytes: usize,
    /// The SAML identity providers.
    pub saml: Vec<SamlProviderConfig>,
    /// Things worth an operator's look that do not stop startup.
    pub warnings: Vec<String>,
}

/// One `[[sso.saml]]`, validated.
#[derive(Debug, Clone)]
pub struct SamlProviderConfig {
    /// Unique name.
    pub name: String,
    /// The IdP's entity id (`Issuer`).
    pub idp_entity_id: String,
    /// The IdP's SSO URL (HTTP-Redirect).
    pub idp_sso_url: String,
    /// Pinned signing certificates, DER.
    pub idp_certs: Vec<Vec<u8>>,
    /// costguard's entity id (the `Audience`).
    pub sp_entity_id: String,
    /// costguard's assertion consumer URL (`Recipient`, `Destination`).
    pub acs_url: String,
    /// NameID format.
    pub name_id_format: String,
    /// Tenant, roles, user id: the identity mapping, validated.
    pub mapping: IdentityMapping,
    /// IdP-initiated logins accepted.
    pub allow_unsolicited: bool,
    /// The Assertion itself must be signed.
    pub require_signed_assertion: bool,
    /// Leeway on validity times.
    pub clock_skew: Duration,
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
    /// Tenant, roles, user id: the identity mapping, validated.
    pub mapping: IdentityMapping,
    /// Accepted `aud` values of bearer JWTs.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// HS256 secret, when configured.
    pub hs256_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for OidcProviderConfig {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProviderConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("tenant", &self.mapping.tenant)
            .finish_non_exhaustive()
    }
}

/// `https`, or `http` to a loopback host: the provider's URLs.
fn check_url(c: &mut Checker, key: &str, value: &str) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(url) if secure_url(&url) => Some(url),
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

/// The identity mapping of either kind of provider, checked and made
/// ready for use: names trimmed (blank ones unset, the kind's defaults
/// filled in), email domains lower-case.
fn identity_mapping<N: SourceNames>(
    c: &mut Checker,
    key: &dyn Fn(&str) -> String,
    m: &IdentityMapping<N>,
) -> IdentityMapping {
    let tenant = m.tenant.as_deref().and_then(non_empty);
    let sources = m.sources.sources();
    let email_domains: BTreeMap<String, String> = m
        .email_domains
        .iter()
        .map(|(d, t)| (d.trim().to_ascii_lowercase(), t.trim().to_string()))
        .collect();
    if tenant.is_none() && sources.tenant.is_none() && email_domains.is_empty() {
        c.fail(
            key("tenant"),
            format!(
                "set tenant (one tenant), {} or email_domains: a login must name its tenant",
                N::TENANT_KEY
            ),
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
    for r in m
        .default_roles
        .iter()
        .chain(m.group_roles.values().flatten())
    {
        if !is_plain_name(r) {
            c.fail(key("group_roles"), format!("not a role name: {r:?}"));
        }
    }
    if m.allow_system_admin && tenant.is_some() {
        c.fail(
            key("allow_system_admin"),
            "a provider pinned to one tenant may not grant system_admin",
        );
    }
    if RoleSource::parse(&m.role_source).is_none() {
        c.fail(
            key("role_source"),
            format!(
                "{:?}: expected \"admin\", \"idp\" or \"both\"",
                m.role_source.trim()
            ),
        );
    }
    IdentityMapping {
        tenant,
        sources,
        email_domains,
        group_roles: m.group_roles.clone(),
        default_roles: m.default_roles.clone(),
        allow_system_admin: m.allow_system_admin,
        role_source: m.role_source.trim().to_string(),
    }
}

fn provider(c: &mut Checker, i: usize, p: &OidcSection) -> OidcProviderConfig {
    let key = |k: &str| format!("sso.oidc[{i}].{k}");
    if !is_plain_name(&p.name) {
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
    let mapping = identity_mapping(c, &key, &p.mapping);
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
        mapping,
        audiences: if p.audiences.is_empty() {
            vec![p.client_id.trim().to_string()]
        } else {
            p.audiences.clone()
        },
        algorithms,
        hs256_secret,
    }
}

/// The email-address NameID format (the seed's `configure_saml`).
pub const NAME_ID_EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";

/// The certificates in PEM files, DER; problems reported under `key`.
fn read_certs(
    c: &mut Checker,
    key: &str,
    files: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Vec<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut certs = Vec::new();
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                c.fail(key, format!("{}: {e}", file.display()));
                continue;
            }
        };
        let mut found = 0;
        for der in CertificateDer::pem_slice_iter(&bytes) {
            let Ok(der) = der else {
                c.fail(key, format!("{}: not PEM", file.display()));
                break;
            };
            match certificate_expiry(&der) {
                Ok(expired) => {
                    found += 1;
                    if let Some(not_after) = expired {
                        warnings.push(format!(
                            "{key}: certificate in {} expired on {not_after} (still trusted: SAML IdPs often sign with expired certificates; the pin is what counts)",
                            file.display(),
                        ));
                    }
                    certs.push(der.to_vec());
                }
                Err(e) => c.fail(
                    key,
                    format!("{}: not an X.509 certificate: {e}", file.display()),
                ),
            }
        }
        if found == 0 {
            c.fail(key, format!("{}: no certificate in it", file.display()));
        }
    }
    certs
}

/// A DER certificate's end of validity if it is past (`None`: still valid),
/// or why it is not a certificate.
#[cfg(feature = "saml")]
fn certificate_expiry(der: &[u8]) -> Result<Option<String>, String> {
    let x509 = openssl::x509::X509::from_der(der).map_err(|e| e.to_string())?;
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok();
    Ok(now
        .is_some_and(|now| x509.not_after() < now)
        .then(|| x509.not_after().to_string()))
}

/// Without SAML support there is nothing to read certificates for: the
/// providers themselves are refused.
#[cfg(not(feature = "saml"))]
fn certificate_expiry(_der: &[u8]) -> Result<Option<String>, String> {
    Err("this build has no SAML support".into())
}

fn saml_provider(
    c: &mut Checker,
    i: usize,
    p: &SamlSection,
    default_skew: Duration,
    warnings: &mut Vec<String>,
) -> SamlProviderConfig {
    let key = |k: &str| format!("sso.saml[{i}].{k}");
    if !is_plain_name(&p.name) {
        c.fail(key("name"), "must be 1-128 of [A-Za-z0-9_.:-]");
    }
    if p.idp_entity_id.trim().is_empty() {
        c.fail(
            key("idp_entity_id"),
            "must be set (the Issuer of the IdP's assertions)",
        );
    }
    check_url(c, &key("idp_sso_url"), &p.idp_sso_url);
    if p.sp_entity_id.trim().is_empty() {
        c.fail(
            key("sp_entity_id"),
            "must be set (costguard's entity id at the IdP)",
        );
    }
    if check_url(c, &key("acs_url"), &p.acs_url).is_some_and(|u| u.path() != "/auth/saml/acs") {
        c.fail(key("acs_url"), "its path must be /auth/saml/acs");
    }
    let mut files: Vec<PathBuf> = p.idp_cert_files.clone();
    if !p.idp_cert_file.as_os_str().is_empty() {
        files.insert(0, p.idp_cert_file.clone());
    }
    if files.is_empty() {
        c.fail(
            key("idp_cert_file"),
            "must be set: the IdP's signing certificate is pinned",
        );
    }
    let idp_certs = read_certs(c, &key("idp_cert_file"), &files, warnings);
    let mapping = identity_mapping(c, &key, &p.mapping);
    let clock_skew = p.clock_skew.unwrap_or(default_skew);
    if clock_skew > Duration::from_secs(600) {
        c.fail(key("clock_skew"), "must be at most 10m");
    }
    SamlProviderConfig {
        name: p.name.clone(),
        idp_entity_id: p.idp_entity_id.trim().to_string(),
        idp_sso_url: p.idp_sso_url.trim().to_string(),
        idp_certs,
        sp_entity_id: p.sp_entity_id.trim().to_string(),
        acs_url: p.acs_url.trim().to_string(),
        name_id_format: non_empty(&p.name_id_format).unwrap_or_else(|| NAME_ID_EMAIL.into()),
        mapping,
        allow_unsolicited: p.allow_unsolicited,
        require_signed_assertion: p.require_signed_assertion.unwrap_or(true),
        clock_skew,
    }
}

/// Rules between SAML providers, and between them and the OpenID ones.
fn check_saml_set(c: &mut Checker, saml: &[SamlProviderConfig], oidc: &[OidcProviderConfig]) {
    let mut names: HashSet<&str> = oidc.iter().map(|p| p.name.as_str()).collect();
    for p in saml {
        if !names.insert(p.name.as_str()) {
            c.fail("sso.saml", format!("two providers are named {:?}", p.name));
        }
    }
    for (i, a) in saml.iter().enumerate() {
        for b in &saml[i + 1..] {
            // The audience is what keeps two configurations of one IdP apart.
            if a.idp_entity_id == b.idp_entity_id && a.sp_entity_id == b.sp_entity_id {
                c.fail(
                    "sso.saml",
                    format!(
                        "providers {:?} and {:?} are the same IdP and the same sp_entity_id: give each its own sp_entity_id",
                        a.name, b.name
                    ),
                );
            }
            if a.sp_entity_id == b.sp_entity_id && a.acs_url != b.acs_url {
                c.fail(
                    "sso.saml",
                    format!(
                        "providers {:?} and {:?} share an sp_entity_id but not its acs_url",
                        a.name, b.name
                    ),
                );
            }
        }
    }
    let pinned = |t: &str| {
        oidc.iter().any(|o| o.mapping.tenant.as_deref() == Some(t))
            || saml.iter().any(|s| s.mapping.tenant.as_deref() == Some(t))
    };
    for p in saml.iter().filter(|p| p.mapping.tenant.is_none()) {
        for (domain, t) in &p.mapping.email_domains {
            if pinned(t) {
                c.fail(
                    format!("sso.saml.{}.email_domains", p.name),
                    format!("{domain:?} maps to {t}, which has its own provider"),
                );
            }
        }
    }
    for p in oidc.iter().filter(|p| p.mapping.tenant.is_none()) {
        for (domain, t) in &p.mapping.email_domains {
            if saml.iter().any(|s| s.mapping.tenant.as_deref() == Some(t)) {
                c.fail(
                    format!("sso.oidc.{}.email_domains", p.name),
                    format!("{domain:?} maps to {t}, which has its own SAML provider"),
                );
            }
        }
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
    for p in oidc.iter().filter(|p| p.mapping.tenant.is_none()) {
        for (domain, t) in &p.mapping.email_domains {
            if oidc.iter().any(|o| o.mapping.tenant.as_deref() == Some(t)) {
                c.fail(
                    format!("sso.oidc.{}.email_domains", p.name),
                    format!("{domain:?} maps to {t}, which has its own provider"),
                );
            }
        }
    }
    let mut domains = HashSet::new();
    for d in oidc.iter().flat_map(|p| p.mapping.email_domains.keys()) {
        if !domains.insert(d.as_str()) {
            c.fail(
                "sso.oidc",
                format!("email domain {d:?} is mapped by two providers"),
            );
        }
    }
    let mut warnings = Vec::new();
    if cfg!(not(feature = "saml")) && !s.saml.is_empty() {
        c.fail(
            "sso.saml",
            "this build has no SAML support (built without the `saml` cargo feature)",
        );
    }
    let saml: Vec<_> = s
        .saml
        .iter()
        .enumerate()
        .map(|(i, p)| saml_provider(c, i, p, s.clock_skew, &mut warnings))
        .collect();
    check_saml_set(c, &saml, &oidc);
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
        saml_max_response_bytes: c.bounded(
            "sso.saml_max_response_bytes",
            s.saml_max_response_bytes,
            4096,
            16 << 20,
        ) as usize,
        saml,
        warnings,
    }
}
