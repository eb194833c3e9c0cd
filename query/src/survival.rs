//! Survival: Kaplan–Meier curves per group over the time bins a manifest declares for a
//! time-to-event column, with Greenwood's standard errors (plus the DP noise) and a log-rank
//! test between the groups.
//!
//! `SELECT KAPLAN_MEIER(time, event) FROM patients [WHERE …] [GROUP BY arm]` compiles to the
//! plan's ordinary statistics over the cells (group × time bin): the patients with both
//! columns recorded, and Σ event (a boolean column: 1 for an event, 0 for censoring). A patient
//! is in exactly one cell, so the release is one parallel composition like any GROUP BY. The
//! buyer then works each group's curve from its bins, in order:
//!
//! ```text
//! n_b = N − Σ_{b' < b} c_b'                 patients at risk at the start of bin b
//! S_b = Π_{b' ≤ b} (1 − d_b'/n_b')          survival at the end of bin b
//! Var_Greenwood S_b = S_b² Σ_{b' ≤ b} d_b'/(n_b'(n_b' − d_b'))
//! ```
//!
//! with c_b the patients whose time falls in bin b and d_b their events: the Kaplan–Meier
//! estimator of times rounded down to the bins' edges (ties at an edge count events before
//! censorings, as Kaplan and Meier do). The noise's part of each S_b's standard error comes
//! from the delta method over the group's slots, as for every released number
//! ([`crate::uncertainty`]); the interval is S_b ± 1.96 se, cut to [0, 1].
//!
//! The log-rank test compares the groups' curves with the same bins (χ² with G − 1 degrees of
//! freedom, from the observed and expected events per group and bin and their hypergeometric
//! covariance); it is computed from the noisy counts and carries no error bar of its own.
//!
//! A group any of whose bins is withheld for the minimum cohort is withheld whole: its curve
//! after that bin, and its patients at risk before it, would need the withheld count. The
//! log-rank test is then NULL: it compares every group or none.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::combine::{cell_labels, labelled_answer, Cell, QueryAnswer};
use crate::plan::QueryPlan;
use crate::uncertainty::{ReleaseNoise, Z_95};

/// The columns of a survival answer after the group labels and the time bin.
pub const SURVIVAL_COLUMNS: [&str; 11] = [
    "at_risk",
    "events",
    "censored",
    "survival",
    "std_error",
    "noise_se",
    "ci_low",
    "ci_high",
    "log_rank_chi2",
    "log_rank_df",
    "log_rank_p",
];

/// A Kaplan–Meier query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurvivalSpec {
    /// The time-to-event column; its declared bins are the curve's time grid.
    pub time: String,
    /// The event column (boolean: 1 for the event, 0 for censoring).
    pub event: String,
    /// The index among [`QueryPlan::statistics`] of the count of patients with both recorded.
    pub count: usize,
    /// The index of Σ event.
    pub events: usize,
}

/// One group's counts per bin, clamped so that 0 ≤ d_b ≤ c_b.
struct Counts {
    patients: Vec<f64>,
    events: Vec<f64>,
}

/// Patients at risk at the start of each bin.
fn at_risk(counts: &Counts) -> Vec<f64> {
    let total: f64 = counts.patients.iter().sum();
    let mut left = total;
    counts
        .patients
        .iter()
        .map(|&patients| {
            let at_start = left;
            left -= patients;
            at_start
        })
        .collect()
}

/// S_b and Greenwood's variance at the end of each bin.
fn curve(counts: &Counts) -> (Vec<f64>, Vec<f64>) {
    let risk = at_risk(counts);
    let mut survival = 1.0;
    let mut greenwood = 0.0;
    let mut curve = Vec::with_capacity(risk.len());
    let mut variance = Vec::with_capacity(risk.len());
    for (&n, &d) in risk.iter().zip(&counts.events) {
        if n > 0.0 {
            survival *= 1.0 - d / n;
            if n > d {
                greenwood += d / (n * (n - d));
            }
        }
        curve.push(survival);
        variance.push(survival * survival * greenwood);
    }
    (curve, variance)
}

/// The log-rank χ² and its degrees of freedom over `groups`' counts (at least two groups).
fn log_rank(groups: &[Counts]) -> Option<(f64, usize)> {
    let g = groups.len();
    if g < 2 {
        return None;
    }
    let risks: Vec<Vec<f64>> = groups.iter().map(at_risk).collect();
    let bins = groups[0].patients.len();
    let mut observed_minus_expected: DVector<f64> = DVector::zeros(g - 1);
    let mut covariance: DMatrix<f64> = DMatrix::zeros(g - 1, g - 1);
    for bin in 0..bins {
        let n: f64 = risks.iter().map(|risk| risk[bin]).sum();
        let d: f64 = groups.iter().map(|group| group.events[bin]).sum();
        if n <= 1.0 || d <= 0.0 {
            continue;
        }
        let spread = d * (n - d) / (n - 1.0);
        for row in 0..g - 1 {
            let share = risks[row][bin] / n;
            observed_minus_expected[row] += groups[row].events[bin] - d * share;
            for column in 0..g - 1 {
                let other = risks[column][bin] / n;
                let kronecker = if row == column { 1.0 } else { 0.0 };
                covariance[(row, column)] += spread * share * (kronecker - other);
            }
        }
    }
    let inverse = covariance.try_inverse()?;
    let chi2 = (&inverse * &observed_minus_expected).dot(&observed_minus_expected);
    chi2.is_finite().then_some((chi2, g - 1))
}

