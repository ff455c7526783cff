//! The cluster's primary process: it performs what the machine ([`super::machine`]) decides,
//! on real processes, and feeds it what happens (workers' notifications, exits, signals, the
//! control socket, time). No decision is taken here that the machine could take.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::MsgFlags;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR2};

mod control;
mod listeners;
mod status;

use super::ClusterBuilder;
use super::machine::{
    Action, Cluster as Machine, Event, GaveUp, KILL_GRACE, KillReason, Load, Recycle, RecycleNotice,
    RecycleReason, ReplyId, RolloutResult, Settings, Sockets, Stall, StartId,
};
use crate::error::Error;
use crate::notify::Notifier;
use crate::process::{Executable, Handoff, NextProcess};
use crate::supervisor::protocol::{self, Message};
use crate::supervisor::{Children, SignalPipe, describe, signal_pid};
use crate::vars::{
    GRACE_GENERATION, GRACE_HEARTBEAT_MS, GRACE_LOAD_FD, GRACE_SUPERVISOR, GRACE_WORKER, NOTIFY_SOCKET,
};
use control::Reading;

/// What the primary knows of a worker process beyond the machine's view, for `status`.
#[derive(Debug, Clone, Copy)]
struct WorkerInfo {
    generation: u64,
    since: Instant,
    connections: usize,
    accepted: u64,
    /// Requests served, as its last heartbeat said.
    requests: u64,
    /// Resident memory in bytes, as its last heartbeat said.
    rss: Option<u64>,
    /// It said `STOPPING=1` when the primary had not asked it to stop: it drains by itself
    /// (a stop sent to it, or its program's own), and is replaced when it exits.
    draining_by_itself: bool,
}

/// Who waits for a rolling restart's result.
enum Waiter {
    /// A signal: the result is logged.
    Signal(&'static str),
    /// A control client: answered on its connection.
    Client(UnixStream),
}

pub(crate) struct Primary {
    me: u32,
    exe: &'static Executable,
    notify: UnixDatagram,
    notify_name: String,
    /// The notify socket's private directory, removed at the end.
    notify_dir: PathBuf,
    /// Copies of each serving worker's inboxes (`cluster::transfer`), by pid.
    inboxes: HashMap<u32, super::transfer::HeldInboxes>,
    /// Connections it took from a worker (ended, silent, or unable to accept) that no other
    /// worker had room for yet: passed on at a later turn, closed only when it exits.
    unpassed: super::transfer::Unpassed,
    upstream: Option<Notifier>,
    signals: SignalPipe,
    children: Children,
    machine: Machine,
    heartbeat: Duration,
    /// The listening sockets, with their names, that each slot's sockets are made from:
    /// `None` until known (the first worker binds them and sends a copy when ready).
    store: Option<Vec<(OwnedFd, String)>>,
    /// Each slot's own sockets: a TCP listener bound with `SO_REUSEPORT` gets a sibling per
    /// slot in its reuseport group (so a connection waits in, and wakes, one worker only);
    /// other sockets are shared. Kept while the slot exists, so a worker's replacement
    /// (after a crash or a hang) takes over the connections queued for it.
    slot_sockets: Vec<Option<Vec<(OwnedFd, String)>>>,
    info: HashMap<u32, WorkerInfo>,
    /// The last generation number seen in each slot.
    generations: Vec<u64>,
    /// Replacements per slot (restarts, crashes, hung workers).
    replaced: Vec<u64>,
    events: VecDeque<Event>,
    waiters: HashMap<ReplyId, Waiter>,
    next_reply: ReplyId,
    control: Option<(UnixListener, crate::control::PathIdentity)>,
    reading: Vec<Reading>,
    pid_file: Option<PathBuf>,
    /// The exit code, once the machine said to exit.
    exit: Option<i32>,
    /// Told systemd it is ready (every slot served once).
    announced: bool,
    started: Instant,
    /// The workers' open connections, for the balance (`None` if it could not be made).
    load: Option<super::balance::LoadTable>,
    /// The connections the serving workers have accepted, counted up across their
    /// replacements (a new worker counts from 0), and each slot's count as last read.
    accepted: (u64, Vec<u64>),
    /// The cluster's secrets, handed to every worker (`None` if they could not be made).
    secrets: Option<OwnedFd>,
    /// The control socket is not accepted from until then (out of fds, or too many clients).
    control_paused_until: Option<Instant>,
    /// How many control clients are read at once: [`control::MAX_CONTROL_CLIENTS`], or a
    /// quarter of the fd limit if that is less.
    max_control_clients: usize,
    /// Files held open so that reading a worker's message (with its sockets) never finds the
    /// fd limit reached.
    fd_reserve: Vec<std::fs::File>,
    control_backoff: Duration,
    /// Each slot's listeners' index in their `SO_REUSEPORT` groups (the order they joined),
    /// when they have listeners of their own; the next index; and the live indexes new
    /// connections were last steered to (`None`: not steered, the kernel's hash).
    group_index: Vec<Option<u32>>,
    next_index: u32,
    steered: Option<Vec<u32>>,
    /// Removed slots' listeners waiting for their workers to exit before they are shut.
    leaving: Vec<listeners::Leaving>,
    /// Steering failed or the groups' order is no longer known: the kernel's hash decides.
    no_steering: bool,
    /// Notifications from outside the cluster ignored since the last warning, and when the
    /// next warning may be logged.
    foreign: (u64, Instant),
    /// The notifications each sender had handled this second: a flood is cut off.
    flood: crate::supervisor::flood::FloodGate,
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_owned(),
        source,
    }
}

