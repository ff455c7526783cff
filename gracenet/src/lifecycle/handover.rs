//! Live connections handed to the next generation over the channel between the two
//! processes (`SCM_RIGHTS`), each with the bytes the old process had read but not yet handled
//! and an application-defined state. The client sees no close and no reset: its next reply
//! comes from the new process, on the same connection.
//!
//! A hand-over is acknowledged. A connection is the new process's only once the new process
//! has answered that it took it; until then the old process keeps its fd, and the
//! application its unread bytes. When the answer is "not taken" (its fd did not arrive: the
//! new process is at its open-file limit, say), when the channel closes first (the new
//! process exited or crashed) or when no answer comes within [`ANSWER_TIMEOUT`], the
//! connection stays with the old process, which serves it as before. A frame the new process
//! cannot take costs that frame only: it answers "not taken" and reads on.
//!
//! # On the channel
//! After the handed-over application state (see
//! [`GenerationBuilder::hand_state`](super::GenerationBuilder::hand_state)):
//!
//! - old to new, one frame per connection: `H`, the unread bytes' length and the state's
//!   length (u32, little-endian) and the frame's id (u64, little-endian), with the
//!   connection's fd attached to these 17 bytes; then the unread bytes and the state.
//! - new to old, one answer per frame, 10 bytes: `A` (taken) or `N` (not taken), the frame's
//!   id (u64, little-endian) and why not (0 with `A`; with `N`: 1 its fd did not arrive,
//!   2 the fd is not a usable stream socket, 3 more than one fd came).
//!
//! # In which order
//! At most [`WINDOW`] connections are offered and unanswered at once; an offer beyond them
//! waits for its turn. The turn goes to a waiting connection whose client has sent something
//! since it began to wait (Linux: its socket turns readable in an epoll instance of the
//! turns' own), else to the offer that asked last. A server offers its idle connections as
//! soon as it drains and each busy one once its request is answered, so busy connections,
//! whose clients are about to send their next request, do not wait behind thousands of idle
//! ones (each costs both processes some tens of microseconds). The window keeps the frames
//! queued in the channel few, so that order is the order the new process reads them in.
//!
//! Giving up on a missing answer is safe: the old process first shuts the channel down both
//! ways, so an answer the new process writes after that fails (`EPIPE`) and it closes its
//! copy of the connection instead of serving it, while an answer written before is still
//! read. The kernel checks the shutdown and queues the answer under one lock: no answer falls
//! between.
//!
//! A frame tagged `C` (9 bytes: the two lengths, no id) comes from an older gracenet, which
//! reads no answers: it is taken without one. The last frame, tagged `F`, is the previous
//! generation's final state (`channel`'s): the reader here passes it on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, recvmsg, sendmsg};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::tokio::Stream;

/// The most bytes of unread data or state one handed connection may carry.
pub(crate) const MAX_HANDED_BYTES: u32 = 16 * 1024 * 1024;

/// How long the next generation may take to answer for a connection offered to it (sending
/// included). Past it, this process gives up on the channel: the connection and every other
/// one still unanswered stay here, and no more are offered.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections may be offered and not yet answered at once (see the module docs,
/// "In which order").
pub(crate) const WINDOW: usize = 32;

/// A frame's tag: a connection, with an id to answer.
const FRAME: u8 = b'H';
/// An older gracenet's frame: a connection without an id, taken without an answer.
const LEGACY_FRAME: u8 = b'C';
const FRAME_HEADER: usize = 17;
const LEGACY_HEADER: usize = 9;
/// The answers' tags.
const TAKEN: u8 = b'A';
const NOT_TAKEN: u8 = b'N';
const ANSWER: usize = 10;

/// Why the next generation did not take a connection (an `N` answer's last byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Its fd did not arrive (`MSG_CTRUNC`: the receiver is at its open-file limit).
    FdMissing,
    /// The fd is not a stream socket tokio can serve.
    Unusable,
    /// More than one fd came with it.
    ExtraFds,
    /// A reason this gracenet does not know (from a newer one).
    Other(u8),
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::FdMissing => 1,
            Refusal::Unusable => 2,
            Refusal::ExtraFds => 3,
            Refusal::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::FdMissing,
            2 => Refusal::Unusable,
            3 => Refusal::ExtraFds,
            other => Refusal::Other(other),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::FdMissing => f.write_str(
                "its fd did not arrive (is the new process at its open-file limit, RLIMIT_NOFILE?)",
            ),
            Refusal::Unusable => f.write_str("its fd is not a usable stream socket"),
            Refusal::ExtraFds => f.write_str("it came with more than one fd"),
            Refusal::Other(code) => write!(f, "reason {code}"),
        }
    }
}

/// What the next generation answered for one frame.
#[derive(Debug)]
enum Answer {
    Taken,
    NotTaken(Refusal),
}

/// The sending side of the channel to the generation that took over: offers it connections
/// and learns, per connection, whether it took it.
pub(crate) struct Handover {
    /// The channel's write side, shared with the state hand-over (which goes first).
    out: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// The channel's fd, for shutting it down; open for as long as `out` is.
    raw: Option<RawFd>,
    waiting: Arc<Mutex<Waiting>>,
    /// Who offers next, once [`WINDOW`] offers wait for their answer.
    turns: Turns,
    /// The next generation's number and pid, for the logs.
    next: u64,
    pid: u32,
}

/// The turns to offer a connection: [`WINDOW`] at once. When none is free, the next goes to
/// a waiting offer whose client has spoken since it began to wait (its socket is readable),
/// else to the offer that asked last.
struct Turns {
    state: Arc<Mutex<TurnState>>,
}

struct TurnState {
    free: usize,
    last_key: u64,
    /// The offers waiting for a turn, by when they asked (the latest last).
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
    /// The waiting offers' sockets, watched for their clients speaking; `None` where that is
    /// not supported (the order is then by when they asked alone).
    watch: Option<crate::sys::ReadWatch>,
    /// Offers whose clients spoke, first come first: they go next.
    spoke: VecDeque<u64>,
}

