//! Who is calling the admin API, and what they may do.
//!
//! The bootstrap admin token (compared in constant time, via its SHA-256)
//! acts as `system_admin`. An API key acts with its own permissions within
//! its own tenant; only `system_admin` crosses tenants.

use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::authn::api_key::ApiKeys;
use crate::authn::{AuthnError, Credential, credential};
use crate::authz::Authz;
use crate::principal::Principal;
use crate::roles::{Permission, Permissions};

/// The admin API's caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The bootstrap admin token.
    Root,
    /// An API key, with its effective permissions under the current policy.
    Key(Arc<Principal>, Permissions),
}

impl Caller {
    /// Effective permissions.
    pub fn permissions(&self) -> Permissions {
        match self {
            Caller::Root => Permissions::ALL,
            Caller::Key(_, perms) => *perms,
        }
    }

    /// Who did it, for records: `admin-token` or `key:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Root => "admin-token".into(),
            Caller::Key(p, _) => format!("key:{}", p.user_id),
        }
    }

    /// The caller's own tenant: the key's, or empty for the admin token.
    pub fn tenant_id(&self) -> &str {
        match self {
            Caller::Root => "",
            Caller::Key(p, _) => &p.tenant_id,
        }
    }

    fn is_system_admin(&self) -> bool {
        self.permissions().contains(Permission::SystemAdmin)
    }

    /// Allows the call when the caller is `system_admin`, or belongs to
    /// `tenant` and holds one of `any_of`. A success is noted for
    /// [`tracking_authorization`].
    pub fn authorize(&self, tenant: Option<&str>, any_of: &[Permission]) -> Result<(), ApiError> {
        let verdict = self.check(tenant, any_of);
        if verdict.is_ok() {
            let _ = AUTHORIZED.try_with(|a| a.set(true));
        }
        verdict
    }

    fn check(&self, tenant: Option<&str>, any_of: &[Permission]) -> Result<(), ApiError> {
        if self.is_system_admin() {
            return Ok(());
        }
        let Caller::Key(p, perms) = self else {
            return Ok(());
        };
        match tenant {
            Some(t) if t == &*p.tenant_id => {}
            Some(_) => return Err(ApiError::TenantMismatch),
            None => return Err(ApiError::forbidden("this operation needs system_admin")),
        }
        if any_of.iter().any(|perm| perms.contains(*perm)) {
            Ok(())
        } else {
            let names: Vec<&str> = any_of.iter().map(|p| p.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this operation needs {}",
                names.join(" or ")
            )))
        }
    }
}

tokio::task_local! {
    /// Whether [`Caller::authorize`] let the current admin call through.
    static AUTHORIZED: std::cell::Cell<bool>;
}

/// Runs one admin operation and says whether its caller was authorized
/// for it (a [`Caller::authorize`] succeeded while it ran). The audit
/// record of a call refused before that (bad body, unknown tenant, wrong
/// tenant, missing permission) must not carry what the caller asked for:
/// the route's check runs once its body is parsed (`admin::router`), the
/// audit log's readers are checked by its own rules, so the call itself
/// is asked rather than a copy of its rules.
pub async fn tracking_authorization<T>(op: impl Future<Output = T>) -> (T, bool) {
    AUTHORIZED
        .scope(std::cell::Cell::new(false), async {
            let out = op.await;
            (out, AUTHORIZED.with(std::cell::Cell::get))
        })
        .await
}

/// Authenticates admin callers.
#[derive(Clone, Debug)]
pub struct AdminAuth {
    /// SHA-256 of the bootstrap token, if one is configured.
    token_hash: Option<[u8; 32]>,
    keys: ApiKeys,
    authz: Authz,
}

impl AdminAuth {
    /// `token_hash`: SHA-256 of the configured admin token.
    pub fn new(token_hash: Option<[u8; 32]>, keys: ApiKeys, authz: Authz) -> Self {
        Self {
            token_hash,
            keys,
            authz,
        }
    }

    /// The caller of a request, or why there is none.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, AuthnError> {
        match credential(headers)? {
            None => Err(AuthnError::Missing),
            Some(Credential::ApiKey(key)) => {
                let principal = self.keys.authenticate(key).await?.principal;
                let perms = self
                    .authz
                    .permissions(&self.authz.policy(), &principal)
                    .await
                    .map_err(AuthnError::Store)?;
                Ok(Caller::Key(principal, perms))
            }
            Some(Credential::Bearer(token)) => {
                let presented = crate::authn::api_key::hash(token);
                match &self.token_hash {
                    Some(expected) if bool::from(presented.ct_eq(expected)) => Ok(Caller::Root),
                    _ => Err(AuthnError::UnknownKey),
                }
            }
        }
    }
}
