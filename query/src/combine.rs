//! Combining: from the summed statistics of every node to the SQL answer.
//!
//! With n patients in a cell's domain, S = Σx̃, Q = Σx̃², P = Σx̃ỹ (offset encodings, see
//! [`crate::plan`]), L̃ = round(L·10^d) and s = 10^d:
//!
//! - SUM(x) = (n·L̃ + S) / s, AVG(x) = SUM(x) / n;
//! - VAR_SAMP(x) = (n·Q − S²) / (n·(n−1)·s²), VAR_POP with n² in the denominator;
//! - COVAR_SAMP(y, x) = (n·P − Sy·Sx) / (n·(n−1)·sy·sx);
//! - CORR(y, x) = (n·P − Sy·Sx) / √((n·Qy − Sy²)(n·Qx − Sx²));
//! - REGR_SLOPE(y, x) = (n·P − Sy·Sx) / (n·Qx − Sx²) · sx/sy, and
//!   REGR_INTERCEPT(y, x) = AVG(y) − slope·AVG(x).
//!
//! The numerators are exact 128-bit integers, so no cancellation error creeps in before the
//! final division. An aggregate that is undefined for its cell (an average of nobody, a
//! variance of one patient, a correlation with a constant) is `Null`, as in SQL.
//!
//! A release also carries an [`ErrorBar`] for every number it releases: sampling error and DP
//! noise together ([`crate::uncertainty`]).

use serde::{Deserialize, Serialize};

use crate::model::{fit, model_columns, Family, ModelSpec, INTERCEPT};
use crate::plan::{Aggregate, AggregateInputs, Output, QueryPlan};
use crate::uncertainty::{
    error_bar, sampling_se, variance_error_bar, ErrorBar, Moments, ReleaseNoise, ERROR_COLUMNS,
};

/// A cell of the answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    /// A number.
    Number(f64),
    /// A group label.
    Text(String),
    /// Undefined for this cell.
    Null,
    /// Withheld: the cell's noisy count is below the listing's minimum cohort.
    #[serde(skip_deserializing)]
    Suppressed,
}

/// What JSON output shows for a suppressed cell.
pub const SUPPRESSED: &str = "suppressed";

impl Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Number(x) => serializer.serialize_f64(*x),
            Cell::Text(text) => serializer.serialize_str(text),
            Cell::Null => serializer.serialize_none(),
            Cell::Suppressed => serializer.serialize_str(SUPPRESSED),
        }
    }
}

impl Cell {
    /// The number, if the cell holds one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Number(x) => Some(*x),
            _ => None,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Number(x) if x.fract() == 0.0 && x.abs() < 1e15 => write!(f, "{x:.0}"),
            Cell::Number(x) => write!(f, "{x:.4}"),
            Cell::Text(text) => f.write_str(text),
            Cell::Null => f.write_str("—"),
            Cell::Suppressed => f.write_str(SUPPRESSED),
        }
    }
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// Output column names.
    pub columns: Vec<String>,
    /// One row per cell.
    pub rows: Vec<Vec<Cell>>,
    /// Patients whose consent covered the purpose, across all nodes (0 if their noisy count
    /// was below the minimum cohort, which withholds everything).
    pub participants: u64,
    /// Per row and column, a released number's error bar: `None` for a label, a NULL or
    /// withheld value. Empty for an exact (noiseless) answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Vec<Option<ErrorBar>>>,
}

impl QueryAnswer {
    /// The error bar of row `row`, column `column`, if it has one.
    pub fn error(&self, row: usize, column: usize) -> Option<&ErrorBar> {
        self.errors.get(row)?.get(column)?.as_ref()
    }

    /// Whether column `column` carries error bars: an aggregate of a release (not a group
    /// label, not an exact answer).
    pub fn has_error_bars(&self, column: usize) -> bool {
        !self.errors.is_empty()
            && self
                .rows
                .iter()
                .all(|row| !matches!(row.get(column), Some(Cell::Text(_))))
    }

