//! Calls that are the same on every POSIX system.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pipe whose ends are both close-on-exec, made with `pipe` and `fcntl`: another thread's
/// `fork` between the two calls could leak the ends into its child, which only delays that
/// child's end-of-file. Platforms with `pipe2` use it instead.
#[allow(dead_code)]
pub(crate) fn pipe_then_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe writes two fds into the array we pass; we own them from here on.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&read, &write] {
        crate::socket::set_cloexec(fd).map_err(io::Error::from)?;
    }
    Ok((read, write))
}

/// Whether our child `pid` has exited, without reaping it (its pid stays reserved).
pub(crate) fn has_exited(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only `info`; WNOWAIT leaves the child unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read for a waitid result (zero when nothing exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// How many fds a process's table is grown to at its start ([`reserve_fd_table`]), at most.
pub(crate) const RESERVED_FDS: usize = 4096;

/// Grows this process's fd table to [`RESERVED_FDS`] (or the fd limit, if lower) now. A table
/// grows when an fd past its end is first opened; with more than one thread, Linux then waits
/// for an RCU grace period before it frees the old table, inside that `accept` (milliseconds
/// on a busy core, measured on the first connections a new generation accepts). Done once, at
/// the start, the table never needs to grow for the first thousands of connections. Costs
/// ~40 KiB; fails silently (the table then grows as it would have).
pub(crate) fn reserve_fd_table() {
    let top = RESERVED_FDS.min(crate::env::fd_limit()).saturating_sub(1);
    let Ok(top) = libc::c_int::try_from(top) else {
        return;
    };
    let Ok((probe, _other)) = crate::sys::pipe_cloexec() else {
        return;
    };
    // SAFETY: duplicates an fd we own to the lowest free number >= top; the copy is owned
    // below and closed at once.
    let fd = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if fd >= 0 {
        // SAFETY: `fd` was just created by fcntl and is owned by nothing else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// A connected pair of Unix stream sockets, both close-on-exec: the channel between a
/// generation and the next (readiness one way, handed-over state the other).
pub(crate) fn socketpair_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty())?;
    for fd in [&a, &b] {
        crate::socket::set_cloexec(fd).map_err(io::Error::from)?;
    }
    Ok((a, b))
}

/// The address family of a socket, from `getsockname` (portable; Linux also has `SO_DOMAIN`).
#[allow(dead_code)]
pub(crate) fn family_from_name(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: sockaddr_storage is plain data for which all-zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `storage`, which is that large.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(storage.ss_family))
}

/// Whether a stream socket is listening, from `SO_ACCEPTCONN`.
#[allow(dead_code)]
pub(crate) fn accepts_connections(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `value`, whose size we pass.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value != 0)
}

