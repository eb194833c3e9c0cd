//! Kaplan–Meier curves and the log-rank test (issue 25, item 2), against the textbook
//! estimator written here over the records' exact event times (not the bins the pipeline
//! sums), Greenwood's variance, and the log-rank statistic of two arms, whose p-value for one
//! degree of freedom is erfc(√(χ²/2)).

use cohortex_query::combine::{combine, combine_release};
use cohortex_query::noise::withheld_slots;
use cohortex_query::{compile, Cell, QueryAnswer, QueryError, QueryPlan, ReleaseNoise, Schema};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "days"
type = "integer"
bounds = [0, 20]
bins = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]

[[columns]]
name = "died"
type = "bool"

[[columns]]
name = "arm"
type = "category"
categories = ["control", "treated"]

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]
"#;

const SQL: &str = "SELECT KAPLAN_MEIER(days, died) FROM patients GROUP BY arm";

/// One patient: arm (0 control, 1 treated), whole days to the event or censoring (0–19),
/// and whether the event was seen.
type Record = (usize, i64, bool);

fn schema() -> Schema {
    Schema::from_toml(MANIFEST, "manifest").expect("schema")
}

fn plan(sql: &str) -> QueryPlan {
    compile(sql, &schema()).expect("plan")
}

/// Exponential event times (the treated arm's hazard half the control's), uniform censoring.
fn trial(per_arm: usize, rng: &mut ChaCha20Rng) -> Vec<Record> {
    let mut records = Vec::new();
    for arm in 0..2 {
        let hazard = if arm == 0 { 0.12 } else { 0.06 };
        for _ in 0..per_arm {
            let event = -rng.gen_range(f64::EPSILON..1.0f64).ln() / hazard;
            let censoring = rng.gen_range(0.0..30.0);
            let seen = event <= censoring && event < 20.0;
            let time = event.min(censoring).min(19.999);
            records.push((arm, time.floor() as i64, seen));
        }
    }
    records
}

fn exact_totals(plan: &QueryPlan, records: &[Record]) -> Vec<i128> {
    let mut totals = vec![0i128; plan.vector_len()];
    totals[0] = records.len() as i128;
    for &(arm, days, died) in records {
        let cell = plan.cell_of(&[arm, days as usize]);
        totals[plan.slot(cell, 0)] += 1;
        totals[plan.slot(cell, 1)] += i128::from(died);
    }
    totals
}

/// The textbook estimator of one arm at every day 0–19: S(t) = Π_{event times s ≤ t}
/// (1 − d_s/n_s) and Greenwood's S(t)²·Σ d_s/(n_s(n_s − d_s)), over the exact times.
fn textbook_curve(records: &[Record], arm: usize) -> Vec<(f64, f64)> {
    let mine: Vec<&Record> = records.iter().filter(|record| record.0 == arm).collect();
    let mut times: Vec<i64> = mine.iter().filter(|r| r.2).map(|r| r.1).collect();
    times.sort_unstable();
    times.dedup();
    (0..20)
        .map(|day| {
            let mut survival = 1.0;
            let mut sum = 0.0;
            for &t in times.iter().filter(|&&t| t <= day) {
                let at_risk = mine.iter().filter(|r| r.1 >= t).count() as f64;
                let deaths = mine.iter().filter(|r| r.1 == t && r.2).count() as f64;
                survival *= 1.0 - deaths / at_risk;
                sum += deaths / (at_risk * (at_risk - deaths));
            }
            (survival, survival * survival * sum)
        })
        .collect()
}

/// The two-arm log-rank χ²: (O₁ − E₁)²/V over the distinct event times.
fn textbook_log_rank(records: &[Record]) -> f64 {
    let mut times: Vec<i64> = records.iter().filter(|r| r.2).map(|r| r.1).collect();
    times.sort_unstable();
    times.dedup();
    let (mut o_minus_e, mut variance) = (0.0, 0.0);
    for t in times {
        let n = records.iter().filter(|r| r.1 >= t).count() as f64;
        let n1 = records.iter().filter(|r| r.1 >= t && r.0 == 0).count() as f64;
        let d = records.iter().filter(|r| r.1 == t && r.2).count() as f64;
        let d1 = records
            .iter()
            .filter(|r| r.1 == t && r.2 && r.0 == 0)
            .count() as f64;
        o_minus_e += d1 - d * n1 / n;
        if n > 1.0 {
            variance += d * (n1 / n) * (1.0 - n1 / n) * (n - d) / (n - 1.0);
        }
    }
    o_minus_e * o_minus_e / variance
}

fn column(answer: &QueryAnswer, name: &str) -> usize {
    answer.columns.iter().position(|c| c == name).unwrap()
}

fn number(cell: &Cell) -> f64 {
    cell.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {cell:?}"))
}

