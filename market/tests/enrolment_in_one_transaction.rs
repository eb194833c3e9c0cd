//! A patient's first consent registers them (issue 23, enrolment in bulk): one signed
//! transaction per consenting patient instead of two, under the same rules as a
//! `RegisterAccount` signed by the patient followed by the consent.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use market::{Action, ListingId, PayoutChoice, Purpose, Role, TxError};

#[test]
fn first_consent_registers_the_patient_who_signs_it() {
    let mut scene = Scene::new();
    let mut newcomer = Party::new(&mut scene.f.rng);
    assert!(scene.f.ledger.state().account(&newcomer.id).is_none());
    let grant = grant_action(&newcomer, &scene.listing, PayoutChoice::ToPatient);
    scene
        .f
        .submit(&mut newcomer, grant)
        .expect("a first consent at nonce 0 registers its signer");
    let state = scene.f.ledger.state();
    let account = state.account(&newcomer.id).expect("registered");
    assert_eq!(account.role, Role::Patient);
    assert_eq!(account.balance, 0);
    assert_eq!(account.next_nonce, 1, "the consent used nonce 0");
    let now = scene.f.ledger.machine().last_time();
    assert!(state
        .consent(&newcomer.id, &scene.listing, Purpose::AcademicResearch)
        .unwrap()
        .is_active_at(now));
    // Registered now: a second registration is refused as for anyone else.
    let again = Action::RegisterAccount {
        account: newcomer.id,
        role: Role::Patient,
    };
    scene
        .f
        .refuse(&newcomer, again, TxError::AlreadyRegistered(newcomer.id));
}

#[test]
fn refused_first_consent_registers_no_one() {
    let mut scene = Scene::new();
    let newcomer = Party::new(&mut scene.f.rng);
    let unknown = ListingId::new("no-such-listing");
    let grant = grant_action(&newcomer, &unknown, PayoutChoice::ToPatient);
    // `refuse` also checks that the state (its hash) and every balance are unchanged.
    scene
        .f
        .refuse(&newcomer, grant, TxError::UnknownListing(unknown));
    assert!(scene.f.ledger.state().account(&newcomer.id).is_none());
}

#[test]
fn unregistered_signer_cannot_consent_for_someone_else() {
    let mut scene = Scene::new();
    let stranger = Party::new(&mut scene.f.rng);
    let someone_else = Party::new(&mut scene.f.rng);
    let grant = grant_action(&someone_else, &scene.listing, PayoutChoice::ToPatient);
    scene
        .f
        .refuse(&stranger, grant, TxError::UnknownAccount(stranger.id));
}

#[test]
fn registering_consent_must_be_the_signers_first_transaction() {
    let mut scene = Scene::new();
    let mut newcomer = Party::new(&mut scene.f.rng);
    newcomer.nonce = 1;
    let grant = grant_action(&newcomer, &scene.listing, PayoutChoice::ToPatient);
    scene.f.refuse(
        &newcomer,
        grant,
        TxError::NonceGap {
            account: newcomer.id,
            expected: 0,
            got: 1,
        },
    );
}

#[test]
fn block_with_a_refused_first_consent_replays_to_the_same_state() {
    // The market finalizes a block with the state its preparation left; a replica (and
    // `ledger verify`) applies the block afresh. A first consent refused inside a block must
    // leave no trace in the first, or the two would disagree on the state hash.
    let mut scene = Scene::new();
    let accepted = Party::new(&mut scene.f.rng);
    let refused = Party::new(&mut scene.f.rng);
    let other = Party::new(&mut scene.f.rng);
    let unknown = ListingId::new("no-such-listing");
    let txs = vec![
        scene.f.sign(
            &accepted,
            grant_action(&accepted, &scene.listing, PayoutChoice::ToPatient),
        ),
        scene.f.sign(
            &refused,
            grant_action(&refused, &unknown, PayoutChoice::ToPatient),
        ),
        scene.f.sign(
            &other,
            grant_action(&other, &scene.listing, PayoutChoice::ToPatient),
        ),
    ];
    let outcome = scene.f.ledger.append(txs).expect("append");
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(outcome.refused[0].index, 1);
    let head = outcome.head.expect("a block of the two accepted consents");
    assert_eq!(head.header.tx_count, 2);
    let state = scene.f.ledger.state();
    assert!(state.account(&refused.id).is_none());
    assert!(state.account(&accepted.id).is_some() && state.account(&other.id).is_some());
    let path = scene.f.ledger.path().to_path_buf();
    market::audit_database(&path).expect("the replayed state hashes match the signed ones");
}
