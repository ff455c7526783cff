//! systemd's readiness protocol (`sd_notify`): datagrams of `KEY=VALUE` lines to the socket in
//! `NOTIFY_SOCKET`, so a `Type=notify` (or `notify-reload`) service knows when the server is
//! ready, reloading or stopping, and which pid is its main process across restarts.
//!
//! Ours, not the `sd-notify` crate (0.5): that crate connects to `NOTIFY_SOCKET` as a file
//! path only, so it cannot reach an abstract-namespace socket (`@name`), which sd_notify(3)
//! allows and which gracenet's own supervisor gives its generations (a private socket that
//! leaves no file behind); its fd passing (`FDSTORE=1`, which the supervisor's protocol
//! uses) needs a further dependency (`sendfd`), where nix's `sendmsg` is already here; and it
//! reads the variable and opens a socket at every call, where a `Notifier` resolves it once.

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub(crate) use crate::vars::NOTIFY_SOCKET;

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    /// The same, non-blocking, for [`try_send`](Self::try_send).
    nonblocking: Option<UnixDatagram>,
    addr: SocketAddr,
    shown: String,
    /// `NOTIFY_SOCKET` as it was set, for the next generation's.
    value: std::ffi::OsString,
    /// The receiver is known to be gone (a cluster's primary that was killed): a failed send
    /// is expected, and logged at debug level only.
    receiver_gone: std::sync::atomic::AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if it is set. The variable stays in the
    /// environment (it is systemd's), and the next generation is given the same
    /// ([`var`](Self::var)): it reports to the same socket. A value that cannot be used is
    /// logged, never fatal.
    pub(crate) fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        let shown = value.to_string_lossy().into_owned();
        let addr = match shown.strip_prefix('@') {
            Some(name) => crate::sys::abstract_addr(name.as_bytes()),
            None if shown.starts_with('/') => SocketAddr::from_pathname(&shown),
            None => {
                crate::log::warn!(
                    notify_socket = %shown,
                    "NOTIFY_SOCKET is neither an absolute path nor @abstract: not notifying systemd"
                );
                return None;
            }
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                crate::log::warn!(
                    notify_socket = %shown,
                    error = %e,
                    "NOTIFY_SOCKET is not a usable socket address: not notifying systemd"
                );
                return None;
            }
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Notifier {
                nonblocking: UnixDatagram::unbound()
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .ok(),
                socket,
                addr,
                shown,
                value,
                receiver_gone: std::sync::atomic::AtomicBool::new(false),
            }),
            Err(e) => {
                crate::log::warn!(error = %e, "cannot create a socket to notify systemd");
                None
            }
        }
    }

    /// `NOTIFY_SOCKET`'s value, as it named this notifier's socket.
    #[cfg(feature = "tokio")]
    pub(crate) fn var(&self) -> &std::ffi::OsStr {
        &self.value
    }

    #[cfg(feature = "tokio")]
    /// Sends one message with `fds` attached (`SCM_RIGHTS`), as systemd's `FDSTORE=1` and
    /// gracenet's supervisor take them.
    ///
    /// # Errors
    /// The reason the message could not be sent (the caller decides whether that matters).
    pub(crate) fn send_with_fds(&self, lines: &[String], fds: &[std::os::fd::RawFd]) -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let message = lines.join("\n");
        // A socket of its own, connected to the target: sendmsg then needs no address.
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&self.addr)?;
        let iov = [std::io::IoSlice::new(message.as_bytes())];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
        sendmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            None,
        )?;
        Ok(())
    }

    /// Sends `lines` without ever waiting: `false` when the receiver's queue is full (or the
    /// send failed otherwise). For messages that may be dropped (a cluster worker's heartbeat):
    /// a receiver that stopped reading (a primary stopped with `SIGSTOP`) must not stop the
    /// sender's runtime.
    pub(crate) fn try_send(&self, lines: &[String]) -> bool {
        let message = lines.join("\n");
        self.nonblocking
            .as_ref()
            .is_some_and(|s| s.send_to_addr(message.as_bytes(), &self.addr).is_ok())
    }

    /// Sends one message (`KEY=VALUE` lines). A failure is logged: systemd being unreachable
    /// must not stop a server.
    /// The receiver is gone (a cluster's primary that was killed): sends may fail from now
    /// on without a warning.
    pub(crate) fn receiver_gone(&self) {
        self.receiver_gone
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn send(&self, lines: &[String]) {
        let message = lines.join("\n");
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            if self.receiver_gone.load(std::sync::atomic::Ordering::Relaxed) {
                crate::log::debug!(socket = %self.shown, error = %e, "the notify socket's receiver is gone");
                return;
            }
            crate::log::warn!(
                socket = %self.shown,
                lines = %message.replace('\n', " "),
                error = %e,
                "cannot notify systemd"
            );
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, for `MONOTONIC_USEC=` (required with `RELOADING=1` by
/// `Type=notify-reload`).
pub(crate) fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}
