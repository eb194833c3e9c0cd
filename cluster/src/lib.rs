//! An in-process cluster on loopback: the market process (ledger, consent, market and the
//! coordinator) and one process-like task per compute node, each a real gRPC server on an
//! ephemeral port. `cohortex demo`, `cohortex local` and the end-to-end tests run on it.
//!
//! It is its own crate because it is the one place that links every party: the coordinator
//! links no vault (polars) and a node no ledger storage (SQLite), but a whole federation in one
//! process needs both.
//!
//! Start-up:
//! 1. a ledger with a genesis issuer; the issuer admits the coordinator (committee member),
//!    a donation fund and each node (compute node), and registers the nodes as the key
//!    committee, in one bootstrap block;
//! 2. the market and the nodes start serving;
//! 3. each node publishes its listing through `Market.PublishListing`;
//! 4. patients register and consent: each transaction is signed with the patient's own key
//!    and verified by the ledger; they are appended in blocks of a few thousand (the
//!    operator's bulk onboarding path) rather than one RPC each;
//! 5. the coordinator runs the key ceremony across the nodes over gRPC (t of n).

#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use cohortex_proto::certs::Authority;
use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{PublishListingRequest, SignedTransaction};
use compute_node::follower::PinnedLedger;
use compute_node::protocol::{CommitteeSeat, PinnedCommittee};
use compute_node::server::{Fault, NodeConfig, NodeService};
use compute_node::Vault;
use ed25519_dalek::{SigningKey, VerifyingKey};
use market::{
    AccountId, Action, Compensation, Genesis, Hash32, InProcessSequencer, Ledger, ListingId,
    ListingTerms, PayoutChoice, Purpose, Role,
};
use rand::rngs::OsRng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use zk::MemberIndex;

use cohortex_client::Buyer;
use cohortex_coordinator::serve::serve_market;
use cohortex_coordinator::Coordinator;
use compute_node::server::serve as serve_node;
use market::hash::manifest_hash;

/// Transactions appended per block during bulk onboarding. Each block copies and hashes the
/// whole state once on the market and on every replica, so fewer, larger blocks onboard a
/// large population faster (the ledger takes up to 100,000 per block).
pub const ONBOARDING_BLOCK: usize = 25_000;

/// Where a consenting patient's share goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payout {
    /// To the patient.
    ToPatient,
    /// Donated to the cluster's fund.
    Donate,
}

/// A patient of a node's vault: their key and their consent, if any.
pub struct PatientEnrolment {
    /// The patient's key (the vault row's `patient_key` is its public half).
    pub key: SigningKey,
    /// `None` if the patient does not consent.
    pub consent: Option<Payout>,
    /// The personal privacy limit set in the consent, micro-ε (`None`: only the listing's).
    pub epsilon_limit_micro: Option<u64>,
}

/// One node to start.
pub struct NodeSetup {
    /// The listing id.
    pub listing: String,
    /// The vault.
    pub vault: Vault,
    /// The patients to enrol.
    pub patients: Vec<PatientEnrolment>,
    /// Credits per query.
    pub price_per_query: u64,
    /// Whether the listing donates every share to the fund.
    pub donation: bool,
    /// Smallest cohort a receipt may name.
    pub min_cohort_size: u32,
    /// Deliberate misbehaviour (tests).
    pub fault: Option<Fault>,
}

impl NodeSetup {
    /// A node whose listing pays its participants `price_per_query`, with a minimum cohort of
    /// one and no fault.
    pub fn paid(
        listing: String,
        vault: Vault,
        patients: Vec<PatientEnrolment>,
        price_per_query: u64,
    ) -> Self {
        Self {
            listing,
            vault,
            patients,
            price_per_query,
            donation: false,
            min_cohort_size: 1,
            fault: None,
        }
    }
}

