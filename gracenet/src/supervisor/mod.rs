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
mod ending;
pub(crate) mod flood;
mod notifications;
pub(crate) mod protocol;
mod signals;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR2};

use crate::error::Error;
use crate::notify::Notifier;
use crate::process::{Executable, Handoff, NextProcess};
use crate::vars::{GRACE_GENERATION, GRACE_SUPERVISOR, NOTIFY_SOCKET};
pub(crate) use children::{Children, describe, describe_status, signal_pid, signal_pid_again};
#[cfg(feature = "tokio")]
pub(crate) use crashes::CRASH_LIMIT;
use crashes::CrashPolicy;
pub(crate) use signals::SignalPipe;

/// How long after a stop (or giving up) the processes still there are killed (`SIGKILL`): a
/// generation's default stop timeout and a margin, so a drain of the default length is never
/// cut short.
pub(crate) const KILL_AFTER: Duration = Duration::from_secs(60 + 10);

/// How often the supervisor looks for processes left to kill once [`KILL_AFTER`] has passed
/// (a killed process's children are reparented to it).
pub(crate) const KILL_AGAIN: Duration = Duration::from_millis(100);

/// Whether this process should run as a supervisor: asked for (`requested`, a `--supervise`
/// flag, say) or pid 1, and not already a generation under a supervisor.
pub fn should_supervise(requested: bool) -> bool {
    std::env::var_os(GRACE_SUPERVISOR).is_none() && (requested || std::process::id() == 1)
}

