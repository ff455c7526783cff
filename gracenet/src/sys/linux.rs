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
/// per fd below `limit` on kernels before 5.11. Async-signal-safe: for the child between its start and its `execve`.
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
    socket: &impl std::os::fd::AsFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<super::Received> {
    use nix::sys::socket::{ControlMessageOwned, UnixCredentials, recvmsg};
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; super::MAX_FDS_PER_MESSAGE]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
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

/// A copy of process `pidfd`'s fd `fd` (`pidfd_getfd`, Linux 5.6+; ptrace's permission: our
/// own child, or root).
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number in that process and flags (0); it
    // returns a new fd in this process (close-on-exec) or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
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

/// Sockets watched for something to read, outside any runtime: each one added is reported
/// once, by [`ready`](Self::ready), when its peer has sent something (or closed). An epoll
/// instance of its own, each socket added one-shot.
pub(crate) struct ReadWatch(nix::sys::epoll::Epoll);

impl ReadWatch {
    pub(crate) fn new() -> io::Result<ReadWatch> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags};
        Ok(ReadWatch(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?))
    }

    /// Watches `fd` under `key`. [`remove`](Self::remove) it before `fd` closes.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        Ok(self.0.add(fd, EpollEvent::new(flags, key))?)
    }

    /// Stops watching `fd`.
    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        // Fails only for an fd that was never added: nothing to stop.
        let _ = self.0.delete(fd);
    }

    /// The keys of up to 8 sockets found readable since they were added, without waiting;
    /// each is reported once.
    pub(crate) fn ready(&self) -> Vec<u64> {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        let mut events = [EpollEvent::empty(); 8];
        let n = self.0.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        events[..n].iter().map(EpollEvent::data).collect()
    }
}

/// Whether `signal` waits to be delivered to `pid` (`/proc/<pid>/status`: `ShdPnd`, sent to
/// the process, or `SigPnd`, to its main thread): the same signal sent now would be merged
/// with it (standard signals do not queue). False when it cannot be read.
pub(crate) fn signal_pending(pid: u32, signal: i32) -> bool {
    let Some(bit) = u32::try_from(signal)
        .ok()
        .filter(|s| (1..=64).contains(s))
        .map(|s| 1u64 << (s - 1))
    else {
        return false;
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .filter_map(|l| l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:")))
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub(crate) fn is_running(pid: u32) -> bool {
    running_start(pid).is_some()
}

/// `/proc/<pid>/stat`, if readable. When it cannot be opened for a reason other than the
/// process being gone (this process out of fds, `/proc` not mounted), the kernel is asked
/// without an fd (`kill(pid, 0)`), and a live process reads as one in state `R` whose start
/// is unknown: a process at its fd limit must not take its primary or its parent for dead.
fn read_stat(pid: u32) -> Option<String> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Some(stat),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => None,
        Err(_) => {
            let pid_t = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_t), None)
                != Err(nix::errno::Errno::ESRCH);
            alive.then(|| format!("{pid} (unknown) R"))
        }
    }
}

/// Field `index` of a `/proc/<pid>/stat` line, counted after the command name (0 is the
/// state), parsed; without allocating (this runs on the restart's path).
fn stat_field<T: std::str::FromStr>(stat: &str, index: usize) -> Option<T> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(index)?.parse().ok()
}

/// If `pid` is running (not a zombie): when it started, in clock ticks since boot
/// (`/proc/<pid>/stat` field 22; a reused pid has a later one), `None` inside when unknown.
/// One read of `/proc`.
pub(crate) fn running_start(pid: u32) -> Option<Option<u64>> {
    let stat = read_stat(pid)?;
    let state: char = stat_field(&stat, 0)?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    Some(stat_field(&stat, 19))
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_field(&read_stat(pid)?, 19)
}

/// Whether `pid` descends from `ancestor` (its parent chain reaches it, within 64 steps).
pub(crate) fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        let Some(parent) = read_stat(current).and_then(|s| stat_field::<u32>(&s, 1)) else {
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

/// The parent of `pid` (`/proc/<pid>/stat` field 4), if it exists.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    stat_field(&read_stat(pid)?, 1)
}

