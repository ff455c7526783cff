//! `lifeprobe`: a test server on gracenet's `Generation`: each line a client sends is answered with
//! `<pid> <generation> <version>`, so a test can tell which process served it. Knobs, from the
//! environment (inherited by every generation):
//! - `PROBE_FAIL_ONCE=PATH`: a generation >= 2 exits 1 before ready, if PATH does not exist
//!   (it creates PATH first, so the next attempt works);
//! - `PROBE_HANG_ONCE=PATH`: likewise, but never reports ready;
//! - `PROBE_READY_TIMEOUT_MS`, `PROBE_STOP_TIMEOUT_MS`: the generation's timeouts;
//! - `PROBE_PID_FILE=PATH`: the PID file;
//! - `PROBE_CONTROL_SOCKET=PATH`: the control socket;
//! - `PROBE_STATE=1`: hands state to the next generation: `v1:<count>` (the number of
//!   generations so far) padded with `PROBE_STATE_BYTES` bytes of a pattern; a new
//!   generation reads it, checks it, and prints `probe state count=N bytes=M`;
//!   `PROBE_STATE_REFUSE_ONCE=PATH` makes one generation >= 2 refuse it (`unknown version`);
//!   `PROBE_STATE_STALL=1` makes the handing-over never finish, `PROBE_STATE_PANIC=1` makes
//!   the provider panic; `PROBE_STATE_READ_TWICE=1` makes a new generation ask for the state a
//!   second time and print `probe state again=<the outcome>`;
//! - `PROBE_READY_DELAY_MS`: generation 1 waits this long before it reports ready;
//! - `PROBE_NEXT_START_DELAY_MS`: a generation >= 2 waits this long before its first call
//!   into gracenet;
//! - `PROBE_NEXT_READY_DELAY_MS`: a generation >= 2 (a crash restart's too) waits this long,
//!   listening, before it reports ready (a slow restart), then prints
//!   `probe before-ready pid=P`;
//! - `PROBE_HAND_OVER_EARLY=1`: offers each connection it accepts to the next generation
//!   (`Generation::hand_over`) before serving it, and prints the outcome:
//!   `probe hand-over refused=no-successor pid=P` when no generation took over (the typed
//!   `Error::NoSuccessor`), `refused=other … <error>` or `taken`;
//! - `PROBE_STANDBY=1`: keeps a standby (`GenerationBuilder::standby`); every process then
//!   prints `probe main pid=P` first thing in `main`, before its first call into gracenet;
//! - `PROBE_LINGER_MS`: after its drain ended and its runtime was dropped, the process stays
//!   this long (a program busy with its own work after `wait()`), printing
//!   `probe lingering pid=P` first;
//! - `PROBE_OWN_SIGNALS=1`: `handle_signals(false)` (and handles none itself);
//! - `PROBE_HOLD_SIGNALS=1`: calls `gracenet::hold_signals()` first thing in `main`;
//! - `PROBE_SUPERVISE_ANYWAY=1`: calls `gracenet::supervise()` and a cluster's `run` without
//!   asking `should_supervise` first, prints `probe supervise refused: <error>` (or `ran`) and
//!   the same for `cluster`, and exits;
//! - `PROBE_SUPERVISOR_START_DELAY_MS`: the supervisor (`--supervise`), once its signals are
//!   held, prints `probe supervisor-starting pid=P` and waits this long before it supervises
//!   (a slow start, made deterministic).
//!
//! With `--supervise` (or as pid 1) it runs as gracenet's supervisor of itself; with
//! `--control PATH restart|status` it is a control-socket client, printing the answer (an
//! error with its kind: `error kind=RestartFailed …`)
//! (`PROBE_CONTROL_TIMEOUT_MS`: its timeout).
//!
//! The version is the binary's name: `lifeprobe`, or `lifeprobe2`, the same program under
//! another name that plays "a new version" in the binary-replacement test.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Runs the probe; `version` is what it answers as its version.
pub fn main(version: &'static str) -> ExitCode {
    if std::env::var_os("PROBE_HOLD_SIGNALS").is_some() {
        gracenet::hold_signals();
    }
    if std::env::var_os("PROBE_STANDBY").is_some() {
        println!("probe main pid={}", std::process::id());
    }
    if std::env::var_os("PROBE_SUPERVISE_ANYWAY").is_some() {
        // Without should_supervise's guard: refused in a process a supervisor started.
        for (what, outcome) in [
            ("supervise", gracenet::supervise()),
            ("cluster", gracenet::cluster::Cluster::builder().workers(1).run()),
        ] {
            match outcome {
                Err(e) => println!("probe {what} refused: {e}"),
                Ok(code) => println!("probe {what} ran, exit code {code}"),
            }
        }
        return ExitCode::SUCCESS;
    }
    // As a supervisor: its signals are safe from here on (see gracenet::hold_supervisor_signals).
    let supervising = gracenet::should_supervise(std::env::args().any(|a| a == "--supervise"));
    if supervising {
        gracenet::hold_supervisor_signals();
        if let Some(delay) = knob_ms("PROBE_SUPERVISOR_START_DELAY_MS") {
            // A slow start (a busy core, a slow set-up), made deterministic for a test.
            println!("probe supervisor-starting pid={}", std::process::id());
            std::thread::sleep(delay);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, command] = &args[..]
        && flag == "--control"
    {
        let mut client = gracenet::control::Client::new(path);
        if let Some(ms) = std::env::var("PROBE_CONTROL_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            client = client.timeout(std::time::Duration::from_millis(ms));
        }
        let answer = match command.as_str() {
            "restart" => client.restart(),
            _ => client.status(),
        };
        return match answer {
            Ok(text) => {
                println!("ok {text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                // The kind, for the tests to tell a failed restart from an unreachable server.
                match &e {
                    gracenet::Error::Control { kind, .. } => println!("error kind={kind:?} {e}"),
                    _ => println!("error {e}"),
                }
                ExitCode::FAILURE
            }
        };
    }
    // `--supervise` (or being pid 1): a supervisor that starts generation 1 and stays.
    if supervising {
        return match gracenet::supervise() {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("lifeprobe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => {
            let code = rt.block_on(serve(version));
            if let Some(linger) = knob_ms("PROBE_LINGER_MS") {
                // Busy after the drain, its runtime gone: gracenet's task cannot run.
                drop(rt);
                println!("probe lingering pid={}", std::process::id());
                std::thread::sleep(linger);
            }
            code
        }
        Err(e) => {
            eprintln!("lifeprobe: cannot start tokio: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(version: &'static str) -> ExitCode {
    match run(version).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The CPU scheduling policies of this process's threads, as `/proc` gives them (field 41 of
/// each thread's `stat`), named and comma-separated in thread order: `normal`, `idle`, ...
fn thread_policies() -> String {
    let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    let names: Vec<&str> = tids
        .iter()
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            let policy: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(38)?
                .parse()
                .ok()?;
            Some(match policy {
                0 => "normal",
                3 => "batch",
                5 => "idle",
                _ => "realtime",
            })
        })
        .collect();
    names.join(",")
}

fn knob_ms(name: &str) -> Option<Duration> {
    std::env::var(name).ok()?.parse().ok().map(Duration::from_millis)
}

/// Whether this generation should play the failure at `var`: once, in generation 2 or later.
fn fail_once(var: &str, generation: u64) -> bool {
    let Some(marker) = std::env::var_os(var) else {
        return false;
    };
    if generation < 2 || Path::new(&marker).exists() {
        return false;
    }
    std::fs::write(&marker, b"").is_ok()
}

async fn run(version: &'static str) -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let next = std::env::var("GRACE_GENERATION").is_ok_and(|n| n != "1");
    if let Some(delay) = knob_ms("PROBE_NEXT_START_DELAY_MS").filter(|_| next) {
        // A start held up before its first call into gracenet (a starved core), for longer
        // than the idle limit: the parent returns it to normal priority meanwhile.
        tokio::time::sleep(delay).await;
    }
    let mut builder = gracenet::Generation::builder();
    if let Some(t) = knob_ms("PROBE_READY_TIMEOUT_MS") {
        builder = builder.ready_timeout(t);
    }
    if let Some(t) = knob_ms("PROBE_STOP_TIMEOUT_MS") {
        builder = builder.stop_timeout(t);
    }
    if let Some(path) = std::env::var_os("PROBE_PID_FILE") {
        builder = builder.pid_file(path);
    }
    if let Some(path) = std::env::var_os("PROBE_CONTROL_SOCKET") {
        builder = builder.control_socket(path);
    }
    if std::env::var_os("PROBE_NO_IDLE_START").is_some() {
        builder = builder.idle_start(false);
    }
    if let Some(t) = knob_ms("PROBE_IDLE_LIMIT_MS") {
        builder = builder.idle_start_limit(t);
    }
    if std::env::var_os("PROBE_STANDBY").is_some() {
        builder = builder.standby(true);
    }
    if std::env::var_os("PROBE_OWN_SIGNALS").is_some() {
        builder = builder.handle_signals(false);
    }
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    if std::env::var_os("PROBE_STATE").is_some() {
        let count = count.clone();
        let padding = knob_ms("PROBE_STATE_BYTES").map_or(0, |d| d.as_millis() as usize);
        let stall = std::env::var_os("PROBE_STATE_STALL").is_some();
        let panic = std::env::var_os("PROBE_STATE_PANIC").is_some();
        builder = builder.hand_state(move || {
            let count = count.clone();
            async move {
                if stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                assert!(!panic, "the state provider panics, as asked");
                let mut state =
                    format!("v1:{}:", count.load(std::sync::atomic::Ordering::Relaxed)).into_bytes();
                state.extend((0..padding).map(|i| (i % 251) as u8));
                state
            }
        });
    }
    let generation = builder.start()?;
    let number = generation.number();
    let pid = std::process::id();
    if std::env::var_os("PROBE_STATE").is_some() {
        match generation.inherited_state().await? {
            None => println!("probe state none pid={pid}"),
            Some(handed) => {
                let state = handed.snapshot;
                if fail_once("PROBE_STATE_REFUSE_ONCE", number) {
                    generation.refuse("unknown version");
                    return Err("refused the handed-over state".into());
                }
                let text = String::from_utf8_lossy(&state[..state.len().min(64)]).into_owned();
                let mut parts = text.splitn(3, ':');
                let (version, n) = (parts.next(), parts.next().and_then(|n| n.parse::<u64>().ok()));
                let header = format!("v1:{}:", n.unwrap_or(0)).len();
                let padding_ok = state[header..]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i % 251) as u8);
                if version != Some("v1") || n.is_none() || !padding_ok {
                    generation.refuse("malformed state");
                    return Err("malformed state".into());
                }
                let n = n.unwrap_or(0) + 1;
                count.store(n, std::sync::atomic::Ordering::Relaxed);
                println!("probe state count={n} bytes={} pid={pid}", state.len());
                if std::env::var_os("PROBE_STATE_READ_TWICE").is_some() {
                    let again = match generation.inherited_state().await {
                        Err(gracenet::Error::StateTaken) => "taken".to_owned(),
                        other => format!("{other:?}"),
                    };
                    println!("probe state again={again} pid={pid}");
                }
            }
        }
    }
    let mut listener = generation.listen(&addr)?;
    println!(
        "probe version={version} generation={number} pid={pid} addr={} policy={}",
        listener.local_addr(),
        thread_policies()
    );
    if fail_once("PROBE_FAIL_ONCE", number) {
        println!("probe failing pid={pid}");
        return Err("failing at startup, as asked".into());
    }
    if fail_once("PROBE_HANG_ONCE", number) {
        println!("probe hanging pid={pid}");
        // Never ready; the parent kills us at its ready timeout.
        std::future::pending::<()>().await;
    }
    if let Some(delay) = knob_ms("PROBE_READY_DELAY_MS").filter(|_| number == 1) {
        println!("probe delaying-ready pid={pid}");
        tokio::time::sleep(delay).await;
    }
    if let Some(delay) = knob_ms("PROBE_NEXT_READY_DELAY_MS").filter(|_| number > 1) {
        tokio::time::sleep(delay).await;
        println!("probe before-ready pid={pid} policy={}", thread_policies());
    }
    generation.ready()?;
    if std::env::var_os("PROBE_REPORT_POLICY").is_some() {
        println!("probe ready pid={pid} policy={}", thread_policies());
    }
    let hand_over_early = std::env::var_os("PROBE_HAND_OVER_EARLY").is_some();
    while let Some(conn) = listener.accept().await {
        if hand_over_early {
            match generation.hand_over(&conn, b"", b"").await {
                Ok(()) => {
                    println!("probe hand-over taken pid={pid}");
                    continue;
                }
                Err(gracenet::Error::NoSuccessor) => {
                    println!("probe hand-over refused=no-successor pid={pid}")
                }
                Err(e) => println!("probe hand-over refused=other pid={pid} {e}"),
            }
        }
        let guard = generation.track();
        tokio::spawn(async move {
            let _guard = guard;
            let (read, mut write) = tokio::io::split(conn);
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                let reply = format!("{pid} {number} {version}\n");
                if write.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(listener);
    println!("probe stopped-accepting pid={pid}");
    let outcome = generation.wait().await;
    println!(
        "probe exiting pid={pid} forced={} unfinished={}",
        outcome.forced, outcome.unfinished
    );
    Ok(())
}
