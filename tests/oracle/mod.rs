//! A second, deliberately naive authorization decision, written from the
//! contract (design.md "Policy files", README "Policies" and "Project-scoped
//! grants") and not from `src/authz*`, and the harness that holds the real
//! engine to it.
//!
//! Shared by `tests/authz_oracle.rs` (bytes from a seeded PRNG, tens of
//! thousands of cases) and the `authz_oracle` fuzz target (bytes from
//! libFuzzer): every random choice is read from a byte string, so a fuzzer
//! finding is a reproducible input.
//!
//! What the oracle models, per case:
//! - a random policy as TOML text (roles with permissions, `*` and
//!   `includes` — diamonds included —, routes with literal, `{param}`,
//!   `{tenant}`, `{project}` and trailing `**` segments, method lists and
//!   `*`, `project_query`, public routes, a shadow file);
//! - route match: the most specific route, compared segment by segment
//!   (literal before `{param}` before `**`, a route ending here before a
//!   `**` that matches nothing), then the method (exact, then `HEAD` served
//!   by a `GET` route, then `*`); `{param}` never matches an empty segment;
//! - permissions: the union of the caller's roles (policy role, else the
//!   caller's tenant's custom role; unknown names give nothing), narrowed
//!   by the scopes;
//! - tenant check (`{tenant}` must be the caller's unless it holds
//!   `system_admin`), project check (`{project}` must be a project of the
//!   route's tenant);
//! - project-scoped grants: only in the caller's own tenant, on the
//!   route's `{project}` or its `project_query` parameter (exactly one
//!   spelling of it, holding a plain `proj-` id), while every condition
//!   holds (networks, UTC hours; unreadable or unevaluable: denied), and
//!   narrowed by the scopes.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use costguard::authz::matcher::Access;
use costguard::authz::policy::{self, Policy};
use costguard::authz::reload::{PolicyHandle, Source};
use costguard::authz::{Attributes, Authz, AuthzOutcome, Denied};
use costguard::model::{self, CustomRole, Grant, GrantConditions, HoursUtc, Project};
use costguard::principal::{AuthMethod, IdentityHeaders, Principal};
use costguard::roles::{Permission, Permissions};
use costguard::store::Store;
use costguard::store::sled::SledStore;
use http::Method;

/// A byte string read as a stream of choices (zeros once exhausted).
pub struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        self.byte() as usize % n
    }
    fn chance(&mut self, in_256: u8) -> bool {
        self.byte() < in_256
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn perms(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()]) & 0x1fff
    }
}

pub const TENANT_A: &str = "org-aaaa0001";
pub const TENANT_B: &str = "org-bbbb0002";
const OTHER_TENANT: &str = "org-zzzz9999";
pub const PROJECT_A: &str = "proj-aaaa00a1";
pub const PROJECT_A2: &str = "proj-aaaa00a2";
pub const PROJECT_B: &str = "proj-bbbb00b1";
const NO_PROJECT: &str = "proj-nope0000";

/// The store's fixed contents: projects per tenant, custom roles per tenant.
fn projects_of(tenant: &str) -> &'static [&'static str] {
    match tenant {
        TENANT_A => &[PROJECT_A, PROJECT_A2],
        TENANT_B => &[PROJECT_B],
        _ => &[],
    }
}

/// Custom roles (tenant, name, permission names). `viewer` in tenant B
/// shadows nothing: a policy role of the same name wins.
const CUSTOM_ROLES: [(&str, &str, &[&str]); 4] = [
    (TENANT_A, "custom_a", &["export_costs", "view_costs"]),
    (TENANT_A, "custom_b", &["create_reports"]),
    (TENANT_B, "custom_b", &["export_costs", "view_audit_logs"]),
    (TENANT_B, "viewer", &["system_admin"]),
];

