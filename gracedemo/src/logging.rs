//! gracedemo's log output.
//!
//! - **Go's format** by default, as grace's own demo prints it: every line starts with
//!   `YYYY/MM/DD HH:MM:SS ` (local time), warnings and errors say `WARN: ` / `ERROR: `, then
//!   the message and the event's own fields (`restart failed: … generation=1 next=2 pid=42
//!   reason="…"`; the libraries put values in fields, not in messages). grace's own lines
//!   (`Serving … with pid P.`, `Graceful handoff of … with new pid N and old pid O.`,
//!   `Exiting pid P.`) have no fields of their own and print exactly as Go grace's. Spans'
//!   fields are left out. grace's lines and every warning and error are always shown;
//!   `RUST_LOG` adds more (`RUST_LOG=info` the lifecycle's detail) and never hides those: no
//!   value of it (empty, `off`, a typo) can silence a failed start or restart.
//! - **JSON lines** (`--log-json`), for log shippers: `time`, `pid` (the logging process),
//!   `level`, `target`, `message`, the event's fields and its spans' fields (`generation`),
//!   each key once: an event's `pid` naming another process is `subject_pid`.
//! - Written to stderr through a lossy, non-blocking writer, so a stalled reader (a full
//!   journald, a stuck `| logger`) costs log lines, never serving; the lines dropped are
//!   counted and reported. When its thread cannot start (a low `RLIMIT_NPROC`), lines are
//!   written to stderr directly, and that is said.
//! - What a remote peer can trigger once per connection (the h2 crate's warnings about
//!   misbehaving clients) is left out: gracehttp reports those aggregated, every 10 s.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// What is always shown, whatever `RUST_LOG` says: grace's lines (gracehttp, gracedemo) at
/// info, every warning and error; never the h2 crate's per-connection warnings about a peer's
/// protocol errors (a client can cause thousands a second). `RUST_LOG` adds to it.
pub const DEFAULT_FILTER: &str = "warn,gracehttp=info,gracedemo=info,h2=error";

/// How many lines may wait for a slow reader before new ones are dropped.
const BUFFERED_LINES: usize = 1_024;

/// How often dropped lines are reported.
const DROP_REPORT: Duration = Duration::from_secs(10);

/// How long the lines still queued at exit may take to be written.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// Keeps the writer's thread and flushes what is buffered when dropped (at exit).
#[must_use = "dropping it stops the log writer"]
pub struct Logging {
    sink: Sink,
    done: Option<mpsc::Receiver<()>>,
}

