//! The path canonicaliser (`authz::path::check`) and the route matcher.
//!
//! Properties, for every path `check` accepts:
//! - decoding the whole path once and then splitting on `/` gives exactly
//!   the raw segments, each decoded: no encoded separator, and no decoded
//!   segment is `.`/`..`, holds a control byte, `\` or `;`;
//! - only the last segment may be empty;
//! - the route the matcher picks (default policy) matches segment for
//!   segment: literals equal the raw segment, every `{param}` captures
//!   exactly its raw, non-empty segment, and a route without `**` has as
//!   many segments as the path.
#![no_main]

use std::sync::OnceLock;

use costguard::authz::path;
use costguard::authz::policy::{self, Policy};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(policy::default_policy)
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    if path::check(path).is_err() {
        return;
    }
    let raw: Vec<&str> = path[1..].split('/').collect();
    let whole = common::percent_decode(path.as_bytes()).expect("checked paths decode");
    let decoded: Vec<&[u8]> = whole[1..].split(|b| *b == b'/').collect();
    assert_eq!(decoded.len(), raw.len(), "an encoded separator in {path:?}");
    for (i, (r, d)) in raw.iter().zip(&decoded).enumerate() {
        assert_eq!(
            common::percent_decode(r.as_bytes()).as_deref(),
            Some(*d),
            "{path:?}"
        );
        assert!(*d != b"." && *d != b"..", "dot segment in {path:?}");
        assert!(
            !d.iter()
                .any(|b| *b < 0x20 || *b == 0x7f || *b == b'\\' || *b == b';'),
            "{path:?} decodes to {d:?}"
        );
        assert!(!d.is_empty() || i + 1 == raw.len(), "empty segment in {path:?}");
    }

    let method = &common::METHODS[m as usize % common::METHODS.len()];
    let Some(found) = policy().enforce.find(method, path) else {
        return;
    };
    let segs: Vec<&str> = if path == "/" { vec![] } else { raw.clone() };
    let pattern: Vec<&str> = if &*found.route.pattern == "/" {
        vec![]
    } else {
        found.route.pattern[1..].split('/').collect()
    };
    let rest = pattern.last() == Some(&"**");
    let fixed = if rest { pattern.len() - 1 } else { pattern.len() };
    if rest {
        assert!(segs.len() >= fixed, "{path:?} vs {}", found.route.pattern);
    } else {
        assert_eq!(segs.len(), fixed, "{path:?} vs {}", found.route.pattern);
    }
    for (p, s) in pattern[..fixed].iter().zip(&segs) {
        match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => {
                assert_eq!(found.param(name), Some(*s), "{path:?}");
                assert!(!s.is_empty());
            }
            None => assert_eq!(p, s, "{path:?} vs {}", found.route.pattern),
        }
    }
});
