//! What operators do to a running server, done to lifeprobe with real processes: symlink-swap
//! deploys, a PID file whose directory goes away, a symlink planted beside the PID file, and
//! a new binary that is a wrapper script which does not `exec`; and to a cluster of
//! httpprobes, a new version that listens on one more address.

use std::path::Path;
use std::process::Command;

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, TempDir, answer_pid, ask, command, field, install_program, is_alive,
    lifeprobe, signal, start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");
const LIFEPROBE2: &str = env!("CARGO_BIN_EXE_lifeprobe2");

fn pid_of(line: &str) -> u32 {
    field(line, "pid").parse().unwrap()
}

/// `releases/1/lifeprobe` (version lifeprobe), `releases/2/lifeprobe` (version lifeprobe2),
/// and `current -> releases/1`, as a Capistrano-style deploy lays them out.
fn releases(dir: &Path) {
    for (n, program) in [(1, LIFEPROBE), (2, LIFEPROBE2)] {
        let d = dir.join(format!("releases/{n}"));
        std::fs::create_dir_all(&d).unwrap();
        install_program(Path::new(program), &d.join("lifeprobe"));
    }
    std::os::unix::fs::symlink("releases/1", dir.join("current")).unwrap();
}

/// Points `current` at `releases/N`, atomically (a new link renamed over the old one).
fn swap_current(dir: &Path, n: u32) {
    let tmp = dir.join("current.new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{n}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

/// The command that starts lifeprobe through `sh` (which keeps `$PWD` logical, as every shell
/// does) with `script`, run in `dir`.
fn via_shell(dir: &Path, script: &str) -> Command {
    let mut cmd = command("sh", &["-c", script], &[]);
    cmd.current_dir(dir).env("PWD", dir);
    cmd
}

#[test]
fn a_symlink_swap_deploy_restarts_into_what_current_points_at_now() {
    // Three ways of starting it: from inside `current`, with `current/…` as argv[0], and
    // with the old release deleted before the restart.
    let variants = [
        ("cd current && exec ./lifeprobe 127.0.0.1:0", false),
        ("exec current/lifeprobe 127.0.0.1:0", false),
        ("cd current && exec ./lifeprobe 127.0.0.1:0", true),
    ];
    for (script, delete_old) in variants {
        let dir = TempDir::new("symlink-deploy");
        releases(dir.path());
        let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(via_shell(dir.path(), script));
        assert_eq!(
            ask(port).unwrap(),
            format!("{gen1} 1 lifeprobe"),
            "{script} ran releases/1"
        );
        let _g1 = PidGuard(gen1);
        swap_current(dir.path(), 2);
        if delete_old {
            std::fs::remove_dir_all(dir.path().join("releases/1")).unwrap();
        }
        signal(gen1, Signal::SIGUSR2);
        let line = g.expect_line("probe version=");
        let _g2 = PidGuard(pid_of(&line));
        assert_eq!(
            field(&line, "version"),
            "lifeprobe2",
            "{script} (old release deleted: {delete_old}): the restart ran releases/2: {line}"
        );
        assert!(wait_until(DEADLINE, || ask(port).is_ok_and(|a| a.ends_with("lifeprobe2"))));
    }
}

#[test]
fn a_start_directory_that_is_gone_is_named_as_what_is_missing() {
    // Started from the resolved release directory (no symlink to follow), which a deploy
    // then deletes: the error names the directory, not the program.
    let dir = TempDir::new("gone-dir");
    releases(dir.path());
    let real = dir.path().join("releases/1");
    let mut cmd = lifeprobe(real.join("lifeprobe"), &[]);
    cmd.current_dir(&real).env_remove("PWD");
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(cmd);
    std::fs::remove_dir_all(&real).unwrap();
    signal(gen1, Signal::SIGUSR2);
    let failed = g.expect_log("restart failed");
    assert!(
        failed.contains("the directory this server started in") && failed.contains("releases/1"),
        "{failed}"
    );
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1, "still serving");
}

#[test]
fn a_pid_file_that_cannot_be_written_fails_the_restart_not_the_service() {
    let dir = TempDir::new("pidfile-gone");
    let piddir = dir.path().join("run");
    std::fs::create_dir_all(&piddir).unwrap();
    let pid_file = piddir.join("g.pid");
    let probe_pid_file = ("PROBE_PID_FILE", pid_file.to_str().unwrap());
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(lifeprobe(LIFEPROBE, &[probe_pid_file]));
    std::fs::remove_dir_all(&piddir).unwrap();
    let prober = grace_tests::Prober::start(port, std::time::Duration::from_millis(1));
    signal(gen1, Signal::SIGUSR2);
    let _g2 = PidGuard(pid_of(&g.expect_line("probe version=")));
    g.expect_log("restart failed");
    // The old generation keeps serving; nothing was refused meanwhile.
    assert!(wait_until(DEADLINE, || ask(port).is_ok_and(|a| answer_pid(&a) == gen1)));
    let stats = prober.stop();
    assert!(stats.failures.is_empty(), "{:?}", stats.failures);
    assert!(is_alive(gen1));
}

#[test]
fn a_symlink_planted_beside_the_pid_file_is_never_written_through() {
    let dir = TempDir::new("pidfile-symlink");
    let pid_file = dir.path().join("g.pid");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let probe_pid_file = ("PROBE_PID_FILE", pid_file.to_str().unwrap());
    let (mut g, ProbeGen { pid: gen1, .. }) = start_lifeprobe(lifeprobe(LIFEPROBE, &[probe_pid_file]));
    // The next process's pid is predictable enough to plant links for many of them, at every
    // name the old code used (`<file>.<pid>.tmp`).
    for pid in gen1 + 1..gen1 + 200 {
        let _ = std::os::unix::fs::symlink(&victim, dir.path().join(format!("g.pid.{pid}.tmp")));
    }
    signal(gen1, Signal::SIGUSR2);
    let gen2 = pid_of(&g.expect_line("probe version="));
    let _g2 = PidGuard(gen2);
    g.expect_log("stopped accepting generation=1 ");
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|s| s.trim() == gen2.to_string())));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_wrapper_that_does_not_exec_is_killed_with_everything_it_started() {
    let dir = TempDir::new("wrapper");
    let program = dir.path().join("server");
    install_program(Path::new(LIFEPROBE), &program);
    let (mut g, ProbeGen { pid: gen1, port }) =
        start_lifeprobe(lifeprobe(&program, &[("PROBE_READY_TIMEOUT_MS", "1000")]));
    // The deploy puts a wrapper in place that runs the real binary as a child (no exec).
    let real = dir.path().join("server.real");
    install_program(Path::new(LIFEPROBE), &real);
    let wrapper = dir.path().join("server.wrapper");
    std::fs::write(&wrapper, format!("#!/bin/sh\n{} \"$@\"\n", real.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&wrapper, &program).unwrap();
    signal(gen1, Signal::SIGUSR2);
    // The wrapper's child is not the process LISTEN_PID names, so (as any sd_listen_fds
    // program) it leaves the sockets alone and never reports ready to generation 1 — but it
    // holds their fds. The ready timeout rolls the restart back.
    let hanging = pid_of(&g.expect_line("probe version="));
    assert_ne!(hanging, gen1);
    let _gh = PidGuard(hanging);
    g.expect_log("restart failed");
    assert!(
        wait_until(DEADLINE, || !is_alive(hanging)),
        "the wrapper's child (pid {hanging}) is killed with it"
    );
    // Only generation 1 holds the sockets: after it stops, nothing accepts (refused, not a
    // hang in a backlog nobody serves).
    assert_eq!(answer_pid(&ask(port).unwrap()), gen1);
    signal(gen1, Signal::SIGTERM);
    assert!(g.wait_timeout(DEADLINE).is_some());
    let err = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// Kills, when dropped, every process whose environment has `PROBE_MARK=<marker>`.
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        let _guards: Vec<PidGuard> = grace_tests::pids_with_env("PROBE_MARK", &self.0)
            .into_iter()
            .map(PidGuard)
            .collect();
    }
}

