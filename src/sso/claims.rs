//! A verified token's claims → who the user is for costguard: tenant, user
//! id, email, roles, following the provider's claim mapping.
//!
//! The tenant comes from the provider's pinned `tenant` (a token naming
//! another tenant is refused), else the tenant claim, else the domain of a
//! *verified* email. Roles are the roles claim, the roles of the user's
//! groups and the provider's default roles; names that are not plain are
//! dropped, and `system_admin` is dropped unless the provider may grant it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{OidcProviderConfig, RoleSource};

/// Who a token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The tenant.
    pub tenant_id: String,
    /// The user id.
    pub user_id: String,
    /// The email, if given.
    pub email: Option<String>,
    /// Role names, sorted, no duplicates.
    pub roles: Vec<String>,
}

pub use crate::authn::refusal::ClaimError;

/// A string fit for an identity header: 1-256 visible ASCII characters.
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// A role, provider or claim name: 1-128 of `[A-Za-z0-9_.:-]` (they go
/// into headers and policy lookups).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// A claim holding names: a list of strings, or one string split on spaces
/// and commas.
fn names(claims: &Map<String, Value>, claim: Option<&str>) -> Vec<String> {
    match claim.and_then(|c| claims.get(c)) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// How a provider's claims (OIDC) or attributes (SAML) become an identity.
#[derive(Debug, Clone, Copy)]
pub struct Mapping<'a> {
    /// The one tenant of the provider.
    pub tenant: Option<&'a str>,
    /// Claim with the tenant id.
    pub tenant_claim: Option<&'a str>,
    /// Lower-case verified email domain → tenant.
    pub email_domains: &'a BTreeMap<String, String>,
    /// Claim with role names.
    pub roles_claim: Option<&'a str>,
    /// Claim with group names.
    pub groups_claim: Option<&'a str>,
    /// Group → roles.
    pub group_roles: &'a BTreeMap<String, Vec<String>>,
    /// Roles everyone gets.
    pub default_roles: &'a [String],
    /// Claim with the email.
    pub email_claim: &'a str,
    /// Claim that becomes the user id.
    pub user_claim: &'a str,
    /// May grant `system_admin`.
    pub allow_system_admin: bool,
    /// Where a user's roles come from when the admin API knows the user.
    pub role_source: RoleSource,
}

impl OidcProviderConfig {
    /// This provider's claim mapping.
    pub fn mapping(&self) -> Mapping<'_> {
        Mapping {
            tenant: self.tenant.as_deref(),
            tenant_claim: self.tenant_claim.as_deref(),
            email_domains: &self.email_domains,
            roles_claim: self.roles_claim.as_deref(),
            groups_claim: self.groups_claim.as_deref(),
            group_roles: &self.group_roles,
            default_roles: &self.default_roles,
            email_claim: &self.email_claim,
            user_claim: &self.user_claim,
            allow_system_admin: self.allow_system_admin,
            role_source: self.role_source,
        }
    }
}

/// The key of a SAML NameID among an assertion's attributes (a `$` cannot
/// start an attribute an IdP sends as a plain name, and it replaces one
/// that tries).
pub const NAME_ID: &str = "$name_id";

impl crate::config::SamlProviderConfig {
    /// This provider's attribute mapping.
    pub fn mapping(&self) -> Mapping<'_> {
        Mapping {
            tenant: self.tenant.as_deref(),
            tenant_claim: self.tenant_attribute.as_deref(),
            email_domains: &self.email_domains,
            roles_claim: self.roles_attribute.as_deref(),
            groups_claim: self.groups_attribute.as_deref(),
            group_roles: &self.group_roles,
            default_roles: &self.default_roles,
            email_claim: &self.email_attribute,
            user_claim: self.user_attribute.as_deref().unwrap_or(NAME_ID),
            allow_system_admin: self.allow_system_admin,
            role_source: self.role_source,
        }
    }
}

