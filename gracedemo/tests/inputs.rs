//! What gracedemo makes of bad inputs around it: a `RUST_LOG` that would hide its errors, a
//! low limit on threads, paths given to two flags, commands for a server of another kind.
//! Each test runs the real binary and reads what it prints.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus};

use grace_tests::{DEADLINE, ProcessGuard, TempDir};
use nix::sys::signal::Signal;

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");

/// gracedemo on three free loopback ports, with `extra` flags.
fn demo(extra: &[&str]) -> Command {
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .args(extra);
    cmd
}

/// Runs `cmd` to its end (within [`DEADLINE`], else the test fails): its status and every
/// line it printed (stdout and stderr).
fn run_to_end(cmd: Command) -> (ExitStatus, Vec<String>) {
    let mut guard = ProcessGuard::spawn(cmd);
    let Some(status) = guard.wait_timeout(DEADLINE) else {
        panic!("still running after {DEADLINE:?}; printed {:#?}", guard.seen());
    };
    (status, guard.output_after_exit())
}

/// A start that fails (its PID file's directory does not exist) is reported on stderr
/// whatever `RUST_LOG` says, and "Serving" is not said before it.
#[test]
fn no_rust_log_value_hides_a_failed_start() {
    let dir = TempDir::new("inputs-rustlog");
    let pid_file = dir.path().join("missing-dir").join("pid");
    for value in ["", "inf0", "gracenet=debug", "off", "error", "gracenet=verbose"] {
        let mut cmd = demo(&["--pid-file", pid_file.to_str().unwrap()]);
        cmd.env("RUST_LOG", value);
        let (status, lines) = run_to_end(cmd);
        assert_eq!(status.code(), Some(1), "RUST_LOG={value:?}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("ERROR: gracedemo: cannot write the PID file")),
            "RUST_LOG={value:?}: the error is printed: {lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("Serving ")),
            "RUST_LOG={value:?}: not \"Serving\" before a start that fails: {lines:#?}"
        );
    }
}

/// A `RUST_LOG` that is not a filter, or names nothing, is said so; grace's own lines stay
/// with the filter the cluster guide suggests (`gracenet=info`).
#[test]
fn rust_log_keeps_graces_lines_and_names_a_bad_value() {
    for (value, said) in [
        ("gracenet=info", None),
        (
            "gracenet=verbose",
            Some("RUST_LOG=\"gracenet=verbose\" is not a filter"),
        ),
        (
            "inf0",
            Some(
                "RUST_LOG: \"inf0\" is neither a level (error, warn, info, debug, trace) nor a crate of this program",
            ),
        ),
    ] {
        let mut cmd = demo(&[]);
        cmd.env("RUST_LOG", value);
        let mut server = ProcessGuard::spawn(cmd);
        if let Some(said) = said {
            server.expect_log(said);
        }
        server.expect_log("Serving ");
        server.signal(Signal::SIGTERM);
        server.expect_log("Exiting pid ");
        assert!(
            server.wait_timeout(DEADLINE).is_some_and(|s| s.success()),
            "RUST_LOG={value:?}: stops"
        );
    }
}

/// gracedemo as uid 65534 with at most `nproc` processes and threads for that user.
fn under_thread_limit(nproc: u64) -> Command {
    let mut cmd = demo(&[]);
    cmd.uid(65534).gid(65534).env_remove("RUST_LOG");
    // SAFETY: setrlimit is one async-signal-safe system call, between fork and exec (after
    // the uid change).
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nproc,
                rlim_max: nproc,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// Under a low `RLIMIT_NPROC` (the log writer's thread, then tokio's cannot start), the start
/// fails with an error naming the limit: no panic, and no process left that does not listen.
/// (Counts uid 65534's processes: other tests run as that uid must not be running at once.)
#[test]
fn a_low_thread_limit_is_an_error_naming_it_not_a_panic() {
    for nproc in [1, 3, 5] {
        let (status, lines) = run_to_end(under_thread_limit(nproc));
        assert_eq!(status.code(), Some(1), "nproc={nproc}: {lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "nproc={nproc}: no panic: {lines:#?}"
        );
        let error = lines
            .iter()
            .find(|l| l.contains("ERROR: gracedemo: cannot start"))
            .unwrap_or_else(|| panic!("nproc={nproc}: an error: {lines:#?}"));
        assert!(
            error.contains(&format!("(RLIMIT_NPROC, ulimit -u: {nproc}) is likely reached")),
            "nproc={nproc}: names the limit: {error}"
        );
    }
}

/// A path given to two flags, one of which the server writes, is refused before anything is
/// written: the private key is not overwritten by the PID file, a `unix:` listener's socket
/// is not the control socket. Compared as the system resolves them (`dir/../dir/x` is `dir/x`).
#[test]
fn a_path_given_to_two_flags_is_refused_before_anything_is_written() {
    let dir = TempDir::new("inputs-same-path");
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&key, "the private key").unwrap();
    std::fs::write(&cert, "the certificate").unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let around = sub.join("..").join("key.pem");
    let (k, c, around) = (
        key.to_str().unwrap(),
        cert.to_str().unwrap(),
        around.to_str().unwrap(),
    );
    let sock = dir.path().join("s.sock");
    let unix = format!("unix:{}", sock.display());
    let ctl = sock.to_str().unwrap();
    for (args, flags) in [
        (
            vec![
                "-a0",
                "127.0.0.1:0",
                "-a1",
                "127.0.0.1:0",
                "-a2",
                "127.0.0.1:0",
                "--tls-cert",
                c,
                "--tls-key",
                k,
                "--pid-file",
                around,
            ],
            "--pid-file and --tls-key name the same file",
        ),
        (
            vec![
                "-a0",
                "127.0.0.1:0",
                "-a1",
                &unix,
                "-a2",
                "127.0.0.1:0",
                "--control-socket",
                ctl,
            ],
            "--control-socket and -a1 unix: name the same file",
        ),
        (
            vec!["-a0", &unix, "-a1", "127.0.0.1:0", "-a2", &unix],
            "-a0 unix: and -a2 unix: name the same file",
        ),
    ] {
        let mut cmd = Command::new(GRACEDEMO);
        cmd.args(&args);
        let (status, lines) = run_to_end(cmd);
        assert_eq!(status.code(), Some(2), "{args:?}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(flags) && l.contains("each needs a path of its own")),
            "{args:?}: {lines:#?}"
        );
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            "the private key",
            "{args:?}: untouched"
        );
        assert!(!sock.exists(), "{args:?}: nothing written");
    }
}

/// `--scale` against a server that is not a cluster says so (not "unknown command").
#[test]
fn scale_against_a_single_server_says_it_is_not_a_cluster() {
    let dir = TempDir::new("inputs-scale");
    let socket = dir.path().join("control");
    let mut server = ProcessGuard::spawn(demo(&["--control-socket", socket.to_str().unwrap()]));
    server.expect_log("Serving ");
    let out = Command::new(GRACEDEMO)
        .arg("--control-socket")
        .arg(&socket)
        .args(["--scale", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not a cluster (one process, started without --workers)"),
        "{err}"
    );
}
