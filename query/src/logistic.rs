//! Logistic regression by Newton–Raphson, one release per step.
//!
//! `SELECT LOGISTIC(y ~ x1 + x2 …, b0, b1, b2 …) FROM patients` asks every node, per cell, for
//! the score and the information of the log-likelihood at the coefficients b (intercept first,
//! original units; all 0 when left out), over the patients with y (boolean) and every
//! covariate recorded. Per patient, with z = b·(1, x) and μ = 1/(1 + e^(−z)):
//!
//! ```text
//! r̃ = round((y − μ + 1)·R) ∈ [0, 2R]        R = SCORE_SCALE = 1,000
//! w̃ = round(μ(1 − μ)·W)   ∈ [0, W/4]       W = WEIGHT_SCALE = 1,000
//! ```
//!
//! and the node sums n, Σx̃ⱼ, Σr̃·(1, x̃) and Σw̃·(1, x̃)(1, x̃)ᵀ over the offset encodings x̃ of
//! [`crate::plan`]: every term non-negative and bounded by the manifest, so range-proven,
//! noised and released like any other statistic. The buyer then takes the Newton step in
//! the shifted coordinates u = x̃/s (x = u + L̃/s):
//!
//! ```text
//! G = (Σr̃/R − n,  (Σr̃x̃ⱼ/R − Σx̃ⱼ)/sⱼ)          the score  Σ (1, u)(y − μ)
//! H = Σw̃·(1, x̃)(1, x̃)ᵀ / (W·s·sᵀ)               the information  Σ μ(1 − μ)(1, u)(1, u)ᵀ
//! γ' = γ + H⁻¹G,  Cov γ' ≈ H⁻¹
//! ```
//!
//! and maps γ' back to the original coordinates. Each step is its own order, ε and receipt;
//! the client orders the steps, each at the coefficients the one before released, and the
//! last step's answer is the fit. Its standard errors are H⁻¹'s (the inverse Fisher
//! information at the last coefficients) with the noise's part added by the delta method over
//! the step's slots; Newton's method corrects the earlier steps' noise, so the last step's is
//! what remains to first order. docs/analytics.md says why this method.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::model::{Estimates, FitError, ModelSpec};
use crate::plan::{count_and_sums, intern, Codec, QueryPlan, Statistic};

/// Scale of a patient's score term: r̃ = round((y − μ + 1)·R).
///
/// R and W are kept small because the buyer decrypts every released sum by baby-step
/// giant-step within ±2⁴⁰: Σw̃·x̃ₗ·x̃ᵣ grows as n·W/4·spanₗ·spanᵣ (docs/analytics.md). The
/// rounding they cost is unbiased and averages out over the patients.
pub const SCORE_SCALE: u64 = 1_000;

/// Scale of a patient's weight: w̃ = round(μ(1 − μ)·W), at most W/4.
pub const WEIGHT_SCALE: u64 = 1_000;

/// What one Newton step of a logistic model reads, as indices into
/// [`QueryPlan::statistics`], and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewtonInputs {
    /// The coefficients the step starts from: intercept first, then each covariate, in the
    /// covariates' original units.
    pub at: Vec<f64>,
    /// n.
    pub count: usize,
    /// Σx̃ⱼ per covariate.
    pub sums: Vec<usize>,
    /// Σr̃, then Σr̃·x̃ⱼ per covariate.
    pub score: Vec<usize>,
    /// Σw̃·aᵢ·aⱼ over a = (1, x̃₁, …, x̃ₚ), symmetric.
    pub information: Vec<Vec<usize>>,
}

impl NewtonInputs {
    /// Every statistic the step reads.
    pub fn statistics(&self) -> Vec<usize> {
        std::iter::once(self.count)
            .chain(self.sums.iter().copied())
            .chain(self.score.iter().copied())
            .chain(self.information.iter().flatten().copied())
            .collect()
    }
}

/// Adds (or reuses) the statistics of a Newton step of `covariates` at `at`.
pub fn assign_newton_statistics(
    covariates: &[String],
    domain: &[String],
    at: Vec<f64>,
    statistics: &mut Vec<Statistic>,
) -> NewtonInputs {
    let (domain, count, sums) = count_and_sums(domain, covariates, statistics);
    let mut index_of = |statistic: Statistic| intern(statistics, statistic);
    let terms: Vec<Option<String>> = std::iter::once(None)
        .chain(covariates.iter().cloned().map(Some))
        .collect();
    let score = terms
        .iter()
        .map(|column| {
            index_of(Statistic::Score {
                column: column.clone(),
                domain: domain.clone(),
            })
        })
        .collect();
    let mut information = vec![vec![0; terms.len()]; terms.len()];
    for row in 0..terms.len() {
        for column in row..terms.len() {
            let index = index_of(Statistic::Information {
                left: terms[row].clone(),
                right: terms[column].clone(),
                domain: domain.clone(),
            });
            information[row][column] = index;
            information[column][row] = index;
        }
    }
    NewtonInputs {
        at,
        count,
        sums,
        score,
        information,
    }
}

