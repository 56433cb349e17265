//! `hw-sim` command line: runs a simulated SAM ID-card module, Modbus gate IO
//! board, QR scanner or plate camera on a pty for technicians and demo
//! scripts, narrating on stdout (payloads and plates masked).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::error::RecvError;

use hw_sim::play::Target;
use hw_sim::qr::mask_payload;
use hw_sim::script::{Device, Step, check_loop_waits, parse_script_for, plate_step};
use hw_sim::{
    GateEvent, GateSim, GateSimConfig, IdCardEvent, IdCardHandle, IdCardSim, PlateSim, QrSim, SimCard, SimTerminator,
    mask_id,
};

/// Name used when a step places a card without one.
const DEFAULT_NAME: &str = "张三";

#[derive(Parser, Debug)]
#[command(name = "hw-sim", version, about = "Simulated checkpoint hardware on pseudo-terminals")]
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
    /// QR scanner module (serial mode: payload + terminator).
    Qr(QrArgs),
    /// Licence-plate camera adapter (PLATE,COLOUR,CONFIDENCE lines).
    Plate(PlateArgs),
    /// The central platform on MQTT: identity snapshots and deltas, the site
    /// mode, each in a signed envelope; prints what the gates send and checks
    /// their `seq`.
    Platform(Box<hw_sim::platform::PlatformArgs>),
    /// A camera: holds each frame of a folder in front of the lens, as the
    /// image file the daemon reads (`[devices.camera] snapshot_file`).
    Camera(CameraArgs),
}

#[derive(Args, Debug)]
struct CameraArgs {
    /// Folder of recorded frames (.png, .jpg, .pgm), shown in name order.
    #[arg(long, value_name = "DIR")]
    frames: PathBuf,
    /// The view file to keep replacing (what `snapshot_file` names).
    #[arg(long, value_name = "FILE")]
    link: PathBuf,
    /// How long each frame stays in view.
    #[arg(long, default_value_t = 1500)]
    hold_ms: u64,
    /// Empty view between frames.
    #[arg(long, default_value_t = 1000)]
    gap_ms: u64,
    /// Start again after the last frame.
    #[arg(long = "loop")]
    repeat: bool,
}

#[derive(Args, Debug)]
struct QrArgs {
    /// Create this symlink to the pty slave (removed on exit).
    #[arg(long)]
    link: Option<PathBuf>,
    /// What follows each payload: cr, lf, crlf, tab or none.
    #[arg(long, default_value = "cr")]
    terminator: SimTerminator,
    /// Text sent before each payload, e.g. the AIM id `]Q1`.
    #[arg(long, allow_hyphen_values = true)]
    prefix: Option<String>,
    /// Payload to scan; repeat for several.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    scan: Vec<String>,
    /// Scenario script (scan / raw / wait / loop and the misbehaviour steps:
    /// garbage / corrupt / truncate / slow / silent / unplug).
    #[arg(long, conflicts_with = "scan")]
    script: Option<PathBuf>,
    /// Pause after each --scan.
    #[arg(long, default_value_t = 2000)]
    gap_ms: u64,
    /// Repeat the scans (or the script) forever.
    #[arg(long = "loop")]
    repeat: bool,
}

#[derive(Args, Debug)]
struct PlateArgs {
    /// Create this symlink to the pty slave (removed on exit).
    #[arg(long)]
    link: Option<PathBuf>,
    /// A read to send; repeat for several. COLOUR defaults to blue, CONF to 0.95.
    #[arg(long, value_name = "PLATE[:COLOUR[:CONF]]")]
    read: Vec<String>,
    /// Scenario script (plate / raw / wait / loop and the misbehaviour steps:
    /// garbage / corrupt / truncate / slow / silent / unplug).
    #[arg(long, conflicts_with = "read")]
    script: Option<PathBuf>,
    /// Pause after each --read.
    #[arg(long, default_value_t = 3000)]
    gap_ms: u64,
    /// Repeat the reads (or the script) forever.
    #[arg(long = "loop")]
    repeat: bool,
}