#[test]
fn kaplan_meier_without_noise_matches_the_textbook_estimator_and_log_rank() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let records = trial(400, &mut rng);
    let answer = combine(&plan, &exact_totals(&plan, &records)).unwrap();
    assert_eq!(&answer.columns[..2], ["arm", "bin(days)"]);
    assert_eq!(answer.rows.len(), 2 * 20);
    let (survival, std_error) = (column(&answer, "survival"), column(&answer, "std_error"));
    for arm in 0..2 {
        for (day, (want, variance)) in textbook_curve(&records, arm).into_iter().enumerate() {
            let row = &answer.rows[arm * 20 + day];
            let got = number(&row[survival]);
            assert!(
                (got - want).abs() < 1e-12,
                "arm {arm}, day {day}: {got} vs {want}"
            );
            let se = number(&row[std_error]);
            assert!(
                (se - variance.sqrt()).abs() < 1e-12,
                "arm {arm}, day {day}: se {se}"
            );
        }
    }
    let at_risk = column(&answer, "at_risk");
    assert_eq!(number(&answer.rows[0][at_risk]), 400.0);
    let chi2 = number(&answer.rows[0][column(&answer, "log_rank_chi2")]);
    let want = textbook_log_rank(&records);
    assert!((chi2 - want).abs() < 1e-9 * want, "{chi2} vs {want}");
    assert_eq!(number(&answer.rows[0][column(&answer, "log_rank_df")]), 1.0);
    let p = number(&answer.rows[0][column(&answer, "log_rank_p")]);
    let want_p = statrs::function::erf::erfc((want / 2.0).sqrt());
    assert!((p - want_p).abs() < 1e-9, "{p} vs {want_p}");
    assert!(p < 1e-3, "halving the hazard shows: p = {p}");
}

#[test]
fn kaplan_meier_release_carries_the_noise_in_its_error_bars() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let records = trial(400, &mut rng);
    let totals = exact_totals(&plan, &records);
    let calibration = cohortex_query::dp::calibrate(&plan, 1_000_000).unwrap();
    let noisy: Vec<Option<i128>> = totals
        .iter()
        .zip(&calibration.slots)
        .map(|(&total, slot)| Some(total + i128::from(slot.sample(&mut rng))))
        .collect();
    let answer = combine_release(&plan, &noisy, &ReleaseNoise::of(&calibration, 1)).unwrap();
    let (survival, noise_se, low, high) = (
        column(&answer, "survival"),
        column(&answer, "noise_se"),
        column(&answer, "ci_low"),
        column(&answer, "ci_high"),
    );
    let textbook = textbook_curve(&records, 0);
    for (day, row) in answer.rows.iter().take(20).enumerate() {
        assert!(number(&row[noise_se]) > 0.0, "day {day}");
        let (s, lo, hi) = (
            number(&row[survival]),
            number(&row[low]),
            number(&row[high]),
        );
        assert!((0.0..=1.0).contains(&lo) && lo <= s && s <= hi && hi <= 1.0);
        // ε = 1 over 400 patients: the noisy curve stays near the plaintext one.
        assert!(
            (s - textbook[day].0).abs() < 0.1,
            "day {day}: {s} vs {}",
            textbook[day].0
        );
    }
}

#[test]
fn a_group_with_a_bin_below_the_minimum_cohort_is_withheld_whole() {
    let plan = plan(SQL);
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let records = trial(400, &mut rng);
    let totals = exact_totals(&plan, &records);
    let counts: Vec<i64> = cohortex_query::noise::count_slots(&plan)
        .iter()
        .map(|&slot| totals[slot] as i64)
        .collect();
    // Every control bin holds at least 5 patients; some treated bins fewer than 25.
    let withheld = withheld_slots(&plan, &counts, 5);
    let released: Vec<Option<i128>> = totals
        .iter()
        .zip(&withheld)
        .map(|(&total, &hidden)| (!hidden).then_some(total))
        .collect();
    let answer = combine_release(&plan, &released, &ReleaseNoise::none(plan.vector_len())).unwrap();
    for (index, row) in answer.rows.iter().enumerate() {
        let group_withheld = (0..20).any(|day| withheld[plan.slot((index / 20) * 20 + day, 0)]);
        assert_eq!(
            row[2..].iter().all(|cell| *cell == Cell::Suppressed),
            group_withheld,
            "row {index}: {row:?}"
        );
        // The log-rank test compares every group or none.
        if !group_withheld {
            assert_eq!(row[column(&answer, "log_rank_chi2")], Cell::Null);
        }
    }
    assert!(
        withheld.iter().any(|&hidden| hidden),
        "the test needs a withheld bin"
    );
}

fn refusal(sql: &str) -> String {
    match compile(sql, &schema()) {
        Err(QueryError::Unsupported(message)) | Err(QueryError::Grouping(message)) => message,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn kaplan_meier_over_a_time_without_bins_is_refused() {
    let message = refusal("SELECT KAPLAN_MEIER(age, died) FROM patients");
    assert!(message.contains("`age` has no declared bins"), "{message}");
}

#[test]
fn kaplan_meier_with_an_event_column_that_is_not_boolean_is_refused() {
    let message = refusal("SELECT KAPLAN_MEIER(days, age) FROM patients");
    assert!(message.contains("must be boolean"), "{message}");
}

#[test]
fn kaplan_meier_beside_other_aggregates_is_refused() {
    let message = refusal("SELECT COUNT(*), KAPLAN_MEIER(days, died) FROM patients");
    assert!(message.contains("select it alone"), "{message}");
}

#[test]
fn kaplan_meier_grouped_by_its_own_time_is_refused() {
    let message = refusal("SELECT KAPLAN_MEIER(days, died) FROM patients GROUP BY BIN(days)");
    assert!(message.contains("leave it out of GROUP BY"), "{message}");
}
