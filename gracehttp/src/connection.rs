//! One accepted connection, served until it ends or the drain closes it without losing a
//! request: HTTP/2 gets GOAWAY at once (told by its preface, so one that never sent a request
//! gets it too); an HTTP/1 connection gets `Connection: close` on its next response, or is
//! closed once it has been idle for the idle grace. The drain wakes a connection only when
//! something happens to it (a request finishes, its idle grace ends), never on a timer tick.
//!
//! At a restart, a cleartext HTTP/1.1 connection is handed to the next process instead
//! (when the server hands connections over): a request in flight finishes here, its response
//! without `Connection: close`; then, once hyper waits for the next request's head, the
//! connection goes to the new process with the bytes hyper holds of that head (see
//! [`framing`]), and the new process serves its next request. One the new process does not
//! take is drained here as before.
//!
//! The hot path is a request on a keep-alive connection; it costs a few relaxed atomic
//! operations here and nothing else: the service is called with its own types (no boxed
//! future or body), no timer is armed or clock read per request (the connection's one timer
//! checks counters every quarter of the header read timeout, and not at all while the
//! connection is quiet), and nothing is registered with the drain or a waker while serving.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use gracenet::ConnectionGuard;
use gracenet::tokio::PeerAddr;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::drain::Drain;
use crate::peer_errors::{self, PeerErrors};
use crate::service::{BoxError, HttpService};
use crate::tls::Tls;

mod framing;
mod protocol;
mod transport;
mod watch;
use framing::Framing;
pub(crate) use protocol::Builders;
use protocol::{Cleartext, HttpConn, HttpConnection};
use transport::{Rewound, Transport};
use watch::{Decision, Watch};

/// What the connection's timers need to know, kept cheap for the hot path: counters and
/// flags, no clock reads. The connection's one timer compares the counters with what they
/// were when it was armed ("no byte since", "no request since").
pub(crate) struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Requests started plus requests finished.
    request_events: AtomicU64,
    /// `reads` when the last request finished. More reads since, with nothing in flight, are
    /// the next request's headers arriving (HTTP/1).
    reads_at_done: AtomicU64,
    /// Whether any request has started (its headers were read).
    any_request: AtomicBool,
    in_flight: AtomicU64,
    /// Whether the connection speaks HTTP/2 (told by ALPN or its first bytes, before any
    /// request: a client that only sends PINGs must still get GOAWAY at a drain).
    http2: AtomicBool,
    /// Set once the drain has begun: from then on the last request finishing wakes the
    /// connection, which may then close.
    draining: AtomicBool,
    /// The connection went idle or busy while its task listens (draining, or HTTP/2).
    went_idle: AtomicBool,
    /// The connection's task, registered while it listens for `went_idle`.
    waker: AtomicWaker,
    /// Set by the connection's task when its timer is parked (nothing happened for a whole
    /// check period); the next byte read then asks for the checks to resume.
    parked: AtomicBool,
    /// A byte arrived while parked.
    unparked: AtomicBool,
    /// How many bytes of a cleartext connection's first ones were peeked at and left in the
    /// socket while its protocol is told (a beginning of the HTTP/2 preface); 0 once told.
    peeked: AtomicU64,
    /// Whether the connection is handed to the next process at a restart: [`CANNOT`],
    /// [`CAN`] (a cleartext HTTP/1 connection of a server that hands connections over) or
    /// [`HANDING`] (it can, and the generation drains for a restart).
    hand_over: AtomicU8,
    /// Set by the transport while handing: hyper waits for the next request's head with
    /// nothing in flight, and nothing more is read (see [`TrackedIo`]).
    quiet: AtomicBool,
    /// Request heads read whole so far, while the connection's bytes are followed (0 once
    /// they are not): more than [`started`](Self::started) means a pipelined request waits.
    heads_read: AtomicU64,
    /// The transport's last write would have blocked: hyper still holds response bytes.
    /// Kept only for a connection that can be handed over.
    write_blocked: AtomicBool,
    /// When `quiet`: the bytes hyper holds unparsed, the next request head's beginning, and
    /// when its first bytes came (none yet: `None`).
    held: Mutex<(Vec<u8>, Option<std::time::Instant>)>,
    /// The generation's drain: a response asks an HTTP/1 client to close once it has begun.
    drain: Drain,
    /// The connection's socket, to ask the kernel whether bytes wait unread before closing
    /// an idle connection. Not owned: the transport owns it. Read only through
    /// [`socket`](Self::socket).
    fd: RawFd,
}

