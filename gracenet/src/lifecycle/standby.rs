//! Waking the standby ([`GenerationBuilder::standby`](super::GenerationBuilder::standby)):
//! what it was started from, and the one step that wakes it, shared by the lifecycle's driver
//! and the signal thread. Whether to wake it is the machine's decision (`Action::WakeStandby`,
//! for a restart asked while it waits); the driver puts the wake handle here exactly while the
//! machine would decide so for a `SIGUSR2`, so the signal thread performs that same wake the
//! moment the signal arrives, without waiting for the driver's task to be polled (on a busy
//! worker: 1-5 ms, measured). The driver then performs the machine's `WakeStandby`, finding
//! it done, and reports what came of it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::{Executable, FileIdentity};
use crate::registry::SocketRegistry;

/// How long a woken standby has to acknowledge the wake
/// ([`WAKE_ACK`](crate::readiness::WAKE_ACK)) before it is let go and a fresh process is
/// started for the same restart. The acknowledgement is the standby's first step once it runs
/// (a `read` returning, a one-byte `write`: microseconds), and it runs at normal priority by
/// then; what the bound must cover is a runnable process waiting for a CPU on a loaded machine,
/// or faulting a swapped-out page back in. Linux's fair scheduler serves every runnable task
/// of a CPU within its period, 24 ms by default and 3 ms more per task beyond eight: 250 ms is
/// some eighty runnable tasks per CPU. Shorter risks letting a healthy standby go (the cost:
/// an ordinary fresh start); longer is what a stopped standby adds to its restart.
pub(crate) const WAKE_ACK_TIMEOUT: Duration = Duration::from_millis(250);

/// The standby's wake handle, while there is one (`None` otherwise). The driver puts it here
/// when the standby starts and takes it out before it lets the standby go (so its pid is never
/// touched once reaped) or takes it as the next generation.
pub(crate) type SharedStandby = Arc<Mutex<Option<StandbyWake>>>;

/// What a standby was started from, and its end of the channel.
#[derive(Debug)]
pub(crate) struct StandbyWake {
    pub pid: u32,
    /// Started at idle CPU priority: returned to normal when woken.
    pub idle: bool,
    /// The program file's identity when it was started.
    pub program: Option<FileIdentity>,
    /// How many sockets it was handed.
    pub sockets: usize,
    /// A copy of this side of the channel, for the wake byte.
    pub channel: OwnedFd,
    /// When it was woken (by the signal thread, or the driver), once it has been: its
    /// acknowledgement is due [`WAKE_ACK_TIMEOUT`] later.
    pub woken: Option<Instant>,
}

impl StandbyWake {
    /// Wakes it if it is still what a process started now would be: back at normal priority,
    /// then the wake byte. Otherwise (or once woken) says why not, and leaves it as it is.
    pub(crate) fn wake(&mut self, registry: &SocketRegistry) -> Result<(), &'static str> {
        if self.woken.is_some() {
            return Ok(());
        }
        if crate::sys::has_exited(self.pid) {
            return Err("it has exited");
        }
        let program = Executable::current().ok().and_then(Executable::identity);
        if program.is_none() || program != self.program {
            return Err("the program file has changed since it started");
        }
        if registry.len() != self.sockets {
            return Err("this generation has opened sockets since it started");
        }
        if self.idle {
            // Its remaining start is the restart's now: at normal priority before it runs.
            if let Err(e) = crate::sys::leave_idle_priority(Some(self.pid)) {
                crate::log::warn!(standby = self.pid, error = %e, "{}", super::messages::NOT_FROM_IDLE);
            }
        }
        loop {
            match nix::unistd::write(self.channel.as_fd(), &[crate::readiness::WAKE]) {
                Ok(1) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return Err("it cannot be woken"),
            }
        }
        self.woken = Some(Instant::now());
        Ok(())
    }
}

/// For the signal thread: wakes the standby, if there is one and it is still good, at the
/// `SIGUSR2` itself. Whatever it finds, the driver decides the restart as always.
pub(crate) fn wake_at_signal(standby: &SharedStandby, registry: &SocketRegistry) {
    let mut slot = standby.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = slot.as_mut() {
        // A standby that cannot be woken is the driver's to let go, with the reason.
        let _ = handle.wake(registry);
    }
}
