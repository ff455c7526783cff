//! Passing a connection a worker just accepted on to a clearly lighter worker.
//!
//! Each worker accepts from a TCP listener of its own (one `SO_REUSEPORT` group), and the
//! kernel (or the primary's steering program) picks a listener at random per connection. For
//! short connections that evens out; for long-lived ones (keep-alive, WebSocket) it does not:
//! 64 connections opened at once land 35/65 now and then. So a worker that accepts a
//! connection while it holds clearly more open connections than the lightest live worker (the
//! shared load table, [`super::balance`]) passes it on, fd and all, before reading a byte of
//! it: least-connections balance with nothing on the path of a balanced worker but reading
//! the table.
//!
//! Each worker listener has an inbox: a Unix datagram socket at `<dir>/<pid>-<key>`, where
//! `<key>` names the listening address ([`listener_key`]: two sites on one port stay apart)
//! and `<dir>` is the primary's private directory (mode 0700, its notify socket's): only the
//! same user (or root) can send to it. A connection is one datagram with the fd attached
//! (`SCM_RIGHTS`). Nothing is lost on the way:
//! - the sender sends without waiting; if the inbox is gone, full or closed it serves the
//!   connection itself;
//! - a worker that stops accepting first shuts its inbox for reading (from then on a sender
//!   gets `EPIPE` and serves the connection itself), then takes every connection already
//!   queued there and serves it like one it accepted;
//! - what the primary takes (from the inboxes of a worker that ended or fell silent, from the
//!   listener of one that cannot accept) and no other inbox has room for waits in the primary
//!   ([`Unpassed`]) until one has: the primary never waits for an inbox, and never closes a
//!   connection it took while it runs.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::io::Interest;

/// The byte a connection's datagram carries (a datagram cannot be empty and carry fds on
/// every system).
const CONNECTION: &[u8] = b"C";

/// The primary's private directory, if this worker may use it ([`set_dir`]).
static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// This worker's inboxes: each one's listener key and fd number, told to the primary with its
/// "ready" message ([`ready_line`]) so that it copies them without searching `/proc`.
static BOUND: std::sync::Mutex<Vec<(String, i32)>> = std::sync::Mutex::new(Vec::new());

/// The line a worker's "ready" message carries naming its inboxes (`KEY:FD,…`), if it has any.
pub(crate) fn ready_line() -> Option<String> {
    let bound = BOUND.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    (!bound.is_empty()).then(|| {
        let listed: Vec<String> = bound.iter().map(|(key, fd)| format!("{key}:{fd}")).collect();
        format!("{}={}", crate::supervisor::protocol::INBOXES, listed.join(","))
    })
}

/// Sets the directory inboxes live in from the worker's `NOTIFY_SOCKET` (a path in the
/// primary's private directory). Used only if the directory is this user's and nobody else
/// may enter it: a connection's fd must reach no other user. Called once, as a worker starts.
pub(crate) fn set_dir(notify_socket: Option<&OsStr>) {
    DIR.get_or_init(|| {
        let dir = Path::new(notify_socket?).parent()?;
        match private(dir) {
            Ok(()) => Some(dir.to_path_buf()),
            Err(why) => {
                crate::log::warn!(dir = %dir.display(), why, "cluster: not passing connections between workers");
                None
            }
        }
    });
}

/// Whether `dir` is a directory (not a link) of this user's that only it may enter.
fn private(dir: &Path) -> Result<(), &'static str> {
    if !dir.is_absolute() {
        return Err("the notify socket's path is not absolute");
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|_| "the directory cannot be read")?;
    if !meta.is_dir() {
        return Err("not a directory");
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err("another user's directory");
    }
    if meta.mode() & 0o077 != 0 {
        return Err("other users may enter the directory");
    }
    Ok(())
}

fn inbox_path(dir: &Path, pid: u32, key: &str) -> PathBuf {
    dir.join(format!("{pid}-{key}"))
}

/// What names a listening address in its inboxes' file names: the same in every worker for
/// the same listening socket, different for every other address (`127.0.0.1:80` and
/// `[::1]:80` are two sites). The port, and an FNV-1a hash of the whole address.
pub(crate) fn listener_key(addr: &std::net::SocketAddr) -> String {
    let hash = addr.to_string().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}-{hash:016x}", addr.port())
}

/// The primary is gone (killed: it cleaned nothing up): its notify socket is removed from its
/// private directory, and the directory itself once the last inbox in it is gone
/// ([`Inbox`]'s drop tries).
pub(crate) fn primary_gone() {
    if let Some(dir) = DIR.get().and_then(Option::as_ref) {
        let _ = std::fs::remove_file(dir.join("notify"));
        let _ = std::fs::remove_dir(dir);
    }
}

