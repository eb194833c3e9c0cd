//! Ingest into a vault: FHIR R4 bundles, or CSV / Parquet tables described by a manifest.
//!
//! Problems with the file as a whole (unreadable, an unknown or missing column) fail the
//! ingest with an [`IngestError`] naming the file, row and column. Problems with one record (a
//! value of the wrong type or outside its bounds, a bad bundle) reject that record only; every
//! rejected record is listed in the [`IngestReport`], and nothing is dropped silently.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use polars::prelude::*;

use crate::fhir::{bundle_to_record_with_warnings, parse_public_key, Date, ProvenancePolicy};
use crate::vault::Vault;
use cohortex_query::record::{PatientRecord, Value, CODE_SEPARATOR};
use cohortex_query::schema::{ColumnSpec, ColumnType, Schema};

/// Where a problem is: file, row (1-based data row; 0 for the header) and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: String,
    /// The data row, 1-based (for CSV, the header is row 0); for NDJSON, the line.
    pub row: usize,
    /// The column, where one is to blame.
    pub column: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, row {}", self.file, self.row)?;
        if let Some(column) = &self.column {
            write!(f, ", column `{column}`")?;
        }
        Ok(())
    }
}

/// A record that was not ingested, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Where.
    pub location: Location,
    /// Why.
    pub reason: String,
}

impl fmt::Display for RejectedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// A value left out of an ingested record (the record itself was taken), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedValue {
    /// Where the record is.
    pub location: Location,
    /// Which resource, and why its value was left out.
    pub reason: String,
}

impl fmt::Display for DroppedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Records added to (or replaced in) the vault.
    pub accepted: usize,
    /// Records refused, each with its location and reason.
    pub rejected: Vec<RejectedRecord>,
    /// Values left out of accepted records (FHIR: an unreadable Observation, Condition or
    /// MedicationRequest), each with its location and reason.
    pub dropped: Vec<DroppedValue>,
}

impl IngestReport {
    fn merge(&mut self, other: IngestReport) {
        self.accepted += other.accepted;
        self.rejected.extend(other.rejected);
        self.dropped.extend(other.dropped);
    }
}

/// Whether `path` holds FHIR bundles rather than a table: a directory, a `.json` Bundle or an
/// `.ndjson` file of Bundles.
pub fn is_fhir_source(path: &Path) -> bool {
    path.is_dir()
        || path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| {
                extension.eq_ignore_ascii_case("json") || extension.eq_ignore_ascii_case("ndjson")
            })
}

/// Errors that stop an ingest before any record of the file is taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file cannot be read or parsed at all.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What failed.
        message: String,
    },
    /// The file's header or schema does not match the manifest.
    #[error("{location}: {reason}")]
    Layout {
        /// Where.
        location: Location,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

fn file_error(path: &Path, message: impl ToString) -> IngestError {
    IngestError::File {
        file: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Ingests FHIR bundles: a `.json` file holding one Bundle, or an `.ndjson` file with one
/// Bundle per line. A directory is read file by file, in name order.
pub fn ingest_fhir(
    path: &Path,
    vault: &mut Vault,
    as_of: &Date,
    policy: &ProvenancePolicy,
) -> Result<IngestReport, IngestError> {
    if vault.schema() != &Schema::fhir() {
        return Err(file_error(
            path,
            "FHIR bundles go into a vault with the FHIR schema",
        ));
    }
    let mut report = IngestReport::default();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|error| file_error(path, error))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| {
                matches!(
                    file.extension().and_then(|e| e.to_str()),
                    Some("json" | "ndjson")
                )
            })
            .collect();
        files.sort();
        for file in files {
            report.merge(ingest_fhir(&file, vault, as_of, policy)?);
        }
        return Ok(report);
    }
    let display = path.display().to_string();
    let mut take = |row: usize, text: &str, report: &mut IngestReport| {
        let location = Location {
            file: display.clone(),
            row,
            column: None,
        };
        let outcome = bundle_to_record_with_warnings(text, as_of, policy)
            .map_err(|error| error.to_string())
            .and_then(|(record, warnings)| {
                vault
                    .upsert(record)
                    .map(|()| warnings)
                    .map_err(|error| error.to_string())
            });
        match outcome {
            Ok(warnings) => {
                report.accepted += 1;
                report
                    .dropped
                    .extend(warnings.into_iter().map(|reason| DroppedValue {
                        location: location.clone(),
                        reason,
                    }));
            }
            Err(reason) => report.rejected.push(RejectedRecord {
                location: Location {
                    file: display.clone(),
                    row,
                    column: None,
                },
                reason,
            }),
        }
    };
    let ndjson = path.extension().and_then(|e| e.to_str()) == Some("ndjson");
    if ndjson {
        let reader = BufReader::new(File::open(path).map_err(|error| file_error(path, error))?);
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(|error| file_error(path, error))?;
            if line.trim().is_empty() {
                continue;
            }
            take(index + 1, &line, &mut report);
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|error| file_error(path, error))?;
        take(1, &text, &mut report);
    }
    Ok(report)
}

