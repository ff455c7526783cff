//! A real systemd for the tests: this machine's own systemd booted as pid 1 of new
//! namespaces (mount, pid, uts, ipc, net, cgroup), on an overlay of `/` that nothing written
//! escapes (`tests/systemd/boot.sh`). Commands go in with `nsenter`; clients run on threads
//! that joined its network namespace (it has its own loopback, so the default ports are free).
//! Dropping it powers it off (`SIGRTMIN+4`), kills what is left, and removes its cgroups.
//!
//! Needs root, util-linux and systemd (CI installs them). A test that cannot boot it fails
//! and says why: it never passes without running.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{DEADLINE, ProcessGuard, TempDir, wait_until};

/// How long systemd may take to boot.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// A booted systemd in its own namespaces.
pub struct BootedSystemd {
    /// The `unshare` process; its child is systemd. Killed on drop (and with it, via
    /// `--kill-child`, the whole namespace).
    unshare: Option<ProcessGuard>,
    /// systemd's pid, as this (the host's) pid namespace sees it.
    init: u32,
    /// The cgroup it runs in, under the host's hierarchies.
    cgroup: String,
    _root: TempDir,
}

impl BootedSystemd {
    /// Boots systemd and waits until it reports `running` (or `degraded`, with the failed
    /// units printed). Panics, saying why, when that cannot be done here.
    pub fn boot(tag: &str) -> BootedSystemd {
        assert!(
            nix::unistd::geteuid().is_root(),
            "booting systemd in a namespace needs root"
        );
        for tool in ["/lib/systemd/systemd", "/usr/bin/unshare", "/usr/bin/nsenter"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install the Debian packages systemd and util-linux (.ci/run does)"
            );
        }
        let root = TempDir::new(&format!("systemd-{tag}"));
        let cgroup = format!("grace-tests-{}-{}", std::process::id(), crate::unique_marker());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/boot.sh");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
            "/bin/sh",
        ])
        .arg(&script)
        .arg(&cgroup)
        .arg(root.path());
        let mut unshare = ProcessGuard::spawn(cmd);
        let unshare_pid = unshare.pid();
        let mut init = None;
        let found = wait_until(DEADLINE, || {
            init = std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()));
            init.is_some()
        });
        let Some(init) = init.filter(|_| found) else {
            let status = unshare.wait_timeout(Duration::from_millis(100));
            panic!(
                "cannot create the namespaces for systemd ({status:?}): {:#?}",
                unshare.seen()
            );
        };
        let mut booted = BootedSystemd {
            unshare: Some(unshare),
            init,
            cgroup,
            _root: root,
        };
        let deadline = Instant::now() + BOOT_DEADLINE;
        let mut state = String::new();
        while Instant::now() < deadline {
            // Until systemd has replaced the boot script as pid 1, nsenter may fail: retry.
            state = booted.text(&["systemctl", "is-system-running"]);
            if state == "running" || state == "degraded" {
                break;
            }
            if booted
                .unshare
                .as_mut()
                .and_then(|u| u.wait_timeout(Duration::ZERO))
                .is_some()
            {
                let seen = booted.unshare.as_mut().map(ProcessGuard::seen);
                panic!("systemd exited while booting: {seen:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            state == "running" || state == "degraded",
            "systemd did not finish booting within {BOOT_DEADLINE:?}: {state:?}"
        );
        if state == "degraded" {
            eprintln!(
                "systemd booted degraded; failed units:\n{}",
                booted.text(&["systemctl", "--failed", "--no-pager"])
            );
        }
        booted
    }

    /// Runs `args` inside every namespace of systemd's (as root, in its root).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// Runs `args` inside and returns stdout (trimmed) and stderr joined.
    pub fn text(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let mut text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.trim().is_empty() {
            text.push_str(&format!("\n[stderr] {}", err.trim()));
        }
        text
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    pub fn property(&self, unit: &str, property: &str) -> String {
        let out = self.run(&["systemctl", "show", "-p", property, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The journal of `unit` (or everything, for `None`), as text.
    pub fn journal(&self, unit: Option<&str>) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-o", "short-monotonic"];
        if let Some(u) = unit {
            args.extend(["-u", u]);
        }
        self.text(&args)
    }

    /// A path inside its root, as seen from here (through `/proc/<init>/root`).
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.init))
    }

    /// Copies `from` (a host path) to `inside` in its root, with `mode`.
    pub fn install(&self, from: &Path, inside: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let dest = self.path(inside);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        // Through a temporary name and a rename: a running binary is replaced, not written.
        let tmp = dest.with_extension("installing");
        std::fs::copy(from, &tmp)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
    }

    /// Writes `text` to `inside` in its root.
    pub fn write(&self, inside: &str, text: &str) {
        let dest = self.path(inside);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&dest, text).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
    }

    /// Runs `f` on a thread inside its network namespace: sockets `f` opens reach its
    /// loopback.
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns =
            std::fs::File::open(format!("/proc/{}/ns/net", self.init)).expect("open its network namespace");
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into its network namespace");
            f()
        })
    }

    /// `GET path` on `127.0.0.1:port` inside, on a new connection.
    pub fn get(&self, port: u16, path: &str) -> Result<String, String> {
        self.get_within(port, path, DEADLINE)
    }

    /// [`get`](Self::get), answered within `timeout`.
    pub fn get_within(&self, port: u16, path: &str, timeout: Duration) -> Result<String, String> {
        let path = path.to_owned();
        self.in_netns(move || http_get(port, &path, timeout))
            .join()
            .expect("client thread")
    }
}

