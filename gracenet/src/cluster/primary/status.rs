//! What the primary's `status` says: the primary, then each worker, as text lines or JSON.

use std::time::{Duration, Instant};

use super::Primary;

// The status names the number of starts at once per core in words.
const _: () = assert!(crate::cluster::machine::STARTS_AT_ONCE_PER_CORE == 2);

/// One worker's line of `status`.
pub(super) struct WorkerRow {
    slot: usize,
    pid: Option<u32>,
    generation: u64,
    phase: &'static str,
    connections: usize,
    accepted: u64,
    requests: u64,
    rss: Option<u64>,
    uptime: Duration,
    restarts: u64,
    recycles: u64,
    last_recycle: Option<&'static str>,
    /// With no worker: how long until the next start (backing off after failures).
    next_start: Option<Duration>,
}

impl Primary {
    /// Each slot's worker as `status` shows it.
    pub(super) fn rows(&self) -> Vec<WorkerRow> {
        let now = Instant::now();
        let aside = self.machine.set_aside();
        self.machine
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                let restarts = self.replaced.get(slot).copied().unwrap_or(0);
                let (recycles, last_recycle) = (s.recycles, s.last_recycle.map(|r| r.name()));
                let Some(w) = s.worker else {
                    return WorkerRow {
                        slot,
                        pid: None,
                        generation: 0,
                        phase: if s.held {
                            "waiting for the first worker to bind the sockets"
                        } else if s.queued {
                            "waiting: two workers per core start at a time"
                        } else {
                            "starting"
                        },
                        connections: 0,
                        accepted: 0,
                        requests: 0,
                        rss: None,
                        uptime: Duration::ZERO,
                        restarts,
                        recycles,
                        last_recycle,
                        next_start: s.restart_at.map(|t| t.saturating_duration_since(now)),
                    };
                };
                let info = self.info.get(&w.pid);
                let phase = if w.killed {
                    "stopping (hung)"
                } else if s.restarting {
                    "restarting"
                } else if let Some(r) = s.recycling {
                    match r {
                        super::RecycleReason::Requests { .. } => "recycling (requests)",
                        super::RecycleReason::Memory { .. } => "recycling (memory)",
                    }
                } else if w.ready && aside.contains(&w.pid) {
                    "serving (silent: its runtime does not run)"
                } else if w.ready && w.cannot_accept {
                    "serving (cannot accept: out of fds)"
                } else if w.ready {
                    "serving"
                } else {
                    "starting"
                };
                WorkerRow {
                    slot,
                    pid: Some(w.pid),
                    generation: info.map_or(0, |i| i.generation),
                    phase,
                    connections: info.map_or(0, |i| i.connections),
                    accepted: info.map_or(0, |i| i.accepted),
                    requests: info.map_or(0, |i| i.requests),
                    rss: info.and_then(|i| i.rss),
                    uptime: info.map_or(Duration::ZERO, |i| now.duration_since(i.since)),
                    restarts,
                    recycles,
                    last_recycle,
                    next_start: None,
                }
            })
            .collect()
    }

    /// The `status` lines: the primary, then one line per worker.
    pub(super) fn status(&self) -> String {
        let mut out = format!(
            "primary: pid {}\nuptime: {} s\nworkers: {}\n",
            self.me,
            self.started.elapsed().as_secs(),
            self.machine.slots.len()
        );
        if let Some(now) = self.in_turn() {
            out.push_str(&format!(
                "new connections: in turns of {} ms, to {} worker(s) at a time (more serve than the {} core(s) they may run on); now: worker {}\n",
                crate::cluster::machine::TURN.as_millis(),
                self.machine.settings.cores.max(1),
                self.machine.settings.cores.max(1),
                now.iter().map(usize::to_string).collect::<Vec<_>>().join(", worker "),
            ));
        }
        if let Some(r) = &self.machine.rollout {
            out.push_str(&format!(
                "rolling restart: {} of {} worker(s) restarted\n",
                r.done,
                self.machine.slots.len()
            ));
        }
        for w in self.rows() {
            out.push_str(&line(&w));
        }
        let draining: Vec<String> = self.machine.retiring.iter().map(u32::to_string).collect();
        out.push_str(&format!(
            "draining: {}\n",
            if draining.is_empty() {
                "none".to_owned()
            } else {
                format!("pid {}", draining.join(", pid "))
            }
        ));
        out
    }

    /// The slots whose turn it is, while workers that share cores take turns at new
    /// connections.
    fn in_turn(&self) -> Option<Vec<usize>> {
        let now = Instant::now();
        let turn = self.machine.steered_slots(now);
        (self.steers() && self.machine.turns.taking && turn.len() < self.machine.eligible_slots(now).len())
            .then_some(turn)
    }

    /// `status json`: the same as one JSON object (`primary`, `uptime_seconds`,
    /// `rolling_restart`, `turns`: the slots whose turn it is or null, `workers`, `draining`); each worker with `slot`, `pid`,
    /// `generation`, `phase`, `connections`, `accepted`, `requests`, `rss_bytes`,
    /// `uptime_seconds`, `restarts`, `recycles` and `last_recycle` (`requests`, `memory` or
    /// null).
    pub(super) fn status_json(&self) -> crate::json::Json {
        use crate::json::Json;
        let workers = self.rows().iter().map(json_row).collect();
        let rollout = self.machine.rollout.as_ref().map_or(Json::Null, |r| {
            Json::Object(vec![
                ("restarted", Json::Int(r.done as u64)),
                ("of", Json::Int(self.machine.slots.len() as u64)),
            ])
        });
        Json::Object(vec![
            ("primary", Json::Int(self.me.into())),
            (
                "uptime_seconds",
                Json::Float(self.started.elapsed().as_secs_f64()),
            ),
            ("rolling_restart", rollout),
            (
                "turns",
                self.in_turn().map_or(Json::Null, |slots| {
                    Json::Array(slots.into_iter().map(|s| Json::Int(s as u64)).collect())
                }),
            ),
            ("workers", Json::Array(workers)),
            (
                "draining",
                Json::Array(
                    self.machine
                        .retiring
                        .iter()
                        .map(|&p| Json::Int(p.into()))
                        .collect(),
                ),
            ),
        ])
    }
}

