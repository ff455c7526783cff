//! Binding new sockets when nothing inherited matches: close-on-exec, non-blocking,
//! `SO_REUSEADDR`, dual-stack wildcards, and stale Unix socket paths replaced safely.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::Error;

/// The listen backlog for new stream sockets: connections queued here survive a restart.
const BACKLOG: i32 = 1024;

/// Binds a TCP listener or UDP socket at `addr`. An unspecified IPv6 address is dual-stack;
/// when the host has no IPv6 it falls back to `0.0.0.0`.
pub(crate) fn inet(addr: SocketAddr, ty: Type) -> Result<OwnedFd, Error> {
    match inet_once(addr, ty) {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            inet_once(v4, ty).map_err(|source| Error::Bind {
                addr: v4.to_string(),
                source,
            })
        }
        r => r.map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        }),
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn inet_once(addr: SocketAddr, ty: Type) -> io::Result<OwnedFd> {
    // socket2 creates sockets with SOCK_CLOEXEC.
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    if ty == Type::STREAM {
        socket.listen(BACKLOG)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Where a Unix socket is bound.
pub(crate) enum UnixName<'a> {
    Path(&'a Path),
    Abstract(&'a [u8]),
}

/// Binds a Unix stream listener or datagram socket. A socket file left by a dead process is
/// replaced; a path a live process listens on, or a file that is not a socket, is never
/// deleted.
pub(crate) fn unix(name: UnixName<'_>, ty: Type) -> Result<OwnedFd, Error> {
    let (addr, shown) = match name {
        UnixName::Path(p) => (SockAddr::unix(p), format!("unix:{}", p.display())),
        UnixName::Abstract(n) => {
            let mut raw = vec![0u8];
            raw.extend_from_slice(n);
            (
                SockAddr::unix(std::ffi::OsStr::from_bytes(&raw)),
                format!("unix:@{}", String::from_utf8_lossy(n)),
            )
        }
    };
    let bind_err = |source| Error::Bind {
        addr: shown.clone(),
        source,
    };
    let addr = addr.map_err(bind_err)?;
    match unix_once(&addr, ty) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            let UnixName::Path(path) = name else {
                return Err(bind_err(e));
            };
            let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
            if !meta.file_type().is_socket() {
                return Err(Error::UnixPathNotSocket {
                    path: path.to_owned(),
                });
            }
            let probe = Socket::new(Domain::UNIX, ty, None).map_err(bind_err)?;
            match probe.connect(&addr) {
                Ok(()) => Err(Error::UnixPathInUse {
                    path: path.to_owned(),
                }),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    tracing::info!(path = %path.display(), "replacing stale Unix socket left by a process that is gone");
                    std::fs::remove_file(path).map_err(bind_err)?;
                    unix_once(&addr, ty).map_err(bind_err)
                }
                Err(e) => Err(bind_err(e)),
            }
        }
        r => r.map_err(bind_err),
    }
}

fn unix_once(addr: &SockAddr, ty: Type) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::UNIX, ty, None)?;
    socket.bind(addr)?;
    if ty == Type::STREAM {
        socket.listen(BACKLOG)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gracenet-bind-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn stale_unix_path_is_replaced() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
        assert!(path.exists());
        let fd = unix(UnixName::Path(&path), Type::STREAM).unwrap();
        let listener = UnixListener::from(fd);
        UnixStream::connect(&path).unwrap();
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn live_unix_path_is_never_deleted() {
        let dir = temp_dir("live");
        let path = dir.join("s.sock");
        let live = UnixListener::bind(&path).unwrap();
        match unix(UnixName::Path(&path), Type::STREAM) {
            Err(Error::UnixPathInUse { path: p }) => assert_eq!(p, path),
            other => panic!("expected UnixPathInUse, got {other:?}"),
        }
        // The live listener still gets connections at its path.
        UnixStream::connect(&path).unwrap();
        live.accept().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn regular_file_is_never_deleted() {
        let dir = temp_dir("file");
        let path = dir.join("data");
        std::fs::write(&path, b"keep me").unwrap();
        let err = unix(UnixName::Path(&path), Type::STREAM).unwrap_err();
        assert!(matches!(err, Error::UnixPathNotSocket { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_address_in_use_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        // SO_REUSEADDR does not allow two listeners on one port.
        let err = inet(addr, Type::STREAM).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("cannot listen on {addr}:")), "{msg}");
        assert!(matches!(err, Error::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse));
    }
}
