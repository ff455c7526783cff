//! A load generator on hyper's client that counts every failure by kind, and the
//! restart-under-load driver the benchmark and its quick CI test share.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// How the load is shaped.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// The request path.
    pub path: String,
    /// Concurrent clients, each with its own connection.
    pub connections: usize,
    /// HTTP/2 (prior knowledge) instead of HTTP/1.1.
    pub http2: bool,
    /// Reuse connections (keep-alive) instead of one new connection per request.
    pub keep_alive: bool,
    /// How long to send for.
    pub duration: Duration,
    /// At most this many requests in all.
    pub max_requests: u64,
}

impl LoadConfig {
    /// The mode's name: `h1-keepalive`, `h1-new-conn`, `h2-keepalive`, `h2-new-conn`.
    pub fn mode(&self) -> String {
        format!(
            "{}-{}",
            if self.http2 { "h2" } else { "h1" },
            if self.keep_alive { "keepalive" } else { "new-conn" }
        )
    }
}

/// Failed requests, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    /// The connection was refused.
    pub refused: u64,
    /// The connection was reset or closed before the answer.
    pub reset: u64,
    /// No answer within 10 s.
    pub timeout: u64,
    /// An answer that was not 2xx.
    pub non_2xx: u64,
    /// Anything else.
    pub other: u64,
    /// Not failures: HTTP/2 requests the server's GOAWAY marked unprocessed, retried on a
    /// new connection as RFC 9113 (8.7) allows and real clients do.
    pub retried_unprocessed: u64,
}

impl Failures {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.non_2xx + self.other
    }

    fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.non_2xx += o.non_2xx;
        self.other += o.other;
        self.retried_unprocessed += o.retried_unprocessed;
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Requests sent.
    pub requests: u64,
    /// Failures by kind.
    pub failures: Failures,
    /// Up to ten failure messages, for diagnosis.
    pub examples: Vec<String>,
    /// (start, latency) of every successful request.
    pub samples: Vec<(Instant, Duration)>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Asserts that no request of this load failed; `what` names the load in the message,
    /// which shows the failures and examples if some did.
    pub fn assert_none_failed(&self, what: &str) {
        assert_eq!(
            self.failures.total(),
            0,
            "{what}: {} of {} failed: {:?} {:?}",
            self.failures.total(),
            self.requests,
            self.failures,
            self.examples
        );
    }

    /// Asserts that this load sent more than `at_least` requests (enough to show anything)
    /// and that none failed.
    pub fn assert_enough_and_none_failed(&self, at_least: u64, what: &str) {
        assert!(
            self.requests > at_least,
            "{what}: too little load to show anything: {}",
            self.requests
        );
        self.assert_none_failed(what);
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1) of requests started within any of `windows`, or
    /// of all requests when `windows` is `None`.
    pub fn latency(&self, q: f64, windows: Option<&[(Instant, Instant)]>) -> Option<Duration> {
        let mut l: Vec<Duration> = self
            .samples
            .iter()
            .filter(|(s, _)| windows.is_none_or(|w| w.iter().any(|(a, b)| s >= a && s < b)))
            .map(|(_, d)| *d)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort();
        let i = ((l.len() - 1) as f64 * q).round() as usize;
        Some(l[i])
    }
}

fn client(cfg: &LoadConfig) -> Client<HttpConnector, Empty<Bytes>> {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(cfg.http2).pool_idle_timeout(Duration::from_secs(30));
    if !cfg.keep_alive {
        b.pool_max_idle_per_host(0);
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    b.build(connector)
}

/// Whether an HTTP/2 request failed because of the server's GOAWAY before it was processed
/// (a new stream on a connection going away, or a stream above the last one the server
/// will process): safe to retry, and every conforming client does. hyper-util's pooled
/// client does not retry these by itself.
pub fn unprocessed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            let goaway = h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            return goaway || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

fn classify(e: &hyper_util::client::legacy::Error) -> (&'static str, String) {
    let text = format!("{e:?}");
    if e.is_connect() {
        return ("refused", text);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
            ) {
                return ("reset", text);
            }
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ("reset", text);
        }
        source = s.source();
    }
    ("other", text)
}

/// Sends load as `cfg` says and returns what it saw.
pub async fn run_load(cfg: LoadConfig) -> LoadResult {
    run_load_until(cfg, std::sync::Arc::default()).await
}

