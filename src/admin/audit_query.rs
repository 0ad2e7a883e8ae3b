//! `GET /admin/v1/audit` and `GET /admin/v1/audit/report`: the audit log
//! through its query index (the files are read by position, never scanned). A tenant's callers with
//! `view_audit_logs` see their own tenant only; `system_admin` sees all.
//!
//! With several replicas (a shipper attached to the log,
//! [`crate::audit::ship::start`]), both cover every replica: this
//! replica's own stream from its local index (a record written a
//! millisecond ago is found) merged with the other replicas' streams from
//! PostgreSQL (each about a second behind its replica). Pages are then in
//! `(time, stream, seq)` order and the cursor is `micros.stream.seq`;
//! scoping, filters, the page bounds and the response's shape are the
//! same as with one replica.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use crate::audit::index::{self, Entry, Index, Query};
use crate::audit::ship::shared::{self, Filter, Position};
use crate::audit::ship::{Link, ShipError};
use crate::audit::{Audit, AuditError, EventType, Record, Severity, off_runtime};
use crate::roles::Permission;

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
/// Most records one report reads.
pub const REPORT_MAX_RECORDS: usize = 1_000_000;

/// `key=value&…`, percent-decoded (`+` is a space, as in forms).
pub fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 → Unix microseconds (a space stands for a `+` a client forgot
/// to encode).
fn micros(field: &str, value: &str) -> Result<i64, ApiError> {
    let value = value.replace(' ', "+");
    time::OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| {
            ApiError::bad(format!(
                "{field} must be an RFC 3339 time, e.g. 2026-11-27T00:00:00Z"
            ))
        })
}

/// The tenant a caller may read: its own (or, for system_admin, the one
/// asked for, or all), if it holds one of `needs` there.
pub(super) fn scope(
    caller: &Caller,
    asked: Option<&str>,
    needs: &[Permission],
) -> Result<Option<String>, ApiError> {
    let own = match caller {
        Caller::Key(p, _) if !caller.permissions().contains(Permission::SystemAdmin) => {
            Some(p.tenant_id.to_string())
        }
        _ => None,
    };
    let tenant = match (own, asked) {
        (Some(own), None) => Some(own),
        (_, asked) => asked.map(str::to_string),
    };
    caller.authorize(Some(tenant.as_deref().unwrap_or("*")), needs)?;
    Ok(tenant)
}

fn view(r: &Record) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// The index lookups and record reads are file I/O: off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(work)
        .await
        .map_err(|e| ApiError::Audit(AuditError::Unreadable(e.to_string())))
}

fn index_of(audit: &Audit) -> Result<Arc<Index>, ApiError> {
    audit.catch_up();
    audit
        .index()
        .cloned()
        .ok_or_else(|| ApiError::NotFound("the audit log keeps no query index".into()))
}

/// `GET /admin/v1/audit?tenant_id=&user_id=&event_type=&start=&end=&limit=&cursor=`
pub async fn query(
    audit: &Audit,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let tenant = scope(
        caller,
        params.get("tenant_id").map(String::as_str),
        &[Permission::ViewAuditLogs],
    )?;
    let limit = match params.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit must be 1 to {MAX_LIMIT}")))?,
        None => 100,
    };
    if let Some(link) = audit.shipping() {
        return query_shared(audit, link, tenant, limit, params).await;
    }
    let after_seq = match params.get("cursor") {
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| ApiError::bad("cursor is not one this API returned"))?,
        ),
        None => None,
    };
    let start_micros = params
        .get("start")
        .map(|s| micros("start", s))
        .transpose()?;
    let end_micros = params.get("end").map(|s| micros("end", s)).transpose()?;
    let user = params.get("user_id").cloned();
    let event = params.get("event_type").cloned();
    let index = index_of(audit)?;
    let dir = audit.dir().to_path_buf();
    let scope = tenant.clone();
    let (records, next) = blocking(move || {
        let h = index.hasher();
        let q = Query {
            tenant: scope.as_deref().map(|t| h.hash(t)),
            user: user.as_deref().map(|u| h.hash(u)),
            event: event.as_deref().map(|e| h.hash(e)),
            start_micros,
            end_micros,
            after_seq,
            limit,
        };
        let page = index.query(&q)?;
        // Records are read back by position (never scanned), and checked
        // against the filters' strings: the index compares hashes. One
        // whose file retention removed meanwhile is left out.
        let records: Vec<Value> = page
            .entries
            .iter()
            .filter_map(|e| index::read_record(&dir, e))
            .filter(|r| {
                scope.as_ref().is_none_or(|t| *t == r.tenant_id)
                    && user.as_ref().is_none_or(|u| *u == r.user_id)
                    && event.as_ref().is_none_or(|e| *e == r.event_type)
            })
            .map(|r| view(&r))
            .collect();
        Ok((records, page.next))
    })
    .await?;
    Ok(json!({
        "tenant_id": tenant,
        "count": records.len(),
        "records": records,
        "next_cursor": next.map(|s| s.to_string()),
    }))
}

