//! The environment variables gracenet reads and sets, by name.
//!
//! The inherited ones (`LISTEN_*`, `GRACE_READY_FD`, `GRACE_GENERATION`, `GRACE_IDLE_START`,
//! `GRACE_STANDBY`, `GRACE_RESTARTS`)
//! are read once, when the process registry is first built ([`crate::registry()`]),
//! and removed from the environment then, when that is sound (only while the process has one
//! thread: a `#[tokio::main]` program already runs its workers and keeps them).
//!
//! Whatever this process inherited, a process gracenet starts never inherits these: every
//! variable in [`OWNED`] is written for each child, set to what that child is, or removed
//! ([`NextProcess::spawn`](crate::process::NextProcess::spawn)).

use std::os::fd::RawFd;

/// How many fds were passed, starting at fd 3 (systemd's `sd_listen_fds` protocol).
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The pid the fds are meant for; when set and not ours, the fds are left alone.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Colon-separated names of the fds, one per fd (systemd's `FileDescriptorName=`).
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The fd number of the channel to the generation that started this process (one end of a
/// Unix socket pair; a pipe's write end from older versions): the child writes one byte to it
/// when serving (or `X` and a reason when it refuses), and reads handed-over state from it.
pub const GRACE_READY_FD: &str = "GRACE_READY_FD";
/// This process's generation: 1 for the first, one more per restart.
pub const GRACE_GENERATION: &str = "GRACE_GENERATION";
/// The pids of the older generations that may still be draining, comma-separated, set by
/// the generation that starts the next: the control socket's `status` lists those still
/// running.
pub const GRACE_ANCESTORS: &str = "GRACE_ANCESTORS";
/// Set (to `1`) by a generation that started this process at idle CPU priority
/// (`SCHED_IDLE`): this process returns every thread to the normal policy when it is ready.
/// Read and removed with the other inherited variables.
pub const GRACE_IDLE_START: &str = "GRACE_IDLE_START";
/// Set (to `1`) by a generation that starts this process ahead of the next restart, as its
/// standby ([`GenerationBuilder::standby`](crate::GenerationBuilder::standby)): this process
/// waits, in its first call into gracenet, until that generation wakes it for a restart, and
/// exits quietly if the generation lets it go instead. Read and removed with the other
/// inherited variables.
pub const GRACE_STANDBY: &str = "GRACE_STANDBY";
/// The restart counts of the generations before (`result:count,…`), set by a generation
/// built with the `metrics` feature for the next one, which counts on from them
/// (`grace_restarts_total`, see [`crate::metrics`]). Read and removed with the other inherited
/// variables; an entry that cannot be read is skipped.
pub const GRACE_RESTARTS: &str = "GRACE_RESTARTS";
/// Set in every generation a supervisor starts (to the supervisor's pid), so a generation
/// never becomes a supervisor itself.
pub const GRACE_SUPERVISOR: &str = "GRACE_SUPERVISOR";
/// Set in every worker a cluster's primary starts (to the worker's slot, from 0), and passed
/// on by each worker to its successor: a worker says its slot when it is ready, leaves the
/// control socket and the PID file to the primary, and sends heartbeats
/// ([`gracenet::cluster`](crate::cluster)).
pub const GRACE_WORKER: &str = "GRACE_WORKER";
/// How often a worker sends its heartbeat to the primary, in milliseconds; set with
/// [`GRACE_WORKER`].
pub const GRACE_HEARTBEAT_MS: &str = "GRACE_HEARTBEAT_MS";
/// The fd number, in the primary's process, of the cluster's load table (shared memory a
/// worker opens through `/proc` to publish its open connections; see
/// `gracenet::cluster`); set with [`GRACE_WORKER`].
pub const GRACE_LOAD_FD: &str = "GRACE_LOAD_FD";
/// Set (to `1`) by a cluster's primary in a worker it starts when the cluster's listeners
/// exist but the primary has no copy of them to hand over (its first worker sent none): a
/// TCP listener the worker binds itself joins their `SO_REUSEPORT` group at once. Without
/// it, a worker binds a new TCP listener alone first (failing with "address in use" if
/// anything listens there, a second cluster on the same address included), and only then
/// opens it to its primary's siblings; set with [`GRACE_WORKER`].
pub const GRACE_REUSEPORT_JOIN: &str = "GRACE_REUSEPORT_JOIN";
/// The fd number of the cluster's secrets in this process: a sealed, read-only memory file
/// the primary makes once (random bytes of its own, and any the application gave it) and
/// hands to every worker it starts, each worker handing it on to its successor
/// (`gracenet::cluster::secret`). Passed as an fd, never as a value: a variable's value is
/// copied into every process the program starts and can be read in `/proc/PID/environ`.
pub const GRACE_SECRET_FD: &str = "GRACE_SECRET_FD";
/// The variable systemd sets to its notification socket: a path, or `@name` (abstract).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Every variable gracenet owns: [`NextProcess::spawn`](crate::process::NextProcess::spawn)
/// sets each for the child it starts (to the value given with
/// [`NextProcess::env`](crate::process::NextProcess::env), or to the sockets it hands for the
/// `LISTEN_*` three) or removes it, so nothing of this process's own start (a `GRACE_STANDBY=1`
/// a woken standby could not remove, say) passes to the next.
///
/// [`NOTIFY_SOCKET`] is not here: it is systemd's, meant for every process of the service, and
/// a [`NextProcess`](crate::process::NextProcess) an application starts passes it on as it
/// finds it. The restart lifecycle writes it too, to the socket the generation itself reports
/// to: an application that unset it after gracenet read it (`sd_notify`'s
/// `unset_environment`) still has a next generation that reports.
pub const OWNED: &[&str] = &[
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    GRACE_READY_FD,
    GRACE_GENERATION,
    GRACE_ANCESTORS,
    GRACE_IDLE_START,
    GRACE_STANDBY,
    GRACE_RESTARTS,
    GRACE_SUPERVISOR,
    GRACE_WORKER,
    GRACE_HEARTBEAT_MS,
    GRACE_LOAD_FD,
    GRACE_REUSEPORT_JOIN,
    GRACE_SECRET_FD,
];

/// The first inherited fd: 0, 1 and 2 are stdin, stdout and stderr.
pub const FIRST_INHERITED_FD: RawFd = 3;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable this file names (each `pub const NAME: &str = "..."`), read from its
    /// source: a variable added later without a place in [`OWNED`] fails here.
    fn declared() -> Vec<String> {
        include_str!("vars.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split_once(": &str = \""))
            .filter_map(|(_, rest)| rest.split_once('"').map(|(value, _)| value.to_owned()))
            .collect()
    }

    #[test]
    fn owned_covers_every_variable_but_systemds_notify_socket() {
        let declared = declared();
        assert!(
            declared.len() >= 10,
            "the source scan found too few: {declared:?}"
        );
        for var in &declared {
            let owned = OWNED.contains(&var.as_str());
            assert_eq!(
                owned,
                var != NOTIFY_SOCKET,
                "{var}: every gracenet variable is written for each child (in OWNED); only systemd's NOTIFY_SOCKET is not"
            );
        }
        assert_eq!(
            OWNED.len(),
            declared.len() - 1,
            "OWNED names a variable twice: {OWNED:?}"
        );
    }
}
