//! One OpenID provider: discovery, the authorization-code flow with PKCE
//! (through the `openidconnect` crate, over our own HTTP client), and token
//! verification against its published keys ([`Jwks`]).
//!
//! Discovery runs at startup; if the provider cannot be reached then,
//! costguard still starts (API keys keep working), logins answer 503, and
//! discovery is retried in the background.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreTokenResponse};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadataWithLogout, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
};

use super::http::IdpClient;
use super::jwks::Jwks;
use super::token::{self, Expect, IdTokenExpect, TokenError, Verified};
use crate::config::{OidcProviderConfig, SsoConfig};

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What discovery found.
struct Discovered {
    client: Client,
    end_session: Option<String>,
}

/// A call to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Discovery has not succeeded yet.
    #[error("identity provider {0} not reachable yet")]
    NotReady(String),
    /// The provider refused the grant (bad, used or replayed code; revoked
    /// refresh token; wrong PKCE verifier).
    #[error("the identity provider refused the grant: {0}")]
    Refused(String),
    /// Transport or protocol failure.
    #[error("identity provider call failed: {0}")]
    Call(String),
    /// The token response had no ID token.
    #[error("no ID token in the token response")]
    NoIdToken,
    /// The ID token did not verify.
    #[error("ID token: {0}")]
    Token(#[from] TokenError),
}

/// A started login: where to send the browser and what to remember.
pub struct Authorization {
    /// The provider's authorization URL.
    pub url: String,
    /// `state`.
    pub state: String,
    /// `nonce`.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
}

/// Tokens from a code exchange or a refresh.
pub struct Tokens {
    /// The verified ID token's claims.
    pub id: Verified,
    /// The raw ID token (for the logout hint).
    pub id_token: String,
    /// A refresh token, if issued.
    pub refresh_token: Option<String>,
    /// Lifetime of the access token, if told.
    pub expires_in: Option<Duration>,
}

/// What a refresh brought: a new ID token (verified) if the provider sent
/// one, and the new refresh token if it rotates them.
pub struct Refreshed {
    /// The new ID token and what came with it.
    pub id: Option<Tokens>,
    /// A new refresh token (the old one may be spent).
    pub refresh_token: Option<String>,
    /// Lifetime of the new access token.
    pub expires_in: Option<Duration>,
}

/// Secrets inside: their `Debug` names the type only.
macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), " { .. }"))
            }
        }
    )*};
}
opaque_debug!(Authorization, Tokens, Refreshed);

