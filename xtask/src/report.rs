//! What `cargo xtask bench` writes: the Markdown it prints and puts between the markers of
//! BENCHMARKS.md, and the JSON file for machines. Pure functions of the figures, so the
//! format is tested without a bench run.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use grace_tests::load::{Failures, LoadResult, RestartTiming};

use crate::bench::{PATH, Plan};
use crate::figures::{
    CrashUnderLoad, DrainCpu, Overhead, ProbedRestarts, RestartTail, ResultLine, TlsLatency, TlsRatios,
    TlsServer,
};

/// One mode of "every request across restarts", summed up.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeFigures {
    /// e.g. `h1-keepalive`.
    pub mode: String,
    pub requests: u64,
    pub failures: Failures,
    /// Up to ten failure messages, shown when the bench fails.
    pub examples: Vec<String>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
    /// The same, of the requests started within 200 ms after a restart.
    pub p99_after: Option<Duration>,
    pub max_after: Option<Duration>,
    /// Per restart: signal → first answer from the new pid, and → the old process gone.
    pub restarts: Vec<(Duration, Option<Duration>)>,
}

impl ModeFigures {
    /// How long after a restart a request counts as "after" it.
    const AFTER: Duration = Duration::from_millis(200);

    /// Sums up a load run of `mode` and the restarts made during it.
    pub fn of(mode: String, load: &LoadResult, restarts: &[RestartTiming]) -> ModeFigures {
        let windows: Vec<(Instant, Instant)> = restarts.iter().map(|r| (r.at, r.at + Self::AFTER)).collect();
        ModeFigures {
            mode,
            requests: load.requests,
            failures: load.failures.clone(),
            examples: load.examples.clone(),
            p50: load.latency(0.5, None),
            p99: load.latency(0.99, None),
            max: load.latency(1.0, None),
            p99_after: load.latency(0.99, Some(&windows)),
            max_after: load.latency(1.0, Some(&windows)),
            restarts: restarts.iter().map(|r| (r.to_new_pid, r.old_gone)).collect(),
        }
    }

    fn to_new(&self) -> Vec<Duration> {
        self.restarts.iter().map(|r| r.0).collect()
    }

    fn gone(&self) -> Vec<Duration> {
        self.restarts.iter().filter_map(|r| r.1).collect()
    }
}

/// RSS (KiB) and open fds of the serving process.
pub type Usage = (Option<u64>, Option<usize>);

/// gracedemo's footprint, measured from this process.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    pub idle: Usage,
    pub under_load: Usage,
    /// After [`Plan::restarts_for_footprint`] more restarts.
    pub after_restarts: Usage,
    /// Processes of the server left at the end (expected 1).
    pub processes_left: usize,
}

/// The figures measured from outside the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Outside {
    pub speed: Overhead,
    /// The same with two tokio worker threads in each server (both on core 0).
    pub speed_two_threads: Overhead,
    pub tail: RestartTail,
    /// The same with gracedemo's `--standby`.
    pub tail_standby: RestartTail,
    pub tls: TlsLatency,
    /// The command of the server the TLS figures were measured beside, if any.
    pub tls_other: Option<String>,
    pub footprint: DrainCpu,
    pub crash: CrashUnderLoad,
}

/// Everything one run measured.
pub struct Report {
    pub plan: Plan,
    pub machine: String,
    pub modes: Vec<ModeFigures>,
    pub footprint: Footprint,
    /// `None` with `--quick`.
    pub outside: Option<Outside>,
}

/// What the bench writes between the markers of BENCHMARKS.md.
pub fn benchmarks_section(markdown: &str) -> String {
    format!(
        "The latest run of `cargo xtask bench` (written by it; the notes outside this part are written by hand). \
         The machines are shared and noisy: the ratios, measured in the same run, say more than the absolute \
         numbers.\n\n{markdown}"
    )
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn num(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "null".into())
}

fn opt(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "null".into())
}

/// A figure a script may not report, `?` when it did not.
fn or_unknown(v: Option<&String>) -> &str {
    v.map_or("?", String::as_str)
}

