//! Project-scoped grants as a principal carries them: a role held on some
//! of the tenant's projects only, with conditions on the request.
//!
//! The stored form is [`model::Grant`]; [`ProjectGrant::compile`] parses it
//! once, when the principal is built (and cached with it), so a request
//! only compares strings and addresses. A principal without grants carries
//! an empty boxed slice: no allocation, and `authz` skips all of this.
//!
//! # Conditions
//! Supported, because the proxy can evaluate them for every request
//! without asking anyone:
//! - `networks`: CIDR ranges the client address must be in, the address
//!   as the pipeline already resolves it through `proxy.trusted_proxies`
//!   (a forwarded address from an untrusted peer is never believed).
//! - `hours_utc`: a daily window of whole UTC hours (the clock of the
//!   host; no time zones, so no tz database and no DST ambiguity).
//!
//! Not supported: the tenant's data region. A grant belongs to one
//! tenant, and a tenant has one region, so the condition would be the
//! same for every request of the grant: it is residency's job (which
//! upstream a tenant reaches), not a per-grant condition.
//!
//! Deny by default: a grant whose stored condition cannot be read (a
//! corrupted or hand-edited document) never applies, and a `networks`
//! condition without a known client address does not hold. An unknown
//! condition name is refused when written and when read
//! (`deny_unknown_fields`).
//!
//! [`model::Grant`]: crate::model::Grant

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::model::{Grant, HoursUtc, is_project_id};

/// Most grants one key or user holds.
pub const MAX_GRANTS: usize = 16;
/// Most projects one grant names.
pub const MAX_PROJECTS: usize = 64;
/// Most address ranges one grant's `networks` lists.
pub const MAX_NETWORKS: usize = 16;

/// A grant ready to evaluate.
#[derive(Debug, Clone)]
pub struct ProjectGrant {
    role: Box<str>,
    projects: Box<[Box<str>]>,
    /// `None`: any source.
    networks: Option<Box<[IpNet]>>,
    hours: Option<HoursUtc>,
    /// `false` when a stored condition could not be read: never applies.
    readable: bool,
}

/// Why a grant did not apply to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplied {
    /// The request's project is not one of the grant's.
    OtherProject,
    /// A stored condition could not be read.
    Unreadable,
    /// A `networks` condition, and no client address to check.
    NoClient,
    /// The client address is outside the grant's networks.
    Network,
    /// Outside the grant's hours.
    Hours,
}

impl fmt::Display for NotApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotApplied::OtherProject => "the project is not one of the grant's",
            NotApplied::Unreadable => "a stored condition cannot be read (denied)",
            NotApplied::NoClient => "no client address to check its networks (denied)",
            NotApplied::Network => "the client address is outside its networks",
            NotApplied::Hours => "outside its UTC hours",
        })
    }
}

impl ProjectGrant {
    /// Parses a stored grant. Never fails: what cannot be read makes a
    /// grant that never applies.
    pub fn compile(grant: &Grant) -> Self {
        let mut readable = is_hours_ok(grant.conditions.as_ref().and_then(|c| c.hours_utc));
        let networks = grant
            .conditions
            .as_ref()
            .filter(|c| !c.networks.is_empty())
            .map(|c| {
                c.networks
                    .iter()
                    .filter_map(|n| {
                        let parsed = parse_network(n);
                        readable &= parsed.is_some();
                        parsed
                    })
                    .collect::<Box<[IpNet]>>()
            });
        Self {
            role: grant.role.as_str().into(),
            projects: grant.projects.iter().map(|p| p.as_str().into()).collect(),
            networks,
            hours: grant.conditions.as_ref().and_then(|c| c.hours_utc),
            readable,
        }
    }

    /// The role it grants.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Whether it names `project`.
    pub fn names(&self, project: &str) -> bool {
        self.projects.iter().any(|p| &**p == project)
    }

    /// Whether it applies to a request on `project` from `client` at the
    /// time `now` returns (called only for a grant with hours).
    pub fn applies(
        &self,
        project: &str,
        client: Option<IpAddr>,
        now: impl FnOnce() -> OffsetDateTime,
    ) -> Result<(), NotApplied> {
        if !self.names(project) {
            return Err(NotApplied::OtherProject);
        }
        if !self.readable {
            return Err(NotApplied::Unreadable);
        }
        if let Some(networks) = &self.networks {
            let Some(client) = client else {
                return Err(NotApplied::NoClient);
            };
            let client = client.to_canonical();
            if !networks.iter().any(|n| n.contains(&client)) {
                return Err(NotApplied::Network);
            }
        }
        if let Some(hours) = self.hours
            && !in_hours(hours, now().hour())
        {
            return Err(NotApplied::Hours);
        }
        Ok(())
    }
}

