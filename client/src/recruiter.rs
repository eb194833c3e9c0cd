//! The recruiter's side of blind feasibility search (feature `tfhe`): a recruiter is a buyer
//! account with a TFHE key pair. It stores its evaluation key at the market, encrypts its
//! criteria, orders the search for `trial_feasibility` (the order signs the criteria's hash
//! and the key's fingerprint), waits, decrypts each site's noisy count, and verifies the
//! receipt's inclusion in the ledger.

use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use cohortex_proto::methods::market as methods;
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{
    AcceptInvitationRequest, AcceptInvitationResponse, EncryptedCriteria, ListTrialsRequest,
    OrderFeasibilityRequest, OrderState, PostTrialRequest, SignedTransaction, Trial,
    TrialRepliesRequest,
};
use cohortex_types::auth::{signed_request, signed_stream_request, unix_now};
use compute_node::feasibility::{Criterion, EncryptedCriteria as Clauses};
use compute_node::feasibility_wire::evaluation_key_chunks;
use compute_node::feasibility_wire::{criteria_hash, criteria_to_wire};
use compute_node::recruitment::{seal_contact, Acceptance, ContactKey};
use ed25519_dalek::SigningKey;
use ed25519_dalek::VerifyingKey;
use market::tx::trial_reply_hash;
use market::{Action, Hash32, ListingId, Purpose, TxId};
use zk::fhe::{EncryptedCount, EvaluationKey, FheSecretKey, GatedKey};

use crate::buyer::Buyer;
use crate::link::connect;

/// One site's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteResult {
    /// The listing.
    pub listing: String,
    /// The noisy count, or `None` when the site is below its minimum cohort.
    pub noisy_count: Option<i64>,
}

/// What a recruiter got for a feasibility order.
#[derive(Debug, Clone)]
pub struct FeasibilityRelease {
    /// The order id.
    pub order: TxId,
    /// One answer per listing, in the order's order.
    pub sites: Vec<SiteResult>,
    /// The receipt id.
    pub receipt: TxId,
    /// Whether the receipt's inclusion proof verified against a head signed by the ledger.
    pub receipt_verified: bool,
    /// ε spent on each listing, micro-ε.
    pub epsilon_micro: u64,
}

impl Buyer {
    /// Stores the evaluation key (`key`'s bytes, streamed in 1 MiB chunks) at the market;
    /// returns its fingerprint.
    pub async fn store_evaluation_key(&self, key: &[u8]) -> anyhow::Result<[u8; 32]> {
        let request = signed_stream_request(
            &self.key,
            methods::PUT_EVALUATION_KEY,
            tokio_stream::iter(evaluation_key_chunks(key)),
        );
        let answer = MarketClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .put_evaluation_key(request)
            .await
            .context("storing the evaluation key at the market")?
            .into_inner();
        let fingerprint: [u8; 32] = answer
            .fingerprint
            .as_slice()
            .try_into()
            .context("the market's fingerprint is not 32 bytes")?;
        if fingerprint != EvaluationKey::fingerprint_of(key) {
            bail!("the market stored a key with another fingerprint");
        }
        Ok(fingerprint)
    }

    /// Orders a feasibility search with `criteria` (already encrypted) over `listings`.
    pub async fn order_feasibility(
        &self,
        criteria: EncryptedCriteria,
        listings: &[String],
        epsilon_micro: u64,
    ) -> Result<TxId, tonic::Status> {
        let envelope = self
            .sign(Action::OrderQueryFor {
                query_hash: criteria_hash(&criteria),
                listings: listings.iter().map(ListingId::new).collect(),
                purpose: Purpose::TrialFeasibility,
                epsilon_micro,
                expires_at: unix_now() + 3600,
                result_key: criteria.evaluation_key.clone(),
            })
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        let channel = connect(&self.market, self.tls.as_ref())
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let response = MarketClient::new(channel)
            .order_feasibility(OrderFeasibilityRequest {
                transaction: Some(SignedTransaction { envelope }),
                criteria: Some(criteria),
            })
            .await;
        if response.is_err() {
            // A refused order used no nonce on the ledger.
            self.next_nonce.fetch_sub(1, Ordering::SeqCst);
        }
        let order_id = response?.into_inner().order_id;
        let bytes: [u8; 32] = order_id
            .as_slice()
            .try_into()
            .map_err(|_| tonic::Status::internal("order id is not 32 bytes"))?;
        Ok(TxId(Hash32(bytes)))
    }

