//! gracenet's supervisor: one stable pid that starts generation 1, forwards signals to the
//! serving generation, reaps everything, and exits with the last generation's status. Also as
//! pid 1 of a new pid namespace, as in a container.

use std::process::Command;
use std::time::Duration;

use grace_tests::{
    DEADLINE, PidGuard, Prober, ProcessGuard, SWEEP_MARK as MARK, Sweep, command, field, is_alive,
    start_lifeprobe, wait_until, zombies_of,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

/// Generation 1 of a supervised lifeprobe, serving.
struct Supervised {
    sup: ProcessGuard,
    gen1: u32,
    port: u16,
    /// Kills generation 1 at the end, whatever happens.
    guard: PidGuard,
}

/// Starts lifeprobe under its supervisor with `env` and waits for generation 1 to serve.
fn supervised(env: &[(&str, &str)]) -> Supervised {
    let (sup, gen1) = start_lifeprobe(command(LIFEPROBE, &["127.0.0.1:0", "--supervise"], env));
    Supervised {
        sup,
        gen1: gen1.pid,
        port: gen1.port,
        guard: PidGuard(gen1.pid),
    }
}

/// [`supervised`] with no knobs: the supervisor, generation 1's pid, its guard.
fn start_supervised() -> (ProcessGuard, u32, PidGuard) {
    let s = supervised(&[]);
    (s.sup, s.gen1, s.guard)
}

/// Sends SIGUSR2 to the supervisor, which forwards it to `serving`; the next generation's pid
/// (once it has printed its first line) and its guard.
fn forwarded_restart(sup: &mut ProcessGuard, serving: u32) -> (u32, PidGuard) {
    sup.signal(Signal::SIGUSR2);
    expect_forwarded(sup, Signal::SIGUSR2, serving);
    let next = probe_pid(&sup.expect_line("probe version="));
    (next, PidGuard(next))
}

/// Waits for the supervisor's line saying it forwards `signal` to `pid`, the serving
/// generation (the fields in the order the supervisor writes them).
fn expect_forwarded(sup: &mut ProcessGuard, signal: Signal, pid: u32) -> String {
    let needle = format!(
        "forwarding a signal to the serving generation supervisor={} pid={pid} signal={}",
        sup.pid(),
        signal.as_str()
    );
    sup.expect_log(&needle)
}

/// Waits for the supervisor's line saying `pid`, generation `number`, serves now in place of
/// `previous`.
fn expect_took_over(sup: &mut ProcessGuard, number: u64, pid: u32, previous: u32) -> String {
    let needle = format!(
        "a new generation is serving supervisor={} generation={number} pid={pid} previous={previous}",
        sup.pid()
    );
    sup.expect_log(&needle)
}

fn probe_pid(line: &str) -> u32 {
    field(line, "pid").parse().unwrap()
}

#[test]
fn ten_restarts_under_load_behind_one_stable_pid() {
    let Supervised {
        mut sup,
        gen1: mut serving,
        port,
        guard,
    } = supervised(&[]);
    let supervisor = sup.pid();
    assert_ne!(serving, supervisor, "the supervisor is not a generation");
    let mut guards = vec![guard];
    let prober = Prober::start(port, Duration::from_millis(1));
    for number in 2..=11 {
        sup.signal(Signal::SIGUSR2);
        let forwarded = sup.expect_log("forwarding a signal to the serving generation");
        assert_eq!(field(&forwarded, "signal"), "SIGUSR2", "{forwarded}");
        assert_eq!(field(&forwarded, "pid"), serving.to_string(), "{forwarded}");
        let line = sup.expect_line("probe version=");
        assert_eq!(field(&line, "generation"), number.to_string());
        let new = probe_pid(&line);
        guards.push(PidGuard(new));
        expect_took_over(&mut sup, number, new, serving);
        sup.expect_log(&format!("stopped accepting generation={} ", number - 1));
        let old = serving;
        serving = new;
        // The old generation drains and goes; the supervisor reaps it: no zombie lingers.
        assert!(
            wait_until(DEADLINE, || !is_alive(old) && zombies_of(supervisor).is_empty()),
            "zombies: {:?}",
            zombies_of(supervisor)
        );
        assert!(is_alive(supervisor), "the supervisor's pid never changes");
    }
    let stats = prober.stop();
    assert!(stats.failures.is_empty(), "failed requests: {:?}", stats.failures);
    assert!(stats.by_pid.contains_key(&serving), "{:?}", stats.by_pid);

    sup.signal(Signal::SIGTERM);
    expect_forwarded(&mut sup, Signal::SIGTERM, serving);
    let status = sup.wait_timeout(DEADLINE).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!is_alive(serving));
}

