//! Differential privacy: the discrete Laplace mechanism, sampled exactly, and its calibration
//! to a query plan's sensitivities.
//!
//! # Mechanism
//! Every slot of a released statistics vector gets integer noise X with
//! P[X = x] ∝ exp(−|x| / b), the discrete Laplace (two-sided geometric) distribution of scale
//! b. For a slot whose value one patient can change by at most Δ, this is (Δ/b)-DP
//! (Ghosh, Roughgarden and Sundararajan 2009; Canonne, Kamath and Steinke 2020, §2).
//!
//! # Exact sampling
//! [`sample_discrete_laplace`] is Algorithm 2 of Canonne, Kamath and Steinke, "The Discrete
//! Gaussian for Differential Privacy" (NeurIPS 2020, arXiv:2004.00010), and
//! [`bernoulli_exp_neg`] is their Algorithm 1 (Bernoulli(exp(−γ)) for rational γ, with the
//! γ > 1 reduction of their §5.1). Both use only integer arithmetic and uniform integers drawn
//! by rejection, so no floating-point rounding skews the distribution (Mironov 2012 showed
//! that floating-point Laplace samplers leak).
//!
//! # Calibration
//! A plan's vector is slot 0 (participants) followed by cells × statistics. One patient
//! belongs to exactly one cell, so adding or removing one patient changes slot 0 and the
//! k = |statistics| slots of one cell, each slot s by at most Δₛ = the plan's per-patient
//! maximum. Giving every slot the scale bₛ = (1 + k)·Δₛ/ε makes each slot (ε/(1 + k))-DP;
//! basic composition over the 1 + k slots a patient touches gives ε-DP for the whole vector
//! (cells are disjoint: parallel composition). See docs/privacy.md.
//!
//! # Truncation
//! A committee member encrypts X + K and proves it lies in [0, 2K] (so a member cannot
//! inject an unbounded value), which needs |X| ≤ K: a sample outside is redrawn. The
//! truncated mechanism's δ is the mass its output can put where a neighbouring input's
//! output cannot go: the outer Δ values of [−K, K] (Δ the slot's sensitivity). So
//! K = ⌈[`TAIL_SCALES`]·b⌉ + Δ, which leaves at least 48 scales inside and bounds that mass
//! by 2·e⁻⁴⁸ per slot **at every ε**. (With K = 48·b alone, a large ε makes K smaller than
//! Δ: the supports of neighbouring outputs no longer overlap and δ reaches 1.)

use rand::Rng;
use rand_core::RngCore;

use crate::plan::QueryPlan;

/// The noise bound K is this many scales beyond the slot's sensitivity: |X| ≤ K always,
/// and P[|X| > K − Δ] < 2·e^−48.
pub const TAIL_SCALES: u128 = 48;

/// Micro-units per ε (budgets and orders carry ε·10⁶ as integers).
pub const MICRO: u128 = 1_000_000;

/// Errors calibrating noise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpError {
    /// ε must be positive.
    #[error("epsilon must be positive")]
    ZeroEpsilon,
    /// The noise bound of a slot does not fit the 64-bit range proofs.
    #[error("ε = {epsilon_micro} micro-ε is too small for slot {slot}: its noise would exceed 2^62; order a larger ε or declare tighter bounds")]
    NoiseTooLarge {
        /// The slot.
        slot: usize,
        /// The ε requested.
        epsilon_micro: u64,
    },
}

/// Bernoulli(numerator / denominator), exactly. Requires numerator ≤ denominator, denominator > 0.
pub fn bernoulli<R: RngCore + ?Sized>(numerator: u128, denominator: u128, rng: &mut R) -> bool {
    debug_assert!(denominator > 0 && numerator <= denominator);
    rng.gen_range(0..denominator) < numerator
}

/// Bernoulli(exp(−numerator/denominator)), exactly (Canonne, Kamath and Steinke 2020,
/// Algorithm 1, with the reduction for γ > 1). Requires denominator > 0.
pub fn bernoulli_exp_neg<R: RngCore + ?Sized>(
    numerator: u128,
    denominator: u128,
    rng: &mut R,
) -> bool {
    debug_assert!(denominator > 0);
    if numerator <= denominator {
        // γ ∈ [0, 1]: K is the first k with A_k = 0, A_k ~ Bernoulli(γ/k); return K odd.
        let mut k: u128 = 1;
        while bernoulli(numerator, denominator * k, rng) {
            k += 1;
        }
        k % 2 == 1
    } else {
        // exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)).
        for _ in 0..numerator / denominator {
            if !bernoulli_exp_neg(1, 1, rng) {
                return false;
            }
        }
        bernoulli_exp_neg(numerator % denominator, denominator, rng)
    }
}

