//! The primary's control socket: reading each client's command without ever blocking the
//! primary (at most [`MAX_CONTROL_CLIENTS`] at once, and at most a quarter of its fd limit,
//! so that clients never take the fds it needs to check its workers; backing off when out of
//! fds), running
//! it, and answering.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{Primary, Waiter};

/// How long a control client may take to send its command.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a control client may hold its place without a whole command while other clients
/// wait for one.
const GIVE_WAY_AFTER: Duration = Duration::from_millis(250);

/// The longest command line read.
const MAX_COMMAND: usize = 64;

/// The most control clients read at once; more wait in the socket's backlog.
pub(super) const MAX_CONTROL_CLIENTS: usize = 32;

/// A control client whose command is being read.
pub(super) struct Reading {
    pub(super) stream: UnixStream,
    line: Vec<u8>,
    pub(super) deadline: Instant,
}

/// Only the primary's own user and root may control it.
fn authorised(stream: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let ours = nix::unistd::geteuid().as_raw();
    if cred.uid() == ours || cred.uid() == 0 {
        Ok(())
    } else {
        crate::log::warn!(
            uid = cred.uid(),
            "control socket: refused a client of another user"
        );
        Err(format!(
            "permission denied: uid {} may not control this server (uid {ours})",
            cred.uid()
        ))
    }
}

impl Primary {
    /// The control clients this process holds an fd for.
    fn control_clients(&self) -> usize {
        self.reading.len()
            + self
                .waiters
                .values()
                .filter(|w| matches!(w, Waiter::Client(_)))
                .count()
    }

    /// Whether the control socket is accepted from now: not while backing off after an
    /// accept error, nor with `max_control_clients` clients held (being read, or waiting for a
    /// rolling restart's result).
    pub(super) fn accepting_control(&self, now: Instant) -> bool {
        self.control_paused_until.is_none_or(|t| t <= now)
            && self.control_clients() < self.max_control_clients
    }

