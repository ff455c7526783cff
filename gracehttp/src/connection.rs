//! One accepted connection, served until it ends or the drain closes it without losing a
//! request: HTTP/2 gets GOAWAY at once (told by its preface, so one that never sent a request
//! gets it too); an HTTP/1 connection gets `Connection: close` on its next response, or is
//! closed once it has been idle for the idle grace. The drain wakes a connection only when
//! something happens to it (a request finishes, its idle grace ends), never on a timer tick.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gracenet::ConnectionGuard;
use gracenet::tokio::PeerAddr;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::drain::Drain;
use crate::peer_errors::{self, PeerErrors};
use crate::service::{BoxError, Handler};

/// What the connection's timers need to know, kept cheap for the hot path: counters and
/// flags, no clock reads. The connection's one timer compares the counters with what they
/// were when it was armed ("no byte since", "no request since").
pub(crate) struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Requests started plus requests finished.
    request_events: AtomicU64,
    /// Whether any request has started (its headers were read).
    any_request: AtomicBool,
    in_flight: AtomicUsize,
    /// Whether the connection speaks HTTP/2: its first bytes were the HTTP/2 preface, or a
    /// request arrived over HTTP/2.
    http2: AtomicBool,
    /// Whether any byte has arrived (the preface check is done on the first ones).
    seen_bytes: AtomicBool,
    /// Set once the drain has begun: from then on the last request finishing wakes the
    /// connection, which may then close.
    draining: AtomicBool,
    /// The last request in flight finished during the drain.
    request_done: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            reads: AtomicU64::new(0),
            request_events: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            seen_bytes: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            request_done: Notify::new(),
        })
    }

    /// Looks at a connection's first bytes: the HTTP/2 preface marks it as HTTP/2 before any
    /// request is read (a client that only sends PINGs must still get GOAWAY at a drain).
    fn first_bytes(&self, bytes: &[u8]) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        if !self.seen_bytes.swap(true, Ordering::Relaxed) {
            let n = bytes.len().min(PREFACE.len());
            if n > 0 && bytes[..n] == PREFACE[..n] {
                self.http2.store(true, Ordering::Relaxed);
            }
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// What the counters say now.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Ordering::Relaxed),
            request_events: self.request_events.load(Ordering::Relaxed),
        }
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
pub(crate) struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    _guard: ConnectionGuard,
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
            if !this.activity.seen_bytes.load(Ordering::Relaxed) {
                this.activity.first_bytes(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The per-connection hyper service: counts requests in flight, hands the handler the
/// [`Drain`], and once draining asks HTTP/1 clients to close with their next response.
#[derive(Clone)]
struct ConnService {
    handler: Handler,
    /// Given to every request (and, with the `axum` feature, as axum's `ConnectInfo`).
    peer: PeerAddr,
    activity: Arc<Activity>,
    drain: Drain,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_events.fetch_add(1, Ordering::Relaxed);
        // Draining, and idle now: the connection may close. HTTP/2: the connection's task is
        // woken whenever it goes idle or busy, which gets its writes polled sooner (measured:
        // 1.1x plain hyper's requests/s with it, 0.9x without, h2load -c64 -m10 on one core).
        let idle = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1;
        if idle && (self.0.draining.load(Ordering::Acquire) || self.0.http2.load(Ordering::Relaxed)) {
            self.0.request_done.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until the body has been sent
/// (or dropped): a streaming response is work the drain and the idle timers wait for.
pub(crate) struct TrackedBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    in_flight: Option<InFlight>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = BoxError;
    type Future = ConnFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.activity.any_request.store(true, Ordering::Relaxed);
        self.activity.request_events.fetch_add(1, Ordering::Relaxed);
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.activity.http2.store(true, Ordering::Relaxed);
        }
        if self.activity.in_flight.fetch_add(1, Ordering::AcqRel) == 0 && !http1 {
            // HTTP/2: wake the connection's task (see `InFlight::drop`).
            self.activity.request_done.notify_one();
        }
        let in_flight = InFlight(self.activity.clone());
        req.extensions_mut().insert(self.drain.clone());
        #[cfg(feature = "axum")]
        if let PeerAddr::Tcp(addr) = &self.peer {
            req.extensions_mut().insert(axum::extract::ConnectInfo(*addr));
        }
        req.extensions_mut().insert(self.peer.clone());
        ConnFuture {
            response: (self.handler)(req),
            in_flight: Some(in_flight),
            http1_drain: http1.then(|| self.drain.clone()),
        }
    }
}

/// A request being answered: the handler's future, then the response prepared for the
/// drain (`Connection: close` on HTTP/1 once draining) with its body tracked. A named future
/// rather than a boxed `async` block: one allocation fewer per request.
pub(crate) struct ConnFuture {
    response: crate::service::ResponseFuture,
    in_flight: Option<InFlight>,
    /// For HTTP/1 requests: the drain, checked when the response is ready.
    http1_drain: Option<Drain>,
}

impl Future for ConnFuture {
    type Output = Result<Response<TrackedBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = match this.response.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(r)) => r,
        };
        if this.http1_drain.as_ref().is_some_and(Drain::is_draining) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, in_flight })))
    }
}

