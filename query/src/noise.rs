//! Noise under encryption: each committee member's share of a release's differential-privacy
//! noise, and the minimum-cohort rule.
//!
//! Member j samples Xⱼ,ₛ from the discrete Laplace of slot s's full scale (see [`crate::dp`]),
//! encrypts Xⱼ,ₛ + Kₛ under the collective key and proves that it lies in [0, 2Kₛ] (the
//! proof is bound to the order and the member's index, so no one can replay, negate or copy
//! another member's share without its opening). The noisy sum is
//! S + Σⱼ (Xⱼ + K) − m·K for the m shares included. Any one honest member's share alone gives
//! the release its ε (adding further independent noise is post-processing), so up to t − 1
//! members may withhold or collude: this is the *conservative per-member share* of
//! docs/privacy.md. The buyer's noise variance is m times that of one share.
//!
//! Minimum cohort: the count slots of a release (slot 0, the participants, and every COUNT
//! statistic of every cell) are key-switched first to a public key, so their noisy values are
//! public; a statistic whose cell's noisy count over the same columns is below the minimum is
//! withheld, and if the participants' noisy count is below it, everything is. The counts are slots of the same ε-DP release: the
//! check spends no budget beyond the release's own ε, and the budget accounts for it.

use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use zk::elgamal::scalar_from_i64;
use zk::{Ciphertext, CiphertextRangeProof, PublicKey, SecretKey};

use crate::contribution::{encrypt_bounded, BoundedStatement, ContributionError};
use crate::dp::Calibration;
use crate::plan::{QueryPlan, Statistic};
use zk::ProofContext;

/// One committee member's encrypted noise for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseShare {
    /// The member's index in the committee.
    pub member: u16,
    /// Enc(Xₛ + Kₛ), one per slot.
    pub ciphertexts: Vec<Ciphertext>,
    /// Proof that every Xₛ + Kₛ lies in [0, 2Kₛ].
    pub proof: CiphertextRangeProof,
}

/// The public bounds 2Kₛ of noise shares.
pub fn share_bounds(calibration: &Calibration) -> Vec<u64> {
    calibration
        .slots
        .iter()
        .map(|slot| 2 * slot.bound)
        .collect()
}

/// Samples, encrypts and proves member `member`'s noise share in `context`.
pub fn build_noise_share<R: RngCore + CryptoRng>(
    context: &ProofContext,
    collective_key: &PublicKey,
    calibration: &Calibration,
    member: u16,
    rng: &mut R,
) -> Result<NoiseShare, ContributionError> {
    let values: Vec<u64> = calibration
        .slots
        .iter()
        .map(|slot| {
            let noise = slot.sample(rng);
            // |noise| ≤ K, so noise + K ∈ [0, 2K].
            (i128::from(noise) + i128::from(slot.bound)) as u64
        })
        .collect();
    let (ciphertexts, proof) = encrypt_bounded(
        context,
        collective_key,
        &values,
        &share_bounds(calibration),
        rng,
    )?;
    Ok(NoiseShare {
        member,
        ciphertexts,
        proof,
    })
}

/// The statement a noise share's proof must satisfy.
pub fn noise_statement<'a>(
    context: &'a ProofContext,
    share: &'a NoiseShare,
    calibration: &Calibration,
) -> BoundedStatement<'a> {
    BoundedStatement {
        context,
        ciphertexts: &share.ciphertexts,
        bounds: share_bounds(calibration),
        proof: &share.proof,
    }
}

/// S + Σⱼ shareⱼ − m·K, slot by slot. The shares must have been verified.
pub fn apply_noise(
    sum: &[Ciphertext],
    shares: &[&NoiseShare],
    calibration: &Calibration,
) -> Vec<Ciphertext> {
    sum.iter()
        .zip(&calibration.slots)
        .enumerate()
        .map(|(slot, (total, noise))| {
            let mut noisy = *total;
            for share in shares {
                noisy = &noisy + &share.ciphertexts[slot];
            }
            let offset = Scalar::from(noise.bound) * Scalar::from(shares.len() as u64);
            noisy.add_plaintext(&-offset)
        })
        .collect()
}

/// The slots whose noisy values decide suppression: slot 0 (participants) and every COUNT
/// statistic of every cell, ascending.
pub fn count_slots(plan: &QueryPlan) -> Vec<usize> {
    let mut slots = vec![0];
    for cell in 0..plan.cells() {
        for (index, statistic) in plan.statistics.iter().enumerate() {
            if matches!(statistic, Statistic::Count { .. }) {
                slots.push(plan.slot(cell, index));
            }
        }
    }
    slots
}

/// Which slots a release withholds, given the noisy values of [`count_slots`] (same order)
/// and the minimum cohort, one entry per slot of the plan's vector. Each statistic is judged
/// by its own count: a cell's statistic is released only if the COUNT over the same columns
/// (its domain) in that cell is at least the minimum, so `COUNT(*)` is released beside a
/// `COUNT(systolic_bp)` that is withheld. If the participants' own count is below the
/// minimum, everything is withheld.
pub fn withheld_slots(plan: &QueryPlan, noisy_counts: &[i64], min_cohort: u64) -> Vec<bool> {
    // The noisy value of every count slot, looked up by slot (a missing one counts as none).
    let counts: std::collections::HashMap<usize, i64> = count_slots(plan)
        .into_iter()
        .zip(noisy_counts.iter().copied())
        .collect();
    let value = |slot: usize| counts.get(&slot).copied().unwrap_or(i64::MIN);
    let min = i64::try_from(min_cohort).unwrap_or(i64::MAX);
    if value(0) < min {
        return vec![true; plan.vector_len()];
    }
    let mut withheld = vec![false; plan.vector_len()];
    for cell in 0..plan.cells() {
        for (index, statistic) in plan.statistics.iter().enumerate() {
            let count = plan.count_of(statistic);
            withheld[plan.slot(cell, index)] =
                count.is_none_or(|count| value(plan.slot(cell, count)) < min);
        }
    }
    withheld
}

/// The cells a release withholds entirely (every statistic of the cell withheld), one entry
/// per cell: what the order's report counts as suppressed.
pub fn suppressed_cells(plan: &QueryPlan, withheld: &[bool]) -> Vec<bool> {
    (0..plan.cells())
        .map(|cell| {
            (0..plan.statistics.len()).all(|index| {
                withheld
                    .get(plan.slot(cell, index))
                    .copied()
                    .unwrap_or(true)
            })
        })
        .collect()
}

/// The non-count slots a release does not withhold, ascending: what is key-switched to the
/// buyer.
pub fn released_value_slots(plan: &QueryPlan, withheld: &[bool]) -> Vec<usize> {
    let mut slots = Vec::new();
    for cell in 0..plan.cells() {
        for (index, statistic) in plan.statistics.iter().enumerate() {
            let slot = plan.slot(cell, index);
            if !matches!(statistic, Statistic::Count { .. })
                && !withheld.get(slot).copied().unwrap_or(true)
            {
                slots.push(slot);
            }
        }
    }
    slots
}

/// The key counts are switched to: its secret is 1, so anyone can decrypt them.
pub fn public_count_key() -> PublicKey {
    public_count_secret().public_key()
}

/// The (public) secret of [`public_count_key`].
pub fn public_count_secret() -> SecretKey {
    SecretKey::from_scalar(Scalar::ONE)
}

/// Whether `ciphertext` (under [`public_count_key`]) decrypts to `value`.
pub fn opens_to(ciphertext: &Ciphertext, value: i64) -> bool {
    ciphertext.c2 - ciphertext.c1
        == curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT * scalar_from_i64(value)
}
