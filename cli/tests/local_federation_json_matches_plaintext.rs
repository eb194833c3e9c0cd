//! `cohortex local --node-data … --schema … --query … --json`: the full flow over gRPC on
//! loopback over the user's own CSV files, checked against the plaintext answer.

use std::path::Path;
use std::process::Command;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]

[[columns]]
name = "sbp"
type = "float"
unit = "mm[Hg]"
bounds = [60.0, 260.0]
decimals = 1
"#;

fn write_inputs(dir: &Path) -> (Vec<std::path::PathBuf>, Vec<(f64, &'static str, f64)>) {
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for node in 0..3 {
        let mut csv = String::from("patient_id,age,sex,sbp\n");
        for i in 0..40 {
            let age = 20 + ((node * 40 + i) * 7) % 60;
            let sex = if i % 2 == 0 { "female" } else { "male" };
            let sbp = 100.0 + 0.5 * age as f64 + (i % 5) as f64 * 1.3;
            csv.push_str(&format!("n{node}-{i},{age},{sex},{sbp:.1}\n"));
            rows.push((age as f64, sex, (sbp * 10.0).round() / 10.0));
        }
        let path = dir.join(format!("node{node}.csv"));
        std::fs::write(&path, csv).unwrap();
        files.push(path);
    }
    (files, rows)
}

fn local(
    dir: &Path,
    files: &[std::path::PathBuf],
    query: &str,
    epsilon: &str,
) -> std::process::Output {
    let manifest = dir.join("manifest.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortex"));
    command.arg("local");
    for file in files {
        command.arg("--node-data").arg(file);
    }
    command
        .arg("--schema")
        .arg(&manifest)
        .args([
            "--query",
            query,
            "--epsilon",
            epsilon,
            "--json",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .env("HOME", std::env::temp_dir().join("cohortex-test-home"))
        .output()
        .unwrap()
}

#[test]
fn local_federation_json_matches_the_plaintext_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rows) = write_inputs(dir.path());
    let output = local(
        dir.path(),
        &files,
        "SELECT sex, COUNT(*), AVG(sbp) FROM patients WHERE age >= 30 GROUP BY sex",
        // ε = 100000: the noise scale of every slot is below 0.1 fixed-point unit, so each draw
        // is zero but with probability about 1e-7 and the answer can be compared with the
        // plaintext one. The noise itself is tested in compute-node/tests/differential_privacy.rs.
        "100000",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["columns"],
        serde_json::json!(["sex", "count(*)", "avg(sbp)"])
    );
    assert_eq!(json["receipt"]["verified"], serde_json::json!(true));
    assert_eq!(json["epsilon_spent"], serde_json::json!(100000.0));
    assert_eq!(json["receipt"]["id"].as_str().unwrap().len(), 64);
    for (row, sex) in json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["female", "male"])
    {
        let values: Vec<f64> = rows
            .iter()
            .filter(|r| r.1 == sex && r.0 >= 30.0)
            .map(|r| r.2)
            .collect();
        assert_eq!(row[0], serde_json::json!(sex));
        assert_eq!(row[1].as_f64().unwrap(), values.len() as f64);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(
            (row[2].as_f64().unwrap() - mean).abs() < 0.01,
            "{} vs {mean}",
            row[2]
        );
    }
    // The run's ledger passes an independent audit.
    let verify = Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(["ledger", "verify"])
        .arg(dir.path().join("state/ledger.db"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn local_with_a_row_level_query_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    let output = local(dir.path(), &files[..1], "SELECT * FROM patients", "1");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--query") && stderr.contains("row-level"),
        "{stderr}"
    );
}

#[test]
fn local_with_one_node_file_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    let output = local(
        dir.path(),
        &files[..1],
        "SELECT COUNT(*) FROM patients",
        "1",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--node-data") && stderr.contains("at least two"),
        "{stderr}"
    );
}

#[test]
fn local_with_a_bad_epsilon_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    for bad in ["0", "-1", "lots", "NaN"] {
        let output = local(
            dir.path(),
            &files[..1],
            "SELECT COUNT(*) FROM patients",
            bad,
        );
        assert!(!output.status.success(), "--epsilon {bad} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--epsilon"), "--epsilon {bad}: {stderr}");
    }
}
