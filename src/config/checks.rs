//! Pure checks that validation and the running proxy share: what a name
//! may look like, and which identity provider URLs costguard may call.
//! They live under `config` so validation needs nothing from the stages
//! that use them at run time.

/// A role, provider or claim name: 1-128 of `[A-Za-z0-9_.:-]` (they go
/// into headers and policy lookups).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// Whether costguard may talk to an identity provider at `url`: `https`,
/// or `http` to a loopback host (tests, a provider in the same pod). Used
/// for the configured issuer and for the endpoints its discovery names.
pub fn secure_url(url: &url::Url) -> bool {
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Domain(d))) => d == "localhost",
        _ => false,
    }
}