#[derive(Args, Debug)]
struct IdcardArgs {
    /// Create this symlink to the pty slave (removed on exit).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Scenario script (place / remove / wait / loop and the misbehaviour steps:
    /// garbage / corrupt / truncate / slow / silent / status / unplug).
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
    /// Scenario script (passage / beam / fire / intrusion / input, the
    /// misbehaviour steps, wait / loop).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Input of the fire alarm contact.
    #[arg(long, default_value_t = 4)]
    fire_input: u16,
    /// The fire contact is open at rest (default: closed at rest, so the
    /// input starts on and an alarm switches it off).
    #[arg(long)]
    fire_normally_open: bool,
    /// Input of the tailgating beam.
    #[arg(long, default_value_t = 2)]
    beam_input: u16,
    /// Input of the door-forced / intrusion signal.
    #[arg(long, default_value_t = 3)]
    intrusion_input: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
        Command::Qr(args) => run_qr(args, shutdown).await,
        Command::Plate(args) => run_plate(args, shutdown).await,
        Command::Platform(args) => hw_sim::platform::run_cli(*args, shutdown).await,
        Command::Camera(args) => {
            let frames = hw_sim::camera::frames_in(&args.frames)?;
            println!("camera: {} frames from {} shown at {}", frames.len(), args.frames.display(), args.link.display());
            let hold = std::time::Duration::from_millis(args.hold_ms);
            let gap = std::time::Duration::from_millis(args.gap_ms);
            let played = tokio::select! {
                played = hw_sim::camera::play(&frames, &args.link, hold, gap, args.repeat) => played,
                () = shutdown => Ok(()),
            };
            hw_sim::camera::clear(&args.link)?;
            played
        }
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
            let text = std::fs::read_to_string(path).with_context(|| format!("reading script {}", path.display()))?;
            parse_script_for(&text, Device::IdCard).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
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
                    Step::Place { id_number: id.to_string(), name },
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
    say(&format!("idcard: SAM module on {}", handle.device_path().display()));

