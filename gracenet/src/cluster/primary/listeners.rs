//! Each slot's listening sockets: a listener of its own in each `SO_REUSEPORT` group (made
//! beside the first worker's), kept while the slot exists, and new connections steered to the
//! slots whose worker serves.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Primary;
use crate::supervisor::signal_pid;

/// How long a scale-down lets the removed slots' workers go on accepting once new connections
/// are steered away from their listeners, at least: a handshake the kernel placed at one of
/// them just before completes within it (a round trip below a second, no SYN-ACK lost) and
/// lands in its queue, to be accepted too.
const HANDSHAKE_DWELL: Duration = Duration::from_secs(1);

/// The longest a scale-down waits for the removed workers' queues to be empty before telling
/// them to stop (a worker that serves empties its queue in microseconds; a hung one never
/// does, and what it holds is reset as its listener closes, as before).
const HANDOVER_BOUND: Duration = Duration::from_secs(5);

/// How often a handover looks at the removed listeners' queues.
const HANDOVER_POLL: Duration = Duration::from_millis(5);

/// The listeners of the slots one scale-down removed, that nothing is steered to any more:
/// their workers accept what is queued ([`Phase::HandingOver`]), are then told to stop, and
/// the listeners are shut once those have exited ([`Phase::Stopped`]).
pub(super) struct Leaving {
    /// Each removed slot's index in its groups (`None` once no longer known), and its
    /// listeners (one in each group).
    listeners: Vec<(Option<u32>, Vec<OwnedFd>)>,
    /// The removed workers, whose stop the same decision asked for.
    pids: Vec<u32>,
    /// Made by the decision being performed: its workers are still being named.
    fresh: bool,
    phase: Phase,
}

impl Leaving {
    /// `pid` has exited: it is neither signalled nor waited for (its pid may be reused).
    pub(super) fn forget(&mut self, pid: u32) {
        self.pids.retain(|&p| p != pid);
    }
}

enum Phase {
    /// The workers still serve, and accept what their queues hold; since then.
    HandingOver(Instant),
    /// The workers were told to stop; the listeners are shut when they have exited, or then.
    Stopped(Instant),
}

