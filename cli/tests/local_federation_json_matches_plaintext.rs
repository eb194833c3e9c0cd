//! `cohortex local --node-data … --schema … --query … --json`: the full flow over gRPC on
//! loopback over the user's own CSV files, checked against the plaintext answer.

use std::path::Path;
use std::process::Command;

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
    local_as(dir, files, query, epsilon, &["--json"])
}

fn local_as(
    dir: &Path,
    files: &[std::path::PathBuf],
    query: &str,
    epsilon: &str,
    format: &[&str],
) -> std::process::Output {
    let manifest = dir.join("manifest.toml");
    std::fs::write(&manifest, testkit::manifests::BLOOD_PRESSURE).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortex"));
    command.arg("local");
    for file in files {
        command.arg("--node-data").arg(file);
    }
    command
        .arg("--schema")
        .arg(&manifest)
        .args(["--query", query, "--epsilon", epsilon])
        .args(format)
        .arg("--state-dir")
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
        // plaintext one. The noise itself is tested in query/tests/differential_privacy.rs.
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
        serde_json::json!([
            "sex",
            "count(*)",
            "count(*)_se",
            "count(*)_noise_se",
            "count(*)_ci_low",
            "count(*)_ci_high",
            "avg(sbp)",
            "avg(sbp)_se",
            "avg(sbp)_noise_se",
            "avg(sbp)_ci_low",
            "avg(sbp)_ci_high"
        ])
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
            (row[6].as_f64().unwrap() - mean).abs() < 0.01,
            "{} vs {mean}",
            row[6]
        );
        // The 95 % interval holds the released mean.
        assert!(row[9].as_f64().unwrap() <= row[6].as_f64().unwrap());
        assert!(row[6].as_f64().unwrap() <= row[10].as_f64().unwrap());
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

#[test]
fn local_arrow_output_matches_the_plaintext_answer_and_carries_units() {
    use arrow_array::{Array, BooleanArray, Float64Array, StringArray};
    use arrow_schema::DataType;
    let dir = tempfile::tempdir().unwrap();
    let (files, rows) = write_inputs(dir.path());
    let output = local_as(
        dir.path(),
        &files,
        "SELECT sex, COUNT(*), AVG(sbp), VAR_SAMP(sbp) FROM patients WHERE age >= 30 GROUP BY sex",
        "100000",
        &["--format", "arrow"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(output.stdout), None)
            .unwrap();
    let schema = reader.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    // Every aggregate is followed by its error bar (issue 25).
    let mut expected = vec!["sex".to_string()];
    for aggregate in ["count(*)", "avg(sbp)", "var_samp(sbp)"] {
        expected.push(aggregate.to_string());
        for suffix in ["_se", "_noise_se", "_ci_low", "_ci_high"] {
            expected.push(format!("{aggregate}{suffix}"));
        }
    }
    expected.push("_suppressed".to_string());
    assert_eq!(names, expected);
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(types[0], &DataType::Utf8);
    assert!(types[1..types.len() - 1]
        .iter()
        .all(|kind| kind == &&DataType::Float64));
    assert_eq!(types[types.len() - 1], &DataType::Boolean);
    let at = |name: &str| schema.index_of(name).unwrap();
    let unit = |name: &str| {
        schema
            .field(at(name))
            .metadata()
            .get("cohortex.unit")
            .cloned()
    };
    assert_eq!(unit("count(*)").as_deref(), Some("{patients}"));
    assert_eq!(
        unit("avg(sbp)").as_deref(),
        Some("mm[Hg]"),
        "the manifest's unit of sbp"
    );
    assert_eq!(unit("var_samp(sbp)").as_deref(), Some("(mm[Hg])2"));
    // An error bar is in its value's unit.
    assert_eq!(unit("avg(sbp)_ci_low").as_deref(), Some("mm[Hg]"));
    let kind = |name: &str| {
        schema
            .field(at(name))
            .metadata()
            .get("cohortex.kind")
            .cloned()
    };
    assert_eq!(kind("avg(sbp)").as_deref(), Some("avg"));
    assert_eq!(kind("avg(sbp)_noise_se").as_deref(), Some("noise_se"));
    let metadata = schema.metadata();
    assert_eq!(metadata["cohortex.receipt_verified"], "true");
    assert_eq!(metadata["cohortex.epsilon"], "100000");
    assert_eq!(metadata["cohortex.receipt"].len(), 64);

    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    let sexes = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let counts = batch
        .column(at("count(*)"))
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let means = batch
        .column(at("avg(sbp)"))
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let variances = batch
        .column(at("var_samp(sbp)"))
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let suppressed = batch
        .column(at("_suppressed"))
        .as_any()
        .downcast_ref::<BooleanArray>()
        .unwrap();
    assert_eq!(batch.num_rows(), 2);
    for (index, sex) in ["female", "male"].into_iter().enumerate() {
        let values: Vec<f64> = rows
            .iter()
            .filter(|r| r.1 == sex && r.0 >= 30.0)
            .map(|r| r.2)
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert_eq!(sexes.value(index), sex);
        assert_eq!(counts.value(index), n);
        assert!(
            (means.value(index) - mean).abs() < 0.01,
            "{} vs {mean}",
            means.value(index)
        );
        assert!(
            (variances.value(index) - variance).abs() < 0.05 * variance,
            "{} vs {variance}",
            variances.value(index)
        );
        assert!(!suppressed.value(index));
        assert!(!means.is_null(index));
    }
}

#[test]
fn local_with_json_and_format_arrow_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    let output = local_as(
        dir.path(),
        &files,
        "SELECT COUNT(*) FROM patients",
        "1",
        &["--json", "--format", "arrow"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--json and --format arrow"), "{stderr}");
}

/// Issue 25: `cohortex local` prints a model as a coefficient table, and every released
/// aggregate with its 95 % interval.
#[test]
fn local_prints_a_coefficient_table_and_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    let output = local_as(
        dir.path(),
        &files,
        "SELECT LINEAR(sbp ~ age) FROM patients",
        "100000",
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for column in [
        "term",
        "estimate",
        "std_error",
        "p_value",
        "ci_low",
        "ci_high",
    ] {
        assert!(stdout.contains(column), "no {column} in:\n{stdout}");
    }
    let age = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("age"))
        .unwrap_or_else(|| panic!("no row for age in:\n{stdout}"));
    // sbp = 100 + 0.5·age + a small residual: the slope prints as about 0.5.
    assert!(age.contains("0.5"), "{age}");

    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_inputs(dir.path());
    let output = local_as(
        dir.path(),
        &files,
        "SELECT COUNT(*), AVG(sbp) FROM patients",
        "1",
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("95 % interval"), "{stdout}");
}
