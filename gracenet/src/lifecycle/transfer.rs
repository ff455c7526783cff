//! What one generation hands the next, the application's side: state
//! ([`Generation::inherited_state`], [`InheritedState`], [`Generation::refuse`]) and live
//! connections ([`Generation::hand_over`], [`Generation::inherited_connections`]). The bytes
//! on the channel are `channel`'s and `handover`'s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use super::channel;
use super::generation::Generation;
use super::handover::{ANSWER_TIMEOUT, FinalSlot, InheritedConnections};
use super::shared::FinalBytes;
use crate::error::Error;

/// The state the previous generation handed over: the snapshot it took when the restart
/// began ([`snapshot`](Self::snapshot)), and the final state it hands once its drain has
/// ended ([`final_state`](Self::final_state)), with every write it acknowledged.
pub struct InheritedState {
    /// The bytes the previous generation's provider returned when the restart began.
    pub snapshot: Vec<u8>,
    last: Option<oneshot::Receiver<FinalBytes>>,
    /// How long the previous generation may take to drain and hand the final state.
    wait: Duration,
    /// Dropped once the application is done with the final state (see [`FinalState`]).
    merged: Option<oneshot::Sender<()>>,
}

/// The previous generation's final state ([`InheritedState::final_state`]): its bytes
/// (`&*final_state`). Drop it once they are merged: this generation hands its own final state
/// only then (or after its stop and ready timeouts), so that a restart soon after this one
/// hands these writes on too.
pub struct FinalState {
    bytes: Vec<u8>,
    _merged: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for InheritedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InheritedState")
            .field("snapshot_bytes", &self.snapshot.len())
            .field("final_pending", &self.last.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FinalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalState")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for FinalState {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl InheritedState {
    /// The previous generation's final state: its provider's bytes once its drain has ended
    /// (nothing in flight any more). Await it once this generation serves (it comes after the
    /// drain, which begins when this generation is [`ready`](Generation::ready)), and merge
    /// it with what this generation has written since: the snapshot's writes are in it too.
    /// Hold the [`FinalState`] until it is merged: this generation hands its own final state
    /// once it is dropped, so a restart soon after this one hands these writes on too.
    ///
    /// ```no_run
    /// # async fn f(generation: gracenet::Generation) -> Result<(), gracenet::Error> {
    /// if let Some(mut handed) = generation.inherited_state().await? {
    ///     let snapshot = std::mem::take(&mut handed.snapshot); // load it before ready()
    ///     # drop(snapshot);
    ///     generation.ready()?;
    ///     let last = handed.final_state().await?; // the writes made since the snapshot too
    ///     // merge &*last into the store, then drop it
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::FinalState`] when it does not come: the previous generation exited first
    /// (crashed, killed, or a gracenet older than this one, which hands none), it was larger
    /// than [`max_state`](super::GenerationBuilder::max_state), or it did not come within
    /// this generation's stop timeout plus its ready timeout (the longest a drain and a
    /// hand-over take when both generations share the settings). Writes the previous
    /// generation acknowledged after the snapshot are then lost: say so to the operator.
    pub async fn final_state(mut self) -> Result<FinalState, Error> {
        let failed = |reason: String| Error::FinalState { reason };
        let Some(last) = self.last.take() else {
            return Err(failed(
                "this generation does not read its parent's channel".into(),
            ));
        };
        match tokio::time::timeout(self.wait, last).await {
            Ok(Ok(Ok(bytes))) => Ok(FinalState {
                bytes,
                _merged: self.merged.take(),
            }),
            Ok(Ok(Err(why))) => Err(failed(why)),
            Ok(Err(_)) => Err(failed(
                "this generation did not read its parent's channel (it was not ready, or the channel is a pipe)"
                    .into(),
            )),
            Err(_) => Err(failed(format!(
                "not handed within {:.1} s (the stop timeout and the ready timeout)",
                self.wait.as_secs_f64()
            ))),
        }
    }
}

impl Generation {
    /// The state the previous generation handed over ([`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)):
    /// `None` when there is no previous generation or it hands none. Read it once, before
    /// [`ready`](Self::ready); check its [`snapshot`](InheritedState::snapshot), and
    /// [`refuse`](Self::refuse) it if it is not what this version understands; once ready,
    /// merge its [`final_state`](InheritedState::final_state).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let generation = gracenet::Generation::builder()
    ///     .hand_state(|| async { b"v1:counter=7".to_vec() }) // given to the next generation
    ///     .start()?;
    /// let handed = generation.inherited_state().await?;
    /// match &handed {
    ///     None => {}                                          // a first start: nothing handed
    ///     Some(s) if s.snapshot.starts_with(b"v1:") => {}     // use it
    ///     Some(_) => {
    ///         generation.refuse("unknown state version"); // the old generation keeps serving
    ///         return Err("refused".into());
    ///     }
    /// }
    /// generation.ready()?;
    /// if let Some(handed) = handed {
    ///     let _last = handed.final_state().await?; // once the old generation has drained
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when the state is larger than the limit ([`GenerationBuilder::max_state`](super::GenerationBuilder::max_state)),
    /// is cut short, does not arrive within the ready timeout, or could not be made (the
    /// previous generation's provider panicked or did not finish: the error says so).
    /// [`Error::StateTaken`] when called again, or after [`ready`](Self::ready).
    pub async fn inherited_state(&self) -> Result<Option<InheritedState>, Error> {
        let io = |what: String, source: std::io::Error| Error::Io { what, source };
        // Read once: a second read would wait for a state that has gone by.
        if self.shared.state_read.load(Ordering::SeqCst) {
            return Err(Error::StateTaken);
        }
        let channel = {
            let link = self.shared.startup.link.lock().unwrap_or_else(|p| p.into_inner());
            match link.as_ref().and_then(crate::readiness::ParentLink::channel) {
                Some(fd) => fd.map_err(|e| io("cannot read the handed-over state".into(), e))?,
                None => return Ok(None),
            }
        };
        // A pipe, from a parent of an older gracenet, hands no state.
        let Some(mut stream) =
            channel::open(channel).map_err(|e| io("cannot read the handed-over state".into(), e))?
        else {
            return Ok(None);
        };
        if self.shared.state_read.swap(true, Ordering::SeqCst) {
            return Err(Error::StateTaken);
        }
        let max = self.shared.settings.max_state;
        let read = channel::read_state(&mut stream, max);
        let snapshot = match tokio::time::timeout(self.shared.settings.ready_timeout, read).await {
            Ok(Ok(state)) => crate::metrics::state_inherited(state),
            Ok(Err(e)) => return Err(io("cannot read the handed-over state".into(), e)),
            Err(_) => {
                return Err(io(
                    "cannot read the handed-over state".into(),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "not handed within the ready timeout",
                    ),
                ));
            }
        };
        Ok(snapshot.map(|snapshot| {
            let (merged, merging) = oneshot::channel();
            *self.shared.merged.lock().unwrap_or_else(|p| p.into_inner()) = Some(merging);
            InheritedState {
                snapshot,
                merged: Some(merged),
                last: self
                    .shared
                    .final_rx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
                wait: self.shared.settings.stop_timeout + self.shared.settings.ready_timeout,
            }
        }))
    }

    /// Reads the channel from the previous generation, once this one serves (see
    /// [`InheritedConnections`]): the connections it hands over wait for
    /// [`inherited_connections`](Self::inherited_connections), its final state for
    /// [`InheritedState::final_state`].
    pub(super) fn read_parent_channel(&self, fd: std::os::fd::OwnedFd) {
        // `ready` may be called outside the runtime: the channel and its reader need it.
        let _runtime = self.shared.runtime.enter();
        let channel = match channel::open(fd) {
            Ok(Some(channel)) => channel,
            // A pipe, from an older gracenet: neither connections nor a final state.
            Ok(None) => return,
            Err(e) => {
                crate::log::warn!(error = %e, "cannot read the channel from the previous generation");
                return;
            }
        };
        // The state section comes first: skipped when the application did not read it.
        let skip_state = !self.shared.state_read.swap(true, Ordering::SeqCst);
        let last = self
            .shared
            .final_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|tx| FinalSlot {
                max: self.shared.settings.max_state,
                tx,
            });
        let inbox = InheritedConnections::read(channel, skip_state, last);
        *self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(inbox);
        // A program that does not ask for them (it takes no connections) does not make the
        // previous generation's clients wait for its 10 s answer timeout: once the claim
        // window is over, they are answered "not taken" and stay there, drained as before.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(super::CLAIM_WINDOW).await;
            let unclaimed = shared.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
            if unclaimed.is_some() {
                crate::log::info!(
                    window_ms = super::CLAIM_WINDOW.as_millis() as u64,
                    "connections the previous generation hands over were not asked for (Generation::inherited_connections): it keeps them"
                );
            }
        });
    }

    /// Hands a live connection to the generation that took over (once this one drains after
    /// a restart): `stream`'s fd (a [`Stream`](crate::tokio::Stream), a tokio or std
    /// `TcpStream` or `UnixStream`: anything that lends its socket's fd) goes to the new
    /// process with `unread` (bytes read from it but not handled) and `state` (anything the
    /// application attaches), and this call waits for the new process to answer. `Ok` once it
    /// has taken the connection: drop `stream` then (its client sees no close; its next reply
    /// comes from the new process). Call it where the connection is quiet (between requests
    /// or lines). The new process receives it from
    /// [`inherited_connections`](Self::inherited_connections); if that process dies later,
    /// the connections it took close with it.
    ///
    /// Connections go over a few at a time (32 unanswered at most): first one whose client
    /// has sent something while it waited (on Linux), else the latest call. A server's idle
    /// connections are quiet, and called for, as soon as the drain begins; its busy ones
    /// only once their request is answered. So a busy connection, whose client is about to
    /// send its next request, goes ahead of the thousands of idle ones that may be waiting
    /// (the order the new process gets them in, `next`'s, is the same).
    ///
    /// An error means the connection is still this process's, exactly as before the call,
    /// and the new process will not serve it: keep serving `stream` (with your `unread`
    /// bytes) until the client closes, as the drain expects. That is the case when there is
    /// no successor (this generation is stopping, not restarting), when the new process did
    /// not take it (its fd did not arrive: it is at its open-file limit, say), when the new
    /// process exits or closes the channel before answering, or when no answer comes within
    /// 10 s (then no more connections are offered to it: the rest stay here too).
    ///
    /// Let the call finish: do not cancel it (in a `select!`, say) once it has started. A
    /// call dropped while it waits for the answer leaves the connection in both processes if
    /// the new one takes it.
    ///
    /// ```no_run
    /// # async fn serve(generation: gracenet::Generation, conn: gracenet::tokio::Stream) {
    /// // In a connection's task, at a quiet point once this generation drains:
    /// generation.draining().await;
    /// if generation.hand_over(&conn, b"", b"session=42").await.is_ok() {
    ///     return; // the new process took it; dropping `conn` closes nothing
    /// }
    /// // Not handed (a stop, or the new process did not take it): go on serving `conn`
    /// // until the client closes.
    /// # }
    /// // In the new process, after ready():
    /// # async fn receive(generation: gracenet::Generation) -> Result<(), gracenet::Error> {
    /// if let Some(mut handed) = generation.inherited_connections().await? {
    ///     while let Some(c) = handed.next().await {
    ///         let _guard = generation.track();
    ///         // serve c.stream, handling c.unread first; c.state is b"session=42"
    /// #       drop(c);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoSuccessor`] when no generation took over from this one; [`Error::Io`] when
    /// the new process did not take it (see above), when `stream` is no connection (a
    /// listening socket, a datagram socket, a file: `InvalidInput`), or when the same
    /// connection was handed over already or is being handed (`AlreadyExists`: the new
    /// process would serve it twice). Either way: keep serving `stream`.
    pub async fn hand_over(
        &self,
        stream: impl std::os::fd::AsFd,
        unread: &[u8],
        state: &[u8],
    ) -> Result<(), Error> {
        let channel = self
            .shared
            .successor_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let io = |source: std::io::Error| Error::Io {
            what: "cannot hand the connection to the next generation".into(),
            source,
        };
        let Some(channel) = channel else {
            return Err(Error::NoSuccessor);
        };
        channel
            .offer(stream.as_fd(), unread, state, ANSWER_TIMEOUT)
            .await
            .inspect(|()| crate::metrics::connection_handed(true))
            .inspect_err(|_| crate::metrics::connection_handed(false))
            .map_err(io)
    }

    /// Whether a connection handed over now could be taken: a generation took over from this
    /// one, speaks the hand-over, and is still there to answer (it has not exited, nor stopped
    /// taking connections). A server that tells a client to stay (HTTP keep-alive, say) only
    /// while this holds never promises a connection nobody will take: once the next
    /// generation has gone (a second restart replaced it before this one finished its
    /// requests), it tells its clients to reconnect instead.
    pub fn can_hand_over(&self) -> bool {
        self.shared
            .successor_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|channel| channel.is_open())
    }

    /// The connections the previous generation hands over (see [`hand_over`](Self::hand_over)),
    /// as they arrive: serve each as if accepted (tracking it), its `unread` bytes first.
    /// `None` in a first generation, or one started by Go grace or systemd. Call it after
    /// [`ready`](Self::ready) (the previous generation hands connections over once this one
    /// serves), and keep calling [`next`](super::InheritedConnections::next) until it returns
    /// `None`: a connection is this process's once `next` has returned it (the previous
    /// generation is told then, and only then lets go of it); one this process cannot take
    /// (it is out of fds, say) is answered so, and the previous generation goes on serving
    /// it. The previous generation waits 10 s at most for an answer. Whoever calls it
    /// first gets them: a second call says `None`. Call it at once after `ready`: if nobody
    /// has within [`CLAIM_WINDOW`](super::CLAIM_WINDOW) (a program that takes no connections), they are
    /// answered "not taken" (the previous generation keeps them, draining them as before)
    /// and this says `None`.
    ///
    /// # Errors
    /// None today: the channel is read from [`ready`](Self::ready) on, and a failure there
    /// is logged and ends the connections (`next` says `None`).
    pub async fn inherited_connections(&self) -> Result<Option<InheritedConnections>, Error> {
        Ok(self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    /// The link to the previous generation (readiness or refusal), taken once.
    pub(super) fn take_link(&self) -> Option<crate::readiness::ParentLink> {
        self.shared
            .startup
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Refuses what the previous generation handed over (a state version this one does not
    /// understand, say): the previous generation is told `reason`, rolls the restart back and
    /// keeps serving. Return from `main` after it (with an error); this generation must not
    /// serve. Does nothing in a generation that has no previous one.
    pub fn refuse(&self, reason: &str) {
        let link = self.take_link();
        if let Some(link) = link {
            crate::log::error!(%reason, "refusing what the previous generation handed over");
            link.refuse(reason);
        }
    }
}