impl Activity {
    fn new(drain: Drain, fd: RawFd) -> Arc<Activity> {
        Arc::new(Activity {
            reads: AtomicU64::new(0),
            request_events: AtomicU64::new(0),
            reads_at_done: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            went_idle: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            parked: AtomicBool::new(false),
            unparked: AtomicBool::new(false),
            peeked: AtomicU64::new(0),
            hand_over: AtomicU8::new(CANNOT),
            quiet: AtomicBool::new(false),
            heads_read: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            held: Mutex::new((Vec::new(), None)),
            drain,
            fd,
        })
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Requests begun on this connection (each is counted once begun and once finished).
    fn started(&self) -> u64 {
        (self.request_events.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)) / 2
    }

    /// Whether the connection is to be handed to the next process: it can be, and this
    /// generation drains for a restart. Asked once draining; decided at the first ask once
    /// the drain's reason is known. Until then (a response prepared just as the drain begins)
    /// a restart is assumed: the response does not ask the client to close; if the drain is a
    /// stop, the connection is closed between requests at the idle grace instead.
    fn hands_over(&self) -> bool {
        match self.hand_over.load(Ordering::Relaxed) {
            HANDING => true,
            CAN => match self.drain.restarting() {
                Some(true) => {
                    self.hand_over.store(HANDING, Ordering::Relaxed);
                    true
                }
                Some(false) => {
                    self.hand_over.store(CANNOT, Ordering::Relaxed);
                    false
                }
                None => true,
            },
            _ => false,
        }
    }

    /// Whether a response may tell the client to stay while draining: the connection is to be
    /// handed over, and the next generation is still there to take it (after a second restart,
    /// the one this process handed to may have gone: then the client is told to reconnect,
    /// never left on a connection nobody takes).
    fn stays_through_restart(&self) -> bool {
        self.hands_over()
            && (self.drain.restarting() != Some(true) || self.drain.generation().can_hand_over())
    }

    /// Whether a request the client pipelined behind the ones begun has been read whole:
    /// known only while the connection's bytes are followed.
    fn pipelined(&self) -> bool {
        self.heads_read.load(Ordering::Relaxed) > self.started()
    }

    /// Notes the connection quiet for a hand-over, hyper holding `held` of the next request's
    /// head (begun at `since`): its task offers it to the next process.
    fn note_quiet(&self, held: Vec<u8>, since: Option<std::time::Instant>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = (held, since);
        self.quiet.store(true, Ordering::Relaxed);
    }

    /// Whether the peer has sent bytes this process has not read yet (see [`unread_bytes`]),
    /// beyond the beginning of an HTTP/2 preface peeked at while the protocol is told: that
    /// cannot be a request yet, and must not hold a drain.
    fn unread_bytes(&self) -> bool {
        unread_bytes(self.socket()) > self.peeked.load(Ordering::Relaxed)
    }

    /// The connection's socket, borrowed.
    ///
    /// Called only while the transport that owns the socket lives: from the connection's
    /// [`Watch`], `serve`'s close and `serve`'s hand-over offer (all inside `serve`'s loop,
    /// while `conn`, which owns the transport, is pinned in `serve`'s frame and not yet
    /// dropped), and from a
    /// cleartext connection's shutdown, which holds the transport itself. No other holder of
    /// the `Activity` (the service, a request in flight) calls it.
    fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is the socket of the transport `serve` was given, open for as long as
        // that transport lives; every caller (see above) runs while it does, and the borrow
        // ends with the call that takes it.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// Wakes the connection's task (registered only while it listens).
    fn wake(&self) {
        self.went_idle.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// What the counters say now.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Ordering::Relaxed),
            request_events: self.request_events.load(Ordering::Relaxed),
        }
    }
}

/// [`Activity::hand_over`]: not handed over (TLS, HTTP/2, a server that does not hand
/// connections over, a connection whose bytes could not be followed or that the next process
/// did not take).
const CANNOT: u8 = 0;
/// [`Activity::hand_over`]: handed over if the generation drains for a restart.
const CAN: u8 = 1;
/// [`Activity::hand_over`]: being handed over.
const HANDING: u8 = 2;

/// Adds one to `counter` and returns what it was. An HTTP/1 connection's counters have one
/// writer, the connection's task (hyper serves its requests and sends their bodies there): a
/// load and a store, no locked instruction. HTTP/2 streams are served on tasks of their own,
/// so theirs are read-modify-writes.
fn add_one(counter: &AtomicU64, one_writer: bool) -> u64 {
    if one_writer {
        let was = counter.load(Ordering::Relaxed);
        counter.store(was + 1, Ordering::Relaxed);
        was
    } else {
        counter.fetch_add(1, Ordering::AcqRel)
    }
}

