//! Payouts checked against hand computations, and conservation of credits.

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::{AccountId, Action, Compensation, OrderId, PayoutChoice, Role, TxError};
use proptest::prelude::*;

/// 1000 credits, three consenting participants, the third donates to a fund.
///
/// Hand computation: 1000 / 3 = 333 each, remainder 1000 - 3·333 = 1 back to the buyer.
/// Buyer: 5000 deposited - 1000 escrowed + 1 remainder = 4001.
#[test]
fn settlement_splits_equally_and_sends_the_donated_share_to_the_fund() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    assert!(scene.f.conserved());

    let order = scene.order();
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.buyer.id), 4000);
    assert_eq!(state.escrow_held(), 1000);
    assert!(scene.f.conserved());

    let receipt = scene.record(order, ids.clone());
    assert!(scene.f.conserved());
    scene
        .f
        .submit(&mut scene.buyer, Action::Settle { order, receipt })
        .expect("settle");

    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&ids[0]), 333);
    assert_eq!(state.balance(&ids[1]), 333);
    assert_eq!(state.balance(&ids[2]), 0, "the third patient donated");
    assert_eq!(state.balance(&scene.fund.id), 333);
    assert_eq!(state.balance(&scene.buyer.id), 4001);
    assert_eq!(state.escrow_held(), 0);
    assert_eq!(state.total_issued(), 5000);
    assert!(scene.f.conserved());
}

/// A patient who matched and one who did not are paid the same: the receipt names every
/// consenting participant, and the split does not depend on anything else.
#[test]
fn settlement_pays_the_same_share_whatever_the_match() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    let order = scene.order();
    let receipt = scene.record(order, ids.clone());
    scene
        .f
        .submit(&mut scene.committee, Action::Settle { order, receipt })
        .expect("committee settles");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&ids[0]), state.balance(&ids[1]));
}

/// A donation listing sends every share to its fund, whatever the consents say.
/// Price 100 over 3 participants: 33 each to the fund (99), 1 back to the buyer.
#[test]
fn settlement_of_a_donation_listing_pays_the_listing_fund() {
    let mut scene = Scene::new();
    let mut owner = scene.f.register(Role::Patient);
    let listing = publish(
        &mut scene.f,
        &mut owner,
        "own-records",
        terms(
            100,
            Compensation::Donation {
                fund: scene.fund.id,
            },
        ),
    );
    for patient in scene.patients.iter_mut() {
        let action = grant_action(patient, &listing, PayoutChoice::ToPatient);
        scene.f.submit(patient, action).expect("grant");
    }
    let ids = scene.patient_ids();
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(std::slice::from_ref(&listing), scene.f.now() + 100),
            )
            .expect("order"),
    );
    let receipt = market::ReceiptId(
        scene
            .f
            .submit(
                &mut scene.committee,
                receipt_action(
                    scene.f.ledger.chain_id(),
                    order,
                    vec![(listing, &owner, ids.clone())],
                ),
            )
            .expect("receipt"),
    );
    scene
        .f
        .submit(&mut scene.buyer, Action::Settle { order, receipt })
        .expect("settle");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.fund.id), 99);
    assert!(ids.iter().all(|id| state.balance(id) == 0));
    assert_eq!(state.balance(&scene.buyer.id), 5000 - 100 + 1);
    assert!(scene.f.conserved());
}

