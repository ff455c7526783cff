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
    let primary: Option<u32> = shared
        .startup
        .supervisor
        .as_ref()
        .and_then(|p| p.to_str())
        .and_then(|p| p.parse().ok());
    let mut primary_gone = false;
    loop {
        ticks.tick().await;
        let connections = shared.connections.receiver_count();
        if let Some((table, slot)) = table
            && *shared.phase.borrow() == Phase::Serving
        {
            table.report(*slot, connections as u64, balance::now_us());
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + every;
            if let Some(primary) = primary
                && !crate::sys::is_running(primary)
                && !primary_gone
            {
                // Orphaned workers would serve on unsupervised beside a restarted service
                // (their listeners are in its SO_REUSEPORT group): they stop, as a unicorn
                // worker whose master is gone does.
                primary_gone = true;
                tracing::error!(primary, "the cluster's primary is gone: stopping");
                // What it left in its private directory (it was killed: no cleanup): its
                // notify socket; the last worker's inbox to go removes the directory.
                crate::cluster::transfer::primary_gone();
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
