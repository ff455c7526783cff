//! The supervisor's signals, as flags plus one wake-up fd its poll loop waits on; and the
//! blocking that keeps them from killing it (their default action) while it starts.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// The signals the supervisor handles whose default action ends a process: one that arrives
/// before the handlers are in place must wait (blocked, pending), not kill it.
const HELD: [Signal; 4] = [Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn held() -> SigSet {
    let mut set = SigSet::empty();
    for signal in HELD {
        set.add(signal);
    }
    set
}

/// Blocks [`HELD`] in the calling thread, and so in every thread it starts from now on (a new
/// thread inherits its creator's mask): from here a signal waits, pending, for
/// [`release`]. The mask is per thread and `execve` keeps it, but every child gracenet starts
/// resets it before its `execve`.
pub(crate) fn hold() {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&held()), None) {
        // Only EINVAL, for a bad `how`: not reachable with the constant above.
        tracing::warn!(error = %e, "cannot block the supervisor's signals while it starts");
    }
}

/// Unblocks [`HELD`] in the calling thread: a signal that waited is delivered now (to the
/// handlers, once [`SignalPipe::install`] ran). Threads started while they were held keep
/// them blocked, so the handlers run on this thread, the supervisor's own.
pub(crate) fn release() {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&held()), None) {
        tracing::warn!(error = %e, "cannot unblock the supervisor's signals");
    }
}

/// Signals that arrived since the last [`take`](SignalPipe::take), readable by `poll`.
pub(crate) struct SignalPipe {
    wake: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl SignalPipe {
    /// Handles `signals` from now on (their default actions no longer apply).
    pub(crate) fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for &signal in signals {
            let flag = Arc::new(AtomicBool::new(false));
            // The flag is set before the wake-up byte is written: a wake-up always finds it.
            signal_hook::flag::register(signal, flag.clone())?;
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
            flags.push((signal, flag));
        }
        Ok(SignalPipe { wake: read, flags })
    }

    /// The fd that becomes readable when a signal arrives.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The signals that arrived (each once, however often it came), in the order given to
    /// [`install`](Self::install).
    pub(crate) fn take(&mut self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(signal, _)| *signal)
            .collect()
    }
}
