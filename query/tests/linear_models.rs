//! Multivariable linear regression (issue 25, item 1): the one-round fit from the release's
//! sufficient statistics against a textbook least-squares fit written here (Gauss–Jordan on
//! the normal equations of the raw design matrix, residuals from the records themselves), at
//! no noise, at a large ε, and the coverage of its noise-aware intervals at a moderate ε.

use cohortex_query::combine::{combine, combine_release};
use cohortex_query::dp::calibrate;
use cohortex_query::model::INTERCEPT;
use cohortex_query::noise::withheld_slots;
use cohortex_query::plan::Statistic;
use cohortex_query::{compile, Cell, QueryAnswer, QueryError, QueryPlan, ReleaseNoise, Schema};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "y"
type = "float"
bounds = [-100.0, 200.0]
decimals = 2

[[columns]]
name = "age"
type = "float"
bounds = [0.0, 120.0]
decimals = 1

[[columns]]
name = "bmi"
type = "float"
bounds = [10.0, 60.0]
decimals = 1

[[columns]]
name = "smoker"
type = "bool"

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]
"#;

const SQL: &str = "SELECT LINEAR(y ~ age + bmi + smoker) FROM patients";
/// The population: y = 5 + 0.3·age − 1.2·bmi + 4·smoker + e, e ~ N(0, 3²).
const TRUTH: [f64; 4] = [5.0, 0.3, -1.2, 4.0];
const COLUMNS: [&str; 4] = ["y", "age", "bmi", "smoker"];

fn schema() -> Schema {
    Schema::from_toml(MANIFEST, "manifest").expect("schema")
}

fn plan(sql: &str) -> QueryPlan {
    compile(sql, &schema()).expect("plan")
}

fn normal(rng: &mut ChaCha20Rng) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let v: f64 = rng.gen::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// `n` records (y, age, bmi, smoker), as the manifest stores them.
fn population(n: usize, rng: &mut ChaCha20Rng) -> Vec<[f64; 4]> {
    (0..n)
        .map(|_| {
            let age = round_to((55.0 + 12.0 * normal(rng)).clamp(18.0, 95.0), 1);
            let bmi = round_to((27.0 + 4.0 * normal(rng)).clamp(15.0, 50.0), 1);
            let smoker = if rng.gen_bool(0.3) { 1.0 } else { 0.0 };
            let y =
                TRUTH[0] + TRUTH[1] * age + TRUTH[2] * bmi + TRUTH[3] * smoker + 3.0 * normal(rng);
            [round_to(y, 2), age, bmi, smoker]
        })
        .collect()
}

/// The plan's statistics vector over `records`, every patient consenting, one cell.
fn exact_totals(plan: &QueryPlan, records: &[[f64; 4]]) -> Vec<i128> {
    let value = |column: &str, record: &[f64; 4]| -> i128 {
        // `sex=male`, the dummy of LINEAR(… + sex), is 1 exactly for the smokers here.
        let read = if column == "sex=male" {
            "smoker"
        } else {
            column
        };
        let position = COLUMNS.iter().position(|name| *name == read).unwrap();
        i128::from(
            plan.codecs[column]
                .fixed_point()
                .encode_offset(record[position])
                .unwrap(),
        )
    };
    let mut totals = vec![0i128; plan.vector_len()];
    totals[0] = records.len() as i128;
    for record in records {
        for (index, statistic) in plan.statistics.iter().enumerate() {
            totals[plan.slot(0, index)] += match statistic {
                Statistic::Count { .. } => 1,
                Statistic::Sum { column, .. } => value(column, record),
                Statistic::SumSquares { column, .. } => value(column, record).pow(2),
                Statistic::SumProducts { left, right, .. } => {
                    value(left, record) * value(right, record)
                }
                other => panic!("a linear model reads no {other:?}"),
            };
        }
    }
    totals
}

