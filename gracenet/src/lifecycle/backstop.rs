//! The stop deadline, kept by a thread of its own: a drain is ended by the lifecycle's task at
//! its deadline, but that task runs on the application's runtime, and a runtime the
//! application blocks (a handler that sleeps or spins on every worker thread) never runs it.
//! The backstop ends the process a grace period after the deadline when the drain has not
//! ended by then, so `SIGTERM` and the stop timeout still mean what they say.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long past a drain's deadline (or after a second stop signal) the process may still be
/// running before the backstop ends it: long enough that a runtime that is merely busy ends
/// the drain itself, the lifecycle's task being one of the first it runs.
pub(crate) const BACKSTOP_GRACE: Duration = Duration::from_secs(5);

/// Ends the process when a drain runs past its deadline by more than [`BACKSTOP_GRACE`].
/// Cheap to clone; every clone is the same backstop.
#[derive(Clone, Default)]
pub(crate) struct DrainBackstop {
    inner: Arc<(Mutex<Armed>, Condvar)>,
}

#[derive(Default)]
struct Armed {
    /// When the process is ended, unless the drain ends first: the earliest asked for.
    at: Option<Instant>,
    /// The signal whose default action ends it (`SIGTERM` when none came).
    signal: Option<libc::c_int>,
    /// Why, for the log line.
    why: &'static str,
    /// The drain ended: nothing more to do.
    ended: bool,
    /// The thread that waits is running.
    watching: bool,
}

impl DrainBackstop {
    /// Ends the process at `at` (the earlier of this and any time set before) by `signal`'s
    /// default action, unless [`ended`](Self::ended) comes first.
    pub(crate) fn arm(&self, at: Instant, signal: Option<libc::c_int>, why: &'static str) {
        let (lock, wake) = &*self.inner;
        let mut armed = lock.lock().unwrap_or_else(|p| p.into_inner());
        if armed.ended {
            return;
        }
        if armed.at.is_none_or(|earlier| at < earlier) {
            armed.at = Some(at);
            armed.why = why;
        }
        if signal.is_some() {
            armed.signal = signal;
        }
        if !armed.watching {
            let inner = self.inner.clone();
            let started = std::thread::Builder::new()
                .name("gracenet-backstop".into())
                .spawn(move || watch(&inner));
            match started {
                Ok(_) => armed.watching = true,
                Err(e) => crate::log::warn!(
                    error = %crate::error::thread_error(&e),
                    "cannot start the thread that keeps the stop deadline when the runtime is blocked"
                ),
            }
        }
        wake.notify_all();
    }

    /// Arms the backstop `after` from now, if that is a time this machine can name (a stop
    /// timeout of years is no deadline).
    pub(crate) fn arm_after(&self, after: Duration, signal: Option<libc::c_int>, why: &'static str) {
        if let Some(at) = Instant::now().checked_add(after) {
            self.arm(at, signal, why);
        }
    }

    /// The drain ended (the runtime ran the lifecycle to its end): the backstop stands down
    /// for good.
    pub(crate) fn ended(&self) {
        let (lock, wake) = &*self.inner;
        lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        wake.notify_all();
    }

    /// Whether the drain has ended (the backstop stood down).
    pub(crate) fn has_ended(&self) -> bool {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).ended
    }
}

/// The backstop's thread: waits for the time set, or for the drain to end.
fn watch(inner: &(Mutex<Armed>, Condvar)) {
    let (lock, wake) = inner;
    let mut armed = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if armed.ended {
            return;
        }
        let Some(at) = armed.at else {
            armed = wake.wait(armed).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if now < at {
            armed = wake
                .wait_timeout(armed, at - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        let (signal, why) = (armed.signal.unwrap_or(libc::SIGTERM), armed.why);
        drop(armed);
        end_process(signal, why);
        return;
    }
}

/// Ends the process by `signal`'s default action (so whoever waits for it sees it end by that
/// signal, as if no handler had been installed).
fn end_process(signal: libc::c_int, why: &str) {
    crate::log::warn!(
        why,
        "the drain has not ended (is the runtime blocked?): ending the process"
    );
    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
        crate::log::warn!(error = %e, "cannot apply the default action of the signal: exiting");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backstop_that_ended_stays_ended_and_is_not_armed_again() {
        let backstop = DrainBackstop::default();
        backstop.ended();
        // Were it armed, this test process would be ended by SIGTERM a moment from now.
        backstop.arm_after(Duration::ZERO, Some(libc::SIGTERM), "test");
        assert!(backstop.has_ended());
        let armed = backstop.inner.0.lock().unwrap();
        assert!(armed.at.is_none() && !armed.watching);
    }

    #[test]
    fn the_earliest_time_wins_and_a_deadline_beyond_any_clock_is_no_deadline() {
        let backstop = DrainBackstop::default();
        backstop.arm_after(Duration::MAX, None, "never");
        assert!(backstop.inner.0.lock().unwrap().at.is_none());
        backstop.arm_after(Duration::from_secs(3600), None, "late");
        backstop.arm_after(Duration::from_secs(1800), Some(libc::SIGINT), "early");
        backstop.arm_after(Duration::from_secs(7200), None, "later");
        {
            let armed = backstop.inner.0.lock().unwrap();
            assert_eq!(armed.why, "early");
            assert_eq!(armed.signal, Some(libc::SIGINT));
            assert!(armed.at.unwrap() <= Instant::now() + Duration::from_secs(1800));
        }
        // Stand it down, so the thread ends with the test.
        backstop.ended();
    }
}
