//! The thin side of the lifecycle: turns I/O into the [`Machine`]'s events, and performs the
//! actions it returns (spawn, wake or let go the standby, kill, notify, close listeners, PID
//! file, reply). Every decision is the machine's; what is decided here is only how an action
//! is done, and what its result was (an exit status, a refusal, a standby that did not answer
//! the wake), fed back as an event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};

use super::generation::Shared;
use super::machine::{Action, ChildFailure, Event, Machine, Me, Note, Pending, ReplyId, State, Timeouts};
use super::signals::{self, Request};
use super::standby::{SharedStandby, StandbyWake, WAKE_ACK_TIMEOUT};
use super::{Outcome, Phase, RestartResult, StopReason};
use crate::error::Error;
use crate::notify::monotonic_usec;
use crate::process::{ChildProcess, Executable, NextProcess};
use crate::sys::ExitWatch;
use crate::vars::{
    GRACE_ANCESTORS, GRACE_GENERATION, GRACE_IDLE_START, GRACE_READY_FD, GRACE_STANDBY, GRACE_SUPERVISOR,
    NOTIFY_SOCKET,
};

/// The length that means "no state" on the channel to the next generation.
pub(super) const NO_STATE: u64 = u64::MAX;

/// How many older generations' pids are passed on (for `status`).
const MAX_ANCESTORS: usize = 16;

/// How long a child that closed its readiness pipe may take to exit on its own before it is
/// killed: its own exit status says more than a kill's.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// A process of ours: the next generation, starting or serving.
struct Child {
    process: ChildProcess,
    exit: ExitWatch,
    /// The channel's read side (readiness, or a refusal), while it is starting; then the
    /// hand-over's answers.
    ready: Option<OwnedReadHalf>,
    /// Why it refused what it was handed, if it did.
    refusal: Option<String>,
    /// The channel's write side: state, then handed-over connections.
    out: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    /// Returns it from idle CPU priority if it is still starting at the limit.
    idle_limit: Option<IdleLimit>,
}

/// The channel to a next generation, locked for the state to go first.
type LockedChannel = tokio::sync::OwnedMutexGuard<tokio::net::unix::OwnedWriteHalf>;

/// The next generation's process, started ahead and waiting to be woken by a restart
/// ([`GenerationBuilder::standby`](super::GenerationBuilder::standby)); what it was started
/// from, and how to wake it, is in the shared `StandbyWake`.
struct Standby {
    child: Child,
    started: Instant,
}

/// Returns a next generation started at idle CPU priority to normal priority once
/// `idle_start_limit` has passed, so a machine with no idle time cannot hold its start past
/// the ready timeout. Dropped when it is ready (it has returned itself) or before it is
/// reaped: the pid is never touched after that (a reaped pid can be reused).
struct IdleLimit {
    live: Arc<std::sync::Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdleLimit {
    fn start(pid: u32, number: u64, limit: Duration) -> IdleLimit {
        let live = Arc::new(std::sync::Mutex::new(true));
        let task = tokio::spawn({
            let live = live.clone();
            async move {
                tokio::time::sleep(limit).await;
                let live = live.lock().unwrap_or_else(|p| p.into_inner());
                if !*live {
                    return;
                }
                match crate::sys::leave_idle_priority(Some(pid)) {
                    Ok(n) => tracing::info!(
                        "generation {number} (pid {pid}) still starting after {:.1} s at idle CPU priority: returned {n} thread(s) to normal priority",
                        limit.as_secs_f64()
                    ),
                    Err(e) => tracing::warn!(
                        "generation {number} (pid {pid}): cannot return it from idle CPU priority: {e}"
                    ),
                }
            }
        });
        IdleLimit { live, task }
    }
}

impl Drop for IdleLimit {
    fn drop(&mut self) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.task.abort();
    }
}

/// Runs one generation's lifecycle.
pub(super) struct Driver {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<Request>,
    machine: Machine,
    timeouts: Timeouts,
    /// The next generation while it starts.
    pending: Option<Child>,
    /// The generation that took over, until it exits (so it is reaped, not left a zombie).
    successor: Option<Child>,
    /// Who waits for a restart's result, by the id the machine answers.
    replies: HashMap<ReplyId, oneshot::Sender<RestartResult>>,
    next_reply: ReplyId,
    /// The next generation's process started ahead, when the generation keeps one.
    standby: Option<Standby>,
}

