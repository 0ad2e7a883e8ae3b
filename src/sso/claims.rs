//! A verified token's claims → who the user is for costguard: tenant, user
//! id, email, roles, following the provider's claim mapping.
//!
//! The tenant comes from the provider's pinned `tenant` (a token naming
//! another tenant is refused), else the tenant claim, else the domain of a
//! *verified* email. Roles are the roles claim, the roles of the user's
//! groups and the provider's default roles; names that are not plain are
//! dropped, and `system_admin` is dropped unless the provider may grant it.

use serde_json::{Map, Value};

use crate::config::{IdentityMapping, is_plain_name};

pub use crate::config::NAME_ID;

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
    /// Roles on some projects only: only ever the admin API's (set by
    /// `users::Directory::resolve`), never a provider's claim.
    pub grants: Vec<crate::model::Grant>,
}

pub use crate::authn::refusal::ClaimError;

/// A string fit for an identity header: 1-256 visible ASCII characters.
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..0x7f).contains(&b))
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

/// Maps verified claims to an identity, following the provider's mapping
/// (for SAML, the assertion's attributes as claims).
pub fn identity(p: &IdentityMapping, claims: &Map<String, Value>) -> Result<Identity, ClaimError> {
    let user_id = claims
        .get(&p.sources.user)
        .and_then(Value::as_str)
        .filter(|s| header_safe(s))
        .ok_or(ClaimError::NoUser)?
        .to_string();
    let email = claims
        .get(&p.sources.email)
        .and_then(Value::as_str)
        .filter(|s| header_safe(s) && s.contains('@'))
        .map(str::to_string);
    let claimed = p
        .sources
        .tenant
        .as_deref()
        .and_then(|c| claims.get(c))
        .and_then(Value::as_str);
    let email_verified = claims.get("email_verified") == Some(&Value::Bool(true));
    let by_domain = email
        .as_deref()
        .filter(|_| email_verified)
        .and_then(|e| e.rsplit_once('@'))
        .and_then(|(_, d)| p.email_domains.get(&d.to_ascii_lowercase()));
    let tenant_id = match (p.tenant.as_deref(), claimed) {
        (Some(pinned), Some(c)) if c != pinned => return Err(ClaimError::WrongTenant),
        (Some(pinned), _) => pinned.to_string(),
        (None, Some(c)) if crate::model::is_tenant_id(c) => c.to_string(),
        (None, Some(_)) => return Err(ClaimError::NoTenant),
        (None, None) => by_domain.cloned().ok_or(ClaimError::NoTenant)?,
    };
    let groups = names(claims, p.sources.groups.as_deref());
    let mut roles: Vec<String> = names(claims, p.sources.roles.as_deref())
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
        grants: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use serde_json::json;

    fn mapping() -> IdentityMapping {
        IdentityMapping {
            tenant: None,
            sources: Sources {
                tenant: Some("tenant_id".into()),
                roles: Some("roles".into()),
                groups: Some("groups".into()),
                email: "email".into(),
                user: "sub".into(),
            },
            email_domains: [("acme.example".to_string(), "org-aaaaaaaa".to_string())].into(),
            group_roles: [("finance".to_string(), vec!["analyst".to_string()])].into(),
            default_roles: vec!["viewer".into()],
            allow_system_admin: false,
            role_source: String::new(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_tenant_roles_and_groups() {
        let p = mapping();
        let id = identity(
            &p,
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
        assert_eq!(identity(&p, &claims(c)).unwrap().tenant_id, "org-aaaaaaaa");
        let c = json!({"sub": "a", "email": "a@acme.example"});
        assert_eq!(identity(&p, &claims(c)), Err(ClaimError::NoTenant));
        let c = json!({"sub": "a", "tenant_id": "../../etc"});
        assert_eq!(identity(&p, &claims(c)), Err(ClaimError::NoTenant));
        let c = json!({"sub": "a b", "tenant_id": "org-bbbbbbbb"});
        assert_eq!(identity(&p, &claims(c)), Err(ClaimError::NoUser));
    }

    #[test]
    fn a_pinned_provider_speaks_for_its_tenant_only() {
        let mut p = mapping();
        p.tenant = Some("org-cccccccc".into());
        let c = json!({"sub": "a", "tenant_id": "org-bbbbbbbb"});
        assert_eq!(identity(&p, &claims(c)), Err(ClaimError::WrongTenant));
        let c = json!({"sub": "a"});
        assert_eq!(identity(&p, &claims(c)).unwrap().tenant_id, "org-cccccccc");
    }
}
