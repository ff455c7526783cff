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
    let group = match crate::startup::startup().ok().and_then(|s| s.worker) {
        Some(worker) if ty == Type::STREAM && worker.join => Group::Join,
        Some(_) if ty == Type::STREAM => Group::Open,
        _ => Group::None,
    };
    inet_socket(addr, ty, group)
}

/// Whether a new TCP listener is in a `SO_REUSEPORT` group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// No: a listener of its own (a single process's).
    None,
    /// A cluster's first listener on its address: bound and listening alone (so it fails with
    /// "address in use" if anything listens there already, a second instance of the same
    /// program included), and only then given `SO_REUSEPORT`, so its primary's siblings
    /// (`reuseport_sibling`) can join it.
    Open,
    /// A worker of a cluster whose listeners exist already: it joins their group at once.
    Join,
}

fn inet_socket(addr: SocketAddr, ty: Type, group: Group) -> io::Result<OwnedFd> {
    // socket2 creates sockets with SOCK_CLOEXEC.
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    socket.set_reuse_address(true)?;
    if group == Group::Join {
        // Each worker of a cluster gets a listener of its own in one SO_REUSEPORT group (the
        // primary makes the others next to the first one): the kernel spreads new connections
        // over them, and a connection wakes only the worker whose queue it is in.
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    if ty == Type::STREAM {
        socket.listen(BACKLOG)?;
    }
    if group == Group::Open {
        // Bound and listening alone: the address was free. From now on a socket of the same
        // user with SO_REUSEPORT may join (the primary's siblings; also any other program of
        // this user that sets SO_REUSEPORT itself: the kernel allows that by design), but
        // another instance of a gracenet cluster binds its first listener alone, and fails.
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether this process is a cluster's worker.
/// A TCP listener next to `template` (a listening socket with `SO_REUSEPORT`): bound to the
/// same address in the same reuseport group, listening and non-blocking. `None` when
/// `template` is not such a socket (a Unix socket, or one bound without `SO_REUSEPORT`, as
/// systemd's are unless `ReusePort=yes`): then it is shared as it is.
#[cfg(feature = "tokio")]
pub(crate) fn reuseport_sibling(template: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let t = socket2::SockRef::from(template);
    let Some(addr) = t.local_addr()?.as_socket() else {
        return Ok(None);
    };
    if t.r#type()? != Type::STREAM || !t.reuse_port()? || !t.is_listener()? {
        return Ok(None);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(t.only_v6()?)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(Some(socket.into()))
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
            if foreign_in_sticky(&meta, path) {
                return Err(bind_err(foreign_socket(&meta)));
            }
            let probe = Socket::new(Domain::UNIX, ty, None).map_err(bind_err)?;
            // Never waits: a live listener with a full backlog (one that does not accept)
            // is in use too.
            probe.set_nonblocking(true).map_err(bind_err)?;
            match probe.connect(&addr) {
                Ok(()) => Err(Error::UnixPathInUse {
                    path: path.to_owned(),
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::UnixPathInUse {
                    path: path.to_owned(),
                }),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    crate::log::info!(path = %path.display(), "replacing stale Unix socket left by a process that is gone");
                    std::fs::remove_file(path).map_err(bind_err)?;
                    unix_once(&addr, ty).map_err(bind_err)
                }
                Err(e) => Err(bind_err(e)),
            }
        }
        r => r.map_err(bind_err),
    }
}

/// The longest socket path a client can connect to: `sun_path` less its final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Binds a Unix stream listener at `path` that only its owner can connect to (mode 0600),
/// without a moment in which the socket is reachable with a wider mode, and without
/// changing the mode of anything by its path: the socket is made private before it is
/// bound (Linux gives the file it binds the socket's own mode), bound at a temporary name
/// beside `path` through a descriptor of the directory (so a directory renamed meanwhile does
/// not redirect it), and linked (or, over a stale socket of a dead process, renamed) into
/// place. Neither step follows a symlink at `path`, and in a sticky directory (`/tmp`)
/// neither can replace another user's file. A live socket or any other file at `path` is an
/// error, as for [`unix`].
///
/// The socket's own address (`getsockname`) names the temporary name: callers show `path`.
///
/// Keep `path` in a directory only the server's user (or root) can write, or a sticky one:
/// in a directory anyone can write, anyone can replace the socket at any time.
pub(crate) fn unix_private(path: &Path) -> Result<OwnedFd, Error> {
    let shown = format!("unix:{}", path.display());
    let bind_err = |source| Error::Bind {
        addr: shown.clone(),
        source,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(bind_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the path is {} bytes long: a Unix socket's path can be at most {MAX_SOCKET_PATH}",
                path.as_os_str().len()
            ),
        )));
    }
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
    let staged = private::bind(parent).map_err(bind_err)?;
    place(&staged, path).map_err(|e| match e {
        Placed::Io(e) => bind_err(e),
        Placed::InUse => Error::UnixPathInUse {
            path: path.to_owned(),
        },
        Placed::NotSocket => Error::UnixPathNotSocket {
            path: path.to_owned(),
        },
    })?;
    Ok(staged.into_socket())
}