/// A turn, given back when dropped.
struct Turn {
    state: Arc<Mutex<TurnState>>,
}

impl Turns {
    fn new(window: usize) -> Turns {
        Turns {
            state: Arc::new(Mutex::new(TurnState {
                free: window,
                last_key: 0,
                waiting: BTreeMap::new(),
                watch: crate::sys::ReadWatch::new().ok(),
                spoke: VecDeque::new(),
            })),
        }
    }

    /// Waits for a turn to offer `conn`. Cancel-safe: a turn given to a call dropped
    /// meanwhile goes on to the next one waiting.
    async fn take(&self, conn: BorrowedFd<'_>) -> Turn {
        let (key, rx) = {
            let mut state = lock_turns(&self.state);
            if state.free > 0 {
                state.free -= 1;
                return Turn {
                    state: self.state.clone(),
                };
            }
            state.last_key += 1;
            let key = state.last_key;
            let (tx, rx) = oneshot::channel();
            state.waiting.insert(key, tx);
            if let Some(watch) = &state.watch {
                // Not watched (out of memory, say): it waits its turn by when it asked.
                let _ = watch.add(conn, key);
            }
            (key, rx)
        };
        let mut pending = PendingTurn {
            rx: Some(rx),
            conn,
            key,
            state: &self.state,
        };
        if let Some(rx) = pending.rx.as_mut() {
            // Its sender is dropped only once sent, or with the whole `Turns`, which outlives
            // this call.
            let _ = rx.await;
        }
        pending.rx = None;
        Turn {
            state: self.state.clone(),
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock_turns(&self.state).waiting.len()
    }
}

/// An offer waiting for its turn. Dropped, it stops watching its socket; dropped before its
/// turn was taken up (the call was cancelled), the turn goes on.
struct PendingTurn<'a> {
    rx: Option<oneshot::Receiver<()>>,
    conn: BorrowedFd<'a>,
    key: u64,
    state: &'a Arc<Mutex<TurnState>>,
}

impl Drop for PendingTurn<'_> {
    fn drop(&mut self) {
        let mut state = lock_turns(self.state);
        if let Some(watch) = &state.watch {
            watch.remove(self.conn);
        }
        state.waiting.remove(&self.key);
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                give_turn(&mut state);
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        give_turn(&mut lock_turns(&self.state));
    }
}

/// Gives a turn to the waiting offer whose client spoke first, else to the latest one
/// waiting, or frees it.
fn give_turn(state: &mut TurnState) {
    if state.spoke.is_empty()
        && !state.waiting.is_empty()
        && let Some(watch) = &state.watch
    {
        let spoke = watch.ready();
        state.spoke.extend(spoke);
    }
    while let Some(key) = state.spoke.pop_front() {
        // Not in `waiting`: its offer ended before this turn.
        if let Some(next) = state.waiting.remove(&key)
            && next.send(()).is_ok()
        {
            return;
        }
    }
    while let Some((_, next)) = state.waiting.pop_last() {
        if next.send(()).is_ok() {
            return;
        }
    }
    state.free += 1;
}

