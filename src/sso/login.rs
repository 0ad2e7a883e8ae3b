//! What every login shares, whichever protocol: choosing the provider
//! (`/auth/login`), the checks a verified identity passes before it gets a
//! session (tenant, pinning, the admin API's users), the session and its
//! cookie, logout, userinfo, and the audit records of logins and failures.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{Durability, Event, EventType};
use crate::authn::AuthnError;
use crate::model::Session;
use crate::principal::Authenticated;
use crate::response::{self, ErrorResponse, Problem, json_response};

use super::claims::{ClaimError, Identity};
use super::login_state::{self, LoginState};
use super::oidc::Provider;
#[cfg(feature = "saml")]
use super::saml;
use super::session::NewSession;
use super::web::{Query, redirect, safe_redirect};
use super::{Client, Reply, Sso};

/// Why a login failed: what the browser is told, what the audit says.
#[derive(Debug, thiserror::Error)]
#[error("login failed: {reason}")]
pub(super) struct LoginFailure {
    pub(super) status: StatusCode,
    pub(super) reason: String,
    pub(super) suspicious: bool,
    pub(super) tenant_id: String,
    pub(super) user_id: String,
    pub(super) provider: String,
    pub(super) method: &'static str,
}

impl LoginFailure {
    pub(super) fn new(status: StatusCode, reason: impl Into<String>) -> Self {
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

    #[cfg(feature = "saml")]
    pub(super) fn saml(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            method: "saml",
            ..Self::new(status, reason)
        }
    }

    pub(super) fn suspicious(mut self) -> Self {
        self.suspicious = true;
        self
    }
}

impl ErrorResponse for LoginFailure {
    fn problem(&self) -> Problem<'_> {
        Problem {
            status: self.status,
            code: "login_failed",
            message: self.to_string().into(),
        }
    }
}

/// A login that cannot start: the browser is told why, nothing is audited
/// (no identity was presented).
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(&'static str),
    /// No such provider (404).
    #[cfg(feature = "saml")]
    #[error("{0}")]
    NotFound(&'static str),
    /// The provider cannot be reached (503).
    #[error("{0}")]
    IdpUnavailable(String),
}

impl ErrorResponse for LoginError {
    fn problem(&self) -> Problem<'_> {
        let (status, code) = match self {
            LoginError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            #[cfg(feature = "saml")]
            LoginError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            LoginError::IdpUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable"),
        };
        Problem {
            status,
            code,
            message: self.to_string().into(),
        }
    }
}

/// A provider of either kind.
#[derive(Clone, Copy)]
pub(super) enum Chosen<'a> {
    Oidc(&'a Arc<Provider>),
    #[cfg(feature = "saml")]
    Saml(&'a Arc<saml::SamlProvider>),
}

impl Chosen<'_> {
    pub(super) fn name(&self) -> &str {
        match self {
            Chosen::Oidc(p) => &p.config.name,
            #[cfg(feature = "saml")]
            Chosen::Saml(p) => &p.config.name,
        }
    }

    pub(super) fn tenant(&self) -> Option<&str> {
        match self {
            Chosen::Oidc(p) => p.config.mapping.tenant.as_deref(),
            #[cfg(feature = "saml")]
            Chosen::Saml(p) => p.config.mapping.tenant.as_deref(),
        }
    }

    pub(super) fn email_domains(&self) -> &std::collections::BTreeMap<String, String> {
        match self {
            Chosen::Oidc(p) => &p.config.mapping.email_domains,
            #[cfg(feature = "saml")]
            Chosen::Saml(p) => &p.config.mapping.email_domains,
        }
    }
}

