//! Per-connection activity: whether bytes moved and how many requests are
//! waiting for a response head. A connection with neither for a whole idle
//! period is closed. hyper has no idle timeout of its own, and its header
//! timer does not run while hyper-util sniffs the protocol, so a client
//! that connects and sends nothing would otherwise be held forever.
//!
//! The IO path only bumps a counter (no clock read per read or write); the
//! connection task compares the counter across idle periods, so a silent
//! connection closes between one and two idle timeouts after its last byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared by the IO wrapper (bumps `ops`) and the connection task.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Reads and writes that moved bytes, ever.
    ops: AtomicU64,
    /// Requests whose response head is not yet produced.
    in_flight: AtomicUsize,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request until the guard drops.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once a whole `timeout` passed with no bytes moving and no
    /// request waiting for its response.
    pub(super) async fn idle(&self, timeout: Duration) {
        let mut seen = self.ops.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.ops.load(Ordering::Relaxed);
            if now == seen && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
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