/// The pid that answers `GET /pid` on a new connection to `port`.
fn pid_over_http(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    s.write_all(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.lines().last()?.trim().parse().ok()
}

#[test]
fn a_cluster_whose_new_version_listens_on_one_more_address_rolls_out_and_survives_a_crash() {
    // The new version (a script setting PROBE_EXTRA) serves one more address: the first
    // worker to restart binds it, the second must join it. Bound alone, it was "address in
    // use" for every later worker, and crash replacements failed until the cluster gave up.
    let dir = TempDir::new("cluster-new-address");
    let app = dir.path().join("app");
    install_program(Path::new(env!("CARGO_BIN_EXE_httpprobe")), &app);
    let control = dir.path().join("control");
    let marker = grace_tests::unique_marker();
    let _workers = KillMarked(marker.clone());
    let control_env = control.to_string_lossy().into_owned();
    let cmd = command(
        &app,
        &[],
        &[
            ("PROBE_WORKERS", "2"),
            ("PROBE_CONTROL", &control_env),
            ("PROBE_MARK", &marker),
        ],
    );
    let mut primary = grace_tests::ProcessGuard::spawn(cmd);
    primary.expect_log("Worker 0 serving ");
    let client = gracenet::control::Client::new(&control);
    let serving = || grace_tests::serving_workers(&client);
    let before = grace_tests::wait_for_serving_workers(&client, 2);
    let new_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let staged = dir.path().join("staged");
    std::fs::write(
        &staged,
        format!(
            "#!/bin/sh\nPROBE_EXTRA=127.0.0.1:{new_port} exec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_httpprobe")
        ),
    )
    .expect("write");
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::rename(&staged, &app).expect("deploy");
    let answer = client.restart();
    assert!(answer.is_ok(), "the rollout: {answer:?}");
    let after = serving();
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
    let answering =
        || -> std::collections::BTreeSet<u32> { (0..24).filter_map(|_| pid_over_http(new_port)).collect() };
    assert_eq!(
        answering(),
        after.iter().copied().collect(),
        "both workers serve the new address"
    );
    // A crashed worker's replacement binds the new address too (joining it).
    signal(after[1], Signal::SIGKILL);
    assert!(
        wait_until(DEADLINE, || {
            let now = serving();
            now.len() == 2 && !now.contains(&after[1])
        }),
        "the crashed worker was not replaced: {:?}",
        client.status()
    );
    assert_eq!(answering().len(), 2, "{:?}", client.status());
    primary.kill_and_wait();
}
