//! [`Generation::status`]: what the control socket's `status` answers, as `key: value` lines
//! or (`status json`) as one JSON object.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::generation::Generation;
use super::{Phase, StopReason};
use crate::json::Json;

/// What `status` reports, read once for both forms.
struct Status {
    generation: u64,
    pid: u32,
    phase: Phase,
    connections: usize,
    listening: Vec<String>,
    draining: Vec<u32>,
    standby: Option<u32>,
    /// A restart under way: the next generation's pid once it runs.
    restart: Option<Option<u32>>,
    uptime: std::time::Duration,
}

impl Generation {
    /// This generation's state as `key: value` lines (what the control socket's `status`
    /// answers): generation, pid, phase, open connections, the older generations still
    /// draining, and the standby and a restart under way when there are.
    pub fn status(&self) -> String {
        self.status_uncounting(0)
    }

    /// This generation's state as one JSON object (what the control socket's `status json`
    /// answers), for scripts and monitoring. Its members:
    ///
    /// | member | value |
    /// |---|---|
    /// | `generation`, `pid` | numbers |
    /// | `phase` | `"starting"`, `"serving"` or `"draining"` |
    /// | `drain` | `null`, or while draining `{"reason": "handed_over" or "stopping", "successor": pid or null, "deadline_seconds": seconds left}` |
    /// | `connections` | the tracked connections and tasks open (the control socket's own clients not counted) |
    /// | `listening` | the sockets' addresses, as strings |
    /// | `draining_generations` | the pids of older generations still draining |
    /// | `standby` | `null` or `{"pid": pid}` |
    /// | `restart` | `null`, or while a restart is under way `{"pid": the next generation's pid, or null before it runs}` |
    /// | `uptime_seconds` | since this process started (a standby: since it was woken) |
    ///
    /// Members may be added (never removed or changed in meaning): read them by name.
    pub fn status_json(&self) -> String {
        self.status_json_uncounting(0)
    }

    fn read_status(&self, uncounted: usize) -> Status {
        let standby = match self.shared.standby_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        };
        let restart = self
            .shared
            .restart
            .load(Ordering::Relaxed)
            .then(|| Some(self.shared.next_pid.load(Ordering::Relaxed)).filter(|&p| p != 0));
        Status {
            generation: self.shared.number,
            pid: std::process::id(),
            phase: self.phase(),
            connections: self.shared.connections.receiver_count().saturating_sub(uncounted),
            listening: self.registry().addrs().iter().map(ToString::to_string).collect(),
            draining: self.shared.running_ancestors(),
            standby,
            restart,
            uptime: self.shared.startup.started.elapsed(),
        }
    }

    /// [`status`](Self::status), not counting `uncounted` of the tracked connections (the
    /// control socket's own clients).
    pub(crate) fn status_uncounting(&self, uncounted: usize) -> String {
        let s = self.read_status(uncounted);
        let phase = match s.phase {
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
        let draining: Vec<String> = s.draining.iter().map(u32::to_string).collect();
        let standby = match s.standby {
            None => String::new(),
            Some(pid) => format!("standby: pid {pid}\n"),
        };
        let restart = match s.restart {
            None => String::new(),
            Some(None) => "restart: under way (the next generation is starting)\n".to_owned(),
            Some(Some(pid)) => {
                format!("restart: under way (the next generation is pid {pid}, not ready yet)\n")
            }
        };
        format!(
            "generation: {}\npid: {}\nphase: {phase}\nconnections: {}\nlistening: {}\ndraining generations: {}\n{standby}{restart}",
            s.generation,
            s.pid,
            s.connections,
            s.listening.join(", "),
            if draining.is_empty() {
                "none".to_owned()
            } else {
                format!("pid {}", draining.join(", pid "))
            }
        )
    }

    /// [`status_json`](Self::status_json), not counting `uncounted` of the tracked
    /// connections.
    pub(crate) fn status_json_uncounting(&self, uncounted: usize) -> String {
        let s = self.read_status(uncounted);
        let pid = |p: u32| Json::Int(u64::from(p));
        let (phase, drain) = match s.phase {
            Phase::Starting => ("starting", Json::Null),
            Phase::Serving => ("serving", Json::Null),
            Phase::Draining { reason, deadline } => {
                let (why, successor) = match reason {
                    StopReason::Restarted { successor } => ("handed_over", pid(successor)),
                    StopReason::Shutdown => ("stopping", Json::Null),
                };
                let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
                (
                    "draining",
                    Json::Object(vec![
                        ("reason", Json::String(why.into())),
                        ("successor", successor),
                        ("deadline_seconds", Json::Float(left)),
                    ]),
                )
            }
        };
        Json::Object(vec![
            ("generation", Json::Int(s.generation)),
            ("pid", pid(s.pid)),
            ("phase", Json::String(phase.into())),
            ("drain", drain),
            ("connections", Json::Int(s.connections as u64)),
            (
                "listening",
                Json::Array(s.listening.into_iter().map(Json::String).collect()),
            ),
            (
                "draining_generations",
                Json::Array(s.draining.into_iter().map(pid).collect()),
            ),
            (
                "standby",
                s.standby
                    .map_or(Json::Null, |p| Json::Object(vec![("pid", pid(p))])),
            ),
            (
                "restart",
                s.restart.map_or(Json::Null, |next| {
                    Json::Object(vec![("pid", next.map_or(Json::Null, pid))])
                }),
            ),
            ("uptime_seconds", Json::Float(s.uptime.as_secs_f64())),
        ])
        .render()
    }
}
