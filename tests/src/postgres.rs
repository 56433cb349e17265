//! A real PostgreSQL server for the platform tests: `initdb` and `postgres`
//! in a temporary folder, listening on an ephemeral loopback port and a
//! Unix socket in that folder, run as the `postgres` user when the tests run
//! as root (PostgreSQL refuses root). Stopped with `pg_ctl stop` on drop
//! (`runuser` does not pass signals on).

use anyhow::{Context, Result, bail};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The newest `/usr/lib/postgresql/N/bin` (Debian's layout), or `PATH`.
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        if Path::new(dir).join("initdb").is_file() {
            return Ok(PathBuf::from(dir));
        }
    }
    bail!("PostgreSQL is not installed: the platform tests need a real server (apt-get install -y postgresql)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command run as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server started by a test, stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Starts a server; `durable` keeps `fsync` on (benchmarks), tests
    /// turn it off to stay fast.
    pub fn start_with(durable: bool) -> Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("gate-pg-").tempdir()?;
        if is_root() {
            // The server user must own its folder.
            let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()).status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.path().display());
            }
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let data = dir.path().join("data");
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let mut command = as_server_user(&bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !durable {
            command.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        let child = command.spawn().context("starting postgres")?;
        let server = Postgres { dir, bin, port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(server.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `postgres` as the superuser.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with `psql` (for the tests' own checks).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = as_server_user(&self.bin.join("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