impl Primary {
    /// Copies of `slot`'s sockets for its next worker, made from the store the first time
    /// (none while the first worker binds them).
    pub(super) fn sockets_for(&mut self, slot: usize) -> std::io::Result<Vec<(OwnedFd, String)>> {
        if self.slot_sockets.len() <= slot {
            self.slot_sockets.resize_with(slot + 1, || None);
        }
        if self.slot_sockets[slot].is_none()
            && let Some(store) = &self.store
        {
            let mut own = Vec::with_capacity(store.len());
            let mut joined = false;
            // The store's own listeners are in their groups already (socket activation with
            // `ReusePort=yes`): the first slot takes them, so none is left that nobody accepts
            // from. (Otherwise the first worker bound them and has them already.)
            let take_store = self.next_index == 0 && store.iter().any(|(fd, _)| is_reuseport_listener(fd));
            for (fd, name) in store {
                let fd = match take_store {
                    true => fd.try_clone()?,
                    false => match crate::bind::reuseport_sibling(fd)? {
                        Some(sibling) => {
                            joined = true;
                            sibling
                        }
                        None => fd.try_clone()?,
                    },
                };
                own.push((fd, name.clone()));
            }
            joined |= take_store;
            self.slot_sockets[slot] = Some(own);
            if joined {
                if self.group_index.len() <= slot {
                    self.group_index.resize(slot + 1, None);
                }
                self.group_index[slot] = Some(self.next_index);
                self.next_index += 1;
            }
        }
        match &self.slot_sockets[slot] {
            Some(own) => own
                .iter()
                .map(|(fd, name)| fd.try_clone().map(|fd| (fd, name.clone())))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Sends new connections only to the listeners of slots whose worker serves: a slot
    /// whose worker died, hangs or cannot start gets none until it serves again (what was
    /// already queued for it waits for its next worker).
    pub(super) fn steer(&mut self) {
        self.tend_leaving();
        if !self.steers() {
            return;
        }
        let kept: Vec<u32> = self.group_index.iter().flatten().copied().collect();
        let want = steering(&self.live_indexes(), &kept, self.next_index);
        if want == self.steered {
            return;
        }
        let Some(store) = &self.store else { return };
        // Every listener of the group serving: an even spread over the whole group.
        let program: Vec<u32> = want.clone().unwrap_or_else(|| (0..self.next_index).collect());
        for (fd, _) in store {
            if is_reuseport_listener(fd)
                && let Err(e) = crate::sys::steer_reuseport(fd.as_fd(), &program)
            {
                crate::log::warn!(primary = self.me, error = %e, "cluster: cannot steer new connections to the serving workers: the kernel's hash decides");
                self.stop_steering();
                return;
            }
        }
        if want.is_some() || self.steered.is_some() {
            crate::log::debug!(primary = self.me, live = ?program, "cluster: new connections steered");
        }
        self.steered = want;
    }
}

impl Primary {
    /// Whether new connections can be steered to chosen workers: the slots' listeners are in
    /// `SO_REUSEPORT` groups of two or more, and steering has not failed. (Workers sharing
    /// one socket, as systemd's without `ReusePort=yes`, take what each accepts.)
    pub(super) fn steers(&self) -> bool {
        !self.no_steering && self.next_index >= 2
    }
}

/// The listener indexes new connections go to, in a group of `size` listeners: those of the
/// slots whose worker serves (`live`); when none serves, those of every slot (`kept`), where
/// connections wait for the slots' next workers, and never a listener leaving the group (a
/// removed slot's, soon shut: what waits there would be reset). `None`: the whole group.
fn steering(live: &[u32], kept: &[u32], size: u32) -> Option<Vec<u32>> {
    let to = if live.is_empty() { kept } else { live };
    (!to.is_empty() && to.len() as u32 != size).then(|| to.to_vec())
}

impl Primary {
    /// Before the slots from `workers` on are scaled away: if one of them holds the store's
    /// own listeners (its worker bound them; they stay in their groups as long as the store
    /// holds them, and nobody would accept from them once that worker has gone), the lowest
    /// kept slot's sockets become the store (made now if it has none yet: siblings in the
    /// same groups), and the removed slot's listeners leave their groups as any removed
    /// slot's do. If that cannot be done, the store stays as it was (logged).
    pub(super) fn move_store_off(&mut self, workers: usize) {
        let Some(store) = &self.store else { return };
        let store_ids: Vec<_> = store
            .iter()
            .filter(|(fd, _)| is_reuseport_listener(fd))
            .filter_map(|(fd, _)| socket_id(fd))
            .collect();
        let removed_holds_store = self
            .slot_sockets
            .iter()
            .skip(workers)
            .flatten()
            .flatten()
            .any(|(fd, _)| socket_id(fd).is_some_and(|id| store_ids.contains(&id)));
        if store_ids.is_empty() || !removed_holds_store || workers == 0 {
            return;
        }
        let kept = (0..workers)
            .find(|&slot| self.group_index.get(slot).copied().flatten().is_some())
            .unwrap_or(0);
        let copy = self.sockets_for(kept).and_then(|own| {
            let moved = own
                .iter()
                .any(|(fd, _)| socket_id(fd).is_some_and(|id| !store_ids.contains(&id)));
            moved
                .then_some(own)
                .ok_or_else(|| std::io::Error::other("the kept slot shares the store's listeners"))
        });
        match copy {
            Ok(copy) => {
                crate::log::debug!(
                    primary = self.me,
                    slot = kept,
                    "cluster: scaling down: a kept slot's listeners take the place of the removed slot's that the store held"
                );
                self.store = Some(copy);
            }
            Err(e) => crate::log::warn!(
                primary = self.me,
                error = %e,
                "cluster: scaling down: a removed slot holds the store's listeners and no kept slot can take their place"
            ),
        }
    }
}

impl Primary {
    /// Takes the listeners of the slots from `workers` on (being scaled away; their workers
    /// still serve) out of their `SO_REUSEPORT` groups without resetting a connection queued
    /// at them (the kernel resets those as a listener closes, unless
    /// `net.ipv4.tcp_migrate_req=1`): new connections are steered to the kept slots' serving
    /// workers at once; the machine's stop of the removed workers is held back
    /// ([`Primary::defer_stop`]) until they have accepted what their queues hold
    /// ([`Primary::tend_leaving`], at least [`HANDSHAKE_DWELL`], at most [`HANDOVER_BOUND`]),
    /// and the listeners are shut once those workers have exited ([`Primary::shut_leaving`]).
    /// The primary never blocks for it.
    ///
    /// `false` when that cannot be done (steering is off or fails, no kept worker serves, a
    /// removed listener is the store's own): the caller then stops steering, as before.
    pub(super) fn retire_listeners(&mut self, workers: usize) -> bool {
        let removed: Vec<(usize, u32)> = self
            .group_index
            .iter()
            .enumerate()
            .skip(workers)
            .filter_map(|(slot, index)| index.map(|i| (slot, i)))
            .collect();
        if removed.is_empty() {
            // The removed slots share the store's sockets: nothing of theirs closes.
            return true;
        }
        if self.no_steering {
            return false;
        }
        let Some(store) = &self.store else { return false };
        let store_ids: Vec<_> = store.iter().filter_map(|(fd, _)| socket_id(fd)).collect();
        let mut leaving: Vec<(usize, Vec<OwnedFd>)> = Vec::with_capacity(removed.len());
        for &(slot, _) in &removed {
            let mut fds = Vec::new();
            for (fd, _) in self.slot_sockets.get(slot).into_iter().flatten().flatten() {
                if !is_reuseport_listener(fd) {
                    continue;
                }
                if socket_id(fd).is_none_or(|id| store_ids.contains(&id)) {
                    // The store's own listener (the first worker's, or systemd's): kept open
                    // for the siblings to come, and in the group as it was.
                    crate::log::debug!(
                        primary = self.me,
                        slot,
                        "cluster: scaling down: a removed slot holds the store's own listener"
                    );
                    return false;
                }
                match fd.try_clone() {
                    Ok(fd) => fds.push(fd),
                    Err(_) => return false,
                }
            }
            leaving.push((slot, fds));
        }
        // (The machine's slots are the kept ones already.)
        let kept = self.live_indexes();
        if kept.is_empty() {
            crate::log::debug!(
                primary = self.me,
                "cluster: scaling down: no kept worker serves to steer to"
            );
            return false;
        }
        for (fd, _) in store.iter().filter(|(fd, _)| is_reuseport_listener(fd)) {
            if let Err(e) = crate::sys::steer_reuseport(fd.as_fd(), &kept) {
                crate::log::warn!(primary = self.me, error = %e, "cluster: scaling down: cannot steer new connections away from the removed workers");
                return false;
            }
        }
        self.steered = Some(kept);
        let listeners = leaving
            .into_iter()
            .filter_map(|(slot, fds)| {
                let index = self.group_index.get_mut(slot).and_then(Option::take)?;
                Some((Some(index), fds))
            })
            .collect();
        self.leaving.push(Leaving {
            listeners,
            pids: Vec::new(),
            fresh: true,
            phase: Phase::HandingOver(Instant::now()),
        });
        crate::log::debug!(
            primary = self.me,
            "cluster: scaling down: nothing more is steered to the removed workers; they accept what is queued for them"
        );
        true
    }

    /// The machine stops `pid`: if it is one of the workers a scale-down just removed, it is
    /// told so only once it has accepted what is queued at its listeners (`true`: not yet).
    pub(super) fn defer_stop(&mut self, pid: u32) -> bool {
        let mut deferred = false;
        for l in self.leaving.iter_mut().filter(|l| l.fresh) {
            l.pids.push(pid);
            deferred = true;
        }
        deferred
    }

    /// When the removed listeners are to be looked at next, if any are handed over.
    pub(super) fn next_handover_check(&self) -> Option<Instant> {
        self.leaving.iter().find_map(|l| match l.phase {
            Phase::HandingOver(_) => Some(Instant::now() + HANDOVER_POLL),
            Phase::Stopped(_) => None,
        })
    }

    /// Tells the removed workers to stop once their listeners' queues are empty (or after
    /// [`HANDOVER_BOUND`]), and shuts the listeners of those that have exited.
    pub(super) fn tend_leaving(&mut self) {
        let now = Instant::now();
        let me = self.me;
        for l in self.leaving.iter_mut().filter(|l| !l.fresh) {
            let Phase::HandingOver(since) = l.phase else {
                continue;
            };
            let waited = now.saturating_duration_since(since);
            if waited < HANDSHAKE_DWELL {
                continue;
            }
            let queued: u32 = l
                .listeners
                .iter()
                .flat_map(|(_, fds)| fds)
                .map(|fd| crate::sys::accept_queue_len(fd.as_fd()).unwrap_or(0))
                .sum();
            if queued > 0 && waited < HANDOVER_BOUND {
                continue;
            }
            if queued > 0 {
                crate::log::warn!(
                    primary = me,
                    queued,
                    pids = ?l.pids,
                    waited_ms = waited.as_millis() as u64,
                    "cluster: scaling down: the removed workers did not accept what is queued for them: it is reset"
                );
            }
            for &pid in &l.pids {
                crate::log::info!(primary = me, pid, "cluster: stopping a worker");
                signal_pid(me, pid, Signal::SIGTERM);
            }
            l.phase = Phase::Stopped(now + crate::supervisor::KILL_AFTER);
        }
        self.shut_leaving(now);
    }

    /// The actions of one decision were performed: the workers a scale-down removed are known.
    pub(super) fn performed(&mut self) {
        for l in &mut self.leaving {
            l.fresh = false;
        }
    }

    /// Shuts the removed slots' listeners whose workers have exited (or that waited
    /// [`KILL_AFTER`](crate::supervisor::KILL_AFTER)): `shutdown` takes a listener out of its
    /// group at once, whoever else still holds it, so the kernel's renumbering of the group
    /// happens here and is followed ([`leave_group`]). Nobody accepts from them any more, and
    /// their queues were empty when their workers were told to stop, with nothing steered to
    /// them: nothing is reset.
    fn shut_leaving(&mut self, now: Instant) {
        while let Some(i) = self.leaving.iter().position(|l| match l.phase {
            Phase::Stopped(until) => until <= now || !l.pids.iter().any(|&p| crate::sys::is_running(p)),
            Phase::HandingOver(_) => false,
        }) {
            let mut batch = self.leaving.swap_remove(i);
            // The highest index first: the last listener of a group leaving moves no other.
            while let Some(pos) = (0..batch.listeners.len()).max_by_key(|&p| batch.listeners[p].0) {
                let (index, fds) = batch.listeners.swap_remove(pos);
                if let Some(gone) = index {
                    self.before_leaving(gone);
                }
                for fd in &fds {
                    if let Err(e) = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Read) {
                        // Which listener is which is no longer known.
                        crate::log::warn!(primary = self.me, error = %e, "cluster: cannot shut a removed worker's listener");
                        self.stop_steering();
                    }
                }
                if let Some(gone) = index {
                    let indexes = self
                        .group_index
                        .iter_mut()
                        .chain(batch.listeners.iter_mut().map(|(index, _)| index))
                        .chain(
                            self.leaving
                                .iter_mut()
                                .flat_map(|l| l.listeners.iter_mut().map(|(index, _)| index)),
                        );
                    leave_group(indexes, &mut self.next_index, gone);
                    // Steered anew over the new numbering by `steer` (a value it never wants).
                    self.steered = Some(Vec::new());
                }
                crate::log::debug!(primary = self.me, index = ?index, "cluster: a removed worker's listeners left their groups");
            }
        }
    }

    /// Before the listener at `gone` leaves its group, and the last one takes its index: new
    /// connections are steered away from the last one if another serving listener is there
    /// (the program would otherwise name an index that no longer exists for a moment, and the
    /// kernel's hash would choose, maybe a listener nobody accepts from any more).
    fn before_leaving(&mut self, gone: u32) {
        let last = self.next_index.saturating_sub(1);
        if self.no_steering || gone == last {
            return;
        }
        let live: Vec<u32> = self.live_indexes().into_iter().filter(|&i| i != last).collect();
        let Some(store) = &self.store else { return };
        if live.is_empty() {
            return;
        }
        for (fd, _) in store.iter().filter(|(fd, _)| is_reuseport_listener(fd)) {
            if let Err(e) = crate::sys::steer_reuseport(fd.as_fd(), &live) {
                crate::log::warn!(primary = self.me, error = %e, "cluster: cannot steer new connections to the serving workers: the kernel's hash decides");
                self.stop_steering();
                return;
            }
        }
    }

    /// The group indexes of the slots new connections go to (the machine's
    /// [`steered_slots`](crate::cluster::machine::Cluster::steered_slots)).
    fn live_indexes(&self) -> Vec<u32> {
        self.machine
            .steered_slots(std::time::Instant::now())
            .into_iter()
            .filter_map(|slot| self.group_index.get(slot).copied().flatten())
            .collect()
    }

    /// Leaves the spread of new connections to the kernel's hash from now on: the program
    /// attached so far is detached (its listener numbers may no longer be right).
    pub(super) fn stop_steering(&mut self) {
        if self.no_steering {
            return;
        }
        self.no_steering = true;
        if let Some(store) = &self.store {
            for (fd, _) in store.iter().filter(|(fd, _)| is_reuseport_listener(fd)) {
                if let Err(e) = crate::sys::unsteer_reuseport(fd.as_fd()) {
                    crate::log::debug!(primary = self.me, error = %e, "cluster: cannot detach the steering program");
                }
            }
        }
        self.steered = None;
    }
}

/// A listening TCP socket with `SO_REUSEPORT`: one of a reuseport group's listeners.
fn is_reuseport_listener(fd: &OwnedFd) -> bool {
    let s = socket2::SockRef::from(fd);
    s.reuse_port().unwrap_or(false)
        && s.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
        && s.is_listener().unwrap_or(false)
}

/// Follows the kernel as the listener at index `gone` leaves its `SO_REUSEPORT` group: the
/// group's last listener takes its place (`reuseport_detach_sock`:
/// `socks[i] = socks[num_socks - 1]`), and the group has one fewer (`next`).
fn leave_group<'a>(index: impl IntoIterator<Item = &'a mut Option<u32>>, next: &mut u32, gone: u32) {
    let last = next.saturating_sub(1);
    for i in index {
        if *i == Some(gone) {
            *i = None;
        } else if *i == Some(last) {
            *i = Some(gone);
        }
    }
    *next = last;
}

