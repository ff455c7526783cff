//! Settings for a [`Generation`] ([`GenerationBuilder`]) and its start: the only place the
//! lifecycle's driver is spawned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::driver::Driver;
use super::generation::Generation;
use super::shared::{Settings, Shared};
use super::standby::SharedStandby;
use super::{DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT, Phase};
use crate::error::Error;
use crate::notify::Notifier;

/// The most state bytes a generation accepts by default.
pub const DEFAULT_MAX_STATE: u64 = 256 * 1024 * 1024;

/// How long a next generation started at idle CPU priority may stay there by default (see
/// [`GenerationBuilder::idle_start_limit`]).
pub const DEFAULT_IDLE_START_LIMIT: Duration = Duration::from_millis(100);

/// Settings for [`Generation`]; start one with [`GenerationBuilder::start`].
#[derive(Clone, Default)]
#[must_use = "a GenerationBuilder does nothing until start() is called"]
pub struct GenerationBuilder {
    settings: Settings,
}

impl std::fmt::Debug for GenerationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationBuilder")
            .field("ready_timeout", &self.settings.ready_timeout)
            .field("stop_timeout", &self.settings.stop_timeout)
            .field("pid_file", &self.settings.pid_file)
            .field("control_socket", &self.settings.control_socket)
            .field("hands_state", &self.settings.state.is_some())
            .field("max_state", &self.settings.max_state)
            .field("idle_start", &self.settings.idle_start)
            .field("idle_start_limit", &self.settings.idle_start_limit)
            .field("standby", &self.settings.standby)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            pid_file: None,
            control_socket: None,
            state: None,
            max_state: DEFAULT_MAX_STATE,
            handle_signals: true,
            announce: true,
            idle_start: true,
            idle_start_limit: DEFAULT_IDLE_START_LIMIT,
            standby: false,
        }
    }
}