#[test]
fn the_supervisors_lines_are_a_fixed_message_then_its_fields() {
    // A restart, a crash restart and a stop: the supervisor's everyday lines.
    let (mut sup, gen1, _g1) = start_supervised();
    let supervisor = sup.pid();
    sup.signal(Signal::SIGUSR2);
    let gen2 = probe_pid(&sup.expect_line("probe version="));
    let _g2 = PidGuard(gen2);
    // Generation 2 told the supervisor it serves before it told generation 1.
    sup.expect_log("stopped accepting generation=1 ");
    send(gen2, Signal::SIGKILL);
    sup.expect_log("died with no successor");
    let gen3 = probe_pid(&sup.expect_line("probe version="));
    let _g3 = PidGuard(gen3);
    sup.signal(Signal::SIGTERM);
    let status = sup.wait_timeout(DEADLINE).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{status}");

    let output = sup.output_after_exit();
    let pids = [supervisor, gen1, gen2, gen3].map(|p| p.to_string());
    // The supervisor's module and its submodules (`gracenet::supervisor::ending`, ...).
    let logged_by_supervisor = |l: &str| -> Option<String> {
        let (_, rest) = l.split_once(" gracenet::supervisor")?;
        let (module, logged) = rest.split_once(": ")?;
        (module.is_empty() || module.starts_with("::")).then(|| logged.to_owned())
    };
    let lines: Vec<(&String, String)> = output
        .iter()
        .filter_map(|l| logged_by_supervisor(l).map(|logged| (l, logged)))
        .collect();
    // Started, forwarded ×2, took over, died and restarting, restarted, ended, exiting.
    assert!(lines.len() >= 8, "{output:#?}");
    for (line, logged) in lines {
        let (message, fields) = logged
            .split_once(" supervisor=")
            .unwrap_or_else(|| panic!("no supervisor field: {line}"));
        // The values are in the fields, never in the message: one message per event.
        assert!(
            !pids.iter().any(|p| message.contains(p.as_str())),
            "a pid in the message: {line}"
        );
        assert_eq!(
            field(&format!("supervisor={fields}"), "supervisor"),
            pids[0],
            "{line}"
        );
    }
}

/// Sends `signal` to `pid`.
fn send(pid: u32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

#[test]
fn a_crashed_serving_generation_is_replaced_on_the_same_sockets_and_no_connection_is_refused() {
    let Supervised {
        mut sup,
        gen1: mut serving,
        port,
        guard,
    } = supervised(&[]);
    let supervisor = sup.pid();
    let mut guards = vec![guard];
    // One new connection per question, without a pause: connections keep arriving while the
    // serving process is dead.
    let prober = Prober::start(port, Duration::ZERO);
    for number in 2..=4 {
        // Let it serve a while (200 answers of our own) before it dies.
        for _ in 0..200 {
            assert_eq!(grace_tests::answer_pid(&grace_tests::ask(port).unwrap()), serving);
        }
        send(serving, Signal::SIGKILL);
        let died = sup.expect_log("died with no successor");
        assert_eq!(field(&died, "pid"), serving.to_string(), "{died}");
        assert!(died.contains("status=killed by SIGKILL"), "{died}");
        let line = sup.expect_line("probe version=");
        assert_eq!(field(&line, "generation"), number.to_string(), "{line}");
        serving = probe_pid(&line);
        guards.push(PidGuard(serving));
        // Its sockets are the same ones: the port did not change.
        assert!(field(&line, "addr").ends_with(&format!(":{port}")), "{line}");
        assert!(is_alive(supervisor), "the supervisor's pid never changes");
    }
    assert!(wait_until(DEADLINE, || grace_tests::ask(port)
        .is_ok_and(|a| grace_tests::answer_pid(&a) == serving)));
    let stats = prober.stop();
    let refused: Vec<_> = stats.failures.iter().filter(|f| f.contains("refused")).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Only a question in flight on a killed process may fail: one per kill at most.
    assert!(stats.failures.len() <= 3, "failures: {:?}", stats.failures);
    assert!(
        stats.by_pid.len() >= 4,
        "every generation answered: {:?}",
        stats.by_pid
    );

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(0));
}

