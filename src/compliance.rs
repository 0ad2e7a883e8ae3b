//! The compliance report (`GET /admin/v1/compliance`, `GET
//! /admin/compliance`, `costguard compliance`): each control's status is
//! computed from the validated configuration and the live state (tenants,
//! keys, the policy in force, the audit log and its query index) when it
//! is asked for, never read from a checklist. Every control names the
//! framework clauses it supports (SOC 2, GDPR, HIPAA §164.312), the
//! evidence that decided its status, and what to do about it.
//!
//! # Layout
//! - this file: the report's shape ([`Report`], [`Control`], [`Status`]),
//!   the table of controls ([`CONTROLS`]) and [`Compliance`], which
//!   gathers the facts (bounded: at most [`MAX_TENANTS`] tenants and
//!   [`MAX_KEYS`] keys each; the expensive checks cached) and decides.
//! - `controls`: one function per control, facts in, status and evidence
//!   out (no I/O, so each is unit-tested on its own).
//! - `html`: the same report as a self-contained HTML page (no script, no
//!   external asset; the stylesheet allowed by its hash).
//! - `client`: the `costguard compliance` side: fetch the report from the
//!   admin port and print it.
//!
//! Evidence names settings, counts and ids (tenant ids, key ids), never a
//! secret, a hash or a token.

pub mod client;
mod controls;
pub mod html;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audit::Audit;
use crate::authz::reload::PolicyHandle;
use crate::config::Config;
use crate::model::{ApiKey, KeyStatus, Tenant};
use crate::store::{Store, StoreError};

/// Most tenants one report looks at (the rest are named as not checked).
pub const MAX_TENANTS: usize = 1000;
/// Most keys of one tenant one report looks at.
pub const MAX_KEYS: usize = 10_000;
/// Keys unused (no audit record under their id) for this many days are
/// reported; also the rotation age reported.
pub const KEY_MAX_AGE_DAYS: i64 = 90;
/// Most index entries read to find which keys were used, per tenant.
pub const MAX_USE_SCAN: usize = 1_000_000;
/// Most index entries one report reads for key use over all its tenants
/// (cached scans cost nothing); tenants past it are reported as not known.
pub const MAX_REPORT_SCAN: usize = 2_000_000;
/// How long a chain verification is reused: it reads the whole log.
pub const CHAIN_TTL: Duration = Duration::from_secs(300);
/// How long a tenant's key-use scan is reused.
pub const USE_TTL: Duration = Duration::from_secs(60);
/// The live log is verified only up to this size; beyond it, the report
/// says so and `costguard audit verify` is the check to run.
pub const MAX_VERIFY_BYTES: u64 = 512 << 20;

/// A control's outcome. Ordered: the worst of several is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The control is in place, by the evidence.
    Pass,
    /// Weaker than it should be, or it cannot be known from here.
    Warn,
    /// Not in place.
    Fail,
}

impl Status {
    /// `pass`, `warn`, `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// Every framework clause the report maps to, in the order it lists them.
pub const FRAMEWORKS: [&str; 15] = [
    "SOC2 CC6.1",
    "SOC2 CC6.2",
    "SOC2 CC6.3",
    "SOC2 CC7.2",
    "SOC2 CC8.1",
    "GDPR Art. 5(1)(e)",
    "GDPR Art. 17",
    "GDPR Art. 30",
    "GDPR Art. 32",
    "GDPR Art. 44",
    "HIPAA 164.312(a)(1)",
    "HIPAA 164.312(b)",
    "HIPAA 164.312(c)(1)",
    "HIPAA 164.312(d)",
    "HIPAA 164.312(e)(1)",
];

/// Whether a control concerns the whole deployment or each tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applies {
    /// The configuration and state every tenant shares.
    Deployment,
    /// Each tenant on its own (a report over all tenants rolls them up).
    Tenant,
}

/// A control's fixed part.
#[derive(Debug)]
pub struct Definition {
    /// Stable id (`proxy-tls`).
    pub id: &'static str,
    /// What it checks, in a few words.
    pub title: &'static str,
    /// The clauses it supports (entries of [`FRAMEWORKS`]).
    pub frameworks: &'static [&'static str],
    /// Deployment-wide or per tenant.
    pub applies: Applies,
}

