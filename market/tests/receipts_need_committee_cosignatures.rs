//! Issue 12, item 5: once the key committee is registered on the ledger, a receipt (which
//! debits ε, names and pays participants) is recorded only with the co-signatures of at least
//! t of its members. Each broken rule is refused with its precise error and changes nothing
//! (`Fixture::refuse` compares the state, the head and the balances before and after).

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::{AccountId, Action, Hash32, OrderId, QueryReceipt, ReceiptCosignature, Role, TxError};

/// The scene's node and two more compute nodes, registered as a 2-of-3 committee.
fn committee_scene() -> (Scene, Vec<Party>) {
    let mut scene = Scene::new();
    let second = scene.f.register(Role::ComputeNode);
    let third = scene.f.register(Role::ComputeNode);
    let members = vec![
        Party {
            key: scene.node.key.clone(),
            id: scene.node.id,
            nonce: 0,
        },
        second,
        third,
    ];
    scene
        .f
        .as_issuer(Action::RegisterCommittee {
            threshold: 2,
            members: members.iter().map(|member| member.id).collect(),
        })
        .expect("the committee is registered");
    (scene, members)
}

/// A receipt for `scene`'s next order naming every patient, attested by the node.
fn next_receipt(scene: &mut Scene) -> (OrderId, QueryReceipt) {
    let order = scene.order();
    let action = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![(scene.listing.clone(), &scene.node, scene.patient_ids())],
    );
    let Action::RecordReceipt(receipt) = action else {
        unreachable!("receipt_action makes a receipt")
    };
    (order, receipt)
}

/// Co-signatures of `receipt` by the members at the given 1-based indices.
fn cosign(
    scene: &Scene,
    members: &[Party],
    receipt: &QueryReceipt,
    indices: &[u16],
) -> Vec<ReceiptCosignature> {
    let chain_id = scene.f.ledger.chain_id();
    indices
        .iter()
        .map(|&index| receipt.cosign(index, &members[usize::from(index) - 1].key, &chain_id))
        .collect()
}

#[test]
fn ledger_records_a_receipt_cosigned_by_t_members() {
    let (mut scene, members) = committee_scene();
    let (order, receipt) = next_receipt(&mut scene);
    let cosignatures = cosign(&scene, &members, &receipt, &[1, 3]);
    let receipt_id = scene
        .f
        .submit(
            &mut scene.committee,
            Action::RecordCosignedReceipt {
                receipt,
                cosignatures,
            },
        )
        .expect("a receipt with 2 of 3 co-signatures is recorded");
    let state = scene.f.ledger.state();
    let recorded = state
        .receipt(&market::ReceiptId(receipt_id))
        .expect("the receipt is in the state");
    assert_eq!(recorded.order, order);
    assert_eq!(
        state
            .listing(&scene.listing)
            .expect("listing")
            .epsilon_spent_micro,
        500_000,
        "the order's ε is debited"
    );
}

#[test]
fn ledger_refuses_an_uncosigned_receipt_once_a_committee_is_registered() {
    let (mut scene, _) = committee_scene();
    let (order, receipt) = next_receipt(&mut scene);
    scene.f.refuse(
        &scene.committee,
        Action::RecordReceipt(receipt),
        TxError::ReceiptNotCosigned {
            order,
            valid: 0,
            threshold: 2,
        },
    );
}

#[test]
fn ledger_refuses_a_receipt_cosigned_by_fewer_than_t_members() {
    let (mut scene, members) = committee_scene();
    let (order, receipt) = next_receipt(&mut scene);
    let cosignatures = cosign(&scene, &members, &receipt, &[2]);
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures,
        },
        TxError::ReceiptNotCosigned {
            order,
            valid: 1,
            threshold: 2,
        },
    );
}

#[test]
fn ledger_refuses_one_member_cosigning_twice() {
    let (mut scene, members) = committee_scene();
    let (order, receipt) = next_receipt(&mut scene);
    let mut cosignatures = cosign(&scene, &members, &receipt, &[1]);
    cosignatures.push(cosignatures[0].clone());
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures,
        },
        TxError::BadCosignature {
            order,
            member: 1,
            problem: "is out of order or repeated (members strictly ascending)",
        },
    );
}

#[test]
fn ledger_refuses_cosignatures_over_another_receipt() {
    let (mut scene, members) = committee_scene();
    let (order, mut receipt) = next_receipt(&mut scene);
    let cosignatures = cosign(&scene, &members, &receipt, &[1, 2]);
    // The operator records a different result under the members' signatures.
    receipt.result_hash = Hash32([0xEE; 32]);
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures,
        },
        TxError::BadCosignature {
            order,
            member: 1,
            problem: "does not verify under the member's account key",
        },
    );
}

