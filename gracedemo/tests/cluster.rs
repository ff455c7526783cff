//! `gracedemo --workers N`: N worker processes on the same sockets under one primary, driven
//! as an operator would (signals, the control socket, `kill -9`, `SIGSTOP`), with real load.

use std::process::Command;
use std::time::{Duration, Instant};

use grace_tests::load::{LoadConfig, run_load_until};
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, pids_with_env, unique_marker, wait_until};
use nix::sys::signal::Signal;

const MARK: &str = "GRACEDEMO_CLUSTER_TEST";

/// A cluster under test: the primary, and every process marked as this cluster's killed and
/// reaped when dropped, even when the test fails.
struct TestCluster {
    primary: ProcessGuard,
    marker: String,
    port: u16,
    control: std::path::PathBuf,
    _dir: TempDir,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The primary first: alive, it would replace the workers killed below.
        self.primary.kill_and_wait();
        let _guards: Vec<PidGuard> = pids_with_env(MARK, &self.marker)
            .into_iter()
            .filter(|&p| p != self.primary.pid())
            .map(PidGuard)
            .collect();
    }
}

/// One worker's line of `status`.
#[derive(Debug, Clone, PartialEq)]
struct WorkerLine {
    slot: usize,
    pid: Option<u32>,
    serving: bool,
}

/// How a test starts its cluster.
struct Launch<'a> {
    program: std::path::PathBuf,
    workers: &'a str,
    extra: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    fd_limit: Option<u64>,
    /// Pinned to one core (every process of the cluster).
    one_core: bool,
}

impl<'a> Launch<'a> {
    fn new(workers: &'a str) -> Self {
        Launch {
            program: env!("CARGO_BIN_EXE_gracedemo").into(),
            workers,
            extra: &[],
            env: &[],
            fd_limit: None,
            one_core: false,
        }
    }

    fn extra(self, extra: &'a [&'a str]) -> Self {
        Launch { extra, ..self }
    }

    fn env(self, env: &'a [(&'a str, &'a str)]) -> Self {
        Launch { env, ..self }
    }
}

/// gracedemo installed at a path of its own, so a test can deploy another program there as a
/// deploy would (by rename), and put it back.
struct App {
    dir: TempDir,
    path: std::path::PathBuf,
}

impl App {
    fn install() -> App {
        let dir = TempDir::new("cluster-bin");
        let path = dir.path().join("app");
        let app = App { dir, path };
        app.restore();
        app
    }

    /// Deploys a shell script in gracedemo's place.
    fn deploy_script(&self, script: &str) {
        let staged = self.dir.path().join("staged");
        std::fs::write(&staged, script).expect("write");
        std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        std::fs::rename(&staged, &self.path).expect("deploy");
    }

    /// The wrapper's `$STATE` directory ([`App::wrap`]).
    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Deploys gracedemo behind a bash wrapper: `prologue` runs first in every process of
    /// the cluster started from the app's path (the primary, and each worker: `$GRACE_WORKER`
    /// names its slot), with `$STATE` a directory of the test's (`mkdir "$STATE/x"` succeeds
    /// once: a count of starts); then gracedemo runs, under the app's path as its name (the
    /// primary starts its workers from there).
    fn wrap(&self, prologue: &str) {
        let state = self.state();
        std::fs::create_dir_all(&state).expect("mkdir state");
        self.deploy_script(&format!(
            "#!/bin/bash\nSTATE='{}'\n{prologue}\nexec -a \"$0\" '{}' \"$@\"\n",
            state.display(),
            env!("CARGO_BIN_EXE_gracedemo")
        ));
    }

    /// Deploys gracedemo again.
    fn restore(&self) {
        grace_tests::install_program(std::path::Path::new(env!("CARGO_BIN_EXE_gracedemo")), &self.path);
    }
}

impl TestCluster {
    fn start(workers: &str, extra: &[&str]) -> TestCluster {
        Self::launch(&Launch::new(workers).extra(extra))
    }

    fn start_with_env(workers: &str, extra: &[&str], env: &[(&str, &str)]) -> TestCluster {
        Self::launch(&Launch::new(workers).extra(extra).env(env))
    }

    /// Starts the cluster `launch` describes and waits until every worker serves.
    fn launch(launch: &Launch<'_>) -> TestCluster {
        let mut cluster = Self::spawn(launch);
        let line = cluster.primary.expect_log("Worker 0 serving ");
        cluster.port = grace_tests::ports_in_grace_line(&line)[0];
        let n: usize = launch.workers.parse().expect("a number of workers");
        assert!(
            wait_until(DEADLINE, || {
                let w = cluster.workers();
                w.len() == n && w.iter().all(|w| w.serving)
            }),
            "the {n} workers never all served: {}",
            cluster.status()
        );
        cluster
    }

    /// Starts the cluster `launch` describes, and waits for nothing (its port is not known
    /// yet: 0).
    fn spawn(launch: &Launch<'_>) -> TestCluster {
        let dir = TempDir::new("cluster");
        let control = dir.path().join("control");
        let marker = unique_marker();
        let mut cmd = Command::new(&launch.program);
        cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
            .args(["--workers", launch.workers])
            .arg("--control-socket")
            .arg(&control)
            .args(launch.extra)
            .envs(launch.env.iter().copied())
            .env(MARK, &marker);
        if let Some(limit) = launch.fd_limit {
            // SAFETY: setrlimit is async-signal-safe; run in the child before exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        if launch.one_core {
            pin_to_one_core(&mut cmd);
        }
        TestCluster {
            primary: ProcessGuard::spawn(cmd),
            marker,
            port: 0,
            control,
            _dir: dir,
        }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_gracedemo"))
            .arg("--control-socket")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("run gracedemo as a control client")
    }

    fn status(&self) -> String {
        String::from_utf8_lossy(&self.ctl(&["--status"]).stdout).into_owned()
    }

    fn workers(&self) -> Vec<WorkerLine> {
        self.status()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("worker ")?;
                let (slot, rest) = rest.split_once(": ")?;
                let pid = rest
                    .strip_prefix("pid ")
                    .and_then(|r| r.split(',').next())
                    .and_then(|p| p.parse().ok());
                Some(WorkerLine {
                    slot: slot.parse().ok()?,
                    pid,
                    serving: rest.contains(", serving,"),
                })
            })
            .collect()
    }

    /// Whether `n` workers serve, `gone` not among them.
    fn replaced(&self, n: usize, gone: u32) -> bool {
        let w = self.workers();
        w.len() == n && w.iter().all(|w| w.serving && w.pid != Some(gone))
    }

    fn pids(&self) -> Vec<u32> {
        self.workers().iter().filter_map(|w| w.pid).collect()
    }

    /// Every process of this cluster but the primary.
    fn others(&self) -> Vec<u32> {
        pids_with_env(MARK, &self.marker)
            .into_iter()
            .filter(|&p| p != self.primary.pid())
            .collect()
    }

    fn load(&self, keep_alive: bool, duration: Duration) -> LoadConfig {
        LoadConfig {
            port: self.port,
            path: "/sleep/?duration=0s".into(),
            connections: 4,
            http2: false,
            keep_alive,
            duration,
            max_requests: 200_000,
        }
    }
}

/// The `NOTIFY_SOCKET` a worker was started with (its primary's notify socket).
fn notify_socket_of(pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("a worker's environment");
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("NOTIFY_SOCKET set for the workers")
}

/// Whether one request on a new connection is answered `200`.
fn http_ok(port: u16) -> bool {
    http_ok_within(port, DEADLINE)
}