const ROLE_POOL: [&str; 7] = [
    "viewer", "analyst", "ops", "root", "custom_a", "custom_b", "ghost",
];
/// Roles a random policy may define (a subset, in this order).
const POLICY_ROLES: [&str; 5] = ["viewer", "analyst", "ops", "root", "custom_a"];

fn perm_names(bits: u16) -> Vec<&'static str> {
    Permission::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, p)| p.as_str())
        .collect()
}

fn bits_of(names: &[&str]) -> u16 {
    let mut bits = 0;
    for n in names {
        if *n == "*" {
            return 0x1fff;
        }
        if let Some(i) = Permission::ALL.iter().position(|p| p.as_str() == *n) {
            bits |= 1 << i;
        }
    }
    bits
}

fn perm_bit(p: Permission) -> u16 {
    1 << Permission::ALL.iter().position(|x| *x == p).unwrap()
}

const SYSTEM_ADMIN: u16 = 1 << 12;

// ---------------------------------------------------------------- policy

#[derive(Debug, Clone)]
struct RoleDef {
    name: &'static str,
    perms: u16,
    star: bool,
    includes: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(&'static str),
    Param(&'static str),
    Rest,
}

#[derive(Debug, Clone)]
struct RouteDef {
    /// Empty: any method (`*`).
    methods: Vec<&'static str>,
    segs: Vec<Seg>,
    /// `None`: public.
    permission: Option<Permission>,
    project_query: Option<&'static str>,
}

impl RouteDef {
    fn pattern(&self) -> String {
        let mut s = String::new();
        for seg in &self.segs {
            s.push('/');
            match seg {
                Seg::Lit(l) => s.push_str(l),
                Seg::Param(p) => {
                    s.push('{');
                    s.push_str(p);
                    s.push('}');
                }
                Seg::Rest => s.push_str("**"),
            }
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct PolicyCase {
    roles: Vec<RoleDef>,
    routes: Vec<RouteDef>,
    shadow: Vec<RouteDef>,
    pub files: Vec<(String, String)>,
}

const LITERALS: [&str; 8] = [
    "v1", "tenants", "projects", "costs", "export", "x", "", "budgets",
];
const PARAMS: [&str; 4] = ["tenant", "project", "id", "budget"];
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];
const QUERY_NAMES: [&str; 2] = ["project_id", "p.id"];

fn gen_route(src: &mut Src<'_>, public: bool) -> RouteDef {
    let methods = match src.below(4) {
        0 => vec![],
        1 => vec![src.pick(&METHODS), src.pick(&METHODS)],
        _ => vec![src.pick(&METHODS)],
    };
    let mut methods_dedup = Vec::new();
    for m in methods {
        if !methods_dedup.contains(&m) {
            methods_dedup.push(m);
        }
    }
    let n = src.below(6);
    let mut segs = Vec::new();
    for i in 0..n {
        let seg = match src.below(10) {
            0..=4 => Seg::Lit(src.pick(&LITERALS)),
            5..=8 => Seg::Param(src.pick(&PARAMS)),
            _ => Seg::Rest,
        };
        // An empty literal only last (a trailing slash), `**` only last;
        // a parameter name once.
        let last = i + 1 == n;
        match &seg {
            Seg::Lit("") if !last || segs.is_empty() => continue,
            Seg::Rest if !last => continue,
            Seg::Param(p) if segs.contains(&Seg::Param(p)) => continue,
            _ => {}
        }
        segs.push(seg);
    }
    let permission = (!public).then(|| Permission::ALL[src.below(13)]);
    let has_project = segs.contains(&Seg::Param("project"));
    let project_query = (!public && !has_project && src.chance(90)).then(|| src.pick(&QUERY_NAMES));
    RouteDef {
        methods: methods_dedup,
        segs,
        permission,
        project_query,
    }
}

fn route_toml(out: &mut String, r: &RouteDef) {
    if r.permission.is_some() {
        out.push_str("[[routes]]\n");
    } else {
        out.push_str("[[public]]\n");
    }
    match r.methods.as_slice() {
        [] => out.push_str("method = \"*\"\n"),
        [one] => out.push_str(&format!("method = \"{one}\"\n")),
        many => out.push_str(&format!("method = {many:?}\n")),
    }
    out.push_str(&format!("path = \"{}\"\n", r.pattern()));
    if let Some(p) = r.permission {
        out.push_str(&format!("permission = \"{}\"\n", p.as_str()));
    }
    if let Some(q) = r.project_query {
        out.push_str(&format!("project_query = \"{q}\"\n"));
    }
    out.push('\n');
}

pub fn gen_policy(src: &mut Src<'_>) -> PolicyCase {
    let mut roles = Vec::new();
    for name in POLICY_ROLES {
        if roles.is_empty() || src.chance(160) {
            let earlier: Vec<&'static str> = roles.iter().map(|r: &RoleDef| r.name).collect();
            let mut includes = Vec::new();
            // Includes only of earlier roles: never a cycle, sometimes a
            // diamond (two paths to the same role).
            for e in &earlier {
                if src.chance(70) {
                    includes.push(*e);
                }
            }
            roles.push(RoleDef {
                name,
                perms: src.perms() & if src.chance(128) { 0x0fff } else { 0x1fff },
                star: src.chance(12),
                includes,
            });
        }
    }
    let mut routes = Vec::new();
    for _ in 0..1 + src.below(7) {
        routes.push(gen_route(src, false));
    }
    for _ in 0..src.below(3) {
        routes.push(gen_route(src, true));
    }
    let mut shadow = Vec::new();
    for _ in 0..src.below(3) {
        shadow.push(gen_route(src, false));
    }

    let mut roles_toml = String::new();
    for r in &roles {
        roles_toml.push_str(&format!("[roles.{}]\n", r.name));
        let mut names = perm_names(r.perms);
        if r.star {
            names.push("*");
        }
        roles_toml.push_str(&format!("permissions = {names:?}\n"));
        if !r.includes.is_empty() {
            roles_toml.push_str(&format!("includes = {:?}\n", r.includes));
        }
        roles_toml.push('\n');
    }
    let mut routes_toml = String::new();
    for r in &routes {
        route_toml(&mut routes_toml, r);
    }
    let mut files = vec![
        ("roles.toml".to_string(), roles_toml),
        ("routes.toml".to_string(), routes_toml),
    ];
    if !shadow.is_empty() {
        let mut s = String::from("mode = \"shadow\"\n\n");
        for r in &shadow {
            route_toml(&mut s, r);
        }
        files.push(("shadow.toml".to_string(), s));
    }
    PolicyCase {
        roles,
        routes,
        shadow,
        files,
    }
}

impl PolicyCase {
    /// A role's permissions by the contract: its own, plus everything its
    /// includes (transitively) grant; `*` is every permission.
    fn role_bits(&self, name: &str) -> Option<u16> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name];
        let mut bits = 0;
        let mut found = false;
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            let Some(r) = self.roles.iter().find(|r| r.name == n) else {
                continue;
            };
            found = true;
            bits |= if r.star { 0x1fff } else { r.perms };
            todo.extend(r.includes.iter().copied());
        }
        found.then_some(bits)
    }

    /// Whether two routes of a file can never be told apart (same methods
    /// overlap on the same segment shape): the policy must be refused.
    fn conflicting(routes: &[RouteDef]) -> bool {
        let shape = |r: &RouteDef| -> Vec<u8> {
            r.segs
                .iter()
                .map(|s| match s {
                    Seg::Lit(_) => 0,
                    Seg::Param(_) => 1,
                    Seg::Rest => 2,
                })
                .collect()
        };
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[..i] {
                let same_shape = shape(a) == shape(b)
                    && a.segs.iter().zip(&b.segs).all(|(x, y)| match (x, y) {
                        (Seg::Lit(x), Seg::Lit(y)) => x == y,
                        _ => true,
                    });
                let methods_overlap = (a.methods.is_empty() && b.methods.is_empty())
                    || a.methods.iter().any(|m| b.methods.contains(m));
                if same_shape && methods_overlap {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the contract says this policy compiles.
    pub fn should_compile(&self) -> bool {
        !Self::conflicting(&self.routes) && !Self::conflicting(&self.shadow)
    }
}

// ---------------------------------------------------------------- match

/// How specific a route is for one path: per segment literal (0) before
/// parameter (1) before `**` (2 then stop), and a route ending exactly at
/// the path's end before one whose `**` matches nothing there.
fn specificity(r: &RouteDef, path: &[&str]) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    let mut i = 0;
    for seg in &r.segs {
        match seg {
            Seg::Rest => {
                key.push(2);
                return Some(key);
            }
            Seg::Lit(l) => {
                if path.get(i) != Some(l) {
                    return None;
                }
                key.push(0);
            }
            Seg::Param(_) => {
                if path.get(i).is_none_or(|s| s.is_empty()) {
                    return None;
                }
                key.push(1);
            }
        }
        i += 1;
    }
    if i != path.len() {
        return None;
    }
    // "ends here" sorts before a `**` at this position.
    key.push(1);
    Some(key)
}

/// Method preference: 0 exact, 1 HEAD served by GET, 2 any; `None`: no.
fn method_rank(r: &RouteDef, method: &str) -> Option<u8> {
    if r.methods.contains(&method) {
        Some(0)
    } else if method == "HEAD" && r.methods.contains(&"GET") {
        Some(1)
    } else if r.methods.is_empty() {
        Some(2)
    } else {
        None
    }
}

fn oracle_match<'r>(routes: &'r [RouteDef], method: &str, path: &str) -> Option<&'r RouteDef> {
    let body = &path[1..];
    let segs: Vec<&str> = if body.is_empty() {
        vec![]
    } else {
        body.split('/').collect()
    };
    // Specificity first; among routes of the same shape, the method.
    routes
        .iter()
        .filter_map(|r| Some((specificity(r, &segs)?, method_rank(r, method)?, r)))
        .min_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)))
        .map(|(_, _, r)| r)
}