/// Two listings in one order: 1000 over 3 (333 each, 1 back) and 101 over 2 (50 each, 1 back).
/// Each patient takes part in one listing (the privacy unit is the person).
#[test]
fn settlement_of_a_multi_listing_order_splits_each_listing_separately() {
    let mut scene = Scene::new();
    let second = publish(
        &mut scene.f,
        &mut scene.node,
        "hypertension",
        terms(101, Compensation::Payment),
    );
    let mut second_patients = [
        scene.f.register(Role::Patient),
        scene.f.register(Role::Patient),
    ];
    for patient in second_patients.iter_mut() {
        let action = grant_action(patient, &second, PayoutChoice::ToPatient);
        scene.f.submit(patient, action).expect("grant");
    }
    let mut second_ids: Vec<AccountId> = second_patients.iter().map(|p| p.id).collect();
    second_ids.sort();
    let ids = scene.patient_ids();
    let listings = vec![scene.listing.clone(), second.clone()];
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(&listings, scene.f.now() + 100),
            )
            .expect("order"),
    );
    assert_eq!(scene.f.ledger.state().balance(&scene.buyer.id), 5000 - 1101);
    let receipt = market::ReceiptId(
        scene
            .f
            .submit(
                &mut scene.committee,
                receipt_action(
                    scene.f.ledger.chain_id(),
                    order,
                    vec![
                        (scene.listing.clone(), &scene.node, ids.clone()),
                        (second, &scene.node, second_ids.clone()),
                    ],
                ),
            )
            .expect("receipt"),
    );
    scene
        .f
        .submit(&mut scene.buyer, Action::Settle { order, receipt })
        .expect("settle");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&ids[0]), 333);
    assert_eq!(state.balance(&ids[1]), 333);
    assert!(second_ids.iter().all(|id| state.balance(id) == 50));
    assert_eq!(state.balance(&scene.fund.id), 333);
    assert_eq!(state.balance(&scene.buyer.id), 5000 - 1101 + 1 + 1);
    assert!(scene.f.conserved());
}

#[test]
fn expired_order_is_refunded_to_the_buyer_and_releases_epsilon() {
    let mut scene = Scene::new();
    let order = scene.order();
    let listing = scene.listing.clone();
    let reserved = scene
        .f
        .ledger
        .state()
        .listing(&listing)
        .expect("listing")
        .epsilon_reserved_micro;
    assert_eq!(reserved, 500_000);
    let expires_at = scene
        .f
        .ledger
        .state()
        .order(&order)
        .expect("order")
        .expires_at;
    scene.f.refuse(
        &scene.buyer,
        Action::Refund { order },
        TxError::OrderNotExpired {
            order,
            expires_at,
            now: scene.f.now(),
        },
    );
    scene.f.advance(3600);
    scene
        .f
        .submit(&mut scene.buyer, Action::Refund { order })
        .expect("refund");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.buyer.id), 5000);
    assert_eq!(
        state
            .listing(&listing)
            .expect("listing")
            .epsilon_reserved_micro,
        0
    );
    assert!(scene.f.conserved());
    scene.f.refuse(
        &scene.buyer,
        Action::Refund { order },
        TxError::AlreadyRefunded(order),
    );
}

#[test]
fn failed_order_is_refunded_by_the_committee() {
    let mut scene = Scene::new();
    let order = scene.order();
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("committee declares failure");
    assert_eq!(scene.f.ledger.state().balance(&scene.buyer.id), 5000);
    let ids = scene.patient_ids();
    let listing = scene.listing.clone();
    scene.f.refuse(
        &scene.committee,
        receipt_action(
            scene.f.ledger.chain_id(),
            order,
            vec![(listing, &scene.node, ids)],
        ),
        TxError::OrderNotOpen {
            order,
            status: "refunded",
        },
    );
}

#[test]
fn epsilon_budget_stops_queries_once_spent() {
    let mut scene = Scene::new();
    let ids = scene.patient_ids();
    let listing = scene.listing.clone();
    // Budget 10 ε; each order reserves 0.5 ε and each receipt spends 0.4 ε.
    let mut receipts = 0;
    for _ in 0..30 {
        let order = scene.order();
        let receipt = scene.record(order, ids.clone());
        receipts += 1;
        scene
            .f
            .submit(&mut scene.buyer, Action::Settle { order, receipt })
            .expect("settle");
        scene.f.deposit(&scene.buyer, 1000);
        if scene
            .f
            .ledger
            .state()
            .listing(&listing)
            .expect("listing")
            .epsilon_remaining_micro()
            < 500_000
        {
            break;
        }
    }
    let remaining = scene
        .f
        .ledger
        .state()
        .listing(&listing)
        .expect("listing")
        .epsilon_remaining_micro();
    // 20 receipts × 0.5 (each debits exactly its order's ε) = 10 ε spent, nothing left.
    assert_eq!(receipts, 20);
    assert_eq!(remaining, 0);
    scene.f.refuse(
        &scene.buyer,
        order_action(std::slice::from_ref(&listing), scene.f.now() + 100),
        TxError::EpsilonBudgetExhausted {
            listing,
            remaining_micro: 0,
            requested_micro: 500_000,
        },
    );
}

