//! Pseudo-terminal plumbing: opens a raw pty pair, publishes the slave under an
//! optional symlink, and moves bytes on the master side without busy-looping.
//! A [`Line`] is the cable behind it: it can be made slow, or unplugged (the
//! pty closed) and plugged back in at the same symlink.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long to back off when the master reports EIO (no slave side open).
const EIO_BACKOFF: Duration = Duration::from_millis(50);

/// After this long without traffic the client may have died holding the
/// port's exclusive lock; see [`SimPty::release_exclusive`].
const QUIET: Duration = Duration::from_secs(1);

/// A real UART never blocks the device: bytes go onto the wire whether anyone
/// listens or not. If the slave's buffer stays full this long, the rest of the
/// reply is dropped, as it would be on a cable nobody reads.
const WRITE_GIVE_UP: Duration = Duration::from_secs(1);

/// One simulated serial port: owns the master side and keeps the slave open.
pub struct SimPty {
    /// Master fds (one for reading, a dup for writing) until the first async
    /// use; registration with the tokio reactor is deferred so `open` can be
    /// called outside a runtime.
    master: Option<(OwnedFd, OwnedFd)>,
    io: Option<(pipe::Receiver, pipe::Sender)>,
    /// Held open so the master never sees EIO/HUP while the daemon closes and
    /// reopens the port.
    slave: OwnedFd,
    slave_path: PathBuf,
    link: Option<PathBuf>,
}

impl fmt::Debug for SimPty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPty").field("slave_path", &self.slave_path).field("link", &self.link).finish_non_exhaustive()
    }
}

impl SimPty {
    /// Opens a pseudo-terminal, raw mode, and if `link` is Some creates a
    /// symlink at that path pointing to the slave device (replacing a stale
    /// symlink, refusing to replace anything else). The slave path is what the
    /// daemon opens with tokio-serial.
    pub fn open(link: Option<&Path>) -> anyhow::Result<SimPty> {
        let pair = nix::pty::openpty(None, None).context("openpty")?;
        for fd in [&pair.master, &pair.slave] {
            // openpty(3) does not set close-on-exec; without it a child process
            // (e.g. a broker launched by the tests) would keep the pty alive.
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("set FD_CLOEXEC")?;
            // Raw on both sides: no echo, no line discipline, no CR/LF mangling.
            let mut tio = tcgetattr(fd).context("tcgetattr on pty")?;
            cfmakeraw(&mut tio);
            tcsetattr(fd, SetArg::TCSANOW, &tio).context("tcsetattr on pty")?;
        }
        // Non-blocking so the reactor, not a parked thread, waits for bytes.
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).context("F_GETFL on pty master")?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&pair.master, FcntlArg::F_SETFL(flags)).context("set O_NONBLOCK on pty master")?;
        // try_clone dups with close-on-exec; the copy shares O_NONBLOCK.
        let master_w = pair.master.try_clone().context("dup pty master")?;
        let slave_path = nix::unistd::ttyname(&pair.slave).context("ttyname of pty slave")?;

        let link = match link {
            Some(link) => {
                make_link(link, &slave_path)?;
                Some(link.to_path_buf())
            }
            None => None,
        };
        Ok(SimPty { master: Some((pair.master, master_w)), io: None, slave: pair.slave, slave_path, link })
    }

    /// The path a client should open: the symlink if one was asked for, else
    /// the `/dev/pts/N` slave.
    pub fn device_path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.slave_path)
    }

    /// The `/dev/pts/N` slave device itself.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// Clears `TIOCEXCL` on the slave. tokio-serial sets exclusive mode on
    /// open and clears it on close; a client killed in between leaves it set,
    /// and because we hold the slave open the flag would outlive it, so a
    /// restarted non-root daemon would get EBUSY. Called when the line is quiet.
    pub fn release_exclusive(&self) -> io::Result<()> {
        rustix::termios::ioctl_tiocnxcl(&self.slave).map_err(io::Error::from)
    }

    /// Registers the master with the reactor on first use. tokio's pipe types
    /// are plain non-blocking read(2)/write(2) wrappers around an fd; they are
    /// used here because `AsyncFd` construction now needs `unsafe` (forbidden
    /// in this workspace) and the pty master meets their contract (an open,
    /// non-blocking, readable/writable fd).
    fn io(&mut self) -> io::Result<&mut (pipe::Receiver, pipe::Sender)> {
        let io = match self.io.take() {
            Some(io) => io,
            None => {
                let (r, w) = self.master.take().ok_or_else(|| io::Error::other("pty master already consumed"))?;
                (pipe::Receiver::from_owned_fd_unchecked(r)?, pipe::Sender::from_owned_fd_unchecked(w)?)
            }
        };
        Ok(self.io.insert(io))
    }

    /// Reads what the client wrote to the slave. Waits (without spinning) until
    /// at least one byte is available; never returns `Ok(0)`.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (rx, _) = self.io()?;
            match rx.read(buf).await {
                Ok(n) if n > 0 => return Ok(n),
                // EOF/EIO: no slave open right now (cannot happen while we hold
                // the slave, but be tolerant): treat as "no data" and back off.
                Ok(_) => tokio::time::sleep(EIO_BACKOFF).await,
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    tokio::time::sleep(EIO_BACKOFF).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `buf` to the client, waiting for buffer space as needed.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (_, tx) = self.io()?;
        tx.write_all(buf).await
    }
}

