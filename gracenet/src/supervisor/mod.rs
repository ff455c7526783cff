//! A small first process that stays while generations come and go, for places that need one
//! stable pid: systemd's main process, pid 1 of a container, a terminal.
//!
//! It starts generation 1 (passing on any socket-activated fds) and then:
//! - learns which pid serves from the generations' own sd_notify messages (`MAINPID=`) on a
//!   private notify socket (from its descendants only), and forwards them to systemd as its
//!   own;
//! - forwards `SIGUSR2`, `SIGTERM`, `SIGINT` and `SIGHUP` to the serving generation, holding a
//!   `SIGUSR2` that arrives before that generation is ready until it is;
//! - watches every generation that has served (a pidfd each, so it learns of an exit even
//!   when another generation reaps it) and reaps every orphan (it is the child subreaper);
//! - keeps a copy of the serving generation's listening sockets, so when that generation dies
//!   without a successor (a signal, an abort, the OOM killer) it starts a new one on the same
//!   sockets at once: connections wait in the backlog instead of being refused. A crash loop
//!   backs off and ends after [`CRASH_LIMIT`](crashes::CRASH_LIMIT) crashes in 30 s;
//! - lets at most one generation serve: a generation that says it is ready while another
//!   serves, and is not that one's successor, is a stray (a successor started by a generation
//!   that then died, when a crash restart already replaces it) and is stopped; when the
//!   serving generation dies without a successor, its successors still starting (orphans,
//!   reparented to the supervisor) are stopped before a new generation is started, so the
//!   crash restart is the only candidate. If none serves, the first to say it is ready does;
//! - a stop (or giving up after a crash loop) reaches every process it has: the serving
//!   generation, the draining ones, every stray and orphan; those still there
//!   [`KILL_AFTER`] later are killed (`SIGKILL`);
//! - after a stop, exits once the last generation (and every child) has gone, with the
//!   serving one's status.
//!
//! If the supervisor itself is killed (`kill -9`), the generations are unaffected: they keep
//! serving and draining, reparented to the next subreaper; what is lost is the crash restart
//! and the stable pid.

mod children;
mod crashes;
pub(crate) mod protocol;
mod signals;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::MsgFlags;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR2};

use crate::error::Error;
use crate::notify::Notifier;
use crate::process::{Executable, Handoff, NextProcess};
use crate::vars::{GRACE_GENERATION, GRACE_SUPERVISOR, NOTIFY_SOCKET};
pub(crate) use children::{Children, describe, signal_pid};
#[cfg(feature = "tokio")]
pub(crate) use crashes::CRASH_LIMIT;
use crashes::{AfterCrash, CrashPolicy};
use protocol::Message;
pub(crate) use signals::SignalPipe;

/// How long after a stop (or giving up) the processes still there are killed (`SIGKILL`): a
/// generation's default stop timeout and a margin, so a drain of the default length is never
/// cut short.
pub(crate) const KILL_AFTER: Duration = Duration::from_secs(60 + 10);

/// How often the supervisor looks for processes left to kill once [`KILL_AFTER`] has passed
/// (a killed process's children are reparented to it).
const KILL_AGAIN: Duration = Duration::from_millis(100);

/// Whether this process should run as a supervisor: asked for (`requested`, a `--supervise`
/// flag, say) or pid 1, and not already a generation under a supervisor.
pub fn should_supervise(requested: bool) -> bool {
    std::env::var_os(GRACE_SUPERVISOR).is_none() && (requested || std::process::id() == 1)
}

/// Makes the signals the supervisor handles (`SIGUSR2`, `SIGTERM`, `SIGINT`, `SIGHUP`) safe
/// from this moment until [`supervise`] handles them: it blocks them in the calling thread, so
/// one that arrives while the program is still starting (parsing arguments, setting up
/// logging, waiting for a busy core) stays pending instead of ending the process (their
/// default action), and reaches the supervisor once its handlers are in place. Threads started
/// after this call inherit the blocking and keep it, so the supervisor's own thread is the one
/// that handles them.
///
/// Call it first thing in `main` when [`should_supervise`] says yes, before any thread starts,
/// from the thread that then calls [`supervise`] (which calls it too, for programs that call
/// nothing before it). Only the window before the first instruction of `main` (the dynamic
/// loader, the runtime's start, about a millisecond) is left: no code of the program runs
/// there.
pub fn hold_supervisor_signals() {
    signals::hold();
}

