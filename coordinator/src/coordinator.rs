//! The order coordinator: runs the key ceremony across the committee at cluster start, and for
//! each order hands the query to the listings' nodes, batch-verifies their contributions,
//! sums them, gathers t key-switch shares towards the buyer, and records the receipt and the
//! settlement on the ledger. If the computation cannot finish, the escrow is refunded.
//!
//! The coordinator holds a committee-member account: it records receipts and settles or
//! refunds orders. It never holds a key share and never sees a plaintext statistic: it only
//! handles ciphertexts under the collective key and, after key switching, under the buyer's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::{
    ContributeRequest, DkgDealRequest, DkgFinishRequest, DkgJustifyRequest, DkgPeer,
    DkgReceiveRequest, KeySwitchRequest, NodeReport, OrderState,
};
use compute_node::contribution::{sum_contributions, Contribution, ContributionStatement};
use compute_node::server::{contribution_context, methods, release_context};
use compute_node::{compile, verify_contributions, QueryPlan, Schema};
use ed25519_dalek::SigningKey;
use market::hash::tagged_hash;
use market::server::auth::signed_request;
use market::server::{purpose_name, read_ledger, submit, SharedLedger, Submitted};
use market::{
    AccountId, Action, Hash32, ListingContribution, ListingId, OrderId, Purpose, QueryReceipt,
    ReceiptId, TxBody, TxId,
};
use rand::RngCore;
use tonic::transport::Channel;
use tonic::Status;
use zk::{
    Ciphertext, CiphertextRangeProof, CommitteePublic, KeySwitchShare, MemberIndex, PublicKey, Wire,
};

/// Domain label of query hashes (the order's `query_hash` is this hash of the SQL text).
pub const LABEL_QUERY: &str = "cohortex/market/query/v1";

/// The hash an order carries for its SQL text.
pub fn query_hash(sql: &str) -> Hash32 {
    tagged_hash(LABEL_QUERY, &[sql.as_bytes()])
}

/// Domain label of manifest hashes (a listing's `schema_hash`).
pub const LABEL_MANIFEST: &str = "cohortex/market/manifest/v1";

/// The hash a listing carries for its manifest text.
pub fn manifest_hash(manifest: &str) -> Hash32 {
    tagged_hash(LABEL_MANIFEST, &[manifest.as_bytes()])
}

/// What the coordinator knows of a listing besides the ledger's record.
#[derive(Debug, Clone)]
pub struct ListingInfo {
    /// The manifest text.
    pub manifest: String,
    /// The parsed schema.
    pub schema: Schema,
    /// The node's endpoint (`http://host:port`).
    pub endpoint: String,
}

/// The key committee.
#[derive(Debug, Clone)]
pub struct Committee {
    /// Its public data (collective key, verification keys, threshold).
    pub public: CommitteePublic,
    /// Each member's index and endpoint.
    pub members: Vec<(MemberIndex, String)>,
}

/// An order as the coordinator tracks it.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    /// The buyer.
    pub buyer: AccountId,
    /// Where it stands.
    pub state: OrderState,
    /// A sentence for the buyer.
    pub message: String,
    /// One report per listing.
    pub nodes: Vec<NodeReport>,
    /// The plan, as JSON.
    pub plan: String,
    /// The result, key-switched to the buyer (CXZK ciphertexts).
    pub result: Vec<Vec<u8>>,
    /// The receipt's transaction id.
    pub receipt: Option<TxId>,
    /// Committee members whose shares were combined.
    pub committee_used: Vec<u32>,
}

/// The coordinator.
pub struct Coordinator {
    ledger: SharedLedger,
    account: SigningKey,
    /// Serialises the coordinator's own transactions (their nonces).
    submit_lock: tokio::sync::Mutex<()>,
    listings: Mutex<BTreeMap<String, ListingInfo>>,
    committee: Mutex<Option<Committee>>,
    orders: Mutex<BTreeMap<TxId, OrderRecord>>,
    /// How long a node may take to contribute or key-switch.
    pub node_timeout: Duration,
}

fn poisoned() -> Status {
    Status::internal("coordinator state lock poisoned")
}

