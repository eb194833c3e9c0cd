//! Issue 12, item 4: exactly one release per order. With n = 4 and t = 2, two disjoint
//! quorums could each open the order's sum with their own noise: two independent noisy
//! answers to one query, which averaging turns into a less noisy one at the price of one ε.
//! The release's noise set and key-switch quorum are committed on the ledger before any key
//! switch, and members key-switch nothing else. The test plays the hostile operator: it places
//! the order straight on the ledger (so the honest coordinator never sees it) and drives the
//! members itself over gRPC.

use cohortex_cluster::{Cluster, ClusterOptions};
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::{
    AddNoiseRequest, ContributionRecord, KeySwitchPhase, KeySwitchRequest, NoiseShare,
    SignedTransaction,
};
use compute_node::protocol::methods;
use market::server::auth::signed_request;
use market::{AccountId, Action, ListingId, OrderId, Purpose, TxBody};
use testkit::*;
use tonic::Code;

async fn submit(cluster: &Cluster, envelope: Vec<u8>) -> Result<(), tonic::Status> {
    LedgerClient::new(cluster.market_channel().await.unwrap())
        .submit_transaction(SignedTransaction { envelope })
        .await
        .map(|_| ())
}

fn operator_nonce(cluster: &Cluster) -> u64 {
    let operator = AccountId::of(cluster.operator_key());
    cluster
        .ledger
        .lock()
        .unwrap()
        .state()
        .account(&operator)
        .unwrap()
        .next_nonce
}

/// The operator signs `action` as the coordinator's committee account.
fn as_operator(cluster: &Cluster, action: Action) -> Vec<u8> {
    TxBody {
        chain_id: cluster.chain_id,
        signer: AccountId::of(cluster.operator_key()),
        nonce: operator_nonce(cluster),
        action,
    }
    .sign(cluster.operator_key())
    .unwrap()
    .bytes
}

async fn key_switch_counts(
    cluster: &Cluster,
    member: usize,
    order: &[u8],
    noise: &[NoiseShare],
) -> Result<(), tonic::Status> {
    ComputeClient::new(
        cluster
            .channel_to(&cluster.nodes[member - 1].endpoint)
            .await
            .unwrap(),
    )
    .key_switch(signed_request(
        cluster.operator_key(),
        methods::KEY_SWITCH,
        KeySwitchRequest {
            order_id: order.to_vec(),
            recipient: Vec::new(),
            phase: KeySwitchPhase::Counts as i32,
            noise: noise.to_vec(),
            count_shares: Vec::new(),
            noisy_counts: Vec::new(),
        },
    ))
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_quorums_cannot_get_two_releases_of_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let (setups, _truth) = setups([None, None, None, None], 1);
    let options = ClusterOptions {
        purpose: Purpose::AcademicResearch,
        threshold: 2,
        epsilon_budget_micro: 100 * EPSILON,
        max_epsilon_per_order_micro: EPSILON,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
    };
    let cluster = Cluster::start(dir.path(), setups, &options, |_| {})
        .await
        .unwrap();
    let listings = listings(&cluster);

    // A buyer's order, appended to the ledger directly: escrowed and ε reserved, but never
    // handed to the honest coordinator.
    let (key, buyer) = buyer_with_key(&cluster).await;
    let epsilon = 2_000_000;
    let order = signed_order(&cluster, &key, epsilon);
    let order_id = order.id().0.as_bytes().to_vec();
    submit(&cluster, order.bytes.clone()).await.unwrap();

    // Every node contributes; every member adds its noise.
    let mut records = Vec::new();
    for (node, listing) in cluster.nodes.iter().zip(&listings) {
        let contribution = ComputeClient::new(cluster.channel_to(&node.endpoint).await.unwrap())
            .contribute(operator_contribute(&cluster, &order_id, listing))
            .await
            .unwrap()
            .into_inner();
        records.push(ContributionRecord {
            listing: listing.clone(),
            capacity: contribution.capacity,
            ciphertexts: contribution.ciphertexts,
            proof: contribution.proof,
        });
    }
    let mut noise = Vec::new();
    for node in &cluster.nodes {
        let share = ComputeClient::new(cluster.channel_to(&node.endpoint).await.unwrap())
            .add_noise(signed_request(
                cluster.operator_key(),
                methods::ADD_NOISE,
                AddNoiseRequest {
                    order_id: order_id.clone(),
                    sql: SQL.into(),
                    contributions: records.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .share
            .unwrap();
        noise.push(share);
    }
    let first_quorum = &noise[0..2];
    let second_quorum = &noise[2..4];

    // Before anything is committed on the ledger, no member key-switches.
    for member in 1..=4 {
        let quorum = if member <= 2 {
            first_quorum
        } else {
            second_quorum
        };
        let refused = key_switch_counts(&cluster, member, &order_id, quorum)
            .await
            .expect_err("a member key-switched a release not committed on the ledger");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }

    // The operator commits the first quorum's release; the first quorum opens the counts.
    submit(
        &cluster,
        as_operator(
            &cluster,
            Action::CommitRelease {
                order: OrderId(order.id()),
                noise_members: vec![1, 2],
                quorum: vec![1, 2],
            },
        ),
    )
    .await
    .unwrap();
    for member in 1..=2 {
        key_switch_counts(&cluster, member, &order_id, first_quorum)
            .await
            .unwrap();
    }

    // The second quorum, with its own noise, gets nothing: not from its members, and not by
    // committing a second release.
    for member in 3..=4 {
        let refused = key_switch_counts(&cluster, member, &order_id, second_quorum)
            .await
            .expect_err("a second quorum key-switched the same order with other noise");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let second = submit(
        &cluster,
        as_operator(
            &cluster,
            Action::CommitRelease {
                order: OrderId(order.id()),
                noise_members: vec![3, 4],
                quorum: vec![3, 4],
            },
        ),
    )
    .await
    .expect_err("the ledger accepted a second release of one order");
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");
    assert!(second.message().contains("already committed"), "{second:?}");
    for member in 3..=4 {
        key_switch_counts(&cluster, member, &order_id, second_quorum)
            .await
            .expect_err("a second quorum key-switched the same order with other noise");
    }

    // The counts were opened, so a refund returns the credits but keeps the ε spent.
    let spent_before: Vec<u64> = listings
        .iter()
        .map(|listing| {
            cluster
                .ledger
                .lock()
                .unwrap()
                .state()
                .listing(&ListingId::new(listing.clone()))
                .unwrap()
                .epsilon_spent_micro
        })
        .collect();
    submit(
        &cluster,
        as_operator(
            &cluster,
            Action::Refund {
                order: OrderId(order.id()),
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    for (listing, before) in listings.iter().zip(spent_before) {
        let ledger = cluster.ledger.lock().unwrap();
        let state = ledger
            .state()
            .listing(&ListingId::new(listing.clone()))
            .unwrap();
        assert_eq!(state.epsilon_spent_micro, before + epsilon, "{listing}");
        assert_eq!(state.epsilon_reserved_micro, 0, "{listing}");
    }
    books_balance(&cluster);
    cluster.shutdown();
}