    /// [`QueryAnswer::has_error_bars`] of every column, worked out once.
    pub fn error_bar_columns(&self) -> Vec<bool> {
        (0..self.columns.len())
            .map(|column| self.has_error_bars(column))
            .collect()
    }

    /// The answer as one flat table: each column of a release's aggregate followed by its
    /// error columns ([`crate::uncertainty::ERROR_COLUMNS`]: `_se`, `_noise_se`, `_ci_low`,
    /// `_ci_high`), NULL where the value has no error bar. An exact answer is unchanged.
    pub fn with_error_columns(&self) -> (Vec<String>, Vec<Vec<Cell>>) {
        let barred = self.error_bar_columns();
        let mut columns = Vec::new();
        for (index, name) in self.columns.iter().enumerate() {
            columns.push(name.clone());
            if barred[index] {
                columns.extend(ERROR_COLUMNS.iter().map(|suffix| format!("{name}{suffix}")));
            }
        }
        let rows = self
            .rows
            .iter()
            .enumerate()
            .map(|(row_index, row)| {
                let mut cells = Vec::with_capacity(columns.len());
                for (index, cell) in row.iter().enumerate() {
                    cells.push(cell.clone());
                    if barred[index] {
                        match self.error(row_index, index) {
                            Some(bar) => cells.extend(bar.parts().map(Cell::Number)),
                            None => cells.extend([Cell::Null, Cell::Null, Cell::Null, Cell::Null]),
                        }
                    }
                }
                cells
            })
            .collect();
        (columns, rows)
    }
}

/// Errors from combining.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CombineError {
    /// A vector has the wrong length.
    #[error("statistics vector has {got} slots, the plan needs {expected}")]
    Length {
        /// Slots supplied.
        got: usize,
        /// Slots needed.
        expected: usize,
    },
    /// The noise given for a release does not cover every slot.
    #[error("the release's noise covers {got} slots, the plan has {expected}")]
    NoiseLength {
        /// Slots covered.
        got: usize,
        /// Slots in the plan.
        expected: usize,
    },
    /// A decrypted sum is negative, which no honest set of nodes produces.
    #[error("slot {slot} decrypted to the negative value {value}")]
    Negative {
        /// The slot.
        slot: usize,
        /// The value.
        value: i128,
    },
}

/// Adds nodes' plaintext statistics vectors slot by slot.
pub fn sum_vectors(vectors: &[Vec<u64>]) -> Vec<i128> {
    let len = vectors.first().map_or(0, Vec::len);
    (0..len)
        .map(|slot| vectors.iter().map(|vector| i128::from(vector[slot])).sum())
        .collect()
}

/// Turns summed statistics into the answer (exact: no noise, no error bars).
pub fn combine(plan: &QueryPlan, totals: &[i128]) -> Result<QueryAnswer, CombineError> {
    if totals.len() != plan.vector_len() {
        return Err(CombineError::Length {
            got: totals.len(),
            expected: plan.vector_len(),
        });
    }
    if let Some((slot, &value)) = totals.iter().enumerate().find(|(_, &value)| value < 0) {
        return Err(CombineError::Negative { slot, value });
    }
    let released = vec![true; totals.len()];
    let mut answer = combine_cells(plan, totals, &released, None);
    answer.errors.clear();
    Ok(answer)
}

