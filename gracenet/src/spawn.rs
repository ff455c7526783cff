//! Starting the next process: the program as resolved at startup, with the registry's sockets
//! as fds 3.. and `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set for it.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::env::{FIRST_INHERITED_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};
use crate::error::Error;
use crate::listeners::Listeners;

/// The program a restart runs, fixed when the process started: `argv[0]` looked up in `PATH`
/// (or made absolute against the starting directory), so a binary replaced on disk at that
/// path is the one that runs. `/proc/self/exe` would run the old one.
#[derive(Debug, Clone)]
pub struct Executable {
    /// The path to exec.
    pub path: PathBuf,
    /// The full argument vector, `argv[0]` included, as this process received it.
    pub args: Vec<OsString>,
    /// The working directory this process started in.
    pub dir: PathBuf,
}

static EXECUTABLE: OnceLock<Result<Executable, String>> = OnceLock::new();

impl Executable {
    /// Resolves the program now, once per process. Called when the first registry is built,
    /// which programs do at startup, before any `chdir`.
    pub(crate) fn capture() {
        EXECUTABLE.get_or_init(resolve);
    }

    /// The program this process will restart as.
    ///
    /// # Errors
    /// [`Error::Executable`] when neither `argv[0]` nor `/proc/self/exe` names a file.
    pub fn current() -> Result<&'static Executable, Error> {
        EXECUTABLE
            .get_or_init(resolve)
            .as_ref()
            .map_err(|reason| Error::Executable {
                reason: reason.clone(),
            })
    }
}

fn resolve() -> Result<Executable, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let dir = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let argv0 = args.first().cloned().unwrap_or_default();
    let path = match lookup(&argv0, &dir, std::env::var_os("PATH").as_deref()) {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().map_err(|e| {
                format!("argv[0] {argv0:?} is not an executable file here or in PATH, and /proc/self/exe cannot be read: {e}")
            })?;
            tracing::warn!(
                argv0 = ?argv0,
                exe = %exe.display(),
                "argv[0] does not name an executable file; restarts will run {}",
                exe.display()
            );
            exe
        }
    };
    Ok(Executable { path, args, dir })
}

/// `argv0` as the shell found it: a name with a slash is a path (relative to `dir`), one
/// without is looked up in `PATH`.
fn lookup(argv0: &OsStr, dir: &Path, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if argv0.is_empty() {
        return None;
    }
    if argv0.as_bytes().contains(&b'/') {
        let p = dir.join(argv0);
        return is_exe(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| dir.join(d).join(argv0))
        .find(|p| is_exe(p))
}

/// The next process being prepared: extra environment variables and fds on top of the
/// registry's sockets. Made by [`Listeners::next_process`].
#[derive(Debug)]
pub struct NextProcess<'a> {
    listeners: &'a Listeners,
    env: Vec<(OsString, OsString)>,
    extra_fds: Vec<OwnedFd>,
}

impl Listeners {
    /// Starts the next process with every socket in the registry (see [`NextProcess::spawn`]).
    ///
    /// # Errors
    /// As [`NextProcess::spawn`].
    pub fn spawn_next(&self) -> Result<ChildProcess, Error> {
        self.next_process().spawn()
    }

    /// Prepares the next process, to add environment variables or fds before spawning it.
    pub fn next_process(&self) -> NextProcess<'_> {
        NextProcess {
            listeners: self,
            env: Vec::new(),
            extra_fds: Vec::new(),
        }
    }
}

