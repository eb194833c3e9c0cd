//! The order coordinator: runs the key ceremony across the committee at cluster start, and for
//! each order hands the query to the listings' nodes, batch-verifies their contributions,
//! sums them, gathers t key-switch shares towards the buyer, and records the receipt and the
//! settlement on the ledger. If the computation cannot finish, the escrow is refunded.
//!
//! The coordinator holds a committee-member account: it records receipts and settles or
//! refunds orders. It never holds a key share and never sees a plaintext statistic: it only
//! handles ciphertexts under the collective key and, after key switching, under the buyer's.

use crate::error::OrderError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::CoordinatorError;
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::{
    DkgConfirmRequest, DkgDealRequest, DkgFinishRequest, DkgJustifyRequest, DkgPeer,
    DkgReceiveRequest, OrderState,
};
use compute_node::{compile, QueryPlan, Schema};
use ed25519_dalek::SigningKey;
use market::server::{
    bounded_message, read_ledger, submit, submit_together, SharedLedger, Submitted,
};
use market::{
    AccountId, Action, Hash32, ListingContribution, ListingId, OrderId, Purpose, QueryReceipt,
    ReceiptCosignature, ReceiptId, SignedTx, TxBody, TxId, MAX_STAGED_PER_TX,
};
use rand::RngCore;
use tonic::Status;
use zk::{BsgsConfig, CommitteePublic, DecryptionTable, MemberIndex, PublicKey, Wire};

pub use market::hash::{manifest_hash, query_hash, LABEL_MANIFEST, LABEL_QUERY};

/// What the coordinator knows of a listing besides the ledger's record.
#[derive(Debug, Clone)]
pub struct ListingInfo {
    /// The manifest text.
    pub manifest: String,
    /// The parsed schema.
    pub schema: Schema,
    /// The node's endpoint (`https://host:port`).
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

/// How one listing's node took part in an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Its contribution verified and was summed.
    Accepted,
    /// It answered with something that does not verify, or refused.
    Rejected,
    /// It did not answer in time.
    Unavailable,
}

impl NodeOutcome {
    /// What a node's refusal means for its listing: unreachable or too slow is
    /// `Unavailable`, anything else `Rejected`.
    pub(crate) fn of_refusal(status: &Status) -> Self {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) {
            NodeOutcome::Unavailable
        } else {
            NodeOutcome::Rejected
        }
    }

    const ALL: [NodeOutcome; 3] = [
        NodeOutcome::Accepted,
        NodeOutcome::Rejected,
        NodeOutcome::Unavailable,
    ];

    /// Its name on the wire (`NodeReport.outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOutcome::Accepted => "accepted",
            NodeOutcome::Rejected => "rejected",
            NodeOutcome::Unavailable => "unavailable",
        }
    }

    /// The outcome named `text` on the wire.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// What one listing's node did in an order, as the buyer is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    /// The listing.
    pub listing: String,
    /// How it took part.
    pub outcome: NodeOutcome,
    /// Why, when it was not accepted.
    pub reason: String,
    /// How many of its patients took part.
    pub participants: u64,
}

impl NodeReport {
    /// An accepted report for `listing`, with nothing counted yet.
    pub(crate) fn accepted(listing: &str) -> Self {
        Self {
            listing: listing.to_string(),
            outcome: NodeOutcome::Accepted,
            reason: String::new(),
            participants: 0,
        }
    }

    /// Marks the report `outcome`, for `reason`.
    pub(crate) fn mark(&mut self, outcome: NodeOutcome, reason: impl Into<String>) {
        self.outcome = outcome;
        self.reason = reason.into();
    }
}

impl From<&NodeReport> for cohortex_proto::v1::NodeReport {
    fn from(report: &NodeReport) -> Self {
        Self {
            listing: report.listing.clone(),
            outcome: report.outcome.as_str().to_string(),
            reason: report.reason.clone(),
            participants: report.participants,
        }
    }
}

impl TryFrom<cohortex_proto::v1::NodeReport> for NodeReport {
    type Error = String;