/// Cluster-wide options.
pub struct ClusterOptions {
    /// The purpose every listing allows and every consent names.
    pub purpose: Purpose,
    /// Committee threshold t (n is the number of nodes).
    pub threshold: u16,
    /// Each listing's total ε budget, in micro-ε.
    pub epsilon_budget_micro: u64,
    /// Each listing's per-order ε cap, in micro-ε (at most the budget).
    pub max_epsilon_per_order_micro: u64,
    /// Further purposes every listing allows (patients consent to `purpose` only).
    pub extra_purposes: Vec<Purpose>,
    /// Where the nodes read the ledger and the manifests (default: the market). Adversarial
    /// tests put a lying front here, to check that nodes believe only what verifies.
    pub nodes_read_market_at: Option<String>,
    /// The federation's TLS authority: every link in the cluster is mutual TLS with
    /// certificates it issues (default: a fresh authority). Tests that stand up their own
    /// servers beside the cluster pass theirs.
    pub authority: Option<Arc<Authority>>,
    /// The threshold the operator registers the key committee with on the ledger (default:
    /// `threshold`, the one every node pins). Adversarial tests register another, to check
    /// that nodes refuse a ledger committee other than their own.
    pub ledger_committee_threshold: Option<u16>,
    /// Whether the coordinator runs the committee's key ceremony once the nodes are up (every
    /// real use). Tests of the ceremony itself leave it off and relay the rounds by hand.
    pub key_ceremony: bool,
}

/// The host names every in-process certificate is valid for.
fn loopback_hosts() -> Vec<String> {
    vec!["127.0.0.1".to_string(), "localhost".to_string()]
}

/// A started node.
pub struct RunningNode {
    /// Its listing.
    pub listing: String,
    /// Its endpoint.
    pub endpoint: String,
    /// Its account.
    pub account: AccountId,
    key: SigningKey,
    stop: Option<oneshot::Sender<()>>,
    launch: NodeLaunch,
}

/// What it takes to start a node's service (again, after a restart): its vault and its
/// configuration. Each node keeps its key share in a file, as a deployed node does, so that a
/// restarted node rejoins the committee.
struct NodeLaunch {
    vault: Arc<Vault>,
    listing: String,
    member: MemberIndex,
    coordinator: AccountId,
    committee: PinnedCommittee,
    ledger: PinnedLedger,
    market_endpoint: String,
    tls: TlsIdentity,
    key_share_file: PathBuf,
    fault: Option<Fault>,
}

impl NodeLaunch {
    fn config(&self, key: &SigningKey) -> NodeConfig {
        NodeConfig {
            listing: self.listing.clone(),
            account: key.clone(),
            member: self.member,
            coordinator: self.coordinator,
            committee: self.committee.clone(),
            ledger: self.ledger.clone(),
            market_endpoint: self.market_endpoint.clone(),
            tls: Some(self.tls.clone()),
            key_share_file: Some(self.key_share_file.clone()),
            fault: self.fault,
        }
    }
}

/// Serves `service` on `listener` until the returned sender fires (or is dropped).
fn spawn_node(
    service: NodeService,
    listener: TcpListener,
    tls: TlsIdentity,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(error) = serve_node(service, listener, Some(&tls), async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::error!(%error, "node server stopped");
        }
    });
    stop
}

impl RunningNode {
    /// The node's account key. Adversarial tests play a member turned hostile with it.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// A running cluster.
pub struct Cluster {
    /// Directory holding the ledger database.
    pub dir: PathBuf,
    /// The market's endpoint.
    pub market_endpoint: String,
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// The key that signs tree heads.
    pub ledger_key: VerifyingKey,
    /// The chain id.
    pub chain_id: Hash32,
    /// The donation fund.
    pub fund: AccountId,
    /// The nodes.
    pub nodes: Vec<RunningNode>,
    /// The shared ledger the market serves.
    pub ledger: Arc<Mutex<Ledger>>,
    issuer: SigningKey,
    issuer_nonce: Mutex<u64>,
    coordinator_key: SigningKey,
    market_stop: Option<oneshot::Sender<()>>,
    authority: Arc<Authority>,
    client_tls: TlsIdentity,
}

use market::tx::sign_action as sign;

/// Appends `txs` directly, in blocks, failing on the first refusal.
async fn append_in_blocks(
    ledger: &market::server::SharedLedger,
    txs: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let ledger = Arc::clone(ledger);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut ledger = ledger.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
        for block in txs.chunks(ONBOARDING_BLOCK) {
            let outcome = ledger
                .append(block.to_vec())
                .context("appending onboarding block")?;
            if let Some(refusal) = outcome.refused.first() {
                bail!(
                    "onboarding transaction {} refused: {}",
                    refusal.index,
                    refusal.error
                );
            }
        }
        Ok(())
    })
    .await
    .context("onboarding task")?
}