/// A worker listener's inbox: where connections passed on by heavier workers arrive.
#[derive(Debug)]
pub(crate) struct Inbox {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
    /// Connections taken out at [`close`](Self::close), not yet handed out.
    left: Vec<OwnedFd>,
    /// An fd kept open to be closed just before each read: at the open files limit the
    /// kernel would close a passed connection it cannot install (and the client would see a
    /// reset), where the sender still could serve it.
    reserve: Option<std::fs::File>,
    closed: bool,
}

impl Inbox {
    /// The inbox of this worker's listener named by `key` ([`listener_key`]), if connections
    /// can be passed here.
    pub(crate) fn bind(key: &str) -> Option<Inbox> {
        let dir = DIR.get()?.as_ref()?;
        let inbox = Self::bind_at(inbox_path(dir, std::process::id(), key))?;
        BOUND
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((key.to_owned(), inbox.socket.as_raw_fd()));
        Some(inbox)
    }

    fn bind_at(path: PathBuf) -> Option<Inbox> {
        let bound = || -> io::Result<Inbox> {
            // A file left by a killed process of the same pid (the directory is private).
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let socket = UnixDatagram::bind(&path)?;
            socket.set_nonblocking(true)?;
            Ok(Inbox {
                socket: tokio::net::UnixDatagram::from_std(socket)?,
                path: path.clone(),
                left: Vec::new(),
                reserve: std::fs::File::open("/dev/null").ok(),
                closed: false,
            })
        };
        match bound() {
            Ok(inbox) => Some(inbox),
            Err(e) => {
                crate::log::warn!(path = %path.display(), error = %e, "cluster: cannot make this listener's inbox: no connections are passed to it");
                None
            }
        }
    }

    /// The next connection passed here; once [closed](Self::close), those that were queued,
    /// then none.
    pub(crate) async fn recv(&mut self) -> OwnedFd {
        loop {
            if self.closed {
                return match self.left.pop() {
                    Some(fd) => fd,
                    None => std::future::pending().await,
                };
            }
            if self.reserve.is_none() {
                self.reserve = std::fs::File::open("/dev/null").ok();
            }
            if self.reserve.is_none() {
                // At the limit: a connection read now could be lost. Senders serve their own.
                crate::log::warn!(path = %self.path.display(), "cluster: at the open files limit: no longer taking connections passed by other workers");
                self.close();
                continue;
            }
            let ready = match self.socket.ready(Interest::READABLE).await {
                Ok(ready) => ready,
                Err(e) => {
                    crate::log::warn!(path = %self.path.display(), error = %e, "cluster: an inbox cannot be waited on: no longer taking connections");
                    self.close();
                    continue;
                }
            };
            if ready.is_read_closed() {
                // Shut for reading (the primary took the queue of this worker, silent for too
                // long): what is still queued is served, nothing more comes.
                self.close();
                continue;
            }
            let Inbox { socket, reserve, .. } = self;
            match socket.try_io(Interest::READABLE, || receive_with(socket, reserve)) {
                Ok(Some(fd)) => return fd,
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    crate::log::debug!(path = %self.path.display(), error = %e, "cluster: an inbox read failed");
                    self.close();
                }
            }
        }
    }

    /// Stops taking connections: from now on a sender gets `EPIPE` (and serves the
    /// connection itself); those already queued are handed out by [`take_left`](Self::take_left).
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Err(e) = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Read)
        {
            crate::log::debug!(path = %self.path.display(), error = %e, "cluster: cannot shut an inbox");
        }
        let _ = std::fs::remove_file(&self.path);
        // Read only with a free fd for each (at the limit the kernel would drop what it reads):
        // what stays queued goes to the others when this inbox is dropped, or with the
        // primary's copy of it when this worker ends.
        for _ in 0..4096 {
            if self.reserve.is_none() {
                self.reserve = std::fs::File::open("/dev/null").ok();
            }
            if self.reserve.is_none() {
                break;
            }
            match receive_with(&self.socket, &mut self.reserve) {
                Ok(Some(fd)) => self.left.push(fd),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    crate::log::debug!(path = %self.path.display(), error = %e, "cluster: an inbox read failed");
                    break;
                }
            }
        }
        self.left.reverse();
    }

    /// A connection that was queued when the inbox [closed](Self::close).
    pub(crate) fn take_left(&mut self) -> Option<OwnedFd> {
        self.left.pop()
    }
}

