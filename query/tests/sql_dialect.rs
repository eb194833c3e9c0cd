//! The aggregate-only SQL dialect: what compiles, and what is refused with which reason.

use cohortex_query::plan::{Aggregate, GroupKey, Output, Predicate, Statistic};
use cohortex_query::{compile, QueryError, Schema};

fn accept(sql: &str) -> cohortex_query::QueryPlan {
    compile(sql, &Schema::fhir()).unwrap_or_else(|error| panic!("{sql}: {error}"))
}

fn refuse(sql: &str) -> QueryError {
    compile(sql, &Schema::fhir()).expect_err(sql)
}

fn functions(plan: &cohortex_query::QueryPlan) -> Vec<Aggregate> {
    plan.outputs
        .iter()
        .filter_map(|output| match output {
            Output::Aggregate { function, .. } => Some(*function),
            Output::Group { .. } => None,
        })
        .collect()
}

#[test]
fn count_star_compiles_to_one_count() {
    let plan = accept("SELECT COUNT(*) FROM patients");
    assert_eq!(plan.statistics, vec![Statistic::Count { domain: vec![] }]);
    assert_eq!(plan.vector_len(), 2);
}

#[test]
fn sum_avg_and_variance_share_statistics() {
    let plan = accept("SELECT SUM(hba1c), AVG(hba1c), VAR_SAMP(hba1c), VARIANCE(hba1c), STDDEV_SAMP(hba1c) FROM patients");
    assert_eq!(
        plan.statistics.len(),
        3,
        "n, Σx and Σx² are reused: {:?}",
        plan.statistics
    );
    assert_eq!(
        functions(&plan),
        vec![
            Aggregate::Sum,
            Aggregate::Avg,
            Aggregate::VarSamp,
            Aggregate::VarSamp,
            Aggregate::StddevSamp
        ]
    );
}

#[test]
fn two_column_aggregates_compile() {
    let plan = accept("SELECT CORR(systolic_bp, bmi), COVAR_SAMP(systolic_bp, bmi), REGR_SLOPE(systolic_bp, bmi), REGR_INTERCEPT(systolic_bp, bmi) FROM patients");
    // n, Σy, Σx, Σy², Σx², Σxy over patients with both present.
    assert_eq!(plan.statistics.len(), 6);
    assert!(plan
        .statistics
        .iter()
        .all(|statistic| statistic.domain() == ["bmi", "systolic_bp"]));
}

#[test]
fn where_with_comparisons_between_in_and_or_not_compiles() {
    let plan = accept(
        "SELECT COUNT(*) FROM patients WHERE age BETWEEN 40 AND 65 AND sex IN ('female', 'male') \
         AND NOT (bmi < 18.5 OR bmi >= 40) AND hba1c IS NOT NULL AND systolic_bp > diastolic_bp",
    );
    assert!(matches!(plan.filter, Some(Predicate::And(..))));
}

#[test]
fn condition_and_medication_code_prefixes_compile() {
    let plan = accept("SELECT AVG(hba1c) FROM patients WHERE (has_condition('E11') OR has_condition('44054006')) AND NOT has_medication('6809')");
    let filter = plan.filter.unwrap();
    assert_eq!(
        filter.code_matches(),
        vec![
            ("conditions".to_string(), "E11".to_string()),
            ("conditions".to_string(), "44054006".to_string()),
            ("medications".to_string(), "6809".to_string())
        ]
    );
}

#[test]
fn group_by_category_and_bins_compiles_with_keys_first() {
    let plan = accept("SELECT AVG(hba1c), COUNT(*) FROM patients GROUP BY sex, BIN(age)");
    assert_eq!(plan.cells(), 4 * 7);
    assert_eq!(plan.outputs[0].name(), "sex");
    assert_eq!(plan.outputs[1].name(), "bin(age)");
}

#[test]
fn histogram_over_declared_bins_compiles_to_counts_per_bin() {
    let plan = accept("SELECT HISTOGRAM(hba1c) FROM patients");
    assert!(matches!(&plan.groups[..], [GroupKey::Bin { column, .. }] if column == "hba1c"));
    assert_eq!(
        plan.outputs.iter().map(|o| o.name()).collect::<Vec<_>>(),
        vec!["hba1c_bin", "count"]
    );
}

#[test]
fn select_star_is_refused_as_row_level() {
    assert!(matches!(
        refuse("SELECT * FROM patients"),
        QueryError::RowLevel(_)
    ));
}