/// Combines a differentially private release: `totals[s]` is `None` for a slot that was not
/// released (withheld for the minimum cohort), and `noise` is the public noise of every slot.
/// An aggregate is withheld (`Suppressed`) when any slot it reads is. Noise can make a total
/// negative; totals are clamped at 0 first (post-processing, which costs no privacy), and an
/// aggregate the noisy totals leave undefined is NULL. Every released number gets its
/// [`ErrorBar`].
pub fn combine_release(
    plan: &QueryPlan,
    totals: &[Option<i128>],
    noise: &ReleaseNoise,
) -> Result<QueryAnswer, CombineError> {
    if totals.len() != plan.vector_len() {
        return Err(CombineError::Length {
            got: totals.len(),
            expected: plan.vector_len(),
        });
    }
    if noise.slot_std_dev.len() != plan.vector_len() {
        return Err(CombineError::NoiseLength {
            got: noise.slot_std_dev.len(),
            expected: plan.vector_len(),
        });
    }
    let clamped: Vec<i128> = totals
        .iter()
        .map(|total| total.unwrap_or(0).max(0))
        .collect();
    let released: Vec<bool> = totals.iter().map(Option::is_some).collect();
    Ok(combine_cells(plan, &clamped, &released, Some(noise)))
}

fn combine_cells(
    plan: &QueryPlan,
    totals: &[i128],
    released: &[bool],
    noise: Option<&ReleaseNoise>,
) -> QueryAnswer {
    if let Some(model) = &plan.model {
        return combine_model(plan, model, totals, released, noise);
    }
    if let Some(survival) = &plan.survival {
        return crate::survival::combine_survival(plan, survival, totals, released, noise);
    }
    let columns = plan
        .outputs
        .iter()
        .map(|output| output.name().to_string())
        .collect();
    let mut rows = Vec::with_capacity(plan.cells());
    let mut errors = Vec::with_capacity(plan.cells());
    for cell in 0..plan.cells() {
        let keys = plan.cell_keys(cell);
        let statistic = |index: usize| totals[plan.slot(cell, index)];
        let mut row = Vec::with_capacity(plan.outputs.len());
        let mut bars = Vec::with_capacity(plan.outputs.len());
        for output in &plan.outputs {
            let (value, bar) = match output {
                Output::Group { key, .. } => {
                    (Cell::Text(plan.groups[*key].label(keys[*key])), None)
                }
                Output::Aggregate { inputs, .. }
                    if inputs
                        .statistics()
                        .any(|index| !released[plan.slot(cell, index)]) =>
                {
                    (Cell::Suppressed, None)
                }
                Output::Aggregate {
                    function,
                    arguments,
                    inputs,
                    ..
                } => {
                    let value = aggregate(plan, *function, arguments, inputs, &statistic);
                    let bar = match (&value, noise) {
                        (Cell::Number(number), Some(noise)) => uncertainty_of(
                            plan, cell, *function, arguments, inputs, *number, totals, noise,
                        ),
                        _ => None,
                    };
                    (value, bar)
                }
            };
            row.push(value);
            bars.push(bar);
        }
        rows.push(row);
        errors.push(bars);
    }
    QueryAnswer {
        columns,
        rows,
        participants: if released[0] {
            u64::try_from(totals[0]).unwrap_or(u64::MAX)
        } else {
            0
        },
        errors,
    }
}

/// The group labels of `cell`, one per output (an answer of rows per cell and term or bin
/// starts each row with them).
pub(crate) fn cell_labels(plan: &QueryPlan, cell: usize) -> Vec<Cell> {
    let keys = plan.cell_keys(cell);
    plan.outputs
        .iter()
        .map(|output| match output {
            Output::Group { key, .. } => Cell::Text(plan.groups[*key].label(keys[*key])),
            Output::Aggregate { .. } => Cell::Null,
        })
        .collect()
}

/// An answer whose columns are the plan's outputs (its group labels) followed by `extra`,
/// with its own error columns (so `errors` is empty), and the participants if released.
pub(crate) fn labelled_answer(
    plan: &QueryPlan,
    extra: &[&str],
    rows: Vec<Vec<Cell>>,
    totals: &[i128],
    released: &[bool],
) -> QueryAnswer {
    let columns = plan
        .outputs
        .iter()
        .map(|output| output.name().to_string())
        .chain(extra.iter().map(|column| column.to_string()))
        .collect();
    QueryAnswer {
        columns,
        rows,
        participants: if released[0] {
            u64::try_from(totals[0]).unwrap_or(u64::MAX)
        } else {
            0
        },
        errors: Vec::new(),
    }
}

