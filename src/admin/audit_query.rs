//! `GET /admin/v1/audit` and `GET /admin/v1/audit/report`: the audit log
//! through the store's index (never the files). A tenant's callers with
//! `view_audit_logs` see their own tenant only; `system_admin` sees all.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use crate::audit::{Record, Severity, index};
use crate::roles::Permission;
use crate::store::{AuditQuery, Store};

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
/// asked for, or all).
fn scope(caller: &Caller, asked: Option<&str>) -> Result<Option<String>, ApiError> {
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
    caller.authorize(
        Some(tenant.as_deref().unwrap_or("*")),
        &[Permission::ViewAuditLogs],
    )?;
    Ok(tenant)
}

fn view(r: &Record) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// `GET /admin/v1/audit?tenant_id=&user_id=&event_type=&start=&end=&limit=&cursor=`
pub async fn query(
    store: &Arc<dyn Store>,
    dir: &std::path::Path,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let tenant = scope(caller, params.get("tenant_id").map(String::as_str))?;
    let limit = match params.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit must be 1 to {MAX_LIMIT}")))?,
        None => 100,
    };
    let after = match params.get("cursor") {
        Some(c) => Some(
            c.split_once('-')
                .and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| ApiError::bad("cursor is not one this API returned"))?,
        ),
        None => None,
    };
    let q = AuditQuery {
        tenant_id: tenant.clone(),
        user_id: params.get("user_id").cloned(),
        event_type: params.get("event_type").cloned(),
        start_micros: params
            .get("start")
            .map(|s| micros("start", s))
            .transpose()?,
        end_micros: params.get("end").map(|s| micros("end", s)).transpose()?,
        limit,
        after,
    };
    let page = store.query_audit(&q).await.map_err(ApiError::Store)?;
    // Records are read back from the files by position (never scanned);
    // one whose file retention removed meanwhile is left out.
    let records: Vec<Value> = page
        .entries
        .iter()
        .filter_map(|p| index::read_record(dir, p))
        .map(|r| view(&r))
        .collect();
    Ok(json!({
        "tenant_id": tenant,
        "count": records.len(),
        "records": records,
        "next_cursor": page.next.map(|(t, s)| format!("{t}-{s}")),
    }))
}

/// `GET /admin/v1/audit/report?tenant_id=&days=`: the seed's report.
pub async fn report(
    store: &Arc<dyn Store>,
    dir: &std::path::Path,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let tenant = scope(caller, params.get("tenant_id").map(String::as_str))?
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
    let mut q = AuditQuery {
        tenant_id: Some(tenant.clone()),
        start_micros: Some(now - days * 86_400 * 1_000_000),
        limit: MAX_LIMIT,
        ..AuditQuery::default()
    };
    let mut events: HashMap<String, u64> = HashMap::new();
    let mut users: HashMap<String, u64> = HashMap::new();
    let mut high = Vec::new();
    let mut total = 0usize;
    loop {
        let page = store.query_audit(&q).await.map_err(ApiError::Store)?;
        for p in page.entries {
            total += 1;
            *events.entry(p.event_type.clone()).or_default() += 1;
            *users.entry(p.user_id.clone()).or_default() += 1;
            if p.severity == Severity::High {
                high.push(p);
            }
        }
        match page.next {
            Some(next) if total < REPORT_MAX_RECORDS => q.after = Some(next),
            _ => break,
        }
    }
    let top = |m: HashMap<String, u64>, n: usize, key: &str| -> Vec<Value> {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter()
            .take(n)
            .map(|(k, c)| json!({key: k, "events": c}))
            .collect()
    };
    let high_count = high.len();
    let recent: Vec<Value> = high
        .iter()
        .rev()
        .take(5)
        .filter_map(|p| index::read_record(dir, p))
        .map(|r| view(&r))
        .collect();
    Ok(json!({
        "tenant_id": tenant,
        "days": days,
        "total_events": total,
        "event_distribution": top(events, 10, "event_type"),
        "most_active_users": top(users, 5, "user_id"),
        "high_severity_events": high_count,
        "recent_high_severity": recent,
        "complete": total < REPORT_MAX_RECORDS,
    }))
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
