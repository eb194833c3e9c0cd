//! A release as an Arrow IPC stream (issue 14): one record batch whose columns are the query's
//! output columns, typed, with their units and aggregates in the field metadata and the
//! release's provenance (query, purpose, ε, receipt) in the schema metadata. pandas, polars,
//! pyarrow and R's arrow read it as it is.
//!
//! Types: a GROUP BY label is `Utf8`; an aggregate is `Float64`, followed by its error bar as
//! four `Float64` columns: `<name>_se` (sampling and noise together), `<name>_noise_se` (the
//! DP noise's part), `<name>_ci_low` and `<name>_ci_high` (the 95 % interval), with
//! `cohortex.kind` = `se`, `noise_se`, `ci_low` or `ci_high`, `cohortex.of` = the value's
//! column and the value's unit. A cell that is undefined or withheld (below the minimum
//! cohort) is null; the Boolean column `_suppressed` says which rows had a value withheld, so
//! that a null from suppression is not read as "no data".
//!
//! Field metadata (`cohortex.*` keys): `kind` (`group` or the aggregate, e.g. `avg`),
//! `arguments` (the columns an aggregate reads, comma-separated), `unit` (UCUM, derived from
//! the manifest's units: a variance of `mm[Hg]` is `(mm[Hg])2`, a count is `{patients}`;
//! absent when a column declares none).
//!
//! The crates are `arrow-array`, `arrow-schema` and `arrow-ipc` of the Arrow project, not the
//! `arrow` umbrella crate, which would also build every compute kernel (see docs/services.md).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema as ArrowSchema};
use cohortex_query::plan::{Aggregate, Output};
use cohortex_query::uncertainty::ERROR_COLUMNS;
use cohortex_query::{Cell, QueryAnswer, QueryPlan, Schema};

/// The name of the Boolean column marking withheld rows.
pub const SUPPRESSED_COLUMN: &str = "_suppressed";

/// Where a release came from, for the schema metadata.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The SQL as the buyer wrote it.
    pub query: String,
    /// The purpose it was released for.
    pub purpose: String,
    /// ε spent on each listing.
    pub epsilon: f64,
    /// The receipt's id (hex), when recorded.
    pub receipt: Option<String>,
    /// Whether the receipt's inclusion proof verified against the ledger key.
    pub receipt_verified: bool,
    /// The listings the release covers.
    pub listings: Vec<String>,
}

fn aggregate_name(function: Aggregate) -> &'static str {
    match function {
        Aggregate::Count => "count",
        Aggregate::Sum => "sum",
        Aggregate::Avg => "avg",
        Aggregate::VarSamp => "var_samp",
        Aggregate::VarPop => "var_pop",
        Aggregate::StddevSamp => "stddev_samp",
        Aggregate::StddevPop => "stddev_pop",
        Aggregate::CovarSamp => "covar_samp",
        Aggregate::CovarPop => "covar_pop",
        Aggregate::Corr => "corr",
        Aggregate::RegrSlope => "regr_slope",
        Aggregate::RegrIntercept => "regr_intercept",
    }
}

/// The UCUM unit of an aggregate of columns with units `units` (first = y), if every unit it
/// needs is declared.
fn aggregate_unit(function: Aggregate, units: &[Option<&str>]) -> Option<String> {
    let first = units.first().copied().flatten();
    let second = units.get(1).copied().flatten();
    match function {
        Aggregate::Count => Some("{patients}".into()),
        Aggregate::Corr => Some("1".into()),
        Aggregate::Sum
        | Aggregate::Avg
        | Aggregate::StddevSamp
        | Aggregate::StddevPop
        | Aggregate::RegrIntercept => first.map(str::to_string),
        Aggregate::VarSamp | Aggregate::VarPop => first.map(|unit| format!("({unit})2")),
        Aggregate::CovarSamp | Aggregate::CovarPop => Some(format!("({}).({})", first?, second?)),
        Aggregate::RegrSlope => Some(format!("({})/({})", first?, second?)),
    }
}

/// The field of output column `index`, and whether it holds labels (`Utf8`).
fn field(plan: &QueryPlan, schema: &Schema, index: usize, name: &str) -> (Field, bool) {
    let mut metadata = HashMap::new();
    let labels = match plan.outputs.get(index) {
        Some(Output::Group { key, .. }) => {
            metadata.insert("cohortex.kind".to_string(), "group".to_string());
            if let Some(unit) = plan
                .groups
                .get(*key)
                .and_then(|group| schema.column(group.column()))
                .and_then(|column| column.unit.clone())
            {
                metadata.insert("cohortex.unit".to_string(), unit);
            }
            true
        }
        Some(Output::Aggregate {
            function,
            arguments,
            ..
        }) => {
            metadata.insert(
                "cohortex.kind".to_string(),
                aggregate_name(*function).to_string(),
            );
            if !arguments.is_empty() {
                metadata.insert("cohortex.arguments".to_string(), arguments.join(","));
            }
            let units: Vec<Option<&str>> = arguments
                .iter()
                .map(|argument| {
                    schema
                        .column(argument)
                        .and_then(|column| column.unit.as_deref())
                })
                .collect();
            if let Some(unit) = aggregate_unit(*function, &units) {
                metadata.insert("cohortex.unit".to_string(), unit);
            }
            false
        }
        None => false,
    };
    let data_type = if labels {
        DataType::Utf8
    } else {
        DataType::Float64
    };
    (
        Field::new(name, data_type, true).with_metadata(metadata),
        labels,
    )
}

