//! One function per control: the facts gathered by [`super::Compliance`]
//! in, a [`Control`] out. No I/O here, so each decision is tested alone
//! (`super::tests`).

use std::fmt::Write as _;
use std::net::SocketAddr;

use time::OffsetDateTime;

use super::{
    Applies, CONTROLS, ChainCheck, Control, KEY_MAX_AGE_DAYS, KeyUse, MAX_VERIFY_BYTES, Status,
    TenantFacts,
};
use crate::audit::Audit;
use crate::authz::reload::PolicyHandle;
use crate::config::Config;
use crate::model::Tenant;

/// Ids listed in one piece of evidence at most (then "and N more").
const LISTED: usize = 20;

/// Everything the controls decide on.
pub(super) struct Inputs<'a> {
    pub(super) config: &'a Config,
    pub(super) policy: &'a PolicyHandle,
    pub(super) audit: Option<&'a Audit>,
    /// `None`: the audit log is disabled.
    pub(super) chain: &'a Option<ChainCheck>,
    pub(super) tenants: &'a [TenantFacts],
    /// Tenants not looked at (over [`super::MAX_TENANTS`]).
    pub(super) tenants_truncated: usize,
    /// A one-tenant report: evidence speaks of "the tenant".
    pub(super) one_tenant: bool,
    pub(super) now: OffsetDateTime,
}

/// Every control, in [`CONTROLS`] order.
pub(super) fn evaluate(i: &Inputs<'_>) -> Vec<Control> {
    CONTROLS
        .iter()
        .map(|d| {
            let (status, evidence, remediation) = match d.id {
                "proxy-tls" => proxy_tls(i.config),
                "admin-loopback" => admin_loopback(i.config),
                "sso-enforced" => sso(i),
                "key-expiry" => key_expiry(i),
                "key-rotation" => key_rotation(i),
                "key-unused" => key_unused(i),
                "policy-enforce" => policy_enforce(i.policy),
                "policy-reload" => policy_reload(i.policy),
                "rate-limits" => rate_limits(i),
                "audit-enabled" => audit_enabled(i.audit),
                "audit-fail-closed" => audit_fail_closed(i.config, i.audit),
                "audit-chain" => audit_chain(i.chain, i.audit),
                "audit-retention" => audit_retention(i),
                "data-residency" => residency(i),
                "erasure" => erasure(i.audit),
                other => (
                    Status::Fail,
                    format!("no check is implemented for {other}"),
                    String::new(),
                ),
            };
            let mut evidence = evidence;
            if d.applies == Applies::Tenant && i.tenants_truncated > 0 {
                let _ = write!(
                    evidence,
                    " ({} further tenants were not checked: a report looks at {} at most; ask per tenant with ?tenant_id=)",
                    i.tenants_truncated,
                    super::MAX_TENANTS
                );
            }
            Control {
                id: d.id,
                title: d.title,
                frameworks: d.frameworks,
                applies: d.applies,
                status,
                evidence,
                remediation,
            }
        })
        .collect()
}

type Outcome = (Status, String, String);

/// `a, b, c and 4 more`.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = items
        .iter()
        .take(LISTED)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED {
        let _ = write!(out, " and {} more", items.len() - LISTED);
    }
    out
}

