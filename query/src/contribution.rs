//! A node's contribution: its statistics vector encrypted under the collective key, with a
//! proof that every slot lies within its public bound.
//!
//! For slot i with value vᵢ and public bound Bᵢ = capacity × (largest per-patient term), the
//! node encrypts Cᵢ = Enc_Y(vᵢ; rᵢ) and proves, in one aggregated range proof bound to the
//! (query id, node id) context, that both vᵢ and Bᵢ − vᵢ lie in [0, 2ⁿ) with 2ⁿ > Bᵢ. The
//! verifier computes the complement ciphertext itself, C̄ᵢ = Enc(Bᵢ; 0) − Cᵢ = (−C1, Bᵢ·G − C2),
//! so the two range statements together give vᵢ ∈ [0, Bᵢ] exactly: a node cannot add more
//! than its capacity's worth of any statistic, and cannot subtract at all.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use zk::elgamal::{Ciphertext, Opening, PublicKey};
use zk::proofs::range::{CiphertextRangeProof, RangeStatement, SUPPORTED_BITS};
use zk::transcript::ProofContext;
use zk::ProofError;

use crate::plan::QueryPlan;

/// A node's plaintext statistics for one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statistics {
    /// `[participants] ++ cells × statistics`, see [`QueryPlan`].
    pub values: Vec<u64>,
    /// How many values clipping changed, per aggregated column (for the node's own report).
    pub clipped: Vec<(String, u64)>,
}

impl Statistics {
    /// The number of participating (consenting) patients.
    pub fn participants(&self) -> u64 {
        self.values[0]
    }
}

/// Errors building or checking a contribution.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContributionError {
    /// The statistics do not fit the plan.
    #[error("statistics have {got} slots, the plan needs {expected}")]
    Length {
        /// Slots supplied.
        got: usize,
        /// Slots the plan needs.
        expected: usize,
    },
    /// A slot's bound does not fit in 64 bits.
    #[error("the plan's statistics cannot be bounded in 64 bits at capacity {capacity}; declare fewer decimals or tighter bounds")]
    Unbounded {
        /// The node's capacity.
        capacity: u64,
    },
    /// A slot exceeds its bound (the node's statistics are inconsistent with its capacity).
    #[error("slot {slot} holds {value}, above its bound {bound}")]
    OutOfBounds {
        /// The slot.
        slot: usize,
        /// Its value.
        value: u64,
        /// Its bound.
        bound: u64,
    },
    /// Proving or verifying failed.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

/// A node's encrypted, proven statistics for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// Cᵢ = Enc_Y(vᵢ), one per slot of the plan's vector.
    pub ciphertexts: Vec<Ciphertext>,
    /// Range proof over (C₀ … Cₖ₋₁, C̄₀ … C̄ₖ₋₁).
    pub proof: CiphertextRangeProof,
}

/// Smallest supported proof size n with 2ⁿ > every bound.
fn proof_bits(bounds: &[u64]) -> usize {
    let largest = bounds.iter().copied().max().unwrap_or(0);
    SUPPORTED_BITS
        .into_iter()
        .find(|&bits| bits == 64 || largest < (1u64 << bits))
        .unwrap_or(64)
}

/// Enc(B; 0) − C.
fn complement(ciphertext: &Ciphertext, bound: u64) -> Ciphertext {
    Ciphertext {
        c1: -ciphertext.c1,
        c2: Scalar::from(bound) * RISTRETTO_BASEPOINT_POINT - ciphertext.c2,
    }
}

/// Encrypts `values` under `key` and proves, in one aggregated range proof bound to
/// `context`, that each lies in [0, its bound]: both vᵢ and Bᵢ − vᵢ are proven in [0, 2ⁿ).
pub fn encrypt_bounded<R: RngCore + CryptoRng>(
    context: &ProofContext,
    key: &PublicKey,
    values: &[u64],
    bounds: &[u64],
    rng: &mut R,
) -> Result<(Vec<Ciphertext>, CiphertextRangeProof), ContributionError> {
    if values.len() != bounds.len() {
        return Err(ContributionError::Length {
            got: values.len(),
            expected: bounds.len(),
        });
    }
    for (slot, (&value, &bound)) in values.iter().zip(bounds).enumerate() {
        if value > bound {
            return Err(ContributionError::OutOfBounds { slot, value, bound });
        }
    }
    let mut ciphertexts = Vec::with_capacity(values.len());
    let mut openings = Vec::with_capacity(2 * values.len());
    for &value in values {
        let (ciphertext, opening) = key.encrypt_with_opening(Scalar::from(value), rng);
        ciphertexts.push(ciphertext);
        openings.push(opening);
    }
    let mut proven = ciphertexts.clone();
    for (slot, (ciphertext, &bound)) in ciphertexts.iter().zip(bounds).enumerate() {
        proven.push(complement(ciphertext, bound));
        openings.push(Opening {
            message: Scalar::from(bound - values[slot]),
            randomness: -openings[slot].randomness,
        });
    }
    let proof = CiphertextRangeProof::prove_with_rng(
        context,
        key,
        proof_bits(bounds),
        &proven,
        &openings,
        rng,
    )?;
    Ok((ciphertexts, proof))
}