impl Cluster {
    /// Starts a cluster in `dir` (which must not hold a ledger yet). `progress` hears each
    /// start-up step.
    pub async fn start(
        dir: &Path,
        setups: Vec<NodeSetup>,
        options: &ClusterOptions,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        if setups.is_empty() {
            bail!("a cluster needs at least one node");
        }
        if let Some(faulty) = setups.iter().find(|setup| setup.fault.is_some()) {
            if !compute_node::server::FAULTS_TAKE_EFFECT {
                bail!(
                    "node {} is set up with a fault, but compute-node was built without the \
                     `fault-injection` feature, so it would behave honestly",
                    faulty.listing
                );
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ledger_signing = SigningKey::generate(&mut OsRng);
        let issuer = SigningKey::generate(&mut OsRng);
        let coordinator_key = SigningKey::generate(&mut OsRng);
        let fund = SigningKey::generate(&mut OsRng);
        let node_keys: Vec<SigningKey> = setups
            .iter()
            .map(|_| SigningKey::generate(&mut OsRng))
            .collect();

        progress("creating the ledger");
        let genesis = Genesis {
            name: "cohortex-local".into(),
            ledger_key: ledger_signing.verifying_key().to_bytes(),
            accounts: vec![(AccountId::of(&issuer), Role::Issuer)],
        };
        let ledger_path = dir.join("ledger.db");
        let ledger = Ledger::create(
            &ledger_path,
            genesis,
            InProcessSequencer::new(ledger_signing.clone()),
        )
        .with_context(|| format!("creating the ledger {}", ledger_path.display()))?;
        let chain_id = ledger.chain_id();
        let ledger = Arc::new(Mutex::new(ledger));
        let mut bootstrap = vec![
            (AccountId::of(&coordinator_key), Role::CommitteeMember),
            (AccountId::of(&fund), Role::Fund),
        ];
        bootstrap.extend(
            node_keys
                .iter()
                .map(|key| (AccountId::of(key), Role::ComputeNode)),
        );
        let mut bootstrap_txs = Vec::new();
        for (nonce, (account, role)) in bootstrap.into_iter().enumerate() {
            bootstrap_txs.push(sign(
                &issuer,
                chain_id,
                nonce as u64,
                Action::RegisterAccount { account, role },
            )?);
        }
        // The key committee, in member order, on the ledger: receipts need t co-signatures of
        // its members, and each node checks it is the committee pinned in its configuration.
        bootstrap_txs.push(sign(
            &issuer,
            chain_id,
            bootstrap_txs.len() as u64,
            Action::RegisterCommittee {
                threshold: options
                    .ledger_committee_threshold
                    .unwrap_or(options.threshold),
                members: node_keys.iter().map(AccountId::of).collect(),
            },
        )?);
        let issuer_nonce = bootstrap_txs.len() as u64;
        append_in_blocks(&ledger, bootstrap_txs).await?;

        let authority = match &options.authority {
            Some(authority) => Arc::clone(authority),
            None => Arc::new(Authority::generate().context("making the TLS authority")?),
        };
        let identity = |name: &str| {
            authority
                .identity(name, &loopback_hosts())
                .with_context(|| format!("issuing {name}'s TLS certificate"))
        };
        // The market's and each node's certificates are bound to the account that signs their
        // requests, so a stolen certificate cannot carry another account's requests.
        let bound_identity = |name: &str, account: AccountId| {
            authority
                .identity_for_account(name, &loopback_hosts(), &account.0)
                .with_context(|| format!("issuing {name}'s TLS certificate"))
        };
        let market_tls = bound_identity("market", AccountId::of(&coordinator_key))?;
        let client_tls = identity("client")?;
        // The market keeps its state (listings, committee, completed orders) on disk, as the
        // deployed market does, so that a test can start another on the same ledger.
        let coordinator = Arc::new(
            Coordinator::with_state_file(
                Arc::clone(&ledger),
                coordinator_key.clone(),
                dir.join("coordinator.json"),
            )?
            .with_tls(Some(market_tls.clone())),
        );
        let market_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the market port")?;
        let market_endpoint = format!("https://{}", market_listener.local_addr()?);
        let (market_stop, market_stopped) = oneshot::channel::<()>();
        {
            let coordinator = Arc::clone(&coordinator);
            let market_tls = market_tls.clone();
            tokio::spawn(async move {
                if let Err(error) =
                    serve_market(coordinator, market_listener, Some(&market_tls), async {
                        let _ = market_stopped.await;
                    })
                    .await
                {
                    tracing::error!(%error, "market server stopped");
                }
            });
        }

        progress("starting the compute nodes");
        // Every node's port is bound first, so that each node's configuration can pin the
        // whole committee (accounts and endpoints) before any of them serves.
        let mut listeners = Vec::with_capacity(setups.len());
        let mut seats = Vec::with_capacity(setups.len());
        for (position, node_key) in node_keys.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a node port")?;
            let endpoint = format!("https://{}", listener.local_addr()?);
            let member =
                MemberIndex::new(position as u16 + 1).ok_or_else(|| anyhow!("member index"))?;
            seats.push(CommitteeSeat {
                member,
                account: AccountId::of(node_key),
                endpoint,
            });
            listeners.push(listener);
        }
        let committee = PinnedCommittee::new(options.threshold, seats)
            .map_err(|error| anyhow!("committee: {error}"))?;
        let pinned_ledger = PinnedLedger {
            chain_id,
            ledger_key: ledger_signing.verifying_key(),
        };
        let nodes_read_market_at = options
            .nodes_read_market_at
            .clone()
            .unwrap_or_else(|| market_endpoint.clone());
        let mut nodes = Vec::new();
        let mut followers = Vec::new();
        let mut members = Vec::new();
        let mut patient_txs_register = Vec::new();
        let mut patient_txs_consent = Vec::new();
        for ((setup, node_key), (listener, seat)) in setups
            .into_iter()
            .zip(&node_keys)
            .zip(listeners.into_iter().zip(committee.seats().to_vec()))
        {
            let member = seat.member;
            let endpoint = seat.endpoint.clone();
            let manifest = setup.vault.schema().to_toml();
            let vault = Arc::new(setup.vault);
            let node_tls =
                bound_identity(&format!("node-{}", member.get()), AccountId::of(node_key))?;
            let launch = NodeLaunch {
                vault: Arc::clone(&vault),
                listing: setup.listing.clone(),
                member,
                coordinator: coordinator.account(),
                committee: committee.clone(),
                ledger: pinned_ledger.clone(),
                market_endpoint: nodes_read_market_at.clone(),
                tls: node_tls.clone(),
                key_share_file: dir.join(format!("node-{}.key-share", member.get())),
                fault: setup.fault,
            };
            let service = NodeService::new(Arc::clone(&vault), launch.config(node_key))
                .map_err(|error| anyhow!("node {}: {error}", setup.listing))?;
            followers.push(service.follower());
            let stop = spawn_node(service, listener, node_tls.clone());

            // The node publishes its listing through the Market service.
            let terms = ListingTerms {
                price_per_query: setup.price_per_query,
                allowed_purposes: std::iter::once(options.purpose)
                    .chain(options.extra_purposes.iter().copied())
                    .collect(),
                min_cohort_size: setup.min_cohort_size,
                epsilon_budget_micro: options.epsilon_budget_micro,
                max_epsilon_per_order_micro: options.max_epsilon_per_order_micro,
                compensation: if setup.donation {
                    Compensation::Donation {
                        fund: AccountId::of(&fund),
                    }
                } else {
                    Compensation::Payment
                },
            };
            let envelope = sign(
                node_key,
                chain_id,
                0,
                Action::PublishListing {
                    listing: ListingId::new(setup.listing.clone()),
                    schema_hash: manifest_hash(&manifest),
                    terms,
                },
            )?;
            connect_market(&market_endpoint, &node_tls)
                .await?
                .publish_listing(PublishListingRequest {
                    transaction: Some(SignedTransaction { envelope }),
                    manifest,
                    node_endpoint: endpoint.clone(),
                })
                .await
                .with_context(|| format!("publishing listing {}", setup.listing))?;

            for patient in &setup.patients {
                let account = AccountId::of(&patient.key);
                // A consenting patient's consent registers them (one signed transaction); one
                // who does not consent only registers.
                let Some(payout) = patient.consent else {
                    patient_txs_register.push(sign(
                        &patient.key,
                        chain_id,
                        0,
                        Action::RegisterAccount {
                            account,
                            role: Role::Patient,
                        },
                    )?);
                    continue;
                };
                patient_txs_consent.push(sign(
                    &patient.key,
                    chain_id,
                    0,
                    Action::GrantConsent {
                        patient: account,
                        listing: ListingId::new(setup.listing.clone()),
                        purpose: options.purpose,
                        expires_at: None,
                        payout: match payout {
                            Payout::ToPatient => PayoutChoice::ToPatient,
                            Payout::Donate => PayoutChoice::DonateTo {
                                fund: AccountId::of(&fund),
                            },
                        },
                        epsilon_limit_micro: patient.epsilon_limit_micro,
                    },
                )?);
            }
            members.push((member, endpoint.clone()));
            nodes.push(RunningNode {
                listing: setup.listing,
                endpoint,
                account: AccountId::of(node_key),
                key: node_key.clone(),
                stop: Some(stop),
                launch,
            });
        }

        progress("enrolling patients and their consents");
        append_in_blocks(&ledger, patient_txs_register).await?;
        append_in_blocks(&ledger, patient_txs_consent).await?;

        if options.key_ceremony {
            progress("running the committee's key ceremony");
            coordinator
                .run_key_ceremony(members, options.threshold)
                .await
                .map_err(|status| anyhow!("key ceremony: {}", status.message()))?;
        }

        if options.nodes_read_market_at.is_none() {
            // Each node replays and verifies the whole ledger before it believes anything in
            // it; let them catch up now rather than during the first order.
            progress("the nodes replay and verify the ledger");
            let channel = link(&market_endpoint, Some(&market_tls))?.connect_lazy();
            // The nodes' background followers replay concurrently; wait for each in turn.
            for follower in &followers {
                let result = follower
                    .sync_and_read(channel.clone(), |machine| machine.height())
                    .await;
                result.map_err(|error| anyhow!("a node's ledger replica: {error}"))?;
            }
        }

        Ok(Self {
            dir: dir.to_path_buf(),
            market_endpoint,
            coordinator,
            ledger_key: ledger_signing.verifying_key(),
            chain_id,
            fund: AccountId::of(&fund),
            nodes,
            ledger,
            issuer,
            issuer_nonce: Mutex::new(issuer_nonce),
            coordinator_key,
            market_stop: Some(market_stop),
            authority,
            client_tls,
        })
    }

    /// The ledger database.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.db")
    }

