//! `hw-sim` command line: runs a simulated SAM ID-card module or Modbus gate IO
//! board on a pty for technicians and demo scripts, narrating on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::error::RecvError;

use hw_sim::script::{Step, check_loop_waits, parse_script};
use hw_sim::{
    GateEvent, GateSim, GateSimConfig, IdCardEvent, IdCardHandle, IdCardSim, SimCard, mask_id,
};

/// Name used when a step places a card without one.
const DEFAULT_NAME: &str = "张三";

#[derive(Parser, Debug)]
#[command(
    name = "hw-sim",
    version,
    about = "Simulated checkpoint hardware on pseudo-terminals"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Resident ID card reader (SAM module, GA 467 serial protocol).
    Idcard(IdcardArgs),
    /// Turnstile IO board (Modbus RTU relays and inputs).
    Gate(GateArgs),
}

#[derive(Args, Debug)]
struct IdcardArgs {
    /// Create this symlink to the pty slave (removed on exit).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Scenario script (place / wait / remove / garbage / corrupt / silent / loop).
    #[arg(long, conflicts_with = "place")]
    script: Option<PathBuf>,
    /// Card to cycle through; repeat for several.
    #[arg(long, value_name = "ID_NUMBER[:NAME]")]
    place: Vec<String>,
    /// How long each --place card stays on the reader.
    #[arg(long, default_value_t = 1500)]
    hold_ms: u64,
    /// Pause between removing one --place card and placing the next.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
    /// Repeat the cards (or the script) forever.
    #[arg(long = "loop")]
    repeat: bool,
}

#[derive(Args, Debug)]
struct GateArgs {
    /// Create this symlink to the pty slave (removed on exit).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Modbus unit address to answer.
    #[arg(long, default_value_t = 1)]
    unit_id: u8,
    /// Delay between an unlock coil turning on and the passage input pulse.
    #[arg(long, default_value_t = 300)]
    auto_passage_ms: u64,
    /// Nobody walks through: unlocks do not pulse passage inputs.
    #[arg(long)]
    no_auto_passage: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hw-sim: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Technicians read this: one line with the cause chain, no backtrace.
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hw-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Hook the signals before the pty exists so an early SIGTERM still cleans up.
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match cli.command {
        Command::Idcard(args) => run_idcard(args, shutdown).await,
        Command::Gate(args) => run_gate(args, shutdown).await,
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Demo scripts read us through a pipe: flush so each line shows at once.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn steps_from_args(args: &IdcardArgs) -> anyhow::Result<Vec<Step>> {
    let mut steps = match &args.script {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading script {}", path.display()))?;
            parse_script(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            let mut steps = Vec::new();
            for spec in &args.place {
                let (id, name) = match spec.split_once(':') {
                    Some((id, name)) => (id, Some(name.to_string())),
                    None => (spec.as_str(), None),
                };
                if id.is_empty() {
                    bail!("--place needs an ID number before the colon");
                }
                steps.extend([
                    Step::Place {
                        id_number: id.to_string(),
                        name,
                    },
                    Step::Wait(Duration::from_millis(args.hold_ms)),
                    Step::Remove,
                    Step::Wait(Duration::from_millis(args.gap_ms)),
                ]);
            }
            steps
        }
    };
    if args.repeat && !steps.is_empty() && steps.last() != Some(&Step::Loop) {
        steps.push(Step::Loop);
    }
    check_loop_waits(&steps).map_err(anyhow::Error::msg)?;
    Ok(steps)
}

async fn run_idcard(args: IdcardArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Every script error surfaces here, before a pty or symlink exists.
    let steps = steps_from_args(&args)?;
    let handle = IdCardSim::start(args.link.as_deref())?;
    say(&format!(
        "idcard: SAM module on {}",
        handle.device_path().display()
    ));

    let mut events = handle.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(IdCardEvent::Replied {
                    command: Some((0x30, 0x01 | 0x10)),
                    status: 0x90,
                    corrupted,
                }) => {
                    say(if corrupted {
                        "idcard: card read by host (reply corrupted on purpose)"
                    } else {
                        "idcard: card read by host"
                    });
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    });

    let script = async {
        play(&handle, &steps).await;
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = script => Ok(()),
        _ = handle.wait_stopped() => Err(anyhow::anyhow!("the simulator stopped unexpectedly")),
    };
    finish(
        || handle.stop(),
        handle.wait_stopped(),
        args.link.as_deref(),
        &handle.slave_path(),
    )
    .await;
    result
}

async fn play(handle: &IdCardHandle, steps: &[Step]) {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1;
    let mut i = 0;
    while let Some(step) = steps.get(i) {
        i += 1;
        match step {
            Step::Place { id_number, name } => {
                handle.place(SimCard::resident(
                    id_number,
                    name.as_deref().unwrap_or(DEFAULT_NAME),
                ));
                say(&format!("idcard: placed card {}", mask_id(id_number)));
            }
            Step::Wait(d) => {
                say(&format!("idcard: wait {} ms", d.as_millis()));
                tokio::time::sleep(*d).await;
            }
            Step::Remove => {
                handle.remove();
                say("idcard: removed card");
            }
            Step::Garbage(n) => {
                let bytes = (0..*n).map(|_| xorshift(&mut seed)).collect();
                handle.inject_garbage(bytes);
                say(&format!("idcard: {n} garbage bytes before the next reply"));
            }
            Step::Corrupt(n) => {
                handle.corrupt_next_replies(*n);
                say(&format!("idcard: corrupting the next {n} replies"));
            }
            Step::Silent(on) => {
                handle.set_silent(*on);
                say(if *on {
                    "idcard: silent on"
                } else {
                    "idcard: silent off"
                });
            }
            Step::Loop => {
                say("idcard: loop");
                i = 0;
            }
        }
    }
}

/// Small PRNG for garbage bytes: they need to be arbitrary, not secure.
fn xorshift(state: &mut u64) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 32) as u8
}

async fn run_gate(args: GateArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let defaults = GateSimConfig::default();
    let config = GateSimConfig {
        unit_id: args.unit_id,
        auto_passage: if args.no_auto_passage {
            Vec::new()
        } else {
            defaults.auto_passage.clone()
        },
        auto_passage_delay: Duration::from_millis(args.auto_passage_ms),
        ..defaults
    };
    let handle = GateSim::start(args.link.as_deref(), config)?;
    say(&format!(
        "gate: Modbus RTU IO board (unit {}) on {}",
        args.unit_id,
        handle.device_path().display()
    ));

    let mut events = handle.subscribe();
    let narrate = async move {
        loop {
            match events.recv().await {
                Ok(GateEvent::Coil { coil, on }) => {
                    say(&format!(
                        "gate: coil {coil} {}",
                        if on { "ON" } else { "OFF" }
                    ));
                }
                Ok(GateEvent::Passage { input }) => say(&format!("gate: passage input {input}")),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = narrate => Ok(()),
        _ = handle.wait_stopped() => Err(anyhow::anyhow!("the simulator stopped unexpectedly")),
    };
    finish(
        || handle.stop(),
        handle.wait_stopped(),
        args.link.as_deref(),
        &handle.slave_path(),
    )
    .await;
    result
}

/// Stops the simulator, waits briefly for its pty to close, and makes sure our
/// symlink is gone even if the task could not clean up.
async fn finish(
    stop: impl FnOnce(),
    stopped: impl Future<Output = ()>,
    link: Option<&Path>,
    slave: &Path,
) {
    stop();
    let _ = tokio::time::timeout(Duration::from_secs(1), stopped).await;
    if let Some(link) = link {
        hw_sim::pty::remove_link_if_ours(link, slave);
    }
}
