//! The testkit of the end-to-end tests (`tests/tests/`): a 3-node cluster over loopback gRPC
//! with a seeded synthetic population, the plaintext truth computed independently from the
//! records, faulty nodes (`compute-node`'s `fault-injection` feature, enabled only here), the
//! recruiter's keys, and the buyer helpers the tests share.
#![allow(missing_docs, clippy::unwrap_used)]

#[cfg(feature = "tfhe")]
pub mod feasibility;

/// What a large order must leave on `ledger` once its receipt is recorded: no participant
/// still staged for `order` on any of `listings`, and a receipt (the transaction `receipt`)
/// under 16 KiB, since it names no participant: no transaction grows with the number of
/// patients.
pub fn assert_nothing_staged_and_a_small_receipt(
    ledger: &market::Ledger,
    order: market::OrderId,
    listings: &[&str],
    receipt: &market::TxId,
) {
    for listing in listings {
        assert!(
            ledger
                .state()
                .staged_participants(&order, &market::ListingId::new(listing.to_string()))
                .is_empty(),
            "participants still staged on {listing}"
        );
    }
    let receipt = ledger
        .transaction(receipt)
        .unwrap()
        .expect("the receipt is on the ledger");
    assert!(
        receipt.envelope.len() < 16 * 1024,
        "receipt of {} bytes",
        receipt.envelope.len()
    );
}

/// Manifests the process tests write next to their CSV files.
pub mod manifests {
    /// A table of age, sex and systolic blood pressure (mm[Hg]), one row per patient.
    pub const BLOOD_PRESSURE: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]

[[columns]]
name = "sbp"
type = "float"
unit = "mm[Hg]"
bounds = [60.0, 260.0]
decimals = 1
"#;

    /// [`BLOOD_PRESSURE`] with a `patient_key` column naming each row's patient account, so
    /// that patients consent with their own keys.
    pub fn blood_pressure_with_keys() -> String {
        BLOOD_PRESSURE.replacen(
            "id_column = \"patient_id\"\n",
            "id_column = \"patient_id\"\nkey_column = \"patient_key\"\n",
            1,
        )
    }
}

use cohortex_client::Buyer;
use cohortex_cluster::{Cluster, ClusterOptions, NodeSetup, PatientEnrolment, Payout};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::server::Fault;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{Schema, Vault};
use market::{AccountId, Purpose};
use zk::{BsgsConfig, DecryptionTable};

pub const PER_NODE: u64 = 150;
pub const PRICE: u64 = 1_000;
/// ε = 10⁵ per order: every noise draw of these queries is then zero except with probability
/// below e^−140, so these functional tests can compare with the plaintext answer exactly. The
/// noise itself is tested in query/tests/differential_privacy.rs, and the
/// disclosure-control tests use realistic ε.
pub const EPSILON: u64 = 100_000_000_000;
pub const SQL: &str = "SELECT COUNT(*), AVG(hba1c) FROM patients WHERE has_condition('E11') OR has_condition('44054006')";

pub struct Truth {
    pub count: f64,
    pub hba1c: Vec<f64>,
    pub paying: Vec<AccountId>,
    pub donating: usize,
}

pub fn consent_of(index: u64) -> Option<Payout> {
    match index % 5 {
        0 => None,
        1 => Some(Payout::Donate),
        _ => Some(Payout::ToPatient),
    }
}

