//! `gate-fuzz`: the project's fuzzer, on the stable toolchain.
//!
//! Coverage-guided engines need what this machine lacks: `cargo fuzz`
//! (libFuzzer) needs nightly for its sanitizer flags, and a stable route
//! through `RUSTC_BOOTSTRAP` would make CI depend on unstable compiler
//! switches; AFL++ needs its own compiler wrapper. So the loop is our own:
//! seeded, coverage-free but structure-aware. Every target knows its input's
//! shape (a SAM frame with a valid checksum, an `HC1:` string built from a
//! real signed COSE message, a signed envelope, a protobuf built from the
//! gate's own schema) and mixes fresh structured inputs with byte-level
//! mutations of its corpus. In place of coverage, a target reports an
//! *outcome class* (which error, which step refused, which handler result)
//! for each execution, and an input that shows a class not seen before
//! joins the corpus: the search keeps reaching for new ways the parser
//! ends.
//!
//! Each execution runs under `catch_unwind` (a panic is a crash: the input
//! is saved under `crashes/<target>/`), is timed against a per-execution
//! limit (over it: a hang, saved the same way), and a watchdog thread saves
//! the input and aborts the run if an execution never returns.

pub mod rng;
pub mod targets;

use rng::Rng;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One thing to fuzz.
pub trait Target {
    /// Inputs the run starts from, built by the target itself (valid frames,
    /// signed messages), before the corpus files.
    fn seeds(&mut self) -> Vec<Vec<u8>>;
    /// A fresh structured input, or `None` when the target has no generator.
    fn generate(&mut self, _rng: &mut Rng) -> Option<Vec<u8>> {
        None
    }
    /// Tokens worth inserting (keywords, magic bytes); asked once a run.
    fn dictionary(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Feeds one input; returns its outcome class. Must never panic.
    fn run(&mut self, input: &[u8]) -> u64;
}

/// A hash of anything, as an outcome class.
pub fn class<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Where the corpus and crash inputs of the targets live, in the repository.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

pub fn crashes_dir(target: &str) -> PathBuf {
    fuzz_dir().join("crashes").join(target)
}

/// How long to run and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// Stop after this many executions ...
    pub execs: Option<u64>,
    /// ... or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// One execution longer than this is a hang.
    pub exec_limit: Duration,
    /// Write inputs that showed a new outcome class into the corpus folder.
    pub save_corpus: bool,
    /// Where crash and hang inputs go (the repository's `crashes/<target>`
    /// unless a test says otherwise).
    pub crashes_dir: Option<PathBuf>,
    /// A line on stderr every 30 s of a long run.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 1,
            execs: Some(10_000),
            duration: None,
            exec_limit: Duration::from_secs(2),
            save_corpus: false,
            crashes_dir: None,
            progress: false,
        }
    }
}

/// What one run of one target did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunReport {
    pub target: String,
    pub seed: u64,
    pub execs: u64,
    pub seconds: f64,
    pub execs_per_s: f64,
    pub crashes: u64,
    pub hangs: u64,
    /// The longest single execution, in microseconds.
    pub slowest_exec_us: u64,
    pub classes: usize,
    pub corpus: usize,
    /// Files of crash or hang inputs written in this run.
    pub saved: Vec<String>,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Largest input the mutator grows to.
const MAX_INPUT: usize = 64 * 1024;
/// Inputs one run adds to a target's corpus folder at most, so the kept
/// corpus stays small enough for the repository.
const MAX_SAVED_CORPUS: usize = 200;
/// Corpus entries kept in memory; past it a new one replaces a random one.
const MAX_CORPUS: usize = 4096;

