//! A site: one address the server serves, with its service and TLS, and the loop that accepts
//! its connections and spawns a task for each. The site's service type is erased here, once
//! per connection (the task is spawned by a typed function behind [`SiteService`]), never per
//! request.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use gracenet::Generation;
use tokio::sync::Semaphore;

use crate::connection::{self, Accepted, Handed, SiteContext};
use crate::service::HttpService;
use crate::tls::Tls;

/// Makes an application's own listener (see [`Site::adopt_http`]).
pub(crate) type MakeListener = Box<dyn FnOnce() -> std::io::Result<std::os::fd::OwnedFd> + Send>;

/// One address a [`Server`](crate::Server) serves, with its service and, over TLS, its
/// certificate: cleartext ([`http`](Self::http)), TLS ([`https`](Self::https)), or on a
/// listener the application makes itself ([`adopt_http`](Self::adopt_http),
/// [`adopt_https`](Self::adopt_https)); optionally [`named`](Self::named).
///
/// ```no_run
/// # fn main() -> Result<(), gracehttp::Error> {
/// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # }));
/// use gracehttp::{Server, Site};
/// Server::new()
///     .site(Site::http(":8080", app.clone()).named("public"))
///     .site(Site::http("127.0.0.1:9090", app).named("admin"))
///     .serve()
/// # }
/// ```
#[must_use = "a Site is served once given to Server::site"]
pub struct Site {
    pub(crate) addr: String,
    pub(crate) name: Option<String>,
    /// The application's own listener, registered under `name`, instead of `addr`.
    pub(crate) make: Option<MakeListener>,
    pub(crate) tls: Option<Tls>,
    pub(crate) service: Arc<dyn SiteService>,
}

impl Site {
    /// Cleartext HTTP/1.1 and HTTP/2 (prior knowledge) at `addr`, in any form gracenet
    /// accepts (`":8080"`, `"127.0.0.1:0"`, `"unix:/run/app.sock"`). `service` is any tower
    /// service: an axum `Router`, `tower::service_fn`, or a hyper service through
    /// [`from_hyper`](crate::from_hyper).
    pub fn http<S: HttpService>(addr: impl Into<String>, service: S) -> Site {
        Site {
            addr: addr.into(),
            name: None,
            make: None,
            tls: None,
            service: erase(service),
        }
    }

    /// TLS at `addr`: HTTP/2 or HTTP/1.1 as ALPN decides.
    pub fn https<S: HttpService>(addr: impl Into<String>, tls: Tls, service: S) -> Site {
        Site {
            tls: Some(tls),
            ..Site::http(addr, service)
        }
    }

    /// Cleartext HTTP/1.1 and HTTP/2 on a listener the application makes itself (a
    /// `std::net::TcpListener` or `UnixListener` bound with its own options), registered under
    /// `name` and passed on at every restart. `make` runs only in a process that did not
    /// inherit `name` (the first); later generations get the same socket.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), gracehttp::Error> {
    /// # let app = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
    /// # }));
    /// gracehttp::Server::new()
    ///     .site(gracehttp::Site::adopt_http("api", || std::net::TcpListener::bind("127.0.0.1:8080"), app))
    ///     .serve()
    /// # }
    /// ```
    pub fn adopt_http<L, F, S>(name: &str, make: F, service: S) -> Site
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        S: HttpService,
    {
        Site {
            name: Some(name.to_owned()),
            make: Some(Box::new(move || make().map(Into::into))),
            ..Site::http(name, service)
        }
    }

    /// [`adopt_http`](Self::adopt_http) over TLS.
    pub fn adopt_https<L, F, S>(name: &str, make: F, tls: Tls, service: S) -> Site
    where
        L: Into<std::os::fd::OwnedFd>,
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        S: HttpService,
    {
        Site {
            tls: Some(tls),
            ..Site::adopt_http(name, make, service)
        }
    }

    /// Names the site. An inherited socket of that name (systemd's `FileDescriptorName=`,
    /// `LISTEN_FDNAMES`) is served here whatever its address, a socket bound here is passed on
    /// under that name at each restart, and [`Server::on_listening`](crate::Server::on_listening)
    /// reports the site by it.
    pub fn named(mut self, name: &str) -> Site {
        self.name = Some(name.to_owned());
        self
    }
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match &self.name {
            Some(n) => write!(f, "{scheme} {} ({n})", self.addr),
            None => write!(f, "{scheme} {}", self.addr),
        }
    }
}

/// A site listening, as [`Server::on_listening`](crate::Server::on_listening) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listening {
    /// The site's name, if it was [`named`](Site::named) (or adopted).
    pub name: Option<String>,
    /// The address it listens on, as the kernel reports it (the real port for `:0`).
    pub addr: gracenet::LocalAddr,
}

/// A site's service with its type erased: spawns the task serving one accepted connection.
pub(crate) trait SiteService: Send + Sync {
    /// Serves `accepted` on its own task, to its end.
    fn spawn(&self, accepted: Accepted, site: Arc<SiteContext>);
    /// Serves `handed` (a cleartext HTTP/1.1 connection) on its own task, to its end.
    fn spawn_handed(&self, handed: Handed, site: Arc<SiteContext>);
}

