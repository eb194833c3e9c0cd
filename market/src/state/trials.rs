//! Trials posted for recruitment, and the replies recorded for them.

use super::{BlockContext, State};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::tx::{
    AccountId, ListingId, Purpose, Role, TrialPosting, MAX_TRIAL_CRITERIA_LEN,
    MAX_TRIAL_DURATION_SECS, MAX_TRIAL_ID_LEN, MAX_TRIAL_LISTINGS, MAX_TRIAL_REPLIES,
    MAX_TRIAL_SUMMARY_LEN,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

impl State {
    /// A posted trial.
    pub fn trial(&self, id: &str) -> Option<&TrialRecord> {
        self.trials.get(id)
    }

    /// Every posted trial, by id.
    pub fn trials(&self) -> impl Iterator<Item = &TrialRecord> {
        self.trials.values()
    }

    pub(super) fn post_trial(
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
        Ok(())
    }

    pub(super) fn record_trial_reply(
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
        Ok(())
    }
}
