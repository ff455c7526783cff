//! The server: several addresses, each with a service and optional TLS, served together and
//! restarted together through gracenet's lifecycle.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracenet::registry::Origin;
use gracenet::{Generation, Outcome};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::connection::{Builders, ConnConfig};
use crate::error::Error;
use crate::service::HttpService;
use crate::session_tickets::TicketKeys;
use crate::site::{MakeListener, ReadyWhenAccepting, Site, SiteService, accept_loop, erase};
use crate::tls::Tls;

/// How long an HTTP/1 connection that is between requests may stay open once the drain
/// begins.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_millis(500);
/// How long a client may take, from the connection's accept, to send its first request's
/// headers (a TLS handshake and an HTTP/2 preface included), and any later request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection with no request in flight may stay open (HTTP/1 keep-alive, or an
/// HTTP/2 connection with no open stream, PINGs or not) before it is closed (HTTP/2: GOAWAY).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Called with the bound addresses before serving starts.
type OnListening = Box<dyn FnOnce(&[gracenet::LocalAddr]) + Send>;

/// HTTP/1.1 and HTTP/2 servers on one or more addresses that restart (`SIGUSR2`) and stop
/// (`SIGTERM`, `SIGINT`) without losing a request.
///
/// ```no_run
/// # fn main() -> Result<(), gracehttp::Error> {
/// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # }));
/// let tls = gracehttp::Tls::from_pem_files("cert.pem", "key.pem")?;
/// gracehttp::Server::new()
///     .http(":8080", app.clone())
///     .https(":8443", tls, app)
///     .serve()
/// # }
/// ```
#[must_use = "a Server does nothing until serve() or run() is called"]
pub struct Server {
    sites: Vec<Site>,
    stop_timeout: Duration,
    ready_timeout: Duration,
    idle_grace: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: Option<usize>,
    request_extensions: bool,
    pid_file: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    standby: bool,
    generation: Option<Generation>,
    on_listening: Option<OnListening>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sites: Vec<String> = self
            .sites
            .iter()
            .map(|s| {
                let scheme = if s.tls.is_some() { "https" } else { "http" };
                match &s.name {
                    Some(n) => format!("{scheme} {} ({n})", s.addr),
                    None => format!("{scheme} {}", s.addr),
                }
            })
            .collect();
        f.debug_struct("Server")
            .field("sites", &sites)
            .field("stop_timeout", &self.stop_timeout)
            .field("ready_timeout", &self.ready_timeout)
            .field("idle_grace", &self.idle_grace)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("request_extensions", &self.request_extensions)
            .field("pid_file", &self.pid_file)
            .field("control_socket", &self.control_socket)
            .field("standby", &self.standby)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            sites: Vec::new(),
            stop_timeout: gracenet::DEFAULT_STOP_TIMEOUT,
            ready_timeout: gracenet::DEFAULT_READY_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            request_extensions: false,
            pid_file: None,
            control_socket: None,
            standby: false,
            generation: None,
            on_listening: None,
        }
    }
}

impl Server {
    /// A server with nothing to serve yet, and the default timeouts.
    pub fn new() -> Server {
        Server::default()
    }

    /// Serves `service` over cleartext HTTP/1.1 and HTTP/2 (prior knowledge) at `addr`, in
    /// any form gracenet accepts (`":8080"`, `"127.0.0.1:0"`, `"unix:/run/app.sock"`).
    /// `service` is any tower service: an axum `Router`, `tower::service_fn`, or a hyper
    /// service through [`from_hyper`](crate::from_hyper).
    pub fn http<S: HttpService>(self, addr: &str, service: S) -> Server {
        self.site(addr, None, erase(service))
    }

    /// Serves `service` over TLS at `addr`, HTTP/2 or HTTP/1.1 as ALPN decides.
    pub fn https<S: HttpService>(self, addr: &str, tls: Tls, service: S) -> Server {
        self.site(addr, Some(tls), erase(service))
    }

    fn site(mut self, addr: &str, tls: Option<Tls>, service: Arc<dyn SiteService>) -> Server {
        self.sites.push(Site {
            addr: addr.to_owned(),
            name: None,
            make: None,
            tls,
            service,
        });
        self
    }