#[test]
fn bare_column_is_refused_as_row_level() {
    let error = refuse("SELECT age FROM patients");
    assert!(matches!(error, QueryError::RowLevel(_)), "{error}");
    assert!(error.to_string().contains("AVG(age)"), "{error}");
}

#[test]
fn patient_id_is_refused_as_row_level() {
    assert!(matches!(
        refuse("SELECT COUNT(*) FROM patients WHERE patient_id = 'x'"),
        QueryError::RowLevel(_)
    ));
}

#[test]
fn min_and_max_are_refused_as_row_level() {
    assert!(matches!(
        refuse("SELECT MAX(hba1c) FROM patients"),
        QueryError::RowLevel(_)
    ));
}

#[test]
fn aggregate_of_a_column_without_bounds_is_refused() {
    let manifest = r#"
version = 1
table = "patients"
id_column = "patient_id"
[[columns]]
name = "weight"
type = "float"
"#;
    let schema = Schema::from_toml(manifest, "m").unwrap();
    let error = compile("SELECT AVG(weight) FROM patients", &schema).unwrap_err();
    assert_eq!(
        error,
        QueryError::Unbounded {
            column: "weight".into()
        }
    );
    // Counting patients with a weight needs no bounds.
    compile("SELECT COUNT(weight) FROM patients", &schema).unwrap();
}

#[test]
fn grouping_beyond_the_declared_cardinality_is_refused() {
    let error = refuse("SELECT COUNT(*) FROM patients GROUP BY sex, BIN(age), BIN(bmi)");
    assert!(matches!(error, QueryError::Grouping(_)), "{error}");
    assert!(
        error.to_string().contains("168 cells") && error.to_string().contains("at most 64"),
        "{error}"
    );
}

#[test]
fn grouping_on_a_raw_numeric_column_is_refused() {
    let error = refuse("SELECT COUNT(*) FROM patients GROUP BY age");
    assert!(matches!(error, QueryError::Grouping(_)), "{error}");
    assert!(error.to_string().contains("BIN(age)"), "{error}");
}

#[test]
fn unknown_column_is_refused_with_the_known_ones_listed() {
    let error = refuse("SELECT AVG(hbaic) FROM patients");
    assert!(
        matches!(&error, QueryError::UnknownColumn { column, .. } if column == "hbaic"),
        "{error}"
    );
    assert!(error.to_string().contains("hba1c"));
}

#[test]
fn undeclared_category_in_where_is_refused() {
    let error = refuse("SELECT COUNT(*) FROM patients WHERE sex = 'F'");
    assert!(matches!(error, QueryError::Type(_)), "{error}");
}

#[test]
fn joins_subqueries_order_limit_and_having_are_refused() {
    for sql in [
        "SELECT COUNT(*) FROM patients JOIN patients p2 ON true",
        "SELECT COUNT(*) FROM (SELECT * FROM patients)",
        "SELECT COUNT(*) FROM patients ORDER BY 1",
        "SELECT COUNT(*) FROM patients LIMIT 1",
        "SELECT COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) > 5",
        "SELECT COUNT(DISTINCT age) FROM patients",
        "SELECT AVG(hba1c * 2) FROM patients",
        "DELETE FROM patients",
        "SELECT COUNT(*) FROM patients; SELECT COUNT(*) FROM patients",
    ] {
        assert!(
            matches!(refuse(sql), QueryError::Unsupported(_)),
            "{sql}: {:?}",
            refuse(sql)
        );
    }
}

#[test]
fn syntax_errors_are_reported_as_such() {
    assert!(matches!(
        refuse("SELEC COUNT(*) FROM patients"),
        QueryError::Syntax(_)
    ));
}

#[test]
fn other_tables_are_refused() {
    let error = refuse("SELECT COUNT(*) FROM claims");
    assert!(error.to_string().contains("`patients`"), "{error}");
}

#[test]
fn number_beyond_a_float_is_refused_naming_the_column() {
    // 1e999 parses to infinity, which no plan may hold: a member writes its plan to disk with
    // each release and must read it back after a restart.
    for sql in [
        "SELECT COUNT(*) FROM patients WHERE age < 1e999",
        "SELECT COUNT(*) FROM patients WHERE -1e999 < age",
        "SELECT COUNT(*) FROM patients WHERE age IN (40, 1e999)",
    ] {
        let error = refuse(sql);
        assert!(matches!(error, QueryError::Type(_)), "{sql}: {error}");
        assert!(error.to_string().contains("`age`"), "{sql}: {error}");
        assert!(error.to_string().contains("finite"), "{sql}: {error}");
    }
    accept("SELECT COUNT(*) FROM patients WHERE age < 1e2");
}
