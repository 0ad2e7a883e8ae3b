//! Authentication: find the request's one credential and turn it into a
//! [`Principal`](crate::principal::Principal). API keys (`Authorization: Bearer costops_…` or
//! `X-API-Key`) are checked by [`api_key::ApiKeys`] on the fast path; any
//! other credential goes down a chain of [`Loader`]s, which is where single
//! sign-on plugs in its IdP-issued JWTs and session cookies (so this module
//! never imports `sso`). Every reason a credential is refused is an
//! [`AuthnError`] ([`refusal`] holds the token and claim reasons), so one
//! place decides what the client is told.
//!
//! A request carries at most one credential: two `Authorization` headers,
//! two `X-API-Key` headers, or both schemes at once are refused (400), so
//! no component can disagree with costguard about who is calling.

pub mod api_key;
pub mod refusal;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::model::Tenant;
use crate::principal::Authenticated;
use crate::response::{ErrorResponse, Problem};
use crate::store::StoreError;
use refusal::{ClaimError, TokenError};

/// `X-API-Key`.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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
    Token(TokenError),
    /// A verified token or login whose claims make no costguard user.
    #[error("token claims: {0}")]
    Claims(ClaimError),
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
            AuthnError::Claims(e) => *e != ClaimError::UserDisabled,
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

/// `WWW-Authenticate` for a request without a credential, and for one with
/// a bad credential (RFC 6750 §3).
static CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"costguard\"");
static CHALLENGE_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"costguard\", error=\"invalid_token\"");

impl ErrorResponse for AuthnError {
    fn problem(&self) -> Problem<'_> {
        use AuthnError as A;
        use StatusCode as S;
        let (status, code, message) = match self {
            A::Missing => (
                S::UNAUTHORIZED,
                "unauthenticated",
                "credentials are required",
            ),
            A::Ambiguous => (
                S::BAD_REQUEST,
                "ambiguous_credentials",
                "send exactly one credential (one Authorization or one X-API-Key header)",
            ),
            A::Malformed | A::UnknownKey => {
                (S::UNAUTHORIZED, "invalid_key", "the API key is not valid")
            }
            A::UnsupportedToken | A::Token(_) => (
                S::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid",
            ),
            A::RevokedKey => (
                S::UNAUTHORIZED,
                "revoked_key",
                "the API key has been revoked",
            ),
            A::ExpiredKey => (S::UNAUTHORIZED, "expired_key", "the API key has expired"),
            A::Claims(ClaimError::UserDisabled) => (
                S::UNAUTHORIZED,
                "user_disabled",
                "the user has been disabled or deleted",
            ),
            A::Claims(_) => (
                S::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid",
            ),
            A::CrossSite => (
                S::FORBIDDEN,
                "cross_site_request",
                "a session may not be used for this request from another site",
            ),
            A::NoSession => (
                S::UNAUTHORIZED,
                "session_expired",
                "the session has ended; log in again at /auth/login",
            ),
            A::TenantSuspended => (S::FORBIDDEN, "tenant_suspended", "the tenant is suspended"),
            A::Store(_) => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "credentials cannot be checked right now",
            ),
        };
        Problem {
            status,
            code,
            message: Cow::Borrowed(message),
        }
    }

    fn add_headers(&self, headers: &mut HeaderMap) {
        if self.problem().status == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                AuthnError::Missing => &CHALLENGE,
                _ => &CHALLENGE_INVALID,
            };
            headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
    }
}

/// A credential source beyond API keys, asked in turn for what the key
/// path does not take: a bearer token that is not an API key, or a request
/// with no credential header (a browser's session cookie). Single sign-on
/// registers its loaders here.
#[async_trait]
pub trait Loader: Send + Sync + std::fmt::Debug {
    /// The principal, or why not, if this loader owns the credential;
    /// `None` hands the request to the next loader.
    async fn load(
        &self,
        credential: Option<Credential<'_>>,
        headers: &HeaderMap,
    ) -> Option<Result<Authenticated, AuthnError>>;

    /// The principal if this loader's caches alone prove it (no store read,
    /// no call to an identity provider); `None` otherwise.
    async fn load_cached(
        &self,
        credential: Option<Credential<'_>>,
        headers: &HeaderMap,
    ) -> Option<Authenticated>;
}

/// The authentication chain of the proxy port: API keys, then each
/// [`Loader`] in order. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: api_key::ApiKeys,
    loaders: Arc<[Arc<dyn Loader>]>,
}

impl Authenticator {
    /// The chain: API keys, then the given loaders in order.
    pub fn new(keys: api_key::ApiKeys, loaders: Vec<Arc<dyn Loader>>) -> Self {
        Self {
            keys,
            loaders: loaders.into(),
        }
    }

    /// A tenant, through the key cache (for limits of another tenant's route).
    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<Arc<Tenant>>, AuthnError> {
        self.keys.tenant(tenant_id).await
    }

    /// The request's principal, or why there is none.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, AuthnError> {
        let credential = credential(headers)?;
        if let Some(Credential::ApiKey(key)) = credential {
            return self.keys.authenticate(key).await;
        }
        for loader in self.loaders.iter() {
            if let Some(result) = loader.load(credential, headers).await {
                return result;
            }
        }
        Err(match credential {
            Some(_) => AuthnError::UnsupportedToken,
            None => AuthnError::Missing,
        })
    }

    /// The request's principal if the caches alone prove it (API key
    /// lookup, verified JWT, live session), else `None`; never reads the
    /// store nor calls an identity provider. Used for sources blocked for
    /// failed authentications: a credential this instance already verified
    /// is not a guess, while anything else from them waits out the block.
    pub async fn authenticate_cached(&self, headers: &HeaderMap) -> Option<Authenticated> {
        let credential = credential(headers).ok()?;
        if let Some(Credential::ApiKey(key)) = credential {
            return self.keys.authenticate_cached(key).await;
        }
        for loader in self.loaders.iter() {
            if let Some(auth) = loader.load_cached(credential, headers).await {
                return Some(auth);
            }
        }
        None
    }
}

/// The single credential a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
