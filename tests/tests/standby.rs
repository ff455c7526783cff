//! The standby (`GenerationBuilder::standby`): the next generation's process started ahead and
//! woken by the restart, driven from outside with real processes and signals. What it must
//! never do: serve before it is woken, run a program that was replaced since it started,
//! outlive the server, or make a restart fail when it is gone.

use std::path::Path;
use std::time::{Duration, Instant};

use grace_tests::{
    DEADLINE, PidGuard, TempDir, answer_pid, ask, field, install_program, is_alive, lifeprobe, parse_probe,
    signal, standby_started, start_lifeprobe, wait_until, zombies_of,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

#[test]
fn a_restart_wakes_the_standby_which_takes_over_with_the_state_and_starts_its_own() {
    let run = TempDir::new("standby-wake");
    let control = run.path().join("control.sock");
    let control_var = control.to_str().unwrap().to_owned();
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STANDBY", "1"),
            ("PROBE_CONTROL_SOCKET", &control_var),
            ("PROBE_STATE", "1"),
            ("PROBE_REPORT_POLICY", "1"),
        ],
    ));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    // It ran main's first steps, then waits in its first call into gracenet: no generation,
    // no listener of its own; the server names it.
    g.expect_line(&format!("probe main pid={standby}"));
    assert!(is_alive(standby));
    let status = gracenet::control::Client::new(&control).status().unwrap();
    assert!(
        status.lines().any(|l| l == format!("standby: pid {standby}")),
        "{status}"
    );
    for _ in 0..5 {
        assert_eq!(
            answer_pid(&ask(gen1.port).unwrap()),
            gen1.pid,
            "only generation 1 serves"
        );
    }
    let unwoken = g.seen();
    assert!(
        !unwoken
            .iter()
            .any(|l| l.starts_with("probe version=") && l.contains(&format!("pid={standby} "))),
        "the standby started its generation before it was woken: {unwoken:#?}"
    );

    signal(gen1.pid, Signal::SIGUSR2);
    // Woken by the signal thread at the signal itself, before the lifecycle's task ran.
    let woke = g.expect_log(&format!("restart: woke the standby pid={standby} "));
    assert!(woke.contains(" at_signal=true "), "{woke}");
    let line = g.expect_line("probe version=");
    let gen2 = parse_probe(&line);
    assert_eq!(gen2.pid, standby, "the standby is generation 2: {line}");
    assert_eq!(field(&line, "generation"), "2", "{line}");
    // Woken at normal priority: the rest of its start is the restart's.
    assert!(field(&line, "policy").split(',').all(|p| p == "normal"), "{line}");
    // The state was handed at the restart, not when the standby started.
    let state = g.expect_line("probe state count=");
    assert!(
        state.starts_with("probe state count=2 ") && state.ends_with(&format!("pid={standby}")),
        "{state}"
    );
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), standby);
    assert!(
        wait_until(DEADLINE, || !is_alive(gen1.pid)),
        "generation 1 did not exit"
    );

    // Generation 2 keeps a standby of its own, named in its status.
    let next = standby_started(&mut g, 2);
    let _next_guard = PidGuard(next);
    assert_ne!(next, standby);
    let status = gracenet::control::Client::new(&control).status().unwrap();
    assert!(status.lines().any(|l| l == format!("pid: {standby}")), "{status}");
    assert!(
        status.lines().any(|l| l == format!("standby: pid {next}")),
        "{status}"
    );
}

#[test]
fn a_program_replaced_since_the_standby_started_runs_fresh_and_the_standby_is_let_go() {
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "standby-replace");
    let app = dir.path().join("app");
    install_program(Path::new(LIFEPROBE), &app);
    let (mut g, gen1) = start_lifeprobe(lifeprobe(&app, &[("PROBE_STANDBY", "1")]));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));
    install_program(Path::new(env!("CARGO_BIN_EXE_lifeprobe2")), &app);

    signal(gen1.pid, Signal::SIGUSR2);
    let let_go = g.expect_log(&format!("let the standby go pid={standby} "));
    assert!(let_go.contains("the program file has changed"), "{let_go}");
    let gen2 = parse_probe(&g.expect_line("probe version=lifeprobe2"));
    let _gen2_guard = PidGuard(gen2.pid);
    assert_ne!(gen2.pid, standby);
    assert!(!is_alive(standby), "the stale standby is gone");
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(ask(gen1.port).unwrap(), format!("{} 2 lifeprobe2", gen2.pid));
}

