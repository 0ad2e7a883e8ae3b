//! Configuration: one TOML file, `COSTGUARD_<SECTION>_<KEY>` environment
//! overrides, secrets from files.
//!
//! Loading is two steps (as in vector and oauth2-proxy): [`file`] holds the
//! serde structs as written, [`validate`] turns them into a [`Config`] of
//! parsed, bounded values. Both steps collect *every* problem, each with its
//! key path, so an operator fixes a file in one round instead of ten.
//! The environment comes in as an [`Env`] value, so tests never touch the
//! process environment.
//!
//! Both kinds of single sign-on provider hold one [`IdentityMapping`]
//! (tenant, roles, user id). The checks validation shares with the running
//! proxy ([`is_plain_name`], [`secure_url`]) live here too, so `config`
//! needs nothing from the stages above it.

mod checks;
pub mod file;
mod identity;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

pub use checks::{is_plain_name, secure_url};
// The shared backends' settings live with the backends (which need nothing
// from here); validation builds them.
pub use crate::rate_limit::redis::{RedisConfig, RedisDown, RedisMode};
pub use crate::store::postgres::PostgresConfig;
pub use file::FileConfig;
pub use identity::{
    AttributeNames, ClaimNames, IdentityMapping, NAME_ID, RoleSource, SourceNames, Sources,
};
pub use validate::{
    AdminConfig, AuditConfig, AuthConfig, BudgetConfig, Config, Limits, LogConfig, LogFormat,
    MetricsConfig, NAME_ID_EMAIL, OidcProviderConfig, PolicyConfig, ProxyConfig, RateLimitConfig,
    SamlProviderConfig, SsoConfig, StoreConfig, TracingConfig, UpstreamTarget,
};

/// Environment variables that start with the prefix but are not settings.
const NOT_SETTINGS: &[&str] = &["COSTGUARD_CONFIG"];
const ENV_PREFIX: &str = "COSTGUARD_";

/// One thing wrong with the configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path (`proxy.listen`), file name, or environment variable.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// In file order where it is known, never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

/// A snapshot of the environment variables that may carry settings.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The `COSTGUARD_*` variables of this process.
    pub fn from_process() -> Self {
        Self(
            std::env::vars()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .collect(),
        )
    }

    /// Explicit variables, for tests and embedding.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Reads `path` (if any), applies `env`, and validates.
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let (text, origin) = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => (text, p.display().to_string()),
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![Problem::new(
                        p.display().to_string(),
                        format!("cannot read: {e}"),
                    )],
                });
            }
        },
        None => (String::new(), "(defaults)".to_string()),
    };
    let (file, mut problems, from_env) = parse_lenient(&text, &origin, env)?;
    match validate::validate(file) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems }),
        Err(e) => {
            problems.extend(e.problems.into_iter().map(|p| Problem {
                key: describe(&from_env, p.key),
                message: p.message,
            }));
            Err(ConfigError { problems })
        }
    }
}

/// A key path, with the environment variable it came from, if any.
fn describe(from_env: &HashMap<String, String>, key: String) -> String {
    match from_env.get(&key) {
        Some(var) => format!("{key} (from {var})"),
        None => key,
    }
}

/// Parses TOML text and applies environment overrides, reporting unknown keys
/// and mistyped values all at once.
pub fn parse(text: &str, origin: &str, env: &Env) -> Result<FileConfig, ConfigError> {
    match parse_lenient(text, origin, env)? {
        (file, problems, _) if problems.is_empty() => Ok(file),
        (_, problems, _) => Err(ConfigError { problems }),
    }
}

/// Like [`parse`], but returns the problems beside a [`FileConfig`] in which
/// every unknown or mistyped key is left at its default, so that validation
/// can still report the problems of the rest. Fails only on a syntax error.
type Lenient = (FileConfig, Vec<Problem>, HashMap<String, String>);