/// The textbook fit: β = (XᵀX)⁻¹Xᵀy over the raw design matrix (a column of ones first), by
/// Gauss–Jordan elimination with partial pivoting; σ̂² from the residuals; SE = √(σ̂²·diag).
fn textbook_fit(records: &[[f64; 4]]) -> (Vec<f64>, Vec<f64>) {
    let k = 4;
    let row = |record: &[f64; 4]| [1.0, record[1], record[2], record[3]];
    let mut augmented = vec![vec![0.0; 2 * k + 1]; k];
    for record in records {
        let x = row(record);
        for i in 0..k {
            for j in 0..k {
                augmented[i][j] += x[i] * x[j];
            }
            augmented[i][2 * k] += x[i] * record[0];
        }
    }
    for (i, line) in augmented.iter_mut().enumerate() {
        line[k + i] = 1.0;
    }
    for pivot in 0..k {
        let best = (pivot..k)
            .max_by(|a, b| {
                augmented[*a][pivot]
                    .abs()
                    .total_cmp(&augmented[*b][pivot].abs())
            })
            .unwrap();
        augmented.swap(pivot, best);
        let divisor = augmented[pivot][pivot];
        for value in augmented[pivot].iter_mut() {
            *value /= divisor;
        }
        for other in 0..k {
            if other != pivot {
                let factor = augmented[other][pivot];
                let pivot_row = augmented[pivot].clone();
                for (value, pivot_value) in augmented[other].iter_mut().zip(pivot_row) {
                    *value -= factor * pivot_value;
                }
            }
        }
    }
    let beta: Vec<f64> = (0..k).map(|i| augmented[i][2 * k]).collect();
    let rss: f64 = records
        .iter()
        .map(|record| {
            let x = row(record);
            let fitted: f64 = (0..k).map(|i| beta[i] * x[i]).sum();
            (record[0] - fitted).powi(2)
        })
        .sum();
    let sigma2 = rss / (records.len() - k) as f64;
    let se = (0..k)
        .map(|i| (sigma2 * augmented[i][k + i]).sqrt())
        .collect();
    (beta, se)
}

fn number(cell: &Cell) -> f64 {
    cell.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {cell:?}"))
}

/// (estimate, std_error, noise_se, ci_low, ci_high) per coefficient, in term order.
fn coefficients(answer: &QueryAnswer) -> Vec<[f64; 5]> {
    let at = |name: &str| answer.columns.iter().position(|c| c == name).unwrap();
    answer
        .rows
        .iter()
        .map(|row| {
            [
                number(&row[at("estimate")]),
                number(&row[at("std_error")]),
                number(&row[at("noise_se")]),
                number(&row[at("ci_low")]),
                number(&row[at("ci_high")]),
            ]
        })
        .collect()
}

fn release(
    plan: &QueryPlan,
    totals: &[i128],
    epsilon_micro: u64,
    rng: &mut ChaCha20Rng,
) -> QueryAnswer {
    let calibration = calibrate(plan, epsilon_micro).unwrap();
    let shares = 2;
    let noisy: Vec<Option<i128>> = totals
        .iter()
        .zip(&calibration.slots)
        .map(|(&total, slot)| {
            Some(
                total
                    + (0..shares)
                        .map(|_| i128::from(slot.sample(rng)))
                        .sum::<i128>(),
            )
        })
        .collect();
    combine_release(plan, &noisy, &ReleaseNoise::of(&calibration, shares)).unwrap()
}

#[test]
fn linear_model_without_noise_matches_a_textbook_least_squares_fit() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let records = population(2_000, &mut rng);
    let (beta, se) = textbook_fit(&records);
    let answer = combine(&plan, &exact_totals(&plan, &records)).unwrap();
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
    let terms: Vec<&Cell> = answer.rows.iter().map(|row| &row[0]).collect();
    assert_eq!(
        terms,
        [INTERCEPT, "age", "bmi", "smoker"]
            .map(|term| Cell::Text(term.to_string()))
            .iter()
            .collect::<Vec<_>>()
    );
    for (position, fitted) in coefficients(&answer).iter().enumerate() {
        let relative = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(
            relative(fitted[0], beta[position]) < 1e-6,
            "term {position}: {} vs {}",
            fitted[0],
            beta[position]
        );
        assert!(
            relative(fitted[1], se[position]) < 1e-6,
            "term {position}: se {} vs {}",
            fitted[1],
            se[position]
        );
        assert_eq!(fitted[2], 0.0, "no noise in an exact answer");
    }
    // The textbook p-value of the strong age effect is tiny; z is the estimate over its se.
    let age = &answer.rows[1];
    assert!(number(&age[5]) < 1e-10);
    assert!((number(&age[4]) - beta[1] / se[1]).abs() < 1e-6 * number(&age[4]).abs());
}