/// Whether one request on a new connection is answered `200` within `timeout`.
fn http_ok_within(port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.write_all(b"GET /sleep/?duration=0s HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// The pids that answered `n` requests, each on a new connection.
async fn answering_pids(port: u16, n: usize) -> std::collections::BTreeMap<u32, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        if let Some(pid) = grace_tests::load::who_answers(port, "/sleep/?duration=0s").await {
            *seen.entry(pid).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_the_same_sockets_and_status_lists_each() {
    let mut c = tokio::task::block_in_place(|| TestCluster::start("2", &[]));
    // A worker is no generation of a lone supervisor: nothing of its own is "ignored".
    let seen = c.primary.seen().join("\n");
    assert!(!seen.contains("is ignored"), "{seen}");
    let workers = tokio::task::block_in_place(|| c.workers());
    assert_eq!(workers.iter().map(|w| w.slot).collect::<Vec<_>>(), vec![0, 1]);
    let pids = c.pids();
    assert_eq!(pids.len(), 2, "{workers:?}");
    assert_ne!(pids[0], pids[1]);
    let status = tokio::task::block_in_place(|| c.status());
    assert!(
        status.contains(&format!("primary: pid {}", c.primary.pid())),
        "{status}"
    );
    // Both workers accept on the one socket: connections reach each.
    let seen = answering_pids(c.port, 200).await;
    assert_eq!(
        seen.values().sum::<usize>(),
        200,
        "every request answered: {seen:?}"
    );
    for pid in &pids {
        assert!(
            seen.contains_key(pid),
            "worker pid {pid} answered none of 200 connections: {seen:?}"
        );
    }
    assert!(
        seen.keys().all(|p| pids.contains(p)),
        "only workers answer: {seen:?}"
    );
    // The workers report to a socket only this user can reach: a path in a private directory,
    // not an abstract name anyone on the host could flood.
    let notify = notify_socket_of(pids[0]);
    assert!(notify.starts_with('/'), "an abstract notify socket: {notify}");
    let dir = std::path::Path::new(&notify).parent().expect("its directory");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_replaces_every_worker_and_fails_no_request() {
    let c = tokio::task::block_in_place(|| TestCluster::start("2", &[]));
    let before = c.pids();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads = [true, false].map(|keep_alive| {
        tokio::spawn(run_load_until(
            c.load(keep_alive, Duration::from_secs(30)),
            stop.clone(),
        ))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::task::block_in_place(|| c.ctl(&["--reload"]));
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "--reload: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for load in loads {
        let load = load.await.expect("load task");
        load.assert_enough_and_none_failed(50, "a load across the rolling restart");
    }
    let after = c.pids();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every worker replaced: {before:?} -> {after:?}"
    );
    for pid in &after {
        assert!(
            answer.contains(&pid.to_string()),
            "the answer names the new pids: {answer}"
        );
    }
    // The old workers drain and exit.
    assert!(
        wait_until(DEADLINE, || before.iter().all(|&p| !grace_tests::is_alive(p))),
        "old workers still running: {before:?}"
    );
}

#[test]
fn a_surge_of_two_restarts_two_workers_at_once_and_never_more() {
    let c = TestCluster::start("4", &["--surge", "2"]);
    let before = c.pids();
    let done = std::sync::atomic::AtomicBool::new(false);
    let control = c.control.clone();
    let (out, most) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            for _ in 0..2000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(status) = Command::new(env!("CARGO_BIN_EXE_gracedemo"))
                    .arg("--control-socket")
                    .arg(&control)
                    .arg("--status")
                    .output()
                else {
                    continue;
                };
                let status = String::from_utf8_lossy(&status.stdout).into_owned();
                let restarting = status.lines().filter(|l| l.contains(", restarting,")).count();
                most = most.max(restarting);
            }
            most
        });
        let out = c.ctl(&["--reload"]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, watcher.join().expect("the status watcher"))
    });
    assert!(
        out.status.success(),
        "--reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = c.pids();
    assert_eq!(after.len(), 4);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        most, 2,
        "at most two workers restarting at once, and two seen together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_refuses_nothing() {
    let c = tokio::task::block_in_place(|| TestCluster::start("2", &[]));
    let victim = c.pids()[0];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(run_load_until(
        c.load(false, Duration::from_secs(30)),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    grace_tests::signal(victim, Signal::SIGKILL);
    let replaced = tokio::task::block_in_place(|| wait_until(DEADLINE, || c.replaced(2, victim)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let load = load.await.expect("load task");
    assert!(replaced, "the killed worker was not replaced: {}", c.status());
    assert!(load.requests > 50, "too little load: {}", load.requests);
    assert_eq!(
        load.failures.refused, 0,
        "refused: {:?} {:?}",
        load.failures, load.examples
    );
    // At most the killed worker's requests in flight (one per client connection).
    assert!(
        load.failures.total() <= 4,
        "more failed than the killed worker had in flight: {:?} {:?}",
        load.failures,
        load.examples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_replaced_after_the_worker_timeout() {
    let c = tokio::task::block_in_place(|| TestCluster::start("2", &["--worker-timeout", "1s"]));
    let [hung, other] = c.pids()[..] else {
        panic!("two workers expected: {}", c.status())
    };
    let _unstop = PidGuard(hung);
    let stopped_at = Instant::now();
    grace_tests::signal(hung, Signal::SIGSTOP);
    let replaced = tokio::task::block_in_place(|| {
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 2 && w[0].serving && w[0].pid.is_some_and(|p| p != hung)
        })
    });
    let took = stopped_at.elapsed();
    assert!(replaced, "the stopped worker was not replaced: {}", c.status());
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(hung)),
        "the stopped worker was not killed"
    );
    assert_eq!(c.pids()[1], other, "the other worker was left alone");
    // The watchdog's bound, generously: timeout (1 s) + a heartbeat + the kill grace + a start.
    assert!(took < Duration::from_secs(10), "replaced only after {took:?}");
    eprintln!("a SIGSTOPped worker was replaced {took:?} after it stopped (worker timeout 1 s)");
    // The cluster still answers.
    let seen = answering_pids(c.port, 20).await;
    assert_eq!(seen.values().sum::<usize>(), 20, "{seen:?}");
}

#[test]
fn scale_adds_and_drains_workers() {
    let c = TestCluster::start("1", &[]);
    let out = c.ctl(&["--scale", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 3 && w.iter().all(|w| w.serving)
        }),
        "not 3 serving workers: {}",
        c.status()
    );
    let three = c.pids();
    // SIGTTOU takes one away; --scale 1 another.
    c.primary.signal(Signal::SIGTTOU);
    assert!(wait_until(DEADLINE, || c.workers().len() == 2), "{}", c.status());
    let out = c.ctl(&["--scale", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(DEADLINE, || c.workers().len() == 1), "{}", c.status());
    assert_eq!(c.pids(), vec![three[0]], "the first worker stays");
    assert!(
        wait_until(DEADLINE, || three[1..].iter().all(|&p| !grace_tests::is_alive(p))),
        "the workers scaled away did not exit"
    );
    // A bad count is refused with the reason.
    let out = c.ctl(&["--scale", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--scale"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_broken_new_binary_stops_the_rollout_and_reload_says_why() {
    let app = App::install();
    let c = TestCluster::launch(&Launch {
        program: app.path.clone(),
        ..Launch::new("2")
    });
    let before = c.pids();
    // The deploy ships a binary that cannot start.
    app.deploy_script("#!/bin/sh\necho 'broken build' >&2\nexit 3\n");
    let out = c.ctl(&["--reload"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "--reload succeeded with a broken binary: {said}"
    );
    assert!(
        said.contains("worker 0") && said.contains("still serving"),
        "{said}"
    );
    // The rollout stopped at the first worker: both old workers serve.
    assert_eq!(c.pids(), before, "{}", c.status());
    assert!(c.workers().iter().all(|w| w.serving), "{}", c.status());
    assert!(http_ok(c.port), "the old workers answer");
    // A fixed deploy rolls out.
    app.restore();
    let out = c.ctl(&["--reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.pids().iter().all(|p| !before.contains(p)), "{}", c.status());
}

#[test]
fn sigterm_drains_every_worker_and_leaves_no_process() {
    let mut c = TestCluster::start("2", &[]);
    let pids = c.pids();
    let notify = notify_socket_of(pids[0]);
    c.primary.signal(Signal::SIGTERM);
    let status = c
        .primary
        .wait_timeout(DEADLINE)
        .expect("the primary exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        pids.iter().all(|&p| !grace_tests::is_alive(p)),
        "workers left: {pids:?}"
    );
    assert!(c.others().is_empty(), "processes left: {:?}", c.others());
    assert!(
        !c.control.exists(),
        "the control socket file is removed at the end"
    );
    let notify_dir = std::path::Path::new(&notify)
        .parent()
        .map(std::path::Path::to_path_buf);
    assert!(
        notify_dir.is_some_and(|d| !d.exists()),
        "the notify socket's directory is removed at the end: {notify}"
    );
}

/// One keep-alive request on `stream`; the pid that answered.
fn pid_on(stream: &mut std::net::TcpStream) -> Option<u32> {
    ask_pid(stream)?;
    answering_pid(stream)
}

/// Sends [`pid_on`]'s request.
fn ask_pid(stream: &mut impl std::io::Write) -> Option<()> {
    std::io::Write::write_all(stream, b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: test\r\n\r\n").ok()
}

/// The pid in the answer to [`ask_pid`]'s request.
fn answering_pid(stream: &mut impl std::io::Read) -> Option<u32> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    for _ in 0..64 {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    grace_tests::load::pid_of(&String::from_utf8_lossy(&body))
}

/// Opens `n` connections to `port` at once (they wait in the accept queue together), then
/// asks each which pid serves it: how many each pid took.
fn burst_by_pid(port: u16, n: usize) -> std::collections::BTreeMap<u32, usize> {
    let mut streams: Vec<std::net::TcpStream> = (0..n)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let mut by_pid = std::collections::BTreeMap::new();
    for s in &mut streams {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        *by_pid.entry(pid_on(s).expect("an answer")).or_insert(0usize) += 1;
    }
    by_pid
}

#[test]
fn a_burst_of_keep_alive_connections_is_shared_by_the_workers() {
    let c = TestCluster::start("2", &[]);
    let pids = c.pids();
    // 64 connections at once: they wait in the accept queue together.
    let by_pid = burst_by_pid(c.port, 64);
    assert_eq!(by_pid.values().sum::<usize>(), 64);
    // Without the balance one worker took 63 or 64 of them (the busiest wins every race);
    // with the kernel's random choice of listener alone, 40–60 % in most runs, not all (35/65
    // seen); a worker holding 4 more than the other passes new ones on: 30–34 each here
    // alone. On a host loaded by the rest of the suite the other worker may not have run to
    // empty its inbox during the burst, and a connection it has no room for is served where
    // it was accepted (39/25 seen once).
    for pid in &pids {
        let share = by_pid.get(pid).copied().unwrap_or(0);
        assert!(
            (24..=40).contains(&share),
            "worker pid {pid} took {share} of 64 keep-alive connections: {by_pid:?}"
        );
    }
    eprintln!("64 keep-alive connections over 2 workers: {by_pid:?}");
}

#[test]
fn a_small_pool_of_keep_alive_connections_on_a_shared_socket_is_shared_by_the_workers() {
    // A Unix socket cannot have a listener per worker: both accept from one queue, and the
    // one that runs first would take all 8 (a proxy's small pool of upstream connections).
    let dir = TempDir::new("cluster-shared-pool");
    let path = dir.path().join("app.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
    cmd.arg("-a0")
        .arg(format!("unix:{}", path.display()))
        .args([
            "-a1",
            "127.0.0.1:0",
            "-a2",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--control-socket",
        ])
        .arg(dir.path().join("control"));
    let _sweep = grace_tests::Sweep::new(&mut cmd);
    let mut primary = ProcessGuard::spawn(cmd);
    primary.expect_log("Worker 0 serving ");
    primary.expect_log("Worker 1 serving ");
    let mut streams: Vec<std::os::unix::net::UnixStream> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).expect("connect"))
        .collect();
    let mut by_pid = std::collections::BTreeMap::new();
    for s in &mut streams {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        ask_pid(s).expect("a request");
        let pid = answering_pid(s).expect("an answer");
        *by_pid.entry(pid).or_insert(0usize) += 1;
    }
    assert_eq!(
        by_pid.len(),
        2,
        "both workers hold some of the 8 connections: {by_pid:?}"
    );
    assert!(by_pid.values().all(|&n| (2..=6).contains(&n)), "{by_pid:?}");
    eprintln!("8 keep-alive connections on one Unix socket over 2 workers: {by_pid:?}");
}

/// Opens `n` keep-alive connections to `port`, one request on each: the connections and the
/// pid that answered on each.
fn keep_alive_connections(port: u16, n: usize) -> Vec<(std::net::TcpStream, u32)> {
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let pid = pid_on(&mut s).expect("an answer");
            (s, pid)
        })
        .collect()
}

#[test]
fn new_connections_go_to_the_worker_that_lost_its_own() {
    // Long-lived connections leave one worker: the kernel's choice of listener alone would
    // give it half of the new ones (16 of 32), and it would keep a quarter of the load for as
    // long as they live; passing each new connection on from the heavier worker refills it.
    let c = TestCluster::start("2", &[]);
    let pids = c.pids();
    assert_eq!(pids.len(), 2, "{}", c.status());
    let mut held = keep_alive_connections(c.port, 64);
    let (a, b) = (pids[0], pids[1]);
    let of = |held: &[(std::net::TcpStream, u32)], pid| held.iter().filter(|(_, p)| *p == pid).count();
    assert!(
        of(&held, a) > 0 && of(&held, b) > 0,
        "both serve: {:?}",
        held.iter().map(|h| h.1).collect::<Vec<_>>()
    );
    // A's connections end: each closed by the client, and by A once it read the end (the
    // client sees A's end of it). Reopened at once: no heartbeat in between.
    let (closing, kept): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, pid)| *pid == a);
    held = kept;
    for (mut s, _) in closing {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    }
    let b_holds = held.len();
    held.extend(keep_alive_connections(c.port, 64 - b_holds));
    let (at_a, at_b) = (of(&held, a), of(&held, b));
    assert_eq!(at_a + at_b, 64);
    for (pid, n) in [(a, at_a), (b, at_b)] {
        assert!(
            (26..=38).contains(&n),
            "worker pid {pid} holds {n} of 64 keep-alive connections (A {at_a}, B {at_b}, B held {b_holds} before)"
        );
    }
    eprintln!("refilled: A {at_a}, B {at_b} of 64 (B held {b_holds})");
}

#[test]
fn connections_passed_to_a_worker_that_hangs_are_served_by_the_others() {
    // The watchdog kills B after 1 s: the connections passed to it while it was stopped would
    // die with it, unless the primary takes them to A first.
    passed_connections_outlive_a_stopped_worker(&["--worker-timeout", "1s"], |_| {});
}

#[test]
fn connections_passed_to_a_worker_that_is_killed_are_served_by_the_others() {
    // The watchdog is off; B, stopped with connections waiting in its inbox, is killed: they
    // would die with its inbox, unless the primary, holding a copy of it, takes them to A.
    passed_connections_outlive_a_stopped_worker(&["--worker-timeout", "0"], |hung| {
        grace_tests::signal(hung, Signal::SIGKILL);
    });
}

/// Worker B stops; before its silence is noticed, A (holding more connections) passes new
/// ones to B's inbox; then `end(B)`, and B dies: every one of those is answered, by A or by
/// B's replacement.
fn passed_connections_outlive_a_stopped_worker(extra: &[&str], end: impl FnOnce(u32)) {
    let c = TestCluster::start("2", extra);
    let [_, hung] = c.pids()[..] else {
        panic!("two workers expected: {}", c.status())
    };
    let mut held = keep_alive_connections(c.port, 32);
    let _unstop = PidGuard(hung);
    grace_tests::signal(hung, Signal::SIGSTOP);
    // Stopped, not just signalled: what B took before it stopped is B's in-flight work.
    assert!(
        wait_until(DEADLINE, || grace_tests::is_stopped(hung)),
        "worker {hung} did not stop"
    );
    // At once (B's entry in the load table stays fresh for 300 ms): 24 new connections, no
    // request yet. Those the kernel queues at B's own listener wait for B's replacement; those
    // A accepts it passes to B while it holds 4 more.
    let mut fresh: Vec<std::net::TcpStream> = (0..24)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect"))
        .collect();
    end(hung);
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(hung)),
        "the stopped worker was not killed: {}",
        c.status()
    );
    let mut answered = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for (i, s) in fresh.iter_mut().enumerate() {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        match pid_on(s) {
            Some(pid) => *answered.entry(pid).or_insert(0usize) += 1,
            None => failed.push(i),
        }
    }
    let mut c = c;
    assert!(
        failed.is_empty(),
        "connections opened as worker pid {hung} stopped were lost: {failed:?}; answered: {answered:?}\n{}",
        c.primary.seen().join("\n")
    );
    assert!(!answered.contains_key(&hung));
    held.retain(|(_, pid)| *pid != hung);
    eprintln!("24 connections opened as a worker stopped, then died: all answered, by {answered:?}");
}

#[test]
fn a_burst_refills_at_once_the_worker_whose_connections_just_closed() {
    // Four workers; the busiest one's connections close and as many open again at once. The
    // load table said the worker still had them until its next stamp (100 ms), so the others
    // passed nothing to it: it ended with 3-6 of 64 (found from outside).
    let c = TestCluster::start("4", &[]);
    let mut held = keep_alive_connections(c.port, 64);
    let mut by_pid = std::collections::BTreeMap::<u32, usize>::new();
    for (_, pid) in &held {
        *by_pid.entry(*pid).or_default() += 1;
    }
    let (&a, &had) = by_pid.iter().max_by_key(|(_, n)| **n).expect("workers");
    let (closing, kept): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, pid)| *pid == a);
    held = kept;
    for (mut s, _) in closing {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    }
    // All connected before any request: a burst.
    let mut burst: Vec<std::net::TcpStream> = (0..had)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect"))
        .collect();
    let mut at_a = 0;
    for s in &mut burst {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        if pid_on(s) == Some(a) {
            at_a += 1;
        }
    }
    let others: Vec<usize> = by_pid.iter().filter(|(p, _)| **p != a).map(|(_, n)| *n).collect();
    assert!(
        at_a * 5 >= had * 3,
        "worker {a} had {had}, lost them, and took {at_a} of {had} new ones (the others held {others:?})"
    );
    eprintln!("refilled at once: {at_a} of {had} (the others held {others:?})");
    drop(held);
}

