//! Listings and consent: publication, updates and withdrawal of listings; grants and
//! revocations of consent; personal privacy budgets; what patients earned.

use super::{BlockContext, Settlement, State};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::tx::{
    AccountId, Compensation, ListingId, ListingTerms, PayoutChoice, Purpose, Role,
    MAX_LISTING_ID_LEN,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

/// Credits the settled queries paid for one patient's shares (see [`State::earnings_of`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatientEarnings {
    /// Shares paid to the patient's own account.
    pub paid: u64,
    /// Shares paid to a fund instead.
    pub donated: u64,
}

const REQUIRES_LISTER: &str = "compute node or patient";

impl State {
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
    /// [`payouts`](super::payouts) (each participant's share of a listing is `price / n`):
    /// nothing extra is stored, so the state and its hash are unchanged. A share counts as
    /// donated when it went to a fund, by the patient's choice or because the listing is a
    /// donation listing. Linear in the number of orders.
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

    pub(super) fn active_listing(&self, id: &ListingId) -> Result<&Listing, TxError> {
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

    pub(super) fn publish(
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
        Ok(())
    }

    pub(super) fn update(
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
        Ok(())
    }

    pub(super) fn withdraw(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.owned_active_listing(signer, id)?;
        if let Some(listing) = self.listings.get_mut(id) {
            listing.status = ListingStatus::Withdrawn { at: ctx.time };
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grant(
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
        Ok(())
    }

    pub(super) fn revoke(
        &mut self,
        signer: AccountId,
        id: &ListingId,
        purpose: Purpose,
        ctx: &BlockContext,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Patient], "patient")?;
        let key = (signer, id.clone(), purpose);
        // Checked before the consent is taken mutably: taking it records it as written.
        let active = self
            .consents
            .get(&key)
            .is_some_and(|consent| consent.is_active_at(ctx.time));
        if !active {
            return Err(TxError::NoActiveConsent {
                patient: signer,
                listing: id.clone(),
                purpose,
            });
        }
        if let Some(consent) = self.consents.get_mut(&key) {
            consent.revoked_at = Some(ctx.time);
        }
        Ok(())
    }

    /// Adds `epsilon_micro` to what `patient` has spent in `listing`. Saturates only past
    /// u64::MAX micro-ε, far beyond any limit.
    pub(super) fn debit_person(
        &mut self,
        patient: AccountId,
        listing: &ListingId,
        epsilon_micro: u64,
    ) {
        let spent = self
            .personal_spent
            .get_or_insert_default((patient, listing.clone()));
        *spent = spent.saturating_add(epsilon_micro);
    }

    /// Debits `epsilon_micro` from the personal budget of every person whose consent to
    /// `purpose` in one of `listings` held at some block time in `[from, until]`: once per
    /// person, in the first of `listings` where it held, as a node counts a person once per
    /// order, in the earliest listing.
    pub(super) fn debit_consents_held_between(
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
}
