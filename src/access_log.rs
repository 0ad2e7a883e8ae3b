//! One access-log line per request, written when the response body is done
//! (or abandoned), so it carries the real byte count and total latency.
//! The query string is never logged: it may carry credentials.
//!
//! Lines are formatted on the request path into a shared buffer (a short
//! lock, no system call); a writer thread writes the buffer to stdout every
//! [`FLUSH_INTERVAL`] (as nginx's buffered access log does). A request never
//! waits on stdout or wakes another thread. If stdout blocks long enough
//! that the buffer reaches [`MAX_BUFFER`], further lines are dropped and
//! counted, and the writer reports the count; the proxy never stalls on its
//! access log. (The audit log, which never drops, is separate.)

use std::fmt::Write as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::config::LogFormat;
use crate::metrics::{Outcome, RequestMetrics, UpstreamError};
use crate::otlp::{RequestSpans, Tracer};
use crate::request_id::{self, X_REQUEST_ID};
use crate::trace_context::TraceContext;

/// How often the writer thread writes the buffered lines.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Most buffered bytes before lines are dropped (stdout blocked).
pub const MAX_BUFFER: usize = 8 << 20;

#[derive(Debug, Default)]
struct Buffer {
    /// Formatted lines not yet written.
    bytes: Mutex<Vec<u8>>,
    /// Lines dropped because the buffer was full.
    dropped: AtomicU64,
}

/// The access-log sink. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    buffer: Arc<Buffer>,
    format: LogFormat,
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start(format: LogFormat) -> Self {
        let buffer = Arc::new(Buffer::default());
        let shared = buffer.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    write_out(&shared);
                }
            })
            .expect("the access-log thread starts");
        Self { buffer, format }
    }

    /// Writes what is buffered now (at shutdown).
    pub fn flush(&self) {
        write_out(&self.buffer);
    }

    /// Captures what the line will say, at the start of a request.
    pub fn entry<B>(
        &self,
        listener: &'static str,
        req: &Request<B>,
        request_id: &HeaderValue,
        peer: std::net::IpAddr,
    ) -> Entry {
        Entry {
            sink: self.clone(),
            listener,
            request_id: request_id.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            peer,
            start: Instant::now(),
            trace_id: None,
        }
    }

    fn emit(&self, e: &Entry, status: StatusCode, bytes: u64) {
        let line = match self.format {
            LogFormat::Json => json_line(e, status, bytes),
            LogFormat::Human => human_line(e, status, bytes),
        };
        let mut buf = self.buffer.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() + line.len() > MAX_BUFFER {
            self.buffer.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buf.extend_from_slice(line.as_bytes());
        }
    }
}

fn write_out(buffer: &Buffer) {
    let pending = std::mem::take(&mut *buffer.bytes.lock().unwrap_or_else(|p| p.into_inner()));
    let lost = buffer.dropped.swap(0, Ordering::Relaxed);
    if pending.is_empty() && lost == 0 {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&pending);
    if lost > 0 {
        let _ = writeln!(
            out,
            "access log: {lost} lines dropped because stdout could not keep up"
        );
    }
    let _ = out.flush();
}

