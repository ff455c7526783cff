//! gracenet's restart lifecycle, driven from outside with real processes and real signals:
//! hand-over, failures that cost nothing, coalescing, stop and drain, PID file, binary
//! replacement, and Go grace's side of the protocol.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, Prober, ProcessGuard, TempDir, answer_pid, ask, converse, field,
    install_program, is_alive, lifeprobe, parse_probe, signal, start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

/// Sends SIGUSR2 to `pid` and waits for generation `number`'s first line.
fn restart(guard: &mut ProcessGuard, pid: u32, number: u64) -> ProbeGen {
    signal(pid, Signal::SIGUSR2);
    let line = guard.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), number.to_string(), "{line}");
    parse_probe(&line)
}

/// Whether `pid` has been reaped: not even a zombie is left.
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

#[test]
fn a_child_that_fails_at_startup_costs_nothing_and_the_next_restart_works() {
    let dir = TempDir::new("fail-once");
    let marker = dir.path().join("failed");
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_FAIL_ONCE", marker.to_str().unwrap())],
    ));
    let prober = Prober::start(gen1.port, Duration::from_millis(1));

    let failed = restart(&mut g, gen1.pid, 2);
    let _failed_guard = PidGuard(failed.pid);
    g.expect_line(&format!("probe failing pid={}", failed.pid));
    let log = g.expect_log("restart failed: this generation keeps serving generation=1 next=2 ");
    assert!(log.contains(&format!(" pid={} ", failed.pid)), "{log}");
    assert!(log.contains("exited before it was ready (exit code 1)"), "{log}");
    assert!(log.contains("keeps serving"), "{log}");
    assert!(reaped(failed.pid), "the failed child is reaped, no zombie");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen1.pid);

    let gen2 = restart(&mut g, gen1.pid, 2);
    let _gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting");
    assert!(wait_until(DEADLINE, || answer_pid(&ask(gen1.port).unwrap()) == gen2.pid));
    let stats = prober.stop();
    assert!(stats.failures.is_empty(), "failed requests: {:?}", stats.failures);
    assert!(stats.by_pid.contains_key(&gen1.pid), "{stats:?}");
    let status = g
        .wait_timeout(DEADLINE)
        .expect("generation 1 exits after handing over");
    assert!(status.success(), "{status}");
}

#[test]
fn a_child_that_never_gets_ready_is_killed_at_the_ready_timeout() {
    let dir = TempDir::new("hang-once");
    let marker = dir.path().join("hung");
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_HANG_ONCE", marker.to_str().unwrap()),
            ("PROBE_READY_TIMEOUT_MS", "1000"),
        ],
    ));
    let prober = Prober::start(gen1.port, Duration::from_millis(1));
    let hung = restart(&mut g, gen1.pid, 2);
    let _hung_guard = PidGuard(hung.pid);
    g.expect_line(&format!("probe hanging pid={}", hung.pid));
    let log = g.expect_log("restart failed: this generation keeps serving generation=1 next=2 ");
    assert!(log.contains("reason=not ready after 1.0 s killed=true"), "{log}");
    assert!(reaped(hung.pid), "the hung child is killed and reaped");

    let gen2 = restart(&mut g, gen1.pid, 2);
    let _gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting");
    let stats = prober.stop();
    assert!(stats.failures.is_empty(), "failed requests: {:?}", stats.failures);
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

