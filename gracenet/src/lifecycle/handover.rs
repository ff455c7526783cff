//! Live connections handed to the next generation over the channel between the two
//! processes (`SCM_RIGHTS`), each with the bytes the old process had read but not yet handled
//! and an application-defined state. The client sees no close and no reset: its next reply
//! comes from the new process, on the same connection.
//!
//! On the channel, after the handed-over application state (see
//! [`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)), each connection
//! is a frame: `C`, the unread bytes' length and the state's length (u32, little-endian), with
//! the connection's fd attached to these 9 bytes; then the unread bytes and the state.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;

use crate::tokio::Stream;

/// The most bytes of unread data or state one handed connection may carry.
pub(crate) const MAX_HANDED_BYTES: u32 = 16 * 1024 * 1024;

/// A connection the previous generation handed over.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandedConnection {
    /// The connection, as it was: same peer, same local port, nothing closed.
    pub stream: Stream,
    /// Bytes the previous generation had read from it but not handled: handle them first.
    pub unread: Vec<u8>,
    /// What the previous generation's application attached to it.
    pub state: Vec<u8>,
}

/// Sends one connection's fd and data on the channel `out`.
pub(crate) async fn send(
    out: &mut OwnedWriteHalf,
    conn: RawFd,
    unread: &[u8],
    state: &[u8],
) -> io::Result<()> {
    let len = |b: &[u8]| {
        u32::try_from(b.len())
            .ok()
            .filter(|&n| n <= MAX_HANDED_BYTES)
            .ok_or_else(|| io::Error::other(format!("more than {MAX_HANDED_BYTES} bytes to hand over")))
    };
    let mut header = [0u8; 9];
    header[0] = b'C';
    header[1..5].copy_from_slice(&len(unread)?.to_le_bytes());
    header[5..9].copy_from_slice(&len(state)?.to_le_bytes());
    let socket = out.as_ref();
    let sent = loop {
        socket.writable().await?;
        let attempt = socket.try_io(Interest::WRITABLE, || {
            let iov = [io::IoSlice::new(&header)];
            let fds = [conn];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    out.write_all(&header[sent..]).await?;
    out.write_all(unread).await?;
    out.write_all(state).await?;
    out.flush().await
}

/// The connections the previous generation hands over, as they arrive.
#[derive(Debug)]
pub struct InheritedConnections {
    channel: tokio::net::UnixStream,
}

impl InheritedConnections {
    pub(crate) fn new(channel: tokio::net::UnixStream) -> InheritedConnections {
        InheritedConnections { channel }
    }

    /// The next handed connection; `None` once the previous generation is done handing over
    /// (it closed the channel, or exited).
    pub async fn next(&mut self) -> Option<HandedConnection> {
        match self.receive().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("receiving a handed-over connection failed: {e}");
                None
            }
        }
    }

    async fn receive(&mut self) -> io::Result<Option<HandedConnection>> {
        let mut header = [0u8; 9];
        let mut got = 0;
        let mut fd: Option<OwnedFd> = None;
        while got < header.len() {
            self.channel.readable().await?;
            let read = self.channel.try_io(Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(&mut header[got..])];
                let mut space = nix::cmsg_space!([RawFd; 1]);
                let msg = recvmsg::<()>(
                    self.channel.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    crate::sys::RECV_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut received = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            received.extend(fds);
                        }
                    }
                }
                Ok((msg.bytes, received))
            });
            let (n, fds) = match read {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            for raw in fds {
                // SAFETY: the kernel just installed this fd in this process for us.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                crate::socket::set_cloexec(&owned).map_err(io::Error::from)?;
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
            if n == 0 {
                return Ok(None);
            }
            got += n;
        }
        if header[0] != b'C' {
            return Err(io::Error::other(
                "the channel carried something other than a connection",
            ));
        }
        let fd = fd.ok_or_else(|| io::Error::other("a handed-over connection came without its fd"))?;
        let unread_len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        let state_len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        if unread_len > MAX_HANDED_BYTES || state_len > MAX_HANDED_BYTES {
            return Err(io::Error::other(
                "a handed-over connection carries too many bytes",
            ));
        }
        let mut unread = vec![0u8; unread_len as usize];
        self.channel.read_exact(&mut unread).await?;
        let mut state = vec![0u8; state_len as usize];
        self.channel.read_exact(&mut state).await?;
        Ok(Some(HandedConnection {
            stream: stream_from(fd)?,
            unread,
            state,
        }))
    }
}

/// A connected stream socket's fd as a tokio stream of the right kind.
fn stream_from(fd: OwnedFd) -> io::Result<Stream> {
    let family = crate::sys::socket_family(std::os::fd::AsFd::as_fd(&fd))?;
    if family == libc::AF_UNIX {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Stream::Unix(tokio::net::UnixStream::from_std(s)?))
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Stream::Tcp(tokio::net::TcpStream::from_std(s)?))
    }
}
