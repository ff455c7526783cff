//! The registry of sockets a process owns: inherited ones first, new ones bound on demand,
//! all of them handed on to the next process.
//!
//! Most programs use the process-wide registry through [`crate::listen`] and its siblings;
//! this module is for what they do not cover.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use socket2::Type;

use crate::addr::ListenAddr;
use crate::bind::{self, UnixName};
use crate::error::Error;
pub use crate::inherited::{InheritedFds, Origin};
use crate::process::Handoff;
pub use crate::socket::SocketKind;
use crate::socket::{LocalAddr, SocketInfo, Unusable};

/// A listening stream socket from [`SocketRegistry::listen`], as a std type: TCP or Unix, by
/// the address form. (Its tokio counterpart is [`tokio::StreamListener`](crate::tokio::StreamListener).)
///
/// Non-blocking, like every socket gracenet returns: the flag is shared with the other
/// generation holding the socket, and a blocking `accept` could not be told to stop at a
/// restart. Convert it to a tokio type with [`tokio::StreamListener::from_std`](crate::tokio::StreamListener::from_std).
#[derive(Debug)]
pub enum StdStreamListener {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix stream listener.
    Unix(std::os::unix::net::UnixListener),
}

impl StdStreamListener {
    /// The address the socket is bound to, as the kernel reports it.
    ///
    /// # Errors
    /// When `getsockname` fails, which it does not for a valid listener.
    pub fn local_addr(&self) -> std::io::Result<LocalAddr> {
        Ok(match self {
            StdStreamListener::Tcp(l) => LocalAddr::Inet(l.local_addr()?),
            StdStreamListener::Unix(l) => {
                let a = l.local_addr()?;
                match a.as_pathname() {
                    Some(p) => LocalAddr::UnixPath(p.to_owned()),
                    None => match crate::sys::abstract_name(&a) {
                        Some(n) => LocalAddr::UnixAbstract(n),
                        None => LocalAddr::UnixUnnamed,
                    },
                }
            }
        })
    }
}

impl AsFd for StdStreamListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StdStreamListener::Tcp(l) => l.as_fd(),
            StdStreamListener::Unix(l) => l.as_fd(),
        }
    }
}

/// One socket in the registry.
#[derive(Debug)]
struct Entry {
    /// The registry's own copy, which keeps the socket open for the next process even after
    /// the application drops its listener.
    fd: OwnedFd,
    info: SocketInfo,
    name: Option<String>,
    /// Whether the application has asked for it (inherited sockets start unclaimed).
    claimed: bool,
}

/// The sockets this process owns and will hand to the next one: inherited sockets first
/// (returned by `listen` calls whose address or name matches), then new ones bound on demand.
///
/// Most programs use the process-wide registry through the free functions
/// ([`listen`](crate::listen), [`listen_tcp`](crate::listen_tcp), ...). Inherited sockets that
/// no `listen` call asks for stay open and are passed on to the next process, so a version
/// that temporarily stops using a port does not lose it.
#[derive(Debug)]
pub struct SocketRegistry {
    entries: Mutex<Vec<Entry>>,
    origin: Origin,
    inherited: usize,
}

impl SocketRegistry {
    /// A registry that serves `listen` calls from `inherited` first.
    pub fn new(inherited: InheritedFds) -> Self {
        let origin = inherited.origin();
        let entries = inherited
            .sockets
            .into_iter()
            .map(|s| Entry {
                fd: s.fd,
                info: s.info,
                name: s.name,
                claimed: false,
            })
            .collect::<Vec<_>>();
        SocketRegistry {
            inherited: entries.len(),
            entries: Mutex::new(entries),
            origin,
        }
    }