pub fn setups<const NODES: usize>(
    faults: [Option<Fault>; NODES],
    min_cohort_size: u32,
) -> (Vec<NodeSetup>, Truth) {
    let mut truth = Truth {
        count: 0.0,
        hba1c: vec![],
        paying: vec![],
        donating: 0,
    };
    let mut setups = Vec::new();
    for (node, fault) in faults.into_iter().enumerate() {
        let mut vault = Vault::new(Schema::fhir());
        let mut patients = Vec::new();
        for offset in 0..PER_NODE {
            let index = node as u64 * PER_NODE + offset;
            let patient = synth::patient(99, index);
            let record = bundle_to_record(
                &patient.to_bundle().to_string(),
                &REFERENCE_DATE,
                &ProvenancePolicy::default(),
            )
            .unwrap();
            let consent = consent_of(index);
            if consent.is_some() {
                let codes = match &record.values[7] {
                    Value::Codes(codes) => codes.clone(),
                    _ => vec![],
                };
                if codes
                    .iter()
                    .any(|code| code.starts_with("E11") || code == "44054006")
                {
                    truth.count += 1.0;
                    if let Value::Float(x) = record.values[3] {
                        truth.hba1c.push((x.clamp(3.0, 20.0) * 10.0).round() / 10.0);
                    }
                }
                match consent {
                    Some(Payout::ToPatient) => truth.paying.push(AccountId::of(&patient.key)),
                    _ => truth.donating += 1,
                }
            }
            vault.upsert(record).unwrap();
            patients.push(PatientEnrolment {
                key: patient.key,
                consent,
                epsilon_limit_micro: None,
            });
        }
        setups.push(NodeSetup {
            listing: format!("clinic-{node}"),
            vault,
            patients,
            price_per_query: PRICE,
            donation: false,
            min_cohort_size,
            fault,
        });
    }
    (setups, truth)
}

/// How a test cluster differs from the default.
pub struct Setup {
    /// Per node.
    pub faults: [Option<Fault>; 3],
    /// Every listing's minimum cohort.
    pub min_cohort_size: u32,
    /// Every listing's ε budget, micro-ε.
    pub epsilon_budget_micro: u64,
    /// Purposes the listings allow beyond the one patients consent to.
    pub extra_purposes: Vec<Purpose>,
    /// Where the nodes read the ledger (default: the market itself).
    pub nodes_read_market_at: Option<String>,
    /// The TLS authority (default: the cluster makes its own).
    pub authority: Option<std::sync::Arc<cohortex_proto::certs::Authority>>,
    /// The threshold the operator registers on the ledger (default: the pinned 2).
    pub ledger_committee_threshold: Option<u16>,
    /// Whether the key ceremony runs at start (default: yes; tests of the ceremony relay it).
    pub key_ceremony: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            faults: [None, None, None],
            min_cohort_size: 1,
            epsilon_budget_micro: 100 * EPSILON,
            extra_purposes: Vec::new(),
            nodes_read_market_at: None,
            authority: None,
            ledger_committee_threshold: None,
            key_ceremony: true,
        }
    }
}

pub async fn start(faults: [Option<Fault>; 3]) -> (tempfile::TempDir, Cluster, Truth) {
    start_with(Setup {
        faults,
        ..Setup::default()
    })
    .await
}

/// The options of a test cluster of any size: academic research, threshold 2, budgets and
/// caps that no test order reaches, the key ceremony run at start.
pub fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        purpose: Purpose::AcademicResearch,
        threshold: 2,
        epsilon_budget_micro: 100 * EPSILON,
        max_epsilon_per_order_micro: EPSILON,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    }
}

pub async fn start_with(setup: Setup) -> (tempfile::TempDir, Cluster, Truth) {
    let dir = tempfile::tempdir().unwrap();
    let (setups, truth) = setups(setup.faults, setup.min_cohort_size);
    let options = ClusterOptions {
        epsilon_budget_micro: setup.epsilon_budget_micro,
        // The functional tests order at ε = EPSILON for exact answers; no order asks more.
        max_epsilon_per_order_micro: EPSILON.min(setup.epsilon_budget_micro),
        extra_purposes: setup.extra_purposes,
        nodes_read_market_at: setup.nodes_read_market_at,
        authority: setup.authority,
        ledger_committee_threshold: setup.ledger_committee_threshold,
        key_ceremony: setup.key_ceremony,
        ..cluster_options()
    };
    let cluster = Cluster::start(dir.path(), setups, &options, |_| {})
        .await
        .unwrap();
    (dir, cluster, truth)
}

pub fn listings(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|node| node.listing.clone())
        .collect()
}

pub fn table() -> DecryptionTable {
    DecryptionTable::load_or_build(
        &std::env::temp_dir().join("cohortex-bsgs-cache"),
        BsgsConfig::default(),
    )
    .unwrap()
}

