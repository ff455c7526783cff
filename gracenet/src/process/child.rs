//! The handle on a started next process.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::Error;

/// The next process, started by [`NextProcess::spawn`](super::NextProcess::spawn). Wait for it, signal it, or kill it by
/// pid. Dropping the handle leaves the process running (it is the new server).
#[derive(Debug)]
pub struct ChildProcess {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    pub(crate) fn new(pid: Pid) -> ChildProcess {
        ChildProcess { pid, status: None }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Returns its exit status if it has exited (reaping it), without blocking.
    ///
    /// # Errors
    /// [`Error::Io`] when `waitpid` fails (the pid is not our child).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.wait_with(libc::WNOHANG)
    }

    /// Blocks until it exits, reaps it and returns its exit status.
    ///
    /// # Errors
    /// [`Error::Io`] when `waitpid` fails (the pid is not our child).
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        loop {
            if let Some(status) = self.wait_with(0)? {
                return Ok(status);
            }
        }
    }

    fn wait_with(&mut self, flags: libc::c_int) -> Result<Option<ExitStatus>, Error> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid writes only the status int we pass; no fd or memory is handed over.
        let rc = unsafe { libc::waitpid(self.pid.as_raw(), &mut raw, flags) };
        match rc {
            0 => Ok(None),
            r if r == self.pid.as_raw() => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
            _ => match Errno::last() {
                Errno::EINTR => Ok(None),
                e => Err(Error::Io {
                    what: format!("cannot wait for process {}", self.pid),
                    source: e.into(),
                }),
            },
        }
    }

    /// Sends `signal` to it, unless it has already been reaped (its pid may belong to another
    /// process by then).
    ///
    /// # Errors
    /// [`Error::Io`] when `kill` fails.
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        if self.status.is_some() {
            return Ok(());
        }
        nix::sys::signal::kill(self.pid, signal).map_err(|e| Error::Io {
            what: format!("cannot send {signal} to process {}", self.pid),
            source: e.into(),
        })
    }

    /// Whether it has exited, without reaping it (its pid stays reserved).
    pub fn has_exited(&self) -> bool {
        self.status.is_some() || crate::sys::has_exited(self.pid.as_raw() as u32)
    }

    /// Kills with `SIGKILL` its whole process group: it and whatever it started (a wrapper
    /// script that did not `exec`, say), when it leads a group of its own
    /// ([`NextProcess::new_process_group`](super::NextProcess::new_process_group)). Safe while
    /// it is not reaped: its pid, the group's id, cannot be reused until then. Returns whether
    /// a signal was sent (no member left is not an error).
    ///
    /// # Errors
    /// [`Error::Io`] when `killpg` fails for another reason.
    pub fn kill_group(&self) -> Result<bool, Error> {
        if self.status.is_some() {
            return Ok(false);
        }
        match nix::sys::signal::killpg(self.pid, Signal::SIGKILL) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(Error::Io {
                what: format!("cannot kill the process group {}", self.pid),
                source: e.into(),
            }),
        }
    }

    /// Kills it with `SIGKILL` and reaps it.
    ///
    /// # Errors
    /// [`Error::Io`] when `kill` or `waitpid` fails.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }
}
