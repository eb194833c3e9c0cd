//! Blind feasibility search on one node (issue 13, item 1): the count a recruiter decrypts
//! equals the plaintext count of the same criteria, computed here directly from the records;
//! the minimum cohort and the noise are applied under encryption; and malformed criteria or
//! TFHE material are refused with the field named.
//!
//! One recruiter key is shared by every test of this file (key generation takes seconds).

#![cfg(feature = "tfhe")]

use std::sync::OnceLock;

use compute_node::feasibility::{
    evaluate_feasibility, Criterion, Domain, EncryptedCriteria, FeasibilityError, ReleaseRule,
};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{ConsentBook, Schema, Vault};
use zk::fhe::{EncryptedBit, EncryptedCount, EvaluationKey, Evaluator, FheError, FheSecretKey};

const PURPOSE: &str = "trial_feasibility";

struct Keys {
    secret: FheSecretKey,
    evaluation_bytes: Vec<u8>,
    evaluator: Evaluator,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = FheSecretKey::generate();
        let evaluation_bytes = secret.evaluation_key().to_bytes();
        let evaluator = EvaluationKey::from_bytes(&evaluation_bytes)
            .expect("a fresh key decodes")
            .expand();
        Keys {
            secret,
            evaluation_bytes,
            evaluator,
        }
    })
}

fn vault(patients: u64) -> Vault {
    let mut vault = Vault::new(Schema::fhir());
    for index in 0..patients {
        let bundle = synth::patient(31, index).to_bundle().to_string();
        let record = bundle_to_record(&bundle, &REFERENCE_DATE, &ProvenancePolicy::default())
            .expect("synthetic bundles are valid");
        vault.upsert(record).expect("synthetic records fit");
    }
    vault
}

fn column(vault: &Vault, name: &str) -> usize {
    vault
        .schema()
        .columns
        .iter()
        .position(|column| column.name == name)
        .expect("a fhir column")
}

/// Women aged 50 to 79 with type 2 diabetes (ICD-10 E11 or SNOMED 44054006), counted
/// directly from the records.
fn plaintext_women_50_to_80_with_diabetes(vault: &Vault, consents: &ConsentBook) -> u64 {
    let (age, sex, conditions) = (
        column(vault, "age"),
        column(vault, "sex"),
        column(vault, "conditions"),
    );
    vault
        .records()
        .iter()
        .filter(|record| consents.covers(&record.patient_id, PURPOSE))
        .filter(|record| {
            let age_ok = record.values[age]
                .as_f64()
                .is_some_and(|a| (50.0..80.0).contains(&a));
            let woman = matches!(&record.values[sex], Value::Category(s) if s == "female");
            let diabetic = matches!(&record.values[conditions], Value::Codes(codes)
                if codes.iter().any(|c| c.starts_with("E11") || c.starts_with("44054006")));
            age_ok && woman && diabetic
        })
        .count() as u64
}

fn women_50_to_80_with_diabetes(schema: &Schema) -> Vec<Criterion> {
    [
        "age 50..80 step 5",
        "sex in female",
        "conditions has E11,44054006 among E10,E11,E13,44054006,I10,38341003,J45",
    ]
    .iter()
    .map(|text| Criterion::parse(text, schema).expect("criteria parse"))
    .collect()
}

fn run(
    vault: &Vault,
    consents: &ConsentBook,
    criteria: &EncryptedCriteria,
    noise: i64,
    min_cohort: u64,
) -> EncryptedCount {
    evaluate_feasibility(
        criteria,
        &keys().evaluator,
        vault,
        (consents, PURPOSE),
        ReleaseRule {
            noise,
            noise_bound: 50,
            min_cohort,
        },
        |_| {},
    )
    .expect("the node evaluates")
    .0
}

#[test]
fn encrypted_count_equals_the_plaintext_count() {
    let vault = vault(500);
    // Every third patient has not consented to feasibility searches.
    let mut consents = ConsentBook::new();
    for (index, record) in vault.records().iter().enumerate() {
        if index % 3 != 0 {
            consents.grant(&record.patient_id, PURPOSE);
        }
    }
    let truth = plaintext_women_50_to_80_with_diabetes(&vault, &consents);
    assert!(truth >= 3, "the population has a cohort to find ({truth})");
    let criteria = EncryptedCriteria::encrypt(
        &women_50_to_80_with_diabetes(vault.schema()),
        &keys().secret,
    );
    let released = run(&vault, &consents, &criteria, 0, 1);
    assert_eq!(keys().secret.decrypt_count(&released), Some(truth as i64));
}

#[test]
fn noise_is_added_under_encryption_and_small_sites_are_suppressed() {
    let vault = vault(80);
    let consents = ConsentBook::everyone(&vault, PURPOSE);
    let truth = plaintext_women_50_to_80_with_diabetes(&vault, &consents) as i64;
    let criteria = EncryptedCriteria::encrypt(
        &women_50_to_80_with_diabetes(vault.schema()),
        &keys().secret,
    );
    let released = run(&vault, &consents, &criteria, -2, 1);
    assert_eq!(
        keys().secret.decrypt_count(&released),
        if truth - 2 >= 1 {
            Some(truth - 2)
        } else {
            None
        }
    );
    // A minimum cohort above the noisy count hides the site's count entirely.
    let released = run(&vault, &consents, &criteria, 3, (truth + 4) as u64);
    assert_eq!(keys().secret.decrypt_count(&released), None);
}