fn param<'p>(r: &RouteDef, path: &'p str, name: &str) -> Option<&'p str> {
    let i = r
        .segs
        .iter()
        .position(|s| matches!(s, Seg::Param(p) if *p == name))?;
    path[1..].split('/').nth(i)
}

// ---------------------------------------------------------------- query

/// The project a query names through parameter `name`, by the README:
/// exactly one parameter that any common parser would read as `name`
/// (percent-decoded, `+` as space, any case, `name[]`, PHP's `.`/space for
/// `_`), split on `&` and `;`, spelt exactly `name`, holding a plain
/// `proj-` id.
fn oracle_query_project<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    fn lenient(raw: &str) -> String {
        let mut bytes = Vec::new();
        let raw = raw.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%'
                && i + 2 < raw.len()
                && raw[i + 1].is_ascii_hexdigit()
                && raw[i + 2].is_ascii_hexdigit()
            {
                let h = (raw[i + 1] as char).to_digit(16).unwrap() as u8;
                let l = (raw[i + 2] as char).to_digit(16).unwrap() as u8;
                bytes.push(h * 16 + l);
                i += 3;
            } else if raw[i] == b'+' {
                bytes.push(b' ');
                i += 1;
            } else {
                bytes.push(raw[i]);
                i += 1;
            }
        }
        let mut out = String::new();
        for b in bytes {
            match b {
                b'[' => break,
                b'.' | b' ' => out.push('_'),
                b => out.push(b.to_ascii_lowercase() as char),
            }
        }
        out
    }
    let query = query?;
    let hits: Vec<(&str, &str)> = query
        .split(['&', ';'])
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(k, _)| lenient(k) == lenient(name))
        .collect();
    match hits.as_slice() {
        [(k, v)] if *k == name && model::is_project_id(v) => Some(v),
        _ => None,
    }
}

