//! The route matcher: a trie over path segments, built once per policy
//! snapshot. Literal segments win over `{param}` segments, which win over a
//! trailing `**` (zero or more segments). Matching allocates nothing: the
//! path is split into a stack array and parameters are captured as slices.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use super::path::MAX_SEGMENTS;
use crate::audit::EventType;
use crate::roles::Permission;

/// Most `{param}` segments in one route.
pub const MAX_PARAMS: usize = 8;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication.
    Public,
    /// This permission.
    Permission(Permission),
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Methods it applies to; empty = any method.
    pub methods: Vec<Method>,
    /// The pattern as written (shared: a metrics label).
    pub pattern: Arc<str>,
    /// What it requires.
    pub access: Access,
    /// Whether requests on it incur cost (budgets, later).
    pub cost: bool,
    /// The business event its successful requests record besides the
    /// decision (`cost.exported`, …), once the upstream has answered.
    pub audit_event: Option<EventType>,
    /// Names of its `{param}` segments, in order.
    pub params: Vec<Box<str>>,
    /// Where it was defined, `file:line` (shared: permits carry it).
    pub origin: Arc<str>,
    /// The query parameter that names the route's project, for routes
    /// without a `{project}` segment: project-scoped grants count on it
    /// (`grants::query_project`). `None`: grants give nothing here.
    pub project_query: Option<Box<str>>,
}

/// A request matched to a route, with the captured parameters.
#[derive(Debug)]
pub struct Match<'r, 'p> {
    /// The route.
    pub route: &'r Route,
    values: [&'p str; MAX_PARAMS],
}

impl<'p> Match<'_, 'p> {
    /// The value of `{name}`, if the route has it.
    pub fn param(&self, name: &str) -> Option<&'p str> {
        self.route
            .params
            .iter()
            .position(|p| &**p == name)
            .map(|i| self.values[i])
    }
}

#[derive(Debug, Default)]
struct Endpoint {
    by_method: Vec<(Method, usize)>,
    any: Option<usize>,
}

impl Endpoint {
    fn get(&self, method: &Method) -> Option<usize> {
        let exact = |m: &Method| self.by_method.iter().find(|(x, _)| x == m).map(|(_, r)| *r);
        exact(method)
            .or_else(|| {
                (*method == Method::HEAD)
                    .then(|| exact(&Method::GET))
                    .flatten()
            })
            .or(self.any)
    }

    fn add(&mut self, methods: &[Method], route: usize) -> Result<(), usize> {
        if methods.is_empty() {
            // Never replace the slot of an earlier route: the refused
            // route's id is never pushed, and a third route of the same
            // shape would then be reported against that id (out of bounds).
            if let Some(existing) = self.any {
                return Err(existing);
            }
            self.any = Some(route);
            return Ok(());
        }
        for m in methods {
            if let Some((_, existing)) = self.by_method.iter().find(|(x, _)| x == m) {
                return Err(*existing);
            }
        }
        self.by_method
            .extend(methods.iter().map(|m| (m.clone(), route)));
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// `**` here: this node's path and everything below it.
    rest: Option<Endpoint>,
    end: Option<Endpoint>,
}

/// A set of routes, matched by method and path.
#[derive(Debug, Default)]
pub struct Matcher {
    root: Node,
    routes: Vec<Route>,
}

/// A pattern that cannot be a route.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Bad pattern syntax.
    #[error("{0}")]
    Syntax(String),
    /// The same method and path shape as another route.
    #[error("conflicts with the route at {0}")]
    Conflict(String),
}

