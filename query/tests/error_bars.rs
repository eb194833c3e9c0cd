//! Error bars on released numbers (issue 25, item 3): over 400 seeded releases, each with the
//! committee's noise drawn as it is in a real release, the reported 95 % intervals cover the
//! true value in 95 % ± 3 % of them.
//!
//! The true values come from outside the code under test: the plaintext count and sum of the
//! records (computed here in f64 from the records themselves), and the parameters of the
//! population the records are drawn from (a textbook bivariate normal model: mean, variance,
//! standard deviation, slope, intercept, correlation and covariance known in closed form).
//! Binomial sampling error of a coverage over 400 releases is 1.1 percentage points, so the
//! ± 3-point band fails a mis-scaled error bar (one that leaves out the noise, or the sampling
//! error, or both) while chance does not.

use cohortex_query::combine::combine_release;
use cohortex_query::dp::calibrate;
use cohortex_query::plan::Statistic;
use cohortex_query::{compile, Cell, QueryAnswer, QueryPlan, ReleaseNoise, Schema};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const RELEASES: u64 = 400;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "x"
type = "float"
bounds = [0.0, 100.0]
decimals = 1

[[columns]]
name = "y"
type = "float"
bounds = [-20.0, 80.0]
decimals = 1
"#;

fn plan(sql: &str) -> QueryPlan {
    compile(
        sql,
        &Schema::from_toml(MANIFEST, "manifest").expect("schema"),
    )
    .expect("plan")
}

/// A standard normal draw (Box–Muller), so the test depends on no distribution crate.
fn normal(rng: &mut ChaCha20Rng) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let v: f64 = rng.gen::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Rounds to the manifest's one decimal, so that the records are exactly representable.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The plan's statistics vector over `records` (x, y), every patient consenting.
fn exact_totals(plan: &QueryPlan, records: &[(f64, f64)]) -> Vec<i128> {
    let encoded = |column: &str, value: f64| -> i128 {
        i128::from(
            plan.codecs[column]
                .fixed_point()
                .encode_offset(value)
                .expect("a number"),
        )
    };
    let value = |column: &str, record: &(f64, f64)| {
        encoded(column, if column == "x" { record.0 } else { record.1 })
    };
    let mut totals = vec![0i128; plan.vector_len()];
    totals[0] = records.len() as i128;
    for record in records {
        for (index, statistic) in plan.statistics.iter().enumerate() {
            let slot = plan.slot(0, index);
            totals[slot] += match statistic {
                Statistic::Count { .. } => 1,
                Statistic::Sum { column, .. } => value(column, record),
                Statistic::SumSquares { column, .. } => value(column, record).pow(2),
                Statistic::SumProducts { left, right, .. } => {
                    value(left, record) * value(right, record)
                }
                other => panic!("no aggregate here reads {other:?}"),
            };
        }
    }
    totals
}

/// One release of `totals` at ε with `shares` members' noise, as the committee adds it.
fn release(
    plan: &QueryPlan,
    totals: &[i128],
    epsilon_micro: u64,
    shares: usize,
    rng: &mut ChaCha20Rng,
) -> QueryAnswer {
    let calibration = calibrate(plan, epsilon_micro).expect("calibration");
    let noisy: Vec<Option<i128>> = totals
        .iter()
        .zip(&calibration.slots)
        .map(|(&total, slot)| {
            let noise: i128 = (0..shares).map(|_| i128::from(slot.sample(rng))).sum();
            Some(total + noise)
        })
        .collect();
    combine_release(plan, &noisy, &ReleaseNoise::of(&calibration, shares)).expect("combined")
}

/// How often each column's interval held its true value, in per cent.
fn coverage(hits: &[u64]) -> Vec<f64> {
    hits.iter()
        .map(|&hit| 100.0 * hit as f64 / RELEASES as f64)
        .collect()
}

fn assert_nominal(columns: &[&str], hits: &[u64]) {
    for (column, percent) in columns.iter().zip(coverage(hits)) {
        println!("{column}: {percent:.1} %");
        assert!(
            (92.0..=98.0).contains(&percent),
            "{column}: its 95 % intervals covered the true value in {percent:.1} % of {RELEASES} releases"
        );
    }
}

fn covers(answer: &QueryAnswer, column: usize, truth: f64) -> bool {
    let bar = answer
        .error(0, column)
        .unwrap_or_else(|| panic!("column {column} has no error bar: {answer:?}"));
    assert!(matches!(answer.rows[0][column], Cell::Number(_)));
    bar.ci_low <= truth && truth <= bar.ci_high
}

