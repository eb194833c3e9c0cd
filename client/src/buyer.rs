//! The buyer's side: order over gRPC, wait, decrypt the key-switched result with the buyer's
//! own key, combine, and verify the receipt's inclusion in the ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use cohortex_proto::methods::market as methods;
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{
    GetOrderRequest, GetOrderResponse, GetReceiptRequest, OrderQueryRequest, OrderState,
    SignedTransaction,
};
use cohortex_query::combine::combine_release;
use cohortex_query::dp::calibrate;
use cohortex_query::noise::{count_slots, public_count_secret};
use cohortex_query::sql::newton_step_sql;
use cohortex_query::uncertainty::ReleaseNoise;
use cohortex_query::{Cell, QueryAnswer, QueryPlan};
use cohortex_types::auth::{signed_request, unix_now};
use cohortex_types::rpc::MAX_MESSAGE_BYTES;
use ed25519_dalek::{SigningKey, VerifyingKey};
use market::hash::query_hash;
use market::{
    AccountId, Action, Hash32, ListingId, Purpose, Receipt, SignedTreeHead, TxBody, TxId,
};
use zk::{Ciphertext, DecryptionTable, KeyPair, Wire};

use crate::link::connect;

/// A buyer: an account key, a result key pair, and the market's endpoint.
pub struct Buyer {
    pub(crate) key: SigningKey,
    result_keys: KeyPair,
    chain_id: Hash32,
    pub(crate) next_nonce: AtomicU64,
    pub(crate) market: String,
    pub(crate) tls: Option<TlsIdentity>,
}

/// What the buyer got for an order.
#[derive(Debug, Clone)]
pub struct Release {
    /// The order id.
    pub order: TxId,
    /// The final status.
    pub status: GetOrderResponse,
    /// The decrypted, combined answer.
    pub answer: QueryAnswer,
    /// The receipt id.
    pub receipt: TxId,
    /// Whether the receipt's inclusion proof verified against a head signed by the ledger.
    pub receipt_verified: bool,
}

impl Buyer {
    /// A buyer whose account's next ledger nonce is `next_nonce`.
    pub fn new(key: SigningKey, chain_id: Hash32, market: String, next_nonce: u64) -> Self {
        Self {
            key,
            result_keys: KeyPair::generate_with_rng(&mut rand::rngs::OsRng),
            chain_id,
            next_nonce: AtomicU64::new(next_nonce),
            market,
            tls: None,
        }
    }

    /// The buyer presenting `tls` to the market.
    pub fn with_tls(mut self, tls: Option<TlsIdentity>) -> Self {
        self.tls = tls;
        self
    }

    /// The buyer's account.
    pub fn account(&self) -> AccountId {
        AccountId::of(&self.key)
    }