fn date(t: OffsetDateTime) -> String {
    t.date().to_string()
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn no_keys_note(i: &Inputs<'_>) -> Option<String> {
    if i.tenants.is_empty() {
        return Some("no tenants".into());
    }
    let truncated: Vec<&str> = i
        .tenants
        .iter()
        .filter(|t| t.keys_truncated)
        .map(|t| t.tenant.tenant_id.as_str())
        .collect();
    (!truncated.is_empty()).then(|| {
        format!(
            "only the first {} live keys of {} were looked at",
            super::MAX_KEYS,
            list(&truncated)
        )
    })
}

// === deployment ===

fn proxy_tls(c: &Config) -> Outcome {
    let listen = c.proxy.listen;
    let fix = "Set proxy.tls_cert_file and proxy.tls_key_file (PEM), or terminate TLS in an ingress or service mesh in front of the pod and keep proxy.listen on loopback.";
    if c.proxy.tls.is_some() {
        (
            Status::Pass,
            format!(
                "proxy.listen {listen} serves TLS (proxy.tls_cert_file and proxy.tls_key_file are set)"
            ),
            "Keep the certificate current; clients must not fall back to plain HTTP.".into(),
        )
    } else if is_loopback(listen) {
        (
            Status::Warn,
            format!(
                "proxy.listen {listen} serves plain HTTP (no proxy.tls_cert_file), on a loopback address: transport security depends on whatever terminates TLS in front of it, which this report cannot see"
            ),
            fix.into(),
        )
    } else {
        (
            Status::Fail,
            format!(
                "proxy.listen {listen} serves plain HTTP (no proxy.tls_cert_file) on a non-loopback address: API keys, session cookies and cost data cross the network unencrypted"
            ),
            fix.into(),
        )
    }
}

fn admin_loopback(c: &Config) -> Outcome {
    let listen = c.admin.listen;
    let token = if c.admin.token_hash.is_some() {
        "an admin token is configured"
    } else {
        "no admin token is configured (admin-role API keys only)"
    };
    if is_loopback(listen) {
        (
            Status::Pass,
            format!(
                "admin.listen {listen} is loopback: the admin API is reachable from inside the pod only; {token}"
            ),
            "Reach it with kubectl port-forward; expose only metrics.listen for scraping.".into(),
        )
    } else {
        (
            Status::Fail,
            format!("admin.listen {listen} is not a loopback address: the admin API (plain HTTP, bearer tokens) is reachable from the network; {token}"),
            "Bind admin.listen to 127.0.0.1:9090 and reach it with kubectl port-forward; set metrics.listen to let Prometheus scrape without exposing the admin API.".into(),
        )
    }
}

fn policy_enforce(policy: &PolicyHandle) -> Outcome {
    let p = policy.current_full();
    let enforce = p.enforce.routes().len();
    let shadow: Vec<String> = p
        .shadow
        .routes()
        .iter()
        .map(|r| r.origin.to_string())
        .collect();
    let files = list(&p.files);
    if !shadow.is_empty() {
        (
            Status::Warn,
            format!(
                "{} route(s) are in shadow mode (evaluated and logged, not enforced): {}; {enforce} enforce route(s) decide, from {files}",
                shadow.len(),
                list(&shadow)
            ),
            "When the shadow routes' logged decisions are right, set mode = \"enforce\" in their files (or remove them).".into(),
        )
    } else if enforce == 0 {
        (
            Status::Warn,
            format!("the policy in force ({files}) has no routes: every proxied request is denied"),
            "Add routes to the policy directory (see policies/routes.toml).".into(),
        )
    } else {
        (
            Status::Pass,
            format!("all {enforce} routes of {files} are in enforce mode; a request no route matches is denied"),
            "Try new routes in a mode = \"shadow\" file first; check them with costguard policy check.".into(),
        )
    }
}

fn policy_reload(policy: &PolicyHandle) -> Outcome {
    let s = policy.status();
    let applied = s["reloads"].as_u64().unwrap_or(0);
    let rejected = s["rejected_reloads"].as_u64().unwrap_or(0);
    match s["last_error"].as_str() {
        Some(error) => {
            let mut error = error.to_string();
            crate::audit::bound(&mut error, 400);
            (
                Status::Fail,
                format!("the last policy change was rejected and the previous policy stays in force: {error} ({applied} change(s) applied, {rejected} rejected since start)"),
                "Fix the file and line the error names (costguard policy check DIR shows every problem); the watcher applies the fixed files within policy.reload_interval.".into(),
            )
        }
        None => (
            Status::Pass,
            format!("the policy in force compiled cleanly; the last change was not rejected ({applied} change(s) applied, {rejected} rejected since start)"),
            "Check changes with costguard policy check DIR before they reach the pod; rejected changes are audited as policy.rejected.".into(),
        ),
    }
}

fn rate(r: &Option<crate::rate_limit::Rate>) -> String {
    match r {
        Some(r) => format!("{} per {}", r.limit, humantime::format_duration(r.period)),
        None => "unlimited".into(),
    }
}

fn rate_limits(i: &Inputs<'_>) -> Outcome {
    let r = &i.config.rate_limit;
    if !r.enabled {
        return (
            Status::Fail,
            "rate_limit.enabled = false: neither API keys nor failed authentications are rate-limited (the daily request quota of a tenant's tier still applies)".into(),
            "Set rate_limit.enabled = true with a rate per tier (rate_limit.free, .standard, .enterprise) or per tenant (limits.rate_limit_per_minute).".into(),
        );
    }
    let failed = format!(
        "failed authentications limited to {} per minute per source",
        r.failed_auth_per_minute
    );
    let backend = if r.redis.is_some() { "redis" } else { "local" };
    let tiers = format!(
        "free {}, standard {}, enterprise {}",
        rate(&r.tier_defaults[0]),
        rate(&r.tier_defaults[1]),
        rate(&r.tier_defaults[2])
    );
    let unlimited: Vec<String> = i
        .tenants
        .iter()
        .filter(|t| r.rate_for(None, &t.tenant).is_none())
        .map(|t| t.tenant.tenant_id.clone())
        .collect();
    if unlimited.is_empty() {
        (
            Status::Pass,
            format!("rate_limit.enabled = true (backend {backend}); tier rates: {tiers}; {failed}"),
            "Keep a rate on every tier; lower a key's own rate_limit_per_minute where it needs less.".into(),
        )
    } else {
        (
            Status::Warn,
            format!(
                "rate_limit.enabled = true (backend {backend}); tier rates: {tiers}; {failed}; but no rate applies to the keys of {} (their tier has none and the tenant no limits.rate_limit_per_minute): only a key's own rate limits them",
                list(&unlimited)
            ),
            "Give the tier a rate in [rate_limit] (free, standard, enterprise), or the tenant limits.rate_limit_per_minute (PATCH /admin/v1/tenants/{tenant}).".into(),
        )
    }
}

fn audit_enabled(audit: Option<&Audit>) -> Outcome {
    let Some(audit) = audit else {
        return (
            Status::Fail,
            "audit.enabled = false: no record of access decisions or admin actions is kept".into(),
            "Set audit.enabled = true (and audit.dir on a persistent volume).".into(),
        );
    };
    let s = audit.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let written = load(&s.written);
    let failures = load(&s.failures);
    let index = if audit.index().is_some() {
        "with its query index"
    } else {
        "without a query index"
    };
    if s.unwritable.load(std::sync::atomic::Ordering::Relaxed) {
        (
            Status::Fail,
            format!("audit.enabled = true, but the log files in audit.dir cannot be written now ({failures} failed batch(es) since start)"),
            "Free space or fix permissions on audit.dir; records wait (or requests are refused) until it is writable.".into(),
        )
    } else {
        (
            Status::Pass,
            format!("audit.enabled = true: one record per access decision and admin action, {written} written since start, {index}; {failures} failed batch(es)"),
            "Ship the log off the pod (the shared store's audit shipping) and watch costguard_audit_* metrics.".into(),
        )
    }
}

fn audit_fail_closed(c: &Config, audit: Option<&Audit>) -> Outcome {
    let Some(audit) = audit else {
        return (
            Status::Fail,
            "audit.enabled = false: requests are never refused for want of a record".into(),
            "Set audit.enabled = true and keep audit.fail_open = false.".into(),
        );
    };
    if c.audit.fail_open {
        let let_through = audit
            .stats()
            .failed_open
            .load(std::sync::atomic::Ordering::Relaxed);
        (
            Status::Fail,
            format!("audit.fail_open = true: when the log cannot be written, proxied requests are let through unrecorded ({let_through} so far since start)"),
            "Set audit.fail_open = false: a request whose record cannot be written is then refused (503).".into(),
        )
    } else {
        (
            Status::Pass,
            "audit.fail_open = false: a proxied request whose record cannot be written is refused (503), never served unrecorded".into(),
            "Keep audit.fail_open = false; alert on costguard_audit write failures.".into(),
        )
    }
}

fn audit_chain(chain: &Option<ChainCheck>, audit: Option<&Audit>) -> Outcome {
    let verify = "Run costguard audit verify DIR (with --key-file) on the log, find what changed it, and restore the files from a backup.";
    match (chain, audit) {
        (None, _) | (_, None) => (
            Status::Fail,
            "audit.enabled = false: there is no hash chain to verify".into(),
            "Set audit.enabled = true.".into(),
        ),
        (Some(ChainCheck::Intact { files, records, signature_checked }), Some(_)) => (
            Status::Pass,
            format!(
                "the live log verified within the last {} min: {records} record(s) in {files} file(s), every hash, link and sequence number{}",
                super::CHAIN_TTL.as_secs() / 60,
                if *signature_checked {
                    ", and the HMAC-signed head"
                } else {
                    " (no signed head yet)"
                }
            ),
            "Keep the audit HMAC key apart from the log; verify backups with costguard audit verify.".into(),
        ),
        (Some(ChainCheck::Broken(at)), Some(_)) => (
            Status::Fail,
            format!("the hash chain of the live log is broken (checked twice): {at}"),
            verify.into(),
        ),
        (Some(ChainCheck::TooLarge(bytes)), Some(audit)) => (
            Status::Warn,
            format!(
                "not verified live: the log is {bytes} bytes, over this check's {MAX_VERIFY_BYTES}-byte bound; the writer reports {} failed batch(es) since start",
                audit.stats().failures.load(std::sync::atomic::Ordering::Relaxed)
            ),
            "Run costguard audit verify DIR on a copy (or a backup) on a schedule.".into(),
        ),
        (Some(ChainCheck::Failed(e)), Some(_)) => (
            Status::Warn,
            format!("the verification could not run: {e}"),
            "Run costguard audit verify DIR by hand.".into(),
        ),
    }
}

/// GDPR Art. 17: what deleting a user does to their records. Pass when
/// the audit log is on (deleting a user then pseudonymises them in it,
/// keeping `audit verify` passing); warn when it is off, since nothing
/// then records that an erasure happened; the shared copy is rewritten too
/// when records are shipped to PostgreSQL.
fn erasure(audit: Option<&Audit>) -> Outcome {
    let Some(audit) = audit else {
        return (
            Status::Warn,
            "audit.enabled = false: DELETE /admin/v1/tenants/{tenant}/users/{user} removes the user and ends their sessions, but no record of the erasure (or of anything else) is kept".into(),
            "Turn the audit log on (audit.enabled = true) so erasures are themselves recorded.".into(),
        );
    };
    let shared = if audit.shipping().is_some() {
        " and in the rows shipped to PostgreSQL"
    } else {
        ""
    };
    (
        Status::Pass,
        format!(
            "DELETE /admin/v1/tenants/{{tenant}}/users/{{user}} removes the user, ends their sessions and replaces their id, email, address and user agent in the tenant's audit records (log files, query index{shared}) with a keyed pseudonym (erased-…, HMAC with the audit key); the chain still verifies, and the deletion is recorded under the pseudonym only; backups taken before keep the plaintext"
        ),
        "Answer erasure requests through that endpoint; re-take (or expire) backups made before an erasure, which still hold the plaintext.".into(),
    )
}

// === per tenant ===

/// `org-a` for a one-tenant report, else `org-a: ` before its items.
fn per_tenant(i: &Inputs<'_>, parts: &[(String, String)]) -> String {
    if i.one_tenant {
        parts
            .iter()
            .map(|(_, items)| items.clone())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        let shown: Vec<String> = parts
            .iter()
            .take(LISTED)
            .map(|(t, items)| format!("{t}: {items}"))
            .collect();
        let mut s = shown.join("; ");
        if parts.len() > LISTED {
            let _ = write!(s, "; and {} more tenants", parts.len() - LISTED);
        }
        s
    }
}

fn subject(i: &Inputs<'_>) -> String {
    match (i.one_tenant, i.tenants.first()) {
        (true, Some(t)) => format!("tenant {}", t.tenant.tenant_id),
        _ => format!("{} tenant(s)", i.tenants.len()),
    }
}

fn sso(i: &Inputs<'_>) -> Outcome {
    let sso = &i.config.sso;
    let providers: Vec<String> = sso
        .oidc
        .iter()
        .map(|p| format!("oidc {}", p.name))
        .chain(sso.saml.iter().map(|p| format!("saml {}", p.name)))
        .collect();
    let configured = if providers.is_empty() {
        "no [[sso.oidc]] or [[sso.saml]] provider is configured".to_string()
    } else {
        format!("providers configured: {}", list(&providers))
    };
    let on: Vec<&Tenant> = i
        .tenants
        .iter()
        .map(|t| &t.tenant)
        .filter(|t| t.settings.sso_enabled)
        .collect();
    let off: Vec<String> = i
        .tenants
        .iter()
        .filter(|t| !t.tenant.settings.sso_enabled)
        .map(|t| t.tenant.tenant_id.clone())
        .collect();
    let fix = "Set the tenant's settings.sso_enabled = true and configure its identity provider ([[sso.oidc]] or [[sso.saml]] with tenant_claim/tenant_attribute or a pinned tenant); keep API keys for machines.";
    if i.tenants.is_empty() {
        return (
            Status::Pass,
            format!("no tenants; {configured}"),
            fix.into(),
        );
    }
    if !on.is_empty() && providers.is_empty() {
        let ids: Vec<&str> = on.iter().map(|t| t.tenant_id.as_str()).collect();
        return (
            Status::Fail,
            format!(
                "settings.sso_enabled = true for {}, but {configured}: its people cannot sign in through single sign-on",
                list(&ids)
            ),
            fix.into(),
        );
    }
    if !off.is_empty() {
        let who = if i.one_tenant {
            format!("tenant {}", off[0])
        } else {
            format!(
                "{} of {} tenants ({})",
                off.len(),
                i.tenants.len(),
                list(&off)
            )
        };
        return (
            Status::Warn,
            format!(
                "settings.sso_enabled = false for {who}: its people authenticate with API keys only, without the identity provider's MFA and offboarding; {configured}"
            ),
            fix.into(),
        );
    }
    (
        Status::Pass,
        format!(
            "settings.sso_enabled = true for {}; {configured}",
            subject(i)
        ),
        "Offboard people at the identity provider; sessions end at their absolute lifetime (sso.session_lifetime).".into(),
    )
}

fn key_expiry(i: &Inputs<'_>) -> Outcome {
    let total: usize = i.tenants.iter().map(|t| t.keys.len()).sum();
    let mut parts = Vec::new();
    let mut missing = 0usize;
    let mut far = 0usize;
    let year = i.now + time::Duration::days(366);
    for t in i.tenants {
        let ids: Vec<String> = t
            .keys
            .iter()
            .filter(|k| k.expires_at.is_none())
            .map(|k| {
                let mut d = k.description.clone();
                crate::audit::bound(&mut d, 60);
                format!("{} ({d:?})", k.key_id)
            })
            .collect();
        far += t
            .keys
            .iter()
            .filter(|k| k.expires_at.is_some_and(|e| e > year))
            .count();
        if !ids.is_empty() {
            missing += ids.len();
            parts.push((
                t.tenant.tenant_id.clone(),
                format!("key ids {}", list(&ids)),
            ));
        }
    }
    let note = no_keys_note(i)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if missing > 0 {
        (
            Status::Fail,
            format!(
                "{missing} of {total} active key(s) of {} have no expires_at: {}{note}",
                subject(i),
                per_tenant(i, &parts)
            ),
            "Create replacement keys with expires_at (POST /admin/v1/tenants/{tenant}/keys {\"expires_at\": …}), move clients to them, then revoke these.".into(),
        )
    } else if far > 0 {
        (
            Status::Warn,
            format!(
                "all {total} active key(s) of {} expire, but {far} more than a year from now{note}",
                subject(i)
            ),
            "Prefer expiries within a year, renewed by rotation.".into(),
        )
    } else {
        (
            Status::Pass,
            format!(
                "all {total} active key(s) of {} have an expires_at within a year{note}",
                subject(i)
            ),
            "Keep creating keys with expires_at.".into(),
        )
    }
}

fn key_rotation(i: &Inputs<'_>) -> Outcome {
    let cutoff = i.now - time::Duration::days(KEY_MAX_AGE_DAYS);
    let total: usize = i.tenants.iter().map(|t| t.keys.len()).sum();
    let mut parts = Vec::new();
    let mut old = 0usize;
    for t in i.tenants {
        let ids: Vec<String> = t
            .keys
            .iter()
            .filter(|k| k.rotated_at.unwrap_or(k.created_at) < cutoff)
            .map(|k| {
                format!(
                    "{} (last {} {})",
                    k.key_id,
                    if k.rotated_at.is_some() {
                        "rotated"
                    } else {
                        "created, never rotated,"
                    },
                    date(k.rotated_at.unwrap_or(k.created_at))
                )
            })
            .collect();
        if !ids.is_empty() {
            old += ids.len();
            parts.push((t.tenant.tenant_id.clone(), list(&ids)));
        }
    }
    let note = no_keys_note(i)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if old > 0 {
        (
            Status::Warn,
            format!(
                "{old} of {total} active key(s) of {} not rotated in {KEY_MAX_AGE_DAYS} days (created or rotated before {}): {}{note}",
                subject(i),
                date(cutoff),
                per_tenant(i, &parts)
            ),
            "Rotate them: POST /admin/v1/tenants/{tenant}/keys/{key}/rotate (the old secret keeps working for auth.rotation_grace).".into(),
        )
    } else {
        (
            Status::Pass,
            format!(
                "all {total} active key(s) of {} created or rotated since {}{note}",
                subject(i),
                date(cutoff)
            ),
            format!("Rotate every key at least every {KEY_MAX_AGE_DAYS} days."),
        )
    }
}

fn key_unused(i: &Inputs<'_>) -> Outcome {
    let fix = "Revoke keys nobody uses (DELETE /admin/v1/tenants/{tenant}/keys/{key}); keys carry no last-used time, so the audit log is the record of use.";
    let mut unused_parts = Vec::new();
    let mut unknown_parts = Vec::new();
    let mut unused = 0usize;
    let mut checked = 0usize;
    let mut young = 0usize;
    let mut windows = std::collections::BTreeSet::new();
    for t in i.tenants {
        match &t.key_use {
            KeyUse::Unknown(why) => {
                if !t.keys.is_empty() {
                    unknown_parts.push((t.tenant.tenant_id.clone(), why.clone()));
                }
            }
            KeyUse::Seen {
                since_micros,
                window_days,
                used,
                truncated,
            } => {
                windows.insert(*window_days);
                let since =
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(*since_micros) * 1000)
                        .unwrap_or(i.now);
                let mut ids = Vec::new();
                for k in &t.keys {
                    if k.created_at >= since {
                        young += 1;
                        continue;
                    }
                    checked += 1;
                    if !used.contains(&k.key_id) {
                        ids.push(k.key_id.as_str());
                    }
                }
                if *truncated && !ids.is_empty() {
                    unknown_parts.push((
                        t.tenant.tenant_id.clone(),
                        format!(
                            "the index scan stopped after {} entries before finding key ids {}",
                            super::MAX_USE_SCAN,
                            list(&ids)
                        ),
                    ));
                } else if !ids.is_empty() {
                    unused += ids.len();
                    unused_parts.push((
                        t.tenant.tenant_id.clone(),
                        format!("key ids {} (no record since {})", list(&ids), date(since)),
                    ));
                }
            }
        }
    }
    let window = windows
        .iter()
        .map(|d| format!("{d}"))
        .collect::<Vec<_>>()
        .join("/");
    let window = if window.is_empty() {
        KEY_MAX_AGE_DAYS.to_string()
    } else {
        window
    };
    let how = format!(
        "decided from the audit query index of this replica: a key counts as used if a record's user_id is its key id (proxied requests) or key:<id> (admin calls) within the last {window} days (the shorter of {KEY_MAX_AGE_DAYS} days and the tenant's retention_days); keys younger than that are not judged ({young})"
    );
    let how = if i.audit.and_then(|a| a.shipping()).is_some() {
        format!(
            "{how}; other replicas' use is not in this index, so a key used only through them is listed too"
        )
    } else {
        how
    };
    if unused > 0 || !unknown_parts.is_empty() {
        let mut evidence = String::new();
        if unused > 0 {
            let _ = write!(
                evidence,
                "{unused} of {checked} active key(s) of {} unused: {}; ",
                subject(i),
                per_tenant(i, &unused_parts)
            );
        }
        if !unknown_parts.is_empty() {
            let _ = write!(
                evidence,
                "key use cannot be known for {}; ",
                per_tenant(i, &unknown_parts)
            );
        }
        evidence.push_str(&how);
        (Status::Warn, evidence, fix.into())
    } else {
        let judged = if checked == 0 {
            format!(
                "no active key of {} is old enough to be judged unused yet",
                subject(i)
            )
        } else {
            format!(
                "each of the {checked} active key(s) of {} old enough to judge was used",
                subject(i)
            )
        };
        (Status::Pass, format!("{judged}; {how}"), fix.into())
    }
}