#[test]
fn a_standby_that_exited_costs_the_restart_nothing() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_STANDBY", "1")]));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));
    signal(standby, Signal::SIGKILL);
    let let_go = g.expect_log(&format!("let the standby go pid={standby} "));
    assert!(let_go.contains("exited before a restart took it"), "{let_go}");

    signal(gen1.pid, Signal::SIGUSR2);
    let gen2 = parse_probe(&g.expect_line("probe version="));
    let _gen2_guard = PidGuard(gen2.pid);
    assert_ne!(gen2.pid, standby);
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

/// A standby that cannot take the wake (stopped here; swapped out or starved alike) does not
/// answer it: the restart lets it go at once (killed, reaped) and starts a fresh process for
/// the same request, instead of waiting the whole ready timeout for a process that never runs.
#[test]
fn a_stopped_standby_is_let_go_at_the_wake_and_a_fresh_process_takes_the_same_restart() {
    let run = TempDir::new("standby-stopped");
    let control = run.path().join("control.sock");
    let control_var = control.to_str().unwrap().to_owned();
    let ready_timeout = Duration::from_secs(20);
    let (mut g, gen1) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STANDBY", "1"),
            ("PROBE_CONTROL_SOCKET", &control_var),
            ("PROBE_READY_TIMEOUT_MS", &ready_timeout.as_millis().to_string()),
        ],
    ));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));
    signal(standby, Signal::SIGSTOP);
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(format!(
            "/proc/{standby}/stat"
        ))
        .is_ok_and(|s| s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T')))),
        "the standby did not stop"
    );

    let asked = Instant::now();
    let answer = gracenet::control::Client::new(&control).restart();
    let took = asked.elapsed();
    println!("restart with a stopped standby took {took:?}");
    let answer = answer.unwrap_or_else(|e| panic!("the restart failed after {took:?}: {e}"));
    // Half the ready timeout: proof it was not waited out (the fresh start itself takes
    // milliseconds).
    assert!(
        took < ready_timeout / 2,
        "the restart took {took:?}: it waited for the stopped standby"
    );
    let let_go = g.expect_log(&format!("let the standby go pid={standby} "));
    assert!(let_go.contains("did not acknowledge the wake"), "{let_go}");
    let gen2 = parse_probe(&g.expect_line("probe version="));
    let _gen2_guard = PidGuard(gen2.pid);
    assert_ne!(gen2.pid, standby, "the stopped standby cannot serve");
    assert_eq!(answer, format!("generation 2 serving with pid {}", gen2.pid));
    // Killed and reaped: no process, not even a zombie, is left of it.
    assert!(
        wait_until(DEADLINE, || !Path::new(&format!("/proc/{standby}")).exists()),
        "the stopped standby is still there"
    );
    assert!(zombies_of(gen1.pid).is_empty(), "{:?}", zombies_of(gen1.pid));
    g.expect_log("stopped accepting generation=1 ");
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), gen2.pid);
}

#[test]
fn the_standby_goes_when_the_server_stops() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_STANDBY", "1")]));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));
    signal(gen1.pid, Signal::SIGTERM);
    let status = g.wait_timeout(DEADLINE).expect("generation 1 did not stop");
    assert!(status.success(), "{status}");
    assert!(!is_alive(standby), "the standby outlived the server");
}

