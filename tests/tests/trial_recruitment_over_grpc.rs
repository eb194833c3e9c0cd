//! Issue 13, item 2: trial recruitment over real gRPC on loopback (mutual TLS). A recruiter
//! posts a trial with TFHE-encrypted criteria on the ledger; patients who consent to
//! trial recruitment accept it through the market, sealed to the node that holds their
//! record; the recruiter opens the contacts of the matching patients who accepted, and
//! nothing of anyone else. Matching is decided here from the plaintext records.

#![cfg(feature = "tfhe")]

use cohortex_client::recruiter::{
    accept_trial, acceptance_request, list_trials, send_acceptance, OpenedReply,
};
use cohortex_cluster::Cluster;
use compute_node::recruitment::{seal_contact, Acceptance, ContactKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use market::{ListingId, Purpose};
use testkit::feasibility::*;
use testkit::*;
use tonic::Code;

/// Essential hypertension in ICD-10 and in SNOMED CT.
const HYPERTENSION: &str = "I10,38341003";
const TRIAL: &str = "htn-2027-01";

/// One patient of the first node: key, consent to recruitment, whether the criteria hold.
struct Patient {
    key: SigningKey,
    consents: bool,
    matches: bool,
}

async fn recruitment_cluster() -> (tempfile::TempDir, Cluster, Vec<Patient>) {
    let (setups, _) = setups([None, None, None], 1);
    let truths = patient_truths(&setups[0]);
    let patients = setups[0]
        .vault
        .records()
        .iter()
        .zip(&truths)
        .map(|(record, truth)| {
            let key = setups[0]
                .patients
                .iter()
                .find(|p| {
                    Some(hex::encode(p.key.verifying_key().as_bytes()))
                        == record.patient_key.clone()
                })
                .unwrap()
                .key
                .clone();
            Patient {
                key,
                consents: truth.consents,
                matches: truth.age.is_some_and(|age| age >= 40.0)
                    && truth.codes.iter().any(|code| {
                        HYPERTENSION
                            .split(',')
                            .any(|prefix| code.starts_with(prefix))
                    }),
            }
        })
        .collect();
    let (dir, cluster) = purpose_cluster(setups, Purpose::TrialRecruitment).await;
    (dir, cluster, patients)
}

/// Posts the hypertension trial on every listing; returns the recruiter and its contact key.
async fn post(cluster: &Cluster) -> (cohortex_client::Buyer, ContactKey) {
    let recruiter = buyer(cluster).await;
    let contact = ContactKey::generate(&mut rand::rngs::OsRng);
    let keys = recruiter_keys();
    recruiter
        .post_trial(
            (
                TRIAL,
                "Phase II study of a once-weekly antihypertensive, adults 40 and over.",
            ),
            &contact.public(),
            &keys.secret,
            &keys.evaluation_key,
            &criteria(HYPERTENSION, None),
            &listings(cluster),
            30,
        )
        .await
        .unwrap();
    (recruiter, contact)
}

fn replies_on_ledger(cluster: &Cluster) -> usize {
    let ledger = cluster.coordinator.ledger().lock().unwrap();
    ledger.state().trial(TRIAL).unwrap().replies.len()
}

fn tls(cluster: &Cluster) -> Option<&cohortex_proto::tls::TlsIdentity> {
    Some(cluster.client_tls())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recruiter_opens_only_the_contacts_of_matching_patients_who_accepted() {
    let (_dir, cluster, patients) = recruitment_cluster().await;
    let (recruiter, contact) = post(&cluster).await;
    let (trials, _) = list_trials(&cluster.market_endpoint, tls(&cluster))
        .await
        .unwrap();
    assert_eq!(trials.len(), 1);
    assert_eq!(trials[0].listings.len(), 3);

    let mut matching = patients.iter().filter(|p| p.consents && p.matches);
    let accepts = matching.next().expect("a consenting patient who matches");
    let declines = matching.next().expect("a second one, who does not accept");
    let other = patients
        .iter()
        .find(|p| p.consents && !p.matches)
        .expect("a consenting patient who does not match");
    for (patient, address) in [(accepts, "ana@example.org"), (other, "bo@example.org")] {
        accept_trial(
            &cluster.market_endpoint,
            tls(&cluster),
            &patient.key,
            (TRIAL, "clinic-0"),
            address,
        )
        .await
        .unwrap();
    }

    let keys = recruiter_keys();
    let replies: Vec<OpenedReply> = recruiter
        .trial_replies(TRIAL, &keys.secret, &contact)
        .await
        .unwrap();
    assert_eq!(replies.len(), 2, "one reply per acceptance");
    let opened: Vec<&str> = replies
        .iter()
        .filter_map(|reply| reply.contact.as_deref())
        .collect();
    assert_eq!(
        opened,
        vec!["ana@example.org"],
        "only the matching patient's contact opens"
    );
    assert!(replies.iter().all(|reply| reply.listing == "clinic-0"));

    // The ledger holds the replies' hashes and listings, nothing naming a patient.
    let ledger = cluster.coordinator.ledger().lock().unwrap();
    let record = ledger.state().trial(TRIAL).unwrap();
    assert_eq!(record.replies.len(), 2);
    assert_eq!(
        record.replies_from(&ListingId::new("clinic-0".to_string())),
        2
    );
    let encoded = format!("{record:?}");
    for patient in [accepts, declines, other] {
        let bytes = patient.key.verifying_key().to_bytes();
        let listed = format!("{bytes:?}");
        assert!(
            !encoded.contains(&listed[1..listed.len() - 1]),
            "a patient's key is on the ledger"
        );
        assert!(
            !encoded.contains(&hex::encode(bytes)),
            "a patient's key is on the ledger"
        );
    }
    drop(ledger);
    books_balance(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_without_trial_recruitment_consent_is_refused() {
    let (_dir, cluster, patients) = recruitment_cluster().await;
    let _recruiter = post(&cluster).await;
    let declined = patients
        .iter()
        .find(|p| !p.consents)
        .expect("a patient who did not consent");
    let error = accept_trial(
        &cluster.market_endpoint,
        tls(&cluster),
        &declined.key,
        (TRIAL, "clinic-0"),
        "carl@example.org",
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("trial_recruitment"),
        "the refusal names the missing consent: {error:#}"
    );
    assert_eq!(replies_on_ledger(&cluster), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_acceptance_is_refused_and_recorded_once() {
    let (_dir, cluster, patients) = recruitment_cluster().await;
    let _recruiter = post(&cluster).await;
    let patient = patients.iter().find(|p| p.consents).unwrap();
    let request = acceptance_request(
        &cluster.market_endpoint,
        tls(&cluster),
        &patient.key,
        (TRIAL, "clinic-0"),
        "dee@example.org",
    )
    .await
    .unwrap();
    send_acceptance(&cluster.market_endpoint, tls(&cluster), request.clone())
        .await
        .unwrap();
    let replayed = send_acceptance(&cluster.market_endpoint, tls(&cluster), request)
        .await
        .unwrap_err();
    assert_eq!(
        replayed.code(),
        Code::AlreadyExists,
        "{}",
        replayed.message()
    );
    assert_eq!(replies_on_ledger(&cluster), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_signed_by_another_key_is_refused() {
    let (_dir, cluster, patients) = recruitment_cluster().await;
    let _recruiter = post(&cluster).await;
    let victim = patients.iter().find(|p| p.consents && p.matches).unwrap();
    // Someone who is not the patient signs an acceptance naming the patient's account.
    let forger = SigningKey::generate(&mut rand::rngs::OsRng);
    let (trials, chain_id) = list_trials(&cluster.market_endpoint, tls(&cluster))
        .await
        .unwrap();
    let trial = &trials[0];
    let listing = ListingId::new("clinic-0".to_string());
    let owner = trial
        .listings
        .iter()
        .find(|entry| entry.listing == "clinic-0")
        .unwrap();
    let owner = VerifyingKey::from_bytes(&owner.owner.clone().try_into().unwrap()).unwrap();
    let contact_key: [u8; 32] = trial.contact_key.clone().try_into().unwrap();
    let mut rng = rand::rngs::OsRng;
    let (sealed_contact, psk) = seal_contact(
        "mallory@example.org",
        &contact_key,
        TRIAL,
        &listing,
        &mut rng,
    )
    .unwrap();
    let mut forged = Acceptance::sign(
        &forger,
        &chain_id,
        (TRIAL, &listing),
        sealed_contact,
        &psk,
        market::server::auth::unix_now(),
    );
    forged.patient = victim.key.verifying_key().to_bytes();
    let sealed = forged.seal(&owner, TRIAL, &listing, &mut rng).unwrap();
    let refused = send_acceptance(
        &cluster.market_endpoint,
        tls(&cluster),
        cohortex_proto::v1::AcceptInvitationRequest {
            trial: TRIAL.to_string(),
            listing: "clinic-0".to_string(),
            sealed,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "{}",
        refused.message()
    );
    assert_eq!(replies_on_ledger(&cluster), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_reaches_the_market_without_the_patients_certificate() {
    let (_dir, cluster, patients) = recruitment_cluster().await;
    let _recruiter = post(&cluster).await;
    let patient = patients.iter().find(|p| p.consents).unwrap();
    // A link that presents no client certificate at all: whatever the market learns of the
    // acceptance, it is not a certificate naming the patient.
    let anonymous = cluster.client_tls().without_certificate();
    let channel = cohortex_proto::tls::endpoint(&cluster.market_endpoint, Some(&anonymous))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = acceptance_request(
        &cluster.market_endpoint,
        Some(&anonymous),
        &patient.key,
        (TRIAL, "clinic-0"),
        "eve@example.org",
    )
    .await
    .unwrap();
    cohortex_proto::v1::market_client::MarketClient::new(channel.clone())
        .accept_invitation(request)
        .await
        .expect("the market relays an acceptance made without a certificate");
    assert_eq!(replies_on_ledger(&cluster), 1);

    // Every other call still needs a certificate from the federation's authority.
    let refused = cohortex_proto::v1::ledger_client::LedgerClient::new(channel.clone())
        .get_signed_tree_head(cohortex_proto::v1::GetSignedTreeHeadRequest {})
        .await
        .expect_err("the ledger answered a client without a certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("GetSignedTreeHead"),
        "{refused:?}"
    );
    let refused = cohortex_proto::v1::consent_client::ConsentClient::new(channel)
        .list_consents(cohortex_proto::v1::ListConsentsRequest::default())
        .await
        .expect_err("the consent service answered a client without a certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