fn lock_turns(state: &Mutex<TurnState>) -> MutexGuard<'_, TurnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The offers waiting for their answer.
#[derive(Default)]
struct Waiting {
    last_id: u64,
    answers: HashMap<u64, oneshot::Sender<Answer>>,
    /// The connections being offered or taken, by socket (device and inode): one handed over
    /// is the next generation's, and offering it again would have it served twice.
    offered: std::collections::HashSet<(u64, u64)>,
    /// Set once no more offers go out (the channel ended or was given up).
    closed: bool,
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handover {
    /// The channel to generation `next` (pid `pid`): frames go out on `out`; the answers
    /// come in on `answers`, read by a task of its own. Without `answers` nothing can be
    /// acknowledged, so nothing is offered.
    pub(crate) fn new(
        out: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
        answers: Option<OwnedReadHalf>,
        next: u64,
        pid: u32,
    ) -> Handover {
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let raw = answers.as_ref().map(|a| a.as_ref().as_raw_fd());
        match answers {
            Some(answers) => {
                tokio::spawn(read_answers(answers, waiting.clone(), next, pid));
            }
            None => lock(&waiting).closed = true,
        }
        Handover {
            out,
            raw,
            waiting,
            turns: Turns::new(WINDOW),
            next,
            pid,
        }
    }

    /// Whether connections can still be offered: the channel has not ended (the next
    /// generation did not exit or stop answering) nor been given up.
    pub(crate) fn is_open(&self) -> bool {
        !lock(&self.waiting).closed
    }

    /// Offers the connection `conn` with `unread` and `state`, and waits for the answer, for
    /// `timeout` at most. `Ok` once the next generation has taken it: close `conn` here then.
    /// On an error it is still this process's, and the next generation will not serve it.
    ///
    /// Not cancel-safe once the frame is sent: let it finish (it is bounded by `timeout`).
    pub(crate) async fn offer(
        &self,
        conn: BorrowedFd<'_>,
        unread: &[u8],
        state: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .ok()
                .filter(|&n| n <= MAX_HANDED_BYTES)
                .ok_or_else(|| io::Error::other(format!("more than {MAX_HANDED_BYTES} bytes to hand over")))
        };
        let (unread_len, state_len) = (len(unread)?, len(state)?);
        let socket = connection_identity(conn)?;
        let mut offered = Offered {
            waiting: &self.waiting,
            socket,
            taken: false,
        };
        if !lock(&self.waiting).offered.insert(socket) {
            offered.taken = true; // Not this offer's to forget.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this connection was handed over already, or is being handed over: a connection goes to the next generation once",
            ));
        }
        let closed = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the channel to generation {} is closed", self.next),
            )
        };
        if !self.is_open() {
            // Not even a turn to wait for.
            return Err(closed());
        }
        // Held until the answer (or the end of this offer): at most WINDOW are unanswered.
        let _turn = self.turns.take(conn).await;
        let (id, mut answer) = {
            let mut waiting = lock(&self.waiting);
            if waiting.closed {
                return Err(closed());
            }
            waiting.last_id += 1;
            let id = waiting.last_id;
            let (tx, rx) = oneshot::channel();
            waiting.answers.insert(id, tx);
            (id, rx)
        };
        let mut header = [0u8; FRAME_HEADER];
        header[0] = FRAME;
        header[1..5].copy_from_slice(&unread_len.to_le_bytes());
        header[5..9].copy_from_slice(&state_len.to_le_bytes());
        header[9..17].copy_from_slice(&id.to_le_bytes());
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(deadline, self.send(conn, &header, unread, state)).await;
        let failed = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not sent within {:.1} s", timeout.as_secs_f64()),
            )),
        };
        if let Some(e) = failed {
            lock(&self.waiting).answers.remove(&id);
            self.give_up(&format!("sending it a connection failed: {e}"));
            return Err(e);
        }
        let mut timed_out = false;
        let answer = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answer) => answer,
            Err(_) => {
                timed_out = true;
                self.give_up(&format!(
                    "it did not answer for a connection within {:.1} s",
                    timeout.as_secs_f64()
                ));
                // Bounded: after the shutdown the reader reads the answers written before it,
                // then end-of-file, and lets go of every offer still waiting.
                answer.await
            }
        };
        match answer {
            Ok(Answer::Taken) => {
                offered.taken = true;
                Ok(())
            }
            Ok(Answer::NotTaken(why)) => {
                crate::log::warn!(
                    next = self.next,
                    pid = self.pid,
                    reason = %why,
                    "the next generation did not take a connection: it stays here"
                );
                Err(io::Error::other(format!(
                    "generation {} did not take it: {why}",
                    self.next
                )))
            }
            Err(_) if timed_out => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "generation {} did not answer within {:.1} s",
                    self.next,
                    timeout.as_secs_f64()
                ),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "the channel to generation {} closed before it answered",
                    self.next
                ),
            )),
        }
    }

    /// Writes one frame, the fd with its first bytes.
    async fn send(&self, conn: BorrowedFd<'_>, header: &[u8], unread: &[u8], state: &[u8]) -> io::Result<()> {
        let out = self.out.lock().await;
        let socket: &UnixStream = out.as_ref();
        // Declared after `out`, so dropped before it: a frame cut short (an error, or this
        // future dropped) shuts the channel down while no other frame can follow it.
        let mut cut = CutShort {
            raw: self.raw,
            waiting: &self.waiting,
            done: false,
        };
        let sent = loop {
            socket.writable().await?;
            let attempt = socket.try_io(Interest::WRITABLE, || {
                let iov = [io::IoSlice::new(header)];
                let fds = [conn.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        send_all(socket, &header[sent..]).await?;
        send_all(socket, unread).await?;
        send_all(socket, state).await?;
        cut.done = true;
        Ok(())
    }

    /// Offers nothing more: shuts the channel down both ways (an answer the next generation
    /// writes from now on fails there, and it closes that connection), so the offers still
    /// waiting end with the answers already written, or as not taken.
    fn give_up(&self, why: &str) {
        let first = !std::mem::replace(&mut lock(&self.waiting).closed, true);
        shut_down(self.raw);
        if first {
            crate::log::warn!(
                next = self.next,
                pid = self.pid,
                reason = %why,
                "handing the next generation no more connections; those it did not take stay here"
            );
        }
    }
}

/// Shuts the channel down when a frame was cut short (see [`Handover::send`]).
struct CutShort<'a> {
    raw: Option<RawFd>,
    waiting: &'a Mutex<Waiting>,
    done: bool,
}

impl Drop for CutShort<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.waiting).closed = true;
            shut_down(self.raw);
        }
    }
}

fn shut_down(raw: Option<RawFd>) {
    if let Some(raw) = raw {
        // Already shut down, or the peer gone: nothing left to stop.
        let _ = nix::sys::socket::shutdown(raw, Shutdown::Both);
    }
}

/// Reads the next generation's answers and gives each to the offer waiting for it, until the
/// channel ends; then every offer still waiting is told "not taken" (its sender dropped).
async fn read_answers(input: OwnedReadHalf, waiting: Arc<Mutex<Waiting>>, next: u64, pid: u32) {
    // Answers come in batches while connections go over: one read takes many.
    let mut input = tokio::io::BufReader::with_capacity(ANSWER * WINDOW, input);
    let mut buf = [0u8; ANSWER];
    let end = loop {
        // End-of-file or an error both mean the next generation wrote its last answer (a
        // read fails only once everything queued has been read).
        if let Err(e) = input.read_exact(&mut buf).await {
            break e;
        }
        let id = u64::from_le_bytes([buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8]]);
        let answer = match buf[0] {
            TAKEN => Answer::Taken,
            NOT_TAKEN => Answer::NotTaken(Refusal::from_code(buf[9])),
            other => {
                // Nothing after it can be trusted: no more answers.
                shut_down(Some(input.get_ref().as_ref().as_raw_fd()));
                break io::Error::other(format!("an answer tagged {other:#04x}"));
            }
        };
        let offer = lock(&waiting).answers.remove(&id);
        match offer.map(|tx| tx.send(answer)) {
            Some(Ok(())) => {}
            Some(Err(Answer::Taken)) => crate::log::error!(
                next,
                pid,
                connection = id,
                "the next generation took a connection whose hand_over call was cancelled: both processes may serve it"
            ),
            Some(Err(_)) => {}
            None => crate::log::warn!(
                next,
                pid,
                connection = id,
                "the next generation answered for a connection that waits for no answer"
            ),
        }
    };
    let left = {
        let mut waiting = lock(&waiting);
        waiting.closed = true;
        std::mem::take(&mut waiting.answers)
    };
    if left.is_empty() {
        crate::log::debug!(next, pid, %end, "the channel to the next generation ended");
    } else {
        crate::log::warn!(
            next,
            pid,
            %end,
            unanswered = left.len(),
            "the channel to the next generation ended with connections unanswered: they stay here"
        );
    }
}

