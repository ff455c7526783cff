//! Which HTTP a connection speaks, and hyper's connection for it. Over TLS, ALPN says (HTTP/2
//! only when `h2` was negotiated, as RFC 9113 §3.3 asks and Go does); over cleartext, the
//! first bytes do: the HTTP/2 connection preface, or anything else for HTTP/1.1. They are
//! peeked at, not read, so hyper reads them itself straight from the socket: no replay
//! wrapper around every later read (hyper-util's auto builder puts one there, which cost
//! about 1 % of a small keep-alive request).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ConnService, TrackedIo, Transport};
use crate::service::{BoxError, HttpService};

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's builders for each protocol, set up once per server.
#[derive(Clone)]
pub(crate) struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// A connection as the connection's watch drives it: polled to its end, and asked to finish
/// gracefully (HTTP/2: GOAWAY; HTTP/1: close between requests).
pub(crate) trait HttpConnection: Future<Output = Result<(), BoxError>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// hyper's connection for the protocol spoken.
    #[project = HttpConnProj]
    pub(crate) enum HttpConn<T, S: HttpService>
    where
        T: AsyncRead,
        T: AsyncWrite,
        T: Unpin,
        T: Send,
        T: 'static,
    {
        Http1 { #[pin] conn: http1::UpgradeableConnection<TokioIo<TrackedIo<T>>, ConnService<S>> },
        Http2 { #[pin] conn: http2::Connection<TokioIo<TrackedIo<T>>, ConnService<S>, TokioExecutor> },
    }
}

impl<T, S> HttpConn<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    /// Serves `io` with `service` in HTTP/2 if `http2`, else HTTP/1.1 (with upgrades, for
    /// WebSockets).
    pub(crate) fn new(http2: bool, io: TrackedIo<T>, service: ConnService<S>, builders: &Builders) -> Self {
        if http2 {
            io.activity
                .http2
                .store(true, std::sync::atomic::Ordering::Relaxed);
            HttpConn::Http2 {
                conn: builders.http2.serve_connection(TokioIo::new(io), service),
            }
        } else {
            HttpConn::Http1 {
                conn: builders
                    .http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            }
        }
    }
}

impl<T, S> Future for HttpConn<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    type Output = Result<(), BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HttpConnProj::Http1 { conn } => conn.poll(cx).map_err(BoxError::from),
            HttpConnProj::Http2 { conn } => conn.poll(cx).map_err(BoxError::from),
        }
    }
}

impl<T, S> HttpConnection for HttpConn<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            HttpConnProj::Http1 { conn } => conn.graceful_shutdown(),
            HttpConnProj::Http2 { conn } => conn.graceful_shutdown(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A cleartext connection: its first bytes tell its protocol, then hyper serves it.
    #[project = CleartextProj]
    pub(crate) enum Cleartext<'a, S: HttpService> {
        /// The first bytes are still coming.
        Telling {
            parts: Option<(TrackedIo<gracenet::tokio::Stream>, ConnService<S>)>,
            first: [u8; PREFACE.len()],
            seen: usize,
            builders: &'a Builders,
        },
        /// Told: hyper serves it.
        Speaking { #[pin] conn: HttpConn<Transport, S> },
        /// Told to finish before it said anything: closed.
        Closed,
    }
}

impl<'a, S: HttpService> Cleartext<'a, S> {
    pub(crate) fn new(
        io: TrackedIo<gracenet::tokio::Stream>,
        service: ConnService<S>,
        builders: &'a Builders,
    ) -> Self {
        Cleartext::Telling {
            parts: Some((io, service)),
            first: [0; PREFACE.len()],
            seen: 0,
            builders,
        }
    }
}

impl<S: HttpService> Future for Cleartext<'_, S> {
    type Output = Result<(), BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Once told, every poll is hyper's; the telling is out of line.
        if let CleartextProj::Speaking { conn } = self.as_mut().project() {
            return conn.poll(cx);
        }
        self.poll_telling(cx)
    }
}

