//! The thin side of the lifecycle: turns I/O into the [`Machine`]'s events, and performs the
//! actions it returns (spawn, wake or let go the standby, kill, notify, close listeners, PID
//! file, reply). Every decision is the machine's; what is decided here is only how an action
//! is done, and what its result was (an exit status, a refusal, a standby that did not answer
//! the wake), fed back as an event.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::backstop::BACKSTOP_GRACE;
use super::child::{self, Child, IdleLimit};
use super::machine::{Action, ChildFailure, Event, Machine, Me, Note, Pending, ReplyId, State, Timeouts};
use super::shared::Shared;
use super::signals::{self, Request};
use super::standby::{SharedStandby, StandbyWake, WAKE_ACK_TIMEOUT};
use super::{Outcome, Phase, RestartResult, StopReason};
use super::{messages, sd_notify};
use crate::error::Error;
use crate::metrics::RestartOutcome;
use crate::process::Executable;

/// The next generation's process, started ahead and waiting to be woken by a restart
/// ([`GenerationBuilder::standby`](super::GenerationBuilder::standby)); what it was started
/// from, and how to wake it, is in the shared `StandbyWake`.
struct Standby {
    child: Child,
    started: Instant,
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
    /// When the restart under way was asked for (its latency's start), and when the drain
    /// began: for the figures ([`crate::metrics`]).
    restart_began: Option<Instant>,
    drain_began: Option<Instant>,
}

