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

use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributionParticipantsRequest,
    ContributionRecord, CosignReceiptRequest, DkgConfirmRequest, DkgDealRequest, DkgFinishRequest,
    DkgJustifyRequest, DkgPeer, DkgReceiveRequest, KeySwitchPhase, KeySwitchRequest,
    KeySwitchResponse, OrderState,
};
use compute_node::contribution::{sum_contributions, Contribution, ContributionStatement};
use compute_node::dp::calibrate;
use compute_node::noise::{
    apply_noise, count_slots, public_count_key, public_count_secret, released_value_slots,
    suppressed_cells, NoiseShare,
};
use compute_node::protocol::{
    contribution_context, counts_context, decode_noise_share, encode_noise_share, methods,
    release_context,
};
use compute_node::{compile, verify_contributions, QueryPlan, Schema};
use ed25519_dalek::SigningKey;
use market::hash::tagged_hash;
use market::server::auth::signed_request_to;
use market::server::{
    bounded_message, excerpt, purpose_name, read_ledger, submit, submit_together, SharedLedger,
    Submitted,
};
use market::{
    AccountId, Action, Hash32, ListingContribution, ListingId, OrderId, Purpose, QueryReceipt,
    ReceiptCosignature, ReceiptId, SignedTx, TxBody, TxId, MAX_STAGED_PER_TX,
};
use rand::RngCore;
use tonic::transport::Channel;
use tonic::Status;
use zk::{
    BsgsConfig, Ciphertext, CiphertextRangeProof, CommitteePublic, DecryptionTable, KeySwitchShare,
    MemberIndex, PublicKey, Wire,
};

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
    /// How long a node may take to contribute or key-switch.
    pub node_timeout: Duration,
    /// Where the listings' endpoints and manifests and the committee are kept across
    /// restarts (`None`: memory only, as in the in-process cluster).
    state_file: Option<std::path::PathBuf>,
    /// Serialises writes of the state file (concurrent publications each save).
    save_lock: Arc<tokio::sync::Mutex<()>>,
    /// The market's TLS identity, presented to the nodes (`None`: plaintext, in-process only).
    tls: Option<TlsIdentity>,
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
mod persistence;
#[cfg(feature = "tfhe")]
mod recruitment;

fn poisoned() -> Status {
    Status::internal("coordinator state lock poisoned")
}

