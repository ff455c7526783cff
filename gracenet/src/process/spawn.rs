//! Starting the next process: the program as resolved at startup, with the sockets a
//! [`Handoff`] carries as fds 3.. and `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use super::{ChildProcess, Executable};
use crate::error::Error;
use crate::vars::{FIRST_INHERITED_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, OWNED};

/// The sockets to hand to the next process, in order, each with its `LISTEN_FDNAMES` name
/// (`unknown` for unnamed ones). Made by [`SocketRegistry::handoff`](crate::registry::SocketRegistry::handoff):
/// the fds are this process's own duplicates, closed once the next process has them.
#[derive(Debug, Default)]
pub struct Handoff {
    pub(crate) sockets: Vec<(OwnedFd, String)>,
}

impl Handoff {
    /// How many sockets it carries.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether it carries none.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// The next process being prepared: the sockets of a [`Handoff`], plus extra environment
/// variables and fds.
///
/// ```no_run
/// # fn main() -> Result<(), gracenet::Error> {
/// let registry = gracenet::registry()?;
/// let exe = gracenet::process::Executable::current()?;
/// let child = gracenet::process::NextProcess::new(exe, registry.handoff()?).spawn()?;
/// println!("started pid {}", child.pid());
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a NextProcess does nothing until spawn() is called"]
pub struct NextProcess {
    exe: &'static Executable,
    handoff: Handoff,
    env: Vec<(OsString, OsString)>,
    extra_fds: Vec<OwnedFd>,
    new_group: bool,
    idle: bool,
}

impl NextProcess {
    /// Prepares `exe` to run with `handoff`'s sockets.
    pub fn new(exe: &'static Executable, handoff: Handoff) -> NextProcess {
        NextProcess {
            exe,
            handoff,
            env: Vec::new(),
            extra_fds: Vec::new(),
            new_group: false,
            idle: false,
        }
    }

    /// Sets an environment variable for the next process (on top of this process's own). One of
    /// gracenet's own ([`vars::OWNED`](crate::vars::OWNED)) reaches the next process only when
    /// set here: this process's copy is never passed on.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts it as the leader of a new process group, so a terminal's Ctrl-C or a signal to
    /// this process's group does not reach it.
    pub fn new_process_group(&mut self) -> &mut Self {
        self.new_group = true;
        self
    }

    /// Starts it at idle CPU priority (`SCHED_IDLE`, Linux): it then runs only on CPU time
    /// no other process wants. Its threads inherit it; returning to normal priority is the
    /// new process's own step, when it is ready ([`Generation::ready`](crate::Generation::ready)),
    /// and needs the right to (`sys::may_start_at_idle_priority`).
    pub(crate) fn idle_priority(&mut self) -> &mut Self {
        self.idle = true;
        self
    }

    /// Hands `fd` to the next process after the sockets, and returns the fd number it will
    /// have there.
    pub fn pass_fd(&mut self, fd: OwnedFd) -> RawFd {
        self.extra_fds.push(fd);
        FIRST_INHERITED_FD + (self.handoff.len() + self.extra_fds.len() - 1) as RawFd
    }

