//! `costguard policy explain`: how a policy decides one request for a
//! caller with given roles and project-scoped grants, offline, with the
//! reason (and, for each grant, why it applied or not).

use std::net::IpAddr;

use http::Method;

use super::matcher::Access;
use super::path;
use super::policy::Policy;
use crate::grants::{self, ProjectGrant};
use crate::model::Grant;
use crate::roles::{Permission, Permissions};

/// A caller to explain a decision for.
#[derive(Debug, Default)]
pub struct Caller<'a> {
    /// Role names (policy roles; tenant roles are not known offline).
    pub roles: &'a [String],
    /// Scopes narrowing the roles; empty = none.
    pub scopes: &'a [String],
    /// The caller's tenant, to check a `{tenant}` segment.
    pub tenant: Option<&'a str>,
    /// Roles on some projects only (policy roles, as for `roles`).
    pub grants: &'a [Grant],
    /// The client address, for grants with a `networks` condition
    /// (`None`: such a grant does not apply, as at request time without
    /// an address). `hours_utc` is evaluated at the current time.
    pub client: Option<IpAddr>,
}

fn names(perms: Permissions) -> String {
    perms
        .iter()
        .map(Permission::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outcome, and the lines that explain it.
#[derive(Debug)]
pub struct Explanation {
    /// Whether the request would be forwarded.
    pub allowed: bool,
    /// Human-readable lines.
    pub lines: Vec<String>,
}

/// Explains the decision for `method` + `path` (the path may carry a query).
pub fn explain(policy: &Policy, caller: &Caller<'_>, method: &str, path: &str) -> Explanation {
    let mut lines = Vec::new();
    let deny = |mut lines: Vec<String>, why: String| {
        lines.push(format!("decision: DENY ({why})"));
        Explanation {
            allowed: false,
            lines,
        }
    };
    let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
        return deny(lines, format!("{method:?} is not an HTTP method"));
    };
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    if let Err(e) = path::check(path) {
        return deny(lines, format!("400 bad_request: {e}"));
    }
    let shadow = policy
        .shadow
        .find(&method, path)
        .map(|m| m.route.origin.clone());
    let Some(m) = policy.enforce.find(&method, path) else {
        if let Some(origin) = shadow {
            lines.push(format!("shadow route: {origin} (logged, not enforced)"));
        }
        return deny(
            lines,
            "403 forbidden: no route matches; everything unlisted is denied".into(),
        );
    };
    lines.push(format!(
        "route: {} {} {}",
        m.route.origin,
        if m.route.methods.is_empty() {
            "*".to_string()
        } else {
            m.route
                .methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        },
        m.route.pattern
    ));
    if let Some(name) = &m.route.project_query {
        lines.push(format!(
            "project: from the query parameter {name} (for project-scoped grants)"
        ));
    }
    if let Some(origin) = shadow {
        lines.push(format!("shadow route: {origin} (logged, not enforced)"));
    }
    let needed = match m.route.access {
        Access::Public => {
            lines.push("needs: nothing (public route, no authentication)".into());
            lines.push("decision: ALLOW".into());
            return Explanation {
                allowed: true,
                lines,
            };
        }
        Access::Permission(p) => p,
    };
    lines.push(format!("needs: {needed}"));
    lines.push(match m.route.audit_event {
        Some(event) => format!(
            "records: request.allowed before forwarding, then {event} once the upstream answers 1xx-3xx (request.failed otherwise)"
        ),
        None => "records: request.allowed before forwarding".into(),
    });
    let mut perms = Permissions::NONE;
    for role in caller.roles {
        match policy.role(role) {
            Some(p) => {
                let names: Vec<&str> = p.iter().map(Permission::as_str).collect();
                lines.push(format!("role {role}: {}", names.join(", ")));
                perms = perms.union(p);
            }
            None => lines.push(format!(
                "role {role}: not a policy role (a tenant's own role is only known at request time)"
            )),
        }
    }
    let held = perms;
    let scopes = (!caller.scopes.is_empty()).then(|| {
        let scopes: Vec<Permission> = caller
            .scopes
            .iter()
            .filter_map(|s| Permission::parse(s))
            .collect();
        Permissions::of(&scopes)
    });
    let narrow = |p: Permissions| scopes.map_or(p, |s| p.intersect(s));
    if scopes.is_some() {
        perms = narrow(held);
        lines.push(format!("scopes narrow to: {}", names(perms)));
    }
    let crosses = perms.contains(Permission::SystemAdmin);
    if let (Some(in_path), Some(own)) = (m.param("tenant"), caller.tenant)
        && in_path != own
        && !crosses
    {
        return deny(
            lines,
            format!("403 tenant_mismatch: the path names {in_path}, the caller is in {own}"),
        );
    }
    if m.param("tenant").is_some() && caller.tenant.is_none() && !crosses {
        lines.push("note: give --tenant to check the {tenant} segment".into());
    }
    if let Some(project) = m.param("project") {
        lines.push(format!("note: project {project} must belong to the tenant (checked in the store at request time)"));
    }
    if !caller.grants.is_empty() {
        let granted = explain_grants(policy, caller, &m, query, &mut lines);
        if granted != Permissions::NONE {
            perms = narrow(held.union(granted));
            if scopes.is_some() {
                lines.push(format!("with grants, scopes narrow to: {}", names(perms)));
            }
        }
    }
    if !perms.contains(needed) {
        return deny(
            lines,
            format!("403 forbidden: the roles do not grant {needed}"),
        );
    }
    lines.push("decision: ALLOW".into());
    Explanation {
        allowed: true,
        lines,
    }
}

/// The permissions the caller's grants add on the project the route
/// names, with a line per grant saying whether it applied and why.
fn explain_grants(
    policy: &Policy,
    caller: &Caller<'_>,
    m: &super::matcher::Match<'_, '_>,
    query: Option<&str>,
    lines: &mut Vec<String>,
) -> Permissions {
    let project = match (m.param("project"), &m.route.project_query) {
        (Some(p), _) => Ok(p),
        (None, Some(name)) => grants::query_project(query, name).map_err(|e| e.to_string()),
        (None, None) => {
            Err("the route names no project ({project} segment or project_query)".into())
        }
    };
    let project = match project {
        Ok(p) => p,
        Err(why) => {
            lines.push(format!("grants: none applies: {why}"));
            return Permissions::NONE;
        }
    };
    if let (Some(in_path), Some(own)) = (m.param("tenant"), caller.tenant)
        && in_path != own
    {
        lines.push("grants: none applies: they count only in the caller's own tenant".into());
        return Permissions::NONE;
    }
    let mut granted = Permissions::NONE;
    for g in caller.grants {
        let label = format!("grant {} on {}", g.role, g.projects.join(","));
        match ProjectGrant::compile(g).applies(project, caller.client, time::OffsetDateTime::now_utc) {
            Err(why) => lines.push(format!("{label}: does not apply: {why}")),
            Ok(()) => match policy.role(&g.role) {
                Some(p) => {
                    lines.push(format!("{label}: applies on {project}: {}", names(p)));
                    granted = granted.union(p);
                }
                None => lines.push(format!(
                    "{label}: applies on {project}, but {} is not a policy role (a tenant's own role is only known at request time)",
                    g.role
                )),
            },
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::policy::default_policy;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn explains_allow_and_deny_with_reasons() {
        let p = default_policy();
        let viewer = roles(&["viewer"]);
        let caller = Caller {
            roles: &viewer,
            scopes: &[],
            tenant: Some("org-1"),
            ..Caller::default()
        };
        let e = explain(&p, &caller, "GET", "/v1/tenants/org-1/costs");
        assert!(e.allowed, "{:?}", e.lines);
        assert!(
            e.lines[0].starts_with("route: routes.toml:"),
            "{:?}",
            e.lines
        );
        assert!(
            e.lines.iter().any(|l| l.contains("then cost.viewed once")),
            "{:?}",
            e.lines
        );
        let e = explain(&p, &caller, "GET", "/v1/tenants/org-1/costs/export");
        assert!(
            e.lines
                .iter()
                .any(|l| l.contains("then cost.exported once"))
        );
        assert!(!e.allowed);
        assert!(
            e.lines
                .last()
                .unwrap()
                .contains("do not grant export_costs")
        );
        let e = explain(&p, &caller, "GET", "/v1/tenants/org-2/costs");
        assert!(e.lines.last().unwrap().contains("tenant_mismatch"));
        let e = explain(&p, &caller, "GET", "/v1/tenants/org-1/../costs");
        assert!(e.lines.last().unwrap().contains("400"));
        let e = explain(&p, &caller, "GET", "/v1/unknown");
        assert!(e.lines.last().unwrap().contains("no route"));
        let analyst = roles(&["analyst"]);
        let scopes = roles(&["view_costs"]);
        let caller = Caller {
            roles: &analyst,
            scopes: &scopes,
            tenant: Some("org-1"),
            ..Caller::default()
        };
        assert!(
            !explain(&p, &caller, "GET", "/v1/tenants/org-1/costs/export").allowed,
            "scopes narrow"
        );
    }

    #[test]
    fn explains_which_grant_applied_and_why_the_others_did_not() {
        use crate::authz::policy::compile;
        use crate::model::{Grant, GrantConditions};
        let mut files: Vec<(String, String)> = crate::authz::policy::DEFAULT_FILES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        files.push((
            "zz.toml".into(),
            "[[routes]]\nmethod = \"GET\"\npath = \"/v1/tenants/{tenant}/exports\"\npermission = \"export_costs\"\nproject_query = \"project_id\"\n".into(),
        ));
        let p = compile(&files).unwrap();
        let viewer = roles(&["viewer"]);
        let grants = [
            Grant {
                role: "analyst".into(),
                projects: vec!["proj-1".into()],
                conditions: None,
            },
            Grant {
                role: "admin".into(),
                projects: vec!["proj-2".into()],
                conditions: Some(GrantConditions {
                    networks: vec!["10.0.0.0/8".into()],
                    hours_utc: None,
                }),
            },
        ];
        let caller = Caller {
            roles: &viewer,
            tenant: Some("org-1"),
            grants: &grants,
            ..Caller::default()
        };
        let e = explain(
            &p,
            &caller,
            "GET",
            "/v1/tenants/org-1/projects/proj-1/costs",
        );
        assert!(e.allowed, "{:?}", e.lines);
        let e = explain(
            &p,
            &caller,
            "GET",
            "/v1/tenants/org-1/exports?project_id=proj-1",
        );
        assert!(e.allowed, "{:?}", e.lines);
        assert!(
            e.lines
                .iter()
                .any(|l| l
                    == "project: from the query parameter project_id (for project-scoped grants)"),
            "{:?}",
            e.lines
        );
        assert!(
            e.lines
                .iter()
                .any(|l| l.starts_with("grant analyst on proj-1: applies on proj-1: ")),
            "{:?}",
            e.lines
        );
        assert!(
            e.lines.iter().any(|l| l
                == "grant admin on proj-2: does not apply: the project is not one of the grant's"),
            "{:?}",
            e.lines
        );
        // The conditioned grant, without a client address: denied.
        let e = explain(
            &p,
            &caller,
            "GET",
            "/v1/tenants/org-1/exports?project_id=proj-2",
        );
        assert!(!e.allowed, "{:?}", e.lines);
        assert!(
            e.lines
                .iter()
                .any(|l| l.contains("grant admin on proj-2: does not apply: no client address")),
            "{:?}",
            e.lines
        );
        let inside = Caller {
            client: Some("10.1.1.1".parse().unwrap()),
            ..caller
        };
        assert!(
            explain(
                &p,
                &inside,
                "GET",
                "/v1/tenants/org-1/exports?project_id=proj-2"
            )
            .allowed
        );
        // Twice in the query, or a tenant-wide route: no grant counts.
        let e = explain(
            &p,
            &inside,
            "GET",
            "/v1/tenants/org-1/exports?project_id=proj-1&project_id=proj-2",
        );
        assert!(!e.allowed);
        assert!(
            e.lines.iter().any(|l| l
                .starts_with("grants: none applies: the query names the project more than once")),
            "{:?}",
            e.lines
        );
        let e = explain(&p, &inside, "GET", "/v1/tenants/org-1/costs/export");
        assert!(!e.allowed);
        assert!(
            e.lines
                .iter()
                .any(|l| l.starts_with("grants: none applies: the route names no project"))
        );
    }
}
