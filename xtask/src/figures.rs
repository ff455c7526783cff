//! The figures each measurement script reports, as typed records. A script's last line is
//! `result: key=value ...`; [`ResultLine`] reads it, and each record takes the keys it needs
//! from it by name, so a script that stops printing a key, or prints it malformed, fails the
//! bench at that script with the key named, instead of a `?` in the report.
//!
//! The values stay the text the script printed (validated): the report shows them as they are,
//! rounded by the script.

use std::fmt;

/// Why a `result:` line could not be read into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FiguresError {
    /// The script printed no line starting with `result: `.
    NoResultLine { script: String },
    /// A word of the line is not `key=value`.
    NotKeyValue { script: String, word: String },
    /// A key appears twice.
    Repeated { script: String, key: String },
    /// A key the record needs is absent.
    Missing { script: String, key: String },
    /// A key's value is not of the form the record needs.
    Malformed {
        script: String,
        key: String,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for FiguresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FiguresError::NoResultLine { script } => {
                write!(f, "{script} printed no `result: key=value ...` line")
            }
            FiguresError::NotKeyValue { script, word } => {
                write!(f, "{script}'s result line: {word:?} is not key=value")
            }
            FiguresError::Repeated { script, key } => {
                write!(f, "{script}'s result line gives {key:?} twice")
            }
            FiguresError::Missing { script, key } => {
                write!(f, "{script}'s result line has no {key:?}")
            }
            FiguresError::Malformed {
                script,
                key,
                value,
                expected,
            } => write!(f, "{script}'s result line: {key}={value:?} is not {expected}"),
        }
    }
}

impl std::error::Error for FiguresError {}

impl From<FiguresError> for String {
    fn from(e: FiguresError) -> String {
        e.to_string()
    }
}

/// The `key=value` pairs of a script's `result:` line, in the order printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLine {
    script: String,
    pairs: Vec<(String, String)>,
}

/// What a value must look like.
#[derive(Clone, Copy)]
enum Kind {
    /// A decimal number, e.g. `0.982`, `-0`, `400`.
    Number,
    /// Two numbers joined by `-`, e.g. `0.940-0.989`.
    Range,
    /// One of a few words.
    Word(&'static [&'static str]),
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Number => "a number",
            Kind::Range => "a range MIN-MAX of two numbers",
            Kind::Word(_) => "one of the expected words",
        }
    }

    fn accepts(self, v: &str) -> bool {
        let number = |s: &str| !s.is_empty() && s.parse::<f64>().is_ok_and(f64::is_finite);
        match self {
            Kind::Number => number(v),
            // The first number may be negative ("-0"): split at a '-' after the first byte.
            Kind::Range => v
                .get(1..)
                .and_then(|rest| rest.find('-'))
                .is_some_and(|i| number(&v[..=i]) && number(&v[i + 2..])),
            Kind::Word(words) => words.contains(&v),
        }
    }
}

