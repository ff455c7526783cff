//! The handle an application holds: [`Generation`], its settings ([`GenerationBuilder`]) and
//! the guard that makes the drain wait for a connection ([`ConnectionGuard`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::driver::Driver;
use super::graceful_listener::GracefulListener;
use super::machine::StopCause;
use super::signals::Request;
use super::standby::SharedStandby;
use super::{
    DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT, Outcome, Phase, RestartError, RestartResult, StopReason,
};
use crate::error::Error;
use crate::notify::Notifier;
use crate::registry::{SocketRegistry, StreamListener};
use crate::startup::Startup;

/// Makes the state handed to the next generation (see [`GenerationBuilder::hand_state`]).
pub(super) type StateProvider = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The most state bytes a generation accepts by default.
pub const DEFAULT_MAX_STATE: u64 = 256 * 1024 * 1024;

/// How long a next generation started at idle CPU priority may stay there by default (see
/// [`GenerationBuilder::idle_start_limit`]).
pub const DEFAULT_IDLE_START_LIMIT: Duration = Duration::from_millis(100);

/// Settings for [`Generation`]; start one with [`GenerationBuilder::start`].
#[derive(Clone)]
#[must_use = "a GenerationBuilder does nothing until start() is called"]
pub struct GenerationBuilder {
    pub(super) ready_timeout: Duration,
    pub(super) stop_timeout: Duration,
    pub(super) pid_file: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    pub(super) state: Option<StateProvider>,
    max_state: u64,
    handle_signals: bool,
    announce: bool,
    pub(super) idle_start: bool,
    pub(super) idle_start_limit: Duration,
    pub(super) standby: bool,
}

impl std::fmt::Debug for GenerationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationBuilder")
            .field("ready_timeout", &self.ready_timeout)
            .field("stop_timeout", &self.stop_timeout)
            .field("pid_file", &self.pid_file)
            .field("control_socket", &self.control_socket)
            .field("hands_state", &self.state.is_some())
            .field("max_state", &self.max_state)
            .field("idle_start", &self.idle_start)
            .field("idle_start_limit", &self.idle_start_limit)
            .field("standby", &self.standby)
            .finish_non_exhaustive()
    }
}