impl GenerationBuilder {
    /// How long the next generation may take to report ready before it is killed and this
    /// one keeps serving. Default 30 s. At least [`MIN_READY_TIMEOUT`](super::MIN_READY_TIMEOUT) (1 s): a shorter one
    /// is taken as that, with a warning (0 made every restart fail before the new process
    /// could say it serves).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.settings.ready_timeout = super::at_least_min_ready(timeout);
        self
    }

    /// How long a stopping generation may drain before unfinished work is abandoned.
    /// Default 60 s. Kept even when the application blocks its runtime: 5 s past it, a
    /// thread of gracenet's own ends the process by the stop signal's default action.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.settings.stop_timeout = timeout;
        self
    }

    /// Keeps `path` naming the serving process: written (atomically) when this generation
    /// is ready, taken over by the next, removed at a final stop.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.pid_file = Some(path.into());
        self
    }

    /// Answers on a Unix socket at `path` (mode 0600, the server's user and root only): a
    /// `restart` there returns the restart's result, which a signal cannot, and `status`
    /// the server's state. Client: [`control::Client`](crate::control::Client). The socket is passed on at every
    /// restart; the serving generation answers.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.control_socket = Some(path.into());
        self
    }

    /// Hands application state to the next generation at each restart, twice: `state` (an
    /// async function: it may lock a `tokio::sync::Mutex`) is called when the next process
    /// has been started, and its bytes, the snapshot, are streamed to it; it is called again
    /// once this generation's drain has ended, and those bytes, the final state, follow.
    ///
    /// **Every write this generation acknowledged before its drain ended is in the final
    /// state the next generation receives, or the next generation is told it did not come.**
    ///
    /// The next generation reads the snapshot with [`Generation::inherited_state`] before it
    /// says ready, and may [`refuse`](Generation::refuse) it (the restart then fails, and
    /// this generation keeps serving); once it serves, it awaits the final state
    /// ([`InheritedState::final_state`](super::InheritedState::final_state)) and merges it
    /// with what it wrote meanwhile; its own final state waits for that merge (the
    /// [`FinalState`](super::FinalState) dropped; at most its stop and ready timeouts), so
    /// restarts in quick succession pass every write on. Each hand-over is bounded by the
    /// ready timeout: a `state` that stalls, or a next generation that does not read, cannot
    /// hold the restart or the exit. A drain cut short by the stop timeout ends with requests
    /// still running: a write they acknowledge after the final state was taken is not in it.
    /// Heavy synchronous work belongs in `tokio::task::spawn_blocking` inside `state`. Typed
    /// state: `gracenet::state::{encode, decode}` (feature `serde`).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), gracenet::Error> {
    /// let notes = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<u8>::new()));
    /// let handed = notes.clone();
    /// let generation = gracenet::Generation::builder()
    ///     .hand_state(move || {
    ///         let notes = handed.clone();
    ///         async move { notes.lock().await.clone() }
    ///     })
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    pub fn hand_state<F, Fut>(mut self, state: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
    {
        self.settings.state = Some(Arc::new(move || Box::pin(state())));
        self
    }

    /// Whether a [`hand_state`](Self::hand_state) provider is set: a library that would hand
    /// state of its own (gracehttp's TLS session ticket keys) leaves the application's alone.
    pub fn hands_state(&self) -> bool {
        self.settings.state.is_some()
    }

    /// The most bytes of handed-over state this generation accepts (default 256 MiB), for
    /// the snapshot and the final state each; more is an error from
    /// [`Generation::inherited_state`] or [`InheritedState::final_state`](super::InheritedState::final_state).
    pub fn max_state(mut self, bytes: u64) -> Self {
        self.settings.max_state = bytes;
        self
    }

    /// Whether to handle `SIGUSR2`, `SIGTERM` and `SIGINT` (default yes). Without, only
    /// [`Generation::restart`] and [`Generation::shutdown`] drive it.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.settings.handle_signals = yes;
        self
    }

    /// Whether [`Generation::ready`] logs "generation N serving ADDRS with pid P" at info
    /// (default yes). An application that prints its own serving line (gracehttp prints Go
    /// grace's `Serving ... with pid P.`) turns it off, so the event is logged once; the line
    /// is then logged at debug.
    pub fn announce(mut self, yes: bool) -> Self {
        self.settings.announce = yes;
        self
    }

    /// Whether the next generation starts at idle CPU priority (default yes, where it will be
    /// allowed to return). Its start-up (`execve`, the dynamic loader, the runtime, the
    /// listeners: a few milliseconds of CPU) then runs only on CPU time this generation
    /// leaves, so a restart on a busy machine does not slow the requests being served; it
    /// returns to normal priority (every thread, its nice value kept) when it is ready,
    /// before this generation stops accepting. On a busy machine the restart takes longer:
    /// until the start-up has found its few milliseconds, or at most
    /// [`idle_start_limit`](Self::idle_start_limit).
    ///
    /// Linux only (`SCHED_IDLE`), and only where the kernel will let the new process return:
    /// with `CAP_SYS_NICE` (root, outside a user namespace) or an `RLIMIT_NICE` of at least
    /// 20 − nice (systemd: `LimitNICE=20`; a shell: `ulimit -e 20`); elsewhere, and for a
    /// process with a real-time or batch policy, the next generation starts at this one's
    /// priority, as with `false`.
    pub fn idle_start(mut self, yes: bool) -> Self {
        self.settings.idle_start = yes;
        self
    }

    /// How long the next generation may stay at idle CPU priority (see
    /// [`idle_start`](Self::idle_start)) before this one returns it to normal priority
    /// (default 100 ms): on a machine busy enough to leave it almost no CPU, it then starts at
    /// the usual share instead of running into the ready timeout.
    pub fn idle_start_limit(mut self, limit: Duration) -> Self {
        self.settings.idle_start_limit = limit;
        self
    }

    /// Whether to keep the next generation's process started ahead, as a standby (default
    /// no). Once this generation is ready it starts the program again (at idle CPU priority
    /// where it will be allowed to return), and the new process waits in its first call into
    /// gracenet ([`registry`](crate::registry()), [`Generation::start`], or any
    /// `listen`); a restart then wakes it instead of starting a process, so `execve`, the
    /// dynamic loader and whatever `main` does before that call are already done: the restart
    /// takes the rest of the start only (on a busy core, a fraction of the time).
    ///
    /// A restart starts a process afresh instead, and lets the standby go, when the program
    /// file at the path a restart runs has changed since (a deploy), when this generation has
    /// opened a socket since, when the standby has exited, or when, woken, it does not
    /// acknowledge the wake within 250 ms (stopped, or starved of CPU: it is killed, and the
    /// same restart goes on with a fresh process). Whatever `main` does before its
    /// first call into gracenet runs when the standby starts, not at the restart: read
    /// configuration after that call (gracenet's own first step is cheap). The standby shows
    /// in `ps` and in the control socket's `status`; it exits when this generation stops or
    /// hands over to another process, and whenever its channel to this one closes.
    pub fn standby(mut self, yes: bool) -> Self {
        self.settings.standby = yes;
        self
    }

    /// The settings of a cluster's primary that runs workers with this builder's settings: its
    /// control socket, PID file and ready timeout become the primary's (each worker leaves
    /// them alone). Add the number of workers and run it ([`ClusterBuilder::run`](crate::ClusterBuilder::run)).
    pub fn cluster(&self) -> crate::ClusterBuilder {
        let mut cluster = crate::Cluster::builder().ready_timeout(self.settings.ready_timeout);
        if let Some(path) = &self.settings.control_socket {
            cluster = cluster.control_socket(path);
        }
        if let Some(path) = &self.settings.pid_file {
            cluster = cluster.pid_file(path);
        }
        cluster
    }

    /// Starts this process's generation: reads the inherited environment (see
    /// [`registry`](crate::registry())), installs the signal handlers and runs the
    /// lifecycle on the current tokio runtime. Call it once, early in `main`.
    ///
    /// # Errors
    /// [`Error::Env`] for a malformed inherited environment; [`Error::AlreadyStarted`] on a
    /// second call; [`Error::Io`] when the signal handlers cannot be installed. Panics outside
    /// a tokio runtime.
    pub fn start(self) -> Result<Generation, Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        let mut settings = self.settings;
        if let (Some(path), Some(pid_file)) = (&settings.control_socket, &settings.pid_file)
            && same_path(pid_file, path)
        {
            return Err(Error::Control {
                path: path.clone(),
                kind: crate::control::ControlError::Setup,
                reason: "it is also the PID file's path: give each its own".into(),
            });
        }
        let startup = crate::startup::startup()?;
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyStarted);
        }
        if let Some(worker) = startup.worker {
            // A cluster's primary owns both, for every worker.
            let pid_file = settings.pid_file.take();
            let control_socket = settings.control_socket.take();
            if pid_file.is_some() || control_socket.is_some() {
                crate::log::debug!(
                    worker = worker.slot,
                    "the cluster's primary keeps the PID file and the control socket"
                );
            }
        }
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let standby = SharedStandby::default();
        let backstop = super::backstop::DrainBackstop::default();
        // A standby ignored the restart and stop signals until now: those held meanwhile are
        // discarded, then the handlers below replace the ignoring, or the program's own
        // actions are put back.
        startup.take_signals_from_standby(settings.handle_signals);
        if !settings.handle_signals
            && nix::sys::signal::SigSet::thread_get_mask()
                .is_ok_and(|held| held.contains(nix::sys::signal::Signal::SIGTERM))
        {
            // hold_signals() with handle_signals(false): nobody would ever take them.
            crate::log::warn!(
                "SIGTERM, SIGINT and SIGUSR2 are held (gracenet::hold_signals) and gracenet does not handle them (handle_signals(false)): unblock them where the program handles them (gracenet::unblock_in_this_thread), or they stay pending and the process never stops on them"
            );
        }
        if settings.handle_signals {
            super::signals::forward(super::signals::SignalRoutes {
                tx: requests_tx.clone(),
                standby: standby.clone(),
                registry: &startup.registry,
                backstop: backstop.clone(),
                stop_timeout: settings.stop_timeout,
                supervisor: startup.supervisor_pid(),
                worker: startup.worker.is_some(),
            })?;
        }
        let number = startup.generation;
        let (final_tx, final_rx) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            number,
            startup,
            settings,
            phase: watch::channel(Phase::Starting).0,
            connections: watch::channel(()).0,
            accepting: watch::channel(()).0,
            outcome: watch::channel(None).0,
            draining: AtomicBool::new(false),
            successor_channel: std::sync::Mutex::new(None),
            inbox: std::sync::Mutex::new(None),
            final_tx: std::sync::Mutex::new(Some(final_tx)),
            final_rx: std::sync::Mutex::new(Some(final_rx)),
            merged: std::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            state_read: AtomicBool::new(false),
            restart: AtomicBool::new(false),
            next_pid: std::sync::atomic::AtomicU32::new(0),
            standby_pid: std::sync::atomic::AtomicU32::new(0),
            standby,
            backstop,
            requests: requests_tx,
            notifier: Notifier::from_env(),
            accepted: Arc::default(),
            cannot_accept: std::sync::atomic::AtomicBool::new(false),
            served: super::shared::Padded::default(),
            closed: tokio::sync::Notify::new(),
        });
        crate::log::info!(generation = number, pid = std::process::id(), "starting");
        if std::process::id() == 1 {
            crate::log::warn!(
                generation = number,
                "this process is PID 1 (a container's init): it serves and stops as usual, but a restart is refused ({})",
                Error::RestartAsPid1
            );
        }
        if let Some(note) = &startup.not_grace_parent {
            note.log();
        }
        crate::metrics::generation_started(number);
        // Every line the lifecycle logs carries this process's pid; their `generation` field
        // names the generation.
        let span = tracing::info_span!("lifecycle", pid = std::process::id());
        tokio::spawn(Driver::new(shared.clone(), requests_rx).run().instrument(span));
        if let Some(worker) = shared.startup.worker {
            let primary = shared
                .startup
                .supervisor
                .as_ref()
                .and_then(|p| p.to_str())
                .and_then(|p| p.parse().ok());
            crate::cluster::balance::open_for_worker(primary, worker.load_fd, worker.slot);
            crate::cluster::transfer::set_dir(shared.notifier.as_ref().map(|n| n.var()));
            tokio::spawn(super::heartbeat::run(shared.clone(), worker.heartbeat));
        }
        let generation = Generation { shared };
        if let Some(path) = &generation.shared.settings.control_socket {
            let (listener, identity) = crate::control::server::listen(&generation, path)?;
            tokio::spawn(crate::control::server::serve(
                listener,
                generation.clone(),
                identity,
            ));
        }
        Ok(generation)
    }
}

