//! Spreading connections evenly over a cluster's workers that share one listening socket.
//!
//! Workers usually do not share one: each has a TCP listener of its own in one
//! `SO_REUSEPORT` group (`bind::reuseport_sibling`), and the kernel spreads connections by
//! hash. What is shared is what cannot be so: Unix sockets, and sockets a service manager
//! passes without `SO_REUSEPORT` (systemd's, unless `ReusePort=yes`). For those:
//! N processes accepting on one socket do not share it evenly: each new connection wakes
//! every waiting worker, and the one already running (the busiest) takes it first, so one
//! worker ends up with nearly every keep-alive connection (measured here: 64 of 65 with two
//! workers on two cores). The workers therefore publish their open connections in a small
//! table of shared memory the primary creates, and a worker holding clearly more than the
//! lightest live worker waits a moment before accepting, leaving the connection to that one.
//! A worker counts as live while its runtime stamps its entry (every
//! [`STAMP_EVERY`]); a hung or stopped worker is never waited for, and no accept waits more
//! than [`MAX_DEFER`] in all, so the balance can only delay a connection, never strand it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most slots the table holds.
pub(crate) const MAX_SLOTS: usize = 1024;

/// How often a serving worker stamps its entry.
pub(crate) const STAMP_EVERY: Duration = Duration::from_millis(100);

/// A worker whose stamp is older than this is not waited for.
const LIVE: Duration = Duration::from_millis(300);

/// The longest an accept waits, in all, for lighter workers.
pub(crate) const MAX_DEFER: Duration = Duration::from_millis(10);

/// One slot's entry, a cache line of its own (no false sharing between workers).
#[repr(C, align(64))]
struct Entry {
    /// Open connections of the slot's serving worker; in entry 0, the number of slots.
    open: AtomicU64,
    /// When it was last stamped, in microseconds of `CLOCK_MONOTONIC` (system-wide); 0: never.
    stamp: AtomicU64,
    /// The pid of the worker that stamped it last (the one a connection is passed to).
    pid: AtomicU64,
    /// The connections that worker has accepted, as of its stamp.
    accepted: AtomicU64,
}

const ENTRIES: usize = MAX_SLOTS + 1;
const SIZE: usize = ENTRIES * std::mem::size_of::<Entry>();

/// The shared table: entry 0 says how many slots there are (`open`) and whether the workers
/// take turns at new connections (`accepted`, 1 if so), entry `1 + slot` is a slot's.
pub(crate) struct LoadTable {
    entries: NonNull<Entry>,
    fd: OwnedFd,
    /// This process's pid, stamped with its reports.
    me: u32,
}

// SAFETY: the mapping is only read and written through atomics, from any thread.
unsafe impl Send for LoadTable {}
// SAFETY: as above.
unsafe impl Sync for LoadTable {}

impl LoadTable {
    /// A new, zeroed table (the primary's), sealed at its size: no process can truncate it
    /// under the workers' mappings (which would give each of them `SIGBUS`).
    pub(crate) fn create() -> io::Result<LoadTable> {
        let fd = crate::sys::shared_memory("grace-cluster-load", SIZE)?;
        Self::map(fd)
    }

