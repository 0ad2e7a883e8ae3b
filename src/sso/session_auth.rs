//! A browser's session cookie as a credential: the session's principal
//! (rebuilt when the admin API changed the user), the provider's tokens
//! refreshed when due (a refused refresh ends the session), logout's end of
//! the session, and [`SessionCookies`], the loader that plugs this into
//! authentication.

use std::sync::Arc;

use http::HeaderMap;
use time::OffsetDateTime;

use crate::authn::{AuthnError, Credential, Loader};
use crate::model::Session;
use crate::principal::{AuthMethod, Authenticated, Principal};

use super::claims::{self, Identity};
use super::oidc::ProviderError;
use super::session::{BuiltPrincipal, Live};
use super::web::cookie;
use super::{Sso, principal};

/// When to refresh: when the access token expires (else the ID token), a
/// little early.
pub(super) fn refresh_at(
    now: OffsetDateTime,
    expires_in: Option<std::time::Duration>,
    id_exp: i64,
) -> OffsetDateTime {
    // The provider's figures are not trusted not to overflow.
    let by_access = expires_in.and_then(|d| now.checked_add(time::Duration::try_from(d).ok()?));
    let by_id = OffsetDateTime::from_unix_timestamp(id_exp).ok();
    let at = by_access.or(by_id).unwrap_or(now);
    // Refresh a few seconds early, never sooner than a second from now.
    let early = at.checked_sub(time::Duration::seconds(5)).unwrap_or(at);
    early.max(now + time::Duration::seconds(1))
}

/// Single sign-on's browser sessions: the session cookie counts only when
/// the request sends no credential header.
#[derive(Debug, Clone)]
pub struct SessionCookies(pub Arc<Sso>);

#[async_trait::async_trait]
impl Loader for SessionCookies {
    async fn load(
        &self,
        credential: Option<Credential<'_>>,
        headers: &HeaderMap,
    ) -> Option<Result<Authenticated, AuthnError>> {
        if credential.is_some() {
            return None;
        }
        let cookie = self.0.session_cookie(headers)?;
        Some(self.0.session(cookie).await)
    }

    async fn load_cached(
        &self,
        credential: Option<Credential<'_>>,
        headers: &HeaderMap,
    ) -> Option<Authenticated> {
        if credential.is_some() {
            return None;
        }
        let cookie = self.0.session_cookie(headers)?;
        self.0.session_cached(cookie).await
    }
}

