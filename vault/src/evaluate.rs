//! Local evaluation of a plan over a vault, with polars' lazy engine.
//!
//! 1. Keep the patients whose current consent covers the purpose; count them all
//!    (`participants`), matching or not.
//! 2. Apply the WHERE clause (a missing value makes a comparison unknown: no match).
//! 3. Clip each aggregated column to its declared bounds and encode it in offset fixed point:
//!    x̃ = round(clip(x)·10^d) − round(L·10^d), an integer in [0, span].
//! 4. Drop patients whose group-key value is missing, map group keys to value indices.
//! 5. Sum each statistic per cell.
//!
//! The result is the node's plaintext statistics vector; it never leaves the node except
//! encrypted (see [`cohortex_query::contribution`]).

use polars::prelude::*;

use crate::vault::{ConsentBook, Vault};
pub use cohortex_query::contribution::Statistics;
use cohortex_query::logistic::{patient_terms, NewtonInputs};
use cohortex_query::model::{ModelInputs, ModelSpec};
use cohortex_query::plan::{Codec, Comparison, GroupKey, Literal, Predicate, QueryPlan, Statistic};
use cohortex_query::record::Value;
use cohortex_query::schema::ColumnType;

/// Errors from evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The plan was compiled for another table or schema.
    #[error("plan does not fit this vault: {0}")]
    Mismatch(String),
    /// polars failed.
    #[error("evaluation failed: {0}")]
    Engine(#[from] PolarsError),
    /// A sum overflowed.
    #[error("statistic {slot} overflowed")]
    Overflow {
        /// The vector slot.
        slot: usize,
    },
}

const CONSENTED: &str = "__consented";

fn code_column(index: usize) -> String {
    format!("__code_{index}")
}

fn encoded_column(column: &str) -> String {
    format!("__enc_{column}")
}

fn group_column(index: usize) -> String {
    format!("__group_{index}")
}

fn statistic_column(index: usize) -> String {
    format!("__stat_{index}")
}

