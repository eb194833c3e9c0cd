//! The node's gRPC Compute service (feature `server`): the key ceremony, contributions and
//! key-switch shares.
//!
//! Only the market's coordinator may call it (every request is signed, see
//! `market::server::auth`), except `DeliverShare`, which the other committee members call
//! with their private DKG shares. Before computing, the node asks the ledger's Consent
//! service which patients consent **now**; a revocation recorded before that moment is
//! honoured even if the order was placed earlier.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::compute_server::Compute;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse, CosignReceiptRequest,
    CosignReceiptResponse, DeliverShareRequest, DeliverShareResponse, DkgDealRequest,
    DkgDealResponse, DkgFinishRequest, DkgFinishResponse, DkgJustifyRequest, DkgJustifyResponse,
    DkgReceiveRequest, DkgReceiveResponse, EvaluationKeyChunk, FeasibilityRequest,
    FeasibilityResponse, KeySwitchPhase, KeySwitchRequest, KeySwitchResponse, ListListingsRequest,
    PutEvaluationKeyResponse,
};
use ed25519_dalek::SigningKey;
use market::server::auth::{signed_request, unix_now, RequestVerifier};
use market::server::{bounded_message, excerpt};
use market::{AccountId, Hash32, ListingContribution, ListingId, OrderId, QueryReceipt, TxId};
use rand::rngs::OsRng;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use zk::dkg::messages::{Complaint, DealerBroadcast, DealerShare, Justification};
use zk::dkg::{deal_with_rng, AwaitingJustifications, AwaitingShares, DkgParameters};
use zk::{
    Ciphertext, CiphertextRangeProof, CommitteePublic, KeyShare, KeySwitchShare, MemberIndex,
    ProofContext, PublicKey, Wire,
};

use crate::contribution::{
    build_contribution, sum_contributions, verify_bounded, verify_contributions, Contribution,
    ContributionStatement,
};
use crate::dp::{calibrate, Calibration};
use crate::evaluate::evaluate;
use crate::follower::{follow_in_background, FollowError, LedgerFollower, PinnedLedger};
use crate::noise::{
    apply_noise, build_noise_share, count_slots, noise_statement, opens_to, public_count_key,
    released_value_slots, suppressed_cells, NoiseShare,
};
use crate::plan::QueryPlan;
use crate::schema::Schema;
use crate::sealed_share::{open_share, seal_share_with_rng, SealError};
use crate::sql::compile;
use crate::vault::{ConsentBook, Vault};

#[cfg(feature = "tfhe")]
#[path = "server_feasibility.rs"]
mod feasibility;
#[cfg(feature = "tfhe")]
pub use feasibility::count_noise;
#[cfg(feature = "tfhe")]
#[path = "server_recruitment.rs"]
mod recruitment;

#[cfg(not(feature = "tfhe"))]
impl NodeService {
    async fn receive_evaluation_key(
        &self,
        _: tonic::Streaming<EvaluationKeyChunk>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        Err(Status::unimplemented(
            "this node was built without the `tfhe` feature: no blind feasibility search",
        ))
    }

    async fn answer_acceptance(
        &self,
        _: cohortex_proto::v1::AcceptInvitationRequest,
    ) -> Result<cohortex_proto::v1::TrialReply, Status> {
        Err(Status::unimplemented(
            "this node was built without the `tfhe` feature: no trial recruitment",
        ))
    }

    async fn run_feasibility(&self, _: FeasibilityRequest) -> Result<FeasibilityResponse, Status> {
        Err(Status::unimplemented(
            "this node was built without the `tfhe` feature: no blind feasibility search",
        ))
    }
}

/// How often a node brings its ledger replica up to date between orders.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Method paths, as signed in requests.
pub mod methods {
    /// DkgDeal.
    pub const DKG_DEAL: &str = "/cohortex.v1.Compute/DkgDeal";
    /// DeliverShare.
    pub const DELIVER_SHARE: &str = "/cohortex.v1.Compute/DeliverShare";
    /// DkgReceive.
    pub const DKG_RECEIVE: &str = "/cohortex.v1.Compute/DkgReceive";
    /// DkgJustify.
    pub const DKG_JUSTIFY: &str = "/cohortex.v1.Compute/DkgJustify";
    /// DkgFinish.
    pub const DKG_FINISH: &str = "/cohortex.v1.Compute/DkgFinish";
    /// Contribute.
    pub const CONTRIBUTE: &str = "/cohortex.v1.Compute/Contribute";
    /// AddNoise.
    pub const ADD_NOISE: &str = "/cohortex.v1.Compute/AddNoise";
    /// KeySwitch.
    pub const KEY_SWITCH: &str = "/cohortex.v1.Compute/KeySwitch";
    /// CosignReceipt.
    pub const COSIGN_RECEIPT: &str = "/cohortex.v1.Compute/CosignReceipt";
    /// PutEvaluationKey (a client stream, signed over an empty body).
    pub const PUT_EVALUATION_KEY: &str = "/cohortex.v1.Compute/PutEvaluationKey";
    /// Feasibility.
    pub const FEASIBILITY: &str = "/cohortex.v1.Compute/Feasibility";
    /// `Compute.AcceptInvitation`.
    pub const ACCEPT_INVITATION: &str = "/cohortex.v1.Compute/AcceptInvitation";
    /// Consent.ListCurrentConsents, called by the node.
    pub const LIST_CURRENT_CONSENTS: &str = "/cohortex.v1.Consent/ListCurrentConsents";
}

/// The context key-switch shares of an order are bound to.
pub fn release_context(order_id: &[u8]) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, b"release")
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// The context key-switch shares of an order's count slots are bound to.
pub fn counts_context(order_id: &[u8]) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, b"release/counts")
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// The context member `member`'s noise share for an order is bound to.
pub fn noise_context(order_id: &[u8], member: u16) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, format!("noise/{member}").as_bytes())
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// Decodes a wire noise share, naming `field` in errors.
pub fn decode_noise_share(
    share: &cohortex_proto::v1::NoiseShare,
    field: &str,
) -> Result<NoiseShare, Status> {
    let member = u16::try_from(share.member)
        .map_err(|_| Status::invalid_argument(format!("{field}.member: not a member index")))?;
    Ok(NoiseShare {
        member,
        ciphertexts: decode_all(&share.ciphertexts, &format!("{field}.ciphertexts"))?,
        proof: decode(&share.proof, &format!("{field}.proof"))?,
    })
}

/// Encodes a noise share for the wire.
pub fn encode_noise_share(share: &NoiseShare) -> cohortex_proto::v1::NoiseShare {
    cohortex_proto::v1::NoiseShare {
        member: u32::from(share.member),
        ciphertexts: share.ciphertexts.iter().map(Wire::to_bytes).collect(),
        proof: share.proof.to_bytes(),
    }
}

/// The context a node's contribution to an order is bound to.
pub fn contribution_context(order_id: &[u8], listing: &str) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, listing.as_bytes())
        .map_err(|error| Status::invalid_argument(format!("order_id or listing: {error}")))
}

/// The smallest committee threshold a node serves in: with t = 1 any single member (or
/// whoever receives one member's share) could decrypt alone.
pub const MIN_THRESHOLD: u16 = 2;

/// One seat of the key committee, as pinned in a node's own configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitteeSeat {
    /// The seat's 1-based member index.
    pub member: MemberIndex,
    /// The account whose key signs that member's requests.
    pub account: AccountId,
    /// Where that member's Compute service answers (`https://host:port`).
    pub endpoint: String,
}