#[test]
fn a_crash_loop_backs_off_then_gives_up_with_a_clear_line_and_a_failure_status() {
    let (mut sup, gen1, _g) = start_supervised();
    let mut serving = gen1;
    let mut guards = Vec::new();
    for _ in 0..4 {
        send(serving, Signal::SIGKILL);
        sup.expect_log("died with no successor");
        let line = sup.expect_line("probe version=");
        serving = probe_pid(&line);
        guards.push(PidGuard(serving));
    }
    send(serving, Signal::SIGKILL);
    let line = sup.expect_log("giving up");
    assert_eq!(field(&line, "crashes"), "5", "{line}");
    assert_eq!(field(&line, "window_s"), "30", "{line}");
    let status = sup.wait_timeout(DEADLINE).expect("the supervisor exits");
    assert_eq!(status.code(), Some(128 + 9), "{status}");
}

#[test]
fn generation_1_failing_before_ready_ends_the_supervisor_with_its_status() {
    // A start-up error (here: an address already in use) is not a crash to retry.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(LIFEPROBE);
    cmd.arg(taken.local_addr().unwrap().to_string())
        .arg("--supervise");
    let mut sup = ProcessGuard::spawn(cmd);
    sup.expect_log("exited before it was ready");
    let status = sup.wait_timeout(DEADLINE).expect("the supervisor exits");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// Opens a connection to generation 1 and checks it answers: the drain will wait for it.
fn hold_connection(port: u16, gen1: u32) -> std::net::TcpStream {
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(
        grace_tests::answer_pid(&grace_tests::converse(&conn).unwrap()),
        gen1
    );
    conn
}

/// Supervised lifeprobe, restarted once while a connection holds generation 1 draining.
/// Returns the supervisor, the port, generation 1 and 2, their guards, and the connection.
fn restarted_with_gen1_draining() -> (ProcessGuard, u16, u32, u32, Vec<PidGuard>, std::net::TcpStream) {
    let Supervised {
        mut sup,
        gen1,
        port,
        guard,
    } = supervised(&[("PROBE_STOP_TIMEOUT_MS", "20000")]);
    let mut guards = vec![guard];
    let conn = hold_connection(port, gen1);
    sup.signal(Signal::SIGUSR2);
    let gen2 = probe_pid(&sup.expect_line("probe version="));
    guards.push(PidGuard(gen2));
    sup.expect_log("stopped accepting generation=1 connections=1");
    (sup, port, gen1, gen2, guards, conn)
}

#[test]
fn a_stop_right_after_a_restart_waits_for_every_generation_then_exits() {
    let (mut sup, _port, gen1, gen2, _guards, conn) = restarted_with_gen1_draining();
    sup.signal(Signal::SIGTERM);
    expect_forwarded(&mut sup, Signal::SIGTERM, gen2);
    // Generation 2 has nothing to drain and goes; generation 1 (its parent, which reaps it)
    // still drains our connection: the supervisor stays.
    assert!(wait_until(DEADLINE, || !is_alive(gen2)), "generation 2 exits");
    let supervisor = sup.pid();
    sup.expect_log(&format!(
        "the serving generation ended supervisor={supervisor} generation=2 pid={gen2} "
    ));
    assert!(is_alive(gen1), "generation 1 still drains");
    assert!(
        sup.wait_timeout(Duration::from_millis(300)).is_none(),
        "the supervisor waits for generation 1"
    );
    drop(conn);
    let status = sup
        .wait_timeout(DEADLINE)
        .expect("the supervisor exits once all are gone");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!is_alive(gen1));
}