/// Takes one from `counter` and returns what it was; as [`add_one`].
fn take_one(counter: &AtomicU64, one_writer: bool) -> u64 {
    if one_writer {
        let was = counter.load(Ordering::Relaxed);
        counter.store(was.wrapping_sub(1), Ordering::Relaxed);
        was
    } else {
        counter.fetch_sub(1, Ordering::AcqRel)
    }
}

/// The counters when the connection's timer was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    reads: u64,
    request_events: u64,
}

/// The connection's transport, noting when bytes arrive. It also holds the generation's
/// connection guard, so the drain waits for the connection even after an upgrade hands the
/// transport to the application (a WebSocket).
///
/// For a connection that can be handed over, it follows the requests in the bytes it gives
/// hyper; once handing, it gives hyper no more bytes when hyper asks for the next request's
/// head with nothing in flight, and tells the connection's task it is quiet.
pub(crate) struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    _guard: ConnectionGuard,
    /// Request boundaries, for a connection that can be handed over.
    framing: Option<Framing>,
}

impl<T> TrackedIo<T> {
    /// Whether hyper has gone quiet for a hand-over (see the type's docs); notes so.
    #[cold]
    fn quiet_for_hand_over(&self) -> bool {
        let activity = &self.activity;
        let Some(framing) = &self.framing else {
            return false;
        };
        if activity.hand_over.load(Ordering::Relaxed) != HANDING || activity.busy() {
            return false;
        }
        let Some(held) = framing.partial_head(activity.started()) else {
            return false;
        };
        activity.note_quiet(held.to_vec(), framing.head_since());
        true
    }

    /// Follows `bytes`, just given to hyper; stops following (for good) what cannot be.
    fn follow(&mut self, bytes: &[u8]) {
        if let Some(framing) = &mut self.framing {
            framing.delivered(bytes);
            if framing.lost() {
                self.framing = None;
                self.activity.hand_over.store(CANNOT, Ordering::Relaxed);
                self.activity.heads_read.store(0, Ordering::Relaxed);
            } else {
                self.activity.heads_read.store(framing.heads(), Ordering::Relaxed);
            }
        }
    }

