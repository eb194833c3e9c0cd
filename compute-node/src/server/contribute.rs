//! A node's contribution to an order: its consenting patients' statistics, encrypted under
//! the collective key and range-proven, with its own attestation of who took part.

use std::sync::Arc;

use crate::error::NodeError;
use cohortex_proto::v1::{ContributeResponse, ContributionParticipantsResponse};
use cohortex_types::text::bounded_message;
use market::{AccountId, ListingContribution, ListingId};
use rand::rngs::OsRng;
use zk::Wire;

use super::{order_key, Fault, NodeService, NodeState};
use crate::calls::{ContributeCall, ParticipantsPageCall};
use crate::contribution::build_contribution;
use crate::evaluate::evaluate;
use crate::protocol::contribution_context;
use crate::sql::compile;

/// Most participants one message carries (1 MiB of accounts): a contribution's first page, or
/// one `ContributionParticipants` answer.
pub const PARTICIPANTS_PAGE: usize = 32_768;

/// Contributions whose participant lists (those longer than a page) a node keeps for paging:
/// the latest ones.
pub const PARTICIPANT_LISTS_KEPT: usize = 16;

/// Keeps `participants`, the list of this node's answer to `order` (a contribution or a
/// feasibility count), for `ContributionParticipants` if it is longer than one page: only the
/// latest [`PARTICIPANT_LISTS_KEPT`] lists are kept.
pub(super) fn keep_for_paging(state: &mut NodeState, order: &[u8], participants: &[Vec<u8>]) {
    if participants.len() <= PARTICIPANTS_PAGE {
        return;
    }
    if state.participant_lists.len() >= PARTICIPANT_LISTS_KEPT {
        state.participant_lists.pop_front();
    }
    let compact: Vec<[u8; 32]> = participants
        .iter()
        .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .collect();
    state
        .participant_lists
        .push_back((order.to_vec(), Arc::new(compact)));
}

/// A node's claim to answer one order, with its contribution or its feasibility count: taken
/// under the lock before any work, so that two concurrent calls cannot both answer; kept once
/// the answer leaves, and given back (so the order may be asked again) if it fails.
pub(super) struct OrderClaim<'a> {
    node: &'a NodeService,
    order: Vec<u8>,
    kept: bool,
}

impl<'a> OrderClaim<'a> {
    /// Claims `order`, or refuses if this node answered it or is answering it.
    pub(super) fn take(node: &'a NodeService, order: &[u8]) -> Result<Self, NodeError> {
        if !node.lock()?.contributed.insert(order.to_vec()) {
            return Err(NodeError::already_answered(
                "order_id: this node already answered the order, or is answering it",
            ));
        }
        Ok(Self {
            node,
            order: order.to_vec(),
            kept: false,
        })
    }

    /// The order claimed.
    pub(super) fn order(&self) -> &[u8] {
        &self.order
    }

    /// The answer is leaving: the order stays answered.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for OrderClaim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            if let Ok(mut state) = self.node.lock() {
                state.contributed.remove(&self.order);
            }
        }
    }
}

impl NodeService {
    /// A page of the participants of this node's answer to an order (its contribution or its
    /// feasibility count), from `offset` on.
    pub(super) fn contribution_participants(
        &self,
        call: ParticipantsPageCall,
    ) -> Result<ContributionParticipantsResponse, NodeError> {
        let order = call.order.0 .0.as_bytes().to_vec();
        let list = self
            .lock()?
            .participant_lists
            .iter()
            .find(|(listed, _)| *listed == order)
            .map(|(_, list)| Arc::clone(list))
            .ok_or_else(|| {
                NodeError::not_found(
                    "order_id: this node holds no participant list for the order (it did not \
                     contribute to it, or contributed to many orders since)",
                )
            })?;
        let offset = usize::try_from(call.offset)
            .ok()
            .filter(|offset| *offset <= list.len())
            .ok_or_else(|| {
                NodeError::out_of_range(format!(
                    "offset: the contribution has {} participants",
                    list.len()
                ))
            })?;
        let end = list.len().min(offset + PARTICIPANTS_PAGE);
        Ok(ContributionParticipantsResponse {
            participants: list[offset..end].iter().map(|key| key.to_vec()).collect(),
        })
    }