/// Writes all of `bytes` on `socket`, without `SIGPIPE` when the peer is gone.
async fn send_all(socket: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        let attempt = socket.try_io(Interest::WRITABLE, || {
            nix::sys::socket::send(socket.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
        });
        match attempt {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection the previous generation handed over.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandedConnection {
    /// The connection, as it was: same peer, same local port, nothing closed.
    pub stream: Stream,
    /// Bytes the previous generation had read from it but not handled: handle them first.
    pub unread: Vec<u8>,
    /// What the previous generation's application attached to it.
    pub state: Vec<u8>,
}

/// The connections the previous generation hands over, as they arrive. Each one this
/// process takes is acknowledged as [`next`](Self::next) returns it; one it cannot take (its
/// fd did not arrive, at the open-file limit) is answered "not taken" and stays with the
/// previous generation, and the stream reads on.
///
/// The channel is read by a task of its own from the moment this generation serves (so
/// the previous generation's final state, which comes after every connection, is read
/// whether or not connections are taken); a connection it reads waits, unanswered, until
/// `next` returns it.
#[derive(Debug)]
pub struct InheritedConnections {
    inbox: Arc<Inbox>,
    /// The channel's write side, for the answers; shared with the reader.
    answers: Arc<OwnedWriteHalf>,
}

/// What the reader found and `next` has not handed out yet.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<Queue>,
    arrived: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// Connections read, not yet answered (those with an id) nor handed out.
    offered: std::collections::VecDeque<(Option<u64>, HandedConnection)>,
    /// The channel has ended (or `next` gave up on it): nothing more will arrive.
    ended: bool,
    /// The [`InheritedConnections`] was dropped: the reader answers "not taken".
    dropped: bool,
}

/// Where the reader puts the previous generation's final state, and the most bytes it takes.
pub(crate) struct FinalSlot {
    pub(crate) max: u64,
    pub(crate) tx: oneshot::Sender<Result<Vec<u8>, String>>,
}

/// One frame's outcome.
enum Received {
    /// A connection, answered by `next` when it hands it out (`None`: an older gracenet's
    /// frame, taken without an answer).
    Connection(Option<u64>, HandedConnection),
    /// Not taken (and answered so): read on.
    Skipped,
    /// The final state's length: its bytes follow.
    Final(u64),
    /// The previous generation is done handing over.
    End,
}

impl InheritedConnections {
    /// Reads `channel` (from its first frame) in a task of its own.
    #[cfg(test)]
    pub(crate) fn new(channel: UnixStream) -> InheritedConnections {
        Self::read(channel, false, None)
    }

    /// Reads `channel` in a task of its own: first skips the state section if `skip_state`
    /// (nobody read it), then queues the connections for [`next`](Self::next) and puts the
    /// final state in `last`, until the channel ends.
    pub(crate) fn read(
        channel: UnixStream,
        skip_state: bool,
        last: Option<FinalSlot>,
    ) -> InheritedConnections {
        let (input, out) = channel.into_split();
        let inbox = Arc::new(Inbox::default());
        let answers = Arc::new(out);
        tokio::spawn(read_frames(
            input,
            answers.clone(),
            inbox.clone(),
            skip_state,
            last,
        ));
        InheritedConnections { inbox, answers }
    }

    /// The next handed connection, taken (the previous generation has been told, and has
    /// let go of it); `None` once the previous generation is done handing over (it closed
    /// the channel, or exited), or the channel is unreadable.
    pub async fn next(&mut self) -> Option<HandedConnection> {
        loop {
            let next = {
                let mut queue = lock_queue(&self.inbox);
                match queue.offered.pop_front() {
                    Some(next) => Some(next),
                    None if queue.ended => return None,
                    None => None,
                }
            };
            let Some((id, conn)) = next else {
                // A wake-up given while nobody waited is kept (one waiter): none is lost.
                self.inbox.arrived.notified().await;
                continue;
            };
            let Some(id) = id else {
                return Some(crate::metrics::connection_inherited(conn));
            };
            // Served only if the answer is out: an answer that fails means the previous
            // generation gave up on the channel and serves the connection itself (dropping
            // `conn` closes this copy only).
            if let Err(e) = answer(self.answers.as_ref().as_ref(), TAKEN, id, 0).await {
                crate::log::warn!(error = %e, "receiving handed-over connections failed: taking no more");
                let mut queue = lock_queue(&self.inbox);
                queue.ended = true;
                queue.offered.clear();
                return None;
            }
            return Some(crate::metrics::connection_inherited(conn));
        }
    }
}

impl Drop for InheritedConnections {
    /// The connections read and not handed out are not taken: answered so at once where the
    /// channel has room (10 bytes each), or else the previous generation's wait ends them.
    fn drop(&mut self) {
        let left = {
            let mut queue = lock_queue(&self.inbox);
            queue.dropped = true;
            std::mem::take(&mut queue.offered)
        };
        let socket: &UnixStream = self.answers.as_ref().as_ref();
        for id in left.into_iter().filter_map(|(id, _)| id) {
            let mut bytes = [0u8; ANSWER];
            bytes[0] = NOT_TAKEN;
            bytes[1..9].copy_from_slice(&id.to_le_bytes());
            let _ = nix::sys::socket::send(
                socket.as_raw_fd(),
                &bytes,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            );
        }
    }
}

fn lock_queue(inbox: &Inbox) -> MutexGuard<'_, Queue> {
    inbox.queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reader of the channel from the previous generation (see [`InheritedConnections::read`]).
async fn read_frames(
    mut input: OwnedReadHalf,
    answers: Arc<OwnedWriteHalf>,
    inbox: Arc<Inbox>,
    skip_state: bool,
    mut last: Option<FinalSlot>,
) {
    let ended = if skip_state && !super::channel::skip_state(&mut input).await.unwrap_or(false) {
        "the channel ended within the state".to_owned()
    } else {
        loop {
            match receive(&mut input, answers.as_ref().as_ref()).await {
                Ok(Received::Connection(id, conn)) => {
                    let refused = {
                        let mut queue = lock_queue(&inbox);
                        match id {
                            // Nobody will take it: it stays with the previous generation.
                            Some(id) if queue.dropped => Some(id),
                            _ => {
                                queue.offered.push_back((id, conn));
                                None
                            }
                        }
                    };
                    match refused {
                        None => inbox.arrived.notify_one(),
                        Some(id) => {
                            if answer(answers.as_ref().as_ref(), NOT_TAKEN, id, 0).await.is_err() {
                                break "the channel closed".to_owned();
                            }
                        }
                    }
                }
                Ok(Received::Skipped) => {}
                Ok(Received::Final(len)) => {
                    let got = read_final(&mut input, len, last.as_ref().map_or(0, |l| l.max)).await;
                    if let Err(e) = &got {
                        crate::log::warn!(error = %e, "the previous generation's final state was not taken");
                    }
                    if let Some(slot) = last.take() {
                        let _ = slot.tx.send(got);
                    }
                }
                Ok(Received::End) => break "the previous generation closed the channel".to_owned(),
                Err(e) => {
                    crate::log::warn!(error = %e, "receiving handed-over connections failed: taking no more");
                    break e.to_string();
                }
            }
        }
    };
    if let Some(slot) = last.take() {
        let _ = slot.tx.send(Err(format!(
            "it ended before handing its final state ({ended}): it crashed, was killed, or is a gracenet that hands none"
        )));
    }
    // The previous generation reads no answer any more: what was read and not answered
    // stays with it (dropping these closes this process's copies only).
    let mut queue = lock_queue(&inbox);
    queue.ended = true;
    queue.offered.retain(|(id, _)| id.is_none());
    drop(queue);
    inbox.arrived.notify_one();
}

/// Reads the final state's `len` bytes: an error (the bytes read and dropped, so the
/// previous generation is not held) when `len` is over `max`.
async fn read_final(input: &mut OwnedReadHalf, len: u64, max: u64) -> Result<Vec<u8>, String> {
    if len > max {
        let _ = tokio::io::copy(&mut input.take(len), &mut tokio::io::sink()).await;
        return Err(format!(
            "{len} bytes offered, more than the limit of {max} (GenerationBuilder::max_state)"
        ));
    }
    let mut bytes = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    input
        .read_exact(&mut bytes)
        .await
        .map_err(|e| format!("cut short: {e}"))?;
    Ok(bytes)
}

/// The fds that came with one frame's header, and whether some were cut off.
#[derive(Default)]
struct Fds {
    fds: Vec<OwnedFd>,
    truncated: bool,
}

impl Fds {
    /// The frame's one fd; what else arrived is closed.
    fn one(mut self) -> Result<OwnedFd, Refusal> {
        match (self.truncated, self.fds.len()) {
            (false, 1) => self.fds.pop().ok_or(Refusal::FdMissing),
            (_, 0) => Err(Refusal::FdMissing),
            _ => Err(Refusal::ExtraFds),
        }
    }
}

/// Reads one frame; answers it when it cannot be taken.
async fn receive(channel: &mut OwnedReadHalf, answers: &UnixStream) -> io::Result<Received> {
    let mut header = [0u8; FRAME_HEADER];
    let mut fds = Fds::default();
    if !receive_header(channel.as_ref(), &mut header[..LEGACY_HEADER], &mut fds).await? {
        return Ok(Received::End);
    }
    let id = match header[0] {
        FRAME => {
            if !receive_header(channel.as_ref(), &mut header[LEGACY_HEADER..], &mut fds).await? {
                return Err(cut_short());
            }
            Some(u64::from_le_bytes([
                header[9], header[10], header[11], header[12], header[13], header[14], header[15], header[16],
            ]))
        }
        LEGACY_FRAME => None,
        super::channel::FINAL => {
            let len = u64::from_le_bytes([
                header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8],
            ]);
            return Ok(Received::Final(len));
        }
        other => {
            return Err(io::Error::other(format!(
                "the channel carried a frame tagged {other:#04x}, not a connection"
            )));
        }
    };
    let unread_len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let state_len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if unread_len > MAX_HANDED_BYTES || state_len > MAX_HANDED_BYTES {
        return Err(io::Error::other(format!(
            "a handed-over connection carries {unread_len} unread and {state_len} state bytes, more than {MAX_HANDED_BYTES}"
        )));
    }
    let mut unread = vec![0u8; unread_len as usize];
    channel.read_exact(&mut unread).await?;
    let mut state = vec![0u8; state_len as usize];
    channel.read_exact(&mut state).await?;
    let stream = fds
        .one()
        .and_then(|fd| stream_from(fd).map_err(|_| Refusal::Unusable));
    match stream {
        Ok(stream) => Ok(Received::Connection(
            id,
            HandedConnection {
                stream,
                unread,
                state,
            },
        )),
        Err(why) => {
            match id {
                None => {
                    // An older gracenet's frame: nobody to answer.
                    crate::log::warn!(reason = %why, "{}: it is lost", super::messages::CONNECTION_NOT_TAKEN);
                }
                Some(id) => {
                    crate::log::warn!(
                        reason = %why,
                        "{}: it stays with the previous generation",
                        super::messages::CONNECTION_NOT_TAKEN
                    );
                    answer(answers, NOT_TAKEN, id, why.code()).await?;
                }
            }
            Ok(Received::Skipped)
        }
    }
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the channel closed in the middle of a frame",
    )
}

