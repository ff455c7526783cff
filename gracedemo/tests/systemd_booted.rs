//! gracedemo under a real systemd (this machine's systemd, booted as pid 1 of new namespaces:
//! `grace_tests::systemd`), with the units in `examples/systemd/` exactly as shipped:
//! socket activation, reloads under load, a stop after reloads that drains, a reload that
//! fails and says so, `systemctl restart` and `kill -9` under load with nothing refused; and
//! with `--standby` added by a drop-in, reloads that wake it and a stop that leaves nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use grace_tests::systemd::{BootedSystemd, NsLoad, http_get};
use grace_tests::wait_until;

const PORT: u16 = 48567;
const CONTROL: &str = "/run/gracedemo/control";

/// Boots systemd with gracedemo installed and its units (as shipped) enabled, and activates
/// the service with a first request. Returns systemd and the first generation's pid (as the
/// container sees it).
fn boot_with_gracedemo(tag: &str) -> (BootedSystemd, u32) {
    boot_with_gracedemo_and(tag, &[])
}

/// [`boot_with_gracedemo`], with `extra` flags added to the service's command line (by a
/// drop-in, as an administrator would).
fn boot_with_gracedemo_and(tag: &str, extra: &[&str]) -> (BootedSystemd, u32) {
    boot_with_gracedemo_and_socket(tag, extra, "")
}

/// [`boot_with_gracedemo_and`], with `socket_lines` added to the socket unit's `[Socket]`
/// section by a drop-in.
fn boot_with_gracedemo_and_socket(tag: &str, extra: &[&str], socket_lines: &str) -> (BootedSystemd, u32) {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    let shipped = std::fs::read_to_string(units.join("gracedemo.service")).expect("the shipped unit");
    let exec = shipped
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart in the shipped unit");
    let exec = (!extra.is_empty()).then(|| format!("{exec} {}", extra.join(" ")));
    boot_with_gracedemo_as(tag, exec.as_deref(), socket_lines)
}

