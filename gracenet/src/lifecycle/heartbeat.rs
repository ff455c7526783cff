//! A cluster worker's sign of life: `WATCHDOG=1` to the primary at the interval it was given,
//! sent from this generation's tokio runtime, so a runtime that stops making progress (a
//! deadlock, a task that blocks every worker thread, `SIGSTOP`) falls silent and the primary
//! replaces the worker ([`crate::cluster`]).

use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::supervisor::protocol::CONNECTIONS;

/// Sends a heartbeat every `every`, with the open connections (for the primary's `status`),
/// for as long as the process runs.
pub(super) async fn run(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let connections = shared.connections.receiver_count();
        shared.notify(&["WATCHDOG=1".to_owned(), format!("{CONNECTIONS}={connections}")]);
    }
}