#[test]
fn after_the_handover_the_old_process_accepts_nothing() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    let gen2 = restart(&mut g, gen1.pid, 2);
    let _gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting generation=1 ");
    // Every connection for two seconds, one per millisecond, is the new process's.
    let until = Instant::now() + Duration::from_secs(2);
    let mut answers = 0;
    while Instant::now() < until {
        let answer = ask(gen1.port).expect("no connection is refused");
        assert_eq!(
            answer_pid(&answer),
            gen2.pid,
            "answered by the old process after the hand-over"
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(answers > 100, "only {answers} answers in 2 s");
    // With no connection left, the old process is gone.
    let status = g.wait_timeout(DEADLINE).expect("generation 1 exits");
    assert!(status.success(), "{status}");
}

#[test]
fn twenty_sigusr2_in_a_second_make_one_new_generation() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    // Hold a connection so generation 1 stays alive (draining) while the signals arrive.
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    for _ in 0..20 {
        signal(gen1.pid, Signal::SIGUSR2);
        std::thread::sleep(Duration::from_millis(50)); // pacing, not synchronisation
    }
    let gen2 = parse_probe(&g.expect_line("probe version="));
    let gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting generation=1 ");
    drop(held);
    let status = g.wait_timeout(DEADLINE).expect("generation 1 exits");
    assert!(status.success(), "{status}");
    // Every line, once generation 2 (which holds the output pipes too) is gone.
    drop(gen2_guard);
    let seen = g.output_after_exit();
    let started = seen
        .iter()
        .filter(|l| l.contains("restart: started the next generation"))
        .count();
    let generations = seen.iter().filter(|l| l.starts_with("probe version=")).count();
    assert_eq!(started, 1, "{seen:#?}");
    assert_eq!(generations, 2, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("coalesced") || l.contains("while stopping: ignored")),
        "{seen:#?}"
    );
}

#[test]
fn quick_successive_restarts_while_generation_one_still_drains() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    let mut guards = Vec::new();
    let mut current = gen1.pid;
    for number in 2..=4 {
        let next = restart(&mut g, current, number);
        guards.push(PidGuard(next.pid));
        g.expect_log(&format!("stopped accepting generation={} ", number - 1));
        assert_eq!(answer_pid(&ask(gen1.port).unwrap()), next.pid);
        current = next.pid;
    }
    // Generations 2 and 3 had no connections and are gone; generation 1 still serves its own.
    assert!(wait_until(DEADLINE, || !guards[0].is_alive() && !guards[1].is_alive()));
    assert!(is_alive(gen1.pid));
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    drop(held);
    let status = g
        .wait_timeout(DEADLINE)
        .expect("generation 1 exits once its connection closes");
    assert!(status.success(), "{status}");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), current);
}

#[test]
fn sigterm_during_a_restart_ends_both_processes() {
    let dir = TempDir::new("term-during");
    let marker = dir.path().join("hung");
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_HANG_ONCE", marker.to_str().unwrap())],
    ));
    let hung = restart(&mut g, gen1.pid, 2);
    let _hung_guard = PidGuard(hung.pid);
    g.expect_line(&format!("probe hanging pid={}", hung.pid));
    g.signal(Signal::SIGTERM);
    let status = g.wait_timeout(DEADLINE).expect("generation 1 exits");
    assert!(status.success(), "{status}");
    assert!(reaped(hung.pid), "the starting child is killed and reaped");
    g.expect_log(
        "stopping while the next generation was starting: killed it generation=1 cause=SIGTERM next=2 ",
    );
}

#[test]
fn a_binary_replaced_on_disk_is_the_one_that_runs() {
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "replace");
    let app = dir.path().join("app");
    install_program(Path::new(LIFEPROBE), &app);
    let (mut g, gen1) = start_lifeprobe(lifeprobe(&app, &[]));
    assert!(ask(gen1.port).unwrap().ends_with(" lifeprobe"));
    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe2")), &app);
    let line_gen2 = {
        signal(gen1.pid, Signal::SIGUSR2);
        g.expect_line("probe version=lifeprobe2")
    };
    let gen2 = parse_probe(&line_gen2);
    let _gen2_guard = PidGuard(gen2.pid);
    let exe = std::fs::metadata(format!("/proc/{}/exe", gen2.pid)).unwrap();
    let installed = std::fs::metadata(&app).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (exe.dev(), exe.ino()),
        (installed.dev(), installed.ino()),
        "/proc/PID/exe is the new file"
    );
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(ask(gen1.port).unwrap(), format!("{} 2 lifeprobe2", gen2.pid));
}

