//! The edges of a process's life an outside tester found: signals that arrive before the
//! handlers, files left behind (or taken from another server) at exit, a parent signalled on
//! no evidence, duplicate JSON keys, a notify flood.

use std::process::Command;
use std::time::{Duration, Instant};

use grace_tests::{
    DEADLINE, PidGuard, ProcessGuard, TempDir, free_port, pids_with_env, unique_marker, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");
const MARK: &str = "GRACEDEMO_EDGES_TEST";

/// A gracedemo under test and every process it starts (marked in their environment), killed
/// and reaped when dropped.
struct Demo {
    process: ProcessGuard,
    marker: String,
    ports: [u16; 3],
}

impl Demo {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Demo {
        let ports = [free_port(), free_port(), free_port()];
        let marker = unique_marker();
        let mut cmd = Command::new(GRACEDEMO);
        for (flag, port) in ["-a0", "-a1", "-a2"].iter().zip(ports) {
            cmd.arg(flag).arg(format!("127.0.0.1:{port}"));
        }
        cmd.args(extra).env(MARK, &marker).env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Demo {
            process: ProcessGuard::spawn(cmd),
            marker,
            ports,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.process.kill_and_wait();
        let _guards: Vec<PidGuard> = pids_with_env(MARK, &self.marker)
            .into_iter()
            .filter(|&p| p != self.process.pid())
            .map(PidGuard)
            .collect();
    }
}

/// A plain HTTP/1.1 GET of `/sleep/?duration=0s`: the answer, or `None`.
fn get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The signal masks `/proc/PID/status` shows for `pid` (its main thread): blocked, caught.
fn signal_masks(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((mask("SigBlk:")?, mask("SigCgt:")?))
}

fn bit(signal: Signal) -> u64 {
    1 << (signal as i32 - 1)
}

/// The lines by which each mode says it serves: a generation, a supervised generation (its
/// sockets come from the supervisor), a cluster's worker.
const READY: [&str; 3] = ["Serving ", "Listening on init activated", " serving "];

/// M8: `SIGUSR2` sent again and again from the moment the process has taken charge of its
/// signals (blocked or caught: the kernel's exec and the dynamic loader come before any code
/// of the program and cannot be covered from inside it) until it serves: it is never killed
/// by one, and the server serves. (A plain server restarts on the early `SIGUSR2`: its first
/// process then hands over and exits 0.)
fn survives_early_restart_signals(extra: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let mut demo = Demo::start(extra, &[]);
    let pid = demo.pid();
    let usr2 = bit(Signal::SIGUSR2);
    assert!(
        wait_until(DEADLINE, || signal_masks(pid)
            .is_some_and(|(blocked, caught)| (blocked | caught) & usr2 != 0)),
        "{extra:?}: the process never blocked or caught SIGUSR2"
    );
    let deadline = Instant::now() + DEADLINE;
    let mut sent = 0u32;
    let mut ready = false;
    while Instant::now() < deadline && sent < 50_000 {
        if kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).is_err() {
            break;
        }
        sent += 1;
        if demo
            .process
            .seen()
            .iter()
            .any(|l| READY.iter().any(|r| l.contains(r)))
        {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(sent > 0);
    if let Some(status) = demo.process.wait_timeout(Duration::from_millis(300)) {
        assert!(
            status.signal().is_none() && status.success(),
            "{extra:?}: ended by an early SIGUSR2 ({sent} sent): {status:?}; {:?}",
            demo.process.seen()
        );
    }
    assert!(ready, "{extra:?}: never ready ({sent} SIGUSR2 sent)");
    let port = demo.ports[0];
    assert!(
        wait_until(DEADLINE, || get(port)
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))),
        "{extra:?}: does not serve after the early SIGUSR2s"
    );
}

#[test]
fn early_restart_signals_never_kill_a_plain_server() {
    survives_early_restart_signals(&[]);
}

#[test]
fn early_restart_signals_never_kill_a_supervisor() {
    survives_early_restart_signals(&["--supervise"]);
}

#[test]
fn early_restart_signals_never_kill_a_cluster_primary() {
    survives_early_restart_signals(&["--workers", "1"]);
}

/// M8: a `SIGUSR2` already waiting when the program starts (sent while it was blocked, as
/// in the moment before its handlers) restarts the server once it serves: the handler
/// thread takes the held signals over instead of leaving them blocked for good.
#[test]
fn a_restart_signal_waiting_at_the_start_restarts_once_serving() {
    let ports = [free_port(), free_port(), free_port()];
    let marker = unique_marker();
    let mut cmd = Command::new(GRACEDEMO);
    for (flag, port) in ["-a0", "-a1", "-a2"].iter().zip(ports) {
        cmd.arg(flag).arg(format!("127.0.0.1:{port}"));
    }
    cmd.env(MARK, &marker).env_remove("RUST_LOG");
    // SAFETY: sigprocmask and raise are async-signal-safe system calls, run between fork and
    // exec; SIGUSR2 stays pending, blocked, across the exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            // To the process, as a sender outside would (a thread-directed one would wait for
            // the main thread, which keeps it blocked).
            libc::kill(libc::getpid(), libc::SIGUSR2);
            Ok(())
        });
    }
    let mut demo = Demo {
        process: ProcessGuard::spawn(cmd),
        marker,
        ports,
    };
    demo.process.expect_log("Serving ");
    let handoff = demo.process.expect_log("Graceful handoff");
    assert!(handoff.contains(&format!("old pid {}", demo.pid())), "{handoff}");
}