async fn connect(endpoint: &str) -> Result<ComputeClient<Channel>, Status> {
    let channel = Channel::from_shared(endpoint.to_string())
        .map_err(|error| Status::internal(format!("endpoint {endpoint}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| Status::unavailable(format!("{endpoint} unreachable: {error}")))?;
    Ok(ComputeClient::new(channel)
        .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(market::server::MAX_MESSAGE_BYTES))
}

impl Coordinator {
    /// A coordinator acting with `account` (a registered committee member) on `ledger`.
    pub fn new(ledger: SharedLedger, account: SigningKey) -> Self {
        Self {
            ledger,
            account,
            submit_lock: tokio::sync::Mutex::new(()),
            listings: Mutex::new(BTreeMap::new()),
            committee: Mutex::new(None),
            orders: Mutex::new(BTreeMap::new()),
            node_timeout: Duration::from_secs(120),
        }
    }

    /// The coordinator's account.
    pub fn account(&self) -> AccountId {
        AccountId::of(&self.account)
    }

    /// The shared ledger.
    pub fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    /// Records where a listing's node answers and its manifest.
    pub fn register_listing(&self, listing: &str, info: ListingInfo) -> Result<(), Status> {
        self.listings
            .lock()
            .map_err(|_| poisoned())?
            .insert(listing.to_string(), info);
        Ok(())
    }

    /// A listing's information.
    pub fn listing(&self, listing: &str) -> Result<Option<ListingInfo>, Status> {
        Ok(self
            .listings
            .lock()
            .map_err(|_| poisoned())?
            .get(listing)
            .cloned())
    }

    /// Every listing's information.
    pub fn listings(&self) -> Result<BTreeMap<String, ListingInfo>, Status> {
        Ok(self.listings.lock().map_err(|_| poisoned())?.clone())
    }

    /// The committee, once the key ceremony has run.
    pub fn committee(&self) -> Result<Option<Committee>, Status> {
        Ok(self.committee.lock().map_err(|_| poisoned())?.clone())
    }

    /// An order's record.
    pub fn order(&self, id: &TxId) -> Result<Option<OrderRecord>, Status> {
        Ok(self.orders.lock().map_err(|_| poisoned())?.get(id).cloned())
    }

    fn update_order(&self, id: TxId, update: impl FnOnce(&mut OrderRecord)) -> Result<(), Status> {
        let mut orders = self.orders.lock().map_err(|_| poisoned())?;
        if let Some(record) = orders.get_mut(&id) {
            update(record);
        }
        Ok(())
    }

    /// Signs `action` with the coordinator's account at its next nonce and appends it.
    pub async fn submit_own(&self, action: Action) -> Result<Submitted, Status> {
        let _guard = self.submit_lock.lock().await;
        let me = self.account();
        let (chain_id, nonce) = read_ledger(&self.ledger, move |ledger| {
            Ok((
                ledger.chain_id(),
                ledger
                    .state()
                    .account(&me)
                    .map_or(0, |account| account.next_nonce),
            ))
        })
        .await?;
        let envelope = TxBody {
            chain_id,
            signer: me,
            nonce,
            action,
        }
        .sign(&self.account)
        .map_err(|error| Status::internal(format!("signing: {error}")))?;
        submit(&self.ledger, envelope.bytes).await
    }

    /// Runs the joint-Feldman key ceremony across `members` (index, endpoint) with threshold
    /// `threshold`, and keeps the committee's public data.
    pub async fn run_key_ceremony(
        &self,
        members: Vec<(MemberIndex, String)>,
        threshold: u16,
    ) -> Result<CommitteePublic, Status> {
        let mut session_id = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut session_id);
        let peers: Vec<DkgPeer> = members
            .iter()
            .map(|(member, endpoint)| DkgPeer {
                member: u32::from(member.get()),
                endpoint: endpoint.clone(),
            })
            .collect();
        let mut clients = Vec::new();
        for (_, endpoint) in &members {
            clients.push(connect(endpoint).await?);
        }
        let mut broadcasts = Vec::new();
        for client in &mut clients {
            let request = DkgDealRequest {
                session_id: session_id.clone(),
                threshold: u32::from(threshold),
                peers: peers.clone(),
            };
            let response = client
                .dkg_deal(signed_request(&self.account, methods::DKG_DEAL, request))
                .await?;
            broadcasts.push(response.into_inner().broadcast);
        }
        let mut complaints = Vec::new();
        for client in &mut clients {
            let request = DkgReceiveRequest {
                session_id: session_id.clone(),
                broadcasts: broadcasts.clone(),
            };
            let response = client
                .dkg_receive(signed_request(&self.account, methods::DKG_RECEIVE, request))
                .await?;
            complaints.extend(response.into_inner().complaints);
        }
        let mut justifications = Vec::new();
        if !complaints.is_empty() {
            for client in &mut clients {
                let request = DkgJustifyRequest {
                    session_id: session_id.clone(),
                    complaints: complaints.clone(),
                };
                let response = client
                    .dkg_justify(signed_request(&self.account, methods::DKG_JUSTIFY, request))
                    .await?;
                justifications.extend(response.into_inner().justifications);
            }
        }
        let mut committee: Option<Vec<u8>> = None;
        for client in &mut clients {
            let request = DkgFinishRequest {
                session_id: session_id.clone(),
                complaints: complaints.clone(),
                justifications: justifications.clone(),
            };
            let response = client
                .dkg_finish(signed_request(&self.account, methods::DKG_FINISH, request))
                .await?
                .into_inner();
            match &committee {
                Some(first) if first != &response.committee => {
                    return Err(Status::internal(
                        "committee members disagree on the collective key",
                    ))
                }
                _ => committee = Some(response.committee),
            }
        }
        let public = CommitteePublic::from_bytes(&committee.unwrap_or_default())
            .map_err(|error| Status::internal(format!("committee data: {error}")))?;
        *self.committee.lock().map_err(|_| poisoned())? = Some(Committee {
            public: public.clone(),
            members,
        });
        Ok(public)
    }

    /// Records a new order (already escrowed on the ledger) and computes it in the
    /// background.
    #[allow(clippy::too_many_arguments)]
    pub fn start_order(
        self: &Arc<Self>,
        order: TxId,
        buyer: AccountId,
        sql: String,
        plan: QueryPlan,
        listings: Vec<ListingId>,
        purpose: Purpose,
        epsilon_micro: u64,
        result_key: PublicKey,
    ) -> Result<(), Status> {
        let plan_json = serde_json::to_string(&plan)
            .map_err(|error| Status::internal(format!("plan: {error}")))?;
        self.orders.lock().map_err(|_| poisoned())?.insert(
            order,
            OrderRecord {
                buyer,
                state: OrderState::Computing,
                message: "computing".into(),
                nodes: Vec::new(),
                plan: plan_json,
                result: Vec::new(),
                receipt: None,
                committee_used: Vec::new(),
            },
        );
        let coordinator = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = coordinator
                .compute(
                    order,
                    &sql,
                    &plan,
                    &listings,
                    purpose,
                    epsilon_micro,
                    &result_key,
                )
                .await;
            if let Err(message) = outcome {
                tracing::warn!(order = %hex::encode(order.0.as_bytes()), %message, "order failed; refunding");
                let refund = coordinator
                    .submit_own(Action::Refund {
                        order: OrderId(order),
                    })
                    .await;
                let refunded = match refund {
                    Ok(_) => "the escrow was refunded".to_string(),
                    Err(error) => format!("the refund failed: {}", error.message()),
                };
                let _ = coordinator.update_order(order, |record| {
                    record.state = OrderState::Failed;
                    record.message = format!("{message}; {refunded}");
                });
            }
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn compute(
        &self,
        order: TxId,
        sql: &str,
        plan: &QueryPlan,
        listings: &[ListingId],
        purpose: Purpose,
        epsilon_micro: u64,
        result_key: &PublicKey,
    ) -> Result<(), String> {
        let committee = self
            .committee()
            .map_err(|error| error.message().to_string())?
            .ok_or("the key committee has not been formed")?;
        let collective_key = *committee.public.collective_key();
        let order_bytes = order.0.as_bytes().to_vec();

        // 1. Every listing's node computes, encrypts and proves, in parallel.
        let mut tasks = tokio::task::JoinSet::new();
        for (position, listing) in listings.iter().enumerate() {
            let info = self
                .listing(&listing.0)
                .map_err(|error| error.message().to_string())?
                .ok_or_else(|| format!("listing {listing} has no node registered"))?;
            let request = ContributeRequest {
                order_id: order_bytes.clone(),
                listing: listing.0.clone(),
                sql: sql.to_string(),
                purpose: purpose_name(purpose).to_string(),
            };
            let signed = signed_request(&self.account, methods::CONTRIBUTE, request);
            let timeout = self.node_timeout;
            tasks.spawn(async move {
                let answer = async {
                    let mut client = connect(&info.endpoint).await?;
                    tokio::time::timeout(timeout, client.contribute(signed))
                        .await
                        .map_err(|_| Status::deadline_exceeded("node did not answer in time"))?
                        .map(tonic::Response::into_inner)
                }
                .await;
                (position, answer)
            });
        }
        let mut answers = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (position, answer) =
                joined.map_err(|error| format!("node task failed: {error}"))?;
            answers.insert(position, answer);
        }

        // 2. Decode, then batch-verify every decodable contribution.
        let mut reports: Vec<NodeReport> = Vec::new();
        let mut decoded: Vec<(usize, Contribution, u64, Vec<AccountId>)> = Vec::new();
        for (position, listing) in listings.iter().enumerate() {
            let mut report = NodeReport {
                listing: listing.0.clone(),
                outcome: "accepted".into(),
                reason: String::new(),
                participants: 0,
            };
            match answers.remove(&position) {
                Some(Ok(response)) => match decode_contribution(&response) {
                    Ok((contribution, participants)) => {
                        report.participants = participants.len() as u64;
                        decoded.push((position, contribution, response.capacity, participants));
                    }
                    Err(reason) => {
                        report.outcome = "rejected".into();
                        report.reason = reason;
                    }
                },
                Some(Err(status)) => {
                    report.outcome = if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) {
                        "unavailable".into()
                    } else {
                        "rejected".into()
                    };
                    report.reason = status.message().to_string();
                }
                None => {
                    report.outcome = "unavailable".into();
                    report.reason = "no answer".into();
                }
            }
            reports.push(report);
        }
        let contexts: Vec<_> = decoded
            .iter()
            .map(|(position, ..)| contribution_context(&order_bytes, &listings[*position].0))
            .collect::<Result<_, _>>()
            .map_err(|status| status.message().to_string())?;
        let statements: Vec<ContributionStatement<'_>> = decoded
            .iter()
            .zip(&contexts)
            .map(
                |((_, contribution, capacity, _), context)| ContributionStatement {
                    context,
                    capacity: *capacity,
                    contribution,
                },
            )
            .collect();
        let mut rejected_positions = Vec::new();
        if let Err(failures) =
            verify_contributions(&collective_key, plan, &statements, &mut rand::rngs::OsRng)
        {
            for (index, error) in failures {
                let position = decoded[index].0;
                reports[position].outcome = "rejected".into();
                reports[position].reason = format!("{error}; its contribution was not summed");
                rejected_positions.push(index);
            }
        }
        let _ = self.update_order(order, |record| record.nodes = reports.clone());
        let failed: Vec<String> = reports
            .iter()
            .filter(|report| report.outcome != "accepted")
            .map(|report| {
                format!(
                    "listing {} {}: {}",
                    report.listing, report.outcome, report.reason
                )
            })
            .collect();
        if !failed.is_empty() {
            return Err(format!(
                "not every listing contributed a valid share ({})",
                failed.join("; ")
            ));
        }

        // 3. Sum and key-switch to the buyer with any t committee members.
        let accepted: Vec<&Contribution> = decoded
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected_positions.contains(index))
            .map(|(_, (_, contribution, _, _))| contribution)
            .collect();
        let summed = sum_contributions(&accepted);
        let summed_bytes: Vec<Vec<u8>> = summed.iter().map(Wire::to_bytes).collect();
        let mut share_tasks = tokio::task::JoinSet::new();
        for (member, endpoint) in committee.members.clone() {
            let request = KeySwitchRequest {
                order_id: order_bytes.clone(),
                ciphertexts: summed_bytes.clone(),
                recipient: result_key.to_bytes(),
            };
            let signed = signed_request(&self.account, methods::KEY_SWITCH, request);
            let timeout = self.node_timeout;
            share_tasks.spawn(async move {
                let answer = async {
                    let mut client = connect(&endpoint).await?;
                    tokio::time::timeout(timeout, client.key_switch(signed))
                        .await
                        .map_err(|_| Status::deadline_exceeded("member did not answer in time"))?
                        .map(tonic::Response::into_inner)
                }
                .await;
                (member, answer)
            });
        }
        let mut shares = Vec::new();
        let mut absent = Vec::new();
        while let Some(joined) = share_tasks.join_next().await {
            let (member, answer) =
                joined.map_err(|error| format!("key-switch task failed: {error}"))?;
            match answer.and_then(|response| {
                KeySwitchShare::from_bytes(&response.share)
                    .map_err(|error| Status::invalid_argument(format!("share: {error}")))
            }) {
                Ok(share) => shares.push(share),
                Err(status) => {
                    absent.push(format!("member {}: {}", member.get(), status.message()))
                }
            }
        }
        let context =
            release_context(&order_bytes).map_err(|status| status.message().to_string())?;
        let switched = committee
            .public
            .combine(&context, &summed, result_key, &shares)
            .map_err(|error| {
                format!(
                    "key switching failed: {error} (threshold {}; {})",
                    committee.public.threshold(),
                    if absent.is_empty() {
                        "no member absent".to_string()
                    } else {
                        absent.join("; ")
                    }
                )
            })?;
        let result: Vec<Vec<u8>> = switched.ciphertexts.0.iter().map(Wire::to_bytes).collect();

        // 4. Receipt and settlement on the ledger.
        let mut contributions_hash = Vec::new();
        let mut proofs_hash = Vec::new();
        for (_, contribution, _, _) in &decoded {
            for ciphertext in &contribution.ciphertexts {
                contributions_hash.extend(ciphertext.to_bytes());
            }
            proofs_hash.extend(contribution.proof.to_bytes());
        }
        for share in &shares {
            proofs_hash.extend(share.to_bytes());
        }
        let receipt = QueryReceipt {
            order: OrderId(order),
            query_hash: query_hash(sql),
            contributions_root: tagged_hash(
                "cohortex/market/contributions/v1",
                &[&contributions_hash],
            ),
            proofs_hash: tagged_hash("cohortex/market/proofs/v1", &[&proofs_hash]),
            result_hash: tagged_hash("cohortex/market/result/v1", &[&result.concat()]),
            listings: decoded
                .iter()
                .map(|(position, _, _, participants)| ListingContribution {
                    listing: listings[*position].clone(),
                    epsilon_debited_micro: epsilon_micro,
                    participants: participants.clone(),
                })
                .collect(),
        };
        let recorded = self
            .submit_own(Action::RecordReceipt(receipt))
            .await
            .map_err(|status| format!("the ledger refused the receipt: {}", status.message()))?;
        self.submit_own(Action::Settle {
            order: OrderId(order),
            receipt: ReceiptId(recorded.tx_id),
        })
        .await
        .map_err(|status| format!("the ledger refused the settlement: {}", status.message()))?;
        let used: Vec<u32> = switched
            .used
            .iter()
            .map(|member| u32::from(member.get()))
            .collect();
        self.update_order(order, |record| {
            record.state = OrderState::Completed;
            record.message = format!(
                "computed by {} listing(s); key-switched by members {:?}; receipt recorded and escrow settled",
                listings.len(),
                used
            );
            record.result = result;
            record.receipt = Some(recorded.tx_id);
            record.committee_used = used.clone();
        })
        .map_err(|status| status.message().to_string())?;
        Ok(())
    }
}