#[test]
fn a_second_sigterm_delivered_before_the_supervisor_looks_is_forwarded_and_stops_at_once() {
    let Supervised {
        mut sup,
        gen1,
        port,
        guard: _guard,
    } = supervised(&[("PROBE_STOP_TIMEOUT_MS", "20000")]);
    // A connection the drain would wait for, up to the 20 s stop timeout.
    let _conn = hold_connection(port, gen1);
    let sent = std::time::Instant::now();
    grace_tests::deliver_together(sup.pid(), Signal::SIGTERM, 2);
    expect_forwarded(&mut sup, Signal::SIGTERM, gen1);
    expect_forwarded(&mut sup, Signal::SIGTERM, gen1);
    let exit = sup.expect_line(&format!("probe exiting pid={gen1}"));
    assert_eq!(field(&exit, "forced"), "true", "stopped at once: {exit}");
    let status = sup.wait_timeout(DEADLINE).expect("the supervisor exits");
    let took = sent.elapsed();
    assert!(status.code().is_some(), "{status}");
    // Generously below the 20 s drain: the second SIGTERM stopped it at once.
    assert!(
        took < Duration::from_secs(10),
        "exited only {took:?} after two SIGTERMs"
    );
}

#[test]
fn a_killed_generation_2_is_replaced_while_its_parent_still_drains() {
    let (mut sup, port, gen1, gen2, mut guards, conn) = restarted_with_gen1_draining();
    // Generation 1 reaps generation 2: the supervisor learns of the exit from its pidfd.
    send(gen2, Signal::SIGKILL);
    let died = sup.expect_log("died with no successor");
    assert!(died.contains(&format!(" generation=2 pid={gen2} ")), "{died}");
    let line = sup.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "3");
    let gen3 = probe_pid(&line);
    guards.push(PidGuard(gen3));
    assert!(wait_until(DEADLINE, || grace_tests::ask(port)
        .is_ok_and(|a| grace_tests::answer_pid(&a) == gen3)));
    // Generation 1 finishes its drain undisturbed.
    assert_eq!(
        grace_tests::answer_pid(&grace_tests::converse(&conn).unwrap()),
        gen1
    );
    drop(conn);
    assert!(wait_until(DEADLINE, || !is_alive(gen1)));
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(0));
}

#[test]
fn a_sigusr2_before_generation_1_is_ready_is_held_until_it_is() {
    let mut cmd = Command::new(LIFEPROBE);
    cmd.args(["127.0.0.1:0", "--supervise"])
        .env("PROBE_READY_DELAY_MS", "500");
    let mut sup = ProcessGuard::spawn(cmd);
    let gen1 = probe_pid(&sup.expect_line("probe delaying-ready"));
    let _g1 = PidGuard(gen1);
    sup.signal(Signal::SIGUSR2);
    sup.expect_log("holding it until then");
    sup.expect_log("passing on the SIGUSR2 held for it");
    let line = sup.expect_line("probe version=lifeprobe generation=2");
    let _g2 = PidGuard(probe_pid(&line));
    // Generation 1 was not killed by the signal: it drained and exited normally.
    let exit = sup.expect_line(&format!("probe exiting pid={gen1}"));
    assert_eq!(field(&exit, "forced"), "false", "{exit}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(0));
}

#[test]
fn when_the_supervisor_is_killed_the_generations_keep_serving() {
    let Supervised {
        mut sup,
        gen1,
        port,
        guard: _g,
    } = supervised(&[]);
    sup.signal(Signal::SIGKILL);
    assert!(sup.wait_timeout(DEADLINE).is_some());
    // The documented answer: generations do not depend on the supervisor.
    for _ in 0..10 {
        assert_eq!(grace_tests::answer_pid(&grace_tests::ask(port).unwrap()), gen1);
    }
    // And they still stop when asked.
    send(gen1, Signal::SIGTERM);
    assert!(wait_until(DEADLINE, || !is_alive(gen1)));
}

#[test]
fn as_pid_one_of_a_pid_namespace_a_restart_keeps_it_alive_and_serving() {
    grace_tests::require_pid_namespace();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", LIFEPROBE, "127.0.0.1:0"]);
    let mut ns = ProcessGuard::spawn(cmd);
    let unshare = ns.pid();
    let line = ns.expect_line("probe version=");
    let port: u16 = field(&line, "addr").rsplit(':').next().unwrap().parse().unwrap();
    let gen1: u32 = probe_pid(&line);
    assert_ne!(gen1, 1, "generation 1 is not the namespace's pid 1");
    ns.expect_log("ready and serving generation=1 ");
    let pid1 = grace_tests::only_child(unshare);
    let _guard = PidGuard(pid1);
    let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        nspid.ends_with("\t1"),
        "the supervisor is pid 1 in the namespace: {nspid:?}"
    );
    assert_eq!(grace_tests::answer_pid(&grace_tests::ask(port).unwrap()), gen1);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), Signal::SIGUSR2).unwrap();
    let line = ns.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "2");
    let gen2 = probe_pid(&line);
    ns.expect_log("stopped accepting generation=1 ");
    let mut last = None;
    let served = wait_until(DEADLINE, || {
        last = Some(grace_tests::ask(port).map(|a| grace_tests::answer_pid(&a)));
        matches!(last, Some(Ok(p)) if p == gen2)
    });
    assert!(
        served,
        "generation 2 (pid {gen2}) never answered; last: {last:?}; output: {:#?}",
        ns.seen()
    );
    assert!(is_alive(pid1), "the namespace's pid 1 outlives generation 1");
    assert!(
        ns.wait_timeout(Duration::from_millis(200)).is_none(),
        "the namespace is still alive"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), Signal::SIGTERM).unwrap();
    let status = ns
        .wait_timeout(DEADLINE)
        .expect("the namespace ends after a stop");
    assert!(status.success(), "{status}");
}

