//! Test harness: the real `costguard` binary on ephemeral loopback ports,
//! and a recording upstream in the test process.
#![allow(dead_code, unreachable_pub)]

pub mod audit;
pub mod idp;
pub mod pg;
pub mod saml_idp;
pub mod services;
pub mod shared;
pub mod sso;

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The raw request target (path and query, byte for byte).
    pub target: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The body, when it was at most 1 MiB.
    pub body: Option<Bytes>,
    /// Whether the body arrived whole (false: the proxy aborted it).
    pub complete: bool,
}

/// A recording upstream. Paths choose behaviour:
/// `/slow/<ms>` answers after a delay, `/hang` never answers,
/// `/sink` counts the body without keeping it, anything else answers 200.
/// A request header `x-test-cost: V` makes the answer carry
/// `X-CostOps-Cost-USD: V`, as a metered upstream would; each
/// `x-test-budget-alert: V` an `X-CostOps-Budget-Alert: V`; and
/// `x-test-status: N` sets the status.
/// Every answer carries `x-upstream: yes`, a hop-by-hop `Connection` token
/// and a `keep-alive` header the proxy must strip.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, record.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            connections,
        }
    }

    /// How many connections the proxy has opened to this upstream.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    // `x-test-cost: V` asks for the cost header a metered upstream sends.
    let cost = parts.headers.get("x-test-cost").cloned();
    // `x-test-status: N` asks for that response status.
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| StatusCode::from_bytes(v.as_bytes()).ok())
        .unwrap_or(StatusCode::OK);
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let keep = path != "/sink";
    let mut len = 0u64;
    let mut kept = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        if let Some(d) = frame.data_ref() {
            len += d.len() as u64;
            if keep && kept.len() + d.len() <= 1 << 20 {
                kept.extend_from_slice(d);
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target,
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: len,
        body: (keep && kept.len() as u64 == len).then(|| Bytes::from(kept)),
        complete,
    });
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    let mut resp = Response::builder();
    if let Some(cost) = cost {
        resp = resp.header("x-costops-cost-usd", cost);
    }
    // `x-test-budget-alert: V` (repeatable) asks for the budget alerts a
    // cost service raises.
    for alert in parts.headers.get_all("x-test-budget-alert") {
        resp = resp.header("x-costops-budget-alert", alert);
    }
    let resp = resp
        .status(status)
        .header("x-upstream", "yes")
        .header("connection", "x-upstream-private")
        .header("x-upstream-private", "secret")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(format!("upstream saw {len} bytes"))))
        .unwrap();
    Ok(resp)
}

/// The shipped policy directory.
pub fn shipped_policy() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

/// Copies the shipped policy's files into `to` (made if missing).
pub fn copy_shipped_policy(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["roles.toml", "routes.toml"] {
        std::fs::copy(shipped_policy().join(f), to.join(f)).unwrap();
    }
}

/// The shipped policy plus a catch-all route (any method, any path, needs
/// `view_costs`), for the tests that are about the proxy, not the policy.
pub fn test_policy(under: &std::path::Path) -> PathBuf {
    let dir = under.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(shipped_policy()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("zz-test-catch-all.toml"),
        "[[routes]]\nmethod = \"*\"\npath = \"/**\"\npermission = \"view_costs\"\n",
    )
    .unwrap();
    dir
}

/// The bootstrap admin token every test sidecar gets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Failed authentications are throttled per source address (20 a minute by
/// default); a `[rate_limit]` table for tests that send many refused
/// credentials from 127.0.0.1 on purpose.
pub const NO_AUTH_THROTTLE: &str = "[rate_limit]\nfailed_auth_per_minute = 1000000\n";

/// A config for a proxy in front of `upstream` (a URL): the `[proxy]`
/// table's upstream, then `extra` (more `[proxy]` keys, or further tables).
pub fn config_for(upstream: &str, extra: &str) -> String {
    format!("[proxy]\nupstream = \"{upstream}\"\n{extra}")
}

