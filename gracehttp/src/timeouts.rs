//! How long a connection may take at each stage: one value, given to
//! [`Server::timeouts`](crate::Server::timeouts).

use std::time::Duration;

/// How long an HTTP/1 connection that is between requests may stay open once the drain
/// begins.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_millis(500);
/// How long a client may take, from the connection's accept, to send its first request's
/// headers (a TLS handshake and an HTTP/2 preface included), and any later request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection with no request in flight may stay open (HTTP/1 keep-alive, or an
/// HTTP/2 connection with no open stream, PINGs or not) before it is closed (HTTP/2: GOAWAY).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection's timeouts: for its requests' headers, for idleness, and for idleness once
/// the drain has begun. The defaults are [`DEFAULT_HEADER_READ_TIMEOUT`] (10 s),
/// [`DEFAULT_IDLE_TIMEOUT`] (120 s) and [`DEFAULT_IDLE_GRACE`] (500 ms).
///
/// ```
/// use std::time::Duration;
/// let timeouts = gracehttp::ConnectionTimeouts::default()
///     .header_read(Duration::from_secs(5))
///     .idle(Duration::from_secs(30));
/// # let _ = timeouts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct ConnectionTimeouts {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) idle_grace: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        ConnectionTimeouts {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
        }
    }
}

impl ConnectionTimeouts {
    /// How long a client may take to send a request's headers (slowloris defence). For the
    /// first request the time counts from the accept, whatever the client does meanwhile: a
    /// TLS handshake, an HTTP/2 preface and settings, nothing at all. For a later request on
    /// an HTTP/1 keep-alive connection it counts from the request's first byte, and the
    /// connection is closed within 1.5 times it (its counters are checked every quarter of
    /// it, never per request); waiting between requests is the idle timeout's business.
    pub fn header_read(mut self, timeout: Duration) -> Self {
        self.header_read = timeout;
        self
    }

    /// How long a connection with no request in flight may stay open: an HTTP/1 keep-alive
    /// connection between requests, or an HTTP/2 connection with no open stream (PINGs do not
    /// count). Then it is closed; HTTP/2 first gets GOAWAY.
    pub fn idle(mut self, timeout: Duration) -> Self {
        self.idle = timeout;
        self
    }

    /// How long, once draining, an HTTP/1 connection with no request in flight and no bytes
    /// arriving may stay open before it is closed. A busy connection is not cut: its next
    /// response carries `Connection: close` (or, handed to the next process at a restart, it
    /// is not closed at all: see [`Server::hand_over_connections`](crate::Server::hand_over_connections)).
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }
}