impl Driver {
    pub(super) fn new(shared: Arc<Shared>, requests: mpsc::UnboundedReceiver<Request>) -> Self {
        let timeouts = Timeouts {
            ready: shared.settings.ready_timeout,
            stop: shared.settings.stop_timeout,
        };
        let me = Me {
            generation: shared.number,
            pid: std::process::id(),
            supervisor: shared.startup.supervisor_pid(),
        };
        let machine = Machine::new(me, timeouts, shared.settings.standby);
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
            restart_began: None,
            drain_began: None,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let event = tokio::select! {
                // Requests first: a stop that came before the successor said it is ready is a
                // stop of the restart under way (both processes), not of the old process's
                // drain once it has handed over. Left to chance, `kill -USR2 P; kill -TERM P`
                // with a standby (ready in a millisecond) lost the stop in 3 runs of 20.
                biased;
                request = self.requests.recv() => match request {
                    Some(Request::Restart { reply }) => Event::RestartRequested {
                        reply: reply.map(|tx| {
                            self.next_reply += 1;
                            self.replies.insert(self.next_reply, tx);
                            self.next_reply
                        }),
                    },
                    Some(Request::Rejoin { reply }) => {
                        self.next_reply += 1;
                        self.replies.insert(self.next_reply, reply);
                        Event::RejoinRequested { reply: self.next_reply }
                    }
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
            crate::log::trace!(?event, state = ?self.machine.state, "event");
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
            Action::NotifyReloading => {
                self.restart_began = Some(Instant::now());
                self.shared.restart.store(true, Ordering::Relaxed);
                self.shared.notify(&sd_notify::reloading(next));
            }
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
                self.shared.next_pid.store(pid, Ordering::Relaxed);
                if !woken {
                    crate::log::info!(
                        generation = number,
                        next,
                        pid,
                        timeout_s = timeout.as_secs_f64(),
                        "restart: started the next generation"
                    );
                }
            }
            Action::SpawnFailed { error } => {
                self.restart_ended(RestartOutcome::SpawnFailed);
                crate::log::error!(generation = number, next, %error, "{}", messages::RESTART_FAILED);
            }
            Action::StillServing { why } => self.still_serving(&why),
            Action::AbandonChild { pid, failure } => {
                self.restart_ended(match failure {
                    ChildFailure::Gone => RestartOutcome::Exited,
                    ChildFailure::NotReady { .. } => RestartOutcome::NotReady,
                    ChildFailure::Stopping { .. } | ChildFailure::Unwanted => RestartOutcome::Cancelled,
                });
                let stopping = matches!(failure, ChildFailure::Stopping { .. });
                let why = child::abandon(self.pending.take(), self.shared.number, pid, failure).await;
                if let Some(path) = &self.shared.settings.pid_file {
                    // It may have written the PID file just before it was killed.
                    crate::pidfile::reclaim(path, pid, stopping);
                }
                return Some(Event::Abandoned { pid, why });
            }
            Action::HandOver { successor } => {
                self.restart_ended(RestartOutcome::HandedOver);
                if self.shared.startup.supervisor.is_none() && self.shared.startup.worker.is_none() {
                    // Straight to systemd (a supervisor or a cluster's primary learns the
                    // new main process from the successor itself).
                    self.shared.notify(&sd_notify::handed_over(next, successor));
                }
                crate::log::info!(
                    generation = number,
                    next,
                    pid = successor,
                    "the next generation is ready: handing over"
                );
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
            Action::HandFinalState { successor } => {
                // The runtime ran the drain to its end: what follows has timeouts of its own.
                self.shared.backstop.ended();
                let child = self.successor.as_ref().filter(|c| c.process.pid() == successor);
                child::hand_final_state(&self.shared, child, successor).await;
            }
            Action::Finish { reason, forced } => {
                self.shared.backstop.ended();
                if let Some(began) = self.drain_began {
                    crate::metrics::drain_ended(began.elapsed(), forced);
                }
                let unfinished = self.shared.connections.receiver_count();
                let pid = std::process::id();
                if forced && unfinished > 0 {
                    crate::log::info!(
                        generation = number,
                        pid,
                        unfinished,
                        "done: gave up on unfinished connections or tasks; exiting"
                    );
                } else {
                    crate::log::info!(generation = number, pid, "done: drained; exiting");
                }
                self.shared.outcome.send_replace(Some(Outcome {
                    reason,
                    forced,
                    unfinished,
                }));
            }
            Action::LateStop { cause } => {
                crate::log::warn!(
                    generation = number,
                    %cause,
                    "stop signal after the drain ended: giving it its default action"
                );
                signals::default_action(cause);
            }
            Action::Note(note) => log_note(number, note, self.shared.connections.receiver_count()),
        }
        None
    }

    /// The next generation, started now (at idle CPU priority where it may return).
    fn spawn_fresh(&mut self) -> Result<Child, Error> {
        let idle = self.shared.settings.idle_start && crate::sys::may_start_at_idle_priority();
        let (child, locked, _) = child::start_process(&self.shared, idle, false)?;
        child::hand_state(&self.shared, child.out.clone(), locked, child.process.pid());
        let idle_limit = idle.then(|| {
            IdleLimit::start(
                child.process.pid(),
                self.shared.number + 1,
                self.shared.settings.idle_start_limit,
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
        match child::start_process(&self.shared, idle, true) {
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
                crate::log::info!(
                    generation = number,
                    next = number + 1,
                    pid,
                    "started a standby for the next generation"
                );
                Event::StandbyStarted { pid }
            }
            Err(e) => {
                crate::log::warn!(
                    generation = number,
                    error = %e,
                    "cannot start a standby: restarts will start a process"
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
        match tokio::time::timeout_at(deadline, child::read_wake_ack(channel)).await {
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
        crate::log::info!(
            pid,
            generation = self.shared.number,
            started_s_ago = standby.started.elapsed().as_secs_f64(),
            at_signal = by_signal,
            acknowledged_ms = acked.as_secs_f64() * 1000.0,
            "restart: woke the standby"
        );
        self.shared
            .standby_pid
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let locked = standby.child.out.clone().try_lock_owned().ok();
        child::hand_state(&self.shared, standby.child.out.clone(), locked, pid);
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
            Ok(Some(status)) => status.to_string(),
            // Its channel may close a moment before it can be reaped: not "running".
            _ => "not yet reaped".to_owned(),
        };
        if let Err(e) = child.process.kill_group() {
            crate::log::warn!(pid, error = %e, "cannot kill the standby's process group");
        }
        let _ = child.process.kill();
        crate::log::info!(
            pid,
            generation = self.shared.number,
            %status,
            reason = why,
            "let the standby go"
        );
    }

    /// The restart under way ended so: counted, with its latency when it was asked for, and
    /// no longer shown as under way.
    fn restart_ended(&mut self, outcome: RestartOutcome) {
        crate::metrics::restart_ended(outcome, self.restart_began.take().map(|t| t.elapsed()));
        self.shared.restart.store(false, Ordering::Relaxed);
        self.shared.next_pid.store(0, Ordering::Relaxed);
    }

    /// A failed restart ends systemd's "reloading" state: this generation still serves.
    fn still_serving(&self, why: &str) {
        let mut lines = sd_notify::restart_failed(self.shared.number, std::process::id(), why);
        if self.shared.startup.worker.is_some() {
            // The primary's rolling restart stops here, and says why.
            lines.push(format!("{}={why}", crate::supervisor::protocol::RESTART_FAILED));
        }
        self.shared.notify(&lines);
    }

    fn begin_drain(&mut self, reason: StopReason, deadline: Instant) {
        self.drain_began = Some(Instant::now());
        if let Some(at) = deadline.checked_add(BACKSTOP_GRACE) {
            self.shared
                .backstop
                .arm(at, None, "the drain's deadline has passed");
        }
        crate::metrics::drain_began();
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
            if let Some(path) = &self.shared.settings.pid_file {
                crate::pidfile::remove_if_ours(path);
            }
            crate::log::info!(
                generation = self.shared.number,
                connections,
                timeout_s = timeout.as_secs_f64(),
                "stopping: draining connections and tasks"
            );
            // Ask systemd to wait for the whole drain (TimeoutStopSec may be shorter).
            self.shared
                .notify(&sd_notify::stopping(self.shared.number, connections, timeout));
        }
    }
}

fn log_note(number: u64, note: Note, connections: usize) {
    let next = number + 1;
    match note {
        Note::Coalesced { pending: Some(pid) } => crate::log::info!(
            generation = number,
            next,
            pid,
            "restart requested while the next generation is starting: coalesced"
        ),
        Note::Coalesced { pending: None } => crate::log::info!(
            generation = number,
            next,
            "restart requested while the next generation is being started: coalesced"
        ),
        Note::RestartWhileStopping => {
            crate::log::info!(generation = number, "restart requested while stopping: ignored")
        }
        Note::HeldUntilReady => crate::log::info!(
            generation = number,
            "restart requested before this generation is ready: it starts once ready"
        ),
        Note::Queued => crate::log::info!(
            generation = number,
            "restart requested while one is under way: queued; if that one fails, it runs next; if it hands over, the request is answered HandedOver (a control-socket client then asks the new generation)"
        ),
        Note::FromSuccessor { cause } => {
            crate::log::debug!(%cause, "ignoring a signal from the generation that took over")
        }
        Note::KeepDraining { cause } => crate::log::info!(
            generation = number,
            %cause,
            "stop signal while draining: finishing the drain (the same signal again stops at once)"
        ),
        Note::NotFromSupervisor { cause, sender } => crate::log::info!(
            generation = number,
            %cause,
            sender,
            "stop signal from outside the supervisor while draining: finishing the drain (a stop sent to every process reaches this one from the supervisor too; the supervisor's second stops at once)"
        ),
        Note::StoppedAccepting => crate::log::info!(generation = number, connections, "stopped accepting"),
        Note::SuccessorExited { pid, status } => {
            crate::log::warn!(next, pid, %status, "the generation that took over exited")
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
            Some(channel) => child::read_ready(channel, refusal).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        event = ready => event,
        _ = exit.exited() => Event::ChildGone,
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Event::ReadyTimeout,
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
