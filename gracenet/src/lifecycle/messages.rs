//! The lifecycle's log messages that more than one place logs, worded once.
//!
//! Every lifecycle log line follows tracing's convention: a fixed message, and the values in
//! fields, named alike everywhere: `generation` (this process's generation), `next` (the
//! generation being started), `pid` (the process the event is about), `error` or `reason`
//! (why). What systemd is told is worded in [`sd_notify`](super::sd_notify).

/// A generation is ready and serves (logged at info, or at debug when it does not announce).
pub(super) const SERVING: &str = "ready and serving";

/// A restart failed before any hand-over: this generation keeps serving.
pub(super) const RESTART_FAILED: &str = "restart failed: this generation keeps serving";

/// The state could not be handed to the next generation (an error, or the timeout).
pub(super) const STATE_NOT_HANDED: &str = "could not hand the state over";

/// The final state could not be handed to the next generation: the writes acknowledged since
/// the snapshot are lost.
pub(super) const FINAL_STATE_NOT_HANDED: &str =
    "could not hand the final state over: writes acknowledged since the snapshot are lost";

/// A process started at idle CPU priority could not be returned from it.
pub(super) const NOT_FROM_IDLE: &str = "cannot return it from idle CPU priority";

/// A connection offered by the previous generation could not be taken.
pub(super) const CONNECTION_NOT_TAKEN: &str = "a handed-over connection could not be taken";