/// The processes whose parent is `parent`, zombies included (one scan of `/proc`: for the
/// supervisor, to find the orphans reparented to it).
/// Empty when `/proc` is another pid namespace's (its pids would name other processes here).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let ours = std::fs::read_link("/proc/self")
        .is_ok_and(|p| p.to_str().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id()));
    if !ours {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// Whether this process has exactly one thread. procfs gives `/proc/self/task` a link count
/// of two plus the number of threads: one `statx`, where reading `/proc/self/stat`'s
/// `num_threads` takes an open, reads and a parse (it is asked several times at startup, when
/// a restart must be cheap). `/proc/self/stat` answers when the link count cannot be had.
pub(crate) fn single_threaded() -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/task") {
        Ok(m) if m.nlink() > 2 => m.nlink() == 3,
        _ => read_stat(std::process::id()).and_then(|s| stat_field::<u32>(&s, 17)) == Some(1),
    }
}

/// `recvmsg` flags that make received fds close-on-exec atomically.
pub(crate) const RECV_CLOEXEC: nix::sys::socket::MsgFlags = nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC;

/// Whether the peer of socket `fd` has stopped sending (its FIN has arrived), whatever bytes
/// still wait unread: `Some` where the system can tell.
pub(crate) fn peer_stopped_sending(fd: BorrowedFd<'_>) -> Option<bool> {
    // libc's poll: nix names no POLLRDHUP and drops the bits it does not name.
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given, which this stack owns; `fd`
    // is open for the borrow; a zero timeout returns at once.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    (rc >= 0).then_some(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}

/// Whether a process started at idle CPU priority (`SCHED_IDLE`) by this one will be allowed
/// to return to this one's priority, as the kernel decides it: leaving `SCHED_IDLE` needs
/// `CAP_SYS_NICE` (in the initial user namespace) or an `RLIMIT_NICE` that allows this
/// process's nice value. Only for a calling thread of the normal policy (`SCHED_OTHER`): a
/// real-time or batch process keeps its own policy for its children.
pub(crate) fn may_start_at_idle_priority() -> bool {
    // SAFETY: no pointers.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return false;
    }
    if has_cap_sys_nice() {
        return true;
    }
    // getpriority may return -1 as a value: errno tells the error apart.
    // SAFETY: errno is this thread's; no pointers.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if nice == -1 && crate::sys::errno() != 0 {
        return false;
    }
    let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE) else {
        return false;
    };
    // The kernel's rule (`is_nice_reduction`): 20 - nice <= RLIMIT_NICE.
    soft >= (20 - i64::from(nice)).max(0) as u64
}

/// `CAP_SYS_NICE` in this process's effective set, counted only in the initial user
/// namespace (the kernel checks the capability there).
fn has_cap_sys_nice() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let initial_namespace = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    if !initial_namespace {
        return false;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// Puts a thread at idle CPU priority: the calling one for `None`, else the one whose id is
/// given (a child just started has one thread, whose id is its pid; threads it starts inherit
/// the policy). A failure leaves the normal priority: nothing to undo.
pub(crate) fn enter_idle_priority(thread: Option<u32>) {
    let param = libc::sched_param { sched_priority: 0 };
    let tid = thread.map_or(0, |t| t as libc::pid_t);
    // SAFETY: `param` is a valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
}

/// Puts every thread of this process at idle CPU priority while its first thread is there: the
/// generation before sets that one once we have exec'd, and threads started before are caught
/// up here. Does nothing when the first thread is at another policy: either the generation
/// before has not set it yet (it will, and threads started from then on inherit it), or it has
/// already returned it to normal priority at its idle limit (a start starved that long), where
/// the process must stay, not go back to idle for the rest of its start. Looked at again after:
/// a first thread returned meanwhile has every thread returned with it. A failure leaves a
/// thread where it was.
pub(crate) fn follow_first_thread_to_idle_priority() {
    let pid = std::process::id() as libc::pid_t;
    // SAFETY: no pointers; the process's first thread has the process's id.
    let first_is_idle = || unsafe { libc::sched_getscheduler(pid) } == libc::SCHED_IDLE;
    if !first_is_idle() {
        return;
    }
    enter_idle_priority_all();
    if !first_is_idle() {
        let _ = leave_idle_priority(None);
    }
}

/// Puts every thread of this process at idle CPU priority. A failure leaves a thread where it
/// was.
fn enter_idle_priority_all() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()))
    {
        enter_idle_priority(Some(tid));
    }
}

