//! A seeded synthetic population, written as FHIR R4 bundles.
//!
//! Each patient is drawn from their own ChaCha stream keyed by (seed, index), so a population
//! is the same for a seed whatever the order or chunking it is generated in. The clinical
//! structure follows the shape of adult populations in the published literature, without
//! claiming to match any one registry:
//!
//! - **Age** 18–95 in decade bands weighted like an adult population pyramid; **sex** 51 %
//!   female, 48.5 % male, 0.5 % other.
//! - **BMI** normal around 26.5 + 0.05·(age − 45), sd 5, floored at 15.
//! - **Type 2 diabetes** with logit −5.6 + 0.05·age + 0.12·(BMI − 27): about 1 % at 30 and
//!   lean, 10 % at 60 with BMI 30, over 20 % at 75 with BMI 32.
//! - **HbA1c** ~ N(7.6 %, 1.3) with diabetes (floored at 5.7), otherwise
//!   N(5.3 + 0.006·(age − 45) + 0.02·(BMI − 27), 0.35). Measured for every diabetic and 45 % of
//!   the others; 10 % of results are reported in mmol/mol (IFCC).
//! - **Hypertension** with logit −5 + 0.065·age + 0.08·(BMI − 27) + 0.5·T2D; **systolic BP**
//!   112 + 0.45·(age − 40) + 0.6·(BMI − 27) + 14·HTN + N(0, 12), and diastolic correlated.
//! - **LDL** ~ N(125, 32) mg/dL, 35 % lower on a statin; 20 % reported in mmol/L.
//! - **Metformin** (RxNorm 6809) for 75 % of diabetics; a **statin** (atorvastatin 83367,
//!   simvastatin 36567 or rosuvastatin 301542) for 60 % of diabetics, 30 % of hypertensives
//!   over 50 and 8 % of others over 40.
//!
//! Conditions are coded in ICD-10 or SNOMED CT at random, so queries must match either.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::fhir::{sign_bundle, systems, Date};

/// The date ages are computed at in synthetic populations.
pub const REFERENCE_DATE: Date = Date {
    year: 2026,
    month: 1,
    day: 1,
};

/// Bundles per output file.
pub const BUNDLES_PER_FILE: usize = 10_000;

/// One synthetic patient's ground truth (what the bundle encodes, before rounding).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticPatient {
    /// Patient id.
    pub id: String,
    /// The patient's signing key (the patient holds it; used to sign consents).
    pub key: SigningKey,
    /// Age on [`REFERENCE_DATE`].
    pub age: i64,
    /// "female", "male" or "other".
    pub sex: &'static str,
    /// BMI, if measured.
    pub bmi: Option<f64>,
    /// Type 2 diabetes.
    pub diabetes: bool,
    /// Hypertension.
    pub hypertension: bool,
    /// HbA1c in %, if measured.
    pub hba1c: Option<f64>,
    /// Systolic BP in mm[Hg], if measured.
    pub systolic_bp: Option<f64>,
    /// Diastolic BP in mm[Hg], if measured.
    pub diastolic_bp: Option<f64>,
    /// LDL in mg/dL, if measured.
    pub ldl: Option<f64>,
    /// On metformin.
    pub metformin: bool,
    /// The statin's RxNorm code, if on one.
    pub statin: Option<&'static str>,
    /// Report HbA1c in mmol/mol.
    hba1c_ifcc: bool,
    /// Report LDL in mmol/L.
    ldl_mmol: bool,
    /// Code conditions in SNOMED CT rather than ICD-10.
    snomed: bool,
    birth_day_offset: u32,
}

fn patient_rng(seed: u64, index: u64) -> ChaCha12Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"cohortex.synth.patient.v1");
    hasher.update(seed.to_le_bytes());
    hasher.update(index.to_le_bytes());
    ChaCha12Rng::from_seed(hasher.finalize().into())
}

