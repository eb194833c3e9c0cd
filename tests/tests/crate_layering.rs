//! The layering the crates promise (docs/services.md, "Crates"): the coordinator compiles
//! queries and checks contributions without a vault, so it links no polars; the node's wire
//! contract takes the ledger as the pure state machine, so it links no SQLite (the node's
//! service does, for its replica); the shared types link neither
//! the ledger nor the node. Checked on the resolved dependency graph (`cargo tree`, offline),
//! so a dependency added in the wrong place fails here, not in a review.

use std::process::Command;

/// The crates `package` links with `features`, one name per line (normal dependencies only).
fn linked(package: &str, features: &[&str]) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args([
        "tree",
        "--offline",
        "--manifest-path",
        manifest,
        "--package",
        package,
        "--edges",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command.output().expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_links_none(package: &str, features: &[&str], forbidden: &[&str]) {
    let crates = linked(package, features);
    assert!(
        crates.iter().any(|name| name == package),
        "cargo tree listed no {package}: {crates:?}"
    );
    for name in forbidden {
        assert!(
            !crates.iter().any(|linked| linked == name),
            "{package} (features {features:?}) links {name}"
        );
    }
}

#[test]
fn coordinator_links_no_polars() {
    assert_links_none(
        "cohortex-coordinator",
        &[],
        &["polars", "polars-core", "polars-lazy"],
    );
}

#[test]
fn compute_node_wire_contract_links_no_sqlite() {
    // What the coordinator and clients take of the node: the ledger as the pure state
    // machine. (The node's own service keeps its verified replica in SQLite.)
    assert_links_none(
        "compute-node",
        &["protocol"],
        &["rusqlite", "libsqlite3-sys"],
    );
}

#[test]
fn shared_types_link_neither_the_ledger_nor_the_node() {
    assert_links_none(
        "cohortex-types",
        &["rpc"],
        &[
            "market",
            "compute-node",
            "rusqlite",
            "polars",
            "tfhe",
            "bulletproofs",
        ],
    );
}

#[test]
fn python_client_links_no_polars_of_its_own() {
    // The notebooks bring their own polars; the client's native module must not carry a
    // second copy of the engine.
    assert_links_none("cohortex-python", &[], &["polars", "polars-core"]);
}
