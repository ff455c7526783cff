//! Cluster in a node: N worker processes of the program on the same listening sockets, under
//! one primary process (the [supervisor](crate::supervise) grown up). One worker failing loses
//! nothing: the others keep accepting on the same sockets while the primary starts its
//! replacement; a hung worker is noticed by its silence and replaced; a rolling restart
//! replaces the workers one at a time, each by its own restart, so state and connection
//! hand-over work per worker (TLS ticket keys need none: every worker has the same).
//!
//! ```no_run
//! # fn main() -> Result<(), gracenet::Error> {
//! // First thing in main: the primary runs until the service ends; a worker goes on.
//! if gracenet::should_supervise(true) {
//!     let code = gracenet::Cluster::builder().workers(4).run()?;
//!     std::process::exit(code);
//! }
//! // ... a worker: an ordinary generation (Generation::builder().start(), gracehttp::Server ...)
//! # Ok(()) }
//! ```
//!
//! The primary holds the listening sockets (from socket activation, or a copy from the first
//! worker, which binds them), keeps the stable pid (systemd's main process, a container's
//! pid 1), owns the control socket and the PID file, and:
//! - `SIGUSR2` or the control socket's `restart`: a rolling restart. Each worker in
//!   turn is asked to restart (`SIGUSR2`); once its successor is ready, the next one is. A
//!   worker whose restart fails stops the rollout: the workers already replaced keep their new
//!   process, the others their old one, all of them serve; the control client gets the
//!   failure and its reason. A restart asked for during a rollout runs after it.
//! - a worker that dies is replaced at once on the same sockets (a crash loop backs off, and
//!   5 crashes in 30 s end the cluster);
//! - a worker silent for the worker timeout (default [`DEFAULT_WORKER_TIMEOUT`]) is stopped
//!   (`SIGTERM`, `SIGKILL` half a second later) and replaced; so is one not ready within the
//!   ready timeout;
//! - with [`ClusterBuilder::max_requests`] or [`ClusterBuilder::max_memory`], a worker that has
//!   served that many requests or grown that big (each worker's threshold raised by its own
//!   0 to 10 %) is recycled: replaced by its own graceful restart, one worker at a time, never
//!   during a rolling restart or a stop;
//! - `SIGTTIN` / `SIGTTOU` or the control socket's `scale N` add or drain workers;
//! - `SIGTERM`, `SIGINT` or `SIGHUP` (a terminal closing) drain every worker, and the
//!   primary exits once all are gone.
//!
//! Every worker, and every worker's successor, has the same [secrets](secret): 32 random
//! bytes the primary makes when it starts ([`RANDOM_SECRET`]) and any the application gave it
//! ([`ClusterBuilder::secret`]), for what the workers must have alike (gracehttp derives its
//! TLS session ticket keys from the random bytes, so a client resumes on any worker).
//!
//! Each worker knows its slot (`GRACE_WORKER`), says it when ready, and sends a heartbeat
//! (`WATCHDOG=1`, with its open and accepted connections, the requests it served and its
//! resident memory, for `status` and recycling) from its tokio runtime; it leaves the control
//! socket and the PID file to the primary.

pub(crate) mod balance;
pub(crate) mod machine;
mod primary;
pub(crate) mod secret;
pub(crate) mod transfer;

pub use secret::{RANDOM_SECRET, secret};

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// How long a ready worker may stay silent before it is replaced, unless set otherwise
/// ([`ClusterBuilder::worker_timeout`]): gunicorn's default.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most workers a cluster runs ([`ClusterBuilder::workers`], `scale N`, `SIGTTIN`): each
/// has an entry in the primary's shared load table.
pub const MAX_WORKERS: usize = balance::MAX_SLOTS;

/// How often a worker sends its heartbeat when no worker timeout asks for more often.
pub(crate) const DEFAULT_HEARTBEAT: Duration = crate::startup::DEFAULT_HEARTBEAT;

/// A cluster's primary, to be run ([`Cluster::builder`]).
#[derive(Debug)]
pub struct Cluster;

impl Cluster {
    /// The settings of a cluster's primary: one worker per core unless told otherwise.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            workers: default_workers(),
            worker_timeout: Some(DEFAULT_WORKER_TIMEOUT),
            ready_timeout: crate::DEFAULT_READY_TIMEOUT,
            surge: 1,
            control_socket: None,
            pid_file: None,
            max_requests: None,
            max_memory: None,
            secrets: secret::Secrets::default(),
        }
    }
}

/// This process's slot in its cluster (from 0) when it is a cluster's worker, or a worker's
/// successor; `None` otherwise (and when the inherited environment is malformed: the error
/// comes from whatever reads it first).
pub fn worker_slot() -> Option<usize> {
    crate::startup::startup().ok()?.worker.map(|w| w.slot)
}

/// One worker per core the process may run on (at least 1).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The settings of a cluster's primary ([`Cluster::builder`]).
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub(crate) workers: usize,
    pub(crate) worker_timeout: Option<Duration>,
    pub(crate) ready_timeout: Duration,
    pub(crate) surge: usize,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) secrets: secret::Secrets,
}

