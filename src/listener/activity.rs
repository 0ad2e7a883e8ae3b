//! Per-connection activity: whether bytes moved, and whether requests made
//! progress (one started or ended, or one is still open). A connection is
//! closed after a whole idle period with either
//! - no request open and none started or ended, whatever bytes moved: an
//!   HTTP/2 client sending only PINGs (or SETTINGS, or WINDOW_UPDATEs) would
//!   otherwise hold its connection slot for ever, and ~170 PINGs a second
//!   could hold all of them; or
//! - no bytes moving while no request waits for its response head (a
//!   response body the client stopped reading, a silent keep-alive).
//!
//! hyper has no idle timeout of its own, and its header timer does not run
//! while hyper-util sniffs the protocol, so a client that connects and
//! sends nothing would otherwise be held forever.
//!
//! The IO path only bumps a counter (no clock read per read or write); the
//! connection task compares the counters across idle periods, so an idle
//! connection closes between one and two idle timeouts after it went idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared by the IO wrapper (bumps `ops`) and the connection task.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Reads and writes that moved bytes, ever.
    ops: AtomicU64,
    /// Requests whose response head is not yet produced.
    in_flight: AtomicUsize,
    /// Requests whose response is not yet fully sent (or dropped).
    open: AtomicUsize,
    /// Requests started and ended, ever: progress, unlike bytes.
    progress: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    fn advance(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request: in flight until the first guard drops (its
    /// response head is produced), open until the second drops (held by
    /// the response body, so until the body is sent or abandoned).
    pub(super) fn request_started(self: &Arc<Self>) -> (InFlight, Open) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.advance();
        (InFlight(self.clone()), Open(self.clone()))
    }

    /// Resolves once a whole `timeout` passed idle (see the module docs).
    pub(super) async fn idle(&self, timeout: Duration) {
        let mut seen_ops = self.ops.load(Ordering::Relaxed);
        let mut seen_progress = self.progress.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let ops = self.ops.load(Ordering::Relaxed);
            let progress = self.progress.load(Ordering::Relaxed);
            let silent = ops == seen_ops && self.in_flight.load(Ordering::Relaxed) == 0;
            let no_requests = progress == seen_progress && self.open.load(Ordering::Relaxed) == 0;
            if silent || no_requests {
                return;
            }
            seen_ops = ops;
            seen_progress = progress;
        }
    }
}

/// Decrements the in-flight count on drop (also when the request future is
/// cancelled).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
        self.0.advance();
    }
}

/// Decrements the open count on drop.
pub(super) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.advance();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request open until it is sent or dropped.
    pub(super) struct OpenBody<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
    }
}

impl<B> OpenBody<B> {
    pub(super) fn new(inner: B, open: Open) -> Self {
        Self {
            inner,
            open: Some(open),
        }
    }
}

impl<B: Body> Body for OpenBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.open.take();
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

pin_project_lite::pin_project! {
    /// An IO object that records activity on every read and write.
    pub(super) struct TrackedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> TrackedIo<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
