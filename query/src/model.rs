//! Regression models over a release: multivariable linear regression fitted in one round from
//! encrypted, range-proven, DP-noised sufficient statistics, with a standard error, z, p-value
//! and 95 % interval per coefficient that include the DP noise.
//!
//! `SELECT LINEAR(y ~ x1 + x2 + …) FROM patients [WHERE …] [GROUP BY …]` asks every node,
//! per cell, for the sums an ordinary least-squares fit needs over the patients with y and
//! every covariate recorded (a categorical covariate enters as one dummy column per category
//! but its first, the reference, named `column=category`): n, Σv and Σv² for each variable v, and Σv·w for every pair (the
//! offset encodings of [`crate::plan`]). These are the plan's ordinary statistics, so they are
//! encrypted, proven, noised, key-switched and receipted like any other. The buyer then
//! solves the normal equations in centred form:
//!
//! ```text
//! C_vw = Σ(v − v̄)(w − w̄) = (n·Σvw − Σv·Σw)/n        (exact 128-bit numerators)
//! β = C_xx⁻¹ c_xy,   intercept = ȳ − β·x̄
//! σ̂² = (C_yy − β·c_xy)/(n − p − 1)
//! Var β = σ̂² C_xx⁻¹,   Var intercept = σ̂² (1/n + x̄ᵀ C_xx⁻¹ x̄)
//! ```
//!
//! The DP noise's part of each coefficient's variance is found as for every other released
//! number ([`crate::uncertainty`]): the delta method over every slot the fit reads, each
//! derivative a central difference over one noise standard deviation. The reported standard
//! error is √(sampling² + noise²), z = estimate/se, the p-value two-sided from the normal
//! distribution, and the interval ± 1.96 se. docs/analytics.md says why this method, and what
//! logistic and Poisson models will need instead.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::plan::{count_and_sums, intern, Codec, QueryPlan, Statistic};
use crate::uncertainty::Z_95;

/// At most this many covariates in one model.
pub const MAX_COVARIATES: usize = 16;

/// The columns of a model's answer after the group labels, one row per coefficient.
pub const MODEL_COLUMNS: [&str; 8] = [
    "term",
    "estimate",
    "std_error",
    "noise_se",
    "z",
    "p_value",
    "ci_low",
    "ci_high",
];

/// The columns a logistic model adds after [`MODEL_COLUMNS`]: the odds ratio e^β and its
/// 95 % interval.
pub const ODDS_RATIO_COLUMNS: [&str; 3] = ["odds_ratio", "or_ci_low", "or_ci_high"];

/// The columns of a model's answer after the group labels.
pub fn model_columns(family: Family) -> Vec<&'static str> {
    let mut columns = MODEL_COLUMNS.to_vec();
    if family == Family::Logistic {
        columns.extend(ODDS_RATIO_COLUMNS);
    }
    columns
}

/// The name of the intercept's row.
pub const INTERCEPT: &str = "(intercept)";

/// The model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// Ordinary least squares: y = β₀ + Σβⱼxⱼ + e.
    Linear,
    /// Logistic regression: logit P(y) = β₀ + Σβⱼxⱼ, one Newton–Raphson step per release.
    Logistic,
}

/// What a model reads, as indices into [`QueryPlan::statistics`], by how it is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelInputs {
    /// A least-squares fit: the linear model's sufficient statistics.
    LeastSquares(LeastSquaresInputs),
    /// One Newton–Raphson step of a logistic model ([`crate::logistic`]).
    Newton(crate::logistic::NewtonInputs),
}

impl ModelInputs {
    /// The patients with every variable recorded.
    pub fn count(&self) -> usize {
        match self {
            ModelInputs::LeastSquares(inputs) => inputs.count,
            ModelInputs::Newton(inputs) => inputs.count,
        }
    }
}

/// A least-squares fit's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeastSquaresInputs {
    /// n: the patients with every variable recorded.
    pub count: usize,
    /// Σv per variable, the outcome first, then the covariates in order.
    pub sums: Vec<usize>,
    /// Σv·w per pair of variables (the diagonal is Σv²), row-major over the same order.
    pub products: Vec<Vec<usize>>,
}

