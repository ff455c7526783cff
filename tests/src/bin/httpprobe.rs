//! A test HTTP server on gracehttp, on three addresses (all `127.0.0.1:0`): the first two
//! cleartext (HTTP/1.1 and HTTP/2 prior knowledge), the third TLS when `--tls-cert FILE
//! --tls-key FILE` are given, else cleartext too. With `--axum` the service is an axum
//! `Router`; otherwise a hyper `service_fn`.
//!
//! Routes: `/pid` answers the pid; `/sleep?ms=N` sleeps then answers the pid; `/block?ms=N`
//! blocks its runtime thread that long (a misbehaving handler), then answers the pid; `/health` is
//! `ok`, or 503 `draining` once the drain began; `/ws` is a WebSocket that echoes
//! `<pid> <message>`, says `draining <pid>` when the drain begins, and closes when the
//! client sends `close`. With `--reluctant` the service is not ready at its first
//! `poll_ready` and answers 500 when called without being made ready (see [`Reluctant`]);
//! with `--limit1` it is behind tower's `ConcurrencyLimit` of one request at a time. `/echo` reads the body and answers its length (400 when it is
//! malformed); `/fds` runs `$PROBE_NETPROBE fds` and answers the fds that subprocess got.
//! `PROBE_NOFILE=N` lowers the fd limit at startup. `PROBE_STOP_TIMEOUT_MS`, `PROBE_HEADER_TIMEOUT_MS`,
//! `PROBE_IDLE_TIMEOUT_MS`, `PROBE_IDLE_GRACE_MS` and `PROBE_MAX_CONNECTIONS` set the server's
//! limits.
//! `PROBE_UNIX=PATH` adds a cleartext site on a Unix socket at PATH (listed before the third).
//! `PROBE_EXTRA=ADDR` adds a cleartext site on ADDR, listed last (a new version's address).
//! `PROBE_WORKERS=N` serves as a cluster of N workers, `PROBE_CONTROL=PATH` with the
//! lifecycle's (the primary's) control socket at PATH.
//! Keep-alive connections are handed to the next process at a restart (`PROBE_NO_HAND_OVER=1`:
//! not);
//! `PROBE_TAKE_NO_HANDED=1`: the first generation hands them to the next, which does not take
//! them.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::Message;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("httpprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), gracehttp::Error> {
    if let Some(n) = std::env::var("PROBE_NOFILE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // A low fd limit, to run out of fds on purpose.
        if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n) {
            eprintln!("httpprobe: cannot lower RLIMIT_NOFILE to {n}: {e}");
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let tls = match (flag("--tls-cert"), flag("--tls-key")) {
        (Some(cert), Some(key)) => Some(gracehttp::Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    // The drain and the peer in every request, unless PROBE_REQUEST_EXTENSIONS=off.
    let extensions = std::env::var("PROBE_REQUEST_EXTENSIONS").map_or(true, |v| v != "off");
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mut lifecycle = gracenet::Generation::builder();
    if let Some(ms) = knob("PROBE_STOP_TIMEOUT_MS") {
        lifecycle = lifecycle.stop_timeout(Duration::from_millis(ms));
    }
    let mut timeouts = gracehttp::ConnectionTimeouts::default();
    if let Some(ms) = knob("PROBE_HEADER_TIMEOUT_MS") {
        timeouts = timeouts.header_read(Duration::from_millis(ms));
    }
    if let Some(ms) = knob("PROBE_IDLE_TIMEOUT_MS") {
        timeouts = timeouts.idle(Duration::from_millis(ms));
    }
    if let Some(ms) = knob("PROBE_IDLE_GRACE_MS") {
        timeouts = timeouts.idle_grace(Duration::from_millis(ms));
    }
    // Keep-alive connections handed to the next process at a restart (unless
    // `PROBE_NO_HAND_OVER=1`: drained, gracehttp's default).
    let mut server = gracehttp::Server::new()
        .request_extensions(extensions)
        .hand_over_connections(knob("PROBE_NO_HAND_OVER") != Some(1))
        .timeouts(timeouts);
    if let Some(n) = knob("PROBE_MAX_CONNECTIONS") {
        server = server.max_connections(n as usize);
    }
    if let Some(n) = knob("PROBE_WORKERS") {
        server = server.workers(n as usize);
    }
    if let Some(path) = std::env::var_os("PROBE_CONTROL") {
        lifecycle = lifecycle.control_socket(path);
    }
    let server = if args.iter().any(|a| a == "--axum") {
        let app = axum::Router::new().route(
            "/pid",
            axum::routing::get(|| async { format!("{} axum", std::process::id()) }),
        );
        three_sites(server, app, tls)
    } else if args.iter().any(|a| a == "--reluctant") {
        three_sites(server, Reluctant::new(hyper::service::service_fn(handle)), tls)
    } else if args.iter().any(|a| a == "--limit1") {
        // tower's ConcurrencyLimit of one request at a time, across all connections: an
        // instance whose poll_ready waits holds a place in the semaphore's queue.
        let limited =
            tower::limit::ConcurrencyLimit::new(gracehttp::from_hyper(hyper::service::service_fn(handle)), 1);
        three_sites(server, limited, tls)
    } else {
        three_sites(
            server,
            gracehttp::from_hyper(hyper::service::service_fn(handle)),
            tls,
        )
    };
    if std::env::var_os("PROBE_TAKE_NO_HANDED").is_none() {
        return server.lifecycle(lifecycle).serve();
    }
    // PROBE_TAKE_NO_HANDED: the first generation hands its keep-alive connections over, the
    // later ones do not take them (they never answer: the one before keeps them).
    gracenet::registry()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(gracehttp::Error::Runtime)?;
    runtime.block_on(async move {
        let generation = lifecycle.start()?;
        let first = generation.number() == 1;
        server
            .generation(generation)
            .hand_over_connections(first)
            .run()
            .await
            .map(|_| ())
    })
}

/// A tower service that keeps tower's contract strictly, to check the server does: each
/// instance (a clone starts afresh) is not ready at its first `poll_ready` (it wakes the task
/// and is ready at the next), and a call that was not preceded by a ready `poll_ready` on the
/// same instance is answered 500.
struct Reluctant<S> {
    inner: S,
    polled: bool,
    ready: bool,
}

impl<S> Reluctant<S> {
    fn new(inner: S) -> Self {
        Reluctant {
            inner,
            polled: false,
            ready: false,
        }
    }
}

impl<S: Clone> Clone for Reluctant<S> {
    fn clone(&self) -> Self {
        Reluctant::new(self.inner.clone())
    }
}

type ProbeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

impl<S> tower_service::Service<Request<Incoming>> for Reluctant<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ProbeFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        if !self.ready && !self.polled {
            self.polled = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> ProbeFuture {
        if !std::mem::take(&mut self.ready) {
            return Box::pin(async {
                Ok(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "called without a ready poll_ready".into(),
                ))
            });
        }
        self.polled = false;
        Box::pin(self.inner.call(req))
    }
}

/// Two cleartext addresses, and a third over TLS when there is a certificate.
fn three_sites<S: gracehttp::HttpService>(
    server: gracehttp::Server,
    app: S,
    tls: Option<gracehttp::Tls>,
) -> gracehttp::Server {
    // --adopt: the first address is the application's own listener, adopted under a name.
    let server = if std::env::args().any(|a| a == "--adopt") {
        server.site(gracehttp::Site::adopt_http(
            "own",
            || std::net::TcpListener::bind("127.0.0.1:0"),
            app.clone(),
        ))
    } else {
        server.http("127.0.0.1:0", app.clone())
    };
    let server = server.http("127.0.0.1:0", app.clone());
    // PROBE_UNIX=PATH: a fourth site, cleartext, on a Unix socket at PATH.
    let server = match std::env::var("PROBE_UNIX") {
        Ok(path) => server.http(format!("unix:{path}"), app.clone()),
        Err(_) => server,
    };
    let server = match tls {
        Some(tls) => server.https("127.0.0.1:0", tls, app.clone()),
        None => server.http("127.0.0.1:0", app.clone()),
    };
    match std::env::var("PROBE_EXTRA") {
        Ok(addr) => server.http(&addr, app),
        Err(_) => server,
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// The `ms=N` of a request's query (0 without one).
fn ms_of(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    let drain = req.extensions().get::<gracehttp::Drain>().cloned();
    Ok(match req.uri().path() {
        "/pid" => text(StatusCode::OK, pid.to_string()),
        // The peer from the request's extensions, "none" when it has none.
        "/peer" => match req.extensions().get::<gracehttp::PeerAddr>() {
            Some(peer) => text(StatusCode::OK, peer.to_string()),
            None => text(StatusCode::OK, "none".into()),
        },
        "/sleep" => {
            let ms = ms_of(&req);
            // Tests wait for this line: the request is in the server, not just sent.
            tracing::info!("sleep request started ms={ms}");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, pid.to_string())
        }
        // Blocks the runtime's thread (a handler that misbehaves), after a log line.
        "/block" => {
            let ms = ms_of(&req);
            tracing::info!("block request started ms={ms}");
            std::thread::sleep(Duration::from_millis(ms));
            text(StatusCode::OK, pid.to_string())
        }
        "/health" => match drain {
            Some(d) if d.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining".into()),
            _ => text(StatusCode::OK, "ok".into()),
        },
        "/ws" => websocket(req, drain),
        "/echo" => {
            use http_body_util::BodyExt;
            match req.into_body().collect().await {
                Ok(body) => text(StatusCode::OK, format!("{} bytes", body.to_bytes().len())),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
            }
        }
        "/fds" => {
            // A subprocess the application starts: which fds does it get?
            let program = std::env::var("PROBE_NETPROBE").unwrap_or_default();
            match tokio::process::Command::new(program).arg("fds").output().await {
                Ok(out) => text(
                    StatusCode::OK,
                    String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                ),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found".into()),
    })
}

fn websocket(mut req: Request<Incoming>, drain: Option<gracehttp::Drain>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake".into());
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let pid = std::process::id();
        let draining = async {
            match &drain {
                Some(d) => d.draining().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(draining);
        let mut told = false;
        loop {
            tokio::select! {
                _ = &mut draining, if !told => {
                    told = true;
                    if ws.send(Message::text(format!("draining {pid}"))).await.is_err() {
                        return;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) if t.as_str() == "close" => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    Some(Ok(Message::Text(t))) => {
                        if ws.send(Message::text(format!("{pid} {t}"))).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let h = r.headers_mut();
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