/// Evaluates `plan` over the patients of `vault` whose consent in `consents` covers
/// `purpose`.
pub fn evaluate(
    plan: &QueryPlan,
    vault: &Vault,
    consents: &ConsentBook,
    purpose: &str,
) -> Result<Statistics, EvaluateError> {
    let schema = vault.schema();
    if plan.table != schema.table {
        return Err(EvaluateError::Mismatch(format!(
            "plan reads table `{}`, vault holds `{}`",
            plan.table, schema.table
        )));
    }
    let mut frame = vault.frame()?;

    // Consent and code-prefix flags are computed next to the rows they describe.
    let consented: Vec<bool> = vault
        .records()
        .iter()
        .map(|record| consents.covers(&record.patient_id, purpose))
        .collect();
    frame.with_column(Column::new(CONSENTED.into(), consented))?;
    let code_matches = plan
        .filter
        .as_ref()
        .map(Predicate::code_matches)
        .unwrap_or_default();
    for (index, (column, prefix)) in code_matches.iter().enumerate() {
        let position = schema
            .columns
            .iter()
            .position(|spec| &spec.name == column && spec.column_type == ColumnType::Codes)
            .ok_or_else(|| EvaluateError::Mismatch(format!("no codes column `{column}`")))?;
        let flags: Vec<bool> = vault
            .records()
            .iter()
            .map(|record| match &record.values[position] {
                Value::Codes(codes) => codes.iter().any(|code| code.starts_with(prefix.as_str())),
                _ => false,
            })
            .collect();
        frame.with_column(Column::new(code_column(index).into(), flags))?;
    }
    for column in plan.codecs.keys() {
        let real = plan
            .dummies
            .get(column)
            .map_or(column.as_str(), |dummy| dummy.column.as_str());
        if schema.column(real).is_none() {
            return Err(EvaluateError::Mismatch(format!("no column `{real}`")));
        }
    }

    let participants_frame = frame.clone().lazy().filter(col(CONSENTED)).collect()?;
    let participants = participants_frame.height() as u64;

    let mut rows = participants_frame.lazy();
    if let Some(filter) = &plan.filter {
        rows = rows.filter(predicate_expr(filter, &code_matches)?);
    }
    // Offset fixed-point encodings of the aggregated columns, after clipping.
    let measured = || {
        plan.codecs
            .iter()
            .filter(|(column, _)| !plan.dummies.contains_key(*column))
    };
    let clip_counts: Vec<Expr> = measured()
        .map(|(column, codec)| {
            col(column.as_str())
                .cast(DataType::Float64)
                .lt(lit(codec.lower))
                .or(col(column.as_str())
                    .cast(DataType::Float64)
                    .gt(lit(codec.upper)))
                .cast(DataType::UInt64)
                .sum()
                .alias(format!("__clipped_{column}"))
        })
        .collect();
    let mut encodings: Vec<Expr> = measured()
        .map(|(column, codec)| encode_expr(column, codec).alias(encoded_column(column)))
        .collect();
    // A model's dummy column: 1 for its category, 0 for the column's others (null stays null).
    encodings.extend(plan.dummies.iter().map(|(name, dummy)| {
        when(col(dummy.column.as_str()).is_null())
            .then(lit(NULL).cast(DataType::Int64))
            .otherwise(
                when(col(dummy.column.as_str()).eq(lit(dummy.category.as_str())))
                    .then(lit(1i64))
                    .otherwise(lit(0i64)),
            )
            .alias(encoded_column(name))
    }));
    if !encodings.is_empty() {
        rows = rows.with_columns(encodings);
    }
    let mut group_keys = Vec::with_capacity(plan.groups.len());
    for (index, group) in plan.groups.iter().enumerate() {
        rows = rows.filter(col(group.column()).is_not_null());
        group_keys.push(group_index_expr(group).alias(group_column(index)));
    }
    if !group_keys.is_empty() {
        rows = rows.with_columns(group_keys);
    }
    let sums: Vec<Expr> = plan
        .statistics
        .iter()
        .enumerate()
        .map(|(index, statistic)| statistic_expr(statistic).alias(statistic_column(index)))
        .collect();

    let clipped_frame = if clip_counts.is_empty() {
        None
    } else {
        Some(rows.clone().select(clip_counts).collect()?)
    };
    // A logistic step's score and information need e^(−z) per patient: summed here, in Rust,
    // over the same rows (the polars sums of those statistics are placeholders).
    let newton_rows = rows.clone();
    let aggregated = if plan.groups.is_empty() {
        rows.select(sums).collect()?
    } else {
        let keys: Vec<Expr> = (0..plan.groups.len())
            .map(|index| col(group_column(index)))
            .collect();
        rows.group_by(keys).agg(sums).collect()?
    };

    let mut values = vec![0u64; plan.vector_len()];
    values[0] = participants;
    for row in 0..aggregated.height() {
        let mut keys = Vec::with_capacity(plan.groups.len());
        for index in 0..plan.groups.len() {
            let key = aggregated
                .column(&group_column(index))?
                .get(row)?
                .extract::<i64>()
                .and_then(|key| usize::try_from(key).ok())
                .ok_or_else(|| EvaluateError::Mismatch("group key out of range".into()))?;
            keys.push(key);
        }
        let cell = plan.cell_of(&keys);
        for index in 0..plan.statistics.len() {
            let slot = plan.slot(cell, index);
            let sum = aggregated
                .column(&statistic_column(index))?
                .get(row)?
                .extract::<i64>()
                .unwrap_or(0);
            values[slot] = u64::try_from(sum).map_err(|_| EvaluateError::Overflow { slot })?;
        }
    }
    if let Some(model) = &plan.model {
        if let ModelInputs::Newton(newton) = &model.inputs {
            add_newton_terms(plan, model, newton, newton_rows, &mut values)?;
        }
    }
    let mut clipped = Vec::new();
    if let Some(clipped_frame) = clipped_frame {
        for (column, _) in measured() {
            let count = clipped_frame
                .column(&format!("__clipped_{column}"))?
                .get(0)?
                .extract::<u64>()
                .unwrap_or(0);
            clipped.push((column.clone(), count));
        }
    }
    Ok(Statistics { values, clipped })
}

