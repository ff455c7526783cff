//! What a request handler can learn about the server's drain: whether it has begun (for a
//! health check that answers "draining"), and a future that resolves when it does (for a
//! WebSocket or stream to close politely).

use gracenet::{ConnectionGuard, Generation};

/// The drain signal, in every request's extensions
/// (`req.extensions().get::<gracehttp::Drain>()`) when the server is asked for them
/// ([`Server::request_extensions`](crate::Server::request_extensions)).
#[derive(Clone, Debug)]
pub struct Drain {
    generation: Generation,
}

impl Drain {
    pub(crate) fn new(generation: Generation) -> Drain {
        Drain { generation }
    }

    /// The generation drained.
    pub(crate) fn generation(&self) -> &Generation {
        &self.generation
    }

    /// Whether the drain is a restart's (a new process serves) or a stop's; `None` while the
    /// drain's reason is not yet published (gracenet sets the drain's flag first).
    pub(crate) fn restarting(&self) -> Option<bool> {
        match self.generation.phase() {
            gracenet::Phase::Draining { reason, .. } => {
                Some(matches!(reason, gracenet::StopReason::Restarted { .. }))
            }
            _ => None,
        }
    }

    /// Whether this process has stopped accepting (a restart handed over, or a stop began).
    /// A health check answering 503 now lets a load balancer move away early (lame duck).
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.generation.is_draining()
    }

    /// Resolves when the drain begins ([`Generation::draining`]).
    pub async fn draining(&self) {
        self.generation.draining().await
    }

    /// When unfinished work will be abandoned, once draining ([`Generation::drain_deadline`]).
    pub fn drain_deadline(&self) -> Option<std::time::Instant> {
        self.generation.drain_deadline()
    }

    /// Resolves when the drain's deadline passes ([`Generation::drain_deadline_reached`]):
    /// what is still running then is abandoned.
    pub async fn drain_deadline_reached(&self) {
        self.generation.drain_deadline_reached().await
    }

    /// Holds the drain open (until the stop timeout at most) while the guard lives, for work
    /// that outlives its request, such as a task spawned by a handler. Upgraded connections
    /// (WebSockets) are tracked already.
    pub fn track(&self) -> ConnectionGuard {
        self.generation.track()
    }
}