fn logistic(logit: f64) -> f64 {
    1.0 / (1.0 + (-logit).exp())
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// Draws patient `index` of the population of `seed`.
pub fn patient(seed: u64, index: u64) -> SyntheticPatient {
    let mut rng = patient_rng(seed, index);
    let normal = |mean: f64, sd: f64, rng: &mut ChaCha12Rng| {
        Normal::new(mean, sd)
            .map(|distribution| distribution.sample(rng))
            .unwrap_or(mean)
    };
    let mut key_bytes = [0u8; 32];
    rng.fill(&mut key_bytes);
    let key = SigningKey::from_bytes(&key_bytes);

    const AGE_BANDS: [(i64, i64, f64); 7] = [
        (18, 29, 0.20),
        (30, 39, 0.17),
        (40, 49, 0.16),
        (50, 59, 0.17),
        (60, 69, 0.15),
        (70, 79, 0.10),
        (80, 95, 0.05),
    ];
    let mut draw: f64 = rng.gen();
    let mut age = 50;
    for (low, high, weight) in AGE_BANDS {
        if draw < weight {
            age = rng.gen_range(low..=high);
            break;
        }
        draw -= weight;
    }
    let sex_draw: f64 = rng.gen();
    let sex = if sex_draw < 0.51 {
        "female"
    } else if sex_draw < 0.995 {
        "male"
    } else {
        "other"
    };
    let agef = age as f64;
    let true_bmi = normal(26.5 + 0.05 * (agef - 45.0), 5.0, &mut rng).max(15.0);
    let diabetes = rng.gen_bool(logistic(-5.6 + 0.05 * agef + 0.12 * (true_bmi - 27.0)));
    let hypertension = rng.gen_bool(logistic(
        -5.0 + 0.065 * agef + 0.08 * (true_bmi - 27.0) + if diabetes { 0.5 } else { 0.0 },
    ));
    let true_hba1c = if diabetes {
        normal(7.6, 1.3, &mut rng).max(5.7)
    } else {
        normal(
            5.3 + 0.006 * (agef - 45.0) + 0.02 * (true_bmi - 27.0),
            0.35,
            &mut rng,
        )
        .max(4.0)
    };
    let sbp_residual = normal(0.0, 12.0, &mut rng);
    let true_sbp = 112.0
        + 0.45 * (agef - 40.0)
        + 0.6 * (true_bmi - 27.0)
        + if hypertension { 14.0 } else { 0.0 }
        + sbp_residual;
    let true_dbp = 72.0
        + 0.15 * (agef - 40.0)
        + 0.3 * (true_bmi - 27.0)
        + 0.35 * sbp_residual
        + normal(0.0, 7.0, &mut rng);
    let metformin = diabetes && rng.gen_bool(0.75);
    let statin_probability = if diabetes {
        0.6
    } else if hypertension && age > 50 {
        0.3
    } else if age > 40 {
        0.08
    } else {
        0.0
    };
    let statin = rng
        .gen_bool(statin_probability)
        .then(|| ["83367", "36567", "301542"][rng.gen_range(0..3)]);
    let true_ldl =
        normal(125.0, 32.0, &mut rng).max(30.0) * if statin.is_some() { 0.65 } else { 1.0 };

    let bmi = rng.gen_bool(0.92).then(|| round_to(true_bmi, 1));
    let hba1c = (diabetes || rng.gen_bool(0.45)).then(|| round_to(true_hba1c, 1));
    let measured_bp = rng.gen_bool(0.9);
    let systolic_bp = measured_bp.then(|| true_sbp.round().max(70.0));
    let diastolic_bp = measured_bp.then(|| true_dbp.round().max(40.0));
    let ldl = rng.gen_bool(0.6).then(|| true_ldl.round());
    SyntheticPatient {
        id: format!("s{seed}-{index:07}"),
        key,
        age,
        sex,
        bmi,
        diabetes,
        hypertension,
        hba1c,
        systolic_bp,
        diastolic_bp,
        ldl,
        metformin,
        statin,
        hba1c_ifcc: rng.gen_bool(0.1),
        ldl_mmol: rng.gen_bool(0.2),
        snomed: rng.gen_bool(0.5),
        birth_day_offset: rng.gen_range(0..365),
    }
}

fn coding(system: &str, code: &str, display: &str) -> Json {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

impl SyntheticPatient {
    /// The patient's birth date: `age` whole years before [`REFERENCE_DATE`].
    pub fn birth_date(&self) -> Date {
        // Count back `birth_day_offset` days from the reference date minus `age` years, within
        // the year, so the age on the reference date stays `age`.
        let year = REFERENCE_DATE.year - self.age as i32 - 1;
        let day_of_year = 2 + self.birth_day_offset.min(363);
        const MONTH_DAYS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut remaining = day_of_year;
        let mut month = 1;
        for days in MONTH_DAYS {
            if remaining <= days {
                break;
            }
            remaining -= days;
            month += 1;
        }
        Date {
            year,
            month,
            day: remaining,
        }
    }

    /// The patient's records as a FHIR R4 collection Bundle.
    pub fn to_bundle(&self) -> Json {
        let subject = json!({"reference": format!("Patient/{}", self.id)});
        let mut entries = vec![json!({
            "fullUrl": format!("urn:uuid:patient-{}", self.id),
            "resource": {
                "resourceType": "Patient",
                "id": self.id,
                "identifier": [{
                    "system": systems::PATIENT_KEY,
                    "value": hex::encode(self.key.verifying_key().as_bytes())
                }],
                "gender": self.sex,
                "birthDate": self.birth_date().to_string()
            }
        })];
        let mut observation = |id: &str,
                               loinc: &str,
                               display: &str,
                               value: f64,
                               unit: &str,
                               date: &str| {
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{id}-{}", self.id),
                "resource": {
                    "resourceType": "Observation",
                    "id": format!("{id}-{}", self.id),
                    "status": "final",
                    "category": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": if loinc == "39156-5" { "vital-signs" } else { "laboratory" }
                    }]}],
                    "code": coding(systems::LOINC, loinc, display),
                    "subject": subject,
                    "effectiveDateTime": date,
                    "valueQuantity": {"value": value, "unit": unit, "system": systems::UCUM, "code": unit}
                }
            }));
        };
        if let Some(bmi) = self.bmi {
            observation(
                "bmi",
                "39156-5",
                "Body mass index (BMI) [Ratio]",
                bmi,
                "kg/m2",
                "2025-06-12",
            );
        }
        if let Some(hba1c) = self.hba1c {
            if self.hba1c_ifcc {
                let ifcc = round_to((hba1c - 2.152) / 0.09148, 0);
                observation(
                    "hba1c",
                    "59261-8",
                    "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
                    ifcc,
                    "mmol/mol",
                    "2025-09-03",
                );
            } else {
                observation(
                    "hba1c",
                    "4548-4",
                    "Hemoglobin A1c/Hemoglobin.total in Blood",
                    hba1c,
                    "%",
                    "2025-09-03",
                );
            }
        }
        if let Some(ldl) = self.ldl {
            if self.ldl_mmol {
                observation(
                    "ldl",
                    "13457-7",
                    "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
                    round_to(ldl / 38.67, 2),
                    "mmol/L",
                    "2025-09-03",
                );
            } else {
                observation(
                    "ldl",
                    "13457-7",
                    "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
                    ldl,
                    "mg/dL",
                    "2025-09-03",
                );
            }
        }
        // Blood pressure as EHRs export it and the FHIR vital-signs profile shapes it: one
        // panel (LOINC 85354-9) whose components are the systolic and diastolic readings.
        let components: Vec<serde_json::Value> = [
            (self.systolic_bp, "8480-6", "Systolic blood pressure"),
            (self.diastolic_bp, "8462-4", "Diastolic blood pressure"),
        ]
        .into_iter()
        .filter_map(|(value, loinc, display)| {
            value.map(|value| {
                json!({
                    "code": coding(systems::LOINC, loinc, display),
                    "valueQuantity": {"value": value, "unit": "mmHg", "system": systems::UCUM, "code": "mm[Hg]"}
                })
            })
        })
        .collect();
        if !components.is_empty() {
            entries.push(json!({
                "fullUrl": format!("urn:uuid:bp-{}", self.id),
                "resource": {
                    "resourceType": "Observation",
                    "id": format!("bp-{}", self.id),
                    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
                    "status": "final",
                    "category": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs"
                    }]}],
                    "code": coding(systems::LOINC, "85354-9", "Blood pressure panel with all children optional"),
                    "subject": subject,
                    "effectiveDateTime": "2025-06-12",
                    "component": components
                }
            }));
        }
        let mut condition = |id: &str, icd10: &str, snomed: &str, display: &str| {
            let code = if self.snomed {
                coding(systems::SNOMED, snomed, display)
            } else {
                coding(systems::ICD10, icd10, display)
            };
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{id}-{}", self.id),
                "resource": {
                    "resourceType": "Condition",
                    "id": format!("{id}-{}", self.id),
                    "clinicalStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active"
                    }]},
                    "code": code,
                    "subject": subject,
                    "onsetDateTime": "2019-03-01"
                }
            }));
        };
        if self.diabetes {
            condition("t2d", "E11.9", "44054006", "Type 2 diabetes mellitus");
        }
        if self.hypertension {
            condition("htn", "I10", "38341003", "Essential hypertension");
        }
        let mut medication = |id: &str, rxnorm: &str, display: &str| {
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{id}-{}", self.id),
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": format!("{id}-{}", self.id),
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": coding(systems::RXNORM, rxnorm, display),
                    "subject": subject,
                    "authoredOn": "2024-11-20"
                }
            }));
        };
        if self.metformin {
            medication("metformin", "6809", "metformin");
        }
        if let Some(statin) = self.statin {
            let name = match statin {
                "83367" => "atorvastatin",
                "36567" => "simvastatin",
                _ => "rosuvastatin",
            };
            medication("statin", statin, name);
        }
        json!({
            "resourceType": "Bundle",
            "id": format!("bundle-{}", self.id),
            "type": "collection",
            "timestamp": "2026-01-01T00:00:00Z",
            "entry": entries
        })
    }
}

