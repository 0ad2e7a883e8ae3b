//! The route table, in process: what each path allows (byte for byte the
//! `Allow` values the admin API has always sent), what no row has, and
//! the event types of every mutation. `dispatch`: calls through the
//! table against a real store.

use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::super::error::ApiError;
use super::super::router::{EventType, Events, METHOD_ORDER};
use super::{ROUTER, ROUTES};

mod dispatch;

/// Every path of the admin API, by an example, with the `Allow` it has
/// always answered a wrong method with.
const ALLOW: [(&str, &str); 16] = [
    ("tenants", "GET, POST"),
    ("tenants/org-1", "GET, PATCH, DELETE"),
    ("tenants/org-1/keys", "GET, POST"),
    ("tenants/org-1/keys/k-1", "DELETE"),
    ("tenants/org-1/keys/k-1/rotate", "POST"),
    ("tenants/org-1/projects", "GET, POST"),
    ("tenants/org-1/users", "GET"),
    ("tenants/org-1/users/u-1", "PUT, DELETE"),
    ("tenants/org-1/sessions", "GET"),
    ("tenants/org-1/sessions/s-1", "DELETE"),
    ("tenants/org-1/usage", "GET"),
    ("tenants/org-1/roles", "GET"),
    ("tenants/org-1/roles/r-1", "GET, PUT, DELETE"),
    ("audit", "GET"),
    ("audit/report", "GET"),
    ("compliance", "GET"),
];

