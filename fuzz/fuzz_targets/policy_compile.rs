//! Policy compilation (`authz::policy::compile`).
//!
//! Properties, for a file that compiles (beside a fixed roles file):
//! - compiling is deterministic and never panics;
//! - a round trip (TOML → document → TOML, as a formatter or a config
//!   management tool rewrites it) compiles again, to the same decisions:
//!   the same roles with the same permissions, and for every route's
//!   pattern instantiated with sample segments, under every method, the
//!   same route (pattern, access, cost, project_query) in the enforce and
//!   the shadow matchers.
#![no_main]

use costguard::authz::policy::{self, Policy};
use http::Method;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const ROLES: &str = r#"
[roles.viewer]
permissions = ["view_costs", "view_budgets"]
[roles.admin]
permissions = ["*"]
includes = ["viewer"]
"#;

fn probes(p: &Policy) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    for r in p.enforce.routes().iter().chain(p.shadow.routes()) {
        for fill in ["x", "org-1", "a/b"] {
            let path: String = r
                .pattern
                .split('/')
                .skip(1)
                .map(|s| {
                    if s.starts_with('{') || s == "**" {
                        fill
                    } else {
                        s
                    }
                })
                .fold(String::new(), |acc, s| acc + "/" + s);
            out.push(if path.is_empty() { "/".into() } else { path });
        }
    }
    out
}

type Seen = Option<(String, String, bool, Option<String>)>;

fn decide(p: &Policy, shadow: bool, m: &Method, path: &str) -> Seen {
    let matcher = if shadow { &p.shadow } else { &p.enforce };
    matcher.find(m, path).map(|f| {
        (
            f.route.pattern.to_string(),
            format!("{:?}", f.route.access),
            f.route.cost,
            f.route.project_query.as_deref().map(str::to_string),
        )
    })
}

fn same_decisions(a: &Policy, b: &Policy, what: &str) {
    assert_eq!(a.role_names(), b.role_names(), "{what}");
    for r in a.role_names() {
        assert_eq!(a.role(r), b.role(r), "role {r}: {what}");
    }
    for path in probes(a).iter().chain(&probes(b)) {
        for m in &common::METHODS {
            for shadow in [false, true] {
                assert_eq!(
                    decide(a, shadow, m, path),
                    decide(b, shadow, m, path),
                    "{m} {path}: {what}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = vec![
        ("roles.toml".to_string(), ROLES.to_string()),
        ("fuzz.toml".to_string(), text.to_string()),
    ];
    let Ok(first) = policy::compile(&files) else {
        let _ = policy::compile(&files[1..]);
        return;
    };
    let again = policy::compile(&files).expect("compiles twice");
    same_decisions(&first, &again, text);
    let table: toml::Table = toml::from_str(text).expect("a compiled file is TOML");
    let rewritten = toml::to_string(&table).expect("serializes");
    let round = policy::compile(&[files[0].clone(), ("fuzz.toml".to_string(), rewritten.clone())])
        .unwrap_or_else(|e| panic!("round trip refused: {e}\n{text:?}\n→ {rewritten:?}"));
    same_decisions(&first, &round, &rewritten);
});
