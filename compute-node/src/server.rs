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

use cohortex_proto::v1::compute_server::Compute;
use cohortex_proto::v1::consent_client::ConsentClient;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse, DeliverShareRequest,
    DeliverShareResponse, DkgDealRequest, DkgDealResponse, DkgFinishRequest, DkgFinishResponse,
    DkgJustifyRequest, DkgJustifyResponse, DkgReceiveRequest, DkgReceiveResponse,
    GetTransactionRequest, KeySwitchPhase, KeySwitchRequest, KeySwitchResponse,
    ListCurrentConsentsRequest, ListListingsRequest,
};
use ed25519_dalek::SigningKey;
use market::server::auth::{signed_request, unix_now, RequestVerifier};
use market::AccountId;
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
use crate::noise::{
    apply_noise, build_noise_share, count_slots, noise_statement, opens_to, public_count_key,
    released_value_slots, suppressed_cells, NoiseShare,
};
use crate::plan::QueryPlan;
use crate::schema::Schema;
use crate::sql::compile;
use crate::vault::{ConsentBook, Vault};

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
    /// The other committee members' accounts, which may deliver DKG shares.
    pub peers: BTreeSet<AccountId>,
    /// The market's endpoint (`http://host:port`), for consent checks.
    pub market_endpoint: String,
    /// Deliberate misbehaviour, for end-to-end tests of the aggregator's checks.
    pub fault: Option<Fault>,
}

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
}

/// What a member remembers of an order it added noise to.
struct Release {
    plan: QueryPlan,
    calibration: Calibration,
    min_cohort: u64,
    /// The verified contributions' sum, fixed before any noise was drawn.
    sum: Vec<Ciphertext>,
    own: NoiseShare,
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
    state: Mutex<NodeState>,
}

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
    if bytes.len() != 32 {
        return Err(Status::invalid_argument("order_id must be 32 bytes"));
    }
    Ok(bytes.to_vec())
}

