//! A listener whose accept loop ends when its generation stops accepting.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use std::os::fd::OwnedFd;

use super::Phase;
use super::shared::Shared;
use crate::cluster::transfer::Inbox;
use crate::socket::LocalAddr;
use crate::tokio::{PeerAddr, Stream, StreamListener};

/// A listener whose [`accept`](Self::accept) ends when its generation stops accepting.
/// Accept errors (out of fds, say) are logged and retried with a back-off, never returned:
/// they must not end serving.
pub struct GracefulListener {
    inner: StreamListener,
    addr: LocalAddr,
    phase: watch::Receiver<Phase>,
    _accepting: watch::Receiver<()>,
    shared: Arc<Shared>,
    /// Other processes accept from this very socket (no `SO_REUSEPORT` listener of its own):
    /// in a cluster, the balance applies.
    shared_queue: bool,
    /// A cluster worker's listener of its own: where heavier workers pass connections on to
    /// it (`cluster::transfer`), and the key of its address, which it passes its own on by.
    inbox: Option<(Inbox, String)>,
}

impl std::fmt::Debug for GracefulListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulListener")
            .field("inner", &self.inner)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GracefulListener {
    pub(super) fn new(
        inner: StreamListener,
        addr: LocalAddr,
        phase: watch::Receiver<Phase>,
        accepting: watch::Receiver<()>,
        shared: Arc<Shared>,
    ) -> GracefulListener {
        use std::os::fd::AsFd;
        let own_queue = socket2::SockRef::from(&inner.as_fd())
            .reuse_port()
            .unwrap_or(false);
        // Only a worker's listener of its own passes connections: with a shared queue the
        // lighter worker simply accepts the next one.
        let inbox = match (&addr, own_queue) {
            (LocalAddr::Inet(a), true) if crate::cluster::balance::worker_table().is_some() => {
                let key = crate::cluster::transfer::listener_key(a);
                Inbox::bind(&key).map(|inbox| (inbox, key))
            }
            _ => None,
        };
        GracefulListener {
            shared_queue: !own_queue,
            inbox,
            inner,
            addr,
            phase,
            _accepting: accepting,
            shared,
        }
    }

    /// The next connection, or `None` once the generation is stopping; then drop the
    /// listener so this process holds the socket no longer.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.accept_raw().await.map(|(stream, _)| stream)
    }

    /// Like [`accept`](Self::accept), with the peer: a TCP peer's address as `accept(2)`
    /// returned it (no extra system call per connection), a Unix peer's credentials.
    pub async fn accept_with_peer(&mut self) -> Option<(Stream, PeerAddr)> {
        let (stream, tcp_peer) = self.accept_raw().await?;
        let peer = match tcp_peer {
            Some(addr) => PeerAddr::Tcp(addr),
            None => stream.peer(),
        };
        Some((stream, peer))
    }

    async fn accept_raw(&mut self) -> Option<(Stream, Option<std::net::SocketAddr>)> {
        let mut backoff = Duration::from_millis(5);
        loop {
            if matches!(*self.phase.borrow_and_update(), Phase::Draining { .. }) {
                return self.passed_before_closing();
            }
            // Having waited, it may have seen the drain begin (and marked it seen): look again.
            if self.leave_to_lighter_workers().await
                && matches!(*self.phase.borrow_and_update(), Phase::Draining { .. })
            {
                return self.passed_before_closing();
            }
            tokio::select! {
                biased;
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return self.passed_before_closing();
                    }
                }
                passed = passed_here(&mut self.inbox) => {
                    if let Some(stream) = passed_stream(passed) {
                        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                        return Some((stream, None));
                    }
                }
                accepted = self.inner.accept_raw() => match accepted {
                    Ok(stream) => {
                        if self.passed_to_a_lighter_worker(&stream.0) {
                            continue;
                        }
                        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                        self.shared.cannot_accept.store(false, Ordering::Relaxed);
                        return Some(stream);
                    }
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                            self.shared.cannot_accept.store(true, Ordering::Relaxed);
                        }
                        crate::log::warn!(addr = %self.addr, error = %e, retry_in = ?backoff, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.phase.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
    }

    /// Shown (in logs, `local_addr`) as `addr`: for a socket bound at a temporary name and
    /// moved to its path (the control socket).
    pub(crate) fn shown_as(mut self, addr: LocalAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The address it listens on, as the kernel reports it (the real port for `:0`).
    pub fn local_addr(&self) -> &LocalAddr {
        &self.addr
    }
}

impl GracefulListener {
    /// In a cluster worker's listener of its own, passes `stream` (just accepted, nothing
    /// read) on to the lightest live worker if this one holds clearly more connections
    /// (`cluster::transfer`). Returns whether it did: if not, this worker serves it.
    fn passed_to_a_lighter_worker(&self, stream: &Stream) -> bool {
        use crate::cluster::balance;
        let (Some((_, key)), Stream::Tcp(tcp)) = (&self.inbox, stream) else {
            return false;
        };
        let Some((table, slot)) = balance::worker_table() else {
            return false;
        };
        let mine = self.shared.connections.receiver_count() as u64;
        // Below that, nothing is passed: nothing more to do per connection (the runtime's
        // stamp keeps this worker's entry current meanwhile).
        if mine < balance::PASS_FROM || *self.phase.borrow() != Phase::Serving {
            return false;
        }
        if mine < balance::PASS_IN_TURNS_FROM && table.turns_taken() {
            return false;
        }
        let now = balance::now_us();
        table.report(*slot, mine, None, now);
        let Some(lightest) = table.lightest_other(*slot, now) else {
            return false;
        };
        if !balance::should_pass(mine, lightest.open) {
            return false;
        }
        // A full inbox (`net.unix.max_dgram_qlen` datagrams, 10 by default) means that worker
        // has not caught up with what it was passed: it is not the lighter one for now, and
        // this one serves the connection at once. Waiting for room would stall this worker's
        // accepts (with both workers on one core, 64 clients opening a connection per
        // request got half the requests/s of one process).
        match crate::cluster::transfer::pass(tcp, lightest.pid, key) {
            Ok(()) => {
                // Until that worker reports, count it there: a burst is not all passed to one.
                table.count_passed(lightest.slot);
                true
            }
            Err(e) => {
                crate::log::debug!(to = lightest.pid, error = %e, "cluster: cannot pass a connection on: serving it here");
                false
            }
        }
    }

    /// The drain began: closes the inbox (a heavier worker now serves what it would pass
    /// here) and returns, one per call, the connections already passed here; then `None`.
    fn passed_before_closing(&mut self) -> Option<(Stream, Option<std::net::SocketAddr>)> {
        let (inbox, _) = self.inbox.as_mut()?;
        inbox.close();
        while let Some(fd) = inbox.take_left() {
            if let Some(stream) = passed_stream(fd) {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                return Some((stream, None));
            }
        }
        None
    }

    /// In a cluster, waits (at most `balance::MAX_DEFER`) while this worker holds clearly
    /// more connections than the lightest live worker, so that one takes the next. Returns
    /// whether it waited at all.
    async fn leave_to_lighter_workers(&mut self) -> bool {
        // Its own queue (a listener of its own): a connection left there waits for this
        // worker alone. Checked first: this runs before every accept.
        if !self.shared_queue {
            return false;
        }
        let Some((table, slot)) = crate::cluster::balance::worker_table() else {
            return false;
        };
        let started = tokio::time::Instant::now();
        let until = started + crate::cluster::balance::MAX_DEFER;
        for round in 0..64 {
            let now = crate::cluster::balance::now_us();
            let mine = self.shared.connections.receiver_count() as u64;
            if *self.phase.borrow() == Phase::Serving {
                table.report(*slot, mine, None, now);
            }
            let lightest = table.lightest_other(*slot, now).map(|l| l.open);
            if !crate::cluster::balance::should_defer(mine, lightest) || tokio::time::Instant::now() >= until
            {
                return round > 0;
            }
            // Looked at again as soon as one of this worker's own connections closes, else
            // a millisecond on (the others' counts change in shared memory, unseen).
            tokio::select! {
                _ = self.shared.closed.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
                _ = self.phase.changed() => return true,
            }
        }
        true
    }
}

/// The next connection passed to `inbox` (never, without one).
async fn passed_here(inbox: &mut Option<(Inbox, String)>) -> OwnedFd {
    match inbox {
        Some((inbox, _)) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// A connection another worker passed here, as a stream: a connected TCP socket, nothing
/// else.
fn passed_stream(fd: OwnedFd) -> Option<Stream> {
    use std::os::fd::AsFd;
    let family = crate::sys::socket_family(fd.as_fd()).ok()?;
    let sock = socket2::SockRef::from(&fd);
    if (family != libc::AF_INET && family != libc::AF_INET6)
        || sock.r#type().ok()? != socket2::Type::STREAM
        || sock.peer_addr().is_err()
    {
        return None;
    }
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true).ok()?;
    tokio::net::TcpStream::from_std(stream).ok().map(Stream::Tcp)
}

/// Errors that concern only the connection being accepted: retry at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
        )
    )
}
