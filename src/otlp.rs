//! Trace export over OTLP/HTTP (`tracing.otlp_endpoint`): one server span
//! per proxied request (`costguard.request`, costguard's span of the W3C
//! trace in [`crate::trace_context`]) and one child span per stage that ran:
//! `costguard.decide` (route, authentication, authorization, limits),
//! `costguard.audit` (the record written before forwarding),
//! `costguard.upstream` (the forwarded request until its response head).
//!
//! Off by default, and then free: the pipeline records no stage times and
//! builds no span. On, a finished request's spans go into a bounded queue
//! without waiting ([`Tracer::submit`]; a full queue drops and counts them,
//! a proxy never stalls on its tracing), and one task sends them in batches
//! (the OpenTelemetry project's protobuf messages, `POST` with
//! `application/x-protobuf`, through the same bounded hyper/rustls client
//! the sign-on calls use). Only sampled traces are exported: a caller's
//! sampled flag is kept; a new trace is sampled with `tracing.sample_ratio`.
//! Attributes are the route template, never the path, and no identity.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prometheus_client::encoding::DescriptorEncoder;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::config::TracingConfig;
use crate::metrics;
use crate::sso::http::IdpClient;
use crate::trace_context::TraceContext;

/// Most requests whose spans are sent in one export call.
const BATCH: usize = 512;
/// How often a partial batch is sent.
const INTERVAL: Duration = Duration::from_secs(1);

/// A stage's span: its name and when it started and ended, as offsets
/// from the request's arrival.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    /// `costguard.decide`, `costguard.audit`, `costguard.upstream`.
    pub name: &'static str,
    /// Start, from the request's arrival.
    pub start: Duration,
    /// End, from the request's arrival.
    pub end: Duration,
}

/// One finished request, as exported.
#[derive(Debug)]
pub struct RequestSpans {
    /// The trace and costguard's span in it.
    pub trace: TraceContext,
    /// When the request arrived (wall clock).
    pub arrived: SystemTime,
    /// How long it took, to the end of the response body.
    pub duration: Duration,
    /// The stages that ran.
    pub stages: Vec<Stage>,
    /// `http.request.method` (a standard method or `other`).
    pub method: &'static str,
    /// `http.route`: the matched route's template.
    pub route: Option<Arc<str>>,
    /// `http.response.status_code`.
    pub status: u16,
    /// `costguard.decision`.
    pub decision: &'static str,
    /// `costguard.reason`: the contract's error code, or `none`.
    pub reason: &'static str,
    /// `costguard.request_id`.
    pub request_id: String,
}

#[derive(Debug, Default)]
struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The export queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracer {
    tx: mpsc::Sender<RequestSpans>,
    stats: Arc<Stats>,
    sample_ratio: f64,
}

impl Tracer {
    /// Starts the export task (on the current runtime); `None` when no
    /// endpoint is configured. The task ends, after sending what is
    /// queued, once every clone of the tracer is dropped.
    pub fn start(config: &TracingConfig) -> Result<Option<Self>, String> {
        let Some(endpoint) = config.otlp_endpoint.clone() else {
            return Ok(None);
        };
        let client = IdpClient::new(config.ca_file.as_deref(), config.export_timeout, 64 * 1024)
            .map_err(|e| format!("tracing.ca_file: {e}"))?;
        let (tx, rx) = mpsc::channel(config.max_queue.max(1));
        let stats = Arc::new(Stats::default());
        tokio::spawn(export(
            rx,
            client,
            endpoint,
            config.service_name.clone(),
            stats.clone(),
        ));
        Ok(Some(Self {
            tx,
            stats,
            sample_ratio: config.sample_ratio,
        }))
    }

    /// Whether a new trace (`trace`, just started) is sampled.
    pub fn sample_new(&self, trace: &mut TraceContext) {
        let draw = u64::from_be_bytes(trace.trace_id[8..].try_into().expect("8 bytes"));
        let sampled = (draw as f64) < self.sample_ratio * (u64::MAX as f64);
        trace.flags = (trace.flags & !1) | u8::from(sampled);
    }

    /// Queues a finished request's spans, unless its trace is not sampled;
    /// never waits (a full queue drops them, counted).
    pub fn submit(&self, spans: RequestSpans) {
        if spans.trace.flags & 1 == 0 {
            return;
        }
        if self.tx.try_send(spans).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exporter's metrics.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter(
            enc,
            "costguard_trace_requests_exported",
            "Requests whose spans were accepted by the OTLP endpoint.",
            load(&self.stats.exported),
        )?;
        metrics::counter(
            enc,
            "costguard_trace_requests_dropped",
            "Requests whose spans were dropped: the export queue was full (tracing.max_queue).",
            load(&self.stats.dropped),
        )?;
        metrics::counter(
            enc,
            "costguard_trace_export_failures",
            "OTLP export calls that failed (their spans are dropped).",
            load(&self.stats.failed),
        )
    }
}

