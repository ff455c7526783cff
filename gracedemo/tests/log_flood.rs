//! The log as an attack surface: a client that makes the server log once per connection, and
//! a log reader that stalls. Neither may stop the server from serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grace_tests::http::get_h1;
use grace_tests::{DEADLINE, PidGuard, ProcessGuard, free_port, wait_until};

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");

fn addr_args(ports: [u16; 3]) -> Vec<String> {
    ["-a0", "-a1", "-a2"]
        .iter()
        .zip(ports)
        .flat_map(|(flag, p)| [flag.to_string(), format!("127.0.0.1:{p}")])
        .collect()
}

/// One HTTP/2 connection that opens `streams` streams and resets each at once, all in one
/// write, as CVE-2023-44487's rapid reset does (raw frames: no client library would); then
/// reads until the server closes it.
async fn rapid_reset(port: u16, streams: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    for n in 0..streams {
        let id = (2 * n + 1).to_be_bytes();
        // HEADERS (END_STREAM | END_HEADERS): GET http://localhost/ from the static table.
        bytes.extend_from_slice(&[0, 0, 14, 0x1, 0x5]);
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(&[0x82, 0x86, 0x84, 0x01, 0x09]);
        bytes.extend_from_slice(b"localhost");
        // RST_STREAM (CANCEL).
        bytes.extend_from_slice(&[0, 0, 4, 0x3, 0]);
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(&8u32.to_be_bytes());
    }
    if tcp.write_all(&bytes).await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(DEADLINE, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_is_reported_in_one_line_not_one_per_connection() {
    let ports = [free_port(), free_port(), free_port()];
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(addr_args(ports)).env_remove("RUST_LOG");
    let mut g = ProcessGuard::spawn(cmd);
    tokio::task::block_in_place(|| g.expect_log("Serving "));
    let attackers = 200;
    let mut tasks = Vec::new();
    for _ in 0..attackers {
        tasks.push(tokio::spawn(rapid_reset(ports[0], 100)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Still serving.
    assert!(get_h1(ports[1], "/sleep/?duration=0s").await.is_ok());
    // One aggregated line (after the 10 s report period), naming the reset flood.
    let report = tokio::task::block_in_place(|| g.expect_log("ended by errors from peers"));
    eprintln!("{report}");
    let seen = tokio::task::block_in_place(|| g.seen());
    let per_connection = seen.iter().filter(|l| l.contains("remotely-reset")).count();
    assert_eq!(per_connection, 0, "no line per attacking connection: {seen:#?}");
    assert!(
        seen.len() < 20,
        "a handful of lines for {attackers} attackers: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_never_stops_serving() {
    let ports = [free_port(), free_port(), free_port()];
    // stderr is a pipe nobody reads: it fills after a thousand lines or so. Every request logs
    // a line at debug ("sleeping for 1ns").
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let mut child = Command::new(GRACEDEMO)
        .args(addr_args(ports))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("start gracedemo");
    let _guard = PidGuard(child.id());
    let port = ports[0];
    assert!(
        wait_until(DEADLINE, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "gracedemo listens"
    );
    // Meanwhile an attacker floods another port with rapid resets (1,000 connections at most).
    let attack_port = ports[1];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacking = stop.clone();
    let attacker = tokio::spawn(async move {
        let mut connections = 0;
        while connections < 1000 && !attacking.load(std::sync::atomic::Ordering::Relaxed) {
            rapid_reset(attack_port, 100).await;
            connections += 1;
        }
        connections
    });
    let started = Instant::now();
    let mut latencies = Vec::new();
    for i in 0..4000 {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get_h1(port, "/sleep/?duration=1ns")).await;
        assert!(
            matches!(answer, Ok(Ok(_))),
            "request {i} not answered with the log stalled: {answer:?}"
        );
        latencies.push(t.elapsed());
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attacks = attacker.await.unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{} requests with the log reader stalled, during {attacks} rapid-reset connections: p99 {:?}",
        latencies.len(),
        p99
    );
    drop(reader);
    let _ = child.kill();
    let _ = child.wait();
}

/// Peer errors of a process's last seconds are reported as it ends, not lost with it (the
/// report is otherwise made every 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_errors_just_before_a_stop_are_reported_as_it_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ports = [free_port(), free_port(), free_port()];
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(addr_args(ports)).env_remove("RUST_LOG");
    let mut g = ProcessGuard::spawn(cmd);
    tokio::task::block_in_place(|| g.expect_log("Serving "));
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
            .await
            .unwrap();
        s.write_all(b"\x01\x02 not http\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink))
            .await
            .expect("closed in time")
            .ok();
    }
    g.signal(nix::sys::signal::Signal::SIGTERM);
    let report = tokio::task::block_in_place(|| g.expect_log("ended by errors from peers"));
    assert!(report.contains("connections=3"), "{report}");
    let exit = tokio::task::block_in_place(|| g.expect_log("Exiting pid"));
    assert!(!exit.is_empty());
}
