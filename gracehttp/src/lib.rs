//! HTTP/1.1 and HTTP/2 servers, TLS included, that restart and stop without losing a request.
//!
//! The Rust counterpart of Go grace's `gracehttp.Serve`: several addresses, each with any
//! tower or hyper service (an axum `Router` works as is) and optional TLS, served by one call
//! that returns when the process is done. [`gracenet`] does the sockets and the restart
//! lifecycle; this crate does HTTP:
//!
//! - **Protocols**: HTTP/1.1 with keep-alive and HTTP/2 with prior knowledge on cleartext;
//!   HTTP/2 or HTTP/1.1 by ALPN over TLS (rustls, from PEM files or your own config).
//! - **TLS sessions that outlive the process**: session tickets carry the session (no cache
//!   on the server to outgrow) and their keys are handed to the next process at a restart, so
//!   clients resume instead of all making a full handshake with the new process ([`Tls`]).
//! - **Keep-alive connections that outlive the process**: at a restart, each cleartext
//!   HTTP/1.1 keep-alive connection is handed to the new process between two requests, open,
//!   with whatever the old process had read of the next request; the new process answers it.
//!   A keep-alive client never reconnects (when asked for with
//!   [`Server::hand_over_connections`]; TLS connections cannot be, and drain as below).
//! - **Drain without loss**: on a restart or stop, accepting stops; requests in flight finish;
//!   the next request on each HTTP/1 keep-alive connection not handed over is answered with
//!   `Connection: close`, so its client reconnects (to the new process) cleanly; HTTP/2
//!   connections get GOAWAY; an HTTP/1 connection is closed only after it has been idle for a
//!   short grace; at the stop timeout whatever remains is closed. Upgraded connections
//!   (WebSockets) are waited for, and handlers can watch the [`Drain`] (in each request's
//!   extensions, when asked for with [`Server::request_extensions`]) to close them politely
//!   or to answer a health check with "draining".
//! - **Logs** as grace writes them: `Serving 127.0.0.1:8080, [::]:8443 with pid 1234.`,
//!   `Graceful handoff of ... with new pid 1240 and old pid 1234.`, `Exiting pid 1234.`
//!   (Go grace's wording, values and all, in a `grace` span carrying the `generation`); every
//!   other event, as gracenet's, is a fixed message with its values in fields.
//!
//! ```no_run
//! use http_body_util::Full;
//!
//! fn main() -> Result<(), gracehttp::Error> {
//!     let hello = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(
//!             format!("hello from pid {}\n", std::process::id()),
//!         ))))
//!     }));
//!     // kill -USR2 <pid> restarts it; kill -TERM <pid> stops it; no request is lost.
//!     gracehttp::Server::new().http(":8080", hello).serve()
//! }
//! ```
//!
//! # Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | no | axum's `ConnectInfo<SocketAddr>` in each request from a TCP peer (with [`Server::request_extensions`]), so axum handlers extracting it work unchanged |
//! | `metrics` | no | gracenet's figures (restarts by result, drains, hand-overs) through the `metrics` facade, for the exporter the application installs (`gracenet::metrics` lists them; `examples/metrics.rs` serves them to Prometheus on the application's own site) |
//!
//! An axum `Router` is served without the feature. TLS is rustls with its aws-lc-rs provider
//! (post-quantum key exchange included); a C compiler builds it.

#![warn(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`) marks the items a feature adds; stable builds ignore it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod certificate;
mod connection;
mod drain;
mod error;
mod log;
mod peer_errors;
mod server;
mod service;
mod session_tickets;
mod site;
mod timeouts;
mod tls;

pub use drain::Drain;
pub use error::Error;
pub use gracenet;
pub use gracenet::tokio::PeerAddr;
pub use server::Server;
pub use service::{BoxError, FromHyper, HttpService, from_hyper};
pub use site::{Listening, Site};
pub use timeouts::{
    ConnectionTimeouts, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_GRACE, DEFAULT_IDLE_TIMEOUT,
};
pub use tls::Tls;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
