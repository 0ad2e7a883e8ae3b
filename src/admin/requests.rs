//! Admin request bodies: strict (unknown fields are errors, so a
//! `tenant_id` in a body can never move anything) and bounded.

use serde::Deserialize;
use time::OffsetDateTime;

use super::error::ApiError;
use crate::model::{Grant, TenantStatus, Tier};

/// `POST /admin/v1/tenants`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name.
    pub organization_name: String,
    /// Administrator email.
    pub admin_email: String,
    /// Plan.
    pub tier: Tier,
    /// Overrides of the tier's limits.
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
    /// Shortcut for `settings.data_region`.
    #[serde(default)]
    pub data_region: Option<String>,
    /// Settings overrides.
    #[serde(default)]
    pub settings: Option<SettingsPatch>,
}

/// `PATCH /admin/v1/tenants/{id}`: every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// New display name.
    #[serde(default)]
    pub organization_name: Option<String>,
    /// New administrator email.
    #[serde(default)]
    pub admin_email: Option<String>,
    /// New plan: limits return to its defaults, then `limits` applies.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Limit overrides.
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
    /// Suspend or reactivate.
    #[serde(default)]
    pub status: Option<TenantStatus>,
    /// Shortcut for `settings.data_region`.
    #[serde(default)]
    pub data_region: Option<String>,
    /// Settings overrides.
    #[serde(default)]
    pub settings: Option<SettingsPatch>,
}

/// Limit overrides; -1 means unlimited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Requests per UTC day.
    pub max_requests_per_day: Option<i64>,
    /// Projects.
    pub max_projects: Option<i64>,
    /// Users.
    pub max_users: Option<i64>,
    /// Monthly spend in USD.
    pub max_monthly_cost: Option<f64>,
    /// Audit retention in days.
    pub retention_days: Option<i64>,
    /// The rate every key of the tenant is held to, per minute (0: back to
    /// the tier's rate). Keys can only lower it.
    pub rate_limit_per_minute: Option<u32>,
    /// Live API keys (-1: unlimited).
    pub max_api_keys: Option<i64>,
}

/// Settings overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Data region.
    pub data_region: Option<String>,
    /// Encryption at rest.
    pub encryption_enabled: Option<bool>,
    /// Audit logging.
    pub audit_logging: Option<bool>,
    /// Single sign-on.
    pub sso_enabled: Option<bool>,
    /// Custom domain (`null` clears it).
    #[serde(default, deserialize_with = "explicit_null")]
    pub custom_domain: Option<Option<String>>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `POST /admin/v1/tenants/{id}/keys`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for.
    #[serde(default)]
    pub description: String,
    /// Roles; default `["viewer"]`.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Roles on some of the tenant's projects only.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Permissions narrowing the roles.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Per-key rate limit.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Expiry (RFC 3339), in the future.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// `POST /admin/v1/tenants/{id}/keys/{key_id}/rotate` (body optional)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old secret keeps working; default `auth.rotation_grace`.
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// `POST /admin/v1/tenants/{id}/projects`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Display name.
    pub name: String,
    /// Monthly budget in USD.
    pub budget: f64,
}

/// `PUT /admin/v1/tenants/{id}/users/{user_id}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutUser {
    /// Email.
    pub email: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Roles on some of the tenant's projects only.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// A disabled user cannot log in, and their sessions and tokens stop
    /// working.
    #[serde(default)]
    pub disabled: bool,
}

/// `PUT /admin/v1/tenants/{id}/roles/{name}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRole {
    /// What the role is for.
    #[serde(default)]
    pub description: String,
    /// Permission names.
    pub permissions: Vec<String>,
}

/// A non-empty single-line text of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::bad(format!("{field} must not be empty")));
    }
    if trimmed.chars().count() > max {
        return Err(ApiError::bad(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(trimmed.to_string())
}

/// A plausible email address (one `@`, both sides non-empty, no spaces).
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    let v = text(field, value, 254)?;
    match v.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !v.contains(' ') =>
        {
            Ok(v)
        }
        _ => Err(ApiError::bad(format!("{field} is not an email address"))),
    }
}

/// Whether a path id is safe to store and echo: 1 to 128 of
/// `[A-Za-z0-9._@-]`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A limit: -1 (unlimited) or more.
pub fn limit(field: &str, v: i64) -> Result<i64, ApiError> {
    if v < -1 {
        return Err(ApiError::bad(format!(
            "limits.{field} must be -1 (unlimited) or at least 0"
        )));
    }
    Ok(v)
}

/// A money amount: finite, at least 0 (or exactly -1 where unlimited is allowed).
pub fn amount(field: &str, v: f64, allow_unlimited: bool) -> Result<f64, ApiError> {
    if !v.is_finite() || v > 1e15 || (v < 0.0 && !(allow_unlimited && v == -1.0)) {
        return Err(ApiError::bad(format!(
            "{field} must be a non-negative amount"
        )));
    }
    Ok(v)
}
