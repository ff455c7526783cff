//! gracedemo: Go grace's demo server, in Rust. Three servers (`Zero  `, `First `, `Second`)
//! answer `/sleep/?duration=20s` after sleeping that long; `kill -USR2 <pid>` restarts the
//! process without losing a request, `kill -TERM <pid>` stops it gracefully.
//!
//! ```sh
//! cargo run -p gracedemo
//! curl 'http://localhost:48567/sleep/?duration=20s' &
//! kill -USR2 <pid>
//! curl 'http://localhost:48567/sleep/?duration=0s'
//! ```

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, ArgAction, Command};

use gracedemo::handler::Sleep;
use gracedemo::{gotime, logging};

fn command() -> Command {
    let addr = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("ADDR")
            .default_value(default)
            .help(help)
    };
    Command::new("gracedemo")
        .about("Go grace's /sleep demo: restart with kill -USR2 <pid>, stop with kill -TERM <pid>")
        .after_help(
            "Signals:\n  SIGUSR2           restart: a new process takes over the sockets; this one finishes its requests and exits\n  SIGTERM, SIGINT   stop gracefully: stop accepting, finish in-flight requests (60 s at most), exit 0\n  SIGHUP            the same as SIGTERM (a closed terminal stops the server gracefully, not abruptly)\n  a second SIGTERM  stop at once\n\nLogs (stderr): Go's log format (\"2013/03/25 19:07:33 Serving ... with pid 14642.\"), grace's own lines and every warning and error; RUST_LOG picks more (RUST_LOG=info: the lifecycle's detail; RUST_LOG=debug: everything). --log-json writes JSON lines.",
        )
        .override_usage(
            "gracedemo [-a0 ADDR] [-a1 ADDR] [-a2 ADDR] [--tls-cert FILE --tls-key FILE | --tls-self-signed] [--pid-file FILE] [--control-socket FILE] [--log-json] [--standby] [--supervise | --workers N|auto [--worker-timeout DURATION] [--max-requests N] [--max-memory SIZE] [--surge N]]\n       gracedemo --control-socket FILE --reload | --status [--json] | --scale N [--control-timeout DURATION]",
        )
        .disable_help_flag(true)
        .arg(addr("a0", ":48567", "Zero address to bind to."))
        .arg(addr("a1", ":48568", "First address to bind to."))
        .arg(addr("a2", ":48569", "Second address to bind to."))
        .arg(
            Arg::new("tls-cert")
                .long("tls-cert")
                .value_name("FILE")
                .requires("tls-key")
                .help("Serve all three addresses over TLS (HTTP/2 and HTTP/1.1) with this PEM certificate chain."),
        )
        .arg(
            Arg::new("tls-key")
                .long("tls-key")
                .value_name("FILE")
                .requires("tls-cert")
                .help("The PEM private key for --tls-cert."),
        )
        .arg(
            Arg::new("tls-self-signed")
                .long("tls-self-signed")
                .action(ArgAction::SetTrue)
                .conflicts_with("tls-cert")
                .help("Serve over TLS with a certificate for localhost made at startup (for trying it); with --workers, one made by the primary for every worker."),
        )
        .arg(
            Arg::new("pid-file")
                .long("pid-file")
                .value_name("FILE")
                .help("Keep FILE naming the serving process (written when ready, removed at the final stop)."),
        )
        .arg(
            Arg::new("control-socket")
                .long("control-socket")
                .value_name("FILE")
                .help("Answer restart and status requests on a Unix socket at FILE (mode 0600). With --reload or --status: the server to ask."),
        )
        .arg(
            Arg::new("reload")
                .long("reload")
                .action(ArgAction::SetTrue)
                .requires("control-socket")
                .conflicts_with("status")
                .help("Restart the server at --control-socket and wait: exit 0 once the new process serves, 1 with the reason if the restart failed (the old process keeps serving)."),
        )
        .arg(
            Arg::new("status")
                .long("status")
                .action(ArgAction::SetTrue)
                .requires("control-socket")
                .help("Print the state of the server at --control-socket: generation, pid, connections, draining generations."),
        )
        .arg(
            Arg::new("scale")
                .long("scale")
                .value_name("N")
                .requires("control-socket")
                .conflicts_with_all(["status", "reload"])
                .allow_hyphen_values(true)
                .value_parser(scale)
                .help("Ask the cluster at --control-socket (one started with --workers) to run N workers: more are started, the extra ones drain."),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("With --status: print the state as one JSON object (generation, pid, phase, drain, connections, listening, draining_generations, standby, restart, uptime_seconds)."),
        )
        .arg(
            Arg::new("control-timeout")
                .long("control-timeout")
                .value_name("DURATION")
                .requires("control-socket")
                .allow_hyphen_values(true)
                .value_parser(control_timeout)
                .help("With --reload or --status: give up after DURATION (Go's form: 10s, 1m30s) with a clear message. Default 45s for --reload (above the server's 30 s ready timeout, inside systemd's 90 s reload timeout), 5s for --status. A command the server had not read by then is never run."),
        )
        .arg(
            Arg::new("log-json")
                .long("log-json")
                .action(ArgAction::SetTrue)
                .help("Log JSON lines (time, level, target, message, fields) instead of Go's log format, for log shippers."),
        )
        .arg(
            Arg::new("standby")
                .long("standby")
                .action(ArgAction::SetTrue)
                .help("Keep the next process started ahead, waiting, so that SIGUSR2 only wakes it (a faster restart; one more process in ps). A replaced binary is still picked up."),
        )
        .arg(
            Arg::new("supervise")
                .long("supervise")
                .action(ArgAction::SetTrue)
                .help("Stay as a small supervisor with a stable pid while generations come and go (on by default as pid 1, e.g. in a container)."),
        )
        .arg(
            Arg::new("workers")
                .long("workers")
                .value_name("N|auto")
                .allow_hyphen_values(true)
                .value_parser(workers)
                .help("Run N worker processes on the same sockets under a primary process (implies --supervise): a crash of one loses nothing, SIGUSR2 / --reload restart them one at a time, SIGTTIN / SIGTTOU add or remove one. 0 or auto: one per core."),
        )
        .arg(
            Arg::new("worker-timeout")
                .long("worker-timeout")
                .value_name("DURATION")
                .requires("workers")
                .allow_hyphen_values(true)
                .value_parser(worker_timeout)
                .help("With --workers: a worker whose runtime is silent this long (Go's form: 30s, 1m) is stopped and replaced; 0 turns the watchdog off. Default 30s."),
        )
        .arg(
            Arg::new("max-requests")
                .long("max-requests")
                .value_name("N")
                .requires("workers")
                .allow_hyphen_values(true)
                .value_parser(max_requests)
                .help("With --workers: a worker that has served N requests (plus its own 0-10 %) is replaced by a graceful restart, one worker at a time. Default: never."),
        )
        .arg(
            Arg::new("max-memory")
                .long("max-memory")
                .value_name("SIZE")
                .requires("workers")
                .allow_hyphen_values(true)
                .value_parser(max_memory)
                .help("With --workers: a worker whose resident memory reaches SIZE (bytes, or with K, M, G: 512K, 64M, 1G; plus its own 0-10 %) is replaced by a graceful restart, one worker at a time. Default: never."),
        )
        .arg(
            Arg::new("surge")
                .long("surge")
                .value_name("N")
                .requires("workers")
                .allow_hyphen_values(true)
                .value_parser(surge)
                .help("With --workers: how many workers a rolling restart replaces at once (each one more process while its successor starts). Default 1."),
        )
        .arg(Arg::new("help").short('h').long("help").action(ArgAction::Help).help("Print this help."))
}

