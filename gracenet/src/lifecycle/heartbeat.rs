//! A cluster worker's sign of life: `WATCHDOG=1` to the primary at the interval it was given,
//! sent from this generation's tokio runtime, so a runtime that stops making progress (a
//! deadlock, a task that blocks every worker thread, `SIGSTOP`) falls silent and the primary
//! replaces the worker ([`crate::cluster`]). More often, while serving, it stamps the
//! cluster's load table with its open connections (`cluster::balance`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Phase;
use super::shared::Shared;
use crate::cluster::balance;
use crate::supervisor::protocol::{ACCEPTED, CANNOT_ACCEPT, CONNECTIONS, REQUESTS, RSS};

/// Sends a heartbeat every `every`, with the open and accepted connections, the requests
/// served and the resident memory (for the primary's `status` and its recycling), for as
/// long as the process runs. The memory is read here, by the worker, rather than by the
/// primary: one read of `/proc/self/status` per heartbeat, and the primary, which serves
/// every worker from one thread, opens no file per worker for it.
pub(super) async fn run(shared: Arc<Shared>, every: Duration) {
    let table = balance::worker_table();
    let tick = if table.is_some() {
        every.min(balance::STAMP_EVERY)
    } else {
        every
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_beat = Instant::now();
    let mut primary: Option<WatchedPrimary> = shared
        .startup
        .supervisor
        .as_ref()
        .and_then(|p| p.to_str())
        .and_then(|p| p.parse().ok())
        .map(WatchedPrimary::new);
    let mut primary_gone = false;
    loop {
        ticks.tick().await;
        let connections = shared.connections.receiver_count();
        if let Some((table, slot)) = table
            && *shared.phase.borrow() == Phase::Serving
        {
            let accepted = shared.accepted.load(Ordering::Relaxed);
            table.report(*slot, connections as u64, Some(accepted), balance::now_us());
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + every;
            if let Some(watched) = &mut primary
                && !primary_gone
                && watched.is_gone()
            {
                let primary = watched.pid;
                // Orphaned workers would serve on unsupervised beside a restarted service
                // (their listeners are in its SO_REUSEPORT group): they stop, as a unicorn
                // worker whose master is gone does.
                primary_gone = true;
                crate::log::error!(primary, "the cluster's primary is gone: stopping");
                // What it left in its private directory (it was killed: no cleanup): its
                // notify socket; the last worker's inbox to go removes the directory.
                crate::cluster::transfer::primary_gone();
                if let Some(notifier) = &shared.notifier {
                    // Its notify socket went with it: the drain's messages go nowhere.
                    notifier.receiver_gone();
                }
                let _ = shared.requests.send(super::signals::Request::Stop {
                    cause: super::machine::StopCause::Call,
                    sender: None,
                });
            }
            let accepted = shared.accepted.load(Ordering::Relaxed);
            if let Some(notifier) = &shared.notifier {
                // Never waits: a primary that stopped reading (SIGSTOP) must not stop this
                // worker's runtime; a heartbeat lost so is a late one.
                let mut lines = vec![
                    "WATCHDOG=1".to_owned(),
                    format!("{CONNECTIONS}={connections}"),
                    format!("{ACCEPTED}={accepted}"),
                    format!("{REQUESTS}={}", shared.served.0.load(Ordering::Relaxed)),
                ];
                if let Some(rss) = crate::sys::resident_bytes() {
                    lines.push(format!("{RSS}={rss}"));
                }
                // Said until an fd is free again (then the listener's next accept succeeds,
                // or nothing waits for one).
                if shared.cannot_accept.load(Ordering::Relaxed) {
                    if std::fs::File::open("/dev/null").is_ok() {
                        shared.cannot_accept.store(false, Ordering::Relaxed);
                    } else {
                        lines.push(format!("{CANNOT_ACCEPT}=1"));
                    }
                }
                notifier.try_send(&lines);
            }
        }
    }
}

/// The primary a worker reports to, as this worker first saw it: its pid and when it
/// started, so that once it is gone and its pid names another process, the worker does not
/// take that one for its primary (and serve on unsupervised).
#[derive(Debug, Clone, Copy)]
struct WatchedPrimary {
    pid: u32,
    /// When it started (clock ticks since boot), if known.
    start: Option<u64>,
}

impl WatchedPrimary {
    /// Watches `pid`, this worker's primary. A process there that started after this one is
    /// not the primary that started it (the primary ended and its pid was reused before this
    /// first look): it is watched as one already gone.
    fn new(pid: u32) -> WatchedPrimary {
        let start = crate::sys::running_start(pid).flatten();
        let after_us = match (start, crate::sys::start_time(std::process::id())) {
            (Some(theirs), Some(ours)) => theirs > ours,
            _ => false,
        };
        WatchedPrimary {
            pid,
            // No process started after every other: a start that never matches.
            start: if after_us { Some(u64::MAX) } else { start },
        }
    }

    /// Whether the primary is gone: its pid names no running process, or one that started at
    /// another time than the primary did. When a start time cannot be read (this worker out of
    /// fds, `/proc` missing) the pid alone decides; the first one read is kept.
    fn is_gone(&mut self) -> bool {
        match crate::sys::running_start(self.pid) {
            None => true,
            Some(Some(now)) => *self.start.get_or_insert(now) != now,
            Some(None) => false,
        }
    }
}

#[cfg(all(test, target_os = "linux", not(gracenet_portable)))]
mod tests {
    use super::*;

    #[test]
    fn a_primary_whose_pid_now_names_another_process_is_gone() {
        /// Killed and reaped however the test ends.
        struct Child(std::process::Child);
        impl Drop for Child {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        // A process that started after this one (start times count clock ticks: one started
        // in the same tick as this test is spawned again, for at most 5 s).
        let ours = crate::sys::start_time(std::process::id()).expect("our start time");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut child = loop {
            let child = Child(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn sleep"),
            );
            if crate::sys::start_time(child.0.id()).is_some_and(|t| t > ours)
                || std::time::Instant::now() > deadline
            {
                break child;
            }
        };
        let pid = child.0.id();
        let start = crate::sys::start_time(pid).expect("its start time");
        // Seen when it started: there while that process runs.
        let mut same = WatchedPrimary {
            pid,
            start: Some(start),
        };
        assert!(!same.is_gone(), "the process it first saw still runs");
        // The pid now names a process that started at another time: not the primary.
        let mut reused = WatchedPrimary {
            pid,
            start: Some(start.wrapping_sub(1)),
        };
        assert!(
            reused.is_gone(),
            "a pid whose start time differs is another process"
        );
        // A process that started after this worker is not the primary that started it.
        assert!(
            WatchedPrimary::new(pid).is_gone(),
            "a pid that started after this process"
        );
        let parent = std::os::unix::process::parent_id();
        assert!(
            !WatchedPrimary::new(parent).is_gone(),
            "this process's parent started before it"
        );
        child.0.kill().expect("kill");
        child.0.wait().expect("wait");
        assert!(same.is_gone(), "ended");
    }
}
