//! The state's change records against the state itself: a varied run of actions, each applied
//! as its own block, whose recorded changes must rebuild the live state at every step.

use super::{BlockContext, State, StateKey};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::tx::{
    AccountId, Action, Compensation, ListingContribution, ListingId, ListingTerms, OrderId,
    PayoutChoice, Purpose, QueryReceipt, ReceiptId, Role, SignedTx, TrialPosting, TxBody, TxId,
    UncheckedTx,
};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

const CHAIN: Hash32 = Hash32([5; 32]);
const START: u64 = 1_700_000_000;
const EPSILON: u64 = 500_000;
const QUERY: Hash32 = Hash32([9; 32]);

/// `State::hash` after [`run_scenario`], computed by the state machine before it was split by
/// component and its change records became a recording map: the encoding is committed in every
/// block header, so it must not move.
const SCENARIO_STATE_HASH: &str =
    "7f23f29039b6a47d0971af5acdebb694953fd2e67451e106e7c6ba54243d41d5";
/// SHA-256 over every `(key, value)` change the scenario emitted, each part length-prefixed,
/// in emission order; computed before the split, like [`SCENARIO_STATE_HASH`].
const SCENARIO_CHANGES_DIGEST: &str =
    "068370436d0ecd874e42b2dc813d9dedd3e89ad0be6dc53b481e7175379072a9";

struct Party {
    key: SigningKey,
    id: AccountId,
    nonce: u64,
}

impl Party {
    fn new(seed: u8) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        Party {
            id: AccountId::of(&key),
            key,
            nonce: 0,
        }
    }
}

/// A state, the rows storage would hold for it, and every change it emitted.
struct Chain {
    state: State,
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    emitted: Vec<(Vec<u8>, Vec<u8>)>,
    height: u64,
    time: u64,
}

impl Chain {
    fn new(issuer: &Party) -> Self {
        let mut chain = Chain {
            state: State::with_accounts([(issuer.id, Role::Issuer)]),
            rows: BTreeMap::new(),
            emitted: Vec::new(),
            height: 0,
            time: START,
        };
        chain.commit();
        chain
    }

    /// Takes the changes and writes them as storage does (an empty value deletes the row),
    /// then checks that the rows rebuild the live state.
    fn commit(&mut self) {
        let changes = self.state.take_changes();
        let keys: Vec<StateKey> = changes
            .iter()
            .map(|(key, _)| postcard::from_bytes(key).expect("a state key"))
            .collect();
        assert!(
            keys.windows(2).all(|pair| pair[0] < pair[1]),
            "changes come once per key, in key order: {keys:?}"
        );
        for (key, value) in &changes {
            if value.is_empty() {
                self.rows.remove(key);
            } else {
                self.rows.insert(key.clone(), value.clone());
            }
        }
        self.emitted.extend(changes);
        let mut rebuilt = self.rebuilt();
        assert_eq!(
            rebuilt.hash(),
            self.state.hash(),
            "the stored rows rebuild the live state at height {}",
            self.height
        );
        assert!(
            rebuilt.take_changes().is_empty(),
            "a state read back from storage has written nothing"
        );
    }

    fn rebuilt(&self) -> State {
        State::from_entries(
            self.rows
                .iter()
                .map(|(key, value)| (key.as_slice(), value.as_slice())),
        )
        .expect("the rows decode")
    }

    fn sign(&self, party: &Party, action: Action) -> SignedTx {
        TxBody {
            chain_id: CHAIN,
            signer: party.id,
            nonce: party.nonce,
            action,
        }
        .sign(&party.key)
        .expect("sign")
    }

