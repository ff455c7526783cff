//! A connection's deadlines and its part in the drain: one timer, checked against the
//! connection's activity counters when it fires, nothing registered per request. What a check
//! concludes is decided by [`check`], a pure function of what the watch remembers, what the
//! counters say and the timeouts, unit-tested below; [`Watch`] only polls and performs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{Activity, ConnConfig, Snapshot};

/// What the connection's watch asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Nothing now.
    Wait,
    /// Shut down gracefully: GOAWAY (HTTP/2), or close between requests (HTTP/1).
    Shutdown,
    /// Hand the connection to the next process between requests (HTTP/1): poll it again,
    /// so that it goes quiet once nothing is in flight.
    HandOver,
    /// Close now (a peer that sent no request in time).
    Close,
}

/// The connection's deadlines and its part in the drain.
pub(super) struct Watch<'a> {
    activity: Arc<Activity>,
    config: &'a ConnConfig,
    /// The task's waker when the drain's and the timer's registrations were last made: they
    /// are made again only when it changes.
    waker: Option<Waker>,
    /// The timer was reset since it was last polled (it must be polled to register).
    rearmed: bool,
    /// What the checks remember.
    memory: Memory,
}

impl<'a> Watch<'a> {
    /// A watch for a connection whose idle time counts from `idle_since` (now, or earlier for
    /// a connection handed over idle), and whose first request's head is due by
    /// `first_request_by`.
    pub(super) fn new(
        activity: Arc<Activity>,
        config: &'a ConnConfig,
        idle_since: Instant,
        first_request_by: Instant,
    ) -> Watch<'a> {
        let armed = activity.snapshot();
        Watch {
            activity,
            config,
            waker: None,
            rearmed: false,
            memory: Memory {
                drain_started: false,
                closing: false,
                armed,
                active_at: idle_since,
                headers_since: None,
                first_request_by,
            },
        }
    }

    /// When a request was last seen in flight (at the check that saw it: at most one check
    /// period after it).
    pub(super) fn active_at(&self) -> Instant {
        self.memory.active_at
    }

    /// How often a serving connection's counters are checked: the header read timeout is
    /// then enforced within 1.5 times itself.
    fn period(&self) -> Duration {
        self.timeouts().period()
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_read: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
            idle_grace: self.config.idle_grace,
        }
    }

    fn arm(&mut self, timer: &mut Pin<&mut Sleep>, after: Duration) {
        self.memory.armed = self.activity.snapshot();
        timer.as_mut().reset(Instant::now() + after);
        self.rearmed = true;
    }

    fn begin_drain(&mut self, timer: &mut Pin<&mut Sleep>) -> Decision {
        self.memory.drain_started = true;
        self.activity.parked.store(false, Ordering::Relaxed);
        self.activity.draining.store(true, Ordering::Release);
        // HTTP/1 (or nothing sent yet): closed between requests once nothing has come for the
        // idle grace, so a request already sent is answered (with `Connection: close`), not
        // reset.
        self.arm(timer, self.config.idle_grace);
        if self.activity.http2.load(Ordering::Relaxed) && self.activity.any_request.load(Ordering::Relaxed) {
            // HTTP/2 in use: GOAWAY now; the client finishes its streams and opens new ones
            // elsewhere.
            self.memory.closing = true;
            return Decision::Shutdown;
        }
        // A connection with no request yet (accepted just before the drain, or opened ahead)
        // waits for its first one for the idle grace: a GOAWAY before it would cost a client
        // its request on a fresh connection (hyper-util's client retries only on a reused
        // one), as Go's server waits for a new connection's first request before it counts
        // it idle.
        if self.activity.hands_over() {
            return Decision::HandOver;
        }
        Decision::Wait
    }

    /// Looks at what happened since the last poll: the drain's start, a request finishing
    /// while someone listens, the timer. Most polls are for the connection's own bytes, with
    /// nothing here to see: that check is inlined, the rest is not.
    #[inline]
    pub(super) fn poll_decide(
        &mut self,
        cx: &mut Context<'_>,
        draining: Pin<&mut impl Future<Output = ()>>,
        timer: Pin<&mut Sleep>,
    ) -> Decision {
        let nothing_new = !self.rearmed
            && !self.memory.drain_started
            && self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            && !self.activity.http2.load(Ordering::Relaxed)
            && !self.activity.unparked.load(Ordering::Relaxed)
            && !self.activity.drain.is_draining()
            && !timer.is_elapsed();
        if nothing_new {
            return Decision::Wait;
        }
        self.look(cx, draining, timer)
    }

    /// [`Self::poll_decide`] when something may have happened.
    #[inline(never)]
    fn look(
        &mut self,
        cx: &mut Context<'_>,
        mut draining: Pin<&mut impl Future<Output = ()>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Decision {
        loop {
            // A new waker: every registration is made again (once per connection in practice).
            let fresh = !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if fresh {
                self.waker = Some(cx.waker().clone());
                if self.activity.drain.is_draining() && !self.memory.drain_started {
                    // Already draining when accepted.
                    let decision = self.begin_drain(&mut timer);
                    if decision != Decision::Wait {
                        return decision;
                    }
                }
            }
            // Registered before `went_idle` is looked at, so no wake-up is lost.
            let listening = self.memory.drain_started || self.activity.http2.load(Ordering::Relaxed);
            if listening {
                self.activity.waker.register(cx.waker());
            }
            // The drain's flag is set before its watchers are woken.
            if !self.memory.drain_started
                && (fresh || self.activity.drain.is_draining())
                && draining.as_mut().poll(cx).is_ready()
            {
                let decision = self.begin_drain(&mut timer);
                if decision != Decision::Wait {
                    return decision;
                }
                continue;
            }
            if self.memory.drain_started
                && !self.memory.closing
                && self.activity.http2.load(Ordering::Relaxed)
                && self.activity.any_request.load(Ordering::Relaxed)
            {
                // Draining, and the first request has come on an HTTP/2 connection: GOAWAY now,
                // which covers it (the client sends any further ones elsewhere).
                self.memory.closing = true;
                return Decision::Shutdown;
            }
            if listening && self.activity.went_idle.swap(false, Ordering::AcqRel) && self.memory.drain_started
            {
                // Draining: the last request finished; the idle grace starts now.
                self.arm(&mut timer, self.config.idle_grace);
            }
            if self.activity.unparked.load(Ordering::Relaxed) {
                self.activity.unparked.store(false, Ordering::Relaxed);
                // Bytes after a quiet period: checks resume.
                let period = self.period();
                self.arm(&mut timer, period);
            }
            if fresh || self.rearmed || timer.is_elapsed() {
                self.rearmed = false;
                if timer.as_mut().poll(cx).is_ready() {
                    match self.check(&mut timer) {
                        Decision::Wait => continue,
                        decision => return decision,
                    }
                }
            }
            return Decision::Wait;
        }
    }

    /// The timer fired: performs what [`check`] concludes from the counters. Re-arms the
    /// timer.
    fn check(&mut self, timer: &mut Pin<&mut Sleep>) -> Decision {
        let activity = &self.activity;
        let seen = Seen {
            now: activity.snapshot(),
            busy: activity.busy(),
            http2: activity.http2.load(Ordering::Relaxed),
            any_request: activity.any_request.load(Ordering::Relaxed),
            reads_at_done: activity.reads_at_done.load(Ordering::Relaxed),
            at: Instant::now(),
        };
        let timeouts = self.timeouts();
        let verdict = check(&mut self.memory, &seen, &timeouts, || activity.unread_bytes());
        if let Some(why) = verdict.why {
            crate::log::debug!(reason = %why.describe(&timeouts), "the connection watch acts");
            if let Some(error) = why.peer_error() {
                self.config.peer_errors.record(error);
            }
        }
        if verdict.park {
            self.activity.parked.store(true, Ordering::Relaxed);
        }
        match verdict.timer {
            Timer::Arm(after) => self.arm(timer, after),
            // HTTP/1 told to close: hyper closes it between requests; nothing to check.
            Timer::Off => timer
                .as_mut()
                .reset(Instant::now() + Duration::from_secs(86_400 * 365)),
        }
        verdict.decision
    }
}

