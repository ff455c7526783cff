//! The control socket: a Unix socket at a path the operator chooses, through which a restart
//! is asked for **and its result returned**, and the server's state read. A signal cannot say
//! whether the restart it caused worked; `systemctl reload`, a deploy script or
//! `docker exec … --reload` need to know.
//!
//! The socket is one of the generation's inherited sockets, so its path outlives every restart;
//! the serving generation answers on it. The first generation makes it private (mode 0600)
//! before it can be reached, and a generation that inherits it never touches the path (a
//! removed path is reported, never recreated, never followed). A peer whose uid is neither the
//! server's nor root's is refused (`SO_PEERCRED`).
//!
//! The protocol is one line each way: the client sends `restart`, `status` or `status json`;
//! the server answers `ok …` or `error …` (for `status`, `ok` and then `key: value` lines; for
//! `status json`, `ok` and then one line of JSON) and closes. A
//! restart that did not happen is answered `error failed: …` (the old generation still
//! serves) or `error stopping: …`, so a client tells them apart ([`ControlError`], in
//! [`Error::Control`]); a client that does not know these words shows the line as it reads. A
//! generation that has already handed over answers `retry …`, and the client asks again (the
//! new generation answers). A command whose client has gone by the time the server reads it
//! is not run.
//!
//! ```no_run
//! # fn main() -> Result<(), gracenet::Error> {
//! // In the server: gracenet::Generation::builder().control_socket("/run/app/control")
//! // In the operator's tool:
//! let answer = gracenet::control::Client::new("/run/app/control").restart()?;
//! println!("{answer}"); // "generation 3 serving with pid 4242"
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;

/// What kind of failure an [`Error::Control`] is, for a caller that acts on it: a deploy
/// script rolls back on [`RestartFailed`](Self::RestartFailed), waits for the service
/// manager on [`Stopping`](Self::Stopping), and retries or alerts on
/// [`Unreachable`](Self::Unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// The restart was tried and failed (the next generation could not start, died, was not
    /// ready in time, or refused what it was handed): the generation that was asked still
    /// serves. The server's [`RestartError::Failed`](crate::RestartError::Failed).
    RestartFailed,
    /// The server is stopping: it starts no new generation. The server's
    /// [`RestartError::Stopping`](crate::RestartError::Stopping).
    Stopping,
    /// The server could not be reached, was not trusted, or gave no answer within the
    /// timeout (or its serving generation could not be found after hand-overs).
    Unreachable,
    /// The server answered with another error (an unknown command), or with something that
    /// is not a control socket's answer.
    Refused,
    /// The control socket's setting is wrong (in the server: its path is also the PID
    /// file's).
    Setup,
}

/// A control socket's path, as the file it named when this process took the socket: removed
/// at the end only if that same file is still there (not one another server put there since).
#[derive(Debug, Clone)]
pub(crate) struct PathIdentity {
    path: PathBuf,
    /// The socket file's device and inode; `None` when the path did not name a socket of this
    /// user's.
    file: Option<(u64, u64)>,
    /// For a socket this process inherited: the address the socket itself is bound at (its
    /// unique temporary name, `crate::bind::unix_private`), when it is not `path`. What is at
    /// the path when this process looked may already be another server's (one that replaced
    /// the file since the first generation made it): the path is only removed if a connection
    /// through it reaches a socket bound at this address, our own.
    bound: Option<Vec<u8>>,
}