impl ClusterBuilder {
    /// How many workers serve (at least 1; 0 means one per core; at most [`MAX_WORKERS`]:
    /// [`run`](Self::run) refuses more with [`Error::TooManyWorkers`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = if n == 0 { default_workers() } else { n };
        self
    }

    /// How long a ready worker may stay silent (no heartbeat) before it is replaced; `None`:
    /// never. At least 100 ms (shorter is taken as 100 ms); one too long for the clock to
    /// count to (`Duration::MAX`) never expires either. Default [`DEFAULT_WORKER_TIMEOUT`].
    pub fn worker_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.worker_timeout = timeout.map(|t| t.max(Duration::from_millis(100)));
        self
    }

    /// How long a worker the primary starts may take to be ready before it is replaced (and,
    /// twice over, how long a rolling restart waits for a worker's own restart); one too long
    /// for the clock to count to (`Duration::MAX`) never expires. Default
    /// [`DEFAULT_READY_TIMEOUT`](crate::DEFAULT_READY_TIMEOUT); at least
    /// [`MIN_READY_TIMEOUT`](crate::MIN_READY_TIMEOUT), as a generation's.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = crate::lifecycle::at_least_min_ready(timeout);
        self
    }

    /// How many workers restart at once in a rolling restart (each one more process while
    /// its successor starts). Default 1.
    pub fn surge(mut self, n: usize) -> Self {
        self.surge = n.max(1);
        self
    }

    /// The control socket's path: the primary answers `restart` (a rolling restart, with its
    /// result), `status` (every worker) and `scale N` on it; the workers leave it alone.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Recycling by requests: a worker that has served `n` requests (as counted by
    /// [`Generation::count_requests`](crate::Generation::count_requests); gracehttp counts
    /// each HTTP request) is replaced by its own graceful restart. Each worker's threshold is
    /// `n` plus its own 0 to 10 %, drawn when it starts, so workers do not recycle together.
    /// Looked at on each heartbeat; one worker recycles at a time, never during a rolling
    /// restart or a stop. `None` (the default): never.
    pub fn max_requests(mut self, n: Option<u64>) -> Self {
        self.max_requests = n.filter(|&n| n > 0);
        self
    }

    /// Recycling by memory: a worker whose resident memory (RSS, which it reads itself and
    /// sends with its heartbeat) reaches `bytes`, plus its own 0 to 10 %, is replaced by its
    /// own graceful restart, as with [`max_requests`](Self::max_requests). A worker already at
    /// its threshold at its first heartbeat (the limit is below a fresh worker's memory) is
    /// not recycled for memory, with a warning: its replacement would be at it too.
    /// `None` (the default): never.
    pub fn max_memory(mut self, bytes: Option<u64>) -> Self {
        self.max_memory = bytes.filter(|&n| n > 0);
        self
    }

    /// A secret for every worker: `bytes` the primary hands each worker it starts, and each
    /// worker its successor, read there with [`secret(name)`](crate::cluster::secret). For what
    /// the workers must have alike and is made once, in the primary (a certificate made at
    /// startup, say). Handed as a sealed, read-only memory file: never in the environment or on
    /// disk. A second secret of the same name replaces the first; [`RANDOM_SECRET`] is the
    /// primary's own.
    pub fn secret(mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        self.secrets.0.retain(|(n, _)| *n != name);
        self.secrets.0.push((name, bytes.into()));
        self
    }

    /// A PID file holding the primary's pid (the stable one) while it runs.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Runs this process as the cluster's primary until the service ends, and returns the
    /// exit code to exit with (0 after a stop, non-zero when a crash loop made it give up).
    /// Call it first thing in `main` when [`should_supervise`](crate::should_supervise)
    /// says yes, before any listener or thread exists
    /// ([`hold_supervisor_signals`](crate::hold_supervisor_signals) before anything that
    /// can take time).
    ///
    /// # Errors
    /// [`Error::Io`] when the notify socket, signal handlers or subreaper role cannot be set
    /// up; [`Error::Env`] for malformed socket-activation variables; [`Error::Bind`] or
    /// [`Error::Control`] for the control socket; [`Error::Spawn`] when the first worker
    /// cannot be started; [`Error::AlreadySupervised`] in a process a supervisor or a
    /// primary started (a worker would start a cluster of its own in each worker).
    pub fn run(self) -> Result<i32, Error> {
        if self.workers > MAX_WORKERS {
            return Err(Error::TooManyWorkers {
                asked: self.workers,
                max: MAX_WORKERS,
            });
        }
        crate::supervisor::refuse_if_supervised()?;
        crate::hold_supervisor_signals();
        let primary = primary::Primary::new(self);
        crate::supervisor::release_signals();
        primary?.run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_workers_than_a_cluster_runs_are_refused_before_anything_starts() {
        let e = Cluster::builder()
            .workers(MAX_WORKERS + 1)
            .run()
            .expect_err("refused");
        assert!(
            matches!(e, Error::TooManyWorkers { asked, max } if asked == MAX_WORKERS + 1 && max == MAX_WORKERS),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{} workers asked for: a cluster runs at most {MAX_WORKERS}",
                MAX_WORKERS + 1
            )
        );
    }
}