/// The survival answer of a release (see the module documentation).
pub(crate) fn combine_survival(
    plan: &QueryPlan,
    spec: &SurvivalSpec,
    totals: &[i128],
    released: &[bool],
    noise: Option<&ReleaseNoise>,
) -> QueryAnswer {
    let bins = plan.groups.last().map_or(1, |key| key.cardinality());
    let groups = plan.cells() / bins;
    let cell_counts = |group: usize, read: &dyn Fn(usize) -> f64| Counts {
        patients: (0..bins)
            .map(|bin| read(plan.slot(group * bins + bin, spec.count)).max(0.0))
            .collect(),
        events: (0..bins)
            .map(|bin| {
                let patients = read(plan.slot(group * bins + bin, spec.count)).max(0.0);
                read(plan.slot(group * bins + bin, spec.events)).clamp(0.0, patients)
            })
            .collect(),
    };
    let base = |slot: usize| totals[slot] as f64;
    let withheld: Vec<bool> = (0..groups)
        .map(|group| {
            (0..bins).any(|bin| {
                let cell = group * bins + bin;
                !released[plan.slot(cell, spec.count)] || !released[plan.slot(cell, spec.events)]
            })
        })
        .collect();
    let released_groups: Vec<Counts> = (0..groups)
        .filter(|&group| !withheld[group])
        .map(|group| cell_counts(group, &base))
        .collect();
    // The test compares every group or none: one over the released groups alone would answer
    // another question than the query asked.
    let test = if withheld.iter().any(|&hidden| hidden) {
        None
    } else {
        log_rank(&released_groups)
    };
    let p_value = test.and_then(|(chi2, df)| {
        ChiSquared::new(df as f64)
            .ok()
            .map(|distribution| 1.0 - distribution.cdf(chi2))
    });
    let mut rows = Vec::with_capacity(plan.cells());
    for (group, &group_withheld) in withheld.iter().enumerate() {
        let counts = cell_counts(group, &base);
        let risk = at_risk(&counts);
        let (survival, greenwood) = curve(&counts);
        // The noise's variance of each S_b: Σ over the group's slots of (∂S_b/∂T·σ)².
        let mut noise_variance = vec![0.0; bins];
        if let Some(noise) = noise {
            for bin in 0..bins {
                for statistic in [spec.count, spec.events] {
                    let slot = plan.slot(group * bins + bin, statistic);
                    let sigma = noise.slot_std_dev[slot];
                    if sigma <= 0.0 {
                        continue;
                    }
                    let step = sigma.round().max(1.0);
                    let shifted = |shift: f64| {
                        let read = |read: usize| {
                            if read == slot {
                                (base(read) + shift).max(0.0)
                            } else {
                                base(read)
                            }
                        };
                        curve(&cell_counts(group, &read)).0
                    };
                    let (up, down) = (shifted(step), shifted(-step));
                    for (variance, (up, down)) in
                        noise_variance.iter_mut().zip(up.iter().zip(&down))
                    {
                        *variance += ((up - down) / (2.0 * step) * sigma).powi(2);
                    }
                }
            }
        }
        for bin in 0..bins {
            let mut row = cell_labels(plan, group * bins + bin);
            if group_withheld {
                row.extend(std::iter::repeat_n(
                    Cell::Suppressed,
                    SURVIVAL_COLUMNS.len(),
                ));
                rows.push(row);
                continue;
            }
            let se = (greenwood[bin] + noise_variance[bin]).sqrt();
            let number = |value: f64| {
                if value.is_finite() {
                    Cell::Number(value)
                } else {
                    Cell::Null
                }
            };
            row.extend([
                number(risk[bin]),
                number(counts.events[bin]),
                number(counts.patients[bin] - counts.events[bin]),
                number(survival[bin]),
                number(se),
                number(noise_variance[bin].sqrt()),
                number((survival[bin] - Z_95 * se).clamp(0.0, 1.0)),
                number((survival[bin] + Z_95 * se).clamp(0.0, 1.0)),
            ]);
            match (test, p_value) {
                (Some((chi2, df)), Some(p)) => {
                    row.extend([number(chi2), number(df as f64), number(p)]);
                }
                _ => row.extend([Cell::Null, Cell::Null, Cell::Null]),
            }
            rows.push(row);
        }
    }
    labelled_answer(plan, &SURVIVAL_COLUMNS, rows, totals, released)
}
