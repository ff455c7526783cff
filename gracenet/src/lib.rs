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
//!     // (`gracenet::Generation` does it on SIGUSR2), let it take over, then stop accepting.
//!     Ok(())
//! }
//! ```
//!
//! # What it does
//! - **Inherits** `LISTEN_FDS` / `LISTEN_PID` / `LISTEN_FDNAMES` once per process
//!   ([`registry::InheritedFds`]), checks every fd (open, a socket, listening or datagram), marks it
//!   close-on-exec and non-blocking, and removes the variables from the environment. A
//!   malformed value is an [`EnvError`] naming the variable and what was expected.
//! - **Listens, inheriting first** ([`registry::SocketRegistry`], [`listen`], [`listen_tcp`], [`listen_unix`],
//!   [`listen_udp`], [`listen_unix_datagram`], [`listen_named`]): an inherited socket whose real
//!   address (or `LISTEN_FDNAMES` name) matches is returned; otherwise a new one is bound. The
//!   address forms and their meanings are [`ListenAddr`]'s.
//! - **Hands the sockets on** ([`process::NextProcess`]): the program resolved from `argv[0]`
//!   at startup runs with the same arguments, directory and environment, the sockets at fds
//!   3.. and `LISTEN_PID` set to its own pid, and no other fd.
//! - **Runs the restart lifecycle** ([`Generation`], with the `tokio` feature): `SIGUSR2`
//!   starts the next process and hands over once it reports ready; a next process that fails
//!   or hangs is killed and reaped while this one keeps serving; `SIGTERM`/`SIGINT` stop
//!   accepting and drain until a deadline; Go grace's "ready" (`SIGTERM` to the parent) is
//!   spoken both ways. With [`GenerationBuilder::standby`] the next process is started ahead
//!   and only woken by the restart. `examples/echo.rs` is a complete server on it.
//! - **Tells systemd** (when `NOTIFY_SOCKET` is set): `READY=1` and `MAINPID=` when serving,
//!   `RELOADING=1` across a restart, `STOPPING=1` at a final stop, readable `STATUS=` lines.
//! - **Reports a restart's result** ([`Generation::restart`] resolves to the successor or the
//!   reason it failed) and answers `restart` and `status` on a private control socket
//!   ([`GenerationBuilder::control_socket`], client: [`control`]), so `systemctl reload` and
//!   deploy scripts learn when a restart failed.
//! - **Keeps one stable pid** when asked ([`supervise`]): a small first process that starts
//!   generation 1, forwards signals to whichever generation serves, watches and reaps every
//!   generation, keeps a copy of the sockets to start a new generation at once when the
//!   serving one crashes, and exits after the last generation; for systemd's main process,
//!   containers (pid 1), pid-tracking supervisors and terminals.
//! - **Logs** through `tracing` only, never printing: each event a fixed message with its
//!   values in fields (`stopped accepting generation=1 connections=3`), named alike across
//!   events: `generation` (the logging process's), `next` (the one being started), `pid` (the
//!   process the event is about), `error` / `reason` (why).
//!
//! Every socket gracenet returns is non-blocking: `O_NONBLOCK` is shared by all processes
//! holding the socket, and gracenet never clears it (a blocking `accept` in an old process
//! would keep taking connections after a restart). Use it with tokio ([`mod@tokio`]) or a poll
//! loop.
//!
//! Call [`registry()`] (or any `listen` function, or [`Generation::start`]) first in
//! `main`, before starting threads or a multi-threaded runtime (`#[tokio::main]` starts one
//! before your code runs: call it in a plain `fn main` and build the runtime after). The first
//! call checks the inherited fds (before anything else can open an fd at their numbers),
//! records the program and working directory a restart will use, and reads the inherited
//! environment variables. It removes them only while no other thread runs, because changing
//! the environment while another thread may read it is undefined behaviour; left in place,
//! they are harmless (`LISTEN_PID` names this process, so a subprocess ignores them all).
//! gracehttp's `Server::serve` does this for you.
//!
//! # The crate's layout
//! | where | what |
//! |---|---|
//! | the root | what a server author uses: [`Generation`], [`listen`] and its siblings, [`registry()`] (this process's sockets), [`supervise`], [`Error`] |
//! | [`mod@registry`] | the sockets a process owns ([`registry::SocketRegistry`]) and what it inherited |
//! | [`process`] | the program a restart runs, starting it with the sockets, the child's handle |
//! | [`control`] | the control socket's client: a restart with its result, the server's status (text or JSON) |
//! | [`mod@metrics`] | the figures recorded with the `metrics` feature, by name |
//! | [`mod@tokio`] | tokio versions of the stream listeners |
//! | [`vars`] | the environment variables' names |
//!
//! # Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio` | yes | tokio listener types ([`mod@tokio`]) and the restart lifecycle ([`Generation`] and its types) |
//! | `axum` | no | an `axum::serve::Listener` on gracenet's sockets, its connections tracked by the generation (`gracenet::axum`); implies `tokio` |
//! | `serde` | no | typed, versioned state for the hand-over (`gracenet::state::{encode, decode}`); implies `tokio` |
//! | `metrics` | no | figures an operator graphs (restarts by result and their latency, drains, hand-overs, the supervisor's crashes) recorded through the [`metrics`](https://docs.rs/metrics) facade, for the exporter the application installs: the table is in [`mod@metrics`] |
//!
//! Without default features gracenet is the std listeners, the inheritance and
//! [`process::NextProcess`], with no async runtime.
//!
//! # Platforms
//! Linux is the first platform: every feature, with `close_range`, `pipe2`, pidfd and
//! abstract Unix sockets. Other POSIX systems (macOS, the BSDs) use a portable path for the
//! same features, except the ones that have no equivalent there, which return an
//! `Unsupported` error: abstract Unix socket names (`unix:@name`) and [`supervise`] (it needs
//! Linux's child subreaper). The portable path also leaves the inherited environment
//! variables in place (it cannot tell whether other threads run; see above why that is
//! harmless). The portable path is tested on Linux by building with
//! `RUSTFLAGS='--cfg gracenet_portable'`; no other system is tested.

