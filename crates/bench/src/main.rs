//! `gate-bench`: every performance figure of the gate beside the raw ceiling
//! of the same resource, measured in the same run (these machines swing
//! 2-10x from run to run: a figure means something only next to its
//! ceiling). Prints a table and writes `target/bench/report.json`.
//!
//! Run through `bench/run` (it builds this and the release `gated`):
//! `bench/run`, `bench/run --smoke` (every figure at a tiny size, for CI),
//! `bench/run --only NAME`. Data sets are generated here, seeded; nothing
//! big is kept in the repository.

mod daemon;
mod dcc;
mod mqtt;
mod qr;
mod report;
mod sqlite;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use report::{NAMES, Row};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every figure with its ceiling, as a table and as JSON.
#[derive(Parser, Debug)]
#[command(name = "gate-bench")]
struct Args {
    /// Every figure at a tiny size (a check that the machinery works; the
    /// numbers mean nothing).
    #[arg(long)]
    smoke: bool,
    /// Run only this figure (and what it needs); repeat for several.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    only: Vec<String>,
    /// Where the report and the working data go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// The daemon binary (default: `gated` beside this program).
    #[arg(long, value_name = "FILE")]
    gated: Option<PathBuf>,
    /// Measure nothing: check that a report is well formed (every figure
    /// present, every field there; measured, except `dcc_ps256` without the
    /// conformance data) and exit 1 if not.
    #[arg(long, value_name = "REPORT", conflicts_with_all = ["smoke", "only"])]
    check: Option<PathBuf>,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub cards: usize,
    pub draining_events: u64,
    pub decisions_seconds: f64,
    pub people_2m: usize,
    pub people_10m: usize,
    pub lookups: usize,
    pub drain_events: u64,
    pub offline_events: u64,
    pub rest_cards: usize,
    pub qr_rounds: usize,
    pub zbar_copies: usize,
    pub camera_seconds: f64,
    pub dcc_iterations: usize,
    /// How long a drain may run before its rate is taken from what was
    /// drained so far (and the figure says it did not finish).
    pub drain_limit: std::time::Duration,
    /// Cards wanted while a backlog drains (the p99 of a handful means
    /// little: the backlog is refilled until they are taken).
    pub draining_cards: usize,
    /// The most backlogs queued for them.
    pub draining_rounds: u64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            cards: 200,
            draining_events: 100_000,
            decisions_seconds: 20.0,
            people_2m: 2_000_000,
            people_10m: 10_000_000,
            lookups: 100_000,
            drain_events: 1_000_000,
            offline_events: 10_000_000,
            rest_cards: 40,
            qr_rounds: 300,
            zbar_copies: 40,
            camera_seconds: 10.0,
            dcc_iterations: 2_000,
            drain_limit: std::time::Duration::from_secs(20 * 60),
            draining_cards: 100,
            draining_rounds: 25,
        }
    }

    fn smoke() -> Sizes {
        Sizes {
            cards: 8,
            draining_events: 2_000,
            decisions_seconds: 1.0,
            people_2m: 2_000,
            people_10m: 5_000,
            lookups: 2_000,
            drain_events: 2_000,
            offline_events: 3_000,
            rest_cards: 3,
            qr_rounds: 10,
            zbar_copies: 3,
            camera_seconds: 1.0,
            dcc_iterations: 50,
            drain_limit: std::time::Duration::from_secs(60),
            draining_cards: 4,
            draining_rounds: 2,
        }
    }
}

/// What every group needs.
#[derive(Debug)]
pub struct Ctx {
    pub sizes: Sizes,
    pub smoke: bool,
    pub gated: PathBuf,
    /// Working data (databases, frames); emptied group by group.
    pub work: PathBuf,
    /// The daemon's logs of the last run, one per start (`GROUP-NAME.log`).
    pub logs: PathBuf,
    /// The group running now, naming its logs.
    pub group: std::cell::Cell<&'static str>,
}

impl Ctx {
    /// Where a daemon started by the running group logs.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{}-{name}.log", self.group.get()))
    }

    /// A spinner or bar with an estimate, for a long step.
    pub fn progress(&self, what: &str, total: u64) -> ProgressBar {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("  {msg:<34} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_owned());
        if self.smoke || total < 2 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    }
}

/// Groups of figures measured together (a group's figures share its setup:
/// the snapshot of 2 million also gives the lookups and the RSS at 2 million).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Card,
    Draining,
    Decisions,
    Identity2m,
    Identity10m,
    Drain,
    Offline,
    Qr,
    Camera,
    Dcc,
}

impl Group {
    const ALL: [Group; 10] = [
        Group::Qr,
        Group::Dcc,
        Group::Camera,
        Group::Decisions,
        Group::Card,
        Group::Draining,
        Group::Identity2m,
        Group::Drain,
        Group::Identity10m,
        Group::Offline,
    ];