impl Primary {
    pub(crate) fn new(settings: ClusterBuilder) -> Result<Primary, Error> {
        let me = std::process::id();
        let signals = SignalPipe::install(&[SIGTERM, SIGINT, SIGUSR2, SIGHUP, SIGCHLD, SIGTTIN, SIGTTOU])
            .map_err(io_error("cannot install the primary's signal handlers"))?;
        let startup = crate::startup::startup()?;
        let exe = Executable::current()?;
        raise_fd_limit(me);
        crate::sys::become_subreaper().map_err(io_error("cannot become the child subreaper"))?;
        let upstream = Notifier::from_env();
        // A path in a directory of its own, mode 0700: only this user (and root) can send to
        // it. (An abstract name can be reached by anyone on the host: a flood of datagrams
        // would fill its queue, and the workers' heartbeats, which never wait, would be lost.)
        let notify_dir = private_dir(me).map_err(io_error("cannot make the notify socket's directory"))?;
        // Removed again if the start fails below (a control socket or PID file path refused).
        let dir_guard = PrivateDirGuard(Some(notify_dir.clone()));
        let notify_path = notify_dir.join("notify");
        let notify =
            UnixDatagram::bind(&notify_path).map_err(io_error("cannot bind the primary's notify socket"))?;
        notify
            .set_nonblocking(true)
            .map_err(io_error("cannot make the notify socket non-blocking"))?;
        crate::sys::pass_credentials(&notify).map_err(io_error("cannot ask for senders' credentials"))?;
        let activated = startup.registry.handoff()?.sockets;
        let control = match &settings.control_socket {
            Some(path) => {
                let fd = crate::bind::unix_private(path)?;
                let listener = UnixListener::from(fd);
                listener
                    .set_nonblocking(true)
                    .map_err(io_error("cannot make the control socket non-blocking"))?;
                Some((listener, crate::control::PathIdentity::of(path)))
            }
            None => None,
        };
        if let Some(path) = &settings.pid_file {
            crate::pidfile::write(path)?;
        }
        let heartbeat = settings
            .worker_timeout
            .map_or(super::DEFAULT_HEARTBEAT, |t| {
                (t / 4).min(super::DEFAULT_HEARTBEAT)
            })
            .max(Duration::from_millis(20));
        let mut machine = Machine::new(Settings {
            workers: settings.workers.max(1),
            surge: settings.surge,
            ready_timeout: settings.ready_timeout,
            worker_timeout: settings.worker_timeout,
            crash_limit: crate::supervisor::CRASH_LIMIT,
            recycle: Recycle {
                max_requests: settings.max_requests,
                max_memory: settings.max_memory,
                seed: random_seed(),
            },
            heartbeat,
            cores: super::default_workers(),
        });
        if activated.is_empty() {
            // The first worker binds the sockets: the machine holds the other starts until
            // they are known.
            machine = machine.binding_first();
        }
        let workers = settings.workers.max(1);
        let load = match super::balance::LoadTable::create() {
            Ok(table) => {
                table.set_slots(workers);
                Some(table)
            }
            Err(e) => {
                crate::log::warn!(
                    primary = me,
                    error = %e, "cannot make the load table: workers accept without balancing"
                );
                None
            }
        };
        let secrets = match super::secret::create(&settings.secrets) {
            Ok(fd) => Some(fd),
            // The application's own secrets are part of what it serves: without them, no start.
            Err(e) if !settings.secrets.0.is_empty() => {
                return Err(io_error("cannot make the file of the secrets the workers share")(
                    e,
                ));
            }
            Err(e) => {
                crate::log::warn!(
                    primary = me,
                    error = %e, "cannot make the workers' shared secret: each worker makes keys of its own (a TLS session resumes only on the worker that began it)"
                );
                None
            }
        };
        dir_guard.keep();
        Ok(Primary {
            me,
            exe,
            notify,
            notify_name: notify_path.to_string_lossy().into_owned(),
            notify_dir,
            inboxes: HashMap::new(),
            unpassed: super::transfer::Unpassed::default(),
            upstream,
            signals,
            children: Children::new(me),
            machine,
            heartbeat,
            store: (!activated.is_empty()).then_some(activated),
            slot_sockets: (0..workers).map(|_| None).collect(),
            info: HashMap::new(),
            generations: vec![0; workers],
            replaced: vec![0; workers],
            events: VecDeque::new(),
            waiters: HashMap::new(),
            next_reply: 0,
            control,
            reading: Vec::new(),
            pid_file: settings.pid_file,
            exit: None,
            announced: false,
            started: Instant::now(),
            load,
            accepted: (0, Vec::new()),
            secrets,
            control_paused_until: None,
            max_control_clients: control_clients_for_fd_limit(),
            fd_reserve: fd_reserve(),
            control_backoff: Duration::from_millis(50),
            foreign: (0, Instant::now()),
            flood: crate::supervisor::flood::FloodGate::default(),
            group_index: vec![None; workers],
            next_index: 0,
            steered: None,
            leaving: Vec::new(),
            no_steering: false,
        })
    }

    /// Says so when `workers` are more than the cores this process may run on (its CPU
    /// affinity and cgroup quota, as [`super::default_workers`] counts them): workers that
    /// share a core take turns on it, which the operator pays for in latency and CPU.
    fn warn_if_cores_shared(&self, workers: usize) {
        let cores = super::default_workers();
        if workers > cores {
            crate::log::warn!(
                primary = self.me,
                workers,
                cores,
                "cluster: {workers} workers on {cores} core(s): workers that share a core take turns on it, a \
                 scheduler slice each, so a request may wait for its worker's turn (HTTP keep-alive p99 about 5x \
                 with 2 workers on one core) and a few busy connections cost up to 1.7x the CPU per request; one \
                 worker per core (the default) avoids it"
            );
        }
    }

    pub(crate) fn run(mut self) -> Result<i32, Error> {
        crate::log::info!(
            primary = self.me,
            workers = self.machine.settings.workers,
            "cluster: starting {} worker(s)",
            self.machine.settings.workers
        );
        let workers = self.machine.settings.workers;
        self.warn_if_cores_shared(workers);
        let room = self.worker_room().saturating_sub(workers);
        if workers > room {
            // The machine refuses such a scale; at the start, the operator asked for it: it
            // goes ahead, said plainly (the primary, out of fds, may leave control commands
            // unanswered and fail to replace a worker).
            crate::log::warn!(
                primary = self.me,
                workers,
                room,
                "cluster: more workers than the primary's open files limit allows (about {room}): control \
                 commands may go unanswered and crashed workers may not be replaced; raise LimitNOFILE= or ulimit -n"
            );
        }
        let actions = self.machine.start();
        self.perform(actions);
        if self
            .machine
            .slots
            .iter()
            .all(|s| s.worker.is_none() && s.starting.is_none())
            && self.exit.is_none()
        {
            return Err(Error::Io {
                what: "cannot start the cluster's first worker".into(),
                source: std::io::Error::other("see the log above"),
            });
        }
        loop {
            if let Some(code) = self.finished() {
                return Ok(code);
            }
            // The machine hears when this process sleeps and wakes: it tells a sleep far
            // longer than asked for (SIGSTOP, a starved host) from the workers' silence.
            self.wait();
            self.read_notifications();
            self.children.reap();
            for (pid, code) in self.children.exited() {
                self.on_exit(pid, code);
            }
            for signal in self.signals.take() {
                self.on_signal(signal);
            }
            self.serve_control();
            let now = Instant::now();
            if self.machine.next_deadline().is_some_and(|d| d <= now) {
                // Heartbeats that came while this iteration worked are read before any worker
                // is judged by them (the machine takes the time this iteration spent as its
                // own, not the workers' silence).
                self.read_notifications();
                self.events.push_back(Event::Tick);
            }
            self.note_silent_workers();
            self.note_concurrency();
            self.drain_events();
            if let Some(table) = &self.load {
                table.set_turns(self.machine.turns.taking && self.steers());
            }
            self.steer();
            self.pass_on_unpassed();
            self.take_from_workers_that_cannot_accept();
        }
    }

    /// The connections waiting in the inboxes of worker `pid` (ended, or about to be killed as
    /// silent) go to the other workers.
    fn take_inboxes_over(&mut self, pid: u32, held: super::transfer::HeldInboxes) {
        let (taken, passed) = super::transfer::take_over(&self.notify_dir, pid, held, &mut self.unpassed);
        if taken > 0 {
            crate::log::warn!(
                primary = self.me,
                pid,
                taken,
                passed,
                waiting = taken - passed,
                "cluster: took the connections passed to a worker that ended or fell silent to the others \
                 (those no other worker had room for wait for the next one that has)"
            );
        }
    }

    /// The workers connections may be passed to: serving, not being killed, and accepting
    /// (the machine's [`takers`](super::machine::Cluster::takers)).
    fn takers(&self) -> Vec<u32> {
        self.machine.takers()
    }

    /// Serving worker `pid` of `slot` has stopped stamping the load table: its runtime does
    /// not run (`SIGSTOP`, a blocked thread), so it accepts nothing. The watchdog replaces
    /// it only after the worker timeout (30 s by default); meanwhile its share of the new
    /// connections would wait in its queue.
    fn is_silent(&self, slot: usize, pid: u32) -> bool {
        self.load
            .as_ref()
            .is_some_and(|t| t.is_silent(slot, pid, super::balance::now_us()))
    }

