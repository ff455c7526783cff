//! Linux: the fast paths.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Which implementation this build uses, for logs and docs.
pub(crate) const PLATFORM: &str = "linux";

/// A pipe whose ends are both close-on-exec, atomically.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// The address family of a socket (`SO_DOMAIN`).
pub(crate) fn socket_family(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    Ok(socket2::SockRef::from(&fd).domain()?.into())
}

/// Whether a stream socket is listening.
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    socket2::SockRef::from(&fd).is_listener()
}

/// Marks every fd from `first` up (but `keep`) close-on-exec: `close_range`, or one `fcntl`
/// per fd below `limit` on kernels before 5.11. Async-signal-safe: for a forked child.
///
/// # Safety
/// As [`super::sweep_cloexec`].
pub(crate) unsafe fn cloexec_from(first: RawFd, limit: RawFd, keep: RawFd) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; `keep` is above `first`
    // only when the caller placed it there, and then it is meant to close at exec too.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // SAFETY: as documented for the caller.
        unsafe { super::sweep_cloexec(first, limit, keep) };
    }
}

/// The name of an abstract Unix socket address, if it is one.
pub(crate) fn abstract_name(addr: &std::os::unix::net::SocketAddr) -> Option<Vec<u8>> {
    use std::os::linux::net::SocketAddrExt;
    addr.as_abstract_name().map(<[u8]>::to_vec)
}

/// The abstract name in a socket2 address, if it is one.
pub(crate) fn sockaddr_abstract_name(addr: &socket2::SockAddr) -> Option<Vec<u8>> {
    addr.as_abstract_namespace().map(<[u8]>::to_vec)
}

/// A socket address in Linux's abstract namespace.
pub(crate) fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// Makes this process the subreaper of its descendants: orphans are reparented to it.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to attach each datagram's sender credentials (`SO_PASSCRED`).
pub(crate) fn pass_credentials(socket: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::PassCred, &true).map_err(io::Error::from)
}

use nix::sys::socket::MsgFlags;

/// Receives one datagram with its sender's pid and any fds passed with it (`SCM_RIGHTS`).
pub(crate) fn recv_with_fds(
    socket: &std::os::unix::net::UnixDatagram,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<super::Received> {
    use nix::sys::socket::{ControlMessageOwned, UnixCredentials, recvmsg};
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; super::MAX_FDS_PER_MESSAGE]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = super::Received {
        len: msg.bytes,
        sender: None,
        fds: Vec::new(),
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    };
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => received.sender = Some(cred.pid()),
                ControlMessageOwned::ScmRights(fds) => {
                    // SAFETY: the kernel just installed these fds in this process for us;
                    // nothing else owns them.
                    received
                        .fds
                        .extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
                _ => {}
            }
        }
    }
    Ok(received)
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited, and never names
/// another process, even after the pid is reused.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Resolves once a child process has exited (without reaping it).
#[cfg(feature = "tokio")]
pub(crate) struct ExitWatch(Watch);

#[cfg(feature = "tokio")]
enum Watch {
    /// A pidfd, readable once the process has exited (Linux 5.3+).
    Pidfd(tokio::io::unix::AsyncFd<OwnedFd>),
    /// Older kernels: a thread in `waitid`.
    Thread(super::ExitThread),
}

#[cfg(feature = "tokio")]
impl ExitWatch {
    /// Watches `pid`, our unreaped child. Must be called within a tokio runtime.
    pub(crate) fn new(pid: u32) -> io::Result<ExitWatch> {
        if let Ok(fd) = pidfd_open(pid) {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and names the same pidfd
            // until the AsyncFd is dropped.
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .map_err(|e| e.into_parts().1)?;
            return Ok(ExitWatch(Watch::Pidfd(fd)));
        }
        Ok(ExitWatch(Watch::Thread(super::ExitThread::new(pid)?)))
    }

    /// Resolves when the process has exited (at once, every time after the first).
    pub(crate) async fn exited(&mut self) {
        match &mut self.0 {
            Watch::Pidfd(fd) => {
                // A pidfd stays readable once the process has exited: no need to clear it.
                let _ = fd.readable().await;
            }
            Watch::Thread(thread) => thread.exited().await,
        }
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub(crate) fn is_running(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ')'.
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The fields of `/proc/<pid>/stat` after the command name (state first), if readable.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22): a reused pid
/// has a later one.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` descends from `ancestor` (its parent chain reaches it, within 64 steps).
pub(crate) fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        let Some(parent) = stat_fields(current).and_then(|f| f.get(1)?.parse::<u32>().ok()) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// Whether this process has exactly one thread. procfs gives `/proc/self/task` a link count
/// of two plus the number of threads: one `statx`, where reading `/proc/self/stat`'s
/// `num_threads` takes an open, reads and a parse (it is asked several times at startup, when
/// a restart must be cheap). `/proc/self/stat` answers when the link count cannot be had.
pub(crate) fn single_threaded() -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/task") {
        Ok(m) if m.nlink() > 2 => m.nlink() == 3,
        _ => stat_fields(std::process::id()).and_then(|f| f.get(17)?.parse::<u32>().ok()) == Some(1),
    }
}

/// `recvmsg` flags that make received fds close-on-exec atomically.
pub(crate) const RECV_CLOEXEC: nix::sys::socket::MsgFlags = nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_count_from_the_link_count_agrees_with_proc_stat() {
        // The test harness runs tests on threads of their own: never single-threaded here.
        let from_stat = stat_fields(std::process::id()).and_then(|f| f.get(17)?.parse::<u32>().ok());
        assert!(from_stat.is_some_and(|n| n > 1), "{from_stat:?}");
        assert!(!single_threaded());
    }
}
