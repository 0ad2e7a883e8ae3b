//! Span export over OTLP/HTTP through the real binary, received by a peer
//! that decodes it with the OpenTelemetry project's own protobuf classes
//! (tests/peers/otlp_receiver.py): one server span per request and one per
//! stage, in the caller's trace, with the same ids the upstream received in
//! `traceparent`; sampling; a refusing receiver counted, never blocking.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::idp::{ensure_peers, first_line, peer_json, peers_dir};
use support::{Sidecar, Upstream, metric_sample, send};

/// The receiver process, killed when dropped.
struct Receiver {
    child: Child,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start() -> Self {
        ensure_peers();
        let mut child = Command::new(peers_dir().join(".venv/bin/python"))
            .arg(peers_dir().join("otlp_receiver.py"))
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let port = first_line(child.stdout.take().unwrap(), Duration::from_secs(20))
            .expect("the receiver prints its port");
        Self {
            child,
            url: format!("http://127.0.0.1:{}", port.trim()),
        }
    }

    async fn spans(&self) -> Vec<Value> {
        peer_json(&format!("{}/spans", self.url), None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until at least `n` spans arrived.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans().await;
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn start(up: &Upstream, receiver: &Receiver, extra: &[(&str, &str)]) -> Sidecar {
    let endpoint = format!("{}/v1/traces", receiver.url);
    let mut env = vec![("COSTGUARD_TRACING_OTLP_ENDPOINT", endpoint.as_str())];
    env.extend_from_slice(extra);
    Sidecar::start(&support::config_for(&up.url(), ""), &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_a_server_span_with_its_stages_in_the_callers_trace() {
    let receiver = Receiver::start();
    let up = Upstream::start().await;
    let cg = start(&up, &receiver, &[]);
    let who = cg.tenant_and_key();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let url = cg.url(&format!("/v1/tenants/{}/costs", who.tenant));
    let (status, _, _) = send(
        "GET",
        &url,
        &[
            ("x-api-key", who.key.as_str()),
            ("traceparent", parent),
            ("x-request-id", "span-1"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let spans = receiver.wait_for(4).await;
    let root = spans
        .iter()
        .find(|s| s["name"] == "costguard.request")
        .expect("a request span");
    assert_eq!(root["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        root["parent_span_id"], "b7ad6b7169203331",
        "the caller's span"
    );
    // The upstream's parent is the request span.
    assert_eq!(root["span_id"], sent[36..52]);
    assert_eq!(root["kind"], 2, "SERVER");
    assert_eq!(root["resource"]["service.name"], "costguard");
    let a = &root["attributes"];
    assert_eq!(a["http.route"], "/v1/tenants/{tenant}/costs");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["costguard.decision"], "allowed");
    assert_eq!(a["costguard.request_id"], "span-1");
    // No tenant id, key or path anywhere in the spans.
    let text = serde_json::to_string(&spans).unwrap();
    assert!(
        !text.contains(&who.tenant) && !text.contains(&who.key),
        "{text}"
    );
    let mut names: Vec<&str> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == root["span_id"])
        .map(|s| {
            assert_eq!(s["trace_id"], root["trace_id"]);
            assert!(s["start"].as_u64() >= root["start"].as_u64());
            assert!(s["end"].as_u64() <= root["end"].as_u64());
            s["name"].as_str().unwrap()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["costguard.audit", "costguard.decide", "costguard.upstream"]
    );

    // A denial is a request span with its reason and only the decision
    // stage; a new trace has no parent.
    let (status, _, _) = send("GET", &url, &[], String::new()).await;
    assert_eq!(status, 401);
    let spans = receiver.wait_for(6).await;
    let denied = spans
        .iter()
        .find(|s| s["attributes"]["costguard.reason"] == "unauthenticated")
        .expect("the denial's span");
    assert_eq!(denied["parent_span_id"], "");
    assert_eq!(denied["attributes"]["costguard.decision"], "denied");
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["parent_span_id"] == denied["span_id"])
            .map(|s| s["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["costguard.decide"]
    );
    let (_, _, page) = support::get(&format!("http://{}/metrics", cg.admin)).await;
    assert_eq!(
        metric_sample(&page, "costguard_trace_requests_exported_total"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_keeps_the_callers_decision_and_failures_are_counted() {
    let receiver = Receiver::start();
    let up = Upstream::start().await;
    // New traces are never sampled; a caller's sampled trace still is.
    let cg = start(&up, &receiver, &[("COSTGUARD_TRACING_SAMPLE_RATIO", "0")]);
    let who = cg.tenant_and_key();
    let url = cg.url(&format!("/v1/tenants/{}/costs", who.tenant));
    let key = who.key.as_str();
    for _ in 0..5 {
        assert_eq!(
            send("GET", &url, &[("x-api-key", key)], String::new())
                .await
                .0,
            200
        );
    }
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let h = [("x-api-key", key), ("traceparent", unsampled)];
    assert_eq!(send("GET", &url, &h, String::new()).await.0, 200);
    // New, unsampled traces are still propagated, flagged unsampled.
    assert!(
        up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    let sampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let h = [("x-api-key", key), ("traceparent", sampled)];
    assert_eq!(send("GET", &url, &h, String::new()).await.0, 200);
    let spans = receiver.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_later = receiver.spans().await;
    assert_eq!(spans.len(), spans_later.len());
    assert_eq!(
        spans_later
            .iter()
            .filter(|s| s["name"] == "costguard.request")
            .map(|s| s["trace_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["1af7651916cd43dd8448eb211c80319c"],
        "only the caller's sampled trace"
    );

    // A receiver that refuses: the request still succeeds at once, the
    // failure is counted.
    let (status, _, _) = send(
        "POST",
        &format!("{}/fail", receiver.url),
        &[],
        "1".to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let begun = Instant::now();
    assert_eq!(send("GET", &url, &h, String::new()).await.0, 200);
    assert!(begun.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, page) = support::get(&format!("http://{}/metrics", cg.admin)).await;
        if metric_sample(&page, "costguard_trace_export_failures_total") == Some(1.0) {
            assert_eq!(
                metric_sample(&page, "costguard_trace_requests_exported_total"),
                Some(1.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_bad_endpoint_or_ratio_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[tracing]\notlp_endpoint = \"ftp://collector/v1/traces\"\nsample_ratio = 1.5\n",
    )
    .unwrap();
    let run = support::cli(["serve", "--check-config", "--config"])
        .arg(&config)
        .run();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("tracing.otlp_endpoint"), "{said}");
    assert!(said.contains("tracing.sample_ratio"), "{said}");
}