    /// Starts the program with the same arguments, starting directory and environment, plus:
    /// - the handoff's sockets as fds 3, 4, ..., then any [`pass_fd`](Self::pass_fd) fds;
    /// - `LISTEN_FDS` = the number of sockets, `LISTEN_FDNAMES` = their names joined by `:`,
    ///   and `LISTEN_PID` = the child's own pid, set in the child before `execve`, so `sd_listen_fds()` in any
    ///   language accepts the fds;
    /// - every other variable of [`vars::OWNED`](crate::vars::OWNED) as set with
    ///   [`env`](Self::env), or absent: whatever this process inherited of them (and could not
    ///   remove, with threads running) stays here.
    ///
    /// The child gets no other fd of this process: everything else is close-on-exec. Signal
    /// masks are cleared and `SIGPIPE` restored to its default, as `std::process` does.
    ///
    /// # Errors
    /// [`Error::Spawn`] when starting the child or its `execve` fails (the reason comes back from the child
    /// before it exits), [`Error::NulByte`] for an argument or variable with a NUL byte.
    pub fn spawn(self) -> Result<ChildProcess, Error> {
        let names: Vec<&str> = self.handoff.sockets.iter().map(|(_, n)| n.as_str()).collect();
        let mut overrides: Vec<(OsString, OsString)> = vec![
            (LISTEN_FDS.into(), self.handoff.len().to_string().into()),
            (LISTEN_FDNAMES.into(), names.join(":").into()),
        ];
        overrides.extend(self.env);
        let mut fds: Vec<OwnedFd> = self.handoff.sockets.into_iter().map(|(fd, _)| fd).collect();
        fds.extend(self.extra_fds);
        spawn_exec(self.exe, &overrides, &fds, self.new_group, self.idle)
    }
}

fn cstring(bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::NulByte { what: what() })
}

/// Which step of the child failed, reported with its errno: the error then names
/// what is really missing (the starting directory, not the program).
const STEP_FDS: i32 = 1;
const STEP_GROUP: i32 = 2;
const STEP_CHDIR: i32 = 3;
const STEP_EXEC: i32 = 4;

/// Room for any pid's decimal digits (u32) in `LISTEN_PID=`.
const PID_DIGITS: usize = 10;

fn spawn_exec(
    exe: &Executable,
    overrides: &[(OsString, OsString)],
    fds: &[OwnedFd],
    new_group: bool,
    idle: bool,
) -> Result<ChildProcess, Error> {
    // Everything the child needs is prepared here: once started (a `CLONE_VM | CLONE_VFORK`
    // child on Linux, a `fork` elsewhere) it may only make async-signal-safe calls, so no
    // allocation.
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
    let mut env = Vec::new();
    for (k, v) in child_env(std::env::vars_os(), overrides) {
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
    let (err_read, err_write) = crate::sys::pipe_cloexec().map_err(|source| Error::Spawn {
        program: exe.path.clone(),
        source,
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
        new_group,
    };

    let pid = start_child(&plan).map_err(|e| Error::Spawn {
        program: exe.path.clone(),
        source: e.into(),
    })?;
    drop(err_write);
    let mut child = ChildProcess::new(pid);
    // The child writes errno here only if it could not exec; a successful exec closes the
    // pipe (close-on-exec) and the read sees end-of-file.
    let mut buf = [0u8; 8];
    let n = loop {
        match nix::unistd::read(&err_read, &mut buf) {
            Err(Errno::EINTR) => continue,
            r => break r,
        }
    };
    match n {
        Ok(8) => {
            let step = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let _ = child.wait();
            let source = std::io::Error::from_raw_os_error(errno);
            Err(if step == STEP_CHDIR {
                Error::StartDir {
                    dir: exe.dir.clone(),
                    source,
                }
            } else {
                Error::Spawn {
                    program: exe.path.clone(),
                    source,
                }
            })
        }
        _ => {
            if idle {
                // Set from here, once it has exec'd: set in the child before its `execve`, it
                // held this thread (waiting in `vfork` for that `execve`) at idle priority too,
                // for as long as busier threads kept the core (milliseconds, under load).
                crate::sys::enter_idle_priority(Some(pid.as_raw() as u32));
            }
            crate::log::debug!(pid = pid.as_raw(), program = %exe.path.display(), "started the next process");
            Ok(child)
        }
    }
}

/// The child's environment but `LISTEN_PID` (written by the child itself): this process's own
/// (`parent`), less every variable gracenet owns and every one `overrides` sets, then
/// `overrides`. A gracenet variable is thus in the child exactly when `overrides` sets it.
fn child_env<'a>(
    parent: impl Iterator<Item = (OsString, OsString)> + 'a,
    overrides: &'a [(OsString, OsString)],
) -> impl Iterator<Item = (OsString, OsString)> + 'a {
    let written = |k: &OsStr| OWNED.iter().any(|o| k == *o) || overrides.iter().any(|(o, _)| o == k);
    parent
        .filter(move |(k, _)| !written(k))
        .chain(overrides.iter().cloned())
}