    /// Where the inherited sockets came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Returns a listening stream socket for `addr`, in any form [`ListenAddr`] accepts
    /// (`":8080"`, `"127.0.0.1:0"`, `"localhost:8080"`, `"unix:/run/app.sock"`): the inherited
    /// one that matches, else a new one.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for a malformed address; [`Error::Bind`],
    /// [`Error::UnixPathInUse`] or [`Error::UnixPathNotSocket`] when a new socket cannot be
    /// bound.
    pub fn listen(&self, addr: &str) -> Result<StdStreamListener, Error> {
        self.listen_parsed(&addr.parse()?, None)
    }

    /// Like [`listen`](Self::listen), but an inherited socket named `name` (systemd's
    /// `FileDescriptorName=`, `LISTEN_FDNAMES`) is taken whatever its address; a socket bound
    /// here is passed on under that name.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub fn listen_named(&self, name: &str, addr: &str) -> Result<StdStreamListener, Error> {
        self.listen_parsed(&addr.parse()?, Some(name))
    }

    fn listen_parsed(&self, addr: &ListenAddr, name: Option<&str>) -> Result<StdStreamListener, Error> {
        let kind = if addr.is_ip() {
            SocketKind::TcpListener
        } else {
            SocketKind::UnixListener
        };
        let fd = self.claim(addr, kind, name)?;
        Ok(match kind {
            SocketKind::TcpListener => StdStreamListener::Tcp(fd.into()),
            _ => StdStreamListener::Unix(fd.into()),
        })
    }

    /// A listening socket the application makes itself (its own `TcpListener` or
    /// `UnixListener`, bound with whatever options it needs), registered under `name` so it
    /// is passed on at every restart. In a process that inherited a socket named `name`,
    /// that socket is returned and `make` is not called — which is what keeps a restart from
    /// failing with "address in use" on the port its predecessor still holds.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), gracenet::Error> {
    /// let registry = gracenet::registry()?;
    /// let listener = registry.adopt("api", || std::net::TcpListener::bind("127.0.0.1:8080"))?;
    /// # let _ = listener; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when `make` fails; [`Error::NotAListener`] when it returns something that
    /// is not a listening TCP or Unix stream socket.
    pub fn adopt<L, F>(&self, name: &str, make: F) -> Result<StdStreamListener, Error>
    where
        L: Into<OwnedFd>,
        F: FnOnce() -> std::io::Result<L>,
    {
        let make = || {
            make().map(Into::into).map_err(|source| Error::Io {
                what: format!("cannot make the listener {name:?}"),
                source,
            })
        };
        self.adopt_or(name, make).map(|(listener, _)| listener)
    }

    /// [`adopt`](Self::adopt) with a maker that returns gracenet's own error, and whether the
    /// socket was inherited.
    pub(crate) fn adopt_or(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<OwnedFd, Error>,
    ) -> Result<(StdStreamListener, bool), Error> {
        let mut entries = self.lock();
        let inherited = entries.iter().position(|e| {
            !e.claimed
                && e.name.as_deref() == Some(name)
                && matches!(e.info.kind, SocketKind::TcpListener | SocketKind::UnixListener)
        });
        let index = match inherited {
            Some(i) => {
                entries[i].claimed = true;
                crate::log::debug!(addr = %entries[i].info.addr, name, "using the inherited socket of that name");
                i
            }
            None => {
                let io = |what: String, source: std::io::Error| Error::Io { what, source };
                let fd = make()?;
                let not_a_listener = |found: String| Error::NotAListener {
                    name: name.to_owned(),
                    found,
                };
                let info = match crate::socket::inspect(fd.as_fd()) {
                    Ok(i) if matches!(i.kind, SocketKind::TcpListener | SocketKind::UnixListener) => i,
                    Ok(i) => return Err(not_a_listener(format!("a {}", i.kind))),
                    Err(Unusable::NotASocket(found)) => return Err(not_a_listener(found.to_owned())),
                    Err(Unusable::Unsupported(found)) => return Err(not_a_listener(found)),
                    Err(Unusable::NotOpen) => return Err(not_a_listener("not an open fd".to_owned())),
                    Err(Unusable::Errno(e)) => {
                        return Err(io(
                            format!("cannot inspect the socket made for {name:?}"),
                            e.into(),
                        ));
                    }
                };
                crate::socket::set_cloexec(&fd)
                    .and_then(|()| crate::socket::set_nonblocking(&fd))
                    .map_err(|e| io(format!("cannot prepare the listener {name:?}"), e.into()))?;
                entries.push(Entry {
                    fd,
                    info,
                    name: Some(name.to_owned()),
                    claimed: true,
                });
                entries.len() - 1
            }
        };
        let entry = &entries[index];
        let fd = entry.fd.try_clone().map_err(|source| Error::Io {
            what: format!("cannot duplicate the socket fd of {}", entry.info.addr),
            source,
        })?;
        let listener = match entry.info.kind {
            SocketKind::TcpListener => StdStreamListener::Tcp(fd.into()),
            _ => StdStreamListener::Unix(fd.into()),
        };
        Ok((listener, inherited.is_some()))
    }

    /// Shows the socket named `name` as `addr` (in [`addrs`](Self::addrs) and logs) instead
    /// of the address the kernel reports: for a socket bound at one path and moved to another.
    pub(crate) fn show_as(&self, name: &str, addr: LocalAddr) {
        if let Some(entry) = self.lock().iter_mut().find(|e| e.name.as_deref() == Some(name)) {
            entry.info.addr = addr;
        }
    }

    /// Returns a TCP listener on `addr`: the inherited one that matches, else a new one.
    /// An unspecified IPv6 address (`[::]`) is dual-stack; port 0 matches an inherited
    /// socket on the same IP with any port.
    ///
    /// # Errors
    /// [`Error::Bind`] when a new socket cannot be bound (address in use, permission).
    pub fn listen_tcp(&self, addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
        Ok(self.claim(&exact(addr), SocketKind::TcpListener, None)?.into())
    }

    /// Returns a Unix stream listener at `path`: the inherited one bound there, else a new
    /// one. A socket file left by a dead process is replaced.
    ///
    /// # Errors
    /// [`Error::UnixPathInUse`] when a live process listens there, [`Error::UnixPathNotSocket`]
    /// when the path is another kind of file, [`Error::Bind`] otherwise.
    pub fn listen_unix(&self, path: impl AsRef<Path>) -> Result<std::os::unix::net::UnixListener, Error> {
        let addr = ListenAddr::UnixPath(path.as_ref().to_owned());
        Ok(self.claim(&addr, SocketKind::UnixListener, None)?.into())
    }

    /// Returns a UDP socket bound to `addr`: the inherited one that matches, else a new one,
    /// so a DNS or syslog server keeps its socket (and queued datagrams) across restarts.
    ///
    /// # Errors
    /// [`Error::Bind`] when a new socket cannot be bound.
    pub fn listen_udp(&self, addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
        Ok(self.claim(&exact(addr), SocketKind::Udp, None)?.into())
    }

    /// Returns a Unix datagram socket bound to `path`: the inherited one, else a new one.
    ///
    /// # Errors
    /// As [`listen_unix`](Self::listen_unix).
    pub fn listen_unix_datagram(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<std::os::unix::net::UnixDatagram, Error> {
        let addr = ListenAddr::UnixPath(path.as_ref().to_owned());
        Ok(self.claim(&addr, SocketKind::UnixDatagram, None)?.into())
    }

    /// The addresses of the sockets the application has asked for, in registry order.
    pub fn addrs(&self) -> Vec<LocalAddr> {
        self.lock()
            .iter()
            .filter(|e| e.claimed)
            .map(|e| e.info.addr.clone())
            .collect()
    }

    /// The addresses of inherited sockets nobody has asked for; they are kept open and
    /// passed on at the next restart.
    pub fn unclaimed(&self) -> Vec<LocalAddr> {
        self.lock()
            .iter()
            .filter(|e| !e.claimed)
            .map(|e| e.info.addr.clone())
            .collect()
    }

    /// How many sockets this process inherited (`LISTEN_FDS`): none when its starter passed
    /// the variables with nothing in them (a supervisor's first generation binds its own).
    pub fn inherited(&self) -> usize {
        self.inherited
    }

    /// How many sockets the registry holds (claimed or not): the next process's `LISTEN_FDS`.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the registry holds no socket.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Closes the registry's copies of every socket: the generation has handed over or is
    /// stopping, and nothing is left to pass on. Never `shutdown(2)`, never unlinks a Unix
    /// socket path: the next process may be serving on the same sockets.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn close_all(&self) {
        self.lock().clear();
    }

    /// What the next process needs: copies of every socket and its name, in the order the
    /// next process receives them (fds 3, 4, ...): inherited sockets in their inherited order,
    /// then new ones in the order they were bound. Feed it to
    /// [`NextProcess::new`](crate::process::NextProcess::new).
    ///
    /// # Errors
    /// [`Error::Io`] when an fd cannot be duplicated (out of fds).
    pub fn handoff(&self) -> Result<Handoff, Error> {
        let entries = self.lock();
        let unclaimed: Vec<String> = entries
            .iter()
            .filter(|e| !e.claimed)
            .map(|e| e.info.addr.to_string())
            .collect();
        if !unclaimed.is_empty() {
            crate::log::debug!(
                count = unclaimed.len(),
                addrs = %unclaimed.join(", "),
                "passing on inherited sockets nobody asked for"
            );
        }
        entries
            .iter()
            .map(|e| {
                let fd = e.fd.try_clone().map_err(|source| Error::Io {
                    what: format!(
                        "cannot duplicate the socket fd of {} for the next process",
                        e.info.addr
                    ),
                    source,
                })?;
                Ok((fd, e.name.clone().unwrap_or_else(|| "unknown".to_owned())))
            })
            .collect::<Result<_, Error>>()
            .map(|sockets| Handoff { sockets })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock cannot leave the Vec half-updated (every change is
        // one push or one flag), so a poisoned lock's data is still good.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the inherited socket `addr` (or `name`) means, or binds a new one; returns a
    /// copy of its fd for the application.
    fn claim(&self, addr: &ListenAddr, kind: SocketKind, name: Option<&str>) -> Result<OwnedFd, Error> {
        let mut entries = self.lock();
        let resolved = addr.resolve()?;
        let by_name = name.and_then(|n| {
            entries
                .iter()
                .position(|e| !e.claimed && e.info.kind == kind && e.name.as_deref() == Some(n))
        });
        // A named request for any port does not take a socket inherited under another name:
        // that one belongs to the site of that name, which may ask for it next.
        let other_name = |e: &Entry| match (name, e.name.as_deref()) {
            (Some(want), Some(have)) => addr.any_port() && want != have,
            _ => false,
        };
        let found = by_name.or_else(|| {
            entries.iter().position(|e| {
                !e.claimed && e.info.kind == kind && !other_name(e) && addr.matches(&e.info.addr, &resolved)
            })
        });
        let index = match found {
            Some(i) => {
                entries[i].claimed = true;
                crate::log::debug!(addr = %entries[i].info.addr, %kind, "using an inherited socket");
                i
            }
            None => {
                let fd = bind_new(addr, kind, &resolved)?;
                let info = crate::socket::inspect(fd.as_fd()).map_err(|u| Error::Io {
                    what: format!("cannot read the address of the new socket for {addr}"),
                    source: u.into_io(),
                })?;
                entries.push(Entry {
                    fd,
                    info,
                    name: name.map(str::to_owned),
                    claimed: true,
                });
                entries.len() - 1
            }
        };
        let entry = &entries[index];
        entry.fd.try_clone().map_err(|source| Error::Io {
            what: format!("cannot duplicate the socket fd of {}", entry.info.addr),
            source,
        })
    }
}

/// A typed address means exactly what it says when binding, and Go's rules when matching.
fn exact(addr: SocketAddr) -> ListenAddr {
    if addr.ip().is_unspecified() && addr.is_ipv4() {
        // 0.0.0.0 binds IPv4 only; it still matches an inherited wildcard socket.
        ListenAddr::Ip(addr)
    } else {
        addr.into()
    }
}

fn bind_new(addr: &ListenAddr, kind: SocketKind, resolved: &[SocketAddr]) -> Result<OwnedFd, Error> {
    let ty = match kind {
        SocketKind::TcpListener | SocketKind::UnixListener => Type::STREAM,
        SocketKind::Udp | SocketKind::UnixDatagram => Type::DGRAM,
    };
    match addr {
        ListenAddr::UnixPath(p) => bind::unix(UnixName::Path(p), ty),
        ListenAddr::UnixAbstract(n) => bind::unix(UnixName::Abstract(n), ty),
        _ => {
            let mut last = None;
            for a in resolved {
                match bind::inet(*a, ty) {
                    Ok(fd) => return Ok(fd),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| Error::InvalidAddress {
                addr: addr.to_string(),
                reason: "it resolves to no address",
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inherited::InheritedSocket;

    fn inherited(sockets: Vec<(OwnedFd, Option<&str>)>) -> InheritedFds {
        InheritedFds::for_tests(
            sockets
                .into_iter()
                .map(|(fd, name)| InheritedSocket {
                    info: crate::socket::inspect(fd.as_fd()).unwrap(),
                    fd,
                    name: name.map(str::to_owned),
                })
                .collect(),
        )
    }

    fn tcp(addr: &str) -> OwnedFd {
        std::net::TcpListener::bind(addr).unwrap().into()
    }

    #[test]
    fn inherited_socket_is_returned_by_address_and_port_zero() {
        let a = tcp("127.0.0.1:0");
        let b = tcp("127.0.0.1:0");
        let port_a = std::net::TcpListener::from(a.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let port_b = std::net::TcpListener::from(b.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let reg = SocketRegistry::new(inherited(vec![(a, None), (b, None)]));
        assert_eq!(reg.unclaimed().len(), 2);
        // By exact address, out of order.
        let lb = reg.listen_tcp(port_b).unwrap();
        assert_eq!(lb.local_addr().unwrap(), port_b);
        // Port 0 takes the next unclaimed one on that IP.
        let la = reg.listen("127.0.0.1:0").unwrap();
        assert_eq!(la.local_addr().unwrap(), LocalAddr::Inet(port_a));
        assert!(reg.unclaimed().is_empty());
        // A third port-0 request binds a new socket.
        let lc = reg.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(lc.local_addr().unwrap(), port_a);
        assert_eq!(reg.addrs().len(), 3);
        // The application's copy accepts what reaches the inherited socket.
        let _c = std::net::TcpStream::connect(port_b).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lb.accept().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "queued connection never accepted"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn inherited_socket_is_returned_by_name_and_unasked_ones_are_kept() {
        let web = tcp("127.0.0.1:0");
        let admin = tcp("127.0.0.1:0");
        let admin_addr = std::net::TcpListener::from(admin.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let reg = SocketRegistry::new(inherited(vec![(web, Some("web")), (admin, Some("admin"))]));
        let l = reg.listen_named("admin", "127.0.0.1:1").unwrap();
        assert_eq!(l.local_addr().unwrap(), LocalAddr::Inet(admin_addr));
        assert_eq!(reg.unclaimed().len(), 1);
        let handoff = reg.handoff().unwrap();
        let names: Vec<&str> = handoff.sockets.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["web", "admin"]);
    }

    #[test]
    fn a_named_request_for_any_port_leaves_a_socket_inherited_under_another_name() {
        // Site a0 asks for 127.0.0.1:0, site a1 for its own port; both were inherited by name.
        let a1 = tcp("127.0.0.1:0");
        let a1_addr = std::net::TcpListener::from(a1.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let a0 = tcp("127.0.0.1:0");
        let a0_addr = std::net::TcpListener::from(a0.try_clone().unwrap())
            .local_addr()
            .unwrap();
        // a1 listed first: an address match alone would give it to a0.
        let reg = SocketRegistry::new(inherited(vec![(a1, Some("a1")), (a0, Some("a0"))]));
        let l0 = reg.listen_named("a0", "127.0.0.1:0").unwrap();
        assert_eq!(l0.local_addr().unwrap(), LocalAddr::Inet(a0_addr));
        let l1 = reg.listen_named("a1", &a1_addr.to_string()).unwrap();
        assert_eq!(l1.local_addr().unwrap(), LocalAddr::Inet(a1_addr));
        // A new name asking for any port binds anew rather than take a1's or a0's.
        let reg = SocketRegistry::new(inherited(vec![(tcp("127.0.0.1:0"), Some("a1"))]));
        let l2 = reg.listen_named("a2", "127.0.0.1:0").unwrap();
        assert_eq!(reg.unclaimed().len(), 1, "{:?}", l2.local_addr());
        // By exact address a differently named socket is still taken (it cannot be bound twice).
        let reg = SocketRegistry::new(inherited(vec![(tcp("127.0.0.1:0"), Some("http"))]));
        let addr = reg.unclaimed()[0].to_string();
        let l3 = reg.listen_named("web", &addr).unwrap();
        assert_eq!(l3.local_addr().unwrap().to_string(), addr);
    }

    #[test]
    fn new_sockets_are_nonblocking_and_cloexec() {
        let reg = SocketRegistry::new(InheritedFds::none());
        let l = reg.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(l.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        let flags = nix::fcntl::fcntl(&l, nix::fcntl::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let (fd, name) = reg.handoff().unwrap().sockets.pop().unwrap();
        assert_eq!(name, "unknown");
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn sockets_are_matched_by_kind_as_well_as_address() {
        // A TCP listener and a UDP socket on the same port (retrying until the UDP port is
        // free too), both inherited: each request gets its own kind, nothing new is bound.
        let (tcp, udp) = (0..20)
            .find_map(|_| {
                let tcp = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                let udp = std::net::UdpSocket::bind(tcp.local_addr().ok()?).ok()?;
                Some((tcp, udp))
            })
            .expect("a port free for both TCP and UDP");
        let addr = tcp.local_addr().unwrap();
        let reg = SocketRegistry::new(inherited(vec![(udp.into(), None), (tcp.into(), None)]));
        let t = reg.listen_tcp(addr).unwrap();
        assert_eq!(t.local_addr().unwrap(), addr);
        let u = reg.listen_udp(addr).unwrap();
        assert_eq!(u.local_addr().unwrap(), addr);
        assert!(reg.unclaimed().is_empty());
        assert_eq!(reg.len(), 2, "nothing new was bound");
    }

    /// A socket that cannot serve as a listener is a typed error naming what it is, not an
    /// I/O failure: no system call failed, the application handed over the wrong thing.
    #[test]
    fn adopting_what_is_not_a_listener_names_what_it_is() {
        let reg = SocketRegistry::new(InheritedFds::none());
        let err = reg
            .adopt("metrics", || std::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap_err();
        match &err {
            Error::NotAListener { name, found } => {
                assert_eq!(name, "metrics");
                assert_eq!(found, "a UDP socket");
            }
            other => panic!("expected NotAListener, got {other:?}"),
        }
        assert!(
            err.to_string().starts_with(
                "cannot adopt \"metrics\": the socket made for it is a UDP socket; expected a listening"
            ),
            "{err}"
        );
        // A TCP socket never set listening (connected, say).
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let err = reg
            .adopt("client", || std::net::TcpStream::connect(addr))
            .unwrap_err();
        assert!(
            matches!(&err, Error::NotAListener { found, .. } if found.contains("not listening")),
            "{err:?}"
        );
        assert_eq!(reg.len(), 0, "neither was registered");
    }
}