impl ResultLine {
    /// The last `result: ` line of `output`, which `script` printed.
    pub fn from_output(script: &str, output: &str) -> Result<ResultLine, FiguresError> {
        let line = output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("result: "))
            .ok_or_else(|| FiguresError::NoResultLine {
                script: script.to_owned(),
            })?;
        ResultLine::parse(script, line)
    }

    /// The pairs of `line` (what follows `result: `).
    pub fn parse(script: &str, line: &str) -> Result<ResultLine, FiguresError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=').ok_or_else(|| FiguresError::NotKeyValue {
                script: script.to_owned(),
                word: word.to_owned(),
            })?;
            if pairs.iter().any(|(seen, _)| seen == k) {
                return Err(FiguresError::Repeated {
                    script: script.to_owned(),
                    key: k.to_owned(),
                });
            }
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(ResultLine {
            script: script.to_owned(),
            pairs,
        })
    }

    /// Every pair, in the order printed (the JSON report keeps them all).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn checked(&self, key: &str, kind: Kind) -> Result<Option<String>, FiguresError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) if kind.accepts(v) => Ok(Some(v.to_owned())),
            Some(v) => Err(FiguresError::Malformed {
                script: self.script.clone(),
                key: key.to_owned(),
                value: v.to_owned(),
                expected: kind.expected(),
            }),
        }
    }

    fn required(&self, key: &str, kind: Kind) -> Result<String, FiguresError> {
        self.checked(key, kind)?.ok_or_else(|| FiguresError::Missing {
            script: self.script.clone(),
            key: key.to_owned(),
        })
    }

    fn number(&self, key: &str) -> Result<String, FiguresError> {
        self.required(key, Kind::Number)
    }

    fn range(&self, key: &str) -> Result<String, FiguresError> {
        self.required(key, Kind::Range)
    }

    /// `Some` when `key` is present (then it must be a number).
    fn maybe_number(&self, key: &str) -> Result<Option<String>, FiguresError> {
        self.checked(key, Kind::Number)
    }

    /// The integer value of `key`.
    fn count(&self, key: &str) -> Result<u64, FiguresError> {
        let v = self.number(key)?;
        v.parse().map_err(|_| FiguresError::Malformed {
            script: self.script.clone(),
            key: key.to_owned(),
            value: v,
            expected: "a whole number",
        })
    }
}

/// A script's figures: the script, and how its `result:` line is read.
pub trait Record: Sized {
    /// The script in `xtask/scripts/`.
    const SCRIPT: &'static str;
    /// Reads the figures, failing on the first missing or malformed key.
    fn from_line(line: ResultLine) -> Result<Self, FiguresError>;
}

/// One protocol's line of `overhead.py`: gracedemo ÷ plain hyper, median of the rounds and
/// their range.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolOverhead {
    /// Requests per second.
    pub rps: String,
    pub rps_range: String,
    /// Server CPU per request, alternating rounds.
    pub cpu: String,
    pub cpu_range: String,
    /// Server CPU per request, both servers at once.
    pub side_cpu: String,
    pub side_cpu_range: String,
}

/// `overhead.py`: speed against plain hyper.
#[derive(Debug, Clone, PartialEq)]
pub struct Overhead {
    /// HTTP/1.1 keep-alive (`wrk`).
    pub h1: ProtocolOverhead,
    /// h2c (`h2load`).
    pub h2: ProtocolOverhead,
    pub line: ResultLine,
}

impl Record for Overhead {
    const SCRIPT: &str = "overhead.py";

    fn from_line(line: ResultLine) -> Result<Overhead, FiguresError> {
        let protocol = |p: &str| -> Result<ProtocolOverhead, FiguresError> {
            Ok(ProtocolOverhead {
                rps: line.number(&format!("{p}_rps"))?,
                rps_range: line.range(&format!("{p}_rps_range"))?,
                cpu: line.number(&format!("{p}_cpu"))?,
                cpu_range: line.range(&format!("{p}_cpu_range"))?,
                side_cpu: line.number(&format!("{p}_side_cpu"))?,
                side_cpu_range: line.range(&format!("{p}_side_cpu_range"))?,
            })
        };
        Ok(Overhead {
            h1: protocol("h1")?,
            h2: protocol("h2")?,
            line,
        })
    }
}

/// `restart_tail.py`: the latency tail across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartTail {
    /// p99 without restarts, ms (median of the rounds).
    pub p99_quiet: String,
    /// p99 with a `SIGUSR2` every second, ms.
    pub p99_restarts: String,
    /// The rounds' ratios of the two: median and range.
    pub p99_ratio: String,
    pub p99_ratio_range: String,
    /// Within the runs with restarts: all requests' p99 ÷ those far from a signal.
    pub within_ratio: String,
    /// The slowest request started within 100 ms of a signal, ms.
    pub near_max: String,
    /// Requests near a signal slower than the far p99, beyond 1 %, per restart.
    pub excess_per_restart: String,
    /// The prober's `wrk` p99, ms.
    pub p99_probed: String,
    /// Signals sent in the p99 runs.
    pub signals: String,
    /// `none` or `some`.
    pub errors: String,
    /// Restart latency under `restartload`'s load (median, max), ms: absent when a run
    /// timed none.
    pub load_restart: Option<(String, String)>,
    /// Restart latency timed by the prober: absent when it timed none.
    pub probed: Option<ProbedRestarts>,
    pub line: ResultLine,
}