impl Drop for Logging {
    fn drop(&mut self) {
        // The lines queued before now are written, for a second at most (a stalled reader
        // must not keep the process from exiting).
        if let (Sink::Thread { queue, .. }, Some(done)) = (&self.sink, &self.done)
            && queue.send(Line::Stop).is_ok()
        {
            let _ = done.recv_timeout(FLUSH_AT_EXIT);
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2013/03/25 19:07:33 Serving [::]:48567 with pid 14642.`
    Go,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber. Call it once, early in `main`.
///
/// `RUST_LOG` adds to [`DEFAULT_FILTER`], never takes from it: no value hides an error, a
/// warning or grace's own lines. A value that is not a filter is reported, and ignored.
pub fn init(format: Format) -> Logging {
    let (sink, done, thread_error) = Sink::start();
    let (extra, problem) = user_filter(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::new(DEFAULT_FILTER).or(extra);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(sink.clone())
        .with_ansi(false);
    let layer = match format {
        Format::Go => layer.event_format(GoFormat).with_filter(filter).boxed(),
        Format::Json => layer.event_format(JsonFormat).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
    if let Some(e) = thread_error {
        tracing::warn!(
            "cannot start the log writer's thread ({}): writing log lines directly to stderr, where a stalled reader stalls the server",
            gracenet::thread_error(&e)
        );
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    Logging { sink, done }
}

/// The filter `RUST_LOG` asks for, added to the default; and what is wrong with it, if
/// anything: a value that is not a filter is ignored; a word that is neither a level nor a
/// crate of this program (`inf0`) selects nothing, and is said so.
fn user_filter(value: Option<&str>) -> (EnvFilter, Option<String>) {
    let none = || EnvFilter::new("off");
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (none(), None);
    };
    match EnvFilter::builder().parse(value) {
        Ok(filter) => {
            let unknown: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && !d.contains(['=', '[', ':']))
                .filter(|d| !is_level(d) && !KNOWN_TARGETS.contains(d))
                .collect();
            let problem = (!unknown.is_empty()).then(|| {
                let (verb, selects) = if unknown.len() == 1 {
                    ("is", "selects")
                } else {
                    ("are", "select")
                };
                let list: Vec<String> = unknown.iter().map(|d| format!("{d:?}")).collect();
                format!(
                    "RUST_LOG: {} {verb} neither a level (error, warn, info, debug, trace) nor a crate of this program, and {selects} nothing",
                    list.join(", ")
                )
            });
            (filter, problem)
        }
        Err(e) => (
            none(),
            Some(format!(
                "RUST_LOG={value:?} is not a filter ({e}): ignored, the default lines only (a filter is a level, target=level, or a list of them: info, gracenet=debug)"
            )),
        ),
    }
}

/// Whether `word` is a level as `RUST_LOG` writes it.
fn is_level(word: &str) -> bool {
    ["error", "warn", "info", "debug", "trace", "off"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(word))
        || word.parse::<u8>().is_ok()
}

/// The crates whose events this program can log: a bare word in `RUST_LOG` that is none of
/// these (nor a level) is a typo.
const KNOWN_TARGETS: &[&str] = &[
    "gracedemo",
    "gracehttp",
    "gracenet",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "tokio",
    "mio",
    "tracing",
];

/// One message to the writer's thread.
enum Line {
    /// A formatted line.
    Text(Vec<u8>),
    /// Exit: write what came before, then say so.
    Stop,
}

/// Where formatted lines go: a thread of its own that writes them to stderr, lossy, so a
/// stalled reader (a full journald, a stuck `| logger`) costs log lines, never serving; or
/// stderr itself when that thread cannot start.
#[derive(Clone)]
enum Sink {
    Thread {
        queue: mpsc::Sender<Line>,
        /// Lines waiting to be written.
        queued: Arc<AtomicUsize>,
        /// Lines dropped because the queue was full.
        dropped: Arc<AtomicU64>,
    },
    Direct,
}

impl Sink {
    /// The writer's thread, and what says it is done; or stderr itself, with why the thread
    /// could not start.
    fn start() -> (Sink, Option<mpsc::Receiver<()>>, Option<std::io::Error>) {
        let (queue, lines) = mpsc::channel();
        let (done_tx, done) = mpsc::sync_channel(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (counted, lost) = (queued.clone(), dropped.clone());
        let spawned = std::thread::Builder::new()
            .name("gracedemo-log".into())
            .spawn(move || write_lines(&lines, &counted, &lost, &done_tx));
        match spawned {
            Ok(_) => (
                Sink::Thread {
                    queue,
                    queued,
                    dropped,
                },
                Some(done),
                None,
            ),
            Err(e) => (Sink::Direct, None, Some(e)),
        }
    }
}

/// The writer's thread: each line to stderr, and every [`DROP_REPORT`] how many were
/// dropped, if any.
fn write_lines(
    lines: &mpsc::Receiver<Line>,
    queued: &AtomicUsize,
    dropped: &AtomicU64,
    done: &mpsc::SyncSender<()>,
) {
    let (mut reported, mut last_report) = (0, Instant::now());
    loop {
        match lines.recv_timeout(DROP_REPORT) {
            Ok(Line::Text(text)) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                let _ = std::io::stderr().write_all(&text);
            }
            Ok(Line::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if last_report.elapsed() >= DROP_REPORT {
            last_report = Instant::now();
            let now = dropped.load(Ordering::Relaxed);
            if now > reported {
                // Queued as any line (never waited for, so no deadlock on itself).
                tracing::warn!(
                    "dropped {} log line(s) in the last {} s: the log reader is not keeping up",
                    now - reported,
                    DROP_REPORT.as_secs()
                );
                reported = now;
            }
        }
    }
    let _ = std::io::stderr().flush();
    let _ = done.try_send(());
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Thread {
                queue,
                queued,
                dropped,
            } => {
                if queued.fetch_add(1, Ordering::Relaxed) >= BUFFERED_LINES {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else if let Err(mpsc::SendError(Line::Text(text))) = queue.send(Line::Text(buf.to_vec())) {
                    // The writer has stopped (the process is exiting): written here.
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let _ = std::io::stderr().write_all(&text);
                }
            }
            Sink::Direct => {
                let _ = std::io::stderr().write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// Go's `log` package format: `YYYY/MM/DD HH:MM:SS message`, then the event's fields as
/// `key=value` (a value with spaces or quotes in it quoted).
struct GoFormat;

impl<S, N> FormatEvent<S, N> for GoFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "{} ", chrono::Local::now().format("%Y/%m/%d %H:%M:%S"))?;
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "ERROR: ")?,
            Level::WARN => write!(writer, "WARN: ")?,
            Level::INFO => {}
            Level::DEBUG => write!(writer, "DEBUG: ")?,
            Level::TRACE => write!(writer, "TRACE: ")?,
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        write!(writer, "{}", fields.message)?;
        for (key, value) in &fields.others {
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
                write!(writer, " {key}={value:?}")?;
            } else {
                write!(writer, " {key}={value}")?;
            }
        }
        writeln!(writer)
    }
}

/// One JSON object per line: time, level, target, message, then the event's and its spans'
/// fields, each key once. `pid` is the logging process's; the libraries' own `pid` field
/// (the process an event is about) is left out when it names this process and written as
/// `subject_pid` when it names another (a child, a worker, a generation being replaced). A
/// span's field whose key is taken already is left out when its value is the same, and written
/// as `span_<key>` otherwise.
struct JsonFormat;

/// The keys written in one JSON object so far, with their values: a key is written once.
struct Keys {
    written: Vec<(String, String)>,
}

impl Keys {
    /// The key to write `value` under, or `None` to leave it out (a repeat of what is there).
    fn place(&mut self, key: &str, value: &str, renamed: &str) -> Option<String> {
        let mut key = key.to_owned();
        for _ in 0..2 {
            match self.written.iter().find(|(k, _)| *k == key) {
                None => {
                    self.written.push((key.clone(), value.to_owned()));
                    return Some(key);
                }
                Some((_, v)) if v == value => return None,
                Some(_) => key = format!("{renamed}{key}"),
            }
        }
        // Renamed and taken too (a field literally named `span_generation`, say): numbered.
        (2..1000).map(|n| format!("{key}_{n}")).find(|k| {
            let free = !self.written.iter().any(|(w, _)| w == k);
            if free {
                self.written.push((k.clone(), value.to_owned()));
            }
            free
        })
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let pid = std::process::id().to_string();
        let mut line = String::from("{");
        let _ = write!(
            line,
            "\"time\":{},\"pid\":{},\"level\":{},\"target\":{},\"message\":{}",
            json(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            pid,
            json(event.metadata().level().as_str()),
            json(event.metadata().target()),
            json(&fields.message)
        );
        let mut keys = Keys {
            written: ["time", "pid", "level", "target", "message"]
                .iter()
                .map(|k| (k.to_string(), String::new()))
                .collect(),
        };
        // Our own pid, given again as a field: said already.
        keys.written[1].1.clone_from(&pid);
        for (k, v) in &fields.others {
            // An event's `pid` is the process it is about: another one's is `subject_pid`.
            if let Some(key) = keys.place(k, v, "subject_") {
                let _ = write!(line, ",{}:{}", json(&key), json(v));
            }
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>() {
                    // Span fields are formatted as `key=value key=value`.
                    for pair in formatted.fields.split(' ').filter(|p| !p.is_empty()) {
                        if let Some((k, v)) = pair.split_once('=') {
                            let v = v.trim_matches('"');
                            if let Some(key) = keys.place(k, v, "span_") {
                                let _ = write!(line, ",{}:{}", json(&key), json(v));
                            }
                        }
                    }
                }
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// An event's message and its other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

/// `text` as a JSON string.
fn json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::json;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
