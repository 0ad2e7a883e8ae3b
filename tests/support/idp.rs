//! OpenID test peers: the real provider (npm `oidc-provider`, via
//! `tests/peers/idp.mjs`) on 127.0.0.2, a costguard started against it,
//! a small cookie-jar client that walks the authorization-code flow
//! without a browser, and the headless Chromium driver.
//!
//! The peers are installed by `tests/peers/install.sh` (run once per test
//! binary from here, and by `.ci/run`); if they cannot be installed the
//! tests fail, they never skip.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::Sidecar;
pub use super::send;

pub fn peers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers"))
}

/// Runs the idempotent installer once per test binary; panics if it fails.
pub fn ensure_peers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(peers_dir().join("install.sh"))
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "tests/peers/install.sh failed (the OIDC tests need node, npm packages and chromium):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A free loopback port (for the proxy, whose callback URL the provider
/// must know before costguard starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test peer's JSON answer to a GET (`body: None`) or a JSON POST of
/// `url`; panics unless it succeeds.
pub async fn peer_json(url: &str, body: Option<&Value>) -> Value {
    let (method, headers, body) = match body {
        Some(b) => (
            "POST",
            &[("content-type", "application/json")][..],
            b.to_string(),
        ),
        None => ("GET", &[][..], String::new()),
    };
    let (status, _, text) = send(method, url, headers, body.clone()).await;
    assert!(
        status.is_success(),
        "{method} {url} {body}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// The first line a peer prints on `out` (its ready report), or `None`
/// when none comes `within`.
pub fn first_line(out: impl Read + Send + 'static, within: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok()
}

/// The OpenID provider process.
pub struct Idp {
    child: Child,
    pub issuer: String,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Starts `idp.mjs` with `config` ({clients, users, ttl?}). A start
    /// that does not report within 30 s is killed and tried again (once
    /// in CI, node hung in its own startup with every thread parked).
    pub fn start(config: &Value) -> Self {
        ensure_peers();
        for _ in 0..3 {
            if let Some(idp) = Self::try_start(config, Duration::from_secs(30)) {
                return idp;
            }
        }
        panic!("idp.mjs did not start three times in a row");
    }

    fn try_start(config: &Value, within: Duration) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("idp.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let mut child = Command::new("node")
            .arg(peers_dir().join("idp.mjs"))
            .args(["--host", "127.0.0.2", "--port", "0", "--config"])
            .arg(&file)
            .arg("--state")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let Some(line) = first_line(child.stdout.take().unwrap(), within) else {
            eprintln!(
                "idp.mjs did not report within {within:?}; killing it (pid {})",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("idp.mjs did not start ({e}): {line:?}"));
        Some(Self {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            _dir: dir,
        })
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        peer_json(&format!("{}{path}", self.issuer), Some(&body)).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        peer_json(&format!("{}{path}", self.issuer), None).await
    }

    /// `{"jwks_fetches", "token_requests", "discovery_fetches"}`.
    pub async fn stats(&self) -> Value {
        self.get_json("/__test/stats").await
    }

    /// A token with `claims` signed by the provider (`alg`: RS256, ES256,
    /// HS256 keyed with the RSA public PEM, or none); `header` fields are
    /// merged into the JWS header.
    pub async fn mint(&self, claims: Value, header: Value, alg: &str, kid: Option<&str>) -> String {
        let mut body = json!({"claims": claims, "header": header, "alg": alg});
        if let Some(kid) = kid {
            body["kid"] = json!(kid);
        }
        self.post("/__test/mint", body).await["token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        // Only the process this harness started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `name=value` of each `Set-Cookie`.
pub fn set_cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| {
            let first = v.to_str().ok()?.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The full `Set-Cookie` line for `name`.
pub fn set_cookie_line(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

pub fn location(headers: &HeaderMap) -> String {
    headers
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A query parameter of a URL.
pub fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Replaces (or adds) a query parameter.
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    pairs.push((name.to_string(), value.to_string()));
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}?{q}")
}

/// What `/auth/login` handed out: the provider's authorization URL and the
/// login cookie.
#[derive(Debug, Clone)]
pub struct Started {
    pub authorize_url: String,
    pub login_cookie: String,
}

/// `GET /auth/login?QUERY` on the proxy: the headers of its redirect to
/// the identity provider.
pub async fn login_redirect(cg: &Sidecar, query: &str) -> HeaderMap {
    let (status, headers, body) = send(
        "GET",
        &cg.url(&format!("/auth/login?{query}")),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(status, 302, "{body}");
    headers
}

/// `GET /auth/login?QUERY` on the proxy.
pub async fn start_login(cg: &Sidecar, query: &str) -> Started {
    let headers = login_redirect(cg, query).await;
    Started {
        authorize_url: location(&headers),
        login_cookie: set_cookies(&headers)
            .remove("costguard_login")
            .expect("login cookie"),
    }
}

/// Walks the provider's side with a cookie jar, as a browser would:
/// authorization URL → our login form → credentials → back to the
/// callback. Returns the callback URL (with `code`, `state`, `iss`).
pub async fn authorize(authorize_url: &str, user: &str, password: &str) -> String {
    let mut jar: HashMap<String, String> = HashMap::new();
    let mut url = authorize_url.to_string();
    let mut method = "GET";
    let mut body = String::new();
    for _ in 0..10 {
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("cookie", cookie.as_str())];
        if method == "POST" {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let (status, h, text) = send(method, &url, &headers, std::mem::take(&mut body)).await;
        jar.extend(set_cookies(&h));
        if url.contains("/interaction/") && method == "GET" && status == 200 {
            // The login form: post the credentials.
            url = format!("{}/login", url.trim_end_matches('/'));
            method = "POST";
            body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("username", user)
                .append_pair("password", password)
                .finish();
            continue;
        }
        assert!(status.is_redirection(), "{method} {url}: {status} {text}");
        let next = location(&h);
        let next = if next.starts_with('/') {
            let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            format!("{origin}{next}")
        } else {
            next
        };
        if next.contains("/auth/callback") {
            return next;
        }
        url = next;
        method = "GET";
    }
    panic!("the provider did not send the browser back to the callback");
}

/// `GET` the callback on the proxy with the login cookie (and optionally an
/// existing session cookie).
pub async fn callback(callback_url: &str, login_cookie: &str) -> (StatusCode, HeaderMap, String) {
    send(
        "GET",
        callback_url,
        &[("cookie", &format!("costguard_login={login_cookie}"))],
        String::new(),
    )
    .await
}

/// A whole login without a browser; returns the session cookie value.
pub async fn login(cg: &Sidecar, query: &str, user: &str, password: &str) -> String {
    finish_login(&start_login(cg, query).await, user, password).await
}

/// The rest of a [`login`] that `started`: the provider's side, then the
/// callback; returns the session cookie value.
pub async fn finish_login(started: &Started, user: &str, password: &str) -> String {
    let cb = authorize(&started.authorize_url, user, password).await;
    let (status, headers, body) = callback(&cb, &started.login_cookie).await;
    assert_eq!(status, 302, "callback: {body}");
    set_cookies(&headers)
        .remove("costguard_session")
        .expect("session cookie")
}

/// GET on the proxy with a session cookie.
pub async fn get_with_session(
    cg: &Sidecar,
    path: &str,
    session: &str,
) -> (StatusCode, HeaderMap, String) {
    get_with_header(cg, path, "cookie", &format!("costguard_session={session}")).await
}

/// GET on the proxy with `Authorization: Bearer TOKEN`.
pub async fn get_with_bearer(
    cg: &Sidecar,
    path: &str,
    token: &str,
) -> (StatusCode, HeaderMap, String) {
    get_with_header(cg, path, "authorization", &format!("Bearer {token}")).await
}

async fn get_with_header(
    cg: &Sidecar,
    path: &str,
    name: &str,
    value: &str,
) -> (StatusCode, HeaderMap, String) {
    send("GET", &cg.url(path), &[(name, value)], String::new()).await
}

/// Runs the Chromium driver over `steps`; returns its JSON report (panics
/// with the report, and where the screenshot is, on failure).
pub fn browser(steps: Value) -> Value {
    ensure_peers();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("steps.json");
    std::fs::write(&file, json!({"steps": steps}).to_string()).unwrap();
    let out = Command::new("node")
        .arg(peers_dir().join("browser.mjs"))
        .arg("--steps")
        .arg(&file)
        .arg("--out")
        .arg(std::env::temp_dir().join("costguard-browser-failure"))
        .output()
        .expect("node runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser.mjs: no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], true, "browser run failed: {report:#}");
    report
}

/// Audit records of `event_type` (through the admin API).
pub fn audit_events(cg: &Sidecar, event_type: &str) -> Vec<Value> {
    let (status, body) = cg.admin(
        "GET",
        &format!("/admin/v1/audit?event_type={event_type}&limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["records"]
        .as_array()
        .or_else(|| body["events"].as_array())
        .or_else(|| body.as_array())
        .cloned()
        .unwrap_or_default()
}

/// Tenants made by a plain costguard on a fresh store, which is then
/// stopped (the provider's users and pinned providers need their ids
/// before the SSO-configured costguard starts on the same store).
pub fn tenants_in_store(tiers: &[&str]) -> (tempfile::TempDir, Vec<String>) {
    let store = tempfile::tempdir().unwrap();
    let mut cg = Sidecar::start_with_store("", &[], Some(&store.path().join("data")));
    let ids = tiers.iter().map(|t| cg.create_tenant(t)).collect();
    cg.terminate();
    cg.wait(Duration::from_secs(20));
    (store, ids)
}

/// An OpenID client registration at the provider, calling back to the
/// proxy on `port` (`secret: None`: a public client).
pub fn client(id: &str, secret: Option<&str>, alg: &str, port: u16) -> Value {
    let mut c = json!({
        "client_id": id,
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback")],
        "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/bye")],
        "id_token_signed_response_alg": alg,
        "token_endpoint_auth_method": if secret.is_some() { "client_secret_basic" } else { "none" },
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    if let Some(s) = secret {
        c["client_secret"] = json!(s);
    }
    c
}

/// A provider user.
pub fn user(password: &str, email: &str, tenant: &str, roles: &[&str], groups: &[&str]) -> Value {
    json!({"password": password, "email": email, "name": email, "tenant_id": tenant, "roles": roles, "groups": groups})
}

/// One `[[sso.oidc]]` table for a client of the provider at `issuer`.
/// `secret_file`: the client secret's file (confidential clients).
pub fn provider_toml(
    name: &str,
    issuer: &str,
    client_id: &str,
    secret_file: Option<&std::path::Path>,
    port: u16,
    extra: &str,
) -> String {
    let secret = secret_file
        .map(|p| format!("client_secret_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[[sso.oidc]]\nname = \"{name}\"\nissuer = \"{issuer}\"\nclient_id = \"{client_id}\"\n{secret}\
         redirect_url = \"http://127.0.0.1:{port}/auth/callback\"\n\
         post_logout_redirect_url = \"http://127.0.0.1:{port}/bye\"\n{extra}\n"
    )
}

/// Starts the SSO-configured costguard on `store` (from
/// [`tenants_in_store`]), proxy on `port`.
pub fn start_sidecar(store: &tempfile::TempDir, port: u16, config: &str) -> Sidecar {
    Sidecar::start_with_store(
        config,
        &[("COSTGUARD_PROXY_LISTEN", &format!("127.0.0.1:{port}"))],
        Some(&store.path().join("data")),
    )
}

/// Writes a secret file under `dir`.
pub fn secret_file(dir: &std::path::Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    path
}