impl Default for GenerationBuilder {
    fn default() -> Self {
        GenerationBuilder {
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
    /// one keeps serving. Default 30 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a stopping generation may drain before unfinished work is abandoned.
    /// Default 60 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Keeps `path` naming the serving process: written (atomically) when this generation
    /// is ready, taken over by the next, removed at a final stop.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Answers on a Unix socket at `path` (mode 0600, the server's user and root only): a
    /// `restart` there returns the restart's result, which a signal cannot, and `status`
    /// the server's state. Client: [`control::Client`](crate::control::Client). The socket is passed on at every
    /// restart; the serving generation answers.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Hands application state to the next generation at each restart: `state` is called
    /// (on a blocking thread) when the next process has been started, and its bytes are
    /// streamed to it; the next generation reads them with [`Generation::inherited_state`]
    /// before it says ready, and may [`refuse`](Generation::refuse) them (the restart then
    /// fails, and this generation keeps serving). Bounded by the ready timeout: a `state`
    /// that stalls, or a next generation that does not read, cannot hold the restart.
    pub fn hand_state(mut self, state: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Self {
        self.state = Some(Arc::new(state));
        self
    }

    /// Whether a [`hand_state`](Self::hand_state) provider is set: a library that would hand
    /// state of its own (gracehttp's TLS session ticket keys) leaves the application's alone.
    pub fn hands_state(&self) -> bool {
        self.state.is_some()
    }

    /// The most bytes of handed-over state this generation accepts (default 256 MiB); more
    /// is an error from [`Generation::inherited_state`].
    pub fn max_state(mut self, bytes: u64) -> Self {
        self.max_state = bytes;
        self
    }

    /// Whether to handle `SIGUSR2`, `SIGTERM` and `SIGINT` (default yes). Without, only
    /// [`Generation::restart`] and [`Generation::shutdown`] drive it.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// Whether [`Generation::ready`] logs "generation N serving ADDRS with pid P" at info
    /// (default yes). An application that prints its own serving line (gracehttp prints Go
    /// grace's `Serving ... with pid P.`) turns it off, so the event is logged once; the line
    /// is then logged at debug.
    pub fn announce(mut self, yes: bool) -> Self {
        self.announce = yes;
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
        self.idle_start = yes;
        self
    }

    /// How long the next generation may stay at idle CPU priority (see
    /// [`idle_start`](Self::idle_start)) before this one returns it to normal priority
    /// (default 100 ms): on a machine busy enough to leave it almost no CPU, it then starts at
    /// the usual share instead of running into the ready timeout.
    pub fn idle_start_limit(mut self, limit: Duration) -> Self {
        self.idle_start_limit = limit;
        self
    }

    /// Whether to keep the next generation's process started ahead, as a standby (default
    /// no). Once this generation is ready it starts the program again (at idle CPU priority
    /// where it will be allowed to return), and the new process waits in its first call into
    /// gracenet ([`registry`](crate::registry::registry), [`Generation::start`], or any
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
        self.standby = yes;
        self
    }

    /// Starts this process's generation: reads the inherited environment (see
    /// [`registry`](crate::registry::registry)), installs the signal handlers and runs the
    /// lifecycle on the current tokio runtime. Call it once, early in `main`.
    ///
    /// # Errors
    /// [`Error::Env`] for a malformed inherited environment; [`Error::AlreadyStarted`] on a
    /// second call; [`Error::Io`] when the signal handlers cannot be installed. Panics outside
    /// a tokio runtime.
    pub fn start(self) -> Result<Generation, Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        if let (Some(path), Some(pid_file)) = (&self.control_socket, &self.pid_file)
            && same_path(pid_file, path)
        {
            return Err(Error::Control {
                path: path.clone(),
                reason: "it is also the PID file's path: give each its own".into(),
            });
        }
        let startup = crate::startup::startup()?;
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyStarted);
        }
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let standby = SharedStandby::default();
        if self.handle_signals {
            super::signals::forward(requests_tx.clone(), standby.clone(), &startup.registry)?;
        }
        let number = startup.generation;
        let shared = Arc::new(Shared {
            number,
            startup,
            config: self,
            phase: watch::channel(Phase::Starting).0,
            connections: watch::channel(()).0,
            accepting: watch::channel(()).0,
            outcome: watch::channel(None).0,
            draining: AtomicBool::new(false),
            successor_channel: std::sync::Mutex::new(None),
            parent_channel: std::sync::Mutex::new(None),
            state_read: AtomicBool::new(false),
            standby_pid: std::sync::atomic::AtomicU32::new(0),
            standby,
            requests: requests_tx,
            notifier: Notifier::from_env(),
        });
        tracing::info!("generation {number} starting with pid {}", std::process::id());
        // Every line the lifecycle logs carries this process's pid; the messages name the
        // generation.
        let span = tracing::info_span!("lifecycle", pid = std::process::id());
        tokio::spawn(Driver::new(shared.clone(), requests_rx).run().instrument(span));
        let generation = Generation { shared };
        if let Some(path) = &generation.shared.config.control_socket {
            let listener = crate::control::server::listen(&generation, path)?;
            tokio::spawn(crate::control::server::serve(listener, generation.clone()));
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

/// What the handle and the driver share.
pub(super) struct Shared {
    pub number: u64,
    pub startup: &'static Startup,
    pub config: GenerationBuilder,
    pub phase: watch::Sender<Phase>,
    /// One receiver per tracked connection: the drain waits for them all to go.
    pub connections: watch::Sender<()>,
    /// One receiver per [`GracefulListener`]: "stopped accepting" is when they are all gone.
    pub accepting: watch::Sender<()>,
    pub outcome: watch::Sender<Option<Outcome>>,
    /// Set when the drain begins (with `phase`), for a cheap check per request.
    pub draining: AtomicBool,
    /// The channel to the generation that took over, for handing it live connections.
    pub successor_channel: std::sync::Mutex<Option<Arc<super::handover::Handover>>>,
    /// The channel from the generation that started this one, kept after ready for the
    /// connections it hands over.
    pub parent_channel: std::sync::Mutex<Option<std::os::fd::OwnedFd>>,
    /// Whether the handed-over state has been read off the parent channel.
    pub state_read: AtomicBool,
    /// The standby's pid, 0 when there is none (for `status`).
    pub standby_pid: std::sync::atomic::AtomicU32,
    /// The standby's wake handle, shared with the signal thread.
    pub standby: SharedStandby,
    pub requests: mpsc::UnboundedSender<Request>,
    /// systemd's notification socket, when `NOTIFY_SOCKET` is set.
    pub notifier: Option<Notifier>,
}

impl Shared {
    pub fn registry(&self) -> &'static SocketRegistry {
        &self.startup.registry
    }

    /// The older generations still running (draining), oldest first: those of
    /// `GRACE_ANCESTORS` still running and started before this process (a reused pid started
    /// later).
    pub fn running_ancestors(&self) -> Vec<u32> {
        // One read of /proc per ancestor, and of our own only if one is running (this is on
        // the restart's path, on the serving core).
        let mut ours = None;
        self.startup
            .ancestors
            .iter()
            .copied()
            .filter(|&pid| match crate::sys::running_start(pid) {
                None => false,
                Some(theirs) => {
                    let ours = *ours.get_or_insert_with(|| crate::sys::start_time(std::process::id()));
                    match (theirs, ours) {
                        (Some(theirs), Some(ours)) => theirs <= ours,
                        _ => true,
                    }
                }
            })
            .collect()
    }

    /// Tells systemd, if it is listening.
    pub fn notify(&self, lines: &[String]) {
        if let Some(n) = &self.notifier {
            n.send(lines);
        }
    }
}

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
    shared: Arc<Shared>,
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

