//! QR decode of a 640x480 frame (`qr_clean`, `qr_noisy`, `qr_none`) beside
//! two other decoders on the same frames: `zbarimg` (zbar-tools, C) and
//! `rqrr` (pure Rust); and the camera pipeline's CPU with an empty lane in
//! view (`camera_idle_cpu`).

#[path = "../../camera/tests/support/mod.rs"]
mod support;

use crate::report::{Row, percentile};
use anyhow::{Context, Result, bail};
use gate_camera::{Frame, FrameSource, decode_qr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A frame with no code must cost at most this (the camera watches an
/// empty lane most of the day).
const NONE_GOAL_MS: f64 = 1.0;
const CODE_GOAL_MS: f64 = 2.0;
/// "At least 10x zbar": our decode at most a tenth of zbar's time.
const ZBAR_FACTOR: f64 = 10.0;

pub fn qr_rows(rounds: usize, zbar_copies: usize, work: &Path) -> Result<Vec<Row>> {
    let frames = [
        ("qr_clean", support::clean_frame(), 1usize),
        ("qr_noisy", support::noisy_frame(), 1),
        ("qr_none", support::empty_frame(), 0),
    ];
    std::fs::create_dir_all(work)?;
    let mut rows = Vec::new();
    for (name, frame, codes) in &frames {
        let ours = median_ms(rounds, || {
            let found = decode_qr(frame);
            found.len() == *codes
        })
        .with_context(|| format!("{name}: our decoder"))?;
        let rqrr = median_ms(rounds.min(200), || rqrr_decode(frame) == *codes);
        let zbar = zbar_ms(frame, *codes, zbar_copies, work);
        let goal_ms = if *codes == 0 { NONE_GOAL_MS } else { CODE_GOAL_MS };
        let mut row = Row::new(name, ours * 1000.0, "us median");
        row = match &zbar {
            Ok(zbar) => row.ceiling("zbarimg median per frame", zbar * 1000.0),
            Err(e) => row.ceiling("zbarimg median per frame", 0.0).note(format!("zbar not measured: {e:#}")),
        };
        row = match rqrr {
            Ok(rqrr) => row.detail("rqrr_median_us", rqrr * 1000.0).detail("ratio_to_rqrr", ours / rqrr),
            Err(e) => row.detail("rqrr", format!("not measured: {e:#}")),
        };
        let fast_enough = ours <= goal_ms;
        let vs_zbar = zbar.as_ref().is_ok_and(|z| ours * ZBAR_FACTOR <= *z);
        rows.push(
            row.goal(&format!("median <= {goal_ms} ms and >= {ZBAR_FACTOR}x zbar's speed"), fast_enough && vs_zbar)
                .detail("rounds", rounds as u64)
                .detail("median_goal_met", fast_enough)
                .detail("zbar_goal_met", vs_zbar),
        );
    }
    Ok(rows)
}

/// Median wall time of `decode` in milliseconds, after a warm-up; fails if
/// a decode finds the wrong number of codes.
fn median_ms(rounds: usize, mut decode: impl FnMut() -> bool) -> Result<f64> {
    for _ in 0..5 {
        if !decode() {
            bail!("wrong number of codes found");
        }
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        let right = std::hint::black_box(decode());
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if !right {
            bail!("wrong number of codes found");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

/// Codes rqrr finds and decodes in the frame.
fn rqrr_decode(frame: &Frame) -> usize {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| frame.luma[y * w + x]);
    image.detect_grids().iter().filter(|grid| grid.decode().is_ok()).count()
}

/// zbar's own time per frame: one `zbarimg` run over `copies` copies of the
/// frame and one over a single copy, repeated; the difference of the medians
/// divided by `copies - 1` leaves out the program's start.
fn zbar_ms(frame: &Frame, codes: usize, copies: usize, work: &Path) -> Result<f64> {
    let file = work.join(format!("frame-{codes}-{}.pgm", frame.luma.iter().map(|&b| u64::from(b)).sum::<u64>()));
    let mut pgm = format!("P5\n{} {}\n255\n", frame.width, frame.height).into_bytes();
    pgm.extend_from_slice(&frame.luma);
    std::fs::write(&file, pgm)?;
    let run = |n: usize| -> Result<Duration> {
        let start = Instant::now();
        let out = Command::new("zbarimg")
            .arg("-q")
            .arg("--raw")
            .args(std::iter::repeat_n(&file, n))
            .output()
            .context("zbarimg (apt-get install zbar-tools)")?;
        let took = start.elapsed();
        let found = String::from_utf8_lossy(&out.stdout).lines().count();
        // zbarimg exits 4 when it found nothing.
        if found != codes * n || !(out.status.success() || (codes == 0 && out.status.code() == Some(4))) {
            bail!("zbarimg found {found} codes in {n} frames ({}), expected {}", out.status, codes * n);
        }
        Ok(took)
    };
    let copies = copies.max(2);
    let mut one = Vec::new();
    let mut many = Vec::new();
    for _ in 0..5 {
        one.push(run(1)?.as_secs_f64() * 1000.0);
        many.push(run(copies)?.as_secs_f64() * 1000.0);
    }
    one.sort_by(f64::total_cmp);
    many.sort_by(f64::total_cmp);
    Ok(((percentile(&many, 0.5) - percentile(&one, 0.5)) / (copies - 1) as f64).max(0.001))
}

/// An empty lane, forever.
struct EmptyLane(Frame);

impl FrameSource for EmptyLane {
    fn next_frame(&mut self) -> Result<Option<Frame>, gate_camera::CameraError> {
        Ok(Some(self.0.clone()))
    }
}

/// The daemon's camera task (`run_camera`) at 15 frames/s on empty frames
/// for `seconds`: this process's CPU time over the wall time. Nothing else
/// runs in the process meanwhile.
pub fn camera_idle_cpu(seconds: f64) -> Result<Row> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let source = Box::new(EmptyLane(support::empty_frame()));
    let task = runtime.spawn(gate_camera::run_camera(source, Duration::from_millis(1000 / 15), tx, shutdown.clone()));
    // Settle first (thread pool, first frames).
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = process_cpu()?;
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = process_cpu()? - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    shutdown.cancel();
    runtime.block_on(task)?;
    let found = rx.try_recv().is_ok();
    let percent = cpu / wall * 100.0;
    Ok(Row::new("camera_idle_cpu", percent, "% of one core")
        .goal("<= 10% of one core", percent <= 10.0 && !found)
        .detail("seconds", wall)
        .detail("frames_per_s", 15))
}

/// User + system CPU seconds of this process so far.
pub fn process_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

/// The kernel's clock tick for /proc times: 100 on Linux everywhere this
/// runs (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
