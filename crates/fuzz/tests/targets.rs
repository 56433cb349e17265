//! Every fuzz target under `cargo test`: each kept corpus and crash input
//! replays without a panic (the crash inputs are the regression tests of
//! what the fuzzer once found), and a short seeded run of each target ends
//! with no crash and no hang.

use gate_fuzz::targets::TARGETS;
use gate_fuzz::{RunOptions, corpus_dir, crashes_dir, read_inputs, replay, run_target};
use std::time::Duration;

#[test]
fn every_kept_input_replays_without_a_panic() {
    let mut replayed = 0;
    for (name, make) in TARGETS {
        for dir in [corpus_dir(name), crashes_dir(name)] {
            for (path, bytes) in read_inputs(&dir) {
                if let Err(panic) = replay(make, &bytes) {
                    panic!("{name}: {} panics: {panic}", path.display());
                }
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} kept inputs");
}

#[test]
fn a_short_run_of_every_target_finds_no_crash_and_no_hang() {
    let crashes = tempfile::tempdir().expect("temp dir");
    for (name, make) in TARGETS {
        // Ten seconds at most a target: a debug build signs and verifies
        // slowly, and this is a check of the targets, not a fuzz run.
        let options = RunOptions {
            seed: 20_261_202,
            execs: Some(300),
            duration: Some(Duration::from_secs(10)),
            exec_limit: Duration::from_secs(5),
            save_corpus: false,
            crashes_dir: Some(crashes.path().join(name)),
            progress: false,
        };
        let report = run_target(name, make, &options);
        assert!(report.execs >= 16, "{name}: only {} executions", report.execs);
        assert_eq!((report.crashes, report.hangs), (0, 0), "{name}: {:?}", report.saved);
        assert!(report.classes >= 2, "{name}: inputs reach only {} outcome", report.classes);
    }
}

#[test]
fn a_panicking_target_is_reported_and_its_input_saved() {
    // The loop itself must catch what it is there to catch.
    struct Fragile;
    impl gate_fuzz::Target for Fragile {
        fn seeds(&mut self) -> Vec<Vec<u8>> {
            vec![b"ok".to_vec(), b"boom".to_vec()]
        }
        fn run(&mut self, input: &[u8]) -> u64 {
            assert!(input != b"boom", "found it");
            1
        }
    }
    let crashes = tempfile::tempdir().expect("temp dir");
    let options =
        RunOptions { seed: 1, execs: Some(50), crashes_dir: Some(crashes.path().to_owned()), ..RunOptions::default() };
    let report = run_target("fragile", &|| Box::new(Fragile), &options);
    assert!(report.crashes >= 1, "{report:?}");
    let saved = read_inputs(crashes.path());
    assert!(saved.iter().any(|(_, bytes)| bytes == b"boom"), "the crashing input is saved");
}
