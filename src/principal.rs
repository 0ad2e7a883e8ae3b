//! Who is calling, once authentication has decided: the [`Principal`] every
//! later stage reads, how they proved it ([`AuthMethod`]), and the trusted
//! `X-CostOps-*` identity headers rendered for the upstream. It sits below
//! every stage so that authentication, single sign-on, authorization and
//! forwarding can share it without importing each other.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue};

use crate::grants::ProjectGrant;
use crate::model::Tenant;
use crate::roles::Permissions;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A costguard API key.
    ApiKey,
    /// An IdP-issued JWT bearer token.
    Jwt,
    /// A session from an OpenID Connect login.
    Oidc,
    /// A session from a SAML login.
    Saml,
}

impl AuthMethod {
    /// The `X-CostOps-Auth-Method` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Oidc => "oidc",
            AuthMethod::Saml => "saml",
        }
    }
}

/// Who is calling, as the upstream will be told.
#[derive(Debug)]
pub struct Principal {
    /// The caller's tenant.
    pub tenant_id: Arc<str>,
    /// The user id; for API keys, the key id.
    pub user_id: Arc<str>,
    /// The key id, for API keys.
    pub key_id: Option<Arc<str>>,
    /// Whose rate bucket the requests fill: the key id, or for a user of
    /// single sign-on `method:tenant:user` (user ids come from identity
    /// providers and need not be unique across them).
    pub rate_key: Arc<str>,
    /// Role names (policy roles or the tenant's custom roles). Their
    /// permissions are looked up per request, so policy reloads apply at once.
    pub roles: Arc<[String]>,
    /// Roles held on some projects only, parsed when the principal is
    /// built. Empty (no allocation) for most principals, and then
    /// authorization never looks at them.
    pub grants: Box<[ProjectGrant]>,
    /// The key's scopes, narrowing whatever the roles grant; `None`: none.
    pub scopes: Option<Permissions>,
    /// The key's own rate limit (`None`: its tier's default).
    pub rate_per_minute: Option<u32>,
    /// How they authenticated.
    pub method: AuthMethod,
    /// The identity headers, rendered once when the principal is built.
    pub headers: IdentityHeaders,
}

/// A successful authentication: who, and their tenant as it is now (tier,
/// limits) for the limits stage.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who is calling.
    pub principal: Arc<Principal>,
    /// Their tenant.
    pub tenant: Arc<Tenant>,
}

/// `X-CostOps-*` values for one principal.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    tenant: HeaderValue,
    user: HeaderValue,
    key: Option<HeaderValue>,
    roles: HeaderValue,
    method: HeaderValue,
}

/// The identity headers sent upstream (design.md).
pub mod names {
    use http::HeaderName;
    /// `X-CostOps-Tenant-Id`
    pub static TENANT_ID: HeaderName = HeaderName::from_static("x-costops-tenant-id");
    /// `X-CostOps-User-Id`
    pub static USER_ID: HeaderName = HeaderName::from_static("x-costops-user-id");
    /// `X-CostOps-Key-Id`
    pub static KEY_ID: HeaderName = HeaderName::from_static("x-costops-key-id");
    /// `X-CostOps-Roles`
    pub static ROLES: HeaderName = HeaderName::from_static("x-costops-roles");
    /// `X-CostOps-Auth-Method`
    pub static AUTH_METHOD: HeaderName = HeaderName::from_static("x-costops-auth-method");
}

impl IdentityHeaders {
    /// Renders the values; ids and role names are validated ASCII, so this
    /// fails only on a corrupted store record.
    pub fn new(
        tenant_id: &str,
        user_id: &str,
        key_id: Option<&str>,
        roles: &[String],
        method: AuthMethod,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        Ok(Self {
            tenant: HeaderValue::from_str(tenant_id)?,
            user: HeaderValue::from_str(user_id)?,
            key: key_id.map(HeaderValue::from_str).transpose()?,
            roles: HeaderValue::from_str(&roles.join(","))?,
            method: HeaderValue::from_static(method.as_str()),
        })
    }

    /// Adds the headers to an outgoing request (after hygiene removed any
    /// client-sent look-alikes).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(names::TENANT_ID.clone(), self.tenant.clone());
        headers.insert(names::USER_ID.clone(), self.user.clone());
        if let Some(key) = &self.key {
            headers.insert(names::KEY_ID.clone(), key.clone());
        }
        headers.insert(names::ROLES.clone(), self.roles.clone());
        headers.insert(names::AUTH_METHOD.clone(), self.method.clone());
    }
}