/// The restarts `restart_tail.py`'s prober timed (signal → first answer from the new pid).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbedRestarts {
    pub restarts: String,
    pub latency_median: String,
    pub latency_max: String,
}

impl Record for RestartTail {
    const SCRIPT: &str = "restart_tail.py";

    fn from_line(line: ResultLine) -> Result<RestartTail, FiguresError> {
        let load_restart = match line.maybe_number("load_restart_median")? {
            Some(median) => Some((median, line.number("load_restart_max")?)),
            None => None,
        };
        let probed = match line.maybe_number("restarts")? {
            Some(restarts) => Some(ProbedRestarts {
                restarts,
                latency_median: line.number("latency_median")?,
                latency_max: line.number("latency_max")?,
            }),
            None => None,
        };
        Ok(RestartTail {
            p99_quiet: line.number("p99_quiet")?,
            p99_restarts: line.number("p99_restarts")?,
            p99_ratio: line.number("p99_ratio")?,
            p99_ratio_range: line.range("p99_ratio_range")?,
            within_ratio: line.number("within_ratio")?,
            near_max: line.number("near_max")?,
            excess_per_restart: line.number("excess_per_restart")?,
            p99_probed: line.number("p99_probed")?,
            signals: line.number("signals")?,
            errors: line.required("errors", Kind::Word(&["none", "some"]))?,
            load_restart,
            probed,
            line,
        })
    }
}

/// One server's figures in `tls_latency.py` (gracedemo's keys are bare, the other server's
/// have `other_` before them).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServer {
    /// Full handshakes, connect → whole answer, ms.
    pub full_p50: String,
    pub full_p99: String,
    /// Resumption offered, ms.
    pub resumed_p50: String,
    pub resumed_p99: String,
    /// How many of `count` offers resumed.
    pub resumed: String,
    pub count: String,
    /// Clients taking turns, and how many of them resumed; then after a `SIGUSR2`.
    pub clients: String,
    pub clients_resumed: String,
    pub after_restart_resumed: String,
    /// `wrk`, one connection at a time: ms per connection and µs of server CPU; absent when
    /// the script could not measure it.
    pub wrk: Option<(String, String)>,
}

impl TlsServer {
    fn from_line(line: &ResultLine, prefix: &str) -> Result<TlsServer, FiguresError> {
        let n = |key: &str| line.number(&format!("{prefix}{key}"));
        let wrk = match line.maybe_number(&format!("{prefix}wrk_conn_ms"))? {
            Some(ms) => Some((ms, n("wrk_cpu_us")?)),
            None => None,
        };
        Ok(TlsServer {
            full_p50: n("full_p50")?,
            full_p99: n("full_p99")?,
            resumed_p50: n("resumed_p50")?,
            resumed_p99: n("resumed_p99")?,
            resumed: n("resumed")?,
            count: n("count")?,
            clients: n("clients")?,
            clients_resumed: n("clients_resumed")?,
            after_restart_resumed: n("after_restart_resumed")?,
            wrk,
        })
    }
}

/// `tls_latency.py`: new TLS connections, and those of another server beside when asked.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsLatency {
    pub gracedemo: TlsServer,
    /// The other server (`--other`), with the ratios gracedemo ÷ other.
    pub other: Option<(TlsServer, TlsRatios)>,
    pub line: ResultLine,
}

/// gracedemo ÷ the other server, for the figures where both were measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsRatios {
    pub full_p50: Option<String>,
    pub resumed_p50: Option<String>,
    pub wrk_conn_ms: Option<String>,
    pub wrk_cpu_us: Option<String>,
}

