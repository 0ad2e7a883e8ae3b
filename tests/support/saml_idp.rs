//! The SAML test peer: a real pysaml2 identity provider
//! (`tests/peers/saml_idp.py`, signing with xmlsec1) on 127.0.0.2, with a
//! generator of hostile responses, and helpers to walk an SP-initiated
//! login by hand. Installed by `tests/peers/install.sh` (never skipped).

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::Sidecar;
use super::idp::{
    ensure_peers, first_line, location, login_redirect, param, peer_json, peers_dir, send,
    set_cookie_line, set_cookies,
};

/// The SAML identity provider process.
pub struct SamlIdp {
    child: Child,
    pub entity_id: String,
    pub sso_url: String,
    pub cert_file: String,
    pub attacker_cert_file: String,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for SamlIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SamlIdp {
    /// Starts the IdP for the SP of a costguard on `port`, with `users`
    /// (name → {password, name_id, attributes}).
    pub fn start(port: u16, users: Value, sign: &str) -> Self {
        ensure_peers();
        let dir = tempfile::tempdir().unwrap();
        let config = json!({
            "host": "127.0.0.2",
            "port": 0,
            "dir": dir.path(),
            "sps": [{
                "entity_id": format!("http://127.0.0.1:{port}/auth/saml/metadata"),
                "acs_url": format!("http://127.0.0.1:{port}/auth/saml/acs"),
            }],
            "users": users,
            "sign": sign,
            "assertion_ttl": 300,
        });
        let file = dir.path().join("idp.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let mut child = Command::new(peers_dir().join(".venv/bin/python"))
            .arg(peers_dir().join("saml_idp.py"))
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the SAML IdP starts (tests/peers/install.sh makes its venv)");
        let line =
            first_line(child.stdout.take().unwrap(), Duration::from_secs(30)).unwrap_or_default();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("saml_idp.py did not start ({e}): {line:?}\n{err}")
        });
        let s = |k: &str| ready[k].as_str().unwrap().to_string();
        Self {
            base: format!("http://127.0.0.2:{}", ready["port"]),
            entity_id: s("entity_id"),
            sso_url: s("sso_url"),
            cert_file: s("cert_file"),
            attacker_cert_file: s("attacker_cert_file"),
            child,
            _dir: dir,
        }
    }

    /// A response from `/__test/response` (see saml_idp.py): its base64.
    pub async fn response(&self, spec: Value) -> String {
        let v = peer_json(&format!("{}/__test/response", self.base), Some(&spec)).await;
        v["saml_response"].as_str().unwrap().to_string()
    }

    /// `{"sso_requests", "logins", "last_authn_request"}`.
    pub async fn stats(&self) -> Value {
        peer_json(&format!("{}/__test/stats", self.base), None).await
    }
}

/// One `[[sso.saml]]` table for `idp` and a costguard on `port`.
pub fn saml_toml(idp: &SamlIdp, port: u16, extra: &str) -> String {
    format!(
        "[[sso.saml]]\nname = \"corp\"\nidp_entity_id = \"{}\"\nidp_sso_url = \"{}\"\n\
         idp_cert_file = \"{}\"\nsp_entity_id = \"http://127.0.0.1:{port}/auth/saml/metadata\"\n\
         acs_url = \"http://127.0.0.1:{port}/auth/saml/acs\"\ntenant_attribute = \"tenant_id\"\n\
         roles_attribute = \"roles\"\n{extra}\n",
        idp.entity_id, idp.sso_url, idp.cert_file
    )
}

/// A SAML user of the IdP.
pub fn saml_user(password: &str, name_id: &str, tenant: &str, roles: &[&str]) -> Value {
    json!({
        "password": password,
        "name_id": name_id,
        "attributes": {"email": [name_id], "tenant_id": [tenant], "roles": roles, "name": [name_id]},
    })
}

/// An SP-initiated login started by hand: the SAML login cookie and the
/// AuthnRequest as the IdP would read it.
pub struct Pending {
    /// `__Host-costguard_saml=…`, for the ACS post.
    pub cookie: String,
    /// The AuthnRequest's ID.
    pub request_id: String,
    /// The AuthnRequest XML.
    pub request_xml: String,
    /// The whole `Set-Cookie` line.
    pub set_cookie: String,
}

/// `GET /auth/login?{query}` → the pending SAML login.
pub async fn start_saml_login(cg: &Sidecar, query: &str) -> Pending {
    let headers = login_redirect(cg, query).await;
    let to = location(&headers);
    let request = param(&to, "SAMLRequest").expect("SAMLRequest in the redirect");
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(request)
        .unwrap();
    let mut request_xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut request_xml)
        .unwrap();
    let request_id = request_xml
        .split(" ID=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let cookies = set_cookies(&headers);
    let value = cookies
        .get("__Host-costguard_saml")
        .expect("SAML login cookie");
    Pending {
        cookie: format!("__Host-costguard_saml={value}"),
        request_id,
        request_xml,
        set_cookie: set_cookie_line(&headers, "__Host-costguard_saml").unwrap(),
    }
}

/// Posts `saml_response` to the ACS as the IdP's auto-submitting form
/// does, with `cookie` (the SAML login cookie, or none).
pub async fn post_acs(
    cg: &Sidecar,
    saml_response: &str,
    cookie: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", saml_response)
        .finish();
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    send("POST", &cg.url("/auth/saml/acs"), &headers, form).await
}