impl Driver {
    pub(super) fn new(shared: Arc<Shared>, requests: mpsc::UnboundedReceiver<Request>) -> Self {
        let timeouts = Timeouts {
            ready: shared.config.ready_timeout,
            stop: shared.config.stop_timeout,
        };
        let me = Me {
            generation: shared.number,
            pid: std::process::id(),
        };
        let machine = Machine::new(me, timeouts, shared.config.standby);
        Driver {
            shared,
            requests,
            machine,
            timeouts,
            pending: None,
            successor: None,
            replies: HashMap::new(),
            next_reply: 0,
            standby: None,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let event = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(Request::Restart { reply }) => Event::RestartRequested {
                        reply: reply.map(|tx| {
                            self.next_reply += 1;
                            self.replies.insert(self.next_reply, tx);
                            self.next_reply
                        }),
                    },
                    Some(Request::Ready) => Event::Ready,
                    Some(Request::Stop { cause, sender }) => Event::StopRequested { cause, sender },
                    None => return,
                },
                (pid, why) = standby_gone(self.standby.as_mut(), &self.shared.standby) => {
                    Event::StandbyGone { pid, why: why.to_owned() }
                }
                event = pending_event(self.machine.state, self.pending.as_mut()) => event,
                event = drain_event(&self.shared, self.machine.state) => event,
                event = successor_event(self.successor.as_mut()) => {
                    // Reaped: nothing more to watch.
                    self.successor = None;
                    event
                }
            };
            self.handle(event).await;
        }
    }

    /// Feeds `event` to the state machine and performs its actions, which may produce
    /// further events (a spawn's result).
    async fn handle(&mut self, event: Event) {
        let mut events = vec![event];
        while let Some(event) = events.pop() {
            tracing::trace!(?event, state = ?self.machine.state, "event");
            let actions = self.machine.handle(event, Instant::now());
            for action in actions {
                if let Some(next) = self.perform(action).await {
                    events.push(next);
                }
            }
        }
    }

    async fn perform(&mut self, action: Action) -> Option<Event> {
        let number = self.shared.number;
        let next = number + 1;
        match action {
            Action::NotifyReloading => self.shared.notify(&[
                "RELOADING=1".into(),
                format!("MONOTONIC_USEC={}", monotonic_usec()),
                format!("STATUS=Restarting: starting generation {next}"),
            ]),
            Action::Spawn => {
                return Some(match self.spawn_fresh() {
                    Ok(child) => {
                        let pid = child.process.pid();
                        self.pending = Some(child);
                        Event::Spawned { pid }
                    }
                    Err(e) => Event::SpawnFailed { error: e.to_string() },
                });
            }
            Action::WakeStandby { pid } => {
                return Some(match self.wake().await {
                    Ok(child) => {
                        self.pending = Some(child);
                        Event::StandbyWoken { pid }
                    }
                    Err(why) => Event::StandbyUnusable { pid, why },
                });
            }
            Action::StartStandby => return Some(self.start_standby()),
            Action::LetGoStandby { pid, why } => {
                if let Some(standby) = self.standby.take_if(|s| s.child.process.pid() == pid) {
                    self.let_go(standby, &why);
                }
            }
            Action::RestartStarted { pid, timeout, woken } => {
                if !woken {
                    tracing::info!(
                        "generation {number}: restart: started generation {next} with pid {pid}; waiting up to {:.1} s for it to be ready",
                        timeout.as_secs_f64()
                    );
                }
            }
            Action::SpawnFailed { error } => {
                tracing::error!("generation {number}: restart failed, still serving: {error}");
            }
            Action::StillServing { why } => self.still_serving(&why),
            Action::AbandonChild { pid, failure } => {
                let why = self.abandon(pid, failure).await;
                return Some(Event::Abandoned { pid, why });
            }
            Action::HandOver { successor } => {
                tracing::info!("generation {next} (pid {successor}) is ready: handing over");
                self.successor = self.pending.take().map(|mut c| {
                    c.idle_limit = None;
                    // The successor's channel, for handing it live connections: they go out
                    // on its write side, and its answers (taken or not) come back on the
                    // read side the readiness came on.
                    let handover =
                        super::handover::Handover::new(c.out.clone(), c.ready.take(), next, successor);
                    *self
                        .shared
                        .successor_channel
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(handover));
                    c
                });
            }
            Action::Reply { to, result } => {
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(result);
                }
            }
            Action::BeginDrain { reason, deadline } => self.begin_drain(reason, deadline),
            Action::Finish { reason, forced } => {
                let unfinished = self.shared.connections.receiver_count();
                let how = if forced {
                    format!("gave up on {unfinished} unfinished connection(s)")
                } else {
                    "drained".to_owned()
                };
                tracing::info!(
                    "generation {number} done ({how}); exiting pid {}",
                    std::process::id()
                );
                self.shared.outcome.send_replace(Some(Outcome {
                    reason,
                    forced,
                    unfinished,
                }));
            }
            Action::LateStop { cause } => {
                tracing::warn!(
                    "generation {number}: {cause} after the drain ended: giving it its default action"
                );
                signals::default_action(cause);
            }
            Action::Note(note) => log_note(number, note, self.shared.connections.receiver_count()),
        }
        None
    }

    /// The next generation, started now (at idle CPU priority where it may return).
    fn spawn_fresh(&mut self) -> Result<Child, Error> {
        let idle = self.shared.config.idle_start && crate::sys::may_start_at_idle_priority();
        let (child, locked, _) = self.start_process(idle, false)?;
        self.hand_state(child.out.clone(), locked, child.process.pid());
        let idle_limit = idle.then(|| {
            IdleLimit::start(
                child.process.pid(),
                self.shared.number + 1,
                self.shared.config.idle_start_limit,
            )
        });
        Ok(Child { idle_limit, ..child })
    }

    /// Starts the standby. A failure is logged: restarts then start a process.
    fn start_standby(&mut self) -> Event {
        let number = self.shared.number;
        let program = Executable::current().ok().and_then(Executable::identity);
        let sockets = self.shared.registry().len();
        let idle = crate::sys::may_start_at_idle_priority();
        match self.start_process(idle, true) {
            Ok((child, _, channel)) => {
                let pid = child.process.pid();
                if let Some(channel) = channel {
                    // From here the signal thread may wake it at a `SIGUSR2`: the wake the
                    // machine asks for a restart in this state, done sooner.
                    *self.shared.standby.lock().unwrap_or_else(|p| p.into_inner()) = Some(StandbyWake {
                        pid,
                        idle,
                        program,
                        sockets,
                        channel,
                        woken: None,
                    });
                }
                self.standby = Some(Standby {
                    child,
                    started: Instant::now(),
                });
                self.shared
                    .standby_pid
                    .store(pid, std::sync::atomic::Ordering::Relaxed);
                // Logged once `status` names it.
                tracing::info!(
                    "generation {number}: started a standby for generation {} with pid {pid}",
                    number + 1
                );
                Event::StandbyStarted { pid }
            }
            Err(e) => {
                tracing::warn!(
                    "generation {number}: cannot start a standby ({e}); restarts will start a process"
                );
                Event::StandbyStartFailed { error: e.to_string() }
            }
        }
    }

    /// Wakes the standby for the restart under way (the signal thread may have already), if it
    /// is still what a process started now would be, and waits for it to acknowledge the wake
    /// (at most [`WAKE_ACK_TIMEOUT`] from the wake): a standby that cannot run (stopped,
    /// starved) would otherwise hold the restart for the whole ready timeout. Otherwise says
    /// why not (it stays in `self.standby`, for the caller to let go).
    ///
    /// What was found is the machine's to act on (`StandbyUnusable`: it lets it go and starts a
    /// process for the same restart).
    async fn wake(&mut self) -> Result<Child, String> {
        let handle = self
            .shared
            .standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut handle) = handle else {
            return Err("it has no channel to be woken on".to_owned());
        };
        let by_signal = handle.woken.is_some();
        handle.wake(self.shared.registry())?;
        let woken = handle.woken.unwrap_or_else(Instant::now);
        let Some(standby) = self.standby.as_mut() else {
            return Err("there is none".to_owned());
        };
        let Some(channel) = standby.child.ready.as_ref() else {
            return Err("it has no channel to be woken on".to_owned());
        };
        let deadline = tokio::time::Instant::from_std(woken + WAKE_ACK_TIMEOUT);
        match tokio::time::timeout_at(deadline, read_wake_ack(channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(_) => {
                return Err(format!(
                    "it did not acknowledge the wake within {} ms (stopped, or starved of CPU): starting a fresh process",
                    WAKE_ACK_TIMEOUT.as_millis()
                ));
            }
        }
        let acked = woken.elapsed();
        let Some(standby) = self.standby.take() else {
            return Err("there is none".to_owned());
        };
        let pid = standby.child.process.pid();
        tracing::info!(
            "generation {}: restart: woke the standby (pid {pid}, started {:.1} s ago{}; acknowledged in {:.2} ms)",
            self.shared.number,
            standby.started.elapsed().as_secs_f64(),
            if by_signal { ", at the signal" } else { "" },
            acked.as_secs_f64() * 1000.0
        );
        self.shared
            .standby_pid
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let locked = standby.child.out.clone().try_lock_owned().ok();
        self.hand_state(standby.child.out.clone(), locked, pid);
        Ok(standby.child)
    }

    /// Lets `standby` go (`why`): killed with anything it started, and reaped.
    fn let_go(&self, standby: Standby, why: &str) {
        // Out of the signal thread's reach before its pid can be reaped.
        drop(
            self.shared
                .standby
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let mut child = standby.child;
        let pid = child.process.pid();
        self.shared
            .standby_pid
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let status = match child.process.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        if let Err(e) = child.process.kill_group() {
            tracing::warn!("standby (pid {pid}): {e}");
        }
        let _ = child.process.kill();
        tracing::info!(
            "generation {}: let the standby (pid {pid}) go{status}: {why}",
            self.shared.number
        );
    }

    /// Starts the program with the sockets and the channel; a standby waits to be woken
    /// (`GRACE_STANDBY`). Returns the channel's write side locked, for the state to go first.
    fn start_process(
        &self,
        idle: bool,
        standby: bool,
    ) -> Result<(Child, Option<LockedChannel>, Option<std::os::fd::OwnedFd>), Error> {
        let io = |what: &str, source: std::io::Error| Error::Io {
            what: what.to_owned(),
            source,
        };
        // The channel to the next generation: readiness (or a refusal) comes back on it,
        // handed-over state goes out on it.
        let (ours, theirs) =
            crate::sys::socketpair_cloexec().map_err(|e| io("cannot create the readiness channel", e))?;
        let ours = std::os::unix::net::UnixStream::from(ours);
        ours.set_nonblocking(true)
            .map_err(|e| io("cannot make the readiness channel non-blocking", e))?;
        // A standby's wake byte goes out on a copy, from whichever thread wakes it.
        let wake_channel = if standby {
            Some(
                ours.try_clone()
                    .map_err(|e| io("cannot copy the readiness channel", e))?
                    .into(),
            )
        } else {
            None
        };
        let (ready, state_out) = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| io("cannot register the readiness channel with tokio", e))?
            .into_split();
        let mut next = NextProcess::new(Executable::current()?, self.shared.registry().handoff()?);
        // A group of its own, so a failed start is killed with everything it started.
        next.new_process_group();
        // Every gracenet variable the next process has is written here (the spawn passes on
        // none of this process's own); those not set are absent.
        if let Some(supervisor) = &self.shared.startup.supervisor {
            next.env(GRACE_SUPERVISOR, supervisor);
        }
        if idle {
            next.idle_priority();
            next.env(GRACE_IDLE_START, "1");
        }
        if standby {
            next.env(GRACE_STANDBY, "1");
        }
        next.env(GRACE_GENERATION, (self.shared.number + 1).to_string());
        let mut ancestors = self.shared.running_ancestors();
        ancestors.push(std::process::id());
        let keep = ancestors.len().saturating_sub(MAX_ANCESTORS);
        let ancestors: Vec<String> = ancestors[keep..].iter().map(u32::to_string).collect();
        next.env(GRACE_ANCESTORS, ancestors.join(","));
        let fd = next.pass_fd(theirs);
        next.env(GRACE_READY_FD, fd.to_string());
        // systemd's, not ours: the socket this generation reports to, whatever the program
        // did to its own environment since. Without a notifier (unset, or unusable here) it
        // is left as the environment has it, for systemd's other readers.
        if let Some(notifier) = &self.shared.notifier {
            next.env(NOTIFY_SOCKET, notifier.var());
        }
        let mut process = next.spawn()?;
        let out = Arc::new(tokio::sync::Mutex::new(state_out));
        // Locked here, before anything else can hold the channel: the state section must come
        // first on it, before any connection handed over (the next process reads it first; a
        // handed connection's bytes read as a state length would lose the connection, its fd
        // discarded with them). A task spawned with an unlocked channel could lose that race
        // to the first `hand_over` if it had not run yet.
        // (A mutex made on the line above is never locked yet; were it, the task would wait.)
        let locked = out.clone().try_lock_owned().ok();
        let exit = match ExitWatch::new(process.pid()) {
            Ok(w) => w,
            Err(e) => {
                let _ = process.kill();
                return Err(io("cannot watch the next process for its exit", e));
            }
        };
        let child = Child {
            process,
            exit,
            ready: Some(ready),
            refusal: None,
            out,
            idle_limit: None,
        };
        Ok((child, locked, wake_channel))
    }

    /// Streams the application's state (if it provides one) to the next generation: an
    /// 8-byte length, then the bytes; then closes our side for writing, so a next generation
    /// that asks for state and was given none reads end-of-file. Bounded by the ready
    /// timeout: a provider or a reader that stalls cannot hold the restart.
    fn hand_state(
        &self,
        channel: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
        locked: Option<tokio::sync::OwnedMutexGuard<tokio::net::unix::OwnedWriteHalf>>,
        pid: u32,
    ) {
        let provider = self.shared.config.state.clone();
        let timeout = self.timeouts.ready;
        let next = self.shared.number + 1;
        tokio::spawn(async move {
            // Held (since before this task existed) while the state is written: connections
            // handed later queue behind it.
            let mut out = match locked {
                Some(locked) => locked,
                None => channel.lock_owned().await,
            };
            let Some(provider) = provider else {
                // "No state" (the channel stays open for handed-over connections).
                let _ = tokio::time::timeout(timeout, out.write_all(&NO_STATE.to_le_bytes())).await;
                return;
            };
            let handed = tokio::time::timeout(timeout, async {
                // A thread of its own, not tokio's blocking pool: a provider that never
                // returns must not hold this process's exit (a runtime waits for its pool).
                let (tx, rx) = oneshot::channel();
                std::thread::Builder::new()
                    .name("gracenet-state".into())
                    .spawn(move || {
                        let _ = tx.send(provider());
                    })?;
                let bytes = rx
                    .await
                    .map_err(|_| std::io::Error::other("the state provider panicked"))?;
                out.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
                out.write_all(&bytes).await?;
                Ok::<usize, std::io::Error>(bytes.len())
            })
            .await;
            match handed {
                Ok(Ok(n)) => tracing::info!("handed {n} byte(s) of state to generation {next} (pid {pid})"),
                Ok(Err(e)) => {
                    tracing::warn!("could not hand the state to generation {next} (pid {pid}): {e}")
                }
                Err(_) => tracing::warn!(
                    "could not hand the state to generation {next} (pid {pid}) within {:.1} s",
                    timeout.as_secs_f64()
                ),
            }
        });
    }

    /// Reaps a next generation that failed (killing it if it still runs) and says why, as
    /// the restart's answer will.
    async fn abandon(&mut self, pid: u32, failure: ChildFailure) -> String {
        let next = self.shared.number + 1;
        let Some(mut child) = self.pending.take() else {
            return format!("generation {next} (pid {pid}) is gone");
        };
        // Before it can be reaped.
        child.idle_limit = None;
        if failure == ChildFailure::Gone {
            // The pipe closed: the child exited, or is exiting. Let it end with its own
            // status before killing it.
            let _ = tokio::time::timeout(EXIT_GRACE, child.exit.exited()).await;
        }
        // Everything it started goes with it (its process group): a wrapper that did not
        // exec must not leave a descendant holding the sockets. The group is killed before
        // the child is reaped, while its pid (the group's id) cannot be reused.
        let exited = child.process.has_exited();
        if let Err(e) = child.process.kill_group() {
            tracing::warn!("generation {next} (pid {pid}): {e}");
        }
        let (status, killed) = match child.process.try_wait() {
            Ok(Some(status)) => (Some(status), !exited),
            _ => (child.process.kill().ok(), true),
        };
        let why = match (&failure, status) {
            (ChildFailure::Gone, _) if child.refusal.is_some() => format!(
                "refused what it was handed: {}",
                child.refusal.as_deref().unwrap_or_default()
            ),
            (ChildFailure::Gone, Some(s)) if !killed => format!("exited before it was ready ({s})"),
            (ChildFailure::Gone, _) => "closed its readiness pipe without reporting ready".to_owned(),
            (ChildFailure::NotReady { timeout }, _) => {
                format!("not ready after {:.1} s", timeout.as_secs_f64())
            }
            (ChildFailure::Unwanted, _) => {
                tracing::info!(
                    "generation {}: generation {next} (pid {pid}) started when no restart wanted it: killed it ({status:?})",
                    self.shared.number
                );
                return format!("generation {next} (pid {pid}) was not wanted");
            }
            (ChildFailure::Stopping { cause }, _) => {
                tracing::warn!(
                    "generation {}: {cause} while generation {next} (pid {pid}) was starting: killed it ({status:?})",
                    self.shared.number
                );
                return format!("generation {next} (pid {pid}) was killed: this generation is stopping");
            }
        };
        let killed_note = if killed { "; killed it" } else { "" };
        tracing::error!("restart failed: generation {next} (pid {pid}) {why}{killed_note}; still serving");
        format!("generation {next} (pid {pid}) {why}")
    }

    /// A failed restart ends systemd's "reloading" state: this generation still serves.
    fn still_serving(&self, why: &str) {
        self.shared.notify(&[
            "READY=1".into(),
            format!(
                "STATUS=Restart failed: {why}; generation {} still serving with pid {}",
                self.shared.number,
                std::process::id()
            ),
        ]);
    }

    fn begin_drain(&self, reason: StopReason, deadline: Instant) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared
            .phase
            .send_replace(Phase::Draining { reason, deadline });
        self.shared.registry().close_all();
        let timeout = self.timeouts.stop;
        let connections = self.shared.connections.receiver_count();
        if reason == StopReason::Shutdown {
            if let Some(path) = &self.shared.config.pid_file {
                crate::pidfile::remove_if_ours(path);
            }
            tracing::info!(
                "generation {}: stopping, draining {connections} connection(s), at most {:.0} s",
                self.shared.number,
                timeout.as_secs_f64()
            );
            // Ask systemd to wait for the whole drain (TimeoutStopSec may be shorter).
            self.shared.notify(&[
                "STOPPING=1".into(),
                format!(
                    "EXTEND_TIMEOUT_USEC={}",
                    (timeout + Duration::from_secs(5)).as_micros()
                ),
                format!(
                    "STATUS=Stopping: generation {} draining {connections} connection(s), at most {:.0} s",
                    self.shared.number,
                    timeout.as_secs_f64()
                ),
            ]);
        }
    }
}

