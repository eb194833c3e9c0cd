//! Blind feasibility search, end to end on one node (issue 13): the recruiter's key
//! generation and key sizes, encrypting four criteria, the node's evaluation over a synthetic
//! vault, and the same count in plaintext.
//!
//! Run: `cargo bench --workspace --bench feasibility -- --json` (100,000 patients; add
//! `--patients N` for another size). Without `--bench` on the command line (as under
//! `cargo test --all-targets`) it runs a 300-patient smoke pass that checks the decrypted count
//! against the plaintext one.
//!
//! The evaluation runs with zero noise and a minimum cohort of 1 so that the decrypted count
//! can be compared with the plaintext count; noise and the threshold cost the same whatever
//! their values.

use std::time::Instant;

use compute_node::feasibility::{
    evaluate_feasibility, Criterion, EncryptedCriteria, FeasibilityStep, ReleaseRule,
};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{ConsentBook, Schema, Vault};
use zk::fhe::{EvaluationKey, FheSecretKey};

const CRITERIA: [&str; 4] = [
    "age 40..75 step 5",
    "sex in female,male",
    "hba1c 6.5..10 step 0.5",
    "conditions has E11,44054006 among E10,E11,E13,44054006,I10,38341003,I25,J45,N18",
];

fn vault(patients: u64) -> Vault {
    let mut vault = Vault::new(Schema::fhir());
    for index in 0..patients {
        let bundle = synth::patient(13, index).to_bundle().to_string();
        let record = bundle_to_record(&bundle, &REFERENCE_DATE, &ProvenancePolicy::default())
            .expect("synthetic bundles are valid");
        vault
            .upsert(record)
            .expect("synthetic records fit the schema");
    }
    vault
}

/// The count in plaintext, written out directly from the records (not through the bins).
fn plaintext_count(vault: &Vault) -> u64 {
    let schema = vault.schema();
    let at = |name: &str| {
        schema
            .columns
            .iter()
            .position(|column| column.name == name)
            .expect("fhir column")
    };
    let (age, sex, hba1c, conditions) = (at("age"), at("sex"), at("hba1c"), at("conditions"));
    vault
        .records()
        .iter()
        .filter(|record| {
            let number = |i: usize| record.values[i].as_f64();
            let age_ok = number(age).is_some_and(|a| (40.0..75.0).contains(&a));
            let sex_ok =
                matches!(&record.values[sex], Value::Category(s) if s == "female" || s == "male");
            let hba1c_ok = number(hba1c).is_some_and(|h| (6.5..10.0).contains(&h));
            let coded = matches!(&record.values[conditions], Value::Codes(codes)
                if codes.iter().any(|c| c.starts_with("E11") || c.starts_with("44054006")));
            age_ok && sex_ok && hba1c_ok && coded
        })
        .count() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Test runners (cargo-nextest) first list a binary's tests: the smoke pass is one.
    if args.iter().any(|arg| arg == "--list") {
        if !args.iter().any(|arg| arg == "--ignored") {
            println!("feasibility_smoke: test");
        }
        return;
    }
    let measuring = args.iter().any(|arg| arg == "--bench");
    let json = args.iter().any(|arg| arg == "--json");
    let patients: u64 = args
        .iter()
        .position(|arg| arg == "--patients")
        .and_then(|at| args.get(at + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if measuring { 100_000 } else { 300 });

    let started = Instant::now();
    let vault = vault(patients);
    let vault_seconds = started.elapsed().as_secs_f64();
    let consents = ConsentBook::everyone(&vault, "trial_feasibility");

    let started = Instant::now();
    let truth = plaintext_count(&vault);
    let plaintext_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let secret = FheSecretKey::generate();
    let evaluation_key = secret.evaluation_key();
    let keygen_seconds = started.elapsed().as_secs_f64();
    let key_bytes = evaluation_key.to_bytes();
    let secret_bytes = secret.to_bytes().len();

    let started = Instant::now();
    let criteria: Vec<Criterion> = CRITERIA
        .iter()
        .map(|text| Criterion::parse(text, vault.schema()).expect("the criteria parse"))
        .collect();
    let encrypted = EncryptedCriteria::encrypt(&criteria, &secret);
    let encrypt_seconds = started.elapsed().as_secs_f64();
    let criteria_bytes: usize = encrypted
        .clauses
        .iter()
        .flat_map(|clause| &clause.table)
        .map(|bit| bit.to_bytes().len())
        .sum();

    let started = Instant::now();
    let evaluator = EvaluationKey::from_bytes(&key_bytes)
        .expect("the key decodes")
        .expand();
    let expand_seconds = started.elapsed().as_secs_f64();

    // One bootstrap on one thread: `sanitize` is exactly two.
    let probe = secret.encrypt_bit(true);
    let started = Instant::now();
    for _ in 0..10 {
        let _ = std::hint::black_box(evaluator.sanitize(&probe));
    }
    let bootstrap_ms = started.elapsed().as_secs_f64() * 1000.0 / 20.0;

    let started = Instant::now();
    let mut steps = Vec::new();
    let (released, stats) = evaluate_feasibility(
        &encrypted,
        &evaluator,
        &vault,
        (&consents, "trial_feasibility"),
        ReleaseRule {
            noise: 0,
            noise_bound: 1,
            min_cohort: 1,
        },
        |step| steps.push((step, started.elapsed().as_secs_f64())),
    )
    .expect("the node evaluates");
    let evaluate_seconds = started.elapsed().as_secs_f64();
    let count_bytes = released.to_bytes().len();
    let decrypted = secret.decrypt_count(&released);
    let matches = decrypted == Some(truth as i64) || (truth == 0 && decrypted.is_none());
    assert!(
        matches,
        "decrypted {decrypted:?}, the plaintext count is {truth}"
    );

    let step_seconds = |wanted: fn(&FeasibilityStep) -> bool| {
        steps
            .iter()
            .find(|(step, _)| wanted(step))
            .map_or(0.0, |(_, at)| *at)
    };
    let report = serde_json::json!({
        "patients": patients,
        "criteria": CRITERIA,
        "threads": rayon::current_num_threads(),
        "plaintext_count": truth,
        "decrypted_count": decrypted,
        "matches_plaintext": matches,
        "distinct_tuples": stats.distinct_tuples,
        "tuples_ruled_out_in_clear": stats.tuples_ruled_out,
        "table_entries": stats.table_entries,
        "bootstrap_ms_one_thread": bootstrap_ms,
        "seconds": {
            "build_vault": vault_seconds,
            "plaintext_count": plaintext_seconds,
            "keygen": keygen_seconds,
            "encrypt_criteria": encrypt_seconds,
            "expand_evaluation_key": expand_seconds,
            "evaluate_total": evaluate_seconds,
            "evaluate_grouped": step_seconds(|s| matches!(s, FeasibilityStep::Grouped { .. })),
            "evaluate_sanitised": step_seconds(|s| matches!(s, FeasibilityStep::Sanitised)),
            "evaluate_matched": step_seconds(|s| matches!(s, FeasibilityStep::Matched)),
            "evaluate_counted": step_seconds(|s| matches!(s, FeasibilityStep::Counted)),
        },
        "bytes": {
            "evaluation_key_compressed": key_bytes.len(),
            "secret_key": secret_bytes,
            "encrypted_criteria": criteria_bytes,
            "released_count": count_bytes,
        },
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a JSON value prints")
        );
    }
}
