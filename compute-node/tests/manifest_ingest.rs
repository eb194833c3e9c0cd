//! CSV and Parquet ingest with a schema manifest: every manifest error, one test each.

use std::path::{Path, PathBuf};

use compute_node::ingest::{ingest_table, IngestError};
use compute_node::schema::SchemaError;
use compute_node::{Schema, Vault};

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"
max_groups = 16

[[columns]]
name = "age"
type = "integer"
unit = "a"
bounds = [0, 120]
bins = [0, 40, 65, 120]

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]

[[columns]]
name = "hba1c"
type = "float"
unit = "%"
coding = "loinc:4548-4"
bounds = [3.0, 20.0]
decimals = 1

[[columns]]
name = "smoker"
type = "bool"

[[columns]]
name = "weight"
type = "float"
unit = "kg"
"#;

fn schema() -> Schema {
    Schema::from_toml(MANIFEST, "test manifest").unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn valid_csv_is_ingested_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ok.csv",
        "patient_id,age,sex,hba1c,smoker,weight\na,50,female,6.1,true,70.5\nb,61,male,,no,\n",
    );
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 2);
    assert!(report.rejected.is_empty());
    assert_eq!(vault.len(), 2);
}

#[test]
fn value_outside_declared_bounds_is_rejected_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bounds.csv",
        "patient_id,age,sex,hba1c\na,50,female,6.1\nb,61,male,25.0\nc,40,male,5.0\n",
    );
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 2, "the good rows are kept");
    let [rejected] = report.rejected.as_slice() else {
        panic!("{:?}", report.rejected)
    };
    assert_eq!(rejected.location.row, 2);
    assert_eq!(rejected.location.column.as_deref(), Some("hba1c"));
    let message = rejected.to_string();
    assert!(
        message.contains("bounds.csv") && message.contains("row 2") && message.contains("hba1c"),
        "{message}"
    );
    assert!(message.contains("[3, 20]"), "{message}");
}

#[test]
fn unknown_column_fails_the_file_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "unknown.csv",
        "patient_id,age,sex,ssn\na,50,female,123\n",
    );
    let mut vault = Vault::new(schema());
    let error = ingest_table(&path, &mut vault).unwrap_err();
    let IngestError::Layout { location, reason } = &error else {
        panic!("{error}")
    };
    assert_eq!(location.column.as_deref(), Some("ssn"));
    assert_eq!(location.row, 0);
    assert!(reason.contains("unknown column"), "{reason}");
    assert!(error.to_string().contains("unknown.csv"));
    assert!(vault.is_empty(), "nothing of a refused file is taken");
}

#[test]
fn wrong_type_is_rejected_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "types.csv",
        "patient_id,age,sex\na,fifty,female\nb,51,male\n",
    );
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 1);
    let [rejected] = report.rejected.as_slice() else {
        panic!()
    };
    assert_eq!(
        (rejected.location.row, rejected.location.column.as_deref()),
        (1, Some("age"))
    );
    assert!(
        rejected.reason.contains("not an integer"),
        "{}",
        rejected.reason
    );
}

#[test]
fn undeclared_category_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "category.csv", "patient_id,age,sex\na,50,f\n");
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    let [rejected] = report.rejected.as_slice() else {
        panic!()
    };
    assert_eq!(rejected.location.column.as_deref(), Some("sex"));
    assert!(
        rejected.reason.contains("female, male"),
        "{}",
        rejected.reason
    );
}

#[test]
fn missing_id_column_fails_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "noid.csv", "age,sex\n50,female\n");
    let error = ingest_table(&path, &mut Vault::new(schema())).unwrap_err();
    assert!(error.to_string().contains("patient_id"), "{error}");
}