    /// Encrypts `criteria` under `secret`, stores the evaluation key (`evaluation_key`, its
    /// bytes), orders, waits, decrypts every site's count and verifies the receipt.
    pub async fn feasibility(
        &self,
        secret: &FheSecretKey,
        evaluation_key: &[u8],
        criteria: &[Criterion],
        listings: &[String],
        epsilon_micro: u64,
        ledger_key: &VerifyingKey,
    ) -> anyhow::Result<FeasibilityRelease> {
        let fingerprint = self.store_evaluation_key(evaluation_key).await?;
        let clauses = Clauses::encrypt(criteria, secret);
        let wire = criteria_to_wire(fingerprint, &clauses);
        let order = self
            .order_feasibility(wire, listings, epsilon_micro)
            .await
            .context("ordering the feasibility search")?;
        let status = self.wait(order).await?;
        if status.state != OrderState::Completed as i32 {
            bail!("order failed: {}", status.message);
        }
        let mut sites = Vec::with_capacity(status.site_counts.len());
        for site in &status.site_counts {
            let count = EncryptedCount::from_bytes(&site.noisy_count)
                .with_context(|| format!("listing {}'s count", site.listing))?;
            sites.push(SiteResult {
                listing: site.listing.clone(),
                noisy_count: secret.decrypt_count(&count),
            });
        }
        let receipt_bytes: [u8; 32] = status
            .receipt_id
            .as_slice()
            .try_into()
            .context("completed order without a receipt id")?;
        let receipt = TxId(Hash32(receipt_bytes));
        let receipt_verified = self.verify_receipt(receipt, ledger_key).await?;
        Ok(FeasibilityRelease {
            order,
            sites,
            receipt,
            receipt_verified,
            epsilon_micro: status.epsilon_micro,
        })
    }
}

/// One reply to a trial, as its recruiter opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedReply {
    /// The listing whose node computed the reply.
    pub listing: String,
    /// The reply's hash, as recorded on the ledger.
    pub reply_hash: Hash32,
    /// The patient's contact, or `None` when the patient does not meet the criteria (the
    /// gated key decrypted to zeros, so the contact stays sealed).
    pub contact: Option<String>,
}

impl Buyer {
    /// Posts a trial for recruitment: stores the evaluation key, encrypts `criteria` under
    /// `secret` and signs a `PostTrial` carrying them, open for `days` days.
    #[allow(clippy::too_many_arguments)]
    pub async fn post_trial(
        &self,
        (trial, summary): (&str, &str),
        contact_key: &[u8; 32],
        secret: &FheSecretKey,
        evaluation_key: &[u8],
        criteria: &[Criterion],
        listings: &[String],
        days: u64,
    ) -> anyhow::Result<TxId> {
        use prost::Message;
        let fingerprint = self.store_evaluation_key(evaluation_key).await?;
        let clauses = Clauses::encrypt(criteria, secret);
        let wire = criteria_to_wire(fingerprint, &clauses);
        let envelope = self.sign(Action::PostTrial(market::TrialPosting {
            trial: trial.to_string(),
            summary: summary.to_string(),
            contact_key: *contact_key,
            evaluation_key: fingerprint,
            criteria: wire.encode_to_vec(),
            listings: listings.iter().map(ListingId::new).collect(),
            expires_at: unix_now() + days.saturating_mul(86_400),
        }))?;
        let response = MarketClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .post_trial(PostTrialRequest {
                transaction: Some(SignedTransaction { envelope }),
            })
            .await;
        if response.is_err() {
            // A refused posting used no nonce on the ledger.
            self.next_nonce.fetch_sub(1, Ordering::SeqCst);
        }
        let result = response.context("posting the trial")?.into_inner();
        let bytes: [u8; 32] = result
            .tx_id
            .as_slice()
            .try_into()
            .context("the market's transaction id is not 32 bytes")?;
        Ok(TxId(Hash32(bytes)))
    }

    /// The replies to `trial` recorded so far, each opened: the gated key decrypted under
    /// `secret` and, when it is not zeros, the contact opened with `contact_key`.
    pub async fn trial_replies(
        &self,
        trial: &str,
        secret: &FheSecretKey,
        contact_key: &ContactKey,
    ) -> anyhow::Result<Vec<OpenedReply>> {
        let request = signed_request(
            &self.key,
            methods::TRIAL_REPLIES,
            TrialRepliesRequest {
                trial: trial.to_string(),
            },
        );
        let mut stream = MarketClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .trial_replies(request)
            .await
            .context("reading the trial's replies")?
            .into_inner();
        let mut opened = Vec::new();
        while let Some(reply) = stream.message().await.context("reading a reply")? {
            let listing = ListingId::new(reply.listing.clone());
            let reply_hash =
                trial_reply_hash(trial, &listing, &reply.sealed_contact, &reply.gated_key);
            if reply.trial != trial || reply.reply_hash != reply_hash.as_bytes() {
                bail!(
                    "a reply from listing {} is not the one its hash names",
                    reply.listing
                );
            }
            let gated = GatedKey::from_bytes(&reply.gated_key)
                .with_context(|| format!("a reply from listing {}", reply.listing))?;
            let contact = match secret.open_gated_key(&gated) {
                None => None,
                Some(psk) => Some(
                    contact_key
                        .open_contact(&reply.sealed_contact, &psk, trial, &listing)
                        .with_context(|| {
                            format!(
                                "a matching reply from listing {} does not open",
                                reply.listing
                            )
                        })?,
                ),
            };
            opened.push(OpenedReply {
                listing: reply.listing,
                reply_hash,
                contact,
            });
        }
        Ok(opened)
    }
}

