//! What the store holds: tenants with their tier limits, API keys (as
//! hashes), projects and users. Plain data with serde, shared by every store
//! backend and the admin API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A tenant's plan, which sets its default limits (design.md table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// 1,000 requests/day, 3 projects, 5 users, $100/month, 30 days retention.
    Free,
    /// 100,000 requests/day, 25 projects, 50 users, $10,000/month, 90 days.
    Standard,
    /// Unlimited, 365 days retention.
    Enterprise,
}

impl Tier {
    /// The seed's default limits for this tier (-1 = unlimited).
    pub fn default_limits(self) -> TenantLimits {
        match self {
            Tier::Free => TenantLimits {
                max_requests_per_day: 1_000,
                max_projects: 3,
                max_users: 5,
                max_monthly_cost: 100.0,
                retention_days: 30,
                rate_limit_per_minute: None,
                max_api_keys: None,
            },
            Tier::Standard => TenantLimits {
                max_requests_per_day: 100_000,
                max_projects: 25,
                max_users: 50,
                max_monthly_cost: 10_000.0,
                retention_days: 90,
                rate_limit_per_minute: None,
                max_api_keys: None,
            },
            Tier::Enterprise => TenantLimits {
                max_requests_per_day: -1,
                max_projects: -1,
                max_users: -1,
                max_monthly_cost: -1.0,
                retention_days: 365,
                rate_limit_per_minute: None,
                max_api_keys: None,
            },
        }
    }
}

/// A tenant's effective limits; -1 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Proxied requests per UTC day.
    pub max_requests_per_day: i64,
    /// Projects.
    pub max_projects: i64,
    /// Users.
    pub max_users: i64,
    /// Spend per month, in USD.
    pub max_monthly_cost: f64,
    /// Days audit records are kept.
    pub retention_days: i64,
    /// The tenant's request rate per key, set by a system admin; `None`:
    /// its tier's configured rate (`[rate_limit]`). A key's own
    /// `rate_limit_per_minute` can only lower it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Live (not revoked) API keys, set by a system admin; `None`: its
    /// tier's configured bound (`[auth] max_keys_*`); -1: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_api_keys: Option<i64>,
}

/// Active tenants work; suspended tenants' keys get 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Serving.
    Active,
    /// Every request with its credentials is refused (403 `tenant_suspended`).
    Suspended,
}

/// Per-tenant settings (the seed's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSettings {
    /// Where the tenant's data lives.
    pub data_region: String,
    /// Encryption at rest in the cost service.
    pub encryption_enabled: bool,
    /// Audit logging for the tenant.
    pub audit_logging: bool,
    /// Single sign-on enabled (enterprise by default).
    pub sso_enabled: bool,
    /// A custom domain, if any.
    pub custom_domain: Option<String>,
}

/// A tenant organisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// `org-` + 8 hex.
    pub tenant_id: String,
    /// Display name.
    pub organization_name: String,
    /// Who administers it.
    pub admin_email: String,
    /// Plan.
    pub tier: Tier,
    /// Effective limits (tier defaults plus overrides).
    pub limits: TenantLimits,
    /// Active or suspended.
    pub status: TenantStatus,
    /// Settings.
    pub settings: TenantSettings,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Whether a key can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable until `expires_at`.
    Active,
    /// Revoked: refused at once, forever.
    Revoked,
}

/// An API key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Stable id (UUID), the same across rotations.
    pub key_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// What it is for.
    pub description: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Roles held on some of the tenant's projects only (beside `roles`,
    /// which hold tenant-wide). Absent in documents written before grants
    /// existed, and left out when empty so such documents stay as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// Permission names narrowing the roles; empty = no narrowing.
    pub scopes: Vec<String>,
    /// Per-key rate limit; `None` = the tier default.
    pub rate_limit_per_minute: Option<u32>,
    /// When the key stops working.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Active or revoked.
    pub status: KeyStatus,
    /// SHA-256 of the current secret, hex.
    pub hash: String,
    /// SHA-256 of the previous secret during a rotation grace period.
    pub previous_hash: Option<String>,
    /// When the previous secret stops working.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_valid_until: Option<OffsetDateTime>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last rotation.
    #[serde(with = "time::serde::rfc3339::option")]
    pub rotated_at: Option<OffsetDateTime>,
    /// Who created it (`admin-token` or a key id).
    pub created_by: String,
}