/// clap's message up to its usage and hints, on one line (a list of missing arguments
/// follows its first line).
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let message = text
        .split("\nUsage:")
        .next()
        .and_then(|m| m.split("For more information").next())
        .unwrap_or("bad arguments");
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    message
        .trim_start_matches("error: ")
        .trim_end_matches([':', ' '])
        .to_owned()
}

/// Go's flag package takes `-a0` as well as `--a0`; clap takes long flags with two dashes.
fn normalize(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest_is_positional = false;
    for arg in args {
        let s = arg.to_string_lossy();
        if !rest_is_positional && s == "--" {
            rest_is_positional = true;
        } else if !rest_is_positional
            && s.starts_with('-')
            && !s.starts_with("--")
            && s.len() > 2
            // A flag's name starts with a letter; `-1s` is a value (a negative duration).
            && s[1..].starts_with(|c: char| c.is_ascii_alphabetic())
        {
            let mut long = OsString::from("-");
            long.push(&arg);
            out.push(long);
            continue;
        }
        out.push(arg);
    }
    out
}

/// The command line read, with what clap cannot say: `--json` needs `--status` (clap counts
/// a flag's default as present, so `requires` cannot).
fn parse_args(args: impl Iterator<Item = OsString>) -> Result<clap::ArgMatches, clap::Error> {
    let matches = command().try_get_matches_from(normalize(args))?;
    if matches.get_flag("json") && !matches.get_flag("status") {
        return Err(command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--json is a form of --status: add --status",
        ));
    }
    Ok(matches)
}

