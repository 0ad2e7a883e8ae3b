//! Single sign-on: browser logins through OpenID providers (authorization
//! code + PKCE), the server-side sessions they create, and the providers'
//! JWT access tokens as bearer credentials.
//!
//! ```text
//! /auth/login?rd=&tenant=&provider=&email=   pick a provider → login cookie (signed: state,
//!                                             nonce, PKCE verifier, rd) → 302 to the provider
//! /auth/callback?code=&state=                 cookie + state (once) → code exchange → ID token
//!                                             verified → claims mapped → tenant checks →
//!                                             new session, cookie → 302 to rd
//! /auth/logout                                session ended → provider's end-session, or /
//! /auth/userinfo                              the caller's principal as JSON
//! /auth/saml/metadata                         the SAML service provider's metadata
//! /auth/saml/acs (POST SAMLResponse)          SAML login cookie (request id) → response
//!                                             verified (see [`saml`]) → assertion id used
//!                                             once → same tenant checks and session as OIDC
//! ```
//! A SAML login starts at `/auth/login` too: the chosen provider decides
//! between an OIDC authorization request and a SAML AuthnRequest.
//! Every login, logout and failed login is audited (`auth.login`,
//! `auth.logout`, `auth.login_failed` with its reason); a reused `state`, a
//! refused code or a nonce mismatch also writes `security.suspicious`.

pub mod claims;
pub mod crypto;
pub mod http;
pub mod jwks;
pub mod login_state;
pub mod oidc;
pub mod saml;
pub mod sealed;
pub mod session;
pub mod token;
pub mod users;

use std::sync::Arc;

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use sha2::Digest;
use time::OffsetDateTime;

use crate::audit::{Audit, Durability, Event};
use crate::authn::api_key::ApiKeys;
use crate::authn::{AuthMethod, Authenticated, AuthnError, IdentityHeaders, Principal};
use crate::config::SsoConfig;
use crate::error::{json_error, json_response};
use crate::model::{Session, TenantStatus};
use crate::store::Store;
use claims::{ClaimError, Identity};
use login_state::{LoginState, LoginStateError, Signer};
use oidc::{Provider, ProviderError, unix_now};
use session::{BuiltPrincipal, Clock, Live, NewSession, Sessions};
use token::TokenError;

/// Single sign-on. Cheap to share (`Arc`).
pub struct Sso {
    providers: Vec<Arc<Provider>>,
    saml: Vec<Arc<saml::SamlProvider>>,
    saml_max_response_bytes: usize,
    store: Arc<dyn Store>,
    /// The sessions.
    pub sessions: Sessions,
    signer: Signer,
    cookie_name: String,
    cookie_lifetime: std::time::Duration,
    login_timeout: std::time::Duration,
    keys: ApiKeys,
    /// The admin API's users: disabled/deleted users refused, their roles.
    directory: Arc<users::Directory>,
    audit: Option<Audit>,
    /// `state` values already used at the callback (replays are suspicious).
    used_states: moka::sync::Cache<String, ()>,
    /// Verified bearer tokens: SHA-256 of the token → (principal, exp).
    verified: Option<TokenCache>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// Why a login failed: what the browser is told, what the audit says.
#[derive(Debug)]
struct LoginFailure {
    status: StatusCode,
    reason: String,
    suspicious: bool,
    tenant_id: String,
    user_id: String,
    provider: String,
    method: &'static str,
}

impl LoginFailure {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            suspicious: false,
            tenant_id: String::new(),
            user_id: String::new(),
            provider: String::new(),
            method: "oidc",
        }
    }

    fn saml(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            method: "saml",
            ..Self::new(status, reason)
        }
    }

    fn suspicious(mut self) -> Self {
        self.suspicious = true;
        self
    }
}

/// Facts about the browser's request, for audit records.
#[derive(Debug, Clone)]
pub struct Client {
    /// Address.
    pub ip: String,
    /// User agent.
    pub user_agent: String,
    /// Request id.
    pub request_id: String,
}

type Reply = Response<Full<Bytes>>;

/// The SAML login cookie: the signed AuthnRequest id (and where to go
/// after) that the ACS checks `InResponseTo` against. `SameSite=None`: the
/// IdP's answer is a cross-site POST, which carries no `Lax` cookie.
/// `__Host-` (so `Path=/`, no `Domain`): a sibling subdomain cannot plant
/// its own login state in the browser. Stripped before forwarding.
pub const SAML_COOKIE: &str = "__Host-costguard_saml";

