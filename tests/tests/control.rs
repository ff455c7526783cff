//! The control socket: a restart asked for there returns its result (the new pid, or why it
//! failed), `status` tells the state, and only the server's user (or root) is answered.
//! Driven with real processes: lifeprobe as the server, and lifeprobe's client mode
//! (`--control PATH restart|status`, which calls `gracenet::control`) as the operator's tool.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use std::time::Duration;

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, ProcessGuard, TempDir, answer_pid, ask, converse, field, is_alive,
    lifeprobe, signal, start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

/// The command for a lifeprobe (`program`) serving with a control socket at `socket`, and `env`.
fn with_control(program: impl AsRef<OsStr>, socket: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = lifeprobe(program, env);
    cmd.env("PROBE_CONTROL_SOCKET", socket);
    cmd
}

/// A directory anyone can write, sticky (like /tmp), for a test that needs root (`why`).
fn sticky_dir(tag: &str, why: &str) -> TempDir {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root ({why})");
    let dir = TempDir::new(tag);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
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
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
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
    // The last probe's connection closes on the server's side a moment after its answer came:
    // wait for that, so a control client counted as a connection would still fail here.
    let mut last = status;
    assert!(
        wait_until(DEADLINE, || {
            last = text(&client(&socket, "status"));
            last.contains("connections: 0")
        }),
        "the asking client is not counted: {last}"
    );
}

#[test]
fn a_failed_restart_is_reported_with_its_reason_and_the_old_generation_keeps_serving() {
    let dir = TempDir::new("control-fail");
    let socket = dir.path().join("control");
    let marker = dir.path().join("failed-once");
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(
        LIFEPROBE,
        &socket,
        &[("PROBE_FAIL_ONCE", marker.to_str().unwrap())],
    ));
    let _g = PidGuard(gen1);
    let out = client(&socket, "restart");
    let answer = text(&out);
    assert!(!out.status.success(), "the client fails: {answer}");
    assert!(
        answer.starts_with("error kind=RestartFailed "),
        "the client tells a failed restart from the others: {answer}"
    );
    assert!(answer.contains("restart failed"), "{answer}");
    assert!(
        answer.contains("exited before it was ready"),
        "the reason: {answer}"
    );
    assert!(
        answer.contains(&format!("generation 1 (pid {gen1}) still serving")),
        "{answer}"
    );
    // The failed attempt printed its own generation-2 line before failing: past it, so the
    // guard below is for the generation that serves.
    server.expect_line("probe failing");
    server.expect_log("restart failed");
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1);
    // The next attempt works (the failure was once).
    let out = client(&socket, "restart");
    let answer = text(&out);
    // The serving generation 2 is the one the answer names (the failed attempt printed a
    // generation-2 line too, and the output's order between processes is not the events').
    let gen2: u32 = answer
        .strip_prefix("ok generation 2 serving with pid ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the second restart works: {answer}"));
    let _g2 = PidGuard(gen2);
    assert!(out.status.success(), "{answer}");
    assert!(wait_until(DEADLINE, || answer_pid(&ask(port).unwrap()) == gen2));
}

