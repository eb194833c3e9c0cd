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
use cohortex_proto::v1::{
    ContributeRequest, ContributeResponse, DeliverShareRequest, DeliverShareResponse,
    DkgDealRequest, DkgDealResponse, DkgFinishRequest, DkgFinishResponse, DkgJustifyRequest,
    DkgJustifyResponse, DkgReceiveRequest, DkgReceiveResponse, KeySwitchRequest, KeySwitchResponse,
    ListCurrentConsentsRequest,
};
use ed25519_dalek::SigningKey;
use market::server::auth::{signed_request, unix_now, RequestVerifier};
use market::AccountId;
use rand::rngs::OsRng;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use zk::dkg::messages::{Complaint, DealerBroadcast, DealerShare, Justification};
use zk::dkg::{deal_with_rng, AwaitingJustifications, AwaitingShares, DkgParameters};
use zk::{Ciphertext, CommitteePublic, KeyShare, MemberIndex, ProofContext, PublicKey, Wire};

use crate::contribution::build_contribution;
use crate::evaluate::evaluate;
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

    /// The patients of this vault whose consent to the listing and purpose holds now,
    /// according to the ledger.
    async fn current_consents(&self, purpose: &str) -> Result<ConsentBook, Status> {
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
        if let Some(Fault::SlowToCompute(millis)) = self.config.fault {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
        let consents = self.current_consents(&message.purpose).await?;
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
        self.lock()?.contributed.insert(order);
        Ok(Response::new(ContributeResponse {
            ciphertexts: contribution
                .ciphertexts
                .iter()
                .map(Wire::to_bytes)
                .collect(),
            proof: contribution.proof.to_bytes(),
            capacity: self.vault.capacity(),
            participants,
        }))
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
        let ciphertexts: Vec<Ciphertext> = decode_all(&message.ciphertexts, "ciphertexts")?;
        let recipient: PublicKey = decode(&message.recipient, "recipient")?;
        let share = {
            let state = self.lock()?;
            let Some((share, _)) = &state.key else {
                return Err(Status::failed_precondition(
                    "no key share yet: the committee's DKG has not run",
                ));
            };
            share.clone()
        };
        let context = release_context(&order)?;
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
