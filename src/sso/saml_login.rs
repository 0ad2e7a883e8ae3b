//! The SAML login flow: the AuthnRequest (HTTP-Redirect binding, signed
//! request id in a login cookie), the service provider's metadata, and the
//! ACS, which verifies the response (see [`super::saml`]), uses each
//! assertion id once and hands the identity to the shared login checks.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::response;

use super::login::{LoginError, LoginFailure, OpenSession};
use super::login_state::{LoginState, LoginStateError};
use super::web::{Query, SAML_COOKIE, cookie, cookie_named, redirect, safe_redirect};
use super::{Client, Reply, Sso, claims, saml};

/// Longest a SAML response may take to verify (libxml2 + xmlsec run on a
/// blocking thread; this bounds what a request waits for).
pub(super) const SAML_VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A verified assertion as claims for [`claims::identity`]: each attribute
/// (one value: a string, several: a list), the NameID under
/// [`claims::NAME_ID`], the email from the NameID when it is an address
/// and no attribute gives one. The IdP vouches for the email.
pub(super) fn saml_claims(
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

impl Sso {
    /// Largest `/auth/saml/acs` body read: the response's bound in base64,
    /// URL-encoded at worst (`+`, `/`, `=` become three bytes), and RelayState.
    pub fn acs_body_limit(&self) -> usize {
        self.saml_max_response_bytes / 3 * 4 * 3 + 16 * 1024
    }

    pub(super) fn saml_provider(&self, name: &str) -> Option<&Arc<saml::SamlProvider>> {
        self.saml.iter().find(|p| p.config.name == name)
    }

    /// `/auth/login` for a SAML provider: a new AuthnRequest id in the
    /// signed SAML login cookie, and the browser sent to the IdP with it.
    pub(super) fn saml_login(
        &self,
        p: &saml::SamlProvider,
        rd: String,
        tenant: Option<String>,
    ) -> Reply {
        let request_id = saml::new_request_id();
        let url = p.login_url(&request_id, self.sessions.now());
        let state = LoginState {
            provider: p.config.name.clone(),
            state: request_id,
            nonce: String::new(),
            verifier: String::new(),
            rd,
            tenant,
            expires: self.now() + self.login_timeout.as_secs() as i64,
        };
        let cookie = format!(
            "{SAML_COOKIE}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=None",
            self.signer.seal(&state),
            self.login_timeout.as_secs()
        );
        redirect(&url, &[cookie])
    }

    /// `/auth/saml/metadata[?provider=]`: the SP metadata to give the IdP.
    pub(super) fn saml_metadata(&self, q: &Query<'_>, request_id: &HeaderValue) -> Reply {
        let chosen: Vec<&saml::SamlProvider> = match q.get("provider") {
            Some(name) => self
                .saml_provider(&name)
                .map(|p| &**p)
                .into_iter()
                .collect(),
            None => {
                let Some(first) = self.saml.first() else {
                    let e = LoginError::NotFound("no SAML provider is configured");
                    return response::error(&e, request_id);
                };
                let same = |p: &&Arc<saml::SamlProvider>| {
                    p.config.sp_entity_id == first.config.sp_entity_id
                };
                if !self.saml.iter().all(|p| same(&p)) {
                    let e = LoginError::BadRequest(
                        "several SAML service providers: name one with ?provider=",
                    );
                    return response::error(&e, request_id);
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
            None => response::error(&LoginError::NotFound("unknown provider"), request_id),
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
        let done = self.finish_saml(form, headers, client).await;
        self.end_login(done, clear, client, request_id).await
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
        response::error(&f, request_id)
    }

    /// The ACS's checks in order; the new session's cookie and where to go.
    pub(super) async fn finish_saml(
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
            Some(raw) => Some(self.signer.open(raw, self.now()).map_err(|e| match e {
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
