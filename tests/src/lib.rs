//! Shared helpers for grace-rs's end-to-end tests: processes that are always killed and
//! reaped, output read line by line with deadlines, unique temp dirs.
//!
//! Every wait here has a deadline; nothing sleeps as a means of synchronisation.

pub mod http;
pub mod lifeprobe;
pub mod load;
pub mod systemd;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Makes this test process the reaper of its orphaned descendants, so a grandchild whose
/// parent exits (the next generation of a server under test) is reparented to us and can be
/// waited for and never lingers as a zombie.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A process started by a test, killed (`SIGKILL`) and reaped when dropped, even when the
/// test fails.
pub struct ProcessGuard {
    child: Child,
    /// Its stdout, line by line, when it was piped.
    pub lines: Option<Lines>,
}

impl ProcessGuard {
    /// Starts `cmd` with stdout and stderr piped, both read line by line into one [`Lines`]
    /// (so a test can wait for a log line as well as for output).
    pub fn spawn(mut cmd: Command) -> ProcessGuard {
        become_subreaper();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Start it as a shell would: with fds 0-2 only. The test harness may hold fds without
        // close-on-exec (cargo's jobserver pipes); they are not the program's to leak.
        // SAFETY: close_range is a single async-signal-safe system call, run between fork and
        // exec; std's own error pipe is close-on-exec already.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = child.stdout.take().map(Lines::new);
        if let (Some(lines), Some(err)) = (lines.as_ref(), child.stderr.take()) {
            lines.also_read(err);
        }
        ProcessGuard { child, lines }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, when it was piped.
    pub fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.child.stdin.as_mut().expect("stdin was not piped")
    }

    /// The next line of its output that starts with `prefix`, within [`DEADLINE`].
    pub fn expect_line(&mut self, prefix: &str) -> String {
        self.lines.as_mut().expect("stdout was not piped").expect(prefix)
    }

    /// The next line of its output that contains `needle`, within [`DEADLINE`].
    pub fn expect_log(&mut self, needle: &str) -> String {
        self.lines
            .as_mut()
            .expect("stdout was not piped")
            .expect_containing(needle)
    }

    /// Every output line, once it has exited and its output streams have ended.
    pub fn output_after_exit(&mut self) -> Vec<String> {
        self.lines.as_mut().map(Lines::all_after_end).unwrap_or_default()
    }

    /// Every output line seen so far.
    pub fn seen(&mut self) -> Vec<String> {
        self.lines
            .as_mut()
            .map(|l| l.drain_seen().to_vec())
            .unwrap_or_default()
    }

    /// Waits for it to exit, within `timeout`; `None` if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills it (`SIGKILL`) and reaps it now, as dropping it does; nothing if it was reaped.
    pub fn kill_and_wait(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process the test did not start itself (a server's next generation), killed by pid and
/// reaped when dropped. The test process is a subreaper ([`become_subreaper`]), so it can reap
/// the process once its parent is gone.
pub struct PidGuard(pub u32);

impl PidGuard {
    /// Whether the process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        is_alive(self.0)
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0 as i32);
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                Ok(_) => return,
                // Not (yet) our child: its parent is alive and will reap it, or it is gone.
                Err(_) if !Path::new(&format!("/proc/{}", self.0)).exists() => return,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether every thread of `pid` is stopped (`SIGSTOP` has taken effect, not just been sent).
pub fn is_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten().take(4096) {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Waits until `cond` holds, checking every few milliseconds, for at most `timeout`.
/// Returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process's output, read by threads so a test can wait for a line with a deadline.
pub struct Lines {
    tx: Sender<String>,
    rx: Receiver<String>,
    seen: Vec<String>,
    unmatched: std::collections::VecDeque<String>,
    readers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Lines {
    /// Starts reading `out`.
    pub fn new(out: ChildStdout) -> Lines {
        Lines::from_reader(out)
    }

    /// Starts reading any stream.
    pub fn from_reader(out: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let lines = Lines {
            tx,
            rx,
            seen: Vec::new(),
            unmatched: Default::default(),
            readers: Default::default(),
        };
        lines.also_read(out);
        lines
    }

    /// Reads another stream into the same lines.
    pub fn also_read(&self, out: impl Read + Send + 'static) {
        let tx = self.tx.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reader);
    }

    /// Every line, once the streams have ended (the process and any child holding them have
    /// exited), waiting at most [`DEADLINE`] for that.
    pub fn all_after_end(&mut self) -> Vec<String> {
        let ended = wait_until(DEADLINE, || {
            self.readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .all(|r| r.is_finished())
        });
        assert!(ended, "the output streams did not end within {DEADLINE:?}");
        self.drain_seen().to_vec()
    }

    /// Every line seen so far by [`expect`](Self::expect), plus any that arrived since.
    pub fn drain_seen(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line.clone());
            self.unmatched.push_back(line);
        }
        &self.seen
    }

    /// The next line containing `needle` anywhere, within [`DEADLINE`].
    pub fn expect_containing(&mut self, needle: &str) -> String {
        self.expect_matching(needle, |l| l.contains(needle))
    }

    /// The next line starting with `prefix`, within [`DEADLINE`]; panics with everything
    /// seen so far if none comes.
    pub fn expect(&mut self, prefix: &str) -> String {
        self.expect_matching(prefix, |l| l.starts_with(prefix))
    }

    /// Lines from the process's stdout and stderr arrive through two threads, so their
    /// relative order is not reliable: a match is looked for first among lines already
    /// received and not yet matched, then among new ones.
    fn expect_matching(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(i) = self.unmatched.iter().position(|l| matches(l)) {
            return self.unmatched.remove(i).unwrap_or_default();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                    self.unmatched.push_back(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line matching {what:?} within {DEADLINE:?}; saw {:#?}",
                        self.seen
                    )
                }
                // Not while `self.tx` lives; kept so the match is total.
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "output ended before a line matching {what:?}; saw {:#?}",
                        self.seen
                    )
                }
            }
        }
    }
}

