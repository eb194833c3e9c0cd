//! `cohortex synth` writes FHIR R4 bundles that a FHIR vault ingests, the same for a seed.

use std::process::Command;

use compute_node::fhir::ProvenancePolicy;
use compute_node::ingest::ingest_fhir;
use compute_node::synth::REFERENCE_DATE;
use compute_node::{Schema, Vault};

fn synth(out: &std::path::Path, seed: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(["synth", "--patients", "250", "--seed", seed, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn synth_writes_a_deterministic_fhir_population() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let output = synth(&first, "5", &["--signed"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("wrote 250 patients"));
    assert!(synth(&second, "5", &["--signed"]).status.success());
    let read = |dir: &std::path::Path| std::fs::read(dir.join("bundles-0000.ndjson")).unwrap();
    assert_eq!(read(&first), read(&second), "same seed, same bytes");

    let mut vault = Vault::new(Schema::fhir());
    let policy = ProvenancePolicy {
        require_signature: true,
        trusted_sources: Some(
            [hex::encode(
                compute_node::synth::source_key(5)
                    .verifying_key()
                    .as_bytes(),
            )]
            .into(),
        ),
    };
    let report = ingest_fhir(&first, &mut vault, &REFERENCE_DATE, &policy).unwrap();
    assert_eq!(report.accepted, 250, "{:?}", report.rejected);
    assert!(report.rejected.is_empty());
}

#[test]
fn synth_without_patients_says_what_to_fix() {
    let output = Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(["synth", "--out", "/tmp/never"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--patients"));
}
