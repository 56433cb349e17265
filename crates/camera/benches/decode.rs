//! Decode time of one 640x480 frame holding one QR code (clean and noisy),
//! and of a frame without any: an Instant loop, median and p99.
//!
//! `cargo bench -p gate-camera --bench decode`

#[path = "../tests/support/mod.rs"]
mod support;

use gate_camera::{Frame, decode_qr};
use std::time::{Duration, Instant};

fn measure(name: &str, frame: &Frame, expected: usize, rounds: usize) {
    // Warm-up, and a check that the bench measures a successful decode.
    for _ in 0..20 {
        assert_eq!(decode_qr(frame).len(), expected, "{name}: wrong number of codes");
    }
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let found = decode_qr(frame);
            let took = start.elapsed();
            std::hint::black_box(found);
            took
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<28} median {:>8.3} ms   p99 {:>8.3} ms   ({rounds} rounds)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(500);
    measure("640x480, one code, clean", &support::clean_frame(), 1, rounds);
    measure("640x480, one code, noisy", &support::noisy_frame(), 1, rounds);
    measure("640x480, two codes", &support::two_codes_frame(), 2, rounds);
    measure("640x480, no code", &support::empty_frame(), 0, rounds);
}
