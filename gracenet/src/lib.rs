//! Listening sockets that survive a restart.
//!
//! A server asks gracenet for its listeners instead of binding them. On a first start
//! gracenet binds them; in a process started by a restart (or by systemd socket activation)
//! it returns the very sockets the previous process was serving on, inherited as fds 3, 4, ...
//! with `LISTEN_FDS`. Connections waiting in a socket's backlog belong to the socket, so none
//! is lost while one process hands over to the next.
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Inherited if the previous process had it, bound otherwise.
//!     let listener = tokio::net::TcpListener::from_std(gracenet::listen_tcp("127.0.0.1:0".parse()?)?)?;
//!     let addr = listener.local_addr()?;
//!
//!     let client = tokio::spawn(async move {
//!         let mut c = tokio::net::TcpStream::connect(addr).await?;
//!         c.write_all(b"hello").await?;
//!         let mut echo = [0u8; 5];
//!         c.read_exact(&mut echo).await?;
//!         Ok::<_, std::io::Error>(echo)
//!     });
//!
//!     // An echo server (one connection, to keep the example short).
//!     let (mut conn, _) = listener.accept().await?;
//!     let mut buf = [0u8; 5];
//!     conn.read_exact(&mut buf).await?;
//!     conn.write_all(&buf).await?;
//!     assert_eq!(&client.await??, b"hello");
//!
//!     // At a restart: start the next process with every socket as fds 3, 4, ...
//!     // (`gracenet::listeners()?.spawn_next()?`), let it take over, then stop accepting.
//!     Ok(())
//! }
//! ```
//!
//! # What it does
//! - **Inherits** `LISTEN_FDS` / `LISTEN_PID` / `LISTEN_FDNAMES` once per process
//!   ([`InheritedFds`]), checks every fd (open, a socket, listening or datagram), marks it
//!   close-on-exec and non-blocking, and removes the variables from the environment. A
//!   malformed value is an [`EnvError`] naming the variable and what was expected.
//! - **Listens, inheriting first** ([`Listeners`], [`listen`], [`listen_tcp`], [`listen_unix`],
//!   [`listen_udp`], [`listen_unix_datagram`], [`listen_named`]): an inherited socket whose real
//!   address (or `LISTEN_FDNAMES` name) matches is returned; otherwise a new one is bound. The
//!   address forms and their meanings are [`ListenAddr`]'s.
//! - **Hands the sockets on** ([`Listeners::spawn_next`]): the program resolved from `argv[0]`
//!   at startup runs with the same arguments, directory and environment, the sockets at fds
//!   3.. and `LISTEN_PID` set to its own pid, and no other fd.
//! - **Runs the restart lifecycle** ([`Generation`], with the `tokio` feature): `SIGUSR2`
//!   starts the next process and hands over once it reports ready; a next process that fails
//!   or hangs is killed and reaped while this one keeps serving; `SIGTERM`/`SIGINT` stop
//!   accepting and drain until a deadline; Go grace's "ready" (`SIGTERM` to the parent) is
//!   spoken both ways. `examples/echo.rs` is a complete server on it.
//! - **Tells systemd** (when `NOTIFY_SOCKET` is set): `READY=1` and `MAINPID=` when serving,
//!   `RELOADING=1` across a restart, `STOPPING=1` at a final stop, readable `STATUS=` lines.
//! - **Keeps one stable pid** when asked ([`supervise`]): a small first process that starts
//!   generation 1, forwards signals to whichever generation serves, reaps everything, and
//!   exits with the last generation's status; for containers (pid 1), pid-tracking
//!   supervisors and terminals.
//!
//! Every socket gracenet returns is non-blocking: `O_NONBLOCK` is shared by all processes
//! holding the socket, and gracenet never clears it (a blocking `accept` in an old process
//! would keep taking connections after a restart). Use it with tokio ([`mod@tokio`]) or a poll
//! loop.
//!
//! Call [`listeners`] (or any `listen` function) early in `main`, before starting threads:
//! it reads and removes the environment variables, and records the program and working
//! directory a restart will use.

#![warn(missing_docs)]

mod addr;
mod bind;
mod env;
mod error;
#[cfg(feature = "tokio")]
mod generation;
mod inherited;
mod listeners;
mod notify;
#[cfg(feature = "tokio")]
mod pidfile;
#[cfg(feature = "tokio")]
mod readiness;
#[cfg(feature = "tokio")]
mod signals;
mod socket;
mod spawn;
mod supervisor;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::net::SocketAddr;
use std::path::Path;

pub use addr::ListenAddr;
pub use env::{FIRST_INHERITED_FD, GRACE_GENERATION, GRACE_READY_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};
pub use error::{EnvError, Error};
#[cfg(feature = "tokio")]
pub use generation::{
    ConnectionGuard, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT, Generation, GenerationBuilder,
    GracefulListener, Outcome, Phase, StopReason,
};
pub use inherited::{InheritedFds, Origin};
pub use listeners::{Listener, Listeners, listeners};

pub use notify::NOTIFY_SOCKET;
pub use socket::{LocalAddr, SocketKind};
pub use spawn::{ChildProcess, Executable, NextProcess};
pub use supervisor::{GRACE_SUPERVISOR, should_supervise, supervise};

/// [`Listeners::listen`] on this process's registry: a TCP or Unix listener for an address
/// string (`":8080"`, `"127.0.0.1:0"`, `"unix:/run/app.sock"`), inherited if it can be.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen`].
pub fn listen(addr: &str) -> Result<Listener, Error> {
    listeners()?.listen(addr)
}

/// [`Listeners::listen_named`] on this process's registry.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen_named`].
pub fn listen_named(name: &str, addr: &str) -> Result<Listener, Error> {
    listeners()?.listen_named(name, addr)
}

/// [`Listeners::listen_tcp`] on this process's registry.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen_tcp`].
pub fn listen_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    listeners()?.listen_tcp(addr)
}

/// [`Listeners::listen_unix`] on this process's registry.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen_unix`].
pub fn listen_unix(path: impl AsRef<Path>) -> Result<std::os::unix::net::UnixListener, Error> {
    listeners()?.listen_unix(path)
}

/// [`Listeners::listen_udp`] on this process's registry.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen_udp`].
pub fn listen_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
    listeners()?.listen_udp(addr)
}

/// [`Listeners::listen_unix_datagram`] on this process's registry.
///
/// # Errors
/// As [`listeners`] and [`Listeners::listen_unix_datagram`].
pub fn listen_unix_datagram(path: impl AsRef<Path>) -> Result<std::os::unix::net::UnixDatagram, Error> {
    listeners()?.listen_unix_datagram(path)
}