    /// Notes whether a write would block, for a connection that can be handed over.
    #[inline]
    fn note_write<R>(&self, r: &Poll<R>) {
        if self.framing.is_some() {
            self.activity
                .write_blocked
                .store(r.is_pending(), Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.framing.is_some() && this.quiet_for_hand_over() {
            // Handed over from here, unless the next process does not take it: then the
            // connection's task polls hyper again, which asks again.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if this.framing.is_some() {
                this.follow(&buf.filled()[before..]);
            }
            // Only this task reads the transport: a load and a store, no locked instruction.
            let reads = this.activity.reads.load(Ordering::Relaxed);
            this.activity.reads.store(reads + 1, Ordering::Relaxed);
            if this.activity.parked.load(Ordering::Relaxed) {
                this.activity.parked.store(false, Ordering::Relaxed);
                this.activity.unparked.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&r);
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads and drops what waits unread in `socket` (at most 64 KiB, never waiting), before it
/// is closed.
fn discard_unread(socket: BorrowedFd<'_>) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which it borrows for the
        // call; `socket` is open for the borrow's life (a `BorrowedFd`). MSG_DONTWAIT makes
        // the call return at once whatever the socket's mode.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 || (n as usize) < buf.len() {
            return;
        }
    }
}

/// How many bytes wait unread in `socket`. The activity counters only see what was read: a
/// request can sit in the socket while the connection's task has not been polled (a starved
/// machine), and closing an "idle" connection then would lose it.
fn unread_bytes(socket: BorrowedFd<'_>) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`; `socket` is
    // open for the borrow's life (a `BorrowedFd`). On an error nothing is written and `n`
    // stays 0.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { u64::try_from(n).unwrap_or(0) } else { 0 }
}

/// The per-connection hyper service: counts requests in flight, hands the service the
/// [`Drain`] and the peer's address when the server asks for request extensions, and once
/// draining asks HTTP/1 clients to close with their next response. Generic over the
/// application's service, so its future and body are not boxed.
struct ConnService<S> {
    /// The application's service as given, never polled: where fresh instances come from.
    template: S,
    /// The connection's instance of the application's service. hyper calls `call` from the
    /// connection's task, one request at a time, so each request borrows it in turn: made
    /// ready, then called, as tower asks, without a clone per request. An instance that is
    /// not ready goes with its request (its `poll_ready` may hold a place in a queue that only
    /// it can take, as tower's `ConcurrencyLimit` does) and a fresh one takes its place.
    service: RefCell<S>,
    /// Given to every request (and, with the `axum` feature, as axum's `ConnectInfo`) when
    /// `extensions` is set.
    peer: PeerAddr,
    /// Whether requests get the drain and the peer's address in their extensions.
    extensions: bool,
    /// The connection's counters, and the drain (given to requests with `extensions`).
    activity: Arc<Activity>,
}

/// A request counted in flight, until dropped.
struct InFlight {
    activity: Arc<Activity>,
    /// HTTP/1: the counters have one writer (see [`add_one`]).
    http1: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        add_one(&activity.request_events, self.http1);
        activity
            .reads_at_done
            .store(activity.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        // Draining, and idle now: the connection may close. HTTP/2: the connection's task is
        // woken whenever it goes idle or busy, which gets its writes polled sooner (measured:
        // 1.1x plain hyper's requests/s with it, 0.9x without, h2load -c64 -m10 on one core).
        let idle = take_one(&activity.in_flight, self.http1) == 1;
        if idle && (activity.draining.load(Ordering::Acquire) || activity.http2.load(Ordering::Relaxed)) {
            activity.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until the body has been
    /// sent (or dropped): a streaming response is work the drain and the idle timers wait for.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                *this.in_flight = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                *this.in_flight = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S: HttpService> hyper::service::Service<Request<Incoming>> for ConnService<S> {
    type Response = Response<TrackedBody<S::Body>>;
    type Error = BoxError;
    type Future = ConnFuture<S>;

    // The bookkeeping, the same for every service type, is out of line in `begin`; what is
    // left is the application's call, inlined into hyper's.
    #[inline]
    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if self.extensions {
            give_extensions(&self.activity, &self.peer, &mut req);
        }
        let in_flight = begin(&self.activity, http1);
        // Made ready, then called, as tower's `Oneshot` does. A service that is ready at once
        // (an axum `Router`, a hyper service) is called at once: the future then holds no
        // request. One that is not goes with the request, which polls it again with its
        // task's waker; one that failed is dropped. Either way the connection goes on with a
        // fresh clone.
        let call = match self.service.try_borrow_mut() {
            Ok(mut service) => {
                let ready = tower_service::Service::poll_ready(
                    &mut *service,
                    &mut Context::from_waker(Waker::noop()),
                );
                match ready {
                    Poll::Ready(Ok(())) => ServiceCall::Called {
                        future: tower_service::Service::call(&mut *service, req),
                    },
                    Poll::Ready(Err(e)) => {
                        *service = self.template.clone();
                        failed::<S>(e)
                    }
                    Poll::Pending => waiting(std::mem::replace(&mut *service, self.template.clone()), req),
                }
            }
            // Not reached: hyper does not call a connection's service from within its call.
            Err(_) => ServiceCall::Failed {
                error: Some("the connection's service was called while it was being called".into()),
            },
        };
        ConnFuture {
            call,
            in_flight: Some(in_flight),
            http1,
        }
    }
}

/// A service not ready when its request came: that instance and the request are boxed for
/// the request's future to poll again (the rare path, kept out of line).
#[cold]
#[inline(never)]
fn waiting<S: HttpService>(service: S, req: Request<Incoming>) -> ServiceCall<S> {
    ServiceCall::Waiting {
        waiting: Some(Box::new((service, req))),
    }
}

/// A service whose `poll_ready` failed (rare, out of line as [`waiting`]).
#[cold]
#[inline(never)]
fn failed<S: HttpService>(error: S::Error) -> ServiceCall<S> {
    ServiceCall::Failed {
        error: Some(error.into()),
    }
}

/// A request's start, for every service type alike: counts it in flight (HTTP/1 if `http1`),
/// and served by this process (a relaxed add: a cluster's `status` and recycling read it).
#[inline(never)]
fn begin(activity: &Arc<Activity>, http1: bool) -> InFlight {
    activity.drain.generation().count_requests(1);
    activity.any_request.store(true, Ordering::Relaxed);
    if !http1 {
        activity.http2.store(true, Ordering::Relaxed);
    }
    add_one(&activity.request_events, http1);
    if add_one(&activity.in_flight, http1) == 0 && !http1 {
        // HTTP/2: wake the connection's task (see `InFlight::drop`).
        activity.wake();
    }
    InFlight {
        activity: activity.clone(),
        http1,
    }
}

/// Gives a request the extensions the server was asked for: the drain and the peer's address
/// (with the `axum` feature, also as axum's `ConnectInfo`).
#[inline(never)]
fn give_extensions(activity: &Activity, peer: &PeerAddr, req: &mut Request<Incoming>) {
    req.extensions_mut().insert(activity.drain.clone());
    #[cfg(feature = "axum")]
    if let PeerAddr::Tcp(addr) = peer {
        req.extensions_mut().insert(axum::extract::ConnectInfo(*addr));
    }
    req.extensions_mut().insert(peer.clone());
}

pin_project_lite::pin_project! {
    /// Where a request is in the application's service.
    #[project = ServiceCallProj]
    enum ServiceCall<S: HttpService> {
        // Not ready when the request came: the service and the request, boxed (the rare
        // path) to keep the common future small.
        Waiting { waiting: Option<Box<(S, Request<Incoming>)>> },
        // `poll_ready` failed.
        Failed { error: Option<BoxError> },
        // Called.
        Called { #[pin] future: S::Future },
    }
}

pin_project_lite::pin_project! {
    /// A request being answered: the service's future, then the response prepared for the
    /// drain (`Connection: close` on HTTP/1 once draining) with its body tracked.
    pub(crate) struct ConnFuture<S: HttpService> {
        #[pin]
        call: ServiceCall<S>,
        in_flight: Option<InFlight>,
        http1: bool,
    }
}

impl<S: HttpService> Future for ConnFuture<S> {
    type Output = Result<Response<TrackedBody<S::Body>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.call.as_mut().project() {
                // The common case first, the response handed on as it comes.
                ServiceCallProj::Called { future } => {
                    return match future.poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(response)) => {
                            Poll::Ready(Ok(prepare(response, this.in_flight.take(), *this.http1)))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                    };
                }
                ServiceCallProj::Waiting { waiting } => {
                    let Some((service, _)) = waiting.as_deref_mut() else {
                        return Poll::Ready(Err("request polled after it was called".into()));
                    };
                    match tower_service::Service::poll_ready(service, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(Ok(())) => {}
                    }
                    let Some((mut service, request)) = waiting.take().map(|b| *b) else {
                        return Poll::Ready(Err("request polled after it was called".into()));
                    };
                    let future = tower_service::Service::call(&mut service, request);
                    this.call.set(ServiceCall::Called { future });
                }
                ServiceCallProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "request polled after it failed".into())));
                }
            }
        }
    }
}