#[test]
fn clause_on_an_unknown_column_is_refused_with_the_field() {
    let vault = vault(4);
    let mut criteria = EncryptedCriteria::encrypt(
        &women_50_to_80_with_diabetes(vault.schema()),
        &keys().secret,
    );
    criteria.clauses[1].column = "salary".into();
    let refused = criteria.check(vault.schema()).expect_err("refused");
    assert!(
        matches!(&refused, FeasibilityError::Column { index: 1, column, .. } if column == "salary"),
        "{refused}"
    );
}

#[test]
fn table_of_the_wrong_length_is_refused_with_the_field() {
    let vault = vault(4);
    let mut criteria = EncryptedCriteria::encrypt(
        &women_50_to_80_with_diabetes(vault.schema()),
        &keys().secret,
    );
    criteria.clauses[2].table.pop();
    let refused = criteria.check(vault.schema()).expect_err("refused");
    assert!(
        matches!(refused, FeasibilityError::Clause { index: 2, .. }),
        "{refused}"
    );
    assert!(refused
        .to_string()
        .starts_with("clauses[2]: table has 6 entries; its domain has 7"));
}

#[test]
fn domain_that_does_not_fit_the_column_is_refused() {
    let vault = vault(4);
    let mut criteria = EncryptedCriteria::encrypt(
        &women_50_to_80_with_diabetes(vault.schema()),
        &keys().secret,
    );
    criteria.clauses[0].domain = Domain::Edges(vec![60.0, 50.0]);
    assert!(matches!(
        criteria.check(vault.schema()),
        Err(FeasibilityError::Column { index: 0, .. })
    ));
}

#[test]
fn criteria_off_the_grid_or_unknown_say_what_to_fix() {
    let schema = Schema::fhir();
    let message = |text: &str| {
        Criterion::parse(text, &schema)
            .expect_err("refused")
            .to_string()
    };
    assert!(message("age 42..65 step 5").contains("must lie on the grid 0, 5"));
    assert!(message("sex in martian").contains("not a category of `sex`"));
    assert!(message("conditions has E11 among I10").contains("must be in the vocabulary"));
    assert!(message("height 1..2 step 1").contains("no column `height`"));
    assert!(message("age 40..65").contains("write `age LOW..HIGH step STEP`"));
}

#[test]
fn plaintext_decision_of_a_range_clips_values_below_the_bounds() {
    let schema = Schema::fhir();
    let criterion = Criterion::parse("age 0..20 step 10", &schema).expect("parses");
    assert!(criterion.accepts(&Value::Integer(0)));
    assert!(criterion.accepts(&Value::Integer(19)));
    assert!(!criterion.accepts(&Value::Integer(20)));
    assert!(
        criterion.accepts(&Value::Integer(-3)),
        "clipped to the lower bound"
    );
    assert!(!criterion.accepts(&Value::Null));
    let top = Criterion::parse("age 100..120 step 10", &schema).expect("parses");
    assert!(
        top.accepts(&Value::Integer(130)),
        "clipped to the upper bound"
    );
}

#[test]
fn corrupted_tfhe_material_is_refused_not_panicking() {
    let bit = keys().secret.encrypt_bit(true).to_bytes();
    assert!(matches!(
        EncryptedBit::from_bytes(&bit[..bit.len() / 2]),
        Err(FheError::Malformed { .. })
    ));
    assert!(matches!(
        EncryptedBit::from_bytes(&vec![0u8; 5000]),
        Err(FheError::TooLarge { .. })
    ));
    let key = &keys().evaluation_bytes;
    assert!(matches!(
        EvaluationKey::from_bytes(&key[..1000]),
        Err(FheError::Malformed { .. })
    ));
    assert!(EncryptedCount::from_bytes(&[1, 2, 3]).is_err());
    assert!(EncryptedCount::from_bytes(&[0; 64]).is_err());
}

#[test]
fn clauses_accepting_several_bins_count_like_the_plaintext() {
    let vault = vault(150);
    let consents = ConsentBook::everyone(&vault, PURPOSE);
    let (age, sex, conditions) = (
        column(&vault, "age"),
        column(&vault, "sex"),
        column(&vault, "conditions"),
    );
    let truth = vault
        .records()
        .iter()
        .filter(|record| {
            let old_enough = record.values[age].as_f64().is_some_and(|a| a >= 40.0);
            let sexed =
                matches!(&record.values[sex], Value::Category(s) if s == "female" || s == "male");
            let hypertensive = matches!(&record.values[conditions], Value::Codes(codes)
                if codes.iter().any(|c| c.starts_with("I10") || c.starts_with("38341003")));
            old_enough && sexed && hypertensive
        })
        .count() as i64;
    let criteria: Vec<Criterion> = [
        "age 40..120 step 5",
        "conditions has I10,38341003 among E10,E11,E13,44054006,I10,38341003,I25,J45",
        "sex in female,male",
    ]
    .iter()
    .map(|text| Criterion::parse(text, vault.schema()).expect("parses"))
    .collect();
    let encrypted = EncryptedCriteria::encrypt(&criteria, &keys().secret);
    let released = run(&vault, &consents, &encrypted, 0, 1);
    assert_eq!(keys().secret.decrypt_count(&released), Some(truth));
}
