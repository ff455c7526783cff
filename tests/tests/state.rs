//! Application state handed to the next generation (`GenerationBuilder::hand_state`,
//! `Generation::inherited_state`, `Generation::refuse`), with real processes: a counter that
//! survives ten restarts, a refusal that rolls the restart back, 64 MiB of state (its final
//! state too, though the new generation never asks for it), and a handing-over that stalls.

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, TempDir, answer_pid, ask, field, lifeprobe, signal, start_lifeprobe,
    wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");

#[test]
fn a_counter_survives_ten_restarts() {
    let (mut g, ProbeGen { pid: gen1, port }) =
        start_lifeprobe(lifeprobe(LIFEPROBE, &[("PROBE_STATE", "1")]));
    let mut guards = vec![PidGuard(gen1)];
    let mut serving = gen1;
    for n in 2..=11 {
        signal(serving, Signal::SIGUSR2);
        let state = g.expect_line("probe state count=");
        assert_eq!(field(&state, "count"), n.to_string(), "{state}");
        serving = field(&state, "pid").parse().unwrap();
        guards.push(PidGuard(serving));
        g.expect_log(&format!("stopped accepting generation={} ", n - 1));
    }
    assert!(wait_until(DEADLINE, || ask(port).is_ok_and(|a| answer_pid(&a) == serving)));
}

#[test]
fn a_refused_state_rolls_the_restart_back_and_says_why() {
    let dir = TempDir::new("state-refused");
    let marker = dir.path().join("refused-once");
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STATE", "1"),
            ("PROBE_STATE_REFUSE_ONCE", marker.to_str().unwrap()),
        ],
    ));
    let _g1 = PidGuard(gen1);
    signal(gen1, Signal::SIGUSR2);
    let failed = g.expect_log("restart failed");
    assert!(
        failed.contains("refused what it was handed: unknown version"),
        "the reason is reported: {failed}"
    );
    assert_eq!(
        answer_pid(&ask(port).unwrap()),
        gen1,
        "the old generation keeps serving"
    );
    // The next attempt is accepted, and the counter went on.
    signal(gen1, Signal::SIGUSR2);
    let state = g.expect_line("probe state count=");
    let _g2 = PidGuard(field(&state, "pid").parse().unwrap());
    assert_eq!(field(&state, "count"), "2", "{state}");
}

#[test]
fn sixty_four_mebibytes_of_state_arrive_whole() {
    let size = 64 * 1024 * 1024;
    let (mut g, ProbeGen { pid: gen1, .. }) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[("PROBE_STATE", "1"), ("PROBE_STATE_BYTES", &size.to_string())],
    ));
    let _g1 = PidGuard(gen1);
    signal(gen1, Signal::SIGUSR2);
    let state = g.expect_line("probe state count=");
    let _g2 = PidGuard(field(&state, "pid").parse().unwrap());
    let bytes: usize = field(&state, "bytes").parse().unwrap();
    assert_eq!(bytes, size + "v1:1:".len(), "{state}");
    g.expect_log("handed the state over bytes=67108869 next=2 ");
    // The final state too, after the drain, though generation 2 never asks for it: it is read
    // and dropped there, and does not hold generation 1's exit.
    g.expect_log("handed the final state over bytes=67108869 next=2 ");
    g.expect_log("done: drained; exiting generation=1 ");
}

#[test]
fn a_handing_over_that_stalls_cannot_hold_the_restart_past_the_ready_timeout() {
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STATE", "1"),
            ("PROBE_STATE_STALL", "1"),
            ("PROBE_READY_TIMEOUT_MS", "1500"),
        ],
    ));
    let _g1 = PidGuard(gen1);
    signal(gen1, Signal::SIGUSR2);
    // Generation 2 waits for state that never comes; the ready timeout ends it (or, when the
    // old generation's provider timeout comes first, generation 2 is told and exits).
    let failed = g.expect_log("restart failed");
    assert!(
        failed.contains("not ready after 1.5 s") || failed.contains("exited"),
        "{failed}"
    );
    g.expect_log("could not hand the state over: timed out next=2 ");
    assert_eq!(
        answer_pid(&ask(port).unwrap()),
        gen1,
        "the old generation keeps serving"
    );
    // The stalled provider does not hold its process's exit either.
    g.signal(Signal::SIGTERM);
    assert!(
        g.wait_timeout(DEADLINE).is_some_and(|s| s.success()),
        "exits 0 on SIGTERM"
    );
}

/// A state provider that panics fails the restart at once, saying so, instead of leaving the
/// new generation waiting for the state until its ready timeout (60 s here).
#[test]
fn a_state_provider_that_panics_fails_the_restart_at_once_saying_why() {
    let (mut g, ProbeGen { pid: gen1, port }) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STATE", "1"),
            ("PROBE_STATE_PANIC", "1"),
            ("PROBE_READY_TIMEOUT_MS", "60000"),
        ],
    ));
    let _g1 = PidGuard(gen1);
    signal(gen1, Signal::SIGUSR2);
    // Within the test's deadline (20 s), well before the 60 s ready timeout.
    g.expect_log("could not make its state: the state provider panicked");
    let failed = g.expect_log("restart failed");
    assert!(!failed.contains("not ready after"), "{failed}");
    assert_eq!(
        answer_pid(&ask(port).unwrap()),
        gen1,
        "the old generation keeps serving"
    );
}

/// Asking for the handed-over state twice: the second call says it was already read, at
/// once; it used to wait for a state that had gone by, until the ready timeout failed the
/// restart.
#[test]
fn the_state_asked_for_twice_is_an_error_not_a_wait() {
    let (mut g, ProbeGen { pid: gen1, .. }) = start_lifeprobe(lifeprobe(
        LIFEPROBE,
        &[
            ("PROBE_STATE", "1"),
            ("PROBE_STATE_READ_TWICE", "1"),
            ("PROBE_READY_TIMEOUT_MS", "60000"),
        ],
    ));
    let _g1 = PidGuard(gen1);
    signal(gen1, Signal::SIGUSR2);
    let again = g.expect_line("probe state again=");
    assert!(again.contains("again=taken"), "{again}");
    let serving = g.expect_line("probe version=");
    assert!(serving.contains("generation=2"), "{serving}");
    let _g2 = PidGuard(field(&serving, "pid").parse().expect("a pid"));
}