/// [`boot_with_gracedemo_and_socket`], with the service's `ExecStart=` line replaced by
/// `exec` (by a drop-in) when given.
fn boot_with_gracedemo_as(tag: &str, exec: Option<&str>, socket_lines: &str) -> (BootedSystemd, u32) {
    let systemd = BootedSystemd::boot(tag);
    systemd.install(
        Path::new(env!("CARGO_BIN_EXE_gracedemo")),
        "/usr/local/bin/gracedemo",
        0o755,
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    for unit in ["gracedemo.socket", "gracedemo.service"] {
        systemd.install(&units.join(unit), &format!("/etc/systemd/system/{unit}"), 0o644);
    }
    if let Some(exec) = exec {
        systemd.write(
            "/etc/systemd/system/gracedemo.service.d/extra.conf",
            &format!("[Service]\nExecStart=\n{exec}\n"),
        );
    }
    if !socket_lines.is_empty() {
        systemd.write(
            "/etc/systemd/system/gracedemo.socket.d/extra.conf",
            &format!("[Socket]\n{socket_lines}\n"),
        );
    }
    let out = systemd.text(&["systemctl", "daemon-reload"]);
    assert!(!out.contains("[stderr]"), "daemon-reload: {out}");
    let out = systemd.run(&["systemctl", "start", "gracedemo.socket"]);
    assert!(out.status.success(), "start the socket: {out:?}");
    // The first connection starts the service (socket activation).
    let body = systemd
        .get(PORT, "/sleep/?duration=0s")
        .unwrap_or_else(|e| panic!("the activated service answers: {e}\n{}", systemd.journal(None)));
    let gen1 = pid_in(&body);
    // Ready once every process it starts is (a cluster's workers all): a request can be
    // answered a moment before.
    assert!(
        wait_until(grace_tests::DEADLINE, || systemd
            .property("gracedemo.service", "ActiveState")
            == "active"),
        "the service becomes active: {}",
        systemd.property("gracedemo.service", "ActiveState")
    );
    (systemd, gen1)
}

fn pid_in(body: &str) -> u32 {
    grace_tests::load::pid_of(body).unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// Whether `pid` (in the container's pid namespace) is a running process there.
fn running_inside(systemd: &BootedSystemd, pid: u32) -> bool {
    let state = systemd.text(&["sh", "-c", &format!("cat /proc/{pid}/stat 2>/dev/null")]);
    state
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|s| s != 'Z')
}

/// The pid answering now.
fn serving(systemd: &BootedSystemd) -> u32 {
    pid_in(&systemd.get(PORT, "/sleep/?duration=0s").expect("an answer"))
}

/// `systemctl reload`, which must succeed (`what` names it in the failure, with the journal).
fn reload_ok(systemd: &BootedSystemd, what: &str) {
    let out = systemd.run(&["systemctl", "reload", "gracedemo.service"]);
    assert!(
        out.status.success(),
        "{what}: {out:?}\n{}",
        systemd.journal(Some("gracedemo.service"))
    );
}

/// `systemctl reload` to generation `n`, checked: it succeeds once the new generation serves
/// (a new pid answers, named in the status), MainPID stays `main_pid`, and `previous` drains
/// and goes. Returns the pid answering now.
fn reload(systemd: &BootedSystemd, n: u32, main_pid: &str, previous: u32) -> u32 {
    reload_ok(systemd, &format!("reload {n}"));
    // The reload returned once the new generation served.
    let now = serving(systemd);
    assert_ne!(now, previous, "reload {n}: a new process answers");
    assert_eq!(
        systemd.property("gracedemo.service", "MainPID"),
        main_pid,
        "MainPID stays"
    );
    let status = systemd.property("gracedemo.service", "StatusText");
    assert!(status.contains(&format!("Generation {n} serving")), "{status}");
    assert!(
        wait_until(grace_tests::DEADLINE, || !running_inside(systemd, previous)),
        "the old generation {previous} drains and goes"
    );
    now
}

#[test]
fn reloads_under_load_then_a_stop_drains_the_request_in_flight() {
    let (systemd, gen1) = boot_with_gracedemo("reload-stop");
    let main_pid = systemd.property("gracedemo.service", "MainPID");
    assert_ne!(main_pid, gen1.to_string(), "the main process is the supervisor");

    let load = NsLoad::start(&systemd, PORT, "/sleep/?duration=0s", 4);
    let mut previous = gen1;
    for n in 2..=6 {
        previous = reload(&systemd, n, &main_pid, previous);
    }
    let stats = load.stop();
    assert!(stats.failures.is_empty(), "failed: {:?}", stats.failures);
    assert!(
        stats.by_pid.len() >= 5,
        "answers from every generation: {:?}",
        stats.by_pid
    );
    eprintln!("5 reloads under load: {} requests, 0 failed", stats.ok);

    // A 5 s request in flight, then a stop: answered, and the stop waits for it.
    let slow = systemd.in_netns(|| http_get(PORT, "/sleep/?duration=5s", Duration::from_secs(30)));
    assert!(
        wait_until(grace_tests::DEADLINE, || {
            systemd
                .text(&[
                    "/usr/local/bin/gracedemo",
                    "--control-socket",
                    CONTROL,
                    "--status",
                ])
                .contains("connections: 1")
        }),
        "the slow request is in flight"
    );
    let started = Instant::now();
    let out = systemd.run(&["systemctl", "stop", "gracedemo.service"]);
    let took = started.elapsed();
    assert!(out.status.success(), "stop: {out:?}");
    let answer = slow.join().expect("client thread");
    assert!(answer.is_ok(), "the request in flight was answered: {answer:?}");
    assert!(took >= Duration::from_secs(3), "the stop drained ({took:?})");
    assert_eq!(systemd.property("gracedemo.service", "Result"), "success");
    let journal = systemd.journal(Some("gracedemo.service"));
    assert!(!journal.contains("SIGKILL"), "no SIGKILL:\n{journal}");
    assert!(!journal.contains("not our child"), "{journal}");
}

/// Without the supervisor (the shipped unit with `--supervise` taken out: `Type=notify`,
/// `NotifyAccess=main`): each generation that hands over tells systemd, from the main pid
/// systemd listens to, that the new one is the main process and ready. Before, the new
/// process's own `MAINPID=` was discarded (not from the main pid), the reload waited for a
/// `READY=1` systemd never took, and the service's main process was the one that exited.
#[test]
fn without_the_supervisor_each_reload_makes_the_new_generation_systemds_main_process() {
    let (systemd, gen1) = boot_with_gracedemo_as(
        "no-supervisor",
        Some("ExecStart=/usr/local/bin/gracedemo --control-socket /run/gracedemo/control"),
        "",
    );
    assert_eq!(
        systemd.property("gracedemo.service", "MainPID"),
        gen1.to_string(),
        "generation 1 is the main process"
    );
    let mut previous = gen1;
    for n in 2..=3 {
        // `systemctl reload` waits for the reload to end (the control client's answer, and
        // systemd's RELOADING=1 ended by a READY=1 it accepts).
        reload_ok(&systemd, &format!("reload {n}"));
        let now = serving(&systemd);
        assert_ne!(now, previous, "reload {n}: a new process answers");
        assert!(
            wait_until(grace_tests::DEADLINE, || systemd
                .property("gracedemo.service", "MainPID")
                == now.to_string()),
            "reload {n}: MainPID is {} and not the new generation {now}\n{}",
            systemd.property("gracedemo.service", "MainPID"),
            systemd.journal(Some("gracedemo.service"))
        );
        assert!(
            wait_until(grace_tests::DEADLINE, || !running_inside(&systemd, previous)),
            "reload {n}: the old generation {previous} drains and goes"
        );
        assert_eq!(systemd.property("gracedemo.service", "ActiveState"), "active");
        assert_eq!(systemd.property("gracedemo.service", "SubState"), "running");
        // The handed-over generation, not a fresh service socket activation started after
        // systemd ended the old one.
        let status = systemd.property("gracedemo.service", "StatusText");
        assert!(
            status.contains(&format!("Generation {n} serving")),
            "reload {n}: {status}\n{}",
            systemd.journal(Some("gracedemo.service"))
        );
        previous = now;
    }
    let journal = systemd.journal(Some("gracedemo.service"));
    assert!(
        !journal.contains("refusing"),
        "systemd refused a notification:\n{journal}"
    );
    assert!(
        !journal.contains("SIGKILL") && !journal.contains("Deactivated"),
        "the service went on through the reloads:\n{journal}"
    );
    // A stop ends it, leaving no process. systemd 252 does not wait for a main process that
    // is not its child (the supervisor's reason to be): it may record the stop as
    // `Result=signal`, having killed what was left; nothing was in flight here.
    let out = systemd.run(&["systemctl", "stop", "gracedemo.service"]);
    assert!(out.status.success(), "stop: {out:?}");
    assert_no_process_left(&systemd);
}

/// Replaces /usr/local/bin/gracedemo (keeping the good one as gracedemo.good) with a script.
fn deploy_script(systemd: &BootedSystemd, script: &str) {
    systemd.write("/usr/local/bin/gracedemo.new", script);
    let out = systemd.run(&[
        "sh",
        "-c",
        "chmod 755 /usr/local/bin/gracedemo.new && { [ -e /usr/local/bin/gracedemo.good ] || cp /usr/local/bin/gracedemo /usr/local/bin/gracedemo.good; } && mv /usr/local/bin/gracedemo.new /usr/local/bin/gracedemo",
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_reload_whose_new_binary_fails_fails_and_the_old_process_keeps_serving() {
    let (systemd, gen1) = boot_with_gracedemo("reload-fails");
    // A broken build whose server cannot start (its --reload client still works, as in a
    // real binary that fails on its configuration): the restart fails, and says why.
    deploy_script(
        &systemd,
        "#!/bin/sh\ncase \"$*\" in *--reload*) exec /usr/local/bin/gracedemo.good \"$@\";; esac\necho 'cannot start: broken build' >&2\nexit 1\n",
    );
    let out = systemd.run(&["systemctl", "reload", "gracedemo.service"]);
    assert!(!out.status.success(), "systemctl reload fails: {out:?}");
    assert_eq!(serving(&systemd), gen1, "the old process still serves");
    assert_eq!(systemd.property("gracedemo.service", "ActiveState"), "active");
    let status = systemd.property("gracedemo.service", "StatusText");
    assert!(
        status.contains("Restart failed") && status.contains("exited before it was ready"),
        "systemctl status says why: {status}"
    );
    let journal = systemd.journal(Some("gracedemo.service"));
    assert!(
        journal.contains("restart failed: this generation keeps serving") && journal.contains(" next=2 "),
        "the reload's own output says why:\n{journal}"
    );

    // A binary that is nothing but `exit 1`: the reload fails too, and nothing is lost.
    deploy_script(&systemd, "#!/bin/sh\nexit 1\n");
    let out = systemd.run(&["systemctl", "reload", "gracedemo.service"]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(serving(&systemd), gen1);

    // With the good binary back, a reload works again.
    let out = systemd.run(&["mv", "/usr/local/bin/gracedemo.good", "/usr/local/bin/gracedemo"]);
    assert!(out.status.success(), "{out:?}");
    let out = systemd.run(&["systemctl", "reload", "gracedemo.service"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(serving(&systemd), gen1);
    assert_eq!(systemd.property("gracedemo.service", "ActiveState"), "active");
}

#[test]
fn systemctl_restart_under_load_refuses_no_connection() {
    let (systemd, _gen1) = boot_with_gracedemo("restart");
    let load = NsLoad::start(&systemd, PORT, "/sleep/?duration=0s", 4);
    for _ in 0..2 {
        let out = systemd.run(&["systemctl", "restart", "gracedemo.service"]);
        assert!(out.status.success(), "restart: {out:?}");
        assert!(serving(&systemd) > 0);
    }
    let stats = load.stop();
    let refused: Vec<_> = stats
        .failures
        .iter()
        .filter(|f| f.starts_with("refused"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(stats.failures.is_empty(), "failed: {:?}", stats.failures);
    assert!(
        stats.by_pid.len() >= 3,
        "three services answered: {:?}",
        stats.by_pid
    );
    assert_eq!(
        systemd.property("gracedemo.service", "NRestarts"),
        "0",
        "no failure restarts"
    );
}

#[test]
fn kill_9_of_the_serving_process_under_load_refuses_no_connection() {
    let (systemd, gen1) = boot_with_gracedemo("kill9");
    let main_pid = systemd.property("gracedemo.service", "MainPID");
    let load = NsLoad::start(&systemd, PORT, "/sleep/?duration=0s", 4);
    let mut victim = gen1;
    for _ in 0..3 {
        let out = systemd.run(&["kill", "-9", &victim.to_string()]);
        assert!(out.status.success(), "{out:?}");
        let mut now = victim;
        assert!(
            wait_until(grace_tests::DEADLINE, || {
                now = systemd
                    .get(PORT, "/sleep/?duration=0s")
                    .map(|b| pid_in(&b))
                    .unwrap_or(victim);
                now != victim
            }),
            "a new generation serves after the crash"
        );
        assert_eq!(
            systemd.property("gracedemo.service", "MainPID"),
            main_pid,
            "the supervisor stays"
        );
        victim = now;
    }
    let stats = load.stop();
    let refused: Vec<_> = stats
        .failures
        .iter()
        .filter(|f| f.starts_with("refused"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Only requests in flight on a killed process may fail: at most one per client per kill.
    assert!(stats.failures.len() <= 12, "failed: {:?}", stats.failures);
    eprintln!(
        "3 kill -9 under load: {} answered, {} failed ({:?}), 0 refused",
        stats.ok,
        stats.failures.len(),
        stats.failures
    );
    assert_eq!(systemd.property("gracedemo.service", "ActiveState"), "active");
}

/// The standby's pid, as `gracedemo --status` names it, once it does.
fn standby_pid(systemd: &BootedSystemd) -> Option<u32> {
    systemd
        .text(&[
            "/usr/local/bin/gracedemo",
            "--control-socket",
            CONTROL,
            "--status",
        ])
        .lines()
        .find_map(|l| l.strip_prefix("standby: pid ")?.trim().parse().ok())
}

#[test]
fn with_the_standby_reloads_wake_it_and_a_stop_leaves_no_process_behind() {
    let (systemd, gen1) = boot_with_gracedemo_and("standby", &["--standby"]);
    let main_pid = systemd.property("gracedemo.service", "MainPID");
    let load = NsLoad::start(&systemd, PORT, "/sleep/?duration=0s", 4);
    let mut previous = gen1;
    for n in 2..=4 {
        let mut standby = None;
        assert!(
            wait_until(grace_tests::DEADLINE, || {
                standby = standby_pid(&systemd);
                standby.is_some()
            }),
            "generation {} names its standby",
            n - 1
        );
        previous = reload(&systemd, n, &main_pid, previous);
        assert_eq!(Some(previous), standby, "reload {n}: the standby took over");
    }
    let stats = load.stop();
    assert!(stats.failures.is_empty(), "failed: {:?}", stats.failures);
    assert!(
        wait_until(grace_tests::DEADLINE, || standby_pid(&systemd).is_some()),
        "the last generation keeps a standby"
    );

    let journal = stop_leaves_nothing(&systemd);
    assert!(!journal.contains("SIGKILL"), "no SIGKILL:\n{journal}");
}

/// `systemctl stop`: it succeeds, no gracedemo process is left; returns the service's
/// journal.
fn stop_leaves_nothing(systemd: &BootedSystemd) -> String {
    let out = systemd.run(&["systemctl", "stop", "gracedemo.service"]);
    assert!(out.status.success(), "stop: {out:?}");
    assert_eq!(systemd.property("gracedemo.service", "Result"), "success");
    assert_no_process_left(systemd);
    systemd.journal(Some("gracedemo.service"))
}

/// No gracedemo process is left in the container.
fn assert_no_process_left(systemd: &BootedSystemd) {
    let left = systemd.text(&[
        "sh",
        "-c",
        "grep -lx gracedemo /proc/[0-9]*/comm 2>/dev/null | wc -l",
    ]);
    assert_eq!(left.trim(), "0", "processes left after the stop: {left}");
}

/// The workers' pids, as `gracedemo --status` lists them (slot order).
fn worker_pids(systemd: &BootedSystemd) -> Vec<u32> {
    systemd
        .text(&[
            "/usr/local/bin/gracedemo",
            "--control-socket",
            CONTROL,
            "--status",
        ])
        .lines()
        .filter(|l| l.starts_with("worker ") && l.contains(", serving,"))
        .filter_map(|l| l.split_once(": pid ")?.1.split(',').next()?.parse().ok())
        .collect()
}

#[test]
fn a_cluster_reloads_one_worker_at_a_time_survives_a_kill_and_stops_clean() {
    let (systemd, first) = boot_with_gracedemo_and("cluster", &["--workers", "2"]);
    let main_pid = systemd.property("gracedemo.service", "MainPID");
    assert_ne!(main_pid, first.to_string(), "the main process is the primary");
    let mut workers = Vec::new();
    assert!(
        wait_until(grace_tests::DEADLINE, || {
            workers = worker_pids(&systemd);
            workers.len() == 2
        }),
        "two workers serve: {workers:?}"
    );
    let load = NsLoad::start(&systemd, PORT, "/sleep/?duration=0s", 4);
    // A reload is a rolling restart: it returns once both workers are new.
    reload_ok(&systemd, "reload");
    let after = worker_pids(&systemd);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|p| !workers.contains(p)),
        "{workers:?} -> {after:?}"
    );
    assert_eq!(
        systemd.property("gracedemo.service", "MainPID"),
        main_pid,
        "MainPID stays"
    );
    // kill -9 of one worker under load: replaced, nothing refused.
    let out = systemd.run(&["kill", "-9", &after[0].to_string()]);
    assert!(out.status.success(), "{out:?}");
    let mut now = Vec::new();
    assert!(
        wait_until(grace_tests::DEADLINE, || {
            now = worker_pids(&systemd);
            now.len() == 2 && !now.contains(&after[0])
        }),
        "the killed worker is replaced: {now:?}"
    );
    let stats = load.stop();
    let refused: Vec<_> = stats
        .failures
        .iter()
        .filter(|f| f.starts_with("refused"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(
        stats.failures.len() <= 4,
        "more failed than one worker had in flight: {:?}",
        stats.failures
    );
    assert!(
        stats.by_pid.len() >= 4,
        "workers of both rounds answered: {:?}",
        stats.by_pid
    );

    // A broken deploy: the rollout stops at the first worker, the reload fails and says why.
    deploy_script(
        &systemd,
        "#!/bin/sh\ncase \"$*\" in *--reload*|*--status*) exec /usr/local/bin/gracedemo.good \"$@\";; esac\necho 'cannot start: broken build' >&2\nexit 1\n",
    );
    let out = systemd.run(&["systemctl", "reload", "gracedemo.service"]);
    assert!(!out.status.success(), "systemctl reload fails: {out:?}");
    assert_eq!(worker_pids(&systemd), now, "both workers still serve");
    assert_eq!(systemd.property("gracedemo.service", "ActiveState"), "active");
    let status = systemd.property("gracedemo.service", "StatusText");
    assert!(
        status.contains("failed") && status.contains("worker 0"),
        "systemctl status says why: {status}"
    );

    let journal = stop_leaves_nothing(&systemd);
    // (The worker killed above is logged "killed by SIGKILL"; systemd killed nothing.)
    let systemd_killed = journal
        .lines()
        .any(|l| l.contains("systemd[1]") && l.contains("SIGKILL"));
    assert!(!systemd_killed, "no SIGKILL from systemd:\n{journal}");
}

#[test]
fn a_cluster_on_reuseport_sockets_from_systemd_leaves_no_listener_unserved() {
    // systemd's sockets with ReusePort=yes: the workers' listeners join their groups; the
    // activated listener itself must be one of them, served, or a share of the connections
    // would wait in a queue nobody accepts from.
    let (systemd, _first) =
        boot_with_gracedemo_and_socket("cluster-reuseport", &["--workers", "3"], "ReusePort=yes");
    assert!(
        wait_until(grace_tests::DEADLINE, || worker_pids(&systemd).len() == 3),
        "three workers serve"
    );
    let mut answered = std::collections::BTreeSet::new();
    for n in 0..40 {
        let body = systemd
            .get_within(PORT, "/sleep/?duration=0s", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("request {n} not answered within 3 s: {e}"));
        answered.insert(pid_in(&body));
    }
    assert_eq!(answered.len(), 3, "every worker answers: {answered:?}");
}