    /// Tells the machine which serving workers are silent ([`Primary::is_silent`]) when that
    /// changed: it decides which are set aside.
    fn note_silent_workers(&mut self) {
        let serving = self.machine.serving();
        let silent: Vec<u32> = serving
            .iter()
            .filter(|&&(slot, pid)| self.is_silent(slot, pid))
            .map(|&(_, pid)| pid)
            .collect();
        let known: Vec<u32> = self
            .machine
            .slots
            .iter()
            .filter_map(|s| {
                s.worker
                    .filter(|w| w.ready && !w.killed && w.silent)
                    .map(|w| w.pid)
            })
            .collect();
        if silent != known {
            self.events.push_back(Event::Silence { silent });
        }
    }

    /// Tells the machine how many connections the serving workers hold open, and have
    /// accepted (counted up across their replacements: a rolling restart is no quiet time),
    /// in all, as their load table says (it decides whether workers that share cores take turns at new
    /// connections): while two or more serve.
    fn note_concurrency(&mut self) {
        // Turns are steering: without it, nothing to decide.
        if !self.steers() {
            return;
        }
        let Some(table) = &self.load else { return };
        let serving = self.machine.serving();
        if serving.len() >= 2 {
            let readings: Vec<(usize, u64, u64)> = serving
                .iter()
                .map(|&(slot, _)| {
                    let (open, accepted) = table.load_of(slot);
                    (slot, open, accepted)
                })
                .collect();
            let open = readings.iter().fold(0u64, |all, r| all.saturating_add(r.1));
            let accepted = count_up(&mut self.accepted, readings.iter().map(|r| (r.0, r.2)));
            self.events.push_back(Event::Concurrency { open, accepted });
        }
    }

    /// When to look again at whether a serving worker fell silent: often, while two or more
    /// serve and share a load table.
    fn next_silence_check(&self) -> Option<Instant> {
        (self.load.is_some() && self.machine.serving().len() >= 2).then(|| Instant::now() + SILENCE_CHECK)
    }

    /// The connections it took that no worker had room for go to one that has now (a worker
    /// read its inbox, or a replacement serves).
    fn pass_on_unpassed(&mut self) {
        if self.unpassed.is_empty() {
            return;
        }
        let takers = self.takers();
        let passed = self.unpassed.pass_on(&self.notify_dir, &takers);
        if passed > 0 {
            crate::log::info!(
                primary = self.me,
                passed,
                waiting = self.unpassed.len(),
                "cluster: passed connections that waited for a worker with room"
            );
        }
    }

    /// When it next tries to pass on the connections it holds, if it holds any: soon (a
    /// worker's inbox empties as fast as it accepts).
    fn next_pass_on(&self) -> Option<Instant> {
        (!self.unpassed.is_empty()).then(|| Instant::now() + UNPASSED_RETRY)
    }

    /// What waits at the listeners of a worker that does not accept (out of fds, or silent)
    /// goes to the other workers (new connections are already steered away from it): a little
    /// each turn.
    fn take_from_workers_that_cannot_accept(&mut self) {
        let takers = self.takers();
        for (slot, s) in self.machine.slots.iter().enumerate() {
            let Some(w) = s.worker.filter(|w| w.ready && !w.killed) else {
                continue;
            };
            if takers.contains(&w.pid) {
                continue;
            }
            if let Some(held) = self.inboxes.get(&w.pid) {
                let passed = held.drain(&self.notify_dir, w.pid, 64, &takers, &mut self.unpassed);
                if passed > 0 {
                    crate::log::info!(
                        primary = self.me,
                        slot,
                        pid = w.pid,
                        passed,
                        "cluster: passed connections waiting in the inbox of a worker that cannot accept to the others"
                    );
                }
            }
            let Some(Some(listeners)) = self.slot_sockets.get(slot) else {
                continue;
            };
            for (fd, _) in listeners {
                let passed = super::transfer::drain_listener(
                    &self.notify_dir,
                    w.pid,
                    fd,
                    64,
                    &takers,
                    &mut self.unpassed,
                );
                if passed > 0 {
                    crate::log::info!(
                        primary = self.me,
                        slot,
                        pid = w.pid,
                        passed,
                        "cluster: passed connections waiting for a worker that cannot accept to the others"
                    );
                }
            }
        }
    }

    /// The exit code, once the machine said to exit and every process has gone.
    fn finished(&mut self) -> Option<i32> {
        let code = self.exit?;
        self.children.reap();
        if !self.children.none_watched() || self.children.any_left() {
            return None;
        }
        crate::log::info!(
            primary = self.me,
            code,
            "cluster: every worker has exited: exiting"
        );
        if let Some(up) = &self.upstream {
            up.send(&["STOPPING=1".into(), format!("STATUS=Exited ({code})")]);
        }
        if let Some((_, identity)) = &self.control {
            // Only if it still names the socket made at the start (not one another server
            // put there since).
            identity.remove();
        }
        if let Some(path) = &self.pid_file {
            crate::pidfile::remove_if_ours(path);
        }
        if !self.unpassed.is_empty() {
            crate::log::warn!(
                primary = self.me,
                connections = self.unpassed.len(),
                "cluster: closing connections taken from workers that no other worker had room for"
            );
        }
        // Its notify socket and the workers' inboxes (`cluster::transfer`), a killed worker's
        // among them: the directory is the primary's own.
        if let Ok(entries) = std::fs::read_dir(&self.notify_dir) {
            for entry in entries.flatten().take(100_000) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.notify_dir);
        Some(code)
    }