/// The child's stack while it shares this process's memory (Linux): `exec_child` and the
/// calls it makes need a few KiB; glibc's `posix_spawn` uses about as much.
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
const CHILD_STACK: usize = 64 * 1024;

/// Starts the child running `exec_child(plan)`, returning its pid once it has exec'd (or
/// failed). On Linux the child shares this process's memory until its `execve`, as
/// `posix_spawn` does (`CLONE_VM | CLONE_VFORK`): a `fork` would copy the page tables of a
/// process busy serving, and every page it writes afterwards would fault once (copy on
/// write), on the very core and at the very moment a restart must be invisible. The calling
/// thread waits the few hundred microseconds until the `execve`.
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
fn start_child(plan: &ChildPlan<'_>) -> Result<nix::unistd::Pid, Errno> {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildPlan` borrowed by `start_child`, whose frame outlives
        // the child's use of it (the parent is suspended until the child execs or exits).
        let plan = unsafe { &*arg.cast::<ChildPlan<'_>>() };
        // SAFETY: a child sharing the parent's memory, with every signal blocked and the
        // parent suspended: exec_child resets the signal handlers before unblocking, and makes
        // only async-signal-safe calls on memory prepared by the parent.
        unsafe { reset_signal_handlers() };
        // SAFETY: this is the child started by `clone` below, with the parent suspended until
        // it execs or exits.
        unsafe { exec_child(plan) }
    }
    // Not zeroed: a stack needs no initial contents, and zeroing 64 KiB (faulting in every
    // page) cost the serving core more than the child uses.
    let mut stack = Box::<[u8]>::new_uninit_slice(CHILD_STACK);
    // The stack grows down: its top, aligned to 16 bytes.
    let top = stack.as_mut_ptr().cast::<u8>().wrapping_add(CHILD_STACK);
    let top = top.wrapping_sub(top as usize % 16);
    // Every signal blocked while the child shares our memory: a handler (signal-hook's) must
    // not run in it before it has reset the handlers to their defaults.
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only read and write it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let plan_ptr: *const ChildPlan<'_> = plan;
    // SAFETY: the child runs `entry` on its own stack (`stack`, alive until after the child
    // has exec'd: CLONE_VFORK suspends this thread until then), sharing our memory; it only
    // makes async-signal-safe system calls and writes only to `plan.moved` and
    // `plan.pid_slot`, prepared for it.
    let pid = unsafe {
        libc::clone(
            entry,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan_ptr.cast_mut().cast(),
        )
    };
    let errno = Errno::last();
    // SAFETY: restores this thread's own mask, saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(errno);
    }
    Ok(nix::unistd::Pid::from_raw(pid))
}