/// Returns every thread of `process` (this one for `None`) that is at idle CPU priority to
/// the normal policy (its nice value, kept by the kernel, comes back with it). Threads started
/// meanwhile by a thread not yet returned are caught by a second look; the number of threads
/// returned.
///
/// # Errors
/// The first thread the system would not return (`EPERM` without the right to).
pub(crate) fn leave_idle_priority(process: Option<u32>) -> io::Result<usize> {
    let tasks = match process {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let param = libc::sched_param { sched_priority: 0 };
    let mut returned = 0;
    for _ in 0..3 {
        let mut found = 0;
        for entry in std::fs::read_dir(&tasks)?.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: no pointers.
            if unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_IDLE {
                continue;
            }
            found += 1;
            // SAFETY: `param` is a valid sched_param for the call's duration.
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) } != 0 {
                let e = io::Error::last_os_error();
                // A thread that ended meanwhile is not an error.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            } else {
                returned += 1;
            }
        }
        if found == 0 {
            break;
        }
    }
    Ok(returned)
}

/// An anonymous shared-memory file of `size` bytes (`memfd_create`), close-on-exec, sealed
/// at that size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): no process that reaches it
/// (its peers open it by `/proc/PID/fd`) can truncate it under their mappings, where a
/// truncated shared mapping gives `SIGBUS` to every process touching it.
pub(crate) fn shared_memory(name: &str, size: usize) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain system call with a NUL-terminated name; the returned fd is new and ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::ftruncate(&fd, size as libc::off_t).map_err(io::Error::from)?;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own, with an int argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The seals [`shared_memory`] puts on its file: its size can no longer change, nor its seals.
pub(crate) const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Whether `fd` is sealed at its size as [`shared_memory`] seals it.
pub(crate) fn is_size_sealed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fcntl(F_GET_SEALS) on an fd borrowed for the call.
    let seals = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals & SIZE_SEALS == SIZE_SEALS)
}

/// An anonymous file (`memfd_create`, close-on-exec) holding `bytes`, readable by its owner
/// only (mode 0400), then sealed against any change ([`READ_ONLY_SEALS`]): whoever is handed
/// it can read it, no one can alter it. It has no path: another process reaches it only by
/// being handed the fd, or through `/proc/PID/fd`, which takes the right to inspect a holder
/// (the same user, or root); the mode keeps even that to the owner.
pub(crate) fn sealed_file(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain system call with a NUL-terminated name; the returned fd is new and ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // memfd_create makes it 0777: read and write through this fd need no mode bits.
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::S_IRUSR).map_err(io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, bytes)?;
    let fd = OwnedFd::from(file);
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own, with an int argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, READ_ONLY_SEALS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The seals [`sealed_file`] puts on its file: no write, no resize, no change of seals.
pub(crate) const READ_ONLY_SEALS: libc::c_int = SIZE_SEALS | libc::F_SEAL_WRITE;

/// Whether `fd` is sealed against any change, as [`sealed_file`] seals it.
pub(crate) fn is_read_only_sealed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fcntl(F_GET_SEALS) on an fd borrowed for the call.
    let seals = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals & READ_ONLY_SEALS == READ_ONLY_SEALS)
}

/// Opens another process's fd `fd` anew (through `/proc/PID/fd`), read-write: a worker
/// reaches its primary's shared memory so. Needs the right to inspect that process (the same
/// user).
pub(crate) fn open_fd_of(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    Ok(OwnedFd::from(file))
}

