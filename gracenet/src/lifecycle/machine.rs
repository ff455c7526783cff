//! The restart lifecycle's decisions, with no I/O: a generation's [`Machine`] (where it is,
//! its standby, who waits for which restart), the [`Event`]s that reach it, and
//! [`Machine::handle`], which says what changes and which [`Action`]s the driver must perform.
//! Every decision is here (start, wake or let go the standby, hand over, give up on a child,
//! reply to each restart request, stop); the driver, the signal thread and the API only turn
//! I/O into events and actions into I/O. Everything here is tested without processes or
//! sockets: event by event, and with random event sequences against invariants.

use std::time::{Duration, Instant};

use super::{RestartError, RestartResult, StopReason, Successor};

/// The two timeouts the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// How long a new generation may take to report ready.
    pub ready: Duration,
    /// How long a stopping generation may drain.
    pub stop: Duration,
}

/// Who this generation is: what its answers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Me {
    pub generation: u64,
    pub pid: u32,
    /// The supervisor or cluster's primary this generation runs under, if any: it forwards
    /// the stop signals it gets, so a signal sent to every process (a cgroup's stop) reaches
    /// this generation twice. Only its own (and this process's: a program that turns its
    /// SIGHUP into a SIGTERM to itself) count as a second stop request (which stops at once);
    /// a stop from anyone else begins a drain, never ends one.
    pub supervisor: Option<u32>,
}

/// Whether a stop signal from `sender` counts towards a second one (which stops at once), for
/// a generation `me` under `supervisor`: with none, every one; under one, its own and this
/// process's (see [`Me::supervisor`]). One rule for the machine and for the signal thread,
/// which keeps the stop deadline when the runtime cannot run the machine.
pub(crate) fn stop_counts(supervisor: Option<u32>, me: u32, sender: Option<u32>) -> bool {
    supervisor.is_none_or(|s| sender == Some(s) || sender == Some(me))
}

/// A restart request that waits for its result (`Generation::restart`, the control socket).
pub(crate) type ReplyId = u64;

/// What asked for a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    Sigterm,
    Sigint,
    /// `Generation::shutdown`.
    Call,
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopCause::Sigterm => "SIGTERM",
            StopCause::Sigint => "SIGINT",
            StopCause::Call => "shutdown()",
        })
    }
}

/// The next generation while it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// `Action::WakeStandby` was issued; `StandbyWoken` or `StandbyUnusable` comes next.
    Waking { pid: u32 },
    /// `Action::Spawn` was issued; `Spawned` or `SpawnFailed` comes next.
    Spawning,
    /// Running with this pid; given up on if not ready by `deadline`.
    Started { pid: u32, deadline: Instant },
    /// Failed: `Action::AbandonChild` was issued; `Abandoned` (with why) comes next.
    Abandoning { pid: u32 },
}

/// Where a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Started, not yet ready (`Generation::ready`): restart requests wait for it.
    Starting,
    /// Accepting; possibly starting the next generation.
    Serving { pending: Option<Pending> },
    /// Stopped (or stopping) accepting; in-flight work finishes by `deadline`.
    Draining {
        reason: StopReason,
        deadline: Instant,
        /// Whether some listener is still accepting (the application has not dropped it yet).
        accepting: bool,
        /// Whether a stop was already asked for: the next one stops at once.
        stop_asked: bool,
        /// The generation that took over, until it is seen to exit.
        successor: Option<u32>,
    },
    /// The drain is over; the outcome has been reported.
    Finished,
}

/// The next generation's process started ahead
/// ([`GenerationBuilder::standby`](super::GenerationBuilder::standby)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standby {
    /// The generation keeps none.
    Off,
    /// It keeps one and has none now.
    None,
    /// `Action::StartStandby` was issued; `StandbyStarted` or `StandbyStartFailed` next.
    Starting,
    /// Waiting to be woken.
    Waiting { pid: u32 },
}

/// Something that happened to a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `Generation::ready`: this generation serves.
    Ready,
    /// `SIGUSR2` (no reply) or `Generation::restart` and the control socket (a reply).
    RestartRequested { reply: Option<ReplyId> },
    /// A restart request asked again after the generation it first asked had handed over
    /// (the control client, told `retry`): any restart this generation began satisfies it
    /// (each began after that hand-over, so after the request), so it joins one under way.
    RejoinRequested { reply: ReplyId },
    /// `SIGTERM`, `SIGINT` or `Generation::shutdown`; `sender` is the signalling pid when the
    /// kernel reports one.
    StopRequested { cause: StopCause, sender: Option<u32> },
    /// The next generation was started with this pid.
    Spawned { pid: u32 },
    /// The next generation could not be started.
    SpawnFailed { error: String },
    /// The standby took the wake: it is the next generation.
    StandbyWoken { pid: u32 },
    /// The standby is not what a process started now would be (the program file changed,
    /// sockets were added), or did not take the wake in time: `why`.
    StandbyUnusable { pid: u32, why: String },
    /// A standby was started with this pid.
    StandbyStarted { pid: u32 },
    /// A standby could not be started.
    StandbyStartFailed { error: String },
    /// The standby exited, or its channel closed, while it waited.
    StandbyGone { pid: u32, why: String },
    /// The next generation wrote its readiness byte.
    ChildReady,
    /// The next generation closed its readiness pipe, or exited, before it was ready.
    ChildGone,
    /// The ready timeout passed.
    ReadyTimeout,
    /// The failed next generation is reaped; `why` it failed, as the driver saw it (its exit
    /// status, or what it refused).
    Abandoned { pid: u32, why: String },
    /// Every listener of this generation has been dropped.
    StoppedAccepting,
    /// Every tracked connection has ended.
    Drained,
    /// The stop timeout passed.
    DrainDeadline,
    /// The generation that took over has exited (and was reaped).
    SuccessorExited { pid: u32, status: String },
}