impl Drop for BootedSystemd {
    fn drop(&mut self) {
        // Power off as a container manager does; then make sure.
        // SAFETY: kill takes a pid and a signal number; no memory is passed.
        unsafe { libc::kill(self.init as libc::pid_t, libc::SIGRTMIN() + 4) };
        if let Some(mut unshare) = self.unshare.take()
            && unshare.wait_timeout(DEADLINE).is_none()
        {
            // Dropping the guard kills unshare, and --kill-child kills systemd with it.
            drop(unshare);
        }
        remove_cgroups(&self.cgroup);
    }
}

/// Removes the cgroups a booted systemd made under `name`, deepest first.
fn remove_cgroups(name: &str) {
    for hierarchy in ["unified", "systemd"] {
        let top = PathBuf::from(format!("/sys/fs/cgroup/{hierarchy}/{name}"));
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs, 0);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 16 || !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out, depth + 1);
            }
        }
    }
}

/// A plain HTTP/1.1 GET on a new connection (`Connection: close`); the body of a 200, or why
/// it failed ("refused: …", "reset: …", "status 503", …).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            format!("refused: {e}")
        } else {
            format!("connect: {e}")
        }
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("reset: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reset: {e}"))?;
    let status = answer.split(' ').nth(1).unwrap_or("");
    if answer.is_empty() {
        return Err("reset: closed without an answer".into());
    }
    if status != "200" {
        return Err(format!("status {status}"));
    }
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// What a [`NsLoad`] saw.
#[derive(Debug, Default)]
pub struct NsLoadStats {
    /// Answered requests.
    pub ok: u64,
    /// Answers by the pid that gave them (gracedemo's "from pid N.").
    pub by_pid: std::collections::BTreeMap<u32, u64>,
    /// Failures, as text.
    pub failures: Vec<String>,
}

/// Clients inside a booted systemd's network namespace asking `GET path` in a loop, one new
/// connection per request, until stopped: at most [`NsLoad::MAX`] requests per client and
/// [`NsLoad::MAX_TIME`].
pub struct NsLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<NsLoadStats>>,
}

impl NsLoad {
    /// The most requests one client sends.
    pub const MAX: u64 = 100_000;
    /// The longest a load runs.
    pub const MAX_TIME: Duration = Duration::from_secs(120);

    /// Starts `clients` clients.
    pub fn start(systemd: &BootedSystemd, port: u16, path: &str, clients: usize) -> NsLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                systemd.in_netns(move || {
                    let mut stats = NsLoadStats::default();
                    let started = Instant::now();
                    for _ in 0..NsLoad::MAX {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || started.elapsed() > NsLoad::MAX_TIME
                        {
                            break;
                        }
                        match http_get(port, &path, Duration::from_secs(30)) {
                            Ok(body) => {
                                stats.ok += 1;
                                if let Some(pid) = crate::load::pid_of(&body) {
                                    *stats.by_pid.entry(pid).or_default() += 1;
                                }
                            }
                            Err(e) => stats.failures.push(e),
                        }
                    }
                    stats
                })
            })
            .collect();
        NsLoad { stop, threads }
    }

    /// Stops the clients and adds up what they saw.
    pub fn stop(self) -> NsLoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = NsLoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            all.ok += s.ok;
            for (pid, n) in s.by_pid {
                *all.by_pid.entry(pid).or_default() += n;
            }
            all.failures.extend(s.failures);
        }
        all
    }
}