impl PathIdentity {
    /// The file at `path` now: the socket this process has just made there.
    pub(crate) fn of(path: &Path) -> PathIdentity {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let file = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.file_type().is_socket() && m.uid() == nix::unistd::geteuid().as_raw())
            .map(|m| (m.dev(), m.ino()));
        PathIdentity {
            path: path.to_owned(),
            file,
            bound: None,
        }
    }

    /// The path of an inherited socket, `listener`, whose file another process made.
    pub(crate) fn inherited(path: &Path, listener: std::os::fd::BorrowedFd<'_>) -> PathIdentity {
        use std::os::unix::ffi::OsStrExt;
        let bound = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
        )
        .ok()
        .and_then(|a| a.path().map(|p| p.as_os_str().as_bytes().to_vec()))
        .filter(|b| b.as_slice() != path.as_os_str().as_bytes());
        PathIdentity {
            bound,
            ..PathIdentity::of(path)
        }
    }

    /// Whether a connection through the path reaches a socket bound at `bound`: ours. A socket
    /// nobody listens on (refused) is stale, whoever made it: it is ours to remove if it is
    /// still the file we saw. Anything else (another server's socket, a full backlog) is not.
    fn reaches_us(&self, bound: &[u8]) -> bool {
        use socket2::{Domain, SockAddr, Socket, Type};
        use std::os::unix::ffi::OsStrExt;
        let Ok(addr) = SockAddr::unix(&self.path) else {
            return false;
        };
        let Ok(probe) = Socket::new(Domain::UNIX, Type::STREAM, None) else {
            return false;
        };
        if probe.set_nonblocking(true).is_err() {
            return false;
        }
        match probe.connect(&addr) {
            Ok(()) => probe
                .peer_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.as_os_str().as_bytes() == bound))
                .unwrap_or(false),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                PathIdentity::of(&self.path).file == self.file
            }
            Err(_) => false,
        }
    }

    /// Removes the path if it still names the same socket file (for an inherited socket: if
    /// it still leads to this socket).
    pub(crate) fn remove(&self) {
        if PathIdentity::of(&self.path).file.is_none() {
            crate::log::debug!(path = %self.path.display(), "the control socket's path names no socket of ours: nothing to remove");
            return;
        }
        let ours = match &self.bound {
            Some(bound) => self.reaches_us(bound),
            None => self.file.is_some() && PathIdentity::of(&self.path).file == self.file,
        };
        if !ours {
            crate::log::info!(
                path = %self.path.display(),
                "leaving the control socket's path: the socket there is not this server's (another server made it since)"
            );
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            crate::log::debug!(path = %self.path.display(), error = %e, "cannot remove the control socket's path");
        }
    }
}

/// The `LISTEN_FDNAMES` name the control socket is passed on with.
pub const SOCKET_NAME: &str = "grace-control";

/// How long [`Client::restart`] waits by default: longer than the default ready timeout
/// ([`DEFAULT_READY_TIMEOUT`](crate::DEFAULT_READY_TIMEOUT), 30 s) and well inside systemd's
/// default reload timeout (90 s), so `ExecReload=` reports the failure itself.
pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(45);

