//! The `costguard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use costguard::config::{self, Env, FileConfig, LogFormat};
use costguard::server::{Server, shutdown_signal};

/// mimalloc instead of glibc's malloc: a request allocates a few dozen
/// small, short-lived blocks across the proxy's threads, which mimalloc's
/// per-thread free lists serve faster (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// costguard: authentication/authorization sidecar for LLM Cost Ops.
///
/// It sits in front of the cost service in the same pod, checks every
/// request, and forwards what is allowed with trusted X-CostOps-* identity
/// headers. Start with `costguard demo`.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log line format: human or json (default: the config's log.format).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    log_format: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy and admin listeners from a configuration file.
    ///
    /// Every key can be overridden by COSTGUARD_<SECTION>_<KEY>, for example
    /// COSTGUARD_PROXY_UPSTREAM=http://127.0.0.1:9000. See
    /// config/costguard.example.toml for every key. SIGTERM or SIGINT drains
    /// in-flight requests (proxy.shutdown_grace) and exits 0.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "COSTGUARD_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Validate the configuration (file, environment, certificates),
        /// print every problem, and exit: 0 if valid, 2 if not.
        #[arg(long)]
        check_config: bool,
    },
    /// Everything in one process, to try costguard: the proxy, the admin
    /// API, a built-in echo upstream that answers with what it received,
    /// and an embedded store.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy_listen: SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Echo upstream listen address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        echo_listen: SocketAddr,
        /// Directory of the embedded store.
        #[arg(long, default_value = "./costguard-data")]
        data_dir: PathBuf,
    },
    /// Apply the shared store's schema migrations (store.backend =
    /// "postgres") and exit: prints each migration applied, or "up to
    /// date". `serve` applies them too; this runs them ahead of a rollout.
    /// Exits 2 if the configuration is invalid or not for PostgreSQL, 1 if
    /// migrating fails (an edited migration, a newer database, no server).
    Migrate {
        /// The TOML configuration file (optional: the environment, e.g.
        /// COSTGUARD_STORE_BACKEND=postgres and COSTGUARD_STORE_URL, may
        /// be enough).
        #[arg(long, short, env = "COSTGUARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Operator tools for policy files: check, explain.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Operator tools for the audit log: verify.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Take an online, consistent backup of the embedded store and the
    /// audit log into DIR, from the running server.
    ///
    /// The server holds the store's lock, so it makes the snapshot itself:
    /// this asks its admin port (GET /admin/v1/backup, system_admin only,
    /// audited as audit.backup) and writes what it streams into DIR. The
    /// snapshot is one point in time for every store tree (writes wait
    /// while it is copied: under a millisecond for a small store, about
    /// 0.7 s per 100,000 keys; reads and proxied requests go on), and the
    /// audit log up to a record boundary with a signed head,
    /// so `costguard audit verify` passes on the restored copy.
    ///
    /// DIR must be new or empty; it is built in a hidden staging
    /// directory and put in place (0700, files 0600) once every file matched the server's
    /// SHA-256 and size, with manifest.json last. It holds the store's
    /// records (keys and session cookies only as hashes) and the audit
    /// files, never the admin token, the audit HMAC key or the cookie key:
    /// keep those with your secrets. With store.backend = "postgres" use
    /// pg_dump instead (see the README). Exits 0 when written, 2 on bad
    /// usage or configuration, 1 if the backup failed.
    Backup {
        /// The directory to write (missing or empty).
        dir: PathBuf,
        /// The configuration file: admin.listen and the admin token
        /// (admin.token_file, admin.token, COSTGUARD_ADMIN_TOKEN).
        #[arg(long, short, env = "COSTGUARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin port's URL (default: http://ADMIN.LISTEN, with
        /// 0.0.0.0 read as 127.0.0.1).
        #[arg(long, value_name = "URL")]
        admin_url: Option<String>,
        /// A file holding the admin token, or an API key with system_admin
        /// (never give a token on the command line).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Print the compliance report of the running server: each control
    /// (TLS, SSO, key expiry, rotation and use, admin port, audit log,
    /// retention, residency, rate limits, policy) with its status computed
    /// from the live configuration and state, the SOC 2, GDPR and HIPAA
    /// clauses it supports, its evidence and a remediation hint.
    ///
    /// Asks the admin port (GET /admin/v1/compliance) like `costguard
    /// backup`: --admin-url or admin.listen from --config, and the admin
    /// token (a system_admin sees every tenant) or a tenant's admin-role
    /// API key (its own tenant only). Exits 0 when no control fails, 1
    /// when any fails (warnings do not), 2 on bad usage or configuration,
    /// a refused token or an unreachable server.
    Compliance {
        /// The configuration file: admin.listen and the admin token
        /// (admin.token_file, admin.token, COSTGUARD_ADMIN_TOKEN).
        #[arg(long, short, env = "COSTGUARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin port's URL (default: http://ADMIN.LISTEN, with
        /// 0.0.0.0 read as 127.0.0.1).
        #[arg(long, value_name = "URL")]
        admin_url: Option<String>,
        /// A file holding the admin token or an admin-role API key (never
        /// give a token on the command line).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Only this tenant's controls, plus the deployment-wide ones.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<String>,
        /// Print the server's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup made by `costguard backup` onto a fresh data
    /// directory, offline (no server may run on it).
    ///
    /// Checks every file of DIR against its manifest first (a changed,
    /// truncated, missing or added file refuses the backup and changes
    /// nothing), refuses a data or audit directory that exists and is not
    /// empty (a live store is never overwritten), checks that the audit
    /// key is the one that signed the backup's audit head, then builds the
    /// store and the audit log beside their targets, verifies the log, and
    /// renames them into place. Targets come from --config (store.path,
    /// audit.dir, audit.hmac_key_file) or the flags. Exits 0 when
    /// restored, 2 on bad usage or configuration (store.backend =
    /// "postgres": use pg_restore/psql), 1 if refused or failed.
    Restore {
        /// The backup directory.
        dir: PathBuf,
        /// The configuration the restored server will use.
        #[arg(long, short, env = "COSTGUARD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory to create (default: the configuration's
        /// store.path).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The audit directory to create (default: the configuration's
        /// audit.dir, else DATA_DIR/audit).
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
        /// The audit HMAC key that signed the backup (the old
        /// audit.hmac_key_file or its Secret): copied to audit.hmac_key_file
        /// when that does not exist yet.
        #[arg(long, value_name = "FILE")]
        audit_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check an audit directory offline: every record's hash, the chain
    /// across rotated files, the file numbering, and the signed head (so a
    /// changed byte, a removed record, a removed file and a cut tail are all
    /// found). Prints OK with the counts and exits 0, or the first broken
    /// place (file:line: why) and exits 1.
    ///
    /// With --shipped: checks every replica's stream shipped to PostgreSQL
    /// (`[store] backend = "postgres"`), from the database alone: each
    /// stream's chain from its first shipped record (gaps only where a
    /// signed retention anchor covers them), each record's hash, and the
    /// anchored head's hash and signature. Prints one line per stream (ok
    /// or BROKEN with why) and exits 1 if any is broken.
    Verify {
        /// The audit directory (audit.dir; by default costguard-data/audit).
        #[arg(required_unless_present = "shipped")]
        dir: Option<PathBuf>,
        /// The HMAC key that signs the head (audit.hmac_key_file). Default:
        /// audit-hmac.key beside DIR, if it exists; without a key the head's
        /// signature is not checked (said in the output). With --shipped:
        /// by default the configuration's audit.hmac_key_file
        /// (COSTGUARD_AUDIT_HMAC_KEY_FILE), and required.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Verify the streams shipped to PostgreSQL instead of a directory.
        #[arg(long, conflicts_with = "dir")]
        shipped: bool,
        /// With --shipped: the configuration file (its [store] and
        /// [audit]; COSTGUARD_STORE_URL, COSTGUARD_STORE_SCHEMA and the
        /// other COSTGUARD_* variables apply on top).
        #[arg(
            long,
            short,
            env = "COSTGUARD_CONFIG",
            value_name = "FILE",
            requires = "shipped"
        )]
        config: Option<PathBuf>,
    },
}

/// `costguard audit verify --shipped`: exit 0 if every stream verifies,
/// 1 if one does not, 2 if it could not be checked.
fn verify_shipped(
    config: Option<&std::path::Path>,
    key_file: Option<&std::path::Path>,
) -> ExitCode {
    use costguard::audit::ship;
    let config = match config::load(config, &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(pg) = config.store.postgres.as_ref() else {
        eprintln!(
            "error: --shipped needs the shared store: [store] backend = \"postgres\" (COSTGUARD_STORE_BACKEND, COSTGUARD_STORE_URL)"
        );
        return ExitCode::from(2);
    };
    // The key the replicas sign with: the named file, else (no file named
    // in the configuration) the copy the replicas keep in the store.
    let named = key_file.unwrap_or(&config.audit.hmac_key_file);
    let from_store = key_file.is_none()
        && config.audit.hmac_key_file == config.store.path.join("audit-hmac.key")
        && !named.exists();
    let file_key = if from_store {
        None
    } else {
        match costguard::audit::writer::read_key(named) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("{}: cannot read the key: {e}", named.display());
                return ExitCode::from(2);
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let pool = ship::connect(pg)?;
        let key = match file_key {
            Some(key) => key,
            None => costguard::store::postgres::read_shared_key(&pool, "audit-hmac")
                .await
                .map_err(|e| ship::ShipError::Config(e.to_string()))?
                .ok_or_else(|| {
                    ship::ShipError::Config(
                        "no audit key: name audit.hmac_key_file (or --key-file); the store holds none".into(),
                    )
                })?,
        };
        ship::verify::verify_shipped(&pool, &key).await
    });
    let streams = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if streams.is_empty() {
        println!("no shipped audit streams");
    }
    let mut failed = false;
    for s in &streams {
        let anchored = s.anchored_at.as_deref().unwrap_or("never");
        match &s.broken {
            None => println!(
                "{}: ok ({} records, {} to {}, anchored head {} at {anchored}{})",
                s.stream,
                s.records,
                s.first_seq,
                s.last_seq,
                s.head_seq,
                if s.pruned > 0 {
                    format!(
                        "; {} records pruned by retention before shipping, covered by a signed anchor",
                        s.pruned
                    )
                } else {
                    String::new()
                }
            ),
            Some(why) => {
                failed = true;
                println!("{}: BROKEN {why}", s.stream);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn audit_command(command: AuditCommand) -> ExitCode {
    use costguard::audit::verify;
    let AuditCommand::Verify {
        dir,
        key_file,
        shipped,
        config,
    } = command;
    if shipped {
        return verify_shipped(config.as_deref(), key_file.as_deref());
    }
    let Some(dir) = dir else {
        eprintln!("error: give the audit directory, or --shipped");
        return ExitCode::from(2);
    };
    let key_file = key_file.or_else(|| {
        let beside = dir.parent()?.join("audit-hmac.key");
        beside.exists().then_some(beside)
    });
    let key = match &key_file {
        Some(path) => match costguard::audit::writer::read_key(path) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("{}: cannot read the key: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    match verify::verify(&dir, key.as_deref()) {
        Ok(report) => {
            let erased = match (report.erased, key.is_some()) {
                (0, _) => String::new(),
                (n, true) => format!("; {n} erased records, seals verified"),
                (n, false) => format!("; {n} erased records, seals NOT checked: no key"),
            };
            let after_head = match report.after_head {
                0 => String::new(),
                n => format!(
                    "; {n} records after the signed head (written just before a crash, or appended: the signature does not cover them)"
                ),
            };
            println!(
                "{}: OK ({} records in {} files; head signature {}{erased}{after_head})",
                dir.display(),
                report.records,
                report.files,
                if report.signature_checked {
                    "verified"
                } else {
                    "NOT checked: no key"
                }
            );
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("BROKEN {broken}");
            ExitCode::from(1)
        }
    }
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy directory offline. Prints `file:line: message` for
    /// every problem and exits 1, or a summary and exits 0.
    Check {
        /// The directory of *.toml policy files.
        dir: PathBuf,
    },
    /// Show how a policy decides one request: the matched route (file:line),
    /// the permission it needs, the caller's permissions, and the decision
    /// with its reason. Exits 0 when allowed, 1 when denied.
    Explain {
        /// The policy directory.
        #[arg(long, value_name = "DIR", default_value = "policies")]
        policy: PathBuf,
        /// A role of the caller (repeat for several).
        #[arg(long = "role", value_name = "ROLE", required_unless_present = "grants")]
        roles: Vec<String>,
        /// A project-scoped grant of the caller (repeat for several):
        /// `ROLE:PROJ[,PROJ…]`, or a grant as the admin API shows it
        /// (JSON, with `conditions`).
        #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
        grants: Vec<costguard::model::Grant>,
        /// The client address, for grants with a `networks` condition.
        #[arg(long, value_name = "ADDR")]
        client: Option<std::net::IpAddr>,
        /// Scopes (permission names) narrowing the roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// The caller's tenant id, to check a {tenant} segment.
        #[arg(long)]
        tenant: Option<String>,
        /// The HTTP method.
        method: String,
        /// The request path, with its query (read only for a route's
        /// `project_query`).
        path: String,
    },
}

/// A `--grant`: `ROLE:PROJ[,PROJ…]` or a JSON grant.
fn parse_grant(s: &str) -> Result<costguard::model::Grant, String> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str(s).map_err(|e| format!("not a grant: {e}"));
    }
    let (role, projects) = s
        .split_once(':')
        .ok_or("expected ROLE:PROJ[,PROJ…] or a JSON grant")?;
    let projects: Vec<String> = projects.split(',').map(|p| p.trim().to_string()).collect();
    if role.is_empty() || projects.iter().any(|p| !costguard::model::is_project_id(p)) {
        return Err("expected ROLE:PROJ[,PROJ…] with proj- ids".into());
    }
    Ok(costguard::model::Grant {
        role: role.to_string(),
        projects,
        conditions: None,
    })
}

fn policy_command(command: PolicyCommand) -> ExitCode {
    use costguard::authz::{explain, policy};
    match command {
        PolicyCommand::Check { dir } => match policy::load_dir(&dir) {
            Ok(p) => {
                println!(
                    "{}: OK ({} roles, {} routes, {} shadow routes; files: {})",
                    dir.display(),
                    p.role_names().len(),
                    p.enforce.routes().len(),
                    p.shadow.routes().len(),
                    p.files.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                for problem in &e.0 {
                    eprintln!("{problem}");
                }
                ExitCode::from(1)
            }
        },
        PolicyCommand::Explain {
            policy: dir,
            roles,
            scopes,
            tenant,
            grants,
            client,
            method,
            path,
        } => {
            let p = match policy::load_dir(&dir) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{}: invalid policy:\n{e}", dir.display());
                    return ExitCode::from(2);
                }
            };
            let caller = explain::Caller {
                roles: &roles,
                scopes: &scopes,
                tenant: tenant.as_deref(),
                grants: &grants,
                client,
            };
            let e = explain::explain(&p, &caller, &method, &path);
            for line in &e.lines {
                println!("{line}");
            }
            if e.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The configuration file's settings with the environment applied, without
/// the full validation `serve` does (backup and restore need a few keys, and
/// run where the policy directory or SSO secrets may not be).
fn file_config(path: Option<&std::path::Path>) -> Result<FileConfig, String> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (String::new(), "(environment)".to_string()),
    };
    config::parse(&text, &origin, &Env::from_process()).map_err(|e| format!("{origin}: {e}"))
}

const POSTGRES_BACKUP: &str = "store.backend is \"postgres\": costguard backup and restore are for the embedded sled store. Back up the shared store with pg_dump of its schema (pg_dump --format=custom --schema=SCHEMA URL > costguard.dump) and restore it with pg_restore (see the README, Backup and restore); Redis holds only rate-limit windows and needs no backup";

/// The running server's admin port and the credential to show it, for the
/// commands that ask it (`backup`, `compliance`): `--admin-url`, else
/// `http://ADMIN.LISTEN` (0.0.0.0 read as 127.0.0.1); `--token-file`, else
/// admin.token_file, else admin.token (COSTGUARD_ADMIN_TOKEN).
fn admin_target(
    file: &FileConfig,
    admin_url: Option<String>,
    token_file: Option<&std::path::Path>,
) -> Result<costguard::backup::client::Target, String> {
    let admin_url = admin_url.unwrap_or_else(|| {
        let listen = file
            .admin
            .listen
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:");
        format!("http://{listen}")
    });
    let token = match (
        token_file,
        &file.admin.token,
        file.admin.token_file.as_deref(),
    ) {
        (Some(path), _, _) | (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("{}: cannot read the admin token: {e}", path.display()))?,
        (None, Some(token), _) => token.trim().to_string(),
        (None, None, None) => {
            return Err(
                "error: no admin token: give --token-file FILE, or a configuration with admin.token_file (or COSTGUARD_ADMIN_TOKEN)".into(),
            );
        }
    };
    Ok(costguard::backup::client::Target { admin_url, token })
}

/// `costguard compliance`: 0 when no control fails, 1 when one does, 2
/// on bad usage, configuration or connection (or a refused token).
async fn compliance_command(
    config: Option<&std::path::Path>,
    admin_url: Option<String>,
    token_file: Option<&std::path::Path>,
    tenant: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use costguard::compliance::client;
    let target = match file_config(config).and_then(|f| admin_target(&f, admin_url, token_file)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = match client::fetch(&target, tenant).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", client::render_text(&report));
    }
    Ok(if client::any_fail(&report) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `costguard backup DIR`: 0 written, 2 bad usage or configuration, 1 failed.
async fn backup_command(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    admin_url: Option<String>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let file = match file_config(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if file.store.backend == "postgres" {
        eprintln!("error: {POSTGRES_BACKUP}");
        return Ok(ExitCode::from(2));
    }
    let target = match admin_target(&file, admin_url, token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let started = std::time::Instant::now();
    match costguard::backup::client::backup(&target, dir).await {
        Ok(m) => {
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            let records: u64 = m.store.records.values().sum();
            println!(
                "{}: backup written ({} files, {bytes} bytes; store: {records} records, writes paused {:.1} ms; audit: {}) in {:.2} s",
                dir.display(),
                m.files.len() + 1,
                m.store.writes_paused_micros as f64 / 1000.0,
                m.audit.as_ref().map_or("disabled".to_string(), |a| format!(
                    "{} records up to seq {}",
                    a.records, a.last_seq
                )),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `costguard restore DIR`: 0 restored, 2 bad usage or configuration, 1
/// refused or failed.
fn restore_command(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
    audit_dir: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
) -> ExitCode {
    use costguard::backup::restore;
    let file = match file_config(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if file.store.backend == "postgres" {
        eprintln!("error: {POSTGRES_BACKUP}");
        return ExitCode::from(2);
    }
    if config.is_none() && data_dir.is_none() {
        eprintln!("error: give --config FILE (its store.path) or --data-dir DIR");
        return ExitCode::from(2);
    }
    let data_dir = data_dir.unwrap_or_else(|| file.store.path.clone());
    let under = |p: &std::path::Path, default: &str| {
        if p.as_os_str().is_empty() {
            data_dir.join(default)
        } else {
            p.to_path_buf()
        }
    };
    let targets = restore::Targets {
        audit_dir: file
            .audit
            .enabled
            .then(|| audit_dir.unwrap_or_else(|| under(&file.audit.dir, "audit"))),
        key_file: under(&file.audit.hmac_key_file, "audit-hmac.key"),
        key_from: audit_key_file,
        data_dir,
    };
    let started = std::time::Instant::now();
    match restore::restore(dir, &targets) {
        Ok(r) => {
            let records: u64 = r.records.values().sum();
            println!(
                "{}: restored into {} ({records} store records; {} audit records{}{}) in {:.2} s",
                dir.display(),
                targets.data_dir.display(),
                r.audit_records,
                targets
                    .audit_dir
                    .as_ref()
                    .map(|a| format!(" in {}", a.display()))
                    .unwrap_or_default(),
                if r.key_written {
                    format!("; audit key written to {}", targets.key_file.display())
                } else {
                    String::new()
                },
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `./policies` when run from a checkout; otherwise the built-in default
/// policy, written under the data directory (and editable there).
fn demo_policy_dir(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let local = PathBuf::from("policies");
    if local.is_dir() {
        return Ok(local);
    }
    let dir = data_dir.join("policies");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in costguard::authz::policy::DEFAULT_FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(dir)
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn main() -> ExitCode {
    // Before any file is created: the store, audit files and keys are
    // this user's alone.
    costguard::private_files::set_private_umask();
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Policy { command } => return policy_command(command),
        Command::Audit { command } => return audit_command(command),
        Command::Restore {
            dir,
            config,
            data_dir,
            audit_dir,
            audit_key_file,
        } => return restore_command(&dir, config.as_deref(), data_dir, audit_dir, audit_key_file),
        command => Cli { command, ..cli },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                check_config,
            } => serve(&config, check_config, cli.log_format.as_deref()).await,
            Command::Migrate { config } => migrate(config.as_deref()).await,
            Command::Backup {
                dir,
                config,
                admin_url,
                token_file,
            } => backup_command(&dir, config.as_deref(), admin_url, token_file.as_deref()).await,
            Command::Compliance {
                config,
                admin_url,
                token_file,
                tenant,
                json,
            } => {
                compliance_command(
                    config.as_deref(),
                    admin_url,
                    token_file.as_deref(),
                    tenant.as_deref(),
                    json,
                )
                .await
            }
            Command::Policy { .. } | Command::Audit { .. } | Command::Restore { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::Demo {
                proxy_listen,
                admin_listen,
                echo_listen,
                data_dir,
            } => {
                demo(
                    proxy_listen,
                    admin_listen,
                    echo_listen,
                    data_dir,
                    cli.log_format.as_deref(),
                )
                .await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    path: &std::path::Path,
    check_only: bool,
    log_format: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut config = match config::load(Some(path), &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    if check_only {
        if let Err(e) = costguard::authz::policy::load_dir(&config.policy.dir) {
            eprintln!("{}: invalid policy:\n{e}", config.policy.dir.display());
            return Ok(ExitCode::from(2));
        }
        for w in &config.warnings {
            eprintln!("{}: warning: {w}", path.display());
        }
        println!("{}: configuration is valid", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    // --log-format wins over the file, for every log line (access log too).
    config.log.format = log_format
        .and_then(LogFormat::parse)
        .unwrap_or(config.log.format);
    costguard::telemetry::init(config.log.format, &config.log.level);
    run(config).await
}

/// `costguard migrate`: the shared store's migrations, nothing else.
async fn migrate(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let origin = path.map_or("(environment)".to_string(), |p| p.display().to_string());
    let config = match config::load(path, &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{origin}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(pg) = &config.store.postgres else {
        eprintln!(
            "{origin}: costguard migrate is for the shared store, but store.backend is not \
             \"postgres\" (set it, or COSTGUARD_STORE_BACKEND=postgres); the embedded sled \
             store needs no migrations"
        );
        return Ok(ExitCode::from(2));
    };
    match costguard::store::postgres::migrate(pg).await {
        Ok(applied) if applied.is_empty() => {
            println!("schema {}: up to date", pg.schema);
            Ok(ExitCode::SUCCESS)
        }
        Ok(applied) => {
            for name in &applied {
                println!("schema {}: applied {name}", pg.schema);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            // StoreError never carries the URL.
            eprintln!("error: schema {}: {e}", pg.schema);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run(config: config::Config) -> anyhow::Result<ExitCode> {
    for w in &config.warnings {
        tracing::warn!("Configuration: {w}.");
    }
    let server = Server::bind(&config).await.context("startup failed")?;
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    proxy_listen: SocketAddr,
    admin_listen: SocketAddr,
    echo_listen: SocketAddr,
    data_dir: PathBuf,
    log_format: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let echo = costguard::echo::spawn(echo_listen)
        .await
        .with_context(|| format!("cannot start the echo upstream on {echo_listen}"))?;
    let admin_token = format!("demo-admin-{}", costguard::model::hex(&random_bytes()));
    let mut file = FileConfig::default();
    file.proxy.listen = proxy_listen.to_string();
    file.proxy.upstream = format!("http://{echo}");
    file.admin.listen = admin_listen.to_string();
    file.admin.token = Some(admin_token.clone());
    file.store.path = data_dir.clone();
    file.policy.dir = demo_policy_dir(&data_dir)?;
    file.log.format = log_format.unwrap_or("human").to_string();
    let config = config::from_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    costguard::telemetry::init(config.log.format, "info");
    let server = Server::bind(&config).await.context("demo startup failed")?;
    let (proxy, admin) = (server.proxy_addr(), server.admin_addr());
    let keys = costguard::demo::seed(server.ops())
        .await
        .map_err(|e| anyhow::anyhow!("seeding the demo data failed: {e}"))?;
    let mut out = format!(
        "costguard demo\n\n\
         proxy   http://{proxy}   (checks the API key, forwards to the echo upstream)\n\
         admin   http://{admin}   (admin API, /health, /ready)\n\
         echo    http://{echo}    (answers with the request it received, as JSON)\n\
         store   {data}\n\n\
         Admin token (system_admin; new each run):\n  {admin_token}\n\n\
         The seed's tenants, with one new key per role (shown once; older demo keys are revoked):\n",
        data = data_dir.display()
    );
    for k in &keys {
        out.push_str(&format!(
            "\n  {org} ({tenant}), role {role}:\n    curl -s http://{proxy}/v1/tenants/{tenant}/costs -H 'Authorization: Bearer {secret}'\n",
            org = k.organization,
            tenant = k.tenant_id,
            role = k.role,
            secret = k.secret,
        ));
    }
    let acme = &keys[0].tenant_id;
    out.push_str(&format!(
        "\nThe echo shows the X-CostOps-* identity headers the upstream receives.\n\
         Usage counts real requests:\n\
         \x20 curl -s http://{admin}/admin/v1/tenants/{acme}/usage -H 'Authorization: Bearer {admin_token}'\n\n\
         Roles and routes come from {policy} (edits apply within a second).\n\
         Try the viewer key on /costs/export (403), or on another tenant's path (403).\n\
         Every decision is in the audit log: costguard audit verify {audit}\n\
         Single sign-on (OIDC, SAML) needs an identity provider: see the README. Ctrl-C stops.\n",
        policy = config.policy.dir.display(),
        audit = config.audit.dir.display(),
    ));
    println!("{out}");
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}