#[test]
fn connections_reach_the_other_worker_when_one_cannot_accept() {
    // One worker's fd limit is lowered to what it holds and a few more: it soon cannot accept.
    // New connections are steered away from it once its heartbeat says so, and what waits at
    // its listener is passed by the primary to the other worker (74 of 100 hung for good).
    let c = TestCluster::start("2", &[]);
    let [full, other] = c.pids()[..] else {
        panic!("{}", c.status())
    };
    limit_fds_to_what_it_holds_and(full, 4);
    let held = keep_alive_connections(c.port, 100);
    let at_other = held.iter().filter(|(_, p)| *p == other).count();
    assert!(
        at_other >= 90,
        "the other worker answered {at_other} of 100: {}",
        c.status()
    );
    eprintln!("100 keep-alive connections, one worker at its fd limit: {at_other} answered by the other");
}

/// The inbox of worker `pid` for the listener on `port` (`cluster::transfer`): a Unix datagram
/// socket in its primary's private directory, named `<pid>-<port>-<hash of the address>`.
fn inbox_of(pid: u32, port: u16) -> std::path::PathBuf {
    let notify = notify_socket_of(pid);
    let dir = std::path::Path::new(&notify)
        .parent()
        .expect("the primary's directory");
    let prefix = format!("{pid}-{port}-");
    let mut found = None;
    assert!(
        wait_until(DEADLINE, || {
            found = std::fs::read_dir(dir)
                .expect("the primary's directory")
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                });
            found.is_some()
        }),
        "worker {pid} has no inbox for port {port} in {}",
        dir.display()
    );
    found.expect("found")
}

/// Sends `connection` to the inbox at `path` as a worker passes one (one byte, the fd
/// attached), without waiting.
fn pass_to_inbox(path: &std::path::Path, connection: &impl std::os::fd::AsRawFd) -> nix::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let sender = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    let fds = [connection.as_raw_fd()];
    sendmsg(
        std::os::fd::AsRawFd::as_raw_fd(&sender),
        &[std::io::IoSlice::new(b"C")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT,
        Some(&UnixAddr::new(path)?),
    )
}

#[test]
fn connections_waiting_for_a_killed_worker_that_no_other_has_room_for_go_to_its_replacement() {
    // Two workers, both stopped; A's inbox is full. Connections wait in B's inbox (passed as
    // a worker passes them); B is killed: the primary takes them but A has no room. They
    // must wait in the primary for B's replacement, not be closed.
    let c = TestCluster::start("2", &["--worker-timeout", "0"]);
    let [a, b] = c.pids()[..] else {
        panic!("two workers expected: {}", c.status())
    };
    let (a_inbox, b_inbox) = (inbox_of(a, c.port), inbox_of(b, c.port));
    let _resume = Resume(a);
    for pid in [a, b] {
        grace_tests::signal(pid, Signal::SIGSTOP);
        assert!(
            wait_until(DEADLINE, || grace_tests::is_stopped(pid)),
            "worker {pid} did not stop"
        );
    }
    // A's inbox filled with datagrams that carry no connection (its worker drops them).
    let filler = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("nonblocking");
    let full = (0..100_000).any(|_| {
        filler
            .send_to(b"x", &a_inbox)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
    });
    assert!(full, "worker {a}'s inbox never filled");
    // Five connections to this test's own listener, each server side passed to B's inbox:
    // whoever serves one answers its client here with its pid.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"));
        let (server_side, _) = listener.accept().expect("accept");
        pass_to_inbox(&b_inbox, &server_side).expect("passed to B's inbox");
    }
    grace_tests::signal(b, Signal::SIGKILL);
    let asked: Vec<bool> = clients.iter_mut().map(|s| ask_pid(s).is_some()).collect();
    let mut answered = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    let until = Instant::now() + DEADLINE;
    for (i, s) in clients.iter_mut().enumerate() {
        let left = until.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(100))))
            .expect("timeout");
        match answering_pid(s).filter(|_| asked[i]) {
            Some(pid) => *answered.entry(pid).or_insert(0usize) += 1,
            None => failed.push(i),
        }
    }
    let mut c = c;
    assert!(
        failed.is_empty(),
        "connections waiting for worker {b} when it was killed were lost: {failed:?}; answered: {answered:?}\n{}\n{}",
        c.status(),
        c.primary.seen().join("\n")
    );
    assert!(
        !answered.contains_key(&a) && !answered.contains_key(&b),
        "{answered:?}"
    );
    eprintln!(
        "5 connections waiting for a killed worker, the other one's inbox full: all answered, by {answered:?}"
    );
}

/// Lowers process `pid`'s open files limit to what it holds and `more`.
fn limit_fds_to_what_it_holds_and(pid: u32, more: u64) {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("its fds")
        .count() as u64;
    let limit = nix::libc::rlimit {
        rlim_cur: open + more,
        rlim_max: open + more,
    };
    // SAFETY: prlimit with a valid pid, resource and limit; the old limit is not asked for.
    let set = unsafe {
        nix::libc::prlimit(
            pid as nix::libc::pid_t,
            nix::libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn connections_taken_from_a_worker_that_cannot_accept_wait_while_the_other_has_no_room() {
    // One worker cannot accept (out of fds); the other is stopped, so its inbox fills (10
    // datagrams by default). What the primary takes from the first one's listener and cannot
    // pass on must wait in the primary until the other resumes, not be closed (the client saw
    // the connection end), and the primary must keep answering meanwhile.
    let mut c = TestCluster::start("2", &["--worker-timeout", "0"]);
    let [full, other] = c.pids()[..] else {
        panic!("{}", c.status())
    };
    let _resume = Resume::stop(other);
    limit_fds_to_what_it_holds_and(full, 4);
    // Connected, no request yet: about half wait at each worker's listener.
    let mut fresh: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect"))
        .collect();
    // The primary found the other's inbox full.
    let full_inbox = |l: &String| {
        l.contains("no other worker has room for a connection")
            || l.contains("found no other worker to take it")
    };
    assert!(
        wait_until(DEADLINE, || c.primary.seen().iter().any(full_inbox)),
        "the primary never found the other worker's inbox full: {}\n{}",
        c.status(),
        c.primary.seen().join("\n")
    );
    assert!(
        c.status().contains("worker 1"),
        "the primary answers while it holds connections"
    );
    grace_tests::signal(other, Signal::SIGCONT);
    // Every request sent first: none waits for another's answer (past the workers' header
    // read timeout).
    let asked: Vec<bool> = fresh.iter_mut().map(|s| ask_pid(s).is_some()).collect();
    let mut answered = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    // One deadline for every answer.
    let until = Instant::now() + DEADLINE;
    for (i, s) in fresh.iter_mut().enumerate() {
        let left = until.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(100))))
            .expect("timeout");
        match answering_pid(s).filter(|_| asked[i]) {
            Some(pid) => *answered.entry(pid).or_insert(0usize) += 1,
            None => failed.push(i),
        }
    }
    assert!(
        failed.is_empty(),
        "connections lost: {failed:?}; answered: {answered:?}\n{}",
        c.primary.seen().join("\n")
    );
    eprintln!(
        "60 connections, one worker out of fds, the other stopped then resumed: all answered, by {answered:?}"
    );
}

