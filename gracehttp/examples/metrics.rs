//! gracenet's figures (restarts, drains, hand-overs: see `gracenet::metrics`) exported to
//! Prometheus, on the application's own server: the exporter is built without its HTTP
//! listener, and `/metrics` renders its text on the same gracehttp site as the application.
//! A restart hands the site over, and the new process's `/metrics` shows the restart that
//! made it (`grace_restarts_total{result="handed_over"}` counts on across generations).
//!
//! ```sh
//! cargo run -p gracehttp --features metrics --example metrics -- 127.0.0.1:3000
//! curl http://127.0.0.1:3000/metrics   # grace_generation 1, grace_restarts_total{...} 0
//! kill -USR2 <pid>
//! curl http://127.0.0.1:3000/metrics   # grace_generation 2, ...{result="handed_over"} 1
//! ```

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `/metrics`: the exporter's text; `/`: a greeting, counted in a metric of the application's
/// own beside gracenet's.
async fn route(
    metrics: PrometheusHandle,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render()))),
        "/" => {
            metrics::counter!("app_requests_total").increment(1);
            Response::builder().body(Full::new(Bytes::from(format!(
                "hello from pid {}\n",
                std::process::id()
            ))))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    // The builder's only failure is a malformed header, and these are constants.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The inherited environment first, while this is the only thread.
    gracenet::registry()?;
    tracing_subscriber::fmt().with_target(false).without_time().init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    // Installed before the generation starts, so gracenet's descriptions (HELP lines) reach it.
    let handle = PrometheusBuilder::new().install_recorder()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        // Without its own listener the exporter's upkeep (histogram buckets) is ours to run.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let service = hyper::service::service_fn(move |req| route(handle.clone(), req));
        gracehttp::Server::new()
            .http(&addr, gracehttp::from_hyper(service))
            .on_listening(|sites| {
                println!("listening on http {} (pid {})", sites[0].addr, std::process::id());
            })
            .run()
            .await?;
        Ok(())
    })
}