    /// Applies `action` signed by `party` as the only transaction of the next block.
    fn submit(&mut self, party: &mut Party, action: Action) -> Result<TxId, TxError> {
        let signed = self.sign(party, action);
        let verified = UncheckedTx::parse(signed.bytes)
            .and_then(UncheckedTx::verify)
            .expect("a well-formed, signed transaction");
        let id = verified.id();
        self.height += 1;
        let ctx = BlockContext {
            height: self.height,
            time: self.time,
        };
        let hash_before = self.state.hash();
        let applied = self.state.apply(&verified, &CHAIN, &ctx);
        match applied {
            Ok(()) => party.nonce += 1,
            Err(_) => {
                assert_eq!(self.state.hash(), hash_before, "a refusal changes nothing");
                assert_eq!(
                    self.state.take_changes(),
                    Vec::<(Vec<u8>, Vec<u8>)>::new(),
                    "a refusal records nothing"
                );
            }
        }
        self.commit();
        applied.map(|()| id)
    }

    fn accept(&mut self, party: &mut Party, action: Action) -> TxId {
        match self.submit(party, action) {
            Ok(id) => id,
            Err(error) => panic!("refused: {error}"),
        }
    }
}

fn terms(price: u64, compensation: Compensation) -> ListingTerms {
    ListingTerms {
        price_per_query: price,
        allowed_purposes: BTreeSet::from([
            Purpose::AcademicResearch,
            Purpose::TrialFeasibility,
            Purpose::TrialRecruitment,
        ]),
        min_cohort_size: 1,
        epsilon_budget_micro: 10_000_000,
        max_epsilon_per_order_micro: 1_000_000,
        compensation,
    }
}

fn grant(patient: &Party, listing: &ListingId, payout: PayoutChoice) -> Action {
    Action::GrantConsent {
        patient: patient.id,
        listing: listing.clone(),
        purpose: Purpose::AcademicResearch,
        expires_at: None,
        payout,
        epsilon_limit_micro: None,
    }
}

fn order(listings: &[&ListingId], expires_at: u64) -> Action {
    Action::OrderQuery {
        query_hash: QUERY,
        listings: listings.iter().map(|id| (*id).clone()).collect(),
        purpose: Purpose::AcademicResearch,
        epsilon_micro: EPSILON,
        expires_at,
    }
}

/// One listing's part of `order`, attested by `owner` over `participants`; with `named`
/// false the part names none (it stands for the staged list the owner attested).
fn part(
    order: OrderId,
    (listing, owner): (&ListingId, &Party),
    index: u8,
    mut participants: Vec<AccountId>,
    named: bool,
) -> ListingContribution {
    participants.sort();
    let mut contribution = ListingContribution {
        listing: listing.clone(),
        epsilon_debited_micro: EPSILON,
        participants,
        capacity: 1000,
        contribution_hash: Hash32([10 + index; 32]),
        attestation: Vec::new(),
    };
    contribution.attest(&owner.key, &CHAIN, &order, &QUERY);
    if !named {
        contribution.participants.clear();
    }
    contribution
}

fn receipt(order: OrderId, listings: Vec<ListingContribution>) -> QueryReceipt {
    QueryReceipt {
        order,
        query_hash: QUERY,
        contributions_root: crate::hash::contributions_root(
            listings.iter().map(|part| &part.contribution_hash),
        ),
        proofs_hash: Hash32([11; 32]),
        result_hash: Hash32([12; 32]),
        listings,
    }
}

fn stage(listing: &ListingId, order: OrderId, mut participants: Vec<AccountId>) -> Action {
    participants.sort();
    Action::StageParticipants {
        order,
        listing: listing.clone(),
        participants,
    }
}