fn decode_contribution(
    response: &cohortex_proto::v1::ContributeResponse,
) -> Result<(Contribution, Vec<AccountId>), String> {
    let ciphertexts = response
        .ciphertexts
        .iter()
        .map(|bytes| Ciphertext::from_bytes(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("ciphertexts: {error}"))?;
    let proof = CiphertextRangeProof::from_bytes(&response.proof)
        .map_err(|error| format!("proof: {error}"))?;
    let mut participants = Vec::with_capacity(response.participants.len());
    for bytes in &response.participants {
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "participants: every account is 32 bytes".to_string())?;
        participants.push(AccountId(key));
    }
    if participants.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("participants: not strictly ascending".into());
    }
    Ok((Contribution { ciphertexts, proof }, participants))
}

/// Compiles `sql` against every listing's schema; they must agree on the plan.
pub fn compile_for(sql: &str, infos: &[ListingInfo]) -> Result<QueryPlan, Status> {
    let mut plan: Option<QueryPlan> = None;
    for info in infos {
        let compiled = compile(sql, &info.schema)
            .map_err(|error| Status::invalid_argument(format!("sql: {error}")))?;
        if let Some(first) = &plan {
            if first != &compiled {
                return Err(Status::invalid_argument(
                    "sql: the listings' schemas give different plans for this query; order listings with the same manifest",
                ));
            }
        } else {
            plan = Some(compiled);
        }
    }
    plan.ok_or_else(|| Status::invalid_argument("transaction: the order names no listing"))
}