/// x̃ = round(clip(x)·10^d) − round(L·10^d), as Int64 (null stays null).
fn encode_expr(column: &str, codec: &Codec) -> Expr {
    let fixed = codec.fixed_point();
    (col(column)
        .cast(DataType::Float64)
        .clip(lit(codec.lower), lit(codec.upper))
        * lit(fixed.scale()))
    .round(0, RoundMode::HalfAwayFromZero)
    .cast(DataType::Int64)
        - lit(fixed.encoded_lower())
}

/// The index of a patient's group value: the category's position, or the bin of the clipped
/// value (the last bin is closed).
fn group_index_expr(group: &GroupKey) -> Expr {
    match group {
        GroupKey::Category { column, categories } => {
            let mut expr = lit(NULL).cast(DataType::Int64);
            for (index, category) in categories.iter().enumerate().rev() {
                expr = when(col(column.as_str()).eq(lit(category.as_str())))
                    .then(lit(index as i64))
                    .otherwise(expr);
            }
            expr
        }
        GroupKey::Bin { column, edges } => {
            let last = edges.len() - 2;
            let value = col(column.as_str())
                .cast(DataType::Float64)
                .clip(lit(edges[0]), lit(edges[edges.len() - 1]));
            let mut expr = lit(last as i64);
            for index in (0..last).rev() {
                expr = when(value.clone().lt(lit(edges[index + 1])))
                    .then(lit(index as i64))
                    .otherwise(expr);
            }
            expr
        }
    }
}

fn domain_mask(domain: &[String]) -> Expr {
    domain
        .iter()
        .map(|column| col(column.as_str()).is_not_null())
        .reduce(|all, next| all.and(next))
        // Every row left is a consenting patient, so this is a column of `true`s (a literal
        // would be a scalar, and its sum 1).
        .unwrap_or(col(CONSENTED))
}

/// The score and information sums of a logistic model's Newton step
/// (`cohortex_query::logistic`), per cell, over `rows` (filtered, encoded, grouped).
fn add_newton_terms(
    plan: &QueryPlan,
    model: &ModelSpec,
    newton: &NewtonInputs,
    rows: LazyFrame,
    values: &mut [u64],
) -> Result<(), EvaluateError> {
    let domain = plan.statistics[newton.count].domain();
    let mut selected = vec![col(encoded_column(&model.outcome))];
    selected.extend(
        model
            .covariates
            .iter()
            .map(|column| col(encoded_column(column))),
    );
    selected.extend((0..plan.groups.len()).map(|index| col(group_column(index))));
    let frame = rows
        .filter(domain_mask(domain))
        .select(selected)
        .collect()?;
    let outcome = frame.column(&encoded_column(&model.outcome))?.i64()?;
    let covariates = model
        .covariates
        .iter()
        .map(|column| frame.column(&encoded_column(column))?.i64())
        .collect::<Result<Vec<_>, _>>()?;
    let groups = (0..plan.groups.len())
        .map(|index| frame.column(&group_column(index))?.i64())
        .collect::<Result<Vec<_>, _>>()?;
    let codecs: Vec<Codec> = model
        .covariates
        .iter()
        .map(|column| {
            plan.codecs
                .get(column)
                .copied()
                .ok_or_else(|| EvaluateError::Mismatch(format!("no codec for `{column}`")))
        })
        .collect::<Result<_, _>>()?;
    let terms = model.covariates.len() + 1;
    let mut score = vec![vec![0i128; terms]; plan.cells()];
    let mut information = vec![vec![vec![0i128; terms]; terms]; plan.cells()];
    let mut encoded = vec![0i64; terms - 1];
    'rows: for row in 0..frame.height() {
        let mut keys = Vec::with_capacity(groups.len());
        for group in &groups {
            let Some(key) = group.get(row).and_then(|key| usize::try_from(key).ok()) else {
                continue 'rows;
            };
            keys.push(key);
        }
        let Some(y) = outcome.get(row) else { continue };
        for (slot, column) in encoded.iter_mut().zip(&covariates) {
            let Some(x) = column.get(row) else {
                continue 'rows;
            };
            *slot = x;
        }
        let cell = plan.cell_of(&keys);
        let (r, w) = patient_terms(&newton.at, &codecs, y as f64, &encoded);
        let a: Vec<i128> = std::iter::once(1)
            .chain(encoded.iter().map(|&x| i128::from(x)))
            .collect();
        for (i, &left) in a.iter().enumerate() {
            score[cell][i] += i128::from(r) * left;
            for (j, &right) in a.iter().enumerate().skip(i) {
                information[cell][i][j] += i128::from(w) * left * right;
            }
        }
    }
    let mut write = |cell: usize, statistic: usize, total: i128| {
        let slot = plan.slot(cell, statistic);
        values[slot] = u64::try_from(total).map_err(|_| EvaluateError::Overflow { slot })?;
        Ok::<(), EvaluateError>(())
    };
    for (cell, (score, information)) in score.iter().zip(&information).enumerate() {
        for (i, (&statistic, &total)) in newton.score.iter().zip(score).enumerate() {
            write(cell, statistic, total)?;
            for (&statistic, &total) in newton.information[i].iter().zip(&information[i]).skip(i) {
                write(cell, statistic, total)?;
            }
        }
    }
    Ok(())
}

