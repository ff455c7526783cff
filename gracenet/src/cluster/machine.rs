//! The primary's decisions, with no I/O: its [`Cluster`] state, the [`Event`]s that reach it,
//! and [`Cluster::handle`], which changes the state and says which [`Action`]s the driver must
//! perform. Like the generation's machine (`lifecycle/machine.rs`), everything here is tested
//! without processes: event by event, and with random event sequences against invariants.
//!
//! The model: `workers` slots, each served by one worker process at a time. A worker is an
//! ordinary generation: a slot's restart is that worker's own restart (the primary sends it
//! `SIGUSR2`; it starts its successor, hands over and drains), so state, connection and TLS
//! ticket hand-over work per slot. The primary starts a worker itself only for a slot that
//! has none: at the start, after a crash, after a worker was killed as hung, or when scaled
//! up. Until the cluster's sockets are known ([`Sockets`]), one worker binds them and every
//! other start waits for its `READY`.
//!
//! Who takes new connections is decided here too ([`Cluster::takers`]): a serving worker
//! whose accepts fail (its heartbeat says so) takes none, nor does one whose runtime does not
//! run ([`Event::Silence`]) while another can take them. The driver steers the kernel and
//! moves what waits accordingly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::supervisor::{KILL_AFTER, KILL_AGAIN};

/// A restart request's identity, to answer it.
pub(crate) type ReplyId = u64;

/// A start's identity: the driver's report names the start it answers.
pub(crate) type StartId = u64;

/// What the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// How many slots, each served by one worker.
    pub workers: usize,
    /// How many slots restart at once in a rolling restart (each adds one process while its
    /// successor starts). At least 1.
    pub surge: usize,
    /// How long a worker the primary started may take to say it is ready.
    pub ready_timeout: Duration,
    /// How long a ready worker may stay silent (no heartbeat) before it is killed as hung;
    /// `None`: never.
    pub worker_timeout: Option<Duration>,
    /// How many workers failing to start (exiting before they are ready) within
    /// [`CRASH_WINDOW`] end the cluster.
    pub crash_limit: usize,
    /// When a worker is replaced for having served enough, or grown too big.
    pub recycle: Recycle,
    /// How often workers send their heartbeat: the primary not running for twice that (at
    /// least [`MIN_STALL`]) longer than it meant to is its own stall, not their silence.
    pub heartbeat: Duration,
    /// How many cores the workers may run on (at least 1): more steady workers than that
    /// take turns at new connections while few are open ([`Event::Concurrency`]).
    pub cores: usize,
}

/// How many workers per core may be starting at once (started by the primary and not yet
/// ready): a start is mostly CPU (the program's own start-up, its runtime, its sockets), and a
/// scale to hundreds of workers started together would take every core from the serving
/// workers and from the primary itself, which then answers its control socket late.
pub(crate) const STARTS_AT_ONCE_PER_CORE: usize = 2;

/// How long a turn lasts, when workers that share cores take turns at new connections.
pub(crate) const TURN: Duration = Duration::from_millis(100);

/// Workers that share cores begin to take turns at new connections while fewer than this
/// many, per core, are open in all, and stop once [`TURNS_END_PER_CORE`] are. With many open,
/// a worker in its turn would hold enough connections to pass some on to the others
/// ([`super::balance::PASS_IN_TURNS_FROM`]), waking them as often as sharing does; and many
/// concurrent connections keep each worker busy for its whole scheduler slice anyway.
pub(crate) const TURNS_BELOW_PER_CORE: u64 = TURNS_END_PER_CORE / 2;

/// Workers that take turns stop once this many connections per core are open in all: twice
/// [`TURNS_BELOW_PER_CORE`], so that the moments a client has opened its next connection
/// before the server has closed its last (8 such clients were seen holding 16) do not end
/// the turns each time; and the fewest a worker in its turn passes one on from.
pub(crate) const TURNS_END_PER_CORE: u64 = super::balance::PASS_IN_TURNS_FROM;

/// Workers that share cores take turns only while at least this many new connections a second
/// come. Fewer cost few switches between workers; and a burst of long-lived connections after
/// a quiet time (a client opening its pool) then finds every worker steered to, rather than one
/// worker taking the whole burst in its turn (it can pass on only as many as the others' inboxes
/// hold while it runs).
pub(crate) const TURNS_FROM_PER_SECOND: u64 = 1_000;

/// How long the rate of new connections is measured over, for [`TURNS_FROM_PER_SECOND`]:
/// several of the workers' stamps of the load table (each says how many they accepted), which
/// come every 100 ms, so that one late stamp does not read as a quiet time.
pub(crate) const RATE_OVER: Duration = Duration::from_millis(500);

/// Whether the steady workers take turns at new connections, whose turn it is, and how often
/// new connections came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Turns {
    /// Whether they take turns (else every steady worker gets new connections).
    pub taking: bool,
    /// The current turn (counts up; the window of slots it names rotates), and when it began.
    pub turn: u64,
    pub began: Option<Instant>,
    /// When the rate of new connections was last measured, and how many connections the
    /// serving workers had accepted then.
    pub read: Option<(Instant, u64)>,
    /// Whether at least [`TURNS_FROM_PER_SECOND`] came over the last [`RATE_OVER`].
    pub often: bool,
}

/// Recycling: a worker is replaced (by its own graceful restart) once it has served
/// `max_requests`, or once its resident memory reaches `max_memory` bytes, each raised for
/// every worker by its own 0 to 10 % (drawn from `seed` and its pid when the machine first
/// hears of it), so workers started together do not recycle together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Recycle {
    pub max_requests: Option<u64>,
    pub max_memory: Option<u64>,
    /// Drawn by the driver (the machine draws nothing): the jitter's source.
    pub seed: u64,
}

/// How much above its setting a worker's threshold may be drawn, in thousandths.
const JITTER_PERMILLE: u64 = 100;

impl Recycle {
    /// A worker's thresholds.
    fn limits_for(&self, pid: u32) -> Limits {
        let jitter = |limit: u64, salt: u64| {
            // splitmix64's finaliser over the seed, the pid and which limit: a fixed draw per
            // worker, spread evenly.
            let mut z = self.seed ^ ((u64::from(pid) << 8) | salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let permille = z % (JITTER_PERMILLE + 1);
            let extra = u128::from(limit) * u128::from(permille) / 1000;
            limit.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
        };
        Limits {
            requests: self.max_requests.map(|l| jitter(l, 1)),
            memory: self.max_memory.map(|l| jitter(l, 2)),
        }
    }
}

/// One worker's recycling thresholds (its settings plus its jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    pub requests: Option<u64>,
    pub memory: Option<u64>,
}

/// What a worker's heartbeat says of its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Load {
    /// Requests it has served.
    pub requests: Option<u64>,
    /// Its resident memory, in bytes.
    pub rss: Option<u64>,
    /// Its accepts fail (it is out of file descriptors): it takes no new connection.
    pub cannot_accept: bool,
}

/// Why a worker is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecycleReason {
    /// It served `served` requests, its threshold being `limit`.
    Requests { served: u64, limit: u64 },
    /// Its resident memory reached `rss` bytes, its threshold being `limit`.
    Memory { rss: u64, limit: u64 },
}

impl RecycleReason {
    /// `requests` or `memory`, for `status`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RecycleReason::Requests { .. } => "requests",
            RecycleReason::Memory { .. } => "memory",
        }
    }
}

/// The wait before a slot whose recycle failed tries again; it doubles with each failure in
/// a row, up to [`MAX_RECYCLE_RETRY`]. A failed recycle leaves the old worker serving: there
/// is no hurry, and a build that cannot start must not be started in a loop.
const FIRST_RECYCLE_RETRY: Duration = Duration::from_secs(5);

/// How long a slot whose fresh worker was already at its memory threshold waits before it is
/// recycled for memory (twice as long each time in a row, at most [`MAX_BORN_ABOVE_WAIT`]):
/// a recycle then moves the memory (the connections handed over) rather than freeing it, or
/// the limit is below what the program needs, and recycling at every heartbeat would only
/// churn processes.
const FIRST_BORN_ABOVE_WAIT: Duration = Duration::from_secs(60);
const MAX_BORN_ABOVE_WAIT: Duration = Duration::from_secs(600);
const MAX_RECYCLE_RETRY: Duration = Duration::from_secs(300);

/// The window crashes are counted in.
pub(crate) const CRASH_WINDOW: Duration = Duration::from_secs(30);
/// The delay before the second crash restart in a window; it doubles after, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest a slot waits for its next worker after crashes.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Added to twice the ready timeout: how long a worker asked to restart may take to be
/// succeeded or to report its failure before the rollout gives up on it.
const RESTART_MARGIN: Duration = Duration::from_secs(5);

/// How long a worker stopped to be replaced (hung, or never ready) has after its `SIGTERM`
/// before it is killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_millis(500);
/// After a second stop request: how long every process has after its second `SIGTERM` (which
/// ends a drain) before it is killed.
const STOP_AT_ONCE: Duration = Duration::from_secs(1);
/// The least time the primary may be away past the time it meant to wake (or busy since it
/// woke) before it takes the workers' silence meanwhile for its own.
const MIN_STALL: Duration = Duration::from_millis(500);

/// A worker that dies after serving this long is replaced at once and not counted as a crash
/// loop: it was killed or failed on its own, not at its start.
pub(crate) const STABLE: Duration = Duration::from_secs(1);

/// How a slot lost its worker, for the crash policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Never ready (could not start, exited or was killed before it was ready): counts toward
    /// giving up.
    BootFailure,
    /// Ready, then gone within [`STABLE`]: backs off.
    Early,
    /// Ready for at least [`STABLE`]: replaced at once.
    Late,
}

/// A worker process, as the primary knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Worker {
    pub pid: u32,
    /// Said it is ready (serving).
    pub ready: bool,
    /// When it started (killed if not ready by `since + ready_timeout`), then when it became
    /// ready (a death within [`STABLE`] of it backs off); heartbeats count from here.
    pub since: Instant,
    /// Its last sign of life.
    pub beat: Instant,
    /// Killed (hung or never ready): its exit is on the way.
    pub killed: bool,
    /// Its recycling thresholds.
    pub limits: Limits,
    /// Its resident memory when it reached its memory threshold within its first minute (its
    /// slot then waits before recycling it: a replacement would be there as fast, in a loop).
    pub first_rss: Option<u64>,
    /// The start that made it (`None`: the successor of a worker's own restart, or a stray):
    /// tells a rollout whether it runs the program installed when the rollout began.
    pub start: Option<StartId>,
    /// Its accepts fail, as its last heartbeat said.
    pub cannot_accept: bool,
    /// Its runtime has not stamped the load table lately ([`Event::Silence`]).
    pub silent: bool,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Slot {
    /// The worker serving it (or starting to).
    pub worker: Option<Worker>,
    /// The primary asked the driver to start a worker here (this start), and has not heard
    /// back.
    pub starting: Option<StartId>,
    /// When a worker is to be started here after a crash (backoff).
    pub restart_at: Option<Instant>,
    /// Its worker was told to restart and has not yet been succeeded (or failed).
    pub restarting: bool,
    /// When a restart asked of its worker is given up if neither its successor nor its
    /// failure has been heard of (meaningful while `restarting` or `recycling`).
    pub restart_deadline: Option<Instant>,
    /// Its worker was told to restart to recycle it (for this reason), and has not yet been
    /// succeeded (or failed). At most one slot at a time, never during a rollout.
    pub recycling: Option<RecycleReason>,
    /// Recycles done here, and the last one's reason (for `status`).
    pub recycles: u64,
    pub last_recycle: Option<RecycleReason>,
    /// Recycles failed in a row here, and when the next may be tried.
    pub recycle_failures: u32,
    pub recycle_after: Option<Instant>,
    /// Fresh workers in a row here already at their memory threshold at their first heartbeat.
    pub born_above: u32,
    /// A worker is wanted here, and waits for the cluster's sockets (another worker binds
    /// them): its start is issued once they are known ([`Sockets`]).
    pub held: bool,
    /// A worker is wanted here, and waits until fewer than [`Cluster::starts_at_once`] are
    /// starting (a scale to hundreds of workers, many crashes at once).
    pub queued: bool,
}

/// Why a cluster gave up (and exits with code 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// The first worker, binding the cluster's sockets, ended before it was ready: no
    /// worker ever served.
    FirstWorker,
    /// Workers kept failing to start, `crash_limit` times within the crash window, with
    /// none serving.
    CrashLoop,
}

/// Whether the primary knows the cluster's listening sockets, which every worker's are made
/// from. Until it does, one worker at a time binds them, and every other start is held: a
/// second worker binding them alone would be refused the address (or, bound before the
/// first, refuse it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sockets {
    /// Known: passed to the primary (socket activation), sent by the first worker with its
    /// `READY`, or that worker served without sending them (the others then bind their own).
    /// Every start goes ahead.
    Known,
    /// Not yet: `binder` binds them (a start, then its worker, until its `READY`; its slot
    /// may have been scaled away since, it binds all the same); `None` when no worker does
    /// now (the slot to bind them next starts).
    Binding { binder: Option<Binder> },
}

/// The worker that binds the cluster's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binder {
    /// Asked of the driver, not yet reported.
    Start(StartId),
    /// Started, not yet ready.
    Worker(u32),
}

/// A rolling restart under way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Rollout {
    /// Slots still to restart, in order.
    pub queue: VecDeque<usize>,
    /// Slots restarted so far.
    pub done: usize,
    /// Slots that had no serving worker when their turn came (starting, backing off after a
    /// crash, killed as hung): done once a worker started after the rollout began serves
    /// there; one started before it that becomes ready is restarted in turn.
    pub awaiting: Vec<usize>,
    /// The last start issued before the rollout began: later ones run the program now
    /// installed.
    pub since: StartId,
    /// Who waits for the result.
    pub waiting: Vec<ReplyId>,
}

/// How a rolling restart ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RolloutResult {
    /// Every slot serves with a new worker: their pids, by slot.
    Done { pids: Vec<u32> },
    /// A slot's restart failed: the rollout stopped. Slots restarted before it keep their new
    /// worker, the others their old one; all of them serve.
    Failed {
        slot: usize,
        reason: String,
        restarted: usize,
    },
    /// The cluster is stopping.
    Stopping,
}

/// The primary's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub settings: Settings,
    pub slots: Vec<Slot>,
    /// Workers that were succeeded or told to stop, until they exit: their exit is no crash.
    pub retiring: Vec<u32>,
    /// Recycled workers still draining: a recycle is meant to lower memory, so no further
    /// one starts while `surge` of them are still there (with long drains, recycling one
    /// after another would otherwise keep two processes per slot).
    pub recycled_draining: Vec<u32>,
    pub rollout: Option<Rollout>,
    /// Rolling restarts asked for while one is under way: they run after it.
    pub queued: Vec<ReplyId>,
    /// A stop was asked for.
    pub stopping: bool,
    /// Gave up, and why: the cluster ends with exit code 1.
    pub gave_up: Option<GaveUp>,
    /// Times of crashes that back off (boot failures and early deaths) within the window.
    pub crashes: VecDeque<Instant>,
    /// Times of boot failures within the window: `crash_limit` of them end the cluster.
    pub boot_failures: VecDeque<Instant>,
    /// `Exit` was issued.
    pub exited: bool,
    /// Starts asked of the driver and not yet reported (some for slots gone since).
    pub spawning: std::collections::BTreeSet<StartId>,
    /// Whether the cluster's sockets are known, or which worker binds them.
    pub sockets: Sockets,
    next_start: StartId,
    /// Stop requests (`SIGTERM`, `SIGINT`, `SIGHUP`) so far: the second one stops at once.
    pub stop_requests: u32,
    /// When every process still there is killed ([`Action::KillAll`]), after a stop or the
    /// exit: the stop always ends.
    pub kill_all_at: Option<Instant>,
    /// Workers sent `SIGTERM` to be replaced, and when they are killed if still there.
    pub kills: Vec<(u32, Instant)>,
    /// The driver waits for something to happen: since when, and until when at most (`None`:
    /// no limit).
    asleep: Option<(Instant, Option<Instant>)>,
    /// When the driver last woke (it has been running since).
    woke: Option<Instant>,
    /// The time of the event being handled.
    now: Instant,
    /// The serving workers set aside, as last said ([`Action::SetAside`]).
    aside: Vec<u32>,
    /// Whether steady workers that share cores take turns at new connections, and whose.
    pub turns: Turns,
}

/// What reaches the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The driver started a worker (after `Action::Start` with this `id`).
    Started { id: StartId, pid: u32 },
    /// The driver could not start the worker of start `id`.
    StartFailed { id: StartId, reason: String },
    /// A worker said it is ready (`READY=1`), naming its slot: a new pid in a slot is the
    /// slot's old worker's successor.
    Ready { slot: usize, pid: u32 },
    /// A worker's own restart failed (it keeps serving).
    RestartFailed { pid: u32, reason: String },
    /// A sign of life from a worker (`WATCHDOG=1`), with its load.
    Heartbeat { pid: u32, load: Load },
    /// The driver looked at whose runtime stamps the shared load table: `silent` are the
    /// serving workers whose own stamp is older than 300 ms (stopped with `SIGSTOP`, or their
    /// thread blocked); every other one runs.
    Silence { silent: Vec<u32> },
    /// The driver read how many connections the serving workers hold open in all (the load
    /// table), as it does each time it wakes: it decides whether workers that share cores take
    /// turns at new connections.
    Concurrency {
        /// Their open connections.
        open: u64,
        /// The connections they have accepted, counted up across the workers' replacements
        /// (the driver adds a new worker's count, from 0, to what the slot had).
        accepted: u64,
    },
    /// A process exited; `clean` when it exited 0 (a drained worker, or one told to stop).
    Exited { pid: u32, clean: bool },
    /// Time passed (the driver feeds it at [`Cluster::next_deadline`], once it has read the
    /// workers' notifications): whatever is due is done. If the driver has been running for
    /// long since it woke (held up by its own work), the workers' silence meanwhile is its
    /// own: every ready worker's heartbeat counts from now before any is judged.
    Tick,
    /// The driver waits for something to happen, until `until` at most (`None`: no limit).
    Sleep { until: Option<Instant> },
    /// The driver runs again after [`Event::Sleep`]. If it woke well after `until` (it was
    /// stopped, or the host starved it), the workers' silence meanwhile is its own: every
    /// ready worker's heartbeat counts from now.
    Woke,
    /// A rolling restart was asked for (`SIGUSR2`, the control socket).
    RestartRequested { reply: ReplyId },
    /// `SIGTERM`/`SIGINT`/`SIGHUP`: the first drains every worker (and kills what is still
    /// there [`KILL_AFTER`] later); the next one stops at once.
    StopRequested,
    /// Change the number of slots.
    Scale {
        workers: usize,
        /// The most workers the primary's open files allow (its measure).
        room: usize,
    },
    /// `SIGTTIN` (`more`) or `SIGTTOU`: one slot more, or one fewer (never fewer than one),
    /// than the machine has now, so that each signal counts, however many come before the
    /// first is acted on.
    ScaleStep {
        more: bool,
        /// The most workers the primary's open files allow (its measure).
        room: usize,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a worker for `slot` on the held sockets; feed back `Started` or `StartFailed`
    /// with `id`.
    Start { slot: usize, id: StartId },
    /// Ask a worker to restart itself (`SIGUSR2`).
    Restart { slot: usize, pid: u32 },
    /// Ask a worker to drain and exit (`SIGTERM`).
    Stop { pid: u32 },
    /// Stop a worker to replace it (`SIGTERM`): hung, or never ready. [`Action::ForceKill`]
    /// follows [`KILL_GRACE`] later unless it has exited.
    Kill { pid: u32, why: KillReason },
    /// Kill a worker still there [`KILL_GRACE`] after its [`Action::Kill`] (`SIGKILL`).
    ForceKill { pid: u32 },
    /// A second stop request: every process of the cluster gets `SIGTERM` again (ending its
    /// drain); [`Action::KillAll`] follows shortly.
    TerminateAll,
    /// Kill every process of the cluster still there (`SIGKILL`): the stop's end. Repeated
    /// every [`KILL_AGAIN`] until the driver has none left (a killed process's children
    /// come to the primary).
    KillAll,
    /// The primary itself was not running, or held up: every ready worker's heartbeat counts
    /// from now (logged).
    Stalled(Stall),
    /// Answer a rolling restart request.
    Reply { reply: ReplyId, result: RolloutResult },
    /// Every worker is gone after a stop, or the cluster gave up: exit.
    Exit { code: i32 },
    /// The cluster now has `workers` slots (after a scale the machine accepted): the driver's
    /// per-slot bookkeeping follows.
    Resized { workers: usize },
    /// Recycle a worker: ask it to restart (`SIGUSR2`), as `Restart` does, for `reason`.
    Recycle {
        slot: usize,
        pid: u32,
        reason: RecycleReason,
    },
    /// Something the operator should read about recycling (logged).
    RecycleNotice {
        slot: usize,
        pid: u32,
        notice: RecycleNotice,
    },
    /// A [`Event::ScaleStep`] to `workers` was refused, for `reason` (logged).
    ScaleRefused { workers: usize, reason: String },
    /// A serving worker is set aside (`aside`: it is silent while another one takes
    /// connections), or no longer is (logged). The driver steers new connections, and what
    /// waits for a worker, to [`Cluster::takers`].
    SetAside { slot: usize, pid: u32, aside: bool },
}

