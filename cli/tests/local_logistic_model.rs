//! `cohortex local --query "SELECT LOGISTIC(…)"` (issue 25): the CLI fits a logistic model by
//! Newton–Raphson steps, each a full release over gRPC (encrypted, proven, noised,
//! key-switched, receipted), and at a large ε lands within 0.5 % of the textbook
//! maximum-likelihood fit: IRLS written here with nalgebra's LU, over the CSV rows themselves.

use std::path::Path;
use std::process::Command;

use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [18, 100]

[[columns]]
name = "smoker"
type = "bool"

[[columns]]
name = "stroke"
type = "bool"
"#;

/// (age, smoker, stroke) per patient: logit P(stroke) = −6 + 0.07·age + 0.8·smoker.
fn write_inputs(dir: &Path) -> (Vec<std::path::PathBuf>, Vec<[f64; 3]>) {
    let mut rng = ChaCha20Rng::seed_from_u64(25);
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for node in 0..3 {
        let mut csv = String::from("patient_id,age,smoker,stroke\n");
        for i in 0..500 {
            let age = rng.gen_range(30..90);
            let smoker = rng.gen_bool(0.3);
            let z = -6.0 + 0.07 * f64::from(age) + if smoker { 0.8 } else { 0.0 };
            let stroke = rng.gen_bool(1.0 / (1.0 + (-z).exp()));
            csv.push_str(&format!("n{node}-{i},{age},{smoker},{stroke}\n"));
            rows.push([
                f64::from(age),
                f64::from(u8::from(smoker)),
                f64::from(u8::from(stroke)),
            ]);
        }
        let path = dir.join(format!("node{node}.csv"));
        std::fs::write(&path, csv).unwrap();
        files.push(path);
    }
    (files, rows)
}

/// IRLS: β ← β + (XᵀWX)⁻¹Xᵀ(y − μ) over X = (1, age, smoker), 30 steps from 0.
fn textbook_fit(rows: &[[f64; 3]]) -> (Vec<f64>, Vec<f64>) {
    let x = DMatrix::from_fn(rows.len(), 3, |row, column| match column {
        0 => 1.0,
        _ => rows[row][column - 1],
    });
    let y = DVector::from_fn(rows.len(), |row, _| rows[row][2]);
    let mut beta = DVector::zeros(3);
    let mut information = DMatrix::zeros(3, 3);
    for _ in 0..30 {
        let mu = (&x * &beta).map(|z: f64| 1.0 / (1.0 + (-z).exp()));
        let weights = mu.map(|m| m * (1.0 - m));
        let weighted =
            DMatrix::from_fn(rows.len(), 3, |row, column| weights[row] * x[(row, column)]);
        information = x.transpose() * weighted;
        let score = x.transpose() * (&y - &mu);
        beta += information.clone().lu().solve(&score).unwrap();
    }
    let covariance = information.try_inverse().unwrap();
    (
        beta.iter().copied().collect(),
        (0..3).map(|i| covariance[(i, i)].sqrt()).collect(),
    )
}

#[test]
fn local_fits_a_logistic_model_within_half_a_percent_of_the_textbook_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rows) = write_inputs(dir.path());
    let (beta, se) = textbook_fit(&rows);
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortex"));
    command.arg("local");
    for file in &files {
        command.arg("--node-data").arg(file);
    }
    let output = command
        .arg("--schema")
        .arg(&manifest)
        .args([
            "--query",
            "SELECT LOGISTIC(stroke ~ age + smoker) FROM patients",
            "--epsilon",
            "600000",
            "--steps",
            "6",
            "--json",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HOME", std::env::temp_dir().join("cohortex-test-home"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["steps"], serde_json::json!(6));
    assert_eq!(json["epsilon_spent"].as_f64().unwrap(), 600000.0);
    let columns: Vec<&str> = json["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| column.as_str().unwrap())
        .collect();
    let at = |name: &str| columns.iter().position(|column| *column == name).unwrap();
    for (position, row) in json["rows"].as_array().unwrap().iter().enumerate() {
        let estimate = row[at("estimate")].as_f64().unwrap();
        let std_error = row[at("std_error")].as_f64().unwrap();
        assert!(
            (estimate - beta[position]).abs() <= 0.005 * beta[position].abs(),
            "term {position}: {estimate} vs the textbook {}",
            beta[position]
        );
        assert!(
            (std_error - se[position]).abs() <= 0.005 * se[position],
            "term {position}: se {std_error} vs {}",
            se[position]
        );
        let odds = row[at("odds_ratio")].as_f64().unwrap();
        assert!((odds - estimate.exp()).abs() < 1e-9 * odds);
    }
    assert_eq!(json["receipt"]["verified"], serde_json::json!(true));
}
