//! The end-to-end numeric check: one synthetic population split across three vaults; every
//! supported aggregate goes through evaluate → encrypt and prove → batch-verify → homomorphic
//! sum → 2-of-3 threshold key switch to the buyer → decrypt → combine, and must match the same
//! statistics computed in plain f64 on the unsplit table.

use compute_node::contribution::{sum_contributions, ContributionStatement};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::{PatientRecord, Value};
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{
    build_contribution, combine, compile, evaluate, verify_contributions, Cell, ConsentBook,
    Schema, Vault,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zk::dkg::{run_local_ceremony_with_rng, DkgParameters};
use zk::{BsgsConfig, DecryptionTable, KeyPair, ProofContext};

const PATIENTS: u64 = 2400;
const PURPOSE: &str = "research:cardiometabolic";

/// A patient's row in plain Rust, read straight from the vault records.
struct Row {
    consents: bool,
    age: f64,
    sex: String,
    bmi: Option<f64>,
    hba1c: Option<f64>,
    sbp: Option<f64>,
    ldl: Option<f64>,
    conditions: Vec<String>,
    medications: Vec<String>,
}

fn column(record: &PatientRecord, name: &str) -> Value {
    let position = Schema::fhir()
        .columns
        .iter()
        .position(|spec| spec.name == name)
        .unwrap();
    record.values[position].clone()
}

fn float(record: &PatientRecord, name: &str) -> Option<f64> {
    match column(record, name) {
        Value::Float(x) => Some(x),
        _ => None,
    }
}

fn codes(record: &PatientRecord, name: &str) -> Vec<String> {
    match column(record, name) {
        Value::Codes(codes) => codes,
        _ => vec![],
    }
}

/// round(clip(x)·10^d)/10^d: the declared encoding, computed independently.
fn clip(x: f64, lower: f64, upper: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x.clamp(lower, upper) * scale).round() / scale
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn var_samp(values: &[f64]) -> f64 {
    let m = mean(values);
    values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (values.len() as f64 - 1.0)
}

fn covar_samp(pairs: &[(f64, f64)]) -> f64 {
    let my = mean(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let mx = mean(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    pairs.iter().map(|(y, x)| (y - my) * (x - mx)).sum::<f64>() / (pairs.len() as f64 - 1.0)
}

fn close(actual: &Cell, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: got {actual:?}"));
    let tolerance = 1e-9 * expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} vs plain {expected}"
    );
}

struct Federation {
    vaults: Vec<Vault>,
    consents: Vec<ConsentBook>,
    rows: Vec<Row>,
}

fn federation() -> Federation {
    let mut vaults: Vec<Vault> = (0..3).map(|_| Vault::new(Schema::fhir())).collect();
    let mut consents: Vec<ConsentBook> = (0..3).map(|_| ConsentBook::new()).collect();
    let mut rows = Vec::new();
    for index in 0..PATIENTS {
        let bundle = synth::patient(42, index).to_bundle().to_string();
        let record =
            bundle_to_record(&bundle, &REFERENCE_DATE, &ProvenancePolicy::default()).unwrap();
        let node = (index % 3) as usize;
        // One patient in eight never consented; one in eleven consented and revoked.
        let consenting = index % 8 != 0;
        if consenting {
            consents[node].grant(&record.patient_id, PURPOSE);
            if index % 11 == 0 {
                consents[node].revoke(&record.patient_id, PURPOSE);
            }
        }
        let Value::Integer(age) = column(&record, "age") else {
            panic!()
        };
        let Value::Category(sex) = column(&record, "sex") else {
            panic!()
        };
        rows.push(Row {
            consents: consenting && index % 11 != 0,
            age: age as f64,
            sex,
            bmi: float(&record, "bmi"),
            hba1c: float(&record, "hba1c"),
            sbp: float(&record, "systolic_bp"),
            ldl: float(&record, "ldl"),
            conditions: codes(&record, "conditions"),
            medications: codes(&record, "medications"),
        });
        vaults[node].upsert(record).unwrap();
    }
    Federation {
        vaults,
        consents,
        rows,
    }
}

/// Runs `sql` through the whole encrypted pipeline and returns the buyer's answer.
fn run_encrypted(federation: &Federation, sql: &str, query_id: &[u8]) -> compute_node::QueryAnswer {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let parameters = DkgParameters::new(2, 3, b"federated-numbers").unwrap();
    let committee = run_local_ceremony_with_rng(&parameters, &mut rng).unwrap();
    let collective_key = *committee[0].committee.collective_key();
    let buyer = KeyPair::generate_with_rng(&mut rng);

    let plan = compile(sql, &Schema::fhir()).unwrap();
    let contexts: Vec<ProofContext> = (0..3)
        .map(|node| ProofContext::new(query_id, format!("node-{node}").as_bytes()).unwrap())
        .collect();
    let contributions: Vec<_> = federation
        .vaults
        .iter()
        .zip(&federation.consents)
        .zip(&contexts)
        .map(|((vault, consents), context)| {
            let statistics = evaluate(&plan, vault, consents, PURPOSE).unwrap();
            build_contribution(
                context,
                &collective_key,
                &plan,
                &statistics,
                vault.capacity(),
                &mut rng,
            )
            .unwrap()
        })
        .collect();
    let statements: Vec<ContributionStatement> = contributions
        .iter()
        .zip(&contexts)
        .zip(&federation.vaults)
        .map(|((contribution, context), vault)| ContributionStatement {
            context,
            capacity: vault.capacity(),
            contribution,
        })
        .collect();
    verify_contributions(&collective_key, &plan, &statements, &mut rng).unwrap();
    let summed = sum_contributions(&contributions.iter().collect::<Vec<_>>());

    // Members 1 and 3 key-switch; member 2 is absent.
    let release_context = ProofContext::new(query_id, b"release").unwrap();
    let shares: Vec<_> = [&committee[0], &committee[2]]
        .iter()
        .map(|member| {
            member
                .share
                .key_switch_with_rng(&release_context, &summed, &buyer.public, &mut rng)
        })
        .collect();
    let switched = committee[0]
        .committee
        .combine(&release_context, &summed, &buyer.public, &shares)
        .unwrap();
    assert!(switched.rejected.is_empty());

    let table = DecryptionTable::load_or_build(
        &std::env::temp_dir().join("cohortex-bsgs-cache"),
        BsgsConfig::default(),
    )
    .unwrap();
    let totals: Vec<i128> = switched
        .ciphertexts
        .0
        .iter()
        .map(|ciphertext| i128::from(buyer.secret.decrypt(ciphertext, &table).unwrap()))
        .collect();
    combine(&plan, &totals).unwrap()
}

fn is_diabetic(row: &Row) -> bool {
    row.conditions
        .iter()
        .any(|code| code.starts_with("E11") || code == "44054006")
}

#[test]
fn every_supported_aggregate_matches_the_plaintext_computation() {
    let federation = federation();
    let consenting: Vec<&Row> = federation.rows.iter().filter(|row| row.consents).collect();

    // 1. One-column aggregates over a code-prefix filter.
    let answer = run_encrypted(
        &federation,
        "SELECT COUNT(*), SUM(hba1c), AVG(hba1c), VAR_SAMP(hba1c), STDDEV_SAMP(hba1c), VAR_POP(hba1c), STDDEV_POP(hba1c), COUNT(hba1c) \
         FROM patients WHERE has_condition('E11') OR has_condition('44054006')",
        b"q1",
    );
    assert_eq!(answer.participants, consenting.len() as u64);
    let diabetics: Vec<&&Row> = consenting.iter().filter(|row| is_diabetic(row)).collect();
    let hba1c: Vec<f64> = diabetics
        .iter()
        .filter_map(|row| row.hba1c)
        .map(|x| clip(x, 3.0, 20.0, 1))
        .collect();
    assert!(
        hba1c.len() > 100,
        "enough diabetics to make the check meaningful"
    );
    let row = &answer.rows[0];
    close(&row[0], diabetics.len() as f64, "COUNT(*)");
    close(&row[1], hba1c.iter().sum(), "SUM");
    close(&row[2], mean(&hba1c), "AVG");
    close(&row[3], var_samp(&hba1c), "VAR_SAMP");
    close(&row[4], var_samp(&hba1c).sqrt(), "STDDEV_SAMP");
    let n = hba1c.len() as f64;
    close(&row[5], var_samp(&hba1c) * (n - 1.0) / n, "VAR_POP");
    close(
        &row[6],
        (var_samp(&hba1c) * (n - 1.0) / n).sqrt(),
        "STDDEV_POP",
    );
    close(&row[7], n, "COUNT(hba1c)");

    // 2. Two-column aggregates over a numeric filter.
    let answer = run_encrypted(
        &federation,
        "SELECT CORR(systolic_bp, bmi), COVAR_SAMP(systolic_bp, bmi), REGR_SLOPE(systolic_bp, bmi), REGR_INTERCEPT(systolic_bp, bmi) \
         FROM patients WHERE age >= 40",
        b"q2",
    );
    let pairs: Vec<(f64, f64)> = consenting
        .iter()
        .filter(|row| row.age >= 40.0)
        .filter_map(|row| {
            Some((
                clip(row.sbp?, 60.0, 260.0, 1),
                clip(row.bmi?, 10.0, 80.0, 1),
            ))
        })
        .collect();
    let ys: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let xs: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let covariance = covar_samp(&pairs);
    let slope = covariance / var_samp(&xs);
    let row = &answer.rows[0];
    close(
        &row[0],
        covariance / (var_samp(&xs).sqrt() * var_samp(&ys).sqrt()),
        "CORR",
    );
    close(&row[1], covariance, "COVAR_SAMP");
    close(&row[2], slope, "REGR_SLOPE");
    close(&row[3], mean(&ys) - slope * mean(&xs), "REGR_INTERCEPT");
    assert!(
        row[0].as_f64().unwrap() > 0.1,
        "BMI and systolic pressure correlate in the synthetic population"
    );

    // 3. GROUP BY declared bins and a category, with BETWEEN and IN.
    let answer = run_encrypted(
        &federation,
        "SELECT sex, BIN(age), AVG(ldl), COUNT(*) FROM patients \
         WHERE age BETWEEN 30 AND 79 AND sex IN ('female', 'male') GROUP BY sex, BIN(age)",
        b"q3",
    );
    let edges = [0.0, 18.0, 40.0, 50.0, 60.0, 70.0, 80.0, 120.0];
    assert_eq!(answer.rows.len(), 4 * 7);
    for (cell, output) in answer.rows.iter().enumerate() {
        let (sex, bin) = (["female", "male", "other", "unknown"][cell / 7], cell % 7);
        assert_eq!(output[0], Cell::Text(sex.to_string()));
        let members: Vec<&&Row> = consenting
            .iter()
            .filter(|row| {
                (30.0..=79.0).contains(&row.age) && (row.sex == "female" || row.sex == "male")
            })
            .filter(|row| {
                row.sex == sex && row.age >= edges[bin] && (row.age < edges[bin + 1] || bin == 6)
            })
            .collect();
        close(&output[3], members.len() as f64, "COUNT per cell");
        let ldl: Vec<f64> = members
            .iter()
            .filter_map(|row| row.ldl)
            .map(|x| clip(x, 20.0, 400.0, 1))
            .collect();
        if ldl.is_empty() {
            assert_eq!(output[2], Cell::Null, "AVG of nobody is NULL");
        } else {
            close(&output[2], mean(&ldl), "AVG(ldl) per cell");
        }
    }

    // 4. A histogram over declared bins, with NOT and a medication prefix.
    let answer = run_encrypted(
        &federation,
        "SELECT HISTOGRAM(bmi) FROM patients WHERE NOT has_medication('6809')",
        b"q4",
    );
    let bmi_edges = [10.0, 18.5, 25.0, 30.0, 35.0, 40.0, 80.0];
    for (bin, output) in answer.rows.iter().enumerate() {
        let expected = consenting
            .iter()
            .filter(|row| !row.medications.iter().any(|code| code.starts_with("6809")))
            .filter_map(|row| row.bmi)
            .map(|x| x.clamp(10.0, 80.0))
            .filter(|&x| x >= bmi_edges[bin] && (x < bmi_edges[bin + 1] || bin == 5))
            .count();
        close(&output[1], expected as f64, "histogram bin");
    }
}
