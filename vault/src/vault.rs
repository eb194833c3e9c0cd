//! A node's vault: the patients it hosts, their feature rows, and their current consents.
//!
//! The vault is the only place patient-level data lives. It is persisted as a directory:
//!
//! ```text
//! manifest.toml      the schema (see `schema`)
//! features.parquet   one row per patient: patient_id, patient_key, source, then the features
//! ```
//!
//! Codes columns are stored as `;`-joined strings. Consents are not stored here: the vault is
//! told each patient's current consents by its caller (the node service asks the ledger).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use polars::prelude::*;

use cohortex_query::record::{PatientRecord, Value, CODE_SEPARATOR};
use cohortex_query::schema::{ColumnType, Schema, SchemaError};

/// File name of the feature table inside a vault directory.
pub const FEATURES_FILE: &str = "features.parquet";
/// File name of the manifest inside a vault directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Errors from a vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A record does not fit the schema.
    #[error("patient {patient_id}, column `{column}`: {reason}")]
    Record {
        /// The patient.
        patient_id: String,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the vault directory failed.
    #[error("vault {path}: {message}")]
    Storage {
        /// The directory or file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The stored manifest is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The current consents of a vault's patients: patient id → purposes they consent to now.
///
/// Supplied by the caller at query time (the ledger is the source of truth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentBook {
    purposes: HashMap<String, BTreeSet<String>>,
}

impl ConsentBook {
    /// An empty book: nobody consents to anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `patient_id` currently consents to `purpose`.
    pub fn grant(&mut self, patient_id: &str, purpose: &str) {
        self.purposes
            .entry(patient_id.to_string())
            .or_default()
            .insert(purpose.to_string());
    }

    /// Records that `patient_id` has revoked `purpose`.
    pub fn revoke(&mut self, patient_id: &str, purpose: &str) {
        if let Some(purposes) = self.purposes.get_mut(patient_id) {
            purposes.remove(purpose);
        }
    }

    /// Whether `patient_id` currently consents to `purpose`.
    pub fn covers(&self, patient_id: &str, purpose: &str) -> bool {
        self.purposes
            .get(patient_id)
            .is_some_and(|purposes| purposes.contains(purpose))
    }

    /// A book in which every patient of `vault` consents to `purpose`.
    pub fn everyone(vault: &Vault, purpose: &str) -> Self {
        let mut book = Self::new();
        for record in vault.records() {
            book.grant(&record.patient_id, purpose);
        }
        book
    }
}

/// A node's vault.
#[derive(Debug, Clone)]
pub struct Vault {
    schema: Schema,
    records: Vec<PatientRecord>,
    index: BTreeMap<String, usize>,
    /// Patient key (hex) → the patient id whose row holds it: one person, one row.
    keys: BTreeMap<String, String>,
    /// The feature table, built on first use after a change (a clone shares its buffers).
    frame: OnceLock<DataFrame>,
}

impl Vault {
    /// An empty vault with this schema.
    pub fn new(schema: Schema) -> Self {
        Self {
            schema,
            records: Vec::new(),
            index: BTreeMap::new(),
            keys: BTreeMap::new(),
            frame: OnceLock::new(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The patients' rows, in insertion order.
    pub fn records(&self) -> &[PatientRecord] {
        &self.records
    }

    /// The row of one patient.
    pub fn record(&self, patient_id: &str) -> Option<&PatientRecord> {
        self.index.get(patient_id).map(|&row| &self.records[row])
    }

    /// Number of patients.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the vault holds no patient.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The public bound on the number of patients this vault answers for: the next power of
    /// two at or above its size (at least 1024). Range proofs bound the node's statistics
    /// with it, and it reveals the vault's size only to within a factor of two.
    pub fn capacity(&self) -> u64 {
        (self.records.len() as u64).next_power_of_two().max(1024)
    }

    /// Adds a patient's row, or replaces the patient's previous row. The row is checked
    /// against the schema's types (bounds are checked by manifest ingest, and clipped by
    /// queries), and its patient key may be no other row's: the ledger's consents, budgets and
    /// payouts are per person, so one person's key on two rows would count them twice.
    pub fn upsert(&mut self, record: PatientRecord) -> Result<(), VaultError> {
        if let Some(key) = &record.patient_key {
            if let Some(holder) = self
                .keys
                .get(key)
                .filter(|holder| **holder != record.patient_id)
            {
                return Err(VaultError::Record {
                    patient_id: record.patient_id.clone(),
                    column: "patient_key".into(),
                    reason: format!(
                        "patient key {key} is already on the row of patient `{holder}`: one \
                         person, one row"
                    ),
                });
            }
        }
        if record.values.len() != self.schema.columns.len() {
            return Err(VaultError::Record {
                patient_id: record.patient_id.clone(),
                column: "*".into(),
                reason: format!(
                    "{} values for {} columns",
                    record.values.len(),
                    self.schema.columns.len()
                ),
            });
        }
        for (value, column) in record.values.iter().zip(&self.schema.columns) {
            value
                .check(column, false)
                .map_err(|reason| VaultError::Record {
                    patient_id: record.patient_id.clone(),
                    column: column.name.clone(),
                    reason,
                })?;
        }
        self.frame = OnceLock::new();
        if let Some(&row) = self.index.get(&record.patient_id) {
            if let Some(old_key) = &self.records[row].patient_key {
                self.keys.remove(old_key);
            }
        }
        if let Some(key) = &record.patient_key {
            self.keys.insert(key.clone(), record.patient_id.clone());
        }
        match self.index.get(&record.patient_id) {
            Some(&row) => self.records[row] = record,
            None => {
                self.index
                    .insert(record.patient_id.clone(), self.records.len());
                self.records.push(record);
            }
        }
        Ok(())
    }

    /// The feature table as a polars frame: `patient_id`, then one column per feature
    /// (codes columns as `;`-joined strings). Built once per change of the vault.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        if let Some(frame) = self.frame.get() {
            return Ok(frame.clone());
        }
        let frame = self.build_frame()?;
        Ok(self.frame.get_or_init(|| frame).clone())
    }

    fn build_frame(&self) -> PolarsResult<DataFrame> {
        let mut columns = Vec::with_capacity(self.schema.columns.len() + 3);
        columns.push(Column::new(
            "patient_id".into(),
            self.records
                .iter()
                .map(|record| record.patient_id.as_str())
                .collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "patient_key".into(),
            self.records
                .iter()
                .map(|record| record.patient_key.as_deref())
                .collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "source".into(),
            self.records
                .iter()
                .map(|record| record.source.as_deref())
                .collect::<Vec<_>>(),
        ));
        for (position, spec) in self.schema.columns.iter().enumerate() {
            let name = PlSmallStr::from(spec.name.as_str());
            let cells = self.records.iter().map(|record| &record.values[position]);
            let column = match spec.column_type {
                ColumnType::Float => {
                    Column::new(name, cells.map(Value::as_f64).collect::<Vec<Option<f64>>>())
                }
                ColumnType::Integer => Column::new(
                    name,
                    cells
                        .map(|value| match value {
                            Value::Integer(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<Vec<Option<i64>>>(),
                ),
                ColumnType::Bool => Column::new(
                    name,
                    cells
                        .map(|value| match value {
                            Value::Bool(flag) => Some(*flag),
                            _ => None,
                        })
                        .collect::<Vec<Option<bool>>>(),
                ),
                ColumnType::Category => Column::new(
                    name,
                    cells
                        .map(|value| match value {
                            Value::Category(category) => Some(category.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<Option<&str>>>(),
                ),
                ColumnType::Codes | ColumnType::Text => Column::new(
                    name,
                    cells
                        .map(|value| match value {
                            Value::Codes(codes) => Some(codes.join(&CODE_SEPARATOR.to_string())),
                            _ => None,
                        })
                        .collect::<Vec<Option<String>>>(),
                ),
            };
            columns.push(column);
        }
        DataFrame::new(self.records.len(), columns)
    }

    /// Writes the vault to `dir` (created if missing), atomically per file.
    pub fn save(&self, dir: &Path) -> Result<(), VaultError> {
        let storage = |path: &Path, message: String| VaultError::Storage {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|error| storage(dir, error.to_string()))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let staged_manifest = dir.join(format!("{MANIFEST_FILE}.tmp"));
        std::fs::write(&staged_manifest, self.schema.to_toml())
            .map_err(|error| storage(&staged_manifest, error.to_string()))?;
        std::fs::rename(&staged_manifest, &manifest_path)
            .map_err(|error| storage(&manifest_path, error.to_string()))?;

        let features_path = dir.join(FEATURES_FILE);
        let staged_features = dir.join(format!("{FEATURES_FILE}.tmp"));
        let mut frame = self
            .frame()
            .map_err(|error| storage(&features_path, error.to_string()))?;
        let file = File::create(&staged_features)
            .map_err(|error| storage(&staged_features, error.to_string()))?;
        ParquetWriter::new(file)
            .finish(&mut frame)
            .map_err(|error| storage(&staged_features, error.to_string()))?;
        std::fs::rename(&staged_features, &features_path)
            .map_err(|error| storage(&features_path, error.to_string()))?;
        Ok(())
    }

    /// Opens a vault written by [`Vault::save`].
    pub fn open(dir: &Path) -> Result<Self, VaultError> {
        let schema = Schema::from_path(&dir.join(MANIFEST_FILE))?;
        let features_path = dir.join(FEATURES_FILE);
        let storage = |message: String| VaultError::Storage {
            path: features_path.display().to_string(),
            message,
        };
        let file = File::open(&features_path).map_err(|error| storage(error.to_string()))?;
        let frame = ParquetReader::new(file)
            .finish()
            .map_err(|error| storage(error.to_string()))?;
        let mut vault = Self::new(schema);
        for record in records_from_frame(&frame, &vault.schema).map_err(storage)? {
            vault.upsert(record)?;
        }
        Ok(vault)
    }
}

/// Reads rows back from a frame written by [`Vault::frame`].
fn records_from_frame(frame: &DataFrame, schema: &Schema) -> Result<Vec<PatientRecord>, String> {
    let text = |name: &str| -> Result<Vec<Option<String>>, String> {
        let column = frame.column(name).map_err(|error| error.to_string())?;
        let strings = column.str().map_err(|error| format!("{name}: {error}"))?;
        Ok(strings
            .iter()
            .map(|cell| cell.map(str::to_string))
            .collect())
    };
    let ids = text("patient_id")?;
    let keys = text("patient_key")?;
    let sources = text("source")?;
    let mut feature_columns = Vec::with_capacity(schema.columns.len());
    for spec in &schema.columns {
        let column = frame
            .column(&spec.name)
            .map_err(|error| error.to_string())?;
        let cells: Vec<Value> = match spec.column_type {
            ColumnType::Float => column
                .f64()
                .map_err(|error| format!("{}: {error}", spec.name))?
                .iter()
                .map(|cell| cell.map_or(Value::Null, Value::Float))
                .collect(),
            ColumnType::Integer => column
                .i64()
                .map_err(|error| format!("{}: {error}", spec.name))?
                .iter()
                .map(|cell| cell.map_or(Value::Null, Value::Integer))
                .collect(),
            ColumnType::Bool => column
                .bool()
                .map_err(|error| format!("{}: {error}", spec.name))?
                .iter()
                .map(|cell| cell.map_or(Value::Null, Value::Bool))
                .collect(),
            ColumnType::Category => text(&spec.name)?
                .into_iter()
                .map(|cell| cell.map_or(Value::Null, Value::Category))
                .collect(),
            ColumnType::Codes | ColumnType::Text => text(&spec.name)?
                .into_iter()
                .map(|cell| {
                    cell.map_or(Value::Null, |joined| {
                        Value::Codes(if joined.is_empty() {
                            Vec::new()
                        } else {
                            joined.split(CODE_SEPARATOR).map(str::to_string).collect()
                        })
                    })
                })
                .collect(),
        };
        feature_columns.push(cells);
    }
    let mut records = Vec::with_capacity(ids.len());
    for (row, id) in ids.into_iter().enumerate() {
        let patient_id = id.ok_or_else(|| format!("row {row} has no patient_id"))?;
        records.push(PatientRecord {
            patient_id,
            patient_key: keys[row].clone(),
            source: sources[row].clone(),
            values: feature_columns
                .iter()
                .map(|column| column[row].clone())
                .collect(),
        });
    }
    Ok(records)
}