/// Parses one text cell of a manifest-described table.
fn parse_cell(text: &str, column: &ColumnSpec) -> Result<Value, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    let value = match column.column_type {
        ColumnType::Float => Value::Float(
            text.parse::<f64>()
                .map_err(|_| format!("`{text}` is not a number"))?,
        ),
        ColumnType::Integer => Value::Integer(
            text.parse::<i64>()
                .map_err(|_| format!("`{text}` is not an integer"))?,
        ),
        ColumnType::Bool => Value::Bool(match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("`{text}` is not true/false")),
        }),
        ColumnType::Category => Value::Category(text.to_string()),
        ColumnType::Codes => Value::Codes(
            text.split(CODE_SEPARATOR)
                .map(str::trim)
                .filter(|code| !code.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        ColumnType::Text => return Err("text columns are not features".into()),
    };
    Ok(value)
}

/// Where each manifest column sits in the file.
struct Layout {
    id: usize,
    key: Option<usize>,
    features: Vec<Option<usize>>,
}

fn layout(path: &Path, header: &[String], schema: &Schema) -> Result<Layout, IngestError> {
    let display = path.display().to_string();
    let at_header = |column: &str| Location {
        file: display.clone(),
        row: 0,
        column: Some(column.to_string()),
    };
    let mut seen = BTreeSet::new();
    for name in header {
        let known = name == &schema.id_column
            || schema.key_column.as_ref() == Some(name)
            || schema.column(name).is_some();
        if !known {
            return Err(IngestError::Layout {
                location: at_header(name),
                reason: "unknown column: declare it in the manifest or remove it from the file"
                    .into(),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(IngestError::Layout {
                location: at_header(name),
                reason: "column appears twice".into(),
            });
        }
    }
    let position = |name: &str| header.iter().position(|column| column == name);
    let id = position(&schema.id_column).ok_or_else(|| IngestError::Layout {
        location: at_header(&schema.id_column),
        reason: "the id column declared as id_column is missing".into(),
    })?;
    let key = schema.key_column.as_deref().and_then(position);
    let mut features = Vec::with_capacity(schema.columns.len());
    for spec in &schema.columns {
        let found = position(&spec.name);
        if found.is_none() && !spec.nullable {
            return Err(IngestError::Layout {
                location: at_header(&spec.name),
                reason: "declared column is missing and the manifest says it is not nullable"
                    .into(),
            });
        }
        features.push(found);
    }
    Ok(Layout { id, key, features })
}

/// Turns one row of text cells into a record, or says which column is wrong.
fn row_to_record(
    cells: &[Option<String>],
    layout: &Layout,
    schema: &Schema,
    seen_ids: &mut BTreeSet<String>,
) -> Result<PatientRecord, (Option<String>, String)> {
    let blame = |column: &str, reason: String| (Some(column.to_string()), reason);
    let patient_id = cells[layout.id]
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| blame(&schema.id_column, "patient id is empty".into()))?
        .to_string();
    if patient_id.len() > 128 {
        return Err(blame(
            &schema.id_column,
            "patient id is over 128 bytes".into(),
        ));
    }
    if seen_ids.contains(&patient_id) {
        return Err(blame(
            &schema.id_column,
            format!("patient id `{patient_id}` appears on an earlier row"),
        ));
    }
    let patient_key = match layout.key.and_then(|key| cells[key].as_deref()) {
        Some(text) if !text.trim().is_empty() => {
            let key = parse_public_key(text.trim()).ok_or_else(|| {
                blame(
                    schema.key_column.as_deref().unwrap_or("key"),
                    "not a hex Ed25519 public key".into(),
                )
            })?;
            Some(hex::encode(key.as_bytes()))
        }
        _ => None,
    };
    let mut values = Vec::with_capacity(schema.columns.len());
    for (spec, position) in schema.columns.iter().zip(&layout.features) {
        let text = position
            .and_then(|position| cells[position].as_deref())
            .unwrap_or("");
        let value = parse_cell(text, spec).map_err(|reason| blame(&spec.name, reason))?;
        value
            .check(spec, true)
            .map_err(|reason| blame(&spec.name, reason))?;
        values.push(value);
    }
    seen_ids.insert(patient_id.clone());
    Ok(PatientRecord {
        patient_id,
        patient_key,
        source: None,
        values,
    })
}

/// Ingests a CSV (`.csv`) or Parquet (`.parquet`) file described by the vault's manifest.
pub fn ingest_table(path: &Path, vault: &mut Vault) -> Result<IngestReport, IngestError> {
    let schema = vault.schema().clone();
    let display = path.display().to_string();
    let (header, rows) = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path)?,
        Some("parquet") => read_parquet(path)?,
        _ => {
            return Err(file_error(
                path,
                "unsupported file type; use .csv or .parquet",
            ))
        }
    };
    let layout = layout(path, &header, &schema)?;
    let mut report = IngestReport::default();
    let mut seen_ids = BTreeSet::new();
    for (row, cells) in rows.into_iter().enumerate() {
        let location = |column| Location {
            file: display.clone(),
            row: row + 1,
            column,
        };
        match row_to_record(&cells, &layout, &schema, &mut seen_ids) {
            Ok(record) => match vault.upsert(record) {
                Ok(()) => report.accepted += 1,
                Err(error) => report.rejected.push(RejectedRecord {
                    location: location(None),
                    reason: error.to_string(),
                }),
            },
            Err((column, reason)) => report.rejected.push(RejectedRecord {
                location: location(column),
                reason,
            }),
        }
    }
    Ok(report)
}