fn statistic_expr(statistic: &Statistic) -> Expr {
    let mask = domain_mask(statistic.domain());
    let encoded = |column: &str| col(encoded_column(column));
    let term = match statistic {
        Statistic::Count { .. } => return mask.cast(DataType::Int64).sum(),
        Statistic::Sum { column, .. } => encoded(column),
        Statistic::SumSquares { column, .. } => encoded(column) * encoded(column),
        Statistic::SumProducts { left, right, .. } => encoded(left) * encoded(right),
        // Summed in Rust (`add_newton_terms`): they need e^(−z) per patient.
        Statistic::Score { .. } | Statistic::Information { .. } => lit(0i64),
    };
    when(mask).then(term).otherwise(lit(0i64)).sum()
}

fn compare(left: Expr, op: Comparison, right: Expr) -> Expr {
    match op {
        Comparison::Eq => left.eq(right),
        Comparison::NotEq => left.neq(right),
        Comparison::Lt => left.lt(right),
        Comparison::LtEq => left.lt_eq(right),
        Comparison::Gt => left.gt(right),
        Comparison::GtEq => left.gt_eq(right),
    }
}

fn predicate_expr(
    predicate: &Predicate,
    code_matches: &[(String, String)],
) -> Result<Expr, EvaluateError> {
    Ok(match predicate {
        Predicate::And(left, right) => {
            predicate_expr(left, code_matches)?.and(predicate_expr(right, code_matches)?)
        }
        Predicate::Or(left, right) => {
            predicate_expr(left, code_matches)?.or(predicate_expr(right, code_matches)?)
        }
        Predicate::Not(inner) => predicate_expr(inner, code_matches)?.not(),
        Predicate::Compare { column, op, value } => {
            let column = col(column.as_str());
            match value {
                Literal::Number(x) => compare(column.cast(DataType::Float64), *op, lit(*x)),
                Literal::Text(text) => compare(column, *op, lit(text.as_str())),
                Literal::Bool(flag) => compare(column, *op, lit(*flag)),
            }
        }
        Predicate::CompareColumns { left, op, right } => compare(
            col(left.as_str()).cast(DataType::Float64),
            *op,
            col(right.as_str()).cast(DataType::Float64),
        ),
        Predicate::IsNull { column, negated } => {
            if *negated {
                col(column.as_str()).is_not_null()
            } else {
                col(column.as_str()).is_null()
            }
        }
        Predicate::Flag { column } => col(column.as_str()),
        Predicate::HasCode { column, prefix } => {
            let index = code_matches
                .iter()
                .position(|(known_column, known_prefix)| {
                    known_column == column && known_prefix == prefix
                })
                .ok_or_else(|| EvaluateError::Mismatch("code match not prepared".into()))?;
            col(code_column(index))
        }
    })
}