/// Sends `SIGCONT` to a process when dropped, so a test that stops one never leaves it stopped.
struct Resume(u32);

impl Resume {
    /// Stops `pid` (`SIGSTOP`) and waits until it is; the guard resumes it.
    fn stop(pid: u32) -> Resume {
        let resume = Resume(pid);
        grace_tests::signal(pid, Signal::SIGSTOP);
        assert!(
            wait_until(DEADLINE, || grace_tests::is_stopped(pid)),
            "{pid} did not stop"
        );
        resume
    }
}

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_gets_no_new_connection_and_what_waits_for_it_goes_to_the_others() {
    // The watchdog is off: without more, the kernel would go on placing about half of the new
    // connections in the stopped worker's own queue, where they would wait for ever (with the
    // watchdog on, for its timeout: 30 s by default).
    let mut c = tokio::task::block_in_place(|| {
        TestCluster::launch(
            &Launch::new("2")
                .extra(&["--worker-timeout", "0"])
                .env(&[("RUST_LOG", "warn,gracenet=info")]),
        )
    });
    let [running, stopped] = c.pids()[..] else {
        panic!("two workers expected: {}", c.status())
    };
    // Stopped before the first connection (one it accepted would wait for it).
    let _resume = Resume::stop(stopped);
    // Connections made at once land in its queue too, until the primary sees it silent:
    // those are taken to the other worker.
    let answered = tokio::task::block_in_place(|| {
        (0..40)
            .take_while(|_| http_ok_within(c.port, Duration::from_secs(10)))
            .count()
    });
    assert_eq!(
        answered,
        40,
        "a new connection waited for the stopped worker: {}",
        c.status()
    );
    let line = tokio::task::block_in_place(|| {
        c.primary
            .expect_log("cluster: a worker's runtime has not run for 300 ms")
    });
    assert!(line.contains(&format!("pid={stopped}")), "{line}");
    let status = tokio::task::block_in_place(|| c.status());
    assert!(
        status.contains(&format!(
            "pid {stopped}, generation 1, serving (silent: its runtime does not run)"
        )),
        "{status}"
    );
    // Every new connection goes to the running worker now.
    let seen = answering_pids(c.port, 20).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![running],
        "{seen:?}"
    );
    // Running again, it is told apart from a silent one again.
    grace_tests::signal(stopped, Signal::SIGCONT);
    tokio::task::block_in_place(|| c.primary.expect_log("cluster: a silent worker runs again"));
}

#[test]
fn a_second_sigterm_ends_a_stop_that_a_stopped_worker_holds() {
    let mut c = TestCluster::start("2", &[]);
    let pids = c.pids();
    let _resume = Resume(pids[0]);
    grace_tests::signal(pids[0], Signal::SIGSTOP);
    c.primary.signal(Signal::SIGTERM);
    // The stopped worker cannot drain: the first SIGTERM alone waits for it (up to the stop
    // deadline); the second stops at once, killing what does not go.
    assert!(
        c.primary.wait_timeout(Duration::from_millis(500)).is_none(),
        "still draining"
    );
    c.primary.signal(Signal::SIGTERM);
    let status = c
        .primary
        .wait_timeout(DEADLINE)
        .expect("a second SIGTERM ends the stop");
    assert!(status.code().is_some(), "{status:?}");
    assert!(
        wait_until(DEADLINE, || pids.iter().all(|&p| !grace_tests::is_alive(p))),
        "workers left: {pids:?}"
    );
}

#[test]
fn a_second_sigterm_delivered_before_the_primary_looks_stops_at_once() {
    let mut c = TestCluster::start_with_env("2", &[], &[("RUST_LOG", "info")]);
    // A request that takes 20 s: a graceful stop waits for it.
    let mut request = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    std::io::Write::write_all(
        &mut request,
        b"GET /sleep/?duration=20s HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .expect("send the request");
    assert!(
        wait_until(DEADLINE, || c.status().contains(", connections 1,")),
        "no worker took the request: {}",
        c.status()
    );
    // Two SIGTERMs, both handled by the primary's signal handler before its loop looks.
    let sent = Instant::now();
    grace_tests::deliver_together(c.primary.pid(), Signal::SIGTERM, 2);
    let status = c
        .primary
        .wait_timeout(DEADLINE)
        .expect("the primary exits after two SIGTERMs");
    let took = sent.elapsed();
    assert!(status.code().is_some(), "{status:?}");
    // Generously below the request's 20 s: the second SIGTERM stopped at once.
    assert!(
        took < Duration::from_secs(10),
        "exited only {took:?} after two SIGTERMs: taken for one"
    );
    eprintln!("two SIGTERMs delivered together, a 20 s request open: the primary exited after {took:?}");
    // The worker stopped at once by itself, at the primary's second SIGTERM, which waits for
    // the first to be delivered (sent at once, the two merged into one pending signal, and
    // the worker drained on until the primary killed it a second later).
    let said = c.primary.output_after_exit().join("\n");
    assert!(
        said.contains("done: gave up on unfinished connections or tasks"),
        "the worker holding the request did not stop at once by itself:\n{said}"
    );
}

#[test]
fn three_sigttins_delivered_before_the_primary_looks_add_three_workers_and_three_sigttous_remove_them() {
    let c = TestCluster::start("1", &[]);
    grace_tests::deliver_together(c.primary.pid(), Signal::SIGTTIN, 3);
    assert!(
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 4 && w.iter().all(|w| w.serving)
        }),
        "not 4 serving workers after 3 SIGTTINs: {}",
        c.status()
    );
    let first = c.pids()[0];
    grace_tests::deliver_together(c.primary.pid(), Signal::SIGTTOU, 3);
    assert!(
        wait_until(DEADLINE, || c.workers().len() == 1),
        "not 1 worker after 3 SIGTTOUs: {}",
        c.status()
    );
    assert_eq!(c.pids(), vec![first], "the first worker stays");
}

