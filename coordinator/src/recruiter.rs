//! The recruiter's side of blind feasibility search (feature `tfhe`): a recruiter is a buyer
//! account with a TFHE key pair. It stores its evaluation key at the market, encrypts its
//! criteria, orders the search for `trial_feasibility` (the order signs the criteria's hash
//! and the key's fingerprint), waits, decrypts each site's noisy count, and verifies the
//! receipt's inclusion in the ledger.

use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{
    EncryptedCriteria, OrderFeasibilityRequest, OrderState, SignedTransaction,
};
use compute_node::feasibility::{Criterion, EncryptedCriteria as Clauses};
use compute_node::feasibility_wire::{criteria_hash, criteria_to_wire};
use ed25519_dalek::VerifyingKey;
use market::server::auth::{signed_stream_request, unix_now};
use market::{Action, Hash32, ListingId, Purpose, TxId};
use zk::fhe::{EncryptedCount, EvaluationKey, FheSecretKey};

use crate::buyer::{channel, Buyer};
use crate::coordinator::key_chunks;
use crate::market_service::methods;

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
        let request =
            signed_stream_request(&self.key, methods::PUT_EVALUATION_KEY, key_chunks(key));
        let answer = MarketClient::new(channel(&self.market, self.tls.as_ref()).await?)
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
        let channel = channel(&self.market, self.tls.as_ref())
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
