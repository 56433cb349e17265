//! `gatectl`, the technician's command-line tool: site keys, identity
//! import, configuration checks.

mod import;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// EX_USAGE: the input (config or file) is wrong.
const EXIT_BAD_INPUT: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gatectl",
    version,
    about = "Technician tool for the gate-control daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new site key file (64 hex characters, mode 0600).
    Keygen {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Validate a configuration file; exit status 64 on a bad file.
    CheckConfig {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// The local identity table.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Import people from a UTF-8 CSV file with the header
    /// `person_id,category,id_number,name,valid_from,valid_to` (dates
    /// YYYY-MM-DD). All rows are checked first; one bad row and nothing is applied.
    Import {
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen { path } => {
            gate_config::write_new_site_key(&path)?;
            println!(
                "wrote a new site key to {} (mode 0600); keep it secret and back it up",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { path } => Ok(match gate_config::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", path.display(), errors.0.len());
                ExitCode::from(EXIT_BAD_INPUT)
            }
        }),
        Command::Identity {
            command: IdentityCommand::Import { config, file },
        } => {
            let config = match gate_config::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            let key = gate_config::load_site_key(&config.identity.hmac_key_file)?;
            let text =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let people = match import::parse_people(&file, &text, &key, config.site.utc_offset) {
                Ok(people) => people,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!(
                        "{}: {} bad row(s); nothing was imported",
                        file.display(),
                        errors.len()
                    );
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            if let Some(dir) = config.store.path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut store = gate_store::Store::open(&config.store.path)?;
            let summary = store.import_people(&people)?;
            println!(
                "imported {} people ({} credentials) into {}",
                summary.people,
                summary.credentials,
                config.store.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