#[test]
fn ledger_refuses_a_cosignature_by_an_account_outside_the_committee() {
    let (mut scene, members) = committee_scene();
    let (order, receipt) = next_receipt(&mut scene);
    let chain_id = scene.f.ledger.chain_id();
    // The operator signs as member 2 with its own key, and as a fourth seat.
    let mut forged = cosign(&scene, &members, &receipt, &[1]);
    forged.push(receipt.cosign(2, &scene.committee.key, &chain_id));
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt: receipt.clone(),
            cosignatures: forged,
        },
        TxError::BadCosignature {
            order,
            member: 2,
            problem: "does not verify under the member's account key",
        },
    );
    let mut beyond = cosign(&scene, &members, &receipt, &[1]);
    beyond.push(receipt.cosign(4, &scene.committee.key, &chain_id));
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures: beyond,
        },
        TxError::BadCosignature {
            order,
            member: 4,
            problem: "names no member of the registered committee",
        },
    );
}

#[test]
fn cosigned_receipt_without_a_registered_committee_is_refused() {
    let mut scene = Scene::new();
    let (_, receipt) = next_receipt(&mut scene);
    let chain_id = scene.f.ledger.chain_id();
    let cosignatures = vec![receipt.cosign(1, &scene.node.key, &chain_id)];
    scene.f.refuse(
        &scene.committee,
        Action::RecordCosignedReceipt {
            receipt,
            cosignatures,
        },
        TxError::NoCommittee,
    );
}

#[test]
fn committee_registration_breaking_a_rule_is_refused() {
    let mut scene = Scene::new();
    let second = scene.f.register(Role::ComputeNode);
    let nodes = vec![scene.node.id, second.id];
    let register =
        |threshold: u16, members: Vec<AccountId>| Action::RegisterCommittee { threshold, members };
    let issuer = Party {
        key: scene.f.issuer.key.clone(),
        id: scene.f.issuer.id,
        nonce: scene.f.issuer.nonce,
    };
    scene.f.refuse(
        &issuer,
        register(1, nodes.clone()),
        TxError::InvalidCommittee(
            "the threshold must be at least 2: one member alone could decrypt",
        ),
    );
    scene.f.refuse(
        &issuer,
        register(3, nodes.clone()),
        TxError::InvalidCommittee("the threshold exceeds the number of members"),
    );
    scene.f.refuse(
        &issuer,
        register(2, vec![scene.node.id, scene.node.id]),
        TxError::InvalidCommittee("an account appears twice"),
    );
    scene.f.refuse(
        &issuer,
        register(2, vec![scene.node.id, scene.buyer.id]),
        TxError::CommitteeMemberNotANode {
            member: 2,
            account: scene.buyer.id,
        },
    );
    // Only the issuer registers it: not the market's committee account, not a node.
    scene.f.refuse(
        &scene.committee,
        register(2, nodes.clone()),
        TxError::WrongRole {
            account: scene.committee.id,
            actual: Role::CommitteeMember,
            required: "issuer",
        },
    );
    // Control, then once only.
    scene
        .f
        .as_issuer(register(2, nodes.clone()))
        .expect("a valid committee is registered");
    let issuer = Party {
        key: scene.f.issuer.key.clone(),
        id: scene.f.issuer.id,
        nonce: scene.f.issuer.nonce,
    };
    scene.f.refuse(
        &issuer,
        register(2, nodes),
        TxError::CommitteeAlreadyRegistered,
    );
    let registered = scene.f.ledger.state().committee().expect("registered");
    assert_eq!(registered.member_account(2), Some(second.id));
    assert_eq!(registered.member_account(3), None);
}

#[test]
fn release_quorum_below_the_registered_threshold_is_refused() {
    let (mut scene, _) = committee_scene();
    let order = scene.order();
    scene.f.refuse(
        &scene.committee,
        Action::CommitRelease {
            order,
            noise_members: vec![1, 2],
            quorum: vec![1],
        },
        TxError::InvalidRelease("the quorum is smaller than the registered committee's threshold"),
    );
    scene.f.refuse(
        &scene.committee,
        Action::CommitRelease {
            order,
            noise_members: vec![1, 4],
            quorum: vec![1, 4],
        },
        TxError::InvalidRelease("a member index is beyond the registered committee"),
    );
    scene
        .f
        .submit(
            &mut scene.committee,
            Action::CommitRelease {
                order,
                noise_members: vec![1, 2],
                quorum: vec![1, 2],
            },
        )
        .expect("a quorum of t registered members is committed");
}
