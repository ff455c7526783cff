//! The figures gracenet records for an operator to graph, through the
//! [`metrics`](https://docs.rs/metrics) facade, with the `metrics` feature: the application
//! installs the exporter it wants (Prometheus, StatsD, OpenTelemetry…); gracenet only records.
//! Without the feature there is no dependency and nothing is recorded.
//!
//! Every name starts with `grace_` and carries its unit (`_seconds`, `_bytes`); counters end
//! in `_total`. Each is described once (`describe()`), when the first generation (or the
//! supervisor) starts: install the recorder before [`Generation::start`](crate::Generation::start)
//! (or [`supervise`](crate::supervise)), or call `describe()` after installing it.
//!
//! | name | kind | labels | recorded by | what |
//! |---|---|---|---|---|
//! | `grace_generation` | gauge | | every generation | this process's generation number: 1 at the first start, one more per restart (or crash restart) |
//! | `grace_restarts_total` | counter | `result` | every generation, carried on | restarts by result: `handed_over` (the next generation serves), `spawn_failed` (it could not be started), `exited` (it exited, or refused what it was handed, before it was ready), `not_ready` (not ready within the ready timeout), `cancelled` (a stop arrived while it started) |
//! | `grace_restart_duration_seconds` | histogram | `result` | the generation that ran the restart | from the restart request to its result (the hand-over, or the failure) |
//! | `grace_startup_duration_seconds` | histogram | | every generation | from this process's start (a standby's: its wake) to [`ready`](crate::Generation::ready): a new generation's share of a restart |
//! | `grace_connections` | gauge | | every generation | tracked connections and tasks open now ([`Generation::track`](crate::Generation::track)); in a draining generation, what the drain waits for |
//! | `grace_draining` | gauge | | every generation | 1 from the drain's start (a hand-over or a stop) to the process's end, 0 before |
//! | `grace_drain_duration_seconds` | histogram | `result` | the draining generation | from the drain's start to its end: `drained` (every connection finished) or `forced` (the stop timeout, or a second stop signal, cut it) |
//! | `grace_handed_connections_total` | counter | `result` | the generation handing over | live connections offered to the next generation ([`Generation::hand_over`](crate::Generation::hand_over)): `taken` or `kept` (it stayed here) |
//! | `grace_inherited_connections_total` | counter | | the new generation | live connections taken from the previous generation |
//! | `grace_inherited_state_bytes` | gauge | | the new generation | the size of the state the previous generation handed ([`Generation::inherited_state`](crate::Generation::inherited_state)) |
//! | `grace_supervisor_crashes_total` | counter | | the supervisor | serving generations that crashed (exited without handing over or being stopped) |
//! | `grace_supervisor_respawns_total` | counter | | the supervisor | generations started after a crash |
//!
//! # Which process reports what
//! Counters and gauges live in a process, and a restart ends the process that ran it: after
//! a hand-over, a scrape on the service's port reaches the new generation only. So the
//! restart counts are the *lineage's*: each generation starts its `grace_restarts_total` from
//! the counts of the generation that started it (passed in the environment, like the
//! generation number), adding one `handed_over` for the restart that made it once it is
//! ready; the generation that ran the restart counts the same result, so both say the same.
//! A failed restart is counted by the generation that still serves. Over restarts the
//! counter only grows, as a scrape on the service's port sees it; it starts from zero again
//! only at a fresh start or after a crash (a counter reset, which Prometheus handles).
//! Sum it per service, never across the pids of one lineage.
//!
//! The figures about a drain (`grace_drain_duration_seconds`, and `grace_connections` while
//! `grace_draining` is 1) are the draining process's: a push exporter sends them; a pull
//! exporter on the service's port no longer reaches that process. A restart's latency as the
//! new generation sees it is its `grace_startup_duration_seconds`.
//!
//! # Example
//! `gracehttp/examples/metrics.rs`: a Prometheus exporter (its text rendered on a `/metrics`
//! route of the application's own server, no listener of its own) across a restart.

/// The restart counts carried from one generation to the next: the value of
/// [`GRACE_RESTARTS`](crate::vars::GRACE_RESTARTS) a child is started with, and what this
/// process read from its own.
#[cfg(feature = "metrics")]
mod lineage {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Each result label and its count in this lineage.
    pub(super) static COUNTS: [(&str, AtomicU64); 5] = [
        (super::HANDED_OVER, AtomicU64::new(0)),
        ("spawn_failed", AtomicU64::new(0)),
        ("exited", AtomicU64::new(0)),
        ("not_ready", AtomicU64::new(0)),
        ("cancelled", AtomicU64::new(0)),
    ];