#[test]
fn parent_killed_mid_drain_leaves_the_child_serving() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    let gen2 = restart(&mut g, gen1.pid, 2);
    let gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting generation=1 ");
    g.signal(Signal::SIGKILL);
    g.wait_timeout(DEADLINE).expect("generation 1 is killed");
    assert!(gen2_guard.is_alive());
    for _ in 0..20 {
        assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
    }
}

#[test]
fn child_killed_before_ready_leaves_the_parent_serving() {
    let dir = TempDir::new("kill-child");
    let marker = dir.path().join("hung");
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_HANG_ONCE", marker.to_str().unwrap())],
    ));
    let prober = Prober::start(gen1.port, Duration::from_millis(1));
    let hung = restart(&mut g, gen1.pid, 2);
    g.expect_line(&format!("probe hanging pid={}", hung.pid));
    signal(hung.pid, Signal::SIGKILL);
    let log = g.expect_log("restart failed: this generation keeps serving generation=1 next=2 ");
    assert!(
        log.contains("killed by SIGKILL") || log.contains("closed its readiness pipe"),
        "{log}"
    );
    assert!(reaped(hung.pid));
    let stats = prober.stop();
    assert!(stats.failures.is_empty(), "failed requests: {:?}", stats.failures);
    assert_eq!(stats.by_pid.keys().copied().collect::<Vec<_>>(), vec![gen1.pid]);
}

#[test]
fn sigterm_drains_in_flight_connections_then_exits_zero() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    g.signal(Signal::SIGTERM);
    g.expect_line("probe stopped-accepting");
    // The open connection is still served while draining.
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    assert!(
        g.wait_timeout(Duration::from_millis(200)).is_none(),
        "exited with a connection open"
    );
    drop(held);
    let status = g.wait_timeout(DEADLINE).expect("exits once drained");
    assert!(status.success(), "{status}");
    let exit = g.expect_line("probe exiting");
    assert_eq!(field(&exit, "forced"), "false");
}

#[test]
fn a_second_sigterm_during_the_drain_stops_at_once() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[]));
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    g.signal(Signal::SIGTERM);
    g.expect_line("probe stopped-accepting");
    g.signal(Signal::SIGINT);
    let status = g.wait_timeout(DEADLINE).expect("exits at the second signal");
    assert!(status.success(), "{status}");
    let exit = g.expect_line("probe exiting");
    assert_eq!(field(&exit, "forced"), "true");
    assert_eq!(field(&exit, "unfinished"), "1");
    drop(held);
}

/// `SIGHUP` is the program's: one that does not handle it, and called `hold_signals` (which
/// holds it from the start), still ends at a `SIGHUP`, by it, as its default action says.
/// Held for ever, it was ignored: a closed terminal no longer stopped the process.
#[test]
fn sighup_held_from_the_start_ends_a_program_that_does_not_handle_it() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_HOLD_SIGNALS", "1")]));
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen1.pid);
    g.signal(Signal::SIGHUP);
    let status = g.wait_timeout(DEADLINE).expect("SIGHUP ends it");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status}");
}

/// `hold_signals()` with `handle_signals(false)`: nobody takes the stop signals, which would
/// stay pending for ever. Said at the start, with what to do.
#[test]
fn signals_held_that_gracenet_does_not_handle_are_warned_of() {
    let (mut g, _gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_HOLD_SIGNALS", "1"), ("PROBE_OWN_SIGNALS", "1")],
    ));
    let line = g.expect_log("gracenet does not handle them (handle_signals(false))");
    assert!(line.contains("gracenet::unblock_in_this_thread"), "{line}");
}

