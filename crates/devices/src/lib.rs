//! Device protocols and drivers of the gate daemon: the SAM resident ID card
//! reader (GA 467 frames over a serial port) and the Modbus RTU relay / IO
//! board that unlocks the turnstile.
//!
//! Layout: the frame codecs and the reader's protocol cycle are pure code
//! (bytes in, values out) and are unit-tested without a port; the `run_*`
//! functions are the only places that touch a serial port, one task per
//! port, each stopped by a [`tokio_util::sync::CancellationToken`].
//!
//! Personal data rule: nothing in this crate logs an ID number, name,
//! address or photo in clear. Card records and ID numbers mask themselves in
//! `Debug`/`Display`, and the photo bytes are dropped as soon as a frame is
//! parsed.

mod backoff;
pub mod gate_io;
mod health;
pub mod idcard;
mod line;
pub mod plate_reader;
pub mod qr_scanner;
pub mod sam;

pub use health::{DeviceHealth, HealthSnapshot};
