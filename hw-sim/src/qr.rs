//! QR scanner module simulator (docs/PROTOCOLS.md §3): on each scan it writes the
//! optional prefix, the payload and the configured terminator to a pty, as a
//! GM65-class module in serial mode does. Also holds the send-only port
//! plumbing the plate camera simulator shares.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::faults::{FrameFaults, noise};
use crate::pty::{Line, SimPty};

/// After this long without traffic the client may have died holding the
/// port's exclusive lock, which is then released (see
/// [`SimPty::release_exclusive`]).
const QUIET: Duration = Duration::from_secs(1);

/// A real UART never blocks the device: if nobody drains the line for this
/// long, the rest of the output is dropped, as on a cable nobody reads.
const WRITE_GIVE_UP: Duration = Duration::from_secs(1);

/// What the simulated module sends after each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimTerminator {
    Cr,
    Lf,
    CrLf,
    Tab,
    /// Nothing; the host must frame on the silence after a scan.
    None,
}

impl SimTerminator {
    /// The bytes on the wire.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            SimTerminator::Cr => b"\r",
            SimTerminator::Lf => b"\n",
            SimTerminator::CrLf => b"\r\n",
            SimTerminator::Tab => b"\t",
            SimTerminator::None => b"",
        }
    }
}

impl FromStr for SimTerminator {
    type Err = String;

    /// `cr`, `lf`, `crlf`, `tab` or `none`, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cr" => Ok(SimTerminator::Cr),
            "lf" => Ok(SimTerminator::Lf),
            "crlf" => Ok(SimTerminator::CrLf),
            "tab" => Ok(SimTerminator::Tab),
            "none" => Ok(SimTerminator::None),
            _ => Err(format!("unknown terminator `{s}` (expected cr, lf, crlf, tab or none)")),
        }
    }
}

/// A payload for display: first two and last two characters around an
/// ellipsis; four characters or fewer are starred entirely. Payloads and
/// plates may be personal data, so the simulator never prints them whole.
pub fn mask_payload(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..2].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - 2..]);
    out
}

/// What a talking-only device does wrong: frames damaged, dropped or late.
#[derive(Debug, Default)]
pub(crate) struct OutletFaults {
    frames: FrameFaults,
    /// Frames are dropped (the module is hung).
    silent: bool,
}

/// What goes through the outlet's queue.
enum Out {
    /// A frame (scan, plate line): the faults apply.
    Frame(Vec<u8>),
    /// Bytes exactly as given (raw steps, line noise).
    Raw(Vec<u8>),
}

/// A pty whose device side only talks: bytes queued by a handle are written
/// in order; whatever the host writes is read and ignored, so its writes
/// never block.
pub(crate) struct Outlet {
    tx: mpsc::UnboundedSender<Out>,
    cancel: CancellationToken,
    stopped: watch::Sender<bool>,
    line: Arc<Line>,
    faults: Arc<Mutex<OutletFaults>>,
}

impl Outlet {
    /// Opens the pty (see [`SimPty::open`]) and spawns the task serving it.
    /// Must be called inside a tokio runtime.
    pub(crate) fn start(link: Option<&Path>) -> anyhow::Result<Arc<Outlet>> {
        let pty = SimPty::open(link)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let outlet = Arc::new(Outlet {
            tx,
            cancel: CancellationToken::new(),
            stopped: watch::channel(false).0,
            line: Line::new(&pty),
            faults: Arc::default(),
        });
        // The task holds the parts it needs, not the outlet: the queue's
        // sender lives in the handles, so dropping the last one ends it.
        let (cancel, line, faults) = (outlet.cancel.clone(), Arc::clone(&outlet.line), Arc::clone(&outlet.faults));
        let stopped = outlet.stopped.clone();
        tokio::spawn(async move {
            pump(pty, rx, cancel, line, faults).await;
            stopped.send_replace(true);
        });
        Ok(outlet)
    }

