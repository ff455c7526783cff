//! A connection's bytes, cleartext or TLS, as one type: hyper's connection code (the HTTP/1
//! dispatcher with its read and write buffers, the HTTP/2 codec) is then compiled once, not
//! once per transport, and the compiler inlines its write path as it does for plain hyper. A
//! TLS session is boxed, so a cleartext connection's task does not carry room for one; so is
//! a handed-over connection's first bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use gracenet::tokio::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// An accepted connection's transport: the socket itself, or a TLS session over it.
pub(crate) enum Transport {
    /// Cleartext.
    Plain(Stream),
    /// TLS, after its handshake.
    Tls(Box<TlsStream<Stream>>),
    /// Cleartext, handed over by the previous process with bytes it had read: those first.
    Rewound(Box<Rewound>),
}

/// A handed-over connection's bytes read by the previous process, then its socket.
pub(crate) struct Rewound {
    unread: Bytes,
    stream: Stream,
}

impl Rewound {
    pub(crate) fn new(unread: Vec<u8>, stream: Stream) -> Rewound {
        Rewound {
            unread: Bytes::from(unread),
            stream,
        }
    }
}

impl AsyncRead for Transport {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Transport::Rewound(r) => {
                if r.unread.is_empty() {
                    return Pin::new(&mut r.stream).poll_read(cx, buf);
                }
                let n = r.unread.len().min(buf.remaining());
                buf.put_slice(&r.unread[..n]);
                r.unread.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Transport {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Transport::Rewound(r) => Pin::new(&mut r.stream).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Transport::Rewound(r) => Pin::new(&mut r.stream).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Transport::Rewound(r) => Pin::new(&mut r.stream).poll_shutdown(cx),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Transport::Rewound(r) => Pin::new(&mut r.stream).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Rewound(r) => r.stream.is_write_vectored(),
        }
    }
}