/// `GET /admin/v1/audit/report?tenant_id=&days=`: the seed's report.
pub async fn report(
    audit: &Audit,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let tenant = scope(
        caller,
        params.get("tenant_id").map(String::as_str),
        &[Permission::ViewAuditLogs],
    )?
    .ok_or_else(|| ApiError::bad("tenant_id is required"))?;
    let days = match params.get("days") {
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| ApiError::bad("days must be 1 to 3650"))?,
        None => 30,
    };
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let since = now - days * 86_400 * 1_000_000;
    let index = index_of(audit)?;
    let dir = audit.dir().to_path_buf();
    let scope = tenant.clone();
    let mut part = blocking(move || local_report(&index, &dir, &scope, since)).await?;
    if let Some(link) = audit.shipping() {
        let remote = shared::report(&link.pool, &link.stream, &tenant, since)
            .await
            .map_err(shared_error)?;
        part.merge(&link.stream, remote);
    }
    Ok(part.render(&tenant, days))
}

/// What a report counts, with names.
struct ReportPart {
    total: usize,
    events: Vec<(String, u64)>,
    users: Vec<(String, u64)>,
    high_count: usize,
    /// The latest HIGH records, latest first (at most 5), with their place
    /// in the merged order (`None` with one replica).
    recent: Vec<(Option<Position>, Record)>,
}

/// The report's counts from the local index: counted by hash from the
/// index alone; names come from one record of each hash.
fn local_report(
    index: &Index,
    dir: &std::path::Path,
    scope: &str,
    since: i64,
) -> std::io::Result<ReportPart> {
    let mut q = Query {
        tenant: Some(index.hasher().hash(scope)),
        start_micros: Some(since),
        limit: usize::MAX,
        ..Query::default()
    };
    let mut events: HashMap<u64, (u64, Entry)> = HashMap::new();
    let mut users: HashMap<u64, (u64, Entry)> = HashMap::new();
    let mut high: Vec<Entry> = Vec::new();
    let mut high_count = 0usize;
    let mut total = 0usize;
    loop {
        let page = index.query(&q)?;
        for e in page.entries {
            total += 1;
            events.entry(e.event).or_insert((0, e)).0 += 1;
            users.entry(e.user).or_insert((0, e)).0 += 1;
            if e.severity == Severity::High {
                high_count += 1;
                if high.len() == 5 {
                    high.remove(0);
                }
                high.push(e);
            }
        }
        match page.next {
            Some(next) if total < REPORT_MAX_RECORDS => q.after_seq = Some(next),
            _ => break,
        }
    }
    let named = |m: HashMap<u64, (u64, Entry)>, key: &str| -> Vec<(String, u64)> {
        m.into_values()
            .map(|(count, sample)| {
                let name = index::read_record(dir, &sample)
                    .map(|r| match key {
                        "event_type" => r.event_type,
                        _ => r.user_id,
                    })
                    .unwrap_or_default();
                (name, count)
            })
            .collect()
    };
    let recent = high
        .iter()
        .rev()
        .filter_map(|e| index::read_record(dir, e).map(|r| (e.micros, r)))
        .map(|(micros, r)| {
            let at = Position {
                micros,
                stream: String::new(),
                seq: r.seq,
            };
            (Some(at), r)
        })
        .collect();
    Ok(ReportPart {
        total,
        events: named(events, "event_type"),
        users: named(users, "user_id"),
        high_count,
        recent,
    })
}

impl ReportPart {
    /// Adds the other replicas' share (`own` is this replica's stream).
    fn merge(&mut self, own: &str, remote: shared::ReportPart) {
        fn add(into: &mut Vec<(String, u64)>, from: Vec<(String, u64)>) {
            for (name, n) in from {
                match into.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, c)) => *c += n,
                    None => into.push((name, n)),
                }
            }
        }
        self.total += remote.total as usize;
        self.high_count += remote.high as usize;
        add(&mut self.events, remote.events);
        add(&mut self.users, remote.users);
        for (at, _) in &mut self.recent {
            if let Some(at) = at {
                at.stream = own.to_string();
            }
        }
        self.recent
            .extend(remote.recent_high.into_iter().map(|(p, r)| (Some(p), r)));
        self.recent.sort_by(|a, b| b.0.cmp(&a.0));
        self.recent.truncate(5);
    }

    fn render(self, tenant: &str, days: i64) -> Value {
        let top = |mut named: Vec<(String, u64)>, n: usize, key: &str| -> Vec<Value> {
            named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            named
                .into_iter()
                .take(n)
                .map(|(k, c)| json!({key: k, "events": c}))
                .collect()
        };
        let recent: Vec<Value> = self.recent.iter().map(|(_, r)| view(r)).collect();
        // Every business event type, counted (0 included), so the report
        // answers "how many exports" without a top-10 cut.
        let business: serde_json::Map<String, Value> = EventType::BUSINESS
            .iter()
            .chain([&EventType::BudgetAlert])
            .map(|t| {
                let n = self
                    .events
                    .iter()
                    .find(|(name, _)| name == t.as_str())
                    .map_or(0, |(_, n)| *n);
                (t.as_str().to_string(), Value::from(n))
            })
            .collect();
        json!({
            "tenant_id": tenant,
            "days": days,
            "total_events": self.total,
            "business_events": business,
            "event_distribution": top(self.events, 10, "event_type"),
            "most_active_users": top(self.users, 5, "user_id"),
            "high_severity_events": self.high_count,
            "recent_high_severity": recent,
            "complete": self.total < REPORT_MAX_RECORDS,
        })
    }
}

