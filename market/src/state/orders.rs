//! Orders and receipts: placing an order (with or without a result key), staging its
//! participants, committing its release (plain or with its cohort attested), recording its
//! receipt, and ending it by settlement (the payout rule), refund or cancellation.

use super::{BlockContext, State};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::tx::{
    AccountId, AttestationKind, Compensation, ListingContribution, ListingId, OrderId,
    PayoutChoice, Purpose, QueryReceipt, ReceiptCosignature, ReceiptId, Role,
    MAX_LISTINGS_PER_ORDER, MAX_ORDER_LIFETIME_SECS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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

impl State {
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

    /// A receipt.
    pub fn receipt(&self, id: &ReceiptId) -> Option<&ReceiptRecord> {
        self.receipts.get(id)
    }

    /// Credits held in escrow by open and computed orders.
    pub fn escrow_held(&self) -> u128 {
        self.orders
            .values()
            .filter(|o| matches!(o.status, Settlement::Open | Settlement::Computed { .. }))
            .map(|o| u128::from(o.escrow))
            .sum()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn order_query(
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
        }
        if let Some(buyer) = self.accounts.get_mut(&signer) {
            buyer.balance = balance - escrow;
        }
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
        Ok(())
    }

    /// [`State::order_query`] for an order whose release is re-encrypted to `result_key`,
    /// which is recorded with it (`OrderQueryFor`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn order_query_for(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        query_hash: Hash32,
        listing_ids: &[ListingId],
        purpose: Purpose,
        epsilon_micro: u64,
        expires_at: u64,
        result_key: &[u8],
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        if result_key.is_empty() || result_key.len() > crate::tx::MAX_RESULT_KEY_LEN {
            return Err(TxError::InvalidOrder(
                "the result key must be 1 to 64 bytes (a CXZK-encoded public key)",
            ));
        }
        self.order_query(
            signer,
            order_id,
            query_hash,
            listing_ids,
            purpose,
            epsilon_micro,
            expires_at,
            ctx,
        )?;
        self.result_keys.insert(order_id, result_key.to_vec());
        Ok(())
    }

    /// Records a receipt with no co-signatures (`RecordReceipt`): only while no committee is
    /// registered. Once one is, a receipt needs its members' co-signatures.
    pub(super) fn record_uncosigned_receipt(
        &mut self,
        signer: AccountId,
        receipt_id: ReceiptId,
        receipt: &QueryReceipt,
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        if let Some(committee) = self.committee.as_ref() {
            return Err(TxError::ReceiptNotCosigned {
                order: receipt.order,
                valid: 0,
                threshold: committee.threshold,
            });
        }
        self.record_receipt(signer, receipt_id, receipt, chain_id, ctx)
    }

    /// Records a receipt co-signed by at least the registered committee's threshold
    /// (`RecordCosignedReceipt`).
    pub(super) fn record_cosigned_receipt(
        &mut self,
        signer: AccountId,
        receipt_id: ReceiptId,
        (receipt, cosignatures): (&QueryReceipt, &[ReceiptCosignature]),
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.check_cosignatures(receipt, cosignatures, chain_id)?;
        self.record_receipt(signer, receipt_id, receipt, chain_id, ctx)
    }

    /// Records the receipt of a feasibility search (`RecordFeasibility`), whose parts are
    /// attested as noisy counts.
    pub(super) fn record_feasibility(
        &mut self,
        signer: AccountId,
        receipt_id: ReceiptId,
        receipt: &QueryReceipt,
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
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
            receipt_id,
            receipt,
            chain_id,
            ctx,
        )
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
        self.unstage(order_id);
        Ok(())
    }

    pub(super) fn settle(
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
        }
        if let Some(order) = self.orders.get_mut(&order_id) {
            order.status = Settlement::Settled {
                receipt: receipt_id,
            };
        }
        Ok(())
    }

    pub(super) fn refund(
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
    pub(super) fn cancel_order(
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
        }
        if let Some(order) = self.orders.get_mut(&order_id) {
            order.status = Settlement::Refunded;
        }
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

    /// Appends `participants` to the list staged for `order_id`'s receipt on `listing`.
    pub(super) fn stage_participants(
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
            .get_or_insert_default(key)
            .extend_from_slice(participants);
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

    pub(super) fn commit_release(
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
        if let Some(committee) = self.committee.as_ref() {
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
        Ok(())
    }

    /// Commits the release of `order_id` with its cohort attested (`CommitAttestedRelease`):
    /// the cohort is checked as its receipt will be, then the release is committed and each
    /// listing's contribution hash recorded.
    pub(super) fn commit_attested_release(
        &mut self,
        signer: AccountId,
        order_id: OrderId,
        (noise_members, quorum): (&[u16], &[u16]),
        parts: &[ListingContribution],
        chain_id: &Hash32,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::CommitteeMember], "committee member")?;
        self.check_release_cohort(order_id, parts, chain_id, ctx)?;
        self.commit_release(signer, order_id, noise_members, quorum, ctx)?;
        let hashes = parts
            .iter()
            .map(|part| (part.listing.clone(), part.contribution_hash))
            .collect();
        self.attested_releases.insert(order_id, hashes);
        Ok(())
    }
}

/// The credits a settlement pays, per account (see the payout rule in the
/// [module documentation](crate::state)).
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