    /// Queues a frame for the line (the faults apply); dropped silently once
    /// stopped, as a device that is switched off sends nothing.
    pub(crate) fn send(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(Out::Frame(bytes));
    }

    /// Queues bytes that go out exactly as given.
    pub(crate) fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(Out::Raw(bytes));
    }

    fn faults(&self) -> MutexGuard<'_, OutletFaults> {
        lock(&self.faults)
    }

    /// `n` bytes of line noise, sent now.
    pub(crate) fn garbage(&self, n: usize) {
        self.send_raw(noise(n));
    }

    /// The next `n` frames get one byte replaced by 0xFF (not UTF-8).
    pub(crate) fn corrupt_next(&self, n: u32) {
        self.faults().frames.corrupt = n;
    }

    /// The next `n` frames are cut to half (their terminator lost).
    pub(crate) fn truncate_next(&self, n: u32) {
        self.faults().frames.truncate = n;
    }

    /// Frames are dropped while silent.
    pub(crate) fn set_silent(&self, silent: bool) {
        self.faults().silent = silent;
    }

    pub(crate) fn line(&self) -> &Line {
        &self.line
    }

    pub(crate) fn device_path(&self) -> PathBuf {
        self.line.device_path()
    }

    pub(crate) fn slave_path(&self) -> PathBuf {
        self.line.slave_path()
    }

    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }

    pub(crate) async fn wait_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

fn lock(faults: &Mutex<OutletFaults>) -> MutexGuard<'_, OutletFaults> {
    // Plain data behind the lock: a panic elsewhere leaves it usable.
    faults.lock().unwrap_or_else(|p| p.into_inner())
}

/// What woke the serving loop.
enum Wake {
    Send(Vec<u8>),
    HostBytes,
    Quiet,
    Unplug(Duration),
    Stop,
}

async fn pump(
    pty: SimPty,
    mut rx: mpsc::UnboundedReceiver<Out>,
    cancel: CancellationToken,
    line: Arc<Line>,
    faults: Arc<Mutex<OutletFaults>>,
) {
    let mut pty = pty;
    let mut buf = [0u8; 512];
    loop {
        let wake = tokio::select! {
            _ = cancel.cancelled() => Wake::Stop,
            downtime = line.unplug_requested() => Wake::Unplug(downtime),
            out = rx.recv() => match out {
                None => Wake::Stop,
                Some(Out::Raw(bytes)) => Wake::Send(bytes),
                Some(Out::Frame(frame)) => {
                    let mut faults = lock(&faults);
                    if faults.silent {
                        continue;
                    }
                    let (bytes, _) = faults.frames.shape(frame, |frame| {
                        // No checksum to break: a byte that is not UTF-8.
                        let middle = frame.len() / 2;
                        if let Some(byte) = frame.get_mut(middle) {
                            *byte = 0xFF;
                        }
                    });
                    Wake::Send(bytes)
                }
            },
            read = tokio::time::timeout(QUIET, pty.read(&mut buf)) => match read {
                Ok(Ok(_)) => Wake::HostBytes,
                // A read error on the master is not recoverable.
                Ok(Err(_)) => Wake::Stop,
                Err(_elapsed) => Wake::Quiet,
            },
        };
        match wake {
            Wake::Stop => break,
            Wake::Unplug(downtime) => {
                drop(pty);
                match line.replug(downtime, &cancel).await {
                    Some(new) => pty = new,
                    None => return,
                }
            }
            Wake::HostBytes => {}
            Wake::Quiet => {
                // Best effort: failure only means a stale lock may remain.
                let _ = pty.release_exclusive();
            }
            Wake::Send(bytes) => {
                let slow = line.slow();
                if !slow.is_zero() {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(slow) => {}
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = tokio::time::timeout(WRITE_GIVE_UP, pty.write_all(&bytes)) => match r {
                        Ok(Ok(())) | Err(_) => {}
                        Ok(Err(_)) => break,
                    },
                }
            }
        }
    }
    drop(pty);
}