fn log_note(number: u64, note: Note, connections: usize) {
    let next = number + 1;
    match note {
        Note::Coalesced { pending: Some(pid) } => {
            tracing::info!(
                "generation {number}: restart requested while generation {next} (pid {pid}) is starting: coalesced"
            )
        }
        Note::Coalesced { pending: None } => {
            tracing::info!(
                "generation {number}: restart requested while generation {next} is being started: coalesced"
            )
        }
        Note::RestartWhileStopping => {
            tracing::info!("generation {number}: restart requested while stopping: ignored")
        }
        Note::HeldUntilReady => tracing::info!(
            "generation {number}: restart requested before this generation is ready: it starts once ready"
        ),
        Note::Queued => tracing::info!(
            "generation {number}: restart requested while one is under way: it runs after it (or, if that one hands over, is sent to the new generation)"
        ),
        Note::FromSuccessor { cause } => {
            tracing::debug!("ignoring {cause} from the generation that took over")
        }
        Note::KeepDraining { cause } => tracing::info!(
            "generation {number}: {cause} while draining after a restart: finishing the drain ({cause} again to stop at once)"
        ),
        Note::StoppedAccepting => {
            tracing::info!("generation {number} stopped accepting; draining {connections} connection(s)")
        }
        Note::SuccessorExited { pid, status } => {
            tracing::warn!("generation {next} (pid {pid}), which took over, exited ({status})")
        }
    }
}