impl Report {
    /// The Markdown report: the outside figures (if measured), then the in-process ones.
    pub fn markdown(&self) -> String {
        let md = format!("{}{}", self.modes_markdown(), self.footprint_markdown());
        match &self.outside {
            Some(o) => format!("{}\n{md}", o.markdown(&self.machine)),
            None => md,
        }
    }

    fn modes_markdown(&self) -> String {
        let plan = &self.plan;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### Every request across restarts (load from this process, loopback, {} connections; every failure counted by kind)\n",
            plan.connections
        );
        let _ = writeln!(
            md,
            "{:?} per mode, `SIGUSR2` every {:?}, `GET {PATH}`. The latencies here include this process's own client on the same two cores: the tail figures measured from outside are above.\n",
            plan.load_for, plan.restart_every
        );
        let _ = writeln!(
            md,
            "| mode | requests | failed | refused | reset | timeout | non-2xx | restarts | p50 ms | p99 ms | max ms | p99 ms ≤200 ms after restarts | max ms ≤200 ms after | restart latency ms (median / max) | old process gone ms (median / max) | h2 GOAWAY-unprocessed, retried |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for m in &self.modes {
            let f = &m.failures;
            let (to_new, gone) = (m.to_new(), m.gone());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
                m.mode,
                m.requests,
                f.total(),
                f.refused,
                f.reset,
                f.timeout,
                f.non_2xx,
                m.restarts.len(),
                ms(m.p50),
                ms(m.p99),
                ms(m.max),
                ms(m.p99_after),
                ms(m.max_after),
                ms(median(to_new.clone())),
                ms(to_new.iter().max().copied()),
                ms(median(gone.clone())),
                ms(gone.iter().max().copied()),
                f.retried_unprocessed,
            );
        }
        md
    }

    fn footprint_markdown(&self) -> String {
        let (plan, fp) = (&self.plan, &self.footprint);
        let show = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let showf = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let mut md = String::new();
        let _ = writeln!(md, "\n### Footprint (gracedemo)\n");
        let _ = writeln!(md, "| when | RSS KiB | open fds |");
        let _ = writeln!(md, "|---|---|---|");
        let rows = [
            ("idle, generation 1".to_owned(), fp.idle),
            (
                format!("under load ({} connections)", plan.connections),
                fp.under_load,
            ),
            (
                format!("idle, after {} more restarts", plan.restarts_for_footprint),
                fp.after_restarts,
            ),
        ];
        for (when, (rss, fds)) in rows {
            let _ = writeln!(md, "| {when} | {} | {} |", show(rss), showf(fds));
        }
        let _ = writeln!(
            md,
            "\nProcesses of the server left at the end: {} (expected 1).",
            fp.processes_left
        );
        md
    }

    /// The JSON report, for machines.
    pub fn json(&self) -> String {
        let (plan, fp) = (&self.plan, &self.footprint);
        let mut json = String::from("{\n");
        let _ = writeln!(
            json,
            "  \"quick\": {},\n  \"machine\": {:?},\n  \"connections\": {},",
            plan.quick, self.machine, plan.connections
        );
        json.push_str("  \"restart_under_load\": [\n");
        for (i, m) in self.modes.iter().enumerate() {
            let comma = if i + 1 < self.modes.len() { "," } else { "" };
            let _ = writeln!(json, "    {}{comma}", mode_json(m));
        }
        json.push_str("  ],\n");
        if let Some(o) = &self.outside {
            let _ = writeln!(json, "  \"outside\": {},", o.json());
        }
        let _ = writeln!(
            json,
            "  \"footprint\": {{\"idle_rss_kib\": {}, \"idle_fds\": {}, \"load_rss_kib\": {}, \"load_fds\": {}, \"after_restarts\": {}, \"after_rss_kib\": {}, \"after_fds\": {}}},",
            opt(fp.idle.0),
            opt(fp.idle.1.map(|x| x as u64)),
            opt(fp.under_load.0),
            opt(fp.under_load.1.map(|x| x as u64)),
            plan.restarts_for_footprint,
            opt(fp.after_restarts.0),
            opt(fp.after_restarts.1.map(|x| x as u64))
        );
        let _ = writeln!(json, "  \"processes_left\": {}\n}}", fp.processes_left);
        json
    }
}

