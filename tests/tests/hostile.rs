//! A hostile world: malformed HTTP, slow clients, running out of fds, bad TLS, a bad
//! readiness fd, and fd hygiene. Each case closes only the offending connection and a normal
//! client is answered meanwhile; nothing panics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use grace_tests::http::{get_h1, get_tls, write_cert};
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, Site, TempDir, command, start_httpprobe, wait_until};
use nix::sys::signal::Signal;

const HTTPPROBE: &str = env!("CARGO_BIN_EXE_httpprobe");

/// Sends `bytes` on a new connection and reads until the server closes it (or 20 s).
fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn no_panics(g: &mut ProcessGuard) {
    let seen = g.seen();
    assert!(!seen.iter().any(|l| l.contains("panicked")), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_closes_only_that_connection() {
    let (mut g, Site { ports, .. }) =
        tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[])));
    let port = ports[0];
    let pid = g.pid().to_string();
    // A normal keep-alive client, before, between and after.
    let mut normal = TcpStream::connect(("127.0.0.1", port)).unwrap();
    normal.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut ask_normal = || {
        normal.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = normal.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with(&pid), "{text}");
    };
    ask_normal();
    let big = [
        b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
        &vec![b'a'; 1 << 20],
        b"\r\n\r\n",
    ]
    .concat();
    for (name, bytes, expect) in [
        ("garbage", b"\x00\x01\x02garbage\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        ("1 MiB header", big, "HTTP/1.1 431"),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 400",
        ),
    ] {
        let answer = exchange(port, &bytes);
        assert!(answer.starts_with(expect), "{name}: {answer:?}");
        assert!(!answer.contains(" 200 "), "{name} was served: {answer:?}");
        ask_normal();
    }
    // Content-Length with Transfer-Encoding (request smuggling): hyper takes the chunked
    // body as RFC 9112 6.3 says, drops Content-Length, answers once and closes, so whatever
    // was smuggled behind the body is never read as a request.
    let smuggled = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /pid HTTP/1.1\r\nHost: smuggled\r\n\r\n",
    );
    assert_eq!(
        smuggled.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {smuggled:?}"
    );
    assert!(
        smuggled.contains("connection: close") && smuggled.ends_with("5 bytes"),
        "{smuggled:?}"
    );
    ask_normal();
    // A well-formed body still works.
    let ok = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("5 bytes"), "{ok}");
    no_panics(&mut g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut g, Site { ports, .. }) = tokio::task::block_in_place(|| {
        start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_HEADER_TIMEOUT_MS", "1500")]))
    });
    let port = ports[0];
    let pid = g.pid().to_string();
    let request = b"GET /pid HTTP/1.1\r\nHost: slowloris\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let local = s.local_addr().map(|a| a.port()).unwrap_or(0);
            let started = Instant::now();
            // One byte a second; the server should close us long before the request is whole.
            for (sent, b) in request.iter().enumerate() {
                // A write refused (reset, broken pipe) is the server's close too.
                if s.write_all(&[*b]).await.is_err() {
                    return Ok(());
                }
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                    Ok(Ok(n)) => {
                        return Err(format!(
                            "client port {local}: answered ({n} bytes) after {} bytes, {:?}",
                            sent + 1,
                            started.elapsed()
                        ));
                    }
                    Err(_) => {}
                }
            }
            Err(format!(
                "client port {local}: sent its whole request over {:?} without being closed or answered",
                started.elapsed()
            ))
        }));
    }
    // Meanwhile a normal client is answered, again and again.
    for _ in 0..5 {
        assert_eq!(get_h1(port, "/pid").await.unwrap().body, pid);
        tokio::time::sleep(Duration::from_millis(300)).await; // pacing through the slow period
    }
    let mut open = Vec::new();
    for t in slow {
        if let Err(e) = t.await.unwrap() {
            open.push(e);
        }
    }
    assert!(
        open.is_empty(),
        "every slow client is closed before finishing its headers; {} were not: {open:?}",
        open.len()
    );
    assert_eq!(get_h1(port, "/pid").await.unwrap().body, pid);
    no_panics(&mut g);
}