fn main() -> ExitCode {
    // First of all, before arguments, logging or any thread: a SIGUSR2 or SIGTERM sent right
    // after the start (a deploy script, a supervisor's early reload) waits, pending, for the
    // handlers of whatever this process becomes (generation, supervisor, primary) instead of
    // killing it (their default action). Only the exec and the loader come before.
    gracenet::hold_signals();
    let matches = match parse_args(std::env::args_os()) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gracedemo: {}; see gracedemo -h", one_line(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(code) = control_client(&matches) {
        return code;
    }
    if let Err(e) = distinct_paths(&matches) {
        eprintln!("gracedemo: {e}; see gracedemo -h");
        return ExitCode::from(2);
    }
    let workers = matches.get_one::<usize>("workers").copied();
    let supervising = gracenet::should_supervise(matches.get_flag("supervise") || workers.is_some());
    // The inherited environment is read first, while this is the only thread (the log
    // writer below starts one); its errors are reported once logging is up.
    let inherited = gracenet::registry().map(|_| ());
    let _log = logging::init(if matches.get_flag("log-json") {
        logging::Format::Json
    } else {
        logging::Format::Go
    });
    if let Err(e) = inherited {
        tracing::error!("gracedemo: {e}");
        return ExitCode::FAILURE;
    }
    // With --workers, the server itself becomes the cluster's primary (Server::workers).
    if supervising && workers.is_none() {
        return match gracenet::supervise() {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                tracing::error!("gracedemo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("gracedemo: {}", explain(&e, &matches));
            ExitCode::FAILURE
        }
    }
}

/// The error as one line, naming the flag to change when it is an address's fault, and the
/// limit to raise when the process ran out of file descriptors.
fn explain(e: &gracehttp::Error, matches: &clap::ArgMatches) -> String {
    let line = explain_address(e, matches);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut out_of_fds = false;
    while let Some(c) = cause {
        out_of_fds |= c.downcast_ref::<std::io::Error>().is_some_and(is_out_of_fds);
        cause = c.source();
    }
    if out_of_fds && !line.contains(RAISE_FDS) {
        format!("{line}; {RAISE_FDS}")
    } else {
        line
    }
}

/// What to do when the process ran out of file descriptors.
const RAISE_FDS: &str = "raise the open files limit (ulimit -n, systemd's LimitNOFILE=)";

fn is_out_of_fds(e: &std::io::Error) -> bool {
    [nix::errno::Errno::EMFILE, nix::errno::Errno::ENFILE]
        .iter()
        .any(|&errno| e.raw_os_error() == Some(errno as i32))
}

/// [`explain`]'s line for an address's fault.
fn explain_address(e: &gracehttp::Error, matches: &clap::ArgMatches) -> String {
    if let gracehttp::Error::Net(gracenet::Error::Bind { addr, source }) = e {
        let flags: Vec<&str> = ["a0", "a1", "a2"]
            .into_iter()
            .filter(|f| {
                matches
                    .get_one::<String>(f)
                    .is_some_and(|v| addr_matches(v, addr))
            })
            .collect();
        if is_out_of_fds(source) {
            // Not the address's fault: no other address would do better.
            let flag = flags.first().map(|f| format!(" (-{f})")).unwrap_or_default();
            return format!("cannot listen on {addr}{flag}: {source}; {RAISE_FDS}");
        }
        if let [first, .., last] = flags[..]
            && source.kind() == std::io::ErrorKind::AddrInUse
        {
            // The same address for two servers: the later one fails, as it is taken.
            return format!(
                "cannot listen on {addr}: -{first} and -{last} both give this address, and one \
                 server per address can listen ({source}); choose another address with -{last} ADDR"
            );
        }
        if let Some(&flag) = flags.first() {
            // Go's ports lie in Linux's ephemeral range (32768-60999): a client's connection
            // can hold one for a while.
            let ephemeral = if source.kind() == std::io::ErrorKind::AddrInUse
                && [":48567", ":48568", ":48569"].iter().any(|p| addr.ends_with(p))
            {
                " (Go grace's default ports lie in Linux's ephemeral port range, so a client \
                 connection can hold one for a while)"
            } else {
                ""
            };
            return format!(
                "cannot listen on {addr} (-{flag}): {source}{ephemeral}; choose another address with -{flag} ADDR"
            );
        }
    }
    e.to_string()
}