/// One configured OpenID provider.
pub struct Provider {
    /// Its configuration.
    pub config: OidcProviderConfig,
    http: IdpClient,
    discovered: ArcSwapOption<Discovered>,
    /// Its signing keys.
    pub jwks: Jwks,
    leeway: Duration,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("ready", &self.discovered.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A provider not yet discovered.
    pub fn new(config: OidcProviderConfig, sso: &SsoConfig, http: IdpClient) -> Self {
        Self {
            jwks: Jwks::new(http.clone(), sso.jwks_ttl, sso.jwks_refetch_cooldown),
            config,
            http,
            discovered: ArcSwapOption::empty(),
            leeway: sso.clock_skew,
        }
    }

    /// Whether discovery has succeeded.
    pub fn is_ready(&self) -> bool {
        self.discovered.load().is_some()
    }

    /// Fetches the discovery document and the key set.
    pub async fn discover(&self) -> Result<(), ProviderError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ProviderError::Call(e.to_string()))?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| ProviderError::Call(error_chain(&e)))?;
        // The issuer is https (or loopback) by configuration; the endpoints
        // it names must be too: the token endpoint gets the client secret,
        // the key set decides what verifies.
        let endpoints = [
            Some(metadata.authorization_endpoint().url()),
            metadata.token_endpoint().map(|u| u.url()),
            Some(metadata.jwks_uri().url()),
        ];
        for url in endpoints.into_iter().flatten() {
            if !crate::config::secure_url(url) {
                return Err(ProviderError::Call(format!(
                    "discovery names a plain http endpoint off loopback: {url}"
                )));
            }
        }
        let end_session = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().to_string());
        self.jwks.set_uri(metadata.jwks_uri().url().to_string());
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| ProviderError::Call(e.to_string()))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        self.jwks.refresh().await.map_err(ProviderError::Call)?;
        self.discovered.store(Some(Arc::new(Discovered {
            client,
            end_session,
        })));
        Ok(())
    }

    /// Discovers, retrying in the background until it works.
    pub async fn discover_or_retry(self: &Arc<Self>) {
        if let Err(e) = self.discover().await {
            tracing::error!(provider = %self.config.name, error = %e, "OpenID discovery failed; logins through this provider answer 503 until it succeeds (retrying).");
            let this = self.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(2);
                loop {
                    tokio::time::sleep(wait).await;
                    match this.discover().await {
                        Ok(()) => {
                            tracing::info!(provider = %this.config.name, "OpenID discovery succeeded.");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(provider = %this.config.name, error = %e, "OpenID discovery failed again.");
                            wait = (wait * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            });
        } else {
            tracing::info!(provider = %self.config.name, issuer = %self.config.issuer, "OpenID provider discovered.");
        }
    }

    fn ready(&self) -> Result<Arc<Discovered>, ProviderError> {
        self.discovered
            .load_full()
            .ok_or_else(|| ProviderError::NotReady(self.config.name.clone()))
    }

    /// Starts a login: PKCE (S256), fresh `state` and `nonce`.
    pub fn authorize(&self, login_hint: Option<&str>) -> Result<Authorization, ProviderError> {
        let d = self.ready()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        if let Some(hint) = login_hint {
            req = req.add_extra_param("login_hint", hint.to_string());
        }
        let (url, state, nonce) = req.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges an authorization code and verifies the ID token.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: i64,
    ) -> Result<Tokens, ProviderError> {
        let d = self.ready()?;
        let resp: CoreTokenResponse = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| ProviderError::Call(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        self.tokens(resp, Some(nonce), now).await
    }

    /// Uses a refresh token; the new ID token (if any) is verified without
    /// a nonce, as refreshed ID tokens carry none of their own.
    pub async fn refresh(&self, refresh_token: &str, now: i64) -> Result<Refreshed, ProviderError> {
        let d = self.ready()?;
        let resp: CoreTokenResponse = d
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
            .map_err(|e| ProviderError::Call(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let refresh_token = resp.refresh_token().map(|t| t.secret().clone());
        let expires_in = resp.expires_in();
        let id = match resp.id_token() {
            None => None,
            Some(_) => Some(self.tokens(resp, None, now).await?),
        };
        Ok(Refreshed {
            id,
            refresh_token,
            expires_in,
        })
    }

    async fn tokens(
        &self,
        resp: CoreTokenResponse,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Tokens, ProviderError> {
        let raw = resp.id_token().ok_or(ProviderError::NoIdToken)?.to_string();
        let id = self.verify(&raw, nonce, now).await?;
        Ok(Tokens {
            id,
            id_token: raw,
            refresh_token: resp.refresh_token().map(|t| t.secret().clone()),
            expires_in: resp.expires_in(),
        })
    }

    /// Verifies an ID token (`nonce`: `Some` at login, `None` after a
    /// refresh, where a nonce is not repeated).
    async fn verify(
        &self,
        raw: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Verified, TokenError> {
        let header = token::header(raw, &self.config.algorithms)?;
        let key = self
            .jwks
            .key(header.kid.as_deref())
            .await
            .map_err(|_| TokenError::UnknownKey)?;
        let audiences = [self.config.client_id.clone()];
        let expect = Expect {
            issuer: &self.config.issuer,
            audiences: &audiences,
            leeway: self.leeway,
            id_token: Some(IdTokenExpect {
                client_id: &self.config.client_id,
                nonce: nonce.unwrap_or_default(),
            }),
            access_token: false,
            now,
        };
        match (
            nonce,
            token::verify(raw, &header, &key.decoding, key.alg, &expect),
        ) {
            // A refreshed ID token has no nonce to match; everything else
            // was checked before the nonce.
            (None, Err(TokenError::Nonce)) => {
                let expect = Expect {
                    id_token: None,
                    ..expect
                };
                token::verify(raw, &header, &key.decoding, key.alg, &expect)
            }
            (_, result) => result,
        }
    }

    /// Verifies a bearer access token: signature by this provider's keys
    /// (or its configured HS256 secret), `iss`, one of the configured
    /// audiences, `exp`.
    pub async fn verify_bearer(
        &self,
        raw: &str,
        header: &token::Header,
        now: i64,
    ) -> Result<Verified, TokenError> {
        let expect = Expect {
            issuer: &self.config.issuer,
            audiences: &self.config.audiences,
            leeway: self.leeway,
            id_token: None,
            access_token: true,
            now,
        };
        if header.alg == jsonwebtoken::Algorithm::HS256 {
            let secret = self
                .config
                .hs256_secret
                .as_deref()
                .ok_or(TokenError::Algorithm)?;
            let key = jsonwebtoken::DecodingKey::from_secret(secret);
            return token::verify(raw, header, &key, Some(header.alg), &expect);
        }
        let key = self
            .jwks
            .key(header.kid.as_deref())
            .await
            .map_err(|_| TokenError::UnknownKey)?;
        token::verify(raw, header, &key.decoding, key.alg, &expect)
    }

    /// The provider's end-session URL for this logout, if it has one.
    pub fn end_session_url(&self, id_token: Option<&str>) -> Option<String> {
        let d = self.discovered.load_full()?;
        let base = d.end_session.as_ref()?;
        let mut url = url::Url::parse(base).ok()?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.config.client_id);
            if let Some(t) = id_token {
                q.append_pair("id_token_hint", t);
            }
            if let Some(r) = &self.config.post_logout_redirect_url {
                q.append_pair("post_logout_redirect_uri", r);
            }
        }
        Some(url.to_string())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn token_error<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: RequestTokenError<RE, T>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) => ProviderError::Refused(r.to_string()),
        other => ProviderError::Call(error_chain(&other)),
    }
}