/// `--status` through the control socket at `path`: the answer, or the error.
fn status(path: &std::path::Path) -> Result<String, String> {
    let out = Command::new(GRACEDEMO)
        .args(["--control-socket", path.to_str().expect("utf-8 path"), "--status"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// M5: server A's control socket path is taken over by server B (A's file removed, B made its
/// own); A restarts (its new generation inherits the socket, not the file) and stops: B's
/// control socket and PID file are left alone.
#[test]
fn stopping_a_server_leaves_another_servers_control_socket_and_pid_file() {
    let dir = TempDir::new("edges-m5");
    let control = dir.path().join("control");
    let pid_file = dir.path().join("pid");
    let flags = [
        "--control-socket",
        control.to_str().expect("utf-8"),
        "--pid-file",
        pid_file.to_str().expect("utf-8"),
    ];
    let mut a = Demo::start(&flags, &[]);
    a.process.expect_log("Serving ");
    std::fs::remove_file(&control).expect("remove A's control socket");
    std::fs::remove_file(&pid_file).expect("remove A's PID file");
    let mut b = Demo::start(&flags, &[]);
    b.process.expect_log("Serving ");
    let b_pid = b.pid();
    // A restarts: its second generation inherits the socket whose path is now B's.
    a.process.signal(Signal::SIGUSR2);
    let a2 = grace_tests::new_pid_in_handoff(&a.process.expect_log("Graceful handoff"));
    let _a2 = PidGuard(a2);
    // A's second generation wrote the shared PID file when it became ready; B restarts, and
    // its second generation writes its own (the file a process removes at its stop is the
    // one it wrote: a file written by hand is left), then A stops.
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|s| s.trim() == a2.to_string())));
    b.process.signal(Signal::SIGUSR2);
    let b2 = grace_tests::new_pid_in_handoff(&b.process.expect_log("Graceful handoff"));
    let _b2 = PidGuard(b2);
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|s| s.trim() == b2.to_string())));
    kill(Pid::from_raw(a2 as i32), Signal::SIGTERM).expect("SIGTERM A");
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(a2)),
        "A's second generation did not stop"
    );
    assert!(control.exists(), "A's stop removed B's control socket");
    let answer = status(&control).expect("B answers on its control socket");
    assert!(answer.contains(&format!("pid: {b2}")), "{answer}");
    assert_eq!(
        std::fs::read_to_string(&pid_file)
            .expect("B's PID file is kept")
            .trim(),
        b2.to_string()
    );
    // B's own stop removes both.
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(b_pid)),
        "B's first generation drains and goes"
    );
    kill(Pid::from_raw(b2 as i32), Signal::SIGTERM).expect("SIGTERM B");
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(b2)),
        "B's second generation did not stop"
    );
    assert!(!control.exists(), "B's stop leaves its control socket");
    assert!(!pid_file.exists(), "B's stop leaves its PID file");
}

