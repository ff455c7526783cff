//! What the [`Generation`](super::Generation) handle and the driver share: the settings,
//! the phase and its watchers, the channels to the generations before and after.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::signals::Request;
use super::standby::SharedStandby;
use super::{Outcome, Phase};
use crate::notify::Notifier;
use crate::registry::SocketRegistry;
use crate::startup::Startup;

/// Makes the state handed to the next generation (see
/// [`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)): called at the
/// restart (the snapshot) and again once the drain has ended (the final state).
pub(super) type StateProvider =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>> + Send + Sync>;

/// The final state, as the channel's reader found it: the bytes, or why none came.
pub(super) type FinalBytes = Result<Vec<u8>, String>;

/// A generation's settings, as [`GenerationBuilder`](super::GenerationBuilder) sets them
/// (each documented at its setter).
#[derive(Clone)]
pub(super) struct Settings {
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub pid_file: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub state: Option<StateProvider>,
    pub max_state: u64,
    pub handle_signals: bool,
    pub announce: bool,
    pub idle_start: bool,
    pub idle_start_limit: Duration,
    pub standby: bool,
}

/// What the handle and the driver share.
pub(super) struct Shared {
    pub number: u64,
    pub startup: &'static Startup,
    pub settings: Settings,
    pub phase: watch::Sender<Phase>,
    /// One receiver per tracked connection: the drain waits for them all to go.
    pub connections: watch::Sender<()>,
    /// One receiver per [`GracefulListener`](super::GracefulListener): "stopped accepting" is when they are all gone.
    pub accepting: watch::Sender<()>,
    pub outcome: watch::Sender<Option<Outcome>>,
    /// Ends the process when a drain overruns its deadline because the runtime is blocked.
    pub backstop: super::backstop::DrainBackstop,
    /// Set when the drain begins (with `phase`), for a cheap check per request.
    pub draining: AtomicBool,
    /// The channel to the generation that took over, for handing it live connections.
    pub successor_channel: std::sync::Mutex<Option<Arc<super::handover::Handover>>>,
    /// The connections the generation that started this one hands over, read off its
    /// channel from ready on (until the application takes them).
    pub inbox: std::sync::Mutex<Option<super::handover::InheritedConnections>>,
    /// Where the channel's reader puts the previous generation's final state (taken at ready).
    pub final_tx: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<FinalBytes>>>,
    /// Where [`InheritedState`](super::InheritedState) waits for it (taken with the snapshot).
    pub final_rx: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<FinalBytes>>>,
    /// Once this generation has read handed-over state: resolves when the application is
    /// done with its predecessor's final state (merged, or it will not come). This
    /// generation's own final state waits for it, so a restart soon after the last one
    /// hands that state on.
    pub merged: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// The runtime the generation was started on, for tasks started from any thread
    /// ([`Generation::ready`](super::Generation::ready) may be called outside it).
    pub runtime: tokio::runtime::Handle,
    /// Whether the handed-over state has been read off the parent channel.
    pub state_read: AtomicBool,
    /// Whether a restart is under way, and the next generation's pid once it runs (0 before),
    /// for `status`.
    pub restart: AtomicBool,
    pub next_pid: std::sync::atomic::AtomicU32,
    /// The standby's pid, 0 when there is none (for `status`).
    pub standby_pid: std::sync::atomic::AtomicU32,
    /// The standby's wake handle, shared with the signal thread.
    pub standby: SharedStandby,
    pub requests: mpsc::UnboundedSender<Request>,
    /// systemd's notification socket, when `NOTIFY_SOCKET` is set.
    pub notifier: Option<Notifier>,
    /// Connections accepted by this generation's graceful listeners (the control socket's
    /// clients included), for a cluster's `status` and its balance.
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    /// A graceful listener's last accept failed for lack of resources (out of fds): the
    /// heartbeat says so, and the cluster's primary sends new connections to other workers.
    pub cannot_accept: std::sync::atomic::AtomicBool,
    /// Requests (or whatever units the application counts) served by this process
    /// ([`Generation::count_requests`](super::Generation::count_requests)), for a cluster's
    /// `status` and its recycling. Written by every request: on a cache line of its own, so
    /// that the fields read on every connection's path beside it do not bounce with it.
    pub served: Padded,
    /// In a cluster worker: woken as one of its connections closes, so that an accept
    /// left to lighter workers looks again at once (short connections close within
    /// microseconds).
    pub closed: tokio::sync::Notify,
}

/// An atomic counter alone on its cache line (128 bytes: two lines, for the adjacent-line
/// prefetch of x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Padded(pub(super) std::sync::atomic::AtomicU64);

impl Shared {
    pub fn registry(&self) -> &'static SocketRegistry {
        &self.startup.registry
    }

    /// The older generations still running (draining), oldest first: those of
    /// `GRACE_ANCESTORS` still running and started before this process (a reused pid started
    /// later).
    pub fn running_ancestors(&self) -> Vec<u32> {
        // One read of /proc per ancestor, and of our own only if one is running (this is on
        // the restart's path, on the serving core).
        let mut ours = None;
        self.startup
            .ancestors
            .iter()
            .copied()
            .filter(|&pid| match crate::sys::running_start(pid) {
                None => false,
                Some(theirs) => {
                    let ours = *ours.get_or_insert_with(|| crate::sys::start_time(std::process::id()));
                    match (theirs, ours) {
                        (Some(theirs), Some(ours)) => theirs <= ours,
                        _ => true,
                    }
                }
            })
            .collect()
    }

    /// Tells systemd, if it is listening.
    pub fn notify(&self, lines: &[String]) {
        if let Some(n) = &self.notifier {
            n.send(lines);
        }
    }
}