/// The value of `key=value` in a line of space-separated fields.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no field {key:?} in {line:?}"))
}

/// A lifeprobe generation, as its first line (`probe version=… pid=P addr=A …`) describes it.
#[derive(Debug, Clone, Copy)]
pub struct ProbeGen {
    /// Its pid.
    pub pid: u32,
    /// The port it listens on.
    pub port: u16,
}

/// Reads a lifeprobe's `probe version=` line.
pub fn parse_probe(line: &str) -> ProbeGen {
    let addr = field(line, "addr");
    ProbeGen {
        pid: field(line, "pid").parse().unwrap(),
        port: addr.rsplit(':').next().unwrap().parse().unwrap(),
    }
}

/// The command for `program` with `args` and `env` (set on top of this process's environment).
pub fn command(program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The command for a lifeprobe serving on 127.0.0.1:0 with `env`: `program` is the lifeprobe
/// binary (`env!("CARGO_BIN_EXE_lifeprobe")`) or a copy of it installed elsewhere.
pub fn lifeprobe(program: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Command {
    command(program, &["127.0.0.1:0"], env)
}

/// Starts a lifeprobe (`cmd`: from [`lifeprobe`], or a shell or supervisor that runs one) and
/// waits for generation 1 to serve; its guard and generation 1.
pub fn start_lifeprobe(cmd: Command) -> (ProcessGuard, ProbeGen) {
    start_line_server(cmd, "probe version=")
}

/// Starts a line server that prints `<first_line>… pid=P addr=A` once listening (lifeprobe, or
/// gracenet's echo example with `echo generation=1`) and waits for generation 1's `ready and
/// serving` log; its guard and generation 1.
pub fn start_line_server(cmd: Command, first_line: &str) -> (ProcessGuard, ProbeGen) {
    let mut guard = ProcessGuard::spawn(cmd);
    let gen1 = parse_probe(&guard.expect_line(first_line));
    // Under a supervisor (or a shell) generation 1 is not the guarded process: it is killed
    // too should it never serve.
    let on_failure = PidGuard(gen1.pid);
    guard.expect_log("ready and serving generation=1 ");
    std::mem::forget(on_failure);
    (guard, gen1)
}

/// An httpprobe (or any gracehttp server) as grace's line `Serving A, B, C with pid P.` (or
/// `Graceful handoff of A, B with new pid N and old pid O.`) describes it.
#[derive(Debug, Clone)]
pub struct Site {
    /// The serving pid (the new one, after a hand-over).
    pub pid: u32,
    /// Its ports, in the order of its addresses.
    pub ports: Vec<u16>,
}

/// Reads grace's line `Serving A, B, C with pid P.` or the hand-over form (the new pid).
pub fn parse_serving(line: &str) -> Site {
    let pid = if line.contains("Graceful handoff of ") {
        new_pid_in_handoff(line)
    } else {
        line.split(" with pid ")
            .nth(1)
            .and_then(|tail| tail.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid after ' with pid ' in {line:?}"))
    };
    Site {
        pid,
        ports: ports_in_grace_line(line),
    }
}

/// Starts an httpprobe (`cmd`, from [`command`]) and waits for generation 1's `Serving …`
/// line; its guard and site.
pub fn start_httpprobe(cmd: Command) -> (ProcessGuard, Site) {
    let mut guard = ProcessGuard::spawn(cmd);
    let line = guard.expect_log("Serving ");
    assert!(line.contains("generation=1"), "{line}");
    let site = parse_serving(&line);
    assert_eq!(site.pid, guard.pid(), "{line}");
    (guard, site)
}

/// The port in axumserve's line `axumserve listening on ADDR pid P`.
pub fn axumserve_port(line: &str) -> u16 {
    line.split_whitespace()
        .nth(3)
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// Starts an axumserve (`cmd`, from [`command`]) and waits for its `axumserve listening on`
/// line; its guard and port.
pub fn start_axumserve(cmd: Command) -> (ProcessGuard, u16) {
    let mut guard = ProcessGuard::spawn(cmd);
    let line = guard.expect_line("axumserve listening on ");
    (guard, axumserve_port(&line))
}

/// Waits for generation `number`'s log line naming the standby it started (a lifeprobe with
/// `PROBE_STANDBY=1`); the standby's pid.
pub fn standby_started(guard: &mut ProcessGuard, number: u64) -> u32 {
    let line = guard.expect_log(&format!(
        "started a standby for the next generation generation={number} next={} ",
        number + 1
    ));
    field(&line, "pid")
        .parse()
        .unwrap_or_else(|e| panic!("no pid in {line:?}: {e}"))
}

/// Checks that this test can make a PID namespace of its own (`unshare --pid --mount-proc`:
/// root, as in CI). A test that did not run must not pass: without it, this panics saying why.
pub fn require_pid_namespace() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "cannot create a pid namespace here (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run unshare (util-linux) for this test: {e}"),
    }
}

/// The one child of `pid` (say, the process `unshare --fork` started: the namespace's PID 1,
/// as this test's namespace numbers it).
pub fn only_child(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_else(|e| panic!("the children of {pid}: {e}"))
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{pid} has no child"))
}

/// Sends `signal` to `pid` (a process the test did not start itself, or did); panics naming
/// both if it cannot.
pub fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

/// Delivers `signal` to process `pid` `times` times in a row, before it runs any more of its
/// own code than its signal handlers: each is sent once the kernel has handed the one before
/// to the process (seen by tracing it: a ptrace signal-delivery-stop), so the kernel merges
/// none (a standard signal sent while the same one is still pending is dropped), and the
/// handlers have run for all of them before its main loop goes on. "Several deliveries before
/// the process's loop comes round", made certain. Each is sent to its main thread (`tgkill`:
/// while that thread is stopped, a signal sent to the process would go to another thread that
/// does not block it, unseen here). Other signals reaching it meanwhile are passed on; it is
/// no longer traced on return.
pub fn deliver_together(pid: u32, signal: Signal, times: usize) {
    use nix::sys::ptrace;
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    assert!(times > 0, "deliver {signal} at least once");
    let target = Pid::from_raw(pid as i32);
    ptrace::seize(target, ptrace::Options::empty()).unwrap_or_else(|e| panic!("ptrace(SEIZE, {pid}): {e}"));
    let send = || {
        // SAFETY: tgkill takes three integers and touches no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                pid as libc::pid_t,
                pid as libc::pid_t,
                signal as i32,
            )
        };
        assert_eq!(
            rc,
            0,
            "tgkill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    };
    send();
    let deadline = Instant::now() + DEADLINE;
    let mut delivered = 0;
    // Each round sees one stop (or none yet); bounded by the deadline.
    while delivered < times {
        assert!(
            Instant::now() < deadline,
            "{pid} was handed {delivered} of {times} {signal} within {DEADLINE:?}"
        );
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        match waitpid(target, Some(flags)).unwrap_or_else(|e| panic!("waitpid({pid}): {e}")) {
            WaitStatus::StillAlive => std::thread::sleep(Duration::from_millis(1)),
            WaitStatus::Stopped(_, s) if s == signal => {
                delivered += 1;
                if delivered == times {
                    ptrace::detach(target, Some(signal))
                        .unwrap_or_else(|e| panic!("ptrace(DETACH, {pid}): {e}"));
                    return;
                }
                // The one before has left the pending set: this one is not merged with it,
                // and is handed over before the process runs on.
                send();
                ptrace::cont(target, Some(signal)).unwrap_or_else(|e| panic!("ptrace(CONT, {pid}): {e}"));
            }
            WaitStatus::Stopped(_, other) => {
                ptrace::cont(target, Some(other)).unwrap_or_else(|e| panic!("ptrace(CONT, {pid}): {e}"));
            }
            WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) | WaitStatus::Continued(_) => {
                ptrace::cont(target, None).unwrap_or_else(|e| panic!("ptrace(CONT, {pid}): {e}"));
            }
            ended => panic!("{pid} ended while being handed {signal}: {ended:?}"),
        }
    }
}

