//! The restart lifecycle's decisions, with no I/O: a generation's [`State`], the [`Event`]s
//! that reach it, and [`transition`], which says what the new state is and which [`Action`]s
//! the driver must perform. Everything here is unit-tested without processes or sockets.

use std::time::{Duration, Instant};

use super::StopReason;

/// The two timeouts the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// How long a new generation may take to report ready.
    pub ready: Duration,
    /// How long a stopping generation may drain.
    pub stop: Duration,
}

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

/// The next generation while it starts: being spawned, or running and not yet ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// `Action::Spawn` was issued; `Spawned` or `SpawnFailed` comes next.
    Spawning,
    /// Running with this pid; killed if not ready by `deadline`.
    Started { pid: u32, deadline: Instant },
}

/// Where a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
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

impl State {
    /// A generation that has just started.
    pub(crate) const START: State = State::Serving { pending: None };
}

/// Something that happened to a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `SIGUSR2` or `Generation::restart`.
    RestartRequested,
    /// `SIGTERM`, `SIGINT` or `Generation::shutdown`; `sender` is the signalling pid when the
    /// kernel reports one.
    StopRequested { cause: StopCause, sender: Option<u32> },
    /// The next generation was started with this pid.
    Spawned { pid: u32 },
    /// The next generation could not be started.
    SpawnFailed { error: String },
    /// The next generation wrote its readiness byte.
    ChildReady,
    /// The next generation closed its readiness pipe, or exited, before it was ready.
    ChildGone,
    /// The ready timeout passed.
    ReadyTimeout,
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
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell systemd a reload began.
    NotifyReloading,
    /// Start the next generation; feed back `Spawned` or `SpawnFailed`.
    Spawn,
    /// A restart is under way: log it.
    RestartStarted { pid: u32, timeout: Duration },
    /// The next generation failed: reap it (killing it, with its process group, if it still
    /// runs), report the failure, and tell systemd this generation still serves.
    AbandonChild { pid: u32, failure: ChildFailure },
    /// The restart failed before a process existed.
    SpawnFailed { error: String },
    /// The next generation is ready and takes over: keep it as the successor (its channel
    /// takes the live connections handed at the drain).
    HandOver { successor: u32 },
    /// Answer the restart requests under way: the successor serves. After `BeginDrain`, so
    /// that whoever hears the answer and asks again (a deploy script's next reload) reaches
    /// the successor, never this generation's listeners.
    RestartSucceeded { successor: u32 },
    /// Stop accepting, close this process's copies of the sockets, start the drain clock.
    BeginDrain { reason: StopReason, deadline: Instant },
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
    /// A restart was asked for while one is under way.
    Coalesced { pending: Option<u32> },
    /// A restart was asked for while stopping.
    RestartWhileStopping,
    /// The successor signalled us (systemd signals every process of a service): ignored.
    FromSuccessor { cause: StopCause },
    /// A first stop request during a drain after a restart: the drain goes on.
    KeepDraining { cause: StopCause },
    /// Every listener is gone; connections may still be open.
    StoppedAccepting,
    /// The successor exited while we were still draining.
    SuccessorExited { pid: u32, status: String },
}

