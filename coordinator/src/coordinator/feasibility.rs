//! Blind feasibility orders (feature `tfhe`): the coordinator keeps recruiters' evaluation
//! keys, hands each listing's node the encrypted criteria (sending the key first when the
//! node lacks it), checks every node's signed part, and records the receipt and settlement.
//!
//! There is no committee step: each node computes, noises and releases its own count under
//! the recruiter's key, and signs its part under the feasibility label, so the ledger takes
//! the receipt on the nodes' signatures (`RecordFeasibility`).

use std::sync::Arc;

use crate::error::CoordinatorError;
use cohortex_proto::v1::{
    EncryptedCriteria, EvaluationKeyChunk, FeasibilityRequest, FeasibilityResponse, OrderState,
    SiteCount,
};
use market::hash::tagged_hash;
use market::{
    AccountId, Action, AttestationKind, ListingContribution, ListingId, OrderId, QueryReceipt,
    ReceiptId, TxId, MAX_STAGED_PER_TX,
};
use tonic::Status;

use super::nodes::with_evaluation_key;
use super::order::failed_reports;
use super::{poisoned, Coordinator, NodeOutcome, NodeReport, OrderRecord, ReleaseIdentity};
use crate::error::OrderError;

pub use compute_node::feasibility_wire::KEY_CHUNK_BYTES;

/// An evaluation key's chunks, in order, as a stream for a gRPC call.
pub fn key_chunks(bytes: &[u8]) -> impl tokio_stream::Stream<Item = EvaluationKeyChunk> {
    tokio_stream::iter(compute_node::feasibility_wire::evaluation_key_chunks(bytes))
}

impl Coordinator {
    /// Keeps `owner`'s evaluation key (already checked to decode) by its fingerprint, within
    /// the recruiter's quota ([`crate::evaluation_keys`]).
    pub fn keep_evaluation_key(
        &self,
        owner: AccountId,
        fingerprint: [u8; 32],
        bytes: Vec<u8>,
    ) -> Result<(), CoordinatorError> {
        self.evaluation_keys.lock().map_err(|_| poisoned())?.keep(
            owner,
            fingerprint,
            bytes,
            std::time::Instant::now(),
        )
    }

    /// The bytes of the evaluation key with this fingerprint, if the market holds it.
    pub fn evaluation_key(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Arc<Vec<u8>>>, CoordinatorError> {
        Ok(self
            .evaluation_keys
            .lock()
            .map_err(|_| poisoned())?
            .get(fingerprint, std::time::Instant::now()))
    }

    /// A turn to read an evaluation-key upload: at most
    /// [`CONCURRENT_UPLOADS`](crate::evaluation_keys::CONCURRENT_UPLOADS) are read at once.
    pub async fn evaluation_key_upload_turn(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, CoordinatorError> {
        Arc::clone(&self.evaluation_key_uploads)
            .acquire_owned()
            .await
            .map_err(|_| CoordinatorError::unavailable("the market is shutting down"))
    }

    /// Records a new feasibility order (already escrowed on the ledger) and computes it in
    /// the background.
    pub fn start_feasibility(
        self: &Arc<Self>,
        order: TxId,
        buyer: AccountId,
        criteria: EncryptedCriteria,
        key: Arc<Vec<u8>>,
        listings: Vec<ListingId>,
        epsilon_micro: u64,
    ) -> Result<(), CoordinatorError> {
        let query_hash = compute_node::feasibility_wire::criteria_hash(&criteria);
        self.orders.lock().map_err(|_| poisoned())?.insert(
            order,
            OrderRecord {
                buyer,
                state: OrderState::Computing,
                message: "computing".into(),
                nodes: Vec::new(),
                plan: String::new(),
                result: Vec::new(),
                receipt: None,
                committee_used: Vec::new(),
                epsilon_micro,
                noise_members: Vec::new(),
                suppressed: Vec::new(),
                identity: ReleaseIdentity {
                    buyer,
                    query_hash,
                    listings: listings.clone(),
                    purpose: market::Purpose::TrialFeasibility,
                    epsilon_micro,
                    result_key: criteria.evaluation_key.clone(),
                },
                completed_at: None,
                site_counts: Vec::new(),
                phases: Vec::new(),
            },
        );
        let coordinator = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = coordinator
                .compute_feasibility(order, criteria, key, &listings, epsilon_micro)
                .await;
            if let Err(message) = outcome {
                tracing::warn!(order = %hex::encode(order.0.as_bytes()), %message, "feasibility order failed; refunding");
                coordinator.refund_failed(order, message).await;
            }
        });
        Ok(())
    }

    /// Asks one node for its count, sending it the evaluation key first if it lacks it, and
    /// reads the rest of its participant list.
    async fn node_feasibility(
        &self,
        endpoint: &str,
        request: FeasibilityRequest,
        key: &Arc<Vec<u8>>,
    ) -> Result<FeasibilityResponse, Status> {
        let nodes = self.nodes();
        let pages = super::order::PageSource {
            nodes: Arc::clone(&nodes),
            endpoint: endpoint.to_string(),
            order_id: request.order_id.clone(),
        };
        let mut response = with_evaluation_key(
            nodes.as_ref(),
            endpoint,
            || Ok(Arc::clone(key)),
            || nodes.feasibility(endpoint, request.clone()),
        )
        .await?;
        // The rest of a long participant list, a page at a time.
        pages
            .fill(
                response.participant_count,
                response.capacity,
                &mut response.participants,
            )
            .await?;
        Ok(response)
    }