/// The one implementation of [`SiteService`], for any service.
struct Typed<S>(S);

impl<S: HttpService> SiteService for Typed<S> {
    fn spawn(&self, accepted: Accepted, site: Arc<SiteContext>) {
        let service = self.0.clone();
        match site.tls.clone() {
            None => drop(tokio::spawn(connection::serve_plain(service, accepted, site))),
            Some(tls) => drop(tokio::spawn(connection::serve_tls(service, accepted, site, tls))),
        }
    }

    fn spawn_handed(&self, handed: Handed, site: Arc<SiteContext>) {
        drop(tokio::spawn(connection::serve_handed(
            self.0.clone(),
            handed,
            site,
        )));
    }
}

/// Erases `service`'s type.
pub(crate) fn erase<S: HttpService>(service: S) -> Arc<dyn SiteService> {
    Arc::new(Typed(service))
}

/// Reports the generation ready once every accept loop is running, from the loop that starts
/// last, on the thread running it. The previous generation stops accepting when it hears, so
/// a connection must never wait in a queue nobody polls (measured: 2 ms under load between the
/// old process's last accept and the new one's first, when READY was sent as the loops were
/// spawned); and on a saturated core every hand-over between threads can wait a time slice,
/// so READY does not go back through the thread that spawned the loops.
pub(crate) struct ReadyWhenAccepting {
    /// Accept loops not yet running.
    pub left: AtomicUsize,
    pub generation: Generation,
    /// Where the result of `Generation::ready` goes (a PID file that cannot be written).
    pub readied: Mutex<Option<tokio::sync::oneshot::Sender<Result<(), gracenet::Error>>>>,
}

impl ReadyWhenAccepting {
    fn loop_started(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let result = self.generation.ready();
            if let Some(readied) = self.readied.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = readied.send(result);
            }
        }
    }
}

/// A site as its connections are served: its service and what its connections share.
#[derive(Clone)]
pub(crate) struct Served {
    pub service: Arc<dyn SiteService>,
    pub context: Arc<SiteContext>,
}

pub(crate) async fn accept_loop(
    mut listener: gracenet::GracefulListener,
    site: Served,
    generation: Generation,
    limit: Option<Arc<Semaphore>>,
    ready: Arc<ReadyWhenAccepting>,
) {
    // Told at the loop's first poll, which goes straight on to wait on the listener: from here
    // its worker thread takes connections as soon as the reactor reports them.
    ready.loop_started();
    drop(ready);
    let Served { service, context } = site;
    loop {
        let permit = match &limit {
            None => None,
            Some(sem) => tokio::select! {
                permit = sem.clone().acquire_owned() => permit.ok(),
                // Draining: the listener now hands out only what other workers of a cluster
                // passed here before the drain, then ends; those are served without a place.
                _ = generation.draining() => None,
            },
        };
        let Some((stream, peer)) = listener.accept_with_peer().await else {
            break;
        };
        let at = tokio::time::Instant::now();
        if let gracenet::tokio::Stream::Tcp(tcp) = &stream {
            // Small writes (HTTP/2 frames, TLS records) must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
        }
        let accepted = Accepted {
            stream,
            peer,
            at,
            guard: generation.track(),
            permit,
        };
        service.spawn(accepted, context.clone());
    }
    // Stopped accepting: the socket is now only the next process's (or closed).
    drop(listener);
}

/// Serves the connections the previous process hands over, each on the site it was handed
/// from (by the site's key, in what it came with), as they arrive. One gracehttp did not hand,
/// or of a site this process does not serve, is closed between its requests (it is this
/// process's once taken).
pub(crate) async fn serve_handed(
    generation: Generation,
    handed: Result<Option<gracenet::InheritedConnections>, gracenet::Error>,
    sites: Vec<(Vec<u8>, Served)>,
) {
    let mut handed = match handed {
        Ok(Some(handed)) => handed,
        Ok(None) => return,
        Err(e) => {
            crate::log::warn!(error = %e, "cannot take the connections the previous process hands over");
            return;
        }
    };
    let mut taken = 0u64;
    while let Some(c) = handed.next().await {
        let (site_state, waited) = connection::split_handed(&c.state);
        let Some((_, site)) = sites.iter().find(|(state, _)| state[..] == *site_state) else {
            let key = connection::handed_site_key(site_state);
            crate::log::warn!(
                "closing a connection handed over for {}: no such site here",
                key.map_or_else(
                    || "something other than gracehttp".to_owned(),
                    |k| format!("site {k}")
                )
            );
            continue;
        };
        taken += 1;
        let peer = c.stream.peer();
        if let gracenet::tokio::Stream::Tcp(tcp) = &c.stream {
            let _ = tcp.set_nodelay(true);
        }
        let conn = Handed {
            stream: c.stream,
            unread: c.unread,
            peer,
            at: tokio::time::Instant::now(),
            waited,
            guard: generation.track(),
        };
        site.service.spawn_handed(conn, site.context.clone());
    }
    crate::log::debug!(taken, "took the connections the previous process handed over");
}