impl Drop for SimPty {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            remove_link_if_ours(link, &self.slave_path);
        }
    }
}

fn make_link(link: &Path, slave: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(link).with_context(|| format!("removing stale symlink {}", link.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a symlink; refusing to replace it", link.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", link.display())),
    }
    std::os::unix::fs::symlink(slave, link)
        .with_context(|| format!("creating symlink {} -> {}", link.display(), slave.display()))
}

/// Removes `link` only if it still points at `slave`: a newer simulator may
/// already have taken the same link path over.
pub fn remove_link_if_ours(link: &Path, slave: &Path) {
    if std::fs::read_link(link).is_ok_and(|target| target == slave) {
        let _ = std::fs::remove_file(link);
    }
}

/// The cable of one simulated device: where the daemon finds it, and the
/// faults of the line itself (slow replies, unplugging). Shared between the
/// serving task and the device's handle.
#[derive(Debug)]
pub struct Line {
    link: Option<PathBuf>,
    /// The `/dev/pts/N` of the current pty (a replug gets a new one).
    slave_path: Mutex<PathBuf>,
    slow: Mutex<Duration>,
    unplug: Mutex<Option<Duration>>,
    wake: Notify,
    replugs: AtomicU64,
}

impl Line {
    /// The line of a freshly opened pty.
    pub fn new(pty: &SimPty) -> Arc<Line> {
        Arc::new(Line {
            link: pty.link.clone(),
            slave_path: Mutex::new(pty.slave_path.clone()),
            slow: Mutex::new(Duration::ZERO),
            unplug: Mutex::new(None),
            wake: Notify::new(),
            replugs: AtomicU64::new(0),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path the daemon should open: the symlink if one was given, else the
    /// current slave.
    pub fn device_path(&self) -> PathBuf {
        self.link.clone().unwrap_or_else(|| self.slave_path())
    }

    /// The current `/dev/pts/N` slave.
    pub fn slave_path(&self) -> PathBuf {
        Self::lock(&self.slave_path).clone()
    }

    /// Every reply (or sent frame) waits this long first; zero for none.
    pub fn set_slow(&self, delay: Duration) {
        *Self::lock(&self.slow) = delay;
    }

    /// The current reply delay.
    pub fn slow(&self) -> Duration {
        *Self::lock(&self.slow)
    }

    /// Pulls the cable: the pty is closed (the symlink removed) at once and
    /// a new one is opened at the same symlink after `downtime`. Without a
    /// symlink the new pty has another path, which a daemon cannot guess.
    pub fn unplug(&self, downtime: Duration) {
        *Self::lock(&self.unplug) = Some(downtime);
        self.wake.notify_one();
    }

    /// How many times the cable was plugged back in.
    pub fn replugs(&self) -> u64 {
        self.replugs.load(Ordering::SeqCst)
    }

    /// Resolves with the downtime of the next unplug request.
    pub(crate) async fn unplug_requested(&self) -> Duration {
        loop {
            let notified = self.wake.notified();
            if let Some(downtime) = Self::lock(&self.unplug).take() {
                return downtime;
            }
            notified.await;
        }
    }

    /// Sleeps out an unplug and opens the replacement pty; `None` when
    /// cancelled meanwhile or the pty cannot be opened again.
    pub(crate) async fn replug(&self, downtime: Duration, cancel: &CancellationToken) -> Option<SimPty> {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(downtime) => {}
        }
        let pty = SimPty::open(self.link.as_deref()).ok()?;
        *Self::lock(&self.slave_path) = pty.slave_path.clone();
        self.replugs.fetch_add(1, Ordering::SeqCst);
        Some(pty)
    }
}

/// What the serving loop hands to a device model.
pub(crate) enum Input<'a> {
    /// Bytes the client wrote.
    Bytes(&'a [u8]),
    /// The line has been quiet for the idle interval: partial frames are stale.
    Idle,
}

/// Drives a device model over a pty until `cancel` fires, then drops the pty
/// (closing it and removing its symlink). `on_input` returns the bytes to
/// send; `on_written` is told when they are all written (the instant the last
/// byte left). The line's faults apply: replies wait out [`Line::slow`], and
/// an unplug closes the pty, waits, and serves a new one (the model sees an
/// idle line, so half-received frames are dropped).
pub(crate) async fn serve(
    pty: SimPty,
    line: Arc<Line>,
    cancel: CancellationToken,
    idle: Duration,
    mut on_input: impl FnMut(Input<'_>) -> Vec<u8>,
    mut on_written: impl FnMut(Instant),
) {
    let mut buf = vec![0u8; 4096];
    let mut pending_partial = false;
    let mut pty = pty;
    loop {
        // Short timeout only while a frame may be half-received; otherwise
        // wake rarely, just to release a dead client's exclusive lock.
        let wait = if pending_partial { idle } else { QUIET };
        let read = tokio::select! {
            _ = cancel.cancelled() => break,
            downtime = line.unplug_requested() => {
                // The cable is pulled: both ends close, the daemon sees a
                // hang-up and the symlink disappears.
                drop(pty);
                let _ = on_input(Input::Idle);
                pending_partial = false;
                match line.replug(downtime, &cancel).await {
                    Some(new) => {
                        pty = new;
                        continue;
                    }
                    None => return,
                }
            }
            r = tokio::time::timeout(wait, pty.read(&mut buf)) => r,
        };
        let out = match read {
            Ok(Ok(n)) => {
                pending_partial = true;
                on_input(Input::Bytes(&buf[..n]))
            }
            // A read error on the master is not recoverable; stop serving.
            Ok(Err(_)) => break,
            Err(_elapsed) if pending_partial => {
                pending_partial = false;
                on_input(Input::Idle)
            }
            Err(_elapsed) => {
                // Best effort: failure only means a stale lock may remain.
                let _ = pty.release_exclusive();
                continue;
            }
        };
        if out.is_empty() {
            continue;
        }
        let slow = line.slow();
        if !slow.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(slow) => {}
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(WRITE_GIVE_UP, pty.write_all(&out)) => match r {
                Ok(Ok(())) => on_written(Instant::now()),
                Err(_) => {}
                Ok(Err(_)) => break,
            },
        }
    }
    drop(pty);
}