    /// Evaluates the order's query over the patients who consent now and proves the result,
    /// once per order; the buyer's signed order on the ledger, not the coordinator, says what
    /// is asked, for which purpose and at what ε.
    pub(super) async fn contribution(
        &self,
        call: ContributeCall,
    ) -> Result<ContributeResponse, NodeError> {
        let order = call.order.0 .0.as_bytes().to_vec();
        if call.listing.0 != self.config.listing {
            return Err(NodeError::bad_request(format!(
                "listing: this node serves `{}`",
                self.config.listing
            )));
        }
        let collective_key = {
            let state = self.lock()?;
            let Some((_, committee)) = &state.key else {
                return Err(NodeError::not_ready(
                    "no collective key yet: the committee's DKG has not run",
                ));
            };
            *committee.collective_key()
        };
        // Claimed before any work, under the lock: two concurrent calls for one order must not
        // each make (and attest) a contribution.
        let claim = OrderClaim::take(self, &order)?;
        let plan = compile(&call.sql, self.vault.schema()).map_err(|error| {
            NodeError::bad_request(format!("sql: {}", bounded_message(&error.to_string())))
        })?;
        // The buyer's signed order, not the coordinator, says what is asked, for which
        // purpose, and how much ε each included patient spends.
        let facts = self.order_facts(&order, &call.sql).await?;
        if !facts.listings.contains(&self.config.listing) {
            return Err(NodeError::not_ready(format!(
                "order_id: the order does not name listing {}",
                self.config.listing
            )));
        }
        if cohortex_types::purpose_name(facts.purpose) != call.purpose {
            return Err(NodeError::bad_request(format!(
                "purpose: the order's purpose is {}",
                cohortex_types::purpose_name(facts.purpose)
            )));
        }
        if let Some(Fault::SlowToCompute(millis)) = self.fault() {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
        // A patient whose personal limit the order would exceed is left out, exactly like one
        // who never consented: the release cannot tell them apart.
        let consents = self
            .current_consents(facts.purpose, facts.epsilon_micro, &facts.listings)
            .await?;
        let vault = Arc::clone(&self.vault);
        let purpose = call.purpose.clone();
        let context_order = match self.fault() {
            Some(Fault::ProveForAnotherQuery) => vec![0xEE; 32],
            _ => order.clone(),
        };
        let context = contribution_context(&context_order, &self.config.listing)?;
        let fault = self.fault();
        let (contribution, participants) = tokio::task::spawn_blocking(move || {
            let statistics = evaluate(&plan, &vault, &consents, &purpose)
                .map_err(|error| NodeError::internal(format!("evaluation failed: {error}")))?;
            let mut contribution = build_contribution(
                &context,
                &collective_key,
                &plan,
                &statistics,
                vault.capacity(),
                &mut OsRng,
            )
            .map_err(|error| NodeError::internal(format!("proving failed: {error}")))?;
            if fault == Some(Fault::InflateAfterProving) {
                contribution.ciphertexts[1] = contribution.ciphertexts[1]
                    .add_plaintext(&curve25519_dalek::Scalar::from(1_000_000_000u64));
            }
            let mut participants: Vec<Vec<u8>> = vault
                .records()
                .iter()
                .filter(|record| consents.covers(&record.patient_id, &purpose))
                .filter_map(|record| record.patient_key.as_deref())
                .filter_map(|key| hex::decode(key).ok())
                .collect();
            participants.sort();
            participants.dedup();
            Ok::<_, NodeError>((contribution, participants))
        })
        .await
        .map_err(|error| NodeError::internal(format!("worker failed: {error}")))??;
        let ciphertexts: Vec<Vec<u8>> = contribution
            .ciphertexts
            .iter()
            .map(Wire::to_bytes)
            .collect();
        let proof = contribution.proof.to_bytes();
        // The node's own word on its part of the receipt: who took part, the capacity its
        // proof is bound to, and the hash of what it sends. The ledger records no receipt
        // without it, so the market cannot pay, debit or name anyone the node did not.
        let mut attested = ListingContribution {
            listing: ListingId::new(self.config.listing.clone()),
            epsilon_debited_micro: facts.epsilon_micro,
            participants: participants
                .iter()
                .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
                .map(AccountId)
                .collect(),
            capacity: self.vault.capacity(),
            contribution_hash: market::hash::contribution_hash(&ciphertexts, &proof),
            attestation: Vec::new(),
        };
        attested.attest(
            &self.config.account,
            &self.config.ledger.chain_id,
            &order_key(&order)?,
            &market::hash::query_hash(&call.sql),
        );
        let response = ContributeResponse {
            ciphertexts,
            proof,
            capacity: self.vault.capacity(),
            participants: participants[..participants.len().min(PARTICIPANTS_PAGE)].to_vec(),
            attestation: attested.attestation,
            participant_count: participants.len() as u64,
        };
        let mut state = self.lock()?;
        keep_for_paging(&mut state, &order, &participants);
        claim.keep();
        if self.fault() == Some(Fault::ReplayFirstContribution) {
            let first = state
                .first_contribution
                .get_or_insert_with(|| response.clone());
            return Ok(first.clone());
        }
        Ok(response)
    }
}