fn audit_retention(i: &Inputs<'_>) -> Outcome {
    let mut short = Vec::new();
    let mut long = Vec::new();
    for t in i.tenants {
        let tier = t.tenant.tier.default_limits().retention_days;
        let days = t.tenant.limits.retention_days;
        let tier_name = serde_json::to_value(t.tenant.tier)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let item = (
            t.tenant.tenant_id.clone(),
            if days <= 0 {
                format!(
                    "limits.retention_days = {days} (kept without limit) against the {tier_name} tier's {tier}"
                )
            } else {
                format!("limits.retention_days = {days} against the {tier_name} tier's {tier}")
            },
        );
        if days > 0 && days < tier {
            short.push(item);
        } else if days <= 0 || days > tier {
            long.push(item);
        }
    }
    let purge = format!(
        "records past retention are purged every {}",
        humantime::format_duration(i.config.audit.retention_interval)
    );
    if !short.is_empty() {
        (
            Status::Fail,
            format!(
                "audit records kept for less than the tier promises: {}; {purge}",
                per_tenant(i, &short)
            ),
            "Raise limits.retention_days to the tier's value (PATCH /admin/v1/tenants/{tenant})."
                .into(),
        )
    } else if !long.is_empty() {
        (
            Status::Warn,
            format!(
                "audit records kept longer than the tier's period (storage limitation): {}; {purge}",
                per_tenant(i, &long)
            ),
            "Keep records no longer than needed: set limits.retention_days to the tier's value unless a documented obligation needs more.".into(),
        )
    } else if i.tenants.is_empty() {
        (Status::Pass, format!("no tenants; {purge}"), String::new())
    } else {
        (
            Status::Pass,
            format!(
                "limits.retention_days equals the tier's period for {}; {purge}",
                subject(i)
            ),
            "Change a tenant's retention only with its tier.".into(),
        )
    }
}

