//! TLS session ticket keys that can move to the process taking over (`anyedge run --upgrade`),
//! so that sessions resume across an upgrade as they do across a reload. Like rustls's own
//! ticketer: ChaCha20-Poly1305, a key rotated every 6 hours and the previous one kept for
//! tickets issued before the rotation; unlike it, the keys can be exported and imported. The
//! rotation time is wall-clock time, so a process that imports the keys rotates when the
//! exporting one would have.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a key issues tickets; tickets live as long again under the next key.
const ROTATE_EVERY: u64 = 6 * 60 * 60;
const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// The export format's version byte.
const EXPORT_V1: u8 = 1;

pub struct Tickets {
    keys: RwLock<Keys>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
    /// Unix seconds at which `current` becomes `previous`.
    rotate_at: u64,
}

struct Key {
    name: [u8; NAME_LEN],
    raw: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(name: [u8; NAME_LEN], raw: [u8; KEY_LEN]) -> Option<Key> {
        let aead = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &raw).ok()?);
        Some(Key { name, raw, aead })
    }

    fn random(rng: &SystemRandom) -> Result<Key, rustls::Error> {
        let mut name = [0u8; NAME_LEN];
        let mut raw = [0u8; KEY_LEN];
        let failed = |_| rustls::Error::FailedToGetRandomBytes;
        rng.fill(&mut name).map_err(failed)?;
        rng.fill(&mut raw).map_err(failed)?;
        Key::new(name, raw).ok_or(rustls::Error::FailedToGetRandomBytes)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tickets {
    /// Fresh keys. Fails only if the system random number generator does.
    pub fn new() -> Result<Tickets, rustls::Error> {
        let rng = SystemRandom::new();
        let keys = Keys {
            current: Key::random(&rng)?,
            previous: None,
            rotate_at: now() + ROTATE_EVERY,
        };
        Ok(Tickets {
            keys: RwLock::new(keys),
            rng,
        })
    }

    /// The keys, to hand to the process taking over: version, rotation time, then each key's
    /// name and bytes (current, then previous if any).
    pub fn export(&self) -> Vec<u8> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = vec![EXPORT_V1];
        out.extend_from_slice(&keys.rotate_at.to_be_bytes());
        for key in std::iter::once(&keys.current).chain(&keys.previous) {
            out.extend_from_slice(&key.name);
            out.extend_from_slice(&key.raw);
        }
        out
    }

    /// Put keys from [`Tickets::export`] in force; false (nothing changed) if they do not read.
    pub fn import(&self, bytes: &[u8]) -> bool {
        let Some(imported) = parse(bytes) else {
            return false;
        };
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = imported;
        true
    }

    fn rotate_if_due(&self) {
        let due = |k: &Keys| now() >= k.rotate_at;
        if !due(&self.keys.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        let Ok(fresh) = Key::random(&self.rng) else {
            return;
        };
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if due(&keys) {
            keys.previous = Some(std::mem::replace(&mut keys.current, fresh));
            keys.rotate_at = now() + ROTATE_EVERY;
        }
    }
}

fn parse(bytes: &[u8]) -> Option<Keys> {
    let (&version, rest) = bytes.split_first()?;
    if version != EXPORT_V1 {
        return None;
    }
    let (at, rest) = rest.split_at_checked(8)?;
    let rotate_at = u64::from_be_bytes(at.try_into().ok()?);
    let key = |b: &[u8]| -> Option<Key> {
        let (name, raw) = b.split_at_checked(NAME_LEN)?;
        Key::new(name.try_into().ok()?, raw.try_into().ok()?)
    };
    let one = NAME_LEN + KEY_LEN;
    let (current, previous) = match rest.len() {
        n if n == one => (key(rest)?, None),
        n if n == 2 * one => (key(&rest[..one])?, Some(key(&rest[one..])?)),
        _ => return None,
    };
    Some(Keys {
        current,
        previous,
        rotate_at,
    })
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE_EVERY as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = &keys.current;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = cipher.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = std::iter::once(&keys.current)
            .chain(&keys.previous)
            .find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_from_one_process_opens_in_the_next() {
        let old = Tickets::new().expect("keys");
        let ticket = old.encrypt(b"session state").expect("ticket");
        let new = Tickets::new().expect("keys");
        assert_eq!(new.decrypt(&ticket), None, "other keys do not open it");
        assert!(new.import(&old.export()));
        assert_eq!(new.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let again = new.encrypt(b"x").expect("ticket");
        assert_eq!(old.decrypt(&again).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn the_previous_key_still_opens_after_a_rotation() {
        let t = Tickets::new().expect("keys");
        let ticket = t.encrypt(b"s").expect("ticket");
        t.keys.write().expect("lock").rotate_at = 0;
        let fresh = t.encrypt(b"t").expect("ticket");
        assert_ne!(ticket[..NAME_LEN], fresh[..NAME_LEN], "rotated");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
        let moved = Tickets::new().expect("keys");
        assert!(moved.import(&t.export()));
        assert_eq!(moved.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
    }

    #[test]
    fn bad_exports_and_tickets_are_refused() {
        let t = Tickets::new().expect("keys");
        let good = t.export();
        for bad in [&[][..], &[2u8; 57][..], &good[..good.len() - 1]] {
            assert!(!t.import(bad));
        }
        assert_eq!(t.decrypt(b"short"), None);
        let mut ticket = t.encrypt(b"s").expect("ticket");
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(t.decrypt(&ticket), None);
    }
}
