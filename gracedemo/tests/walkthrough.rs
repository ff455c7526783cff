//! The README's walkthrough, driven against the built gracedemo as a user would: a slow
//! request in flight, `kill -USR2`, a quick request answered by the new pid while the slow one
//! finishes from the old pid; then five more restarts checked the same way. Also TLS, Go's
//! duration errors over HTTP, and bad flags.

use std::process::Command;

use grace_tests::http::{get_h1, get_tls, write_cert};
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, pids_with_env, unique_marker, wait_until};
use http::StatusCode;
use nix::sys::signal::Signal;

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");
const MARKER: &str = "GRACEDEMO_TEST_MARKER";

struct Demo {
    guard: ProcessGuard,
    pid: u32,
    ports: Vec<u16>,
    marker: String,
}

/// gracedemo on three free loopback ports, with `extra` flags.
fn loopback_demo(extra: &[&str]) -> Command {
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .args(extra);
    cmd
}

fn start(extra: &[&str]) -> Demo {
    let marker = unique_marker();
    let mut cmd = loopback_demo(extra);
    cmd.env(MARKER, &marker).env("RUST_LOG", "info,gracedemo=debug");
    let mut guard = ProcessGuard::spawn(cmd);
    let line = guard.expect_log("Serving ");
    let pid = guard.pid();
    assert!(line.contains(&format!(" with pid {pid}.")), "{line}");
    Demo {
        ports: grace_tests::ports_in_grace_line(&line),
        pid,
        guard,
        marker,
    }
}

