//! The processes a supervisor or a cluster's primary watches: a pidfd each (so an exit is
//! learnt even when another process reaps it), every orphan reaped (it is the child
//! subreaper), and the exit statuses it reaped remembered for exits noticed later.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How many exit statuses of reaped processes are remembered, for processes whose end is
/// noticed after they were reaped.
const REAPED_MEMORY: usize = 64;

/// A process being watched for its exit.
struct Watched {
    pid: u32,
    /// None when the pidfd could not be opened: the exit is then learnt by reaping.
    pidfd: Option<OwnedFd>,
}

/// The watched processes and the reaped statuses. `me` names the watcher in logs.
pub(crate) struct Children {
    me: u32,
    watched: Vec<Watched>,
    reaped: VecDeque<(u32, i32)>,
    /// Whether this process has children (reparented orphans included), as last reaped.
    left: bool,
}

impl Children {
    pub(crate) fn new(me: u32) -> Self {
        Children {
            me,
            watched: Vec::new(),
            reaped: VecDeque::new(),
            left: true,
        }
    }

    /// Watches `pid` (once) until [`exited`](Self::exited) reports it.
    pub(crate) fn watch(&mut self, pid: u32) {
        if self.is_watched(pid) {
            return;
        }
        let pidfd = match crate::sys::pidfd_open(pid) {
            Ok(fd) => Some(fd),
            // Gone already: the next look at exits finds it.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(e) => {
                crate::log::warn!(
                    supervisor = self.me,
                    pid,
                    error = %e,
                    "cannot watch a process's exit: relying on reaping it"
                );
                None
            }
        };
        self.watched.push(Watched { pid, pidfd });
    }

    pub(crate) fn is_watched(&self, pid: u32) -> bool {
        self.watched.iter().any(|w| w.pid == pid)
    }

    pub(crate) fn none_watched(&self) -> bool {
        self.watched.is_empty()
    }

    /// The watched pids.
    pub(crate) fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.watched.iter().map(|w| w.pid)
    }

    /// Poll entries that become readable when a watched process exits.
    pub(crate) fn poll_fds(&self) -> impl Iterator<Item = PollFd<'_>> {
        self.watched
            .iter()
            .filter_map(|w| w.pidfd.as_ref())
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
    }

    /// Whether any child was left at the last [`reap`](Self::reap).
    pub(crate) fn any_left(&self) -> bool {
        self.left
    }

    /// Reaps every exited child and orphan, remembering their statuses.
    pub(crate) fn reap(&mut self) {
        loop {
            let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) => {
                    self.left = true;
                    return;
                }
                Err(nix::errno::Errno::ECHILD) => {
                    self.left = false;
                    return;
                }
                Err(_) => return,
                Ok(_) => continue,
            };
            crate::log::debug!(
                supervisor = self.me,
                pid = pid.as_raw(),
                status = %describe(code),
                "reaped a process"
            );
            if self.reaped.len() == REAPED_MEMORY {
                self.reaped.pop_front();
            }
            self.reaped.push_back((pid.as_raw() as u32, code));
        }
    }

    /// The watched processes that have exited, with their statuses when this process reaped
    /// them (another process may have); they are no longer watched.
    pub(crate) fn exited(&mut self) -> Vec<(u32, Option<i32>)> {
        let reaped = &self.reaped;
        let status = |pid: u32| reaped.iter().rev().find(|(p, _)| *p == pid).map(|&(_, c)| c);
        let mut gone = Vec::new();
        self.watched.retain(|w| {
            let exited = match &w.pidfd {
                Some(fd) => {
                    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0)
                }
                None => status(w.pid).is_some() || !crate::sys::is_running(w.pid),
            };
            if exited {
                gone.push((w.pid, status(w.pid)));
            }
            !exited
        });
        // One that exited after the last reap (its pidfd said so first): reaped now, for its
        // status.
        for (pid, code) in &mut gone {
            if code.is_none() {
                *code = match waitpid(Pid::from_raw(*pid as i32), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, c)) => Some(c),
                    Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
                    _ => None,
                };
            }
        }
        gone
    }
}

/// Sends `signal` to `pid`, logging a failure (`me` is the sender, for the log).
pub(crate) fn signal_pid(me: u32, pid: u32, signal: Signal) {
    if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal) {
        crate::log::warn!(supervisor = me, pid, %signal, error = %e, "cannot send a signal");
    }
}

/// How long [`signal_pid_again`] waits for the kernel to deliver the previous `signal`.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends `signal` to `pid` once the same signal, sent before by this process or another, is
/// no longer pending there (at most [`DELIVERY_WAIT`] later): the kernel merges a signal sent
/// while the same one still waits, keeping the first sender's (a second `SIGTERM` forwarded at
/// once would not be a second one, and one forwarded onto a copy sent to every process would
/// arrive as that copy's sender's).
pub(crate) fn signal_pid_again(me: u32, pid: u32, signal: Signal) {
    let deadline = std::time::Instant::now() + DELIVERY_WAIT;
    for _ in 0..DELIVERY_WAIT.as_millis() {
        if !crate::sys::signal_pending(pid, signal as i32) || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    signal_pid(me, pid, signal);
}

/// A child's exit status in words: "exit code 3", "killed by SIGKILL" (never Rust's
/// `ExitStatus(unix_wait_status(9))`).
pub(crate) fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// "exit code 3", "killed by SIGKILL".
pub(crate) fn describe(code: i32) -> String {
    match Signal::try_from(code - 128) {
        Ok(signal) if code > 128 => format!("killed by {signal}"),
        _ => format!("exit code {code}"),
    }
}