/// A column of a model's coefficient table or of a survival curve: `term` is `Utf8`, the rest
/// `Float64`; the kind is the column's name, and the model's family and outcome, or the
/// curve's time and event columns, travel with every column.
fn extra_field(plan: &QueryPlan, name: &str) -> (Field, bool) {
    let labels = name == "term";
    let mut metadata = HashMap::from([("cohortex.kind".to_string(), name.to_string())]);
    if let Some(model) = &plan.model {
        metadata.insert(
            "cohortex.model".to_string(),
            format!("{:?}", model.family).to_lowercase(),
        );
        metadata.insert("cohortex.outcome".to_string(), model.outcome.clone());
    }
    if let Some(survival) = &plan.survival {
        metadata.insert("cohortex.time".to_string(), survival.time.clone());
        metadata.insert("cohortex.event".to_string(), survival.event.clone());
    }
    let data_type = if labels {
        DataType::Utf8
    } else {
        DataType::Float64
    };
    (
        Field::new(name, data_type, true).with_metadata(metadata),
        labels,
    )
}

/// The release as one record batch (see the module documentation).
pub fn to_record_batch(
    answer: &QueryAnswer,
    plan: &QueryPlan,
    schema: &Schema,
    provenance: &Provenance,
) -> Result<RecordBatch, ArrowError> {
    let extra_columns = if let Some(model) = &plan.model {
        cohortex_query::model::model_columns(model.family).len()
    } else if plan.survival.is_some() {
        cohortex_query::survival::SURVIVAL_COLUMNS.len()
    } else {
        0
    };
    if answer.columns.len() != plan.outputs.len() + extra_columns {
        return Err(ArrowError::SchemaError(format!(
            "the release has {} columns, its plan {}",
            answer.columns.len(),
            plan.outputs.len() + extra_columns
        )));
    }
    let mut fields = Vec::with_capacity(answer.columns.len() + 1);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(answer.columns.len() + 1);
    for (index, name) in answer.columns.iter().enumerate() {
        let (field, labels) = if index >= plan.outputs.len() {
            extra_field(plan, name)
        } else {
            field(plan, schema, index, name)
        };
        let cells = answer.rows.iter().map(|row| row.get(index));
        let array: ArrayRef = if labels {
            Arc::new(StringArray::from_iter(cells.map(|cell| match cell {
                Some(Cell::Text(text)) => Some(text.clone()),
                Some(Cell::Number(number)) => Some(number.to_string()),
                _ => None,
            })))
        } else {
            Arc::new(Float64Array::from_iter(cells.map(|cell| match cell {
                Some(Cell::Number(number)) => Some(*number),
                _ => None,
            })))
        };
        let unit = field.metadata().get("cohortex.unit").cloned();
        fields.push(field);
        arrays.push(array);
        if answer.has_error_bars(index) {
            for (part, suffix) in ERROR_COLUMNS.iter().enumerate() {
                let mut metadata = HashMap::from([
                    (
                        "cohortex.kind".to_string(),
                        suffix.trim_start_matches('_').to_string(),
                    ),
                    ("cohortex.of".to_string(), name.clone()),
                ]);
                if part >= 2 {
                    metadata.insert("cohortex.level".to_string(), "0.95".to_string());
                }
                if let Some(unit) = &unit {
                    metadata.insert("cohortex.unit".to_string(), unit.clone());
                }
                fields.push(
                    Field::new(format!("{name}{suffix}"), DataType::Float64, true)
                        .with_metadata(metadata),
                );
                arrays.push(Arc::new(Float64Array::from_iter(
                    (0..answer.rows.len())
                        .map(|row| answer.error(row, index).map(|bar| bar.parts()[part])),
                )));
            }
        }
    }
    fields.push(Field::new(SUPPRESSED_COLUMN, DataType::Boolean, false));
    arrays.push(Arc::new(BooleanArray::from_iter(answer.rows.iter().map(
        |row| Some(row.iter().any(|cell| matches!(cell, Cell::Suppressed))),
    ))));
    let mut metadata = HashMap::from([
        ("cohortex.query".to_string(), provenance.query.clone()),
        ("cohortex.purpose".to_string(), provenance.purpose.clone()),
        (
            "cohortex.epsilon".to_string(),
            provenance.epsilon.to_string(),
        ),
        (
            "cohortex.participants".to_string(),
            answer.participants.to_string(),
        ),
        (
            "cohortex.receipt_verified".to_string(),
            provenance.receipt_verified.to_string(),
        ),
        (
            "cohortex.listings".to_string(),
            provenance.listings.join(","),
        ),
    ]);
    if let Some(receipt) = &provenance.receipt {
        metadata.insert("cohortex.receipt".to_string(), receipt.clone());
    }
    let arrow_schema = Arc::new(ArrowSchema::new(fields).with_metadata(metadata));
    RecordBatch::try_new(arrow_schema, arrays)
}

/// The release as the bytes of an Arrow IPC stream (schema, one batch, end of stream).
pub fn to_ipc_stream(
    answer: &QueryAnswer,
    plan: &QueryPlan,
    schema: &Schema,
    provenance: &Provenance,
) -> Result<Vec<u8>, ArrowError> {
    let batch = to_record_batch(answer, plan, schema, provenance)?;
    let mut bytes = Vec::new();
    {
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    Ok(bytes)
}