/// After the drain has ended, a stop signal gets its default action, as if no handler were
/// installed, even once the program's runtime is gone (the lifecycle's task cannot run to
/// give it): a program busy after `wait()` still ends at `SIGTERM`, by it.
#[test]
fn a_stop_after_the_drain_ended_gets_its_default_action_with_the_runtime_gone() {
    let (mut g, _gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_LINGER_MS", "120000")]));
    g.signal(Signal::SIGTERM);
    g.expect_line("probe exiting");
    g.expect_line("probe lingering");
    g.signal(Signal::SIGTERM);
    let status = g
        .wait_timeout(DEADLINE)
        .expect("a SIGTERM after the drain ends the process");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "ended by the signal: {status}"
    );
}

#[test]
fn the_stop_timeout_ends_a_drain_that_does_not_finish() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_STOP_TIMEOUT_MS", "300")]));
    let held = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&held).unwrap()), gen1.pid);
    g.signal(Signal::SIGTERM);
    let status = g.wait_timeout(DEADLINE).expect("exits at the stop timeout");
    assert!(status.success(), "{status}");
    let exit = g.expect_line("probe exiting");
    assert_eq!(field(&exit, "forced"), "true");
    drop(held);
}

#[test]
fn the_pid_file_names_the_serving_process_and_goes_at_the_final_stop() {
    let dir = TempDir::new("pidfile");
    let pid_file: PathBuf = dir.path().join("app.pid");
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_PID_FILE", pid_file.to_str().unwrap())],
    ));
    let read = || {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(read(), gen1.pid.to_string());
    let gen2 = restart(&mut g, gen1.pid, 2);
    let gen2_guard = PidGuard(gen2.pid);
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(
        read(),
        gen2.pid.to_string(),
        "the new generation took it over when ready"
    );
    let status = g.wait_timeout(DEADLINE).expect("generation 1 exits");
    assert!(status.success(), "{status}");
    assert_eq!(
        read(),
        gen2.pid.to_string(),
        "the old generation leaves its successor's file"
    );
    signal(gen2.pid, Signal::SIGTERM);
    g.expect_line(&format!("probe exiting pid={}", gen2.pid));
    assert!(wait_until(DEADLINE, || !gen2_guard.is_alive()));
    assert!(!pid_file.exists(), "removed at the final stop");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file left"
    );
}

/// Whether the kernel lets this process (and so the probe it starts, with the same
/// credentials and limits) leave the idle CPU priority: `CAP_SYS_NICE` in the initial user
/// namespace, or an `RLIMIT_NICE` of at least 20 (nice 0). Never on gracenet's portable path,
/// which has no `SCHED_IDLE`.
fn may_leave_idle_priority() -> bool {
    if cfg!(gracenet_portable) {
        return false;
    }
    let initial_namespace = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    let cap_sys_nice = grace_tests::status_mask("self", "CapEff").is_some_and(|caps| caps & (1 << 23) != 0);
    let (nice_limit, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE).unwrap();
    (initial_namespace && cap_sys_nice) || nice_limit >= 20
}

fn all_threads(policies: &str, policy: &str) -> bool {
    !policies.is_empty() && policies.split(',').all(|p| p == policy)
}

#[test]
fn the_next_generation_starts_at_idle_priority_and_serves_at_normal_priority() {
    // An idle limit longer than any start: on a busy machine the default (100 ms) may return
    // the starved new generation to normal priority before it prints its first line.
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_REPORT_POLICY", "1"), ("PROBE_IDLE_LIMIT_MS", "60000")],
    ));
    let line = g.expect_line(&format!("probe ready pid={}", gen1.pid));
    assert!(all_threads(field(&line, "policy"), "normal"), "{line}");

    signal(gen1.pid, Signal::SIGUSR2);
    let starting = g.expect_line("probe version=");
    let gen2 = parse_probe(&starting);
    let _gen2_guard = PidGuard(gen2.pid);
    // Before it is ready: every thread at idle priority, where it will be let back.
    let expected = if may_leave_idle_priority() {
        "idle"
    } else {
        "normal"
    };
    assert!(
        all_threads(field(&starting, "policy"), expected),
        "expected {expected}: {starting}"
    );
    // Ready, and serving: every thread back at normal priority.
    let ready = g.expect_line(&format!("probe ready pid={}", gen2.pid));
    assert!(all_threads(field(&ready, "policy"), "normal"), "{ready}");
    g.expect_log("stopped accepting");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

