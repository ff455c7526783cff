//! `cargo xtask bench`: speed against plain hyper, the latency tail across restarts, new TLS
//! connections, footprint and draining CPU, measured from outside the server (`wrk` and
//! `h2load` on core 1, the server on core 0: see `external`); and every request across
//! restarts in four modes, from this process's own client, which counts each failure by kind.
//! `--quick` runs only that last part, briefly: a correctness check, no timing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grace_tests::load::{self, LoadConfig, LoadResult, RestartTiming, fd_count, rss_kib, who_answers};

use crate::external::{self, Figures, get};
use crate::lines::{LogLines, serving_port};

const PATH: &str = "/sleep/?duration=0s";
const MARKER: &str = "GRACE_BENCH_MARKER";

/// Sizes of one run.
struct Plan {
    quick: bool,
    connections: usize,
    load_for: Duration,
    restart_every: Duration,
    restarts_for_footprint: usize,
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

/// Every process a bench started (all generations carry the marker), killed at the end.
struct Cleanup {
    marker: String,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in grace_tests::pids_with_env(MARKER, &self.marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

struct ModeReport {
    mode: String,
    load: LoadResult,
    restarts: Vec<RestartTiming>,
}

impl ModeReport {
    fn windows(&self) -> Vec<(Instant, Instant)> {
        self.restarts
            .iter()
            .map(|r| (r.at, r.at + Duration::from_millis(200)))
            .collect()
    }
}

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

pub fn run(quick: bool, tls_other: Option<String>) -> Result<(), String> {
    let plan = Plan::new(quick);
    if !quick {
        external::ensure_tools()?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Not --quiet: a first release build takes minutes, and cargo's progress says why.
    // gracedemo is built on its own, as a user builds it: built beside xtask, cargo would
    // unify features and give it gracehttp's `axum` feature (which the tests use).
    eprintln!("building release binaries (baseline, restartload, gracedemo)...");
    for args in [
        &[
            "build",
            "--release",
            "-p",
            "xtask",
            "--bin",
            "baseline",
            "--bin",
            "restartload",
        ][..],
        &["build", "--release", "-p", "gracedemo"][..],
    ] {
        let status = Command::new(&cargo)
            .args(args)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("release build failed: cargo {}", args.join(" ")));
        }
    }
    let release = target.join("release");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let mut cleanup = Cleanup {
        marker: format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos()),
        children: Vec::new(),
    };

    // gracedemo, on free ports.
    let mut demo = Command::new(release.join("gracedemo"))
        .args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .env(MARKER, &cleanup.marker)
        .env("RUST_LOG", "warn,gracehttp=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start gracedemo: {e}"))?;
    let stderr = demo.stderr.take().ok_or("gracedemo's stderr is not piped")?;
    cleanup.children.push(demo);
    let demo_log = LogLines::read("gracedemo", stderr);
    let serving = demo_log.wait_for("Serving ")?;
    let port = serving_port(&serving).ok_or("no port in gracedemo's Serving line")?;
    demo_log.discard_the_rest();

    let first_pid = runtime
        .block_on(who_answers(port, PATH))
        .ok_or("gracedemo does not answer")?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = (rss_kib(first_pid), fd_count(first_pid));

