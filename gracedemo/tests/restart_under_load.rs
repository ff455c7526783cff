//! The benchmark's quick mode as a test: restarts under load in every mode, and the one thing
//! that must always hold: no failed request. (No timing is asserted; `cargo xtask bench`
//! measures.)

use std::process::Command;
use std::time::Duration;

use grace_tests::load::{LoadConfig, restart_under_load};
use grace_tests::{PidGuard, ProcessGuard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_restarts_in_any_mode() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"]);
    let mut g = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| g.expect_log("Serving "));
    let port = grace_tests::ports_in_grace_line(&line)[0];
    let mut guards = Vec::new();
    for (http2, keep_alive) in [(false, true), (false, false), (true, true), (true, false)] {
        let cfg = LoadConfig {
            port,
            path: "/sleep/?duration=0s".into(),
            connections: 8,
            http2,
            keep_alive,
            duration: Duration::from_millis(1500),
            max_requests: 100_000,
        };
        let mode = cfg.mode();
        let (load, restarts) = restart_under_load(cfg, Duration::from_millis(500)).await;
        // Every generation this test made is killed at the end, whatever happens.
        if let Some(pid) = grace_tests::load::who_answers(port, "/sleep/?duration=0s").await {
            guards.push(PidGuard(pid));
        }
        assert!(restarts.len() >= 2, "{mode}: only {} restarts", restarts.len());
        assert!(
            load.samples.len() > 100,
            "{mode}: only {} answers",
            load.samples.len()
        );
        assert_eq!(
            load.failures.total(),
            0,
            "{mode}: {} of {} failed ({:?}): {:?}",
            load.failures.total(),
            load.requests,
            load.failures,
            load.examples
        );
        eprintln!(
            "{mode}: {} requests, 0 failed, {} restarts",
            load.requests,
            restarts.len()
        );
    }
}
