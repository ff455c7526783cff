//! A load of new connections, one `Connection: close` request each, that times every request
//! (connect to the server's close) and, with `--pid-file`, sends `SIGUSR2` to the process the
//! file names once a second. A restart's cost is then read from the requests that started
//! shortly after a signal, against those of the same run that did not: the host's drift from
//! one run to the next (which wrk's run-against-run p99 cannot tell from the server's) moves
//! both alike. wrk cannot do this: it reports a histogram, not when each request was made.
//!
//! `restartload PORT SECONDS [--connections N] [--pid-file FILE]` (loopback only; run it
//! pinned to a core of its own, as `restart_tail.py` does) prints a `result: key=value ...`
//! line:
//! - `p50`, `p99`, `max`: every request, in ms; `requests`, `errors`, `signals`;
//! - with signals: `p99_far`, the p99 of requests that started 100 ms or more after the last
//!   signal (or before the first); `within_ratio` = `p99` / `p99_far`; `near_max`, the slowest
//!   request that started within 100 ms of a signal; `excess_per_restart`, how many more of
//!   those were slower than `p99_far` than the 1 % expected, per signal;
//! - with signals, when the answers name their pid (gracedemo's "… from pid N."): the restart
//!   latency, from each signal to the first answer from a process not signalled yet, under this
//!   same load: `restart_median`, `restart_max` (ms) and `restarts` (how many were seen).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"GET /sleep/?duration=0s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
/// A request that started this long after a signal is "far" from it.
const NEAR: Duration = Duration::from_millis(100);
/// One request's longest wait before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    port: u16,
    seconds: u64,
    connections: usize,
    pid_file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: restartload PORT SECONDS [--connections N] [--pid-file FILE]";
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|p| p.parse().ok()).ok_or(usage)?;
    let seconds = args.next().and_then(|s| s.parse().ok()).ok_or(usage)?;
    let (mut connections, mut pid_file) = (64, None);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--connections" => connections = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?,
            "--pid-file" => pid_file = Some(args.next().ok_or(usage)?),
            _ => return Err(usage.into()),
        }
    }
    Ok(Args {
        port,
        seconds,
        connections,
        pid_file,
    })
}

/// A request that was answered: when it started (since `t0`), how long it took, and the pid
/// its answer names.
#[derive(Clone, Copy)]
struct Answered {
    start: Duration,
    latency: Duration,
    pid: Option<i32>,
}

/// The pid in an answer's "from pid N".
fn pid_in(answer: &[u8]) -> Option<i32> {
    const MARK: &[u8] = b"from pid ";
    let at = answer.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits: Vec<u8> = answer[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One request: connect, send, read to the server's close; `None` when it failed.
async fn one_request(port: u16, t0: Instant, buf: &mut Vec<u8>) -> Option<Answered> {
    let start = Instant::now();
    let done = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        stream.write_all(REQUEST).await?;
        buf.clear();
        stream.read_to_end(buf).await
    })
    .await;
    match done {
        Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200") => Some(Answered {
            start: start - t0,
            latency: start.elapsed(),
            pid: pid_in(buf),
        }),
        _ => None,
    }
}

/// A `SIGUSR2` a second to the pid in `pid_file` until `end`; when each was sent (since `t0`),
/// and to whom.
async fn signaller(pid_file: String, t0: Instant, end: Instant) -> Vec<(Duration, i32)> {
    let mut sent = Vec::new();
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((t0 + second).into(), second);
    loop {
        let at = tick.tick().await;
        if at.into_std() >= end {
            return sent;
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let signal = nix::sys::signal::Signal::SIGUSR2;
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok() {
                sent.push((Instant::now() - t0, pid));
            }
        }
    }
}

/// For each signal, the time to the first answer (by its end) from a process not signalled
/// up to then: the new process serving. Signals after which none came are left out.
fn restart_latencies(requests: &[Answered], signals: &[(Duration, i32)]) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for (k, &(at, _)) in signals.iter().enumerate() {
        let signalled = &signals[..=k];
        let first = requests
            .iter()
            .filter_map(|r| {
                let pid = r.pid?;
                let end = r.start + r.latency;
                (end > at && !signalled.iter().any(|&(_, p)| p == pid)).then_some(end)
            })
            .min();
        if let Some(end) = first {
            latencies.push(end - at);
        }
    }
    latencies
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    ms(sorted[i])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (requests, errors, signals) = runtime.block_on(async {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(args.seconds);
        let signals = args.pid_file.clone().map(|f| tokio::spawn(signaller(f, t0, end)));
        let clients: Vec<_> = (0..args.connections)
            .map(|_| {
                let port = args.port;
                tokio::spawn(async move {
                    let (mut done, mut errors, mut buf) = (Vec::new(), 0u64, Vec::with_capacity(1024));
                    while Instant::now() < end {
                        match one_request(port, t0, &mut buf).await {
                            Some(r) => done.push(r),
                            None => errors += 1,
                        }
                    }
                    (done, errors)
                })
            })
            .collect();
        let (mut requests, mut errors) = (Vec::new(), 0);
        for client in clients {
            let (done, e) = client.await.map_err(|e| format!("a client failed: {e}"))?;
            requests.extend(done);
            errors += e;
        }
        let signals = match signals {
            Some(s) => s.await.map_err(|e| format!("the signaller failed: {e}"))?,
            None => Vec::new(),
        };
        Ok::<_, String>((requests, errors, signals))
    })?;

    let mut all: Vec<Duration> = requests.iter().map(|r| r.latency).collect();
    all.sort_unstable();
    let mut line = format!(
        "p50={:.2} p99={:.2} max={:.2} requests={} errors={errors} signals={}",
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        all.last().map_or(0.0, |&d| ms(d)),
        all.len(),
        signals.len()
    );
    if !signals.is_empty() {
        let times: Vec<Duration> = signals.iter().map(|&(at, _)| at).collect();
        // Near: started within NEAR after the latest signal before it.
        let near = |start: Duration| {
            let i = times.partition_point(|&s| s <= start);
            i > 0 && start - times[i - 1] < NEAR
        };
        let mut far: Vec<Duration> = requests
            .iter()
            .filter(|r| !near(r.start))
            .map(|r| r.latency)
            .collect();
        far.sort_unstable();
        let p99_far = quantile(&far, 0.99);
        let near_latencies: Vec<Duration> = requests
            .iter()
            .filter(|r| near(r.start))
            .map(|r| r.latency)
            .collect();
        let slow = near_latencies.iter().filter(|&&l| ms(l) > p99_far).count() as f64;
        let excess = (slow - 0.01 * near_latencies.len() as f64) / signals.len() as f64;
        line += &format!(
            " p99_far={p99_far:.2} within_ratio={:.2} near_max={:.2} excess_per_restart={excess:.0}",
            quantile(&all, 0.99) / p99_far.max(f64::MIN_POSITIVE),
            near_latencies.iter().max().map_or(0.0, |&d| ms(d)),
        );
        let mut restarts = restart_latencies(&requests, &signals);
        if !restarts.is_empty() {
            restarts.sort_unstable();
            line += &format!(
                " restart_median={:.2} restart_max={:.2} restarts={}",
                quantile(&restarts, 0.5),
                restarts.last().map_or(0.0, |&d| ms(d)),
                restarts.len()
            );
        }
    }
    println!("result: {line}");
    Ok(())
}