/// Compiles an identity's stored grants (empty: no allocation).
pub fn compile_all(grants: &[Grant]) -> Box<[ProjectGrant]> {
    grants.iter().map(ProjectGrant::compile).collect()
}

/// A network as written in a grant: CIDR (`10.0.0.0/8`) or one address
/// (`192.0.2.7`, a /32 or /128). Host bits are cleared (`10.1.2.3/8` is
/// `10.0.0.0/8`).
pub fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// Whether a window is well formed: hours 0-23, not empty.
pub fn is_hours_ok(hours: Option<HoursUtc>) -> bool {
    hours.is_none_or(|h| h.start < 24 && h.end < 24 && h.start != h.end)
}

/// Whether `hour` (0-23) is in the window.
pub fn in_hours(h: HoursUtc, hour: u8) -> bool {
    if h.start < h.end {
        (h.start..h.end).contains(&hour)
    } else {
        hour >= h.start || hour < h.end
    }
}

/// Why a route's `project_query` parameter names no project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryProject {
    /// No such parameter.
    #[error("the query does not name the project")]
    Missing,
    /// More than one: which one the upstream reads is not ours to guess.
    #[error("the query names the project more than once")]
    Several,
    /// Not a plain `proj-` id (an encoded or odd value may read
    /// differently upstream).
    #[error("the query's project is not a plain proj- id")]
    Invalid,
}

/// The project the query's parameter `name` names: exactly one
/// occurrence with a plain `proj-` id, else no project (a grant then gives
/// nothing). Pairs are split on `&` and `;` and every name that some
/// upstream framework could read as `name` (encoded, other case, array
/// syntax, PHP's `.` for `_`: see `canonical`) counts as an occurrence,
/// so a second spelling makes the query ambiguous rather than slipping
/// past; the one occurrence must be spelt exactly `name`.
pub fn query_project<'q>(query: Option<&'q str>, name: &str) -> Result<&'q str, QueryProject> {
    let mut found = None;
    for pair in query.unwrap_or("").split(['&', ';']) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !key_is(key, name) {
            continue;
        }
        if found.is_some() {
            return Err(QueryProject::Several);
        }
        found = Some((key, value));
    }
    match found {
        None => Err(QueryProject::Missing),
        Some((key, value)) if key == name && is_project_id(value) => Ok(value),
        Some(_) => Err(QueryProject::Invalid),
    }
}

/// Whether a raw query key may be read as `name` by some parser: equal
/// once both are canonical (see [`canonical`]).
fn key_is(raw: &str, name: &str) -> bool {
    canonical(raw.as_bytes()) == canonical(name.as_bytes())
}

