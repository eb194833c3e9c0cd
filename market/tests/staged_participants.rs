//! A receipt's participants staged on the ledger in bounded chunks (`StageParticipants`), so
//! that no transaction grows with the number of patients: the receipt's part for a listing
//! then names none and stands for the staged list, under every rule a named list has.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use market::{AccountId, Action, ListingId, OrderId, PayoutChoice, Purpose, TxError};

const DEBIT: u64 = 500_000;

/// The scene's patients, ascending (the order a node lists and stages them in).
fn ascending(scene: &Scene) -> Vec<AccountId> {
    let mut ids = scene.patient_ids();
    ids.sort();
    ids
}

/// The scene, its patients ascending and an open order on its listing.
fn ordered() -> (Scene, Vec<AccountId>, OrderId) {
    let mut scene = Scene::new();
    let ids = ascending(&scene);
    let order = scene.order();
    (scene, ids, order)
}

/// What is staged for `order` once the ledger is reopened from its database (which must hold
/// the same state).
fn staged_after_restart(scene: Scene, order: OrderId) -> Vec<AccountId> {
    let (reopened, _dir) = scene.reopen();
    let staged = reopened
        .state()
        .staged_participants(&order, &ListingId::new("diabetes-cohort"))
        .to_vec();
    staged
}

/// Stages `participants` for `order`'s receipt; the ledger must accept it.
fn stage_ok(scene: &mut Scene, order: OrderId, participants: &[AccountId]) {
    let action = stage(&scene.listing, order, participants);
    scene
        .f
        .submit(&mut scene.committee, action)
        .expect("staged");
}

fn stage(listing: &ListingId, order: OrderId, participants: &[AccountId]) -> Action {
    Action::StageParticipants {
        order,
        listing: listing.clone(),
        participants: participants.to_vec(),
    }
}

/// The node's receipt part attested over `attested`, with the participants left out, as the
/// coordinator sends it once they are staged.
fn receipt_naming_none(scene: &Scene, order: OrderId, attested: Vec<AccountId>) -> Action {
    let mut action = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![(scene.listing.clone(), &scene.node, attested)],
    );
    if let Action::RecordReceipt(receipt) = &mut action {
        for part in &mut receipt.listings {
            part.participants.clear();
        }
    }
    action
}

/// Records the receipt naming none over `attested` and settles the order.
fn record_naming_none_and_settle(scene: &mut Scene, order: OrderId, attested: Vec<AccountId>) {
    let receipt = receipt_naming_none(scene, order, attested);
    record_and_settle(scene, order, receipt);
}

/// Records `receipt` (the ledger must accept it) and settles `order` against it.
fn record_and_settle(scene: &mut Scene, order: OrderId, receipt: Action) {
    let receipt = market::ReceiptId(
        scene
            .f
            .submit(&mut scene.committee, receipt)
            .expect("the receipt records"),
    );
    scene
        .f
        .submit(&mut scene.buyer, Action::Settle { order, receipt })
        .expect("settle");
}

#[test]
fn receipt_over_staged_participants_pays_and_debits_each_of_them() {
    let (mut scene, ids, order) = ordered();
    // Two chunks, the second after the first.
    stage_ok(&mut scene, order, &ids[..1]);
    stage_ok(&mut scene, order, &ids[1..]);
    assert_eq!(
        scene
            .f
            .ledger
            .state()
            .staged_participants(&order, &scene.listing),
        ids.as_slice()
    );

    record_naming_none_and_settle(&mut scene, order, ids.clone());

    // 1000 credits over 3 participants: 333 each, 1 back to the buyer; the third patient
    // donates theirs to the fund.
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.patients[0].id), 333);
    assert_eq!(state.balance(&scene.patients[1].id), 333);
    assert_eq!(state.balance(&scene.patients[2].id), 0);
    assert_eq!(state.balance(&scene.fund.id), 333);
    assert_eq!(state.balance(&scene.buyer.id), 5000 - 1000 + 1);
    for id in &ids {
        assert_eq!(state.personal_spent_micro(id, &scene.listing), DEBIT);
    }
    assert!(
        state.staged_participants(&order, &scene.listing).is_empty(),
        "the staged list goes with the receipt"
    );
    assert!(scene.f.conserved());
}