fn mode_json(m: &ModeFigures) -> String {
    let f = &m.failures;
    let to_new: Vec<String> = m.restarts.iter().map(|r| num(Some(r.0))).collect();
    let gone: Vec<String> = m.restarts.iter().map(|r| num(r.1)).collect();
    format!(
        "{{\"mode\": {:?}, \"requests\": {}, \"failed\": {}, \"refused\": {}, \"reset\": {}, \"timeout\": {}, \"non_2xx\": {}, \"other\": {}, \"retried_unprocessed\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"restart_latency_ms\": [{}], \"old_gone_ms\": [{}]}}",
        m.mode,
        m.requests,
        f.total(),
        f.refused,
        f.reset,
        f.timeout,
        f.non_2xx,
        f.other,
        f.retried_unprocessed,
        num(m.p50),
        num(m.p99),
        num(m.max),
        to_new.join(", "),
        gone.join(", "),
    )
}

impl Outside {
    fn markdown(&self, machine: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Machine: {machine}. Release builds. The server is pinned to core 0; `wrk`, `h2load` and the \
             clients to core 1; server CPU from `/proc/<pid>/stat`.\n"
        );
        md += &self.speed_markdown();
        md += &self.tail_markdown();
        md += &self.tls_markdown();
        md += &self.drain_markdown();
        md
    }

    fn speed_markdown(&self) -> String {
        let (s, s2) = (&self.speed, &self.speed_two_threads);
        format!(
            "### Against plain hyper (the same handler on hyper-util's auto builder, no grace), alternating rounds\n\n\
             `python3 xtask/scripts/overhead.py --rounds 5 --seconds 4 [--threads 2]`\n\n\
             | protocol | server threads | requests/s, gracedemo ÷ plain hyper | server CPU per request, gracedemo ÷ plain hyper | the same, side by side | goal |\n\
             |---|---|---|---|---|---|\n\
             | HTTP/1.1 keep-alive (`wrk -t1 -c64`) | 1 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | h2c (`h2load -c64 -m10`) | 1 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | HTTP/1.1 keep-alive | 2 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | h2c | 2 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\n\
             Side by side: both servers on core 0 at once, each with its own load generator on core 1, \
             so a change in the host's speed slows both alike; each gets half the core.\n\n",
            s.h1.rps,
            s.h1.rps_range,
            s.h1.cpu,
            s.h1.cpu_range,
            s.h1.side_cpu,
            s.h1.side_cpu_range,
            s.h2.rps,
            s.h2.rps_range,
            s.h2.cpu,
            s.h2.cpu_range,
            s.h2.side_cpu,
            s.h2.side_cpu_range,
            s2.h1.rps,
            s2.h1.rps_range,
            s2.h1.cpu,
            s2.h1.cpu_range,
            s2.h1.side_cpu,
            s2.h1.side_cpu_range,
            s2.h2.rps,
            s2.h2.rps_range,
            s2.h2.cpu,
            s2.h2.cpu_range,
            s2.h2.side_cpu,
            s2.h2.side_cpu_range,
        )
    }

    fn tail_markdown(&self) -> String {
        let (t, tb) = (&self.tail, &self.tail_standby);
        let both =
            |pick: fn(&RestartTail) -> &String, unit: &str| format!("{}{unit} | {}{unit}", pick(t), pick(tb));
        let load = |r: &RestartTail| {
            let (median, max) = r.load_restart.as_ref().map(|(a, b)| (a, b)).unzip();
            format!("{} / **{}**", or_unknown(median), or_unknown(max))
        };
        let probed = |r: &RestartTail, pick: fn(&ProbedRestarts) -> &String| {
            or_unknown(r.probed.as_ref().map(pick)).to_owned()
        };
        format!(
            "### The latency tail across restarts (a new connection per request, 64 at a time, `Connection: close`)\n\n\
             `python3 xtask/scripts/restart_tail.py --seconds 8 --rounds 4 [--server-args=--standby]`: \
             gracedemo as it starts by default (the next process started at the restart, at idle CPU \
             priority), and with `--standby` (the next process started ahead, woken by the restart)\n\n\
             | | default | `--standby` | goal |\n|---|---|---|---|\n\
             | p99, no restarts | {} | |\n\
             | p99, a `SIGUSR2` every second | {} | |\n\
             | ratio (median of the rounds' ratios) | **{}×** ({}) | **{}×** ({}) | ≤ 1.2× |\n\
             | within the runs with restarts: all requests / those started 100 ms or more after a signal | {} | |\n\
             | requests started within 100 ms of a signal: the slowest | {} | |\n\
             | the same: slower than the run's far p99, beyond the 1 % expected, per restart | {} | |\n\
             | restart latency (signal → first answer from the new pid), `wrk` with a prober: median / **max**, ms | {} / **{}** | {} / **{}** | max < 10 ms |\n\
             | restart latency under `restartload`'s heavier load (the runs with restarts above): median / **max**, ms | {} | {} | max < 10 ms |\n\
             | restarts timed by the prober; signals in the p99 runs | {} / {} | {} / {} | |\n\
             | errors | {} | |\n\n\
             The prober's `wrk` runs have their own p99 ({} ms, {} ms), not the figure above.\n\n",
            both(|r| &r.p99_quiet, " ms"),
            both(|r| &r.p99_restarts, " ms"),
            t.p99_ratio,
            t.p99_ratio_range,
            tb.p99_ratio,
            tb.p99_ratio_range,
            both(|r| &r.within_ratio, "×"),
            both(|r| &r.near_max, " ms"),
            both(|r| &r.excess_per_restart, ""),
            probed(t, |p| &p.latency_median),
            probed(t, |p| &p.latency_max),
            probed(tb, |p| &p.latency_median),
            probed(tb, |p| &p.latency_max),
            load(t),
            load(tb),
            probed(t, |p| &p.restarts),
            t.signals,
            probed(tb, |p| &p.restarts),
            tb.signals,
            both(|r| &r.errors, ""),
            t.p99_probed,
            tb.p99_probed,
        )
    }

    fn tls_markdown(&self) -> String {
        let l = &self.tls.gracedemo;
        let (wrk_ms, wrk_cpu) = wrk_figures(l);
        let mut md = format!(
            "### New TLS connections (TLS 1.3, sequential; connect → whole answer)\n\n\
             `python3 xtask/scripts/tls_latency.py --count 300` (add `--other 'COMMAND'` to \
             measure another server beside it, as BENCHMARKS' notes do for Go grace)\n\n\
             | Python's `ssl` client | p50 | p99 |\n|---|---|---|\n\
             | full handshake | {} ms | {} ms |\n\
             | resumption offered ({} of {} resumed) | {} ms | {} ms |\n\n\
             {} clients taking turns, each offering its last session: {} resumed; after a \
             `SIGUSR2`, with the new process: {} resumed. \
             wrk, one connection at a time, each resumed: {} ms per connection, {} µs of server \
             CPU per connection.\n\n",
            l.full_p50,
            l.full_p99,
            l.resumed,
            l.count,
            l.resumed_p50,
            l.resumed_p99,
            l.clients,
            l.clients_resumed,
            l.after_restart_resumed,
            wrk_ms,
            wrk_cpu,
        );
        if let (Some(command), Some((other, ratio))) = (&self.tls_other, &self.tls.other) {
            md += &tls_beside_markdown(command, l, other, ratio);
        }
        md
    }

    fn drain_markdown(&self) -> String {
        let f = &self.footprint;
        format!(
            "### Footprint and draining CPU ({} connections)\n\n\
             `python3 xtask/scripts/drain_cpu.py --connections 10000`\n\n\
             | | |\n|---|---|\n\
             | RSS idle | {} KiB |\n\
             | RSS with {} idle keep-alive connections | {} KiB |\n\
             | CPU while serving {} sleeping requests | {} % of a core |\n\
             | CPU while draining them after `SIGTERM` | {} % of a core |\n\n",
            f.connections,
            f.rss_idle_kib,
            f.connections,
            f.rss_idle_connections_kib,
            f.connections,
            f.serving_cpu,
            f.draining_cpu,
        )
    }

    fn json(&self) -> String {
        // Every key each script reported, in key order.
        let object = |line: &ResultLine| {
            let mut pairs = line.pairs().to_vec();
            pairs.sort();
            let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
            format!("{{{}}}", fields.join(", "))
        };
        format!(
            "{{\"speed\": {}, \"speed_two_threads\": {}, \"restart_tail\": {}, \"restart_tail_standby\": {}, \"tls\": {}, \"footprint\": {}, \"crash_under_load\": {}}}",
            object(&self.speed.line),
            object(&self.speed_two_threads.line),
            object(&self.tail.line),
            object(&self.tail_standby.line),
            object(&self.tls.line),
            object(&self.footprint.line),
            object(&self.crash.line)
        )
    }
}

