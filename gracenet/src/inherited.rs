//! The sockets a process inherited through `LISTEN_FDS`, checked and adopted once.

use std::os::fd::{AsFd, IntoRawFd, OwnedFd, RawFd};

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
                crate::log::info!(
                    listen_pid,
                    pid = std::process::id(),
                    "LISTEN_PID names another process: leaving the inherited fds alone"
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

    /// The inode numbers of the inherited sockets (`fstat`), the same in every process that
    /// holds one: how a parent that holds them is recognised.
    pub(crate) fn socket_inodes(&self) -> Vec<u64> {
        self.sockets
            .iter()
            .filter_map(|s| nix::sys::stat::fstat(&s.fd).ok())
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
            .map(|st| st.st_ino)
            .collect()
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

/// Takes ownership of fds 3..3+count and checks each. Nothing is kept (or closed) unless
/// every fd passes: on an error the fds taken so far are given back unclosed, so an error
/// leaves the fds exactly as they were.
fn adopt(count: usize, names: Vec<Option<String>>) -> Result<Vec<InheritedSocket>, EnvError> {
    let mut checked: Vec<(OwnedFd, SocketInfo)> = Vec::with_capacity(count);
    let give_back = |checked: Vec<(OwnedFd, SocketInfo)>| {
        for (fd, _) in checked {
            // Not ours after all: left open, as it came.
            let _ = fd.into_raw_fd();
        }
    };
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
        // SAFETY: under the LISTEN_FDS protocol fds 3..3+count are handed to this process,
        // and env::take_from_process hands them out once per process, so nothing else owns
        // or closes them; each is taken here once.
        let owned = match unsafe { socket::own_if_open(fd) } {
            Ok(owned) => owned,
            Err(u) => {
                give_back(checked);
                return Err(unusable(u));
            }
        };
        let checks = socket::inspect(owned.as_fd()).map_err(unusable).and_then(|info| {
            socket::set_cloexec(owned.as_fd()).map_err(|errno| EnvError::Inspect { fd, count, errno })?;
            socket::set_nonblocking(owned.as_fd()).map_err(|errno| EnvError::Inspect { fd, count, errno })?;
            Ok(info)
        });
        match checks {
            Ok(info) => checked.push((owned, info)),
            Err(e) => {
                let _ = owned.into_raw_fd();
                give_back(checked);
                return Err(e);
            }
        }
    }
    Ok(checked
        .into_iter()
        .zip(names)
        .map(|((fd, info), name)| InheritedSocket { fd, info, name })
        .collect())
}
