//! The LISTEN_FDS environment as a supervisor or a careless parent may set it: each wrong
//! value is an error naming the variable, never a panic, never silently ignored.

use std::process::Command;

use grace_tests::{DEADLINE, ProcessGuard, field};

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
    assert_eq!(field(&after, "env_left"), "false");
}

#[test]
fn own_listen_pid_adopts_and_go_grace_style_adopts() {
    let (report, after) = probe_report("tcp", "1", "self", "web");
    assert!(report.contains(" ok origin=Activated count=1"), "{report}");
    assert_eq!(field(&after, "fd3_open"), "true");
    assert_eq!(field(&after, "env_left"), "false");
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
        assert_eq!(field(&after, "env_left"), "false");
        if fd3 != "none" {
            assert_eq!(field(&after, "fd3_open"), "true", "{fd3}");
        }
    }
}
