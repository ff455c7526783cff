//! What this process inherited, read once: the sockets (`LISTEN_*`), the readiness link to the
//! generation that started it (`GRACE_READY_FD`), its generation number (`GRACE_GENERATION`),
//! and the program a restart will run. Every inherited variable is read and removed here, in
//! one step, so the environment is touched once, as early as the application asks.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::env::take_var;
use crate::error::{EnvError, Error};
use crate::inherited::InheritedFds;
use crate::process::Executable;
use crate::readiness::{ParentLink, parse_generation};
use crate::registry::SocketRegistry;
use crate::vars::{
    GRACE_ANCESTORS, GRACE_GENERATION, GRACE_IDLE_START, GRACE_READY_FD, GRACE_RESTARTS, GRACE_STANDBY,
    GRACE_SUPERVISOR, GRACE_WORKER,
};

/// This process's start, as inherited.
#[derive(Debug)]
pub(crate) struct Startup {
    pub registry: SocketRegistry,
    pub generation: u64,
    /// Older generations' pids (`GRACE_ANCESTORS`), oldest first.
    pub ancestors: Vec<u32>,
    /// Taken by the generation when it reports ready.
    pub link: Mutex<Option<ParentLink>>,
    /// The process this one takes over from ([`ParentLink::previous`]), when there is one.
    pub previous: Option<u32>,
    /// A parent that set only `LISTEN_FDS` and is not signalled, and why: logged by the
    /// generation (logging is rarely set up when this is read).
    pub not_grace_parent: Option<crate::readiness::NotGraceParent>,
    /// Started at idle CPU priority by the generation before (`GRACE_IDLE_START`): to leave
    /// when ready.
    pub idle_start: bool,
    /// The supervisor this generation runs under (`GRACE_SUPERVISOR`, its pid), passed on to
    /// the next generation. Read, not removed: [`should_supervise`](crate::should_supervise)
    /// reads it too, and a program may ask that after gracenet has started.
    pub supervisor: Option<std::ffi::OsString>,
    /// This process is a cluster's worker (`GRACE_WORKER`, `GRACE_HEARTBEAT_MS`), passed on
    /// to its successor.
    pub worker: Option<WorkerRole>,
    /// The cluster's secrets (`GRACE_SECRET_FD`), passed on to its successor.
    #[cfg(feature = "tokio")]
    pub secrets: Option<crate::cluster::secret::Inherited>,
    /// When this process's start was read (a standby's: when it was woken): what a
    /// generation's start-up time and uptime count from.
    pub started: Instant,
    /// The signals a standby ignored while it waited, with their actions before, until the
    /// generation takes the signals over (see
    /// [`take_signals_from_standby`](Startup::take_signals_from_standby)).
    pub standby_ignored: Mutex<Option<crate::sys::IgnoredSignals>>,
}

impl Startup {
    /// The pid of the supervisor or cluster's primary this process runs under
    /// (`GRACE_SUPERVISOR`), when it names one.
    pub(crate) fn supervisor_pid(&self) -> Option<u32> {
        self.supervisor.as_ref()?.to_str()?.parse().ok()
    }

    /// The generation is about to take the signals over (install its handlers, or leave
    /// them to the program, `handles_signals` false): a standby discards the signals that
    /// waited while they were held (Linux queues a blocked signal even while it is ignored:
    /// they were meant for the processes of the service, and a stop or restart held so would
    /// act on this one as soon as it serves), and puts back the actions it ignored that no
    /// handler of gracenet's will replace (`SIGHUP`'s always; all of them for a program
    /// that handles the signals itself), unless the program set its own meanwhile.
    pub(crate) fn take_signals_from_standby(&self, handles_signals: bool) {
        let Some(ignored) = self
            .standby_ignored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        use nix::sys::signal::Signal;
        ignored.discard_pending();
        ignored.restore(Signal::SIGHUP);
        if !handles_signals {
            for signal in [Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
                ignored.restore(signal);
            }
        }
    }
}

