//! `cargo xtask bench`: speed against plain hyper, the latency tail across restarts, new TLS
//! connections, footprint and draining CPU, measured from outside the server (`wrk` and
//! `h2load` on core 1, the server on core 0: see `external`); a crash under load with and
//! without the supervisor; and every request across restarts in four modes, from this
//! process's own client, which counts each failure by kind.
//! `--quick` runs only that last part, briefly: a correctness check, no timing.
//!
//! Not run here: instructions per request (`xtask/scripts/instructions.py`), which needs
//! valgrind, which the bench does not install; [`APART`] is what the bench says about it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grace_tests::load::{self, LoadConfig, fd_count, rss_kib, who_answers};
use tokio::runtime::Runtime;

use crate::external;
use crate::figures::Record;
use crate::lines::{LogLines, serving_port};
use crate::report::{self, Footprint, ModeFigures, Outside, Report, Usage};

/// The request every in-process load sends.
pub const PATH: &str = "/sleep/?duration=0s";
const MARKER: &str = "GRACE_BENCH_MARKER";

/// The measurement the bench leaves to a separate command, and why.
pub const APART: &str = "not run by the bench: instructions and cache misses per request \
    (callgrind) need valgrind, which the bench does not install; measure them with \
    `python3 xtask/scripts/instructions.py [--cache]` (BENCHMARKS.md, \"Measured apart from the bench\")";

/// Sizes of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub quick: bool,
    pub connections: usize,
    pub load_for: Duration,
    pub restart_every: Duration,
    pub restarts_for_footprint: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                connections: 8,
                load_for: Duration::from_secs(2),
                restart_every: Duration::from_millis(500),
                restarts_for_footprint: 5,
            }
        } else {
            Plan {
                quick,
                connections: 16,
                load_for: Duration::from_secs(10),
                restart_every: Duration::from_secs(1),
                restarts_for_footprint: 20,
            }
        }
    }
}

/// Where the workspace and its release binaries are.
struct Paths {
    root: PathBuf,
    target: PathBuf,
    release: PathBuf,
}

impl Paths {
    fn new() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let release = target.join("release");
        Paths {
            root,
            target,
            release,
        }
    }

    fn gracedemo(&self) -> String {
        self.release.join("gracedemo").to_string_lossy().into_owned()
    }
}

/// Runs the bench: builds, measures, writes the report; fails when a request failed across
/// restarts or a crash under the supervisor refused a connection.
pub fn run(quick: bool, tls_other: Option<String>) -> Result<(), String> {
    let plan = Plan::new(quick);
    if !quick {
        external::ensure_tools()?;
    }
    let paths = Paths::new();
    build_release()?;
    let (modes, footprint) = measure_in_process(&plan, &paths)?;
    let outside = if quick {
        None
    } else {
        Some(measure_outside(&paths, tls_other)?)
    };
    let report = Report {
        plan,
        machine: machine(),
        modes,
        footprint,
        outside,
    };
    write_report(&report, &paths)?;
    if !quick {
        eprintln!("{APART}");
    }
    verdict(&report)
}

/// Builds the release binaries the bench starts.
fn build_release() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Not --quiet: a first release build takes minutes, and cargo's progress says why.
    // gracedemo is built on its own, as a user builds it: built beside xtask, cargo would
    // unify features and give it gracehttp's `axum` feature (which the tests use).
    eprintln!("building release binaries (baseline, restartload, gracedemo)...");
    let xtask_bins = [
        "build",
        "--release",
        "-p",
        "xtask",
        "--bin",
        "baseline",
        "--bin",
        "restartload",
    ];
    for args in [&xtask_bins[..], &["build", "--release", "-p", "gracedemo"][..]] {
        let status = Command::new(&cargo)
            .args(args)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("release build failed: cargo {}", args.join(" ")));
        }
    }
    Ok(())
}

/// The release gracedemo on free ports, and every generation it starts: all carry the
/// marker in their environment and are killed when this is dropped.
struct Demo {
    marker: String,
    child: Child,
    port: u16,
}