impl NextProcess<'_> {
    /// Sets an environment variable for the next process (on top of this process's own).
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Hands `fd` to the next process after the sockets. Returns the fd number it will have
    /// there (3 + number of sockets + number of fds passed before it), which only changes if
    /// sockets are added to the registry before [`spawn`](Self::spawn).
    pub fn pass_fd(&mut self, fd: OwnedFd) -> RawFd {
        self.extra_fds.push(fd);
        FIRST_INHERITED_FD + (self.listeners.len() + self.extra_fds.len() - 1) as RawFd
    }

    /// Starts the program this process was started as ([`Executable::current`]), with the same
    /// arguments, starting directory and environment, plus:
    /// - the registry's sockets as fds 3, 4, ... (inherited ones first, in their order, then
    ///   new ones in the order they were bound), then any [`pass_fd`](Self::pass_fd) fds;
    /// - `LISTEN_FDS` = the number of sockets, `LISTEN_FDNAMES` = their names joined by `:`
    ///   (`unknown` for unnamed ones), and `LISTEN_PID` = the child's own pid, set after
    ///   `fork`, so `sd_listen_fds()` in any language accepts the fds.
    ///
    /// The child gets no other fd of this process: everything else is close-on-exec. Signal
    /// masks are cleared and `SIGPIPE` restored to its default, as `std::process` does.
    ///
    /// # Errors
    /// [`Error::Spawn`] when `fork` or `execve` fails (the reason comes back from the child
    /// before it exits), [`Error::NulByte`] for an argument or variable with a NUL byte.
    pub fn spawn(self) -> Result<ChildProcess, Error> {
        let exe = Executable::current()?;
        let sockets = self.listeners.handoff()?;
        let names: Vec<&str> = sockets.iter().map(|(_, n)| n.as_str()).collect();
        let mut overrides: Vec<(OsString, OsString)> = vec![
            (LISTEN_FDS.into(), sockets.len().to_string().into()),
            (LISTEN_FDNAMES.into(), names.join(":").into()),
        ];
        overrides.extend(self.env);
        let mut fds: Vec<OwnedFd> = sockets.into_iter().map(|(fd, _)| fd).collect();
        fds.extend(self.extra_fds);
        spawn_exec(exe, &overrides, &fds)
    }
}

fn cstring(bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::NulByte { what: what() })
}

/// Room for any pid's decimal digits (u32) in `LISTEN_PID=`.
const PID_DIGITS: usize = 10;

fn spawn_exec(
    exe: &Executable,
    overrides: &[(OsString, OsString)],
    fds: &[OwnedFd],
) -> Result<ChildProcess, Error> {
    // Everything the child needs is prepared here: after fork it may only make
    // async-signal-safe calls, so no allocation.
    let path = cstring(exe.path.clone().into_os_string().into_vec(), || {
        "the program path".into()
    })?;
    let dir = cstring(exe.dir.clone().into_os_string().into_vec(), || {
        "the working directory".into()
    })?;
    let args = exe
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| cstring(a.as_bytes().to_vec(), || format!("argument {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let skip = |k: &OsStr| k == LISTEN_PID || overrides.iter().any(|(o, _)| o == k);
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os()
        .filter(|(k, _)| !skip(k))
        .chain(overrides.iter().cloned())
    {
        let name = k.to_string_lossy().into_owned();
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.as_bytes());
        env.push(cstring(kv, || format!("environment variable {name}"))?);
    }
    // LISTEN_PID=<pid>, NUL-padded: the child writes its pid into it.
    let mut listen_pid = format!("{LISTEN_PID}=").into_bytes();
    let pid_at = listen_pid.len();
    listen_pid.resize(pid_at + PID_DIGITS + 1, 0);

    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(listen_pid.as_ptr().cast());
    envp.push(std::ptr::null());

    let sources: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Spawn {
            program: exe.path.clone(),
            source: e.into(),
        })?;
    let plan = ChildPlan {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: dir.as_ptr(),
        pid_slot: listen_pid.as_mut_ptr().wrapping_add(pid_at),
        sources: &sources,
        moved: moved.as_mut_ptr(),
        err_pipe: err_write.as_raw_fd(),
        fd_limit: RawFd::try_from(crate::env::fd_limit()).unwrap_or(RawFd::MAX),
    };

    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe calls (fcntl,
    // dup2, close_range, sigprocmask, signal, chdir, getpid, execve, write, _exit) on memory
    // prepared above, and never returns.
    let pid = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => exec_child(&plan),
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => {
            return Err(Error::Spawn {
                program: exe.path.clone(),
                source: e.into(),
            });
        }
    };
    drop(err_write);
    let mut child = ChildProcess { pid, status: None };
    // The child writes errno here only if it could not exec; a successful exec closes the
    // pipe (close-on-exec) and the read sees end-of-file.
    let mut buf = [0u8; 4];
    let n = loop {
        match nix::unistd::read(&err_read, &mut buf) {
            Err(Errno::EINTR) => continue,
            r => break r,
        }
    };
    match n {
        Ok(4) => {
            let errno = i32::from_ne_bytes(buf);
            let _ = child.wait();
            Err(Error::Spawn {
                program: exe.path.clone(),
                source: std::io::Error::from_raw_os_error(errno),
            })
        }
        _ => {
            tracing::debug!(pid = pid.as_raw(), program = %exe.path.display(), "started the next process");
            Ok(child)
        }
    }
}