#[test]
fn staged_participants_must_ascend_after_those_staged_before() {
    let (mut scene, ids, order) = ordered();
    let not_canonical = |reason| TxError::StagedParticipantsNotCanonical {
        order,
        listing: ListingId::new("diabetes-cohort"),
        reason,
    };
    let descending = vec![ids[1], ids[0]];
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &descending),
        not_canonical("the chunk is not strictly ascending"),
    );
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &[ids[0], ids[0]]),
        not_canonical("the chunk is not strictly ascending"),
    );
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &[]),
        not_canonical("the chunk is empty"),
    );
    let too_many: Vec<AccountId> = (0..=market::MAX_STAGED_PER_TX as u32)
        .map(|index| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&index.to_be_bytes());
            AccountId(key)
        })
        .collect();
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &too_many),
        not_canonical("the chunk holds too many accounts"),
    );

    stage_ok(&mut scene, order, &ids[1..2]);
    // Before or equal to the last one staged: refused, so no one is staged twice.
    let behind = not_canonical("the chunk does not start after the last account staged");
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &ids[..1]),
        behind.clone(),
    );
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &ids[1..2]),
        behind,
    );
}

#[test]
fn staging_a_participant_without_consent_is_refused() {
    let mut scene = Scene::new();
    let order = scene.order();
    scene.revoke(0);
    let patient = scene.patients[0].id;
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &[patient]),
        TxError::ParticipantWithoutConsent {
            patient,
            listing: scene.listing.clone(),
            purpose: Purpose::AcademicResearch,
        },
    );
}

#[test]
fn staging_by_an_account_outside_the_committee_is_refused() {
    let (mut scene, ids, order) = ordered();
    scene.f.refuse(
        &scene.buyer,
        stage(&scene.listing, order, &ids),
        TxError::WrongRole {
            account: scene.buyer.id,
            actual: market::Role::Buyer,
            required: "committee member",
        },
    );
}

#[test]
fn staging_for_a_listing_the_order_does_not_name_is_refused() {
    let (mut scene, ids, order) = ordered();
    let elsewhere = ListingId::new("another-listing");
    scene.f.refuse(
        &scene.committee,
        Action::StageParticipants {
            order,
            listing: elsewhere.clone(),
            participants: ids,
        },
        TxError::ListingNotInOrder {
            order,
            listing: elsewhere,
        },
    );
}

#[test]
fn receipt_naming_participants_that_are_also_staged_is_refused() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let naming = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![(scene.listing.clone(), &scene.node, ids)],
    );
    scene.f.refuse(
        &scene.committee,
        naming,
        TxError::ParticipantsStagedAndNamed(scene.listing.clone()),
    );
}

#[test]
fn receipt_over_staged_participants_the_node_did_not_attest_is_refused() {
    let (mut scene, ids, order) = ordered();
    // The market stages only two of the three people the node attested.
    stage_ok(&mut scene, order, &ids[..2]);
    let receipt = receipt_naming_none(&scene, order, ids);
    scene.f.refuse(
        &scene.committee,
        receipt,
        TxError::ContributionNotAttested {
            listing: scene.listing.clone(),
            owner: scene.node.id,
        },
    );
}

#[test]
fn refund_drops_the_staged_participants_and_storage_forgets_them() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let staged_hash = scene.f.ledger.state().hash();
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund");
    let state = scene.f.ledger.state();
    assert!(state.staged_participants(&order, &scene.listing).is_empty());
    assert_ne!(state.hash(), staged_hash);
    // Nothing was released, so nobody is debited.
    for id in &ids {
        assert_eq!(state.personal_spent_micro(id, &scene.listing), 0);
    }

    // The ledger reopened from its database holds the same state: the staged list's entry
    // was deleted, not left behind.
    assert!(staged_after_restart(scene, order).is_empty());
}

#[test]
fn staged_participants_survive_a_restart_of_the_ledger() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    assert_eq!(staged_after_restart(scene, order), ids);
}

#[test]
fn payout_of_a_staged_participant_follows_their_consent_when_the_receipt_is_recorded() {
    // A patient who donates is staged like any other; the payout rule reads their consent
    // when the receipt is recorded, not when they were staged.
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    // The first patient switches to donating before the receipt.
    scene.f.advance(1);
    let fund = scene.fund.id;
    let regrant = grant_action(
        &scene.patients[0],
        &scene.listing,
        PayoutChoice::DonateTo { fund },
    );
    scene
        .f
        .submit(&mut scene.patients[0], regrant)
        .expect("change of payout");
    record_naming_none_and_settle(&mut scene, order, ids);
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.patients[0].id), 0);
    assert_eq!(state.balance(&scene.fund.id), 2 * 333);
}

