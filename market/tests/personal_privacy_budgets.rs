//! Each patient's personal privacy limit, set in the consent: the ledger refuses a receipt
//! that would take a patient past it, keeps what was spent across revocations, and tells a
//! node which patients a query may still use.
//!
//! The scene's orders request 0.5 ε and its receipts debit exactly that (see `common`).

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::{Action, OrderId, PayoutChoice, Purpose, TxError};

/// Debited by every receipt of the scene, micro-epsilon.
const DEBIT: u64 = 500_000;

fn grant_with_limit(scene: &mut Scene, index: usize, limit: Option<u64>) -> Result<(), TxError> {
    let mut action = grant_action(
        &scene.patients[index],
        &scene.listing,
        PayoutChoice::ToPatient,
    );
    if let Action::GrantConsent {
        epsilon_limit_micro,
        ..
    } = &mut action
    {
        *epsilon_limit_micro = limit;
    }
    scene
        .f
        .submit(&mut scene.patients[index], action)
        .map(|_| ())
}

/// The first patient's new consent with a limit of `limit_micro`, below the `spent_micro`
/// already spent on them, is refused naming both numbers.
fn refuse_limit_below_spent(scene: &mut Scene, limit_micro: u64, spent_micro: u64) {
    let mut too_low = grant_action(&scene.patients[0], &scene.listing, PayoutChoice::ToPatient);
    if let Action::GrantConsent {
        epsilon_limit_micro,
        ..
    } = &mut too_low
    {
        *epsilon_limit_micro = Some(limit_micro);
    }
    let patient = scene.patients[0].id;
    let listing = scene.listing.clone();
    scene.f.refuse(
        &scene.patients[0],
        too_low,
        TxError::PersonalLimitBelowSpent {
            patient,
            listing,
            limit_micro,
            spent_micro,
        },
    );
}

#[test]
fn receipt_that_would_take_a_patient_past_their_personal_limit_is_refused() {
    let mut scene = Scene::new();
    // Room for exactly one receipt: 0.5 ≤ 0.6 < 1.0.
    grant_with_limit(&mut scene, 0, Some(600_000)).expect("grant with a limit");
    let ids = scene.patient_ids();

    let first = scene.order();
    scene.record(first, ids.clone());
    let state = scene.f.ledger.state();
    assert_eq!(state.personal_spent_micro(&ids[0], &scene.listing), DEBIT);
    assert_eq!(state.personal_spent_micro(&ids[1], &scene.listing), DEBIT);

    let second = scene.order();
    let naming_everyone = receipt_action(
        scene.f.ledger.chain_id(),
        second,
        vec![(scene.listing.clone(), &scene.node, ids.clone())],
    );
    scene.f.refuse(
        &scene.committee,
        naming_everyone,
        TxError::PersonalBudgetExceeded {
            patient: ids[0],
            listing: scene.listing.clone(),
            spent_micro: DEBIT,
            limit_micro: 600_000,
            debited_micro: DEBIT,
        },
    );

    // Without the patient the receipt stands, and their spending does not move.
    scene.record(second, ids[1..].to_vec());
    let state = scene.f.ledger.state();
    assert_eq!(state.personal_spent_micro(&ids[0], &scene.listing), DEBIT);
    assert_eq!(
        state.personal_spent_micro(&ids[1], &scene.listing),
        2 * DEBIT
    );
    assert!(scene.f.conserved());
}

#[test]
fn node_is_told_to_leave_out_a_patient_whose_limit_the_order_would_exceed() {
    let mut scene = Scene::new();
    grant_with_limit(&mut scene, 0, Some(600_000)).expect("grant with a limit");
    let ids = scene.patient_ids();
    let order = scene.order();
    scene.record(order, ids.clone());

    let state = scene.f.ledger.state();
    let now = scene.f.ledger.machine().last_time();
    let purpose = Purpose::AcademicResearch;
    // 0.5 spent: 0.1 more fits the limit of 0.6 exactly, 0.5 more does not.
    let small = state.current_consents_affording(&scene.listing, purpose, now, 100_000);
    assert_eq!(small, ids);
    let large = state.current_consents_affording(&scene.listing, purpose, now, DEBIT);
    assert_eq!(large, ids[1..].to_vec());
    // The consent itself still holds: only the limit leaves the patient out.
    assert_eq!(state.current_consents(&scene.listing, purpose, now), ids);
}

