//! One authorization decision without I/O: path check, route match and
//! permission check, on the shipped policy and on a policy of 1,000 routes.
//!
//! `cargo bench --bench policy_eval`
#![allow(missing_docs)]

use costguard::authz::matcher::Access;
use costguard::authz::path;
use costguard::authz::policy::{self, Policy};
use costguard::roles::Permissions;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;

/// Match + permission check, as the pipeline does it (store lookups aside).
fn decide(policy: &Policy, perms: Permissions, method: &Method, p: &str, tenant: &str) -> bool {
    if path::check(p).is_err() {
        return false;
    }
    let Some(m) = policy.enforce.find(method, p) else {
        return false;
    };
    if m.param("tenant").is_some_and(|t| t != tenant) {
        return false;
    }
    match m.route.access {
        Access::Public => true,
        Access::Permission(needed) => perms.contains(needed),
    }
}

fn thousand_routes() -> Policy {
    let mut routes = String::new();
    for i in 0..1000 {
        routes.push_str(&format!(
            "[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{{tenant}}/service{}/resource{}/{{id}}\"\npermission = \"view_costs\"\n",
            i % 50,
            i
        ));
    }
    let files = vec![
        (
            "roles.toml".to_string(),
            policy::DEFAULT_FILES[0].1.to_string(),
        ),
        ("routes.toml".to_string(), routes),
    ];
    policy::compile(&files).unwrap()
}

fn bench(c: &mut Criterion) {
    let shipped = policy::default_policy();
    let viewer = shipped.role("viewer").unwrap();
    let big = thousand_routes();
    let mut g = c.benchmark_group("policy_decision");
    g.bench_function("default_policy_allow", |b| {
        b.iter(|| {
            decide(
                &shipped,
                viewer,
                &Method::GET,
                "/v1/tenants/org-1a2b3c4d/costs",
                "org-1a2b3c4d",
            )
        })
    });
    g.bench_function("default_policy_deny_permission", |b| {
        b.iter(|| {
            decide(
                &shipped,
                viewer,
                &Method::DELETE,
                "/v1/tenants/org-1a2b3c4d/budgets/b-17",
                "org-1a2b3c4d",
            )
        })
    });
    g.bench_function("default_policy_analytics_rest", |b| {
        b.iter(|| {
            decide(
                &shipped,
                viewer,
                &Method::GET,
                "/v1/tenants/org-1a2b3c4d/analytics/trends/daily/2026-11",
                "org-1a2b3c4d",
            )
        })
    });
    g.bench_function("1000_routes_allow", |b| {
        b.iter(|| {
            decide(
                &big,
                viewer,
                &Method::GET,
                "/v1/tenants/org-1a2b3c4d/service49/resource999/item-7",
                "org-1a2b3c4d",
            )
        })
    });
    g.bench_function("1000_routes_no_match", |b| {
        b.iter(|| {
            decide(
                &big,
                viewer,
                &Method::GET,
                "/v1/tenants/org-1a2b3c4d/service49/resource998x/item-7",
                "org-1a2b3c4d",
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
