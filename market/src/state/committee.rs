//! The key committee: its registration, and the check of receipt co-signatures.

use super::{BlockContext, State};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::tx::{
    AccountId, QueryReceipt, ReceiptCosignature, Role, MAX_COMMITTEE_MEMBERS,
    MIN_COMMITTEE_THRESHOLD,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

impl State {
    /// The key committee registered on the ledger, if any.
    pub fn committee(&self) -> Option<&CommitteeRecord> {
        self.committee.as_ref()
    }

    pub(super) fn register_committee(
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
        self.committee.set(Some(CommitteeRecord {
            threshold,
            members: members.to_vec(),
            registered_at: ctx.time,
        }));
        Ok(())
    }

    /// At least the committee's threshold of distinct members signed exactly this receipt.
    /// Every co-signature present must verify: a bad one is refused, not skipped, so that a
    /// recorded receipt never carries a signature nobody made.
    pub(super) fn check_cosignatures(
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
}