/// Reads one whole HTTP/1.1 response with a `Content-Length` from `s` (deadline: `DEADLINE`).
fn read_response(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if grace_tests::http::whole_h1_response(&got).is_some() {
            return text;
        }
        let n = s.read(&mut buf).expect("a response within the deadline");
        assert!(n > 0, "closed before the whole response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A keep-alive connection's later requests get the header read timeout too (from their first
/// byte), while a connection that merely waits between requests is kept until the idle timeout.
#[test]
fn a_slow_second_request_is_closed_and_a_quiet_keep_alive_is_kept() {
    let (mut g, Site { ports, .. }) = start_httpprobe(command(
        HTTPPROBE,
        &[],
        &[
            ("PROBE_HEADER_TIMEOUT_MS", "1000"),
            ("PROBE_IDLE_TIMEOUT_MS", "60000"),
        ],
    ));
    let port = ports[0];
    let pid = g.pid().to_string();
    let request = b"GET /pid HTTP/1.1\r\nHost: keep-alive\r\n\r\n";

    // Quiet for three header timeouts between two requests: still answered on the same
    // connection.
    let mut quiet = TcpStream::connect(("127.0.0.1", port)).unwrap();
    quiet.write_all(request).unwrap();
    assert!(read_response(&mut quiet).ends_with(&pid));
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(request).unwrap();
    assert!(read_response(&mut slow).ends_with(&pid));

    // The slow one trickles its second request, a byte every 100 ms (7 s in all).
    let trickle =
        b"GET /pid HTTP/1.1\r\nHost: slowloris\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for b in trickle.iter() {
        if slow.write_all(&[*b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!(
                "answered a request that never finished: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the slow request's connection was closed");
    // Enforced within 1.5 times the timeout of the first byte; a second of slack for a busy
    // machine.
    assert!(
        closed_after >= Duration::from_millis(1000),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_millis(2500),
        "closed too late: {closed_after:?}"
    );

    // The quiet connection has waited over three header timeouts: it is still served.
    // (This wait is the scenario under test, not a synchronisation.)
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    quiet.write_all(request).unwrap();
    assert!(
        read_response(&mut quiet).ends_with(&pid),
        "the quiet keep-alive connection was kept"
    );
    no_panics(&mut g);
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_fds_backs_off_quietly_and_recovers() {
    let (mut g, Site { ports, .. }) =
        tokio::task::block_in_place(|| start_httpprobe(command(HTTPPROBE, &[], &[("PROBE_NOFILE", "64")])));
    let port = ports[0];
    let pid = g.pid();
    // Hold idle connections until the server cannot accept any more (the rest wait in the
    // backlog: the kernel completes their handshakes).
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    tokio::task::block_in_place(|| g.expect_log("accept failed"));
    // While starved, no busy loop: at most a small fraction of a core over a second.
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_sec / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.5,
        "accept loop used {:.0}% of a core while out of fds",
        used * 100.0
    );
    // Free the fds: serving resumes.
    drop(held);
    let answered = wait_until(DEADLINE, || {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(get_h1(port, "/pid")))
            .map(|a| a.body == pid.to_string())
            .unwrap_or(false)
    });
    assert!(answered, "serving resumed once fds were free");
    no_panics(&mut g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_closes_that_connection_and_serves_the_rest() {
    let dir = TempDir::new("bad-tls-clients");
    let root = write_cert(dir.path(), "cert.pem", "key.pem");
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let (mut g, Site { ports, .. }) = tokio::task::block_in_place(|| {
        start_httpprobe(command(
            HTTPPROBE,
            &["--tls-cert", &cert, "--tls-key", &key],
            &[("PROBE_HEADER_TIMEOUT_MS", "1000")],
        ))
    });
    let tls_port = ports[2];
    let pid = g.pid().to_string();
    let good = || async {
        get_tls(tls_port, "/pid", &root, &[b"h2"])
            .await
            .map(|(a, _)| a.body)
    };
    // Plain HTTP to the TLS port.
    let plain = tokio::task::block_in_place(|| exchange(tls_port, b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(!plain.contains(&pid), "{plain:?}");
    assert_eq!(good().await.unwrap(), pid);
    // Random bytes as a ClientHello.
    let junk: Vec<u8> = (0..2048u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let answer = tokio::task::block_in_place(|| {
        exchange(tls_port, &[&[0x16, 0x03, 0x01, 0x07, 0xff][..], &junk].concat())
    });
    assert!(!answer.contains(&pid));
    assert_eq!(good().await.unwrap(), pid);
    // A client that stops mid-handshake: closed at the handshake timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap(); // a record header, then nothing
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = Vec::new();
    let closed = tokio::task::block_in_place(|| stalled.read_to_end(&mut buf));
    assert!(
        closed.is_ok(),
        "the stalled handshake was closed by the server: {closed:?}"
    );
    assert_eq!(good().await.unwrap(), pid);
    no_panics(&mut g);
}

#[test]
fn a_readiness_fd_that_is_not_a_pipe_is_a_clear_error() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args([
        "exec-with",
        "file",
        "-",
        "-",
        "-",
        env!("CARGO_BIN_EXE_lifeprobe"),
        "127.0.0.1:0",
    ])
    .env("GRACE_READY_FD", "3");
    let mut g = ProcessGuard::spawn(cmd);
    let status = g.wait_timeout(DEADLINE).expect("exits");
    assert_eq!(status.code(), Some(1));
    let out = g.output_after_exit();
    let error = out
        .iter()
        .find(|l| l.starts_with("lifeprobe: "))
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert!(
        error.contains("GRACE_READY_FD=\"3\" is malformed: expected the write end of the readiness pipe (this fd is not a pipe or socket)"),
        "{error}"
    );
    for (value, expect) in [
        ("abc", "an fd number of 3 or more"),
        ("1", "an fd number of 3 or more"),
        ("999", "an open fd"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeprobe"));
        cmd.arg("127.0.0.1:0").env("GRACE_READY_FD", value);
        let mut g = ProcessGuard::spawn(cmd);
        let status = g.wait_timeout(DEADLINE).expect("exits");
        assert_eq!(status.code(), Some(1), "GRACE_READY_FD={value}");
        let out = g.output_after_exit();
        assert!(
            out.iter().any(
                |l| l.contains(&format!("GRACE_READY_FD=\"{value}\" is malformed")) && l.contains(expect)
            ),
            "{out:#?}"
        );
        assert!(!out.iter().any(|l| l.contains("panicked")), "{out:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subprocess_started_by_a_handler_sees_only_fds_0_to_2() {
    let (mut g, Site { ports, .. }) = tokio::task::block_in_place(|| {
        start_httpprobe(command(
            HTTPPROBE,
            &[],
            &[("PROBE_NETPROBE", env!("CARGO_BIN_EXE_netprobe"))],
        ))
    });
    let port = ports[0];
    // Keep other connections open too: none of them may leak.
    let _open: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let a = get_h1(port, "/fds").await.unwrap();
    assert_eq!(a.body, "0,1,2", "generation 1's subprocess");
    // After a restart, the inherited sockets (fds 3.. at exec) must not leak either.
    g.signal(Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| g.expect_log("Graceful handoff of "));
    let new = grace_tests::new_pid_in_handoff(&line);
    let _guard = PidGuard(new);
    tokio::task::block_in_place(|| g.expect_log("stopped accepting"));
    let a = get_h1(port, "/fds").await.unwrap();
    assert_eq!(a.body, "0,1,2", "generation 2's subprocess");
}

/// The pid in the answer to `GET /pid` on a new connection (`None`: no answer).
fn pid_answering(port: u16) -> Option<u32> {
    let answer = exchange(port, b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    answer.rsplit("\r\n\r\n").next()?.trim().parse().ok()
}

/// The log's reader goes away (a log collector that exits, `server 2>&1 | head`): the server
/// still restarts on `SIGUSR2` and stops on `SIGTERM`. tracing-subscriber's `fmt()`, which
/// httpprobe logs with, panics on every line from then on (it reports the failed write on
/// stderr, which fails too); gracenet's and gracehttp's own lines must not take their task or
/// thread down with them.
#[test]
fn a_log_pipe_whose_reader_is_gone_leaves_restarts_and_stops_working() {
    use std::io::BufRead;
    grace_tests::become_subreaper();
    let mut cmd = command(HTTPPROBE, &[], &[]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start httpprobe");
    let first = PidGuard(child.id());
    let mut stdout = child.stdout.take();
    let stderr = child.stderr.take().expect("stderr piped");
    // The serving line, read on a thread (bounded by DEADLINE below); then the pipes close.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stderr);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("Serving ") {
                let _ = tx.send(line.clone());
                return;
            }
            line.clear();
        }
    });
    let serving = rx.recv_timeout(DEADLINE).expect("httpprobe's serving line");
    reader.join().expect("the reader thread");
    drop(stdout.take());
    let Site { ports, .. } = grace_tests::parse_serving(&serving);
    let port = ports[0];
    // Every line from here fails to be written.
    assert_eq!(
        pid_answering(port),
        Some(first.0),
        "serving after the log's reader left"
    );
    grace_tests::signal(first.0, Signal::SIGUSR2);
    let mut next = None;
    assert!(
        wait_until(DEADLINE, || {
            next = pid_answering(port).filter(|&p| p != first.0);
            next.is_some()
        }),
        "SIGUSR2 restarted it: a new pid answers"
    );
    let next = PidGuard(next.expect("the new pid"));
    assert!(
        wait_until(DEADLINE, || !first.is_alive()),
        "the old process drained and exited"
    );
    // Reaped here (its guard reaps it too, should the test fail before).
    let _ = child.wait();
    grace_tests::signal(next.0, Signal::SIGTERM);
    assert!(
        wait_until(DEADLINE, || !next.is_alive()),
        "SIGTERM stopped the new one"
    );
}

/// As PID 1 (a container with no init), `Server::serve` runs as gracenet's supervisor: a
/// restart replaces the generation and the container lives on (the old process's exit as PID
/// 1 would have ended every process in it, the new one too).
#[test]
fn as_pid_1_serve_supervises_so_a_restart_keeps_the_container() {
    grace_tests::require_pid_namespace();
    let mut g = ProcessGuard::spawn(command(
        "unshare",
        &["--pid", "--fork", "--mount-proc", "--kill-child", HTTPPROBE],
        &[],
    ));
    let serving = g.expect_log("Serving ");
    let Site {
        ports, pid: first, ..
    } = grace_tests::parse_serving(&serving);
    assert_ne!(
        first, 1,
        "a generation under the supervisor, not PID 1: {serving}"
    );
    let port = ports[0];
    // PID 1 (the supervisor) as this test's namespace sees it: unshare's child.
    let init = grace_tests::only_child(g.pid());
    let _init = PidGuard(init);
    grace_tests::signal(init, Signal::SIGUSR2);
    let handoff = g.expect_log("Graceful handoff of ");
    let Site { pid: next, .. } = grace_tests::parse_serving(&handoff);
    assert_ne!(next, first, "{handoff}");
    assert!(
        wait_until(DEADLINE, || pid_answering(port).is_some()),
        "the container lives on: the new generation answers"
    );
    assert!(grace_tests::is_alive(init), "PID 1 is still there");
}

/// An HTTP server on one runtime thread with a stop timeout of `stop_ms`, whose thread a
/// request's handler holds for two minutes (the request's client thread is returned).
fn blocked_server(stop_ms: &str) -> (ProcessGuard, std::thread::JoinHandle<String>) {
    let (mut g, Site { ports, .. }) = start_httpprobe(command(
        HTTPPROBE,
        &[],
        &[("TOKIO_WORKER_THREADS", "1"), ("PROBE_STOP_TIMEOUT_MS", stop_ms)],
    ));
    let port = ports[0];
    let blocked =
        std::thread::spawn(move || exchange(port, b"GET /block?ms=120000 HTTP/1.1\r\nHost: x\r\n\r\n"));
    g.expect_log("block request started");
    (g, blocked)
}

/// A handler that blocks the runtime (every worker thread asleep in a blocking call) keeps the
/// lifecycle's task from running: a first `SIGTERM` cannot drain. A second stop signal still
/// ends the process, within seconds, as "a second one stops at once" promises. (A `SIGINT`
/// second: two `SIGTERM`s sent back to back may reach the process as one.)
#[test]
fn a_second_stop_signal_ends_a_server_whose_runtime_is_blocked() {
    let (mut g, blocked) = blocked_server("120000");
    g.signal(Signal::SIGTERM);
    g.signal(Signal::SIGINT);
    let status = g
        .wait_timeout(DEADLINE)
        .expect("a second stop signal ends the process although its runtime is blocked");
    assert!(!status.success(), "ended by the signal: {status}");
    drop(blocked);
}

/// The same blocked runtime and a single `SIGTERM`: the stop timeout still holds. The process
/// ends by the signal a few seconds (gracenet's grace) after the timeout, saying why, and not
/// when the handler lets go two minutes later.
#[test]
fn a_single_sigterm_ends_a_server_whose_runtime_is_blocked_after_the_stop_timeout() {
    let (mut g, blocked) = blocked_server("1000");
    g.signal(Signal::SIGTERM);
    let status = g
        .wait_timeout(DEADLINE)
        .expect("the stop timeout ends the process although its runtime is blocked");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "ended by the signal: {status}"
    );
    let said = g.output_after_exit();
    assert!(
        said.iter().any(
            |l| l.contains("the drain has not ended (is the runtime blocked?)")
                && l.contains("the stop timeout has passed since the stop signal")
        ),
        "{said:#?}"
    );
    drop(blocked);
}

/// `Server::workers` in a generation of gracenet's supervisor (a program that called
/// `supervise()` itself) cannot make a cluster there: it says so, and serves alone.
#[test]
fn workers_under_the_supervisor_are_said_to_be_ignored() {
    let (mut g, Site { ports, .. }) = start_httpprobe(command(
        HTTPPROBE,
        &[],
        &[("PROBE_WORKERS", "2"), ("GRACE_SUPERVISOR", "4242")],
    ));
    let line = g.expect_log("Server::workers is ignored");
    assert!(line.contains("supervise()"), "{line}");
    assert_eq!(pid_answering(ports[0]), Some(g.pid()), "it serves alone");
}

/// A cluster's primary drains every worker on `SIGHUP` (a closed terminal signals its whole
/// process group): a worker whose program does not handle `SIGHUP` ignores its own copy,
/// which would end it at once with its requests (`SIGHUP`'s default action).
#[test]
fn a_clusters_workers_leave_sighup_to_their_primary() {
    let dir = TempDir::new("workers-sighup");
    let control = dir.path().join("control");
    let control_env = control.to_string_lossy().into_owned();
    let mut primary = ProcessGuard::spawn(command(
        HTTPPROBE,
        &[],
        &[("PROBE_WORKERS", "2"), ("PROBE_CONTROL", &control_env)],
    ));
    primary.expect_log("Worker 0 serving ");
    let client = gracenet::control::Client::new(&control);
    let serving = || grace_tests::serving_workers(&client);
    let workers = grace_tests::wait_for_serving_workers(&client, 2);
    let _guards: Vec<PidGuard> = workers.iter().map(|&p| PidGuard(p)).collect();
    let sighup = 1u64 << (Signal::SIGHUP as u64 - 1);
    for &worker in &workers {
        let ignored = grace_tests::status_mask(&worker.to_string(), "SigIgn").unwrap_or(0);
        assert!(ignored & sighup != 0, "worker {worker} does not ignore SIGHUP");
        grace_tests::signal(worker, Signal::SIGHUP);
    }
    // Still there, and serving: the primary's status lists them as before.
    assert_eq!(serving(), workers, "{:?}", client.status());
    assert!(workers.iter().all(|&w| grace_tests::is_alive(w)));
    // The primary's own SIGHUP drains them all, and it exits.
    primary.signal(Signal::SIGHUP);
    let status = primary
        .wait_timeout(DEADLINE)
        .expect("the primary stops at SIGHUP");
    assert!(status.success(), "{status}");
}