    // 1. Restart under load, every mode.
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
        modes.push(ModeReport { mode, load, restarts });
    }

    // 2. Footprint: idle (measured above), under load, after N more restarts.
    let pid = runtime
        .block_on(who_answers(port, PATH))
        .ok_or("gracedemo stopped answering")?;
    let load_cfg = LoadConfig {
        port,
        path: PATH.into(),
        connections: plan.connections,
        http2: false,
        keep_alive: true,
        duration: Duration::from_secs(2),
        max_requests: 10_000_000,
    };
    let under = runtime.block_on(async {
        let l = tokio::spawn(load::run_load(load_cfg));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = (rss_kib(pid), fd_count(pid));
        let _ = l.await;
        m
    });
    eprintln!("footprint: {} restarts in a row...", plan.restarts_for_footprint);
    let mut current = pid;
    for _ in 0..plan.restarts_for_footprint {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(current as i32),
            nix::sys::signal::Signal::SIGUSR2,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match runtime.block_on(who_answers(port, PATH)) {
                Some(p) if p != current => {
                    current = p;
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = (rss_kib(current), fd_count(current));
    let survivors = grace_tests::pids_with_env(MARKER, &cleanup.marker);
    drop(cleanup); // the servers above are done: the measurements below start their own

    // 3. From outside: the server on core 0, the load generator on core 1.
    let outside = if plan.quick {
        None
    } else {
        let target_dir = release.to_string_lossy().into_owned();
        let demo = release.join("gracedemo").to_string_lossy().into_owned();
        Some(Outside {
            speed: external::run_script(
                &root,
                "overhead.py",
                &["--target", &target_dir, "--rounds", "5", "--seconds", "4"],
            )?,
            speed_two_threads: external::run_script(
                &root,
                "overhead.py",
                &[
                    "--target",
                    &target_dir,
                    "--rounds",
                    "5",
                    "--seconds",
                    "4",
                    "--threads",
                    "2",
                ],
            )?,
            tail: external::run_script(
                &root,
                "restart_tail.py",
                &["--binary", &demo, "--seconds", "8", "--rounds", "4"],
            )?,
            tail_standby: external::run_script(
                &root,
                "restart_tail.py",
                &[
                    "--binary",
                    &demo,
                    "--seconds",
                    "8",
                    "--rounds",
                    "4",
                    "--server-args=--standby",
                ],
            )?,
            tls: {
                let mut args = vec!["--binary", &demo, "--count", "300"];
                if let Some(other) = &tls_other {
                    args.extend(["--other", other, "--rounds", "3"]);
                }
                external::run_script(&root, "tls_latency.py", &args)?
            },
            tls_other: tls_other.clone(),
            footprint: external::run_script(
                &root,
                "drain_cpu.py",
                &["--binary", &demo, "--connections", "10000"],
            )?,
        })
    };

    // Report.
    let mut md = String::new();
    let machine = machine();
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
    for m in &modes {
        let w = m.windows();
        let f = &m.load.failures;
        let to_new = m.restarts.iter().map(|r| r.to_new_pid).collect::<Vec<_>>();
        let gone = m.restarts.iter().filter_map(|r| r.old_gone).collect::<Vec<_>>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            m.mode,
            m.load.requests,
            f.total(),
            f.refused,
            f.reset,
            f.timeout,
            f.non_2xx,
            m.restarts.len(),
            ms(m.load.latency(0.5, None)),
            ms(m.load.latency(0.99, None)),
            ms(m.load.latency(1.0, None)),
            ms(m.load.latency(0.99, Some(&w))),
            ms(m.load.latency(1.0, Some(&w))),
            ms(median(to_new.clone())),
            ms(to_new.iter().max().copied()),
            ms(median(gone.clone())),
            ms(gone.iter().max().copied()),
            f.retried_unprocessed,
        );
    }
    let _ = writeln!(md, "\n### Footprint (gracedemo)\n");
    let _ = writeln!(md, "| when | RSS KiB | open fds |");
    let _ = writeln!(md, "|---|---|---|");
    let show = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let showf = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        md,
        "| idle, generation 1 | {} | {} |",
        show(idle.0),
        showf(idle.1)
    );
    let _ = writeln!(
        md,
        "| under load ({} connections) | {} | {} |",
        plan.connections,
        show(under.0),
        showf(under.1)
    );
    let _ = writeln!(
        md,
        "| idle, after {} more restarts | {} | {} |",
        plan.restarts_for_footprint,
        show(after.0),
        showf(after.1)
    );
    let _ = writeln!(
        md,
        "\nProcesses of the server left at the end: {} (expected 1).",
        survivors.len()
    );
    let md = match &outside {
        Some(o) => format!("{}\n{md}", o.markdown(&machine)),
        None => md,
    };
    println!("{md}");

    // JSON, for machines.
    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        "  \"quick\": {},\n  \"machine\": {:?},\n  \"connections\": {},",
        plan.quick, machine, plan.connections
    );
    json.push_str("  \"restart_under_load\": [\n");
    for (i, m) in modes.iter().enumerate() {
        let f = &m.load.failures;
        let to_new: Vec<String> = m
            .restarts
            .iter()
            .map(|r| format!("{:.3}", r.to_new_pid.as_secs_f64() * 1e3))
            .collect();
        let gone: Vec<String> = m
            .restarts
            .iter()
            .map(|r| {
                r.old_gone
                    .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
                    .unwrap_or_else(|| "null".into())
            })
            .collect();
        let _ = writeln!(
            json,
            "    {{\"mode\": {:?}, \"requests\": {}, \"failed\": {}, \"refused\": {}, \"reset\": {}, \"timeout\": {}, \"non_2xx\": {}, \"other\": {}, \"retried_unprocessed\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"restart_latency_ms\": [{}], \"old_gone_ms\": [{}]}}{}",
            m.mode,
            m.load.requests,
            f.total(),
            f.refused,
            f.reset,
            f.timeout,
            f.non_2xx,
            f.other,
            f.retried_unprocessed,
            num(m.load.latency(0.5, None)),
            num(m.load.latency(0.99, None)),
            num(m.load.latency(1.0, None)),
            to_new.join(", "),
            gone.join(", "),
            if i + 1 < modes.len() { "," } else { "" }
        );
    }
    json.push_str("  ],\n");
    if let Some(o) = &outside {
        let _ = writeln!(json, "  \"outside\": {},", o.json());
    }
    let _ = writeln!(
        json,
        "  \"footprint\": {{\"idle_rss_kib\": {}, \"idle_fds\": {}, \"load_rss_kib\": {}, \"load_fds\": {}, \"after_restarts\": {}, \"after_rss_kib\": {}, \"after_fds\": {}}},",
        opt(idle.0),
        opt(idle.1.map(|x| x as u64)),
        opt(under.0),
        opt(under.1.map(|x| x as u64)),
        plan.restarts_for_footprint,
        opt(after.0),
        opt(after.1.map(|x| x as u64))
    );
    let _ = writeln!(json, "  \"processes_left\": {}\n}}", survivors.len());
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file = dir.join(format!(
        "bench-{}{stamp}.json",
        if plan.quick { "quick-" } else { "" }
    ));
    std::fs::write(&file, json).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("wrote {}", file.display());
    if !plan.quick {
        let path = root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!(
            "The latest run of `cargo xtask bench` (written by it; the notes outside this part are written by hand). \
             The machines are shared and noisy: the ratios, measured in the same run, say more than the absolute \
             numbers.\n\n{md}"
        );
        std::fs::write(&path, external::splice(&old, &section)).map_err(|e| format!("BENCHMARKS.md: {e}"))?;
        eprintln!("wrote BENCHMARKS.md");
    }
    let failed: u64 = modes.iter().map(|m| m.load.failures.total()).sum();
    if failed > 0 {
        for m in &modes {
            if !m.load.examples.is_empty() {
                eprintln!("{}: {:?}", m.mode, m.load.examples);
            }
        }
        return Err(format!("{failed} requests failed across restarts"));
    }
    Ok(())
}

