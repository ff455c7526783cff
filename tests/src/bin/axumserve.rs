//! `axum::serve` on gracenet's listener (`gracenet::axum::Listener`), the path for
//! applications that keep axum's own server: `/pid` answers the pid, `/peer` the peer address
//! from `ConnectInfo<gracenet::tokio::PeerAddr>`. Prints `axumserve listening on ADDR pid P`.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use gracenet::tokio::PeerAddr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gracenet::registry()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    tokio::runtime::Runtime::new()?.block_on(async move {
        let generation = gracenet::Generation::start()?;
        let listener = generation.listen(&addr)?;
        println!(
            "axumserve listening on {} pid {}",
            listener.local_addr(),
            std::process::id()
        );
        let listener = gracenet::axum::Listener::new(&generation, listener);
        let app = Router::new()
            .route("/pid", get(|| async { std::process::id().to_string() }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<PeerAddr>| async move { peer.to_string() }),
            );
        generation.ready()?;
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<PeerAddr>())
            .with_graceful_shutdown(generation.draining());
        tokio::select! {
            result = serve.into_future() => result?,
            _ = generation.drain_deadline_reached() => {}
        }
        let outcome = generation.wait().await;
        println!(
            "axumserve exiting pid {} forced={}",
            std::process::id(),
            outcome.forced
        );
        Ok(())
    })
}
