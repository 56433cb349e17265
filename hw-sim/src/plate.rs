//! Licence-plate camera adapter simulator: writes one line per read,
//! `PLATE,COLOUR,CONFIDENCE\r\n` in UTF-8, to a pty. Plates are sent exactly
//! as given (no normalisation), so tests can feed the daemon messy ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::qr::Outlet;

/// Entry point for the plate camera simulator.
#[derive(Debug)]
pub struct PlateSim;

impl PlateSim {
    /// Opens a pty (symlinked at `link` if given) and serves the camera on
    /// it. Returns at once; must be called inside a tokio runtime. The task
    /// lives until [`PlateHandle::stop`], the last handle is dropped, or
    /// runtime shutdown.
    pub fn start(link: Option<&Path>) -> anyhow::Result<PlateHandle> {
        Ok(PlateHandle { outlet: Outlet::start(link)? })
    }
}

/// Control handle for a running plate camera simulator; cheap to clone.
#[derive(Clone)]
pub struct PlateHandle {
    outlet: Arc<Outlet>,
}

impl fmt::Debug for PlateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlateHandle").field("device_path", &self.outlet.device_path()).finish_non_exhaustive()
    }
}

/// The exact bytes of one read line. `confidence` is written as given.
pub fn plate_line(plate: &str, colour: &str, confidence: &str) -> Vec<u8> {
    format!("{plate},{colour},{confidence}\r\n").into_bytes()
}

impl PlateHandle {
    /// Path the daemon should open (the symlink if one was given).
    pub fn device_path(&self) -> PathBuf {
        self.outlet.device_path()
    }

    /// The `/dev/pts/N` slave behind [`Self::device_path`].
    pub fn slave_path(&self) -> PathBuf {
        self.outlet.slave_path()
    }

    /// The camera recognised `plate`; the confidence is written in Rust's
    /// shortest form (`0.93`, `1`).
    pub fn read(&self, plate: &str, colour: &str, confidence: f32) {
        self.read_text(plate, colour, &confidence.to_string());
    }

    /// Like [`Self::read`] with the confidence text verbatim (`0.930`, or
    /// something invalid on purpose).
    pub fn read_text(&self, plate: &str, colour: &str, confidence: &str) {
        self.outlet.send(plate_line(plate, colour, confidence));
    }

    /// Writes `bytes` as they are.
    pub fn send_raw(&self, bytes: Vec<u8>) {
        self.outlet.send_raw(bytes);
    }

    /// `n` bytes of line noise, now.
    pub fn inject_garbage(&self, n: usize) {
        self.outlet.garbage(n);
    }

    /// The next `n` reads get a byte that is not UTF-8 in the middle.
    pub fn corrupt_next_reads(&self, n: u32) {
        self.outlet.corrupt_next(n);
    }

    /// The next `n` reads are cut to half (line end lost).
    pub fn truncate_next_reads(&self, n: u32) {
        self.outlet.truncate_next(n);
    }

    /// Reads are dropped while silent.
    pub fn set_silent(&self, silent: bool) {
        self.outlet.set_silent(silent);
    }

    /// Every read waits this long before it is written; zero for none.
    pub fn set_slow(&self, delay: Duration) {
        self.outlet.line().set_slow(delay);
    }

    /// Pulls the cable for `downtime` (see [`crate::pty::Line::unplug`]).
    pub fn unplug(&self, downtime: Duration) {
        self.outlet.line().unplug(downtime);
    }

    /// How many times the cable was plugged back in.
    pub fn replugs(&self) -> u64 {
        self.outlet.line().replugs()
    }

    /// Ends the task and closes the pty (removing the symlink), asynchronously;
    /// await [`Self::wait_stopped`] to know it is done.
    pub fn stop(&self) {
        self.outlet.stop();
    }

    /// Resolves once the serving task has ended and the pty is closed.
    pub async fn wait_stopped(&self) {
        self.outlet.wait_stopped().await;
    }
}

#[cfg(test)]
mod tests {
    use super::plate_line;

    #[test]
    fn line_format() {
        assert_eq!(plate_line("闽D12345", "blue", "0.93"), "闽D12345,blue,0.93\r\n".as_bytes());
        assert_eq!(0.93f32.to_string(), "0.93");
    }
}