/// What the driver logs about recycling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecycleNotice {
    /// The recycle failed (`reason`): the old worker serves on; the next try is after
    /// `retry_in`.
    Failed { reason: String, retry_in: Duration },
    /// A worker already had `rss` bytes, at or above its memory threshold `limit`, at its first
    /// heartbeat (connections handed over with it, or a limit below an idle worker's memory):
    /// its slot is not recycled for memory for `wait`, twice as long each time in a row.
    AboveAtStart { rss: u64, limit: u64, wait: Duration },
}

/// How the primary itself kept from reading the workers' heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// It slept `slept`, well past the time it meant to wake (stopped, or starved).
    Asleep { slept: Duration },
    /// Its own work held it up for `busy` since it woke (a control client slow to take its
    /// answer, say).
    Busy { busy: Duration },
}

/// Why a worker is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// Not ready within the ready timeout.
    NotReady,
    /// Ready, then silent for the worker timeout.
    Hung,
    /// Still starting, from the program from before a rolling restart: a fresh worker
    /// replaces it.
    Superseded,
}

impl Cluster {
    /// A cluster about to start its workers: feed it [`Cluster::start`]'s actions first.
    pub(crate) fn new(settings: Settings) -> Self {
        let settings = Settings {
            surge: settings.surge.max(1),
            crash_limit: settings.crash_limit.max(1),
            ..settings
        };
        Cluster {
            settings,
            slots: vec![Slot::default(); settings.workers],
            retiring: Vec::new(),
            recycled_draining: Vec::new(),
            rollout: None,
            queued: Vec::new(),
            stopping: false,
            gave_up: None,
            crashes: VecDeque::new(),
            boot_failures: VecDeque::new(),
            exited: false,
            spawning: std::collections::BTreeSet::new(),
            sockets: Sockets::Known,
            next_start: 0,
            stop_requests: 0,
            kill_all_at: None,
            kills: Vec::new(),
            asleep: None,
            woke: None,
            now: Instant::now(),
            aside: Vec::new(),
            turns: Turns::default(),
        }
    }

    /// A cluster whose sockets its first worker binds (no socket was passed to the primary):
    /// [`Cluster::start`] starts that one alone, and the others once the sockets are known.
    pub(crate) fn binding_first(mut self) -> Self {
        self.sockets = Sockets::Binding { binder: None };
        self
    }

    /// Starts a worker in `slot`; while the sockets are being bound by another worker, holds
    /// the start until they are known.
    /// How many workers may be starting at once: [`STARTS_AT_ONCE_PER_CORE`] per core.
    pub(crate) fn starts_at_once(&self) -> usize {
        self.settings.cores.max(1) * STARTS_AT_ONCE_PER_CORE
    }