    /// The primary's table, opened from a worker: `pid`'s fd `fd`. A table not sealed at its
    /// size (as [`LoadTable::create`] seals it) is refused: whoever holds it could truncate it
    /// under this worker's mapping.
    pub(crate) fn open(pid: u32, fd: RawFd) -> io::Result<LoadTable> {
        let fd = crate::sys::open_fd_of(pid, fd)?;
        if !crate::sys::is_size_sealed(fd.as_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the load table (fd {}) is not sealed against resizing (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL)",
                    fd.as_raw_fd()
                ),
            ));
        }
        let len = nix::sys::stat::fstat(fd.as_fd())
            .map_err(io::Error::from)?
            .st_size;
        if usize::try_from(len).ok() != Some(SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the load table is {len} bytes, expected {SIZE}"),
            ));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<LoadTable> {
        // SAFETY: a new shared mapping of `SIZE` bytes of a file of exactly that size; the
        // kernel picks the address. It stays mapped until `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries =
            NonNull::new(ptr.cast::<Entry>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(LoadTable {
            entries,
            fd,
            me: std::process::id(),
        })
    }

    /// Says whether the workers take turns at new connections (the primary, as it decides).
    pub(crate) fn set_turns(&self, taking: bool) {
        self.entry(0).accepted.store(u64::from(taking), Ordering::Relaxed);
    }

    /// Whether the workers take turns at new connections, as the primary last said.
    pub(crate) fn turns_taken(&self) -> bool {
        self.entry(0).accepted.load(Ordering::Relaxed) != 0
    }

    /// The fd workers open it by (the primary's).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn entry(&self, index: usize) -> &Entry {
        debug_assert!(index < ENTRIES);
        // SAFETY: `index` is below ENTRIES (callers bound it), the mapping holds ENTRIES
        // entries (page-aligned, so each is aligned) and lives as long as `self`; entries are
        // only touched through atomics.
        unsafe { &*self.entries.as_ptr().add(index.min(ENTRIES - 1)) }
    }

    /// Sets how many slots there are (the primary, at the start and at each scale).
    pub(crate) fn set_slots(&self, n: usize) {
        self.entry(0)
            .open
            .store(n.min(MAX_SLOTS) as u64, Ordering::Relaxed);
    }

    /// A serving worker's report: its `open` connections at `now_us`, and the connections
    /// it has `accepted` (`None`: left as it was).
    pub(crate) fn report(&self, slot: usize, open: u64, accepted: Option<u64>, now_us: u64) {
        if slot < MAX_SLOTS {
            let e = self.entry(1 + slot);
            e.open.store(open, Ordering::Relaxed);
            if let Some(accepted) = accepted {
                e.accepted.store(accepted, Ordering::Relaxed);
            }
            e.pid.store(u64::from(self.me), Ordering::Relaxed);
            e.stamp.store(now_us.max(1), Ordering::Relaxed);
        }
    }

    /// A serving worker's `open` connections as they change (its stamp, which says it is
    /// live, is the runtime's, every [`STAMP_EVERY`]): one store per connection opened or
    /// closed.
    pub(crate) fn set_open(&self, slot: usize, open: u64) {
        if slot < MAX_SLOTS {
            self.entry(1 + slot).open.store(open, Ordering::Relaxed);
        }
    }

    /// The open connections `slot`'s worker last said it holds, and the connections it has
    /// accepted as of its last stamp (any values: it is shared memory).
    pub(crate) fn load_of(&self, slot: usize) -> (u64, u64) {
        if slot < MAX_SLOTS {
            let e = self.entry(1 + slot);
            (e.open.load(Ordering::Relaxed), e.accepted.load(Ordering::Relaxed))
        } else {
            (0, 0)
        }
    }

    /// Counts a connection passed to `slot`'s worker, until it reports its own count. At
    /// `u64::MAX` it stays there (a wrap to 0 would make it look the lightest).
    pub(crate) fn count_passed(&self, slot: usize) {
        if slot < MAX_SLOTS {
            let _ = self
                .entry(1 + slot)
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        }
    }

    /// Whether worker `pid` of `slot` has stamped its entry, but not within [`LIVE`] of
    /// `now_us`: its runtime has stopped running (`SIGSTOP`, a task blocking its thread, a
    /// deadlock) and it accepts nothing, long before the watchdog's timeout says it hangs. An
    /// entry `pid` has not stamped yet (it has just begun to serve) says nothing.
    pub(crate) fn is_silent(&self, slot: usize, pid: u32, now_us: u64) -> bool {
        if slot >= MAX_SLOTS {
            return false;
        }
        let e = self.entry(1 + slot);
        let stamp = e.stamp.load(Ordering::Relaxed);
        e.pid.load(Ordering::Relaxed) == u64::from(pid)
            && stamp != 0
            && now_us.saturating_sub(stamp) > LIVE.as_micros() as u64
    }

    /// The live worker but `slot`'s with the fewest open connections: its count and pid;
    /// `None` when no other is live. Every value read is taken as any process sharing the
    /// table may have written it: a slot count beyond [`MAX_SLOTS`] is [`MAX_SLOTS`], and a
    /// stamp further in the future than [`LIVE`] is not live (a stamp taken just after
    /// `now_us` is).
    pub(crate) fn lightest_other(&self, slot: usize, now_us: u64) -> Option<Lightest> {
        let slots = usize::try_from(self.entry(0).open.load(Ordering::Relaxed))
            .unwrap_or(MAX_SLOTS)
            .min(MAX_SLOTS);
        let live = LIVE.as_micros() as u64;
        (0..slots)
            .filter(|&s| s != slot)
            .map(|s| (s, self.entry(1 + s)))
            .filter(|(_, e)| {
                let stamp = e.stamp.load(Ordering::Relaxed);
                stamp != 0 && now_us.abs_diff(stamp) <= live
            })
            .map(|(s, e)| Lightest {
                slot: s,
                open: e.open.load(Ordering::Relaxed),
                pid: u32::try_from(e.pid.load(Ordering::Relaxed)).unwrap_or(0),
            })
            .min_by_key(|l| l.open)
    }
}

