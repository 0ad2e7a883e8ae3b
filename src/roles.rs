//! The seed's permissions (`rbac_system.py`) as a bitset, and its six roles
//! as a reference table. Which roles exist at run time, and what they grant,
//! comes only from the policy files (`authz::policy`); [`BUILT_IN`] is the
//! seed's table that the shipped `policies/roles.toml` is tested against.

use std::fmt;

/// One of the thirteen permissions, in the seed's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read cost data.
    ViewCosts,
    /// Export cost data.
    ExportCosts,
    /// Read budgets.
    ViewBudgets,
    /// Create budgets.
    CreateBudgets,
    /// Change budgets.
    EditBudgets,
    /// Delete budgets.
    DeleteBudgets,
    /// Read analytics.
    ViewAnalytics,
    /// Generate reports.
    CreateReports,
    /// Manage a tenant's users.
    ManageUsers,
    /// Manage a tenant's projects.
    ManageProjects,
    /// Manage a tenant's API keys.
    ManageApiKeys,
    /// Read audit logs.
    ViewAuditLogs,
    /// Everything, across tenants.
    SystemAdmin,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 13] = [
        Self::ViewCosts,
        Self::ExportCosts,
        Self::ViewBudgets,
        Self::CreateBudgets,
        Self::EditBudgets,
        Self::DeleteBudgets,
        Self::ViewAnalytics,
        Self::CreateReports,
        Self::ManageUsers,
        Self::ManageProjects,
        Self::ManageApiKeys,
        Self::ViewAuditLogs,
        Self::SystemAdmin,
    ];

    /// The wire name (`view_costs`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ViewCosts => "view_costs",
            Self::ExportCosts => "export_costs",
            Self::ViewBudgets => "view_budgets",
            Self::CreateBudgets => "create_budgets",
            Self::EditBudgets => "edit_budgets",
            Self::DeleteBudgets => "delete_budgets",
            Self::ViewAnalytics => "view_analytics",
            Self::CreateReports => "create_reports",
            Self::ManageUsers => "manage_users",
            Self::ManageProjects => "manage_projects",
            Self::ManageApiKeys => "manage_api_keys",
            Self::ViewAuditLogs => "view_audit_logs",
            Self::SystemAdmin => "system_admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions (one bit each), cheap to copy and combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions(u16);

impl Permissions {
    /// No permission.
    pub const NONE: Self = Self(0);
    /// Every permission.
    pub const ALL: Self = Self((1 << 13) - 1);

    /// The set of `perms`.
    pub const fn of(perms: &[Permission]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < perms.len() {
            bits |= perms[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Whether `p` is in the set.
    pub const fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Whether every permission of `other` is in the set.
    pub const fn includes(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Intersection.
    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The set without `p`.
    pub const fn without(self, p: Permission) -> Self {
        Self(self.0 & !p.bit())
    }

    /// The permissions in the set, in the seed's order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

use Permission as P;

/// The seed's six roles: (name, display name, permissions). A reference:
/// the running policy comes from `policies/`.
pub const BUILT_IN: [(&str, &str, Permissions); 6] = [
    (
        "viewer",
        "Viewer",
        Permissions::of(&[P::ViewCosts, P::ViewBudgets, P::ViewAnalytics]),
    ),
    (
        "analyst",
        "Cost Analyst",
        Permissions::of(&[
            P::ViewCosts,
            P::ExportCosts,
            P::ViewBudgets,
            P::ViewAnalytics,
            P::CreateReports,
        ]),
    ),
    (
        "budget_manager",
        "Budget Manager",
        Permissions::of(&[
            P::ViewCosts,
            P::ViewBudgets,
            P::CreateBudgets,
            P::EditBudgets,
            P::DeleteBudgets,
            P::ViewAnalytics,
        ]),
    ),
    (
        "project_admin",
        "Project Administrator",
        Permissions::of(&[
            P::ViewCosts,
            P::ExportCosts,
            P::ViewBudgets,
            P::CreateBudgets,
            P::EditBudgets,
            P::ManageProjects,
            P::ViewAnalytics,
            P::CreateReports,
        ]),
    ),
    (
        "admin",
        "Administrator",
        Permissions::of(&[
            P::ViewCosts,
            P::ExportCosts,
            P::ViewBudgets,
            P::CreateBudgets,
            P::EditBudgets,
            P::DeleteBudgets,
            P::ViewAnalytics,
            P::CreateReports,
            P::ManageUsers,
            P::ManageProjects,
            P::ManageApiKeys,
            P::ViewAuditLogs,
        ]),
    ),
    ("system_admin", "System Administrator", Permissions::ALL),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn built_in(name: &str) -> Option<Permissions> {
        BUILT_IN
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, p)| *p)
    }

    fn permissions_of(roles: &[&str]) -> Permissions {
        roles
            .iter()
            .filter_map(|r| built_in(r))
            .fold(Permissions::NONE, Permissions::union)
    }

    #[test]
    fn roles_match_the_seed() {
        assert_eq!(built_in("viewer").unwrap().iter().count(), 3);
        assert_eq!(built_in("analyst").unwrap().iter().count(), 5);
        assert_eq!(built_in("budget_manager").unwrap().iter().count(), 6);
        assert_eq!(built_in("project_admin").unwrap().iter().count(), 8);
        assert_eq!(built_in("admin").unwrap().iter().count(), 12);
        assert_eq!(built_in("system_admin").unwrap().iter().count(), 13);
        assert!(!built_in("admin").unwrap().contains(Permission::SystemAdmin));
        assert!(
            !built_in("project_admin")
                .unwrap()
                .contains(Permission::DeleteBudgets)
        );
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn union_and_inclusion() {
        let both = permissions_of(&["viewer", "budget_manager"]);
        assert!(both.includes(built_in("viewer").unwrap()));
        assert!(!built_in("viewer").unwrap().includes(both));
        assert_eq!(permissions_of(&["nope"]), Permissions::NONE);
    }
}
