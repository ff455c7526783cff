//! `axum::serve` on gracenet's sockets (feature `axum`): for applications that keep axum's own
//! server. Every connection is tracked by the generation, so its drain (and its stop
//! timeout) waits for them.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), gracenet::Error> {
//! let generation = gracenet::Generation::start()?;
//! let listener = gracenet::axum::Listener::new(&generation, generation.listen(":8080")?);
//! generation.ready()?;
//! let serve = axum::serve(listener, app).with_graceful_shutdown(generation.draining());
//! tokio::select! {
//!     _ = serve => {}                  // every connection finished
//!     _ = generation.drain_deadline_reached() => {}  // the stop timeout: abandon the rest
//! }
//! generation.wait().await;
//! # Ok(()) }
//! ```
//!
//! axum's graceful shutdown closes idle keep-alive connections at once, which races with
//! clients sending their next request on them; gracehttp waits an idle grace and answers such
//! a request with `Connection: close` instead (see the README for what that costs under load).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::lifecycle::{ConnectionGuard, Generation, GracefulListener};
use crate::tokio::{PeerAddr, Stream};

/// A [`GracefulListener`] as an `axum::serve::Listener`: its connections are tracked by the
/// generation, and its peer addresses are [`PeerAddr`]s (extract them with
/// `ConnectInfo<gracenet::tokio::PeerAddr>` after `into_make_service_with_connect_info`).
/// Once the generation stops accepting, `accept` waits forever: end `axum::serve` with
/// `.with_graceful_shutdown(generation.draining())`.
#[derive(Debug)]
pub struct Listener {
    inner: Option<GracefulListener>,
    generation: Generation,
}

impl Listener {
    /// Wraps `listener`, tracking its connections in `generation`.
    pub fn new(generation: &Generation, listener: GracefulListener) -> Listener {
        Listener {
            inner: Some(listener),
            generation: generation.clone(),
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Tracked;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Tracked, PeerAddr) {
        if let Some(listener) = self.inner.as_mut() {
            if let Some((stream, peer)) = listener.accept_with_peer().await {
                return (
                    Tracked {
                        stream,
                        _guard: self.generation.track(),
                    },
                    peer,
                );
            }
            // Stopped accepting: this process lets go of the socket.
            self.inner = None;
        }
        std::future::pending().await
    }

    fn local_addr(&self) -> std::io::Result<PeerAddr> {
        match self.inner.as_ref().map(GracefulListener::local_addr) {
            Some(crate::socket::LocalAddr::Inet(addr)) => Ok(PeerAddr::Tcp(*addr)),
            Some(_) => Ok(PeerAddr::Unknown),
            None => Err(std::io::Error::other("the listener stopped accepting")),
        }
    }
}

/// A connection accepted by [`Listener`]: the drain waits until it is dropped.
#[derive(Debug)]
pub struct Tracked {
    stream: Stream,
    _guard: ConnectionGuard,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// `ConnectInfo<PeerAddr>` in handlers served through [`Listener`] with
/// `into_make_service_with_connect_info::<PeerAddr>()`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}