/// A query key as the most lenient common parsers read it: `%XX` and `+`
/// decoded, ASCII lower case, cut at a `[` (`name[]=` and `name[x]=` are
/// PHP's and Rails' arrays of `name`), `.` and space as `_` (PHP's
/// renaming). Allocates, but runs only for a caller with grants on a
/// `project_query` route its roles do not already allow.
fn canonical(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'%' if i + 2 < raw.len() => {
                match std::str::from_utf8(&raw[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        i += 2;
                        b
                    }
                    None => b'%',
                }
            }
            b'+' => b' ',
            b => b,
        };
        i += 1;
        match b {
            b'[' => break,
            b'.' | b' ' => out.push(b'_'),
            b => out.push(b.to_ascii_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GrantConditions;

    fn grant(projects: &[&str], conditions: Option<GrantConditions>) -> ProjectGrant {
        ProjectGrant::compile(&Grant {
            role: "analyst".into(),
            projects: projects.iter().map(|p| p.to_string()).collect(),
            conditions,
        })
    }

    fn at_hour(h: u8) -> impl FnOnce() -> OffsetDateTime {
        move || {
            OffsetDateTime::UNIX_EPOCH
                .replace_hour(h)
                .expect("an hour of the day")
        }
    }

    #[test]
    fn a_grant_applies_only_on_its_projects() {
        let g = grant(&["proj-a", "proj-b"], None);
        assert_eq!(g.applies("proj-a", None, at_hour(3)), Ok(()));
        assert_eq!(g.applies("proj-b", None, at_hour(3)), Ok(()));
        assert_eq!(
            g.applies("proj-c", None, at_hour(3)),
            Err(NotApplied::OtherProject)
        );
    }

    #[test]
    fn networks_need_a_client_inside_one_of_them() {
        let g = grant(
            &["proj-a"],
            Some(GrantConditions {
                networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                hours_utc: None,
            }),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(g.applies("proj-a", ip("10.1.2.3"), at_hour(0)), Ok(()));
        // The v4-mapped v6 form of an address is that address.
        assert_eq!(
            g.applies("proj-a", ip("::ffff:10.1.2.3"), at_hour(0)),
            Ok(())
        );
        assert_eq!(g.applies("proj-a", ip("2001:db8::1"), at_hour(0)), Ok(()));
        assert_eq!(
            g.applies("proj-a", ip("127.0.0.1"), at_hour(0)),
            Err(NotApplied::Network)
        );
        assert_eq!(
            g.applies("proj-a", None, at_hour(0)),
            Err(NotApplied::NoClient)
        );
    }

    #[test]
    fn an_unreadable_stored_condition_never_applies() {
        let g = grant(
            &["proj-a"],
            Some(GrantConditions {
                networks: vec!["10.0.0.0/8".into(), "not-a-network".into()],
                hours_utc: None,
            }),
        );
        let client = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            g.applies("proj-a", client, at_hour(0)),
            Err(NotApplied::Unreadable)
        );
        let g = grant(
            &["proj-a"],
            Some(GrantConditions {
                networks: vec![],
                hours_utc: Some(HoursUtc { start: 5, end: 5 }),
            }),
        );
        assert_eq!(
            g.applies("proj-a", None, at_hour(5)),
            Err(NotApplied::Unreadable)
        );
    }

    #[test]
    fn hours_are_half_open_and_may_wrap_midnight() {
        let day = HoursUtc { start: 8, end: 18 };
        assert!(!in_hours(day, 7));
        assert!(in_hours(day, 8));
        assert!(in_hours(day, 17));
        assert!(!in_hours(day, 18));
        let night = HoursUtc { start: 22, end: 6 };
        assert!(in_hours(night, 23));
        assert!(in_hours(night, 0));
        assert!(in_hours(night, 5));
        assert!(!in_hours(night, 6));
        assert!(!in_hours(night, 21));
        let g = grant(
            &["proj-a"],
            Some(GrantConditions {
                networks: vec![],
                hours_utc: Some(day),
            }),
        );
        assert_eq!(g.applies("proj-a", None, at_hour(9)), Ok(()));
        assert_eq!(
            g.applies("proj-a", None, at_hour(20)),
            Err(NotApplied::Hours)
        );
    }

    #[test]
    fn networks_parse_as_cidr_or_one_address() {
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "10.0.0", "example.com", "10.0.0.0/8/8"] {
            assert!(parse_network(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_query_names_a_project_exactly_once_or_not_at_all() {
        let q = |s: &'static str| query_project(Some(s), "project_id");
        assert_eq!(q("project_id=proj-1a2b"), Ok("proj-1a2b"));
        assert_eq!(q("a=1&project_id=proj-1a2b&b=2"), Ok("proj-1a2b"));
        assert_eq!(
            query_project(None, "project_id"),
            Err(QueryProject::Missing)
        );
        assert_eq!(q("other=proj-1"), Err(QueryProject::Missing));
        assert_eq!(
            q("project_id=proj-1&project_id=proj-2"),
            Err(QueryProject::Several)
        );
        // Spellings another parser reads as the same name count too.
        for twice in [
            "project_id=proj-1&project%5Fid=proj-2",
            "project_id=proj-1;project_id=proj-2",
            "project_id=proj-1&PROJECT_ID=proj-2",
            "project_id=proj-1&project_id[]=proj-2",
            "project_id=proj-1&project_id%5B0%5D=proj-2",
            "project_id=proj-1&project.id=proj-2",
            "project_id=proj-1&project+id=proj-2",
        ] {
            assert_eq!(q(twice), Err(QueryProject::Several), "{twice}");
        }
        for bad in [
            "project_id=",
            "project_id",
            "project_id=org-1",
            "project_id=proj-%31",
            "project_id=proj-1+",
            "project%5Fid=proj-1",
            "project_id[]=proj-1",
        ] {
            assert_eq!(q(bad), Err(QueryProject::Invalid), "{bad}");
        }
    }
}