/// Delivers the signals held since [`hold_supervisor_signals`], once their handlers are in
/// place.
pub(crate) fn release_signals() {
    signals::release();
}

/// Runs this program as a supervisor until the service ends, and returns the exit code to
/// exit with: the serving generation's (its code, or 128 + the signal that ended it), or
/// non-zero when a crash loop made it give up. Call it first thing in `main`, before any
/// listener exists, and exit with its code; call [`hold_supervisor_signals`] before anything that can
/// take time (threads, logging set-up), so a signal sent meanwhile waits for the supervisor.
///
/// # Errors
/// [`Error::Io`] when the notify socket, signal handlers or subreaper role cannot be set up;
/// [`Error::Env`] for malformed socket-activation variables; [`Error::Spawn`] when
/// generation 1 cannot be started.
pub fn supervise() -> Result<i32, Error> {
    hold_supervisor_signals();
    let supervisor = Supervisor::new();
    // The handlers are in place (or an error ends the supervisor): a signal that waited while
    // this process started is delivered now.
    signals::release();
    let mut supervisor = supervisor?;
    supervisor.start_first()?;
    Ok(supervisor.run())
}

/// Why a process must not serve and is stopped, for the log line saying so.
#[derive(Debug, Clone, Copy)]
enum Stray {
    /// It says it is ready while `serving` serves, and its parent (`parent`, when known) is
    /// not that one.
    NotTheSuccessor { serving: u32, parent: Option<u32> },
    /// `serving`, another process, became ready first and serves in its place.
    Outrun { serving: u32 },
    /// A successor of `parent` still starting when `parent` died.
    Orphan { parent: u32 },
}

/// The generation that serves (or is starting to).
#[derive(Debug)]
struct Serving {
    pid: u32,
    number: u64,
    /// Said `READY=1`.
    ready: bool,
    /// Said `STOPPING=1`: its end is deliberate.
    stopping: bool,
    /// Signals forwarded to it whose default action ends a process: dying of one is not a
    /// crash.
    forwarded: Vec<Signal>,
}

struct Supervisor {
    me: u32,
    exe: &'static Executable,
    socket: UnixDatagram,
    /// `@name` of the socket, for the generations' `NOTIFY_SOCKET`.
    socket_name: String,
    upstream: Option<Notifier>,
    signals: SignalPipe,
    children: Children,
    serving: Option<Serving>,
    /// The serving generation's listening sockets, with their names.
    store: Vec<(OwnedFd, String)>,
    crashes: CrashPolicy,
    /// When to start a generation after a crash.
    restart_at: Option<Instant>,
    /// The stop signal, once one arrived.
    stopping: Option<Signal>,
    /// A `SIGUSR2` that arrived before the serving generation was ready.
    held_restart: bool,
    /// The number of the generation a crash restart starts.
    next_number: u64,
    exit_code: i32,
    /// Processes told to stop because they must not serve (strays and orphaned successors):
    /// they never serve, and their messages are not passed on.
    strays: Vec<u32>,
    /// A crash loop made it give up: the exit code is kept whatever ends after.
    gave_up: bool,
    /// When the processes still there after a stop are killed.
    kill_at: Option<Instant>,
    /// The processes killed since, each logged once.
    killed: Vec<u32>,
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_owned(),
        source,
    }
}