/// Under systemd (`NOTIFY_SOCKET`, read here), a stop: the primary says `STOPPING=1`, and
/// passes on the workers' `EXTEND_TIMEOUT_USEC=`, which covers their stop timeout (60 s, and
/// a margin): systemd then waits for the drain whatever its own `TimeoutStopSec=`.
#[test]
fn a_stop_under_systemd_asks_it_to_wait_for_the_workers_drain() {
    let dir = TempDir::new("cluster-notify");
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let path_text = path.to_str().expect("utf-8").to_owned();
    let mut c = TestCluster::start_with_env("2", &[], &[("NOTIFY_SOCKET", &path_text)]);
    c.primary.signal(Signal::SIGTERM);
    let mut buf = vec![0u8; 4096];
    let (mut stopping, mut extend) = (false, None::<u64>);
    for _ in 0..50 {
        let Ok(n) = socket.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        stopping |= text.lines().any(|l| l == "STOPPING=1");
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC=")) {
            extend = v.parse().ok();
            assert!(stopping, "EXTEND_TIMEOUT_USEC before STOPPING=1: {text:?}");
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    let extend = extend.expect("no EXTEND_TIMEOUT_USEC during the stop");
    assert!(
        extend >= 60_000_000,
        "covers the workers' 60 s stop timeout: {extend}"
    );
    assert!(
        c.primary.wait_timeout(DEADLINE).is_some(),
        "the primary did not stop"
    );
}

/// A `SIGTERM` sent to one worker (not by its primary): it drains by itself, the primary says
/// so, gives it no new connection, and replaces it when it exits. Its drain stops its
/// runtime's stamps, which the primary took for a stopped or blocked runtime and warned of.
#[test]
fn a_worker_stopped_directly_drains_and_is_replaced_without_a_false_alarm() {
    let mut c = TestCluster::start_with_env("2", &[], &[("RUST_LOG", "gracedemo=debug,gracenet=info")]);
    // A 2 s request in flight on a worker this test knows.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let worker = pid_on(&mut s).expect("an answer");
    std::io::Write::write_all(&mut s, b"GET /sleep/?duration=2s HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send");
    c.primary
        .expect_log(&format!("sleeping for 2s from pid {worker}"));
    grace_tests::signal(worker, Signal::SIGTERM);
    let said = c.primary.expect_log("cluster: a worker is draining by itself");
    assert!(said.contains(&format!("pid={worker}")), "{said}");
    assert_eq!(
        answering_pid(&mut s),
        Some(worker),
        "its request in flight is answered"
    );
    drop(s);
    assert!(
        wait_until(DEADLINE, || c.replaced(2, worker)),
        "not replaced: {}",
        c.status()
    );
    let seen = c.primary.seen().join("\n");
    assert!(!seen.contains("has not run for 300 ms"), "{seen}");
}

#[test]
fn workers_stop_when_their_primary_is_killed() {
    let mut c = TestCluster::start("2", &["--worker-timeout", "400ms"]);
    let pids = c.pids();
    c.primary.signal(Signal::SIGKILL);
    // Orphaned, they would serve on unsupervised beside a restarted service on the same port.
    assert!(
        wait_until(DEADLINE, || pids.iter().all(|&p| !grace_tests::is_alive(p))),
        "workers still running without their primary: {pids:?}"
    );
    // Their drain's messages to the primary's notify socket go nowhere, expectedly: no
    // warning that "systemd" cannot be told.
    let said = c.primary.output_after_exit().join("\n");
    assert_eq!(
        said.matches("the cluster's primary is gone: stopping").count(),
        2,
        "{said}"
    );
    assert!(!said.contains("cannot notify"), "{said}");
}

#[test]
fn a_broken_binary_on_disk_and_a_crash_leave_the_other_workers_serving() {
    let app = App::install();
    let mut c = TestCluster::launch(&Launch {
        program: app.path.clone(),
        ..Launch::new("2")
    });
    let [victim, survivor] = c.pids()[..] else {
        panic!("{}", c.status())
    };
    app.deploy_script("#!/bin/sh\nexit 3\n");
    grace_tests::signal(victim, Signal::SIGKILL);
    // Six failed starts of worker 0 (the fifth used to end the whole cluster).
    for n in 0..6 {
        c.primary.expect_log("a worker ended: replacing it");
        assert!(
            c.primary.wait_timeout(Duration::ZERO).is_none(),
            "the primary exited after {n} failed starts"
        );
    }
    assert_eq!(c.workers()[1].pid, Some(survivor), "{}", c.status());
    // Status says slot 0 is waiting before its next try (after six failures: seconds).
    assert!(
        wait_until(DEADLINE, || c
            .status()
            .contains("worker 0: none (starting again in ")),
        "{}",
        c.status()
    );
    // Every new connection reaches the surviving worker: none waits in the queue of the
    // slot that cannot start (with the kernel's hash alone, about half would, for ever).
    let answered = (0..20)
        .filter(|_| http_ok_within(c.port, Duration::from_secs(3)))
        .count();
    assert_eq!(
        answered, 20,
        "new connections answered while worker 0 cannot start"
    );
    // Scaling down would keep the slot that cannot start and stop the one that serves:
    // refused, with the reason.
    let out = c.ctl(&["--scale", "1"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("would stop every serving worker"), "{said}");
    assert_eq!(c.workers()[1].pid, Some(survivor), "{}", c.status());
    // The fixed binary back: slot 0 serves again.
    app.restore();
    assert!(
        wait_until(DEADLINE, || c.workers().iter().filter(|w| w.serving).count() == 2),
        "{}",
        c.status()
    );
}

#[test]
fn a_stopped_primary_stops_no_worker_and_kills_none_when_it_resumes() {
    // One runtime thread per worker: a heartbeat that blocked would block all its serving.
    let c = TestCluster::start_with_env(
        "2",
        &["--worker-timeout", "400ms"],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let pids = c.pids();
    let _resume = Resume(c.primary.pid());
    c.primary.signal(Signal::SIGSTOP);
    // Heartbeats every 100 ms fill the primary's queue (10 datagrams) in half a second; a
    // worker's blocking send would then stop its runtime. Requests for 1.5 s, every one
    // answered.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut answered = 0;
    for _ in 0..1000 {
        if Instant::now() >= until {
            break;
        }
        assert!(http_ok(c.port), "a request failed while the primary was stopped");
        answered += 1;
    }
    assert!(answered > 5, "{answered}");
    c.primary.signal(Signal::SIGCONT);
    // Resumed, it does not take its own absence for the workers' silence.
    assert!(wait_until(Duration::from_secs(2), || c
        .status()
        .contains("primary:")));
    assert_eq!(c.pids(), pids, "{}", c.status());
}

#[test]
fn workers_at_their_fd_limit_keep_serving_and_do_not_take_their_primary_for_dead() {
    // More keep-alive connections than both workers have fds: accepts fail for a while. A
    // worker that then could not open /proc/PRIMARY/stat took its primary for gone and
    // stopped, dropping its connections (and the next one did the same).
    let mut c = TestCluster::launch(&Launch {
        fd_limit: Some(64),
        ..Launch::new("2")
    });
    let before = c.pids();
    let held: Vec<std::net::TcpStream> = (0..150)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).ok())
        .collect();
    // A few heartbeats (one a second) at the limit.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            before.iter().all(|&p| grace_tests::is_alive(p)),
            "a worker at its fd limit stopped: {}",
            c.primary.seen().join("\n")
        );
    }
    drop(held);
    assert!(
        http_ok_within(c.port, DEADLINE),
        "serving again once the connections close"
    );
    assert_eq!(c.pids(), before, "the same workers serve");
    let log = c.primary.seen().join("\n");
    assert!(!log.contains("primary is gone"), "{log}");
}