/// How long [`Client::status`] waits by default: a server answers at once unless it cannot
/// accept (at its file descriptor limit).
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the control socket at a path: what `gracedemo --reload` and `--status` use.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the control socket at `path`, with the default timeouts
    /// ([`DEFAULT_RESTART_TIMEOUT`], [`DEFAULT_STATUS_TIMEOUT`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: None,
        }
    }

    /// How long to wait, in all, for the answer (connecting included) before giving up.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Asks the server to restart, and waits until the new generation serves or the restart
    /// failed. Returns the server's answer ("generation 3 serving with pid 4242").
    ///
    /// # Errors
    /// [`Error::Control`], its `kind` saying which: [`ControlError::RestartFailed`] when the
    /// restart failed (the reason the server gave; the old generation still serves),
    /// [`ControlError::Stopping`] when the server is stopping, [`ControlError::Unreachable`]
    /// when the socket cannot be reached or no answer came within the timeout (a restart the
    /// server had not yet read is then never run).
    pub fn restart(&self) -> Result<String, Error> {
        self.request("restart", self.timeout.unwrap_or(DEFAULT_RESTART_TIMEOUT))
    }

    /// Reads the server's state: its generation, pid, phase, open connections and the older
    /// generations still draining, as `key: value` lines.
    ///
    /// # Errors
    /// [`Error::Control`] when the socket cannot be reached, the server refuses, or no answer
    /// came within the timeout.
    pub fn status(&self) -> Result<String, Error> {
        self.request("status", self.timeout.unwrap_or(DEFAULT_STATUS_TIMEOUT))
    }

    /// Asks a cluster's primary ([`crate::Cluster`]) to run `workers` workers: more are
    /// started, the extra ones drain. Returns the primary's answer.
    ///
    /// # Errors
    /// [`Error::Control`] when the socket cannot be reached, the server refuses (a server
    /// that is not a cluster does not know the command), or no answer came within the
    /// timeout.
    pub fn scale(&self, workers: usize) -> Result<String, Error> {
        self.request(
            &format!("scale {workers}"),
            self.timeout.unwrap_or(DEFAULT_STATUS_TIMEOUT),
        )
    }

    /// Reads the server's state as one JSON object (the members are
    /// [`Generation::status_json`](crate::Generation::status_json)'s), for scripts and
    /// monitoring.
    ///
    /// # Errors
    /// As [`status`](Self::status); a server from before the JSON form answers
    /// [`ControlError::Refused`] (an unknown command).
    pub fn status_json(&self) -> Result<String, Error> {
        self.request("status json", self.timeout.unwrap_or(DEFAULT_STATUS_TIMEOUT))
    }

    fn request(&self, command: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        // A generation that has handed over says `retry`: the next one answers. A restart
        // asked again says so (`restart again`): it joins a restart the new generation has
        // under way (one begun after the hand-over, so after this request), so a burst of
        // requests asked during one restart is answered by the next one, not one each.
        // Bounded by the deadline and a count, with a backoff.
        let mut asked = command;
        let mut pause = Duration::from_millis(5);
        for _ in 0..200 {
            match self.ask(asked, deadline, timeout)? {
                Answer::Retry(_) if Instant::now() + pause < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                    if command == "restart" {
                        asked = "restart again";
                    }
                }
                Answer::Retry(reason) => return Err(self.fail(reason)),
                Answer::Done(answer) => return answer,
            }
        }
        Err(self.fail(format!(
            "every answer to {command:?} said to ask again: is the server restarting in a loop?"
        )))
    }

    /// The server could not be reached, or did not answer: `reason`.
    fn fail(&self, reason: String) -> Error {
        self.fail_as(ControlError::Unreachable, reason)
    }

    fn fail_as(&self, kind: ControlError, reason: String) -> Error {
        Error::Control {
            path: self.path.clone(),
            kind,
            reason,
        }
    }

    fn ask(&self, command: &str, deadline: Instant, timeout: Duration) -> Result<Answer, Error> {
        let late = |read: bool| {
            self.fail(if read || command.starts_with("status") {
                format!(
                    "no answer to {command:?} within {:.1} s; if the server had read it, it goes \
                     on: see --status (or raise the timeout)",
                    timeout.as_secs_f64()
                )
            } else {
                format!(
                    "no answer to {command:?} within {:.1} s (is the server at its file \
                     descriptor limit?); a command the server had not read by then is not run",
                    timeout.as_secs_f64()
                )
            })
        };
        let stream = connect(&self.path, deadline).map_err(|e| match e {
            Some(e) if e.kind() == std::io::ErrorKind::PermissionDenied => self.fail(format!(
                "cannot connect ({e}): run this as the server's user or root"
            )),
            Some(e) => self.fail(format!(
                "cannot connect ({e}): is the server running with this control socket?"
            )),
            None => late(false),
        })?;
        trusted(&stream, &self.path).map_err(|reason| self.fail(reason))?;
        let remaining = |read| {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| late(read))
        };
        stream
            .set_write_timeout(Some(remaining(false)?))
            .map_err(|e| self.fail(e.to_string()))?;
        (&stream)
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| self.fail(format!("cannot send {command:?}: {e}")))?;
        // The whole answer by the deadline, however it trickles in.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            stream
                .set_read_timeout(Some(remaining(!answer.is_empty())?))
                .map_err(|e| self.fail(e.to_string()))?;
            match (&stream).read(&mut chunk) {
                Ok(0) => break,
                Ok(n) if answer.len() + n <= MAX_ANSWER => answer.extend_from_slice(&chunk[..n]),
                Ok(_) => {
                    return Err(self.fail_as(
                        ControlError::Refused,
                        format!(
                            "the answer to {command:?} is longer than {MAX_ANSWER} bytes: is this a \
                         grace control socket?"
                        ),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // The file descriptor hint only when the server has not read the command.
                    return Err(late(!answer.is_empty() || !unread(&stream)));
                }
                Err(e) => return Err(self.fail(format!("no answer to {command:?}: {e}"))),
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        // What the server says is shown as text: no control characters reach a terminal.
        let answer: String = answer
            .trim_end()
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
        if let Some(rest) = answer.strip_prefix("ok") {
            return Ok(Answer::Done(Ok(rest.trim_start().to_owned())));
        }
        if let Some(reason) = answer.strip_prefix("retry") {
            return Ok(Answer::Retry(reason.trim_start().to_owned()));
        }
        Ok(Answer::Done(Err(match answer.strip_prefix("error") {
            Some(reason) => {
                let (kind, reason) = read_error(reason.trim_start());
                self.fail_as(kind, reason)
            }
            None if answer.is_empty() => self.fail(format!(
                "the server closed the connection without answering {command:?}"
            )),
            None => self.fail_as(ControlError::Refused, format!("unexpected answer {answer:?}")),
        })))
    }
}

/// Whether what was sent on `stream` is still waiting for the server to read it (a server at
/// its file descriptor limit has not accepted the connection). Unknown counts as read.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn unread(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int: the bytes sent and not yet read by the peer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    rc == 0 && queued > 0
}

