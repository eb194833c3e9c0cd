//! The market state and its transition rules.
//!
//! [`State::apply`] is the whole of the market's logic. It is deterministic and does no I/O:
//! its only inputs are the state, a signature-checked transaction and the block context
//! (height and block time, chosen by the sequencer and signed into the block header).
//!
//! Every handler first checks every rule and only then mutates, so a refused transaction leaves
//! the state exactly as it was (the tests compare [`State::hash`] before and after).
//!
//! # Payout rule
//!
//! When an order is settled, the price each listing charged (fixed when the order was placed) is
//! split equally among *all* participants the receipt names for that listing: every consenting
//! participant contributes (a zero when they do not match), so the split is the same whether or
//! not a patient matched and payment reveals no membership. With `n` participants and price `p`,
//! each participant's share is `p / n` (integer division); the remainder `p mod n` (less than
//! `n` credits) goes back to the buyer. A share goes to the listing's fund if the listing is a
//! donation listing, otherwise to the destination in the participant's consent (their own
//! account or a fund). Nothing is created or lost: the sum of all balances plus the escrow of
//! open and computed orders always equals the credits issued by deposits.

use crate::error::TxError;
use crate::hash::{Hash32, TaggedHasher, LABEL_STATE};
use crate::tx::{
    AccountId, Action, AttestationKind, Compensation, ListingContribution, ListingId, ListingTerms,
    OrderId, PayoutChoice, Purpose, QueryReceipt, ReceiptCosignature, ReceiptId, Role,
    TrialPosting, VerifiedTx, MAX_COMMITTEE_MEMBERS, MAX_LISTINGS_PER_ORDER, MAX_LISTING_ID_LEN,
    MAX_ORDER_LIFETIME_SECS, MAX_TRIAL_CRITERIA_LEN, MAX_TRIAL_DURATION_SECS, MAX_TRIAL_ID_LEN,
    MAX_TRIAL_LISTINGS, MAX_TRIAL_REPLIES, MAX_TRIAL_SUMMARY_LEN, MIN_COMMITTEE_THRESHOLD,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Where in the chain a transaction is being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockContext {
    /// Height of the block being built.
    pub height: u64,
    /// Block time, unix seconds (the sequencer's clock, signed into the header).
    pub time: u64,
}

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// What it may do.
    pub role: Role,
    /// The nonce its next transaction must carry.
    pub next_nonce: u64,
    /// Credits.
    pub balance: u64,
}

/// Whether a listing can still be ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListingStatus {
    /// Open for consents and orders.
    Active,
    /// Withdrawn by its owner at this block time; orders already placed may still complete.
    Withdrawn {
        /// Block time of the withdrawal.
        at: u64,
    },
}

/// A dataset listing, the tokenised asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The compute node or patient that published it.
    pub owner: AccountId,
    /// Hash of the schema manifest.
    pub schema_hash: Hash32,
    /// Current terms.
    pub terms: ListingTerms,
    /// Active or withdrawn.
    pub status: ListingStatus,
    /// ε spent by recorded receipts, micro-epsilon.
    pub epsilon_spent_micro: u64,
    /// ε reserved by open orders, micro-epsilon.
    pub epsilon_reserved_micro: u64,
    /// Block time of publication.
    pub published_at: u64,
}

impl Listing {
    /// Budget neither spent nor reserved.
    pub fn epsilon_remaining_micro(&self) -> u64 {
        self.terms.epsilon_budget_micro.saturating_sub(
            self.epsilon_spent_micro
                .saturating_add(self.epsilon_reserved_micro),
        )
    }
}

/// A patient's consent for one listing and purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Block time of the grant.
    pub granted_at: u64,
    /// Block time from which it no longer holds.
    pub expires_at: Option<u64>,
    /// Where the patient's shares go.
    pub payout: PayoutChoice,
    /// Block time of the revocation, if revoked.
    pub revoked_at: Option<u64>,
    /// The patient's personal privacy limit for queries under this consent, micro-epsilon:
    /// a receipt may name the patient only while the ε spent on the person, in every listing
    /// and for every purpose ([`State::person_spent_micro`]), plus its own debit stays within
    /// it. The privacy unit is the person: records in several listings share one loss.
    /// `None`: only the listing's budget applies.
    pub epsilon_limit_micro: Option<u64>,
}

impl Consent {
    /// Whether the consent holds at block time `time`.
    pub fn is_active_at(&self, time: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| time < expiry)
    }

    /// Whether the consent held at some block time in `[from, until]`.
    pub fn held_during(&self, from: u64, until: u64) -> bool {
        let ended_at = match (self.revoked_at, self.expires_at) {
            (Some(revoked), Some(expiry)) => Some(revoked.min(expiry)),
            (revoked, expiry) => revoked.or(expiry),
        };
        self.granted_at <= until && ended_at.is_none_or(|end| from < end)
    }

    /// Whether a query debiting `epsilon_micro` may use the records under this consent, given
    /// `spent_micro` already spent on them in the listing.
    pub fn affords(&self, spent_micro: u64, epsilon_micro: u64) -> bool {
        self.epsilon_limit_micro
            .is_none_or(|limit| spent_micro.saturating_add(epsilon_micro) <= limit)
    }
}

/// One listing of an order, with the terms fixed when the order was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderedListing {
    /// The listing.
    pub listing: ListingId,
    /// Its price per query at order time (the amount escrowed for it).
    pub price: u64,
    /// Its compensation at order time.
    pub compensation: Compensation,
}

/// Where an order stands in its settlement on the ledger. How far its computation has come
/// (computing, completed, failed) is the market's `OrderState` (proto), which the ledger does
/// not hold: the two are the order's only state machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// Escrowed, waiting for the computation.
    Open,
    /// A receipt was recorded; waiting for settlement.
    Computed {
        /// The receipt.
        receipt: ReceiptId,
    },
    /// Paid out.
    Settled {
        /// The receipt it was settled against.
        receipt: ReceiptId,
    },
    /// Escrow returned to the buyer.
    Refunded,
}

impl Settlement {
    fn name(&self) -> &'static str {
        match self {
            Settlement::Open => "open",
            Settlement::Computed { .. } => "computed",
            Settlement::Settled { .. } => "settled",
            Settlement::Refunded => "refunded",
        }
    }
}

/// A query order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Who pays.
    pub buyer: AccountId,
    /// Hash of the query text.
    pub query_hash: Hash32,
    /// The listings queried, in the order's order.
    pub listings: Vec<OrderedListing>,
    /// Purpose of the query.
    pub purpose: Purpose,
    /// ε requested (and reserved) per listing, micro-epsilon.
    pub epsilon_requested_micro: u64,
    /// Credits escrowed (the sum of the listings' prices).
    pub escrow: u64,
    /// Block time of the order.
    pub placed_at: u64,
    /// Block time of expiry.
    pub expires_at: u64,
    /// Where it stands.
    pub status: Settlement,
}

/// Which members' noise a release sums and which members key-switch it, fixed on the ledger
/// before any key switch (see [`Action::CommitRelease`](crate::tx::Action::CommitRelease)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCommitment {
    /// Members whose noise shares are summed, strictly ascending.
    pub noise_members: Vec<u16>,
    /// Members who key-switch, strictly ascending, each among `noise_members`.
    pub quorum: Vec<u16>,
    /// Block time of the commitment.
    pub committed_at: u64,
}

/// The key committee registered on the ledger ([`Action::RegisterCommittee`](crate::tx::Action::RegisterCommittee)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitteeRecord {
    /// Co-signatures a receipt needs.
    pub threshold: u16,
    /// The members' accounts in member order: member `i` is `members[i - 1]`.
    pub members: Vec<AccountId>,
    /// Block time of the registration.
    pub registered_at: u64,
}

impl CommitteeRecord {
    /// The account of member `member` (1-based).
    pub fn member_account(&self, member: u16) -> Option<AccountId> {
        usize::from(member)
            .checked_sub(1)
            .and_then(|index| self.members.get(index))
            .copied()
    }
}

/// A trial posted for recruitment ([`Action::PostTrial`](crate::tx::Action::PostTrial)) and
/// the replies recorded for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The recruiter who posted it.
    pub recruiter: AccountId,
    /// The posting as signed.
    pub posting: TrialPosting,
    /// Block time of the posting.
    pub posted_at: u64,
    /// Replies in the order recorded: the listing whose node computed each, and its hash.
    pub replies: Vec<(ListingId, Hash32)>,
}

impl TrialRecord {
    /// Replies recorded for `listing`.
    pub fn replies_from(&self, listing: &ListingId) -> usize {
        self.replies
            .iter()
            .filter(|(from, _)| from == listing)
            .count()
    }
}

/// A participant's share and where it is paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payee {
    /// The participating patient.
    pub participant: AccountId,
    /// The account credited: the patient or a fund.
    pub destination: AccountId,
}

/// What a receipt records for one listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingSettlement {
    /// The listing.
    pub listing: ListingId,
    /// ε debited, micro-epsilon.
    pub epsilon_debited_micro: u64,
    /// Participants (ascending) with the destination of their share, fixed at receipt time.
    pub payees: Vec<Payee>,
}

/// A recorded query receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    /// The order it completes.
    pub order: OrderId,
    /// Hash of the query.
    pub query_hash: Hash32,
    /// Merkle root of the accepted contributions.
    pub contributions_root: Hash32,
    /// Hash of the proofs.
    pub proofs_hash: Hash32,
    /// Hash of the result.
    pub result_hash: Hash32,
    /// Per listing: ε debited and payees.
    pub listings: Vec<ListingSettlement>,
    /// Committee member that recorded it.
    pub recorded_by: AccountId,
    /// Block time of recording.
    pub recorded_at: u64,
}

/// Credits the settled queries paid for one patient's shares (see [`State::earnings_of`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatientEarnings {
    /// Shares paid to the patient's own account.
    pub paid: u64,
    /// Shares paid to a fund instead.
    pub donated: u64,
}