/// Whether `a` and `b` name the same file (their directories resolved, the names compared).
fn same_path(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        (
            std::fs::canonicalize(dir).ok(),
            p.file_name().map(ToOwned::to_owned),
        )
    };
    a == b || resolved(a) == resolved(b)
}

impl Generation {
    /// Starts this process's generation with the default settings
    /// ([`GenerationBuilder::start`]).
    ///
    /// # Errors
    /// As [`GenerationBuilder::start`].
    pub fn start() -> Result<Generation, Error> {
        GenerationBuilder::default().start()
    }

    /// Settings: timeouts, PID file, signals.
    pub fn builder() -> GenerationBuilder {
        GenerationBuilder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_timeout_too_short_for_any_process_is_taken_as_the_minimum() {
        for (asked, taken) in [
            (Duration::ZERO, super::super::MIN_READY_TIMEOUT),
            (Duration::from_millis(999), super::super::MIN_READY_TIMEOUT),
            (Duration::from_secs(2), Duration::from_secs(2)),
            (Duration::MAX, Duration::MAX),
        ] {
            let builder = GenerationBuilder::default().ready_timeout(asked);
            assert_eq!(builder.settings.ready_timeout, taken, "{asked:?}");
            let cluster = crate::Cluster::builder().ready_timeout(asked);
            assert_eq!(cluster.ready_timeout, taken, "{asked:?}");
        }
    }
}
