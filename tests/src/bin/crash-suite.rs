//! `crash-suite [--trials N] [--seed S] [--keep DIR] [--json FILE]`: the
//! crash suite of `gate_tests::crash` (kill -9 of the real `gated` at seeded
//! random points), printing
//! `trials / lost / duplicated seq / stray unlocks / corrupt / failed restarts`.
//! Exits 1 unless every figure but the trials is 0.

use anyhow::{Context, Result, bail};
use gate_tests::crash::{CrashOptions, find_gated, run};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> Result<ExitCode> {
    let mut trials = 100;
    let mut seed = None;
    let mut keep = None;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--trials" => trials = value()?.parse()?,
            "--seed" => seed = Some(value()?.parse()?),
            "--keep" => keep = Some(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown argument {other:?}; usage: crash-suite [--trials N] [--seed S] [--keep DIR] [--json FILE]"
            ),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("crash suite: seed {seed}, {trials} trials");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(run(CrashOptions { trials, seed, gated: find_gated()?, keep }))?;
    println!("{}", summary.line());
    println!(
        "seed {} / events recorded {} delivered {} / unlocks {} / single-use pass honoured {} (beyond once {}) / \
         identity versions in force after kills {:?} / mode changes {} / kills {:?} / {:.0} s",
        summary.seed,
        summary.recorded,
        summary.events,
        summary.unlocks,
        summary.pass_honoured,
        summary.pass_reuse,
        summary.identity_versions,
        summary.mode_changes,
        summary.kills,
        summary.seconds
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(if summary.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