    fn try_from(wire: cohortex_proto::v1::NodeReport) -> Result<Self, String> {
        let outcome = NodeOutcome::parse(&wire.outcome).ok_or_else(|| {
            format!(
                "outcome: `{}` is none of accepted, rejected, unavailable",
                wire.outcome
            )
        })?;
        Ok(Self {
            listing: wire.listing,
            outcome,
            reason: wire.reason,
            participants: wire.participants,
        })
    }
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
    /// ε the release spent per listing, micro-ε.
    pub epsilon_micro: u64,
    /// Committee members whose noise the release includes.
    pub noise_members: Vec<u32>,
    /// Per cell: withheld for the minimum cohort.
    pub suppressed: Vec<bool>,
    /// What identifies a repeat of this order (see [`Coordinator::earlier_release`]).
    pub identity: ReleaseIdentity,
    /// When the order completed (Unix seconds).
    pub completed_at: Option<u64>,
    /// A feasibility order: each listing's noisy count under the recruiter's TFHE key.
    pub site_counts: Vec<cohortex_proto::v1::SiteCount>,
    /// How long each phase of the computation took, in the order they ran (empty for an
    /// order computed before this run).
    pub phases: Vec<(&'static str, Duration)>,
}

/// Wall-clock time per phase of an order, as the coordinator sees it.
struct PhaseClock {
    started: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    fn start() -> Self {
        Self {
            started: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name` now and starts the next.
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - self.started));
        self.started = now;
    }
}

/// What makes two orders the same query: the buyer, the SQL's hash, the listings, the
/// purpose, ε and the key the result is encrypted to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseIdentity {
    /// The buyer.
    pub buyer: AccountId,
    /// Hash of the SQL text.
    pub query_hash: Hash32,
    /// The listings, in order.
    pub listings: Vec<ListingId>,
    /// The purpose.
    pub purpose: Purpose,
    /// ε per listing, micro-ε.
    pub epsilon_micro: u64,
    /// The result key, encoded.
    pub result_key: Vec<u8>,
}

/// How long a completed release answers identical repeat orders.
pub const RELEASE_REUSE_SECONDS: u64 = 24 * 3600;

/// The coordinator.
pub struct Coordinator {
    ledger: SharedLedger,
    account: SigningKey,
    /// Serialises the coordinator's own transactions (their nonces).
    submit_lock: tokio::sync::Mutex<()>,
    listings: Mutex<BTreeMap<String, ListingInfo>>,
    committee: Mutex<Option<Committee>>,
    orders: Mutex<BTreeMap<TxId, OrderRecord>>,
    /// Members whose noise shares are left out of every release (test hook, see
    /// [`Coordinator::withhold_noise_of`]).
    withheld_noise: Mutex<BTreeSet<u16>>,
    /// Test hook: phase VALUES re-encrypts to this key instead of the order's.
    values_redirected_to: Mutex<Option<PublicKey>>,
    /// Test hook: receipts are recorded without their settlement (see
    /// [`Coordinator::leave_orders_computed`]).
    leave_computed: std::sync::atomic::AtomicBool,
    /// How long a node may take to answer one call (a contribution, a key-switch share, a key
    /// ceremony round, a feasibility count); an evaluation key's upload may take 300 s.
    pub node_timeout: Duration,
    /// Where the listings' endpoints and manifests and the committee are kept across
    /// restarts (`None`: memory only, as in the in-process cluster).
    state_file: Option<std::path::PathBuf>,
    /// Serialises writes of the state file (concurrent publications each save).
    save_lock: Arc<tokio::sync::Mutex<()>>,
    /// The market's TLS identity, presented to the nodes (`None`: plaintext, in-process only).
    tls: Option<TlsIdentity>,
    /// How orders reach the nodes, when not over gRPC with `account`, `tls` and
    /// `node_timeout` ([`Coordinator::with_nodes`]).
    nodes: Option<Arc<dyn ComputeNodes>>,
    /// Recruiters' TFHE evaluation keys by fingerprint, with a quota per recruiter.
    #[cfg(feature = "tfhe")]
    evaluation_keys: Mutex<crate::evaluation_keys::EvaluationKeyStore>,
    /// Evaluation-key uploads read at once.
    #[cfg(feature = "tfhe")]
    evaluation_key_uploads: Arc<tokio::sync::Semaphore>,
    /// Replies to posted trials, by trial (also kept beside the state file).
    #[cfg(feature = "tfhe")]
    trial_replies: Mutex<BTreeMap<String, Vec<cohortex_proto::v1::TrialReply>>>,
}

#[cfg(feature = "tfhe")]
mod feasibility;
#[cfg(feature = "tfhe")]
pub use feasibility::{key_chunks, KEY_CHUNK_BYTES};
mod nodes;
mod order;
mod persistence;
#[cfg(feature = "tfhe")]
mod recruitment;
pub use nodes::{ComputeNodes, GrpcNodes, NodeCall};
pub use order::OrderSpec;

fn poisoned() -> CoordinatorError {
    CoordinatorError::poisoned()
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
            withheld_noise: Mutex::new(BTreeSet::new()),
            values_redirected_to: Mutex::new(None),
            leave_computed: std::sync::atomic::AtomicBool::new(false),
            node_timeout: Duration::from_secs(120),
            state_file: None,
            save_lock: Arc::new(tokio::sync::Mutex::new(())),
            tls: None,
            nodes: None,
            #[cfg(feature = "tfhe")]
            evaluation_keys: Mutex::new(crate::evaluation_keys::EvaluationKeyStore::default()),
            #[cfg(feature = "tfhe")]
            evaluation_key_uploads: Arc::new(tokio::sync::Semaphore::new(
                crate::evaluation_keys::CONCURRENT_UPLOADS,
            )),
            #[cfg(feature = "tfhe")]
            trial_replies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The URL scheme nodes must publish their endpoints under: `https` when the coordinator
    /// speaks TLS.
    pub fn link_scheme(&self) -> &'static str {
        cohortex_proto::tls::scheme(self.tls.as_ref())
    }

    /// The coordinator presenting `tls` on its links to the nodes.
    pub fn with_tls(mut self, tls: Option<TlsIdentity>) -> Self {
        self.tls = tls;
        self
    }

    /// The coordinator reaching the nodes through `nodes` instead of gRPC: every node call
    /// (an order's phases, the key ceremony, feasibility counts, trial acceptances,
    /// evaluation keys).
    pub fn with_nodes(mut self, nodes: Arc<dyn ComputeNodes>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// How an order reaches its nodes.
    fn nodes(&self) -> Arc<dyn ComputeNodes> {
        match &self.nodes {
            Some(nodes) => Arc::clone(nodes),
            None => Arc::new(self.grpc_nodes()),
        }
    }

    /// The nodes over gRPC, as this coordinator reaches them.
    fn grpc_nodes(&self) -> GrpcNodes {
        GrpcNodes {
            account: self.account.clone(),
            tls: self.tls.clone(),
            timeout: self.node_timeout,
        }
    }

    /// Records every later receipt without its settlement, as a market that stopped between
    /// the two left its ledger before they went into one block. For restart tests:
    /// [`Coordinator::settle_orders_left_computed`] settles them.
    #[cfg(feature = "fault-injection")]
    pub fn leave_orders_computed(&self) {
        self.leave_computed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Leaves these members' noise shares out of every later release, as a coordinator
    /// colluding with them would. For attack tests: the release must keep its ε as long as
    /// one honest member's share remains (members refuse to key-switch without their own).
    #[cfg(feature = "fault-injection")]
    pub fn withhold_noise_of(&self, members: &[u16]) -> Result<(), CoordinatorError> {
        *self.withheld_noise.lock().map_err(|_| poisoned())? = members.iter().copied().collect();
        Ok(())
    }

    /// Asks the members to re-encrypt every later release's values to `key` instead of the
    /// buyer's, as a coordinator that wants to read them would. For attack tests: members
    /// key-switch only to the result key the buyer signed into the order.
    #[cfg(feature = "fault-injection")]
    pub fn redirect_values_to(&self, key: PublicKey) -> Result<(), CoordinatorError> {
        *self.values_redirected_to.lock().map_err(|_| poisoned())? = Some(key);
        Ok(())
    }

    /// Checks, at the ledger's last block, what `RecordReceipt` will check of the
    /// participants: each holds an active consent to the listing and purpose whose personal
    /// limit allows `epsilon_micro` more, and each listing has at least its minimum cohort.
    async fn check_receipt_rules(
        &self,
        named: Arc<[(ListingId, Vec<AccountId>)]>,
        purpose: Purpose,
        epsilon_micro: u64,
    ) -> Result<(), OrderError> {
        read_ledger(&self.ledger, move |ledger| {
            let state = ledger.state();
            let now = ledger.machine().last_time();
            let mut problems = Vec::new();
            let mut seen: BTreeMap<AccountId, &ListingId> = BTreeMap::new();
            for (listing, participants) in named.iter() {
                for participant in participants {
                    if let Some(first) = seen.insert(*participant, listing) {
                        problems.push(format!(
                            "patient {participant} is named by listing {first} and again by \
                             listing {listing}"
                        ));
                    }
                }
            }
            for (listing, participants) in named.iter() {
                let usable = state
                    .current_consents_affording(listing, purpose, now, epsilon_micro)
                    .into_iter()
                    .collect::<BTreeSet<_>>();
                let unusable = participants
                    .iter()
                    .filter(|participant| !usable.contains(participant))
                    .count();
                if unusable > 0 {
                    problems.push(format!(
                        "listing {listing} named {unusable} participant(s) without a current \
                         consent whose personal limit allows this ε"
                    ));
                }
                let min = state
                    .listing(listing)
                    .map_or(0, |listing| listing.terms.min_cohort_size as usize);
                if participants.len() < min {
                    problems.push(format!(
                        "listing {listing} has {} participant(s) who consent and whose personal \
                         limit allows this ε; its minimum cohort is {min}",
                        participants.len()
                    ));
                }
            }
            Ok(problems)
        })
        .await
        .map_err(OrderError::from)
        .and_then(|problems| {
            if problems.is_empty() {
                Ok(())
            } else {
                Err(OrderError::ReceiptRules(problems))
            }
        })
    }

    /// Stages each listing's participants for `order`'s receipt on the ledger, in chunks of at
    /// most [`MAX_STAGED_PER_TX`], and commits the release (`noise_members` both noise and
    /// key-switch it) with `parts`, each listing's attested part naming no participants, so
    /// that the ledger knows exactly who is in the release. All in one block: one block for
    /// every replica to replay, however many chunks. A list an earlier run began is resumed
    /// where it stops; one that is not a start of `participants` is refused (the receipt would
    /// not match the node's attestation). A refused chunk leaves the release uncommitted.
    async fn stage_and_commit_release(
        &self,
        order: OrderId,
        named: &[(ListingId, Vec<AccountId>)],
        parts: Vec<ListingContribution>,
        noise_members: Vec<u16>,
    ) -> Result<(), OrderError> {
        let commit = Action::CommitAttestedRelease {
            order,
            noise_members: noise_members.clone(),
            quorum: noise_members,
            listings: parts,
        };
        self.stage_then(
            order,
            named,
            commit,
            "staging the participants and committing the release",
        )
        .await
        .map(|_| ())
    }

    /// Stages `named` participants on the ledger in chunks of at most
    /// [`MAX_STAGED_PER_TX`] (after any already staged, which must be their start) and then
    /// appends `last`, all in one block; returns what `last` became on the ledger.
    async fn stage_then(
        &self,
        order: OrderId,
        named: &[(ListingId, Vec<AccountId>)],
        last: Action,
        what: &'static str,
    ) -> Result<Submitted, OrderError> {
        let _guard = self.submit_lock.lock().await;
        let (chain_id, mut nonce) = self.own_next_nonce().await?;
        let mut envelopes = Vec::new();
        let mut chunks = 0;
        for (listing, participants) in named {
            let staged = {
                let listing = listing.clone();
                read_ledger(&self.ledger, move |ledger| {
                    Ok(ledger
                        .state()
                        .staged_participants(&order, &listing)
                        .to_vec())
                })
                .await?
            };
            if !participants.starts_with(&staged) {
                return Err(OrderError::ReceiptRules(vec![format!(
                    "listing {listing} has {} participant(s) staged on the ledger that are not \
                     the ones its node attested",
                    staged.len()
                )]));
            }
            for chunk in participants[staged.len()..].chunks(MAX_STAGED_PER_TX) {
                let action = Action::StageParticipants {
                    order,
                    listing: listing.clone(),
                    participants: chunk.to_vec(),
                };
                envelopes.push(self.sign_own(chain_id, nonce, action)?.bytes);
                nonce += 1;
                chunks += 1;
            }
        }
        envelopes.push(self.sign_own(chain_id, nonce, last)?.bytes);
        let mut submitted = submit_together(&self.ledger, envelopes)
            .await
            .map_err(|status| OrderError::refused(what)(status.into()))?;
        tracing::info!(
            order = %hex::encode(order.0 .0.as_bytes()),
            chunks,
            what,
            "participants staged"
        );
        submitted.pop().ok_or_else(|| {
            OrderError::from(CoordinatorError::internal("the ledger appended nothing"))
        })
    }

    /// The ledger's chain id, and the owner of each of `listings` on it (`None` for one it does
    /// not hold): whose attestation each listing's answer must carry.
    async fn listing_owners(
        &self,
        listings: &[ListingId],
    ) -> Result<(Hash32, Vec<Option<AccountId>>), OrderError> {
        let listings = listings.to_vec();
        read_ledger(&self.ledger, move |ledger| {
            let owners = listings
                .iter()
                .map(|id| ledger.state().listing(id).map(|listing| listing.owner))
                .collect();
            Ok((ledger.chain_id(), owners))
        })
        .await
        .map_err(OrderError::from)
    }

    /// The largest minimum cohort among `listings`' terms on the ledger.
    async fn min_cohort(&self, listings: &[ListingId]) -> Result<u64, OrderError> {
        let listings = listings.to_vec();
        read_ledger(&self.ledger, move |ledger| {
            Ok(listings
                .iter()
                .filter_map(|id| ledger.state().listing(id))
                .map(|listing| u64::from(listing.terms.min_cohort_size))
                .max()
                .unwrap_or(0))
        })
        .await
        .map_err(OrderError::from)
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
    pub async fn register_listing(
        &self,
        listing: &str,
        info: ListingInfo,
    ) -> Result<(), CoordinatorError> {
        self.listings
            .lock()
            .map_err(|_| poisoned())?
            .insert(listing.to_string(), info);
        self.save().await
    }

    /// A listing's information.
    pub fn listing(&self, listing: &str) -> Result<Option<ListingInfo>, CoordinatorError> {
        Ok(self
            .listings
            .lock()
            .map_err(|_| poisoned())?
            .get(listing)
            .cloned())
    }

    /// Every listing's information.
    pub fn listings(&self) -> Result<BTreeMap<String, ListingInfo>, CoordinatorError> {
        Ok(self.listings.lock().map_err(|_| poisoned())?.clone())
    }

    /// The committee, once the key ceremony has run.
    pub fn committee(&self) -> Result<Option<Committee>, CoordinatorError> {
        Ok(self.committee.lock().map_err(|_| poisoned())?.clone())
    }

    /// The most recent completed order with this identity, completed within
    /// [`RELEASE_REUSE_SECONDS`] of `now`: a repeat is answered from its release.
    pub fn earlier_release(
        &self,
        identity: &ReleaseIdentity,
        now: u64,
    ) -> Result<Option<TxId>, CoordinatorError> {
        let orders = self.orders.lock().map_err(|_| poisoned())?;
        Ok(orders
            .iter()
            .filter(|(_, record)| &record.identity == identity)
            .filter_map(|(id, record)| record.completed_at.map(|at| (at, *id)))
            .filter(|(at, _)| now.saturating_sub(*at) <= RELEASE_REUSE_SECONDS)
            .max_by_key(|(at, _)| *at)
            .map(|(_, id)| id))
    }

    /// An order's record.
    pub fn order(&self, id: &TxId) -> Result<Option<OrderRecord>, CoordinatorError> {
        Ok(self.orders.lock().map_err(|_| poisoned())?.get(id).cloned())
    }

    /// The order's record as `update` completes it, without storing it: it is shown to the
    /// buyer only once its receipt is on the ledger ([`Coordinator::complete_order`]).
    fn completed_record(
        &self,
        id: TxId,
        update: impl FnOnce(&mut OrderRecord),
    ) -> Result<OrderRecord, CoordinatorError> {
        let mut record = self
            .order(&id)?
            .ok_or_else(|| CoordinatorError::internal("the order's record is gone"))?;
        update(&mut record);
        Ok(record)
    }

    /// Shows `record` to the buyer, with its receipt.
    fn complete_order(
        &self,
        id: TxId,
        record: OrderRecord,
        receipt: TxId,
    ) -> Result<(), CoordinatorError> {
        self.update_order(id, |current| {
            *current = record;
            current.receipt = Some(receipt);
        })
    }

    fn update_order(
        &self,
        id: TxId,
        update: impl FnOnce(&mut OrderRecord),
    ) -> Result<(), CoordinatorError> {
        let mut orders = self.orders.lock().map_err(|_| poisoned())?;
        if let Some(record) = orders.get_mut(&id) {
            update(record);
        }
        Ok(())
    }

    /// Records `receipt` with its co-signatures and settles `order` against it, in one block
    /// ([`submit_together`]): no crash can leave a computed order unpaid. Returns the
    /// receipt's id.
    async fn record_receipt_and_settle(
        &self,
        order: OrderId,
        receipt: QueryReceipt,
        cosignatures: Vec<ReceiptCosignature>,
    ) -> Result<TxId, CoordinatorError> {
        let _guard = self.submit_lock.lock().await;
        let (chain_id, nonce) = self.own_next_nonce().await?;
        let recorded = self.sign_own(
            chain_id,
            nonce,
            Action::RecordCosignedReceipt {
                receipt,
                cosignatures,
            },
        )?;
        let receipt_id = recorded.id();
        if self
            .leave_computed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            submit(&self.ledger, recorded.bytes).await?;
            return Ok(receipt_id);
        }
        let settled = self.sign_own(
            chain_id,
            nonce + 1,
            Action::Settle {
                order,
                receipt: ReceiptId(receipt_id),
            },
        )?;
        submit_together(&self.ledger, vec![recorded.bytes, settled.bytes]).await?;
        Ok(receipt_id)
    }

    /// Settles every order the ledger holds computed but not settled: at start-up, those are
    /// orders whose receipt an earlier run recorded before it stopped (or whose settlement
    /// the ledger refused). Returns the orders settled.
    pub async fn settle_orders_left_computed(&self) -> Result<Vec<OrderId>, CoordinatorError> {
        let computed: Vec<(OrderId, ReceiptId)> = read_ledger(&self.ledger, |ledger| {
            Ok(ledger
                .state()
                .orders()
                .filter_map(|(id, order)| match order.status {
                    market::state::Settlement::Computed { receipt } => Some((*id, receipt)),
                    _ => None,
                })
                .collect())
        })
        .await?;
        for (order, receipt) in &computed {
            self.submit_own(Action::Settle {
                order: *order,
                receipt: *receipt,
            })
            .await?;
            tracing::info!(order = %hex::encode(order.0 .0.as_bytes()), "settled an order an earlier run left computed");
        }
        Ok(computed.into_iter().map(|(order, _)| order).collect())
    }

    /// Signs `action` with the coordinator's account at its next nonce and appends it.
    pub async fn submit_own(&self, action: Action) -> Result<Submitted, CoordinatorError> {
        let _guard = self.submit_lock.lock().await;
        let (chain_id, nonce) = self.own_next_nonce().await?;
        let envelope = self.sign_own(chain_id, nonce, action)?;
        Ok(submit(&self.ledger, envelope.bytes).await?)
    }

    /// The chain id and the coordinator account's next nonce. The caller holds `submit_lock`
    /// until what it signs is appended.
    async fn own_next_nonce(&self) -> Result<(Hash32, u64), CoordinatorError> {
        let me = self.account();
        Ok(read_ledger(&self.ledger, move |ledger| {
            Ok((
                ledger.chain_id(),
                ledger
                    .state()
                    .account(&me)
                    .map_or(0, |account| account.next_nonce),
            ))
        })
        .await?)
    }

    /// `action` signed with the coordinator's account at `nonce`.
    fn sign_own(
        &self,
        chain_id: Hash32,
        nonce: u64,
        action: Action,
    ) -> Result<SignedTx, CoordinatorError> {
        TxBody {
            chain_id,
            signer: self.account(),
            nonce,
            action,
        }
        .sign(&self.account)
        .map_err(|error| CoordinatorError::internal(format!("signing: {error}")))
    }

    /// Runs the joint-Feldman key ceremony across `members` (index, endpoint) with threshold
    /// `threshold`, and keeps the committee's public data.
    pub async fn run_key_ceremony(
        &self,
        members: Vec<(MemberIndex, String)>,
        threshold: u16,
    ) -> Result<CommitteePublic, CoordinatorError> {
        let mut session_id = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut session_id);
        let peers: Vec<DkgPeer> = members
            .iter()
            .map(|(member, endpoint)| DkgPeer {
                member: u32::from(member.get()),
                endpoint: endpoint.clone(),
            })
            .collect();
        let nodes = self.nodes();
        let endpoints: Vec<&str> = members
            .iter()
            .map(|(_, endpoint)| endpoint.as_str())
            .collect();
        // The coordinator only relays: every public message is signed by the member it comes
        // from and checked by every other member against its own pinned committee.
        let missing =
            |what: &str| CoordinatorError::internal(format!("a member answered without {what}"));
        let mut broadcasts = Vec::new();
        for endpoint in &endpoints {
            let request = DkgDealRequest {
                session_id: session_id.clone(),
                threshold: u32::from(threshold),
                peers: peers.clone(),
            };
            let broadcast = nodes.dkg_deal(endpoint, request).await?.broadcast;
            broadcasts.push(broadcast.ok_or_else(|| missing("its broadcast"))?);
        }
        let mut complaints = Vec::new();
        for endpoint in &endpoints {
            let request = DkgReceiveRequest {
                session_id: session_id.clone(),
                broadcasts: broadcasts.clone(),
            };
            let statement = nodes.dkg_receive(endpoint, request).await?.complaints;
            complaints.push(statement.ok_or_else(|| missing("its complaints"))?);
        }
        let mut justifications = Vec::new();
        for endpoint in &endpoints {
            let request = DkgJustifyRequest {
                session_id: session_id.clone(),
                complaints: complaints.clone(),
            };
            let statement = nodes.dkg_justify(endpoint, request).await?.justifications;
            justifications.push(statement.ok_or_else(|| missing("its justifications"))?);
        }
        let mut confirmations = Vec::new();
        for endpoint in &endpoints {
            let request = DkgFinishRequest {
                session_id: session_id.clone(),
                complaints: complaints.clone(),
                justifications: justifications.clone(),
            };
            let confirmation = nodes.dkg_finish(endpoint, request).await?.confirmation;
            confirmations.push(confirmation.ok_or_else(|| missing("its confirmation"))?);
        }
        let mut committee: Option<Vec<u8>> = None;
        for endpoint in &endpoints {
            let request = DkgConfirmRequest {
                session_id: session_id.clone(),
                confirmations: confirmations.clone(),
            };
            let response = nodes.dkg_confirm(endpoint, request).await?;
            match &committee {
                Some(first) if first != &response.committee => {
                    return Err(CoordinatorError::internal(
                        "committee members disagree on the collective key",
                    ))
                }
                _ => committee = Some(response.committee),
            }
        }
        let public = CommitteePublic::from_bytes(&committee.unwrap_or_default())
            .map_err(|error| CoordinatorError::internal(format!("committee data: {error}")))?;
        *self.committee.lock().map_err(|_| poisoned())? = Some(Committee {
            public: public.clone(),
            members,
        });
        self.save().await?;
        Ok(public)
    }

    /// Refunds a failed order's escrow and marks it failed with `message` and how the refund
    /// went.
    async fn refund_failed(&self, order: TxId, message: impl std::fmt::Display) {
        let refunded = match self
            .submit_own(Action::Refund {
                order: OrderId(order),
            })
            .await
        {
            Ok(_) => "the escrow was refunded".to_string(),
            Err(error) => format!("the refund failed: {}", error.message()),
        };
        let _ = self.update_order(order, |record| {
            record.state = OrderState::Failed;
            record.message = format!("{message}; {refunded}");
        });
    }
}

/// A small decryption table for noisy counts (at most a few million, plus noise).
fn count_table() -> Result<&'static DecryptionTable, String> {
    static TABLE: OnceLock<Result<DecryptionTable, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            DecryptionTable::build(BsgsConfig {
                table_bits: 16,
                max_abs: 1 << 40,
            })
            .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Compiles `sql` against every listing's schema; they must agree on the plan.
pub fn compile_for(sql: &str, infos: &[ListingInfo]) -> Result<QueryPlan, CoordinatorError> {
    let mut plan: Option<QueryPlan> = None;
    for info in infos {
        let compiled = compile(sql, &info.schema).map_err(|error| {
            CoordinatorError::bad_request(format!("sql: {}", bounded_message(&error.to_string())))
        })?;
        if let Some(first) = &plan {
            if first != &compiled {
                return Err(CoordinatorError::bad_request(
                    "sql: the listings' schemas give different plans for this query; order listings with the same manifest",
                ));
            }
        } else {
            plan = Some(compiled);
        }
    }
    plan.ok_or_else(|| CoordinatorError::bad_request("transaction: the order names no listing"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod node_report_tests {
    use super::{NodeOutcome, NodeReport};

    #[test]
    fn node_outcome_travels_as_its_wire_name_and_an_unknown_name_is_refused() {
        for (outcome, name) in [
            (NodeOutcome::Accepted, "accepted"),
            (NodeOutcome::Rejected, "rejected"),
            (NodeOutcome::Unavailable, "unavailable"),
        ] {
            let report = NodeReport {
                listing: "st-mary".into(),
                outcome,
                reason: "why".into(),
                participants: 7,
            };
            let wire = cohortex_proto::v1::NodeReport::from(&report);
            assert_eq!(wire.outcome, name);
            assert_eq!(NodeReport::try_from(wire).unwrap(), report);
        }
        let unknown = cohortex_proto::v1::NodeReport {
            listing: "st-mary".into(),
            outcome: "accepted-ish".into(),
            reason: String::new(),
            participants: 0,
        };
        let refused = NodeReport::try_from(unknown).unwrap_err();
        assert!(refused.starts_with("outcome:"), "{refused}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod compile_tests {
    use super::{compile_for, ListingInfo};
    use crate::error::CoordinatorError;
    use compute_node::Schema;

    fn listing(bounds: &str) -> ListingInfo {
        let manifest = format!(
            "version = 1\ntable = \"patients\"\nid_column = \"patient_id\"\n\n[[columns]]\n\
             name = \"age\"\ntype = \"integer\"\nbounds = {bounds}\n"
        );
        ListingInfo {
            schema: Schema::from_toml(&manifest, "manifest").unwrap(),
            manifest,
            endpoint: "node".into(),
        }
    }

    #[test]
    fn order_whose_sql_does_not_compile_is_a_bad_request_naming_sql() {
        let refused =
            compile_for("SELECT AVG(weight) FROM patients", &[listing("[0, 120]")]).unwrap_err();
        assert!(
            matches!(refused, CoordinatorError::BadRequest(_)),
            "{refused:?}"
        );
        assert!(refused.message().starts_with("sql: "), "{refused}");
    }

    #[test]
    fn order_over_listings_that_plan_differently_is_a_bad_request() {
        let refused = compile_for(
            "SELECT AVG(age) FROM patients",
            &[listing("[0, 120]"), listing("[0, 90]")],
        )
        .unwrap_err();
        assert!(
            matches!(refused, CoordinatorError::BadRequest(_)),
            "{refused:?}"
        );
        assert!(refused.message().contains("different plans"), "{refused}");
        assert!(matches!(
            compile_for("SELECT COUNT(*) FROM patients", &[]),
            Err(CoordinatorError::BadRequest(_))
        ));
    }
}