/// The files a server writes (its PID file, control socket, `unix:` listening sockets) each
/// need a path of their own, apart from every other file it is given (its TLS certificate and
/// key): a PID file at the key's path overwrote the key. Paths are compared in their canonical
/// form where they exist (symbolic links and `..` resolved); checked before anything is
/// written. The certificate and key may be one file (both only read).
fn distinct_paths(matches: &clap::ArgMatches) -> Result<(), String> {
    use std::path::{Path, PathBuf};
    let mut files: Vec<(String, &str, bool)> = Vec::new();
    for (flag, writes) in [
        ("pid-file", true),
        ("control-socket", true),
        ("tls-cert", false),
        ("tls-key", false),
    ] {
        if let Some(path) = matches.get_one::<String>(flag) {
            files.push((format!("--{flag}"), path, writes));
        }
    }
    for flag in ["a0", "a1", "a2"] {
        if let Some(path) = matches
            .get_one::<String>(flag)
            .and_then(|a| a.strip_prefix("unix:"))
            .filter(|p| !p.is_empty() && !p.starts_with('@'))
        {
            files.push((format!("-{flag} unix:"), path, true));
        }
    }
    // The path as the system resolves it: the file's own, or its directory's with its name.
    let canonical = |path: &str| -> PathBuf {
        let path = Path::new(path);
        if let Ok(c) = std::fs::canonicalize(path) {
            return c;
        }
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        match (absolute.parent(), absolute.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or(absolute.clone()),
            _ => absolute.clone(),
        }
    };
    let resolved: Vec<PathBuf> = files.iter().map(|(_, p, _)| canonical(p)).collect();
    for (i, (flag_a, path_a, writes_a)) in files.iter().enumerate() {
        for (j, (flag_b, path_b, writes_b)) in files.iter().enumerate().skip(i + 1) {
            if (*writes_a || *writes_b) && resolved[i] == resolved[j] {
                let same = if path_a == path_b {
                    format!("{path_a:?}")
                } else {
                    format!("{path_a:?} and {path_b:?}, both {}", resolved[i].display())
                };
                return Err(format!(
                    "{flag_a} and {flag_b} name the same file ({same}): each needs a path of its own"
                ));
            }
        }
    }
    Ok(())
}

/// Whether the address as given (`:48567`, `127.0.0.1:0`) is the one gracenet reports.
fn addr_matches(given: &str, reported: &str) -> bool {
    given == reported || (given.starts_with(':') && reported.ends_with(given))
}

/// `--workers`: a number of workers, or `auto` or 0 (one per core).
fn workers(s: &str) -> Result<usize, String> {
    match s {
        "auto" | "0" => Ok(gracenet::cluster::default_workers()),
        n => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                format!(
                    "invalid number of workers {s:?}: expected a number from 1 to 1024, or auto (or 0) for one per core"
                )
            }),
    }
}

/// `--scale`: the number of workers a cluster is to run.
fn scale(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| format!("invalid number of workers {s:?}: expected a number from 1 to 1024"))
}

/// `--worker-timeout`: a Go duration, 0 for none.
fn worker_timeout(s: &str) -> Result<Option<std::time::Duration>, String> {
    match gracedemo::duration::parse_duration(s)? {
        0 => Ok(None),
        n if n >= 100_000_000 => Ok(Some(std::time::Duration::from_nanos(n.unsigned_abs()))),
        n if n > 0 => Err(format!(
            "{s:?} is too short for a worker timeout: at least 100ms (a worker's heartbeat is its runtime's, and a busy host delays it), or 0 for none"
        )),
        _ => Err(format!("expected a duration such as 30s (0 for none), got {s:?}")),
    }
}

/// `--max-requests`: a positive number of requests.
fn max_requests(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a positive number of requests such as 10000, got {s:?}"))
}

