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
use std::time::{Duration, Instant};

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

/// What the drain needs to know about a connection.
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read.
    last_read_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last request's start or end.
    last_request_ms: AtomicU64,
    /// Whether any request has started (its headers were read).
    any_request: AtomicBool,
    in_flight: AtomicUsize,
    /// Whether the connection speaks HTTP/2: its first bytes were the HTTP/2 preface, or a
    /// request arrived over HTTP/2.
    http2: AtomicBool,
    /// Whether any byte has arrived (the preface check is done on the first ones).
    seen_bytes: AtomicBool,
    /// Set once the drain has begun.
    draining: AtomicBool,
    /// The connection went from idle to busy or back: its loop re-arms its timers.
    request_done: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
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

    /// When the connection will have been idle for `grace`, counting from its last byte.
    fn idle_at(&self, grace: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)) + grace
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn request_event(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection will have had no request in flight for `timeout`.
    fn requests_idle_at(&self, timeout: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed)) + timeout
    }
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
            this.activity.touch();
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
        self.0.request_event();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The connection may be idle now: its loop arms the idle timeout (or, draining,
            // closes it).
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.activity.any_request.store(true, Ordering::Relaxed);
        self.activity.request_event();
        if self.activity.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // Busy now: the connection's idle timers stand down.
            self.activity.request_done.notify_one();
        }
        let in_flight = InFlight(self.activity.clone());
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.activity.http2.store(true, Ordering::Relaxed);
        }
        req.extensions_mut().insert(self.drain.clone());
        #[cfg(feature = "axum")]
        if let PeerAddr::Tcp(addr) = &self.peer {
            req.extensions_mut().insert(axum::extract::ConnectInfo(*addr));
        }
        req.extensions_mut().insert(self.peer.clone());
        let drain = self.drain.clone();
        let response = (self.handler)(req);
        Box::pin(async move {
            let mut response = response.await?;
            if http1 && drain.is_draining() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|inner| TrackedBody {
                inner,
                in_flight: Some(in_flight),
            }))
        })
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
    // When graceful_shutdown was called: a client that does not close after GOAWAY is closed
    // once nothing has been in flight for the idle grace.
    let mut closing_since = tokio::time::Instant::now();
    let first_request_by = accepted + config.first_request_timeout;
    loop {
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let started = activity.any_request.load(Ordering::Relaxed);
        let idle_at = tokio::time::Instant::from_std(activity.idle_at(config.idle_grace));
        let requests_idle_at = tokio::time::Instant::from_std(activity.requests_idle_at(config.idle_timeout));
        // When the last request ended (its response sent).
        let requests_grace_at = tokio::time::Instant::from_std(activity.requests_idle_at(Duration::ZERO));
        let waiting = drain_started && !closing;
        let http2 = activity.http2.load(Ordering::Relaxed);
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
            }
            // Idle became busy or busy idle: re-arm the timers.
            _ = activity.request_done.notified() => {}
            // Draining, no request in flight: close once no byte has come for the idle grace.
            _ = tokio::time::sleep_until(idle_at), if waiting && !busy => {}
            // Nothing but silence, a handshake, a preface or settings since the accept.
            _ = tokio::time::sleep_until(first_request_by), if !started && !closing => {
                if !activity.any_request.load(Ordering::Relaxed) {
                    tracing::debug!(
                        "closing a connection that sent no request within {:?} of its accept",
                        config.first_request_timeout
                    );
                    config.peer_errors.record("no request within the header read timeout");
                    return;
                }
            }
            // No request in flight for the idle timeout (PINGs do not count).
            _ = tokio::time::sleep_until(requests_idle_at), if started && !busy && !closing => {
                if activity.in_flight.load(Ordering::Acquire) == 0
                    && activity.requests_idle_at(config.idle_timeout) <= Instant::now()
                {
                    tracing::debug!("closing a connection idle for {:?}", config.idle_timeout);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    closing_since = tokio::time::Instant::now();
                }
            }
            // HTTP/2 told to go (GOAWAY) and still here, with nothing in flight (every
            // response sent) for the idle grace: closed. Any stream it opens now was refused
            // by the GOAWAY, which clients retry. (HTTP/1 is closed by hyper itself, between
            // requests: closing it from here could drop a request whose bytes are unread.)
            _ = tokio::time::sleep_until(closing_since.max(requests_grace_at) + config.idle_grace), if closing && !busy && http2 => {
                if activity.in_flight.load(Ordering::Acquire) == 0
                    && activity.requests_idle_at(config.idle_grace) <= Instant::now()
                {
                    tracing::debug!("closing a connection that stayed after it was told to go");
                    return;
                }
            }
        }
        if drain_started && !closing {
            // HTTP/2: GOAWAY now; the client finishes its streams and opens new ones elsewhere.
            // HTTP/1 (or nothing sent yet): close only between requests, after the idle grace,
            // so a request the client has already sent is answered (with `Connection: close`),
            // not reset.
            let idle =
                activity.in_flight.load(Ordering::Acquire) == 0 && activity.idle_for() >= config.idle_grace;
            if activity.http2.load(Ordering::Relaxed) || idle {
                conn.as_mut().graceful_shutdown();
                closing = true;
                closing_since = tokio::time::Instant::now();
            }
        }
    }
}