fn timestamp() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn json_line(e: &Entry, status: StatusCode, bytes: u64) -> String {
    let mut s = String::with_capacity(320);
    let _ = write!(
        s,
        r#"{{"timestamp":"{}","level":"INFO","message":"Request served.","listener":"{}","request_id":"#,
        timestamp(),
        e.listener
    );
    // Ids, methods and paths are escaped: a path may hold quotes.
    let _ = serde_json::to_writer(
        unsafe_free::StringWriter(&mut s),
        e.request_id.to_str().unwrap_or_default(),
    );
    s.push_str(r#","method":"#);
    let _ = serde_json::to_writer(unsafe_free::StringWriter(&mut s), e.method.as_str());
    s.push_str(r#","path":"#);
    let _ = serde_json::to_writer(unsafe_free::StringWriter(&mut s), e.uri.path());
    if let Some(t) = &e.trace_id {
        let _ = write!(s, r#","trace_id":"{t}""#);
    }
    let _ = writeln!(
        s,
        r#","status":{},"latency_us":{},"bytes":{},"peer":"{}","target":"costguard::access"}}"#,
        status.as_u16(),
        e.start.elapsed().as_micros(),
        bytes,
        e.peer
    );
    s
}

fn human_line(e: &Entry, status: StatusCode, bytes: u64) -> String {
    let mut s = String::with_capacity(256);
    let _ = writeln!(
        s,
        "{}  INFO costguard::access: Request served. listener={:?} request_id={:?} trace_id={} method={} path={:?} status={} latency_us={} bytes={} peer={}",
        timestamp(),
        e.listener,
        e.request_id.to_str().unwrap_or_default(),
        e.trace_id.as_deref().unwrap_or("-"),
        e.method,
        e.uri.path(),
        status.as_u16(),
        e.start.elapsed().as_micros(),
        bytes,
        e.peer
    );
    s
}

mod unsafe_free {
    //! `serde_json::to_writer` into a `String` without unsafe code.

    /// An `io::Write` that appends UTF-8 (serde_json only writes UTF-8).
    pub(super) struct StringWriter<'a>(pub(super) &'a mut String);

    impl std::io::Write for StringWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let text = std::str::from_utf8(buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            self.0.push_str(text);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

/// What the line says, captured at the start of the request.
#[derive(Debug)]
pub struct Entry {
    sink: AccessLog,
    /// Which listener (`proxy`, `admin`).
    pub listener: &'static str,
    /// The request id.
    pub request_id: HeaderValue,
    /// The method.
    pub method: Method,
    /// The URI (only its path is logged).
    pub uri: Uri,
    /// The client.
    pub peer: std::net::IpAddr,
    /// When the request arrived.
    pub start: Instant,
    /// The W3C trace id, on the proxy port.
    pub trace_id: Option<String>,
}

/// What every handler does around a request, on both ports: keep or make
/// the request id, start the access-log line, and at the end echo the id
/// and hand the body to the line (and the request's metrics, when
/// counted). Written once here.
#[derive(Debug)]
pub struct Exchange {
    /// The request's id (kept from the client when valid).
    pub request_id: HeaderValue,
    entry: Option<Entry>,
}

/// A request's spans, exported when its response body is done (or
/// abandoned), with the whole duration.
#[derive(Debug)]
pub struct Traced {
    /// Where they go.
    pub tracer: Tracer,
    /// When the request arrived.
    pub start: Instant,
    /// The spans (duration and status filled in at the end).
    pub spans: RequestSpans,
}

/// A request's metrics, counted when its response body is done (with the
/// whole latency) or abandoned.
#[derive(Debug)]
pub struct Observed {
    /// Where they are counted.
    pub metrics: Arc<RequestMetrics>,
    /// The series.
    pub outcome: Outcome,
    /// When the request arrived.
    pub start: Instant,
    /// How long the decision took, if one was made.
    pub decision: Option<Duration>,
    /// Why forwarding failed, if it did.
    pub upstream_error: Option<UpstreamError>,
}

impl Exchange {
    /// At the start of a request on `listener` from `peer`; `trace` is
    /// the trace it belongs to, when it is forwarded.
    pub fn begin<B>(
        log: Option<&AccessLog>,
        listener: &'static str,
        req: &Request<B>,
        peer: std::net::IpAddr,
        trace: Option<&TraceContext>,
    ) -> Self {
        let request_id = request_id::take_or_generate(req.headers());
        let entry = log.map(|log| Entry {
            trace_id: trace.map(TraceContext::trace_id_hex),
            ..log.entry(listener, req, &request_id, peer)
        });
        Self { request_id, entry }
    }

    /// The response as it goes out: `X-Request-Id` set, the line written
    /// when its body is done.
    pub fn finish<B>(self, resp: Response<B>) -> Response<LoggedBody<B>> {
        self.finish_observed(resp, None, None)
    }

    /// [`Exchange::finish`], and `observed` counted and `traced` exported
    /// when the body is done.
    pub fn finish_observed<B>(
        self,
        mut resp: Response<B>,
        observed: Option<Box<Observed>>,
        mut traced: Option<Box<Traced>>,
    ) -> Response<LoggedBody<B>> {
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id);
        let status = resp.status();
        if let Some(t) = &mut traced {
            t.spans.status = status.as_u16();
        }
        resp.map(|inner| LoggedBody {
            inner,
            entry: self.entry,
            observed,
            traced,
            status,
            bytes: 0,
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its bytes and logs the entry on drop.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        entry: Option<Entry>,
        observed: Option<Box<Observed>>,
        traced: Option<Box<Traced>>,
        status: StatusCode,
        bytes: u64,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(e) = this.entry.take() {
                e.sink.emit(&e, *this.status, *this.bytes);
            }
            if let Some(o) = this.observed.take() {
                o.metrics
                    .record(&o.outcome, o.start.elapsed(), o.decision, o.upstream_error);
            }
            if let Some(mut t) = this.traced.take() {
                t.spans.duration = t.start.elapsed();
                t.tracer.submit(t.spans);
            }
        }
    }
}

impl<B> LoggedBody<B> {
    /// Wraps `inner`; with `entry` `None` nothing is logged.
    pub fn new(inner: B, entry: Option<Entry>, status: StatusCode) -> Self {
        Self {
            inner,
            entry,
            observed: None,
            traced: None,
            status,
            bytes: 0,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res
            && let Some(data) = frame.data_ref()
        {
            *this.bytes += data.len() as u64;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_stay_one_valid_object_whatever_the_path() {
        let sink = AccessLog {
            buffer: Arc::default(),
            format: LogFormat::Json,
        };
        let req = Request::get("/a\"b\\c/%22?secret=1").body(()).unwrap();
        let e = sink.entry(
            "proxy",
            &req,
            &HeaderValue::from_static("rid-1"),
            "10.0.0.1".parse().unwrap(),
        );
        let line = json_line(&e, StatusCode::OK, 12);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c/%22");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["request_id"], "rid-1");
        assert!(!line.contains("secret"));
        let human = human_line(&e, StatusCode::OK, 12);
        assert!(
            human.contains("path=\"/a\\\"b\\\\c/%22\"") && !human.contains("secret"),
            "{human}"
        );
    }
}
