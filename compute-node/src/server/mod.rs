//! The node's gRPC Compute service (feature `server`): the key ceremony, contributions and
//! key-switch shares.
//!
//! [`NodeService`] is the domain service: its operations take a decoded request and return the
//! answer or a status naming the field at fault. They live by concern: `dkg` (the key
//! ceremony, one type per round), `contribute`, `release` (noise, key switching and receipt
//! co-signing, one stage at a time), `feasibility` and `recruitment`. `grpc` is the thin
//! adapter that authenticates each call and hands it over.
//!
//! Only the market's coordinator may call it (every request is signed, see
//! `cohortex_types::auth`), except `DeliverShare`, which the other committee members call
//! with their private DKG shares. Before computing, the node asks the ledger's Consent
//! service which patients consent **now**; a revocation recorded before that moment is
//! honoured even if the order was placed earlier.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::NodeError;
use cohortex_proto::serving::{health_and_reflection, server_builder, ServeError};
use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::compute_server::ComputeServer;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{ContributeResponse, ListListingsRequest};
use cohortex_types::auth::{unix_now, RequestVerifier};
use cohortex_types::rpc::{MAX_MESSAGE_BYTES, REQUEST_TIMEOUT};
use cohortex_types::text::bounded_message;
use ed25519_dalek::SigningKey;
use market::{AccountId, Hash32, ListingId, OrderId, TxId};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use zk::dkg::messages::DealerShare;
use zk::{CommitteePublic, KeyShare, MemberIndex};

use crate::follower::{follow_in_background, FollowError, LedgerFollower, PinnedLedger};
use crate::plan::QueryPlan;
use crate::protocol::{CommitteeError, PinnedCommittee};
use crate::schema::Schema;
use crate::sql::compile;
use crate::vault::{ConsentBook, Vault};

mod contribute;
mod dkg;
#[cfg(feature = "tfhe")]
mod feasibility;
mod grpc;
#[cfg(feature = "tfhe")]
mod recruitment;
mod release;

pub use contribute::{PARTICIPANTS_PAGE, PARTICIPANT_LISTS_KEPT};
use dkg::{load_key_share, DkgRound};
#[cfg(feature = "tfhe")]
pub use feasibility::count_noise;
use release::{Release, ReleaseStore};

#[cfg(not(feature = "tfhe"))]
impl NodeService {
    async fn receive_evaluation_key(
        &self,
        _: Vec<u8>,
    ) -> Result<cohortex_proto::v1::PutEvaluationKeyResponse, NodeError> {
        Err(NodeError::unsupported(
            "this node was built without the `tfhe` feature: no blind feasibility search",
        ))
    }

    async fn answer_acceptance(
        &self,
        _: crate::calls::AcceptanceCall,
    ) -> Result<cohortex_proto::v1::TrialReply, NodeError> {
        Err(NodeError::unsupported(
            "this node was built without the `tfhe` feature: no trial recruitment",
        ))
    }

    async fn run_feasibility(
        &self,
        _: cohortex_proto::v1::FeasibilityRequest,
    ) -> Result<cohortex_proto::v1::FeasibilityResponse, NodeError> {
        Err(NodeError::unsupported(
            "this node was built without the `tfhe` feature: no blind feasibility search",
        ))
    }
}

/// How often a node brings its ledger replica up to date between orders.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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

struct NodeState {
    round: DkgRound,
    /// The key-ceremony sessions this node dealt in since it started, the most recent last
    /// (at most [`dkg::SESSIONS_REMEMBERED`]): it never deals twice in one session.
    dealt_sessions: std::collections::VecDeque<Vec<u8>>,
    /// Shares delivered by peers for the current session.
    inbox: BTreeMap<Vec<u8>, Vec<DealerShare>>,
    key: Option<(KeyShare, CommitteePublic)>,
    contributed: BTreeSet<Vec<u8>>,
    /// The first contribution sent (kept only under `Fault::ReplayFirstContribution`).
    first_contribution: Option<ContributeResponse>,
    /// The participants of the latest contributions longer than a page (at most
    /// [`contribute::PARTICIPANT_LISTS_KEPT`], oldest first), for `ContributionParticipants`.
    participant_lists: std::collections::VecDeque<(Vec<u8>, ParticipantList)>,
    /// Per order: the fixed sum, this member's noise and what has been released.
    releases: BTreeMap<Vec<u8>, Release>,
    /// (trial, patient) pairs this node answered an acceptance for: one reply per patient.
    trial_replies: BTreeSet<(String, [u8; 32])>,
}