async fn connect(
    endpoint: &str,
    tls: Option<&TlsIdentity>,
) -> Result<ComputeClient<Channel>, Status> {
    let channel = link(endpoint, tls)
        .map_err(|error| Status::internal(format!("endpoint {}: {error}", excerpt(endpoint))))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| {
            Status::unavailable(format!("{} unreachable: {error}", excerpt(endpoint)))
        })?;
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
            withheld_noise: Mutex::new(BTreeSet::new()),
            values_redirected_to: Mutex::new(None),
            leave_computed: std::sync::atomic::AtomicBool::new(false),
            node_timeout: Duration::from_secs(120),
            state_file: None,
            save_lock: Arc::new(tokio::sync::Mutex::new(())),
            tls: None,
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
    pub fn withhold_noise_of(&self, members: &[u16]) -> Result<(), Status> {
        *self.withheld_noise.lock().map_err(|_| poisoned())? = members.iter().copied().collect();
        Ok(())
    }

    /// Asks the members to re-encrypt every later release's values to `key` instead of the
    /// buyer's, as a coordinator that wants to read them would. For attack tests: members
    /// key-switch only to the result key the buyer signed into the order.
    #[cfg(feature = "fault-injection")]
    pub fn redirect_values_to(&self, key: PublicKey) -> Result<(), Status> {
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
    /// key-switch it), all in one block: one block for every replica to replay, however many
    /// chunks. A list an earlier run began is resumed where it stops; one that is not a start
    /// of `participants` is refused (the receipt would not match the node's attestation). A
    /// refused chunk leaves the release uncommitted.
    async fn stage_and_commit_release(
        &self,
        order: OrderId,
        named: &[(ListingId, Vec<AccountId>)],
        noise_members: Vec<u16>,
    ) -> Result<(), OrderError> {
        let commit = Action::CommitRelease {
            order,
            noise_members: noise_members.clone(),
            quorum: noise_members,
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
            .map_err(OrderError::refused(what))?;
        tracing::info!(
            order = %hex::encode(order.0 .0.as_bytes()),
            chunks,
            what,
            "participants staged"
        );
        submitted
            .pop()
            .ok_or_else(|| OrderError::from(Status::internal("the ledger appended nothing")))
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

    /// Noise shares from t members (the release's quorum): the first t members by index,
    /// leaving out `withheld`; a member that fails is replaced by the next one. Returns the
    /// shares and, per member that did not give one, why.
    async fn noise_from_a_quorum(
        &self,
        committee: &Committee,
        withheld: &BTreeSet<u16>,
        request: AddNoiseRequest,
    ) -> (Vec<NoiseShare>, Vec<String>) {
        let threshold = usize::from(committee.public.threshold());
        let mut candidates: Vec<(MemberIndex, String)> = committee
            .members
            .iter()
            .filter(|(member, _)| !withheld.contains(&member.get()))
            .cloned()
            .collect();
        candidates.sort_by_key(|(member, _)| member.get());
        let mut candidates = candidates.into_iter();
        let mut noise: Vec<NoiseShare> = Vec::new();
        let mut absent = Vec::new();
        while noise.len() < threshold {
            let asked: Vec<(MemberIndex, String)> =
                candidates.by_ref().take(threshold - noise.len()).collect();
            if asked.is_empty() {
                break;
            }
            let round = Committee {
                public: committee.public.clone(),
                members: asked,
            };
            let answers = self
                .member_round(
                    &round,
                    methods::ADD_NOISE,
                    request.clone(),
                    |mut client, signed| async move { client.add_noise(signed).await },
                )
                .await;
            for (member, answer) in answers {
                match answer.and_then(|response: AddNoiseResponse| {
                    response
                        .share
                        .ok_or_else(|| Status::invalid_argument("share: missing"))
                        .and_then(|share| decode_noise_share(&share, "share"))
                }) {
                    Ok(share) if share.member == member.get() => noise.push(share),
                    Ok(_) => absent.push(format!(
                        "member {}: share names another member",
                        member.get()
                    )),
                    Err(status) => {
                        absent.push(format!("member {}: {}", member.get(), status.message()))
                    }
                }
            }
        }
        (noise, absent)
    }

    /// Asks every committee member for a key-switch share.
    async fn key_switch_round(
        &self,
        committee: &Committee,
        request: KeySwitchRequest,
    ) -> Vec<(MemberIndex, Result<KeySwitchResponse, Status>)> {
        self.member_round(
            committee,
            methods::KEY_SWITCH,
            request,
            |mut client, signed| async move { client.key_switch(signed).await },
        )
        .await
    }

    /// Asks every committee member to co-sign `receipt`; returns the co-signatures that verify
    /// under the members' accounts registered on the ledger, ascending by member, or why
    /// fewer than the threshold did.
    async fn cosign_round(
        &self,
        committee: &Committee,
        receipt: &QueryReceipt,
    ) -> Result<Vec<ReceiptCosignature>, OrderError> {
        let answers = self
            .member_round(
                committee,
                methods::COSIGN_RECEIPT,
                CosignReceiptRequest {
                    receipt: receipt.to_bytes(),
                },
                |mut client, signed| async move { client.cosign_receipt(signed).await },
            )
            .await;
        let (chain_id, registered) = read_ledger(&self.ledger, |ledger| {
            Ok((ledger.chain_id(), ledger.state().committee().cloned()))
        })
        .await?;
        let registered = registered.ok_or(OrderError::NoCommittee)?;
        let mut cosignatures = Vec::new();
        let mut absent = Vec::new();
        for (member, answer) in answers {
            let member = member.get();
            match answer {
                Ok(response) if response.member == u32::from(member) => {
                    let verifies = registered
                        .member_account(member)
                        .and_then(|account| account.verifying_key().ok())
                        .is_some_and(|key| {
                            receipt.cosigned_by(&key, &chain_id, &response.signature)
                        });
                    if verifies {
                        cosignatures.push(ReceiptCosignature {
                            member,
                            signature: response.signature,
                        });
                    } else {
                        absent.push(format!(
                            "member {member}: a co-signature that does not verify"
                        ));
                    }
                }
                Ok(_) => absent.push(format!("member {member}: co-signed as another member")),
                Err(status) => absent.push(format!("member {member}: {}", status.message())),
            }
        }
        if cosignatures.len() < usize::from(registered.threshold) {
            return Err(OrderError::Committee(format!(
                "only {} of the {} co-signatures the receipt needs ({})",
                cosignatures.len(),
                registered.threshold,
                absent.join("; ")
            )));
        }
        Ok(cosignatures)
    }

    /// Sends `request`, signed for `method`, to every committee member in parallel with `call`;
    /// returns each member's answer (or why it gave none within the node timeout), in member
    /// order.
    async fn member_round<Req, Resp, Call, Answer>(
        &self,
        committee: &Committee,
        method: &'static str,
        request: Req,
        call: Call,
    ) -> Vec<(MemberIndex, Result<Resp, Status>)>
    where
        Req: prost::Message + Clone + 'static,
        Resp: Send + 'static,
        Call: Fn(ComputeClient<Channel>, tonic::Request<Req>) -> Answer
            + Clone
            + Send
            + Sync
            + 'static,
        Answer: std::future::Future<Output = Result<tonic::Response<Resp>, Status>> + Send,
    {
        let mut tasks = tokio::task::JoinSet::new();
        for (member, endpoint) in committee.members.clone() {
            let signed = signed_request_to(&self.account, &endpoint, method, request.clone());
            let timeout = self.node_timeout;
            let call = call.clone();
            let tls = self.tls.clone();
            tasks.spawn(async move {
                let answer = async {
                    let client = connect(&endpoint, tls.as_ref()).await?;
                    tokio::time::timeout(timeout, call(client, signed))
                        .await
                        .map_err(|_| Status::deadline_exceeded("member did not answer in time"))?
                        .map(tonic::Response::into_inner)
                }
                .await;
                (member, answer)
            });
        }
        collect(tasks).await
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
    pub async fn register_listing(&self, listing: &str, info: ListingInfo) -> Result<(), Status> {
        self.listings
            .lock()
            .map_err(|_| poisoned())?
            .insert(listing.to_string(), info);
        self.save().await
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

    /// The most recent completed order with this identity, completed within
    /// [`RELEASE_REUSE_SECONDS`] of `now`: a repeat is answered from its release.
    pub fn earlier_release(
        &self,
        identity: &ReleaseIdentity,
        now: u64,
    ) -> Result<Option<TxId>, Status> {
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
    pub fn order(&self, id: &TxId) -> Result<Option<OrderRecord>, Status> {
        Ok(self.orders.lock().map_err(|_| poisoned())?.get(id).cloned())
    }

    /// The order's record as `update` completes it, without storing it: it is shown to the
    /// buyer only once its receipt is on the ledger ([`Coordinator::complete_order`]).
    fn completed_record(
        &self,
        id: TxId,
        update: impl FnOnce(&mut OrderRecord),
    ) -> Result<OrderRecord, Status> {
        let mut record = self
            .order(&id)?
            .ok_or_else(|| Status::internal("the order's record is gone"))?;
        update(&mut record);
        Ok(record)
    }

    /// Shows `record` to the buyer, with its receipt.
    fn complete_order(&self, id: TxId, record: OrderRecord, receipt: TxId) -> Result<(), Status> {
        self.update_order(id, |current| {
            *current = record;
            current.receipt = Some(receipt);
        })
    }

    fn update_order(&self, id: TxId, update: impl FnOnce(&mut OrderRecord)) -> Result<(), Status> {
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
    ) -> Result<TxId, Status> {
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
    pub async fn settle_orders_left_computed(&self) -> Result<Vec<OrderId>, Status> {
        let computed: Vec<(OrderId, ReceiptId)> = read_ledger(&self.ledger, |ledger| {
            Ok(ledger
                .state()
                .orders()
                .filter_map(|(id, order)| match order.status {
                    market::state::OrderStatus::Computed { receipt } => Some((*id, receipt)),
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
    pub async fn submit_own(&self, action: Action) -> Result<Submitted, Status> {
        let _guard = self.submit_lock.lock().await;
        let (chain_id, nonce) = self.own_next_nonce().await?;
        let envelope = self.sign_own(chain_id, nonce, action)?;
        submit(&self.ledger, envelope.bytes).await
    }

    /// The chain id and the coordinator account's next nonce. The caller holds `submit_lock`
    /// until what it signs is appended.
    async fn own_next_nonce(&self) -> Result<(Hash32, u64), Status> {
        let me = self.account();
        read_ledger(&self.ledger, move |ledger| {
            Ok((
                ledger.chain_id(),
                ledger
                    .state()
                    .account(&me)
                    .map_or(0, |account| account.next_nonce),
            ))
        })
        .await
    }

    /// `action` signed with the coordinator's account at `nonce`.
    fn sign_own(&self, chain_id: Hash32, nonce: u64, action: Action) -> Result<SignedTx, Status> {
        TxBody {
            chain_id,
            signer: self.account(),
            nonce,
            action,
        }
        .sign(&self.account)
        .map_err(|error| Status::internal(format!("signing: {error}")))
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
            clients.push((
                connect(endpoint, self.tls.as_ref()).await?,
                endpoint.as_str(),
            ));
        }
        // The coordinator only relays: every public message is signed by the member it comes
        // from and checked by every other member against its own pinned committee.
        let missing = |what: &str| Status::internal(format!("a member answered without {what}"));
        let mut broadcasts = Vec::new();
        for (client, endpoint) in &mut clients {
            let request = DkgDealRequest {
                session_id: session_id.clone(),
                threshold: u32::from(threshold),
                peers: peers.clone(),
            };
            let response = client
                .dkg_deal(signed_request_to(
                    &self.account,
                    endpoint,
                    methods::DKG_DEAL,
                    request,
                ))
                .await?;
            let broadcast = response.into_inner().broadcast;
            broadcasts.push(broadcast.ok_or_else(|| missing("its broadcast"))?);
        }
        let mut complaints = Vec::new();
        for (client, endpoint) in &mut clients {
            let request = DkgReceiveRequest {
                session_id: session_id.clone(),
                broadcasts: broadcasts.clone(),
            };
            let response = client
                .dkg_receive(signed_request_to(
                    &self.account,
                    endpoint,
                    methods::DKG_RECEIVE,
                    request,
                ))
                .await?;
            let statement = response.into_inner().complaints;
            complaints.push(statement.ok_or_else(|| missing("its complaints"))?);
        }
        let mut justifications = Vec::new();
        for (client, endpoint) in &mut clients {
            let request = DkgJustifyRequest {
                session_id: session_id.clone(),
                complaints: complaints.clone(),
            };
            let response = client
                .dkg_justify(signed_request_to(
                    &self.account,
                    endpoint,
                    methods::DKG_JUSTIFY,
                    request,
                ))
                .await?;
            let statement = response.into_inner().justifications;
            justifications.push(statement.ok_or_else(|| missing("its justifications"))?);
        }
        let mut confirmations = Vec::new();
        for (client, endpoint) in &mut clients {
            let request = DkgFinishRequest {
                session_id: session_id.clone(),
                complaints: complaints.clone(),
                justifications: justifications.clone(),
            };
            let response = client
                .dkg_finish(signed_request_to(
                    &self.account,
                    endpoint,
                    methods::DKG_FINISH,
                    request,
                ))
                .await?
                .into_inner();
            confirmations.push(
                response
                    .confirmation
                    .ok_or_else(|| missing("its confirmation"))?,
            );
        }
        let mut committee: Option<Vec<u8>> = None;
        for (client, endpoint) in &mut clients {
            let request = DkgConfirmRequest {
                session_id: session_id.clone(),
                confirmations: confirmations.clone(),
            };
            let response = client
                .dkg_confirm(signed_request_to(
                    &self.account,
                    endpoint,
                    methods::DKG_CONFIRM,
                    request,
                ))
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
        let identity = ReleaseIdentity {
            buyer,
            query_hash: query_hash(&sql),
            listings: listings.clone(),
            purpose,
            epsilon_micro,
            result_key: result_key.to_bytes(),
        };
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
                epsilon_micro,
                noise_members: Vec::new(),
                suppressed: Vec::new(),
                identity,
                completed_at: None,
                site_counts: Vec::new(),
                phases: Vec::new(),
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
                coordinator.refund_failed(order, message).await;
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
    ) -> Result<(), OrderError> {
        let committee = self.committee()?.ok_or(OrderError::NoCommittee)?;
        let collective_key = *committee.public.collective_key();
        let order_bytes = order.0.as_bytes().to_vec();
        let mut clock = PhaseClock::start();

        // 1. Every listing's node computes, encrypts and proves, in parallel.
        let mut tasks = tokio::task::JoinSet::new();
        for (position, listing) in listings.iter().enumerate() {
            let info = self
                .listing(&listing.0)?
                .ok_or_else(|| OrderError::NoNode(listing.to_string()))?;
            let request = ContributeRequest {
                order_id: order_bytes.clone(),
                listing: listing.0.clone(),
                sql: sql.to_string(),
                purpose: purpose_name(purpose).to_string(),
            };
            let signed =
                signed_request_to(&self.account, &info.endpoint, methods::CONTRIBUTE, request);
            let timeout = self.node_timeout;
            let tls = self.tls.clone();
            let account = self.account.clone();
            let order_id = order_bytes.clone();
            tasks.spawn(async move {
                let answer = async {
                    let mut client = connect(&info.endpoint, tls.as_ref()).await?;
                    let mut response = tokio::time::timeout(timeout, client.contribute(signed))
                        .await
                        .map_err(|_| Status::deadline_exceeded("node did not answer in time"))?
                        .map(tonic::Response::into_inner)?;
                    // The rest of a long participant list, a page at a time; no more than the
                    // vault's capacity, the public bound on its rows.
                    if response.participant_count > response.capacity {
                        return Err(Status::invalid_argument(format!(
                            "participant_count: {} is more than the vault's capacity {}",
                            response.participant_count, response.capacity
                        )));
                    }
                    let total = usize::try_from(response.participant_count).unwrap_or(usize::MAX);
                    while response.participants.len() < total {
                        let request = ContributionParticipantsRequest {
                            order_id: order_id.clone(),
                            offset: response.participants.len() as u64,
                        };
                        let signed = signed_request_to(
                            &account,
                            &info.endpoint,
                            methods::CONTRIBUTION_PARTICIPANTS,
                            request,
                        );
                        let page =
                            tokio::time::timeout(timeout, client.contribution_participants(signed))
                                .await
                                .map_err(|_| {
                                    Status::deadline_exceeded("node did not answer in time")
                                })??
                                .into_inner();
                        if page.participants.is_empty() {
                            return Err(Status::data_loss(format!(
                                "participants: the node gave {} of the {total} it counted",
                                response.participants.len()
                            )));
                        }
                        response.participants.extend(page.participants);
                    }
                    if total != 0 && response.participants.len() != total {
                        return Err(Status::data_loss(format!(
                            "participants: the node gave {} but counted {total}",
                            response.participants.len()
                        )));
                    }
                    Ok(response)
                }
                .await;
                (position, answer)
            });
        }
        let mut answers = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (position, answer) = joined
                .map_err(|error| OrderError::Internal(format!("node task failed: {error}")))?;
            answers.insert(position, answer);
        }

        clock.lap("contribute");
        // 2. Decode, then batch-verify every decodable contribution.
        //    Each contribution must carry its node's attestation (signed with the listing
        //    owner's key), which the receipt needs: the ledger refuses a receipt without it.
        let owned = listings.to_vec();
        let (chain_id, owners) = read_ledger(&self.ledger, move |ledger| {
            let owners: Vec<Option<AccountId>> = owned
                .iter()
                .map(|id| ledger.state().listing(id).map(|listing| listing.owner))
                .collect();
            Ok((ledger.chain_id(), owners))
        })
        .await?;
        let order_id = OrderId(order);
        let order_query_hash = query_hash(sql);
        let mut reports: Vec<NodeReport> = Vec::new();
        let mut decoded: Vec<(usize, Contribution, ListingContribution)> = Vec::new();
        for (position, listing) in listings.iter().enumerate() {
            let mut report = NodeReport::accepted(&listing.0);
            match answers.remove(&position) {
                Some(Ok(response)) => match decode_contribution(&response) {
                    Ok((contribution, participants)) => {
                        report.participants = participants.len() as u64;
                        let attested = ListingContribution {
                            listing: listing.clone(),
                            epsilon_debited_micro: epsilon_micro,
                            participants,
                            capacity: response.capacity,
                            contribution_hash: market::hash::contribution_hash(
                                &response.ciphertexts,
                                &response.proof,
                            ),
                            attestation: response.attestation.clone(),
                        };
                        let owner_key =
                            owners[position].and_then(|owner| owner.verifying_key().ok());
                        let signed = owner_key.is_some_and(|key| {
                            attested.attested_by(&key, &chain_id, &order_id, &order_query_hash)
                        });
                        if signed {
                            decoded.push((position, contribution, attested));
                        } else {
                            report.mark(
                                NodeOutcome::Rejected,
                                "attestation: not the listing owner's signature over this \
                                 order's contribution, participants and capacity; its \
                                 contribution was not summed",
                            );
                        }
                    }
                    Err(reason) => report.mark(NodeOutcome::Rejected, reason),
                },
                Some(Err(status)) => report.mark(
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) {
                        NodeOutcome::Unavailable
                    } else {
                        NodeOutcome::Rejected
                    },
                    status.message(),
                ),
                None => report.mark(NodeOutcome::Unavailable, "no answer"),
            }
            reports.push(report);
        }
        let contexts: Vec<_> = decoded
            .iter()
            .map(|(position, ..)| contribution_context(&order_bytes, &listings[*position].0))
            .collect::<Result<_, _>>()?;
        let statements: Vec<ContributionStatement<'_>> = decoded
            .iter()
            .zip(&contexts)
            .map(
                |((_, contribution, attested), context)| ContributionStatement {
                    context,
                    capacity: attested.capacity,
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
                reports[position].mark(
                    NodeOutcome::Rejected,
                    format!("{error}; its contribution was not summed"),
                );
                rejected_positions.push(index);
            }
        }
        clock.lap("verify");
        let _ = self.update_order(order, |record| record.nodes = reports.clone());
        let failed = failed_reports(&reports);
        if !failed.is_empty() {
            return Err(OrderError::Contributions(failed));
        }
        // 2b. The receipt's rules, checked against the ledger before any noise is drawn or
        //     anything decrypted: every participant may still be used (consent, personal
        //     limit) and every listing keeps its minimum cohort. A refusal here costs no ε.
        // Shared with the ledger check, not copied: a list holds every participant.
        let named: Arc<[(ListingId, Vec<AccountId>)]> = decoded
            .iter()
            .map(|(position, _, attested)| {
                (listings[*position].clone(), attested.participants.clone())
            })
            .collect();
        self.check_receipt_rules(Arc::clone(&named), purpose, epsilon_micro)
            .await?;
        clock.lap("check receipt rules");

        // 3. A quorum of t members verifies the contributions, fixes their sum and adds its
        //    share of the noise under encryption. With at most t − 1 members colluding, any t
        //    include an honest one, whose share alone gives the release its ε: so t shares,
        //    not n, and the buyer's noise is √t draws, not √n.
        let accepted: Vec<&Contribution> = decoded
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected_positions.contains(index))
            .map(|(_, (_, contribution, _))| contribution)
            .collect();
        let summed = sum_contributions(&accepted);
        let records: Vec<ContributionRecord> = decoded
            .iter()
            .map(|(position, contribution, attested)| ContributionRecord {
                listing: listings[*position].0.clone(),
                capacity: attested.capacity,
                ciphertexts: contribution
                    .ciphertexts
                    .iter()
                    .map(Wire::to_bytes)
                    .collect(),
                proof: contribution.proof.to_bytes(),
            })
            .collect();
        let calibration = calibrate(plan, epsilon_micro)
            .map_err(|error| OrderError::Calibration(error.to_string()))?;
        // Test hook: a coordinator colluding with members who withhold their noise asks them
        // for none, and goes on with fewer than t shares (the ledger then refuses the release).
        let withheld = self
            .withheld_noise
            .lock()
            .map_err(|_| OrderError::Internal("coordinator lock poisoned".into()))?
            .clone();
        let (mut noise, absent) = self
            .noise_from_a_quorum(
                &committee,
                &withheld,
                AddNoiseRequest {
                    order_id: order_bytes.clone(),
                    sql: sql.to_string(),
                    contributions: records,
                },
            )
            .await;
        let threshold = usize::from(committee.public.threshold());
        if noise.len() < threshold && withheld.is_empty() {
            return Err(OrderError::Committee(format!(
                "only {} of the {threshold} committee members needed added noise ({})",
                noise.len(),
                absent.join("; ")
            )));
        }
        noise.sort_by_key(|share| share.member);
        // The noise, key-switch and co-signature rounds run on this quorum only.
        let quorum = Committee {
            public: committee.public.clone(),
            members: committee
                .members
                .iter()
                .filter(|(member, _)| noise.iter().any(|share| share.member == member.get()))
                .cloned()
                .collect(),
        };
        let noise_members: Vec<u32> = noise.iter().map(|share| u32::from(share.member)).collect();
        let wire_noise: Vec<_> = noise.iter().map(encode_noise_share).collect();
        let shares_included: Vec<&NoiseShare> = noise.iter().collect();
        let noisy = apply_noise(&summed, &shares_included, &calibration);
        clock.lap("noise");

        // 3b. The release is fixed on the ledger before anything is key-switched: these
        //     members' noise, switched by these members. Members key-switch nothing else, so
        //     the order is released at most once; from here on a refund keeps its ε spent.
        //     In the same block, before it, the participants go on the ledger in bounded
        //     chunks, so that the receipt names none and stays small however many took part
        //     (the members check the nodes' attestations against the staged lists).
        let committed: Vec<u16> = noise.iter().map(|share| share.member).collect();
        self.stage_and_commit_release(OrderId(order), &named, committed)
            .await?;
        clock.lap("stage participants, commit release");

        // 4. Phase COUNTS: the noisy counts are key-switched to the public count key and
        //    decrypted; cells below the minimum cohort are suppressed.
        let counts = count_slots(plan);
        let count_ciphertexts: Vec<Ciphertext> = counts.iter().map(|&slot| noisy[slot]).collect();
        let count_answers = self
            .key_switch_round(
                &quorum,
                KeySwitchRequest {
                    order_id: order_bytes.clone(),
                    recipient: Vec::new(),
                    phase: KeySwitchPhase::Counts as i32,
                    noise: wire_noise.clone(),
                    count_shares: Vec::new(),
                    noisy_counts: Vec::new(),
                },
            )
            .await;
        let (count_shares, count_absent) = valid_shares(count_answers);
        let counts_context = counts_context(&order_bytes)?;
        let opened = committee
            .public
            .combine(
                &counts_context,
                &count_ciphertexts,
                &public_count_key(),
                &count_shares,
            )
            .map_err(|error| {
                OrderError::Committee(format!(
                    "key switching the counts failed: {error} (threshold {}; {})",
                    committee.public.threshold(),
                    describe_absent(&count_absent)
                ))
            })?;
        let table = count_table()
            .map_err(|error| OrderError::Decryption(format!("count table: {error}")))?;
        let noisy_counts: Vec<i64> = opened
            .ciphertexts
            .iter()
            .map(|ciphertext| public_count_secret().decrypt(ciphertext, table))
            .collect::<Result<_, _>>()
            .map_err(|error| {
                OrderError::Decryption(format!("decrypting the noisy counts: {error}"))
            })?;
        let min_cohort = self.min_cohort(listings).await?;
        let suppressed = suppressed_cells(plan, &noisy_counts, min_cohort);
        let value_slots = released_value_slots(plan, &suppressed);
        clock.lap("key switch counts");

        // 5. Phase VALUES: the other slots of the released cells, to the buyer's key.
        let mut result: Vec<Vec<u8>> = vec![Vec::new(); plan.vector_len()];
        let everything_suppressed = suppressed.iter().all(|&hidden| hidden);
        for (position, &slot) in counts.iter().enumerate() {
            let cell_hidden = slot != 0 && suppressed[(slot - 1) / plan.statistics.len()];
            if !(cell_hidden || (slot == 0 && everything_suppressed)) {
                result[slot] = opened.ciphertexts.0[position].to_bytes();
            }
        }
        let mut used = opened.used.clone();
        let mut value_shares = Vec::new();
        let redirected = *self
            .values_redirected_to
            .lock()
            .map_err(|_| OrderError::Internal("coordinator lock poisoned".into()))?;
        let recipient = redirected.unwrap_or(*result_key);
        if !value_slots.is_empty() {
            let answers = self
                .key_switch_round(
                    &quorum,
                    KeySwitchRequest {
                        order_id: order_bytes.clone(),
                        recipient: recipient.to_bytes(),
                        phase: KeySwitchPhase::Values as i32,
                        noise: wire_noise.clone(),
                        count_shares: count_shares.iter().map(Wire::to_bytes).collect(),
                        noisy_counts: noisy_counts.clone(),
                    },
                )
                .await;
            let (shares, absent) = valid_shares(answers);
            let context = release_context(&order_bytes)?;
            let values: Vec<Ciphertext> = value_slots.iter().map(|&slot| noisy[slot]).collect();
            let switched = committee
                .public
                .combine(&context, &values, &recipient, &shares)
                .map_err(|error| {
                    OrderError::Committee(format!(
                        "key switching failed: {error} (threshold {}; {})",
                        committee.public.threshold(),
                        describe_absent(&absent)
                    ))
                })?;
            for (&slot, ciphertext) in value_slots.iter().zip(switched.ciphertexts.iter()) {
                result[slot] = ciphertext.to_bytes();
            }
            used = switched.used.clone();
            value_shares = shares;
        }
        let shares: Vec<KeySwitchShare> = count_shares.into_iter().chain(value_shares).collect();
        clock.lap("key switch values");

        // 6. Receipt and settlement on the ledger.
        let mut proofs_hash = Vec::new();
        for (_, contribution, _) in &decoded {
            proofs_hash.extend(contribution.proof.to_bytes());
        }
        for share in &noise {
            for ciphertext in &share.ciphertexts {
                proofs_hash.extend(ciphertext.to_bytes());
            }
            proofs_hash.extend(share.proof.to_bytes());
        }
        for share in &shares {
            proofs_hash.extend(share.to_bytes());
        }
        let receipt = QueryReceipt {
            order: OrderId(order),
            query_hash: query_hash(sql),
            contributions_root: market::hash::contributions_root(
                decoded
                    .iter()
                    .map(|(_, _, attested)| &attested.contribution_hash),
            ),
            proofs_hash: tagged_hash(cohortex_types::labels::LABEL_PROOFS, &[&proofs_hash]),
            result_hash: tagged_hash(cohortex_types::labels::LABEL_RESULT, &[&result.concat()]),
            // The participants are staged (2c): each part names none.
            listings: decoded
                .iter()
                .map(|(_, _, attested)| ListingContribution {
                    listing: attested.listing.clone(),
                    epsilon_debited_micro: attested.epsilon_debited_micro,
                    participants: Vec::new(),
                    capacity: attested.capacity,
                    contribution_hash: attested.contribution_hash,
                    attestation: attested.attestation.clone(),
                })
                .collect(),
        };
        // 6b. At least t members check the receipt against what they verified and summed
        //     themselves, and against their own ledger replicas, and co-sign it: the ledger
        //     records no receipt on the coordinator's word alone.
        let cosignatures = self.cosign_round(&quorum, &receipt).await?;
        clock.lap("co-sign receipt");
        let used: Vec<u32> = used.iter().map(|member| u32::from(member.get())).collect();
        let hidden = suppressed.iter().filter(|&&hidden| hidden).count();
        let completed = self.completed_record(order, |record| {
            record.state = OrderState::Completed;
            record.message = format!(
                "computed by {} listing(s); noise added by members {:?} (ε = {}); key-switched by members {:?}; {hidden} of {} cell(s) suppressed below the minimum cohort of {min_cohort}; receipt recorded and escrow settled",
                listings.len(),
                noise_members,
                epsilon_micro as f64 / 1e6,
                used,
                suppressed.len(),
            );
            record.result = result;
            record.committee_used = used.clone();
            record.epsilon_micro = epsilon_micro;
            record.noise_members = noise_members.clone();
            record.suppressed = suppressed.clone();
            record.completed_at = Some(market::server::auth::unix_now());
        })?;
        // Kept on disk before the receipt goes out: once the buyer pays, the result survives
        // a restart.
        self.keep_completed(order, &completed).await?;
        // The receipt and the settlement go into one block: no crash can leave a computed
        // order unpaid (and `settle_orders_left_computed` settles any a ledger still holds).
        let receipt_id = self
            .record_receipt_and_settle(OrderId(order), receipt, cosignatures)
            .await
            .map_err(OrderError::refused("receipt and settlement"))?;
        clock.lap("record receipt");
        let mut completed = completed;
        completed.phases = clock.phases;
        self.complete_order(order, completed, receipt_id)?;
        Ok(())
    }
}

async fn collect<T: 'static>(
    mut tasks: tokio::task::JoinSet<(MemberIndex, Result<T, Status>)>,
) -> Vec<(MemberIndex, Result<T, Status>)> {
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(error) => tracing::warn!(%error, "committee task failed"),
        }
    }
    answers.sort_by_key(|(member, _)| member.get());
    answers
}

/// The decodable key-switch shares of a round, and a line per member that gave none.
fn valid_shares(
    answers: Vec<(MemberIndex, Result<KeySwitchResponse, Status>)>,
) -> (Vec<KeySwitchShare>, Vec<String>) {
    let mut shares = Vec::new();
    let mut absent = Vec::new();
    for (member, answer) in answers {
        match answer.and_then(|response| {
            KeySwitchShare::from_bytes(&response.share)
                .map_err(|error| Status::invalid_argument(format!("share: {error}")))
        }) {
            Ok(share) => shares.push(share),
            Err(status) => absent.push(format!("member {}: {}", member.get(), status.message())),
        }
    }
    (shares, absent)
}

fn describe_absent(absent: &[String]) -> String {
    if absent.is_empty() {
        "no member absent".to_string()
    } else {
        absent.join("; ")
    }
}

/// One line per listing whose node did not answer validly: which, what happened, why.
fn failed_reports(reports: &[NodeReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|report| report.outcome != NodeOutcome::Accepted)
        .map(|report| {
            format!(
                "listing {} {}: {}",
                report.listing,
                report.outcome.as_str(),
                report.reason
            )
        })
        .collect()
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
        let compiled = compile(sql, &info.schema).map_err(|error| {
            Status::invalid_argument(format!("sql: {}", bounded_message(&error.to_string())))
        })?;
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