/// A regression model of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The family.
    pub family: Family,
    /// The outcome column.
    pub outcome: String,
    /// The covariate columns, in the formula's order.
    pub covariates: Vec<String>,
    /// The statistics it reads.
    pub inputs: ModelInputs,
}

impl ModelSpec {
    /// The outcome followed by the covariates.
    pub fn variables(&self) -> Vec<&str> {
        std::iter::once(self.outcome.as_str())
            .chain(self.covariates.iter().map(String::as_str))
            .collect()
    }

    /// Every statistic the model reads.
    pub fn statistics(&self) -> Vec<usize> {
        match &self.inputs {
            ModelInputs::LeastSquares(inputs) => std::iter::once(inputs.count)
                .chain(inputs.sums.iter().copied())
                .chain(inputs.products.iter().flatten().copied())
                .collect(),
            ModelInputs::Newton(inputs) => inputs.statistics(),
        }
    }
}

/// Adds (or reuses) the statistics a model of `outcome` on `covariates` needs, over the
/// patients with every column of `domain` recorded (the model's real columns: a dummy's is its
/// categorical column).
pub fn assign_model_statistics(
    outcome: &str,
    covariates: &[String],
    domain: &[String],
    statistics: &mut Vec<Statistic>,
) -> LeastSquaresInputs {
    let variables: Vec<String> = std::iter::once(outcome.to_string())
        .chain(covariates.iter().cloned())
        .collect();
    let (domain, count, sums) = count_and_sums(domain, &variables, statistics);
    let mut index_of = |statistic: Statistic| intern(statistics, statistic);
    let mut products = vec![vec![0; variables.len()]; variables.len()];
    for (row, left) in variables.iter().enumerate() {
        for (column, right) in variables.iter().enumerate().skip(row) {
            let index = if row == column {
                index_of(Statistic::SumSquares {
                    column: left.clone(),
                    domain: domain.clone(),
                })
            } else {
                let (first, second) = if left <= right {
                    (left, right)
                } else {
                    (right, left)
                };
                index_of(Statistic::SumProducts {
                    left: first.clone(),
                    right: second.clone(),
                    domain: domain.clone(),
                })
            };
            products[row][column] = index;
            products[column][row] = index;
        }
    }
    LeastSquaresInputs {
        count,
        sums,
        products,
    }
}

/// One fitted coefficient.
#[derive(Debug, Clone, PartialEq)]
pub struct Coefficient {
    /// The intercept or the covariate's name.
    pub term: String,
    /// The estimate.
    pub estimate: f64,
    /// The standard error: sampling and DP noise together.
    pub std_error: f64,
    /// The DP noise's part of the standard error.
    pub noise_se: f64,
}

impl Coefficient {
    /// estimate / std_error.
    pub fn z(&self) -> f64 {
        self.estimate / self.std_error
    }

    /// The two-sided p-value of z under the standard normal distribution.
    pub fn p_value(&self) -> f64 {
        statrs::function::erf::erfc(self.z().abs() / std::f64::consts::SQRT_2)
    }

    /// The 95 % interval.
    pub fn interval(&self) -> (f64, f64) {
        (
            self.estimate - Z_95 * self.std_error,
            self.estimate + Z_95 * self.std_error,
        )
    }
}

/// Why a model could not be fitted in a cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// Fewer patients than parameters plus one.
    #[error("{n} patients, too few for {parameters} coefficients")]
    TooFew {
        /// Patients.
        n: i128,
        /// Coefficients.
        parameters: usize,
    },
    /// The covariates are collinear (or the noise made their cross-products so).
    #[error("the covariates are collinear in this cell")]
    Collinear,
}

/// The point estimates of one cell: intercept first, then each covariate.
pub(crate) struct Estimates {
    pub(crate) coefficients: Vec<f64>,
    /// Var of each coefficient from sampling alone.
    pub(crate) sampling_variance: Vec<f64>,
}