fn residency(i: &Inputs<'_>) -> Outcome {
    let map = &i.config.proxy.region_upstreams;
    let url = |u: &crate::config::UpstreamTarget| format!("{}://{}", u.scheme, u.authority);
    let mut regions: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for t in i.tenants {
        regions
            .entry(t.tenant.settings.data_region.as_str())
            .or_default()
            .push(t.tenant.tenant_id.as_str());
    }
    let in_use = regions
        .iter()
        .map(|(r, ts)| {
            if i.one_tenant {
                r.to_string()
            } else {
                format!("{r} ({})", list(ts))
            }
        })
        .collect::<Vec<_>>();
    if map.is_empty() {
        return (
            Status::Fail,
            format!(
                "proxy.region_upstreams is empty: every request goes to proxy.upstream {} whatever the tenant's settings.data_region (in use: {})",
                url(&i.config.proxy.upstream),
                if in_use.is_empty() { "none".to_string() } else { list(&in_use) }
            ),
            "Map each data region to its upstream in [proxy.region_upstreams] (\"eu-west-1\" = \"http://…\"); tenants whose region has none are then refused (403 residency_violation).".into(),
        );
    }
    let configured: Vec<String> = map.keys().map(|k| k.to_string()).collect();
    let mut pinned = Vec::new();
    let mut refused = Vec::new();
    for (region, tenants) in &regions {
        match map.get(*region) {
            Some(u) => pinned.push(if i.one_tenant {
                format!("data_region {region} → {}", url(u))
            } else {
                format!("{region} → {} ({})", url(u), list(tenants))
            }),
            None => refused.push(if i.one_tenant {
                format!("data_region {region}")
            } else {
                format!("{region} ({})", list(tenants))
            }),
        }
    }
    let configured = format!("regions configured: {}", list(&configured));
    if !refused.is_empty() {
        (
            Status::Warn,
            format!(
                "no upstream for {}: those requests are refused (403 residency_violation), never forwarded elsewhere; {configured}{}",
                list(&refused),
                if pinned.is_empty() { String::new() } else { format!("; pinned: {}", list(&pinned)) }
            ),
            "Add the missing regions to [proxy.region_upstreams], or move the tenants' settings.data_region to a served region.".into(),
        )
    } else {
        (
            Status::Pass,
            format!(
                "requests go only to the tenant's region's upstream: {}; {configured}",
                if pinned.is_empty() {
                    "no tenants".to_string()
                } else {
                    list(&pinned)
                }
            ),
            "Keep one entry per region that holds tenant data.".into(),
        )
    }
}
