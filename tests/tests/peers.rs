//! grace-rs against the other ends of its protocol: Go's facebookgo/grace (emulated by the
//! `gograce` test program, which speaks it exactly), both ways, and `systemd-socket-activate`.

use std::path::Path;
use std::process::Command;

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, ProcessGuard, TempDir, answer_pid, ask, field, free_port, install_program,
    lifeprobe, signal, start_lifeprobe, wait_until,
};
use nix::sys::signal::Signal;

const LIFEPROBE: &str = env!("CARGO_BIN_EXE_lifeprobe");
const GOGRACE: &str = env!("CARGO_BIN_EXE_gograce");

fn app_dir(tag: &str) -> TempDir {
    // Beside the built binaries, so installing one is a hard link, never a write.
    TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), tag)
}

#[test]
fn go_grace_parent_hands_its_socket_to_a_gracenet_child() {
    let dir = app_dir("go-to-rust");
    let app = dir.path().join("app");
    install_program(Path::new(GOGRACE), &app);
    let mut g = ProcessGuard::spawn(Command::new(&app));
    let line = g.expect_line("gograce pid=");
    let go_pid: u32 = field(&line, "pid").parse().unwrap();
    let port: u16 = field(&line, "port").parse().unwrap();
    assert_eq!(answer_pid(&ask(port).unwrap()), go_pid);

    // Deploy the Rust server over the Go one, then ask Go grace to restart.
    install_program(Path::new(LIFEPROBE), &app);
    signal(go_pid, Signal::SIGUSR2);
    let spawned: u32 = field(&g.expect_line("gograce spawned"), "pid").parse().unwrap();
    let _rust_guard = PidGuard(spawned);
    let line = g.expect_line("probe version=");
    assert_eq!(field(&line, "pid"), spawned.to_string());
    assert_eq!(
        field(&line, "addr"),
        format!("127.0.0.1:{port}"),
        "inherited Go's socket"
    );
    // The Rust child says "ready" grace's way: SIGTERM to its parent.
    let stop = g.expect_line("gograce stopping");
    assert_eq!(field(&stop, "from"), spawned.to_string());
    let status = g.wait_timeout(DEADLINE).expect("Go grace exits");
    assert!(status.success(), "{status}");
    assert_eq!(answer_pid(&ask(port).unwrap()), spawned);
}

#[test]
fn gracenet_parent_hands_its_socket_to_a_go_grace_child() {
    let dir = app_dir("rust-to-go");
    let app = dir.path().join("app");
    install_program(Path::new(LIFEPROBE), &app);
    let (mut g, ProbeGen { pid: rust_pid, port }) = start_lifeprobe(lifeprobe(&app, &[]));

    install_program(Path::new(GOGRACE), &app);
    signal(rust_pid, Signal::SIGUSR2);
    let line = g.expect_line("gograce pid=");
    let go_pid: u32 = field(&line, "pid").parse().unwrap();
    let _go_guard = PidGuard(go_pid);
    assert_eq!(field(&line, "inherited"), "true");
    assert_eq!(field(&line, "port"), port.to_string());
    // Its SIGTERM is read as "ready" (it comes from the child being started), not as a stop.
    g.expect_log(&format!(
        "the next generation is ready: handing over generation=1 next=2 pid={go_pid}"
    ));
    let status = g
        .wait_timeout(DEADLINE)
        .expect("the gracenet parent exits after the hand-over");
    assert!(status.success(), "{status}");
    assert_eq!(answer_pid(&ask(port).unwrap()), go_pid);
}

#[test]
fn a_socket_activated_server_never_signals_whoever_started_the_activator() {
    let port = free_port();
    // `sh` plays the operator's shell or supervisor that started the activator. Go grace
    // would SIGTERM it (its parent); gracenet must not, neither when serving nor when
    // restarting.
    let script = format!(
        "systemd-socket-activate --listen=127.0.0.1:{port} {LIFEPROBE} 127.0.0.1:{port}; echo activator-done"
    );
    let mut sh = ProcessGuard::spawn({
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    });
    // The activator execs the server on the first connection.
    let deadline = std::time::Instant::now() + DEADLINE;
    let first = loop {
        match ask(port) {
            Ok(a) => break a,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("the activated server never answered: {e}"),
        }
    };
    let gen1 = answer_pid(&first);
    let line = sh.expect_line("probe version=");
    assert_eq!(field(&line, "pid"), gen1.to_string());
    sh.expect_log("ready and serving generation=1 ");
    assert!(
        sh.wait_timeout(std::time::Duration::from_millis(200)).is_none(),
        "the shell was signalled"
    );

    signal(gen1, Signal::SIGUSR2);
    let line = sh.expect_line("probe version=");
    assert_eq!(field(&line, "generation"), "2");
    let gen2: u32 = field(&line, "pid").parse().unwrap();
    let gen2_guard = PidGuard(gen2);
    sh.expect_log("stopped accepting generation=1 ");
    assert!(wait_until(DEADLINE, || answer_pid(&ask(port).unwrap()) == gen2));
    // Generation 1 ends, so the activator's command ends and the shell goes on normally:
    // it was not killed by a signal.
    sh.expect_line("activator-done");
    let status = sh.wait_timeout(DEADLINE).expect("the shell exits normally");
    assert!(status.success(), "{status}");
    assert!(gen2_guard.is_alive());
}