impl Drop for Inbox {
    /// Closed without handing out all it had (a listener dropped before its accept loop
    /// took every connection passed to it): they go to the other workers' inboxes for the
    /// same listener, as the primary's [`take_over`] would.
    fn drop(&mut self) {
        let fd = self.socket.as_raw_fd();
        BOUND
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|&(_, bound)| bound != fd);
        self.close();
        // Empty only once the primary is gone and this was the last inbox: then nobody else
        // removes it.
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        let mut left = std::mem::take(&mut self.left);
        if left.is_empty() {
            return;
        }
        // In the order they came (`left` is kept for popping).
        left.reverse();
        let others = others_than(&self.path);
        let before = left.len();
        // Runs on the worker's runtime: a short wait for a full inbox, not one per connection.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
        left.retain(|fd| !pass_to_any(&others, fd, std::time::Instant::now() < deadline));
        if !left.is_empty() {
            crate::log::warn!(
                connections = left.len(),
                of = before,
                "cluster: connections passed to a listener that closed without accepting them are closed: no other worker took them"
            );
        }
    }
}

/// Takes what waits in `listener`'s queue (a worker's own listener, whose worker cannot accept:
/// out of fds) and passes each connection to the inbox for it in `dir` of another of the
/// `takers` (not `pid`); at most `limit`, without waiting (this runs on the primary's only
/// thread). Accepts only while such an inbox exists and nothing taken earlier for that
/// listener still waits in `unpassed`, and only if the listener does not block (its worker's
/// runtime made it non-blocking). A connection no inbox has room for is never dropped: it
/// waits in `unpassed` (and the rest in the listener's queue). Returns how many were passed on.
pub(crate) fn drain_listener(
    dir: &Path,
    pid: u32,
    listener: &OwnedFd,
    limit: usize,
    takers: &[u32],
    unpassed: &mut Unpassed,
) -> usize {
    let nonblocking = nix::fcntl::fcntl(listener.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|f| nix::fcntl::OFlag::from_bits_truncate(f).contains(nix::fcntl::OFlag::O_NONBLOCK));
    let Some(addr) = socket2::SockRef::from(listener)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
    else {
        return 0;
    };
    if !nonblocking {
        return 0;
    }
    let key = listener_key(&addr);
    if unpassed.waits_for(&key) {
        // Those first, in order.
        return 0;
    }
    let inboxes = inboxes_of(dir, &key, takers, pid);
    if inboxes.is_empty() {
        return 0;
    }
    let mut passed = 0;
    while passed < limit {
        let Ok(fd) =
            nix::sys::socket::accept4(listener.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)
        else {
            break;
        };
        // SAFETY: accept4 just returned this fd; nothing else owns it.
        let connection = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if !pass_to_any(&inboxes, &connection, false) {
            crate::log::warn!(
                pid,
                "cluster: no other worker has room for a connection taken from a worker that cannot accept: it waits for one"
            );
            unpassed.push(key, connection);
            break;
        }
        passed += 1;
    }
    passed
}

/// The inboxes in `dir` of the `takers` but `pid` for the listener named by `key` that exist.
fn inboxes_of(dir: &Path, key: &str, takers: &[u32], pid: u32) -> Vec<PathBuf> {
    takers
        .iter()
        .filter(|&&p| p != pid)
        .map(|&p| inbox_path(dir, p, key))
        .filter(|path| path.exists())
        .collect()
}

/// The inboxes in `path`'s directory of the same listener as `path`'s, but other workers'.
fn others_than(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Some((_, key)) = name.split_once('-') else {
        return Vec::new();
    };
    names_in(dir, |n| {
        n != name && n.split_once('-').is_some_and(|(_, k)| k == key)
    })
    .into_iter()
    .map(|n| dir.join(n))
    .collect()
}

/// Sends `connection` to the first of `inboxes` that takes it; if all that exist are full and
/// `wait`, gives them a few chances (a full inbox empties as its worker reads): at most about
/// 50 ms.
fn pass_to_any(inboxes: &[PathBuf], connection: &OwnedFd, wait: bool) -> bool {
    for round in 0..if wait { 10 } else { 1 } {
        let mut full = false;
        for to in inboxes {
            match send_to(to, connection) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => full = true,
                Err(_) => {}
            }
        }
        if !full || !wait || round == 9 {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// [`receive`] with the `reserve` fd closed for the read and opened again after it.
fn receive_with(socket: &impl AsFd, reserve: &mut Option<std::fs::File>) -> io::Result<Option<OwnedFd>> {
    drop(reserve.take());
    let got = receive(socket);
    *reserve = std::fs::File::open("/dev/null").ok();
    got
}

/// Reads one datagram: the connection it carries, if it carries one (anything else, extra
/// fds included, is dropped).
fn receive(socket: &impl AsFd) -> io::Result<Option<OwnedFd>> {
    let mut buf = [0u8; 8];
    let got = crate::sys::recv_with_fds(socket, &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)?;
    if got.truncated {
        crate::log::warn!(
            "cluster: a connection passed by another worker was lost: no fd free to receive it"
        );
    }
    let mut fds = got.fds.into_iter();
    let fd = fds.next();

    if got.len != CONNECTION.len() || &buf[..got.len] != CONNECTION || fds.next().is_some() {
        return Ok(None);
    }
    Ok(fd.filter(|fd| crate::sys::socket_family(fd.as_fd()).is_ok()))
}

/// The socket connections are sent from (one per process, never waits).
fn sender() -> Option<&'static UnixDatagram> {
    static SENDER: OnceLock<Option<UnixDatagram>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            UnixDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .ok()
        })
        .as_ref()
}