fn parse_lenient(text: &str, origin: &str, env: &Env) -> Result<Lenient, ConfigError> {
    let mut table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
        problems: vec![Problem::new(origin, e.to_string().trim_end().to_string())],
    })?;
    let defaults = Table::try_from(FileConfig::default()).expect("defaults serialize to TOML");
    let mut problems = Vec::new();
    let from_env = apply_env(&mut table, &defaults, env, &mut problems);
    let describe = |key: String| describe(&from_env, key);

    let mut unknown = Vec::new();
    let mut bad: Vec<(String, Option<String>)> = Vec::new();
    let whole = serde_ignored::deserialize(Value::Table(table.clone()), |path| {
        unknown.push(path.to_string())
    });
    match whole {
        Ok(config) => {
            for key in unknown {
                problems.push(Problem::new(describe(key), "unknown key"));
            }
            return Ok((config, problems, from_env));
        }
        // Serde stops at the first mistyped value: deserialize each key on
        // its own (all keys have defaults) to find every one.
        Err(_) => {
            for (section, value) in &table {
                let entries: Vec<(Option<&String>, &Value)> = match value {
                    Value::Table(t) if defaults.contains_key(section) => {
                        t.iter().map(|(k, v)| (Some(k), v)).collect()
                    }
                    other => vec![(None, other)],
                };
                for (key, value) in entries {
                    let single = match key {
                        Some(k) => Table::from_iter([(
                            section.clone(),
                            Value::Table(Table::from_iter([(k.clone(), value.clone())])),
                        )]),
                        None => Table::from_iter([(section.clone(), value.clone())]),
                    };
                    let path = match key {
                        Some(k) => format!("{section}.{k}"),
                        None => section.clone(),
                    };
                    let mut unknown_here = Vec::new();
                    match serde_ignored::deserialize(Value::Table(single), |p| {
                        unknown_here.push(p.to_string())
                    }) {
                        Ok(FileConfig { .. }) => {
                            for key in unknown_here {
                                problems.push(Problem::new(describe(key), "unknown key"));
                            }
                        }
                        Err(e) => {
                            problems
                                .push(Problem::new(describe(path), toml_message(&e).to_string()));
                            bad.push((section.clone(), key.cloned()));
                        }
                    }
                }
            }
        }
    }
    // Leave the bad keys at their defaults; the rest still gets validated.
    for (section, key) in bad {
        match key {
            Some(k) => {
                if let Some(Value::Table(t)) = table.get_mut(&section) {
                    t.remove(&k);
                }
            }
            None => {
                table.remove(&section);
            }
        }
    }
    let rest = FileConfig::deserialize(Value::Table(table)).unwrap_or_default();
    Ok((rest, problems, from_env))
}

fn toml_message(e: &toml::de::Error) -> &str {
    e.message()
}

/// Applies `COSTGUARD_<SECTION>_<KEY>` variables onto `table`. A value is
/// parsed as the type of that key's default (integer, boolean, or a
/// comma-separated list), else taken as a string. Returns which keys came
/// from which variable, for error messages.
fn apply_env(
    table: &mut Table,
    defaults: &Table,
    env: &Env,
    problems: &mut Vec<Problem>,
) -> HashMap<String, String> {
    let mut origins = HashMap::new();
    for (var, raw) in &env.0 {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NOT_SETTINGS.contains(&var.as_str()) {
            continue;
        }
        let section = defaults.keys().find(|s| {
            rest.len() > s.len() + 1
                && rest[..s.len()].eq_ignore_ascii_case(s)
                && rest.as_bytes()[s.len()] == b'_'
        });
        let Some(section) = section else {
            problems.push(Problem::new(
                var.clone(),
                "not a setting: expected COSTGUARD_<SECTION>_<KEY> with a known section",
            ));
            continue;
        };
        let key = rest[section.len() + 1..].to_ascii_lowercase();
        let default = defaults
            .get(section)
            .and_then(Value::as_table)
            .and_then(|t| t.get(&key));
        let value = match default {
            Some(Value::Integer(_)) => match raw.trim().parse::<i64>() {
                Ok(n) => Value::Integer(n),
                Err(_) => {
                    problems.push(Problem::new(
                        var.clone(),
                        format!("expected an integer, got {raw:?}"),
                    ));
                    continue;
                }
            },
            Some(Value::Float(_)) => match raw.trim().parse::<f64>() {
                Ok(n) => Value::Float(n),
                Err(_) => {
                    problems.push(Problem::new(
                        var.clone(),
                        format!("expected a number, got {raw:?}"),
                    ));
                    continue;
                }
            },
            Some(Value::Boolean(_)) => match raw.trim() {
                "true" | "1" | "yes" => Value::Boolean(true),
                "false" | "0" | "no" => Value::Boolean(false),
                _ => {
                    problems.push(Problem::new(
                        var.clone(),
                        format!("expected true or false, got {raw:?}"),
                    ));
                    continue;
                }
            },
            Some(Value::Array(_)) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            // A map (`[proxy.region_upstreams]`): `name=value,name=value`.
            Some(Value::Table(_)) => {
                let mut map = Table::new();
                for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match pair.split_once('=') {
                        Some((k, v)) => {
                            map.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
                        }
                        None => problems.push(Problem::new(
                            var.clone(),
                            format!("expected name=value pairs separated by commas, got {pair:?}"),
                        )),
                    }
                }
                Value::Table(map)
            }
            _ => Value::String(raw.clone()),
        };
        match table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(t) => {
                t.insert(key.clone(), value);
                origins.insert(format!("{section}.{key}"), var.clone());
            }
            _ => problems.push(Problem::new(section.clone(), "expected a table")),
        }
    }
    origins
}

#[cfg(test)]
mod tests;

/// Validates an already parsed file (the demo builds one in code).
pub fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
    validate::validate(file)
}
