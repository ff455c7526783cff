//! Tokio versions of gracenet's listeners: the same sockets, accepted asynchronously.
//!
//! gracenet's std sockets are already non-blocking, so the plain tokio conversions work on
//! them directly (`tokio::net::TcpListener::from_std(gracenet::listen_tcp(addr)?)`). This
//! module adds the TCP-or-Unix [`StreamListener`] for address strings, and [`listen`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::error::Error;
use crate::socket::LocalAddr;

/// A tokio listening socket, TCP or Unix, from an address string.
#[derive(Debug)]
pub enum StreamListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream listener.
    Unix(UnixListener),
}

/// Returns a tokio listener for `addr` from this process's registry ([`crate::listen`]).
/// Must be called within a tokio runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), gracenet::Error> {
/// let listener = gracenet::tokio::listen(":8080")?;
/// loop {
///     let stream = listener.accept().await.map_err(|source| gracenet::Error::Io {
///         what: "accept".into(),
///         source,
///     })?;
///     // serve `stream`
/// #   drop(stream);
/// }
/// # }
/// ```
///
/// # Errors
/// As [`crate::listen`]; [`Error::Io`] when registering with the runtime fails.
pub fn listen(addr: &str) -> Result<StreamListener, Error> {
    StreamListener::from_std(crate::listen(addr)?).map_err(|source| Error::Io {
        what: format!("cannot register the listener for {addr} with tokio"),
        source,
    })
}

impl StreamListener {
    /// Registers a gracenet std listener with the current tokio runtime.
    ///
    /// # Errors
    /// When no runtime is running, or registering the fd fails. Panics like
    /// `TcpListener::from_std` when called outside a runtime.
    pub fn from_std(listener: crate::registry::StdStreamListener) -> io::Result<Self> {
        Ok(match listener {
            crate::registry::StdStreamListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                StreamListener::Tcp(TcpListener::from_std(l)?)
            }
            crate::registry::StdStreamListener::Unix(l) => {
                l.set_nonblocking(true)?;
                StreamListener::Unix(UnixListener::from_std(l)?)
            }
        })
    }

    /// Accepts the next connection.
    ///
    /// # Errors
    /// The accept error, e.g. `EMFILE` when out of fds: the caller decides whether to back
    /// off and retry.
    pub async fn accept(&self) -> io::Result<Stream> {
        Ok(self.accept_raw().await?.0)
    }

    /// Accepts the next connection, with its TCP peer's address as `accept(2)` returned it
    /// (no further system call); `None` for a Unix stream.
    pub(crate) async fn accept_raw(&self) -> io::Result<(Stream, Option<std::net::SocketAddr>)> {
        Ok(match self {
            StreamListener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                (Stream::Tcp(stream), Some(peer))
            }
            StreamListener::Unix(l) => (Stream::Unix(l.accept().await?.0), None),
        })
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// When `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<LocalAddr> {
        use std::os::fd::AsFd;
        crate::socket::inspect(self.as_fd())
            .map(|info| info.addr)
            .map_err(crate::socket::Unusable::into_io)
    }
}

impl std::os::fd::AsFd for StreamListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            StreamListener::Tcp(l) => l.as_fd(),
            StreamListener::Unix(l) => l.as_fd(),
        }
    }
}

/// Who is at the other end of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer's address.
    Tcp(std::net::SocketAddr),
    /// A Unix-socket peer's credentials (`SO_PEERCRED`).
    Unix {
        /// Its pid, when the system reports one.
        pid: Option<i32>,
        /// Its user id.
        uid: u32,
        /// Its group id.
        gid: u32,
    },
    /// Not known (the system would not say).
    Unknown,
}

impl PeerAddr {
    /// The TCP address, for a TCP peer.
    pub fn tcp(&self) -> Option<std::net::SocketAddr> {
        match self {
            PeerAddr::Tcp(a) => Some(*a),
            _ => None,
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix {
                pid: Some(pid), uid, ..
            } => write!(f, "unix peer pid {pid} uid {uid}"),
            PeerAddr::Unix { uid, .. } => write!(f, "unix peer uid {uid}"),
            PeerAddr::Unknown => write!(f, "unknown peer"),
        }
    }
}

/// An accepted connection, TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// Who is at the other end.
    pub fn peer(&self) -> PeerAddr {
        match self {
            Stream::Tcp(s) => s.peer_addr().map_or(PeerAddr::Unknown, PeerAddr::Tcp),
            Stream::Unix(s) => s.peer_cred().map_or(PeerAddr::Unknown, |c| PeerAddr::Unix {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            }),
        }
    }
}

