//! Single sign-on: browser logins through OpenID Connect providers
//! (authorization code + PKCE) and SAML 2.0 identity providers, the
//! server-side sessions they create, and the OpenID providers' JWT access
//! tokens as bearer credentials.
//!
//! One file per flow: [`login`] (what every login shares), [`oidc_login`],
//! [`saml_login`], [`bearer`] (JWTs on proxied requests), [`session_auth`]
//! (the session cookie as a credential, refresh, logout), [`web`] (cookies,
//! redirects), [`endpoints`] (the `/auth/*` requests). Authentication reaches
//! single sign-on only through its two loaders, [`BearerTokens`] and
//! [`SessionCookies`].
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

mod bearer;
pub mod claims;
pub mod crypto;
pub mod endpoints;
pub mod http;
pub mod jwks;
mod login;
pub mod login_state;
pub mod oidc;
mod oidc_login;
#[cfg(feature = "saml")]
pub mod saml;
#[cfg(feature = "saml")]
mod saml_login;
pub mod sealed;
pub mod session;
mod session_auth;
pub mod token;
pub mod users;
mod web;

pub use bearer::{BearerTokens, looks_like_jwt};
pub use session_auth::SessionCookies;
pub use web::{SAML_COOKIE, cookie, cross_site_write, safe_redirect};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::Arc;

use ::http::Response;
use bytes::Bytes;
use http_body_util::Full;

use crate::audit::Audit;
use crate::authn::AuthnError;
use crate::authn::api_key::ApiKeys;
use crate::config::SsoConfig;
use crate::model::TenantStatus;
use crate::principal::{AuthMethod, IdentityHeaders, Principal};
use crate::store::Store;
use bearer::TokenCache;
use claims::{ClaimError, Identity};
use login::Chosen;
use login_state::Signer;
use oidc::Provider;
use session::{Clock, Sessions};

/// Single sign-on. Cheap to share (`Arc`).
pub struct Sso {
    providers: Vec<Arc<Provider>>,
    #[cfg(feature = "saml")]
    saml: Vec<Arc<saml::SamlProvider>>,
    #[cfg(feature = "saml")]
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
    /// Verified bearer tokens: SHA-256 of the token → (principal, exp).
    verified: Option<TokenCache>,
    /// The one clock of every flow: login state expiry, token checks,
    /// sessions (the same clock [`Sessions`] reads), so a test clock moves
    /// them all.
    clock: Clock,
    /// Logins by (configured provider name, method, outcome), for
    /// `/metrics`; a provider name nobody configured counts as `unknown`.
    logins: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str, &'static str), u64>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
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

impl Sso {
    /// Builds the providers and discovers them (each retries in the
    /// background if its provider is down). `cookie_key` signs login
    /// cookies and seals the provider tokens sessions keep: every replica
    /// must have the same one.
    pub async fn start(
        config: &SsoConfig,
        store: Arc<dyn Store>,
        keys: ApiKeys,
        directory: Arc<users::Directory>,
        audit: Option<Audit>,
        clock: Clock,
        cookie_key: &[u8],
    ) -> Result<Arc<Self>, String> {
        crypto::install();
        let http = http::IdpClient::new(
            config.ca_file.as_deref(),
            config.http_timeout,
            config.max_response_bytes,
        )
        .map_err(|e| format!("sso.ca_file: {e}"))?;
        let key = cookie_key;
        let providers: Vec<Arc<Provider>> = config
            .oidc
            .iter()
            .map(|p| Arc::new(Provider::new(p.clone(), config, http.clone())))
            .collect();
        for p in &providers {
            p.discover_or_retry().await;
        }
        Ok(Arc::new(Self {
            providers,
            #[cfg(feature = "saml")]
            saml: config
                .saml
                .iter()
                .map(|p| Arc::new(saml::SamlProvider::new(p.clone())))
                .collect(),
            #[cfg(feature = "saml")]
            saml_max_response_bytes: config.saml_max_response_bytes,
            store: store.clone(),
            sessions: Sessions::new(
                store,
                config.session_lifetime,
                config.session_idle_timeout,
                config.session_cache_capacity,
                clock.clone(),
                sealed::Sealer::new(key),
            ),
            signer: Signer::new(key),
            cookie_name: config.session_cookie.clone(),
            cookie_lifetime: config.session_lifetime,
            login_timeout: config.login_timeout,
            keys,
            directory,
            audit,
            verified: (config.token_cache_capacity > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(config.token_cache_capacity)
                    .time_to_live(std::time::Duration::from_secs(300))
                    .build()
            }),
            clock,
            logins: Default::default(),
        }))
    }