/// One draw of the discrete Laplace distribution of scale b = `scale_num`/`scale_den`:
/// P[X = x] ∝ exp(−|x|/b) (Canonne, Kamath and Steinke 2020, Algorithm 2 with t/s = b).
/// Requires both arguments positive.
pub fn sample_discrete_laplace<R: RngCore + ?Sized>(
    scale_num: u128,
    scale_den: u128,
    rng: &mut R,
) -> i128 {
    debug_assert!(scale_num > 0 && scale_den > 0);
    let (t, s) = (scale_num, scale_den);
    loop {
        let u = rng.gen_range(0..t);
        if !bernoulli_exp_neg(u, t, rng) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_neg(1, 1, rng) {
            v += 1;
        }
        let x = u + t * v;
        let y = x / s;
        let negative = bernoulli(1, 2, rng);
        if negative && y == 0 {
            continue;
        }
        let y = y as i128;
        return if negative { -y } else { y };
    }
}

/// The noise of one slot: scale b = `scale_num`/`scale_den` and bound K (|X| ≤ K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotNoise {
    /// Numerator of the scale.
    pub scale_num: u128,
    /// Denominator of the scale.
    pub scale_den: u128,
    /// The truncation bound K.
    pub bound: u64,
}

impl SlotNoise {
    /// The scale b as a float (for reports and tests).
    pub fn scale(&self) -> f64 {
        self.scale_num as f64 / self.scale_den as f64
    }

    /// The standard deviation of one draw, √2·b approximately (exactly
    /// √(2e^{−1/b})/(1 − e^{−1/b})).
    pub fn std_dev(&self) -> f64 {
        let q = (-1.0 / self.scale()).exp();
        (2.0 * q).sqrt() / (1.0 - q)
    }

    /// One draw with |X| ≤ K (values outside are redrawn).
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        loop {
            let x = sample_discrete_laplace(self.scale_num, self.scale_den, rng);
            if x.unsigned_abs() <= u128::from(self.bound) {
                // |x| ≤ K < 2^62.
                return x as i64;
            }
        }
    }
}

/// The noise of every slot of a plan's vector for one release at ε.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    /// ε of the release, micro-units.
    pub epsilon_micro: u64,
    /// One entry per slot of the plan's vector.
    pub slots: Vec<SlotNoise>,
}

/// Calibrates the noise of a release of `plan` at ε = `epsilon_micro`/10⁶.
pub fn calibrate(plan: &QueryPlan, epsilon_micro: u64) -> Result<Calibration, DpError> {
    if epsilon_micro == 0 {
        return Err(DpError::ZeroEpsilon);
    }
    let touched = 1 + plan.statistics.len() as u128;
    let mut sensitivities = Vec::with_capacity(plan.vector_len());
    sensitivities.push(1u64);
    for _cell in 0..plan.cells() {
        for statistic in &plan.statistics {
            sensitivities.push(plan.per_patient_max(statistic));
        }
    }
    let mut slots = Vec::with_capacity(sensitivities.len());
    for (slot, &sensitivity) in sensitivities.iter().enumerate() {
        // b = touched·Δ·10⁶ / ε_micro.
        let scale_num = touched * u128::from(sensitivity.max(1)) * MICRO;
        let scale_den = u128::from(epsilon_micro);
        // K = ⌈48·b⌉ + Δ (see the module documentation, "Truncation").
        let bound = (TAIL_SCALES * scale_num).div_ceil(scale_den) + u128::from(sensitivity.max(1));
        if bound > 1 << 62 {
            return Err(DpError::NoiseTooLarge {
                slot,
                epsilon_micro,
            });
        }
        slots.push(SlotNoise {
            scale_num,
            scale_den,
            bound: bound as u64,
        });
    }
    Ok(Calibration {
        epsilon_micro,
        slots,
    })
}
