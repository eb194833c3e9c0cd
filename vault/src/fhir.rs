//! FHIR R4 ingest: bundles of Patient, Observation, Condition and MedicationRequest, flattened
//! into one feature row per patient (see [`Schema::fhir`]).
//!
//! Only the elements the features need are read; everything else in a resource is ignored, and
//! resource types other than these four are counted and skipped.
//!
//! | feature | source |
//! |---|---|
//! | `age` | whole years from `Patient.birthDate` to the vault's reference date |
//! | `sex` | `Patient.gender` |
//! | `bmi`, `hba1c`, `systolic_bp`, `diastolic_bp`, `ldl` | latest `Observation.valueQuantity` by LOINC code, unit normalised |
//! | `systolic_bp`, `diastolic_bp` | also the components 8480-6 and 8462-4 of a blood-pressure panel (LOINC 85354-9 or 55284-4), the form of the FHIR vital-signs BP profile and of most EHR exports; a component without a value (`dataAbsentReason`) is skipped |
//! | `conditions` | ICD-10 and SNOMED CT codes of `Condition.code` |
//! | `medications` | RxNorm codes of `MedicationRequest.medicationCodeableConcept` |
//!
//! **Units** are UCUM codes. HbA1c in mmol/mol (IFCC) converts to % (NGSP) by the master
//! equation NGSP = 0.09148 × IFCC + 2.152; LDL cholesterol in mmol/L converts to mg/dL by
//! × 38.67. Any other unit is refused with the resource named.
//!
//! **Provenance.** A bundle may carry a `Bundle.signature` by its source (a device or a
//! provider). The signature is Ed25519 over `cohortex.fhir.provenance.v1` followed by the bundle
//! without its `signature` element, serialised as JSON with object keys sorted and no
//! whitespace. `Signature.who.identifier.value` is the source's hex public key and
//! `Signature.data` the base64 signature. A bad signature rejects the bundle; a good one records
//! the source on the patient's row.
//!
//! **The patient's key** is the `Patient.identifier` with system `urn:cohortex:patient-key`
//! (hex Ed25519): the key the patient signs consents with.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use ed25519_dalek::{Signature as Ed25519Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use cohortex_query::record::{is_valid_code, PatientRecord, Value};
use cohortex_query::schema::Schema;

/// Code system URIs.
pub mod systems {
    /// LOINC.
    pub const LOINC: &str = "http://loinc.org";
    /// SNOMED CT.
    pub const SNOMED: &str = "http://snomed.info/sct";
    /// ICD-10 (WHO).
    pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
    /// ICD-10-CM.
    pub const ICD10_CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
    /// RxNorm.
    pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
    /// UCUM units.
    pub const UCUM: &str = "http://unitsofmeasure.org";
    /// The identifier system of a patient's Cohortex public key.
    pub const PATIENT_KEY: &str = "urn:cohortex:patient-key";
    /// The identifier system of a source's public key in `Bundle.signature.who`.
    pub const SOURCE_KEY: &str = "urn:cohortex:source-key";
}

/// Domain separation of provenance signatures.
pub const PROVENANCE_LABEL: &[u8] = b"cohortex.fhir.provenance.v1";
/// `Signature.sigFormat` of a provenance signature.
pub const SIGNATURE_FORMAT: &str = "application/x-cohortex-ed25519";

/// LOINC codes read as lab features, with their feature column.
pub const LAB_CODES: [(&str, &str); 7] = [
    ("39156-5", "bmi"),
    ("4548-4", "hba1c"),
    ("59261-8", "hba1c"),
    ("8480-6", "systolic_bp"),
    ("8462-4", "diastolic_bp"),
    ("13457-7", "ldl"),
    ("18262-6", "ldl"),
];

/// LOINC codes of blood-pressure panels, whose systolic and diastolic readings are
/// `Observation.component`s (the FHIR vital-signs blood-pressure profile uses 85354-9).
pub const BP_PANEL_CODES: [&str; 2] = ["85354-9", "55284-4"];

/// The lab column of a LOINC code, if it is one of [`LAB_CODES`].
fn lab_column(code: &str) -> Option<&'static str> {
    LAB_CODES
        .iter()
        .find(|(loinc, _)| *loinc == code)
        .map(|(_, column)| *column)
}

