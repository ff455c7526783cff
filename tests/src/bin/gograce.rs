//! An emulation of Go's facebookgo/grace, speaking its protocol exactly, to test that grace-rs
//! and grace hand sockets to each other both ways. No gracenet here.
//!
//! As a child: inherits fd 3 when `LISTEN_FDS` is set (ignoring `LISTEN_PID`, as grace does)
//! and, once serving, sends `SIGTERM` to its parent unless that is pid 1.
//! As a parent: on `SIGUSR2` starts its own `argv[0]` (resolved at start) with the listener
//! as fd 3 and only `LISTEN_FDS=1`; a `SIGTERM` (the child's "ready", or anyone's stop) makes
//! it stop accepting and exit.
//!
//! Each line a client sends is answered with `<pid> gograce`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;

fn main() {
    if let Err(e) = run() {
        eprintln!("gograce: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let program = std::fs::canonicalize(std::env::args_os().next().ok_or("no argv[0]")?)?;
    let inherited = std::env::var("LISTEN_FDS").ok().as_deref() == Some("1");
    let listener = if inherited {
        // SAFETY: LISTEN_FDS=1 hands us fd 3, a listening socket, as grace does.
        unsafe { TcpListener::from_raw_fd(3) }
    } else {
        TcpListener::bind("127.0.0.1:0")?
    };
    if listener.as_raw_fd() != 3 {
        return Err(format!("expected the listener at fd 3, got {}", listener.as_raw_fd()).into());
    }
    // Before anything can tell the world we exist: an early SIGUSR2 would otherwise kill us.
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGUSR2, SIGTERM, SIGINT])?;
    // grace serves with blocking accepts.
    listener.set_nonblocking(false)?;
    println!(
        "gograce pid={pid} port={} inherited={inherited}",
        listener.local_addr()?.port()
    );
    let serving = listener.try_clone()?;
    std::thread::spawn(move || {
        for conn in serving.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut write = match conn.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                for line in BufReader::new(conn).lines() {
                    if line.is_err() || writeln!(write, "{pid} gograce").is_err() {
                        break;
                    }
                }
            });
        }
    });
    if inherited {
        let ppid = nix::unistd::getppid();
        if ppid.as_raw() != 1 {
            nix::sys::signal::kill(ppid, nix::sys::signal::SIGTERM)?;
        }
    }
    for signal in signals.forever() {
        match signal.signal {
            SIGUSR2 => {
                let mut cmd = std::process::Command::new(&program);
                cmd.env_clear()
                    .envs(std::env::vars().filter(|(k, _)| !k.starts_with("LISTEN_")))
                    .env("LISTEN_FDS", "1");
                // SAFETY: fcntl on fd 3 between fork and exec: async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child = cmd.spawn()?;
                println!("gograce spawned pid={}", child.id());
            }
            _ => {
                println!(
                    "gograce stopping pid={pid} from={}",
                    signal.process.map(|p| p.pid).unwrap_or(0)
                );
                std::io::stdout().flush()?;
                std::process::exit(0);
            }
        }
    }
    Ok(())
}