/// A directory unique to one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/grace-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// Creates `<base>/grace-<tag>-<pid>-<n>`.
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("grace-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for tools that must be told a port
/// (`systemd-socket-activate -l`). Prefer port 0 wherever the program can report its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Sends one line to the line server at `127.0.0.1:port` and returns its one-line answer.
pub fn ask(port: u16) -> std::io::Result<String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    converse(&stream)
}

/// Sends one line on an open connection and returns the one-line answer.
pub fn converse(stream: &std::net::TcpStream) -> std::io::Result<String> {
    use std::io::Write;
    stream.set_read_timeout(Some(DEADLINE))?;
    (&*stream).write_all(b"x\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// The pid at the start of an answer from a line server (`"<pid> ..."`).
pub fn answer_pid(answer: &str) -> u32 {
    answer
        .split(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in answer {answer:?}"))
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// Answers, by the pid that gave them.
    pub by_pid: std::collections::BTreeMap<u32, usize>,
    /// Every failure, as text.
    pub failures: Vec<String>,
}

/// A client that keeps asking a line server, one new connection per question, from a thread,
/// until stopped: at most [`Prober::MAX`] questions and [`Prober::MAX_TIME`].
pub struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<ProbeStats>>,
}

impl Prober {
    /// The most questions one prober asks.
    pub const MAX: usize = 200_000;
    /// The longest one prober runs.
    pub const MAX_TIME: Duration = Duration::from_secs(60);

    /// Starts asking `127.0.0.1:port`, pausing `pause` between questions.
    pub fn start(port: u16, pause: Duration) -> Prober {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stats = ProbeStats::default();
            let started = Instant::now();
            for _ in 0..Prober::MAX {
                if flag.load(Ordering::Relaxed) || started.elapsed() > Prober::MAX_TIME {
                    break;
                }
                match ask(port) {
                    Ok(answer) => *stats.by_pid.entry(answer_pid(&answer)).or_default() += 1,
                    Err(e) => stats.failures.push(e.to_string()),
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            stats
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops asking and returns what was seen.
    pub fn stop(mut self) -> ProbeStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("prober thread"))
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Places `program` at `dest` (atomically, by rename, as a deploy does): a hard link when
/// they share a filesystem, else a copy made by `cp`, so this process never holds the file
/// open for writing (a fork elsewhere in the test process could inherit that fd and make
/// exec fail with ETXTBSY).
pub fn install_program(program: &Path, dest: &Path) {
    let tmp = dest.with_extension("installing");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(program, &tmp).is_err() {
        let status = Command::new("cp")
            .arg(program)
            .arg(&tmp)
            .status()
            .expect("run cp");
        assert!(
            status.success(),
            "cp {} {}: {status}",
            program.display(),
            tmp.display()
        );
    }
    std::fs::rename(&tmp, dest).expect("rename the new program into place");
}

/// The README's code blocks, compiled as doctests (here, where every crate they use is a
/// dependency) so the quick start cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The guide's code blocks (`docs/*.md`), compiled as doctests the same way, one item per
/// chapter so a failure names its file. A block that is not Rust says so (`sh`, `toml`,
/// `text`); an unmarked one is compiled as Rust. This crate is never packaged, so these files
/// outside it can be included.
#[cfg(doctest)]
mod guide_doctests {
    #[doc = include_str!("../../docs/README.md")]
    struct Index;
    #[doc = include_str!("../../docs/lifecycle.md")]
    struct Lifecycle;
    #[doc = include_str!("../../docs/sockets.md")]
    struct Sockets;
    #[doc = include_str!("../../docs/http.md")]
    struct Http;
    #[doc = include_str!("../../docs/systemd.md")]
    struct Systemd;
    #[doc = include_str!("../../docs/supervisor.md")]
    struct Supervisor;
    #[doc = include_str!("../../docs/control.md")]
    struct Control;
    #[doc = include_str!("../../docs/handover.md")]
    struct Handover;
    #[doc = include_str!("../../docs/cluster.md")]
    struct Cluster;
    #[doc = include_str!("../../docs/metrics.md")]
    struct Metrics;
    #[doc = include_str!("../../docs/demo.md")]
    struct Demo;
    #[doc = include_str!("../../docs/benchmarks.md")]
    struct Benchmarks;
    #[doc = include_str!("../../docs/reliability.md")]
    struct Reliability;
}

/// A chapter added to `docs/` without a line in `guide_doctests` would go untested: this
/// fails naming it.
#[test]
fn every_guide_chapter_is_doctested() {
    let source = include_str!("lib.rs");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut chapters = 0;
    for entry in std::fs::read_dir(&docs).expect("read docs/") {
        let name = entry.expect("a docs/ entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            chapters += 1;
            let line = format!("include_str!(\"../../docs/{name}\")");
            assert!(
                source.contains(&line),
                "docs/{name} is not in guide_doctests: add `#[doc = {line}]`"
            );
        }
    }
    assert!(chapters > 0, "no chapter found in {}", docs.display());
}

/// The live processes whose environment holds `key=value`: a test marks the process it starts
/// with a unique pair, and every generation inherits it, so this counts exactly that server's
/// processes even with other tests running.
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) && is_alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// The environment variable a [`Sweep`] marks a test's processes with.
pub const SWEEP_MARK: &str = "GRACE_TESTS_SWEEP";

/// Kills, by pid, every process marked with its value ([`SWEEP_MARK`]) when dropped: the
/// generations a server started that a test may not know the pid of (one started to replace
/// a generation killed before it, one that should have refused and exited but serves), which
/// would otherwise outlive the test. Declare it before the server's guard, so it runs after
/// that one has killed and reaped the server.
pub struct Sweep(pub String);

impl Sweep {
    /// Marks `cmd` (and so every generation it starts, which inherit the variable).
    pub fn new(cmd: &mut Command) -> Sweep {
        let marker = unique_marker();
        cmd.env(SWEEP_MARK, &marker);
        Sweep(marker)
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in pids_with_env(SWEEP_MARK, &self.0) {
            drop(PidGuard(pid));
        }
    }
}

/// A value unique to this call in this test process, for [`pids_with_env`].
pub fn unique_marker() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The ports in one of grace's address lines (`Serving A, B, C with pid P.`,
/// `Graceful handoff of A, B with new pid N and old pid O.`,
/// `Listening on init activated A, B`, `Worker 0 serving A, B with pid P.`), in order.
pub fn ports_in_grace_line(line: &str) -> Vec<u16> {
    let rest = [
        "Serving ",
        " serving ",
        "Graceful handoff of ",
        "Listening on init activated ",
    ]
    .iter()
    .find_map(|lead| line.split_once(lead).map(|(_, r)| r))
    .unwrap_or_else(|| panic!("not one of grace's address lines: {line:?}"));
    let addrs = rest.split(" with ").next().unwrap_or(rest);
    addrs
        .split(", ")
        .map(|a| {
            // The last address may be followed by log fields ("... generation=1").
            a.split_whitespace()
                .next()
                .unwrap_or_default()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in {a:?} of {line:?}"))
        })
        .collect()
}

/// The new pid in grace's `Graceful handoff of ... with new pid N and old pid O.` line.
pub fn new_pid_in_handoff(line: &str) -> u32 {
    line.split(" with new pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {line:?}"))
}

/// The pids of the workers a cluster's `status` (from its control socket) lists as serving,
/// in slot order; none when it does not answer.
pub fn serving_workers(control: &gracenet::control::Client) -> Vec<u32> {
    control
        .status()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("worker ") && l.contains(", serving,"))
        .filter_map(|l| l.split("pid ").nth(1)?.split(',').next()?.parse().ok())
        .collect()
}

/// Waits until `n` workers serve (as [`serving_workers`] lists them), and returns their pids.
pub fn wait_for_serving_workers(control: &gracenet::control::Client, n: usize) -> Vec<u32> {
    assert!(
        wait_until(DEADLINE, || serving_workers(control).len() == n),
        "not {n} workers serving: {:?}",
        control.status()
    );
    serving_workers(control)
}

/// A hexadecimal mask field of `/proc/<process>/status` (`SigIgn`, `CapEff`, …), for
/// `process` a pid or `self`.
pub fn status_mask(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .to_owned();
    u64::from_str_radix(&hex, 16).ok()
}

/// The pids of zombie processes whose parent is `parent` (found by parent pid, so children of
/// any of its threads count).
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<u32>().ok()));
        if state == Some("Z") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}