#[test]
fn sigint_and_sighup_reach_the_serving_generation() {
    // SIGINT: forwarded once (the generation runs in its own process group), so it drains
    // and exits 0 rather than stopping at once as a second SIGINT would make it.
    let (mut sup, gen1, _g1) = start_supervised();
    sup.signal(Signal::SIGINT);
    expect_forwarded(&mut sup, Signal::SIGINT, gen1);
    let exit = sup.expect_line(&format!("probe exiting pid={gen1}"));
    assert_eq!(
        field(&exit, "forced"),
        "false",
        "drained, not stopped at once: {exit}"
    );
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(0));

    // SIGHUP is the application's: lifeprobe does not handle it, so it ends the generation,
    // and the supervisor ends with that status.
    let (mut sup, gen1, _g2) = start_supervised();
    sup.signal(Signal::SIGHUP);
    expect_forwarded(&mut sup, Signal::SIGHUP, gen1);
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(128 + 1));
}

/// The supervisor's `SIGUSR2`, as a bit of the masks in `/proc/PID/status`.
const SIGUSR2_BIT: u64 = 1 << (Signal::SIGUSR2 as u64 - 1);

/// Whether `pid`'s main thread blocks `SIGUSR2` (`SigBlk`) and whether the process handles it
/// (`SigCgt`); `None` once it is gone.
fn sigusr2_state(pid: u32) -> Option<(bool, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|m| m & SIGUSR2_BIT != 0)
    };
    Some((mask("SigBlk:"), mask("SigCgt:")))
}