/// Why a staged socket was not put at its path.
enum Placed {
    Io(io::Error),
    InUse,
    NotSocket,
}

/// Moves the staged socket to `path`: linked when nothing is there (link(2) fails if
/// anything appeared meanwhile, and never follows it), renamed over a stale socket
/// (rename(2) replaces the socket itself, never what a symlink points to).
fn place(staged: &private::Staged, path: &Path) -> Result<(), Placed> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => staged.link_to(path).map_err(Placed::Io),
        Err(e) => Err(Placed::Io(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(Placed::NotSocket),
        Ok(meta) if foreign_in_sticky(&meta, path) => Err(Placed::Io(foreign_socket(&meta))),
        Ok(_) => match probe_unix(path) {
            Ok(true) => Err(Placed::InUse),
            Ok(false) => {
                crate::log::info!(path = %path.display(), "replacing stale Unix socket left by a process that is gone");
                staged.rename_to(path).map_err(Placed::Io)
            }
            Err(e) => Err(Placed::Io(e)),
        },
    }
}

/// Whether `meta`, the file at `path`, is another user's in a sticky directory (`/tmp`): a
/// file the sticky bit protects from everyone but its owner and root is not ours to replace,
/// even when running as root.
fn foreign_in_sticky(meta: &std::fs::Metadata, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // 0o1000: the sticky bit (S_ISVTX).
    let sticky = std::fs::metadata(parent).is_ok_and(|d| d.mode() & 0o1000 != 0);
    sticky && meta.uid() != nix::unistd::geteuid().as_raw()
}

/// The error for another user's socket in a sticky directory.
fn foreign_socket(meta: &std::fs::Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "a socket of another user (uid {}) is there, in a sticky directory: it is not replaced \
             (remove it, or choose a path of your own)",
            std::os::unix::fs::MetadataExt::uid(meta)
        ),
    )
}

/// Whether a process listens at the socket `path`: a connection accepted or queued, or a
/// full backlog (a live listener that does not accept), without ever waiting.
fn probe_unix(path: &Path) -> io::Result<bool> {
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A name a process of ours can hold for a moment: short (it must fit in `sun_path`) and
/// unpredictable enough that another user cannot plant something there ahead of it.
fn temporary_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let unique = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(16);
    format!(".g{:x}.{unique:x}", std::process::id())
}

/// Linux: the socket made 0600 with `fchmod` before `bind` (the bound file takes the
/// socket's mode), bound at a temporary name in the target's directory through
/// `/proc/self/fd/N/`, which also keeps the path short whatever the directory's.
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
mod private {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    use nix::fcntl::{AtFlags, OFlag, open, renameat};
    use nix::sys::stat::Mode;
    use nix::unistd::{UnlinkatFlags, linkat, unlinkat};
    use socket2::{Domain, SockAddr, Socket, Type};

    /// A listening socket at a temporary name in a directory.
    pub(super) struct Staged {
        name: TemporaryName,
        socket: OwnedFd,
    }

    /// The temporary name, removed on drop unless renamed away.
    struct TemporaryName {
        dir: OwnedFd,
        name: String,
        renamed: std::cell::Cell<bool>,
    }