/// Why a next generation is given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChildFailure {
    /// It exited, or closed its readiness pipe, before reporting ready.
    Gone,
    /// It was not ready within the ready timeout.
    NotReady { timeout: Duration },
    /// A stop arrived while it was starting.
    Stopping { cause: StopCause },
    /// It was started (or woken) when no restart wanted it any more.
    Unwanted,
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell systemd a reload began.
    NotifyReloading,
    /// Start the next generation; feed back `Spawned` or `SpawnFailed`.
    Spawn,
    /// Wake the standby as the next generation (the signal thread may already have, at the
    /// `SIGUSR2`); feed back `StandbyWoken` or `StandbyUnusable`.
    WakeStandby { pid: u32 },
    /// Start a standby; feed back `StandbyStarted` or `StandbyStartFailed`.
    StartStandby,
    /// Kill the standby (with what it started) and reap it.
    LetGoStandby { pid: u32, why: String },
    /// A restart is under way: log it.
    RestartStarted {
        pid: u32,
        timeout: Duration,
        woken: bool,
    },
    /// The next generation failed: reap it (killing it, with its process group, if it still
    /// runs); feed back `Abandoned` with why.
    AbandonChild { pid: u32, failure: ChildFailure },
    /// The restart failed before a process existed: say why.
    SpawnFailed { error: String },
    /// Tell systemd this generation still serves after a failed restart (`why`).
    StillServing { why: String },
    /// The next generation is ready and takes over: keep it as the successor (its channel
    /// takes the live connections handed at the drain).
    HandOver { successor: u32 },
    /// Stop accepting, close this process's copies of the sockets, start the drain clock.
    BeginDrain { reason: StopReason, deadline: Instant },
    /// Answer one restart request. A success is answered after `BeginDrain`, so that whoever
    /// hears it and asks again reaches the successor, never this generation's listeners.
    Reply { to: ReplyId, result: RestartResult },
    /// The drain after a hand-over is over: give the successor (`successor`) the final
    /// state, with every write this generation acknowledged (bounded), before `Finish`.
    HandFinalState { successor: u32 },
    /// Report how the generation ended.
    Finish { reason: StopReason, forced: bool },
    /// A stop arrived after the drain ended: the application is still running after
    /// `wait()`; give the signal its default action.
    LateStop { cause: StopCause },
    /// Something worth a log line and nothing else.
    Note(Note),
}

/// Events that change nothing but are worth telling the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// A signal asked for a restart while one is under way: it is that one.
    Coalesced { pending: Option<u32> },
    /// A restart was asked for before this generation was ready: it starts once ready.
    HeldUntilReady,
    /// A restart request (with a reply) came while one was under way: it is run after it.
    Queued,
    /// A signal asked for a restart while stopping.
    RestartWhileStopping,
    /// The successor signalled us (systemd signals every process of a service): ignored.
    FromSuccessor { cause: StopCause },
    /// A first stop request during a drain after a restart: the drain goes on.
    KeepDraining { cause: StopCause },
    /// A stop signal from outside the supervisor during a drain (sent to every process of
    /// the service, and forwarded by the supervisor too): the drain goes on.
    NotFromSupervisor { cause: StopCause, sender: Option<u32> },
    /// Every listener is gone; connections may still be open.
    StoppedAccepting,
    /// The successor exited while we were still draining.
    SuccessorExited { pid: u32, status: String },
}

/// A generation's decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    pub state: State,
    pub standby: Standby,
    me: Me,
    timeouts: Timeouts,
    /// The requests the restart under way answers.
    waiting: Vec<ReplyId>,
    /// Requests that came while a restart was under way, or before this generation was ready:
    /// the next restart's. (A signal has no reply: `held_signal`.)
    queued: Vec<ReplyId>,
    /// A `SIGUSR2` came before this generation was ready.
    held_signal: bool,
}

impl Machine {
    /// A generation that has just started (not yet ready).
    pub(crate) fn new(me: Me, timeouts: Timeouts, keeps_standby: bool) -> Machine {
        Machine {
            state: State::Starting,
            standby: if keeps_standby {
                Standby::None
            } else {
                Standby::Off
            },
            me,
            timeouts,
            waiting: Vec::new(),
            queued: Vec::new(),
            held_signal: false,
        }
    }