/// Longest a SAML response may take to verify (libxml2 + xmlsec run on a
/// blocking thread; this bounds what a request waits for).
const SAML_VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A provider of either kind.
#[derive(Clone, Copy)]
enum Chosen<'a> {
    Oidc(&'a Arc<Provider>),
    Saml(&'a Arc<saml::SamlProvider>),
}

impl Chosen<'_> {
    fn name(&self) -> &str {
        match self {
            Chosen::Oidc(p) => &p.config.name,
            Chosen::Saml(p) => &p.config.name,
        }
    }

    fn tenant(&self) -> Option<&str> {
        match self {
            Chosen::Oidc(p) => p.config.mapping.tenant.as_deref(),
            Chosen::Saml(p) => p.config.mapping.tenant.as_deref(),
        }
    }

    fn email_domains(&self) -> &std::collections::BTreeMap<String, String> {
        match self {
            Chosen::Oidc(p) => &p.config.mapping.email_domains,
            Chosen::Saml(p) => &p.config.mapping.email_domains,
        }
    }
}

/// What a verified login (either kind) brings to its session.
struct OpenSession<'a> {
    provider: &'a str,
    /// The provider is pinned to one tenant.
    pinned: bool,
    method: &'static str,
    /// The tenant `/auth/login` was asked for.
    requested_tenant: Option<&'a str>,
    refresh_token: Option<String>,
    refresh_at: Option<OffsetDateTime>,
    id_token: Option<String>,
    /// The IdP's own end of the session (SAML `SessionNotOnOrAfter`).
    ends_by: Option<OffsetDateTime>,
}

/// SHA-256 of a verified bearer token → what it proved.
type TokenCache = moka::sync::Cache<[u8; 32], Arc<VerifiedBearer>>;

/// A bearer token that verified: usable from the cache until its `exp`,
/// and only while its provider's key set is the one it was checked with (a
/// refetch that drops a key must not leave its tokens cached).
#[derive(Debug)]
struct VerifiedBearer {
    principal: Arc<Principal>,
    exp: i64,
    provider: usize,
    key_generation: u64,
    /// The user epoch it was resolved under (see [`users::Directory`]).
    user_epoch: u64,
}