    /// Blocks until something happens or the next deadline, telling the machine when it
    /// goes to sleep (and until when) and when it wakes.
    fn wait(&mut self) {
        let mut fds = vec![
            PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
        ];
        if let Some((listener, _)) = &self.control
            && (self.accepting_control(Instant::now()) || self.could_give_way(Instant::now()))
        {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        fds.extend(
            self.reading
                .iter()
                .map(|r| PollFd::new(r.stream.as_fd(), PollFlags::POLLIN)),
        );
        fds.extend(self.children.poll_fds());
        let next = [
            self.machine.next_deadline(),
            self.reading.iter().map(|r| r.deadline).min(),
            self.give_way_at(Instant::now()),
            self.control_paused_until,
            self.next_handover_check(),
            self.next_pass_on(),
            self.next_silence_check(),
        ]
        .into_iter()
        .flatten()
        .min();
        let asked = next.map(|at| {
            (at.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
                .min(Duration::from_secs(60))
        });
        let timeout = match asked {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis() as i32).unwrap_or(PollTimeout::MAX),
        };
        // Straight to the machine, around the poll itself (the queue is empty: drained at
        // every iteration's end).
        let until = asked.map(|d| Instant::now() + d);
        let slept = self.machine.handle(Event::Sleep { until }, Instant::now());
        let _ = poll(&mut fds, timeout);
        let woke = self.machine.handle(Event::Woke, Instant::now());
        drop(fds);
        self.perform(slept.into_iter().chain(woke).collect());
    }

    fn drain_events(&mut self) {
        // Bounded: each event yields a bounded number of actions, and actions yield events
        // only for starts.
        for _ in 0..10_000 {
            let Some(event) = self.events.pop_front() else {
                return;
            };
            let actions = self.machine.handle(event, Instant::now());
            self.perform(actions);
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        self.perform_each(actions);
        self.performed();
    }

    fn perform_each(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start { slot, id } => self.start(slot, id),
                Action::Restart { slot, pid } => {
                    crate::log::info!(primary = self.me, slot, pid, "cluster: restarting a worker");
                    signal_pid(self.me, pid, Signal::SIGUSR2);
                }
                Action::Stop { pid } => {
                    if self.defer_stop(pid) {
                        crate::log::info!(
                            primary = self.me,
                            pid,
                            "cluster: scaling down: the worker accepts what is queued for it before it stops"
                        );
                        continue;
                    }
                    crate::log::info!(primary = self.me, pid, "cluster: stopping a worker");
                    // Once the worker's own copy of a SIGTERM sent to every process is no
                    // longer pending: merged with it, this one would arrive as that other
                    // sender's, and the primary's second stop would count as the first.
                    crate::supervisor::signal_pid_again(self.me, pid, Signal::SIGTERM);
                }
                Action::Kill { pid, why } => {
                    let why = match why {
                        KillReason::NotReady => Some(format!(
                            "not ready after {:.0} s",
                            self.machine.settings.ready_timeout.as_secs_f64()
                        )),
                        KillReason::Hung => Some(format!(
                            "silent (no heartbeat) for {:.1} s",
                            self.machine
                                .settings
                                .worker_timeout
                                .unwrap_or_default()
                                .as_secs_f64()
                        )),
                        KillReason::Superseded => None,
                    };
                    match why {
                        Some(why) => crate::log::error!(
                            primary = self.me,
                            pid, reason = %why, "cluster: stopping a worker to replace it"
                        ),
                        None => crate::log::info!(
                            primary = self.me,
                            pid,
                            "cluster: rolling restart: a worker still starting from the program from before is replaced by a fresh one"
                        ),
                    }
                    // Connections other workers passed to it since it fell silent would die
                    // with it: they go to the others.
                    // (One never ready has none copied: no worker passes to it before it serves.)
                    let held = self.inboxes.remove(&pid).unwrap_or_default();
                    self.take_inboxes_over(pid, held);
                    signal_pid(self.me, pid, Signal::SIGTERM);
                }
                Action::ForceKill { pid } => {
                    if crate::sys::is_running(pid) {
                        crate::log::warn!(
                            primary = self.me,
                            pid,
                            grace_ms = KILL_GRACE.as_millis() as u64,
                            "cluster: still there after SIGTERM: killing it"
                        );
                        signal_pid(self.me, pid, Signal::SIGKILL);
                    }
                }
                Action::TerminateAll => {
                    crate::log::info!(primary = self.me, "cluster: stopping at once");
                    for pid in self.cluster_pids() {
                        // Once the first stop's SIGTERM has been delivered: sent while it is
                        // still pending, the kernel merges the two, and the worker drains on
                        // until it is killed (a second stop right after the first).
                        crate::supervisor::signal_pid_again(self.me, pid, Signal::SIGTERM);
                    }
                }
                Action::KillAll => {
                    for pid in self.cluster_pids() {
                        if crate::sys::is_running(pid) {
                            signal_pid(self.me, pid, Signal::SIGKILL);
                        }
                    }
                }
                Action::Stalled(stall) => match stall {
                    // It slept far longer than it asked to (SIGSTOP, a starved host): the
                    // heartbeats it could not read meanwhile are not the workers' fault.
                    Stall::Asleep { slept } => crate::log::warn!(
                        primary = self.me,
                        paused_ms = slept.as_millis() as u64,
                        "cluster: the primary was not running: counting heartbeats afresh"
                    ),
                    Stall::Busy { busy } => crate::log::warn!(
                        primary = self.me,
                        busy_ms = busy.as_millis() as u64,
                        "cluster: the primary was held up: counting heartbeats afresh"
                    ),
                },
                Action::Recycle { slot, pid, reason } => {
                    let why = match reason {
                        RecycleReason::Requests { served, limit } => {
                            format!("served {served} requests (its limit {limit})")
                        }
                        RecycleReason::Memory { rss, limit } => {
                            format!("resident memory {rss} bytes (its limit {limit})")
                        }
                    };
                    crate::log::info!(
                        primary = self.me,
                        slot, pid, reason = reason.name(), detail = %why,
                        "cluster: recycling a worker (a graceful restart)"
                    );
                    signal_pid(self.me, pid, Signal::SIGUSR2);
                }
                Action::RecycleNotice { slot, pid, notice } => match notice {
                    RecycleNotice::Failed { reason, retry_in } => crate::log::warn!(
                        primary = self.me,
                        slot, pid, %reason, retry_in_s = retry_in.as_secs(),
                        "cluster: recycling a worker failed: it keeps serving"
                    ),
                    RecycleNotice::AboveAtStart { rss, limit, wait } => crate::log::warn!(
                        primary = self.me,
                        slot,
                        pid,
                        rss,
                        limit,
                        wait_s = wait.as_secs(),
                        "cluster: a fresh worker's memory is already at the recycling limit (connections \
                         handed over with it, or a limit below an idle worker's): not recycling it for memory \
                         for a while"
                    ),
                },
                Action::Reply { reply, result } => self.reply(reply, &result),
                Action::Resized { workers } => self.resized(workers),
                Action::ScaleRefused { workers, reason } => {
                    crate::log::warn!(primary = self.me, workers, %reason, "cluster: not scaling");
                }
                Action::SetAside {
                    slot,
                    pid,
                    aside: true,
                } if self.info.get(&pid).is_some_and(|i| i.draining_by_itself) => crate::log::info!(
                    primary = self.me,
                    slot,
                    pid,
                    "cluster: a worker draining by itself takes no new connection: they go to the others"
                ),
                Action::SetAside {
                    slot,
                    pid,
                    aside: true,
                } => crate::log::warn!(
                    primary = self.me,
                    slot,
                    pid,
                    "cluster: a worker's runtime has not run for 300 ms (stopped, or its thread blocked): \
                     new connections go to the others, with what waits for it, until it runs again or the \
                     watchdog replaces it"
                ),
                Action::SetAside {
                    slot,
                    pid,
                    aside: false,
                } => {
                    crate::log::info!(
                        primary = self.me,
                        slot,
                        pid,
                        "cluster: a silent worker runs again"
                    );
                }
                Action::Exit { code } => {
                    self.exit = Some(code);
                    match self.machine.gave_up {
                        Some(GaveUp::FirstWorker) => crate::log::error!(
                            primary = self.me,
                            "cluster: the first worker exited before it was ready (its error is above): not starting another"
                        ),
                        Some(GaveUp::CrashLoop) => crate::log::error!(
                            primary = self.me,
                            limit = crate::supervisor::CRASH_LIMIT,
                            window_s = super::machine::CRASH_WINDOW.as_secs(),
                            "cluster: no worker serves and new ones keep failing to start: giving up"
                        ),
                        None => {}
                    }
                    // Orphans never heard from (a successor still starting) go too.
                    for pid in crate::sys::children_of(self.me) {
                        if !self.children.is_watched(pid) && crate::sys::is_running(pid) {
                            signal_pid(self.me, pid, Signal::SIGTERM);
                        }
                    }
                }
            }
        }
    }

