//! The requests that drive a generation, by signal or by call: `SIGUSR2` restarts, `SIGTERM`
//! and `SIGINT` stop (with who sent them: a `SIGTERM` from the child being started is Go
//! grace's "I am ready").

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::RestartResult;
use super::backstop::{BACKSTOP_GRACE, DrainBackstop};
use super::machine::StopCause;
use super::standby::{SharedStandby, wake_at_signal};
use crate::error::Error;
use crate::registry::SocketRegistry;

/// What someone asked of the generation.
#[derive(Debug)]
pub(crate) enum Request {
    /// `SIGUSR2` or `Generation::restart` (which waits for the result on `reply`).
    Restart {
        reply: Option<oneshot::Sender<RestartResult>>,
    },
    /// A restart asked again after the generation first asked had handed over (the control
    /// socket's `retry`): joins a restart under way.
    Rejoin { reply: oneshot::Sender<RestartResult> },
    /// `SIGTERM`, `SIGINT` or `Generation::shutdown`, with the sender's pid when the kernel
    /// reports one.
    Stop { cause: StopCause, sender: Option<u32> },
    /// `Generation::ready`: the generation serves.
    Ready,
}

/// Where the signal thread sends what the signals ask, and what it needs besides.
pub(crate) struct SignalRoutes {
    /// The lifecycle's requests.
    pub tx: UnboundedSender<Request>,
    /// Woken at a `SIGUSR2`, if there is one.
    pub standby: SharedStandby,
    /// For the standby's wake (it checks the sockets are still those it was given).
    pub registry: &'static SocketRegistry,
    /// Armed at a stop signal.
    pub backstop: DrainBackstop,
    /// The generation's stop timeout, for the backstop.
    pub stop_timeout: std::time::Duration,
    /// The supervisor or cluster's primary this generation runs under: it forwards the stop
    /// signals it gets, so only its own count towards a second stop (see
    /// [`Me::supervisor`](super::machine::Me::supervisor)).
    pub supervisor: Option<u32>,
    /// A cluster's worker: only its primary's `SIGUSR2` is a restart.
    pub worker: bool,
}

