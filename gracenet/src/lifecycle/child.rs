//! A next generation's process, from the parent's side: starting it with the sockets and
//! the channel ([`start_process`]), handing it the state ([`hand_state`]), its idle-priority
//! limit ([`IdleLimit`]), reading its answers on the channel, and reaping it when it failed
//! ([`abandon`]). The driver decides when; this is how.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::OwnedReadHalf;

use super::machine::{ChildFailure, Event};
use super::shared::Shared;
use super::{channel, messages};
use crate::error::Error;
use crate::process::{ChildProcess, Executable, NextProcess};
use crate::supervisor::describe_status;
use crate::sys::ExitWatch;
use crate::vars::{
    GRACE_ANCESTORS, GRACE_GENERATION, GRACE_IDLE_START, GRACE_READY_FD, GRACE_RESTARTS, GRACE_STANDBY,
    GRACE_SUPERVISOR, NOTIFY_SOCKET,
};

/// How many older generations' pids are passed on (for `status`).
const MAX_ANCESTORS: usize = 16;

/// How long a child that closed its readiness pipe may take to exit on its own before it is
/// killed: its own exit status says more than a kill's.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// A process of ours: the next generation, starting or serving.
pub(super) struct Child {
    pub(super) process: ChildProcess,
    pub(super) exit: ExitWatch,
    /// The channel's read side (readiness, or a refusal), while it is starting; then the
    /// hand-over's answers.
    pub(super) ready: Option<OwnedReadHalf>,
    /// Why it refused what it was handed, if it did.
    pub(super) refusal: Option<String>,
    /// The channel's write side: state, then handed-over connections.
    pub(super) out: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    /// Returns it from idle CPU priority if it is still starting at the limit.
    pub(super) idle_limit: Option<IdleLimit>,
}

/// The channel to a next generation, locked for the state to go first.
pub(super) type LockedChannel = tokio::sync::OwnedMutexGuard<tokio::net::unix::OwnedWriteHalf>;

/// Returns a next generation started at idle CPU priority to normal priority once
/// `idle_start_limit` has passed, so a machine with no idle time cannot hold its start past
/// the ready timeout. Dropped when it is ready (it has returned itself) or before it is
/// reaped: the pid is never touched after that (a reaped pid can be reused).
pub(super) struct IdleLimit {
    live: Arc<std::sync::Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdleLimit {
    pub(super) fn start(pid: u32, number: u64, limit: Duration) -> IdleLimit {
        let live = Arc::new(std::sync::Mutex::new(true));
        let task = tokio::spawn({
            let live = live.clone();
            async move {
                tokio::time::sleep(limit).await;
                let live = live.lock().unwrap_or_else(|p| p.into_inner());
                if !*live {
                    return;
                }
                let after_s = limit.as_secs_f64();
                match crate::sys::leave_idle_priority(Some(pid)) {
                    Ok(threads) => crate::log::info!(
                        next = number,
                        pid,
                        after_s,
                        threads,
                        "still starting at idle CPU priority: returned it to normal priority"
                    ),
                    Err(e) => {
                        crate::log::warn!(next = number, pid, error = %e, "{}", messages::NOT_FROM_IDLE)
                    }
                }
            }
        });
        IdleLimit { live, task }
    }
}

impl Drop for IdleLimit {
    fn drop(&mut self) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.task.abort();
    }
}