#[test]
fn staging_after_the_release_is_committed_is_refused() {
    // A list that could grow after the commitment would let a member stall a released order
    // (its receipt could never match the node's attestation) until its refund.
    let (mut scene, ids, order) = ordered();
    let commit = Action::CommitRelease {
        order,
        noise_members: vec![1],
        quorum: vec![1],
    };
    scene
        .f
        .submit(&mut scene.committee, commit)
        .expect("commit the release");
    scene.f.refuse(
        &scene.committee,
        stage(&scene.listing, order, &ids),
        TxError::ReleaseCommitted(order),
    );
}

#[test]
fn cancelling_the_order_drops_the_staged_participants() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    scene
        .f
        .submit(&mut scene.buyer, Action::CancelOrder { order })
        .expect("cancel");
    assert!(scene
        .f
        .ledger
        .state()
        .staged_participants(&order, &scene.listing)
        .is_empty());
}

#[test]
fn recorded_receipt_drops_the_staged_participants_from_storage_too() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    record_naming_none_and_settle(&mut scene, order, ids);
    // Replaying every block from genesis, as `ledger verify` does, gives the same state.
    market::audit_database(scene.f.ledger.path()).expect("the ledger verifies");
    assert!(staged_after_restart(scene, order).is_empty());
}

/// A second node's listing, to which patient 0 also consents; returns the node and listing.
fn second_listing(scene: &mut Scene) -> (Party, ListingId) {
    let mut node = scene.f.register(market::Role::ComputeNode);
    let listing = publish(
        &mut scene.f,
        &mut node,
        "cardiology-cohort",
        terms(1000, market::Compensation::Payment),
    );
    let grant = grant_action(&scene.patients[0], &listing, PayoutChoice::ToPatient);
    scene
        .f
        .submit(&mut scene.patients[0], grant)
        .expect("grant in the second listing");
    (node, listing)
}

/// An order on the scene's listing and `second`, in that order.
fn order_on_both(scene: &mut Scene, second: &ListingId) -> OrderId {
    let listings = [scene.listing.clone(), second.clone()];
    let action = order_action(&listings, scene.f.now() + 3600);
    OrderId(scene.f.submit(&mut scene.buyer, action).expect("order"))
}

/// The receipt of an order on both listings: each part attested by its node over its list,
/// and each part naming its list only if `named` says so.
fn receipt_on_both(
    scene: &Scene,
    second: (&Party, &ListingId),
    order: OrderId,
    lists: [Vec<AccountId>; 2],
    named: [bool; 2],
) -> Action {
    let [first, other] = lists;
    let mut action = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![
            (scene.listing.clone(), &scene.node, first),
            (second.1.clone(), second.0, other),
        ],
    );
    if let Action::RecordReceipt(receipt) = &mut action {
        for (part, named) in receipt.listings.iter_mut().zip(named) {
            if !named {
                part.participants.clear();
            }
        }
    }
    action
}

/// A scene with a second listing and an order on both, its patients staged under the first
/// and patient 0 under the second too; returns the scene, the second node and listing, the
/// patients ascending and the order.
fn patient_staged_under_both() -> (Scene, (Party, ListingId), Vec<AccountId>, OrderId) {
    let mut scene = Scene::new();
    let (second_node, second) = second_listing(&mut scene);
    let ids = ascending(&scene);
    let patient = scene.patients[0].id;
    let order = order_on_both(&mut scene, &second);
    stage_ok(&mut scene, order, &ids);
    let again = stage(&second, order, &[patient]);
    scene
        .f
        .submit(&mut scene.committee, again)
        .expect("staged under the second listing too");
    (scene, (second_node, second), ids, order)
}

#[test]
fn person_staged_under_two_listings_of_one_order_is_refused_at_the_receipt() {
    // The privacy unit is the person: staged lists get the rule named lists have.
    let (mut scene, (second_node, second), ids, order) = patient_staged_under_both();
    let patient = scene.patients[0].id;
    let receipt = receipt_on_both(
        &scene,
        (&second_node, &second),
        order,
        [ids, vec![patient]],
        [false, false],
    );
    scene.f.refuse(
        &scene.committee,
        receipt,
        TxError::ParticipantInTwoListings {
            patient,
            first: scene.listing.clone(),
            second,
        },
    );
}