/// Why a committee cannot be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitteeError {
    /// The threshold is below [`MIN_THRESHOLD`].
    #[error("threshold {0} is below {MIN_THRESHOLD}: one member alone could decrypt")]
    ThresholdTooLow(u16),
    /// The threshold exceeds the number of seats.
    #[error("threshold {threshold} exceeds the committee's {members} members")]
    ThresholdTooHigh {
        /// The threshold.
        threshold: u16,
        /// Seats.
        members: usize,
    },
    /// The seats are not numbered 1, 2, … in order.
    #[error("seat {position} is member {member}; seats must be members 1, 2, … in order")]
    SeatOutOfOrder {
        /// 0-based position in the list.
        position: usize,
        /// The member index found there.
        member: u16,
    },
    /// Two seats share an account.
    #[error("members {0} and {1} have the same account")]
    SharedAccount(u16, u16),
    /// Two seats share an endpoint.
    #[error("members {0} and {1} have the same endpoint")]
    SharedEndpoint(u16, u16),
    /// This node's member index has no seat.
    #[error("member {0} has no seat in the committee")]
    NoSeat(u16),
    /// The stored key share cannot be used.
    #[error("the stored key share {path}: {reason}")]
    StoredKeyShare {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// This node's own seat names another account.
    #[error("member {member}'s seat names account {seat}, but this node's key is account {own}")]
    NotOwnSeat {
        /// This node's member index.
        member: u16,
        /// The account on the seat.
        seat: AccountId,
        /// This node's account.
        own: AccountId,
    },
}

/// The key committee as a node pins it: threshold, members, accounts and endpoints come from
/// the node's own configuration, never from the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedCommittee {
    threshold: u16,
    seats: Vec<CommitteeSeat>,
}

/// An endpoint without a trailing slash, so that `http://a:1/` and `http://a:1` compare equal.
fn normal_endpoint(endpoint: &str) -> &str {
    endpoint.trim_end_matches('/')
}

impl PinnedCommittee {
    /// Checks and pins a committee: t ≥ [`MIN_THRESHOLD`], t ≤ n, seats numbered 1..=n in
    /// order, no account or endpoint on two seats.
    pub fn new(threshold: u16, seats: Vec<CommitteeSeat>) -> Result<Self, CommitteeError> {
        if threshold < MIN_THRESHOLD {
            return Err(CommitteeError::ThresholdTooLow(threshold));
        }
        if usize::from(threshold) > seats.len() {
            return Err(CommitteeError::ThresholdTooHigh {
                threshold,
                members: seats.len(),
            });
        }
        for (position, seat) in seats.iter().enumerate() {
            if usize::from(seat.member.get()) != position + 1 {
                return Err(CommitteeError::SeatOutOfOrder {
                    position,
                    member: seat.member.get(),
                });
            }
            for earlier in &seats[..position] {
                if earlier.account == seat.account {
                    return Err(CommitteeError::SharedAccount(
                        earlier.member.get(),
                        seat.member.get(),
                    ));
                }
                if normal_endpoint(&earlier.endpoint) == normal_endpoint(&seat.endpoint) {
                    return Err(CommitteeError::SharedEndpoint(
                        earlier.member.get(),
                        seat.member.get(),
                    ));
                }
            }
        }
        Ok(Self { threshold, seats })
    }

    /// t.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The seats, member 1 first.
    pub fn seats(&self) -> &[CommitteeSeat] {
        &self.seats
    }

    /// Refuses a ledger whose registered committee is not this one: the same threshold and
    /// the same accounts in the same seats. The ledger counts receipt co-signatures against its
    /// committee, so a node serves only when that committee is the one it pinned.
    pub fn check_ledger(
        &self,
        registered: Option<&market::state::CommitteeRecord>,
    ) -> Result<(), Status> {
        let Some(registered) = registered else {
            return Err(Status::failed_precondition(
                "ledger: no key committee is registered on the ledger; this node serves only \
                 once the committee pinned in its configuration is",
            ));
        };
        let accounts: Vec<AccountId> = self.seats.iter().map(|seat| seat.account).collect();
        if registered.threshold != self.threshold || registered.members != accounts {
            return Err(Status::failed_precondition(format!(
                "ledger: the key committee registered on the ledger ({} of {}) is not the one \
                 pinned in this node's configuration ({} of {})",
                registered.threshold,
                registered.members.len(),
                self.threshold,
                accounts.len()
            )));
        }
        Ok(())
    }

    /// The seat of `member`.
    pub fn seat(&self, member: MemberIndex) -> Option<&CommitteeSeat> {
        self.seats.iter().find(|seat| seat.member == member)
    }

    /// The seat held by `account`.
    pub fn seat_of(&self, account: &AccountId) -> Option<&CommitteeSeat> {
        self.seats.iter().find(|seat| &seat.account == account)
    }
}

/// How a node was configured.
pub struct NodeConfig {
    /// The listing this node's vault is published as.
    pub listing: String,
    /// The node's account key (role compute node): signs its requests to the market.
    pub account: SigningKey,
    /// The node's member index in the key committee.
    pub member: MemberIndex,
    /// The coordinator's account: the only caller of Contribute, KeySwitch and the DKG rounds.
    pub coordinator: AccountId,
    /// The key committee, pinned: who may deliver DKG shares, and where this node sends its.
    pub committee: PinnedCommittee,
    /// The ledger, pinned: every fact about orders, listings and consents is read from a
    /// replica verified against it.
    pub ledger: PinnedLedger,
    /// The market's endpoint (`https://host:port`), which serves the ledger and the manifests.
    pub market_endpoint: String,
    /// This node's TLS identity, for every link it serves and dials (`None`: plaintext, for
    /// in-process tools only).
    pub tls: Option<TlsIdentity>,
    /// Where the node keeps its key share and the committee's public data once the key
    /// ceremony has run (mode 0600), so that it rejoins after a restart; `None` keeps them in
    /// memory only.
    pub key_share_file: Option<std::path::PathBuf>,
    /// Deliberate misbehaviour, for end-to-end tests of the aggregator's checks. It takes
    /// effect only in builds with the `fault-injection` feature (the tests crate's).
    pub fault: Option<Fault>,
}

/// Whether [`NodeConfig::fault`] takes effect in this build (feature `fault-injection`).
pub const FAULTS_TAKE_EFFECT: bool = cfg!(feature = "fault-injection");

/// Ways a faulty node can cheat, to test that the aggregator catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Adds 10⁹ to its first statistic after proving (the range proof then fails).
    InflateAfterProving,
    /// Proves its contribution in the context of another order.
    ProveForAnotherQuery,
    /// Contributes, then is unreachable for key switching (as if it went down in between).
    DownAtKeySwitch,
    /// Waits this many milliseconds before reading consents (a slow node), so that a test can
    /// revoke a consent between the order and the computation.
    SlowToCompute(u64),
    /// Answers every order after the first with its first contribution, byte for byte (a
    /// replayed contribution).
    ReplayFirstContribution,
}

enum DkgRound {
    Idle,
    Dealt {
        session: Vec<u8>,
        state: AwaitingShares,
    },
    Received {
        session: Vec<u8>,
        state: AwaitingJustifications,
    },
}

struct NodeState {
    round: DkgRound,
    /// Shares delivered by peers for the current session.
    inbox: BTreeMap<Vec<u8>, Vec<DealerShare>>,
    key: Option<(KeyShare, CommitteePublic)>,
    contributed: BTreeSet<Vec<u8>>,
    /// The first contribution sent (kept only under `Fault::ReplayFirstContribution`).
    first_contribution: Option<ContributeResponse>,
    /// Per order: the fixed sum, this member's noise and what has been released.
    releases: BTreeMap<Vec<u8>, Release>,
    /// (trial, patient) pairs this node answered an acceptance for: one reply per patient.
    trial_replies: BTreeSet<(String, [u8; 32])>,
}

/// What a member remembers of an order it added noise to.
struct Release {
    plan: QueryPlan,
    calibration: Calibration,
    min_cohort: u64,
    /// The verified contributions' sum, fixed before any noise was drawn.
    sum: Vec<Ciphertext>,
    own: NoiseShare,
    /// The listings whose contributions were verified and summed, in the order's order, with
    /// each contribution's hash: a receipt this member co-signs must name exactly these.
    contributions: Vec<(String, Hash32)>,
    /// The digest of the receipt this member co-signed for the order, and its signature: a
    /// member vouches for one receipt per order.
    cosigned: Option<(Hash32, Vec<u8>)>,
    /// The members whose noise the first key switch included; later phases must match.
    noise_set: Option<Vec<u16>>,
    counts_switched: bool,
    values_switched: bool,
}