/// Starts a thread that forwards the signals to `routes.tx` until the receiver is gone. The
/// handlers replace the default actions (so `SIGTERM` no longer kills the process outright).
/// A `SIGUSR2` wakes the standby, if there is one, before it is forwarded; in a cluster's
/// worker, one from anyone but the primary is ignored (with a log line): a worker restarts
/// when its primary asks, in a rolling restart, and a `SIGUSR2` sent to every process of the
/// program would otherwise restart each worker by itself and then again in the rollout. A
/// stop signal arms the backstop at the stop timeout (and a grace) from now, a second one at
/// the grace: the process ends then even if its runtime is blocked and never runs the drain.
pub(crate) fn forward(routes: SignalRoutes) -> Result<(), Error> {
    let SignalRoutes {
        tx,
        standby,
        registry,
        backstop,
        stop_timeout,
        supervisor,
        worker,
    } = routes;
    let restarts_only_from = supervisor.filter(|_| worker);
    let mut signals =
        SignalsInfo::<WithOrigin>::new([SIGUSR2, SIGTERM, SIGINT]).map_err(|source| Error::Io {
            what: "cannot install handlers for SIGUSR2, SIGTERM and SIGINT".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name("gracenet-signals".into())
        .spawn(move || {
            // Held since the start when the program asked (`hold_signals`): with the handlers
            // in place, this thread takes them, and one that waited is delivered now.
            crate::supervisor::unblock_held(&[
                nix::sys::signal::Signal::SIGUSR2,
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGINT,
            ]);
            leave_sighup_to_its_owner(worker);
            // Stop signals that count towards a second one: under a supervisor, only its
            // own and this process's (it forwards what it gets, so a stop sent to every
            // process of the service comes twice); any stop arms the backstop at the stop
            // timeout.
            let (mut stopping, mut counted) = (false, 0u32);
            for origin in signals.forever() {
                let sender = origin.process.map(|p| p.pid as u32);
                if origin.signal != SIGUSR2 && backstop.has_ended() {
                    // The drain has ended: what the program does now is its own, and a stop
                    // signal gets its default action, as if no handler were installed (the
                    // lifecycle's task may no longer run to give it: a runtime that ended,
                    // or one the program blocks).
                    end_by_default_action(origin.signal);
                    continue;
                }
                if origin.signal != SIGUSR2 {
                    if !std::mem::replace(&mut stopping, true) {
                        backstop.arm_after(
                            stop_timeout.saturating_add(BACKSTOP_GRACE),
                            Some(origin.signal),
                            "the stop timeout has passed since the stop signal",
                        );
                    }
                    if super::machine::stop_counts(supervisor, std::process::id(), sender) {
                        counted += 1;
                        if counted >= 2 {
                            backstop.arm_after(BACKSTOP_GRACE, Some(origin.signal), "a second stop signal came");
                        }
                    }
                }
                if origin.signal == SIGUSR2
                    && let Some(primary) = restarts_only_from
                    && sender != Some(primary)
                {
                    crate::log::warn!(
                        sender,
                        primary,
                        "ignoring SIGUSR2 to a cluster's worker: workers restart when their primary asks (SIGUSR2 to the primary restarts them one at a time)"
                    );
                    continue;
                }
                let event = match origin.signal {
                    SIGUSR2 => {
                        wake_at_signal(&standby, registry);
                        Request::Restart { reply: None }
                    }
                    signal => Request::Stop {
                        cause: if signal == SIGINT {
                            StopCause::Sigint
                        } else {
                            StopCause::Sigterm
                        },
                        sender,
                    },
                };
                if let Err(unsent) = tx.send(event) {
                    // The lifecycle's task is gone (its runtime ended): a stop gets its
                    // default action; a restart has nobody to run it.
                    match unsent.0 {
                        Request::Stop { .. } => end_by_default_action(origin.signal),
                        _ => crate::log::warn!(
                            "SIGUSR2 after the generation's lifecycle ended: nothing to restart"
                        ),
                    }
                }
            }
        })
        .map_err(|e| Error::Io {
            what: "cannot start the signal thread".into(),
            source: std::io::Error::new(e.kind(), crate::error::thread_error(&e)),
        })?;
    Ok(())
}

/// `SIGHUP` is the program's (gracenet installs no handler for it), held since the start
/// when the program called `hold_signals`. One the program handles is left as it is (it
/// unblocks it where it handles it). One it does not handle ends the process at once, as its
/// default action: unblocked here, where a `SIGHUP` that waited is delivered now (the
/// supervisor passes its own on, for the same end). In a cluster's worker it is ignored
/// instead: the primary drains every worker on `SIGHUP` (a closed terminal signals every
/// process of its group), and the worker's own copy would end it with its requests.
fn leave_sighup_to_its_owner(worker: bool) {
    use nix::sys::signal::Signal;
    if !crate::sys::has_default_action(Signal::SIGHUP) {
        return;
    }
    if worker {
        if let Err(e) = crate::sys::ignore(Signal::SIGHUP) {
            crate::log::debug!(error = %e, "cannot ignore SIGHUP in a cluster's worker");
        }
    } else {
        crate::supervisor::unblock_held(&[Signal::SIGHUP]);
    }
}

/// Gives the stop signal `signal` its default action now (the process ends by it).
fn end_by_default_action(signal: libc::c_int) {
    crate::log::info!(
        signal,
        "stop signal after the drain ended: giving it its default action"
    );
    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
        crate::log::warn!(signal, error = %e, "cannot apply the default action of the signal");
    }
}

/// Gives `cause`'s signal its default action now (a stop that came after the drain ended:
/// the application is still running after `wait()`, and the operator wants it gone).
pub(crate) fn default_action(cause: StopCause) {
    let signal = match cause {
        StopCause::Sigterm => SIGTERM,
        StopCause::Sigint => SIGINT,
        StopCause::Call => return,
    };
    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
        crate::log::warn!(%cause, error = %e, "cannot apply the default action of the signal");
    }
}
