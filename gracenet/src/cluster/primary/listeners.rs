//! Each slot's listening sockets: a listener of its own in each `SO_REUSEPORT` group (made
//! beside the first worker's), kept while the slot exists, and new connections steered to the
//! slots whose worker serves.

use std::os::fd::{AsFd, OwnedFd};

use super::Primary;

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
            for (fd, name) in store {
                let fd = match crate::bind::reuseport_sibling(fd)? {
                    Some(sibling) => {
                        joined = true;
                        sibling
                    }
                    None => fd.try_clone()?,
                };
                own.push((fd, name.clone()));
            }
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
        if self.no_steering || self.next_index < 2 {
            return;
        }
        let live: Vec<u32> = self
            .machine
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.worker.is_some_and(|w| w.ready && !w.killed))
            .filter_map(|(slot, _)| self.group_index.get(slot).copied().flatten())
            .collect();
        let all = live.len() as u32 == self.next_index;
        let want = if all || live.is_empty() { None } else { Some(live) };
        if want == self.steered {
            return;
        }
        let Some(store) = &self.store else { return };
        // Every slot serving (or none): an even spread over the whole group.
        let program: Vec<u32> = want.clone().unwrap_or_else(|| (0..self.next_index).collect());
        for (fd, _) in store {
            if socket2::SockRef::from(fd).reuse_port().unwrap_or(false)
                && let Err(e) = crate::sys::steer_reuseport(fd.as_fd(), &program)
            {
                tracing::warn!(primary = self.me, error = %e, "cluster: cannot steer new connections to the serving workers: the kernel's hash decides");
                self.no_steering = true;
                return;
            }
        }
        if want.is_some() || self.steered.is_some() {
            tracing::debug!(primary = self.me, live = ?program, "cluster: new connections steered");
        }
        self.steered = want;
    }
}
