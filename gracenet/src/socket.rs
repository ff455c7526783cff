//! What a socket fd is: its kind and its real local address, read from the kernel.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use socket2::{Domain, SockRef, Type};

/// The kinds of socket gracenet keeps across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// A listening TCP socket (IPv4 or IPv6).
    TcpListener,
    /// A listening Unix stream socket.
    UnixListener,
    /// A UDP socket.
    Udp,
    /// A Unix datagram socket.
    UnixDatagram,
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketKind::TcpListener => "TCP listener",
            SocketKind::UnixListener => "Unix stream listener",
            SocketKind::Udp => "UDP socket",
            SocketKind::UnixDatagram => "Unix datagram socket",
        })
    }
}

/// A socket's local address, as `getsockname` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddr {
    /// An IPv4 or IPv6 address and port.
    Inet(std::net::SocketAddr),
    /// A Unix socket bound to a path.
    UnixPath(PathBuf),
    /// A Unix socket in Linux's abstract namespace (the name without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// A Unix socket bound to nothing.
    UnixUnnamed,
}

impl fmt::Display for LocalAddr {
    /// IP addresses as Go prints them (`127.0.0.1:8080`, `[::]:8080`), Unix ones as
    /// `unix:/path` or `unix:@abstract`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Inet(a) => write!(f, "{a}"),
            LocalAddr::UnixPath(p) => write!(f, "unix:{}", p.display()),
            LocalAddr::UnixAbstract(name) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
            LocalAddr::UnixUnnamed => f.write_str("unix:(unnamed)"),
        }
    }
}

/// What an fd turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub kind: SocketKind,
    pub addr: LocalAddr,
}

/// Why an fd is not a socket gracenet can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unusable {
    NotOpen,
    NotASocket(&'static str),
    Unsupported(String),
    Errno(Errno),
}

impl Unusable {
    /// As an I/O error, for a socket this process made itself (where only a failed system
    /// call is expected): the errno as it is, anything else as the errno that says it.
    pub(crate) fn into_io(self) -> std::io::Error {
        match self {
            Unusable::Errno(e) => e.into(),
            Unusable::NotOpen => Errno::EBADF.into(),
            Unusable::NotASocket(found) => {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{found}, not a socket"))
            }
            Unusable::Unsupported(found) => std::io::Error::new(std::io::ErrorKind::Unsupported, found),
        }
    }
}

/// Checks that `fd` is open, and takes ownership of it.
///
/// # Safety
/// `fd` must be this process's to own (no other owner will use or close it): under the
/// LISTEN_FDS protocol fds 3.. are handed to the process, and the caller takes each once.
pub(crate) unsafe fn own_if_open(fd: RawFd) -> Result<OwnedFd, Unusable> {
    // SAFETY: F_GETFD reads the fd's flags and has no effect; on a closed fd it fails EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(match Errno::last() {
            Errno::EBADF => Unusable::NotOpen,
            e => Unusable::Errno(e),
        });
    }
    // SAFETY: the fd is open (checked just above), and the caller guarantees that it is ours
    // to own: nothing else uses or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads what kind of socket `fd` is and where it is bound.
pub(crate) fn inspect(fd: BorrowedFd<'_>) -> Result<SocketInfo, Unusable> {
    let stat = nix::sys::stat::fstat(fd).map_err(Unusable::Errno)?;
    let fmt = stat.st_mode & libc::S_IFMT;
    if fmt != libc::S_IFSOCK {
        return Err(Unusable::NotASocket(match fmt {
            libc::S_IFREG => "a regular file",
            libc::S_IFDIR => "a directory",
            libc::S_IFIFO => "a pipe",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "not a socket",
        }));
    }
    let sock = SockRef::from(&fd);
    let errno = |e: std::io::Error| Unusable::Errno(Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    let domain = Domain::from(crate::sys::socket_family(fd).map_err(errno)?);
    let ty = sock.r#type().map_err(errno)?;
    let inet = domain == Domain::IPV4 || domain == Domain::IPV6;
    let unix = domain == Domain::UNIX;
    let family = if inet {
        if domain == Domain::IPV4 { "IPv4" } else { "IPv6" }
    } else if unix {
        "Unix"
    } else {
        return Err(Unusable::Unsupported(format!("a socket of family {domain:?}")));
    };
    let kind = if ty == Type::STREAM {
        if !crate::sys::is_listening(fd).map_err(errno)? {
            let what = if inet { "TCP" } else { "Unix" };
            return Err(Unusable::Unsupported(format!(
                "a {what} stream socket that is not listening (connected or unbound)"
            )));
        }
        if inet {
            SocketKind::TcpListener
        } else {
            SocketKind::UnixListener
        }
    } else if ty == Type::DGRAM {
        if inet {
            SocketKind::Udp
        } else {
            SocketKind::UnixDatagram
        }
    } else {
        return Err(Unusable::Unsupported(format!(
            "an {family} socket of type {ty:?}"
        )));
    };
    let addr = sock.local_addr().map_err(errno)?;
    let addr = if let Some(a) = addr.as_socket() {
        LocalAddr::Inet(a)
    } else if let Some(p) = addr.as_pathname() {
        LocalAddr::UnixPath(p.to_owned())
    } else if let Some(name) = crate::sys::sockaddr_abstract_name(&addr) {
        LocalAddr::UnixAbstract(name)
    } else {
        LocalAddr::UnixUnnamed
    };
    Ok(SocketInfo { kind, addr })
}

/// Marks `fd` close-on-exec, so only the fds we hand over on purpose reach a new program.
pub(crate) fn set_cloexec(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{F_GETFD, F_SETFD, FdFlag, fcntl};
    let flags = FdFlag::from_bits_truncate(fcntl(&fd, F_GETFD)?);
    if !flags.contains(FdFlag::FD_CLOEXEC) {
        fcntl(&fd, F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Makes `fd` non-blocking. The flag lives on the open file description that every process
/// holding the socket shares, so gracenet only ever sets it, never clears it.
pub(crate) fn set_nonblocking(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{F_GETFL, F_SETFL, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(&fd, F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_listeners_and_datagram_sockets() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let info = inspect(tcp.as_fd()).unwrap();
        assert_eq!(info.kind, SocketKind::TcpListener);
        assert_eq!(info.addr, LocalAddr::Inet(tcp.local_addr().unwrap()));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(inspect(udp.as_fd()).unwrap().kind, SocketKind::Udp);

        let dir = std::env::temp_dir().join(format!("gracenet-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let info = inspect(unix.as_fd()).unwrap();
        assert_eq!(info.kind, SocketKind::UnixListener);
        assert_eq!(info.addr, LocalAddr::UnixPath(path.clone()));
        assert_eq!(info.addr.to_string(), format!("unix:{}", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_files_pipes_and_connected_sockets() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(inspect(file.as_fd()), Err(Unusable::NotASocket("a regular file")));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(inspect(r.as_fd()), Err(Unusable::NotASocket("a pipe")));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(matches!(inspect(c.as_fd()), Err(Unusable::Unsupported(m)) if m.contains("not listening")));
    }

    #[test]
    fn closed_fd_is_not_open() {
        // Far above any fd limit, so no other test thread can have it open.
        // SAFETY: no fd there is anyone's.
        assert_eq!(unsafe { own_if_open(999_999) }.unwrap_err(), Unusable::NotOpen);
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: `file` gives its fd up to the OwnedFd, which closes it.
        assert!(unsafe { own_if_open(std::os::fd::IntoRawFd::into_raw_fd(file)) }.is_ok());
    }
}