    let mut events = handle.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(IdCardEvent::Replied { command: Some((0x30, 0x01 | 0x10)), status: 0x90, corrupted }) => {
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
    finish(|| handle.stop(), handle.wait_stopped(), args.link.as_deref(), &handle.slave_path()).await;
    result
}

async fn play(handle: &IdCardHandle, steps: &[Step]) {
    let mut seed =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x9E37_79B9_7F4A_7C15) | 1;
    let mut i = 0;
    while let Some(step) = steps.get(i) {
        i += 1;
        match step {
            Step::Place { id_number, name } => {
                handle.place(SimCard::resident(id_number, name.as_deref().unwrap_or(DEFAULT_NAME)));
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
                say(if *on { "idcard: silent on" } else { "idcard: silent off" });
            }
            Step::Loop => {
                say("idcard: loop");
                i = 0;
            }
            // Every other misbehaviour (cut replies, slow or given-status
            // replies, unplugging); steps of other devices were refused by
            // `parse_script_for` before anything started.
            other => say(&Target::IdCard(handle).apply(other)),
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
        auto_passage: if args.no_auto_passage { Vec::new() } else { defaults.auto_passage.clone() },
        auto_passage_delay: Duration::from_millis(args.auto_passage_ms),
        beam_input: args.beam_input,
        intrusion_input: args.intrusion_input,
        fire_input: Some(args.fire_input),
        fire_normally_closed: !args.fire_normally_open,
        ..defaults
    };
    // Every script error surfaces here, before a pty or symlink exists.
    let steps = device_steps(args.script.as_deref(), Device::Gate, Vec::new(), false)?;
    let handle = GateSim::start(args.link.as_deref(), config)?;
    say(&format!("gate: Modbus RTU IO board (unit {}) on {}", args.unit_id, handle.device_path().display()));

    let mut events = handle.subscribe();
    let narrate = async move {
        loop {
            match events.recv().await {
                Ok(GateEvent::Coil { coil, on }) => {
                    say(&format!("gate: coil {coil} {}", if on { "ON" } else { "OFF" }));
                }
                Ok(GateEvent::Passage { input }) => say(&format!("gate: passage input {input}")),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
        std::future::pending::<()>().await;
    };
    let script = async {
        hw_sim::play::play(Target::Gate(&handle), &steps, say).await;
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = narrate => Ok(()),
        _ = script => Ok(()),
        _ = handle.wait_stopped() => Err(anyhow::anyhow!("the simulator stopped unexpectedly")),
    };
    finish(|| handle.stop(), handle.wait_stopped(), args.link.as_deref(), &handle.slave_path()).await;
    result
}

/// Steps for a send-only device: the script (checked for `device`) or the
/// ones built from the command line, `loop` appended when asked.
fn device_steps(
    script: Option<&Path>,
    device: Device,
    from_args: Vec<Step>,
    repeat: bool,
) -> anyhow::Result<Vec<Step>> {
    let mut steps = match script {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading script {}", path.display()))?;
            parse_script_for(&text, device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => from_args,
    };
    if repeat && !steps.is_empty() && steps.last() != Some(&Step::Loop) {
        steps.push(Step::Loop);
    }
    check_loop_waits(&steps).map_err(anyhow::Error::msg)?;
    Ok(steps)
}

/// Plays `wait` and `loop` itself and hands every other step to `act`.
async fn play_steps(tag: &str, steps: &[Step], mut act: impl FnMut(&Step)) {
    let mut i = 0;
    while let Some(step) = steps.get(i) {
        i += 1;
        match step {
            Step::Wait(d) => {
                say(&format!("{tag}: wait {} ms", d.as_millis()));
                tokio::time::sleep(*d).await;
            }
            Step::Loop => {
                say(&format!("{tag}: loop"));
                i = 0;
            }
            other => act(other),
        }
    }
}

async fn run_qr(args: QrArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let gap = Step::Wait(Duration::from_millis(args.gap_ms));
    let mut from_args = Vec::new();
    for text in &args.scan {
        if text.is_empty() {
            bail!("--scan needs a payload");
        }
        from_args.extend([Step::Scan(text.clone()), gap.clone()]);
    }
    // Every script error surfaces here, before a pty or symlink exists.
    let steps = device_steps(args.script.as_deref(), Device::Qr, from_args, args.repeat)?;
    let handle = QrSim::start(args.link.as_deref(), args.terminator, args.prefix.clone())?;
    say(&format!(
        "qr: scanner on {} (terminator {:?}, prefix {:?})",
        handle.device_path().display(),
        args.terminator,
        args.prefix.as_deref().unwrap_or("")
    ));
    let script = async {
        play_steps("qr", &steps, |step| match step {
            Step::Scan(text) => {
                handle.scan(text);
                say(&format!("qr: scanned {} chars {}", text.chars().count(), mask_payload(text)));
            }
            Step::Raw(bytes) => {
                handle.send_raw(bytes.clone());
                say(&format!("qr: sent {} raw bytes", bytes.len()));
            }
            // Misbehaviour; other devices' steps were refused by
            // `parse_script_for` before anything started.
            other => say(&Target::Qr(&handle).apply(other)),
        })
        .await;
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = script => Ok(()),
        _ = handle.wait_stopped() => Err(anyhow::anyhow!("the simulator stopped unexpectedly")),
    };
    finish(|| handle.stop(), handle.wait_stopped(), args.link.as_deref(), &handle.slave_path()).await;
    result
}

async fn run_plate(args: PlateArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let gap = Step::Wait(Duration::from_millis(args.gap_ms));
    let mut from_args = Vec::new();
    for spec in &args.read {
        let mut fields = spec.splitn(3, ':');
        let plate = fields.next().unwrap_or("");
        let colour = fields.next().unwrap_or("blue");
        let confidence = fields.next().unwrap_or("0.95");
        let step = plate_step(plate, colour, confidence)
            .map_err(|e| anyhow::anyhow!("--read {}: {e}", mask_payload(plate)))?;
        from_args.extend([step, gap.clone()]);
    }
    // Every script error surfaces here, before a pty or symlink exists.
    let steps = device_steps(args.script.as_deref(), Device::Plate, from_args, args.repeat)?;
    let handle = PlateSim::start(args.link.as_deref())?;
    say(&format!("plate: camera on {}", handle.device_path().display()));
    let script = async {
        play_steps("plate", &steps, |step| match step {
            Step::Plate { plate, colour, confidence } => {
                handle.read_text(plate, colour, confidence);
                say(&format!("plate: read {} {colour} {confidence}", mask_payload(plate)));
            }
            Step::Raw(bytes) => {
                handle.send_raw(bytes.clone());
                say(&format!("plate: sent {} raw bytes", bytes.len()));
            }
            // Misbehaviour; other devices' steps were refused by
            // `parse_script_for` before anything started.
            other => say(&Target::Plate(&handle).apply(other)),
        })
        .await;
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = script => Ok(()),
        _ = handle.wait_stopped() => Err(anyhow::anyhow!("the simulator stopped unexpectedly")),
    };
    finish(|| handle.stop(), handle.wait_stopped(), args.link.as_deref(), &handle.slave_path()).await;
    result
}

/// Stops the simulator, waits briefly for its pty to close, and makes sure our
/// symlink is gone even if the task could not clean up.
async fn finish(stop: impl FnOnce(), stopped: impl Future<Output = ()>, link: Option<&Path>, slave: &Path) {
    stop();
    let _ = tokio::time::timeout(Duration::from_secs(1), stopped).await;
    if let Some(link) = link {
        hw_sim::pty::remove_link_if_ours(link, slave);
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
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        if let Err(problems) = gate_clidoc::check(&super::Cli::command(), &deploy) {
            panic!("{problems}");
        }
    }
}
