//! The admin API's JSON bodies (`admin::requests`), read as the router
//! reads them (`serde_json::from_slice`), then the field validators.
//!
//! Properties:
//! - strict: a body that reads has no field the type does not name, at
//!   any level (tenant limits and settings, grants and their conditions),
//!   so a `tenant_id` in a body can never move anything;
//! - `text` returns a trimmed, non-empty, single-line value within its
//!   length; `email` one `@` with both sides non-empty and no space;
//! - a grant's networks parse to their network (host bits cleared) and a
//!   compiled grant never panics.
#![no_main]

use costguard::admin::requests::{
    self, CreateKey, CreateProject, CreateTenant, PatchTenant, PutRole, PutUser, RotateKey,
};
use costguard::grants;
use costguard::model::Grant;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: &[&str] = &[
    "max_requests_per_day",
    "max_projects",
    "max_users",
    "max_monthly_cost",
    "retention_days",
    "rate_limit_per_minute",
    "max_api_keys",
];
const SETTINGS: &[&str] = &[
    "data_region",
    "encryption_enabled",
    "audit_logging",
    "sso_enabled",
    "custom_domain",
];

fn keys_within(v: Option<&Value>, allowed: &[&str], what: &str) {
    if let Some(Value::Object(m)) = v {
        for k in m.keys() {
            assert!(allowed.contains(&k.as_str()), "unknown field {k:?} in {what} read: {v:?}");
        }
    }
}

fn check_grants(v: &Value, grants: &[Grant]) {
    if let Some(Value::Array(gs)) = v.get("grants") {
        for g in gs {
            keys_within(Some(g), &["role", "projects", "conditions"], "grant");
            keys_within(g.get("conditions"), &["networks", "hours_utc"], "conditions");
            keys_within(
                g.get("conditions").and_then(|c| c.get("hours_utc")),
                &["start", "end"],
                "hours_utc",
            );
        }
    }
    for g in grants {
        let _ = grants::ProjectGrant::compile(g);
        for n in g.conditions.iter().flat_map(|c| &c.networks) {
            if let Some(net) = grants::parse_network(n) {
                assert_eq!(net, net.trunc());
            }
        }
    }
}

fn check_text(s: &str) {
    for max in [1, 8, 200] {
        if let Ok(v) = requests::text("f", s, max) {
            assert!(!v.is_empty() && v == v.trim() && v.chars().count() <= max);
            assert!(!v.chars().any(char::is_control), "{v:?}");
        }
    }
    if let Ok(v) = requests::email("f", s) {
        let (local, domain) = v.split_once('@').unwrap();
        assert!(!local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        assert!(!v.contains(' '), "{v:?}");
    }
    let _ = requests::is_id(s);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let top = |allowed: &[&str]| keys_within(value.as_ref(), allowed, "body");
    match which % 8 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<CreateTenant>(body) {
                top(&["organization_name", "admin_email", "tier", "limits", "data_region", "settings"]);
                let v = value.unwrap();
                keys_within(v.get("limits"), LIMITS, "limits");
                keys_within(v.get("settings"), SETTINGS, "settings");
                check_text(&b.organization_name);
                check_text(&b.admin_email);
            }
        }
        1 => {
            if serde_json::from_slice::<PatchTenant>(body).is_ok() {
                top(&[
                    "organization_name",
                    "admin_email",
                    "tier",
                    "limits",
                    "status",
                    "data_region",
                    "settings",
                ]);
                let v = value.unwrap();
                keys_within(v.get("limits"), LIMITS, "limits");
                keys_within(v.get("settings"), SETTINGS, "settings");
            }
        }
        2 => {
            if let Ok(b) = serde_json::from_slice::<CreateKey>(body) {
                top(&["description", "roles", "grants", "scopes", "rate_limit_per_minute", "expires_at"]);
                check_grants(value.as_ref().unwrap(), &b.grants);
                check_text(&b.description);
            }
        }
        3 => {
            if serde_json::from_slice::<RotateKey>(body).is_ok() {
                top(&["grace_seconds"]);
            }
        }
        4 => {
            if let Ok(b) = serde_json::from_slice::<CreateProject>(body) {
                top(&["name", "budget"]);
                check_text(&b.name);
                if let Ok(v) = requests::amount("budget", b.budget, false) {
                    assert!(v.is_finite() && v >= 0.0);
                }
            }
        }
        5 => {
            if let Ok(b) = serde_json::from_slice::<PutUser>(body) {
                top(&["email", "roles", "grants", "disabled"]);
                check_grants(value.as_ref().unwrap(), &b.grants);
                check_text(&b.email);
            }
        }
        6 => {
            if serde_json::from_slice::<PutRole>(body).is_ok() {
                top(&["description", "permissions"]);
            }
        }
        _ => check_text(&String::from_utf8_lossy(body)),
    }
});
