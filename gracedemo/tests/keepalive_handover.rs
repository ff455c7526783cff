//! HTTP/1.1 keep-alive connections handed to the new process at a restart, driven from
//! outside with raw sockets that never reconnect: a client's requests all succeed on its one
//! TCP connection across restarts and later answers come from the new pid; a request in
//! flight at the restart finishes on the old pid without `Connection: close`, and the next
//! one on the same connection is the new pid's; a pipelined request and a partial one read
//! by the old process are answered by the new one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, wait_until};
use nix::sys::signal::Signal;

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");

/// gracedemo on three loopback ports (`extra` flags added), with its first port.
fn start(extra: &[&str]) -> (ProcessGuard, u16) {
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info,gracedemo=debug");
    let mut guard = ProcessGuard::spawn(cmd);
    let line = guard.expect_log("Serving ");
    let port = grace_tests::ports_in_grace_line(&line)[0];
    (guard, port)
}

/// Restarts `old` (`SIGUSR2`) and returns the new pid once it serves, killed when dropped.
fn restart(demo: &mut ProcessGuard, old: u32) -> PidGuard {
    grace_tests::signal(old, Signal::SIGUSR2);
    let line = demo.expect_log("Graceful handoff of ");
    assert!(line.contains(&format!("and old pid {old}.")), "{line}");
    PidGuard(grace_tests::new_pid_in_handoff(&line))
}

/// One raw HTTP/1.1 connection, never reopened: a close or a reset is an error.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response: its head (lowercase) and body.
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    /// The pid at the end of gracedemo's body ("... from pid N.").
    fn pid(&self) -> u32 {
        grace_tests::load::pid_of(&self.body).unwrap_or_else(|| panic!("no pid in {:?}", self.body))
    }
}

const GET: &[u8] = b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: x\r\n\r\n";

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| format!("write: {e}"))
    }

    /// Reads one whole response (its body by `content-length`).
    fn answer(&mut self) -> Result<Answer, String> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        if !head.starts_with("http/1.1 200") {
            return Err(format!("not a 200: {head:?} {body:?}"));
        }
        Ok(Answer { head, body })
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!("closed by the server ({} bytes unread)", self.buf.len())),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// One request and its answer, which must not ask the client to close.
    fn ask(&mut self) -> Result<Answer, String> {
        self.send(GET)?;
        let answer = self.answer()?;
        if answer.head.contains("connection: close") {
            return Err(format!("told to close: {:?}", answer.head));
        }
        Ok(answer)
    }
}

/// What one busy client has seen: the pid of its last answer, or why it failed.
#[derive(Default)]
struct Seen {
    pid: AtomicU32,
    answers: AtomicU64,
    failure: Mutex<Option<String>>,
}

#[test]
fn sixty_four_busy_keep_alive_clients_keep_their_connections_across_ten_restarts() {
    let dir = TempDir::new("keepalive");
    let control = dir.path().join("control");
    let control = control.to_str().expect("a UTF-8 path");
    let (mut demo, port) = start(&["--control-socket", control]);
    let stop = Arc::new(AtomicBool::new(false));
    // 64 clients, each asking again as soon as answered, on its one connection, through the
    // restarts (a restart finds requests in flight, and responses being prepared, on most).
    let clients: Vec<(Arc<Seen>, std::thread::JoinHandle<u16>)> = (0..64)
        .map(|_| {
            let (seen, stop) = (Arc::new(Seen::default()), stop.clone());
            let mine = seen.clone();
            let thread = std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let local = c.stream.local_addr().expect("local address").port();
                let started = Instant::now();
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(120) {
                        break;
                    }
                    match c.ask() {
                        Ok(a) => {
                            mine.pid.store(a.pid(), Ordering::Relaxed);
                            mine.answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *mine.failure.lock().unwrap() = Some(e);
                            break;
                        }
                    }
                }
                assert_eq!(c.stream.local_addr().expect("local address").port(), local);
                local
            });
            (seen, thread)
        })
        .collect();
    let failures = || -> Vec<String> {
        clients
            .iter()
            .enumerate()
            .filter_map(|(i, (s, _))| {
                s.failure
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|e| format!("client {i}: {e}"))
            })
            .collect()
    };
    let mut pid = demo.pid();
    assert!(
        wait_until(DEADLINE, || clients
            .iter()
            .all(|(s, _)| s.pid.load(Ordering::Relaxed) == pid)),
        "every client answered by the first pid; failures: {:?}",
        failures()
    );
    let mut generations = Vec::new();
    for round in 1..=10 {
        let new = restart(&mut demo, pid);
        // Every client goes on being answered on its connection, soon by the new pid.
        let moved = wait_until(DEADLINE, || {
            !failures().is_empty()
                || clients
                    .iter()
                    .all(|(s, _)| s.pid.load(Ordering::Relaxed) == new.0)
        });
        assert_eq!(failures(), Vec::<String>::new(), "restart {round}");
        assert!(
            moved,
            "restart {round}: not every client answered by the new pid {}",
            new.0
        );
        // Every connection went to the new pid: nothing holds the old one.
        assert!(
            wait_until(DEADLINE, || !grace_tests::is_alive(pid)),
            "restart {round}: the old pid {pid} is still running"
        );
        pid = new.0;
        generations.push(new);
    }
    // The server's own count: the last process, which accepted none of them, serves all 64.
    let status = Command::new(GRACEDEMO)
        .args(["--control-socket", control, "--status"])
        .output()
        .expect("gracedemo --status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains(&format!("pid: {pid}\n")), "{status}");
    assert!(status.contains("connections: 64\n"), "{status}");
    stop.store(true, Ordering::Relaxed);
    let mut answers = 0;
    for (seen, thread) in clients {
        thread.join().expect("a client thread");
        answers += seen.answers.load(Ordering::Relaxed);
    }
    eprintln!("{answers} answers on 64 connections across 10 restarts");
}

