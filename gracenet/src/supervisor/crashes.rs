//! When to start a new generation after a crash, and when to give up: a crash loop backs off
//! and then ends, so a broken deploy fails visibly instead of spinning forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many crashes within [`CrashPolicy::window`] end the supervisor.
pub(crate) const CRASH_LIMIT: usize = 5;
/// The window crashes are counted in.
pub(crate) const CRASH_WINDOW: Duration = Duration::from_secs(30);
/// The delay before the second restart in a window; it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What to do about a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCrash {
    /// Start a new generation after this delay (zero for the first crash in a while: the
    /// sockets' backlogs are filling).
    Restart(Duration),
    /// Too many crashes in the window: stop trying.
    GiveUp { crashes: usize },
}

/// The crash history of one supervisor.
#[derive(Debug, Default)]
pub(crate) struct CrashPolicy {
    recent: VecDeque<Instant>,
}

impl CrashPolicy {
    /// The window crashes are counted in.
    pub(crate) fn window(&self) -> Duration {
        CRASH_WINDOW
    }

    /// Records a crash at `now` and says what to do.
    pub(crate) fn record(&mut self, now: Instant) -> AfterCrash {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= CRASH_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let crashes = self.recent.len();
        if crashes >= CRASH_LIMIT {
            return AfterCrash::GiveUp { crashes };
        }
        AfterCrash::Restart(match crashes {
            1 => Duration::ZERO,
            n => FIRST_BACKOFF * (1 << (n - 2)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_crash_restarts_at_once_then_backs_off_then_gives_up() {
        let mut policy = CrashPolicy::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(policy.record(t0), AfterCrash::Restart(Duration::ZERO));
        assert_eq!(policy.record(t0 + s(1)), AfterCrash::Restart(FIRST_BACKOFF));
        assert_eq!(policy.record(t0 + s(2)), AfterCrash::Restart(FIRST_BACKOFF * 2));
        assert_eq!(policy.record(t0 + s(3)), AfterCrash::Restart(FIRST_BACKOFF * 4));
        assert_eq!(policy.record(t0 + s(4)), AfterCrash::GiveUp { crashes: 5 });
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut policy = CrashPolicy::default();
        let mut t = Instant::now();
        // One crash every 10 s forever: never more than 3 in a 30 s window.
        for _ in 0..100 {
            assert!(matches!(policy.record(t), AfterCrash::Restart(_)));
            t += Duration::from_secs(10);
        }
        // A long quiet spell: the next crash is a first one again.
        t += CRASH_WINDOW;
        assert_eq!(policy.record(t), AfterCrash::Restart(Duration::ZERO));
    }
}
