//! Who a single sign-on login is for costguard: the identity mapping that
//! OpenID (`[[sso.oidc]]`) and SAML (`[[sso.saml]]`) providers share.
//!
//! One [`IdentityMapping`] is flattened into each provider's table, so its
//! keys sit beside the provider's own. The kinds differ only in where they
//! read each piece: claims for OpenID ([`ClaimNames`]: `tenant_claim`, …),
//! attributes for SAML ([`AttributeNames`]: `tenant_attribute`, …); that
//! part is the type parameter. Validation checks a mapping once for either
//! kind and turns its names into [`Sources`], the form `sso::claims` maps a
//! verified login with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The tenant, roles and the rest of a login's identity, and where they
/// come from. `N`: the claim or attribute names as the provider's table
/// writes them, or [`Sources`] once validated.
///
/// `deny_unknown_fields` sits here, not on the provider tables: serde hands
/// a flattened struct every key its parent does not know, so this is where
/// a key that belongs to neither is found. A provider table must therefore
/// flatten nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityMapping<N = Sources> {
    /// Every login through this provider is for this tenant (per-tenant
    /// SSO). A login naming another tenant is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Where the tenant id, roles, groups, email and user id are read.
    #[serde(flatten)]
    pub sources: N,
    /// Email domain → tenant id: the tenant of a user whose verified email
    /// has that domain (when no tenant claim or attribute decides), and the
    /// provider `/auth/login?email=` picks.
    pub email_domains: BTreeMap<String, String>,
    /// Group → roles it grants.
    pub group_roles: BTreeMap<String, Vec<String>>,
    /// Roles every user of this provider has.
    pub default_roles: Vec<String>,
    /// Whether this provider may grant `system_admin` (crosses tenants).
    /// Never for a provider pinned to one tenant.
    pub allow_system_admin: bool,
    /// Where a user's roles come from when the admin API knows the user
    /// (`PUT …/users/{id}`): "admin" (the default: exactly the roles
    /// assigned there; users it does not know get the provider's), "idp"
    /// (the provider's claims only), or "both" (the union). Either way a
    /// user disabled or deleted through the admin API cannot log in, and
    /// their sessions and tokens stop working.
    pub role_source: String,
}

impl IdentityMapping {
    /// `role_source`, parsed. Validation refused anything else, so the
    /// fallback (the default, admin) is never taken for a loaded provider.
    pub fn role_source(&self) -> RoleSource {
        RoleSource::parse(&self.role_source).unwrap_or_default()
    }
}

/// `[[sso.oidc]]`: the claims each piece of the identity is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClaimNames {
    /// The claim that holds the tenant id.
    pub tenant_claim: String,
    /// The claim that holds role names (a list or a space-separated string).
    pub roles_claim: String,
    /// The claim that holds group names.
    pub groups_claim: String,
    /// The claim that holds the email address.
    pub email_claim: String,
    /// The claim that becomes the user id (`X-CostOps-User-Id`).
    pub user_claim: String,
}

/// `[[sso.saml]]`: the assertion attributes each piece of the identity is
/// read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributeNames {
    /// The attribute holding the tenant id.
    pub tenant_attribute: String,
    /// The attribute holding role names (several values, or one separated
    /// by spaces or commas).
    pub roles_attribute: String,
    /// The attribute holding group names.
    pub groups_attribute: String,
    /// The attribute holding the email. Default `email`; with an
    /// `emailAddress` NameID, the NameID when the attribute is missing.
    pub email_attribute: String,
    /// The attribute that becomes the user id. Empty: the NameID.
    pub user_attribute: String,
}

/// The key of a SAML NameID among an assertion's attributes (a `$` cannot
/// start an attribute an IdP sends as a plain name, and it replaces one
/// that tries).
pub const NAME_ID: &str = "$name_id";

/// Where a validated mapping reads each piece, as names of the claims a
/// login is mapped from (a SAML assertion's attributes become claims of
/// the same names, its NameID the claim [`NAME_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Claim with the tenant id.
    pub tenant: Option<String>,
    /// Claim with role names.
    pub roles: Option<String>,
    /// Claim with group names.
    pub groups: Option<String>,
    /// Claim with the email.
    pub email: String,
    /// Claim that becomes the user id.
    pub user: String,
}

/// The names a kind of provider writes in its table.
pub trait SourceNames {
    /// The key naming the tenant's claim or attribute, for messages.
    const TENANT_KEY: &'static str;

    /// The names trimmed, blank ones unset, this kind's defaults filled in.
    fn sources(&self) -> Sources;
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl SourceNames for ClaimNames {
    const TENANT_KEY: &'static str = "tenant_claim";

    fn sources(&self) -> Sources {
        Sources {
            tenant: non_empty(&self.tenant_claim),
            roles: non_empty(&self.roles_claim),
            groups: non_empty(&self.groups_claim),
            email: non_empty(&self.email_claim).unwrap_or_else(|| "email".into()),
            user: non_empty(&self.user_claim).unwrap_or_else(|| "sub".into()),
        }
    }
}

impl SourceNames for AttributeNames {
    const TENANT_KEY: &'static str = "tenant_attribute";

    fn sources(&self) -> Sources {
        Sources {
            tenant: non_empty(&self.tenant_attribute),
            roles: non_empty(&self.roles_attribute),
            groups: non_empty(&self.groups_attribute),
            email: non_empty(&self.email_attribute).unwrap_or_else(|| "email".into()),
            user: non_empty(&self.user_attribute).unwrap_or_else(|| NAME_ID.into()),
        }
    }
}

/// Where the roles of a user the admin API knows come from (`role_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoleSource {
    /// The roles assigned through the admin API; a user it does not know
    /// gets the provider's.
    #[default]
    Admin,
    /// The provider's claims only.
    Idp,
    /// Both, united.
    Both,
}

impl RoleSource {
    /// `"admin"` (or empty), `"idp"` or `"both"`, spaces around ignored.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "" | "admin" => Some(RoleSource::Admin),
            "idp" => Some(RoleSource::Idp),
            "both" => Some(RoleSource::Both),
            _ => None,
        }
    }
}
