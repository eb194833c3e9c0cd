//! Local evaluation: consent filtering, participant counting and clipping.

use compute_node::combine::sum_vectors;
use compute_node::ingest::ingest_table;
use compute_node::{combine, compile, evaluate, ConsentBook, Schema, Vault};

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]

[[columns]]
name = "ldl"
type = "float"
bounds = [20.0, 400.0]
decimals = 1
"#;

fn vault(rows: &str) -> Vault {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    std::fs::write(&path, format!("patient_id,age,ldl\n{rows}")).unwrap();
    let mut vault = Vault::new(Schema::from_toml(MANIFEST, "m").unwrap());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    vault
}

fn answer(vault: &Vault, consents: &ConsentBook, sql: &str) -> (u64, Vec<f64>) {
    let plan = compile(sql, vault.schema()).unwrap();
    let statistics = evaluate(&plan, vault, consents, "research").unwrap();
    let answer = combine(
        &plan,
        &sum_vectors(std::slice::from_ref(&statistics.values)),
    )
    .unwrap();
    (
        answer.participants,
        answer.rows[0]
            .iter()
            .map(|cell| cell.as_f64().unwrap_or(f64::NAN))
            .collect(),
    )
}

#[test]
fn patient_who_revoked_is_not_counted() {
    let vault = vault("a,40,100\nb,50,200\nc,60,300\n");
    let mut consents = ConsentBook::everyone(&vault, "research");
    let (participants, row) = answer(&vault, &consents, "SELECT COUNT(*), SUM(ldl) FROM patients");
    assert_eq!((participants, row.clone()), (3, vec![3.0, 600.0]));
    consents.revoke("c", "research");
    let (participants, row) = answer(&vault, &consents, "SELECT COUNT(*), SUM(ldl) FROM patients");
    assert_eq!(participants, 2);
    assert_eq!(row, vec![2.0, 300.0]);
}

#[test]
fn consent_to_another_purpose_does_not_count() {
    let vault = vault("a,40,100\nb,50,200\n");
    let mut consents = ConsentBook::new();
    consents.grant("a", "research");
    consents.grant("b", "marketing");
    let (participants, row) = answer(&vault, &consents, "SELECT COUNT(*) FROM patients");
    assert_eq!((participants, row), (1, vec![1.0]));
}

#[test]
fn every_consenting_patient_counts_as_a_participant_matching_or_not() {
    let vault = vault("a,40,100\nb,50,200\nc,60,300\n");
    let consents = ConsentBook::everyone(&vault, "research");
    let (participants, row) = answer(
        &vault,
        &consents,
        "SELECT COUNT(*) FROM patients WHERE age >= 55",
    );
    assert_eq!(participants, 3);
    assert_eq!(row, vec![1.0]);
}

#[test]
fn values_beyond_the_query_bounds_are_clipped() {
    // A vault that stores raw values (bounds wider than the query's) and a plan whose codec
    // clips to [20, 400]: values 10 and 900 count as 20 and 400.
    let wide = MANIFEST.replace("bounds = [20.0, 400.0]", "bounds = [0.0, 1000.0]");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    std::fs::write(&path, "patient_id,age,ldl\na,40,10\nb,50,900\nc,60,150\n").unwrap();
    let mut vault = Vault::new(Schema::from_toml(&wide, "m").unwrap());
    ingest_table(&path, &mut vault).unwrap();
    let narrow = Schema::from_toml(MANIFEST, "m").unwrap();
    let plan = compile("SELECT SUM(ldl), AVG(ldl) FROM patients", &narrow).unwrap();
    let consents = ConsentBook::everyone(&vault, "research");
    let statistics = evaluate(&plan, &vault, &consents, "research").unwrap();
    assert_eq!(statistics.clipped, vec![("ldl".to_string(), 2)]);
    let answer = combine(&plan, &sum_vectors(&[statistics.values])).unwrap();
    assert_eq!(answer.rows[0][0].as_f64(), Some(20.0 + 400.0 + 150.0));
    assert_eq!(answer.rows[0][1].as_f64(), Some(570.0 / 3.0));
}

#[test]
fn missing_values_are_left_out_of_their_aggregates_only() {
    let vault = vault("a,40,100\nb,50,\nc,60,300\n");
    let consents = ConsentBook::everyone(&vault, "research");
    let (_, row) = answer(
        &vault,
        &consents,
        "SELECT COUNT(*), COUNT(ldl), AVG(ldl), AVG(age) FROM patients",
    );
    assert_eq!(row, vec![3.0, 2.0, 200.0, 50.0]);
}

#[test]
fn offset_encoding_handles_values_at_and_between_fixed_point_steps() {
    // Textbook sample variance of {100.5, 200.25, 300}: mean 200.25, s² = 9950.0625 / ... computed
    // by hand: deviations −99.75, 0, 99.75 → Σd² = 19900.125, s² = 9950.0625. LDL keeps one
    // decimal, so 200.25 is encoded as 200.3 (round half away from zero).
    let vault = vault("a,40,100.5\nb,50,200.25\nc,60,300\n");
    let consents = ConsentBook::everyone(&vault, "research");
    let (_, row) = answer(
        &vault,
        &consents,
        "SELECT AVG(ldl), VAR_SAMP(ldl) FROM patients",
    );
    let encoded = [100.5f64, 200.3, 300.0];
    let mean = encoded.iter().sum::<f64>() / 3.0;
    let variance = encoded.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0;
    assert!((row[0] - mean).abs() < 1e-9, "{} vs {mean}", row[0]);
    assert!((row[1] - variance).abs() < 1e-6, "{} vs {variance}", row[1]);
}