/// What the ledger and the market say about an order, as a member checks it.
struct OrderFacts {
    plan: QueryPlan,
    purpose: market::Purpose,
    epsilon_micro: u64,
    min_cohort: u64,
    listings: Vec<String>,
}

/// The Compute service of one node.
pub struct NodeService {
    vault: Arc<Vault>,
    config: NodeConfig,
    verifier: RequestVerifier,
    follower: Arc<LedgerFollower>,
    market: tokio::sync::OnceCell<Channel>,
    state: Mutex<NodeState>,
    /// Recruiters' expanded TFHE evaluation keys by fingerprint, the most recent last (at
    /// most [`EVALUATION_KEYS_KEPT`]: each is about 120 MB once expanded).
    #[cfg(feature = "tfhe")]
    evaluation_keys: Mutex<Vec<([u8; 32], Arc<zk::fhe::Evaluator>)>>,
}

/// How many recruiters' expanded evaluation keys a node keeps.
#[cfg(feature = "tfhe")]
pub const EVALUATION_KEYS_KEPT: usize = 2;

fn decode<T: Wire>(bytes: &[u8], field: &str) -> Result<T, Status> {
    T::from_bytes(bytes).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

fn decode_all<T: Wire>(items: &[Vec<u8>], field: &str) -> Result<Vec<T>, Status> {
    items
        .iter()
        .enumerate()
        .map(|(index, bytes)| decode(bytes, &format!("{field}[{index}]")))
        .collect()
}

fn order_id(bytes: &[u8]) -> Result<Vec<u8>, Status> {
    order_key(bytes).map(|_| bytes.to_vec())
}

/// The order id as the ledger keys it.
fn order_key(bytes: &[u8]) -> Result<OrderId, Status> {
    <[u8; 32]>::try_from(bytes)
        .map(|id| OrderId(TxId(Hash32(id))))
        .map_err(|_| Status::invalid_argument("order_id must be 32 bytes"))
}

impl NodeService {
    /// A node serving `vault`; refused when the node's own seat in the pinned committee does
    /// not hold its member index and account.
    pub fn new(vault: Arc<Vault>, config: NodeConfig) -> Result<Self, CommitteeError> {
        let own = AccountId::of(&config.account);
        let seat = config
            .committee
            .seat(config.member)
            .ok_or(CommitteeError::NoSeat(config.member.get()))?;
        if seat.account != own {
            return Err(CommitteeError::NotOwnSeat {
                member: config.member.get(),
                seat: seat.account,
                own,
            });
        }
        let stored_key = match &config.key_share_file {
            Some(path) if path.exists() => Some(load_key_share(path, &config)?),
            _ => None,
        };
        let follower = Arc::new(LedgerFollower::new(config.ledger.clone()));
        // Follow the ledger from the start, as a node does, so that the replica is warm when
        // the first order arrives (outside a runtime, reads still sync on demand).
        match (
            tokio::runtime::Handle::try_current(),
            link(&config.market_endpoint, config.tls.as_ref()),
        ) {
            (Ok(runtime), Ok(market)) => {
                runtime.spawn(follow_in_background(
                    Arc::downgrade(&follower),
                    market,
                    FOLLOW_EVERY,
                ));
            }
            (Ok(_), Err(error)) => tracing::warn!(
                %error,
                "not following the ledger in the background; every order will replay it first"
            ),
            (Err(_), _) => {}
        }
        Ok(Self {
            vault,
            config,
            verifier: RequestVerifier::new(),
            follower,
            market: tokio::sync::OnceCell::new(),
            #[cfg(feature = "tfhe")]
            evaluation_keys: Mutex::new(Vec::new()),
            state: Mutex::new(NodeState {
                round: DkgRound::Idle,
                inbox: BTreeMap::new(),
                key: stored_key,
                contributed: BTreeSet::new(),
                first_contribution: None,
                releases: BTreeMap::new(),
                trial_replies: BTreeSet::new(),
            }),
        })
    }

    /// The node's ledger replica (shared with the service), e.g. to wait until it has caught
    /// up before the first order.
    pub fn follower(&self) -> Arc<LedgerFollower> {
        Arc::clone(&self.follower)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, NodeState>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("node state lock poisoned"))
    }

    /// The fault this node plays (tests only: `None` unless built with `fault-injection`).
    #[cfg(feature = "fault-injection")]
    fn fault(&self) -> Option<Fault> {
        self.config.fault
    }

    /// The fault this node plays (tests only: `None` unless built with `fault-injection`).
    #[cfg(not(feature = "fault-injection"))]
    fn fault(&self) -> Option<Fault> {
        None
    }

    fn check_coordinator<T: prost::Message>(
        &self,
        method: &str,
        request: &Request<T>,
    ) -> Result<(), Status> {
        let caller = self.verifier.verify(method, request, unix_now())?;
        if caller != self.config.coordinator {
            return Err(Status::permission_denied(format!(
                "account {caller} is not this node's coordinator"
            )));
        }
        Ok(())
    }

    /// The patients of this vault whose consent to the listing and purpose holds now and whose
    /// personal privacy limit allows `epsilon_micro` more, according to the node's own verified
    /// replica of the ledger, brought up to date first (so a revocation already on the ledger
    /// is honoured).
    ///
    /// The privacy unit is the person: a patient who also consents in a listing that comes
    /// **earlier in the order** takes part there, not here, so that one order counts each
    /// patient once whichever vaults hold their records (the ledger refuses a receipt naming
    /// a patient twice). Every node applies the same rule to the same verified ledger.
    async fn current_consents(
        &self,
        purpose: market::Purpose,
        epsilon_micro: u64,
        order_listings: &[String],
    ) -> Result<ConsentBook, Status> {
        let channel = self.market_channel().await?;
        let listing = ListingId::new(self.config.listing.clone());
        let earlier: Vec<ListingId> = order_listings
            .iter()
            .take_while(|name| **name != self.config.listing)
            .map(|name| ListingId::new(name.clone()))
            .collect();
        let now = unix_now();
        let consenting: BTreeSet<Vec<u8>> = self
            .follower
            .sync_and_read(channel, |machine| {
                let time = now.max(machine.last_time());
                let state = machine.state();
                let taken_earlier: BTreeSet<AccountId> = earlier
                    .iter()
                    .flat_map(|other| {
                        state.current_consents_affording(other, purpose, time, epsilon_micro)
                    })
                    .collect();
                state
                    .current_consents_affording(&listing, purpose, time, epsilon_micro)
                    .into_iter()
                    .filter(|patient| !taken_earlier.contains(patient))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(follow_status)?
            .into_iter()
            .map(|account| account.0.to_vec())
            .collect();
        let purpose = market::server::purpose_name(purpose);
        let mut book = ConsentBook::new();
        for record in self.vault.records() {
            let Some(key) = record
                .patient_key
                .as_deref()
                .and_then(|k| hex::decode(k).ok())
            else {
                continue;
            };
            if consenting.contains(&key) {
                book.grant(&record.patient_id, purpose);
            }
        }
        Ok(book)
    }
}

impl NodeService {
    /// Refuses a key switch unless the ledger (this node's verified replica) holds the order's
    /// release commitment, the request sums exactly the committed noise shares, and this
    /// member is in the committed quorum: one order, one release. In phase VALUES the
    /// recipient must be the result key the buyer signed into the order.
    async fn check_committed_release(
        &self,
        order: &[u8],
        noise: &[cohortex_proto::v1::NoiseShare],
        phase: KeySwitchPhase,
        recipient: &[u8],
    ) -> Result<(), Status> {
        let order_key = order_key(order)?;
        let channel = self.market_channel().await?;
        let (committed, result_key) = self
            .follower
            .sync_and_read(channel, |machine| {
                let state = machine.state();
                (
                    state.release(&order_key).cloned(),
                    state.result_key(&order_key).map(<[u8]>::to_vec),
                )
            })
            .await
            .map_err(follow_status)?;
        if phase == KeySwitchPhase::Values && result_key.as_deref() != Some(recipient) {
            return Err(Status::permission_denied(if result_key.is_none() {
                "recipient: the order on the ledger names no result key, so its values go to no one"
            } else {
                "recipient: not the result key the buyer signed into the order"
            }));
        }
        let committed = committed.ok_or_else(|| {
            Status::failed_precondition(
                "order_id: no release of the order is committed on the ledger",
            )
        })?;
        let mut requested: Vec<u16> = Vec::with_capacity(noise.len());
        for (index, share) in noise.iter().enumerate() {
            requested.push(u16::try_from(share.member).map_err(|_| {
                Status::invalid_argument(format!("noise[{index}].member: not a member index"))
            })?);
        }
        requested.sort_unstable();
        if requested != committed.noise_members {
            return Err(Status::permission_denied(format!(
                "noise: the ledger commits the release to the noise of members {:?}, not {requested:?}",
                committed.noise_members
            )));
        }
        if !committed.quorum.contains(&self.config.member.get()) {
            return Err(Status::permission_denied(format!(
                "member {} is not in the quorum committed on the ledger ({:?})",
                self.config.member.get(),
                committed.quorum
            )));
        }
        if committed.quorum.len() < usize::from(self.config.committee.threshold()) {
            return Err(Status::permission_denied(format!(
                "the committed quorum {:?} is smaller than the threshold {}",
                committed.quorum,
                self.config.committee.threshold()
            )));
        }
        Ok(())
    }
}

/// Reads the key share and committee a node stored after its key ceremony, and checks that
/// they are this node's: its member index, the pinned committee's threshold and size, and a
/// share whose verification key the committee records.
fn load_key_share(
    path: &std::path::Path,
    config: &NodeConfig,
) -> Result<(KeyShare, CommitteePublic), CommitteeError> {
    let bad = |reason: String| CommitteeError::StoredKeyShare {
        path: path.display().to_string(),
        reason,
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|error| bad(error.to_string()))?,
    );
    let mut lines = text.lines();
    let (Some(share_hex), Some(committee_hex), None) = (lines.next(), lines.next(), lines.next())
    else {
        return Err(bad("expected two lines: the share and the committee".into()));
    };
    let share_bytes = zeroize::Zeroizing::new(
        hex::decode(share_hex.trim()).map_err(|_| bad("the share is not hex".into()))?,
    );
    let share = KeyShare::from_bytes(&share_bytes).map_err(|error| bad(error.to_string()))?;
    let committee_bytes =
        hex::decode(committee_hex.trim()).map_err(|_| bad("the committee is not hex".into()))?;
    let committee =
        CommitteePublic::from_bytes(&committee_bytes).map_err(|error| bad(error.to_string()))?;
    if share.member() != config.member {
        return Err(bad(format!(
            "it is member {}'s share, this node is member {}",
            share.member().get(),
            config.member.get()
        )));
    }
    if committee.threshold() != config.committee.threshold()
        || committee.members().count() != config.committee.seats().len()
    {
        return Err(bad(
            "its committee is not the one pinned in this node's configuration".into(),
        ));
    }
    if !share.belongs_to(&committee) {
        return Err(bad(
            "the share is not the committee's share for this member".into(),
        ));
    }
    Ok((share, committee))
}

/// Stores the key share and committee (hex lines) in `path`, mode 0600, replaced whole
/// ([`crate::durable::replace_file`]).
fn store_key_share(
    path: &std::path::Path,
    share: &KeyShare,
    committee: &CommitteePublic,
) -> std::io::Result<()> {
    let share_bytes = zeroize::Zeroizing::new(share.to_bytes());
    let text = zeroize::Zeroizing::new(format!(
        "{}\n{}\n",
        hex::encode(share_bytes.as_slice()),
        hex::encode(committee.to_bytes())
    ));
    crate::durable::replace_file(path, text.as_bytes())
}

/// How a failure to verify the ledger reaches the caller.
fn follow_status(error: FollowError) -> Status {
    match error {
        FollowError::Unreachable(_) => Status::unavailable(error.to_string()),
        other => Status::failed_precondition(format!(
            "ledger: {other} (this node acts only on a ledger verified against its pinned key)"
        )),
    }
}

impl NodeService {
    /// The channel to the market, connected on first use and shared by every request after
    /// (tonic reconnects it if the market restarts).
    async fn market_channel(&self) -> Result<Channel, Status> {
        self.market
            .get_or_try_init(|| async {
                link(&self.config.market_endpoint, self.config.tls.as_ref())
                    .map_err(|error| Status::internal(format!("market endpoint: {error}")))?
                    .connect()
                    .await
                    .map_err(|error| Status::unavailable(format!("market unreachable: {error}")))
            })
            .await
            .cloned()
    }

    /// Reads the buyer's order, its status and the ordered listings' terms from the node's
    /// verified replica of the ledger, and the listings' manifests from the market, each of
    /// which must hash to its listing's `schema_hash` on the ledger; compiles `sql` against
    /// them. ε, the purpose and the listings come from the order, never from the coordinator.
    async fn order_facts(&self, order: &[u8], sql: &str) -> Result<OrderFacts, Status> {
        let channel = self.market_channel().await?;
        let order_key = order_key(order)?;
        let now = unix_now();
        let (found, ledger_listings, time, height, registered) = self
            .follower
            .sync_and_read(channel.clone(), |machine| {
                let state = machine.state();
                let registered = state.committee().cloned();
                let found = state.order(&order_key).cloned();
                let listings: Vec<(ListingId, Option<market::state::Listing>)> = found
                    .iter()
                    .flat_map(|order| order.listings.iter())
                    .map(|ordered| {
                        (
                            ordered.listing.clone(),
                            state.listing(&ordered.listing).cloned(),
                        )
                    })
                    .collect();
                (
                    found,
                    listings,
                    now.max(machine.last_time()),
                    machine.height(),
                    registered,
                )
            })
            .await
            .map_err(follow_status)?;
        self.config.committee.check_ledger(registered.as_ref())?;
        let Some(found) = found else {
            return Err(Status::failed_precondition(format!(
                "order_id: no such order on the ledger (verified up to block {height})"
            )));
        };
        if found.status != market::state::OrderStatus::Open {
            return Err(Status::failed_precondition(format!(
                "order_id: the order is no longer open on the ledger ({:?})",
                found.status
            )));
        }
        if time >= found.expires_at {
            return Err(Status::failed_precondition(format!(
                "order_id: the order expired at {} (ledger time {time})",
                found.expires_at
            )));
        }
        if found.query_hash != market::hash::query_hash(sql) {
            return Err(Status::invalid_argument(
                "sql: its hash is not the order's query_hash",
            ));
        }
        let purpose = found.purpose;
        let epsilon_micro = found.epsilon_requested_micro;
        let mut on_ledger = Vec::with_capacity(ledger_listings.len());
        for (id, listing) in ledger_listings {
            let listing = listing.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "listing {id} of the order is not on the ledger"
                ))
            })?;
            // The order's ε is reserved on every listing until its receipt or refund.
            if listing.epsilon_reserved_micro < epsilon_micro {
                return Err(Status::failed_precondition(format!(
                    "listing {id}: the ledger holds no reservation of the order's ε"
                )));
            }
            on_ledger.push((id, listing));
        }
        let offered = MarketClient::new(channel)
            .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
            .list_listings(ListListingsRequest::default())
            .await?
            .into_inner()
            .listings;
        let mut plan: Option<QueryPlan> = None;
        let mut min_cohort = 0u64;
        let mut names = Vec::new();
        for (listing, ledger_listing) in &on_ledger {
            let offer = offered
                .iter()
                .find(|offer| offer.id == listing.0)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "listing {listing} of the order is not offered"
                    ))
                })?;
            // Noise is calibrated from the manifest's bounds: only the one the listing's owner
            // put on the ledger will do.
            if market::hash::manifest_hash(&offer.manifest) != ledger_listing.schema_hash {
                return Err(Status::failed_precondition(format!(
                    "listing {listing}: the manifest the market served does not hash to the \
                     listing's schema_hash on the ledger"
                )));
            }
            let schema = Schema::from_toml(&offer.manifest, &offer.id).map_err(|error| {
                Status::failed_precondition(format!(
                    "listing {listing}: manifest: {}",
                    bounded_message(&error.to_string())
                ))
            })?;
            let compiled = compile(sql, &schema).map_err(|error| {
                Status::invalid_argument(format!("sql: {}", bounded_message(&error.to_string())))
            })?;
            match &plan {
                Some(first) if first != &compiled => {
                    return Err(Status::invalid_argument(
                        "sql: the ordered listings' schemas give different plans",
                    ))
                }
                _ => plan = Some(compiled),
            }
            min_cohort = min_cohort.max(u64::from(ledger_listing.terms.min_cohort_size));
            names.push(listing.0.clone());
        }
        Ok(OrderFacts {
            plan: plan.ok_or_else(|| Status::failed_precondition("the order names no listing"))?,
            purpose,
            epsilon_micro,
            min_cohort,
            listings: names,
        })
    }
}