/// `costguard serve` in front of `up` with `extra` config text (see
/// [`config_for`]) and a fresh store; the test policy (the shipped one plus
/// a catch-all route) unless `extra` has a `[policy]` table.
pub fn sidecar(up: &Upstream, extra: &str) -> Sidecar {
    Sidecar::start(&config_for(&up.url(), extra), &[])
}

/// Like [`sidecar`], with the policy in `dir` (through
/// `COSTGUARD_POLICY_DIR`).
pub fn sidecar_with_policy(up: &Upstream, extra: &str, dir: &Path) -> Sidecar {
    Sidecar::start(
        &config_for(&up.url(), extra),
        &[("COSTGUARD_POLICY_DIR", dir.to_str().unwrap())],
    )
}

/// A `[policy]` table naming `dir`, for the end of a config.
pub fn policy_table(dir: &Path) -> String {
    format!("[policy]\ndir = \"{}\"\n", dir.display())
}

/// How a run of the costguard binary ended and what it printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts that the run succeeded (its stderr the message) and returns
    /// its stdout.
    pub fn success_stdout(&self) -> &str {
        assert!(self.status.success(), "{}", self.stderr);
        &self.stdout
    }
}

/// `costguard ARGS…` as a command line tool (not a server): more arguments
/// and environment, then [`Cli::run`].
pub struct Cli(Command);

/// The binary under test with `args`.
pub fn cli<I, S>(args: I) -> Cli
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(binary());
    cmd.args(args);
    Cli(cmd)
}

impl Cli {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    /// Runs it to the end; stdout and stderr as text.
    pub fn run(mut self) -> Run {
        let out = self.0.output().expect("costguard runs");
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The real binary, started with a config and JSON logs on stdout.
pub struct Sidecar {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// The binary under test: this build's, or `TEST_COSTGUARD_BINARY` (to show
/// that a new test fails on an older build).
pub fn binary() -> PathBuf {
    std::env::var_os("TEST_COSTGUARD_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_costguard")))
}

impl Sidecar {
    /// Starts `costguard serve` with `config` (TOML) plus `env`; listeners
    /// on 127.0.0.1:0 and a fresh store unless the config/env says otherwise.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_store(config, env, None)
    }