/// How often a worker sends its heartbeat when its primary does not say.
pub(crate) const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's place in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerRole {
    /// Its slot, from 0.
    pub slot: usize,
    /// How often it tells the primary it is alive.
    pub heartbeat: std::time::Duration,
    /// The primary's load table, as the primary's fd number (`GRACE_LOAD_FD`).
    pub load_fd: Option<std::os::fd::RawFd>,
    /// A TCP listener it binds itself joins its cluster's `SO_REUSEPORT` group at once
    /// (`GRACE_REUSEPORT_JOIN=1`) instead of being bound alone first.
    pub join: bool,
}

impl WorkerRole {
    fn read(
        slot: Option<std::ffi::OsString>,
        heartbeat: Option<std::ffi::OsString>,
        load_fd: Option<std::ffi::OsString>,
        join: Option<std::ffi::OsString>,
    ) -> Result<Option<WorkerRole>, EnvError> {
        let Some(slot) = slot else { return Ok(None) };
        let malformed = |var: &'static str, value: &std::ffi::OsStr, expected: &str| EnvError::Malformed {
            var,
            value: value.to_string_lossy().chars().take(64).collect(),
            expected: expected.into(),
        };
        let slot_n = slot
            .to_string_lossy()
            .parse::<usize>()
            .ok()
            .filter(|&n| n < 100_000)
            .ok_or_else(|| malformed(GRACE_WORKER, &slot, "a worker slot number from 0 to 99999"))?;
        let heartbeat = match heartbeat {
            None => DEFAULT_HEARTBEAT,
            Some(ms) => ms
                .to_string_lossy()
                .parse::<u64>()
                .ok()
                .filter(|&n| (1..=3_600_000).contains(&n))
                .map(std::time::Duration::from_millis)
                .ok_or_else(|| {
                    malformed(
                        crate::vars::GRACE_HEARTBEAT_MS,
                        &ms,
                        "milliseconds from 1 to 3600000",
                    )
                })?,
        };
        let load_fd = match load_fd {
            None => None,
            Some(fd) => Some(
                fd.to_string_lossy()
                    .parse::<std::os::fd::RawFd>()
                    .ok()
                    .filter(|&n| n >= 0)
                    .ok_or_else(|| malformed(crate::vars::GRACE_LOAD_FD, &fd, "an fd number"))?,
            ),
        };
        let join = match join {
            None => false,
            Some(v) if v == "1" => true,
            Some(v) => {
                return Err(malformed(crate::vars::GRACE_REUSEPORT_JOIN, &v, "1, or unset"));
            }
        };
        Ok(Some(WorkerRole {
            slot: slot_n,
            heartbeat,
            load_fd,
            join,
        }))
    }
}

/// This process's registry, built from its environment on first use. The first call reads
/// and removes every inherited variable (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`,
/// `GRACE_READY_FD`, `GRACE_GENERATION`) and records the program a restart runs: make it
/// before any thread exists (see the crate docs).
///
/// # Errors
/// [`Error::Env`] (every time) when the inherited environment was malformed.
pub fn registry() -> Result<&'static SocketRegistry, Error> {
    startup().map(|s| &s.registry)
}

static STARTUP: OnceLock<Result<Startup, EnvError>> = OnceLock::new();

/// Reads (the first time) and returns this process's start.
///
/// # Errors
/// [`Error::Env`] (every time) when the inherited environment was malformed.
pub(crate) fn startup() -> Result<&'static Startup, Error> {
    STARTUP
        .get_or_init(read)
        .as_ref()
        .map_err(|e| Error::Env(e.clone()))
}