/// Budget splitting: many small orders placed together, none computed yet, cannot reserve
/// more than the listing's total ε between them. Budget 10 ε, 0.5 ε per order: exactly 20.
#[test]
fn budget_splitting_across_many_small_orders_cannot_exceed_the_total() {
    let mut scene = Scene::new();
    let listing = scene.listing.clone();
    let mut placed = 0;
    loop {
        scene.f.deposit(&scene.buyer, 1000);
        let action = order_action(std::slice::from_ref(&listing), scene.f.now() + 100);
        match scene.f.submit(&mut scene.buyer, action) {
            Ok(_) => placed += 1,
            Err(error) => {
                assert_eq!(
                    error,
                    TxError::EpsilonBudgetExhausted {
                        listing: listing.clone(),
                        remaining_micro: 0,
                        requested_micro: 500_000,
                    }
                );
                break;
            }
        }
        assert!(placed <= 20, "more than the budget was reserved");
    }
    assert_eq!(placed, 20);
    let state = scene.f.ledger.state();
    let record = state.listing(&listing).expect("listing");
    assert_eq!(record.epsilon_reserved_micro, 10_000_000);
    assert_eq!(record.epsilon_remaining_micro(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// For any price and cohort, the shares plus the remainder add up to the price, the split
    /// is equal, and the credits in the system are conserved.
    #[test]
    fn settlement_conserves_credits(price in 1u64..5_000, cohort in 1usize..6, donors in 0usize..6) {
        let mut f = Fixture::new();
        let mut node = f.register(Role::ComputeNode);
        let fund = f.register(Role::Fund);
        let mut buyer = f.register(Role::Buyer);
        let mut committee = f.register(Role::CommitteeMember);
        let listing = publish(&mut f, &mut node, "cohort", terms(price, Compensation::Payment));
        let mut ids = Vec::new();
        for i in 0..cohort {
            let mut patient = f.register(Role::Patient);
            let payout = if i < donors { PayoutChoice::DonateTo { fund: fund.id } } else { PayoutChoice::ToPatient };
            let action = grant_action(&patient, &listing, payout);
            f.submit(&mut patient, action).expect("grant");
            ids.push(patient.id);
        }
        f.deposit(&buyer, price);
        let order = OrderId(f.submit(&mut buyer, order_action(std::slice::from_ref(&listing), f.now() + 10)).expect("order"));
        let receipt = market::ReceiptId(f.submit(&mut committee, receipt_action(f.ledger.chain_id(), order, vec![(listing, &node, ids.clone())])).expect("receipt"));
        f.submit(&mut buyer, Action::Settle { order, receipt }).expect("settle");
        let state = f.ledger.state();
        let share = price / cohort as u64;
        let donating = donors.min(cohort) as u64;
        for (i, id) in ids.iter().enumerate() {
            let expected = if i < donors { 0 } else { share };
            prop_assert_eq!(state.balance(id), expected);
        }
        prop_assert_eq!(state.balance(&fund.id), share * donating);
        prop_assert_eq!(state.balance(&buyer.id), price % cohort as u64);
        prop_assert!(f.conserved());
    }
}

#[test]
fn order_expiry_is_capped() {
    let mut scene = Scene::new();
    let listing = scene.listing.clone();
    let now = scene.f.now();
    let latest = now + market::tx::MAX_ORDER_LIFETIME_SECS;
    // Ten years, as the raw orders that locked every listing's budget asked.
    for expires_at in [now + 10 * 366 * 86_400, latest + 1] {
        scene.f.refuse(
            &scene.buyer,
            order_action(std::slice::from_ref(&listing), expires_at),
            TxError::OrderExpiryTooFar { expires_at, latest },
        );
    }
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                order_action(std::slice::from_ref(&listing), latest),
            )
            .expect("an order of exactly 24 hours"),
    );
    assert_eq!(
        scene
            .f
            .ledger
            .state()
            .order(&order)
            .expect("order")
            .expires_at,
        latest
    );
}