#[test]
fn receipt_may_mix_a_staged_part_and_a_named_part() {
    let mut scene = Scene::new();
    let (second_node, second) = second_listing(&mut scene);
    let ids = ascending(&scene);
    let patient = scene.patients[0].id;
    let others: Vec<AccountId> = ids.iter().copied().filter(|id| *id != patient).collect();
    let order = order_on_both(&mut scene, &second);
    // The first listing's part stands for its staged list; the second names its one person.
    stage_ok(&mut scene, order, &others);
    let receipt = receipt_on_both(
        &scene,
        (&second_node, &second),
        order,
        [others.clone(), vec![patient]],
        [false, true],
    );
    record_and_settle(&mut scene, order, receipt);
    let state = scene.f.ledger.state();
    // The first listing's 1000 over its two participants (one donates to the fund); the
    // second's 1000 to its one participant.
    assert_eq!(state.balance(&patient), 1000);
    assert_eq!(state.balance(&scene.fund.id), 500);
    for id in &ids {
        assert_eq!(state.person_spent_micro(id), DEBIT);
    }
}

/// An attested release of `order`: members 1 and 2 noise and key-switch it, and the listing's
/// part is the node's attestation over `attested`, naming none.
fn attested_release(scene: &Scene, order: OrderId, attested: Vec<AccountId>) -> Action {
    let Action::RecordReceipt(receipt) = receipt_naming_none(scene, order, attested) else {
        unreachable!("receipt_action builds a RecordReceipt");
    };
    Action::CommitAttestedRelease {
        order,
        noise_members: vec![1],
        quorum: vec![1],
        listings: receipt.listings,
    }
}

#[test]
fn refund_after_an_attested_release_debits_exactly_the_staged_participants() {
    // Three patients consent, but the node's cohort is the first two: a refund after the
    // release debits them and not the third, who could have been in it but was not.
    let (mut scene, ids, order) = ordered();
    let cohort = ids[..2].to_vec();
    stage_ok(&mut scene, order, &cohort);
    let commit = attested_release(&scene, order, cohort.clone());
    scene
        .f
        .submit(&mut scene.committee, commit)
        .expect("commit the attested release");
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund after the commitment");
    let state = scene.f.ledger.state();
    let spent = |patient: &AccountId| state.personal_spent_micro(patient, &scene.listing);
    assert_eq!(spent(&ids[0]), DEBIT);
    assert_eq!(spent(&ids[1]), DEBIT);
    assert_eq!(spent(&ids[2]), 0, "consented, but not in the release");
    assert!(state.staged_participants(&order, &scene.listing).is_empty());
    // The listing's budget is spent as for any committed release.
    assert_eq!(
        state
            .listing(&scene.listing)
            .expect("listing")
            .epsilon_spent_micro,
        DEBIT
    );
    // Replayed from genesis, and reopened from storage (which checks the state hash), the
    // ledger holds the same state.
    market::audit_database(scene.f.ledger.path()).expect("the ledger verifies");
    let _ = scene.reopen();
}

#[test]
fn attested_release_over_participants_the_node_did_not_attest_is_refused() {
    // The market stages a third patient the node never named: the attestation does not
    // cover the staged list, so the release is not committed.
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let commit = attested_release(&scene, order, ids[..2].to_vec());
    let owner = scene.node.id;
    scene.f.refuse(
        &scene.committee,
        commit,
        TxError::ContributionNotAttested {
            listing: scene.listing.clone(),
            owner,
        },
    );
    assert!(scene.f.ledger.state().release(&order).is_none());
}

#[test]
fn attested_release_naming_its_participants_is_refused() {
    // The participants are staged, never named in the commitment, so it stays small.
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let mut commit = attested_release(&scene, order, ids.clone());
    if let Action::CommitAttestedRelease { listings, .. } = &mut commit {
        listings[0].participants = ids.clone();
    }
    scene.f.refuse(
        &scene.committee,
        commit,
        TxError::ParticipantsStagedAndNamed(scene.listing.clone()),
    );
}

#[test]
fn attested_release_for_another_epsilon_is_refused() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let mut commit = attested_release(&scene, order, ids.clone());
    if let Action::CommitAttestedRelease { listings, .. } = &mut commit {
        listings[0].epsilon_debited_micro = DEBIT / 2;
    }
    // The attestation covers ε too, but the ε rule is checked first and named.
    scene.f.refuse(
        &scene.committee,
        commit,
        TxError::EpsilonExceedsRequest {
            listing: scene.listing.clone(),
            debited_micro: DEBIT / 2,
            requested_micro: DEBIT,
        },
    );
}

