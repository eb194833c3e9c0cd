//! FHIR R4 ingest: round trip from a generated patient through a bundle into a vault and back
//! from Parquet, unit normalisation, and provenance signatures.

use compute_node::fhir::{
    bundle_to_record, bundle_to_record_with_warnings, sign_bundle, Date, FhirError,
    ProvenancePolicy,
};
use compute_node::ingest::ingest_fhir;
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{Schema, Vault};
use ed25519_dalek::SigningKey;

fn value<'a>(record: &'a compute_node::record::PatientRecord, column: &str) -> &'a Value {
    let position = Schema::fhir()
        .columns
        .iter()
        .position(|spec| spec.name == column)
        .unwrap();
    &record.values[position]
}

fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Float(x) => Some(*x),
        Value::Null => None,
        other => panic!("expected a float, got {other:?}"),
    }
}

#[test]
fn fhir_bundle_round_trips_into_the_vault_and_back_from_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let mut vault = Vault::new(Schema::fhir());
    let mut patients = Vec::new();
    for index in 0..200 {
        let patient = synth::patient(7, index);
        let bundle = patient.to_bundle().to_string();
        let record = bundle_to_record(&bundle, &REFERENCE_DATE, &ProvenancePolicy::default())
            .unwrap_or_else(|error| panic!("patient {index}: {error}"));
        assert_eq!(record.patient_id, patient.id);
        assert_eq!(
            record.patient_key.as_deref(),
            Some(hex::encode(patient.key.verifying_key().as_bytes()).as_str())
        );
        assert_eq!(value(&record, "age"), &Value::Integer(patient.age));
        assert_eq!(
            value(&record, "sex"),
            &Value::Category(patient.sex.to_string())
        );
        assert_eq!(float(value(&record, "bmi")), patient.bmi);
        assert_eq!(float(value(&record, "systolic_bp")), patient.systolic_bp);
        assert_eq!(float(value(&record, "diastolic_bp")), patient.diastolic_bp);
        // HbA1c reported in mmol/mol comes back in % within the IFCC rounding (1 mmol/mol ≈ 0.09 %).
        match (float(value(&record, "hba1c")), patient.hba1c) {
            (Some(read), Some(truth)) => assert!((read - truth).abs() <= 0.05, "{read} vs {truth}"),
            (read, truth) => assert_eq!(read, truth),
        }
        match (float(value(&record, "ldl")), patient.ldl) {
            (Some(read), Some(truth)) => assert!((read - truth).abs() <= 0.2, "{read} vs {truth}"),
            (read, truth) => assert_eq!(read, truth),
        }
        let Value::Codes(conditions) = value(&record, "conditions") else {
            panic!()
        };
        let has = |prefixes: &[&str]| {
            conditions
                .iter()
                .any(|code| prefixes.iter().any(|p| code.starts_with(p)))
        };
        assert_eq!(has(&["E11", "44054006"]), patient.diabetes);
        assert_eq!(has(&["I10", "38341003"]), patient.hypertension);
        let Value::Codes(medications) = value(&record, "medications") else {
            panic!()
        };
        assert_eq!(medications.contains(&"6809".to_string()), patient.metformin);
        vault.upsert(record).unwrap();
        patients.push(patient);
    }
    vault.save(dir.path()).unwrap();
    let reopened = Vault::open(dir.path()).unwrap();
    assert_eq!(reopened.records(), vault.records());
    assert_eq!(reopened.schema(), &Schema::fhir());
}

fn bundle_with_observation(loinc: &str, value: f64, unit: &str) -> String {
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-06-01"}},
            {"resource": {
                "resourceType": "Observation", "id": "o1", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2025-01-01",
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
            }}
        ]
    })
    .to_string()
}

