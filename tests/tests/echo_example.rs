//! gracenet's echo example (`gracenet/examples/echo.rs`) across a restart: open connections
//! are handed to the new process at their next quiet point, so the same connection's next
//! line is answered by the new pid (no close, no reset, no reconnect); new ones go to the new
//! process too. Also under traffic with 1,000 connections, and when the new process dies after
//! taking them.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use grace_tests::{
    DEADLINE, PidGuard, ProbeGen, answer_pid, ask, command, converse, field, start_line_server, wait_until,
};
use nix::sys::signal::Signal;

const ECHO: &str = env!("CARGO_BIN_EXE_echo");

#[test]
fn open_connections_are_handed_to_the_new_process_and_answered_by_it() {
    let (mut echo, ProbeGen { pid: old, port }) =
        start_line_server(command(ECHO, &["127.0.0.1:0"], &[]), "echo generation=1");
    let open: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let ports: Vec<u16> = open.iter().map(|c| c.local_addr().unwrap().port()).collect();
    for c in &open {
        assert_eq!(converse(c).unwrap(), format!("{old} x"));
    }

    echo.signal(Signal::SIGUSR2);
    let line = echo.expect_line("echo generation=2");
    let new: u32 = field(&line, "pid").parse().unwrap();
    let _new_guard = PidGuard(new);
    // The old process hands them over and exits: nothing left to drain.
    let status = echo
        .wait_timeout(DEADLINE)
        .expect("the old process exits once they are handed over");
    assert!(status.success(), "{status}");
    for (c, port) in open.iter().zip(&ports) {
        assert_eq!(
            converse(c).unwrap(),
            format!("{new} x"),
            "the same connection, answered by the new pid"
        );
        assert_eq!(c.local_addr().unwrap().port(), *port, "no reconnect");
    }
    assert_eq!(
        answer_pid(&ask(port).unwrap()),
        new,
        "a new connection goes to the new pid"
    );
}

