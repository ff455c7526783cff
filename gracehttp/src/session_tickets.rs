//! TLS session tickets whose keys outlive a restart: the serving process hands its keys to the
//! next one, so a client resumes its session with the new process instead of making a full
//! handshake (and every client at once, right after each restart).
//!
//! A ticket is the session encrypted and authenticated with ChaCha20-Poly1305 under the
//! current key: the key's random name (16 bytes, also the associated data), a random nonce
//! (12 bytes), the sealed session. Keys rotate every [`ROTATION`]; a ticket sealed with the
//! previous key is still accepted, so a ticket lives between one and two rotations, and a key
//! is forgotten after two.
//!
//! In a cluster's worker, the keys are not the process's own: each is derived from the secret
//! every worker of the cluster shares ([`gracenet::cluster::RANDOM_SECRET`]) and the six-hour
//! period it seals in, so every worker seals and opens with the same keys, rotating at the same
//! moment, and a client resumes on whichever worker its connection lands (a worker's
//! successor derives them too: nothing to hand over).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Prk, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long a key seals new tickets.
pub(crate) const ROTATION: Duration = Duration::from_secs(6 * 60 * 60);

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Tickets up to this long are opened before any is sealed. A session without client
/// certificates takes a few hundred bytes; one with them can take more, and the bound then
/// grows to the longest ticket sealed (and is handed over with the keys). A longer ticket is
/// refused unopened, as rustls's own ticketer does, so an attacker's guesses cannot come as
/// large as the protocol allows.
const LONGEST_TICKET: usize = 4096;
/// What the handed-over bytes start with: a version, so a later format is not misread.
const HANDED_TAG: &[u8] = b"gracehttp tls ticket keys v1\n";
/// The salt of the keys derived from a cluster's shared secret, and the start of each key's
/// label (then its period's number).
const DERIVED_LABEL: &[u8] = b"gracehttp tls ticket key v1";

/// A key's name and secret, as HKDF output.
struct NameAndSecret;

impl KeyType for NameAndSecret {
    fn len(&self) -> usize {
        NAME_LEN + KEY_LEN
    }
}

/// One ticket key.
struct TicketKey {
    name: [u8; NAME_LEN],
    secret: [u8; KEY_LEN],
    key: LessSafeKey,
    /// When it began sealing tickets, in seconds since the Unix epoch.
    since: u64,
}

impl TicketKey {
    /// The key of the period that begins at `since` (a multiple of [`ROTATION`]), derived
    /// from a cluster's shared secret: the same in every process that shares it.
    fn derived(secret: &Prk, since: u64) -> Option<TicketKey> {
        let period = (since / ROTATION.as_secs()).to_be_bytes();
        let mut out = [0; NAME_LEN + KEY_LEN];
        secret
            .expand(&[DERIVED_LABEL, &period], NameAndSecret)
            .ok()?
            .fill(&mut out)
            .ok()?;
        let (name, secret) = out.split_at(NAME_LEN);
        TicketKey::from_parts(name, secret, since)
    }

    fn random(random: &SystemRandom, since: u64) -> Option<TicketKey> {
        let mut name = [0; NAME_LEN];
        let mut secret = [0; KEY_LEN];
        random.fill(&mut name).ok()?;
        random.fill(&mut secret).ok()?;
        TicketKey::from_parts(&name, &secret, since)
    }

    /// `None` when `name` or `secret` is not of its length.
    fn from_parts(name: &[u8], secret: &[u8], since: u64) -> Option<TicketKey> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, secret).ok()?;
        Some(TicketKey {
            name: name.try_into().ok()?,
            secret: secret.try_into().ok()?,
            key: LessSafeKey::new(unbound),
            since,
        })
    }
}

struct Keys {
    current: TicketKey,
    previous: Option<TicketKey>,
}