/// Starts the program with the sockets and the channel; a standby waits to be woken
/// (`GRACE_STANDBY`). Returns the channel's write side locked, for the state to go first.
pub(super) fn start_process(
    shared: &Shared,
    idle: bool,
    standby: bool,
) -> Result<(Child, Option<LockedChannel>, Option<std::os::fd::OwnedFd>), Error> {
    let io = |what: &str, source: std::io::Error| Error::Io {
        what: what.to_owned(),
        source,
    };
    if std::process::id() == 1 {
        // Its exit would take the next generation with it: the restart fails, saying so, and
        // this generation serves on.
        return Err(Error::RestartAsPid1);
    }
    // The channel to the next generation: readiness (or a refusal) comes back on it,
    // handed-over state goes out on it.
    let (ours, theirs) =
        crate::sys::socketpair_cloexec().map_err(|e| io("cannot create the readiness channel", e))?;
    let ours = std::os::unix::net::UnixStream::from(ours);
    ours.set_nonblocking(true)
        .map_err(|e| io("cannot make the readiness channel non-blocking", e))?;
    // A standby's wake byte goes out on a copy, from whichever thread wakes it.
    let wake_channel = if standby {
        Some(
            ours.try_clone()
                .map_err(|e| io("cannot copy the readiness channel", e))?
                .into(),
        )
    } else {
        None
    };
    let (ready, state_out) = tokio::net::UnixStream::from_std(ours)
        .map_err(|e| io("cannot register the readiness channel with tokio", e))?
        .into_split();
    let mut next = NextProcess::new(Executable::current()?, shared.registry().handoff()?);
    // A group of its own, so a failed start is killed with everything it started.
    next.new_process_group();
    // Every gracenet variable the next process has is written here (the spawn passes on
    // none of this process's own); those not set are absent.
    if let Some(supervisor) = &shared.startup.supervisor {
        next.env(GRACE_SUPERVISOR, supervisor);
    }
    if let Some(worker) = shared.startup.worker {
        // The successor serves the same slot of the same cluster.
        next.env(crate::vars::GRACE_WORKER, worker.slot.to_string());
        next.env(
            crate::vars::GRACE_HEARTBEAT_MS,
            worker.heartbeat.as_millis().to_string(),
        );
        if let Some(fd) = worker.load_fd {
            next.env(crate::vars::GRACE_LOAD_FD, fd.to_string());
        }
        // Its siblings hold the same addresses: one it binds anew (a new version's) must be
        // open to them.
        next.env(crate::vars::GRACE_REUSEPORT_JOIN, "1");
    }
    if let Some(secrets) = &shared.startup.secrets {
        // The successor has the cluster's secrets too, from this process (never from the
        // environment).
        let copy = secrets
            .fd()
            .try_clone_to_owned()
            .map_err(|e| io("cannot copy the cluster's secrets file for the next process", e))?;
        let fd = next.pass_fd(copy);
        next.env(crate::vars::GRACE_SECRET_FD, fd.to_string());
    }
    if idle {
        next.idle_priority();
        next.env(GRACE_IDLE_START, "1");
    }
    if standby {
        next.env(GRACE_STANDBY, "1");
    }
    next.env(GRACE_GENERATION, (shared.number + 1).to_string());
    if let Some(restarts) = crate::metrics::restarts_for_child() {
        next.env(GRACE_RESTARTS, restarts);
    }
    let mut ancestors = shared.running_ancestors();
    ancestors.push(std::process::id());
    let keep = ancestors.len().saturating_sub(MAX_ANCESTORS);
    let ancestors: Vec<String> = ancestors[keep..].iter().map(u32::to_string).collect();
    next.env(GRACE_ANCESTORS, ancestors.join(","));
    let fd = next.pass_fd(theirs);
    next.env(GRACE_READY_FD, fd.to_string());
    // systemd's, not ours: the socket this generation reports to, whatever the program
    // did to its own environment since. Without a notifier (unset, or unusable here) it
    // is left as the environment has it, for systemd's other readers.
    if let Some(notifier) = &shared.notifier {
        next.env(NOTIFY_SOCKET, notifier.var());
    }
    let mut process = next.spawn()?;
    let out = Arc::new(tokio::sync::Mutex::new(state_out));
    // Locked here, before anything else can hold the channel: the state section must come
    // first on it, before any connection handed over (the next process reads it first; a
    // handed connection's bytes read as a state length would lose the connection, its fd
    // discarded with them). A task spawned with an unlocked channel could lose that race
    // to the first `hand_over` if it had not run yet.
    // (A mutex made on the line above is never locked yet; were it, the task would wait.)
    let locked = out.clone().try_lock_owned().ok();
    let exit = match ExitWatch::new(process.pid()) {
        Ok(w) => w,
        Err(e) => {
            let _ = process.kill();
            return Err(io("cannot watch the next process for its exit", e));
        }
    };
    let child = Child {
        process,
        exit,
        ready: Some(ready),
        refusal: None,
        out,
        idle_limit: None,
    };
    Ok((child, locked, wake_channel))
}

