//! The server: several addresses, each with a service and optional TLS, served together and
//! restarted together through gracenet's lifecycle.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use gracenet::registry::Origin;
use gracenet::{Generation, GenerationBuilder, Outcome};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::connection::{Builders, ConnConfig, SiteContext, hand_over_state};
use crate::drain::Drain;
use crate::error::Error;
use crate::service::HttpService;
use crate::session_tickets::TicketKeys;
use crate::site::{Listening, ReadyWhenAccepting, Served, Site, accept_loop, serve_handed};
use crate::timeouts::ConnectionTimeouts;
use crate::tls::Tls;

/// Called with the sites listening before serving starts.
type OnListening = Box<dyn FnOnce(&[Listening]) + Send>;

/// The lifecycle a server serves on.
enum Lifecycle {
    /// Started by the server, with these settings.
    Builder(GenerationBuilder),
    /// Started by the application.
    Started(Generation),
}

/// HTTP/1.1 and HTTP/2 servers on one or more addresses that restart (`SIGUSR2`) and stop
/// (`SIGTERM`, `SIGINT`) without losing a request.
///
/// What is served is a list of [`Site`]s (`.http(addr, app)` and `.https(addr, tls, app)`
/// add the common ones); how the process restarts and stops (timeouts, PID file, control
/// socket, standby) is gracenet's [`GenerationBuilder`], given with
/// [`lifecycle`](Self::lifecycle), or a [`Generation`] the application started, given with
/// [`generation`](Self::generation).
///
/// ```no_run
/// # fn main() -> Result<(), gracehttp::Error> {
/// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # }));
/// use std::time::Duration;
/// let tls = gracehttp::Tls::from_pem_files("cert.pem", "key.pem")?;
/// gracehttp::Server::new()
///     .http(":8080", app.clone())
///     .https(":8443", tls, app)
///     .lifecycle(gracenet::Generation::builder().stop_timeout(Duration::from_secs(30)))
///     .serve()
/// # }
/// ```
#[must_use = "a Server does nothing until serve() or run() is called"]
pub struct Server {
    sites: Vec<Site>,
    timeouts: ConnectionTimeouts,
    max_connections: Option<usize>,
    request_extensions: bool,
    /// Whether keep-alive connections are handed to the next process (see
    /// [`Server::hand_over_connections`]).
    hand_over: bool,
    lifecycle: Lifecycle,
    on_listening: Option<OnListening>,
    workers: Option<usize>,
    max_requests: Option<u64>,
    surge: Option<usize>,
    max_memory: Option<u64>,
    worker_timeout: Option<Option<std::time::Duration>>,
    /// Secrets the primary hands every worker ([`Server::worker_secret`]).
    worker_secrets: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Server");
        d.field("sites", &self.sites)
            .field("timeouts", &self.timeouts)
            .field("max_connections", &self.max_connections)
            .field("request_extensions", &self.request_extensions)
            .field("workers", &self.workers)
            .field("hand_over", &self.hand_over);
        match &self.lifecycle {
            Lifecycle::Builder(b) => d.field("lifecycle", b),
            Lifecycle::Started(g) => d.field("generation", g),
        };
        d.finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            sites: Vec::new(),
            timeouts: ConnectionTimeouts::default(),
            max_connections: None,
            request_extensions: false,
            hand_over: false,
            lifecycle: Lifecycle::Builder(Generation::builder()),
            on_listening: None,
            workers: None,
            max_requests: None,
            surge: None,
            max_memory: None,
            worker_timeout: None,
            worker_secrets: Vec::new(),
        }
    }
}

impl Server {
    /// A server with nothing to serve yet, the default timeouts and lifecycle.
    pub fn new() -> Server {
        Server::default()
    }

    /// Serves `site`.
    pub fn site(mut self, site: Site) -> Server {
        self.sites.push(site);
        self
    }