    /// Serves `service` (cleartext HTTP/1.1 and HTTP/2) on a listener the application makes
    /// itself — a `std::net::TcpListener` or `UnixListener` bound with its own options —
    /// registered under `name` and passed on at every restart. `make` runs only in a process
    /// that did not inherit `name` (the first); later generations get the same socket.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), gracehttp::Error> {
    /// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
    /// # }));
    /// gracehttp::Server::new()
    ///     .adopt_http("api", || std::net::TcpListener::bind("127.0.0.1:8080"), app)
    ///     .serve()
    /// # }
    /// ```
    pub fn adopt_http<L, F, S>(self, name: &str, make: F, service: S) -> Server
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        S: HttpService,
    {
        self.adopted(name, make, None, service)
    }

    /// [`adopt_http`](Self::adopt_http) over TLS.
    pub fn adopt_https<L, F, S>(self, name: &str, make: F, tls: Tls, service: S) -> Server
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        S: HttpService,
    {
        self.adopted(name, make, Some(tls), service)
    }

    fn adopted<L, F, S>(mut self, name: &str, make: F, tls: Option<Tls>, service: S) -> Server
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        S: HttpService,
    {
        let make: MakeListener = Box::new(move || make().map(Into::into));
        self.sites.push(Site {
            addr: name.to_owned(),
            name: Some(name.to_owned()),
            make: Some(make),
            tls,
            service: erase(service),
        });
        self
    }

    /// Serves on `generation`, already started by the application (which may serve raw
    /// gracenet listeners on it too): one lifecycle for the whole process, restarted and
    /// stopped together. Its settings (timeouts, PID file, control socket) are its
    /// builder's; this server's `stop_timeout`, `ready_timeout`, `pid_file` and
    /// `control_socket` are not used then. The server still calls
    /// [`Generation::ready`](gracenet::Generation::ready) once its sites accept (calling it
    /// again is harmless).
    pub fn generation(mut self, generation: Generation) -> Server {
        self.generation = Some(generation);
        self
    }

    /// Calls `f` with every site's bound address (the real port for `:0`), in the order the
    /// sites were added, once all are listening and before serving starts.
    pub fn on_listening(mut self, f: impl FnOnce(&[gracenet::LocalAddr]) + Send + 'static) -> Server {
        self.on_listening = Some(Box::new(f));
        self
    }

    /// Names the address added last. An inherited socket of that name (systemd's
    /// `FileDescriptorName=`, `LISTEN_FDNAMES`) is served there whatever its address, and a
    /// socket bound here is passed on under that name at each restart.
    pub fn named(mut self, name: &str) -> Server {
        if let Some(site) = self.sites.last_mut() {
            site.name = Some(name.to_owned());
        }
        self
    }