/// A FHIR `Coding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coding {
    /// The code system URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// A FHIR `CodeableConcept`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CodeableConcept {
    /// Codings.
    #[serde(default)]
    pub coding: Vec<Coding>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A FHIR `Reference`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// e.g. `Patient/123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A logical reference by identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
}

/// A FHIR `Identifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identifier {
    /// The namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A FHIR `Quantity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    /// The value.
    pub value: f64,
    /// Unit text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Unit system (UCUM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Unit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A FHIR `Patient` (the elements used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    /// Always "Patient".
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Identifiers, including the patient's Cohortex key.
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    /// male | female | other | unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// YYYY, YYYY-MM or YYYY-MM-DD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
}

/// A FHIR `Observation` (the elements used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Always "Observation".
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// registered | preliminary | final | amended | …
    pub status: String,
    /// What was observed (LOINC).
    pub code: CodeableConcept,
    /// The patient.
    pub subject: Reference,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_date_time: Option<String>,
    /// The result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
    /// Component results (a blood-pressure panel's systolic and diastolic readings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<ObservationComponent>,
}

/// A FHIR `Observation.component` (the elements used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservationComponent {
    /// What this component is (LOINC).
    pub code: CodeableConcept,
    /// Its result; absent when the component carries a `dataAbsentReason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
}

/// A FHIR `Condition` (the elements used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Always "Condition".
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// active | recurrence | relapse | inactive | remission | resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinical_status: Option<CodeableConcept>,
    /// The diagnosis (ICD-10 or SNOMED CT).
    pub code: CodeableConcept,
    /// The patient.
    pub subject: Reference,
    /// Onset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_date_time: Option<String>,
}

/// A FHIR `MedicationRequest` (the elements used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MedicationRequest {
    /// Always "MedicationRequest".
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// active | on-hold | cancelled | completed | …
    pub status: String,
    /// proposal | plan | order | …
    pub intent: String,
    /// The medication (RxNorm).
    pub medication_codeable_concept: CodeableConcept,
    /// The patient.
    pub subject: Reference,
    /// When written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authored_on: Option<String>,
}

/// Errors reading one bundle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirError {
    /// Not JSON, or not a Bundle.
    #[error("not a FHIR R4 Bundle: {0}")]
    NotABundle(String),
    /// A resource is malformed.
    #[error("{resource}: {reason}")]
    Resource {
        /// e.g. `Observation/obs-1` or `entry 3`.
        resource: String,
        /// What is wrong.
        reason: String,
    },
    /// The provenance signature does not verify, or its signer is not trusted.
    #[error("Bundle.signature: {0}")]
    Provenance(String),
}

/// Which bundle signers a vault accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvenancePolicy {
    /// Refuse unsigned bundles.
    pub require_signature: bool,
    /// If set, only these sources (hex public keys) may sign.
    pub trusted_sources: Option<BTreeSet<String>>,
}

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day, 1 to 31.
    pub day: u32,
}

impl Date {
    /// Parses FHIR `date` (YYYY, YYYY-MM, YYYY-MM-DD), or the date part of a `dateTime`.
    /// Missing month or day count as the first.
    pub fn parse(text: &str) -> Option<Self> {
        let date = text.get(..10.min(text.len()))?;
        let mut parts = date.split('-');
        let year: i32 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next().map_or(Some(1), |part| part.parse().ok())?;
        let day: u32 = parts.next().map_or(Some(1), |part| part.parse().ok())?;
        let valid = (1..=12).contains(&month) && (1..=31).contains(&day) && year >= 1800;
        valid.then_some(Self { year, month, day })
    }

