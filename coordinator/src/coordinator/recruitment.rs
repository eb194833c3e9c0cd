//! Trial recruitment (feature `tfhe`): the market relays a patient's sealed acceptance to the
//! node holding the patient's record, checks the node's signed reply, records it on the
//! ledger (`RecordTrialReply`: the reply's hash, never who replied) and keeps the reply for
//! the recruiter.
//!
//! Replies are kept in memory and, when the coordinator has a state file, as files beside it
//! (`trial-replies/<trial>/<reply hash>.pb`), so that a restart loses none.

use crate::error::CoordinatorError;
use cohortex_proto::v1::{AcceptInvitationRequest, AcceptInvitationResponse, TrialReply};
use market::hash::Hash32;
use market::server::read_ledger;
use market::Action;
use prost::Message;
use tonic::Status;

use super::nodes::with_evaluation_key;
use super::{poisoned, Coordinator};
use compute_node::calls::AcceptanceCall;

impl Coordinator {
    /// Relays one acceptance and records the node's reply (see the module documentation).
    pub async fn relay_acceptance(
        &self,
        call: AcceptanceCall,
    ) -> Result<AcceptInvitationResponse, CoordinatorError> {
        let trial = call.trial.clone();
        let listing = call.listing.clone();
        // Relayed to the node as the patient sealed it.
        let request = AcceptInvitationRequest {
            trial: call.trial,
            listing: call.listing.0,
            sealed: call.sealed,
        };
        let wanted = trial.clone();
        let wanted_listing = listing.clone();
        let (posting, owner) = read_ledger(&self.ledger, move |ledger| {
            let state = ledger.state();
            Ok((
                state.trial(&wanted).map(|record| record.posting.clone()),
                state.listing(&wanted_listing).map(|listing| listing.owner),
            ))
        })
        .await?;
        let posting =
            posting.ok_or_else(|| CoordinatorError::not_found("trial: no such trial is posted"))?;
        if !posting.listings.contains(&listing) {
            return Err(CoordinatorError::bad_request(
                "listing: the trial was not posted to this listing",
            ));
        }
        let owner = owner
            .and_then(|owner| owner.verifying_key().ok())
            .ok_or_else(|| CoordinatorError::not_found("listing: not on the ledger"))?;
        let info = self.listing(&listing.0)?.ok_or_else(|| {
            CoordinatorError::unavailable(
                "listing: no compute node is registered for it at this market",
            )
        })?;

        let nodes = self.nodes();
        let reply = with_evaluation_key(
            nodes.as_ref(),
            &info.endpoint,
            || {
                self.evaluation_key(&posting.evaluation_key)?
                    .ok_or_else(|| {
                        CoordinatorError::not_ready(
                            "trial.evaluation_key: the market no longer holds the recruiter's \
                             evaluation key; the recruiter must store it again (PutEvaluationKey)",
                        )
                    })
                    .map_err(Status::from)
            },
            || nodes.accept_invitation(&info.endpoint, request.clone()),
        )
        .await?;

        // The node's reply must be its own, for this trial and listing.
        if reply.trial != trial || reply.listing != listing.0 {
            return Err(CoordinatorError::internal(
                "the node answered for another trial or listing",
            ));
        }
        zk::fhe::GatedKey::from_bytes(&reply.gated_key).map_err(|error| {
            CoordinatorError::internal(format!("the node's gated_key: {error}"))
        })?;
        let reply_hash =
            market::tx::trial_reply_hash(&trial, &listing, &reply.sealed_contact, &reply.gated_key);
        if reply.reply_hash != reply_hash.as_bytes() {
            return Err(CoordinatorError::internal(
                "the node's reply_hash is not the hash of its reply",
            ));
        }
        let digest =
            market::tx::trial_reply_digest(&self.chain_id().await?, &trial, &listing, &reply_hash);
        if !market::tx::signed_by(&owner, &digest, &reply.attestation) {
            return Err(CoordinatorError::internal(
                "the node's attestation is not the listing owner's signature over its reply",
            ));
        }
        // Kept before it is recorded: a recorded reply is never missing.
        let attestation = reply.attestation.clone();
        self.keep_trial_reply(reply, &reply_hash).await?;
        let recorded = self
            .submit_own(Action::RecordTrialReply {
                trial: trial.clone(),
                listing,
                reply_hash,
                attestation,
            })
            .await?;
        Ok(AcceptInvitationResponse {
            reply_hash: reply_hash.as_bytes().to_vec(),
            tx_id: recorded.tx_id.0.as_bytes().to_vec(),
        })
    }

    async fn chain_id(&self) -> Result<Hash32, CoordinatorError> {
        Ok(read_ledger(&self.ledger, |ledger| Ok(ledger.chain_id())).await?)
    }

    fn replies_dir(&self, trial: &str) -> Option<std::path::PathBuf> {
        let parent = self.state_file.as_ref()?.parent()?.to_path_buf();
        Some(parent.join("trial-replies").join(trial))
    }

    async fn keep_trial_reply(
        &self,
        reply: TrialReply,
        hash: &Hash32,
    ) -> Result<(), CoordinatorError> {
        if let Some(dir) = self.replies_dir(&reply.trial) {
            let path = dir.join(format!("{}.pb", hex::encode(hash.as_bytes())));
            let bytes = reply.encode_to_vec();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                let partial = path.with_extension("partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, &path)
            })
            .await
            .map_err(|error| CoordinatorError::internal(format!("worker failed: {error}")))?
            .map_err(|error| {
                CoordinatorError::internal(format!("keeping the trial reply failed: {error}"))
            })?;
        }
        let mut replies = self.trial_replies.lock().map_err(|_| poisoned())?;
        replies.entry(reply.trial.clone()).or_default().push(reply);
        Ok(())
    }

    /// The replies kept for `trial` whose hashes the ledger recorded, in the ledger's order
    /// (read from the files beside the state file when not in memory).
    pub async fn trial_replies(&self, trial: &str) -> Result<Vec<TrialReply>, CoordinatorError> {
        let wanted = trial.to_string();
        let recorded: Vec<Hash32> = read_ledger(&self.ledger, move |ledger| {
            Ok(ledger
                .state()
                .trial(&wanted)
                .map(|record| record.replies.iter().map(|(_, hash)| *hash).collect())
                .unwrap_or_default())
        })
        .await?;
        let mut kept: Vec<TrialReply> = self
            .trial_replies
            .lock()
            .map_err(|_| poisoned())?
            .get(trial)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(recorded.len());
        for hash in recorded {
            if let Some(position) = kept
                .iter()
                .position(|reply| reply.reply_hash == hash.as_bytes())
            {
                out.push(kept.swap_remove(position));
                continue;
            }
            let Some(dir) = self.replies_dir(trial) else {
                continue;
            };
            let path = dir.join(format!("{}.pb", hex::encode(hash.as_bytes())));
            let read = tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .map_err(|error| CoordinatorError::internal(format!("worker failed: {error}")))?;
            if let Ok(bytes) = read {
                let reply = TrialReply::decode(bytes.as_slice()).map_err(|error| {
                    CoordinatorError::internal(format!(
                        "a kept trial reply does not decode: {error}"
                    ))
                })?;
                out.push(reply);
            }
        }
        Ok(out)
    }
}
