//! This crate's log lines, written through `tracing` so that a subscriber that panics loses
//! the line, never the thread or task that logs it.
//!
//! Subscribers can panic on a write: tracing-subscriber's `fmt()` reports a failed write with
//! `eprintln!`, which panics when stderr is a pipe whose reader has gone (a log collector that
//! exited, `server 2>&1 | head`). A panic in the lifecycle's task or a supervisor's loop would
//! leave a server that serves but no longer restarts or stops on a signal, or a cluster whose
//! workers outlive their primary; the program's own logging is its own affair.

/// Runs one `tracing` macro; a panic inside the subscriber is caught and the line dropped.
#[inline]
pub(crate) fn guarded(log: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(log));
}

macro_rules! error {
    ($($arg:tt)*) => { $crate::log::guarded(|| ::tracing::error!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::guarded(|| ::tracing::warn!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::guarded(|| ::tracing::info!($($arg)*)) };
}
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::guarded(|| ::tracing::debug!($($arg)*)) };
}
// Used by the lifecycle only (feature `tokio`).
#[cfg(feature = "tokio")]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::guarded(|| ::tracing::trace!($($arg)*)) };
}
#[cfg(feature = "tokio")]
pub(crate) use trace;
// `warn` is also a built-in attribute's name: exported under it from another.
pub(crate) use {debug, error, info, warning as warn};

#[cfg(test)]
mod tests {
    use tracing::Subscriber;
    use tracing::span::{Attributes, Id, Record};

    /// A subscriber whose every event panics, as tracing-subscriber's `fmt()` does when its
    /// writer and stderr both fail.
    struct Panicking;

    impl Subscriber for Panicking {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            panic!("failed printing to stderr: Broken pipe (os error 32)");
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn a_subscriber_that_panics_loses_the_line_not_the_caller() {
        tracing::subscriber::with_default(Panicking, || {
            let value = 7;
            super::warn!(value, error = %"boom", "a line that cannot be written");
            super::info!("{value} and more");
            super::error!(?value, "another");
            super::debug!("and one more");
        });
        // Reached: every line was dropped, the caller went on.
    }
}
