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
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::drain::Drain;
use crate::service::{BoxError, Handler};

/// What the drain needs to know about a connection.
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read.
    last_read_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether the connection speaks HTTP/2: its first bytes were the HTTP/2 preface, or a
    /// request arrived over HTTP/2.
    http2: AtomicBool,
    /// Whether any byte has arrived (the preface check is done on the first ones).
    seen_bytes: AtomicBool,
    /// Set once the drain has begun: from then on a finished request wakes the connection.
    draining: AtomicBool,
    /// A request finished during the drain.
    request_done: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
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
    activity: Arc<Activity>,
    drain: Drain,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.0.draining.load(Ordering::Acquire) {
            self.0.request_done.notify_one();
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<UnsyncBoxBody<Bytes, BoxError>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(self.activity.clone());
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.activity.http2.store(true, Ordering::Relaxed);
        }
        req.extensions_mut().insert(self.drain.clone());
        let drain = self.drain.clone();
        let response = (self.handler)(req);
        Box::pin(async move {
            let mut response = response.await?;
            if http1 && drain.is_draining() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok(response)
        })
    }
}

/// How connections are served; shared by every connection of a server.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub builder: auto::Builder<TokioExecutor>,
    pub idle_grace: Duration,
}

/// Serves one connection to its end.
pub(crate) async fn serve<T>(
    io: T,
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
    loop {
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let idle_at = tokio::time::Instant::from_std(activity.idle_at(config.idle_grace));
        let waiting = drain_started && !closing;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = &mut draining, if !drain_started => {
                drain_started = true;
                activity.draining.store(true, Ordering::Release);
            }
            // A request finished: the connection may be idle now.
            _ = activity.request_done.notified(), if waiting && busy => {}
            // No request in flight: close once no byte has come for the idle grace.
            _ = tokio::time::sleep_until(idle_at), if waiting && !busy => {}
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
            }
        }
    }
}