    /// This generation's number: 1 for the first process, one more per restart.
    pub fn number(&self) -> u64 {
        self.shared.number
    }

    /// The registry of sockets, for kinds [`listen`](Self::listen) does not cover (UDP,
    /// Unix datagram). Stop using them when [`stopping`](Self::stopping) resolves.
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

    pub(crate) fn graceful(&self, listener: StreamListener, addr: &str) -> Result<GracefulListener, Error> {
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
        ))
    }

    /// Reports that this generation is serving (its accept loops are running): the parent
    /// generation, if any, stops accepting and drains. Calling it again does nothing.
    ///
    /// Call it once every accept loop has been polled, not merely spawned: the parent stops
    /// accepting when it hears, and until a loop of this process polls its listener,
    /// connections wait in the queue. (On a busy machine a spawned task can wait milliseconds
    /// for a worker thread; gracehttp waits for each accept loop's first poll.)
    ///
    /// Everything that can fail comes first: when the PID file cannot be written, the parent
    /// is **not** told, this returns the error, and the parent (if any) keeps serving once
    /// this process exits.
    ///
    /// A generation stopped before it is ready (`SIGTERM` while it starts) reports nothing:
    /// it does not serve, so it neither writes the PID file nor tells its parent, systemd or
    /// a supervisor.
    ///
    /// # Errors
    /// [`Error::Io`] when the PID file cannot be written.
    pub fn ready(&self) -> Result<(), Error> {
        let link = self.take_link();
        let Some(link) = link else { return Ok(()) };
        if matches!(*self.shared.phase.borrow(), Phase::Draining { .. }) {
            // Stopped before it was ready (a supervisor stops a stray generation so): it will
            // not serve, so it must not claim the PID file or the main pid. The link is
            // dropped: a parent that waits sees it close and keeps serving.
            tracing::info!(
                "generation {} was stopped before it was ready: not reporting ready",
                self.shared.number
            );
            return Ok(());
        }
        let mut replaced_pid_file = None;
        if let Some(path) = self.shared.config.pid_file.as_deref() {
            // The link is dropped unused on failure: a parent sees its pipe close and rolls
            // back.
            replaced_pid_file = crate::pidfile::write(path)?;
        }
        if self.shared.startup.idle_start {
            // Serving from now on: at normal priority before the parent stops accepting.
            leave_idle_start();
        }
        self.shared.phase.send_if_modified(|p| {
            let starting = *p == Phase::Starting;
            if starting {
                *p = Phase::Serving;
            }
            starting
        });
        let addrs: Vec<String> = self.registry().addrs().iter().map(ToString::to_string).collect();
        let pid = std::process::id();
        // MAINPID first, and before the parent hears: systemd (or the supervisor) must know
        // the new main process before the old one exits.
        let lines = vec![
            format!("MAINPID={pid}"),
            "READY=1".into(),
            format!(
                "STATUS=Generation {} serving {} with pid {pid}",
                self.shared.number,
                addrs.join(", ")
            ),
        ];
        match &self.shared.notifier {
            Some(notifier) if self.shared.startup.supervisor.is_some() => {
                // The supervisor keeps a copy of the sockets, to restart after a crash.
                match self.registry().handoff() {
                    Ok(handoff) => {
                        crate::supervisor::protocol::send_ready(notifier, lines, self.shared.number, handoff)
                    }
                    Err(e) => {
                        tracing::warn!("cannot copy the sockets for the supervisor: {e}");
                        notifier.send(&lines);
                    }
                }
            }
            _ => self.shared.notify(&lines),
        }
        if let Some(channel) = link.notify() {
            *self
                .shared
                .parent_channel
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(channel);
        }
        if let Some(file) = replaced_pid_file {
            // Its blocks are freed when it closes, which can wait for the disk (see
            // pidfile::write): on a thread of its own, not this one, which serves. (Were the
            // thread not to start, the closure, file and all, is dropped here.)
            let _ = std::thread::Builder::new()
                .name("gracenet-pidfile".into())
                .spawn(move || drop(file));
        }
        // The machine goes from starting to serving: restarts asked for meanwhile run now, and
        // a standby is started (by the driver: off this path, the parent is waiting to stop
        // accepting).
        let _ = self.shared.requests.send(Request::Ready);
        if self.shared.config.announce {
            tracing::info!(
                "generation {} serving {} with pid {pid}",
                self.shared.number,
                addrs.join(", ")
            );
        } else {
            tracing::debug!(
                "generation {} serving {} with pid {pid}",
                self.shared.number,
                addrs.join(", ")
            );
        }
        let unclaimed = self.registry().unclaimed();
        if !unclaimed.is_empty() {
            let list: Vec<String> = unclaimed.iter().map(ToString::to_string).collect();
            tracing::info!(
                "keeping inherited sockets nobody asked for, to pass on: {}",
                list.join(", ")
            );
        }
        Ok(())
    }

    /// This generation's state as `key: value` lines (what the control socket's `status`
    /// answers): generation, pid, phase, open connections, and the older generations still
    /// draining.
    pub fn status(&self) -> String {
        self.status_uncounting(0)
    }

    /// [`status`](Self::status), not counting `uncounted` of the tracked connections (the
    /// control socket's own clients).
    pub(crate) fn status_uncounting(&self, uncounted: usize) -> String {
        let phase = match self.phase() {
            Phase::Starting => "starting".to_owned(),
            Phase::Serving => "serving".to_owned(),
            Phase::Draining { reason, deadline } => format!(
                "draining ({}, at most {:.0} s more)",
                match reason {
                    StopReason::Restarted { successor } => format!("handed over to pid {successor}"),
                    StopReason::Shutdown => "stopping".to_owned(),
                },
                deadline.saturating_duration_since(Instant::now()).as_secs_f64()
            ),
        };
        let draining: Vec<String> = self
            .shared
            .running_ancestors()
            .iter()
            .map(u32::to_string)
            .collect();
        let addrs: Vec<String> = self.registry().addrs().iter().map(ToString::to_string).collect();
        let standby = match self.shared.standby_pid.load(Ordering::Relaxed) {
            0 => String::new(),
            pid => format!("standby: pid {pid}\n"),
        };
        format!(
            "generation: {}\npid: {}\nphase: {phase}\nconnections: {}\nlistening: {}\ndraining generations: {}\n{standby}",
            self.shared.number,
            std::process::id(),
            self.shared.connections.receiver_count().saturating_sub(uncounted),
            addrs.join(", "),
            if draining.is_empty() {
                "none".to_owned()
            } else {
                format!("pid {}", draining.join(", pid "))
            }
        )
    }

    /// Whether this generation is draining (stopped accepting). One atomic load: cheap enough
    /// for every request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// The state the previous generation handed over ([`GenerationBuilder::hand_state`]):
    /// `None` when there is no previous generation or it hands none. Read it once, before
    /// [`ready`](Self::ready); check it, and [`refuse`](Self::refuse) it if it is not what
    /// this version understands.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let generation = gracenet::Generation::builder()
    ///     .hand_state(|| b"v1:counter=7".to_vec()) // given to the next generation
    ///     .start()?;
    /// match generation.inherited_state().await? {
    ///     None => {}                                  // a first start: nothing handed
    ///     Some(s) if s.starts_with(b"v1:") => {}      // use it
    ///     Some(_) => {
    ///         generation.refuse("unknown state version"); // the old generation keeps serving
    ///         return Err("refused".into());
    ///     }
    /// }
    /// generation.ready()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when the state is larger than the limit ([`GenerationBuilder::max_state`]),
    /// is cut short, or does not arrive within the ready timeout.
    pub async fn inherited_state(&self) -> Result<Option<Vec<u8>>, Error> {
        use tokio::io::AsyncReadExt;
        let io = |what: String, source: std::io::Error| Error::Io { what, source };
        let channel = {
            let link = self.shared.startup.link.lock().unwrap_or_else(|p| p.into_inner());
            match link.as_ref().and_then(crate::readiness::ParentLink::channel) {
                Some(fd) => fd.map_err(|e| io("cannot read the handed-over state".into(), e))?,
                None => return Ok(None),
            }
        };
        // A pipe, from a parent of an older gracenet, hands no state.
        let Some(mut stream) =
            channel_stream(channel).map_err(|e| io("cannot read the handed-over state".into(), e))?
        else {
            return Ok(None);
        };
        let max = self.shared.config.max_state;
        let read = async {
            let mut len = [0u8; 8];
            let mut got = 0;
            while got < 8 {
                match stream.read(&mut len[got..]).await? {
                    0 if got == 0 => return Ok(None),
                    0 => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "cut short",
                        ));
                    }
                    n => got += n,
                }
            }
            let len = u64::from_le_bytes(len);
            if len == super::driver::NO_STATE {
                return Ok(None);
            }
            if len > max {
                return Err(std::io::Error::other(format!(
                    "{len} bytes offered, more than the limit of {max} (GenerationBuilder::max_state)"
                )));
            }
            let mut bytes = vec![0u8; len as usize];
            stream.read_exact(&mut bytes).await?;
            Ok(Some(bytes))
        };
        self.shared.state_read.store(true, Ordering::SeqCst);
        match tokio::time::timeout(self.shared.config.ready_timeout, read).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(io("cannot read the handed-over state".into(), e)),
            Err(_) => Err(io(
                "cannot read the handed-over state".into(),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "not handed within the ready timeout",
                ),
            )),
        }
    }

    /// Hands a live connection to the generation that took over (once this one drains after
    /// a restart): `stream`'s fd goes to the new process with `unread` (bytes read from it
    /// but not handled) and `state` (anything the application attaches), and this call waits
    /// for the new process to answer. `Ok` once it has taken the connection: drop `stream`
    /// then (its client sees no close; its next reply comes from the new process). Call it
    /// where the connection is quiet (between requests or lines). The new process receives
    /// it from [`inherited_connections`](Self::inherited_connections); if that process dies
    /// later, the connections it took close with it.
    ///
    /// An error means the connection is still this process's, exactly as before the call,
    /// and the new process will not serve it: keep serving `stream` (with your `unread`
    /// bytes) until the client closes, as the drain expects. That is the case when there is
    /// no successor (this generation is stopping, not restarting), when the new process did
    /// not take it (its fd did not arrive: it is at its open-file limit, say), when the new
    /// process exits or closes the channel before answering, or when no answer comes within
    /// 10 s (then no more connections are offered to it: the rest stay here too).
    ///
    /// Let the call finish: do not cancel it (in a `select!`, say) once it has started. A
    /// call dropped while it waits for the answer leaves the connection in both processes if
    /// the new one takes it.
    ///
    /// ```no_run
    /// # async fn serve(generation: gracenet::Generation, conn: gracenet::tokio::Stream) {
    /// // In a connection's task, at a quiet point once this generation drains:
    /// generation.stopping().await;
    /// if generation.hand_over(&conn, b"", b"session=42").await.is_ok() {
    ///     return; // the new process took it; dropping `conn` closes nothing
    /// }
    /// // Not handed (a stop, or the new process did not take it): go on serving `conn`
    /// // until the client closes.
    /// # }
    /// // In the new process, after ready():
    /// # async fn receive(generation: gracenet::Generation) -> Result<(), gracenet::Error> {
    /// if let Some(mut handed) = generation.inherited_connections().await? {
    ///     while let Some(c) = handed.next().await {
    ///         let _guard = generation.track();
    ///         // serve c.stream, handling c.unread first; c.state is b"session=42"
    /// #       drop(c);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when the connection was not handed over (see above): keep serving
    /// `stream`.
    pub async fn hand_over(
        &self,
        stream: &crate::tokio::Stream,
        unread: &[u8],
        state: &[u8],
    ) -> Result<(), Error> {
        use std::os::fd::AsFd;
        let channel = self
            .shared
            .successor_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let io = |source: std::io::Error| Error::Io {
            what: "cannot hand the connection to the next generation".into(),
            source,
        };
        let Some(channel) = channel else {
            return Err(io(std::io::Error::other("no generation took over from this one")));
        };
        channel
            .offer(stream.as_fd(), unread, state, super::handover::ANSWER_TIMEOUT)
            .await
            .map_err(io)
    }

    /// The connections the previous generation hands over (see [`hand_over`](Self::hand_over)),
    /// as they arrive: serve each as if accepted (tracking it), its `unread` bytes first.
    /// `None` in a first generation, or one started by Go grace or systemd. Call it after
    /// [`ready`](Self::ready) (the previous generation hands connections over once this one
    /// serves), and keep calling [`next`](super::InheritedConnections::next) until it returns
    /// `None`: a connection is this process's once `next` has returned it (the previous
    /// generation is told then, and only then lets go of it); one this process cannot take
    /// (it is out of fds, say) is answered so, and the previous generation goes on serving
    /// it. The previous generation waits 10 s at most for an answer.
    ///
    /// # Errors
    /// [`Error::Io`] when the channel cannot be read.
    pub async fn inherited_connections(
        &self,
    ) -> Result<Option<super::handover::InheritedConnections>, Error> {
        use tokio::io::AsyncReadExt;
        let io = |source: std::io::Error| Error::Io {
            what: "cannot receive handed-over connections".into(),
            source,
        };
        let fd = self
            .shared
            .parent_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(fd) = fd else { return Ok(None) };
        let Some(mut channel) = channel_stream(fd).map_err(io)? else {
            return Ok(None);
        };
        if !self.shared.state_read.swap(true, Ordering::SeqCst) {
            // The state section comes first: skip it (this application does not read it).
            let mut len = [0u8; 8];
            if channel.read_exact(&mut len).await.is_err() {
                return Ok(None);
            }
            let len = u64::from_le_bytes(len);
            if len != super::driver::NO_STATE {
                let skipped = tokio::io::copy(&mut (&mut channel).take(len), &mut tokio::io::sink())
                    .await
                    .map_err(io)?;
                if skipped != len {
                    return Ok(None);
                }
            }
        }
        Ok(Some(super::handover::InheritedConnections::new(channel)))
    }

    /// The link to the previous generation (readiness or refusal), taken once.
    fn take_link(&self) -> Option<crate::readiness::ParentLink> {
        self.shared
            .startup
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Refuses what the previous generation handed over (a state version this one does not
    /// understand, say): the previous generation is told `reason`, rolls the restart back and
    /// keeps serving. Return from `main` after it (with an error); this generation must not
    /// serve. Does nothing in a generation that has no previous one.
    pub fn refuse(&self, reason: &str) {
        let link = self.take_link();
        if let Some(link) = link {
            tracing::error!("refusing what the previous generation handed over: {reason}");
            link.refuse(reason);
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase.borrow().clone()
    }

    /// Resolves when this generation must stop accepting: a successor is serving, or a stop
    /// began. For accept loops not built on [`GracefulListener`] (UDP servers, say).
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut phase = self.shared.phase.subscribe();
        async move {
            let _ = phase.wait_for(|p| matches!(p, Phase::Draining { .. })).await;
        }
    }

    /// Resolves when this generation's drain deadline passes: unfinished work is abandoned
    /// then. For background tasks that finish politely on [`stopping`](Self::stopping) and
    /// must be gone by this.
    pub fn deadline(&self) -> impl Future<Output = ()> + Send + 'static {
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

    /// When unfinished work will be abandoned, once draining.
    pub fn drain_deadline(&self) -> Option<Instant> {
        match *self.shared.phase.borrow() {
            Phase::Draining { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// A guard for one connection (or any piece of in-flight work): the drain waits until
    /// every guard is dropped, or the stop timeout.
    pub fn track(&self) -> ConnectionGuard {
        ConnectionGuard {
            _connection: self.shared.connections.subscribe(),
            phase: self.shared.phase.subscribe(),
        }
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

/// The channel to the parent generation as a tokio stream; `None` when it is a pipe (from
/// an older gracenet), which carries neither state nor connections.
fn channel_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<Option<tokio::net::UnixStream>> {
    let is_socket = nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if !is_socket {
        return Ok(None);
    }
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream).map(Some)
}

/// Held for as long as one connection is open; the drain waits for every guard.
#[derive(Debug)]
pub struct ConnectionGuard {
    _connection: watch::Receiver<()>,
    phase: watch::Receiver<Phase>,
}

impl ConnectionGuard {
    /// Resolves when the generation starts draining, so a long-lived connection (a
    /// WebSocket, a stream) can finish politely.
    pub async fn draining(&mut self) {
        let _ = self.phase.wait_for(|p| matches!(p, Phase::Draining { .. })).await;
    }
}

/// Returns this process from the idle CPU priority the generation before started it at.
fn leave_idle_start() {
    match crate::sys::leave_idle_priority(None) {
        Ok(n) => tracing::debug!("left the idle CPU priority this generation started at ({n} thread(s))"),
        Err(e) => tracing::error!(
            "cannot leave the idle CPU priority this generation started at ({e}): it serves at idle \
             priority; give it CAP_SYS_NICE or an RLIMIT_NICE of 20 (systemd: LimitNICE=20), or \
             start generations at normal priority (GenerationBuilder::idle_start(false))"
        ),
    }
}
