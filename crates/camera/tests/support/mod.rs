//! Synthetic camera frames with QR codes, shared by the tests and the
//! decode benchmark: no fixture files, every picture is made here.

#![allow(dead_code)] // each user takes what it needs

use gate_camera::Frame;
use qrcode::{Color, QrCode};

/// The payloads used throughout: a pass-like one, and two shorter ones for
/// the two-codes frame.
pub const PASS: &str = "GATEPASS:v1:site=SZ-NS-014;pid=p-000123;valid=2026-06-01T08:00/18:00;sig=9f8e7d6c5b4a39281706";
pub const LEFT: &str = "LEFT-CODE-0001";
pub const RIGHT: &str = "RIGHT-CODE-0002";

/// A 640x480 frame: a mid-gray background, as a camera sees a wall.
pub fn blank(width: u32, height: u32) -> Frame {
    Frame { width, height, luma: vec![170; width as usize * height as usize] }
}

/// Draws the code of `payload` with its top-left corner at (x, y), each
/// module `module` pixels wide, with the 4-module quiet zone, dark modules
/// at `dark` and light ones at `light`.
pub fn draw_qr(frame: &mut Frame, payload: &str, x: u32, y: u32, module: u32, dark: u8, light: u8) {
    let code = QrCode::new(payload.as_bytes()).expect("payload fits a QR code");
    let n = code.width() as u32;
    let colors = code.to_colors();
    let side = (n + 8) * module;
    for py in 0..side {
        for px in 0..side {
            let (mx, my) = ((px / module) as i64 - 4, (py / module) as i64 - 4);
            let is_dark = (0..n as i64).contains(&mx)
                && (0..n as i64).contains(&my)
                && colors[(my as u32 * n + mx as u32) as usize] == Color::Dark;
            let (fx, fy) = (x + px, y + py);
            if fx < frame.width && fy < frame.height {
                frame.luma[(fy * frame.width + fx) as usize] = if is_dark { dark } else { light };
            }
        }
    }
}

/// Draws the code of `payload` (with its quiet zone) centred at `centre`,
/// `module` pixels a module (fractions allowed), turned by `degrees`
/// clockwise: each pixel takes the colour of the module under its centre.
pub fn draw_qr_rotated(
    frame: &mut Frame,
    payload: &str,
    centre: (f32, f32),
    module: f32,
    degrees: f32,
    dark: u8,
    light: u8,
) {
    let code = QrCode::new(payload.as_bytes()).expect("payload fits a QR code");
    let n = code.width() as i64;
    let colors = code.to_colors();
    let half = (n + 8) as f32 * module / 2.0;
    let (sin, cos) = degrees.to_radians().sin_cos();
    // Far enough around the centre for any angle.
    let reach = (half * std::f32::consts::SQRT_2).ceil() as i64 + 1;
    for fy in (centre.1 as i64 - reach)..=(centre.1 as i64 + reach) {
        for fx in (centre.0 as i64 - reach)..=(centre.0 as i64 + reach) {
            if fx < 0 || fy < 0 || fx >= i64::from(frame.width) || fy >= i64::from(frame.height) {
                continue;
            }
            // The pixel's centre, turned back into the code's own axes.
            let (dx, dy) = (fx as f32 + 0.5 - centre.0, fy as f32 + 0.5 - centre.1);
            let (u, v) = (dx * cos + dy * sin + half, -dx * sin + dy * cos + half);
            if u < 0.0 || v < 0.0 || u >= 2.0 * half || v >= 2.0 * half {
                continue;
            }
            let (mx, my) = ((u / module) as i64 - 4, (v / module) as i64 - 4);
            let is_dark = (0..n).contains(&mx) && (0..n).contains(&my) && colors[(my * n + mx) as usize] == Color::Dark;
            frame.luma[(fy as u32 * frame.width + fx as u32) as usize] = if is_dark { dark } else { light };
        }
    }
}

/// Sensor noise and a little focus blur, deterministic: uniform noise of
/// +-`amplitude` from a fixed xorshift seed, then a 3x3 box blur.
pub fn degrade(frame: &mut Frame, amplitude: i32, seed: u64) {
    let mut state = seed | 1;
    for px in frame.luma.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % (2 * amplitude as u64 + 1)) as i32 - amplitude;
        *px = (i32::from(*px) + noise).clamp(0, 255) as u8;
    }
    let (w, h) = (frame.width as usize, frame.height as usize);
    let src = frame.luma.clone();
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            let mut count = 0u32;
            for dy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for dx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    sum += u32::from(src[dy * w + dx]);
                    count += 1;
                }
            }
            frame.luma[y * w + x] = (sum / count) as u8;
        }
    }
}

/// One code, crisp, in the middle of a 640x480 frame.
pub fn clean_frame() -> Frame {
    let mut frame = blank(640, 480);
    draw_qr(&mut frame, PASS, 180, 100, 4, 20, 235);
    frame
}

/// The same code, lower contrast, noisy and blurred.
pub fn noisy_frame() -> Frame {
    let mut frame = blank(640, 480);
    draw_qr(&mut frame, PASS, 180, 100, 4, 60, 200);
    degrade(&mut frame, 40, 0x5eed);
    frame
}

/// Nothing but noise.
pub fn empty_frame() -> Frame {
    let mut frame = blank(640, 480);
    degrade(&mut frame, 40, 0xbeef);
    frame
}

/// Two different codes side by side.
pub fn two_codes_frame() -> Frame {
    let mut frame = blank(640, 480);
    draw_qr(&mut frame, LEFT, 40, 140, 5, 20, 235);
    draw_qr(&mut frame, RIGHT, 360, 140, 5, 20, 235);
    frame
}

/// Saves `frame` as an 8-bit grayscale PNG.
pub fn save_png(frame: &Frame, path: &std::path::Path) {
    image::GrayImage::from_raw(frame.width, frame.height, frame.luma.clone())
        .expect("buffer matches size")
        .save(path)
        .expect("write PNG");
}
