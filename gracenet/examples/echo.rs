//! A TCP echo server whose restarts lose nothing.
//!
//! ```sh
//! cargo run -p gracenet --example echo -- 127.0.0.1:7000 &
//! nc 127.0.0.1 7000            # each line comes back as "<pid> <line>"
//! kill -USR2 <pid>             # the new process takes over: new connections, and the open
//!                              # ones too (the same nc's next line is answered by the new pid;
//!                              # one it cannot take, out of fds, stays with the old pid)
//! kill -TERM <pid>             # stop: finish open connections (up to 60 s), exit
//! ```
//!
//! Each reply starts with the pid that served it, so a restart can be watched. Logs go to
//! stderr (`RUST_LOG=debug` for more).

use std::process::ExitCode;

use gracenet::Generation;
use gracenet::tokio::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> ExitCode {
    // gracenet logs through `tracing`: a subscriber makes its lines visible (time, level,
    // message; RUST_LOG picks the level).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), gracenet::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let generation = gracenet::Generation::start()?;
    let mut listener = generation.listen(&addr)?;
    println!(
        "echo generation={} pid={} addr={}",
        generation.number(),
        std::process::id(),
        listener.local_addr()
    );
    generation.ready()?;
    // Connections the previous generation handed over: served like accepted ones, their
    // unread bytes first.
    if let Some(mut handed) = generation.inherited_connections().await? {
        let generation = generation.clone();
        tokio::spawn(async move {
            while let Some(c) = handed.next().await {
                let guard = generation.track();
                tokio::spawn(echo(c.stream, c.unread, generation.clone(), guard));
            }
        });
    }
    while let Some(conn) = listener.accept().await {
        let guard = generation.track();
        tokio::spawn(echo(conn, Vec::new(), generation.clone(), guard));
    }
    // Stopped accepting: a new generation serves new connections, or we are stopping.
    drop(listener);
    let outcome = generation.wait().await;
    println!("echo exiting pid={} outcome={outcome:?}", std::process::id());
    Ok(())
}

/// Echoes each line with our pid. When this generation drains after a restart, the
/// connection is handed to the new one at the next quiet point (no partial line pending);
/// when it is stopping, or the new one does not take it, it goes on until the client closes.
async fn echo(
    mut conn: Stream,
    mut pending: Vec<u8>,
    generation: Generation,
    _guard: gracenet::ConnectionGuard,
) {
    let pid = std::process::id();
    let mut buf = [0u8; 4096];
    let mut draining = std::pin::pin!(generation.draining());
    let mut drain_started = false;
    let mut can_hand_over = true;
    loop {
        // Answer every whole line received so far.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let mut reply = format!("{pid} ").into_bytes();
            reply.extend_from_slice(&line);
            if conn.write_all(&reply).await.is_err() {
                return;
            }
        }
        if drain_started && pending.is_empty() {
            // Quiet: hand it over (what is unread stays in the socket for the new process).
            // `Ok` once the new process has taken it.
            if generation.hand_over(&conn, &pending, b"").await.is_ok() {
                return;
            }
            // Not handed: no successor (a stop), or the new process did not take it (out of
            // fds, gone). It is still ours: keep serving it until the client closes.
            drain_started = false;
            can_hand_over = false;
        }
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            },
            _ = &mut draining, if !drain_started && can_hand_over => drain_started = true,
        }
    }
}