/// Registration (admitted, self-signed and by a first consent), listings, consents, deposits,
/// orders with and without a result key, staging, receipts plain and co-signed, settlement,
/// releases plain and attested, refunds by the committee and by the buyer, a cancellation, a
/// revocation, a trial with a reply, a committee and a withdrawal: every kind of state entry
/// is written, and staged lists are deleted again.
fn run_scenario() -> Chain {
    let mut issuer = Party::new(1);
    let mut node = Party::new(2);
    let mut node_b = Party::new(3);
    let fund = Party::new(4);
    let mut member = Party::new(5);
    let mut buyer = Party::new(6);
    let mut patient_1 = Party::new(7);
    let mut patient_2 = Party::new(8);
    let mut patient_3 = Party::new(9);
    let mut stranger = Party::new(10);
    let mut chain = Chain::new(&issuer);

    for (account, role) in [
        (node.id, Role::ComputeNode),
        (node_b.id, Role::ComputeNode),
        (fund.id, Role::Fund),
        (member.id, Role::CommitteeMember),
    ] {
        chain.accept(&mut issuer, Action::RegisterAccount { account, role });
    }
    for (party, role) in [
        (&mut buyer, Role::Buyer),
        (&mut patient_1, Role::Patient),
        (&mut patient_2, Role::Patient),
    ] {
        let account = party.id;
        chain.accept(party, Action::RegisterAccount { account, role });
    }

    let listing_a = ListingId::new("cohort-a");
    let listing_b = ListingId::new("cohort-b");
    chain.accept(
        &mut node,
        Action::PublishListing {
            listing: listing_a.clone(),
            schema_hash: Hash32([3; 32]),
            terms: terms(1000, Compensation::Payment),
        },
    );
    chain.accept(
        &mut node_b,
        Action::PublishListing {
            listing: listing_b.clone(),
            schema_hash: Hash32([4; 32]),
            terms: terms(1000, Compensation::Donation { fund: fund.id }),
        },
    );
    chain.accept(
        &mut node,
        Action::UpdateListing {
            listing: listing_a.clone(),
            terms: terms(1200, Compensation::Payment),
        },
    );

    let mut limited = grant(&patient_1, &listing_a, PayoutChoice::ToPatient);
    if let Action::GrantConsent {
        epsilon_limit_micro,
        ..
    } = &mut limited
    {
        *epsilon_limit_micro = Some(5_000_000);
    }
    chain.accept(&mut patient_1, limited);
    let action = grant(&patient_1, &listing_b, PayoutChoice::ToPatient);
    chain.accept(&mut patient_1, action);
    let action = grant(
        &patient_2,
        &listing_a,
        PayoutChoice::DonateTo { fund: fund.id },
    );
    chain.accept(&mut patient_2, action);
    // The third patient is registered by their first consent.
    let action = grant(&patient_3, &listing_a, PayoutChoice::ToPatient);
    chain.accept(&mut patient_3, action);
    assert!(chain.state.account(&patient_3.id).is_some());
    // A refused first consent registers no one (`Chain::submit` checks that it records
    // nothing).
    let action = grant(
        &stranger,
        &ListingId::new("no-such-listing"),
        PayoutChoice::ToPatient,
    );
    assert_eq!(
        chain.submit(&mut stranger, action),
        Err(TxError::UnknownListing(ListingId::new("no-such-listing")))
    );
    assert!(chain.state.account(&stranger.id).is_none());

    chain.accept(
        &mut issuer,
        Action::Deposit {
            to: buyer.id,
            amount: 10_000,
        },
    );

    // An order staged and receipted naming none, then settled.
    let first = OrderId(chain.accept(&mut buyer, order(&[&listing_a], START + 3600)));
    let cohort = vec![patient_1.id, patient_2.id];
    chain.accept(&mut member, stage(&listing_a, first, cohort.clone()));
    let parts = vec![part(first, (&listing_a, &node), 0, cohort, false)];
    let first_receipt =
        ReceiptId(chain.accept(&mut member, Action::RecordReceipt(receipt(first, parts))));
    assert!(chain
        .state
        .staged_participants(&first, &listing_a)
        .is_empty());
    chain.accept(
        &mut buyer,
        Action::Settle {
            order: first,
            receipt: first_receipt,
        },
    );

    // An order with a result key, its release attested, then failed by the committee.
    let second = OrderId(chain.accept(
        &mut buyer,
        Action::OrderQueryFor {
            query_hash: QUERY,
            listings: vec![listing_a.clone(), listing_b.clone()],
            purpose: Purpose::AcademicResearch,
            epsilon_micro: EPSILON,
            expires_at: START + 3600,
            result_key: vec![7; 32],
        },
    ));
    chain.accept(&mut member, stage(&listing_a, second, vec![patient_2.id]));
    chain.accept(&mut member, stage(&listing_b, second, vec![patient_1.id]));
    chain.accept(
        &mut member,
        Action::CommitAttestedRelease {
            order: second,
            noise_members: vec![1],
            quorum: vec![1],
            listings: vec![
                part(second, (&listing_a, &node), 0, vec![patient_2.id], false),
                part(second, (&listing_b, &node_b), 1, vec![patient_1.id], false),
            ],
        },
    );
    chain.accept(&mut member, Action::Refund { order: second });

    // An order cancelled by its buyer.
    let third = OrderId(chain.accept(&mut buyer, order(&[&listing_a], START + 3600)));
    chain.accept(&mut buyer, Action::CancelOrder { order: third });

    // An order released, then refunded to its buyer after expiry: everyone whose consent
    // held is debited.
    let fourth = OrderId(chain.accept(&mut buyer, order(&[&listing_a], START + 3600)));
    chain.accept(
        &mut member,
        Action::CommitRelease {
            order: fourth,
            noise_members: vec![1, 2],
            quorum: vec![1, 2],
        },
    );
    chain.time = START + 3600;
    chain.accept(&mut buyer, Action::Refund { order: fourth });

    let revoke = Action::RevokeConsent {
        listing: listing_a.clone(),
        purpose: Purpose::AcademicResearch,
    };
    chain.accept(&mut patient_2, revoke.clone());
    // Revoked twice: the consent is found, but not active (`Chain::submit` checks that the
    // refusal records nothing).
    assert_eq!(
        chain.submit(&mut patient_2, revoke),
        Err(TxError::NoActiveConsent {
            patient: patient_2.id,
            listing: listing_a.clone(),
            purpose: Purpose::AcademicResearch,
        })
    );

    // A trial and one attested reply.
    let trial = "trial-1";
    chain.accept(
        &mut buyer,
        Action::PostTrial(TrialPosting {
            trial: trial.to_string(),
            summary: "a study of the scenario".to_string(),
            contact_key: [13; 32],
            evaluation_key: [14; 32],
            criteria: vec![1, 2, 3],
            listings: vec![listing_a.clone()],
            expires_at: chain.time + 86_400,
        }),
    );
    let reply_hash = Hash32([15; 32]);
    let digest = crate::tx::trial_reply_digest(&CHAIN, trial, &listing_a, &reply_hash);
    chain.accept(
        &mut member,
        Action::RecordTrialReply {
            trial: trial.to_string(),
            listing: listing_a.clone(),
            reply_hash,
            attestation: node.key.sign(digest.as_bytes()).to_bytes().to_vec(),
        },
    );

    // A committee, then a co-signed receipt settled by a member.
    chain.accept(
        &mut issuer,
        Action::RegisterCommittee {
            threshold: 2,
            members: vec![node.id, node_b.id],
        },
    );
    let fifth = OrderId(chain.accept(&mut buyer, order(&[&listing_a], chain.time + 3600)));
    let cosigned = receipt(
        fifth,
        vec![part(
            fifth,
            (&listing_a, &node),
            0,
            vec![patient_1.id, patient_3.id],
            true,
        )],
    );
    let cosignatures = vec![
        cosigned.cosign(1, &node.key, &CHAIN),
        cosigned.cosign(2, &node_b.key, &CHAIN),
    ];
    let fifth_receipt = ReceiptId(chain.accept(
        &mut member,
        Action::RecordCosignedReceipt {
            receipt: cosigned,
            cosignatures,
        },
    ));
    chain.accept(
        &mut member,
        Action::Settle {
            order: fifth,
            receipt: fifth_receipt,
        },
    );

    chain.accept(
        &mut node_b,
        Action::WithdrawListing {
            listing: listing_b.clone(),
        },
    );
    chain
}