/// Passes `connection` to worker `pid`'s listener named by `key`, without waiting. An error
/// says it did not arrive: the caller still has it and serves it.
pub(crate) fn pass(connection: &impl AsFd, pid: u32, key: &str) -> io::Result<()> {
    let dir = DIR
        .get()
        .and_then(Option::as_ref)
        .ok_or(io::ErrorKind::Unsupported)?;
    if pid == 0 || pid == std::process::id() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    send_to(&inbox_path(dir, pid, key), connection)
}

fn send_to(path: &Path, connection: &impl AsFd) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let socket = sender().ok_or(io::ErrorKind::Unsupported)?;
    let to = UnixAddr::new(path).map_err(io::Error::from)?;
    let fds = [connection.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(CONNECTION)];
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        Some(&to),
    )
    .map(|_| ())
    .map_err(io::Error::from)
}

/// Connections the primary took (from a worker that ended, fell silent or cannot accept) that
/// no other worker's inbox had room for: each waits here, with its listener's key, until
/// [`pass_on`](Self::pass_on) finds an inbox that has (a worker read its own, or a
/// replacement serves). Closed only when the primary exits (dropped): the client still
/// waits, as it would in a listener's queue.
#[derive(Debug, Default)]
pub(crate) struct Unpassed(std::collections::VecDeque<(String, OwnedFd)>);

impl Unpassed {
    /// How many connections wait.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a connection for the listener named by `key` waits.
    fn waits_for(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn push(&mut self, key: String, connection: OwnedFd) {
        self.0.push_back((key, connection));
    }

    /// Passes what waits, oldest first, to the inboxes in `dir` of the `takers` (serving
    /// workers' pids) for its listener, spread over them, without waiting: once no inbox takes
    /// one, the later ones for that listener wait on too (they stay in order). Returns how
    /// many were passed on.
    pub(crate) fn pass_on(&mut self, dir: &Path, takers: &[u32]) -> usize {
        if takers.is_empty() {
            return 0;
        }
        let mut passed = 0;
        let mut stuck: Vec<String> = Vec::new();
        let mut kept = std::collections::VecDeque::new();
        for (key, connection) in std::mem::take(&mut self.0) {
            if !stuck.contains(&key) {
                let mut inboxes: Vec<PathBuf> = takers.iter().map(|&p| inbox_path(dir, p, &key)).collect();
                let n = inboxes.len();
                inboxes.rotate_left(passed % n);
                if pass_to_any(&inboxes, &connection, false) {
                    passed += 1;
                    continue;
                }
                stuck.push(key.clone());
            }
            kept.push_back((key, connection));
        }
        self.0 = kept;
        passed
    }
}

/// A worker's inboxes, held by the primary too: their queues outlive the worker, so what was
/// passed to a worker that dies or hangs before reading it goes to the others
/// ([`take_over`]).
/// Each: its listener's key, the copy, and the identity (device, inode) of its file when it
/// was copied (so that a file another process bound at the same name since is left alone).
#[derive(Debug, Default)]
pub(crate) struct HeldInboxes(Vec<(String, OwnedFd, Option<FileIdentity>)>);

/// A file's device and inode: which file a name pointed to.
type FileIdentity = (u64, u64);

impl HeldInboxes {
    /// Takes what waits in these inboxes, worker `pid`'s (it cannot accept: out of fds, it
    /// reads them no more, and what another worker passed to it before it noticed would wait
    /// there until it ends), and passes each to the inbox in `dir` of another of the `takers`
    /// for the same listener, at most `limit` per inbox, without waiting: what no inbox has
    /// room for waits in `unpassed`. The inboxes stay open (the worker reads them again once
    /// it can). Reads only with an fd free for each connection. Returns how many were passed.
    pub(crate) fn drain(
        &self,
        dir: &Path,
        pid: u32,
        limit: usize,
        takers: &[u32],
        unpassed: &mut Unpassed,
    ) -> usize {
        let mut reserve = std::fs::File::open("/dev/null").ok();
        let mut passed = 0;
        for (key, inbox, _) in &self.0 {
            if unpassed.waits_for(key) {
                continue;
            }
            let inboxes = inboxes_of(dir, key, takers, pid);
            if inboxes.is_empty() {
                continue;
            }
            for _ in 0..limit {
                if reserve.is_none() {
                    return passed;
                }
                let connection = match receive_with(inbox, &mut reserve) {
                    Ok(Some(connection)) => connection,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                if !pass_to_any(&inboxes, &connection, false) {
                    unpassed.push(key.clone(), connection);
                    break;
                }
                passed += 1;
            }
        }
        passed
    }
}

/// The names in `dir` that `wanted` keeps (at most 4096 of them).
fn names_in(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| wanted(n))
                .take(4096)
                .collect()
        })
        .unwrap_or_default()
}