    /// Starts a worker for `slot` (start `id`): on copies of the store's sockets once they
    /// are known, else (the machine starts one worker at a time then) binding them itself.
    fn start(&mut self, slot: usize, id: StartId) {
        // Starting a process takes fds for a moment (copies of its sockets and of the
        // secrets file, its readiness pipe, the pipe that reports a failed exec, its pidfd):
        // at a low limit, the reserve is let go for it.
        self.fd_reserve.clear();
        self.start_now(slot, id);
        self.fd_reserve = fd_reserve();
    }

    fn start_now(&mut self, slot: usize, id: StartId) {
        let sockets = match self.sockets_for(slot) {
            Ok(sockets) => sockets,
            Err(e) => {
                self.events.push_back(Event::StartFailed {
                    id,
                    reason: format!("cannot make worker {slot}'s listening sockets: {e}"),
                });
                return;
            }
        };
        let generation = self.generations.get(slot).copied().unwrap_or(0) + 1;
        let mut next = NextProcess::new(self.exe, Handoff { sockets });
        next.env(NOTIFY_SOCKET, &self.notify_name)
            .env(GRACE_SUPERVISOR, self.me.to_string())
            .env(GRACE_GENERATION, generation.to_string())
            .env(GRACE_WORKER, slot.to_string())
            .env(GRACE_HEARTBEAT_MS, self.heartbeat.as_millis().max(1).to_string())
            .new_process_group();
        if let Some(table) = &self.load {
            next.env(GRACE_LOAD_FD, table.raw_fd().to_string());
        }
        if let Some(secrets) = &self.secrets {
            match secrets.try_clone() {
                Ok(copy) => {
                    let fd = next.pass_fd(copy);
                    next.env(crate::vars::GRACE_SECRET_FD, fd.to_string());
                }
                Err(e) => {
                    crate::log::error!(primary = self.me, slot, error = %e, "cluster: cannot copy the secrets file for a worker");
                    self.events.push_back(Event::StartFailed {
                        id,
                        reason: format!("cannot copy the cluster's secrets file for worker {slot}: {e}"),
                    });
                    return;
                }
            }
        }
        if self.store.is_some() {
            // Only the cluster's first worker binds a new TCP address alone (a second cluster
            // on it is refused). Every later one joins: the first one's groups when it sent no
            // copy of its sockets, and any address a new version adds (the first worker to
            // bind it must let the others join it).
            next.env(crate::vars::GRACE_REUSEPORT_JOIN, "1");
        }
        match next.spawn() {
            Ok(child) => {
                let pid = child.pid();
                self.children.watch(pid);
                if let Some(g) = self.generations.get_mut(slot) {
                    *g = generation;
                }
                self.info.insert(
                    pid,
                    WorkerInfo {
                        generation,
                        since: Instant::now(),
                        connections: 0,
                        accepted: 0,
                        requests: 0,
                        rss: None,
                        draining_by_itself: false,
                    },
                );
                crate::log::info!(primary = self.me, slot, pid, "cluster: started a worker");
                self.events.push_back(Event::Started { id, pid });
            }
            Err(e) => {
                crate::log::error!(primary = self.me, slot, error = %e, "cluster: cannot start a worker");
                self.events.push_back(Event::StartFailed {
                    id,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn read_notifications(&mut self) {
        // A worker's "ready" carries its sockets: out of fds, the kernel would drop them and
        // the sender's credentials with them, and the new worker would go unrecognised. The
        // reserve is let go for the read, and taken again after.
        self.fd_reserve.clear();
        self.read_notifications_now();
        self.fd_reserve = fd_reserve();
    }

    fn read_notifications_now(&mut self) {
        for (pid, suppressed) in self.flood.take_reports(Instant::now()) {
            crate::log::warn!(
                primary = self.me,
                sender = pid,
                suppressed,
                limit_per_s = crate::supervisor::flood::PER_SENDER,
                "cluster: a process floods the notify socket: messages beyond the limit were not handled"
            );
        }
        let mut buf = vec![0u8; 4096];
        for _ in 0..1024 {
            let received = match crate::sys::recv_with_fds(&self.notify, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::log::warn!(primary = self.me, error = %e, "cluster: the notify socket failed");
                    return;
                }
            };
            // A sender past its share (a flood) costs nothing more: no /proc look, no
            // handling, no log line but one report a second.
            if let Some(sender) = received.sender.filter(|&p| p > 0)
                && !self.flood.admit(sender as u32, Instant::now())
            {
                continue;
            }
            // A worker it knows is trusted without a look at /proc (which needs an fd, and the
            // primary may be out of them); another sender must descend from the primary.
            let Some(pid) = received
                .sender
                .filter(|&p| p > 0)
                .map(|p| p as u32)
                .filter(|&p| self.knows(p) || crate::sys::is_descendant(p, self.me))
            else {
                self.foreign.0 += 1;
                if Instant::now() >= self.foreign.1 {
                    crate::log::warn!(
                        primary = self.me,
                        sender = ?received.sender,
                        ignored = self.foreign.0,
                        "cluster: ignoring notifications from outside the cluster's processes"
                    );
                    self.foreign = (0, Instant::now() + Duration::from_secs(10));
                }
                continue;
            };
            let message = Message::parse(&buf[..received.len]);
            self.on_message(pid, &message, received.fds);
        }
    }

    /// Whether `pid` is a worker (serving, starting or draining) this primary knows.
    fn knows(&self, pid: u32) -> bool {
        self.info.contains_key(&pid)
            || self.machine.retiring.contains(&pid)
            || self
                .machine
                .slots
                .iter()
                .any(|s| s.worker.is_some_and(|w| w.pid == pid))
    }

    fn on_message(&mut self, pid: u32, message: &Message, fds: Vec<OwnedFd>) {
        if message.flag("WATCHDOG") {
            let load = Load {
                requests: message.value(protocol::REQUESTS).and_then(|n| n.parse().ok()),
                rss: message.value(protocol::RSS).and_then(|n| n.parse().ok()),
                cannot_accept: message.value(protocol::CANNOT_ACCEPT) == Some("1"),
            };
            if let Some(n) = message.value(protocol::CONNECTIONS).and_then(|n| n.parse().ok())
                && let Some(info) = self.info.get_mut(&pid)
            {
                info.connections = n;
                if let Some(a) = message.value(protocol::ACCEPTED).and_then(|n| n.parse().ok()) {
                    info.accepted = a;
                }
                if let Some(r) = load.requests {
                    info.requests = r;
                }
                info.rss = load.rss.or(info.rss);
            }
            self.events.push_back(Event::Heartbeat { pid, load });
        }
        if !self.machine.stopping
            && message.flag("STOPPING")
            && !self.machine.retiring.contains(&pid)
            && let Some(info) = self.info.get_mut(&pid)
            && !std::mem::replace(&mut info.draining_by_itself, true)
        {
            crate::log::info!(
                primary = self.me,
                pid,
                "cluster: a worker is draining by itself (a stop sent to it, or its program's own): it gets no new connections once it stops taking them, and is replaced when it exits"
            );
        }
        if self.machine.stopping
            && message.flag("STOPPING")
            && let Some(extend) = message.value("EXTEND_TIMEOUT_USEC")
            && extend.parse::<u64>().is_ok()
            && let Some(up) = &self.upstream
        {
            // A worker's drain asks systemd to wait for it (its stop timeout, which the
            // primary does not know): passed on, as the cluster's stop lasts as long as its
            // longest drain.
            up.send(&[format!("EXTEND_TIMEOUT_USEC={extend}")]);
        }
        if let Some(reason) = message.value(protocol::RESTART_FAILED) {
            self.events.push_back(Event::RestartFailed {
                pid,
                reason: reason.to_owned(),
            });
        }
        let serving =
            message.flag("READY") && message.value("MAINPID").and_then(|p| p.parse().ok()) == Some(pid);
        let Some(slot) = message
            .value(protocol::WORKER)
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        if !serving {
            return;
        }
        if self.inboxes.contains_key(&pid) {
            // Its "ready" was handled already: a repeat changes nothing (and is not logged
            // again: a worker that repeats it in a loop must not flood the log).
            crate::log::debug!(
                primary = self.me,
                slot,
                pid,
                "cluster: a worker said it is ready again: ignored"
            );
            return;
        }
        if let Some(names) = message.value(protocol::FDS) {
            let names: Vec<String> = if names.is_empty() {
                Vec::new()
            } else {
                names.split(':').map(str::to_owned).collect()
            };
            if names.len() == fds.len() {
                let sockets: Vec<(OwnedFd, String)> = fds.into_iter().zip(names).collect();
                let in_slot = slot < self.machine.slots.len();
                if self.store.is_none() {
                    // The worker that bound the cluster's sockets (its slot may have been
                    // scaled away meanwhile: they are the cluster's all the same).
                    match sockets
                        .iter()
                        .map(|(fd, name)| fd.try_clone().map(|fd| (fd, name.clone())))
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(copy) => {
                            let reuseport = copy
                                .iter()
                                .any(|(fd, _)| socket2::SockRef::from(fd).reuse_port().unwrap_or(false));
                            // Its listeners are their groups' first (index 0). A slot scaled
                            // away leaves them to the first slot to start (`sockets_for`), so
                            // that a kept worker accepts from them once it has gone.
                            if reuseport && in_slot {
                                if self.group_index.len() <= slot {
                                    self.group_index.resize(slot + 1, None);
                                }
                                self.group_index[slot] = Some(0);
                                self.next_index = 1;
                            }
                            self.store = Some(copy);
                        }
                        Err(e) => {
                            crate::log::warn!(primary = self.me, error = %e, "cluster: cannot copy the first worker's sockets")
                        }
                    }
                }
                if in_slot {
                    if self.slot_sockets.len() <= slot {
                        self.slot_sockets.resize_with(slot + 1, || None);
                    }
                    self.slot_sockets[slot] = Some(sockets);
                }
            }
        }
        if self.store.is_none() {
            // The first worker serves but sent no usable copy of its sockets: the others are
            // started all the same (the machine starts them as it hears it is ready), each
            // binding its own (a TCP listener of a worker joins the first one's SO_REUSEPORT
            // group), instead of waiting for ever.
            crate::log::warn!(
                primary = self.me,
                pid,
                "cluster: the first worker sent no copy of its sockets: the others bind their own"
            );
            self.store = Some(Vec::new());
        }
        let generation = message.value(protocol::GENERATION).and_then(|n| n.parse().ok());
        let previous = self.machine.slots.get(slot).and_then(|s| s.worker).map(|w| w.pid);
        if previous.is_some_and(|p| p != pid)
            && let Some(r) = self.replaced.get_mut(slot)
        {
            *r += 1;
        }
        let info = self.info.entry(pid).or_insert(WorkerInfo {
            generation: 1,
            since: Instant::now(),
            connections: 0,
            accepted: 0,
            requests: 0,
            rss: None,
            draining_by_itself: false,
        });
        if let Some(g) = generation {
            info.generation = g;
            if let Some(slot_generation) = self.generations.get_mut(slot) {
                *slot_generation = (*slot_generation).max(g);
            }
        }
        self.children.watch(pid);
        // Copies of its inboxes: connections passed to it outlive it if it dies first.
        let held = super::transfer::adopt(&self.notify_dir, pid, message.value(protocol::INBOXES));
        self.inboxes.insert(pid, held);
        crate::log::info!(primary = self.me, slot, pid, "cluster: a worker is serving");
        self.events.push_back(Event::Ready { slot, pid });
        self.drain_events();
        self.steer();
        self.announce();
    }

    /// Tells systemd the cluster serves once every slot has served.
    fn announce(&mut self) {
        if self.announced || self.exit.is_some() {
            return;
        }
        let all = self
            .machine
            .slots
            .iter()
            .all(|s| s.worker.is_some_and(|w| w.ready));
        if all {
            self.announced = true;
            let n = self.machine.slots.len();
            crate::log::info!(primary = self.me, workers = n, "cluster: every worker is serving");
            if let Some(up) = &self.upstream {
                up.send(&[
                    format!("MAINPID={}", self.me),
                    "READY=1".into(),
                    format!("STATUS=Cluster of {n} worker(s) serving"),
                ]);
            }
        }
    }

    fn on_exit(&mut self, pid: u32, code: Option<i32>) {
        let shown = code.map_or_else(|| "status unknown".to_owned(), describe);
        let serving_slot = self
            .machine
            .slots
            .iter()
            .position(|s| s.worker.is_some_and(|w| w.pid == pid));
        match serving_slot {
            // No worker was ever ready: the machine ends the cluster rather than start another.
            Some(slot)
                if self.exit.is_none()
                    && !self.machine.stopping
                    && self.machine.sockets != Sockets::Known =>
            {
                crate::log::error!(
                    primary = self.me,
                    slot, pid, status = %shown, "cluster: the first worker ended before it was ready"
                );
            }
            Some(slot) if self.exit.is_none() && !self.machine.stopping => {
                if code == Some(0) {
                    // Its own choice (Generation::shutdown, say): no crash, but the cluster
                    // keeps its number of workers.
                    crate::log::warn!(
                        primary = self.me,
                        slot, pid, status = %shown, "cluster: a worker exited by itself: replacing it"
                    );
                } else {
                    crate::log::error!(
                        primary = self.me,
                        slot, pid, status = %shown, "cluster: a worker ended: replacing it"
                    );
                }
                if let Some(r) = self.replaced.get_mut(slot) {
                    *r += 1;
                }
            }
            _ => crate::log::info!(primary = self.me, pid, status = %shown, "cluster: a process ended"),
        }
        self.info.remove(&pid);
        for leaving in &mut self.leaving {
            leaving.forget(pid);
        }
        // What was passed to it goes to the others; the files of its inboxes go too, those of
        // a worker that ended before it was ready among them (never adopted: a crash loop
        // would leave one per listener at every try).
        let held = self.inboxes.remove(&pid).unwrap_or_default();
        self.take_inboxes_over(pid, held);
        self.events.push_back(Event::Exited {
            pid,
            clean: code == Some(0),
        });
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            // SIGHUP (a terminal closing) stops gracefully too, as it does a single generation
            // of gracedemo, rather than ending the primary (its default action).
            SIGTERM | SIGINT | SIGHUP => {
                // The machine decides what a stop request does (the second one stops at once,
                // and a stop always ends); only the first one is announced.
                if self.machine.stop_requests == 0 {
                    crate::log::info!(primary = self.me, "cluster: stopping every worker");
                    if let Some(up) = &self.upstream {
                        up.send(&[
                            "STOPPING=1".into(),
                            "STATUS=Stopping: draining every worker".into(),
                        ]);
                    }
                }
                self.events.push_back(Event::StopRequested);
                self.drain_events();
            }
            SIGUSR2 => {
                crate::log::info!(primary = self.me, "cluster: SIGUSR2: rolling restart");
                self.restart(Waiter::Signal("SIGUSR2"));
            }
            SIGTTIN | SIGTTOU => {
                // One more or fewer than the machine has by the time it handles this: each
                // signal counts, even when several come before the first is acted on.
                let room = self.worker_room();
                self.events.push_back(Event::ScaleStep {
                    more: signal == SIGTTIN,
                    room,
                });
            }
            _ => {}
        }
    }

    fn scale(&mut self, workers: usize) {
        let room = self.worker_room();
        self.events.push_back(Event::Scale { workers, room });
    }

    /// About how many workers this primary's open files allow: each costs it a listener and
    /// an inbox copy per listening socket, a pidfd and a little more; a quarter of the limit is
    /// kept for control clients, and the reserve for the workers' messages. Counted from what
    /// it holds now (`/proc/self/fd`); if that cannot be read (out of fds), no more than now.
    fn worker_room(&self) -> usize {
        let workers = self.machine.slots.len();
        let Ok(open) = std::fs::read_dir("/proc/self/fd").map(|d| d.count()) else {
            return workers;
        };
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let sockets = self.store.as_ref().map_or(3, Vec::len).max(1);
        let per_worker = 2 * sockets + 3;
        let free = soft
            .saturating_sub(soft / 4)
            .saturating_sub(FD_RESERVE)
            .saturating_sub(open);
        workers + free / per_worker
    }

    /// The machine resized the cluster to `workers` slots: the bookkeeping follows (it is
    /// applied only once the machine has decided, so a scale it refuses changes nothing).
    fn resized(&mut self, workers: usize) {
        crate::log::info!(primary = self.me, workers, "cluster: scaling");
        if workers > self.generations.len() {
            self.warn_if_cores_shared(workers);
        }
        self.generations.resize(workers.max(self.generations.len()), 0);
        self.replaced.resize(workers.max(self.replaced.len()), 0);
        if let Some(table) = &self.load {
            table.set_slots(workers);
        }
        if workers < self.slot_sockets.len() {
            // The removed slots' own listeners leave their groups once their queues are
            // empty, and steering follows the groups' new numbering; if that cannot be done,
            // they close with their workers as before: connections queued in them are reset
            // then, unless the kernel moves them to the other listeners.
            // A removed slot may hold the store's own listeners (its worker bound them): a kept
            // slot's become the store, and those leave their groups as the others do.
            self.move_store_off(workers);
            let handed_over = self.retire_listeners(workers);
            if !handed_over
                && self.slot_sockets[workers..]
                    .iter()
                    .flatten()
                    .flatten()
                    .any(|(fd, _)| socket2::SockRef::from(fd).reuse_port().unwrap_or(false))
                && std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
                    .map_or(true, |v| v.trim() == "0")
            {
                crate::log::warn!(
                    primary = self.me,
                    "scaling down: connections queued at the removed workers' own listeners are reset \
                     as they close (net.ipv4.tcp_migrate_req=1 moves them to the other workers)"
                );
            }
            self.slot_sockets.truncate(workers);
            if self.group_index.len() > workers {
                // Unless handed over, the removed slots' listeners leave their groups only once
                // their workers have drained, and the kernel then renumbers the rest: which
                // listener is which is no longer known, so the kernel's hash spreads new
                // connections from now on.
                if self.group_index.drain(workers..).flatten().next().is_some() && !handed_over {
                    crate::log::info!(
                        primary = self.me,
                        "cluster: scaled down: new connections spread by the kernel's hash from now on"
                    );
                    self.stop_steering();
                }
            }
        }
    }

    fn restart(&mut self, waiter: Waiter) {
        self.next_reply += 1;
        let reply = self.next_reply;
        self.waiters.insert(reply, waiter);
        if self.machine.rollout.is_none()
            && let Some(up) = &self.upstream
        {
            up.send(&[
                "RELOADING=1".into(),
                format!("MONOTONIC_USEC={}", crate::notify::monotonic_usec()),
                "STATUS=Rolling restart".into(),
            ]);
        }
        self.events.push_back(Event::RestartRequested { reply });
    }

    fn reply(&mut self, reply: ReplyId, result: &RolloutResult) {
        let answer = match result {
            RolloutResult::Done { pids } => {
                let serving: Vec<String> = pids.iter().filter(|&&p| p != 0).map(u32::to_string).collect();
                let empty: Vec<String> = (0..pids.len())
                    .filter(|&i| pids[i] == 0)
                    .map(|i| i.to_string())
                    .collect();
                if empty.is_empty() {
                    format!(
                        "ok {} worker(s) serving with pids {}\n",
                        serving.len(),
                        serving.join(", ")
                    )
                } else {
                    format!(
                        "ok {} of {} worker(s) serving with pids {}; worker(s) {} not serving yet (being started: see status)\n",
                        serving.len(),
                        pids.len(),
                        serving.join(", "),
                        empty.join(", ")
                    )
                }
            }
            RolloutResult::Failed { slot, reason, .. } => {
                let n = self.machine.slots.len();
                let serving = self.machine.serving().len();
                let said = if serving == n {
                    "every worker still serving".to_owned()
                } else {
                    format!("{serving} of {n} worker(s) serving (see status)")
                };
                format!("error failed: worker {slot}: {reason}; the rolling restart stopped there, {said}\n")
            }
            RolloutResult::Stopping => format!(
                "error stopping: the cluster (pid {}) is stopping: not restarting\n",
                self.me
            ),
        };
        if self.machine.rollout.is_none()
            && !self.machine.stopping
            && let Some(up) = &self.upstream
        {
            up.send(&["READY=1".into(), format!("STATUS={}", answer.trim_end())]);
        }
        match self.waiters.remove(&reply) {
            Some(Waiter::Client(mut stream)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(answer.as_bytes());
            }
            Some(Waiter::Signal(name)) => {
                if answer.starts_with("ok") {
                    crate::log::info!(
                        primary = self.me,
                        signal = name,
                        answer = answer.trim_end(),
                        "cluster: rolling restart done"
                    );
                } else {
                    crate::log::error!(
                        primary = self.me,
                        signal = name,
                        answer = answer.trim_end(),
                        "cluster: rolling restart failed"
                    );
                }
            }
            None => {}
        }
    }

    /// Every process of the cluster: the children it watches and any process it is the
    /// parent of (a successor never heard from, a killed worker's orphans).
    fn cluster_pids(&self) -> Vec<u32> {
        let mut pids = crate::sys::children_of(self.me);
        pids.extend(self.children.pids());
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// A seed for the workers' recycling jitter: std's per-process random hash keys, with the
/// pid and the time mixed in.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A new directory, mode 0700, for the primary's notify socket: under `$XDG_RUNTIME_DIR`
/// when it is set and safe, else the temporary directory (`$TMPDIR`) when safe, else `/tmp`.
fn private_dir(me: u32) -> std::io::Result<PathBuf> {
    // Set but empty is unset (as the XDG spec reads it), not a directory to refuse.
    let candidates = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain([std::env::temp_dir(), PathBuf::from("/tmp")]);
    let mut refused = Vec::new();
    let mut chosen = None;
    for dir in candidates {
        match safe_base(&dir) {
            Ok(()) => {
                chosen = Some(dir);
                break;
            }
            Err(why) => refused.push(format!("{}: {why}", dir.display())),
        }
    }
    let Some(base) = chosen else {
        return Err(std::io::Error::other(format!(
            "no safe directory for the cluster's private directory ({})",
            refused.join("; ")
        )));
    };
    if !refused.is_empty() {
        crate::log::warn!(refused = %refused.join("; "), base = %base.display(), "cluster: private directory's base");
    }
    remove_dead_primaries_dirs(&base);
    let template = base.join(format!("grace-primary-{me}-XXXXXX"));
    nix::unistd::mkdtemp(&template).map_err(|e| {
        let e = std::io::Error::from(e);
        // Named: the directory is chosen among several ($XDG_RUNTIME_DIR, $TMPDIR, /tmp).
        std::io::Error::new(e.kind(), format!("in {}: {e}", base.display()))
    })
}

/// Removes the primary's private directory, with what is in it, unless kept: the start
/// failed after it was made.
struct PrivateDirGuard(Option<PathBuf>);

impl PrivateDirGuard {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for PrivateDirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Only what this primary put there yet (its notify socket): no directories.
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten().take(64) {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The longest base directory whose sockets' paths fit a Unix socket address (107 bytes):
/// `/grace-primary-PID-XXXXXX` (28 with a 7-digit pid) and `/PID-PORT-HASH` (30).
const MAX_BASE_LEN: usize = 107 - 60;

/// Whether `dir` may hold the primary's private directory: absolute, a directory, owned by
/// this user or root, and sticky if others may write to it. In a directory others can write
/// to without the sticky bit, another user could rename the private directory away and put a
/// notify socket of theirs in its place, and receive the listening sockets workers send.
fn safe_base(dir: &std::path::Path) -> Result<(), &'static str> {
    use std::os::unix::fs::MetadataExt;
    if !dir.is_absolute() {
        return Err("not an absolute path");
    }
    if dir.as_os_str().len() > MAX_BASE_LEN {
        return Err("too long for the sockets inside it (at most 47 bytes)");
    }
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist",
        _ => "cannot be read",
    })?;
    if !meta.is_dir() {
        return Err("not a directory");
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err("owned by another user");
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err("others may write to it and it is not sticky");
    }
    Ok(())
}

/// Removes what primaries of this user that were killed (`kill -9`: no cleanup) left in
/// `base`: their directories (`grace-primary-PID-…`, this user's) whose PID runs no more here
/// and whose notify socket nobody reads (a primary in another pid namespace sharing the
/// directory keeps its own), with the sockets inside. A pid reused since keeps its directory
/// (it is only left behind).
fn remove_dead_primaries_dirs(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten().take(100_000) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("grace-primary-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me || crate::sys::is_running(pid) {
            continue;
        }
        // Bound and read by someone (connecting sends nothing): not dead.
        if UnixDatagram::unbound().is_ok_and(|probe| probe.connect(entry.path().join("notify")).is_ok()) {
            continue;
        }
        if let Ok(inside) = std::fs::read_dir(entry.path()) {
            for file in inside.flatten().take(10_000) {
                let _ = std::fs::remove_file(file.path());
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// Adds to `counted` (a total, and each slot's count as last read) what the slots' workers
/// accepted since the last reading of `accepted` counts, and returns the total: a count below
/// the slot's last is a new worker's, counting from 0. The total counts up across rolling
/// restarts and replacements, which the machine would otherwise take for a quiet time.
fn count_up(counted: &mut (u64, Vec<u64>), accepted: impl Iterator<Item = (usize, u64)>) -> u64 {
    let (total, last) = counted;
    for (slot, now) in accepted {
        if last.len() <= slot {
            last.resize(slot + 1, 0);
        }
        let came = now.checked_sub(last[slot]).unwrap_or(now);
        last[slot] = now;
        *total = total.saturating_add(came);
    }
    *total
}

/// How often the primary tries again to pass on the connections it holds for want of a
/// worker with room ([`Primary::pass_on_unpassed`]).
const UNPASSED_RETRY: Duration = Duration::from_millis(10);

/// How often the primary looks at whether a serving worker fell silent, while two or more
/// serve: a silent one is found within this plus the 300 ms it takes to count as silent.
const SILENCE_CHECK: Duration = Duration::from_millis(100);

/// How many fds [`Primary::read_notifications`] frees for a read at most: a worker's sockets
/// (three for gracedemo) and the /proc files its sender check opens, with room to spare; an
/// eighth of the fd limit if that is less.
const FD_RESERVE: usize = 16;

/// Opens the reserve (fewer if the limit is reached).
fn fd_reserve() -> Vec<std::fs::File> {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let n = usize::try_from(soft / 8)
        .unwrap_or(FD_RESERVE)
        .clamp(1, FD_RESERVE);
    (0..n)
        .map_while(|_| std::fs::File::open("/dev/null").ok())
        .collect()
}

/// A quarter of the open files limit, at most [`control::MAX_CONTROL_CLIENTS`], at least 1.
fn control_clients_for_fd_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(1, control::MAX_CONTROL_CLIENTS)
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime does):
/// the primary holds every worker's listeners, pidfds and control clients.
fn raise_fd_limit(me: u32) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        crate::log::debug!(primary = me, error = %e, "cannot raise the open files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::{count_up, safe_base};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn accepted_connections_count_up_across_a_workers_replacement() {
        let mut counted = (0, Vec::new());
        assert_eq!(count_up(&mut counted, [(0, 100), (1, 50)].into_iter()), 150);
        assert_eq!(count_up(&mut counted, [(0, 160), (1, 90)].into_iter()), 250);
        // Slot 1's worker replaced: its successor has accepted 7 so far.
        assert_eq!(count_up(&mut counted, [(0, 200), (1, 7)].into_iter()), 297);
        // Slot 1 restarting (not read), then a slot that was never read.
        assert_eq!(count_up(&mut counted, [(0, 210)].into_iter()), 307);
        assert_eq!(
            count_up(&mut counted, [(0, 210), (1, 9), (3, 5)].into_iter()),
            314
        );
        // At the top of the counter: it stays there.
        let mut full = (u64::MAX - 1, vec![0]);
        assert_eq!(count_up(&mut full, [(0, 5)].into_iter()), u64::MAX);
    }

    #[test]
    fn the_private_directory_goes_only_where_no_other_user_can_replace_it() {
        let root = std::env::temp_dir().join(format!("gracenet-safe-base-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = |name: &str, mode: u32| {
            let d = root.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            d
        };
        assert_eq!(safe_base(&dir("private", 0o700)), Ok(()));
        assert_eq!(safe_base(&dir("shared-sticky", 0o1777)), Ok(()));
        assert!(safe_base(&dir("shared", 0o777)).is_err());
        assert!(safe_base(&dir("group", 0o770)).is_err());
        assert!(safe_base(std::path::Path::new("relative")).is_err());
        let long = root.join("x".repeat(super::MAX_BASE_LEN));
        std::fs::create_dir(&long).unwrap();
        assert!(safe_base(&long).is_err(), "its sockets' paths would not fit");
        let file = root.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(safe_base(&file).is_err());
        if nix::unistd::geteuid().is_root() {
            let theirs = dir("theirs", 0o700);
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert_eq!(safe_base(&theirs), Err("owned by another user"));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
