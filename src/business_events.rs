//! Business events: what a permitted request did, as the seed's audit log
//! names it (`cost.viewed`, `cost.exported`, `report.generated`,
//! `budget.created/updated/deleted`), and the budget alerts the cost
//! service raises (`budget.alert`).
//!
//! The decision record (`request.allowed`) is written before anything is
//! forwarded, so nothing reaches the upstream unrecorded. A route that
//! names an `audit_event` gets a second record once the upstream's
//! response head arrives and before any of it is forwarded: the business
//! event if the upstream answered 1xx-3xx, else `request.failed` with the
//! status (an export that failed is not an export). So every response a
//! client receives has its records written first; if they cannot be
//! written, the client gets 503 instead of the upstream's answer.
//!
//! The cost service raises budget alerts with a response header,
//! [`BUDGET_ALERT_HEADER`]: `X-CostOps-Budget-Alert: budget=bud-1;
//! threshold=80; spent=812.50; limit=1000` (`;`-separated `name=value`
//! pairs; names of `a-z 0-9 _`, values of printable ASCII without `;`,
//! `=` or quotes). Each one becomes a `budget.alert` record with those
//! pairs in `details.alert` (a value that does not parse is kept as
//! `details.alert_raw`, cut to [`MAX_ALERT_BYTES`]). The header is always
//! removed before the client sees the response.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// The upstream response header that carries a budget alert.
pub const BUDGET_ALERT_HEADER: HeaderName = HeaderName::from_static("x-costops-budget-alert");

/// Alerts recorded per response; more are dropped (and logged).
pub const MAX_ALERTS: usize = 4;

/// Longest alert value kept.
pub const MAX_ALERT_BYTES: usize = 512;

/// Most `name=value` pairs in one alert.
const MAX_PAIRS: usize = 16;

/// Removes every budget alert header from `headers`, returning at most
/// [`MAX_ALERTS`] of them (the rest are dropped with a warning).
pub fn take_budget_alerts(headers: &mut HeaderMap) -> Vec<HeaderValue> {
    if !headers.contains_key(BUDGET_ALERT_HEADER) {
        return Vec::new();
    }
    let mut alerts: Vec<HeaderValue> = match headers.entry(BUDGET_ALERT_HEADER) {
        http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        http::header::Entry::Vacant(_) => Vec::new(),
    };
    if alerts.len() > MAX_ALERTS {
        tracing::warn!(
            alerts = alerts.len(),
            kept = MAX_ALERTS,
            "The upstream sent more budget alerts than are recorded per response."
        );
        alerts.truncate(MAX_ALERTS);
    }
    alerts
}

/// The details of one alert's record: `{"alert": {name: value, …}}`, or
/// `{"alert_raw": "…"}` when the value is not `name=value` pairs.
pub fn alert_details(value: &HeaderValue) -> Map<String, Value> {
    let mut details = Map::new();
    match parse_pairs(value.as_bytes()) {
        Some(pairs) => {
            details.insert("alert".into(), Value::Object(pairs));
        }
        None => {
            let raw = String::from_utf8_lossy(value.as_bytes());
            let mut raw = raw.into_owned();
            crate::audit::bound(&mut raw, MAX_ALERT_BYTES);
            details.insert("alert_raw".into(), Value::String(raw));
        }
    }
    details
}

/// `name=value; name=value`, or `None` if it is anything else.
fn parse_pairs(bytes: &[u8]) -> Option<Map<String, Value>> {
    if bytes.len() > MAX_ALERT_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut pairs = Map::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=')?;
        let (name, value) = (name.trim(), value.trim());
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let value_ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b';' | b'=' | b'"' | b'\\'));
        if !name_ok || !value_ok || pairs.contains_key(name) || pairs.len() == MAX_PAIRS {
            return None;
        }
        pairs.insert(name.to_string(), Value::String(value.to_string()));
    }
    (!pairs.is_empty()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_taken_out_of_the_response_and_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for i in 0..6 {
            headers.append(
                BUDGET_ALERT_HEADER,
                HeaderValue::from_str(&format!("budget=b{i}")).unwrap(),
            );
        }
        let alerts = take_budget_alerts(&mut headers);
        assert_eq!(alerts.len(), MAX_ALERTS);
        assert_eq!(alerts[0], "budget=b0");
        assert!(!headers.contains_key(BUDGET_ALERT_HEADER));
        assert!(headers.contains_key("content-type"));
        assert!(take_budget_alerts(&mut headers).is_empty());
    }

    #[test]
    fn pairs_become_fields_and_anything_else_stays_raw() {
        let d = alert_details(&HeaderValue::from_static(
            "budget=bud-1; threshold=80; spent=812.50;limit=1000",
        ));
        assert_eq!(
            Value::Object(d),
            serde_json::json!({"alert": {"budget": "bud-1", "threshold": "80", "spent": "812.50", "limit": "1000"}})
        );
        for odd in [
            "just text",
            "a=1; a=2",
            "A=1",
            "a=",
            "=1",
            "a=\"q\"",
            "a=1=2",
        ] {
            let d = alert_details(&HeaderValue::from_static(odd));
            assert_eq!(d["alert_raw"], odd, "{odd}");
            assert!(!d.contains_key("alert"));
        }
        let long = "x".repeat(2000);
        let d = alert_details(&HeaderValue::from_str(&long).unwrap());
        assert_eq!(d["alert_raw"].as_str().unwrap().len(), MAX_ALERT_BYTES);
    }
}