/// `wrk`'s ms and µs of server CPU per connection, `?` when not measured.
fn wrk_figures(s: &TlsServer) -> (&str, &str) {
    let (ms, cpu) = s.wrk.as_ref().map(|(a, b)| (a, b)).unzip();
    (or_unknown(ms), or_unknown(cpu))
}

/// The table of gracedemo's TLS figures beside those of the server `command` started.
fn tls_beside_markdown(command: &str, ours: &TlsServer, other: &TlsServer, ratio: &TlsRatios) -> String {
    let ((our_ms, our_cpu), (their_ms, their_cpu)) = (wrk_figures(ours), wrk_figures(other));
    let rows: [(&str, &str, &str, Option<&String>, &str); 6] = [
        (
            "full handshake, p50",
            &ours.full_p50,
            &other.full_p50,
            ratio.full_p50.as_ref(),
            "ms",
        ),
        (
            "resumed, p50",
            &ours.resumed_p50,
            &other.resumed_p50,
            ratio.resumed_p50.as_ref(),
            "ms",
        ),
        (
            "wrk, one connection at a time: per connection",
            our_ms,
            their_ms,
            ratio.wrk_conn_ms.as_ref(),
            "ms",
        ),
        (
            "server CPU per connection",
            our_cpu,
            their_cpu,
            ratio.wrk_cpu_us.as_ref(),
            "µs",
        ),
        (
            "clients taking turns: resumed",
            &ours.clients_resumed,
            &other.clients_resumed,
            None,
            "",
        ),
        (
            "the same after a `SIGUSR2`: resumed with the new process",
            &ours.after_restart_resumed,
            &other.after_restart_resumed,
            None,
            "",
        ),
    ];
    let mut md = format!(
        "Beside another server in alternating rounds (3 each; `--tls-other '{command}'`), the \
         same certificate:\n\n\
         | median of the rounds | gracedemo | other | ratio |\n|---|---|---|---|\n"
    );
    for (what, ours, theirs, ratio, unit) in rows {
        let with_unit = |v: &str| format!("{v} {unit}").trim_end().to_owned();
        let ratio = ratio.map_or(String::new(), |r| format!("{r}×"));
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {ratio} |",
            with_unit(ours),
            with_unit(theirs)
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::figures::{Record, ResultLine};

    /// The section of BENCHMARKS.md that the bench wrote before its figures became typed
    /// records: the format the report keeps, byte for byte.
    const GOLDEN: &str = include_str!("report_golden.md");

    fn line(script: &str, text: &str) -> ResultLine {
        ResultLine::parse(script, text).expect("a well-formed result line")
    }

    /// "46.60" ms.
    fn d(ms: &str) -> Duration {
        let ms: f64 = ms.parse().expect("a number of ms");
        Duration::from_micros((ms * 1e3).round() as u64)
    }

    /// A mode whose restarts have these medians and maxima (nine restarts).
    fn mode(
        name: &str,
        requests: u64,
        lat: [&str; 5],
        to_new: [&str; 2],
        gone: [&str; 2],
        retried: u64,
    ) -> ModeFigures {
        let mut restarts = vec![(d(to_new[0]), Some(d(gone[0])))];
        restarts.extend([(d("0.01"), Some(d("0.01"))); 4]);
        restarts.extend([(d(to_new[1]), Some(d(gone[1]))); 4]);
        ModeFigures {
            mode: name.into(),
            requests,
            failures: Failures {
                retried_unprocessed: retried,
                ..Failures::default()
            },
            examples: Vec::new(),
            p50: Some(d(lat[0])),
            p99: Some(d(lat[1])),
            max: Some(d(lat[2])),
            p99_after: Some(d(lat[3])),
            max_after: Some(d(lat[4])),
            restarts,
        }
    }

    fn overhead(h1: [&str; 6], h2: [&str; 6]) -> Overhead {
        let keys = [
            "rps",
            "rps_range",
            "cpu",
            "cpu_range",
            "side_cpu",
            "side_cpu_range",
        ];
        let pairs: Vec<String> = [("h1", h1), ("h2", h2)]
            .iter()
            .flat_map(|(p, v)| keys.iter().zip(v).map(move |(k, v)| format!("{p}_{k}={v}")))
            .collect();
        Overhead::from_line(line("overhead.py", &pairs.join(" "))).expect("every key")
    }

    /// The figures of the run in the golden section.
    pub(crate) fn golden_report() -> Report {
        let tail = |text: &str| RestartTail::from_line(line("restart_tail.py", text)).expect("every key");
        Report {
            plan: Plan {
                quick: false,
                connections: 16,
                load_for: Duration::from_secs(10),
                restart_every: Duration::from_secs(1),
                restarts_for_footprint: 20,
            },
            machine: "Intel(R) Xeon(R) Processor, 2 cores, 24 GiB, Linux 6.18.44-fc-v769, rustc 1.95.0 (59807616e 2026-04-14)".into(),
            modes: vec![
                mode("h1-keepalive", 211760, ["0.75", "1.42", "10.07", "2.10", "10.07"], ["46.60", "127.78"], ["46.81", "127.96"], 0),
                mode("h1-new-conn", 96633, ["1.62", "3.08", "6.76", "3.17", "6.11"], ["63.12", "107.33"], ["63.18", "110.05"], 0),
                mode("h2-keepalive", 165101, ["0.93", "2.02", "10.11", "2.42", "10.11"], ["101.16", "194.13"], ["101.37", "197.48"], 14),
                mode("h2-new-conn", 53692, ["2.92", "5.43", "13.50", "5.49", "13.50"], ["108.18", "213.35"], ["108.52", "213.61"], 0),
            ],
            footprint: Footprint {
                idle: (Some(6116), Some(18)),
                under_load: (Some(7840), Some(33)),
                after_restarts: (Some(5912), Some(17)),
                processes_left: 1,
            },
            outside: Some(Outside {
                speed: overhead(
                    ["0.982", "0.940-0.989", "1.021", "1.006-1.060", "1.015", "1.009-1.037"],
                    ["1.204", "1.172-1.225", "0.830", "0.814-0.853", "0.799", "0.792-0.812"],
                ),
                speed_two_threads: overhead(
                    ["0.985", "0.962-1.000", "1.016", "1.000-1.041", "1.026", "1.015-1.030"],
                    ["1.298", "1.291-1.307", "0.775", "0.765-0.775", "0.786", "0.774-0.798"],
                ),
                tail: tail(
                    "p99_quiet=1.87 p99_restarts=1.96 p99_ratio=1.04 p99_ratio_range=0.94-1.07 \
                     within_ratio=1.00 within_ratio_range=0.97-1.03 near_max=8.27 excess_per_restart=-0 \
                     p99_probed=1.58 signals=28 errors=none load_restart_median=41.8 load_restart_max=78.5 \
                     restarts=29 latency_median=11.5 latency_p90=17.0 latency_max=20.3",
                ),
                tail_standby: tail(
                    "p99_quiet=1.85 p99_restarts=1.91 p99_ratio=1.04 p99_ratio_range=0.98-1.05 \
                     within_ratio=1.02 within_ratio_range=0.99-1.04 near_max=6.47 excess_per_restart=59 \
                     p99_probed=1.48 signals=28 errors=none load_restart_median=4.0 load_restart_max=5.6 \
                     restarts=31 latency_median=4.0 latency_p90=6.0 latency_max=7.2",
                ),
                tls: TlsLatency::from_line(line(
                    "tls_latency.py",
                    "full_p50=0.909 full_p99=1.249 resumed_p50=0.645 resumed_p99=0.914 resumed=299 \
                     count=300 clients=400 clients_resumed=400 wrk_conn_ms=0.342 wrk_cpu_us=134.901 \
                     after_restart_resumed=400 other_full_p50=1.035 other_full_p99=1.300 \
                     other_resumed_p50=0.739 other_resumed_p99=1.000 other_resumed=0 other_count=300 \
                     other_clients=400 other_clients_resumed=400 other_wrk_conn_ms=0.427 \
                     other_wrk_cpu_us=258.927 other_after_restart_resumed=0 ratio_full_p50=0.878 \
                     ratio_resumed_p50=0.872 ratio_wrk_conn_ms=0.802 ratio_wrk_cpu_us=0.521",
                ))
                .expect("every key"),
                tls_other: Some(
                    "/tmp/gograce-tls -cert {cert} -key {key} -a0 127.0.0.1:{port} -a1 127.0.0.1:0 -a2 127.0.0.1:0"
                        .into(),
                ),
                footprint: DrainCpu::from_line(line(
                    "drain_cpu.py",
                    "connections=10000 rss_idle_kib=5748 rss_idle_connections_kib=141832 serving_cpu=0.0 draining_cpu=5.0",
                ))
                .expect("every key"),
                crash: CrashUnderLoad::from_line(line(
                    "crash_under_load.py",
                    "supervised_killed=3 supervised_answered=71370 supervised_refused=0 supervised_failed=1 \
                     unsupervised_killed=1 unsupervised_answered=9000 unsupervised_refused=403 unsupervised_failed=0",
                ))
                .expect("every key"),
            }),
        }
    }

    #[test]
    fn the_benchmarks_section_keeps_its_format() {
        let report = golden_report();
        let section = benchmarks_section(&report.markdown());
        if section != GOLDEN {
            let at = section
                .char_indices()
                .zip(GOLDEN.chars())
                .find(|((_, a), b)| a != b)
                .map_or(section.len().min(GOLDEN.len()), |((i, _), _)| i);
            panic!(
                "the section differs from the golden one at byte {at}:\nrendered: {:?}\ngolden:   {:?}",
                &section[at.saturating_sub(80)..(at + 80).min(section.len())],
                GOLDEN.get(at.saturating_sub(80)..(at + 80).min(GOLDEN.len()))
            );
        }
    }

    #[test]
    fn figures_a_script_did_not_report_show_as_a_question_mark() {
        let mut report = golden_report();
        let o = report.outside.as_mut().expect("a full run");
        o.tail.probed = None;
        o.tail.load_restart = None;
        o.tls.gracedemo.wrk = None;
        let md = report.markdown();
        assert!(md.contains("| ? / **?** | 4.0 / **7.2** | max < 10 ms |"), "{md}");
        assert!(md.contains("| ? / **?** | 4.0 / **5.6** | max < 10 ms |"), "{md}");
        assert!(md.contains("| ? / 28 | 31 / 28 |"), "{md}");
        assert!(
            md.contains("each resumed: ? ms per connection, ? µs of server CPU"),
            "{md}"
        );
        assert!(
            md.contains("| server CPU per connection | ? µs | 258.927 µs | 0.521× |"),
            "{md}"
        );
    }

    #[test]
    fn without_another_tls_server_its_table_is_left_out() {
        let mut report = golden_report();
        let o = report.outside.as_mut().expect("a full run");
        o.tls_other = None;
        let md = report.markdown();
        assert!(!md.contains("Beside another server"), "{md}");
        assert!(md.contains("### Footprint and draining CPU"), "{md}");
    }

    #[test]
    fn a_quick_report_is_the_in_process_part_only() {
        let mut report = golden_report();
        report.outside = None;
        let md = report.markdown();
        assert!(md.starts_with("### Every request across restarts"), "{md}");
        let json = report.json();
        assert!(!json.contains("\"outside\""), "{json}");
        assert!(json.contains("\"processes_left\": 1\n}"), "{json}");
    }

    #[test]
    fn the_json_keeps_every_key_each_script_printed() {
        let json = golden_report().json();
        assert!(json.contains("\"within_ratio_range\": \"0.97-1.03\""), "{json}");
        assert!(json.contains("\"latency_p90\": \"17.0\""), "{json}");
        assert!(json.contains("\"crash_under_load\": {"), "{json}");
        assert!(
            json.contains("\"restart_latency_ms\": [46.600, 0.010, 0.010"),
            "{json}"
        );
    }
}