/// A model's answer: per cell, one row per coefficient (intercept first) after the cell's
/// group labels, with [`model_columns`]. A cell whose model statistics were withheld is
/// `Suppressed`; one where the fit is undefined (too few patients, collinear covariates) is
/// NULL. The error columns are the rows' own, so `errors` stays empty.
fn combine_model(
    plan: &QueryPlan,
    model: &ModelSpec,
    totals: &[i128],
    released: &[bool],
    noise: Option<&ReleaseNoise>,
) -> QueryAnswer {
    let model_columns = model_columns(model.family);
    let no_noise = vec![0.0; totals.len()];
    let std_devs = noise.map_or(no_noise.as_slice(), |noise| &noise.slot_std_dev);
    let terms: Vec<String> = std::iter::once(INTERCEPT.to_string())
        .chain(model.covariates.iter().cloned())
        .collect();
    let mut rows = Vec::with_capacity(plan.cells() * terms.len());
    for cell in 0..plan.cells() {
        let labels = cell_labels(plan, cell);
        let withheld = model
            .statistics()
            .into_iter()
            .any(|index| !released[plan.slot(cell, index)]);
        let fitted = if withheld {
            None
        } else {
            fit(plan, model, cell, totals, std_devs).ok()
        };
        for (position, term) in terms.iter().enumerate() {
            let mut row = labels.clone();
            row.push(Cell::Text(term.clone()));
            let values: Vec<Cell> = match (&fitted, withheld) {
                (_, true) => vec![Cell::Suppressed; model_columns.len() - 1],
                (None, false) => vec![Cell::Null; model_columns.len() - 1],
                (Some(coefficients), false) => {
                    let coefficient = &coefficients[position];
                    let (low, high) = coefficient.interval();
                    let mut values = vec![
                        coefficient.estimate,
                        coefficient.std_error,
                        coefficient.noise_se,
                        coefficient.z(),
                        coefficient.p_value(),
                        low,
                        high,
                    ];
                    if model.family == Family::Logistic {
                        values.extend([coefficient.estimate.exp(), low.exp(), high.exp()]);
                    }
                    values
                        .into_iter()
                        .map(|value| {
                            if value.is_finite() {
                                Cell::Number(value)
                            } else {
                                Cell::Null
                            }
                        })
                        .collect()
                }
            };
            row.extend(values);
            rows.push(row);
        }
    }
    labelled_answer(plan, &model_columns, rows, totals, released)
}

/// The error bar of one released aggregate of `cell`: its sampling standard error, and its
/// noise standard error by the delta method, each derivative a central difference over one
/// noise standard deviation of the slot (see [`crate::uncertainty`]).
#[allow(clippy::too_many_arguments)]
fn uncertainty_of(
    plan: &QueryPlan,
    cell: usize,
    function: Aggregate,
    arguments: &[String],
    inputs: &AggregateInputs,
    value: f64,
    totals: &[i128],
    noise: &ReleaseNoise,
) -> Option<ErrorBar> {
    let base = |index: usize| totals[plan.slot(cell, index)];
    let moments_at =
        |statistic: &dyn Fn(usize) -> i128| moments(plan, arguments, inputs, statistic);
    if let Aggregate::VarSamp | Aggregate::VarPop | Aggregate::StddevSamp | Aggregate::StddevPop =
        function
    {
        // On the variance's own scale, before it is cut at 0: there it is linear in the
        // noisy sums, and a variance the noise pushed below 0 still gets its interval.
        let population = matches!(function, Aggregate::VarPop | Aggregate::StddevPop);
        let raw = |statistic: &dyn Fn(usize) -> i128| {
            let m = moments_at(statistic);
            let factor = if population { (m.n - 1.0) / m.n } else { 1.0 };
            (m.n >= 2.0).then_some(m.var_y * factor)
        };
        let variance = raw(&base)?;
        let noise_variance = noise_variance_of(plan, cell, inputs, totals, noise, variance, &raw)?;
        let n = moments_at(&base).n;
        let bar = variance_error_bar(function, variance, n, noise_variance.sqrt(), value);
        return (bar.se.is_finite() && bar.ci_low.is_finite() && bar.ci_high.is_finite())
            .then_some(bar);
    }
    let value_at = |statistic: &dyn Fn(usize) -> i128| {
        aggregate(plan, function, arguments, inputs, statistic).as_f64()
    };
    let noise_variance = noise_variance_of(plan, cell, inputs, totals, noise, value, &value_at)?;
    let sampling = sampling_se(function, value, &moments_at(&base))?;
    let bar = error_bar(function, value, sampling, noise_variance.sqrt());
    (bar.se.is_finite() && bar.ci_low.is_finite() && bar.ci_high.is_finite()).then_some(bar)
}