    fn names(self) -> &'static [&'static str] {
        match self {
            Group::Card => &["card_to_unlock"],
            Group::Draining => &["card_to_unlock_draining", "relock_spread_draining"],
            Group::Decisions => &["decisions_per_s"],
            Group::Identity2m => &["snapshot_2m", "rss_2m", "lookup_2m"],
            Group::Identity10m => &["snapshot_10m", "rss_10m", "lookup_10m"],
            Group::Drain => &["outbox_drain"],
            Group::Offline => &["offline_10m"],
            Group::Qr => &["qr_clean", "qr_noisy", "qr_none"],
            Group::Camera => &["camera_idle_cpu"],
            Group::Dcc => &["dcc_es256", "dcc_ps256"],
        }
    }

    /// Bytes of disk the group needs at its peak.
    fn disk_bytes(self, s: &Sizes) -> u64 {
        const PERSON: u64 = 600; // staging + live table + indexes, per person
        const EVENT: u64 = 400; // outbox row, index, WAL, and the copy made to fill it
        match self {
            Group::Identity2m => s.people_2m as u64 * PERSON,
            Group::Identity10m => s.people_10m as u64 * PERSON,
            Group::Draining => s.draining_events * EVENT,
            Group::Drain => s.drain_events * EVENT,
            Group::Offline => s.offline_events * EVENT,
            _ => 64 << 20,
        }
    }

    fn run(self, ctx: &Ctx) -> Result<Vec<Row>> {
        let s = &ctx.sizes;
        let dir = ctx.work.join(format!("{self:?}").to_lowercase());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let rows = match self {
            Group::Qr => qr::qr_rows(s.qr_rounds, s.zbar_copies, &dir),
            Group::Camera => qr::camera_idle_cpu(s.camera_seconds).map(|r| vec![r]),
            Group::Dcc => Ok(dcc::dcc_rows(s.dcc_iterations)),
            Group::Decisions => sqlite::decisions_per_s(ctx, &dir).map(|r| vec![r]),
            Group::Card => daemon::card_to_unlock(ctx, &dir),
            Group::Draining => daemon::card_to_unlock_draining(ctx, &dir),
            Group::Identity2m => daemon::identity(ctx, &dir, s.people_2m, "2m"),
            Group::Identity10m => daemon::identity(ctx, &dir, s.people_10m, "10m"),
            Group::Drain => daemon::outbox_drain(ctx, &dir).map(|r| vec![r]),
            Group::Offline => daemon::offline(ctx, &dir).map(|r| vec![r]),
        };
        // The data is generated again next time: keep the disk free.
        let _ = std::fs::remove_dir_all(&dir);
        rows
    }
}

/// The benchmarks' site key: fixed, so generated data sets are the same in
/// every run (it is a key for generated people only).
pub fn hw_key() -> [u8; 32] {
    [0x5a; 32]
}

fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.check {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let required = std::env::var("GATE_DCC_CONFORMANCE").is_ok_and(|v| v == "require");
        report::check(&text, required).with_context(|| format!("{} is not a complete report", path.display()))?;
        println!("{}: every figure present and well formed", path.display());
        return Ok(());
    }
    let sizes = if args.smoke { Sizes::smoke() } else { Sizes::full() };
    let gated = match args.gated {
        Some(path) => path,
        None => std::env::current_exe()?.parent().context("this program's folder")?.join("gated"),
    };
    if !gated.is_file() {
        bail!("no daemon binary at {} (bench/run builds it)", gated.display());
    }
    let groups: Vec<Group> = if args.only.is_empty() {
        Group::ALL.to_vec()
    } else {
        Group::ALL.into_iter().filter(|g| g.names().iter().any(|n| args.only.iter().any(|o| o == n))).collect()
    };
    std::fs::create_dir_all(&args.out)?;
    let work = args.out.join("work");
    std::fs::create_dir_all(&work)?;
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let ctx = Ctx { sizes, smoke: args.smoke, gated, work, logs, group: std::cell::Cell::new("") };

    let need: u64 = groups.iter().map(|g| g.disk_bytes(&ctx.sizes)).max().unwrap_or(0);
    let free = free_bytes(&ctx.work);
    println!(
        "gate-bench{}: {} group(s); disk needed at the peak: about {:.1} GB in {} ({} free)",
        if ctx.smoke { " --smoke" } else { "" },
        groups.len(),
        need as f64 / 1e9,
        ctx.work.display(),
        free.map_or("unknown".to_owned(), |f| format!("{:.1} GB", f as f64 / 1e9)),
    );
    if let Some(free) = free
        && free < need
    {
        bail!("not enough free disk: {:.1} GB needed, {:.1} GB free", need as f64 / 1e9, free as f64 / 1e9);
    }
    let report_path = args.out.join("report.json");
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();
    for group in groups {
        let group_started = Instant::now();
        ctx.group.set(group.names()[0]);
        println!("== {} ...", group.names().join(", "));
        let mut got = match group.run(&ctx) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("   failed: {e:#}");
                group.names().iter().map(|n| Row::missing(n, "-", "-", format!("not measured: {e:#}"))).collect()
            }
        };
        if !args.only.is_empty() {
            got.retain(|r| {
                args.only
                    .iter()
                    .any(|o| *o == r.name || (o == "card_to_unlock_draining" && r.name == "relock_spread_draining"))
            });
        }
        for r in &got {
            println!(
                "   {}: {} {}{}",
                r.name,
                r.value.map_or("-".to_owned(), |v| format!("{v:.3}")),
                r.unit,
                r.ratio.map_or(String::new(), |x| format!(" (ratio {x:.2} to {})", r.ceiling_name))
            );
        }
        println!("   ({:.1} s)", group_started.elapsed().as_secs_f64());
        rows.extend(got);
        // After every group: a long run stopped halfway keeps what it measured.
        report::write_json(&rows, &report_path)?;
    }
    println!();
    print!("{}", report::table(&rows));
    println!(
        "report: {} ({} figures, {} met; {:.0} s)",
        report_path.display(),
        rows.len(),
        rows.iter().filter(|r| r.met).count(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