/// The key of one state entry, as stored.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKey {
    /// An account.
    Account(AccountId),
    /// A listing.
    Listing(ListingId),
    /// A consent: patient, listing, purpose.
    Consent(AccountId, ListingId, Purpose),
    /// An order.
    Order(OrderId),
    /// A receipt.
    Receipt(ReceiptId),
    /// Total credits issued.
    TotalIssued,
    /// ε spent on a patient's records in a listing: patient, listing.
    PersonalSpent(AccountId, ListingId),
    /// The committed release of an order.
    Release(OrderId),
    /// The key an order's release is re-encrypted to.
    ResultKey(OrderId),
    /// The key committee.
    Committee,
    /// A posted trial, by id.
    Trial(String),
    /// The participants staged for an order's receipt, per listing. Written empty when the
    /// list goes (the entry is then deleted from storage).
    Staged(OrderId, ListingId),
    /// An order whose release was committed with its cohort attested
    /// ([`Action::CommitAttestedRelease`](crate::tx::Action::CommitAttestedRelease)).
    AttestedRelease(OrderId),
}

/// A stored state entry does not decode.
#[derive(Debug, Error)]
pub enum StateDecodeError {
    /// The key bytes are not a `StateKey`.
    #[error("state key does not decode: {0}")]
    Key(postcard::Error),
    /// The value bytes do not decode as the key's type.
    #[error("state value for {key:?} does not decode: {source}")]
    Value {
        /// The key.
        key: StateKey,
        /// Why.
        source: postcard::Error,
    },
}

/// The whole market state. It is serialised only to be hashed ([`State::hash`]); it is never
/// read back from bytes (storage keeps it as per-entry rows), so it has no `Deserialize`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    accounts: BTreeMap<AccountId, Account>,
    listings: BTreeMap<ListingId, Listing>,
    consents: BTreeMap<(AccountId, ListingId, Purpose), Consent>,
    /// ε (micro) debited by recorded receipts that named the patient, per listing, over every
    /// purpose. Never reset: revoking and granting again keeps it.
    personal_spent: BTreeMap<(AccountId, ListingId), u64>,
    orders: BTreeMap<OrderId, Order>,
    receipts: BTreeMap<ReceiptId, ReceiptRecord>,
    total_issued: u64,
    /// The committed release of each order that has one. Hashed only when not empty, so that
    /// ledgers written before the field existed keep their state hashes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    releases: BTreeMap<OrderId, ReleaseCommitment>,
    /// The result key of each order placed with one (`OrderQueryFor`). Hashed only when not
    /// empty, like `releases`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    result_keys: BTreeMap<OrderId, Vec<u8>>,
    /// The key committee, once registered. Hashed only when present, like `releases`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    committee: Option<CommitteeRecord>,
    /// Trials posted for recruitment, by id. Hashed only when not empty, like `releases`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    trials: BTreeMap<String, TrialRecord>,
    /// Participants staged for the receipts of open orders, per order and listing
    /// ([`Action::StageParticipants`](crate::tx::Action::StageParticipants)). Hashed only when
    /// not empty, like `releases`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    staged: BTreeMap<(OrderId, ListingId), Vec<AccountId>>,
    /// Orders whose release was committed with its cohort attested, with the contribution
    /// hash of each listing's part, in the order's listing order: their staged lists are
    /// exactly who is in the release, and their receipts must be over these contributions.
    /// Hashed only when not empty, like `releases`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    attested_releases: BTreeMap<OrderId, Vec<(ListingId, Hash32)>>,
    /// Keys written since the last [`State::take_changes`]; not part of the state itself.
    #[serde(skip)]
    changed: BTreeSet<StateKey>,
}

const REQUIRES_LISTER: &str = "compute node or patient";

impl State {
    /// The state after genesis: the given accounts with zero balances.
    pub fn with_accounts(accounts: impl IntoIterator<Item = (AccountId, Role)>) -> Self {
        let mut state = State::default();
        for (id, role) in accounts {
            state.accounts.insert(
                id,
                Account {
                    role,
                    next_nonce: 0,
                    balance: 0,
                },
            );
            state.changed.insert(StateKey::Account(id));
        }
        state
    }

    /// `tagged_hash("cohortex/ledger/state/v1")` over the postcard encoding of the state
    /// (maps in key order). Committed in every block header.
    pub fn hash(&self) -> Hash32 {
        // Postcard writes a field at a time, often a byte at a time: buffered, the hasher sees
        // large blocks (the same bytes, so the same hash).
        let hasher = std::io::BufWriter::with_capacity(1 << 16, TaggedHasher::new(LABEL_STATE));
        match postcard::to_io(self, hasher).map(std::io::BufWriter::into_inner) {
            Ok(Ok(hasher)) => hasher.finalize(),
            // Writing into a hasher cannot fail, and every field is serialisable.
            Ok(Err(error)) => unreachable!("state hashing failed: {}", error.error()),
            Err(error) => unreachable!("state serialisation failed: {error}"),
        }
    }

    /// An account.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Balance of an account (zero if unknown).
    pub fn balance(&self, id: &AccountId) -> u64 {
        self.accounts.get(id).map_or(0, |a| a.balance)
    }

    /// All accounts.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// A listing.
    pub fn listing(&self, id: &ListingId) -> Option<&Listing> {
        self.listings.get(id)
    }

    /// A consent.
    pub fn consent(
        &self,
        patient: &AccountId,
        listing: &ListingId,
        purpose: Purpose,
    ) -> Option<&Consent> {
        self.consents.get(&(*patient, listing.clone(), purpose))
    }

    /// ε (micro) spent on `patient`'s records in `listing` by recorded receipts, over every
    /// purpose.
    pub fn personal_spent_micro(&self, patient: &AccountId, listing: &ListingId) -> u64 {
        self.personal_spent
            .get(&(*patient, listing.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// ε (micro) spent on `patient` by recorded receipts, in every listing and for every
    /// purpose: what a personal limit bounds.
    pub fn person_spent_micro(&self, patient: &AccountId) -> u64 {
        self.personal_spent
            .range((*patient, ListingId::new(""))..)
            .take_while(|((owner, _), _)| owner == patient)
            .fold(0u64, |total, (_, spent)| total.saturating_add(*spent))
    }

    /// The patients of [`State::current_consents`] whose personal limit also allows a query
    /// debiting `epsilon_micro` now: those a node may include in such a query.
    pub fn current_consents_affording(
        &self,
        listing: &ListingId,
        purpose: Purpose,
        time: u64,
        epsilon_micro: u64,
    ) -> Vec<AccountId> {
        self.current_consents(listing, purpose, time)
            .into_iter()
            .filter(|patient| {
                self.consents
                    .get(&(*patient, listing.clone(), purpose))
                    .is_some_and(|consent| {
                        consent.affords(self.person_spent_micro(patient), epsilon_micro)
                    })
            })
            .collect()
    }

    /// Every consent of `patient` (active or not), ordered by listing, then purpose.
    pub fn consents_of<'a>(
        &'a self,
        patient: &'a AccountId,
    ) -> impl Iterator<Item = (&'a ListingId, Purpose, &'a Consent)> + 'a {
        // The smallest key of this patient: the empty listing id and the first purpose.
        let first = (*patient, ListingId::new(""), Purpose::AcademicResearch);
        self.consents
            .range(first..)
            .take_while(move |((holder, _, _), _)| holder == patient)
            .map(|((_, listing, purpose), consent)| (listing, *purpose, consent))
    }

    /// The patients whose consent for `listing` and `purpose` is active at block time `time`,
    /// ascending: exactly those a receipt recorded at `time` may name as participants.
    ///
    /// Linear in the number of consents of all patients (the state is keyed by patient first).
    pub fn current_consents(
        &self,
        listing: &ListingId,
        purpose: Purpose,
        time: u64,
    ) -> Vec<AccountId> {
        self.consents
            .iter()
            .filter(|((_, consented_listing, consented_purpose), consent)| {
                consented_listing == listing
                    && *consented_purpose == purpose
                    && consent.is_active_at(time)
            })
            .map(|((patient, _, _), _)| *patient)
            .collect()
    }

    /// What the settled queries paid for `patient`'s shares, split by destination.
    ///
    /// Recomputed from the settled orders and their receipts with the payout rule of
    /// [`payouts`] (each participant's share of a listing is `price / n`): nothing extra is
    /// stored, so the state and its hash are unchanged. A share counts as donated when it went
    /// to a fund, by the patient's choice or because the listing is a donation listing.
    /// Linear in the number of orders.
    pub fn earnings_of(&self, patient: &AccountId) -> PatientEarnings {
        let mut earnings = PatientEarnings::default();
        for order in self.orders.values() {
            let Settlement::Settled { receipt } = order.status else {
                continue;
            };
            let Some(receipt) = self.receipts.get(&receipt) else {
                continue;
            };
            for (ordered, settlement) in order.listings.iter().zip(&receipt.listings) {
                let participants = settlement.payees.len() as u64;
                let Some(share) = ordered.price.checked_div(participants) else {
                    continue;
                };
                for payee in settlement.payees.iter() {
                    if payee.participant != *patient {
                        continue;
                    }
                    if payee.destination == *patient {
                        earnings.paid = earnings.paid.saturating_add(share);
                    } else {
                        earnings.donated = earnings.donated.saturating_add(share);
                    }
                }
            }
        }
        earnings
    }

    /// An order.
    pub fn order(&self, id: &OrderId) -> Option<&Order> {
        self.orders.get(id)
    }

    /// Every order, by id.
    pub fn orders(&self) -> impl Iterator<Item = (&OrderId, &Order)> {
        self.orders.iter()
    }

    /// The participants staged for `order`'s receipt on `listing`, ascending (empty if none).
    pub fn staged_participants(&self, order: &OrderId, listing: &ListingId) -> &[AccountId] {
        self.staged
            .get(&(*order, listing.clone()))
            .map_or(&[], Vec::as_slice)
    }

    /// The key an order's release is re-encrypted to, if it was placed with one.
    pub fn result_key(&self, id: &OrderId) -> Option<&[u8]> {
        self.result_keys.get(id).map(Vec::as_slice)
    }

    /// Whether `id`'s release was committed with its cohort attested
    /// ([`Action::CommitAttestedRelease`](crate::tx::Action::CommitAttestedRelease)): its
    /// staged lists are then exactly who is in it.
    /// Each listing's contribution hash, in the order's listing order, when it was.
    pub fn attested_release(&self, id: &OrderId) -> Option<&[(ListingId, Hash32)]> {
        self.attested_releases.get(id).map(Vec::as_slice)
    }

    /// The committed release of an order, if any.
    pub fn release(&self, id: &OrderId) -> Option<&ReleaseCommitment> {
        self.releases.get(id)
    }

    /// The key committee registered on the ledger, if any.
    pub fn committee(&self) -> Option<&CommitteeRecord> {
        self.committee.as_ref()
    }

    /// A posted trial.
    pub fn trial(&self, id: &str) -> Option<&TrialRecord> {
        self.trials.get(id)
    }

    /// Every posted trial, by id.
    pub fn trials(&self) -> impl Iterator<Item = &TrialRecord> {
        self.trials.values()
    }

    /// A receipt.
    pub fn receipt(&self, id: &ReceiptId) -> Option<&ReceiptRecord> {
        self.receipts.get(id)
    }

    /// Credits issued by all deposits.
    pub fn total_issued(&self) -> u64 {
        self.total_issued
    }

    /// Sum of all balances.
    pub fn total_balances(&self) -> u128 {
        self.accounts.values().map(|a| u128::from(a.balance)).sum()
    }

    /// Credits held in escrow by open and computed orders.
    pub fn escrow_held(&self) -> u128 {
        self.orders
            .values()
            .filter(|o| matches!(o.status, Settlement::Open | Settlement::Computed { .. }))
            .map(|o| u128::from(o.escrow))
            .sum()
    }

    /// Drains the keys written since the last call, with their encoded values, for storage.
    /// An empty value means the entry was removed (no stored value encodes to zero bytes).
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let keys = std::mem::take(&mut self.changed);
        keys.into_iter()
            .map(|key| {
                let value = match &key {
                    StateKey::Account(id) => self.accounts.get(id).map(postcard::to_stdvec),
                    StateKey::Listing(id) => self.listings.get(id).map(postcard::to_stdvec),
                    StateKey::Consent(p, l, u) => self
                        .consents
                        .get(&(*p, l.clone(), *u))
                        .map(postcard::to_stdvec),
                    StateKey::Order(id) => self.orders.get(id).map(postcard::to_stdvec),
                    StateKey::Receipt(id) => self.receipts.get(id).map(postcard::to_stdvec),
                    StateKey::TotalIssued => Some(postcard::to_stdvec(&self.total_issued)),
                    StateKey::PersonalSpent(p, l) => self
                        .personal_spent
                        .get(&(*p, l.clone()))
                        .map(postcard::to_stdvec),
                    StateKey::Release(id) => self.releases.get(id).map(postcard::to_stdvec),
                    StateKey::ResultKey(id) => self.result_keys.get(id).map(postcard::to_stdvec),
                    StateKey::Committee => self.committee.as_ref().map(postcard::to_stdvec),
                    StateKey::Trial(id) => self.trials.get(id).map(postcard::to_stdvec),
                    StateKey::Staged(order, listing) => self
                        .staged
                        .get(&(*order, listing.clone()))
                        .map(postcard::to_stdvec),
                    StateKey::AttestedRelease(order) => {
                        self.attested_releases.get(order).map(postcard::to_stdvec)
                    }
                }
                // A key written but no longer present was removed.
                .unwrap_or(Ok(Vec::new()));
                let key = postcard::to_stdvec(&key);
                match (key, value) {
                    (Ok(key), Ok(value)) => (key, value),
                    // Serialising into a Vec cannot fail for these types.
                    (Err(error), _) | (_, Err(error)) => {
                        unreachable!("state entry serialisation failed: {error}")
                    }
                }
            })
            .collect()
    }

