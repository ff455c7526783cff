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

/// Binds a Unix stream listener at `path` that only its owner can connect to (mode 0600),
/// without a moment in which another user could swap the path or see the socket open to
/// all: the socket is bound and made private inside a new directory only this user can
/// enter, beside `path`, then linked (or, over a stale socket of a dead process, renamed)
/// into place. Neither step follows a symlink at `path`, and in a sticky directory (`/tmp`)
/// neither can replace another user's file. A live socket or any other file at `path` is
/// an error, as for [`unix`].
///
/// The socket's own address (`getsockname`) names the directory it was bound in, which is
/// gone by then: callers show `path` instead.
pub(crate) fn unix_private(path: &Path) -> Result<OwnedFd, Error> {
    let shown = format!("unix:{}", path.display());
    let bind_err = |source| Error::Bind {
        addr: shown.clone(),
        source,
    };
    let (Some(parent), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(bind_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected a path that names a file",
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let private = PrivateDir::create(parent).map_err(bind_err)?;
    let staged = private.0.join("s");
    let fd = unix_once(&SockAddr::unix(&staged).map_err(bind_err)?, Type::STREAM).map_err(bind_err)?;
    // The directory is this user's alone (0700): nobody else can have replaced `staged`.
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(bind_err)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // link(2) fails if anything appeared at `path` meanwhile, and never follows it.
            std::fs::hard_link(&staged, path).map_err(bind_err)?;
        }
        Err(e) => return Err(bind_err(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::UnixPathNotSocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {
            let probe = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(bind_err)?;
            match probe.connect(&SockAddr::unix(path).map_err(bind_err)?) {
                Ok(()) => {
                    return Err(Error::UnixPathInUse {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    tracing::info!(path = %path.display(), "replacing stale Unix socket left by a process that is gone");
                    // rename(2) replaces the stale socket itself, never what a symlink
                    // points to; in a sticky directory it cannot replace another user's file.
                    std::fs::rename(&staged, path).map_err(bind_err)?;
                }
                Err(e) => return Err(bind_err(e)),
            }
        }
    }
    Ok(fd)
}

/// A directory only this user can enter, made beside a socket path and removed (with what
/// is left in it) when dropped.
struct PrivateDir(std::path::PathBuf);

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut last = None;
        // Another process may hold the name: mkdir(2) is exclusive, so try a few.
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            // Short: the socket's path inside it must fit in `sun_path` too.
            let unique = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(16);
            let name = format!(".g{:x}.{unique:x}", std::process::id());
            let dir = parent.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot make a private directory")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
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

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".g"))
            .collect()
    }

    #[test]
    fn a_private_socket_is_mode_0600_at_its_path_and_leaves_nothing_behind() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("private");
        let path = dir.join("control");
        let listener = UnixListener::from(unix_private(&path).unwrap());
        let mode = std::fs::symlink_metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert_eq!(
            leftovers(&dir),
            Vec::<String>::new(),
            "the private directory is gone"
        );
        // A stale socket of a dead process is replaced the same way.
        drop(listener);
        let listener = UnixListener::from(unix_private(&path).unwrap());
        UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert_eq!(leftovers(&dir), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_private_socket_never_follows_or_replaces_a_symlink_or_a_live_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("private-symlink");
        let target = dir.join("target");
        std::fs::write(&target, b"keep me").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.join("control");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = unix_private(&path).unwrap_err();
        assert!(matches!(err, Error::UnixPathNotSocket { .. }), "{err:?}");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o644,
            "the target is untouched"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        let live_path = dir.join("live");
        let _live = UnixListener::bind(&live_path).unwrap();
        let err = unix_private(&live_path).unwrap_err();
        assert!(matches!(err, Error::UnixPathInUse { .. }), "{err:?}");
        assert_eq!(leftovers(&dir), Vec::<String>::new());
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