/// Elsewhere the queue is not known: the command may have been read.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unread(_stream: &UnixStream) -> bool {
    false
}

/// The kind word of an `error` answer to `restart` that failed, and of one whose server is
/// stopping: `error failed: REASON; generation N (pid P) still serving`, `error stopping:
/// MESSAGE`. A client that does not know the words shows them as they read.
const FAILED: &str = "failed:";
const STOPPING: &str = "stopping:";

/// Reads an `error` answer (what follows `error `): its kind, and the reason as the server's
/// error says it. Also reads a server from before the kind words, by its messages.
fn read_error(answer: &str) -> (ControlError, String) {
    if let Some(rest) = answer.strip_prefix(FAILED) {
        return (
            ControlError::RestartFailed,
            format!("restart failed: {}", rest.trim_start()),
        );
    }
    if let Some(rest) = answer.strip_prefix(STOPPING) {
        return (ControlError::Stopping, rest.trim_start().to_owned());
    }
    let kind = if answer.starts_with("restart failed:") {
        ControlError::RestartFailed
    } else if answer.contains(" is stopping: not restarting") {
        ControlError::Stopping
    } else {
        ControlError::Refused
    };
    (kind, answer.to_owned())
}

/// The uid of the process at the other end.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(stream: &UnixStream) -> nix::Result<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).map(|c| c.uid())
}

/// The uid of the process at the other end.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(stream: &UnixStream) -> nix::Result<u32> {
    nix::unistd::getpeereid(stream).map(|(uid, _)| uid.as_raw())
}

/// The longest answer a client reads: far above the longest `status` a server gives (a
/// cluster of [`MAX_WORKERS`](crate::cluster::MAX_WORKERS), a few hundred bytes each), and
/// a bound on what a socket that is not a server's can make the client hold.
pub(crate) const MAX_ANSWER: usize = 1024 * 1024;