    /// Whole years from `self` to `later`.
    pub fn years_until(&self, later: &Date) -> i64 {
        let mut years = i64::from(later.year - self.year);
        if (later.month, later.day) < (self.month, self.day) {
            years -= 1;
        }
        years
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Builds the canonical bytes a provenance signature covers.
fn signed_bytes(bundle: &serde_json::Value) -> Vec<u8> {
    let mut unsigned = bundle.clone();
    if let Some(object) = unsigned.as_object_mut() {
        object.remove("signature");
    }
    // serde_json's map is ordered by key, so this is deterministic.
    let mut bytes = PROVENANCE_LABEL.to_vec();
    bytes.extend_from_slice(unsigned.to_string().as_bytes());
    bytes
}

/// Signs a bundle as its source, adding `Bundle.signature`.
pub fn sign_bundle(bundle: &mut serde_json::Value, source: &SigningKey, when: &str) {
    let signature = source.sign(&signed_bytes(bundle));
    let element = serde_json::json!({
        "type": [{
            "system": "urn:iso-astm:E1762-95:2013",
            "code": "1.2.840.10065.1.12.1.14",
            "display": "Source Signature"
        }],
        "when": when,
        "who": {"identifier": {
            "system": systems::SOURCE_KEY,
            "value": hex::encode(source.verifying_key().as_bytes())
        }},
        "sigFormat": SIGNATURE_FORMAT,
        "data": base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
    });
    if let Some(object) = bundle.as_object_mut() {
        object.insert("signature".into(), element);
    }
}

/// Verifies a bundle's signature, if any, under the policy. Returns the signer's hex key.
fn verify_provenance(
    bundle: &serde_json::Value,
    policy: &ProvenancePolicy,
) -> Result<Option<String>, FhirError> {
    let Some(signature) = bundle.get("signature") else {
        if policy.require_signature {
            return Err(FhirError::Provenance(
                "missing; this vault only accepts signed bundles".into(),
            ));
        }
        return Ok(None);
    };
    let fail = |reason: &str| Err(FhirError::Provenance(reason.to_string()));
    if signature.get("sigFormat").and_then(|f| f.as_str()) != Some(SIGNATURE_FORMAT) {
        return fail("sigFormat must be application/x-cohortex-ed25519");
    }
    let Some(source_hex) = signature
        .pointer("/who/identifier/value")
        .and_then(|value| value.as_str())
    else {
        return fail("who.identifier.value (the source's public key) is missing");
    };
    let Some(key) = parse_public_key(source_hex) else {
        return fail("who.identifier.value is not a hex Ed25519 public key");
    };
    let Some(data) = signature.get("data").and_then(|value| value.as_str()) else {
        return fail("data is missing");
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return fail("data is not base64");
    };
    let Ok(raw) = <[u8; 64]>::try_from(raw.as_slice()) else {
        return fail("data is not a 64-byte Ed25519 signature");
    };
    if key
        .verify(&signed_bytes(bundle), &Ed25519Signature::from_bytes(&raw))
        .is_err()
    {
        return fail("does not verify: the bundle was altered or not signed by this source");
    }
    let source = hex::encode(key.as_bytes());
    if let Some(trusted) = &policy.trusted_sources {
        if !trusted.contains(&source) {
            return Err(FhirError::Provenance(format!(
                "source {source} is not a trusted source of this vault"
            )));
        }
    }
    Ok(Some(source))
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = hex::decode(text).ok()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

fn codes_of(concept: &CodeableConcept, accepted: &[&str]) -> Vec<String> {
    concept
        .coding
        .iter()
        .filter(|coding| {
            coding
                .system
                .as_deref()
                .is_some_and(|system| accepted.contains(&system))
        })
        .filter_map(|coding| coding.code.clone())
        .collect()
}

/// Converts a lab value to the feature's canonical unit.
fn normalise(column: &str, quantity: &Quantity) -> Result<f64, String> {
    let unit = quantity
        .code
        .as_deref()
        .or(quantity.unit.as_deref())
        .unwrap_or("");
    let value = quantity.value;
    let converted = match (column, unit) {
        ("bmi", "kg/m2") => value,
        ("hba1c", "%") => value,
        ("hba1c", "mmol/mol") => 0.09148 * value + 2.152,
        ("systolic_bp" | "diastolic_bp", "mm[Hg]") => value,
        ("ldl", "mg/dL") => value,
        ("ldl", "mmol/L") => value * 38.67,
        _ => {
            let expected = match column {
                "bmi" => "kg/m2",
                "hba1c" => "% or mmol/mol",
                "ldl" => "mg/dL or mmol/L",
                _ => "mm[Hg]",
            };
            return Err(format!(
                "unit `{unit}` for {column}; expected the UCUM code {expected}"
            ));
        }
    };
    if converted.is_finite() {
        Ok(converted)
    } else {
        Err(format!("value {value} is not a finite number"))
    }
}

/// Reads one bundle (JSON text) into a patient row under [`Schema::fhir`].
///
/// `as_of` is the date ages are computed at.
pub fn bundle_to_record(
    json: &str,
    as_of: &Date,
    policy: &ProvenancePolicy,
) -> Result<PatientRecord, FhirError> {
    bundle_to_record_with_warnings(json, as_of, policy).map(|(record, _)| record)
}

/// [`bundle_to_record`], and the values it dropped: an Observation, Condition or
/// MedicationRequest that cannot be read (malformed, no value, a unit with no conversion)
/// loses that value only, with a warning naming the resource, and the patient's other values
/// are kept. A bundle without a readable Patient is still refused whole.
pub fn bundle_to_record_with_warnings(
    json: &str,
    as_of: &Date,
    policy: &ProvenancePolicy,
) -> Result<(PatientRecord, Vec<String>), FhirError> {
    let mut warnings: Vec<String> = Vec::new();
    let bundle: serde_json::Value =
        serde_json::from_str(json).map_err(|error| FhirError::NotABundle(error.to_string()))?;
    if bundle.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle") {
        return Err(FhirError::NotABundle(
            "resourceType is not \"Bundle\"".into(),
        ));
    }
    let source = verify_provenance(&bundle, policy)?;
    let entries = bundle
        .get("entry")
        .and_then(|entries| entries.as_array())
        .ok_or_else(|| FhirError::NotABundle("Bundle.entry is missing".into()))?;

    let mut patient: Option<Patient> = None;
    // Latest value per lab column: (effective date text, value).
    let mut labs: BTreeMap<&str, (String, f64)> = BTreeMap::new();
    let mut conditions = BTreeSet::new();
    let mut medications = BTreeSet::new();
    for (position, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else {
            return Err(FhirError::Resource {
                resource: format!("entry {position}"),
                reason: "has no resource".into(),
            });
        };
        let resource_type = resource
            .get("resourceType")
            .and_then(|t| t.as_str())
            .unwrap_or("");
        let name = |id: Option<&str>| match id {
            Some(id) => format!("{resource_type}/{id}"),
            None => format!("{resource_type} (entry {position})"),
        };
        let malformed = |error: serde_json::Error| FhirError::Resource {
            resource: name(resource.get("id").and_then(|id| id.as_str())),
            reason: error.to_string(),
        };
        match resource_type {
            "Patient" => {
                if patient.is_some() {
                    return Err(FhirError::Resource {
                        resource: name(None),
                        reason: "a bundle carries one patient's records; found a second Patient"
                            .into(),
                    });
                }
                patient = Some(serde_json::from_value(resource.clone()).map_err(malformed)?);
            }
            "Observation" => {
                let observation: Observation = match serde_json::from_value(resource.clone()) {
                    Ok(observation) => observation,
                    Err(error) => {
                        warnings.push(format!("{}; dropped", malformed(error)));
                        continue;
                    }
                };
                if matches!(
                    observation.status.as_str(),
                    "cancelled" | "entered-in-error"
                ) {
                    continue;
                }
                let codes = codes_of(&observation.code, &[systems::LOINC]);
                let resource_name = name(observation.id.as_deref());
                // The readings this observation gives: its own value, or a blood-pressure
                // panel's systolic and diastolic components.
                let mut readings: Vec<(&str, &Quantity)> = Vec::new();
                if let Some(column) = codes.iter().find_map(|code| lab_column(code)) {
                    match observation.value_quantity.as_ref() {
                        Some(quantity) => readings.push((column, quantity)),
                        None => {
                            warnings.push(format!(
                                "{resource_name}: has no valueQuantity; its {column} is dropped"
                            ));
                            continue;
                        }
                    }
                } else if codes
                    .iter()
                    .any(|code| BP_PANEL_CODES.contains(&code.as_str()))
                {
                    for component in &observation.component {
                        let column = codes_of(&component.code, &[systems::LOINC])
                            .iter()
                            .find_map(|code| lab_column(code))
                            .filter(|column| matches!(*column, "systolic_bp" | "diastolic_bp"));
                        if let (Some(column), Some(quantity)) =
                            (column, component.value_quantity.as_ref())
                        {
                            readings.push((column, quantity));
                        }
                    }
                } else {
                    continue;
                }
                let when = observation.effective_date_time.clone().unwrap_or_default();
                for (column, quantity) in readings {
                    let value = match normalise(column, quantity) {
                        Ok(value) => value,
                        Err(reason) => {
                            warnings.push(format!(
                                "{resource_name}: {reason}; this {column} value is dropped"
                            ));
                            continue;
                        }
                    };
                    let newer = labs
                        .get(column)
                        .is_none_or(|(latest, _)| when.as_str() >= latest.as_str());
                    if newer {
                        labs.insert(column, (when.clone(), value));
                    }
                }
            }
            "Condition" => {
                let condition: Condition = match serde_json::from_value(resource.clone()) {
                    Ok(condition) => condition,
                    Err(error) => {
                        warnings.push(format!("{}; dropped", malformed(error)));
                        continue;
                    }
                };
                let inactive = condition.clinical_status.as_ref().is_some_and(|status| {
                    status.coding.iter().any(|coding| {
                        matches!(
                            coding.code.as_deref(),
                            Some("inactive" | "resolved" | "remission")
                        )
                    })
                });
                if !inactive {
                    conditions.extend(codes_of(
                        &condition.code,
                        &[systems::ICD10, systems::ICD10_CM, systems::SNOMED],
                    ));
                }
            }
            "MedicationRequest" => {
                let request: MedicationRequest = match serde_json::from_value(resource.clone()) {
                    Ok(request) => request,
                    Err(error) => {
                        warnings.push(format!("{}; dropped", malformed(error)));
                        continue;
                    }
                };
                if matches!(
                    request.status.as_str(),
                    "cancelled" | "entered-in-error" | "stopped"
                ) {
                    continue;
                }
                medications.extend(codes_of(
                    &request.medication_codeable_concept,
                    &[systems::RXNORM],
                ));
            }
            _ => {}
        }
    }
    let patient = patient.ok_or_else(|| FhirError::Resource {
        resource: "Bundle".into(),
        reason: "has no Patient".into(),
    })?;
    let patient_name = format!("Patient/{}", patient.id);
    let birth = patient
        .birth_date
        .as_deref()
        .and_then(Date::parse)
        .ok_or_else(|| FhirError::Resource {
            resource: patient_name.clone(),
            reason: "birthDate is missing or not a date".into(),
        })?;
    let age = birth.years_until(as_of);
    if !(0..=150).contains(&age) {
        return Err(FhirError::Resource {
            resource: patient_name,
            reason: format!("birthDate gives age {age} on {as_of}"),
        });
    }
    let sex = match patient.gender.as_deref() {
        Some(gender @ ("female" | "male" | "other" | "unknown")) => gender.to_string(),
        None => "unknown".to_string(),
        Some(other) => {
            return Err(FhirError::Resource {
                resource: patient_name,
                reason: format!("gender `{other}` is not in the FHIR administrative-gender set"),
            })
        }
    };
    let patient_key = match patient
        .identifier
        .iter()
        .find(|identifier| identifier.system.as_deref() == Some(systems::PATIENT_KEY))
        .and_then(|identifier| identifier.value.as_deref())
    {
        Some(text) => Some(
            parse_public_key(text)
                .map(|key| hex::encode(key.as_bytes()))
                .ok_or_else(|| FhirError::Resource {
                    resource: patient_name.clone(),
                    reason: "the urn:cohortex:patient-key identifier is not a hex Ed25519 key"
                        .into(),
                })?,
        ),
        None => None,
    };
    for code in conditions.iter().chain(&medications) {
        if !is_valid_code(code) {
            return Err(FhirError::Resource {
                resource: patient_name,
                reason: format!("code `{code}` has characters codes may not have"),
            });
        }
    }
    let lab = |column: &str| {
        labs.get(column)
            .map_or(Value::Null, |(_, x)| Value::Float(*x))
    };
    let schema = Schema::fhir();
    let values = schema
        .columns
        .iter()
        .map(|column| match column.name.as_str() {
            "age" => Value::Integer(age),
            "sex" => Value::Category(sex.clone()),
            "conditions" => Value::Codes(conditions.iter().cloned().collect()),
            "medications" => Value::Codes(medications.iter().cloned().collect()),
            lab_column => lab(lab_column),
        })
        .collect();
    Ok((
        PatientRecord {
            patient_id: patient.id,
            patient_key,
            source,
            values,
        },
        warnings,
    ))
}
