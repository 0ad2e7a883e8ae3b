//! The OpenID Connect login flow: `/auth/callback` checks the signed login
//! cookie and its `state` (used once), exchanges the code, verifies the ID
//! token (nonce included) and hands the identity to the shared login checks.

use http::{HeaderMap, HeaderValue, StatusCode};

use super::login::{LoginFailure, OpenSession};
use super::login_state::{self, LoginStateError};
use super::oidc::ProviderError;
use super::session_auth::refresh_at;
use super::token::TokenError;
use super::web::{Query, cookie};
use super::{Client, Reply, Sso, claims};

impl Sso {
    pub(super) async fn callback(
        &self,
        q: &Query<'_>,
        headers: &HeaderMap,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Reply {
        let clear_login = format!(
            "{}=; Path=/auth/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            login_state::COOKIE
        );
        let done = self.finish_login(q, headers, client).await;
        self.end_login(done, clear_login, client, request_id).await
    }

    /// The callback's checks in order; the new session's cookie and where to go.
    pub(super) async fn finish_login(
        &self,
        q: &Query<'_>,
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<(String, String), LoginFailure> {
        use StatusCode as S;
        let raw = cookie(headers, login_state::COOKIE)
            .ok_or_else(|| LoginFailure::new(S::UNAUTHORIZED, "missing_login_cookie"))?;
        let state = self.signer.open(raw, self.now()).map_err(|e| match e {
            LoginStateError::Invalid => {
                LoginFailure::new(S::UNAUTHORIZED, "invalid_login_cookie").suspicious()
            }
            LoginStateError::Expired => LoginFailure::new(S::UNAUTHORIZED, "login_expired"),
        })?;
        let given = q.get("state").unwrap_or_default();
        let matches = {
            use subtle::ConstantTimeEq;
            bool::from(given.as_bytes().ct_eq(state.state.as_bytes()))
        };
        if !matches {
            return Err(LoginFailure::new(S::UNAUTHORIZED, "state_mismatch"));
        }
        // Atomic: of two callbacks with one state, exactly one goes on,
        // on any replica (the store remembers it until the login expires).
        match self
            .store
            .remember_once(&format!("oidc-state:{}", state.state), state.expires)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(LoginFailure::new(S::UNAUTHORIZED, "replayed_state").suspicious());
            }
            Err(_) => {
                return Err(LoginFailure::new(
                    S::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                ));
            }
        }
        let p = self
            .provider(&state.provider)
            .ok_or_else(|| LoginFailure::new(S::UNAUTHORIZED, "unknown_provider"))?;
        let fail = |status, reason: &str| {
            let mut f = LoginFailure::new(status, reason);
            f.provider = p.config.name.clone();
            f
        };
        // RFC 9207: when the provider names itself, it must be this one.
        if q.get("iss").is_some_and(|iss| iss != p.config.issuer) {
            return Err(fail(S::UNAUTHORIZED, "wrong_issuer").suspicious());
        }
        if let Some(error) = q.get("error") {
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(fail(S::UNAUTHORIZED, &format!("provider_error:{error}")));
        }
        let code = q
            .get("code")
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or_else(|| fail(S::UNAUTHORIZED, "missing_code"))?;
        let tokens = p
            .exchange(&code, &state.verifier, &state.nonce, self.now())
            .await
            .map_err(|e| match e {
                ProviderError::Refused(_) => fail(S::UNAUTHORIZED, "code_rejected").suspicious(),
                ProviderError::Token(t @ TokenError::Nonce) => {
                    fail(S::UNAUTHORIZED, t.reason()).suspicious()
                }
                ProviderError::Token(t) => fail(S::UNAUTHORIZED, t.reason()),
                ProviderError::NotReady(_) => fail(S::SERVICE_UNAVAILABLE, "idp_unavailable"),
                ProviderError::NoIdToken => fail(S::BAD_GATEWAY, "no_id_token"),
                ProviderError::Call(e) => {
                    tracing::warn!(provider = %p.config.name, error = %e, "Token exchange failed.");
                    fail(S::BAD_GATEWAY, "idp_unreachable")
                }
            })?;
        let identity = claims::identity(&p.config.mapping, &tokens.id.claims)
            .map_err(|e| fail(S::UNAUTHORIZED, e.reason()))?;
        let now = self.sessions.now();
        let refresh_at = tokens
            .refresh_token
            .as_ref()
            .map(|_| refresh_at(now, tokens.expires_in, tokens.id.exp));
        let cookie = self
            .open_session(
                OpenSession {
                    provider: &p.config.name,
                    pinned: p.config.mapping.tenant.is_some(),
                    method: "oidc",
                    requested_tenant: state.tenant.as_deref(),
                    refresh_token: tokens.refresh_token,
                    refresh_at,
                    id_token: Some(tokens.id_token),
                    ends_by: None,
                },
                identity,
                headers,
                client,
            )
            .await?;
        Ok((state.rd, cookie))
    }
}