/// The controls, in the order the report lists them.
pub static CONTROLS: &[Definition] = &[
    Definition {
        id: "proxy-tls",
        title: "TLS on the proxy listener",
        frameworks: &["SOC2 CC6.1", "GDPR Art. 32", "HIPAA 164.312(e)(1)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "admin-loopback",
        title: "Admin port on loopback",
        frameworks: &["SOC2 CC6.1", "HIPAA 164.312(a)(1)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "sso-enforced",
        title: "Single sign-on for the tenant's users",
        frameworks: &["SOC2 CC6.1", "SOC2 CC6.2", "HIPAA 164.312(d)"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "key-expiry",
        title: "API keys expire",
        frameworks: &["SOC2 CC6.1", "SOC2 CC6.2", "HIPAA 164.312(d)"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "key-rotation",
        title: "API keys rotated within 90 days",
        frameworks: &["SOC2 CC6.1", "GDPR Art. 32"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "key-unused",
        title: "No API key left unused for 90 days",
        frameworks: &["SOC2 CC6.2", "SOC2 CC6.3"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "policy-enforce",
        title: "Access policy in enforce mode",
        frameworks: &["SOC2 CC6.1", "SOC2 CC6.3", "HIPAA 164.312(a)(1)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "policy-reload",
        title: "Last policy change applied cleanly",
        frameworks: &["SOC2 CC8.1"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "rate-limits",
        title: "Rate limits on",
        frameworks: &["SOC2 CC6.1", "GDPR Art. 32"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "audit-enabled",
        title: "Audit log records every decision",
        frameworks: &["SOC2 CC7.2", "GDPR Art. 30", "HIPAA 164.312(b)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "audit-fail-closed",
        title: "Audit log fails closed",
        frameworks: &["SOC2 CC7.2", "HIPAA 164.312(b)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "audit-chain",
        title: "Audit hash chain verifies",
        frameworks: &["SOC2 CC7.2", "GDPR Art. 32", "HIPAA 164.312(c)(1)"],
        applies: Applies::Deployment,
    },
    Definition {
        id: "audit-retention",
        title: "Audit retention matches the tier",
        frameworks: &["GDPR Art. 5(1)(e)", "SOC2 CC7.2"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "data-residency",
        title: "Data residency pinned",
        frameworks: &["GDPR Art. 44"],
        applies: Applies::Tenant,
    },
    Definition {
        id: "erasure",
        title: "Right to erasure supported",
        frameworks: &["GDPR Art. 17"],
        applies: Applies::Deployment,
    },
];

/// One control's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// Stable id.
    pub id: &'static str,
    /// What it checks.
    pub title: &'static str,
    /// The framework clauses it supports.
    pub frameworks: &'static [&'static str],
    /// Deployment-wide or per tenant.
    pub applies: Applies,
    /// The outcome.
    pub status: Status,
    /// What decided it: settings, counts, ids; never a secret.
    pub evidence: String,
    /// What to do (for a pass: what keeps it so).
    pub remediation: String,
}

/// Counts per status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Controls that pass.
    pub pass: usize,
    /// Controls that warn.
    pub warn: usize,
    /// Controls that fail.
    pub fail: usize,
    /// All controls.
    pub total: usize,
}

impl Summary {
    fn add(&mut self, s: Status) {
        match s {
            Status::Pass => self.pass += 1,
            Status::Warn => self.warn += 1,
            Status::Fail => self.fail += 1,
        }
        self.total += 1;
    }
}

/// One framework clause, rolled up over its controls.
#[derive(Debug, Clone, Serialize)]
pub struct FrameworkRollup {
    /// The clause (`SOC2 CC6.1`).
    pub id: &'static str,
    /// The worst status of its controls.
    pub status: Status,
    /// Its controls' counts.
    pub summary: Summary,
    /// Its controls' ids.
    pub controls: Vec<&'static str>,
}

/// What a report covers.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Scope {
    /// One tenant: its controls plus the deployment-wide ones.
    Tenant {
        /// The tenant.
        tenant_id: String,
        /// Its display name (as the tenant's admins wrote it).
        organization_name: String,
    },
    /// Every tenant (system_admin).
    All {
        /// Always `true`.
        all: bool,
        /// Tenants looked at.
        tenants: usize,
    },
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RFC 3339 UTC.
    pub generated_at: String,
    /// What it covers.
    pub scope: Scope,
    /// The worst status of all controls.
    pub status: Status,
    /// Counts per status.
    pub summary: Summary,
    /// Per framework clause.
    pub frameworks: Vec<FrameworkRollup>,
    /// Every control, in [`CONTROLS`] order.
    pub controls: Vec<Control>,
}

impl Report {
    fn new(scope: Scope, controls: Vec<Control>) -> Self {
        let mut summary = Summary::default();
        for c in &controls {
            summary.add(c.status);
        }
        let frameworks = FRAMEWORKS
            .iter()
            .map(|&id| {
                let mut s = Summary::default();
                let mut ids = Vec::new();
                for c in controls.iter().filter(|c| c.frameworks.contains(&id)) {
                    s.add(c.status);
                    ids.push(c.id);
                }
                FrameworkRollup {
                    id,
                    status: worst(controls.iter().filter(|c| c.frameworks.contains(&id))),
                    summary: s,
                    controls: ids,
                }
            })
            .collect();
        Self {
            generated_at: crate::model::now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            scope,
            status: worst(controls.iter()),
            summary,
            frameworks,
            controls,
        }
    }
}

fn worst<'a>(controls: impl Iterator<Item = &'a Control>) -> Status {
    controls.map(|c| c.status).max().unwrap_or(Status::Pass)
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The audit chain's last verification.
#[derive(Debug, Clone)]
enum ChainCheck {
    /// Intact.
    Intact {
        files: usize,
        records: u64,
        signature_checked: bool,
    },
    /// The first broken place (file, line, reason: no record content).
    Broken(String),
    /// Not verified live: the log is larger than [`MAX_VERIFY_BYTES`].
    TooLarge(u64),
    /// The verification itself could not run.
    Failed(String),
}

/// Which keys of one tenant the audit index saw, and how completely.
#[derive(Debug, Clone)]
enum KeyUse {
    /// Scanned from `since` (Unix micros): the key ids seen.
    Seen {
        since_micros: i64,
        window_days: i64,
        used: HashSet<String>,
        /// The scan stopped at [`MAX_USE_SCAN`] entries.
        truncated: bool,
    },
    /// Cannot be known from here, and why.
    Unknown(String),
}

/// What one tenant contributes to the report.
#[derive(Debug)]
struct TenantFacts {
    tenant: Tenant,
    /// Its live (not revoked) keys, at most [`MAX_KEYS`].
    keys: Vec<ApiKey>,
    /// It had more live keys than were looked at.
    keys_truncated: bool,
    key_use: KeyUse,
}

/// Computes compliance reports from the live configuration and state.
pub struct Compliance {
    config: Config,
    store: Arc<dyn Store>,
    policy: Arc<PolicyHandle>,
    audit: Option<Audit>,
    /// The audit HMAC key, so the chain check also verifies the signed
    /// head (never printed).
    audit_key: Option<Vec<u8>>,
    /// The last chain verification and when it ran. A tokio mutex: one
    /// verification at a time, later callers wait for its result instead
    /// of reading the log again.
    chain: tokio::sync::Mutex<Option<(Instant, ChainCheck)>>,
    /// Per tenant, the last key-use scan and when it ran.
    key_use: std::sync::Mutex<HashMap<String, (Instant, KeyUse)>>,
}

impl std::fmt::Debug for Compliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compliance").finish_non_exhaustive()
    }
}

impl Compliance {
    /// `audit_key`: the log's HMAC key when the log is enabled.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        policy: Arc<PolicyHandle>,
        audit: Option<Audit>,
        audit_key: Option<Vec<u8>>,
    ) -> Self {
        Self {
            config,
            store,
            policy,
            audit,
            audit_key,
            chain: tokio::sync::Mutex::new(None),
            key_use: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The report for `tenant` (its controls plus the deployment-wide
    /// ones), or for every tenant with `None`. The caller has checked who
    /// may see it.
    pub async fn report(&self, tenant: Option<Tenant>) -> Result<Report, ComplianceError> {
        let (scope, tenants, tenants_truncated) = match tenant {
            Some(t) => (
                Scope::Tenant {
                    tenant_id: t.tenant_id.clone(),
                    organization_name: t.organization_name.clone(),
                },
                vec![t],
                0,
            ),
            None => {
                let mut all = self.store.list_tenants().await?;
                all.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
                let over = all.len().saturating_sub(MAX_TENANTS);
                all.truncate(MAX_TENANTS);
                (
                    Scope::All {
                        all: true,
                        tenants: all.len(),
                    },
                    all,
                    over,
                )
            }
        };
        let mut facts = Vec::with_capacity(tenants.len());
        let mut budget = MAX_REPORT_SCAN;
        for tenant in tenants {
            facts.push(self.tenant_facts(tenant, &mut budget).await?);
        }
        let chain = self.chain_check().await;
        let ctx = controls::Inputs {
            config: &self.config,
            policy: &self.policy,
            audit: self.audit.as_ref(),
            chain: &chain,
            tenants: &facts,
            tenants_truncated,
            one_tenant: matches!(scope, Scope::Tenant { .. }),
            now: time::OffsetDateTime::now_utc(),
        };
        Ok(Report::new(scope, controls::evaluate(&ctx)))
    }

    async fn tenant_facts(
        &self,
        tenant: Tenant,
        budget: &mut usize,
    ) -> Result<TenantFacts, ComplianceError> {
        let mut keys: Vec<ApiKey> = self
            .store
            .list_keys(&tenant.tenant_id)
            .await?
            .into_iter()
            .filter(|k| k.status == KeyStatus::Active)
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        let keys_truncated = keys.len() > MAX_KEYS;
        keys.truncate(MAX_KEYS);
        let key_use = self.key_use(&tenant, &keys, budget).await;
        Ok(TenantFacts {
            tenant,
            keys,
            keys_truncated,
            key_use,
        })
    }

    /// Which of `keys` have an audit record under their id (a proxied
    /// request's `user_id` is the key id; an admin call's is `key:<id>`)
    /// in the last [`KEY_MAX_AGE_DAYS`] days, or the tenant's retention if
    /// shorter: there is no last-used time on a key, so the audit query
    /// index is what knows (its entries hold keyed 64-bit hashes of the
    /// ids, compared here without reading records back). Only keys older
    /// than the window are looked for; a scan reads at most
    /// [`MAX_USE_SCAN`] entries and what is left of the report's `budget`.
    /// Cached per tenant for [`USE_TTL`].
    async fn key_use(&self, tenant: &Tenant, keys: &[ApiKey], budget: &mut usize) -> KeyUse {
        let Some(audit) = &self.audit else {
            return KeyUse::Unknown(
                "the audit log is disabled (audit.enabled = false), so key use is not recorded"
                    .into(),
            );
        };
        let Some(index) = audit.index().cloned() else {
            return KeyUse::Unknown("the audit log keeps no query index".into());
        };
        if let Some((at, cached)) = self
            .key_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant.tenant_id)
            && at.elapsed() < USE_TTL
        {
            return cached.clone();
        }
        audit.catch_up();
        let window_days = if tenant.limits.retention_days > 0 {
            KEY_MAX_AGE_DAYS.min(tenant.limits.retention_days)
        } else {
            KEY_MAX_AGE_DAYS
        };
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        let since_micros = now - window_days * 86_400 * 1_000_000;
        let since =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_micros) * 1000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let ids: Vec<String> = keys
            .iter()
            .filter(|k| k.created_at < since)
            .map(|k| k.key_id.clone())
            .collect();
        if ids.is_empty() {
            // Nothing old enough to judge: no scan.
            return KeyUse::Seen {
                since_micros,
                window_days,
                used: HashSet::new(),
                truncated: false,
            };
        }
        if *budget == 0 {
            return KeyUse::Unknown(format!(
                "this report already read {MAX_REPORT_SCAN} audit index entries for other tenants; ask for this tenant alone (?tenant_id=)"
            ));
        }
        let limit = MAX_USE_SCAN.min(*budget);
        let tenant_id = tenant.tenant_id.clone();
        let scanned = crate::audit::off_runtime(move || {
            scan_key_use(&index, &tenant_id, &ids, since_micros, limit)
        })
        .await;
        let result = match scanned {
            Ok((used, truncated, read)) => {
                *budget = budget.saturating_sub(read);
                KeyUse::Seen {
                    since_micros,
                    window_days,
                    used,
                    truncated,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Compliance: the audit index could not be read for key use.");
                KeyUse::Unknown("the audit query index could not be read".into())
            }
        };
        let mut cache = self.key_use.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_TENANTS {
            cache.retain(|_, (at, _)| at.elapsed() < USE_TTL);
        }
        cache.insert(tenant.tenant_id.clone(), (Instant::now(), result.clone()));
        result
    }

    /// The audit chain verified on the live log by the same verifier as
    /// `costguard audit verify`, at most once per [`CHAIN_TTL`], off the
    /// async workers. It reads the files and takes no lock of the writer,
    /// so it never holds records up; a record being appended while it
    /// reads may look cut, so a broken result is checked once more before
    /// it is reported.
    async fn chain_check(&self) -> Option<ChainCheck> {
        let audit = self.audit.as_ref()?;
        let mut slot = self.chain.lock().await;
        if let Some((at, check)) = slot.as_ref()
            && at.elapsed() < CHAIN_TTL
        {
            return Some(check.clone());
        }
        let dir = audit.dir().to_path_buf();
        let key = self.audit_key.clone();
        let check = crate::audit::off_runtime(move || Ok(verify_live(&dir, key.as_deref())))
            .await
            .unwrap_or_else(|e| ChainCheck::Failed(e.to_string()));
        *slot = Some((Instant::now(), check.clone()));
        Some(check)
    }
}

/// Runs the verifier over `dir` unless the log is too large (see
/// [`MAX_VERIFY_BYTES`]); a failure is retried once (a batch appended
/// mid-read is not a broken chain; a real break is found again).
fn verify_live(dir: &std::path::Path, key: Option<&[u8]>) -> ChainCheck {
    let bytes: u64 = match crate::audit::files::files(dir) {
        Ok(files) => files
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum(),
        Err(e) => return ChainCheck::Failed(format!("cannot list the log files: {e}")),
    };
    if bytes > MAX_VERIFY_BYTES {
        return ChainCheck::TooLarge(bytes);
    }
    let mut result = crate::audit::verify::verify(dir, key);
    if result.is_err() {
        std::thread::sleep(Duration::from_millis(50));
        result = crate::audit::verify::verify(dir, key);
    }
    match result {
        Ok(r) => ChainCheck::Intact {
            files: r.files,
            records: r.records,
            signature_checked: r.signature_checked,
        },
        Err(b) => {
            // The file's name, not its path: the log's place on the
            // server is not the reader's business.
            let file = b.file.file_name().map_or_else(
                || "the log directory".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            ChainCheck::Broken(match b.line {
                Some(line) => format!("{file}:{line}: {}", b.reason),
                None => format!("{file}: {}", b.reason),
            })
        }
    }
}

/// Scans one tenant's index entries since `since_micros` for records
/// under the ids of `keys`; stops when all were seen or after about
/// `limit` entries (then `true`: the rest is not known). Also returns the
/// entries read.
fn scan_key_use(
    index: &crate::audit::index::Index,
    tenant_id: &str,
    keys: &[String],
    since_micros: i64,
    limit: usize,
) -> std::io::Result<(HashSet<String>, bool, usize)> {
    use crate::audit::index::Query;
    let h = index.hasher();
    let mut wanted: HashMap<u64, &str> = HashMap::with_capacity(keys.len() * 2);
    for k in keys {
        wanted.insert(h.hash(k), k);
        wanted.insert(h.hash(&format!("key:{k}")), k);
    }
    let mut used = HashSet::new();
    let mut q = Query {
        tenant: Some(h.hash(tenant_id)),
        start_micros: Some(since_micros),
        limit: usize::MAX,
        ..Query::default()
    };
    let mut scanned = 0usize;
    while used.len() < keys.len() {
        let page = index.query(&q)?;
        scanned += page.entries.len();
        for e in &page.entries {
            if let Some(k) = wanted.get(&e.user) {
                used.insert((*k).to_string());
            }
        }
        match page.next {
            Some(next) if scanned < limit => q.after_seq = Some(next),
            Some(_) => {
                let truncated = used.len() < keys.len();
                return Ok((used, truncated, scanned));
            }
            None => break,
        }
    }
    Ok((used, false, scanned))
}

#[cfg(test)]
mod tests;