/// One patient's score and weight terms (r̃, w̃) at the step's coefficients, from their
/// outcome (0 or 1) and the offset encodings x̃ of their covariates under `codecs`.
pub fn patient_terms(at: &[f64], codecs: &[Codec], outcome: f64, encoded: &[i64]) -> (u64, u64) {
    let mut z = at.first().copied().unwrap_or(0.0);
    for ((coefficient, codec), &x) in at.iter().skip(1).zip(codecs).zip(encoded) {
        let fixed = codec.fixed_point();
        z += coefficient * fixed.decode(x + fixed.encoded_lower());
    }
    let mu = 1.0 / (1.0 + (-z).exp());
    let score = ((outcome - mu + 1.0) * SCORE_SCALE as f64).round();
    let weight = (mu * (1.0 - mu) * WEIGHT_SCALE as f64).round();
    (
        score.clamp(0.0, 2.0 * SCORE_SCALE as f64) as u64,
        weight.clamp(0.0, WEIGHT_SCALE as f64 / 4.0) as u64,
    )
}

/// The Newton step from the cell's totals: the coefficients after the step, and each one's
/// sampling variance (H⁻¹'s diagonal, mapped back to the original coordinates).
pub(crate) fn newton_step(
    plan: &QueryPlan,
    model: &ModelSpec,
    inputs: &NewtonInputs,
    statistic: &dyn Fn(usize) -> i128,
    kept: &[bool],
) -> Result<Estimates, FitError> {
    let p = model.covariates.len();
    let n = statistic(inputs.count);
    if n <= (p + 1) as i128 {
        return Err(FitError::TooFew {
            n,
            parameters: p + 1,
        });
    }
    // x = u + a with u = x̃/s, a = L̃/s.
    let (scales, shifts): (Vec<f64>, Vec<f64>) = model
        .covariates
        .iter()
        .map(|column| {
            plan.codecs.get(column).map_or((1.0, 0.0), |codec| {
                let fixed = codec.fixed_point();
                (fixed.scale(), fixed.encoded_lower() as f64 / fixed.scale())
            })
        })
        .unzip();
    let scale_of = |term: usize| if term == 0 { 1.0 } else { scales[term - 1] };
    let r = SCORE_SCALE as f64;
    let w = WEIGHT_SCALE as f64;
    // The intercept and the covariates that enter the fit; one left out keeps its coefficient
    // from the step before in the shift below and is reported as NaN.
    let active: Vec<usize> = std::iter::once(0)
        .chain((1..=p).filter(|&term| kept.get(term - 1) == Some(&true)))
        .collect();
    let q = active.len();
    let gradient = DVector::from_fn(q, |row, _| {
        let term = active[row];
        let score = statistic(inputs.score[term]) as f64 / r;
        if term == 0 {
            score - n as f64
        } else {
            (score - statistic(inputs.sums[term - 1]) as f64) / scale_of(term)
        }
    });
    let hessian = DMatrix::from_fn(q, q, |row, column| {
        let (left, right) = (active[row], active[column]);
        statistic(inputs.information[left][right]) as f64 / w / (scale_of(left) * scale_of(right))
    });
    let cholesky = hessian.cholesky().ok_or(FitError::Collinear)?;
    let step = cholesky.solve(&gradient);
    let covariance = cholesky.inverse();
    // γ (shifted coordinates) from β: the same slopes, γ₀ = β₀ + Σβⱼaⱼ.
    let at = |term: usize| inputs.at.get(term).copied().unwrap_or(0.0);
    let mut gamma: Vec<f64> = (0..=p).map(at).collect();
    gamma[0] += (1..=p).map(|term| at(term) * shifts[term - 1]).sum::<f64>();
    for (&term, delta) in active.iter().zip(step.iter()) {
        gamma[term] += delta;
    }
    // Back: β₀ = γ₀ − Σγⱼaⱼ, and Var β₀ = tᵀ·Cov·t with t = (1, −a) over the active terms.
    let mut coefficients = gamma.clone();
    coefficients[0] -= (1..=p)
        .map(|term| gamma[term] * shifts[term - 1])
        .sum::<f64>();
    let t = DVector::from_fn(q, |row, _| {
        let term = active[row];
        if term == 0 {
            1.0
        } else {
            -shifts[term - 1]
        }
    });
    let mut sampling_variance = vec![t.dot(&(&covariance * &t))];
    for (term, coefficient) in coefficients.iter_mut().enumerate().skip(1) {
        match active.iter().position(|&kept| kept == term) {
            Some(row) => sampling_variance.push(covariance[(row, row)]),
            None => {
                *coefficient = f64::NAN;
                sampling_variance.push(f64::NAN);
            }
        }
    }
    Ok(Estimates {
        coefficients,
        sampling_variance,
    })
}