/// What the checks remember between two timer firings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Memory {
    /// The drain has begun for this connection.
    drain_started: bool,
    /// Told to shut down (GOAWAY sent, or HTTP/1 closing between requests).
    closing: bool,
    /// The counters when the timer was armed.
    armed: Snapshot,
    /// When a request was last seen in flight, started or finished.
    active_at: Instant,
    /// When the next request's headers were first seen arriving, incomplete (HTTP/1).
    headers_since: Option<Instant>,
    /// When the first request's head is due (the accept and the header read timeout).
    first_request_by: Instant,
}

/// What the connection's counters say when the timer fires.
#[derive(Debug, Clone, Copy)]
struct Seen {
    now: Snapshot,
    /// A request is in flight.
    busy: bool,
    http2: bool,
    /// A request has started on this connection.
    any_request: bool,
    /// `reads` when the last request finished.
    reads_at_done: u64,
    /// The time of the check.
    at: Instant,
}

/// The connection's timeouts.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    idle: Duration,
    idle_grace: Duration,
}

impl Timeouts {
    /// How often a serving connection's counters are checked: the header read timeout is
    /// then enforced within 1.5 times itself.
    fn period(&self) -> Duration {
        (self.header_read / 4)
            .min(self.idle)
            .max(Duration::from_millis(1))
    }
}

