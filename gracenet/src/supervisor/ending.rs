//! How generations end under the supervisor, and how the supervisor ends them: a crash and
//! its restart on the same sockets (or giving up), a stop that reaches every process, and the
//! kill of what is left after it.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::crashes::AfterCrash;
use super::{KILL_AFTER, Supervisor, describe, forward, signal_pid};

impl Supervisor {
    pub(super) fn generation_ended(&mut self, pid: u32, code: Option<i32>) {
        let shown = code.map_or_else(|| "status unknown".to_owned(), describe);
        self.strays.retain(|&p| p != pid);
        if self.serving.as_ref().is_some_and(|s| s.pid == pid) {
            // A successor says so before its parent can exit (it is told only after): its
            // message is here now if there is one, even when it came after the last read.
            self.read_notifications();
        }
        let Some(serving) = self.serving.take_if(|s| s.pid == pid) else {
            crate::log::debug!(supervisor = self.me, pid, status = %shown, "a previous generation ended");
            return;
        };
        let n = serving.number;
        let by_forwarded_signal =
            code.is_some_and(|c| serving.forwarded.iter().any(|&s| c == 128 + s as i32));
        if self.stopping.is_some() || serving.stopping || code == Some(0) || by_forwarded_signal {
            crate::log::info!(
                supervisor = self.me,
                generation = n,
                pid,
                status = %shown,
                "the serving generation ended"
            );
            if !self.gave_up {
                self.exit_code = code.unwrap_or(0);
            }
            return;
        }
        crate::metrics::supervisor_crash();
        if !serving.ready && n == 1 {
            crate::log::error!(
                supervisor = self.me,
                generation = n,
                pid,
                status = %shown,
                "the first generation exited before it was ready: not restarting it"
            );
            self.exit_code = code.unwrap_or(1);
            return;
        }
        // Its successors still starting (orphans now) are stopped: the restart replaces it.
        crate::log::error!(
            supervisor = self.me,
            generation = n,
            pid,
            status = %shown,
            "the serving generation died with no successor"
        );
        self.stop_orphans(pid);
        self.crashed(n + 1, code);
    }

    /// Counts a crash (logged by the caller; generation `next` would replace it) and
    /// schedules the replacement, or gives up.
    pub(super) fn crashed(&mut self, next: u64, code: Option<i32>) {
        match self.crashes.record(Instant::now()) {
            AfterCrash::Restart(delay) => {
                crate::log::error!(
                    supervisor = self.me,
                    next,
                    delay_ms = delay.as_millis() as u64,
                    "crash restart: starting a new generation on the same sockets"
                );
                self.next_number = next;
                self.restart_at = Some(Instant::now() + delay);
            }
            AfterCrash::GiveUp { crashes } => {
                crate::log::error!(
                    supervisor = self.me,
                    crashes,
                    window_s = self.crashes.window().as_secs(),
                    "too many crashes: giving up"
                );
                self.exit_code = code.filter(|&c| c != 0).unwrap_or(1);
                self.gave_up = true;
                self.stop_all(Signal::SIGTERM, "giving up");
            }
        }
    }

    pub(super) fn restart_after_crash(&mut self) {
        let number = self.next_number;
        match self.spawn(number) {
            Ok(pid) => {
                crate::metrics::supervisor_respawn();
                if let Some(up) = &self.upstream {
                    up.send(&[format!(
                        "STATUS=Restarted after a crash: generation {number} starting with pid {pid}"
                    )]);
                }
                crate::log::info!(
                    supervisor = self.me,
                    generation = number,
                    pid,
                    "crash restart: started a new generation"
                );
            }
            Err(e) => {
                crate::log::error!(
                    supervisor = self.me,
                    generation = number,
                    error = %e,
                    "crash restart: cannot start a new generation"
                );
                self.crashed(number, Some(1));
            }
        }
    }

    /// Sends `signal` to every process this one has: the serving generation (as a forwarded
    /// signal), and every child (draining generations, strays, orphans); the ones still
    /// there [`KILL_AFTER`] after the first stop are killed.
    pub(super) fn stop_all(&mut self, signal: Signal, why: &str) {
        if self.stopping.is_none() {
            self.stopping = Some(signal);
            self.held_restart = false;
            self.kill_at = Some(Instant::now() + KILL_AFTER);
            if self.restart_at.take().is_some() {
                crate::log::info!(
                    supervisor = self.me,
                    reason = why,
                    "stopping: not restarting after the crash"
                );
            }
        }
        let serving = self.serving.as_mut().map(|serving| {
            forward(self.me, serving, signal);
            serving.pid
        });
        let mut others: Vec<u32> = crate::sys::children_of(self.me);
        others.extend(self.children.pids());
        others.sort_unstable();
        others.dedup();
        for pid in others.into_iter().filter(|&p| Some(p) != serving) {
            if crate::sys::is_running(pid) {
                crate::log::info!(
                    supervisor = self.me,
                    reason = why,
                    pid,
                    %signal,
                    "stopping: signalling a process other than the serving one"
                );
                signal_pid(self.me, pid, signal);
            }
        }
    }

    /// Kills every process still there once [`KILL_AFTER`] has passed since the stop.
    pub(super) fn kill_the_rest(&mut self) {
        let mut left: Vec<u32> = crate::sys::children_of(self.me);
        left.extend(self.children.pids());
        left.sort_unstable();
        left.dedup();
        for pid in left.into_iter().filter(|&p| crate::sys::is_running(p)) {
            if !self.killed.contains(&pid) {
                crate::log::warn!(
                    supervisor = self.me,
                    pid,
                    after_s = KILL_AFTER.as_secs(),
                    "a process is still there after the stop: killing it"
                );
                self.killed.push(pid);
            }
            signal_pid(self.me, pid, Signal::SIGKILL);
        }
    }
}