impl Record for TlsLatency {
    const SCRIPT: &str = "tls_latency.py";

    fn from_line(line: ResultLine) -> Result<TlsLatency, FiguresError> {
        let other = if line.raw("other_full_p50").is_some() {
            Some((
                TlsServer::from_line(&line, "other_")?,
                TlsRatios {
                    full_p50: line.maybe_number("ratio_full_p50")?,
                    resumed_p50: line.maybe_number("ratio_resumed_p50")?,
                    wrk_conn_ms: line.maybe_number("ratio_wrk_conn_ms")?,
                    wrk_cpu_us: line.maybe_number("ratio_wrk_cpu_us")?,
                },
            ))
        } else {
            None
        };
        Ok(TlsLatency {
            gracedemo: TlsServer::from_line(&line, "")?,
            other,
            line,
        })
    }
}

/// `drain_cpu.py`: footprint with many connections, and CPU while serving and draining.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainCpu {
    pub connections: String,
    pub rss_idle_kib: String,
    pub rss_idle_connections_kib: String,
    /// % of a core.
    pub serving_cpu: String,
    pub draining_cpu: String,
    pub line: ResultLine,
}

impl Record for DrainCpu {
    const SCRIPT: &str = "drain_cpu.py";

    fn from_line(line: ResultLine) -> Result<DrainCpu, FiguresError> {
        Ok(DrainCpu {
            connections: line.number("connections")?,
            rss_idle_kib: line.number("rss_idle_kib")?,
            rss_idle_connections_kib: line.number("rss_idle_connections_kib")?,
            serving_cpu: line.number("serving_cpu")?,
            draining_cpu: line.number("draining_cpu")?,
            line,
        })
    }
}

/// One run of `crash_under_load.py`: `kill -9` of the serving process under load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRun {
    /// Serving processes killed.
    pub killed: u64,
    pub answered: u64,
    /// Connections refused: none while a supervisor holds the sockets.
    pub refused: u64,
    /// Requests that failed in flight (those the killed process held).
    pub failed: u64,
}

/// `crash_under_load.py`: a crash under load with gracedemo's `--supervise`, and without.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashUnderLoad {
    pub supervised: CrashRun,
    pub unsupervised: CrashRun,
    pub line: ResultLine,
}

impl Record for CrashUnderLoad {
    const SCRIPT: &str = "crash_under_load.py";