#[test]
fn a_standby_whose_server_was_killed_exits_by_itself() {
    let (mut g, gen1) = start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_STANDBY", "1")]));
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    g.expect_line(&format!("probe main pid={standby}"));
    signal(gen1.pid, Signal::SIGKILL);
    let _ = g.wait_timeout(DEADLINE);
    // Its channel to the server closed: it leaves without serving.
    assert!(
        wait_until(DEADLINE, || !is_alive(standby)),
        "the standby outlived its killed server"
    );
    let seen = g.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("probe version=") && l.contains(&format!("pid={standby} "))),
        "the orphaned standby started serving: {seen:#?}"
    );
}

/// Whether `pid` ignores every one of `signals`, as `/proc/PID/status` shows (its `SigIgn`
/// mask).
fn ignores(pid: u32, signals: &[i32]) -> bool {
    grace_tests::status_mask(&pid.to_string(), "SigIgn")
        .is_some_and(|mask| signals.iter().all(|s| mask & (1 << (s - 1)) != 0))
}

/// The restart and stop signals a standby ignores while it waits.
const STANDBY_IGNORES: [i32; 4] = [libc::SIGUSR2, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A `SIGUSR2` sent to every process of the program (`kill $(pgrep app)`, `systemctl kill -s
/// USR2`, whose default is the whole cgroup) reaches the standby too: that one is the restart
/// that wakes it, and must neither kill it (its default action, without `hold_signals`) nor
/// restart it a second time once it serves (held, with `hold_signals`). So must a stop signal
/// sent to the standby alone before it (`SIGTERM`, `SIGINT`, `SIGHUP`): held, it stopped the
/// standby the moment it took over (nothing served), or failed the restart.
fn restart_signal_to_every_process(hold_signals: bool) {
    let mut env = vec![("PROBE_STANDBY", "1")];
    if hold_signals {
        env.push(("PROBE_HOLD_SIGNALS", "1"));
    }
    // Every process of the run, whatever this test fails to name (a generation started by a
    // restart that should not have happened, and its standby), is killed at the end.
    let mut cmd = lifeprobe(LIFEPROBE, &env);
    let _sweep = grace_tests::Sweep::new(&mut cmd);
    let (mut g, gen1) = start_lifeprobe(cmd);
    let standby = standby_started(&mut g, 1);
    let _standby_guard = PidGuard(standby);
    assert!(
        wait_until(DEADLINE, || ignores(standby, &STANDBY_IGNORES)),
        "the waiting standby does not ignore the restart and stop signals"
    );
    for stop in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signal(standby, stop);
    }
    // The standby's copy first: the one a restart of every process could deliver while the
    // standby still waits.
    signal(standby, Signal::SIGUSR2);
    signal(gen1.pid, Signal::SIGUSR2);
    let line = g.expect_line("probe version=");
    let gen2 = parse_probe(&line);
    assert_eq!(
        gen2.pid, standby,
        "the standby, still there, takes the restart: {line}"
    );
    assert!(
        !ignores(standby, &[libc::SIGUSR2]) && !ignores(standby, &[libc::SIGTERM]),
        "generation 2 handles SIGUSR2 and SIGTERM again"
    );
    // Generation 2's logs come before generation 1's, which follows its readiness.
    g.expect_log("stopped accepting generation=1 ");
    let seen = g.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("restart requested before this generation is ready")),
        "the standby kept the signal and restarts again: {seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains(&format!("probe stopped-accepting pid={standby}"))),
        "the standby kept a stop signal and stopped as it took over: {seen:#?}"
    );
    assert_eq!(answer_pid(&ask(gen1.port).unwrap()), standby);
    // And a restart asked of it now is one.
    signal(standby, Signal::SIGUSR2);
    let line = g.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "3", "{line}");
    let _gen3 = PidGuard(parse_probe(&line).pid);
}

#[test]
fn a_restart_signal_to_every_process_restarts_once() {
    restart_signal_to_every_process(false);
}

#[test]
fn a_restart_signal_to_every_process_restarts_once_with_signals_held() {
    restart_signal_to_every_process(true);
}
