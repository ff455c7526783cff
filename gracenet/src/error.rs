//! The errors gracenet returns: each names the input that was wrong and what was expected.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Everything that can go wrong in gracenet.
///
/// Its `Debug` form is its message followed by any cause the message does not already
/// include, one `caused by:` line each: what `fn main() -> Result<(), gracenet::Error>`
/// prints after `Error: `.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The inherited-socket environment (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) or the
    /// fds it names are not what the protocol promises.
    #[error(transparent)]
    Env(#[from] EnvError),

    /// An address string is not one of the forms [`listen`](crate::listen) accepts.
    #[error("invalid listen address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What was expected instead.
        reason: &'static str,
    },

    /// A host name in an address could not be resolved.
    #[error("cannot resolve listen address {addr:?}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The resolver's error.
        source: io::Error,
    },

    /// A new socket could not be created, bound or set listening.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address (or `unix:` path) we tried to listen on.
        addr: String,
        /// The system's error (`EADDRINUSE`, `EACCES`, ...).
        source: io::Error,
    },

    /// A Unix socket path is in use by a live process; gracenet never deletes such a path.
    #[error("cannot listen on unix:{path}: a live process is listening on that path", path = path.display())]
    UnixPathInUse {
        /// The socket path.
        path: PathBuf,
    },

    /// A Unix socket path exists and is not a socket; gracenet never deletes such a file.
    #[error("cannot listen on unix:{path}: the path exists and is not a socket", path = path.display())]
    UnixPathNotSocket {
        /// The path.
        path: PathBuf,
    },

    /// The program to start as the next process could not be found at startup.
    #[error("cannot find the program to restart: {reason}")]
    Executable {
        /// What was looked for and where.
        reason: String,
    },

    /// Starting the next process failed.
    #[error("cannot start the next process {program}: {source}", program = program.display())]
    Spawn {
        /// The executable we tried to run.
        program: PathBuf,
        /// The system's error (from `fork`, `execve`, ...).
        source: io::Error,
    },

    /// [`supervise`](crate::supervise) or a cluster's `run` was called in a process that a
    /// supervisor or a cluster's primary started (a generation or a worker): it would start
    /// a supervisor of its own, and each of its generations another, without end.
    #[error(
        "this process was started by gracenet's supervisor or a cluster's primary (pid {parent}; GRACE_SUPERVISOR is set): \
         it serves, it does not supervise; call supervise() or Cluster::run() only when gracenet::should_supervise() says so"
    )]
    AlreadySupervised {
        /// The supervisor's or primary's pid, as `GRACE_SUPERVISOR` gives it.
        parent: String,
    },

    /// A restart was asked of a process that is PID 1 (a container's init): its exit after
    /// the hand-over would end every process of its PID namespace, the next generation too.
    #[error(
        "cannot restart: this process is PID 1 (a container's init, as under `docker run` without `--init`): \
         once it handed over and exited, the kernel would end every process in its PID namespace, the new one \
         too; run it under gracenet's supervisor (gracenet::supervise, which stays PID 1 across restarts; \
         gracedemo --supervise) or under an init such as tini (`docker run --init`)"
    )]
    RestartAsPid1,

    /// The next process could not enter the directory this one started in (removed, say, by a
    /// deploy that deleted the old release).
    #[error(
        "cannot start the next process in {dir}, the directory this server started in: {source}",
        dir = dir.display()
    )]
    StartDir {
        /// The starting directory.
        dir: PathBuf,
        /// The system's error from `chdir`.
        source: io::Error,
    },

    /// An argument or environment variable for the next process contains a NUL byte.
    #[error("cannot start the next process: {what} contains a NUL byte")]
    NulByte {
        /// Which argument or variable.
        what: String,
    },

    /// [`Generation::start`](crate::Generation::start) was called a second time in this process.
    #[error(
        "a Generation was already started in this process (by your code, or by a library such as gracehttp's Server::run): start it once and share it (gracehttp: Server::generation)"
    )]
    AlreadyStarted,

    /// A request on a control socket failed or was refused (see [`crate::control`]).
    #[error("control socket {path}: {reason}", path = path.display())]
    Control {
        /// The socket's path.
        path: PathBuf,
        /// Which kind of failure: a restart that failed, a server stopping, a server that
        /// could not be reached, ...
        kind: crate::control::ControlError,
        /// What went wrong, or why the server refused.
        reason: String,
    },

    /// The previous generation's final state did not come (see
    /// [`InheritedState::final_state`](crate::InheritedState::final_state)): the writes it
    /// acknowledged after its snapshot are not here.
    #[error("the previous generation's final state did not come: {reason}")]
    FinalState {
        /// Why: it exited first, it was over the limit, or it was too late.
        reason: String,
    },

    /// [`Generation::inherited_state`](crate::Generation::inherited_state) was called after
    /// the state was read: by an earlier call, or by [`Generation::ready`](crate::Generation::ready)
    /// skipping a state nobody had asked for.
    #[error(
        "the handed-over state was already read: call Generation::inherited_state once, before ready(), and keep what it returned"
    )]
    StateTaken,

    /// Handed-over state is of a version this program does not read (see
    /// `gracenet::state::decode`, feature `serde`).
    #[error(
        "the handed-over state is {found}, and this program reads version {expected} only: refuse it (the old generation keeps serving) or read both versions"
    )]
    StateVersion {
        /// The version tag found, as written (or what was found instead of a tag).
        found: String,
        /// The version this program reads.
        expected: u32,
    },

    /// Handed-over state of the right version did not decode, or state did not encode (see
    /// `gracenet::state`, feature `serde`).
    #[error("handed-over state version {version}: {reason}")]
    StateFormat {
        /// The version tag.
        version: u32,
        /// The serializer's error.
        reason: String,
    },

    /// The socket made for [`SocketRegistry::adopt`](crate::registry::SocketRegistry::adopt)
    /// is not a listening stream socket, so it cannot be served on nor passed on as one.
    #[error(
        "cannot adopt {name:?}: the socket made for it is {found}; expected a listening TCP or \
         Unix stream socket (bound, and listen() called on it)"
    )]
    NotAListener {
        /// The name it was to be registered under.
        name: String,
        /// What it is instead ("a UDP socket", "a TCP stream socket that is not listening
        /// (connected or unbound)", ...).
        found: String,
    },

    /// [`Generation::hand_over`](crate::Generation::hand_over) was called in a generation that
    /// no other took over from (it is stopping, or has not restarted): the connection stays
    /// this process's to serve.
    #[error(
        "cannot hand the connection over: no generation took over from this one (it is not \
         draining after a restart); keep serving it"
    )]
    NoSuccessor,

    /// A cluster was asked for more workers than it can run (each has an entry in the
    /// primary's shared load table, of [`MAX_WORKERS`](crate::cluster::MAX_WORKERS) entries).
    #[error("{asked} workers asked for: a cluster runs at most {max}")]
    TooManyWorkers {
        /// The number asked for.
        asked: usize,
        /// The most a cluster runs.
        max: usize,
    },

    /// A system call on a socket or process failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The system's error.
        source: io::Error,
    },
}

