//! The node's side of blind feasibility search (issue 13): receiving a recruiter's TFHE
//! evaluation key, and answering `Compute.Feasibility` with a noisy count under that key.
//!
//! What the node checks, all from its own verified ledger replica: the order exists, is open
//! and unexpired, is for `trial_feasibility`, names this listing, holds the ε reservation, and
//! its `query_hash` is the hash of exactly the criteria received and its `result_key` the
//! fingerprint of the evaluation key used. The patients are those consenting to trial
//! feasibility now, within their personal limits, each counted in the first of the order's
//! listings they consent to. The node samples its own discrete-Laplace noise at the order's
//! ε (sensitivity 1: one patient moves the count by at most 1, the table entries being
//! sanitised to 0 or 1) and signs its part of the receipt under the feasibility label.
//!
//! Nothing the node logs names a criterion: the clauses are ciphertexts it cannot read.

use std::sync::Arc;

use cohortex_proto::v1::{FeasibilityResponse, PutEvaluationKeyResponse};
use market::{AccountId, AttestationKind, ListingContribution, ListingId, Purpose};
use rand::rngs::OsRng;

use crate::error::NodeError;
use zk::fhe::{EvaluationKey, Evaluator};

use super::contribute::{keep_for_paging, OrderClaim, PARTICIPANTS_PAGE};
use super::{follow_status, NodeService, EVALUATION_KEYS_KEPT};
use crate::calls::FeasibilityCall;
use crate::dp::{SlotNoise, MICRO, TAIL_SCALES};
use crate::feasibility::{evaluate_feasibility, FeasibilityStep, ReleaseRule};

/// The noise of one count at ε = `epsilon_micro`/10⁶: scale b = 1/ε (sensitivity 1) and
/// bound K = ⌈48·b⌉ + 1 (see docs/privacy.md, "Truncation").
pub fn count_noise(epsilon_micro: u64) -> Result<SlotNoise, NodeError> {
    if epsilon_micro == 0 {
        return Err(NodeError::not_ready("the order's ε is zero"));
    }
    let scale_num = MICRO;
    let scale_den = u128::from(epsilon_micro);
    let bound = (TAIL_SCALES * scale_num).div_ceil(scale_den) + 1;
    let bound = u64::try_from(bound)
        .ok()
        .filter(|bound| *bound < 1 << 30)
        .ok_or_else(|| {
            NodeError::not_ready("the order's ε is too small for a count to carry its noise")
        })?;
    Ok(SlotNoise {
        scale_num,
        scale_den,
        bound,
    })
}

impl NodeService {
    /// Takes an evaluation key (its chunks reassembled at the gRPC edge), checks that
    /// it decodes for this build's parameters, expands it off the async workers and keeps it
    /// by fingerprint.
    pub(super) async fn receive_evaluation_key(
        &self,
        bytes: Vec<u8>,
    ) -> Result<PutEvaluationKeyResponse, NodeError> {
        let fingerprint = EvaluationKey::fingerprint_of(&bytes);
        let length = bytes.len() as u64;
        if self.evaluator(&fingerprint)?.is_none() {
            let started = std::time::Instant::now();
            let evaluator = tokio::task::spawn_blocking(move || {
                EvaluationKey::from_bytes(&bytes).map(|key| key.expand())
            })
            .await
            .map_err(|error| NodeError::internal(format!("worker failed: {error}")))?
            .map_err(|error| NodeError::bad_request(format!("data: {error}")))?;
            tracing::info!(
                fingerprint = %hex::encode(&fingerprint[..8]),
                bytes = length,
                seconds = started.elapsed().as_secs_f64(),
                "expanded a recruiter's evaluation key"
            );
            let mut keys = self
                .evaluation_keys
                .lock()
                .map_err(|_| NodeError::internal("evaluation key cache poisoned"))?;
            keys.retain(|(kept, _)| *kept != fingerprint);
            keys.push((fingerprint, Arc::new(evaluator)));
            while keys.len() > EVALUATION_KEYS_KEPT {
                keys.remove(0);
            }
        }
        Ok(PutEvaluationKeyResponse {
            fingerprint: fingerprint.to_vec(),
            bytes: length,
        })
    }

