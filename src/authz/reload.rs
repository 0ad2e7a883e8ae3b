//! The live policy: an atomically swapped snapshot, reloaded when the files
//! change (checked every second: this also sees a Kubernetes ConfigMap's
//! `..data` symlink swap, whatever inotify reports) or on SIGHUP. A change
//! that does not compile never replaces the snapshot in use: the error is
//! logged with file and line, counted, and shown in `/ready`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::{Value, json};

use super::policy::{self, Policy, PolicyError};
use crate::metrics;

/// Where the policy comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of `*.toml` files, reloaded on change.
    Dir(PathBuf),
    /// The built-in default (the demo, when `policies/` is not at hand).
    BuiltIn,
}

/// The current policy and its reload state.
#[derive(Debug)]
pub struct PolicyHandle {
    current: ArcSwap<Policy>,
    source: Source,
    /// Successful reloads since start.
    reloads: AtomicU64,
    /// Rejected reloads since start (metric-ready).
    rejected: AtomicU64,
    /// The last rejection, until a good policy is loaded again.
    last_error: Mutex<Option<String>>,
    /// Fingerprint of the last files seen (good or bad), so one bad change
    /// is reported once, not every second.
    last_seen: AtomicU64,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The files did not change.
    Unchanged,
    /// A new policy is in force.
    Applied,
    /// The files changed but do not compile; the old policy stays.
    Rejected(PolicyError),
}

impl PolicyHandle {
    /// Loads the policy; fails (and the process refuses to start) if it
    /// does not compile.
    pub fn load(source: Source) -> Result<Arc<Self>, PolicyError> {
        let policy = match &source {
            Source::Dir(dir) => policy::load_dir(dir)?,
            Source::BuiltIn => policy::default_policy(),
        };
        let fingerprint = policy.fingerprint;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(policy),
            source,
            reloads: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_seen: AtomicU64::new(fingerprint),
        }))
    }

    /// The policy in force, as an `Arc` that may be held across awaits.
    pub fn current_full(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the files and swaps in the new policy if it compiles.
    pub fn reload(&self, forced: bool) -> Reloaded {
        let Source::Dir(dir) = &self.source else {
            return Reloaded::Unchanged;
        };
        let files = match policy::read_dir(dir) {
            Ok(files) => files,
            Err(e) => return self.reject(e, 0, forced),
        };
        let fingerprint = policy::fingerprint(&files);
        let unchanged = fingerprint == self.last_seen.load(Ordering::Relaxed);
        if unchanged && !forced {
            return Reloaded::Unchanged;
        }
        self.last_seen.store(fingerprint, Ordering::Relaxed);
        match policy::compile(&files) {
            Ok(policy) => {
                let changed = policy.fingerprint != self.current.load().fingerprint;
                self.current.store(Arc::new(policy));
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if changed {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(dir = %dir.display(), "Policy reloaded.");
                    Reloaded::Applied
                } else {
                    Reloaded::Unchanged
                }
            }
            Err(e) => self.reject(e, fingerprint, true),
        }
    }

    fn reject(&self, e: PolicyError, fingerprint: u64, report: bool) -> Reloaded {
        if fingerprint != 0 {
            self.last_seen.store(fingerprint, Ordering::Relaxed);
        }
        if report {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            for p in &e.0 {
                tracing::error!(file = %p.file, line = p.line, problem = %p.message, "Policy change rejected; the previous policy stays in force.");
            }
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        Reloaded::Rejected(e)
    }

    /// The policy's metrics: reloads, rejections, whether the last change
    /// was rejected, and the fingerprint of the policy in force (an info
    /// metric: the same value on every replica means the same policy).
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        metrics::counters(
            enc,
            "costguard_policy_reloads",
            "Policy changes by result: applied, or rejected (the previous policy stays in force).",
            "result",
            [
                ("applied", self.reloads.load(Ordering::Relaxed)),
                ("rejected", self.rejected.load(Ordering::Relaxed)),
            ],
        )?;
        let rejected = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        metrics::gauge(
            enc,
            "costguard_policy_last_reload_rejected",
            "1 while the last policy change was rejected and an older policy is in force.",
            u64::from(rejected),
        )?;
        let fingerprint = format!("{:016x}", self.current.load().fingerprint);
        metrics::info(
            enc,
            "costguard_policy",
            "The policy in force: its content fingerprint.",
            &[("fingerprint", fingerprint.as_str())],
        )
    }

    /// Reload state for `/ready`.
    pub fn status(&self) -> Value {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "status": if error.is_some() { "last change rejected; previous policy in force" } else { "ok" },
            "files": self.current.load().files,
            "reloads": self.reloads.load(Ordering::Relaxed),
            "rejected_reloads": self.rejected.load(Ordering::Relaxed),
            "last_error": error,
        })
    }

    /// Checks the files every `interval` and on SIGHUP, until dropped.
    /// Applied and rejected changes are recorded in the audit log.
    pub async fn watch(self: Arc<Self>, interval: Duration, audit: Option<crate::audit::Audit>) {
        if matches!(self.source, Source::BuiltIn) {
            return;
        }
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            // Reading a few small files: cheap, but off the async workers.
            let this = self.clone();
            let rejected_before = self.rejected.load(Ordering::Relaxed);
            let outcome = tokio::task::spawn_blocking(move || this.reload(forced)).await;
            let Some(audit) = &audit else { continue };
            let event = match outcome {
                Ok(Reloaded::Applied) => crate::audit::Event::new(
                    crate::audit::EventType::PolicyReloaded,
                    json!({"files": self.current.load().files, "forced": forced}),
                ),
                Ok(Reloaded::Rejected(e))
                    if self.rejected.load(Ordering::Relaxed) != rejected_before =>
                {
                    let problems: Vec<String> = e.0.iter().map(|p| p.to_string()).collect();
                    crate::audit::Event::new(
                        crate::audit::EventType::PolicyRejected,
                        json!({"problems": problems, "kept": "the previous policy stays in force"}),
                    )
                }
                _ => continue,
            };
            if let Err(e) = audit.record(event, crate::audit::Durability::Synced).await {
                tracing::error!(error = %e, "Policy change not recorded in the audit log.");
            }
        }
    }
}
