//! [`Generation::status`]: what the control socket's `status` answers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::generation::Generation;
use super::{Phase, StopReason};

impl Generation {
    /// This generation's state as `key: value` lines (what the control socket's `status`
    /// answers): generation, pid, phase, open connections, and the older generations still
    /// draining.
    pub fn status(&self) -> String {
        self.status_uncounting(0)
    }

    /// [`status`](Self::status), not counting `uncounted` of the tracked connections (the
    /// control socket's own clients).
    pub(crate) fn status_uncounting(&self, uncounted: usize) -> String {
        let phase = match self.phase() {
            Phase::Starting => "starting".to_owned(),
            Phase::Serving => "serving".to_owned(),
            Phase::Draining { reason, deadline } => format!(
                "draining ({}, at most {:.0} s more)",
                match reason {
                    StopReason::Restarted { successor } => format!("handed over to pid {successor}"),
                    StopReason::Shutdown => "stopping".to_owned(),
                },
                deadline.saturating_duration_since(Instant::now()).as_secs_f64()
            ),
        };
        let draining: Vec<String> = self
            .shared
            .running_ancestors()
            .iter()
            .map(u32::to_string)
            .collect();
        let addrs: Vec<String> = self.registry().addrs().iter().map(ToString::to_string).collect();
        let standby = match self.shared.standby_pid.load(Ordering::Relaxed) {
            0 => String::new(),
            pid => format!("standby: pid {pid}\n"),
        };
        format!(
            "generation: {}\npid: {}\nphase: {phase}\nconnections: {}\nlistening: {}\ndraining generations: {}\n{standby}",
            self.shared.number,
            std::process::id(),
            self.shared.connections.receiver_count().saturating_sub(uncounted),
            addrs.join(", "),
            if draining.is_empty() {
                "none".to_owned()
            } else {
                format!("pid {}", draining.join(", pid "))
            }
        )
    }
}
