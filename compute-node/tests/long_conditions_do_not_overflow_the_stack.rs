//! Conditions as long as the longest query a node accepts are compiled and evaluated without
//! recursion that grows with the query: an 8,170-entry IN list used to abort every node named
//! in the order. Each query runs on a thread with the 2 MiB stack of a tokio worker, and the
//! count is checked against the plaintext answer.

use compute_node::combine::sum_vectors;
use compute_node::ingest::ingest_table;
use compute_node::sql::{MAX_CONDITION_DEPTH, MAX_QUERY_LEN};
use compute_node::{combine, compile, evaluate, ConsentBook, QueryError, Schema, Vault};

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]
"#;

/// Patients aged 0 to 119, one each.
fn vault() -> Vault {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    let rows: String = (0..120).map(|age| format!("p{age},{age}\n")).collect();
    std::fs::write(&path, format!("patient_id,age\n{rows}")).unwrap();
    let mut vault = Vault::new(Schema::from_toml(MANIFEST, "m").unwrap());
    let report = ingest_table(&path, &mut vault).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    vault
}

/// The count the node computes, on a thread with a tokio worker's stack.
fn count_on_a_worker_stack(sql: String) -> Result<f64, QueryError> {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let vault = vault();
            let plan = compile(&sql, vault.schema())?;
            let consents = ConsentBook::everyone(&vault, "research");
            let statistics = evaluate(&plan, &vault, &consents, "research").unwrap();
            let answer = combine(&plan, &sum_vectors(&[statistics.values])).unwrap();
            Ok(answer.rows[0][0].as_f64().unwrap())
        })
        .unwrap()
        .join()
        .expect("the query overflowed the stack or panicked")
}

/// `prefix` followed by `term(0)`, `term(1)`, … joined by `separator`, as long as fits in
/// `MAX_QUERY_LEN` with `suffix`; returns the query and how many terms it holds.
fn longest(
    prefix: &str,
    term: impl Fn(usize) -> String,
    separator: &str,
    suffix: &str,
) -> (String, usize) {
    let mut sql = prefix.to_string();
    let mut terms = 0;
    loop {
        let next = format!("{}{}", if terms == 0 { "" } else { separator }, term(terms));
        if sql.len() + next.len() + suffix.len() > MAX_QUERY_LEN {
            break;
        }
        sql.push_str(&next);
        terms += 1;
    }
    sql.push_str(suffix);
    (sql, terms)
}

#[test]
fn in_list_at_max_query_length_does_not_overflow_the_stack() {
    // Ages 0 to 9, repeated: thousands of entries, ten distinct values.
    let (sql, entries) = longest(
        "SELECT COUNT(*) FROM patients WHERE age IN (",
        |index| (index % 10).to_string(),
        ",",
        ")",
    );
    assert!(entries > 5_000, "{entries} entries");
    assert_eq!(sql.len(), MAX_QUERY_LEN);
    assert_eq!(count_on_a_worker_stack(sql).unwrap(), 10.0);
}

#[test]
fn or_chain_at_max_query_length_does_not_overflow_the_stack() {
    let (sql, terms) = longest(
        "SELECT COUNT(*) FROM patients WHERE ",
        |index| format!("age = {}", 100 + index % 20),
        " OR ",
        "",
    );
    assert!(terms > 1_000, "{terms} terms");
    // Ages 100 to 119.
    assert_eq!(count_on_a_worker_stack(sql).unwrap(), 20.0);
}

#[test]
fn and_chain_at_max_query_length_does_not_overflow_the_stack() {
    let (sql, terms) = longest(
        "SELECT COUNT(*) FROM patients WHERE ",
        |index| format!("age >= {}", index % 30),
        " AND ",
        "",
    );
    assert!(terms > 1_000, "{terms} terms");
    // age >= 29: ages 29 to 119.
    assert_eq!(count_on_a_worker_stack(sql).unwrap(), 91.0);
}

#[test]
fn conditions_nested_too_deep_are_refused_with_a_limit_named() {
    // Forty levels, each a chain of sixteen terms whose last is the next level: the parser
    // allows 50 levels of nesting and the balanced tree is four levels deep per chain, so one
    // of the two limits refuses it (and neither overflows the stack on the way).
    let mut condition = "age >= 0".to_string();
    for _ in 0..40 {
        let chain = vec!["age >= 0"; 15].join(" AND ");
        condition = format!("({chain} AND {condition})");
    }
    let sql = format!("SELECT COUNT(*) FROM patients WHERE {condition}");
    assert!(sql.len() < MAX_QUERY_LEN);
    match count_on_a_worker_stack(sql) {
        Err(QueryError::Unsupported(reason)) => {
            assert!(
                reason.contains(&format!("at most {MAX_CONDITION_DEPTH}")),
                "{reason}"
            );
        }
        Err(QueryError::Syntax(reason)) => {
            assert!(reason.contains("recursion limit"), "{reason}");
        }
        other => panic!("conditions nested 160 levels deep were accepted: {other:?}"),
    }
}
