//! gracenet's figures as an operator scrapes them: gracehttp's Prometheus example (the
//! exporter's text on a `/metrics` route of the application's own site) scraped before and
//! after restarts. The process a scrape reaches after a hand-over is the new generation: it
//! shows the restarts that made it, counted on across generations.

use std::process::Command;

use grace_tests::http::get_h1;
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, wait_until};
use nix::sys::signal::Signal;

const METRICS_APP: &str = env!("CARGO_BIN_EXE_metrics-app");

/// The value of the sample `series` (`name` or `name{labels}`) in Prometheus's text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/metrics` of whichever process answers on `port`.
async fn scrape(port: u16) -> String {
    let answer = get_h1(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The pid in "listening on http ADDR (pid N)", and the port in ADDR.
fn listening(line: &str) -> (u32, u16) {
    let pid = line
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    let port = line
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"));
    (pid, port)
}

const HANDED_OVER: &str = r#"grace_restarts_total{result="handed_over"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_restart_shows_the_restarts_counted_on_by_the_new_generation() {
    let mut cmd = Command::new(METRICS_APP);
    cmd.arg("127.0.0.1:0");
    let mut g = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| g.expect_line("listening on http "));
    let (first, port) = listening(&line);
    assert_eq!(first, g.pid());

    let text = scrape(port).await;
    assert_eq!(sample(&text, "grace_generation"), Some(1.0), "{text}");
    // Every result is there from the start, at zero: a graph has a series before the first.
    assert_eq!(sample(&text, HANDED_OVER), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"grace_restarts_total{result="not_ready"}"#),
        Some(0.0),
        "{text}"
    );
    // Described once, with the unit in the name: the exporter writes the HELP line.
    assert!(text.contains("# HELP grace_restarts_total "), "{text}");
    assert!(text.contains("# TYPE grace_restarts_total counter"), "{text}");
    // The application's own metrics go through the same recorder.
    assert!(
        get_h1(port, "/")
            .await
            .unwrap()
            .body
            .contains(&format!("pid {first}"))
    );
    assert_eq!(sample(&scrape(port).await, "app_requests_total"), Some(1.0));

    let mut guards = Vec::new();
    let mut serving = first;
    for number in 2..=3u32 {
        grace_tests::signal(serving, Signal::SIGUSR2);
        let line = tokio::task::block_in_place(|| g.expect_line("listening on http "));
        let (new, _) = listening(&line);
        guards.push(PidGuard(new));
        assert_ne!(new, serving);
        // Once the old generation has handed over, every new connection reaches the new one.
        assert!(
            tokio::task::block_in_place(|| wait_until(DEADLINE, || { answering_pid(port) == Some(new) })),
            "generation {number} (pid {new}) answers"
        );
        let text = scrape(port).await;
        assert_eq!(
            sample(&text, "grace_generation"),
            Some(f64::from(number)),
            "{text}"
        );
        assert_eq!(
            sample(&text, HANDED_OVER),
            Some(f64::from(number - 1)),
            "the new generation counts the restarts it came from: {text}"
        );
        assert_eq!(
            sample(&text, r#"grace_restarts_total{result="exited"}"#),
            Some(0.0),
            "{text}"
        );
        // Its own start, to ready: one sample (the exporter renders a histogram as a summary).
        assert_eq!(
            sample(&text, "grace_startup_duration_seconds_count"),
            Some(1.0),
            "{text}"
        );
        serving = new;
    }
    // The first generation drained and exited cleanly.
    let status =
        tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("the first generation exits");
    assert!(status.success(), "{status}");
}

/// The pid that answers `/` on a new connection to `port` (blocking, for `wait_until`).
fn answering_pid(port: u16) -> Option<u32> {
    let body = grace_tests::systemd::http_get(port, "/", DEADLINE).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("hello from pid "))
        .and_then(|p| p.trim().parse().ok())
}

/// `/metrics` of whichever process answers on `port` (blocking, for `wait_until`).
fn scrape_blocking(port: u16) -> String {
    grace_tests::systemd::http_get(port, "/metrics", DEADLINE).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restart_is_counted_where_it_is_scraped_and_carried_on_to_the_next_generation() {
    // Installed as a deploy does, so a broken program can take its place.
    let dir = grace_tests::TempDir::new("metrics-failed");
    let app = dir.path().join("app");
    grace_tests::install_program(std::path::Path::new(METRICS_APP), &app);
    let mut g = ProcessGuard::spawn({
        let mut cmd = Command::new(&app);
        cmd.arg("127.0.0.1:0");
        cmd
    });
    let (first, port) = listening(&tokio::task::block_in_place(|| {
        g.expect_line("listening on http ")
    }));

    // A broken deploy: the next generation exits before it is ready.
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    grace_tests::install_program(&broken, &app);
    g.signal(Signal::SIGUSR2);
    tokio::task::block_in_place(|| g.expect_log("restart failed"));
    // The generation that still serves counts it, with how long the attempt took.
    let exited = r#"grace_restarts_total{result="exited"}"#;
    let text = scrape(port).await;
    assert_eq!(sample(&text, exited), Some(1.0), "{text}");
    assert_eq!(sample(&text, HANDED_OVER), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"grace_restart_duration_seconds_count{result="exited"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "grace_generation"), Some(1.0), "{text}");

    // Fixed: the next restart hands over, and the new generation shows both.
    grace_tests::install_program(std::path::Path::new(METRICS_APP), &app);
    g.signal(Signal::SIGUSR2);
    let (second, _) = listening(&tokio::task::block_in_place(|| {
        g.expect_line("listening on http ")
    }));
    let _second = PidGuard(second);
    assert_ne!(second, first);
    let mut text = String::new();
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || {
            text = scrape_blocking(port);
            sample(&text, "grace_generation") == Some(2.0)
        })),
        "generation 2 answers: {text}"
    );
    assert_eq!(sample(&text, exited), Some(1.0), "carried on: {text}");
    assert_eq!(sample(&text, HANDED_OVER), Some(1.0), "{text}");
    let status =
        tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("the first generation exits");
    assert!(status.success(), "{status}");
}
