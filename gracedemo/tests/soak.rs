//! The restart soak: 50 restarts in a row while clients keep sending (HTTP/1.1 and HTTP/2,
//! keep-alive and a new connection per request). Zero failed requests, zero refused; the last
//! generation's fds and RSS within 10% of the first's; no stray process or zombie; no temp or
//! PID file left behind.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grace_tests::load::{LoadConfig, fd_count, rss_kib, run_load, run_load_until, who_answers};
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, pids_with_env, unique_marker, wait_until};

const MARKER: &str = "GRACEDEMO_SOAK_MARKER";
const PATH: &str = "/sleep/?duration=0s";

fn modes(port: u16, duration: Duration) -> Vec<LoadConfig> {
    [(false, true), (false, false), (true, true), (true, false)]
        .into_iter()
        .map(|(http2, keep_alive)| LoadConfig {
            port,
            path: PATH.into(),
            connections: 3,
            http2,
            keep_alive,
            duration,
            max_requests: 1_000_000,
        })
        .collect()
}

/// A second of every kind of load, then a moment idle: the state both ends are measured in.
async fn warm(port: u16) {
    let runs: Vec<_> = modes(port, Duration::from_secs(1))
        .into_iter()
        .map(|c| tokio::spawn(run_load(c)))
        .collect();
    for r in runs {
        let _ = r.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_restarts_under_load_lose_nothing_and_leak_nothing() {
    let tmp = TempDir::new("soak-tmp");
    let run = TempDir::new("soak-run");
    let pid_file = run.path().join("gracedemo.pid");
    let marker = unique_marker();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
    cmd.args([
        "-a0",
        "127.0.0.1:0",
        "-a1",
        "127.0.0.1:0",
        "-a2",
        "127.0.0.1:0",
        "--pid-file",
    ])
    .arg(&pid_file)
    .env("TMPDIR", tmp.path())
    .env(MARKER, &marker);
    let mut g = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| g.expect_log("Serving "));
    let port = grace_tests::ports_in_grace_line(&line)[0];
    let first = g.pid();
    warm(port).await;
    let (first_rss, first_fds) = (rss_kib(first).unwrap(), fd_count(first).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = modes(port, Duration::from_secs(120))
        .into_iter()
        .map(|c| tokio::spawn(run_load_until(c, stop.clone())))
        .collect();
    let mut serving = first;
    let mut guards = Vec::new();
    for n in 0..50 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(serving as i32),
            nix::sys::signal::Signal::SIGUSR2,
        )
        .unwrap();
        let mut new = None;
        for _ in 0..5000 {
            match who_answers(port, PATH).await {
                Some(p) if p != serving => {
                    new = Some(p);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        let new = new.unwrap_or_else(|| panic!("restart {n}: no new generation answered"));
        guards.push(PidGuard(new));
        serving = new;
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing: load between restarts
    }
    stop.store(true, Ordering::Relaxed);
    let (mut requests, mut answered, mut failures, mut retried) = (0, 0, 0, 0);
    let mut examples = Vec::new();
    for l in load {
        let r = l.await.unwrap();
        requests += r.requests;
        answered += r.samples.len() as u64;
        failures += r.failures.total();
        retried += r.failures.retried_unprocessed;
        examples.extend(r.examples);
    }
    assert_eq!(failures, 0, "{failures} of {requests} failed: {examples:?}");
    assert!(answered > 1000, "only {answered} answered");

    // Only the last generation is left, with no zombie children; it owns the PID file.
    assert!(
        wait_until(DEADLINE, || pids_with_env(MARKER, &marker) == vec![serving]),
        "{:?}",
        pids_with_env(MARKER, &marker)
    );
    assert_eq!(grace_tests::zombies_of(serving), Vec::<u32>::new());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        serving.to_string()
    );
    warm(port).await;
    let (last_rss, last_fds) = (rss_kib(serving).unwrap(), fd_count(serving).unwrap());
    let within = |a: u64, b: u64| (a as f64 - b as f64).abs() <= b as f64 * 0.10;
    assert!(
        within(last_rss, first_rss),
        "RSS: first {first_rss} KiB, last {last_rss} KiB"
    );
    assert!(
        within(last_fds as u64, first_fds as u64),
        "fds: first {first_fds}, last {last_fds}"
    );
    eprintln!(
        "soak: 50 restarts, {requests} requests, {answered} answered, 0 failed, {retried} HTTP/2 retried after GOAWAY; \
         RSS {first_rss} -> {last_rss} KiB, fds {first_fds} -> {last_fds}"
    );

    // The final stop removes the PID file and leaves no temp file.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(DEADLINE, || pids_with_env(MARKER, &marker).is_empty()));
    assert!(!pid_file.exists(), "PID file removed at the final stop");
    assert_eq!(
        std::fs::read_dir(run.path()).unwrap().count(),
        0,
        "nothing left beside the PID file"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temp file left behind"
    );
    let _ = g.wait_timeout(DEADLINE);
}