// ---------------------------------------------------------------- grants

#[derive(Debug, Clone)]
struct GrantCase {
    role: &'static str,
    projects: Vec<&'static str>,
    networks: Vec<&'static str>,
    hours: Option<(u8, u8)>,
}

const NETWORKS: [&str; 6] = [
    "10.0.0.0/8",
    "192.0.2.7",
    "2001:db8::/32",
    "not-a-net",
    "10.1.2.3/8",
    " 192.0.2.0/24 ",
];
const CLIENTS: [Option<&str>; 6] = [
    None,
    Some("10.9.8.7"),
    Some("192.0.2.7"),
    Some("::ffff:10.0.0.1"),
    Some("2001:db8::1"),
    Some("203.0.113.9"),
];

/// A network as the README reads it: CIDR (host bits ignored) or one
/// address; `None`: unreadable.
fn oracle_network(s: &str) -> Option<(IpAddr, u8)> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn in_network(client: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    // An IPv4-mapped IPv6 client is its IPv4 address.
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    match (client, net) {
        (IpAddr::V4(c), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(c) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(c), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(c) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl GrantCase {
    fn applies(&self, project: &str, client: Option<IpAddr>, hour: u8) -> bool {
        if !self.projects.contains(&project) {
            return false;
        }
        if !self.networks.is_empty() {
            let mut nets = Vec::new();
            for n in &self.networks {
                match oracle_network(n) {
                    Some(net) => nets.push(net),
                    None => return false,
                }
            }
            let Some(client) = client else { return false };
            if !nets.iter().any(|n| in_network(client, *n)) {
                return false;
            }
        }
        if let Some((start, end)) = self.hours {
            if start > 23 || end > 23 || start == end {
                return false;
            }
            let inside = if start < end {
                start <= hour && hour < end
            } else {
                hour >= start || hour < end
            };
            if !inside {
                return false;
            }
        }
        true
    }

    fn model(&self) -> Grant {
        Grant {
            role: self.role.to_string(),
            projects: self.projects.iter().map(|p| p.to_string()).collect(),
            conditions: (!self.networks.is_empty() || self.hours.is_some()).then(|| {
                GrantConditions {
                    networks: self.networks.iter().map(|n| n.to_string()).collect(),
                    hours_utc: self.hours.map(|(start, end)| HoursUtc { start, end }),
                }
            }),
        }
    }
}

// ---------------------------------------------------------------- request

#[derive(Debug, Clone)]
pub struct RequestCase {
    tenant: &'static str,
    roles: Vec<&'static str>,
    scopes: Option<u16>,
    grants: Vec<GrantCase>,
    method: &'static str,
    path: String,
    query: Option<String>,
    client: Option<IpAddr>,
}

const PATH_SEGS: [&str; 14] = [
    "v1",
    "tenants",
    "projects",
    "costs",
    "export",
    "x",
    "budgets",
    TENANT_A,
    TENANT_B,
    OTHER_TENANT,
    PROJECT_A,
    PROJECT_A2,
    PROJECT_B,
    NO_PROJECT,
];
const QUERY_KEYS: [&str; 8] = [
    "project_id",
    "project_id",
    "PROJECT_ID",
    "project%5Fid",
    "project_id[]",
    "p.id",
    "p_id",
    "other",
];
const QUERY_VALUES: [&str; 6] = [PROJECT_A, PROJECT_A2, PROJECT_B, NO_PROJECT, "", "proj-%41"];

pub fn gen_request(src: &mut Src<'_>, policy: &PolicyCase) -> RequestCase {
    let tenant = if src.chance(200) { TENANT_A } else { TENANT_B };
    let mut roles = Vec::new();
    for r in ROLE_POOL {
        if src.chance(60) {
            roles.push(r);
        }
    }
    let scopes = src.chance(60).then(|| src.perms());
    let mut grants = Vec::new();
    let pool = [PROJECT_A, PROJECT_A2, PROJECT_B, NO_PROJECT];
    while grants.len() < 3 && src.chance(170) {
        let mut projects = Vec::new();
        for p in pool {
            if src.chance(150) {
                projects.push(p);
            }
        }
        let mut networks = Vec::new();
        if src.chance(40) {
            networks.push(src.pick(&NETWORKS));
            if src.chance(80) {
                networks.push(src.pick(&NETWORKS));
            }
        }
        let hours = src
            .chance(40)
            .then(|| (src.below(26) as u8, src.below(26) as u8));
        grants.push(GrantCase {
            role: src.pick(&ROLE_POOL),
            projects,
            networks,
            hours,
        });
    }
    let mut method = src.pick(&METHODS);
    // Mostly a request shaped like one of the policy's routes (its path,
    // one of its methods, its project parameter), so that routes are hit.
    let mut path = String::new();
    let mut query_name = None;
    if src.chance(230) && !policy.routes.is_empty() {
        let r = &policy.routes[src.below(policy.routes.len())];
        if !r.methods.is_empty() && src.chance(190) {
            method = src.pick(&r.methods);
        }
        query_name = r.project_query;
        for seg in &r.segs {
            path.push('/');
            match seg {
                Seg::Lit(l) => path.push_str(l),
                Seg::Param("tenant") => {
                    path.push_str(src.pick(&[TENANT_A, TENANT_B, OTHER_TENANT, tenant, tenant]))
                }
                Seg::Param("project") => {
                    path.push_str(src.pick(&[PROJECT_A, PROJECT_A2, PROJECT_B, NO_PROJECT]))
                }
                Seg::Param(_) | Seg::Rest => {
                    for _ in 0..src.below(3) {
                        path.push_str(src.pick(&PATH_SEGS));
                        path.push('/');
                    }
                    path.push_str(src.pick(&PATH_SEGS));
                }
            }
        }
    } else {
        for _ in 0..src.below(6) {
            path.push('/');
            path.push_str(src.pick(&PATH_SEGS));
        }
    }
    if path.is_empty() || src.chance(10) {
        path.push('/');
    }
    let query = match query_name {
        Some(name) if src.chance(150) => Some(format!(
            "{name}={}",
            src.pick(&[PROJECT_A, PROJECT_A2, PROJECT_B, NO_PROJECT])
        )),
        _ => None,
    };
    let query = query.or_else(|| {
        src.chance(150).then(|| {
            let mut q = String::new();
            for i in 0..1 + src.below(3) {
                if i > 0 {
                    q.push(if src.chance(200) { '&' } else { ';' });
                }
                q.push_str(src.pick(&QUERY_KEYS));
                q.push('=');
                q.push_str(src.pick(&QUERY_VALUES));
            }
            q
        })
    });
    let client = src.pick(&CLIENTS).map(|c| c.parse().unwrap());
    RequestCase {
        tenant,
        roles,
        scopes,
        grants,
        method,
        path,
        query,
        client,
    }
}

/// A decision, as both sides state it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    NoRoute,
    Public(String),
    Permit(String, Option<String>),
    TenantMismatch(String),
    ForeignProject(String),
    Missing(String, &'static str),
}

/// The contract's decision (the oracle).
pub fn oracle_decide(policy: &PolicyCase, req: &RequestCase, hour: u8) -> Decision {
    let Some(route) = oracle_match(&policy.routes, req.method, &req.path) else {
        return Decision::NoRoute;
    };
    let pattern = route.pattern();
    let Some(needed) = route.permission else {
        return Decision::Public(pattern);
    };
    let custom = |tenant: &str, role: &str| -> Option<u16> {
        CUSTOM_ROLES
            .iter()
            .find(|(t, n, _)| *t == tenant && *n == role)
            .map(|(_, _, perms)| bits_of(perms))
    };
    let role_bits = |role: &str| -> u16 {
        policy
            .role_bits(role)
            .or_else(|| custom(req.tenant, role))
            .unwrap_or(0)
    };
    let narrow = |bits: u16| match req.scopes {
        Some(s) => bits & s,
        None => bits,
    };
    let held: u16 = req.roles.iter().fold(0, |acc, r| acc | role_bits(r));
    let perms = narrow(held);
    let path_tenant = param(route, &req.path, "tenant");
    let tenant = match path_tenant {
        Some(t) if t != req.tenant && perms & SYSTEM_ADMIN == 0 => {
            return Decision::TenantMismatch(pattern);
        }
        Some(t) => t,
        None => req.tenant,
    };
    let path_project = param(route, &req.path, "project");
    if let Some(p) = path_project
        && !projects_of(tenant).contains(&p)
    {
        return Decision::ForeignProject(pattern);
    }
    let mut perms = perms;
    if perms & perm_bit(needed) == 0 && tenant == req.tenant {
        let project = match (path_project, route.project_query) {
            (Some(p), _) => Some(p),
            (None, Some(name)) => oracle_query_project(req.query.as_deref(), name),
            (None, None) => None,
        };
        if let Some(project) = project {
            let granted = req
                .grants
                .iter()
                .filter(|g| g.applies(project, req.client, hour))
                .fold(0, |acc, g| acc | role_bits(g.role));
            perms = narrow(held | granted);
        }
    }
    if perms & perm_bit(needed) == 0 {
        return Decision::Missing(pattern, needed.as_str());
    }
    Decision::Permit(pattern, path_project.map(str::to_string))
}

// ---------------------------------------------------------------- engine

pub struct Engine {
    pub rt: tokio::runtime::Runtime,
    pub authz: Authz,
    _dir: tempfile::TempDir,
}

/// One store and one authorization stage for every case (the store's
/// contents are fixed; the policy is passed per decision).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        rt.block_on(async {
            for tenant in [TENANT_A, TENANT_B] {
                for p in projects_of(tenant) {
                    store
                        .insert_project(
                            &Project {
                                project_id: p.to_string(),
                                tenant_id: tenant.into(),
                                name: p.to_string(),
                                budget: 10.0,
                                created_at: model::now(),
                            },
                            -1,
                        )
                        .await
                        .unwrap();
                }
            }
            for (tenant, name, perms) in CUSTOM_ROLES {
                store
                    .put_role(&CustomRole {
                        tenant_id: tenant.into(),
                        name: name.into(),
                        description: String::new(),
                        permissions: perms.iter().map(|p| p.to_string()).collect(),
                        updated_at: model::now(),
                    })
                    .await
                    .unwrap();
            }
        });
        let handle = PolicyHandle::load(Source::BuiltIn).unwrap();
        let authz = Authz::new(handle, store, 1000, Duration::from_secs(3600));
        Engine {
            rt,
            authz,
            _dir: dir,
        }
    })
}