    pub(crate) fn sign(&self, action: Action) -> anyhow::Result<Vec<u8>> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::SeqCst);
        Ok(TxBody {
            chain_id: self.chain_id,
            signer: self.account(),
            nonce,
            action,
        }
        .sign(&self.key)
        .map_err(|error| anyhow!("signing: {error}"))?
        .bytes)
    }

    /// Registers the buyer's account (self-signed) through the Ledger service.
    pub async fn register(&self) -> anyhow::Result<()> {
        let envelope = self.sign(Action::RegisterAccount {
            account: self.account(),
            role: market::Role::Buyer,
        })?;
        LedgerClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .submit_transaction(SignedTransaction { envelope })
            .await
            .context("registering the buyer")?;
        Ok(())
    }

    /// Orders `sql` over `listings`; returns the order id.
    pub async fn order(
        &self,
        sql: &str,
        listings: &[String],
        purpose: Purpose,
        epsilon_micro: u64,
    ) -> Result<TxId, tonic::Status> {
        let envelope = self
            .sign(Action::OrderQueryFor {
                query_hash: query_hash(sql),
                listings: listings.iter().map(ListingId::new).collect(),
                purpose,
                epsilon_micro,
                expires_at: unix_now() + 3600,
                result_key: self.result_keys.public.to_bytes(),
            })
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        let channel = connect(&self.market, self.tls.as_ref())
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let response = MarketClient::new(channel)
            .order_query(OrderQueryRequest {
                transaction: Some(SignedTransaction { envelope }),
                sql: sql.to_string(),
                result_key: self.result_keys.public.to_bytes(),
            })
            .await;
        let reused = response
            .as_ref()
            .is_ok_and(|answer| answer.get_ref().answered_from_earlier_release);
        if response.is_err() || reused {
            // A refused order, or a repeat answered from an earlier release, used no nonce on
            // the ledger.
            self.next_nonce.fetch_sub(1, Ordering::SeqCst);
        }
        let order_id = response?.into_inner().order_id;
        let bytes: [u8; 32] = order_id
            .as_slice()
            .try_into()
            .map_err(|_| tonic::Status::internal("order id is not 32 bytes"))?;
        Ok(TxId(Hash32(bytes)))
    }

    /// Cancels the buyer's own order before its release is committed, through the Ledger
    /// service: the escrow comes back and the ε reserved on each listing is freed. Returns the
    /// ledger block that recorded it.
    pub async fn cancel(&self, order: TxId) -> anyhow::Result<u64> {
        let envelope = self.sign(Action::CancelOrder {
            order: market::OrderId(order),
        })?;
        let result = LedgerClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .submit_transaction(SignedTransaction { envelope })
            .await;
        match result {
            Ok(answer) => Ok(answer.into_inner().height),
            Err(status) => {
                // A refused transaction used no nonce on the ledger.
                self.next_nonce.fetch_sub(1, Ordering::SeqCst);
                Err(anyhow!("cancelling order {order}: {}", status.message()))
            }
        }
    }

    /// Polls the order until it completes or fails.
    pub async fn wait(&self, order: TxId) -> anyhow::Result<GetOrderResponse> {
        let mut client = MarketClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let request = signed_request(
                &self.key,
                methods::GET_ORDER,
                GetOrderRequest {
                    order_id: order.0.as_bytes().to_vec(),
                },
            );
            let status = client.get_order(request).await?.into_inner();
            if status.state != OrderState::Computing as i32 {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("order still computing after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Decrypts a completed order's result with the buyer's key and combines it.
    pub fn open(
        &self,
        status: &GetOrderResponse,
        table: &DecryptionTable,
    ) -> anyhow::Result<QueryAnswer> {
        use rayon::prelude::*;
        let plan: QueryPlan = serde_json::from_str(&status.plan).context("order plan")?;
        let counts = count_slots(&plan);
        let public = public_count_secret();
        // Each slot is a discrete logarithm of its own: the slots are decrypted on every core.
        let totals: Vec<Option<i128>> = status
            .result
            .par_iter()
            .enumerate()
            .map(|(slot, bytes)| {
                if bytes.is_empty() {
                    // A slot withheld for the minimum cohort.
                    return Ok(None);
                }
                let ciphertext = Ciphertext::from_bytes(bytes)
                    .with_context(|| format!("result ciphertext of slot {slot}"))?;
                // Count slots were released to the public count key, the rest to this buyer.
                let key = if counts.contains(&slot) {
                    &public
                } else {
                    &self.result_keys.secret
                };
                let total = key
                    .decrypt(&ciphertext, table)
                    .with_context(|| format!("decrypting slot {slot} of the result"))?;
                Ok(Some(i128::from(total)))
            })
            .collect::<anyhow::Result<_>>()?;
        // The noise of every slot is public: the order's ε calibrates each share, and the
        // release sums the listed members' shares.
        let calibration = calibrate(&plan, status.epsilon_micro)
            .map_err(|error| anyhow!("the release's noise calibration: {error}"))?;
        let noise = ReleaseNoise::of(&calibration, status.noise_members.len());
        combine_release(&plan, &totals, &noise).context("combining the result")
    }

    /// Fetches a receipt and verifies it offline against the ledger's key.
    pub async fn verify_receipt(
        &self,
        receipt: TxId,
        ledger_key: &VerifyingKey,
    ) -> anyhow::Result<bool> {
        let proof = MarketClient::new(connect(&self.market, self.tls.as_ref()).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .get_receipt(GetReceiptRequest {
                receipt_id: receipt.0.as_bytes().to_vec(),
            })
            .await?
            .into_inner();
        let inclusion = proof.inclusion.context("receipt without inclusion proof")?;
        let head_message = inclusion
            .tree_head
            .context("inclusion proof without tree head")?;
        let head = SignedTreeHead::try_from(head_message)
            .map_err(|error| anyhow!("tree head: {error}"))?;
        let receipt = Receipt {
            tx: proof.envelope,
            leaf_index: inclusion.leaf_index,
            inclusion_proof: inclusion.hashes.concat(),
            head,
        };
        Ok(receipt.verify(ledger_key).is_ok())
    }

    /// Orders, waits, opens and verifies: the whole buyer side of one query.
    pub async fn query(
        &self,
        sql: &str,
        listings: &[String],
        purpose: Purpose,
        epsilon_micro: u64,
        table: &DecryptionTable,
        ledger_key: &VerifyingKey,
    ) -> anyhow::Result<Release> {
        let order = self.order(sql, listings, purpose, epsilon_micro).await?;
        let status = self.wait(order).await?;
        if status.state != OrderState::Completed as i32 {
            bail!("order failed: {}", status.message);
        }
        let answer = self.open(&status, table)?;
        let receipt_bytes: [u8; 32] = status
            .receipt_id
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("completed order without a receipt id"))?;
        let receipt = TxId(Hash32(receipt_bytes));
        let receipt_verified = self.verify_receipt(receipt, ledger_key).await?;
        Ok(Release {
            order,
            status,
            answer,
            receipt,
            receipt_verified,
        })
    }

    /// [`Buyer::query`] for a query of any kind. A logistic model is fitted by `steps`
    /// Newton–Raphson steps, each its own order, release and receipt at ε/steps, from the
    /// coefficients the step before released (the first from those `sql` gives, or 0;
    /// docs/analytics.md); any other query is one order at ε. `progress` hears of each step
    /// (1-based, of `steps`) before it is ordered. Returns every step's release, the fit last.
    #[allow(clippy::too_many_arguments)]
    pub async fn fit(
        &self,
        sql: &str,
        listings: &[String],
        purpose: Purpose,
        epsilon_micro: u64,
        steps: usize,
        table: &DecryptionTable,
        ledger_key: &VerifyingKey,
        progress: impl Fn(usize, usize),
    ) -> anyhow::Result<Vec<Release>> {
        let logistic = newton_step_sql(sql, &[])
            .map_err(|error| anyhow!("--query: {error}"))?
            .is_some();
        if !logistic {
            progress(1, 1);
            let release = self
                .query(sql, listings, purpose, epsilon_micro, table, ledger_key)
                .await?;
            return Ok(vec![release]);
        }
        let steps = steps.max(1);
        let per_step = epsilon_micro / steps as u64;
        if per_step == 0 {
            bail!("ε = {epsilon_micro} micro-ε cannot be split over {steps} Newton steps; order a larger ε or fewer steps");
        }
        let mut releases: Vec<Release> = Vec::with_capacity(steps);
        for step in 0..steps {
            progress(step + 1, steps);
            let step_sql = match releases.last() {
                None => sql.to_string(),
                Some(previous) => {
                    let at = estimates(&previous.answer).map_err(|why| {
                        anyhow!("Newton step {step} {why}; nothing more was ordered")
                    })?;
                    newton_step_sql(sql, &at)
                        .map_err(|error| anyhow!("Newton step {}: {error}", step + 1))?
                        .ok_or_else(|| anyhow!("the query lost its logistic model"))?
                }
            };
            let release = self
                .query(&step_sql, listings, purpose, per_step, table, ledger_key)
                .await
                .with_context(|| format!("Newton step {} of {steps}", step + 1))?;
            releases.push(release);
        }
        Ok(releases)
    }
}

/// A model answer's estimates, one per row (the model has one cell: no GROUP BY), to start
/// the next Newton step from. A covariate left out of the fit (NULL: it does not vary) carries
/// 0, which changes nothing for a column that is constant.
fn estimates(answer: &QueryAnswer) -> Result<Vec<f64>, &'static str> {
    let column = answer
        .columns
        .iter()
        .position(|name| name == "estimate")
        .ok_or("answered without estimates")?;
    let read = |row: &Vec<Cell>| match row.get(column) {
        Some(Cell::Number(estimate)) => Ok(*estimate),
        Some(Cell::Null) => Ok(0.0),
        Some(Cell::Suppressed) => Err("was withheld for the minimum cohort"),
        _ => Err("left a coefficient undefined"),
    };
    let at: Vec<f64> = answer.rows.iter().map(read).collect::<Result<_, _>>()?;
    // An intercept that is NULL means the fit itself failed (too few patients, collinear).
    match answer.rows.first().and_then(|row| row.get(column)) {
        Some(Cell::Number(_)) => Ok(at),
        _ => Err("could not be fitted (too few patients, or collinear covariates)"),
    }
}
