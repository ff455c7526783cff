//! [`Generation::ready`]: the moment a generation starts serving, and everything that goes
//! with it (the PID file, the CPU priority, the phase, systemd and the supervisor, the parent).

use super::generation::Generation;
use super::signals::Request;
use super::{Phase, messages, sd_notify};
use crate::error::Error;

impl Generation {
    /// Reports that this generation is serving (its accept loops are running): the parent
    /// generation, if any, stops accepting and drains. Calling it again does nothing.
    ///
    /// Call it once every accept loop has been polled, not merely spawned: the parent stops
    /// accepting when it hears, and until a loop of this process polls its listener,
    /// connections wait in the queue. (On a busy machine a spawned task can wait milliseconds
    /// for a worker thread; gracehttp waits for each accept loop's first poll.)
    ///
    /// Everything that can fail comes first: when the PID file cannot be written, the parent
    /// is **not** told, this returns the error, and the parent (if any) keeps serving once
    /// this process exits.
    ///
    /// A generation stopped before it is ready (`SIGTERM` while it starts) reports nothing:
    /// it does not serve, so it neither writes the PID file nor tells its parent, systemd or
    /// a supervisor.
    ///
    /// # Errors
    /// [`Error::Io`] when the PID file cannot be written.
    pub fn ready(&self) -> Result<(), Error> {
        let link = self.take_link();
        let Some(link) = link else { return Ok(()) };
        if matches!(*self.shared.phase.borrow(), Phase::Draining { .. }) {
            // Stopped before it was ready (a supervisor stops a stray generation so): it will
            // not serve, so it must not claim the PID file or the main pid. The link is
            // dropped: a parent that waits sees it close and keeps serving.
            crate::log::info!(
                generation = self.shared.number,
                "stopped before it was ready: not reporting ready"
            );
            return Ok(());
        }
        let mut replaced_pid_file = None;
        if let Some(path) = self.shared.settings.pid_file.as_deref() {
            // The link is dropped unused on failure: a parent sees its pipe close and rolls
            // back.
            replaced_pid_file = crate::pidfile::write(path)?;
        }
        if self.shared.startup.idle_start {
            // Serving from now on: at normal priority before the parent stops accepting.
            leave_idle_start();
        }
        let now_serving = self.shared.phase.send_if_modified(|p| {
            let starting = *p == Phase::Starting;
            if starting {
                *p = Phase::Serving;
            }
            starting
        });
        if now_serving && let Some((table, slot)) = crate::cluster::balance::worker_table() {
            // A cluster worker's entry in the load table is stamped before the primary hears
            // it serves (the runtime stamps it from then on): a worker that stops at once is
            // seen silent too, not taken for one that has not stamped yet.
            let open = self.shared.connections.receiver_count() as u64;
            let accepted = self.shared.accepted.load(std::sync::atomic::Ordering::Relaxed);
            table.report(*slot, open, Some(accepted), crate::cluster::balance::now_us());
        }
        let addrs: Vec<String> = self.registry().addrs().iter().map(ToString::to_string).collect();
        let pid = std::process::id();
        // MAINPID first, and before the parent hears: systemd (or the supervisor) must know
        // the new main process before the old one exits.
        let lines = sd_notify::serving(self.shared.number, pid, &addrs.join(", "));
        self.tell_serving(lines);
        // Started by a generation's restart (not a first start, systemd or a supervisor).
        let restarted = !matches!(link, crate::readiness::ParentLink::Nobody);
        if let Some(channel) = link.notify() {
            self.read_parent_channel(channel);
        }
        if let Some(file) = replaced_pid_file {
            // Its blocks are freed when it closes, which can wait for the disk (see
            // pidfile::write): on a thread of its own, not this one, which serves. (Were the
            // thread not to start, the closure, file and all, is dropped here.)
            let _ = std::thread::Builder::new()
                .name("gracenet-pidfile".into())
                .spawn(move || drop(file));
        }
        // The machine goes from starting to serving: restarts asked for meanwhile run now, and
        // a standby is started (by the driver: off this path, the parent is waiting to stop
        // accepting).
        crate::metrics::ready(self.shared.startup.started.elapsed(), restarted);
        let _ = self.shared.requests.send(Request::Ready);
        let (generation, addrs) = (self.shared.number, addrs.join(", "));
        if self.shared.settings.announce {
            crate::log::info!(generation, pid, %addrs, "{}", messages::SERVING);
        } else {
            crate::log::debug!(generation, pid, %addrs, "{}", messages::SERVING);
        }
        let unclaimed = self.registry().unclaimed();
        if !unclaimed.is_empty() {
            let list: Vec<String> = unclaimed.iter().map(ToString::to_string).collect();
            crate::log::warn!(
                addrs = %list.join(", "),
                "inherited sockets nobody serves: connections to them wait unanswered (kept to pass on at the next restart); does the program ask for the addresses it was given?"
            );
        }
        Ok(())
    }

    /// Tells systemd this generation serves; under a supervisor, with a copy of the sockets
    /// (it keeps them to start a generation at once after a crash).
    fn tell_serving(&self, mut lines: Vec<String>) {
        if let Some(worker) = self.shared.startup.worker {
            lines.push(format!("{}={}", crate::supervisor::protocol::WORKER, worker.slot));
            lines.extend(crate::cluster::transfer::ready_line());
        }
        match &self.shared.notifier {
            Some(notifier) if self.shared.startup.supervisor.is_some() => {
                // The files this generation keeps, for the supervisor to remove if no
                // generation is left to (a path with a line break cannot be said: left out).
                let settings = &self.shared.settings;
                for (key, path) in [
                    (crate::supervisor::protocol::PID_FILE, &settings.pid_file),
                    (crate::supervisor::protocol::CONTROL, &settings.control_socket),
                ] {
                    if let Some(path) = path.as_ref().and_then(|p| std::path::absolute(p).ok())
                        && let Some(text) = path.to_str().filter(|t| !t.contains(['\n', '\r']))
                    {
                        lines.push(format!("{key}={text}"));
                    }
                }
                // The supervisor keeps a copy of the sockets, to restart after a crash.
                match self.registry().handoff() {
                    Ok(handoff) => {
                        crate::supervisor::protocol::send_ready(notifier, lines, self.shared.number, handoff)
                    }
                    Err(e) => {
                        crate::log::warn!(error = %e, "cannot copy the sockets for the supervisor");
                        notifier.send(&lines);
                    }
                }
            }
            _ => self.shared.notify(&lines),
        }
    }
}

/// Returns this process from the idle CPU priority the generation before started it at.
fn leave_idle_start() {
    match crate::sys::leave_idle_priority(None) {
        Ok(threads) => crate::log::debug!(threads, "left the idle CPU priority this generation started at"),
        Err(e) => crate::log::error!(
            error = %e,
            "cannot leave the idle CPU priority this generation started at: it serves at idle \
             priority; give it CAP_SYS_NICE or an RLIMIT_NICE of 20 (systemd: LimitNICE=20), or \
             start generations at normal priority (GenerationBuilder::idle_start(false))"
        ),
    }
}