impl<S: HttpService> Cleartext<'_, S> {
    /// Peeks at the first bytes until they tell the protocol, then starts hyper's connection
    /// for it and polls that.
    #[inline(never)]
    fn poll_telling(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match self.as_mut().project() {
                CleartextProj::Speaking { conn } => return conn.poll(cx),
                CleartextProj::Closed => return Poll::Ready(Ok(())),
                CleartextProj::Telling {
                    parts,
                    first,
                    seen,
                    builders,
                } => {
                    let Some((io, _)) = parts.as_ref() else {
                        return Poll::Ready(Ok(()));
                    };
                    if io.activity.hand_over.load(Ordering::Relaxed) == super::HANDING {
                        // No request yet, and the generation drains for a restart: quiet, to
                        // be handed over as it is (what was peeked is still in the socket; the
                        // next process tells the protocol itself). Polled again if it was not
                        // taken (then no longer handing).
                        io.activity.note_quiet(Vec::new(), None);
                        return Poll::Pending;
                    }
                    let n = ready!(io.inner.poll_peek(cx, first, *seen))?;
                    let http2 = match tell(&first[..n], *seen) {
                        Told::Http2 => true,
                        Told::Http1 => false,
                        Told::NotYet => {
                            *seen = n;
                            io.activity.peeked.store(n as u64, Ordering::Relaxed);
                            continue;
                        }
                    };
                    io.activity.peeked.store(0, Ordering::Relaxed);
                    let Some((io, service)) = parts.take() else {
                        return Poll::Ready(Ok(()));
                    };
                    // HTTP/1 that can be handed over: its requests are followed from here.
                    let framing = if http2 {
                        io.activity.hand_over.store(super::CANNOT, Ordering::Relaxed);
                        None
                    } else {
                        (io.activity.hand_over.load(Ordering::Relaxed) != super::CANNOT)
                            .then(super::Framing::new)
                    };
                    let io = TrackedIo {
                        inner: Transport::Plain(io.inner),
                        activity: io.activity,
                        _guard: io._guard,
                        framing,
                    };
                    let conn = HttpConn::new(http2, io, service, builders);
                    self.set(Cleartext::Speaking { conn });
                }
            }
        }
    }
}

impl<S: HttpService> HttpConnection for Cleartext<'_, S> {
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match self.as_mut().project() {
            CleartextProj::Speaking { conn } => conn.graceful_shutdown(),
            CleartextProj::Telling { parts, .. } => {
                // What was peeked is read and dropped first: closed with it unread, the
                // connection would be reset.
                if let Some((io, _)) = parts.as_ref() {
                    super::discard_unread(io.activity.socket());
                }
                self.set(Cleartext::Closed);
            }
            CleartextProj::Closed => {}
        }
    }
}

/// What a cleartext connection's first bytes say.
#[derive(Debug, PartialEq, Eq)]
enum Told {
    /// The whole HTTP/2 preface.
    Http2,
    /// Anything that is not the preface: hyper's HTTP/1 reads it (a malformed request is
    /// answered as HTTP/1 answers it).
    Http1,
    /// A beginning of the preface, and more may come.
    NotYet,
}

/// Tells the protocol from `first`, the bytes that have arrived (up to the preface's length);
/// `seen` is how many had arrived before: no more than that means no more will come.
fn tell(first: &[u8], seen: usize) -> Told {
    let first = &first[..first.len().min(PREFACE.len())];
    if first[..] != PREFACE[..first.len()] {
        Told::Http1
    } else if first.len() == PREFACE.len() {
        Told::Http2
    } else if first.len() <= seen {
        // The peer stopped partway (or sent nothing): hyper's HTTP/1 sees the end.
        Told::Http1
    } else {
        Told::NotYet
    }
}

#[cfg(test)]
mod tests {
    use super::{PREFACE, Told, tell};

    #[test]
    fn the_preface_is_http2_and_anything_else_http1() {
        assert_eq!(tell(PREFACE, 0), Told::Http2);
        assert_eq!(tell(PREFACE, 10), Told::Http2);
        assert_eq!(tell(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0), Told::Http1);
        assert_eq!(tell(b"G", 0), Told::Http1);
        // PRI as an HTTP/1 method, not followed by the preface's next bytes.
        assert_eq!(tell(b"PRI /x HTTP/1.1\r\n", 0), Told::Http1);
    }

    #[test]
    fn a_beginning_of_the_preface_waits_for_more_unless_the_peer_stopped() {
        assert_eq!(tell(b"PRI * HT", 0), Told::NotYet);
        assert_eq!(tell(b"PRI * HT", 3), Told::NotYet);
        assert_eq!(tell(b"PRI * HT", 8), Told::Http1, "nothing more came");
        assert_eq!(tell(b"", 0), Told::Http1, "closed without a byte");
    }
}