    async fn compute_feasibility(
        self: &Arc<Self>,
        order: TxId,
        criteria: EncryptedCriteria,
        key: Arc<Vec<u8>>,
        listings: &[ListingId],
        epsilon_micro: u64,
    ) -> Result<(), OrderError> {
        let order_id = OrderId(order);
        let query_hash = compute_node::feasibility_wire::criteria_hash(&criteria);
        let mut tasks = tokio::task::JoinSet::new();
        for (position, listing) in listings.iter().enumerate() {
            let info = self
                .listing(&listing.0)?
                .ok_or_else(|| OrderError::NoNode(listing.to_string()))?;
            let request = FeasibilityRequest {
                order_id: order.0.as_bytes().to_vec(),
                listing: listing.0.clone(),
                criteria: Some(criteria.clone()),
            };
            let key = Arc::clone(&key);
            let coordinator = Arc::clone(self);
            tasks.spawn(async move {
                let answer = coordinator
                    .node_feasibility(&info.endpoint, request, &key)
                    .await;
                (position, answer)
            });
        }
        let mut answers = std::collections::BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (position, answer) = joined
                .map_err(|error| OrderError::Internal(format!("node task failed: {error}")))?;
            answers.insert(position, answer);
        }
        let (chain_id, owners) = self.listing_owners(listings).await?;

        let mut reports = Vec::new();
        let mut parts = Vec::new();
        let mut site_counts = Vec::new();
        for (position, listing) in listings.iter().enumerate() {
            let mut report = NodeReport::accepted(&listing.0);
            match answers.remove(&position) {
                Some(Ok(response)) => {
                    let participants: Option<Vec<AccountId>> = response
                        .participants
                        .iter()
                        .map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok().map(AccountId))
                        .collect();
                    let checked = zk::fhe::EncryptedCount::from_bytes(&response.noisy_count);
                    match (participants, checked) {
                        (Some(participants), Ok(_)) => {
                            report.participants = participants.len() as u64;
                            let part = ListingContribution {
                                listing: listing.clone(),
                                epsilon_debited_micro: epsilon_micro,
                                participants,
                                capacity: response.capacity,
                                contribution_hash: market::hash::contribution_hash(
                                    std::slice::from_ref(&response.noisy_count),
                                    &[],
                                ),
                                attestation: response.attestation.clone(),
                            };
                            let signed = owners[position]
                                .and_then(|owner| owner.verifying_key().ok())
                                .is_some_and(|key| {
                                    part.attested_as(
                                        AttestationKind::Feasibility,
                                        &key,
                                        &chain_id,
                                        &order_id,
                                        &query_hash,
                                    )
                                });
                            if signed {
                                parts.push(part);
                                site_counts.push(SiteCount {
                                    listing: listing.0.clone(),
                                    noisy_count: response.noisy_count,
                                });
                            } else {
                                report.mark(
                                    NodeOutcome::Rejected,
                                    "attestation: not the listing owner's signature over this \
                                     order's count and participants",
                                );
                            }
                        }
                        (None, _) => {
                            report.mark(NodeOutcome::Rejected, "participants: not 32-byte accounts")
                        }
                        (_, Err(error)) => {
                            report.mark(NodeOutcome::Rejected, format!("noisy_count: {error}"))
                        }
                    }
                }
                Some(Err(status)) => {
                    report.mark(NodeOutcome::of_refusal(&status), status.message())
                }
                None => report.mark(NodeOutcome::Unavailable, "no answer"),
            }
            reports.push(report);
        }
        let _ = self.update_order(order, |record| record.nodes = reports.clone());
        let failed = failed_reports(&reports);
        if !failed.is_empty() {
            return Err(OrderError::Counts(failed));
        }
        let counts: Vec<u8> = site_counts
            .iter()
            .flat_map(|site| site.noisy_count.iter().copied())
            .collect();
        // A listing with more participants than one staging transaction holds has them staged
        // on the ledger first, in the receipt's block; its part of the receipt then names none
        // and stands for them (the ledger checks the node's attestation over the staged list).
        // No transaction grows with the number of patients.
        let staged: Vec<(ListingId, Vec<AccountId>)> = parts
            .iter_mut()
            .filter(|part| part.participants.len() > MAX_STAGED_PER_TX)
            .map(|part| (part.listing.clone(), std::mem::take(&mut part.participants)))
            .collect();
        let receipt = QueryReceipt {
            order: order_id,
            query_hash,
            contributions_root: market::hash::contributions_root(
                parts.iter().map(|part| &part.contribution_hash),
            ),
            // No proofs: each node's count is vouched for by its own signature.
            proofs_hash: tagged_hash(cohortex_types::labels::LABEL_PROOFS, &[]),
            result_hash: tagged_hash(cohortex_types::labels::LABEL_RESULT, &[&counts]),
            listings: parts,
        };
        let sites = site_counts.len();
        let completed = self.completed_record(order, |record| {
            record.state = OrderState::Completed;
            record.message = format!(
                "{sites} listing(s) released a noisy count under the recruiter's key (ε = {}); receipt recorded and escrow settled",
                epsilon_micro as f64 / 1e6
            );
            record.site_counts = site_counts;
            record.completed_at = Some(market::server::auth::unix_now());
        })?;
        self.keep_completed(order, &completed).await?;
        let recorded = if staged.is_empty() {
            self.submit_own(Action::RecordFeasibility(receipt))
                .await
                .map_err(OrderError::refused("receipt"))?
        } else {
            self.stage_then(
                order_id,
                &staged,
                Action::RecordFeasibility(receipt),
                "staging the participants and recording the receipt",
            )
            .await?
        };
        self.submit_own(Action::Settle {
            order: order_id,
            receipt: ReceiptId(recorded.tx_id),
        })
        .await
        .map_err(OrderError::refused("settlement"))?;
        self.complete_order(order, completed, recorded.tx_id)?;
        Ok(())
    }
}
