//! This process's part in the restart lifecycle: one generation of the server.
//!
//! A [`Generation`] owns the listeners, tells its parent when it is serving, starts the next
//! generation on `SIGUSR2` (or [`Generation::restart`]) and hands over once that one is
//! serving, stops on `SIGTERM`/`SIGINT` (or [`Generation::shutdown`]), and tells the
//! application when to stop accepting and how long it may drain.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::env::{GRACE_GENERATION, GRACE_READY_FD};
use crate::error::Error;
use crate::listeners::{Listeners, listeners};
use crate::notify::{Notifier, monotonic_usec};
use crate::readiness::{ParentLink, generation_from_env};
use crate::signals::{self, Request};
use crate::spawn::ChildProcess;
use crate::tokio::{Listener, Stream};

/// How long a new generation may take to report ready before it is killed.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping generation may drain (grace's httpdown default).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a generation is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
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
pub struct Outcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Whether it gave up on unfinished work (the stop timeout passed, or a second
    /// `SIGTERM`/`SIGINT` arrived) rather than finishing it.
    pub forced: bool,
    /// How many tracked connections were still open at the end.
    pub unfinished: usize,
}

/// Settings for [`Generation`]; start one with [`GenerationBuilder::start`].
#[derive(Debug, Clone)]
pub struct GenerationBuilder {
    ready_timeout: Duration,
    stop_timeout: Duration,
    pid_file: Option<PathBuf>,
    handle_signals: bool,
}

impl Default for GenerationBuilder {
    fn default() -> Self {
        GenerationBuilder {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            pid_file: None,
            handle_signals: true,
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

    /// Whether to handle `SIGUSR2`, `SIGTERM` and `SIGINT` (default yes). Without, only
    /// [`Generation::restart`] and [`Generation::shutdown`] drive it.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// Starts this process's generation: reads the inherited environment (`LISTEN_FDS`,
    /// `GRACE_READY_FD`, `GRACE_GENERATION`), installs the signal handlers and runs the
    /// lifecycle on the current tokio runtime. Call it once, early in `main`.
    ///
    /// # Errors
    /// [`Error::Env`] for a malformed inherited environment; [`Error::AlreadyStarted`] on a
    /// second call; [`Error::Io`] when the signal handlers cannot be installed. Panics outside
    /// a tokio runtime.
    pub fn start(self) -> Result<Generation, Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyStarted);
        }
        let listeners = listeners()?;
        let number = generation_from_env()?;
        let link = ParentLink::from_env(listeners.origin())?;
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        if self.handle_signals {
            signals::forward(requests_tx.clone())?;
        }
        let shared = Arc::new(Shared {
            number,
            listeners,
            config: self,
            link: Mutex::new(Some(link)),
            phase: watch::channel(Phase::Starting).0,
            connections: watch::channel(()).0,
            accepting: watch::channel(()).0,
            outcome: watch::channel(None).0,
            requests: requests_tx,
            notifier: Notifier::from_env(),
        });
        tracing::info!(
            generation = number,
            pid = std::process::id(),
            "generation {number} starting"
        );
        tokio::spawn(Driver::new(shared.clone(), requests_rx).run());
        Ok(Generation { shared })
    }
}

struct Shared {
    number: u64,
    listeners: &'static Listeners,
    config: GenerationBuilder,
    link: Mutex<Option<ParentLink>>,
    phase: watch::Sender<Phase>,
    /// One receiver per tracked connection: the drain waits for them all to go.
    connections: watch::Sender<()>,
    /// One receiver per [`GracefulListener`]: "stopped accepting" is when they are all gone.
    accepting: watch::Sender<()>,
    outcome: watch::Sender<Option<Outcome>>,
    requests: mpsc::UnboundedSender<Request>,
    /// systemd's notification socket, when `NOTIFY_SOCKET` is set.
    notifier: Option<Notifier>,
}

impl Shared {
    /// Tells systemd, if it is listening.
    fn notify(&self, lines: &[String]) {
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
    pub fn listeners(&self) -> &'static Listeners {
        self.shared.listeners
    }