#[test]
fn status_lists_the_older_generations_still_draining() {
    let dir = TempDir::new("control-status");
    let socket = dir.path().join("control");
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(
        LIFEPROBE,
        &socket,
        &[("PROBE_STOP_TIMEOUT_MS", "20000")],
    ));
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
    let (_server, ProbeGen { pid: gen1, .. }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
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
    let (_server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
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
        answer.starts_with(
            "error unknown command \"reboot\": expected \"restart\", \"status\" or \"status json\""
        ),
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
    assert!(answer.starts_with("error kind=Unreachable "), "{answer}");
    assert!(answer.contains("cannot connect"), "{answer}");
    assert!(answer.contains("is the server running"), "{answer}");
}

/// The path of a running server's control socket removed: every restart still works (the
/// new generation inherits the socket and never touches the path), and says the socket is
/// no longer reachable by its path.
#[test]
fn a_removed_control_socket_path_does_not_stop_restarts() {
    let dir = TempDir::new("control-removed");
    let socket = dir.path().join("control");
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
    let mut guards = vec![PidGuard(gen1)];
    std::fs::remove_file(&socket).unwrap();
    let mut serving = gen1;
    for number in 2..=3 {
        signal(serving, Signal::SIGUSR2);
        let line = server.expect_line(&format!("probe version=lifeprobe generation={number}"));
        let new: u32 = field(&line, "pid").parse().unwrap();
        guards.push(PidGuard(new));
        server.expect_log("no longer reachable by its path");
        assert!(wait_until(DEADLINE, || answer_pid(&ask(port).unwrap()) == new));
        serving = new;
    }
    assert!(
        !socket.exists(),
        "the path is never made again by an inheriting generation"
    );
}

/// A world-writable sticky directory (like /tmp): after the operator removed the control
/// socket, another user plants a symlink there to a file of root's. Neither a restart nor a
/// new server follows it: the file keeps its mode, the link stays as it is.
#[test]
fn a_symlink_planted_at_the_control_socket_path_by_another_user_is_never_followed() {
    let dir = sticky_dir("control-symlink", "to plant the link as uid 65534");
    let victims = TempDir::new("control-symlink-victim");
    let victim = victims.path().join("root-file");
    std::fs::write(&victim, b"root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let socket = dir.path().join("control");
    let plant = || {
        let out = Command::new("ln")
            .arg("-s")
            .arg(&victim)
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run ln as uid 65534");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let victim_mode = || std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;

    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
    let _g1 = PidGuard(gen1);
    std::fs::remove_file(&socket).unwrap();
    plant();
    signal(gen1, Signal::SIGUSR2);
    let gen2: u32 = field(&server.expect_line("probe version=lifeprobe generation=2"), "pid")
        .parse()
        .unwrap();
    let _g2 = PidGuard(gen2);
    server.expect_log("found=\"a symlink\"");
    assert!(wait_until(DEADLINE, || answer_pid(&ask(port).unwrap()) == gen2));
    assert_eq!(victim_mode(), 0o644, "the link's target keeps its mode");
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A new server at that path refuses it, naming it, and leaves it alone.
    let mut other = ProcessGuard::spawn(with_control(LIFEPROBE, &socket, &[]));
    let status = other.wait_timeout(DEADLINE).expect("the second server exits");
    assert!(!status.success());
    let said = other.output_after_exit().join("\n");
    assert!(said.contains("exists and is not a socket"), "{said}");
    assert_eq!(victim_mode(), 0o644);
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's");
}

/// Reloads one after another, each asked as soon as the previous one answered: every one
/// succeeds and names a new generation. (The old generation used to answer, then accept the
/// next client before its drain began, and close it or refuse it.) `CONTROL_RELOADS` sets
/// the count (default 100).
#[test]
fn back_to_back_reloads_are_all_answered_by_the_serving_generation() {
    let count: u64 = std::env::var("CONTROL_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = TempDir::new("control-back-to-back");
    let socket = dir.path().join("control");
    let (mut server, ProbeGen { pid: gen1, .. }) =
        start_lifeprobe(with_control(LIFEPROBE, &socket, &[("PROBE_STANDBY", "1")]));
    let mut guards = vec![PidGuard(gen1)];
    let client = gracenet::control::Client::new(&socket);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for number in 2..=count + 1 {
        assert!(started.elapsed() < Duration::from_secs(600), "bounded in time");
        match client.restart() {
            Ok(answer) => {
                let pid: u32 = answer.rsplit(' ').next().unwrap().parse().unwrap();
                guards.push(PidGuard(pid));
                assert_eq!(answer, format!("generation {number} serving with pid {pid}"));
            }
            Err(e) => {
                failures.push(format!("reload {}: {e}", number - 1));
                break;
            }
        }
        // Keep the guards list short: the drained ones are gone.
        guards.retain(PidGuard::is_alive);
    }
    assert!(
        failures.is_empty(),
        "of {count} reloads: {failures:?}\n{}",
        server.seen().join("\n")
    );
}

/// A server at its fd limit cannot accept: `--status` and `--reload` give up at their timeout
/// with a clear message, and the restart whose client left is never run once fds free up.
#[test]
fn a_control_client_gives_up_at_its_timeout_and_a_command_left_behind_is_not_run() {
    let dir = TempDir::new("control-fd-limit");
    let socket = dir.path().join("control");
    let mut cmd = with_control(LIFEPROBE, &socket, &[]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 64)
                .map_err(std::io::Error::from)
        });
    }
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(cmd);
    let _g1 = PidGuard(gen1);
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    server.expect_log("accept failed");
    let timed = |command: &str| {
        let t0 = std::time::Instant::now();
        let out = Command::new(LIFEPROBE)
            .arg("--control")
            .arg(&socket)
            .arg(command)
            .env("PROBE_CONTROL_TIMEOUT_MS", "1500")
            .output()
            .expect("run the control client");
        (out, t0.elapsed())
    };
    for command in ["status", "restart"] {
        let (out, took) = timed(command);
        let answer = text(&out);
        assert!(!out.status.success(), "{answer}");
        assert!(
            answer.contains(&format!("no answer to {command:?} within 1.5 s")),
            "{answer}"
        );
        assert!(took < Duration::from_secs(15), "gave up at its timeout: {took:?}");
    }
    // The fds free up: the queued clients are accepted, and the commands whose clients
    // left are not run.
    drop(held);
    server.expect_log("command not run: its client left before it was read command=restart");
    assert!(wait_until(DEADLINE, || answer_pid(
        &ask(port).unwrap_or_default()
    ) == gen1));
    let status = text(&client(&socket, "status"));
    assert!(status.contains("generation: 1"), "{status}");
    let seen = server.seen();
    assert!(
        !seen.iter().any(|l| l.contains("restart requested")),
        "no restart was started"
    );
    // Its accept warnings name the control socket by its path, not the temporary name it
    // was bound at.
    assert!(!seen.iter().any(|l| l.contains("/proc/self/fd")), "{seen:#?}");
}

/// Another user's server at the path (a sticky directory anyone can write): the client does
/// not take its word for the server's, and a generation that finds another user's socket at
/// its path says so.
#[test]
fn a_client_does_not_trust_another_users_socket_at_the_path() {
    let dir = sticky_dir("control-impostor", "to run a server as uid 65534");
    let socket = dir.path().join("control");
    let mut cmd = with_control(LIFEPROBE, &socket, &[]);
    cmd.uid(65534).gid(65534);
    let (_impostor, _) = start_lifeprobe(cmd);
    let out = client(&socket, "status");
    let answer = text(&out);
    assert!(!out.status.success(), "{answer}");
    assert!(answer.contains("runs as uid 65534"), "{answer}");
    assert!(answer.contains("not trusting it"), "{answer}");
    // Its own user is answered.
    let out = Command::new(LIFEPROBE)
        .arg("--control")
        .arg(&socket)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Root's server whose path was removed and taken by that user: the restart says so.
    let own = dir.path().join("own");
    let (mut server, ProbeGen { pid: gen1, .. }) = start_lifeprobe(with_control(LIFEPROBE, &own, &[]));
    let _g1 = PidGuard(gen1);
    std::fs::remove_file(&own).unwrap();
    std::fs::hard_link(&socket, &own).unwrap();
    signal(gen1, Signal::SIGUSR2);
    let gen2: u32 = field(&server.expect_line("probe version=lifeprobe generation=2"), "pid")
        .parse()
        .unwrap();
    let _g2 = PidGuard(gen2);
    server.expect_log("found=\"another user\'s socket\" owner=65534");
}

#[test]
fn the_same_path_for_the_pid_file_and_the_control_socket_is_refused_at_the_start() {
    let dir = TempDir::new("control-pidfile");
    let path = dir.path().join("both");
    let mut cmd = with_control(LIFEPROBE, &path, &[]);
    cmd.env("PROBE_PID_FILE", dir.path().join(".").join("both"));
    let mut server = ProcessGuard::spawn(cmd);
    let status = server.wait_timeout(DEADLINE).expect("it exits");
    assert!(!status.success());
    let said = server.output_after_exit().join("\n");
    assert!(said.contains("it is also the PID file's path"), "{said}");
}

/// A deploy script replaces the program and reloads while an earlier reload is still under
/// way: its reload is its own (the new program runs), not folded into the earlier one, which
/// started the old program.
#[test]
fn a_reload_asked_during_a_restart_gets_a_restart_of_its_own_with_the_program_now_in_place() {
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "control-deploy-during");
    let app = dir.path().join("app");
    grace_tests::install_program(Path::new(LIFEPROBE), &app);
    let socket = dir.path().join("control");
    // Each new generation takes a while to start: the second reload comes meanwhile.
    let cmd = with_control(&app, &socket, &[("PROBE_NEXT_START_DELAY_MS", "800")]);
    let (mut server, ProbeGen { pid: gen1, .. }) = start_lifeprobe(cmd);
    let mut guards = vec![PidGuard(gen1)];
    let first = std::thread::spawn({
        let socket = socket.clone();
        move || gracenet::control::Client::new(socket).restart()
    });
    server.expect_log("restart: started the next generation generation=1 next=2 ");
    // The deploy: a new program, then its reload.
    grace_tests::install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe2")), &app);
    let second = gracenet::control::Client::new(&socket).restart();
    let first = first.join().expect("the first client");
    let first = first.expect("the first reload");
    let gen2: u32 = first.rsplit(' ').next().unwrap().parse().unwrap();
    guards.push(PidGuard(gen2));
    assert_eq!(first, format!("generation 2 serving with pid {gen2}"));
    let second = second.expect("the second reload");
    let gen3: u32 = second.rsplit(' ').next().unwrap().parse().unwrap();
    guards.push(PidGuard(gen3));
    assert_eq!(
        second,
        format!("generation 3 serving with pid {gen3}"),
        "its own restart, after the first"
    );
    let line = server.expect_line("probe version=lifeprobe2");
    assert_eq!(
        field(&line, "pid").parse::<u32>().unwrap(),
        gen3,
        "the new program runs"
    );
}