/// Maps verified claims to an identity.
pub fn identity(p: &Mapping<'_>, claims: &Map<String, Value>) -> Result<Identity, ClaimError> {
    let user_id = claims
        .get(p.user_claim)
        .and_then(Value::as_str)
        .filter(|s| header_safe(s))
        .ok_or(ClaimError::NoUser)?
        .to_string();
    let email = claims
        .get(p.email_claim)
        .and_then(Value::as_str)
        .filter(|s| header_safe(s) && s.contains('@'))
        .map(str::to_string);
    let claimed = p
        .tenant_claim
        .and_then(|c| claims.get(c))
        .and_then(Value::as_str);
    let email_verified = claims.get("email_verified") == Some(&Value::Bool(true));
    let by_domain = email
        .as_deref()
        .filter(|_| email_verified)
        .and_then(|e| e.rsplit_once('@'))
        .and_then(|(_, d)| p.email_domains.get(&d.to_ascii_lowercase()));
    let tenant_id = match (p.tenant, claimed) {
        (Some(pinned), Some(c)) if c != pinned => return Err(ClaimError::WrongTenant),
        (Some(pinned), _) => pinned.to_string(),
        (None, Some(c)) if crate::model::is_tenant_id(c) => c.to_string(),
        (None, Some(_)) => return Err(ClaimError::NoTenant),
        (None, None) => by_domain.cloned().ok_or(ClaimError::NoTenant)?,
    };
    let groups = names(claims, p.groups_claim);
    let mut roles: Vec<String> = names(claims, p.roles_claim)
        .into_iter()
        .chain(
            groups
                .iter()
                .filter_map(|g| p.group_roles.get(g))
                .flatten()
                .cloned(),
        )
        .chain(p.default_roles.iter().cloned())
        .filter(|r| is_plain_name(r))
        .filter(|r| p.allow_system_admin || r != "system_admin")
        .collect();
    roles.sort();
    roles.dedup();
    Ok(Identity {
        tenant_id,
        user_id,
        email,
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> OidcProviderConfig {
        OidcProviderConfig {
            name: "corp".into(),
            issuer: "https://idp".into(),
            client_id: "cg".into(),
            client_secret: None,
            redirect_url: "https://x/auth/callback".into(),
            post_logout_redirect_url: None,
            scopes: vec![],
            tenant: None,
            tenant_claim: Some("tenant_id".into()),
            email_domains: [("acme.example".to_string(), "org-aaaaaaaa".to_string())].into(),
            roles_claim: Some("roles".into()),
            groups_claim: Some("groups".into()),
            group_roles: [("finance".to_string(), vec!["analyst".to_string()])].into(),
            default_roles: vec!["viewer".into()],
            email_claim: "email".into(),
            user_claim: "sub".into(),
            audiences: vec!["cg".into()],
            algorithms: vec![],
            hs256_secret: None,
            allow_system_admin: false,
            role_source: RoleSource::Admin,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_tenant_roles_and_groups() {
        let p = provider();
        let id = identity(
            &p.mapping(),
            &claims(
                json!({"sub": "alice", "email": "a@acme.example", "tenant_id": "org-bbbbbbbb",
                "roles": ["admin", "system_admin", "bad role"], "groups": ["finance", "other"]}),
            ),
        )
        .unwrap();
        assert_eq!(id.tenant_id, "org-bbbbbbbb");
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.roles, ["admin", "analyst", "viewer"]);
        // No tenant claim: the verified email's domain decides; unverified does not.
        let c = json!({"sub": "a", "email": "a@ACME.example", "email_verified": true});
        assert_eq!(
            identity(&p.mapping(), &claims(c)).unwrap().tenant_id,
            "org-aaaaaaaa"
        );
        let c = json!({"sub": "a", "email": "a@acme.example"});
        assert_eq!(
            identity(&p.mapping(), &claims(c)),
            Err(ClaimError::NoTenant)
        );
        let c = json!({"sub": "a", "tenant_id": "../../etc"});
        assert_eq!(
            identity(&p.mapping(), &claims(c)),
            Err(ClaimError::NoTenant)
        );
        let c = json!({"sub": "a b", "tenant_id": "org-bbbbbbbb"});
        assert_eq!(identity(&p.mapping(), &claims(c)), Err(ClaimError::NoUser));
    }

    #[test]
    fn a_pinned_provider_speaks_for_its_tenant_only() {
        let mut p = provider();
        p.tenant = Some("org-cccccccc".into());
        let c = json!({"sub": "a", "tenant_id": "org-bbbbbbbb"});
        assert_eq!(
            identity(&p.mapping(), &claims(c)),
            Err(ClaimError::WrongTenant)
        );
        let c = json!({"sub": "a"});
        assert_eq!(
            identity(&p.mapping(), &claims(c)).unwrap().tenant_id,
            "org-cccccccc"
        );
    }
}