/// Elsewhere (and in the portable build): a plain `fork`.
#[cfg(any(not(target_os = "linux"), gracenet_portable))]
fn start_child(plan: &ChildPlan<'_>) -> Result<nix::unistd::Pid, Errno> {
    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe calls (fcntl,
    // dup2, close_range or fcntl, sigprocmask, signal, setpgid, chdir, getpid, execve, write,
    // _exit) on memory prepared by the parent, and never returns.
    match unsafe { nix::unistd::fork() }? {
        // SAFETY: this is the forked child.
        nix::unistd::ForkResult::Child => unsafe { exec_child(plan) },
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

/// In a child sharing its parent's memory, before any signal is unblocked: every signal
/// with a handler goes back to its default action, so no handler of the parent's runs here.
///
/// # Safety
/// Only in such a child, with every signal blocked.
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
unsafe fn reset_signal_handlers() {
    // Every signal number, SIGRTMAX included (real-time signals run up to and with it).
    for signal in 1..=libc::SIGRTMAX() {
        // SAFETY: sigaction only reads and writes the structs given; invalid signal numbers
        // (SIGKILL, SIGSTOP, the ones libc reserves) fail harmlessly.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            if current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
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
    /// Whether to lead a new process group.
    new_group: bool,
}

/// In the child: put the fds in place, write our pid into `LISTEN_PID`, exec.
///
/// # Safety
/// Only in the child `start_child` started (a `CLONE_VM | CLONE_VFORK` child on Linux, a
/// forked one elsewhere), before it has done anything else: in the parent it would move the
/// parent's fds, and `_exit` or `execve` it.
unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY (whole block): the caller runs this in the just-started child; raw
    // async-signal-safe system calls on fds and memory the parent prepared; nothing here
    // allocates or takes a lock.
    unsafe {
        let n = plan.sources.len() as RawFd;
        let first_free = FIRST_INHERITED_FD + n;
        let fail = |err_pipe: RawFd, step: i32| -> ! {
            let errno = crate::sys::errno();
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&step.to_ne_bytes());
            bytes[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err_pipe, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        // Move the error pipe and every source in the target range above it first, so
        // placing fd i at 3+i never overwrites a source still to be placed. An fd already
        // above the range stays where it is: near the fd limit there may be no room to move
        // it.
        let above = |fd: RawFd| fd < FIRST_INHERITED_FD || fd >= first_free;
        let err_pipe = if above(plan.err_pipe) {
            plan.err_pipe
        } else {
            libc::fcntl(plan.err_pipe, libc::F_DUPFD_CLOEXEC, first_free)
        };
        if err_pipe < 0 {
            fail(plan.err_pipe, STEP_FDS);
        }
        for (i, &src) in plan.sources.iter().enumerate() {
            let fd = if above(src) {
                src
            } else {
                libc::fcntl(src, libc::F_DUPFD_CLOEXEC, first_free)
            };
            if fd < 0 {
                fail(err_pipe, STEP_FDS);
            }
            *plan.moved.add(i) = fd;
        }
        for i in 0..plan.sources.len() {
            // dup2 leaves the new fd without FD_CLOEXEC: it survives exec.
            if libc::dup2(*plan.moved.add(i), FIRST_INHERITED_FD + i as RawFd) < 0 {
                fail(err_pipe, STEP_FDS);
            }
        }
        // Everything from first_free up closes on exec (the sources' copies, the error pipe,
        // and any fd a library opened without O_CLOEXEC).
        crate::sys::cloexec_from(first_free, plan.fd_limit, err_pipe);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if plan.new_group && libc::setpgid(0, 0) != 0 {
            fail(err_pipe, STEP_GROUP);
        }
        if libc::chdir(plan.dir) != 0 {
            fail(err_pipe, STEP_CHDIR);
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
        fail(err_pipe, STEP_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::{GRACE_GENERATION, GRACE_IDLE_START, GRACE_READY_FD, GRACE_STANDBY, NOTIFY_SOCKET};

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn no_gracenet_variable_of_the_parent_reaches_the_child_unless_written() {
        // A woken standby's own start, still in its environment (threads were running).
        let mut parent: Vec<(&str, &str)> = OWNED.iter().map(|k| (*k, "stale")).collect();
        parent.extend([("PATH", "/bin"), (NOTIFY_SOCKET, "/run/notify")]);
        let overrides = pairs(&[
            (GRACE_GENERATION, "3"),
            (GRACE_READY_FD, "4"),
            ("PATH", "/usr/bin"),
        ]);
        let child: Vec<(OsString, OsString)> = child_env(pairs(&parent).into_iter(), &overrides).collect();
        assert_eq!(
            child,
            pairs(&[
                (NOTIFY_SOCKET, "/run/notify"),
                (GRACE_GENERATION, "3"),
                (GRACE_READY_FD, "4"),
                ("PATH", "/usr/bin"),
            ]),
        );
        for var in [GRACE_STANDBY, GRACE_IDLE_START, LISTEN_PID] {
            assert!(
                child.iter().all(|(k, _)| k != var),
                "{var} passed through: {child:?}"
            );
        }
    }
}