impl Demo {
    fn start(paths: &Paths) -> Result<Demo, String> {
        let marker = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
        let mut child = Command::new(paths.gracedemo())
            .args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
            .env(MARKER, &marker)
            .env("RUST_LOG", "warn,gracehttp=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start gracedemo: {e}"))?;
        let stderr = child.stderr.take().ok_or("gracedemo's stderr is not piped")?;
        // From here on, dropping `demo` kills it, whatever fails next.
        let mut demo = Demo {
            marker,
            child,
            port: 0,
        };
        let log = LogLines::read("gracedemo", stderr);
        let serving = log.wait_for("Serving ")?;
        demo.port = serving_port(&serving).ok_or("no port in gracedemo's Serving line")?;
        log.discard_the_rest();
        Ok(demo)
    }

    /// The processes of the server alive now.
    fn processes(&self) -> Vec<u32> {
        grace_tests::pids_with_env(MARKER, &self.marker)
    }

    /// The pid answering now.
    fn answering(&self, runtime: &Runtime) -> Result<u32, String> {
        runtime
            .block_on(who_answers(self.port, PATH))
            .ok_or_else(|| format!("gracedemo does not answer on port {}", self.port))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every request across restarts, and the footprint, measured from this process against one
/// gracedemo, stopped at the end.
fn measure_in_process(plan: &Plan, paths: &Paths) -> Result<(Vec<ModeFigures>, Footprint), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let demo = Demo::start(paths)?;
    let first = demo.answering(&runtime)?;
    std::thread::sleep(Duration::from_millis(300)); // let the start's allocations settle
    let idle = usage(first);
    let modes = restart_under_load(plan, &runtime, demo.port);
    let under_load = usage_under_load(plan, &runtime, &demo)?;
    let last = restart_in_a_row(plan, &runtime, &demo)?;
    std::thread::sleep(Duration::from_millis(500)); // let the old generations exit
    let footprint = Footprint {
        idle,
        under_load,
        after_restarts: usage(last),
        processes_left: demo.processes().len(),
    };
    Ok((modes, footprint))
}

fn usage(pid: u32) -> Usage {
    (rss_kib(pid), fd_count(pid))
}

/// `SIGUSR2` every [`Plan::restart_every`] under load, in each of the four modes.
fn restart_under_load(plan: &Plan, runtime: &Runtime, port: u16) -> Vec<ModeFigures> {
    let mut modes = Vec::new();
    for (http2, keep_alive) in [(false, true), (false, false), (true, true), (true, false)] {
        let cfg = LoadConfig {
            port,
            path: PATH.into(),
            connections: plan.connections,
            http2,
            keep_alive,
            duration: plan.load_for,
            max_requests: 5_000_000,
        };
        let mode = cfg.mode();
        eprintln!(
            "restart under load: {mode} ({} connections, {:?}, SIGUSR2 every {:?})...",
            plan.connections, plan.load_for, plan.restart_every
        );
        let (load, restarts) = runtime.block_on(load::restart_under_load(cfg, plan.restart_every));
        modes.push(ModeFigures::of(mode, &load, &restarts));
    }
    modes
}

/// RSS and fds of the serving process one second into a two-second load.
fn usage_under_load(plan: &Plan, runtime: &Runtime, demo: &Demo) -> Result<Usage, String> {
    let pid = demo.answering(runtime)?;
    let cfg = LoadConfig {
        port: demo.port,
        path: PATH.into(),
        connections: plan.connections,
        http2: false,
        keep_alive: true,
        duration: Duration::from_secs(2),
        max_requests: 10_000_000,
    };
    Ok(runtime.block_on(async {
        let l = tokio::spawn(load::run_load(cfg));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let measured = usage(pid);
        let _ = l.await;
        measured
    }))
}