/// Why the standby can no longer be woken, once it cannot: it exited, or it spoke before it
/// was woken (a program that does not wait as a standby: it would serve beside this
/// generation). Once the signal thread has woken it, its words are for the restart: left
/// unread.
async fn standby_gone(standby: Option<&mut Standby>, shared: &SharedStandby) -> (u32, &'static str) {
    const GONE: &str = "it exited before a restart took it";
    let Some(standby) = standby else {
        return std::future::pending().await;
    };
    let pid = standby.child.process.pid();
    let woken = || {
        shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| h.woken.is_some())
    };
    let Child { exit, ready, .. } = &mut standby.child;
    let spoke = async {
        let Some(channel) = ready else {
            return std::future::pending().await;
        };
        // Readiness can be spurious: only a byte, end-of-file or an error counts.
        let mut byte = [0u8; 1];
        loop {
            if channel.readable().await.is_err() {
                return GONE;
            }
            if woken() {
                return std::future::pending().await;
            }
            match channel.try_read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(1) => {
                    return "it wrote to its channel before a restart woke it (a program that does not wait as a standby)";
                }
                // End-of-file: its end closed, with the process.
                _ => return GONE,
            }
        }
    };
    let why = tokio::select! {
        _ = exit.exited() => GONE,
        why = spoke => why,
    };
    (pid, why)
}