/// Whether the process answering on `stream` may be believed: it runs as this user, as
/// root, or as the owner of the socket's directory (a service's runtime directory). In a
/// directory anyone can write (`/tmp`), another user could have put a socket of their own at
/// the path, and a deploy script would take its "ok" for the server's.
fn trusted(stream: &UnixStream, path: &Path) -> Result<(), String> {
    let peer = peer_uid(stream).map_err(|e| format!("cannot read the server's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    let dir_owner = {
        use std::os::unix::fs::MetadataExt;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::metadata(dir).map(|m| m.uid()).ok()
    };
    if peer == me || peer == 0 || Some(peer) == dir_owner {
        return Ok(());
    }
    Err(format!(
        "the process answering there runs as uid {peer}, which is neither you (uid {me}), nor \
         root, nor the owner of the socket's directory: not trusting it (another user's socket \
         at this path?)"
    ))
}

enum Answer {
    Done(Result<String, Error>),
    Retry(String),
}

/// Connects by the deadline. A server that does not accept (at its fd limit) lets the
/// kernel queue a connection until its backlog is full; then `connect` would block: it is
/// retried instead. `Err(None)`: the deadline passed.
fn connect(path: &Path, deadline: Instant) -> Result<UnixStream, Option<std::io::Error>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path).map_err(Some)?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(Some)?;
        socket.set_nonblocking(true).map_err(Some)?;
        match socket.connect(&addr) {
            Ok(()) => {
                socket.set_nonblocking(false).map_err(Some)?;
                return Ok(socket.into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(None),
            Err(e) => return Err(Some(e)),
        }
    }
}

