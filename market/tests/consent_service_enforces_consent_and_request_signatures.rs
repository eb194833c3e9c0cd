//! The Consent service over real gRPC on loopback: patients register, grant and revoke, and
//! the current consents a compute node reads follow each step (and expiry); RPCs refuse
//! envelopes carrying another action; the List calls need a fresh request signature from the
//! right account, and bytes the signature does not cover are refused; earnings split payments
//! and donations as the payout rule says; refusals quote at most an excerpt of huge inputs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cohortex_proto::v1;
use cohortex_proto::v1::consent_client::ConsentClient;
use cohortex_proto::v1::ledger_client::LedgerClient;
use common::{
    grant_action, order_action, raw_grpc, receipt_action, terms, Fixture, Party, START_TIME,
};
use market::server::auth::{signed_request, signed_request_with, unix_now, ACCOUNT};
use market::server::consent::{LIST_CONSENTS, LIST_CURRENT_CONSENTS, LIST_EARNINGS};
use market::server::{serve_ledger_and_consent, ServeError};
use market::{
    AccountId, Action, Compensation, Hash32, ListingId, OrderId, PayoutChoice, Purpose, ReceiptId,
    Role, TxBody, TxId,
};
use prost::Message;
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

/// Clients of a served ledger, and the chain they sign for.
struct Clients {
    chain_id: Hash32,
    ledger: LedgerClient<Channel>,
    consent: ConsentClient<Channel>,
}

impl Clients {
    fn envelope(&self, party: &Party, action: Action) -> v1::SignedTransaction {
        let body = TxBody {
            chain_id: self.chain_id,
            signer: party.id,
            nonce: party.nonce,
            action,
        };
        v1::SignedTransaction {
            envelope: body.sign(&party.key).unwrap().bytes,
        }
    }

    /// Submits through the Ledger service; must be accepted. Advances the nonce.
    async fn submit(&mut self, party: &mut Party, action: Action) -> TxId {
        let envelope = self.envelope(party, action);
        let result = self
            .ledger
            .submit_transaction(envelope)
            .await
            .unwrap()
            .into_inner();
        party.nonce += 1;
        TxId(Hash32(result.tx_id.try_into().unwrap()))
    }

    /// Grants through the Consent service; must be accepted. Advances the nonce.
    async fn grant(&mut self, patient: &mut Party, action: Action) -> v1::TransactionResult {
        let envelope = self.envelope(patient, action);
        let result = self.consent.grant(envelope).await.unwrap().into_inner();
        patient.nonce += 1;
        result
    }