/// Like [`run_load`], but also stops as soon as `stop` is set.
pub async fn run_load_until(
    cfg: LoadConfig,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoadResult {
    let started = Instant::now();
    let per_worker = (cfg.max_requests / cfg.connections.max(1) as u64).max(1);
    let uri: http::Uri = format!("http://127.0.0.1:{}{}", cfg.port, cfg.path)
        .parse()
        .expect("a valid URI");
    let mut tasks = Vec::new();
    for _ in 0..cfg.connections {
        let client = client(&cfg);
        let uri = uri.clone();
        let until = started + cfg.duration;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            for _ in 0..per_worker {
                if Instant::now() >= until || stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                r.requests += 1;
                let mut retried = 0;
                let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        let req = Request::get(uri.clone())
                            .body(Empty::new())
                            .expect("a valid request");
                        match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let _ = resp.into_body().collect().await;
                                return Ok::<StatusCode, hyper_util::client::legacy::Error>(status);
                            }
                            Err(e) if retried < 3 && unprocessed(&e) => retried += 1,
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await;
                r.failures.retried_unprocessed += retried;
                let kind = match outcome {
                    Ok(Ok(s)) if s.is_success() => {
                        r.samples.push((t0, t0.elapsed()));
                        continue;
                    }
                    Ok(Ok(s)) => ("non_2xx", format!("status {s}")),
                    Ok(Err(e)) => classify(&e),
                    Err(_) => ("timeout", "no answer within 10 s".to_owned()),
                };
                match kind.0 {
                    "refused" => r.failures.refused += 1,
                    "reset" => r.failures.reset += 1,
                    "timeout" => r.failures.timeout += 1,
                    "non_2xx" => r.failures.non_2xx += 1,
                    _ => r.failures.other += 1,
                }
                if r.examples.len() < 10 {
                    r.examples.push(kind.1);
                }
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.requests += r.requests;
            total.failures.add(&r.failures);
            total.samples.extend(r.samples);
            for e in r.examples {
                if total.examples.len() < 10 {
                    total.examples.push(e);
                }
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// The pid in an answer ending "... from pid N." (gracedemo) or starting "N" (test probes).
pub fn pid_of(body: &str) -> Option<u32> {
    let t = body.trim_end().trim_end_matches('.');
    t.rsplit(' ').next().and_then(|p| p.parse().ok())
}

/// Asks once on a new connection; the pid that answered.
pub async fn who_answers(port: u16, path: &str) -> Option<u32> {
    let a = crate::http::get_h1(port, path).await.ok()?;
    pid_of(&a.body)
}

/// One restart, timed.
#[derive(Debug, Clone)]
pub struct RestartTiming {
    /// When the signal was sent.
    pub at: Instant,
    /// Signal → first answer from the new pid.
    pub to_new_pid: Duration,
    /// Signal → the old process gone (None: still there after 30 s).
    pub old_gone: Option<Duration>,
}

/// Runs `cfg` against a server on `cfg.port`, sending `SIGUSR2` to the serving pid every
/// `every` (the first after `every`), and times each restart.
pub async fn restart_under_load(cfg: LoadConfig, every: Duration) -> (LoadResult, Vec<RestartTiming>) {
    let port = cfg.port;
    let path = cfg.path.clone();
    let duration = cfg.duration;
    let load = tokio::spawn(run_load(cfg));
    let started = Instant::now();
    let mut restarts = Vec::new();
    let mut drains = Vec::new();
    let mut serving = who_answers(port, &path).await;
    loop {
        let next = started + every * (restarts.len() as u32 + 1);
        if next + every / 2 > started + duration {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let Some(old) = serving else { break };
        let at = Instant::now();
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGUSR2,
        )
        .is_err()
        {
            break;
        }
        let mut to_new_pid = None;
        while at.elapsed() < Duration::from_secs(10) {
            match who_answers(port, &path).await {
                Some(pid) if pid != old => {
                    to_new_pid = Some(at.elapsed());
                    serving = Some(pid);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        let Some(to_new_pid) = to_new_pid else { break };
        drains.push(tokio::spawn(async move {
            while at.elapsed() < Duration::from_secs(30) {
                if !crate::is_alive(old) {
                    return Some(at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }));
        restarts.push(RestartTiming {
            at,
            to_new_pid,
            old_gone: None,
        });
    }
    let result = load.await.unwrap_or_default();
    for (r, d) in restarts.iter_mut().zip(drains) {
        r.old_gone = d.await.ok().flatten();
    }
    (result, restarts)
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// How many fds a process has open.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
