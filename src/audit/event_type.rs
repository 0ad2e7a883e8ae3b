//! What an audit record is about ([`EventType`]) and how serious that is
//! ([`Severity`]).
//!
//! The names are the seed's `AuditEventType` values (design.md: its audit
//! events are ours) and costguard's own events; [`EventType::as_str`] is
//! what the records' `event_type` field holds on disk and what the admin
//! audit query filters on, so a name never changes. The severities follow
//! the seed's `_determine_severity`; [`EventType::severity`] matches every
//! variant by name, so a new event type cannot silently fall to LOW.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How serious an event is (the seed's rules, extended to our events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Failed logins, denials, suspicious activity, deletions, revocations.
    High,
    /// Budget deletions, user creation, role assignment, rejected policies.
    Medium,
    /// Everything else.
    Low,
}

impl Severity {
    /// The name records carry (what serde writes for it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::High => "HIGH",
            Severity::Medium => "MEDIUM",
            Severity::Low => "LOW",
        }
    }
}

/// Declares [`EventType`] from one table of variants and their names, so
/// [`EventType::as_str`], parsing and [`EventType::ALL`] cannot disagree.
macro_rules! event_types {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// An audit event type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($(#[$doc])* $variant,)*
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &[EventType] = &[$(EventType::$variant,)*];

            /// The name records carry (`auth.login`, `request.allowed`, …).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }
        }
    };
}

event_types! {
    // The seed's `AuditEventType`, with its names.
    /// A sign-in through a provider (OIDC, SAML) opened a session.
    Login = "auth.login",
    /// A session was ended (by its user, or revoked by an admin).
    Logout = "auth.logout",
    /// A sign-in was refused.
    LoginFailed = "auth.login_failed",
    /// Business events (the seed's), written once the upstream answered a
    /// request on a route that names them (`audit_event` in the policy).
    BudgetCreated = "budget.created",
    /// A business event (see `BudgetCreated`).
    BudgetUpdated = "budget.updated",
    /// A business event (see `BudgetCreated`).
    BudgetDeleted = "budget.deleted",
    /// The cost service said a budget crossed a threshold (its
    /// `X-CostOps-Budget-Alert` response header).
    BudgetAlert = "budget.alert",
    /// A business event (see `BudgetCreated`).
    CostViewed = "cost.viewed",
    /// A business event (see `BudgetCreated`).
    CostExported = "cost.exported",
    /// A business event (see `BudgetCreated`).
    ReportGenerated = "report.generated",
    /// A stored user was created.
    UserCreated = "user.created",
    /// A stored user was changed.
    UserUpdated = "user.updated",
    /// A stored user was deleted.
    UserDeleted = "user.deleted",
    /// A user was given roles.
    RoleAssigned = "role.assigned",
    /// An API key was created.
    ApiKeyCreated = "apikey.created",
    /// An API key was revoked.
    ApiKeyRevoked = "apikey.revoked",
    /// A request (proxied or admin) was refused.
    AccessDenied = "security.access_denied",
    /// A sign-in failure that looks like an attack.
    SuspiciousActivity = "security.suspicious",

    // Costguard's own.
    /// A proxied request was let through.
    RequestAllowed = "request.allowed",
    /// A request on a route that names a business event was answered
    /// with an error (the upstream's 4xx/5xx, or costguard's 502/504), so
    /// the business event did not happen.
    RequestFailed = "request.failed",
    /// A new policy was loaded.
    PolicyReloaded = "policy.reloaded",
    /// A policy change was refused (the previous one stays in force).
    PolicyRejected = "policy.rejected",
    /// A tenant was created.
    TenantCreated = "tenant.created",
    /// A tenant was changed.
    TenantUpdated = "tenant.updated",
    /// A tenant was suspended.
    TenantSuspended = "tenant.suspended",
    /// A tenant was deleted.
    TenantDeleted = "tenant.deleted",
    /// A tenant's data region was changed (its requests now go to another
    /// region's upstream).
    TenantRegionChanged = "tenant.region_changed",
    /// An API key was rotated.
    ApiKeyRotated = "apikey.rotated",
    /// A project was created.
    ProjectCreated = "project.created",
    /// A custom role was defined or changed.
    RoleDefined = "role.defined",
    /// A custom role was deleted.
    RoleDeleted = "role.deleted",
    /// An admin mutation with no more specific type.
    AdminAction = "admin.action",
    /// Retention removed records from the index or log files.
    AuditPurged = "audit.purged",
    /// A backup of the store and the audit log was taken (admin API).
    AuditBackup = "audit.backup",
}

impl EventType {
    /// The seed's business events a route can name (`audit_event`).
    pub const BUSINESS: [EventType; 6] = [
        EventType::CostViewed,
        EventType::CostExported,
        EventType::ReportGenerated,
        EventType::BudgetCreated,
        EventType::BudgetUpdated,
        EventType::BudgetDeleted,
    ];

    /// Whether a route may name it as its `audit_event`: only the seed's
    /// business events, so no policy file can make a request look like a
    /// sign-in, a key change or a denial.
    pub fn is_business(self) -> bool {
        Self::BUSINESS.contains(&self)
    }

