//! One access-log line per request, written when the response body is done
//! (or abandoned), so it carries the real byte count and total latency.
//! The query string is never logged: it may carry credentials.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};

/// What the line says, captured at the start of the request.
#[derive(Debug)]
pub struct Entry {
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
}

pin_project_lite::pin_project! {
    /// A response body that counts its bytes and logs the entry on drop.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        entry: Option<Entry>,
        status: StatusCode,
        bytes: u64,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(e) = this.entry.take() {
                tracing::info!(
                    target: "costguard::access",
                    listener = e.listener,
                    request_id = e.request_id.to_str().unwrap_or_default(),
                    method = %e.method,
                    path = e.uri.path(),
                    status = this.status.as_u16(),
                    latency_us = e.start.elapsed().as_micros() as u64,
                    bytes = *this.bytes,
                    peer = %e.peer,
                    "Request served."
                );
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
