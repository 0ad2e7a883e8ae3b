//! The process as an operator sees it: graceful shutdown, readiness,
//! configuration checking, `--help`, and the demo.

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Sidecar, Upstream, binary, cli, get, get_as, sidecar};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start().await;
    let mut cg = sidecar(&up, "shutdown_grace = \"20s\"\n");
    let (status, _, body) = get(&format!("http://{}/ready", cg.admin)).await;
    assert_eq!(status, 200, "{body}");

    let slow_url = cg.url("/slow/2000");
    let who = cg.tenant_and_key();
    let slow = tokio::spawn(async move { get_as(&slow_url, &who.key).await });
    // Wait until the upstream has the request, then ask costguard to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cg.terminate();

    // Readiness fails at once, on the admin port, while the drain goes on.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, _, body) = get(&format!("http://{}/ready", cg.admin)).await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No new connections on the proxy port.
    assert!(
        TcpStream::connect(cg.proxy).is_err(),
        "the proxy port still accepts"
    );

    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished");
    assert_eq!(body, "upstream saw 0 bytes");
    let exit = tokio::task::block_in_place(|| cg.wait(Duration::from_secs(15)));
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_ready_answer_on_both_ports() {
    let up = Upstream::start().await;
    let cg = sidecar(&up, "");
    for base in [cg.proxy, cg.admin] {
        let (status, _, body) = get(&format!("http://{base}/health")).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
            "ok"
        );
        let (status, _, body) = get(&format!("http://{base}/ready")).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ready");
        if base == cg.admin {
            assert_eq!(v["checks"]["store"], "ok");
            assert_eq!(v["checks"]["config"], "ok");
        } else {
            // The public port tells the status only (issue 15 §5g).
            assert_eq!(v, serde_json::json!({"status": "ready"}));
        }
    }
    let (status, _, body) = get(&format!("http://{}/admin/v1/nothing", cg.admin)).await;
    assert_eq!(status, 404);
    assert_eq!(support::error_code(&body), "not_found");
    assert_eq!(up.count(), 0);
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[proxy]
listen = "not-an-address"
upstream = "https://elsewhere.example/api"
upstream_response_timeout = "forever"
colour = "blue"
[limits]
max_header_count = 0
max_body_bytes = -1
[admin]
listen = "127.0.0.1:99999"
"#,
    )
    .unwrap();
    let out = cli(["serve", "--check-config", "--config"])
        .arg(&path)
        .env("COSTGUARD_LIMITS_IDLE_TIMEOUT", "0s")
        .run();
    assert_eq!(out.status.code(), Some(2));
    let stderr = &out.stderr;
    // Unknown and mistyped keys, and the problems of the rest, all at once.
    for key in [
        "proxy.upstream_response_timeout",
        "proxy.colour",
        "limits.max_body_bytes",
        "proxy.listen",
        "proxy.upstream",
        "limits.max_header_count",
        "limits.idle_timeout (from COSTGUARD_LIMITS_IDLE_TIMEOUT)",
        "admin.listen",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(stderr.contains("8 problems"), "{stderr}");

    // A TLS certificate or key that cannot be read is reported with its key.
    std::fs::write(
        &path,
        "[proxy]\ntls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let out = cli(["serve", "--check-config", "--config"])
        .arg(&path)
        .run();
    assert_eq!(out.status.code(), Some(2));
    let stderr = &out.stderr;
    assert!(
        stderr.contains("proxy.tls_cert_file") && stderr.contains("proxy.tls_key_file"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/costguard.example.toml");
    let out = cli(["serve", "--check-config", "--config", example]).run();
    assert!(out.success_stdout().contains("valid"));
}

#[test]
fn help_explains_every_command() {
    let out = cli(["--help"]).run();
    assert!(out.status.success());
    let help = &out.stdout;
    for word in ["serve", "demo", "--log-format"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    let help = cli(["serve", "--help"]).run().stdout;
    for word in ["--config", "--check-config", "COSTGUARD_"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    assert!(
        cli(["demo", "--help"])
            .run()
            .stdout
            .contains("echo upstream")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_the_echo_upstream_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary());
    cmd.args([
        "--log-format",
        "json",
        "demo",
        "--proxy-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut cg = Sidecar::spawn(cmd, dir);
    // The banner prints one curl line per key: the first is Acme's viewer.
    let mut banner = String::new();
    for _ in 0..100 {
        banner = cg.logs();
        if banner.contains("Ctrl-C stops") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: Vec<(String, String)> = banner
        .lines()
        .filter_map(|l| {
            let url = l.split_whitespace().find(|w| w.contains("/v1/tenants/"))?;
            l.contains("Bearer costops_").then_some(())?;
            let tenant = url.split('/').nth(5)?.to_string();
            let key = l
                .split("Bearer ")
                .nth(1)?
                .trim_end_matches('\'')
                .to_string();
            Some((tenant, key))
        })
        .collect();
    assert_eq!(
        keys.len(),
        7,
        "six Acme keys (one per role) and one Startup key:\n{banner}"
    );
    let (acme, viewer_key) = &keys[0];
    let client = support::client();
    let req = http::Request::builder()
        .uri(cg.url(&format!("/v1/tenants/{acme}/costs?month=2026-11")))
        .header("x-costops-tenant-id", "forged")
        .header("authorization", format!("Bearer {viewer_key}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], format!("/v1/tenants/{acme}/costs"));
    assert_eq!(echo["query"], "month=2026-11");
    assert_eq!(
        echo["headers"]["x-costops-tenant-id"],
        serde_json::json!([acme])
    );
    assert_eq!(
        echo["headers"]["x-costops-roles"],
        serde_json::json!(["viewer"])
    );
    assert_eq!(
        echo["headers"]["x-costops-auth-method"],
        serde_json::json!(["api_key"])
    );
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
    // Without a key: 401.
    let (status, _, _) = get(&cg.url(&format!("/v1/tenants/{acme}/costs"))).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&format!("http://{}/ready", cg.admin)).await;
    assert_eq!(status, 200);
    assert!(
        cg.logs().contains("costguard demo"),
        "the banner says what it does"
    );
    cg.terminate();
    let exit = tokio::task::block_in_place(|| cg.wait(Duration::from_secs(15)));
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_costguard_on_the_same_port_refuses_to_start() {
    // The proxy port's workers share it with SO_REUSEPORT; another costguard
    // must still not be able to join them and take half the connections.
    let up = Upstream::start().await;
    let first = sidecar(&up, "workers = 2\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("second.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{}\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n",
            first.proxy,
            up.url(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let mut second = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("COSTGUARD_POLICY_DIR", policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second instance started and shares the port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains(&format!("cannot listen on {}", first.proxy)),
        "{all}"
    );
    // The first still serves.
    let (status, _, _) = get(&first.url("/health")).await;
    assert_eq!(status, 200);
}