/// What a check concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    decision: Decision,
    timer: Timer,
    /// Nothing happened for a whole period: the timer waits for the idle timeout, and the
    /// next byte read asks for the checks to resume.
    park: bool,
    /// Why the connection is closed or told to go, when it is.
    why: Option<Why>,
}

/// What happens to the timer after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Fires after this long, with the counters as they are now.
    Arm(Duration),
    /// Never fires (an HTTP/1 connection told to close between requests).
    Off,
}

/// Why a check closes a connection or tells it to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// HTTP/2, told to go, still here with nothing in flight.
    StayedAfterGoaway,
    /// The drain's idle grace passed with nothing from the connection.
    DrainIdle,
    /// No request within the header read timeout of the accept.
    NoRequest,
    /// A later request's headers took longer than the header read timeout.
    SlowHeaders,
    /// No request for the idle timeout.
    Idle,
}

impl Why {
    fn describe(self, t: &Timeouts) -> String {
        match self {
            Why::StayedAfterGoaway => "closing a connection that stayed after it was told to go".to_owned(),
            Why::DrainIdle => "draining: telling an idle connection to go".to_owned(),
            Why::NoRequest => format!(
                "closing a connection that sent no request within {:?} of its accept",
                t.header_read
            ),
            Why::SlowHeaders => format!(
                "closing a connection whose request headers took longer than {:?}",
                t.header_read
            ),
            Why::Idle => format!("closing a connection idle for {:?}", t.idle),
        }
    }

    /// The peer's fault, as counted in the aggregated log line.
    fn peer_error(self) -> Option<&'static str> {
        match self {
            Why::NoRequest => Some("no request within the header read timeout"),
            Why::SlowHeaders => Some("request headers not read within the header read timeout"),
            _ => None,
        }
    }
}