    pub(super) fn bind(parent: &Path) -> io::Result<Staged> {
        let dir = open(
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        nix::sys::stat::fchmod(&socket, Mode::from_bits_truncate(0o600))?;
        let mut last = None;
        // Another file may hold the name (bind never replaces or follows one): try a few.
        for _ in 0..16 {
            let name = super::temporary_name();
            let at = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
            match socket.bind(&SockAddr::unix(&at)?) {
                Ok(()) => {
                    let name = TemporaryName {
                        dir,
                        name,
                        renamed: std::cell::Cell::new(false),
                    };
                    socket.listen(super::BACKLOG)?;
                    socket.set_nonblocking(true)?;
                    return Ok(Staged {
                        name,
                        socket: socket.into(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }

    impl Staged {
        pub(super) fn link_to(&self, path: &Path) -> io::Result<()> {
            let n = &self.name;
            linkat(
                &n.dir,
                n.name.as_str(),
                nix::fcntl::AT_FDCWD,
                path,
                AtFlags::empty(),
            )
            .map_err(io::Error::from)
        }

        pub(super) fn rename_to(&self, path: &Path) -> io::Result<()> {
            let n = &self.name;
            renameat(&n.dir, n.name.as_str(), nix::fcntl::AT_FDCWD, path).map_err(io::Error::from)?;
            n.renamed.set(true);
            Ok(())
        }

        pub(super) fn into_socket(self) -> OwnedFd {
            self.socket
        }
    }

    impl Drop for TemporaryName {
        fn drop(&mut self) {
            // Linked, or not placed: the temporary name goes.
            if !self.renamed.get() {
                let _ = unlinkat(&self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// Elsewhere (and with `--cfg gracenet_portable`): bound and made 0600 inside a new
/// directory only this user can enter, made beside the target. The directory is made 0700
/// through its descriptor, whatever the umask. In a directory another user can write and
/// that is not sticky, that user could swap the private directory while the socket is made
/// private by its path: keep control sockets out of such directories.
#[cfg(not(all(target_os = "linux", not(gracenet_portable))))]
mod private {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    use socket2::{Domain, SockAddr, Socket, Type};

    pub(super) struct Staged {
        dir: PrivateDir,
        socket: OwnedFd,
    }

    /// The private directory, removed (with what is left in it) on drop.
    struct PrivateDir(PathBuf);

    pub(super) fn bind(parent: &Path) -> io::Result<Staged> {
        use std::os::unix::fs::DirBuilderExt;
        let mut last = None;
        for _ in 0..16 {
            let dir = parent.join(super::temporary_name());
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let dir = PrivateDir(dir);
                    let handle = std::fs::File::open(&dir.0)?;
                    nix::sys::stat::fchmod(&handle, nix::sys::stat::Mode::from_bits_truncate(0o700))?;
                    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                    let at = dir.0.join("s");
                    socket.bind(&SockAddr::unix(&at)?)?;
                    std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                    socket.listen(super::BACKLOG)?;
                    socket.set_nonblocking(true)?;
                    return Ok(Staged {
                        dir,
                        socket: socket.into(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }

    impl Staged {
        pub(super) fn link_to(&self, path: &Path) -> io::Result<()> {
            std::fs::hard_link(self.dir.0.join("s"), path)
        }

        pub(super) fn rename_to(&self, path: &Path) -> io::Result<()> {
            std::fs::rename(self.dir.0.join("s"), path)
        }

        pub(super) fn into_socket(self) -> OwnedFd {
            self.socket
        }
    }

    impl Drop for PrivateDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0.join("s"));
            let _ = std::fs::remove_dir(&self.0);
        }
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
    fn another_users_stale_socket_in_a_sticky_directory_is_never_replaced() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making a file of another user needs root");
            return;
        }
        let dir = temp_dir("sticky");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        for (what, result) in [
            ("control socket", unix_private(&path).map(drop)),
            (
                "unix: listener",
                unix(UnixName::Path(&path), Type::STREAM).map(drop),
            ),
        ] {
            let e = result.expect_err(what).to_string();
            assert!(e.contains("another user (uid 65534)"), "{what}: {e}");
            let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(&path).unwrap());
            assert_eq!(owner, 65534, "{what}: the file was replaced");
        }
        // Its own stale socket there is replaced as anywhere.
        nix::unistd::chown(&path, Some(nix::unistd::geteuid()), None).unwrap();
        unix_private(&path).expect("our own stale socket");
        let _ = std::fs::remove_dir_all(&dir);
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
    fn a_private_socket_fits_any_path_a_client_can_reach_and_names_the_limit_beyond() {
        let dir = temp_dir("private-long");
        let room = MAX_SOCKET_PATH - dir.as_os_str().len() - 1;
        let path = dir.join("c".repeat(room));
        assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
        let listener = UnixListener::from(unix_private(&path).unwrap());
        UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        let longer = dir.join("c".repeat(room + 1));
        let err = unix_private(&longer).unwrap_err().to_string();
        assert!(err.contains("at most 107"), "{err}");
        assert_eq!(leftovers(&dir), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_socket_that_does_not_accept_is_in_use_at_once() {
        let dir = temp_dir("full-backlog");
        let path = dir.join("busy");
        let busy = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        busy.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        busy.listen(0).unwrap();
        // Fill its backlog: a blocking connect would now wait for ever.
        let mut queued = Vec::new();
        for _ in 0..64 {
            let c = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            c.set_nonblocking(true).unwrap();
            let full = c.connect(&SockAddr::unix(&path).unwrap()).is_err();
            queued.push(c);
            if full {
                break;
            }
        }
        let started = std::time::Instant::now();
        assert!(matches!(unix_private(&path), Err(Error::UnixPathInUse { .. })));
        assert!(matches!(
            unix(UnixName::Path(&path), Type::STREAM),
            Err(Error::UnixPathInUse { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "no wait");
        drop(busy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Linux only: steering and shared memory are (the portable path says Unsupported).
    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn a_reuseport_listener_gets_a_sibling_on_its_port_and_others_none() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(8).unwrap();
        let template: OwnedFd = socket.into();
        let sibling = reuseport_sibling(&template).unwrap().expect("a sibling");
        let port = |fd: &OwnedFd| {
            socket2::SockRef::from(fd)
                .local_addr()
                .unwrap()
                .as_socket()
                .unwrap()
                .port()
        };
        assert_eq!(port(&sibling), port(&template));
        assert!(socket2::SockRef::from(&sibling).is_listener().unwrap());
        // Steered to the sibling (index 1) alone: every connection waits in its queue.
        crate::sys::steer_reuseport(std::os::fd::AsFd::as_fd(&template), &[1]).unwrap();
        let _clients: Vec<_> = (0..20)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port(&template))).unwrap())
            .collect();
        let queued = |fd: &OwnedFd| {
            let l = socket2::SockRef::from(fd);
            l.set_nonblocking(true).unwrap();
            (0..40).take_while(|_| l.accept().is_ok()).count()
        };
        assert_eq!((queued(&template), queued(&sibling)), (0, 20));
        // Without SO_REUSEPORT (systemd's sockets by default), or not TCP: shared as it is.
        let plain: OwnedFd = std::net::TcpListener::bind("127.0.0.1:0").unwrap().into();
        assert!(reuseport_sibling(&plain).unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("gracenet-sibling-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix: OwnedFd = std::os::unix::net::UnixListener::bind(&dir).unwrap().into();
        assert!(reuseport_sibling(&unix).unwrap().is_none());
        let _ = std::fs::remove_file(&dir);
    }

    // Linux only: steering is.
    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn a_clusters_first_listener_is_bound_alone_then_opened_to_its_siblings_only() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = inet_socket(any, Type::STREAM, Group::Open).unwrap();
        let addr = socket2::SockRef::from(&first)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap();
        // A second cluster's first listener on the same address: in use.
        let e = inet_socket(addr, Type::STREAM, Group::Open).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        // The primary's sibling joins the first one's group, after it (index 1).
        let sibling = reuseport_sibling(&first).unwrap().expect("a sibling");
        crate::sys::steer_reuseport(std::os::fd::AsFd::as_fd(&first), &[1]).unwrap();
        let _clients: Vec<_> = (0..10)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let queued = |fd: &OwnedFd| {
            let l = socket2::SockRef::from(fd);
            (0..20).take_while(|_| l.accept().is_ok()).count()
        };
        assert_eq!((queued(&first), queued(&sibling)), (0, 10));
        // A worker told to join (the first sent no copy) does, to the same group.
        let joined = inet_socket(addr, Type::STREAM, Group::Join).unwrap();
        crate::sys::steer_reuseport(std::os::fd::AsFd::as_fd(&first), &[2]).unwrap();
        let _more: Vec<_> = (0..10)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert_eq!((queued(&first), queued(&sibling), queued(&joined)), (0, 0, 10));
        // And the group is still closed to a new first listener.
        assert!(inet_socket(addr, Type::STREAM, Group::Open).is_err());
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
