//! One test per bad input named in issue 3. Each checks the precise error and that the state
//! (hash, balances, head) is unchanged, both for the state rule applied alone and through the
//! durable ledger (see `common::Fixture::refuse`).

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::{
    AccountId, Action, Compensation, Hash32, ListingId, OrderId, PayoutChoice, Purpose, ReceiptId,
    Role, TxBody, TxError,
};

#[test]
fn ledger_refuses_bad_signature() {
    let mut scene = Scene::new();
    let buyer_id = scene.buyer.id;
    // Body claims to be the buyer but is signed by the node's key.
    let forged = TxBody {
        chain_id: scene.f.ledger.chain_id(),
        signer: buyer_id,
        nonce: scene.buyer.nonce,
        action: order_action(&[scene.listing.clone()], scene.f.now() + 100),
    }
    .sign(&scene.node.key)
    .expect("sign")
    .bytes;
    scene
        .f
        .refuse_bytes(forged, TxError::BadSignature(buyer_id));

    // A genuine transaction with one signature byte flipped.
    let mut flipped = scene.f.sign(
        &scene.buyer,
        order_action(&[scene.listing.clone()], scene.f.now() + 100),
    );
    flipped[5] ^= 0x01;
    scene
        .f
        .refuse_bytes(flipped, TxError::BadSignature(buyer_id));
}

#[test]
fn ledger_refuses_unknown_account() {
    let mut f = Fixture::new();
    let stranger = Party::new(&mut f.rng);
    let target = stranger.id;
    f.refuse(
        &stranger,
        Action::Deposit {
            to: target,
            amount: 10,
        },
        TxError::UnknownAccount(stranger.id),
    );
}

#[test]
fn ledger_refuses_wrongly_roled_account() {
    let mut scene = Scene::new();
    // A buyer may not issue credits.
    let buyer_id = scene.buyer.id;
    scene.f.refuse(
        &scene.buyer,
        Action::Deposit {
            to: buyer_id,
            amount: 1_000_000,
        },
        TxError::WrongRole {
            account: buyer_id,
            actual: Role::Buyer,
            required: "issuer",
        },
    );
    // A patient may not order queries.
    let patient = &scene.patients[0];
    scene.f.refuse(
        patient,
        order_action(&[scene.listing.clone()], scene.f.now() + 100),
        TxError::WrongRole {
            account: patient.id,
            actual: Role::Patient,
            required: "buyer",
        },
    );
    // A buyer may not record receipts.
    let order = scene.order();
    let buyer_id = scene.buyer.id;
    let ids = scene.patient_ids();
    scene.f.refuse(
        &scene.buyer,
        receipt_action(
            scene.f.ledger.chain_id(),
            order,
            vec![(scene.listing.clone(), &scene.node, ids)],
        ),
        TxError::WrongRole {
            account: buyer_id,
            actual: Role::Buyer,
            required: "committee member",
        },
    );
    // Privileged roles are admitted by an issuer, not self-registered.
    let newcomer = Party::new(&mut scene.f.rng);
    scene.f.refuse(
        &newcomer,
        Action::RegisterAccount {
            account: newcomer.id,
            role: Role::Issuer,
        },
        TxError::AdmissionRequiresIssuer {
            role: Role::Issuer,
            signer: newcomer.id,
        },
    );
}

#[test]
fn ledger_refuses_replayed_transaction() {
    let mut scene = Scene::new();
    let bytes = scene.f.sign(
        &scene.buyer,
        order_action(&[scene.listing.clone()], scene.f.now() + 100),
    );
    scene
        .f
        .submit_bytes(bytes.clone())
        .expect("first submission");
    let buyer_id = scene.buyer.id;
    scene.f.refuse_bytes(
        bytes,
        TxError::ReplayedNonce {
            account: buyer_id,
            expected: scene.buyer.nonce + 1,
            got: scene.buyer.nonce,
        },
    );
}

#[test]
fn ledger_refuses_overdraft() {
    let mut scene = Scene::new();
    let mut poor = scene.f.register(Role::Buyer);
    scene.f.deposit(&poor, 999);
    let poor_id = poor.id;
    scene.f.refuse(
        &poor,
        order_action(&[scene.listing.clone()], scene.f.now() + 100),
        TxError::InsufficientFunds {
            account: poor_id,
            balance: 999,
            needed: 1000,
        },
    );
    // With one more credit the same order goes through.
    scene.f.deposit(&poor, 1);
    let action = order_action(&[scene.listing.clone()], scene.f.now() + 100);
    scene.f.submit(&mut poor, action).expect("order covered");
    assert_eq!(scene.f.ledger.state().balance(&poor.id), 0);
}