/// The application's response as sent: `Connection: close` on HTTP/1 once draining (unless
/// the connection is to be handed to the next process, or a request the client pipelined
/// behind this one has been read: that one is answered too, and the last says it), and its
/// body tracked so the request stays in flight until the body is sent.
#[inline]
fn prepare<B>(response: Response<B>, in_flight: Option<InFlight>, http1: bool) -> Response<TrackedBody<B>> {
    let (mut parts, inner) = response.into_parts();
    // Not on a connection handed to the next process: its client stays.
    if http1
        && in_flight.as_ref().is_some_and(|f| {
            f.activity.drain.is_draining() && !f.activity.stays_through_restart() && !f.activity.pipelined()
        })
    {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Response::from_parts(parts, TrackedBody { inner, in_flight })
}

/// How connections are served; shared by every connection of a server.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub builders: Builders,
    pub idle_grace: Duration,
    /// From the accept to the first request's headers; and for any later request's headers
    /// (HTTP/1), from their first byte.
    pub header_read_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
    /// Whether requests get the drain and the peer's address in their extensions.
    pub request_extensions: bool,
    /// What peers did wrong, reported together.
    pub peer_errors: Arc<PeerErrors>,
    /// Whether cleartext HTTP/1 connections are handed to the next process at a restart.
    pub hand_over: bool,
}

/// What one site's connections share: its TLS configuration, the drain, the configuration.
pub(crate) struct SiteContext {
    pub tls: Option<Tls>,
    pub drain: Drain,
    pub config: ConnConfig,
    /// What goes with each connection handed to the next process: which site it is
    /// ([`hand_over_state`]).
    pub hand_over_state: Vec<u8>,
}

/// What a connection of the site named `key` (its name, or its address) is handed over with:
/// the next process serves it on the site of the same key.
pub(crate) fn hand_over_state(key: &str) -> Vec<u8> {
    format!("{HAND_OVER_TAG}{key}").into_bytes()
}

/// The site key in what a handed-over connection came with, if gracehttp handed it.
pub(crate) fn handed_site_key(state: &[u8]) -> Option<&str> {
    std::str::from_utf8(state.strip_prefix(HAND_OVER_TAG.as_bytes())?).ok()
}

/// Starts what a connection is handed over with: the next process checks it is gracehttp's
/// HTTP/1.1 connection (and of this version of the hand-over).
const HAND_OVER_TAG: &str = "gracehttp http/1.1 v1 site=";