/// Fills `header` from the channel with `recvmsg`, collecting the fds that come with it.
/// `false` when the channel is at its end before the first byte.
async fn receive_header(channel: &UnixStream, header: &mut [u8], fds: &mut Fds) -> io::Result<bool> {
    let mut got = 0;
    while got < header.len() {
        channel.readable().await?;
        let read = channel.try_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(&mut header[got..])];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = recvmsg::<()>(
                channel.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                crate::sys::RECV_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut received = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        received.extend(fds);
                    }
                }
            }
            Ok((msg.bytes, received, msg.flags.contains(MsgFlags::MSG_CTRUNC)))
        });
        let (n, received, truncated) = match read {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        for raw in received {
            // SAFETY: the kernel just installed this fd in this process for us; nothing
            // else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            if crate::socket::set_cloexec(&owned).is_err() {
                // Closed here, counted as missing: it must not leak into a child.
                fds.truncated = true;
                continue;
            }
            fds.fds.push(owned);
        }
        fds.truncated |= truncated;
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err(cut_short()) };
        }
        got += n;
    }
    Ok(true)
}

/// Answers frame `id`: `tag` (`A` or `N`) and why not.
async fn answer(channel: &UnixStream, tag: u8, id: u64, why: u8) -> io::Result<()> {
    let mut bytes = [0u8; ANSWER];
    bytes[0] = tag;
    bytes[1..9].copy_from_slice(&id.to_le_bytes());
    bytes[9] = why;
    send_all(channel, &bytes).await
}

