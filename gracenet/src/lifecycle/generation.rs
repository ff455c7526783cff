//! The handle an application holds, [`Generation`]: its listeners, restart, shutdown and
//! end. Its other roles have files of their own, each an `impl Generation`: `builder` (the
//! settings and the start), `ready`, `drain` (the drain's views and the connection guard),
//! `transfer` (state and connections handed between generations) and `status`.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::graceful_listener::GracefulListener;
use super::machine::StopCause;
use super::shared::Shared;
use super::signals::Request;
use super::{Outcome, RestartError, RestartResult, StopReason};
use crate::error::Error;
use crate::registry::{SocketRegistry, StdStreamListener};

/// This process's generation of the server. Cheap to clone; every clone is the same
/// generation.
///
/// ```no_run
/// # async fn run() -> Result<(), gracenet::Error> {
/// let generation = gracenet::Generation::start()?;
/// let mut listener = generation.listen(":8080")?;
/// generation.ready()?; // accepting: the previous generation may stop now
/// while let Some(conn) = listener.accept().await {
///     let guard = generation.track(); // the drain waits for it
///     tokio::spawn(async move {
///         // serve `conn` ...
///         drop((conn, guard));
///     });
/// }
/// drop(listener); // stopped accepting: a restart handed over, or a stop began
/// let outcome = generation.wait().await; // in-flight connections finished, or the deadline
/// # let _ = outcome;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Generation {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.shared.number)
            .field("phase", &*self.shared.phase.borrow())
            .finish()
    }
}

impl Generation {
    /// This generation's number: 1 for the first process, one more per restart.
    pub fn number(&self) -> u64 {
        self.shared.number
    }

    /// The pid of the process this one took over from when it was started to do so (the
    /// previous generation, or a Go grace parent that holds the same sockets); `None` for a
    /// first start, systemd's socket activation, a supervisor's crash restart, or a parent
    /// that only set `LISTEN_FDS`. What grace's "Graceful handoff … old pid" line names.
    pub fn previous_pid(&self) -> Option<u32> {
        self.shared.startup.previous
    }

    /// This process's slot in a cluster (from 0), when it is a cluster's worker
    /// ([`crate::cluster`]); `None` otherwise.
    pub fn worker_slot(&self) -> Option<usize> {
        self.shared.startup.worker.map(|w| w.slot)
    }

    /// Counts `n` more requests (or other units of work) served by this process: a cluster's
    /// worker reports the count in its heartbeat, `status` shows it per worker, and
    /// [`ClusterBuilder::max_requests`](crate::ClusterBuilder::max_requests) replaces a worker
    /// once it passes the limit. gracehttp counts each HTTP request itself; a raw gracenet
    /// server calls this once per request it serves. A relaxed atomic add in this process:
    /// cheap enough for every request.
    pub fn count_requests(&self, n: u64) {
        self.shared
            .served
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The requests counted so far in this process ([`count_requests`](Self::count_requests));
    /// each process of the server counts from 0.
    pub fn requests_served(&self) -> u64 {
        self.shared.served.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The registry of sockets, for kinds [`listen`](Self::listen) does not cover (UDP,
    /// Unix datagram). Stop using them when [`draining`](Self::draining) resolves.
    pub fn registry(&self) -> &'static SocketRegistry {
        self.shared.registry()
    }

    /// A listener for `addr` (inherited if it can be, see [`SocketRegistry::listen`]) whose
    /// [`accept`](GracefulListener::accept) ends when this generation stops accepting.
    ///
    /// # Errors
    /// As [`SocketRegistry::listen`]; [`Error::Io`] when registering with tokio fails.
    pub fn listen(&self, addr: &str) -> Result<GracefulListener, Error> {
        self.graceful(self.registry().listen(addr)?, addr)
    }

    /// Like [`listen`](Self::listen), taking an inherited socket by its `LISTEN_FDNAMES` name.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub fn listen_named(&self, name: &str, addr: &str) -> Result<GracefulListener, Error> {
        self.graceful(self.registry().listen_named(name, addr)?, addr)
    }

    /// A listener the application makes itself, registered under `name` and passed on at
    /// restarts; in a process that inherited `name`, the inherited socket (see
    /// [`SocketRegistry::adopt`]).
    ///
    /// # Errors
    /// As [`SocketRegistry::adopt`]; [`Error::Io`] when registering with tokio fails.
    pub fn adopt<L, F>(&self, name: &str, make: F) -> Result<GracefulListener, Error>
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L>,
    {
        self.graceful(self.registry().adopt(name, make)?, name)
    }

    pub(crate) fn graceful(
        &self,
        listener: StdStreamListener,
        addr: &str,
    ) -> Result<GracefulListener, Error> {
        let local = listener.local_addr().map_err(|source| Error::Io {
            what: format!("cannot read the address of the listener for {addr}"),
            source,
        })?;
        let inner = crate::tokio::StreamListener::from_std(listener).map_err(|source| Error::Io {
            what: format!("cannot register the listener for {addr} with tokio"),
            source,
        })?;
        Ok(GracefulListener::new(
            inner,
            local,
            self.shared.phase.subscribe(),
            self.shared.accepting.subscribe(),
            self.shared.clone(),
        ))
    }

    /// Starts the next generation, as `SIGUSR2` does. The request is sent at once; await the
    /// returned [`RestartRequest`] to learn the result: the successor once it serves, or why
    /// the restart failed (this generation then keeps serving).
    ///
    /// ```no_run
    /// # async fn f(generation: gracenet::Generation) {
    /// match generation.restart().await {
    ///     Ok(next) => println!("generation {} serves with pid {}", next.generation, next.pid),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn restart(&self) -> RestartRequest {
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.requests.send(Request::Restart { reply: Some(tx) });
        RestartRequest {
            reply: rx,
            generation: self.shared.number,
        }
    }

    /// [`restart`](Self::restart) for a request asked again after the generation it was first
    /// asked of handed over to this one (the control socket's `retry`): it joins a restart
    /// under way instead of waiting for one of its own.
    pub(crate) fn restart_rejoining(&self) -> RestartRequest {
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.requests.send(Request::Rejoin { reply: tx });
        RestartRequest {
            reply: rx,
            generation: self.shared.number,
        }
    }

    /// Stops this generation, as `SIGTERM` does.
    pub fn shutdown(&self) {
        let _ = self.shared.requests.send(Request::Stop {
            cause: StopCause::Call,
            sender: None,
        });
    }

    /// Waits until this generation has stopped and drained (or given up at the stop
    /// timeout). The application returns from `main` after it.
    pub async fn wait(&self) -> Outcome {
        let mut outcome = self.shared.outcome.subscribe();
        loop {
            if let Some(o) = *outcome.borrow_and_update() {
                return o;
            }
            if outcome.changed().await.is_err() {
                // The driver is gone without an outcome: it cannot happen while `self` holds
                // the sender, but do not hang if it does.
                return Outcome {
                    reason: StopReason::Shutdown,
                    forced: true,
                    unfinished: self.shared.connections.receiver_count(),
                };
            }
        }
    }
}

/// A restart asked for by [`Generation::restart`]: already under way; await it for the result.
#[derive(Debug)]
pub struct RestartRequest {
    reply: oneshot::Receiver<RestartResult>,
    generation: u64,
}

impl std::future::IntoFuture for RestartRequest {
    type Output = RestartResult;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = RestartResult> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.reply.await.unwrap_or(Err(RestartError::Stopping {
                generation: self.generation,
                pid: std::process::id(),
            }))
        })
    }
}