    fn from_line(line: ResultLine) -> Result<CrashUnderLoad, FiguresError> {
        let run = |p: &str| -> Result<CrashRun, FiguresError> {
            Ok(CrashRun {
                killed: line.count(&format!("{p}_killed"))?,
                answered: line.count(&format!("{p}_answered"))?,
                refused: line.count(&format!("{p}_refused"))?,
                failed: line.count(&format!("{p}_failed"))?,
            })
        };
        Ok(CrashUnderLoad {
            supervised: run("supervised")?,
            unsupervised: run("unsupervised")?,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> ResultLine {
        ResultLine::parse("test.py", text).expect("a well-formed line")
    }

    const DRAIN: &str = "connections=10000 rss_idle_kib=5748 rss_idle_connections_kib=141832 \
                         serving_cpu=0.0 draining_cpu=5.0";

    #[test]
    fn a_record_takes_its_keys_by_name() {
        let d = DrainCpu::from_line(line(DRAIN)).expect("every key present");
        assert_eq!(d.connections, "10000");
        assert_eq!(d.rss_idle_connections_kib, "141832");
        assert_eq!(d.draining_cpu, "5.0");
    }

    #[test]
    fn the_last_result_line_of_the_output_is_read() {
        let out = "round 1\nresult: a=1\nmore\nresult: a=2 b=3\n";
        let l = ResultLine::from_output("x.py", out).expect("a result line");
        assert_eq!(l.pairs(), [("a".into(), "2".into()), ("b".into(), "3".into())]);
        assert_eq!(
            ResultLine::from_output("x.py", "no figures\n"),
            Err(FiguresError::NoResultLine {
                script: "x.py".into()
            })
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let e =
            DrainCpu::from_line(line("connections=10000 rss_idle_kib=5748")).expect_err("keys are missing");
        assert_eq!(
            e,
            FiguresError::Missing {
                script: "test.py".into(),
                key: "rss_idle_connections_kib".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "test.py's result line has no \"rss_idle_connections_kib\""
        );
    }

    #[test]
    fn a_malformed_value_is_named_with_what_was_expected() {
        let e = DrainCpu::from_line(line(&DRAIN.replace("serving_cpu=0.0", "serving_cpu=lots")))
            .expect_err("not a number");
        assert_eq!(
            e.to_string(),
            "test.py's result line: serving_cpu=\"lots\" is not a number"
        );
        let ranges = "h1_rps=1 h1_rps_range=0.9 h1_cpu=1 h1_cpu_range=0.9-1.1 \
                      h1_side_cpu=1 h1_side_cpu_range=0.9-1.1";
        let e = Overhead::from_line(line(ranges)).expect_err("0.9 is no range");
        assert!(
            matches!(&e, FiguresError::Malformed { key, expected, .. }
                if key == "h1_rps_range" && expected.contains("range")),
            "{e}"
        );
        let tail = "errors=maybe";
        let e = RestartTail::from_line(line(tail)).expect_err("missing keys first");
        assert!(matches!(e, FiguresError::Missing { .. }), "{e}");
    }

    #[test]
    fn words_that_are_not_pairs_and_repeated_keys_are_refused() {
        assert_eq!(
            ResultLine::parse("x.py", "a=1 oops"),
            Err(FiguresError::NotKeyValue {
                script: "x.py".into(),
                word: "oops".into()
            })
        );
        assert_eq!(
            ResultLine::parse("x.py", "a=1 a=2"),
            Err(FiguresError::Repeated {
                script: "x.py".into(),
                key: "a".into()
            })
        );
    }

    #[test]
    fn ranges_and_signed_numbers() {
        assert!(Kind::Range.accepts("0.940-0.989"));
        assert!(Kind::Range.accepts("-0.5-1"));
        assert!(!Kind::Range.accepts("0.940"));
        assert!(!Kind::Range.accepts("0.9-"));
        assert!(Kind::Number.accepts("-0"));
        assert!(!Kind::Number.accepts("nan"));
        assert!(!Kind::Number.accepts("inf"));
    }

    #[test]
    fn optional_groups_are_all_or_nothing() {
        let base = "p99_quiet=1.87 p99_restarts=1.96 p99_ratio=1.04 p99_ratio_range=0.94-1.07 \
                    within_ratio=1.00 within_ratio_range=0.99-1.01 near_max=8.27 \
                    excess_per_restart=-0 p99_probed=1.58 signals=28 errors=none";
        let t = RestartTail::from_line(line(base)).expect("the optional groups may be absent");
        assert_eq!((t.load_restart, t.probed), (None, None));
        let e = RestartTail::from_line(line(&format!("{base} load_restart_median=41.8")))
            .expect_err("a median without its max");
        assert_eq!(
            e,
            FiguresError::Missing {
                script: "test.py".into(),
                key: "load_restart_max".into()
            }
        );
    }

    #[test]
    fn crash_counts_are_whole_numbers() {
        let ok = "supervised_killed=3 supervised_answered=71370 supervised_refused=0 \
                  supervised_failed=1 unsupervised_killed=1 unsupervised_answered=9000 \
                  unsupervised_refused=403 unsupervised_failed=0";
        let c = CrashUnderLoad::from_line(line(ok)).expect("every count present");
        assert_eq!(c.supervised.refused, 0);
        assert_eq!(c.unsupervised.refused, 403);
        let e = CrashUnderLoad::from_line(line(&ok.replace("=71370", "=7.5")))
            .expect_err("a fraction of an answer");
        assert!(e.to_string().contains("a whole number"), "{e}");
    }
}