/// Waits for a line containing `needle` in the supervisor's output; fails at once, with how
/// it ended, if it exits first.
fn expect_while_alive(sup: &mut ProcessGuard, needle: &str) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(line) = sup.seen().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        if let Some(status) = sup.wait_timeout(Duration::ZERO) {
            // Its last lines may still be on their way.
            let seen = sup.output_after_exit();
            if let Some(line) = seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            panic!("the supervisor ended ({status}) before {needle:?}; its output: {seen:#?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} within {DEADLINE:?}; saw {:#?}",
            sup.seen()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_sigusr2_while_the_supervisor_is_still_starting_waits_for_it_instead_of_killing_it() {
    // The supervisor says it has started, then takes 300 ms before it supervises (a slow
    // start: a busy core, a slow set-up). A SIGUSR2 sent in that window used to end it (the
    // default action); now it waits, pending, and is held for generation 1 like any other.
    let mut cmd = Command::new(LIFEPROBE);
    cmd.args(["127.0.0.1:0", "--supervise"])
        .env("PROBE_SUPERVISOR_START_DELAY_MS", "300");
    let _sweep = Sweep::new(&mut cmd);
    let mut sup = ProcessGuard::spawn(cmd);
    sup.expect_line("probe supervisor-starting");
    sup.signal(Signal::SIGUSR2);
    expect_while_alive(&mut sup, "holding it until then");
    let gen1 = probe_pid(&expect_while_alive(
        &mut sup,
        "probe version=lifeprobe generation=1",
    ));
    let _g1 = PidGuard(gen1);
    expect_while_alive(&mut sup, "passing on the SIGUSR2 held for it");
    let gen2 = probe_pid(&expect_while_alive(
        &mut sup,
        "probe version=lifeprobe generation=2",
    ));
    let _g2 = PidGuard(gen2);
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_timeout(DEADLINE).expect("exits").code(), Some(0));
}

/// One start of a supervisor with a `SIGUSR2` sent `jitter` after its signals became safe
/// (blocked or handled, whichever the kernel shows first): asserts it lives through it and
/// restarts generation 1 for it, kills every process by pid, and returns how long after the
/// spawn the signal became safe and how long until its handler was installed.
fn sigusr2_at_start(jitter: Duration) -> (Duration, Duration) {
    let mut cmd = Command::new(LIFEPROBE);
    cmd.args(["127.0.0.1:0", "--supervise"]);
    let _sweep = Sweep::new(&mut cmd);
    let mut sup = ProcessGuard::spawn(cmd);
    let started = std::time::Instant::now();
    let pid = sup.pid();
    let mut safe = None;
    let mut handled = None;
    // Polled tightly (the figure is milliseconds), for at most DEADLINE.
    while handled.is_none() && started.elapsed() < DEADLINE {
        let Some((blocked, caught)) = sigusr2_state(pid) else {
            break;
        };
        if safe.is_none() && (blocked || caught) {
            safe = Some(started.elapsed());
            std::thread::sleep(jitter);
            sup.signal(Signal::SIGUSR2);
        }
        if caught {
            handled = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // It holds the signal for generation 1 (or forwards it, had 1 been ready): either way
    // generation 2 serves.
    let gen1 = probe_pid(&expect_while_alive(
        &mut sup,
        "probe version=lifeprobe generation=1",
    ));
    let _g1 = PidGuard(gen1);
    let gen2 = probe_pid(&expect_while_alive(
        &mut sup,
        "probe version=lifeprobe generation=2",
    ));
    let _g2 = PidGuard(gen2);
    let (Some(safe), Some(handled)) = (safe, handled) else {
        panic!("SIGUSR2 never became safe ({safe:?}) or handled ({handled:?}) in pid {pid}");
    };
    // Dropping the guards kills both generations, the supervisor and anything it started
    // meanwhile by pid, and reaps them.
    (safe, handled)
}

#[test]
fn thirty_supervisors_each_sent_sigusr2_as_soon_as_it_is_safe_all_live_and_restart() {
    // 30 starts, each with the signal 0-5 ms after it became safe: the outside tester's
    // cycle, in about as many seconds as a test may take on two shared cores; the window
    // itself is shown deterministically by the test above.
    for i in 0..30u64 {
        sigusr2_at_start(Duration::from_millis(i % 6));
    }
}

#[test]
#[ignore = "a measurement: 200 supervisor starts, about 10 s"]
fn measure_time_from_spawn_to_safe_signals_over_200_starts() {
    let mut safe = Vec::new();
    let mut handled = Vec::new();
    for i in 0..200u64 {
        let (s, h) = sigusr2_at_start(Duration::from_millis(i % 6));
        safe.push(s);
        handled.push(h);
    }
    safe.sort();
    handled.sort();
    let show = |v: &[Duration]| {
        format!(
            "median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v[v.len() / 2].as_secs_f64() * 1e3,
            v[v.len() * 99 / 100 - 1].as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        )
    };
    println!("spawn to SIGUSR2 safe (blocked or handled): {}", show(&safe));
    println!("spawn to SIGUSR2 handler installed: {}", show(&handled));
    assert!(
        safe[safe.len() - 1] < Duration::from_millis(100),
        "a start took over 100 ms to make SIGUSR2 safe"
    );
}

/// Whether 200 questions in a row, asked within `DEADLINE`, are all answered by one pid:
/// that pid once they are (questions that fail or change pid start the count again).
/// `SIGTERM` to the supervisor: it exits 0 and no process marked `mark` is left. Its output.
fn stop_leaves_nothing(sup: &mut ProcessGuard, mark: &str) -> Vec<String> {
    sup.signal(Signal::SIGTERM);
    let status = sup
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the supervisor exits; its output: {:#?}", sup.seen()));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        wait_until(DEADLINE, || grace_tests::pids_with_env(MARK, mark).is_empty()),
        "left running: {:?}",
        grace_tests::pids_with_env(MARK, mark)
    );
    sup.output_after_exit()
}

fn one_pid_answers(port: u16) -> Option<u32> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let (mut pid, mut run) = (0, 0);
    while run < 200 {
        if std::time::Instant::now() >= deadline {
            return None;
        }
        match grace_tests::ask(port) {
            Ok(answer) if grace_tests::answer_pid(&answer) == pid => run += 1,
            Ok(answer) => (pid, run) = (grace_tests::answer_pid(&answer), 1),
            Err(_) => run = 0,
        }
    }
    Some(pid)
}

/// A supervised lifeprobe whose generations >= 2 take `delay_ms` to become ready, marked for
/// [`Sweep`] (declared first: it is dropped after the supervisor's guard).
fn supervised_slow_restarts(delay_ms: &str, env: &[(&str, &str)]) -> (Sweep, Supervised) {
    let sweep = Sweep(grace_tests::unique_marker());
    let mut all = vec![(MARK, sweep.0.as_str()), ("PROBE_NEXT_READY_DELAY_MS", delay_ms)];
    all.extend_from_slice(env);
    let s = supervised(&all);
    (sweep, s)
}

#[test]
fn a_serving_generation_killed_while_its_successor_starts_leaves_one_generation_serving() {
    let dir = grace_tests::TempDir::new("splitbrain");
    let pid_file = dir.path().join("pid");
    let (sweep, s) = supervised_slow_restarts("1500", &[("PROBE_PID_FILE", pid_file.to_str().unwrap())]);
    let Supervised {
        mut sup,
        gen1,
        port,
        guard: _g1,
    } = s;
    let supervisor = sup.pid();
    // Generation 2 starts as generation 1's child and waits 1.5 s before it is ready...
    let (orphan, _g2) = forwarded_restart(&mut sup, gen1);
    // ... and its parent dies meanwhile: the supervisor starts a generation 2 of its own.
    send(gen1, Signal::SIGKILL);
    sup.expect_log("died with no successor");
    let line = sup.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "2", "{line}");
    let restarted = probe_pid(&line);
    let _g3 = PidGuard(restarted);
    assert_ne!(restarted, orphan);

    // One of the two is stopped, and the other one answers every question.
    assert!(
        wait_until(DEADLINE, || is_alive(orphan) != is_alive(restarted)),
        "both generation 2s (pids {orphan} and {restarted}) still run, or neither does"
    );
    let (serving, stray) = if is_alive(orphan) {
        (orphan, restarted)
    } else {
        (restarted, orphan)
    };
    assert_eq!(
        one_pid_answers(port),
        Some(serving),
        "200 answers in a row from one pid"
    );
    // The PID file names it: the stopped one did not claim it.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        serving.to_string(),
        "the PID file names the serving pid"
    );
    let mut left = grace_tests::pids_with_env(MARK, &sweep.0);
    left.retain(|&p| p != supervisor);
    assert_eq!(left, vec![serving], "the server's processes");

    // A stop ends everything.
    let output = stop_leaves_nothing(&mut sup, &sweep.0);
    // The stray was stopped, said why, and never reported ready (so it claimed neither the
    // PID file nor the main pid).
    assert!(
        output
            .iter()
            .any(|l| l.contains("stopping a stray generation") && l.contains(&format!(" pid={stray} "))),
        "{output:#?}"
    );
    assert!(
        !output
            .iter()
            .any(|l| l.contains("serving") && l.contains(&format!("with pid {stray}"))),
        "{output:#?}"
    );
}