/// The timer fired: what the counters say must happen. `unread` asks the kernel whether bytes
/// wait unread in the socket (a system call: asked only where it decides).
fn check(memory: &mut Memory, seen: &Seen, t: &Timeouts, unread: impl FnOnce() -> bool) -> Verdict {
    let quiet = seen.now == memory.armed; // no byte and no request since armed
    let no_request = seen.now.request_events == memory.armed.request_events; // PINGs do not count
    let (busy, http2) = (seen.busy, seen.http2);
    let verdict = |decision, timer, why| Verdict {
        decision,
        timer,
        park: false,
        why,
    };
    let grace = Timer::Arm(t.idle_grace);
    // HTTP/1: bytes read since the last request finished, with none in flight, are the next
    // request's head, begun.
    let head_pending = !busy && !http2 && seen.any_request && seen.now.reads != seen.reads_at_done;
    if memory.closing {
        // HTTP/2 told to go (GOAWAY) and still here, with nothing in flight (every response
        // sent) and nothing since: closed. Any stream it opens now was refused by the GOAWAY,
        // which clients retry. (HTTP/1 is closed by hyper itself, between requests: closing it
        // from here could drop a request whose bytes are unread.)
        if http2 && no_request && !busy {
            return verdict(Decision::Close, grace, Some(Why::StayedAfterGoaway));
        }
        return verdict(Decision::Wait, if http2 { grace } else { Timer::Off }, None);
    }
    if memory.drain_started {
        // A connection with the next request's head begun is not idle, however long the
        // client pauses within it: its request is answered (with `Connection: close`) if the
        // head comes within the header read timeout; closing it at the idle grace lost the
        // request (a client that sent large headers slowly, and paused). A first request's
        // head is hyper's to keep: its graceful shutdown does not close a connection reading
        // its first request (`a_first_head_begun_before_a_restart_and_paused_is_answered`).
        if http2 || (quiet && !busy && !head_pending && !unread()) {
            // HTTP/2 here has sent no request for the whole grace (a first one would have
            // been told to go at once): GOAWAY, whatever PINGs it sends.
            memory.closing = true;
            return verdict(Decision::Shutdown, grace, Some(Why::DrainIdle));
        }
        if !seen.any_request && seen.at >= memory.first_request_by {
            // Still no request by its deadline (a slow TLS handshake or head): a drain does
            // not make it more patient.
            return verdict(Decision::Close, grace, Some(Why::NoRequest));
        }
        if headers_too_slow(memory, head_pending, no_request, seen.at, t) {
            return verdict(Decision::Close, grace, Some(Why::SlowHeaders));
        }
        return verdict(Decision::Wait, grace, None);
    }
    if !seen.any_request {
        // Nothing but silence, a handshake, a preface or settings since the accept.
        return verdict(Decision::Close, grace, Some(Why::NoRequest));
    }
    let at = seen.at;
    if busy || !no_request {
        memory.active_at = at;
    }
    if headers_too_slow(memory, head_pending, no_request, at, t) {
        return verdict(Decision::Close, grace, Some(Why::SlowHeaders));
    }
    if !busy && no_request && at.duration_since(memory.active_at) >= t.idle && !unread() {
        // No request in flight or started for the idle timeout (PINGs do not count).
        memory.closing = true;
        return verdict(Decision::Shutdown, grace, Some(Why::Idle));
    }
    if quiet && !busy {
        // Nothing happened for a whole period: wait for the idle timeout, or for the next
        // byte to resume the checks.
        let idle_left = t.idle.saturating_sub(at.duration_since(memory.active_at));
        return Verdict {
            decision: Decision::Wait,
            timer: Timer::Arm(idle_left),
            park: true,
            why: None,
        };
    }
    verdict(Decision::Wait, Timer::Arm(t.period()), None)
}