/// A connection being offered, forgotten again unless it was taken.
struct Offered<'a> {
    waiting: &'a Mutex<Waiting>,
    socket: (u64, u64),
    taken: bool,
}

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        if !self.taken {
            lock(self.waiting).offered.remove(&self.socket);
        }
    }
}

/// Which socket `fd` is (its device and inode), if it is a connection that can be handed
/// over: a stream socket, not listening. Anything else is refused here, before the next
/// generation is bothered with it (it would refuse a file; a listening socket it would take
/// for a connection and fail on).
fn connection_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let refuse = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: only a connected stream socket can be handed over"),
        )
    };
    match socket2::SockRef::from(&fd).r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        Ok(_) => return Err(refuse("not a stream socket")),
        Err(_) => return Err(refuse("not a socket")),
    }
    if crate::sys::is_listening(fd)? {
        return Err(refuse("a listening socket"));
    }
    let stat = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    // dev_t is signed on some systems (macOS): only its bits matter here.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// A connected stream socket's fd as a tokio stream of the right kind.
fn stream_from(fd: OwnedFd) -> io::Result<Stream> {
    if socket2::SockRef::from(&fd).r#type()? != socket2::Type::STREAM {
        return Err(io::Error::other("not a stream socket"));
    }
    let family = crate::sys::socket_family(fd.as_fd())?;
    if family == libc::AF_UNIX {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Stream::Unix(tokio::net::UnixStream::from_std(s)?))
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Stream::Tcp(tokio::net::TcpStream::from_std(s)?))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::sync::Arc;
    use std::time::Duration;

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UnixStream};

    use super::{Handover, InheritedConnections};

    /// A handing side and a receiving side, over a real socket pair.
    fn channel() -> (Handover, InheritedConnections) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (input, out) = ours.into_split();
        let handover = Handover::new(Arc::new(tokio::sync::Mutex::new(out)), Some(input), 2, 0);
        (handover, InheritedConnections::new(theirs))
    }

    /// A loopback TCP connection: (client, server side).
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Writes `bytes` with `fds` attached, as a sender of another gracenet would.
    fn send_raw(socket: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let iov = [std::io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let n = sendmsg::<()>(socket.as_raw_fd(), &iov, cmsg, MsgFlags::MSG_NOSIGNAL, None).unwrap();
        assert_eq!(n, bytes.len());
    }

    fn header(tag: u8, unread: u32, state: u32, id: u64) -> Vec<u8> {
        let mut h = vec![tag];
        h.extend(unread.to_le_bytes());
        h.extend(state.to_le_bytes());
        if tag == super::FRAME {
            h.extend(id.to_le_bytes());
        }
        h
    }

    async fn talk(client: &mut TcpStream, server: &mut (impl AsyncReadExt + Unpin), line: &[u8]) {
        client.write_all(line).await.unwrap();
        let mut got = vec![0u8; line.len()];
        tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
            .await
            .expect("the line arrives")
            .unwrap();
        assert_eq!(got, line);
    }

    /// A receiving side that reads the final state too (at most `max` bytes).
    fn with_final(
        max: u64,
    ) -> (
        UnixStream,
        InheritedConnections,
        tokio::sync::oneshot::Receiver<Result<Vec<u8>, String>>,
    ) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inherited = InheritedConnections::read(theirs, false, Some(super::FinalSlot { max, tx }));
        (ours, inherited, rx)
    }

    #[tokio::test]
    async fn the_final_state_after_the_connections_is_read_whether_or_not_they_are_taken() {
        let (ours, mut inherited, last) = with_final(1024);
        let (input, out) = ours.into_split();
        let out = Arc::new(tokio::sync::Mutex::new(out));
        let handover = Handover::new(out.clone(), Some(input), 2, 0);
        let (_client, server) = connection().await;
        let (offered, received) = tokio::join!(
            handover.offer(server.as_fd(), b"", b"", Duration::from_secs(5)),
            inherited.next()
        );
        offered.expect("taken");
        assert!(received.is_some());
        crate::lifecycle::channel::write_final(&mut *out.lock().await, b"last write")
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), last)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Ok(&b"last write"[..]));
    }

    #[tokio::test]
    async fn a_final_state_over_the_limit_is_an_error_and_does_not_hold_the_sender() {
        let (mut ours, _inherited, last) = with_final(4);
        // More than a socket buffer: written whole only if the receiver reads it away.
        let big = vec![7u8; 4 * 1024 * 1024];
        tokio::time::timeout(
            Duration::from_secs(10),
            crate::lifecycle::channel::write_final(&mut ours, &big),
        )
        .await
        .expect("the receiver reads it away")
        .unwrap();
        let e = last.await.unwrap().expect_err("over the limit");
        assert!(e.contains("more than the limit of 4"), "{e}");
    }

    #[tokio::test]
    async fn a_channel_that_ends_without_the_final_state_says_so() {
        let (ours, _inherited, last) = with_final(1024);
        drop(ours);
        let e = tokio::time::timeout(Duration::from_secs(5), last)
            .await
            .unwrap()
            .unwrap()
            .expect_err("no final state");
        assert!(e.contains("it ended before handing its final state"), "{e}");
    }

    #[tokio::test]
    async fn a_taken_connection_is_acknowledged_and_served_by_the_receiver() {
        let (handover, mut inherited) = channel();
        let (mut client, server) = connection().await;
        let (offered, received) = tokio::join!(
            handover.offer(server.as_fd(), b"unread", b"state", Duration::from_secs(5)),
            inherited.next()
        );
        offered.expect("taken");
        let mut c = received.expect("received");
        assert_eq!(
            (c.unread.as_slice(), c.state.as_slice()),
            (&b"unread"[..], &b"state"[..])
        );
        drop(server);
        talk(&mut client, &mut c.stream, b"after\n").await;
    }

    #[tokio::test]
    async fn a_frame_without_its_fd_is_answered_not_taken_and_the_stream_reads_on() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut inherited = InheritedConnections::new(theirs);
        let receiving = tokio::spawn(async move { inherited.next().await.map(|c| c.unread) });
        // The fd missing, as at the receiver's open-file limit (MSG_CTRUNC).
        let mut frame = header(super::FRAME, 3, 0, 7);
        frame.extend(b"abc");
        send_raw(&ours, &frame, &[]);
        let mut ours = ours;
        let mut answer = [0u8; super::ANSWER];
        ours.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], super::NOT_TAKEN);
        assert_eq!(u64::from_le_bytes(answer[1..9].try_into().unwrap()), 7);
        assert_eq!(answer[9], super::Refusal::FdMissing.code());
        // Two fds where one was expected: both closed, not taken either.
        let (_c1, s1) = connection().await;
        let (_c2, s2) = connection().await;
        let mut frame = header(super::FRAME, 0, 0, 8);
        frame.truncate(super::FRAME_HEADER);
        send_raw(&ours, &frame, &[s1.as_raw_fd(), s2.as_raw_fd()]);
        ours.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            (answer[0], answer[9]),
            (super::NOT_TAKEN, super::Refusal::ExtraFds.code())
        );
        // The stream goes on: the next connection is taken.
        let (input, out) = ours.into_split();
        let handover = Handover::new(Arc::new(tokio::sync::Mutex::new(out)), Some(input), 2, 0);
        let (_client, server) = connection().await;
        handover
            .offer(server.as_fd(), b"next", b"", Duration::from_secs(5))
            .await
            .expect("taken");
        let unread = tokio::time::timeout(Duration::from_secs(5), receiving)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unread.as_deref(), Some(&b"next"[..]));
    }

    #[tokio::test]
    async fn what_is_not_a_connection_is_refused_before_it_is_offered() {
        let (handover, mut inherited) = channel();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let (_, received) = tokio::join!(
            async {
                for (what, fd, says) in [
                    ("a datagram socket", udp.as_fd(), "not a stream socket"),
                    ("a listening socket", listener.as_fd(), "a listening socket"),
                    ("a file", file.as_fd(), "not a socket"),
                ] {
                    let refused = handover
                        .offer(fd, b"", b"", Duration::from_secs(5))
                        .await
                        .expect_err(what);
                    assert_eq!(
                        refused.kind(),
                        std::io::ErrorKind::InvalidInput,
                        "{what}: {refused}"
                    );
                    assert!(refused.to_string().contains(says), "{what}: {refused}");
                }
                let (_client, server) = connection().await;
                handover
                    .offer(server.as_fd(), b"", b"", Duration::from_secs(5))
                    .await
                    .expect("the next one is taken");
            },
            inherited.next()
        );
        assert!(received.is_some(), "the connection after the refused ones came");
    }

    #[tokio::test]
    async fn a_connection_is_handed_over_once() {
        let (handover, mut inherited) = channel();
        let (mut client, server) = connection().await;
        let (offered, received) = tokio::join!(
            handover.offer(server.as_fd(), b"", b"first", Duration::from_secs(5)),
            inherited.next()
        );
        offered.expect("taken");
        let mut taken = received.expect("received");
        // Again, by the same fd or another of the same socket: refused, not served twice.
        let copy = server.as_fd().try_clone_to_owned().unwrap();
        for fd in [server.as_fd(), copy.as_fd()] {
            let again = handover
                .offer(fd, b"", b"second", Duration::from_secs(5))
                .await
                .expect_err("handed over already");
            assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "{again}");
        }
        drop((server, copy));
        talk(&mut client, &mut taken.stream, b"served once\n").await;
        // A connection whose offer failed is not held as handed: offered again, it fails for
        // what it meets then (here the channel, given up after that failure), not as a
        // connection handed over already.
        let (_c, other) = connection().await;
        let failed = handover
            .offer(other.as_fd(), b"", b"", Duration::from_millis(1))
            .await;
        assert_eq!(
            failed.expect_err("not answered").kind(),
            std::io::ErrorKind::TimedOut
        );
        let again = handover
            .offer(other.as_fd(), b"", b"", Duration::from_secs(5))
            .await
            .expect_err("the channel was given up");
        assert_eq!(again.kind(), std::io::ErrorKind::BrokenPipe, "{again}");
    }

    #[tokio::test]
    async fn a_connection_the_receiver_cannot_use_is_answered_not_taken() {
        // A sender that does not check (an older build): the receiver refuses the fd.
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut inherited = InheritedConnections::new(theirs);
        let receiving = tokio::spawn(async move { inherited.next().await.is_some() });
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut frame = header(super::FRAME, 0, 0, 9);
        frame.truncate(super::FRAME_HEADER);
        send_raw(&ours, &frame, &[udp.as_raw_fd()]);
        let mut ours = ours;
        let mut answer = [0u8; super::ANSWER];
        ours.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            (answer[0], answer[9]),
            (super::NOT_TAKEN, super::Refusal::Unusable.code())
        );
        drop(ours);
        let took = tokio::time::timeout(Duration::from_secs(5), receiving)
            .await
            .unwrap()
            .unwrap();
        assert!(!took, "nothing was taken");
    }

    #[tokio::test]
    async fn an_unanswered_connection_stays_with_the_sender_and_a_late_receiver_does_not_take_it() {
        let (handover, mut inherited) = channel();
        let (mut client, mut server) = connection().await;
        let e = handover
            .offer(server.as_fd(), b"", b"", Duration::from_millis(200))
            .await
            .expect_err("nobody answered");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        // The receiver reads the frame late: its answer fails, so it closes its copy.
        let late = tokio::time::timeout(Duration::from_secs(5), inherited.next())
            .await
            .unwrap();
        assert!(late.is_none(), "taken after the sender gave it up: {late:?}");
        // Still the sender's, and nothing more is offered on that channel.
        talk(&mut client, &mut server, b"still here\n").await;
        let (_c, other) = connection().await;
        let closed = handover
            .offer(other.as_fd(), b"", b"", Duration::from_secs(5))
            .await
            .expect_err("the channel was given up");
        assert_eq!(closed.kind(), std::io::ErrorKind::BrokenPipe, "{closed}");
    }

    #[tokio::test]
    async fn a_receiver_gone_before_answering_leaves_the_connection_with_the_sender() {
        let (handover, inherited) = channel();
        drop(inherited);
        let (mut client, mut server) = connection().await;
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            handover.offer(server.as_fd(), b"", b"", Duration::from_secs(30)),
        )
        .await
        .expect("refused at once, not at the timeout")
        .expect_err("nobody to take it");
        assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        talk(&mut client, &mut server, b"still here\n").await;
    }

    #[tokio::test]
    async fn a_frame_from_an_older_gracenet_is_taken_without_an_answer() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut inherited = InheritedConnections::new(theirs);
        let (mut client, server) = connection().await;
        let mut frame = header(super::LEGACY_FRAME, 2, 0, 0);
        frame.extend(b"hi");
        send_raw(&ours, &frame, &[server.as_raw_fd()]);
        drop(server);
        let mut c = tokio::time::timeout(Duration::from_secs(5), inherited.next())
            .await
            .unwrap()
            .expect("taken");
        assert_eq!(c.unread, b"hi");
        talk(&mut client, &mut c.stream, b"x\n").await;
        let mut byte = [0u8; 1];
        assert_eq!(
            ours.try_read(&mut byte).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "no answer to an older sender"
        );
    }

    /// Waits, a bounded number of times, until `cond` holds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn past_the_window_a_connection_whose_client_speaks_goes_first_then_the_latest() {
        let (handover, mut inherited) = channel();
        let handover = Arc::new(handover);
        let mut clients = Vec::new();
        let mut offers = Vec::new();
        let mut offer = |name: String, server: TcpStream| {
            let handover = handover.clone();
            offers.push(tokio::spawn(async move {
                let taken = handover
                    .offer(server.as_fd(), b"", name.as_bytes(), Duration::from_secs(20))
                    .await;
                (name, taken.is_ok())
            }));
        };
        // The window's worth goes out at once and waits for its answers.
        for i in 0..super::WINDOW {
            let (client, server) = connection().await;
            clients.push(client);
            offer(format!("first {i}"), server);
        }
        until("the window is used up", || {
            let state = super::lock_turns(&handover.turns.state);
            state.free == 0
        })
        .await;
        // Ten more wait for a turn, one after the other.
        for i in 0..10 {
            let (client, server) = connection().await;
            clients.push(client);
            offer(format!("waiting {i}"), server);
            until("the offer waits for its turn", || {
                handover.turns.waiting() == i + 1
            })
            .await;
        }
        // The client of the third one waiting sends its next request.
        clients[super::WINDOW + 2]
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut order = Vec::new();
        for _ in 0..super::WINDOW + 10 {
            let c = tokio::time::timeout(Duration::from_secs(10), inherited.next())
                .await
                .expect("a connection arrives")
                .expect("taken");
            order.push(String::from_utf8(c.state).unwrap());
        }
        assert!(
            order[..super::WINDOW].iter().all(|n| n.starts_with("first")),
            "{order:?}"
        );
        let rest: Vec<_> = order[super::WINDOW..]
            .iter()
            .map(|n| n.replace("waiting ", ""))
            .collect();
        // Without a way to watch the sockets (the portable build), the latest first only.
        let watched = super::lock_turns(&handover.turns.state).watch.is_some();
        let expected = if watched {
            ["2", "9", "8", "7", "6", "5", "4", "3", "1", "0"]
        } else {
            ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]
        };
        assert_eq!(
            rest, expected,
            "the one whose client spoke first, then the latest first"
        );
        for o in offers {
            let (name, taken) = o.await.unwrap();
            assert!(taken, "{name} was taken");
        }
    }

    #[tokio::test]
    async fn a_turn_given_to_an_offer_cancelled_meanwhile_goes_on_to_the_next() {
        let turns = super::Turns::new(1);
        let (_c1, s1) = connection().await;
        let (_c2, s2) = connection().await;
        let (_c3, s3) = connection().await;
        let first = turns.take(s1.as_fd()).await;
        // Two wait; the later one is cancelled after its turn was given, before it ran.
        let earlier = turns.take(s2.as_fd());
        tokio::pin!(earlier);
        assert!(futures_poll(earlier.as_mut()).is_pending());
        {
            let later = turns.take(s3.as_fd());
            tokio::pin!(later);
            assert!(futures_poll(later.as_mut()).is_pending());
            assert_eq!(turns.waiting(), 2);
            drop(first); // goes to `later`, the latest
        }
        // `later` dropped with its turn: `earlier` has it now.
        let got = tokio::time::timeout(Duration::from_secs(5), earlier)
            .await
            .expect("the turn went on");
        assert_eq!(turns.waiting(), 0);
        drop(got);
        // And it comes back free: a new offer gets it at once.
        let again = tokio::time::timeout(Duration::from_secs(5), turns.take(s1.as_fd())).await;
        assert!(again.is_ok(), "the turn is free again");
    }

    /// Polls `f` once.
    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx)
    }
}