#[test]
fn revoking_and_consenting_again_does_not_reset_what_was_spent() {
    let mut scene = Scene::new();
    grant_with_limit(&mut scene, 0, Some(1_000_000)).expect("grant with a limit");
    let ids = scene.patient_ids();
    let order = scene.order();
    scene.record(order, ids.clone());

    scene.revoke(0);

    // A new limit below what is already spent is refused, naming both numbers.
    refuse_limit_below_spent(&mut scene, 300_000, DEBIT);

    grant_with_limit(&mut scene, 0, Some(1_000_000)).expect("grant again");
    assert_eq!(
        scene
            .f
            .ledger
            .state()
            .personal_spent_micro(&ids[0], &scene.listing),
        DEBIT,
        "consenting again keeps what was spent"
    );
}

#[test]
fn spending_under_another_purpose_counts_against_the_same_limit() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    // The patient consents to feasibility counts with a limit that one receipt fills.
    let mut feasibility = grant_action(&scene.patients[0], &scene.listing, PayoutChoice::ToPatient);
    if let Action::GrantConsent {
        purpose,
        epsilon_limit_micro,
        ..
    } = &mut feasibility
    {
        *purpose = Purpose::TrialFeasibility;
        *epsilon_limit_micro = Some(DEBIT);
    }
    scene
        .f
        .submit(&mut scene.patients[0], feasibility)
        .expect("grant for feasibility");
    // An academic query (no limit on that consent) spends 0.5 on the patient's records.
    let order = scene.order();
    scene.record(order, ids.clone());

    let state = scene.f.ledger.state();
    let now = scene.f.ledger.machine().last_time();
    let left =
        state.current_consents_affording(&scene.listing, Purpose::TrialFeasibility, now, DEBIT);
    assert!(
        left.is_empty(),
        "the records already spent the feasibility consent's whole limit"
    );
}

#[test]
fn zero_personal_limit_is_refused() {
    let mut scene = Scene::new();
    let mut action = grant_action(&scene.patients[0], &scene.listing, PayoutChoice::ToPatient);
    if let Action::GrantConsent {
        epsilon_limit_micro,
        ..
    } = &mut action
    {
        *epsilon_limit_micro = Some(0);
    }
    scene
        .f
        .refuse(&scene.patients[0], action, TxError::ZeroPersonalLimit);
}

#[test]
fn personal_spending_is_rebuilt_from_storage_after_a_restart() {
    let mut scene = Scene::new();
    grant_with_limit(&mut scene, 0, Some(600_000)).expect("grant with a limit");
    let ids = scene.patient_ids();
    let order = scene.order();
    scene.record(order, ids.clone());

    let (reopened, _dir) = scene.reopen();
    assert_eq!(
        reopened
            .state()
            .personal_spent_micro(&ids[0], &market::ListingId::new("diabetes-cohort")),
        DEBIT
    );
}

#[test]
fn personal_limit_bounds_the_person_across_listings() {
    let mut scene = Scene::new();
    // Patient 0's records are also in a second listing, from another node; the patient
    // consents there too, with the same limit. Room for one receipt of 0.5, in all.
    let mut second_node = scene.f.register(market::Role::ComputeNode);
    let second = publish(
        &mut scene.f,
        &mut second_node,
        "cardiology-cohort",
        terms(1000, market::Compensation::Payment),
    );
    grant_with_limit(&mut scene, 0, Some(600_000)).expect("grant with a limit");
    let mut in_second = grant_action(&scene.patients[0], &second, PayoutChoice::ToPatient);
    if let Action::GrantConsent {
        epsilon_limit_micro,
        ..
    } = &mut in_second
    {
        *epsilon_limit_micro = Some(600_000);
    }
    scene
        .f
        .submit(&mut scene.patients[0], in_second)
        .expect("grant in the second listing");
    let patient = scene.patients[0].id;

    let first = scene.order();
    scene.record(first, vec![patient]);
    let state = scene.f.ledger.state();
    assert_eq!(state.person_spent_micro(&patient), DEBIT);
    assert_eq!(state.personal_spent_micro(&patient, &second), 0);
    // Nothing was spent on the patient's records in the second listing, but the person has
    // spent 0.5 of 0.6: the second listing may not use them for another 0.5.
    let now = scene.f.ledger.machine().last_time();
    assert!(state
        .current_consents_affording(&second, Purpose::AcademicResearch, now, DEBIT)
        .is_empty());

    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(std::slice::from_ref(&second), scene.f.now() + 3600),
            )
            .expect("order on the second listing"),
    );
    let naming_the_patient = receipt_action(
        scene.f.ledger.chain_id(),
        order,
        vec![(second.clone(), &second_node, vec![patient])],
    );
    scene.f.refuse(
        &scene.committee,
        naming_the_patient,
        TxError::PersonalBudgetExceeded {
            patient,
            listing: second,
            spent_micro: DEBIT,
            limit_micro: 600_000,
            debited_micro: DEBIT,
        },
    );
}

