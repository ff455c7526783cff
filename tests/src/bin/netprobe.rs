//! A test program for gracenet's fd inheritance. It prints `key=value` lines on stdout for
//! the tests in `tests/tests/` to read. Every wait in it has a deadline.
//!
//! Modes:
//! - `handoff DIR`: generation 1 listens on TCP, Unix (`DIR/s.sock`) and UDP, then on stdin
//!   `spawn` starts generation 2 with `spawn_next`, `exit` exits. Generation 2 reports its
//!   fds and the sockets it inherited, answers the connections queued before the handoff and
//!   the datagram sent before it, then serves the Unix socket for a while.
//! - `exec-with FD3 LISTEN_FDS LISTEN_PID LISTEN_FDNAMES [PROGRAM ARGS...]`: puts a TCP
//!   listener, a file, a pipe, a connected socket or nothing (`tcp|file|pipe|connected|none`)
//!   at fd 3, sets the variables (`self` = our pid, `-` = unset) and execs PROGRAM, or itself
//!   as `report`.
//! - `fds`: prints its open fds, comma-separated.
//! - `report`: reads the environment through gracenet and prints what it found.
//! - `activated ADDR NAME`: under `systemd-socket-activate`: listens on `ADDR` and by name
//!   `NAME`, answers one connection on each.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("handoff") => handoff(&args[2]),
        Some("exec-with") => exec_with(&args[2], &args[3], &args[4], &args[5], &args[6..]),
        Some("report") => report(),
        Some("activated") => activated(&args[2], &args[3]),
        Some("fds") => open_fds().map(|fds| {
            let fds: Vec<String> = fds.iter().map(i32::to_string).collect();
            println!("{}", fds.join(","));
        }),
        _ => Err("usage: netprobe handoff|exec-with|report|activated ...".into()),
    };
    if let Err(e) = result {
        eprintln!("netprobe: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The open fds of this process, from /proc/self/fd, leaving out the directory's own fd.
fn open_fds() -> Result<Vec<i32>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let fd: i32 = entry.file_name().to_string_lossy().parse()?;
        match std::fs::read_link(entry.path()) {
            // The fd read_dir itself holds points at this very directory.
            Ok(target) if target.to_string_lossy().ends_with("/fd") => {}
            Err(_) => {} // closed in between: it was read_dir's own
            Ok(_) => fds.push(fd),
        }
    }
    fds.sort();
    Ok(fds)
}

fn inode(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(nix::sys::stat::fstat(fd)?.st_ino)
}

/// Waits until `fd` is readable (a connection or datagram is there), up to [`WAIT`].
fn wait_readable(fd: BorrowedFd<'_>) -> Result<()> {
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let timeout = nix::poll::PollTimeout::try_from(WAIT.as_millis() as i32)?;
    match nix::poll::poll(&mut fds, timeout)? {
        0 => Err("nothing arrived within the deadline".into()),
        _ => Ok(()),
    }
}

fn handoff(dir: &str) -> Result<()> {
    let pid = std::process::id();
    let inherited = std::env::var_os(gracenet::vars::LISTEN_FDS).is_some();
    if inherited {
        // Before gracenet touches anything: what exactly did we receive?
        let fds = open_fds()?;
        let fds: Vec<String> = fds.iter().map(i32::to_string).collect();
        println!("gen2-fds pid={pid} fds={}", fds.join(","));
        println!(
            "gen2-env pid={pid} listen_pid={} listen_fds={} names={}",
            std::env::var(gracenet::vars::LISTEN_PID).unwrap_or_default(),
            std::env::var(gracenet::vars::LISTEN_FDS).unwrap_or_default(),
            std::env::var(gracenet::vars::LISTEN_FDNAMES).unwrap_or_default(),
        );
    }
    let reg = gracenet::registry()?;
    let tcp = gracenet::listen_tcp("127.0.0.1:0".parse()?)?;
    let unix_path = format!("{dir}/s.sock");
    let unix = gracenet::listen_unix(&unix_path)?;
    let udp = gracenet::listen_udp("127.0.0.1:0".parse()?)?;
    let who = if inherited { "gen2" } else { "gen1" };
    println!(
        "{who} pid={pid} origin={:?} tcp={} tcp_ino={} unix_ino={} udp={} udp_ino={} env_left={}",
        reg.origin(),
        tcp.local_addr()?.port(),
        inode(tcp.as_fd())?,
        inode(unix.as_fd())?,
        udp.local_addr()?.port(),
        inode(udp.as_fd())?,
        std::env::var_os(gracenet::vars::LISTEN_FDS).is_some()
            || std::env::var_os(gracenet::vars::LISTEN_PID).is_some(),
    );
    if !inherited {
        // An fd some library opened without O_CLOEXEC: it must not reach the next process.
        let careless = std::fs::File::open("/dev/null")?;
        nix::fcntl::fcntl(&careless, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty()))?;
        for line in std::io::stdin().lines() {
            match line?.as_str() {
                "spawn" => {
                    let exe = gracenet::process::Executable::current()?;
                    let child = gracenet::process::NextProcess::new(exe, reg.handoff()?).spawn()?;
                    println!("spawned pid={}", child.pid());
                }
                "exit" => break,
                other => return Err(format!("unknown command {other:?}").into()),
            }
        }
        println!("gen1-exit pid={pid}");
        return Ok(());
    }
    // Generation 2: answer what queued up before we existed.
    wait_readable(tcp.as_fd())?;
    let (mut c, _) = tcp.accept()?;
    c.set_nonblocking(false)?;
    writeln!(c, "hello from {pid}")?;
    wait_readable(unix.as_fd())?;
    let (mut c, _) = unix.accept()?;
    c.set_nonblocking(false)?;
    writeln!(c, "hello from {pid}")?;
    wait_readable(udp.as_fd())?;
    let mut buf = [0u8; 64];
    let n = udp.recv(&mut buf)?;
    println!("gen2-udp pid={pid} got={}", String::from_utf8_lossy(&buf[..n]));
    // Then keep answering on the Unix socket (bounded: at most 10 connections).
    for _ in 0..10 {
        wait_readable(unix.as_fd())?;
        let (mut c, _) = unix.accept()?;
        c.set_nonblocking(false)?;
        writeln!(c, "hello from {pid}")?;
    }
    Ok(())
}