    pub(super) fn evaluator(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Arc<Evaluator>>, NodeError> {
        let keys = self
            .evaluation_keys
            .lock()
            .map_err(|_| NodeError::internal("evaluation key cache poisoned"))?;
        Ok(keys
            .iter()
            .find(|(kept, _)| kept == fingerprint)
            .map(|(_, evaluator)| Arc::clone(evaluator)))
    }

    /// Answers one feasibility order for this node's listing (see the module documentation).
    pub(super) async fn run_feasibility(
        &self,
        call: FeasibilityCall,
    ) -> Result<FeasibilityResponse, NodeError> {
        let order = call.order.0 .0.as_bytes().to_vec();
        let order_key = call.order;
        if call.listing.0 != self.config.listing {
            return Err(NodeError::bad_request(format!(
                "listing: this node serves `{}`",
                self.config.listing
            )));
        }
        let (fingerprint, criteria, query_hash) =
            (call.fingerprint, call.criteria, call.criteria_hash);
        criteria
            .check(self.vault.schema())
            .map_err(|error| NodeError::bad_request(format!("criteria.{error}")))?;
        let evaluator = self.evaluator(&fingerprint)?.ok_or_else(|| {
            NodeError::EvaluationKeyMissing(
                "criteria.evaluation_key: this node holds no evaluation key with this \
                 fingerprint; send it with PutEvaluationKey first"
                    .into(),
            )
        })?;
        // Claimed before any work, under the lock: two concurrent calls for one order must
        // not each draw noise (two noisy counts of one cohort average to a less noisy one).
        let claim = OrderClaim::take(self, &order)?;

        // The order, from the node's verified replica.
        let channel = self.market_channel().await?;
        let listing = ListingId::new(self.config.listing.clone());
        let now = unix_time();
        let (found, result_key, min_cohort, time) = self
            .follower
            .sync_and_read(channel, |machine| {
                let state = machine.state();
                (
                    state.order(&order_key).cloned(),
                    state.result_key(&order_key).map(<[u8]>::to_vec),
                    state
                        .listing(&listing)
                        .map(|listing| u64::from(listing.terms.min_cohort_size)),
                    now.max(machine.last_time()),
                )
            })
            .await
            .map_err(follow_status)?;
        let found =
            found.ok_or_else(|| NodeError::not_ready("order_id: no such order on the ledger"))?;
        if found.status != market::state::Settlement::Open {
            return Err(NodeError::not_ready(
                "order_id: the order is no longer open on the ledger",
            ));
        }
        if time >= found.expires_at {
            return Err(NodeError::not_ready(format!(
                "order_id: the order expired at {} (ledger time {time})",
                found.expires_at
            )));
        }
        if found.purpose != Purpose::TrialFeasibility {
            return Err(NodeError::not_ready(
                "order_id: the order's purpose is not trial_feasibility",
            ));
        }
        if found.query_hash != query_hash {
            return Err(NodeError::bad_request(
                "criteria: their hash is not the order's query_hash",
            ));
        }
        if result_key.as_deref() != Some(fingerprint.as_slice()) {
            return Err(NodeError::bad_request(
                "criteria.evaluation_key: not the key the recruiter signed into the order",
            ));
        }
        let listings: Vec<String> = found
            .listings
            .iter()
            .map(|ordered| ordered.listing.0.clone())
            .collect();
        if !listings.contains(&self.config.listing) {
            return Err(NodeError::not_ready(format!(
                "order_id: the order does not name listing {}",
                self.config.listing
            )));
        }
        let min_cohort = min_cohort.ok_or_else(|| {
            NodeError::not_ready("listing: this node's listing is not on the ledger")
        })?;
        let epsilon_micro = found.epsilon_requested_micro;
        let noise = count_noise(epsilon_micro)?;
        let consents = self
            .current_consents(Purpose::TrialFeasibility, epsilon_micro, &listings)
            .await?;

        let vault = Arc::clone(&self.vault);
        let purpose = cohortex_types::purpose_name(Purpose::TrialFeasibility);
        let started = std::time::Instant::now();
        let (released, stats, participants) = tokio::task::spawn_blocking(move || {
            let draw = noise.sample(&mut OsRng);
            let rule = ReleaseRule {
                noise: draw,
                noise_bound: noise.bound,
                min_cohort,
            };
            let (released, stats) = evaluate_feasibility(
                &criteria,
                &evaluator,
                &vault,
                (&consents, purpose),
                rule,
                |step| {
                    if let FeasibilityStep::Grouped { tuples } = step {
                        tracing::info!(tuples, "grouped the consenting patients into tuples");
                    }
                },
            )
            .map_err(|error| NodeError::bad_request(format!("criteria.{error}")))?;
            let mut participants: Vec<Vec<u8>> = vault
                .records()
                .iter()
                .filter(|record| consents.covers(&record.patient_id, purpose))
                .filter_map(|record| record.patient_key.as_deref())
                .filter_map(|key| hex::decode(key).ok())
                .collect();
            participants.sort();
            participants.dedup();
            Ok::<_, NodeError>((released, stats, participants))
        })
        .await
        .map_err(|error| NodeError::internal(format!("worker failed: {error}")))??;
        tracing::info!(
            patients = stats.patients,
            tuples = stats.distinct_tuples,
            seconds = started.elapsed().as_secs_f64(),
            "released a noisy feasibility count"
        );
        let noisy_count = released.to_bytes();
        let mut attested = ListingContribution {
            listing: ListingId::new(self.config.listing.clone()),
            epsilon_debited_micro: epsilon_micro,
            participants: participants
                .iter()
                .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
                .map(AccountId)
                .collect(),
            capacity: self.vault.capacity(),
            contribution_hash: market::hash::contribution_hash(
                std::slice::from_ref(&noisy_count),
                &[],
            ),
            attestation: Vec::new(),
        };
        attested.attest_as(
            AttestationKind::Feasibility,
            &self.config.account,
            &self.config.ledger.chain_id,
            &order_key,
            &query_hash,
        );
        keep_answered(self, claim).await?;
        // The first page here, the rest with `ContributionParticipants`, as for a
        // contribution: no message grows with the number of patients.
        keep_for_paging(&mut *self.lock()?, &order, &participants);
        Ok(FeasibilityResponse {
            noisy_count,
            participants: participants[..participants.len().min(PARTICIPANTS_PAGE)].to_vec(),
            capacity: self.vault.capacity(),
            attestation: attested.attestation,
            participant_count: participants.len() as u64,
        })
    }
}

/// Keeps `claim` on a feasibility order once its answer is about to leave. When the node keeps
/// its key share on disk, the record of the answer is written first, so that a restarted node
/// does not answer the order again with fresh noise.
async fn keep_answered(node: &NodeService, claim: OrderClaim<'_>) -> Result<(), NodeError> {
    if let Some(path) = answered_path(&node.config) {
        let order = claim.order().to_vec();
        let written = tokio::task::spawn_blocking(move || record_answered(&path, &order))
            .await
            .map_err(|error| NodeError::internal(format!("worker failed: {error}")))?;
        written.map_err(|error| {
            tracing::error!(%error, "recording an answered feasibility search");
            NodeError::internal("the node could not record its answer; it sends none")
        })?;
    }
    claim.keep();
    Ok(())
}

/// Where a node records the feasibility searches it answered: beside its key share
/// (`<key share file>.feasibility-answered`), one order id in hex a line.
pub(super) fn answered_path(config: &super::NodeConfig) -> Option<std::path::PathBuf> {
    config
        .key_share_file
        .as_ref()
        .map(|path| path.with_extension("feasibility-answered"))
}

/// Appends `order` to the record and waits until it is on disk.
fn record_answered(path: &std::path::Path, order: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{}", hex::encode(order))?;
    file.sync_all()
}

/// The feasibility searches a node answered before it (re)started.
pub(super) fn load_answered(
    path: &std::path::Path,
) -> Result<std::collections::BTreeSet<Vec<u8>>, crate::protocol::CommitteeError> {
    let bad = |reason: String| crate::protocol::CommitteeError::AnsweredRecord {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(bad(error.to_string())),
    };
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            hex::decode(line.trim())
                .ok()
                .filter(|order| order.len() == 32)
                .ok_or_else(|| bad(format!("line {} is not an order id", index + 1)))
        })
        .collect()
}

fn unix_time() -> u64 {
    cohortex_types::auth::unix_now()
}
