//! gracehttp's errors: each names the input (address, file) and what was wrong with it.

use std::path::PathBuf;

/// Everything that can stop gracehttp from serving.
#[derive(Debug, thiserror::Error)]
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

    /// The tokio runtime could not be started.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}
