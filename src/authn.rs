//! Authentication: find the request's one credential and turn it into a
//! [`Principal`]. API keys (`Authorization: Bearer costops_…` or
//! `X-API-Key`) are checked by [`api_key::ApiKeys`]; IdP-issued JWTs and
//! SSO sessions join the chain with their issues.
//!
//! A request carries at most one credential: two `Authorization` headers,
//! two `X-API-Key` headers, or both schemes at once are refused (400), so
//! no component can disagree with costguard about who is calling.

pub mod api_key;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::model::Tenant;
use crate::roles::Permissions;
use crate::store::StoreError;

/// `X-API-Key`.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// No credential at all.
    #[error("no credential")]
    Missing,
    /// More than one credential (400).
    #[error("more than one credential in the request")]
    Ambiguous,
    /// Not a well-formed API key, or an unsupported scheme.
    #[error("malformed credential")]
    Malformed,
    /// A bearer token that is not an API key, and no token issuer is configured.
    #[error("unsupported bearer token")]
    UnsupportedToken,
    /// Well-formed but unknown (or rotated out, or of a deleted tenant).
    #[error("unknown API key")]
    UnknownKey,
    /// Revoked.
    #[error("revoked API key")]
    RevokedKey,
    /// Past its `expires_at`.
    #[error("expired API key")]
    ExpiredKey,
    /// The key's tenant is suspended (403).
    #[error("tenant suspended")]
    TenantSuspended,
    /// A JWT that did not verify.
    #[error("invalid token: {0}")]
    Token(crate::sso::token::TokenError),
    /// A verified token or login whose claims make no costguard user.
    #[error("token claims: {0}")]
    Claims(crate::sso::claims::ClaimError),
    /// A session cookie on a state-changing request from another site
    /// (cross-site request forgery), 403.
    #[error("cross-site request with a session cookie")]
    CrossSite,
    /// A session cookie with no live session (ended, expired, unknown).
    #[error("no session")]
    NoSession,
    /// The store could not answer (503).
    #[error("credential store unavailable")]
    Store(#[source] Arc<StoreError>),
}

impl AuthnError {
    /// Whether the caller presented a credential that did not verify (what
    /// the failed-authentication limit counts). Missing credentials, store
    /// outages, suspended tenants and users the admin API disabled are not
    /// guesses.
    pub fn is_bad_credential(&self) -> bool {
        match self {
            AuthnError::Claims(e) => *e != crate::sso::claims::ClaimError::UserDisabled,
            other => matches!(
                other,
                AuthnError::Malformed
                    | AuthnError::UnsupportedToken
                    | AuthnError::UnknownKey
                    | AuthnError::RevokedKey
                    | AuthnError::ExpiredKey
                    | AuthnError::Token(_)
            ),
        }
    }
}

/// The authentication chain of the proxy port. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: api_key::ApiKeys,
    sso: Option<Arc<crate::sso::Sso>>,
}

impl Authenticator {
    /// The chain: API keys, then (with single sign-on configured) JWTs from
    /// the configured issuers and session cookies.
    pub fn new(keys: api_key::ApiKeys, sso: Option<Arc<crate::sso::Sso>>) -> Self {
        Self { keys, sso }
    }

    /// Single sign-on, when configured.
    pub fn sso(&self) -> Option<&Arc<crate::sso::Sso>> {
        self.sso.as_ref()
    }

    /// A tenant, through the key cache (for limits of another tenant's route).
    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<Arc<Tenant>>, AuthnError> {
        self.keys.tenant(tenant_id).await
    }

    /// The request's principal, or why there is none.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, AuthnError> {
        match (credential(headers)?, &self.sso) {
            (Some(Credential::ApiKey(key)), _) => self.keys.authenticate(key).await,
            (Some(Credential::Bearer(token)), Some(sso)) if crate::sso::looks_like_jwt(token) => {
                sso.bearer(token).await
            }
            (Some(Credential::Bearer(_)), _) => Err(AuthnError::UnsupportedToken),
            // A browser's session cookie counts only when no header credential is sent.
            (None, Some(sso)) => match sso.session_cookie(headers) {
                Some(cookie) => sso.session(cookie).await,
                None => Err(AuthnError::Missing),
            },
            (None, None) => Err(AuthnError::Missing),
        }
    }
}

impl Authenticator {
    /// The request's principal if the caches alone prove it (API key
    /// lookup, verified JWT, live session), else `None`; never reads the
    /// store nor calls an identity provider. Used for sources blocked for
    /// failed authentications: a credential this instance already verified
    /// is not a guess, while anything else from them waits out the block.
    pub async fn authenticate_cached(&self, headers: &HeaderMap) -> Option<Authenticated> {
        match (credential(headers).ok()?, &self.sso) {
            (Some(Credential::ApiKey(key)), _) => self.keys.authenticate_cached(key).await,
            (Some(Credential::Bearer(token)), Some(sso)) if crate::sso::looks_like_jwt(token) => {
                sso.bearer_cached(token).await
            }
            (None, Some(sso)) => {
                let cookie = sso.session_cookie(headers)?;
                sso.session_cached(cookie).await
            }
            _ => None,
        }
    }
}

/// The single credential a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A costguard API key (format not yet checked).
    ApiKey(&'a str),
    /// Any other bearer token.
    Bearer(&'a str),
}

/// Finds the request's credential, refusing more than one (whatever their
/// schemes: an `Authorization: Basic` beside an `X-API-Key` is two).
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, AuthnError> {
    let authorization = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| (true, v));
    let mut all = authorization.chain(headers.get_all(&X_API_KEY).iter().map(|v| (false, v)));
    let Some((is_authorization, value)) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(AuthnError::Ambiguous);
    }
    let value = value.to_str().map_err(|_| AuthnError::Malformed)?.trim();
    if !is_authorization {
        return Ok(Some(Credential::ApiKey(value)));
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Malformed);
    }
    let token = token.trim();
    Ok(Some(if token.starts_with(api_key::PREFIX) {
        Credential::ApiKey(token)
    } else {
        Credential::Bearer(token)
    }))
}

/// Removes every inbound credential header, so none reaches the upstream.
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(&X_API_KEY);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn finds_exactly_one_credential() {
        let key = "costops_0123456789abcdef0123456789abcdef";
        assert_eq!(credential(&h(&[])).unwrap(), None);
        assert_eq!(
            credential(&h(&[("authorization", &format!("Bearer {key}"))])).unwrap(),
            Some(Credential::ApiKey(key))
        );
        assert_eq!(
            credential(&h(&[("authorization", &format!("bearer  {key}"))])).unwrap(),
            Some(Credential::ApiKey(key))
        );
        assert_eq!(
            credential(&h(&[("x-api-key", key)])).unwrap(),
            Some(Credential::ApiKey(key))
        );
        assert_eq!(
            credential(&h(&[("authorization", "Bearer eyJ.x.y")])).unwrap(),
            Some(Credential::Bearer("eyJ.x.y"))
        );
        for bad in [
            h(&[
                ("authorization", &format!("Bearer {key}")),
                ("x-api-key", key),
            ]),
            h(&[("x-api-key", key), ("x-api-key", key)]),
            h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
        ] {
            assert!(matches!(credential(&bad), Err(AuthnError::Ambiguous)));
        }
        assert!(matches!(
            credential(&h(&[("authorization", "Basic Zm9v")])),
            Err(AuthnError::Malformed)
        ));
        assert!(matches!(
            credential(&h(&[("authorization", "Bearer")])),
            Err(AuthnError::Malformed)
        ));
    }
}
