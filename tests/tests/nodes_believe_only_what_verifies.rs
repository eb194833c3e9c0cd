//! Issue 12: the market's operator (who runs the coordinator and serves the ledger) is hostile.
//! Each test plays that operator over real gRPC on loopback and checks that the nodes act only
//! on what they can verify: the ledger replayed against their pinned key, and the committee
//! pinned in their own configuration.
//!
//! The "lying front" is what a hostile market serves the nodes: the honest Ledger and Market
//! services of the cluster, except for the answers a test makes it forge.

use std::sync::{Arc, Mutex};

use cohortex_cluster::Cluster;
use cohortex_coordinator::market_service::MarketService;
use cohortex_proto::certs::Authority;
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::compute_server::{Compute, ComputeServer};
use cohortex_proto::v1::ledger_server::{Ledger as LedgerRpc, LedgerServer};
use cohortex_proto::v1::market_server::{Market as MarketRpc, MarketServer};
use cohortex_proto::v1::{self as v1, DkgDealRequest, DkgPeer};
use compute_node::protocol::methods;
use compute_node::sealed_share::seal_share_with_rng;
use market::server::auth::signed_request_to;
use market::server::LedgerService;
use market::Purpose;
use testkit::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// What the lying front forges.
#[derive(Default)]
struct Lies {
    /// Served by GetTransaction for this id: (tx id, envelope).
    transaction: Option<(Vec<u8>, Vec<u8>)>,
    /// Served by ListListings in place of every listing's manifest.
    manifest: Option<String>,
    /// GetBlockTransactions flips a byte of the first envelope of every page it serves.
    corrupt_block_transactions: bool,
    /// How many times GetGenesis was served (a replica starting from genesis).
    genesis_served: usize,
}

type SharedLies = Arc<Mutex<Lies>>;

struct LyingLedger {
    honest: LedgerService,
    lies: SharedLies,
}