/// What a verified login (either kind) brings to its session.
pub(super) struct OpenSession<'a> {
    pub(super) provider: &'a str,
    /// The provider is pinned to one tenant.
    pub(super) pinned: bool,
    pub(super) method: &'static str,
    /// The tenant `/auth/login` was asked for.
    pub(super) requested_tenant: Option<&'a str>,
    pub(super) refresh_token: Option<String>,
    pub(super) refresh_at: Option<OffsetDateTime>,
    pub(super) id_token: Option<String>,
    /// The IdP's own end of the session (SAML `SessionNotOnOrAfter`).
    pub(super) ends_by: Option<OffsetDateTime>,
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Sso {
    /// Picks the provider for a login.
    pub(super) fn choose(&self, q: &Query<'_>) -> Result<Chosen<'_>, &'static str> {
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

    pub(super) fn login(&self, q: &Query<'_>, request_id: &HeaderValue) -> Reply {
        let p = match self.choose(q) {
            Ok(p) => p,
            Err(message) => {
                return response::error(&LoginError::BadRequest(message), request_id);
            }
        };
        let tenant = q.get("tenant");
        if tenant
            .as_deref()
            .is_some_and(|t| !crate::model::is_tenant_id(t))
        {
            let e = LoginError::BadRequest("tenant is not a tenant id");
            return response::error(&e, request_id);
        }
        let rd = safe_redirect(q.get("rd").as_deref()).to_string();
        #[cfg_attr(not(feature = "saml"), allow(clippy::infallible_destructuring_match))]
        let p = match p {
            Chosen::Oidc(p) => p,
            #[cfg(feature = "saml")]
            Chosen::Saml(p) => return self.saml_login(p, rd, tenant),
        };
        let hint = q
            .get("email")
            .or_else(|| q.get("login_hint"))
            .filter(|e| e.len() <= 256);
        let auth = match p.authorize(hint.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                return response::error(&LoginError::IdpUnavailable(e.to_string()), request_id);
            }
        };
        let state = LoginState {
            provider: p.config.name.clone(),
            state: auth.state,
            nonce: auth.nonce,
            verifier: auth.verifier,
            rd,
            tenant,
            expires: self.now() + self.login_timeout.as_secs() as i64,
        };
        let cookie = format!(
            "{}={}; Path=/auth/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            login_state::COOKIE,
            self.signer.seal(&state),
            self.login_timeout.as_secs()
        );
        redirect(&auth.url, &[cookie])
    }

    /// After a verified login: the tenant checks, the new session (the one
    /// the browser came with is ended), `auth.login`; the session cookie.
    pub(super) async fn open_session(
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
        self.count_login(login.provider, login.method, true);
        self.audit(
            EventType::Login,
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

    pub(super) async fn logout(
        &self,
        q: &Query<'_>,
        headers: &HeaderMap,
        client: &Client,
    ) -> Reply {
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
                EventType::Logout,
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

    /// How a login ends, either protocol: the login cookie cleared, and a
    /// redirect with the new session's cookie, or the failure audited and
    /// answered.
    pub(super) async fn end_login(
        &self,
        done: Result<(String, String), LoginFailure>,
        clear_login_cookie: String,
        client: &Client,
        request_id: &HeaderValue,
    ) -> Reply {
        match done {
            Ok((rd, session_cookie)) => redirect(&rd, &[clear_login_cookie, session_cookie]),
            Err(f) => {
                self.audit_failure(&f, client).await;
                let mut resp = response::error(&f, request_id);
                if let Ok(v) = HeaderValue::from_str(&clear_login_cookie) {
                    resp.headers_mut().append(http::header::SET_COOKIE, v);
                }
                resp
            }
        }
    }

    pub(super) async fn audit_failure(&self, f: &LoginFailure, client: &Client) {
        self.count_login(&f.provider, f.method, false);
        let details = json!({"reason": f.reason, "provider": f.provider, "auth_method": f.method});
        self.audit(
            EventType::LoginFailed,
            &f.tenant_id,
            &f.user_id,
            details.clone(),
            client,
        )
        .await;
        if f.suspicious {
            self.audit(
                EventType::SuspiciousActivity,
                &f.tenant_id,
                &f.user_id,
                details,
                client,
            )
            .await;
        }
    }

    pub(super) async fn audit(
        &self,
        event_type: EventType,
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
            tracing::error!(error = %e, event_type = event_type.as_str(), "Login event not recorded in the audit log.");
        }
    }
}
