//! Generators for range proofs bound to ElGamal ciphertexts.
//!
//! A bulletproof commits to v as V = v·B + r·B̃. Here B = G (the Ristretto basepoint, the
//! ElGamal message base) and B̃ = Y (the collective public key), so the commitment *is* the
//! ciphertext's second half C2 = m·G + r·Y. The vector generators G_i, H_i are the
//! `bulletproofs` crate's: party j's chain is SHAKE256("GeneratorsChain" ‖ label ‖ le32(j)),
//! read 64 bytes at a time into the Ristretto hash-to-group map, with label "G" or "H".
//!
//! The crate keeps its H vectors private, and batch verification ([`crate::proofs::batch`])
//! needs them, so this module derives them by the same published rule; a test checks the
//! derivation against the G vectors the crate does expose.

use std::sync::OnceLock;

use bulletproofs::{BulletproofGens, PedersenGens};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::RistrettoPoint;
use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::Shake256;

use crate::elgamal::PublicKey;

/// Largest bit size of a range proof.
pub const MAX_BITS: usize = 64;
/// Largest number of values aggregated in one bulletproof.
pub const MAX_AGGREGATION: usize = 64;

/// The bulletproof vector generators, with the H vectors exposed for batch verification.
pub struct RangeGenerators {
    bulletproof_gens: BulletproofGens,
    /// H vectors per party, `MAX_BITS` each.
    h_vectors: Vec<Vec<RistrettoPoint>>,
}

impl RangeGenerators {
    /// The process-wide generators (built once, about 8k hash-to-group evaluations).
    pub fn shared() -> &'static RangeGenerators {
        static GENERATORS: OnceLock<RangeGenerators> = OnceLock::new();
        GENERATORS.get_or_init(|| RangeGenerators {
            bulletproof_gens: BulletproofGens::new(MAX_BITS, MAX_AGGREGATION),
            h_vectors: (0..MAX_AGGREGATION)
                .map(|party| derive_chain(b'H', party as u32, MAX_BITS))
                .collect(),
        })
    }

    /// The crate's generator object, for proving.
    pub fn bulletproof_gens(&self) -> &BulletproofGens {
        &self.bulletproof_gens
    }

    /// The first `bits` G generators of `party`.
    pub fn g(&self, party: usize, bits: usize) -> impl Iterator<Item = &RistrettoPoint> {
        self.bulletproof_gens.share(party).G(bits)
    }

    /// The first `bits` H generators of `party`.
    pub fn h(&self, party: usize, bits: usize) -> &[RistrettoPoint] {
        &self.h_vectors[party][..bits]
    }
}

/// Pedersen generators (B, B̃) = (G, Y) for a collective key Y.
pub fn pedersen_gens(collective_key: &PublicKey) -> PedersenGens {
    PedersenGens {
        B: RISTRETTO_BASEPOINT_POINT,
        B_blinding: *collective_key.as_point(),
    }
}

/// The first `count` points of the chain SHAKE256("GeneratorsChain" ‖ label ‖ le32(party)).
pub fn derive_chain(label: u8, party: u32, count: usize) -> Vec<RistrettoPoint> {
    let mut shake = Shake256::default();
    shake.update(b"GeneratorsChain");
    shake.update(&[label]);
    shake.update(&party.to_le_bytes());
    let mut reader = shake.finalize_xof();
    (0..count)
        .map(|_| {
            let mut uniform = [0u8; 64];
            reader.read(&mut uniform);
            RistrettoPoint::from_uniform_bytes(&uniform)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_g_chain_matches_the_bulletproofs_crate() {
        let generators = RangeGenerators::shared();
        for party in [0usize, 1, 7, MAX_AGGREGATION - 1] {
            let ours = derive_chain(b'G', party as u32, MAX_BITS);
            let theirs: Vec<RistrettoPoint> = generators.g(party, MAX_BITS).copied().collect();
            assert_eq!(ours, theirs, "party {party}");
        }
    }

    #[test]
    fn h_chain_differs_from_g_chain() {
        let generators = RangeGenerators::shared();
        let g0: Vec<RistrettoPoint> = generators.g(0, 8).copied().collect();
        assert_ne!(g0.as_slice(), generators.h(0, 8));
    }
}
