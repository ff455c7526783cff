//! The LISTEN_FDS environment as a supervisor or a careless parent may set it: each wrong
//! value is an error naming the variable, never a panic, never silently ignored. And what a
//! generation writes for the next: every gracenet variable set or removed, none of its own
//! passed through.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use grace_tests::{
    DEADLINE, PidGuard, ProcessGuard, TempDir, answer_pid, ask, field, install_program, lifeprobe,
    parse_probe, signal, standby_started, start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

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
        // fd 3 is good and already taken when fd 4 fails: it is given back, not closed.
        (
            "tcp",
            "2",
            "-",
            "-",
            "LISTEN_FDS=2 names fd 4, but fd 4 is not open",
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
    probe.expect_log("ready and serving generation=1 ");
}

/// The gracenet variables (and systemd's `NOTIFY_SOCKET`) in the environment `pid` was
/// started with: `/proc/PID/environ` is the block its `execve` got, whatever it did since.
fn gracenet_vars(pid: u32) -> BTreeMap<String, String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read the environment");
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| gracenet::vars::OWNED.contains(k) || *k == gracenet::vars::NOTIFY_SOCKET)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Checks that generation `number` (`pid`, started by `parent`) has exactly the variables a
/// fresh, non-idle next generation is written: no standby's, no idle start's, no stale copy.
/// (This crate builds gracenet with its `metrics` feature: the restart counts of the
/// generations before, every one a hand-over here, are passed on once there are any.)
fn assert_written_fresh(pid: u32, number: u64, parent: u32) {
    let mut vars = gracenet_vars(pid);
    let restarts = vars.remove("GRACE_RESTARTS");
    assert_eq!(
        restarts,
        (number > 2).then(|| format!("handed_over:{}", number - 2)),
        "generation {number} (pid {pid}): the restarts before the one that started it"
    );
    let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "GRACE_ANCESTORS",
            "GRACE_GENERATION",
            "GRACE_READY_FD",
            "LISTEN_FDNAMES",
            "LISTEN_FDS",
            "LISTEN_PID",
        ],
        "generation {number} (pid {pid}) started with {vars:?}"
    );
    assert_eq!(vars["GRACE_GENERATION"], number.to_string(), "{vars:?}");
    assert_eq!(vars["LISTEN_PID"], pid.to_string(), "{vars:?}");
    assert_eq!(vars["LISTEN_FDS"], "1", "{vars:?}");
    assert!(
        vars["GRACE_ANCESTORS"].split(',').next_back() == Some(&parent.to_string()),
        "{vars:?}"
    );
}

/// A `#[tokio::main]`-style program (lifeprobe builds its multi-threaded runtime before its
/// first call into gracenet, so its inherited variables stay in its environment) keeping a
/// standby: the woken standby (generation 2) was started with `GRACE_STANDBY=1` and
/// `GRACE_IDLE_START=1`; after the binary is replaced, its standby is let go and a fresh
/// process started, which must not inherit them (it would wait to be woken, and exit 0).
#[test]
fn a_woken_standby_passes_none_of_its_own_variables_to_a_fresh_generation_after_a_deploy() {
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "env-standby-deploy");
    let app = dir.path().join("app");
    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe")), &app);
    // Fresh generations not at idle priority, so each variable's presence is known.
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        &app,
        &[("PROBE_STANDBY", "1"), ("PROBE_NO_IDLE_START", "1")],
    ));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));

    signal(gen1.pid, Signal::SIGUSR2);
    g.expect_log(&format!("restart: woke the standby pid={standby} "));
    let gen2 = parse_probe(&g.expect_line("probe version=lifeprobe "));
    assert_eq!(gen2.pid, standby, "the standby is generation 2");
    // What the leak was made of: generation 2 started as a standby.
    assert_eq!(
        gracenet_vars(gen2.pid).get("GRACE_STANDBY").map(String::as_str),
        Some("1")
    );
    assert!(wait_until(DEADLINE, || answer_pid(&ask(gen1.port).unwrap()) == gen2.pid));
    let standby3 = standby_started(&mut g, 2);
    let _standby3_guard = PidGuard(standby3);
    g.expect_line(&format!("probe main pid={standby3}"));

    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe2")), &app);
    signal(gen2.pid, Signal::SIGUSR2);
    let let_go = g.expect_log(&format!("let the standby go pid={standby3} "));
    assert!(let_go.contains("the program file has changed"), "{let_go}");
    let line = g.expect_line("probe version=lifeprobe2 ");
    let gen3 = parse_probe(&line);
    let _gen3_guard = PidGuard(gen3.pid);
    assert_eq!(field(&line, "generation"), "3", "{line}");
    assert_written_fresh(gen3.pid, 3, gen2.pid);
    g.expect_log("stopped accepting generation=2 ");
    assert_eq!(ask(gen1.port).unwrap(), format!("{} 3 lifeprobe2", gen3.pid));
}

/// The same deploy without a standby, from a first process whose own environment held
/// gracenet variables (started by a shell a generation ran, say): nothing of them reaches
/// generation 2 or 3.
#[test]
fn no_stale_variable_reaches_the_next_generations_across_a_deploy_without_a_standby() {
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "env-plain-deploy");
    let app = dir.path().join("app");
    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe")), &app);
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        &app,
        &[
            ("PROBE_NO_IDLE_START", "1"),
            ("GRACE_STANDBY", "1"),
            ("GRACE_IDLE_START", "1"),
        ],
    ));

    signal(gen1.pid, Signal::SIGUSR2);
    let gen2 = parse_probe(&g.expect_line("probe version=lifeprobe "));
    let _gen2_guard = PidGuard(gen2.pid);
    assert_written_fresh(gen2.pid, 2, gen1.pid);
    g.expect_log("stopped accepting generation=1 ");

    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe2")), &app);
    signal(gen2.pid, Signal::SIGUSR2);
    let gen3 = parse_probe(&g.expect_line("probe version=lifeprobe2 "));
    let _gen3_guard = PidGuard(gen3.pid);
    assert_written_fresh(gen3.pid, 3, gen2.pid);
    g.expect_log("stopped accepting generation=2 ");
    assert_eq!(ask(gen1.port).unwrap(), format!("{} 3 lifeprobe2", gen3.pid));
}