/// A process's session ticket keys: shared by its TLS sites, handed to the next process at a
/// restart ([`TicketKeys::handed`], [`TicketKeys::adopt`]).
pub(crate) struct TicketKeys {
    keys: Mutex<Keys>,
    random: SystemRandom,
    /// The longest ticket opened: [`LONGEST_TICKET`], or the longest sealed.
    longest: AtomicUsize,
    /// Keys derived from a cluster's shared secret ([`TicketKeys::shared`]), not random.
    derived_from: Option<Prk>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TicketKeys {
    /// A new random key; `None` when the system gives no randomness.
    pub(crate) fn new() -> Option<Arc<TicketKeys>> {
        let random = SystemRandom::new();
        let current = TicketKey::random(&random, now())?;
        Some(Arc::new(TicketKeys {
            keys: Mutex::new(Keys {
                current,
                previous: None,
            }),
            random,
            longest: AtomicUsize::new(LONGEST_TICKET),
            derived_from: None,
        }))
    }

    /// Keys derived from `secret`, which every worker of a cluster shares: each process that
    /// has it seals and opens with the same keys, rotated at the same moments (every
    /// [`ROTATION`] since the Unix epoch). `None` when the system gives no randomness (for
    /// nonces).
    pub(crate) fn shared(secret: &[u8]) -> Option<Arc<TicketKeys>> {
        let prk = Salt::new(HKDF_SHA256, DERIVED_LABEL).extract(secret);
        let at = now();
        let since = at - at % ROTATION.as_secs();
        let current = TicketKey::derived(&prk, since)?;
        let previous = since
            .checked_sub(ROTATION.as_secs())
            .and_then(|before| TicketKey::derived(&prk, before));
        Some(Arc::new(TicketKeys {
            keys: Mutex::new(Keys { current, previous }),
            random: SystemRandom::new(),
            longest: AtomicUsize::new(LONGEST_TICKET),
            derived_from: Some(prk),
        }))
    }

    /// Whether the keys derive from a shared secret ([`TicketKeys::shared`]): then nothing is
    /// handed to the next process, which derives the same ones.
    pub(crate) fn is_shared(&self) -> bool {
        self.derived_from.is_some()
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        // Nothing panics while holding the lock; were it poisoned, the keys are still whole.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys as bytes for the next process (its own secret: sent only over the restart's
    /// private socket pair).
    pub(crate) fn handed(&self) -> Vec<u8> {
        let keys = self.keys();
        let mut out = HANDED_TAG.to_vec();
        out.extend_from_slice(&(self.longest.load(Ordering::Relaxed) as u64).to_be_bytes());
        for key in std::iter::once(&keys.current).chain(keys.previous.as_ref()) {
            out.extend_from_slice(&key.since.to_be_bytes());
            out.extend_from_slice(&key.name);
            out.extend_from_slice(&key.secret);
        }
        out
    }

    /// Takes the keys a previous process handed over. Bytes in another format are left
    /// (the keys stay this process's own), and `false` says so.
    pub(crate) fn adopt(&self, handed: &[u8]) -> bool {
        const ONE: usize = 8 + NAME_LEN + KEY_LEN;
        let Some((longest, body)) = handed
            .strip_prefix(HANDED_TAG)
            .and_then(|rest| rest.split_first_chunk::<8>())
        else {
            return false;
        };
        if body.len() != ONE && body.len() != 2 * ONE {
            return false;
        }
        let parsed: Option<Vec<TicketKey>> = body
            .chunks_exact(ONE)
            .map(|chunk| {
                let (since, rest) = chunk.split_at(8);
                let (name, secret) = rest.split_at(NAME_LEN);
                TicketKey::from_parts(name, secret, u64::from_be_bytes(since.try_into().ok()?))
            })
            .collect();
        let mut parsed = parsed.unwrap_or_default().into_iter();
        let (Some(current), previous) = (parsed.next(), parsed.next()) else {
            return false;
        };
        *self.keys() = Keys { current, previous };
        let longest = usize::try_from(u64::from_be_bytes(*longest)).unwrap_or(usize::MAX);
        self.longest
            .fetch_max(longest.min(u16::MAX as usize), Ordering::Relaxed);
        true
    }

    /// Starts a new key when the current one has sealed tickets for [`ROTATION`] (or the
    /// clock went back by more than that).
    fn rotate_if_due(&self, keys: &mut Keys, at: u64) {
        if let Some(secret) = &self.derived_from {
            // The key of `at`'s period, and the one before: computed alike everywhere.
            let since = at - at % ROTATION.as_secs();
            if since != keys.current.since
                && let Some(current) = TicketKey::derived(secret, since)
            {
                let previous = since
                    .checked_sub(ROTATION.as_secs())
                    .and_then(|before| TicketKey::derived(secret, before));
                *keys = Keys { current, previous };
            }
            return;
        }
        let age = at.abs_diff(keys.current.since);
        if age < ROTATION.as_secs() {
            return;
        }
        if let Some(fresh) = TicketKey::random(&self.random, at) {
            keys.previous = Some(std::mem::replace(&mut keys.current, fresh));
        }
    }

    fn seal(&self, plain: &[u8], at: u64) -> Option<Vec<u8>> {
        let mut keys = self.keys();
        self.rotate_if_due(&mut keys, at);
        let key = &keys.current;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        self.longest.fetch_max(ticket.len(), Ordering::Relaxed);
        Some(ticket)
    }

    fn open(&self, ticket: &[u8], at: u64) -> Option<Vec<u8>> {
        if ticket.len() > self.longest.load(Ordering::Relaxed) {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let mut keys = self.keys();
        self.rotate_if_due(&mut keys, at);
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.name == name)?;
        let mut plain = sealed.to_vec();
        let opened = key
            .key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(&key.name),
                &mut plain,
            )
            .ok()?
            .len();
        plain.truncate(opened);
        Some(plain)
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATION.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, now())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket, now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &[u8] = b"a TLS session's secrets";

    #[test]
    fn a_ticket_opens_with_its_keys_and_only_whole() {
        let keys = TicketKeys::new().unwrap();
        let ticket = keys.encrypt(SESSION).unwrap();
        assert!(
            !ticket.windows(SESSION.len()).any(|w| w == SESSION),
            "sealed, not in clear"
        );
        assert_eq!(keys.decrypt(&ticket).as_deref(), Some(SESSION));
        for at in [0, NAME_LEN + 3, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[at] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "a byte changed at {at}");
        }
        assert_eq!(keys.decrypt(&ticket[..ticket.len() - 1]), None, "cut short");
        assert_eq!(keys.decrypt(&[]), None);
        let other = TicketKeys::new().unwrap();
        assert_eq!(other.decrypt(&ticket), None, "another process's keys");
    }

