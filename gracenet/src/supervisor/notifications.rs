//! What the supervisor hears from its generations (their sd_notify messages on its private
//! socket): who serves now, which processes are strays to stop, the sockets to keep, and what
//! to pass on to systemd.

use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;
use nix::sys::socket::MsgFlags;

use super::protocol::{self, Message};
use super::{Serving, Stray, Supervisor, forward, signal_pid};

impl Supervisor {
    pub(super) fn read_notifications(&mut self) {
        for (pid, suppressed) in self.flood.take_reports(std::time::Instant::now()) {
            crate::log::warn!(
                supervisor = self.me,
                sender = pid,
                suppressed,
                limit_per_s = super::flood::PER_SENDER,
                "a process floods the notify socket: messages beyond the limit were not handled"
            );
        }
        let mut buf = vec![0u8; 4096];
        // Bounded per turn: signals and exits are looked at between turns.
        for _ in 0..1024 {
            let received = match crate::sys::recv_with_fds(&self.socket, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::log::warn!(supervisor = self.me, error = %e, "the notify socket failed");
                    return;
                }
            };
            // A sender past its share (a flood) costs nothing more: no /proc look, no
            // handling, no log line but one report a second.
            if let Some(sender) = received.sender.filter(|&p| p > 0)
                && !self.flood.admit(sender as u32, std::time::Instant::now())
            {
                continue;
            }
            let message = Message::parse(&buf[..received.len]);
            // Only the server's own processes: every generation descends from this one (it is
            // the subreaper, so even an orphaned one does).
            let ours = received
                .sender
                .is_some_and(|p| p > 0 && crate::sys::is_descendant(p as u32, self.me));
            if !ours {
                // One line per 10 s at most, with the count since the last.
                self.foreign.0 += 1;
                if std::time::Instant::now() >= self.foreign.1 {
                    crate::log::warn!(
                        supervisor = self.me,
                        sender = ?received.sender,
                        ignored = self.foreign.0,
                        "ignoring notifications from outside the server's processes"
                    );
                    self.foreign = (0, std::time::Instant::now() + std::time::Duration::from_secs(10));
                }
                continue;
            }
            if received.truncated {
                crate::log::warn!(
                    supervisor = self.me,
                    sender = ?received.sender,
                    limit = crate::sys::MAX_FDS_PER_MESSAGE,
                    "a notification's sockets did not fit: not kept"
                );
            }
            self.on_message(&message, received.sender, received.fds);
        }
    }

    pub(super) fn on_message(&mut self, message: &Message, sender: Option<i32>, fds: Vec<OwnedFd>) {
        let number = message.value(protocol::GENERATION).and_then(|n| n.parse().ok());
        let from_stray = |strays: &[u32], pid: u32| strays.contains(&pid);
        if sender.is_some_and(|p| from_stray(&self.strays, p as u32)) {
            crate::log::debug!(supervisor = self.me, sender = ?sender, "ignoring a stopped stray's notification");
            return;
        }
        if let Some(pid) = message.value("MAINPID").and_then(|p| p.parse::<u32>().ok())
            && (from_stray(&self.strays, pid) || !self.new_main_pid(pid, number))
        {
            // Not the server's main process: systemd must not hear of it.
            return;
        }
        if let Some(sender) = sender {
            self.files.learn(message, sender as u32);
        }
        let is_serving = |s: &Serving| sender.is_some_and(|p| p as u32 == s.pid);
        if let Some(serving) = self.serving.as_mut().filter(|s| is_serving(s)) {
            if message.flag("READY") && !serving.ready {
                serving.ready = true;
                if self.held_restart && self.stopping.is_none() {
                    self.held_restart = false;
                    crate::log::info!(
                        supervisor = self.me,
                        generation = serving.number,
                        pid = serving.pid,
                        "the serving generation is ready: passing on the SIGUSR2 held for it"
                    );
                    forward(self.me, serving, Signal::SIGUSR2);
                }
            }
            if message.flag("STOPPING") {
                serving.stopping = true;
            }
            if let Some(names) = message.value(protocol::FDS) {
                let names: Vec<String> = if names.is_empty() {
                    Vec::new()
                } else {
                    names.split(':').map(str::to_owned).collect()
                };
                if names.len() == fds.len() {
                    self.store = fds.into_iter().zip(names).collect();
                } else {
                    crate::log::warn!(
                        supervisor = self.me,
                        generation = serving.number,
                        pid = serving.pid,
                        sockets = fds.len(),
                        names = names.len(),
                        "a generation's sockets and their names do not match: keeping the previous ones"
                    );
                }
            }
        }
        if let Some(up) = &self.upstream {
            up.send(&message.upstream(self.me));
        }
    }

    /// A generation says it is the main process now (it took over, or started after a crash).
    /// Returns false when it is a stray instead, which is stopped: another serves, and it is
    /// not that one's successor.
    pub(super) fn new_main_pid(&mut self, pid: u32, number: Option<u64>) -> bool {
        let previous = self.serving.as_ref().map(|s| (s.pid, s.number));
        if previous.is_some_and(|(p, _)| p == pid) {
            if let (Some(serving), Some(n)) = (self.serving.as_mut(), number) {
                serving.number = n;
            }
            return true;
        }
        if let Some(current) = self.serving.as_ref() {
            let parent = crate::sys::parent_of(pid);
            // Its parent serves; or its parent has just died (it was reparented to this
            // process) and it was the serving one, whose exit is not yet looked at.
            let successor = parent == Some(current.pid)
                || (parent == Some(self.me) && !crate::sys::is_running(current.pid));
            if !successor {
                let current_pid = current.pid;
                if current.ready {
                    self.stop_stray(
                        pid,
                        Stray::NotTheSuccessor {
                            serving: current_pid,
                            parent,
                        },
                    );
                    return false;
                }
                // The serving one is still starting (a crash restart): the first to be ready
                // serves, the other must not.
                self.stop_stray(current_pid, Stray::Outrun { serving: pid });
            }
        }
        let number = number.or(previous.map(|(_, n)| n + 1)).unwrap_or(1);
        if let Some((old, _)) = previous {
            crate::log::info!(
                supervisor = self.me,
                generation = number,
                pid,
                previous = old,
                "a new generation is serving"
            );
        }
        let mut serving = Serving {
            pid,
            number,
            ready: false,
            stopping: false,
            forwarded: Vec::new(),
        };
        // Someone serves: a crash restart still waiting is not needed.
        self.restart_at = None;
        if let Some(signal) = self.stopping {
            // It took over while the stop was on its way to its parent: stop it too.
            forward(self.me, &mut serving, signal);
        }
        self.serving = Some(serving);
        self.watch(pid);
        true
    }

    /// Stops `pid`, a process that must not serve (`why`), and keeps watching it: it has just
    /// started and drains nothing.
    pub(super) fn stop_stray(&mut self, pid: u32, why: Stray) {
        if self.strays.contains(&pid) {
            return;
        }
        let me = self.me;
        match why {
            Stray::NotTheSuccessor { serving, parent } => crate::log::warn!(
                supervisor = me,
                pid,
                serving,
                parent,
                "stopping a stray generation: it is ready while another serves, and it is not that one's successor"
            ),
            Stray::Outrun { serving } => crate::log::warn!(
                supervisor = me,
                pid,
                serving,
                "stopping a stray generation: another process became ready first and serves in its place"
            ),
            Stray::Orphan { parent } => crate::log::warn!(
                supervisor = me,
                pid,
                parent,
                "stopping a stray generation: a successor still starting when its parent died"
            ),
        }
        self.strays.push(pid);
        self.watch(pid);
        signal_pid(self.me, pid, Signal::SIGTERM);
    }

    /// Stops every successor still starting of a serving generation that died (orphans
    /// reparented to this process, never heard from): a new generation replaces it, and
    /// only one may serve.
    pub(super) fn stop_orphans(&mut self, dead: u32) {
        for pid in crate::sys::children_of(self.me) {
            let known = self.children.is_watched(pid);
            if !known && crate::sys::is_running(pid) {
                self.stop_stray(pid, Stray::Orphan { parent: dead });
            }
        }
    }
}
