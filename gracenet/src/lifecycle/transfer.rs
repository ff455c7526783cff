//! What one generation hands the next, the application's side: state
//! ([`Generation::inherited_state`], [`Generation::refuse`]) and live connections
//! ([`Generation::hand_over`], [`Generation::inherited_connections`]). The bytes on the
//! channel are `channel`'s and `handover`'s.

use std::sync::atomic::Ordering;

use super::channel;
use super::generation::Generation;
use super::handover::{ANSWER_TIMEOUT, InheritedConnections};
use crate::error::Error;

impl Generation {
    /// The state the previous generation handed over ([`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)):
    /// `None` when there is no previous generation or it hands none. Read it once, before
    /// [`ready`](Self::ready); check it, and [`refuse`](Self::refuse) it if it is not what
    /// this version understands.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let generation = gracenet::Generation::builder()
    ///     .hand_state(|| b"v1:counter=7".to_vec()) // given to the next generation
    ///     .start()?;
    /// match generation.inherited_state().await? {
    ///     None => {}                                  // a first start: nothing handed
    ///     Some(s) if s.starts_with(b"v1:") => {}      // use it
    ///     Some(_) => {
    ///         generation.refuse("unknown state version"); // the old generation keeps serving
    ///         return Err("refused".into());
    ///     }
    /// }
    /// generation.ready()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when the state is larger than the limit ([`GenerationBuilder::max_state`](super::GenerationBuilder::max_state)),
    /// is cut short, or does not arrive within the ready timeout.
    pub async fn inherited_state(&self) -> Result<Option<Vec<u8>>, Error> {
        let io = |what: String, source: std::io::Error| Error::Io { what, source };
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
        let max = self.shared.settings.max_state;
        let read = channel::read_state(&mut stream, max);
        self.shared.state_read.store(true, Ordering::SeqCst);
        match tokio::time::timeout(self.shared.settings.ready_timeout, read).await {
            Ok(Ok(state)) => Ok(crate::metrics::state_inherited(state)),
            Ok(Err(e)) => Err(io("cannot read the handed-over state".into(), e)),
            Err(_) => Err(io(
                "cannot read the handed-over state".into(),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "not handed within the ready timeout",
                ),
            )),
        }
    }

    /// Hands a live connection to the generation that took over (once this one drains after
    /// a restart): `stream`'s fd goes to the new process with `unread` (bytes read from it
    /// but not handled) and `state` (anything the application attaches), and this call waits
    /// for the new process to answer. `Ok` once it has taken the connection: drop `stream`
    /// then (its client sees no close; its next reply comes from the new process). Call it
    /// where the connection is quiet (between requests or lines). The new process receives
    /// it from [`inherited_connections`](Self::inherited_connections); if that process dies
    /// later, the connections it took close with it.
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
    /// the new process did not take it (see above). Either way: keep serving `stream`.
    pub async fn hand_over(
        &self,
        stream: &crate::tokio::Stream,
        unread: &[u8],
        state: &[u8],
    ) -> Result<(), Error> {
        use std::os::fd::AsFd;
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

    /// The connections the previous generation hands over (see [`hand_over`](Self::hand_over)),
    /// as they arrive: serve each as if accepted (tracking it), its `unread` bytes first.
    /// `None` in a first generation, or one started by Go grace or systemd. Call it after
    /// [`ready`](Self::ready) (the previous generation hands connections over once this one
    /// serves), and keep calling [`next`](super::InheritedConnections::next) until it returns
    /// `None`: a connection is this process's once `next` has returned it (the previous
    /// generation is told then, and only then lets go of it); one this process cannot take
    /// (it is out of fds, say) is answered so, and the previous generation goes on serving
    /// it. The previous generation waits 10 s at most for an answer.
    ///
    /// # Errors
    /// [`Error::Io`] when the channel cannot be read.
    pub async fn inherited_connections(&self) -> Result<Option<InheritedConnections>, Error> {
        let io = |source: std::io::Error| Error::Io {
            what: "cannot receive handed-over connections".into(),
            source,
        };
        let fd = self
            .shared
            .parent_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(fd) = fd else { return Ok(None) };
        let Some(mut channel) = channel::open(fd).map_err(io)? else {
            return Ok(None);
        };
        if !self.shared.state_read.swap(true, Ordering::SeqCst) {
            // The state section comes first: skip it (this application does not read it).
            if !channel::skip_state(&mut channel).await.map_err(io)? {
                return Ok(None);
            }
        }
        Ok(Some(InheritedConnections::new(channel)))
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
            tracing::error!(%reason, "refusing what the previous generation handed over");
            link.refuse(reason);
        }
    }
}