    /// Processes `event` at `now`: the new state is in `self`, what to do is returned, in
    /// order.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.step(event, now, &mut actions);
        actions
    }

    fn step(&mut self, event: Event, now: Instant, actions: &mut Vec<Action>) {
        use Event as E;
        match event {
            E::Ready => {
                if self.state == State::Starting {
                    self.state = State::Serving { pending: None };
                    if self.held_signal || !self.queued.is_empty() {
                        self.held_signal = false;
                        let queued = std::mem::take(&mut self.queued);
                        self.begin_restart(queued, actions);
                    } else {
                        self.start_standby(actions);
                    }
                }
            }
            E::RestartRequested { reply } => self.restart_requested(reply, actions),
            E::RejoinRequested { reply } => match self.state {
                State::Serving { pending: Some(_) } => self.waiting.push(reply),
                _ => self.restart_requested(Some(reply), actions),
            },
            E::StopRequested { cause, sender } => self.stop_requested(cause, sender, now, actions),
            E::Spawned { pid } | E::StandbyWoken { pid }
                if !matches!(
                    (self.pending(), &event),
                    (Some(Pending::Spawning), E::Spawned { .. })
                ) && self.pending() != Some(Pending::Waking { pid }) =>
            {
                // Nothing waits for it (a stop came first): it goes.
                actions.push(Action::AbandonChild {
                    pid,
                    failure: ChildFailure::Unwanted,
                });
            }
            E::Spawned { pid } => {
                if self.pending() == Some(Pending::Spawning) {
                    self.set_pending(Pending::Started {
                        pid,
                        deadline: now + self.timeouts.ready,
                    });
                    actions.push(Action::RestartStarted {
                        pid,
                        timeout: self.timeouts.ready,
                        woken: false,
                    });
                }
            }
            E::SpawnFailed { error } => {
                if self.pending() == Some(Pending::Spawning) {
                    actions.push(Action::SpawnFailed { error: error.clone() });
                    self.restart_failed(error, actions);
                }
            }
            E::StandbyWoken { pid } => {
                if self.pending() == Some(Pending::Waking { pid }) {
                    self.set_pending(Pending::Started {
                        pid,
                        deadline: now + self.timeouts.ready,
                    });
                    actions.push(Action::RestartStarted {
                        pid,
                        timeout: self.timeouts.ready,
                        woken: true,
                    });
                }
            }
            E::StandbyUnusable { pid, why } => {
                // It goes whatever the state.
                actions.push(Action::LetGoStandby { pid, why });
                if self.pending() == Some(Pending::Waking { pid }) {
                    // The same restart goes on with a process started now.
                    self.set_pending(Pending::Spawning);
                    actions.push(Action::Spawn);
                }
            }
            E::StandbyStarted { pid } if self.standby != Standby::Starting => {
                actions.push(Action::LetGoStandby {
                    pid,
                    why: "started when none was wanted".into(),
                });
            }
            E::StandbyStarted { pid } => {
                if self.state == (State::Serving { pending: None }) {
                    self.standby = Standby::Waiting { pid };
                } else {
                    self.standby = Standby::None;
                    actions.push(Action::LetGoStandby {
                        pid,
                        why: "started as this generation stopped serving".into(),
                    });
                }
            }
            E::StandbyStartFailed { .. } => {
                if self.standby == Standby::Starting {
                    // Restarts start a process instead; a new standby is tried after the next
                    // failed restart.
                    self.standby = Standby::None;
                }
            }
            E::StandbyGone { pid, why } => match (self.standby, self.pending()) {
                (Standby::Waiting { pid: p }, _) if p == pid => {
                    // Not started again here: a standby that dies at once (a broken deploy)
                    // would loop. The next restart starts a process.
                    self.standby = Standby::None;
                    actions.push(Action::LetGoStandby { pid, why });
                }
                (_, Some(Pending::Waking { pid: p })) if p == pid => {
                    self.step(E::StandbyUnusable { pid, why }, now, actions);
                }
                _ => {}
            },
            E::ChildReady => {
                if let Some(Pending::Started { pid, .. }) = self.pending() {
                    self.hand_over(pid, now, actions);
                }
            }
            E::ChildGone | E::ReadyTimeout => {
                if let Some(Pending::Started { pid, .. }) = self.pending() {
                    let failure = if event == E::ChildGone {
                        ChildFailure::Gone
                    } else {
                        ChildFailure::NotReady {
                            timeout: self.timeouts.ready,
                        }
                    };
                    self.set_pending(Pending::Abandoning { pid });
                    actions.push(Action::AbandonChild { pid, failure });
                }
            }
            E::Abandoned { pid, why } => {
                if self.pending() == Some(Pending::Abandoning { pid }) {
                    self.restart_failed(why, actions);
                }
            }
            E::StoppedAccepting => {
                if let State::Draining {
                    accepting: accepting @ true,
                    ..
                } = &mut self.state
                {
                    *accepting = false;
                    actions.push(Action::Note(Note::StoppedAccepting));
                }
            }
            E::Drained | E::DrainDeadline => {
                if let State::Draining {
                    reason, successor, ..
                } = self.state
                {
                    self.state = State::Finished;
                    if let Some(successor) = successor {
                        actions.push(Action::HandFinalState { successor });
                    }
                    actions.push(Action::Finish {
                        reason,
                        forced: event == E::DrainDeadline,
                    });
                }
            }
            E::SuccessorExited { pid, status } => {
                if let State::Draining {
                    successor: successor @ Some(_),
                    ..
                } = &mut self.state
                    && *successor == Some(pid)
                {
                    *successor = None;
                    actions.push(Action::Note(Note::SuccessorExited { pid, status }));
                }
            }
        }
    }

    fn pending(&self) -> Option<Pending> {
        match self.state {
            State::Serving { pending } => pending,
            _ => None,
        }
    }

    fn set_pending(&mut self, p: Pending) {
        self.state = State::Serving { pending: Some(p) };
    }

    fn restart_requested(&mut self, reply: Option<ReplyId>, actions: &mut Vec<Action>) {
        match self.state {
            State::Starting => {
                match reply {
                    Some(r) => self.queued.push(r),
                    None => self.held_signal = true,
                }
                actions.push(Action::Note(Note::HeldUntilReady));
            }
            State::Serving { pending: None } => self.begin_restart(reply.into_iter().collect(), actions),
            State::Serving { pending: Some(p) } => match reply {
                // A request after the restart under way began (a deploy script's, after it
                // replaced the program): its own restart, after this one.
                Some(r) => {
                    self.queued.push(r);
                    actions.push(Action::Note(Note::Queued));
                }
                None => {
                    let pid = match p {
                        Pending::Started { pid, .. }
                        | Pending::Waking { pid }
                        | Pending::Abandoning { pid } => Some(pid),
                        Pending::Spawning => None,
                    };
                    actions.push(Action::Note(Note::Coalesced { pending: pid }));
                }
            },
            State::Draining { .. } | State::Finished => match reply {
                Some(to) => actions.push(Action::Reply {
                    to,
                    result: Err(self.not_here()),
                }),
                None => actions.push(Action::Note(Note::RestartWhileStopping)),
            },
        }
    }

    /// Why a generation that is draining or done does not restart: it handed over (ask the
    /// successor), or it is stopping.
    fn not_here(&self) -> RestartError {
        match self.state {
            State::Draining {
                reason: StopReason::Restarted { successor },
                ..
            } => RestartError::HandedOver {
                generation: self.me.generation,
                pid: self.me.pid,
                successor,
            },
            _ => RestartError::Stopping {
                generation: self.me.generation,
                pid: self.me.pid,
            },
        }
    }

    /// Starts a restart for `waiting`: the standby woken when there is one, else a process.
    fn begin_restart(&mut self, waiting: Vec<ReplyId>, actions: &mut Vec<Action>) {
        self.waiting = waiting;
        actions.push(Action::NotifyReloading);
        match self.standby {
            Standby::Waiting { pid } => {
                self.standby = Standby::None;
                self.set_pending(Pending::Waking { pid });
                actions.push(Action::WakeStandby { pid });
            }
            _ => {
                self.set_pending(Pending::Spawning);
                actions.push(Action::Spawn);
            }
        }
    }

    fn start_standby(&mut self, actions: &mut Vec<Action>) {
        if self.standby == Standby::None && self.state == (State::Serving { pending: None }) {
            self.standby = Standby::Starting;
            actions.push(Action::StartStandby);
        }
    }

    /// The restart under way failed (`why`): its requests are answered; the requests queued
    /// behind it get a restart of their own; otherwise a standby is started again.
    fn restart_failed(&mut self, why: String, actions: &mut Vec<Action>) {
        self.state = State::Serving { pending: None };
        actions.push(Action::StillServing { why: why.clone() });
        let result = Err(RestartError::Failed {
            generation: self.me.generation,
            pid: self.me.pid,
            reason: why,
        });
        for to in std::mem::take(&mut self.waiting) {
            actions.push(Action::Reply {
                to,
                result: result.clone(),
            });
        }
        if self.queued.is_empty() {
            self.start_standby(actions);
        } else {
            let queued = std::mem::take(&mut self.queued);
            self.begin_restart(queued, actions);
        }
    }

    fn hand_over(&mut self, successor: u32, now: Instant, actions: &mut Vec<Action>) {
        let reason = StopReason::Restarted { successor };
        let deadline = now + self.timeouts.stop;
        self.state = State::Draining {
            reason,
            deadline,
            accepting: true,
            stop_asked: false,
            successor: Some(successor),
        };
        actions.push(Action::HandOver { successor });
        self.begin_drain(reason, deadline, actions);
        let ok = Ok(Successor {
            pid: successor,
            generation: self.me.generation + 1,
        });
        for to in std::mem::take(&mut self.waiting) {
            actions.push(Action::Reply {
                to,
                result: ok.clone(),
            });
        }
        // Asked after this restart began: theirs is the successor's to run.
        let handed = Err(self.not_here());
        for to in std::mem::take(&mut self.queued) {
            actions.push(Action::Reply {
                to,
                result: handed.clone(),
            });
        }
    }

    fn begin_drain(&mut self, reason: StopReason, deadline: Instant, actions: &mut Vec<Action>) {
        if let Standby::Waiting { pid } = self.standby {
            actions.push(Action::LetGoStandby {
                pid,
                why: "this generation is draining".into(),
            });
        }
        if self.standby != Standby::Off {
            self.standby = Standby::None;
        }
        actions.push(Action::BeginDrain { reason, deadline });
    }

    fn stop_requested(
        &mut self,
        cause: StopCause,
        sender: Option<u32>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        // Under a supervisor, whose own stop requests are the ones that count (and this
        // process's own: a program that turns its SIGHUP into a SIGTERM to itself).
        let outside = !stop_counts(self.me.supervisor, self.me.pid, sender);
        match self.state {
            State::Starting | State::Serving { .. } => {
                match self.pending() {
                    // Go grace's child says "ready" with SIGTERM to its parent.
                    Some(Pending::Started { pid, .. }) if sender == Some(pid) => {
                        return self.hand_over(pid, now, actions);
                    }
                    Some(Pending::Started { pid, .. }) => actions.push(Action::AbandonChild {
                        pid,
                        failure: ChildFailure::Stopping { cause },
                    }),
                    // A wake or a spawn under way: what it reports is not wanted any more
                    // (`Unwanted`, below).
                    _ => {}
                }
                let reason = StopReason::Shutdown;
                let deadline = now + self.timeouts.stop;
                self.state = State::Draining {
                    reason,
                    deadline,
                    accepting: true,
                    // A drain that a stop began has had its first stop request (the
                    // supervisor's own is still to come when this one came from outside).
                    stop_asked: !outside,
                    successor: None,
                };
                self.begin_drain(reason, deadline, actions);
                self.held_signal = false;
                let stopping = Err(self.not_here());
                let mut all = std::mem::take(&mut self.waiting);
                all.append(&mut self.queued);
                for to in all {
                    actions.push(Action::Reply {
                        to,
                        result: stopping.clone(),
                    });
                }
            }
            State::Draining {
                successor: Some(s), ..
            } if sender == Some(s) => actions.push(Action::Note(Note::FromSuccessor { cause })),
            State::Draining { .. } if outside => {
                actions.push(Action::Note(Note::NotFromSupervisor { cause, sender }))
            }
            State::Draining {
                reason,
                deadline,
                accepting,
                stop_asked: false,
                successor,
            } => {
                self.state = State::Draining {
                    reason,
                    deadline,
                    accepting,
                    stop_asked: true,
                    successor,
                };
                actions.push(Action::Note(Note::KeepDraining { cause }));
            }
            State::Draining {
                reason, successor, ..
            } => {
                self.state = State::Finished;
                if let Some(successor) = successor {
                    actions.push(Action::HandFinalState { successor });
                }
                actions.push(Action::Finish { reason, forced: true });
            }
            State::Finished => actions.push(Action::LateStop { cause }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        ready: Duration::from_secs(30),
        stop: Duration::from_secs(60),
    };
    const ME: Me = Me {
        generation: 1,
        pid: 100,
        supervisor: None,
    };

    /// A ready generation, keeping a standby or not (none started yet).
    fn serving(standby: bool) -> Machine {
        let mut m = Machine::new(ME, T, standby);
        m.handle(Event::Ready, Instant::now());
        if standby {
            assert_eq!(m.standby, Standby::Starting);
        }
        m
    }

    fn restart(reply: Option<ReplyId>) -> Event {
        Event::RestartRequested { reply }
    }

    fn term(sender: Option<u32>) -> Event {
        Event::StopRequested {
            cause: StopCause::Sigterm,
            sender,
        }
    }

    fn run(m: &mut Machine, events: Vec<Event>, now: Instant) -> Vec<Action> {
        events.into_iter().flat_map(|e| m.handle(e, now)).collect()
    }

    /// A generation whose restart to `pid` is under way, for request 1.
    fn restarting(pid: u32, now: Instant) -> Machine {
        let mut m = serving(false);
        run(&mut m, vec![restart(Some(1)), Event::Spawned { pid }], now);
        m
    }

    fn replies(actions: &[Action]) -> Vec<(ReplyId, RestartResult)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { to, result } => Some((*to, result.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn restart_spawns_then_waits_with_the_ready_deadline() {
        let now = Instant::now();
        let mut m = serving(false);
        assert_eq!(
            m.handle(restart(None), now),
            vec![Action::NotifyReloading, Action::Spawn]
        );
        let a = m.handle(Event::Spawned { pid: 7 }, now);
        assert_eq!(
            m.state,
            State::Serving {
                pending: Some(Pending::Started {
                    pid: 7,
                    deadline: now + T.ready
                })
            }
        );
        assert_eq!(
            a,
            vec![Action::RestartStarted {
                pid: 7,
                timeout: T.ready,
                woken: false
            }]
        );
    }

    #[test]
    fn a_restart_asked_before_ready_waits_for_it() {
        let now = Instant::now();
        let mut m = Machine::new(ME, T, false);
        assert_eq!(
            m.handle(restart(Some(1)), now),
            vec![Action::Note(Note::HeldUntilReady)]
        );
        assert_eq!(
            m.handle(restart(None), now),
            vec![Action::Note(Note::HeldUntilReady)]
        );
        assert_eq!(m.state, State::Starting);
        assert_eq!(
            m.handle(Event::Ready, now),
            vec![Action::NotifyReloading, Action::Spawn]
        );
        m.handle(Event::Spawned { pid: 7 }, now);
        let a = m.handle(Event::ChildReady, now);
        assert_eq!(replies(&a).len(), 1, "the held request is the restart's");
    }

    #[test]
    fn signals_during_a_restart_are_coalesced_requests_with_a_reply_are_queued() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        let a = run(&mut m, vec![restart(None); 3], now);
        assert_eq!(a, vec![Action::Note(Note::Coalesced { pending: Some(7) }); 3]);
        assert_eq!(m.handle(restart(Some(2)), now), vec![Action::Note(Note::Queued)]);
        // The restart succeeds: request 1 gets the successor, request 2 (asked after it
        // began) is sent to the successor.
        let a = m.handle(Event::ChildReady, now);
        assert_eq!(
            replies(&a),
            vec![
                (
                    1,
                    Ok(Successor {
                        pid: 7,
                        generation: 2
                    })
                ),
                (
                    2,
                    Err(RestartError::HandedOver {
                        generation: 1,
                        pid: 100,
                        successor: 7
                    })
                )
            ]
        );
    }

    #[test]
    fn a_request_asked_again_after_a_hand_over_joins_the_restart_under_way() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        assert!(m.handle(Event::RejoinRequested { reply: 2 }, now).is_empty());
        let a = m.handle(Event::ChildReady, now);
        let ok = Ok(Successor {
            pid: 7,
            generation: 2,
        });
        assert_eq!(
            replies(&a),
            vec![(1, ok.clone()), (2, ok)],
            "one restart for both"
        );
        // With none under way, it begins one.
        let mut m = serving(false);
        assert_eq!(
            m.handle(Event::RejoinRequested { reply: 3 }, now),
            vec![Action::NotifyReloading, Action::Spawn]
        );
    }

    #[test]
    fn a_request_queued_behind_a_failed_restart_gets_its_own() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        m.handle(restart(Some(2)), now);
        m.handle(Event::ChildGone, now);
        let a = m.handle(
            Event::Abandoned {
                pid: 7,
                why: "gone".into(),
            },
            now,
        );
        assert!(matches!(
            &replies(&a)[..],
            [(1, Err(RestartError::Failed { .. }))]
        ));
        assert!(a.ends_with(&[Action::NotifyReloading, Action::Spawn]), "{a:?}");
        m.handle(Event::Spawned { pid: 8 }, now);
        let a = m.handle(Event::ChildReady, now);
        assert_eq!(
            replies(&a),
            vec![(
                2,
                Ok(Successor {
                    pid: 8,
                    generation: 2
                })
            )]
        );
    }

    #[test]
    fn ready_child_takes_over_the_drain_starts_then_the_reply() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        let a = m.handle(Event::ChildReady, now);
        let reason = StopReason::Restarted { successor: 7 };
        assert_eq!(
            a,
            vec![
                Action::HandOver { successor: 7 },
                Action::BeginDrain {
                    reason,
                    deadline: now + T.stop
                },
                // Answered once this generation has stopped accepting.
                Action::Reply {
                    to: 1,
                    result: Ok(Successor {
                        pid: 7,
                        generation: 2
                    })
                },
            ]
        );
        assert_eq!(
            m.state,
            State::Draining {
                reason,
                deadline: now + T.stop,
                accepting: true,
                stop_asked: false,
                successor: Some(7)
            }
        );
        // Asked afterwards: sent to the successor.
        assert_eq!(
            replies(&m.handle(restart(Some(5)), now)),
            vec![(
                5,
                Err(RestartError::HandedOver {
                    generation: 1,
                    pid: 100,
                    successor: 7
                })
            )]
        );
    }

    #[test]
    fn the_standby_is_started_once_ready_woken_by_a_restart_and_let_go_when_unusable() {
        let now = Instant::now();
        let mut m = serving(true);
        m.handle(Event::StandbyStarted { pid: 50 }, now);
        assert_eq!(m.standby, Standby::Waiting { pid: 50 });
        assert_eq!(
            m.handle(restart(Some(1)), now),
            vec![Action::NotifyReloading, Action::WakeStandby { pid: 50 }]
        );
        assert_eq!(
            m.handle(Event::StandbyWoken { pid: 50 }, now),
            vec![Action::RestartStarted {
                pid: 50,
                timeout: T.ready,
                woken: true
            }]
        );
        // Its restart failed: a new standby.
        m.handle(Event::ChildGone, now);
        let a = m.handle(
            Event::Abandoned {
                pid: 50,
                why: "gone".into(),
            },
            now,
        );
        assert!(a.ends_with(&[Action::StartStandby]), "{a:?}");
        m.handle(Event::StandbyStarted { pid: 51 }, now);
        m.handle(restart(None), now);
        // Unusable (the program changed): let go, and the same restart spawns.
        let a = m.handle(
            Event::StandbyUnusable {
                pid: 51,
                why: "the program file has changed".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![
                Action::LetGoStandby {
                    pid: 51,
                    why: "the program file has changed".into()
                },
                Action::Spawn
            ]
        );
    }

    #[test]
    fn a_standby_that_dies_is_let_go_not_started_again_and_a_drain_lets_one_go() {
        let now = Instant::now();
        let mut m = serving(true);
        m.handle(Event::StandbyStarted { pid: 50 }, now);
        let a = m.handle(
            Event::StandbyGone {
                pid: 50,
                why: "it exited".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::LetGoStandby {
                pid: 50,
                why: "it exited".into()
            }]
        );
        assert_eq!(m.standby, Standby::None);
        assert_eq!(
            m.handle(restart(None), now),
            vec![Action::NotifyReloading, Action::Spawn]
        );
        let mut m = serving(true);
        m.handle(Event::StandbyStarted { pid: 50 }, now);
        let a = m.handle(term(None), now);
        assert_eq!(
            a[0],
            Action::LetGoStandby {
                pid: 50,
                why: "this generation is draining".into()
            }
        );
    }

    #[test]
    fn sigterm_from_the_pending_child_is_go_graces_ready() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        assert_eq!(m.handle(term(Some(7)), now)[0], Action::HandOver { successor: 7 });
    }

    #[test]
    fn sigterm_from_anyone_else_during_a_restart_kills_the_child_answers_and_stops() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        let a = m.handle(term(Some(1)), now);
        assert_eq!(
            a,
            vec![
                Action::AbandonChild {
                    pid: 7,
                    failure: ChildFailure::Stopping {
                        cause: StopCause::Sigterm
                    }
                },
                Action::BeginDrain {
                    reason: StopReason::Shutdown,
                    deadline: now + T.stop
                },
                Action::Reply {
                    to: 1,
                    result: Err(RestartError::Stopping {
                        generation: 1,
                        pid: 100
                    })
                }
            ]
        );
        assert!(matches!(m.state, State::Draining { stop_asked: true, .. }));
    }

    #[test]
    fn failed_children_are_abandoned_and_serving_goes_on() {
        let now = Instant::now();
        for (event, failure) in [
            (Event::ChildGone, ChildFailure::Gone),
            (Event::ReadyTimeout, ChildFailure::NotReady { timeout: T.ready }),
        ] {
            let mut m = restarting(7, now);
            assert_eq!(
                m.handle(event, now),
                vec![Action::AbandonChild { pid: 7, failure }]
            );
            let why = "generation 2 (pid 7) exited before it was ready (exit status: 3)";
            let a = m.handle(
                Event::Abandoned {
                    pid: 7,
                    why: why.into(),
                },
                now,
            );
            assert_eq!(m.state, State::Serving { pending: None });
            assert_eq!(a[0], Action::StillServing { why: why.into() });
            assert_eq!(
                replies(&a),
                vec![(
                    1,
                    Err(RestartError::Failed {
                        generation: 1,
                        pid: 100,
                        reason: why.into()
                    })
                )]
            );
            // ... and a later restart tries again.
            assert_eq!(
                m.handle(restart(None), now),
                vec![Action::NotifyReloading, Action::Spawn]
            );
        }
    }

    #[test]
    fn a_spawn_failure_is_reported_and_serving_goes_on() {
        let now = Instant::now();
        let mut m = serving(false);
        let a = run(
            &mut m,
            vec![
                restart(Some(3)),
                Event::SpawnFailed {
                    error: "no such file".into(),
                },
            ],
            now,
        );
        assert_eq!(m.state, State::Serving { pending: None });
        assert!(a.contains(&Action::SpawnFailed {
            error: "no such file".into()
        }));
        assert_eq!(
            replies(&a),
            vec![(
                3,
                Err(RestartError::Failed {
                    generation: 1,
                    pid: 100,
                    reason: "no such file".into()
                })
            )]
        );
    }

    #[test]
    fn a_stop_drains_and_a_second_stop_ends_it_at_once() {
        let now = Instant::now();
        let mut m = serving(false);
        assert_eq!(
            m.handle(term(None), now),
            vec![Action::BeginDrain {
                reason: StopReason::Shutdown,
                deadline: now + T.stop
            }]
        );
        assert_eq!(
            m.handle(term(None), now),
            vec![Action::Finish {
                reason: StopReason::Shutdown,
                forced: true
            }]
        );
        assert_eq!(m.state, State::Finished);
    }

    #[test]
    fn a_stop_while_draining_after_a_restart_keeps_draining_once() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        m.handle(Event::ChildReady, now);
        assert_eq!(
            m.handle(term(Some(1)), now),
            vec![Action::Note(Note::KeepDraining {
                cause: StopCause::Sigterm
            })]
        );
        assert_eq!(
            m.handle(term(Some(1)), now),
            vec![
                Action::HandFinalState { successor: 7 },
                Action::Finish {
                    reason: StopReason::Restarted { successor: 7 },
                    forced: true
                }
            ]
        );
    }

    #[test]
    fn the_final_state_goes_to_a_live_successor_once_the_drain_ends() {
        let now = Instant::now();
        for end in [Event::Drained, Event::DrainDeadline] {
            let mut m = restarting(7, now);
            m.handle(Event::ChildReady, now);
            m.handle(Event::StoppedAccepting, now);
            let a = m.handle(end.clone(), now);
            assert_eq!(
                a.first(),
                Some(&Action::HandFinalState { successor: 7 }),
                "{end:?}"
            );
            assert!(matches!(a.get(1), Some(Action::Finish { .. })), "{a:?}");
            // A successor that exited first gets nothing: nobody is there to read it.
            let mut m = restarting(7, now);
            m.handle(Event::ChildReady, now);
            m.handle(
                Event::SuccessorExited {
                    pid: 7,
                    status: "killed".into(),
                },
                now,
            );
            let a = m.handle(end, now);
            assert!(
                !a.iter().any(|a| matches!(a, Action::HandFinalState { .. })),
                "{a:?}"
            );
        }
    }

    #[test]
    fn signals_from_the_successor_are_ignored() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        m.handle(Event::ChildReady, now);
        let before = m.clone();
        let a = run(&mut m, vec![term(Some(7)), term(Some(7))], now);
        assert_eq!(m, before);
        assert_eq!(
            a,
            vec![
                Action::Note(Note::FromSuccessor {
                    cause: StopCause::Sigterm
                });
                2
            ]
        );
    }

    #[test]
    fn a_restart_while_stopping_is_answered_stopping() {
        let now = Instant::now();
        let mut m = serving(false);
        m.handle(term(None), now);
        assert_eq!(
            m.handle(restart(None), now),
            vec![Action::Note(Note::RestartWhileStopping)]
        );
        assert_eq!(
            replies(&m.handle(restart(Some(4)), now)),
            vec![(
                4,
                Err(RestartError::Stopping {
                    generation: 1,
                    pid: 100
                })
            )]
        );
    }

    #[test]
    fn the_drain_ends_when_connections_end_or_at_the_deadline() {
        let now = Instant::now();
        let mut draining = serving(false);
        draining.handle(term(None), now);
        let mut m = draining.clone();
        let a = run(&mut m, vec![Event::StoppedAccepting, Event::Drained], now);
        assert_eq!(m.state, State::Finished);
        assert_eq!(
            a,
            vec![
                Action::Note(Note::StoppedAccepting),
                Action::Finish {
                    reason: StopReason::Shutdown,
                    forced: false
                }
            ]
        );
        let mut m = draining;
        assert_eq!(
            m.handle(Event::DrainDeadline, now),
            vec![Action::Finish {
                reason: StopReason::Shutdown,
                forced: true
            }]
        );
    }

    #[test]
    fn the_successor_exiting_while_we_drain_is_noted_once() {
        let now = Instant::now();
        let mut m = restarting(7, now);
        m.handle(Event::ChildReady, now);
        let exited = Event::SuccessorExited {
            pid: 7,
            status: "signal: 9 (SIGKILL)".into(),
        };
        let a = run(&mut m, vec![exited.clone(), exited], now);
        assert!(matches!(m.state, State::Draining { successor: None, .. }));
        assert_eq!(a.len(), 1);
        // With the successor gone, a SIGTERM from its old pid is an ordinary stop request.
        assert_eq!(
            m.handle(term(Some(7)), now),
            vec![Action::Note(Note::KeepDraining {
                cause: StopCause::Sigterm
            })]
        );
    }

    #[test]
    fn a_stop_after_the_drain_is_a_late_stop() {
        let now = Instant::now();
        let mut m = serving(false);
        let a = run(&mut m, vec![term(None), Event::Drained, term(None)], now);
        assert_eq!(
            a.last(),
            Some(&Action::LateStop {
                cause: StopCause::Sigterm
            })
        );
    }

    #[test]
    fn stale_events_change_nothing() {
        let now = Instant::now();
        let mut stopping = serving(false);
        stopping.handle(term(None), now);
        let mut finished = stopping.clone();
        finished.handle(Event::Drained, now);
        for m in [serving(false), stopping, finished, Machine::new(ME, T, false)] {
            // A process nobody waits for any more goes.
            for event in [Event::Spawned { pid: 9 }, Event::StandbyWoken { pid: 9 }] {
                let mut after = m.clone();
                assert_eq!(
                    after.handle(event, now),
                    vec![Action::AbandonChild {
                        pid: 9,
                        failure: ChildFailure::Unwanted
                    }]
                );
                assert_eq!(after, m);
            }
            for event in [
                Event::ChildReady,
                Event::ChildGone,
                Event::ReadyTimeout,
                Event::SpawnFailed { error: "x".into() },
                Event::Abandoned {
                    pid: 9,
                    why: "x".into(),
                },
                Event::StandbyGone {
                    pid: 9,
                    why: "x".into(),
                },
                Event::SuccessorExited {
                    pid: 9,
                    status: String::new(),
                },
            ] {
                let mut after = m.clone();
                assert_eq!(after.handle(event.clone(), now), Vec::new(), "{event:?} in {m:?}");
                assert_eq!(after, m);
            }
        }
        // Drain events outside a drain.
        for event in [Event::StoppedAccepting, Event::Drained, Event::DrainDeadline] {
            let mut m = serving(false);
            assert_eq!(m.handle(event, now), Vec::new());
            assert_eq!(m, serving(false));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        /// What the world does next; the simulation turns it into an event that can happen.
        #[derive(Debug, Clone)]
        enum Step {
            Ready,
            Restart(bool),
            Rejoin,
            Stop(u8),
            /// The driver's answer to the pending spawn or wake, or to a standby start.
            Answer(bool),
            ChildReady,
            ChildGone,
            ReadyTimeout,
            StandbyGone,
            StoppedAccepting,
            Drained,
            DrainDeadline,
            SuccessorExited,
        }

        /// The supervisor's pid, when the generation has one; another process's.
        const SUPERVISOR: u32 = 7;
        const SOMEONE: u32 = 9;

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                Just(Step::Ready),
                any::<bool>().prop_map(Step::Restart),
                Just(Step::Rejoin),
                (0u8..6).prop_map(Step::Stop),
                any::<bool>().prop_map(Step::Answer),
                Just(Step::ChildReady),
                Just(Step::ChildGone),
                Just(Step::ReadyTimeout),
                Just(Step::StandbyGone),
                Just(Step::StoppedAccepting),
                Just(Step::Drained),
                Just(Step::DrainDeadline),
                Just(Step::SuccessorExited),
            ]
        }

        /// The processes and requests of a simulated world, checked against the machine.
        #[derive(Default)]
        struct World {
            next_pid: u32,
            next_reply: ReplyId,
            /// Driver work asked for and not yet answered.
            spawn_asked: bool,
            wake_asked: Option<u32>,
            standby_asked: bool,
            abandon_asked: Option<u32>,
            /// Every child started, and whether it was handed over, abandoned or let go.
            children: BTreeMap<u32, &'static str>,
            standbys_woken: BTreeSet<u32>,
            asked: BTreeSet<ReplyId>,
            answered: BTreeMap<ReplyId, usize>,
            handovers: usize,
            finished: usize,
            accepting_stopped_at_success: bool,
        }

        impl World {
            fn perform(&mut self, actions: &[Action]) {
                let mut drain_begun = false;
                for a in actions {
                    match a {
                        Action::Spawn => self.spawn_asked = true,
                        Action::WakeStandby { pid } => {
                            assert!(self.standbys_woken.insert(*pid), "standby {pid} woken twice");
                            self.wake_asked = Some(*pid);
                        }
                        Action::StartStandby => self.standby_asked = true,
                        Action::LetGoStandby { pid, .. } => {
                            assert_eq!(
                                self.children.insert(*pid, "let go"),
                                Some("started"),
                                "let go {pid}"
                            );
                        }
                        Action::AbandonChild { pid, .. } => {
                            assert_eq!(self.children.insert(*pid, "abandoned"), Some("started"));
                            self.abandon_asked = Some(*pid);
                        }
                        Action::HandOver { successor } => {
                            self.handovers += 1;
                            assert_eq!(self.children.insert(*successor, "successor"), Some("started"));
                        }
                        Action::BeginDrain { .. } => drain_begun = true,
                        Action::Reply { to, result } => {
                            *self.answered.entry(*to).or_default() += 1;
                            if result.is_ok() {
                                // A success is told only once this generation stopped accepting.
                                self.accepting_stopped_at_success &= drain_begun;
                            }
                        }
                        Action::Finish { .. } => self.finished += 1,
                        _ => {}
                    }
                }
            }

            fn start(&mut self) -> u32 {
                self.next_pid += 1;
                self.children.insert(self.next_pid, "started");
                self.next_pid
            }
        }

        fn apply(m: &mut Machine, w: &mut World, step: Step, now: Instant) {
            let event = match step {
                Step::Ready => Event::Ready,
                Step::Restart(with_reply) => Event::RestartRequested {
                    reply: with_reply.then(|| {
                        w.next_reply += 1;
                        w.asked.insert(w.next_reply);
                        w.next_reply
                    }),
                },
                Step::Rejoin => {
                    w.next_reply += 1;
                    w.asked.insert(w.next_reply);
                    Event::RejoinRequested { reply: w.next_reply }
                }
                Step::Stop(from) => {
                    let sender = match (from, m.pending()) {
                        (1, Some(Pending::Started { pid, .. })) => Some(pid),
                        (2, _) => match m.state {
                            State::Draining { successor, .. } => successor,
                            _ => None,
                        },
                        // The supervisor (when there is one), this process, or another.
                        (3, _) => Some(SUPERVISOR),
                        (4, _) => Some(SOMEONE),
                        (5, _) => Some(m.me.pid),
                        _ => None,
                    };
                    let stop = Event::StopRequested {
                        cause: StopCause::Sigterm,
                        sender,
                    };
                    if let Some(supervisor) = m.me.supervisor
                        && sender != Some(supervisor)
                        && sender != Some(m.me.pid)
                        && !matches!(m.pending(), Some(Pending::Started { pid, .. }) if sender == Some(pid))
                    {
                        // A stop from outside the supervisor (it forwards the same one) never
                        // ends a drain, and begins one as a first stop would.
                        let serving = matches!(m.state, State::Starting | State::Serving { .. });
                        let actions = m.handle(stop, now);
                        assert!(
                            !actions.iter().any(|a| matches!(a, Action::Finish { .. })),
                            "a stop from outside the supervisor ended the drain: {actions:?}"
                        );
                        assert!(
                            !serving || actions.iter().any(|a| matches!(a, Action::BeginDrain { .. })),
                            "a stop from outside the supervisor did not begin the drain: {actions:?}"
                        );
                        w.perform(&actions);
                        return;
                    }
                    stop
                }
                Step::Answer(ok) => {
                    if let Some(pid) = w.abandon_asked.take() {
                        Event::Abandoned {
                            pid,
                            why: "gone".into(),
                        }
                    } else if let Some(pid) = w.wake_asked.take() {
                        if ok {
                            Event::StandbyWoken { pid }
                        } else {
                            Event::StandbyUnusable {
                                pid,
                                why: "changed".into(),
                            }
                        }
                    } else if std::mem::take(&mut w.spawn_asked) {
                        if ok {
                            Event::Spawned { pid: w.start() }
                        } else {
                            Event::SpawnFailed { error: "no".into() }
                        }
                    } else if std::mem::take(&mut w.standby_asked) {
                        if ok {
                            Event::StandbyStarted { pid: w.start() }
                        } else {
                            Event::StandbyStartFailed { error: "no".into() }
                        }
                    } else {
                        return;
                    }
                }
                Step::ChildReady => Event::ChildReady,
                Step::ChildGone => Event::ChildGone,
                Step::ReadyTimeout => Event::ReadyTimeout,
                Step::StandbyGone => match m.standby {
                    Standby::Waiting { pid } => Event::StandbyGone {
                        pid,
                        why: "exited".into(),
                    },
                    _ => return,
                },
                Step::StoppedAccepting => Event::StoppedAccepting,
                Step::Drained => Event::Drained,
                Step::DrainDeadline => Event::DrainDeadline,
                Step::SuccessorExited => match m.state {
                    State::Draining {
                        successor: Some(pid), ..
                    } => Event::SuccessorExited {
                        pid,
                        status: "exit 0".into(),
                    },
                    _ => return,
                },
            };
            let actions = m.handle(event, now);
            w.perform(&actions);
            // Invariants after every step.
            assert!(w.handovers <= 1, "handed over twice");
            assert!(w.finished <= 1, "finished twice");
            assert!(w.answered.values().all(|&n| n == 1), "a request answered twice");
            assert!(
                w.accepting_stopped_at_success,
                "a success told before the drain began"
            );
            if let Standby::Waiting { pid } = m.standby {
                assert_eq!(
                    w.children.get(&pid),
                    Some(&"started"),
                    "a waiting standby is live"
                );
                assert!(
                    matches!(m.state, State::Serving { .. }),
                    "a standby only while serving"
                );
            }
        }

        proptest! {
            #[test]
            fn any_history_keeps_the_invariants_and_a_stop_ends_everything(
                standby in any::<bool>(),
                supervised in any::<bool>(),
                steps in proptest::collection::vec(step(), 0..80),
            ) {
                let now = Instant::now();
                let me = Me { supervisor: supervised.then_some(SUPERVISOR), ..ME };
                let mut m = Machine::new(me, T, standby);
                let mut w = World { accepting_stopped_at_success: true, ..World::default() };
                for s in steps {
                    apply(&mut m, &mut w, s, now);
                }
                // Then a stop; the driver answers what it was asked; the drain ends by its
                // deadline.
                apply(&mut m, &mut w, Step::Stop(0), now);
                for _ in 0..4 {
                    apply(&mut m, &mut w, Step::Answer(true), now);
                }
                apply(&mut m, &mut w, Step::DrainDeadline, now);
                prop_assert_eq!(m.state, State::Finished, "a stop reaches Finished by its deadline");
                prop_assert_eq!(w.finished, 1);
                for r in &w.asked {
                    prop_assert_eq!(w.answered.get(r), Some(&1), "request {} answered exactly once", r);
                }
                // Every child started was handed over, abandoned or let go.
                for (pid, fate) in &w.children {
                    prop_assert!(*fate != "started", "child {} left behind", pid);
                }
            }
        }
    }
}
