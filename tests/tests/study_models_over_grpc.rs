//! A regression model end to end over gRPC (issue 25): `LINEAR(systolic_bp ~ age + bmi)` is
//! ordered, computed by the nodes as encrypted range-proven sums, noised by the committee,
//! key-switched to the buyer and fitted there; at ε = 10⁵ its coefficients and standard errors
//! match a plaintext least-squares fit of the consenting patients' records within 0.5 %. The
//! reference fit is nalgebra's QR decomposition of the raw design matrix, not the normal
//! equations the pipeline solves.

use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{Cell, Schema};
use nalgebra::{DMatrix, DVector};
use testkit::*;

/// (systolic_bp, age, bmi) of every consenting patient, clipped to the FHIR schema's bounds
/// and rounded to its one decimal as the nodes encode them (NaN where not recorded), with the
/// patient's sex.
fn consenting_records() -> Vec<([f64; 3], String)> {
    let schema = Schema::fhir();
    let position = |name: &str| {
        schema
            .columns
            .iter()
            .position(|column| column.name == name)
            .unwrap()
    };
    let columns = [
        (position("systolic_bp"), 60.0, 260.0),
        (position("age"), 0.0, 120.0),
        (position("bmi"), 10.0, 80.0),
    ];
    let mut records = Vec::new();
    for index in 0..3 * PER_NODE {
        if consent_of(index).is_none() {
            continue;
        }
        let record = bundle_to_record(
            &synth::patient(99, index).to_bundle().to_string(),
            &REFERENCE_DATE,
            &ProvenancePolicy::default(),
        )
        .unwrap();
        let mut row = [f64::NAN; 3];
        for (slot, (column, lower, upper)) in columns.iter().enumerate() {
            match record.values[*column] {
                Value::Float(x) => row[slot] = (x.clamp(*lower, *upper) * 10.0).round() / 10.0,
                Value::Integer(x) => row[slot] = (x as f64).clamp(*lower, *upper),
                _ => {}
            }
        }
        let sex = match &record.values[position("sex")] {
            Value::Category(sex) => sex.clone(),
            other => panic!("sex is {other:?}"),
        };
        records.push((row, sex));
    }
    records
}

/// Least squares by QR of y on the columns `design` gives each record (a 1 for the intercept
/// first): β = R⁻¹Qᵀy, σ̂² = RSS/(n − k), SE = √(σ̂²·diag((RᵀR)⁻¹)).
fn qr_fit(y: &[f64], design: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = y.len();
    let k = design[0].len();
    let x = DMatrix::from_fn(n, k, |row, column| design[row][column]);
    let y = DVector::from_fn(n, |row, _| y[row]);
    let qr = x.clone().qr();
    let r = qr.r();
    let qty = qr.q().transpose() * &y;
    let beta = r.clone().try_inverse().unwrap() * qty;
    let residuals = &y - &x * &beta;
    let sigma2 = residuals.norm_squared() / (n - k) as f64;
    let covariance = (r.transpose() * r).try_inverse().unwrap() * sigma2;
    (
        beta.iter().copied().collect(),
        (0..k).map(|i| covariance[(i, i)].sqrt()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_model_over_grpc_matches_a_plaintext_least_squares_fit() {
    let everyone = consenting_records();
    // The model's patients: those with every variable of the model recorded.
    let records: Vec<_> = everyone
        .iter()
        .filter(|(row, _)| row.iter().all(|value| !value.is_nan()))
        .cloned()
        .collect();
    assert!(records.len() > 100, "{} complete records", records.len());
    let y: Vec<f64> = records.iter().map(|(row, _)| row[0]).collect();
    let design: Vec<Vec<f64>> = records
        .iter()
        .map(|(row, _)| vec![1.0, row[1], row[2]])
        .collect();
    let (beta, se) = qr_fit(&y, &design);
    let (_dir, cluster, _) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query(
        &cluster,
        &buyer,
        "SELECT LINEAR(systolic_bp ~ age + bmi) FROM patients",
        EPSILON,
    )
    .await
    .unwrap();
    let answer = &release.answer;
    assert_eq!(
        answer.columns,
        [
            "term",
            "estimate",
            "std_error",
            "noise_se",
            "z",
            "p_value",
            "ci_low",
            "ci_high"
        ]
    );
    assert_eq!(answer.rows.len(), 3);
    for (position, (row, term)) in answer
        .rows
        .iter()
        .zip(["(intercept)", "age", "bmi"])
        .enumerate()
    {
        assert_eq!(row[0], Cell::Text(term.into()));
        let estimate = row[1].as_f64().unwrap();
        let std_error = row[2].as_f64().unwrap();
        assert!(
            (estimate - beta[position]).abs() <= 0.005 * beta[position].abs(),
            "{term}: {estimate} vs the plaintext fit's {}",
            beta[position]
        );
        assert!(
            (std_error - se[position]).abs() <= 0.005 * se[position],
            "{term}: se {std_error} vs {}",
            se[position]
        );
        let (low, high) = (row[6].as_f64().unwrap(), row[7].as_f64().unwrap());
        assert!(low < estimate && estimate < high);
    }
    assert!(release.receipt_verified);

    // A categorical covariate: one dummy per category but female, the reference. A category
    // nobody in the population holds has no coefficient (NULL), as in R.
    let records: Vec<_> = everyone
        .iter()
        .filter(|(row, _)| !row[0].is_nan() && !row[1].is_nan())
        .cloned()
        .collect();
    let y: Vec<f64> = records.iter().map(|(row, _)| row[0]).collect();
    let held: Vec<&str> = ["male", "other", "unknown"]
        .into_iter()
        .filter(|category| records.iter().any(|(_, sex)| sex == category))
        .collect();
    assert!(
        held.contains(&"male") && !held.contains(&"unknown"),
        "{held:?}"
    );
    let design: Vec<Vec<f64>> = records
        .iter()
        .map(|(row, sex)| {
            let mut columns = vec![1.0, row[1]];
            columns.extend(
                held.iter()
                    .map(|category| f64::from(u8::from(sex == category))),
            );
            columns
        })
        .collect();
    let (beta, se) = qr_fit(&y, &design);
    let release = query(
        &cluster,
        &buyer,
        "SELECT LINEAR(systolic_bp ~ age + sex) FROM patients",
        EPSILON,
    )
    .await
    .unwrap();
    let terms: Vec<String> = release
        .answer
        .rows
        .iter()
        .map(|row| row[0].to_string())
        .collect();
    assert_eq!(
        terms,
        ["(intercept)", "age", "sex=male", "sex=other", "sex=unknown"]
    );
    let mut fitted = 0;
    for (row, term) in release.answer.rows.iter().zip(&terms) {
        let category = term.strip_prefix("sex=");
        if category.is_some_and(|category| !held.contains(&category)) {
            assert!(
                row[1..].iter().all(|cell| *cell == Cell::Null),
                "{term}: {row:?}"
            );
            continue;
        }
        let (estimate, std_error) = (row[1].as_f64().unwrap(), row[2].as_f64().unwrap());
        let (want, want_se) = (beta[fitted], se[fitted]);
        fitted += 1;
        assert!(
            (estimate - want).abs() <= 0.005 * want.abs(),
            "{term}: {estimate} vs {want}"
        );
        assert!(
            (std_error - want_se).abs() <= 0.005 * want_se,
            "{term}: se {std_error} vs {want_se}"
        );
    }
    assert_eq!(fitted, beta.len());
    books_balance(&cluster);
    cluster.shutdown();
}