fn codec_of<'a>(plan: &'a QueryPlan, column: &str) -> Option<&'a Codec> {
    plan.codecs.get(column)
}

/// The least-squares fit from the cell's totals (`statistic` reads them by statistic index).
/// `kept[j]` says whether covariate j enters the fit ([`kept_covariates`]); one left out has no
/// coefficient (NaN).
fn estimate(
    plan: &QueryPlan,
    model: &ModelSpec,
    statistic: &dyn Fn(usize) -> i128,
    kept: &[bool],
) -> Result<Estimates, FitError> {
    let inputs = match &model.inputs {
        ModelInputs::LeastSquares(inputs) => inputs,
        ModelInputs::Newton(inputs) => {
            return crate::logistic::newton_step(plan, model, inputs, statistic, kept)
        }
    };
    let variables = model.variables();
    let p = model.covariates.len();
    let n = statistic(inputs.count);
    if n <= (p + 1) as i128 {
        return Err(FitError::TooFew {
            n,
            parameters: p + 1,
        });
    }
    let nf = n as f64;
    let codecs: Vec<(f64, f64)> = variables
        .iter()
        .map(|column| {
            codec_of(plan, column).map_or((0.0, 1.0), |codec| {
                let fixed = codec.fixed_point();
                (fixed.encoded_lower() as f64, fixed.scale())
            })
        })
        .collect();
    let sums: Vec<i128> = inputs.sums.iter().map(|&index| statistic(index)).collect();
    let means: Vec<f64> = sums
        .iter()
        .zip(&codecs)
        .map(|(&sum, &(lower, scale))| (sum as f64 / nf + lower) / scale)
        .collect();
    // C_vw = (n·Σvw − Σv·Σw)/(n·s_v·s_w), the numerator exact.
    let centred = |v: usize, w: usize| -> f64 {
        let numerator = n * statistic(inputs.products[v][w]) - sums[v] * sums[w];
        numerator as f64 / nf / (codecs[v].1 * codecs[w].1)
    };
    let active: Vec<usize> = (0..p).filter(|&j| kept.get(j) == Some(&true)).collect();
    let q = active.len();
    let cxx = DMatrix::from_fn(q, q, |row, column| {
        centred(active[row] + 1, active[column] + 1)
    });
    let cxy = DVector::from_fn(q, |row, _| centred(active[row] + 1, 0));
    let cyy = centred(0, 0);
    let cholesky = cxx.cholesky().ok_or(FitError::Collinear)?;
    let slopes = cholesky.solve(&cxy);
    let inverse = cholesky.inverse();
    let x_means = DVector::from_fn(q, |row, _| means[active[row] + 1]);
    let intercept = means[0] - slopes.dot(&x_means);
    let residual = (cyy - slopes.dot(&cxy)).max(0.0);
    let sigma2 = residual / (nf - q as f64 - 1.0);
    let mut coefficients = vec![intercept];
    let mut sampling_variance = vec![sigma2 * (1.0 / nf + x_means.dot(&(&inverse * &x_means)))];
    for j in 0..p {
        match active.iter().position(|&kept| kept == j) {
            Some(row) => {
                coefficients.push(slopes[row]);
                sampling_variance.push(sigma2 * inverse[(row, row)]);
            }
            None => {
                coefficients.push(f64::NAN);
                sampling_variance.push(f64::NAN);
            }
        }
    }
    Ok(Estimates {
        coefficients,
        sampling_variance,
    })
}

