//! `gated`, the gate-control daemon: argument parsing, logging, signals and
//! exit codes. Everything else lives in `gate-app`.

mod notify;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// EX_USAGE of sysexits.h: the configuration is wrong.
const EXIT_BAD_CONFIG: u8 = 64;
/// EX_CONFIG of sysexits.h: a file the configuration names is unusable.
const EXIT_CANNOT_START: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "gated", version, about = "Gate-control daemon for urban-village checkpoints")]
struct Cli {
    /// Run the daemon with this configuration file.
    #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
    config: PathBuf,
    /// Log format: `text` for people, `json` for collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file without opening any device; prints every
    /// error with file, line and column. Exit status 64 on a bad file.
    CheckConfig {
        /// The configuration file to check.
        #[arg(value_name = "PATH", required_unless_present = "config")]
        path: Option<PathBuf>,
        /// The same file, named as the daemon's and the other commands'
        /// `--config` names it.
        #[arg(long = "config", value_name = "PATH", conflicts_with = "path")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path, config }) => {
            // clap requires one of the two.
            let path = path.or(config).unwrap_or(cli.config);
            check_config(&path)
        }
        None => {
            let config = match gate_config::load(&cli.config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{}: {} error(s); not starting", cli.config.display(), errors.0.len());
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            init_logging(cli.log_format, config.site.utc_offset);
            match serve(cli.config, config) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    if gate_config::check_and_report(path) { ExitCode::SUCCESS } else { ExitCode::from(EXIT_BAD_CONFIG) }
}

/// Log times in site time with the offset shown (`[site] utc_offset`), the
/// same form `gatectl tail` prints, so a technician can match the two.
struct SiteTime(gate_core::UtcOffset);

impl tracing_subscriber::fmt::time::FormatTime for SiteTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        w.write_str(&self.0.timestamp(now))
    }
}

fn init_logging(format: LogFormat, offset: gate_core::UtcOffset) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd, journald stamps each line itself and shows no colours.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // A closed stderr (`gated ... 2>&1 | head -1`) must not stop the daemon:
    // tracing's default reports a failed write with `eprintln!`, which panics
    // on a closed stderr and takes down the task that logged (the signal task
    // among them, so SIGTERM was then ignored). Lost log lines are dropped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .log_internal_errors(false)
        .with_timer(SiteTime(offset));
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text if under_journald => builder.without_time().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn serve(config_path: PathBuf, config: gate_config::Config) -> Result<ExitCode> {
    // systemd (Type=notify): absent when not run by a service manager.
    let notifier = notify::Notifier::from_env().map(Arc::new);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let stop_notifier = notifier.clone();
        tokio::spawn(async move {
            let name = wait_for_stop_signal().await;
            signals.cancel();
            if let Some(n) = &stop_notifier {
                n.stopping();
            }
            tracing::info!("{name} received: stopping");
        });
        // The live counters, shared with the watchdog feed: it pings only
        // while the decision loop turns.
        let observed = Arc::new(gate_app::Observed::default());
        // SIGHUP: the file is validated again; only a good one reaches the daemon.
        let (reload_tx, reloads) = tokio::sync::watch::channel(config.clone());
        tokio::spawn(reload_on_sighup(config_path.clone(), reload_tx));
        if let Some(n) = &notifier
            && let Some(period) = n.watchdog_interval()
        {
            // Fed only while the decision loop's heartbeat is fresh, so a
            // wedged loop gets the daemon restarted. Before the first turn
            // the feed allows a start-up grace.
            tokio::spawn(feed_watchdog(n.clone(), period, observed.clone()));
        }
        // READY=1 only once `gate_app` has loaded the key, opened the store,
        // spawned every task, bound the control socket and seen the decision
        // loop turn: `systemctl start` returning means the gate works.
        let ready_notifier = notifier.clone();
        let ready = move || {
            if let Some(n) = &ready_notifier {
                n.ready();
            }
        };
        match gate_app::run_until_stopped(config, reloads, shutdown, observed, ready).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                tracing::error!("cannot start: {e}");
                Ok(ExitCode::from(EXIT_CANNOT_START))
            }
        }
    })
}

/// Sends `WATCHDOG=1` every `period` while the decision loop's heartbeat is
/// fresh, until the runtime shuts down. A loop that stops turning stops the
/// pings, and systemd restarts the daemon after `WatchdogSec`.
async fn feed_watchdog(
    notifier: Arc<notify::Notifier>,
    period: std::time::Duration,
    observed: Arc<gate_app::Observed>,
) {
    use std::time::{Duration, Instant};
    // The loop turns at least every second; a decision may legitimately hold
    // it for a few (a busy database, an online health check), so allow 10 s
    // or the ping period, whichever is longer.
    let max_age = period.max(Duration::from_secs(10));
    // Before its first turn the daemon is still starting (key, database
    // migrations): that is not a hang, for a while.
    const STARTUP_GRACE: Duration = Duration::from_secs(60);
    let started = Instant::now();
    let mut withheld = false;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let alive = match observed.decisions.heartbeat.age() {
            Some(age) => age <= max_age,
            None => started.elapsed() < STARTUP_GRACE,
        };
        if alive {
            if withheld {
                tracing::info!("decision loop turns again; watchdog pings resume");
                withheld = false;
            }
            // One datagram; a send waits at most 1 s (notify::SEND_TIMEOUT).
            notifier.watchdog();
        } else if !withheld {
            tracing::error!(
                max_age_s = max_age.as_secs(),
                "the decision loop has not turned in time: withholding the watchdog ping so systemd restarts the daemon"
            );
            withheld = true;
        }
    }
}

/// On SIGHUP, reads and validates the configuration file again. A good file
/// goes to the daemon (applied between two decisions); a bad one is refused
/// with every error, and the running configuration stays.
async fn reload_on_sighup(path: PathBuf, reloads: tokio::sync::watch::Sender<gate_config::Config>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: configuration reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP received: reloading the configuration");
        match gate_config::load(&path) {
            Ok(config) => {
                if reloads.send(config).is_err() {
                    return;
                }
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "configuration reload refused");
                }
                tracing::warn!(
                    config = %path.display(),
                    errors = errors.0.len(),
                    "configuration reload refused: the running configuration stays"
                );
            }
        }
    }
}

/// Standard error that never fails: a write to a closed or full pipe is
/// dropped, because the gate must keep working when nobody reads its log.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Claim the whole buffer on error so `write_all` does not retry.
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Waits for SIGTERM or SIGINT and names it. The caller cancels the daemon
/// before anything else: a stop never depends on a log line being written.
async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[cfg(test)]
mod cli_docs {
    /// The manual pages and completions in `deploy/` (installed by the
    /// Debian package) are what this definition generates, and every
    /// argument has help text.
    #[test]
    fn man_pages_and_completions_are_current() {
        use clap::CommandFactory;
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        if let Err(problems) = gate_clidoc::check(&super::Cli::command(), &deploy) {
            panic!("{problems}");
        }
    }
}