/// The identity (device, inode) of the file at `path`, if there is one.
fn file_identity(path: &Path) -> Option<FileIdentity> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Copies of worker `pid`'s inboxes (the primary's, for its workers in `dir`), taken from the
/// worker with `pidfd_getfd` (it is the primary's child) by the fd numbers its "ready" message
/// `listed` ([`ready_line`]'s value): no search of `/proc`. A copy is kept only if it is the
/// socket bound at that inbox's name; one that cannot be taken is logged and left out: its
/// connections are then the worker's alone.
pub(crate) fn adopt(dir: &Path, pid: u32, listed: Option<&str>) -> HeldInboxes {
    let listed: Vec<(&str, i32)> = listed
        .unwrap_or_default()
        .split(',')
        .filter_map(|entry| {
            let (key, fd) = entry.rsplit_once(':')?;
            Some((key, fd.parse().ok()?))
        })
        .take(4096)
        .collect();
    if listed.is_empty() {
        return HeldInboxes::default();
    }
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(e) => {
            crate::log::debug!(pid, error = %e, "cluster: cannot open a worker to copy its inboxes");
            return HeldInboxes::default();
        }
    };
    let mut held = Vec::new();
    for (key, fd) in listed {
        let path = inbox_path(dir, pid, key);
        let inbox = match crate::sys::pidfd_getfd(pidfd.as_fd(), fd) {
            Ok(inbox) => inbox,
            Err(e) => {
                crate::log::warn!(pid, error = %e, "cluster: cannot copy a worker's inbox: connections passed to it die with it if it fails");
                continue;
            }
        };
        let bound = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(inbox.as_raw_fd())
            .ok()
            .and_then(|a| a.path().map(Path::to_path_buf));
        if bound.as_deref() != Some(path.as_path()) {
            crate::log::warn!(pid, fd, path = %path.display(), "cluster: a worker named as its inbox an fd that is not: not copied");
            continue;
        }
        held.push((key.to_owned(), inbox, file_identity(&path)));
    }
    HeldInboxes(held)
}