#[tonic::async_trait]
impl LedgerRpc for LyingLedger {
    async fn submit_transaction(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.honest.submit_transaction(request).await
    }
    async fn get_signed_tree_head(
        &self,
        request: Request<v1::GetSignedTreeHeadRequest>,
    ) -> Result<Response<v1::SignedTreeHead>, Status> {
        self.honest.get_signed_tree_head(request).await
    }
    async fn get_block(
        &self,
        request: Request<v1::GetBlockRequest>,
    ) -> Result<Response<v1::Block>, Status> {
        self.honest.get_block(request).await
    }
    async fn get_transaction(
        &self,
        request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::TransactionRecord>, Status> {
        let forged = self.lies.lock().unwrap().transaction.clone();
        if let Some((id, envelope)) = forged {
            if request.get_ref().tx_id == id {
                return Ok(Response::new(v1::TransactionRecord {
                    envelope,
                    height: 1,
                    leaf_index: 0,
                }));
            }
        }
        self.honest.get_transaction(request).await
    }
    async fn get_inclusion_proof(
        &self,
        request: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::InclusionProof>, Status> {
        self.honest.get_inclusion_proof(request).await
    }
    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::ConsistencyProof>, Status> {
        self.honest.get_consistency_proof(request).await
    }
    async fn get_balance(
        &self,
        request: Request<v1::GetBalanceRequest>,
    ) -> Result<Response<v1::Balance>, Status> {
        self.honest.get_balance(request).await
    }
    async fn get_account(
        &self,
        request: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::AccountRecord>, Status> {
        self.honest.get_account(request).await
    }
    async fn get_genesis(
        &self,
        request: Request<v1::GetGenesisRequest>,
    ) -> Result<Response<v1::GenesisRecord>, Status> {
        self.lies.lock().unwrap().genesis_served += 1;
        self.honest.get_genesis(request).await
    }
    async fn get_block_transactions(
        &self,
        request: Request<v1::GetBlockTransactionsRequest>,
    ) -> Result<Response<v1::BlockTransactions>, Status> {
        let mut page = self.honest.get_block_transactions(request).await?;
        if self.lies.lock().unwrap().corrupt_block_transactions {
            if let Some(envelope) = page.get_mut().envelopes.first_mut() {
                let last = envelope.len() - 1;
                envelope[last] ^= 1;
            }
        }
        Ok(page)
    }
}

struct LyingMarket {
    honest: MarketService,
    lies: SharedLies,
}

#[tonic::async_trait]
impl MarketRpc for LyingMarket {
    async fn list_listings(
        &self,
        request: Request<v1::ListListingsRequest>,
    ) -> Result<Response<v1::ListListingsResponse>, Status> {
        let mut response = self.honest.list_listings(request).await?;
        let forged = self.lies.lock().unwrap().manifest.clone();
        if let Some(manifest) = forged {
            for offer in &mut response.get_mut().listings {
                offer.manifest = manifest.clone();
            }
        }
        Ok(response)
    }
    async fn publish_listing(
        &self,
        request: Request<v1::PublishListingRequest>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.honest.publish_listing(request).await
    }
    async fn update_listing(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.honest.update_listing(request).await
    }
    async fn withdraw_listing(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.honest.withdraw_listing(request).await
    }
    async fn order_query(
        &self,
        request: Request<v1::OrderQueryRequest>,
    ) -> Result<Response<v1::OrderQueryResponse>, Status> {
        self.honest.order_query(request).await
    }
    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::GetOrderResponse>, Status> {
        self.honest.get_order(request).await
    }
    async fn get_receipt(
        &self,
        request: Request<v1::GetReceiptRequest>,
    ) -> Result<Response<v1::ReceiptProof>, Status> {
        self.honest.get_receipt(request).await
    }
    async fn put_evaluation_key(
        &self,
        request: Request<tonic::Streaming<v1::EvaluationKeyChunk>>,
    ) -> Result<Response<v1::PutEvaluationKeyResponse>, Status> {
        self.honest.put_evaluation_key(request).await
    }
    async fn order_feasibility(
        &self,
        request: Request<v1::OrderFeasibilityRequest>,
    ) -> Result<Response<v1::OrderQueryResponse>, Status> {
        self.honest.order_feasibility(request).await
    }
    async fn post_trial(
        &self,
        request: Request<v1::PostTrialRequest>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.honest.post_trial(request).await
    }
    async fn list_trials(
        &self,
        request: Request<v1::ListTrialsRequest>,
    ) -> Result<Response<v1::ListTrialsResponse>, Status> {
        self.honest.list_trials(request).await
    }
    async fn accept_invitation(
        &self,
        request: Request<v1::AcceptInvitationRequest>,
    ) -> Result<Response<v1::AcceptInvitationResponse>, Status> {
        self.honest.accept_invitation(request).await
    }
    type TrialRepliesStream = <MarketService as MarketRpc>::TrialRepliesStream;
    async fn trial_replies(
        &self,
        request: Request<v1::TrialRepliesRequest>,
    ) -> Result<Response<Self::TrialRepliesStream>, Status> {
        self.honest.trial_replies(request).await
    }
}

/// A cluster whose nodes read the ledger and the manifests through a lying front.
async fn start_behind_a_lying_front() -> (tempfile::TempDir, Cluster, SharedLies) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_endpoint = format!("https://{}", front.local_addr().unwrap());
    // The operator runs the front, and holds (or has obtained) a certificate for it from the
    // federation's authority: TLS does not stop a lying operator, only the nodes' checks do.
    let authority = Arc::new(Authority::generate().unwrap());
    let front_tls = authority
        .identity("front", &["127.0.0.1".to_string()])
        .unwrap();
    let (dir, cluster, _truth) = start_with(Setup {
        nodes_read_market_at: Some(front_endpoint),
        authority: Some(authority),
        ..Setup::default()
    })
    .await;
    let lies: SharedLies = Arc::default();
    let ledger = LyingLedger {
        honest: LedgerService::new(Arc::clone(&cluster.ledger)),
        lies: Arc::clone(&lies),
    };
    let market = LyingMarket {
        honest: MarketService::new(Arc::clone(&cluster.coordinator)),
        lies: Arc::clone(&lies),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(front_tls.server())
            .unwrap()
            .add_service(LedgerServer::new(ledger))
            .add_service(MarketServer::new(market))
            .serve_with_incoming(TcpListenerStream::new(front))
            .await
            .unwrap();
    });
    (dir, cluster, lies)
}

async fn compute_client(
    cluster: &Cluster,
    endpoint: &str,
) -> ComputeClient<tonic::transport::Channel> {
    ComputeClient::new(cluster.channel_to(endpoint).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_never_on_the_ledger_is_refused_by_every_node() {
    let (_dir, cluster, lies) = start_behind_a_lying_front().await;
    // A real, funded buyer signs an order that is never appended: the operator holds it back
    // (say, to compute it without escrow, or twice) and serves it to the nodes as if it were.
    let (key, buyer) = buyer_with_key(&cluster).await;
    let listings = listings(&cluster);
    let envelope = signed_order(&cluster, &key, EPSILON);
    let order_id = envelope.id().0.as_bytes().to_vec();
    lies.lock().unwrap().transaction = Some((order_id.clone(), envelope.bytes.clone()));

    for (node, listing) in cluster.nodes.iter().zip(&listings) {
        let mut client = compute_client(&cluster, &node.endpoint).await;
        let refused = client
            .contribute(operator_contribute(&cluster, &order_id, listing))
            .await
            .expect_err("a node computed an order that is not on the ledger");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("no such order on the ledger"),
            "{}",
            refused.message()
        );
        let refused = client
            .add_noise(signed_request_to(
                cluster.operator_key(),
                &node.endpoint,
                methods::ADD_NOISE,
                v1::AddNoiseRequest {
                    order_id: order_id.clone(),
                    sql: SQL.into(),
                    contributions: Vec::new(),
                },
            ))
            .await
            .expect_err("a member drew noise for an order that is not on the ledger");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    // Nothing moved: the buyer still holds every credit.
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    books_balance(&cluster);
    cluster.shutdown();
}

/// `manifest` with the array `key` of column `column` replaced by `value`.
fn with_array(manifest: &str, column: &str, key: &str, value: &str) -> String {
    let name = manifest
        .find(&format!("name = \"{column}\""))
        .expect("column in the manifest");
    let start = name + manifest[name..].find(&format!("{key} = [")).expect("key");
    let end = start + manifest[start..].find(']').expect("end of the array") + 1;
    format!("{}{key} = {value}{}", &manifest[..start], &manifest[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_served_with_narrower_bounds_is_refused() {
    let (_dir, cluster, lies) = start_behind_a_lying_front().await;
    // Narrower declared bounds mean a smaller sensitivity and so less noise: the operator
    // serves the nodes, for every listing, a manifest that says HbA1c lies in [3, 15] instead
    // of the listings' own.
    let listing = cluster.nodes[0].listing.clone();
    let honest = compute_node::Schema::fhir().to_toml();
    let narrowed = with_array(&honest, "hba1c", "bounds", "[3.0, 15.0]");
    let narrowed = with_array(&narrowed, "hba1c", "bins", "[3.0, 9.0, 15.0]");
    assert_ne!(narrowed, honest);
    // A well-formed manifest: only its hash gives the lie away.
    compute_node::Schema::from_toml(&narrowed, &listing).expect("the forged manifest parses");
    lies.lock().unwrap().manifest = Some(narrowed);

    let buyer = buyer(&cluster).await;
    let refused = query_sql(&cluster, &buyer, EPSILON)
        .await
        .expect_err("an order was released with noise calibrated from a forged manifest");
    let message = format!("{refused:#}");
    assert!(
        message.contains("schema_hash") && message.contains(&listing),
        "{message}"
    );
    // The order failed and was refunded: no receipt, the buyer has every credit back.
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    books_balance(&cluster);
    cluster.shutdown();
}

/// A Compute server that records every share delivered to it and does nothing else: the
/// endpoint a hostile coordinator names for seats it wants to collect.
#[derive(Default, Clone)]
struct ShareCollector {
    shares: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[tonic::async_trait]
impl Compute for ShareCollector {
    async fn dkg_deal(
        &self,
        _: Request<v1::DkgDealRequest>,
    ) -> Result<Response<v1::DkgDealResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn deliver_share(
        &self,
        request: Request<v1::DeliverShareRequest>,
    ) -> Result<Response<v1::DeliverShareResponse>, Status> {
        self.shares
            .lock()
            .unwrap()
            .push(request.into_inner().sealed_share);
        Ok(Response::new(v1::DeliverShareResponse {}))
    }
    async fn dkg_receive(
        &self,
        _: Request<v1::DkgReceiveRequest>,
    ) -> Result<Response<v1::DkgReceiveResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn dkg_justify(
        &self,
        _: Request<v1::DkgJustifyRequest>,
    ) -> Result<Response<v1::DkgJustifyResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn dkg_finish(
        &self,
        _: Request<v1::DkgFinishRequest>,
    ) -> Result<Response<v1::DkgFinishResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }

    async fn dkg_confirm(
        &self,
        _: Request<v1::DkgConfirmRequest>,
    ) -> Result<Response<v1::DkgConfirmResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn contribute(
        &self,
        _: Request<v1::ContributeRequest>,
    ) -> Result<Response<v1::ContributeResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn contribution_participants(
        &self,
        _: Request<v1::ContributionParticipantsRequest>,
    ) -> Result<Response<v1::ContributionParticipantsResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn add_noise(
        &self,
        _: Request<v1::AddNoiseRequest>,
    ) -> Result<Response<v1::AddNoiseResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn key_switch(
        &self,
        _: Request<v1::KeySwitchRequest>,
    ) -> Result<Response<v1::KeySwitchResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn cosign_receipt(
        &self,
        _: Request<v1::CosignReceiptRequest>,
    ) -> Result<Response<v1::CosignReceiptResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn put_evaluation_key(
        &self,
        _: Request<tonic::Streaming<v1::EvaluationKeyChunk>>,
    ) -> Result<Response<v1::PutEvaluationKeyResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn feasibility(
        &self,
        _: Request<v1::FeasibilityRequest>,
    ) -> Result<Response<v1::FeasibilityResponse>, Status> {
        Err(Status::unimplemented("collector"))
    }
    async fn accept_invitation(
        &self,
        _: Request<v1::AcceptInvitationRequest>,
    ) -> Result<Response<v1::TrialReply>, Status> {
        Err(Status::unimplemented("collector"))
    }
}

async fn start_collector(cluster: &Cluster) -> (String, ShareCollector) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    // A collector with a valid certificate: the operator can make one if it runs the
    // authority, so only the nodes' pinned committee keeps shares away from it.
    let tls = cluster
        .authority()
        .identity("collector", &["127.0.0.1".to_string()])
        .unwrap();
    let collector = ShareCollector::default();
    let served = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .unwrap()
            .add_service(ComputeServer::new(served))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (endpoint, collector)
}

fn honest_peers(cluster: &Cluster) -> Vec<DkgPeer> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(position, node)| DkgPeer {
            member: position as u32 + 1,
            endpoint: node.endpoint.clone(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_naming_itself_twice_in_the_committee_gets_nothing() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let (evil, collector) = start_collector(&cluster).await;
    // The operator asks member 1 to deal a 2-of-3 key in which its own endpoint holds seats 2
    // and 3: with two shares of every dealer it could decrypt alone.
    let mut peers = honest_peers(&cluster);
    peers[1].endpoint = evil.clone();
    peers[2].endpoint = evil.clone();
    for node in &cluster.nodes {
        let refused = compute_client(&cluster, &node.endpoint)
            .await
            .dkg_deal(signed_request_to(
                cluster.operator_key(),
                &node.endpoint,
                methods::DKG_DEAL,
                DkgDealRequest {
                    session_id: b"hostile-session".to_vec(),
                    threshold: 2,
                    peers: peers.clone(),
                },
            ))
            .await
            .expect_err("a node dealt to a committee the coordinator chose");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert!(
        collector.shares.lock().unwrap().is_empty(),
        "the coordinator's endpoint received key shares"
    );
    // The pinned committee still works: an honest order is released as before.
    let buyer = buyer(&cluster).await;
    query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_one_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    for node in &cluster.nodes {
        let refused = compute_client(&cluster, &node.endpoint)
            .await
            .dkg_deal(signed_request_to(
                cluster.operator_key(),
                &node.endpoint,
                methods::DKG_DEAL,
                DkgDealRequest {
                    session_id: b"threshold-one".to_vec(),
                    threshold: 1,
                    peers: honest_peers(&cluster),
                },
            ))
            .await
            .expect_err("a node dealt a key any one member could use alone");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("threshold"), "{refused:?}");
    }
    // Nor can a node be configured with t = 1.
    let seats = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(position, node)| compute_node::protocol::CommitteeSeat {
            member: zk::MemberIndex::new(position as u16 + 1).unwrap(),
            account: node.account,
            endpoint: node.endpoint.clone(),
        })
        .collect::<Vec<_>>();
    assert_eq!(
        compute_node::protocol::PinnedCommittee::new(1, seats.clone()).unwrap_err(),
        compute_node::protocol::CommitteeError::ThresholdTooLow(1)
    );
    compute_node::protocol::PinnedCommittee::new(2, seats).unwrap();
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_switched_to_a_key_other_than_the_buyers_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // The operator wants to read the buyer's release itself: it asks the members to
    // re-encrypt the values to its own key instead of the one the buyer signed into the order.
    let operators = zk::KeyPair::generate_with_rng(&mut rand::rngs::OsRng);
    cluster
        .coordinator
        .redirect_values_to(operators.public)
        .unwrap();
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, v1::OrderState::Failed as i32, "{status:?}");
    assert!(
        status
            .message
            .contains("not the result key the buyer signed into the order"),
        "{}",
        status.message
    );
    assert!(status.result.is_empty(), "nothing was released");
    // The buyer's credits come back; the ε of the committed release stays spent, on the
    // participants its nodes attested at the commitment and no one else.
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    {
        let ledger = cluster.coordinator.ledger().lock().unwrap();
        let order = market::OrderId(order);
        assert!(ledger.state().release(&order).is_some());
        assert!(ledger.state().attested_release(&order).is_some());
    }
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_dealt_in_another_members_name_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // Member 2 turned hostile: it delivers to member 1 a share claiming to come from member 3,
    // to make member 1 blame (or count) member 3 for a share member 3 never dealt.
    let hostile = cluster.nodes[1].signing_key();
    let session = b"forged-dealer".to_vec();
    let parameters = zk::dkg::DkgParameters::new(2, 3, &session).unwrap();
    let (_, _, shares) = zk::dkg::deal_with_rng(
        &parameters,
        zk::MemberIndex::new(2).unwrap(),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let mut for_member_1 = shares
        .into_iter()
        .find(|share| share.recipient.get() == 1)
        .unwrap();
    // Sealed, as members deliver shares, to member 1's pinned account key.
    let member_1_key = cluster.nodes[0].account.verifying_key().unwrap();
    let deliver = |share: &zk::dkg::messages::DealerShare| {
        signed_request_to(
            hostile,
            &cluster.nodes[0].endpoint,
            methods::DELIVER_SHARE,
            v1::DeliverShareRequest {
                session_id: session.clone(),
                sealed_share: seal_share_with_rng(
                    share,
                    &session,
                    &member_1_key,
                    &mut rand::rngs::OsRng,
                )
                .unwrap(),
            },
        )
    };
    let mut member_1 = compute_client(&cluster, &cluster.nodes[0].endpoint).await;
    for_member_1.dealer = zk::MemberIndex::new(3).unwrap();
    let refused = member_1
        .deliver_share(deliver(&for_member_1))
        .await
        .expect_err("a member delivered a share in another member's name");
    // Sealed as member 3's, it opens only as a share from seat 3, and the caller holds seat 2.
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("does not open") && refused.message().contains("seats"),
        "{refused:?}"
    );
    // Its own share is taken once, and a second one for the same session is refused.
    for_member_1.dealer = zk::MemberIndex::new(2).unwrap();
    member_1
        .deliver_share(deliver(&for_member_1))
        .await
        .unwrap();
    let again = member_1
        .deliver_share(deliver(&for_member_1))
        .await
        .expect_err("a dealer's share was taken twice in one session");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_not_sealed_to_the_recipients_key_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let member_2 = cluster.nodes[1].signing_key();
    let session = b"unsealed".to_vec();
    let parameters = zk::dkg::DkgParameters::new(2, 3, &session).unwrap();
    let (_, _, shares) = zk::dkg::deal_with_rng(
        &parameters,
        zk::MemberIndex::new(2).unwrap(),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let for_member_1 = shares
        .into_iter()
        .find(|share| share.recipient.get() == 1)
        .unwrap();
    let mut member_1 = compute_client(&cluster, &cluster.nodes[0].endpoint).await;
    let deliver = |sealed_share: Vec<u8>| {
        signed_request_to(
            member_2,
            &cluster.nodes[0].endpoint,
            methods::DELIVER_SHARE,
            v1::DeliverShareRequest {
                session_id: session.clone(),
                sealed_share,
            },
        )
    };
    // In the clear, as anyone on the link could read it.
    let refused = member_1
        .deliver_share(deliver(zk::Wire::to_bytes(&for_member_1)))
        .await
        .expect_err("a member took a share sent in the clear");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // Sealed to another member's key (member 3's), as a mix-up or a relay would.
    let member_3_key = cluster.nodes[2].account.verifying_key().unwrap();
    let sealed_elsewhere = seal_share_with_rng(
        &for_member_1,
        &session,
        &member_3_key,
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let refused = member_1
        .deliver_share(deliver(sealed_elsewhere))
        .await
        .expect_err("a member took a share sealed to another member's key");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("does not open"), "{refused:?}");
    // Control: sealed to member 1's own key, it is taken.
    let member_1_key = cluster.nodes[0].account.verifying_key().unwrap();
    let sealed = seal_share_with_rng(
        &for_member_1,
        &session,
        &member_1_key,
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    member_1.deliver_share(deliver(sealed)).await.unwrap();
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_one_node_refused_by_another() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // The coordinator's signed request for member 1, which member 1 (turned hostile) replays
    // to member 2 within the clock window: the signature names member 1's endpoint.
    let for_member_1 = || {
        signed_request_to(
            cluster.operator_key(),
            &cluster.nodes[0].endpoint,
            methods::ADD_NOISE,
            v1::AddNoiseRequest {
                order_id: vec![7; 32],
                sql: SQL.into(),
                contributions: Vec::new(),
            },
        )
    };
    let refused = compute_client(&cluster, &cluster.nodes[1].endpoint)
        .await
        .add_noise(for_member_1())
        .await
        .expect_err("a node took a request signed for another node");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("names server"), "{refused:?}");
    // Member 1 itself takes it (and refuses the order on its own merits).
    let answered = compute_client(&cluster, &cluster.nodes[0].endpoint)
        .await
        .add_noise(for_member_1())
        .await
        .expect_err("there is no such order");
    assert_ne!(answered.code(), Code::PermissionDenied, "{answered:?}");
    assert_ne!(answered.code(), Code::Unauthenticated, "{answered:?}");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_resumes_from_its_last_verified_block() {
    let (_dir, cluster, lies) = start_behind_a_lying_front().await;
    let unknown_order = vec![0x33; 32];
    let started = every_node_caught_up(&cluster, &lies, &unknown_order).await;

    // The market tampers with every block it serves from now on; a new block is appended.
    lies.lock().unwrap().corrupt_block_transactions = true;
    let _buyer = buyer(&cluster).await;
    let refused = ask_node(&cluster, 0, &unknown_order).await;
    assert!(
        refused.message().contains("does not verify"),
        "the node acted on a tampered block: {refused:?}"
    );

    // The market serves honestly again: the node goes on from the last block it verified.
    lies.lock().unwrap().corrupt_block_transactions = false;
    node_answers_without_genesis(&cluster, &lies, &unknown_order, started).await;
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_resumes_its_replica_from_disk() {
    let (_dir, mut cluster, lies) = start_behind_a_lying_front().await;
    let unknown_order = vec![0x34; 32];
    let started = every_node_caught_up(&cluster, &lies, &unknown_order).await;

    // New blocks, then node 1 restarts: it reopens its replica, checked against its last
    // signed head, and fetches only the blocks after it.
    let _buyer = buyer(&cluster).await;
    cluster.restart_node(0).await.unwrap();
    node_answers_without_genesis(&cluster, &lies, &unknown_order, started).await;
    cluster.shutdown();
}

/// The operator asks node `index` to contribute to `order`.
async fn ask_node(cluster: &Cluster, index: usize, order: &[u8]) -> Status {
    let node = &cluster.nodes[index];
    compute_client(cluster, &node.endpoint)
        .await
        .contribute(operator_contribute(cluster, order, &node.listing))
        .await
        .expect_err("no such order")
}

/// Asks every node about `order` (unknown), so that each replica is up to date; checks that
/// each started from genesis once, and returns how many genesis reads the front served.
async fn every_node_caught_up(cluster: &Cluster, lies: &SharedLies, order: &[u8]) -> usize {
    for index in 0..cluster.nodes.len() {
        let caught_up = ask_node(cluster, index, order).await;
        assert!(
            caught_up.message().contains("no such order on the ledger"),
            "{caught_up:?}"
        );
    }
    let started = lies.lock().unwrap().genesis_served;
    assert_eq!(started, cluster.nodes.len());
    started
}

/// Node 1 answers about `order` from a replica brought up to date, and the front served no
/// genesis beyond the `started` reads: it went on from its last verified block.
async fn node_answers_without_genesis(
    cluster: &Cluster,
    lies: &SharedLies,
    order: &[u8],
    started: usize,
) {
    let resumed = ask_node(cluster, 0, order).await;
    assert!(
        resumed.message().contains("no such order on the ledger"),
        "{resumed:?}"
    );
    assert_eq!(
        lies.lock().unwrap().genesis_served,
        started,
        "node 1 replayed the ledger from genesis"
    );
}
