//! Issue 13, item 2: the ledger's rules for trial postings and replies. A reply is recorded
//! only when the owner of a listing the trial was posted to attests it, while the trial is
//! open, once; each refusal names its rule and changes nothing (`Fixture::refuse`).

#![cfg(feature = "storage")]

mod common;

use std::collections::BTreeSet;

use common::*;
use ed25519_dalek::Signer;
use market::tx::{trial_reply_digest, trial_reply_hash};
use market::{Action, Compensation, ListingId, Purpose, TrialPosting, TxError};

const TRIAL: &str = "htn-2027-01";

/// The scene, with a second listing of the node that allows trial recruitment.
fn recruiting_scene() -> (Scene, ListingId) {
    let mut scene = Scene::new();
    let mut recruiting = terms(1000, Compensation::Payment);
    recruiting.allowed_purposes = BTreeSet::from([Purpose::TrialRecruitment]);
    let listing = publish(
        &mut scene.f,
        &mut scene.node,
        "recruiting-clinic",
        recruiting,
    );
    (scene, listing)
}

fn posting(scene: &Scene, listings: Vec<ListingId>) -> TrialPosting {
    TrialPosting {
        trial: TRIAL.to_string(),
        summary: "Phase II study, adults 40 and over with hypertension.".to_string(),
        contact_key: [5; 32],
        evaluation_key: [6; 32],
        criteria: vec![1, 2, 3],
        listings,
        expires_at: scene.f.now() + 86_400,
    }
}

fn post(scene: &mut Scene, listing: &ListingId) {
    let action = Action::PostTrial(posting(scene, vec![listing.clone()]));
    scene
        .f
        .submit(&mut scene.buyer, action)
        .expect("the trial is posted");
}

/// A reply to the trial from `listing`, attested by the scene's node.
fn reply(scene: &Scene, listing: &ListingId, contact: u8) -> Action {
    let reply_hash = trial_reply_hash(TRIAL, listing, &[contact; 48], &[9; 64]);
    let digest = trial_reply_digest(&scene.f.ledger.chain_id(), TRIAL, listing, &reply_hash);
    Action::RecordTrialReply {
        trial: TRIAL.to_string(),
        listing: listing.clone(),
        reply_hash,
        attestation: scene.node.key.sign(digest.as_bytes()).to_bytes().to_vec(),
    }
}

#[test]
fn ledger_records_an_attested_reply_and_names_no_patient() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let action = reply(&scene, &listing, 1);
    scene
        .f
        .submit(&mut scene.committee, action)
        .expect("an attested reply is recorded");
    let state = scene.f.ledger.state();
    let trial = state.trial(TRIAL).expect("the trial is on the ledger");
    assert_eq!(trial.recruiter, scene.buyer.id);
    assert_eq!(trial.replies.len(), 1);
    assert_eq!(trial.replies_from(&listing), 1);
}

#[test]
fn trial_on_a_listing_not_allowing_recruitment_is_refused() {
    let (mut scene, _) = recruiting_scene();
    let listing = scene.listing.clone();
    let action = Action::PostTrial(posting(&scene, vec![listing.clone()]));
    scene.f.refuse(
        &scene.buyer,
        action,
        TxError::PurposeNotAllowed {
            listing,
            purpose: Purpose::TrialRecruitment,
        },
    );
}

#[test]
fn trial_posted_twice_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let action = Action::PostTrial(posting(&scene, vec![listing]));
    scene.f.refuse(
        &scene.buyer,
        action,
        TxError::TrialExists(TRIAL.to_string()),
    );
}

#[test]
fn trial_with_a_malformed_id_is_refused_and_named() {
    let (mut scene, listing) = recruiting_scene();
    let mut bad = posting(&scene, vec![listing]);
    bad.trial = "no spaces/allowed".to_string();
    scene.f.refuse(
        &scene.buyer,
        Action::PostTrial(bad),
        TxError::InvalidTrial(
            "trial: the id must be 1 to 64 letters, digits, `.`, `-` or `_`".to_string(),
        ),
    );
}

#[test]
fn trial_posted_by_a_patient_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    let action = Action::PostTrial(posting(&scene, vec![listing]));
    let account = scene.patients[0].id;
    scene.f.refuse(
        &scene.patients[0],
        action,
        TxError::WrongRole {
            account,
            actual: market::Role::Patient,
            required: "buyer",
        },
    );
}

#[test]
fn reply_not_attested_by_the_listing_owner_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let Action::RecordTrialReply {
        trial,
        listing: replied,
        reply_hash,
        ..
    } = reply(&scene, &listing, 1)
    else {
        unreachable!("reply makes a RecordTrialReply")
    };
    // Signed by the market's own key instead of the node's.
    let digest = trial_reply_digest(&scene.f.ledger.chain_id(), TRIAL, &listing, &reply_hash);
    let forged = Action::RecordTrialReply {
        trial,
        listing: replied,
        reply_hash,
        attestation: scene
            .committee
            .key
            .sign(digest.as_bytes())
            .to_bytes()
            .to_vec(),
    };
    scene.f.refuse(
        &scene.committee,
        forged,
        TxError::TrialReplyNotAttested {
            trial: TRIAL.to_string(),
            listing,
        },
    );
}

#[test]
fn reply_recorded_twice_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let action = reply(&scene, &listing, 1);
    scene
        .f
        .submit(&mut scene.committee, action.clone())
        .unwrap();
    scene.f.refuse(
        &scene.committee,
        action,
        TxError::TrialReplyRefused {
            trial: TRIAL.to_string(),
            reason: "this reply is already recorded",
        },
    );
}

#[test]
fn reply_after_the_trial_expired_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let expires_at = scene
        .f
        .ledger
        .state()
        .trial(TRIAL)
        .unwrap()
        .posting
        .expires_at;
    scene.f.advance(86_400 + 1);
    let action = reply(&scene, &listing, 1);
    scene.f.refuse(
        &scene.committee,
        action,
        TxError::TrialExpired {
            trial: TRIAL.to_string(),
            expires_at,
        },
    );
}

#[test]
fn reply_from_a_listing_the_trial_was_not_posted_to_is_refused() {
    let (mut scene, listing) = recruiting_scene();
    post(&mut scene, &listing);
    let other = scene.listing.clone();
    let action = reply(&scene, &other, 1);
    scene.f.refuse(
        &scene.committee,
        action,
        TxError::TrialNotOnListing {
            trial: TRIAL.to_string(),
            listing: other,
        },
    );
}
