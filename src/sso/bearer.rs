//! IdP-issued JWTs as bearer credentials on proxied requests: the token's
//! issuer and audience pick the provider, its keys verify it, its claims
//! map to a user of the admin API's directory; a verified token is cached
//! (by its SHA-256) until its `exp`, while its provider's key set and the
//! user's epoch stay the same. [`BearerTokens`] is the loader that plugs
//! this into authentication.

use std::sync::Arc;

use http::HeaderMap;

use crate::authn::{AuthnError, Credential, Loader};
use crate::principal::{AuthMethod, Authenticated, Principal};

use super::oidc::Provider;
use super::token::{self, TokenError};
use super::{Sso, claims, principal};

/// SHA-256 of a verified bearer token → what it proved.
pub(super) type TokenCache = moka::sync::Cache<[u8; 32], Arc<VerifiedBearer>>;

/// A bearer token that verified: usable from the cache until its `exp`,
/// and only while its provider's key set is the one it was checked with (a
/// refetch that drops a key must not leave its tokens cached).
#[derive(Debug)]
pub(super) struct VerifiedBearer {
    pub(super) principal: Arc<Principal>,
    pub(super) exp: i64,
    pub(super) provider: usize,
    pub(super) key_generation: u64,
    /// The user epoch it was resolved under (see [`users::Directory`]).
    pub(super) user_epoch: u64,
}

/// `iss` and `aud` of a token, read without verification (only to pick
/// the provider whose keys will verify it).
pub(super) fn peek_issuer_and_audience(raw: &str) -> Option<(String, Vec<String>)> {
    use base64::Engine as _;
    let payload = raw.split('.').nth(1)?;
    if payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: String,
        aud: Option<Aud>,
    }
    let peek: Peek = serde_json::from_slice(&bytes).ok()?;
    let aud = match peek.aud {
        Some(Aud::One(a)) => vec![a],
        Some(Aud::Many(v)) => v,
        None => Vec::new(),
    };
    Some((peek.iss, aud))
}

/// Single sign-on's bearer credentials: a bearer token that looks like a
/// JWT is verified against the configured issuers.
#[derive(Debug, Clone)]
pub struct BearerTokens(pub Arc<Sso>);

#[async_trait::async_trait]
impl Loader for BearerTokens {
    async fn load(
        &self,
        credential: Option<Credential<'_>>,
        _headers: &HeaderMap,
    ) -> Option<Result<Authenticated, AuthnError>> {
        match credential {
            Some(Credential::Bearer(token)) if looks_like_jwt(token) => {
                Some(self.0.bearer(token).await)
            }
            _ => None,
        }
    }

    async fn load_cached(
        &self,
        credential: Option<Credential<'_>>,
        _headers: &HeaderMap,
    ) -> Option<Authenticated> {
        match credential {
            Some(Credential::Bearer(token)) if looks_like_jwt(token) => {
                self.0.bearer_cached(token).await
            }
            _ => None,
        }
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Sso {
    /// Authenticates a bearer JWT from one of the configured issuers.
    pub async fn bearer(&self, raw: &str) -> Result<Authenticated, AuthnError> {
        let digest = crate::model::sha256(raw.as_bytes());
        let now = self.now();
        if let Some(cache) = &self.verified
            && let Some(hit) = cache.get(&digest)
            && now <= hit.exp
            && self.providers[hit.provider].jwks.generation() == hit.key_generation
            && self.directory.epoch(&hit.principal.tenant_id) == hit.user_epoch
        {
            let tenant = self.tenant(&hit.principal.tenant_id).await?;
            return Ok(Authenticated {
                principal: hit.principal.clone(),
                tenant,
            });
        }
        // Which provider's keys are to verify it: the one with this issuer
        // and an audience the token names. Configuration keeps audiences of
        // one issuer apart; a token naming two providers' audiences is
        // refused rather than given to either.
        let (issuer, audiences) =
            peek_issuer_and_audience(raw).ok_or(AuthnError::Token(TokenError::Malformed))?;
        let mut same_issuer = false;
        let mut candidates = self.providers.iter().enumerate().filter(|(_, p)| {
            let issuer_matches = p.config.issuer == issuer;
            same_issuer |= issuer_matches;
            issuer_matches && p.config.audiences.iter().any(|a| audiences.contains(a))
        });
        let (index, p) = match (candidates.next(), candidates.next()) {
            (Some(one), None) => one,
            (Some(_), Some(_)) => return Err(AuthnError::Token(TokenError::Audience)),
            (None, _) if same_issuer => return Err(AuthnError::Token(TokenError::Audience)),
            (None, _) => return Err(AuthnError::Token(TokenError::Issuer)),
        };
        let key_generation = p.jwks.generation();
        let (auth, exp, user_epoch) = self.bearer_with(p, raw).await?;
        if let Some(cache) = &self.verified {
            cache.insert(
                digest,
                Arc::new(VerifiedBearer {
                    principal: auth.principal.clone(),
                    exp,
                    provider: index,
                    key_generation,
                    user_epoch,
                }),
            );
        }
        Ok(auth)
    }

    pub(super) async fn bearer_with(
        &self,
        p: &Provider,
        raw: &str,
    ) -> Result<(Authenticated, i64, u64), AuthnError> {
        let header = token::header(raw, &p.config.algorithms).map_err(AuthnError::Token)?;
        let verified = p
            .verify_bearer(raw, &header, self.now())
            .await
            .map_err(AuthnError::Token)?;
        let mapping = &p.config.mapping;
        let identity = claims::identity(mapping, &verified.claims).map_err(AuthnError::Claims)?;
        let (identity, user_epoch) = self.directory.resolve(mapping, identity).await?;
        let tenant = self
            .tenant_for(p.config.mapping.tenant.is_some(), &identity.tenant_id)
            .await?;
        let principal = principal(&identity, AuthMethod::Jwt)?;
        Ok((
            Authenticated { principal, tenant },
            verified.exp,
            user_epoch,
        ))
    }

    /// A bearer JWT from the verified-token cache only (see
    /// [`crate::authn::Authenticator::authenticate_cached`]).
    pub async fn bearer_cached(&self, raw: &str) -> Option<Authenticated> {
        let digest = crate::model::sha256(raw.as_bytes());
        let hit = self.verified.as_ref()?.get(&digest)?;
        if self.now() > hit.exp
            || self.providers[hit.provider].jwks.generation() != hit.key_generation
            || self.directory.epoch(&hit.principal.tenant_id) != hit.user_epoch
        {
            return None;
        }
        let tenant = self.cached_tenant(&hit.principal.tenant_id).await?;
        Some(Authenticated {
            principal: hit.principal.clone(),
            tenant,
        })
    }
}