    #[test]
    fn handed_keys_open_the_tickets_of_the_process_that_handed_them() {
        let old = TicketKeys::new().unwrap();
        let ticket = old.encrypt(SESSION).unwrap();
        let new = TicketKeys::new().unwrap();
        assert!(new.adopt(&old.handed()));
        assert_eq!(new.decrypt(&ticket).as_deref(), Some(SESSION));
        // And the other way: the old process opens what the new one seals.
        assert_eq!(
            old.decrypt(&new.encrypt(SESSION).unwrap()).as_deref(),
            Some(SESSION)
        );
    }

    #[test]
    fn a_ticket_longer_than_any_sealed_is_refused_and_the_bound_is_handed_over() {
        let room = LONGEST_TICKET - NAME_LEN - NONCE_LEN - CHACHA20_POLY1305.tag_len();
        let (sealer, opener) = (TicketKeys::new().unwrap(), TicketKeys::new().unwrap());
        assert!(opener.adopt(&sealer.handed()));
        let longest = sealer.encrypt(&vec![7; room]).unwrap();
        assert_eq!(longest.len(), LONGEST_TICKET);
        assert!(opener.decrypt(&longest).is_some(), "up to the bound: opened");
        // A session with client certificates, say: longer than the bound. Whoever sealed it
        // opens it; a process that sealed nothing so long refuses it, though its keys fit.
        let long = sealer.encrypt(&vec![7; room + 1000]).unwrap();
        assert_eq!(
            sealer.decrypt(&long).as_deref().map(<[u8]>::len),
            Some(room + 1000)
        );
        assert_eq!(opener.decrypt(&long), None, "longer than any it sealed");
        // Handed over, the bound comes along.
        let next = TicketKeys::new().unwrap();
        assert!(next.adopt(&sealer.handed()));
        assert!(
            next.decrypt(&long).is_some(),
            "the bound handed over with the keys"
        );
    }