async fn export(
    mut rx: mpsc::Receiver<RequestSpans>,
    client: IdpClient,
    endpoint: String,
    service: String,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Collect for one interval, or until a batch is full, or until the
        // last tracer is gone: one export call per second at most, unless
        // the load fills batches sooner.
        let deadline = tokio::time::Instant::now() + INTERVAL;
        let mut closed = false;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = encode(&service, &batch).encode_to_vec();
            batch.clear();
            let sent = Request::post(endpoint.as_str())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(body)
                .map_err(|e| e.to_string());
            let answer = match sent {
                Ok(req) => client.send(req).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match answer {
                Ok(resp) if resp.status().is_success() => {
                    stats.exported.fetch_add(n, Ordering::Relaxed);
                }
                Ok(resp) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint = %endpoint, status = %resp.status(), "Trace export refused; spans dropped.");
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint = %endpoint, error = %e, "Trace export failed; spans dropped.");
                }
            }
        }
        if closed {
            return;
        }
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The export request for `batch`.
fn encode(service: &str, batch: &[RequestSpans]) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(batch.len() * 4);
    for r in batch {
        let start = nanos(r.arrived);
        let trace_id = r.trace.trace_id.to_vec();
        let span_id = r.trace.span_id.to_vec();
        let mut attributes = vec![
            text("http.request.method", r.method),
            text("costguard.decision", r.decision),
            text("costguard.reason", r.reason),
            text("costguard.request_id", r.request_id.clone()),
            KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i64::from(r.status))),
                }),
                ..Default::default()
            },
        ];
        if let Some(route) = &r.route {
            attributes.push(text("http.route", route.to_string()));
        }
        let error = r.status >= 500;
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: span_id.clone(),
            parent_span_id: r.trace.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(r.trace.flags),
            name: "costguard.request".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + r.duration.as_nanos() as u64,
            attributes,
            status: error.then(|| Status {
                code: 2,
                message: r.reason.to_string(),
            }),
            ..Default::default()
        });
        for (i, stage) in r.stages.iter().enumerate() {
            let mut id = r.trace.span_id;
            // Child ids derived from ours: unique within the trace, no
            // random draw per stage.
            id[7] ^= (i as u8 + 1).wrapping_mul(0x5b);
            id[0] ^= 0xa5;
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: id.to_vec(),
                parent_span_id: span_id.clone(),
                flags: u32::from(r.trace.flags),
                name: stage.name.into(),
                kind: if stage.name == "costguard.upstream" {
                    span::SpanKind::Client as i32
                } else {
                    span::SpanKind::Internal as i32
                },
                start_time_unix_nano: start + stage.start.as_nanos() as u64,
                end_time_unix_nano: start + stage.end.as_nanos() as u64,
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service),
                    text("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "costguard".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stages: usize) -> RequestSpans {
        RequestSpans {
            trace: TraceContext::continue_or_start(&http::HeaderMap::new()),
            arrived: SystemTime::now(),
            duration: Duration::from_micros(900),
            stages: (0..stages)
                .map(|i| Stage {
                    name: ["costguard.decide", "costguard.audit", "costguard.upstream"][i],
                    start: Duration::from_micros(10 * i as u64),
                    end: Duration::from_micros(10 * i as u64 + 5),
                })
                .collect(),
            method: "GET",
            route: Some(Arc::from("/v1/tenants/{tenant}/costs")),
            status: 200,
            decision: "allowed",
            reason: "none",
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn a_request_becomes_a_server_span_with_one_child_per_stage() {
        let r = request(3);
        let req = encode("costguard", std::slice::from_ref(&r));
        let decoded = ExportTraceServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 4);
        let root = &spans[0];
        assert_eq!(root.trace_id, r.trace.trace_id);
        assert_eq!(root.span_id, r.trace.span_id);
        assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
        let mut ids = std::collections::HashSet::new();
        for child in &spans[1..] {
            assert_eq!(child.parent_span_id, root.span_id);
            assert_eq!(child.trace_id, root.trace_id);
            assert!(child.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= root.end_time_unix_nano);
            assert!(ids.insert(child.span_id.clone()));
            assert_ne!(child.span_id, root.span_id);
        }
    }

    #[tokio::test]
    async fn unsampled_traces_and_overflow_are_not_queued() {
        let (tx, mut rx) = mpsc::channel(1);
        let tracer = Tracer {
            tx,
            stats: Arc::default(),
            sample_ratio: 0.0,
        };
        let mut r = request(0);
        tracer.sample_new(&mut r.trace);
        assert_eq!(r.trace.flags & 1, 0);
        tracer.submit(r);
        assert!(rx.try_recv().is_err());
        let sampled = Tracer {
            sample_ratio: 1.0,
            ..tracer.clone()
        };
        let mut a = request(0);
        sampled.sample_new(&mut a.trace);
        sampled.submit(a);
        sampled.submit(request(0));
        assert_eq!(sampled.stats.dropped.load(Ordering::Relaxed), 1);
        assert!(rx.try_recv().is_ok());
    }
}
