//! Shared by the blind feasibility tests (issue 13): a cluster whose patients consent to
//! trial feasibility, the recruiter's key, the plaintext truth and the search itself.

use std::sync::OnceLock;

use cohortex_cluster::{Cluster, ClusterOptions, NodeSetup};
use compute_node::feasibility::Criterion;
use compute_node::record::Value;
use compute_node::Schema;
use market::Purpose;
use zk::fhe::FheSecretKey;

use super::{listings, setups};

/// ε = 1: the discrete Laplace scale is 1/ε = 1.
pub const EPSILON_ONE: u64 = 1_000_000;
/// ε = 1000: the noise is 0 except with probability about e⁻¹⁰⁰⁰, for exact comparisons.
pub const EPSILON_EXACT: u64 = 1_000_000_000;
/// |X| > 12 has probability 2e⁻¹³/(1 + e⁻¹) ≈ 3·10⁻⁶ at scale 1: the bound a site's noisy count
/// keeps from its plaintext count in these tests.
pub const DP_BOUND: i64 = 12;

pub struct RecruiterKeys {
    pub secret: FheSecretKey,
    pub evaluation_key: Vec<u8>,
}

pub fn recruiter_keys() -> &'static RecruiterKeys {
    static KEYS: OnceLock<RecruiterKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = FheSecretKey::generate();
        let evaluation_key = secret.evaluation_key().to_bytes();
        RecruiterKeys {
            secret,
            evaluation_key,
        }
    })
}

/// A 3-node cluster whose consenting patients consent to trial feasibility, and each node's
/// setup kept for the plaintext truth.
pub async fn feasibility_cluster() -> (tempfile::TempDir, Cluster, Vec<Vec<PatientTruth>>) {
    let (setups, _) = setups([None, None, None], 1);
    let truths = setups.iter().map(patient_truths).collect();
    let (dir, cluster) = purpose_cluster(setups, Purpose::TrialFeasibility).await;
    (dir, cluster, truths)
}

/// A cluster of `setups` whose consenting patients consent to `purpose`, each listing with an
/// ε budget of 100 exact searches.
pub async fn purpose_cluster(
    setups: Vec<NodeSetup>,
    purpose: Purpose,
) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        purpose,
        threshold: 2,
        epsilon_budget_micro: 100 * EPSILON_EXACT,
        max_epsilon_per_order_micro: EPSILON_EXACT,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    };
    let cluster = Cluster::start(dir.path(), setups, &options, |_| {})
        .await
        .unwrap();
    (dir, cluster)
}

/// What the plaintext count needs of one patient: consent, age, sex, codes.
pub struct PatientTruth {
    pub consents: bool,
    pub age: Option<f64>,
    pub sex: String,
    pub codes: Vec<String>,
}

pub fn patient_truths(setup: &NodeSetup) -> Vec<PatientTruth> {
    let schema = setup.vault.schema();
    let at = |name: &str| schema.columns.iter().position(|c| c.name == name).unwrap();
    setup
        .vault
        .records()
        .iter()
        .map(|record| {
            let key = record.patient_key.clone().unwrap();
            let enrolment = setup
                .patients
                .iter()
                .find(|p| hex::encode(p.key.verifying_key().as_bytes()) == key)
                .unwrap();
            PatientTruth {
                consents: enrolment.consent.is_some(),
                age: record.values[at("age")].as_f64(),
                sex: match &record.values[at("sex")] {
                    Value::Category(sex) => sex.clone(),
                    _ => String::new(),
                },
                codes: match &record.values[at("conditions")] {
                    Value::Codes(codes) => codes.clone(),
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

/// Consenting patients aged 40 or more whose conditions include one starting with one of the
/// comma-separated `prefix`es.
pub fn plaintext_count(patients: &[PatientTruth], prefix: &str, sex: Option<&str>) -> i64 {
    patients
        .iter()
        .filter(|p| p.consents)
        .filter(|p| p.age.is_some_and(|age| age >= 40.0))
        .filter(|p| sex.is_none_or(|wanted| wanted.split(',').any(|one| p.sex == one)))
        .filter(|p| {
            p.codes
                .iter()
                .any(|code| prefix.split(',').any(|one| code.starts_with(one)))
        })
        .count() as i64
}

pub fn criteria(prefix: &str, sex: Option<&str>) -> Vec<Criterion> {
    let schema = Schema::fhir();
    let mut texts = vec![
        "age 40..120 step 5".to_string(),
        format!("conditions has {prefix} among E10,E11,E13,44054006,I10,38341003,I25,J45"),
    ];
    if let Some(sex) = sex {
        texts.push(format!("sex in {sex}"));
    }
    texts
        .iter()
        .map(|text| Criterion::parse(text, &schema).unwrap())
        .collect()
}

pub async fn search(
    cluster: &Cluster,
    buyer: &cohortex_client::Buyer,
    prefix: &str,
    sex: Option<&str>,
    epsilon_micro: u64,
) -> cohortex_client::recruiter::FeasibilityRelease {
    let keys = recruiter_keys();
    buyer
        .feasibility(
            &keys.secret,
            &keys.evaluation_key,
            &criteria(prefix, sex),
            &listings(cluster),
            epsilon_micro,
            &cluster.ledger_key,
        )
        .await
        .unwrap()
}