impl Sso {
    /// Builds the providers and discovers them (each retries in the
    /// background if its provider is down).
    pub async fn start(
        config: &SsoConfig,
        store: Arc<dyn Store>,
        keys: ApiKeys,
        directory: Arc<users::Directory>,
        audit: Option<Audit>,
        clock: Clock,
    ) -> Result<Arc<Self>, String> {
        crypto::install();
        let http = http::IdpClient::new(
            config.ca_file.as_deref(),
            config.http_timeout,
            config.max_response_bytes,
        )
        .map_err(|e| format!("sso.ca_file: {e}"))?;
        let key = crate::audit::writer::load_or_create_key(&config.cookie_key_file)
            .map_err(|e| format!("sso.cookie_key_file: {e}"))?;
        let providers: Vec<Arc<Provider>> = config
            .oidc
            .iter()
            .map(|p| Arc::new(Provider::new(p.clone(), config, http.clone())))
            .collect();
        for p in &providers {
            p.discover_or_retry().await;
        }
        let saml = config
            .saml
            .iter()
            .map(|p| Arc::new(saml::SamlProvider::new(p.clone())))
            .collect();
        Ok(Arc::new(Self {
            providers,
            saml,
            saml_max_response_bytes: config.saml_max_response_bytes,
            store: store.clone(),
            sessions: Sessions::new(
                store,
                config.session_lifetime,
                config.session_idle_timeout,
                config.session_cache_capacity,
                clock,
                sealed::Sealer::new(&key),
            ),
            signer: Signer::new(&key),
            cookie_name: config.session_cookie.clone(),
            cookie_lifetime: config.session_lifetime,
            login_timeout: config.login_timeout,
            keys,
            directory,
            audit,
            used_states: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(config.login_timeout)
                .build(),
            verified: (config.token_cache_capacity > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(config.token_cache_capacity)
                    .time_to_live(std::time::Duration::from_secs(300))
                    .build()
            }),
        }))
    }

    /// The configured OpenID providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Largest `/auth/saml/acs` body read: the response's bound in base64,
    /// URL-encoded at worst (`+`, `/`, `=` become three bytes), and RelayState.
    pub fn acs_body_limit(&self) -> usize {
        self.saml_max_response_bytes / 3 * 4 * 3 + 16 * 1024
    }

    /// The store (sessions, used SAML assertion ids).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The session cookie's value in `headers`, if exactly one is there.
    pub fn session_cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, &self.cookie_name)
    }

    /// Removes the session and login cookies from `Cookie` headers, so the
    /// upstream never sees a session secret; other cookies pass unchanged.
    pub fn strip_cookies(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(header::COOKIE) {
            return;
        }
        let ours = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            name == self.cookie_name || name == login_state::COOKIE || name == SAML_COOKIE
        };
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| {
                let text = v.to_str().ok()?;
                let rest: Vec<&str> = text
                    .split(';')
                    .map(str::trim)
                    .filter(|p| !ours(p))
                    .collect();
                if rest.is_empty() {
                    return None;
                }
                HeaderValue::from_str(&rest.join("; ")).ok()
            })
            .collect();
        headers.remove(header::COOKIE);
        for v in kept {
            headers.append(header::COOKIE, v);
        }
    }

    // ----- credentials on proxied requests -----

    /// Authenticates a bearer JWT from one of the configured issuers.
    pub async fn bearer(&self, raw: &str) -> Result<Authenticated, AuthnError> {
        let digest: [u8; 32] = sha2::Sha256::digest(raw.as_bytes()).into();
        let now = unix_now();
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

    async fn bearer_with(
        &self,
        p: &Provider,
        raw: &str,
    ) -> Result<(Authenticated, i64, u64), AuthnError> {
        let header = token::header(raw, &p.config.algorithms).map_err(AuthnError::Token)?;
        let verified = p
            .verify_bearer(raw, &header)
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
        let digest: [u8; 32] = sha2::Sha256::digest(raw.as_bytes()).into();
        let hit = self.verified.as_ref()?.get(&digest)?;
        if unix_now() > hit.exp
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

    /// An active tenant from the cache only.
    async fn cached_tenant(&self, tenant_id: &str) -> Option<Arc<crate::model::Tenant>> {
        self.keys
            .cached_tenant(tenant_id)
            .await
            .flatten()
            .filter(|t| t.status != TenantStatus::Suspended)
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
    fn refresh_due(&self, live: &Live) -> bool {
        let s = live.session.lock().unwrap_or_else(|e| e.into_inner());
        s.refresh_token.is_some() && s.refresh_at.is_some_and(|at| self.sessions.now() >= at)
    }

    /// The session's principal, built from its record and the admin API's
    /// user, reused until a refresh changes the record or a user changes
    /// (a newer user epoch).
    async fn session_principal(&self, live: &Live) -> Result<Arc<Principal>, AuthnError> {
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
    async fn refresh_if_due(&self, live: &Live) -> Result<(), AuthnError> {
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
        match p.refresh(&refresh_token).await {
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

    async fn end_session(&self, s: &Session) {
        if let Err(e) = self.sessions.end(&s.tenant_id, &s.session_id).await {
            tracing::warn!(error = %e, "Session not removed.");
        }
    }

    fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.name == name)
    }

    /// The identity mapping of the provider (OIDC or SAML) named `name`.
    fn mapping_of(&self, name: &str) -> Option<&crate::config::IdentityMapping> {
        match self.provider(name) {
            Some(p) => Some(&p.config.mapping),
            None => self.saml_provider(name).map(|p| &p.config.mapping),
        }
    }

    /// Forgets what is cached of a user the admin API changed: their
    /// sessions and tokens are checked against the store again.
    pub async fn forget_user(&self, tenant_id: &str, user_id: &str) {
        self.directory.forget(tenant_id, user_id).await;
    }

    /// The tenant, which must exist and be active.
    async fn tenant(&self, tenant_id: &str) -> Result<Arc<crate::model::Tenant>, AuthnError> {
        let tenant = self
            .keys
            .tenant(tenant_id)
            .await?
            .ok_or(AuthnError::Claims(ClaimError::NoTenant))?;
        if tenant.status == TenantStatus::Suspended {
            return Err(AuthnError::TenantSuspended);
        }
        Ok(tenant)
    }

    /// The tenant of a login or token through `p`: it must exist and be
    /// active, and a tenant with its own provider accepts only that one.
    async fn tenant_for(
        &self,
        provider_pinned: bool,
        tenant_id: &str,
    ) -> Result<Arc<crate::model::Tenant>, AuthnError> {
        let tenant = self.tenant(tenant_id).await?;
        if !provider_pinned && self.own_provider(tenant_id).is_some() {
            return Err(AuthnError::Claims(ClaimError::WrongTenant));
        }
        Ok(tenant)
    }

    /// The provider pinned to `tenant_id`, if it has one of its own.
    fn own_provider(&self, tenant_id: &str) -> Option<Chosen<'_>> {
        if let Some(p) = self
            .providers
            .iter()
            .find(|p| p.config.mapping.tenant.as_deref() == Some(tenant_id))
        {
            return Some(Chosen::Oidc(p));
        }
        self.saml
            .iter()
            .find(|p| p.config.mapping.tenant.as_deref() == Some(tenant_id))
            .map(Chosen::Saml)
    }

    // ----- the /auth endpoints -----

    /// Answers `/auth/*`.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Reply {
        let q = Query(query.unwrap_or(""));
        match (path, method) {
            ("/auth/login", &Method::GET | &Method::HEAD) => self.login(&q, request_id),
            ("/auth/callback", &Method::GET) => {
                self.callback(&q, headers, client, request_id).await
            }
            ("/auth/logout", &Method::GET | &Method::POST) => {
                self.logout(&q, headers, client).await
            }
            ("/auth/saml/metadata", &Method::GET | &Method::HEAD) => {
                self.saml_metadata(&q, request_id)
            }
            (
                "/auth/login"
                | "/auth/callback"
                | "/auth/logout"
                | "/auth/saml/metadata"
                | "/auth/saml/acs",
                _,
            ) => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
                request_id,
            ),
            _ => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
                request_id,
            ),
        }
    }

    /// Every provider, OpenID first.
    fn all_providers(&self) -> impl Iterator<Item = Chosen<'_>> {
        self.providers
            .iter()
            .map(Chosen::Oidc)
            .chain(self.saml.iter().map(Chosen::Saml))
    }

    /// Picks the provider for a login.
    fn choose(&self, q: &Query<'_>) -> Result<Chosen<'_>, &'static str> {
        if let Some(name) = q.get("provider") {
            return self
                .all_providers()
                .find(|p| p.name() == name)
                .ok_or("unknown provider");
        }
        if let Some(tenant) = q.get("tenant") {
            if let Some(p) = self.own_provider(&tenant) {
                return Ok(p);
            }
            let mut shared = self.all_providers().filter(|p| p.tenant().is_none());
            return match (shared.next(), shared.next()) {
                (Some(p), None) => Ok(p),
                (None, _) => Err("no identity provider serves this tenant"),
                _ => Err("several providers could serve this tenant: name one with ?provider="),
            };
        }
        if let Some(email) = q.get("email").or_else(|| q.get("login_hint"))
            && let Some((_, domain)) = email.rsplit_once('@')
        {
            let domain = domain.to_ascii_lowercase();
            if let Some(p) = self
                .all_providers()
                .find(|p| p.email_domains().contains_key(&domain))
            {
                return Ok(p);
            }
        }
        let mut all = self.all_providers();
        match (all.next(), all.next()) {
            (Some(only), None) => Ok(only),
            (None, _) => Err("single sign-on is not configured"),
            _ => Err("several identity providers: choose one with ?tenant=, ?email= or ?provider="),
        }
    }

    fn login(&self, q: &Query<'_>, request_id: &HeaderValue) -> Reply {
        let p = match self.choose(q) {
            Ok(p) => p,
            Err(message) => {
                return json_error(StatusCode::BAD_REQUEST, "bad_request", message, request_id);
            }
        };
        let tenant = q.get("tenant");
        if tenant
            .as_deref()
            .is_some_and(|t| !crate::model::is_tenant_id(t))
        {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "tenant is not a tenant id",
                request_id,
            );
        }
        let rd = safe_redirect(q.get("rd").as_deref()).to_string();
        let p = match p {
            Chosen::Oidc(p) => p,
            Chosen::Saml(p) => return self.saml_login(p, rd, tenant),
        };
        let hint = q
            .get("email")
            .or_else(|| q.get("login_hint"))
            .filter(|e| e.len() <= 256);
        let auth = match p.authorize(hint.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "idp_unavailable",
                    &e.to_string(),
                    request_id,
                );
            }
        };
        let state = LoginState {
            provider: p.config.name.clone(),
            state: auth.state,
            nonce: auth.nonce,
            verifier: auth.verifier,
            rd,
            tenant,
            expires: unix_now() + self.login_timeout.as_secs() as i64,
        };
        let cookie = format!(
            "{}={}; Path=/auth/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            login_state::COOKIE,
            self.signer.seal(&state),
            self.login_timeout.as_secs()
        );
        redirect(&auth.url, &[cookie])
    }

    async fn callback(
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
        match self.finish_login(q, headers, client).await {
            Ok((rd, cookie)) => redirect(&rd, &[clear_login, cookie]),
            Err(f) => {
                self.audit_failure(&f, client).await;
                let message = format!("login failed: {}", f.reason);
                let mut resp = json_error(f.status, "login_failed", &message, request_id);
                if let Ok(v) = HeaderValue::from_str(&clear_login) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                resp
            }
        }
    }

    /// The callback's checks in order; the new session's cookie and where to go.
    async fn finish_login(
        &self,
        q: &Query<'_>,
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<(String, String), LoginFailure> {
        use StatusCode as S;
        let raw = cookie(headers, login_state::COOKIE)
            .ok_or_else(|| LoginFailure::new(S::UNAUTHORIZED, "missing_login_cookie"))?;
        let state = self.signer.open(raw, unix_now()).map_err(|e| match e {
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
        // Atomic: of two callbacks with one state, exactly one goes on.
        if !self
            .used_states
            .entry(state.state.clone())
            .or_insert(())
            .is_fresh()
        {
            return Err(LoginFailure::new(S::UNAUTHORIZED, "replayed_state").suspicious());
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
            .exchange(&code, &state.verifier, &state.nonce)
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

    /// After a verified login: the tenant checks, the new session (the one
    /// the browser came with is ended), `auth.login`; the session cookie.
    async fn open_session(
        &self,
        login: OpenSession<'_>,
        identity: Identity,
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<String, LoginFailure> {
        use StatusCode as S;
        let fail = |status, reason: &str| {
            let mut f = LoginFailure::new(status, reason);
            f.method = login.method;
            f.provider = login.provider.to_string();
            f.tenant_id = identity.tenant_id.clone();
            f.user_id = identity.user_id.clone();
            f
        };
        if login
            .requested_tenant
            .is_some_and(|t| t != identity.tenant_id)
        {
            return Err(fail(S::FORBIDDEN, "tenant_mismatch"));
        }
        // The admin API's word on this user: disabled or deleted users do
        // not get a session. The session keeps the provider's roles; the
        // user's effective roles are resolved again on every use.
        let mapping = self
            .mapping_of(login.provider)
            .ok_or_else(|| fail(S::UNAUTHORIZED, "unknown_provider"))?;
        let effective = self
            .directory
            .resolve(mapping, identity.clone())
            .await
            .map(|(effective, _)| effective)
            .map_err(|e| match e {
                AuthnError::Claims(c) => fail(S::FORBIDDEN, c.reason()),
                _ => fail(S::SERVICE_UNAVAILABLE, "store_unavailable"),
            })?;
        self.tenant_for(login.pinned, &identity.tenant_id)
            .await
            .map_err(|e| {
                let (status, reason) = match e {
                    AuthnError::TenantSuspended => (S::FORBIDDEN, "tenant_suspended"),
                    AuthnError::Store(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
                    AuthnError::Claims(ClaimError::WrongTenant) => {
                        (S::FORBIDDEN, "tenant_requires_own_provider")
                    }
                    _ => (S::FORBIDDEN, "unknown_tenant"),
                };
                fail(status, reason)
            })?;
        // A new session id at every login: an old cookie (fixed by an
        // attacker, or the user's previous session) is ended.
        if let Some(old) = self.session_cookie(headers)
            && let Err(e) = self.sessions.end_by_cookie(old).await
        {
            tracing::warn!(error = %e, "The previous session was not ended at login.");
        }
        let (value, session) = self
            .sessions
            .create(NewSession {
                identity: &identity,
                method: login.method,
                provider: login.provider,
                refresh_token: login.refresh_token,
                refresh_at: login.refresh_at,
                id_token: login.id_token,
                ends_by: login.ends_by,
            })
            .await
            .map_err(|_| fail(S::SERVICE_UNAVAILABLE, "store_unavailable"))?;
        self.audit(
            "auth.login",
            &session.tenant_id,
            &session.user_id,
            json!({
                "auth_method": login.method,
                "provider": login.provider,
                "session_id": session.session_id,
                "roles": effective.roles,
            }),
            client,
        )
        .await;
        Ok(format!(
            "{}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            self.cookie_name,
            value,
            self.cookie_lifetime.as_secs()
        ))
    }

    async fn logout(&self, q: &Query<'_>, headers: &HeaderMap, client: &Client) -> Reply {
        let clear = format!(
            "{}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            self.cookie_name
        );
        let ended = match self.session_cookie(headers) {
            Some(c) => self.sessions.end_by_cookie(c).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Session not removed at logout.");
                None
            }),
            None => None,
        };
        let mut to = safe_redirect(q.get("rd").as_deref()).to_string();
        if let Some(s) = &ended {
            self.audit(
                "auth.logout",
                &s.tenant_id,
                &s.user_id,
                json!({"auth_method": s.auth_method, "provider": s.provider, "session_id": s.session_id}),
                client,
            )
            .await;
            if let Some(url) = self
                .provider(&s.provider)
                .and_then(|p| p.end_session_url(s.id_token.as_deref()))
            {
                to = url;
            }
        }
        redirect(&to, &[clear])
    }

    /// `/auth/userinfo` for an authenticated caller.
    pub fn userinfo(auth: &Authenticated, session: Option<&Session>) -> Reply {
        let p = &auth.principal;
        let mut body = json!({
            "tenant_id": &*p.tenant_id,
            "user_id": &*p.user_id,
            "roles": &*p.roles,
            "auth_method": p.method.as_str(),
        });
        if let Some(s) = session {
            body["email"] = json!(s.email);
            body["provider"] = json!(s.provider);
            body["session_id"] = json!(s.session_id);
            body["expires_at"] = json!(rfc3339(s.expires_at));
        }
        if let Some(k) = &p.key_id {
            body["key_id"] = json!(&**k);
        }
        json_response(StatusCode::OK, &body)
    }

    /// The session behind a cookie, for `/auth/userinfo`.
    pub async fn session_record(&self, headers: &HeaderMap) -> Option<Session> {
        let c = self.session_cookie(headers)?;
        let live = self.sessions.get(c).await.ok()??;
        Some(live.snapshot())
    }

    async fn audit_failure(&self, f: &LoginFailure, client: &Client) {
        let details = json!({"reason": f.reason, "provider": f.provider, "auth_method": f.method});
        self.audit(
            "auth.login_failed",
            &f.tenant_id,
            &f.user_id,
            details.clone(),
            client,
        )
        .await;
        if f.suspicious {
            self.audit(
                "security.suspicious",
                &f.tenant_id,
                &f.user_id,
                details,
                client,
            )
            .await;
        }
    }

    async fn audit(
        &self,
        event_type: &'static str,
        tenant_id: &str,
        user_id: &str,
        details: serde_json::Value,
        client: &Client,
    ) {
        let Some(audit) = &self.audit else {
            return;
        };
        let mut event = Event::new(event_type, details);
        event.tenant_id = tenant_id.to_string();
        event.user_id = user_id.to_string();
        event.ip_address = client.ip.clone();
        event.user_agent = client.user_agent.clone();
        event.request_id = client.request_id.clone();
        if let Err(e) = audit.record(event, Durability::Written).await {
            tracing::error!(error = %e, event_type, "Login event not recorded in the audit log.");
        }
    }
}

impl Sso {
    // ----- SAML -----

    fn saml_provider(&self, name: &str) -> Option<&Arc<saml::SamlProvider>> {
        self.saml.iter().find(|p| p.config.name == name)
    }

    /// `/auth/login` for a SAML provider: a new AuthnRequest id in the
    /// signed SAML login cookie, and the browser sent to the IdP with it.
    fn saml_login(&self, p: &saml::SamlProvider, rd: String, tenant: Option<String>) -> Reply {
        let request_id = saml::new_request_id();
        let url = p.login_url(&request_id, self.sessions.now());
        let state = LoginState {
            provider: p.config.name.clone(),
            state: request_id,
            nonce: String::new(),
            verifier: String::new(),
            rd,
            tenant,
            expires: unix_now() + self.login_timeout.as_secs() as i64,
        };
        let cookie = format!(
            "{SAML_COOKIE}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=None",
            self.signer.seal(&state),
            self.login_timeout.as_secs()
        );
        redirect(&url, &[cookie])
    }

    /// `/auth/saml/metadata[?provider=]`: the SP metadata to give the IdP.
    fn saml_metadata(&self, q: &Query<'_>, request_id: &HeaderValue) -> Reply {
        let chosen: Vec<&saml::SamlProvider> = match q.get("provider") {
            Some(name) => self
                .saml_provider(&name)
                .map(|p| &**p)
                .into_iter()
                .collect(),
            None => {
                let Some(first) = self.saml.first() else {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no SAML provider is configured",
                        request_id,
                    );
                };
                let same = |p: &&Arc<saml::SamlProvider>| {
                    p.config.sp_entity_id == first.config.sp_entity_id
                };
                if !self.saml.iter().all(|p| same(&p)) {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "several SAML service providers: name one with ?provider=",
                        request_id,
                    );
                }
                self.saml.iter().map(|p| &**p).collect()
            }
        };
        match saml::SamlProvider::metadata(&chosen) {
            Some(xml) => {
                let mut resp = Response::new(Full::new(Bytes::from(xml)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/samlmetadata+xml"),
                );
                resp
            }
            None => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown provider",
                request_id,
            ),
        }
    }

    /// `POST /auth/saml/acs` (HTTP-POST binding; `form` is the body).
    pub async fn acs(
        &self,
        form: &[u8],
        headers: &HeaderMap,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Reply {
        let clear = format!("{SAML_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=None");
        match self.finish_saml(form, headers, client).await {
            Ok((rd, cookie)) => redirect(&rd, &[clear, cookie]),
            Err(f) => {
                self.audit_failure(&f, client).await;
                let message = format!("login failed: {}", f.reason);
                let mut resp = json_error(f.status, "login_failed", &message, request_id);
                if let Ok(v) = HeaderValue::from_str(&clear) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                resp
            }
        }
    }

    /// A response refused before it could be read (too large): 401 and
    /// `auth.login_failed`, like every other refused response.
    pub async fn acs_refused(
        &self,
        reason: &str,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Reply {
        let f = LoginFailure::saml(StatusCode::UNAUTHORIZED, reason);
        self.audit_failure(&f, client).await;
        json_error(
            f.status,
            "login_failed",
            &format!("login failed: {reason}"),
            request_id,
        )
    }

    /// The ACS's checks in order; the new session's cookie and where to go.
    async fn finish_saml(
        &self,
        form: &[u8],
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<(String, String), LoginFailure> {
        use StatusCode as S;
        let (mut response, mut relay_state) = (None, None);
        for (k, v) in url::form_urlencoded::parse(form) {
            let slot = match &*k {
                "SAMLResponse" => &mut response,
                "RelayState" => &mut relay_state,
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err(LoginFailure::saml(S::BAD_REQUEST, "malformed_response"));
            }
        }
        let response =
            response.ok_or_else(|| LoginFailure::saml(S::BAD_REQUEST, "missing_saml_response"))?;
        let refused = |e: saml::SamlError, provider: &str| {
            let mut f = LoginFailure::saml(S::UNAUTHORIZED, e.reason());
            f.suspicious = e.suspicious();
            f.provider = provider.to_string();
            f
        };
        let xml = saml::decode_response(&response, self.saml_max_response_bytes)
            .map_err(|e| refused(e, ""))?;
        // Which request this answers: the one in this browser's SAML login
        // cookie. Without it, only a provider that accepts IdP-initiated
        // logins, found by the (not yet verified) issuer.
        let login = match cookie(headers, SAML_COOKIE) {
            Some(raw) => Some(self.signer.open(raw, unix_now()).map_err(|e| match e {
                LoginStateError::Invalid => {
                    LoginFailure::saml(S::UNAUTHORIZED, "invalid_login_cookie").suspicious()
                }
                LoginStateError::Expired => LoginFailure::saml(S::UNAUTHORIZED, "login_expired"),
            })?),
            // Two of them is not "none": it must not fall back to the
            // IdP-initiated path.
            None if cookie_named(headers, SAML_COOKIE) => {
                return Err(
                    LoginFailure::saml(S::UNAUTHORIZED, "invalid_login_cookie").suspicious()
                );
            }
            None => None,
        };
        let p = match &login {
            Some(l) => self
                .saml_provider(&l.provider)
                .ok_or_else(|| LoginFailure::saml(S::UNAUTHORIZED, "unknown_provider"))?,
            None => {
                let issuer = saml::peek_issuer(&xml);
                self.saml
                    .iter()
                    .find(|p| {
                        p.config.allow_unsolicited
                            && issuer.as_deref() == Some(p.config.idp_entity_id.as_str())
                    })
                    .ok_or_else(|| LoginFailure::saml(S::UNAUTHORIZED, "missing_login_cookie"))?
            }
        };
        let name = p.config.name.as_str();
        let expected = login.as_ref().map(|l| l.state.clone());
        let now = self.sessions.now();
        let verified = {
            let p = p.clone();
            let work =
                tokio::task::spawn_blocking(move || p.verify(&xml, expected.as_deref(), now));
            match tokio::time::timeout(SAML_VERIFY_TIMEOUT, work).await {
                Ok(Ok(result)) => result.map_err(|e| refused(e, name))?,
                Ok(Err(_)) => return Err(LoginFailure::saml(S::INTERNAL_SERVER_ERROR, "internal")),
                Err(_) => {
                    tracing::warn!(provider = name, "SAML response verification timed out.");
                    return Err(
                        LoginFailure::saml(S::UNAUTHORIZED, "verification_timeout").suspicious()
                    );
                }
            }
        };
        let fail = |status, reason: &str| {
            let mut f = LoginFailure::saml(status, reason);
            f.provider = name.to_string();
            f
        };
        // Each assertion once (every replica, across restarts), until it
        // could no longer be accepted anyway; each request answered once.
        let mut once = vec![(
            format!(
                "saml-assertion:{}:{}",
                p.config.idp_entity_id, verified.assertion_id
            ),
            verified.valid_until.unix_timestamp(),
            "replayed",
        )];
        if let Some(l) = &login {
            once.push((
                format!("saml-request:{}", l.state),
                l.expires,
                "replayed_request",
            ));
        }
        for (key, until, reason) in once {
            match self.store.remember_once(&key, until).await {
                Ok(true) => {}
                Ok(false) => return Err(fail(S::UNAUTHORIZED, reason).suspicious()),
                Err(_) => return Err(fail(S::SERVICE_UNAVAILABLE, "store_unavailable")),
            }
        }
        let claims = saml_claims(&p.config, &verified);
        let identity = claims::identity(&p.config.mapping, &claims)
            .map_err(|e| fail(S::UNAUTHORIZED, e.reason()))?;
        let rd = match &login {
            Some(l) => l.rd.clone(),
            None => safe_redirect(relay_state.as_deref()).to_string(),
        };
        let cookie = self
            .open_session(
                OpenSession {
                    provider: name,
                    pinned: p.config.mapping.tenant.is_some(),
                    method: "saml",
                    requested_tenant: login.as_ref().and_then(|l| l.tenant.as_deref()),
                    refresh_token: None,
                    refresh_at: None,
                    id_token: None,
                    ends_by: verified.session_not_on_or_after,
                },
                identity,
                headers,
                client,
            )
            .await?;
        Ok((rd, cookie))
    }
}

/// A verified assertion as claims for [`claims::identity`]: each attribute
/// (one value: a string, several: a list), the NameID under
/// [`claims::NAME_ID`], the email from the NameID when it is an address
/// and no attribute gives one. The IdP vouches for the email.
fn saml_claims(
    c: &crate::config::SamlProviderConfig,
    v: &saml::Verified,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut m = serde_json::Map::new();
    for (name, values) in &v.attributes {
        let value = match values.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
        m.insert(name.clone(), value);
    }
    m.insert(claims::NAME_ID.into(), Value::String(v.name_id.clone()));
    if !m.contains_key(&c.mapping.sources.email) && c.name_id_format == crate::config::NAME_ID_EMAIL
    {
        m.insert(
            c.mapping.sources.email.clone(),
            Value::String(v.name_id.clone()),
        );
    }
    m.insert("email_verified".into(), Value::Bool(true));
    m
}

/// When to refresh: when the access token expires (else the ID token), a
/// little early.
fn refresh_at(
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The principal of an SSO identity.
fn principal(identity: &Identity, method: AuthMethod) -> Result<Arc<Principal>, AuthnError> {
    let headers = IdentityHeaders::new(
        &identity.tenant_id,
        &identity.user_id,
        None,
        &identity.roles,
        method,
    )
    .map_err(|_| AuthnError::Claims(ClaimError::NoUser))?;
    Ok(Arc::new(Principal {
        tenant_id: identity.tenant_id.as_str().into(),
        user_id: identity.user_id.as_str().into(),
        rate_key: format!(
            "{}:{}:{}",
            method.as_str(),
            identity.tenant_id,
            identity.user_id
        )
        .into(),
        key_id: None,
        roles: identity.roles.clone().into(),
        scopes: None,
        rate_per_minute: None,
        method,
        headers,
    }))
}

/// `iss` and `aud` of a token, read without verification (only to pick
/// the provider whose keys will verify it).
fn peek_issuer_and_audience(raw: &str) -> Option<(String, Vec<String>)> {
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

/// Whether a state-changing request authenticated by a session cookie
/// comes from another site: `Sec-Fetch-Site` other than `same-origin` or
/// `none`, or an `Origin` whose host is not this request's `Host`. (The
/// cookie is `SameSite=Lax`; this also covers same-site sibling hosts.)
/// Requests without either header (not from a browser) pass.
pub fn cross_site_write(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.as_bytes());
    origin_host.is_none() || origin_host != host
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `rd` if it is a same-origin relative path, else `/`. Refused: anything
/// not starting with one `/` (`//host`, `/\host`, schemes), backslashes,
/// control characters and tabs (also percent-encoded), and anything
/// that decodes to one of those.
pub fn safe_redirect(rd: Option<&str>) -> &str {
    let Some(rd) = rd else { return "/" };
    let decoded = percent_decode(rd);
    let bad = |s: &str| {
        !s.starts_with('/')
            || s.starts_with("//")
            || s.contains('\\')
            || s.bytes().any(|b| b.is_ascii_control() || b >= 0x80)
    };
    if rd.len() > 2048 || bad(rd) || decoded.as_deref().is_none_or(bad) || rd.contains("/..") {
        return "/";
    }
    // Decoding twice must not reveal more (double-encoded `//` or `\`).
    match decoded.as_deref().and_then(percent_decode) {
        Some(twice) if !bad(&twice) => rd,
        _ => "/",
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query string's parameters (first value of each name).
struct Query<'a>(&'a str);

impl Query<'_> {
    fn get(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.0.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Whether any cookie is called `name`.
fn cookie_named(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name))
}

/// The value of cookie `name`, if it appears exactly once.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == name {
                if found.is_some() {
                    return None;
                }
                found = Some(v.trim());
            }
        }
    }
    found
}

fn redirect(location: &str, cookies: &[String]) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_paths_are_redirect_targets() {
        for ok in ["/", "/v1/tenants/org-1/costs?x=1", "/a%20b"] {
            assert_eq!(safe_redirect(Some(ok)), ok, "{ok}");
        }
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "javascript:alert(1)",
            "/\tevil",
            "/%09/evil.example",
            "/%0d%0aSet-Cookie:x=y",
            "evil.example",
            "",
            "/../..//evil",
            "/x/../..",
        ] {
            assert_eq!(safe_redirect(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_redirect(None), "/");
    }

    #[test]
    fn one_cookie_of_a_name_or_none() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; costguard_session=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "costguard_session"), Some("abc"));
        h.append(header::COOKIE, "costguard_session=other".parse().unwrap());
        assert_eq!(cookie(&h, "costguard_session"), None);
    }
}
