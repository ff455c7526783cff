//! A small first process that stays while generations come and go, for places that need one
//! stable pid: pid 1 of a container, supervisors that track one pid, a terminal.
//!
//! It starts generation 1 and nothing else, holds no socket, becomes the child subreaper (so
//! every generation is reparented to it and every orphan is reaped), learns which pid is
//! serving from the generations' own sd_notify messages (`MAINPID=`) on a private notify
//! socket, forwards `SIGUSR2`, `SIGTERM`, `SIGINT` and `SIGHUP` to that pid, and exits with its
//! status when it exits with no successor.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::error::Error;
use crate::notify::Notifier;
use crate::process::Executable;
use crate::vars::{GRACE_SUPERVISOR, NOTIFY_SOCKET};

/// How long the supervisor waits, once the serving generation has exited, for a successor's
/// `MAINPID=` that may still be in flight.
const SUCCESSOR_GRACE: Duration = Duration::from_secs(1);

/// Whether this process should run as a supervisor: asked for (`requested`, a `--supervise`
/// flag, say) or pid 1, and not already a generation under a supervisor.
pub fn should_supervise(requested: bool) -> bool {
    std::env::var_os(GRACE_SUPERVISOR).is_none() && (requested || std::process::id() == 1)
}

enum Event {
    Signal(i32),
    Notify { lines: Vec<String>, sender: Option<i32> },
}

/// Runs this program as a supervisor until the serving generation exits with no successor,
/// and returns the exit code to exit with (its code, or 128 + the signal that ended it).
/// Call it first thing in `main`, before any listener exists, and exit with its code.
///
/// # Errors
/// [`Error::Io`] when the notify socket, signal handlers or subreaper role cannot be set up;
/// [`Error::Spawn`] when generation 1 cannot be started.
pub fn supervise() -> Result<i32, Error> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source: std::io::Error| Error::Io { what, source }
    };
    let me = std::process::id();
    crate::sys::become_subreaper().map_err(io("cannot become the child subreaper"))?;
    let upstream = Notifier::from_env();
    // Private, abstract (no file to leave behind), and only the server's own process group is
    // listened to.
    let name = format!("grace-supervisor-{me}-{}", crate::notify::monotonic_usec());
    let socket = UnixDatagram::bind_addr(
        &crate::sys::abstract_addr(name.as_bytes()).map_err(io("cannot name the notify socket"))?,
    )
    .map_err(io("cannot bind the supervisor's notify socket"))?;
    crate::sys::pass_credentials(&socket).map_err(io("cannot ask for senders' credentials"))?;

    let (tx, rx) = channel();
    let mut signals = Signals::new([SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .map_err(io("cannot install the supervisor's signal handlers"))?;
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("supervisor-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if signal_tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .map_err(io("cannot start the signal thread"))?;
    std::thread::Builder::new()
        .name("supervisor-notify".into())
        .spawn(move || read_notifications(socket, tx))
        .map_err(io("cannot start the notify thread"))?;

    let exe = Executable::current()?;
    let mut cmd = Command::new(&exe.path);
    cmd.args(exe.args.iter().skip(1))
        .arg0(
            exe.args
                .first()
                .cloned()
                .unwrap_or_else(|| exe.path.clone().into()),
        )
        .env(NOTIFY_SOCKET, format!("@{name}"))
        .env(GRACE_SUPERVISOR, me.to_string())
        // Its own process group: a terminal's Ctrl-C reaches only us, and we forward it once.
        .process_group(0);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: exe.path.clone(),
        source,
    })?;
    let mut serving = child.id() as i32;
    // Generation 1 leads its own process group and every later generation inherits it: the
    // group tells the server's processes apart from strangers on the abstract socket.
    let group = serving;
    tracing::info!(
        supervisor = me,
        pid = serving,
        "supervising: started generation 1 with pid {serving}"
    );

    // Set when the serving generation has exited: exit with `code` at `deadline` unless a
    // successor's MAINPID arrives first. The successor sent it before its parent could exit,
    // but it reaches us through another thread than the exit does.
    let mut ending: Option<(Instant, i32)> = None;
    loop {
        let event = match ending {
            None => match rx.recv() {
                Ok(e) => e,
                Err(_) => return Ok(1),
            },
            Some((deadline, code)) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(e) => e,
                    Err(_) => {
                        tracing::info!(
                            supervisor = me,
                            "the serving generation (pid {serving}) exited with no successor ({code}): exiting"
                        );
                        if let Some(up) = &upstream {
                            up.send(&[
                                "STOPPING=1".into(),
                                format!("STATUS=Exiting: pid {serving} ended with {code}"),
                            ]);
                        }
                        return Ok(code);
                    }
                }
            }
        };
        match event {
            Event::Signal(SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    let (pid, code) = match status {
                        WaitStatus::Exited(pid, code) => (pid, code),
                        WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32),
                        WaitStatus::StillAlive => break,
                        _ => continue,
                    };
                    if pid.as_raw() == serving {
                        ending = Some((Instant::now() + SUCCESSOR_GRACE, code));
                    }
                    tracing::debug!(supervisor = me, "reaped pid {pid} ({code})");
                }
            }
            Event::Signal(sig) => {
                let Ok(signal) = Signal::try_from(sig) else {
                    continue;
                };
                tracing::info!(
                    supervisor = me,
                    "forwarding {signal} to the serving pid {serving}"
                );
                if let Err(e) = nix::sys::signal::kill(Pid::from_raw(serving), signal) {
                    tracing::warn!(supervisor = me, "cannot forward {signal} to pid {serving}: {e}");
                }
            }
            Event::Notify { lines, sender } => {
                if sender.is_none_or(|pid| crate::sys::process_group(pid) != Some(group)) {
                    tracing::warn!(
                        supervisor = me,
                        ?sender,
                        "ignoring a notification from outside the server's processes"
                    );
                    continue;
                }
                if let Some(pid) = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("MAINPID="))
                    .and_then(|p| p.parse().ok())
                {
                    if pid != serving {
                        tracing::info!(supervisor = me, "pid {pid} is now serving (was {serving})");
                    }
                    serving = pid;
                    ending = None;
                }
                if let Some(up) = &upstream {
                    // To systemd, the supervisor is the service's main process throughout.
                    let forwarded: Vec<String> = lines
                        .iter()
                        .map(|l| {
                            if l.starts_with("MAINPID=") {
                                format!("MAINPID={me}")
                            } else {
                                l.clone()
                            }
                        })
                        .collect();
                    up.send(&forwarded);
                }
            }
        }
    }
}

/// Reads sd_notify datagrams with their senders' pids until the supervisor ends.
fn read_notifications(socket: UnixDatagram, tx: Sender<Event>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, sender) = match crate::sys::recv_with_sender(&socket, &mut buf) {
            Ok(received) => received,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("the supervisor's notify socket failed: {e}");
                return;
            }
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        let lines = text.lines().map(str::to_owned).collect();
        if tx.send(Event::Notify { lines, sender }).is_err() {
            return;
        }
    }
}