#[test]
fn recorded_changes_rebuild_the_live_state_after_every_action() {
    let chain = run_scenario();
    let kinds: BTreeSet<String> = chain
        .emitted
        .iter()
        .map(|(key, _)| {
            let key: StateKey = postcard::from_bytes(key).expect("a state key");
            let name = format!("{key:?}");
            name.split('(').next().unwrap_or_default().to_string()
        })
        .collect();
    let every_kind = [
        "Account",
        "AttestedRelease",
        "Committee",
        "Consent",
        "Listing",
        "Order",
        "PersonalSpent",
        "Receipt",
        "Release",
        "ResultKey",
        "Staged",
        "TotalIssued",
        "Trial",
    ];
    assert_eq!(
        kinds,
        every_kind.iter().map(|kind| kind.to_string()).collect(),
        "the scenario writes every kind of entry"
    );
    assert!(
        chain.emitted.iter().any(|(_, value)| value.is_empty()),
        "the scenario deletes entries (staged lists)"
    );
    assert!(
        chain.rows.len() < chain.emitted.len(),
        "entries are written more than once"
    );
}

#[test]
fn refused_consent_that_would_register_its_signer_records_nothing() {
    let mut issuer = Party::new(1);
    let mut node = Party::new(2);
    let mut newcomer = Party::new(7);
    let mut chain = Chain::new(&issuer);
    chain.accept(
        &mut issuer,
        Action::RegisterAccount {
            account: node.id,
            role: Role::ComputeNode,
        },
    );
    let listing = ListingId::new("cohort-a");
    chain.accept(
        &mut node,
        Action::PublishListing {
            listing: listing.clone(),
            schema_hash: Hash32([3; 32]),
            terms: terms(1000, Compensation::Payment),
        },
    );
    // Refused after the signer was registered for it: the purpose is not allowed.
    let mut refused = grant(&newcomer, &listing, PayoutChoice::ToPatient);
    if let Action::GrantConsent { purpose, .. } = &mut refused {
        *purpose = Purpose::CommercialResearch;
    }
    let signed = chain.sign(&newcomer, refused);
    let verified = UncheckedTx::parse(signed.bytes)
        .and_then(UncheckedTx::verify)
        .expect("signed");
    let ctx = BlockContext {
        height: 9,
        time: START,
    };
    let hash_before = chain.state.hash();
    assert_eq!(
        chain.state.apply(&verified, &CHAIN, &ctx),
        Err(TxError::PurposeNotAllowed {
            listing: listing.clone(),
            purpose: Purpose::CommercialResearch,
        })
    );
    assert!(chain.state.account(&newcomer.id).is_none());
    assert_eq!(chain.state.hash(), hash_before);
    assert_eq!(
        chain.state.take_changes(),
        Vec::<(Vec<u8>, Vec<u8>)>::new(),
        "neither the account nor its removal is written"
    );

    // The same consent, allowed, registers the signer and writes both entries.
    let action = grant(&newcomer, &listing, PayoutChoice::ToPatient);
    chain.accept(&mut newcomer, action);
    let written: Vec<StateKey> = chain
        .emitted
        .iter()
        .rev()
        .take(2)
        .map(|(key, _)| postcard::from_bytes(key).expect("a state key"))
        .collect();
    assert_eq!(
        written,
        vec![
            StateKey::Consent(newcomer.id, listing, Purpose::AcademicResearch),
            StateKey::Account(newcomer.id),
        ]
    );
}

#[test]
fn state_hash_and_changes_are_those_before_the_split() {
    let chain = run_scenario();
    let mut digest = Sha256::new();
    for (key, value) in &chain.emitted {
        for part in [key, value] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    assert_eq!(chain.state.hash().to_hex(), SCENARIO_STATE_HASH);
    assert_eq!(hex::encode(digest.finalize()), SCENARIO_CHANGES_DIGEST);
}
