//! Batch verification in one multiscalar multiplication.
//!
//! Every verification equation in this crate has the form Σ_k s_k·P_k = 0. Given many such
//! equations E_1 … E_q, the verifier draws independent uniformly random weights ρ_1 … ρ_q and
//! checks the single equation Σ_e ρ_e·E_e = 0. If any E_e is false, the combined check passes
//! with probability at most 1/ℓ ≈ 2^−252 over the choice of ρ (Schwartz–Zippel). The weights
//! must come from the verifier's own randomness, after all proofs are fixed.
//!
//! The gain comes from the bases that equations share: the basepoint G, the collective key Y
//! and, for range proofs, the 2·n·m bulletproof generators. Their coefficients are summed once
//! into one scalar each, so a batch of q range proofs of n bits costs one multiscalar
//! multiplication of about 2n + q·(2·log2(n) + 5) points instead of q of about 2n + 2·log2(n) + 7
//! each, and Pippenger's method gets cheaper per point as the size grows.
//!
//! When the combined check fails, [`verify_each`] re-verifies the items one at a time so the
//! error names every item that fails on its own.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use merlin::{Transcript, TranscriptRng};
use rand_core::{CryptoRng, RngCore};

use crate::errors::ProofError;
use crate::generators::{RangeGenerators, MAX_AGGREGATION, MAX_BITS};

/// Accumulates verification equations and checks them together.
pub struct BatchVerifier {
    rng: TranscriptRng,
    /// Coefficient of the basepoint G.
    basepoint: Scalar,
    /// Other shared bases (collective keys, recipient keys) and their coefficients.
    bases: Vec<(RistrettoPoint, Scalar)>,
    /// Coefficients of the bulletproof G vectors, [party][bit].
    vector_g: Vec<Vec<Scalar>>,
    /// Coefficients of the bulletproof H vectors, [party][bit].
    vector_h: Vec<Vec<Scalar>>,
    /// Per-proof points and their coefficients.
    scalars: Vec<Scalar>,
    points: Vec<RistrettoPoint>,
    equations: usize,
}

impl BatchVerifier {
    /// A new, empty batch. Its weights are drawn from a generator seeded by `rng`.
    pub fn new_with_rng<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self {
            rng: Transcript::new(b"cohortex.batch-verifier.v1")
                .build_rng()
                .finalize(rng),
            basepoint: Scalar::ZERO,
            bases: Vec::new(),
            vector_g: Vec::new(),
            vector_h: Vec::new(),
            scalars: Vec::new(),
            points: Vec::new(),
            equations: 0,
        }
    }

    /// A new batch seeded from the operating system's generator.
    pub fn new() -> Self {
        Self::new_with_rng(&mut rand_core::OsRng)
    }

    /// A fresh random weight for one equation.
    pub fn weight(&mut self) -> Scalar {
        self.equations += 1;
        Scalar::random(&mut self.rng)
    }

    /// A fresh random scalar that is not an equation weight (e.g. for combining the two checks
    /// inside a bulletproof).
    pub(crate) fn random_scalar(&mut self) -> Scalar {
        Scalar::random(&mut self.rng)
    }

    /// Number of equations queued.
    pub fn equations(&self) -> usize {
        self.equations
    }

    /// Adds `coefficient`·G.
    pub fn add_basepoint(&mut self, coefficient: Scalar) {
        self.basepoint += coefficient;
    }

    /// Adds `coefficient`·`base` for a base that many equations share (a public key).
    pub fn add_shared(&mut self, base: &RistrettoPoint, coefficient: Scalar) {
        if let Some((_, total)) = self.bases.iter_mut().find(|(point, _)| point == base) {
            *total += coefficient;
        } else {
            self.bases.push((*base, coefficient));
        }
    }

    /// Adds `coefficient`·`point` for a point that belongs to one proof.
    pub fn add_point(&mut self, coefficient: Scalar, point: RistrettoPoint) {
        self.scalars.push(coefficient);
        self.points.push(point);
    }

    /// Adds coefficients for the bulletproof vector generators G_{party, bit} and
    /// H_{party, bit}, bit = 0 … len − 1.
    pub(crate) fn add_vector_generators(
        &mut self,
        party: usize,
        g_coefficients: impl Iterator<Item = Scalar>,
        h_coefficients: impl Iterator<Item = Scalar>,
    ) {
        debug_assert!(party < MAX_AGGREGATION);
        if self.vector_g.len() <= party {
            self.vector_g.resize(party + 1, Vec::new());
            self.vector_h.resize(party + 1, Vec::new());
        }
        accumulate(&mut self.vector_g[party], g_coefficients);
        accumulate(&mut self.vector_h[party], h_coefficients);
    }

    /// Runs the one multiscalar multiplication; true when every queued equation holds
    /// (except with probability about 2^−252).
    pub fn verify(self) -> bool {
        let generators = RangeGenerators::shared();
        let mut scalars = self.scalars;
        let mut points = self.points;
        scalars.push(self.basepoint);
        points.push(RISTRETTO_BASEPOINT_POINT);
        for (base, coefficient) in self.bases {
            scalars.push(coefficient);
            points.push(base);
        }
        for (party, coefficients) in self.vector_g.iter().enumerate() {
            scalars.extend_from_slice(coefficients);
            points.extend(generators.g(party, coefficients.len()).copied());
        }
        for (party, coefficients) in self.vector_h.iter().enumerate() {
            scalars.extend_from_slice(coefficients);
            points.extend_from_slice(generators.h(party, coefficients.len()));
        }
        RistrettoPoint::vartime_multiscalar_mul(&scalars, &points).is_identity()
    }
}

impl Default for BatchVerifier {
    fn default() -> Self {
        Self::new()
    }
}

fn accumulate(totals: &mut Vec<Scalar>, coefficients: impl Iterator<Item = Scalar>) {
    for (position, coefficient) in coefficients.enumerate() {
        debug_assert!(position < MAX_BITS);
        if totals.len() <= position {
            totals.push(Scalar::ZERO);
        }
        totals[position] += coefficient;
    }
}

/// Verifies one proof on its own: queues it into a fresh batch and runs the check. A failure
/// is [`ProofError::VerificationFailed`] for `proof`.
pub(crate) fn verify_alone<F>(proof: &'static str, queue: F) -> Result<(), ProofError>
where
    F: FnOnce(&mut BatchVerifier) -> Result<(), ProofError>,
{
    let mut verifier = BatchVerifier::new();
    queue(&mut verifier)?;
    if verifier.verify() {
        Ok(())
    } else {
        Err(ProofError::VerificationFailed { proof })
    }
}

/// Queues every item in one batch; if the batch fails, verifies each item on its own and
/// returns [`ProofError::BatchFailed`] naming those that fail. An item whose equations cannot
/// even be formed (wrong shape) counts as failed.
pub fn verify_each<T, R, F>(items: &[T], rng: &mut R, queue: F) -> Result<(), ProofError>
where
    R: RngCore + CryptoRng,
    F: Fn(&T, &mut BatchVerifier) -> Result<(), ProofError>,
{
    let mut batch = BatchVerifier::new_with_rng(rng);
    let mut malformed = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if queue(item, &mut batch).is_err() {
            malformed.push(index);
        }
    }
    if malformed.is_empty() && batch.verify() {
        return Ok(());
    }
    let failed: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| {
            let mut single = BatchVerifier::new_with_rng(rng);
            queue(item, &mut single).is_err() || !single.verify()
        })
        .map(|(index, _)| index)
        .collect();
    Err(ProofError::BatchFailed { failed })
}
