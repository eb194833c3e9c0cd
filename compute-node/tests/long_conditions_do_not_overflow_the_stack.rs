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

/// `levels` parenthesised levels, each a chain of sixteen terms whose last is the next level:
/// four tree levels per parenthesis once the chain is balanced.
fn nested_chains(levels: usize) -> String {
    let mut condition = "age >= 0".to_string();
    for _ in 0..levels {
        let chain = vec!["age >= 0"; 15].join(" AND ");
        condition = format!("({chain} AND {condition})");
    }
    format!("SELECT COUNT(*) FROM patients WHERE {condition}")
}

#[test]
fn conditions_nested_too_deep_are_refused_with_the_limit_named() {
    // Deep enough for the depth limit, shallow enough for the parser's recursion limit.
    let sql = nested_chains(13);
    match compile(&sql, vault().schema()) {
        Err(QueryError::Unsupported(reason)) => assert!(
            reason.contains(&format!("at most {MAX_CONDITION_DEPTH}")),
            "{reason}"
        ),
        other => panic!("conditions nested beyond the limit were accepted: {other:?}"),
    }
    // Deeper still, the parser refuses first; neither overflows the stack.
    match count_on_a_worker_stack(nested_chains(40)) {
        Err(QueryError::Syntax(reason)) => assert!(reason.contains("recursion"), "{reason}"),
        Err(QueryError::Unsupported(reason)) => assert!(reason.contains("at most"), "{reason}"),
        other => panic!("conditions nested 160 levels deep were accepted: {other:?}"),
    }
}

#[test]
fn plan_at_the_depth_limit_survives_its_json_form() {
    // The deepest accepted plan must reach every node and the buyer: its JSON form is read
    // back with serde_json's default recursion limit.
    let accepted = (1..=13)
        .rev()
        .find_map(|levels| compile(&nested_chains(levels), vault().schema()).ok())
        .expect("some nesting is accepted");
    let depth = accepted.filter.as_ref().unwrap().depth();
    assert!(depth > MAX_CONDITION_DEPTH - 4, "depth {depth}");
    let json = serde_json::to_string(&accepted).unwrap();
    let read: compute_node::QueryPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(read, accepted);
}
