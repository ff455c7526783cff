//! An axum application, as a user converts one: gracehttp's axum example (state,
//! `ConnectInfo`, a WebSocket closed at the drain, `/healthz` 503 while draining, a background
//! task, the bound addresses, a raw listener on the same `Generation`), and the
//! `axum::serve` path on `gracenet::axum::Listener`, measured against gracehttp under
//! restarts.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grace_tests::http::get_h1;
use grace_tests::load::{LoadConfig, restart_under_load, who_answers};
use grace_tests::{
    DEADLINE, PidGuard, ProcessGuard, command, is_alive, start_axumserve, start_httpprobe, wait_until,
};
use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::Message;

const AXUM_APP: &str = env!("CARGO_BIN_EXE_axum-app");
const AXUMSERVE: &str = env!("CARGO_BIN_EXE_axumserve");
const HTTPPROBE: &str = env!("CARGO_BIN_EXE_httpprobe");

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_keeps_everything_an_axum_app_had_across_a_restart() {
    let mut cmd = Command::new(AXUM_APP);
    cmd.args(["127.0.0.1:0", "127.0.0.1:0"]);
    let mut g = ProcessGuard::spawn(cmd);
    let pid = g.pid();
    // The bound addresses, printed before serving (port 0 made real).
    let line = tokio::task::block_in_place(|| g.expect_line("listening on http "));
    let http = port_of(line.split_whitespace().nth(3).unwrap());
    let raw = port_of(line.split_whitespace().nth(5).unwrap());

    // State and ConnectInfo<SocketAddr>: the handler sees the client's real address.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    let local = conn.local_addr().unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let body = read_response(&mut reader);
    assert_eq!(body, format!("hello {local} from pid {pid} (visit 1)\n"));
    assert_eq!(
        get_h1(http, "/")
            .await
            .unwrap()
            .body
            .lines()
            .next()
            .map(|l| l.ends_with("(visit 2)")),
        Some(true)
    );

    // The raw listener on the same generation.
    let raw_conn = std::net::TcpStream::connect(("127.0.0.1", raw)).unwrap();
    assert_eq!(grace_tests::converse(&raw_conn).unwrap(), format!("{pid} x"));

    // A WebSocket, open across the restart.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", http)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{http}/ws"), tcp)
        .await
        .unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text(format!("{pid} a"))
    );

    g.signal(Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| g.expect_line("listening on http "));
    let new: u32 = line
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let _new_guard = PidGuard(new);
    assert_ne!(new, pid);
    assert!(tokio::task::block_in_place(|| wait_until(DEADLINE, || {
        grace_tests::ask(raw).is_ok_and(|a| grace_tests::answer_pid(&a) == new)
    })));

    // The old process drains: its WebSocket gets a polite close ("going away") ...
    let close = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a close frame");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001, "{frame:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // ... its background task stopped ...
    let stopped = tokio::task::block_in_place(|| g.expect_line("background task stopped at the drain"));
    assert!(stopped.contains(&format!("(pid {pid})")), "{stopped}");
    // ... and /healthz on a connection it still holds says 503.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_status_and_body(&mut reader);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, format!("draining {pid}\n"));
    // New clients get the new process, with its own ConnectInfo.
    assert!(
        get_h1(http, "/")
            .await
            .unwrap()
            .body
            .contains(&format!("from pid {new}"))
    );
    drop((conn, reader, raw_conn, ws));
    let status = tokio::task::block_in_place(|| g.wait_timeout(DEADLINE)).expect("the old process exits");
    assert!(status.success(), "{status}");
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the body.
fn read_response(reader: &mut BufReader<std::net::TcpStream>) -> String {
    read_status_and_body(reader).1
}

fn read_status_and_body(reader: &mut BufReader<std::net::TcpStream>) -> (u16, String) {
    reader.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_serve_on_gracenets_listener_restarts_and_drains_and_gives_connect_info() {
    let (mut g, port) =
        tokio::task::block_in_place(|| start_axumserve(command(AXUMSERVE, &["127.0.0.1:0"], &[])));
    let pid = g.pid();
    let peer = get_h1(port, "/peer").await.unwrap().body;
    assert!(peer.starts_with("127.0.0.1:"), "ConnectInfo<PeerAddr>: {peer}");
    // A slow client holds a connection: the drain (gracenet's tracking) waits for it.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(held.try_clone().unwrap());
    assert_eq!(read_response(&mut reader), pid.to_string());
    g.signal(Signal::SIGUSR2);
    let line = tokio::task::block_in_place(|| g.expect_line("axumserve listening on "));
    let new: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let _g2 = PidGuard(new);
    assert!(wait_until_async(|| async { who_answers(port, "/pid").await == Some(new) }).await);
    drop((held, reader));
    let exit = tokio::task::block_in_place(|| g.expect_line(&format!("axumserve exiting pid {pid}")));
    assert!(exit.ends_with("forced=false"), "{exit}");
    assert!(tokio::task::block_in_place(|| wait_until(
        DEADLINE,
        || !is_alive(pid)
    )));
}

async fn wait_until_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// The same keep-alive load and restarts against `axum::serve` (its graceful shutdown closes
/// idle keep-alive connections at once) and against gracehttp; prints both, asserts
/// gracehttp's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_gracehttp_adds_over_axum_serve_under_restarts() {
    let mut results = Vec::new();
    for (name, program, args) in [
        ("axum::serve", AXUMSERVE, vec!["127.0.0.1:0"]),
        ("gracehttp", HTTPPROBE, vec![]),
    ] {
        let cmd = command(program, &args, &[]);
        let (_g, port) = tokio::task::block_in_place(|| {
            if name == "gracehttp" {
                let (g, site) = start_httpprobe(cmd);
                (g, site.ports[0])
            } else {
                start_axumserve(cmd)
            }
        });
        let cfg = LoadConfig {
            port,
            path: "/pid".into(),
            connections: 16,
            http2: false,
            keep_alive: true,
            duration: Duration::from_millis(3000),
            max_requests: 200_000,
        };
        let (load, restarts) = restart_under_load(cfg, Duration::from_millis(300)).await;
        if let Some(pid) = who_answers(port, "/pid").await {
            let _last = PidGuard(pid);
        }
        eprintln!(
            "{name}: {} requests, {} failed ({:?}), {} restarts",
            load.requests,
            load.failures.total(),
            load.failures,
            restarts.len()
        );
        assert!(restarts.len() >= 5, "{name}: {} restarts", restarts.len());
        results.push((name, load.failures.total(), load.requests));
    }
    let (_, gracehttp_failures, _) = results[1];
    assert_eq!(gracehttp_failures, 0, "{results:?}");
}
