//! The recruiters' TFHE evaluation keys the market holds, with a quota per recruiter.
//!
//! An evaluation key is about 30 MB. Any registered buyer may store one, so the store must
//! not let one recruiter push the others' keys out, nor grow with the number of uploads:
//!
//! - a recruiter holds at most [`KEYS_PER_RECRUITER`] keys; a new one replaces its oldest;
//! - the market holds at most [`KEYS_KEPT`] keys in all; when full, a new recruiter's key
//!   takes the place of the key unused the longest, but only if that key has been idle for
//!   [`IDLE_BEFORE_EVICTION`]; otherwise the upload is refused (`RESOURCE_EXHAUSTED`) and the
//!   keys in use stay;
//! - a key counts as used only when an order or a trial (which cost escrow) uses it, never
//!   when it is uploaded again, so holding a place costs something.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::CoordinatorError;
use market::AccountId;

/// Keys one recruiter may hold at once.
pub const KEYS_PER_RECRUITER: usize = 1;
/// Keys the market holds at once, over every recruiter (about 30 MB each).
pub const KEYS_KEPT: usize = 4;
/// How long a key must have gone unused before another recruiter's upload may replace it.
pub const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(600);
/// Evaluation keys read from recruiters at once; further uploads wait their turn.
pub const CONCURRENT_UPLOADS: usize = 2;

struct Kept {
    owner: AccountId,
    fingerprint: [u8; 32],
    bytes: Arc<Vec<u8>>,
    last_used: Instant,
}

/// The keys, by fingerprint, with their owners.
#[derive(Default)]
pub struct EvaluationKeyStore {
    kept: Vec<Kept>,
}

impl EvaluationKeyStore {
    /// Keeps `owner`'s key (already checked to decode) at time `now`.
    pub fn keep(
        &mut self,
        owner: AccountId,
        fingerprint: [u8; 32],
        bytes: Vec<u8>,
        now: Instant,
    ) -> Result<(), CoordinatorError> {
        if self.kept.iter().any(|kept| kept.fingerprint == fingerprint) {
            // The same key again (from its owner or anyone who has its bytes): nothing new, and
            // not a use.
            return Ok(());
        }
        let own = self.kept.iter().filter(|kept| kept.owner == owner).count();
        if own >= KEYS_PER_RECRUITER {
            let oldest_own = self
                .kept
                .iter()
                .enumerate()
                .filter(|(_, kept)| kept.owner == owner)
                .min_by_key(|(_, kept)| kept.last_used)
                .map(|(position, _)| position);
            if let Some(position) = oldest_own {
                self.kept.remove(position);
            }
        } else if self.kept.len() >= KEYS_KEPT {
            let idlest = self
                .kept
                .iter()
                .enumerate()
                .min_by_key(|(_, kept)| kept.last_used)
                .filter(|(_, kept)| now.duration_since(kept.last_used) >= IDLE_BEFORE_EVICTION)
                .map(|(position, _)| position);
            match idlest {
                Some(position) => {
                    self.kept.remove(position);
                }
                None => {
                    return Err(CoordinatorError::exhausted(format!(
                        "the market holds {KEYS_KEPT} recruiters' evaluation keys, all in use in \
                         the last {} s; retry later",
                        IDLE_BEFORE_EVICTION.as_secs()
                    )))
                }
            }
        }
        self.kept.push(Kept {
            owner,
            fingerprint,
            bytes: Arc::new(bytes),
            last_used: now,
        });
        Ok(())
    }

    /// The key with this fingerprint, marked used at `now`.
    pub fn get(&mut self, fingerprint: &[u8; 32], now: Instant) -> Option<Arc<Vec<u8>>> {
        let kept = self
            .kept
            .iter_mut()
            .find(|kept| &kept.fingerprint == fingerprint)?;
        kept.last_used = now;
        Some(Arc::clone(&kept.bytes))
    }

    /// How many keys `owner` holds.
    pub fn held_by(&self, owner: &AccountId) -> usize {
        self.kept.iter().filter(|kept| &kept.owner == owner).count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recruiter(byte: u8) -> AccountId {
        AccountId([byte; 32])
    }

    #[test]
    fn evaluation_keys_kept_per_recruiter() {
        let mut store = EvaluationKeyStore::default();
        let start = Instant::now();
        store.keep(recruiter(1), [1; 32], vec![1], start).unwrap();
        // Recruiter 2 uploads key after key: only its newest is held, and recruiter 1's key
        // is never pushed out by it.
        for key in 10..40u8 {
            store
                .keep(recruiter(2), [key; 32], vec![key], start)
                .unwrap();
        }
        assert_eq!(store.held_by(&recruiter(2)), KEYS_PER_RECRUITER);
        assert!(store.get(&[39; 32], start).is_some());
        assert!(store.get(&[10; 32], start).is_none());
        assert_eq!(store.get(&[1; 32], start).unwrap().as_slice(), &[1]);
    }

    #[test]
    fn full_store_refuses_a_newcomer_while_every_key_is_in_use() {
        let mut store = EvaluationKeyStore::default();
        let start = Instant::now();
        for owner in 0..KEYS_KEPT as u8 {
            store
                .keep(recruiter(owner), [owner; 32], vec![owner], start)
                .unwrap();
        }
        let soon = start + Duration::from_secs(1);
        let refused = store
            .keep(recruiter(200), [200; 32], vec![200], soon)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // Once a key has gone unused long enough, a newcomer takes its place: the idlest.
        // Uploading a key again is not a use: it holds no place for free.
        let later = start + IDLE_BEFORE_EVICTION + Duration::from_secs(1);
        for owner in 1..KEYS_KEPT as u8 {
            store.get(&[owner; 32], later).unwrap();
        }
        store.keep(recruiter(0), [0; 32], vec![0], later).unwrap();
        store
            .keep(recruiter(200), [200; 32], vec![200], later)
            .unwrap();
        assert!(
            store.get(&[0; 32], later).is_none(),
            "the idle key made room"
        );
        assert!(store.get(&[200; 32], later).is_some());
    }
}
