//! Logistic regression (issue 25, item 1): Newton–Raphson steps, each one release of the
//! score and information that the vault sums next to the records, converge to the textbook
//! maximum-likelihood fit (IRLS written here in plain f64 over the records themselves): the
//! coefficients and standard errors within 0.5 %, without noise and at ε = 10⁵.

use compute_node::combine::{combine_release, sum_vectors};
use compute_node::dp::calibrate;
use compute_node::ingest::ingest_table;
use compute_node::uncertainty::ReleaseNoise;
use compute_node::{compile, evaluate, Cell, ConsentBook, QueryAnswer, QueryError, Schema, Vault};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

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
name = "stroke"
type = "bool"

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]
"#;

/// The population: logit P(stroke) = −7 + 0.06·age + 0.05·bmi + 0.5·male.
const TRUTH: [f64; 4] = [-7.0, 0.06, 0.05, 0.5];

fn normal(rng: &mut ChaCha20Rng) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let v: f64 = rng.gen::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// (age, bmi, male, stroke) per patient, as stored (one decimal).
fn population(n: usize, seed: u64) -> Vec<[f64; 4]> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let age = ((60.0 + 12.0 * normal(&mut rng)).clamp(20.0, 100.0) * 10.0).round() / 10.0;
            let bmi = ((27.0 + 4.0 * normal(&mut rng)).clamp(15.0, 50.0) * 10.0).round() / 10.0;
            let male = f64::from(u8::from(rng.gen_bool(0.5)));
            let z = TRUTH[0] + TRUTH[1] * age + TRUTH[2] * bmi + TRUTH[3] * male;
            let stroke = f64::from(u8::from(rng.gen_bool(1.0 / (1.0 + (-z).exp()))));
            [age, bmi, male, stroke]
        })
        .collect()
}

fn vault(records: &[[f64; 4]]) -> Vault {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    let mut csv = String::from("patient_id,age,bmi,stroke,sex\n");
    for (index, record) in records.iter().enumerate() {
        let sex = if record[2] == 1.0 { "male" } else { "female" };
        let stroke = record[3] == 1.0;
        csv.push_str(&format!(
            "p{index},{},{},{stroke},{sex}\n",
            record[0], record[1]
        ));
    }
    std::fs::write(&path, csv).unwrap();
    let mut vault = Vault::new(Schema::from_toml(MANIFEST, "m").unwrap());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    vault
}

/// Textbook IRLS over the design (1, age, bmi, male): β ← β + (XᵀWX)⁻¹Xᵀ(y − μ) until it no
/// longer moves, by Gauss–Jordan elimination; SE = √diag((XᵀWX)⁻¹) at the fit.
fn textbook_irls(records: &[[f64; 4]]) -> (Vec<f64>, Vec<f64>) {
    let k = 4;
    let mut beta = vec![0.0; k];
    let mut inverse = vec![vec![0.0; k]; k];
    for _ in 0..50 {
        let mut augmented = vec![vec![0.0; 2 * k + 1]; k];
        for record in records {
            let x = [1.0, record[0], record[1], record[2]];
            let z: f64 = (0..k).map(|i| beta[i] * x[i]).sum();
            let mu = 1.0 / (1.0 + (-z).exp());
            for i in 0..k {
                for j in 0..k {
                    augmented[i][j] += mu * (1.0 - mu) * x[i] * x[j];
                }
                augmented[i][2 * k] += x[i] * (record[3] - mu);
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
        for i in 0..k {
            beta[i] += augmented[i][2 * k];
            for j in 0..k {
                inverse[i][j] = augmented[i][k + j];
            }
        }
    }
    let se = (0..k).map(|i| inverse[i][i].sqrt()).collect();
    (beta, se)
}

/// (estimate, std_error) per term.
fn coefficients(answer: &QueryAnswer) -> Vec<(f64, f64)> {
    answer
        .rows
        .iter()
        .map(|row| (row[1].as_f64().unwrap(), row[2].as_f64().unwrap()))
        .collect()
}

/// Runs `steps` Newton steps from 0, each a release at `epsilon_micro` (exact when `None`).
fn fit(vault: &Vault, steps: usize, epsilon_micro: Option<u64>) -> QueryAnswer {
    let consents = ConsentBook::everyone(vault, "research");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut at = vec![0.0; 4];
    let mut answer = None;
    for _ in 0..steps {
        let numbers: Vec<String> = at.iter().map(|b: &f64| format!("{b:.17e}")).collect();
        let sql = format!(
            "SELECT LOGISTIC(stroke ~ age + bmi + sex, {}) FROM patients",
            numbers.join(", ")
        );
        let plan = compile(&sql, vault.schema()).unwrap();
        let statistics = evaluate(&plan, vault, &consents, "research").unwrap();
        let totals = sum_vectors(std::slice::from_ref(&statistics.values));
        let (released, noise) = match epsilon_micro {
            None => (
                totals.iter().map(|&total| Some(total)).collect::<Vec<_>>(),
                ReleaseNoise::none(plan.vector_len()),
            ),
            Some(epsilon) => {
                let calibration = calibrate(&plan, epsilon).unwrap();
                let noisy = totals
                    .iter()
                    .zip(&calibration.slots)
                    .map(|(&total, slot)| Some(total + i128::from(slot.sample(&mut rng))))
                    .collect();
                (noisy, ReleaseNoise::of(&calibration, 1))
            }
        };
        let step = combine_release(&plan, &released, &noise).unwrap();
        at = coefficients(&step)
            .iter()
            .map(|(estimate, _)| *estimate)
            .collect();
        answer = Some(step);
    }
    answer.unwrap()
}

fn assert_close(answer: &QueryAnswer, beta: &[f64], se: &[f64]) {
    for (term, ((estimate, std_error), (want, want_se))) in coefficients(answer)
        .into_iter()
        .zip(beta.iter().zip(se))
        .enumerate()
    {
        assert!(
            (estimate - want).abs() <= 0.005 * want.abs(),
            "term {term}: {estimate} vs the textbook {want}"
        );
        assert!(
            (std_error - want_se).abs() <= 0.005 * want_se,
            "term {term}: se {std_error} vs the textbook {want_se}"
        );
    }
}

#[test]
fn logistic_steps_converge_to_the_textbook_maximum_likelihood_fit() {
    let records = population(20_000, 1);
    let (beta, se) = textbook_irls(&records);
    let answer = fit(&vault(&records), 7, None);
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
            "ci_high",
            "odds_ratio",
            "or_ci_low",
            "or_ci_high"
        ]
    );
    assert_eq!(answer.rows[3][0], Cell::Text("sex=male".into()));
    assert_close(&answer, &beta, &se);
    // The odds ratio of a male is e^β, its interval the interval's.
    let male = &answer.rows[3];
    let odds = male[8].as_f64().unwrap();
    assert!(
        (odds - beta[3].exp()).abs() <= 0.01 * beta[3].exp(),
        "{odds}"
    );
    assert!(male[9].as_f64().unwrap() < odds && odds < male[10].as_f64().unwrap());
}

