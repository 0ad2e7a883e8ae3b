//! `costguard policy explain`: how a policy decides one request for a
//! caller with given roles, offline, with the reason.

use http::Method;

use super::matcher::Access;
use super::path;
use super::policy::Policy;
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
    let path = path.split('?').next().unwrap_or(path);
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
    if !caller.scopes.is_empty() {
        let scopes: Vec<Permission> = caller
            .scopes
            .iter()
            .filter_map(|s| Permission::parse(s))
            .collect();
        perms = perms.intersect(Permissions::of(&scopes));
        lines.push(format!(
            "scopes narrow to: {}",
            perms
                .iter()
                .map(Permission::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
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
        };
        assert!(
            !explain(&p, &caller, "GET", "/v1/tenants/org-1/costs/export").allowed,
            "scopes narrow"
        );
    }
}
