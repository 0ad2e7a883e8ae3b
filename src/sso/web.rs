//! Browser-facing helpers of single sign-on: cookies (read one, strip ours
//! before forwarding), redirects and the `rd` target check, query strings,
//! and the cross-site check for state-changing requests with a session.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::{Reply, Sso, login_state};

/// The SAML login cookie: the signed AuthnRequest id (and where to go
/// after) that the ACS checks `InResponseTo` against. `SameSite=None`: the
/// IdP's answer is a cross-site POST, which carries no `Lax` cookie.
/// `__Host-` (so `Path=/`, no `Domain`): a sibling subdomain cannot plant
/// its own login state in the browser. Stripped before forwarding.
pub const SAML_COOKIE: &str = "__Host-costguard_saml";

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

pub(super) fn percent_decode(s: &str) -> Option<String> {
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
pub(super) struct Query<'a>(pub(super) &'a str);

impl Query<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.0.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Whether any cookie is called `name`.
#[cfg(feature = "saml")]
pub(super) fn cookie_named(headers: &HeaderMap, name: &str) -> bool {
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

pub(super) fn redirect(location: &str, cookies: &[String]) -> Reply {
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

impl Sso {
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
