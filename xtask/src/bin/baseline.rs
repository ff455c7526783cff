//! The benchmark's baseline: gracedemo's `/sleep/` handler on plain hyper (hyper-util's auto
//! builder, tokio's listener), with no grace at all. `baseline ADDR` prints `listening PORT`.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?.port());
    let started: Arc<str> = gracedemo::gotime::go_time(chrono_now()).into();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let sleep = gracedemo::handler::Sleep::new("Zero  ", started.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| sleep.clone().handle(req));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn chrono_now() -> gracedemo::gotime::LocalTime {
    gracedemo::gotime::now()
}