impl Stream {
    /// Looks at bytes that have arrived and not been read, without reading them (the next read
    /// returns them): copies them into `buf` once there are more than `seen` of them, or once
    /// the peer has stopped sending (then as many as there are, perhaps `seen` again, or 0 if
    /// it sent none). For telling a protocol by a connection's first bytes and leaving them
    /// for whoever reads the connection next. At most `buf.len()` bytes are looked at;
    /// `seen` should be less than that.
    pub fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8], seen: usize) -> Poll<io::Result<usize>> {
        // A peek leaves the bytes in the socket, so the socket stays readable while no new
        // ones come: a peek that finds nothing new reports `WouldBlock`, which clears the
        // readiness until the next event, unless the peer has stopped sending (asked of the
        // kernel where it can say; elsewhere, readable again at once with still nothing new
        // is taken for the end of the stream, whose readiness stays set).
        let mut stalled = false;
        loop {
            std::task::ready!(match self {
                Stream::Tcp(s) => s.poll_read_ready(cx),
                Stream::Unix(s) => s.poll_read_ready(cx),
            })?;
            let peek = || {
                use std::os::fd::{AsFd, AsRawFd};
                let n = nix::sys::socket::recv(
                    self.as_fd().as_raw_fd(),
                    buf,
                    nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let ended = || crate::sys::peer_stopped_sending(self.as_fd()).unwrap_or(stalled);
                if n > seen || n == 0 || n >= buf.len() || ended() {
                    Ok(n)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            };
            let peeked = match self {
                Stream::Tcp(s) => s.try_io(::tokio::io::Interest::READABLE, peek),
                Stream::Unix(s) => s.try_io(::tokio::io::Interest::READABLE, peek),
            };
            match peeked {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stalled = true,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[::tokio::test]
    async fn accepts_tcp_and_unix_through_one_type() {
        let reg = crate::registry::SocketRegistry::new(crate::registry::InheritedFds::none());
        let tcp = StreamListener::from_std(reg.listen("127.0.0.1:0").unwrap()).unwrap();
        let LocalAddr::Inet(addr) = tcp.local_addr().unwrap() else {
            panic!("not an IP address")
        };
        let dir = std::env::temp_dir().join(format!("gracenet-tokio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let unix =
            StreamListener::from_std(reg.listen(&format!("unix:{}", path.display())).unwrap()).unwrap();

        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut s = tcp.accept().await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        let mut c = UnixStream::connect(&path).await.unwrap();
        let mut s = unix.accept().await.unwrap();
        s.write_all(b"pong").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether `poll_peek` with `seen` is still waiting (polled once, without blocking).
    fn peek_waits(s: &Stream, buf: &mut [u8], seen: usize) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        s.poll_peek(&mut cx, buf, seen).is_pending()
    }

    async fn peek(s: &Stream, buf: &mut [u8], seen: usize) -> usize {
        let peeked = std::future::poll_fn(|cx| s.poll_peek(cx, buf, seen));
        ::tokio::time::timeout(std::time::Duration::from_secs(10), peeked)
            .await
            .expect("peeked within 10 s")
            .expect("peeked")
    }

    #[::tokio::test]
    async fn a_peek_waits_for_more_than_it_has_seen_and_leaves_the_bytes_to_be_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut s = Stream::Tcp(listener.accept().await.unwrap().0);
        let mut buf = [0u8; 8];
        assert!(peek_waits(&s, &mut buf, 0), "nothing sent yet");
        c.write_all(b"abc").await.unwrap();
        assert_eq!(peek(&s, &mut buf, 0).await, 3);
        assert_eq!(&buf[..3], b"abc");
        assert!(peek_waits(&s, &mut buf, 3), "nothing more than the 3 seen");
        c.write_all(b"defghij").await.unwrap();
        assert_eq!(peek(&s, &mut buf, 3).await, 8, "as many as fit");
        assert_eq!(&buf, b"abcdefgh");
        // Still there to be read.
        let mut read = [0u8; 10];
        s.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"abcdefghij");
    }

    #[::tokio::test]
    async fn a_peek_ends_when_the_peer_stops_sending() {
        // A Unix pair: the other kind of stream, and the end of the stream after some bytes.
        let (mut c, s) = UnixStream::pair().unwrap();
        let s = Stream::Unix(s);
        let mut buf = [0u8; 8];
        c.write_all(b"PRI").await.unwrap();
        assert_eq!(peek(&s, &mut buf, 0).await, 3);
        c.shutdown().await.unwrap();
        assert_eq!(peek(&s, &mut buf, 3).await, 3, "no more will come: what there is");
        drop(c);
        let (c, s) = UnixStream::pair().unwrap();
        drop(c);
        assert_eq!(
            peek(&Stream::Unix(s), &mut buf, 0).await,
            0,
            "closed without a byte"
        );
    }
}