/// Thirty reloads at once, without a standby: each is answered with success, and those
/// asked during one restart share the next instead of one restart each. (They used to fail
/// half the time: "every answer said to ask again".)
#[test]
fn concurrent_reloads_all_succeed_and_share_restarts() {
    let dir = TempDir::new("control-concurrent");
    let socket = dir.path().join("control");
    let (mut server, ProbeGen { pid: gen1, port }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
    let _g1 = PidGuard(gen1);
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || gracenet::control::Client::new(socket).restart())
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .collect();
    let mut guards = Vec::new();
    let mut generations = std::collections::BTreeSet::new();
    for answer in &answers {
        let answer = answer.as_ref().expect("every reload succeeds");
        let pid: u32 = answer.rsplit(' ').next().unwrap().parse().unwrap();
        let generation: u64 = answer.split(' ').nth(1).unwrap().parse().unwrap();
        generations.insert(generation);
        guards.push(PidGuard(pid));
    }
    assert!(
        generations.len() <= 4,
        "30 reloads shared a few restarts, not one each: {generations:?}"
    );
    let last = *generations.iter().max().unwrap();
    let serving = answer_pid(&ask(port).unwrap());
    assert!(
        server
            .seen()
            .iter()
            .any(|l| l.contains(&format!("generation={last} pid={serving}"))),
        "the last generation serves"
    );
}