/// A bundle whose blood pressure is one Observation in the shape of the FHIR R4 example
/// `Observation/blood-pressure` (vital-signs BP profile): panel LOINC 85354-9, systolic
/// 8480-6 and diastolic 8462-4 as components in mm[Hg], with the elements a real export
/// carries and ingest does not read (identifier, interpretation, bodySite, performer).
fn bundle_with_bp_panel(diastolic: serde_json::Value) -> String {
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "example", "gender": "male", "birthDate": "1974-12-25"}},
            {"resource": {
                "resourceType": "Observation",
                "id": "blood-pressure",
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
                "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"}],
                "basedOn": [{"identifier": {"system": "https://acme.org/identifiers", "value": "1234"}}],
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure systolic & diastolic"},
                "subject": {"reference": "Patient/example"},
                "effectiveDateTime": "2012-09-17",
                "performer": [{"reference": "Practitioner/example"}],
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "L", "display": "low"}], "text": "Below low normal"}],
                "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003", "display": "Right arm"}]},
                "component": [
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}, {"system": "http://snomed.info/sct", "code": "271649006", "display": "Systolic blood pressure"}]},
                        "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N", "display": "normal"}]}]
                    },
                    diastolic
                ]
            }}
        ]
    })
    .to_string()
}

#[test]
fn blood_pressure_panel_components_are_read_as_systolic_and_diastolic() {
    let diastolic = serde_json::json!({
        "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
        "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    });
    let record = bundle_to_record(
        &bundle_with_bp_panel(diastolic),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    assert_eq!(float(value(&record, "systolic_bp")), Some(107.0));
    assert_eq!(float(value(&record, "diastolic_bp")), Some(60.0));
}

#[test]
fn panel_component_without_a_value_is_skipped_and_the_rest_is_read() {
    // The diastolic reading could not be taken: the component says why instead of a value.
    let diastolic = serde_json::json!({
        "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
        "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed"}]}
    });
    let record = bundle_to_record(
        &bundle_with_bp_panel(diastolic),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    assert_eq!(float(value(&record, "systolic_bp")), Some(107.0));
    assert_eq!(float(value(&record, "diastolic_bp")), None);
}

#[test]
fn hba1c_in_mmol_per_mol_is_normalised_to_percent() {
    // 53 mmol/mol is the textbook equivalent of 7.0 % (NGSP/IFCC master equation).
    let record = bundle_to_record(
        &bundle_with_observation("4548-4", 53.0, "mmol/mol"),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    let hba1c = float(value(&record, "hba1c")).unwrap();
    assert!((hba1c - 7.0).abs() < 0.02, "{hba1c}");
    assert_eq!(value(&record, "age"), &Value::Integer(55));
}

#[test]
fn ldl_in_mmol_per_litre_is_normalised_to_mg_per_decilitre() {
    // 3.0 mmol/L × 38.67 = 116.0 mg/dL.
    let record = bundle_with_observation("13457-7", 3.0, "mmol/L");
    let record = bundle_to_record(&record, &REFERENCE_DATE, &ProvenancePolicy::default()).unwrap();
    assert!((float(value(&record, "ldl")).unwrap() - 116.01).abs() < 1e-9);
}

#[test]
fn value_in_a_unit_without_conversion_is_dropped_with_a_warning_naming_the_resource() {
    // Systolic pressure in kPa has no conversion here: that value is left out, with a warning
    // naming the resource and both units, and the patient is kept.
    let (record, warnings) = bundle_to_record_with_warnings(
        &bundle_with_observation("8480-6", 16.0, "kPa"),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    assert_eq!(record.patient_id, "p1");
    assert_eq!(float(value(&record, "systolic_bp")), None);
    assert_eq!(value(&record, "age"), &Value::Integer(55));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert!(warning.contains("Observation/o1"), "{warning}");
    assert!(warning.contains("kPa"), "{warning}");
    assert!(warning.contains("mm[Hg]"), "{warning}");
    assert!(warning.contains("dropped"), "{warning}");
}

#[test]
fn signed_bundle_records_its_source() {
    let source = SigningKey::from_bytes(&[9u8; 32]);
    let mut bundle = synth::patient(1, 0).to_bundle();
    sign_bundle(&mut bundle, &source, "2026-01-01T00:00:00Z");
    let record = bundle_to_record(
        &bundle.to_string(),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    assert_eq!(
        record.source,
        Some(hex::encode(source.verifying_key().as_bytes()))
    );
}

#[test]
fn tampered_signed_bundle_is_rejected() {
    let source = SigningKey::from_bytes(&[9u8; 32]);
    let mut bundle = synth::patient(1, 0).to_bundle();
    sign_bundle(&mut bundle, &source, "2026-01-01T00:00:00Z");
    // Change the birth date after signing.
    bundle["entry"][0]["resource"]["birthDate"] = serde_json::json!("1930-01-01");
    let error = bundle_to_record(
        &bundle.to_string(),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(error, FhirError::Provenance(_)), "{error}");
}

#[test]
fn bundle_signed_by_an_untrusted_source_is_rejected() {
    let source = SigningKey::from_bytes(&[9u8; 32]);
    let trusted = SigningKey::from_bytes(&[10u8; 32]);
    let mut bundle = synth::patient(1, 0).to_bundle();
    sign_bundle(&mut bundle, &source, "2026-01-01T00:00:00Z");
    let policy = ProvenancePolicy {
        require_signature: true,
        trusted_sources: Some([hex::encode(trusted.verifying_key().as_bytes())].into()),
    };
    let error = bundle_to_record(&bundle.to_string(), &REFERENCE_DATE, &policy).unwrap_err();
    assert!(
        error.to_string().contains("not a trusted source"),
        "{error}"
    );
}

#[test]
fn unsigned_bundle_is_rejected_when_signatures_are_required() {
    let bundle = synth::patient(1, 0).to_bundle();
    let policy = ProvenancePolicy {
        require_signature: true,
        trusted_sources: None,
    };
    let error = bundle_to_record(&bundle.to_string(), &REFERENCE_DATE, &policy).unwrap_err();
    assert!(matches!(error, FhirError::Provenance(_)));
}

#[test]
fn bad_bundles_in_an_ndjson_file_are_reported_by_line_and_the_rest_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundles.ndjson");
    let lines = [
        synth::patient(3, 0).to_bundle().to_string(),
        "{\"resourceType\": \"Patient\"}".to_string(),
        synth::patient(3, 1).to_bundle().to_string(),
        bundle_with_observation("8480-6", 16.0, "kPa"),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut vault = Vault::new(Schema::fhir());
    let report = ingest_fhir(
        &path,
        &mut vault,
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    // Line 2 has no Bundle and is refused whole; line 4's patient is taken without the
    // reading whose unit has no conversion, which is reported by line.
    assert_eq!(report.accepted, 3);
    assert_eq!(vault.len(), 3);
    let rows: Vec<usize> = report
        .rejected
        .iter()
        .map(|rejected| rejected.location.row)
        .collect();
    assert_eq!(rows, vec![2]);
    let dropped: Vec<usize> = report
        .dropped
        .iter()
        .map(|dropped| dropped.location.row)
        .collect();
    assert_eq!(dropped, vec![4]);
    assert!(
        report.dropped[0].reason.contains("kPa"),
        "{:?}",
        report.dropped
    );
}

#[test]
fn synthetic_population_is_deterministic_per_seed() {
    assert_eq!(
        synth::patient(11, 5).to_bundle(),
        synth::patient(11, 5).to_bundle()
    );
    assert_ne!(
        synth::patient(11, 5).to_bundle(),
        synth::patient(12, 5).to_bundle()
    );
    let date: Date = synth::patient(11, 5).birth_date();
    assert_eq!(date.years_until(&REFERENCE_DATE), synth::patient(11, 5).age);
}
