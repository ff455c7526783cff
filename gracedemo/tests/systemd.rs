//! gracedemo under `systemd-socket-activate`: three activated sockets (which gracedemo cannot
//! have bound itself: the activator holds them), served, then handed on at a restart with
//! their names.

use std::process::Command;

use grace_tests::http::get_h1;
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, free_port, wait_until};
use nix::sys::signal::Signal;

/// The pid at the end of a gracedemo answer ("... from pid N.").
fn pid_in(body: &str) -> u32 {
    grace_tests::load::pid_of(body).unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// `systemd-socket-activate` listening on `ports` with `names`, set to exec gracedemo with
/// `addrs` as its -a0/-a1/-a2; started, and its first socket connected to (which makes it
/// exec gracedemo).
fn activate(ports: [u16; 3], names: &str, addrs: [String; 3]) -> ProcessGuard {
    let mut cmd = Command::new("systemd-socket-activate");
    for p in ports {
        cmd.arg(format!("--listen=127.0.0.1:{p}"));
    }
    // The lifecycle's detail ("stopped accepting") is logged at info, below gracedemo's
    // default; the activator passes on only the variables it is told to.
    cmd.arg(format!("--fdname={names}"))
        .arg("--setenv=RUST_LOG=info")
        .arg(env!("CARGO_BIN_EXE_gracedemo"));
    for (flag, addr) in ["-a0", "-a1", "-a2"].iter().zip(addrs) {
        cmd.arg(flag).arg(addr);
    }
    let g = ProcessGuard::spawn(cmd);
    assert!(wait_until(DEADLINE, || std::net::TcpStream::connect((
        "127.0.0.1",
        ports[0]
    ))
    .is_ok()));
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activated_sockets_are_served_and_survive_a_restart() {
    let ports = [free_port(), free_port(), free_port()];
    // The activator starts gracedemo on the first connection.
    let mut g = activate(ports, "a:b:c", ports.map(|p| format!("127.0.0.1:{p}")));
    let line = tokio::task::block_in_place(|| g.expect_log("Listening on init activated "));
    let want = format!(
        "127.0.0.1:{}, 127.0.0.1:{}, 127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    assert!(line.contains(&want), "{line}");
    let gen1 = g.pid();
    for p in ports {
        let a = get_h1(p, "/sleep/?duration=0s").await.unwrap();
        assert_eq!(pid_in(&a.body), gen1, "the activator exec'd gracedemo in place");
    }

    g.signal(Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| g.expect_log("Graceful handoff of "));
    assert!(line.contains(&want), "{line}");
    let gen2 = grace_tests::new_pid_in_handoff(&line);
    let _gen2_guard = PidGuard(gen2);
    tokio::task::block_in_place(|| g.expect_log("stopped accepting"));
    for p in ports {
        let a = get_h1(p, "/sleep/?duration=0s").await.unwrap();
        assert_eq!(pid_in(&a.body), gen2, "the restarted process serves all three");
    }
    // The names came along: what gen2 was started with (its initial environment).
    let environ = std::fs::read(format!("/proc/{gen2}/environ")).unwrap();
    assert!(
        environ.split(|&b| b == 0).any(|kv| kv == b"LISTEN_FDNAMES=a:b:c"),
        "names passed on"
    );
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("generation 1 exits");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activated_sockets_are_found_by_file_descriptor_name() {
    let ports = [free_port(), free_port(), free_port()];
    // Named out of order, and gracedemo's own addresses match none of them: only the
    // names (a0, a1, a2 = FileDescriptorName=) can tie each socket to its server.
    let mut g = activate(
        ports,
        "a2:a0:a1",
        [
            "127.0.0.2:0".to_owned(),
            "127.0.0.2:0".to_owned(),
            "127.0.0.2:0".to_owned(),
        ],
    );
    let line = tokio::task::block_in_place(|| g.expect_log("Listening on init activated "));
    assert_eq!(
        grace_tests::ports_in_grace_line(&line),
        vec![ports[1], ports[2], ports[0]],
        "{line}"
    );
    for (port, name) in [(ports[1], "Zero  "), (ports[2], "First "), (ports[0], "Second")] {
        let a = get_h1(port, "/sleep/?duration=0s").await.unwrap();
        assert!(a.body.starts_with(&format!("{name} started at ")), "{}", a.body);
    }
}

/// Activated on addresses the program does not ask for (its own flags name others, as a
/// unit whose `ListenStream=` and program disagree): it does not claim an activation it did
/// not get, and it names, as a warning, the activated sockets nobody serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activated_sockets_the_program_does_not_ask_for_are_named_and_not_claimed() {
    let ports = [free_port(), free_port(), free_port()];
    let own = [free_port(), free_port(), free_port()];
    let mut g = activate(ports, "x:y:z", own.map(|p| format!("127.0.0.1:{p}")));
    let line = tokio::task::block_in_place(|| g.expect_log("inherited sockets nobody serves"));
    assert!(line.contains("WARN"), "{line}");
    for p in ports {
        assert!(line.contains(&format!("127.0.0.1:{p}")), "{line}");
    }
    let serving = tokio::task::block_in_place(|| g.expect_log(" with pid "));
    assert!(
        serving.contains(&format!("Serving 127.0.0.1:{}", own[0])),
        "{serving}"
    );
    let seen = tokio::task::block_in_place(|| g.seen());
    assert!(!seen.iter().any(|l| l.contains("init activated")), "{seen:?}");
    let a = get_h1(own[0], "/sleep/?duration=0s").await.unwrap();
    assert_eq!(pid_in(&a.body), g.pid());
}
