//! The proxy's workers: one thread per CPU the process may use, each
//! running its own single-threaded tokio runtime.
//!
//! A proxied connection lives its whole life on the worker that accepted it
//! (each worker accepts from its own `SO_REUSEPORT` socket, see
//! [`crate::listener`]), and the upstream connections it uses belong to that
//! worker too ([`crate::forward::upstream`]). So a request never changes
//! threads: no work-stealing scheduler, no cross-thread wake-ups, no shared
//! pool lock. This is the shape of the proxies that match nginx per core
//! (nginx's own worker processes, Pingora, linkerd2-proxy on one core).
//!
//! Everything else (the admin port, policy reloads, usage flushes, audit
//! shipping, invalidation) stays on the main runtime.

use std::cell::Cell;
use std::num::NonZero;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// This thread's worker number, on worker threads.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The CPUs this process may use: the container's CPU quota (cgroup v1 or
/// v2, rounded down, at least 1) or its CPU affinity mask, whichever is
/// smaller, never the host's core count (`std::thread::available_parallelism`
/// reads all three on Linux).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZero::get)
}

/// The number of the worker running the caller, or `None` off the workers
/// (the main runtime, tests).
pub fn index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Running worker threads. Each keeps its runtime (and so every task and
/// connection spawned on it, such as a database connection's driver) alive
/// until [`Workers::stop`], so nothing the main runtime still uses at
/// shutdown dies with a worker.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    release: watch::Sender<bool>,
}

impl Workers {
    /// Starts `n` worker threads (at least 1), named `{name}-{i}`.
    pub fn start(name: &str, n: usize) -> std::io::Result<Self> {
        let (release, released) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut released = released.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(Some(i)));
                    // Tasks spawned through the handle run while this
                    // thread is inside `block_on`.
                    runtime.block_on(async {
                        let _ = released.wait_for(|r| *r).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Self {
            handles,
            threads,
            release,
        })
    }

    /// The workers' runtimes, in worker order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Lets the workers' runtimes end (their remaining tasks are dropped)
    /// and waits for the threads.
    pub fn stop(self) {
        let _ = self.release.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_number_and_the_main_thread_is_none() {
        let workers = Workers::start("test-worker", 3).unwrap();
        assert_eq!(workers.len(), 3);
        assert_eq!(index(), None);
        let seen: Vec<Option<usize>> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move { tx.send(index()).unwrap() });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(seen, vec![Some(0), Some(1), Some(2)]);
        workers.stop();
    }

    #[test]
    fn available_cpus_is_at_least_one() {
        assert!(available_cpus() >= 1);
    }
}
