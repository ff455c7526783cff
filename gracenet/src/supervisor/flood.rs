//! A per-sender limit on the notifications a supervisor or a cluster's primary handles: a
//! process that floods the notify socket (a bug, a loop, a hostile descendant) costs a bounded
//! amount of work and of log lines, and the others' messages still count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many messages one sender may have handled per [`WINDOW`]: far above what gracenet's
/// own processes send (a heartbeat every 20 ms at the most, a few lifecycle messages).
pub(crate) const PER_SENDER: u32 = 200;

/// The window a sender's messages are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The most senders tracked at once; beyond, the quiet ones are forgotten first.
const MAX_SENDERS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    handled: u32,
    suppressed: u64,
}

/// The messages each sender had handled in its current window, and those left unhandled.
#[derive(Debug, Default)]
pub(crate) struct FloodGate {
    senders: HashMap<u32, Window>,
}

impl FloodGate {
    /// Whether a message from `sender` is to be handled. One beyond [`PER_SENDER`] in a
    /// window is not (counted, to be reported by [`take_reports`](Self::take_reports)).
    pub(crate) fn admit(&mut self, sender: u32, now: Instant) -> bool {
        if self.senders.len() >= MAX_SENDERS && !self.senders.contains_key(&sender) {
            self.senders.retain(|_, w| w.suppressed > 0);
            if self.senders.len() >= MAX_SENDERS {
                // Thousands of flooding senders at once: the new one waits its turn.
                return false;
            }
        }
        let window = self.senders.entry(sender).or_insert(Window {
            start: now,
            handled: 0,
            suppressed: 0,
        });
        if now.duration_since(window.start) >= WINDOW && window.suppressed == 0 {
            *window = Window {
                start: now,
                handled: 0,
                suppressed: 0,
            };
        }
        if window.handled < PER_SENDER {
            window.handled += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// The senders whose window has ended with messages left unhandled, and how many: one
    /// report per sender per window, to be logged. Ended windows are forgotten.
    pub(crate) fn take_reports(&mut self, now: Instant) -> Vec<(u32, u64)> {
        let mut reports = Vec::new();
        self.senders.retain(|&pid, w| {
            if now.duration_since(w.start) < WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                reports.push((pid, w.suppressed));
            }
            false
        });
        reports.sort_unstable();
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_sender_is_limited_per_window_and_reported_once_others_unaffected() {
        let mut gate = FloodGate::default();
        let t = Instant::now();
        let admitted = (0..10_000).filter(|_| gate.admit(7, t)).count();
        assert_eq!(admitted, PER_SENDER as usize);
        assert!(gate.admit(8, t), "another sender is not held back");
        assert!(gate.take_reports(t).is_empty(), "the window has not ended");
        let later = t + WINDOW;
        assert_eq!(
            gate.take_reports(later),
            vec![(7, 10_000 - u64::from(PER_SENDER))]
        );
        assert!(gate.take_reports(later).is_empty(), "reported once");
        assert!(gate.admit(7, later), "a new window");
    }
}