    #[test]
    fn bytes_in_another_format_are_not_adopted() {
        let keys = TicketKeys::new().unwrap();
        let ticket = keys.encrypt(SESSION).unwrap();
        let handed = keys.handed();
        for bad in [
            &b""[..],
            b"an application's own state",
            &handed[..handed.len() - 1],
            &handed[HANDED_TAG.len()..],
        ] {
            assert!(!keys.adopt(bad), "{bad:?}");
        }
        assert_eq!(keys.decrypt(&ticket).as_deref(), Some(SESSION), "keys unchanged");
    }

    #[test]
    fn keys_from_one_shared_secret_open_each_others_tickets_and_rotate_together() {
        let secret = [7u8; 32];
        let (a, b) = (
            TicketKeys::shared(&secret).unwrap(),
            TicketKeys::shared(&secret).unwrap(),
        );
        assert!(a.is_shared() && !TicketKeys::new().unwrap().is_shared());
        let ticket = a.encrypt(SESSION).unwrap();
        assert_eq!(
            b.decrypt(&ticket).as_deref(),
            Some(SESSION),
            "another worker opens it"
        );
        assert_eq!(
            TicketKeys::shared(&[8u8; 32]).unwrap().decrypt(&ticket),
            None,
            "another cluster"
        );
        assert_eq!(TicketKeys::new().unwrap().decrypt(&ticket), None);
        // Over the periods: sealed in one, opened in the next by the other worker, not after.
        let rotation = ROTATION.as_secs();
        let start = 1_000 * rotation + 5;
        let sealed = a.seal(SESSION, start).unwrap();
        assert_eq!(b.open(&sealed, start + rotation).as_deref(), Some(SESSION));
        let later = b.seal(SESSION, start + rotation).unwrap();
        assert_ne!(sealed[..NAME_LEN], later[..NAME_LEN], "a new key each period");
        assert_eq!(a.open(&later, start + rotation + 1).as_deref(), Some(SESSION));
        assert_eq!(a.open(&sealed, start + 2 * rotation), None, "forgotten after two");
        // A clock set back: the keys of that period again, alike everywhere.
        assert_eq!(b.open(&sealed, start).as_deref(), Some(SESSION));
    }

    #[test]
    fn keys_rotate_and_a_ticket_lives_one_to_two_rotations() {
        let keys = TicketKeys::new().unwrap();
        let start = keys.keys().current.since;
        let rotation = ROTATION.as_secs();
        let ticket = keys.seal(SESSION, start).unwrap();
        // One rotation later: a new key seals, the old one still opens.
        let later = keys.seal(SESSION, start + rotation).unwrap();
        assert_ne!(ticket[..NAME_LEN], later[..NAME_LEN], "a new key");
        assert_eq!(keys.open(&ticket, start + rotation).as_deref(), Some(SESSION));
        // Two rotations: the first key is forgotten, the second still opens.
        let _ = keys.seal(SESSION, start + 2 * rotation);
        assert_eq!(keys.open(&ticket, start + 2 * rotation), None);
        assert_eq!(keys.open(&later, start + 2 * rotation).as_deref(), Some(SESSION));
        // Handed over, the schedule goes on: both keys, and when they began.
        let next = TicketKeys::new().unwrap();
        assert!(next.adopt(&keys.handed()));
        assert_eq!(next.open(&later, start + 2 * rotation).as_deref(), Some(SESSION));
        assert_eq!(next.keys().current.since, start + 2 * rotation);
    }
}