fn split(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

/// A concrete path for a row's pattern (`{x}` → `x-1`).
fn example(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!("{name}-1"),
                None => s.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_path_allows_what_it_always_did() {
    let others = [
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    let mut rows = 0;
    for (path, allow) in ALLOW {
        let segments = split(path);
        for method in METHOD_ORDER.iter().chain(&others) {
            let found = ROUTER.find(method, &segments);
            if allow.split(", ").any(|m| m == method.as_str()) {
                let found = found.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
                assert_eq!(found.route().method, method, "{method} {path}");
                rows += 1;
            } else {
                match found {
                    Err(ApiError::MethodNotAllowed(got)) => {
                        assert_eq!(got, allow, "{method} {path}")
                    }
                    Err(e) => panic!("{method} {path}: {e:?}"),
                    Ok(_) => panic!("{method} {path}: found a route"),
                }
            }
        }
    }
    // Every row is one of those: the table has no path the list lacks.
    assert_eq!(rows, ROUTES.len());
}

#[test]
fn every_row_is_found_by_its_own_path() {
    for row in ROUTES {
        let path = example(row.path);
        let segments = split(&path);
        let found = ROUTER
            .find(&row.method, &segments)
            .unwrap_or_else(|e| panic!("{} {}: {e:?}", row.method, row.path));
        assert!(
            std::ptr::eq(found.route(), row),
            "{} {} finds another row",
            row.method,
            row.path
        );
        let tenant = found.tenant();
        if row.path.starts_with("tenants/") {
            assert_eq!(tenant, Some("tenant-1"), "{}", row.path);
        } else {
            assert_eq!(tenant, None, "{}", row.path);
        }
    }
}

#[test]
fn unknown_paths_are_no_route() {
    for path in [
        "nothing",
        "Tenants",
        "tenants/org-1/unknown",
        "tenants/org-1/keys/k-1/revoke",
        "tenants/org-1/keys/k-1/rotate/again",
        "tenants/org-1/users/u-1/roles",
        "tenants/org-1/usage/today",
        "audit/other",
        "audit/report/x",
        "compliance/x",
    ] {
        for method in &METHOD_ORDER {
            assert!(
                matches!(ROUTER.find(method, &split(path)), Err(ApiError::NoRoute)),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn a_known_path_with_another_method_names_its_methods() {
    for (method, path, allow) in [
        (Method::PUT, "tenants", "GET, POST"),
        (Method::POST, "tenants/org-1/usage", "GET"),
        (Method::HEAD, "audit", "GET"),
        (Method::GET, "tenants/org-1/keys/k-1", "DELETE"),
        (
            Method::PATCH,
            "tenants/org-1/roles/admin",
            "GET, PUT, DELETE",
        ),
        (Method::POST, "tenants/org-1/users/u-1", "PUT, DELETE"),
    ] {
        match ROUTER.find(&method, &split(path)) {
            Err(e @ ApiError::MethodNotAllowed(_)) => {
                let resp = crate::response::error(&e, &HeaderValue::from_static("rid"));
                assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
                assert_eq!(resp.headers()[header::ALLOW], allow, "{method} {path}");
            }
            other => panic!("{method} {path}: {:?}", other.err()),
        }
    }
}

#[test]
fn the_table_is_well_formed() {
    use super::super::router::Access;
    for (i, row) in ROUTES.iter().enumerate() {
        let what = format!("{} {}", row.method, row.path);
        assert!(
            METHOD_ORDER.contains(&row.method),
            "{what}: a method Allow cannot list"
        );
        assert!(
            ROUTES[..i]
                .iter()
                .all(|r| !(r.method == row.method && r.path == row.path)),
            "{what}: twice"
        );
        let segments: Vec<&str> = row.path.split('/').collect();
        assert!(
            segments.iter().all(|s| !s.is_empty()),
            "{what}: empty segment"
        );
        // A tenant's routes check the caller against the path's tenant.
        if let Access::Tenant(any_of) = row.access {
            assert_eq!(segments[..2], ["tenants", "{tenant}"], "{what}");
            assert!(!any_of.is_empty(), "{what}: nobody but system_admin");
        }
        // Only reads may leave the check to their handler.
        if matches!(row.access, Access::Handler) {
            assert_eq!(row.method, Method::GET, "{what}");
        }
        // Reads are not recorded; every mutation names its event types.
        assert_eq!(
            row.method == Method::GET,
            matches!(row.events, Events::None),
            "{what}"
        );
    }
    // No two paths can match one request (the first would hide the other).
    let params = |p: &str| -> Vec<Option<String>> {
        p.split('/')
            .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
            .collect()
    };
    for a in ROUTES {
        for b in ROUTES {
            let (pa, pb) = (params(a.path), params(b.path));
            let overlap = pa.len() == pb.len()
                && pa.iter().zip(&pb).all(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => x == y,
                    _ => true,
                });
            assert!(
                !overlap || pa == pb,
                "{} and {} both match one path",
                a.path,
                b.path
            );
            assert!(
                pa != pb || a.path == b.path,
                "{} and {}: one path, two spellings",
                a.path,
                b.path
            );
        }
    }
}

/// The event types of the mutation `method path`, answered `status`.
fn events_of(method: Method, path: &str, status: StatusCode, changes: Value) -> Vec<&'static str> {
    let segments = split(path);
    ROUTER
        .find(&method, &segments)
        .unwrap()
        .event_types(status, &changes)
        .into_iter()
        .map(EventType::as_str)
        .collect()
}

#[test]
fn mutations_are_recorded_under_their_event_types() {
    let ok = StatusCode::OK;
    let cases = [
        (Method::POST, "tenants", "tenant.created"),
        (Method::PATCH, "tenants/org-1", "tenant.updated"),
        (Method::DELETE, "tenants/org-1", "tenant.deleted"),
        (Method::POST, "tenants/org-1/keys", "apikey.created"),
        (Method::DELETE, "tenants/org-1/keys/k-1", "apikey.revoked"),
        (
            Method::POST,
            "tenants/org-1/keys/k-1/rotate",
            "apikey.rotated",
        ),
        (Method::POST, "tenants/org-1/projects", "project.created"),
        (Method::PUT, "tenants/org-1/users/u-1", "user.updated"),
        (Method::DELETE, "tenants/org-1/users/u-1", "user.deleted"),
        (Method::DELETE, "tenants/org-1/sessions/s-1", "auth.logout"),
        (Method::PUT, "tenants/org-1/roles/r-1", "role.defined"),
        (Method::DELETE, "tenants/org-1/roles/r-1", "role.deleted"),
    ];
    for (method, path, event) in &cases {
        assert_eq!(
            events_of(method.clone(), path, ok, json!({})),
            [*event],
            "{method} {path}"
        );
    }
    // Those are all the mutations.
    let mutations = ROUTES.iter().filter(|r| r.method != Method::GET).count();
    assert_eq!(mutations, cases.len());

    // A suspension is its own event.
    let patch = |changes| events_of(Method::PATCH, "tenants/org-1", ok, changes);
    assert_eq!(patch(json!({"status": "suspended"})), ["tenant.suspended"]);
    assert_eq!(patch(json!({"status": "active"})), ["tenant.updated"]);
    assert_eq!(patch(Value::Null), ["tenant.updated"]);
    // A user put: created or updated by its status, and a role assignment
    // when the body holds a roles array.
    let put = |status, changes| events_of(Method::PUT, "tenants/org-1/users/u-1", status, changes);
    assert_eq!(put(StatusCode::CREATED, json!({})), ["user.created"]);
    assert_eq!(
        put(StatusCode::CREATED, json!({"roles": ["viewer"]})),
        ["user.created", "role.assigned"]
    );
    assert_eq!(
        put(ok, json!({"roles": []})),
        ["user.updated", "role.assigned"]
    );
    assert_eq!(put(ok, json!({"roles": "viewer"})), ["user.updated"]);
    assert_eq!(
        put(StatusCode::BAD_REQUEST, json!({"roles": ["admin"]})),
        ["user.updated", "role.assigned"]
    );
    // A mutation whose row names nothing.
    assert_eq!(
        Events::None.of(ok, &json!({})),
        [crate::audit::EventType::AdminAction]
    );
    assert_eq!(
        crate::audit::EventType::AdminAction.as_str(),
        "admin.action"
    );
}
