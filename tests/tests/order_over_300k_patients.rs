//! An order over 300,000 patients (6 nodes × 50,000, all in this process) completes, and no
//! transaction on the ledger grows with the number of patients (issue 23). Before the
//! participants were staged in chunks, a receipt listed every one of them in one transaction
//! and an order over about 131,000 failed.
#![allow(clippy::unwrap_used)]

use cohortex_cluster::{Cluster, NodeSetup, PatientEnrolment, Payout};
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::ContributionParticipantsRequest;
use compute_node::protocol::methods;
use compute_node::record::{PatientRecord, Value};
use compute_node::server::PARTICIPANTS_PAGE;
use compute_node::{Schema, Vault};
use ed25519_dalek::SigningKey;
use market::server::auth::signed_request_to;
use market::{AccountId, MAX_STAGED_PER_TX};
use rand::rngs::OsRng;
use testkit::{cluster_options, listings, manifests, query, EPSILON, PRICE};

const NODES: usize = 6;
const PER_NODE: u64 = 50_000;

/// The plaintext answer, computed from the rows as they are generated.
#[derive(Default)]
struct Truth {
    count: f64,
    sbp_sum: f64,
    /// Consenting patients per node, each paid `PRICE / n` of their listing.
    consenting: Vec<Vec<AccountId>>,
}

fn population() -> (Vec<NodeSetup>, Truth) {
    let schema = Schema::from_toml(&manifests::blood_pressure_with_keys(), "test").unwrap();
    let mut truth = Truth::default();
    let mut setups = Vec::new();
    for node in 0..NODES {
        let mut vault = Vault::new(schema.clone());
        let mut patients = Vec::with_capacity(PER_NODE as usize);
        let mut consenting = Vec::new();
        for offset in 0..PER_NODE {
            let index = node as u64 * PER_NODE + offset;
            let key = SigningKey::generate(&mut OsRng);
            let age = 18 + (index * 7_919) % 80;
            let sbp = 90.0 + ((index * 104_729) % 900) as f64 / 10.0;
            let record = PatientRecord {
                patient_id: format!("p{index}"),
                patient_key: Some(hex::encode(key.verifying_key().as_bytes())),
                source: None,
                values: vec![
                    Value::Integer(age as i64),
                    Value::Category(if index % 2 == 0 { "female" } else { "male" }.into()),
                    Value::Float(sbp),
                ],
            };
            vault.upsert(record).unwrap();
            // One in ten does not consent.
            let consent = (index % 10 != 0).then_some(Payout::ToPatient);
            if consent.is_some() {
                consenting.push(AccountId::of(&key));
                if age >= 40 {
                    truth.count += 1.0;
                    truth.sbp_sum += sbp;
                }
            }
            patients.push(PatientEnrolment {
                key,
                consent,
                epsilon_limit_micro: None,
            });
        }
        truth.consenting.push(consenting);
        setups.push(NodeSetup::paid(
            format!("hospital-{node}"),
            vault,
            patients,
            PRICE,
        ));
    }
    (setups, truth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_over_300k_patients_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (setups, truth) = population();
    let cluster = Cluster::start(dir.path(), setups, &cluster_options(), |_| {})
        .await
        .unwrap();
    let listings = listings(&cluster);
    let buyer = cluster.new_buyer(PRICE * NODES as u64).await.unwrap();
    let release = query(
        &cluster,
        &buyer,
        "SELECT COUNT(*), AVG(sbp) FROM patients WHERE age >= 40",
        EPSILON,
    )
    .await
    .unwrap();
    assert!(release.receipt_verified);

    // The answer is the plaintext one (ε is large enough that every noise draw is zero).
    let row = &release.answer.rows[0];
    assert_eq!(row[0].as_f64(), Some(truth.count));
    let mean = row[1].as_f64().unwrap();
    let expected = truth.sbp_sum / truth.count;
    assert!((mean - expected).abs() < 1e-6, "{mean} vs {expected}");
    let consenting: usize = truth.consenting.iter().map(Vec::len).sum();
    assert_eq!(consenting, 270_000, "one in ten does not consent");
    assert_eq!(release.answer.participants, consenting as u64);

    // Each consenting patient was paid their listing's price over its participants.
    {
        let ledger = cluster.coordinator.ledger().lock().unwrap();
        let state = ledger.state();
        for people in &truth.consenting {
            let share = PRICE / people.len() as u64;
            for person in [
                people[0],
                people[people.len() / 2],
                people[people.len() - 1],
            ] {
                assert_eq!(state.balance(&person), share);
            }
        }
        let order = market::OrderId(release.order);
        // No transaction grows with the number of patients: the largest is a chunk of
        // staged participants, and the receipt is a few kilobytes.
        let names: Vec<&str> = listings.iter().map(String::as_str).collect();
        testkit::assert_nothing_staged_and_a_small_receipt(
            &ledger,
            order,
            &names,
            &release.receipt,
        );
        let height = ledger.machine().height();
        let mut largest = 0;
        for block in 1..=height {
            let mut start = 0;
            while let Some(page) = ledger.block_envelopes(block, start, 1 << 22).unwrap() {
                largest = page
                    .envelopes
                    .iter()
                    .map(Vec::len)
                    .fold(largest, usize::max);
                if page.next >= page.tx_count {
                    break;
                }
                start = page.next;
            }
        }
        assert!(
            largest <= MAX_STAGED_PER_TX * 32 + 1024,
            "largest transaction: {largest} bytes"
        );
    }
    // Each node's list is longer than a page: the coordinator read the rest from node 0 a
    // page at a time, and so can a second reader with its key; past the end is refused.
    let endpoint = cluster.nodes[0].endpoint.clone();
    let page = |offset: u64| {
        let request = signed_request_to(
            cluster.operator_key(),
            &endpoint,
            methods::CONTRIBUTION_PARTICIPANTS,
            ContributionParticipantsRequest {
                order_id: release.order.0.as_bytes().to_vec(),
                offset,
            },
        );
        let channel = cluster.channel_to(&endpoint);
        async move {
            ComputeClient::new(channel.await.unwrap())
                .contribution_participants(request)
                .await
                .map(|page| page.into_inner().participants)
        }
    };
    let first = truth.consenting[0].len();
    assert!(first > PARTICIPANTS_PAGE);
    let second_page = page(PARTICIPANTS_PAGE as u64).await.unwrap();
    assert_eq!(second_page.len(), first - PARTICIPANTS_PAGE);
    let mut expected = truth.consenting[0].clone();
    expected.sort();
    assert_eq!(
        second_page.last().unwrap().as_slice(),
        &expected[first - 1].0
    );
    let beyond = page(first as u64 + 1)
        .await
        .expect_err("an offset past the end is refused");
    assert_eq!(beyond.code(), tonic::Code::OutOfRange, "{beyond:?}");
    assert!(
        beyond.message().starts_with("offset:"),
        "{}",
        beyond.message()
    );
    cluster.shutdown();
}