#[test]
fn a_request_in_flight_finishes_on_the_old_pid_and_the_next_is_the_new_pids_on_its_connection() {
    let (mut demo, port) = start(&[]);
    let old = demo.pid();
    let mut client = Client::connect(port);
    client
        .send(b"GET /sleep/?duration=1s HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    // The request is in the server once the handler says it sleeps (a debug line).
    demo.expect_log(&format!("sleeping for 1s from pid {old}"));
    let new = restart(&mut demo, old);
    let slow = client.answer().expect("the slow request's answer");
    assert_eq!(slow.pid(), old, "the request in flight finishes on the old pid");
    assert!(
        !slow.head.contains("connection: close"),
        "the client is not asked to reconnect: {:?}",
        slow.head
    );
    let next = client.ask().expect("the next request, on the same connection");
    assert_eq!(next.pid(), new.0, "the next request is the new pid's");
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(old)),
        "the old pid exits: its connection went to the new one"
    );
}

#[test]
fn pipelined_and_partial_requests_read_by_the_old_process_are_answered_by_the_new_one() {
    let (mut demo, port) = start(&[]);
    let old = demo.pid();
    let mut client = Client::connect(port);
    // Two whole requests and the beginning of a third, in one write: the old process answers
    // the two and holds the third's first bytes when it hands the connection over.
    let mut bytes = [GET, GET].concat();
    bytes.extend_from_slice(b"GET /sleep/?duration=0s HTTP/1.1\r\nHo");
    client.send(&bytes).expect("send");
    for _ in 0..2 {
        assert_eq!(client.answer().expect("a pipelined answer").pid(), old);
    }
    let new = restart(&mut demo, old);
    // The old process exits once its connection is handed over, the partial request with it.
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(old)),
        "the old pid {old} is still running"
    );
    client.send(b"st: x\r\n\r\n").expect("the rest of the request");
    let rest = client.answer().expect("the partial request's answer");
    assert_eq!(rest.pid(), new.0, "answered by the new pid");
    assert!(rest.body.starts_with("Zero   started at "), "{}", rest.body);
    // Pipelined again, to the new process, on the same connection.
    client.send(&[GET, GET].concat()).expect("send");
    for _ in 0..2 {
        assert_eq!(client.answer().expect("a pipelined answer").pid(), new.0);
    }
}

#[test]
fn a_handed_over_connection_is_drained_by_a_stop_like_an_accepted_one() {
    let (mut demo, port) = start(&[]);
    let old = demo.pid();
    let mut client = Client::connect(port);
    assert_eq!(client.ask().expect("first request").pid(), old);
    let new = restart(&mut demo, old);
    let deadline = Instant::now() + DEADLINE;
    while client.ask().expect("served on the same connection").pid() != new.0 {
        assert!(Instant::now() < deadline, "still answered by the old pid");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A request in flight on the handed connection when the new process is told to stop: the
    // drain waits for it, and its answer asks the client to close (nobody takes over).
    client
        .send(b"GET /sleep/?duration=1s HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    demo.expect_log(&format!("sleeping for 1s from pid {}", new.0));
    grace_tests::signal(new.0, Signal::SIGTERM);
    let answer = client.answer().expect("the request in flight is answered");
    assert_eq!(answer.pid(), new.0);
    assert!(answer.head.contains("connection: close"), "{:?}", answer.head);
    assert!(client.fill().is_err(), "then the connection is closed");
    assert!(
        wait_until(DEADLINE, || !grace_tests::is_alive(new.0)),
        "the new pid exits once its connections are done"
    );
}
