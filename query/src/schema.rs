//! Schema manifests: what each column of a vault's feature table is, and what may be asked of it.
//!
//! A manifest is a versioned TOML file. Every column declares a type, and the numeric ones may
//! declare a unit, a coding, bounds with decimal places (which make them aggregatable: bounds
//! are what clipping, range proofs and differential privacy rely on) and bins (which make them
//! groupable). Categorical columns declare their categories, so a GROUP BY on them has a known,
//! small number of cells.
//!
//! ```toml
//! version = 1
//! table = "patients"
//! id_column = "patient_id"
//! max_groups = 64
//!
//! [[columns]]
//! name = "hba1c"
//! type = "float"
//! unit = "%"
//! coding = "loinc:4548-4"
//! bounds = [3.0, 20.0]
//! decimals = 1
//! bins = [3.0, 5.7, 6.5, 8.0, 20.0]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zk::fixed_point::FixedPoint;

/// The only manifest version this build reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Default bound on the number of cells a GROUP BY may produce.
pub const DEFAULT_MAX_GROUPS: usize = 64;

/// Largest number of categories a categorical column may declare.
pub const MAX_CATEGORIES: usize = 64;

/// Errors in a manifest.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        /// The manifest path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML did not parse, or had unknown or missing keys.
    #[error("manifest {path} is not valid: {message}")]
    Parse {
        /// The manifest path.
        path: String,
        /// The parser's message, with the line.
        message: String,
    },
    /// A column declaration is inconsistent.
    #[error("manifest column `{column}`: {reason}")]
    Column {
        /// The column's name.
        column: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The manifest as a whole is inconsistent.
    #[error("manifest: {0}")]
    Manifest(String),
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// A real number.
    Float,
    /// An integer.
    Integer,
    /// true / false.
    Bool,
    /// One of the declared categories.
    Category,
    /// A list of codes (conditions, medications), matched by prefix with `has_code`.
    Codes,
    /// Free text: stored, never aggregated, never grouped. Only the id column may be text.
    Text,
}

/// The declaration of one column, as written in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name (an SQL identifier).
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Unit, e.g. "kg/m2" (UCUM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Coding, e.g. "loinc:4548-4" or "icd-10".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coding: Option<String>,
    /// Declared [lower, upper] bounds. Required for aggregation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<[f64; 2]>,
    /// Decimal places kept by the fixed-point encoding (0 for integers).
    #[serde(default)]
    pub decimals: u8,
    /// Bin edges, ascending, covering the bounds. Make the column groupable with `BIN(col)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<Vec<f64>>,
    /// Categories of a categorical column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Whether the column may be empty for a patient.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

/// A manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    version: u32,
    table: String,
    id_column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_column: Option<String>,
    #[serde(default = "default_max_groups")]
    max_groups: usize,
    columns: Vec<ColumnSpec>,
}

fn default_max_groups() -> usize {
    DEFAULT_MAX_GROUPS
}

/// A validated schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// The table name queries select FROM.
    pub table: String,
    /// The column holding the patient id.
    pub id_column: String,
    /// The column holding the patient's public key (hex ed25519), if the data carries one.
    pub key_column: Option<String>,
    /// The most cells a GROUP BY may produce.
    pub max_groups: usize,
    /// The feature columns (not the id or key columns).
    pub columns: Vec<ColumnSpec>,
}

impl ColumnSpec {
    /// The fixed-point codec of an aggregatable column: `None` without declared bounds.
    pub fn codec(&self) -> Option<FixedPoint> {
        let [lower, upper] = self.bounds?;
        FixedPoint::new(lower, upper, self.decimals).ok()
    }

    /// Whether values of this column can be summed.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self.column_type,
            ColumnType::Float | ColumnType::Integer | ColumnType::Bool
        )
    }

    fn validate(&self) -> Result<(), SchemaError> {
        let fail = |reason: String| {
            Err(SchemaError::Column {
                column: self.name.clone(),
                reason,
            })
        };
        if !is_identifier(&self.name) {
            return fail(
                "names must start with a letter and use only lowercase letters, digits and _"
                    .into(),
            );
        }
        if let Some([lower, upper]) = self.bounds {
            if !self.is_numeric() {
                return fail(format!(
                    "bounds are only for float and integer columns, not {:?}",
                    self.column_type
                ));
            }
            if let Err(error) = FixedPoint::new(lower, upper, self.decimals) {
                return fail(format!("bounds: {error}"));
            }
            if lower == upper {
                return fail(format!("bounds [{lower}, {upper}] are empty"));
            }
        }
        if self.column_type == ColumnType::Integer && self.decimals != 0 {
            return fail("integer columns take decimals = 0".into());
        }
        if let Some(bins) = &self.bins {
            let Some([lower, upper]) = self.bounds else {
                return fail("bins need declared bounds".into());
            };
            if bins.len() < 2 || bins.windows(2).any(|pair| pair[0] >= pair[1]) {
                return fail("bins need at least two strictly increasing edges".into());
            }
            if bins[0] != lower || bins[bins.len() - 1] != upper {
                return fail(format!(
                    "bins must start at the lower bound {lower} and end at the upper bound {upper}, \
                     so that every clipped value falls in a bin"
                ));
            }
        }
        match (&self.categories, self.column_type) {
            (Some(categories), ColumnType::Category) => {
                if categories.is_empty() || categories.len() > MAX_CATEGORIES {
                    return fail(format!("declare 1 to {MAX_CATEGORIES} categories"));
                }
                let distinct: BTreeSet<&String> = categories.iter().collect();
                if distinct.len() != categories.len() {
                    return fail("categories are listed twice".into());
                }
            }
            (None, ColumnType::Category) => {
                return fail("categorical columns must list their categories".into())
            }
            (Some(_), _) => return fail("only categorical columns take categories".into()),
            (None, _) => {}
        }
        if self.column_type == ColumnType::Text {
            return fail("text columns cannot be features; only id_column may be text".into());
        }
        Ok(())
    }
}

