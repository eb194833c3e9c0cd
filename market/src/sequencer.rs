//! The ordering seam.
//!
//! A [`Sequencer`] decides which checked transactions go into the next block, in what order and
//! at what block time, and signs the resulting tree head. The default, [`InProcessSequencer`],
//! is Trillian's log-signer shape: one process, one key, first come first served. A consortium
//! deployment would put a BFT engine behind the same trait (the state machine is ABCI++-shaped
//! for that reason) and sign heads with a threshold or multi-signature instead.

use crate::log::BlockHeader;
use crate::tx::VerifiedTx;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::time::{SystemTime, UNIX_EPOCH};

/// Orders transactions into blocks and signs tree heads.
pub trait Sequencer {
    /// The key that verifies the heads this sequencer signs (the genesis ledger key).
    fn verifying_key(&self) -> VerifyingKey;

    /// Time of the next block, unix seconds; never earlier than `previous_block_time`.
    fn block_time(&mut self, previous_block_time: u64) -> u64;

    /// Puts checked transactions in block order.
    fn order(&mut self, checked: Vec<VerifiedTx>) -> Vec<VerifiedTx>;

    /// Signs a finalized block header.
    fn sign_head(&mut self, header: &BlockHeader) -> Signature;
}

/// A clock returning unix seconds.
pub type Clock = Box<dyn FnMut() -> u64 + Send>;

/// One in-process sequencer holding the ledger's signing key: arrival order, wall-clock time.
pub struct InProcessSequencer {
    key: SigningKey,
    clock: Clock,
}

impl InProcessSequencer {
    /// A sequencer with the system clock.
    pub fn new(key: SigningKey) -> Self {
        Self::with_clock(
            key,
            Box::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
        )
    }

    /// A sequencer with an injected clock (tests, simulations).
    pub fn with_clock(key: SigningKey, clock: Clock) -> Self {
        InProcessSequencer { key, clock }
    }
}

impl Sequencer for InProcessSequencer {
    fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn block_time(&mut self, previous_block_time: u64) -> u64 {
        (self.clock)().max(previous_block_time)
    }

    fn order(&mut self, checked: Vec<VerifiedTx>) -> Vec<VerifiedTx> {
        checked
    }

    fn sign_head(&mut self, header: &BlockHeader) -> Signature {
        self.key.sign(header.signing_digest().as_bytes())
    }
}