/// [`Error::AlreadySupervised`] in a process a supervisor or a cluster's primary started: a
/// supervisor (or primary) there would start another in each of its processes, without end.
pub(crate) fn refuse_if_supervised() -> Result<(), Error> {
    match std::env::var_os(GRACE_SUPERVISOR) {
        Some(parent) => Err(Error::AlreadySupervised {
            parent: parent.to_string_lossy().into_owned(),
        }),
        None => Ok(()),
    }
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

/// Makes the signals gracenet handles (`SIGUSR2`, `SIGTERM`, `SIGINT`, and `SIGHUP`) safe from
/// this moment, whatever the process becomes: a supervisor, a cluster's primary, or a
/// generation. It blocks them in the calling thread (and so in every thread started after),
/// so a restart or stop signal that arrives while the program starts stays pending instead of
/// ending the process (their default action); whichever handler gracenet installs then takes
/// it over: the supervisor's and the primary's loops, or a generation's signal thread, which
/// unblocks `SIGUSR2`, `SIGTERM` and `SIGINT` for itself once its handlers are in place (a
/// `SIGUSR2` that waited restarts the generation once it serves).
///
/// Call it first thing in `main`, before any thread starts. `SIGHUP` stays blocked in every
/// thread gracenet starts: a program that handles it unblocks it in the thread that does
/// ([`unblock_in_this_thread`]). For one that does not handle it, the generation's signal
/// thread takes it (its default action ends the process), and a cluster's worker ignores it
/// (its primary drains every worker on `SIGHUP`). A program that handles the signals itself
/// ([`GenerationBuilder::handle_signals`](crate::GenerationBuilder::handle_signals)`(false)`)
/// must not call it, or must unblock them where it handles them.
pub fn hold_signals() {
    signals::hold();
}

/// Unblocks `signal` in the calling thread (after [`hold_signals`]): a handler of the
/// program's own (for `SIGHUP`, say) calls it at the start of its thread, so the signal, held
/// since the start, is delivered there. `signal` is its number (`libc::SIGHUP`,
/// `signal_hook::consts::SIGHUP`); a number that names no signal is ignored.
pub fn unblock_in_this_thread(signal: i32) {
    if let Ok(signal) = Signal::try_from(signal) {
        signals::unblock(&[signal]);
    }
}

/// Unblocks `signals` in the calling thread (a generation's signal thread, once its handlers
/// are in place).
pub(crate) fn unblock_held(signals: &[Signal]) {
    signals::unblock(signals);
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
/// generation 1 cannot be started; [`Error::AlreadySupervised`] in a process a supervisor or
/// a cluster's primary started.
pub fn supervise() -> Result<i32, Error> {
    refuse_if_supervised()?;
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
    /// The serving generations' PID file and control socket, as their ready messages said
    /// ([`protocol::PID_FILE`], [`protocol::CONTROL`]): removed at the exit if still theirs.
    files: Files,
    /// The notifications each sender had handled this second: a flood is cut off.
    flood: flood::FloodGate,
    /// Notifications from outside the server's processes since the last line about them, and
    /// when the next line may be logged.
    foreign: (u64, Instant),
}

/// The files the generations keep, and the pids that may have written the PID file.
#[derive(Debug, Default)]
struct Files {
    pid_file: Option<std::path::PathBuf>,
    control: Option<std::path::PathBuf>,
    /// The generations: each one watched, or that said it serves (the last
    /// [`Files::MAX_PIDS`]). One killed after writing the PID file, before its "ready" came,
    /// is among them.
    generations: std::collections::VecDeque<u32>,
}

impl Files {
    const MAX_PIDS: usize = 1024;

    fn learn(&mut self, message: &protocol::Message, sender: u32) {
        if let Some(path) = message.value(protocol::PID_FILE) {
            self.pid_file = Some(path.into());
        }
        if let Some(path) = message.value(protocol::CONTROL) {
            self.control = Some(path.into());
        }
        if message.flag("READY") {
            self.generation(sender);
        }
    }

    /// `pid` is one of the generations.
    fn generation(&mut self, pid: u32) {
        if !self.generations.contains(&pid) {
            if self.generations.len() == Self::MAX_PIDS {
                self.generations.pop_front();
            }
            self.generations.push_back(pid);
        }
    }

    /// At the supervisor's exit, every generation gone: removes the PID file if it names one
    /// of them (a crashed or killed one could not remove it itself), and the control socket's
    /// path if it still leads to the socket in `store` (nobody else's).
    fn remove(&self, me: u32, store: &[(OwnedFd, String)]) {
        if let Some(path) = &self.pid_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            match text.trim().parse::<u32>() {
                Ok(pid)
                    if self.generations.contains(&pid)
                        && matches!(
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
                            Err(nix::errno::Errno::ESRCH)
                        ) =>
                {
                    match std::fs::remove_file(path) {
                        Ok(()) => crate::log::info!(
                            supervisor = me,
                            path = %path.display(),
                            named = pid,
                            "removed the PID file a generation left (it names a generation that is gone)"
                        ),
                        Err(e) => {
                            crate::log::warn!(supervisor = me, path = %path.display(), error = %e, "cannot remove the PID file")
                        }
                    }
                }
                _ => crate::log::info!(
                    supervisor = me,
                    path = %path.display(),
                    "leaving the PID file: it names no generation of this supervisor's that is gone"
                ),
            }
        }
        if let Some(path) = &self.control
            && let Some((fd, _)) = store.iter().find(|(_, name)| name == crate::control::SOCKET_NAME)
        {
            crate::control::PathIdentity::inherited(path, fd.as_fd()).remove();
        }
    }
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
            files: Files::default(),
            flood: flood::FloodGate::default(),
            foreign: (0, Instant::now()),
        })
    }

    fn start_first(&mut self) -> Result<(), Error> {
        let pid = self.spawn(1)?;
        crate::log::info!(
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
        self.files.generation(pid);
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
        crate::log::info!(supervisor = self.me, code, "every generation has exited: exiting");
        self.files.remove(self.me, &self.store);
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

    fn reap(&mut self) {
        self.children.reap();
    }

    fn exited(&mut self) -> Vec<(u32, Option<i32>)> {
        self.children.exited()
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
                    crate::log::info!(supervisor = self.me, "SIGUSR2 while stopping: ignored");
                }
                Some(serving) if serving.ready => forward(self.me, serving, signal),
                _ => {
                    self.held_restart = true;
                    crate::log::info!(
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
    crate::log::info!(
        supervisor = me,
        pid,
        %signal,
        "forwarding a signal to the serving generation"
    );
    // Once the same signal is no longer pending there: a second SIGTERM (or SIGINT) stops the
    // generation at once, so it must arrive as one; and the first, sent while the generation's
    // own copy of a signal sent to every process is pending, would merge with it and arrive
    // as that other sender's, which does not count towards a second stop.
    signal_pid_again(me, pid, signal);
    serving.forwarded.push(signal);
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
