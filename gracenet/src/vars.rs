//! The environment variables gracenet reads and sets, by name.
//!
//! The inherited ones (`LISTEN_*`, `GRACE_READY_FD`, `GRACE_GENERATION`, `GRACE_IDLE_START`,
//! `GRACE_STANDBY`)
//! are read once, when the process registry is first built ([`crate::registry::registry`]),
//! and removed from the environment then.

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
/// Set in every generation a supervisor starts (to the supervisor's pid), so a generation
/// never becomes a supervisor itself.
pub const GRACE_SUPERVISOR: &str = "GRACE_SUPERVISOR";
/// The variable systemd sets to its notification socket: a path, or `@name` (abstract).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The first inherited fd: 0, 1 and 2 are stdin, stdout and stderr.
pub const FIRST_INHERITED_FD: RawFd = 3;