#[test]
fn attested_release_with_a_person_staged_under_two_listings_is_refused() {
    // A refund debits an attested release's staged lists, once per person: a person staged
    // under two listings of one order is refused before the release is committed.
    let (mut scene, (second_node, second), ids, order) = patient_staged_under_both();
    let patient = scene.patients[0].id;
    let Action::RecordReceipt(receipt) = receipt_on_both(
        &scene,
        (&second_node, &second),
        order,
        [ids, vec![patient]],
        [false, false],
    ) else {
        unreachable!("receipt_action builds a RecordReceipt");
    };
    let commit = Action::CommitAttestedRelease {
        order,
        noise_members: vec![1],
        quorum: vec![1],
        listings: receipt.listings,
    };
    scene.f.refuse(
        &scene.committee,
        commit,
        TxError::ParticipantInTwoListings {
            patient,
            first: scene.listing.clone(),
            second,
        },
    );
}

#[test]
fn receipt_over_other_contributions_than_the_attested_release_is_refused() {
    // The members key-switched the committed contributions: a receipt over another
    // contribution of the node (its word too, but not what was released) is refused.
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let commit = attested_release(&scene, order, ids.clone());
    scene
        .f
        .submit(&mut scene.committee, commit)
        .expect("commit the attested release");
    let Action::RecordReceipt(mut receipt) = receipt_naming_none(&scene, order, ids.clone()) else {
        unreachable!("receipt_action builds a RecordReceipt");
    };
    let chain_id = scene.f.ledger.chain_id();
    let mut other = market::ListingContribution {
        participants: ids.clone(),
        contribution_hash: market::Hash32([77; 32]),
        ..receipt.listings[0].clone()
    };
    other.attest(&scene.node.key, &chain_id, &order, &receipt.query_hash);
    other.participants.clear();
    receipt.listings = vec![other];
    receipt.contributions_root = market::hash::contributions_root(
        receipt.listings.iter().map(|part| &part.contribution_hash),
    );
    scene.f.refuse(
        &scene.committee,
        Action::RecordReceipt(receipt),
        TxError::ReceiptNotTheCommittedRelease(order),
    );
    // The receipt over the committed contributions still records.
    record_naming_none_and_settle(&mut scene, order, ids);
}

#[test]
fn attested_release_below_the_minimum_cohort_is_refused() {
    // The node attests an empty cohort, and the listing's minimum is one: a release the
    // receipt would refuse is not committed (nothing is key-switched, and a refund spends no
    // one's ε).
    let (mut scene, _ids, order) = ordered();
    let min = scene
        .f
        .ledger
        .state()
        .listing(&scene.listing)
        .expect("listing")
        .terms
        .min_cohort_size;
    assert_eq!(min, 1);
    scene.f.refuse(
        &scene.committee,
        attested_release(&scene, order, Vec::new()),
        TxError::CohortTooSmall {
            listing: scene.listing.clone(),
            min,
            got: 0,
        },
    );
}

#[test]
fn attested_release_of_a_participant_who_revoked_since_staging_is_refused() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    scene.f.advance(1);
    let revoke = Action::RevokeConsent {
        listing: scene.listing.clone(),
        purpose: Purpose::AcademicResearch,
    };
    let index = scene
        .patients
        .iter()
        .position(|patient| patient.id == ids[0])
        .expect("a patient of the scene");
    let mut patient = scene.patients.remove(index);
    scene.f.submit(&mut patient, revoke).expect("revoke");
    scene.f.refuse(
        &scene.committee,
        attested_release(&scene, order, ids.clone()),
        TxError::ParticipantWithoutConsent {
            patient: ids[0],
            listing: scene.listing.clone(),
            purpose: Purpose::AcademicResearch,
        },
    );
}

#[test]
fn attested_release_by_an_account_outside_the_committee_is_refused_as_such() {
    let (mut scene, ids, order) = ordered();
    stage_ok(&mut scene, order, &ids);
    let buyer = scene.buyer.id;
    scene.f.refuse(
        &scene.buyer,
        attested_release(&scene, order, ids),
        TxError::WrongRole {
            account: buyer,
            actual: market::Role::Buyer,
            required: "committee member",
        },
    );
}
