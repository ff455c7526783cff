//! The readiness handshake: a new process tells the one that started it "I am serving".
//!
//! gracenet's way is a pipe: the parent hands the write end to the child (its number in
//! `GRACE_READY_FD`) and waits for one byte; end-of-file without it means the child died.
//! Go grace's way, kept for compatibility, is `SIGTERM` to the parent pid.

use std::ffi::OsString;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};

use nix::unistd::Pid;

use crate::error::EnvError;
use crate::inherited::Origin;
use crate::vars::{GRACE_GENERATION, GRACE_READY_FD};

/// The byte that wakes a standby for its restart.
pub(crate) const WAKE: u8 = b'G';

/// The byte a woken standby answers [`WAKE`] with, first thing: "I run, and I take it". A
/// standby that cannot run (stopped, starved) never sends it, and the generation that woke it
/// starts a fresh process instead of waiting out the ready timeout.
pub(crate) const WAKE_ACK: u8 = b'A';

/// A parent that set `LISTEN_FDS` without `LISTEN_PID` (as Go grace does) but is not a Go
/// grace parent on the evidence: it is not sent `SIGTERM` when this process is ready.
#[derive(Debug, Clone)]
pub(crate) struct NotGraceParent {
    pub parent: i32,
    pub reason: String,
}

impl NotGraceParent {
    /// Logs why (info): a user who set `LISTEN_FDS` by hand learns their shell was spared.
    pub(crate) fn log(&self) {
        crate::log::info!(
            parent = self.parent,
            reason = %self.reason,
            "LISTEN_FDS without LISTEN_PID, but the parent is not a Go grace parent: it is not sent SIGTERM when this process is ready"
        );
    }
}

/// How this process tells its parent it is serving.
#[derive(Debug)]
pub(crate) enum ParentLink {
    /// Write a byte to the readiness pipe.
    Pipe(OwnedFd),
    /// Go grace's protocol: `SIGTERM` to the parent.
    GraceSignal(Pid),
    /// Nobody to tell: a first start, or started by a supervisor (systemd,
    /// `systemd-socket-activate`), which must never be signalled.
    Nobody,
}

impl ParentLink {
    /// The link `GRACE_READY_FD`'s value names, or Go grace's signal when the sockets came
    /// from a parent that set only `LISTEN_FDS` and that parent shows it is one: it holds the
    /// very sockets this process inherited (`inherited`: their inode numbers) and runs as the
    /// same user. `LISTEN_FDS` alone is no evidence: a shell or a process manager that sets it
    /// must never be sent `SIGTERM`.
    ///
    /// With the link, why a parent that set only `LISTEN_FDS` is not signalled (its pid and
    /// the reason), for the generation to log once logging is set up.
    pub(crate) fn new(
        ready_fd_var: Option<OsString>,
        origin: Origin,
        inherited: &[u64],
    ) -> Result<(ParentLink, Option<NotGraceParent>), EnvError> {
        if let Some(value) = ready_fd_var {
            return ready_fd(&value).map(|fd| (ParentLink::Pipe(fd), None));
        }
        Ok(match origin {
            Origin::Parent => match nix::unistd::getppid() {
                p if p.as_raw() <= 1 => (ParentLink::Nobody, None),
                p => match grace_parent_evidence(p, inherited) {
                    Ok(()) => (ParentLink::GraceSignal(p), None),
                    Err(reason) => (
                        ParentLink::Nobody,
                        Some(NotGraceParent {
                            parent: p.as_raw(),
                            reason,
                        }),
                    ),
                },
            },
            // With LISTEN_PID set, whoever started us is a supervisor, not a grace parent.
            Origin::Activated | Origin::Fresh => (ParentLink::Nobody, None),
        })
    }

    /// The pid of the process this one takes over from, when it was started by one to do so:
    /// the generation at the other end of the readiness channel (our parent), or a Go grace
    /// parent.
    pub(crate) fn previous(&self) -> Option<u32> {
        match self {
            ParentLink::Pipe(_) => Some(nix::unistd::getppid().as_raw() as u32).filter(|&p| p > 1),
            ParentLink::GraceSignal(pid) => Some(pid.as_raw() as u32),
            ParentLink::Nobody => None,
        }
    }