#![warn(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`) marks the items a feature adds; stable builds ignore it.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without tokio, the lifecycle, the cluster and the supervisor's protocol are not built: the
// helpers they share with what is (sys, sockets, the supervisor's messages) are partly unused.
#![cfg_attr(not(feature = "tokio"), allow(dead_code, unused_imports))]

mod addr;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod bind;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod cluster;
pub mod control;
mod env;
mod error;
mod inherited;
#[cfg(feature = "tokio")]
mod json;
#[cfg(feature = "tokio")]
mod lifecycle;
mod log;
pub mod metrics;
mod notify;
#[cfg(feature = "tokio")]
mod pidfile;
pub mod process;
mod readiness;
pub mod registry;
mod socket;
mod startup;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod state;
mod supervisor;
mod sys;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
pub mod vars;

use std::net::SocketAddr;
use std::path::Path;

pub use addr::ListenAddr;
#[cfg(feature = "tokio")]
pub use cluster::{Cluster, ClusterBuilder};
pub use error::{EnvError, Error, thread_error};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use lifecycle::{
    CLAIM_WINDOW, ConnectionGuard, DEFAULT_IDLE_START_LIMIT, DEFAULT_MAX_STATE, DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_TIMEOUT, FinalState, Generation, GenerationBuilder, GracefulListener, HandedConnection,
    InheritedConnections, InheritedState, MIN_READY_TIMEOUT, Outcome, Phase, RestartError, RestartRequest,
    RestartResult, StopReason, Successor,
};
pub use socket::LocalAddr;
pub use startup::registry;
pub use supervisor::{
    hold_signals, hold_supervisor_signals, should_supervise, supervise, unblock_in_this_thread,
};

use registry::StdStreamListener;

/// [`SocketRegistry::listen`](registry::SocketRegistry::listen) on this process's registry: a
/// TCP or Unix listener for an address string (`":8080"`, `"127.0.0.1:0"`,
/// `"unix:/run/app.sock"`), inherited if it can be.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen`](registry::SocketRegistry::listen).
pub fn listen(addr: &str) -> Result<StdStreamListener, Error> {
    registry()?.listen(addr)
}

/// [`SocketRegistry::listen_named`](registry::SocketRegistry::listen_named) on this process's
/// registry.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen_named`](registry::SocketRegistry::listen_named).
pub fn listen_named(name: &str, addr: &str) -> Result<StdStreamListener, Error> {
    registry()?.listen_named(name, addr)
}

/// [`SocketRegistry::listen_tcp`](registry::SocketRegistry::listen_tcp) on this process's
/// registry.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen_tcp`](registry::SocketRegistry::listen_tcp).
pub fn listen_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    registry()?.listen_tcp(addr)
}

/// [`SocketRegistry::listen_unix`](registry::SocketRegistry::listen_unix) on this process's
/// registry.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen_unix`](registry::SocketRegistry::listen_unix).
pub fn listen_unix(path: impl AsRef<Path>) -> Result<std::os::unix::net::UnixListener, Error> {
    registry()?.listen_unix(path)
}

/// [`SocketRegistry::listen_udp`](registry::SocketRegistry::listen_udp) on this process's
/// registry.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen_udp`](registry::SocketRegistry::listen_udp).
pub fn listen_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
    registry()?.listen_udp(addr)
}

/// [`SocketRegistry::listen_unix_datagram`](registry::SocketRegistry::listen_unix_datagram) on
/// this process's registry.
///
/// # Errors
/// As [`registry()`] and [`SocketRegistry::listen_unix_datagram`](registry::SocketRegistry::listen_unix_datagram).
pub fn listen_unix_datagram(path: impl AsRef<Path>) -> Result<std::os::unix::net::UnixDatagram, Error> {
    registry()?.listen_unix_datagram(path)
}

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