/// Whether a control client has closed its connection (it gave up waiting: its command is
/// not to be run), as far as the server can tell without reading.
pub(crate) fn client_gone(stream: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(stream, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

/// The server side, run by a [`Generation`](crate::Generation) built with
/// [`control_socket`](crate::GenerationBuilder::control_socket).
#[cfg(feature = "tokio")]
pub(crate) mod server {
    use std::os::fd::AsFd;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::PathIdentity;
    use crate::error::Error;
    use crate::lifecycle::{Generation, GracefulListener, Phase, RestartError, StopReason};
    use crate::socket::LocalAddr;
    use crate::tokio::Stream;

    /// The longest command line a server reads.
    const MAX_COMMAND: usize = 64;

    /// How long a client may take to send its command.
    const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// The control socket's listener: the inherited one, whose path this process never
    /// touches, or (in the first generation) a new one made private before it is reachable.
    pub(crate) fn listen(
        generation: &Generation,
        path: &Path,
    ) -> Result<(GracefulListener, PathIdentity), Error> {
        let registry = generation.registry();
        let (listener, inherited) =
            registry.adopt_or(super::SOCKET_NAME, || crate::bind::unix_private(path))?;
        // Its kernel address names where it was bound, not `path`.
        registry.show_as(super::SOCKET_NAME, LocalAddr::UnixPath(path.to_owned()));
        let identity = if inherited {
            check_path(path);
            PathIdentity::inherited(path, listener.as_fd())
        } else {
            PathIdentity::of(path)
        };
        Ok((
            generation
                .graceful(listener, &format!("unix:{}", path.display()))?
                .shown_as(LocalAddr::UnixPath(path.to_owned())),
            identity,
        ))
    }

    /// What is logged when the inherited control socket can no longer be reached by its path
    /// (the fields say what is there now).
    const UNREACHABLE: &str = "the control socket is no longer reachable by its path: what is \
                               there now is left alone; restarts by signal still work, and a full \
                               stop and start makes the control socket again";

    /// Warns when the inherited control socket can no longer be reached by its path. The
    /// path is only looked at (`lstat`), never followed, changed or recreated: whatever is
    /// there now may be someone else's.
    fn check_path(path: &Path) {
        use std::os::unix::fs::FileTypeExt;
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() && meta.uid() == nix::unistd::geteuid().as_raw() => {}
            Ok(meta) if meta.file_type().is_socket() => crate::log::warn!(
                path = %path.display(),
                found = "another user's socket",
                owner = meta.uid(),
                "{UNREACHABLE}"
            ),
            Ok(meta) => crate::log::warn!(
                path = %path.display(),
                found = if meta.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "a file that is not a socket"
                },
                "{UNREACHABLE}"
            ),
            Err(e) => crate::log::warn!(path = %path.display(), error = %e, "{UNREACHABLE}"),
        }
    }

    /// Answers on `listener` until this generation stops accepting.
    pub(crate) async fn serve(
        mut listener: GracefulListener,
        generation: Generation,
        identity: PathIdentity,
    ) {
        // The clients being answered: tracked like connections, not counted as ones in
        // `status`.
        let clients = Arc::new(AtomicUsize::new(0));
        while let Some(stream) = listener.accept().await {
            let Stream::Unix(stream) = stream else {
                continue;
            };
            // The drain waits for every accepted client's answer: one accepted just before
            // the drain began is answered, not cut off when the process exits.
            let guard = generation.track();
            clients.fetch_add(1, Ordering::Relaxed);
            let (generation, clients) = (generation.clone(), clients.clone());
            tokio::spawn(async move {
                answer(stream, &generation, &clients).await;
                clients.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
            });
        }
        // A final stop: nobody will answer at the path again, so it goes (a restart's new
        // generation answers on the same socket, and keeps it).
        if matches!(
            generation.phase(),
            Phase::Draining {
                reason: StopReason::Shutdown,
                ..
            }
        ) {
            identity.remove();
        }
    }

    async fn answer(mut stream: tokio::net::UnixStream, generation: &Generation, clients: &AtomicUsize) {
        // The command is read before the peer is judged: a refused client still gets its
        // answer, not a reset for unread bytes.
        let command = read_command(&mut stream).await;
        let reply = match (authorised(&stream), command) {
            (Err(reason), _) | (Ok(()), Err(reason)) => format!("error {reason}\n"),
            (Ok(()), Ok(command)) => {
                if client_gone(&stream) {
                    crate::log::info!(
                        command = %command.chars().take(MAX_COMMAND).collect::<String>(),
                        "control socket: command not run: its client left before it was read"
                    );
                    return;
                }
                run(&command, generation, clients).await
            }
        };
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Whatever else the client sent is read and dropped (briefly), for the same reason.
        let mut rest = [0u8; 1024];
        let drain = async {
            for _ in 0..64 {
                if matches!(stream.read(&mut rest).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }

    /// Whether the client has closed its end (`POLLHUP`: both directions shut). A client that
    /// only shut its writing half (as `socat` does) still waits for the answer.
    fn client_gone(stream: &tokio::net::UnixStream) -> bool {
        super::client_gone(stream.as_fd())
    }

    /// Only the server's own user and root may control it.
    fn authorised(stream: &tokio::net::UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let ours = nix::unistd::geteuid().as_raw();
        if cred.uid() == ours || cred.uid() == 0 {
            Ok(())
        } else {
            crate::log::warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: refused a client");
            Err(format!(
                "permission denied: uid {} may not control this server (uid {ours})",
                cred.uid()
            ))
        }
    }

    async fn read_command(stream: &mut tokio::net::UnixStream) -> Result<String, String> {
        let mut line = String::new();
        let mut reader = BufReader::new(stream).take(MAX_COMMAND as u64);
        match tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Err(format!(
                "no command within {} s: expected \"restart\", \"status\" or \"status json\"",
                COMMAND_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(format!("cannot read the command: {e}")),
            Ok(Ok(_)) => Ok(line.trim().to_owned()),
        }
    }

    /// The `error` answer to a restart that did not happen, with its kind word (see
    /// [`read_error`](super::read_error)).
    pub(super) fn restart_error_answer(e: &RestartError) -> String {
        match e {
            RestartError::Failed {
                generation,
                pid,
                reason,
            } => format!(
                "error {} {reason}; generation {generation} (pid {pid}) still serving\n",
                super::FAILED
            ),
            RestartError::Stopping { .. } => format!("error {} {e}\n", super::STOPPING),
            _ => format!("error {e}\n"),
        }
    }

    /// `retry …` for a `status` asked of a generation that has handed over: the client asks
    /// again and the generation now serving answers. (A `restart` learns it from the machine:
    /// `RestartError::HandedOver`.)
    fn handed_over(generation: &Generation) -> Option<String> {
        match generation.phase() {
            Phase::Draining {
                reason: StopReason::Restarted { successor },
                ..
            } => Some(format!(
                "retry generation {} (pid {}) has handed over to pid {successor}: ask it\n",
                generation.number(),
                std::process::id()
            )),
            _ => None,
        }
    }

    async fn run(command: &str, generation: &Generation, clients: &AtomicUsize) -> String {
        match command {
            "restart" | "restart again" => {
                crate::log::info!(
                    generation = generation.number(),
                    again_after_hand_over = command != "restart",
                    "control socket: restart requested"
                );
                let request = if command == "restart" {
                    generation.restart()
                } else {
                    generation.restart_rejoining()
                };
                match request.await {
                    Ok(next) => format!(
                        "ok generation {} serving with pid {}\n",
                        next.generation, next.pid
                    ),
                    // This generation has handed over (the machine decides so, whenever the
                    // request came): the new generation runs it; the client asks again.
                    Err(e @ RestartError::HandedOver { .. }) => format!("retry {e}\n"),
                    Err(e) => restart_error_answer(&e),
                }
            }
            // The state is the serving generation's to tell.
            "status" => handed_over(generation).unwrap_or_else(|| {
                format!(
                    "ok\n{}",
                    generation.status_uncounting(clients.load(Ordering::Relaxed))
                )
            }),
            "status json" => handed_over(generation).unwrap_or_else(|| {
                format!(
                    "ok\n{}\n",
                    generation.status_json_uncounting(clients.load(Ordering::Relaxed))
                )
            }),
            other => format!(
                "error unknown command {:?}: expected \"restart\", \"status\" or \"status json\"\n",
                other.chars().take(MAX_COMMAND).collect::<String>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tokio")]
    #[test]
    fn a_restart_error_reaches_the_client_with_its_kind_and_its_words() {
        use crate::RestartError;
        let cases = [
            (
                RestartError::Failed {
                    generation: 1,
                    pid: 42,
                    reason: "generation 2 (pid 43) exited before it was ready (exit status: 1)".into(),
                },
                ControlError::RestartFailed,
                FAILED,
            ),
            (
                RestartError::Stopping {
                    generation: 1,
                    pid: 42,
                },
                ControlError::Stopping,
                STOPPING,
            ),
        ];
        for (error, kind, word) in cases {
            let line = server::restart_error_answer(&error);
            let answer = line.trim_end().strip_prefix("error ").expect("an error answer");
            assert!(answer.starts_with(word), "the kind word on the wire: {line:?}");
            assert_eq!(read_error(answer), (kind, error.to_string()), "{line:?}");
        }
    }

    #[test]
    fn an_answer_from_a_server_without_the_kind_words_is_still_read() {
        // What servers answered before the kind words: the error's message alone.
        let failed = "restart failed: not ready after 30.0 s; generation 1 (pid 42) still serving";
        assert_eq!(
            read_error(failed),
            (ControlError::RestartFailed, failed.to_owned())
        );
        let stopping = "generation 1 (pid 42) is stopping: not restarting";
        assert_eq!(
            read_error(stopping),
            (ControlError::Stopping, stopping.to_owned())
        );
        let unknown = "unknown command \"reload\": expected \"restart\" or \"status\"";
        assert_eq!(read_error(unknown), (ControlError::Refused, unknown.to_owned()));
    }

    #[test]
    fn a_server_that_cannot_be_reached_is_told_apart() {
        let dir = std::env::temp_dir().join(format!("gracenet-control-unreachable-{}", std::process::id()));
        let client = Client::new(dir.join("no-such-socket")).timeout(Duration::from_secs(2));
        match client.restart() {
            Err(Error::Control { kind, .. }) => assert_eq!(kind, ControlError::Unreachable),
            other => panic!("expected an unreachable server: {other:?}"),
        }
    }
}