    async fn consents_of(&mut self, patient: &Party) -> v1::ListConsentsResponse {
        let request = signed_request(&patient.key, LIST_CONSENTS, list_consents_of(patient));
        self.consent
            .list_consents(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn earnings_of(&mut self, patient: &Party) -> v1::Earnings {
        let request = v1::ListEarningsRequest {
            patient: patient.id.0.to_vec(),
        };
        self.consent
            .list_earnings(signed_request(&patient.key, LIST_EARNINGS, request))
            .await
            .unwrap()
            .into_inner()
    }
}

/// A ledger in a temporary directory served on an ephemeral loopback port, with a compute
/// node (admitted by the issuer) that has published one listing.
struct Served {
    net: Clients,
    endpoint: String,
    clock: Arc<AtomicU64>,
    issuer: Party,
    node: Party,
    listing: ListingId,
    rng: ChaCha20Rng,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
    /// The served ledger itself, for what only the Market service places (listings, orders).
    ledger: Arc<Mutex<market::Ledger>>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Appends `action`, signed by `party`, as the Market service would after its own checks
    /// (the Ledger service takes no listings or orders directly). Advances the nonce.
    fn place_through_market(&self, party: &mut Party, action: Action) -> TxId {
        let envelope = self.net.envelope(party, action).envelope;
        let outcome = self
            .ledger
            .lock()
            .unwrap()
            .append(vec![envelope.clone()])
            .unwrap();
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
        party.nonce += 1;
        market::tx::txid_of(&envelope)
    }

    async fn start() -> Self {
        let Fixture {
            ledger,
            issuer,
            mut rng,
            dir,
            clock,
            ledger_key: _,
        } = Fixture::new();
        let chain_id = ledger.chain_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        let ledger = Arc::new(Mutex::new(ledger));
        let task = tokio::spawn(serve_ledger_and_consent(
            Arc::clone(&ledger),
            listener,
            async {
                let _ = stop.await;
            },
        ));
        let node = Party::new(&mut rng);
        let net = Clients {
            chain_id,
            ledger: LedgerClient::connect(endpoint.clone()).await.unwrap(),
            consent: ConsentClient::connect(endpoint.clone()).await.unwrap(),
        };
        let mut served = Served {
            net,
            endpoint,
            clock,
            issuer,
            node,
            listing: ListingId::new("diabetes-cohort"),
            rng,
            shutdown,
            task,
            ledger,
            _dir: dir,
        };
        served.admit(served.node.id, Role::ComputeNode).await;
        let publish = Action::PublishListing {
            listing: served.listing.clone(),
            schema_hash: Hash32([3; 32]),
            terms: terms(1000, Compensation::Payment),
        };
        let mut node = std::mem::replace(&mut served.node, Party::new(&mut served.rng));
        served.place_through_market(&mut node, publish);
        served.node = node;
        served
    }

    /// The issuer admits `account` with a privileged `role`.
    async fn admit(&mut self, account: AccountId, role: Role) {
        let register = Action::RegisterAccount { account, role };
        self.net.submit(&mut self.issuer, register).await;
    }

    /// A new patient, registered through the Consent service.
    async fn register_patient(&mut self) -> Party {
        let mut patient = Party::new(&mut self.rng);
        let register = Action::RegisterAccount {
            account: patient.id,
            role: Role::Patient,
        };
        let envelope = self.net.envelope(&patient, register);
        let result = self
            .net
            .consent
            .register(envelope)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(result.tx_id.len(), 32);
        patient.nonce += 1;
        patient
    }

    /// The patients consenting now to the listing for `purpose`, asked by the compute node.
    async fn current(&mut self, purpose: &str) -> (Vec<AccountId>, u64) {
        let request = v1::ListCurrentConsentsRequest {
            listing: self.listing.0.clone(),
            purpose: purpose.into(),
            epsilon_micro: 0,
        };
        let request = signed_request(&self.node.key, LIST_CURRENT_CONSENTS, request);
        let answer = self
            .net
            .consent
            .list_current_consents(request)
            .await
            .unwrap()
            .into_inner();
        let patients = answer
            .patients
            .into_iter()
            .map(|p| AccountId(p.try_into().unwrap()))
            .collect();
        (patients, answer.height)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn list_consents_of(patient: &Party) -> v1::ListConsentsRequest {
    v1::ListConsentsRequest {
        patient: patient.id.0.to_vec(),
    }
}

#[tokio::test]
async fn patient_registers_grants_and_revokes_and_current_consents_follow_each_step() {
    let mut served = Served::start().await;
    let (nobody, height_before) = served.current("academic_research").await;
    assert!(nobody.is_empty());

    let mut first = served.register_patient().await;
    let mut second = served.register_patient().await;
    let (still_nobody, _) = served.current("academic_research").await;
    assert!(still_nobody.is_empty(), "registering is not consenting");

    let action = grant_action(&first, &served.listing, PayoutChoice::ToPatient);
    let granted = served.net.grant(&mut first, action).await;
    let (after_one, height) = served.current("academic_research").await;
    assert_eq!(after_one, vec![first.id]);
    assert_eq!(height, granted.height);
    assert_eq!(height, height_before + 3, "two registrations and a grant");

    let action = grant_action(&second, &served.listing, PayoutChoice::ToPatient);
    served.net.grant(&mut second, action).await;
    let (after_two, _) = served.current("academic_research").await;
    let mut ascending = vec![first.id, second.id];
    ascending.sort();
    assert_eq!(after_two, ascending);
    let (other_purpose, _) = served.current("trial_feasibility").await;
    assert!(other_purpose.is_empty(), "consent is per purpose");

    let revoke = Action::RevokeConsent {
        listing: served.listing.clone(),
        purpose: Purpose::AcademicResearch,
    };
    let revoked = served
        .net
        .consent
        .revoke(served.net.envelope(&first, revoke))
        .await
        .unwrap()
        .into_inner();
    first.nonce += 1;
    let (after_revoke, height) = served.current("academic_research").await;
    assert_eq!(after_revoke, vec![second.id]);
    assert_eq!(height, revoked.height);

    let own = served.net.consents_of(&first).await;
    assert_eq!(own.height, revoked.height);
    assert_eq!(own.consents.len(), 1);
    let record = &own.consents[0];
    assert_eq!(record.listing, "diabetes-cohort");
    assert_eq!(record.purpose, "academic_research");
    assert!(!record.active);
    assert_eq!(record.granted_at, START_TIME);
    assert_eq!(record.revoked_at, Some(START_TIME));
    assert_eq!(record.expires_at, 0);
    assert!(record.donate_to.is_empty());
    let own = served.net.consents_of(&second).await;
    assert!(own.consents[0].active);
    assert_eq!(own.consents[0].revoked_at, None);
    served.stop().await;
}

#[tokio::test]
async fn consent_past_its_expiry_leaves_current_consents_at_the_next_block() {
    let mut served = Served::start().await;
    let mut patient = served.register_patient().await;
    let fund = Party::new(&mut served.rng);
    served.admit(fund.id, Role::Fund).await;
    let grant = Action::GrantConsent {
        patient: patient.id,
        listing: served.listing.clone(),
        purpose: Purpose::TrialFeasibility,
        expires_at: Some(START_TIME + 60),
        payout: PayoutChoice::DonateTo { fund: fund.id },
        epsilon_limit_micro: None,
    };
    served.net.grant(&mut patient, grant).await;
    let (holding, _) = served.current("trial_feasibility").await;
    assert_eq!(holding, vec![patient.id]);

    // Time passes, but the answer is read at the last block's time until a block is made.
    served.clock.store(START_TIME + 61, Ordering::SeqCst);
    let (before_block, _) = served.current("trial_feasibility").await;
    assert_eq!(before_block, vec![patient.id]);
    served.register_patient().await;
    let (expired, _) = served.current("trial_feasibility").await;
    assert!(expired.is_empty());

    let own = served.net.consents_of(&patient).await;
    let record = &own.consents[0];
    assert_eq!(record.purpose, "trial_feasibility");
    assert!(!record.active);
    assert_eq!(record.expires_at, START_TIME + 60);
    assert_eq!(record.revoked_at, None);
    assert_eq!(record.donate_to, fund.id.0.to_vec());
    served.stop().await;
}

#[tokio::test]
async fn grant_rpc_carrying_a_deposit_is_invalid_argument() {
    let mut served = Served::start().await;
    let patient = served.register_patient().await;
    let head_before = served
        .net
        .ledger
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let deposit = Action::Deposit {
        to: patient.id,
        amount: 1_000_000,
    };
    let refused = served
        .net
        .consent
        .grant(served.net.envelope(&served.issuer, deposit))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("envelope"), "{refused:?}");
    assert!(refused.message().contains("GrantConsent"), "{refused:?}");

    // Register and Revoke refuse other actions in the same way.
    let grant = grant_action(&patient, &served.listing, PayoutChoice::ToPatient);
    let as_register = served
        .net
        .consent
        .register(served.net.envelope(&patient, grant.clone()))
        .await
        .unwrap_err();
    assert_eq!(as_register.code(), Code::InvalidArgument, "{as_register:?}");
    let as_revoke = served
        .net
        .consent
        .revoke(served.net.envelope(&patient, grant))
        .await
        .unwrap_err();
    assert_eq!(as_revoke.code(), Code::InvalidArgument, "{as_revoke:?}");
    let buyer = Party::new(&mut served.rng);
    let register_buyer = Action::RegisterAccount {
        account: buyer.id,
        role: Role::Buyer,
    };
    let buyer_via_consent = served
        .net
        .consent
        .register(served.net.envelope(&buyer, register_buyer))
        .await
        .unwrap_err();
    assert_eq!(buyer_via_consent.code(), Code::InvalidArgument);

    // Nothing reached the ledger.
    let head_after = served
        .net
        .ledger
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(head_after, head_before);
    let balance = served
        .net
        .ledger
        .get_balance(v1::GetBalanceRequest {
            account: patient.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.available, 0);
    served.stop().await;
}

#[tokio::test]
async fn consent_transactions_breaking_ledger_rules_get_their_status_codes() {
    let mut served = Served::start().await;
    let first = served.register_patient().await;
    let second = served.register_patient().await;

    // Consent for `first`, signed by `second`.
    let for_first = grant_action(&first, &served.listing, PayoutChoice::ToPatient);
    let not_by_patient = served
        .net
        .consent
        .grant(served.net.envelope(&second, for_first))
        .await
        .unwrap_err();
    assert_eq!(not_by_patient.code(), Code::PermissionDenied);

    // Revoking a consent never granted.
    let revoke = Action::RevokeConsent {
        listing: served.listing.clone(),
        purpose: Purpose::AcademicResearch,
    };
    let nothing_to_revoke = served
        .net
        .consent
        .revoke(served.net.envelope(&first, revoke))
        .await
        .unwrap_err();
    assert_eq!(nothing_to_revoke.code(), Code::FailedPrecondition);

    // A purpose the listing does not allow.
    let commercial = Action::GrantConsent {
        patient: first.id,
        listing: served.listing.clone(),
        purpose: Purpose::CommercialResearch,
        expires_at: None,
        payout: PayoutChoice::ToPatient,
        epsilon_limit_micro: None,
    };
    let not_allowed = served
        .net
        .consent
        .grant(served.net.envelope(&first, commercial))
        .await
        .unwrap_err();
    assert_eq!(not_allowed.code(), Code::FailedPrecondition);

    // A listing that does not exist.
    let unknown = Action::GrantConsent {
        patient: first.id,
        listing: ListingId::new("no-such-listing"),
        purpose: Purpose::AcademicResearch,
        expires_at: None,
        payout: PayoutChoice::ToPatient,
        epsilon_limit_micro: None,
    };
    let unknown = served
        .net
        .consent
        .grant(served.net.envelope(&first, unknown))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn forged_request_signature_is_unauthenticated() {
    let mut served = Served::start().await;
    let patient = served.register_patient().await;
    let impostor = served.register_patient().await;

    // Signed by the impostor, claiming to be the patient.
    let mut forged = signed_request(&impostor.key, LIST_CONSENTS, list_consents_of(&patient));
    let claimed = hex::encode(patient.id.0).parse().unwrap();
    forged.metadata_mut().insert(ACCOUNT, claimed);
    let status = served.net.consent.list_consents(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Signed by the patient, then the message changed on the way to ask for the impostor's
    // consents: refused before the signature is even checked, since the claimed caller may
    // read only its own (a changed byte the signature covers is `request_bytes_…` below).
    let mut altered = signed_request(&patient.key, LIST_CONSENTS, list_consents_of(&patient));
    altered.get_mut().patient = impostor.id.0.to_vec();
    let status = served.net.consent.list_consents(altered).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Signed for another method.
    let other_method = signed_request(&patient.key, LIST_EARNINGS, list_consents_of(&patient));
    let status = served
        .net
        .consent
        .list_consents(other_method)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Not signed at all.
    let unsigned = tonic::Request::new(list_consents_of(&patient));
    let status = served
        .net
        .consent
        .list_consents(unsigned)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Signed properly: accepted.
    served.net.consents_of(&patient).await;
    served.stop().await;
}

#[tokio::test]
async fn replayed_request_is_unauthenticated() {
    let mut served = Served::start().await;
    let patient = served.register_patient().await;
    let nonce = [7u8; 16];
    let now = unix_now();
    let first = signed_request_with(
        &patient.key,
        LIST_CONSENTS,
        list_consents_of(&patient),
        now,
        nonce,
    );
    served.net.consent.list_consents(first).await.unwrap();
    let replay = signed_request_with(
        &patient.key,
        LIST_CONSENTS,
        list_consents_of(&patient),
        now,
        nonce,
    );
    let status = served.net.consent.list_consents(replay).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("replayed"), "{status:?}");

    // A request signed long ago is refused even with a fresh nonce.
    let stale = signed_request_with(
        &patient.key,
        LIST_CONSENTS,
        list_consents_of(&patient),
        now - 3600,
        [8u8; 16],
    );
    let status = served.net.consent.list_consents(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    served.stop().await;
}

#[tokio::test]
async fn request_bytes_the_signature_does_not_cover_are_refused() {
    let served = Served::start().await;
    let message = v1::ListCurrentConsentsRequest {
        listing: served.listing.0.clone(),
        purpose: "academic_research".into(),
        epsilon_micro: 0,
    };
    let signed = signed_request(&served.node.key, LIST_CURRENT_CONSENTS, message);
    let metadata = signed.metadata().clone();
    let signed_bytes = signed.get_ref().encode_to_vec();
    // Bytes that prost decodes to the signed message, so that a signature over its
    // re-encoding would verify: an unknown field 15 (varint 1) appended, and the listing
    // field (2, length-delimited) repeated with the same value.
    let unknown_field = [signed_bytes.clone(), vec![15 << 3, 1]].concat();
    let mut repeated_listing = signed_bytes.clone();
    repeated_listing.extend([(1 << 3) | 2, served.listing.0.len() as u8]);
    repeated_listing.extend(served.listing.0.as_bytes());
    for (case, bytes) in [
        ("unknown field", unknown_field),
        ("repeated field", repeated_listing),
    ] {
        let decoded = v1::ListCurrentConsentsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            &decoded,
            signed.get_ref(),
            "{case}: prost reads the signed message"
        );
        let refused = raw_grpc::call(
            served.channel().await,
            LIST_CURRENT_CONSENTS,
            bytes,
            metadata.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{case}: {refused:?}");
        assert!(refused.message().contains("canonical"), "{refused:?}");
    }
    // The signed bytes themselves, with the same metadata (its nonce was not used up by the
    // refusals), are served.
    let answer = raw_grpc::call(
        served.channel().await,
        LIST_CURRENT_CONSENTS,
        signed_bytes,
        metadata,
    )
    .await
    .unwrap();
    let answer = v1::ListCurrentConsentsResponse::decode(answer.as_slice()).unwrap();
    assert!(answer.patients.is_empty());
    served.stop().await;
}

#[tokio::test]
async fn seven_mib_purpose_is_refused_with_a_short_message() {
    let mut served = Served::start().await;
    let message = v1::ListCurrentConsentsRequest {
        listing: served.listing.0.clone(),
        purpose: "p".repeat(7 << 20),
        epsilon_micro: 0,
    };
    let signed = signed_request(&served.node.key, LIST_CURRENT_CONSENTS, message);
    let status = served
        .net
        .consent
        .list_current_consents(signed)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status.code());
    assert!(
        status.message().len() < 300,
        "{} bytes",
        status.message().len()
    );
    assert!(status.message().starts_with("purpose must be one of"));
    assert!(status.message().contains("(7340032 bytes)"), "{status:?}");
    served.stop().await;
}

#[tokio::test]
async fn consent_to_a_megabyte_listing_id_is_refused_with_a_short_message() {
    let mut served = Served::start().await;
    let patient = served.register_patient().await;
    let huge = ListingId::new("l".repeat(3 << 20));
    let grant = grant_action(&patient, &huge, PayoutChoice::ToPatient);
    let envelope = served.net.envelope(&patient, grant);
    let status = served.net.consent.grant(envelope).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{:?}", status.code());
    assert!(
        status.message().len() < 300,
        "{} bytes",
        status.message().len()
    );
    assert!(status.message().starts_with("unknown listing lll"));
    served.stop().await;
}

#[tokio::test]
async fn patient_may_not_read_another_patients_consents_or_earnings() {
    let mut served = Served::start().await;
    let patient = served.register_patient().await;
    let other = served.register_patient().await;
    let consents = signed_request(&other.key, LIST_CONSENTS, list_consents_of(&patient));
    let status = served
        .net
        .consent
        .list_consents(consents)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let earnings = v1::ListEarningsRequest {
        patient: patient.id.0.to_vec(),
    };
    let earnings = signed_request(&other.key, LIST_EARNINGS, earnings);
    let status = served
        .net
        .consent
        .list_earnings(earnings)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    served.stop().await;
}

#[tokio::test]
async fn current_consents_need_a_registered_caller_and_well_formed_fields() {
    let mut served = Served::start().await;
    let request = |listing: &str, purpose: &str| v1::ListCurrentConsentsRequest {
        listing: listing.into(),
        purpose: purpose.into(),
        epsilon_micro: 0,
    };
    let stranger = Party::new(&mut served.rng);
    let unregistered = signed_request(
        &stranger.key,
        LIST_CURRENT_CONSENTS,
        request("diabetes-cohort", "academic_research"),
    );
    let status = served
        .net
        .consent
        .list_current_consents(unregistered)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let node = served.node.key.clone();
    let cases = [
        (
            request("diabetes-cohort", "marketing"),
            Code::InvalidArgument,
            "purpose",
        ),
        (
            request("", "academic_research"),
            Code::InvalidArgument,
            "listing",
        ),
        (
            request("other-cohort", "academic_research"),
            Code::NotFound,
            "other-cohort",
        ),
    ];
    for (message, code, named) in cases {
        let signed = signed_request(&node, LIST_CURRENT_CONSENTS, message);
        let status = served
            .net
            .consent
            .list_current_consents(signed)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(named), "{status:?}");
    }
    served.stop().await;
}

#[tokio::test]
async fn earnings_split_payments_and_donations_of_settled_queries() {
    let mut served = Served::start().await;
    let fund = Party::new(&mut served.rng);
    served.admit(fund.id, Role::Fund).await;
    let mut committee = Party::new(&mut served.rng);
    served.admit(committee.id, Role::CommitteeMember).await;
    let mut buyer = Party::new(&mut served.rng);
    let register = Action::RegisterAccount {
        account: buyer.id,
        role: Role::Buyer,
    };
    served.net.submit(&mut buyer, register).await;
    let deposit = Action::Deposit {
        to: buyer.id,
        amount: 5000,
    };
    served.net.submit(&mut served.issuer, deposit).await;

    // Two patients are paid, the third donates to the fund.
    let mut patients = Vec::new();
    for payout in [
        PayoutChoice::ToPatient,
        PayoutChoice::ToPatient,
        PayoutChoice::DonateTo { fund: fund.id },
    ] {
        let mut patient = served.register_patient().await;
        let action = grant_action(&patient, &served.listing, payout);
        served.net.grant(&mut patient, action).await;
        patients.push(patient);
    }

    let order = order_action(std::slice::from_ref(&served.listing), START_TIME + 3600);
    let order = OrderId(served.place_through_market(&mut buyer, order));
    // The committee records the participants the compute node reads at compute time.
    let (participants, _) = served.current("academic_research").await;
    assert_eq!(participants.len(), 3);
    let receipt = receipt_action(
        served.net.chain_id,
        order,
        vec![(served.listing.clone(), &served.node, participants)],
    );
    let receipt = ReceiptId(served.net.submit(&mut committee, receipt).await);
    let before_settlement = served.net.earnings_of(&patients[0]).await;
    assert_eq!((before_settlement.paid, before_settlement.donated), (0, 0));
    served
        .net
        .submit(&mut buyer, Action::Settle { order, receipt })
        .await;

    // Price 1000 among 3 participants: 333 each, 1 back to the buyer.
    for paid in &patients[..2] {
        let earnings = served.net.earnings_of(paid).await;
        assert_eq!(
            (earnings.balance, earnings.paid, earnings.donated),
            (333, 333, 0)
        );
    }
    let earnings = served.net.earnings_of(&patients[2]).await;
    assert_eq!(
        (earnings.balance, earnings.paid, earnings.donated),
        (0, 0, 333)
    );
    for (account, expected) in [(fund.id, 333), (buyer.id, 5000 - 1000 + 1)] {
        let balance = served
            .net
            .ledger
            .get_balance(v1::GetBalanceRequest {
                account: account.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(balance.available, expected);
    }
    served.stop().await;
}
