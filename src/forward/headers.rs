//! Header hygiene: what an upstream receives is exactly what it can trust.
//!
//! Inbound, in this order: headers named in `Connection` and the hop-by-hop
//! set go; every `X-CostOps-*` look-alike goes (any case, `_` or `.` for
//! `-`), as do the configured identity headers of other proxies; forwarding
//! headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) go unless the peer is a
//! trusted proxy. Only then does costguard add its own headers, so nothing a
//! client writes in `Connection` can remove them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::header_pattern::{HeaderPattern, canon_eq, canon_starts_with};
use crate::request_id::X_REQUEST_ID;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones). `Expect` is
/// answered by costguard itself, so it is not passed on either.
fn hop_by_hop() -> [&'static HeaderName; 10] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::EXPECT,
    ]
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop().contains(&name)
}

/// Removes every hop-by-hop header: one pass over the names present (most
/// messages carry none), not a hashed lookup per hop-by-hop name.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
}

/// Headers a `Connection` token may not remove: the request would change
/// meaning (Host, body framing).
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Whether a client-sent header claims to be one of costguard's own.
pub fn is_costops_lookalike(name: &str) -> bool {
    canon_starts_with(name.as_bytes(), b"x-costops")
}

/// Method overrides: the method that is checked is the method that is
/// forwarded, so these never reach the upstream.
fn is_method_override(name: &str) -> bool {
    let n = name.as_bytes();
    canon_eq(n, b"x-http-method-override")
        || canon_eq(n, b"x-http-method")
        || canon_eq(n, b"x-method-override")
}

/// Credential headers spelled another way (`X_API_KEY`, `x.api-key`,
/// `AUTHORIZATION` with `_`…): never a credential costguard checked, but a
/// CGI/WSGI-style upstream folds `_` into `-` and would read it as one. The
/// exact spellings are handled by authentication (credentials are removed,
/// non-session cookies pass).
fn is_credential_lookalike(name: &str) -> bool {
    let n = name.as_bytes();
    [b"authorization".as_slice(), b"x-api-key", b"cookie"]
        .iter()
        .any(|c| canon_eq(n, c) && n != *c)
}

/// `X-Forwarded-*`, `Forwarded`, `X-Real-IP`: believed only from trusted proxies.
fn is_forwarding(name: &str) -> bool {
    let n = name.as_bytes();
    canon_starts_with(n, b"x-forwarded-") || canon_eq(n, b"forwarded") || canon_eq(n, b"x-real-ip")
}

/// The header policy for one listener, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Hygiene {
    strip: Vec<HeaderPattern>,
    trusted_proxies: Vec<IpNet>,
    /// Whether the "peers look like proxies" warning was logged.
    warned_untrusted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What hygiene needs to know about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// `peer` rendered once per connection.
    pub peer_value: &'a HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

impl Hygiene {
    /// Builds the policy.
    pub fn new(strip: Vec<HeaderPattern>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            strip,
            trusted_proxies,
            warned_untrusted: Default::default(),
        }
    }

    /// Logs once when no proxy is trusted but a request arrives with
    /// forwarding headers from a private or loopback peer: most likely an
    /// ingress (or mesh sidecar) that `proxy.trusted_proxies` should name,
    /// or every client shares the ingress's address for per-source limits.
    pub fn notice_untrusted_proxy(&self, peer: IpAddr, headers: &HeaderMap) {
        use std::sync::atomic::Ordering;
        if !self.trusted_proxies.is_empty() || self.warned_untrusted.load(Ordering::Relaxed) {
            return;
        }
        let peer = peer.to_canonical();
        let private = match peer {
            // RFC 1918, loopback, and carrier-grade NAT (100.64.0.0/10, some
            // clusters' pod networks).
            IpAddr::V4(v4) => {
                let o = v4.octets();
                v4.is_private() || v4.is_loopback() || (o[0] == 100 && o[1] & 0xc0 == 64)
            }
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
        };
        let forwarded = headers.contains_key(&X_FORWARDED_FOR) || headers.contains_key("forwarded");
        if private && forwarded && !self.warned_untrusted.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                peer = %peer,
                "A request came with X-Forwarded-For/Forwarded from a private address, but proxy.trusted_proxies is empty: if an ingress or load balancer sits in front, every client shares its address (failed-authentication blocks, per-source connection caps, audit records). Set proxy.trusted_proxies to its CIDR (see the README)."
            );
        }
    }

    /// Whether forwarding headers from `peer` are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client's address, for per-source limits: the socket peer, unless
    /// the peer is a trusted proxy; then the rightmost `X-Forwarded-For`
    /// entry that is not itself a trusted proxy (entries to its left could
    /// have been written by the client). An unreadable entry stops the
    /// walk at the last address known good.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        for value in values.into_iter().rev() {
            let Ok(list) = value.to_str() else {
                return client;
            };
            for entry in list.rsplit(',') {
                let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                    return client;
                };
                client = ip;
                if !self.is_trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }

    /// Cleans an inbound request's headers and adds costguard's forwarding
    /// headers. `host` is the Host the client addressed.
    pub fn request(
        &self,
        headers: &mut HeaderMap,
        origin: Origin<'_>,
        host: &HeaderValue,
        request_id: &HeaderValue,
    ) {
        strip_connection_tokens(headers);
        let trusted = self.is_trusted(origin.peer);
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            let s = name.as_str();
            if is_hop_by_hop(name)
                || is_costops_lookalike(s)
                || is_method_override(s)
                || is_credential_lookalike(s)
                || self.strip.iter().any(|p| p.matches(s))
                || (!trusted && is_forwarding(s))
            {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            headers.remove(name);
        }

        let xff = if trusted {
            append_forwarded_for(headers, origin.peer_value)
        } else {
            origin.peer_value.clone()
        };
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            let proto = HeaderValue::from_static(if origin.tls { "https" } else { "http" });
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        if !trusted {
            headers.insert(X_REAL_IP.clone(), origin.peer_value.clone());
        }
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
}