#[test]
fn linear_model_at_a_large_epsilon_is_within_half_a_percent_of_the_plaintext_fit() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let records = population(5_000, &mut rng);
    let (beta, se) = textbook_fit(&records);
    // ε = 100,000: the noise's part of every standard error is negligible.
    let answer = release(
        &plan,
        &exact_totals(&plan, &records),
        100_000_000_000,
        &mut rng,
    );
    for (position, fitted) in coefficients(&answer).iter().enumerate() {
        for (what, got, want) in [
            ("estimate", fitted[0], beta[position]),
            ("se", fitted[1], se[position]),
        ] {
            assert!(
                (got - want).abs() <= 0.005 * want.abs(),
                "term {position} {what}: {got} vs the plaintext {want}"
            );
        }
    }
}

#[test]
fn linear_model_intervals_cover_the_true_coefficients_in_95_percent_of_releases() {
    let plan = plan(SQL);
    let releases = 400;
    let mut hits = [0u32; 4];
    let mut noise_share = [0.0f64; 4];
    for seed in 0..releases {
        let mut rng = ChaCha20Rng::seed_from_u64(9_000 + seed);
        let records = population(3_000, &mut rng);
        let answer = release(
            &plan,
            &exact_totals(&plan, &records),
            1_000_000_000,
            &mut rng,
        );
        for (position, fitted) in coefficients(&answer).iter().enumerate() {
            hits[position] +=
                u32::from(fitted[3] <= TRUTH[position] && TRUTH[position] <= fitted[4]);
            noise_share[position] += fitted[2] / fitted[1] / f64::from(releases as u32);
        }
    }
    for (position, hit) in hits.iter().enumerate() {
        let percent = 100.0 * f64::from(*hit) / releases as f64;
        println!(
            "term {position}: {percent:.1} % covered, noise {:.2} of the se",
            noise_share[position]
        );
        assert!(
            (92.0..=98.0).contains(&percent),
            "term {position}: its 95 % intervals held the true coefficient in {percent:.1} % of {releases} releases"
        );
    }
    // At ε = 1,000 over 3,000 patients both the sampling error and the noise are real parts
    // of every coefficient's error: an interval that left either out would miss.
    assert!(
        noise_share.iter().all(|&share| (0.1..0.9).contains(&share)),
        "{noise_share:?}"
    );
}

#[test]
fn a_model_cell_below_the_minimum_cohort_is_withheld_whole() {
    let plan = plan("SELECT LINEAR(y ~ age) FROM patients GROUP BY sex");
    let counts = cohortex_query::noise::count_slots(&plan);
    // Participants 40; female 35 patients with y and age, male 5.
    let withheld = withheld_slots(&plan, &[40, 35, 5], 10);
    assert_eq!(counts.len(), 3);
    let totals: Vec<Option<i128>> = (0..plan.vector_len())
        .map(|slot| (!withheld[slot]).then_some(0))
        .collect();
    let answer = combine_release(&plan, &totals, &ReleaseNoise::none(plan.vector_len())).unwrap();
    assert_eq!(answer.columns[0], "sex");
    assert_eq!(answer.rows.len(), 4, "two terms per sex");
    assert_eq!(answer.rows[2][0], Cell::Text("male".into()));
    assert!(answer.rows[2][2..]
        .iter()
        .all(|cell| *cell == Cell::Suppressed));
    assert!(answer.rows[0][2..]
        .iter()
        .all(|cell| *cell != Cell::Suppressed));
}