fn principal(req: &RequestCase) -> Arc<Principal> {
    let roles: Vec<String> = req.roles.iter().map(|r| r.to_string()).collect();
    let key: Arc<str> = "key-oracle".into();
    let grants: Vec<Grant> = req.grants.iter().map(GrantCase::model).collect();
    Arc::new(Principal {
        tenant_id: req.tenant.into(),
        user_id: key.clone(),
        rate_key: key.clone(),
        headers: IdentityHeaders::new(req.tenant, &key, Some(&key), &roles, AuthMethod::ApiKey)
            .unwrap(),
        key_id: Some(key),
        roles: roles.into(),
        grants: costguard::grants::compile_all(&grants),
        scopes: req.scopes.map(|s| {
            Permissions::of(
                &Permission::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| s & (1 << i) != 0)
                    .map(|(_, p)| *p)
                    .collect::<Vec<_>>(),
            )
        }),
        rate_per_minute: None,
        method: AuthMethod::ApiKey,
    })
}

/// The real engine's decision.
pub fn real_decide(e: &Engine, policy: &Policy, req: &RequestCase) -> Decision {
    let method: Method = req.method.parse().unwrap();
    let Some(m) = policy.enforce.find(&method, &req.path) else {
        return Decision::NoRoute;
    };
    let pattern = m.route.pattern.to_string();
    let Access::Permission(_) = m.route.access else {
        return Decision::Public(pattern);
    };
    let who = principal(req);
    let attrs = Attributes {
        client: req.client,
        query: req.query.as_deref(),
    };
    match e.rt.block_on(e.authz.authorize(policy, &m, &who, &attrs)) {
        Ok(permit) => Decision::Permit(pattern, permit.project().map(|(p, _)| p.to_string())),
        Err(AuthzOutcome::Denied(Denied::TenantMismatch)) => Decision::TenantMismatch(pattern),
        Err(AuthzOutcome::Denied(Denied::ForeignProject)) => Decision::ForeignProject(pattern),
        Err(AuthzOutcome::Denied(Denied::Missing(p))) => Decision::Missing(pattern, p.as_str()),
        Err(AuthzOutcome::Denied(Denied::NoRoute)) => Decision::NoRoute,
        Err(AuthzOutcome::Store(e)) => panic!("store error: {e}"),
    }
}