    /// How long a stopping process may drain before what remains is closed. Default 60 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Server {
        self.stop_timeout = timeout;
        self
    }

    /// How long a new process may take to be ready before it is killed and this one keeps
    /// serving. Default 30 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Server {
        self.ready_timeout = timeout;
        self
    }

    /// How long, once draining, an HTTP/1 connection with no request in flight and no bytes
    /// arriving may stay open before it is closed. A busy connection is not cut: its next
    /// response carries `Connection: close`. Default 500 ms.
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.idle_grace = grace;
        self
    }

    /// How long a client may take to send a request's headers (slowloris defence). For the
    /// first request the time counts from the accept, whatever the client does meanwhile: a
    /// TLS handshake, an HTTP/2 preface and settings, nothing at all. For a later request on
    /// an HTTP/1 keep-alive connection it counts from the request's first byte, and the
    /// connection is closed within 1.5 times it (its counters are checked every quarter of
    /// it, never per request); waiting between requests is the idle timeout's business.
    /// Default 10 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Server {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection with no request in flight may stay open: an HTTP/1 keep-alive
    /// connection between requests, or an HTTP/2 connection with no open stream (PINGs do not
    /// count). Then it is closed; HTTP/2 first gets GOAWAY. Default 120 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Server {
        self.idle_timeout = timeout;
        self
    }

    /// At most this many connections at once, per address; more wait in the listen backlog.
    pub fn max_connections(mut self, limit: usize) -> Server {
        self.max_connections = Some(limit.max(1));
        self
    }

    /// Puts what the connection knows in every request's extensions: the [`Drain`]
    /// (`req.extensions().get::<gracehttp::Drain>()`, axum's `Extension<gracehttp::Drain>`),
    /// the peer's [`PeerAddr`](gracenet::tokio::PeerAddr), and with the `axum` feature axum's
    /// `ConnectInfo<SocketAddr>` for TCP peers. Off by default, as in axum (where
    /// `into_make_service_with_connect_info` asks for it): they cost four allocations per
    /// request (five with `ConnectInfo`), about 3 % of a small keep-alive request
    /// (BENCHMARKS.md). Without them, a handler learns of the drain from the [`Generation`]
    /// given to [`generation`](Self::generation), kept in its state.
    pub fn request_extensions(mut self, on: bool) -> Server {
        self.request_extensions = on;
        self
    }

    /// Keeps the next process started ahead, waiting, so a restart only wakes it (see gracenet's
    /// `GenerationBuilder::standby`): the restart skips `execve`, the loader and what `main`
    /// does before [`serve`](Self::serve) (or its first call into gracenet). Off by default.
    /// With it, read configuration after that call, or the standby reads it when it starts
    /// instead of at the restart.
    pub fn standby(mut self, on: bool) -> Server {
        self.standby = on;
        self
    }

    /// Answers `restart` (with its result) and `status` on a Unix socket at `path` (see
    /// gracenet's `GenerationBuilder::control_socket` and `gracenet::control`).
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Server {
        self.control_socket = Some(path.into());
        self
    }

    /// Keeps `path` naming the serving process (see gracenet's `GenerationBuilder::pid_file`).
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Server {
        self.pid_file = Some(path.into());
        self
    }

    /// Serves until this process is done (a restart handed over, or a stop), on a tokio
    /// runtime of its own: grace's `gracehttp.Serve`.
    ///
    /// # Errors
    /// As [`run`](Self::run); [`Error::Runtime`] when tokio cannot start.
    pub fn serve(self) -> Result<(), Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        // The inherited environment is read first, while this is the process's only thread:
        // its variables can then be removed soundly, and its fds are checked before the
        // runtime opens any fd of its own (one could take a closed inherited fd's number).
        gracenet::registry::registry()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        runtime.block_on(self.run()).map(|_| ())
    }

    /// Serves on the current tokio runtime until this process is done.
    ///
    /// # Errors
    /// [`Error::NoServers`] with nothing to serve; [`Error::Net`] when the inherited
    /// environment is malformed or an address cannot be listened on (nothing is served then).
    pub async fn run(mut self) -> Result<Outcome, Error> {
        if self.sites.is_empty() {
            return Err(Error::NoServers);
        }
        // TLS session ticket keys, shared by the TLS sites and handed to the next process, so
        // that clients resume their sessions across a restart.
        let ticket_keys = self
            .sites
            .iter()
            .any(|s| s.tls.as_ref().is_some_and(Tls::takes_ticket_keys))
            .then(TicketKeys::new)
            .flatten();
        let ours = self.generation.is_none();
        let generation = match self.generation.take() {
            // The application's: the state it hands over is its own.
            Some(g) => g,
            None => {
                // gracehttp prints grace's own serving line (announce below): gracenet's is
                // not repeated.
                let mut builder = Generation::builder()
                    .announce(false)
                    .stop_timeout(self.stop_timeout)
                    .ready_timeout(self.ready_timeout)
                    .standby(self.standby);
                if let Some(p) = &self.pid_file {
                    builder = builder.pid_file(p);
                }
                if let Some(p) = &self.control_socket {
                    builder = builder.control_socket(p);
                }
                if let Some(keys) = &ticket_keys {
                    let keys = keys.clone();
                    builder = builder.hand_state(move || keys.handed());
                }
                builder.start()?
            }
        };
        // Read while the listeners are set up: the previous process sends the keys from a
        // thread of its own, which can take a while to be scheduled.
        let adopting = match (&ticket_keys, ours) {
            (Some(keys), true) => {
                let (keys, generation) = (keys.clone(), generation.clone());
                Some(tokio::spawn(async move {
                    adopt_ticket_keys(&generation, &keys).await
                }))
            }
            _ => None,
        };
        let mut listeners = Vec::with_capacity(self.sites.len());
        for site in &mut self.sites {
            listeners.push(match (site.make.take(), &site.name) {
                (Some(make), Some(name)) => generation.adopt(name, make)?,
                (_, Some(name)) => generation.listen_named(name, &site.addr)?,
                _ => generation.listen(&site.addr)?,
            });
        }
        if let Some(f) = self.on_listening.take() {
            let bound: Vec<gracenet::LocalAddr> = listeners.iter().map(|l| l.local_addr().clone()).collect();
            f(&bound);
        }
        let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().to_string()).collect();
        announce(&generation, &addrs.join(", "));
        if let Some(adopting) = adopting {
            // Before the first connection: a ticket the previous process gave then resumes.
            let _ = adopting.await;
        }
        if let Some(keys) = &ticket_keys {
            for site in &mut self.sites {
                site.tls = site.tls.take().map(|t| t.with_ticket_keys(keys));
            }
        }

        let mut http1 = hyper::server::conn::http1::Builder::new();
        // The header read timeout is the connection's own (connection.rs): hyper's would arm a
        // timer for every request (measured: 4-5 % of a keep-alive request's cost).
        http1.header_read_timeout(None);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        let config = ConnConfig {
            builders: Builders { http1, http2 },
            idle_grace: self.idle_grace,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_extensions: self.request_extensions,
            peer_errors: Arc::default(),
        };
        let (readied, ready_result) = tokio::sync::oneshot::channel();
        let ready = Arc::new(ReadyWhenAccepting {
            left: AtomicUsize::new(self.sites.len()),
            generation: generation.clone(),
            readied: Mutex::new(Some(readied)),
        });
        for (site, listener) in self.sites.into_iter().zip(listeners) {
            let limit = self.max_connections.map(|n| Arc::new(Semaphore::new(n)));
            tokio::spawn(accept_loop(
                listener,
                site,
                generation.clone(),
                config.clone(),
                limit,
                ready.clone(),
            ));
        }
        drop(ready);
        match ready_result.await {
            Ok(result) => result?,
            // Every loop ended before the last one started (cannot happen: each tells first).
            Err(_) => generation.ready()?,
        }
        let outcome = generation.wait().await;
        tracing::info!(
            generation = generation.number(),
            "Exiting pid {}.",
            std::process::id()
        );
        Ok(outcome)
    }
}