/// M1: gracedemo started with `LISTEN_FDS=1` and no `LISTEN_PID` by a shell that does not
/// (`holds` false) or does (`holds` true, as Go grace's parent does) keep the listening socket
/// open itself. Returns whether the shell got `SIGTERM` by the time gracedemo serves, and the
/// output seen.
fn listen_fds_from_a_shell(holds: bool) -> (bool, Vec<String>) {
    use std::os::fd::AsRawFd;
    use std::process::Stdio;
    grace_tests::become_subreaper();
    let dir = TempDir::new("edges-m1");
    let marker_file = dir.path().join("parent-closed");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fd = listener.as_raw_fd();
    let marker = unique_marker();
    // The shell starts gracedemo with the socket as fd 3 once it has closed (or kept) its
    // own copy, traps SIGTERM to say so, and waits.
    let close = if holds { ":" } else { "exec 5<&-" };
    let script = format!(
        r#"trap 'echo shell-got-SIGTERM; exit 0' TERM
( for i in $(seq 1 2000); do [ -e "$M" ] && break; sleep 0.01; done; exec "$0" "$@" 3<&5 5<&- ) &
{close}
: > "$M"
wait; wait"#
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg(GRACEDEMO)
        .args([
            "-a0",
            &format!("127.0.0.1:{port}"),
            "-a1",
            "127.0.0.1:0",
            "-a2",
            "127.0.0.1:0",
        ])
        .env("M", &marker_file)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env("RUST_LOG", "info")
        .env(MARK, &marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe system calls, run between fork and exec;
    // they give the shell the listening socket as fd 5 without close-on-exec. A listener that
    // already is fd 5 (the number the test's threads left free) only loses its close-on-exec
    // flag: dup2 onto itself would leave the flag, and the shell would find fd 5 closed.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let ok = if fd == 5 {
                libc::fcntl(5, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, 5) == 5
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut shell = cmd.spawn().expect("sh");
    let _shell_guard = PidGuard(shell.id());
    let _demo_guards = scopeguard_pids(&marker);
    if !holds {
        // The test's own copy would be evidence too: only the shell's child keeps the socket.
        drop(listener);
    }
    let mut lines = grace_tests::Lines::new(shell.stdout.take().expect("stdout"));
    lines.also_read(shell.stderr.take().expect("stderr"));
    assert!(
        wait_until(DEADLINE, || lines
            .drain_seen()
            .iter()
            .any(|l| l.contains("Serving ") || l.contains("Graceful handoff"))),
        "gracedemo never served: {:#?}",
        lines.drain_seen()
    );
    // The readiness signal is sent before the serving line is logged; a moment for the shell
    // to run its trap.
    let got = wait_until(Duration::from_millis(500), || {
        lines.drain_seen().iter().any(|l| l.contains("shell-got-SIGTERM"))
    });
    let seen = lines.drain_seen().to_vec();
    // Reaped here on success; the guard above kills and reaps it on a failure.
    let _ = shell.kill();
    let _ = shell.wait();
    (got, seen)
}

/// Kills and reaps, when dropped, every process marked with `marker`.
struct MarkedPids(String);

impl Drop for MarkedPids {
    fn drop(&mut self) {
        let _guards: Vec<PidGuard> = pids_with_env(MARK, &self.0).into_iter().map(PidGuard).collect();
    }
}

fn scopeguard_pids(marker: &str) -> MarkedPids {
    MarkedPids(marker.to_owned())
}

#[test]
fn listen_fds_set_by_a_shell_never_sigterms_the_shell() {
    let (got, lines) = listen_fds_from_a_shell(false);
    assert!(!got, "the shell was sent SIGTERM: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("is not a Go grace parent")
            && l.contains("does not hold 1 of the 1 inherited sockets")),
        "no line saying why the parent is not signalled: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("Graceful handoff")),
        "a hand-over that did not happen is claimed: {lines:#?}"
    );
}

#[test]
fn a_parent_that_holds_the_sockets_is_told_the_go_grace_way() {
    let (got, lines) = listen_fds_from_a_shell(true);
    assert!(got, "the Go-grace-style parent was not sent SIGTERM: {lines:#?}");
}

/// M3: a supervisor that gives up after a crash loop (each generation killed with
/// `SIGKILL`, which no process can clean up after) exits without leaving the PID file (naming
/// a dead generation) or the control socket behind.
#[test]
fn a_supervisor_that_gives_up_removes_the_pid_file_and_control_socket() {
    let dir = TempDir::new("edges-m3");
    let control = dir.path().join("control");
    let pid_file = dir.path().join("pid");
    let mut demo = Demo::start(
        &[
            "--supervise",
            "--control-socket",
            control.to_str().expect("utf-8"),
            "--pid-file",
            pid_file.to_str().expect("utf-8"),
        ],
        &[],
    );
    let mut killed = Vec::new();
    let mut status = None;
    // The supervisor gives up after CRASH_LIMIT (5) crashes; a few more rounds at most.
    for _ in 0..10 {
        let mut next = None;
        let found = wait_until(DEADLINE, || {
            next = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|p| !killed.contains(p) && grace_tests::is_alive(*p));
            next.is_some() || demo.process.wait_timeout(Duration::ZERO).is_some()
        });
        assert!(found, "no new generation named in the PID file");
        let Some(pid) = next else { break };
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL a generation");
        killed.push(pid);
        status = demo.process.wait_timeout(Duration::from_millis(200));
        if status.is_some() {
            break;
        }
    }
    let status = status
        .or_else(|| demo.process.wait_timeout(DEADLINE))
        .expect("the supervisor gives up");
    assert!(!status.success(), "{status:?}");
    assert!(
        demo.process
            .seen()
            .iter()
            .any(|l| l.contains("too many crashes: giving up")),
        "{:#?}",
        demo.process.seen()
    );
    assert!(
        !pid_file.exists(),
        "the PID file names a dead generation: {:?}",
        std::fs::read_to_string(&pid_file)
    );
    assert!(!control.exists(), "the control socket was left behind");
}