struct ChildPlan<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: *const libc::c_char,
    pid_slot: *mut u8,
    sources: &'a [RawFd],
    /// Room for one fd per source: where the child moves each before placing it.
    moved: *mut RawFd,
    err_pipe: RawFd,
    /// One past the highest fd this process can have open.
    fd_limit: RawFd,
}

/// In the forked child: put the fds in place, write our pid into `LISTEN_PID`, exec.
fn exec_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY (whole block): raw async-signal-safe system calls in a freshly forked child on fds
    // and memory the parent prepared; nothing here allocates or takes a lock.
    unsafe {
        let n = plan.sources.len() as RawFd;
        let first_free = FIRST_INHERITED_FD + n;
        let fail = |err_pipe: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_pipe, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        // Move the error pipe and every source above the target range first, so placing fd i
        // at 3+i never overwrites a source still to be placed.
        let err_pipe = libc::fcntl(plan.err_pipe, libc::F_DUPFD_CLOEXEC, first_free);
        if err_pipe < 0 {
            fail(plan.err_pipe);
        }
        for (i, &src) in plan.sources.iter().enumerate() {
            let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, first_free);
            if fd < 0 {
                fail(err_pipe);
            }
            *plan.moved.add(i) = fd;
        }
        for i in 0..plan.sources.len() {
            // dup2 leaves the new fd without FD_CLOEXEC: it survives exec.
            if libc::dup2(*plan.moved.add(i), FIRST_INHERITED_FD + i as RawFd) < 0 {
                fail(err_pipe);
            }
        }
        // Everything from first_free up closes on exec (the sources' copies, the error pipe,
        // and any fd a library opened without O_CLOEXEC).
        let rc = libc::syscall(
            libc::SYS_close_range,
            first_free as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if rc != 0 {
            // Kernels before 5.11: mark each possible fd (bounded by our fd limit).
            for fd in first_free..plan.fd_limit {
                if fd != err_pipe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::chdir(plan.dir) != 0 {
            fail(err_pipe);
        }
        // LISTEN_PID: the decimal digits of our pid, NUL-terminated (the slot is zeroed).
        let mut pid = libc::getpid() as u32;
        let mut digits = [0u8; PID_DIGITS];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..len {
            *plan.pid_slot.add(i) = digits[len - 1 - i];
        }
        libc::execve(plan.path, plan.argv, plan.envp);
        fail(err_pipe)
    }
}

/// The next process, started by [`NextProcess::spawn`]. Wait for it, signal it, or kill it by
/// pid. Dropping the handle leaves the process running (it is the new server).
#[derive(Debug)]
pub struct ChildProcess {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl ChildProcess {
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

    /// Kills it with `SIGKILL` and reaps it.
    ///
    /// # Errors
    /// [`Error::Io`] when `kill` or `waitpid` fails.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_the_shell() {
        let dir = Path::new("/");
        assert_eq!(
            lookup(OsStr::new("sh"), dir, Some(OsStr::new("/nonexistent:/bin"))),
            Some("/bin/sh".into())
        );
        assert_eq!(lookup(OsStr::new("/bin/sh"), dir, None), Some("/bin/sh".into()));
        assert_eq!(lookup(OsStr::new("bin/sh"), dir, None), Some("/bin/sh".into()));
        assert_eq!(
            lookup(OsStr::new("no-such-program-here"), dir, Some(OsStr::new("/bin"))),
            None
        );
        assert_eq!(
            lookup(OsStr::new("/etc/passwd"), dir, None),
            None,
            "not executable"
        );
        assert_eq!(lookup(OsStr::new(""), dir, None), None);
    }
}
