//! `gracedemo --status --json`: the control socket's state as one JSON object, parsed by a
//! real JSON parser (Python's `json`, as `python3 -m json.tool` uses it) from a real server,
//! before and across a restart, with an address that needs escaping (a Unix socket path with a
//! quote, a backslash, a tab and a non-ASCII letter).

use std::path::Path;
use std::process::{Command, Stdio};

use grace_tests::{DEADLINE, PidGuard, ProcessGuard, TempDir, wait_until};
use nix::sys::signal::Signal;

const GRACEDEMO: &str = env!("CARGO_BIN_EXE_gracedemo");

/// Reads the JSON object on stdin and prints the members the test checks, one per line, as
/// JSON again (so a string's exact characters survive): a failed parse exits non-zero.
const READ_STATUS: &str = r#"
import json, sys
d = json.load(sys.stdin)
assert isinstance(d, dict), d
for key in ["generation", "pid", "phase", "drain", "connections", "listening",
            "draining_generations", "standby", "restart", "uptime_seconds"]:
    print(key, json.dumps(d[key]))
"#;

/// `gracedemo --control-socket SOCKET --status --json`, parsed: each checked member as
/// `(key, JSON text)`.
fn status_json(socket: &Path) -> Vec<(String, String)> {
    let out = Command::new(GRACEDEMO)
        .arg("--control-socket")
        .arg(socket)
        .args(["--status", "--json"])
        .output()
        .expect("run gracedemo --status --json");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    let mut python = Command::new("python3")
        .args(["-c", READ_STATUS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (the JSON parser)");
    {
        use std::io::Write;
        let mut stdin = python.stdin.take().expect("piped");
        stdin.write_all(text.as_bytes()).expect("write to python3");
    }
    let parsed = python.wait_with_output().expect("python3");
    assert!(
        parsed.status.success(),
        "not JSON ({}): {text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    String::from_utf8(parsed.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("key value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn member<'a>(status: &'a [(String, String)], key: &str) -> &'a str {
    status
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {status:?}"))
}

/// A string as Python's `json.dumps` writes it (ASCII only: `\uXXXX` beyond it).
fn python_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_one_object_a_json_parser_reads_before_and_across_a_restart() {
    let dir = TempDir::new("status-json");
    let odd = dir.path().join("q\"uote\\back\tslash é");
    std::fs::create_dir(&odd).unwrap();
    let unix = format!("unix:{}", odd.join("a1.sock").display());
    let socket = odd.join("control");
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", &unix, "-a2", "127.0.0.1:0"])
        .arg("--control-socket")
        .arg(&socket)
        .env("RUST_LOG", "info,gracedemo=debug");
    let mut server = ProcessGuard::spawn(cmd);
    let line = tokio::task::block_in_place(|| server.expect_log("Serving "));
    let first = server.pid();
    // a0's port: the first address (the Unix path has no port to find).
    let port: u16 = line
        .split("Serving ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|a0| a0.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no a0 port in {line}"));

    let status = tokio::task::block_in_place(|| status_json(&socket));
    assert_eq!(member(&status, "generation"), "1");
    assert_eq!(member(&status, "pid"), first.to_string());
    assert_eq!(member(&status, "phase"), "\"serving\"");
    assert_eq!(member(&status, "drain"), "null");
    assert_eq!(
        member(&status, "connections"),
        "0",
        "the asking client is not counted"
    );
    assert_eq!(member(&status, "draining_generations"), "[]");
    assert_eq!(member(&status, "standby"), "null");
    assert_eq!(member(&status, "restart"), "null");
    assert!(
        member(&status, "uptime_seconds")
            .parse::<f64>()
            .is_ok_and(|s| s >= 0.0)
    );
    let listening = member(&status, "listening");
    assert!(
        listening.contains(&python_json_string(&unix)),
        "the Unix path, its quote, backslash, tab and é intact: {listening}"
    );
    // The text form is unchanged.
    let text = Command::new(GRACEDEMO)
        .arg("--control-socket")
        .arg(&socket)
        .arg("--status")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("generation: 1\npid: "));

    // A slow request keeps the first generation draining across the restart.
    let slow = tokio::spawn(async move { grace_tests::http::get_h1(port, "/sleep/?duration=3s").await });
    tokio::task::block_in_place(|| server.expect_log(&format!("sleeping for 3s from pid {first}")));
    server.signal(Signal::SIGUSR2);
    let handoff = tokio::task::block_in_place(|| server.expect_log("Graceful handoff of "));
    let second = grace_tests::new_pid_in_handoff(&handoff);
    let _second = PidGuard(second);
    // The new generation answers once it serves; the first one is listed as draining.
    assert!(tokio::task::block_in_place(|| wait_until(DEADLINE, || {
        member(&status_json(&socket), "pid") == second.to_string()
    })));
    let status = tokio::task::block_in_place(|| status_json(&socket));
    assert_eq!(member(&status, "generation"), "2");
    assert_eq!(member(&status, "phase"), "\"serving\"");
    assert_eq!(member(&status, "draining_generations"), format!("[{first}]"));
    let answer = slow.await.unwrap().expect("the slow request finishes");
    assert!(answer.body.contains(&format!("pid {first}")), "{}", answer.body);
    let exited =
        tokio::task::block_in_place(|| server.wait_timeout(DEADLINE)).expect("the first generation exits");
    assert!(exited.success(), "{exited}");
}

