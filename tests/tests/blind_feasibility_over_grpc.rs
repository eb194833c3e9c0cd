//! Issue 13: a recruiter's blind feasibility search across three nodes over real gRPC on
//! loopback (mutual TLS). The recruiter's criteria reach the nodes only encrypted under its
//! own TFHE key; each site's noisy count stays within the differential-privacy error bound of
//! the plaintext count computed here from the records; patients who did not consent to trial
//! feasibility are never counted; the receipt is on the ledger and the books balance.
//!
//! One recruiter key serves every test of the file (key generation takes seconds). That the
//! nodes' logs hold nothing of the criteria is checked in `node_logs_hold_no_criteria.rs`.

#![cfg(feature = "tfhe")]

use testkit::feasibility::*;
use testkit::*;

/// Essential hypertension in ICD-10 and in SNOMED CT: synthetic records carry either.
const HYPERTENSION: &str = "I10,38341003";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_site_counts_are_within_the_dp_bound_of_the_plaintext_counts() {
    let (_dir, cluster, truths) = feasibility_cluster().await;
    let recruiter = buyer(&cluster).await;
    let release = search(
        &cluster,
        &recruiter,
        HYPERTENSION,
        Some("female,male"),
        EPSILON_ONE,
    )
    .await;
    assert!(release.receipt_verified, "the receipt is in the ledger");
    assert_eq!(release.epsilon_micro, EPSILON_ONE);
    assert_eq!(release.sites.len(), 3);
    for (site, truth) in release.sites.iter().zip(&truths) {
        let expected = plaintext_count(truth, HYPERTENSION, Some("female,male"));
        assert!(expected > DP_BOUND, "{} has a cohort to find", site.listing);
        let noisy = site
            .noisy_count
            .unwrap_or_else(|| panic!("{} suppressed (true count {expected})", site.listing));
        assert!(
            (noisy - expected).abs() <= DP_BOUND,
            "{}: noisy {noisy}, plaintext {expected}",
            site.listing
        );
    }
    books_balance(&cluster);
    // ε = 1 was debited from every listing's budget of 100.
    let ledger = cluster.coordinator.ledger().lock().unwrap();
    for listing in listings(&cluster) {
        let listing = ledger
            .state()
            .listing(&market::ListingId::new(listing))
            .unwrap();
        assert_eq!(listing.epsilon_spent_micro, EPSILON_ONE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_who_did_not_consent_are_never_counted() {
    let (_dir, cluster, truths) = feasibility_cluster().await;
    let recruiter = buyer(&cluster).await;
    // Every fifth patient did not consent to trial feasibility. At ε = 1000 the noise is 0
    // (but for probability e⁻¹⁰⁰⁰), so each site's count must be exactly its consenting
    // patients' count, never the count that would include the others.
    let release = search(&cluster, &recruiter, "I10", None, EPSILON_EXACT).await;
    let mut someone_declined = false;
    for (site, truth) in release.sites.iter().zip(&truths) {
        let consenting = plaintext_count(truth, "I10", None);
        let everyone: i64 = truth
            .iter()
            .filter(|p| p.age.is_some_and(|age| age >= 40.0))
            .filter(|p| p.codes.iter().any(|code| code.starts_with("I10")))
            .count() as i64;
        someone_declined |= everyone > consenting;
        assert_eq!(
            site.noisy_count,
            Some(consenting),
            "{}: consenting {consenting}, everyone {everyone}",
            site.listing
        );
    }
    assert!(someone_declined, "the population has patients who declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_feasibility_calls_get_one_noise_draw_even_across_a_restart() {
    use cohortex_proto::v1::compute_client::ComputeClient;
    use cohortex_proto::v1::FeasibilityRequest;
    use compute_node::feasibility::EncryptedCriteria;
    use compute_node::feasibility_wire::{criteria_hash, criteria_to_wire};
    use compute_node::protocol::methods;
    use market::server::auth::{signed_request_to, signed_stream_request_to, unix_now};

    let (_dir, mut cluster, _truths) = feasibility_cluster().await;
    let keys = recruiter_keys();
    let (recruiter, _) = buyer_with_key(&cluster).await;
    let fingerprint = zk::fhe::EvaluationKey::fingerprint_of(&keys.evaluation_key);
    let clauses = EncryptedCriteria::encrypt(&criteria("I10", None), &keys.secret);
    let wire = criteria_to_wire(fingerprint, &clauses);
    // The recruiter's order, appended by the operator to the ledger it runs, so that only the
    // operator (not the honest coordinator) asks the nodes.
    let order = market::TxBody {
        chain_id: cluster.chain_id,
        signer: market::AccountId::of(&recruiter),
        nonce: 1,
        action: market::Action::OrderQueryFor {
            query_hash: criteria_hash(&wire),
            listings: listings(&cluster)
                .into_iter()
                .map(market::ListingId::new)
                .collect(),
            purpose: market::Purpose::TrialFeasibility,
            epsilon_micro: EPSILON_ONE,
            expires_at: unix_now() + 3600,
            result_key: wire.evaluation_key.clone(),
        },
    }
    .sign(&recruiter)
    .unwrap();
    let appended = cluster
        .ledger
        .lock()
        .unwrap()
        .append(vec![order.bytes.clone()])
        .unwrap();
    assert!(appended.refused.is_empty(), "{:?}", appended.refused);

    let mut node = ComputeClient::new(
        cluster
            .channel_to(&cluster.nodes[0].endpoint)
            .await
            .unwrap(),
    );
    node.put_evaluation_key(signed_stream_request_to(
        cluster.operator_key(),
        &cluster.nodes[0].endpoint,
        methods::PUT_EVALUATION_KEY,
        cohortex_coordinator::coordinator::key_chunks(&keys.evaluation_key),
    ))
    .await
    .unwrap();
    // Two noisy counts of one cohort, each with its own noise, average to a less noisy one:
    // the operator asks twice at once.
    let operator = cluster.operator_key().clone();
    let endpoint = cluster.nodes[0].endpoint.clone();
    let listing = listings(&cluster)[0].clone();
    let request = || {
        signed_request_to(
            &operator,
            &endpoint,
            methods::FEASIBILITY,
            FeasibilityRequest {
                order_id: order.id().0.as_bytes().to_vec(),
                listing: listing.clone(),
                criteria: Some(wire.clone()),
            },
        )
    };
    let (mut first, mut second) = (node.clone(), node.clone());
    let (first, second) = tokio::join!(first.feasibility(request()), second.feasibility(request()));
    let answers = [first, second];
    let answered = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(answered, 1, "{answers:?}");
    let refused = answers
        .iter()
        .find_map(|answer| answer.as_ref().err())
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    // Nor is it answered a third time.
    let again = node
        .feasibility(request())
        .await
        .expect_err("a node answered one feasibility order twice");
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    // Nor after a restart, once the operator hands the restarted node the key again: the
    // answer was recorded on disk before it left.
    cluster.restart_node(0).await.unwrap();
    let mut node = ComputeClient::new(
        cluster
            .channel_to(&cluster.nodes[0].endpoint)
            .await
            .unwrap(),
    );
    node.put_evaluation_key(signed_stream_request_to(
        cluster.operator_key(),
        &cluster.nodes[0].endpoint,
        methods::PUT_EVALUATION_KEY,
        cohortex_coordinator::coordinator::key_chunks(&keys.evaluation_key),
    ))
    .await
    .unwrap();
    let after_restart = node
        .feasibility(request())
        .await
        .expect_err("a restarted node answered a feasibility order again");
    assert_eq!(
        after_restart.code(),
        tonic::Code::AlreadyExists,
        "{after_restart:?}"
    );
    cluster.shutdown();
}

/// A FHIR-schema vault of `patients` who all consent, built from values directly (the FHIR
/// round trip is tested elsewhere): every third has essential hypertension (I10), ages run
/// 20 to 99. Returns the setup and the plaintext count of hypertensive patients aged 40+.
fn large_feasibility_setup(
    listing: &str,
    patients: u64,
    first: u64,
    price: u64,
) -> (cohortex_cluster::NodeSetup, i64) {
    use compute_node::record::{PatientRecord, Value};
    use compute_node::schema::ColumnType;
    let schema = compute_node::Schema::fhir();
    let mut vault = compute_node::Vault::new(schema.clone());
    let mut enrolments = Vec::with_capacity(patients as usize);
    let mut expected = 0;
    for offset in 0..patients {
        let index = first + offset;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let age = 20 + (index % 80) as i64;
        let hypertensive = index % 3 == 0;
        let values = schema
            .columns
            .iter()
            .map(|column| match column.column_type {
                ColumnType::Integer if column.name == "age" => Value::Integer(age),
                ColumnType::Category => Value::Category(
                    column.categories.as_ref().expect("declared categories")[0].clone(),
                ),
                ColumnType::Codes => {
                    Value::Codes(vec![if hypertensive { "I10" } else { "J45" }.into()])
                }
                _ => Value::Null,
            })
            .collect();
        vault
            .upsert(PatientRecord {
                patient_id: format!("p{index}"),
                patient_key: Some(hex::encode(key.verifying_key().as_bytes())),
                source: None,
                values,
            })
            .expect("the record fits the FHIR schema");
        if hypertensive && age >= 40 {
            expected += 1;
        }
        enrolments.push(cohortex_cluster::PatientEnrolment {
            key,
            consent: Some(cohortex_cluster::Payout::ToPatient),
            epsilon_limit_micro: None,
        });
    }
    (
        cohortex_cluster::NodeSetup::paid(listing.into(), vault, enrolments, price),
        expected,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feasibility_over_more_participants_than_one_transaction_holds() {
    // More consenting patients at one site than one staging transaction holds: before, the
    // receipt named them all and the ledger refused it past about 131,000; now they are
    // staged in chunks in the receipt's block and the receipt names none. They are also more
    // than one message of the node's answer holds: the coordinator reads the rest of the
    // list a page at a time (before, one answer carried the whole list, which the gRPC
    // message limit stopped at about 240,000), and pays every one of them below.
    let big = market::MAX_STAGED_PER_TX as u64 + 1_000;
    assert!(big as usize > compute_node::server::PARTICIPANTS_PAGE);
    // Two credits for each of the large site's patients, so each share is exact.
    let (large, expected) = large_feasibility_setup("large-site", big, 0, 2 * big);
    let (small, _) = large_feasibility_setup("small-site", 60, big, 1_000);
    let (_dir, cluster) =
        purpose_cluster(vec![large, small], market::Purpose::TrialFeasibility).await;
    let recruiter = cluster.new_buyer(1_000_000).await.unwrap();
    let release = search(&cluster, &recruiter, "I10", None, EPSILON_EXACT).await;
    assert!(release.receipt_verified, "the receipt is in the ledger");
    assert_eq!(release.sites[0].listing, "large-site");
    assert_eq!(release.sites[0].noisy_count, Some(expected));

    let ledger = cluster.coordinator.ledger().lock().unwrap();
    let state = ledger.state();
    let order = market::OrderId(release.order);
    assert_nothing_staged_and_a_small_receipt(&ledger, order, &["large-site"], &release.receipt);
    // Every consenting patient of the large site took part and was paid its share.
    let share = 2;
    let paid = state
        .accounts()
        .filter(|(_, account)| account.role == market::Role::Patient && account.balance == share)
        .count() as u64;
    assert_eq!(paid, big, "{paid} patients paid {share}, {big} took part");
}
