//! A TCP echo server whose restarts lose nothing.
//!
//! ```sh
//! cargo run -p gracenet --example echo -- 127.0.0.1:7000 &
//! nc 127.0.0.1 7000            # each line comes back as "<pid> <line>"
//! kill -USR2 <pid>             # new connections go to the new process; open ones
//!                              # keep echoing from the old one until they close
//! kill -TERM <pid>             # stop: finish open connections (up to 60 s), exit
//! ```
//!
//! Each reply starts with the pid that served it, so a restart can be watched. Logs go to
//! stderr (`RUST_LOG=debug` for more).

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
    while let Some(conn) = listener.accept().await {
        let guard = generation.track();
        tokio::spawn(async move {
            let _guard = guard; // the drain waits for this connection
            let pid = std::process::id();
            let (read, mut write) = tokio::io::split(conn);
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{pid} {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    // Stopped accepting: a new generation serves new connections, or we are stopping.
    drop(listener);
    let outcome = generation.wait().await;
    println!("echo exiting pid={} outcome={outcome:?}", std::process::id());
    Ok(())
}