/// The lifecycle's one decision function: given where a generation is and what happened,
/// where it is now and what to do.
pub(crate) fn transition(state: State, event: Event, now: Instant, t: &Timeouts) -> (State, Vec<Action>) {
    use Action as A;
    use Event as E;
    match (state, event) {
        // ---- Serving: maybe with a next generation starting.
        (State::Serving { pending: None }, E::RestartRequested) => (
            State::Serving {
                pending: Some(Pending::Spawning),
            },
            vec![A::NotifyReloading, A::Spawn],
        ),
        (State::Serving { pending: Some(p) }, E::RestartRequested) => {
            let pid = match p {
                Pending::Started { pid, .. } => Some(pid),
                Pending::Spawning => None,
            };
            (state, vec![A::Note(Note::Coalesced { pending: pid })])
        }
        (
            State::Serving {
                pending: Some(Pending::Spawning),
            },
            E::Spawned { pid },
        ) => (
            State::Serving {
                pending: Some(Pending::Started {
                    pid,
                    deadline: now + t.ready,
                }),
            },
            vec![A::RestartStarted {
                pid,
                timeout: t.ready,
            }],
        ),
        (
            State::Serving {
                pending: Some(Pending::Spawning),
            },
            E::SpawnFailed { error },
        ) => (State::START, vec![A::SpawnFailed { error }]),
        (
            State::Serving {
                pending: Some(Pending::Started { pid, .. }),
            },
            E::ChildReady,
        ) => hand_over(pid, now, t),
        (
            State::Serving {
                pending: Some(Pending::Started { pid, .. }),
            },
            E::ChildGone,
        ) => (
            State::START,
            vec![A::AbandonChild {
                pid,
                failure: ChildFailure::Gone,
            }],
        ),
        (
            State::Serving {
                pending: Some(Pending::Started { pid, .. }),
            },
            E::ReadyTimeout,
        ) => (
            State::START,
            vec![A::AbandonChild {
                pid,
                failure: ChildFailure::NotReady { timeout: t.ready },
            }],
        ),
        (State::Serving { pending }, E::StopRequested { cause, sender }) => match pending {
            // Go grace's child says "ready" with SIGTERM to its parent.
            Some(Pending::Started { pid, .. }) if sender == Some(pid) => hand_over(pid, now, t),
            Some(Pending::Started { pid, .. }) => {
                let (state, mut actions) = stop(now, t);
                actions.insert(
                    0,
                    A::AbandonChild {
                        pid,
                        failure: ChildFailure::Stopping { cause },
                    },
                );
                (state, actions)
            }
            _ => stop(now, t),
        },

        // ---- Draining.
        (State::Draining { .. }, E::RestartRequested) => (state, vec![A::Note(Note::RestartWhileStopping)]),
        (
            State::Draining {
                successor: Some(s), ..
            },
            E::StopRequested {
                cause,
                sender: Some(from),
            },
        ) if from == s => (state, vec![A::Note(Note::FromSuccessor { cause })]),
        (
            State::Draining {
                reason,
                deadline,
                accepting,
                stop_asked: false,
                successor,
            },
            E::StopRequested { cause, .. },
        ) => (
            State::Draining {
                reason,
                deadline,
                accepting,
                stop_asked: true,
                successor,
            },
            vec![A::Note(Note::KeepDraining { cause })],
        ),
        (
            State::Draining {
                reason,
                stop_asked: true,
                ..
            },
            E::StopRequested { .. },
        ) => (State::Finished, vec![A::Finish { reason, forced: true }]),
        (
            State::Draining {
                reason,
                deadline,
                stop_asked,
                successor,
                accepting: true,
            },
            E::StoppedAccepting,
        ) => (
            State::Draining {
                reason,
                deadline,
                accepting: false,
                stop_asked,
                successor,
            },
            vec![A::Note(Note::StoppedAccepting)],
        ),
        (State::Draining { reason, .. }, E::Drained) => (
            State::Finished,
            vec![A::Finish {
                reason,
                forced: false,
            }],
        ),
        (State::Draining { reason, .. }, E::DrainDeadline) => {
            (State::Finished, vec![A::Finish { reason, forced: true }])
        }
        (
            State::Draining {
                reason,
                deadline,
                accepting,
                stop_asked,
                successor: Some(s),
            },
            E::SuccessorExited { pid, status },
        ) if pid == s => (
            State::Draining {
                reason,
                deadline,
                accepting,
                stop_asked,
                successor: None,
            },
            vec![A::Note(Note::SuccessorExited { pid, status })],
        ),

        // ---- Finished: only a stop matters (the application outlived its drain).
        (State::Finished, E::StopRequested { cause, .. }) => (State::Finished, vec![A::LateStop { cause }]),

        // Anything else cannot change anything: a stale event from a child already given up
        // on, a timer that fired after its state ended.
        (state, _) => (state, Vec::new()),
    }
}

fn hand_over(successor: u32, now: Instant, t: &Timeouts) -> (State, Vec<Action>) {
    let reason = StopReason::Restarted { successor };
    let deadline = now + t.stop;
    (
        State::Draining {
            reason,
            deadline,
            accepting: true,
            stop_asked: false,
            successor: Some(successor),
        },
        vec![
            Action::HandOver { successor },
            Action::BeginDrain { reason, deadline },
            Action::RestartSucceeded { successor },
        ],
    )
}

