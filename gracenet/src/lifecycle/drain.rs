//! The drain, as an application sees it: [`Generation::phase`] (the full view) and the views
//! read from it, one word each (`is_draining`, `draining`, `drain_deadline`,
//! `drain_deadline_reached`), and the [`ConnectionGuard`] the drain waits for.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::Phase;
use super::generation::Generation;

impl Generation {
    /// The current phase: the full view of the drain (starting, serving, or draining, why,
    /// and until when). The drain's other views, all read from it: [`is_draining`]
    /// (a cheap check), [`draining`] (a future: the drain begins), [`drain_deadline`]
    /// (when it must end) and [`drain_deadline_reached`] (a future: it has ended).
    ///
    /// [`is_draining`]: Self::is_draining
    /// [`draining`]: Self::draining
    /// [`drain_deadline`]: Self::drain_deadline
    /// [`drain_deadline_reached`]: Self::drain_deadline_reached
    pub fn phase(&self) -> Phase {
        self.shared.phase.borrow().clone()
    }

    /// Whether this generation is draining (stopped accepting). One atomic load: cheap enough
    /// for every request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Resolves when the drain begins: this generation must stop accepting (a successor is
    /// serving, or a stop began). For accept loops not built on [`GracefulListener`](super::GracefulListener) (UDP
    /// servers, say) and background tasks.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut phase = self.shared.phase.subscribe();
        async move {
            let _ = phase.wait_for(|p| matches!(p, Phase::Draining { .. })).await;
        }
    }

    /// When unfinished work will be abandoned, once draining; `None` before the drain.
    pub fn drain_deadline(&self) -> Option<Instant> {
        match *self.shared.phase.borrow() {
            Phase::Draining { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Resolves when this generation's drain deadline passes: unfinished work is abandoned
    /// then. For background tasks that finish politely on [`draining`](Self::draining) and
    /// must be gone by this.
    pub fn drain_deadline_reached(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut phase = self.shared.phase.subscribe();
        async move {
            let deadline = match phase.wait_for(|p| matches!(p, Phase::Draining { .. })).await {
                Ok(p) => match *p {
                    Phase::Draining { deadline, .. } => deadline,
                    _ => return,
                },
                Err(_) => return,
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        }
    }

    /// A guard for one connection (or any piece of in-flight work): the drain waits until
    /// every guard is dropped, or the stop timeout.
    pub fn track(&self) -> ConnectionGuard {
        crate::metrics::connections(1);
        let guard = ConnectionGuard {
            _connection: self.shared.connections.subscribe(),
            phase: self.shared.phase.subscribe(),
            cluster: crate::cluster::balance::worker_table().map(|_| self.shared.clone()),
        };
        guard.publish(0);
        guard
    }
}

/// Held for as long as one connection is open; the drain waits for every guard.
pub struct ConnectionGuard {
    _connection: watch::Receiver<()>,
    phase: watch::Receiver<Phase>,
    /// In a cluster worker: its open connections go to the shared load table as they change,
    /// so that the other workers' balance sees a worker whose connections just closed at once.
    cluster: Option<std::sync::Arc<super::shared::Shared>>,
}

impl std::fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("phase", &*self.phase.borrow())
            .finish_non_exhaustive()
    }
}

impl ConnectionGuard {
    /// A serving cluster worker's open connections (but `leaving` of them) into the load table.
    fn publish(&self, leaving: usize) {
        let Some(shared) = &self.cluster else {
            return;
        };
        if let Some((table, slot)) = crate::cluster::balance::worker_table()
            && *self.phase.borrow() == Phase::Serving
        {
            let open = shared.connections.receiver_count().saturating_sub(leaving);
            table.set_open(*slot, open as u64);
        }
    }
}

impl ConnectionGuard {
    /// Resolves when the generation starts draining, so a long-lived connection (a
    /// WebSocket, a stream) can finish politely.
    pub async fn draining(&mut self) {
        let _ = self.phase.wait_for(|p| matches!(p, Phase::Draining { .. })).await;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        crate::metrics::connections(-1);
        self.publish(1);
        if let Some(shared) = &self.cluster {
            shared.closed.notify_waiters();
        }
    }
}
