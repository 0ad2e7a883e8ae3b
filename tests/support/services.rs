//! A Redis server and a PostgreSQL cluster of the test's own, on free
//! loopback ports, for the tests that stop and restart them: a test stops
//! only what it started, never the machine's shared services.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not come up in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `redis-server` on a port of its own, stopped by its pid.
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    /// Starts it (nothing kept on disk).
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: as abrupt as a lost node) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: it kept nothing).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt package redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server", Duration::from_secs(10), || answers(port));
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of its own (`initdb` in a temporary directory),
/// trust authentication, on a free port.
pub struct OwnPostgres {
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
    /// Extra server options (`-c ssl=on …`).
    options: String,
}

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (the
/// server refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    // Root? (`id -u`)
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl OwnPostgres {
    /// Creates and starts the cluster.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// Like [`OwnPostgres::start`], serving TLS with `(certificate chain
    /// PEM, private key PEM)` when given.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let bin = pg_bin();
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status();
                let _ = Command::new("chmod").arg("600").arg(&path).status();
            }
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                data.join("server.crt").display(),
                data.join("server.key").display()
            );
        }
        let mut pg = Self {
            port: free_port(),
            dir,
            bin,
            running: false,
            options,
        };
        pg.start_again();
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .expect("pg_ctl runs")
    }

    /// Starts the stopped cluster on its port.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let log = self.dir.path().join("server.log");
        let out = self.ctl(&["-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        let port = self.port;
        wait_until("PostgreSQL", Duration::from_secs(20), || answers(port));
    }

    /// Stops it (`immediate`: connections cut as in a crash).
    pub fn stop(&mut self) {
        if self.running {
            let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