fn stop(now: Instant, t: &Timeouts) -> (State, Vec<Action>) {
    let reason = StopReason::Shutdown;
    let deadline = now + t.stop;
    (
        State::Draining {
            reason,
            deadline,
            accepting: true,
            // A drain that a stop began has had its first stop request.
            stop_asked: true,
            successor: None,
        },
        vec![Action::BeginDrain { reason, deadline }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        ready: Duration::from_secs(30),
        stop: Duration::from_secs(60),
    };

    /// Runs `events` from `state`, returning the final state and every action in order.
    fn run(mut state: State, events: Vec<Event>, now: Instant) -> (State, Vec<Action>) {
        let mut all = Vec::new();
        for e in events {
            let (s, a) = transition(state, e, now, &T);
            state = s;
            all.extend(a);
        }
        (state, all)
    }

    fn term(sender: Option<u32>) -> Event {
        Event::StopRequested {
            cause: StopCause::Sigterm,
            sender,
        }
    }

    /// A generation whose restart to `pid` is under way.
    fn restarting(pid: u32, now: Instant) -> State {
        run(
            State::START,
            vec![Event::RestartRequested, Event::Spawned { pid }],
            now,
        )
        .0
    }

    #[test]
    fn restart_spawns_then_waits_with_the_ready_deadline() {
        let now = Instant::now();
        let (s, a) = transition(State::START, Event::RestartRequested, now, &T);
        assert_eq!(a, vec![Action::NotifyReloading, Action::Spawn]);
        let (s, a) = transition(s, Event::Spawned { pid: 7 }, now, &T);
        assert_eq!(
            s,
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
                timeout: T.ready
            }]
        );
    }

    #[test]
    fn restart_requests_during_a_restart_are_coalesced() {
        let now = Instant::now();
        let (s, a) = transition(
            State::Serving {
                pending: Some(Pending::Spawning),
            },
            Event::RestartRequested,
            now,
            &T,
        );
        assert_eq!(a, vec![Action::Note(Note::Coalesced { pending: None })]);
        assert_eq!(
            s,
            State::Serving {
                pending: Some(Pending::Spawning)
            }
        );
        let (_, a) = run(restarting(7, now), vec![Event::RestartRequested; 3], now);
        assert_eq!(a, vec![Action::Note(Note::Coalesced { pending: Some(7) }); 3]);
    }

    #[test]
    fn ready_child_takes_over_and_the_drain_starts() {
        let now = Instant::now();
        let (s, a) = transition(restarting(7, now), Event::ChildReady, now, &T);
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
                Action::RestartSucceeded { successor: 7 },
            ]
        );
        assert_eq!(
            s,
            State::Draining {
                reason,
                deadline: now + T.stop,
                accepting: true,
                stop_asked: false,
                successor: Some(7)
            }
        );
    }

    #[test]
    fn sigterm_from_the_pending_child_is_go_graces_ready() {
        let now = Instant::now();
        let (_, a) = transition(restarting(7, now), term(Some(7)), now, &T);
        assert_eq!(a[0], Action::HandOver { successor: 7 });
    }

    #[test]
    fn sigterm_from_anyone_else_during_a_restart_kills_the_child_and_stops() {
        let now = Instant::now();
        let (s, a) = transition(restarting(7, now), term(Some(1)), now, &T);
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
                }
            ]
        );
        assert!(matches!(s, State::Draining { stop_asked: true, .. }));
    }

    #[test]
    fn failed_children_are_abandoned_and_serving_goes_on() {
        let now = Instant::now();
        for (event, failure) in [
            (Event::ChildGone, ChildFailure::Gone),
            (Event::ReadyTimeout, ChildFailure::NotReady { timeout: T.ready }),
        ] {
            let (s, a) = transition(restarting(7, now), event, now, &T);
            assert_eq!(s, State::START);
            assert_eq!(a, vec![Action::AbandonChild { pid: 7, failure }]);
            // ... and a later restart tries again.
            let (_, a) = transition(s, Event::RestartRequested, now, &T);
            assert_eq!(a, vec![Action::NotifyReloading, Action::Spawn]);
        }
    }

    #[test]
    fn a_spawn_failure_is_reported_and_serving_goes_on() {
        let (s, a) = run(
            State::START,
            vec![
                Event::RestartRequested,
                Event::SpawnFailed {
                    error: "no such file".into(),
                },
            ],
            Instant::now(),
        );
        assert_eq!(s, State::START);
        assert_eq!(
            a.last(),
            Some(&Action::SpawnFailed {
                error: "no such file".into()
            })
        );
    }

    #[test]
    fn a_stop_drains_and_a_second_stop_ends_it_at_once() {
        let now = Instant::now();
        let (s, a) = transition(State::START, term(None), now, &T);
        assert_eq!(
            a,
            vec![Action::BeginDrain {
                reason: StopReason::Shutdown,
                deadline: now + T.stop
            }]
        );
        let (s, a) = transition(s, term(None), now, &T);
        assert_eq!(s, State::Finished);
        assert_eq!(
            a,
            vec![Action::Finish {
                reason: StopReason::Shutdown,
                forced: true
            }]
        );
    }

    #[test]
    fn a_stop_while_draining_after_a_restart_keeps_draining_once() {
        let now = Instant::now();
        let draining = transition(restarting(7, now), Event::ChildReady, now, &T).0;
        let (s, a) = transition(draining, term(Some(1)), now, &T);
        assert_eq!(
            a,
            vec![Action::Note(Note::KeepDraining {
                cause: StopCause::Sigterm
            })]
        );
        let (s, a) = transition(s, term(Some(1)), now, &T);
        assert_eq!(s, State::Finished);
        assert_eq!(
            a,
            vec![Action::Finish {
                reason: StopReason::Restarted { successor: 7 },
                forced: true
            }]
        );
    }

    #[test]
    fn signals_from_the_successor_are_ignored() {
        let now = Instant::now();
        let draining = transition(restarting(7, now), Event::ChildReady, now, &T).0;
        let (s, a) = run(draining, vec![term(Some(7)), term(Some(7))], now);
        assert_eq!(s, draining);
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
    fn restart_while_draining_is_ignored() {
        let now = Instant::now();
        let (s, _) = transition(State::START, term(None), now, &T);
        let (s2, a) = transition(s, Event::RestartRequested, now, &T);
        assert_eq!(s2, s);
        assert_eq!(a, vec![Action::Note(Note::RestartWhileStopping)]);
    }

    #[test]
    fn the_drain_ends_when_connections_end_or_at_the_deadline() {
        let now = Instant::now();
        let draining = transition(State::START, term(None), now, &T).0;
        let (s, a) = run(draining, vec![Event::StoppedAccepting, Event::Drained], now);
        assert_eq!(s, State::Finished);
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
        let (_, a) = transition(draining, Event::DrainDeadline, now, &T);
        assert_eq!(
            a,
            vec![Action::Finish {
                reason: StopReason::Shutdown,
                forced: true
            }]
        );
    }

    #[test]
    fn the_successor_exiting_while_we_drain_is_noted_once() {
        let now = Instant::now();
        let draining = transition(restarting(7, now), Event::ChildReady, now, &T).0;
        let exited = Event::SuccessorExited {
            pid: 7,
            status: "signal: 9 (SIGKILL)".into(),
        };
        let (s, a) = run(draining, vec![exited.clone(), exited], now);
        assert!(matches!(s, State::Draining { successor: None, .. }));
        assert_eq!(a.len(), 1);
        // With the successor gone, a SIGTERM from its old pid is an ordinary stop request.
        let (_, a) = transition(s, term(Some(7)), now, &T);
        assert_eq!(
            a,
            vec![Action::Note(Note::KeepDraining {
                cause: StopCause::Sigterm
            })]
        );
    }

    #[test]
    fn a_stop_after_the_drain_is_a_late_stop() {
        let now = Instant::now();
        let (_, a) = run(State::START, vec![term(None), Event::Drained, term(None)], now);
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
        for state in [
            State::START,
            transition(State::START, term(None), now, &T).0,
            State::Finished,
        ] {
            for event in [
                Event::ChildReady,
                Event::ChildGone,
                Event::ReadyTimeout,
                Event::Spawned { pid: 9 },
                Event::SuccessorExited {
                    pid: 9,
                    status: String::new(),
                },
            ] {
                assert_eq!(transition(state, event, now, &T), (state, Vec::new()));
            }
        }
        // Drain events outside a drain.
        for event in [Event::StoppedAccepting, Event::Drained, Event::DrainDeadline] {
            assert_eq!(
                transition(State::START, event.clone(), now, &T),
                (State::START, Vec::new())
            );
            assert_eq!(
                transition(State::Finished, event, now, &T),
                (State::Finished, Vec::new())
            );
        }
    }
}