/// [`Plan::restarts_for_footprint`] restarts, each waited for (a new pid answering, within
/// 10 s); returns the pid serving at the end.
fn restart_in_a_row(plan: &Plan, runtime: &Runtime, demo: &Demo) -> Result<u32, String> {
    eprintln!("footprint: {} restarts in a row...", plan.restarts_for_footprint);
    let mut current = demo.answering(runtime)?;
    for _ in 0..plan.restarts_for_footprint {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(current as i32),
            nix::sys::signal::Signal::SIGUSR2,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match runtime.block_on(who_answers(demo.port, PATH)) {
                Some(p) if p != current => {
                    current = p;
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
    Ok(current)
}

/// The measurements from outside: the scripts, the server on core 0, the load on core 1.
fn measure_outside(paths: &Paths, tls_other: Option<String>) -> Result<Outside, String> {
    let root = &paths.root;
    let target = paths.release.to_string_lossy().into_owned();
    let demo = paths.gracedemo();
    let speed = ["--target", &target, "--rounds", "5", "--seconds", "4"];
    let tail = ["--binary", &demo, "--seconds", "8", "--rounds", "4"];
    let mut tls = vec!["--binary", &demo, "--count", "300"];
    if let Some(other) = &tls_other {
        tls.extend(["--other", other, "--rounds", "3"]);
    }
    Ok(Outside {
        speed: script(root, &speed)?,
        speed_two_threads: script(root, &[&speed[..], &["--threads", "2"]].concat())?,
        tail: script(root, &tail)?,
        tail_standby: script(root, &[&tail[..], &["--server-args=--standby"]].concat())?,
        tls: script(root, &tls)?,
        tls_other,
        footprint: script(root, &["--binary", &demo, "--connections", "10000"])?,
        crash: script(root, &["--binary", &demo])?,
    })
}

/// Runs `R`'s script with `args` and reads its figures.
fn script<R: Record>(root: &Path, args: &[&str]) -> Result<R, String> {
    Ok(R::from_line(external::run_script(root, R::SCRIPT, args)?)?)
}

/// Prints the Markdown; writes the JSON under `target/bench/`, and the Markdown into
/// BENCHMARKS.md after a full run.
fn write_report(report: &Report, paths: &Paths) -> Result<(), String> {
    let md = report.markdown();
    println!("{md}");
    let dir = paths.target.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let quick = if report.plan.quick { "quick-" } else { "" };
    let file = dir.join(format!("bench-{quick}{stamp}.json"));
    std::fs::write(&file, report.json()).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("wrote {}", file.display());
    if !report.plan.quick {
        let path = paths.root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let section = report::benchmarks_section(&md);
        std::fs::write(&path, external::splice(&old, &section)).map_err(|e| format!("BENCHMARKS.md: {e}"))?;
        eprintln!("wrote BENCHMARKS.md");
    }
    Ok(())
}

/// The bench's own correctness checks: no request failed across restarts; with the
/// supervisor, a crash under load refused no connection.
fn verdict(report: &Report) -> Result<(), String> {
    let mut wrong = Vec::new();
    let failed: u64 = report.modes.iter().map(|m| m.failures.total()).sum();
    if failed > 0 {
        for m in report.modes.iter().filter(|m| !m.examples.is_empty()) {
            eprintln!("{}: {:?}", m.mode, m.examples);
        }
        wrong.push(format!("{failed} requests failed across restarts"));
    }
    if let Some(crash) = report.outside.as_ref().map(|o| &o.crash) {
        let s = &crash.supervised;
        eprintln!(
            "crash under load: with --supervise, {} kill -9: {} answered, {} refused, {} failed in flight; \
             without a supervisor, {} kill -9: {} answered, {} refused",
            s.killed,
            s.answered,
            s.refused,
            s.failed,
            crash.unsupervised.killed,
            crash.unsupervised.answered,
            crash.unsupervised.refused
        );
        if s.killed == 0 || s.refused > 0 {
            wrong.push(format!(
                "a crash under load with --supervise: {} kill -9, {} connections refused (expected at least one kill and none refused)",
                s.killed, s.refused
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// CPU, cores, memory, kernel and rustc of this machine, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}, Linux {}, {rustc}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::golden_report;

    #[test]
    fn a_refused_connection_under_the_supervisor_fails_the_bench() {
        let with = |killed: u64, refused: u64| {
            let mut report = golden_report();
            let crash = &mut report.outside.as_mut().expect("a full run").crash;
            crash.supervised.killed = killed;
            crash.supervised.refused = refused;
            verdict(&report)
        };
        assert_eq!(with(3, 0), Ok(()));
        let e = with(3, 2).expect_err("a refused connection");
        assert!(e.contains("2 connections refused"), "{e}");
        let e = with(0, 0).expect_err("nothing was killed: nothing was checked");
        assert!(e.contains("0 kill -9"), "{e}");
    }

    #[test]
    fn failed_requests_fail_the_bench() {
        let mut report = golden_report();
        report.modes[1].failures.reset = 3;
        let e = verdict(&report).expect_err("three requests failed");
        assert_eq!(e, "3 requests failed across restarts");
    }
}
