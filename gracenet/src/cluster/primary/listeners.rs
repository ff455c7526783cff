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
            if is_reuseport_listener(fd)
                && let Err(e) = crate::sys::steer_reuseport(fd.as_fd(), &program)
            {
                tracing::warn!(primary = self.me, error = %e, "cluster: cannot steer new connections to the serving workers: the kernel's hash decides");
                self.stop_steering();
                return;
            }
        }
        if want.is_some() || self.steered.is_some() {
            tracing::debug!(primary = self.me, live = ?program, "cluster: new connections steered");
        }
        self.steered = want;
    }
}

impl Primary {
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
                    tracing::debug!(primary = self.me, error = %e, "cluster: cannot detach the steering program");
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