    /// A listener for `addr` (inherited if it can be, see [`Listeners::listen`]) whose
    /// [`accept`](GracefulListener::accept) ends when this generation stops accepting.
    ///
    /// # Errors
    /// As [`Listeners::listen`]; [`Error::Io`] when registering with tokio fails.
    pub fn listen(&self, addr: &str) -> Result<GracefulListener, Error> {
        self.graceful(self.shared.listeners.listen(addr)?, addr)
    }

    /// Like [`listen`](Self::listen), taking an inherited socket by its `LISTEN_FDNAMES` name.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub fn listen_named(&self, name: &str, addr: &str) -> Result<GracefulListener, Error> {
        self.graceful(self.shared.listeners.listen_named(name, addr)?, addr)
    }

    fn graceful(&self, listener: crate::Listener, addr: &str) -> Result<GracefulListener, Error> {
        let inner = Listener::from_std(listener).map_err(|source| Error::Io {
            what: format!("cannot register the listener for {addr} with tokio"),
            source,
        })?;
        let addr = inner
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_owned());
        Ok(GracefulListener {
            inner,
            addr,
            phase: self.shared.phase.subscribe(),
            _accepting: self.shared.accepting.subscribe(),
        })
    }

    /// Reports that this generation is serving (its accept loops are running): the parent
    /// generation, if any, stops accepting and drains. Writes the PID file if one is set.
    /// Calling it again does nothing.
    ///
    /// # Errors
    /// [`Error::Io`] when the PID file cannot be written (the parent is told anyway).
    pub fn ready(&self) -> Result<(), Error> {
        let link = self.shared.link.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(link) = link else { return Ok(()) };
        let pid_file = self
            .shared
            .config
            .pid_file
            .as_deref()
            .map(crate::pidfile::write)
            .transpose();
        self.shared.phase.send_if_modified(|p| {
            let starting = *p == Phase::Starting;
            if starting {
                *p = Phase::Serving;
            }
            starting
        });
        let addrs: Vec<String> = self
            .shared
            .listeners
            .addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let pid = std::process::id();
        // MAINPID first: systemd must know the new main process before the old one exits.
        self.shared.notify(&[
            format!("MAINPID={pid}"),
            "READY=1".into(),
            format!(
                "STATUS=Generation {} serving {} with pid {pid}",
                self.shared.number,
                addrs.join(", ")
            ),
        ]);
        link.notify();
        tracing::info!(
            generation = self.shared.number,
            pid = std::process::id(),
            "generation {} serving {} with pid {}",
            self.shared.number,
            addrs.join(", "),
            std::process::id()
        );
        let unclaimed = self.shared.listeners.unclaimed();
        if !unclaimed.is_empty() {
            let list: Vec<String> = unclaimed.iter().map(ToString::to_string).collect();
            tracing::info!(
                "keeping inherited sockets nobody asked for, to pass on: {}",
                list.join(", ")
            );
        }
        pid_file.map(|_| ())
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

    /// Starts the next generation, as `SIGUSR2` does.
    pub fn restart(&self) {
        let _ = self.shared.requests.send(Request::Restart);
    }

    /// Stops this generation, as `SIGTERM` does.
    pub fn shutdown(&self) {
        let _ = self.shared.requests.send(Request::Stop {
            cause: "shutdown()",
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

/// A listener whose [`accept`](Self::accept) ends when its generation stops accepting.
/// Accept errors (out of fds, say) are logged and retried with a back-off, never returned:
/// they must not end serving.
#[derive(Debug)]
pub struct GracefulListener {
    inner: Listener,
    addr: String,
    phase: watch::Receiver<Phase>,
    _accepting: watch::Receiver<()>,
}

impl GracefulListener {
    /// The next connection, or `None` once the generation is stopping; then drop the
    /// listener so this process holds the socket no longer.
    pub async fn accept(&mut self) -> Option<Stream> {
        let mut backoff = Duration::from_millis(5);
        loop {
            if matches!(*self.phase.borrow_and_update(), Phase::Draining { .. }) {
                return None;
            }
            tokio::select! {
                biased;
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                accepted = self.inner.accept() => match accepted {
                    Ok(stream) => return Some(stream),
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        tracing::warn!(addr = %self.addr, "accept failed: {e}; retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.phase.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> &str {
        &self.addr
    }
}

/// Errors that concern only the connection being accepted: retry at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
        )
    )
}

/// A next generation that has been started and has not yet reported ready.
struct PendingRestart {
    child: ChildProcess,
    ready: pipe::Receiver,
    deadline: Instant,
}

enum RestartEvent {
    Ready,
    PipeClosed,
    TimedOut,
}

enum Event {
    Request(Option<Request>),
    Restart(RestartEvent),
    StoppedAccepting,
    Drained,
    DrainDeadline,
    ReapTick,
}

struct Draining {
    reason: StopReason,
    deadline: Instant,
    accepting: bool,
    /// Whether a stop was asked for during this drain: the next one stops at once.
    stop_asked: bool,
}

/// The task that runs a generation's lifecycle.
struct Driver {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<Request>,
    restart: Option<PendingRestart>,
    successor: Option<ChildProcess>,
    draining: Option<Draining>,
    finished: bool,
}

impl Driver {
    fn new(shared: Arc<Shared>, requests: mpsc::UnboundedReceiver<Request>) -> Self {
        Driver {
            shared,
            requests,
            restart: None,
            successor: None,
            draining: None,
            finished: false,
        }
    }

    fn number(&self) -> u64 {
        self.shared.number
    }

    async fn run(mut self) {
        loop {
            let event = tokio::select! {
                request = self.requests.recv() => Event::Request(request),
                event = restart_event(self.restart.as_mut()) => Event::Restart(event),
                event = drain_event(&self.shared, self.draining.as_ref(), self.finished) => event,
                _ = tokio::time::sleep(Duration::from_millis(250)), if self.successor.is_some() => Event::ReapTick,
            };
            match event {
                Event::Request(None) => return,
                Event::Request(Some(Request::Restart)) => self.on_restart_request(),
                Event::Request(Some(Request::Stop { cause, sender })) => {
                    self.on_stop_request(cause, sender).await
                }
                Event::Restart(RestartEvent::Ready) => self.hand_over(),
                Event::Restart(RestartEvent::PipeClosed) => self.restart_failed(None).await,
                Event::Restart(RestartEvent::TimedOut) => {
                    let t = self.shared.config.ready_timeout;
                    self.restart_failed(Some(format!("not ready after {:.1} s", t.as_secs_f64())))
                        .await
                }
                Event::StoppedAccepting => {
                    if let Some(d) = self.draining.as_mut() {
                        d.accepting = false;
                    }
                    tracing::info!(
                        generation = self.number(),
                        pid = std::process::id(),
                        "generation {} stopped accepting; draining {} connection(s)",
                        self.number(),
                        self.shared.connections.receiver_count()
                    );
                }
                Event::Drained => self.finish(false),
                Event::DrainDeadline => self.finish(true),
                Event::ReapTick => {
                    if let Some(child) = self.successor.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            tracing::warn!(pid = child.pid(), "the next generation exited ({status})");
                            self.successor = None;
                        }
                    }
                }
            }
        }
    }

    fn on_restart_request(&mut self) {
        if self.draining.is_some() || self.finished {
            tracing::info!(
                generation = self.number(),
                "restart requested while stopping: ignored"
            );
            return;
        }
        if let Some(p) = &self.restart {
            tracing::info!(
                generation = self.number(),
                "restart requested while generation {} (pid {}) is starting: coalesced",
                self.number() + 1,
                p.child.pid()
            );
            return;
        }
        self.shared.notify(&[
            "RELOADING=1".into(),
            format!("MONOTONIC_USEC={}", monotonic_usec()),
            format!("STATUS=Restarting: starting generation {}", self.number() + 1),
        ]);
        match self.spawn_next() {
            Ok(p) => {
                tracing::info!(
                    generation = self.number(),
                    pid = std::process::id(),
                    "restart: started generation {} with pid {}; waiting up to {:.1} s for it to be ready",
                    self.number() + 1,
                    p.child.pid(),
                    self.shared.config.ready_timeout.as_secs_f64()
                );
                self.restart = Some(p);
            }
            Err(e) => {
                tracing::error!(generation = self.number(), "restart failed, still serving: {e}");
                self.still_serving(&e.to_string());
            }
        }
    }

    fn spawn_next(&self) -> Result<PendingRestart, Error> {
        let io = |what: &str, source: std::io::Error| Error::Io {
            what: what.to_owned(),
            source,
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io("cannot create the readiness pipe", e.into()))?;
        let ready = pipe::Receiver::from_owned_fd(read)
            .map_err(|e| io("cannot register the readiness pipe with tokio", e))?;
        let mut next = self.shared.listeners.next_process();
        next.env(GRACE_GENERATION, (self.number() + 1).to_string());
        let fd = next.pass_fd(write);
        next.env(GRACE_READY_FD, fd.to_string());
        let child = next.spawn()?;
        Ok(PendingRestart {
            child,
            ready,
            deadline: Instant::now() + self.shared.config.ready_timeout,
        })
    }

    async fn on_stop_request(&mut self, cause: &'static str, sender: Option<i32>) {
        let from_pending = self
            .restart
            .as_ref()
            .is_some_and(|p| sender == Some(p.child.pid() as i32));
        if from_pending {
            // Go grace's child says "ready" with SIGTERM to its parent.
            return self.hand_over();
        }
        if self
            .successor
            .as_ref()
            .is_some_and(|s| sender == Some(s.pid() as i32))
        {
            tracing::debug!("ignoring {cause} from the generation that took over");
            return;
        }
        if self.finished {
            tracing::warn!(
                generation = self.number(),
                "{cause} after the drain ended: exiting now"
            );
            std::process::exit(1);
        }
        if let Some(d) = self.draining.as_mut().filter(|d| !d.stop_asked) {
            // Draining after a hand-over (systemd's stop signals every process of the
            // service): keep draining; a second signal stops at once.
            d.stop_asked = true;
            tracing::info!(
                generation = self.number(),
                "{cause} while draining after a restart: finishing the drain ({cause} again to stop at once)"
            );
            return;
        }
        if self.draining.is_some() {
            tracing::warn!(
                generation = self.number(),
                "{cause} during the drain: stopping at once"
            );
            return self.finish(true);
        }
        if let Some(mut p) = self.restart.take() {
            let pid = p.child.pid();
            let status = p.child.kill();
            tracing::warn!(
                generation = self.number(),
                "{cause} while generation {} (pid {pid}) was starting: killed it ({status:?})",
                self.number() + 1
            );
        }
        tracing::info!(
            generation = self.number(),
            pid = std::process::id(),
            "{cause}: stopping"
        );
        self.begin_drain(StopReason::Shutdown);
    }

    fn hand_over(&mut self) {
        let Some(p) = self.restart.take() else { return };
        let successor = p.child.pid();
        tracing::info!(
            generation = self.number(),
            pid = std::process::id(),
            "generation {} (pid {successor}) is ready: handing over",
            self.number() + 1
        );
        self.successor = Some(p.child);
        self.begin_drain(StopReason::Restarted { successor });
    }

    async fn restart_failed(&mut self, reason: Option<String>) {
        let Some(mut p) = self.restart.take() else { return };
        let pid = p.child.pid();
        // The pipe closed: the child exited, or is exiting. Give it a moment to be reaped
        // with its own status before killing it.
        let mut status = None;
        if reason.is_none() {
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                match p.child.try_wait() {
                    Ok(Some(s)) => {
                        status = Some(s);
                        break;
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(_) => break,
                }
            }
        }
        let killed = status.is_none();
        if killed {
            status = p.child.kill().ok();
        }
        let why = reason.unwrap_or_else(|| match status {
            Some(s) if !killed => format!("exited before it was ready ({s})"),
            _ => "closed its readiness pipe without reporting ready".to_owned(),
        });
        tracing::error!(
            generation = self.number(),
            pid = std::process::id(),
            "restart failed: generation {} (pid {pid}) {why}{}; still serving",
            self.number() + 1,
            if killed { "; killed it" } else { "" }
        );
        self.still_serving(&format!("generation {} (pid {pid}) {why}", self.number() + 1));
    }

    /// A failed restart ends systemd's "reloading" state: this generation still serves.
    fn still_serving(&self, why: &str) {
        self.shared.notify(&[
            "READY=1".into(),
            format!(
                "STATUS=Restart failed: {why}; generation {} still serving with pid {}",
                self.number(),
                std::process::id()
            ),
        ]);
    }

    fn begin_drain(&mut self, reason: StopReason) {
        let deadline = Instant::now() + self.shared.config.stop_timeout;
        self.shared
            .phase
            .send_replace(Phase::Draining { reason, deadline });
        self.shared.listeners.close_all();
        if reason == StopReason::Shutdown {
            if let Some(path) = &self.shared.config.pid_file {
                crate::pidfile::remove_if_ours(path);
            }
            let timeout = self.shared.config.stop_timeout;
            // Ask systemd to wait for the whole drain (TimeoutStopSec may be shorter).
            self.shared.notify(&[
                "STOPPING=1".into(),
                format!(
                    "EXTEND_TIMEOUT_USEC={}",
                    (timeout + Duration::from_secs(5)).as_micros()
                ),
                format!(
                    "STATUS=Stopping: generation {} draining {} connection(s), at most {:.0} s",
                    self.number(),
                    self.shared.connections.receiver_count(),
                    timeout.as_secs_f64()
                ),
            ]);
        }
        self.draining = Some(Draining {
            reason,
            deadline,
            accepting: true,
            // A drain that a stop began has had its first stop request.
            stop_asked: reason == StopReason::Shutdown,
        });
    }

    fn finish(&mut self, forced: bool) {
        let Some(d) = self.draining.take() else { return };
        let unfinished = self.shared.connections.receiver_count();
        self.finished = true;
        tracing::info!(
            generation = self.number(),
            pid = std::process::id(),
            "generation {} done ({}); exiting pid {}",
            self.number(),
            if forced {
                format!("gave up on {unfinished} unfinished connection(s)")
            } else {
                "drained".to_owned()
            },
            std::process::id()
        );
        self.shared.outcome.send_replace(Some(Outcome {
            reason: d.reason,
            forced,
            unfinished,
        }));
    }
}

async fn restart_event(pending: Option<&mut PendingRestart>) -> RestartEvent {
    let Some(p) = pending else {
        return std::future::pending().await;
    };
    let deadline = tokio::time::Instant::from_std(p.deadline);
    tokio::select! {
        event = read_ready(&p.ready) => event,
        _ = tokio::time::sleep_until(deadline) => RestartEvent::TimedOut,
    }
}

async fn read_ready(pipe: &pipe::Receiver) -> RestartEvent {
    loop {
        if pipe.readable().await.is_err() {
            return RestartEvent::PipeClosed;
        }
        let mut byte = [0u8; 1];
        match pipe.try_read(&mut byte) {
            Ok(0) => return RestartEvent::PipeClosed,
            Ok(_) => return RestartEvent::Ready,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return RestartEvent::PipeClosed,
        }
    }
}

async fn drain_event(shared: &Shared, draining: Option<&Draining>, finished: bool) -> Event {
    let Some(d) = draining.filter(|_| !finished) else {
        return std::future::pending().await;
    };
    let deadline = tokio::time::sleep_until(tokio::time::Instant::from_std(d.deadline));
    if d.accepting {
        tokio::select! {
            _ = shared.accepting.closed() => Event::StoppedAccepting,
            _ = deadline => Event::DrainDeadline,
        }
    } else {
        tokio::select! {
            _ = shared.connections.closed() => Event::Drained,
            _ = deadline => Event::DrainDeadline,
        }
    }
}
