//! W3C Trace Context (`traceparent`, `tracestate`): every forwarded
//! request carries a trace, the caller's when it sent a valid one, a new one
//! otherwise, so the cost service's spans join the caller's trace and the
//! access log line names the trace it belongs to.
//!
//! costguard is one hop of the trace: it keeps the caller's trace id and
//! sampled flag and sends its own span id as the upstream's parent (what
//! Envoy and linkerd do). An invalid `traceparent` (wrong length, upper-case
//! hex, all-zero ids, version `ff`) starts a new trace, and its
//! `tracestate` is dropped with it, as the specification asks; a
//! `tracestate` longer than [`MAX_TRACESTATE`] is dropped too.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` forwarded (the specification's 32 members of
/// vendor state fit; longer is dropped, never truncated mid-member).
pub const MAX_TRACESTATE: usize = 512;

/// The trace a request belongs to and costguard's span in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never all zeros).
    pub trace_id: [u8; 16],
    /// costguard's span id: the upstream's parent.
    pub span_id: [u8; 8],
    /// The caller's span id, when the caller's trace was continued.
    pub parent_id: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// Whether the caller's trace was continued (its `tracestate` is
    /// forwarded) rather than a new one started.
    pub continued: bool,
}

impl TraceContext {
    /// The caller's trace (one valid `traceparent`), or a new sampled one.
    pub fn continue_or_start(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        if let (Some(v), None) = (values.next(), values.next())
            && let Some((trace_id, parent, flags)) = parse(v.as_bytes())
        {
            return Self {
                trace_id,
                span_id: span_id(),
                parent_id: Some(parent),
                flags,
                continued: true,
            };
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&random_u64().to_be_bytes());
        id[8..].copy_from_slice(&random_u64().to_be_bytes());
        if id == [0; 16] {
            id[15] = 1;
        }
        Self {
            trace_id: id,
            span_id: span_id(),
            parent_id: None,
            flags: 0x01,
            continued: false,
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::model::hex(&self.trace_id)
    }

    /// The `traceparent` sent upstream: version 00, our span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut buf[3..35], &self.trace_id);
        hex_into(&mut buf[36..52], &self.span_id);
        hex_into(&mut buf[53..55], &[self.flags]);
        HeaderValue::from_bytes(&buf).expect("hex digits and dashes")
    }

    /// Sets `traceparent` on the upstream request's headers, and keeps
    /// the caller's `tracestate` only with the caller's trace (one header,
    /// at most [`MAX_TRACESTATE`] bytes).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        let keep = self.continued && {
            let mut values = headers.get_all(&TRACESTATE).iter();
            matches!(
                (values.next(), values.next()),
                (Some(v), None) if v.len() <= MAX_TRACESTATE
            )
        };
        if !keep {
            headers.remove(&TRACESTATE);
        }
    }
}

/// A fresh, non-zero span id.
fn span_id() -> [u8; 8] {
    match random_u64() {
        // The specification forbids the all-zero id.
        0 => 1u64.to_be_bytes(),
        n => n.to_be_bytes(),
    }
}

/// A random 64-bit number: SplitMix64 per thread, seeded from the OS. Trace
/// and span ids must be unique, not secret (the specification asks for
/// randomness, not unpredictability), and a request must not pay for a
/// cryptographic generator twice.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the OS random source works");
            u64::from_ne_bytes(seed)
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (or a later version's longer form with
/// more fields after a dash): the trace id, parent id and flags, if valid.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version = byte(&v[0..2])?;
    // Version ff is invalid; version 00 has exactly 55 bytes; a later
    // version may append `-…` fields, which are ignored.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, b) in parent.iter_mut().enumerate() {
        *b = byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = byte(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// Two lower-case hex digits as a byte (upper case is invalid).
fn byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out` (twice their length).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_valid_parent_is_continued_with_our_span() {
        let mut h = headers(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
        let t = TraceContext::continue_or_start(&h);
        assert!(t.continued);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        t.apply(&mut h);
        let sent = h["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_ne!(&sent[36..52], "00f067aa0ba902b7", "our own span id");
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn unsampled_flags_are_kept() {
        let h = headers(&[("traceparent", &VALID.replace("-01", "-00"))]);
        assert_eq!(TraceContext::continue_or_start(&h).flags, 0);
    }

    #[test]
    fn invalid_parents_start_a_new_trace_and_drop_the_state() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let mut h = headers(&[("traceparent", bad), ("tracestate", "a=b")]);
            let t = TraceContext::continue_or_start(&h);
            assert!(!t.continued, "{bad:?}");
            assert_ne!(t.trace_id, [0; 16]);
            t.apply(&mut h);
            assert!(h.get("tracestate").is_none(), "{bad:?}");
            assert_eq!(h.get_all("traceparent").iter().count(), 1);
            assert!(parse(h["traceparent"].as_bytes()).is_some());
        }
    }

    #[test]
    fn a_later_version_with_more_fields_is_continued() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::continue_or_start(&headers(&[("traceparent", v)])).continued);
    }

    #[test]
    fn two_parents_or_an_oversized_state_are_not_trusted() {
        let h = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert!(!TraceContext::continue_or_start(&h).continued);
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let mut h = headers(&[("traceparent", VALID), ("tracestate", &long)]);
        TraceContext::continue_or_start(&h).apply(&mut h);
        assert!(h.get("tracestate").is_none());
    }

    #[test]
    fn new_traces_differ() {
        let a = TraceContext::continue_or_start(&HeaderMap::new());
        let b = TraceContext::continue_or_start(&HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(a.flags, 1);
    }
}
