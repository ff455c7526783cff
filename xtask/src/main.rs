//! `cargo xtask <task>`: the project's own automation.
//!
//! - `demo`: the README walkthrough, live, narrated for a person watching.
//! - `bench [--quick] [--tls-other COMMAND]`: speed against plain hyper, the latency tail
//!   across restarts, TLS (beside another server started by COMMAND, when given), footprint
//!   (measured from outside the server); a crash under load, with and without the
//!   supervisor; every request across restarts. Instructions per request are measured apart
//!   (`python3 xtask/scripts/instructions.py`: valgrind, which the bench does not install).

mod bench;
mod external;
mod figures;
mod lines;
mod report;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lines::{LogLines, serving_port};

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        None | Some("-h") | Some("--help") => {
            println!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  demo            run the README walkthrough live: a slow request, kill -USR2, a quick one\n  \
                 bench [--quick]  speed, restart tail, TLS, footprint, a crash under load (wrk/h2load on another core); --quick: correctness only\n  \
                 bench --tls-other 'COMMAND'  also measures new TLS connections to the server COMMAND starts\n                  \
                 ({{port}}, {{cert}}, {{key}} replaced; see xtask/scripts/tls_latency.py), e.g. Go grace built by hand\n\n\
                 {}",
                bench::APART
            );
            Ok(())
        }
        Some("demo") => demo(),
        Some("bench") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let tls_other = args
                .iter()
                .position(|a| a == "--tls-other")
                .map(|i| args.get(i + 1).cloned().ok_or("--tls-other needs a command"));
            match tls_other.transpose() {
                Ok(tls_other) => bench::run(args.iter().any(|a| a == "--quick"), tls_other),
                Err(e) => Err(e.into()),
            }
        }
        Some(other) => Err(format!(
            "unknown task {other:?}; run `cargo xtask --help` for the list"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Kills the demo server (every generation it started) if the walkthrough stops half-way.
struct Server {
    child: Child,
    pids: Vec<u32>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(text: &str) {
    println!("\n\x1b[1m{text}\x1b[0m");
}

fn shell(cmd: &str) {
    println!("\x1b[36m$ {cmd}\x1b[0m");
}

/// Shows one line of the server's log, dimmed under the narration.
fn show_log(line: &str) {
    println!("  \x1b[2m│ {line}\x1b[0m");
}

/// `GET path` on a new connection; returns the body.
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim_end().to_owned())
        .unwrap_or(response))
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest)
}

fn demo() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    say("Building gracedemo");
    shell("cargo build -p gracedemo");
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "gracedemo"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build -p gracedemo failed".into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join("gracedemo");

    say("1. Start the demo (on free ports, so it cannot clash with anything)");
    shell("gracedemo -a0 127.0.0.1:0 -a1 127.0.0.1:0 -a2 127.0.0.1:0");
    let mut child = Command::new(&binary)
        .args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let logs = LogLines::read("gracedemo", stderr).echoing(show_log);
    let mut server = Server {
        pids: vec![child.id()],
        child,
    };
    let serving = logs.wait_for("Serving ")?;
    let old = server.child.id();
    let port = serving_port(&serving).ok_or("cannot read the port from the Serving line")?;
    println!("  gracedemo serves with pid {old}; the first server (Zero) is on port {port}");

    say("2. A slow request, in the background");
    shell(&format!("curl 'http://127.0.0.1:{port}/sleep/?duration=3s' &"));
    let slow = std::thread::spawn(move || get(port, "/sleep/?duration=3s"));
    std::thread::sleep(Duration::from_millis(200)); // let it reach the server before the restart

    say("3. Restart: the old process starts a new one, which inherits the listening sockets");
    shell(&format!("kill -USR2 {old}"));
    let started = Instant::now();
    Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    let handoff = logs.wait_for("Graceful handoff of ")?;
    let new: u32 = after(&handoff, "with new pid ")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .ok_or("cannot read the new pid")?;
    server.pids.push(new);
    // The old process stops accepting once the new one is ready; gracedemo does not log that
    // by default, so wait (bounded) for the new pid to answer instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    while grace_tests::load::pid_of(&get(port, "/sleep/?duration=0s")?) != Some(new) {
        if Instant::now() > deadline {
            return Err(format!("pid {new} did not answer within 10 s of the handoff"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "  new pid {new} took over after {:.0?}; old pid {old} stopped accepting and drains",
        started.elapsed()
    );
    println!(
        "  processes alive now: {old} {}, {new} {}",
        if grace_tests::is_alive(old) {
            "(alive)"
        } else {
            "(gone)"
        },
        if grace_tests::is_alive(new) {
            "(alive)"
        } else {
            "(gone)"
        }
    );

    say("4. A quick request, while the slow one is still running");
    shell(&format!("curl 'http://127.0.0.1:{port}/sleep/?duration=0s'"));
    let quick = get(port, "/sleep/?duration=0s")?;
    println!("  {quick}");
    println!("  → answered by the NEW pid {new}");

    say("5. The slow request finishes, from the OLD process");
    let slow = slow.join().map_err(|_| "the slow request thread panicked")??;
    println!("  {slow}");
    println!("  → answered by the OLD pid {old}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while grace_tests::is_alive(old) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "  old pid {old} {} {:.1?} after the restart",
        if grace_tests::is_alive(old) {
            "is still running"
        } else {
            "exited"
        },
        started.elapsed()
    );

    say("6. Stop: finish what is in flight, then exit");
    shell(&format!("kill -TERM {new}"));
    Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    logs.wait_for(&format!("Exiting pid {new}."))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while grace_tests::is_alive(new) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "  pid {new} {}",
        if grace_tests::is_alive(new) {
            "is still running"
        } else {
            "exited"
        }
    );
    say("Done: no request was refused or lost across the restart.");
    Ok(())
}
