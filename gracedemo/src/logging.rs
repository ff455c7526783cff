//! gracedemo's log output.
//!
//! - **Go's format** by default, as grace's own demo prints it: every line starts with
//!   `YYYY/MM/DD HH:MM:SS ` (local time), warnings and errors say `WARN: ` / `ERROR: `, then
//!   the message and the event's own fields (`restart failed: … generation=1 next=2 pid=42
//!   reason="…"`; the libraries put values in fields, not in messages). grace's own lines
//!   (`Serving … with pid P.`, `Graceful handoff of … with new pid N and old pid O.`,
//!   `Exiting pid P.`) have no fields of their own and print exactly as Go grace's. Spans'
//!   fields are left out. By default only grace's lines and warnings and errors from
//!   everything else are shown; `RUST_LOG` chooses more (`RUST_LOG=info` adds the
//!   lifecycle's detail).
//! - **JSON lines** (`--log-json`), for log shippers: `time`, `level`, `target`, `message`,
//!   the event's fields and its spans' fields (`pid`, `generation`).
//! - Written to stderr through a lossy, non-blocking writer, so a stalled reader (a full
//!   journald, a stuck `| logger`) costs log lines, never serving; the lines dropped are
//!   counted and reported.
//! - What a remote peer can trigger once per connection (the h2 crate's warnings about
//!   misbehaving clients) is left out: gracehttp reports those aggregated, every 10 s.

use std::fmt::Write as _;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The default filter when `RUST_LOG` is unset: grace's lines (gracehttp, gracedemo) at info,
/// everything else at warn; never the h2 crate's per-connection warnings about a peer's
/// protocol errors (a client can cause thousands a second).
pub const DEFAULT_FILTER: &str = "warn,gracehttp=info,gracedemo=info,h2=error";

/// How many lines may wait for a slow reader before new ones are dropped.
const BUFFERED_LINES: usize = 1_024;

/// How often dropped lines are reported.
const DROP_REPORT: Duration = Duration::from_secs(10);

/// Keeps the writer's thread and flushes what is buffered when dropped (at exit).
#[must_use = "dropping it stops the log writer"]
pub struct Logging {
    _guard: WorkerGuard,
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
pub fn init(format: Format) -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("gracedemo-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(filter);
    match format {
        Format::Go => builder.event_format(GoFormat).init(),
        Format::Json => builder.event_format(JsonFormat).init(),
    }
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
/// fields.
struct JsonFormat;

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
        let mut line = String::from("{");
        let _ = write!(
            line,
            "\"time\":{},\"pid\":{},\"level\":{},\"target\":{},\"message\":{}",
            json(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            std::process::id(),
            json(event.metadata().level().as_str()),
            json(event.metadata().target()),
            json(&fields.message)
        );
        for (k, v) in &fields.others {
            let _ = write!(line, ",{}:{}", json(k), json(v));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>() {
                    // Span fields are formatted as `key=value key=value`.
                    for pair in formatted.fields.split(' ').filter(|p| !p.is_empty()) {
                        if let Some((k, v)) = pair.split_once('=') {
                            let _ = write!(line, ",{}:{}", json(k), json(v.trim_matches('"')));
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
