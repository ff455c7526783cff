//! gracenet's echo example (`gracenet/examples/echo.rs`) across a restart: open connections
//! keep echoing from the old process until they close; new ones go to the new process.

use std::process::Command;

use grace_tests::{DEADLINE, PidGuard, ProcessGuard, answer_pid, ask, converse, field};
use nix::sys::signal::Signal;

#[test]
fn open_connections_stay_with_the_old_process_new_ones_go_to_the_new() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.arg("127.0.0.1:0");
    let mut echo = ProcessGuard::spawn(cmd);
    let line = echo.expect_line("echo generation=1");
    let old: u32 = field(&line, "pid").parse().unwrap();
    let port: u16 = field(&line, "addr").rsplit(':').next().unwrap().parse().unwrap();
    echo.expect_log("generation 1 serving");

    let open: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &open {
        assert_eq!(converse(c).unwrap(), format!("{old} x"));
    }

    echo.signal(Signal::SIGUSR2);
    let line = echo.expect_line("echo generation=2");
    let new: u32 = field(&line, "pid").parse().unwrap();
    let _new_guard = PidGuard(new);
    echo.expect_log("generation 1 stopped accepting; draining 3 connection(s)");

    for _ in 0..5 {
        assert_eq!(
            answer_pid(&ask(port).unwrap()),
            new,
            "a new connection goes to the new pid"
        );
    }
    for c in &open {
        assert_eq!(
            converse(c).unwrap(),
            format!("{old} x"),
            "an open one still echoes from the old pid"
        );
    }
    assert!(echo.wait_timeout(std::time::Duration::from_millis(100)).is_none());
    drop(open);
    let status = echo
        .wait_timeout(DEADLINE)
        .expect("the old process exits once they close");
    assert!(status.success(), "{status}");
    let exit = echo.expect_line(&format!("echo exiting pid={old}"));
    assert!(
        exit.contains("Restarted { successor: ") && exit.contains("forced: false"),
        "{exit}"
    );
}