/// Commits a release of `order` with members 1 and 2 as noise set and quorum.
fn commit_release(scene: &mut Scene, order: OrderId) {
    let commit = Action::CommitRelease {
        order,
        noise_members: vec![1, 2],
        quorum: vec![1, 2],
    };
    scene
        .f
        .submit(&mut scene.committee, commit)
        .expect("commit the release");
}

#[test]
fn refund_after_commit_debits_personal_budgets() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    // The third patient revokes before the order: they cannot be in its cohort.
    scene.f.advance(1);
    let revoke = Action::RevokeConsent {
        listing: scene.listing.clone(),
        purpose: Purpose::AcademicResearch,
    };
    scene
        .f
        .submit(&mut scene.patients[2], revoke)
        .expect("revoke");
    scene.f.advance(1);
    let order = scene.order();
    scene.f.advance(1);
    commit_release(&mut scene, order);
    // A patient who consents only after the commitment cannot be in the cohort either.
    scene.f.advance(1);
    let mut late = scene.f.register(market::Role::Patient);
    let grant = grant_action(&late, &scene.listing, PayoutChoice::ToPatient);
    scene.f.submit(&mut late, grant).expect("late grant");

    // The committee declares the computation failed after the release was committed: the
    // noisy values may be out, so the people who could be in them pay as a receipt's would.
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund after the commitment");
    let state = scene.f.ledger.state();
    let spent = |patient: &market::AccountId| state.personal_spent_micro(patient, &scene.listing);
    assert_eq!(spent(&ids[0]), DEBIT);
    assert_eq!(spent(&ids[1]), DEBIT);
    assert_eq!(spent(&ids[2]), 0, "revoked before the order");
    assert_eq!(spent(&late.id), 0, "consented after the commitment");
    assert_eq!(state.person_spent_micro(&ids[0]), DEBIT);
    assert_eq!(
        state.balance(&scene.buyer.id),
        5000,
        "the credits come back"
    );

    // The debit holds against personal limits like a receipt's: a limit below it is refused.
    refuse_limit_below_spent(&mut scene, DEBIT - 1, DEBIT);
}

#[test]
fn refund_before_any_commitment_debits_no_personal_budget() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    let order = scene.order();
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund of an order never released");
    let state = scene.f.ledger.state();
    for id in &ids {
        assert_eq!(state.personal_spent_micro(id, &scene.listing), 0);
    }
}

#[test]
fn failed_feasibility_search_debits_the_people_it_could_have_counted() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    // Only the first patient consents to feasibility counts.
    let mut feasibility = grant_action(&scene.patients[0], &scene.listing, PayoutChoice::ToPatient);
    if let Action::GrantConsent { purpose, .. } = &mut feasibility {
        *purpose = Purpose::TrialFeasibility;
    }
    scene
        .f
        .submit(&mut scene.patients[0], feasibility)
        .expect("grant for feasibility");
    let search = Action::OrderQuery {
        query_hash: market::Hash32([9; 32]),
        listings: vec![scene.listing.clone()],
        purpose: Purpose::TrialFeasibility,
        epsilon_micro: DEBIT,
        expires_at: scene.f.now() + 3600,
    };
    let order = OrderId(scene.f.submit(&mut scene.buyer, search).expect("search"));
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund of a failed search");
    let state = scene.f.ledger.state();
    assert_eq!(state.personal_spent_micro(&ids[0], &scene.listing), DEBIT);
    assert_eq!(
        state.personal_spent_micro(&ids[1], &scene.listing),
        0,
        "no consent to feasibility counts"
    );
}

#[test]
fn refund_after_commit_debits_a_person_once_across_the_orders_listings() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    // A second listing of the same node, to which the first patient also consents: a node
    // counts them once per order, in the earliest listing, so a refund debits them once.
    let second = publish(
        &mut scene.f,
        &mut scene.node,
        "second-cohort",
        terms(1000, market::Compensation::Payment),
    );
    let grant = grant_action(&scene.patients[0], &second, PayoutChoice::ToPatient);
    scene
        .f
        .submit(&mut scene.patients[0], grant)
        .expect("grant on the second listing");
    let both = order_action(
        &[scene.listing.clone(), second.clone()],
        scene.f.now() + 3600,
    );
    let order = OrderId(scene.f.submit(&mut scene.buyer, both).expect("order"));
    commit_release(&mut scene, order);
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund after the commitment");
    let state = scene.f.ledger.state();
    assert_eq!(state.person_spent_micro(&ids[0]), DEBIT, "debited once");
    assert_eq!(state.personal_spent_micro(&ids[0], &scene.listing), DEBIT);
    assert_eq!(state.personal_spent_micro(&ids[0], &second), 0);
    assert_eq!(state.person_spent_micro(&ids[1]), DEBIT);
}