    pub(super) fn serve_control(&mut self) {
        let now = Instant::now();
        self.make_way_for_waiting_clients(now);
        if self.accepting_control(now)
            && let Some((listener, _)) = &self.control
        {
            let mut accepted = Vec::new();
            let mut failed = None;
            for _ in 0..self.max_control_clients.saturating_sub(self.control_clients()) {
                match listener.accept() {
                    Ok((stream, _)) => accepted.push(stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if !accepted.is_empty() {
                self.control_backoff = Duration::from_millis(50);
            }
            for stream in accepted {
                let _ = stream.set_nonblocking(true);
                self.reading.push(Reading {
                    stream,
                    line: Vec::new(),
                    deadline: now + COMMAND_TIMEOUT,
                });
            }
            if let Some(e) = failed {
                // Out of fds (EMFILE, ENFILE) or memory: the client waits in the backlog
                // while this backs off, instead of a busy loop of errors.
                crate::log::warn!(
                    primary = self.me,
                    error = %e,
                    retry_ms = self.control_backoff.as_millis() as u64,
                    "control socket: cannot accept: retrying later"
                );
                self.control_paused_until = Some(now + self.control_backoff);
                self.control_backoff = (self.control_backoff * 2).min(Duration::from_secs(1));
            }
        }
        let mut ready = Vec::new();
        let mut still = Vec::new();
        for mut r in std::mem::take(&mut self.reading) {
            let mut buf = [0u8; MAX_COMMAND];
            let complete = loop {
                match r.stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        r.line.extend_from_slice(&buf[..n]);
                        if r.line.contains(&b'\n') || r.line.len() >= MAX_COMMAND {
                            break true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                }
            };
            if complete {
                ready.push(r);
            } else if r.deadline <= now {
                let _ = r.stream.set_nonblocking(false);
                let _ = r.stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = r.stream.write_all(
                    format!(
                        "error no command within {} s: expected \"restart\", \"status\" or \"scale N\"\n",
                        COMMAND_TIMEOUT.as_secs()
                    )
                    .as_bytes(),
                );
            } else {
                still.push(r);
            }
        }
        self.reading = still;
        for r in ready {
            self.command(r);
        }
    }

    /// With every place taken and clients waiting in the backlog, those that have not sent a
    /// whole command within [`GIVE_WAY_AFTER`] are answered with an error and let go: a client
    /// sends its command at once, and idle ones (a stuck monitoring script) must not hold a
    /// `--reload` up for the whole [`COMMAND_TIMEOUT`] of each.
    fn make_way_for_waiting_clients(&mut self, now: Instant) {
        if self.reading.is_empty() || self.control_clients() < self.max_control_clients {
            return;
        }
        let Some((listener, _)) = &self.control else {
            return;
        };
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let waiting = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0);
        if !waiting {
            return;
        }
        let (late, keep): (Vec<Reading>, Vec<Reading>) = std::mem::take(&mut self.reading)
            .into_iter()
            .partition(|r| now + COMMAND_TIMEOUT >= r.deadline + GIVE_WAY_AFTER);
        self.reading = keep;
        if !late.is_empty() {
            crate::log::warn!(
                primary = self.me,
                clients = late.len(),
                "control socket: let go of clients that sent no whole command while others waited"
            );
        }
        for mut r in late {
            let _ = r.stream.set_nonblocking(false);
            let _ = r.stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = r.stream.write_all(
                format!(
                    "error no whole command within {} ms while other clients waited: send the command at once\n",
                    GIVE_WAY_AFTER.as_millis()
                )
                .as_bytes(),
            );
        }
    }

    /// When the oldest control client being read must give way, if every place is taken
    /// (clients may be waiting: [`make_way_for_waiting_clients`](Self::make_way_for_waiting_clients)
    /// looks).
    pub(super) fn give_way_at(&self, now: Instant) -> Option<Instant> {
        if self.control_clients() < self.max_control_clients {
            return None;
        }
        self.reading
            .iter()
            .filter_map(|r| (r.deadline + GIVE_WAY_AFTER).checked_sub(COMMAND_TIMEOUT))
            .filter(|&t| t > now)
            .min()
    }

    /// Whether, every place taken, a client being read could give way now: the listener is
    /// then watched, so that a client arriving is let in at once.
    pub(super) fn could_give_way(&self, now: Instant) -> bool {
        self.control_clients() >= self.max_control_clients
            && self
                .reading
                .iter()
                .any(|r| now + COMMAND_TIMEOUT >= r.deadline + GIVE_WAY_AFTER)
    }

    pub(super) fn command(&mut self, r: Reading) {
        let mut stream = r.stream;
        let line = String::from_utf8_lossy(&r.line);
        let command = line.lines().next().unwrap_or("").trim().to_owned();
        let answer = match authorised(&stream) {
            Err(reason) => Some(format!("error {reason}\n")),
            // A client that gave up before the command was read (the primary was held up past
            // its timeout) was told it is not run: it is not.
            Ok(())
                if command != "status"
                    && command != "status json"
                    && crate::control::client_gone(stream.as_fd()) =>
            {
                crate::log::info!(
                    primary = self.me,
                    command = %command.chars().take(MAX_COMMAND).collect::<String>(),
                    "control socket: command not run: its client left before it was read"
                );
                return;
            }
            Ok(()) => match command.as_str() {
                "restart" | "restart again" => {
                    crate::log::info!(primary = self.me, "control socket: rolling restart requested");
                    self.restart(Waiter::Client(stream));
                    return;
                }
                "status" => Some(format!("ok\n{}", self.status())),
                "status json" => Some(format!("ok\n{}\n", self.status_json().render())),
                other => match other.strip_prefix("scale ").map(|n| n.trim().parse::<usize>()) {
                    Some(Ok(n)) if (1..=1024).contains(&n) => {
                        match self.machine.refuse_scale(n, self.worker_room()) {
                            Some(reason) => Some(format!("error {reason}\n")),
                            None => {
                                self.scale(n);
                                Some(format!("ok scaling to {n} worker(s)\n"))
                            }
                        }
                    }
                    Some(_) => Some(format!(
                        "error {other:?}: expected \"scale N\" with N a number of workers from 1 to 1024\n"
                    )),
                    None => Some(format!(
                        "error unknown command {:?}: expected \"restart\", \"status\", \"status json\" or \"scale N\"\n",
                        other.chars().take(MAX_COMMAND).collect::<String>()
                    )),
                },
            },
        };
        if let Some(answer) = answer {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(answer.as_bytes());
        }
    }
}