impl Drop for LoadTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of SIZE bytes, unmapped once.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), SIZE);
        }
    }
}

/// The lightest live worker but the asking one ([`LoadTable::lightest_other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lightest {
    /// Its slot.
    pub(crate) slot: usize,
    /// Its open connections.
    pub(crate) open: u64,
    /// Its pid (0 if the entry did not say).
    pub(crate) pid: u32,
}

/// Whether a worker with `mine` open connections should leave the next one to a worker with
/// `lightest` (the lightest live other): it holds clearly more (2, or an eighth, above). The
/// wait ends as soon as one of its own connections closes (short connections close within
/// microseconds), so small differences cost no idle core: without that, 8 clients opening a
/// connection per request on a shared queue left the two workers taking turns a millisecond
/// apart (1,900 requests/s against 35,000).
pub(crate) fn should_defer(mine: u64, lightest: Option<u64>) -> bool {
    // `other` comes from shared memory: any value. A sum past `u64::MAX` is more than `mine`.
    lightest.is_some_and(|other| other.checked_add((mine / 8).max(2)).is_some_and(|t| mine >= t))
}

/// Whether a worker with `mine` open connections should pass a connection it accepted on to
/// one with `other`: it holds at least [`PASS_FROM`] and clearly more (4, or an eighth,
/// above). A wider margin than [`should_defer`]'s: passing costs a message and a wake-up of
/// the other worker, worth it for long-lived connections, not for the small differences
/// short ones make from moment to moment (8 clients opening a connection per request pass
/// about one in ten on at a margin of 4 alone).
pub(crate) fn should_pass(mine: u64, other: u64) -> bool {
    mine >= PASS_FROM && other.checked_add((mine / 8).max(4)).is_some_and(|t| mine >= t)
}

/// The fewest open connections a worker passes a new one on from.
pub(crate) const PASS_FROM: u64 = 8;

/// The fewest open connections a worker passes a new one on from while the workers take
/// turns at new connections (they share cores: `cluster::machine`'s `Turns`): passing one to
/// a worker whose turn it is not would wake it, the switch the turns avoid. The primary ends
/// the turns once this many per core are open. (A client opening a connection per request
/// often opens its next one before the server has closed its last: 8 such clients were seen
/// holding 16 at once in the worker whose turn it was.)
pub(crate) const PASS_IN_TURNS_FROM: u64 = 4 * PASS_FROM;

