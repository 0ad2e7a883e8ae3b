//! Policy files → an immutable, compiled [`Policy`].
//!
//! Every `*.toml` file in the policy directory is read (symlinks followed,
//! hidden entries such as a ConfigMap's `..data` skipped), in name order.
//! A file may define roles, routes and public routes, and may declare
//! `mode = "shadow"`: its routes are evaluated and logged, not enforced.
//! Every problem is reported as `file:line: message`; one problem anywhere
//! rejects the whole set.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;

use http::Method;
use serde::Deserialize;
use toml::Spanned;

use super::matcher::{Access, Matcher, PatternError, Route};
use crate::audit::EventType;
use crate::roles::{Permission, Permissions};

/// A compiled policy snapshot. Immutable; replaced whole on reload.
#[derive(Debug)]
pub struct Policy {
    /// Role name → permissions (includes resolved).
    roles: HashMap<Box<str>, Permissions>,
    /// Routes that decide.
    pub enforce: Matcher,
    /// Routes that are evaluated and logged only.
    pub shadow: Matcher,
    /// Content fingerprint of the files it was built from.
    pub fingerprint: u64,
    /// The files, for `/ready` and logs.
    pub files: Vec<String>,
}

impl Policy {
    /// The permissions of a policy role.
    pub fn role(&self, name: &str) -> Option<Permissions> {
        self.roles.get(name).copied()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.roles.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// File name (within the directory).
    pub file: String,
    /// 1-based line, 0 when not known.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every problem of a rejected policy.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError(pub Vec<PolicyProblem>);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<RoleDef>>,
    #[serde(default)]
    routes: Vec<Spanned<RouteDef>>,
    #[serde(default)]
    public: Vec<Spanned<PublicDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDef {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    permissions: Vec<Spanned<String>>,
    #[serde(default)]
    includes: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Methods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDef {
    method: Spanned<Methods>,
    path: Spanned<String>,
    permission: Spanned<String>,
    #[serde(default)]
    cost: bool,
    /// The business event a successful request on this route records
    /// (`cost.exported`, …; [`EventType::is_business`]).
    #[serde(default)]
    audit_event: Option<Spanned<String>>,
    /// The query parameter naming the project on a route without a
    /// `{project}` segment, so project-scoped grants can count there.
    #[serde(default)]
    project_query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicDef {
    method: Spanned<Methods>,
    path: Spanned<String>,
}

/// The policy that ships in `policies/`, built into the binary for the demo
/// when no policy directory is at hand.
pub const DEFAULT_FILES: [(&str, &str); 2] = [
    ("roles.toml", include_str!("../../policies/roles.toml")),
    ("routes.toml", include_str!("../../policies/routes.toml")),
];

/// Reads every policy file of `dir`.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let problem = |message: String| {
        PolicyError(vec![PolicyProblem {
            file: dir.display().to_string(),
            line: 0,
            message,
        }])
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(format!("cannot read the policy directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| problem(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| problem(format!("{name}: {e}")))?;
        files.push((name, text));
    }
    files.sort();
    if files.is_empty() {
        return Err(problem("no *.toml policy files".into()));
    }
    Ok(files)
}

/// A fingerprint of file names and contents, to notice changes.
pub fn fingerprint(files: &[(String, String)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Compiles policy files (name, text) into a [`Policy`].
pub fn compile(files: &[(String, String)]) -> Result<Policy, PolicyError> {
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for (name, text) in files {
        match toml::from_str::<PolicyFile>(text) {
            Ok(file) => parsed.push((name, text, file)),
            Err(e) => problems.push(PolicyProblem {
                file: name.clone(),
                line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
                message: e.message().to_string(),
            }),
        }
    }

    // Roles first: routes and includes refer to them.
    struct Def<'a> {
        file: &'a str,
        line: usize,
        permissions: Permissions,
        includes: Vec<(String, usize)>,
    }
    let mut defs: BTreeMap<String, Def<'_>> = BTreeMap::new();
    for (name, text, file) in &parsed {
        for (role, def) in &file.roles {
            let line = line_of(text, def.span().start);
            let mut report = |line: usize, message: String| {
                problems.push(PolicyProblem {
                    file: (*name).clone(),
                    line,
                    message,
                })
            };
            if !role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                || role.is_empty()
            {
                report(
                    line,
                    format!("role name {role:?} must be lower-case letters, digits and _"),
                );
            }
            let mut perms = Permissions::NONE;
            for p in &def.get_ref().permissions {
                match (p.get_ref().as_str(), Permission::parse(p.get_ref())) {
                    ("*", _) => perms = Permissions::ALL,
                    (_, Some(perm)) => perms = perms.union(Permissions::of(&[perm])),
                    (other, None) => report(
                        line_of(text, p.span().start),
                        format!("unknown permission {other:?} in role {role:?}"),
                    ),
                }
            }
            if let Some(first) = defs.get(role) {
                report(
                    line,
                    format!(
                        "role {role:?} is already defined at {}:{}",
                        first.file, first.line
                    ),
                );
                continue;
            }
            let includes = def
                .get_ref()
                .includes
                .iter()
                .map(|i| (i.get_ref().clone(), line_of(text, i.span().start)))
                .collect();
            defs.insert(
                role.clone(),
                Def {
                    file: name,
                    line,
                    permissions: perms,
                    includes,
                },
            );
        }
    }
    // Resolve includes: each role reachable from `role` is visited once
    // (so a diamond, two paths to the same role, is fine, and a cycle
    // elsewhere cannot hang this), and reaching `role` itself is a cycle.
    let mut roles: HashMap<Box<str>, Permissions> = HashMap::new();
    for (role, def) in &defs {
        let mut perms = def.permissions;
        // (included role, its line, the role that includes it)
        let mut stack: Vec<(&str, usize, &str)> = def
            .includes
            .iter()
            .map(|(n, l)| (n.as_str(), *l, role.as_str()))
            .collect();
        let mut seen: Vec<&str> = Vec::new();
        while let Some((inc, line, by)) = stack.pop() {
            match defs.get(inc) {
                None => problems.push(PolicyProblem {
                    file: def.file.to_string(),
                    line,
                    message: format!("role {role:?} includes unknown role {inc:?}"),
                }),
                Some(_) if inc == role.as_str() => {
                    problems.push(PolicyProblem {
                        file: def.file.to_string(),
                        line,
                        message: format!("role {role:?} includes itself (through {by:?})"),
                    });
                    break;
                }
                Some(_) if seen.contains(&inc) => {}
                Some(other) => {
                    seen.push(inc);
                    perms = perms.union(other.permissions);
                    stack.extend(other.includes.iter().map(|(n, l)| (n.as_str(), *l, inc)));
                }
            }
        }
        roles.insert(role.as_str().into(), perms);
    }

    let mut enforce = Matcher::default();
    let mut shadow = Matcher::default();
    for (name, text, file) in &parsed {
        let matcher = match file.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("enforce", _)) => &mut enforce,
            Some(("shadow", _)) => &mut shadow,
            Some((other, span)) => {
                problems.push(PolicyProblem {
                    file: (*name).clone(),
                    line: line_of(text, span.start),
                    message: format!("mode must be \"enforce\" or \"shadow\", not {other:?}"),
                });
                continue;
            }
        };
        let entries = file
            .routes
            .iter()
            .map(|r| {
                (
                    r.span(),
                    &r.get_ref().method,
                    &r.get_ref().path,
                    Some(&r.get_ref().permission),
                    r.get_ref().cost,
                    r.get_ref().audit_event.as_ref(),
                    r.get_ref().project_query.as_ref(),
                )
            })
            .chain(file.public.iter().map(|p| {
                (
                    p.span(),
                    &p.get_ref().method,
                    &p.get_ref().path,
                    None,
                    false,
                    None,
                    None,
                )
            }));
        for (span, method, path, permission, cost, audit_event, project_query) in entries {
            let line = line_of(text, span.start);
            let mut report = |line: usize, message: String| {
                problems.push(PolicyProblem {
                    file: (*name).clone(),
                    line,
                    message,
                })
            };
            let names: Vec<&str> = match method.get_ref() {
                Methods::One(m) => vec![m.as_str()],
                Methods::Many(ms) => ms.iter().map(String::as_str).collect(),
            };
            let mut methods = Vec::new();
            let mut any = false;
            let mut unknown = false;
            for m in names {
                if m == "*" {
                    any = true;
                } else if METHODS.contains(&m) {
                    methods.push(m.parse::<Method>().expect("known method"));
                } else {
                    unknown = true;
                    report(
                        line_of(text, method.span().start),
                        format!(
                            "unknown method {m:?}: use one of {} or \"*\"",
                            METHODS.join(", ")
                        ),
                    );
                }
            }
            if unknown {
                continue;
            }
            if any {
                methods.clear();
            } else if methods.is_empty() {
                report(
                    line_of(text, method.span().start),
                    "a route needs at least one method".into(),
                );
                continue;
            }
            let access = match permission {
                None => Access::Public,
                Some(p) => match Permission::parse(p.get_ref()) {
                    Some(perm) => Access::Permission(perm),
                    None => {
                        report(
                            line_of(text, p.span().start),
                            format!("unknown permission {:?}", p.get_ref()),
                        );
                        continue;
                    }
                },
            };
            let audit_event = match audit_event {
                None => None,
                Some(e) => match e.get_ref().parse::<EventType>() {
                    Ok(t) if t.is_business() => Some(t),
                    _ => {
                        report(
                            line_of(text, e.span().start),
                            format!(
                                "audit_event {:?} is not a business event: use one of {}",
                                e.get_ref(),
                                EventType::BUSINESS.map(EventType::as_str).join(", ")
                            ),
                        );
                        continue;
                    }
                },
            };
            let project_query = match project_query {
                None => None,
                Some(q) => match check_project_query(q.get_ref(), path.get_ref()) {
                    Ok(()) => Some(q.get_ref().as_str().into()),
                    Err(message) => {
                        report(line_of(text, q.span().start), message);
                        continue;
                    }
                },
            };
            let route = Route {
                methods,
                pattern: path.get_ref().as_str().into(),
                access,
                cost,
                audit_event,
                params: vec![],
                origin: format!("{name}:{line}").into(),
                project_query,
            };
            match matcher.add(route) {
                Ok(()) => {}
                Err(PatternError::Syntax(m)) => report(
                    line_of(text, path.span().start),
                    format!("bad path {:?}: {m}", path.get_ref()),
                ),
                Err(PatternError::Conflict(other)) => report(
                    line,
                    format!(
                        "route {:?} conflicts with the route at {other}",
                        path.get_ref()
                    ),
                ),
            }
        }
    }
    if roles.is_empty() && problems.is_empty() {
        problems.push(PolicyProblem {
            file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
            line: 0,
            message: "no roles are defined".into(),
        });
    }
    if !problems.is_empty() {
        return Err(PolicyError(problems));
    }
    Ok(Policy {
        roles,
        enforce,
        shadow,
        fingerprint: fingerprint(files),
        files: files.iter().map(|f| f.0.clone()).collect(),
    })
}

/// A route's `project_query`: a plain parameter name, on a route whose
/// path does not name the project itself (two sources of one project
/// would be two answers to which project it is).
fn check_project_query(name: &str, path: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "project_query {name:?} must be 1 to 64 of A-Z a-z 0-9 _ - ."
        ));
    }
    if path.split('/').any(|s| s == "{project}") {
        return Err(format!(
            "project_query on {path:?}: the route's {{project}} segment already names the project"
        ));
    }
    Ok(())
}

/// Reads and compiles a policy directory.
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    compile(&read_dir(dir)?)
}

/// The built-in default policy.
pub fn default_policy() -> Policy {
    let files: Vec<(String, String)> = DEFAULT_FILES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    compile(&files).expect("the shipped policy compiles")
}

#[cfg(test)]
mod tests;
