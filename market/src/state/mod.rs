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
//!
//! # Layout
//!
//! This file holds the state, the dispatch of [`State::apply`] over the actions, the hash and
//! the rows storage keeps. Each component's rules, queries and records live in their own file:
//! `accounts` (registration, deposits, balances, nonces), `listings` (listings, consent,
//! personal budgets, earnings), `orders` (orders, staging, releases, receipts, refunds,
//! payouts), `committee` and `trials`. The state's maps are `Recorded` (in `recorded`): every
//! write records its key, and [`State::take_changes`] turns the recorded keys into rows.

mod accounts;
mod committee;
mod listings;
mod orders;
mod recorded;
#[cfg(test)]
mod tests;
mod trials;

pub use accounts::Account;
pub use committee::CommitteeRecord;
pub use listings::{Consent, Listing, ListingStatus, PatientEarnings};
pub use orders::{
    payouts, ListingSettlement, Order, OrderedListing, Payee, ReceiptRecord, ReleaseCommitment,
    Settlement,
};
pub use trials::TrialRecord;

use crate::error::TxError;
use crate::hash::{Hash32, TaggedHasher, LABEL_STATE};
use crate::tx::{AccountId, Action, ListingId, OrderId, Purpose, ReceiptId, Role, VerifiedTx};
use recorded::{Recorded, RecordedCell};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where in the chain a transaction is being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockContext {
    /// Height of the block being built.
    pub height: u64,
    /// Block time, unix seconds (the sequencer's clock, signed into the header).
    pub time: u64,
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
///
/// Every map and value records its own writes (`Recorded`, `RecordedCell`), which
/// [`State::take_changes`] drains; they serialise as the plain map or value, so the hash does
/// not see them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    accounts: Recorded<AccountId, Account>,
    listings: Recorded<ListingId, Listing>,
    consents: Recorded<(AccountId, ListingId, Purpose), Consent>,
    /// ε (micro) debited by recorded receipts that named the patient, per listing, over every
    /// purpose. Never reset: revoking and granting again keeps it.
    personal_spent: Recorded<(AccountId, ListingId), u64>,
    orders: Recorded<OrderId, Order>,
    receipts: Recorded<ReceiptId, ReceiptRecord>,
    total_issued: RecordedCell<u64>,
    /// The committed release of each order that has one. Hashed only when not empty, so that
    /// ledgers written before the field existed keep their state hashes.
    #[serde(skip_serializing_if = "Recorded::is_empty", default)]
    releases: Recorded<OrderId, ReleaseCommitment>,
    /// The result key of each order placed with one (`OrderQueryFor`). Hashed only when not
    /// empty, like `releases`.
    #[serde(skip_serializing_if = "Recorded::is_empty", default)]
    result_keys: Recorded<OrderId, Vec<u8>>,
    /// The key committee, once registered. Hashed only when present, like `releases`.
    #[serde(skip_serializing_if = "RecordedCell::is_none", default)]
    committee: RecordedCell<Option<CommitteeRecord>>,
    /// Trials posted for recruitment, by id. Hashed only when not empty, like `releases`.
    #[serde(skip_serializing_if = "Recorded::is_empty", default)]
    trials: Recorded<String, TrialRecord>,
    /// Participants staged for the receipts of open orders, per order and listing
    /// ([`Action::StageParticipants`](crate::tx::Action::StageParticipants)). Hashed only when
    /// not empty, like `releases`.
    #[serde(skip_serializing_if = "Recorded::is_empty", default)]
    staged: Recorded<(OrderId, ListingId), Vec<AccountId>>,
    /// Orders whose release was committed with its cohort attested, with the contribution
    /// hash of each listing's part, in the order's listing order: their staged lists are
    /// exactly who is in the release, and their receipts must be over these contributions.
    /// Hashed only when not empty, like `releases`.
    #[serde(skip_serializing_if = "Recorded::is_empty", default)]
    attested_releases: Recorded<OrderId, Vec<(ListingId, Hash32)>>,
}

impl State {
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

