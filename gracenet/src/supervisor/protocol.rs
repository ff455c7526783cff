//! What generations tell their supervisor: systemd's notification messages (`MAINPID=`,
//! `READY=1`, `STOPPING=1`, `STATUS=`), plus two lines of gracenet's own that never reach
//! systemd: the generation's number, and the names of the listening sockets it attaches
//! (`SCM_RIGHTS`), which the supervisor keeps to start a new generation after a crash.

#[cfg(feature = "tokio")]
use crate::{notify::Notifier, process::Handoff};

/// The generation's number.
pub(crate) const GENERATION: &str = "X_GRACE_GENERATION";
/// The `LISTEN_FDNAMES`-style names of the attached sockets, joined by `:`.
pub(crate) const FDS: &str = "X_GRACE_FDS";

/// The generation's PID file (a path), in its "ready" message: the supervisor removes it when
/// it exits after the last generation, if it still names one of its generations that is gone
/// (a generation that crashed, or was killed, could not).
pub(crate) const PID_FILE: &str = "X_GRACE_PID_FILE";
/// The generation's control socket (a path), in its "ready" message: removed by the
/// supervisor when it exits, if it still leads to the socket the supervisor keeps a copy of.
pub(crate) const CONTROL: &str = "X_GRACE_CONTROL";

/// A worker's slot, in its "ready" message (see [`crate::cluster`]).
pub(crate) const WORKER: &str = "X_GRACE_WORKER";
/// A worker's inboxes (`cluster::transfer`), in its "ready" message: `KEY:FD,…`, each
/// listener's key and the inbox's fd number in the worker.
pub(crate) const INBOXES: &str = "X_GRACE_INBOXES";
/// A worker's restart failed (the reason): it still serves.
pub(crate) const RESTART_FAILED: &str = "X_GRACE_RESTART_FAILED";
/// A worker's open connections, in its heartbeat.
pub(crate) const CONNECTIONS: &str = "X_GRACE_CONNECTIONS";

/// The connections a worker has accepted, in its heartbeat.
pub(crate) const ACCEPTED: &str = "X_GRACE_ACCEPTED";

/// The requests a worker has served ([`Generation::count_requests`](crate::Generation::count_requests)),
/// in its heartbeat.
pub(crate) const REQUESTS: &str = "X_GRACE_REQUESTS";

/// A worker's resident memory in bytes, in its heartbeat (absent where it cannot be read).
pub(crate) const RSS: &str = "X_GRACE_RSS";

/// In a worker's heartbeat: its accepts have been failing for lack of resources (out of fds)
/// since its last success (`1`), so new connections are better sent to the others.
pub(crate) const CANNOT_ACCEPT: &str = "X_GRACE_CANNOT_ACCEPT";

/// One notification message, as lines.
#[derive(Debug)]
pub(crate) struct Message {
    lines: Vec<String>,
}

impl Message {
    pub(crate) fn parse(bytes: &[u8]) -> Message {
        Message {
            lines: String::from_utf8_lossy(bytes)
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The value of `KEY=` (the last one, as systemd reads it).
    pub(crate) fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// Whether `KEY=1` is set.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.value(key) == Some("1")
    }

    /// The message for systemd: gracenet's own lines removed, and `MAINPID=` naming
    /// `supervisor`, which is the service's main process throughout.
    pub(crate) fn upstream(&self, supervisor: u32) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| !l.starts_with("X_GRACE_"))
            .map(|l| {
                if l.starts_with("MAINPID=") {
                    format!("MAINPID={supervisor}")
                } else {
                    l.clone()
                }
            })
            .collect()
    }
}

#[cfg(feature = "tokio")]
/// A supervised generation's "ready" message: `lines` plus its number, with its listening
/// sockets attached. Falls back to the plain message (logged) when the sockets cannot be sent,
/// so the supervisor still learns who serves.
pub(crate) fn send_ready(notifier: &Notifier, mut lines: Vec<String>, number: u64, handoff: Handoff) {
    lines.push(format!("{GENERATION}={number}"));
    let names: Vec<&str> = handoff.sockets.iter().map(|(_, n)| n.as_str()).collect();
    let mut with_fds = lines.clone();
    with_fds.push(format!("{FDS}={}", names.join(":")));
    let fds: Vec<_> = handoff
        .sockets
        .iter()
        .map(|(fd, _)| std::os::fd::AsRawFd::as_raw_fd(fd))
        .collect();
    if let Err(e) = notifier.send_with_fds(&with_fds, &fds) {
        crate::log::warn!(
            generation = number,
            error = %e,
            "cannot give the supervisor a copy of the listening sockets: it cannot restart this generation after a crash"
        );
        notifier.send(&lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_never_sees_gracenets_lines_and_hears_the_supervisor_as_main_pid() {
        let m = Message::parse(b"MAINPID=42\nREADY=1\nX_GRACE_GENERATION=3\nX_GRACE_FDS=a:b\nSTATUS=ok");
        assert_eq!(m.value("MAINPID"), Some("42"));
        assert_eq!(m.value(GENERATION), Some("3"));
        assert!(m.flag("READY"));
        assert!(!m.flag("STOPPING"));
        assert_eq!(m.upstream(7), vec!["MAINPID=7", "READY=1", "STATUS=ok"]);
    }
}