/// Whether `name` is a plain lowercase SQL identifier.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(first) if first.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

impl Schema {
    /// Reads and validates a manifest file.
    pub fn from_path(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates a manifest; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let file: ManifestFile = toml::from_str(text).map_err(|error| SchemaError::Parse {
            path: origin.to_string(),
            message: error.to_string(),
        })?;
        if file.version != MANIFEST_VERSION {
            return Err(SchemaError::Manifest(format!(
                "version {} is not supported; this build reads version {MANIFEST_VERSION}",
                file.version
            )));
        }
        Self::new(
            file.table,
            file.id_column,
            file.key_column,
            file.max_groups,
            file.columns,
        )
    }

    /// Builds and validates a schema.
    pub fn new(
        table: String,
        id_column: String,
        key_column: Option<String>,
        max_groups: usize,
        columns: Vec<ColumnSpec>,
    ) -> Result<Self, SchemaError> {
        if !is_identifier(&table) {
            return Err(SchemaError::Manifest(format!(
                "table name `{table}` must be a lowercase identifier"
            )));
        }
        if max_groups == 0 {
            return Err(SchemaError::Manifest(
                "max_groups must be at least 1".into(),
            ));
        }
        if columns.is_empty() {
            return Err(SchemaError::Manifest("declare at least one column".into()));
        }
        let mut names = BTreeSet::new();
        for reserved in std::iter::once(&id_column).chain(key_column.iter()) {
            names.insert(reserved.clone());
        }
        for column in &columns {
            column.validate()?;
            if !names.insert(column.name.clone()) {
                return Err(SchemaError::Column {
                    column: column.name.clone(),
                    reason: "declared twice (or clashes with id_column / key_column)".into(),
                });
            }
        }
        Ok(Self {
            table,
            id_column,
            key_column,
            max_groups,
            columns,
        })
    }

    /// The manifest as TOML, for writing next to a vault.
    pub fn to_toml(&self) -> String {
        let file = ManifestFile {
            version: MANIFEST_VERSION,
            table: self.table.clone(),
            id_column: self.id_column.clone(),
            key_column: self.key_column.clone(),
            max_groups: self.max_groups,
            columns: self.columns.clone(),
        };
        toml::to_string_pretty(&file).unwrap_or_default()
    }

    /// The declaration of a feature column.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The schema of vaults built from FHIR R4 bundles (see `cohortex_vault::fhir`).
    pub fn fhir() -> Self {
        let float =
            |name: &str, unit: &str, coding: &str, bounds: [f64; 2], bins: &[f64]| ColumnSpec {
                name: name.into(),
                column_type: ColumnType::Float,
                unit: Some(unit.into()),
                coding: Some(coding.into()),
                bounds: Some(bounds),
                decimals: 1,
                bins: Some(bins.to_vec()),
                categories: None,
                nullable: true,
            };
        let columns = vec![
            ColumnSpec {
                name: "age".into(),
                column_type: ColumnType::Integer,
                unit: Some("a".into()),
                coding: Some("derived:Patient.birthDate".into()),
                bounds: Some([0.0, 120.0]),
                decimals: 0,
                bins: Some(vec![0.0, 18.0, 40.0, 50.0, 60.0, 70.0, 80.0, 120.0]),
                categories: None,
                nullable: false,
            },
            ColumnSpec {
                name: "sex".into(),
                column_type: ColumnType::Category,
                unit: None,
                coding: Some("fhir:administrative-gender".into()),
                bounds: None,
                decimals: 0,
                bins: None,
                categories: Some(vec![
                    "female".into(),
                    "male".into(),
                    "other".into(),
                    "unknown".into(),
                ]),
                nullable: false,
            },
            float(
                "bmi",
                "kg/m2",
                "loinc:39156-5",
                [10.0, 80.0],
                &[10.0, 18.5, 25.0, 30.0, 35.0, 40.0, 80.0],
            ),
            float(
                "hba1c",
                "%",
                "loinc:4548-4",
                [3.0, 20.0],
                &[3.0, 5.7, 6.5, 7.0, 8.0, 9.0, 20.0],
            ),
            float(
                "systolic_bp",
                "mm[Hg]",
                "loinc:8480-6",
                [60.0, 260.0],
                &[60.0, 120.0, 130.0, 140.0, 160.0, 180.0, 260.0],
            ),
            float(
                "diastolic_bp",
                "mm[Hg]",
                "loinc:8462-4",
                [30.0, 160.0],
                &[30.0, 80.0, 90.0, 100.0, 110.0, 160.0],
            ),
            float(
                "ldl",
                "mg/dL",
                "loinc:13457-7",
                [20.0, 400.0],
                &[20.0, 100.0, 130.0, 160.0, 190.0, 400.0],
            ),
            ColumnSpec {
                name: "conditions".into(),
                column_type: ColumnType::Codes,
                unit: None,
                coding: Some("icd-10|snomed-ct".into()),
                bounds: None,
                decimals: 0,
                bins: None,
                categories: None,
                nullable: true,
            },
            ColumnSpec {
                name: "medications".into(),
                column_type: ColumnType::Codes,
                unit: None,
                coding: Some("rxnorm".into()),
                bounds: None,
                decimals: 0,
                bins: None,
                categories: None,
                nullable: true,
            },
        ];
        Self::new(
            "patients".into(),
            "patient_id".into(),
            Some("patient_key".into()),
            DEFAULT_MAX_GROUPS,
            columns,
        )
        .unwrap_or_else(|error| unreachable!("the built-in FHIR schema is valid: {error}"))
    }
}