/// Marks every fd from `first` below `limit` (but `keep`) close-on-exec, one `fcntl` each.
/// Async-signal-safe: for the child between its start and its `execve`.
///
/// # Safety
/// Only `fcntl(F_SETFD)` is called; a caller must be prepared for every fd in the range to
/// close at `exec`.
#[allow(dead_code)]
pub(crate) unsafe fn sweep_cloexec(first: RawFd, limit: RawFd, keep: RawFd) {
    for fd in first..limit {
        if fd != keep {
            // SAFETY: F_SETFD on an fd that may not be open fails harmlessly with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// One datagram received by `recv_with_fds`.
pub(crate) struct Received {
    pub len: usize,
    /// The sender's pid, when the kernel attached its credentials.
    pub sender: Option<i32>,
    /// The fds that came with it (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// Whether some ancillary data (fds) did not fit and was dropped.
    pub truncated: bool,
}

/// The most fds one datagram may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Signals set to be ignored, with the action each had before ([`ignore_signals`]).
#[derive(Debug)]
pub(crate) struct IgnoredSignals(Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>);

/// Ignores `signals` from now on (which also discards one already pending, blocked or not),
/// keeping the action each had. One that cannot be set is left as it was.
pub(crate) fn ignore_signals(signals: &[nix::sys::signal::Signal]) -> IgnoredSignals {
    IgnoredSignals(
        signals
            .iter()
            .filter_map(|&signal| Some((signal, set_ignored(signal).ok()?)))
            .collect(),
    )
}

fn set_ignored(signal: nix::sys::signal::Signal) -> io::Result<nix::sys::signal::SigAction> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs no handler (ignoring runs no code of ours), so nothing must be
    // async-signal-safe; the action it replaces is returned, to be put back as it was.
    unsafe { sigaction(signal, &ignore) }.map_err(io::Error::from)
}

/// Whether `signal`'s action is "ignore" now.
fn is_ignored(signal: nix::sys::signal::Signal) -> bool {
    action_is(signal, libc::SIG_IGN)
}

/// Whether `signal`'s action is its default one now (no handler installed, not ignored).
pub(crate) fn has_default_action(signal: nix::sys::signal::Signal) -> bool {
    action_is(signal, libc::SIG_DFL)
}

fn action_is(signal: nix::sys::signal::Signal, handler: libc::sighandler_t) -> bool {
    let mut now = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `now`, which the call fills.
    let rc = unsafe { libc::sigaction(signal as libc::c_int, std::ptr::null(), now.as_mut_ptr()) };
    // SAFETY: filled by the successful call above.
    rc == 0 && unsafe { now.assume_init() }.sa_sigaction == handler
}

/// Ignores `signal` from now on.
pub(crate) fn ignore(signal: nix::sys::signal::Signal) -> io::Result<()> {
    set_ignored(signal).map(drop)
}

impl IgnoredSignals {
    /// Discards any of them that is pending (Linux queues a blocked signal even while it is
    /// ignored; setting "ignore" again drops it).
    pub(crate) fn discard_pending(&self) {
        for &(signal, _) in &self.0 {
            let _ = set_ignored(signal);
        }
    }

    /// Puts back the action `signal` had, unless something has set another since.
    pub(crate) fn restore(&self, signal: nix::sys::signal::Signal) {
        let Some((_, before)) = self.0.iter().find(|(s, _)| *s == signal) else {
            return;
        };
        if !is_ignored(signal) {
            return;
        }
        // SAFETY: the action is one this process had before (its default, or a handler the
        // program installed, which was written to run as one).
        if let Err(e) = unsafe { nix::sys::signal::sigaction(signal, before) } {
            crate::log::warn!(%signal, error = %e, "cannot put back the action the standby ignored");
        }
    }
}

/// The calling thread's `errno`. Async-signal-safe.
pub(crate) fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// Resolves once a child process has exited (without reaping it), from a thread of its own
/// in `waitid` with `WNOWAIT`. Portable; Linux prefers a pidfd and falls back to this.
#[cfg(feature = "tokio")]
pub(crate) struct ExitThread(Option<tokio::sync::oneshot::Receiver<()>>);

#[cfg(feature = "tokio")]
impl ExitThread {
    /// Watches `pid`, our unreaped child.
    pub(crate) fn new(pid: u32) -> io::Result<ExitThread> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gracenet-wait-{pid}"))
            .spawn(move || {
                loop {
                    // SAFETY: siginfo_t is plain data; waitid fills it in.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    // SAFETY: waitid writes only `info`; WNOWAIT leaves the child to be reaped
                    // by its handle.
                    let rc = unsafe {
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOWAIT,
                        )
                    };
                    if rc == 0 || errno() != libc::EINTR {
                        // Exited, or no longer ours to wait for (reaped already): either way,
                        // the process is gone.
                        let _ = tx.send(());
                        return;
                    }
                }
            })?;
        Ok(ExitThread(Some(rx)))
    }

    /// Resolves when the process has exited (at once, every time after the first).
    pub(crate) async fn exited(&mut self) {
        if let Some(rx) = &mut self.0 {
            let _ = rx.await;
            // A oneshot must not be polled again once it has completed.
            self.0 = None;
        }
    }
}

/// This process's resident memory in bytes, from `/proc/self/status` (`VmRSS`, in kB);
/// `None` where there is no `/proc` or it cannot be read.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}