/// A contribution's participants (accounts, ascending), shared with the pages served.
type ParticipantList = Arc<Vec<[u8; 32]>>;

/// What the ledger and the market say about an order, as a member checks it.
struct OrderFacts {
    plan: QueryPlan,
    purpose: market::Purpose,
    epsilon_micro: u64,
    min_cohort: u64,
    listings: Vec<String>,
    /// Whether a release of the order is committed on the ledger.
    release_committed: bool,
}

/// One node: its vault, its pinned configuration, its ledger replica and its protocol state;
/// the Compute service (`grpc`) in front of it.
pub struct NodeService {
    vault: Arc<Vault>,
    config: NodeConfig,
    verifier: RequestVerifier,
    follower: Arc<LedgerFollower>,
    market: tokio::sync::OnceCell<Channel>,
    state: Mutex<NodeState>,
    /// Where this member's releases are written before any share of them leaves.
    releases: ReleaseStore,
    /// Recruiters' expanded TFHE evaluation keys by fingerprint, the most recent last (at
    /// most [`EVALUATION_KEYS_KEPT`]: each is about 120 MB once expanded).
    #[cfg(feature = "tfhe")]
    evaluation_keys: Mutex<Vec<([u8; 32], Arc<zk::fhe::Evaluator>)>>,
}

/// How many recruiters' expanded evaluation keys a node keeps.
#[cfg(feature = "tfhe")]
pub const EVALUATION_KEYS_KEPT: usize = 2;