/// A number computed from a cell's totals, read by statistic index (`None` where it is
/// undefined).
type ReadNumber<'a> = dyn Fn(&dyn Fn(usize) -> i128) -> Option<f64> + 'a;

/// The noise variance of `f` (a number read from the cell's totals, `value` at the released
/// totals) by the delta method: Σₛ (∂f/∂Tₛ·σₛ)², each derivative a central difference over
/// one noise standard deviation of slot s (one-sided where `f` is undefined on one side).
fn noise_variance_of(
    plan: &QueryPlan,
    cell: usize,
    inputs: &AggregateInputs,
    totals: &[i128],
    noise: &ReleaseNoise,
    value: f64,
    f: &ReadNumber,
) -> Option<f64> {
    let base = |index: usize| totals[plan.slot(cell, index)];
    let mut noise_variance = 0.0;
    for index in inputs.statistics() {
        let std_dev = noise.slot_std_dev[plan.slot(cell, index)];
        if std_dev <= 0.0 {
            continue;
        }
        let step = std_dev.round().max(1.0);
        let at = |shift: i128| {
            let shifted = |read: usize| {
                if read == index {
                    (base(read) + shift).max(0)
                } else {
                    base(read)
                }
            };
            f(&shifted)
        };
        let h = step as i128;
        let derivative = match (at(h), at(-h)) {
            (Some(up), Some(down)) => (up - down) / (2.0 * step),
            (Some(up), None) => (up - value) / step,
            (None, Some(down)) => (value - down) / step,
            (None, None) => return None,
        };
        noise_variance += (derivative * std_dev).powi(2);
    }
    Some(noise_variance)
}

/// The cell's moments in original units, from its (clamped) totals.
fn moments(
    plan: &QueryPlan,
    arguments: &[String],
    inputs: &AggregateInputs,
    statistic: &dyn Fn(usize) -> i128,
) -> Moments {
    let n = statistic(inputs.count);
    let nf = n as f64;
    let read = |slot: Option<usize>| slot.map(statistic).unwrap_or(0);
    let codec = |position: usize| {
        arguments
            .get(position)
            .and_then(|argument| plan.codecs.get(argument))
            .map(|codec| codec.fixed_point())
    };
    let mean = |position: usize, sum: i128| {
        codec(position).map_or(0.0, |codec| {
            (n * i128::from(codec.encoded_lower()) + sum) as f64 / codec.scale() / nf
        })
    };
    let spread = |squares: i128, sum: i128| (n * squares - sum * sum) as f64;
    let scale = |position: usize| codec(position).map_or(1.0, |codec| codec.scale());
    let pairs = (nf * (nf - 1.0)).max(1.0);
    let (sum_y, sum_x) = (read(inputs.sum_y), read(inputs.sum_x));
    Moments {
        n: nf,
        var_y: inputs.squares_y.map_or(0.0, |_| {
            spread(read(inputs.squares_y), sum_y) / pairs / (scale(0) * scale(0))
        }),
        mean_x: mean(1, sum_x),
        var_x: inputs.squares_x.map_or(0.0, |_| {
            spread(read(inputs.squares_x), sum_x) / pairs / (scale(1) * scale(1))
        }),
        cov: inputs.products.map_or(0.0, |_| {
            (n * read(inputs.products) - sum_y * sum_x) as f64 / pairs / (scale(0) * scale(1))
        }),
    }
}