    /// Serves `service` over cleartext HTTP/1.1 and HTTP/2 at `addr`: short for
    /// `.site(Site::http(addr, service))` (see [`Site::http`]).
    pub fn http<S: HttpService>(self, addr: impl Into<String>, service: S) -> Server {
        self.site(Site::http(addr, service))
    }

    /// Serves `service` over TLS at `addr`: short for `.site(Site::https(addr, tls, service))`
    /// (see [`Site::https`]).
    pub fn https<S: HttpService>(self, addr: impl Into<String>, tls: Tls, service: S) -> Server {
        self.site(Site::https(addr, tls, service))
    }

    /// How the process restarts and stops: gracenet's settings (stop and ready timeouts, PID
    /// file, control socket, standby, ...). The server starts the generation with them when it
    /// runs, and hands the TLS session ticket keys to the next process with
    /// [`hand_state`](GenerationBuilder::hand_state). A `builder` that hands state of its own
    /// is refused ([`Error::UnreadableState`], from [`run`](Self::run) and
    /// [`serve`](Self::serve)): only the process that holds the [`Generation`] can read state
    /// handed to it. To hand your own, start the generation yourself and serve on it with
    /// [`generation`](Self::generation) (gracehttp's `store` example).
    pub fn lifecycle(mut self, builder: GenerationBuilder) -> Server {
        self.lifecycle = Lifecycle::Builder(builder);
        self
    }

    /// Serves with `n` worker processes on the same sockets (0: one per core), under a primary
    /// process that keeps the stable pid, replaces a worker that dies or hangs, and restarts
    /// them one at a time on `SIGUSR2` (see [`gracenet::cluster`]). The lifecycle's control
    /// socket, PID file and ready timeout become the primary's. Needs
    /// [`serve`](Self::serve): in the primary, `serve` does not return (the process exits
    /// with the cluster's exit code); in each worker, it serves as usual. At most
    /// [`gracenet::cluster::MAX_WORKERS`]: more is refused when `serve` starts the cluster.
    pub fn workers(mut self, n: usize) -> Server {
        self.workers = Some(n);
        self
    }

    /// With [`workers`](Self::workers): how long a worker's runtime may stay silent before
    /// it is replaced (`None`: never); default
    /// [`gracenet::cluster::DEFAULT_WORKER_TIMEOUT`].
    pub fn worker_timeout(mut self, timeout: Option<std::time::Duration>) -> Server {
        self.worker_timeout = Some(timeout);
        self
    }

    /// With [`workers`](Self::workers): a worker that has served `n` HTTP requests (HTTP/1
    /// and HTTP/2, plus its own 0 to 10 %) is replaced by its own graceful restart, one at a
    /// time (see [`gracenet::ClusterBuilder::max_requests`]); `None` (the default): never.
    pub fn max_requests(mut self, n: Option<u64>) -> Server {
        self.max_requests = n;
        self
    }

    /// With [`workers`](Self::workers): how many workers a rolling restart replaces at once,
    /// each one more process while its successor starts (see
    /// [`gracenet::ClusterBuilder::surge`]); default 1.
    pub fn surge(mut self, n: usize) -> Server {
        self.surge = Some(n);
        self
    }

    /// With [`workers`](Self::workers): a worker whose resident memory reaches `bytes` (plus
    /// its own 0 to 10 %) is replaced by its own graceful restart, one at a time (see
    /// [`gracenet::ClusterBuilder::max_memory`]); `None` (the default): never.
    pub fn max_memory(mut self, bytes: Option<u64>) -> Server {
        self.max_memory = bytes;
        self
    }

