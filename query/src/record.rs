//! One patient's row of features, as ingest produces it and the vault stores it.

use serde::{Deserialize, Serialize};

use crate::schema::{ColumnSpec, ColumnType};

/// Separator of codes inside a stored codes column. Codes may not contain it.
pub const CODE_SEPARATOR: char = ';';

/// One cell of a patient's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// No value recorded.
    Null,
    /// A real number.
    Float(f64),
    /// An integer.
    Integer(i64),
    /// A flag.
    Bool(bool),
    /// A declared category.
    Category(String),
    /// A list of codes.
    Codes(Vec<String>),
}

impl Value {
    /// The value as a real number, for numeric columns.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Integer(x) => Some(*x as f64),
            Value::Bool(flag) => Some(f64::from(u8::from(*flag))),
            _ => None,
        }
    }

    /// Checks the value against its column's declaration; with `enforce_bounds`, also against
    /// the declared bounds (manifest ingest refuses out-of-bounds values; FHIR ingest keeps
    /// them and queries clip them). Returns what is wrong.
    pub fn check(&self, column: &ColumnSpec, enforce_bounds: bool) -> Result<(), String> {
        match (self, column.column_type) {
            (Value::Null, _) if column.nullable => Ok(()),
            (Value::Null, _) => Err("is empty but the column is not nullable".into()),
            (Value::Float(x), ColumnType::Float) => check_bounds(*x, column, enforce_bounds),
            (Value::Integer(x), ColumnType::Integer) => {
                check_bounds(*x as f64, column, enforce_bounds)
            }
            (Value::Bool(_), ColumnType::Bool) => Ok(()),
            (Value::Category(category), ColumnType::Category) => {
                let declared = column.categories.as_deref().unwrap_or_default();
                if declared.iter().any(|known| known == category) {
                    Ok(())
                } else {
                    Err(format!(
                        "category `{category}` is not declared (declared: {})",
                        declared.join(", ")
                    ))
                }
            }
            (Value::Codes(codes), ColumnType::Codes) => {
                match codes.iter().find(|code| !is_valid_code(code)) {
                    Some(code) => Err(format!(
                        "code `{code}` must be 1 to 64 letters, digits, '.', '-' or '_'"
                    )),
                    None => Ok(()),
                }
            }
            (value, expected) => Err(format!("{value:?} is not a {expected:?} value")),
        }
    }
}

fn check_bounds(x: f64, column: &ColumnSpec, enforce_bounds: bool) -> Result<(), String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a finite number"));
    }
    match column.bounds {
        Some([lower, upper]) if enforce_bounds && (x < lower || x > upper) => Err(format!(
            "{x} is outside the declared bounds [{lower}, {upper}]"
        )),
        _ => Ok(()),
    }
}

/// Whether a code is safe to store and match.
pub fn is_valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// One patient's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientRecord {
    /// The patient's id in this vault.
    pub patient_id: String,
    /// The patient's public key (hex ed25519), which their consents are signed with.
    pub patient_key: Option<String>,
    /// Who vouched for the records: the hex ed25519 key of the signing source, if signed.
    pub source: Option<String>,
    /// One value per schema feature column, in schema order.
    pub values: Vec<Value>,
}