/// A worker's line of `status`.
fn line(w: &WorkerRow) -> String {
    match w.pid {
        Some(pid) => format!(
            "worker {}: pid {pid}, generation {}, {}, connections {}, accepted {}, requests {}{}, up {} s, restarts {}{}\n",
            w.slot,
            w.generation,
            w.phase,
            w.connections,
            w.accepted,
            w.requests,
            w.rss.map_or_else(String::new, |b| format!(
                ", memory {:.1} MiB",
                b as f64 / 1048576.0
            )),
            w.uptime.as_secs(),
            w.restarts,
            recycled(w),
        ),
        None => format!(
            "worker {}: none ({}), restarts {}{}\n",
            w.slot,
            match w.next_start {
                Some(d) => format!(
                    "starting again in {:.1} s, backing off after failures",
                    d.as_secs_f64()
                ),
                None => w.phase.to_owned(),
            },
            w.restarts,
            recycled(w)
        ),
    }
}

/// A worker's object in `status json`.
fn json_row(w: &WorkerRow) -> crate::json::Json {
    use crate::json::Json;
    Json::Object(vec![
        ("slot", Json::Int(w.slot as u64)),
        ("pid", w.pid.map_or(Json::Null, |p| Json::Int(p.into()))),
        ("generation", Json::Int(w.generation)),
        ("phase", Json::String(w.phase.to_owned())),
        ("connections", Json::Int(w.connections as u64)),
        ("accepted", Json::Int(w.accepted)),
        ("requests", Json::Int(w.requests)),
        ("rss_bytes", w.rss.map_or(Json::Null, Json::Int)),
        ("uptime_seconds", Json::Float(w.uptime.as_secs_f64())),
        ("restarts", Json::Int(w.restarts)),
        ("recycles", Json::Int(w.recycles)),
        (
            "last_recycle",
            w.last_recycle.map_or(Json::Null, |r| Json::String(r.to_owned())),
        ),
        (
            "next_start_seconds",
            w.next_start.map_or(Json::Null, |d| Json::Float(d.as_secs_f64())),
        ),
    ])
}

/// `, recycled N (last: requests)` once the slot has recycled, else nothing.
fn recycled(w: &WorkerRow) -> String {
    match (w.recycles, w.last_recycle) {
        (0, _) | (_, None) => String::new(),
        (n, Some(reason)) => format!(", recycled {n} (last: {reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest row there can be: every number at its widest, the longest phase.
    fn widest(slot: usize) -> WorkerRow {
        WorkerRow {
            slot,
            pid: Some(u32::MAX),
            generation: u64::MAX,
            phase: "serving (silent: its runtime does not run)",
            connections: usize::MAX,
            accepted: u64::MAX,
            requests: u64::MAX,
            rss: Some(u64::MAX),
            uptime: Duration::from_secs(u64::MAX),
            restarts: u64::MAX,
            recycles: u64::MAX,
            last_recycle: Some("requests"),
            next_start: Some(Duration::from_secs(u64::MAX)),
        }
    }

    #[test]
    fn the_status_of_the_largest_cluster_fits_in_what_a_control_client_reads() {
        let max = crate::cluster::MAX_WORKERS;
        let rows: Vec<WorkerRow> = (0..max).map(widest).collect();
        let text: usize = rows.iter().map(|w| line(w).len()).sum();
        let json = crate::json::Json::Array(rows.iter().map(json_row).collect())
            .render()
            .len();
        // The head and the draining list (as many pids again, retiring) besides.
        let rest = 4096 + max * ", pid 4294967295".len();
        assert!(text + rest < crate::control::MAX_ANSWER, "text {text} bytes");
        assert!(json + rest < crate::control::MAX_ANSWER, "json {json} bytes");
    }
}