fn read() -> Result<Startup, EnvError> {
    crate::log::debug!(platform = crate::sys::PLATFORM, "platform support");
    if crate::sys::single_threaded() {
        crate::log::debug!(
            "reading the inherited environment with one thread running: removing its variables"
        );
    } else {
        crate::log::debug!(
            "reading the inherited environment with other threads running: leaving its variables in place (call gracenet::registry() before starting threads to remove them)"
        );
    }
    Executable::capture();
    crate::sys::reserve_fd_table();
    // Every variable is taken out of the environment before any is judged, so a malformed
    // one does not leave the others for a subprocess to find.
    let ready_fd = take_var(GRACE_READY_FD);
    let generation = take_var(GRACE_GENERATION);
    let idle_start = take_var(GRACE_IDLE_START).is_some_and(|v| v == "1");
    let standby = take_var(GRACE_STANDBY).is_some_and(|v| v == "1");
    let restarts = take_var(GRACE_RESTARTS);
    // Ours, and only informative (status): a malformed entry is skipped, never fatal.
    let ancestors = take_var(GRACE_ANCESTORS)
        .map(|v| {
            v.to_string_lossy()
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let supervisor = std::env::var_os(GRACE_SUPERVISOR);
    let worker = take_var(GRACE_WORKER);
    let heartbeat = take_var(crate::vars::GRACE_HEARTBEAT_MS);
    let load_fd = take_var(crate::vars::GRACE_LOAD_FD);
    let join = take_var(crate::vars::GRACE_REUSEPORT_JOIN);
    let secrets = take_var(crate::vars::GRACE_SECRET_FD);
    let inherited = InheritedFds::take_from_env()?;
    if let Some(pid) = inherited.meant_for {
        // A copy of a generation's variables, left in the environment of a process it
        // started (see take_var): they are that pid's, not ours.
        if ready_fd.is_some() || generation.is_some() {
            crate::log::debug!(
                meant_for = pid,
                "ignoring GRACE_READY_FD and GRACE_GENERATION meant for another process"
            );
        }
        #[cfg(feature = "tokio")]
        crate::cluster::secret::stop_at_this_process(secrets);
        return Ok(Startup {
            registry: SocketRegistry::new(inherited),
            generation: 1,
            ancestors: Vec::new(),
            link: Mutex::new(Some(ParentLink::Nobody)),
            previous: None,
            not_grace_parent: None,
            idle_start: false,
            supervisor: None,
            worker: None,
            #[cfg(feature = "tokio")]
            secrets: None,
            started: Instant::now(),
            standby_ignored: Mutex::new(None),
        });
    }
    let generation = parse_generation(generation)?;
    let worker = WorkerRole::read(worker, heartbeat, load_fd, join)?;
    // Only a cluster's worker has them, and clusters need tokio; without it, the variable is
    // dropped like the other cluster variables.
    #[cfg(feature = "tokio")]
    let secrets = crate::cluster::secret::inherit(secrets)?;
    #[cfg(not(feature = "tokio"))]
    drop(secrets);
    let (link, not_grace_parent) = ParentLink::new(ready_fd, inherited.origin(), &inherited.socket_inodes())?;
    let previous = link.previous();
    if idle_start && !standby {
        // The parent set our first thread's policy once we had exec'd; threads started before
        // that (a runtime built ahead of this call) are caught here, unless the parent has
        // returned the first one to normal priority already (its idle limit passed before
        // this start got here). Not in a standby: woken early, it may already be back at
        // normal priority, which is where it must stay.
        crate::sys::follow_first_thread_to_idle_priority();
    }
    let mut standby_ignored = None;
    if standby {
        // A restart or stop signal that reaches the standby was meant for the processes of the
        // service, sent to every one (`kill $(pgrep app)`, `systemctl kill`, a stop under
        // `KillMode=control-group`): the generation that started it acts on its own copy, and
        // stops or kills the standby itself. Ignored until the generation takes the signals
        // over (those held meanwhile discarded then), they neither end the standby nor make
        // it restart or stop again as soon as it serves.
        use nix::sys::signal::Signal;
        standby_ignored = Some(crate::sys::ignore_signals(&[
            Signal::SIGUSR2,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ]));
        // Started ahead of a restart: everything so far (exec, the loader, main's first steps)
        // is done; the rest waits for the restart itself.
        if !link.wait_for_restart() {
            crate::log::debug!("the generation that started this standby let it go: exiting");
            std::process::exit(0);
        }
    }
    crate::metrics::inherit(restarts.as_deref());
    Ok(Startup {
        registry: SocketRegistry::new(inherited),
        generation,
        ancestors,
        link: Mutex::new(Some(link)),
        previous,
        not_grace_parent,
        idle_start,
        supervisor,
        worker,
        #[cfg(feature = "tokio")]
        secrets,
        started: Instant::now(),
        standby_ignored: Mutex::new(standby_ignored),
    })
}
