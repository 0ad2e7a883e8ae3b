//! The single sign-on test world, as the OpenID and SAML tests set it up:
//! tenants made first on a fresh store (the provider's users and pinned
//! providers need their ids), a proxy port the provider must know before
//! costguard starts, then the provider, a recording upstream and the
//! SSO-configured costguard on that store and port. Also what those tests
//! read back: browser reports, cookies, audited failure reasons.

use serde_json::Value;

use super::idp::{audit_events, free_port, start_sidecar, tenants_in_store};
use super::{Seen, Sidecar, Upstream, config_for};

/// Before the provider starts: the store with its tenants, and the port.
pub struct Setup {
    pub store: tempfile::TempDir,
    /// One tenant id per tier asked for, in order.
    pub tenants: Vec<String>,
    /// The proxy's port (the provider's callback URLs name it).
    pub port: u16,
}

impl Setup {
    /// Tenants of `tiers` on a fresh store, and a free port for the proxy.
    pub fn new(tiers: &[&str]) -> Self {
        let (store, tenants) = tenants_in_store(tiers);
        Self {
            store,
            tenants,
            port: free_port(),
        }
    }

    /// Starts a recording upstream and costguard in front of it, on this
    /// store and port, with `config` after the `[proxy]` table's upstream
    /// line (see [`config_for`]); `idp` is kept alive with it.
    pub async fn start<P>(self, idp: P, config: &str) -> World<P> {
        let up = Upstream::start().await;
        let cg = start_sidecar(&self.store, self.port, &config_for(&up.url(), config));
        let mut tenants = self.tenants.into_iter();
        World {
            cg,
            idp,
            up,
            tenant: tenants.next().expect("at least one tenant"),
            other: tenants.next().unwrap_or_default(),
            port: self.port,
            _store: self.store,
        }
    }
}

/// One provider `P` (or the first of several), one costguard, one
/// recording upstream, and the tenants.
pub struct World<P> {
    pub cg: Sidecar,
    pub idp: P,
    pub up: Upstream,
    /// The first tenant.
    pub tenant: String,
    /// The second tenant (empty if there is only one).
    pub other: String,
    /// The proxy's port.
    pub port: u16,
    _store: tempfile::TempDir,
}

/// A tenant's costs route (a `view_costs` route of the shipped policy).
pub fn costs(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/costs")
}

/// The result of the browser step saved as `name` in a
/// [`browser`](super::idp::browser) report.
pub fn step(report: &Value, name: &str) -> Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
        .clone()
}

/// Asserts that no costguard cookie came to the upstream with `seen`.
pub fn assert_no_costguard_cookie(seen: &Seen) {
    let upstream_cookies = seen
        .headers
        .get("cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        !upstream_cookies.contains("costguard_"),
        "{upstream_cookies}"
    );
}

/// The session cookie among a browser's `cookies`, asserted HttpOnly,
/// Secure and SameSite=Lax.
pub fn session_cookie(cookies: &Value) -> Value {
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "costguard_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:#}"))
        .clone();
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    session
}

/// `auth.login_failed` reasons and `security.suspicious` reasons so far.
pub fn failure_reasons(cg: &Sidecar) -> (Vec<String>, Vec<String>) {
    let reasons = |t: &str| {
        audit_events(cg, t)
            .iter()
            .map(|r| {
                r["details"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    (reasons("auth.login_failed"), reasons("security.suspicious"))
}