    /// In a standby (`GRACE_STANDBY`): blocks until the parent wakes this process for a
    /// restart (one `G` byte on the channel), and acknowledges it at once ([`WAKE_ACK`]).
    /// `false` when the parent let it go instead: the channel closed (the parent stopped, or
    /// started another process), something else came, or the acknowledgement cannot be sent.
    /// Without a channel there is nobody to wait for: `true`.
    pub(crate) fn wait_for_restart(&self) -> bool {
        let ParentLink::Pipe(fd) = self else {
            return true;
        };
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(fd, &mut byte) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(1) if byte[0] == WAKE => break,
                _ => return false,
            }
        }
        loop {
            match nix::unistd::write(fd.as_fd(), &[WAKE_ACK]) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(1) => return true,
                _ => return false,
            }
        }
    }

    /// Tells the parent this generation refuses what it was handed (`reason`): the parent
    /// rolls back and reports the reason.
    pub(crate) fn refuse(self, reason: &str) {
        if let ParentLink::Pipe(fd) = self {
            let mut message = b"X".to_vec();
            message.extend(reason.as_bytes().iter().take(1024));
            if let Err(e) = nix::unistd::write(fd.as_fd(), &message) {
                crate::log::warn!(error = %e, "cannot tell the parent why we refuse");
            }
        }
    }

    /// A copy of the channel to the parent, when there is one (for reading handed-over
    /// state).
    pub(crate) fn channel(&self) -> Option<std::io::Result<OwnedFd>> {
        match self {
            ParentLink::Pipe(fd) => Some(fd.try_clone()),
            _ => None,
        }
    }

    /// Tells the parent. A parent that is already gone is not an error: there is nobody left
    /// to hand over from. Returns the channel, kept for connections the parent hands over.
    pub(crate) fn notify(self) -> Option<OwnedFd> {
        match self {
            ParentLink::Pipe(fd) => {
                match nix::unistd::write(fd.as_fd(), b"R") {
                    Ok(_) => crate::log::debug!("told the parent we are ready (readiness channel)"),
                    Err(e) => {
                        crate::log::warn!(error = %e, "the parent is gone, nobody to tell we are ready")
                    }
                }
                Some(fd)
            }
            ParentLink::GraceSignal(pid) => {
                if nix::unistd::getppid() != pid {
                    // The parent has gone since (we were reparented): its pid may be anyone's.
                    crate::log::info!(
                        parent = pid.as_raw(),
                        "the Go grace parent is gone: nobody to tell we are ready"
                    );
                    return None;
                }
                match nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM) {
                    Ok(()) => crate::log::debug!(
                        parent = pid.as_raw(),
                        "told the parent we are ready (SIGTERM, as Go grace)"
                    ),
                    Err(e) => {
                        crate::log::warn!(parent = pid.as_raw(), error = %e, "cannot signal the parent")
                    }
                }
                None
            }
            ParentLink::Nobody => None,
        }
    }
}

fn ready_fd(value: &OsString) -> Result<OwnedFd, EnvError> {
    let text = value.to_string_lossy();
    let malformed = |expected: &str| EnvError::Malformed {
        var: GRACE_READY_FD,
        value: crate::env::shown(&text),
        expected: expected.to_owned(),
    };
    let owned = crate::env::handed_fd(GRACE_READY_FD, &text, "the write end of the readiness pipe")?;
    let checked = (|| {
        let stat = nix::sys::stat::fstat(&owned).map_err(|_| malformed("an fd that can be inspected"))?;
        let kind = stat.st_mode & libc::S_IFMT;
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return Err(malformed(
                "the write end of the readiness pipe (this fd is not a pipe or socket)",
            ));
        }
        crate::socket::set_cloexec(owned.as_fd()).map_err(|_| malformed("an fd whose flags can be set"))
    })();
    match checked {
        Ok(()) => Ok(owned),
        Err(e) => {
            // Not the readiness pipe: left open, as it came.
            let _ = owned.into_raw_fd();
            Err(e)
        }
    }
}

/// Parses `GRACE_GENERATION`'s value; 1 when unset. The largest value is refused: its
/// successor's number would not fit.
pub(crate) fn parse_generation(value: Option<OsString>) -> Result<u64, EnvError> {
    match value {
        None => Ok(1),
        Some(value) => {
            let text = value.to_string_lossy();
            text.parse::<u64>()
                .ok()
                .filter(|&n| (1..u64::MAX).contains(&n))
                .ok_or_else(|| EnvError::Malformed {
                    var: GRACE_GENERATION,
                    value: text.chars().take(64).collect(),
                    expected: format!("a generation number from 1 to {}", u64::MAX - 1),
                })
        }
    }
}

/// Why `parent` is not taken for a Go grace parent, or `Ok` when it is one: it runs as our
/// user and holds every socket we inherited (`inherited`, their inode numbers), as
/// facebookgo/grace's parent does until its child's `SIGTERM`. Read from `/proc/PID/status`
/// and the `socket:[INODE]` links in `/proc/PID/fd`; where they cannot be read (another
/// user's process, a system without `/proc`) there is no evidence, and no signal.
fn grace_parent_evidence(parent: Pid, inherited: &[u64]) -> Result<(), String> {
    if inherited.is_empty() {
        return Err("no inherited socket to compare".into());
    }
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", parent.as_raw()));
    let status = std::fs::read_to_string(proc_dir.join("status"))
        .map_err(|e| format!("cannot read the parent's /proc status: {e}"))?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let ours = [nix::unistd::getuid().as_raw(), nix::unistd::geteuid().as_raw()];
    if uids.len() < 2 || uids[..2] != ours {
        return Err(format!(
            "the parent runs as another user (uids {uids:?}, ours {ours:?})"
        ));
    }
    let entries =
        std::fs::read_dir(proc_dir.join("fd")).map_err(|e| format!("cannot list the parent's fds: {e}"))?;
    let mut held = std::collections::HashSet::new();
    // Bounded: a process's fds, at most its fd limit; a million is far beyond any server's.
    for entry in entries.flatten().take(1 << 20) {
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
        {
            held.insert(inode);
        }
    }
    match inherited.iter().filter(|i| !held.contains(i)).count() {
        0 => Ok(()),
        missing => Err(format!(
            "the parent does not hold {missing} of the {} inherited sockets",
            inherited.len()
        )),
    }
}