/// What one run of the harness saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub policies: u64,
    pub refused_policies: u64,
    pub decisions: u64,
    pub permits: u64,
    pub denials: u64,
    pub no_route: u64,
    /// Decisions that the caller's grants changed (by the oracle).
    pub by_grant: u64,
}

fn hour_now() -> u8 {
    time::OffsetDateTime::now_utc().hour()
}

/// One policy and `requests` requests from `data`; panics on any
/// disagreement, with the policy and the request.
pub fn run(data: &[u8], requests: usize, tally: &mut Tally) {
    let mut src = Src::new(data);
    let case = gen_policy(&mut src);
    let compiled = policy::compile(&case.files);
    tally.policies += 1;
    let policy = match compiled {
        Ok(p) => {
            assert!(
                case.should_compile(),
                "compiled a policy the contract refuses:\n{:#?}",
                case.files
            );
            p
        }
        Err(e) => {
            assert!(
                !case.should_compile(),
                "refused a policy the contract accepts: {e}\n{:#?}",
                case.files
            );
            tally.refused_policies += 1;
            return;
        }
    };
    // Every role the policy defines has the permissions the contract gives it.
    for r in &case.roles {
        let want = case.role_bits(r.name).unwrap();
        let got = policy.role(r.name).unwrap();
        let got_bits = Permission::ALL
            .iter()
            .enumerate()
            .filter(|(_, p)| got.contains(**p))
            .fold(0u16, |acc, (i, _)| acc | (1 << i));
        assert_eq!(got_bits, want, "role {} of\n{:#?}", r.name, case.files);
    }
    let e = engine();
    for _ in 0..requests {
        let req = gen_request(&mut src, &case);
        if costguard::authz::path::check(&req.path).is_err() {
            continue;
        }
        let before = hour_now();
        let real = real_decide(e, &policy, &req);
        let hour = hour_now();
        if before != hour {
            continue; // the clock crossed an hour: either answer is right
        }
        let want = oracle_decide(&case, &req, hour);
        tally.decisions += 1;
        if !req.grants.is_empty() {
            let mut without = req.clone();
            without.grants.clear();
            if oracle_decide(&case, &without, hour) != want {
                tally.by_grant += 1;
            }
        }
        match &want {
            Decision::Permit(..) | Decision::Public(_) => tally.permits += 1,
            Decision::NoRoute => tally.no_route += 1,
            _ => tally.denials += 1,
        }
        assert_eq!(
            real,
            want,
            "engine and oracle disagree\nrequest: {req:#?}\npolicy files:\n{}",
            case.files
                .iter()
                .map(|(n, t)| format!("--- {n}\n{t}"))
                .collect::<String>()
        );
    }
}
