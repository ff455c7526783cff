//! A real peer: systemd's `systemd-socket-activate` binds the sockets and execs the program
//! with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`; gracenet finds them by address and
//! by name.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use grace_tests::{DEADLINE, ProcessGuard, field, free_port};

/// Connects to `port`, retrying until the activator is listening (bounded by [`DEADLINE`]).
fn connect(port: u16) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
        }
    }
}

#[test]
fn activated_sockets_are_found_by_address_and_by_name() {
    let Ok(activate) = which("systemd-socket-activate") else {
        panic!("systemd-socket-activate is not installed; .ci/run installs Debian's systemd package");
    };
    let (p1, p2) = (free_port(), free_port());
    let mut cmd = Command::new(activate);
    cmd.arg(format!("--listen=127.0.0.1:{p1}"))
        .arg(format!("--listen=127.0.0.1:{p2}"))
        .arg("--fdname=web:admin")
        .arg(env!("CARGO_BIN_EXE_netprobe"))
        .args(["activated", &format!("127.0.0.1:{p1}"), "admin"]);
    let mut probe = ProcessGuard::spawn(cmd);
    // The activator starts the program on the first connection.
    let first = connect(p1);
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let line = probe.expect_line("activated ");
    assert_eq!(field(&line, "origin"), "Activated");
    assert_eq!(field(&line, "by_addr"), format!("127.0.0.1:{p1}"));
    assert_eq!(
        field(&line, "by_name"),
        format!("127.0.0.1:{p2}"),
        "found by LISTEN_FDNAMES"
    );
    assert_eq!(field(&line, "unclaimed"), "0");
    // It execs in place, so the program's pid is the activator's: it never bound a socket.
    let pid = field(&line, "pid").to_owned();
    assert_eq!(pid, probe.pid().to_string());
    let mut answer = String::new();
    BufReader::new(&first).read_line(&mut answer).unwrap();
    assert_eq!(answer.trim_end(), format!("hello from {pid}"));
    drop(first);
    let second = connect(p2);
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = String::new();
    BufReader::new(&second).read_line(&mut answer).unwrap();
    assert_eq!(answer.trim_end(), format!("hello from {pid}"));
    drop(second);
    let status = probe
        .wait_timeout(DEADLINE)
        .expect("probe exits after two connections");
    assert!(status.success(), "{status}");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