impl Sso {
    /// The session cookie's value in `headers`, if exactly one is there.
    pub fn session_cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, &self.cookie_name)
    }

    /// A session cookie from the session cache only, and only while no
    /// token refresh is due (that would call the provider).
    pub async fn session_cached(&self, cookie: &str) -> Option<Authenticated> {
        let live = self.sessions.get_cached(cookie).await.ok()??;
        if self.refresh_due(&live) {
            return None;
        }
        // Only a principal built under the current user epoch: rebuilding
        // one would read the store.
        let principal = live
            .principal
            .load_full()
            .filter(|b| b.epoch == self.directory.epoch(&b.principal.tenant_id))?
            .principal
            .clone();
        let tenant = self.cached_tenant(&principal.tenant_id).await?;
        Some(Authenticated { principal, tenant })
    }

    /// Authenticates a session cookie, refreshing the provider's tokens when due.
    pub async fn session(&self, cookie: &str) -> Result<Authenticated, AuthnError> {
        let live = self
            .sessions
            .get(cookie)
            .await
            .map_err(|e| AuthnError::Store(Arc::new(e)))?
            .ok_or(AuthnError::NoSession)?;
        self.refresh_if_due(&live).await?;
        let principal = self.session_principal(&live).await?;
        let tenant = self.tenant(&principal.tenant_id).await?;
        Ok(Authenticated { principal, tenant })
    }

    /// Whether the session's provider tokens are due for a refresh.
    pub(super) fn refresh_due(&self, live: &Live) -> bool {
        let s = live.session.lock().unwrap_or_else(|e| e.into_inner());
        s.refresh_token.is_some() && s.refresh_at.is_some_and(|at| self.sessions.now() >= at)
    }

    /// The session's principal, built from its record and the admin API's
    /// user, reused until a refresh changes the record or a user changes
    /// (a newer user epoch).
    pub(super) async fn session_principal(
        &self,
        live: &Live,
    ) -> Result<Arc<Principal>, AuthnError> {
        let principal = match live.principal.load_full() {
            Some(built) if built.epoch == self.directory.epoch(&built.principal.tenant_id) => {
                built.principal.clone()
            }
            _ => {
                let s = live.snapshot();
                let method = if s.auth_method == "saml" {
                    AuthMethod::Saml
                } else {
                    AuthMethod::Oidc
                };
                let identity = Identity {
                    tenant_id: s.tenant_id,
                    user_id: s.user_id,
                    email: s.email,
                    roles: s.roles,
                    grants: Vec::new(),
                };
                // A provider removed from the configuration takes its
                // sessions with it.
                let mapping = self.mapping_of(&s.provider).ok_or(AuthnError::NoSession)?;
                let (identity, epoch) = self.directory.resolve(mapping, identity).await?;
                let built = principal(&identity, method)?;
                live.principal.store(Some(Arc::new(BuiltPrincipal {
                    epoch,
                    principal: built.clone(),
                })));
                built
            }
        };
        Ok(principal)
    }

    /// Uses the session's refresh token once its provider tokens expired
    /// (one refresh at a time per session; the others wait and reuse it).
    pub(super) async fn refresh_if_due(&self, live: &Live) -> Result<(), AuthnError> {
        let due = || self.refresh_due(live);
        if !due() {
            return Ok(());
        }
        let _one = live.refreshing.lock().await;
        if !due() {
            return Ok(()); // another request refreshed it meanwhile
        }
        let s = live.snapshot();
        let Some(p) = self.provider(&s.provider) else {
            return Ok(());
        };
        let refresh_token = s.refresh_token.clone().unwrap_or_default();
        match p.refresh(&refresh_token, self.now()).await {
            Ok(refreshed) => {
                let now = self.sessions.now();
                let mut updated = s.clone();
                // A rotated refresh token replaces the spent one, with or
                // without a new ID token.
                if let Some(r) = refreshed.refresh_token {
                    updated.refresh_token = Some(r);
                }
                if let Some(t) = refreshed.id {
                    let identity = claims::identity(&p.config.mapping, &t.id.claims)
                        .map_err(AuthnError::Claims)?;
                    if identity.tenant_id != s.tenant_id || identity.user_id != s.user_id {
                        self.end_session(&s).await;
                        return Err(AuthnError::NoSession);
                    }
                    updated.roles = identity.roles;
                    updated.email = identity.email;
                    updated.refresh_at = Some(refresh_at(now, t.expires_in, t.id.exp));
                    updated.id_token = Some(t.id_token);
                } else {
                    let fallback = now.unix_timestamp() + 300;
                    updated.refresh_at = Some(refresh_at(now, refreshed.expires_in, fallback));
                }
                *live.session.lock().unwrap_or_else(|e| e.into_inner()) = updated;
                live.principal.store(None); // roles may have changed
                let saved = self
                    .sessions
                    .save(live)
                    .await
                    .map_err(|e| AuthnError::Store(Arc::new(e)))?;
                if !saved {
                    return Err(AuthnError::NoSession); // ended meanwhile
                }
                Ok(())
            }
            Err(ProviderError::Refused(reason)) => {
                tracing::info!(session_id = %s.session_id, reason = %reason, "Refresh refused by the provider; session ended.");
                self.end_session(&s).await;
                Err(AuthnError::NoSession)
            }
            Err(e) => {
                // The provider is down: keep the session (its lifetime still
                // bounds it) and try again in a little while.
                tracing::warn!(session_id = %s.session_id, error = %e, "Session refresh failed; retrying in 30s.");
                let retry = self.sessions.now() + std::time::Duration::from_secs(30);
                live.session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .refresh_at = Some(retry);
                Ok(())
            }
        }
    }

    pub(super) async fn end_session(&self, s: &Session) {
        if let Err(e) = self.sessions.end(&s.tenant_id, &s.session_id).await {
            tracing::warn!(error = %e, "Session not removed.");
        }
    }

    /// The session behind a cookie, for `/auth/userinfo`.
    pub async fn session_record(&self, headers: &HeaderMap) -> Option<Session> {
        let c = self.session_cookie(headers)?;
        let live = self.sessions.get(c).await.ok()??;
        Some(live.snapshot())
    }
}
