//! systemd's side, with its own tools and protocol: a real `NOTIFY_SOCKET` datagram socket
//! records every sd_notify message across start, two restarts and a stop; and
//! `systemd-analyze verify` checks the example unit files.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, TempDir, answer_pid, ask, command, field, lifeprobe, signal,
    start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

/// Receives sd_notify datagrams on a socket in `dir`, one message (its lines) per datagram.
fn notify_socket(dir: &Path) -> (std::path::PathBuf, Receiver<Vec<String>>) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send(text.lines().map(str::to_owned).collect()).is_err() {
                break;
            }
        }
    });
    (path, rx)
}

fn next(rx: &Receiver<Vec<String>>) -> Vec<String> {
    rx.recv_timeout(DEADLINE).expect("an sd_notify message in time")
}

fn value<'a>(msg: &'a [String], key: &str) -> Option<&'a str> {
    msg.iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Checks a "MAINPID=<pid>, READY=1" message and that `pid` is the one serving.
fn assert_ready(msg: &[String], pid: u32, port: u16) {
    assert_eq!(value(msg, "MAINPID"), Some(pid.to_string().as_str()), "{msg:?}");
    assert_eq!(value(msg, "READY"), Some("1"), "{msg:?}");
    let status = value(msg, "STATUS").unwrap_or_default();
    assert!(status.contains(&format!("with pid {pid}")), "{msg:?}");
    assert!(
        wait_until(DEADLINE, || ask(port).map(|a| answer_pid(&a)).ok() == Some(pid)),
        "MAINPID {pid} serves"
    );
}

fn assert_reloading(msg: &[String]) {
    assert_eq!(value(msg, "RELOADING"), Some("1"), "{msg:?}");
    let usec: u64 = value(msg, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC");
    assert!(usec > 0, "{msg:?}");
}

#[test]
fn sd_notify_messages_follow_the_serving_pid_across_restarts_and_stop() {
    let dir = TempDir::new("notify");
    let (path, rx) = notify_socket(dir.path());
    let mut cmd = lifeprobe(LIFEPROBE, &[]);
    cmd.env("NOTIFY_SOCKET", &path);
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(cmd);

    assert_ready(&next(&rx), gen1, port);
    let mut guards = Vec::new();
    let mut serving = gen1;
    for number in 2..=3 {
        signal(serving, Signal::SIGUSR2);
        assert_reloading(&next(&rx));
        let line = g.expect_line("probe version=");
        assert_eq!(field(&line, "generation"), number.to_string());
        let pid: u32 = field(&line, "pid").parse().unwrap();
        guards.push(PidGuard(pid));
        g.expect_log(&format!("stopped accepting generation={} ", number - 1));
        // The new process's own word, then the old one's as it hands over (the main process
        // systemd listens to with NotifyAccess=main).
        let own = next(&rx);
        assert_ready(&own, pid, port);
        assert!(
            value(&own, "STATUS").is_some_and(|s| s.contains(&format!(":{port}"))),
            "{own:?}"
        );
        let handed = next(&rx);
        assert_ready(&handed, pid, port);
        assert_eq!(
            value(&handed, "STATUS"),
            Some(format!("Generation {number} serving with pid {pid}").as_str()),
            "{handed:?}"
        );
        serving = pid;
    }
    signal(serving, Signal::SIGTERM);
    let stopping = next(&rx);
    assert_eq!(value(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let extend: u64 = value(&stopping, "EXTEND_TIMEOUT_USEC")
        .and_then(|v| v.parse().ok())
        .expect("EXTEND");
    assert!(extend >= 60_000_000, "covers the 60 s stop timeout: {extend}");
    assert!(
        value(&stopping, "STATUS")
            .unwrap_or_default()
            .starts_with("Stopping: generation 3")
    );
    assert!(wait_until(DEADLINE, || guards.iter().all(|p| !p.is_alive())));
    let status = g.wait_timeout(DEADLINE).expect("generation 1 exited");
    assert!(status.success());
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "no message after the stop"
    );
}

#[test]
fn a_failed_restart_tells_systemd_the_old_process_still_serves() {
    let dir = TempDir::new("notify-fail");
    let (path, rx) = notify_socket(dir.path());
    let marker = dir.path().join("failed");
    let mut cmd = lifeprobe(LIFEPROBE, &[]);
    cmd.env("NOTIFY_SOCKET", &path).env("PROBE_FAIL_ONCE", &marker);
    let (g, ProbeGen { pid: gen1, port }) = start_lifeprobe(cmd);
    assert_ready(&next(&rx), gen1, port);
    g.signal(Signal::SIGUSR2);
    assert_reloading(&next(&rx));
    let back = next(&rx);
    assert_eq!(value(&back, "READY"), Some("1"), "{back:?}");
    let status = value(&back, "STATUS").unwrap_or_default();
    assert!(
        status.starts_with("Restart failed: generation 2 (pid "),
        "{status}"
    );
    assert!(
        status.contains("exited before it was ready (exit code 1)"),
        "{status}"
    );
    assert!(
        status.ends_with(&format!("generation 1 still serving with pid {gen1}")),
        "{status}"
    );
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1);
}

#[test]
fn the_example_units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    let systemd_version: u32 = Command::new("systemctl")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .expect("systemctl --version (Debian's systemd package; .ci/run installs it)");
    for (service, min_version) in [
        ("gracedemo.service", 252),
        ("gracedemo-notify-reload.service", 253),
    ] {
        let dir = TempDir::new("units");
        // verify checks that ExecStart exists: point it at a real executable.
        let text = std::fs::read_to_string(units.join(service)).unwrap();
        let text = text.replace("/usr/local/bin/gracedemo", LIFEPROBE);
        std::fs::write(dir.path().join("gracedemo.service"), text).unwrap();
        std::fs::copy(
            units.join("gracedemo.socket"),
            dir.path().join("gracedemo.socket"),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "./gracedemo.socket", "./gracedemo.service"])
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze");
        let complaints = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{service}: {complaints}");
        if systemd_version >= min_version {
            assert!(complaints.trim().is_empty(), "{service}: {complaints}");
        } else {
            // An older systemd only lacks the newer Type= and ReloadSignal=.
            for line in complaints.lines() {
                assert!(
                    line.contains("notify-reload") || line.contains("ReloadSignal"),
                    "{service}: {line}"
                );
            }
        }
    }
}

#[test]
fn under_a_supervisor_systemd_hears_the_supervisors_pid_as_mainpid() {
    let dir = TempDir::new("notify-supervised");
    let (path, rx) = notify_socket(dir.path());
    let mut cmd = command(LIFEPROBE, &["127.0.0.1:0", "--supervise"], &[]);
    cmd.env("NOTIFY_SOCKET", &path);
    let (mut g, gen1) = start_lifeprobe(cmd);
    let supervisor = g.pid();
    let _gen1 = PidGuard(gen1.pid);
    let ready = next(&rx);
    assert_eq!(
        value(&ready, "MAINPID"),
        Some(supervisor.to_string().as_str()),
        "{ready:?}"
    );
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    g.signal(Signal::SIGUSR2);
    assert_reloading(&next(&rx));
    let ready = next(&rx);
    assert_eq!(
        value(&ready, "MAINPID"),
        Some(supervisor.to_string().as_str()),
        "{ready:?}"
    );
    let line = g.expect_line("probe version=");
    let _gen2 = PidGuard(field(&line, "pid").parse().unwrap());
    g.signal(Signal::SIGTERM);
    let status = g.wait_timeout(DEADLINE).expect("the supervisor exits");
    assert!(status.success(), "{status}");
}