    /// Like [`Sidecar::start`], with the store in `store` (to restart on
    /// the same data).
    pub fn start_with_store(
        config: &str,
        env: &[(&str, &str)],
        store: Option<&std::path::Path>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = store
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| dir.path().join("data"));
        let path = dir.path().join("costguard.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--log-format")
            .arg("json")
            .env("COSTGUARD_PROXY_LISTEN", "127.0.0.1:0")
            .env("COSTGUARD_ADMIN_LISTEN", "127.0.0.1:0")
            .env("COSTGUARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("COSTGUARD_STORE_PATH", &store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !config.contains("[policy]") && !env.iter().any(|(k, _)| *k == "COSTGUARD_POLICY_DIR") {
            cmd.env("COSTGUARD_POLICY_DIR", test_policy(dir.path()));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, dir)
    }

    /// Starts an arbitrary costguard command that logs JSON to stdout.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Self {
        let mut child = cmd.spawn().expect("costguard starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let listening = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|v| v["message"] == "Listening.");
                // Kept before the addresses are handed over, so a test that
                // reads the logs right after the start finds the line.
                sink.lock().unwrap().push(line);
                if let Some(v) = listening {
                    let p = v["proxy"].as_str().unwrap().parse().unwrap();
                    let a = v["admin"].as_str().unwrap().parse().unwrap();
                    let _ = tx.send((p, a));
                }
            }
        });
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let (proxy, admin) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "costguard did not start; output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child: Some(child),
            proxy,
            admin,
            logs,
            _dir: dir,
        }
    }

    /// Calls the admin API with `credential` (a bearer token or key) and
    /// returns status and JSON body.
    pub fn admin_call(
        &self,
        method: &str,
        path: &str,
        credential: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nAuthorization: Bearer {credential}\r\n"
        );
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        } else if method != "GET" && method != "DELETE" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let resp = raw_request(self.admin, req.as_bytes());
        let json = serde_json::from_str(&resp.body).unwrap_or(serde_json::Value::Null);
        (resp.status, json)
    }

    /// As the bootstrap admin.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.admin_call(method, path, ADMIN_TOKEN, body.as_ref())
    }

    /// Creates a tenant of `tier`; returns its id.
    pub fn create_tenant(&self, tier: &str) -> String {
        let (status, body) = self.admin(
            "POST",
            "/admin/v1/tenants",
            Some(serde_json::json!({"organization_name": format!("Test {tier}"), "admin_email": "ops@test.example", "tier": tier})),
        );
        assert_eq!(status, 201, "{body}");
        body["tenant_id"].as_str().unwrap().to_string()
    }

    /// Creates a key with `roles` in `tenant`; returns (key id, secret).
    pub fn create_key(&self, tenant: &str, roles: &[&str]) -> (String, String) {
        self.create_key_with(
            tenant,
            serde_json::json!({"description": "test", "roles": roles}),
        )
    }

    /// Creates a key from a request body; returns (key id, secret).
    pub fn create_key_with(&self, tenant: &str, request: serde_json::Value) -> (String, String) {
        let (status, body) = self.admin(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(request),
        );
        assert_eq!(status, 201, "{body}");
        (
            body["key_id"].as_str().unwrap().to_string(),
            body["api_key"].as_str().unwrap().to_string(),
        )
    }

    /// A fresh enterprise tenant and an `admin` key in it.
    pub fn tenant_and_key(&self) -> Caller {
        let tenant = self.create_tenant("enterprise");
        let (key_id, key) = self.create_key(&tenant, &["admin"]);
        Caller {
            tenant,
            key_id,
            key,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends SIGKILL to the process this harness started and reaps it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.as_mut().unwrap().wait();
    }

    /// Sends SIGTERM to the process this harness started.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`HUP`, `TERM`, …) to the process this harness
    /// started.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "costguard did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the process, in KiB (Linux).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tenant and one of its keys.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub key_id: String,
    pub key: String,
}

impl Caller {
    /// The `Authorization` header line for raw requests.
    pub fn auth_line(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.key)
    }
}

/// A parsed HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Writes `request` bytes as-is on a new connection and reads one response
/// (the request should say `Connection: close`).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

/// Like [`raw_request`], but `None` when the server closed or reset the
/// connection without a complete response head.
pub fn try_raw_request(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.contains("\r\n\r\n").then(|| parse_response(&buf))
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A plain HTTP/1.1 client (pooled, keep-alive).
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` and return status, headers and body text.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    get_with(url, None).await
}

/// GET `url` with `Authorization: Bearer KEY`.
pub async fn get_as(url: &str, key: &str) -> (StatusCode, HeaderMap, String) {
    get_with(url, Some(key)).await
}

async fn get_with(url: &str, key: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send("GET", url, &headers, String::new()).await
}

/// One HTTP request; no redirects followed.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        client().request(req.body(Full::new(Bytes::from(body))).unwrap()),
    )
    .await
    .expect("answer within 20 s")
    .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Asserts the contract's error body and returns its code.
pub fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let e = &v["error"];
    assert!(e["message"].is_string(), "{body}");
    assert!(
        e["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    e["code"].as_str().unwrap().to_string()
}

/// A CA and a leaf certificate for `localhost` / `127.0.0.1` signed by it
/// (rustls refuses a self-signed CA used as its own end entity): (CA PEM,
/// leaf PEM, leaf private key PEM).
pub fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "costguard test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// The value of the sample `series` (metric name and labels exactly as
/// `/metrics` prints them), if the page has it.
pub fn metric_sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}
