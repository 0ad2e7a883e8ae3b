//! A record's JSON line, written by hand on the request path.
//!
//! Byte for byte what `serde_json` writes for [`Record`] (fields in
//! declaration order, the same string escapes; the property test below
//! holds the two together), because the chain hashes these bytes and
//! [`Record::canonical`], which `verify` uses, is serde's. Written by hand
//! because every proxied request writes one: serde's per-byte escaping
//! loop was ~6,000 instructions of each ~570-byte record, while a string
//! that needs no escape (almost all of them) is checked here with a
//! branch-free scan the compiler vectorizes and copied in one go.

use serde_json::Value;

use super::{Details, Record, RequestDetails};

/// Where the personal values and the salt are in a written line (byte
/// ranges in `out`): the chain hash of a record with a subject digest
/// covers the line without them (see [`super::subject`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Spans {
    /// The contents (inside the quotes) of `user_id`, `ip_address` and
    /// `user_agent`, then the whole `,"subject_salt":"…"` (empty if none).
    cuts: [std::ops::Range<usize>; 4],
}

impl Spans {
    /// The ranges to leave out of the hash, in order.
    pub(super) fn personal(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.cuts.iter().cloned()
    }
}

/// Appends `record`'s line (no newline) to `out`; returns where its
/// personal values are.
pub(super) fn write(record: &Record, out: &mut Vec<u8>) -> Spans {
    let mut spans = Spans::default();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(record.seq).as_bytes());
    field(out, b",\"event_id\":", &record.event_id);
    field(out, b",\"timestamp\":", &record.timestamp);
    field(out, b",\"event_type\":", &record.event_type);
    spans.cuts[0] = value(out, b",\"user_id\":", &record.user_id);
    field(out, b",\"tenant_id\":", &record.tenant_id);
    if let Some(region) = &record.region {
        field(out, b",\"region\":", region);
    }
    out.extend_from_slice(b",\"details\":");
    match &record.details {
        Details::Request(details) => request_details(details, out),
        Details::Json(value) => json(value, out),
    }
    spans.cuts[1] = value(out, b",\"ip_address\":", &record.ip_address);
    spans.cuts[2] = value(out, b",\"user_agent\":", &record.user_agent);
    field(out, b",\"severity\":", record.severity.as_str());
    field(out, b",\"request_id\":", &record.request_id);
    if let Some(digest) = &record.subject_digest {
        field(out, b",\"subject_digest\":", digest);
    }
    let salt_at = out.len();
    if let Some(salt) = &record.subject_salt {
        field(out, b",\"subject_salt\":", salt);
    }
    spans.cuts[3] = salt_at..out.len();
    if let Some(seal) = &record.subject_seal {
        field(out, b",\"subject_seal\":", seal);
    }
    field(out, b",\"prev_hash\":", &record.prev_hash);
    field(out, b",\"hash\":", &record.hash);
    out.push(b'}');
    spans
}

/// [`field`], returning where the string's contents are (inside the
/// quotes).
fn value(out: &mut Vec<u8>, key: &[u8], value: &str) -> std::ops::Range<usize> {
    out.extend_from_slice(key);
    let start = out.len() + 1;
    string(out, value);
    start..out.len() - 1
}

/// A proxied request's details: keys in sorted order, as a JSON object of
/// them is written (see [`Details`]'s `Serialize`).
fn request_details(r: &RequestDetails, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"auth_method\":");
    optional(out, r.auth_method);
    field(out, b",\"decision\":", r.decision);
    field(out, b",\"method\":", r.method.as_str());
    field(out, b",\"path\":", &r.path);
    out.extend_from_slice(b",\"permission\":");
    optional(out, r.permission);
    if let Some(reason) = r.reason {
        field(out, b",\"reason\":", reason);
    }
    out.extend_from_slice(b",\"route\":");
    optional(out, r.route.as_deref());
    if let Some(status) = r.status {
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    }
    out.push(b'}');
}

/// Any other details (admin actions, policy): serde's own writer.
fn json(value: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, value).expect("a JSON value serializes");
}

fn field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    string(out, value);
}

fn optional(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string with serde_json's escapes: `"` and `\` backslashed, the
/// control characters as `\b \t \n \f \r` or `\u00xx`, everything else
/// (DEL and all of non-ASCII UTF-8 included) as is.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // No short-circuit, so the scan vectorizes.
    let clean = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if clean {
        out.extend_from_slice(bytes);
    } else {
        escaped(out, bytes);
    }
    out.push(b'"');
}

fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::audit::Severity;

    fn record(text: &str, details: Details) -> Record {
        Record {
            seq: 42,
            event_id: text.to_string(),
            timestamp: "2026-12-06T14:09:07.202126Z".into(),
            event_type: "request.allowed".into(),
            user_id: text.to_string(),
            tenant_id: format!("org-{text}"),
            region: Some(text.to_string()),
            details,
            ip_address: "127.0.0.1".into(),
            user_agent: text.to_string(),
            severity: Severity::Medium,
            request_id: text.to_string(),
            subject_digest: Some(text.to_string()),
            subject_salt: Some(text.to_string()),
            subject_seal: Some(text.to_string()),
            prev_hash: "0".repeat(64),
            hash: String::new(),
        }
    }

    fn request(text: &str, denied: bool) -> Details {
        Details::Request(Box::new(RequestDetails {
            auth_method: (!denied).then_some("api_key"),
            decision: if denied { "deny" } else { "allow" },
            method: http::Method::POST,
            path: format!("/v1/{text}"),
            permission: Some("view_costs"),
            reason: denied.then_some("tenant_mismatch"),
            route: Some(Arc::from(text)),
            status: denied.then_some(403),
        }))
    }

    fn ours(r: &Record) -> String {
        let mut out = Vec::new();
        let _ = write(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_control_character_quote_and_backslash_is_escaped_as_serde_does() {
        let all: String = (0u8..0x80).map(char::from).chain("é✓😀".chars()).collect();
        for details in [
            request(&all, false),
            request(&all, true),
            Details::Json(json!({"a": all})),
        ] {
            let r = record(&all, details);
            assert_eq!(ours(&r), serde_json::to_string(&r).unwrap());
        }
    }

    proptest! {
        #[test]
        fn the_line_is_what_serde_writes(
            text in any::<String>(),
            denied: bool,
            seq: u64,
            subject in 0u8..8,
        ) {
            let mut r = record(&text, request(&text, denied));
            r.seq = seq;
            // Every combination of the optional subject fields.
            if subject & 1 == 0 { r.subject_digest = None; }
            if subject & 2 == 0 { r.subject_salt = None; }
            if subject & 4 == 0 { r.subject_seal = None; }
            r.hash = text.clone();
            prop_assert_eq!(ours(&r), serde_json::to_string(&r).unwrap());
        }
    }
}