/// This worker's table and slot, once opened ([`open_for_worker`]).
static WORKER_TABLE: OnceLock<Option<(LoadTable, usize)>> = OnceLock::new();

/// Opens the primary's table for this worker (`slot`), if the primary gave one: called once
/// as the generation starts; later calls return the first result.
pub(crate) fn open_for_worker(
    primary: Option<u32>,
    fd: Option<RawFd>,
    slot: usize,
) -> Option<&'static (LoadTable, usize)> {
    WORKER_TABLE
        .get_or_init(|| {
            let (pid, fd) = (primary?, fd?);
            match LoadTable::open(pid, fd) {
                Ok(table) => Some((table, slot)),
                Err(e) => {
                    crate::log::warn!(
                        "worker {slot}: cannot open the primary's load table ({e}): accepting without balancing"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// This worker's table and slot, if it has one.
pub(crate) fn worker_table() -> Option<&'static (LoadTable, usize)> {
    WORKER_TABLE.get().and_then(Option::as_ref)
}

/// Microseconds of `CLOCK_MONOTONIC`, the same in every process.
pub(crate) fn now_us() -> u64 {
    crate::notify::monotonic_usec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_leaves_connections_to_a_clearly_lighter_one_only() {
        assert!(!should_defer(0, None), "alone: always accept");
        assert!(!should_defer(5, None));
        assert!(!should_defer(0, Some(0)));
        assert!(!should_defer(1, Some(0)), "one more is noise");
        assert!(should_defer(2, Some(0)));
        assert!(!should_defer(17, Some(16)));
        assert!(!should_defer(100, Some(90)), "within an eighth");
        assert!(should_defer(100, Some(87)));
    }

    #[test]
    fn a_worker_passes_connections_on_only_with_a_wider_margin() {
        assert!(!should_pass(3, 0), "short connections make small differences");
        assert!(!should_pass(7, 0), "nor from a worker with few");
        assert!(should_pass(8, 0));
        assert!(should_pass(8, 4));
        assert!(!should_pass(8, 5));
        assert!(!should_pass(33, 30));
        assert!(should_pass(34, 30));
        assert!(!should_pass(100, 89), "within an eighth");
        assert!(should_pass(100, 87));
    }

    #[test]
    fn counts_near_the_top_of_the_range_neither_overflow_nor_defer_to_a_heavier_worker() {
        // `other` is read from shared memory: any value.
        assert!(!should_defer(10, Some(u64::MAX)));
        assert!(!should_defer(u64::MAX, Some(u64::MAX)));
        assert!(!should_defer(u64::MAX, Some(u64::MAX - 1)));
        assert!(should_defer(u64::MAX, Some(0)));
        assert!(!should_pass(100, u64::MAX));
        assert!(!should_pass(u64::MAX, u64::MAX));
        assert!(should_pass(u64::MAX, 0));
    }

    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn a_worker_is_silent_once_its_own_stamp_is_older_than_live() {
        let table = LoadTable::create().expect("memfd");
        let me = std::process::id();
        let now = now_us() + 10_000_000;
        assert!(!table.is_silent(0, me, now), "never stamped: nothing known");
        table.report(0, 3, None, now - LIVE.as_micros() as u64);
        assert!(!table.is_silent(0, me, now), "exactly LIVE old: still live");
        assert!(table.is_silent(0, me, now + 1));
        assert!(
            !table.is_silent(0, me + 1, now + 1),
            "another pid's stamp (its predecessor's) says nothing of it"
        );
        table.report(0, 3, None, now);
        assert!(!table.is_silent(0, me, now + 1));
        assert!(!table.is_silent(MAX_SLOTS, me, now), "beyond the table");
    }

    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn hostile_values_in_the_shared_table_are_clamped() {
        let table = LoadTable::create().expect("memfd");
        let now = now_us();
        let set = |index: usize, open: u64, stamp: u64, pid: u64| {
            let e = table.entry(index);
            e.open.store(open, Ordering::Relaxed);
            e.stamp.store(stamp, Ordering::Relaxed);
            e.pid.store(pid, Ordering::Relaxed);
        };
        // A slot count far beyond the table: every slot of the table is looked at, no more.
        table.entry(0).open.store(u64::MAX, Ordering::Relaxed);
        // Slot 0: live, the most open connections there can be, a pid beyond any pid.
        set(1, u64::MAX, now, u64::MAX);
        // Slot 1: the fewest, but stamped far in the future: not live.
        set(2, 0, u64::MAX, 7);
        // The last slot of the table: stamped just after `now` (a worker that stamped while
        // this one read the clock): live.
        set(MAX_SLOTS, 5, now + 10, 9);
        let lightest = table.lightest_other(1, now);
        assert_eq!(
            lightest,
            Some(Lightest {
                slot: MAX_SLOTS - 1,
                open: 5,
                pid: 9
            })
        );
        assert_eq!(
            table.lightest_other(MAX_SLOTS - 1, now),
            Some(Lightest {
                slot: 0,
                open: u64::MAX,
                pid: 0
            }),
            "the future stamp is not live; a pid beyond u32 is none"
        );
        assert!(!should_defer(3, Some(u64::MAX)));
        // A connection passed to a worker at the top stays at the top (a wrap to 0 would
        // make it the lightest).
        table.count_passed(0);
        assert_eq!(table.entry(1).open.load(Ordering::Relaxed), u64::MAX);
    }

    // Linux only: steering and shared memory are (the portable path says Unsupported).
    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn the_table_is_shared_and_stale_or_foreign_entries_are_not_waited_for() {
        let table = LoadTable::create().expect("memfd");
        let other = LoadTable::open(std::process::id(), table.raw_fd()).expect("open by /proc");
        table.set_slots(3);
        let now = now_us();
        other.report(0, 40, None, now);
        other.report(1, 7, None, now);
        // Slot 2 never stamped: not live.
        let me = std::process::id();
        let open = |l: Option<Lightest>| l.map(|l| l.open);
        assert_eq!(
            table.lightest_other(0, now),
            Some(Lightest {
                slot: 1,
                open: 7,
                pid: me
            })
        );
        assert_eq!(open(table.lightest_other(1, now)), Some(40));
        // A second later, slot 1's stamp is stale: only slot 0 counts for slot 2.
        let later = now + 1_000_000;
        table.report(0, 41, None, later);
        assert_eq!(open(table.lightest_other(2, later)), Some(41));
        assert_eq!(table.lightest_other(0, later), None);
        // Slots beyond the count are not looked at.
        table.set_slots(1);
        assert_eq!(open(table.lightest_other(2, later)), Some(41));
        assert_eq!(table.lightest_other(0, later), None);
    }

    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn the_table_cannot_be_resized_by_anyone_who_opens_it() {
        let table = LoadTable::create().expect("memfd");
        let other = LoadTable::open(std::process::id(), table.raw_fd()).expect("open by /proc");
        other.report(0, 3, None, now_us());
        for fd in [table.fd.as_fd(), other.fd.as_fd()] {
            for len in [0, SIZE as libc::off_t * 2] {
                let e = nix::unistd::ftruncate(fd, len).expect_err("a sealed table keeps its size");
                assert_eq!(e, nix::errno::Errno::EPERM, "ftruncate to {len}");
            }
        }
        // Still mapped and readable: no SIGBUS.
        table.set_slots(2);
        assert_eq!(table.lightest_other(1, now_us()).map(|l| l.open), Some(3));
        // A table of the right size but without the seals is refused by a worker.
        let unsealed = nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&unsealed, SIZE as libc::off_t).expect("size");
        let e = LoadTable::open(std::process::id(), unsealed.as_raw_fd())
            .err()
            .expect("an unsealed table is refused");
        assert!(e.to_string().contains("not sealed"), "{e}");
    }
}