/// The keys of one JSON object, read by a visitor that sees every key (a map type would keep
/// the last of two alike, silently).
struct ObjectKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for ObjectKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ObjectKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ObjectKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(ObjectKeys(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// M9: every `--log-json` line of a supervisor, its generations and a restart (lines about
/// other processes: children started, generations replaced) is a JSON object with each key
/// once, and `pid` is the logging process's own.
#[test]
fn json_log_lines_never_repeat_a_key() {
    let mut demo = Demo::start(&["--supervise", "--log-json"], &[("RUST_LOG", "info")]);
    demo.process.expect_log("Serving ");
    demo.process.signal(Signal::SIGUSR2);
    demo.process.expect_log("Graceful handoff");
    demo.process.expect_log("stopped accepting");
    demo.process.signal(Signal::SIGTERM);
    demo.process.wait_timeout(DEADLINE).expect("stops");
    let lines = demo.process.output_after_exit();
    let objects: Vec<&String> = lines.iter().filter(|l| l.starts_with('{')).collect();
    assert!(objects.len() >= 5, "{lines:#?}");
    let mut subject_pid = false;
    for line in objects {
        let keys: ObjectKeys = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let mut seen = std::collections::HashSet::new();
        for key in &keys.0 {
            assert!(seen.insert(key.as_str()), "{key:?} twice in {line}");
        }
        let value: serde_json::Value = serde_json::from_str(line).expect("json");
        let logger = value["pid"].as_u64().expect("pid");
        assert!(
            value
                .get("subject_pid")
                .is_none_or(|p| p.as_str() != Some(&logger.to_string())),
            "subject_pid repeats the logger's pid: {line}"
        );
        subject_pid |= value.get("subject_pid").is_some();
    }
    assert!(subject_pid, "no line about another process: {lines:#?}");
}

/// Sends `message` to the datagram socket at `path` as fast as it takes them, for `how_long`,
/// with `as_pid` in its credentials when given (only root may name another process). Returns
/// how many were sent.
fn flood_notify(path: &std::path::Path, message: &[u8], as_pid: Option<u32>, how_long: Duration) -> u64 {
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials, sendmsg,
        socket,
    };
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK,
        None,
    )
    .expect("socket");
    let addr = UnixAddr::new(path).expect("address");
    let creds = as_pid.map(|pid| {
        UnixCredentials::from(libc::ucred {
            pid: pid as i32,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        })
    });
    let iov = [std::io::IoSlice::new(message)];
    let deadline = Instant::now() + how_long;
    let mut sent = 0;
    // Bounded by the deadline; a full queue is waited out briefly.
    while Instant::now() < deadline {
        let cmsgs: Vec<ControlMessage<'_>> = creds.iter().map(ControlMessage::ScmCredentials).collect();
        match sendmsg(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), Some(&addr)) {
            Ok(_) => sent += 1,
            Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_micros(100)),
            Err(e) => panic!("cannot send to the notify socket: {e}"),
        }
    }
    sent
}