#[test]
fn ledger_refuses_order_on_withdrawn_listing() {
    let mut scene = Scene::new();
    let listing = scene.listing.clone();
    scene
        .f
        .submit(
            &mut scene.node,
            Action::WithdrawListing {
                listing: listing.clone(),
            },
        )
        .expect("withdraw");
    scene.f.refuse(
        &scene.buyer,
        order_action(std::slice::from_ref(&listing), scene.f.now() + 100),
        TxError::ListingWithdrawn(listing),
    );
}

#[test]
fn ledger_refuses_settling_twice() {
    let mut scene = Scene::new();
    let order = scene.order();
    let ids = scene.patient_ids();
    let receipt = scene.record(order, ids);
    scene
        .f
        .submit(&mut scene.buyer, Action::Settle { order, receipt })
        .expect("first settlement");
    scene.f.refuse(
        &scene.buyer,
        Action::Settle { order, receipt },
        TxError::AlreadySettled(order),
    );
    // A committee member cannot settle it again either.
    scene.f.refuse(
        &scene.committee,
        Action::Settle { order, receipt },
        TxError::AlreadySettled(order),
    );
}

#[test]
fn ledger_refuses_settling_with_a_receipt_for_another_order() {
    let mut scene = Scene::new();
    let first = scene.order();
    let second = scene.order();
    let ids = scene.patient_ids();
    let first_receipt = scene.record(first, ids.clone());
    let second_receipt = scene.record(second, ids);
    scene.f.refuse(
        &scene.buyer,
        Action::Settle {
            order: second,
            receipt: first_receipt,
        },
        TxError::ReceiptForAnotherOrder {
            receipt: first_receipt,
            receipt_order: first,
            order: second,
        },
    );
    // The right pairing settles.
    scene
        .f
        .submit(
            &mut scene.buyer,
            Action::Settle {
                order: second,
                receipt: second_receipt,
            },
        )
        .expect("matching receipt settles");
    // A receipt id that does not exist at all.
    let missing = ReceiptId(market::TxId(Hash32([0xAB; 32])));
    scene.f.refuse(
        &scene.buyer,
        Action::Settle {
            order: first,
            receipt: missing,
        },
        TxError::UnknownReceipt(missing),
    );
}

#[test]
fn ledger_refuses_consent_granted_by_someone_other_than_the_patient() {
    let mut scene = Scene::new();
    let mut late = scene.f.register(Role::Patient);
    let listing = scene.listing.clone();
    // The compute node hosting the patient tries to consent on the patient's behalf.
    let node_id = scene.node.id;
    scene.f.refuse(
        &scene.node,
        grant_action(&late, &listing, PayoutChoice::ToPatient),
        TxError::ConsentNotByPatient {
            patient: late.id,
            signer: node_id,
        },
    );
    // Another patient tries the same.
    let other = &scene.patients[0];
    scene.f.refuse(
        other,
        grant_action(&late, &listing, PayoutChoice::ToPatient),
        TxError::ConsentNotByPatient {
            patient: late.id,
            signer: other.id,
        },
    );
    assert!(scene
        .f
        .ledger
        .state()
        .consent(&late.id, &listing, market::Purpose::AcademicResearch)
        .is_none());
    // The patient itself can.
    let action = grant_action(&late, &listing, PayoutChoice::ToPatient);
    scene.f.submit(&mut late, action).expect("own consent");
}

#[test]
fn ledger_refuses_a_revoked_consent_counted_in_a_later_query() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    let listing = scene.listing.clone();

    // First query: all three consent and are paid.
    let first = scene.order();
    let receipt = scene.record(first, ids.clone());
    scene
        .f
        .submit(
            &mut scene.buyer,
            Action::Settle {
                order: first,
                receipt,
            },
        )
        .expect("settle first");
    let paid_before = scene.f.ledger.state().balance(&ids[0]);
    assert_eq!(paid_before, 333);

    // Patient 0 revokes.
    scene
        .f
        .submit(
            &mut scene.patients[0],
            Action::RevokeConsent {
                listing: listing.clone(),
                purpose: market::Purpose::AcademicResearch,
            },
        )
        .expect("revoke");

    // A later query that still counts patient 0 is refused.
    let second = scene.order();
    scene.f.refuse(
        &scene.committee,
        receipt_action(
            scene.f.ledger.chain_id(),
            second,
            vec![(listing.clone(), &scene.node, ids.clone())],
        ),
        TxError::ParticipantWithoutConsent {
            patient: ids[0],
            listing: listing.clone(),
            purpose: market::Purpose::AcademicResearch,
        },
    );

    // Without patient 0 it is accepted, and patient 0 gets nothing from it.
    let receipt = scene.record(second, ids[1..].to_vec());
    scene
        .f
        .submit(
            &mut scene.buyer,
            Action::Settle {
                order: second,
                receipt,
            },
        )
        .expect("settle second");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&ids[0]), paid_before);
    assert_eq!(state.balance(&ids[1]), 333 + 500);
    assert_eq!(state.balance(&scene.fund.id), 333 + 500);
    assert!(scene.f.conserved());

    // Revoking twice is refused too.
    let patient = &scene.patients[0];
    scene.f.refuse(
        patient,
        Action::RevokeConsent {
            listing: listing.clone(),
            purpose: market::Purpose::AcademicResearch,
        },
        TxError::NoActiveConsent {
            patient: patient.id,
            listing,
            purpose: market::Purpose::AcademicResearch,
        },
    );
}