/// Takes the connections waiting in `held`, the inboxes of worker `pid` (gone, or about to be
/// killed: it reads them no more), and passes each on to another worker's inbox for the same
/// listener in `dir`, without waiting (this runs on the primary's only thread); then shuts
/// them (a sender then serves its own) and removes their files. Returns how many were taken
/// and how many of them passed on: the rest wait in `unpassed` for a worker with room (the
/// slot's replacement, if no other).
pub(crate) fn take_over(dir: &Path, pid: u32, held: HeldInboxes, unpassed: &mut Unpassed) -> (usize, usize) {
    let prefix = format!("{pid}-");
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let (mut taken, mut passed) = (0, 0);
    let mut keys = Vec::new();
    for (key, inbox, file) in held.0 {
        // From now on senders serve their own; then what is queued is taken.
        let _ = nix::sys::socket::shutdown(inbox.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        let path = dir.join(format!("{prefix}{key}"));
        // Its file, unless another process (a reused pid) has bound one there since.
        if file.is_some() && file_identity(&path) == file {
            let _ = std::fs::remove_file(&path);
        }
        let others = others_than(&path);
        for _ in 0..4096 {
            let connection = match receive_with(&inbox, &mut reserve) {
                Ok(Some(connection)) => connection,
                Ok(None) => continue,
                Err(_) => break,
            };
            taken += 1;
            // Behind those of its listener that already wait, if any.
            if !unpassed.waits_for(&key) && pass_to_any(&others, &connection, false) {
                passed += 1;
            } else {
                unpassed.push(key.clone(), connection);
            }
        }
        keys.push(key);
    }
    // Files of its inboxes that nobody holds (a process that ended before the primary copied
    // them): no socket is bound there any more (one that is takes a connect).
    for name in names_in(dir, |n| n.starts_with(&prefix)) {
        let path = dir.join(&name);
        let bound = UnixDatagram::unbound().is_ok_and(|probe| probe.connect(&path).is_ok());
        if !bound {
            let _ = std::fs::remove_file(&path);
        }
    }
    (taken, passed)
}

#[cfg(all(test, target_os = "linux", not(gracenet_portable)))]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_directory_of_this_user_is_used() {
        let dir = std::env::temp_dir().join(format!("gracenet-transfer-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(private(&dir), Ok(()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(private(&dir), Err("other users may enter the directory"));
        let link = dir.with_extension("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert_eq!(private(&link), Err("not a directory"));
        assert_eq!(
            private(Path::new("relative")),
            Err("the notify socket's path is not absolute")
        );
        std::fs::remove_file(&link).expect("rm link");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn each_listening_address_has_its_own_key() {
        let key = |a: &str| listener_key(&a.parse().expect("an address"));
        assert_eq!(key("127.0.0.1:80"), key("127.0.0.1:80"));
        assert_ne!(key("127.0.0.1:80"), key("[::1]:80"));
        assert_ne!(key("127.0.0.1:80"), key("0.0.0.0:80"));
        assert_ne!(key("127.0.0.1:80"), key("127.0.0.1:81"));
        assert!(key("[::1]:80").starts_with("80-"));
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_new_connections_and_hands_out_the_queued_ones() {
        let dir = tempfile_dir();
        let path = dir.join("1-80");
        let mut inbox = Inbox::bind_at(path.clone()).expect("inbox");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // Which client a server side belongs to: its peer's port.
        let port = |s: &std::net::TcpStream| s.peer_addr().expect("peer").port();
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (conn, _) = listener.accept().expect("accept");
            send_to(&path, &conn).expect("passed");
            clients.push(client);
            served.push(port(&conn));
        }
        // The first arrives by recv, the others stay queued until the close.
        let first = std::net::TcpStream::from(inbox.recv().await);
        assert_eq!(port(&first), served[0]);
        inbox.close();
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (late, _) = listener.accept().expect("accept");
        let refused = send_to(&path, &late).expect_err("a closed inbox takes nothing");
        assert!(
            matches!(
                refused.raw_os_error(),
                Some(libc::EPIPE | libc::ENOENT | libc::ECONNREFUSED)
            ),
            "{refused}"
        );
        drop((client, late));
        let left: Vec<_> = std::iter::from_fn(|| inbox.take_left())
            .map(std::net::TcpStream::from)
            .collect();
        assert_eq!(
            left.iter()
                .map(|s| s.peer_addr().expect("peer").port())
                .collect::<Vec<_>>(),
            clients[1..]
                .iter()
                .map(|c| c.local_addr().expect("addr").port())
                .collect::<Vec<_>>(),
            "the queued connections, in order"
        );
        assert!(!path.exists(), "the inbox's file is removed");
        let _ = std::fs::remove_dir(&dir);
    }

    #[tokio::test]
    async fn the_primary_takes_a_silent_workers_queue_to_another_worker() {
        // This process plays the silent worker (its inbox named by its pid) and the other.
        let dir = tempfile_dir();
        let me = std::process::id();
        let silent_path = dir.join(format!("{me}-80"));
        let mut silent = Inbox::bind_at(silent_path.clone()).expect("inbox");
        let mut other = Inbox::bind_at(dir.join("1-80")).expect("inbox");
        let _elsewhere = Inbox::bind_at(dir.join("2-443")).expect("another port's inbox");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients
                .push(std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"));
            let (conn, _) = listener.accept().expect("accept");
            send_to(&silent_path, &conn).expect("passed");
        }
        let listed = format!("80:{}", silent.socket.as_raw_fd());
        let held = adopt(&dir, me, Some(&listed));
        assert_eq!(held.0.len(), 1, "only this pid's inbox: {held:?}");
        assert_eq!(take_over(&dir, me, held, &mut Unpassed::default()), (3, 3));
        let mut ports = Vec::new();
        for _ in 0..3 {
            let conn = std::net::TcpStream::from(other.recv().await);
            ports.push(conn.peer_addr().expect("peer").port());
        }
        let sent: Vec<u16> = clients
            .iter()
            .map(|c| c.local_addr().expect("addr").port())
            .collect();
        assert_eq!(
            ports, sent,
            "every queued connection reached the other worker, in order"
        );
        // The silent one's inbox is shut: it sees the end, and senders serve their own.
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (late, _) = listener.accept().expect("accept");
        assert!(send_to(&silent_path, &late).is_err());
        let ended = tokio::time::timeout(std::time::Duration::from_millis(200), silent.recv()).await;
        assert!(ended.is_err(), "nothing more arrives");
        assert!(silent.closed, "the end was seen");
        assert!(!silent_path.exists(), "its file is removed");
        drop((client, late, silent, other, _elsewhere));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[tokio::test]
    async fn an_inbox_dropped_with_connections_passes_them_to_another_worker() {
        let dir = tempfile_dir();
        let mut dropped = Inbox::bind_at(dir.join("1-k")).expect("inbox");
        let mut other = Inbox::bind_at(dir.join("2-k")).expect("inbox");
        let _elsewhere = Inbox::bind_at(dir.join("3-j")).expect("another listener's inbox");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients
                .push(std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"));
            let (conn, _) = listener.accept().expect("accept");
            send_to(&dir.join("1-k"), &conn).expect("passed");
        }
        // Closed (its drain began), then dropped before its accept loop took them.
        dropped.close();
        drop(dropped);
        for client in &clients {
            let got = std::net::TcpStream::from(other.recv().await);
            assert_eq!(
                got.peer_addr().expect("peer").port(),
                client.local_addr().expect("addr").port()
            );
        }
        drop((other, _elsewhere));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn taking_over_removes_stale_files_but_not_a_new_process_inbox_at_the_same_name() {
        let dir = tempfile_dir();
        // A process that ended before the primary copied its inbox: only its file is left.
        drop(UnixDatagram::bind(dir.join("7-k")).expect("bind"));
        assert_eq!(
            take_over(&dir, 7, HeldInboxes::default(), &mut Unpassed::default()),
            (0, 0)
        );
        assert!(!dir.join("7-k").exists(), "a file with no socket is removed");
        // The primary holds a worker's inbox; before it takes it over, the pid is reused and
        // the new process binds an inbox at the same name.
        let held = UnixDatagram::bind(dir.join("8-k")).expect("bind");
        let first = file_identity(&dir.join("8-k"));
        std::fs::remove_file(dir.join("8-k")).expect("rm");
        let new = UnixDatagram::bind(dir.join("8-k")).expect("bind the new one");
        let copy = OwnedFd::from(held);
        assert_eq!(
            take_over(
                &dir,
                8,
                HeldInboxes(vec![("k".into(), copy, first)]),
                &mut Unpassed::default()
            ),
            (0, 0)
        );
        assert!(dir.join("8-k").exists(), "the new process's inbox is left alone");
        drop(new);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    /// Fills the inbox at `path` with datagrams that carry no connection (its worker drops
    /// them), until it takes no more.
    fn fill(path: &Path) {
        let filler = UnixDatagram::unbound().expect("socket");
        filler.set_nonblocking(true).expect("nonblocking");
        for _ in 0..100_000 {
            match filler.send_to(b"x", path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        panic!("{} never filled", path.display());
    }

    /// Reads what waits in `inbox`: the connections, in order (the fillers are dropped).
    fn read_all(inbox: &UnixDatagram) -> Vec<OwnedFd> {
        let mut got = Vec::new();
        for _ in 0..100_000 {
            match receive(inbox) {
                Ok(Some(fd)) => got.push(fd),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        got
    }

    /// The local ports of `clients`: what the server side of each sees as its peer.
    fn ports(clients: &[std::net::TcpStream]) -> Vec<u16> {
        clients
            .iter()
            .map(|c| c.local_addr().expect("addr").port())
            .collect()
    }

    fn peer_ports(connections: Vec<OwnedFd>) -> Vec<u16> {
        connections
            .into_iter()
            .map(|fd| std::net::TcpStream::from(fd).peer_addr().expect("peer").port())
            .collect()
    }

    /// Whether a client's connection is still open with nothing read (its server side neither
    /// closed nor reset).
    fn still_open(client: &std::net::TcpStream) -> bool {
        client.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let open = matches!(
            std::io::Read::read(&mut &*client, &mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        client.set_nonblocking(false).expect("blocking");
        open
    }

    #[test]
    fn a_connection_drained_while_every_inbox_is_full_is_passed_once_one_has_room() {
        // The primary takes connections from a worker that cannot accept (pid 1 here); the
        // other worker (this process) has a full inbox.
        let dir = tempfile_dir();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let key = listener_key(&listener.local_addr().expect("addr"));
        let me = std::process::id();
        let inbox_path = dir.join(format!("{me}-{key}"));
        let inbox = UnixDatagram::bind(&inbox_path).expect("inbox");
        inbox.set_nonblocking(true).expect("nonblocking");
        fill(&inbox_path);
        // Connected: waiting in the listener's queue.
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"))
            .collect();
        let listener = OwnedFd::from(listener);
        let mut unpassed = Unpassed::default();
        assert_eq!(drain_listener(&dir, 1, &listener, 64, &[me], &mut unpassed), 0);
        for (i, client) in clients.iter().enumerate() {
            assert!(still_open(client), "client {i}'s connection was closed");
        }
        // The inbox is read; later turns pass what waits, then take the rest.
        let mut got = read_all(&inbox);
        for _ in 0..4 {
            unpassed.pass_on(&dir, &[me]);
            drain_listener(&dir, 1, &listener, 64, &[me], &mut unpassed);
            got.extend(read_all(&inbox));
        }
        assert_eq!(unpassed.len(), 0, "nothing left waiting");
        assert_eq!(
            peer_ports(got),
            ports(&clients),
            "every connection passed, in order"
        );
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn draining_into_an_inbox_that_empties_slowly_holds_the_primary_for_a_moment_only() {
        // The other worker reads one connection from its full inbox every 20 ms (a slow
        // worker); 64 connections wait at the listener of one that cannot accept. The
        // primary's turn must stay well under its least stall margin (500 ms), past which its
        // watchdog is reset.
        let dir = tempfile_dir();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let key = listener_key(&listener.local_addr().expect("addr"));
        let me = std::process::id();
        let inbox_path = dir.join(format!("{me}-{key}"));
        let inbox = UnixDatagram::bind(&inbox_path).expect("inbox");
        fill(&inbox_path);
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"))
            .collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            std::thread::spawn(move || {
                // The slow worker's pace (load, not synchronisation), for at most 10 s.
                for _ in 0..500 {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let _ = receive(&inbox);
                }
                inbox
            })
        };
        let listener = OwnedFd::from(listener);
        let mut unpassed = Unpassed::default();
        let began = std::time::Instant::now();
        drain_listener(&dir, 1, &listener, 64, &[me], &mut unpassed);
        let held = began.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let inbox = reader.join().expect("reader");
        assert!(
            held < std::time::Duration::from_millis(250),
            "one turn's drain held the primary {held:?}"
        );
        drop((inbox, clients, unpassed));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn connections_no_worker_takes_at_a_take_over_wait_for_the_next_worker() {
        // Two workers: one is gone, the other (this process) ends too before any replacement
        // serves: what waited in the first one's inbox has no taker yet.
        let dir = tempfile_dir();
        let me = std::process::id();
        let path = dir.join(format!("{me}-80"));
        let _gone = UnixDatagram::bind(&path).expect("inbox");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients
                .push(std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"));
            let (conn, _) = listener.accept().expect("accept");
            send_to(&path, &conn).expect("passed");
        }
        let held = adopt(&dir, me, Some(&format!("80:{}", _gone.as_raw_fd())));
        let mut unpassed = Unpassed::default();
        assert_eq!(take_over(&dir, me, held, &mut unpassed), (3, 0));
        for (i, client) in clients.iter().enumerate() {
            assert!(still_open(client), "client {i}'s connection was closed");
        }
        // The replacement serves: they go to it, in order.
        let replacement = UnixDatagram::bind(dir.join("5-80")).expect("the replacement's inbox");
        replacement.set_nonblocking(true).expect("nonblocking");
        assert_eq!(unpassed.pass_on(&dir, &[5]), 3);
        assert_eq!(unpassed.len(), 0);
        assert_eq!(peer_ports(read_all(&replacement)), ports(&clients));
        drop((_gone, replacement));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn the_primary_copies_the_inboxes_a_worker_names_even_in_a_directory_with_a_space() {
        // This process plays the worker; its primary's directory has a space in its name.
        let base = tempfile_dir();
        let dir = base.join("run dir");
        std::fs::create_dir(&dir).expect("mkdir");
        let me = std::process::id();
        let inbox = UnixDatagram::bind(dir.join(format!("{me}-80"))).expect("inbox");
        let _other = UnixDatagram::bind(dir.join(format!("{me}-443"))).expect("another inbox");
        // The 443 entry names the 80 inbox's fd (not the socket bound at its name), the 22
        // entry an fd that is not open: only the 80 one is copied.
        let listed = format!("80:{0},443:{0},22:999999", inbox.as_raw_fd());
        let held = adopt(&dir, me, Some(&listed));
        let keys: Vec<&str> = held.0.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["80"], "{held:?}");
        // The copy is that socket: what is sent to the inbox's name is read from it.
        let sender = UnixDatagram::unbound().expect("socket");
        sender.send_to(b"C", dir.join(format!("{me}-80"))).expect("send");
        let mut buf = [0u8; 1];
        let got = nix::sys::socket::recv(
            held.0[0].1.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .expect("read from the copy");
        assert_eq!(&buf[..got], b"C");
        drop((held, inbox, _other));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(&base);
    }

    fn tempfile_dir() -> PathBuf {
        let template = std::env::temp_dir().join("gracenet-inbox-XXXXXX");
        nix::unistd::mkdtemp(&template).expect("mkdtemp")
    }
}