/// M10: a flood of notifications at a cluster's primary, from outside and (as root, which may
/// name another pid in its credentials) as its worker: the log stays bounded, the primary
/// answers `--status`, and the worker serves.
#[test]
fn a_notify_flood_costs_the_primary_bounded_log_lines_and_it_still_answers() {
    let dir = TempDir::new("edges-m10");
    let control = dir.path().join("control");
    let mut demo = Demo::start(
        &[
            "--workers",
            "1",
            "--control-socket",
            control.to_str().expect("utf-8"),
        ],
        &[("RUST_LOG", "info")],
    );
    demo.process.expect_log("every worker is serving");
    let primary = demo.pid();
    let worker = pids_with_env(MARK, &demo.marker)
        .into_iter()
        .find(|&p| p != primary)
        .expect("the worker");
    // Where a worker sends its notifications: its NOTIFY_SOCKET.
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("environ");
    let notify = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| std::path::PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .expect("the worker's NOTIFY_SOCKET");
    let before = demo.process.seen().len();
    let ready = format!("READY=1\nMAINPID={worker}\nX_GRACE_WORKER=0\nX_GRACE_GENERATION=1");
    let as_worker = nix::unistd::geteuid().is_root().then_some(worker);
    let flood = std::thread::spawn({
        let notify = notify.clone();
        move || {
            flood_notify(&notify, b"WATCHDOG=1", None, Duration::from_secs(1))
                + flood_notify(&notify, ready.as_bytes(), as_worker, Duration::from_secs(2))
        }
    });
    // Answered while the flood lasts.
    let during = Instant::now();
    let answer = status(&control).expect("--status during the flood");
    assert!(answer.contains(&format!("primary: pid {primary}")), "{answer}");
    assert!(
        during.elapsed() < Duration::from_secs(5),
        "--status took {:?}",
        during.elapsed()
    );
    let sent = flood.join().expect("flood");
    assert!(sent > 1_000, "only {sent} sent");
    assert!(
        get(demo.ports[0]).is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the worker serves"
    );
    let answer = status(&control).expect("--status after the flood");
    assert!(answer.contains("worker 0: pid"), "{answer}");
    // The reports of the last second's suppression, then nothing more.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = status(&control);
    let lines = demo.process.seen();
    let logged = &lines[before..];
    assert!(
        logged.len() < 50,
        "{} lines logged for {sent} notifications: {:#?}",
        logged.len(),
        &logged[..logged.len().min(20)]
    );
    if as_worker.is_some() {
        assert!(
            logged
                .iter()
                .any(|l| l.contains("floods the notify socket") && l.contains(&format!("sender={worker}"))),
            "no report of the flood: {logged:#?}"
        );
    } else {
        eprintln!("not root: the flood as the worker (credentials naming its pid) was not sent");
    }
}

/// A supervisor's first generation binds its own sockets (the supervisor passes `LISTEN_FDS=0`
/// with `LISTEN_PID`): it says "Serving", not Go grace's "Listening on init activated", which
/// would claim a socket activation that never happened.
#[test]
fn a_supervisors_first_generation_does_not_claim_socket_activation() {
    let mut demo = Demo::start(&["--supervise"], &[]);
    let line = demo.process.expect_log("Serving ");
    assert!(line.contains(" with pid "), "{line}");
    assert!(
        !demo.process.seen().iter().any(|l| l.contains("init activated")),
        "{:?}",
        demo.process.seen()
    );
}

/// gracedemo in `mode`, serving one request that sleeps `duration` (in flight once the
/// handler has said so): the server, the request's client thread (its answer, if any), and
/// the handler's line.
fn serving_a_slow_request(
    mode: &[&str],
    duration: &str,
) -> (Demo, std::thread::JoinHandle<Option<String>>, String) {
    let mut demo = Demo::start(mode, &[("RUST_LOG", "gracedemo=debug,gracenet=info")]);
    let port = demo.ports[0];
    assert!(
        wait_until(DEADLINE, || get(port).is_some()),
        "{mode:?} never served"
    );
    let request = format!("GET /sleep/?duration={duration} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let slow = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(DEADLINE)).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    });
    let sleeping = demo
        .process
        .expect_log(&format!("sleeping for {duration} from pid"));
    (demo, slow, sleeping)
}

/// One `SIGHUP` to a cluster's primary drains the workers (the request in flight is
/// answered), as `SIGTERM` does. gracedemo turned its SIGHUP into a SIGTERM to itself, and the
/// primary drains on SIGHUP too: two stops, the second at once, cut every request.
#[test]
fn one_sighup_to_a_clusters_primary_drains_it() {
    let (mut demo, slow, _) = serving_a_slow_request(&["--workers", "2"], "2s");
    demo.process.signal(Signal::SIGHUP);
    let answer = slow.join().expect("the client thread");
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the request in flight was cut: {answer:?}\n{}",
        demo.process.seen().join("\n")
    );
    let status = demo.process.wait_timeout(DEADLINE).expect("the primary stops");
    assert!(status.success(), "{status}");
}