fn refusal(sql: &str) -> String {
    match compile(sql, &schema()) {
        Err(QueryError::Unsupported(message)) => message,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn model_with_a_categorical_outcome_is_refused_naming_it() {
    let message = refusal("SELECT LINEAR(sex ~ age) FROM patients");
    assert!(message.contains("`sex`"), "{message}");
}

/// A categorical covariate enters as one dummy column per category but the first: with
/// `sex = male` exactly for the smokers, `y ~ age + bmi + sex` is the textbook fit of
/// `y ~ age + bmi + smoker`, its last term named `sex=male`.
#[test]
fn categorical_covariate_enters_as_dummy_columns() {
    let plan = plan("SELECT LINEAR(y ~ age + bmi + sex) FROM patients");
    assert_eq!(plan.dummies.len(), 1, "female is the reference");
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let records = population(1_000, &mut rng);
    let (beta, se) = textbook_fit(&records);
    let answer = combine(&plan, &exact_totals(&plan, &records)).unwrap();
    assert_eq!(answer.rows[3][0], Cell::Text("sex=male".into()));
    for (position, fitted) in coefficients(&answer).iter().enumerate() {
        assert!((fitted[0] - beta[position]).abs() < 1e-6 * beta[position].abs());
        assert!((fitted[1] - se[position]).abs() < 1e-6 * se[position]);
    }
}

/// A covariate that does not vary in the cell has no coefficient: NULL, the rest fitted.
#[test]
fn covariate_that_does_not_vary_is_null_and_the_rest_is_fitted() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut records = population(500, &mut rng);
    for record in &mut records {
        record[3] = 0.0;
    }
    let answer = combine(&plan, &exact_totals(&plan, &records)).unwrap();
    assert!(
        answer.rows[3][1..].iter().all(|cell| *cell == Cell::Null),
        "{:?}",
        answer.rows[3]
    );
    assert!(answer.rows[1][1].as_f64().is_some());
}

#[test]
fn model_with_more_than_sixteen_covariates_is_refused() {
    let terms = vec!["age"; 17].join(" + ");
    let message = refusal(&format!("SELECT LINEAR(y ~ {terms}) FROM patients"));
    assert!(message.contains("16 covariates"), "{message}");
}

#[test]
fn model_naming_a_column_twice_is_refused() {
    let message = refusal("SELECT LINEAR(y ~ age + age) FROM patients");
    assert!(message.contains("`age` twice"), "{message}");
}

#[test]
fn model_beside_other_aggregates_is_refused() {
    let message = refusal("SELECT COUNT(*), LINEAR(y ~ age) FROM patients");
    assert!(message.contains("select the model alone"), "{message}");
}

#[test]
fn model_without_a_formula_is_refused() {
    let message = refusal("SELECT LINEAR(y, age) FROM patients");
    assert!(message.contains("one formula"), "{message}");
    let message = refusal("SELECT LINEAR(y + age) FROM patients");
    assert!(message.contains("outcome ~ covariate"), "{message}");
}

/// Under noise, a category nobody in the cell holds is still left out: its noisy spread is
/// within three noise standard deviations of 0, so the fit does not take noise for data.
#[test]
fn category_nobody_holds_is_null_under_noise_and_the_rest_is_fitted() {
    let plan = plan("SELECT LINEAR(y ~ age + bmi + sex) FROM patients");
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let mut records = population(3_000, &mut rng);
    for record in &mut records {
        record[3] = 0.0;
    }
    let answer = release(
        &plan,
        &exact_totals(&plan, &records),
        1_000_000_000,
        &mut rng,
    );
    assert_eq!(answer.rows[3][0], Cell::Text("sex=male".into()));
    assert!(
        answer.rows[3][1..].iter().all(|cell| *cell == Cell::Null),
        "{:?}",
        answer.rows[3]
    );
    for row in &answer.rows[..3] {
        assert!(
            row[1..].iter().all(|cell| cell.as_f64().is_some()),
            "{row:?}"
        );
    }
}