#[test]
fn clients_that_never_finish_a_command_do_not_hold_up_status_and_reload() {
    // 100 clients each send half a command and wait: 32 places, 10 s each to finish, so a
    // --status waited 30 s behind them (and timed out at its 5 s).
    let c = TestCluster::start("2", &[]);
    let idle: Vec<std::os::unix::net::UnixStream> = (0..100)
        .filter_map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&c.control).ok()?;
            std::io::Write::write_all(&mut s, b"sta").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(idle.len(), 100);
    let out = c.ctl(&["--status"]);
    assert!(
        out.status.success(),
        "--status behind 100 idle clients: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.ctl(&["--reload"]);
    assert!(
        out.status.success(),
        "--reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_new_primary_removes_the_directory_a_killed_one_left() {
    let runtime = TempDir::new("cluster-runtime");
    let runtime_dir = runtime.path().to_string_lossy().into_owned();
    let env = [("XDG_RUNTIME_DIR", runtime_dir.as_str())];
    let primaries_dirs = || -> Vec<String> {
        std::fs::read_dir(runtime.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("grace-primary-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let gone = |pid: u32| {
        let prefix = format!("grace-primary-{pid}-");
        !primaries_dirs().iter().any(|n| n.starts_with(&prefix))
    };
    // kill -9 of the primary: its workers, seeing it gone, remove its notify socket and, the
    // last one, its directory.
    let mut first = TestCluster::launch(&Launch::new("2").env(&env));
    let killed = first.primary.pid();
    first.primary.kill_and_wait();
    assert!(
        wait_until(DEADLINE, || first.others().is_empty()),
        "the workers stop without their primary"
    );
    assert!(wait_until(DEADLINE, || gone(killed)), "{:?}", primaries_dirs());
    // kill -9 of the primary and its workers at once: nobody is left to clean up; the next
    // primary removes the directory.
    let mut second = TestCluster::launch(&Launch::new("2").env(&env));
    let killed = second.primary.pid();
    let workers = second.others();
    // Stopped first, so none of them sees its primary gone and cleans up.
    for &w in &workers {
        grace_tests::signal(w, Signal::SIGSTOP);
    }
    second.primary.kill_and_wait();
    drop(workers.into_iter().map(PidGuard).collect::<Vec<_>>());
    assert!(
        !gone(killed),
        "kill -9 of everything leaves the directory: {:?}",
        primaries_dirs()
    );
    let third = TestCluster::launch(&Launch::new("2").env(&env));
    let now = primaries_dirs();
    assert_eq!(
        now.len(),
        1,
        "only the running primary's directory is left: {now:?}"
    );
    assert!(
        now[0].starts_with(&format!("grace-primary-{}-", third.primary.pid())),
        "{now:?}"
    );
    drop((first, second, third));
}

#[test]
fn a_scale_beyond_the_primarys_open_files_is_refused_saying_so() {
    // At 128 fds the primary has room for about a dozen workers: 40 used to be accepted, 19
    // of them never started, and the primary, out of fds, answered nothing more.
    let c = TestCluster::launch(&Launch {
        fd_limit: Some(128),
        ..Launch::new("2")
    });
    let out = c.ctl(&["--scale", "40"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "scaled to 40 at 128 fds: {said}");
    assert!(
        said.contains("open files") && said.contains("ulimit -n"),
        "{said}"
    );
    assert_eq!(c.workers().len(), 2, "{}", c.status());
    let out = c.ctl(&["--scale", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 4 && w.iter().all(|w| w.serving)
        }),
        "{}",
        c.status()
    );
}

#[test]
fn a_rolling_restart_with_the_primary_at_its_fd_limit_replaces_every_worker_it_knows() {
    let mut c = TestCluster::launch(&Launch {
        fd_limit: Some(40),
        ..Launch::new("2")
    });
    let before = c.pids();
    // Idle clients take every fd the primary would give them.
    let idle: Vec<_> = (0..100)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&c.control).ok())
        .collect();
    c.primary.signal(Signal::SIGUSR2);
    // Each worker's successor says it is ready with its sockets attached: read with the fds
    // the primary keeps in reserve, not lost (it used to go unrecognised and run untracked).
    for _ in 0..2 {
        c.primary.expect_log("Graceful handoff of ");
    }
    drop(idle);
    assert!(
        wait_until(DEADLINE, || {
            let now = c.pids();
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        }),
        "both workers replaced and known: {}",
        c.status()
    );
    assert!(
        wait_until(DEADLINE, || c.others().len() == 2),
        "only the two workers run: {:?}",
        c.others()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_on_the_same_address_fails_and_the_first_keeps_every_connection() {
    let c = tokio::task::block_in_place(|| TestCluster::start("2", &[]));
    let pids = c.pids();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A new connection per request: each one is placed anew among the listeners on the port.
    let load = tokio::spawn(run_load_until(
        c.load(false, Duration::from_secs(30)),
        stop.clone(),
    ));
    let dir = TempDir::new("cluster-second");
    let taken = format!("127.0.0.1:{}", c.port);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
    cmd.args(["-a0", &taken, "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .args(["--workers", "2", "--control-socket"])
        .arg(dir.path().join("control"));
    // Declared before the guard: whatever the second cluster started goes after it.
    let _sweep = grace_tests::Sweep::new(&mut cmd);
    let mut second = ProcessGuard::spawn(cmd);
    let Some(status) = tokio::task::block_in_place(|| second.wait_timeout(DEADLINE)) else {
        panic!(
            "a second cluster on {taken} still runs (it joined the first one's port): {}",
            second.seen().join("\n")
        );
    };
    let output = second.output_after_exit().join("\n");
    assert!(!status.success(), "{status:?}: {output}");
    // At once: its first worker could not listen, so no other is tried. (How the primary
    // says so is checked in `a_first_worker_that_dies_before_it_is_ready_ends_the_cluster_at_once`;
    // here, under the suite's load, one run in a few dozen showed the worker's error alone.)
    assert!(
        !output.contains("replacing it") && !output.contains("giving up"),
        "{status:?}: {output}"
    );
    assert!(
        output.contains(&format!("cannot listen on {taken}")) && output.contains("Address already in use"),
        "the failure names the address: {output}"
    );
    // The first cluster answered every request meanwhile, and answers alone.
    let seen = answering_pids(c.port, 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let load = load.await.expect("load task");
    load.assert_enough_and_none_failed(20, "the first cluster's load while a second one tried to start");
    assert_eq!(
        seen.values().sum::<usize>(),
        100,
        "every request answered: {seen:?}"
    );
    assert!(
        seen.keys().all(|p| pids.contains(p)),
        "only the first cluster's workers {pids:?} answer: {seen:?}"
    );
    assert_eq!(c.pids(), pids, "the first cluster's workers were left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_under_load_resets_no_queued_connection() {
    // Linux moves the connections queued at a closing listener to the others of its group
    // only with net.ipv4.tcp_migrate_req=1 (read here, never changed): with it, this test
    // would show nothing of the cluster's own care.
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    if migrate.trim() != "0" {
        eprintln!(
            "net.ipv4.tcp_migrate_req is {:?}, not 0: the kernel migrates queued connections; nothing to show",
            migrate.trim()
        );
        return;
    }
    let c = tokio::task::block_in_place(|| TestCluster::start("3", &[]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A new connection per request, from many clients at once: connections keep arriving in
    // every worker's accept queue as the scale-down closes the removed workers' listeners.
    let mut cfg = c.load(false, Duration::from_secs(60));
    cfg.connections = 16;
    let load = tokio::spawn(run_load_until(cfg, stop.clone()));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let three = tokio::task::block_in_place(|| c.pids());
        assert_eq!(three.len(), 3, "round {round}: {}", c.status());
        let out = tokio::task::block_in_place(|| c.ctl(&["--scale", "1"]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            tokio::task::block_in_place(|| wait_until(DEADLINE, || three[1..]
                .iter()
                .all(|&p| !grace_tests::is_alive(p)))),
            "round {round}: the workers scaled away did not exit: {}",
            c.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = tokio::task::block_in_place(|| c.ctl(&["--scale", "3"]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            tokio::task::block_in_place(|| wait_until(DEADLINE, || {
                let w = c.workers();
                w.len() == 3 && w.iter().all(|w| w.serving)
            })),
            "round {round}: not 3 serving workers again: {}",
            c.status()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let load = load.await.expect("load task");
    load.assert_enough_and_none_failed(100, "across three scale-downs from 3 to 1");
    eprintln!(
        "{} requests, none failed, across three scale-downs from 3 to 1",
        load.requests
    );
    // Steering followed the scales: each of the three workers answers new connections (once
    // the load has gone: 3 workers on fewer cores take turns at new connections under it).
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || turns_line(&c.status()).is_none())),
        "the turns go on with nothing coming: {}",
        c.status()
    );
    let pids = tokio::task::block_in_place(|| c.pids());
    let seen = answering_pids(c.port, 60).await;
    assert_eq!(seen.values().sum::<usize>(), 60, "{seen:?}");
    assert!(
        pids.iter().all(|p| seen.contains_key(p)),
        "not every worker of {pids:?} answered: {seen:?}"
    );
}

/// The `requests N` of each worker line of `status`.
fn requests_in(status: &str) -> Vec<u64> {
    status
        .lines()
        .filter(|l| l.starts_with("worker "))
        .filter_map(|l| {
            l.split(", ")
                .find_map(|f| f.strip_prefix("requests "))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// The recycles `status` counts, over every slot.
fn recycles_in(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.split(", recycled ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_past_max_requests_are_recycled_one_at_a_time_and_fail_no_request() {
    // gracenet's info lines (each recycle and its reason) shown too.
    let c = tokio::task::block_in_place(|| {
        TestCluster::start_with_env(
            "2",
            &["--max-requests", "50"],
            &[("RUST_LOG", "warn,gracenet=info,gracehttp=info,gracedemo=info")],
        )
    });
    let first = c.pids();
    assert_eq!(first.len(), 2, "{}", c.status());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads = [(true, false), (false, false), (true, true)].map(|(keep_alive, http2)| {
        let config = LoadConfig {
            http2,
            connections: 2,
            ..c.load(keep_alive, Duration::from_secs(60))
        };
        tokio::spawn(run_load_until(config, stop.clone()))
    });
    // Until every first worker has been recycled (bounded: the loads stop at 60 s).
    let mut most_requests = 0;
    let mut statuses = Vec::new();
    let recycled = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(60), || {
            let status = c.status();
            most_requests = requests_in(&status)
                .into_iter()
                .max()
                .unwrap_or(0)
                .max(most_requests);
            let pids = c.pids();
            // Every first worker, and some of their successors too.
            let done =
                pids.len() == 2 && first.iter().all(|p| !pids.contains(p)) && recycles_in(&status) >= 4;
            statuses.push(status);
            done
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for load in loads {
        let load = load.await.expect("load task");
        sent += load.requests;
        load.assert_none_failed("a load across the recycles");
    }
    let status = tokio::task::block_in_place(|| c.status());
    assert!(
        recycled,
        "not every first worker ({first:?}) was recycled, and 4 recycles in all, after {sent} requests: {status}"
    );
    assert!(
        most_requests > 0,
        "status never showed a request served: {status}"
    );
    assert!(
        status.contains("recycled ") && status.contains("(last: requests)"),
        "status names the recycles and their reason: {status}"
    );
    // One recycle at a time: no status ever showed two workers recycling.
    for s in &statuses {
        assert!(
            s.matches("recycling (").count() <= 1,
            "two workers recycling at once: {s}"
        );
    }
    let json =
        String::from_utf8_lossy(&tokio::task::block_in_place(|| c.ctl(&["--status", "--json"])).stdout)
            .into_owned();
    for field in ["\"requests\":", "\"recycles\":", "\"last_recycle\":\"requests\""] {
        assert!(json.contains(field), "{field} missing: {json}");
    }
    let mut primary = c;
    let line = tokio::task::block_in_place(|| primary.primary.expect_log("recycling a worker"));
    assert!(line.contains("requests"), "the log says why: {line}");
    let recycles = recycles_in(&status);
    eprintln!("{sent} requests, {recycles} recycles, every first worker recycled, 0 failed");
}

#[test]
fn a_memory_limit_below_a_fresh_workers_memory_warns_and_recycles_nothing() {
    let mut c = TestCluster::start("2", &["--max-memory", "1M"]);
    let before = c.pids();
    let line = c.primary.expect_log("already at the recycling limit");
    assert!(line.contains("not recycling it for memory"), "{line}");
    // Several heartbeats later (one a second), with requests served: the same workers.
    for _ in 0..20 {
        assert!(http_ok(c.port));
    }
    let started = Instant::now();
    assert!(
        wait_until(DEADLINE, || {
            let status = c.status();
            let replaced = c.pids() != before;
            started.elapsed() >= Duration::from_secs(3)
                && (replaced || requests_in(&status).iter().sum::<u64>() >= 20)
        }),
        "the workers never reported their requests: {}",
        c.status()
    );
    let status = c.status();
    assert_eq!(c.pids(), before, "no worker was recycled: {status}");
    assert!(!status.contains("recycl"), "{status}");
    assert!(
        status.contains(" MiB"),
        "status shows each worker's memory: {status}"
    );
}

#[test]
fn a_bad_max_memory_is_refused_naming_the_flag_and_the_form() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
    cmd.args(["-a0", "127.0.0.1:0", "--workers", "2", "--max-memory", "abc"]);
    let mut p = ProcessGuard::spawn(cmd);
    let status = p.wait_timeout(DEADLINE).expect("gracedemo exits at once");
    assert!(!status.success());
    let out = p.output_after_exit().join("\n");
    assert!(out.contains("--max-memory"), "{out}");
    assert!(
        out.contains("expected a size such as 64M or 1G (bytes, or K, M, G: powers of 1024), got \"abc\""),
        "{out}"
    );
}

#[test]
fn a_recycle_whose_successor_cannot_start_leaves_the_worker_serving_and_waits_before_trying_again() {
    let app = App::install();
    let mut c = TestCluster::launch(
        &Launch {
            program: app.path.clone(),
            ..Launch::new("1")
        }
        .extra(&["--max-requests", "20"])
        .env(&[("RUST_LOG", "warn,gracenet=info,gracehttp=info,gracedemo=info")]),
    );
    let [pid] = c.pids()[..] else {
        panic!("one worker expected: {}", c.status())
    };
    // The deploy ships a binary that cannot start; the worker passes its limit.
    app.deploy_script("#!/bin/sh\nexit 3\n");
    for _ in 0..30 {
        assert!(http_ok(c.port), "{}", c.status());
    }
    c.primary.expect_log("recycling a worker (a graceful restart)");
    let failed = c.primary.expect_log("recycling a worker failed");
    let failed_at = Instant::now();
    assert!(failed.contains("retry_in_s=5"), "{failed}");
    assert_eq!(c.pids(), vec![pid], "the old worker serves on: {}", c.status());
    assert!(http_ok(c.port), "and answers");
    // Tried again after the wait, not at the next heartbeat (a second later).
    c.primary.expect_log("recycling a worker (a graceful restart)");
    let gap = failed_at.elapsed();
    assert!(gap >= Duration::from_secs(3), "tried again after only {gap:?}");
    let failed = c.primary.expect_log("recycling a worker failed");
    assert!(failed.contains("retry_in_s=10"), "the wait doubles: {failed}");
    assert!(http_ok(c.port));
    // The fixed binary back: the next try recycles the worker.
    app.restore();
    assert!(
        wait_until(Duration::from_secs(40), || c
            .pids()
            .first()
            .is_some_and(|&p| p != pid)),
        "{}",
        c.status()
    );
    let status = c.status();
    assert!(status.contains("recycled 1 (last: requests)"), "{status}");
    assert!(http_ok(c.port));
    eprintln!("a failed recycle was tried again {gap:?} later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_every_http1_and_http2_request_a_worker_served() {
    let c = tokio::task::block_in_place(|| TestCluster::start("1", &[]));
    let mut served = 0;
    for (keep_alive, http2) in [(true, false), (false, false), (true, true)] {
        let load = grace_tests::load::run_load(LoadConfig {
            http2,
            connections: 2,
            max_requests: 100,
            ..c.load(keep_alive, Duration::from_secs(20))
        })
        .await;
        load.assert_none_failed(&format!("the load (keep-alive {keep_alive}, HTTP/2 {http2})"));
        served += load.requests;
    }
    assert_eq!(served, 300, "each load sends its 100");
    // The next heartbeats (one a second) carry the count.
    let counted =
        tokio::task::block_in_place(|| wait_until(DEADLINE, || requests_in(&c.status()) == vec![served]));
    assert!(counted, "status counts {served} requests: {}", c.status());
}

/// Runs `cmd`'s process (and so every process it starts) on one core: the first this test
/// may use.
fn pin_to_one_core(cmd: &mut Command) {
    let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|set| (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false)))
        .expect("a core this test may run on");
    let mut one = nix::sched::CpuSet::new();
    one.set(cpu).expect("a core number within the set");
    // SAFETY: sched_setaffinity is a plain system call, safe between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).map_err(std::io::Error::from)
        });
    }
}

/// The `new connections: in turns …` line of `status`, if there is one.
fn turns_line(status: &str) -> Option<String> {
    status
        .lines()
        .find(|l| l.starts_with("new connections: in turns"))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_one_core_take_turns_at_new_connections_while_many_come_and_share_a_burst_after() {
    let c = tokio::task::block_in_place(|| {
        TestCluster::launch(&Launch {
            one_core: true,
            ..Launch::new("2")
        })
    });
    let pids = c.pids();
    assert_eq!(pids.len(), 2);
    assert_eq!(turns_line(&c.status()), None, "no turns while nothing comes");
    // Clients opening a connection per request, as many as the host allows (the turns begin
    // from 1,000 new connections a second).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(run_load_until(
        LoadConfig {
            connections: 8,
            max_requests: 2_000_000,
            ..c.load(false, Duration::from_secs(60))
        },
        stop.clone(),
    ));
    let mut line = None;
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(30), || {
            line = turns_line(&c.status());
            line.is_some()
        })),
        "no turns under connection-per-request load on one core: {}",
        c.status()
    );
    let line = line.unwrap_or_default();
    assert!(line.contains("to 1 worker(s) at a time"), "{line}");
    // Meanwhile, a client's new connections come from one worker within a turn: at most one
    // change of worker per turn (100 ms) begun, where connections spread at random change
    // worker about every other one.
    let (changes, asked, took) = tokio::task::block_in_place(|| {
        let started = Instant::now();
        let mut last = None;
        let mut changes = 0;
        let mut asked = 0;
        while asked < 40 && started.elapsed() < Duration::from_millis(250) {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let pid = pid_on(&mut s).expect("an answer");
            changes += usize::from(last.is_some_and(|l| l != pid));
            last = Some(pid);
            asked += 1;
        }
        (changes, asked, started.elapsed())
    });
    let turns_begun = (took.as_millis() / 100) as usize + 1;
    let still = turns_line(&tokio::task::block_in_place(|| c.status())).is_some();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = load.await.expect("the load task");
    result.assert_none_failed("the connection-per-request load");
    eprintln!(
        "{} requests; {asked} new connections in {took:?}: {changes} change(s) of worker; {line}",
        result.requests
    );
    if still {
        assert!(
            changes <= turns_begun,
            "{changes} changes of worker in {asked} new connections over {took:?} ({turns_begun} turns)"
        );
    }
    // Quiet again: the turns end, and a burst of keep-alive connections (a client opening its
    // pool) is shared, not taken whole by the worker whose turn it was (it could pass on only
    // what the other's inbox holds: 10).
    assert!(
        tokio::task::block_in_place(|| wait_until(DEADLINE, || turns_line(&c.status()).is_none())),
        "the turns go on with nothing coming: {}",
        c.status()
    );
    let by_pid = tokio::task::block_in_place(|| burst_by_pid(c.port, 64));
    for pid in &pids {
        let share = by_pid.get(pid).copied().unwrap_or(0);
        assert!(
            (20..=44).contains(&share),
            "worker pid {pid} took {share} of 64 keep-alive connections after a quiet time: {by_pid:?}"
        );
    }
}

#[test]
fn a_worker_that_exits_by_itself_is_replaced_with_a_warning_not_an_error() {
    let mut c = TestCluster::start("2", &[]);
    let [victim, _] = c.pids()[..] else {
        panic!("{}", c.status())
    };
    // SIGTERM to the worker alone: it drains and exits 0, its own choice.
    grace_tests::signal(victim, Signal::SIGTERM);
    let line = c.primary.expect_log("a worker exited by itself: replacing it");
    assert!(line.contains("WARN") && line.contains("exit code 0"), "{line}");
    assert!(
        wait_until(DEADLINE, || c.replaced(2, victim)),
        "not replaced: {}",
        c.status()
    );
}

#[test]
fn more_workers_than_cores_are_warned_about() {
    // Pinned to one core (the first this test may use): 2 workers share it, 1 does not.
    for (workers, warned) in [("2", true), ("1", false)] {
        let dir = TempDir::new("cluster-cores");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
        cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
            .args(["--workers", workers, "--control-socket"])
            .arg(dir.path().join("control"));
        pin_to_one_core(&mut cmd);
        let _sweep = grace_tests::Sweep::new(&mut cmd);
        let mut primary = ProcessGuard::spawn(cmd);
        primary.expect_log("Worker 0 serving ");
        let seen = primary.seen().join("\n");
        assert_eq!(
            seen.contains(&format!(
                "cluster: {workers} workers on 1 core(s): workers that share a core take turns"
            )),
            warned,
            "--workers {workers} on one core: {seen}"
        );
    }
}

#[test]
fn a_first_worker_that_dies_before_it_is_ready_ends_the_cluster_at_once() {
    let app = App::install();
    // Slot 0's first worker (it binds the sockets) exits before gracedemo runs; later ones
    // would start (so a retry would have served).
    app.wrap(
        "[ -n \"$GRACE_WORKER\" ] && echo run >> \"$STATE/runs\"; \
         if [ \"$GRACE_WORKER\" = 0 ] && mkdir \"$STATE/once\" 2>/dev/null; then exit 3; fi",
    );
    let dir = TempDir::new("cluster-first-fails");
    let mut cmd = Command::new(&app.path);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .args(["--workers", "3", "--control-socket"])
        .arg(dir.path().join("control"));
    let _sweep = grace_tests::Sweep::new(&mut cmd);
    let mut primary = ProcessGuard::spawn(cmd);
    let Some(status) = primary.wait_timeout(DEADLINE) else {
        panic!("the cluster still runs: {}", primary.seen().join("\n"));
    };
    let output = primary.output_after_exit().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(
            "cluster: the first worker exited before it was ready (its error is above): not starting another"
        ),
        "{output}"
    );
    let runs = std::fs::read_to_string(app.state().join("runs")).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        1,
        "no other worker started, no retry: {output}"
    );
    assert!(!output.contains("giving up"), "no crash loop: {output}");
}

/// The worker of `c` stopped (by its wrapper), within [`DEADLINE`].
fn stopped_worker(c: &TestCluster) -> u32 {
    let mut stopped = None;
    assert!(
        wait_until(DEADLINE, || {
            stopped = c.others().into_iter().find(|&p| grace_tests::is_stopped(p));
            stopped.is_some()
        }),
        "no worker stopped: {:?}",
        c.others()
    );
    stopped.expect("found above")
}

#[test]
fn a_stop_while_the_first_worker_binds_the_sockets_starts_none_of_the_others() {
    let app = App::install();
    app.wrap("if [ \"$GRACE_WORKER\" = 0 ] && mkdir \"$STATE/once\" 2>/dev/null; then kill -STOP $$; fi");
    let mut c = TestCluster::spawn(&Launch {
        program: app.path.clone(),
        ..Launch::new("8").env(&[("RUST_LOG", "warn,gracenet=info")])
    });
    let binder = stopped_worker(&c);
    let _resume = Resume(binder);
    c.primary.signal(Signal::SIGTERM);
    c.primary.expect_log("cluster: stopping every worker");
    // A scale now would change nothing: it is refused, saying why (it used to answer "ok").
    let out = c.ctl(&["--scale", "3"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && said.contains("stopping"), "{said}");
    // It ends (told to stop) before it was ready: the seven others waited for its sockets,
    // and are not started now.
    grace_tests::signal(binder, Signal::SIGCONT);
    let status = c
        .primary
        .wait_timeout(DEADLINE)
        .expect("the primary exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let started: Vec<String> = c
        .primary
        .output_after_exit()
        .into_iter()
        .filter(|l| l.contains("cluster: started a worker"))
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert!(c.others().is_empty(), "processes left: {:?}", c.others());
}

#[test]
fn a_scale_down_while_the_first_worker_binds_the_sockets_still_lets_sigterm_end_the_cluster() {
    let app = App::install();
    // Slot 0's first worker (it binds the sockets) is stopped before it runs gracedemo.
    app.wrap("if [ \"$GRACE_WORKER\" = 0 ] && mkdir \"$STATE/once\" 2>/dev/null; then kill -STOP $$; fi");
    let mut c = TestCluster::spawn(&Launch {
        program: app.path.clone(),
        ..Launch::new("4")
    });
    let binder = stopped_worker(&c);
    let _resume = Resume(binder);
    // Status says the others wait for it (not that they are starting).
    let out = c.ctl(&["--status"]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains(&format!("worker 0: pid {binder}, generation 1, starting"))
            && status.contains("worker 3: none (waiting for the first worker to bind the sockets)"),
        "{status}"
    );
    // The others wait for its sockets; two of them are scaled away meanwhile.
    let out = c.ctl(&["--scale", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    grace_tests::signal(binder, Signal::SIGCONT);
    assert!(
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 2 && w.iter().all(|w| w.serving)
        }),
        "the two workers kept never both served: {}",
        c.status()
    );
    c.primary.signal(Signal::SIGTERM);
    let status = c
        .primary
        .wait_timeout(DEADLINE)
        .expect("the primary exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(c.others().is_empty(), "processes left: {:?}", c.others());
}

#[test]
fn a_worker_that_dies_before_it_is_ready_leaves_no_inbox_file() {
    let app = App::install();
    // Slot 1's first worker sends its notifications nowhere (beside the primary's socket, so
    // its inboxes are made in the primary's directory as any worker's): it is never ready.
    app.wrap(
        "if [ \"$GRACE_WORKER\" = 1 ] && mkdir \"$STATE/once\" 2>/dev/null; then \
         export NOTIFY_SOCKET=\"${NOTIFY_SOCKET%/*}/nobody\"; fi",
    );
    let c = TestCluster::spawn(&Launch {
        program: app.path.clone(),
        ..Launch::new("2")
    });
    let mut silent = None;
    assert!(
        wait_until(DEADLINE, || {
            silent = c.others().into_iter().find(|&p| {
                std::fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv.ends_with(b"/nobody")))
            });
            silent.is_some()
        }),
        "slot 1's first worker never started: {}",
        c.status()
    );
    let silent = silent.expect("found above");
    let dir = std::path::PathBuf::from(notify_socket_of(silent))
        .parent()
        .expect("the notify socket's directory")
        .to_path_buf();
    let inboxes = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{silent}-")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(DEADLINE, || inboxes().len() >= 3),
        "its inboxes never appeared: {:?}",
        inboxes()
    );
    assert!(
        c.workers().iter().any(|w| w.pid == Some(silent) && !w.serving),
        "it is not ready: {}",
        c.status()
    );
    grace_tests::signal(silent, Signal::SIGKILL);
    // Its slot's next worker serves: the primary has seen it end.
    assert!(wait_until(DEADLINE, || c.replaced(2, silent)), "{}", c.status());
    assert_eq!(inboxes(), Vec::<String>::new(), "its inbox files are left");
}

/// A TLS client's view of one request: the pid that answered, the certificate it served
/// (DER), and whether the handshake resumed a session.
#[derive(Debug)]
struct TlsAnswer {
    pid: u32,
    cert: Vec<u8>,
    kind: Option<rustls::HandshakeKind>,
}

/// Accepts any server certificate: the test compares the certificates itself, by their DER.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client for `localhost` whose connections share one session store: each offers a
/// ticket an earlier one was given. Without `resume`, none: each handshake is a full one,
/// where the server sends its certificate (a resumed one does not: the client then reports
/// the certificate of the session it resumed).
fn tls_client(resume: bool) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    std::sync::Arc::new(config)
}

/// One `GET /sleep/` with `Connection: close` over TLS as `client`, read to the end (so the
/// session tickets sent after the handshake are stored too).
fn tls_get(port: u16, client: &std::sync::Arc<rustls::ClientConfig>) -> Result<TlsAnswer, String> {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(client.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A peer that closes without close_notify, once the whole answer is in, is fine here.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let answer = String::from_utf8_lossy(&answer);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok(TlsAnswer {
        pid: grace_tests::load::pid_of(body).ok_or_else(|| format!("no pid in {answer:?}"))?,
        cert: tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no certificate")?,
        kind: tls.conn.handshake_kind(),
    })
}

/// Connects until each of `workers` has answered (at most 200 times), each time as a new
/// client (a full handshake), checking that every worker serves `cert` (the first answer's
/// when `None`). Returns the certificate.
fn every_worker_serves_one_certificate(
    port: u16,
    workers: &[u32],
    cert: Option<&[u8]>,
    when: &str,
) -> Vec<u8> {
    let client = tls_client(false);
    let mut cert = cert.map(<[u8]>::to_vec);
    let mut seen: Vec<u32> = Vec::new();
    for _ in 0..200 {
        let a = tls_get(port, &client).unwrap_or_else(|e| panic!("{when}: a TLS request: {e}"));
        assert_eq!(
            a.kind,
            Some(rustls::HandshakeKind::Full),
            "{when}: a client without sessions"
        );
        let expected = cert.get_or_insert_with(|| a.cert.clone());
        assert!(
            a.cert == *expected,
            "{when}: worker {} serves another certificate than worker(s) {seen:?} ({} vs {} bytes of DER)",
            a.pid,
            a.cert.len(),
            expected.len()
        );
        if !seen.contains(&a.pid) {
            seen.push(a.pid);
        }
        if workers.iter().all(|w| seen.contains(w)) {
            return a.cert;
        }
    }
    panic!("{when}: only {seen:?} of the workers {workers:?} answered 200 TLS connections");
}

/// Connects as `client` until each of `workers` has answered (at most 200 times), checking
/// that, once `client` holds a ticket, every handshake resumes: on the worker that issued the
/// ticket, and on the first connection to each other worker, with a ticket none of its own.
fn every_worker_resumes_the_others_sessions(
    port: u16,
    workers: &[u32],
    client: &std::sync::Arc<rustls::ClientConfig>,
    when: &str,
) {
    let first = tls_get(port, client).unwrap_or_else(|e| panic!("{when}: a TLS request: {e}"));
    let mut issuers = vec![first.pid];
    for _ in 0..200 {
        let a = tls_get(port, client).unwrap_or_else(|e| panic!("{when}: a TLS request: {e}"));
        let new_worker = !issuers.contains(&a.pid);
        assert_eq!(
            a.kind,
            Some(rustls::HandshakeKind::Resumed),
            "{when}: a session ticket from worker(s) {issuers:?} {} on worker {}",
            if new_worker { "resumes" } else { "resumes again" },
            a.pid
        );
        if new_worker {
            issuers.push(a.pid);
        }
        if workers.iter().all(|w| issuers.contains(w)) {
            return;
        }
    }
    panic!("{when}: only {issuers:?} of the workers {workers:?} answered 200 TLS connections");
}

/// `SIGUSR2` sent to every process of the cluster (`kill $(pgrep app)`, `systemctl kill -s
/// USR2`, whose default is the whole cgroup): the workers ignore theirs, saying so, and the
/// primary's rolling restart replaces each worker once. Each worker restarted by itself, and
/// the rollout then restarted again those it had not yet reached.
#[test]
fn sigusr2_to_every_process_restarts_each_worker_once() {
    let mut c = TestCluster::start("2", &[]);
    let before = c.pids();
    assert_eq!(before.len(), 2, "{}", c.status());
    for &worker in &before {
        grace_tests::signal(worker, Signal::SIGUSR2);
    }
    for _ in &before {
        let line = c.primary.expect_log("ignoring SIGUSR2 to a cluster's worker");
        assert!(line.contains(&format!("primary={}", c.primary.pid())), "{line}");
    }
    let out = c.ctl(&["--reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = c.status();
    for slot in 0..2 {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("worker {slot}: ")))
            .unwrap_or_else(|| panic!("no worker {slot}: {status}"));
        assert!(
            line.contains(", generation 2, serving"),
            "restarted once: {status}"
        );
    }
    assert!(c.pids().iter().all(|p| !before.contains(p)), "{status}");
}

#[test]
fn every_worker_serves_one_self_signed_certificate_and_resumes_any_workers_tls_session_across_a_rolling_restart()
 {
    let c = TestCluster::start("2", &["--tls-self-signed"]);
    let before = c.pids();
    assert_eq!(before.len(), 2, "{}", c.status());
    let cert = every_worker_serves_one_certificate(c.port, &before, None, "at start");
    let client = tls_client(true);
    every_worker_resumes_the_others_sessions(c.port, &before, &client, "at start");

    // A rolling restart: each worker starts its successor, which has the cluster's secrets too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.primary.pid() as i32),
        Signal::SIGUSR2,
    )
    .expect("SIGUSR2 to the primary");
    assert!(
        wait_until(DEADLINE, || {
            let w = c.workers();
            w.len() == 2
                && w.iter()
                    .all(|w| w.serving && w.pid.is_some_and(|p| !before.contains(&p)))
        }),
        "every worker replaced: {before:?} -> {}",
        c.status()
    );
    let after = c.pids();
    every_worker_serves_one_certificate(c.port, &after, Some(&cert), "after a rolling restart");
    // `client` holds tickets the old workers issued: they resume on the new ones.
    let old = tls_get(c.port, &client).expect("a TLS request after the rolling restart");
    assert!(after.contains(&old.pid), "a new worker answers: {old:?}");
    assert_eq!(
        old.kind,
        Some(rustls::HandshakeKind::Resumed),
        "a ticket from the workers {before:?} resumes on their successor {}",
        old.pid
    );
    // And a new client's tickets, from one new worker on the other.
    every_worker_resumes_the_others_sessions(c.port, &after, &tls_client(true), "after a rolling restart");
}

#[test]
fn a_command_whose_client_gave_up_while_the_primary_was_stopped_is_not_run() {
    let mut c = TestCluster::start_with_env("2", &[], &[("RUST_LOG", "gracenet=info")]);
    let before = c.pids();
    let _resume = Resume(c.primary.pid());
    for command in [&["--reload"][..], &["--scale", "3"][..]] {
        c.primary.signal(Signal::SIGSTOP);
        let primary = c.primary.pid();
        assert!(
            wait_until(DEADLINE, || grace_tests::is_stopped(primary)),
            "never stopped"
        );
        let out = c.ctl(&[command, &["--control-timeout", "1s"][..]].concat());
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && said.contains("not run"),
            "{command:?}: {said}"
        );
        c.primary.signal(Signal::SIGCONT);
        // The client was told the command is not run: once the primary reads it, it is not.
        c.primary
            .expect_log("control socket: command not run: its client left before it was read");
    }
    assert_eq!(c.pids(), before, "{}", c.status());
    assert_eq!(c.workers().len(), 2, "{}", c.status());
}

#[test]
fn a_rolling_restart_replaces_at_once_a_worker_still_starting_from_before_it() {
    let app = App::install();
    // Once "$STATE/stop" exists, the next worker started stops before it runs gracedemo.
    app.wrap("if [ -n \"$GRACE_WORKER\" ] && [ -e \"$STATE/stop\" ] && mkdir \"$STATE/once\" 2>/dev/null; then kill -STOP $$; fi");
    let c = TestCluster::launch(&Launch {
        program: app.path.clone(),
        ..Launch::new("2")
    });
    std::fs::create_dir(app.dir.path().join("state/stop")).expect("mkdir stop");
    let before = c.pids();
    grace_tests::signal(before[0], Signal::SIGKILL);
    // Its replacement, started from the program installed then, hangs before it is ready.
    let stuck = stopped_worker(&c);
    let _resume = Resume(stuck);
    // The deploy. The stuck worker runs the program from before: the rollout neither counts
    // its slot as restarted nor waits out its 30 s ready timeout; it replaces it at once. A
    // client that gives up well before that timeout gets the answer.
    app.restore();
    let out = Command::new(env!("CARGO_BIN_EXE_gracedemo"))
        .arg("--control-socket")
        .arg(&c.control)
        .args(["--reload", "--control-timeout", "20s"])
        .output()
        .expect("run --reload");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}\n{}", c.status());
    assert!(!said.contains(&stuck.to_string()), "{said}");
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(stuck)),
        "the stuck worker {stuck} is still there"
    );
    let after = c.workers();
    assert!(
        after.len() == 2
            && after
                .iter()
                .all(|w| w.serving && w.pid != Some(stuck) && !before.contains(&w.pid.unwrap_or(0))),
        "{}",
        c.status()
    );
}

