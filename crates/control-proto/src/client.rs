//! The client side of the control socket, blocking (std only): `gatectl`
//! is a short-lived command and needs no runtime. Errors name what the
//! technician must do: start the daemon, or get permission.

use crate::activity::Activity;
use crate::protocol::{Command, PROTOCOL_VERSION, Reply, Request, Response};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A reply takes at most this long (a selftest pulses outputs for a few seconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gated is not running (no socket at {})", .0.display())]
    NotRunning(PathBuf),
    #[error("gated is not running (stale socket at {}: nothing listens on it)", .0.display())]
    Stale(PathBuf),
    #[error(
        "permission denied on the control socket {}: run gatectl as root, as the daemon's user, or as a member of its [control] group",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// The daemon answered with an error (refused or failed).
    #[error("gated: {0}")]
    Daemon(String),
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gated sent something this gatectl does not understand: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The daemon is unreachable rather than wrong.
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning(_) | ClientError::Stale(_))
    }

    /// The caller lacks permission (file mode or the daemon's own check).
    pub fn is_permission(&self) -> bool {
        match self {
            ClientError::PermissionDenied(_) => true,
            ClientError::Daemon(m) => m.starts_with("permission denied"),
            _ => false,
        }
    }
}

/// One open connection to the daemon.
#[derive(Debug)]
pub struct Connection {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    pub fn open(socket: &Path) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            ErrorKind::NotFound => ClientError::NotRunning(socket.to_owned()),
            ErrorKind::ConnectionRefused => ClientError::Stale(socket.to_owned()),
            ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.to_owned()),
            _ => ClientError::Io { path: socket.to_owned(), source: e },
        })?;
        let io = |source| ClientError::Io { path: socket.to_owned(), source };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        Ok(Connection { path: socket.to_owned(), writer: stream, reader })
    }

    /// Sends the request. A daemon that refused the connection has already
    /// written why and closed; that reply is still read by [`Self::receive`].
    pub fn send(&mut self, command: Command) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_string(&Request::new(command)).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        match self.writer.write_all(line.as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Ok(()),
            Err(source) => Err(ClientError::Io { path: self.path.clone(), source }),
        }
    }

    /// The next reply; `Ok(None)` when the daemon closed the connection.
    /// Error replies become [`ClientError::Daemon`].
    pub fn receive(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut line = String::new();
        let n =
            self.reader.read_line(&mut line).map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Ok(None);
        }
        let response: Response =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {}", line.trim())))?;
        match response.reply {
            Reply::Error { message } => Err(ClientError::Daemon(message)),
            _ if response.v != PROTOCOL_VERSION => Err(ClientError::Protocol(format!(
                "protocol version {} (this gatectl speaks {PROTOCOL_VERSION})",
                response.v
            ))),
            reply => Ok(Some(reply)),
        }
    }

    /// No reply deadline (for `tail`).
    pub fn wait_forever(&mut self) -> Result<(), ClientError> {
        self.writer.set_read_timeout(None).map_err(|source| ClientError::Io { path: self.path.clone(), source })
    }
}

/// Sends one command and returns its single reply.
pub fn request(socket: &Path, command: Command) -> Result<Reply, ClientError> {
    let mut connection = Connection::open(socket)?;
    connection.send(command)?;
    connection
        .receive()?
        .ok_or_else(|| ClientError::Protocol("the daemon closed the connection without a reply".into()))
}

/// Follows the daemon's activity, calling `each` for every line until it
/// returns `false` or the daemon closes. `on_ready` runs once the daemon has
/// subscribed (nothing after that moment is missed); `on_lag` is told how
/// many lines a slow reader lost.
pub fn tail(
    socket: &Path,
    on_ready: impl FnOnce(),
    mut on_lag: impl FnMut(u64),
    mut each: impl FnMut(Activity) -> bool,
) -> Result<(), ClientError> {
    let mut connection = Connection::open(socket)?;
    connection.send(Command::Tail)?;
    connection.wait_forever()?;
    match connection.receive()? {
        Some(Reply::Tailing) => on_ready(),
        Some(other) => return Err(ClientError::Protocol(format!("expected the tail to start, got {other:?}"))),
        None => return Ok(()),
    }
    while let Some(reply) = connection.receive()? {
        match reply {
            Reply::Activity { activity } => {
                if !each(activity) {
                    break;
                }
            }
            Reply::Lagged { missed } => on_lag(missed),
            other => return Err(ClientError::Protocol(format!("unexpected line in a tail: {other:?}"))),
        }
    }
    Ok(())
}