/// `X-Forwarded-For` from a trusted proxy, with the peer appended.
fn append_forwarded_for(headers: &HeaderMap, peer: &HeaderValue) -> HeaderValue {
    let mut joined = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        return peer.clone();
    }
    joined.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
}

/// Removes the headers a `Connection` header names (except [`protected`]
/// ones). Costguard's own headers are added afterwards, so they survive.
fn strip_connection_tokens(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes())
                && !protected(&name)
            {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
}

/// Cleans an upstream response's headers before it goes to the client.
pub fn response(headers: &mut HeaderMap) {
    strip_connection_tokens(headers);
    remove_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(v: &HeaderValue, tls: bool) -> Origin<'_> {
        Origin {
            peer: "10.1.2.3".parse().unwrap(),
            peer_value: v,
            tls,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn default_hygiene(trusted: &[&str]) -> Hygiene {
        let strip = crate::config::file::default_strip_headers()
            .iter()
            .map(|s| HeaderPattern::parse(s).unwrap())
            .collect();
        Hygiene::new(strip, trusted.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn lookalikes_are_recognised() {
        for n in [
            "x-costops-tenant-id",
            "X_CostOps_Tenant_Id",
            "x.costops.roles",
            "X-COSTOPS-x",
            "x-costops",
        ] {
            assert!(is_costops_lookalike(n), "{n}");
        }
        for n in ["x-cost-ops", "costops", "x-costop"] {
            assert!(!is_costops_lookalike(n), "{n}");
        }
    }

    #[test]
    fn patterns_match_names_and_prefixes() {
        let p = HeaderPattern::parse("X-Auth-Request-*").unwrap();
        assert!(p.matches("x-auth-request-email"));
        assert!(p.matches("X_AUTH_REQUEST_USER"));
        assert!(!p.matches("x-auth-requests"));
        let p = HeaderPattern::parse("Remote-User").unwrap();
        assert!(p.matches("remote_user"));
        assert!(!p.matches("remote-user-x"));
        assert!(HeaderPattern::parse("bad header").is_err());
        assert!(HeaderPattern::parse("*").is_err());
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let peer = HeaderValue::from_static("10.1.2.3");
        let rid = HeaderValue::from_static("rid-1");
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-port", "1"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-tenant-id", "org-evil"),
            ("x-auth-request-email", "a@b"),
            ("accept", "*/*"),
        ]);
        default_hygiene(&[]).request(
            &mut h,
            origin(&peer, false),
            &HeaderValue::from_static("api"),
            &rid,
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["accept"], "*/*");
        for gone in [
            "x-forwarded-port",
            "forwarded",
            "x-tenant-id",
            "x-auth-request-email",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn trusted_proxy_headers_are_kept_and_appended() {
        let peer = HeaderValue::from_static("10.1.2.3");
        let rid = HeaderValue::from_static("rid-1");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
            ("x-forwarded-user", "mallory"),
        ]);
        default_hygiene(&["10.0.0.0/8"]).request(
            &mut h,
            origin(&peer, false),
            &HeaderValue::from_static("api"),
            &rid,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=1.1.1.1");
        assert!(
            !h.contains_key("x-forwarded-user"),
            "identity headers go even from trusted proxies"
        );
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let h = default_hygiene(&["10.0.0.0/8"]);
        let xff = map(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.7"),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            h.client_ip(ip("192.0.2.1"), &xff),
            ip("192.0.2.1"),
            "untrusted peer"
        );
        assert_eq!(
            h.client_ip(ip("10.1.1.1"), &xff),
            ip("1.2.3.4"),
            "rightmost untrusted"
        );
        assert_eq!(h.client_ip(ip("10.1.1.1"), &map(&[])), ip("10.1.1.1"));
        let junk = map(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]);
        assert_eq!(h.client_ip(ip("10.1.1.1"), &junk), ip("10.0.0.9"));
    }

    #[test]
    fn connection_tokens_cannot_remove_our_headers() {
        let peer = HeaderValue::from_static("10.1.2.3");
        let rid = HeaderValue::from_static("rid-1");
        let mut h = map(&[
            (
                "connection",
                "close, X-Request-Id, X-Forwarded-For, host, x-custom",
            ),
            ("x-custom", "1"),
            ("host", "api"),
            ("te", "trailers"),
        ]);
        default_hygiene(&[]).request(
            &mut h,
            origin(&peer, true),
            &HeaderValue::from_static("api"),
            &rid,
        );
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], "api");
        assert!(!h.contains_key("x-custom"));
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("te"));
    }
}
