//! The layering the crates promise (docs/services.md, "Crates"): the coordinator compiles
//! queries and checks contributions without a vault, so it links no polars; the node's wire
//! contract takes the ledger as the pure state machine, so it links no SQLite (the node's
//! service does, for its replica); the shared types link neither
//! the ledger nor the node; the clients (and the Python module built on them) link nothing a
//! server needs. Checked on the resolved dependency graph (`cargo tree`, offline),
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

/// What only servers need: the ledger's SQLite, the vault's polars, TFHE, the gRPC serving
/// plumbing, the certificate issuer, and the server crates themselves.
const SERVER_SIDE: &[&str] = &[
    "rusqlite",
    "libsqlite3-sys",
    "polars",
    "polars-core",
    "tfhe",
    "tonic-health",
    "tonic-reflection",
    "rcgen",
    "cohortex-coordinator",
    "cohortex-cluster",
];

#[test]
fn python_module_links_neither_sqlite_tfhe_nor_a_server() {
    // The notebooks bring their own polars; the native module carries only the clients: no
    // second copy of the engine, no ledger storage, no TFHE, no service.
    assert_links_none("cohortex-python", &[], SERVER_SIDE);
}

#[test]
fn client_crate_links_nothing_a_server_needs() {
    assert_links_none("cohortex-client", &[], SERVER_SIDE);
}

#[test]
fn query_crate_links_no_records_engine_storage_or_transport() {
    // What the coordinator and the clients take to compile, check and combine: no polars,
    // no ledger, no TFHE, no gRPC.
    assert_links_none(
        "cohortex-query",
        &[],
        &[
            "polars",
            "polars-core",
            "cohortex-vault",
            "market",
            "rusqlite",
            "tfhe",
            "tonic",
            "prost",
        ],
    );
}

/// The domain modules: the query crate (schema, dialect, plans, noise, combining), the vault crate, the
/// ledger's state machine and storage, the cryptography and the order's error. They take and
/// return domain types; the gRPC edge (the `server` modules, `protocol`, the coordinator's
/// node calls) converts. A file listed here that names tonic or prost outside a comment fails.
#[test]
fn domain_modules_import_neither_tonic_nor_prost() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for name in [
        "durable",
        "sealed_share",
        "feasibility",
        "recruitment",
        "error",
        "calls",
        "ceremony",
    ] {
        files.push(root.join(format!("compute-node/src/{name}.rs")));
    }
    for name in [
        "tx",
        "machine",
        "log",
        "audit",
        "hash",
        "sequencer",
        "error",
        "storage",
    ] {
        files.push(root.join(format!("market/src/{name}.rs")));
    }
    files.push(root.join("coordinator/src/error.rs"));
    // Whole folders: the query, the vault, the ledger's state machine, the cryptography.
    let mut folders = vec![
        root.join("query/src"),
        root.join("vault/src"),
        root.join("zk/src"),
    ];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("domain sources") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 40, "found only {} domain files", files.len());
    let mut named = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let words = code.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            if words
                .into_iter()
                .any(|word| word == "tonic" || word == "prost")
            {
                named.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        named.is_empty(),
        "domain modules name the transport:\n{}",
        named.join("\n")
    );
}
