//! The sockets a process inherited through `LISTEN_FDS`, checked and adopted once.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::env::{self, FIRST_INHERITED_FD, ListenEnv};
use crate::error::{EnvError, Error};
use crate::socket::{self, SocketInfo, Unusable};

/// One inherited socket: the fd, what it is, and its `LISTEN_FDNAMES` name.
#[derive(Debug)]
pub(crate) struct InheritedSocket {
    pub fd: OwnedFd,
    pub info: SocketInfo,
    pub name: Option<String>,
}

/// How this process came by its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Nothing was inherited: a first start (or `LISTEN_PID` named another process).
    Fresh,
    /// Inherited from a parent that set `LISTEN_FDS` without `LISTEN_PID`, as Go's
    /// facebookgo/grace does.
    Parent,
    /// Inherited with `LISTEN_PID` equal to our pid: from systemd, `systemd-socket-activate`,
    /// or a gracenet parent (which sets it, so any `sd_listen_fds()` accepts the fds).
    Activated,
}

/// The sockets this process inherited (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), each
/// checked to be an open listening or datagram socket and marked close-on-exec and
/// non-blocking.
///
/// Hand it to [`SocketRegistry::new`](crate::registry::SocketRegistry::new), which serves `listen` calls from it
/// before binding anything new.
#[derive(Debug)]
pub struct InheritedFds {
    pub(crate) sockets: Vec<InheritedSocket>,
    origin: Origin,
    /// `LISTEN_PID` when it named another process: the variables are a copy meant for it.
    pub(crate) meant_for: Option<u32>,
}

impl InheritedFds {
    /// Nothing inherited.
    pub fn none() -> Self {
        InheritedFds {
            sockets: Vec::new(),
            origin: Origin::Fresh,
            meant_for: None,
        }
    }

    /// Adopts the fds the environment names, and removes the three variables from the
    /// environment so no subprocess sees them — if no other thread runs yet (changing the
    /// environment while another thread may read it is undefined behaviour); otherwise they
    /// are left, and `LISTEN_PID` (naming this process) tells any subprocess they are not
    /// its own.
    ///
    /// Only the first call in a process reads the environment; later calls return
    /// [`InheritedFds::none`], since the fds can only be owned once. Call it early, before
    /// starting threads that read the environment.
    ///
    /// # Errors
    /// [`Error::Env`] when a variable is malformed (`LISTEN_FDS=abc`), when `LISTEN_FDNAMES`
    /// has the wrong number of names, or when an fd is not open, not a socket, or a stream
    /// socket that is not listening. When `LISTEN_PID` names another process, the fds are left
    /// alone (logged) and this returns [`InheritedFds::none`].
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self::take_from_env()?)
    }

    /// [`from_env`](Self::from_env), with the environment's own error type.
    pub(crate) fn take_from_env() -> Result<Self, EnvError> {
        match env::take_from_process()? {
            ListenEnv::Absent => Ok(Self::none()),
            ListenEnv::OtherProcess { listen_pid } => {
                tracing::info!(
                    listen_pid,
                    pid = std::process::id(),
                    "LISTEN_PID={listen_pid} is not our pid {}: leaving the inherited fds alone",
                    std::process::id()
                );
                Ok(InheritedFds {
                    meant_for: Some(listen_pid),
                    ..Self::none()
                })
            }
            ListenEnv::Fds {
                count,
                names,
                listen_pid,
            } => {
                let origin = if listen_pid.is_some() {
                    Origin::Activated
                } else {
                    Origin::Parent
                };
                Ok(InheritedFds {
                    sockets: adopt(count, names)?,
                    origin,
                    meant_for: None,
                })
            }
        }
    }

    /// How many sockets were inherited.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether nothing was inherited.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Where the sockets came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    #[cfg(test)]
    pub(crate) fn for_tests(sockets: Vec<InheritedSocket>) -> Self {
        InheritedFds {
            sockets,
            origin: Origin::Parent,
            meant_for: None,
        }
    }
}

/// Checks fds 3..3+count, then takes ownership of them. Nothing is adopted (or closed) unless
/// every fd passes, so an error leaves the fds exactly as they were.
fn adopt(count: usize, names: Vec<Option<String>>) -> Result<Vec<InheritedSocket>, EnvError> {
    let mut checked = Vec::with_capacity(count);
    for i in 0..count {
        // `count` is bounded by the fd limit (env::parse), so this cannot overflow.
        let fd = FIRST_INHERITED_FD + i as RawFd;
        let unusable = |u: Unusable| match u {
            Unusable::NotOpen => EnvError::FdNotOpen { fd, count },
            Unusable::NotASocket(found) => EnvError::NotASocket { fd, count, found },
            Unusable::Unsupported(found) => EnvError::UnsupportedSocket {
                fd,
                count,
                found,
                expected: "a listening TCP or Unix stream socket, or a UDP or Unix datagram socket",
            },
            Unusable::Errno(errno) => EnvError::Inspect { fd, count, errno },
        };
        let borrowed = socket::borrow_if_open(fd).map_err(unusable)?;
        let info = socket::inspect(borrowed).map_err(unusable)?;
        socket::set_cloexec(borrowed).map_err(|errno| EnvError::Inspect { fd, count, errno })?;
        socket::set_nonblocking(borrowed).map_err(|errno| EnvError::Inspect { fd, count, errno })?;
        checked.push((fd, info));
    }
    Ok(checked
        .into_iter()
        .zip(names)
        .map(|((fd, info), name)| {
            // SAFETY: fd is open and a socket (checked above). Under the LISTEN_FDS protocol
            // fds 3..3+count belong to this process, and env::take_from_process hands them
            // out once per process, so nothing else owns or closes them.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            InheritedSocket { fd, info, name }
        })
        .collect())
}