    /// Workers starting now: a start asked of the driver, or a worker it started that is not
    /// ready yet.
    fn starting_now(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.starting.is_some() || s.worker.is_some_and(|w| !w.ready && !w.killed))
            .count()
    }

    /// Starts the queued slots, lowest first, while fewer than
    /// [`starts_at_once`](Self::starts_at_once) workers are starting.
    fn start_queued(&mut self, actions: &mut Vec<Action>) {
        if self.stopping {
            return;
        }
        while self.starting_now() < self.starts_at_once() {
            let Some(slot) = self.slots.iter().position(|s| s.queued) else {
                return;
            };
            self.slots[slot].queued = false;
            self.start_slot(slot, actions);
        }
    }

    fn start_slot(&mut self, slot: usize, actions: &mut Vec<Action>) {
        if self.starting_now() >= self.starts_at_once() {
            self.slots[slot].queued = true;
            return;
        }
        self.slots[slot].queued = false;
        let binds = match self.sockets {
            Sockets::Known => false,
            Sockets::Binding { binder: None } => true,
            Sockets::Binding { binder: Some(_) } => {
                self.slots[slot].held = true;
                return;
            }
        };
        self.next_start += 1;
        let id = self.next_start;
        self.slots[slot].held = false;
        self.slots[slot].starting = Some(id);
        self.spawning.insert(id);
        if binds {
            self.sockets = Sockets::Binding {
                binder: Some(Binder::Start(id)),
            };
        }
        actions.push(Action::Start { slot, id });
    }

    /// The worker binding the sockets is gone before it served. Its own loss ends the cluster
    /// ([`GaveUp::FirstWorker`]), so this is reached in a stop, or for a worker told to stop
    /// (its slot scaled away): then the lowest slot waiting for the sockets starts, to bind
    /// them. Nothing starts during a stop.
    fn binder_lost(&mut self, actions: &mut Vec<Action>) {
        self.sockets = Sockets::Binding { binder: None };
        if self.stopping {
            return;
        }
        if let Some(slot) = self.slots.iter().position(|s| s.held) {
            self.start_slot(slot, actions);
        }
    }

    /// Whether `event` is the end of the worker binding the sockets before it served.
    fn loses_binder(&self, event: &Event) -> bool {
        match (self.sockets, event) {
            (
                Sockets::Binding {
                    binder: Some(Binder::Start(b)),
                },
                Event::StartFailed { id, .. },
            ) => b == *id,
            (
                Sockets::Binding {
                    binder: Some(Binder::Worker(b)),
                },
                Event::Exited { pid, .. },
            ) => b == *pid,
            _ => false,
        }
    }

    /// The sockets are known (a worker is ready: the driver holds what it sent, or nothing if
    /// it sent nothing, and the others bind their own): every held start goes ahead, unless
    /// the cluster is stopping.
    fn sockets_known(&mut self, actions: &mut Vec<Action>) {
        if self.sockets == Sockets::Known {
            return;
        }
        self.sockets = Sockets::Known;
        for slot in 0..self.slots.len() {
            if std::mem::take(&mut self.slots[slot].held) && !self.stopping {
                self.start_slot(slot, actions);
            }
        }
    }

    /// Starts a worker in every slot.
    pub(crate) fn start(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for slot in 0..self.slots.len() {
            self.start_slot(slot, &mut actions);
        }
        actions
    }

    /// The earliest time something is due (a ready or heartbeat deadline, a backoff, a kill):
    /// the driver feeds `Tick` then.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let kills = self.kills.iter().map(|&(_, at)| at).chain(self.kill_all_at);
        self.slots
            .iter()
            .flat_map(|s| {
                let worker = s.worker.and_then(|w| self.deadline_of(&w));
                let restart = s
                    .restart_deadline
                    .filter(|_| s.restarting || s.recycling.is_some());
                [worker, s.restart_at, restart]
            })
            .flatten()
            .chain(kills)
            .min()
    }

    /// How long past its time the driver may be away before its absence is its own stall.
    fn stall_margin(&self) -> Duration {
        self.settings.heartbeat.saturating_mul(2).max(MIN_STALL)
    }

    /// How long a worker asked to restart (or recycle) may take to be succeeded or to report
    /// its failure: twice the ready timeout and a margin (its own restart gives up after its
    /// ready timeout and says so).
    fn restart_wait(&self) -> Duration {
        self.settings
            .ready_timeout
            .saturating_mul(2)
            .saturating_add(RESTART_MARGIN)
    }

    /// The primary did not read the workers' heartbeats for a while: each ready worker's
    /// silence counts from now.
    fn stalled(&mut self, stall: Stall, now: Instant, actions: &mut Vec<Action>) {
        for w in self.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
            w.beat = w.beat.max(now);
        }
        actions.push(Action::Stalled(stall));
    }

    /// Every process still there is killed by `at` at the latest.
    fn kill_all_by(&mut self, at: Instant) {
        self.kill_all_at = Some(self.kill_all_at.map_or(at, |t| t.min(at)));
    }

    /// The kills due by `now`: each worker still there after its `Kill`, and every process
    /// once the stop's time is up (again every [`KILL_AGAIN`] until the driver has exited).
    fn kill_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.kills.retain(|&(pid, at)| {
            let due = at <= now;
            if due {
                actions.push(Action::ForceKill { pid });
            }
            !due
        });
        if self.kill_all_at.is_some_and(|at| at <= now) {
            actions.push(Action::KillAll);
            self.kill_all_at = Some(now + KILL_AGAIN);
        }
    }

    fn deadline_of(&self, w: &Worker) -> Option<Instant> {
        if w.killed {
            None
        } else if w.ready {
            // A timeout too long for the clock to count to never expires.
            self.settings.worker_timeout.and_then(|t| w.beat.checked_add(t))
        } else {
            w.since.checked_add(self.settings.ready_timeout)
        }
    }

    fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.worker.is_some_and(|w| w.pid == pid))
    }

    /// Processes `event` at `now`.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        // The driver's own time and the stop's end: these go on after the exit too (the
        // driver waits for every process to end).
        match event {
            Event::Sleep { until } => {
                self.asleep = Some((now, until));
                self.woke = None;
                return actions;
            }
            Event::Woke => {
                if let Some((since, Some(until))) = self.asleep.take()
                    && until.checked_add(self.stall_margin()).is_some_and(|t| now > t)
                {
                    let slept = now.saturating_duration_since(since);
                    self.stalled(Stall::Asleep { slept }, now, &mut actions);
                }
                self.woke = Some(now);
                return actions;
            }
            Event::Tick => {
                // Time the driver spent on its own work since it woke is not the workers'
                // silence either (their heartbeats that came meanwhile were read just before).
                if let Some(busy) = self
                    .woke
                    .map(|woke| now.saturating_duration_since(woke))
                    .filter(|&busy| busy > self.stall_margin())
                {
                    self.woke = Some(now);
                    self.stalled(Stall::Busy { busy }, now, &mut actions);
                }
                self.kill_due(now, &mut actions);
            }
            Event::StopRequested => {
                self.stop_requests = self.stop_requests.saturating_add(1);
                if self.stop_requests == 1 {
                    // Whatever is still there then (a worker stopped with SIGSTOP, a drain
                    // that never ends) is killed.
                    self.kill_all_by(now + KILL_AFTER);
                } else {
                    // Stop at once: every process gets its second SIGTERM (ending its drain),
                    // and what is still there a moment later is killed.
                    actions.push(Action::TerminateAll);
                    self.kill_all_by(now + STOP_AT_ONCE);
                }
            }
            Event::Exited { pid, .. } => self.kills.retain(|&(p, _)| p != pid),
            _ => {}
        }
        if self.exited {
            // Only a request still needs its answer.
            if let Event::RestartRequested { reply } = event {
                actions.push(Action::Reply {
                    reply,
                    result: RolloutResult::Stopping,
                });
            }
            return actions;
        }
        let binder_lost = self.loses_binder(&event);
        match event {
            Event::Started { id, pid } => {
                self.spawning.remove(&id);
                if self.sockets
                    == (Sockets::Binding {
                        binder: Some(Binder::Start(id)),
                    })
                {
                    self.sockets = Sockets::Binding {
                        binder: Some(Binder::Worker(pid)),
                    };
                }
                match self.slots.iter().position(|s| s.starting == Some(id)) {
                    Some(slot) if !self.stopping => {
                        self.slots[slot].starting = None;
                        self.slots[slot].worker = Some(Worker {
                            pid,
                            ready: false,
                            since: now,
                            beat: now,
                            killed: false,
                            limits: self.settings.recycle.limits_for(pid),
                            first_rss: None,
                            start: Some(id),
                            cannot_accept: false,
                            silent: false,
                        });
                        // Issued before a rollout that already waits for its slot.
                        self.supersede_stale_start(slot, &mut actions);
                    }
                    // Started as the stop came, for a slot scaled away, or for one a stray
                    // took meanwhile: it goes.
                    _ => {
                        self.retiring.push(pid);
                        actions.push(Action::Stop { pid });
                    }
                }
            }
            Event::StartFailed { id, reason } => {
                self.spawning.remove(&id);
                if let Some(slot) = self.slots.iter().position(|s| s.starting == Some(id)) {
                    self.slots[slot].starting = None;
                    self.awaited_failed(
                        slot,
                        Some(id),
                        format!("a new worker could not start: {reason}"),
                        &mut actions,
                    );
                    self.crashed(slot, now, Loss::BootFailure, &mut actions);
                }
            }
            Event::Ready { slot, pid } => {
                self.ready(slot, pid, now, &mut actions);
                self.sockets_known(&mut actions);
            }
            Event::RestartFailed { pid, reason } => {
                if let Some(slot) = self.slot_of(pid).filter(|&i| self.slots[i].recycling.is_some()) {
                    self.recycle_failed(slot, pid, reason, now, &mut actions);
                } else if let Some(slot) = self.slot_of(pid).filter(|&i| self.slots[i].restarting) {
                    self.slots[slot].restarting = false;
                    self.end_rollout(
                        |done| RolloutResult::Failed {
                            slot,
                            reason,
                            restarted: done,
                        },
                        &mut actions,
                    );
                }
            }
            Event::Heartbeat { pid, load } => {
                if let Some(slot) = self.slot_of(pid)
                    && let Some(w) = self.slots[slot].worker.as_mut()
                {
                    w.beat = now;
                    w.cannot_accept = load.cannot_accept;
                    self.maybe_recycle(slot, load, now, &mut actions);
                }
            }
            Event::Silence { silent } => {
                for w in self.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
                    w.silent = silent.contains(&w.pid);
                }
            }
            Event::Concurrency { open, accepted } => self.take_turns(open, accepted, now),
            Event::Exited { pid, clean } => self.exited(pid, clean, now, &mut actions),
            Event::Tick => self.tick(now, &mut actions),
            Event::Sleep { .. } | Event::Woke => {}
            Event::RestartRequested { reply } => {
                if self.stopping {
                    actions.push(Action::Reply {
                        reply,
                        result: RolloutResult::Stopping,
                    });
                } else if self.rollout.is_some() || self.recycling().is_some() {
                    // After the rollout, or the recycle, under way.
                    self.queued.push(reply);
                } else {
                    self.begin_rollout(vec![reply], &mut actions);
                }
            }
            Event::StopRequested => self.stop(&mut actions),
            Event::Scale { workers, room } => {
                if self.refuse_scale(workers, room).is_none() {
                    self.scale(workers, &mut actions);
                }
            }
            Event::ScaleStep { more, room } => self.scale_step(more, room, &mut actions),
        }
        if binder_lost {
            self.binder_lost(&mut actions);
        }
        self.start_queued(&mut actions);
        self.note_set_aside(&mut actions);
        self.maybe_exit(&mut actions);
        actions
    }

    /// The slot and pid of each worker that serves: ready, and not being killed.
    pub(crate) fn serving(&self) -> Vec<(usize, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| s.worker.filter(|w| w.ready && !w.killed).map(|w| (slot, w.pid)))
            .collect()
    }

    /// The serving workers set aside: silent, while another serving worker takes connections
    /// (runs, and its accepts do not fail). With none, what waits for a silent worker may as
    /// well wait there.
    pub(crate) fn set_aside(&self) -> Vec<u32> {
        let serving = || {
            self.slots
                .iter()
                .filter_map(|s| s.worker.filter(|w| w.ready && !w.killed))
        };
        if !serving().any(|w| !w.silent && !w.cannot_accept) {
            return Vec::new();
        }
        serving().filter(|w| w.silent).map(|w| w.pid).collect()
    }

    /// The serving workers new connections go to (and what waits for one that does not
    /// take them): neither set aside nor failing to accept.
    pub(crate) fn takers(&self) -> Vec<u32> {
        let aside = self.set_aside();
        self.slots
            .iter()
            .filter_map(|s| s.worker.filter(|w| w.ready && !w.killed))
            .filter(|w| !w.cannot_accept && !aside.contains(&w.pid))
            .map(|w| w.pid)
            .collect()
    }

    /// The slots new connections are steered to at `now`: the [eligible](Self::eligible_slots)
    /// ones, or while they [take turns](Self::take_turns), the cores' number of them whose
    /// turn it is (a window that moves on by as many at each turn, so each slot has as many
    /// turns as the others). Empty only when no worker serves.
    pub(crate) fn steered_slots(&self, now: Instant) -> Vec<usize> {
        let eligible = self.eligible_slots(now);
        let cores = self.settings.cores.max(1);
        if !self.turns.taking || eligible.len() <= cores {
            return eligible;
        }
        let first = (self.turns.turn % eligible.len() as u64) as usize * cores % eligible.len();
        let mut window: Vec<usize> = (0..cores)
            .map(|k| eligible[(first + k) % eligible.len()])
            .collect();
        window.sort_unstable();
        window
    }

    /// Workers that share cores take turns at new connections, each turn [`TURN`] long, while
    /// more steady workers serve than there are cores, fewer than [`TURNS_BELOW_PER_CORE`] per
    /// core connections are open (`open`, in all; they go on until [`TURNS_END_PER_CORE`]
    /// are) and at least [`TURNS_FROM_PER_SECOND`] new
    /// ones came over the last [`RATE_OVER`] (`accepted` counts up). Connections spread over
    /// every worker at once make the workers on a core switch between themselves at nearly
    /// every new connection, each switch costing more than the request (CPU per request 0.95
    /// to 1.2 times one process's, measured with 2 workers on one core against 8 clients
    /// opening a connection per request); in turns, one worker serves a whole turn while the
    /// others finish what they hold (0.86 to 0.93 times). A turn moves on only when the driver
    /// reads the table after it ended (it does at least every 100 ms while two or more serve);
    /// too many open connections end the turns at once.
    fn take_turns(&mut self, open: u64, accepted: u64, now: Instant) {
        let t = &mut self.turns;
        match t.read {
            None => t.read = Some((now, accepted)),
            Some((since, before)) if now.saturating_duration_since(since) >= RATE_OVER => {
                // A count that went down (a driver that did not count up across a worker's
                // replacement) reads as none came.
                let came = u128::from(accepted.saturating_sub(before));
                let lasted = now.saturating_duration_since(since).as_millis();
                t.often = came * 1000 >= u128::from(TURNS_FROM_PER_SECOND) * lasted;
                t.read = Some((now, accepted));
            }
            Some(_) => {}
        }
        let cores = self.settings.cores.max(1);
        let share = self.eligible_slots(now).len() > cores;
        let t = &mut self.turns;
        let limit = if t.taking {
            TURNS_END_PER_CORE
        } else {
            TURNS_BELOW_PER_CORE
        };
        let few = open < limit.saturating_mul(cores as u64);
        t.taking = share && few && t.often;
        t.began = match t.began {
            _ if !t.taking => None,
            // Turns taken again go on from the next worker's.
            None => {
                t.turn = t.turn.wrapping_add(1);
                Some(now)
            }
            Some(began) if now.saturating_duration_since(began) >= TURN => {
                t.turn = t.turn.wrapping_add(1);
                Some(now)
            }
            Some(began) => Some(began),
        };
    }

    /// The slots new connections may go to at `now`: those whose worker serves and is
    /// steady (not restarting, not recycling, a [taker](Self::takers)), as long as one of them
    /// was heard from within three heartbeats; else every serving slot (a worker that is
    /// restarting waits in `vfork` for its successor's `execve`, and what is queued at its
    /// listener is its successor's; a hung steady one would hold connections until the
    /// watchdog). Empty only when no worker serves.
    pub(crate) fn eligible_slots(&self, now: Instant) -> Vec<usize> {
        let takers = self.takers();
        let serving: Vec<(usize, &Slot, Worker)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.worker.filter(|w| w.ready && !w.killed).map(|w| (i, s, w)))
            .collect();
        let steady = |s: &Slot, w: &Worker| !s.restarting && s.recycling.is_none() && takers.contains(&w.pid);
        let heard = |w: &Worker| now.saturating_duration_since(w.beat) <= self.settings.heartbeat * 3;
        let any_steady = serving.iter().any(|(_, s, w)| steady(s, w) && heard(w));
        serving
            .iter()
            .filter(|(_, s, w)| !any_steady || steady(s, w))
            .map(|&(i, _, _)| i)
            .collect()
    }

    /// Says which serving workers were set aside, or no longer are, since last said.
    fn note_set_aside(&mut self, actions: &mut Vec<Action>) {
        let now = self.set_aside();
        if now == self.aside {
            return;
        }
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(w) = s.worker else { continue };
            match (self.aside.contains(&w.pid), now.contains(&w.pid)) {
                (false, true) => actions.push(Action::SetAside {
                    slot,
                    pid: w.pid,
                    aside: true,
                }),
                (true, false) if w.ready && !w.killed => {
                    actions.push(Action::SetAside {
                        slot,
                        pid: w.pid,
                        aside: false,
                    });
                }
                _ => {}
            }
        }
        self.aside = now;
    }

    fn ready(&mut self, slot: usize, pid: u32, now: Instant, actions: &mut Vec<Action>) {
        if self.retiring.contains(&pid) {
            // Already told to go, or succeeded: it does not come back.
            return;
        }
        let fresh = Worker {
            pid,
            ready: true,
            since: now,
            beat: now,
            killed: false,
            limits: self.settings.recycle.limits_for(pid),
            first_rss: None,
            start: None,
            cannot_accept: false,
            silent: false,
        };
        let ours = self
            .slots
            .get(slot)
            .and_then(|s| s.worker)
            .is_some_and(|w| w.pid == pid);
        let Some(s) = self.slots.get_mut(slot).filter(|_| !self.stopping || ours) else {
            // After a stop, or for a slot scaled away: it goes.
            self.retiring.push(pid);
            actions.push(Action::Stop { pid });
            return;
        };
        match s.worker {
            Some(w) if w.pid == pid => {
                if let Some(w) = s.worker.as_mut() {
                    w.ready = true;
                    w.since = now;
                    w.beat = now;
                }
                self.awaited_ready(slot, w.start, actions);
            }
            // The slot's serving worker was succeeded by `pid` (its own restart, asked for by
            // a rollout or not): the old one drains and exits by itself.
            Some(old) if old.ready && !old.killed => {
                s.worker = Some(fresh);
                let was_restarting = std::mem::replace(&mut s.restarting, false);
                self.retiring.push(old.pid);
                if let Some(reason) = s.recycling.take() {
                    self.recycled_draining.push(old.pid);
                    s.recycles += 1;
                    s.last_recycle = Some(reason);
                    s.recycle_failures = 0;
                    s.recycle_after = None;
                    self.begin_queued(actions);
                } else if was_restarting {
                    if let Some(r) = self.rollout.as_mut() {
                        r.done += 1;
                    }
                    self.next_in_rollout(actions);
                }
            }
            // The slot has a worker the primary is starting (or has killed): `pid` is a
            // stray, the successor of a worker that crashed while handing over.
            Some(_) => {
                self.retiring.push(pid);
                actions.push(Action::Stop { pid });
            }
            // A slot with none: the stray is welcome.
            None => {
                s.starting = None;
                s.restart_at = None;
                s.held = false;
                s.worker = Some(fresh);
                self.awaited_ready(slot, None, actions);
            }
        }
    }

    /// `slot`'s worker, made by `start`, is ready: if the rollout waits for the slot, it is
    /// done when that start came after the rollout began; otherwise the worker runs the
    /// program from before, and restarts in turn.
    fn awaited_ready(&mut self, slot: usize, start: Option<StartId>, actions: &mut Vec<Action>) {
        let Some(r) = self.rollout.as_mut() else {
            return;
        };
        let Some(i) = r.awaiting.iter().position(|&a| a == slot) else {
            return;
        };
        r.awaiting.swap_remove(i);
        if start.is_some_and(|id| id > r.since) {
            r.done += 1;
        } else {
            r.queue.push_front(slot);
        }
        self.next_in_rollout(actions);
    }

    /// `slot`'s worker, made by `start`, failed before it was ready: when the rollout waits
    /// for the slot and that start came after the rollout began, the program now installed
    /// does not start, and the rollout stops, saying so.
    fn awaited_failed(
        &mut self,
        slot: usize,
        start: Option<StartId>,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let fresh = self
            .rollout
            .as_ref()
            .is_some_and(|r| r.awaiting.contains(&slot) && start.is_some_and(|id| id > r.since));
        if fresh {
            if let Some(r) = self.rollout.as_mut() {
                r.awaiting.retain(|&a| a != slot);
            }
            self.end_rollout(
                |done| RolloutResult::Failed {
                    slot,
                    reason,
                    restarted: done,
                },
                actions,
            );
        }
    }

    fn exited(&mut self, pid: u32, clean: bool, now: Instant, actions: &mut Vec<Action>) {
        self.recycled_draining.retain(|&p| p != pid);
        if let Some(i) = self.retiring.iter().position(|&p| p == pid) {
            self.retiring.swap_remove(i);
            return;
        }
        let Some(slot) = self.slot_of(pid) else {
            return;
        };
        let loss = match self.slots[slot].worker {
            Some(w) if w.ready && now.saturating_duration_since(w.since) >= STABLE => Loss::Late,
            Some(w) if w.ready => Loss::Early,
            _ => Loss::BootFailure,
        };
        let restarting = std::mem::replace(&mut self.slots[slot].restarting, false);
        // Gone before anything below runs: a rollout that ends here may begin the next one,
        // which must not find the dead worker in its slot.
        let gone = self.slots[slot].worker.take();
        if loss == Loss::BootFailure
            && let Some(w) = gone
        {
            let reason = if w.killed {
                format!("new worker {pid} was not ready within its ready timeout")
            } else {
                format!("new worker {pid} exited before it was ready")
            };
            self.awaited_failed(slot, w.start, reason, actions);
        }
        if self.slots[slot].recycling.take().is_some() {
            // Its replacement starts afresh: the recycle is moot.
            self.begin_queued(actions);
        }
        if restarting {
            self.end_rollout(
                |done| RolloutResult::Failed {
                    slot,
                    reason: format!("worker {pid} exited during its restart"),
                    restarted: done,
                },
                actions,
            );
        }
        if clean && self.stopping {
            return;
        }
        // A worker that ends on its own, cleanly or not, leaves its slot empty: that is a
        // crash as far as the slot is concerned.
        self.crashed(slot, now, loss, actions);
    }

    /// The worker of `slot` is gone (or never started): start another, at once after a
    /// worker that served a while, else after a backoff; give up after `crash_limit` boot
    /// failures in the window (a build that cannot start).
    fn crashed(&mut self, slot: usize, now: Instant, loss: Loss, actions: &mut Vec<Action>) {
        if self.stopping || slot >= self.settings.workers {
            return;
        }
        let recent = |times: &mut VecDeque<Instant>| {
            while times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= CRASH_WINDOW)
            {
                times.pop_front();
            }
        };
        recent(&mut self.crashes);
        recent(&mut self.boot_failures);
        if loss == Loss::BootFailure && matches!(self.sockets, Sockets::Binding { .. }) {
            // No worker has ever been ready: the program cannot start (its address is in
            // use, a flag is wrong), and starting it again would fail the same way. Ended at
            // once, as a supervised single process's first generation.
            self.gave_up = Some(GaveUp::FirstWorker);
            self.stop(actions);
            return;
        }
        if loss == Loss::BootFailure {
            self.boot_failures.push_back(now);
            // A build that cannot start ends the cluster only when nothing serves any more:
            // while other workers serve, the slot keeps trying (backing off), so a broken file
            // on disk plus one crash is not an outage.
            let serving = self.slots.iter().any(|s| s.worker.is_some_and(|w| w.ready));
            if self.boot_failures.len() >= self.settings.crash_limit && !serving {
                self.gave_up = Some(GaveUp::CrashLoop);
                self.stop(actions);
                return;
            }
        }
        let delay = if loss == Loss::Late {
            Duration::ZERO
        } else {
            self.crashes.push_back(now);
            match self.crashes.len() {
                1 => Duration::ZERO,
                n => (FIRST_BACKOFF * (1u32 << (n - 2).min(16))).min(MAX_BACKOFF),
            }
        };
        if delay.is_zero() {
            self.start_slot(slot, actions);
        } else {
            self.slots[slot].restart_at = Some(now + delay);
        }
    }

    /// Every worker is told to drain and exit; every waiting request is answered.
    fn stop(&mut self, actions: &mut Vec<Action>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for s in &mut self.slots {
            s.restart_at = None;
            s.restarting = false;
            s.recycling = None;
            s.starting = None;
            s.held = false;
            s.queued = false;
            if let Some(w) = s.worker.take() {
                self.retiring.push(w.pid);
                actions.push(Action::Stop { pid: w.pid });
            }
        }
        let waiting = self.rollout.take().map(|r| r.waiting).unwrap_or_default();
        for reply in waiting.into_iter().chain(self.queued.drain(..)) {
            actions.push(Action::Reply {
                reply,
                result: RolloutResult::Stopping,
            });
        }
    }

    fn tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.recycling.is_some() && s.restart_deadline.is_some_and(|d| d <= now))
        {
            let pid = self.slots[slot].worker.map_or(0, |w| w.pid);
            let waited = self.restart_wait();
            let reason = format!(
                "worker {pid} neither restarted nor reported a failure within {} s",
                waited.as_secs()
            );
            self.recycle_failed(slot, pid, reason, now, actions);
        }
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.restarting && s.restart_deadline.is_some_and(|d| d <= now))
        {
            let pid = self.slots[slot].worker.map_or(0, |w| w.pid);
            self.slots[slot].restarting = false;
            let waited = self.restart_wait();
            self.end_rollout(
                |done| RolloutResult::Failed {
                    slot,
                    reason: format!(
                        "worker {pid} neither restarted nor reported a failure within {} s",
                        waited.as_secs()
                    ),
                    restarted: done,
                },
                actions,
            );
        }
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if s.restart_at.is_some_and(|t| t <= now) && !self.stopping {
                s.restart_at = None;
                self.start_slot(slot, actions);
            }
            let Some(w) = self.slots[slot].worker else {
                continue;
            };
            if self.deadline_of(&w).is_some_and(|d| d <= now) {
                let why = if w.ready {
                    KillReason::Hung
                } else {
                    KillReason::NotReady
                };
                // Killed: its exit is then a crash of the slot, which starts another.
                actions.push(Action::Kill { pid: w.pid, why });
                self.kills.push((w.pid, now + KILL_GRACE));
                if let Some(w) = self.slots[slot].worker.as_mut() {
                    w.killed = true;
                }
                if self.slots[slot].recycling.take().is_some() {
                    self.begin_queued(actions);
                }
            }
        }
    }

    /// Whether scaling to `workers` may go ahead: not when it would stop the last serving
    /// workers while the slots kept have none (a scale-down removes the highest slots, so
    /// with slot 0's worker unable to start, `scale 1` would keep the broken slot and stop
    /// the one that serves), nor beyond the `room` the primary's open files leave. The
    /// reason, for the operator, when not.
    pub(crate) fn refuse_scale(&self, workers: usize, room: usize) -> Option<String> {
        if self.stopping {
            // The stop ends every worker: a scale would change nothing (and was ignored).
            return Some("the cluster is stopping: not scaling".to_owned());
        }
        if workers > super::MAX_WORKERS {
            return Some(format!(
                "scaling to {workers}: a cluster runs at most {} workers",
                super::MAX_WORKERS
            ));
        }
        if workers > self.slots.len() && workers > room {
            // Workers it cannot start would wait in their slots for ever, and the primary,
            // out of fds, could no longer answer its control socket nor replace a crash.
            return Some(format!(
                "scaling to {workers} needs more open files than the primary may have: its limit allows about \
                 {room} worker(s) (raise LimitNOFILE= or ulimit -n)"
            ));
        }
        if workers >= self.slots.len() {
            return None;
        }
        let serving = |s: &Slot| s.worker.is_some_and(|w| w.ready && !w.killed);
        let kept = self.slots[..workers].iter().filter(|s| serving(s)).count();
        let removed = self.slots[workers..].iter().filter(|s| serving(s)).count();
        (kept == 0 && removed > 0).then(|| {
            format!(
                "scaling to {workers} would stop every serving worker: {} serve now (see status); \
                 scale down once they do",
                if workers <= 1 {
                    "worker 0 does not".to_owned()
                } else {
                    format!("workers 0 to {} do not", workers - 1)
                }
            )
        })
    }

    /// One slot more (`more`) or fewer than now, never fewer than one; ignored while
    /// stopping, as a scale is.
    fn scale_step(&mut self, more: bool, room: usize, actions: &mut Vec<Action>) {
        let now = self.slots.len();
        let workers = if more {
            now.saturating_add(1)
        } else {
            now.saturating_sub(1).max(1)
        };
        if self.stopping || workers == now {
            return;
        }
        match self.refuse_scale(workers, room) {
            Some(reason) => actions.push(Action::ScaleRefused { workers, reason }),
            None => self.scale(workers, actions),
        }
    }

    fn scale(&mut self, workers: usize, actions: &mut Vec<Action>) {
        if self.stopping {
            return;
        }
        let old = self.slots.len();
        self.settings.workers = workers;
        actions.push(Action::Resized { workers });
        if workers > old {
            for slot in old..workers {
                self.slots.push(Slot::default());
                self.start_slot(slot, actions);
            }
        } else {
            for s in self.slots.drain(workers..) {
                if let Some(w) = s.worker {
                    self.retiring.push(w.pid);
                    actions.push(Action::Stop { pid: w.pid });
                }
            }
            if let Some(r) = self.rollout.as_mut() {
                r.queue.retain(|&slot| slot < workers);
                r.awaiting.retain(|&slot| slot < workers);
            }
            // A slot scaled away in the middle of its recycle no longer holds the rollouts
            // asked for meanwhile.
            self.begin_queued(actions);
            // A slot scaled away in the middle of its restart no longer holds the rollout:
            // it goes on with the next slot, or ends.
            self.next_in_rollout(actions);
        }
    }

    fn begin_rollout(&mut self, waiting: Vec<ReplyId>, actions: &mut Vec<Action>) {
        self.rollout = Some(Rollout {
            queue: (0..self.slots.len()).collect(),
            done: 0,
            awaiting: Vec::new(),
            since: self.next_start,
            waiting,
        });
        self.next_in_rollout(actions);
    }

    /// Restarts the next slots of the rollout, up to the surge; ends it when none is left.
    fn next_in_rollout(&mut self, actions: &mut Vec<Action>) {
        let restart_wait = self.restart_wait();
        let Some(r) = self.rollout.as_mut() else {
            return;
        };
        let mut in_progress = self.slots.iter().filter(|s| s.restarting).count();
        let mut stale = Vec::new();
        while in_progress < self.settings.surge {
            let Some(slot) = r.queue.pop_front() else {
                break;
            };
            if let Some(s) = self.slots.get_mut(slot) {
                match s.worker {
                    Some(w) if w.ready && !w.killed => {
                        s.restarting = true;
                        // Its own restart gives up after its ready timeout and says so: this
                        // is for a worker that never acts on the request at all.
                        s.restart_deadline = self.now.checked_add(restart_wait);
                        in_progress += 1;
                        actions.push(Action::Restart { slot, pid: w.pid });
                    }
                    // Starting (after a crash), backing off, or killed as hung and about to
                    // be replaced: it is not asked to restart (a killed worker's exit would
                    // fail the rollout for nothing); the rollout waits for a worker started
                    // from now on to serve there (`awaited_ready`).
                    _ => r.awaiting.push(slot),
                }
                if s.worker.is_some_and(|w| !w.ready) {
                    stale.push(slot);
                }
            }
        }
        // A worker still starting from the program from before is replaced now rather than
        // waited for (and then restarted).
        for slot in stale {
            self.supersede_stale_start(slot, actions);
        }
        let Some(r) = self.rollout.as_ref() else {
            return;
        };
        if in_progress == 0 && r.queue.is_empty() && r.awaiting.is_empty() {
            // A killed worker no longer serves: its slot is one being started.
            let pids = self
                .slots
                .iter()
                .map(|s| s.worker.filter(|w| !w.killed && w.ready).map_or(0, |w| w.pid))
                .collect();
            self.end_rollout(|_| RolloutResult::Done { pids }, actions);
        }
    }

    /// A slot the rollout waits for whose worker is still starting from a start issued
    /// before the rollout began (after a crash, a scale-up): that worker runs the program from
    /// before and would only be restarted once ready, after as long as its ready timeout if
    /// it hangs. It is stopped (its exit is no crash and no boot failure) and a fresh one
    /// starts at once. Not the worker binding the cluster's sockets: the others wait for it.
    fn supersede_stale_start(&mut self, slot: usize, actions: &mut Vec<Action>) {
        let Some(r) = self.rollout.as_ref() else {
            return;
        };
        if self.stopping || self.sockets != Sockets::Known || !r.awaiting.contains(&slot) {
            return;
        }
        let Some(w) = self.slots.get(slot).and_then(|s| s.worker) else {
            return;
        };
        if w.ready || w.killed || w.start.is_none_or(|id| id > r.since) {
            return;
        }
        self.retiring.push(w.pid);
        self.kills.push((w.pid, self.now + KILL_GRACE));
        actions.push(Action::Kill {
            pid: w.pid,
            why: KillReason::Superseded,
        });
        self.slots[slot].worker = None;
        self.start_slot(slot, actions);
    }

    fn end_rollout(&mut self, result: impl FnOnce(usize) -> RolloutResult, actions: &mut Vec<Action>) {
        let Some(r) = self.rollout.take() else {
            return;
        };
        let result = result(r.done);
        for reply in r.waiting {
            actions.push(Action::Reply {
                reply,
                result: result.clone(),
            });
        }
        // A failure stops the rollout; slots still restarting finish theirs.
        for s in &mut self.slots {
            if matches!(result, RolloutResult::Failed { .. }) {
                s.restarting = false;
            }
        }
        if !self.queued.is_empty() && !self.stopping {
            let waiting = std::mem::take(&mut self.queued);
            self.begin_rollout(waiting, actions);
        }
    }

    /// The slot being recycled, if one is.
    pub(crate) fn recycling(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.recycling.is_some())
    }

    /// Rolling restarts asked for while a recycle ran (and no rollout runs): they begin.
    fn begin_queued(&mut self, actions: &mut Vec<Action>) {
        if self.rollout.is_none() && !self.queued.is_empty() && !self.stopping && self.recycling().is_none() {
            let waiting = std::mem::take(&mut self.queued);
            self.begin_rollout(waiting, actions);
        }
    }

    /// After `slot`'s heartbeat with `load`: recycles its worker when it has passed a
    /// threshold, unless anything else replaces workers now (a rollout, asked for or under
    /// way, another recycle, a stop) or the slot waits after a failed recycle. Thresholds are
    /// looked at again at the next heartbeat.
    fn maybe_recycle(&mut self, slot: usize, load: Load, now: Instant, actions: &mut Vec<Action>) {
        let Some(w) = self.slots[slot].worker.filter(|w| w.ready && !w.killed) else {
            return;
        };
        // A worker at its memory threshold within its first minute: recycling it would move
        // the memory (the connections a keep-alive hand-over brought it) rather than free it,
        // or the limit is below what the program needs. Its slot waits, longer each time in a
        // row; a worker that lives a minute under its limit ends the row.
        if let (Some(rss), Some(limit)) = (load.rss, w.limits.memory) {
            let young = now.saturating_duration_since(w.since) < FIRST_BORN_ABOVE_WAIT;
            let s = &mut self.slots[slot];
            if rss >= limit && young && w.first_rss.is_none() {
                if let Some(w) = s.worker.as_mut() {
                    w.first_rss = Some(rss);
                }
                s.born_above = s.born_above.saturating_add(1);
                let wait =
                    (FIRST_BORN_ABOVE_WAIT * (1u32 << (s.born_above - 1).min(16))).min(MAX_BORN_ABOVE_WAIT);
                s.recycle_after = Some(s.recycle_after.map_or(now + wait, |t| t.max(now + wait)));
                actions.push(Action::RecycleNotice {
                    slot,
                    pid: w.pid,
                    notice: RecycleNotice::AboveAtStart { rss, limit, wait },
                });
            } else if rss < limit && !young && w.first_rss.is_none() {
                s.born_above = 0;
            }
        }
        let busy = self.stopping
            || self.rollout.is_some()
            || !self.queued.is_empty()
            || self.recycled_draining.len() >= self.settings.surge
            || self.slots.iter().any(|s| s.restarting || s.recycling.is_some());
        let s = &self.slots[slot];
        if busy || s.recycle_after.is_some_and(|t| now < t) {
            return;
        }
        let requests = w
            .limits
            .requests
            .zip(load.requests)
            .filter(|&(limit, served)| served >= limit)
            .map(|(limit, served)| RecycleReason::Requests { served, limit });
        let memory = w
            .limits
            .memory
            .zip(load.rss)
            .filter(|&(limit, rss)| rss >= limit)
            .map(|(limit, rss)| RecycleReason::Memory { rss, limit });
        let Some(reason) = requests.or(memory) else {
            return;
        };
        let deadline = now.checked_add(self.restart_wait());
        let s = &mut self.slots[slot];
        s.recycling = Some(reason);
        s.restart_deadline = deadline;
        actions.push(Action::Recycle {
            slot,
            pid: w.pid,
            reason,
        });
    }

    /// `slot`'s recycle failed: its worker serves on, and the slot waits before the next try.
    fn recycle_failed(
        &mut self,
        slot: usize,
        pid: u32,
        reason: String,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let s = &mut self.slots[slot];
        s.recycling = None;
        s.recycle_failures = s.recycle_failures.saturating_add(1);
        let retry_in =
            (FIRST_RECYCLE_RETRY * (1u32 << (s.recycle_failures - 1).min(16))).min(MAX_RECYCLE_RETRY);
        s.recycle_after = Some(now + retry_in);
        actions.push(Action::RecycleNotice {
            slot,
            pid,
            notice: RecycleNotice::Failed { reason, retry_in },
        });
        self.begin_queued(actions);
    }

    fn maybe_exit(&mut self, actions: &mut Vec<Action>) {
        let empty = self.slots.iter().all(|s| s.worker.is_none());
        if self.stopping && empty && self.spawning.is_empty() && self.retiring.is_empty() && !self.exited {
            self.exited = true;
            // Processes never heard of (a successor still starting) are told to stop as the
            // driver exits: whatever is still there then is killed.
            self.kill_all_by(self.now + KILL_AFTER);
            actions.push(Action::Exit {
                code: if self.gave_up.is_some() { 1 } else { 0 },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(workers: usize) -> Settings {
        Settings {
            workers,
            surge: 1,
            ready_timeout: Duration::from_secs(30),
            worker_timeout: Some(Duration::from_secs(10)),
            crash_limit: 5,
            recycle: Recycle::default(),
            heartbeat: Duration::from_millis(2500),
            cores: 64,
        }
    }

    /// A cluster of `n` ready workers, pids 100, 101, ...
    fn serving(n: usize, now: Instant) -> Cluster {
        serving_with(settings(n), now)
    }

    /// A cluster of `n` ready workers that may run on one core only, pids 100, 101, ...
    fn serving_on_one_core(n: usize, now: Instant) -> Cluster {
        serving_with(
            Settings {
                cores: 1,
                ..settings(n)
            },
            now,
        )
    }

    /// A cluster of ready workers with `settings`, pids 100, 101, ...
    fn serving_with(settings: Settings, now: Instant) -> Cluster {
        let mut c = Cluster::new(settings);
        // Slots start in order, at most `starts_at_once` together: a ready one lets the next
        // start.
        let mut starts: std::collections::VecDeque<Action> = c.start().into();
        let mut next_slot = 0;
        while let Some(a) = starts.pop_front() {
            let slot = next_slot;
            next_slot += 1;
            let pid = 100 + slot as u32;
            assert_eq!(
                a,
                Action::Start {
                    slot,
                    id: started(&a)
                }
            );
            assert!(c.handle(Event::Started { id: started(&a), pid }, now).is_empty());
            for more in c.handle(Event::Ready { slot, pid }, now) {
                assert!(matches!(more, Action::Start { .. }), "{more:?}");
                starts.push_back(more);
            }
        }
        assert_eq!(next_slot, c.slots.len(), "every slot started: {c:?}");
        c
    }

    /// The start id of a `Start` action.
    fn started(a: &Action) -> StartId {
        match a {
            Action::Start { id, .. } => *id,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    fn pids(c: &Cluster) -> Vec<u32> {
        c.slots.iter().map(|s| s.worker.map_or(0, |w| w.pid)).collect()
    }

    #[test]
    fn a_rolling_restart_replaces_one_slot_at_a_time_and_answers_with_the_new_pids() {
        let now = Instant::now();
        let mut c = serving(3, now);
        let a = c.handle(Event::RestartRequested { reply: 7 }, now);
        assert_eq!(a, vec![Action::Restart { slot: 0, pid: 100 }]);
        // Slot 0's successor is ready: the next slot is restarted, only then.
        let a = c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        assert_eq!(a, vec![Action::Restart { slot: 1, pid: 101 }]);
        assert!(c.retiring.contains(&100), "the old worker drains");
        assert!(
            c.handle(
                Event::Exited {
                    pid: 100,
                    clean: true
                },
                now
            )
            .is_empty(),
            "no crash"
        );
        let a = c.handle(Event::Ready { slot: 1, pid: 201 }, now);
        assert_eq!(a, vec![Action::Restart { slot: 2, pid: 102 }]);
        let a = c.handle(Event::Ready { slot: 2, pid: 202 }, now);
        assert_eq!(
            a,
            vec![Action::Reply {
                reply: 7,
                result: RolloutResult::Done {
                    pids: vec![200, 201, 202]
                }
            }]
        );
    }

    #[test]
    fn a_restart_asked_while_the_workers_start_calls_none_of_them_serving() {
        let now = Instant::now();
        let mut c = Cluster::new(settings(2));
        let starts = c.start();
        // Slot 0 serves; slot 1 has started but is not ready yet (an early SIGUSR2).
        assert!(
            c.handle(
                Event::Started {
                    id: started(&starts[0]),
                    pid: 100
                },
                now
            )
            .is_empty()
        );
        assert!(c.handle(Event::Ready { slot: 0, pid: 100 }, now).is_empty());
        assert!(
            c.handle(
                Event::Started {
                    id: started(&starts[1]),
                    pid: 101
                },
                now
            )
            .is_empty()
        );
        let a = c.handle(Event::RestartRequested { reply: 3 }, now);
        assert_eq!(a, vec![Action::Restart { slot: 0, pid: 100 }]);
        // Started before the restart was asked and still starting at its turn: it is not
        // answered as serving, it is replaced by a fresh start.
        let a = c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        let [
            Action::Kill {
                pid: 101,
                why: KillReason::Superseded,
            },
            Action::Start { slot: 1, id },
        ] = a[..]
        else {
            panic!("the starting worker is not replaced: {a:?}");
        };
        assert!(c.handle(Event::Started { id, pid: 201 }, now).is_empty());
        let a = c.handle(Event::Ready { slot: 1, pid: 201 }, now);
        assert_eq!(
            a,
            vec![Action::Reply {
                reply: 3,
                result: RolloutResult::Done { pids: vec![200, 201] }
            }]
        );
    }

    #[test]
    fn a_failed_slot_stops_the_rollout_and_the_rest_keep_serving() {
        let now = Instant::now();
        let mut c = serving(3, now);
        c.handle(Event::RestartRequested { reply: 1 }, now);
        c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        let a = c.handle(
            Event::RestartFailed {
                pid: 101,
                reason: "exited before it was ready".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::Reply {
                reply: 1,
                result: RolloutResult::Failed {
                    slot: 1,
                    reason: "exited before it was ready".into(),
                    restarted: 1
                }
            }]
        );
        assert_eq!(pids(&c), vec![200, 101, 102], "slot 0 keeps its new worker");
        assert!(c.rollout.is_none());
    }

    #[test]
    fn a_crashed_worker_is_replaced_at_once_then_with_backoff_then_a_cluster_with_nothing_serving_gives_up() {
        let now = Instant::now();
        let mut c = serving(2, now);
        // Worker 1 has gone: nothing else serves (see the next test for a cluster where
        // another worker does).
        c.handle(
            Event::Heartbeat {
                pid: 101,
                load: Load::default(),
            },
            now,
        );
        c.slots[1].worker = None;
        let a = c.handle(
            Event::Exited {
                pid: 100,
                clean: false,
            },
            now,
        );
        assert!(
            matches!(a[..], [Action::Start { slot: 0, .. }]),
            "the first crash: at once"
        );
        assert_eq!(pids(&c), vec![0, 0]);
        c.handle(
            Event::Started {
                id: started(&a[0]),
                pid: 300,
            },
            now,
        );
        let a = c.handle(
            Event::Exited {
                pid: 300,
                clean: false,
            },
            now,
        );
        assert!(a.is_empty(), "the second: after a backoff");
        assert_eq!(c.next_deadline(), Some(now + FIRST_BACKOFF));
        let mut a = c.handle(Event::Tick, now + FIRST_BACKOFF);
        assert!(matches!(a[..], [Action::Start { slot: 0, .. }]));
        for pid in 301..305 {
            c.handle(
                Event::Started {
                    id: started(&a[0]),
                    pid,
                },
                now,
            );
            c.handle(Event::Exited { pid, clean: false }, now);
            a = c.handle(Event::Tick, now + Duration::from_secs(20));
            if c.gave_up.is_some() {
                break;
            }
        }
        assert!(
            c.gave_up.is_some(),
            "5 boot failures within the window, nothing serving"
        );
        assert!(c.stopping);
        assert!(c.exited, "nothing left to wait for: exit 1");
    }

    #[test]
    fn workers_killed_after_serving_a_while_are_replaced_at_once_however_often() {
        let mut now = Instant::now();
        let mut c = serving(2, now);
        let mut pid = 100;
        for n in 0..20u32 {
            now += STABLE;
            c.handle(
                Event::Heartbeat {
                    pid: 101,
                    load: Load::default(),
                },
                now,
            );
            let a = c.handle(Event::Exited { pid, clean: false }, now);
            let [Action::Start { slot: 0, id }] = a[..] else {
                panic!("death {n} of a worker that served {STABLE:?}: replaced at once, got {a:?}")
            };
            pid = 1000 + n;
            c.handle(Event::Started { id, pid }, now);
            c.handle(Event::Ready { slot: 0, pid }, now);
        }
        assert!(
            c.gave_up.is_none() && !c.stopping,
            "an operator's kills are no crash loop"
        );
        // One that dies right after it is ready backs off, and still never ends the cluster.
        let mut delays = Vec::new();
        for n in 0..10u32 {
            now += Duration::from_millis(100);
            c.handle(
                Event::Heartbeat {
                    pid: 101,
                    load: Load::default(),
                },
                now,
            );
            let a = c.handle(Event::Exited { pid, clean: false }, now);
            let id = match a[..] {
                [Action::Start { id, .. }] => {
                    delays.push(Duration::ZERO);
                    id
                }
                [] => {
                    let at = c.slots[0].restart_at.expect("a restart is due");
                    delays.push(at - now);
                    now = at;
                    c.handle(
                        Event::Heartbeat {
                            pid: 101,
                            load: Load::default(),
                        },
                        now,
                    );
                    match c.handle(Event::Tick, now)[..] {
                        [Action::Start { id, .. }] => id,
                        ref other => panic!("expected a start after the backoff: {other:?}"),
                    }
                }
                ref other => panic!("unexpected {other:?}"),
            };
            pid = 2000 + n;
            c.handle(Event::Started { id, pid }, now);
            c.handle(Event::Ready { slot: 0, pid }, now);
        }
        assert!(
            c.gave_up.is_none(),
            "deaths after ready back off but never give up"
        );
        // (Later ones shrink again as the first crashes leave the 30 s window.)
        assert!(
            delays[..7].windows(2).all(|w| w[0] <= w[1]),
            "the backoff grows: {delays:?}"
        );
        assert!(
            delays.iter().all(|&d| d <= MAX_BACKOFF),
            "and is capped: {delays:?}"
        );
    }

    #[test]
    fn a_slot_scaled_away_during_its_restart_does_not_hold_the_rollout() {
        let now = Instant::now();
        let mut c = serving(3, now);
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 1 }, now),
            vec![Action::Restart { slot: 0, pid: 100 }]
        );
        c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        c.handle(Event::Ready { slot: 1, pid: 201 }, now);
        // Slot 2 is restarting; it is scaled away: the rollout ends, answered.
        assert!(c.slots[2].restarting);
        let a = c.handle(
            Event::Scale {
                workers: 2,
                room: usize::MAX,
            },
            now,
        );
        assert!(a.contains(&Action::Stop { pid: 102 }), "{a:?}");
        assert!(
            a.iter().any(|a| matches!(
                a,
                Action::Reply {
                    reply: 1,
                    result: RolloutResult::Done { .. }
                }
            )),
            "{a:?}"
        );
        assert!(c.rollout.is_none());
        // The next restart runs.
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 2 }, now),
            vec![Action::Restart { slot: 0, pid: 200 }]
        );
    }

    #[test]
    fn a_scale_beyond_the_primarys_open_files_is_refused_saying_so() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let why = c.refuse_scale(40, 12).expect("refused");
        assert!(
            why.contains("about 12 worker(s)") && why.contains("ulimit -n"),
            "{why}"
        );
        assert!(
            c.handle(
                Event::Scale {
                    workers: 40,
                    room: 12
                },
                now
            )
            .is_empty()
        );
        assert_eq!(c.slots.len(), 2, "nothing changed");
        assert_eq!(c.refuse_scale(12, 12), None, "up to the room");
        assert_eq!(c.refuse_scale(1, 0), None, "scaling down needs no room");
    }

    #[test]
    fn a_scale_to_many_workers_starts_two_per_core_at_a_time_in_slot_order() {
        let now = Instant::now();
        let mut c = serving_on_one_core(2, now);
        let a = c.handle(
            Event::Scale {
                workers: 7,
                room: usize::MAX,
            },
            now,
        );
        let starts: Vec<usize> = a
            .iter()
            .filter_map(|a| match a {
                Action::Start { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![2, 3], "{a:?}");
        assert!(c.slots[4..].iter().all(|s| s.queued), "{c:?}");
        // Each worker that is ready lets the next slot start; one that fails to start is
        // tried again in its own slot, which waits its turn no more than the others.
        assert!(
            c.handle(
                Event::Started {
                    id: started(&a[2]),
                    pid: 303
                },
                now
            )
            .is_empty()
        );
        let next = c.handle(Event::Ready { slot: 3, pid: 303 }, now);
        assert!(matches!(next[..], [Action::Start { slot: 4, .. }]), "{next:?}");
        c.handle(
            Event::StartFailed {
                id: started(&a[1]),
                reason: "no".into(),
            },
            now,
        );
        assert!(c.starting_now() <= 2, "{c:?}");
        assert!(c.slots[5].queued && c.slots[6].queued, "{c:?}");
        // A stop forgets what waits.
        c.handle(Event::StopRequested, now);
        assert!(c.slots.iter().all(|s| !s.queued), "{c:?}");
    }

    #[test]
    fn a_scale_beyond_the_most_workers_a_cluster_runs_is_refused_saying_so() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let max = super::super::MAX_WORKERS;
        let why = c.refuse_scale(max + 1, usize::MAX).expect("refused");
        assert!(why.contains(&format!("at most {max} workers")), "{why}");
        assert_eq!(c.refuse_scale(max, usize::MAX), None);
        // SIGTTIN at the most: refused, said so.
        c.slots.resize(max, Slot::default());
        let a = c.handle(
            Event::ScaleStep {
                more: true,
                room: usize::MAX,
            },
            now,
        );
        assert!(
            matches!(&a[..], [Action::ScaleRefused { workers, .. }] if *workers == max + 1),
            "{a:?}"
        );
        assert_eq!(c.slots.len(), max);
    }

    #[test]
    fn a_build_that_cannot_start_does_not_end_a_cluster_whose_other_workers_serve() {
        let mut now = Instant::now();
        let mut c = serving(2, now);
        let mut pid = 100;
        for n in 0..20u32 {
            c.handle(
                Event::Heartbeat {
                    pid: 101,
                    load: Load::default(),
                },
                now,
            );
            let a = c.handle(Event::Exited { pid, clean: false }, now);
            let id = match a[..] {
                [Action::Start { id, .. }] => id,
                [] => {
                    now = c.slots[0].restart_at.expect("a start is due");
                    c.handle(
                        Event::Heartbeat {
                            pid: 101,
                            load: Load::default(),
                        },
                        now,
                    );
                    match c.handle(Event::Tick, now)[..] {
                        [Action::Start { id, .. }] => id,
                        ref other => panic!("{other:?}"),
                    }
                }
                ref other => panic!("{other:?}"),
            };
            pid = 1000 + n;
            c.handle(Event::Started { id, pid }, now);
        }
        assert!(
            c.gave_up.is_none() && !c.stopping,
            "worker 1 serves: slot 0 keeps trying"
        );
        // Once the last serving worker is gone too, the cluster gives up.
        c.handle(Event::Exited { pid, clean: false }, now);
        now += Duration::from_secs(2);
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            now,
        );
        let _ = a;
        for _ in 0..10 {
            if c.gave_up.is_some() {
                break;
            }
            let Some(at) = c.next_deadline() else { break };
            now = at;
            for a in c.handle(Event::Tick, now) {
                if let Action::Start { id, .. } = a {
                    pid += 1;
                    c.handle(Event::Started { id, pid }, now);
                    c.handle(Event::Exited { pid, clean: false }, now);
                }
            }
        }
        assert!(
            c.gave_up.is_some(),
            "nothing serves and starts keep failing: give up"
        );
    }

    #[test]
    fn a_scale_down_that_would_stop_the_last_serving_worker_is_refused() {
        let now = Instant::now();
        let mut c = serving(2, now);
        // Slot 0's worker died; its replacement has not started.
        c.handle(
            Event::Heartbeat {
                pid: 101,
                load: Load::default(),
            },
            now,
        );
        c.slots[0].worker = None;
        assert!(
            c.refuse_scale(1, usize::MAX)
                .is_some_and(|r| r.contains("would stop every serving worker"))
        );
        assert!(
            c.handle(
                Event::Scale {
                    workers: 1,
                    room: usize::MAX
                },
                now
            )
            .is_empty(),
            "refused: not even the driver's bookkeeping changes"
        );
        assert_eq!(c.slots.len(), 2, "nothing scaled away");
        assert!(
            c.refuse_scale(3, usize::MAX).is_none(),
            "scaling up within the room is fine"
        );
        // With slot 0 serving again, the same scale-down goes ahead.
        c.slots[0].worker = c.slots[1].worker.map(|w| Worker { pid: 300, ..w });
        assert!(c.refuse_scale(1, usize::MAX).is_none());
        assert_eq!(
            c.handle(
                Event::Scale {
                    workers: 1,
                    room: usize::MAX
                },
                now
            ),
            vec![Action::Resized { workers: 1 }, Action::Stop { pid: 101 }]
        );
    }

    #[test]
    fn a_worker_that_never_acts_on_its_restart_ends_the_rollout_with_the_reason() {
        let now = Instant::now();
        let mut c = Cluster::new(Settings {
            worker_timeout: None,
            ..settings(2)
        });
        for (slot, a) in c.start().into_iter().enumerate() {
            let pid = 100 + slot as u32;
            c.handle(Event::Started { id: started(&a), pid }, now);
            c.handle(Event::Ready { slot, pid }, now);
        }
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 1 }, now),
            vec![Action::Restart { slot: 0, pid: 100 }]
        );
        // Nothing is heard of worker 0 again (its SIGUSR2 blocked, say); no watchdog either.
        let limit = now + Duration::from_secs(30) * 2 + RESTART_MARGIN;
        assert_eq!(c.next_deadline(), Some(limit), "the machine wakes for it");
        let a = c.handle(Event::Tick, limit);
        assert!(
            matches!(&a[..], [Action::Reply { reply: 1, result: RolloutResult::Failed { slot: 0, reason, restarted: 0 } }]
                if reason.contains("neither restarted nor reported")),
            "{a:?}"
        );
        // The next rollout runs.
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 2 }, limit),
            vec![Action::Restart { slot: 0, pid: 100 }]
        );
    }

    #[test]
    fn a_silent_worker_is_killed_as_hung_and_replaced() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let later = now + Duration::from_secs(9);
        c.handle(
            Event::Heartbeat {
                pid: 101,
                load: Load::default(),
            },
            later,
        );
        let a = c.handle(Event::Tick, now + Duration::from_secs(10));
        assert_eq!(
            a,
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
        assert!(
            c.handle(Event::Tick, now + Duration::from_millis(10_400))
                .is_empty(),
            "stopped once"
        );
        let a = c.handle(
            Event::Exited {
                pid: 100,
                clean: false,
            },
            now + Duration::from_millis(10_400),
        );
        assert!(matches!(a[..], [Action::Start { slot: 0, .. }]));
        assert!(
            c.handle(Event::Tick, now + Duration::from_secs(11)).is_empty(),
            "gone: not killed"
        );
    }

    #[test]
    fn a_rollout_leaves_a_worker_killed_as_hung_to_its_replacement_and_does_not_fail_for_it() {
        let now = Instant::now();
        let secs = |ms: u64| now + Duration::from_millis(ms);
        let mut c = serving_with(
            Settings {
                surge: 2,
                ..settings(2)
            },
            now,
        );
        // Worker 101 falls silent and is killed as hung.
        c.handle(
            Event::Heartbeat {
                pid: 100,
                load: Load::default(),
            },
            secs(9_000),
        );
        assert_eq!(
            c.handle(Event::Tick, secs(10_000)),
            vec![Action::Kill {
                pid: 101,
                why: KillReason::Hung
            }]
        );
        // A rolling restart before it has exited: only the live worker is asked to restart.
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 1 }, secs(10_000)),
            vec![Action::Restart { slot: 0, pid: 100 }]
        );
        // The killed worker's exit starts its replacement; the rollout goes on.
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            secs(10_400),
        );
        let [Action::Start { slot: 1, id }] = a[..] else {
            panic!("the killed worker's exit ends the rollout or starts no replacement: {a:?}");
        };
        assert!(c.handle(Event::Started { id, pid: 201 }, secs(10_500)).is_empty());
        assert!(
            c.handle(Event::Ready { slot: 1, pid: 201 }, secs(11_000))
                .is_empty()
        );
        // Worker 100's successor is ready: the rollout is done, every slot with a new worker.
        assert_eq!(
            c.handle(Event::Ready { slot: 0, pid: 200 }, secs(11_500)),
            vec![Action::Reply {
                reply: 1,
                result: RolloutResult::Done { pids: vec![200, 201] }
            }]
        );
    }

    #[test]
    fn a_rollout_waits_for_a_killed_workers_replacement_to_serve() {
        let now = Instant::now();
        let mut c = serving(2, now);
        c.handle(
            Event::Heartbeat {
                pid: 100,
                load: Load::default(),
            },
            now + Duration::from_secs(9),
        );
        c.handle(Event::Tick, now + Duration::from_secs(10));
        c.handle(
            Event::RestartRequested { reply: 1 },
            now + Duration::from_secs(10),
        );
        // Worker 101 (killed as hung) does not serve: slot 0's restart alone does not end it.
        assert_eq!(
            c.handle(Event::Ready { slot: 0, pid: 200 }, now + Duration::from_secs(11)),
            vec![],
            "killed worker 101 does not serve"
        );
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            now + Duration::from_secs(11),
        );
        let [Action::Start { slot: 1, id }] = a[..] else {
            panic!("no replacement for the killed worker: {a:?}");
        };
        assert!(
            c.handle(Event::Started { id, pid: 201 }, now + Duration::from_secs(11))
                .is_empty()
        );
        assert_eq!(
            c.handle(Event::Ready { slot: 1, pid: 201 }, now + Duration::from_secs(12)),
            vec![Action::Reply {
                reply: 1,
                result: RolloutResult::Done { pids: vec![200, 201] }
            }],
        );
    }

    #[test]
    fn a_rollout_restarts_a_worker_started_before_it_that_is_ready_by_its_turn() {
        // Slot 1's worker crashed and its replacement was started from the program then on
        // disk; it is ready by the time its slot's turn comes: it restarts like the others.
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            now + Duration::from_secs(5),
        );
        let [Action::Start { slot: 1, id }] = a[..] else {
            panic!("no replacement: {a:?}");
        };
        c.handle(Event::Started { id, pid: 201 }, now + Duration::from_secs(5));
        let a = c.handle(Event::RestartRequested { reply: 1 }, now + Duration::from_secs(5));
        assert_eq!(a, vec![Action::Restart { slot: 0, pid: 100 }]);
        assert!(
            c.handle(Event::Ready { slot: 1, pid: 201 }, now + Duration::from_secs(5))
                .is_empty()
        );
        assert_eq!(
            c.handle(Event::Ready { slot: 0, pid: 300 }, now + Duration::from_secs(6)),
            vec![Action::Restart { slot: 1, pid: 201 }],
            "a worker of the program from before the rollout"
        );
        assert_eq!(
            c.handle(Event::Ready { slot: 1, pid: 301 }, now + Duration::from_secs(7)),
            vec![Action::Reply {
                reply: 1,
                result: RolloutResult::Done { pids: vec![300, 301] }
            }],
        );
    }

    #[test]
    fn a_rollout_replaces_at_once_a_worker_still_starting_from_before_it() {
        // Slot 1's replacement, started from the program from before, is still starting
        // (hung, say) when the slot's turn comes: it is stopped, not waited for, and its exit
        // is neither a crash nor a boot failure.
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            now + Duration::from_secs(5),
        );
        let [Action::Start { slot: 1, id }] = a[..] else {
            panic!("no replacement: {a:?}");
        };
        c.handle(Event::Started { id, pid: 201 }, now + Duration::from_secs(5));
        c.handle(Event::RestartRequested { reply: 1 }, now + Duration::from_secs(5));
        let a = c.handle(Event::Ready { slot: 0, pid: 300 }, now + Duration::from_secs(6));
        let [
            Action::Kill {
                pid: 201,
                why: KillReason::Superseded,
            },
            Action::Start { slot: 1, id: fresh },
        ] = a[..]
        else {
            panic!("not replaced at once: {a:?}");
        };
        assert!(fresh > id);
        c.handle(
            Event::Started { id: fresh, pid: 202 },
            now + Duration::from_secs(6),
        );
        assert!(
            c.handle(Event::Ready { slot: 1, pid: 201 }, now + Duration::from_secs(6))
                .is_empty(),
            "the superseded worker, ready after all, is not taken back"
        );
        assert!(
            c.handle(
                Event::Exited {
                    pid: 201,
                    clean: false
                },
                now + Duration::from_secs(6)
            )
            .is_empty(),
            "its exit starts nothing"
        );
        assert!(c.boot_failures.is_empty() && c.crashes.is_empty(), "{c:?}");
        assert_eq!(
            c.handle(Event::Ready { slot: 1, pid: 202 }, now + Duration::from_secs(7)),
            vec![Action::Reply {
                reply: 1,
                result: RolloutResult::Done { pids: vec![300, 202] }
            }],
        );
    }

    #[test]
    fn a_start_from_before_a_rollout_reported_once_its_slot_is_awaited_is_replaced() {
        // The start was issued before the rollout, and reported after the rollout reached
        // the slot.
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(
            Event::Exited {
                pid: 100,
                clean: false,
            },
            now + Duration::from_secs(5),
        );
        let [Action::Start { slot: 0, id }] = a[..] else {
            panic!("no replacement: {a:?}");
        };
        let a = c.handle(Event::RestartRequested { reply: 1 }, now + Duration::from_secs(5));
        assert_eq!(
            a,
            vec![Action::Restart { slot: 1, pid: 101 }],
            "slot 0 is awaited, slot 1 restarts"
        );
        let a = c.handle(Event::Started { id, pid: 200 }, now + Duration::from_secs(5));
        let [
            Action::Kill {
                pid: 200,
                why: KillReason::Superseded,
            },
            Action::Start { slot: 0, id: fresh },
        ] = a[..]
        else {
            panic!("not replaced at once: {a:?}");
        };
        assert!(fresh > id);
    }

    #[test]
    fn a_rollout_whose_fresh_start_fails_in_a_slot_without_a_worker_stops_saying_so() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            now + Duration::from_secs(5),
        );
        let [Action::Start { slot: 1, id }] = a[..] else {
            panic!("no replacement: {a:?}");
        };
        c.handle(Event::Started { id, pid: 201 }, now + Duration::from_secs(5));
        c.handle(Event::RestartRequested { reply: 1 }, now + Duration::from_secs(5));
        // The worker from before, still starting when its slot's turn comes, is replaced by
        // one started now...
        let a = c.handle(Event::Ready { slot: 0, pid: 300 }, now + Duration::from_secs(6));
        let [Action::Kill { pid: 201, .. }, Action::Start { slot: 1, id }] = a[..] else {
            panic!("the rollout ended, or no new start: {a:?}");
        };
        assert!(
            c.handle(
                Event::Exited {
                    pid: 201,
                    clean: false
                },
                now + Duration::from_secs(6)
            )
            .is_empty()
        );
        c.handle(Event::Started { id, pid: 202 }, now + Duration::from_secs(7));
        // ...and that one, of the program now installed, fails too: the rollout says so.
        let a = c.handle(
            Event::Exited {
                pid: 202,
                clean: false,
            },
            now + Duration::from_secs(7),
        );
        assert!(
            a.iter().any(|a| matches!(a, Action::Reply {
                reply: 1,
                result: RolloutResult::Failed { slot: 1, reason, restarted: 1 }
            } if reason.contains("new worker 202 exited before it was ready"))),
            "{a:?}"
        );
    }

    #[test]
    fn a_worker_still_there_after_its_kill_grace_is_killed_once() {
        let now = Instant::now();
        let mut c = serving(1, now);
        let at = now + Duration::from_secs(10);
        let a = c.handle(Event::Tick, at);
        assert_eq!(
            a,
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
        assert_eq!(c.next_deadline(), Some(at + KILL_GRACE));
        assert!(
            c.handle(Event::Tick, at + KILL_GRACE - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            c.handle(Event::Tick, at + KILL_GRACE),
            vec![Action::ForceKill { pid: 100 }]
        );
        assert!(
            c.handle(Event::Tick, at + KILL_GRACE * 4).is_empty(),
            "killed once"
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_stop_kills_whatever_is_left_at_its_time_and_again_until_the_driver_exits() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(Event::StopRequested, now);
        assert_eq!(a, vec![Action::Stop { pid: 100 }, Action::Stop { pid: 101 }]);
        let end = now + KILL_AFTER;
        assert_eq!(c.next_deadline(), Some(end));
        assert!(c.handle(Event::Tick, end - Duration::from_millis(1)).is_empty());
        assert_eq!(c.handle(Event::Tick, end), vec![Action::KillAll]);
        // Killed, they exit: the cluster exits, and kills again whatever the driver still has.
        assert!(
            c.handle(
                Event::Exited {
                    pid: 100,
                    clean: false
                },
                end
            )
            .is_empty()
        );
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: false,
            },
            end,
        );
        assert_eq!(a, vec![Action::Exit { code: 0 }]);
        assert_eq!(c.next_deadline(), Some(end + KILL_AGAIN));
        assert_eq!(c.handle(Event::Tick, end + KILL_AGAIN), vec![Action::KillAll]);
    }

    #[test]
    fn a_second_stop_request_stops_everything_at_once_and_kills_what_is_left_a_second_later() {
        let now = Instant::now();
        let mut c = serving(2, now);
        c.handle(Event::StopRequested, now);
        let later = now + Duration::from_secs(5);
        assert_eq!(c.handle(Event::StopRequested, later), vec![Action::TerminateAll]);
        assert_eq!(c.next_deadline(), Some(later + STOP_AT_ONCE));
        assert_eq!(c.handle(Event::Tick, later + STOP_AT_ONCE), vec![Action::KillAll]);
        // Once the cluster exited, a stop request still stops what is left at once.
        let mut c = serving(1, now);
        c.handle(Event::StopRequested, now);
        let a = c.handle(
            Event::Exited {
                pid: 100,
                clean: true,
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 0 }]);
        assert_eq!(c.handle(Event::StopRequested, later), vec![Action::TerminateAll]);
        assert_eq!(c.next_deadline(), Some(later + STOP_AT_ONCE));
    }

    #[test]
    fn a_cluster_that_gives_up_kills_what_is_left_after_the_stop_time() {
        let now = Instant::now();
        let mut c = Cluster::new(Settings {
            crash_limit: 1,
            ..settings(1)
        });
        let a = c.start();
        let a = c.handle(
            Event::StartFailed {
                id: started(&a[0]),
                reason: "no".into(),
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 1 }]);
        assert_eq!(c.next_deadline(), Some(now + KILL_AFTER));
        // A stop request then does not put it off.
        c.handle(Event::StopRequested, now + Duration::from_secs(1));
        assert_eq!(c.handle(Event::Tick, now + KILL_AFTER), vec![Action::KillAll]);
    }

    /// The driver sleeps from `from` until `to` as it asked, and wakes: no stall.
    fn sleeps(c: &mut Cluster, from: Instant, to: Instant) {
        assert!(c.handle(Event::Sleep { until: Some(to) }, from).is_empty());
        assert!(c.handle(Event::Woke, to).is_empty());
    }

    #[test]
    fn a_primary_that_slept_well_past_its_time_counts_heartbeats_afresh() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let margin = Duration::from_secs(5);
        // Stopped for a minute while it waited for the heartbeat deadline: no worker is
        // killed when it resumes, and one that stays silent is killed a timeout later.
        let mut c = serving(2, now);
        assert!(
            c.handle(
                Event::Sleep {
                    until: Some(now + timeout)
                },
                now
            )
            .is_empty()
        );
        let resumed = now + Duration::from_secs(60);
        assert_eq!(
            c.handle(Event::Woke, resumed),
            vec![Action::Stalled(Stall::Asleep {
                slept: Duration::from_secs(60)
            })]
        );
        assert!(c.handle(Event::Tick, resumed).is_empty(), "no worker killed");
        c.handle(
            Event::Heartbeat {
                pid: 101,
                load: Load::default(),
            },
            resumed + Duration::from_secs(5),
        );
        sleeps(&mut c, resumed + Duration::from_secs(5), resumed + timeout);
        let a = c.handle(Event::Tick, resumed + timeout);
        assert_eq!(
            a,
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
        // Woken within the margin of its time, the silence is the workers': judged as ever.
        let mut c = serving(1, now);
        c.handle(
            Event::Sleep {
                until: Some(now + timeout),
            },
            now,
        );
        assert!(c.handle(Event::Woke, now + timeout + margin).is_empty());
        let a = c.handle(Event::Tick, now + timeout + margin);
        assert_eq!(
            a,
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
        // A sleep with no time set (nothing due) is no stall, however long.
        let mut c = serving(1, now);
        c.handle(Event::Sleep { until: None }, now);
        assert!(c.handle(Event::Woke, now + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn a_primary_held_up_by_its_own_work_counts_heartbeats_afresh() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut c = serving(1, now);
        c.handle(
            Event::Sleep {
                until: Some(now + timeout),
            },
            now,
        );
        let woke = now + Duration::from_secs(9);
        assert!(c.handle(Event::Woke, woke).is_empty());
        // Six seconds in a control client's answer, past the worker's deadline.
        let busy = Duration::from_secs(6);
        assert_eq!(
            c.handle(Event::Tick, woke + busy),
            vec![Action::Stalled(Stall::Busy { busy })]
        );
        sleeps(&mut c, woke + busy, woke + busy + timeout);
        assert_eq!(
            c.handle(Event::Tick, woke + busy + timeout),
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
        // Busy for less than the margin: judged as ever.
        let mut c = serving(1, now);
        c.handle(
            Event::Sleep {
                until: Some(now + timeout),
            },
            now,
        );
        c.handle(Event::Woke, woke);
        assert_eq!(
            c.handle(Event::Tick, now + timeout + Duration::from_secs(1)),
            vec![Action::Kill {
                pid: 100,
                why: KillReason::Hung
            }]
        );
    }

    #[test]
    fn a_worker_never_ready_is_killed_at_the_ready_timeout() {
        let now = Instant::now();
        let mut c = Cluster::new(settings(1));
        let a = c.start();
        c.handle(
            Event::Started {
                id: started(&a[0]),
                pid: 5,
            },
            now,
        );
        let a = c.handle(Event::Tick, now + Duration::from_secs(30));
        assert_eq!(
            a,
            vec![Action::Kill {
                pid: 5,
                why: KillReason::NotReady
            }]
        );
    }

    #[test]
    fn a_stop_drains_every_worker_answers_everyone_and_exits_after_the_last() {
        let now = Instant::now();
        let mut c = serving(2, now);
        c.handle(Event::RestartRequested { reply: 1 }, now);
        c.handle(Event::RestartRequested { reply: 2 }, now);
        let a = c.handle(Event::StopRequested, now);
        assert!(a.contains(&Action::Stop { pid: 100 }));
        assert!(a.contains(&Action::Stop { pid: 101 }));
        for reply in [1, 2] {
            assert!(a.contains(&Action::Reply {
                reply,
                result: RolloutResult::Stopping
            }));
        }
        // The successor slot 0 was starting comes up: it is told to go too.
        let a = c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        assert_eq!(a, vec![Action::Stop { pid: 200 }]);
        assert!(
            c.handle(
                Event::Exited {
                    pid: 100,
                    clean: true
                },
                now
            )
            .is_empty()
        );
        assert!(
            c.handle(
                Event::Exited {
                    pid: 200,
                    clean: true
                },
                now
            )
            .is_empty()
        );
        let a = c.handle(
            Event::Exited {
                pid: 101,
                clean: true,
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 0 }]);
        assert!(c.handle(Event::Tick, now).is_empty(), "nothing after the exit");
    }

    /// The actions' starts, by slot.
    fn starts(actions: &[Action]) -> Vec<(usize, StartId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { slot, id } => Some((*slot, *id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn while_the_first_worker_binds_the_sockets_the_other_starts_wait_for_its_ready() {
        let now = Instant::now();
        let mut c = Cluster::new(settings(3)).binding_first();
        let a = c.start();
        let [(0, id)] = starts(&a)[..] else {
            panic!("one start, slot 0's: {a:?}")
        };
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(c.slots[1].held && c.slots[2].held, "{c:?}");
        assert_eq!(
            c.spawning.len(),
            1,
            "only the start asked of the driver awaits its report"
        );
        assert!(c.handle(Event::Started { id, pid: 10 }, now).is_empty());
        let a = c.handle(Event::Ready { slot: 0, pid: 10 }, now);
        assert_eq!(starts(&a).iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(c.sockets, Sockets::Known);
        assert!(c.slots.iter().all(|s| !s.held));
    }

    #[test]
    fn a_first_worker_gone_before_its_ready_ends_the_cluster() {
        let now = Instant::now();
        // Its start fails: nothing else starts, and the cluster ends with 1.
        let mut c = Cluster::new(settings(4)).binding_first();
        let id = starts(&c.start())[0].1;
        let a = c.handle(
            Event::StartFailed {
                id,
                reason: "no".into(),
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 1 }], "{c:?}");
        assert_eq!(c.gave_up, Some(GaveUp::FirstWorker));
        // Its worker exits before it is ready (its address is in use, say): the same, at
        // once, with no backoff and no other slot trying.
        let mut c = Cluster::new(settings(4)).binding_first();
        let id = starts(&c.start())[0].1;
        c.handle(Event::Started { id, pid: 10 }, now);
        let a = c.handle(
            Event::Exited {
                pid: 10,
                clean: false,
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 1 }], "{c:?}");
        assert_eq!(c.gave_up, Some(GaveUp::FirstWorker));
        assert!(c.slots.iter().all(|s| !s.held && s.restart_at.is_none()), "{c:?}");
        // Once one worker was ready, a worker ending before its ready is a boot failure
        // like any other: it is started again.
        let mut c = Cluster::new(settings(2)).binding_first();
        let id = starts(&c.start())[0].1;
        c.handle(Event::Started { id, pid: 10 }, now);
        let a = c.handle(Event::Ready { slot: 0, pid: 10 }, now);
        let [(1, id)] = starts(&a)[..] else {
            panic!("slot 1 starts: {a:?}")
        };
        c.handle(Event::Started { id, pid: 11 }, now);
        let a = c.handle(
            Event::Exited {
                pid: 11,
                clean: false,
            },
            now,
        );
        assert!(matches!(starts(&a)[..], [(1, _)]), "slot 1 again: {a:?}");
        assert_eq!(c.gave_up, None);
    }

    #[test]
    fn a_scale_down_while_the_first_worker_binds_leaves_no_start_behind_and_a_stop_ends() {
        let now = Instant::now();
        let mut c = Cluster::new(settings(4)).binding_first();
        let id = starts(&c.start())[0].1;
        c.handle(Event::Started { id, pid: 10 }, now);
        let a = c.handle(
            Event::Scale {
                workers: 2,
                room: usize::MAX,
            },
            now,
        );
        assert_eq!(a, vec![Action::Resized { workers: 2 }]);
        assert_eq!(
            c.spawning.len(),
            0,
            "no start of a removed slot is left to report"
        );
        let a = c.handle(Event::Ready { slot: 0, pid: 10 }, now);
        let [(1, id)] = starts(&a)[..] else {
            panic!("slot 1 only: {a:?}")
        };
        c.handle(Event::Started { id, pid: 11 }, now);
        c.handle(Event::StopRequested, now);
        c.handle(Event::Exited { pid: 10, clean: true }, now);
        let a = c.handle(Event::Exited { pid: 11, clean: true }, now);
        assert_eq!(a, vec![Action::Exit { code: 0 }], "{c:?}");
    }

    #[test]
    fn a_stop_while_the_first_worker_binds_starts_no_waiting_worker_and_ends() {
        let now = Instant::now();
        let mut c = Cluster::new(settings(8)).binding_first();
        let id = starts(&c.start())[0].1;
        c.handle(Event::Started { id, pid: 10 }, now);
        let a = c.handle(Event::StopRequested, now);
        assert_eq!(a, vec![Action::Stop { pid: 10 }]);
        let a = c.handle(
            Event::Exited {
                pid: 10,
                clean: false,
            },
            now,
        );
        assert_eq!(a, vec![Action::Exit { code: 0 }], "nothing else starts: {a:?}");
    }

    #[test]
    fn a_scale_during_a_stop_is_refused_saying_so() {
        let now = Instant::now();
        let mut c = serving(2, now);
        c.handle(Event::StopRequested, now);
        let said = c.refuse_scale(3, usize::MAX);
        assert!(
            said.as_deref().is_some_and(|s| s.contains("stopping")),
            "{said:?}"
        );
        assert!(
            c.handle(
                Event::Scale {
                    workers: 3,
                    room: usize::MAX
                },
                now
            )
            .is_empty()
        );
        assert_eq!(c.slots.len(), 2);
    }

    #[test]
    fn scaling_up_starts_slots_and_scaling_down_stops_their_workers() {
        let now = Instant::now();
        let mut c = serving(2, now);
        let a = c.handle(
            Event::Scale {
                workers: 3,
                room: usize::MAX,
            },
            now,
        );
        assert!(matches!(
            a[..],
            [Action::Resized { workers: 3 }, Action::Start { slot: 2, .. }]
        ));
        c.handle(
            Event::Started {
                id: started(&a[1]),
                pid: 102,
            },
            now,
        );
        let a = c.handle(
            Event::Scale {
                workers: 1,
                room: usize::MAX,
            },
            now,
        );
        assert_eq!(
            a,
            vec![
                Action::Resized { workers: 1 },
                Action::Stop { pid: 101 },
                Action::Stop { pid: 102 }
            ]
        );
        assert!(
            c.handle(
                Event::Exited {
                    pid: 102,
                    clean: true
                },
                now
            )
            .is_empty(),
            "no crash"
        );
        // A worker a removed slot's restart started is told to go.
        assert_eq!(
            c.handle(Event::Ready { slot: 1, pid: 900 }, now),
            vec![Action::Stop { pid: 900 }]
        );
    }

    #[test]
    fn timeouts_too_long_for_the_clock_never_expire_and_panic_nothing() {
        let now = Instant::now();
        let mut c = Cluster::new(Settings {
            ready_timeout: Duration::MAX,
            worker_timeout: Some(Duration::MAX),
            heartbeat: Duration::MAX,
            ..recycling(2, Some(1), None)
        });
        let starts = c.start();
        for (slot, a) in starts.iter().enumerate() {
            let pid = 100 + slot as u32;
            assert!(c.handle(Event::Started { id: started(a), pid }, now).is_empty());
        }
        assert_eq!(c.next_deadline(), None, "never killed for not being ready");
        for slot in 0..2 {
            let pid = 100 + slot as u32;
            assert!(c.handle(Event::Ready { slot, pid }, now).is_empty());
        }
        assert_eq!(c.next_deadline(), None, "never killed as hung");
        let later = now + Duration::from_secs(10 * 365 * 24 * 3600);
        assert!(c.handle(Event::Tick, later).is_empty());
        assert!(c.handle(Event::Sleep { until: Some(now) }, now).is_empty());
        assert!(c.handle(Event::Woke, later).is_empty(), "no stall");
        // A rolling restart is never given up on.
        assert_eq!(
            c.handle(Event::RestartRequested { reply: 1 }, later),
            vec![Action::Restart { slot: 0, pid: 100 }]
        );
        assert_eq!(c.next_deadline(), None);
        assert_eq!(
            c.handle(Event::Ready { slot: 0, pid: 200 }, later),
            vec![Action::Restart { slot: 1, pid: 101 }]
        );
        assert!(matches!(
            &c.handle(Event::Ready { slot: 1, pid: 201 }, later)[..],
            [Action::Reply {
                reply: 1,
                result: RolloutResult::Done { .. }
            }]
        ));
        // Nor is a recycle.
        assert!(matches!(
            &c.handle(beat(200, 10, 1), later)[..],
            [Action::Recycle {
                slot: 0,
                pid: 200,
                ..
            }]
        ));
        assert_eq!(c.next_deadline(), None);
        assert!(
            c.handle(Event::Tick, later + Duration::from_secs(3600))
                .is_empty()
        );
    }

    #[test]
    fn each_scale_step_counts_from_what_the_machine_has_decided_never_below_one() {
        let now = Instant::now();
        let mut c = serving(1, now);
        // Three SIGTTINs before any worker they start is heard of: three more slots.
        for workers in 2..=4 {
            let a = c.handle(
                Event::ScaleStep {
                    more: true,
                    room: usize::MAX,
                },
                now,
            );
            assert!(
                matches!(&a[..], [Action::Resized { workers: w }, Action::Start { slot, .. }]
                    if *w == workers && *slot == workers - 1),
                "{a:?}"
            );
        }
        assert_eq!((c.settings.workers, c.slots.len()), (4, 4));
        // Beyond the room the primary measured: refused, saying why.
        let a = c.handle(Event::ScaleStep { more: true, room: 4 }, now);
        assert!(
            matches!(&a[..], [Action::ScaleRefused { workers: 5, reason }] if reason.contains("open files")),
            "{a:?}"
        );
        assert_eq!(c.slots.len(), 4);
        // SIGTTOU: one fewer each time, the highest slot going, never below one.
        for workers in (1..=3).rev() {
            let a = c.handle(
                Event::ScaleStep {
                    more: false,
                    room: usize::MAX,
                },
                now,
            );
            assert_eq!(a.first(), Some(&Action::Resized { workers }), "{a:?}");
        }
        assert!(
            c.handle(
                Event::ScaleStep {
                    more: false,
                    room: usize::MAX
                },
                now
            )
            .is_empty(),
            "one worker stays"
        );
        assert_eq!(c.slots.len(), 1);
        // While stopping, as a scale: nothing.
        c.handle(Event::StopRequested, now);
        assert!(
            !c.handle(
                Event::ScaleStep {
                    more: true,
                    room: usize::MAX
                },
                now
            )
            .iter()
            .any(|a| matches!(a, Action::Resized { .. } | Action::Start { .. }))
        );
    }

    #[test]
    fn a_stray_successor_of_a_crashed_worker_does_not_displace_the_fresh_one() {
        let now = Instant::now();
        let mut c = serving(1, now);
        c.handle(Event::RestartRequested { reply: 1 }, now);
        // The worker dies while its successor starts: the rollout fails, the slot restarts.
        let a = c.handle(
            Event::Exited {
                pid: 100,
                clean: false,
            },
            now,
        );
        let start = a
            .iter()
            .find(|a| matches!(a, Action::Start { slot: 0, .. }))
            .expect("a start");
        c.handle(
            Event::Started {
                id: started(start),
                pid: 300,
            },
            now,
        );
        // Its successor comes up anyway: stopped, the fresh worker keeps the slot.
        assert_eq!(
            c.handle(Event::Ready { slot: 0, pid: 200 }, now),
            vec![Action::Stop { pid: 200 }]
        );
        assert_eq!(pids(&c), vec![300]);
    }

    /// What the steering gets after the driver reads `open` connections at `now`, and 10,000
    /// new ones a second since the last reading.
    fn steered_after(c: &mut Cluster, open: u64, now: Instant) -> Vec<usize> {
        let accepted = match c.turns.read {
            Some((at, n)) => n + 10 * now.saturating_duration_since(at).as_millis() as u64,
            None => 0,
        };
        assert!(c.handle(Event::Concurrency { open, accepted }, now).is_empty());
        c.steered_slots(now)
    }

    #[test]
    fn workers_that_share_a_core_take_turns_at_new_connections_while_many_come_and_few_are_open() {
        let t0 = Instant::now();
        let mut c = serving_on_one_core(2, t0);
        let both = vec![0, 1];
        assert_eq!(c.steered_slots(t0), both, "before the driver reads the table");
        assert_eq!(
            steered_after(&mut c, 3, t0),
            both,
            "a first reading says nothing of the rate"
        );
        assert_eq!(
            steered_after(&mut c, 3, t0 + RATE_OVER / 2),
            both,
            "nor one too soon"
        );
        let t1 = t0 + RATE_OVER;
        let first = steered_after(&mut c, 3, t1);
        assert_eq!(
            first.len(),
            1,
            "10,000 new connections a second: one worker's turn: {first:?}"
        );
        assert_eq!(steered_after(&mut c, 7, t1 + TURN / 2), first, "a turn lasts");
        let second = steered_after(&mut c, 0, t1 + TURN);
        assert_eq!(second.len(), 1);
        assert_ne!(second, first, "then the other's");
        assert_eq!(steered_after(&mut c, 5, t1 + TURN * 2), first);
        // Many connections open: every worker at once again, at once; and they begin again
        // only below fewer.
        let t2 = t1 + TURN * 2 + TURN / 2;
        assert_eq!(
            steered_after(&mut c, TURNS_END_PER_CORE - 1, t2),
            first,
            "a moment's more"
        );
        assert_eq!(steered_after(&mut c, TURNS_END_PER_CORE, t2), both);
        assert_eq!(steered_after(&mut c, TURNS_BELOW_PER_CORE, t2), both);
        let again = steered_after(&mut c, TURNS_BELOW_PER_CORE - 1, t2);
        assert_eq!(again, second, "few again: the next worker's turn");
        // Few new connections: every worker, so that a burst after a quiet time is shared.
        let (at, read) = c.turns.read.expect("a reading");
        let t2 = at + RATE_OVER;
        let quiet = read + TURNS_FROM_PER_SECOND / 2 - 1;
        assert!(
            c.handle(
                Event::Concurrency {
                    open: 0,
                    accepted: quiet
                },
                t2
            )
            .is_empty()
        );
        assert_eq!(c.steered_slots(t2), both, "499 in 500 ms");
        assert_eq!(
            steered_after(&mut c, 0, t2 + TURN),
            both,
            "until the next measure"
        );
        assert_eq!(steered_after(&mut c, 0, t2 + RATE_OVER).len(), 1);
        // A count that goes down (as a replaced worker's own would, from 0): no turns until
        // the next measure.
        let t3 = t2 + RATE_OVER * 2;
        assert!(
            c.handle(Event::Concurrency { open: 0, accepted: 0 }, t3)
                .is_empty()
        );
        assert_eq!(c.steered_slots(t3), both);
        // Workers on cores of their own never take turns.
        let mut own = serving_with(
            Settings {
                cores: 2,
                ..settings(2)
            },
            t0,
        );
        for k in 0..3 {
            assert_eq!(steered_after(&mut own, 1, t0 + RATE_OVER * k), both);
        }
    }

    #[test]
    fn a_silent_worker_leaves_the_turns_to_the_others() {
        let t0 = Instant::now();
        let mut c = serving_on_one_core(3, t0);
        // Slot 0's worker is silent (its runtime stopped): the other two take turns.
        c.handle(Event::Silence { silent: vec![100] }, t0);
        steered_after(&mut c, 2, t0);
        let mut seen = std::collections::BTreeSet::new();
        for k in 1..5u32 {
            let now = t0 + RATE_OVER + TURN * k;
            let turn = steered_after(&mut c, 2, now);
            assert_eq!(turn.len(), 1);
            assert_ne!(turn, vec![0], "a silent worker has no turn");
            seen.extend(turn);
        }
        assert_eq!(seen, std::collections::BTreeSet::from([1, 2]));
        // Only one left that may take connections: it takes them all, no turns.
        c.handle(
            Event::Silence {
                silent: vec![100, 101],
            },
            t0 + TURN * 6,
        );
        assert_eq!(steered_after(&mut c, 2, t0 + TURN * 6), vec![2]);
    }

    proptest::proptest! {
        #[test]
        fn every_worker_gets_as_many_turns_as_the_others(
            workers in 2usize..7,
            cores in 1usize..4,
            gaps in proptest::collection::vec(0u64..250, 1..60),
        ) {
            let t0 = Instant::now();
            let mut c = serving_with(Settings { cores, ..settings(workers) }, t0);
            steered_after(&mut c, 0, t0);
            let mut now = t0;
            let mut turns: Vec<Vec<usize>> = Vec::new();
            let mut last = None;
            for gap in gaps {
                now += Duration::from_millis(gap);
                let steered = steered_after(&mut c, 0, now);
                proptest::prop_assert!(!steered.is_empty());
                if workers <= cores {
                    proptest::prop_assert_eq!(steered.len(), workers, "cores enough for all");
                    continue;
                }
                if !c.turns.taking {
                    // Before the first measure of the rate.
                    proptest::prop_assert_eq!(steered.len(), workers);
                    proptest::prop_assert!(now.saturating_duration_since(t0) < RATE_OVER);
                    continue;
                }
                proptest::prop_assert_eq!(steered.len(), cores);
                if last != Some(c.turns.turn) {
                    last = Some(c.turns.turn);
                    turns.push(steered);
                }
            }
            // Over any `workers` consecutive turns, each slot has `cores` of them.
            for run in turns.windows(workers) {
                for slot in 0..workers {
                    let had = run.iter().filter(|t| t.contains(&slot)).count();
                    proptest::prop_assert_eq!(had, cores, "slot {} in {:?}", slot, run);
                }
            }
        }
    }

    fn recycling(n: usize, max_requests: Option<u64>, max_memory: Option<u64>) -> Settings {
        Settings {
            recycle: Recycle {
                max_requests,
                max_memory,
                seed: 7,
            },
            ..settings(n)
        }
    }

    fn beat(pid: u32, requests: u64, rss: u64) -> Event {
        Event::Heartbeat {
            pid,
            load: Load {
                requests: Some(requests),
                rss: Some(rss),
                cannot_accept: false,
            },
        }
    }

    #[test]
    fn a_worker_past_its_request_limit_is_recycled_alone_serving_until_its_successor_is_ready() {
        let now = Instant::now();
        let mut c = serving_with(recycling(2, Some(100), None), now);
        let limit = c.slots[0]
            .worker
            .and_then(|w| w.limits.requests)
            .expect("a limit");
        assert!((100..=110).contains(&limit), "{limit}");
        assert!(
            c.handle(beat(100, limit - 1, 0), now).is_empty(),
            "below its limit"
        );
        assert_eq!(
            c.handle(beat(100, limit, 0), now),
            vec![Action::Recycle {
                slot: 0,
                pid: 100,
                reason: RecycleReason::Requests { served: limit, limit }
            }]
        );
        assert_eq!(pids(&c), vec![100, 101], "the old worker serves on meanwhile");
        assert_eq!(c.recycling(), Some(0));
        // Another worker past its limit waits: one recycle at a time.
        assert!(c.handle(beat(101, 10_000, 0), now).is_empty());
        assert!(c.handle(beat(100, 10_000, 0), now).is_empty(), "once");
        // A rolling restart asked for meanwhile waits for the recycle.
        assert!(c.handle(Event::RestartRequested { reply: 1 }, now).is_empty());
        // The successor is ready: the old one drains, the slot counts its recycle, and the
        // rollout begins.
        let a = c.handle(Event::Ready { slot: 0, pid: 200 }, now);
        assert_eq!(a, vec![Action::Restart { slot: 0, pid: 200 }]);
        assert!(c.retiring.contains(&100));
        assert_eq!(c.slots[0].recycles, 1);
        assert_eq!(c.slots[0].last_recycle.map(|r| r.name()), Some("requests"));
        assert_eq!(c.recycling(), None);
        // Never during a rollout.
        assert!(c.handle(beat(101, 10_000, 0), now).is_empty());
        c.handle(Event::Ready { slot: 0, pid: 300 }, now);
        c.handle(Event::Ready { slot: 1, pid: 301 }, now);
        assert!(c.rollout.is_none());
        // Not while the recycled worker still drains (two processes in its slot meanwhile).
        assert!(c.handle(beat(301, 10_000, 0), now).is_empty());
        c.handle(
            Event::Exited {
                pid: 100,
                clean: true,
            },
            now,
        );
        // After it, each fresh worker counts from its own start.
        assert!(c.handle(beat(301, 50, 0), now).is_empty());
        assert!(matches!(
            c.handle(beat(301, 10_000, 0), now)[..],
            [Action::Recycle {
                slot: 1,
                pid: 301,
                ..
            }]
        ));
        // A stop ends it: nothing recycles while the cluster stops.
        c.handle(Event::StopRequested, now);
        assert_eq!(c.recycling(), None);
        assert!(c.handle(beat(300, 10_000, 0), now).is_empty());
    }

    #[test]
    fn a_failed_recycle_leaves_the_worker_serving_and_is_tried_again_after_a_growing_wait() {
        let now = Instant::now();
        let mut c = serving_with(recycling(1, Some(10), None), now);
        assert!(matches!(
            c.handle(beat(100, 100, 0), now)[..],
            [Action::Recycle { .. }]
        ));
        let a = c.handle(
            Event::RestartFailed {
                pid: 100,
                reason: "exited before it was ready".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::RecycleNotice {
                slot: 0,
                pid: 100,
                notice: RecycleNotice::Failed {
                    reason: "exited before it was ready".into(),
                    retry_in: FIRST_RECYCLE_RETRY
                }
            }]
        );
        assert_eq!(pids(&c), vec![100], "the old worker serves on");
        assert!(
            c.handle(beat(100, 200, 0), now + Duration::from_secs(1))
                .is_empty(),
            "no tight loop"
        );
        let later = now + FIRST_RECYCLE_RETRY;
        assert!(matches!(
            c.handle(beat(100, 300, 0), later)[..],
            [Action::Recycle { .. }]
        ));
        // This one is never heard of again: given up at the restart's deadline, with twice the
        // wait before the next try.
        let deadline = later + Duration::from_secs(30) * 2 + RESTART_MARGIN;
        assert_eq!(
            c.next_deadline(),
            Some(deadline.min(later + Duration::from_secs(10)))
        );
        c.handle(
            Event::Heartbeat {
                pid: 100,
                load: Load::default(),
            },
            deadline - Duration::from_secs(1),
        );
        let a = c.handle(Event::Tick, deadline);
        assert!(
            matches!(&a[..], [Action::RecycleNotice { notice: RecycleNotice::Failed { reason, retry_in }, .. }]
                if reason.contains("neither restarted nor reported") && *retry_in == FIRST_RECYCLE_RETRY * 2),
            "{a:?}"
        );
        assert_eq!(pids(&c), vec![100]);
        assert!(
            c.handle(beat(100, 400, 0), deadline + FIRST_RECYCLE_RETRY)
                .is_empty()
        );
        assert!(matches!(
            c.handle(beat(100, 400, 0), deadline + FIRST_RECYCLE_RETRY * 2)[..],
            [Action::Recycle { .. }]
        ));
    }

    #[test]
    fn a_worker_that_grows_past_its_memory_limit_is_recycled_and_one_there_within_a_minute_waits_longer_each_time()
     {
        let now = Instant::now();
        let mut c = serving_with(recycling(2, None, Some(1000)), now);
        let limit = c.slots[0].worker.and_then(|w| w.limits.memory).expect("a limit");
        assert!(c.handle(beat(100, 0, 500), now).is_empty(), "below");
        // Slot 1's worker reaches the limit within its first minute (connections handed over
        // with it, or a limit below an idle worker's): recycling it at once would churn.
        let a = c.handle(beat(101, 0, 5000), now + Duration::from_secs(2));
        assert!(
            matches!(
                a[..],
                [Action::RecycleNotice {
                    slot: 1,
                    pid: 101,
                    notice: RecycleNotice::AboveAtStart { rss: 5000, wait, .. }
                }] if wait == FIRST_BORN_ABOVE_WAIT
            ),
            "{a:?}"
        );
        assert!(
            c.handle(beat(101, 0, 6000), now + Duration::from_secs(3))
                .is_empty(),
            "once"
        );
        // Slot 0's grows past it after its first minute: recycled.
        let t1 = now + FIRST_BORN_ABOVE_WAIT + Duration::from_secs(1);
        assert_eq!(
            c.handle(beat(100, 0, 2000), t1),
            vec![Action::Recycle {
                slot: 0,
                pid: 100,
                reason: RecycleReason::Memory { rss: 2000, limit }
            }]
        );
        c.handle(Event::Ready { slot: 0, pid: 200 }, t1);
        c.handle(
            Event::Exited {
                pid: 100,
                clean: true,
            },
            t1,
        );
        // Slot 1's wait over (and nothing else recycling), it is recycled like any other.
        let t2 = t1 + Duration::from_secs(2);
        assert!(matches!(
            c.handle(beat(101, 0, 9000), t2)[..],
            [Action::Recycle {
                slot: 1,
                pid: 101,
                reason: RecycleReason::Memory { .. }
            }]
        ));
        c.handle(Event::Ready { slot: 1, pid: 201 }, t2);
        c.handle(
            Event::Exited {
                pid: 101,
                clean: true,
            },
            t2,
        );
        // Its successor at the limit within a second (the memory moved, not freed): twice
        // as long.
        let a = c.handle(beat(201, 0, 9000), t2 + Duration::from_secs(1));
        assert!(
            matches!(
                a[..],
                [Action::RecycleNotice {
                    slot: 1,
                    pid: 201,
                    notice: RecycleNotice::AboveAtStart { wait, .. }
                }] if wait == FIRST_BORN_ABOVE_WAIT * 2
            ),
            "{a:?}"
        );
        assert!(
            c.handle(
                beat(201, 0, 9000),
                t2 + FIRST_BORN_ABOVE_WAIT + Duration::from_secs(2)
            )
            .is_empty()
        );
        assert_eq!(c.slots[0].last_recycle.map(|r| r.name()), Some("memory"));
    }

    #[test]
    fn each_worker_draws_its_own_threshold_within_ten_percent_above_the_setting() {
        let r = Recycle {
            max_requests: Some(10_000),
            max_memory: Some(1 << 30),
            seed: 42,
        };
        let limits: Vec<Limits> = (1..=1000).map(|pid| r.limits_for(pid)).collect();
        let requests: Vec<u64> = limits.iter().filter_map(|l| l.requests).collect();
        assert!(requests.iter().all(|&l| (10_000..=11_000).contains(&l)));
        let (min, max) = (requests.iter().min(), requests.iter().max());
        assert!(
            min < Some(&10_200) && max > Some(&10_800),
            "spread: {min:?} {max:?}"
        );
        assert!(limits.iter().all(|l| {
            l.memory
                .is_some_and(|m| ((1 << 30)..=(1 << 30) + (1 << 30) / 10).contains(&m))
        }));
        assert_eq!(
            r.limits_for(5),
            r.limits_for(5),
            "drawn once per worker: the same for its pid"
        );
        assert_ne!(
            (1..=10).map(|p| r.limits_for(p)).collect::<Vec<_>>(),
            (1..=10)
                .map(|p| Recycle { seed: 43, ..r }.limits_for(p))
                .collect::<Vec<_>>(),
            "another primary, another draw"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        /// What the world does next, in terms the simulation turns into a valid event.
        #[derive(Debug, Clone)]
        enum Step {
            /// The driver reports a pending start (ok or failed), by index.
            StartResult(usize, bool),
            /// A live worker says ready (its own pid), by index.
            Ready(usize),
            /// A worker told to restart is succeeded, or fails, by index.
            RestartResult(usize, bool),
            /// A live process exits, cleanly or not, by index.
            Exit(usize, bool),
            /// A live worker beats, by index, with its requests served, memory, and whether
            /// its accepts fail.
            Beat(usize, u64, u64, bool),
            /// The driver finds these live workers (bits, by index) silent in the load table.
            Silence(u8),
            /// The driver reads this many open, and accepted, connections in the load table.
            Concurrency(u64, u64),
            /// The driver sleeps until its next deadline at most (woken earlier after this many
            /// ms), wakes and ticks.
            Tick(u64),
            /// The driver is stopped: it wakes this many ms after the time it asked for.
            Stall(u64),
            /// The driver wakes on time, then its own work holds it up for this many ms.
            Busy(u64),
            Restart,
            Stop,
            Scale(usize),
            /// `SIGTTIN` (true) or `SIGTTOU`, with the room the driver measured.
            ScaleByOne(bool, usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            // Starts, readiness and heartbeats weigh more: the histories then reach serving
            // workers, and their recycling, often.
            prop_oneof![
                2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::StartResult(i, ok)),
                2 => any::<usize>().prop_map(Step::Ready),
                1 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::RestartResult(i, ok)),
                1 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Step::Exit(i, c)),
                2 => (any::<usize>(), 0u64..300, 0u64..300, proptest::bool::weighted(0.2))
                    .prop_map(|(i, r, m, full)| Step::Beat(i, r, m, full)),
                1 => any::<u8>().prop_map(Step::Silence),
                1 => (0u64..40, 0u64..2_000).prop_map(|(o, a)| Step::Concurrency(o, a)),
                1 => (0u64..40_000).prop_map(Step::Tick),
                1 => (0u64..12_000).prop_map(Step::Stall),
                1 => (0u64..12_000).prop_map(Step::Busy),
                1 => Just(Step::Restart),
                1 => Just(Step::Stop),
                1 => (0usize..5).prop_map(Step::Scale),
                1 => (any::<bool>(), 0usize..6).prop_map(|(more, room)| Step::ScaleByOne(more, room)),
            ]
        }

        /// A cluster starting: its first worker (or the next one) binding the sockets starts,
        /// fails to, exits or gets ready, among scales, stops and pauses.
        fn startup_step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::StartResult(i, ok)),
                2 => any::<usize>().prop_map(Step::Ready),
                3 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Step::Exit(i, c)),
                1 => (0u64..10_000).prop_map(Step::Tick),
                1 => Just(Step::Stop),
                2 => (0usize..6).prop_map(Step::Scale),
            ]
        }

        /// A world of serving, busy workers: mostly starts, readiness and heartbeats past a
        /// low request threshold, short pauses (no worker is silent long enough to be killed
        /// as hung), rolling restarts and scales now and then: recycles overlap with
        /// everything else.
        fn busy_step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => any::<usize>().prop_map(|i| Step::StartResult(i, true)),
                3 => any::<usize>().prop_map(Step::Ready),
                2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::RestartResult(i, ok)),
                1 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Step::Exit(i, c)),
                6 => (any::<usize>(), 0u64..100, 0u64..100, proptest::bool::weighted(0.1))
                    .prop_map(|(i, r, m, full)| Step::Beat(i, r, m, full)),
                1 => any::<u8>().prop_map(Step::Silence),
                2 => (0u64..40, 0u64..2_000).prop_map(|(o, a)| Step::Concurrency(o, a)),
                1 => (0u64..2_000).prop_map(Step::Tick),
                1 => Just(Step::Restart),
                1 => (1usize..8).prop_map(Step::Scale),
            ]
        }

        /// The processes and requests of a simulated world, checked against the machine.
        #[derive(Default)]
        struct World {
            now_ms: u64,
            next_pid: u32,
            /// Starts the machine asked for (id, slot), not yet reported.
            pending_starts: Vec<(StartId, usize)>,
            /// Live processes and the slot each believes it serves.
            live: BTreeMap<u32, usize>,
            /// Workers told to restart, by pid, with their slot.
            restarting: BTreeMap<u32, usize>,
            /// Processes told to stop or killed.
            ended: BTreeSet<u32>,
            asked: BTreeSet<ReplyId>,
            answered: BTreeMap<ReplyId, usize>,
            next_reply: ReplyId,
            exits: usize,
            /// When each process was last heard of (started, ready, a heartbeat) or, after a
            /// stall of the primary, when it resumed.
            heard: BTreeMap<u32, u64>,
            /// When each process was told to stop to be replaced (`Kill`).
            killed: BTreeMap<u32, u64>,
            /// When each stop was requested.
            stops: Vec<u64>,
            /// When every process was first killed (`KillAll`), and told to stop at once.
            killed_all: Option<u64>,
            terminated_all: Option<u64>,
            /// The last pid there was at the last `KillAll`: only later ones may live.
            killed_up_to: u32,
            /// The world's own view of the sockets: unknown until a worker is ready (when the
            /// cluster starts binding them), and the start, then the process, that binds
            /// them meanwhile.
            sockets_unknown: bool,
            binder_start: Option<StartId>,
            binder_pid: Option<u32>,
            /// The workers the machine said it set aside (and has not said it took back).
            aside: BTreeSet<u32>,
            /// The workers whose last heartbeat said their accepts fail.
            full: BTreeSet<u32>,
            /// The workers the driver last found silent.
            silent: BTreeSet<u32>,
        }

        /// The workers' timeout, the stall margin and the kill's grace, in ms (`settings`).
        const TIMEOUT_MS: u64 = 10_000;
        const STALL_MS: u64 = 5_000;
        const GRACE_MS: u64 = KILL_GRACE.as_millis() as u64;

        impl World {
            fn now(&self) -> Instant {
                START.with(|s| *s) + Duration::from_millis(self.now_ms)
            }

            fn ms(at: Instant) -> u64 {
                at.saturating_duration_since(START.with(|s| *s)).as_millis() as u64
            }

            /// Performs `actions`; returns the processes they end at once (`SIGKILL`).
            fn perform(&mut self, actions: Vec<Action>) -> Vec<u32> {
                let mut dying = Vec::new();
                for a in actions {
                    match a {
                        Action::Start { slot, id } => {
                            assert!(self.stops.is_empty(), "start of slot {slot} during a stop");
                            if self.sockets_unknown {
                                assert!(
                                    self.binder_start.is_none() && self.binder_pid.is_none(),
                                    "a second worker binding the sockets (slot {slot}) beside {:?}/{:?}",
                                    self.binder_start,
                                    self.binder_pid
                                );
                                self.binder_start = Some(id);
                            }
                            self.pending_starts.push((id, slot));
                        }
                        Action::Restart { slot, pid } | Action::Recycle { slot, pid, .. } => {
                            assert!(self.live.contains_key(&pid), "restart of a dead {pid}");
                            self.restarting.insert(pid, slot);
                        }
                        Action::RecycleNotice { .. } | Action::Stalled(_) => {}
                        Action::Stop { pid } => {
                            self.ended.insert(pid);
                        }
                        Action::Kill { pid, why } => {
                            if why == KillReason::Hung {
                                let heard = self.heard.get(&pid).copied().unwrap_or(0);
                                assert!(
                                    self.now_ms >= heard + TIMEOUT_MS,
                                    "{pid} killed as hung at {} ms, heard of at {heard} ms",
                                    self.now_ms
                                );
                            }
                            self.ended.insert(pid);
                            self.killed.insert(pid, self.now_ms);
                        }
                        Action::ForceKill { pid } => {
                            let at = self.killed.get(&pid).copied();
                            assert!(
                                at.is_some_and(|at| self.now_ms >= at + GRACE_MS),
                                "{pid} killed at {} ms, told to stop at {at:?}",
                                self.now_ms
                            );
                            dying.push(pid);
                        }
                        Action::TerminateAll => {
                            self.terminated_all.get_or_insert(self.now_ms);
                            self.ended.extend(self.live.keys().copied());
                        }
                        Action::KillAll => {
                            self.killed_all.get_or_insert(self.now_ms);
                            self.killed_up_to = self.next_pid;
                            dying.extend(self.live.keys().copied());
                        }
                        Action::Reply { reply, .. } => {
                            *self.answered.entry(reply).or_default() += 1;
                        }
                        Action::Exit { .. } => self.exits += 1,
                        Action::Resized { .. } | Action::ScaleRefused { .. } => {}
                        Action::SetAside { pid, aside, .. } => {
                            assert_ne!(
                                self.aside.contains(&pid),
                                aside,
                                "{pid} said set aside twice, or taken back unset"
                            );
                            if aside {
                                self.aside.insert(pid);
                            } else {
                                self.aside.remove(&pid);
                            }
                        }
                    }
                }
                dying
            }

            /// `pid` has exited.
            fn gone(&mut self, pid: u32) {
                self.live.remove(&pid);
                if self.binder_pid == Some(pid) {
                    self.binder_pid = None;
                }
            }

            /// A worker is ready: it sent the sockets (or none: the others bind their own).
            fn ready(&mut self, pid: u32) {
                self.heard.insert(pid, self.now_ms);
                self.sockets_unknown = false;
                self.binder_pid = None;
                self.binder_start = None;
            }

            fn pick<T: Copy>(items: impl Iterator<Item = T>, i: usize) -> Option<T> {
                let v: Vec<T> = items.collect();
                (!v.is_empty()).then(|| v[i % v.len()])
            }
        }

        /// `event` to the machine now, its actions performed and the processes they kill
        /// gone (their exits fed back). Returns the actions.
        fn feed(c: &mut Cluster, w: &mut World, event: Event) -> Vec<Action> {
            let actions = c.handle(event, w.now());
            let mut dying = w.perform(actions.clone());
            for _ in 0..10_000 {
                let Some(pid) = dying.pop() else {
                    break;
                };
                if w.live.contains_key(&pid) {
                    w.gone(pid);
                    let more = c.handle(Event::Exited { pid, clean: false }, w.now());
                    dying.extend(w.perform(more));
                }
            }
            actions
        }

        fn check_invariants(c: &Cluster, w: &World) {
            check_takers(c, w);
            let restarting = c.slots.iter().filter(|s| s.restarting).count();
            assert!(restarting <= c.settings.surge, "at most the surge restarting");
            let mut seen = std::collections::BTreeSet::new();
            for s in &c.slots {
                if let Some(wk) = s.worker {
                    assert!(seen.insert(wk.pid), "a pid in two slots");
                    assert!(!c.retiring.contains(&wk.pid), "a pid serving and retiring");
                }
                if !c.stopping {
                    assert!(
                        s.worker.is_some()
                            || s.starting.is_some()
                            || s.restart_at.is_some()
                            || s.held
                            || s.queued,
                        "an empty slot is being refilled: {c:?}"
                    );
                } else {
                    assert!(
                        !s.held && !s.queued,
                        "nothing waits to start during a stop: {c:?}"
                    );
                }
                assert!(
                    !(s.queued && s.held),
                    "a slot waits for one thing at a time: {c:?}"
                );
            }
            assert!(
                c.starting_now() <= c.starts_at_once(),
                "at most {} starting at once: {c:?}",
                c.starts_at_once()
            );
            assert!(
                c.stopping || c.starting_now() == c.starts_at_once() || c.slots.iter().all(|s| !s.queued),
                "a start waits while there is room for it: {c:?}"
            );
            match c.sockets {
                Sockets::Known => assert!(
                    c.slots.iter().all(|s| !s.held),
                    "no start waits once the sockets are known: {c:?}"
                ),
                // Held starts always have a worker binding the sockets for them.
                Sockets::Binding { binder: None } => assert!(
                    c.stopping || c.slots.iter().all(|s| !s.held),
                    "starts wait for sockets nobody binds: {c:?}"
                ),
                Sockets::Binding { binder: Some(b) } if !c.exited => {
                    let world = match (w.binder_start, w.binder_pid) {
                        (Some(id), None) => Some(Binder::Start(id)),
                        (None, Some(pid)) => Some(Binder::Worker(pid)),
                        _ => None,
                    };
                    assert_eq!(Some(b), world, "the machine's binder is the world's: {c:?}");
                }
                Sockets::Binding { .. } => {}
            }
            let recycling: Vec<&Slot> = c.slots.iter().filter(|s| s.recycling.is_some()).collect();
            assert!(recycling.len() <= 1, "at most one recycle at a time: {c:?}");
            assert!(
                c.recycled_draining.len() <= c.settings.surge,
                "no more recycled workers draining than the surge: {c:?}"
            );
            if !recycling.is_empty() {
                assert!(
                    c.recycled_draining.len() < c.settings.surge,
                    "a recycle begins only once the earlier ones drained: {c:?}"
                );
            }
            if let [s] = recycling[..] {
                assert!(c.rollout.is_none(), "no recycle during a rollout");
                assert!(!c.stopping, "no recycle during a stop");
                assert!(
                    c.slots.iter().all(|s| !s.restarting),
                    "nothing else restarts meanwhile"
                );
                assert!(
                    s.worker.is_some_and(|w| w.ready && !w.killed),
                    "a slot being recycled keeps serving: {c:?}"
                );
            }
            if let Some(r) = &c.rollout {
                for &slot in &r.awaiting {
                    assert!(slot < c.slots.len(), "an awaited slot exists: {c:?}");
                    assert!(!r.queue.contains(&slot), "a slot awaited and queued: {c:?}");
                    assert!(
                        !c.slots[slot]
                            .worker
                            .is_some_and(|wk| wk.ready && wk.start.is_some_and(|id| id > r.since)),
                        "a slot awaited although a worker started in the rollout serves there: {c:?}"
                    );
                    if c.sockets == Sockets::Known && !c.stopping {
                        assert!(
                            !c.slots[slot].worker.is_some_and(|wk| !wk.ready
                                && !wk.killed
                                && wk.start.is_some_and(|id| id <= r.since)),
                            "a slot awaited while a worker started before the rollout still starts there: {c:?}"
                        );
                    }
                }
            }
            assert!(w.answered.values().all(|&n| n == 1), "one answer per request");
            assert!(w.exits <= 1, "one exit");
            // A worker told to stop to be replaced is gone once its grace is over.
            for (pid, at) in &w.killed {
                assert!(
                    !w.live.contains_key(pid) || w.now_ms < at + GRACE_MS,
                    "{pid} still there {} ms after its kill",
                    w.now_ms - at
                );
            }
            // A stop always ends: every process is killed by its time, at the latest at the
            // first tick after it; a second request stops everything at once.
            let by = [
                w.stops.first().map(|t| t + KILL_AFTER.as_millis() as u64),
                w.stops.get(1).map(|t| t + STOP_AT_ONCE.as_millis() as u64),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(by) = by.filter(|&by| w.now_ms >= by) {
                assert!(
                    w.killed_all.is_some(),
                    "nothing killed {} ms after the stop's end",
                    w.now_ms - by
                );
                assert!(
                    w.live.keys().all(|&pid| pid > w.killed_up_to),
                    "processes live after the stop's end: {:?}",
                    w.live
                );
            }
            if let Some(second) = w.stops.get(1) {
                assert!(
                    w.terminated_all.is_some_and(|t| t <= *second),
                    "a second stop stops at once"
                );
            }
        }

        /// The driver waits until `late_ms` after its next deadline (at most `sleep_ms` if it
        /// is woken before), then it works `busy_ms` and ticks.
        fn wait(c: &mut Cluster, w: &mut World, sleep_ms: u64, late_ms: u64, busy_ms: u64) {
            let deadline = c.next_deadline().map(World::ms);
            // The driver asks to wake 1 ms after the deadline, never before now.
            let until = deadline.map(|d| d.max(w.now_ms) + 1);
            feed(
                c,
                w,
                Event::Sleep {
                    until: until.map(|u| START.with(|s| *s) + Duration::from_millis(u)),
                },
            );
            w.now_ms = match until {
                Some(u) if late_ms > 0 => u + late_ms,
                Some(u) => u.min(w.now_ms + sleep_ms),
                None => w.now_ms + sleep_ms + late_ms,
            };
            // A pause of the primary well past its time is its own: every worker counts as
            // heard of when it resumes (and a worker that beats after is judged by its beat).
            let stall = until.is_some() && late_ms > STALL_MS;
            if stall {
                let now = w.now_ms;
                w.heard.values_mut().for_each(|t| *t = now);
            }
            let woke = feed(c, w, Event::Woke);
            let stalled = woke
                .iter()
                .any(|a| matches!(a, Action::Stalled(Stall::Asleep { .. })));
            assert_eq!(stalled, stall, "a sleep {late_ms} ms past its time");
            w.now_ms += busy_ms;
            let held_up = busy_ms > STALL_MS;
            if held_up {
                let now = w.now_ms;
                w.heard.values_mut().for_each(|t| *t = now);
            }
            let ticked = feed(c, w, Event::Tick);
            let held = ticked
                .iter()
                .any(|a| matches!(a, Action::Stalled(Stall::Busy { .. })));
            assert_eq!(held, held_up, "held up {busy_ms} ms");
        }

        fn apply(c: &mut Cluster, w: &mut World, step: Step) {
            let event = match step {
                Step::StartResult(i, ok) => {
                    if w.pending_starts.is_empty() {
                        return;
                    }
                    let (id, slot) = w.pending_starts.remove(i % w.pending_starts.len());
                    let binds = w.binder_start == Some(id);
                    if binds {
                        w.binder_start = None;
                    }
                    if ok {
                        w.next_pid += 1;
                        w.live.insert(w.next_pid, slot);
                        w.heard.insert(w.next_pid, w.now_ms);
                        if binds {
                            w.binder_pid = Some(w.next_pid);
                        }
                        Event::Started { id, pid: w.next_pid }
                    } else {
                        Event::StartFailed {
                            id,
                            reason: "no".into(),
                        }
                    }
                }
                Step::Ready(i) => match World::pick(w.live.iter().map(|(&p, &s)| (p, s)), i) {
                    Some((pid, slot)) => {
                        w.ready(pid);
                        Event::Ready { slot, pid }
                    }
                    None => return,
                },
                Step::RestartResult(i, ok) => {
                    let Some((pid, slot)) = World::pick(w.restarting.iter().map(|(&p, &s)| (p, s)), i) else {
                        return;
                    };
                    w.restarting.remove(&pid);
                    if !w.live.contains_key(&pid) {
                        return;
                    }
                    if ok {
                        w.next_pid += 1;
                        w.live.insert(w.next_pid, slot);
                        w.ready(w.next_pid);
                        // The old one drains and exits by itself once succeeded.
                        w.ended.insert(pid);
                        Event::Ready {
                            slot,
                            pid: w.next_pid,
                        }
                    } else {
                        Event::RestartFailed {
                            pid,
                            reason: "failed".into(),
                        }
                    }
                }
                Step::Exit(i, clean) => match World::pick(w.live.keys().copied(), i) {
                    Some(pid) => {
                        w.gone(pid);
                        Event::Exited { pid, clean }
                    }
                    None => return,
                },
                Step::Beat(i, requests, rss, cannot_accept) => match World::pick(w.live.keys().copied(), i) {
                    Some(pid) => {
                        w.heard.insert(pid, w.now_ms);
                        if cannot_accept {
                            w.full.insert(pid);
                        } else {
                            w.full.remove(&pid);
                        }
                        Event::Heartbeat {
                            pid,
                            load: Load {
                                requests: Some(requests),
                                rss: Some(rss),
                                cannot_accept,
                            },
                        }
                    }
                    None => return,
                },
                Step::Silence(bits) => {
                    let silent: Vec<u32> = w
                        .live
                        .keys()
                        .enumerate()
                        .filter(|&(i, _)| i < 8 && bits & (1 << i) != 0)
                        .map(|(_, &pid)| pid)
                        .collect();
                    w.silent = silent.iter().copied().collect();
                    Event::Silence { silent }
                }
                Step::Concurrency(open, accepted) => Event::Concurrency { open, accepted },
                Step::Tick(ms) => {
                    wait(c, w, ms, 0, 0);
                    check_invariants(c, w);
                    return;
                }
                Step::Stall(ms) => {
                    wait(c, w, 0, ms, 0);
                    check_invariants(c, w);
                    return;
                }
                Step::Busy(ms) => {
                    wait(c, w, 0, 0, ms);
                    check_invariants(c, w);
                    return;
                }
                Step::Restart => {
                    w.next_reply += 1;
                    w.asked.insert(w.next_reply);
                    Event::RestartRequested { reply: w.next_reply }
                }
                Step::Stop => {
                    w.stops.push(w.now_ms);
                    Event::StopRequested
                }
                Step::Scale(n) => Event::Scale {
                    workers: n,
                    room: usize::MAX,
                },
                Step::ScaleByOne(more, room) => Event::ScaleStep { more, room },
            };
            feed(c, w, event);
            check_invariants(c, w);
        }

        /// Who takes new connections: never a worker set aside or whose accepts fail; a silent
        /// worker is set aside exactly while another serving worker runs and accepts, and the
        /// operator was told so.
        fn check_takers(c: &Cluster, w: &World) {
            let serving: Vec<Worker> = c
                .slots
                .iter()
                .filter_map(|s| s.worker.filter(|w| w.ready && !w.killed))
                .collect();
            let (takers, aside) = (c.takers(), c.set_aside());
            for wk in &serving {
                assert_eq!(
                    wk.silent,
                    w.silent.contains(&wk.pid),
                    "{} silent as last found: {c:?}",
                    wk.pid
                );
                assert_eq!(
                    wk.cannot_accept,
                    w.full.contains(&wk.pid),
                    "{} cannot accept as last said: {c:?}",
                    wk.pid
                );
            }
            let someone_takes = serving.iter().any(|w| !w.silent && !w.cannot_accept);
            for wk in &serving {
                let expected_aside = wk.silent && someone_takes;
                assert_eq!(
                    aside.contains(&wk.pid),
                    expected_aside,
                    "{} set aside: {c:?}",
                    wk.pid
                );
                assert_eq!(
                    takers.contains(&wk.pid),
                    !wk.cannot_accept && !expected_aside,
                    "{} takes connections: {c:?}",
                    wk.pid
                );
            }
            assert!(
                takers
                    .iter()
                    .chain(&aside)
                    .all(|p| serving.iter().any(|w| w.pid == *p)),
                "only serving workers take or are set aside: {c:?}"
            );
            if someone_takes {
                assert!(!takers.is_empty(), "a worker that runs and accepts takes: {c:?}");
            }
            let steered = c.eligible_slots(w.now());
            assert_eq!(
                steered.is_empty(),
                serving.is_empty(),
                "connections go where a worker serves: {c:?}"
            );
            let in_turn = c.steered_slots(w.now());
            let cores = c.settings.cores.max(1);
            assert!(
                in_turn.iter().all(|i| steered.contains(i)),
                "a turn names only slots connections may go to: {c:?}"
            );
            if c.turns.taking && steered.len() > cores {
                assert_eq!(in_turn.len(), cores, "a turn names one slot per core: {c:?}");
            } else {
                assert_eq!(
                    in_turn, steered,
                    "without turns, every slot they may go to: {c:?}"
                );
            }
            let steady: Vec<usize> = c
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.worker
                        .is_some_and(|wk| wk.ready && !wk.killed && takers.contains(&wk.pid))
                })
                .filter(|(_, s)| !s.restarting && s.recycling.is_none())
                .map(|(i, _)| i)
                .collect();
            for &i in &steered {
                assert!(
                    c.slots[i].worker.is_some_and(|wk| wk.ready && !wk.killed),
                    "slot {i} steered to serves: {c:?}"
                );
            }
            if steered.iter().any(|i| !steady.contains(i)) {
                let heard_steady = steady.iter().any(|&i| {
                    c.slots[i].worker.is_some_and(|wk| {
                        w.now().saturating_duration_since(wk.beat) <= c.settings.heartbeat * 3
                    })
                });
                assert!(
                    !heard_steady,
                    "a worker that does not take steered to beside a steady one: {c:?}"
                );
                assert_eq!(steered.len(), serving.len(), "then every serving one: {c:?}");
            } else {
                assert!(steered.iter().all(|i| steady.contains(i)));
            }
            if !c.exited {
                let said: BTreeSet<u32> = w
                    .aside
                    .iter()
                    .copied()
                    .filter(|p| serving.iter().any(|w| w.pid == *p))
                    .collect();
                assert_eq!(
                    said,
                    aside.iter().copied().collect(),
                    "what the operator was told: {c:?}"
                );
            }
        }

        thread_local! {
            static START: Instant = Instant::now();
        }

        /// A stop (or two), and the world winds down: every pending start reported, every
        /// process exits (those told to stop cleanly) but the `stuck` ones (by pid, a bit
        /// each), which only a kill ends, while time passes; the cluster exits once, every
        /// request answered once, and no process is left.
        fn wind_down(c: &mut Cluster, w: &mut World, stuck: u64, again: bool) -> Result<(), TestCaseError> {
            apply(c, w, Step::Stop);
            if again {
                apply(c, w, Step::Stop);
            }
            for _ in 0..1000 {
                if w.exits == 1 && w.live.is_empty() {
                    break;
                }
                let free = w.live.keys().copied().find(|pid| stuck & (1 << (pid % 64)) == 0);
                if !w.pending_starts.is_empty() {
                    apply(c, w, Step::StartResult(0, true));
                } else if let Some(pid) = free {
                    let clean = w.ended.contains(&pid);
                    w.gone(pid);
                    feed(c, w, Event::Exited { pid, clean });
                    check_invariants(c, w);
                } else {
                    apply(c, w, Step::Tick(40_000));
                }
            }
            prop_assert_eq!(w.exits, 1, "the cluster exits once everything is gone: {:?}", c);
            prop_assert!(w.live.is_empty(), "processes left: {:?}", w.live);
            for reply in &w.asked {
                prop_assert_eq!(w.answered.get(reply), Some(&1), "request {} answered once", reply);
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_history_keeps_the_invariants_and_a_stop_always_ends_in_one_exit(
                workers in 1usize..4,
                surge in 1usize..3,
                max_requests in proptest::option::of(1u64..50),
                max_memory in proptest::option::of(1u64..50),
                seed in any::<u64>(),
                steps in proptest::collection::vec(step(), 0..120),
                stuck in any::<u64>(),
                again in any::<bool>(),
                binding in any::<bool>(),
                cores in 1usize..4,
            ) {
                let recycle = Recycle { max_requests, max_memory, seed };
                let mut c = Cluster::new(Settings { surge, recycle, cores, ..settings(workers) });
                if binding {
                    c = c.binding_first();
                }
                let mut w = World { sockets_unknown: binding, ..World::default() };
                let actions = c.start();
                w.perform(actions);
                for s in steps {
                    apply(&mut c, &mut w, s);
                }
                wind_down(&mut c, &mut w, stuck, again)?;
            }

            #[test]
            fn a_cluster_whose_first_worker_binds_never_has_two_binders_never_starts_in_a_stop_and_always_exits(
                workers in 1usize..6,
                steps in proptest::collection::vec(startup_step(), 0..60),
                stuck in any::<u64>(),
                again in any::<bool>(),
            ) {
                let mut c = Cluster::new(settings(workers)).binding_first();
                let mut w = World { sockets_unknown: true, ..World::default() };
                let actions = c.start();
                w.perform(actions);
                for s in steps {
                    apply(&mut c, &mut w, s);
                }
                wind_down(&mut c, &mut w, stuck, again)?;
            }

            #[test]
            fn timeouts_too_long_for_the_clock_panic_nothing_and_keep_the_invariants(
                workers in 1usize..4,
                ready_timeout in prop_oneof![
                    Just(Duration::MAX),
                    (30u64..=u64::MAX).prop_map(Duration::from_secs),
                ],
                worker_timeout in prop_oneof![
                    Just(None),
                    Just(Some(Duration::MAX)),
                    (TIMEOUT_MS / 1000..=u64::MAX).prop_map(|s| Some(Duration::from_secs(s))),
                ],
                steps in proptest::collection::vec(step(), 0..120),
                stuck in any::<u64>(),
                again in any::<bool>(),
            ) {
                let recycle = Recycle { max_requests: Some(20), max_memory: Some(40), seed: 1 };
                let mut c = Cluster::new(Settings { ready_timeout, worker_timeout, recycle, ..settings(workers) });
                let mut w = World::default();
                let actions = c.start();
                w.perform(actions);
                for s in steps {
                    apply(&mut c, &mut w, s);
                }
                wind_down(&mut c, &mut w, stuck, again)?;
            }

            #[test]
            fn busy_workers_recycle_one_at_a_time_never_in_a_rollout_and_serve_throughout(
                workers in 2usize..5,
                max_requests in 1u64..50,
                max_memory in proptest::option::of(1u64..100),
                seed in any::<u64>(),
                steps in proptest::collection::vec(busy_step(), 0..200),
                cores in 1usize..3,
            ) {
                let recycle = Recycle { max_requests: Some(max_requests), max_memory, seed };
                let mut c = Cluster::new(Settings { recycle, cores, ..settings(workers) });
                let mut w = World::default();
                let actions = c.start();
                w.perform(actions);
                for s in steps {
                    apply(&mut c, &mut w, s);
                }
                wind_down(&mut c, &mut w, 0, false)?;
            }
        }
    }
}