/// Streams the application's state (if it provides one) to the next generation: an
/// 8-byte length, then the bytes (the snapshot). Bounded by the ready timeout: a provider or
/// a reader that stalls cannot hold the restart.
pub(super) fn hand_state(
    shared: &Shared,
    channel: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    locked: Option<tokio::sync::OwnedMutexGuard<tokio::net::unix::OwnedWriteHalf>>,
    pid: u32,
) {
    let provider = shared.settings.state.clone();
    let timeout = shared.settings.ready_timeout;
    let next = shared.number + 1;
    tokio::spawn(async move {
        // Held (since before this task existed) while the state is written: connections
        // handed later queue behind it.
        let mut out = match locked {
            Some(locked) => locked,
            None => channel.lock_owned().await,
        };
        let Some(provider) = provider else {
            // "No state" (the channel stays open for handed-over connections).
            let _ = tokio::time::timeout(timeout, channel::write_state(&mut *out, None)).await;
            return;
        };
        let made = tokio::time::timeout(timeout, provide(&provider)).await;
        let handed = match made {
            Ok(Ok(bytes)) => tokio::time::timeout(timeout, channel::write_state(&mut *out, Some(&bytes)))
                .await
                .map(|written| written.map(|()| bytes.len())),
            failed => {
                // The next generation is told, so its `inherited_state` fails now, saying why,
                // instead of waiting for the state until its ready timeout.
                let why = match &failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("the state provider did not finish within {timeout:?}"),
                };
                let _ = tokio::time::timeout(timeout, channel::write_state_failed(&mut *out, &why)).await;
                failed.map(|made| made.map(|bytes| bytes.len()))
            }
        };
        log_handed(Handed::Snapshot, handed, next, pid, timeout);
    });
}

/// Hands the successor the final state, once the drain has ended (nothing is in flight any
/// more) and this generation has merged its own predecessor's (see
/// [`FinalState`](super::FinalState)): the provider's bytes after every connection frame.
/// Waits for it, bounded by the ready timeout (a successor that does not read, or a provider that stalls, cannot hold
/// the exit); a successor that exited makes it fail at once.
pub(super) async fn hand_final_state(shared: &Shared, successor: Option<&Child>, pid: u32) {
    let next = shared.number + 1;
    let (Some(provider), Some(child)) = (shared.settings.state.clone(), successor) else {
        return;
    };
    let merged = shared.merged.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(merged) = merged {
        // This generation's predecessor's final state first (it may still be draining).
        let wait = shared.settings.stop_timeout + shared.settings.ready_timeout;
        if tokio::time::timeout(wait, merged).await.is_err() {
            crate::log::warn!(
                generation = shared.number,
                next,
                wait_s = wait.as_secs_f64(),
                "the final state of the generation before is not merged: handing the next one the state without it"
            );
        }
    }
    let timeout = shared.settings.ready_timeout;
    let handed = tokio::time::timeout(timeout, async {
        let bytes = provide(&provider).await?;
        // After any connection frame still being written (bounded by its own timeout).
        let mut out = child.out.lock().await;
        channel::write_final(&mut *out, &bytes).await?;
        Ok::<usize, std::io::Error>(bytes.len())
    })
    .await;
    log_handed(Handed::Final, handed, next, pid, timeout);
}

/// Runs the application's state provider in a task of its own (a panic in it is an error,
/// not this task's end).
async fn provide(provider: &super::shared::StateProvider) -> std::io::Result<Vec<u8>> {
    tokio::spawn(provider())
        .await
        .map_err(|_| std::io::Error::other("the state provider panicked"))
}

fn log_handed(
    what: Handed,
    handed: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    next: u64,
    pid: u32,
    timeout: Duration,
) {
    let timeout_s = timeout.as_secs_f64();
    match (what, handed) {
        (Handed::Snapshot, Ok(Ok(bytes))) => crate::log::info!(bytes, next, pid, "handed the state over"),
        (Handed::Final, Ok(Ok(bytes))) => crate::log::info!(bytes, next, pid, "handed the final state over"),
        (Handed::Snapshot, Ok(Err(e))) => {
            crate::log::warn!(next, pid, error = %e, "{}", messages::STATE_NOT_HANDED)
        }
        (Handed::Snapshot, Err(_)) => {
            crate::log::warn!(next, pid, timeout_s, "{}: timed out", messages::STATE_NOT_HANDED)
        }
        // The writes acknowledged since the snapshot are lost with it.
        (Handed::Final, Ok(Err(e))) => {
            crate::log::error!(next, pid, error = %e, "{}", messages::FINAL_STATE_NOT_HANDED)
        }
        (Handed::Final, Err(_)) => {
            crate::log::error!(
                next,
                pid,
                timeout_s,
                "{}: timed out",
                messages::FINAL_STATE_NOT_HANDED
            )
        }
    }
}

/// Which of a restart's two state hand-overs.
#[derive(Clone, Copy)]
enum Handed {
    /// At the restart.
    Snapshot,
    /// After the drain.
    Final,
}

