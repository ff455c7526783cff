//! gracehttp's errors: each names the input (address, file) and what was wrong with it.

use std::fmt;
use std::path::PathBuf;

/// Everything that can stop gracehttp from serving.
///
/// Its `Debug` form is its message followed by any cause the message does not already
/// include, one `caused by:` line each, as [`gracenet::Error`]'s: what
/// `fn main() -> Result<(), gracehttp::Error>` prints after `Error: `.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listening, inheriting or the restart lifecycle failed (see [`gracenet::Error`]).
    #[error(transparent)]
    Net(#[from] gracenet::Error),

    /// A TLS certificate or key file is missing, unreadable, or not what it should be.
    #[error("TLS {what} file {path}: {reason}", path = path.display())]
    TlsFile {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The certificate and key do not make a usable TLS configuration together.
    #[error("TLS configuration from {cert} and {key}: {reason}", cert = cert.display(), key = key.display())]
    TlsConfig {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason (a key that does not match the certificate, say).
        reason: String,
    },

    /// No server was added before serving.
    #[error("nothing to serve: add at least one address with Server::http or Server::https")]
    NoServers,

    /// [`Server::serve`](crate::Server::serve) was called from inside a tokio runtime (an
    /// `async fn main`, say), where it cannot start its own.
    #[error(
        "Server::serve was called inside a tokio runtime, which cannot start another: call it from a plain fn main, or await Server::run instead"
    )]
    InsideRuntime,

    /// [`Server::workers`](crate::Server::workers) was set on a server that cannot become a
    /// cluster's primary: one given a started generation, or run with
    /// [`Server::run`](crate::Server::run) (inside a runtime) instead of
    /// [`Server::serve`](crate::Server::serve).
    #[error(
        "Server::workers needs Server::serve (not Server::run) and a generation the server starts itself (not Server::generation): the cluster's primary starts before any runtime or generation"
    )]
    WorkersNeedServe,

    /// The lifecycle builder given to [`Server::lifecycle`](crate::Server::lifecycle) hands
    /// state of its own ([`hand_state`](gracenet::GenerationBuilder::hand_state)): the server
    /// holds the next process's generation, so nothing there could read that state.
    #[error(
        "Server::lifecycle was given a builder that hands state (GenerationBuilder::hand_state), which nothing in the next process could read: the server holds its generation. To hand your own state, start the generation yourself and serve on it with Server::generation"
    )]
    UnreadableState,

    /// Two sites were given the same address (a fixed port, or the same Unix socket): the
    /// second could only fail to listen, as if another process held it.
    #[error(
        "two sites listen on {addr}: an address is served by one site (serve both services from one, or give the second another address)"
    )]
    DuplicateSite {
        /// The address, as the second site gave it.
        addr: String,
    },

    /// The tokio runtime could not be started.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: gracenet's own message and causes.
            Error::Net(e) => fmt::Debug::fmt(e, f),
            // No other variant has a source(): its message is all there is.
            _ => fmt::Display::fmt(self, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `fn main() -> Result<(), gracehttp::Error>` prints: the message, not
    /// `Net(Bind { addr: .., source: Os { .. } })`.
    #[test]
    fn debug_is_the_message() {
        let in_use = Error::from(gracenet::Error::Bind {
            addr: "127.0.0.1:47012".into(),
            source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
        });
        let message = in_use.to_string();
        assert!(
            message.starts_with("cannot listen on 127.0.0.1:47012: "),
            "{message}"
        );
        assert_eq!(format!("{in_use:?}"), message);

        let tls = Error::TlsFile {
            what: "certificate",
            path: "/etc/app/cert.pem".into(),
            reason: "cannot read it: No such file or directory (os error 2)".into(),
        };
        assert_eq!(
            format!("{tls:?}"),
            "TLS certificate file /etc/app/cert.pem: cannot read it: No such file or directory (os error 2)"
        );
    }
}