#[test]
fn logistic_steps_at_a_large_epsilon_are_within_half_a_percent() {
    let records = population(20_000, 2);
    let (beta, se) = textbook_irls(&records);
    let answer = fit(&vault(&records), 7, Some(100_000_000_000));
    assert_close(&answer, &beta, &se);
}

fn refusal(sql: &str) -> String {
    match compile(sql, &Schema::from_toml(MANIFEST, "m").unwrap()) {
        Err(QueryError::Unsupported(message)) => message,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn logistic_model_of_an_outcome_that_is_not_boolean_is_refused() {
    let message = refusal("SELECT LOGISTIC(bmi ~ age) FROM patients");
    assert!(message.contains("must be a boolean column"), "{message}");
}

#[test]
fn logistic_step_with_the_wrong_number_of_coefficients_is_refused() {
    let message = refusal("SELECT LOGISTIC(stroke ~ age + sex, 0.1, 0.2) FROM patients");
    assert!(
        message.contains("2 coefficients given; this model has 3"),
        "{message}"
    );
    let message = refusal("SELECT LOGISTIC(stroke ~ age, 'a', 0.2) FROM patients");
    assert!(
        message.contains("coefficient 0 must be a finite number"),
        "{message}"
    );
}

#[test]
fn newton_step_sql_carries_the_coefficients_into_the_plan() {
    let schema = Schema::from_toml(MANIFEST, "m").unwrap();
    let sql = "SELECT LOGISTIC(stroke ~ age + sex) FROM patients WHERE bmi > 20";
    let step = compute_node::sql::newton_step_sql(sql, &[-7.25, 0.0625, 1.5e-3])
        .unwrap()
        .expect("a logistic model");
    let plan = compile(&step, &schema).unwrap();
    let model = plan.model.expect("a model");
    let compute_node::model::ModelInputs::Newton(newton) = model.inputs else {
        panic!("a Newton step");
    };
    assert_eq!(newton.at, [-7.25, 0.0625, 1.5e-3]);
    assert!(plan.filter.is_some(), "the WHERE clause is kept: {step}");
    assert_eq!(
        compute_node::sql::newton_step_sql("SELECT COUNT(*) FROM patients", &[1.0]).unwrap(),
        None
    );
}

#[test]
fn logistic_model_with_group_by_is_refused() {
    let message = refusal("SELECT LOGISTIC(stroke ~ age) FROM patients GROUP BY sex");
    assert!(
        message.contains("fit one model per group with WHERE"),
        "{message}"
    );
}

/// A category nobody holds has no coefficient (NULL), under noise too, and the rest is fitted.
#[test]
fn logistic_category_nobody_holds_is_null_and_the_rest_is_fitted() {
    let mut records = population(5_000, 3);
    for record in &mut records {
        record[2] = 0.0;
    }
    let vault = vault(&records);
    let consents = ConsentBook::everyone(&vault, "research");
    let plan = compile(
        "SELECT LOGISTIC(stroke ~ age + bmi + sex) FROM patients",
        vault.schema(),
    )
    .unwrap();
    let statistics = evaluate(&plan, &vault, &consents, "research").unwrap();
    let totals = sum_vectors(std::slice::from_ref(&statistics.values));
    let calibration = calibrate(&plan, 1_000_000_000).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let noisy: Vec<Option<i128>> = totals
        .iter()
        .zip(&calibration.slots)
        .map(|(&total, slot)| Some(total + i128::from(slot.sample(&mut rng))))
        .collect();
    let answer = combine_release(&plan, &noisy, &ReleaseNoise::of(&calibration, 1)).unwrap();
    assert_eq!(answer.rows[3][0], Cell::Text("sex=male".into()));
    assert!(
        answer.rows[3][1..].iter().all(|cell| *cell == Cell::Null),
        "{:?}",
        answer.rows[3]
    );
    for row in &answer.rows[..3] {
        assert!(row[1].as_f64().is_some(), "{row:?}");
    }
}
