//! State handed over with no acknowledged write lost (`hand_state` twice: the snapshot at the
//! restart, the final state after the drain), with gracehttp's store example: writers post
//! items across ten restarts and every item answered `201` is read back from the last
//! process; a new program that reads another state version refuses it and the old process
//! keeps serving; an old process killed before its final state leaves the new one serving
//! (and saying so), never waiting for it forever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grace_tests::{DEADLINE, PidGuard, ProcessGuard, Sweep, TempDir, install_program, wait_until};
use nix::sys::signal::Signal;

const STORE: &str = env!("CARGO_BIN_EXE_store-app");

/// One HTTP/1.1 request on a connection of its own: the status and the body.
fn request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(DEADLINE))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: store\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// The number after `"key":` in a JSON answer.
fn json_u64(body: &str, key: &str) -> Option<u64> {
    let rest = body.split(&format!("\"{key}\":")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The pid answering `GET /items`.
fn serving_pid(port: u16) -> Option<u32> {
    let (status, body) = request(port, "GET", "/items", "").ok()?;
    (status == 200)
        .then(|| json_u64(&body, "pid"))
        .flatten()
        .map(|p| p as u32)
}

/// Starts the store at `program` (port 0): its guards (every generation it starts is killed
/// by pid at the end, even one the test never learnt the pid of), pid and port.
fn start(program: &std::path::Path, env: &[(&str, &str)]) -> ((Sweep, ProcessGuard), u32, u16) {
    let mut cmd = Command::new(program);
    // Log lines without colours, their fields as `key=value`.
    cmd.arg("127.0.0.1:0").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let sweep = Sweep::new(&mut cmd);
    let mut g = ProcessGuard::spawn(cmd);
    let line = g.expect_line("store on ");
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let pid = g.pid();
    assert!(wait_until(DEADLINE, || serving_pid(port) == Some(pid)));
    ((sweep, g), pid, port)
}

/// Restarts the store serving on `port` as `pid`, and waits for another process to answer.
fn restart(pid: u32, port: u16) -> u32 {
    grace_tests::signal(pid, Signal::SIGUSR2);
    let mut next = None;
    assert!(
        wait_until(DEADLINE, || {
            next = serving_pid(port).filter(|&p| p != pid);
            next.is_some()
        }),
        "no new process answers after SIGUSR2 to {pid}"
    );
    next.unwrap_or_default()
}

/// Waits for the first generation's drain to begin, and checks the request the test holds open
/// is among the connections it waits for. (One of `restart`'s probes may be finishing there
/// too: the count is at least one, not exactly one.)
fn first_drain_holds_the_request(g: &mut ProcessGuard) {
    let line = g.expect_log("stopped accepting generation=1 connections=");
    let held = line
        .split("connections=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        held.is_some_and(|n| n >= 1),
        "the drain waits for the held request: {line}"
    );
}

#[test]
fn no_acknowledged_write_is_lost_across_ten_restarts() {
    let ((_sweep, _g), first, port) = start(STORE.as_ref(), &[]);
    let mut guards = vec![PidGuard(first)];
    // (id, body) of every write answered 201.
    let acked = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(120);
                for n in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > until {
                        break;
                    }
                    let body = format!("writer {w} item {n}");
                    // Refused or reset: not acknowledged, so not counted.
                    if let Ok((201, answer)) = request(port, "POST", "/items", &body) {
                        let id = json_u64(&answer, "id").expect("201 names the id");
                        acked.lock().unwrap().push((id, body));
                    }
                }
            })
        })
        .collect();
    let mut serving = first;
    for _ in 0..10 {
        // Writes land in this process before it is restarted.
        let before = acked.lock().unwrap().len();
        assert!(wait_until(DEADLINE, || acked.lock().unwrap().len() > before + 20));
        serving = restart(serving, port);
        guards.push(PidGuard(serving));
    }
    // Writes land in the last process too, while the one before it drains.
    let before = acked.lock().unwrap().len();
    assert!(wait_until(DEADLINE, || acked.lock().unwrap().len() > before + 20));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer");
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged across 10 restarts", acked.len());
    let mut ids: Vec<u64> = acked.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), acked.len(), "an id was given to two writes");
    let mut lost = Vec::new();
    for (id, body) in &acked {
        match request(port, "GET", &format!("/items/{id}"), "") {
            Ok((200, got)) if got == *body => {}
            other => lost.push((*id, other.map(|(s, _)| s).ok())),
        }
    }
    assert_eq!(
        serving_pid(port),
        Some(serving),
        "read back from the last process"
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, the first: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn a_program_that_reads_another_state_version_is_refused_and_the_old_one_keeps_serving() {
    // The program at a path of our own, replaced by a deploy of one that reads version 2.
    let dir = TempDir::new("store-version");
    let program = dir.path().join("store");
    install_program(STORE.as_ref(), &program);
    let ((_sweep, mut g), first, port) = start(&program, &[]);
    let _g1 = PidGuard(first);
    let (status, answer) = request(port, "POST", "/items", "kept").unwrap();
    assert_eq!(status, 201, "{answer}");
    let id = json_u64(&answer, "id").unwrap();
    let wrapper = dir.path().join("store-v2");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nSTORE_STATE_VERSION=2 exec '{STORE}' \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    install_program(&wrapper, &program);
    grace_tests::signal(first, Signal::SIGUSR2);
    let failed = g.expect_log("restart failed");
    assert!(
        failed.contains("refused what it was handed: the handed-over state is version 1, and this program reads version 2 only"),
        "the reason is reported: {failed}"
    );
    assert_eq!(serving_pid(port), Some(first), "the old process keeps serving");
    assert_eq!(
        request(port, "GET", &format!("/items/{id}"), "").unwrap(),
        (200, "kept".to_owned()),
        "with its items"
    );
}

#[test]
fn a_new_process_whose_predecessor_dies_before_its_final_state_serves_on_and_says_so() {
    let ((_sweep, mut g), first, port) = start(STORE.as_ref(), &[]);
    let _g1 = PidGuard(first);
    // A request in flight holds the old process's drain open: its body never ends.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(b"POST /items HTTP/1.1\r\nHost: store\r\nContent-Length: 10\r\n\r\nhalf")
        .unwrap();
    let second = restart(first, port);
    let _g2 = PidGuard(second);
    first_drain_holds_the_request(&mut g);
    // The old process dies in its drain, before its final state.
    grace_tests::signal(first, Signal::SIGKILL);
    let lost = g.expect_log("final state did not come");
    assert!(lost.contains("it ended before handing its final state"), "{lost}");
    // The new process serves on, and a GET for an unknown id is answered at once (the
    // merge it would wait for is over), not after a wait.
    let asked = Instant::now();
    let (status, _) = request(port, "GET", "/items/7", "").unwrap();
    assert_eq!((status, serving_pid(port)), (404, Some(second)));
    assert!(asked.elapsed() < Duration::from_secs(10), "{:?}", asked.elapsed());
    let (status, _) = request(port, "POST", "/items", "after").unwrap();
    assert_eq!(status, 201);
}

#[test]
fn a_write_acknowledged_late_in_a_long_drain_reaches_a_process_two_restarts_on() {
    let ((_sweep, mut g), first, port) = start(STORE.as_ref(), &[]);
    let _g1 = PidGuard(first);
    // A write in flight in the first process: its body is not finished yet.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    held.write_all(
        b"POST /items HTTP/1.1\r\nHost: store\r\nConnection: close\r\nContent-Length: 9\r\n\r\nlate",
    )
    .unwrap();
    let second = restart(first, port);
    let _g2 = PidGuard(second);
    first_drain_holds_the_request(&mut g);
    // The second process is restarted while the first still drains: its own drain ends at
    // once, but its final state must wait for the first one's.
    let third = restart(second, port);
    let _g3 = PidGuard(third);
    g.expect_log("stopped accepting generation=2 ");
    // Now the first process acknowledges the write, after both snapshots were taken.
    held.write_all(b" item").unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let id = json_u64(&answer, "id").expect("201 names the id");
    assert_eq!(
        request(port, "GET", &format!("/items/{id}"), "").unwrap(),
        (200, "late item".to_owned()),
        "the write the first process acknowledged last is in the third"
    );
    assert_eq!(serving_pid(port), Some(third));
}

/// A full store refuses writes (507) rather than grow past what a restart can hand over: it
/// still restarts, with every item it took.
#[test]
fn a_full_store_refuses_writes_and_still_restarts_with_its_items() {
    let ((_sweep, _g), first, port) = start(STORE.as_ref(), &[("STORE_MAX_MIB", "1")]);
    let _g1 = PidGuard(first);
    let item = "x".repeat(300_000);
    let mut ids = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let (status, answer) = request(port, "POST", "/items", &item).unwrap();
        match status {
            201 => ids.push(json_u64(&answer, "id").unwrap()),
            _ => {
                refused = Some((status, answer));
                break;
            }
        }
    }
    let (status, answer) = refused.expect("a 1 MiB store took 1.5 MB");
    assert_eq!(status, 507, "{answer}");
    assert!(answer.contains("the store is full (1 MiB)"), "{answer}");
    assert_eq!(ids.len(), 3, "three items of 300 kB fit in 1 MiB, not four");
    let second = restart(first, port);
    let _g2 = PidGuard(second);
    for id in ids {
        assert_eq!(
            request(port, "GET", &format!("/items/{id}"), "").unwrap(),
            (200, item.clone())
        );
    }
}