/// How connections are served; shared by every connection of a server.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub builder: auto::Builder<TokioExecutor>,
    pub idle_grace: Duration,
    /// From the accept to the first request's headers.
    pub first_request_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
    /// What peers did wrong, reported together.
    pub peer_errors: Arc<PeerErrors>,
}

/// Serves one connection, accepted at `accepted`, to its end.
pub(crate) async fn serve<T>(
    io: T,
    accepted: tokio::time::Instant,
    peer: PeerAddr,
    guard: ConnectionGuard,
    handler: Handler,
    drain: Drain,
    config: ConnConfig,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TrackedIo {
        inner: io,
        activity: activity.clone(),
        _guard: guard,
    };
    let service = ConnService {
        handler,
        peer,
        activity: activity.clone(),
        drain: drain.clone(),
    };
    let conn = config
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let draining = drain.draining();
    tokio::pin!(draining);
    let mut drain_started = drain.is_draining();
    let mut closing = false;
    // Whether the timer was armed for the idle timeout (not the first-request deadline).
    let mut armed_idle = false;
    // One timer, armed lazily: it fires at the next moment something may have to happen, and
    // then the counters say whether it must (no per-request timer, no clock read per request).
    let timer = tokio::time::sleep_until(accepted + config.first_request_timeout);
    tokio::pin!(timer);
    let mut armed = activity.snapshot();
    // Far enough to mean "not armed".
    let never = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    if drain_started {
        arm(&mut timer, &mut armed, &activity, config.idle_grace);
    }
    loop {
        let mut fired = false;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                    config.peer_errors.record(&peer_errors::kind(&*e));
                }
                return;
            }
            _ = &mut draining, if !drain_started => {
                drain_started = true;
                activity.draining.store(true, Ordering::Release);
                if activity.http2.load(Ordering::Relaxed) {
                    // HTTP/2: GOAWAY now; the client finishes its streams and opens new ones
                    // elsewhere.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                // HTTP/1 (or nothing sent yet): closed between requests once nothing has come
                // for the idle grace, so a request already sent is answered (with
                // `Connection: close`), not reset.
                arm(&mut timer, &mut armed, &activity, config.idle_grace);
            }
            // Draining: the last request finished; the idle grace starts now.
            _ = activity.request_done.notified() => {
                if drain_started { arm(&mut timer, &mut armed, &activity, config.idle_grace); }
                continue;
            }
            _ = &mut timer => fired = true,
        }
        if !fired {
            continue;
        }
        let now = activity.snapshot();
        let quiet = now == armed; // no byte and no request since armed
        let no_request = now.request_events == armed.request_events; // PINGs do not count
        let busy = activity.busy();
        let http2 = activity.http2.load(Ordering::Relaxed);
        if closing {
            // HTTP/2 told to go (GOAWAY) and still here, with nothing in flight (every
            // response sent) and nothing since: closed. Any stream it opens now was refused by
            // the GOAWAY, which clients retry. (HTTP/1 is closed by hyper itself, between
            // requests: closing it from here could drop a request whose bytes are unread.)
            if http2 && no_request && !busy {
                tracing::debug!("closing a connection that stayed after it was told to go");
                return;
            }
            if http2 {
                arm(&mut timer, &mut armed, &activity, config.idle_grace);
            } else {
                timer.as_mut().reset(never());
            }
        } else if drain_started {
            if quiet && !busy {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            arm(&mut timer, &mut armed, &activity, config.idle_grace);
        } else if !activity.any_request.load(Ordering::Relaxed) {
            // Nothing but silence, a handshake, a preface or settings since the accept.
            tracing::debug!(
                "closing a connection that sent no request within {:?} of its accept",
                config.first_request_timeout
            );
            config
                .peer_errors
                .record("no request within the header read timeout");
            return;
        } else if !busy && no_request && armed_idle {
            // No request in flight or started for the idle timeout (PINGs do not count).
            tracing::debug!("closing a connection idle for {:?}", config.idle_timeout);
            conn.as_mut().graceful_shutdown();
            closing = true;
            arm(&mut timer, &mut armed, &activity, config.idle_grace);
        } else {
            arm(&mut timer, &mut armed, &activity, config.idle_timeout);
            armed_idle = true;
        }
    }
}

/// Arms the connection's timer `after` from now, remembering the counters.
fn arm(timer: &mut Pin<&mut tokio::time::Sleep>, armed: &mut Snapshot, activity: &Activity, after: Duration) {
    *armed = activity.snapshot();
    timer.as_mut().reset(tokio::time::Instant::now() + after);
}
