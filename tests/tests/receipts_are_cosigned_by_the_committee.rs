//! Issue 12, item 5: a receipt debits ε, names and pays participants, so the ledger records it
//! only with the co-signatures of t members of the key committee registered on it; each
//! member checks the receipt against what it verified and summed itself and against its own
//! ledger replica before it signs. These tests play the hostile operator over real gRPC.

use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::{ContributionParticipantsRequest, CosignReceiptRequest};
use compute_node::protocol::methods;
use market::server::auth::signed_request_to;
use market::tx::UncheckedTx;
use market::{Action, QueryReceipt, TxId};
use testkit::*;
use tonic::Code;

/// The receipt transaction `id` as the ledger holds it: the receipt and its co-signatures.
fn recorded_receipt(
    cluster: &cohortex_cluster::Cluster,
    id: &TxId,
) -> (QueryReceipt, Vec<market::ReceiptCosignature>) {
    let record = cluster
        .ledger
        .lock()
        .unwrap()
        .transaction(id)
        .unwrap()
        .expect("the receipt is on the ledger");
    let tx = UncheckedTx::parse(record.envelope)
        .and_then(UncheckedTx::verify)
        .unwrap();
    match tx.body().action.clone() {
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures,
        } => (receipt, cosignatures),
        other => panic!("the receipt was recorded as {other:?}"),
    }
}

/// The hostile operator asks node `index` to co-sign `receipt`.
async fn ask_to_cosign(
    cluster: &cohortex_cluster::Cluster,
    index: usize,
    receipt: &QueryReceipt,
) -> Result<Vec<u8>, tonic::Status> {
    ComputeClient::new(
        cluster
            .channel_to(&cluster.nodes[index].endpoint)
            .await
            .unwrap(),
    )
    .cosign_receipt(signed_request_to(
        cluster.operator_key(),
        &cluster.nodes[index].endpoint,
        methods::COSIGN_RECEIPT,
        CosignReceiptRequest {
            receipt: receipt.to_bytes(),
        },
    ))
    .await
    .map(|response| response.into_inner().signature)
}

