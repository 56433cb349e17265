//! The crash suite under `cargo test`: ten trials of `kill -9` of the real
//! `gated` (see `gate_tests::crash`), seeded from the clock unless
//! `GATE_CRASH_SEED` says otherwise; the seed is printed so a failure
//! reproduces. `crash-suite --trials 100` runs the long version.

use anyhow::Result;
use gate_tests::crash::{CrashOptions, find_gated, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_lose_nothing_duplicate_nothing_and_unlock_nothing_unrecorded() -> Result<()> {
    gate_tests::init_test_logging();
    let seed = std::env::var("GATE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("crash suite seed {seed} (GATE_CRASH_SEED={seed} reproduces)");
    let summary = run(CrashOptions { trials: 10, seed, gated: find_gated()?, keep: None }).await?;
    eprintln!("{}", summary.line());
    eprintln!("{summary:?}");
    assert_eq!(summary.trials, 10);
    // The checks had something to check: events recorded and delivered, the
    // gate opened, the pass was honoured, identity versions and mode
    // changes came through between the kills.
    assert!(summary.recorded > 0 && summary.events >= summary.recorded, "events recorded and delivered: {summary:?}");
    assert!(summary.unlocks > 0, "cards flowed and the gate opened: {summary:?}");
    assert!(summary.pass_honoured >= 1, "the single-use pass was honoured once: {summary:?}");
    assert!(summary.clean(), "seed {seed}: {}", summary.line());
    Ok(())
}
