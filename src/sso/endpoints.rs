//! The `/auth/*` endpoints, answered on the proxy port and never proxied:
//! login, callback, logout, userinfo, the SAML metadata and ACS. The
//! pipeline hands the whole request here once the target passed its
//! checks; this module applies the failed-authentication limit to the
//! endpoints that make costguard call a provider or verify a credential.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
#[cfg(feature = "saml")]
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::web::Query;
use super::{Client, Reply, Sso};
use crate::authn::Authenticator;
use crate::principal::AuthMethod;
use crate::response::{self, ErrorResponse, Problem};
use crate::throttle::{Port, Throttle};

/// What the `/auth/*` endpoints refuse before any login logic runs.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// No provider is configured (404).
    #[error("single sign-on is not configured")]
    NotConfigured,
    /// Not one of the endpoints (404).
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// An endpoint, with another method (405).
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// The SAML response was not posted as a form (415).
    #[error("the SAML response must be posted as application/x-www-form-urlencoded")]
    NotAForm,
    /// The request body broke off (400).
    #[error("the request body could not be read")]
    BodyUnreadable,
}

impl ErrorResponse for EndpointError {
    fn problem(&self) -> Problem<'_> {
        let (status, code) = match self {
            EndpointError::NotConfigured | EndpointError::NoSuchEndpoint => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            EndpointError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            EndpointError::NotAForm => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            EndpointError::BodyUnreadable => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        Problem {
            status,
            code,
            message: self.to_string().into(),
        }
    }
}

/// What an `/auth/*` request needs besides single sign-on itself.
#[derive(Debug)]
pub struct Endpoints<'a> {
    /// The proxy port's authentication chain (for `/auth/userinfo`).
    pub authn: &'a Authenticator,
    /// The failed-authentication limit.
    pub throttle: &'a Throttle,
}

impl Endpoints<'_> {
    /// Answers one `/auth/*` request from `ip` (the client address after
    /// trusted proxies).
    pub async fn serve<B>(
        &self,
        sso: Option<&Sso>,
        req: Request<B>,
        ip: std::net::IpAddr,
        request_id: &HeaderValue,
    ) -> Reply
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(sso) = sso else {
            return response::error(&EndpointError::NotConfigured, request_id);
        };
        let headers = req.headers();
        let path = req.uri().path();
        // A source out of attempts cannot make costguard call the provider.
        let guarded = matches!(path, "/auth/callback" | "/auth/userinfo" | "/auth/saml/acs");
        if guarded && let Err(limited) = self.throttle.before_authentication(Port::Proxy, ip) {
            return response::error(&limited, request_id);
        }
        if path == "/auth/userinfo" {
            return match self.authn.authenticate(headers).await {
                Ok(auth) => {
                    let session = match auth.principal.method {
                        AuthMethod::Oidc | AuthMethod::Saml => sso.session_record(headers).await,
                        _ => None,
                    };
                    Sso::userinfo(&auth, session.as_ref())
                }
                Err(e) => {
                    self.throttle.authentication_failed(Port::Proxy, ip, &e);
                    response::error(&e, request_id)
                }
            };
        }
        let client = Client {
            ip: ip.to_string(),
            user_agent: crate::audit::user_agent(headers),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        };
        #[cfg(feature = "saml")]
        if path == "/auth/saml/acs" && req.method() == Method::POST {
            let resp = saml_acs(sso, req, &client, request_id).await;
            if resp.status().is_client_error() {
                self.throttle.count_failure(Port::Proxy, ip);
            }
            return resp;
        }
        let resp = {
            let q = Query(req.uri().query().unwrap_or(""));
            match (path, req.method()) {
                ("/auth/login", &Method::GET | &Method::HEAD) => sso.login(&q, request_id),
                ("/auth/callback", &Method::GET) => {
                    sso.callback(&q, headers, &client, request_id).await
                }
                ("/auth/logout", &Method::GET | &Method::POST) => {
                    sso.logout(&q, headers, &client).await
                }
                #[cfg(feature = "saml")]
                ("/auth/saml/metadata", &Method::GET | &Method::HEAD) => {
                    sso.saml_metadata(&q, request_id)
                }
                #[cfg(feature = "saml")]
                ("/auth/saml/metadata" | "/auth/saml/acs", _) => {
                    response::error(&EndpointError::MethodNotAllowed, request_id)
                }
                ("/auth/login" | "/auth/callback" | "/auth/logout", _) => {
                    response::error(&EndpointError::MethodNotAllowed, request_id)
                }
                _ => response::error(&EndpointError::NoSuchEndpoint, request_id),
            }
        };
        if guarded && resp.status().is_client_error() {
            self.throttle.count_failure(Port::Proxy, ip);
        }
        resp
    }
}

#[cfg(feature = "saml")]
/// `POST /auth/saml/acs`: the form body, bounded (the response's size
/// bound, base64 and URL-encoded, plus room for RelayState), then the SAML
/// checks.
async fn saml_acs<B>(sso: &Sso, req: Request<B>, client: &Client, request_id: &HeaderValue) -> Reply
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let form = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return response::error(&EndpointError::NotAForm, request_id);
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, sso.acs_body_limit()).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return sso
                .acs_refused("response_too_large", client, request_id)
                .await;
        }
        Err(_) => return response::error(&EndpointError::BodyUnreadable, request_id),
    };
    sso.acs(&body, &parts.headers, client, request_id).await
}