#[test]
fn ledger_refuses_expired_consent_and_expired_order() {
    let mut scene = Scene::new();
    let mut patient = scene.f.register(Role::Patient);
    let listing = scene.listing.clone();
    let expiry = scene.f.now() + 50;
    let patient_id = patient.id;
    scene
        .f
        .submit(
            &mut patient,
            Action::GrantConsent {
                patient: patient_id,
                listing: listing.clone(),
                purpose: market::Purpose::AcademicResearch,
                expires_at: Some(expiry),
                payout: PayoutChoice::ToPatient,
                epsilon_limit_micro: None,
            },
        )
        .expect("grant with expiry");
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(std::slice::from_ref(&listing), expiry + 1000),
            )
            .expect("order"),
    );
    scene.f.advance(60);
    let mut with_expired: Vec<AccountId> = scene.patient_ids();
    with_expired.push(patient.id);
    scene.f.refuse(
        &scene.committee,
        receipt_action(
            scene.f.ledger.chain_id(),
            order,
            vec![(listing.clone(), &scene.node, with_expired)],
        ),
        TxError::ParticipantWithoutConsent {
            patient: patient.id,
            listing: listing.clone(),
            purpose: market::Purpose::AcademicResearch,
        },
    );
    scene.f.advance(2000);
    let ids = scene.patient_ids();
    scene.f.refuse(
        &scene.committee,
        receipt_action(
            scene.f.ledger.chain_id(),
            order,
            vec![(listing, &scene.node, ids)],
        ),
        TxError::OrderExpired {
            order,
            expires_at: expiry + 1000,
        },
    );
}

#[test]
fn ledger_refuses_transaction_for_another_chain() {
    let mut scene = Scene::new();
    let other_chain = Hash32([0x55; 32]);
    let bytes = TxBody {
        chain_id: other_chain,
        signer: scene.buyer.id,
        nonce: scene.buyer.nonce,
        action: order_action(&[scene.listing.clone()], scene.f.now() + 100),
    }
    .sign(&scene.buyer.key)
    .expect("sign")
    .bytes;
    let expected = TxError::WrongChain {
        expected: scene.f.ledger.chain_id(),
        got: other_chain,
    };
    scene.f.refuse_bytes(bytes, expected);
}

#[test]
fn ledger_refuses_donation_listing_to_a_non_fund() {
    let mut scene = Scene::new();
    let buyer_id = scene.buyer.id;
    scene.f.refuse(
        &scene.node,
        Action::PublishListing {
            listing: market::ListingId::new("bad-donation"),
            schema_hash: Hash32([1; 32]),
            terms: terms(10, Compensation::Donation { fund: buyer_id }),
        },
        TxError::NotAFund(buyer_id),
    );
}

#[test]
fn ledger_refuses_a_release_commitment_not_signed_by_the_committee() {
    let mut scene = Scene::new();
    let order = scene.order();
    let buyer = scene.buyer.id;
    scene.f.refuse(
        &scene.buyer,
        Action::CommitRelease {
            order,
            noise_members: vec![1, 2],
            quorum: vec![1, 2],
        },
        TxError::WrongRole {
            account: buyer,
            actual: Role::Buyer,
            required: "committee member",
        },
    );
}

