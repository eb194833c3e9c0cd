//! Issue 12, item 4: exactly one release per order. With n = 4 and t = 2, two disjoint
//! quorums could each open the order's sum with their own noise: two independent noisy
//! answers to one query, which averaging turns into a less noisy one at the price of one ε.
//! The release's noise set and key-switch quorum are committed on the ledger before any key
//! switch, and members key-switch nothing else. The test plays the hostile operator: it appends
//! the order to the ledger it runs (so the honest coordinator never sees it; the Ledger service
//! refuses orders from outside the market) and drives the members itself over gRPC.

use cohortex_cluster::Cluster;
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::{
    AddNoiseRequest, ContributionRecord, KeySwitchPhase, KeySwitchRequest, NoiseShare,
    SignedTransaction,
};
use compute_node::protocol::methods;
use market::server::auth::signed_request_to;
use market::{AccountId, Action, ListingId, OrderId, TxBody};
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
    .key_switch(signed_request_to(
        cluster.operator_key(),
        &cluster.nodes[member - 1].endpoint,
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
    let options = cluster_options();
    let cluster = Cluster::start(dir.path(), setups, &options, |_| {})
        .await
        .unwrap();
    let listings = listings(&cluster);

    // A buyer's order, appended by the operator to the ledger it runs: escrowed and ε
    // reserved, but never handed to the honest coordinator.
    let (key, buyer) = buyer_with_key(&cluster).await;
    let epsilon = 2_000_000;
    let order = signed_order(&cluster, &key, epsilon);
    let order_id = order.id().0.as_bytes().to_vec();
    let appended = cluster
        .ledger
        .lock()
        .unwrap()
        .append(vec![order.bytes.clone()])
        .unwrap();
    assert!(appended.refused.is_empty(), "{:?}", appended.refused);

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
            .add_noise(signed_request_to(
                cluster.operator_key(),
                &node.endpoint,
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

/// The buyer's order, appended by the operator to the ledger it runs; returns its id.
async fn order_appended_by_the_operator(cluster: &Cluster) -> (Vec<u8>, OrderId) {
    let (key, _buyer) = buyer_with_key(cluster).await;
    let order = signed_order(cluster, &key, EPSILON);
    let appended = cluster
        .ledger
        .lock()
        .unwrap()
        .append(vec![order.bytes.clone()])
        .unwrap();
    assert!(appended.refused.is_empty(), "{:?}", appended.refused);
    (order.id().0.as_bytes().to_vec(), OrderId(order.id()))
}

/// Every node's contribution to the order.
async fn contributions(cluster: &Cluster, order_id: &[u8]) -> Vec<ContributionRecord> {
    let mut records = Vec::new();
    for (node, listing) in cluster.nodes.iter().zip(listings(cluster)) {
        let contribution = ComputeClient::new(cluster.channel_to(&node.endpoint).await.unwrap())
            .contribute(operator_contribute(cluster, order_id, &listing))
            .await
            .unwrap()
            .into_inner();
        records.push(ContributionRecord {
            listing,
            capacity: contribution.capacity,
            ciphertexts: contribution.ciphertexts,
            proof: contribution.proof,
        });
    }
    records
}

/// Member `member`'s noise share of the order.
async fn add_noise(
    cluster: &Cluster,
    member: usize,
    order_id: &[u8],
    records: &[ContributionRecord],
) -> Result<NoiseShare, tonic::Status> {
    let share = ComputeClient::new(
        cluster
            .channel_to(&cluster.nodes[member - 1].endpoint)
            .await
            .unwrap(),
    )
    .add_noise(signed_request_to(
        cluster.operator_key(),
        &cluster.nodes[member - 1].endpoint,
        methods::ADD_NOISE,
        AddNoiseRequest {
            order_id: order_id.to_vec(),
            sql: SQL.into(),
            contributions: records.to_vec(),
        },
    ))
    .await?
    .into_inner()
    .share
    .unwrap();
    Ok(share)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_refuses_fresh_noise_for_a_committed_release() {
    let (dir, mut cluster, _truth) = start([None, None, None]).await;
    let (order_id, order) = order_appended_by_the_operator(&cluster).await;
    let records = contributions(&cluster, &order_id).await;
    let first = add_noise(&cluster, 1, &order_id, &records).await.unwrap();
    let second = add_noise(&cluster, 2, &order_id, &records).await.unwrap();
    submit_committed_release(&cluster, order, vec![1, 2]).await;
    // Asked again, a member answers with the noise it drew, never fresh noise.
    assert_eq!(
        add_noise(&cluster, 1, &order_id, &records).await.unwrap(),
        first
    );

    // Member 1 restarts: its noise was on disk before it left, so it answers with the same.
    cluster.restart_node(0).await.unwrap();
    assert_eq!(
        add_noise(&cluster, 1, &order_id, &records).await.unwrap(),
        first,
        "a restarted member answered with other noise than it sent before"
    );

    // Member 1 restarts again, with its record of the release lost (a disk replaced, say).
    // Fresh noise now would let the operator open the same sum a second time with other
    // noise, and average the two openings.
    std::fs::remove_dir_all(dir.path().join("node-1.releases")).unwrap();
    cluster.restart_node(0).await.unwrap();
    let refused = add_noise(&cluster, 1, &order_id, &records)
        .await
        .expect_err("a restarted member drew fresh noise for a committed release");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("no fresh noise for a committed release"),
        "{refused:?}"
    );
    // Nor does it key-switch the release without its noise.
    let refused = key_switch_counts(&cluster, 1, &order_id, &[first, second])
        .await
        .expect_err("a member key-switched a release it holds no noise for");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("added no noise"), "{refused:?}");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_resumes_its_release_where_it_stopped() {
    let (_dir, mut cluster, _truth) = start([None, None, None]).await;
    let (order_id, order) = order_appended_by_the_operator(&cluster).await;
    let records = contributions(&cluster, &order_id).await;
    let noise = vec![
        add_noise(&cluster, 1, &order_id, &records).await.unwrap(),
        add_noise(&cluster, 2, &order_id, &records).await.unwrap(),
    ];
    submit_committed_release(&cluster, order, vec![1, 2]).await;

    // A member restarted between its noise and the key switch goes on: the release is not
    // lost with its memory.
    cluster.restart_node(0).await.unwrap();
    key_switch_counts(&cluster, 1, &order_id, &noise)
        .await
        .expect("a restarted member could not key-switch the release it added noise to");

    // Restarted again, it still knows the counts were key-switched: each phase once.
    cluster.restart_node(0).await.unwrap();
    let refused = key_switch_counts(&cluster, 1, &order_id, &noise)
        .await
        .expect_err("a restarted member key-switched the counts a second time");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    // Member 2, never restarted, agrees.
    key_switch_counts(&cluster, 2, &order_id, &noise)
        .await
        .unwrap();
    let refused = key_switch_counts(&cluster, 2, &order_id, &noise)
        .await
        .expect_err("a member key-switched the counts a second time");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_add_noise_calls_get_one_noise_draw() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let (order_id, _order) = order_appended_by_the_operator(&cluster).await;
    let records = contributions(&cluster, &order_id).await;
    // Four calls for one order race on member 1: each verifies and draws on its own, and all
    // must come back with the one share the member keeps.
    let racing = tokio::join!(
        add_noise(&cluster, 1, &order_id, &records),
        add_noise(&cluster, 1, &order_id, &records),
        add_noise(&cluster, 1, &order_id, &records),
        add_noise(&cluster, 1, &order_id, &records),
    );
    let shares: Vec<NoiseShare> = [racing.0, racing.1, racing.2, racing.3]
        .into_iter()
        .map(|share| share.expect("noise share"))
        .collect();
    assert!(
        shares.windows(2).all(|pair| pair[0] == pair[1]),
        "concurrent calls got different noise draws"
    );
    // And the member answers later calls with that same share.
    assert_eq!(
        add_noise(&cluster, 1, &order_id, &records).await.unwrap(),
        shares[0]
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_contribute_calls_get_one_contribution() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let (order_id, _order) = order_appended_by_the_operator(&cluster).await;
    let node = &cluster.nodes[0];
    let listing = listings(&cluster).remove(0);
    let contribute = || async {
        ComputeClient::new(cluster.channel_to(&node.endpoint).await.unwrap())
            .contribute(operator_contribute(&cluster, &order_id, &listing))
            .await
    };
    // Four calls for one order race on one node: exactly one contribution (one attestation)
    // leaves it; the others are refused, and so is any later call.
    let racing = tokio::join!(contribute(), contribute(), contribute(), contribute());
    let answers = [racing.0, racing.1, racing.2, racing.3];
    let made = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(made, 1, "{answers:?}");
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    }
    let later = contribute().await.expect_err("a second contribution");
    assert_eq!(later.code(), tonic::Code::AlreadyExists);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_switch_refused_once_order_not_open() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let (order_id, order) = order_appended_by_the_operator(&cluster).await;
    let records = contributions(&cluster, &order_id).await;
    let noise = vec![
        add_noise(&cluster, 1, &order_id, &records).await.unwrap(),
        add_noise(&cluster, 2, &order_id, &records).await.unwrap(),
    ];
    submit_committed_release(&cluster, order, vec![1, 2]).await;
    for member in 1..=2 {
        key_switch_counts(&cluster, member, &order_id, &noise)
            .await
            .unwrap();
    }
    // The order is refunded after its counts were opened; the values must stay sealed.
    submit(&cluster, as_operator(&cluster, Action::Refund { order }))
        .await
        .unwrap();
    let result_key = cluster
        .ledger
        .lock()
        .unwrap()
        .state()
        .result_key(&order)
        .unwrap()
        .to_vec();
    for member in 1..=2 {
        let refused = ComputeClient::new(
            cluster
                .channel_to(&cluster.nodes[member - 1].endpoint)
                .await
                .unwrap(),
        )
        .key_switch(signed_request_to(
            cluster.operator_key(),
            &cluster.nodes[member - 1].endpoint,
            methods::KEY_SWITCH,
            KeySwitchRequest {
                order_id: order_id.clone(),
                recipient: result_key.clone(),
                phase: KeySwitchPhase::Values as i32,
                noise: noise.clone(),
                count_shares: Vec::new(),
                noisy_counts: Vec::new(),
            },
        ))
        .await
        .expect_err("a member key-switched the values of a refunded order");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("not open on the ledger"),
            "{refused:?}"
        );
    }
    cluster.shutdown();
}

/// The operator commits the order's release to `members`' noise, key-switched by them.
async fn submit_committed_release(cluster: &Cluster, order: OrderId, members: Vec<u16>) {
    submit(
        cluster,
        as_operator(
            cluster,
            Action::CommitRelease {
                order,
                noise_members: members.clone(),
                quorum: members,
            },
        ),
    )
    .await
    .unwrap();
}