#[test]
fn buyer_cancels_its_unstarted_order() {
    let mut scene = Scene::new();
    let order = scene.order();
    let listing = scene.listing.clone();
    // Nobody but the buyer cancels it.
    let committee = scene.committee.id;
    scene.f.refuse(
        &scene.committee,
        Action::CancelOrder { order },
        TxError::NotOrderParty {
            order,
            signer: committee,
        },
    );
    scene
        .f
        .submit(&mut scene.buyer, Action::CancelOrder { order })
        .expect("cancel before expiry");
    let state = scene.f.ledger.state();
    assert_eq!(state.balance(&scene.buyer.id), 5000, "the escrow came back");
    let listing = state.listing(&listing).expect("listing");
    assert_eq!(
        listing.epsilon_reserved_micro, 0,
        "the ε reservation is freed"
    );
    assert_eq!(
        listing.epsilon_spent_micro, 0,
        "nothing was released, nothing spent"
    );
    assert!(scene.f.conserved());
    // A cancelled order is closed: no release may be committed for it.
    scene.f.refuse(
        &scene.committee,
        Action::CommitRelease {
            order,
            noise_members: vec![1, 2],
            quorum: vec![1, 2],
        },
        TxError::OrderNotOpen {
            order,
            status: "refunded",
        },
    );
}

#[test]
fn order_with_a_committed_release_cannot_be_cancelled() {
    let mut scene = Scene::new();
    let order = scene.order();
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
        .expect("release committed");
    scene.f.refuse(
        &scene.buyer,
        Action::CancelOrder { order },
        TxError::ReleaseCommitted(order),
    );
}

#[test]
fn feasibility_order_cannot_be_cancelled_or_committed_and_its_refund_spends_its_epsilon() {
    let mut scene = Scene::new();
    let listing = scene.listing.clone();
    let epsilon_micro = 500_000;
    let order = OrderId(
        scene
            .f
            .submit(
                &mut scene.buyer,
                Action::OrderQuery {
                    query_hash: market::Hash32([9; 32]),
                    listings: vec![listing.clone()],
                    purpose: market::Purpose::TrialFeasibility,
                    epsilon_micro,
                    expires_at: scene.f.now() + 3600,
                },
            )
            .expect("feasibility order"),
    );
    // Each node answers a feasibility search on its own, with no release committed first:
    // the ledger cannot know the counts are not out, so the buyer cannot cancel for free.
    scene.f.refuse(
        &scene.buyer,
        Action::CancelOrder { order },
        TxError::NotCancellable {
            order,
            reason: "a feasibility search's counts may already be out",
        },
    );
    // A search commits no release: a commitment would only move its refund's debit window
    // (from the refund back to the commitment), sparing people who consented in between.
    scene.f.refuse(
        &scene.committee,
        Action::CommitRelease {
            order,
            noise_members: vec![1],
            quorum: vec![1],
        },
        TxError::InvalidRelease("a feasibility search commits no release"),
    );
    // Refunded when the search fails, the credits come back but the ε stays spent.
    scene
        .f
        .submit(&mut scene.committee, Action::Refund { order })
        .expect("refund of a failed search");
    let state = scene.f.ledger.state();
    let listing = state.listing(&listing).expect("listing");
    assert_eq!(listing.epsilon_reserved_micro, 0);
    assert_eq!(listing.epsilon_spent_micro, epsilon_micro);
    assert_eq!(state.balance(&scene.buyer.id), 5000);
}