#[test]
fn ledger_refuses_a_release_commitment_with_malformed_member_sets() {
    let mut scene = Scene::new();
    let order = scene.order();
    for (noise_members, quorum) in [
        (vec![], vec![1]),
        (vec![2, 1], vec![1]),
        (vec![0, 1], vec![1]),
        (vec![1, 1], vec![1]),
        (vec![1, 2], vec![]),
        (vec![1, 2], vec![2, 3]),
        (vec![1, 2], vec![1, 2, 3]),
    ] {
        let committee = &scene.committee;
        let bytes = scene.f.sign(
            committee,
            Action::CommitRelease {
                order,
                noise_members: noise_members.clone(),
                quorum: quorum.clone(),
            },
        );
        let before = scene.f.ledger.state().hash();
        let error = scene.f.submit_bytes(bytes).unwrap_err();
        assert!(
            matches!(error, TxError::InvalidRelease(_)),
            "{noise_members:?} / {quorum:?}: {error:?}"
        );
        assert_eq!(scene.f.ledger.state().hash(), before);
    }
}

#[test]
fn ledger_refuses_a_second_release_of_one_order_and_keeps_its_epsilon_on_refund() {
    let mut scene = Scene::new();
    let order = scene.order();
    let commit = |members: Vec<u16>| Action::CommitRelease {
        order,
        noise_members: members.clone(),
        quorum: members,
    };
    let mut committee = std::mem::replace(&mut scene.committee, Party::new(&mut scene.f.rng));
    scene
        .f
        .submit(&mut committee, commit(vec![1, 2]))
        .expect("first commitment");
    scene.f.refuse(
        &committee,
        commit(vec![3, 4]),
        TxError::ReleaseAlreadyCommitted(order),
    );
    let listing = scene.listing.clone();
    let budget_before = scene.f.ledger.state().listing(&listing).unwrap().clone();
    scene
        .f
        .submit(&mut committee, Action::Refund { order })
        .expect("refund");
    let after = scene.f.ledger.state().listing(&listing).unwrap();
    let requested = budget_before.epsilon_reserved_micro;
    assert!(requested > 0);
    assert_eq!(after.epsilon_reserved_micro, 0);
    assert_eq!(
        after.epsilon_spent_micro,
        budget_before.epsilon_spent_micro + requested,
        "the committed release's ε stays spent"
    );
    assert_eq!(scene.f.ledger.state().balance(&scene.buyer.id), 5000);
}

#[test]
fn ledger_refuses_an_order_with_an_oversized_result_key() {
    let mut scene = Scene::new();
    let listing = scene.listing.clone();
    for result_key in [Vec::new(), vec![7u8; 65]] {
        let action = Action::OrderQueryFor {
            query_hash: market::hash::query_hash("SELECT COUNT(*) FROM patients"),
            listings: vec![listing.clone()],
            purpose: market::Purpose::AcademicResearch,
            epsilon_micro: 1_000_000,
            expires_at: scene.f.now() + 3600,
            result_key,
        };
        scene.f.refuse(
            &scene.buyer,
            action,
            TxError::InvalidOrder(
                "the result key must be 1 to 64 bytes (a CXZK-encoded public key)",
            ),
        );
    }
}

#[test]
fn ledger_refuses_a_receipt_naming_one_patient_in_two_listings() {
    let mut scene = Scene::new();
    // A second listing, by a second node, which the first patient also consents to.
    let mut second_node = scene.f.register(Role::ComputeNode);
    let second = publish(
        &mut scene.f,
        &mut second_node,
        "second-hospital",
        terms(1000, Compensation::Payment),
    );
    let mut patient = std::mem::replace(&mut scene.patients[0], Party::new(&mut scene.f.rng));
    let grant = grant_action(&patient, &second, PayoutChoice::ToPatient);
    scene.f.submit(&mut patient, grant).expect("second consent");
    let listings = [scene.listing.clone(), second.clone()];
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(&listings, scene.f.now() + 3600),
            )
            .expect("order"),
    );
    let others: Vec<AccountId> = scene.patients[1..].iter().map(|p| p.id).collect();
    let mut first_listing = others.clone();
    first_listing.push(patient.id);
    let receipt = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![
            (scene.listing.clone(), &scene.node, first_listing),
            (second.clone(), &second_node, vec![patient.id]),
        ],
    );
    scene.f.refuse(
        &scene.committee,
        receipt,
        TxError::ParticipantInTwoListings {
            patient: patient.id,
            first: scene.listing.clone(),
            second,
        },
    );
}

#[test]
fn ledger_refuses_a_receipt_debiting_less_than_the_orders_epsilon() {
    let mut scene = Scene::new();
    let order = scene.order();
    let mut receipt = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![(scene.listing.clone(), &scene.node, scene.patient_ids())],
    );
    if let Action::RecordReceipt(receipt) = &mut receipt {
        // The noise was calibrated to the order's 0.5 ε; charging 0.4 would under-count it,
        // even with the node's signature on it.
        receipt.listings[0].epsilon_debited_micro = 400_000;
        let query_hash = receipt.query_hash;
        receipt.listings[0].attest(
            &scene.node.key,
            &scene.f.ledger.chain_id(),
            &order,
            &query_hash,
        );
    }
    scene.f.refuse(
        &scene.committee,
        receipt,
        TxError::EpsilonExceedsRequest {
            listing: scene.listing.clone(),
            debited_micro: 400_000,
            requested_micro: 500_000,
        },
    );
}