/// Reaps a next generation that failed (killing it if it still runs) and says why, as
/// the restart's answer will.
pub(super) async fn abandon(pending: Option<Child>, number: u64, pid: u32, failure: ChildFailure) -> String {
    let next = number + 1;
    let Some(mut child) = pending else {
        return format!("generation {next} (pid {pid}) is gone");
    };
    // Before it can be reaped.
    child.idle_limit = None;
    if failure == ChildFailure::Gone {
        // The pipe closed: the child exited, or is exiting. Let it end with its own
        // status before killing it.
        let _ = tokio::time::timeout(EXIT_GRACE, child.exit.exited()).await;
    }
    // Everything it started goes with it (its process group): a wrapper that did not
    // exec must not leave a descendant holding the sockets. The group is killed before
    // the child is reaped, while its pid (the group's id) cannot be reused.
    let exited = child.process.has_exited();
    if let Err(e) = child.process.kill_group() {
        crate::log::warn!(next, pid, error = %e, "cannot kill the next generation's process group");
    }
    let (status, killed) = match child.process.try_wait() {
        Ok(Some(status)) => (Some(status), !exited),
        _ => (child.process.kill().ok(), true),
    };
    let why = match (&failure, status) {
        (ChildFailure::Gone, _) if child.refusal.is_some() => format!(
            "refused what it was handed: {}",
            child.refusal.as_deref().unwrap_or_default()
        ),
        (ChildFailure::Gone, Some(s)) if !killed => {
            format!("exited before it was ready ({})", describe_status(s))
        }
        (ChildFailure::Gone, _) => "closed its readiness pipe without reporting ready".to_owned(),
        (ChildFailure::NotReady { timeout }, _) => {
            format!("not ready after {:.1} s", timeout.as_secs_f64())
        }
        (ChildFailure::Unwanted, _) => {
            crate::log::info!(
                generation = number,
                next,
                pid,
                status = status.map(describe_status).as_deref().unwrap_or("unknown"),
                "the next generation started when no restart wanted it: killed it"
            );
            return format!("generation {next} (pid {pid}) was not wanted");
        }
        (ChildFailure::Stopping { cause }, _) => {
            crate::log::warn!(
                generation = number,
                %cause,
                next,
                pid,
                status = status.map(describe_status).as_deref().unwrap_or("unknown"),
                "stopping while the next generation was starting: killed it"
            );
            return format!("generation {next} (pid {pid}) was killed: this generation is stopping");
        }
    };
    crate::log::error!(generation = number, next, pid, reason = %why, killed, "{}", messages::RESTART_FAILED);
    format!("generation {next} (pid {pid}) {why}")
}

/// Reads a woken standby's acknowledgement ([`WAKE_ACK`](crate::readiness::WAKE_ACK)), and
/// only that byte: what follows (readiness, or a refusal) is the restart's to read.
pub(super) async fn read_wake_ack(channel: &OwnedReadHalf) -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        if channel.readable().await.is_err() {
            return Err("its channel failed before it acknowledged the wake".to_owned());
        }
        match channel.try_read(&mut byte) {
            Ok(1) if byte[0] == crate::readiness::WAKE_ACK => return Ok(()),
            Ok(1) => {
                return Err(format!(
                    "it answered the wake with {:?}, not its acknowledgement",
                    char::from(byte[0])
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // End-of-file: it exited (or is exiting) instead.
            _ => return Err("it exited when woken".to_owned()),
        }
    }
}

/// Reads the next generation's answer: `R` (ready), or `X` and why it refuses what it was
/// handed; end-of-file means it died.
pub(super) async fn read_ready(channel: &OwnedReadHalf, refusal: &mut Option<String>) -> Event {
    loop {
        if channel.readable().await.is_err() {
            return Event::ChildGone;
        }
        let mut buf = [0u8; 1025];
        match channel.try_read(&mut buf) {
            Ok(0) => return Event::ChildGone,
            Ok(n) if buf[0] == b'X' => {
                let mut reason = String::from_utf8_lossy(&buf[1..n]).into_owned();
                // The rest of the reason, if it came in pieces (1 KiB at most, briefly).
                let rest = async {
                    while reason.len() < 1024 && channel.readable().await.is_ok() {
                        match channel.try_read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(m) => reason.push_str(&String::from_utf8_lossy(&buf[..m])),
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), rest).await;
                *refusal = Some(reason);
                return Event::ChildGone;
            }
            Ok(_) => return Event::ChildReady,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Event::ChildGone,
        }
    }
}