    /// Rebuilds a state from stored entries (as produced by [`State::take_changes`]).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, StateDecodeError> {
        fn value<T: for<'de> Deserialize<'de>>(
            key: &StateKey,
            bytes: &[u8],
        ) -> Result<T, StateDecodeError> {
            postcard::from_bytes(bytes).map_err(|source| StateDecodeError::Value {
                key: key.clone(),
                source,
            })
        }
        let mut state = State::default();
        for (key_bytes, value_bytes) in entries {
            let key: StateKey = postcard::from_bytes(key_bytes).map_err(StateDecodeError::Key)?;
            match &key {
                StateKey::Account(id) => {
                    state.accounts.insert(*id, value(&key, value_bytes)?);
                }
                StateKey::Listing(id) => {
                    state.listings.insert(id.clone(), value(&key, value_bytes)?);
                }
                StateKey::Consent(p, l, u) => {
                    state
                        .consents
                        .insert((*p, l.clone(), *u), value(&key, value_bytes)?);
                }
                StateKey::Order(id) => {
                    state.orders.insert(*id, value(&key, value_bytes)?);
                }
                StateKey::Receipt(id) => {
                    state.receipts.insert(*id, value(&key, value_bytes)?);
                }
                StateKey::TotalIssued => state.total_issued = value(&key, value_bytes)?,
                StateKey::PersonalSpent(p, l) => {
                    state
                        .personal_spent
                        .insert((*p, l.clone()), value(&key, value_bytes)?);
                }
                StateKey::Release(id) => {
                    state.releases.insert(*id, value(&key, value_bytes)?);
                }
                StateKey::ResultKey(id) => {
                    state.result_keys.insert(*id, value(&key, value_bytes)?);
                }
                StateKey::Committee => state.committee = Some(value(&key, value_bytes)?),
                StateKey::Trial(id) => {
                    state.trials.insert(id.clone(), value(&key, value_bytes)?);
                }
                StateKey::Staged(order, listing) => {
                    state
                        .staged
                        .insert((*order, listing.clone()), value(&key, value_bytes)?);
                }
                StateKey::AttestedRelease(order) => {
                    state
                        .attested_releases
                        .insert(*order, value(&key, value_bytes)?);
                }
            }
        }
        Ok(state)
    }

    /// Applies one transaction. On `Err` the state is unchanged.
    pub fn apply(
        &mut self,
        tx: &VerifiedTx,
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        let body = tx.body();
        if body.chain_id != *chain_id {
            return Err(TxError::WrongChain {
                expected: *chain_id,
                got: body.chain_id,
            });
        }
        let signer = body.signer;
        let self_registration = matches!(
            &body.action,
            Action::RegisterAccount { account, .. } if *account == signer
        );
        // A patient's first consent may register them, as their own `RegisterAccount` would:
        // one signature, not two, per patient enrolled.
        let consent_registers = !self.accounts.contains_key(&signer)
            && matches!(
                &body.action,
                Action::GrantConsent { patient, .. } if *patient == signer
            );
        let expected_nonce = match self.accounts.get(&signer) {
            Some(account) => account.next_nonce,
            None if self_registration || consent_registers => 0,
            None => return Err(TxError::UnknownAccount(signer)),
        };
        if body.nonce < expected_nonce {
            return Err(TxError::ReplayedNonce {
                account: signer,
                expected: expected_nonce,
                got: body.nonce,
            });
        }
        if body.nonce > expected_nonce {
            return Err(TxError::NonceGap {
                account: signer,
                expected: expected_nonce,
                got: body.nonce,
            });
        }
        let next_nonce = expected_nonce
            .checked_add(1)
            .ok_or(TxError::AmountOverflow)?;

        match &body.action {
            Action::RegisterAccount { account, role } => self.register(signer, *account, *role)?,
            Action::PublishListing {
                listing,
                schema_hash,
                terms,
            } => self.publish(signer, listing, *schema_hash, terms, ctx)?,
            Action::UpdateListing { listing, terms } => self.update(signer, listing, terms)?,
            Action::WithdrawListing { listing } => self.withdraw(signer, listing, ctx)?,
            Action::GrantConsent {
                patient,
                listing,
                purpose,
                expires_at,
                payout,
                epsilon_limit_micro,
            } => {
                if consent_registers {
                    self.register(signer, signer, Role::Patient)?;
                }
                let granted = self.grant(
                    signer,
                    *patient,
                    listing,
                    *purpose,
                    *expires_at,
                    *payout,
                    *epsilon_limit_micro,
                    ctx,
                );
                if let Err(error) = granted {
                    // A refused consent registers no one.
                    if consent_registers {
                        self.accounts.remove(&signer);
                        self.changed.remove(&StateKey::Account(signer));
                    }
                    return Err(error);
                }
            }
            Action::RevokeConsent { listing, purpose } => {
                self.revoke(signer, listing, *purpose, ctx)?
            }
            Action::Deposit { to, amount } => self.deposit(signer, *to, *amount)?,
            Action::OrderQuery {
                query_hash,
                listings,
                purpose,
                epsilon_micro,
                expires_at,
            } => self.order_query(
                signer,
                OrderId(tx.id()),
                *query_hash,
                listings,
                *purpose,
                *epsilon_micro,
                *expires_at,
                ctx,
            )?,
            Action::RecordReceipt(receipt) => {
                // Once a committee is registered, a receipt needs its members' co-signatures.
                if let Some(committee) = &self.committee {
                    return Err(TxError::ReceiptNotCosigned {
                        order: receipt.order,
                        valid: 0,
                        threshold: committee.threshold,
                    });
                }
                self.record_receipt(signer, ReceiptId(tx.id()), receipt, chain_id, ctx)?
            }
            Action::RecordCosignedReceipt {
                receipt,
                cosignatures,
            } => {
                self.check_cosignatures(receipt, cosignatures, chain_id)?;
                self.record_receipt(signer, ReceiptId(tx.id()), receipt, chain_id, ctx)?
            }
            Action::RecordFeasibility(receipt) => {
                let order = self
                    .orders
                    .get(&receipt.order)
                    .ok_or(TxError::UnknownOrder(receipt.order))?;
                if order.purpose != Purpose::TrialFeasibility {
                    return Err(TxError::NotAFeasibilityOrder(receipt.order));
                }
                self.record_receipt_as(
                    AttestationKind::Feasibility,
                    signer,
                    ReceiptId(tx.id()),
                    receipt,
                    chain_id,
                    ctx,
                )?
            }
            Action::RegisterCommittee { threshold, members } => {
                self.register_committee(signer, *threshold, members, ctx)?
            }
            Action::PostTrial(posting) => self.post_trial(signer, posting, ctx)?,
            Action::RecordTrialReply {
                trial,
                listing,
                reply_hash,
                attestation,
            } => self.record_trial_reply(
                signer,
                (trial, listing),
                reply_hash,
                attestation,
                chain_id,
                ctx,
            )?,
            Action::Settle { order, receipt } => self.settle(signer, *order, *receipt)?,
            Action::Refund { order } => self.refund(signer, *order, ctx)?,
            Action::CancelOrder { order } => self.cancel_order(signer, *order, ctx)?,
            Action::StageParticipants {
                order,
                listing,
                participants,
            } => self.stage_participants(signer, *order, listing, participants, ctx)?,
            Action::CommitRelease {
                order,
                noise_members,
                quorum,
            } => self.commit_release(signer, *order, noise_members, quorum, ctx)?,
            Action::CommitAttestedRelease {
                order,
                noise_members,
                quorum,
                listings,
            } => {
                self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
                self.check_release_cohort(*order, listings, chain_id, ctx)?;
                self.commit_release(signer, *order, noise_members, quorum, ctx)?;
                let hashes = listings
                    .iter()
                    .map(|part| (part.listing.clone(), part.contribution_hash))
                    .collect();
                self.attested_releases.insert(*order, hashes);
                self.changed.insert(StateKey::AttestedRelease(*order));
            }
            Action::OrderQueryFor {
                query_hash,
                listings,
                purpose,
                epsilon_micro,
                expires_at,
                result_key,
            } => {
                if result_key.is_empty() || result_key.len() > crate::tx::MAX_RESULT_KEY_LEN {
                    return Err(TxError::InvalidOrder(
                        "the result key must be 1 to 64 bytes (a CXZK-encoded public key)",
                    ));
                }
                let order = OrderId(tx.id());
                self.order_query(
                    signer,
                    order,
                    *query_hash,
                    listings,
                    *purpose,
                    *epsilon_micro,
                    *expires_at,
                    ctx,
                )?;
                self.result_keys.insert(order, result_key.clone());
                self.changed.insert(StateKey::ResultKey(order));
            }
        }

        // The signer exists now (a self-registration has just created it).
        if let Some(account) = self.accounts.get_mut(&signer) {
            account.next_nonce = next_nonce;
            self.changed.insert(StateKey::Account(signer));
        }
        // Linear in the accounts: checked only after actions that move credits, so that
        // enrolling a population (registrations and consents) stays linear in debug builds.
        let moves_credits = matches!(
            body.action,
            Action::Deposit { .. }
                | Action::OrderQuery { .. }
                | Action::OrderQueryFor { .. }
                | Action::Settle { .. }
                | Action::Refund { .. }
                | Action::CancelOrder { .. }
        );
        debug_assert!(
            !moves_credits
                || self.total_balances() + self.escrow_held() == u128::from(self.total_issued),
            "credits are conserved"
        );
        Ok(())
    }

    fn require_role(
        &self,
        account: AccountId,
        allowed: &[Role],
        required: &'static str,
    ) -> Result<&Account, TxError> {
        let found = self
            .accounts
            .get(&account)
            .ok_or(TxError::UnknownAccount(account))?;
        if !allowed.contains(&found.role) {
            return Err(TxError::WrongRole {
                account,
                actual: found.role,
                required,
            });
        }
        Ok(found)
    }

    fn require_fund(&self, fund: AccountId) -> Result<(), TxError> {
        match self.accounts.get(&fund) {
            Some(account) if account.role == Role::Fund => Ok(()),
            _ => Err(TxError::NotAFund(fund)),
        }
    }

    fn validate_terms(&self, terms: &ListingTerms) -> Result<(), TxError> {
        if terms.allowed_purposes.is_empty() {
            return Err(TxError::InvalidListing(
                "at least one purpose must be allowed",
            ));
        }
        if terms.min_cohort_size == 0 {
            return Err(TxError::InvalidListing(
                "minimum cohort size must be at least 1",
            ));
        }
        if terms.epsilon_budget_micro == 0 {
            return Err(TxError::InvalidListing("epsilon budget must be positive"));
        }
        if terms.max_epsilon_per_order_micro == 0
            || terms.max_epsilon_per_order_micro > terms.epsilon_budget_micro
        {
            return Err(TxError::InvalidListing(
                "the per-order epsilon cap must be positive and at most the budget",
            ));
        }
        if let Compensation::Donation { fund } = terms.compensation {
            self.require_fund(fund)?;
        }
        Ok(())
    }

    fn active_listing(&self, id: &ListingId) -> Result<&Listing, TxError> {
        let listing = self
            .listings
            .get(id)
            .ok_or_else(|| TxError::UnknownListing(id.clone()))?;
        if let ListingStatus::Withdrawn { .. } = listing.status {
            return Err(TxError::ListingWithdrawn(id.clone()));
        }
        Ok(listing)
    }

    fn owned_active_listing(&self, signer: AccountId, id: &ListingId) -> Result<&Listing, TxError> {
        let listing = self.active_listing(id)?;
        if listing.owner != signer {
            return Err(TxError::NotListingOwner {
                listing: id.clone(),
                signer,
            });
        }
        Ok(listing)
    }

    fn register(
        &mut self,
        signer: AccountId,
        account: AccountId,
        role: Role,
    ) -> Result<(), TxError> {
        account.verifying_key()?;
        if self.accounts.contains_key(&account) {
            return Err(TxError::AlreadyRegistered(account));
        }
        match role {
            Role::Patient | Role::Buyer => {
                if signer != account {
                    return Err(TxError::RegistrationNotSelfSigned {
                        role,
                        signer,
                        account,
                    });
                }
            }
            _ => {
                if !self.accounts.contains_key(&signer) {
                    return Err(TxError::AdmissionRequiresIssuer { role, signer });
                }
                self.require_role(signer, &[Role::Issuer], "issuer")?;
            }
        }
        self.accounts.insert(
            account,
            Account {
                role,
                next_nonce: 0,
                balance: 0,
            },
        );
        self.changed.insert(StateKey::Account(account));
        Ok(())
    }

    fn publish(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        schema_hash: Hash32,
        terms: &ListingTerms,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::ComputeNode, Role::Patient], REQUIRES_LISTER)?;
        if id.0.is_empty() || id.0.len() > MAX_LISTING_ID_LEN {
            return Err(TxError::InvalidListing("listing id must be 1 to 64 bytes"));
        }
        if self.listings.contains_key(id) {
            return Err(TxError::ListingExists(id.clone()));
        }
        self.validate_terms(terms)?;
        self.listings.insert(
            id.clone(),
            Listing {
                owner: signer,
                schema_hash,
                terms: terms.clone(),
                status: ListingStatus::Active,
                epsilon_spent_micro: 0,
                epsilon_reserved_micro: 0,
                published_at: ctx.time,
            },
        );
        self.changed.insert(StateKey::Listing(id.clone()));
        Ok(())
    }

    fn update(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        terms: &ListingTerms,
    ) -> Result<(), TxError> {
        let listing = self.owned_active_listing(signer, id)?;
        self.validate_terms(terms)?;
        let committed = listing
            .epsilon_spent_micro
            .saturating_add(listing.epsilon_reserved_micro);
        if terms.epsilon_budget_micro < committed {
            return Err(TxError::InvalidListing(
                "epsilon budget cannot drop below what is spent and reserved",
            ));
        }
        if let Some(listing) = self.listings.get_mut(id) {
            listing.terms = terms.clone();
        }
        self.changed.insert(StateKey::Listing(id.clone()));
        Ok(())
    }

    fn withdraw(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.owned_active_listing(signer, id)?;
        if let Some(listing) = self.listings.get_mut(id) {
            listing.status = ListingStatus::Withdrawn { at: ctx.time };
        }
        self.changed.insert(StateKey::Listing(id.clone()));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        signer: AccountId,
        patient: AccountId,
        id: &ListingId,
        purpose: Purpose,
        expires_at: Option<u64>,
        payout: PayoutChoice,
        epsilon_limit_micro: Option<u64>,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        if signer != patient {
            return Err(TxError::ConsentNotByPatient { patient, signer });
        }
        self.require_role(patient, &[Role::Patient], "patient")?;
        let listing = self.active_listing(id)?;
        if !listing.terms.allowed_purposes.contains(&purpose) {
            return Err(TxError::PurposeNotAllowed {
                listing: id.clone(),
                purpose,
            });
        }
        if let Some(expiry) = expires_at {
            if expiry <= ctx.time {
                return Err(TxError::ExpiryNotInFuture {
                    expires_at: expiry,
                    now: ctx.time,
                });
            }
        }
        if let PayoutChoice::DonateTo { fund } = payout {
            self.require_fund(fund)?;
        }
        if let Some(limit) = epsilon_limit_micro {
            if limit == 0 {
                return Err(TxError::ZeroPersonalLimit);
            }
            let spent = self.person_spent_micro(&patient);
            if limit < spent {
                return Err(TxError::PersonalLimitBelowSpent {
                    patient,
                    listing: id.clone(),
                    limit_micro: limit,
                    spent_micro: spent,
                });
            }
        }
        self.consents.insert(
            (patient, id.clone(), purpose),
            Consent {
                granted_at: ctx.time,
                expires_at,
                payout,
                revoked_at: None,
                epsilon_limit_micro,
            },
        );
        self.changed
            .insert(StateKey::Consent(patient, id.clone(), purpose));
        Ok(())
    }

    fn revoke(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        purpose: Purpose,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Patient], "patient")?;
        let key = (signer, id.clone(), purpose);
        match self.consents.get_mut(&key) {
            Some(consent) if consent.is_active_at(ctx.time) => {
                consent.revoked_at = Some(ctx.time);
            }
            _ => {
                return Err(TxError::NoActiveConsent {
                    patient: signer,
                    listing: id.clone(),
                    purpose,
                })
            }
        }
        self.changed
            .insert(StateKey::Consent(signer, id.clone(), purpose));
        Ok(())
    }

    fn deposit(&mut self, signer: AccountId, to: AccountId, amount: u64) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Issuer], "issuer")?;
        if amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        let recipient = self.accounts.get(&to).ok_or(TxError::UnknownAccount(to))?;
        let new_balance = recipient
            .balance
            .checked_add(amount)
            .ok_or(TxError::AmountOverflow)?;
        let new_total = self
            .total_issued
            .checked_add(amount)
            .ok_or(TxError::AmountOverflow)?;
        if let Some(recipient) = self.accounts.get_mut(&to) {
            recipient.balance = new_balance;
        }
        self.total_issued = new_total;
        self.changed.insert(StateKey::Account(to));
        self.changed.insert(StateKey::TotalIssued);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn order_query(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        query_hash: Hash32,
        listing_ids: &[ListingId],
        purpose: Purpose,
        epsilon_micro: u64,
        expires_at: u64,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        let buyer = self.require_role(signer, &[Role::Buyer], "buyer")?;
        let balance = buyer.balance;
        if listing_ids.is_empty() || listing_ids.len() > MAX_LISTINGS_PER_ORDER {
            return Err(TxError::InvalidOrder("an order names 1 to 64 listings"));
        }
        let distinct: BTreeSet<&ListingId> = listing_ids.iter().collect();
        if distinct.len() != listing_ids.len() {
            return Err(TxError::InvalidOrder("a listing is named twice"));
        }
        if epsilon_micro == 0 {
            return Err(TxError::InvalidOrder("epsilon requested must be positive"));
        }
        if expires_at <= ctx.time {
            return Err(TxError::ExpiryNotInFuture {
                expires_at,
                now: ctx.time,
            });
        }
        let latest = ctx.time.saturating_add(MAX_ORDER_LIFETIME_SECS);
        if expires_at > latest {
            return Err(TxError::OrderExpiryTooFar { expires_at, latest });
        }
        let mut escrow: u64 = 0;
        let mut ordered = Vec::with_capacity(listing_ids.len());
        for id in listing_ids {
            let listing = self.active_listing(id)?;
            if !listing.terms.allowed_purposes.contains(&purpose) {
                return Err(TxError::PurposeNotAllowed {
                    listing: id.clone(),
                    purpose,
                });
            }
            if epsilon_micro > listing.terms.max_epsilon_per_order_micro {
                return Err(TxError::EpsilonAboveOrderCap {
                    listing: id.clone(),
                    cap_micro: listing.terms.max_epsilon_per_order_micro,
                    requested_micro: epsilon_micro,
                });
            }
            let remaining = listing.epsilon_remaining_micro();
            if remaining < epsilon_micro {
                return Err(TxError::EpsilonBudgetExhausted {
                    listing: id.clone(),
                    remaining_micro: remaining,
                    requested_micro: epsilon_micro,
                });
            }
            escrow = escrow
                .checked_add(listing.terms.price_per_query)
                .ok_or(TxError::AmountOverflow)?;
            ordered.push(OrderedListing {
                listing: id.clone(),
                price: listing.terms.price_per_query,
                compensation: listing.terms.compensation,
            });
        }
        if balance < escrow {
            return Err(TxError::InsufficientFunds {
                account: signer,
                balance,
                needed: escrow,
            });
        }
        debug_assert!(
            !self.orders.contains_key(&order_id),
            "order ids are transaction ids"
        );

        for id in listing_ids {
            if let Some(listing) = self.listings.get_mut(id) {
                // Cannot overflow: reserved + requested <= budget was checked above.
                listing.epsilon_reserved_micro += epsilon_micro;
            }
            self.changed.insert(StateKey::Listing(id.clone()));
        }
        if let Some(buyer) = self.accounts.get_mut(&signer) {
            buyer.balance = balance - escrow;
        }
        self.changed.insert(StateKey::Account(signer));
        self.orders.insert(
            order_id,
            Order {
                buyer: signer,
                query_hash,
                listings: ordered,
                purpose,
                epsilon_requested_micro: epsilon_micro,
                escrow,
                placed_at: ctx.time,
                expires_at,
                status: Settlement::Open,
            },
        );
        self.changed.insert(StateKey::Order(order_id));
        Ok(())
    }

    fn record_receipt(
        &mut self,
        signer: AccountId,
        receipt_id: ReceiptId,
        receipt: &QueryReceipt,
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.record_receipt_as(
            AttestationKind::Contribution,
            signer,
            receipt_id,
            receipt,
            chain_id,
            ctx,
        )
    }

    fn record_receipt_as(
        &mut self,
        kind: AttestationKind,
        signer: AccountId,
        receipt_id: ReceiptId,
        receipt: &QueryReceipt,
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
        let order_id = receipt.order;
        let order = self.open_order(order_id)?;
        if ctx.time >= order.expires_at {
            return Err(TxError::OrderExpired {
                order: order_id,
                expires_at: order.expires_at,
            });
        }
        if receipt.query_hash != order.query_hash {
            return Err(TxError::QueryHashMismatch(order_id));
        }
        let listings_match = receipt.listings.len() == order.listings.len()
            && receipt
                .listings
                .iter()
                .zip(&order.listings)
                .all(|(got, ordered)| got.listing == ordered.listing);
        if !listings_match {
            return Err(TxError::ReceiptListingsMismatch(order_id));
        }
        // A listing whose participants were staged names none in the receipt: its part stands
        // for the staged list, and every rule below applies to that list.
        let mut resolved = Vec::with_capacity(receipt.listings.len());
        for contribution in &receipt.listings {
            let staged = self.staged_participants(&order_id, &contribution.listing);
            if staged.is_empty() {
                resolved.push(std::borrow::Cow::Borrowed(contribution));
            } else if contribution.participants.is_empty() {
                resolved.push(std::borrow::Cow::Owned(ListingContribution {
                    participants: staged.to_vec(),
                    ..contribution.clone()
                }));
            } else {
                return Err(TxError::ParticipantsStagedAndNamed(
                    contribution.listing.clone(),
                ));
            }
        }
        // Each listing's part is the node's word, not the market's: its owner signed who took
        // part, its capacity and the hash of what it sent, for this order and query; and the
        // receipt's root is over exactly those hashes.
        let root = crate::hash::contributions_root(
            receipt
                .listings
                .iter()
                .map(|contribution| &contribution.contribution_hash),
        );
        if receipt.contributions_root != root {
            return Err(TxError::ContributionsRootMismatch(order_id));
        }
        // A release committed with its cohort attested is receipted over exactly those
        // contributions: the members key-switched nothing else.
        if let Some(committed) = self.attested_releases.get(&order_id) {
            let same = committed.len() == receipt.listings.len()
                && committed
                    .iter()
                    .zip(&receipt.listings)
                    .all(|((listing, hash), part)| {
                        *listing == part.listing && *hash == part.contribution_hash
                    });
            if !same {
                return Err(TxError::ReceiptNotTheCommittedRelease(order_id));
            }
        }
        for contribution in &resolved {
            let id = &contribution.listing;
            let owner = self
                .listings
                .get(id)
                .ok_or_else(|| TxError::UnknownListing(id.clone()))?
                .owner;
            let attested = owner.verifying_key().is_ok_and(|key| {
                contribution.attested_as(kind, &key, chain_id, &order_id, &receipt.query_hash)
            });
            if !attested {
                return Err(TxError::ContributionNotAttested {
                    listing: id.clone(),
                    owner,
                });
            }
        }

        // The privacy unit is the person: a patient listed in several of the order's
        // listings takes part once, in the first of them (the node rule), so no patient may
        // be named twice in one receipt.
        let mut named_in: BTreeMap<AccountId, &ListingId> = BTreeMap::new();
        for contribution in &resolved {
            for participant in &contribution.participants {
                if let Some(first) = named_in.insert(*participant, &contribution.listing) {
                    if first != &contribution.listing {
                        return Err(TxError::ParticipantInTwoListings {
                            patient: *participant,
                            first: first.clone(),
                            second: contribution.listing.clone(),
                        });
                    }
                }
            }
        }
        let mut settlements = Vec::with_capacity(receipt.listings.len());
        for (contribution, ordered) in resolved.iter().zip(&order.listings) {
            let id = &contribution.listing;
            // Exactly the order's ε: the noise was calibrated to it, so a smaller debit would
            // under-charge the budgets.
            if contribution.epsilon_debited_micro != order.epsilon_requested_micro {
                return Err(TxError::EpsilonExceedsRequest {
                    listing: id.clone(),
                    debited_micro: contribution.epsilon_debited_micro,
                    requested_micro: order.epsilon_requested_micro,
                });
            }
            let ascending = contribution.participants.windows(2).all(|w| w[0] < w[1]);
            if !ascending {
                return Err(TxError::ParticipantsNotCanonical(id.clone()));
            }
            let listing = self
                .listings
                .get(id)
                .ok_or_else(|| TxError::UnknownListing(id.clone()))?;
            let min = listing.terms.min_cohort_size;
            if contribution.participants.len() < min as usize {
                return Err(TxError::CohortTooSmall {
                    listing: id.clone(),
                    min,
                    got: contribution.participants.len(),
                });
            }
            let mut payees = Vec::with_capacity(contribution.participants.len());
            for participant in &contribution.participants {
                let consent = self
                    .consents
                    .get(&(*participant, id.clone(), order.purpose))
                    .filter(|consent| consent.is_active_at(ctx.time))
                    .ok_or_else(|| TxError::ParticipantWithoutConsent {
                        patient: *participant,
                        listing: id.clone(),
                        purpose: order.purpose,
                    })?;
                let spent = self.person_spent_micro(participant);
                if !consent.affords(spent, contribution.epsilon_debited_micro) {
                    return Err(TxError::PersonalBudgetExceeded {
                        patient: *participant,
                        listing: id.clone(),
                        spent_micro: spent,
                        limit_micro: consent.epsilon_limit_micro.unwrap_or(u64::MAX),
                        debited_micro: contribution.epsilon_debited_micro,
                    });
                }
                let destination = match (ordered.compensation, consent.payout) {
                    (Compensation::Donation { fund }, _) => fund,
                    (Compensation::Payment, PayoutChoice::DonateTo { fund }) => fund,
                    (Compensation::Payment, PayoutChoice::ToPatient) => *participant,
                };
                payees.push(Payee {
                    participant: *participant,
                    destination,
                });
            }
            settlements.push(ListingSettlement {
                listing: id.clone(),
                epsilon_debited_micro: contribution.epsilon_debited_micro,
                payees,
            });
        }
        let requested = order.epsilon_requested_micro;

        for settlement in &settlements {
            if let Some(listing) = self.listings.get_mut(&settlement.listing) {
                debug_assert!(listing.epsilon_reserved_micro >= requested);
                listing.epsilon_reserved_micro =
                    listing.epsilon_reserved_micro.saturating_sub(requested);
                // Cannot overflow: spent + debited <= spent + reserved <= budget.
                listing.epsilon_spent_micro += settlement.epsilon_debited_micro;
            }
            self.changed
                .insert(StateKey::Listing(settlement.listing.clone()));
            if settlement.epsilon_debited_micro > 0 {
                for payee in &settlement.payees {
                    self.debit_person(
                        payee.participant,
                        &settlement.listing,
                        settlement.epsilon_debited_micro,
                    );
                }
            }
        }
        if let Some(order) = self.orders.get_mut(&order_id) {
            order.status = Settlement::Computed {
                receipt: receipt_id,
            };
        }
        self.changed.insert(StateKey::Order(order_id));
        self.receipts.insert(
            receipt_id,
            ReceiptRecord {
                order: order_id,
                query_hash: receipt.query_hash,
                contributions_root: receipt.contributions_root,
                proofs_hash: receipt.proofs_hash,
                result_hash: receipt.result_hash,
                listings: settlements,
                recorded_by: signer,
                recorded_at: ctx.time,
            },
        );
        self.changed.insert(StateKey::Receipt(receipt_id));
        self.unstage(order_id);
        Ok(())
    }

    fn settle(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        receipt_id: ReceiptId,
    ) -> Result<(), TxError> {
        let signer_role = self
            .accounts
            .get(&signer)
            .ok_or(TxError::UnknownAccount(signer))?
            .role;
        let order = self
            .orders
            .get(&order_id)
            .ok_or(TxError::UnknownOrder(order_id))?;
        if signer != order.buyer && signer_role != Role::CommitteeMember {
            return Err(TxError::NotOrderParty {
                order: order_id,
                signer,
            });
        }
        let receipt = self
            .receipts
            .get(&receipt_id)
            .ok_or(TxError::UnknownReceipt(receipt_id))?;
        if receipt.order != order_id {
            return Err(TxError::ReceiptForAnotherOrder {
                receipt: receipt_id,
                receipt_order: receipt.order,
                order: order_id,
            });
        }
        match order.status {
            Settlement::Settled { .. } => return Err(TxError::AlreadySettled(order_id)),
            Settlement::Refunded => return Err(TxError::AlreadyRefunded(order_id)),
            Settlement::Open => return Err(TxError::OrderNotComputed(order_id)),
            Settlement::Computed { receipt } => {
                debug_assert_eq!(receipt, receipt_id, "one receipt per order");
            }
        }

        let credits = payouts(order, receipt);
        let mut new_balances: BTreeMap<AccountId, u64> = BTreeMap::new();
        for (account, amount) in &credits {
            let current = self
                .accounts
                .get(account)
                .ok_or(TxError::UnknownAccount(*account))?
                .balance;
            let updated = current
                .checked_add(*amount)
                .ok_or(TxError::AmountOverflow)?;
            new_balances.insert(*account, updated);
        }
        debug_assert_eq!(
            credits.values().map(|v| u128::from(*v)).sum::<u128>(),
            u128::from(order.escrow)
        );

        for (account, balance) in new_balances {
            if let Some(found) = self.accounts.get_mut(&account) {
                found.balance = balance;
            }
            self.changed.insert(StateKey::Account(account));
        }
        if let Some(order) = self.orders.get_mut(&order_id) {
            order.status = Settlement::Settled {
                receipt: receipt_id,
            };
        }
        self.changed.insert(StateKey::Order(order_id));
        Ok(())
    }

    fn refund(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        let signer_role = self
            .accounts
            .get(&signer)
            .ok_or(TxError::UnknownAccount(signer))?
            .role;
        let order = self
            .orders
            .get(&order_id)
            .ok_or(TxError::UnknownOrder(order_id))?;
        match order.status {
            Settlement::Open => {}
            Settlement::Settled { .. } => return Err(TxError::AlreadySettled(order_id)),
            Settlement::Refunded => return Err(TxError::AlreadyRefunded(order_id)),
            Settlement::Computed { .. } => {
                return Err(TxError::OrderNotOpen {
                    order: order_id,
                    status: order.status.name(),
                })
            }
        }
        if signer_role == Role::CommitteeMember {
            // The committee declares the computation failed; no expiry needed.
        } else if signer == order.buyer {
            if ctx.time < order.expires_at {
                return Err(TxError::OrderNotExpired {
                    order: order_id,
                    expires_at: order.expires_at,
                    now: ctx.time,
                });
            }
        } else {
            return Err(TxError::NotOrderParty {
                order: order_id,
                signer,
            });
        }
        self.return_escrow(order_id, ctx.time)
    }

    /// Cancels an open order whose release is not committed, at its buyer's request.
    fn cancel_order(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        let order = self.open_order(order_id)?;
        if signer != order.buyer {
            return Err(TxError::NotOrderParty {
                order: order_id,
                signer,
            });
        }
        if self.releases.contains_key(&order_id) {
            return Err(TxError::ReleaseCommitted(order_id));
        }
        // A feasibility search has no committed release: each node answers on its own, so
        // the ledger cannot know that nothing went out yet.
        if order.purpose == Purpose::TrialFeasibility {
            return Err(TxError::NotCancellable {
                order: order_id,
                reason: "a feasibility search's counts may already be out",
            });
        }
        self.return_escrow(order_id, ctx.time)
    }

    /// Ends an open order without a receipt, at block time `ctx_time`: the escrow goes back to
    /// the buyer and the ε reserved on each listing is freed, or spent if a release was
    /// committed.
    fn return_escrow(&mut self, order_id: OrderId, ctx_time: u64) -> Result<(), TxError> {
        let order = self
            .orders
            .get(&order_id)
            .ok_or(TxError::UnknownOrder(order_id))?;
        let buyer = order.buyer;
        let escrow = order.escrow;
        let requested = order.epsilon_requested_micro;
        let purpose = order.purpose;
        let placed_at = order.placed_at;
        let feasibility = purpose == Purpose::TrialFeasibility;
        let listing_ids: Vec<ListingId> =
            order.listings.iter().map(|l| l.listing.clone()).collect();
        let new_balance = self
            .accounts
            .get(&buyer)
            .ok_or(TxError::UnknownAccount(buyer))?
            .balance
            .checked_add(escrow)
            .ok_or(TxError::AmountOverflow)?;

        if let Some(account) = self.accounts.get_mut(&buyer) {
            account.balance = new_balance;
        }
        self.changed.insert(StateKey::Account(buyer));
        // Once a release was committed, its noisy counts may have been opened: the ε it
        // reserved is spent, not returned, even though the credits are. A feasibility search
        // commits no release, and its nodes may have answered: its ε is spent too.
        //
        // The same holds for the people in it. A release committed with its cohort attested
        // names them (the staged lists). Otherwise the ledger does not know who was: every
        // person whose consent for the order's purpose held at some time between the order
        // and the commitment (for a search, the refund) is debited, as a receipt would debit
        // its participants. The cohort is among them, so no one in it goes uncharged; the
        // others pay for the failure with ε they did not spend.
        let released_until = match self.releases.get(&order_id) {
            Some(release) => Some(release.committed_at),
            None if feasibility => Some(ctx_time),
            None => None,
        };
        // A release committed with its cohort attested names exactly who is in it: they,
        // and no one else, are debited.
        if self.attested_releases.contains_key(&order_id) {
            self.debit_staged(order_id, &listing_ids, requested);
        } else if let Some(until) = released_until {
            self.debit_consents_held_between(&listing_ids, purpose, placed_at, until, requested);
        }
        for id in listing_ids {
            if let Some(listing) = self.listings.get_mut(&id) {
                listing.epsilon_reserved_micro =
                    listing.epsilon_reserved_micro.saturating_sub(requested);
                if released_until.is_some() {
                    listing.epsilon_spent_micro =
                        listing.epsilon_spent_micro.saturating_add(requested);
                }
            }
            self.changed.insert(StateKey::Listing(id));
        }
        if let Some(order) = self.orders.get_mut(&order_id) {
            order.status = Settlement::Refunded;
        }
        self.changed.insert(StateKey::Order(order_id));
        self.unstage(order_id);
        Ok(())
    }

    /// Debits `epsilon_micro` from the personal budget of every participant staged for
    /// `order_id` in one of `listings` (a person is staged in one listing of an order at most:
    /// the attestations of an attested release were checked over these lists).
    fn debit_staged(&mut self, order_id: OrderId, listings: &[ListingId], epsilon_micro: u64) {
        if epsilon_micro == 0 {
            return;
        }
        for listing in listings {
            let staged = self.staged_participants(&order_id, listing).to_vec();
            for patient in staged {
                self.debit_person(patient, listing, epsilon_micro);
            }
        }
    }

    /// Adds `epsilon_micro` to what `patient` has spent in `listing`. Saturates only past
    /// u64::MAX micro-ε, far beyond any limit.
    fn debit_person(&mut self, patient: AccountId, listing: &ListingId, epsilon_micro: u64) {
        let spent = self
            .personal_spent
            .entry((patient, listing.clone()))
            .or_insert(0);
        *spent = spent.saturating_add(epsilon_micro);
        self.changed
            .insert(StateKey::PersonalSpent(patient, listing.clone()));
    }

    /// Checks the cohort of an attested release of `order_id` as its receipt will be checked:
    /// the order has not expired; `parts` are the order's listings in order, each naming no
    /// participants, for the order's ε, and each attested by its listing's owner over the
    /// participants staged for it; no person is staged under two of them; each listing has
    /// its minimum cohort; and each participant still consents, with room in their personal
    /// limit for the order's ε. A release the receipt would refuse is not committed.
    fn check_release_cohort(
        &self,
        order_id: OrderId,
        parts: &[ListingContribution],
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        let order = self.open_order(order_id)?;
        if ctx.time >= order.expires_at {
            return Err(TxError::OrderExpired {
                order: order_id,
                expires_at: order.expires_at,
            });
        }
        let listings_match = parts.len() == order.listings.len()
            && parts
                .iter()
                .zip(&order.listings)
                .all(|(got, ordered)| got.listing == ordered.listing);
        if !listings_match {
            return Err(TxError::ReceiptListingsMismatch(order_id));
        }
        let mut named_in: BTreeMap<AccountId, &ListingId> = BTreeMap::new();
        for part in parts {
            if !part.participants.is_empty() {
                return Err(TxError::ParticipantsStagedAndNamed(part.listing.clone()));
            }
            if part.epsilon_debited_micro != order.epsilon_requested_micro {
                return Err(TxError::EpsilonExceedsRequest {
                    listing: part.listing.clone(),
                    debited_micro: part.epsilon_debited_micro,
                    requested_micro: order.epsilon_requested_micro,
                });
            }
            let staged = self.staged_participants(&order_id, &part.listing);
            for participant in staged {
                if let Some(first) = named_in.insert(*participant, &part.listing) {
                    return Err(TxError::ParticipantInTwoListings {
                        patient: *participant,
                        first: first.clone(),
                        second: part.listing.clone(),
                    });
                }
            }
            let owner = self
                .listings
                .get(&part.listing)
                .ok_or_else(|| TxError::UnknownListing(part.listing.clone()))?
                .owner;
            let attested = ListingContribution {
                participants: staged.to_vec(),
                ..part.clone()
            };
            let signed = owner.verifying_key().is_ok_and(|key| {
                attested.attested_as(
                    AttestationKind::Contribution,
                    &key,
                    chain_id,
                    &order_id,
                    &order.query_hash,
                )
            });
            if !signed {
                return Err(TxError::ContributionNotAttested {
                    listing: part.listing.clone(),
                    owner,
                });
            }
            let listing = self
                .listings
                .get(&part.listing)
                .ok_or_else(|| TxError::UnknownListing(part.listing.clone()))?;
            let min = listing.terms.min_cohort_size;
            if staged.len() < min as usize {
                return Err(TxError::CohortTooSmall {
                    listing: part.listing.clone(),
                    min,
                    got: staged.len(),
                });
            }
            for participant in staged {
                let consent = self
                    .consents
                    .get(&(*participant, part.listing.clone(), order.purpose))
                    .filter(|consent| consent.is_active_at(ctx.time))
                    .ok_or_else(|| TxError::ParticipantWithoutConsent {
                        patient: *participant,
                        listing: part.listing.clone(),
                        purpose: order.purpose,
                    })?;
                let spent = self.person_spent_micro(participant);
                if !consent.affords(spent, part.epsilon_debited_micro) {
                    return Err(TxError::PersonalBudgetExceeded {
                        patient: *participant,
                        listing: part.listing.clone(),
                        spent_micro: spent,
                        limit_micro: consent.epsilon_limit_micro.unwrap_or(u64::MAX),
                        debited_micro: part.epsilon_debited_micro,
                    });
                }
            }
        }
        Ok(())
    }

    /// Debits `epsilon_micro` from the personal budget of every person whose consent to
    /// `purpose` in one of `listings` held at some block time in `[from, until]`: once per
    /// person, in the first of `listings` where it held, as a node counts a person once per
    /// order, in the earliest listing.
    fn debit_consents_held_between(
        &mut self,
        listings: &[ListingId],
        purpose: Purpose,
        from: u64,
        until: u64,
        epsilon_micro: u64,
    ) {
        if epsilon_micro == 0 {
            return;
        }
        let mut debited: BTreeSet<AccountId> = BTreeSet::new();
        for listing in listings {
            let held: Vec<AccountId> = self
                .consents
                .iter()
                .filter(
                    |((patient, consented_listing, consented_purpose), consent)| {
                        consented_listing == listing
                            && *consented_purpose == purpose
                            && consent.held_during(from, until)
                            && !debited.contains(patient)
                    },
                )
                .map(|((patient, _, _), _)| *patient)
                .collect();
            for patient in held {
                self.debit_person(patient, listing, epsilon_micro);
                debited.insert(patient);
            }
        }
    }

    /// Appends `participants` to the list staged for `order_id`'s receipt on `listing`.
    fn stage_participants(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        listing: &ListingId,
        participants: &[AccountId],
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
        let order = self.open_order(order_id)?;
        if ctx.time >= order.expires_at {
            return Err(TxError::OrderExpired {
                order: order_id,
                expires_at: order.expires_at,
            });
        }
        // Staged before the release is committed, or not at all: a list that could grow
        // afterwards would let a member stall a released order until its refund.
        if self.releases.contains_key(&order_id) {
            return Err(TxError::ReleaseCommitted(order_id));
        }
        if !order
            .listings
            .iter()
            .any(|ordered| &ordered.listing == listing)
        {
            return Err(TxError::ListingNotInOrder {
                order: order_id,
                listing: listing.clone(),
            });
        }
        let key = (order_id, listing.clone());
        let last = self.staged.get(&key).and_then(|staged| staged.last());
        let broken = match participants.first() {
            None => Some("the chunk is empty"),
            Some(_) if participants.len() > crate::tx::MAX_STAGED_PER_TX => {
                Some("the chunk holds too many accounts")
            }
            Some(_) if participants.windows(2).any(|pair| pair[0] >= pair[1]) => {
                Some("the chunk is not strictly ascending")
            }
            Some(first) if last.is_some_and(|last| last >= first) => {
                Some("the chunk does not start after the last account staged")
            }
            Some(_) => None,
        };
        if let Some(reason) = broken {
            return Err(TxError::StagedParticipantsNotCanonical {
                order: order_id,
                listing: listing.clone(),
                reason,
            });
        }
        // Only people who may take part, so a staged list is bounded by the listing's
        // consents; the receipt checks every rule again when it is recorded.
        let purpose = order.purpose;
        if let Some(patient) = participants.iter().find(|patient| {
            !self
                .consents
                .get(&(**patient, listing.clone(), purpose))
                .is_some_and(|consent| consent.is_active_at(ctx.time))
        }) {
            return Err(TxError::ParticipantWithoutConsent {
                patient: *patient,
                listing: listing.clone(),
                purpose,
            });
        }
        self.staged
            .entry(key)
            .or_default()
            .extend_from_slice(participants);
        self.changed
            .insert(StateKey::Staged(order_id, listing.clone()));
        Ok(())
    }

    /// Drops every participant list staged for `order_id` (its receipt was recorded, or it
    /// was refunded or cancelled).
    fn unstage(&mut self, order_id: OrderId) {
        let staged: Vec<(OrderId, ListingId)> = self
            .staged
            .range((order_id, ListingId::new(""))..)
            .take_while(|((order, _), _)| *order == order_id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in staged {
            self.staged.remove(&key);
            self.changed.insert(StateKey::Staged(key.0, key.1));
        }
    }

    /// The order `order_id`, which must exist and be open.
    fn open_order(&self, order_id: OrderId) -> Result<&Order, TxError> {
        let order = self
            .orders
            .get(&order_id)
            .ok_or(TxError::UnknownOrder(order_id))?;
        if order.status != Settlement::Open {
            return Err(TxError::OrderNotOpen {
                order: order_id,
                status: order.status.name(),
            });
        }
        Ok(order)
    }

    fn register_committee(
        &mut self,
        signer: AccountId,
        threshold: u16,
        members: &[AccountId],
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Issuer], "issuer")?;
        if self.committee.is_some() {
            return Err(TxError::CommitteeAlreadyRegistered);
        }
        if threshold < MIN_COMMITTEE_THRESHOLD {
            return Err(TxError::InvalidCommittee(
                "the threshold must be at least 2: one member alone could decrypt",
            ));
        }
        if members.len() > MAX_COMMITTEE_MEMBERS {
            return Err(TxError::InvalidCommittee("at most 64 members"));
        }
        if usize::from(threshold) > members.len() {
            return Err(TxError::InvalidCommittee(
                "the threshold exceeds the number of members",
            ));
        }
        let distinct: BTreeSet<&AccountId> = members.iter().collect();
        if distinct.len() != members.len() {
            return Err(TxError::InvalidCommittee("an account appears twice"));
        }
        for (position, account) in members.iter().enumerate() {
            let is_node = self
                .accounts
                .get(account)
                .is_some_and(|found| found.role == Role::ComputeNode);
            if !is_node {
                return Err(TxError::CommitteeMemberNotANode {
                    // At most 64 members, so the index fits.
                    member: position as u16 + 1,
                    account: *account,
                });
            }
        }
        self.committee = Some(CommitteeRecord {
            threshold,
            members: members.to_vec(),
            registered_at: ctx.time,
        });
        self.changed.insert(StateKey::Committee);
        Ok(())
    }

    fn post_trial(
        &mut self,
        signer: AccountId,
        posting: &TrialPosting,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Buyer], "buyer")?;
        let invalid = |reason: String| Err(TxError::InvalidTrial(reason));
        let id = &posting.trial;
        let id_ok = !id.is_empty()
            && id.len() <= MAX_TRIAL_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !id_ok {
            return invalid(format!(
                "trial: the id must be 1 to {MAX_TRIAL_ID_LEN} letters, digits, `.`, `-` or `_`"
            ));
        }
        if self.trials.contains_key(id) {
            return Err(TxError::TrialExists(id.clone()));
        }
        if posting.summary.trim().is_empty() || posting.summary.len() > MAX_TRIAL_SUMMARY_LEN {
            return invalid(format!(
                "summary: 1 to {MAX_TRIAL_SUMMARY_LEN} bytes of text are required"
            ));
        }
        if posting.criteria.is_empty() || posting.criteria.len() > MAX_TRIAL_CRITERIA_LEN {
            return invalid(format!(
                "criteria: {} bytes; 1 to {MAX_TRIAL_CRITERIA_LEN} are accepted",
                posting.criteria.len()
            ));
        }
        if posting.listings.is_empty() || posting.listings.len() > MAX_TRIAL_LISTINGS {
            return invalid(format!(
                "listings: 1 to {MAX_TRIAL_LISTINGS} listings are required"
            ));
        }
        let distinct: BTreeSet<&ListingId> = posting.listings.iter().collect();
        if distinct.len() != posting.listings.len() {
            return invalid("listings: a listing appears twice".into());
        }
        for id in &posting.listings {
            let listing = self.active_listing(id)?;
            if !listing
                .terms
                .allowed_purposes
                .contains(&Purpose::TrialRecruitment)
            {
                return Err(TxError::PurposeNotAllowed {
                    listing: id.clone(),
                    purpose: Purpose::TrialRecruitment,
                });
            }
        }
        if posting.expires_at <= ctx.time {
            return Err(TxError::ExpiryNotInFuture {
                expires_at: posting.expires_at,
                now: ctx.time,
            });
        }
        if posting.expires_at - ctx.time > MAX_TRIAL_DURATION_SECS {
            return invalid(format!(
                "expires_at: a trial stays open at most {} days",
                MAX_TRIAL_DURATION_SECS / 86_400
            ));
        }
        self.trials.insert(
            id.clone(),
            TrialRecord {
                recruiter: signer,
                posting: posting.clone(),
                posted_at: ctx.time,
                replies: Vec::new(),
            },
        );
        self.changed.insert(StateKey::Trial(id.clone()));
        Ok(())
    }

    fn record_trial_reply(
        &mut self,
        signer: AccountId,
        (trial, listing): (&str, &ListingId),
        reply_hash: &Hash32,
        attestation: &[u8],
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
        let record = self
            .trials
            .get(trial)
            .ok_or_else(|| TxError::UnknownTrial(trial.to_string()))?;
        if ctx.time >= record.posting.expires_at {
            return Err(TxError::TrialExpired {
                trial: trial.to_string(),
                expires_at: record.posting.expires_at,
            });
        }
        if !record.posting.listings.contains(listing) {
            return Err(TxError::TrialNotOnListing {
                trial: trial.to_string(),
                listing: listing.clone(),
            });
        }
        let owner = self.active_listing(listing)?.owner;
        let digest = crate::tx::trial_reply_digest(chain_id, trial, listing, reply_hash);
        let attested = owner
            .verifying_key()
            .is_ok_and(|key| crate::tx::signed_by(&key, &digest, attestation));
        if !attested {
            return Err(TxError::TrialReplyNotAttested {
                trial: trial.to_string(),
                listing: listing.clone(),
            });
        }
        if record.replies.iter().any(|(_, hash)| hash == reply_hash) {
            return Err(TxError::TrialReplyRefused {
                trial: trial.to_string(),
                reason: "this reply is already recorded",
            });
        }
        if record.replies.len() >= MAX_TRIAL_REPLIES {
            return Err(TxError::TrialReplyRefused {
                trial: trial.to_string(),
                reason: "the trial holds the most replies one trial may",
            });
        }
        if let Some(record) = self.trials.get_mut(trial) {
            record.replies.push((listing.clone(), *reply_hash));
        }
        self.changed.insert(StateKey::Trial(trial.to_string()));
        Ok(())
    }

    /// At least the committee's threshold of distinct members signed exactly this receipt.
    /// Every co-signature present must verify: a bad one is refused, not skipped, so that a
    /// recorded receipt never carries a signature nobody made.
    fn check_cosignatures(
        &self,
        receipt: &QueryReceipt,
        cosignatures: &[ReceiptCosignature],
        chain_id: &Hash32,
    ) -> Result<(), TxError> {
        let committee = self.committee.as_ref().ok_or(TxError::NoCommittee)?;
        let order = receipt.order;
        let mut previous = 0u16;
        for cosignature in cosignatures {
            let member = cosignature.member;
            if member <= previous {
                return Err(TxError::BadCosignature {
                    order,
                    member,
                    problem: "is out of order or repeated (members strictly ascending)",
                });
            }
            previous = member;
            let account = committee
                .member_account(member)
                .ok_or(TxError::BadCosignature {
                    order,
                    member,
                    problem: "names no member of the registered committee",
                })?;
            let verifies = account
                .verifying_key()
                .is_ok_and(|key| receipt.cosigned_by(&key, chain_id, &cosignature.signature));
            if !verifies {
                return Err(TxError::BadCosignature {
                    order,
                    member,
                    problem: "does not verify under the member's account key",
                });
            }
        }
        if cosignatures.len() < usize::from(committee.threshold) {
            return Err(TxError::ReceiptNotCosigned {
                order,
                valid: cosignatures.len(),
                threshold: committee.threshold,
            });
        }
        Ok(())
    }

    fn commit_release(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        noise_members: &[u16],
        quorum: &[u16],
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
        let purpose = self.open_order(order_id)?.purpose;
        if self.releases.contains_key(&order_id) {
            return Err(TxError::ReleaseAlreadyCommitted(order_id));
        }
        // A feasibility search's nodes answer on their own, with no committed release; a
        // commitment would only move its refund's debit window.
        if purpose == Purpose::TrialFeasibility {
            return Err(TxError::InvalidRelease(
                "a feasibility search commits no release",
            ));
        }
        let ascending = |members: &[u16]| {
            !members.is_empty()
                && members[0] >= 1
                && members.windows(2).all(|pair| pair[0] < pair[1])
        };
        if !ascending(noise_members) {
            return Err(TxError::InvalidRelease(
                "noise members must be member indices (≥ 1), strictly ascending, at least one",
            ));
        }
        if !ascending(quorum) {
            return Err(TxError::InvalidRelease(
                "the quorum must be member indices (≥ 1), strictly ascending, at least one",
            ));
        }
        if quorum.len() > noise_members.len() {
            return Err(TxError::InvalidRelease(
                "the quorum is larger than the noise set",
            ));
        }
        if quorum
            .iter()
            .any(|member| noise_members.binary_search(member).is_err())
        {
            return Err(TxError::InvalidRelease(
                "every quorum member must have a noise share in the release",
            ));
        }
        if let Some(committee) = &self.committee {
            let size = committee.members.len();
            if noise_members
                .iter()
                .chain(quorum)
                .any(|member| usize::from(*member) > size)
            {
                return Err(TxError::InvalidRelease(
                    "a member index is beyond the registered committee",
                ));
            }
            if quorum.len() < usize::from(committee.threshold) {
                return Err(TxError::InvalidRelease(
                    "the quorum is smaller than the registered committee's threshold",
                ));
            }
        }
        self.releases.insert(
            order_id,
            ReleaseCommitment {
                noise_members: noise_members.to_vec(),
                quorum: quorum.to_vec(),
                committed_at: ctx.time,
            },
        );
        self.changed.insert(StateKey::Release(order_id));
        Ok(())
    }
}

/// The credits a settlement pays, per account (see the module documentation for the rule).
///
/// For each listing: `share = price / n` to each payee's destination and `price mod n` back to
/// the buyer, where `n` is the number of participants (at least the listing's minimum cohort
/// size, itself at least 1).
pub fn payouts(order: &Order, receipt: &ReceiptRecord) -> BTreeMap<AccountId, u64> {
    let mut credits: BTreeMap<AccountId, u64> = BTreeMap::new();
    for (ordered, settlement) in order.listings.iter().zip(&receipt.listings) {
        debug_assert_eq!(ordered.listing, settlement.listing);
        let participants = settlement.payees.len() as u64;
        let (share, remainder) = match participants {
            0 => (0, ordered.price),
            n => (ordered.price / n, ordered.price % n),
        };
        for payee in &settlement.payees {
            // Sums of parts of the escrow cannot exceed the escrow, a u64.
            *credits.entry(payee.destination).or_default() += share;
        }
        if remainder > 0 {
            *credits.entry(order.buyer).or_default() += remainder;
        }
    }
    credits.retain(|_, amount| *amount > 0);
    credits
}