/// Decodes and checks the noise shares of a key-switch request; returns them and the noisy
/// sum they give.
fn noisy_sum(
    release: &Release,
    order: &[u8],
    committee: &CommitteePublic,
    wire: &[cohortex_proto::v1::NoiseShare],
) -> Result<(Vec<u16>, Vec<Ciphertext>), Status> {
    let shares: Vec<NoiseShare> = wire
        .iter()
        .enumerate()
        .map(|(index, share)| decode_noise_share(share, &format!("noise[{index}]")))
        .collect::<Result<_, _>>()?;
    let mut members: Vec<u16> = shares.iter().map(|share| share.member).collect();
    members.sort_unstable();
    if members.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(Status::invalid_argument(
            "noise: a member's share appears twice",
        ));
    }
    let known: BTreeSet<u16> = committee.members().map(|member| member.get()).collect();
    if let Some(stranger) = members.iter().find(|member| !known.contains(member)) {
        return Err(Status::invalid_argument(format!(
            "noise: member {stranger} is not on the committee"
        )));
    }
    let own = shares
        .iter()
        .find(|share| share.member == release.own.member)
        .ok_or_else(|| {
            Status::failed_precondition("noise: this member's own noise share is not included")
        })?;
    if own != &release.own {
        return Err(Status::invalid_argument(
            "noise: this member's share was altered",
        ));
    }
    if let Some(fixed) = &release.noise_set {
        if fixed != &members {
            return Err(Status::invalid_argument(format!(
                "noise: the release already used the shares of members {fixed:?}"
            )));
        }
    }
    let contexts: Vec<ProofContext> = shares
        .iter()
        .map(|share| noise_context(order, share.member))
        .collect::<Result<_, _>>()?;
    let statements: Vec<_> = shares
        .iter()
        .zip(&contexts)
        .map(|(share, context)| {
            if share.ciphertexts.len() != release.calibration.slots.len() {
                return Err(crate::contribution::ContributionError::Length {
                    got: share.ciphertexts.len(),
                    expected: release.calibration.slots.len(),
                });
            }
            Ok(noise_statement(context, share, &release.calibration))
        })
        .collect();
    if let Err(failures) = verify_bounded(committee.collective_key(), &statements, &mut OsRng) {
        let named: Vec<String> = failures
            .iter()
            .map(|(index, error)| format!("member {}: {error}", shares[*index].member))
            .collect();
        return Err(Status::invalid_argument(format!(
            "noise: shares do not verify ({})",
            named.join("; ")
        )));
    }
    let included: Vec<&NoiseShare> = shares.iter().collect();
    Ok((
        members,
        apply_noise(&release.sum, &included, &release.calibration),
    ))
}