#[test]
fn the_final_stop_removes_the_control_socket_path_but_not_a_socket_put_there_since() {
    let dir = TempDir::new("control-final");
    let socket = dir.path().join("control");
    let (mut server, ProbeGen { pid: gen1, .. }) = start_lifeprobe(with_control(LIFEPROBE, &socket, &[]));
    let _g1 = PidGuard(gen1);
    // A restart keeps it: the new generation answers on the same socket.
    assert!(client(&socket, "restart").status.success());
    let line = server.expect_line("probe version=lifeprobe generation=2");
    let gen2: u32 = field(&line, "pid").parse().unwrap();
    let _g2 = PidGuard(gen2);
    assert!(
        wait_until(DEADLINE, || !is_alive(gen1)),
        "generation 1 drains and goes"
    );
    assert!(socket.exists(), "a restart leaves the path to the new generation");
    assert!(text(&client(&socket, "status")).contains("generation: 2"));
    // The final stop: the path goes with the server.
    grace_tests::signal(gen2, Signal::SIGTERM);
    assert!(wait_until(DEADLINE, || !is_alive(gen2)));
    assert!(!socket.exists(), "the control socket's path outlived the server");

    // A second server's socket put at the path while the first drains is left alone.
    let socket2 = dir.path().join("control2");
    let (_server2, ProbeGen { pid: a, .. }) = start_lifeprobe(with_control(LIFEPROBE, &socket2, &[]));
    let _ga = PidGuard(a);
    // (Stopped meanwhile, so it cannot notice the path change before its stop.)
    grace_tests::signal(a, Signal::SIGSTOP);
    std::fs::remove_file(&socket2).expect("remove");
    let other = std::os::unix::net::UnixListener::bind(&socket2).expect("another socket at the path");
    grace_tests::signal(a, Signal::SIGCONT);
    grace_tests::signal(a, Signal::SIGTERM);
    assert!(wait_until(DEADLINE, || !is_alive(a)));
    assert!(
        socket2.exists(),
        "another server's socket at the path was removed"
    );
    drop(other);
}