fn num(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "null".into())
}

fn opt(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "null".into())
}

/// The figures measured from outside the server.
struct Outside {
    speed: Figures,
    /// The same with two tokio worker threads in each server (both on core 0).
    speed_two_threads: Figures,
    tail: Figures,
    /// The same with gracedemo's `--standby`.
    tail_standby: Figures,
    tls: Figures,
    /// The command of the server the TLS figures were measured beside, if any.
    tls_other: Option<String>,
    footprint: Figures,
}

impl Outside {
    fn markdown(&self, machine: &str) -> String {
        let (s, s2, t, l, f) = (
            &self.speed,
            &self.speed_two_threads,
            &self.tail,
            &self.tls,
            &self.footprint,
        );
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Machine: {machine}. Release builds. The server is pinned to core 0; `wrk`, `h2load` and the \
             clients to core 1; server CPU from `/proc/<pid>/stat`.\n"
        );
        let _ = writeln!(
            md,
            "### Against plain hyper (the same handler on hyper-util's auto builder, no grace), alternating rounds\n\n\
             `python3 xtask/scripts/overhead.py --rounds 5 --seconds 4 [--threads 2]`\n\n\
             | protocol | server threads | requests/s, gracedemo ÷ plain hyper | server CPU per request, gracedemo ÷ plain hyper | the same, side by side | goal |\n\
             |---|---|---|---|---|---|\n\
             | HTTP/1.1 keep-alive (`wrk -t1 -c64`) | 1 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | h2c (`h2load -c64 -m10`) | 1 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | HTTP/1.1 keep-alive | 2 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\
             | h2c | 2 | **{}×** ({}) | **{}×** ({}) | {}× ({}) | ≥ 0.97× and ≤ 1.03× |\n\n\
             Side by side: both servers on core 0 at once, each with its own load generator on core 1, \
             so a change in the host's speed slows both alike; each gets half the core.\n",
            get(s, "h1_rps"),
            get(s, "h1_rps_range"),
            get(s, "h1_cpu"),
            get(s, "h1_cpu_range"),
            get(s, "h1_side_cpu"),
            get(s, "h1_side_cpu_range"),
            get(s, "h2_rps"),
            get(s, "h2_rps_range"),
            get(s, "h2_cpu"),
            get(s, "h2_cpu_range"),
            get(s, "h2_side_cpu"),
            get(s, "h2_side_cpu_range"),
            get(s2, "h1_rps"),
            get(s2, "h1_rps_range"),
            get(s2, "h1_cpu"),
            get(s2, "h1_cpu_range"),
            get(s2, "h1_side_cpu"),
            get(s2, "h1_side_cpu_range"),
            get(s2, "h2_rps"),
            get(s2, "h2_rps_range"),
            get(s2, "h2_cpu"),
            get(s2, "h2_cpu_range"),
            get(s2, "h2_side_cpu"),
            get(s2, "h2_side_cpu_range"),
        );
        let tb = &self.tail_standby;
        let both = |key: &str, unit: &str| format!("{}{unit} | {}{unit}", get(t, key), get(tb, key));
        let pair = |median: &str, max: &str| {
            format!(
                "{} / **{}** | {} / **{}**",
                get(t, median),
                get(t, max),
                get(tb, median),
                get(tb, max)
            )
        };
        let _ = writeln!(
            md,
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
             | restart latency under `restartload`'s heavier load (the runs with restarts above): median / **max**, ms | {} | max < 10 ms |\n\
             | restarts timed by the prober; signals in the p99 runs | {} / {} | {} / {} | |\n\
             | errors | {} | |\n\n\
             The prober's `wrk` runs have their own p99 ({} ms, {} ms), not the figure above.\n",
            both("p99_quiet", " ms"),
            both("p99_restarts", " ms"),
            get(t, "p99_ratio"),
            get(t, "p99_ratio_range"),
            get(tb, "p99_ratio"),
            get(tb, "p99_ratio_range"),
            both("within_ratio", "×"),
            both("near_max", " ms"),
            both("excess_per_restart", ""),
            get(t, "latency_median"),
            get(t, "latency_max"),
            get(tb, "latency_median"),
            get(tb, "latency_max"),
            pair("load_restart_median", "load_restart_max"),
            get(t, "restarts"),
            get(t, "signals"),
            get(tb, "restarts"),
            get(tb, "signals"),
            both("errors", ""),
            get(t, "p99_probed"),
            get(tb, "p99_probed"),
        );
        let _ = writeln!(
            md,
            "### New TLS connections (TLS 1.3, sequential; connect → whole answer)\n\n\
             `python3 xtask/scripts/tls_latency.py --count 300` (add `--other 'COMMAND'` to \
             measure another server beside it, as BENCHMARKS' notes do for Go grace)\n\n\
             | Python's `ssl` client | p50 | p99 |\n|---|---|---|\n\
             | full handshake | {} ms | {} ms |\n\
             | resumption offered ({} of {} resumed) | {} ms | {} ms |\n\n\
             {} clients taking turns, each offering its last session: {} resumed; after a \
             `SIGUSR2`, with the new process: {} resumed. \
             wrk, one connection at a time, each resumed: {} ms per connection, {} µs of server \
             CPU per connection.\n",
            get(l, "full_p50"),
            get(l, "full_p99"),
            get(l, "resumed"),
            get(l, "count"),
            get(l, "resumed_p50"),
            get(l, "resumed_p99"),
            get(l, "clients"),
            get(l, "clients_resumed"),
            get(l, "after_restart_resumed"),
            get(l, "wrk_conn_ms"),
            get(l, "wrk_cpu_us"),
        );
        if let Some(other) = self
            .tls_other
            .as_deref()
            .filter(|_| l.contains_key("other_full_p50"))
        {
            let row = |what: &str, key: &str, unit: &str| {
                let with_unit = |v: &str| format!("{v} {unit}").trim_end().to_owned();
                format!(
                    "| {what} | {} | {} | {} |\n",
                    with_unit(get(l, key)),
                    with_unit(get(l, &format!("other_{key}"))),
                    l.get(&format!("ratio_{key}"))
                        .map_or(String::new(), |r| format!("{r}×")),
                )
            };
            let _ = writeln!(
                md,
                "Beside another server in alternating rounds (3 each; `--tls-other '{other}'`), the \
                 same certificate:\n\n\
                 | median of the rounds | gracedemo | other | ratio |\n|---|---|---|---|\n{}{}{}{}{}{}",
                row("full handshake, p50", "full_p50", "ms"),
                row("resumed, p50", "resumed_p50", "ms"),
                row(
                    "wrk, one connection at a time: per connection",
                    "wrk_conn_ms",
                    "ms"
                ),
                row("server CPU per connection", "wrk_cpu_us", "µs"),
                row("clients taking turns: resumed", "clients_resumed", ""),
                row(
                    "the same after a `SIGUSR2`: resumed with the new process",
                    "after_restart_resumed",
                    ""
                ),
            );
        }
        let _ = writeln!(
            md,
            "### Footprint and draining CPU ({} connections)\n\n\
             `python3 xtask/scripts/drain_cpu.py --connections 10000`\n\n\
             | | |\n|---|---|\n\
             | RSS idle | {} KiB |\n\
             | RSS with {} idle keep-alive connections | {} KiB |\n\
             | CPU while serving {} sleeping requests | {} % of a core |\n\
             | CPU while draining them after `SIGTERM` | {} % of a core |\n",
            get(f, "connections"),
            get(f, "rss_idle_kib"),
            get(f, "connections"),
            get(f, "rss_idle_connections_kib"),
            get(f, "connections"),
            get(f, "serving_cpu"),
            get(f, "draining_cpu"),
        );
        md
    }

    fn json(&self) -> String {
        let object = |f: &Figures| {
            let fields: Vec<String> = f.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
            format!("{{{}}}", fields.join(", "))
        };
        format!(
            "{{\"speed\": {}, \"speed_two_threads\": {}, \"restart_tail\": {}, \"restart_tail_standby\": {}, \"tls\": {}, \"footprint\": {}}}",
            object(&self.speed),
            object(&self.speed_two_threads),
            object(&self.tail),
            object(&self.tail_standby),
            object(&self.tls),
            object(&self.footprint)
        )
    }
}