#[tonic::async_trait]
impl Compute for NodeService {
    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_deal(
        &self,
        request: Request<DkgDealRequest>,
    ) -> Result<Response<DkgDealResponse>, Status> {
        self.check_coordinator(methods::DKG_DEAL, &request)?;
        let message = request.into_inner();
        // The committee is this node's own: the coordinator may only name it back. A request
        // naming another threshold, member or endpoint (say, the coordinator's own endpoint
        // on two seats, to collect t shares) gets nothing.
        let committee = &self.config.committee;
        if message.threshold != u32::from(committee.threshold()) {
            return Err(Status::permission_denied(format!(
                "threshold: {} is not this node's pinned threshold {}",
                message.threshold,
                committee.threshold()
            )));
        }
        if message.peers.len() != committee.seats().len() {
            return Err(Status::permission_denied(format!(
                "peers: {} named, this node's pinned committee has {} members",
                message.peers.len(),
                committee.seats().len()
            )));
        }
        for (index, peer) in message.peers.iter().enumerate() {
            let pinned = u16::try_from(peer.member)
                .ok()
                .and_then(MemberIndex::new)
                .and_then(|member| committee.seat(member));
            let matches = pinned.is_some_and(|seat| {
                normal_endpoint(&seat.endpoint) == normal_endpoint(&peer.endpoint)
            });
            if !matches {
                return Err(Status::permission_denied(format!(
                    "peers[{index}]: member {} at that endpoint is not in this node's pinned \
                     committee",
                    peer.member
                )));
            }
        }
        let parameters = DkgParameters::new(
            committee.threshold(),
            committee.seats().len() as u16,
            &message.session_id,
        )
        .map_err(|error| Status::invalid_argument(format!("session_id: {error}")))?;
        let (state, broadcast, shares) = deal_with_rng(&parameters, self.config.member, &mut OsRng)
            .map_err(|error| Status::internal(format!("dealing failed: {error}")))?;
        // Deliver each private share straight to its recipient, at its pinned endpoint, sealed
        // to its pinned account key (TLS alone would trust the federation's authority).
        for share in shares {
            let seat = committee.seat(share.recipient).ok_or_else(|| {
                Status::internal(format!("no seat for member {}", share.recipient.get()))
            })?;
            let recipient_key = seat.account.verifying_key().map_err(|error| {
                Status::internal(format!(
                    "member {}'s pinned account is not a key: {error}",
                    seat.member.get()
                ))
            })?;
            let sealed_share =
                seal_share_with_rng(&share, &message.session_id, &recipient_key, &mut OsRng)
                    .map_err(|error| Status::internal(error.to_string()))?;
            let channel = link(&seat.endpoint, self.config.tls.as_ref())
                .map_err(|error| Status::internal(format!("member endpoint: {error}")))?
                .connect()
                .await
                .map_err(|error| {
                    Status::unavailable(format!(
                        "member {} unreachable: {error}",
                        seat.member.get()
                    ))
                })?;
            let mut client = cohortex_proto::v1::compute_client::ComputeClient::new(channel);
            client
                .deliver_share(signed_request(
                    &self.config.account,
                    methods::DELIVER_SHARE,
                    DeliverShareRequest {
                        session_id: message.session_id.clone(),
                        sealed_share,
                    },
                ))
                .await?;
        }
        self.lock()?.round = DkgRound::Dealt {
            session: message.session_id,
            state,
        };
        Ok(Response::new(DkgDealResponse {
            broadcast: broadcast.to_bytes(),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn deliver_share(
        &self,
        request: Request<DeliverShareRequest>,
    ) -> Result<Response<DeliverShareResponse>, Status> {
        let caller = self
            .verifier
            .verify(methods::DELIVER_SHARE, &request, unix_now())?;
        let Some(caller_seat) = self.config.committee.seat_of(&caller) else {
            return Err(Status::permission_denied(format!(
                "account {caller} is not a committee member"
            )));
        };
        let caller_member = caller_seat.member;
        let message = request.into_inner();
        // A member deals only its own shares: the share must open as the caller's seat's, sealed
        // to this member's account key for this session.
        let share: DealerShare = open_share(
            &message.sealed_share,
            &message.session_id,
            caller_member,
            self.config.member,
            &self.config.account,
        )
        .map_err(|error| match error {
            SealError::WrongSeats { .. } => {
                Status::permission_denied(format!("sealed_share: {error}"))
            }
            _ => Status::invalid_argument(format!("sealed_share: {error}")),
        })?;
        let mut state = self.lock()?;
        let inbox = state.inbox.entry(message.session_id).or_default();
        if inbox.iter().any(|held| held.dealer == share.dealer) {
            return Err(Status::already_exists(
                "share: this dealer's share for the session was already delivered",
            ));
        }
        inbox.push(share);
        Ok(Response::new(DeliverShareResponse {}))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_receive(
        &self,
        request: Request<DkgReceiveRequest>,
    ) -> Result<Response<DkgReceiveResponse>, Status> {
        self.check_coordinator(methods::DKG_RECEIVE, &request)?;
        let message = request.into_inner();
        let broadcasts: Vec<DealerBroadcast> = decode_all(&message.broadcasts, "broadcasts")?;
        let mut state = self.lock()?;
        let DkgRound::Dealt { session, .. } = &state.round else {
            return Err(Status::failed_precondition("no DKG round 1 in progress"));
        };
        if session != &message.session_id {
            return Err(Status::invalid_argument(
                "session_id: not the current session",
            ));
        }
        let session = session.clone();
        let shares = state.inbox.remove(&session).unwrap_or_default();
        let DkgRound::Dealt { state: round, .. } =
            std::mem::replace(&mut state.round, DkgRound::Idle)
        else {
            unreachable!("checked above");
        };
        let (next, complaints) = round
            .receive(&broadcasts, &shares)
            .map_err(|error| Status::invalid_argument(format!("broadcasts: {error}")))?;
        state.round = DkgRound::Received {
            session,
            state: next,
        };
        Ok(Response::new(DkgReceiveResponse {
            complaints: complaints.iter().map(Wire::to_bytes).collect(),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_justify(
        &self,
        request: Request<DkgJustifyRequest>,
    ) -> Result<Response<DkgJustifyResponse>, Status> {
        self.check_coordinator(methods::DKG_JUSTIFY, &request)?;
        let message = request.into_inner();
        let complaints: Vec<Complaint> = decode_all(&message.complaints, "complaints")?;
        let state = self.lock()?;
        let DkgRound::Received { state: round, .. } = &state.round else {
            return Err(Status::failed_precondition("no DKG round 2 completed"));
        };
        let justifications: Vec<Justification> = round.justify(&complaints);
        Ok(Response::new(DkgJustifyResponse {
            justifications: justifications.iter().map(Wire::to_bytes).collect(),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_finish(
        &self,
        request: Request<DkgFinishRequest>,
    ) -> Result<Response<DkgFinishResponse>, Status> {
        self.check_coordinator(methods::DKG_FINISH, &request)?;
        let message = request.into_inner();
        let complaints: Vec<Complaint> = decode_all(&message.complaints, "complaints")?;
        let justifications: Vec<Justification> =
            decode_all(&message.justifications, "justifications")?;
        let mut state = self.lock()?;
        let DkgRound::Received { session, .. } = &state.round else {
            return Err(Status::failed_precondition("no DKG round 2 completed"));
        };
        if session != &message.session_id {
            return Err(Status::invalid_argument(
                "session_id: not the current session",
            ));
        }
        let DkgRound::Received { state: round, .. } =
            std::mem::replace(&mut state.round, DkgRound::Idle)
        else {
            unreachable!("checked above");
        };
        let output = round
            .finish(&complaints, &justifications)
            .map_err(|error| Status::failed_precondition(format!("dkg: {error}")))?;
        let committee = output.committee.to_bytes();
        if let Some(path) = &self.config.key_share_file {
            store_key_share(path, &output.share, &output.committee).map_err(|error| {
                tracing::error!(path = %path.display(), %error, "storing the key share");
                Status::internal("the node could not store its key share")
            })?;
        }
        state.key = Some((output.share, output.committee));
        Ok(Response::new(DkgFinishResponse { committee }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn contribute(
        &self,
        request: Request<ContributeRequest>,
    ) -> Result<Response<ContributeResponse>, Status> {
        self.check_coordinator(methods::CONTRIBUTE, &request)?;
        let message = request.into_inner();
        let order = order_id(&message.order_id)?;
        if message.listing != self.config.listing {
            return Err(Status::invalid_argument(format!(
                "listing: this node serves `{}`",
                self.config.listing
            )));
        }
        if message.purpose.is_empty() {
            return Err(Status::invalid_argument("purpose: empty"));
        }
        let collective_key = {
            let state = self.lock()?;
            if state.contributed.contains(&order) {
                return Err(Status::already_exists(
                    "order_id: this node already contributed to the order",
                ));
            }
            let Some((_, committee)) = &state.key else {
                return Err(Status::failed_precondition(
                    "no collective key yet: the committee's DKG has not run",
                ));
            };
            *committee.collective_key()
        };
        let plan = compile(&message.sql, self.vault.schema()).map_err(|error| {
            Status::invalid_argument(format!("sql: {}", bounded_message(&error.to_string())))
        })?;
        // The buyer's signed order, not the coordinator, says what is asked, for which
        // purpose, and how much ε each included patient spends.
        let facts = self.order_facts(&order, &message.sql).await?;
        if !facts.listings.contains(&self.config.listing) {
            return Err(Status::failed_precondition(format!(
                "order_id: the order does not name listing {}",
                self.config.listing
            )));
        }
        if market::server::purpose_name(facts.purpose) != message.purpose {
            return Err(Status::invalid_argument(format!(
                "purpose: the order's purpose is {}",
                market::server::purpose_name(facts.purpose)
            )));
        }
        if let Some(Fault::SlowToCompute(millis)) = self.fault() {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
        // A patient whose personal limit the order would exceed is left out, exactly like one
        // who never consented: the release cannot tell them apart.
        let consents = self
            .current_consents(facts.purpose, facts.epsilon_micro, &facts.listings)
            .await?;
        let vault = Arc::clone(&self.vault);
        let purpose = message.purpose.clone();
        let context_order = match self.fault() {
            Some(Fault::ProveForAnotherQuery) => vec![0xEE; 32],
            _ => order.clone(),
        };
        let context = contribution_context(&context_order, &self.config.listing)?;
        let fault = self.fault();
        let (contribution, participants) = tokio::task::spawn_blocking(move || {
            let statistics = evaluate(&plan, &vault, &consents, &purpose)
                .map_err(|error| Status::internal(format!("evaluation failed: {error}")))?;
            let mut contribution = build_contribution(
                &context,
                &collective_key,
                &plan,
                &statistics,
                vault.capacity(),
                &mut OsRng,
            )
            .map_err(|error| Status::internal(format!("proving failed: {error}")))?;
            if fault == Some(Fault::InflateAfterProving) {
                contribution.ciphertexts[1] = contribution.ciphertexts[1]
                    .add_plaintext(&curve25519_dalek::Scalar::from(1_000_000_000u64));
            }
            let mut participants: Vec<Vec<u8>> = vault
                .records()
                .iter()
                .filter(|record| consents.covers(&record.patient_id, &purpose))
                .filter_map(|record| record.patient_key.as_deref())
                .filter_map(|key| hex::decode(key).ok())
                .collect();
            participants.sort();
            participants.dedup();
            Ok::<_, Status>((contribution, participants))
        })
        .await
        .map_err(|error| Status::internal(format!("worker failed: {error}")))??;
        let ciphertexts: Vec<Vec<u8>> = contribution
            .ciphertexts
            .iter()
            .map(Wire::to_bytes)
            .collect();
        let proof = contribution.proof.to_bytes();
        // The node's own word on its part of the receipt: who took part, the capacity its
        // proof is bound to, and the hash of what it sends. The ledger records no receipt
        // without it, so the market cannot pay, debit or name anyone the node did not.
        let mut attested = ListingContribution {
            listing: ListingId::new(self.config.listing.clone()),
            epsilon_debited_micro: facts.epsilon_micro,
            participants: participants
                .iter()
                .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
                .map(AccountId)
                .collect(),
            capacity: self.vault.capacity(),
            contribution_hash: market::hash::contribution_hash(&ciphertexts, &proof),
            attestation: Vec::new(),
        };
        attested.attest(
            &self.config.account,
            &self.config.ledger.chain_id,
            &order_key(&order)?,
            &market::hash::query_hash(&message.sql),
        );
        let response = ContributeResponse {
            ciphertexts,
            proof,
            capacity: self.vault.capacity(),
            participants,
            attestation: attested.attestation,
        };
        let mut state = self.lock()?;
        state.contributed.insert(order);
        if self.fault() == Some(Fault::ReplayFirstContribution) {
            let first = state
                .first_contribution
                .get_or_insert_with(|| response.clone());
            return Ok(Response::new(first.clone()));
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn add_noise(
        &self,
        request: Request<AddNoiseRequest>,
    ) -> Result<Response<AddNoiseResponse>, Status> {
        self.check_coordinator(methods::ADD_NOISE, &request)?;
        if self.fault() == Some(Fault::DownAtKeySwitch) {
            return Err(Status::unavailable("node is down"));
        }
        let message = request.into_inner();
        let order = order_id(&message.order_id)?;
        let committee = {
            let state = self.lock()?;
            if let Some(release) = state.releases.get(&order) {
                // Asked again: the same share, never fresh noise for the same release.
                return Ok(Response::new(AddNoiseResponse {
                    share: Some(encode_noise_share(&release.own)),
                }));
            }
            let Some((_, committee)) = &state.key else {
                return Err(Status::failed_precondition(
                    "no key share yet: the committee's DKG has not run",
                ));
            };
            committee.clone()
        };
        let facts = self.order_facts(&order, &message.sql).await?;
        let mut seen = BTreeSet::new();
        let mut contributions = Vec::with_capacity(message.contributions.len());
        let mut summed_hashes = Vec::with_capacity(message.contributions.len());
        for (index, record) in message.contributions.iter().enumerate() {
            if !facts.listings.contains(&record.listing) {
                return Err(Status::invalid_argument(format!(
                    "contributions[{index}].listing: {} is not in the order",
                    excerpt(&record.listing)
                )));
            }
            if !seen.insert(record.listing.clone()) {
                return Err(Status::invalid_argument(format!(
                    "contributions[{index}].listing: {} appears twice",
                    excerpt(&record.listing)
                )));
            }
            let contribution = Contribution {
                ciphertexts: decode_all(
                    &record.ciphertexts,
                    &format!("contributions[{index}].ciphertexts"),
                )?,
                proof: decode::<CiphertextRangeProof>(
                    &record.proof,
                    &format!("contributions[{index}].proof"),
                )?,
            };
            let context = contribution_context(&order, &record.listing)?;
            summed_hashes.push((
                record.listing.clone(),
                market::hash::contribution_hash(&record.ciphertexts, &record.proof),
            ));
            contributions.push((
                record.listing.clone(),
                record.capacity,
                context,
                contribution,
            ));
        }
        if contributions.is_empty() {
            return Err(Status::invalid_argument("contributions: none"));
        }
        let member = self.config.member.get();
        let context = noise_context(&order, member)?;
        let release = tokio::task::spawn_blocking(move || {
            let statements: Vec<ContributionStatement<'_>> = contributions
                .iter()
                .map(
                    |(_, capacity, context, contribution)| ContributionStatement {
                        context,
                        capacity: *capacity,
                        contribution,
                    },
                )
                .collect();
            if let Err(failures) = verify_contributions(
                committee.collective_key(),
                &facts.plan,
                &statements,
                &mut OsRng,
            ) {
                let named: Vec<String> = failures
                    .iter()
                    .map(|(index, error)| format!("{}: {error}", contributions[*index].0))
                    .collect();
                return Err(Status::invalid_argument(format!(
                    "contributions: do not verify ({})",
                    named.join("; ")
                )));
            }
            let summed: Vec<&Contribution> = contributions
                .iter()
                .map(|(_, _, _, contribution)| contribution)
                .collect();
            let sum = sum_contributions(&summed);
            let calibration = calibrate(&facts.plan, facts.epsilon_micro)
                .map_err(|error| Status::failed_precondition(format!("epsilon: {error}")))?;
            let own = build_noise_share(
                &context,
                committee.collective_key(),
                &calibration,
                member,
                &mut OsRng,
            )
            .map_err(|error| Status::internal(format!("noise share: {error}")))?;
            Ok::<_, Status>(Release {
                plan: facts.plan,
                calibration,
                min_cohort: facts.min_cohort,
                sum,
                own,
                contributions: summed_hashes,
                cosigned: None,
                noise_set: None,
                counts_switched: false,
                values_switched: false,
            })
        })
        .await
        .map_err(|error| Status::internal(format!("worker failed: {error}")))??;
        let share = encode_noise_share(&release.own);
        let mut state = self.lock()?;
        // A concurrent call may have won the race: keep the first share.
        let kept = state.releases.entry(order).or_insert(release);
        let share = if kept.own.ciphertexts.first().map(Wire::to_bytes)
            == share.ciphertexts.first().cloned()
        {
            share
        } else {
            encode_noise_share(&kept.own)
        };
        Ok(Response::new(AddNoiseResponse { share: Some(share) }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn key_switch(
        &self,
        request: Request<KeySwitchRequest>,
    ) -> Result<Response<KeySwitchResponse>, Status> {
        self.check_coordinator(methods::KEY_SWITCH, &request)?;
        if self.fault() == Some(Fault::DownAtKeySwitch) {
            return Err(Status::unavailable("node is down"));
        }
        let message = request.into_inner();
        let order = order_id(&message.order_id)?;
        let phase = KeySwitchPhase::try_from(message.phase)
            .ok()
            .filter(|phase| *phase != KeySwitchPhase::Unspecified)
            .ok_or_else(|| Status::invalid_argument("phase: COUNTS or VALUES"))?;
        self.check_committed_release(&order, &message.noise, phase, &message.recipient)
            .await?;
        let (share, committee, release_view) = {
            let mut state = self.lock()?;
            let state = &mut *state;
            let Some((share, committee)) = &state.key else {
                return Err(Status::failed_precondition(
                    "no key share yet: the committee's DKG has not run",
                ));
            };
            let Some(release) = state.releases.get_mut(&order) else {
                return Err(Status::failed_precondition(
                    "order_id: this member has added no noise to the order (call AddNoise first)",
                ));
            };
            let done = match phase {
                KeySwitchPhase::Counts => release.counts_switched,
                _ => release.values_switched,
            };
            if done {
                return Err(Status::already_exists(
                    "order_id: this phase of the release was already key-switched",
                ));
            }
            if phase == KeySwitchPhase::Values && !release.counts_switched {
                return Err(Status::failed_precondition(
                    "phase: the counts must be key-switched first",
                ));
            }
            let (members, noisy) = noisy_sum(release, &order, committee, &message.noise)?;
            // Marked now, under the lock, so that two concurrent requests cannot both pass.
            // (The VALUES phase is unmarked again below if its checks fail.)
            release.noise_set = Some(members.clone());
            match phase {
                KeySwitchPhase::Counts => release.counts_switched = true,
                _ => release.values_switched = true,
            }
            (
                share.clone(),
                committee.clone(),
                (members, noisy, release.plan.clone(), release.min_cohort),
            )
        };
        let (_members, noisy, plan, min_cohort) = release_view;
        let counts = count_slots(&plan);
        let count_ciphertexts: Vec<Ciphertext> = counts.iter().map(|&slot| noisy[slot]).collect();
        let prepared = (|| -> Result<(ProofContext, Vec<Ciphertext>, PublicKey), Status> {
            Ok(match phase {
                KeySwitchPhase::Counts => (
                    counts_context(&order)?,
                    count_ciphertexts,
                    public_count_key(),
                ),
                _ => {
                    let shares: Vec<KeySwitchShare> =
                        decode_all(&message.count_shares, "count_shares")?;
                    let opened = committee
                        .combine(
                            &counts_context(&order)?,
                            &count_ciphertexts,
                            &public_count_key(),
                            &shares,
                        )
                        .map_err(|error| {
                            Status::invalid_argument(format!("count_shares: {error}"))
                        })?;
                    if message.noisy_counts.len() != counts.len() {
                        return Err(Status::invalid_argument(format!(
                            "noisy_counts: {} values, the plan has {} count slots",
                            message.noisy_counts.len(),
                            counts.len()
                        )));
                    }
                    for (index, (ciphertext, &value)) in opened
                        .ciphertexts
                        .iter()
                        .zip(&message.noisy_counts)
                        .enumerate()
                    {
                        if !opens_to(ciphertext, value) {
                            return Err(Status::invalid_argument(format!(
                                "noisy_counts[{index}]: not what the count shares decrypt to"
                            )));
                        }
                    }
                    let suppressed = suppressed_cells(&plan, &message.noisy_counts, min_cohort);
                    let slots = released_value_slots(&plan, &suppressed);
                    if slots.is_empty() {
                        return Err(Status::failed_precondition(
                            "every cell is suppressed: nothing to release",
                        ));
                    }
                    let recipient: PublicKey = decode(&message.recipient, "recipient")?;
                    (
                        release_context(&order)?,
                        slots.iter().map(|&slot| noisy[slot]).collect(),
                        recipient,
                    )
                }
            })
        })();
        let (context, ciphertexts, recipient) = match prepared {
            Ok(prepared) => prepared,
            Err(status) => {
                if phase == KeySwitchPhase::Values {
                    if let Some(release) = self.lock()?.releases.get_mut(&order) {
                        release.values_switched = false;
                    }
                }
                return Err(status);
            }
        };
        let switched = tokio::task::spawn_blocking(move || {
            share.key_switch_with_rng(&context, &ciphertexts, &recipient, &mut OsRng)
        })
        .await
        .map_err(|error| Status::internal(format!("worker failed: {error}")))?;
        Ok(Response::new(KeySwitchResponse {
            share: switched.to_bytes(),
        }))
    }
    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn cosign_receipt(
        &self,
        request: Request<CosignReceiptRequest>,
    ) -> Result<Response<CosignReceiptResponse>, Status> {
        self.check_coordinator(methods::COSIGN_RECEIPT, &request)?;
        let message = request.into_inner();
        let receipt = QueryReceipt::from_bytes(&message.receipt)
            .map_err(|_| Status::invalid_argument("receipt: not a postcard-encoded receipt"))?;
        let order = receipt.order.0 .0.as_bytes().to_vec();
        // 1. What this member verified and summed itself.
        let summed = {
            let state = self.lock()?;
            let release = state.releases.get(&order).ok_or_else(|| {
                Status::failed_precondition(
                    "receipt.order: this member added no noise to the order, so it cannot vouch \
                     for its receipt",
                )
            })?;
            if !release.counts_switched {
                return Err(Status::failed_precondition(
                    "receipt.order: this member has not key-switched the order's release",
                ));
            }
            release.contributions.clone()
        };
        let same_contributions = receipt.listings.len() == summed.len()
            && receipt
                .listings
                .iter()
                .zip(&summed)
                .all(|(part, (listing, hash))| {
                    part.listing.0 == *listing && part.contribution_hash == *hash
                });
        if !same_contributions {
            return Err(Status::permission_denied(
                "receipt.listings: not the contributions this member verified and summed",
            ));
        }
        let root = market::hash::contributions_root(
            receipt.listings.iter().map(|part| &part.contribution_hash),
        );
        if receipt.contributions_root != root {
            return Err(Status::invalid_argument(
                "receipt.contributions_root: not the root of its listings' contribution hashes",
            ));
        }
        // 2. What the ledger says, from this node's verified replica.
        let channel = self.market_channel().await?;
        let order_key = receipt.order;
        let (found, owners, committed, registered) = self
            .follower
            .sync_and_read(channel, |machine| {
                let state = machine.state();
                let owners: Vec<Option<AccountId>> = receipt
                    .listings
                    .iter()
                    .map(|part| state.listing(&part.listing).map(|listing| listing.owner))
                    .collect();
                (
                    state.order(&order_key).cloned(),
                    owners,
                    state.release(&order_key).cloned(),
                    state.committee().cloned(),
                )
            })
            .await
            .map_err(follow_status)?;
        self.config.committee.check_ledger(registered.as_ref())?;
        let chain_id = self.config.ledger.chain_id;
        for (index, (part, owner)) in receipt.listings.iter().zip(&owners).enumerate() {
            let attested = owner
                .and_then(|owner| owner.verifying_key().ok())
                .is_some_and(|key| {
                    part.attested_by(&key, &chain_id, &order_key, &receipt.query_hash)
                });
            if !attested {
                return Err(Status::permission_denied(format!(
                    "receipt.listings[{index}]: not attested by the listing's owner on the ledger"
                )));
            }
        }
        let found = found.ok_or_else(|| {
            Status::failed_precondition("receipt.order: no such order on the ledger")
        })?;
        if found.status != market::state::OrderStatus::Open {
            return Err(Status::failed_precondition(
                "receipt.order: the order is no longer open on the ledger",
            ));
        }
        if found.query_hash != receipt.query_hash {
            return Err(Status::invalid_argument(
                "receipt.query_hash: not the order's query hash",
            ));
        }
        if let Some(index) = receipt
            .listings
            .iter()
            .position(|part| part.epsilon_debited_micro != found.epsilon_requested_micro)
        {
            return Err(Status::invalid_argument(format!(
                "receipt.listings[{index}].epsilon_debited_micro: not the order's ε"
            )));
        }
        let member = self.config.member.get();
        let in_quorum = committed
            .as_ref()
            .is_some_and(|release| release.quorum.contains(&member));
        if !in_quorum {
            return Err(Status::failed_precondition(
                "receipt.order: the ledger commits no release of the order with this member in \
                 its quorum",
            ));
        }
        // 3. One receipt per order: the same one may be asked for again.
        let digest = receipt.cosignature_digest(&chain_id);
        let mut state = self.lock()?;
        let release = state
            .releases
            .get_mut(&order)
            .ok_or_else(|| Status::internal("the order's release was forgotten"))?;
        let signature = match &release.cosigned {
            Some((signed, signature)) if *signed == digest => signature.clone(),
            Some(_) => {
                return Err(Status::permission_denied(
                    "receipt: this member already co-signed another receipt for the order",
                ))
            }
            None => {
                let cosignature = receipt.cosign(member, &self.config.account, &chain_id);
                release.cosigned = Some((digest, cosignature.signature.clone()));
                cosignature.signature
            }
        };
        Ok(Response::new(CosignReceiptResponse {
            member: u32::from(member),
            signature,
        }))
    }
    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn put_evaluation_key(
        &self,
        request: Request<tonic::Streaming<EvaluationKeyChunk>>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        let caller =
            self.verifier
                .verify_stream(methods::PUT_EVALUATION_KEY, &request, unix_now())?;
        if caller != self.config.coordinator {
            return Err(Status::permission_denied(format!(
                "account {caller} is not this node's coordinator"
            )));
        }
        self.receive_evaluation_key(request.into_inner()).await
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn feasibility(
        &self,
        request: Request<FeasibilityRequest>,
    ) -> Result<Response<FeasibilityResponse>, Status> {
        self.check_coordinator(methods::FEASIBILITY, &request)?;
        self.run_feasibility(request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn accept_invitation(
        &self,
        request: Request<cohortex_proto::v1::AcceptInvitationRequest>,
    ) -> Result<Response<cohortex_proto::v1::TrialReply>, Status> {
        self.check_coordinator(methods::ACCEPT_INVITATION, &request)?;
        self.answer_acceptance(request.into_inner())
            .await
            .map(Response::new)
    }
}