    /// The seed's `_determine_severity` for its events. Costguard's own
    /// events keep the severity they had before event types were typed:
    /// a deleted or suspended tenant is HIGH (like a deleted user), a
    /// rejected policy MEDIUM, the rest LOW.
    pub const fn severity(self) -> Severity {
        use EventType::*;
        match self {
            // The seed's HIGH set.
            LoginFailed | AccessDenied | SuspiciousActivity | UserDeleted | ApiKeyRevoked => {
                Severity::High
            }
            // The seed's MEDIUM set.
            BudgetDeleted | UserCreated | RoleAssigned => Severity::Medium,
            // The seed's LOW (everything else it names).
            Login | Logout | BudgetCreated | BudgetUpdated | BudgetAlert | CostViewed
            | CostExported | ReportGenerated | UserUpdated | ApiKeyCreated => Severity::Low,
            // Costguard's own (not in the seed).
            TenantDeleted | TenantSuspended => Severity::High,
            // Where a tenant's data may go changed.
            TenantRegionChanged => Severity::Medium,
            // A copy of every credential hash and session left the process.
            PolicyRejected | AuditBackup => Severity::Medium,
            RequestAllowed | RequestFailed | PolicyReloaded | TenantCreated | TenantUpdated
            | ApiKeyRotated | ProjectCreated | RoleDefined | RoleDeleted | AdminAction
            | AuditPurged => Severity::Low,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`EventType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit event type: {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    /// The event type named exactly `s` (as [`EventType::as_str`] writes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_names_are_what_serde_writes() {
        for s in [Severity::High, Severity::Medium, Severity::Low] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    /// The seed's `AuditEventType` values and `_determine_severity`.
    const SEED: &[(&str, Severity)] = &[
        ("auth.login", Severity::Low),
        ("auth.logout", Severity::Low),
        ("auth.login_failed", Severity::High),
        ("budget.created", Severity::Low),
        ("budget.updated", Severity::Low),
        ("budget.deleted", Severity::Medium),
        ("budget.alert", Severity::Low),
        ("cost.viewed", Severity::Low),
        ("cost.exported", Severity::Low),
        ("report.generated", Severity::Low),
        ("user.created", Severity::Medium),
        ("user.updated", Severity::Low),
        ("user.deleted", Severity::High),
        ("role.assigned", Severity::Medium),
        ("apikey.created", Severity::Low),
        ("apikey.revoked", Severity::High),
        ("security.access_denied", Severity::High),
        ("security.suspicious", Severity::High),
    ];

    /// Costguard's events the seed lacks, with the severity each had when
    /// event types were strings.
    const OURS: &[(&str, Severity)] = &[
        ("request.allowed", Severity::Low),
        ("request.failed", Severity::Low),
        ("policy.reloaded", Severity::Low),
        ("policy.rejected", Severity::Medium),
        ("tenant.created", Severity::Low),
        ("tenant.updated", Severity::Low),
        ("tenant.suspended", Severity::High),
        ("tenant.deleted", Severity::High),
        ("tenant.region_changed", Severity::Medium),
        ("apikey.rotated", Severity::Low),
        ("project.created", Severity::Low),
        ("role.defined", Severity::Low),
        ("role.deleted", Severity::Low),
        ("admin.action", Severity::Low),
        ("audit.purged", Severity::Low),
        ("audit.backup", Severity::Medium),
    ];

    #[test]
    fn every_event_type_round_trips_through_its_name() {
        let mut names = std::collections::HashSet::new();
        for &t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            assert!(names.insert(t.as_str()), "{t} named twice");
        }
        assert_eq!(
            "security.access_denie".parse::<EventType>(),
            Err(UnknownEventType("security.access_denie".into()))
        );
        assert!("".parse::<EventType>().is_err());
        assert!("AUTH.LOGIN".parse::<EventType>().is_err());
    }

    #[test]
    fn the_seed_table_and_our_events_are_all_there_with_their_severity() {
        for &(name, severity) in SEED.iter().chain(OURS) {
            let t: EventType = name.parse().unwrap();
            assert_eq!(t.severity(), severity, "{name}");
        }
        assert_eq!(EventType::ALL.len(), SEED.len() + OURS.len());
    }

    #[test]
    fn the_high_set_is_the_seeds_plus_tenant_deletion_and_suspension() {
        let high = |table: &[(&'static str, Severity)]| -> Vec<&'static str> {
            let mut v: Vec<_> = table
                .iter()
                .filter(|(_, s)| *s == Severity::High)
                .map(|(n, _)| *n)
                .collect();
            v.sort();
            v
        };
        let seed_high = high(SEED);
        assert_eq!(
            seed_high,
            [
                "apikey.revoked",
                "auth.login_failed",
                "security.access_denied",
                "security.suspicious",
                "user.deleted",
            ]
        );
        let ours: Vec<&str> = EventType::ALL
            .iter()
            .filter(|t| t.severity() == Severity::High)
            .map(|t| t.as_str())
            .collect();
        let seed_names: Vec<&str> = SEED.iter().map(|(n, _)| *n).collect();
        let mut ours_in_seed: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|n| seed_names.contains(n))
            .collect();
        ours_in_seed.sort();
        assert_eq!(ours_in_seed, seed_high, "HIGH among the seed's events");
        let mut beyond: Vec<&str> = ours
            .into_iter()
            .filter(|n| !seed_names.contains(n))
            .collect();
        beyond.sort();
        assert_eq!(beyond, ["tenant.deleted", "tenant.suspended"]);
    }
}
