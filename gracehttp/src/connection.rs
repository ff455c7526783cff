//! One accepted connection, served until it ends or the drain closes it without losing a
//! request: HTTP/2 gets GOAWAY at once; an HTTP/1 connection gets `Connection: close` on its
//! next response, or is closed once it has been idle for the idle grace.

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

use crate::drain::Drain;
use crate::service::{BoxError, Handler};

/// What the drain needs to know about a connection.
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read.
    last_read_ms: AtomicU64,
    in_flight: AtomicUsize,
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
        })
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
    let poll = Duration::from_millis(25).min(config.idle_grace.max(Duration::from_millis(1)));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = &mut draining, if !drain_started => drain_started = true,
            _ = tokio::time::sleep(poll), if drain_started && !closing => {}
        }
        if drain_started && !closing {
            // HTTP/2: GOAWAY now; the client finishes its streams and opens new ones elsewhere.
            // HTTP/1: close only between requests, after the idle grace, so a request the
            // client has already sent is answered (with `Connection: close`), not reset.
            let idle =
                activity.in_flight.load(Ordering::Acquire) == 0 && activity.idle_for() >= config.idle_grace;
            if activity.http2.load(Ordering::Relaxed) || idle {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
