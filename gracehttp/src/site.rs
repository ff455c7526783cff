//! A site: one address the server serves, with its service and TLS, and the loop that accepts
//! its connections and spawns a task for each. The site's service type is erased here, once
//! per connection (the task is spawned by a typed function behind [`SiteService`]), never per
//! request.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use gracenet::Generation;
use tokio::sync::Semaphore;

use crate::connection::{self, Accepted, ConnConfig, SiteContext};
use crate::drain::Drain;
use crate::service::HttpService;
use crate::tls::Tls;

/// Makes an application's own listener (see [`Server::adopt_http`]).
pub(crate) type MakeListener = Box<dyn FnOnce() -> std::io::Result<std::os::fd::OwnedFd> + Send>;

pub(crate) struct Site {
    pub addr: String,
    pub name: Option<String>,
    /// The application's own listener, registered under `name`, instead of `addr`.
    pub make: Option<MakeListener>,
    pub tls: Option<Tls>,
    pub service: Arc<dyn SiteService>,
}

/// A site's service with its type erased: spawns the task serving one accepted connection.
pub(crate) trait SiteService: Send + Sync {
    /// Serves `accepted` on its own task, to its end.
    fn spawn(&self, accepted: Accepted, site: Arc<SiteContext>);
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

pub(crate) async fn accept_loop(
    mut listener: gracenet::GracefulListener,
    site: Site,
    generation: Generation,
    config: ConnConfig,
    limit: Option<Arc<Semaphore>>,
    ready: Arc<ReadyWhenAccepting>,
) {
    // Told at the loop's first poll, which goes straight on to wait on the listener: from here
    // its worker thread takes connections as soon as the reactor reports them.
    ready.loop_started();
    drop(ready);
    let context = Arc::new(SiteContext {
        tls: site.tls,
        drain: Drain::new(generation.clone()),
        config,
    });
    loop {
        let permit = match &limit {
            None => None,
            Some(sem) => tokio::select! {
                permit = sem.clone().acquire_owned() => permit.ok(),
                _ = generation.stopping() => break,
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
        site.service.spawn(accepted, context.clone());
    }
    // Stopped accepting: the socket is now only the next process's (or closed).
    drop(listener);
}