/// Which covariates enter the fit of `cell`. One that does not vary there (a dummy whose
/// category nobody in the cell holds) has no coefficient: it is left out and reported as
/// NULL, as R reports NA. With noise, "does not vary" is judged against the noise: the
/// covariate's own spread (C_jj for least squares, the information's diagonal for a Newton
/// step) must exceed three noise standard deviations of the slot it comes from, so a category
/// nobody holds is not kept for noise alone. The set is decided once, at the released totals,
/// and held fixed while the noise's derivatives are taken.
fn kept_covariates(
    plan: &QueryPlan,
    model: &ModelSpec,
    cell: usize,
    statistic: &dyn Fn(usize) -> i128,
    slot_std_dev: &[f64],
) -> Vec<bool> {
    let noise_of = |index: usize| {
        slot_std_dev
            .get(plan.slot(cell, index))
            .copied()
            .unwrap_or(0.0)
    };
    let count = statistic(model.inputs.count());
    (0..model.covariates.len())
        .map(|j| {
            // The spread and its slot, in the slot's own (encoded) units.
            let (spread, slot) = match &model.inputs {
                ModelInputs::LeastSquares(inputs) => {
                    let sum = statistic(inputs.sums[j + 1]);
                    let squares = inputs.products[j + 1][j + 1];
                    if count <= 0 {
                        return false;
                    }
                    (
                        (count * statistic(squares) - sum * sum) as f64 / count as f64,
                        squares,
                    )
                }
                ModelInputs::Newton(inputs) => {
                    let diagonal = inputs.information[j + 1][j + 1];
                    (statistic(diagonal) as f64, diagonal)
                }
            };
            spread > 0.0 && spread > 3.0 * noise_of(slot)
        })
        .collect()
}

/// Fits `model` in `cell` from its totals (clamped at 0) and the noise standard deviation of
/// every slot (all 0 for an exact answer).
pub fn fit(
    plan: &QueryPlan,
    model: &ModelSpec,
    cell: usize,
    totals: &[i128],
    slot_std_dev: &[f64],
) -> Result<Vec<Coefficient>, FitError> {
    let base = |index: usize| totals[plan.slot(cell, index)];
    let kept = kept_covariates(plan, model, cell, &base, slot_std_dev);
    let point = estimate(plan, model, &base, &kept)?;
    let mut noise_variance = vec![0.0; point.coefficients.len()];
    let mut read: Vec<usize> = model.statistics();
    read.sort_unstable();
    read.dedup();
    for index in read {
        let std_dev = slot_std_dev
            .get(plan.slot(cell, index))
            .copied()
            .unwrap_or(0.0);
        if std_dev <= 0.0 {
            continue;
        }
        let step = std_dev.round().max(1.0);
        let at = |shift: i128| {
            let shifted = |statistic: usize| {
                if statistic == index {
                    (base(statistic) + shift).max(0)
                } else {
                    base(statistic)
                }
            };
            estimate(plan, model, &shifted, &kept).ok()
        };
        let h = step as i128;
        let derivatives: Vec<f64> = match (at(h), at(-h)) {
            (Some(up), Some(down)) => up
                .coefficients
                .iter()
                .zip(&down.coefficients)
                .map(|(up, down)| (up - down) / (2.0 * step))
                .collect(),
            (Some(up), None) => up
                .coefficients
                .iter()
                .zip(&point.coefficients)
                .map(|(up, at)| (up - at) / step)
                .collect(),
            (None, Some(down)) => point
                .coefficients
                .iter()
                .zip(&down.coefficients)
                .map(|(at, down)| (at - down) / step)
                .collect(),
            // Undefined on both sides of this slot: it adds nothing the estimate can show.
            (None, None) => continue,
        };
        for (variance, derivative) in noise_variance.iter_mut().zip(derivatives) {
            *variance += (derivative * std_dev).powi(2);
        }
    }
    let terms = std::iter::once(INTERCEPT.to_string()).chain(model.covariates.iter().cloned());
    Ok(terms
        .zip(point.coefficients)
        .zip(point.sampling_variance.iter().zip(noise_variance))
        .map(|((term, estimate), (&sampling, noise))| Coefficient {
            term,
            estimate,
            // NaN (a covariate left out) stays NaN: `max` would turn it into 0.
            std_error: (if sampling < 0.0 { 0.0 } else { sampling } + noise).sqrt(),
            // A covariate left out of the fit has neither an estimate nor its errors.
            noise_se: if estimate.is_nan() {
                f64::NAN
            } else {
                noise.sqrt()
            },
        })
        .collect())
}