#[test]
fn the_next_generation_starts_at_normal_priority_when_idle_start_is_off() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_REPORT_POLICY", "1"), ("PROBE_NO_IDLE_START", "1")],
    ));
    signal(gen1.pid, Signal::SIGUSR2);
    let starting = g.expect_line("probe version=");
    let gen2 = parse_probe(&starting);
    let _gen2_guard = PidGuard(gen2.pid);
    assert!(all_threads(field(&starting, "policy"), "normal"), "{starting}");
    let ready = g.expect_line(&format!("probe ready pid={}", gen2.pid));
    assert!(all_threads(field(&ready, "policy"), "normal"), "{ready}");
}

#[test]
fn a_next_generation_returned_to_normal_priority_before_it_read_its_start_stays_there() {
    // Generation 2 gets to its first call into gracenet only after its parent's idle limit
    // (100 ms) returned it to normal priority: it must not put itself back at idle priority
    // for the rest of its start (where a busy machine starves it for seconds: runnable, a few
    // ms of CPU, no signal handlers yet).
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_IDLE_LIMIT_MS", "100"),
            ("PROBE_NEXT_START_DELAY_MS", "600"),
            ("PROBE_NEXT_READY_DELAY_MS", "300"),
        ],
    ));
    signal(gen1.pid, Signal::SIGUSR2);
    if may_leave_idle_priority() {
        g.expect_log("still starting at idle CPU priority: returned it to normal priority next=2 ");
    }
    let starting = g.expect_line("probe version=");
    let gen2 = parse_probe(&starting);
    let _gen2_guard = PidGuard(gen2.pid);
    assert!(all_threads(field(&starting, "policy"), "normal"), "{starting}");
    let before = g.expect_line(&format!("probe before-ready pid={}", gen2.pid));
    assert!(all_threads(field(&before, "policy"), "normal"), "{before}");
    g.expect_log("stopped accepting");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

#[test]
fn a_next_generation_still_starting_at_the_idle_limit_is_returned_to_normal_priority() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_IDLE_LIMIT_MS", "300"),
            ("PROBE_NEXT_READY_DELAY_MS", "1500"),
        ],
    ));
    signal(gen1.pid, Signal::SIGUSR2);
    let starting = g.expect_line("probe version=");
    let gen2 = parse_probe(&starting);
    let _gen2_guard = PidGuard(gen2.pid);
    if may_leave_idle_priority() {
        // Idle, or already returned by the limit when a busy machine starved it that long
        // (that it starts at idle priority is the test above's).
        let policy = field(&starting, "policy");
        assert!(
            all_threads(policy, "idle") || all_threads(policy, "normal"),
            "{starting}"
        );
        let log = g.expect_log("still starting at idle CPU priority: returned it to normal priority next=2 ");
        assert!(log.contains(&format!(" pid={} after_s=0.3 ", gen2.pid)), "{log}");
    }
    // Still not ready (it waits 1.5 s), and already at normal priority.
    let before = g.expect_line(&format!("probe before-ready pid={}", gen2.pid));
    assert!(all_threads(field(&before, "policy"), "normal"), "{before}");
    g.expect_log("stopped accepting");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

/// A connection offered to the next generation when none took over (no restart ran) is
/// refused as that, `Error::NoSuccessor`, not as an I/O failure, and stays served here.
#[test]
fn a_hand_over_with_no_successor_is_refused_as_such_and_the_connection_stays() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_HAND_OVER_EARLY", "1")]));
    let conn = connect(gen1.port);
    assert_eq!(answer_pid(&converse(&conn).unwrap()), gen1.pid, "served here");
    let line = g.expect_line("probe hand-over ");
    assert_eq!(
        line,
        format!("probe hand-over refused=no-successor pid={}", gen1.pid)
    );
}