    /// Counts a finished login (success or failure) for `/metrics`.
    pub(crate) fn count_login(&self, provider: &str, method: &'static str, ok: bool) {
        let known = self.providers.iter().any(|p| p.config.name == provider);
        #[cfg(feature = "saml")]
        let known = known || self.saml.iter().any(|p| p.config.name == provider);
        let provider = if known { provider } else { "unknown" };
        let outcome = if ok { "success" } else { "failure" };
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        *logins
            .entry((provider.to_string(), method, outcome))
            .or_default() += 1;
    }

    /// Single sign-on's metrics: logins and signing-key fetches.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(
            "costguard_sso_logins",
            "Browser sign-ons by provider, method (oidc, saml) and outcome (success, failure).",
            None,
            MetricType::Counter,
        )?;
        for ((provider, method, outcome), n) in
            self.logins.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            m.encode_family(&[
                ("provider", provider.as_str()),
                ("method", method),
                ("outcome", outcome),
            ])?
            .encode_counter::<NoLabelSet, _, f64>(n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "costguard_jwks_fetches",
            "Fetches of an OpenID provider's signing keys (JWKS) by provider and result (ok, error).",
            None,
            MetricType::Counter,
        )?;
        for p in &self.providers {
            let (ok, failed) = p.jwks.fetches();
            for (result, n) in [("ok", ok), ("error", failed)] {
                m.encode_family(&[("provider", p.config.name.as_str()), ("result", result)])?
                    .encode_counter::<NoLabelSet, _, f64>(&n, None)?;
            }
        }
        Ok(())
    }

    /// The user and session caches' hits and misses, by cache name.
    pub fn cache_stats(&self) -> [(&'static str, &crate::metrics::CacheStats); 2] {
        [
            ("sso_users", &self.directory.stats),
            ("sessions", &self.sessions.stats),
        ]
    }

    /// Now, in seconds since the epoch, by the flows' clock.
    fn now(&self) -> i64 {
        (self.clock)().unix_timestamp()
    }

    /// The configured OpenID providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The store (sessions, used SAML assertion ids).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ----- credentials on proxied requests -----

    /// An active tenant from the cache only.
    async fn cached_tenant(&self, tenant_id: &str) -> Option<Arc<crate::model::Tenant>> {
        self.keys
            .cached_tenant(tenant_id)
            .await
            .flatten()
            .filter(|t| t.status != TenantStatus::Suspended)
    }

    fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.name == name)
    }

    /// The identity mapping of the provider (OIDC or SAML) named `name`.
    fn mapping_of(&self, name: &str) -> Option<&crate::config::IdentityMapping> {
        if let Some(p) = self.provider(name) {
            return Some(&p.config.mapping);
        }
        #[cfg(feature = "saml")]
        if let Some(p) = self.saml_provider(name) {
            return Some(&p.config.mapping);
        }
        None
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
        #[cfg(feature = "saml")]
        if let Some(p) = self
            .saml
            .iter()
            .find(|p| p.config.mapping.tenant.as_deref() == Some(tenant_id))
        {
            return Some(Chosen::Saml(p));
        }
        None
    }

    /// Every provider, OpenID first.
    fn all_providers(&self) -> impl Iterator<Item = Chosen<'_>> {
        let oidc = self.providers.iter().map(Chosen::Oidc);
        #[cfg(feature = "saml")]
        let oidc = oidc.chain(self.saml.iter().map(Chosen::Saml));
        oidc
    }
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
        grants: crate::grants::compile_all(&identity.grants),
        scopes: None,
        rate_per_minute: None,
        method,
        headers,
    }))
}