impl NodeService {
    /// A node serving `vault`.
    pub fn new(vault: Arc<Vault>, config: NodeConfig) -> Self {
        Self {
            vault,
            config,
            verifier: RequestVerifier::new(),
            state: Mutex::new(NodeState {
                round: DkgRound::Idle,
                inbox: BTreeMap::new(),
                key: None,
                contributed: BTreeSet::new(),
                first_contribution: None,
                releases: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, NodeState>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("node state lock poisoned"))
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
    /// personal privacy limit allows `epsilon_micro` more, according to the ledger.
    async fn current_consents(
        &self,
        purpose: &str,
        epsilon_micro: u64,
    ) -> Result<ConsentBook, Status> {
        let channel = Channel::from_shared(self.config.market_endpoint.clone())
            .map_err(|error| Status::internal(format!("market endpoint: {error}")))?
            .connect()
            .await
            .map_err(|error| Status::unavailable(format!("market unreachable: {error}")))?;
        let mut client = ConsentClient::new(channel)
            .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES);
        let request = signed_request(
            &self.config.account,
            methods::LIST_CURRENT_CONSENTS,
            ListCurrentConsentsRequest {
                listing: self.config.listing.clone(),
                purpose: purpose.to_string(),
                epsilon_micro,
            },
        );
        let consenting: BTreeSet<Vec<u8>> = client
            .list_current_consents(request)
            .await?
            .into_inner()
            .patients
            .into_iter()
            .collect();
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
    async fn market_channel(&self) -> Result<Channel, Status> {
        Channel::from_shared(self.config.market_endpoint.clone())
            .map_err(|error| Status::internal(format!("market endpoint: {error}")))?
            .connect()
            .await
            .map_err(|error| Status::unavailable(format!("market unreachable: {error}")))
    }

    /// Reads the buyer's signed order from the ledger and the ordered listings' terms and
    /// manifests from the market, and compiles `sql` against them. ε comes from the order,
    /// never from the coordinator.
    async fn order_facts(&self, order: &[u8], sql: &str) -> Result<OrderFacts, Status> {
        let channel = self.market_channel().await?;
        let record = LedgerClient::new(channel.clone())
            .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
            .get_transaction(GetTransactionRequest {
                tx_id: order.to_vec(),
            })
            .await
            .map_err(|status| {
                Status::failed_precondition(format!(
                    "order_id: the ledger has no such order ({})",
                    status.message()
                ))
            })?
            .into_inner();
        let verified = market::tx::UncheckedTx::parse(record.envelope)
            .and_then(market::tx::UncheckedTx::verify)
            .map_err(|error| Status::failed_precondition(format!("order_id: {error}")))?;
        if verified.id().0.as_bytes() != order {
            return Err(Status::failed_precondition(
                "order_id: the ledger returned another transaction",
            ));
        }
        let market::Action::OrderQuery {
            query_hash,
            listings,
            purpose,
            epsilon_micro,
            ..
        } = verified.body().action.clone()
        else {
            return Err(Status::failed_precondition(
                "order_id: the transaction is not an order",
            ));
        };
        if query_hash != market::hash::query_hash(sql) {
            return Err(Status::invalid_argument(
                "sql: its hash is not the order's query_hash",
            ));
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
        for listing in &listings {
            let offer = offered
                .iter()
                .find(|offer| offer.id == listing.0)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "listing {listing} of the order is not offered"
                    ))
                })?;
            let schema = Schema::from_toml(&offer.manifest, &offer.id).map_err(|error| {
                Status::failed_precondition(format!("listing {listing}: manifest: {error}"))
            })?;
            let compiled = compile(sql, &schema)
                .map_err(|error| Status::invalid_argument(format!("sql: {error}")))?;
            match &plan {
                Some(first) if first != &compiled => {
                    return Err(Status::invalid_argument(
                        "sql: the ordered listings' schemas give different plans",
                    ))
                }
                _ => plan = Some(compiled),
            }
            min_cohort = min_cohort.max(u64::from(offer.min_cohort_size));
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
        let members = u16::try_from(message.peers.len())
            .map_err(|_| Status::invalid_argument("peers: too many"))?;
        let threshold = u16::try_from(message.threshold)
            .map_err(|_| Status::invalid_argument("threshold: too large"))?;
        let parameters = DkgParameters::new(threshold, members, &message.session_id)
            .map_err(|error| Status::invalid_argument(format!("threshold/peers: {error}")))?;
        let (state, broadcast, shares) = deal_with_rng(&parameters, self.config.member, &mut OsRng)
            .map_err(|error| Status::invalid_argument(format!("peers: {error}")))?;
        // Deliver each private share straight to its recipient.
        for share in shares {
            let peer = message
                .peers
                .iter()
                .find(|peer| u32::from(share.recipient.get()) == peer.member)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "peers: no endpoint for member {}",
                        share.recipient.get()
                    ))
                })?;
            let channel = Channel::from_shared(peer.endpoint.clone())
                .map_err(|error| Status::invalid_argument(format!("peers.endpoint: {error}")))?
                .connect()
                .await
                .map_err(|error| {
                    Status::unavailable(format!("member {} unreachable: {error}", peer.member))
                })?;
            let mut client = cohortex_proto::v1::compute_client::ComputeClient::new(channel);
            client
                .deliver_share(signed_request(
                    &self.config.account,
                    methods::DELIVER_SHARE,
                    DeliverShareRequest {
                        session_id: message.session_id.clone(),
                        share: share.to_bytes(),
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
        if !self.config.peers.contains(&caller) {
            return Err(Status::permission_denied(format!(
                "account {caller} is not a committee member"
            )));
        }
        let message = request.into_inner();
        let share: DealerShare = decode(&message.share, "share")?;
        if share.recipient != self.config.member {
            return Err(Status::invalid_argument(
                "share: addressed to another member",
            ));
        }
        self.lock()?
            .inbox
            .entry(message.session_id)
            .or_default()
            .push(share);
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
        let plan = compile(&message.sql, self.vault.schema())
            .map_err(|error| Status::invalid_argument(format!("sql: {error}")))?;
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
        if let Some(Fault::SlowToCompute(millis)) = self.config.fault {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
        // A patient whose personal limit the order would exceed is left out, exactly like one
        // who never consented: the release cannot tell them apart.
        let consents = self
            .current_consents(&message.purpose, facts.epsilon_micro)
            .await?;
        let vault = Arc::clone(&self.vault);
        let purpose = message.purpose.clone();
        let context_order = match self.config.fault {
            Some(Fault::ProveForAnotherQuery) => vec![0xEE; 32],
            _ => order.clone(),
        };
        let context = contribution_context(&context_order, &self.config.listing)?;
        let fault = self.config.fault;
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
        let response = ContributeResponse {
            ciphertexts: contribution
                .ciphertexts
                .iter()
                .map(Wire::to_bytes)
                .collect(),
            proof: contribution.proof.to_bytes(),
            capacity: self.vault.capacity(),
            participants,
        };
        let mut state = self.lock()?;
        state.contributed.insert(order);
        if self.config.fault == Some(Fault::ReplayFirstContribution) {
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
        if self.config.fault == Some(Fault::DownAtKeySwitch) {
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
        for (index, record) in message.contributions.iter().enumerate() {
            if !facts.listings.contains(&record.listing) {
                return Err(Status::invalid_argument(format!(
                    "contributions[{index}].listing: {} is not in the order",
                    record.listing
                )));
            }
            if !seen.insert(record.listing.clone()) {
                return Err(Status::invalid_argument(format!(
                    "contributions[{index}].listing: {} appears twice",
                    record.listing
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
        if self.config.fault == Some(Fault::DownAtKeySwitch) {
            return Err(Status::unavailable("node is down"));
        }
        let message = request.into_inner();
        let order = order_id(&message.order_id)?;
        let phase = KeySwitchPhase::try_from(message.phase)
            .ok()
            .filter(|phase| *phase != KeySwitchPhase::Unspecified)
            .ok_or_else(|| Status::invalid_argument("phase: COUNTS or VALUES"))?;
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
}