/// Reads every file of a folder (sorted by name), none if it is missing.
pub fn read_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    for path in paths {
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn save(dir: &Path, prefix: &str, input: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{prefix}{:016x}", class(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// The shared state the watchdog reads.
struct Watch {
    /// Milliseconds since `origin` at which the running execution started;
    /// 0 between executions.
    started_ms: AtomicU64,
    current: Mutex<Vec<u8>>,
    done: AtomicBool,
}

/// Runs `target` (built by `make`, rebuilt after a crash since a panic may
/// leave it half-changed) as `options` say.
pub fn run_target(name: &str, make: &dyn Fn() -> Box<dyn Target>, options: &RunOptions) -> RunReport {
    let crashes_dir = options.crashes_dir.clone().unwrap_or_else(|| crashes_dir(name));
    let mut target = make();
    let mut rng = Rng::new(options.seed);
    let mut corpus: Vec<Vec<u8>> = target.seeds();
    corpus.extend(read_inputs(&corpus_dir(name)).into_iter().map(|(_, b)| b));
    corpus.extend(read_inputs(&crashes_dir).into_iter().map(|(_, b)| b));
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let dictionary = target.dictionary();
    let mut saved_to_corpus = 0;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut report = RunReport { target: name.to_owned(), seed: options.seed, ..RunReport::default() };

    let origin = Instant::now();
    let watch = Arc::new(Watch {
        started_ms: AtomicU64::new(0),
        current: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
    });
    let watchdog = {
        let watch = Arc::clone(&watch);
        let hard_limit = options.exec_limit * 10;
        let dir = crashes_dir.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            while !watch.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let started = watch.started_ms.load(Ordering::Relaxed);
                let now = origin.elapsed().as_millis() as u64;
                if started != 0 && now.saturating_sub(started) > hard_limit.as_millis() as u64 {
                    let input = watch.current.lock().map(|c| c.clone()).unwrap_or_default();
                    let saved = save(&dir, "hang-", &input);
                    eprintln!(
                        "gate-fuzz: HANG in target {name}: one execution ran over {hard_limit:?}; input saved to {saved:?}"
                    );
                    std::process::exit(3);
                }
            }
        })
    };

    // A panic is reported by the loop, not printed by the default hook for
    // each of possibly thousands of crashes.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    // Seeds and corpus first, each once, so their classes are known.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    let start = Instant::now();
    let mut last_progress = start;
    let mut input = Vec::new();
    loop {
        if options.execs.is_some_and(|n| report.execs >= n) {
            break;
        }
        // The clock is read once every 16 executions only.
        if report.execs.is_multiple_of(16) {
            if options.duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
            if options.progress && last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                eprintln!(
                    "gate-fuzz: {name}: {} execs in {:.0} s, {} crashes, {} hangs, {} classes",
                    report.execs,
                    start.elapsed().as_secs_f64(),
                    report.crashes,
                    report.hangs,
                    seen.len()
                );
            }
        }
        input.clear();
        if let Some(next) = queue.pop() {
            input = next;
        } else {
            next_input(&mut *target, &corpus, &dictionary, &mut rng, &mut input);
        }
        if let Ok(mut current) = watch.current.lock() {
            current.clone_from(&input);
        }
        let exec_start = Instant::now();
        watch.started_ms.store((exec_start - origin).as_millis() as u64 + 1, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(&input)));
        let took = exec_start.elapsed();
        watch.started_ms.store(0, Ordering::Relaxed);
        report.execs += 1;
        report.slowest_exec_us = report.slowest_exec_us.max(took.as_micros() as u64);
        match outcome {
            Ok(outcome_class) => {
                if took > options.exec_limit {
                    report.hangs += 1;
                    if let Some(path) = save(&crashes_dir, "slow-", &input) {
                        report.saved.push(path.display().to_string());
                    }
                }
                if seen.insert(outcome_class) {
                    if options.save_corpus && saved_to_corpus < MAX_SAVED_CORPUS {
                        save(&corpus_dir(name), "", &input);
                        saved_to_corpus += 1;
                    }
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input.clone());
                    } else {
                        let i = rng.below(corpus.len());
                        corpus[i] = input.clone();
                    }
                }
            }
            Err(_) => {
                report.crashes += 1;
                if let Some(path) = save(&crashes_dir, "crash-", &input) {
                    report.saved.push(path.display().to_string());
                }
                target = make();
            }
        }
    }
    std::panic::set_hook(previous_hook);
    watch.done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    report.seconds = start.elapsed().as_secs_f64();
    report.execs_per_s = if report.seconds > 0.0 { report.execs as f64 / report.seconds } else { 0.0 };
    report.classes = seen.len();
    report.corpus = corpus.len();
    report
}

/// Feeds one saved input to a fresh target; `Err` with the panic message if
/// it panics.
pub fn replay(make: &dyn Fn() -> Box<dyn Target>, input: &[u8]) -> Result<u64, String> {
    let mut target = make();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())
    })
}

fn next_input(target: &mut dyn Target, corpus: &[Vec<u8>], dictionary: &[Vec<u8>], rng: &mut Rng, out: &mut Vec<u8>) {
    // One in eight: a fresh structured input, mutated lightly half the time.
    if rng.below(8) == 0
        && let Some(fresh) = target.generate(rng)
    {
        *out = fresh;
        if rng.coin() {
            mutate(out, corpus, dictionary, rng, 1);
        }
        return;
    }
    out.extend_from_slice(&corpus[rng.below(corpus.len())]);
    let rounds = 1 + rng.below(4);
    mutate(out, corpus, dictionary, rng, rounds);
}

/// Byte-level havoc: flips, interesting values, inserts, deletes, copies,
/// splices with another corpus entry, dictionary tokens.
pub fn mutate(data: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[Vec<u8>], rng: &mut Rng, rounds: usize) {
    const INTERESTING: [u8; 9] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'\n', b'\r', b'"', b'.'];
    for _ in 0..rounds {
        let len = data.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.byte();
            }
            3 if len < MAX_INPUT => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                data.drain(i..i + n);
            }
            5 if len > 0 && len < MAX_INPUT => {
                // Duplicate a chunk somewhere (repeated fields, nested lengths).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            6 if len > 0 => {
                data.truncate(rng.below(len));
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let cut = rng.below(len + 1);
                    let from = rng.below(other.len());
                    data.truncate(cut);
                    data.extend_from_slice(&other[from..]);
                }
            }
            8 if !dictionary.is_empty() && len < MAX_INPUT => {
                let token = &dictionary[rng.below(dictionary.len())];
                let i = rng.below(len + 1);
                if rng.coin() || i + token.len() > len {
                    data.splice(i..i, token.iter().copied());
                } else {
                    data[i..i + token.len()].copy_from_slice(token);
                }
            }
            9 if len > 1 => {
                // A varint or length byte nudged: off-by-one lengths.
                let i = rng.below(len);
                data[i] = data[i].wrapping_add(if rng.coin() { 1 } else { 0xff });
            }
            10 if len >= 2 => {
                let a = rng.below(len);
                let b = rng.below(len);
                data.swap(a, b);
            }
            _ => {
                if len < MAX_INPUT {
                    data.push(rng.byte());
                }
            }
        }
        data.truncate(MAX_INPUT);
    }
}

/// A dictionary from byte-string literals.
pub fn tokens(items: &[&[u8]]) -> Vec<Vec<u8>> {
    items.iter().map(|t| t.to_vec()).collect()
}

/// A temporary folder for a target's files: in memory (`/dev/shm`) where
/// there is one, so that ten million executions are not ten million disk
/// writes and fsyncs; the files and the code that writes them are the real
/// ones.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.unwrap_or_else(|e| panic!("gate-fuzz: no temporary folder: {e}"))
}