fn exec_with(fd3: &str, fds: &str, pid: &str, names: &str, program: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // Keep the source objects alive until exec.
    let listener;
    let file;
    let pipe;
    let connected;
    let source: Option<BorrowedFd<'_>> = match fd3 {
        "tcp" => {
            listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("fd3 tcp={}", listener.local_addr()?.port());
            Some(listener.as_fd())
        }
        "file" => {
            file = std::fs::File::open("/proc/self/cmdline")?;
            Some(file.as_fd())
        }
        "pipe" => {
            pipe = nix::unistd::pipe()?;
            Some(pipe.0.as_fd())
        }
        "connected" => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            connected = (std::net::TcpStream::connect(l.local_addr()?)?, l);
            Some(connected.0.as_fd())
        }
        "none" => None,
        other => return Err(format!("unknown fd 3 kind {other:?}").into()),
    };
    match source {
        // dup2 makes fd 3 a copy without FD_CLOEXEC, so it survives exec.
        // SAFETY: dup2 onto fd 3 in this single-threaded process, which is about to exec.
        Some(fd) if fd.as_raw_fd() != 3 => {
            if unsafe { libc::dup2(fd.as_raw_fd(), 3) } < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        Some(_) => {
            // Already fd 3: clear FD_CLOEXEC.
            // SAFETY: as above.
            unsafe { libc::fcntl(3, libc::F_SETFD, 0) };
        }
        None => {
            // SAFETY: closing fd 3, which this program does not use.
            unsafe { libc::close(3) };
        }
    }
    let mut cmd = match program.split_first() {
        Some((p, args)) => {
            let mut c = std::process::Command::new(p);
            c.args(args);
            c
        }
        None => {
            let mut c = std::process::Command::new(std::env::current_exe()?);
            c.arg("report");
            c
        }
    };
    let own = std::process::id().to_string();
    for (var, value) in [
        (gracenet::vars::LISTEN_FDS, fds),
        (
            gracenet::vars::LISTEN_PID,
            if pid == "self" { own.as_str() } else { pid },
        ),
        (gracenet::vars::LISTEN_FDNAMES, names),
    ] {
        if value == "-" {
            cmd.env_remove(var);
        } else {
            cmd.env(var, value);
        }
    }
    std::io::stdout().flush()?;
    Err(cmd.exec().into())
}

fn report() -> Result<()> {
    let pid = std::process::id();
    // NETPROBE_THREAD=1: another thread is running when the environment is read (as under
    // `#[tokio::main]`).
    let (_keep, parked) = std::sync::mpsc::channel::<()>();
    if std::env::var_os("NETPROBE_THREAD").is_some() {
        std::thread::spawn(move || {
            let _ = parked.recv();
        });
    }
    // Kept alive until after the fd 3 check: adopted fds close when it drops.
    let result = gracenet::registry::InheritedFds::from_env();
    match &result {
        Ok(inherited) => println!(
            "report pid={pid} ok origin={:?} count={}",
            inherited.origin(),
            inherited.len()
        ),
        Err(e) => println!("report pid={pid} error={e}"),
    }
    // SAFETY: F_GETFD only reads fd 3's flags.
    let fd3_open = unsafe { libc::fcntl(3, libc::F_GETFD) } != -1;
    println!(
        "after fd3_open={fd3_open} env_left={}",
        [
            gracenet::vars::LISTEN_FDS,
            gracenet::vars::LISTEN_PID,
            gracenet::vars::LISTEN_FDNAMES
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    );
    drop(result);
    Ok(())
}

fn activated(addr: &str, name: &str) -> Result<()> {
    let pid = std::process::id();
    let reg = gracenet::registry()?;
    let by_addr = gracenet::listen(addr)?;
    // The fallback address is deliberately another port: only the name can find the socket.
    let by_name = gracenet::listen_named(name, "127.0.0.1:0")?;
    println!(
        "activated pid={pid} origin={:?} by_addr={} by_name={} unclaimed={}",
        reg.origin(),
        by_addr.local_addr()?,
        by_name.local_addr()?,
        reg.unclaimed().len()
    );
    for l in [&by_addr, &by_name] {
        wait_readable(l.as_fd())?;
        let gracenet::registry::StdStreamListener::Tcp(l) = l else {
            return Err("expected TCP".into());
        };
        let (mut c, _) = l.accept()?;
        c.set_nonblocking(false)?;
        writeln!(c, "hello from {pid}")?;
        // Let the client close first.
        let _ = c.read(&mut [0u8; 1]);
    }
    Ok(())
}