/// The node positions of the members whose noise the release sums (its quorum).
fn quorum_indices(release: &cohortex_client::Release) -> Vec<usize> {
    release
        .status
        .noise_members
        .iter()
        .map(|member| *member as usize - 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_outside_the_quorum_vouches_for_nothing() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let (receipt, _) = recorded_receipt(&cluster, &release.receipt);
    assert_eq!(release.status.noise_members, vec![1, 2]);
    // Member 3 verified and summed nothing of this order: even the true receipt is refused.
    let refused = ask_to_cosign(&cluster, 2, &receipt)
        .await
        .expect_err("a member outside the quorum co-signed");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("added no noise to the order"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_on_the_ledger_carries_t_member_cosignatures() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let (receipt, cosignatures) = recorded_receipt(&cluster, &release.receipt);
    // Checked against the nodes' own keys, not against the ledger's record of them.
    let valid: Vec<u16> = cosignatures
        .iter()
        .filter(|cosignature| {
            let node = &cluster.nodes[usize::from(cosignature.member) - 1];
            let key = node.signing_key().verifying_key();
            receipt.cosigned_by(&key, &cluster.chain_id, &cosignature.signature)
        })
        .map(|cosignature| cosignature.member)
        .collect();
    assert!(
        valid.len() >= 2,
        "a 2-of-3 committee co-signs every receipt, got members {valid:?}"
    );
    assert_eq!(
        valid.len(),
        cosignatures.len(),
        "every co-signature verifies"
    );
    books_balance(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_to_cosign_a_receipt_over_contributions_it_did_not_sum() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let (mut receipt, _) = recorded_receipt(&cluster, &release.receipt);
    // The operator swaps in another contribution for the first listing (and a root over it).
    receipt.listings[0].contribution_hash = market::Hash32([0x5A; 32]);
    receipt.contributions_root = market::hash::contributions_root(
        receipt.listings.iter().map(|part| &part.contribution_hash),
    );
    // The quorum's members (the others summed nothing, and vouch for nothing: below).
    for index in quorum_indices(&release) {
        let refused = ask_to_cosign(&cluster, index, &receipt)
            .await
            .expect_err("no member vouches for contributions it did not sum");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("not the contributions this member verified"),
            "{}",
            refused.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refuses_to_cosign_a_receipt_naming_participants_its_node_did_not_attest() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let (mut receipt, _) = recorded_receipt(&cluster, &release.receipt);
    // The recorded receipt names no one: the participants were staged on the ledger, and the
    // staged lists went with the receipt. The operator names each listing's participants as
    // the ledger paid them, but one fewer for the second listing (paying the others more).
    assert!(receipt
        .listings
        .iter()
        .all(|part| part.participants.is_empty()));
    {
        let ledger = cluster.ledger.lock().unwrap();
        let record = ledger
            .state()
            .receipt(&market::ReceiptId(release.receipt))
            .expect("the receipt's record");
        for (part, settlement) in receipt.listings.iter_mut().zip(&record.listings) {
            part.participants = settlement
                .payees
                .iter()
                .map(|payee| payee.participant)
                .collect();
        }
    }
    receipt.listings[1].participants.remove(0);
    for index in quorum_indices(&release) {
        let refused = ask_to_cosign(&cluster, index, &receipt)
            .await
            .expect_err("no member vouches for participants a node did not attest");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("receipt.listings[1]: not attested"),
            "{}",
            refused.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_committee_other_than_the_pinned_one_is_refused_by_every_node() {
    // The operator registers the three nodes as a 3-of-3 committee, while each node pins
    // 2 of 3: receipts would then be counted against a committee the nodes never agreed to.
    let (_dir, cluster, _truth) = start_with(Setup {
        ledger_committee_threshold: Some(3),
        ..Setup::default()
    })
    .await;
    let buyer = buyer(&cluster).await;
    let failed = query_sql(&cluster, &buyer, EPSILON)
        .await
        .expect_err("no node computes under a committee it did not pin");
    let message = format!("{failed:#}");
    assert!(
        message.contains("is not the one pinned in this node's configuration"),
        "{message}"
    );
    books_balance(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_and_settlement_share_one_block() {
    // No crash can fall between them: the receipt and the payout commit together.
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let ledger = cluster.ledger.lock().unwrap();
    let record = ledger
        .transaction(&release.receipt)
        .unwrap()
        .expect("the receipt is on the ledger");
    let block = ledger.block_tx_ids(record.height).unwrap();
    assert_eq!(
        block.len(),
        2,
        "the receipt's block holds it and its settlement"
    );
    let settlement = ledger.transaction(&block[1]).unwrap().unwrap();
    let settle = UncheckedTx::parse(settlement.envelope)
        .and_then(UncheckedTx::verify)
        .unwrap();
    match &settle.body().action {
        Action::Settle { receipt, .. } => assert_eq!(receipt.0, release.receipt),
        other => panic!("the receipt's block holds {other:?}, not its settlement"),
    }
    assert!(matches!(
        ledger
            .state()
            .orders()
            .find(|(_, order)| order.buyer == buyer.account())
            .map(|(_, order)| order.status),
        Some(market::state::Settlement::Settled { .. })
    ));
    drop(ledger);
    books_balance(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_settles_computed_orders() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // The market records the receipt and then stops before the settlement, as one that
    // crashed between the two did before they went into one block.
    cluster.coordinator.leave_orders_computed();
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let order = market::OrderId(release.order);
    let status = |cluster: &cohortex_cluster::Cluster| {
        cluster
            .ledger
            .lock()
            .unwrap()
            .state()
            .order(&order)
            .map(|order| order.status)
    };
    assert_eq!(
        status(&cluster),
        Some(market::state::Settlement::Computed {
            receipt: market::ReceiptId(release.receipt)
        })
    );
    let escrow =
        |cluster: &cohortex_cluster::Cluster| cluster.ledger.lock().unwrap().state().escrow_held();
    assert_eq!(
        escrow(&cluster),
        3 * u128::from(PRICE),
        "three listings' prices"
    );
    let served = cluster
        .coordinator
        .order(&release.order)
        .unwrap()
        .expect("the order's record");

    // The market starts again over the same ledger and state file.
    let restarted = cohortex_coordinator::Coordinator::with_state_file(
        std::sync::Arc::clone(&cluster.ledger),
        cluster.operator_key().clone(),
        cluster.dir.join("coordinator.json"),
    )
    .unwrap();
    assert!(restarted
        .refund_orders_left_open()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        restarted.settle_orders_left_computed().await.unwrap(),
        vec![order],
        "the computed order is settled"
    );
    assert_eq!(
        status(&cluster),
        Some(market::state::Settlement::Settled {
            receipt: market::ReceiptId(release.receipt)
        })
    );
    assert_eq!(escrow(&cluster), 0, "the escrow was paid out");

    // The result the buyer paid for survives the restart, with its receipt.
    assert_eq!(restarted.resume_completed_orders().await.unwrap(), 1);
    let resumed = restarted
        .order(&release.order)
        .unwrap()
        .expect("the restarted market serves the completed order");
    assert_eq!(resumed.state, cohortex_proto::v1::OrderState::Completed);
    assert_eq!(resumed.receipt, Some(release.receipt));
    assert!(!resumed.result.is_empty());
    assert_eq!(resumed.result, served.result);
    assert_eq!(resumed.nodes, served.nodes);
    assert_eq!(resumed.identity, served.identity);
    books_balance(&cluster);
}

/// Asks node 0, as the holder of `key`, for its participants in `order` from `offset` on.
async fn participants_page(
    cluster: &cohortex_cluster::Cluster,
    key: &ed25519_dalek::SigningKey,
    order: &TxId,
    offset: u64,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let endpoint = &cluster.nodes[0].endpoint;
    ComputeClient::new(cluster.channel_to(endpoint).await.unwrap())
        .contribution_participants(signed_request_to(
            key,
            endpoint,
            methods::CONTRIBUTION_PARTICIPANTS,
            ContributionParticipantsRequest {
                order_id: order.0.as_bytes().to_vec(),
                offset,
            },
        ))
        .await
        .map(|page| page.into_inner().participants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contribution_participants_are_served_to_the_coordinator_alone() {
    // Paging a list longer than a page is checked in order_over_300k_patients.rs.
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let coordinator = cluster.operator_key();

    // A list that fit in the contribution's first page is not kept.
    let short = participants_page(&cluster, coordinator, &release.order, 0)
        .await
        .expect_err("a list within one page is not kept for paging");
    assert_eq!(short.code(), Code::NotFound, "{short:?}");
    assert!(
        short.message().starts_with("order_id:"),
        "{}",
        short.message()
    );

    let elsewhere = participants_page(&cluster, coordinator, &TxId(market::Hash32([7; 32])), 0)
        .await
        .expect_err("an order the node did not contribute to has no list");
    assert_eq!(elsewhere.code(), Code::NotFound, "{elsewhere:?}");

    let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let refused = participants_page(&cluster, &stranger, &release.order, 0)
        .await
        .expect_err("only the coordinator reads the list");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}