/// The trials open for replies, and the ledger's chain id.
pub async fn list_trials(
    market: &str,
    tls: Option<&TlsIdentity>,
) -> anyhow::Result<(Vec<Trial>, Hash32)> {
    let answer = MarketClient::new(connect(market, tls).await?)
        .list_trials(ListTrialsRequest {})
        .await
        .context("listing the trials")?
        .into_inner();
    let chain_id: [u8; 32] = answer
        .chain_id
        .as_slice()
        .try_into()
        .context("the market's chain id is not 32 bytes")?;
    Ok((answer.trials, Hash32(chain_id)))
}

/// A patient's acceptance of `trial` for the record in `listing`, ready to send: the contact
/// is sealed to the recruiter's contact key under a fresh pre-shared key, and the signed
/// acceptance sealed to the listing owner's key, so the market relays it without reading it.
pub async fn acceptance_request(
    market: &str,
    tls: Option<&TlsIdentity>,
    patient: &SigningKey,
    (trial, listing): (&str, &str),
    contact: &str,
) -> anyhow::Result<AcceptInvitationRequest> {
    // The trials are read anonymously too, or the read just before would name the patient.
    let anonymous = tls.map(TlsIdentity::without_certificate);
    let (trials, chain_id) = list_trials(market, anonymous.as_ref()).await?;
    let found = trials
        .iter()
        .find(|found| found.trial == trial)
        .with_context(|| format!("trial `{trial}` is not open at this market"))?;
    let owner = found
        .listings
        .iter()
        .find(|entry| entry.listing == listing)
        .with_context(|| format!("trial `{trial}` was not posted to listing `{listing}`"))?;
    let owner: [u8; 32] = owner
        .owner
        .as_slice()
        .try_into()
        .context("the listing owner's key is not 32 bytes")?;
    let owner = VerifyingKey::from_bytes(&owner).context("the listing owner's key")?;
    let contact_key: [u8; 32] = found
        .contact_key
        .as_slice()
        .try_into()
        .context("the trial's contact key is not 32 bytes")?;
    let listing_id = ListingId::new(listing.to_string());
    let mut rng = rand::rngs::OsRng;
    let (sealed_contact, psk) = seal_contact(contact, &contact_key, trial, &listing_id, &mut rng)?;
    let acceptance = Acceptance::sign(
        patient,
        &chain_id,
        (trial, &listing_id),
        sealed_contact,
        &psk,
        unix_now(),
    );
    let sealed = acceptance.seal(&owner, trial, &listing_id, &mut rng)?;
    Ok(AcceptInvitationRequest {
        trial: trial.to_string(),
        listing: listing.to_string(),
        sealed,
    })
}

/// Sends an acceptance ([`acceptance_request`]) through the market, over TLS without the
/// client certificate of `tls`: the market cannot tell whose acceptance it relays.
pub async fn send_acceptance(
    market: &str,
    tls: Option<&TlsIdentity>,
    request: AcceptInvitationRequest,
) -> Result<AcceptInvitationResponse, tonic::Status> {
    // Without the patient's certificate: the market relays the acceptance without learning
    // whose it is.
    let anonymous = tls.map(TlsIdentity::without_certificate);
    let channel = connect(market, anonymous.as_ref())
        .await
        .map_err(|error| tonic::Status::unavailable(format!("{error:#}")))?;
    Ok(MarketClient::new(channel)
        .accept_invitation(request)
        .await?
        .into_inner())
}

/// [`acceptance_request`], sent.
pub async fn accept_trial(
    market: &str,
    tls: Option<&TlsIdentity>,
    patient: &SigningKey,
    (trial, listing): (&str, &str),
    contact: &str,
) -> anyhow::Result<AcceptInvitationResponse> {
    let request = acceptance_request(market, tls, patient, (trial, listing), contact).await?;
    send_acceptance(market, tls, request)
        .await
        .map_err(|status| {
            anyhow::anyhow!("the market refused the acceptance: {}", status.message())
        })
}