/// A project within a tenant, with a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// `proj-` + 8 hex.
    pub project_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Monthly budget in USD.
    pub budget: f64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A user of a tenant (identities from SSO map onto these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Caller-chosen id, unique within the tenant.
    pub user_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Email.
    pub email: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Roles held on some of the tenant's projects only (see [`ApiKey::grants`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// Active, disabled (cannot log in or use a session or token), or
    /// deleted (a tombstone the admin API no longer shows, kept so the
    /// identity provider cannot log the user straight back in).
    #[serde(default)]
    pub status: UserStatus,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// Signs in; admin-assigned roles apply.
    #[default]
    Active,
    /// Refused at login and on every request with an existing session or
    /// token.
    Disabled,
    /// Removed through the admin API: refused like a disabled user,
    /// hidden from listings and not counted against `max_users`; a new
    /// `PUT` brings the user back.
    Deleted,
}

/// A role held on some of the tenant's projects only: it counts on a route
/// whose `{project}` (or, where the policy route says so, whose
/// `project_query` parameter) names one of `projects`, and only while its
/// conditions hold. Unknown fields are errors, here and in a stored
/// document: a condition this build does not know must refuse the grant
/// (or the whole identity), never be ignored into a wider one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A policy role or one of the tenant's custom roles.
    pub role: String,
    /// `proj-` ids of the tenant's projects.
    pub projects: Vec<String>,
    /// When the grant applies; `None`: always (on its projects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<GrantConditions>,
}

/// Conditions on a request's attributes, all of which must hold for a
/// grant to apply (see `grants` for why these two and not others).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConditions {
    /// Client address ranges (CIDR, or one address): the client as
    /// resolved through `proxy.trusted_proxies` must be in one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// A daily window in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_utc: Option<HoursUtc>,
}

/// A daily window of whole UTC hours: from `start:00` up to (not
/// including) `end:00`; past midnight when `start > end` (22 → 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursUtc {
    /// First hour (0-23).
    pub start: u8,
    /// Hour the window ends (0-23, not equal to `start`).
    pub end: u8,
}

/// A tenant's own role, built from existing permissions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomRole {
    /// Owning tenant.
    pub tenant_id: String,
    /// Name, unique within the tenant, never a policy role's name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Permission names.
    pub permissions: Vec<String>,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `prefix` + 8 hex characters from the OS CSPRNG (`org-1a2b3c4d`).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{prefix}{}", hex(&bytes))
}

/// Whether `s` looks like a tenant id: `org-` and 1-64 of `[A-Za-z0-9_-]`
/// (what costguard makes is `org-` + 8 hex).
pub fn is_tenant_id(s: &str) -> bool {
    s.strip_prefix("org-").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Whether `s` can name a data region (`us-east-1`, `eu-west-1`, …):
/// 1-128 of `A-Z a-z 0-9 . _ -`, so it is safe in a header, a metric label
/// and an audit record.
pub fn is_region(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` looks like a project id: `proj-` and 1-64 of
/// `[A-Za-z0-9_-]` (what costguard makes is `proj-` + 8 hex).
pub fn is_project_id(s: &str) -> bool {
    s.strip_prefix("proj-").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// SHA-256 of `data`.
///
/// ring's implementation, not the sha2 crate's: both use the CPU's SHA
/// extensions when it has them, but without them (older CPUs, and valgrind,
/// which hides them) ring's assembly takes ~40 % fewer instructions than
/// sha2's portable Rust (measured under callgrind), and the audit chain
/// hashes every proxied request's record.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha256_parts(&[data])
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The bytes of lower- or upper-case hex; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Now, in UTC, to the second (what the API shows).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A browser session after a single sign-on login. The cookie holds a
/// random secret; the store keeps only its SHA-256 (`token_hash`), so a copy
/// of the store cannot be replayed as cookies.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Public id (`sess-` + 16 hex), for listing and revocation.
    pub session_id: String,
    /// SHA-256 hex of the cookie's secret.
    pub token_hash: String,
    /// The user's tenant.
    pub tenant_id: String,
    /// The user id (from the provider's user claim).
    pub user_id: String,
    /// Email, when the provider gave one.
    #[serde(default)]
    pub email: Option<String>,
    /// Roles at login (or the last refresh).
    pub roles: Vec<String>,
    /// `oidc` or `saml`.
    pub auth_method: String,
    /// The provider's configured name.
    pub provider: String,
    /// Login time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The session ends here whatever happens (absolute lifetime).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Last use, for the idle timeout (written at most once a minute).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When the provider's tokens expire and a refresh is due (only with a
    /// refresh token).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub refresh_at: Option<OffsetDateTime>,
    /// The provider's refresh token, if it issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The last ID token, for the provider's logout (`id_token_hint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl std::fmt::Debug for Session {
    /// Never prints the provider's tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("roles", &self.roles)
            .field("auth_method", &self.auth_method)
            .field("provider", &self.provider)
            .field("expires_at", &self.expires_at)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}