/// How long a connection handed over had already waited, as the process that handed it
/// counted: the next process's clocks go on from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// For a request's headers: no request yet since the accept, or the next one's head
    /// begun. The header read timeout goes on.
    Head(Duration),
    /// Between requests, with no byte of the next one: the idle timeout goes on.
    Idle(Duration),
}

/// What a quiet connection has waited: for its first request since `accepted`, for the head
/// whose first bytes came at the time held with them, or idle since `active_at` (the watch's
/// last sight of a request, at most one check period late: the idle time is counted long,
/// never short).
fn waited_so_far(activity: &Activity, accepted: Instant, active_at: Instant) -> Waited {
    let now = Instant::now();
    let head_since = activity.held.lock().unwrap_or_else(|p| p.into_inner()).1;
    if !activity.any_request.load(Ordering::Relaxed) {
        Waited::Head(now.saturating_duration_since(accepted))
    } else if let Some(since) = head_since {
        Waited::Head(now.into_std().saturating_duration_since(since))
    } else {
        Waited::Idle(now.saturating_duration_since(active_at))
    }
}

/// The site's hand-over state with what the connection `waited`, on a line of its own.
fn handed_state(site: &[u8], waited: Waited) -> Vec<u8> {
    let (what, waited) = match waited {
        Waited::Head(d) => ("head_ms", d),
        Waited::Idle(d) => ("idle_ms", d),
    };
    let mut state = site.to_vec();
    state.extend_from_slice(format!("\n{what}={}", waited.as_millis()).as_bytes());
    state
}

/// Splits what a handed connection came with into its site's state and what it waited
/// (`None` from a version that did not say, or a line this one does not read).
pub(crate) fn split_handed(state: &[u8]) -> (&[u8], Option<Waited>) {
    let parsed = state.iter().rposition(|&b| b == b'\n').and_then(|i| {
        let line = std::str::from_utf8(&state[i + 1..]).ok()?;
        let (what, ms) = line.split_once('=')?;
        let waited = Duration::from_millis(ms.parse().ok()?);
        let waited = match what {
            "head_ms" => Waited::Head(waited),
            "idle_ms" => Waited::Idle(waited),
            _ => return None,
        };
        Some((&state[..i], waited))
    });
    match parsed {
        Some((site, waited)) => (site, Some(waited)),
        None => (state, None),
    }
}

/// A connection the previous process handed over, to serve as if accepted.
pub(crate) struct Handed {
    pub stream: gracenet::tokio::Stream,
    /// What the previous process had read of the next request: hyper reads it first.
    pub unread: Vec<u8>,
    pub peer: PeerAddr,
    /// When it was taken: the clocks the previous process ran (`waited`) go on from here.
    pub at: Instant,
    /// What it had already waited, as the previous process counted it.
    pub waited: Option<Waited>,
    /// Keeps the generation's drain waiting for this connection.
    pub guard: ConnectionGuard,
}

/// A connection just accepted, with what it holds.
pub(crate) struct Accepted {
    pub stream: gracenet::tokio::Stream,
    pub peer: PeerAddr,
    /// When it was accepted: the first request's deadline counts from here.
    pub at: Instant,
    /// Keeps the generation's drain waiting for this connection.
    pub guard: ConnectionGuard,
    /// Its place under the connection limit, if there is one.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Accepted {
    /// The transport, where it came from, and its place under the connection limit.
    fn split(self) -> (gracenet::tokio::Stream, Origin, Option<OwnedSemaphorePermit>) {
        let origin = Origin {
            fd: self.stream.as_fd().as_raw_fd(),
            at: self.at,
            peer: self.peer,
            guard: self.guard,
            handed: false,
            waited: None,
        };
        (self.stream, origin, self.permit)
    }
}

/// Serves an accepted connection of a cleartext site with `service`: HTTP/2 if its first
/// bytes are the HTTP/2 preface, else HTTP/1.1. (Its own function, not a branch of the TLS
/// one: a task is as large as its future, and an idle connection should not carry room for a
/// TLS session it does not have.)
pub(crate) async fn serve_plain<S: HttpService>(service: S, accepted: Accepted, site: Arc<SiteContext>) {
    let (stream, origin, permit) = accepted.split();
    let config = &site.config;
    serve(stream, origin, service, &site, |io, service| {
        Cleartext::new(io, service, &config.builders)
    })
    .await;
    drop(permit);
}

