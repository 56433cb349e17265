//! The `gate-platform` binary: command line, logging, signals, exit codes
//! (64 bad configuration or usage, 69 PostgreSQL or broker unusable, 78 an
//! unusable key file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gate_platform::config::{self, DEFAULT_PATH, PlatformConfig};
use gate_platform::{db, fleet, ingest, keys, report};
use tokio_util::sync::CancellationToken;

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "gate-platform", version, about = "The central platform of the gates: ingest, fleet, flows.")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks the configuration file; every error with line and column (exit 64).
    CheckConfig,
    /// Applies the database migrations not applied yet.
    Migrate,
    /// Writes a new Ed25519 signing key (mode 0600); the last line of output
    /// is the "KEYID:HEX" string gated's `[platform] signing_keys` takes.
    Keygen { file: PathBuf },
    /// Runs one ingest replica until SIGTERM or SIGINT.
    Ingest {
        /// Appended to `[mqtt] client_id` (`{client_id}-{replica}`): each
        /// replica needs its own, stable across its restarts.
        #[arg(long)]
        replica: Option<String>,
    },
    /// Turns holes older than `[ingest] gap_timeout_s` into gaps now (the
    /// ingest also does it every few seconds).
    SweepGaps,
    /// Per gate: online, last event age, outbox, versions, open gaps and alarms.
    Fleet {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reports for the grid workers.
    Report {
        #[command(subcommand)]
        report: ReportCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Entries and exits of one site and local day, per hour, gate and category.
    Flow {
        #[arg(long)]
        site: String,
        /// The local day, YYYY-MM-DD.
        #[arg(long)]
        day: String,
        /// Also draw the day's curve into this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::CheckConfig => match config::load(&cli.config) {
            Ok(_) => {
                println!("{}: configuration is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Keygen { file } => match keys::generate(&file) {
            Ok(key) => {
                println!("wrote a new signing key to {} (mode 0600)", file.display());
                println!("give gated this line in [platform] signing_keys:");
                println!("{}", keys::public_line(&key));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gate-platform: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        command => {
            let config = match config::load(&cli.config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gate-platform: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(command, config))
        }
    }
}

async fn run(command: Command, config: PlatformConfig) -> ExitCode {
    let pool = match db::pool(&config.postgres) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gate-platform: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let result: Result<(), String> = match command {
        Command::Migrate => db::migrate(&pool)
            .await
            .map(|(from, to)| println!("schema version {from} -> {to}"))
            .map_err(|e| e.to_string()),
        Command::Ingest { replica } => {
            let shutdown = CancellationToken::new();
            let signals = shutdown.clone();
            tokio::spawn(async move {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("stopping");
                signals.cancel();
            });
            let stats = Arc::new(ingest::IngestStats::default());
            let r = ingest::run_ingest(&config, pool, replica.as_deref(), stats.clone(), shutdown).await;
            tracing::info!(?stats, "ingest stopped");
            r.map_err(|e| e.to_string())
        }
        Command::SweepGaps => match db::migrate(&pool).await {
            Ok(_) => ingest::sweep_once(&pool, config.ingest.gap_timeout, &config.routes, ingest::now_ms())
                .await
                .map(|n| println!("{n} gap(s) opened"))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Command::Fleet { json } => {
            fleet::print(&pool, &config.routes, json, ingest::now_ms()).await.map_err(|e| e.to_string())
        }
        Command::Report { report: ReportCommand::Flow { site, day, svg } } => {
            report::flow(&pool, &site, &day, svg.as_deref()).await.map_err(|e| e.to_string())
        }
        Command::CheckConfig | Command::Keygen { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gate-platform: {e}");
            if e.starts_with("bad request:") { ExitCode::from(EXIT_USAGE) } else { ExitCode::from(EXIT_UNAVAILABLE) }
        }
    }
}