/// The signing key of the synthetic population's EHR source.
pub fn source_key(seed: u64) -> SigningKey {
    let mut hasher = Sha256::new();
    hasher.update(b"cohortex.synth.source.v1");
    hasher.update(seed.to_le_bytes());
    SigningKey::from_bytes(&hasher.finalize().into())
}

/// Writes patients `range` of the population of `seed` as NDJSON bundles into `dir`, in files
/// of [`BUNDLES_PER_FILE`]; signs them with [`source_key`] if `signed`. Calls `progress` with
/// the number of patients written so far. Returns the files written.
pub fn write_population(
    dir: &Path,
    seed: u64,
    range: std::ops::Range<u64>,
    signed: bool,
    mut progress: impl FnMut(u64),
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let source = signed.then(|| source_key(seed));
    let mut files = Vec::new();
    let mut writer: Option<std::io::BufWriter<std::fs::File>> = None;
    for (written, index) in range.clone().enumerate() {
        if written % BUNDLES_PER_FILE == 0 {
            if let Some(mut full) = writer.take() {
                full.flush()?;
            }
            let path = dir.join(format!(
                "bundles-{:04}.ndjson",
                (range.start as usize + written) / BUNDLES_PER_FILE
            ));
            writer = Some(std::io::BufWriter::new(std::fs::File::create(&path)?));
            files.push(path);
        }
        let mut bundle = patient(seed, index).to_bundle();
        if let Some(source) = &source {
            sign_bundle(&mut bundle, source, "2026-01-01T00:00:00Z");
        }
        if let Some(out) = writer.as_mut() {
            serde_json::to_writer(&mut *out, &bundle)?;
            out.write_all(b"\n")?;
        }
        if (written + 1) % 1000 == 0 {
            progress(written as u64 + 1);
        }
    }
    if let Some(mut last) = writer.take() {
        last.flush()?;
    }
    progress(range.end - range.start);
    Ok(files)
}