/// Serves a connection the previous process handed over, on the site it came from: HTTP/1.1
/// (only such connections are handed), the bytes the previous process had read first. One
/// that had sent no request, and of which nothing was read, is served as if just accepted:
/// its protocol is told from its first bytes (an HTTP/2 client may be about to speak).
pub(crate) async fn serve_handed<S: HttpService>(service: S, handed: Handed, site: Arc<SiteContext>) {
    let fresh = handed.unread.is_empty() && matches!(handed.waited, Some(Waited::Head(_)));
    let origin = Origin {
        fd: handed.stream.as_fd().as_raw_fd(),
        at: handed.at,
        peer: handed.peer,
        guard: handed.guard,
        handed: true,
        waited: handed.waited,
    };
    let builders = &site.config.builders;
    if fresh {
        serve(handed.stream, origin, service, &site, |io, service| {
            Cleartext::new(io, service, builders)
        })
        .await;
        return;
    }
    let transport = if handed.unread.is_empty() {
        Transport::Plain(handed.stream)
    } else {
        Transport::Rewound(Box::new(Rewound::new(handed.unread, handed.stream)))
    };
    serve(transport, origin, service, &site, |io, service| {
        HttpConn::new(false, io, service, builders)
    })
    .await;
}

/// Serves an accepted connection of a TLS site with `service`: the handshake first, counted
/// against the first request's deadline.
pub(crate) async fn serve_tls<S: HttpService>(
    service: S,
    accepted: Accepted,
    site: Arc<SiteContext>,
    tls: Tls,
) {
    let (stream, origin, permit) = accepted.split();
    let config = &site.config;
    let deadline = origin.at + config.header_read_timeout;
    let handshake = async {
        if tls.chooses_by_client() {
            // The ClientHello first: its cipher suites choose the configuration.
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let chosen = tls.for_client(start.client_hello().cipher_suites()).clone();
            start.into_stream(chosen).await
        } else {
            tokio_rustls::TlsAcceptor::from(tls.config.clone())
                .accept(stream)
                .await
        }
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => {
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve(
                Transport::Tls(Box::new(tls)),
                origin,
                service,
                &site,
                |io, service| HttpConn::new(http2, io, service, &config.builders),
            )
            .await;
        }
        Ok(Err(e)) => {
            crate::log::debug!(error = %e, "TLS handshake failed");
            config.peer_errors.record("TLS handshake failed");
        }
        Err(_) => {
            crate::log::debug!(
                timeout = ?config.header_read_timeout,
                "TLS handshake not finished within the header read timeout"
            );
            config
                .peer_errors
                .record("TLS handshake not finished within the header read timeout");
        }
    }
    drop(permit);
}

/// Where a connection came from, besides its transport.
struct Origin {
    /// Its socket (under TLS, the TCP socket).
    fd: RawFd,
    /// When it was accepted: the first request's deadline counts from here.
    at: Instant,
    peer: PeerAddr,
    /// Keeps the generation's drain waiting for this connection.
    guard: ConnectionGuard,
    /// Handed over by the previous process, between two requests.
    handed: bool,
    /// What a handed connection had already waited, as the previous process counted it
    /// (`None` from a version that did not say).
    waited: Option<Waited>,
}

/// How [`serve`]'s polling ends.
enum Served {
    /// The connection is done.
    Done,
    /// Quiet between requests while handing: to be handed over.
    Quiet,
}

