//! The whole product over real gRPC on loopback: patients consent, nodes list, the buyer
//! deposits and orders, nodes check consent and contribute encrypted proven statistics, the
//! coordinator verifies and sums, a 2-of-3 committee adds noise and key-switches to the buyer,
//! the buyer decrypts and combines, the receipt goes on the ledger and escrow settles.

use cohortex_cluster::Cluster;
use compute_node::server::Fault;
use compute_node::synth;
use market::{AccountId, Purpose};
use testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_matches_the_plaintext_answer_and_settles() {
    let (_dir, cluster, truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let row = &release.answer.rows[0];
    assert_eq!(row[0].as_f64(), Some(truth.count));
    let mean = truth.hba1c.iter().sum::<f64>() / truth.hba1c.len() as f64;
    // Noise on Σ hba1c at ε = 10⁵: each member's scale is 4·170/10⁵ fixed-point units, so
    // its draw is 0 except with probability about 2·e^−147; the mean is then exact to the
    // 0.1 % fixed point. (At ε = 1000, 3 members' noise of a few units over 26 patients
    // moved the mean by more than 0.01 in about one run in twelve.)
    assert!(
        (row[1].as_f64().unwrap() - mean).abs() < 0.01,
        "{:?} vs {mean}",
        row[1]
    );
    assert_eq!(release.status.epsilon_micro, EPSILON);
    // The noise of a quorum of t = 2 members, the first two by index (docs/privacy.md).
    assert_eq!(release.status.noise_members, vec![1, 2]);
    assert_eq!(
        release.answer.participants,
        (truth.paying.len() + truth.donating) as u64
    );
    assert!(release.receipt_verified);

    // Escrow settled: each listing's price is split evenly among its participants (the
    // remainder, fewer credits than participants, goes back to the buyer; docs/ledger.md).
    let participants_per_listing = [0u64, 1, 2].map(|node| {
        (0..PER_NODE)
            .filter(|offset| consent_of(node * PER_NODE + offset).is_some())
            .count() as u64
    });
    let refunded_remainder: u64 = participants_per_listing.iter().map(|n| PRICE % n).sum();
    assert_eq!(
        balance(&cluster, buyer.account()).await,
        10 * PRICE - 3 * PRICE + refunded_remainder
    );
    let paid: u64 = futures_sum(&cluster, &truth.paying).await;
    let donated = balance(&cluster, cluster.fund).await;
    assert_eq!(
        paid + donated + refunded_remainder,
        3 * PRICE,
        "every escrowed credit reached a participant, the fund or the buyer"
    );
    assert!(donated > 0 && paid > 0);
    books_balance(&cluster);
    cluster.shutdown();
}

async fn futures_sum(cluster: &Cluster, accounts: &[AccountId]) -> u64 {
    let mut total = 0;
    for account in accounts {
        total += balance(cluster, *account).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_at_key_switch_still_completes_with_two_of_three() {
    let (_dir, cluster, truth) = start([None, None, Some(Fault::DownAtKeySwitch)]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(release.answer.rows[0][0].as_f64(), Some(truth.count));
    let mut used = release.status.committee_used.clone();
    used.sort();
    assert_eq!(used, vec![1, 2], "member 3 was down");
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_at_the_noise_round_is_replaced_by_the_next() {
    let (_dir, cluster, truth) = start([Some(Fault::DownAtKeySwitch), None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(release.answer.rows[0][0].as_f64(), Some(truth.count));
    assert_eq!(
        release.status.noise_members,
        vec![2, 3],
        "member 1 did not answer: member 3 took its place in the quorum"
    );
    let mut used = release.status.committee_used.clone();
    used.sort();
    assert_eq!(used, vec![2, 3]);
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_fails_clearly_and_refunds_the_escrow() {
    let (_dir, cluster, _) = start([
        None,
        Some(Fault::DownAtKeySwitch),
        Some(Fault::DownAtKeySwitch),
    ])
    .await;
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, cohortex_proto::v1::OrderState::Failed as i32);
    assert!(
        status
            .message
            .contains("only 1 of the 2 committee members needed added noise"),
        "{}",
        status.message
    );
    assert!(status.message.contains("refunded"), "{}", status.message);
    assert_eq!(
        balance(&cluster, buyer.account()).await,
        10 * PRICE,
        "escrow refunded"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_contribution_is_rejected_and_named() {
    let (_dir, cluster, _) = start([None, Some(Fault::InflateAfterProving), None]).await;
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, cohortex_proto::v1::OrderState::Failed as i32);
    let rejected: Vec<_> = status
        .nodes
        .iter()
        .filter(|node| node.outcome == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].listing, "clinic-1");
    assert!(
        rejected[0].reason.contains("not summed"),
        "{}",
        rejected[0].reason
    );
    assert!(status.result.is_empty(), "nothing was released");
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_for_another_query_is_rejected_and_named() {
    let (_dir, cluster, _) = start([Some(Fault::ProveForAnotherQuery), None, None]).await;
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, cohortex_proto::v1::OrderState::Failed as i32);
    let rejected: Vec<_> = status
        .nodes
        .iter()
        .filter(|node| node.outcome == "rejected")
        .map(|node| node.listing.as_str())
        .collect();
    assert_eq!(rejected, vec!["clinic-0"]);
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_order_is_refused_before_anything_runs() {
    let (_dir, cluster, _) = start([None, None, None]).await;
    let poor = cluster.new_buyer(PRICE).await.unwrap();
    let error = poor
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error}");
    assert!(error.message().contains("insufficient funds"), "{error}");
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purpose_the_listings_do_not_allow_is_refused() {
    let (_dir, cluster, _) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let error = buyer
        .order(
            SQL,
            &listings(&cluster),
            Purpose::CommercialResearch,
            EPSILON,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
        ),
        "{error}"
    );
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_status_with_a_forged_signature_is_unauthenticated() {
    use cohortex_proto::v1::market_client::MarketClient;
    use cohortex_proto::v1::GetOrderRequest;
    let (_dir, cluster, _) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let mut client = MarketClient::new(cluster.market_channel().await.unwrap());
    let thief = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut request = market::server::auth::signed_request(
        &thief,
        "/cohortex.v1.Market/GetOrder",
        GetOrderRequest {
            order_id: order.0.as_bytes().to_vec(),
        },
    );
    // Claim to be the buyer while signing with another key.
    request.metadata_mut().insert(
        market::server::auth::ACCOUNT,
        hex::encode(buyer.account().0).parse().unwrap(),
    );
    let error = client.get_order(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error}");
    // Signed honestly by someone else: refused as well.
    let other = market::server::auth::signed_request(
        &thief,
        "/cohortex.v1.Market/GetOrder",
        GetOrderRequest {
            order_id: order.0.as_bytes().to_vec(),
        },
    );
    assert_eq!(
        client.get_order(other).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    buyer.wait(order).await.unwrap();
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_revoked_between_order_and_compute_is_honoured() {
    use cohortex_proto::v1::consent_client::ConsentClient;
    use cohortex_proto::v1::SignedTransaction;
    // Node 0 waits before it reads consents, so the revocation lands after the order.
    let (_dir, cluster, truth) = start([Some(Fault::SlowToCompute(1500)), None, None]).await;
    let buyer = buyer(&cluster).await;
    // A diabetic patient of node 0 who consented.
    let (index, patient) = (0..PER_NODE)
        .filter(|index| consent_of(*index).is_some())
        .map(|index| (index, synth::patient(99, index)))
        .find(|(_, patient)| patient.diabetes)
        .unwrap();
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let revoke = market::TxBody {
        chain_id: cluster.chain_id,
        signer: AccountId::of(&patient.key),
        // Their first consent registered them (nonce 0).
        nonce: 1,
        action: market::Action::RevokeConsent {
            listing: market::ListingId::new("clinic-0"),
            purpose: Purpose::AcademicResearch,
        },
    }
    .sign(&patient.key)
    .unwrap();
    ConsentClient::new(cluster.market_channel().await.unwrap())
        .revoke(SignedTransaction {
            envelope: revoke.bytes,
        })
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(
        status.state,
        cohortex_proto::v1::OrderState::Completed as i32,
        "{}",
        status.message
    );
    let answer = buyer.open(&status, &table()).unwrap();
    let consenting = (truth.paying.len() + truth.donating) as u64;
    assert_eq!(
        answer.participants,
        consenting - 1,
        "patient {index} no longer counts"
    );
    assert_eq!(
        answer.rows[0][0].as_f64(),
        Some(truth.count - 1.0),
        "nor matches"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_contribution_is_rejected_and_named() {
    let (_dir, cluster, truth) = start([None, Some(Fault::ReplayFirstContribution), None]).await;
    let buyer = buyer(&cluster).await;
    // The first order is answered honestly.
    let first = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(first.answer.rows[0][0].as_f64(), Some(truth.count));
    let before = balance(&cluster, buyer.account()).await;
    // For the second, clinic-1 sends the first order's contribution again, byte for byte.
    // (Another ε, so that the market does not answer it from the first release.)
    let order = buyer
        .order(
            SQL,
            &listings(&cluster),
            Purpose::AcademicResearch,
            EPSILON - 1,
        )
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, cohortex_proto::v1::OrderState::Failed as i32);
    let rejected: Vec<_> = status
        .nodes
        .iter()
        .filter(|node| node.outcome == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{:?}", status.nodes);
    assert_eq!(rejected[0].listing, "clinic-1");
    // The replay carries the node's attestation for the first order, so it is refused before
    // its proof is even checked.
    assert!(
        rejected[0].reason.contains("attestation") && rejected[0].reason.contains("not summed"),
        "{}",
        rejected[0].reason
    );
    assert!(status.result.is_empty(), "nothing was released");
    assert_eq!(
        balance(&cluster, buyer.account()).await,
        before,
        "the second escrow was refunded"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purpose_the_patients_did_not_consent_to_is_refused() {
    // The listings allow commercial research, but their patients consented to academic
    // research only.
    let (_dir, cluster, _) = start_with(Setup {
        extra_purposes: vec![Purpose::CommercialResearch],
        ..Setup::default()
    })
    .await;
    let buyer = buyer(&cluster).await;
    let error = buyer
        .order(
            SQL,
            &listings(&cluster),
            Purpose::CommercialResearch,
            EPSILON,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error}");
    assert!(
        error.message().contains("consent to commercial_research"),
        "{error}"
    );
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_and_nothing_is_lost() {
    use cohortex_proto::v1::market_client::MarketClient;
    use cohortex_proto::v1::OrderQueryRequest;
    let (_dir, cluster, truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let mut client = MarketClient::new(cluster.market_channel().await.unwrap())
        .max_encoding_message_size(usize::MAX);
    let error = client
        .order_query(OrderQueryRequest {
            transaction: None,
            sql: "x".repeat(market::server::MAX_MESSAGE_BYTES + 1),
            result_key: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{error}"
    );
    // The market still serves, and an honest order goes through.
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(release.answer.rows[0][0].as_f64(), Some(truth.count));
    books_balance(&cluster);
    cluster.shutdown();
}