#[test]
fn a_thousand_connections_under_traffic_lose_and_repeat_no_line() {
    let (mut echo, ProbeGen { pid: old, port }) =
        start_line_server(command(ECHO, &["127.0.0.1:0"], &[]), "echo generation=1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_new = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let new_pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // 1,000 connections over 20 threads; each sends numbered lines and checks every reply.
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (stop, seen_new, new_pid, answered) =
                (stop.clone(), seen_new.clone(), new_pid.clone(), answered.clone());
            std::thread::spawn(move || -> Result<(usize, usize), String> {
                let conns: Vec<TcpStream> = (0..50)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                let ports: Vec<u16> = conns.iter().map(|c| c.local_addr().unwrap().port()).collect();
                let mut readers: Vec<BufReader<TcpStream>> = conns
                    .iter()
                    .map(|c| BufReader::new(c.try_clone().unwrap()))
                    .collect();
                let mut switched = vec![false; conns.len()];
                let mut sent = 0usize;
                for seq in 0..10_000usize {
                    for (i, c) in conns.iter().enumerate() {
                        c.set_read_timeout(Some(DEADLINE)).unwrap();
                        (&*c)
                            .write_all(format!("{seq}\n").as_bytes())
                            .map_err(|e| format!("write: {e}"))?;
                        let mut reply = String::new();
                        readers[i]
                            .read_line(&mut reply)
                            .map_err(|e| format!("read: {e}"))?;
                        let (pid, echoed) = reply
                            .trim_end()
                            .split_once(' ')
                            .ok_or(format!("reply {reply:?}"))?;
                        if echoed != seq.to_string() {
                            return Err(format!("connection {i}: sent {seq}, got back {echoed:?}"));
                        }
                        let pid: u32 = pid.parse().map_err(|_| format!("reply {reply:?}"))?;
                        if pid != old && !switched[i] {
                            switched[i] = true;
                            new_pid.store(pid, std::sync::atomic::Ordering::Relaxed);
                            seen_new.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        if pid == old && switched[i] {
                            return Err(format!("connection {i} went back to the old pid"));
                        }
                        if c.local_addr().unwrap().port() != ports[i] {
                            return Err("reconnected".into());
                        }
                        sent += 1;
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
                Ok((sent, switched.iter().filter(|&&s| s).count()))
            })
        })
        .collect();
    // Under traffic: restart once the connections have been answered twice over.
    assert!(
        wait_until(DEADLINE, || answered.load(std::sync::atomic::Ordering::Relaxed)
            >= 2000),
        "traffic before the restart"
    );
    echo.signal(Signal::SIGUSR2);
    let new: u32 = field(&echo.expect_line("echo generation=2"), "pid")
        .parse()
        .unwrap();
    let _new_guard = PidGuard(new);
    assert!(
        wait_until(DEADLINE, || seen_new.load(std::sync::atomic::Ordering::Relaxed)
            == 1000),
        "every connection answered by the new pid: {} of 1000",
        seen_new.load(std::sync::atomic::Ordering::Relaxed)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        let (sent, switched) = t.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(switched, 50);
        total += sent;
    }
    assert_eq!(new_pid.load(std::sync::atomic::Ordering::Relaxed), new);
    eprintln!("1,000 connections handed over under traffic: {total} lines, none lost or repeated");
    assert!(
        echo.wait_timeout(DEADLINE).is_some_and(|s| s.success()),
        "the old process exits"
    );
}

#[test]
fn connections_handed_to_a_process_that_dies_close_with_it() {
    let (mut echo, ProbeGen { pid: old, port }) =
        start_line_server(command(ECHO, &["127.0.0.1:0"], &[]), "echo generation=1");
    let open: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &open {
        assert_eq!(converse(c).unwrap(), format!("{old} x"));
    }
    echo.signal(Signal::SIGUSR2);
    let new: u32 = field(&echo.expect_line("echo generation=2"), "pid")
        .parse()
        .unwrap();
    let guard = PidGuard(new);
    assert!(
        echo.wait_timeout(DEADLINE).is_some(),
        "the old process handed them over and exited"
    );
    for c in &open {
        assert_eq!(converse(c).unwrap(), format!("{new} x"));
    }
    // The defined behaviour: they belong to the new process now, and end with it (the old
    // one is gone; nothing takes them back). Clients see the close and reconnect.
    drop(guard); // SIGKILL, reaped
    for c in &open {
        let answer = converse(c);
        assert!(
            answer.is_err(),
            "closed with the process that held it: {answer:?}"
        );
    }
}

/// One line on an open connection, read back through its reader: the pid that answered.
/// Any failure (a close, a reset, no answer, a wrong echo) is the connection lost.
fn exchange(conn: &TcpStream, reader: &mut BufReader<TcpStream>, text: &str) -> Result<u32, String> {
    (&*conn)
        .write_all(format!("{text}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    reader.read_line(&mut reply).map_err(|e| format!("read: {e}"))?;
    let (pid, echoed) = reply
        .trim_end()
        .split_once(' ')
        .ok_or_else(|| format!("closed or garbled: reply {reply:?}"))?;
    if echoed != text {
        return Err(format!("sent {text:?}, got back {echoed:?}"));
    }
    pid.parse().map_err(|_| format!("reply {reply:?}"))
}

/// How many fds `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The outside tester's case: the new process is short of file descriptors, so some of the
/// connections handed to it arrive without their fd. Each such one must stay with the old
/// process, which goes on serving it; the rest are served by the new one; none is closed.
/// The old process's soft `RLIMIT_NOFILE` is lowered to 150 once it holds its connections
/// (which the new one inherits at its start): the new process has room for about 138 of the
/// 142, fewer while another client keeps opening connections to it.
#[test]
fn connections_the_new_process_has_no_fd_for_stay_with_the_old_one_and_none_is_lost() {
    const KEPT_OPEN: usize = 142;
    const FREED: usize = 20;
    const LIMIT: u64 = 150;
    let (mut echo, ProbeGen { pid: old, port }) =
        start_line_server(command(ECHO, &["127.0.0.1:0"], &[]), "echo generation=1");
    // 162 connections, each answered; then the first 20 are closed, leaving low fd numbers
    // free in the old process for what its restart opens (the channel, the pidfd) under the
    // lower limit.
    let mut conns: Vec<TcpStream> = (0..KEPT_OPEN + FREED)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut readers: Vec<BufReader<TcpStream>> = conns
        .iter()
        .map(|c| {
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            BufReader::new(c.try_clone().unwrap())
        })
        .collect();
    for (i, (c, r)) in conns.iter().zip(&mut readers).enumerate() {
        assert_eq!(exchange(c, r, &format!("before {i}")), Ok(old), "connection {i}");
    }
    let before = open_fds(old);
    drop(conns.drain(..FREED));
    drop(readers.drain(..FREED));
    assert!(
        wait_until(DEADLINE, || open_fds(old) + FREED <= before),
        "the old process closes the {FREED} connections: {} of {before} fds open",
        open_fds(old)
    );
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let limit = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads the one rlimit passed and writes nothing (no old-limit pointer).
    let rc = unsafe {
        libc::prlimit(
            old as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    for (i, (c, r)) in conns.iter().zip(&mut readers).enumerate() {
        assert_eq!(exchange(c, r, &format!("limited {i}")), Ok(old), "connection {i}");
    }

    echo.signal(Signal::SIGUSR2);
    let new: u32 = field(&echo.expect_line("echo generation=2"), "pid")
        .parse()
        .unwrap();
    let _new_guard = PidGuard(new);
    // Another client keeps opening connections (to the new process now), holding up to 16.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut held = std::collections::VecDeque::new();
            let mut answered = 0usize;
            for _ in 0..5_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    std::time::Duration::from_secs(1),
                ) else {
                    continue;
                };
                // Not accepted while the process is out of fds: that costs a second, no more.
                c.set_read_timeout(Some(std::time::Duration::from_secs(1)))
                    .unwrap();
                let mut reader = BufReader::new(c.try_clone().unwrap());
                if exchange(&c, &mut reader, "churn").is_ok() {
                    answered += 1;
                }
                held.push_back(c);
                if held.len() > 16 {
                    held.pop_front();
                }
            }
            answered
        }
    });
    echo.expect_log("is ready: handing over");
    // Every connection is offered at its next quiet point (at once: the client waits for
    // each reply) and its line waits in the socket until the new process has answered for it;
    // from then on each has one owner: the new process if it took it, else the old one.
    // Four rounds settle it; four more show each owner keeps it.
    const ROUNDS: usize = 8;
    const SETTLED: usize = 4;
    let mut owners = vec![Vec::new(); conns.len()];
    for round in 0..ROUNDS {
        for (i, (c, r)) in conns.iter().zip(&mut readers).enumerate() {
            let pid = exchange(c, r, &format!("after {round} {i}"))
                .unwrap_or_else(|e| panic!("connection {i} lost after the restart (round {round}): {e}"));
            assert!(pid == old || pid == new, "connection {i}: answered by {pid}");
            owners[i].push(pid);
        }
    }
    for (i, o) in owners.iter().enumerate() {
        assert!(
            !o.windows(2).any(|w| w[0] == new && w[1] == old),
            "connection {i} went back to the old process: {o:?}"
        );
        assert!(
            o[SETTLED..].iter().all(|&p| p == o[SETTLED]),
            "connection {i} changed hands after its hand-over was decided: {o:?}"
        );
    }
    let kept = owners.iter().filter(|o| o[SETTLED] == old).count();
    let handed = owners.iter().filter(|o| o[SETTLED] == new).count();
    eprintln!(
        "{KEPT_OPEN} connections at a limit of {LIMIT} fds: {handed} taken by the new process, {kept} kept and served by the old one, none lost"
    );
    assert!(
        kept >= 1,
        "the new process was short of fds: some stay with the old one"
    );
    assert!(handed >= 1, "the new process took what it had room for");
    assert!(
        grace_tests::is_alive(old),
        "the old process still runs, serving the {kept} it kept"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.join().unwrap();
    eprintln!("the other client's connections answered meanwhile: {churned}");
    // Served to their end: the clients close, and the old process, drained, exits.
    drop(readers);
    drop(conns);
    let status = echo
        .wait_timeout(DEADLINE)
        .expect("the old process exits once the connections it kept are closed");
    assert!(status.success(), "{status}");
    assert!(
        wait_until(DEADLINE, || ask(port).is_ok_and(|a| answer_pid(&a) == new)),
        "the new process serves new connections once it has fds again"
    );
}

/// As PID 1 (a container's init, `docker run` without `--init`) and with no supervisor, a
/// restart would end the container: the old process's exit after the hand-over makes the kernel
/// end every process of its PID namespace, the new one too. It is refused, saying why and what
/// to run instead, and the server serves on.
#[test]
fn as_pid_1_a_restart_is_refused_saying_why_and_serving_goes_on() {
    grace_tests::require_pid_namespace();
    let mut echo = grace_tests::ProcessGuard::spawn(command(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            ECHO,
            "127.0.0.1:0",
        ],
        &[],
    ));
    let line = echo.expect_line("echo generation=1");
    assert_eq!(field(&line, "pid"), "1", "{line}");
    let port = grace_tests::parse_probe(&line).port;
    echo.expect_log("this process is PID 1");
    // The server as this test's namespace sees it: unshare's child.
    let inner = grace_tests::only_child(echo.pid());
    let _inner = PidGuard(inner);
    grace_tests::signal(inner, Signal::SIGUSR2);
    let failed = echo.expect_log("restart failed");
    assert!(
        failed.contains("PID 1") && failed.contains("supervisor"),
        "{failed}"
    );
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(converse(&c).unwrap(), "1 x", "the server serves on");
}