/// Takes the TLS session ticket keys the previous process handed over, if it did. Never fails
/// the start: without them, clients make one full handshake with this process.
async fn adopt_ticket_keys(generation: &Generation, keys: &TicketKeys) {
    match generation.inherited_state().await {
        Ok(None) => {}
        Ok(Some(handed)) => {
            if !keys.adopt(&handed) {
                tracing::warn!(
                    "the previous process handed over state that is not TLS session ticket keys: new keys (clients make one full handshake)"
                );
            }
        }
        Err(e) => tracing::warn!(
            "TLS session ticket keys not taken from the previous process ({e}): new keys (clients make one full handshake)"
        ),
    }
}

/// grace's first log line, with the real addresses.
fn announce(generation: &Generation, addrs: &str) {
    let pid = std::process::id();
    let number = generation.number();
    match (generation.registry().origin(), number) {
        (Origin::Fresh, _) => tracing::info!(generation = number, "Serving {addrs} with pid {pid}."),
        (Origin::Activated, 1) => tracing::info!(generation = number, "Listening on init activated {addrs}"),
        _ => tracing::info!(
            generation = number,
            "Graceful handoff of {addrs} with new pid {pid} and old pid {}.",
            nix_ppid()
        ),
    }
}

fn nix_ppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serve_inside_a_runtime_is_an_error_not_a_panic() {
        let app = crate::from_hyper(hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::new(),
            )))
        }));
        let err = Server::new().http("127.0.0.1:0", app).serve().unwrap_err();
        assert!(matches!(err, Error::InsideRuntime), "{err}");
        assert!(err.to_string().contains("await Server::run instead"), "{err}");
    }
}