/// Under the supervisor, `SIGHUP` (passed on to the generation, which drains on it) and then
/// `SIGTERM`: the second stop, which stops at once, cutting the 10 s request. The generation's
/// SIGHUP became a SIGTERM it sent itself, which did not count as a first stop.
#[test]
fn sighup_then_sigterm_to_the_supervisor_stops_at_once() {
    let (mut demo, slow, _) = serving_a_slow_request(&["--supervise"], "10s");
    demo.process.signal(Signal::SIGHUP);
    demo.process
        .expect_log("stopping: draining connections and tasks");
    demo.process.signal(Signal::SIGTERM);
    let status = demo.process.wait_timeout(DEADLINE).expect("the supervisor stops");
    assert!(status.success(), "{status}");
    let answer = slow.join().expect("the client thread");
    assert!(
        !answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the second stop waited for the request: {answer:?}"
    );
}

/// A stop signal sent to every process of the server (`systemctl kill`, or a stop under
/// systemd's default `KillMode=control-group`, `kill $(pgrep app)`) while a 2 s request is in
/// flight: the request is answered. Under a supervisor or a cluster's primary, the serving
/// process got the signal twice (its own, and the one forwarded) and took the second as "stop
/// at once", cutting the request.
fn a_stop_to_every_process_answers_the_request_in_flight(mode: &[&str]) {
    a_signal_to_every_process_answers_the_request_in_flight(mode, Signal::SIGTERM);
}

/// [`a_stop_to_every_process_answers_the_request_in_flight`] with `stop` for the signal.
fn a_signal_to_every_process_answers_the_request_in_flight(mode: &[&str], stop: Signal) {
    let (mut demo, slow, sleeping) = serving_a_slow_request(mode, "2s");
    let serving: u32 = sleeping
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {sleeping:?}"));
    let every = pids_with_env(MARK, &demo.marker);
    assert!(every.len() >= 2, "{mode:?}: {every:?}");
    // Every process but the first, the serving one among them, and once it has begun its
    // drain, the first (the supervisor or primary, which forwards its copy: the case where the
    // kernel cannot merge the two into one pending signal).
    for &pid in every.iter().filter(|&&p| p != demo.pid()) {
        let _ = kill(Pid::from_raw(pid as i32), stop);
    }
    // (A cluster's workers leave SIGHUP to the primary: their own copy begins nothing.)
    let own_copy_drains = !(stop == Signal::SIGHUP && mode.contains(&"--workers"));
    if serving != demo.pid() && own_copy_drains {
        demo.process
            .expect_log("stopping: draining connections and tasks");
    }
    let _ = kill(Pid::from_raw(demo.pid() as i32), stop);
    let answer = slow.join().expect("the client thread");
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{mode:?}: the request in flight was cut: {answer:?}\n{}",
        demo.process.seen().join("\n")
    );
    assert!(
        demo.process.wait_timeout(DEADLINE).is_some(),
        "{mode:?}: the server did not stop"
    );
}

#[test]
fn a_stop_to_every_process_of_a_supervised_server_answers_the_request_in_flight() {
    a_stop_to_every_process_answers_the_request_in_flight(&["--supervise"]);
}

#[test]
fn a_stop_to_every_process_of_a_supervised_server_with_a_standby_answers_the_request_in_flight() {
    a_stop_to_every_process_answers_the_request_in_flight(&["--supervise", "--standby"]);
}

#[test]
fn a_stop_to_every_process_of_a_cluster_answers_the_request_in_flight() {
    a_stop_to_every_process_answers_the_request_in_flight(&["--workers", "2"]);
}

#[test]
fn a_stop_to_every_process_of_a_server_with_a_standby_answers_the_request_in_flight() {
    a_stop_to_every_process_answers_the_request_in_flight(&["--standby"]);
}

#[test]
fn sighup_to_every_process_of_a_cluster_answers_the_request_in_flight() {
    a_signal_to_every_process_answers_the_request_in_flight(&["--workers", "2"], Signal::SIGHUP);
}

#[test]
fn sighup_to_every_process_of_a_supervised_server_answers_the_request_in_flight() {
    a_signal_to_every_process_answers_the_request_in_flight(&["--supervise"], Signal::SIGHUP);
}
