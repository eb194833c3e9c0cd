//! Error bars on released numbers: a standard error and a 95 % interval for every aggregate of
//! a differentially private release, accounting for both the sampling error and the DP noise.
//!
//! **The noise.** Every slot of a release carries the sum of m independent discrete Laplace
//! draws of the slot's public scale b (m = the noise shares the release includes, public on
//! the ledger), so its variance is m·2q/(1 − q)², q = e^(−1/b) (truncation at 48 scales
//! changes it by less than e⁻⁴⁰). An aggregate is a smooth function f of the slots it reads;
//! its noise variance is Σₛ (∂f/∂Tₛ)²·Var(noiseₛ) (the delta method), with each derivative a
//! central difference over one noise standard deviation of its slot. This uses only the
//! release and public values: post-processing, which spends no privacy budget.
//!
//! **The sampling error**, by the textbook formula of each aggregate, evaluated at the
//! released (noisy) statistics; the variance, covariance and correlation formulas are those of
//! normal theory:
//!
//! | aggregate | sampling standard error |
//! |---|---|
//! | COUNT, SUM | none: they describe the cohort that answered, not a sample of a population |
//! | AVG | s/√n |
//! | VAR_SAMP, VAR_POP | s²·√(2/(n − 1)) |
//! | STDDEV_SAMP, STDDEV_POP | s/√(2(n − 1)) |
//! | COVAR_SAMP, COVAR_POP | √((sₓ²·s_y² + sₓᵧ²)/(n − 1)) |
//! | CORR | (1 − r²)/√(n − 3), its interval on Fisher's z = atanh r (whose se is 1/√(n − 3)) |
//! | REGR_SLOPE | √(σ̂²/Sₓₓ), σ̂² = (S_yy − b·Sₓᵧ)/(n − 2) |
//! | REGR_INTERCEPT | √(σ̂²·(1/n + x̄²/Sₓₓ)) |
//!
//! The standard error is √(sampling² + noise²) and the 95 % interval is the estimate
//! ± 1.96 standard errors (for CORR, tanh of atanh r ± 1.96·se/(1 − r²)); an interval for a
//! count is cut at 0. A variance is worked on its own scale before it is cut at 0 (where the
//! noise may have pushed it), and a standard deviation's interval is the square roots of its
//! variance's, so a released 0 still gets an interval that says how large it may be.
//! `query/tests/error_bars.rs` checks that these intervals cover the true value at their
//! nominal rate over 400 seeded releases.

use serde::{Deserialize, Serialize};

use crate::dp::Calibration;

/// The 97.5 % quantile of the standard normal distribution.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The uncertainty of one released number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorBar {
    /// The standard error: sampling and noise together.
    pub se: f64,
    /// The part of the standard error that is DP noise alone.
    pub noise_se: f64,
    /// Lower end of the 95 % interval.
    pub ci_low: f64,
    /// Upper end of the 95 % interval.
    pub ci_high: f64,
}

/// The columns an error bar adds beside its value (`avg(x)_se`, …), in order: the standard
/// error, its noise part, and the 95 % interval's ends.
pub const ERROR_COLUMNS: [&str; 4] = ["_se", "_noise_se", "_ci_low", "_ci_high"];

impl ErrorBar {
    /// The values of [`ERROR_COLUMNS`], in order.
    pub fn parts(&self) -> [f64; 4] {
        [self.se, self.noise_se, self.ci_low, self.ci_high]
    }
}

/// The noise every slot of a release carries, as its public standard deviation.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseNoise {
    /// One per slot of the plan's vector.
    pub slot_std_dev: Vec<f64>,
}

impl ReleaseNoise {
    /// The noise of a release calibrated as `calibration` that includes `shares` members'
    /// noise shares.
    pub fn of(calibration: &Calibration, shares: usize) -> Self {
        let shares = shares as f64;
        ReleaseNoise {
            slot_std_dev: calibration
                .slots
                .iter()
                .map(|slot| slot.std_dev() * shares.sqrt())
                .collect(),
        }
    }

    /// No noise (an exact answer): error bars are the sampling error alone.
    pub fn none(slots: usize) -> Self {
        ReleaseNoise {
            slot_std_dev: vec![0.0; slots],
        }
    }
}

/// What the error bar of one aggregate needs: its function, the codecs of its arguments and
/// its statistics of one cell (offset-encoded totals, as released).
pub(crate) struct Moments {
    /// n.
    pub n: f64,
    /// Sample variance of the first argument (0 if not read).
    pub var_y: f64,
    /// Mean of the second argument.
    pub mean_x: f64,
    /// Sample variance of the second argument.
    pub var_x: f64,
    /// Sample covariance.
    pub cov: f64,
}

