//! The supervisor's signals, as counts of deliveries plus one wake-up fd its poll loop waits
//! on; and the blocking that keeps them from killing it (their default action) while it
//! starts.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

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
        crate::log::warn!(error = %e, "cannot block the supervisor's signals while it starts");
    }
}

/// Unblocks [`HELD`] in the calling thread: a signal that waited is delivered now (to the
/// handlers, once [`SignalPipe::install`] ran). Threads started while they were held keep
/// them blocked, so the handlers run on this thread, the supervisor's own.
pub(crate) fn release() {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&held()), None) {
        crate::log::warn!(error = %e, "cannot unblock the supervisor's signals");
    }
}

/// Unblocks `signals` in the calling thread: the thread whose handlers take them over after
/// [`hold`].
pub(crate) fn unblock(signals: &[Signal]) {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None) {
        crate::log::warn!(error = %e, "cannot unblock the signals this thread handles");
    }
}

/// The most deliveries of one signal a [`take`](SignalPipe::take) returns: beyond two stop
/// requests or a thousand scale steps, more change nothing.
pub(crate) const MAX_PER_TAKE: u32 = 1024;

/// Signals that arrived since the last [`take`](SignalPipe::take), readable by `poll`.
/// Each delivery counts: two `SIGTERM`s before the loop takes them are two stop requests (the
/// second stops at once), three `SIGTTIN`s three more workers. (The kernel itself merges a
/// signal sent while the same one still waits to be delivered: standard signals do not
/// queue.)
pub(crate) struct SignalPipe {
    wake: UnixStream,
    counts: Vec<(i32, Arc<AtomicU32>)>,
}

impl SignalPipe {
    /// Handles `signals` from now on (their default actions no longer apply).
    pub(crate) fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut counts = Vec::new();
        for &signal in signals {
            let count = Arc::new(AtomicU32::new(0));
            let counted = count.clone();
            // SAFETY: the action runs in the signal handler; it only adds to an atomic
            // integer (no allocation, no lock, no I/O), which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(signal, move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                })?;
            }
            // Actions run in the order they were registered: the count is raised before the
            // wake-up byte is written, so a wake-up always finds it.
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
            counts.push((signal, count));
        }
        Ok(SignalPipe { wake: read, counts })
    }

    /// The fd that becomes readable when a signal arrives.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The signals that arrived, each as often as it was delivered (a flood counts as at
    /// most [`MAX_PER_TAKE`]), in the order given to [`install`](Self::install).
    pub(crate) fn take(&mut self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut taken = Vec::new();
        for (signal, count) in &self.counts {
            let n = count.swap(0, Ordering::SeqCst).min(MAX_PER_TAKE);
            taken.extend(std::iter::repeat_n(*signal, n as usize));
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::SignalPipe;
    use signal_hook::consts::{SIGURG, SIGWINCH};
    use signal_hook::low_level::raise;

    #[test]
    fn every_delivery_before_a_take_counts() {
        // Two signals whose default action is to do nothing, handled by no other test.
        let mut pipe = SignalPipe::install(&[SIGWINCH, SIGURG]).expect("handlers");
        // `raise` delivers to this thread: the handler has run when it returns.
        for _ in 0..3 {
            raise(SIGWINCH).expect("raise");
        }
        for _ in 0..2 {
            raise(SIGURG).expect("raise");
        }
        let mut fds = [nix::poll::PollFd::new(pipe.fd(), nix::poll::PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(1),
            "the wake-up fd is readable"
        );
        assert_eq!(
            pipe.take(),
            vec![SIGWINCH, SIGWINCH, SIGWINCH, SIGURG, SIGURG],
            "three deliveries are three, two are two"
        );
        assert!(pipe.take().is_empty(), "each is taken once");
        raise(SIGURG).expect("raise");
        assert_eq!(pipe.take(), vec![SIGURG]);
    }
}
