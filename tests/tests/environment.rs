//! The LISTEN_FDS environment as a supervisor or a careless parent may set it: each wrong
//! value is an error naming the variable, never a panic, never silently ignored.

use std::process::Command;

use grace_tests::{DEADLINE, ProcessGuard, field};

/// What `env_left` reads after a single-threaded process took the variables: removed on Linux;
/// left on the portable path, which cannot count threads and so never changes the
/// environment.
const LEFT_WHEN_ALONE: &str = if cfg!(gracenet_portable) { "true" } else { "false" };

/// Runs `netprobe exec-with FD3 FDS PID NAMES` and returns its two report lines.
fn probe_report(fd3: &str, fds: &str, pid: &str, names: &str) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args(["exec-with", fd3, fds, pid, names]);
    let mut probe = ProcessGuard::spawn(cmd);
    let report = probe.expect_line("report ");
    let after = probe.expect_line("after ");
    let status = probe.wait_timeout(DEADLINE).expect("probe exits");
    assert!(status.success(), "{status}: {report}");
    (report, after)
}

#[test]
fn listen_pid_of_another_process_leaves_the_fds_alone() {
    let (report, after) = probe_report("tcp", "1", "1", "-");
    assert!(report.contains(" ok origin=Fresh count=0"), "{report}");
    assert_eq!(
        field(&after, "fd3_open"),
        "true",
        "fd 3 is not ours: not closed, not adopted"
    );
    assert_eq!(field(&after, "env_left"), LEFT_WHEN_ALONE);
}

#[test]
fn own_listen_pid_adopts_and_go_grace_style_adopts() {
    let (report, after) = probe_report("tcp", "1", "self", "web");
    assert!(report.contains(" ok origin=Activated count=1"), "{report}");
    assert_eq!(field(&after, "fd3_open"), "true");
    assert_eq!(field(&after, "env_left"), LEFT_WHEN_ALONE);
    // Go grace sets only LISTEN_FDS.
    let (report, _) = probe_report("tcp", "1", "-", "-");
    assert!(report.contains(" ok origin=Parent count=1"), "{report}");
}

#[test]
fn malformed_values_are_errors_naming_the_variable() {
    for (fd3, fds, pid, names, expect) in [
        (
            "none",
            "abc",
            "-",
            "-",
            "LISTEN_FDS=\"abc\" is malformed: expected a decimal count",
        ),
        ("none", "-1", "-", "-", "LISTEN_FDS=\"-1\" is malformed"),
        ("none", "99999", "-", "-", "LISTEN_FDS=\"99999\" is malformed"),
        (
            "tcp",
            "1",
            "abc",
            "-",
            "LISTEN_PID=\"abc\" is malformed: expected a process id",
        ),
        (
            "tcp",
            "1",
            "-",
            "a:b",
            "LISTEN_FDNAMES=\"a:b\" has 2 name(s) but LISTEN_FDS=1",
        ),
        (
            "none",
            "1",
            "-",
            "-",
            "LISTEN_FDS=1 names fd 3, but fd 3 is not open",
        ),
        (
            "file",
            "1",
            "-",
            "-",
            "LISTEN_FDS=1 names fd 3, which is a regular file: expected a socket",
        ),
        (
            "pipe",
            "1",
            "-",
            "-",
            "LISTEN_FDS=1 names fd 3, which is a pipe: expected a socket",
        ),
        (
            "connected",
            "1",
            "-",
            "-",
            "which is a TCP stream socket that is not listening",
        ),
    ] {
        let (report, after) = probe_report(fd3, fds, pid, names);
        let error = report.split_once("error=").map(|(_, e)| e).unwrap_or_else(|| {
            panic!("LISTEN_FDS={fds} LISTEN_PID={pid} LISTEN_FDNAMES={names} fd3={fd3}: no error in {report}")
        });
        assert!(
            error.contains(expect),
            "got {error:?}, expected it to contain {expect:?}"
        );
        // The variables are removed even when they were wrong, and a bad fd is not closed.
        assert_eq!(field(&after, "env_left"), LEFT_WHEN_ALONE);
        if fd3 != "none" {
            assert_eq!(field(&after, "fd3_open"), "true", "{fd3}");
        }
    }
}

#[test]
fn the_environment_is_changed_only_while_no_other_thread_runs() {
    // Another thread running: reading the variables is fine, removing them would be
    // undefined behaviour; they are left, and the fds still adopted.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args(["exec-with", "tcp", "1", "self", "web"])
        .env("NETPROBE_THREAD", "1");
    let mut probe = ProcessGuard::spawn(cmd);
    let report = probe.expect_line("report ");
    let after = probe.expect_line("after ");
    assert!(report.contains(" ok origin=Activated count=1"), "{report}");
    assert_eq!(field(&after, "env_left"), "true", "left in place: {after}");
    // Alone, it removes them (on Linux; the other tests above too).
    let (_, after) = probe_report("tcp", "1", "self", "web");
    assert_eq!(field(&after, "env_left"), LEFT_WHEN_ALONE);
}

#[test]
fn gracehttp_checks_inherited_fds_before_its_runtime_opens_any() {
    // LISTEN_FDS=1 with fd 3 closed: the runtime's own fds must not be mistaken for it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args([
        "exec-with",
        "none",
        "1",
        "-",
        "-",
        env!("CARGO_BIN_EXE_httpprobe"),
    ]);
    let mut probe = ProcessGuard::spawn(cmd);
    let status = probe.wait_timeout(DEADLINE).expect("exits");
    assert!(!status.success());
    let out = probe.output_after_exit().join("\n");
    assert!(
        out.contains("LISTEN_FDS=1 names fd 3, but fd 3 is not open"),
        "{out}"
    );
}

#[test]
fn a_huge_variable_is_cut_in_its_error() {
    let names = vec!["n"; 5000].join(":");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args(["exec-with", "tcp", "1", "self", &names]);
    let mut probe = ProcessGuard::spawn(cmd);
    let report = probe.expect_line("report ");
    assert!(report.contains("has 5000 name(s) but LISTEN_FDS=1"), "{report}");
    assert!(report.contains("(9999 bytes)"), "{report}");
    assert!(report.len() < 400, "{} bytes: {report}", report.len());
}

#[test]
fn a_copy_of_a_generations_variables_meant_for_another_pid_is_ignored_whole() {
    // What a subprocess of a multi-threaded server inherits (the variables could not be
    // removed): LISTEN_PID names the server, so none of them is this process's.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args([
        "exec-with",
        "tcp",
        "1",
        "1",
        "-",
        env!("CARGO_BIN_EXE_lifeprobe"),
        "127.0.0.1:0",
    ])
    .env("GRACE_READY_FD", "abc")
    .env("GRACE_GENERATION", "7");
    let mut probe = ProcessGuard::spawn(cmd);
    let line = probe.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "1", "{line}");
    let _guard = grace_tests::PidGuard(field(&line, "pid").parse().unwrap());
    probe.expect_log("generation 1 serving");
}