    /// Adds one `result`, and returns the new count.
    pub(super) fn add(result: &str) -> Option<u64> {
        COUNTS
            .iter()
            .find(|(r, _)| *r == result)
            .map(|(_, n)| n.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// `result:count,…`, the non-zero counts.
    pub(super) fn encode() -> String {
        COUNTS
            .iter()
            .map(|(r, n)| (r, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The counts in `value` (`result:count,…`); an entry this gracenet does not know, or
    /// cannot read, is skipped (a figure is never worth a failed start).
    pub(super) fn decode(value: &str) -> Vec<(&'static str, u64)> {
        value
            .split(',')
            .filter_map(|entry| entry.split_once(':'))
            .filter_map(|(r, n)| {
                let label = COUNTS.iter().find(|(known, _)| *known == r.trim())?.0;
                Some((label, n.trim().parse().ok()?))
            })
            .collect()
    }
}

/// The `result` of a restart that handed over.
#[cfg(feature = "metrics")]
const HANDED_OVER: &str = "handed_over";

/// Describes every metric (its kind, unit and meaning) to the installed recorder. gracenet
/// calls it once, when the first generation or the supervisor starts; call it yourself when
/// the recorder is installed after that (describing twice is harmless).
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "grace_generation",
        Unit::Count,
        "This process's generation number: 1 at the first start, one more per restart."
    );
    describe_counter!(
        "grace_restarts_total",
        Unit::Count,
        "Restarts by result (handed_over, spawn_failed, exited, not_ready, cancelled), \
         counted over the generations since the last fresh start."
    );
    describe_histogram!(
        "grace_restart_duration_seconds",
        Unit::Seconds,
        "From a restart request to its result, in the generation that ran it."
    );
    describe_histogram!(
        "grace_startup_duration_seconds",
        Unit::Seconds,
        "From this process's start (a standby's wake) to ready."
    );
    describe_gauge!(
        "grace_connections",
        Unit::Count,
        "Tracked connections and tasks open now (in a drain: what it waits for)."
    );
    describe_gauge!("grace_draining", Unit::Count, "1 while this generation drains.");
    describe_histogram!(
        "grace_drain_duration_seconds",
        Unit::Seconds,
        "From a drain's start to its end, by result (drained, forced)."
    );
    describe_counter!(
        "grace_handed_connections_total",
        Unit::Count,
        "Live connections offered to the next generation, by result (taken, kept)."
    );
    describe_counter!(
        "grace_inherited_connections_total",
        Unit::Count,
        "Live connections taken from the previous generation."
    );
    describe_gauge!(
        "grace_inherited_state_bytes",
        Unit::Bytes,
        "The size of the state the previous generation handed."
    );
    describe_counter!(
        "grace_supervisor_crashes_total",
        Unit::Count,
        "Serving generations that crashed, seen by the supervisor."
    );
    describe_counter!(
        "grace_supervisor_respawns_total",
        Unit::Count,
        "Generations the supervisor started after a crash."
    );
}

/// [`describe`], the first time only.
#[cfg(feature = "metrics")]
fn describe_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(describe);
}

/// This process's start: the restart counts it inherited (the value of `GRACE_RESTARTS`).
#[inline]
pub(crate) fn inherit(restarts: Option<&std::ffi::OsStr>) {
    #[cfg(feature = "metrics")]
    if let Some(value) = restarts {
        for (result, n) in lineage::decode(&value.to_string_lossy()) {
            if let Some((_, count)) = lineage::COUNTS.iter().find(|(r, _)| *r == result) {
                count.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = restarts;
}

/// The value of `GRACE_RESTARTS` for a child: this lineage's restart counts; `None` (the
/// variable removed) while they are all zero, and without the feature.
#[inline]
pub(crate) fn restarts_for_child() -> Option<String> {
    #[cfg(feature = "metrics")]
    return Some(lineage::encode()).filter(|counts| !counts.is_empty());
    #[cfg(not(feature = "metrics"))]
    None
}

/// A generation started: its number, and the lineage's restart counts (so a scrape shows
/// every result, zeros included, from the start).
#[inline]
pub(crate) fn generation_started(number: u64) {
    #[cfg(feature = "metrics")]
    {
        describe_once();
        metrics::gauge!("grace_generation").set(number as f64);
        metrics::gauge!("grace_draining").set(0.0);
        metrics::gauge!("grace_connections").set(0.0);
        for (result, n) in &lineage::COUNTS {
            metrics::counter!("grace_restarts_total", "result" => *result)
                .absolute(n.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = number;
}

/// How a restart this generation ran ended, `took` after it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartOutcome {
    HandedOver,
    SpawnFailed,
    Exited,
    NotReady,
    Cancelled,
}

impl RestartOutcome {
    /// Its `result` label.
    #[cfg(any(feature = "metrics", test))]
    fn label(self) -> &'static str {
        match self {
            RestartOutcome::HandedOver => "handed_over",
            RestartOutcome::SpawnFailed => "spawn_failed",
            RestartOutcome::Exited => "exited",
            RestartOutcome::NotReady => "not_ready",
            RestartOutcome::Cancelled => "cancelled",
        }
    }
}

/// A restart this generation ran ended so, `took` after it was asked for (`None`: no
/// request is known, as for a restart cut short by a stop).
#[inline]
pub(crate) fn restart_ended(outcome: RestartOutcome, took: Option<std::time::Duration>) {
    #[cfg(feature = "metrics")]
    {
        let result = outcome.label();
        if let Some(n) = lineage::add(result) {
            metrics::counter!("grace_restarts_total", "result" => result).absolute(n);
        }
        if let Some(took) = took {
            metrics::histogram!("grace_restart_duration_seconds", "result" => result).record(took);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (outcome, took);
}

/// This generation is ready, `took` after its start (or wake); `restarted`: a generation
/// started it for a restart, which this readiness completes (counted as handed over here too:
/// the generation that ran it may not be scraped again).
#[inline]
pub(crate) fn ready(took: std::time::Duration, restarted: bool) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("grace_startup_duration_seconds").record(took);
        if restarted && let Some(n) = lineage::add(HANDED_OVER) {
            metrics::counter!("grace_restarts_total", "result" => HANDED_OVER).absolute(n);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (took, restarted);
}

/// A tracked connection or task began (`1`) or ended (`-1`).
#[inline]
pub(crate) fn connections(change: i8) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("grace_connections").increment(f64::from(change));
    #[cfg(not(feature = "metrics"))]
    let _ = change;
}

/// The drain began.
#[inline]
pub(crate) fn drain_began() {
    #[cfg(feature = "metrics")]
    metrics::gauge!("grace_draining").set(1.0);
}

/// The drain ended, `took` after it began; `forced`: it gave up on unfinished work.
#[inline]
pub(crate) fn drain_ended(took: std::time::Duration, forced: bool) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("grace_drain_duration_seconds", "result" => if forced { "forced" } else { "drained" })
        .record(took);
    #[cfg(not(feature = "metrics"))]
    let _ = (took, forced);
}

/// A live connection offered to the next generation was taken by it, or stayed here.
#[inline]
pub(crate) fn connection_handed(taken: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!("grace_handed_connections_total", "result" => if taken { "taken" } else { "kept" })
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = taken;
}

/// A live connection was taken from the previous generation: counted, and returned.
#[inline]
pub(crate) fn connection_inherited<T>(connection: T) -> T {
    #[cfg(feature = "metrics")]
    metrics::counter!("grace_inherited_connections_total").increment(1);
    connection
}

/// The state the previous generation handed, returned as it came.
#[inline]
pub(crate) fn state_inherited(state: Option<Vec<u8>>) -> Option<Vec<u8>> {
    #[cfg(feature = "metrics")]
    if let Some(state) = &state {
        metrics::gauge!("grace_inherited_state_bytes").set(state.len() as f64);
    }
    state
}

/// The supervisor started.
#[inline]
pub(crate) fn supervisor_started() {
    #[cfg(feature = "metrics")]
    {
        describe_once();
        metrics::counter!("grace_supervisor_crashes_total").absolute(0);
        metrics::counter!("grace_supervisor_respawns_total").absolute(0);
    }
}

/// The supervisor saw the serving generation crash.
#[inline]
pub(crate) fn supervisor_crash() {
    #[cfg(feature = "metrics")]
    metrics::counter!("grace_supervisor_crashes_total").increment(1);
}

/// The supervisor started a generation after a crash.
#[inline]
pub(crate) fn supervisor_respawn() {
    #[cfg(feature = "metrics")]
    metrics::counter!("grace_supervisor_respawns_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restart_result_is_a_label_the_docs_name() {
        let docs = include_str!("metrics.rs");
        for outcome in [
            RestartOutcome::HandedOver,
            RestartOutcome::SpawnFailed,
            RestartOutcome::Exited,
            RestartOutcome::NotReady,
            RestartOutcome::Cancelled,
        ] {
            assert!(
                docs.contains(&format!("`{}`", outcome.label())),
                "{outcome:?}: its label is not in the module's table"
            );
        }
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn the_lineage_counts_read_back_and_skip_what_they_do_not_know() {
        assert_eq!(
            lineage::decode("handed_over:3,exited:1"),
            vec![("handed_over", 3), ("exited", 1)]
        );
        assert_eq!(
            lineage::decode("handed_over:x, not_ready : 2,newer_result:4,,junk"),
            vec![("not_ready", 2)]
        );
        for (result, _) in &lineage::COUNTS {
            assert!(
                include_str!("metrics.rs").contains(&format!("`{result}`")),
                "{result}: not in the module's table"
            );
        }
    }
}
