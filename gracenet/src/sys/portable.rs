//! Any POSIX system: no `close_range`, `pipe2`, `SO_DOMAIN`, pidfd, abstract Unix names or
//! subreaper. What has a portable equivalent uses it; the rest is `Unsupported`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Which implementation this build uses, for logs and docs.
pub(crate) const PLATFORM: &str = "portable POSIX";

/// A pipe whose ends are both close-on-exec.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    super::pipe_then_cloexec()
}

/// The address family of a socket.
pub(crate) fn socket_family(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    super::family_from_name(fd)
}

/// Whether a stream socket is listening.
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    super::accepts_connections(fd)
}

/// Marks every fd from `first` below `limit` (but `keep`) close-on-exec. Async-signal-safe.
///
/// # Safety
/// As [`super::sweep_cloexec`].
pub(crate) unsafe fn cloexec_from(first: RawFd, limit: RawFd, keep: RawFd) {
    // SAFETY: as documented for the caller.
    unsafe { super::sweep_cloexec(first, limit, keep) }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is only available on Linux (this build uses the portable POSIX path)"),
    )
}

/// Abstract Unix names are Linux's: none here.
pub(crate) fn abstract_name(_addr: &std::os::unix::net::SocketAddr) -> Option<Vec<u8>> {
    None
}

/// Abstract Unix names are Linux's: none here.
pub(crate) fn sockaddr_abstract_name(_addr: &socket2::SockAddr) -> Option<Vec<u8>> {
    None
}

/// Abstract Unix names are Linux's.
pub(crate) fn abstract_addr(_name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(unsupported("an abstract Unix socket name (unix:@name)"))
}

/// The child subreaper is Linux's (`PR_SET_CHILD_SUBREAPER`).
pub(crate) fn become_subreaper() -> io::Result<()> {
    Err(unsupported("the supervisor (it needs the child subreaper)"))
}

/// Sender credentials on datagrams are Linux's (`SO_PASSCRED`).
pub(crate) fn pass_credentials(_socket: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    Err(unsupported("sender credentials on a Unix datagram socket"))
}

/// Passing fds with sender credentials is used by the supervisor only, which is Linux's.
pub(crate) fn recv_with_fds(
    _socket: &impl std::os::fd::AsFd,
    _buf: &mut [u8],
    _flags: nix::sys::socket::MsgFlags,
) -> io::Result<super::Received> {
    Err(unsupported("receiving fds with sender credentials"))
}

/// pidfds are Linux's.
pub(crate) fn pidfd_open(_pid: u32) -> io::Result<OwnedFd> {
    Err(unsupported("a pidfd"))
}

/// Linux's, as [`pidfd_open`].
pub(crate) fn pidfd_getfd(_pidfd: BorrowedFd<'_>, _fd: RawFd) -> io::Result<OwnedFd> {
    Err(unsupported("taking another process's fd"))
}

/// Resolves once a child process has exited (without reaping it): a thread in `waitid`.
#[cfg(feature = "tokio")]
pub(crate) type ExitWatch = super::ExitThread;

/// Sockets watched for something to read, outside any runtime: no portable way to watch
/// thousands cheaply (Linux has epoll), so [`new`](Self::new) is `Unsupported`.
pub(crate) struct ReadWatch(());

impl ReadWatch {
    pub(crate) fn new() -> io::Result<ReadWatch> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "watching many sockets needs epoll (Linux)",
        ))
    }

    pub(crate) fn add(&self, _fd: BorrowedFd<'_>, _key: u64) -> io::Result<()> {
        Ok(())
    }

    pub(crate) fn remove(&self, _fd: BorrowedFd<'_>) {}

    pub(crate) fn ready(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// Pending signals have no portable source: none known.
pub(crate) fn signal_pending(_pid: u32, _signal: i32) -> bool {
    false
}

/// Whether `pid` names a process (a zombie cannot be told apart here).
pub(crate) fn is_running(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Start times are not portable: unknown.
pub(crate) fn start_time(_pid: u32) -> Option<u64> {
    None
}

/// If `pid` names a process: its start time, unknown here.
pub(crate) fn running_start(pid: u32) -> Option<Option<u64>> {
    is_running(pid).then_some(None)
}

/// Parent chains are not portable (the supervisor, their one user, is Linux's).
pub(crate) fn is_descendant(_pid: u32, _ancestor: u32) -> bool {
    false
}

/// Parents are not portable (the supervisor, their one user, is Linux's): unknown.
pub(crate) fn parent_of(_pid: u32) -> Option<u32> {
    None
}

/// Children are not portable (the supervisor, their one user, is Linux's): none known.
pub(crate) fn children_of(_parent: u32) -> Vec<u32> {
    Vec::new()
}

/// The thread count has no portable source: assume others run (so the environment is never
/// changed).
pub(crate) fn single_threaded() -> bool {
    false
}

/// No atomic close-on-exec for received fds everywhere: the caller marks them after.
pub(crate) const RECV_CLOEXEC: nix::sys::socket::MsgFlags = nix::sys::socket::MsgFlags::empty();

/// Not told apart here from "nothing new yet" (no `POLLRDHUP`): `None`.
pub(crate) fn peer_stopped_sending(_fd: BorrowedFd<'_>) -> Option<bool> {
    None
}

/// No `SCHED_IDLE` here: the next process starts at this one's priority.
pub(crate) fn may_start_at_idle_priority() -> bool {
    false
}

/// Not reached (see [`may_start_at_idle_priority`]).
pub(crate) fn enter_idle_priority(_thread: Option<u32>) {}

/// Not reached (see [`may_start_at_idle_priority`]).
pub(crate) fn follow_first_thread_to_idle_priority() {}

/// Nothing to return from.
pub(crate) fn leave_idle_priority(_process: Option<u32>) -> io::Result<usize> {
    Ok(0)
}

/// Shared-memory files are a Linux feature here (`memfd_create`).
pub(crate) fn shared_memory(_name: &str, _size: usize) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// As [`shared_memory`]: there is no sealed file to ask about.
pub(crate) fn is_size_sealed(_fd: BorrowedFd<'_>) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// As [`shared_memory`]: a Linux feature here.
pub(crate) fn sealed_file(_name: &str, _bytes: &[u8]) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// As [`sealed_file`]: there is no sealed file to ask about.
pub(crate) fn is_read_only_sealed(_fd: BorrowedFd<'_>) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Needs `/proc/PID/fd`.
pub(crate) fn open_fd_of(_pid: u32, _fd: RawFd) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Steering a reuseport group is Linux's (`SO_ATTACH_REUSEPORT_CBPF`).
pub(crate) fn steer_reuseport(_fd: BorrowedFd<'_>, _live: &[u32]) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Linux's (`TCP_INFO` on a listener), as [`steer_reuseport`].
pub(crate) fn accept_queue_len(_fd: BorrowedFd<'_>) -> io::Result<u32> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Linux's, as [`steer_reuseport`].
pub(crate) fn unsteer_reuseport(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