#[test]
fn missing_non_nullable_column_fails_the_file() {
    let manifest = MANIFEST.replace(
        "type = \"category\"",
        "type = \"category\"\nnullable = false",
    );
    let schema = Schema::from_toml(&manifest, "m").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "nosex.csv", "patient_id,age\na,50\n");
    let error = ingest_table(&path, &mut Vault::new(schema)).unwrap_err();
    assert!(
        error.to_string().contains("`sex`") && error.to_string().contains("not nullable"),
        "{error}"
    );
}

#[test]
fn duplicate_patient_id_is_rejected_on_its_second_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dup.csv", "patient_id,age\na,50\na,51\n");
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 1);
    assert_eq!(report.rejected[0].location.row, 2);
    assert!(report.rejected[0].reason.contains("earlier row"));
}

#[test]
fn ingest_refuses_duplicate_patient_keys() {
    // One person's key on two rows (two record numbers for one patient, say) would count
    // them twice against one consent and one personal budget.
    let manifest = MANIFEST.replace(
        "id_column = \"patient_id\"",
        "id_column = \"patient_id\"\nkey_column = \"patient_key\"",
    );
    let schema = Schema::from_toml(&manifest, "keyed manifest").unwrap();
    let key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .as_bytes(),
    );
    let other = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[8; 32])
            .verifying_key()
            .as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "keys.csv",
        &format!("patient_id,patient_key,age\na,{key},50\nb,{key},51\nc,{other},52\n"),
    );
    let mut vault = Vault::new(schema);
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 2, "{:?}", report.rejected);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].location.row, 2);
    assert!(
        report.rejected[0].reason.contains("one person, one row"),
        "{}",
        report.rejected[0].reason
    );
    assert!(vault.record("b").is_none());
    assert_eq!(vault.len(), 2);
    // A patient's own row may be replaced with the same key.
    let again = write(
        dir.path(),
        "again.csv",
        &format!("patient_id,patient_key,age\na,{key},53\n"),
    );
    let report = ingest_table(&again, &mut vault).unwrap();
    assert_eq!(report.accepted, 1, "{:?}", report.rejected);
}

#[test]
fn ragged_csv_row_fails_the_file_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ragged.csv",
        "patient_id,age\na,50\nb,51,extra\n",
    );
    let error = ingest_table(&path, &mut Vault::new(schema())).unwrap_err();
    assert!(error.to_string().contains("row 2"), "{error}");
}

#[test]
fn parquet_input_is_checked_like_csv() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    let mut frame = df!(
        "patient_id" => ["a", "b"],
        "age" => [50i64, 130],
        "hba1c" => [Some(6.5f64), None],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut frame)
        .unwrap();
    let mut vault = Vault::new(schema());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert_eq!(report.accepted, 1);
    let [rejected] = report.rejected.as_slice() else {
        panic!()
    };
    assert_eq!(
        (rejected.location.row, rejected.location.column.as_deref()),
        (2, Some("age"))
    );
}

#[test]
fn manifest_with_an_unknown_key_is_refused() {
    let error = Schema::from_toml(
        &MANIFEST.replace("unit = \"kg\"", "unit = \"kg\"\nbounds_typo = 3"),
        "m.toml",
    )
    .unwrap_err();
    assert!(matches!(error, SchemaError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("bounds_typo"), "{error}");
}

#[test]
fn manifest_bins_must_cover_the_bounds() {
    let error = Schema::from_toml(
        &MANIFEST.replace("bins = [0, 40, 65, 120]", "bins = [18, 40, 65]"),
        "m.toml",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("`age`") && error.to_string().contains("bins"),
        "{error}"
    );
}

#[test]
fn manifest_category_without_categories_is_refused() {
    let error = Schema::from_toml(
        &MANIFEST.replace("categories = [\"female\", \"male\"]", ""),
        "m.toml",
    )
    .unwrap_err();
    assert!(error.to_string().contains("`sex`"), "{error}");
}

#[test]
fn manifest_of_another_version_is_refused() {
    let error =
        Schema::from_toml(&MANIFEST.replace("version = 1", "version = 2"), "m.toml").unwrap_err();
    assert!(error.to_string().contains("version 2"), "{error}");
}