    /// With [`workers`](Self::workers): `bytes` the primary hands every worker (and each
    /// worker its successor), read there with [`gracenet::cluster::secret(name)`]: for what
    /// every worker must serve alike and is made once, such as a certificate made at startup
    /// (see [`gracenet::ClusterBuilder::secret`]). Given in the primary; a worker's own call
    /// is ignored. The session ticket keys need none: the workers share them already.
    ///
    /// [`gracenet::cluster::secret(name)`]: gracenet::cluster::secret
    pub fn worker_secret(mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Server {
        self.worker_secrets.push((name.into(), bytes.into()));
        self
    }

    /// Serves on `generation`, already started by the application (which may serve raw
    /// gracenet listeners on it too): one lifecycle for the whole process, restarted and
    /// stopped together, with its builder's settings. The server still calls
    /// [`Generation::ready`](gracenet::Generation::ready) once its sites accept (calling it
    /// again is harmless). The application's state is its own: TLS session ticket keys are
    /// not handed over.
    pub fn generation(mut self, generation: Generation) -> Server {
        self.lifecycle = Lifecycle::Started(generation);
        self
    }

    /// Calls `f` with every site listening (its name and its address, the real port for
    /// `:0`), in the order the sites were added, before serving starts.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), gracehttp::Error> {
    /// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
    /// # }));
    /// use gracehttp::{Server, Site};
    /// Server::new()
    ///     .site(Site::http("127.0.0.1:0", app.clone()).named("public"))
    ///     .site(Site::http("127.0.0.1:0", app).named("admin"))
    ///     .on_listening(|sites| {
    ///         for site in sites {
    ///             println!("{}: {}", site.name.as_deref().unwrap_or("-"), site.addr);
    ///         }
    ///     })
    ///     .serve()
    /// # }
    /// ```
    pub fn on_listening(mut self, f: impl FnOnce(&[Listening]) + Send + 'static) -> Server {
        self.on_listening = Some(Box::new(f));
        self
    }

    /// The connections' timeouts (see [`ConnectionTimeouts`]).
    pub fn timeouts(mut self, timeouts: ConnectionTimeouts) -> Server {
        self.timeouts = timeouts;
        self
    }

    /// At most this many connections at once, per address; more wait in the listen backlog.
    pub fn max_connections(mut self, limit: usize) -> Server {
        self.max_connections = Some(limit.max(1));
        self
    }

    /// Puts what the connection knows in every request's extensions: the [`Drain`](crate::Drain)
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

    /// Whether, at a restart, cleartext HTTP/1.1 keep-alive connections are handed to the new
    /// process instead of being asked to reconnect. On: a request in flight finishes here
    /// (its response without `Connection: close`), then the connection, open, goes to the new
    /// process with the bytes already read of the next request, and the new process answers
    /// that request: a keep-alive client never reconnects. Off: its next response says
    /// `Connection: close`, or it is closed once idle, and the client reconnects (to the new
    /// process). HTTP/2 connections get GOAWAY either way.
    ///
    /// What is not handed over is drained as when off: TLS connections (rustls can export a
    /// session's traffic secrets, `dangerous_extract_secrets`, but cannot build a session
    /// from them in another process), a connection whose bytes this process cannot follow
    /// between requests (a chunked request body, an upgrade, a request saying
    /// `Connection: close`), and one the new process does not take (it is out of fds, or
    /// gone: nothing is lost, the connection stays here). If the new process dies, the
    /// connections it took close with it, as its accepted ones do.
    ///
    /// Off by default, as [`request_extensions`](Self::request_extensions) is, for its cost:
    /// following where each request ends (so that the bytes already read of the next one go
    /// along) takes about 2 % of the CPU of a small keep-alive request (measured: `wrk -c64`,
    /// gracedemo with it on and off side by side on one core), while a reconnect costs the
    /// server one accept per client per restart. Turn it on where clients should not see a
    /// restart at all (clients that do not retry, long-lived keep-alive flows through a load
    /// balancer or a NAT). A server that starts the lifecycle itself (with the default builder
    /// or [`lifecycle`](Self::lifecycle)) takes the connections the previous process hands
    /// over whatever this setting, so processes with it on and off can follow each other.
    /// With [`generation`](Self::generation), the application may hand its own connections
    /// over on that generation ([`Generation::hand_over`]): the server takes handed
    /// connections there only with this on ([`Generation::inherited_connections`] then
    /// belongs to the server).
    pub fn hand_over_connections(mut self, on: bool) -> Server {
        self.hand_over = on;
        self
    }

    /// [`Error::DuplicateSite`] if two sites listen on one address: a fixed port (port 0 gives
    /// each its own), or the same Unix socket. An address gracenet cannot read is left to
    /// the listen, which names what is wrong with it.
    fn refuse_duplicate_sites(&self) -> Result<(), Error> {
        use gracenet::ListenAddr;
        let mut seen = std::collections::HashSet::new();
        for site in self.sites.iter().filter(|s| s.make.is_none()) {
            let Ok(addr) = site.addr.parse::<ListenAddr>() else {
                continue;
            };
            let any_port = match &addr {
                ListenAddr::AnyIp { port } | ListenAddr::Host { port, .. } => *port == 0,
                ListenAddr::Ip(ip) => ip.port() == 0,
                _ => false,
            };
            if !any_port && !seen.insert(addr) {
                return Err(Error::DuplicateSite {
                    addr: site.addr.clone(),
                });
            }
        }
        Ok(())
    }

    /// [`Error::UnreadableState`] if the lifecycle builder hands state: the server holds the
    /// generation, so the next process could not read it.
    fn refuse_unreadable_state(&self) -> Result<(), Error> {
        match &self.lifecycle {
            Lifecycle::Builder(builder) if builder.hands_state() => Err(Error::UnreadableState),
            _ => Ok(()),
        }
    }

    /// Serves until this process is done (a restart handed over, or a stop), on a tokio
    /// runtime of its own: grace's `gracehttp.Serve`. As PID 1 (a container with no init), it
    /// runs as gracenet's supervisor, which stays PID 1 while the generations it starts serve
    /// and restart: otherwise the first restart's old process would end the container as it
    /// exits.
    ///
    /// # Errors
    /// As [`run`](Self::run); [`Error::Runtime`] when tokio cannot start.
    pub fn serve(self) -> Result<(), Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        self.refuse_unreadable_state()?;
        // Before a cluster's primary starts: each worker would fail, one after the other.
        self.refuse_duplicate_sites()?;
        if let Some(n) = self.workers
            && gracenet::should_supervise(true)
        {
            let Lifecycle::Builder(lifecycle) = &self.lifecycle else {
                return Err(Error::WorkersNeedServe);
            };
            gracenet::hold_supervisor_signals();
            let mut cluster = lifecycle.cluster().workers(n);
            if let Some(timeout) = self.worker_timeout {
                cluster = cluster.worker_timeout(timeout);
            }
            cluster = cluster
                .max_requests(self.max_requests)
                .max_memory(self.max_memory);
            if let Some(n) = self.surge {
                cluster = cluster.surge(n);
            }
            for (name, bytes) in &self.worker_secrets {
                cluster = cluster.secret(name.clone(), bytes.clone());
            }
            let code = cluster.run()?;
            std::process::exit(code);
        }
        // (gracenet takes GRACE_WORKER out of the environment as it starts: a worker is known
        // by its slot.)
        if self.workers.is_some()
            && gracenet::cluster::worker_slot().is_none()
            && std::env::var_os(gracenet::vars::GRACE_SUPERVISOR).is_some()
        {
            crate::log::warn!(
                "Server::workers is ignored: this process is a generation of gracenet's supervisor (GRACE_SUPERVISOR is set) and serves alone; a cluster's primary is a supervisor itself, so call Server::serve without supervise() (gracedemo: --workers without --supervise)"
            );
        }
        if self.workers.is_none()
            && matches!(self.lifecycle, Lifecycle::Builder(_))
            && gracenet::should_supervise(false)
        {
            // PID 1 (a container's init) with no supervisor above: the old process's exit at
            // a restart would end the container, the new process with it. A supervisor stays
            // PID 1 across restarts (as `gracedemo --supervise` does); the generations it
            // starts serve as usual.
            let code = gracenet::supervise()?;
            std::process::exit(code);
        }
        // The inherited environment is read first, while this is the process's only thread:
        // its variables can then be removed soundly, and its fds are checked before the
        // runtime opens any fd of its own (one could take a closed inherited fd's number).
        gracenet::registry()?;
        runtime()?.block_on(self.run()).map(|_| ())
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
        self.refuse_unreadable_state()?;
        self.refuse_duplicate_sites()?;
        if self.workers.is_some() && gracenet::should_supervise(true) {
            return Err(Error::WorkersNeedServe);
        }
        // TLS session ticket keys, shared by the TLS sites and handed to the next process, so
        // that clients resume their sessions across a restart. In a cluster's worker, derived
        // from the secret every worker shares: the same in every worker, so a client resumes on
        // any of them, and in each one's successor, so nothing is handed over.
        let ticket_keys = self
            .sites
            .iter()
            .any(|s| s.tls.as_ref().is_some_and(Tls::takes_ticket_keys))
            .then(
                || match gracenet::cluster::secret(gracenet::cluster::RANDOM_SECRET) {
                    Some(secret) => TicketKeys::shared(secret),
                    None => TicketKeys::new(),
                },
            )
            .flatten();
        let handed_keys = ticket_keys.as_ref().filter(|k| !k.is_shared());
        // The lifecycle is the server's own: nobody else takes handed-over connections.
        let own_lifecycle = matches!(self.lifecycle, Lifecycle::Builder(_));
        let hand_over = self.hand_over;
        let (generation, ours) =
            match std::mem::replace(&mut self.lifecycle, Lifecycle::Builder(Generation::builder())) {
                // The application's: the state it hands over is its own.
                Lifecycle::Started(g) => (g, false),
                Lifecycle::Builder(builder) => {
                    // gracehttp prints grace's own serving line (announce below): gracenet's is
                    // not repeated. The state handed over is the server's own (refused above
                    // otherwise).
                    let mut builder = builder.announce(false);
                    let ours = !builder.hands_state();
                    if let (Some(keys), true) = (handed_keys, ours) {
                        let keys = keys.clone();
                        builder = builder.hand_state(move || {
                            let handed = keys.handed();
                            async move { handed }
                        });
                    }
                    (builder.start()?, ours)
                }
            };
        // Read while the listeners are set up: the previous process sends the keys from a
        // thread of its own, which can take a while to be scheduled.
        let adopting = match (handed_keys, ours) {
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
            let bound: Vec<Listening> = self
                .sites
                .iter()
                .zip(&listeners)
                .map(|(site, l)| Listening {
                    name: site.name.clone(),
                    addr: l.local_addr().clone(),
                })
                .collect();
            f(&bound);
        }
        let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().to_string()).collect();
        // Said once ready (the PID file written), not before a start that then fails; its
        // words are chosen now, while the previous process is still this one's parent.
        let serving = serving_line(&generation, &addrs.join(", "));
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
        // A client that sends its request and then shuts its side (`nc -N`, scripted health
        // checks) is answered, as Go's server answers it; hyper's default closes at the EOF,
        // dropping the request in flight.
        http1.half_close(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        let config = ConnConfig {
            builders: Builders { http1, http2 },
            idle_grace: self.timeouts.idle_grace,
            header_read_timeout: self.timeouts.header_read,
            idle_timeout: self.timeouts.idle,
            request_extensions: self.request_extensions,
            peer_errors: Arc::default(),
            hand_over,
        };
        let (readied, ready_result) = tokio::sync::oneshot::channel();
        let ready = Arc::new(ReadyWhenAccepting {
            left: AtomicUsize::new(self.sites.len()),
            generation: generation.clone(),
            readied: Mutex::new(Some(readied)),
        });
        let mut served = Vec::with_capacity(self.sites.len());
        for (site, listener) in self.sites.into_iter().zip(listeners) {
            // A handed-over connection goes to the site of the same name, or address.
            let key = site
                .name
                .clone()
                .unwrap_or_else(|| listener.local_addr().to_string());
            let context = Arc::new(SiteContext {
                tls: site.tls,
                drain: Drain::new(generation.clone()),
                config: config.clone(),
                hand_over_state: hand_over_state(&key),
            });
            let site = Served {
                service: site.service,
                context,
            };
            served.push((site.context.hand_over_state.clone(), site.clone()));
            let limit = self.max_connections.map(|n| Arc::new(Semaphore::new(n)));
            tokio::spawn(accept_loop(
                listener,
                site,
                generation.clone(),
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
        grace_line(&generation, || crate::log::info!("{serving}"));
        if hand_over || own_lifecycle {
            // Served: the previous process hands its keep-alive connections over now. Asked
            // for here, before anything else runs: gracenet answers "not taken" for those
            // nobody asked for shortly after `ready`.
            let handed = generation.inherited_connections().await;
            tokio::spawn(serve_handed(generation.clone(), handed, served));
        }
        let outcome = generation.wait().await;
        // What peers did since the last report is not lost with the process.
        config.peer_errors.report();
        grace_line(&generation, || {
            crate::log::info!("Exiting pid {}.", std::process::id())
        });
        Ok(outcome)
    }
}

/// Takes the TLS session ticket keys the previous process handed over, if it did. Never fails
/// the start: without them, clients make one full handshake with this process.
async fn adopt_ticket_keys(generation: &Generation, keys: &TicketKeys) {
    match generation.inherited_state().await {
        Ok(None) => {}
        Ok(Some(handed)) => {
            if !keys.adopt(&handed.snapshot) {
                crate::log::warn!(
                    "the previous process handed over state that is not TLS session ticket keys: new keys (clients make one full handshake)"
                );
            }
        }
        Err(e) => crate::log::warn!(
            error = %e,
            "TLS session ticket keys not taken from the previous process: new keys (clients make one full handshake)"
        ),
    }
}

/// grace's first log line, with the real addresses.
fn serving_line(generation: &Generation, addrs: &str) -> String {
    let pid = std::process::id();
    let from_primary = generation.worker_slot().filter(|_| {
        std::env::var(gracenet::vars::GRACE_SUPERVISOR).ok()
            == Some(std::os::unix::process::parent_id().to_string())
    });
    if let Some(slot) = from_primary {
        return format!("Worker {slot} serving {addrs} with pid {pid}.");
    }
    // A hand-over only when a previous process started this one to take over (a supervisor's
    // crash restart, or a shell that set LISTEN_FDS, hands nothing over).
    match (
        generation.previous_pid(),
        generation.registry().origin(),
        generation.number(),
    ) {
        (Some(old), _, _) => format!("Graceful handoff of {addrs} with new pid {pid} and old pid {old}."),
        // Sockets from systemd, or passed on by a supervisor that has them from it, at least
        // one of them served (Go's line lists every address, the ones bound here too); a
        // supervisor's first generation given none binds its own, and a program that asks
        // for none of the activated addresses is not served by them.
        (None, Origin::Activated, 1)
            if generation.registry().inherited() > generation.registry().unclaimed().len() =>
        {
            format!("Listening on init activated {addrs}")
        }
        (None, _, _) => format!("Serving {addrs} with pid {pid}."),
    }
}

/// Logs one of grace's own lines (`log`), the exception to the crate's convention of a fixed
/// message with the values in fields: their wording, values and all, is Go grace's (and, for
/// a cluster's workers, `Worker N serving …` in the same style), which operators and scripts
/// match on. The generation is a field of a `grace` span around it, so a formatter that
/// prints only messages (Go's format) prints the line exactly.
fn grace_line(generation: &Generation, log: impl FnOnce()) {
    tracing::info_span!("grace", generation = generation.number()).in_scope(log);
}

/// The multi-threaded tokio runtime [`Server::serve`] runs on, or why it cannot start.
///
/// tokio panics when its first thread cannot start (and starts with fewer workers, some of
/// which never run, when a later one cannot): under a low limit on threads (`RLIMIT_NPROC`)
/// that was a panic, or a process that neither served nor exited. The threads it needs are
/// started first, as a trial: when they cannot all start, the error names the limit.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    // Its workers, and one for blocking work.
    try_threads(workers + 1).map_err(|e| {
        Error::Runtime(std::io::Error::new(
            e.kind(),
            format!(
                "cannot start its {workers} worker threads: {}",
                gracenet::thread_error(&e)
            ),
        ))
    })?;
    // Another process of the same user can still take the last threads meanwhile: tokio's
    // panic is then an error too.
    std::panic::catch_unwind(|| tokio::runtime::Builder::new_multi_thread().enable_all().build())
        .map_err(|_| {
            Error::Runtime(std::io::Error::other(
                "its threads could not start (is a limit on threads, RLIMIT_NPROC, reached?)",
            ))
        })?
        .map_err(Error::Runtime)
}

/// Starts `n` threads that wait until all are started, then lets them end: whether `n`
/// threads can start now. The first failure is returned.
fn try_threads(n: usize) -> std::io::Result<()> {
    let gate = std::sync::Arc::new(std::sync::RwLock::new(()));
    let held = gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut started = Vec::with_capacity(n);
    let mut failed = None;
    for _ in 0..n {
        let gate = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("gracehttp-trial".into())
            .stack_size(64 * 1024)
            .spawn(move || drop(gate.read()));
        match spawned {
            Ok(thread) => started.push(thread),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(held);
    for thread in started {
        let _ = thread.join();
    }
    failed.map_or(Ok(()), Err)
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

    fn empty_app() -> impl crate::HttpService {
        crate::from_hyper(hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::new(),
            )))
        }))
    }

    /// A server whose lifecycle builder hands state nothing could read, listening on `addr`.
    fn handing_unreadable_state(addr: std::net::SocketAddr) -> Server {
        let builder = Generation::builder().hand_state(|| async { b"the application's".to_vec() });
        Server::new()
            .http(addr.to_string(), empty_app())
            .lifecycle(builder)
    }

    #[tokio::test]
    async fn a_lifecycle_builder_that_hands_state_is_refused_before_anything_listens() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let err = handing_unreadable_state(addr).run().await.unwrap_err();
        assert!(matches!(err, Error::UnreadableState), "{err}");
        assert!(err.to_string().contains("Server::generation"), "{err}");
        std::net::TcpListener::bind(addr).expect("nothing listens at the address");
    }

    #[tokio::test]
    async fn two_sites_on_one_address_are_refused_naming_it_and_port_0_twice_is_not() {
        let dir = std::env::temp_dir().join(format!("gracehttp-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let sock = format!("unix:{}", dir.join("app.sock").display());
        // A port free now: were the check gone, the first site would bind it, not another
        // test's.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addrs = [
            format!("127.0.0.1:{port}"),
            format!(":{port}"),
            format!("[::1]:{port}"),
            format!("localhost:{port}"),
            sock,
        ];
        for addr in addrs.iter().map(String::as_str) {
            let err = Server::new()
                .http(addr, empty_app())
                .http(addr, empty_app())
                .run()
                .await
                .unwrap_err();
            assert!(matches!(err, Error::DuplicateSite { .. }), "{addr}: {err}");
            assert!(err.to_string().contains(addr), "{err}");
        }
        assert!(
            !dir.join("app.sock").exists(),
            "refused before anything was bound, so no socket file is left"
        );
        let _ = std::fs::remove_dir_all(&dir);
        // Port 0 twice gives two ports: not a duplicate.
        let twice = Server::new()
            .http("127.0.0.1:0", empty_app())
            .http("127.0.0.1:0", empty_app());
        assert!(twice.refuse_duplicate_sites().is_ok());
    }

    #[test]
    fn serve_refuses_a_lifecycle_builder_that_hands_state_too() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        // On a thread of its own: a serve that did not refuse would serve on, not return.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(handing_unreadable_state(addr).serve()));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("serve returned at once");
        let err = result.unwrap_err();
        assert!(matches!(err, Error::UnreadableState), "{err}");
    }
}