/// The sampling standard error of `function` at `value` (see the module documentation);
/// variances and standard deviations are [`variance_error_bar`]'s.
pub(crate) fn sampling_se(
    function: crate::plan::Aggregate,
    value: f64,
    m: &Moments,
) -> Option<f64> {
    use crate::plan::Aggregate;
    let n = m.n;
    let positive = |x: f64| x.max(0.0);
    let se = match function {
        Aggregate::Count | Aggregate::Sum => 0.0,
        Aggregate::Avg => {
            if n < 2.0 {
                return None;
            }
            (positive(m.var_y) / n).sqrt()
        }
        // Worked on the variance's own scale, before it is cut at 0: variance_error_bar.
        Aggregate::VarSamp | Aggregate::VarPop | Aggregate::StddevSamp | Aggregate::StddevPop => {
            return None
        }
        Aggregate::CovarSamp | Aggregate::CovarPop => {
            if n < 2.0 {
                return None;
            }
            ((positive(m.var_x) * positive(m.var_y) + m.cov * m.cov) / (n - 1.0)).sqrt()
        }
        Aggregate::Corr => {
            // Fisher: atanh r has standard error 1/√(n − 3), so r's is (1 − r²)/√(n − 3).
            if n < 4.0 {
                return None;
            }
            (1.0 - value * value).max(0.0) / (n - 3.0).sqrt()
        }
        Aggregate::RegrSlope | Aggregate::RegrIntercept => {
            if n < 3.0 || m.var_x <= 0.0 {
                return None;
            }
            let sxx = m.var_x * (n - 1.0);
            let syy = positive(m.var_y) * (n - 1.0);
            let sxy = m.cov * (n - 1.0);
            let slope = sxy / sxx;
            let residual = positive(syy - slope * sxy) / (n - 2.0);
            if function == Aggregate::RegrSlope {
                (residual / sxx).sqrt()
            } else {
                (residual * (1.0 / n + m.mean_x * m.mean_x / sxx)).sqrt()
            }
        }
    };
    se.is_finite().then_some(se)
}

/// The error bar of `function`'s `value`, given its sampling and noise standard errors.
pub(crate) fn error_bar(
    function: crate::plan::Aggregate,
    value: f64,
    sampling: f64,
    noise: f64,
) -> ErrorBar {
    use crate::plan::Aggregate;
    let se = (sampling * sampling + noise * noise).sqrt();
    let (ci_low, ci_high) = match function {
        Aggregate::Corr => {
            // Fisher's z: atanh r is near normal, with standard error se/(1 − r²).
            let r = value.clamp(-0.999_999, 0.999_999);
            let z = r.atanh();
            let se_z = se / (1.0 - r * r);
            ((z - Z_95 * se_z).tanh(), (z + Z_95 * se_z).tanh())
        }
        Aggregate::Count => ((value - Z_95 * se).max(0.0), value + Z_95 * se),
        _ => (value - Z_95 * se, value + Z_95 * se),
    };
    ErrorBar {
        se,
        noise_se: noise,
        ci_low,
        ci_high,
    }
}

/// The error bar of a variance or standard deviation, worked on the variance's scale from its
/// estimate before it is cut at 0 (`variance`, linear in the noisy sums, so the noise part is
/// exact there): se² = (s²·√(2/(n − 1)))² + noise², the interval variance ± 1.96 se cut at 0,
/// and for a standard deviation the square roots of that interval, with se = se_var/(2s)
/// (half the interval over 1.96 where s is 0). `value` is the released (cut) number.
pub(crate) fn variance_error_bar(
    function: crate::plan::Aggregate,
    variance: f64,
    n: f64,
    noise: f64,
    value: f64,
) -> ErrorBar {
    use crate::plan::Aggregate;
    let sampling = variance.max(0.0) * (2.0 / (n - 1.0)).sqrt();
    let se = (sampling * sampling + noise * noise).sqrt();
    let (low, high) = (
        (variance - Z_95 * se).max(0.0),
        (variance + Z_95 * se).max(0.0),
    );
    match function {
        Aggregate::StddevSamp | Aggregate::StddevPop => {
            let (ci_low, ci_high) = (low.sqrt(), high.sqrt());
            let scale = if value > 0.0 {
                1.0 / (2.0 * value)
            } else {
                (ci_high - ci_low) / (2.0 * Z_95) / se.max(f64::MIN_POSITIVE)
            };
            ErrorBar {
                se: se * scale,
                noise_se: noise * scale,
                ci_low,
                ci_high,
            }
        }
        _ => ErrorBar {
            se,
            noise_se: noise,
            ci_low: low,
            ci_high: high,
        },
    }
}