/// Steers new connections of a `SO_REUSEPORT` group (the one `fd` belongs to) to the
/// listeners at `live` (indexes in the group, in the order they joined it), at random among
/// them: a classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`). A group steered so never sends a
/// connection to a listener nobody accepts from.
pub(crate) fn steer_reuseport(fd: BorrowedFd<'_>, live: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    // BPF_LD | BPF_W | BPF_ABS, BPF_ALU | BPF_MOD | BPF_K, BPF_JMP | BPF_JEQ | BPF_K,
    // BPF_RET | BPF_K (linux/filter.h, linux/bpf_common.h).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_ALU_MOD_K: u16 = 0x94;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    if live.is_empty() || live.len() > 1024 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let op = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let mut program = vec![
        op(
            BPF_LD_W_ABS,
            0,
            0,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        op(BPF_ALU_MOD_K, 0, 0, live.len() as u32),
    ];
    for (i, &index) in live.iter().enumerate() {
        program.push(op(BPF_JMP_JEQ_K, 0, 1, i as u32));
        program.push(op(BPF_RET_K, 0, 0, index));
    }
    program.push(op(BPF_RET_K, 0, 0, live[0]));
    let fprog = SockFprog {
        len: program.len() as u16,
        filter: program.as_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel copies the
    // program; `fd` is an open socket borrowed for the call.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<SockFprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many connections wait in a listening TCP socket's accept queue: `TCP_INFO` on a
/// listener reports it in `tcpi_unacked` (its backlog limit in `tcpi_sacked`).
pub(crate) fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: tcp_info is plain integers: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives for the call;
    // `fd` is an open socket borrowed for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// Detaches the program [`steer_reuseport`] attached to `fd`'s group (`SO_DETACH_REUSEPORT_BPF`):
/// the kernel's hash spreads new connections again.
pub(crate) fn unsteer_reuseport(fd: BorrowedFd<'_>) -> io::Result<()> {
    const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;
    let zero: libc::c_int = 0;
    // SAFETY: a plain setsockopt on an open socket borrowed for the call, with an int option.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            (&raw const zero).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_at_idle_priority_returns_exactly_when_the_rule_says_it_may() {
        let allowed = may_start_at_idle_priority();
        std::thread::spawn(move || {
            enter_idle_priority(None);
            // SAFETY: no pointers.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
            let left = leave_idle_priority(None);
            // SAFETY: no pointers.
            let now = unsafe { libc::sched_getscheduler(0) };
            if allowed {
                assert!(left.expect("allowed to leave") >= 1);
                assert_eq!(now, libc::SCHED_OTHER);
            } else {
                assert_eq!(left.expect_err("not allowed").raw_os_error(), Some(libc::EPERM));
                assert_eq!(now, libc::SCHED_IDLE);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_thread_count_from_the_link_count_agrees_with_proc_stat() {
        // The test harness runs tests on threads of their own: never single-threaded here.
        let from_stat = read_stat(std::process::id()).and_then(|s| stat_field::<u32>(&s, 17));
        assert!(from_stat.is_some_and(|n| n > 1), "{from_stat:?}");
        assert!(!single_threaded());
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_command_name() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0";
        assert_eq!(stat_field::<char>(stat, 0), Some('S'));
        assert_eq!(stat_field::<u32>(stat, 1), Some(1));
        assert_eq!(stat_field::<u64>(stat, 19), Some(12345));
        assert_eq!(stat_field::<u64>(stat, 40), None);
        assert_eq!(stat_field::<u64>("no command name", 0), None);
    }

    #[test]
    fn a_running_process_has_a_start_time_and_a_zombie_is_not_running() {
        let ours = running_start(std::process::id());
        assert!(matches!(ours, Some(Some(t)) if t > 0), "{ours:?}");
        /// Kills and reaps the child however the test ends.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reaped(std::process::Command::new("true").spawn().expect("spawn true"));
        let pid = child.0.id();
        // Not reaped yet: once it has exited it is a zombie, which is not running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while running_start(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "`true` still running after 20 s"
            );
            std::thread::yield_now();
        }
        assert!(
            read_stat(pid).is_some(),
            "the zombie is still in /proc until reaped"
        );
        assert!(!is_running(pid));
        child.0.wait().expect("reap true");
        assert_eq!(running_start(pid), None, "reaped: gone");
    }
}