/// Serves one connection to its end, with the HTTP connection `speak` makes of its transport
/// and service; or until it is handed to the next process.
async fn serve<T, S, C>(
    io: T,
    origin: Origin,
    service: S,
    site: &SiteContext,
    speak: impl FnOnce(TrackedIo<T>, ConnService<S>) -> C,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
    C: HttpConnection,
{
    let (drain, config) = (&site.drain, &site.config);
    let Origin {
        fd,
        mut at,
        peer,
        guard,
        handed,
        waited,
    } = origin;
    let activity = Activity::new(drain.clone(), fd);
    if config.hand_over && site.tls.is_none() {
        activity.hand_over.store(CAN, Ordering::Relaxed);
    }
    let mut idle_since = Instant::now();
    if handed {
        // The clocks the previous process ran go on: a hand-over (however many, however
        // often) never gives a connection more time than it had.
        match waited {
            // A head begun (or no request yet since the accept): it is held to its header
            // read deadline, counted from when the previous process saw it begin.
            Some(Waited::Head(waited)) => at = at.checked_sub(waited).unwrap_or(at),
            // Between requests, as any keep-alive connection: the idle timeout applies, not
            // the first request's deadline.
            Some(Waited::Idle(waited)) => {
                idle_since = idle_since.checked_sub(waited).unwrap_or(idle_since);
                activity.any_request.store(true, Ordering::Relaxed);
            }
            None => activity.any_request.store(true, Ordering::Relaxed),
        }
    }
    let io = TrackedIo {
        inner: io,
        activity: activity.clone(),
        _guard: guard,
        framing: (handed && config.hand_over).then(Framing::new),
    };
    let service = ConnService {
        service: RefCell::new(service.clone()),
        template: service,
        peer,
        extensions: config.request_extensions,
        activity: activity.clone(),
    };
    let conn = speak(io, service);
    tokio::pin!(conn);
    let draining = drain.draining();
    tokio::pin!(draining);
    let timer = tokio::time::sleep_until(at + config.header_read_timeout);
    tokio::pin!(timer);
    let mut watch = Watch::new(
        activity.clone(),
        config,
        idle_since,
        at + config.header_read_timeout,
    );
    loop {
        let served = std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    if let Err(e) = result {
                        crate::log::debug!(error = %e, "connection ended");
                        config.peer_errors.record(&peer_errors::kind(&*e));
                    }
                    return Poll::Ready(Served::Done);
                }
                if activity.quiet.load(Ordering::Relaxed) && !activity.write_blocked.load(Ordering::Relaxed) {
                    return Poll::Ready(Served::Quiet);
                }
                match watch.poll_decide(cx, draining.as_mut(), timer.as_mut()) {
                    Decision::Wait => return Poll::Pending,
                    // Polled again at once: hyper sends GOAWAY or closes between requests.
                    Decision::Shutdown => conn.as_mut().graceful_shutdown(),
                    // Polled again at once: hyper goes quiet between requests.
                    Decision::HandOver => {}
                    Decision::Close => {
                        // Bytes left unread would turn the close into a reset, which can
                        // destroy what was sent before it (a GOAWAY) and reads as a crash to
                        // the peer.
                        discard_unread(activity.socket());
                        return Poll::Ready(Served::Done);
                    }
                }
            }
        })
        .await;
        match served {
            Served::Done => return,
            Served::Quiet => {
                let waited = waited_so_far(&activity, at, watch.active_at());
                if offer(&activity, &handed_state(&site.hand_over_state, waited)).await {
                    // The next process has it: dropping hyper's connection closes only this
                    // process's fd; the client sees nothing.
                    return;
                }
                // Still ours: served as before, and drained as before.
                activity.hand_over.store(CANNOT, Ordering::Relaxed);
                activity.quiet.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// Offers the quiet connection to the next process, with the bytes hyper holds of its next
/// request; whether the next process took it.
async fn offer(activity: &Activity, state: &[u8]) -> bool {
    let (held, _) = std::mem::take(&mut *activity.held.lock().unwrap_or_else(|p| p.into_inner()));
    // The socket hyper's transport owns is lent to the offer: the next process gets its own
    // fd, and this one closes with hyper's connection once the next process has it.
    match activity
        .drain
        .generation()
        .hand_over(activity.socket(), &held, state)
        .await
    {
        Ok(()) => true,
        Err(e) => {
            crate::log::debug!(error = %e, "connection not handed over: it stays here");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use super::unread_bytes;

    #[test]
    fn a_handed_connection_carries_what_it_waited_and_its_site() {
        use super::{Waited, hand_over_state, handed_site_key, handed_state, split_handed};
        use std::time::Duration;
        for key in ["127.0.0.1:8080", "unix:/run/a\nb", "public"] {
            let site = hand_over_state(key);
            for waited in [
                Waited::Head(Duration::from_millis(1500)),
                Waited::Idle(Duration::from_millis(0)),
            ] {
                let state = handed_state(&site, waited);
                assert_eq!(split_handed(&state), (&site[..], Some(waited)), "{key:?}");
                assert_eq!(handed_site_key(split_handed(&state).0), Some(key));
            }
            // From a version that did not say: the site, nothing waited.
            assert_eq!(split_handed(&site), (&site[..], None), "{key:?}");
        }
        // A line this version does not read is part of the site's state (no such site).
        assert_eq!(split_handed(b"x\nnext_ms=5").1, None);
        assert_eq!(split_handed(b"x\nhead_ms=-5").1, None);
    }

    #[test]
    fn bytes_waiting_in_the_socket_are_seen_and_gone_once_read() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        assert_eq!(unread_bytes(b.as_fd()), 0, "nothing sent yet");
        a.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        assert_eq!(unread_bytes(b.as_fd()), 16, "a request waits unread");
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).expect("read");
        assert_eq!(n, 16);
        assert_eq!(unread_bytes(b.as_fd()), 0, "read: nothing waits");
    }
}