    /// What the market publishes about itself (`public.toml`).
    pub fn public(&self) -> cohortex_client::MarketPublic {
        cohortex_client::MarketPublic {
            endpoint: self.market_endpoint.clone(),
            chain_id: self.chain_id,
            ledger_key: self.ledger_key,
            coordinator: self.coordinator.account(),
            fund: self.fund,
            issuer: AccountId::of(&self.issuer),
        }
    }

    /// A new buyer: registers itself and receives `credits` from the issuer, over gRPC.
    pub async fn new_buyer(&self, credits: u64) -> anyhow::Result<Buyer> {
        let key = SigningKey::generate(&mut OsRng);
        let buyer = Buyer::new(key, self.chain_id, self.market_endpoint.clone(), 0)
            .with_tls(Some(self.client_tls.clone()));
        buyer.register().await?;
        self.deposit(buyer.account(), credits).await?;
        Ok(buyer)
    }

    /// The issuer credits `amount` to `to`, over gRPC.
    pub async fn deposit(&self, to: AccountId, amount: u64) -> anyhow::Result<()> {
        let envelope = {
            let mut nonce = self
                .issuer_nonce
                .lock()
                .map_err(|_| anyhow!("issuer nonce lock"))?;
            let envelope = sign(
                &self.issuer,
                self.chain_id,
                *nonce,
                Action::Deposit { to, amount },
            )?;
            *nonce += 1;
            envelope
        };
        LedgerClient::new(self.market_channel().await?)
            .submit_transaction(SignedTransaction { envelope })
            .await
            .context("deposit")?;
        Ok(())
    }