/// The pid at the end of a gracedemo answer ("... from pid N.").
fn pid_in(body: &str) -> u32 {
    grace_tests::load::pid_of(body).unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// One restart of the walkthrough: slow request in flight, USR2, quick request from the new
/// pid while both live, slow one from the old pid, then only the new one left.
async fn walkthrough_step(demo: &mut Demo, old: u32, old_generation: u64, slow: &str) -> u32 {
    let port = demo.ports[0];
    let slow_path = format!("/sleep/?duration={slow}");
    let slow_req = tokio::spawn(async move { get_h1(port, &slow_path).await });
    // The slow request is in the server once the handler says it sleeps (a debug line).
    let sleeping = format!("sleeping for {slow} from pid {old}");
    tokio::task::block_in_place(|| demo.guard.expect_log(&sleeping));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), Signal::SIGUSR2).unwrap();
    let line = tokio::task::block_in_place(|| demo.guard.expect_log("Graceful handoff of "));
    assert!(line.contains(&format!("and old pid {old}.")), "{line}");
    let new = grace_tests::new_pid_in_handoff(&line);
    // The old process's line (Go's format carries no pid field: the generation says which).
    let stopped = tokio::task::block_in_place(|| demo.guard.expect_log("stopped accepting"));
    assert!(
        stopped.contains(&format!("stopped accepting generation={old_generation} ")),
        "{stopped}"
    );
    let quick = get_h1(port, "/sleep/?duration=0s").await.unwrap();
    assert_eq!(
        pid_in(&quick.body),
        new,
        "the quick request is answered by the new pid"
    );
    assert!(quick.body.starts_with("Zero   started at "), "{}", quick.body);
    let mut both = vec![old, new];
    both.sort();
    assert_eq!(
        pids_with_env(MARKER, &demo.marker),
        both,
        "both alive at one moment"
    );
    let slow_answer = slow_req.await.unwrap().unwrap();
    assert_eq!(slow_answer.status, StatusCode::OK);
    assert_eq!(
        pid_in(&slow_answer.body),
        old,
        "the slow request finishes from the old pid"
    );
    assert!(
        wait_until(DEADLINE, || pids_with_env(MARKER, &demo.marker) == vec![new]),
        "only the new pid is left"
    );
    for (port, name) in demo.ports.iter().zip(["Zero  ", "First ", "Second"]) {
        let a = get_h1(*port, "/sleep/?duration=0s").await.unwrap();
        assert_eq!(pid_in(&a.body), new);
        assert!(a.body.starts_with(&format!("{name} started at ")), "{}", a.body);
    }
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_then_five_more_restarts() {
    let mut demo = tokio::task::block_in_place(|| start(&[]));
    let mut pid = demo.pid;
    let mut guards = Vec::new();
    pid = walkthrough_step(&mut demo, pid, 1, "3s").await;
    guards.push(PidGuard(pid));
    for old_generation in 2..=6 {
        pid = walkthrough_step(&mut demo, pid, old_generation, "1s").await;
        guards.push(PidGuard(pid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_and_paths_are_answered_as_go_answers_them() {
    let demo = tokio::task::block_in_place(|| start(&[]));
    let port = demo.ports[1];
    for (duration, status, body) in [
        ("abc", 400, "time: invalid duration \"abc\"\n"),
        ("5", 400, "time: missing unit in duration \"5\"\n"),
        ("5x", 400, "time: unknown unit \"x\" in duration \"5x\"\n"),
        ("1%C2%B5s", 200, "slept for 1000 nanoseconds"),
        ("-1s", 200, "slept for -1000000000 nanoseconds"),
        ("1.5ms", 200, "slept for 1500000 nanoseconds"),
    ] {
        let a = get_h1(port, &format!("/sleep/?duration={duration}"))
            .await
            .unwrap();
        assert_eq!(a.status.as_u16(), status, "{duration}");
        if status == 400 {
            assert_eq!(a.body, body, "{duration}");
        } else {
            assert!(a.body.starts_with("First  started at "), "{}", a.body);
            assert!(a.body.contains(body), "{duration}: {}", a.body);
            assert!(
                a.body.ends_with(&format!(" from pid {}.\n", demo.pid)),
                "{}",
                a.body
            );
        }
    }
    let missing = get_h1(port, "/sleep/").await.unwrap();
    assert_eq!(
        (missing.status.as_u16(), missing.body.as_str()),
        (400, "time: invalid duration \"\"\n")
    );
    let redirect = get_h1(port, "/sleep?duration=1s").await.unwrap();
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        redirect.body,
        "<a href=\"/sleep/?duration=1s\">Moved Permanently</a>.\n\n"
    );
    let other = get_h1(port, "/other").await.unwrap();
    assert_eq!(
        (other.status.as_u16(), other.body.as_str()),
        (404, "404 page not found\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_answers_http2_across_a_restart() {
    let dir = TempDir::new("demo-tls");
    let root = write_cert(dir.path(), "cert.pem", "key.pem");
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let mut demo = tokio::task::block_in_place(|| start(&["--tls-cert", &cert, "--tls-key", &key]));
    let (a, _) = get_tls(demo.ports[2], "/sleep/?duration=0s", &root, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(pid_in(&a.body), demo.pid);
    demo.guard.signal(Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| demo.guard.expect_log("Graceful handoff of "));
    let new = grace_tests::new_pid_in_handoff(&line);
    let _new_guard = PidGuard(new);
    tokio::task::block_in_place(|| demo.guard.expect_log("stopped accepting"));
    let (a, _) = get_tls(demo.ports[2], "/sleep/?duration=0s", &root, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(pid_in(&a.body), new);
}

fn fails_with(args: &[&str], expect: &str) {
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(args);
    let mut g = ProcessGuard::spawn(cmd);
    let status = g.wait_timeout(DEADLINE).expect("exits");
    assert!(!status.success(), "{args:?} succeeded");
    let output = g.output_after_exit();
    // Flag errors come before logging starts (plain lines); later ones are Go-format errors.
    let errors: Vec<&str> = output
        .iter()
        .filter_map(|l| {
            l.strip_prefix("gracedemo: ")
                .or_else(|| go_line(l).and_then(|r| r.strip_prefix("ERROR: gracedemo: ")))
        })
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: one error line, got {output:?}");
    assert!(errors[0].contains(expect), "{args:?}: {}", errors[0]);
    assert!(!output.iter().any(|l| l.contains("Serving ")), "nothing served");
}

#[test]
fn bad_flags_and_addresses_are_one_line_errors() {
    fails_with(&["-x"], "unexpected argument '-x'");
    fails_with(&["-nope"], "unexpected argument '--nope'");
    fails_with(&["-a0"], "a value is required for '--a0 <ADDR>'");
    fails_with(&["-a0", "nonsense"], "invalid listen address \"nonsense\"");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    fails_with(
        &[
            "-a0",
            &format!("127.0.0.1:{port}"),
            "-a1",
            "127.0.0.1:0",
            "-a2",
            "127.0.0.1:0",
        ],
        // One line, naming the flag that picks another address.
        &format!(
            "cannot listen on 127.0.0.1:{port} (-a0): Address already in use (os error 98); choose another address with -a0 ADDR"
        ),
    );
    fails_with(
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "-a0",
            "127.0.0.1:0",
            "-a1",
            "127.0.0.1:0",
            "-a2",
            "127.0.0.1:0",
        ],
        "TLS certificate file /nonexistent/cert.pem: cannot read it",
    );
}

#[test]
fn dash_h_prints_usage_and_exits_zero() {
    let out = Command::new(GRACEDEMO).arg("-h").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-a0") || text.contains("--a0"), "{text}");
    assert!(text.contains("Zero address to bind to."), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_gracefully_and_h_says_so() {
    let mut demo = tokio::task::block_in_place(|| start(&[]));
    let (port, pid) = (demo.ports[0], demo.pid);
    let slow = tokio::spawn(async move { get_h1(port, "/sleep/?duration=1s").await });
    tokio::task::block_in_place(|| demo.guard.expect_log(&format!("sleeping for 1s from pid {pid}")));
    demo.guard.signal(Signal::SIGHUP);
    tokio::task::block_in_place(|| demo.guard.expect_log("SIGHUP: stopping gracefully"));
    let answer = slow.await.unwrap().expect("the request in flight is answered");
    assert_eq!(pid_in(&answer.body), pid);
    let status = tokio::task::block_in_place(|| demo.guard.wait_timeout(DEADLINE)).expect("exits");
    assert!(
        status.success(),
        "drained and exited 0, not killed by SIGHUP: {status}"
    );

    let help = Command::new(GRACEDEMO).arg("-h").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("SIGHUP") && help.contains("the same as SIGTERM"),
        "{help}"
    );
}

/// Whether `line` starts with Go's `log` timestamp, `YYYY/MM/DD HH:MM:SS `; the rest.
fn go_line(line: &str) -> Option<&str> {
    let (stamp, rest) = line.split_at_checked(20)?;
    let b = stamp.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let ok = digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'/'
        && b[7] == b'/'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b' ';
    ok.then_some(rest)
}

#[test]
fn the_default_output_is_graces_lines_in_gos_log_format() {
    let dir = TempDir::new("go-format");
    let piddir = dir.path().join("run");
    std::fs::create_dir_all(&piddir).unwrap();
    let pid_file = piddir.join("g.pid");
    let mut cmd = loopback_demo(&["--pid-file"]);
    cmd.arg(&pid_file).env_remove("RUST_LOG");
    let mut g = ProcessGuard::spawn(cmd);
    let pid = g.pid();
    let first = g.expect_line("");
    let rest = go_line(&first).unwrap_or_else(|| panic!("not Go's format: {first:?}"));
    assert!(
        rest.starts_with("Serving 127.0.0.1:") && rest.ends_with(&format!(" with pid {pid}.")),
        "the first line is grace's: {first:?}"
    );
    let addrs = rest
        .trim_start_matches("Serving ")
        .trim_end_matches(&format!(" with pid {pid}."));
    // A restart: the new process's handoff line.
    g.signal(Signal::SIGUSR2);
    let handoff = g.expect_log("Graceful handoff of ");
    let new = grace_tests::new_pid_in_handoff(&handoff);
    let _g2 = PidGuard(new);
    assert_eq!(
        go_line(&handoff),
        Some(format!("Graceful handoff of {addrs} with new pid {new} and old pid {pid}.").as_str())
    );
    assert_eq!(
        go_line(&g.expect_log(&format!("Exiting pid {pid}."))),
        Some(format!("Exiting pid {pid}.").as_str())
    );
    // A restart that fails (its PID file cannot be written) is an error, marked as one.
    std::fs::remove_dir_all(&piddir).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGUSR2).unwrap();
    let failed = g.expect_log("restart failed");
    assert!(
        go_line(&failed).is_some_and(|r| r.starts_with("ERROR: ")),
        "{failed:?}"
    );
    // Its values follow the message as fields (the message itself names none).
    assert!(
        failed.contains(" next=") && failed.contains(" reason="),
        "{failed:?}"
    );
    let seen = g.seen();
    for line in &seen {
        assert!(go_line(line).is_some(), "every line in Go's format: {line:?}");
    }
}

#[test]
fn log_json_writes_one_json_object_per_line() {
    let mut cmd = loopback_demo(&["--log-json"]);
    cmd.env_remove("RUST_LOG");
    let mut g = ProcessGuard::spawn(cmd);
    let line = g.expect_log("Serving ");
    assert!(line.starts_with("{\"time\":\"") && line.ends_with('}'), "{line}");
    assert!(line.contains(&format!("\"pid\":{},", g.pid())), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(line.contains("\"message\":\"Serving 127.0.0.1:"), "{line}");
}
