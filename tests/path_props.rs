//! Property tests of the path canonicaliser and the route matcher.
//!
//! - Whatever `path::check` accepts reads the same after percent-decoding:
//!   the same segments, no dot segments, no separator inside a segment.
//! - The trie matcher agrees with a naive reference matcher (every route
//!   tried, most specific wins: literal over parameter over `**`, segment
//!   by segment) on random route sets and paths.

use costguard::authz::matcher::{Access, Matcher, Route};
use costguard::authz::path;
use costguard::roles::Permission;
use http::Method;
use proptest::prelude::*;

fn decode(seg: &str) -> Vec<u8> {
    let b = seg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn path_strategy() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("a".to_string()),
        Just("v1".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2F".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%2E".to_string()),
        Just("%2e".to_string()),
        Just("%41".to_string()),
        Just("%25".to_string()),
        Just("%20".to_string()),
        Just("%C3%A9".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just(";".to_string()),
        Just("\\".to_string()),
        Just("/".to_string()),
        Just("".to_string()),
        "[a-z0-9._~-]{1,4}",
    ];
    prop::collection::vec(atom, 0..8).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, .. ProptestConfig::default() })]

    #[test]
    fn accepted_paths_have_one_reading(p in path_strategy()) {
        if path::check(&p).is_ok() {
            let raw: Vec<&str> = p[1..].split('/').collect();
            for (i, seg) in raw.iter().enumerate() {
                prop_assert!(*seg != "." && *seg != "..", "{p}");
                prop_assert!(!seg.is_empty() || i + 1 == raw.len(), "{p}");
                let decoded = decode(seg);
                prop_assert!(!decoded.contains(&b'/') && !decoded.contains(&b'\\'), "{p}");
                prop_assert!(!decoded.contains(&0) && !decoded.contains(&b';'), "{p}");
                prop_assert!(decoded != b"." && decoded != b"..", "{p}");
                // Decoding changes only what is not a plain word character.
                let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~');
                let encoded_plain = seg.contains('%') && seg.split('%').skip(1).any(|rest| {
                    rest.len() >= 2 && u8::from_str_radix(&rest[..2], 16).map(|b| plain(&b)).unwrap_or(false)
                });
                prop_assert!(!encoded_plain, "{p}");
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(&'static str),
    Param,
    Rest,
}

fn pattern_strategy() -> impl Strategy<Value = Vec<Seg>> {
    let seg = prop_oneof![
        3 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(Seg::Lit),
        2 => Just(Seg::Param),
    ];
    (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(mut segs, rest)| {
        if rest {
            segs.push(Seg::Rest);
        }
        segs
    })
}

fn render(segs: &[Seg]) -> String {
    let mut n = 0;
    let parts: Vec<String> = segs
        .iter()
        .map(|s| match s {
            Seg::Lit(l) => l.to_string(),
            Seg::Param => {
                n += 1;
                format!("{{p{n}}}")
            }
            Seg::Rest => "**".into(),
        })
        .collect();
    format!("/{}", parts.join("/"))
}

/// Matches `segs` against a path; `Some(rank)` orders candidates the way
/// the trie prefers them (literal < param < rest at the first difference).
fn naive(segs: &[Seg], path: &[&str]) -> Option<Vec<u8>> {
    let mut rank = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        match s {
            Seg::Rest => {
                rank.push(2);
                return Some(rank);
            }
            _ if i >= path.len() => return None,
            Seg::Lit(l) if *l == path[i] => rank.push(0),
            Seg::Lit(_) => return None,
            Seg::Param if !path[i].is_empty() => rank.push(1),
            Seg::Param => return None,
        }
    }
    (segs.len() == path.len()).then_some(rank)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn trie_agrees_with_the_naive_matcher(
        patterns in prop::collection::vec(pattern_strategy(), 1..12),
        path in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("x")], 0..5),
    ) {
        let mut m = Matcher::default();
        let mut kept: Vec<Vec<Seg>> = Vec::new();
        for segs in patterns {
            let route = Route {
                methods: vec![Method::GET],
                pattern: render(&segs).into(),
                access: Access::Permission(Permission::ViewCosts),
                cost: false,
                audit_event: None,
                params: vec![],
                origin: format!("r{}", kept.len()).into(),
                project_query: None,
            };
            if m.add(route).is_ok() {
                kept.push(segs);
            }
        }
        let text = format!("/{}", path.join("/"));
        let expected = kept
            .iter()
            .enumerate()
            .filter_map(|(i, segs)| naive(segs, &path).map(|rank| (rank, i)))
            .min();
        let got = m.find(&Method::GET, &text).map(|hit| hit.route.origin.to_string());
        prop_assert_eq!(got, expected.map(|(_, i)| format!("r{i}")), "path {}", text);
    }
}
