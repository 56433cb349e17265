//! `gate-fuzz`: runs the fuzz targets of `gate_fuzz::targets`.
//!
//! `gate-fuzz list`, `gate-fuzz run --target T --execs N` (or `--target all`,
//! `--seconds S`), `gate-fuzz replay --target T FILE...`. A run prints one
//! line per target with its executions, executions per second, crashes and
//! hangs, and exits 1 if any target crashed or hung.

use clap::{Parser, Subcommand};
use gate_fuzz::targets::{TARGETS, by_name};
use gate_fuzz::{RunOptions, RunReport, replay, run_target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "gate-fuzz", about = "Fuzz the gate's parsers and message handlers (stable toolchain, seeded)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The target names.
    List,
    /// Fuzz one or more targets.
    Run {
        /// A target name, or `all`; repeatable.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Executions per target.
        #[arg(long)]
        execs: Option<u64>,
        /// Seconds per target (with --execs: whichever comes first).
        #[arg(long)]
        seconds: Option<f64>,
        /// Seed of the run (default: from the clock, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// One execution longer than this is a hang.
        #[arg(long, default_value_t = 5000)]
        exec_limit_ms: u64,
        /// Keep inputs that showed a new outcome in the target's corpus folder.
        #[arg(long)]
        save_corpus: bool,
        /// Also write the reports as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Feed saved inputs to a target once each.
    Replay {
        #[arg(long)]
        target: String,
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::List => {
            for (name, _) in TARGETS {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Run { targets, execs, seconds, seed, exec_limit_ms, save_corpus, json } => {
            let names: Vec<&str> = if targets.iter().any(|t| t == "all") {
                TARGETS.iter().map(|(n, _)| *n).collect()
            } else {
                targets.iter().map(String::as_str).collect()
            };
            if let Some(bad) = names.iter().find(|n| by_name(n).is_none()) {
                eprintln!("gate-fuzz: no target named {bad:?} (see `gate-fuzz list`)");
                return ExitCode::from(64);
            }
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            println!("gate-fuzz: seed {seed}");
            let options = RunOptions {
                seed,
                execs: if execs.is_none() && seconds.is_none() { Some(10_000) } else { execs },
                duration: seconds.map(Duration::from_secs_f64),
                exec_limit: Duration::from_millis(exec_limit_ms),
                save_corpus,
                crashes_dir: None,
                progress: true,
            };
            let mut reports: Vec<RunReport> = Vec::new();
            for name in names {
                let Some(make) = by_name(name) else { continue };
                let report = run_target(name, &make, &options);
                println!(
                    "{:<24} execs {:>11}  {:>9.0} execs/s  {:>7.1} s  crashes {}  hangs {}  classes {}  slowest {} us",
                    report.target,
                    report.execs,
                    report.execs_per_s,
                    report.seconds,
                    report.crashes,
                    report.hangs,
                    report.classes,
                    report.slowest_exec_us
                );
                for path in &report.saved {
                    println!("    saved {path}");
                }
                reports.push(report);
            }
            let failed = reports.iter().any(|r| r.crashes > 0 || r.hangs > 0);
            let total: u64 = reports.iter().map(|r| r.execs).sum();
            println!(
                "gate-fuzz: {} targets, {total} executions, {} crashes, {} hangs",
                reports.len(),
                reports.iter().map(|r| r.crashes).sum::<u64>(),
                reports.iter().map(|r| r.hangs).sum::<u64>()
            );
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&reports).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("gate-fuzz: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Cmd::Replay { target, files } => {
            let Some(make) = by_name(&target) else {
                eprintln!("gate-fuzz: no target named {target:?}");
                return ExitCode::from(64);
            };
            let mut failed = false;
            for file in files {
                match std::fs::read(&file) {
                    Ok(bytes) => match replay(&make, &bytes) {
                        Ok(_) => println!("ok      {}", file.display()),
                        Err(panic) => {
                            failed = true;
                            println!("PANIC   {}: {panic}", file.display());
                        }
                    },
                    Err(e) => {
                        failed = true;
                        println!("UNREAD  {}: {e}", file.display());
                    }
                }
            }
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
    }
}