type Rows = (Vec<String>, Vec<Vec<Option<String>>>);

fn read_csv(path: &Path) -> Result<Rows, IngestError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|error| file_error(path, error))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|error| file_error(path, error))?
        .iter()
        .map(|name| name.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| IngestError::Layout {
            location: Location {
                file: path.display().to_string(),
                row: index + 1,
                column: None,
            },
            reason: error.to_string(),
        })?;
        rows.push(record.iter().map(|cell| Some(cell.to_string())).collect());
    }
    Ok((header, rows))
}

fn read_parquet(path: &Path) -> Result<Rows, IngestError> {
    let file = File::open(path).map_err(|error| file_error(path, error))?;
    let frame = ParquetReader::new(file)
        .finish()
        .map_err(|error| file_error(path, error))?;
    let header: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    let mut rows = vec![Vec::with_capacity(header.len()); frame.height()];
    for column in frame.columns() {
        let series = column.as_materialized_series();
        for (row, cells) in rows.iter_mut().enumerate() {
            let value = series.get(row).map_err(|error| file_error(path, error))?;
            let text = match value {
                AnyValue::Null => None,
                AnyValue::String(text) => Some(text.to_string()),
                AnyValue::StringOwned(text) => Some(text.to_string()),
                AnyValue::Boolean(flag) => Some(flag.to_string()),
                other => Some(other.to_string()),
            };
            cells.push(text);
        }
    }
    Ok((header, rows))
}