    /// Drains the keys written since the last call, with their encoded values, for storage,
    /// in `StateKey` order. An empty value means the entry was removed (no stored value encodes
    /// to zero bytes).
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        fn encoded<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
            match postcard::to_stdvec(value) {
                Ok(bytes) => bytes,
                // Serialising into a Vec cannot fail for these types.
                Err(error) => unreachable!("state entry serialisation failed: {error}"),
            }
        }
        // Every field, named: a field added to the state cannot be left out of its rows.
        let State {
            accounts,
            listings,
            consents,
            personal_spent,
            orders,
            receipts,
            total_issued,
            releases,
            result_keys,
            committee,
            trials,
            staged,
            attested_releases,
        } = self;
        // `None`: a key written but no longer present was removed.
        let mut changes: Vec<(StateKey, Option<Vec<u8>>)> = Vec::new();
        changes.extend(
            accounts
                .take_written()
                .map(|(id, value)| (StateKey::Account(id), value.map(encoded))),
        );
        changes.extend(
            listings
                .take_written()
                .map(|(id, value)| (StateKey::Listing(id), value.map(encoded))),
        );
        changes.extend(
            consents
                .take_written()
                .map(|((patient, listing, purpose), value)| {
                    (
                        StateKey::Consent(patient, listing, purpose),
                        value.map(encoded),
                    )
                }),
        );
        changes.extend(
            orders
                .take_written()
                .map(|(id, value)| (StateKey::Order(id), value.map(encoded))),
        );
        changes.extend(
            receipts
                .take_written()
                .map(|(id, value)| (StateKey::Receipt(id), value.map(encoded))),
        );
        changes.extend(
            total_issued
                .take_written()
                .map(|value| (StateKey::TotalIssued, Some(encoded(value)))),
        );
        changes.extend(
            personal_spent
                .take_written()
                .map(|((patient, listing), value)| {
                    (
                        StateKey::PersonalSpent(patient, listing),
                        value.map(encoded),
                    )
                }),
        );
        changes.extend(
            releases
                .take_written()
                .map(|(id, value)| (StateKey::Release(id), value.map(encoded))),
        );
        changes.extend(
            result_keys
                .take_written()
                .map(|(id, value)| (StateKey::ResultKey(id), value.map(encoded))),
        );
        changes.extend(
            committee
                .take_written()
                .map(|value| (StateKey::Committee, value.as_ref().map(encoded))),
        );
        changes.extend(
            trials
                .take_written()
                .map(|(id, value)| (StateKey::Trial(id), value.map(encoded))),
        );
        changes.extend(staged.take_written().map(|((order, listing), value)| {
            (StateKey::Staged(order, listing), value.map(encoded))
        }));
        changes.extend(
            attested_releases
                .take_written()
                .map(|(order, value)| (StateKey::AttestedRelease(order), value.map(encoded))),
        );
        // Rows are written in key order, whichever map they come from.
        changes.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
        changes
            .into_iter()
            .map(|(key, value)| (encoded(&key), value.unwrap_or_default()))
            .collect()
    }

    /// Rebuilds a state from stored entries (as produced by [`State::take_changes`]). The
    /// entries are stored already: nothing is recorded as written.
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
                    state.accounts.insert_stored(*id, value(&key, value_bytes)?);
                }
                StateKey::Listing(id) => {
                    state
                        .listings
                        .insert_stored(id.clone(), value(&key, value_bytes)?);
                }
                StateKey::Consent(p, l, u) => {
                    state
                        .consents
                        .insert_stored((*p, l.clone(), *u), value(&key, value_bytes)?);
                }
                StateKey::Order(id) => {
                    state.orders.insert_stored(*id, value(&key, value_bytes)?);
                }
                StateKey::Receipt(id) => {
                    state.receipts.insert_stored(*id, value(&key, value_bytes)?);
                }
                StateKey::TotalIssued => state.total_issued.set_stored(value(&key, value_bytes)?),
                StateKey::PersonalSpent(p, l) => {
                    state
                        .personal_spent
                        .insert_stored((*p, l.clone()), value(&key, value_bytes)?);
                }
                StateKey::Release(id) => {
                    state.releases.insert_stored(*id, value(&key, value_bytes)?);
                }
                StateKey::ResultKey(id) => {
                    state
                        .result_keys
                        .insert_stored(*id, value(&key, value_bytes)?);
                }
                StateKey::Committee => state.committee.set_stored(Some(value(&key, value_bytes)?)),
                StateKey::Trial(id) => {
                    state
                        .trials
                        .insert_stored(id.clone(), value(&key, value_bytes)?);
                }
                StateKey::Staged(order, listing) => {
                    state
                        .staged
                        .insert_stored((*order, listing.clone()), value(&key, value_bytes)?);
                }
                StateKey::AttestedRelease(order) => {
                    state
                        .attested_releases
                        .insert_stored(*order, value(&key, value_bytes)?);
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
                    // A refused consent registers no one: the account was not there before
                    // this transaction, so storage sees neither it nor its removal.
                    if consent_registers {
                        self.accounts.remove_unrecorded(&signer);
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
                self.record_uncosigned_receipt(signer, ReceiptId(tx.id()), receipt, chain_id, ctx)?
            }
            Action::RecordCosignedReceipt {
                receipt,
                cosignatures,
            } => self.record_cosigned_receipt(
                signer,
                ReceiptId(tx.id()),
                (receipt, cosignatures),
                chain_id,
                ctx,
            )?,
            Action::RecordFeasibility(receipt) => {
                self.record_feasibility(signer, ReceiptId(tx.id()), receipt, chain_id, ctx)?
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
            } => self.commit_attested_release(
                signer,
                *order,
                (noise_members, quorum),
                listings,
                chain_id,
                ctx,
            )?,
            Action::OrderQueryFor {
                query_hash,
                listings,
                purpose,
                epsilon_micro,
                expires_at,
                result_key,
            } => self.order_query_for(
                signer,
                OrderId(tx.id()),
                *query_hash,
                listings,
                *purpose,
                *epsilon_micro,
                *expires_at,
                result_key,
                ctx,
            )?,
        }

        // The signer exists now (a self-registration has just created it).
        if let Some(account) = self.accounts.get_mut(&signer) {
            account.next_nonce = next_nonce;
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
                || self.total_balances() + self.escrow_held() == u128::from(*self.total_issued),
            "credits are conserved"
        );
        Ok(())
    }
}
