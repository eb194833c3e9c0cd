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

use serde::{Deserialize, Serialize};

use crate::plan::{Aggregate, AggregateInputs, Output, QueryPlan};

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
    /// Patients whose consent covered the purpose, across all nodes.
    pub participants: u64,
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

/// Turns summed statistics into the answer.
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
    Ok(combine_cells(plan, totals, &vec![false; plan.cells()]))
}

/// Combines a differentially private release: `totals[s]` is `None` for a slot that was not
/// released, and `suppressed[c]` marks the cells withheld for the minimum cohort. Noise can
/// make a total negative; totals are clamped at 0 first (post-processing, which costs no
/// privacy), and an aggregate the noisy totals leave undefined is NULL.
pub fn combine_release(
    plan: &QueryPlan,
    totals: &[Option<i128>],
    suppressed: &[bool],
) -> Result<QueryAnswer, CombineError> {
    if totals.len() != plan.vector_len() {
        return Err(CombineError::Length {
            got: totals.len(),
            expected: plan.vector_len(),
        });
    }
    if suppressed.len() != plan.cells() {
        return Err(CombineError::Length {
            got: suppressed.len(),
            expected: plan.cells(),
        });
    }
    let clamped: Vec<i128> = totals
        .iter()
        .map(|total| total.unwrap_or(0).max(0))
        .collect();
    Ok(combine_cells(plan, &clamped, suppressed))
}

fn combine_cells(plan: &QueryPlan, totals: &[i128], suppressed: &[bool]) -> QueryAnswer {
    let columns = plan
        .outputs
        .iter()
        .map(|output| output.name().to_string())
        .collect();
    let mut rows = Vec::with_capacity(plan.cells());
    for cell in 0..plan.cells() {
        let keys = plan.cell_keys(cell);
        let statistic = |index: usize| totals[plan.slot(cell, index)];
        let row = plan
            .outputs
            .iter()
            .map(|output| match output {
                Output::Group { key, .. } => Cell::Text(plan.groups[*key].label(keys[*key])),
                Output::Aggregate { .. } if suppressed[cell] => Cell::Suppressed,
                Output::Aggregate {
                    function,
                    arguments,
                    inputs,
                    ..
                } => aggregate(plan, *function, arguments, inputs, &statistic),
            })
            .collect();
        rows.push(row);
    }
    QueryAnswer {
        columns,
        rows,
        participants: u64::try_from(totals[0]).unwrap_or(u64::MAX),
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