#[test]
fn giving_up_after_a_crash_loop_leaves_no_generation_behind() {
    let (sweep, s) = supervised_slow_restarts("2000", &[]);
    let Supervised {
        mut sup,
        gen1,
        guard: _g1,
        ..
    } = s;
    let mut guards = Vec::new();
    // Four crashes: generation 1, then each replacement as soon as it has started.
    let mut serving = gen1;
    for _ in 0..4 {
        send(serving, Signal::SIGKILL);
        sup.expect_log("died with no successor");
        serving = probe_pid(&sup.expect_line("probe version="));
        guards.push(PidGuard(serving));
    }
    // A restart of the fifth: held until it is ready, then forwarded; its successor starts...
    let (successor, guard) = forwarded_restart(&mut sup, serving);
    guards.push(guard);
    // ... when its parent dies: the fifth crash in 30 s.
    send(serving, Signal::SIGKILL);
    let line = sup.expect_log("giving up");
    assert_eq!(field(&line, "crashes"), "5", "{line}");
    assert_eq!(field(&line, "window_s"), "30", "{line}");
    let status = sup
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the supervisor exits; its output: {:#?}", sup.seen()));
    assert_eq!(status.code(), Some(128 + 9), "{status}");
    assert!(
        wait_until(DEADLINE, || grace_tests::pids_with_env(MARK, &sweep.0).is_empty()),
        "left running after the supervisor gave up: {:?} (the successor was {successor})",
        grace_tests::pids_with_env(MARK, &sweep.0)
    );
}

#[test]
fn a_successor_ready_just_after_its_parent_died_serves_without_a_crash_restart() {
    let (sweep, s) = supervised_slow_restarts("1000", &[]);
    let Supervised {
        mut sup,
        gen1,
        port,
        guard: _g1,
    } = s;
    let supervisor = sup.pid();
    let (successor, _g2) = forwarded_restart(&mut sup, gen1);
    // The supervisor is held (SIGSTOP) while generation 1 dies and its successor, now an
    // orphan of the supervisor, reports ready: the supervisor then sees both at once.
    sup.signal(Signal::SIGSTOP);
    send(gen1, Signal::SIGKILL);
    let ready = sup.expect_log("ready and serving generation=2 ");
    assert!(ready.contains(&format!(" pid={successor} ")), "{ready}");
    sup.signal(Signal::SIGCONT);
    // It is generation 1's successor: it serves, and no crash restart starts.
    expect_took_over(&mut sup, 2, successor, gen1);
    assert_eq!(
        one_pid_answers(port),
        Some(successor),
        "200 answers in a row from one pid"
    );
    let mut left = grace_tests::pids_with_env(MARK, &sweep.0);
    left.retain(|&p| p != supervisor);
    assert_eq!(left, vec![successor], "the server's processes");

    let output = stop_leaves_nothing(&mut sup, &sweep.0);
    assert!(
        !output
            .iter()
            .any(|l| l.contains("died with no successor") || l.contains("stray")),
        "{output:#?}"
    );
}

/// `supervise()` or a cluster's `run` called in a process a supervisor (or a primary) started,
/// without `should_supervise`'s guard, is refused with an error that says so: it used to start
/// a supervisor there, whose generation started another, without end.
#[test]
fn supervising_inside_a_supervised_process_is_refused_not_a_chain() {
    let mut g = ProcessGuard::spawn(grace_tests::lifeprobe(
        LIFEPROBE,
        &[("GRACE_SUPERVISOR", "4242"), ("PROBE_SUPERVISE_ANYWAY", "1")],
    ));
    for what in ["supervise", "cluster"] {
        let line = g.expect_line(&format!("probe {what} "));
        assert!(
            line.contains("refused")
                && line.contains("GRACE_SUPERVISOR")
                && line.contains("should_supervise"),
            "{line}"
        );
    }
    let status = g.wait_timeout(DEADLINE).expect("it exits");
    assert!(status.success(), "{status}");
}

/// `SIGHUP` is the application's, which the supervisor passes on: a generation that does not
/// handle it, and held it from the start (`hold_signals`), ends by it, as its default action
/// says (held for ever, it was ignored), and the supervisor with that status.
#[test]
fn sighup_held_from_the_start_ends_a_supervised_generation_that_does_not_handle_it() {
    let mut s = supervised(&[("PROBE_HOLD_SIGNALS", "1")]);
    s.sup.signal(Signal::SIGHUP);
    expect_forwarded(&mut s.sup, Signal::SIGHUP, s.gen1);
    assert_eq!(s.sup.wait_timeout(DEADLINE).expect("exits").code(), Some(128 + 1));
}