#[test]
fn a_cluster_that_fails_to_start_leaves_no_private_directory_behind() {
    let dir = TempDir::new("cluster-startfail");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir tmp");
    let busy = dir.path().join("busy");
    let _holder = std::os::unix::net::UnixListener::bind(&busy).expect("a live socket at the control path");
    let cases: [(&str, Vec<std::ffi::OsString>); 2] = [
        (
            "a PID file in a missing directory",
            vec!["--pid-file".into(), dir.path().join("none/pid").into()],
        ),
        (
            "a control socket another process listens on",
            vec!["--control-socket".into(), busy.clone().into()],
        ),
    ];
    for (case, args) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gracedemo"));
        cmd.args([
            "-a0",
            "127.0.0.1:0",
            "-a1",
            "127.0.0.1:0",
            "-a2",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .args(&args)
        .env("TMPDIR", &tmp)
        .env_remove("XDG_RUNTIME_DIR");
        let mut primary = ProcessGuard::spawn(cmd);
        let status = primary.wait_timeout(DEADLINE).expect("the primary exits");
        assert_eq!(status.code(), Some(1), "{case}: {status:?}");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .expect("read tmp")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{case}: left in TMPDIR: {left:?}");
    }
}

#[test]
fn more_workers_than_the_primarys_fd_limit_allows_are_warned_of_at_the_start() {
    let mut c = TestCluster::spawn(&Launch {
        fd_limit: Some(64),
        ..Launch::new("3")
    });
    let line = c
        .primary
        .expect_log("cluster: more workers than the primary's open files limit allows");
    assert!(line.contains("workers=3") && line.contains("ulimit -n"), "{line}");
}