/// The order id as the ledger keys it.
fn order_key(bytes: &[u8]) -> Result<OrderId, NodeError> {
    <[u8; 32]>::try_from(bytes)
        .map(|id| OrderId(TxId(Hash32(id))))
        .map_err(|_| NodeError::bad_request("order_id must be 32 bytes"))
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
        let seat_endpoint = seat.endpoint.clone();
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
        #[cfg(feature = "tfhe")]
        let answered = match feasibility::answered_path(&config) {
            Some(path) => feasibility::load_answered(&path)?,
            None => BTreeSet::new(),
        };
        #[cfg(not(feature = "tfhe"))]
        let answered = BTreeSet::new();
        // Releases under way before a restart go on with the noise already drawn.
        let releases = ReleaseStore::beside(config.key_share_file.as_deref());
        let stored_releases = releases.load()?;
        // The replica is kept beside the key share, so that a restarted node goes on from the
        // last block it verified.
        let follower = Arc::new(match &config.key_share_file {
            Some(path) => LedgerFollower::with_replica_file(
                config.ledger.clone(),
                path.with_extension("ledger-replica.db"),
            ),
            None => LedgerFollower::new(config.ledger.clone()),
        });
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
            // Requests must name this node's own pinned endpoint: one signed for a peer is refused.
            verifier: RequestVerifier::for_audience(&seat_endpoint),
            follower,
            market: tokio::sync::OnceCell::new(),
            releases,
            #[cfg(feature = "tfhe")]
            evaluation_keys: Mutex::new(Vec::new()),
            state: Mutex::new(NodeState {
                round: DkgRound::Idle,
                dealt_sessions: std::collections::VecDeque::new(),
                inbox: BTreeMap::new(),
                key: stored_key,
                // Feasibility searches answered before a restart stay answered.
                contributed: answered,
                first_contribution: None,
                participant_lists: std::collections::VecDeque::new(),
                releases: stored_releases,
                trial_replies: BTreeSet::new(),
            }),
        })
    }

    /// The node's ledger replica (shared with the service), e.g. to wait until it has caught
    /// up before the first order.
    pub fn follower(&self) -> Arc<LedgerFollower> {
        Arc::clone(&self.follower)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, NodeState>, NodeError> {
        self.state
            .lock()
            .map_err(|_| NodeError::internal("node state lock poisoned"))
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
    ) -> Result<ConsentBook, NodeError> {
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
        let purpose = cohortex_types::purpose_name(purpose);
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

/// How a failure to verify the ledger reaches the caller.
fn follow_status(error: FollowError) -> NodeError {
    match error {
        FollowError::Unreachable(_) => NodeError::unavailable(error.to_string()),
        other => NodeError::not_ready(format!(
            "ledger: {other} (this node acts only on a ledger verified against its pinned key)"
        )),
    }
}

impl NodeService {
    /// The channel to the market, connected on first use and shared by every request after
    /// (tonic reconnects it if the market restarts).
    async fn market_channel(&self) -> Result<Channel, NodeError> {
        self.market
            .get_or_try_init(|| async {
                link(&self.config.market_endpoint, self.config.tls.as_ref())
                    .map_err(|error| NodeError::internal(format!("market endpoint: {error}")))?
                    .connect()
                    .await
                    .map_err(|error| NodeError::unavailable(format!("market unreachable: {error}")))
            })
            .await
            .cloned()
    }

    /// Reads the buyer's order, its status and the ordered listings' terms from the node's
    /// verified replica of the ledger, and the listings' manifests from the market, each of
    /// which must hash to its listing's `schema_hash` on the ledger; compiles `sql` against
    /// them. ε, the purpose and the listings come from the order, never from the coordinator.
    async fn order_facts(&self, order: &[u8], sql: &str) -> Result<OrderFacts, NodeError> {
        let channel = self.market_channel().await?;
        let order_key = order_key(order)?;
        let now = unix_now();
        let (found, ledger_listings, time, height, registered, release_committed) = self
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
                    state.release(&order_key).is_some(),
                )
            })
            .await
            .map_err(follow_status)?;
        self.config.committee.check_ledger(registered.as_ref())?;
        let Some(found) = found else {
            return Err(NodeError::not_ready(format!(
                "order_id: no such order on the ledger (verified up to block {height})"
            )));
        };
        if found.status != market::state::Settlement::Open {
            return Err(NodeError::not_ready(format!(
                "order_id: the order is no longer open on the ledger ({:?})",
                found.status
            )));
        }
        if time >= found.expires_at {
            return Err(NodeError::not_ready(format!(
                "order_id: the order expired at {} (ledger time {time})",
                found.expires_at
            )));
        }
        if found.query_hash != market::hash::query_hash(sql) {
            return Err(NodeError::bad_request(
                "sql: its hash is not the order's query_hash",
            ));
        }
        let purpose = found.purpose;
        let epsilon_micro = found.epsilon_requested_micro;
        let mut on_ledger = Vec::with_capacity(ledger_listings.len());
        for (id, listing) in ledger_listings {
            let listing = listing.ok_or_else(|| {
                NodeError::not_ready(format!("listing {id} of the order is not on the ledger"))
            })?;
            // The order's ε is reserved on every listing until its receipt or refund.
            if listing.epsilon_reserved_micro < epsilon_micro {
                return Err(NodeError::not_ready(format!(
                    "listing {id}: the ledger holds no reservation of the order's ε"
                )));
            }
            on_ledger.push((id, listing));
        }
        let offered = MarketClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
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
                    NodeError::not_ready(format!("listing {listing} of the order is not offered"))
                })?;
            // Noise is calibrated from the manifest's bounds: only the one the listing's owner
            // put on the ledger will do.
            if market::hash::manifest_hash(&offer.manifest) != ledger_listing.schema_hash {
                return Err(NodeError::not_ready(format!(
                    "listing {listing}: the manifest the market served does not hash to the \
                     listing's schema_hash on the ledger"
                )));
            }
            let schema = Schema::from_toml(&offer.manifest, &offer.id).map_err(|error| {
                NodeError::not_ready(format!(
                    "listing {listing}: manifest: {}",
                    bounded_message(&error.to_string())
                ))
            })?;
            let compiled = compile(sql, &schema).map_err(|error| {
                NodeError::bad_request(format!("sql: {}", bounded_message(&error.to_string())))
            })?;
            match &plan {
                Some(first) if first != &compiled => {
                    return Err(NodeError::bad_request(
                        "sql: the ordered listings' schemas give different plans",
                    ))
                }
                _ => plan = Some(compiled),
            }
            min_cohort = min_cohort.max(u64::from(ledger_listing.terms.min_cohort_size));
            names.push(listing.0.clone());
        }
        Ok(OrderFacts {
            plan: plan.ok_or_else(|| NodeError::not_ready("the order names no listing"))?,
            purpose,
            epsilon_micro,
            min_cohort,
            listings: names,
            release_committed,
        })
    }
}

/// Serves a node's Compute service, with health checking, reflection, a request deadline and
/// message-size limits, until `shutdown`.
pub async fn serve(
    node: NodeService,
    listener: TcpListener,
    tls: Option<&TlsIdentity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (_reporter, health, reflection, reflection_v1alpha) =
        health_and_reflection(&[cohortex_proto::v1::compute_server::SERVICE_NAME]).await?;
    tracing::info!(address = ?listener.local_addr().ok(), "serving compute");
    server_builder(tls)?
        .timeout(REQUEST_TIMEOUT)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            ComputeServer::new(node)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