/// Entry point for the QR scanner simulator.
#[derive(Debug)]
pub struct QrSim;

impl QrSim {
    /// Opens a pty (symlinked at `link` if given) and serves a scanner that
    /// frames each scan as `prefix + payload + terminator`. Returns at once;
    /// must be called inside a tokio runtime. The task lives until
    /// [`QrHandle::stop`], the last handle is dropped, or runtime shutdown.
    pub fn start(link: Option<&Path>, terminator: SimTerminator, prefix: Option<String>) -> anyhow::Result<QrHandle> {
        Ok(QrHandle { outlet: Outlet::start(link)?, terminator, prefix: prefix.unwrap_or_default() })
    }
}

/// Control handle for a running QR scanner simulator; cheap to clone.
#[derive(Clone)]
pub struct QrHandle {
    outlet: Arc<Outlet>,
    terminator: SimTerminator,
    prefix: String,
}

impl fmt::Debug for QrHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QrHandle")
            .field("device_path", &self.outlet.device_path())
            .field("terminator", &self.terminator)
            .finish_non_exhaustive()
    }
}

impl QrHandle {
    /// Path the daemon should open (the symlink if one was given).
    pub fn device_path(&self) -> PathBuf {
        self.outlet.device_path()
    }

    /// The `/dev/pts/N` slave behind [`Self::device_path`].
    pub fn slave_path(&self) -> PathBuf {
        self.outlet.slave_path()
    }

    /// The exact bytes one scan of `payload` puts on the line.
    pub fn frame(&self, payload: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.prefix.len() + payload.len() + 2);
        bytes.extend_from_slice(self.prefix.as_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        bytes.extend_from_slice(self.terminator.bytes());
        bytes
    }

    /// A code is held under the scanner: its frame goes out in one write.
    pub fn scan(&self, payload: &str) {
        self.outlet.send(self.frame(payload));
    }

    /// Writes `bytes` as they are (faults, split frames, odd terminators).
    pub fn send_raw(&self, bytes: Vec<u8>) {
        self.outlet.send_raw(bytes);
    }

    /// `n` bytes of line noise, now.
    pub fn inject_garbage(&self, n: usize) {
        self.outlet.garbage(n);
    }

    /// The next `n` scans get a byte that is not UTF-8 in the middle.
    pub fn corrupt_next_scans(&self, n: u32) {
        self.outlet.corrupt_next(n);
    }

    /// The next `n` scans are cut to half (terminator lost).
    pub fn truncate_next_scans(&self, n: u32) {
        self.outlet.truncate_next(n);
    }

    /// Scans are dropped while silent (a hung module).
    pub fn set_silent(&self, silent: bool) {
        self.outlet.set_silent(silent);
    }

    /// Every scan waits this long before it is written; zero for none.
    pub fn set_slow(&self, delay: Duration) {
        self.outlet.line().set_slow(delay);
    }

    /// Pulls the cable for `downtime` (see [`Line::unplug`]).
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
    use super::*;

    #[test]
    fn terminators_parse_and_encode() {
        let table = [
            ("cr", SimTerminator::Cr, &b"\r"[..]),
            ("LF", SimTerminator::Lf, b"\n"),
            ("crlf", SimTerminator::CrLf, b"\r\n"),
            ("tab", SimTerminator::Tab, b"\t"),
            ("none", SimTerminator::None, b""),
        ];
        for (text, t, bytes) in table {
            assert_eq!(text.parse::<SimTerminator>(), Ok(t));
            assert_eq!(t.bytes(), bytes);
        }
        assert!("nul".parse::<SimTerminator>().is_err());
    }

    #[test]
    fn mask_keeps_two_and_two() {
        assert_eq!(mask_payload("HC1:NCFOXN%TS3DH"), "HC…DH");
        assert_eq!(mask_payload("闽D12345"), "闽D…45");
        assert_eq!(mask_payload("abcd"), "****");
        assert_eq!(mask_payload(""), "");
    }
}
