//! An axum application on gracehttp, converted as a user would: the router, its state and its
//! handlers are unchanged; `axum::serve` became `gracehttp::Server`. Shown: state,
//! `ConnectInfo<SocketAddr>`, a WebSocket closed politely when the drain begins, `/healthz`
//! answering 503 while draining (so a load balancer moves away), a background task that stops
//! at the drain, the bound addresses printed, and a raw TCP listener served on the same
//! `Generation` (restarted and stopped together).
//!
//! ```sh
//! cargo run -p gracehttp --features axum --example axum -- 127.0.0.1:3000 127.0.0.1:3001
//! curl http://127.0.0.1:3000/          # hello 127.0.0.1:51234 from pid 4242 (visit 1)
//! kill -USR2 4242                      # restart: nothing dropped
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Clone, Default)]
struct AppState {
    visits: Arc<AtomicU64>,
    ticks: Arc<AtomicU64>,
}

async fn hello(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    let n = state.visits.fetch_add(1, Ordering::Relaxed) + 1;
    format!("hello {peer} from pid {} (visit {n})\n", std::process::id())
}

/// 503 once this process drains: a load balancer stops sending here before it is gone.
async fn healthz(Extension(drain): Extension<gracehttp::Drain>) -> (StatusCode, String) {
    if drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("draining {}\n", std::process::id()),
        )
    } else {
        (StatusCode::OK, format!("ok {}\n", std::process::id()))
    }
}

async fn ws(upgrade: WebSocketUpgrade, Extension(drain): Extension<gracehttp::Drain>) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, drain))
}

/// Echoes text messages with our pid; when the drain begins, says goodbye with a close frame
/// ("going away"), and the client reconnects to the new process.
async fn echo(mut socket: WebSocket, drain: gracehttp::Drain) {
    let pid = std::process::id();
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(format!("{pid} {text}").into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = drain.draining() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "restarting".into(),
                    })))
                    .await;
                return;
            }
        }
    }
}

/// A raw line server on the same generation: each line comes back prefixed with our pid.
async fn raw_echo(mut listener: gracenet::GracefulListener, generation: gracenet::Generation) {
    while let Some(conn) = listener.accept().await {
        let guard = generation.track();
        tokio::spawn(async move {
            let _guard = guard;
            let (read, mut write) = tokio::io::split(conn);
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = format!("{} {line}\n", std::process::id());
                if write.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The inherited environment first, while this is the only thread.
    gracenet::registry()?;
    tracing_subscriber::fmt().with_target(false).without_time().init();
    let mut args = std::env::args().skip(1);
    let http_addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let raw_addr = args.next().unwrap_or_else(|| "127.0.0.1:3001".into());
    tokio::runtime::Runtime::new()?.block_on(async move {
        // One lifecycle for the whole process, shared by gracehttp and the raw listener.
        let generation = gracenet::Generation::builder().announce(false).start()?;
        let raw = generation.listen(&raw_addr)?;
        let raw_bound = raw.local_addr().clone();
        tokio::spawn(raw_echo(raw, generation.clone()));

        // A background task: works until the drain begins, then stops.
        let state = AppState::default();
        let (ticks, draining) = (state.ticks.clone(), generation.draining());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            tokio::pin!(draining);
            loop {
                tokio::select! {
                    _ = interval.tick() => { ticks.fetch_add(1, Ordering::Relaxed); }
                    _ = &mut draining => break,
                }
            }
            println!(
                "background task stopped at the drain after {} ticks (pid {})",
                ticks.load(Ordering::Relaxed),
                std::process::id()
            );
        });

        let app = Router::new()
            .route("/", get(hello))
            .route("/healthz", get(healthz))
            .route("/ws", get(ws))
            .with_state(state);
        gracehttp::Server::new()
            .generation(generation)
            // ConnectInfo and the Drain in every request, as axum's
            // `into_make_service_with_connect_info` asks for them.
            .request_extensions(true)
            .http(&http_addr, app)
            .on_listening(move |sites| {
                println!(
                    "listening on http {} raw {raw_bound} (pid {})",
                    sites[0].addr,
                    std::process::id()
                );
            })
            .run()
            .await?;
        Ok(())
    })
}
