//! What the lifecycle tells systemd (`sd_notify`), worded in one place: the lines for each
//! moment, sent by [`Shared::notify`](super::shared::Shared::notify) (or, under a
//! supervisor, with the sockets' copy).

use std::time::Duration;

use crate::notify::monotonic_usec;

/// A generation is serving: `MAINPID` first (systemd, or the supervisor, must know the new
/// main process before the old one exits), `READY=1`, and what it serves.
pub(super) fn serving(number: u64, pid: u32, addrs: &str) -> Vec<String> {
    vec![
        format!("MAINPID={pid}"),
        "READY=1".into(),
        format!("STATUS=Generation {number} serving {addrs} with pid {pid}"),
    ]
}

/// This generation handed over to generation `next`, pid `pid`: said by the old main process,
/// the one systemd takes notifications from with `NotifyAccess=main` (it discards the new
/// process's own `MAINPID=`, and would end the service when the old one exits).
pub(super) fn handed_over(next: u64, pid: u32) -> Vec<String> {
    vec![
        format!("MAINPID={pid}"),
        "READY=1".into(),
        format!("STATUS=Generation {next} serving with pid {pid}"),
    ]
}

/// A restart began: generation `next` is being started.
pub(super) fn reloading(next: u64) -> Vec<String> {
    vec![
        "RELOADING=1".into(),
        format!("MONOTONIC_USEC={}", monotonic_usec()),
        format!("STATUS=Restarting: starting generation {next}"),
    ]
}

/// A restart failed (`why`): systemd's "reloading" ends, generation `number` still serves.
pub(super) fn restart_failed(number: u64, pid: u32, why: &str) -> Vec<String> {
    vec![
        "READY=1".into(),
        format!("STATUS=Restart failed: {why}; generation {number} still serving with pid {pid}"),
    ]
}

/// A final stop began: generation `number` drains `connections` for at most `timeout`, and
/// asks systemd to wait that long (its `TimeoutStopSec` may be shorter).
pub(super) fn stopping(number: u64, connections: usize, timeout: Duration) -> Vec<String> {
    vec![
        "STOPPING=1".into(),
        format!(
            "EXTEND_TIMEOUT_USEC={}",
            (timeout + Duration::from_secs(5)).as_micros()
        ),
        format!(
            "STATUS=Stopping: generation {number} draining {connections} connection(s) or task(s), at most {:.0} s",
            timeout.as_secs_f64()
        ),
    ]
}
