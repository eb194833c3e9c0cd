//! Issue 14, item 2: the Python client (`import cohortex`, this crate's library) driven from a
//! real Python interpreter against a federation over gRPC on loopback with mutual TLS. The
//! released table is checked against the plaintext answer computed here from the records,
//! its units against the manifest, and the patient calls against the ledger.
//!
//! Needs `python3` with `pyarrow` and `polars` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use cohortex_cluster::{Cluster, ClusterOptions, NodeSetup, PatientEnrolment, Payout};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{Schema, Vault};
use market::{AccountId, Purpose};

const PER_NODE: u64 = 40;
/// ε = 10⁵: every noise draw is zero but with probability below e⁻¹⁴⁰, so the release can be
/// compared with the plaintext answer.
const EPSILON: f64 = 100_000.0;

/// Three nodes of synthetic FHIR patients; every fifth does not consent. Returns the setups,
/// the consenting patients' HbA1c values (clipped and rounded as the manifest declares) and
/// the key of one consenting patient.
fn setups() -> (Vec<NodeSetup>, Vec<f64>, ed25519_dalek::SigningKey) {
    let mut setups = Vec::new();
    let mut hba1c = Vec::new();
    let mut consenting_key = None;
    for node in 0..3u64 {
        let mut vault = Vault::new(Schema::fhir());
        let mut patients = Vec::new();
        for offset in 0..PER_NODE {
            let index = node * PER_NODE + offset;
            let patient = synth::patient(7, index);
            let record = bundle_to_record(
                &patient.to_bundle().to_string(),
                &REFERENCE_DATE,
                &ProvenancePolicy::default(),
            )
            .unwrap();
            let consents = index % 5 != 0;
            if consents {
                if let Value::Float(x) = record.values[3] {
                    hba1c.push((x.clamp(3.0, 20.0) * 10.0).round() / 10.0);
                }
                consenting_key.get_or_insert_with(|| patient.key.clone());
            }
            vault.upsert(record).unwrap();
            patients.push(PatientEnrolment {
                key: patient.key,
                consent: consents.then_some(Payout::ToPatient),
                epsilon_limit_micro: None,
            });
        }
        setups.push(NodeSetup::paid(
            format!("clinic-{node}"),
            vault,
            patients,
            1_000,
        ));
    }
    (setups, hba1c, consenting_key.unwrap())
}

fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// The directory holding this crate's library as Python's `cohortex` module: the cdylib that
/// `cargo test` wrote beside this test's executable (`target/debug/deps`) when it built the
/// library for it.
fn module_dir(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let library = exe.parent().unwrap().join("libcohortex.so");
    assert!(
        library.exists(),
        "{} is built with this test (crate-type cdylib and rlib)",
        library.display()
    );
    let modules = dir.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::os::unix::fs::symlink(&library, modules.join("cohortex.abi3.so")).unwrap();
    modules
}

const SCRIPT: &str = r#"
import json, sys
import cohortex

args = json.loads(sys.argv[1])
tls = dict(ca=args["ca"], cert=args["cert"], tls_key=args["tls_key"])
market = cohortex.Market(args["endpoint"], args["buyer_key"], ledger_key=args["ledger_key"], **tls)
out = {"account": market.account}
out["listings"] = sorted(listing["id"] for listing in market.listings(purpose="academic_research"))

table = market.query(
    "SELECT COUNT(*), AVG(hba1c) FROM patients", purpose="academic_research", epsilon=args["epsilon"]
)
out["columns"] = table.column_names
out["rows"] = table.to_pydict()
out["units"] = {f.name: (f.metadata or {}).get(b"cohortex.unit", b"").decode() for f in table.schema}
meta = table.schema.metadata
receipt = meta[b"cohortex.receipt"].decode()
out["receipt_verified"] = meta[b"cohortex.receipt_verified"].decode()
out["verify_again"] = market.verify_receipt(receipt)