#[test]
fn count_and_sum_intervals_cover_the_plaintext_value_in_95_percent_of_releases() {
    let plan = plan("SELECT COUNT(*), SUM(x) FROM patients");
    let mut data_rng = ChaCha20Rng::seed_from_u64(25);
    let records: Vec<(f64, f64)> = (0..300)
        .map(|_| (tenth(data_rng.gen_range(0.0..100.0)), 0.0))
        .collect();
    let plaintext_count = records.len() as f64;
    let plaintext_sum: f64 = records.iter().map(|record| record.0).sum();
    let totals = exact_totals(&plan, &records);
    let mut hits = [0u64; 2];
    for seed in 0..RELEASES {
        let mut rng = ChaCha20Rng::seed_from_u64(1_000 + seed);
        let answer = release(&plan, &totals, 500_000, 3, &mut rng);
        hits[0] += u64::from(covers(&answer, 0, plaintext_count));
        hits[1] += u64::from(covers(&answer, 1, plaintext_sum));
        // The count and the sum have no sampling error: their error bar is the noise alone.
        for column in 0..2 {
            let bar = answer.error(0, column).expect("bar");
            assert!((bar.se - bar.noise_se).abs() <= 1e-9 * bar.se);
        }
    }
    assert_nominal(&["COUNT(*)", "SUM(x)"], &hits);
}

#[test]
fn intervals_cover_the_population_value_in_95_percent_of_releases() {
    // x ~ N(50, 10²); y = 2 + 0.5·x + e, e ~ N(0, 5²): Var y = 25 + 25 = 50.
    let truths = [
        ("AVG(x)", 50.0),
        ("VAR_SAMP(x)", 100.0),
        ("STDDEV_SAMP(x)", 10.0),
        ("REGR_SLOPE(y, x)", 0.5),
        ("REGR_INTERCEPT(y, x)", 2.0),
        ("CORR(y, x)", 50.0 / (100.0f64 * 50.0).sqrt()),
        ("COVAR_SAMP(y, x)", 50.0),
    ];
    let sql = format!(
        "SELECT {} FROM patients",
        truths
            .iter()
            .map(|(aggregate, _)| *aggregate)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let plan = plan(&sql);
    let mut hits = [0u64; 7];
    let mut noise_share = [0.0f64; 7];
    for seed in 0..RELEASES {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let records: Vec<(f64, f64)> = (0..3_000)
            .map(|_| {
                let x = 50.0 + 10.0 * normal(&mut rng);
                let y = 2.0 + 0.5 * x + 5.0 * normal(&mut rng);
                (tenth(x), tenth(y))
            })
            .collect();
        let totals = exact_totals(&plan, &records);
        let answer = release(&plan, &totals, 10_000_000, 2, &mut rng);
        for (column, (_, truth)) in truths.iter().enumerate() {
            hits[column] += u64::from(covers(&answer, column, *truth));
            let bar = answer.error(0, column).expect("bar");
            noise_share[column] += bar.noise_se / bar.se / RELEASES as f64;
        }
    }
    let names: Vec<&str> = truths.iter().map(|(aggregate, _)| *aggregate).collect();
    assert_nominal(&names, &hits);
    // Both parts matter at this size and ε: neither is negligible for the mean, and the noise
    // dominates the variance (one patient can move Σx² by 100², so its noise is large).
    assert!(
        (0.2..0.8).contains(&noise_share[0]),
        "AVG: {}",
        noise_share[0]
    );
    assert!(noise_share[1] > 0.8, "VAR_SAMP: {}", noise_share[1]);
}

/// A variance the noise pushed below 0 is released as 0; its interval still says how large it
/// may be, instead of [0, 0].
#[test]
fn variance_the_noise_pushed_below_zero_still_gets_an_interval() {
    let plan = plan("SELECT VAR_SAMP(x), STDDEV_SAMP(x) FROM patients");
    // 50 patients all at x = 50.0 (x̃ = 500): Σx̃ = 25,000 and Σx̃² = 12,500,000. The noisy
    // Σx̃² below that makes n·Σx̃² − (Σx̃)² negative.
    let mut totals = vec![Some(0i128); plan.vector_len()];
    for (index, statistic) in plan.statistics.iter().enumerate() {
        totals[plan.slot(0, index)] = Some(match statistic {
            Statistic::Count { .. } => 50,
            Statistic::Sum { .. } => 25_000,
            Statistic::SumSquares { .. } => 12_400_000,
            other => unreachable!("VAR_SAMP reads no {other:?}"),
        });
    }
    totals[0] = Some(50);
    let calibration = calibrate(&plan, 1_000_000).expect("calibration");
    let answer = combine_release(&plan, &totals, &ReleaseNoise::of(&calibration, 2)).unwrap();
    for column in 0..2 {
        assert_eq!(answer.rows[0][column], Cell::Number(0.0));
        let bar = answer.error(0, column).expect("an error bar");
        assert_eq!(bar.ci_low, 0.0);
        assert!(bar.ci_high > 0.0 && bar.se > 0.0, "{bar:?}");
    }
}