impl Supervisor {
    fn new() -> Result<Supervisor, Error> {
        let me = std::process::id();
        // First: the signals held since the start are handled as soon as they are released.
        let signals = SignalPipe::install(&[SIGTERM, SIGINT, SIGUSR2, SIGHUP, SIGCHLD])
            .map_err(io_error("cannot install the supervisor's signal handlers"))?;
        // Socket-activated fds (LISTEN_PID = ours) are read, checked and kept: generation 1
        // gets them, with LISTEN_PID naming it.
        let startup = crate::startup::startup()?;
        let exe = Executable::current()?;
        crate::sys::become_subreaper().map_err(io_error("cannot become the child subreaper"))?;
        let upstream = Notifier::from_env();
        // Private and abstract (no file to leave behind); senders are checked by ancestry.
        let name = format!("grace-supervisor-{me}-{}", crate::notify::monotonic_usec());
        let socket = UnixDatagram::bind_addr(
            &crate::sys::abstract_addr(name.as_bytes()).map_err(io_error("cannot name the notify socket"))?,
        )
        .map_err(io_error("cannot bind the supervisor's notify socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(io_error("cannot make the notify socket non-blocking"))?;
        crate::sys::pass_credentials(&socket).map_err(io_error("cannot ask for senders' credentials"))?;
        let store = startup.registry.handoff()?.sockets;
        crate::metrics::supervisor_started();
        Ok(Supervisor {
            me,
            exe,
            socket,
            socket_name: format!("@{name}"),
            upstream,
            signals,
            children: Children::new(me),
            serving: None,
            store,
            crashes: CrashPolicy::default(),
            restart_at: None,
            stopping: None,
            held_restart: false,
            next_number: 2,
            exit_code: 0,
            strays: Vec::new(),
            gave_up: false,
            kill_at: None,
            killed: Vec::new(),
        })
    }

    fn start_first(&mut self) -> Result<(), Error> {
        let pid = self.spawn(1)?;
        tracing::info!(
            supervisor = self.me,
            generation = 1,
            pid,
            "supervising: started the first generation"
        );
        Ok(())
    }

    /// Starts generation `number` on the stored sockets, in a process group of its own (a
    /// terminal's Ctrl-C reaches only the supervisor, which forwards it once).
    fn spawn(&mut self, number: u64) -> Result<u32, Error> {
        let sockets = self
            .store
            .iter()
            .map(|(fd, name)| {
                fd.try_clone()
                    .map(|fd| (fd, name.clone()))
                    .map_err(io_error("cannot duplicate a stored socket"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = NextProcess::new(self.exe, Handoff { sockets });
        next.env(NOTIFY_SOCKET, &self.socket_name)
            .env(GRACE_SUPERVISOR, self.me.to_string())
            .env(GRACE_GENERATION, number.to_string())
            .new_process_group();
        let child = next.spawn()?;
        let pid = child.pid();
        self.watch(pid);
        self.serving = Some(Serving {
            pid,
            number,
            ready: false,
            stopping: false,
            forwarded: Vec::new(),
        });
        Ok(pid)
    }

    fn watch(&mut self, pid: u32) {
        self.children.watch(pid);
    }

    fn run(&mut self) -> i32 {
        loop {
            if let Some(code) = self.finished() {
                return code;
            }
            self.wait();
            // Order matters: notifications first, so a successor's MAINPID=, sent before its
            // parent could exit, is known before that exit is looked at.
            self.read_notifications();
            self.reap();
            for (pid, code) in self.exited() {
                self.generation_ended(pid, code);
            }
            for signal in self.signals.take() {
                self.on_signal(signal);
            }
            if self.restart_at.is_some_and(|at| at <= Instant::now()) {
                self.restart_at = None;
                self.restart_after_crash();
            }
            if self.kill_at.is_some_and(|at| at <= Instant::now()) {
                self.kill_the_rest();
            }
        }
    }

    /// The exit code, once nothing is left to supervise.
    fn finished(&mut self) -> Option<i32> {
        if self.serving.is_some() || self.restart_at.is_some() || !self.children.none_watched() {
            return None;
        }
        self.reap();
        if self.children.any_left() {
            // An orphan never heard from (a successor still starting) is ended, not left
            // behind: with no generation left, this is a stop.
            if self.stopping.is_none() {
                self.stop_all(Signal::SIGTERM, "no generation is left");
            }
            return None;
        }
        let code = self.exit_code;
        tracing::info!(supervisor = self.me, code, "every generation has exited: exiting");
        if let Some(up) = &self.upstream {
            up.send(&["STOPPING=1".into(), format!("STATUS=Exited ({code})")]);
        }
        Some(code)
    }

    /// Blocks until a notification, a signal or an exit, or the crash restart's time.
    fn wait(&self) {
        let mut fds = vec![
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
        ];
        fds.extend(self.children.poll_fds());
        let kill = self.kill_at.map(|at| at.max(Instant::now() + KILL_AGAIN));
        let next = match (self.restart_at, kill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        // EINTR (a signal) is a wake-up like any other.
        let _ = poll(&mut fds, timeout);
    }

    fn read_notifications(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            let received = match crate::sys::recv_with_fds(&self.socket, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(supervisor = self.me, error = %e, "the notify socket failed");
                    return;
                }
            };
            let message = Message::parse(&buf[..received.len]);
            // Only the server's own processes: every generation descends from this one (it is
            // the subreaper, so even an orphaned one does).
            let ours = received
                .sender
                .is_some_and(|p| p > 0 && crate::sys::is_descendant(p as u32, self.me));
            if !ours {
                tracing::warn!(
                    supervisor = self.me,
                    sender = ?received.sender,
                    "ignoring a notification from outside the server's processes"
                );
                continue;
            }
            if received.truncated {
                tracing::warn!(
                    supervisor = self.me,
                    sender = ?received.sender,
                    limit = crate::sys::MAX_FDS_PER_MESSAGE,
                    "a notification's sockets did not fit: not kept"
                );
            }
            self.on_message(&message, received.sender, received.fds);
        }
    }

    fn on_message(&mut self, message: &Message, sender: Option<i32>, fds: Vec<OwnedFd>) {
        let number = message.value(protocol::GENERATION).and_then(|n| n.parse().ok());
        let from_stray = |strays: &[u32], pid: u32| strays.contains(&pid);
        if sender.is_some_and(|p| from_stray(&self.strays, p as u32)) {
            tracing::debug!(supervisor = self.me, sender = ?sender, "ignoring a stopped stray's notification");
            return;
        }
        if let Some(pid) = message.value("MAINPID").and_then(|p| p.parse::<u32>().ok())
            && (from_stray(&self.strays, pid) || !self.new_main_pid(pid, number))
        {
            // Not the server's main process: systemd must not hear of it.
            return;
        }
        let is_serving = |s: &Serving| sender.is_some_and(|p| p as u32 == s.pid);
        if let Some(serving) = self.serving.as_mut().filter(|s| is_serving(s)) {
            if message.flag("READY") && !serving.ready {
                serving.ready = true;
                if self.held_restart && self.stopping.is_none() {
                    self.held_restart = false;
                    tracing::info!(
                        supervisor = self.me,
                        generation = serving.number,
                        pid = serving.pid,
                        "the serving generation is ready: passing on the SIGUSR2 held for it"
                    );
                    forward(self.me, serving, Signal::SIGUSR2);
                }
            }
            if message.flag("STOPPING") {
                serving.stopping = true;
            }
            if let Some(names) = message.value(protocol::FDS) {
                let names: Vec<String> = if names.is_empty() {
                    Vec::new()
                } else {
                    names.split(':').map(str::to_owned).collect()
                };
                if names.len() == fds.len() {
                    self.store = fds.into_iter().zip(names).collect();
                } else {
                    tracing::warn!(
                        supervisor = self.me,
                        generation = serving.number,
                        pid = serving.pid,
                        sockets = fds.len(),
                        names = names.len(),
                        "a generation's sockets and their names do not match: keeping the previous ones"
                    );
                }
            }
        }
        if let Some(up) = &self.upstream {
            up.send(&message.upstream(self.me));
        }
    }

    /// A generation says it is the main process now (it took over, or started after a crash).
    /// Returns false when it is a stray instead, which is stopped: another serves, and it is
    /// not that one's successor.
    fn new_main_pid(&mut self, pid: u32, number: Option<u64>) -> bool {
        let previous = self.serving.as_ref().map(|s| (s.pid, s.number));
        if previous.is_some_and(|(p, _)| p == pid) {
            if let (Some(serving), Some(n)) = (self.serving.as_mut(), number) {
                serving.number = n;
            }
            return true;
        }
        if let Some(current) = self.serving.as_ref() {
            let parent = crate::sys::parent_of(pid);
            // Its parent serves; or its parent has just died (it was reparented to this
            // process) and it was the serving one, whose exit is not yet looked at.
            let successor = parent == Some(current.pid)
                || (parent == Some(self.me) && !crate::sys::is_running(current.pid));
            if !successor {
                let current_pid = current.pid;
                if current.ready {
                    self.stop_stray(
                        pid,
                        Stray::NotTheSuccessor {
                            serving: current_pid,
                            parent,
                        },
                    );
                    return false;
                }
                // The serving one is still starting (a crash restart): the first to be ready
                // serves, the other must not.
                self.stop_stray(current_pid, Stray::Outrun { serving: pid });
            }
        }
        let number = number.or(previous.map(|(_, n)| n + 1)).unwrap_or(1);
        if let Some((old, _)) = previous {
            tracing::info!(
                supervisor = self.me,
                generation = number,
                pid,
                previous = old,
                "a new generation is serving"
            );
        }
        let mut serving = Serving {
            pid,
            number,
            ready: false,
            stopping: false,
            forwarded: Vec::new(),
        };
        // Someone serves: a crash restart still waiting is not needed.
        self.restart_at = None;
        if let Some(signal) = self.stopping {
            // It took over while the stop was on its way to its parent: stop it too.
            forward(self.me, &mut serving, signal);
        }
        self.serving = Some(serving);
        self.watch(pid);
        true
    }

    /// Stops `pid`, a process that must not serve (`why`), and keeps watching it: it has just
    /// started and drains nothing.
    fn stop_stray(&mut self, pid: u32, why: Stray) {
        if self.strays.contains(&pid) {
            return;
        }
        let me = self.me;
        match why {
            Stray::NotTheSuccessor { serving, parent } => tracing::warn!(
                supervisor = me,
                pid,
                serving,
                parent,
                "stopping a stray generation: it is ready while another serves, and it is not that one's successor"
            ),
            Stray::Outrun { serving } => tracing::warn!(
                supervisor = me,
                pid,
                serving,
                "stopping a stray generation: another process became ready first and serves in its place"
            ),
            Stray::Orphan { parent } => tracing::warn!(
                supervisor = me,
                pid,
                parent,
                "stopping a stray generation: a successor still starting when its parent died"
            ),
        }
        self.strays.push(pid);
        self.watch(pid);
        signal_pid(self.me, pid, Signal::SIGTERM);
    }

    /// Stops every successor still starting of a serving generation that died (orphans
    /// reparented to this process, never heard from): a new generation replaces it, and
    /// only one may serve.
    fn stop_orphans(&mut self, dead: u32) {
        for pid in crate::sys::children_of(self.me) {
            let known = self.children.is_watched(pid);
            if !known && crate::sys::is_running(pid) {
                self.stop_stray(pid, Stray::Orphan { parent: dead });
            }
        }
    }

    /// Sends `signal` to every process this one has: the serving generation (as a forwarded
    /// signal), and every child (draining generations, strays, orphans); the ones still
    /// there [`KILL_AFTER`] after the first stop are killed.
    fn stop_all(&mut self, signal: Signal, why: &str) {
        if self.stopping.is_none() {
            self.stopping = Some(signal);
            self.held_restart = false;
            self.kill_at = Some(Instant::now() + KILL_AFTER);
            if self.restart_at.take().is_some() {
                tracing::info!(
                    supervisor = self.me,
                    reason = why,
                    "stopping: not restarting after the crash"
                );
            }
        }
        let serving = self.serving.as_mut().map(|serving| {
            forward(self.me, serving, signal);
            serving.pid
        });
        let mut others: Vec<u32> = crate::sys::children_of(self.me);
        others.extend(self.children.pids());
        others.sort_unstable();
        others.dedup();
        for pid in others.into_iter().filter(|&p| Some(p) != serving) {
            if crate::sys::is_running(pid) {
                tracing::info!(
                    supervisor = self.me,
                    reason = why,
                    pid,
                    %signal,
                    "stopping: signalling a process other than the serving one"
                );
                signal_pid(self.me, pid, signal);
            }
        }
    }

    /// Kills every process still there once [`KILL_AFTER`] has passed since the stop.
    fn kill_the_rest(&mut self) {
        let mut left: Vec<u32> = crate::sys::children_of(self.me);
        left.extend(self.children.pids());
        left.sort_unstable();
        left.dedup();
        for pid in left.into_iter().filter(|&p| crate::sys::is_running(p)) {
            if !self.killed.contains(&pid) {
                tracing::warn!(
                    supervisor = self.me,
                    pid,
                    after_s = KILL_AFTER.as_secs(),
                    "a process is still there after the stop: killing it"
                );
                self.killed.push(pid);
            }
            signal_pid(self.me, pid, Signal::SIGKILL);
        }
    }

    fn reap(&mut self) {
        self.children.reap();
    }

    fn exited(&mut self) -> Vec<(u32, Option<i32>)> {
        self.children.exited()
    }

    fn generation_ended(&mut self, pid: u32, code: Option<i32>) {
        let shown = code.map_or_else(|| "status unknown".to_owned(), describe);
        self.strays.retain(|&p| p != pid);
        if self.serving.as_ref().is_some_and(|s| s.pid == pid) {
            // A successor says so before its parent can exit (it is told only after): its
            // message is here now if there is one, even when it came after the last read.
            self.read_notifications();
        }
        let Some(serving) = self.serving.take_if(|s| s.pid == pid) else {
            tracing::debug!(supervisor = self.me, pid, status = %shown, "a previous generation ended");
            return;
        };
        let n = serving.number;
        let by_forwarded_signal =
            code.is_some_and(|c| serving.forwarded.iter().any(|&s| c == 128 + s as i32));
        if self.stopping.is_some() || serving.stopping || code == Some(0) || by_forwarded_signal {
            tracing::info!(
                supervisor = self.me,
                generation = n,
                pid,
                status = %shown,
                "the serving generation ended"
            );
            if !self.gave_up {
                self.exit_code = code.unwrap_or(0);
            }
            return;
        }
        crate::metrics::supervisor_crash();
        if !serving.ready && n == 1 {
            tracing::error!(
                supervisor = self.me,
                generation = n,
                pid,
                status = %shown,
                "the first generation exited before it was ready: not restarting it"
            );
            self.exit_code = code.unwrap_or(1);
            return;
        }
        // Its successors still starting (orphans now) are stopped: the restart replaces it.
        tracing::error!(
            supervisor = self.me,
            generation = n,
            pid,
            status = %shown,
            "the serving generation died with no successor"
        );
        self.stop_orphans(pid);
        self.crashed(n + 1, code);
    }

    /// Counts a crash (logged by the caller; generation `next` would replace it) and
    /// schedules the replacement, or gives up.
    fn crashed(&mut self, next: u64, code: Option<i32>) {
        match self.crashes.record(Instant::now()) {
            AfterCrash::Restart(delay) => {
                tracing::error!(
                    supervisor = self.me,
                    next,
                    delay_ms = delay.as_millis() as u64,
                    "crash restart: starting a new generation on the same sockets"
                );
                self.next_number = next;
                self.restart_at = Some(Instant::now() + delay);
            }
            AfterCrash::GiveUp { crashes } => {
                tracing::error!(
                    supervisor = self.me,
                    crashes,
                    window_s = self.crashes.window().as_secs(),
                    "too many crashes: giving up"
                );
                self.exit_code = code.filter(|&c| c != 0).unwrap_or(1);
                self.gave_up = true;
                self.stop_all(Signal::SIGTERM, "giving up");
            }
        }
    }

    fn restart_after_crash(&mut self) {
        let number = self.next_number;
        match self.spawn(number) {
            Ok(pid) => {
                crate::metrics::supervisor_respawn();
                if let Some(up) = &self.upstream {
                    up.send(&[format!(
                        "STATUS=Restarted after a crash: generation {number} starting with pid {pid}"
                    )]);
                }
                tracing::info!(
                    supervisor = self.me,
                    generation = number,
                    pid,
                    "crash restart: started a new generation"
                );
            }
            Err(e) => {
                tracing::error!(
                    supervisor = self.me,
                    generation = number,
                    error = %e,
                    "crash restart: cannot start a new generation"
                );
                self.crashed(number, Some(1));
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        let Ok(signal) = Signal::try_from(signal) else {
            return;
        };
        match signal {
            Signal::SIGCHLD => {}
            Signal::SIGTERM | Signal::SIGINT => self.stop_all(signal, signal.as_ref()),
            Signal::SIGUSR2 => match self.serving.as_mut() {
                _ if self.stopping.is_some() => {
                    tracing::info!(supervisor = self.me, "SIGUSR2 while stopping: ignored");
                }
                Some(serving) if serving.ready => forward(self.me, serving, signal),
                _ => {
                    self.held_restart = true;
                    tracing::info!(
                        supervisor = self.me,
                        "SIGUSR2 before the serving generation is ready: holding it until then"
                    );
                }
            },
            _ => {
                if let Some(serving) = self.serving.as_mut() {
                    forward(self.me, serving, signal);
                }
            }
        }
    }
}

/// Sends `signal` to the serving generation.
fn forward(me: u32, serving: &mut Serving, signal: Signal) {
    let pid = serving.pid;
    tracing::info!(
        supervisor = me,
        pid,
        %signal,
        "forwarding a signal to the serving generation"
    );
    serving.forwarded.push(signal);
    signal_pid(me, pid, signal);
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    #[test]
    fn kill_after_is_the_default_stop_timeout_and_a_margin() {
        assert_eq!(
            super::KILL_AFTER,
            crate::DEFAULT_STOP_TIMEOUT + std::time::Duration::from_secs(10)
        );
    }
}