frame = market.query_polars(
    "SELECT sex, COUNT(*) FROM patients GROUP BY sex", purpose="academic_research", epsilon=args["epsilon"]
)
out["polars"] = {"type": type(frame).__module__.split(".")[0], "height": frame.height,
                 "total": float(frame["count(*)"].sum())}

model = market.query(
    "SELECT LINEAR(systolic_bp ~ age + bmi) FROM patients", purpose="academic_research",
    epsilon=args["epsilon"]
)
out["model"] = {"columns": model.column_names, "terms": model.column("term").to_pylist(),
                "kind": (model.schema.field("estimate").metadata or {}).get(b"cohortex.kind", b"").decode()}

try:
    market.query("SELECT * FROM patients", purpose="academic_research", epsilon=1.0)
    out["row_level"] = "accepted"
except cohortex.CohortexError as error:
    out["row_level"] = str(error)
try:
    market.query("SELECT COUNT(*) FROM patients", epsilon=-1.0)
    out["bad_epsilon"] = "accepted"
except ValueError as error:
    out["bad_epsilon"] = str(error)

patient = cohortex.Patient(args["endpoint"], args["patient_key"], **tls)
out["consents"] = patient.consents()
out["earnings"] = patient.earnings()
newcomer = cohortex.Patient(args["endpoint"], args["new_patient_key"], **tls)
newcomer.register()
newcomer.consent("clinic-1", "academic_research", epsilon_limit=5.0)
out["new_consents"] = newcomer.consents()
newcomer.revoke("clinic-1", "academic_research")
out["after_revoke"] = newcomer.consents()
# Configured from the market's public.toml (the notebooks' way).
out["from_public"] = {
    "market": cohortex.Market.from_public(args["public"], args["buyer_key"], **tls).account,
    "patient": cohortex.Patient.from_public(args["public"], args["patient_key"], **tls).account,
}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_queries_and_consents_against_a_live_federation() {
    let dir = tempfile::tempdir().unwrap();
    let modules = module_dir(dir.path());
    let (setups, hba1c, patient_key) = setups();
    let options = ClusterOptions {
        purpose: Purpose::AcademicResearch,
        threshold: 2,
        epsilon_budget_micro: 1_000_000_000_000,
        max_epsilon_per_order_micro: 100_000_000_000,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    };
    let cluster = Cluster::start(&dir.path().join("state"), setups, &options, |_| {})
        .await
        .unwrap();

    // The buyer: a key file, registered and credited by the operator.
    let buyer_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let buyer_path = dir.path().join("buyer.key");
    write_secret(&buyer_path, &hex::encode(buyer_key.to_bytes()));
    let buyer = cohortex_client::Buyer::new(
        buyer_key.clone(),
        cluster.chain_id,
        cluster.market_endpoint.clone(),
        0,
    )
    .with_tls(Some(cluster.client_tls().clone()));
    buyer.register().await.unwrap();
    cluster.deposit(buyer.account(), 100_000).await.unwrap();
    let patient_path = dir.path().join("patient.key");
    write_secret(&patient_path, &hex::encode(patient_key.to_bytes()));
    let newcomer = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let newcomer_path = dir.path().join("newcomer.key");
    write_secret(&newcomer_path, &hex::encode(newcomer.to_bytes()));

    let issued = cluster
        .authority()
        .issue("python", &["127.0.0.1".to_string()])
        .unwrap();
    std::fs::write(
        dir.path().join("ca.crt"),
        cluster.authority().certificate_pem(),
    )
    .unwrap();
    std::fs::write(dir.path().join("python.crt"), &issued.certificate_pem).unwrap();
    write_secret(&dir.path().join("python.key"), &issued.key_pem);

    // The market's public.toml, as `market serve` and `demo` write it.
    let public_path = dir.path().join("public.toml");
    cluster.public().write(&public_path).unwrap();

    let arguments = serde_json::json!({
        "endpoint": cluster.market_endpoint,
        "buyer_key": buyer_path,
        "patient_key": patient_path,
        "new_patient_key": newcomer_path,
        "ca": dir.path().join("ca.crt"),
        "cert": dir.path().join("python.crt"),
        "tls_key": dir.path().join("python.key"),
        "ledger_key": hex::encode(cluster.ledger_key.as_bytes()),
        "public": public_path,
        "epsilon": EPSILON,
    });
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(arguments.to_string())
            .env("PYTHONPATH", &modules)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(
        out["account"],
        serde_json::json!(AccountId::of(&buyer_key).to_string())
    );
    assert_eq!(
        out["listings"],
        serde_json::json!(["clinic-0", "clinic-1", "clinic-2"])
    );
    assert_eq!(
        out["columns"],
        serde_json::json!([
            "count(*)",
            "count(*)_se",
            "count(*)_noise_se",
            "count(*)_ci_low",
            "count(*)_ci_high",
            "avg(hba1c)",
            "avg(hba1c)_se",
            "avg(hba1c)_noise_se",
            "avg(hba1c)_ci_low",
            "avg(hba1c)_ci_high",
            "_suppressed"
        ])
    );
    // The plaintext answer: every consenting patient, and the mean of their HbA1c.
    let consenting = (3 * PER_NODE - 3 * PER_NODE / 5) as f64;
    assert_eq!(out["rows"]["count(*)"][0].as_f64().unwrap(), consenting);
    let mean = hba1c.iter().sum::<f64>() / hba1c.len() as f64;
    let released = out["rows"]["avg(hba1c)"][0].as_f64().unwrap();
    assert!((released - mean).abs() < 0.01, "{released} vs {mean}");
    assert_eq!(
        out["units"]["avg(hba1c)"],
        serde_json::json!("%"),
        "the manifest's unit"
    );
    assert_eq!(out["receipt_verified"], serde_json::json!("true"));
    assert_eq!(out["verify_again"], serde_json::json!(true));
    assert_eq!(out["polars"]["type"], serde_json::json!("polars"));
    // A model through pyarrow: one row per coefficient, its columns typed and named.
    assert_eq!(
        out["model"]["columns"],
        serde_json::json!([
            "term",
            "estimate",
            "std_error",
            "noise_se",
            "z",
            "p_value",
            "ci_low",
            "ci_high",
            "_suppressed"
        ])
    );
    assert_eq!(
        out["model"]["terms"],
        serde_json::json!(["(intercept)", "age", "bmi"])
    );
    assert_eq!(out["model"]["kind"], serde_json::json!("estimate"));
    assert_eq!(out["polars"]["total"].as_f64().unwrap(), consenting);
    assert!(
        out["row_level"].as_str().unwrap().contains("aggregate"),
        "a row-level query is refused with the reason: {}",
        out["row_level"]
    );
    assert!(
        out["bad_epsilon"].as_str().unwrap().contains("epsilon"),
        "{}",
        out["bad_epsilon"]
    );
    // The enrolled patient's consent and earnings, as on the ledger.
    assert_eq!(out["consents"][0]["listing"], serde_json::json!("clinic-0"));
    assert_eq!(out["consents"][0]["active"], serde_json::json!(true));
    let balance = {
        let ledger = cluster.coordinator.ledger().lock().unwrap();
        ledger
            .state()
            .account(&AccountId::of(&patient_key))
            .unwrap()
            .balance
    };
    assert!(balance > 0, "the patient was paid for the two queries");
    assert_eq!(out["earnings"]["balance"].as_u64().unwrap(), balance);
    assert_eq!(out["new_consents"][0]["active"], serde_json::json!(true));
    assert_eq!(
        out["new_consents"][0]["epsilon_limit"],
        serde_json::json!(5.0)
    );
    assert_eq!(out["after_revoke"][0]["active"], serde_json::json!(false));
    assert_eq!(out["from_public"]["market"], out["account"]);
    assert_eq!(
        out["from_public"]["patient"],
        serde_json::json!(AccountId::of(&patient_key).to_string())
    );
    cluster.shutdown();
}