impl Matcher {
    /// Adds a route; fails on bad syntax or when it would be ambiguous with
    /// an earlier route (same methods, same segments up to parameter names).
    pub fn add(&mut self, route: Route) -> Result<(), PatternError> {
        let pattern = route.pattern.clone();
        let Some(body) = pattern.strip_prefix('/') else {
            return Err(PatternError::Syntax(format!(
                "path {pattern:?} must start with /"
            )));
        };
        let segments: Vec<&str> = if body.is_empty() {
            vec![]
        } else {
            body.split('/').collect()
        };
        if segments.len() > MAX_SEGMENTS {
            return Err(PatternError::Syntax("too many segments".into()));
        }
        let id = self.routes.len();
        let mut node = &mut self.root;
        let mut params: Vec<Box<str>> = Vec::new();
        let mut rest = false;
        for (i, seg) in segments.iter().enumerate() {
            if *seg == "**" {
                if i + 1 != segments.len() {
                    return Err(PatternError::Syntax("** must be the last segment".into()));
                }
                rest = true;
                break;
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(PatternError::Syntax(format!("bad parameter {seg:?}")));
                }
                if params.iter().any(|p| &**p == name) {
                    return Err(PatternError::Syntax(format!(
                        "parameter {{{name}}} appears twice"
                    )));
                }
                params.push(name.into());
                if params.len() > MAX_PARAMS {
                    return Err(PatternError::Syntax(format!(
                        "more than {MAX_PARAMS} parameters"
                    )));
                }
                node = node.param.get_or_insert_with(Box::default);
                continue;
            }
            if seg.is_empty() && i + 1 != segments.len() {
                return Err(PatternError::Syntax("empty segment".into()));
            }
            if seg.contains(['{', '}', '*', '%', ';', '\\']) || *seg == "." || *seg == ".." {
                return Err(PatternError::Syntax(format!("bad segment {seg:?}")));
            }
            node = node.literals.entry((*seg).into()).or_default();
        }
        let endpoint = if rest { &mut node.rest } else { &mut node.end };
        if let Err(existing) = endpoint
            .get_or_insert_with(Endpoint::default)
            .add(&route.methods, id)
        {
            return Err(PatternError::Conflict(
                self.routes[existing].origin.to_string(),
            ));
        }
        let mut route = route;
        route.params = params;
        self.routes.push(route);
        Ok(())
    }

    /// Every route, in definition order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and a checked `path` (see `path::check`).
    pub fn find<'r, 'p>(&'r self, method: &Method, path: &'p str) -> Option<Match<'r, 'p>> {
        let mut segs: [&'p str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
        let mut n = 0;
        let body = path.strip_prefix('/')?;
        if !body.is_empty() {
            for s in body.split('/') {
                if n == MAX_SEGMENTS {
                    return None;
                }
                segs[n] = s;
                n += 1;
            }
        }
        let mut values: [&'p str; MAX_PARAMS] = [""; MAX_PARAMS];
        let id = Self::walk(&self.root, &segs[..n], method, &mut values, 0)?;
        Some(Match {
            route: &self.routes[id],
            values,
        })
    }

    fn walk<'p>(
        node: &Node,
        segs: &[&'p str],
        method: &Method,
        values: &mut [&'p str; MAX_PARAMS],
        depth: usize,
    ) -> Option<usize> {
        let Some((first, rest)) = segs.split_first() else {
            return node
                .end
                .as_ref()
                .and_then(|e| e.get(method))
                .or_else(|| node.rest.as_ref().and_then(|e| e.get(method)));
        };
        if let Some(child) = node.literals.get(*first)
            && let Some(id) = Self::walk(child, rest, method, values, depth)
        {
            return Some(id);
        }
        if let Some(child) = &node.param
            && !first.is_empty()
            && depth < MAX_PARAMS
        {
            values[depth] = first;
            if let Some(id) = Self::walk(child, rest, method, values, depth + 1) {
                return Some(id);
            }
        }
        node.rest.as_ref().and_then(|e| e.get(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(methods: &[&str], pattern: &str, p: Permission) -> Route {
        Route {
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            pattern: pattern.into(),
            access: Access::Permission(p),
            cost: false,
            audit_event: None,
            params: vec![],
            origin: format!("test:{pattern}").into(),
            project_query: None,
        }
    }

    fn matcher() -> Matcher {
        use Permission::*;
        let mut m = Matcher::default();
        m.add(route(&["GET"], "/v1/tenants/{tenant}/costs", ViewCosts))
            .unwrap();
        m.add(route(
            &["GET"],
            "/v1/tenants/{tenant}/costs/export",
            ExportCosts,
        ))
        .unwrap();
        m.add(route(
            &["GET"],
            "/v1/tenants/{tenant}/projects/{project}/costs",
            ViewCosts,
        ))
        .unwrap();
        m.add(route(
            &["PUT", "PATCH"],
            "/v1/tenants/{tenant}/budgets/{budget}",
            EditBudgets,
        ))
        .unwrap();
        m.add(route(
            &["DELETE"],
            "/v1/tenants/{tenant}/budgets/{budget}",
            DeleteBudgets,
        ))
        .unwrap();
        m.add(route(
            &["GET"],
            "/v1/tenants/{tenant}/analytics/**",
            ViewAnalytics,
        ))
        .unwrap();
        m.add(route(&["GET"], "/v1/tenants/special/costs", SystemAdmin))
            .unwrap();
        m
    }

    #[test]
    fn matches_literals_params_and_rest() {
        let m = matcher();
        let get = Method::GET;
        let hit = m.find(&get, "/v1/tenants/org-1/costs").unwrap();
        assert_eq!(hit.route.access, Access::Permission(Permission::ViewCosts));
        assert_eq!(hit.param("tenant"), Some("org-1"));
        let hit = m
            .find(&get, "/v1/tenants/org-1/projects/proj-2/costs")
            .unwrap();
        assert_eq!(
            (hit.param("tenant"), hit.param("project")),
            (Some("org-1"), Some("proj-2"))
        );
        assert_eq!(
            m.find(&get, "/v1/tenants/special/costs")
                .unwrap()
                .route
                .access,
            Access::Permission(Permission::SystemAdmin)
        );
        for p in [
            "/v1/tenants/org-1/analytics",
            "/v1/tenants/org-1/analytics/x",
            "/v1/tenants/org-1/analytics/x/y/",
        ] {
            assert_eq!(
                m.find(&get, p).unwrap().route.access,
                Access::Permission(Permission::ViewAnalytics),
                "{p}"
            );
        }
        assert_eq!(
            m.find(&Method::HEAD, "/v1/tenants/org-1/costs")
                .unwrap()
                .route
                .pattern,
            Arc::from("/v1/tenants/{tenant}/costs")
        );
        assert_eq!(
            m.find(&Method::PATCH, "/v1/tenants/o/budgets/b")
                .unwrap()
                .route
                .access,
            Access::Permission(Permission::EditBudgets)
        );
        assert_eq!(
            m.find(&Method::DELETE, "/v1/tenants/o/budgets/b")
                .unwrap()
                .route
                .access,
            Access::Permission(Permission::DeleteBudgets)
        );
        for miss in [
            "/v1/tenants/org-1/costs/",
            "/v1/tenants/org-1",
            "/v1/Tenants/org-1/costs",
            "/v1/tenants//costs",
            "/",
        ] {
            assert!(m.find(&get, miss).is_none(), "{miss}");
        }
        assert!(m.find(&Method::POST, "/v1/tenants/org-1/costs").is_none());
    }

    #[test]
    fn conflicts_and_bad_patterns_are_refused() {
        let mut m = matcher();
        let err = m
            .add(route(
                &["GET"],
                "/v1/tenants/{t}/costs",
                Permission::ViewCosts,
            ))
            .unwrap_err();
        assert!(
            matches!(err, PatternError::Conflict(o) if o.contains("/v1/tenants/{tenant}/costs"))
        );
        assert!(
            m.add(route(
                &["PATCH"],
                "/v1/tenants/{x}/budgets/{y}",
                Permission::ViewCosts
            ))
            .is_err()
        );
        assert!(
            m.add(route(
                &["POST"],
                "/v1/tenants/{x}/budgets/{y}",
                Permission::ViewCosts
            ))
            .is_ok()
        );
        for bad in [
            "v1/x",
            "/a/**/b",
            "/a/{}",
            "/a/{x}/{x}",
            "/a//b",
            "/a/%2F",
            "/a/../b",
            "/a/{x-y}",
        ] {
            assert!(
                matches!(
                    m.add(route(&["GET"], bad, Permission::ViewCosts)),
                    Err(PatternError::Syntax(_))
                ),
                "{bad}"
            );
        }
    }

    /// Found by the authorization oracle (tests/authz_oracle.rs): a second
    /// any-method route on a path took the first one's slot with an id that
    /// was never added, and a third then indexed past the routes (a panic
    /// in `policy::compile`, so in a policy reload or `policy check`).
    #[test]
    fn repeated_any_method_routes_are_conflicts_not_a_panic() {
        let mut m = Matcher::default();
        m.add(route(&[], "/a/{x}", Permission::ViewCosts)).unwrap();
        for again in ["/a/{y}", "/a/{z}", "/a/{w}"] {
            let err = m
                .add(route(&[], again, Permission::ExportCosts))
                .unwrap_err();
            assert_eq!(err, PatternError::Conflict("test:/a/{x}".into()), "{again}");
        }
        assert_eq!(m.routes().len(), 1);
        let found = m.find(&Method::GET, "/a/1").unwrap();
        assert_eq!(&*found.route.pattern, "/a/{x}");
        assert_eq!(found.param("x"), Some("1"));
    }
}
