//! gracedemo's log output: stderr through a lossy, non-blocking writer, so a stalled reader
//! (a full journald, a stuck `| logger`) costs log lines, never serving; the lines dropped are
//! counted and reported. What a remote peer can trigger once per connection (the h2 crate's
//! warnings about misbehaving clients) is left out by default: gracehttp reports those
//! aggregated, every 10 s.

use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// The default filter when `RUST_LOG` is unset: info, without the per-connection warnings
/// the h2 crate logs for a peer's protocol errors (a client can make thousands a second).
pub const DEFAULT_FILTER: &str = "info,h2=error";

/// How many lines may wait for a slow reader before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// How often dropped lines are reported.
const DROP_REPORT: Duration = Duration::from_secs(10);

/// Keeps the writer's thread and flushes what is buffered when dropped (at exit).
#[must_use = "dropping it stops the log writer"]
pub struct Logging {
    _guard: WorkerGuard,
}

/// Installs the subscriber. Call it once, early in `main`.
pub fn init() -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("gracedemo-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_level(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .init();
    // A report of what the writer dropped, itself best effort.
    let _ = std::thread::Builder::new()
        .name("gracedemo-log-drops".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(DROP_REPORT);
                let now = dropped.dropped_lines();
                if now > reported {
                    tracing::warn!(
                        "dropped {} log line(s) in the last {} s: the log reader is not keeping up",
                        now - reported,
                        DROP_REPORT.as_secs()
                    );
                    reported = now;
                }
            }
        });
    Logging { _guard: guard }
}