/// A socket's identity (its device and inode), the same in every copy of its fd.
fn socket_id(fd: &OwnedFd) -> Option<(libc::dev_t, libc::ino_t)> {
    nix::sys::stat::fstat(fd.as_fd())
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_leaving_its_group_gives_its_index_to_the_last_one() {
        let mut index = vec![Some(0), Some(1), None, Some(3), Some(2)];
        let mut next = 4;
        leave_group(&mut index, &mut next, 1);
        assert_eq!(
            (index.as_slice(), next),
            (&[Some(0), None, None, Some(1), Some(2)][..], 3)
        );
        leave_group(&mut index, &mut next, 2);
        assert_eq!(
            (index.as_slice(), next),
            (&[Some(0), None, None, Some(1), None][..], 2)
        );
    }

    #[test]
    fn new_connections_go_to_serving_slots_else_to_every_kept_slot_and_never_to_a_leaving_listener() {
        // Slots at 0 and 1 kept, index 2 a removed slot's listener still in the group.
        assert_eq!(steering(&[1], &[0, 1], 3), Some(vec![1]), "the serving slot");
        // No kept slot serves (the last one crashed during a scale-down's hand-over): the kept
        // slots' listeners hold connections for their next workers; the leaving one, soon
        // shut, gets none (it used to get its share of the whole group's spread).
        assert_eq!(steering(&[], &[0, 1], 3), Some(vec![0, 1]));
        // Nothing leaving: every listener serving, or none, is the whole group.
        assert_eq!(steering(&[0, 1], &[0, 1], 2), None);
        assert_eq!(steering(&[], &[0, 1], 2), None);
        assert_eq!(
            steering(&[], &[], 2),
            None,
            "no listener of a slot's own: the kernel's hash"
        );
    }

    // Linux only: steering is. What the kernel does, checked: the model above, and a
    // listener's queue as TCP_INFO reports it.
    #[cfg(all(target_os = "linux", not(gracenet_portable)))]
    #[test]
    fn the_kernel_renumbers_a_group_as_the_model_says_when_a_listener_is_shut() {
        let template: OwnedFd = {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
                .unwrap();
            s.listen(64).unwrap();
            s.set_nonblocking(true).unwrap();
            s.into()
        };
        let addr = socket2::SockRef::from(&template)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap();
        let group: Vec<OwnedFd> = (0..3)
            .map(|_| {
                crate::bind::reuseport_sibling(&template)
                    .unwrap()
                    .expect("a sibling")
            })
            .collect();
        // Indexes 0 (template), 1, 2, 3. Steered to 1: its queue fills, as TCP_INFO says.
        crate::sys::steer_reuseport(template.as_fd(), &[1]).unwrap();
        let connect = |n| -> Vec<std::net::TcpStream> {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect()
        };
        let _a = connect(5);
        assert_eq!(crate::sys::accept_queue_len(group[0].as_fd()).unwrap(), 5);
        let accept_all = |fd: &OwnedFd| {
            let l = socket2::SockRef::from(fd);
            (0..50).take_while(|_| l.accept().is_ok()).count()
        };
        assert_eq!(accept_all(&group[0]), 5);
        assert_eq!(crate::sys::accept_queue_len(group[0].as_fd()).unwrap(), 0);
        // Index 1 shut: the last (3) becomes 1, even though this process still holds it.
        socket2::SockRef::from(&group[0])
            .shutdown(std::net::Shutdown::Read)
            .unwrap();
        let mut index = vec![Some(0), Some(1), Some(2), Some(3)];
        let mut next = 4;
        leave_group(&mut index, &mut next, 1);
        assert_eq!(index[3], Some(1));
        crate::sys::steer_reuseport(template.as_fd(), &[1]).unwrap();
        let _b = connect(5);
        assert_eq!(
            [&template, &group[1], &group[2]].map(&accept_all),
            [0, 0, 5],
            "the listener that joined last is index 1 now"
        );
        crate::sys::steer_reuseport(template.as_fd(), &[2]).unwrap();
        let _c = connect(5);
        assert_eq!([&template, &group[1], &group[2]].map(&accept_all), [0, 5, 0]);
    }
}
