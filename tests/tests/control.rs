//! The control socket: a restart asked for there returns its result (the new pid, or why it
//! failed), `status` tells the state, and only the server's user (or root) is answered.
//! Driven with real processes: lifeprobe as the server, and lifeprobe's client mode
//! (`--control PATH restart|status`, which calls `gracenet::control`) as the operator's tool.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use grace_tests::{
    DEADLINE, PidGuard, ProcessGuard, TempDir, answer_pid, ask, converse, field, is_alive, wait_until,
};

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

/// lifeprobe serving on 127.0.0.1:0 with a control socket at `socket`; its guard, pid and port.
fn start(socket: &Path, env: &[(&str, &str)]) -> (ProcessGuard, u32, u16) {
    let mut cmd = Command::new(LIFEPROBE);
    cmd.arg("127.0.0.1:0").env("PROBE_CONTROL_SOCKET", socket);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = ProcessGuard::spawn(cmd);
    let line = server.expect_line("probe version=");
    server.expect_log("generation 1 serving");
    let port = field(&line, "addr").rsplit(':').next().unwrap().parse().unwrap();
    (server, field(&line, "pid").parse().unwrap(), port)
}

/// Runs the client: `lifeprobe --control SOCKET COMMAND`.
fn client(socket: &Path, command: &str) -> Output {
    Command::new(LIFEPROBE)
        .arg("--control")
        .arg(socket)
        .arg(command)
        .output()
        .expect("run the control client")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_restart_through_the_control_socket_answers_once_the_new_generation_serves() {
    let dir = TempDir::new("control-restart");
    let socket = dir.path().join("control");
    let (mut server, gen1, port) = start(&socket, &[]);
    let mut guards = vec![PidGuard(gen1)];
    let mut serving = gen1;
    for number in 2..=4 {
        let out = client(&socket, "restart");
        assert!(out.status.success(), "{}", text(&out));
        let answer = text(&out);
        let line = server.expect_line(&format!("probe version=lifeprobe generation={number}"));
        let new: u32 = field(&line, "pid").parse().unwrap();
        guards.push(PidGuard(new));
        assert_eq!(
            answer,
            format!("ok generation {number} serving with pid {new}"),
            "the answer names the new generation"
        );
        // When the answer came, the new generation was serving (the old one may still take
        // what it had already accepted).
        assert!(wait_until(DEADLINE, || answer_pid(&ask(port).unwrap()) == new));
        assert!(
            wait_until(DEADLINE, || !is_alive(serving)),
            "the old one drains and goes"
        );
        serving = new;
    }
    let status = text(&client(&socket, "status"));
    assert!(status.contains("generation: 4"), "{status}");
    assert!(status.contains(&format!("pid: {serving}")), "{status}");
    assert!(status.contains("phase: serving"), "{status}");
    assert!(status.contains("draining generations: none"), "{status}");
}

#[test]
fn a_failed_restart_is_reported_with_its_reason_and_the_old_generation_keeps_serving() {
    let dir = TempDir::new("control-fail");
    let socket = dir.path().join("control");
    let marker = dir.path().join("failed-once");
    let (mut server, gen1, port) = start(&socket, &[("PROBE_FAIL_ONCE", marker.to_str().unwrap())]);
    let _g = PidGuard(gen1);
    let out = client(&socket, "restart");
    let answer = text(&out);
    assert!(!out.status.success(), "the client fails: {answer}");
    assert!(answer.contains("restart failed"), "{answer}");
    assert!(
        answer.contains("exited before it was ready"),
        "the reason: {answer}"
    );
    assert!(
        answer.contains(&format!("generation 1 (pid {gen1}) still serving")),
        "{answer}"
    );
    server.expect_log("restart failed");
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1);
    // The next attempt works (the failure was once).
    let out = client(&socket, "restart");
    assert!(out.status.success(), "{}", text(&out));
    let gen2: u32 = field(&server.expect_line("probe version=lifeprobe generation=2"), "pid")
        .parse()
        .unwrap();
    let _g2 = PidGuard(gen2);
}

#[test]
fn status_lists_the_older_generations_still_draining() {
    let dir = TempDir::new("control-status");
    let socket = dir.path().join("control");
    let (mut server, gen1, port) = start(&socket, &[("PROBE_STOP_TIMEOUT_MS", "20000")]);
    let _g1 = PidGuard(gen1);
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(answer_pid(&converse(&conn).unwrap()), gen1);
    assert!(client(&socket, "restart").status.success());
    let gen2: u32 = field(&server.expect_line("probe version=lifeprobe generation=2"), "pid")
        .parse()
        .unwrap();
    let _g2 = PidGuard(gen2);
    let status = text(&client(&socket, "status"));
    assert!(
        status.contains(&format!("pid: {gen2}")),
        "the new one answers: {status}"
    );
    assert!(
        status.contains(&format!("draining generations: pid {gen1}")),
        "{status}"
    );
    drop(conn);
    assert!(wait_until(DEADLINE, || !is_alive(gen1)));
    let status = text(&client(&socket, "status"));
    assert!(status.contains("draining generations: none"), "{status}");
}

#[test]
fn the_control_socket_answers_only_the_servers_user() {
    // Needs root, to run the client as another user; CI runs as root.
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to run a client as uid 65534)"
    );
    let dir = TempDir::new("control-private");
    let socket = dir.path().join("control");
    let (_server, gen1, _port) = start(&socket, &[]);
    let _g = PidGuard(gen1);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private to its owner");
    // Opened to everyone by mistake: the peer's uid is still checked.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(LIFEPROBE)
        .arg("--control")
        .arg(&socket)
        .arg("restart")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let answer = text(&out);
    assert!(!out.status.success(), "{answer}");
    assert!(answer.contains("permission denied: uid 65534"), "{answer}");
}

#[test]
fn an_unknown_or_missing_command_is_answered_with_what_is_expected() {
    let dir = TempDir::new("control-unknown");
    let socket = dir.path().join("control");
    let (_server, gen1, port) = start(&socket, &[]);
    let _g = PidGuard(gen1);
    let ask_raw = |bytes: &[u8]| {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = ask_raw(b"reboot\n");
    assert!(
        answer.starts_with("error unknown command \"reboot\": expected \"restart\" or \"status\""),
        "{answer}"
    );
    assert!(ask_raw(&[0xff; 4096]).starts_with("error"), "garbage");
    assert!(ask_raw(b"").starts_with("error"), "nothing");
    // Still serving, not restarted.
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1);
}

#[test]
fn a_client_with_no_server_is_told_so() {
    let dir = TempDir::new("control-none");
    let out = client(&dir.path().join("control"), "restart");
    assert!(!out.status.success());
    let answer = text(&out);
    assert!(answer.contains("cannot connect"), "{answer}");
    assert!(answer.contains("is the server running"), "{answer}");
}
