//! The systemd notification protocol (`sd_notify(3)`), spoken directly over
//! the datagram socket named by `NOTIFY_SOCKET`: readiness (`READY=1`),
//! shutdown (`STOPPING=1`) and watchdog keep-alives (`WATCHDOG=1`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) there is no [`Notifier`] and nothing
//! is sent. A failed send is logged and never fatal: the daemon keeps the gate
//! working whether or not its supervisor hears about it.
//!
//! `main` sends `READY=1` once `gate_app` reports every task running, and
//! feeds the watchdog only while the decision loop's heartbeat is fresh, so
//! that a wedged loop gets restarted.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A send never blocks longer than this: systemd reads its notification
/// socket promptly, and a stuck supervisor must not stall the daemon.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`: how often to send `WATCHDOG=1`.
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for, from `NOTIFY_SOCKET` (a path, or an
    /// abstract name starting with `@`), `WATCHDOG_USEC` and `WATCHDOG_PID`.
    /// `None` when not started by a service manager that wants notifications,
    /// or when the socket cannot be used (logged).
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match Notifier::new(&socket, watchdog) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(socket = %socket.to_string_lossy(), error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from the daemon");
                None
            }
        }
    }

    /// A notifier sending to `socket` (`NOTIFY_SOCKET` syntax), with the
    /// watchdog keep-alive period `watchdog_interval`.
    pub fn new(socket: &OsStr, watchdog_interval: Option<Duration>) -> io::Result<Notifier> {
        let addr = socket_addr(socket)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier { socket, addr, watchdog_interval })
    }

    /// Sends one notification: newline-separated `KEY=VALUE` assignments.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(drop)
    }

    /// `READY=1`: the service is up. systemd holds back units ordered after
    /// this one, and `systemctl start` waits, until it arrives.
    pub fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `STOPPING=1`: the service is shutting down on purpose.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1");
    }

    /// `WATCHDOG=1`: still alive. Send it every [`Self::watchdog_interval`].
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    /// How often to call [`Self::watchdog`]: half of `WATCHDOG_USEC` (as
    /// `sd_watchdog_enabled(3)` recommends), `None` when systemd runs no
    /// watchdog for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    fn send_logged(&self, state: &str) {
        match self.send(state) {
            Ok(()) => tracing::debug!(state, "notified systemd"),
            Err(e) => tracing::warn!(state, error = %e, "cannot notify systemd"),
        }
    }
}

/// `NOTIFY_SOCKET` to a socket address: `@name` is the abstract name `name`,
/// anything else a file system path.
fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
        )),
    }
}

/// The keep-alive period from `WATCHDOG_USEC` and `WATCHDOG_PID`: half the
/// timeout, and only when the watchdog is meant for process `pid`.
fn watchdog_interval(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(target) = watchdog_pid
        && target.trim().parse::<u32>().ok()? != pid
    {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::new(path.as_os_str(), None).expect("notifier");
        notifier.ready();
        notifier.watchdog();
        notifier.stopping();
        assert_eq!(receive(&listener), "READY=1");
        assert_eq!(receive(&listener), "WATCHDOG=1");
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("gated-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::new(OsStr::new(&format!("@{name}")), None).expect("notifier");
        notifier.ready();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn refuses_a_relative_or_empty_socket_name() {
        assert!(Notifier::new(OsStr::new("notify.sock"), None).is_err());
        assert!(Notifier::new(OsStr::new(""), None).is_err());
    }

    #[test]
    fn a_missing_listener_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nobody.sock");
        let notifier = Notifier::new(path.as_os_str(), None).expect("notifier");
        assert!(notifier.send("READY=1").is_err());
        notifier.ready(); // logged, not fatal
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }
}
