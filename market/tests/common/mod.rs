//! Shared fixture for the market integration tests: a ledger in a temporary directory with a
//! manual clock, deterministic keys, and helpers that sign and submit transactions.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use market::state::BlockContext;
use market::tx::UncheckedTx;
use market::{
    AccountId, Action, Compensation, Genesis, Hash32, InProcessSequencer, Ledger, ListingId,
    ListingTerms, OrderId, PayoutChoice, Purpose, Role, TxBody, TxError, TxId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Block time at the start of every test.
pub const START_TIME: u64 = 1_700_000_000;

/// A key holder and the nonce of its next transaction.
pub struct Party {
    pub key: SigningKey,
    pub id: AccountId,
    pub nonce: u64,
}

impl Party {
    pub fn new(rng: &mut ChaCha20Rng) -> Self {
        let key = SigningKey::generate(rng);
        Party {
            id: AccountId::of(&key),
            key,
            nonce: 0,
        }
    }
}

pub struct Fixture {
    pub ledger: Ledger,
    pub issuer: Party,
    pub clock: Arc<AtomicU64>,
    pub rng: ChaCha20Rng,
    pub dir: tempfile::TempDir,
    pub ledger_key: SigningKey,
}

pub fn ledger_sequencer(key: &SigningKey, clock: &Arc<AtomicU64>) -> InProcessSequencer {
    let clock = Arc::clone(clock);
    InProcessSequencer::with_clock(key.clone(), Box::new(move || clock.load(Ordering::SeqCst)))
}

impl Fixture {
    pub fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let ledger_key = SigningKey::generate(&mut rng);
        let issuer = Party::new(&mut rng);
        let genesis = Genesis {
            name: "cohortex-test".into(),
            ledger_key: ledger_key.verifying_key().to_bytes(),
            accounts: vec![(issuer.id, Role::Issuer)],
        };
        let clock = Arc::new(AtomicU64::new(START_TIME));
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::create(
            dir.path().join("ledger.db"),
            genesis,
            ledger_sequencer(&ledger_key, &clock),
        )
        .expect("create ledger");
        Fixture {
            ledger,
            issuer,
            clock,
            rng,
            dir,
            ledger_key,
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn advance(&self, seconds: u64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    /// Signs `action` as `party` with its current nonce (the nonce is not advanced).
    pub fn sign(&self, party: &Party, action: Action) -> Vec<u8> {
        TxBody {
            chain_id: self.ledger.chain_id(),
            signer: party.id,
            nonce: party.nonce,
            action,
        }
        .sign(&party.key)
        .expect("sign")
        .bytes
    }

    /// Appends one transaction as its own block. On success advances the party's nonce.
    pub fn submit(&mut self, party: &mut Party, action: Action) -> Result<TxId, TxError> {
        let bytes = self.sign(party, action);
        let txid = market::tx::txid_of(&bytes);
        self.submit_bytes(bytes)?;
        party.nonce += 1;
        Ok(txid)
    }

    /// Appends raw transaction bytes as one block.
    pub fn submit_bytes(&mut self, bytes: Vec<u8>) -> Result<(), TxError> {
        let outcome = self.ledger.append(vec![bytes]).expect("append");
        match outcome.refused.into_iter().next() {
            Some(refusal) => Err(refusal.error),
            None => {
                assert!(
                    outcome.head.is_some(),
                    "an accepted transaction makes a block"
                );
                Ok(())
            }
        }
    }

    /// Submits a transaction that must be refused with `expected`, and checks that neither the
    /// state rules (applied directly to a copy of the state) nor the ledger changed anything.
    pub fn refuse(&mut self, party: &Party, action: Action, expected: TxError) {
        let bytes = self.sign(party, action);
        self.refuse_bytes(bytes, expected);
    }

    pub fn refuse_bytes(&mut self, bytes: Vec<u8>, expected: TxError) {
        let state_before = self.ledger.state().hash();
        let head_before = self.ledger.head().cloned();
        let balances_before: Vec<(AccountId, u64)> = self
            .ledger
            .state()
            .accounts()
            .map(|(id, a)| (*id, a.balance))
            .collect();

        // The state rule alone: apply to a copy and compare hashes.
        if let Ok(verified) = UncheckedTx::parse(bytes.clone()).and_then(UncheckedTx::verify) {
            let mut copy = self.ledger.state().clone();
            let ctx = BlockContext {
                height: self.ledger.machine().height() + 1,
                time: self.now().max(self.ledger.machine().last_time()),
            };
            let result = copy.apply(&verified, &self.ledger.chain_id(), &ctx);
            assert_eq!(result, Err(expected.clone()), "state rule");
            assert_eq!(
                copy.hash(),
                state_before,
                "a refused transaction leaves the state unchanged"
            );
        }

        // Through the ledger.
        let result = self.submit_bytes(bytes);
        assert_eq!(result, Err(expected), "ledger refusal");
        assert_eq!(self.ledger.state().hash(), state_before, "state unchanged");
        assert_eq!(
            self.ledger.head().cloned(),
            head_before,
            "no block appended"
        );
        let balances_after: Vec<(AccountId, u64)> = self
            .ledger
            .state()
            .accounts()
            .map(|(id, a)| (*id, a.balance))
            .collect();
        assert_eq!(balances_after, balances_before, "balances unchanged");
    }

    /// A new party registered with `role` (self-registered or admitted by the issuer).
    pub fn register(&mut self, role: Role) -> Party {
        let mut party = Party::new(&mut self.rng);
        let action = Action::RegisterAccount {
            account: party.id,
            role,
        };
        match role {
            Role::Patient | Role::Buyer => {
                self.submit(&mut party, action).expect("self registration");
            }
            _ => {
                self.as_issuer(action).expect("admission");
            }
        }
        party
    }

    /// Submits `action` signed by the genesis issuer.
    pub fn as_issuer(&mut self, action: Action) -> Result<TxId, TxError> {
        let bytes = self.sign(&self.issuer, action);
        let txid = market::tx::txid_of(&bytes);
        self.submit_bytes(bytes)?;
        self.issuer.nonce += 1;
        Ok(txid)
    }

    pub fn deposit(&mut self, to: &Party, amount: u64) {
        self.as_issuer(Action::Deposit { to: to.id, amount })
            .expect("deposit");
    }

    pub fn conserved(&self) -> bool {
        let state = self.ledger.state();
        state.total_balances() + state.escrow_held() == u128::from(state.total_issued())
    }
}

pub fn terms(price: u64, compensation: Compensation) -> ListingTerms {
    ListingTerms {
        price_per_query: price,
        allowed_purposes: BTreeSet::from([Purpose::AcademicResearch, Purpose::TrialFeasibility]),
        min_cohort_size: 1,
        epsilon_budget_micro: 10_000_000,
        max_epsilon_per_order_micro: 1_000_000,
        compensation,
    }
}

pub fn publish(f: &mut Fixture, owner: &mut Party, id: &str, terms: ListingTerms) -> ListingId {
    let listing = ListingId::new(id);
    f.submit(
        owner,
        Action::PublishListing {
            listing: listing.clone(),
            schema_hash: Hash32([3; 32]),
            terms,
        },
    )
    .expect("publish");
    listing
}

pub fn grant_action(patient: &Party, listing: &ListingId, payout: PayoutChoice) -> Action {
    Action::GrantConsent {
        patient: patient.id,
        listing: listing.clone(),
        purpose: Purpose::AcademicResearch,
        expires_at: None,
        payout,
        epsilon_limit_micro: None,
    }
}

pub fn order_action(listings: &[ListingId], expires_at: u64) -> Action {
    Action::OrderQuery {
        query_hash: Hash32([9; 32]),
        listings: listings.to_vec(),
        purpose: Purpose::AcademicResearch,
        epsilon_micro: 500_000,
        expires_at,
    }
}

/// A receipt for `order` on `chain_id` naming, per listing, its participants, each listing's
/// part attested by its owner (`per_listing`'s party), as a node attests its contribution.
pub fn receipt_action(
    chain_id: Hash32,
    order: OrderId,
    per_listing: Vec<(ListingId, &Party, Vec<AccountId>)>,
) -> Action {
    let query_hash = Hash32([9; 32]);
    let listings: Vec<market::ListingContribution> = per_listing
        .into_iter()
        .enumerate()
        .map(|(index, (listing, owner, mut participants))| {
            participants.sort();
            let mut contribution = market::ListingContribution {
                listing,
                epsilon_debited_micro: 500_000,
                participants,
                capacity: 1000,
                contribution_hash: Hash32([10 + index as u8; 32]),
                attestation: Vec::new(),
            };
            contribution.attest(&owner.key, &chain_id, &order, &query_hash);
            contribution
        })
        .collect();
    Action::RecordReceipt(market::QueryReceipt {
        order,
        query_hash,
        contributions_root: market::hash::contributions_root(
            listings
                .iter()
                .map(|contribution| &contribution.contribution_hash),
        ),
        proofs_hash: Hash32([11; 32]),
        result_hash: Hash32([12; 32]),
        listings,
    })
}

/// A market with one compute node listing ("diabetes-cohort", price 1000), three consenting
/// patients (the third donates to a fund), a buyer with 5000 credits and a committee member.
pub struct Scene {
    pub f: Fixture,
    pub node: Party,
    pub patients: Vec<Party>,
    pub fund: Party,
    pub buyer: Party,
    pub committee: Party,
    pub listing: ListingId,
}

impl Scene {
    pub fn new() -> Self {
        let mut f = Fixture::new();
        let mut node = f.register(Role::ComputeNode);
        let fund = f.register(Role::Fund);
        let buyer = f.register(Role::Buyer);
        let committee = f.register(Role::CommitteeMember);
        let listing = publish(
            &mut f,
            &mut node,
            "diabetes-cohort",
            terms(1000, Compensation::Payment),
        );
        let mut patients = vec![
            f.register(Role::Patient),
            f.register(Role::Patient),
            f.register(Role::Patient),
        ];
        for (i, patient) in patients.iter_mut().enumerate() {
            let payout = if i == 2 {
                PayoutChoice::DonateTo { fund: fund.id }
            } else {
                PayoutChoice::ToPatient
            };
            let action = grant_action(patient, &listing, payout);
            f.submit(patient, action).expect("grant consent");
        }
        f.deposit(&buyer, 5000);
        Scene {
            f,
            node,
            patients,
            fund,
            buyer,
            committee,
            listing,
        }
    }

    pub fn patient_ids(&self) -> Vec<AccountId> {
        self.patients.iter().map(|p| p.id).collect()
    }

    /// Places an order on the scene's listing; returns its id.
    pub fn order(&mut self) -> OrderId {
        let action = order_action(std::slice::from_ref(&self.listing), self.f.now() + 3600);
        OrderId(self.f.submit(&mut self.buyer, action).expect("order"))
    }

    /// Closes the ledger and opens it again from its database, as after a restart, and
    /// checks that it holds the same state (its hash); the directory holding it lives as long
    /// as the returned guard.
    pub fn reopen(self) -> (Ledger, tempfile::TempDir) {
        let hash = self.f.ledger.state().hash();
        let Fixture {
            ledger,
            clock,
            ledger_key,
            dir,
            ..
        } = self.f;
        let path = ledger.path().to_path_buf();
        drop(ledger);
        let reopened =
            Ledger::open(&path, ledger_sequencer(&ledger_key, &clock)).expect("reopen the ledger");
        assert_eq!(
            reopened.state().hash(),
            hash,
            "the same state after a restart"
        );
        (reopened, dir)
    }

    /// Patient `index` revokes their consent to the listing for academic research.
    pub fn revoke(&mut self, index: usize) {
        let revoke = Action::RevokeConsent {
            listing: self.listing.clone(),
            purpose: Purpose::AcademicResearch,
        };
        self.f
            .submit(&mut self.patients[index], revoke)
            .expect("revoke");
    }

    /// Records a receipt for `order` naming `participants`; returns the receipt id.
    pub fn record(&mut self, order: OrderId, participants: Vec<AccountId>) -> market::ReceiptId {
        let action = receipt_action(
            self.f.ledger.chain_id(),
            order,
            vec![(self.listing.clone(), &self.node, participants)],
        );
        market::ReceiptId(self.f.submit(&mut self.committee, action).expect("receipt"))
    }
}

/// gRPC calls whose message bytes are given raw, to put on the wire what no prost encoder
/// writes: garbage, unknown fields, a field twice.
pub mod raw_grpc {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::metadata::MetadataMap;
    use tonic::transport::Channel;
    use tonic::{Request, Status};

    /// Sends a message body as given and returns the answer's body undecoded.
    #[derive(Clone, Copy, Default)]
    pub struct RawCodec;

    pub struct RawEncoder;

    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;

        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }

        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }

    /// Calls unary `method` (e.g. `/cohortex.v1.Ledger/GetBlock`) with `body` as the message
    /// bytes and `metadata` as the request metadata.
    pub async fn call(
        channel: Channel,
        method: &'static str,
        body: Vec<u8>,
        metadata: MetadataMap,
    ) -> Result<Vec<u8>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let mut request = Request::new(body);
        *request.metadata_mut() = metadata;
        let answer = grpc
            .unary(request, PathAndQuery::from_static(method), RawCodec)
            .await?;
        Ok(answer.into_inner())
    }
}
