//! The restart lifecycle: one [`Generation`] per process, which starts the next one on
//! `SIGUSR2`, hands over once it is serving, and drains on `SIGTERM`/`SIGINT`.
//!
//! Split by role:
//!
//! | file | what |
//! |---|---|
//! | [`machine`] | decides everything: a pure state machine (starting → serving → draining → finished, the restart under way, the standby, the reply to each restart request); unit- and property-tested |
//! | `driver` | turns I/O into the machine's events and performs its actions (spawn, wake, kill, notify, close listeners, PID file, replies) |
//! | `child` | a next generation's process: starting it with the sockets and the channel, its priority limit, reaping a failed one |
//! | `shared` | what the handle and the driver share ([`Generation`]'s settings, phase, channels) |
//! | `builder` | [`GenerationBuilder`] and the start: the only place the driver is spawned |
//! | `generation` | the handle an application holds: listeners, restart, shutdown, wait |
//! | `ready`, `status` | [`Generation::ready`] (PID file, priority, systemd, the supervisor's copy, the parent), [`Generation::status`] |
//! | `drain` | the drain's views ([`Generation::phase`] and the rest) and [`ConnectionGuard`] |
//! | `transfer` | state and connections handed between generations, the application's side |
//! | `channel` | the parent-to-child channel's layout and its state section |
//! | `handover` | the connection frames on that channel, acknowledged |
//! | `sd_notify` | every line the lifecycle tells systemd, worded in one place |
//! | `graceful_listener` | an accept loop's end |
//! | `signals`, `standby` | the signal thread, and the standby it may wake |

mod backstop;
mod builder;
mod channel;
mod child;
mod drain;
mod driver;
mod generation;
mod graceful_listener;
mod handover;
mod heartbeat;
pub(crate) mod machine;
mod messages;
mod ready;
mod sd_notify;
mod shared;
mod signals;
mod standby;
mod status;
mod transfer;

use std::time::{Duration, Instant};

pub use builder::{DEFAULT_IDLE_START_LIMIT, DEFAULT_MAX_STATE, GenerationBuilder};
pub use drain::ConnectionGuard;
pub use generation::{Generation, RestartRequest};
pub use graceful_listener::GracefulListener;
pub use handover::{HandedConnection, InheritedConnections};
pub use transfer::{FinalState, InheritedState};

/// How long a new generation may take to report ready before it is killed.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest ready timeout taken (a generation's or a cluster worker's): no process
/// starts, listens and says it serves in less on a loaded host.
pub const MIN_READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `timeout`, or [`MIN_READY_TIMEOUT`] (said) if it is shorter.
pub(crate) fn at_least_min_ready(timeout: Duration) -> Duration {
    if timeout < MIN_READY_TIMEOUT {
        crate::log::warn!(
            asked_ms = timeout.as_millis() as u64,
            "a ready timeout below 1 s would fail restarts before the new process could say it serves: 1 s is taken"
        );
    }
    timeout.max(MIN_READY_TIMEOUT)
}

/// How long a stopping generation may drain (grace's httpdown default).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after [`Generation::ready`] the connections the previous generation hands over
/// wait for [`Generation::inherited_connections`]: past it, they are answered "not taken"
/// and stay with the previous generation (a program that takes no connections does not make
/// their clients wait out the previous generation's 10 s answer timeout).
pub const CLAIM_WINDOW: Duration = Duration::from_millis(200);

/// Where a generation is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Listening, not yet reported ready.
    Starting,
    /// Reported ready: serving, and the only generation accepting.
    Serving,
    /// Stop accepting; finish in-flight work by `deadline`.
    Draining {
        /// Why.
        reason: StopReason,
        /// When unfinished work is abandoned.
        deadline: Instant,
    },
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A new generation with this pid is serving on the same sockets.
    Restarted {
        /// The new generation's pid.
        successor: u32,
    },
    /// `SIGTERM`, `SIGINT` or [`Generation::shutdown`]: the server is going away.
    Shutdown,
}

/// How a generation ended, from [`Generation::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Whether it gave up on unfinished work (the stop timeout passed, or a second
    /// `SIGTERM`/`SIGINT` arrived) rather than finishing it.
    pub forced: bool,
    /// How many tracked connections were still open at the end.
    pub unfinished: usize,
}

/// The next generation, serving: what a successful restart produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Successor {
    /// Its pid.
    pub pid: u32,
    /// Its generation number.
    pub generation: u64,
}

/// Why a restart did not happen. Whatever the reason, the generation that was asked keeps
/// serving (or keeps stopping, if it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// The next generation could not be started, died, or was not ready in time.
    #[error("restart failed: {reason}; generation {generation} (pid {pid}) still serving")]
    Failed {
        /// The generation that is still serving.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// What went wrong, as logged.
        reason: String,
    },
    /// This generation is stopping: it starts no successor.
    #[error("generation {generation} (pid {pid}) is stopping: not restarting")]
    Stopping {
        /// This generation.
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// This generation handed over to `successor` before this request's restart could run
    /// (it was asked during the restart that did): ask the successor. The control socket's
    /// client does so by itself.
    #[error("generation {generation} (pid {pid}) has handed over to pid {successor}: ask it to restart")]
    HandedOver {
        /// This generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// The generation serving now.
        successor: u32,
    },
}

/// What [`Generation::restart`] resolves to.
pub type RestartResult = Result<Successor, RestartError>;
