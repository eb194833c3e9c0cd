//! The node's side of trial recruitment (issue 13): answering a patient's acceptance of a
//! trial posted on the ledger.
//!
//! The market relays the acceptance sealed to this node's account key, so the market learns
//! neither who accepted nor the pre-shared key. The node believes only its own verified
//! ledger replica: the trial exists, is open, names this listing, and carries the encrypted
//! criteria and the evaluation key's fingerprint; the patient signed this acceptance for this
//! chain, trial and listing, consents now to trial recruitment on this listing, and has a
//! record in this vault. Then it computes the patient's encrypted match bit under the
//! recruiter's key, gates the pre-shared key with it, and signs the reply's hash.
//!
//! One reply per patient and trial. Nothing logged names the patient or a criterion.

use std::sync::Arc;

use crate::calls::AcceptanceCall;
use crate::error::NodeError;
use cohortex_proto::v1::{EncryptedCriteria as WireCriteria, TrialReply};
use market::{ListingId, Purpose};
use prost::Message;

use super::{follow_status, unix_now, NodeService};
use crate::feasibility::patient_match_bit;
use crate::feasibility_wire::criteria_from_wire;
use crate::recruitment::{Acceptance, RecruitmentError};

/// How far an acceptance's signing time may be from the node's clock, in seconds.
pub const ACCEPTANCE_SKEW_SECS: u64 = 600;

fn refused(error: RecruitmentError) -> NodeError {
    match error {
        RecruitmentError::BadSignature(_) => NodeError::unauthenticated(error.to_string()),
        _ => NodeError::bad_request(format!("sealed: {error}")),
    }
}

impl NodeService {
    /// Answers one acceptance (see the module documentation).
    pub(super) async fn answer_acceptance(
        &self,
        call: AcceptanceCall,
    ) -> Result<TrialReply, NodeError> {
        if call.listing.0 != self.config.listing {
            return Err(NodeError::bad_request(format!(
                "listing: this node serves `{}`",
                self.config.listing
            )));
        }
        let listing = ListingId::new(self.config.listing.clone());
        let trial = call.trial;
        let acceptance = Acceptance::open(&call.sealed, &self.config.account, &trial, &listing)
            .map_err(refused)?;
        let chain_id = self.config.ledger.chain_id;
        let patient = acceptance
            .verify(&chain_id, &trial, &listing)
            .map_err(refused)?;
        let now = unix_now();
        if acceptance.signed_at.abs_diff(now) > ACCEPTANCE_SKEW_SECS {
            return Err(NodeError::not_ready(format!(
                "sealed: the acceptance was signed at {}, more than {ACCEPTANCE_SKEW_SECS} s from \
                 this node's clock ({now}); sign it again",
                acceptance.signed_at
            )));
        }

        // The trial and the patient's consent, from the node's verified replica.
        let channel = self.market_channel().await?;
        let wanted = trial.clone();
        let consent_listing = listing.clone();
        let (posting, time, consents) = self
            .follower
            .sync_and_read(channel, move |machine| {
                let state = machine.state();
                let time = now.max(machine.last_time());
                let consents = state
                    .current_consents(&consent_listing, Purpose::TrialRecruitment, time)
                    .contains(&patient);
                (
                    state.trial(&wanted).map(|record| record.posting.clone()),
                    time,
                    consents,
                )
            })
            .await
            .map_err(follow_status)?;
        let posting = posting.ok_or_else(|| {
            NodeError::not_found("trial: no such trial on this node's ledger replica")
        })?;
        if time >= posting.expires_at {
            return Err(NodeError::not_ready(format!(
                "trial: it expired at {} (ledger time {time})",
                posting.expires_at
            )));
        }
        if !posting.listings.contains(&listing) {
            return Err(NodeError::not_ready(format!(
                "trial: it was not posted to listing {}",
                self.config.listing
            )));
        }
        if !consents {
            return Err(NodeError::not_ready(
                "sealed: the patient does not consent to trial_recruitment on this listing \
                 (cohortex patient consent --purpose trial_recruitment)",
            ));
        }
        let patient_hex = hex::encode(patient.0);
        let values = self
            .vault
            .records()
            .iter()
            .find(|record| record.patient_key.as_deref() == Some(patient_hex.as_str()))
            .map(|record| record.values.clone())
            .ok_or_else(|| {
                NodeError::not_ready("sealed: this node holds no record of the patient")
            })?;
        if self
            .lock()?
            .trial_replies
            .contains(&(trial.clone(), patient.0))
        {
            return Err(NodeError::already_answered(
                "sealed: this patient's acceptance of the trial was already answered",
            ));
        }

        // The criteria as the ledger holds them.
        let wire = WireCriteria::decode(posting.criteria.as_slice()).map_err(|error| {
            NodeError::not_ready(format!(
                "trial: its criteria on the ledger do not decode ({error})"
            ))
        })?;
        let (fingerprint, criteria) = criteria_from_wire(&wire, "trial.criteria")
            .map_err(|status| NodeError::not_ready(status.message().to_string()))?;
        if fingerprint != posting.evaluation_key {
            return Err(NodeError::not_ready(
                "trial: its criteria name another evaluation key than the posting",
            ));
        }
        let evaluator = self.evaluator(&fingerprint)?.ok_or_else(|| {
            NodeError::EvaluationKeyMissing(
                "trial.evaluation_key: this node holds no evaluation key with this \
                 fingerprint; send it with PutEvaluationKey first"
                    .into(),
            )
        })?;

        let vault = Arc::clone(&self.vault);
        let psk = acceptance.psk;
        let started = std::time::Instant::now();
        let gated = tokio::task::spawn_blocking(move || {
            let bit = patient_match_bit(&criteria, &evaluator, vault.schema(), &values)
                .map_err(|error| NodeError::not_ready(format!("trial.criteria.{error}")))?;
            evaluator
                .gate_key(&bit, &psk)
                .map(|gated| gated.to_bytes())
                .map_err(|error| NodeError::internal(format!("gating the key failed: {error}")))
        })
        .await
        .map_err(|error| NodeError::internal(format!("worker failed: {error}")))??;

        let reply_hash =
            market::tx::trial_reply_hash(&trial, &listing, &acceptance.sealed_contact, &gated);
        let digest = market::tx::trial_reply_digest(&chain_id, &trial, &listing, &reply_hash);
        let attestation = {
            use ed25519_dalek::Signer;
            self.config
                .account
                .sign(digest.as_bytes())
                .to_bytes()
                .to_vec()
        };
        if !self
            .lock()?
            .trial_replies
            .insert((trial.clone(), patient.0))
        {
            return Err(NodeError::already_answered(
                "sealed: this patient's acceptance of the trial was already answered",
            ));
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "answered an acceptance of a trial"
        );
        Ok(TrialReply {
            trial,
            listing: self.config.listing.clone(),
            sealed_contact: acceptance.sealed_contact.clone(),
            gated_key: gated,
            reply_hash: reply_hash.as_bytes().to_vec(),
            attestation,
        })
    }
}
