//! Errors that remote peers cause (a protocol violation, a reset flood, a failed TLS
//! handshake, a silent connection), counted and reported together: at most one line per
//! 10 s however many peers misbehave, so a client cannot flood the log. Each one is also
//! logged at debug.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long errors are gathered before they are reported.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The most kinds kept apart in one report; the rest are counted as "other".
const MAX_KINDS: usize = 8;

/// Peer errors of one server since the last report.
#[derive(Debug, Default)]
pub(crate) struct PeerErrors {
    batch: Mutex<Batch>,
    /// A report is due: set by the first error after a report.
    scheduled: AtomicBool,
}

/// The errors since the last report, by kind, and when the first of them came.
#[derive(Debug, Default)]
struct Batch {
    kinds: BTreeMap<String, u64>,
    since: Option<std::time::Instant>,
}

impl PeerErrors {
    /// Counts one error of `kind`; the first after a report schedules the next one.
    pub(crate) fn record(self: &std::sync::Arc<Self>, kind: &str) {
        {
            let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            batch.since.get_or_insert_with(std::time::Instant::now);
            let kinds = &mut batch.kinds;
            let key = if kinds.contains_key(kind) || kinds.len() < MAX_KINDS {
                kind.to_owned()
            } else {
                "other".to_owned()
            };
            *kinds.entry(key).or_default() += 1;
        }
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REPORT_EVERY).await;
                this.report();
            });
        }
    }

    /// Logs the errors since the last report, if any: every [`REPORT_EVERY`], and once more
    /// as the server ends (what came in its last seconds is not lost with the process).
    pub(crate) fn report(&self) {
        self.scheduled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *self.batch.lock().unwrap_or_else(|p| p.into_inner()));
        let total: u64 = batch.kinds.values().sum();
        if total == 0 {
            return;
        }
        let seconds = batch
            .since
            .map_or(REPORT_EVERY, |since| since.elapsed())
            .as_secs()
            .max(1);
        let detail: Vec<String> = batch.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        crate::log::warn!(
            connections = total,
            seconds,
            kinds = %detail.join("; "),
            "connections ended by errors from peers"
        );
    }
}

/// The longest kind name, in characters; a longer one is cut at a word, with an ellipsis.
const MAX_KIND: usize = 60;

/// A short, stable name for a connection error: its innermost cause, without numbers that
/// would make every line different, at most [`MAX_KIND`] characters, never cut mid-word.
pub(crate) fn kind(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let text: String = inner
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    if text.chars().count() <= MAX_KIND {
        return text;
    }
    // Up to the last space that leaves room for the ellipsis.
    let head: String = text.chars().take(MAX_KIND - 1).collect();
    let cut = head.rfind(' ').map_or(head.as_str(), |i| {
        head[..i].trim_end_matches([' ', ',', ':', ';'])
    });
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Text(String);

    #[test]
    fn a_long_kind_is_cut_at_a_word_with_an_ellipsis() {
        let long = Text(
            "peer is misbehaving: received a frame with an error detected by the protocol while generating"
                .into(),
        );
        let k = kind(&long);
        assert!(k.chars().count() <= MAX_KIND, "{k}");
        assert_eq!(k, "peer is misbehaving: received a frame with an error…");
        let short = Text("connection reset after 12 bytes".into());
        assert_eq!(kind(&short), "connection reset after ## bytes");
    }
}