/// Follows the next request's head (`pending`): whether it has been seen arriving for the
/// header read timeout. Its bytes arrived after the previous check (or the request finished
/// after it), so this closes within 1.5 times the timeout of their first byte.
fn headers_too_slow(memory: &mut Memory, pending: bool, no_request: bool, at: Instant, t: &Timeouts) -> bool {
    if !pending {
        memory.headers_since = None;
    } else if memory.headers_since.is_none() || !no_request {
        memory.headers_since = Some(at);
    } else if memory
        .headers_since
        .is_some_and(|since| at.duration_since(since) >= t.header_read)
    {
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(4),
        idle: Duration::from_secs(60),
        idle_grace: Duration::from_millis(500),
    };

    fn snap(reads: u64, request_events: u64) -> Snapshot {
        Snapshot {
            reads,
            request_events,
        }
    }

    /// A serving connection that has answered one request; armed at (10 reads, 2 events).
    fn memory(at: Instant) -> Memory {
        Memory {
            drain_started: false,
            closing: false,
            armed: snap(10, 2),
            active_at: at,
            headers_since: None,
            first_request_by: at + T.header_read,
        }
    }

    /// Counters as armed, nothing in flight, HTTP/1, the last request done at read 10.
    fn seen(at: Instant) -> Seen {
        Seen {
            now: snap(10, 2),
            busy: false,
            http2: false,
            any_request: true,
            reads_at_done: 10,
            at,
        }
    }

    fn no_syscall() -> bool {
        panic!("the socket was asked though the answer did not depend on it")
    }

    #[test]
    fn a_connection_with_no_request_by_the_header_timeout_is_closed_as_the_peers_fault() {
        let now = Instant::now();
        let mut m = memory(now);
        let s = Seen {
            any_request: false,
            now: snap(0, 0),
            ..seen(now)
        };
        let v = check(&mut m, &s, &T, no_syscall);
        assert_eq!(v.decision, Decision::Close);
        assert_eq!(v.why, Some(Why::NoRequest));
        assert!(Why::NoRequest.peer_error().is_some());
    }

    #[test]
    fn a_quiet_connection_parks_until_its_idle_timeout() {
        let now = Instant::now();
        let mut m = memory(now);
        let v = check(&mut m, &seen(now + Duration::from_secs(1)), &T, no_syscall);
        assert_eq!(v.decision, Decision::Wait);
        assert!(v.park);
        assert_eq!(v.timer, Timer::Arm(Duration::from_secs(59)));
    }

    #[test]
    fn a_busy_connection_is_checked_again_a_period_later_and_counts_as_active() {
        let start = Instant::now();
        let later = start + Duration::from_secs(100);
        let mut m = memory(start);
        let s = Seen {
            busy: true,
            now: snap(11, 3),
            ..seen(later)
        };
        let v = check(&mut m, &s, &T, no_syscall);
        assert_eq!(
            (v.decision, v.timer, v.park),
            (Decision::Wait, Timer::Arm(T.period()), false)
        );
        assert_eq!(m.active_at, later, "in flight: not idle");
    }

    #[test]
    fn an_idle_connection_is_told_to_go_unless_a_request_waits_unread() {
        let start = Instant::now();
        let late = start + T.idle;
        let mut m = memory(start);
        let v = check(&mut m, &seen(late), &T, || false);
        assert_eq!((v.decision, v.why), (Decision::Shutdown, Some(Why::Idle)));
        assert!(m.closing);
        let mut m = memory(start);
        let v = check(&mut m, &seen(late), &T, || true);
        assert_eq!(
            v.decision,
            Decision::Wait,
            "bytes wait in the socket: a request, not idleness"
        );
        assert!(!m.closing);
    }

    #[test]
    fn headers_that_trickle_for_the_header_timeout_close_the_connection() {
        let start = Instant::now();
        let mut m = memory(start);
        // Bytes after the last request finished, none in flight: the next request's headers.
        let first = Seen {
            now: snap(11, 2),
            ..seen(start + Duration::from_secs(1))
        };
        let v = check(&mut m, &first, &T, || false);
        assert_eq!(v.decision, Decision::Wait);
        assert_eq!(m.headers_since, Some(first.at));
        m.armed = first.now;
        let still = Seen {
            now: snap(12, 2),
            ..seen(first.at + T.header_read)
        };
        let v = check(&mut m, &still, &T, || false);
        assert_eq!((v.decision, v.why), (Decision::Close, Some(Why::SlowHeaders)));
        // A request that began meanwhile resets the clock instead.
        let mut m = memory(start);
        check(&mut m, &first, &T, || false);
        m.armed = first.now;
        let began = Seen {
            now: snap(12, 3),
            ..still
        };
        assert_eq!(check(&mut m, &began, &T, || false).decision, Decision::Wait);
    }

    #[test]
    fn draining_an_idle_http1_connection_tells_it_to_go_but_not_with_a_request_unread_or_in_flight() {
        let now = Instant::now();
        let draining = Memory {
            drain_started: true,
            ..memory(now)
        };
        let mut m = draining;
        let v = check(&mut m, &seen(now), &T, || false);
        assert_eq!(
            (v.decision, v.timer),
            (Decision::Shutdown, Timer::Arm(T.idle_grace))
        );
        assert!(m.closing);
        let mut m = draining;
        assert_eq!(check(&mut m, &seen(now), &T, || true).decision, Decision::Wait);
        let mut m = draining;
        let busy = Seen {
            busy: true,
            ..seen(now)
        };
        let v = check(&mut m, &busy, &T, no_syscall);
        assert_eq!((v.decision, v.timer), (Decision::Wait, Timer::Arm(T.idle_grace)));
        let mut m = draining;
        let active = Seen {
            now: snap(11, 2),
            ..seen(now)
        };
        assert_eq!(check(&mut m, &active, &T, no_syscall).decision, Decision::Wait);
    }

    #[test]
    fn draining_waits_for_a_begun_head_through_pauses_up_to_the_header_read_timeout() {
        let now = Instant::now();
        // Bytes of the next head came before the drain (read 12, the last request done at
        // read 10), then the client pauses: the counters stay as armed.
        let mut m = Memory {
            drain_started: true,
            armed: snap(12, 2),
            ..memory(now)
        };
        let paused = |at| Seen {
            now: snap(12, 2),
            ..seen(at)
        };
        for later in [0, 1, 3] {
            let v = check(&mut m, &paused(now + Duration::from_secs(later)), &T, no_syscall);
            assert_eq!(
                (v.decision, m.closing),
                (Decision::Wait, false),
                "{later} s into the pause"
            );
        }
        let v = check(&mut m, &paused(now + T.header_read), &T, no_syscall);
        assert_eq!((v.decision, v.why), (Decision::Close, Some(Why::SlowHeaders)));
    }

    #[test]
    fn draining_still_closes_a_connection_with_no_request_by_its_deadline() {
        let now = Instant::now();
        let mut m = Memory {
            drain_started: true,
            armed: snap(0, 0),
            first_request_by: now + T.header_read,
            ..memory(now)
        };
        // Bytes keep coming (a TLS handshake or a head, a byte at a time): never quiet.
        let trickling = |reads, at| Seen {
            now: snap(reads, 0),
            any_request: false,
            reads_at_done: 0,
            ..seen(at)
        };
        let v = check(
            &mut m,
            &trickling(3, now + Duration::from_secs(1)),
            &T,
            no_syscall,
        );
        assert_eq!(v.decision, Decision::Wait);
        m.armed = snap(3, 0);
        let v = check(&mut m, &trickling(6, now + T.header_read), &T, no_syscall);
        assert_eq!((v.decision, v.why), (Decision::Close, Some(Why::NoRequest)));
    }

    #[test]
    fn draining_http2_gets_goaway_at_the_grace_whatever_it_sends() {
        let now = Instant::now();
        let mut m = Memory {
            drain_started: true,
            ..memory(now)
        };
        let pings = Seen {
            http2: true,
            now: snap(50, 2),
            ..seen(now)
        };
        let v = check(&mut m, &pings, &T, no_syscall);
        assert_eq!(v.decision, Decision::Shutdown);
        assert!(m.closing);
    }

    #[test]
    fn told_to_go_http2_is_closed_once_nothing_is_in_flight_and_http1_is_left_to_hyper() {
        let now = Instant::now();
        let closing = Memory {
            closing: true,
            drain_started: true,
            ..memory(now)
        };
        let h2 = Seen {
            http2: true,
            ..seen(now)
        };
        let mut m = closing;
        let v = check(&mut m, &h2, &T, no_syscall);
        assert_eq!(
            (v.decision, v.why),
            (Decision::Close, Some(Why::StayedAfterGoaway))
        );
        let mut m = closing;
        let streams = Seen { busy: true, ..h2 };
        let v = check(&mut m, &streams, &T, no_syscall);
        assert_eq!((v.decision, v.timer), (Decision::Wait, Timer::Arm(T.idle_grace)));
        let mut m = closing;
        let v = check(&mut m, &seen(now), &T, no_syscall);
        assert_eq!((v.decision, v.timer), (Decision::Wait, Timer::Off));
    }
}