/// Encrypts and proves a node's statistics.
pub fn build_contribution<R: RngCore + CryptoRng>(
    context: &ProofContext,
    collective_key: &PublicKey,
    plan: &QueryPlan,
    statistics: &Statistics,
    capacity: u64,
    rng: &mut R,
) -> Result<Contribution, ContributionError> {
    let expected = plan.vector_len();
    if statistics.values.len() != expected {
        return Err(ContributionError::Length {
            got: statistics.values.len(),
            expected,
        });
    }
    let bounds = plan
        .slot_bounds(capacity)
        .ok_or(ContributionError::Unbounded { capacity })?;
    let (ciphertexts, proof) =
        encrypt_bounded(context, collective_key, &statistics.values, &bounds, rng)?;
    Ok(Contribution { ciphertexts, proof })
}

/// What a verifier needs to check one node's contribution.
pub struct ContributionStatement<'a> {
    /// The (query id, node id) context.
    pub context: &'a ProofContext,
    /// The node's public capacity.
    pub capacity: u64,
    /// The contribution.
    pub contribution: &'a Contribution,
}

/// One statement of [`verify_bounded`]: ciphertexts claimed to lie in [0, bound] each.
pub struct BoundedStatement<'a> {
    /// The context the proof is bound to.
    pub context: &'a ProofContext,
    /// The ciphertexts.
    pub ciphertexts: &'a [Ciphertext],
    /// Their public bounds.
    pub bounds: Vec<u64>,
    /// The proof.
    pub proof: &'a CiphertextRangeProof,
}

/// The ciphertexts a bounded statement's proof covers, after checking its shape.
fn proven_ciphertexts(
    statement: &BoundedStatement<'_>,
) -> Result<Vec<Ciphertext>, ContributionError> {
    if statement.ciphertexts.len() != statement.bounds.len() {
        return Err(ContributionError::Length {
            got: statement.ciphertexts.len(),
            expected: statement.bounds.len(),
        });
    }
    let bits = proof_bits(&statement.bounds);
    if statement.proof.bits() != bits {
        return Err(ContributionError::Proof(ProofError::Malformed {
            proof: "contribution",
            reason: format!(
                "proof is for {} bits, the bounds need {bits}",
                statement.proof.bits()
            ),
        }));
    }
    let mut proven = statement.ciphertexts.to_vec();
    proven.extend(
        statement
            .ciphertexts
            .iter()
            .zip(&statement.bounds)
            .map(|(ciphertext, &bound)| complement(ciphertext, bound)),
    );
    Ok(proven)
}

/// Verifies many bounded statements in one batch (an `Err` entry is reported as it is). On
/// failure, returns the positions of the statements that do not verify, each with its reason.
pub fn verify_bounded<R: RngCore + CryptoRng>(
    key: &PublicKey,
    statements: &[Result<BoundedStatement<'_>, ContributionError>],
    rng: &mut R,
) -> Result<(), Vec<(usize, ContributionError)>> {
    let mut failed = Vec::new();
    let mut prepared = Vec::new();
    for (position, statement) in statements.iter().enumerate() {
        match statement {
            Ok(statement) => match proven_ciphertexts(statement) {
                Ok(proven) => prepared.push((position, statement, proven)),
                Err(error) => failed.push((position, error)),
            },
            Err(error) => failed.push((position, error.clone())),
        }
    }
    let range_statements: Vec<RangeStatement<'_>> = prepared
        .iter()
        .map(|(_, statement, proven)| RangeStatement {
            context: statement.context,
            key,
            ciphertexts: proven,
            proof: statement.proof,
        })
        .collect();
    if !range_statements.is_empty() {
        if let Err(error) = CiphertextRangeProof::verify_batch(&range_statements, rng) {
            // The batch names failing items by their position in the batch.
            match error {
                ProofError::BatchFailed { failed: items } => {
                    for item in items {
                        let position = prepared[item].0;
                        failed.push((
                            position,
                            ContributionError::Proof(ProofError::VerificationFailed {
                                proof: "contribution range",
                            }),
                        ));
                    }
                }
                other => {
                    for (position, ..) in &prepared {
                        failed.push((*position, ContributionError::Proof(other.clone())));
                    }
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        failed.sort_by_key(|(position, _)| *position);
        Err(failed)
    }
}

/// Verifies many nodes' contributions in one batch. On failure, returns the positions (in
/// `statements`) of the contributions that do not verify, each with its reason.
pub fn verify_contributions<R: RngCore + CryptoRng>(
    collective_key: &PublicKey,
    plan: &QueryPlan,
    statements: &[ContributionStatement<'_>],
    rng: &mut R,
) -> Result<(), Vec<(usize, ContributionError)>> {
    let bounded: Vec<Result<BoundedStatement<'_>, ContributionError>> = statements
        .iter()
        .map(|statement| {
            let capacity = statement.capacity;
            let bounds = plan
                .slot_bounds(capacity)
                .ok_or(ContributionError::Unbounded { capacity })?;
            if statement.contribution.ciphertexts.len() != plan.vector_len() {
                return Err(ContributionError::Length {
                    got: statement.contribution.ciphertexts.len(),
                    expected: plan.vector_len(),
                });
            }
            Ok(BoundedStatement {
                context: statement.context,
                ciphertexts: &statement.contribution.ciphertexts,
                bounds,
                proof: &statement.contribution.proof,
            })
        })
        .collect();
    verify_bounded(collective_key, &bounded, rng)
}

/// Sums verified contributions slot by slot, homomorphically.
pub fn sum_contributions(contributions: &[&Contribution]) -> Vec<Ciphertext> {
    let len = contributions
        .first()
        .map_or(0, |first| first.ciphertexts.len());
    (0..len)
        .map(|slot| {
            contributions
                .iter()
                .map(|contribution| contribution.ciphertexts[slot])
                .sum()
        })
        .collect()
}
