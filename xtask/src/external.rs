//! The measurements `cargo xtask bench` makes from outside the server: the load generators
//! (`wrk`, `h2load`) and the scripts in `xtask/scripts/` that pin the server to core 0 and
//! the load to core 1, read the server's CPU from `/proc`, and alternate the baseline with
//! gracedemo. Each script's last line is `result: key=value ...`, read by `figures`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::figures::ResultLine;

/// What the measurements need on the machine, with the Debian package that brings each.
const TOOLS: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("taskset", "util-linux"),
    ("python3", "python3"),
];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the missing load generators with apt-get when running as root (the documented
/// set-up); otherwise says which command would.
pub fn ensure_tools() -> Result<(), String> {
    let missing: Vec<&str> = TOOLS.iter().filter(|(t, _)| !have(t)).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", missing.join(" "));
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "the external load generators are missing; install them with `sudo {command}` (or run `cargo xtask bench --quick`, which needs none)"
        ));
    }
    eprintln!("installing {} ({command})...", missing.join(", "));
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    // A fresh machine may have no package lists yet: update, then try once more.
    let installed = run(&install) || (run(&["update", "-qq"]) && run(&install));
    if !installed {
        return Err(format!("`{command}` failed"));
    }
    match TOOLS.iter().find(|(t, _)| !have(t)) {
        Some((tool, _)) => Err(format!("{tool} is still missing after `{command}`")),
        None => Ok(()),
    }
}

/// Runs `xtask/scripts/<script>` from the workspace root with `args`, echoing what it prints,
/// and returns its `result:` line (the records in `figures` read it).
pub fn run_script(root: &Path, script: &str, args: &[&str]) -> Result<ResultLine, String> {
    eprintln!("{script} {}...", args.join(" "));
    let out = Command::new("python3")
        .arg(root.join("xtask/scripts").join(script))
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run python3 {script}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        eprintln!("  {line}");
    }
    if !out.status.success() {
        return Err(format!("{script} failed ({})", out.status));
    }
    Ok(ResultLine::from_output(script, &text)?)
}

/// Replaces the part of `doc` between the bench's markers with `section` (adding the markers
/// at the top when there are none), keeping what people wrote around it.
pub fn splice(doc: &str, section: &str) -> String {
    const START: &str = "<!-- cargo xtask bench: start -->";
    const END: &str = "<!-- cargo xtask bench: end -->";
    let block = format!("{START}\n{section}\n{END}");
    match (doc.find(START), doc.find(END)) {
        (Some(s), Some(e)) if s < e => format!("{}{block}{}", &doc[..s], &doc[e + END.len()..]),
        _ => {
            let rest = doc.strip_prefix("# Benchmarks\n").unwrap_or(doc);
            format!("# Benchmarks\n\n{block}\n{rest}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let first = splice("# Benchmarks\n\nNotes.\n", "figures 1");
        assert!(first.contains("figures 1") && first.contains("Notes."), "{first}");
        let second = splice(&first, "figures 2");
        assert!(
            second.contains("figures 2") && !second.contains("figures 1"),
            "{second}"
        );
        assert!(second.contains("Notes."), "{second}");
        assert_eq!(second.matches("# Benchmarks").count(), 1, "{second}");
    }
}