/// The next event about the starting generation: ready, gone, or too slow.
async fn pending_event(state: State, child: Option<&mut Child>) -> Event {
    let (
        State::Serving {
            pending: Some(Pending::Started { deadline, .. }),
        },
        Some(child),
    ) = (state, child)
    else {
        return std::future::pending().await;
    };
    let Child {
        exit, ready, refusal, ..
    } = child;
    let ready = async {
        match ready {
            Some(channel) => read_ready(channel, refusal).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        event = ready => event,
        _ = exit.exited() => Event::ChildGone,
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Event::ReadyTimeout,
    }
}

/// Reads a woken standby's acknowledgement ([`WAKE_ACK`](crate::readiness::WAKE_ACK)), and
/// only that byte: what follows (readiness, or a refusal) is the restart's to read.
async fn read_wake_ack(channel: &OwnedReadHalf) -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        if channel.readable().await.is_err() {
            return Err("its channel failed before it acknowledged the wake".to_owned());
        }
        match channel.try_read(&mut byte) {
            Ok(1) if byte[0] == crate::readiness::WAKE_ACK => return Ok(()),
            Ok(1) => {
                return Err(format!(
                    "it answered the wake with {:?}, not its acknowledgement",
                    char::from(byte[0])
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // End-of-file: it exited (or is exiting) instead.
            _ => return Err("it exited when woken".to_owned()),
        }
    }
}

/// Reads the next generation's answer: `R` (ready), or `X` and why it refuses what it was
/// handed; end-of-file means it died.
async fn read_ready(channel: &OwnedReadHalf, refusal: &mut Option<String>) -> Event {
    loop {
        if channel.readable().await.is_err() {
            return Event::ChildGone;
        }
        let mut buf = [0u8; 1025];
        match channel.try_read(&mut buf) {
            Ok(0) => return Event::ChildGone,
            Ok(n) if buf[0] == b'X' => {
                let mut reason = String::from_utf8_lossy(&buf[1..n]).into_owned();
                // The rest of the reason, if it came in pieces (1 KiB at most, briefly).
                let rest = async {
                    while reason.len() < 1024 && channel.readable().await.is_ok() {
                        match channel.try_read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(m) => reason.push_str(&String::from_utf8_lossy(&buf[..m])),
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), rest).await;
                *refusal = Some(reason);
                return Event::ChildGone;
            }
            Ok(_) => return Event::ChildReady,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Event::ChildGone,
        }
    }
}

/// The next event of a drain: every listener dropped, every connection done, or the
/// deadline.
async fn drain_event(shared: &Shared, state: State) -> Event {
    let State::Draining {
        deadline, accepting, ..
    } = state
    else {
        return std::future::pending().await;
    };
    let deadline = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
    if accepting {
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

/// The successor's exit, once it happens (it is reaped here).
async fn successor_event(child: Option<&mut Child>) -> Event {
    let Some(child) = child else {
        return std::future::pending().await;
    };
    child.exit.exited().await;
    let status = match child.process.try_wait() {
        Ok(Some(s)) => s.to_string(),
        Ok(None) => "status unknown".to_owned(),
        Err(e) => e.to_string(),
    };
    Event::SuccessorExited {
        pid: child.process.pid(),
        status,
    }
}