/// The inherited-socket environment is malformed, or an fd it names is unusable.
///
/// Returned instead of ignoring the input, so a misconfigured supervisor or parent is noticed
/// at startup rather than as a server that silently binds fresh sockets.
///
/// Its `Debug` form is its message, as [`Error`]'s.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A variable's value does not parse.
    #[error("{var}={value:?} is malformed: expected {expected}")]
    Malformed {
        /// The variable's name.
        var: &'static str,
        /// Its value as found.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },

    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` has fds.
    #[error(
        "LISTEN_FDNAMES={value:?} has {names} name(s) but LISTEN_FDS={fds}: expected one colon-separated name per fd"
    )]
    NameCount {
        /// The value of `LISTEN_FDNAMES`.
        value: String,
        /// How many names it holds.
        names: usize,
        /// The value of `LISTEN_FDS`.
        fds: usize,
    },

    /// An fd in the inherited range is not open in this process.
    #[error("LISTEN_FDS={count} names fd {fd}, but fd {fd} is not open: expected an inherited socket")]
    FdNotOpen {
        /// The fd number.
        fd: RawFd,
        /// The value of `LISTEN_FDS`.
        count: usize,
    },

    /// An fd in the inherited range is open but is not a socket.
    #[error("LISTEN_FDS={count} names fd {fd}, which is {found}: expected a socket")]
    NotASocket {
        /// The fd number.
        fd: RawFd,
        /// The value of `LISTEN_FDS`.
        count: usize,
        /// What it is instead ("a regular file", "a pipe", ...).
        found: &'static str,
    },

    /// An inherited socket is of a kind gracenet cannot serve on.
    #[error("LISTEN_FDS={count} names fd {fd}, which is {found}: expected {expected}")]
    UnsupportedSocket {
        /// The fd number.
        fd: RawFd,
        /// The value of `LISTEN_FDS`.
        count: usize,
        /// What the socket is ("a connected TCP stream socket", ...).
        found: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// The system refused to tell us about an inherited fd.
    #[error("LISTEN_FDS={count} names fd {fd}, which cannot be inspected: {errno}")]
    Inspect {
        /// The fd number.
        fd: RawFd,
        /// The value of `LISTEN_FDS`.
        count: usize,
        /// The system's error.
        errno: nix::errno::Errno,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        report(self, f)
    }
}

impl fmt::Debug for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        report(self, f)
    }
}

/// Writes `err`'s message, then each cause in its `source()` chain on a `caused by:` line,
/// as anyhow does, leaving out a cause whose message is already in the text above (most of
/// gracenet's messages end with their cause's): `main` returning the error shows what went
/// wrong and why, each once, instead of the variant's fields.
fn report(err: &dyn std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut shown = err.to_string();
    f.write_str(&shown)?;
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !shown.contains(&text) {
            write!(f, "\ncaused by: {text}")?;
            shown.push('\n');
            shown.push_str(&text);
        }
        cause = c.source();
    }
    Ok(())
}

/// Why a thread could not be started, as words for a message: the system's error and, when
/// it is `EAGAIN`, the likely cause, the user's limit on processes and threads
/// (`RLIMIT_NPROC`, `ulimit -u`, which counts every thread of every process of the user) with
/// its value. Used by gracenet, gracehttp and applications for every thread started at
/// startup, so that a low limit is named instead of reported as a panic.
pub fn thread_error(e: &io::Error) -> String {
    if e.raw_os_error() != Some(libc::EAGAIN) {
        return e.to_string();
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only `limit`.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) } == 0;
    if known && limit.rlim_cur != libc::RLIM_INFINITY {
        format!(
            "{e}: this user's limit on processes and threads (RLIMIT_NPROC, ulimit -u: {}) is \
             likely reached; raise it (LimitNPROC= in a systemd unit) or run fewer processes",
            limit.rlim_cur
        )
    } else {
        format!(
            "{e}: a limit on threads is likely reached (the cgroup's pids.max, TasksMax= in a \
             systemd unit, or kernel.threads-max)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `fn main() -> Result<(), gracenet::Error>` prints for an address in use: the
    /// message, not the variant's fields (`Bind { addr: .., source: Os { code: 98, .. } }`).
    #[test]
    fn debug_is_the_message_and_its_causes() {
        let in_use = Error::Bind {
            addr: "127.0.0.1:47012".into(),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        let message = in_use.to_string();
        assert!(
            message.starts_with("cannot listen on 127.0.0.1:47012: "),
            "{message}"
        );
        // The cause is in the message already: not repeated.
        assert_eq!(format!("{in_use:?}"), message);

        // A cause deeper than the message shows, on its own line.
        #[derive(Debug, thiserror::Error)]
        #[error("the handshake failed")]
        struct Middle(#[source] Deepest);
        #[derive(Debug, thiserror::Error)]
        #[error("the peer closed the connection")]
        struct Deepest;
        let nested = Error::Io {
            what: "cannot reach the next process".into(),
            source: io::Error::other(Middle(Deepest)),
        };
        assert_eq!(
            format!("{nested:?}"),
            "cannot reach the next process: the handshake failed\ncaused by: the peer closed the connection"
        );

        let env = Error::from(EnvError::FdNotOpen { fd: 3, count: 1 });
        assert_eq!(
            format!("{env:?}"),
            "LISTEN_FDS=1 names fd 3, but fd 3 is not open: expected an inherited socket"
        );
        let env = EnvError::NameCount {
            value: "a:b".into(),
            names: 2,
            fds: 1,
        };
        assert_eq!(format!("{env:?}"), env.to_string());
    }
}