/// `--surge`: a positive number of workers.
fn surge(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a positive number of workers such as 1 or 2, got {s:?}"))
}

/// `--max-memory`: a size in bytes, or with a K, M or G suffix (powers of 1024; `B` or `iB`
/// after it allowed: 64M, 64MB, 64MiB).
fn max_memory(s: &str) -> Result<u64, String> {
    let bad = || format!("expected a size such as 64M or 1G (bytes, or K, M, G: powers of 1024), got {s:?}");
    let upper = s.trim().to_ascii_uppercase();
    // `iB` only after a unit (64MiB); `B` after a unit or the bare number (64MB, 1000B).
    let (body, binary) = match upper.strip_suffix("IB") {
        Some(body) => (body, true),
        None => (upper.strip_suffix('B').unwrap_or(&upper), false),
    };
    let (digits, shift) = match body.as_bytes().last() {
        Some(b'K') => (&body[..body.len() - 1], 10),
        Some(b'M') => (&body[..body.len() - 1], 20),
        Some(b'G') => (&body[..body.len() - 1], 30),
        Some(b'T') => (&body[..body.len() - 1], 40),
        _ if binary => return Err(bad()),
        _ => (body, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{s:?} is no limit: a size above 0 such as 64M"));
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large for a memory size"))
}

/// `--control-timeout`: a positive Go duration.
fn control_timeout(s: &str) -> Result<std::time::Duration, String> {
    match gracedemo::duration::parse_duration(s)? {
        n if n > 0 => Ok(std::time::Duration::from_nanos(n.unsigned_abs())),
        _ => Err(format!("expected a positive duration such as 10s, got {s:?}")),
    }
}

/// `--reload` and `--status`: a client of a running server's control socket.
fn control_client(matches: &clap::ArgMatches) -> Option<ExitCode> {
    let path = matches.get_one::<String>("control-socket")?;
    let mut client = gracenet::control::Client::new(path);
    if let Some(timeout) = matches.get_one::<std::time::Duration>("control-timeout") {
        client = client.timeout(*timeout);
    }
    let answer = if matches.get_flag("reload") {
        client.restart()
    } else if matches.get_flag("status") && matches.get_flag("json") {
        client.status_json()
    } else if let Some(n) = matches.get_one::<u16>("scale") {
        client.scale(usize::from(*n))
    } else if matches.get_flag("status") {
        client.status()
    } else {
        return None;
    };
    Some(match answer {
        Ok(text) => {
            // Done, whether or not the answer can be shown (stdout closed or full): said on
            // stderr, and the exit status is the command's.
            use std::io::Write as _;
            match writeln!(std::io::stdout().lock(), "{text}") {
                // The reader took what it wanted (`--status | head`), as with any Unix tool.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => eprintln!("gracedemo: cannot write the answer ({text:?}) to stdout: {e}"),
                Ok(()) => {}
            }
            ExitCode::SUCCESS
        }
        Err(gracenet::Error::Control {
            kind: gracenet::control::ControlError::Refused,
            reason,
            ..
        }) if matches.contains_id("scale") && reason.contains("unknown command") => {
            eprintln!(
                "gracedemo: the server at {path} is not a cluster (one process, started without --workers): --scale works only with a cluster's primary"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gracedemo: {e}");
            ExitCode::FAILURE
        }
    })
}

fn run(matches: &clap::ArgMatches) -> Result<(), gracehttp::Error> {
    let started: Arc<str> = gotime::go_time(chrono::Local::now()).into();
    let mut self_signed_pem = None;
    let tls = match (
        matches.get_one::<String>("tls-cert"),
        matches.get_one::<String>("tls-key"),
        matches.get_flag("tls-self-signed"),
    ) {
        (Some(cert), Some(key), _) => Some(gracehttp::Tls::from_pem_files(cert, key)?),
        (_, _, true) => {
            let (tls, pem) = self_signed()?;
            self_signed_pem = Some(pem);
            Some(tls)
        }
        _ => None,
    };
    let mut lifecycle = gracenet::Generation::builder().standby(matches.get_flag("standby"));
    if let Some(path) = matches.get_one::<String>("pid-file") {
        lifecycle = lifecycle.pid_file(path);
    }
    if let Some(path) = matches.get_one::<String>("control-socket") {
        lifecycle = lifecycle.control_socket(path);
    }
    // Keep-alive clients stay connected across a restart: their connections go to the new
    // process between requests.
    let mut server = gracehttp::Server::new()
        .lifecycle(lifecycle)
        .hand_over_connections(true);
    if let Some(n) = matches.get_one::<usize>("workers") {
        server = server.workers(*n);
        if let Some(pem) = self_signed_pem {
            // Made once, by the primary: every worker serves this one certificate.
            server = server.worker_secret(SELF_SIGNED, pem);
        }
    }
    if let Some(timeout) = matches.get_one::<Option<std::time::Duration>>("worker-timeout") {
        server = server.worker_timeout(*timeout);
    }
    server = server
        .max_requests(matches.get_one::<u64>("max-requests").copied())
        .max_memory(matches.get_one::<u64>("max-memory").copied());
    if let Some(n) = matches.get_one::<usize>("surge") {
        server = server.surge(*n);
    }
    for (flag, name) in [("a0", "Zero  "), ("a1", "First "), ("a2", "Second")] {
        let addr = matches
            .get_one::<String>(flag)
            .map(String::as_str)
            .unwrap_or_default();
        let sleep = Sleep::new(name, started.clone());
        let service = gracehttp::from_hyper(hyper::service::service_fn(move |req| sleep.clone().handle(req)));
        let site = match &tls {
            Some(tls) => gracehttp::Site::https(addr, tls.clone(), service),
            None => gracehttp::Site::http(addr, service),
        };
        // Under socket activation, a socket named a0, a1 or a2 (FileDescriptorName=) serves
        // that server whatever its address.
        server = server.site(site.named(flag));
    }
    if matches.get_one::<usize>("workers").is_none() {
        // Not in a cluster (its primary or a worker: --workers is passed on to them): the
        // primary drains every worker on SIGHUP itself. Turned into a SIGTERM here too, one
        // SIGHUP was two stops, and the second stops at once. GRACE_SUPERVISOR set: a
        // supervisor's generation, to which the supervisor passes its SIGHUP on.
        stop_gracefully_on_sighup(!gracenet::should_supervise(true));
    }
    server.serve()
}

/// SIGHUP (a terminal closing, or an operator's habit) stops gracefully, as SIGTERM does,
/// instead of killing the process with requests in flight (its default action). Under the
/// supervisor (`once`), only the first: a SIGHUP sent to every process reaches this one twice
/// (its own, and the one the supervisor passes on), and a second SIGTERM stops at once. Not
/// in a cluster, whose primary drains every worker on SIGHUP.
fn stop_gracefully_on_sighup(once: bool) {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP (it will end the process at once): {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("gracedemo-sighup".into())
        .spawn(move || {
            // Held since main's first line (gracenet::hold_signals): taken here from now on.
            gracenet::unblock_in_this_thread(signal_hook::consts::SIGHUP);
            let mut converted = false;
            for _ in signals.forever() {
                if once && std::mem::replace(&mut converted, true) {
                    tracing::info!("SIGHUP again: already stopping (its supervisor passes on the same one)");
                    continue;
                }
                tracing::info!("SIGHUP: stopping gracefully, as for SIGTERM");
                let me = nix::unistd::Pid::this();
                if let Err(e) = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGTERM) {
                    tracing::warn!("cannot stop on SIGHUP: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot handle SIGHUP (it will end the process at once): {}",
            gracenet::thread_error(&e)
        );
    }
}

/// The name of `--tls-self-signed`'s certificate and key among a cluster's secrets.
const SELF_SIGNED: &str = "gracedemo.self-signed";

/// `--tls-self-signed`: a certificate for localhost and its key, made now, or in a cluster's
/// worker the one its primary made (the same for every worker); with their PEM text.
fn self_signed() -> Result<(gracehttp::Tls, Vec<u8>), gracehttp::Error> {
    let pem = match gracenet::cluster::secret(SELF_SIGNED) {
        Some(pem) => pem.to_vec(),
        None => {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            let cert =
                rcgen::generate_simple_self_signed(names).map_err(|e| gracehttp::Error::TlsConfig {
                    cert: "<self-signed>".into(),
                    key: "<self-signed>".into(),
                    reason: e.to_string(),
                })?;
            [cert.cert.pem(), cert.key_pair.serialize_pem()]
                .concat()
                .into_bytes()
        }
    };
    // One PEM text: the certificate block is read for the chain, the key block for the key.
    Ok((gracehttp::Tls::from_pem(&pem, &pem)?, pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        let args = std::iter::once("gracedemo")
            .chain(args.iter().copied())
            .map(OsString::from);
        parse_args(args)
    }

    #[test]
    fn flags_as_go_writes_them() {
        let m = parse(&[]).unwrap();
        assert_eq!(m.get_one::<String>("a0").unwrap(), ":48567");
        assert_eq!(m.get_one::<String>("a2").unwrap(), ":48569");
        let m = parse(&["-a0", "127.0.0.1:1", "--a1=127.0.0.1:2", "-a2=127.0.0.1:3"]).unwrap();
        assert_eq!(m.get_one::<String>("a0").unwrap(), "127.0.0.1:1");
        assert_eq!(m.get_one::<String>("a1").unwrap(), "127.0.0.1:2");
        assert_eq!(m.get_one::<String>("a2").unwrap(), "127.0.0.1:3");
        assert_eq!(
            parse(&["-h"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert_eq!(
            parse(&["-help"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert!(parse(&["-x"]).is_err());
        assert!(
            parse(&["--tls-cert", "c.pem"]).is_err(),
            "--tls-cert needs --tls-key"
        );
    }

    #[test]
    fn an_address_in_use_names_the_flag_and_for_gos_ports_why() {
        let m = parse(&[]).unwrap();
        let in_use = |addr: &str| {
            gracehttp::Error::Net(gracenet::Error::Bind {
                addr: addr.into(),
                source: std::io::ErrorKind::AddrInUse.into(),
            })
        };
        let e = explain(&in_use("[::]:48568"), &m);
        assert!(e.contains("(-a1)"), "{e}");
        assert!(e.contains("ephemeral port range"), "{e}");
        assert!(e.ends_with("choose another address with -a1 ADDR"), "{e}");
        let m = parse(&["-a0", "127.0.0.1:9"]).unwrap();
        let e = explain(&in_use("127.0.0.1:9"), &m);
        assert!(!e.contains("ephemeral"), "only Go's ports: {e}");
    }

    #[test]
    fn out_of_fds_is_not_blamed_on_an_address_given_twice() {
        let m = parse(&["-a0", "127.0.0.1:0", "-a2", "127.0.0.1:0"]).unwrap();
        let e = explain(
            &gracehttp::Error::Net(gracenet::Error::Bind {
                addr: "127.0.0.1:0".into(),
                source: std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32),
            }),
            &m,
        );
        assert!(!e.contains("both give this address"), "{e}");
        assert!(!e.contains("choose another address"), "{e}");
        assert!(e.contains("raise the open files limit"), "{e}");
        // Out of fds anywhere, not only at the bind: the same advice.
        let e = explain(
            &gracehttp::Error::Net(gracenet::Error::Io {
                what: "cannot duplicate the socket fd of 127.0.0.1:1".into(),
                source: std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32),
            }),
            &m,
        );
        assert!(
            e.ends_with("raise the open files limit (ulimit -n, systemd's LimitNOFILE=)"),
            "{e}"
        );
    }

    #[test]
    fn the_same_address_for_two_servers_blames_both_flags() {
        let m = parse(&["-a0", "127.0.0.1:9", "-a1", "127.0.0.1:9"]).unwrap();
        let e = explain(
            &gracehttp::Error::Net(gracenet::Error::Bind {
                addr: "127.0.0.1:9".into(),
                source: std::io::ErrorKind::AddrInUse.into(),
            }),
            &m,
        );
        assert!(e.contains("-a0 and -a1 both give this address"), "{e}");
        assert!(e.ends_with("choose another address with -a1 ADDR"), "{e}");
    }

    #[test]
    fn a_negative_or_out_of_range_count_of_workers_is_named_with_what_is_expected() {
        for args in [
            &["--workers", "-1"][..],
            &["--workers", "2000"],
            &["--workers", "x"],
        ] {
            let e = one_line(&parse(args).unwrap_err());
            assert!(
                e.contains("invalid number of workers")
                    && e.contains("expected a number from 1 to 1024, or auto (or 0) for one per core"),
                "{args:?}: {e}"
            );
        }
        assert!(
            parse(&["--workers", "0"]).is_ok(),
            "0: one per core, as the help says"
        );
        let e = one_line(&parse(&["--control-socket", "c", "--scale", "-1"]).unwrap_err());
        assert!(
            e.contains("invalid number of workers \"-1\": expected a number from 1 to 1024"),
            "{e}"
        );
    }

    #[test]
    fn control_client_flags_and_their_mistakes_are_named_on_one_line() {
        let m = parse(&["--control-socket", "c", "--status", "--control-timeout", "2s"]).unwrap();
        assert_eq!(
            m.get_one::<std::time::Duration>("control-timeout"),
            Some(&std::time::Duration::from_secs(2))
        );
        let e = one_line(&parse(&["--status"]).unwrap_err());
        assert!(e.contains("were not provided: --control-socket <FILE>"), "{e}");
        // A negative duration is a value, not a flag: named as such.
        let e =
            one_line(&parse(&["--control-socket", "c", "--status", "--control-timeout", "-1s"]).unwrap_err());
        assert!(
            e.contains("expected a positive duration such as 10s, got \"-1s\""),
            "{e}"
        );
        assert!(!e.contains("For more information"), "{e}");
        // --json is a form of --status, nothing else.
        assert!(
            parse(&["--control-socket", "c", "--status", "--json"])
                .unwrap()
                .get_flag("json")
        );
        for without_status in [
            &["--control-socket", "c", "--reload", "--json"][..],
            &["--control-socket", "c", "--json"],
        ] {
            let e = one_line(&parse(without_status).unwrap_err());
            assert!(e.contains("--json is a form of --status: add --status"), "{e}");
        }
    }

    #[test]
    fn recycling_flags_take_counts_and_sizes_and_name_a_bad_value() {
        let m = parse(&["--workers", "2", "--max-requests", "50", "--max-memory", "64M"]).unwrap();
        assert_eq!(m.get_one::<u64>("max-requests"), Some(&50));
        assert_eq!(m.get_one::<u64>("max-memory"), Some(&(64 << 20)));
        for (given, bytes) in [
            ("1G", 1u64 << 30),
            ("512k", 512 << 10),
            ("64MiB", 64 << 20),
            ("64MB", 64 << 20),
            ("1000", 1000),
            ("1000B", 1000),
        ] {
            assert_eq!(max_memory(given), Ok(bytes), "{given}");
        }
        for bad in [
            "abc",
            "",
            "M",
            "-1M",
            "1.5G",
            "0",
            "1X",
            "20000000000G",
            "iB",
            "64iB",
            "64BB",
        ] {
            assert!(max_memory(bad).is_err(), "{bad:?} accepted");
        }
        let e = one_line(&parse(&["--workers", "2", "--max-memory", "abc"]).unwrap_err());
        assert!(e.contains("--max-memory"), "{e}");
        assert!(
            e.contains("expected a size such as 64M or 1G (bytes, or K, M, G: powers of 1024), got \"abc\""),
            "{e}"
        );
        let e = one_line(&parse(&["--workers", "2", "--max-requests", "-5"]).unwrap_err());
        assert!(e.contains("--max-requests"), "{e}");
        assert!(e.contains("expected a positive number of requests"), "{e}");
        let e = one_line(&parse(&["--workers", "2", "--surge", "0"]).unwrap_err());
        assert!(e.contains("--surge") && e.contains("positive number"), "{e}");
        let m = parse(&["--workers", "4", "--surge", "2"]).unwrap();
        assert_eq!(m.get_one::<usize>("surge"), Some(&2));
        let e = one_line(&parse(&["--max-requests", "5"]).unwrap_err());
        assert!(e.contains("--workers"), "only with --workers: {e}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        // Bounded in CI (proptest's default case count); PROPTEST_CASES=1000000 runs longer.
        proptest! {
            #[test]
            fn any_arguments_are_an_answer_never_a_panic(args in proptest::collection::vec("-{0,2}[a-z0-9=:.\\-]{0,12}|\\PC{0,10}", 0..6)) {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let _ = parse(&args);
            }

            #[test]
            fn an_address_flag_value_is_kept_as_given(flag in "a[012]", dashes in "-{1,2}", value in "[a-z0-9.:\\[\\]]{1,20}") {
                let m = parse(&[&format!("{dashes}{flag}"), &value]).unwrap();
                prop_assert_eq!(m.get_one::<String>(&flag).unwrap(), &value);
            }
        }
    }
}
