//! One test's share of the machine's PostgreSQL (a schema of its own) and
//! Redis (a key prefix of its own), and replicas started on them exactly as
//! an operator would (`COSTGUARD_STORE_BACKEND=postgres`, …).

use std::process::Command;

use super::{Sidecar, Upstream, config_for};

/// The machine's PostgreSQL (trust auth, database `test`).
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The machine's Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn random_name(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!(
        "{prefix}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// One test's schema on the machine's PostgreSQL and key prefix on its
/// Redis; both removed when the test ends (also when it fails).
pub struct Shared {
    pub pg_url: String,
    pub schema: String,
    pub redis_url: String,
    pub prefix: String,
}

impl Shared {
    pub fn new() -> Self {
        Self::on(PG_URL, REDIS_URL)
    }

    pub fn on(pg_url: &str, redis_url: &str) -> Self {
        Self {
            pg_url: pg_url.to_string(),
            schema: random_name("cgrep_"),
            redis_url: redis_url.to_string(),
            prefix: random_name("cgrep-"),
        }
    }

    /// The environment of one replica.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("COSTGUARD_STORE_BACKEND".into(), "postgres".into()),
            ("COSTGUARD_STORE_URL".into(), self.pg_url.clone()),
            ("COSTGUARD_STORE_SCHEMA".into(), self.schema.clone()),
            ("COSTGUARD_RATE_LIMIT_BACKEND".into(), "redis".into()),
            (
                "COSTGUARD_RATE_LIMIT_REDIS_URL".into(),
                self.redis_url.clone(),
            ),
            (
                "COSTGUARD_RATE_LIMIT_REDIS_PREFIX".into(),
                self.prefix.clone(),
            ),
        ]
    }

    /// `n` replicas in front of `up`, with `extra` config and environment.
    pub fn replicas(
        &self,
        n: usize,
        up: &Upstream,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Vec<Sidecar> {
        (0..n).map(|_| self.replica(up, extra, env)).collect()
    }

    pub fn replica(&self, up: &Upstream, extra: &str, env: &[(&str, &str)]) -> Sidecar {
        let mut all = self.env();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Sidecar::start(&config_for(&up.url(), extra), &refs)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.pg_url, "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .output();
        let port = self.redis_url.rsplit(':').next().unwrap_or("6379");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli -p {port} --scan --pattern '{}*' | xargs -r redis-cli -p {port} del",
                self.prefix
            ))
            .output();
    }
}