/// A restart under way (the next binary never gets ready) shows in both forms: the text's
/// `restart:` line names the next generation's pid, as JSON's `restart` does.
#[test]
fn a_restart_under_way_shows_in_the_text_status_as_in_json() {
    let dir = TempDir::new("status-restart");
    let program = dir.path().join("gracedemo");
    std::fs::copy(GRACEDEMO, &program).unwrap();
    let socket = dir.path().join("control");
    let mut cmd = Command::new(&program);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .arg("--control-socket")
        .arg(&socket)
        .env("RUST_LOG", "info,gracenet=debug");
    let mut server = ProcessGuard::spawn(cmd);
    server.expect_log("Serving ");
    // The next process runs but never says it is ready.
    let replacement = dir.path().join("gracedemo.new");
    std::fs::write(&replacement, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&replacement, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&replacement, &program).unwrap();
    server.signal(Signal::SIGUSR2);
    let started = server.expect_log("restart: started the next generation");
    let next: u32 = grace_tests::field(&started, "pid")
        .parse()
        .expect("the next generation's pid");
    let _next = PidGuard(next);
    let status = status_json(&socket);
    assert_eq!(member(&status, "restart"), format!("{{\"pid\": {next}}}"));
    let text = Command::new(GRACEDEMO)
        .arg("--control-socket")
        .arg(&socket)
        .arg("--status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "restart: under way (the next generation is pid {next}, not ready yet)"
        )),
        "{text}"
    );
    server.signal(Signal::SIGTERM);
    assert!(server.wait_timeout(DEADLINE).is_some(), "the server stops");
}

#[test]
fn status_into_a_pipe_its_reader_closed_says_nothing_of_it() {
    let dir = TempDir::new("status-pipe");
    let socket = dir.path().join("control");
    let mut cmd = Command::new(GRACEDEMO);
    cmd.args(["-a0", "127.0.0.1:0", "-a1", "127.0.0.1:0", "-a2", "127.0.0.1:0"])
        .arg("--control-socket")
        .arg(&socket);
    let mut server = ProcessGuard::spawn(cmd);
    server.expect_log("Serving ");
    // `gracedemo --status | head -0`: the reader is gone before the answer is written.
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let out = Command::new(GRACEDEMO)
        .arg("--control-socket")
        .arg(&socket)
        .arg("--status")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run gracedemo --status");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing said of the closed pipe"
    );
    server.signal(Signal::SIGTERM);
    assert!(server.wait_timeout(DEADLINE).is_some(), "the server stops");
}