fn shared_error(e: ShipError) -> ApiError {
    tracing::warn!(error = %e, "The shared audit log (PostgreSQL) could not be read.");
    ApiError::Audit(AuditError::Unreadable(
        "the shared audit log (PostgreSQL) is unreachable".into(),
    ))
}

/// The query over every replica: this replica's stream from the local
/// index, the others' from PostgreSQL, merged in `(time, stream, seq)`
/// order.
async fn query_shared(
    audit: &Audit,
    link: &Link,
    tenant: Option<String>,
    limit: usize,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let after = match params.get("cursor") {
        Some(c) => Some(
            Position::parse(c)
                .ok_or_else(|| ApiError::bad("cursor is not one this API returned"))?,
        ),
        None => None,
    };
    let filter = Filter {
        tenant: tenant.clone(),
        user: params.get("user_id").cloned(),
        event: params.get("event_type").cloned(),
        start_micros: params
            .get("start")
            .map(|s| micros("start", s))
            .transpose()?,
        end_micros: params.get("end").map(|s| micros("end", s)).transpose()?,
        after,
    };
    let own = link.stream.clone();
    let index = index_of(audit)?;
    let dir = audit.dir().to_path_buf();
    let local_filter = filter.clone();
    let local_own = own.clone();
    let local = blocking(move || local_page(&index, &dir, &local_own, &local_filter, limit));
    let remote = async {
        shared::query(&link.pool, &own, &filter, limit)
            .await
            .map_err(shared_error)
    };
    let ((mut records, local_more), remote) = tokio::try_join!(local, remote)?;
    let remote_more = remote.len() >= limit;
    records.extend(remote);
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let more = local_more || remote_more || records.len() > limit;
    records.truncate(limit);
    let next = if more {
        records.last().map(|(p, _)| p.cursor())
    } else {
        None
    };
    let records: Vec<Value> = records.iter().map(|(_, r)| view(r)).collect();
    Ok(json!({
        "tenant_id": tenant,
        "count": records.len(),
        "records": records,
        "next_cursor": next,
    }))
}

/// Up to `limit` of this replica's records after `filter.after` (in the
/// merged order), and whether more may follow. Pages of the index are
/// read until `limit` records match or the index ends, so a page never
/// skips a local record the next one would need.
fn local_page(
    index: &Index,
    dir: &std::path::Path,
    own: &str,
    filter: &Filter,
    limit: usize,
) -> std::io::Result<(Vec<(Position, Record)>, bool)> {
    let h = index.hasher();
    let mut q = Query {
        tenant: filter.tenant.as_deref().map(|t| h.hash(t)),
        user: filter.user.as_deref().map(|u| h.hash(u)),
        event: filter.event.as_deref().map(|e| h.hash(e)),
        start_micros: filter.start_micros,
        end_micros: filter.end_micros,
        after_seq: None,
        limit: limit + 1,
    };
    // This stream's records after the cursor: in time order (seq order is
    // time order here), ties at the cursor's time decided by stream id.
    if let Some(after) = &filter.after {
        use std::cmp::Ordering;
        let from = match own.cmp(after.stream.as_str()) {
            Ordering::Equal => {
                q.after_seq = Some(after.seq);
                after.micros
            }
            Ordering::Greater => after.micros,
            Ordering::Less => after.micros.saturating_add(1),
        };
        q.start_micros = Some(q.start_micros.map_or(from, |s| s.max(from)));
    }
    let mut out = Vec::new();
    loop {
        let page = index.query(&q)?;
        for e in &page.entries {
            let Some(r) = index::read_record(dir, e) else {
                continue;
            };
            if filter.tenant.as_ref().is_none_or(|t| *t == r.tenant_id)
                && filter.user.as_ref().is_none_or(|u| *u == r.user_id)
                && filter.event.as_ref().is_none_or(|ev| *ev == r.event_type)
            {
                let at = Position {
                    micros: e.micros,
                    stream: own.to_string(),
                    seq: e.seq,
                };
                out.push((at, r));
            }
            if out.len() > limit {
                out.truncate(limit);
                return Ok((out, true));
            }
        }
        match page.next {
            Some(next) => q.after_seq = Some(next),
            None => return Ok((out, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let p = query_params(Some(
            "tenant_id=org-1&start=2026-11-27T00%3A00%3A00Z&x=a+b&y=%zz&flag",
        ));
        assert_eq!(p["tenant_id"], "org-1");
        assert_eq!(p["start"], "2026-11-27T00:00:00Z");
        assert_eq!(p["x"], "a b");
        assert_eq!(p["y"], "%zz");
        assert_eq!(p["flag"], "");
        assert!(micros("start", "2026-11-27T00:00:00 00:00").is_ok());
    }
}
