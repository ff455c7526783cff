//! The signals that drive a generation, with who sent them: `SIGUSR2` restarts, `SIGTERM` and
//! `SIGINT` stop, and a `SIGTERM` from the child being started is Go grace's "I am ready".

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::Error;

/// What someone asked of the generation, by signal or by a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// `SIGUSR2` or `Generation::restart`.
    Restart,
    /// `SIGTERM`, `SIGINT` or `Generation::shutdown`, with the sender's pid when the kernel
    /// reports one.
    Stop {
        cause: &'static str,
        sender: Option<i32>,
    },
}

/// Starts a thread that forwards the signals to `tx` until the receiver is gone. The
/// handlers replace the default actions (so `SIGTERM` no longer kills the process outright).
pub(crate) fn forward(tx: UnboundedSender<Request>) -> Result<(), Error> {
    let mut signals =
        SignalsInfo::<WithOrigin>::new([SIGUSR2, SIGTERM, SIGINT]).map_err(|source| Error::Io {
            what: "cannot install handlers for SIGUSR2, SIGTERM and SIGINT".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name("gracenet-signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let event = match origin.signal {
                    SIGUSR2 => Request::Restart,
                    signal => Request::Stop {
                        cause: if signal == SIGINT { "SIGINT" } else { "SIGTERM" },
                        sender: origin.process.map(|p| p.pid),
                    },
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| Error::Io {
            what: "cannot start the signal thread".into(),
            source,
        })?;
    Ok(())
}