pub async fn balance(cluster: &Cluster, account: AccountId) -> u64 {
    cluster
        .coordinator
        .ledger()
        .lock()
        .unwrap()
        .state()
        .balance(&account)
}

pub fn books_balance(cluster: &Cluster) {
    let ledger = cluster.coordinator.ledger().lock().unwrap();
    let state = ledger.state();
    assert_eq!(
        u128::from(state.total_issued()),
        state.total_balances() + state.escrow_held(),
        "credits are conserved"
    );
    drop(ledger);
    market::audit_database(cluster.ledger_path()).expect("ledger verify passes");
}

/// `buyer` orders [`SQL`] over every listing for academic research at `epsilon_micro`, and
/// waits for, opens and verifies the release.
pub async fn query_sql(
    cluster: &Cluster,
    buyer: &Buyer,
    epsilon_micro: u64,
) -> anyhow::Result<cohortex_client::Release> {
    query(cluster, buyer, SQL, epsilon_micro).await
}

/// `buyer` orders `sql` over every listing for academic research at `epsilon_micro`, and
/// waits for, opens and verifies the release.
pub async fn query(
    cluster: &Cluster,
    buyer: &Buyer,
    sql: &str,
    epsilon_micro: u64,
) -> anyhow::Result<cohortex_client::Release> {
    buyer
        .query(
            sql,
            &listings(cluster),
            Purpose::AcademicResearch,
            epsilon_micro,
            &table(),
            &cluster.ledger_key,
        )
        .await
}

pub async fn buyer(cluster: &Cluster) -> Buyer {
    cluster.new_buyer(10 * PRICE).await.unwrap()
}

/// A registered buyer holding 10 × [`PRICE`] credits, and its key, for tests that sign the
/// buyer's transactions themselves (its next nonce is 1).
pub async fn buyer_with_key(cluster: &Cluster) -> (ed25519_dalek::SigningKey, Buyer) {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let buyer = Buyer::new(
        key.clone(),
        cluster.chain_id,
        cluster.market_endpoint.clone(),
        0,
    )
    .with_tls(Some(cluster.client_tls().clone()));
    buyer.register().await.unwrap();
    cluster.deposit(buyer.account(), 10 * PRICE).await.unwrap();
    (key, buyer)
}

/// The buyer's order for [`SQL`] over every listing at `epsilon_micro`, signed at nonce 1
/// with a fresh result key, and not submitted anywhere.
pub fn signed_order(
    cluster: &Cluster,
    key: &ed25519_dalek::SigningKey,
    epsilon_micro: u64,
) -> market::SignedTx {
    let result_key = zk::KeyPair::generate_with_rng(&mut rand::rngs::OsRng).public;
    market::TxBody {
        chain_id: cluster.chain_id,
        signer: AccountId::of(key),
        nonce: 1,
        action: market::Action::OrderQueryFor {
            query_hash: market::hash::query_hash(SQL),
            listings: listings(cluster)
                .into_iter()
                .map(market::ListingId::new)
                .collect(),
            purpose: Purpose::AcademicResearch,
            epsilon_micro,
            expires_at: market::server::auth::unix_now() + 3600,
            result_key: zk::Wire::to_bytes(&result_key),
        },
    }
    .sign(key)
    .unwrap()
}

/// The market operator's Contribute request for [`SQL`] on `listing` of `order_id`, signed
/// with its coordinator key: what a hostile operator sends a node directly.
pub fn operator_contribute(
    cluster: &Cluster,
    order_id: &[u8],
    listing: &str,
) -> tonic::Request<cohortex_proto::v1::ContributeRequest> {
    let endpoint = cluster
        .nodes
        .iter()
        .find(|node| node.listing == listing)
        .map(|node| node.endpoint.as_str())
        .unwrap_or_default();
    market::server::auth::signed_request_to(
        cluster.operator_key(),
        endpoint,
        compute_node::protocol::methods::CONTRIBUTE,
        cohortex_proto::v1::ContributeRequest {
            order_id: order_id.to_vec(),
            listing: listing.to_string(),
            sql: SQL.into(),
            purpose: "academic_research".into(),
        },
    )
}
