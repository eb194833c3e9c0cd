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

/// (systolic_bp, age, bmi) of every consenting patient with all three recorded, clipped to
/// the FHIR schema's bounds and rounded to its one decimal, as the nodes encode them.
fn consenting_records() -> Vec<[f64; 3]> {
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
        let mut row = [0.0; 3];
        let mut complete = true;
        for (slot, (column, lower, upper)) in columns.iter().enumerate() {
            match record.values[*column] {
                Value::Float(x) => row[slot] = (x.clamp(*lower, *upper) * 10.0).round() / 10.0,
                Value::Integer(x) => row[slot] = (x as f64).clamp(*lower, *upper),
                _ => complete = false,
            }
        }
        if complete {
            records.push(row);
        }
    }
    records
}

/// Least squares by QR: β = R⁻¹Qᵀy, σ̂² = RSS/(n − 3), SE = √(σ̂²·diag((RᵀR)⁻¹)).
fn qr_fit(records: &[[f64; 3]]) -> (Vec<f64>, Vec<f64>) {
    let n = records.len();
    let x = DMatrix::from_fn(n, 3, |row, column| match column {
        0 => 1.0,
        _ => records[row][column],
    });
    let y = DVector::from_fn(n, |row, _| records[row][0]);
    let qr = x.clone().qr();
    let r = qr.r();
    let qty = qr.q().transpose() * &y;
    let beta = r.clone().try_inverse().unwrap() * qty;
    let residuals = &y - &x * &beta;
    let sigma2 = residuals.norm_squared() / (n as f64 - 3.0);
    let covariance = (r.transpose() * r).try_inverse().unwrap() * sigma2;
    (
        beta.iter().copied().collect(),
        (0..3).map(|i| covariance[(i, i)].sqrt()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_model_over_grpc_matches_a_plaintext_least_squares_fit() {
    let records = consenting_records();
    assert!(records.len() > 100, "{} complete records", records.len());
    let (beta, se) = qr_fit(&records);
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
    books_balance(&cluster);
    cluster.shutdown();
}