/// A receipt for `scene`'s next order naming every patient, attested by the node.
fn attested_receipt(scene: &mut Scene) -> (OrderId, market::QueryReceipt) {
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

#[test]
fn ledger_refuses_a_receipt_naming_participants_the_node_did_not_attest() {
    let mut scene = Scene::new();
    let (_, mut receipt) = attested_receipt(&mut scene);
    // The operator drops a consenting patient the node counted (say, to pay the others
    // more), keeping the node's signature.
    receipt.listings[0].participants.remove(0);
    scene.f.refuse(
        &scene.committee,
        Action::RecordReceipt(receipt.clone()),
        TxError::ContributionNotAttested {
            listing: scene.listing.clone(),
            owner: scene.node.id,
        },
    );
    // Control: the receipt as the node attested it is recorded.
    let (_, receipt) = attested_receipt(&mut scene);
    scene
        .f
        .submit(&mut scene.committee, Action::RecordReceipt(receipt))
        .expect("the attested receipt is recorded");
}

#[test]
fn ledger_refuses_a_receipt_attested_by_someone_other_than_the_listing_owner() {
    let mut scene = Scene::new();
    let (order, mut receipt) = attested_receipt(&mut scene);
    // The operator signs the node's part itself, with its own (committee) key.
    let query_hash = receipt.query_hash;
    let chain_id = scene.f.ledger.chain_id();
    receipt.listings[0].capacity = 1;
    receipt.listings[0].attest(&scene.committee.key, &chain_id, &order, &query_hash);
    scene.f.refuse(
        &scene.committee,
        Action::RecordReceipt(receipt),
        TxError::ContributionNotAttested {
            listing: scene.listing.clone(),
            owner: scene.node.id,
        },
    );
}

#[test]
fn ledger_refuses_a_receipt_whose_root_is_not_over_the_attested_contributions() {
    let mut scene = Scene::new();
    let (order, mut receipt) = attested_receipt(&mut scene);
    receipt.contributions_root = market::Hash32([0xAB; 32]);
    scene.f.refuse(
        &scene.committee,
        Action::RecordReceipt(receipt),
        TxError::ContributionsRootMismatch(order),
    );
}

#[test]
fn ledger_refuses_an_order_above_a_listings_per_order_epsilon_cap() {
    let mut scene = Scene::new();
    // The listing caps each order at ε = 1 (of a budget of 10).
    let above_cap = Action::OrderQuery {
        query_hash: Hash32([9; 32]),
        listings: vec![scene.listing.clone()],
        purpose: Purpose::AcademicResearch,
        epsilon_micro: 1_000_001,
        expires_at: scene.f.now() + 3600,
    };
    scene.f.refuse(
        &scene.buyer,
        above_cap,
        TxError::EpsilonAboveOrderCap {
            listing: scene.listing.clone(),
            cap_micro: 1_000_000,
            requested_micro: 1_000_001,
        },
    );
    // Control: at the cap, the order is placed.
    let at_cap = Action::OrderQuery {
        query_hash: Hash32([9; 32]),
        listings: vec![scene.listing.clone()],
        purpose: Purpose::AcademicResearch,
        epsilon_micro: 1_000_000,
        expires_at: scene.f.now() + 3600,
    };
    scene
        .f
        .submit(&mut scene.buyer, at_cap)
        .expect("an order at the cap is placed");
}

#[test]
fn listing_with_a_per_order_cap_above_its_budget_is_refused() {
    let mut scene = Scene::new();
    let mut capped = terms(10, Compensation::Payment);
    capped.max_epsilon_per_order_micro = capped.epsilon_budget_micro + 1;
    scene.f.refuse(
        &scene.node,
        Action::PublishListing {
            listing: ListingId::new("over-cap"),
            schema_hash: Hash32([1; 32]),
            terms: capped.clone(),
        },
        TxError::InvalidListing(
            "the per-order epsilon cap must be positive and at most the budget",
        ),
    );
    capped.max_epsilon_per_order_micro = 0;
    scene.f.refuse(
        &scene.node,
        Action::PublishListing {
            listing: ListingId::new("zero-cap"),
            schema_hash: Hash32([1; 32]),
            terms: capped,
        },
        TxError::InvalidListing(
            "the per-order epsilon cap must be positive and at most the budget",
        ),
    );
}