    /// A channel to the market, presenting the cluster's client certificate.
    pub async fn market_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        self.channel_to(&self.market_endpoint).await
    }

    /// A channel to `endpoint` (the market, a node, or a server a test stands up with a
    /// certificate from [`Cluster::authority`]), presenting the cluster's client certificate.
    pub async fn channel_to(&self, endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
        link(endpoint, Some(&self.client_tls))?
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))
    }

    /// The TLS identity the cluster's buyers and patients present.
    pub fn client_tls(&self) -> &TlsIdentity {
        &self.client_tls
    }

    /// The cluster's TLS authority: tests issue certificates for servers they stand up beside
    /// the cluster, and for parties it should refuse.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The market operator's coordinator key. Adversarial tests play a hostile operator with
    /// it: whatever it signs, the nodes check against their own pins and replica.
    pub fn operator_key(&self) -> &SigningKey {
        &self.coordinator_key
    }

    /// Stops node `index` (it stops answering, as if its machine went down).
    pub fn stop_node(&mut self, index: usize) {
        if let Some(stop) = self.nodes.get_mut(index).and_then(|node| node.stop.take()) {
            let _ = stop.send(());
        }
    }

    /// Stops node `index` and starts it again on the same endpoint, from its configuration
    /// and stored key share: what survives is what a real node keeps on disk, and nothing it
    /// held in memory.
    pub async fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.stop_node(index);
        let node = self
            .nodes
            .get_mut(index)
            .ok_or_else(|| anyhow!("no node {index}"))?;
        let address = node.endpoint.trim_start_matches("https://").to_string();
        // The stopped server lets go of its port once its connections have closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let listener = loop {
            match TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(error) if std::time::Instant::now() < deadline => {
                    tracing::debug!(%error, %address, "waiting for the node's port");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("binding {address} again"))
                }
            }
        };
        let service = NodeService::new(
            Arc::clone(&node.launch.vault),
            node.launch.config(&node.key),
        )
        .map_err(|error| anyhow!("node {}: {error}", node.listing))?;
        node.stop = Some(spawn_node(service, listener, node.launch.tls.clone()));
        Ok(())
    }

    /// Stops every server.
    pub fn shutdown(mut self) {
        for index in 0..self.nodes.len() {
            self.stop_node(index);
        }
        if let Some(stop) = self.market_stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn connect_market(
    endpoint: &str,
    tls: &TlsIdentity,
) -> anyhow::Result<MarketClient<tonic::transport::Channel>> {
    Ok(MarketClient::new(
        link(endpoint, Some(tls))?
            .connect()
            .await
            .with_context(|| format!("connecting to the market at {endpoint}"))?,
    ))
}