fn aggregate(
    plan: &QueryPlan,
    function: Aggregate,
    arguments: &[String],
    inputs: &AggregateInputs,
    statistic: &dyn Fn(usize) -> i128,
) -> Cell {
    let n = statistic(inputs.count);
    if function == Aggregate::Count {
        return Cell::Number(n as f64);
    }
    let codec_of = |position: usize| plan.codecs[&arguments[position]].fixed_point();
    let y_codec = codec_of(0);
    let read = |slot: Option<usize>| slot.map(statistic).unwrap_or(0);
    let sum_y = read(inputs.sum_y);
    let number = |x: f64| {
        if x.is_finite() {
            Cell::Number(x)
        } else {
            Cell::Null
        }
    };
    let nf = n as f64;
    // Σy in original units.
    let total_y = (n * i128::from(y_codec.encoded_lower()) + sum_y) as f64 / y_codec.scale();
    match function {
        Aggregate::Count => Cell::Number(nf),
        Aggregate::Sum => Cell::Number(total_y),
        Aggregate::Avg if n == 0 => Cell::Null,
        Aggregate::Avg => number(total_y / nf),
        Aggregate::VarSamp | Aggregate::VarPop | Aggregate::StddevSamp | Aggregate::StddevPop => {
            let sample = matches!(function, Aggregate::VarSamp | Aggregate::StddevSamp);
            let denominator = if sample { n * (n - 1) } else { n * n };
            if denominator <= 0 {
                return Cell::Null;
            }
            let numerator = n * read(inputs.squares_y) - sum_y * sum_y;
            // Exact totals never give a negative numerator; noisy ones can, and a variance is
            // never below 0 (clamping is post-processing).
            let variance =
                (numerator as f64 / denominator as f64 / (y_codec.scale() * y_codec.scale()))
                    .max(0.0);
            match function {
                Aggregate::VarSamp | Aggregate::VarPop => number(variance),
                _ => number(variance.max(0.0).sqrt()),
            }
        }
        Aggregate::CovarSamp
        | Aggregate::CovarPop
        | Aggregate::Corr
        | Aggregate::RegrSlope
        | Aggregate::RegrIntercept => {
            let x_codec = codec_of(1);
            let sum_x = read(inputs.sum_x);
            let cross = n * read(inputs.products) - sum_y * sum_x;
            let spread_y = n * read(inputs.squares_y) - sum_y * sum_y;
            let spread_x = n * read(inputs.squares_x) - sum_x * sum_x;
            let scales = y_codec.scale() * x_codec.scale();
            match function {
                Aggregate::CovarSamp if n >= 2 => {
                    number(cross as f64 / (n * (n - 1)) as f64 / scales)
                }
                Aggregate::CovarPop if n >= 1 => number(cross as f64 / (n * n) as f64 / scales),
                Aggregate::Corr if spread_x > 0 && spread_y > 0 => {
                    // Noise can push the estimate outside [−1, 1]; a correlation never is.
                    number(
                        (cross as f64 / ((spread_x as f64).sqrt() * (spread_y as f64).sqrt()))
                            .clamp(-1.0, 1.0),
                    )
                }
                Aggregate::RegrSlope | Aggregate::RegrIntercept if spread_x > 0 => {
                    let slope = cross as f64 / spread_x as f64 * x_codec.scale() / y_codec.scale();
                    if function == Aggregate::RegrSlope {
                        return number(slope);
                    }
                    let mean_y = total_y / nf;
                    let mean_x = (n * i128::from(x_codec.encoded_lower()) + sum_x) as f64
                        / x_codec.scale()
                        / nf;
                    number(mean_y - slope * mean_x)
                }
                _ => Cell::Null,
            }
        }
    }
}
