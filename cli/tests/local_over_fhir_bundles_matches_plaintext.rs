//! `cohortex local` over FHIR R4 bundles written the way EHR exports and the HL7 examples
//! write them (not by `cohortex synth`): an `.ndjson` of Bundles for one node, a directory of
//! `.json` Bundles for the other. Blood pressure comes as a vital-signs panel with components;
//! one reading in an unconvertible unit drops that value, not the patient. The answer is
//! checked against the plaintext computed here.

use std::path::Path;
use std::process::Command;

/// One patient: birth date, sex, systolic reading (value and UCUM unit).
struct Truth {
    birth_date: String,
    sex: &'static str,
    systolic: f64,
    unit: &'static str,
}

/// A Bundle in the shape of the HL7 R4 examples: a Patient and a blood-pressure panel
/// (LOINC 85354-9) whose components are the systolic (8480-6) and diastolic (8462-4)
/// readings, with elements ingest does not read (meta, identifier, category, interpretation).
fn bundle(id: &str, patient: &Truth) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": format!("urn:uuid:{id}"), "resource": {
                "resourceType": "Patient", "id": id,
                "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": id}],
                "gender": patient.sex, "birthDate": patient.birth_date
            }},
            {"fullUrl": format!("urn:uuid:bp-{id}"), "resource": {
                "resourceType": "Observation", "id": format!("bp-{id}"),
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}]},
                "subject": {"reference": format!("Patient/{id}")},
                "effectiveDateTime": "2025-03-02T09:30:00Z",
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                     "valueQuantity": {"value": patient.systolic, "unit": patient.unit, "system": "http://unitsofmeasure.org", "code": patient.unit}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                     "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                     "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}]}
                ]
            }}
        ]
    })
}

fn population(node: usize) -> Vec<Truth> {
    (0..30)
        .map(|i| {
            let year = 1940 + (node * 30 + i) * 2 % 60;
            Truth {
                birth_date: format!("{year}-0{}-15", 1 + i % 9),
                sex: if i % 3 == 0 { "male" } else { "female" },
                systolic: 110.0 + (i * 3 % 50) as f64,
                // One reading per node in kPa, which has no conversion here: dropped.
                unit: if i == 7 { "kPa" } else { "mm[Hg]" },
            }
        })
        .collect()
}

/// Age in whole years on 2026-01-01.
fn age(birth_date: &str) -> i64 {
    let year: i64 = birth_date[..4].parse().unwrap();
    // Every birthday here falls after 1 January, so it has not come yet on 2026-01-01.
    2026 - year - 1
}

fn local(dir: &Path, sources: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortex"));
    command.arg("local");
    for source in sources {
        command.arg("--node-data").arg(source);
    }
    command
        .args(extra)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("HOME", std::env::temp_dir().join("cohortex-test-home"))
        .output()
        .unwrap()
}

#[test]
fn local_over_fhir_bundles_matches_the_plaintext_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1: one .ndjson file, one Bundle per line.
    let ndjson = dir.path().join("site-1.ndjson");
    let first = population(0);
    let lines: Vec<String> = first
        .iter()
        .enumerate()
        .map(|(i, patient)| bundle(&format!("a{i}"), patient).to_string())
        .collect();
    std::fs::write(&ndjson, lines.join("\n") + "\n").unwrap();
    // Node 2: a directory of pretty-printed .json Bundles.
    let folder = dir.path().join("site-2");
    std::fs::create_dir(&folder).unwrap();
    let second = population(1);
    for (i, patient) in second.iter().enumerate() {
        let text = serde_json::to_string_pretty(&bundle(&format!("b{i}"), patient)).unwrap();
        std::fs::write(folder.join(format!("b{i:02}.json")), text).unwrap();
    }

    let output = local(
        dir.path(),
        &[&ndjson, &folder],
        &[
            "--reference-date",
            "2026-01-01",
            "--query",
            "SELECT COUNT(*), AVG(systolic_bp) FROM patients WHERE age >= 50",
            // ε = 100000: every noise draw is zero but with probability about 1e-7 (see
            // local_federation_json_matches_plaintext.rs), so the answer is the plaintext one.
            "--epsilon",
            "100000",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The kPa readings are dropped with a warning naming the resource; their patients stay.
    assert!(
        stderr.contains("value dropped") && stderr.contains("Observation/bp-a7"),
        "{stderr}"
    );
    assert!(stderr.contains("Observation/bp-b7"), "{stderr}");

    let everyone: Vec<&Truth> = first.iter().chain(&second).collect();
    let older: Vec<&&Truth> = everyone
        .iter()
        .filter(|patient| age(&patient.birth_date) >= 50)
        .collect();
    let readings: Vec<f64> = older
        .iter()
        .filter(|patient| patient.unit == "mm[Hg]")
        .map(|patient| patient.systolic)
        .collect();
    let mean = readings.iter().sum::<f64>() / readings.len() as f64;
    assert!(
        readings.len() < older.len(),
        "the test drops a reading among the counted"
    );

    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &json["rows"][0];
    assert_eq!(row[0].as_f64().unwrap(), older.len() as f64, "{json}");
    assert!(
        (row[5].as_f64().unwrap() - mean).abs() < 0.01,
        "{} vs {mean}",
        row[5]
    );
    assert_eq!(json["receipt"]["verified"], serde_json::json!(true));
}

#[test]
fn local_over_fhir_without_a_reference_date_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.json");
    let patient = Truth {
        birth_date: "1970-05-05".into(),
        sex: "female",
        systolic: 120.0,
        unit: "mm[Hg]",
    };
    std::fs::write(&file, bundle("x", &patient).to_string()).unwrap();
    let output = local(
        dir.path(),
        &[&file, &file],
        &["--query", "SELECT COUNT(*) FROM patients"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--reference-date YYYY-MM-DD"), "{stderr}");
}

#[test]
fn local_mixing_fhir_and_tables_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.json");
    let table = dir.path().join("two.csv");
    std::fs::write(&file, "{}").unwrap();
    std::fs::write(&table, "patient_id\n").unwrap();
    let output = local(
        dir.path(),
        &[&file, &table],
        &[
            "--reference-date",
            "2026-01-01",
            "--query",
            "SELECT COUNT(*) FROM patients",
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 of 2 sources are FHIR bundles"),
        "{stderr}"
    );
}
