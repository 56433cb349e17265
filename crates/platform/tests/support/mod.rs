//! Support for the platform's process-level tests: a platform.toml for a
//! test's PostgreSQL and Mosquitto, and ingest replicas run as real
//! `gate-platform` processes (so one can be killed with SIGKILL).

#![allow(dead_code)]

use anyhow::{Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gate-platform");

/// A broker able to hold what a stopped replica's persistent session
/// queues (Mosquitto keeps 1000 messages per client by default and drops
/// the rest).
pub const BROKER_CONF: &str = "allow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 100\n";

/// Writes `platform.toml` into `dir` and returns its path.
pub fn write_config(dir: &Path, pg_url: &str, mqtt_port: u16, extra: &str) -> PathBuf {
    let path = dir.join("platform.toml");
    let text = format!(
        "[postgres]\nurl = \"{pg_url}\"\npool_size = 4\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n\
         client_id = \"platform-test\"\nkeep_alive_s = 5\n\n{extra}\n"
    );
    std::fs::write(&path, text).expect("config written");
    path
}

/// Runs `gate-platform --config CONFIG ARGS...` to completion.
pub fn run(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--config").arg(config).args(args).output().expect("gate-platform runs")
}

/// One `gate-platform ingest --replica NAME` process and its log.
pub struct Replica {
    pub name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Replica {
    pub fn start(config: &Path, name: &str) -> Result<Self> {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["ingest", "--replica", name])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Ok(Replica { name: name.into(), child, log })
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Waits until the log shows `needle` `count` times.
    pub async fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            if Instant::now() > deadline {
                bail!("replica {} did not log {needle:?} {count}x within {timeout:?}; log:\n{}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until all four subscriptions (events, alerts, status, sync)
    /// are acknowledged.
    pub async fn wait_subscribed(&self) -> Result<()> {
        self.wait_log("subscription acknowledged", 4, Duration::from_secs(20)).await
    }

    /// The exit status, once it exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL: no chance to finish a batch or acknowledge anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("replica {} did not stop within 10 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `psql` until `sql` returns `expected`.
pub async fn wait_sql(pg: &gate_tests::postgres::Postgres, sql: &str, expected: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = pg.psql(sql).unwrap_or_else(|e| e.to_string());
        if got == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`{sql}` returned {got:?}, not {expected:?}, within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pool on `pg` through a `platform.toml` written in `dir`, with the
/// schema at `version` (a database as an older program left it).
pub async fn pool_at_version(
    dir: &Path,
    pg: &gate_tests::postgres::Postgres,
    version: i32,
) -> anyhow::Result<deadpool_postgres::Pool> {
    let path = write_config(dir, &pg.url(), 1, "");
    let config = gate_platform::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = gate_platform::db::pool(&config.postgres)?;
    gate_platform::db::migrate_to(&pool, version).await?;
    Ok(pool)
}
