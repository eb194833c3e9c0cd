//! The key ceremony against a hostile relay, over real gRPC and mutual TLS on loopback.
//!
//! The coordinator relays every public DKG message, and the market operator runs it. Each
//! test plays that operator with the coordinator's own key (and, where the attack needs one, a
//! member turned hostile with that member's key) against nodes that hold no key yet, and
//! checks that the nodes refuse: messages not signed by the member they come from, a
//! justification the relay made up, members shown different broadcasts, and a second
//! ceremony while a key is live.

use cohortex_cluster::Cluster;
use cohortex_proto::v1::compute_client::ComputeClient;
use cohortex_proto::v1::{
    DkgConfirmRequest, DkgDealRequest, DkgFinishRequest, DkgFinishResponse, DkgJustifications,
    DkgJustifyRequest, DkgPeer, DkgReceiveRequest, SignedDkgMessage,
};
use compute_node::ceremony::{round_digest, sign_statement, CeremonyRound, Statement};
use compute_node::protocol::methods;
use ed25519_dalek::SigningKey;
use market::server::auth::signed_request_to;
use prost::Message;
use testkit::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use zk::dkg::messages::Justification;
use zk::{MemberIndex, Wire};

/// The operator's relay: it calls each node's ceremony rounds with the coordinator's key, and
/// shows each node whatever it likes.
struct Relay {
    clients: Vec<ComputeClient<Channel>>,
    endpoints: Vec<String>,
    key: SigningKey,
    session: Vec<u8>,
    peers: Vec<DkgPeer>,
}

impl Relay {
    async fn new(cluster: &Cluster, session: &[u8]) -> Self {
        let mut clients = Vec::new();
        for node in &cluster.nodes {
            clients.push(ComputeClient::new(
                cluster.channel_to(&node.endpoint).await.unwrap(),
            ));
        }
        let peers = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(position, node)| DkgPeer {
                member: position as u32 + 1,
                endpoint: node.endpoint.clone(),
            })
            .collect();
        Self {
            clients,
            endpoints: cluster
                .nodes
                .iter()
                .map(|node| node.endpoint.clone())
                .collect(),
            key: cluster.operator_key().clone(),
            session: session.to_vec(),
            peers,
        }
    }

    async fn deal(&mut self, node: usize) -> Result<SignedDkgMessage, Status> {
        let request = DkgDealRequest {
            session_id: self.session.clone(),
            threshold: 2,
            peers: self.peers.clone(),
        };
        let response = self.clients[node]
            .dkg_deal(signed_request_to(
                &self.key,
                &self.endpoints[node],
                methods::DKG_DEAL,
                request,
            ))
            .await?;
        Ok(response.into_inner().broadcast.unwrap())
    }

    async fn deal_all(&mut self) -> Vec<SignedDkgMessage> {
        let mut broadcasts = Vec::new();
        for node in 0..self.clients.len() {
            broadcasts.push(self.deal(node).await.unwrap());
        }
        broadcasts
    }

    async fn receive(
        &mut self,
        node: usize,
        broadcasts: &[SignedDkgMessage],
    ) -> Result<SignedDkgMessage, Status> {
        let request = DkgReceiveRequest {
            session_id: self.session.clone(),
            broadcasts: broadcasts.to_vec(),
        };
        let response = self.clients[node]
            .dkg_receive(signed_request_to(
                &self.key,
                &self.endpoints[node],
                methods::DKG_RECEIVE,
                request,
            ))
            .await?;
        Ok(response.into_inner().complaints.unwrap())
    }

    async fn justify(
        &mut self,
        node: usize,
        complaints: &[SignedDkgMessage],
    ) -> Result<SignedDkgMessage, Status> {
        let request = DkgJustifyRequest {
            session_id: self.session.clone(),
            complaints: complaints.to_vec(),
        };
        let response = self.clients[node]
            .dkg_justify(signed_request_to(
                &self.key,
                &self.endpoints[node],
                methods::DKG_JUSTIFY,
                request,
            ))
            .await?;
        Ok(response.into_inner().justifications.unwrap())
    }

    async fn finish(
        &mut self,
        node: usize,
        complaints: &[SignedDkgMessage],
        justifications: &[SignedDkgMessage],
    ) -> Result<DkgFinishResponse, Status> {
        let request = DkgFinishRequest {
            session_id: self.session.clone(),
            complaints: complaints.to_vec(),
            justifications: justifications.to_vec(),
        };
        let response = self.clients[node]
            .dkg_finish(signed_request_to(
                &self.key,
                &self.endpoints[node],
                methods::DKG_FINISH,
                request,
            ))
            .await?;
        Ok(response.into_inner())
    }

    async fn confirm(
        &mut self,
        node: usize,
        confirmations: &[SignedDkgMessage],
    ) -> Result<Vec<u8>, Status> {
        let request = DkgConfirmRequest {
            session_id: self.session.clone(),
            confirmations: confirmations.to_vec(),
        };
        let response = self.clients[node]
            .dkg_confirm(signed_request_to(
                &self.key,
                &self.endpoints[node],
                methods::DKG_CONFIRM,
                request,
            ))
            .await?;
        Ok(response.into_inner().committee)
    }

    /// Every round relayed honestly from the broadcasts on; returns each node's committee.
    async fn complete(&mut self, broadcasts: &[SignedDkgMessage]) -> Vec<Vec<u8>> {
        let nodes = self.clients.len();
        let mut complaints = Vec::new();
        for node in 0..nodes {
            complaints.push(self.receive(node, broadcasts).await.unwrap());
        }
        let mut justifications = Vec::new();
        for node in 0..nodes {
            justifications.push(self.justify(node, &complaints).await.unwrap());
        }
        let mut confirmations = Vec::new();
        for node in 0..nodes {
            let finished = self
                .finish(node, &complaints, &justifications)
                .await
                .unwrap();
            confirmations.push(finished.confirmation.unwrap());
        }
        let mut committees = Vec::new();
        for node in 0..nodes {
            committees.push(self.confirm(node, &confirmations).await.unwrap());
        }
        committees
    }
}

async fn start_without_a_key() -> (tempfile::TempDir, Cluster) {
    let (dir, cluster, _truth) = start_with(Setup {
        key_ceremony: false,
        ..Setup::default()
    })
    .await;
    (dir, cluster)
}

fn member(index: u16) -> MemberIndex {
    MemberIndex::new(index).unwrap()
}

/// The statements as a member reads them, in member order.
fn statements(messages: &[SignedDkgMessage]) -> Vec<Statement> {
    let mut statements: Vec<Statement> = messages
        .iter()
        .map(|message| Statement {
            member: member(message.member as u16),
            body: message.body.clone(),
        })
        .collect();
    statements.sort_by_key(|statement| statement.member);
    statements
}

fn assert_all_equal(committees: &[Vec<u8>]) {
    assert!(!committees[0].is_empty());
    assert!(committees
        .iter()
        .all(|committee| committee == &committees[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_messages_not_signed_by_their_dealer_are_refused() {
    let (_dir, cluster) = start_without_a_key().await;
    let mut relay = Relay::new(&cluster, b"forged-broadcast").await;
    let honest = relay.deal_all().await;

    // The operator swaps member 3's commitments for those of a polynomial it knows, signed
    // with its own key in member 3's name (the first step of owning the collective secret).
    let parameters = zk::dkg::DkgParameters::new(2, 3, b"forged-broadcast").unwrap();
    let (_, operators_broadcast, _) =
        zk::dkg::deal_with_rng(&parameters, member(3), &mut rand::rngs::OsRng).unwrap();
    let mut signed_by_operator = honest.clone();
    signed_by_operator[2] = sign_statement(
        cluster.operator_key(),
        &cluster.chain_id,
        b"forged-broadcast",
        CeremonyRound::Broadcast,
        member(3),
        operators_broadcast.to_bytes(),
    )
    .into();
    // The same commitments under member 3's real signature, which covers other bytes.
    let mut body_swapped = honest.clone();
    body_swapped[2].body = operators_broadcast.to_bytes();
    // Member 2's honestly signed broadcast relabelled as member 3's.
    let mut relabelled = honest.clone();
    relabelled[2] = SignedDkgMessage {
        member: 3,
        ..honest[1].clone()
    };
    for (attack, broadcasts) in [
        ("signed by the operator", &signed_by_operator),
        ("body swapped", &body_swapped),
        ("relabelled", &relabelled),
    ] {
        for node in 0..3 {
            let refused = relay
                .receive(node, broadcasts)
                .await
                .expect_err("a node took a broadcast its dealer did not sign");
            assert_eq!(
                refused.code(),
                Code::PermissionDenied,
                "{attack}: {refused:?}"
            );
            assert!(
                refused.message().contains("broadcasts[2]")
                    && refused.message().contains("not signed by member 3"),
                "{attack}: {refused:?}"
            );
        }
    }

    // The refusals cost nothing: relayed as signed, the same ceremony completes.
    let committees = relay.complete(&honest).await;
    assert_all_equal(&committees);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn justification_forged_by_the_relay_is_refused() {
    let (_dir, cluster) = start_without_a_key().await;
    let session = b"forged-justification".to_vec();
    let mut relay = Relay::new(&cluster, &session).await;
    let broadcasts = relay.deal_all().await;
    let mut complaints = Vec::new();
    for node in 0..3 {
        complaints.push(relay.receive(node, &broadcasts).await.unwrap());
    }
    let mut justifications = Vec::new();
    for node in 0..3 {
        justifications.push(relay.justify(node, &complaints).await.unwrap());
    }
    // The digest the justifications name, as every member computes it.
    let broadcasts_digest = round_digest(
        &session,
        CeremonyRound::Broadcast,
        None,
        &statements(&broadcasts),
    );
    let complaints_digest = round_digest(
        &session,
        CeremonyRound::Complaints,
        Some(&broadcasts_digest),
        &statements(&complaints),
    );
    // The operator "answers" for dealer 3 with a share of a polynomial of its own, to make the
    // members adopt it.
    let forged = DkgJustifications {
        complaints_digest: complaints_digest.as_bytes().to_vec(),
        justifications: vec![Justification {
            dealer: member(3),
            recipient: member(1),
            share: curve25519_dalek::scalar::Scalar::from(42u64),
        }
        .to_bytes()],
    }
    .encode_to_vec();

    let mut by_operator = justifications.clone();
    by_operator[2] = sign_statement(
        cluster.operator_key(),
        &cluster.chain_id,
        &session,
        CeremonyRound::Justifications,
        member(3),
        forged.clone(),
    )
    .into();
    // Member 2, turned hostile, signs the answer for dealer 3 itself.
    let mut in_another_dealers_name = justifications.clone();
    in_another_dealers_name[1] = sign_statement(
        cluster.nodes[1].signing_key(),
        &cluster.chain_id,
        &session,
        CeremonyRound::Justifications,
        member(2),
        forged,
    )
    .into();
    for node in [0, 2] {
        let refused = relay
            .finish(node, &complaints, &by_operator)
            .await
            .expect_err("a node took a justification its dealer did not sign");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("justifications[2]")
                && refused.message().contains("not signed by member 3"),
            "{refused:?}"
        );
    }
    let refused = relay
        .finish(0, &complaints, &in_another_dealers_name)
        .await
        .expect_err("a node took a share revealed in another dealer's name");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("member 2 answers for dealer 3"),
        "{refused:?}"
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_shown_different_broadcasts_do_not_finish() {
    let (_dir, cluster) = start_without_a_key().await;
    let session = b"split-view".to_vec();
    let mut relay = Relay::new(&cluster, &session).await;
    let honest = relay.deal_all().await;
    // Member 3 colludes with the operator and signs a second broadcast; the relay shows it to
    // member 2, and the first one to members 1 and 3 (member 3's own node takes only its own
    // dealing). Each set, alone, is validly signed.
    let parameters = zk::dkg::DkgParameters::new(2, 3, &session).unwrap();
    let (_, second, _) =
        zk::dkg::deal_with_rng(&parameters, member(3), &mut rand::rngs::OsRng).unwrap();
    let mut equivocated = honest.clone();
    equivocated[2] = sign_statement(
        cluster.nodes[2].signing_key(),
        &cluster.chain_id,
        &session,
        CeremonyRound::Broadcast,
        member(3),
        second.to_bytes(),
    )
    .into();
    let complaints = vec![
        relay.receive(0, &honest).await.unwrap(),
        relay.receive(1, &equivocated).await.unwrap(),
        relay.receive(2, &honest).await.unwrap(),
    ];
    // Every round needs a statement from every member over the same messages: whatever the
    // relay shows next, every member finds one that checked other broadcasts than its own,
    // and none answers (so none can reach the round that derives a key).
    for node in 0..3 {
        let refused = relay
            .justify(node, &complaints)
            .await
            .expect_err("a member answered complaints over broadcasts it never saw");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("checked other broadcasts"),
            "{refused:?}"
        );
    }

    // No member kept a key from it: a new ceremony, relayed honestly, is accepted by all
    // three (a member holding a key would refuse it) and completes.
    let mut again = Relay::new(&cluster, b"after-the-split").await;
    let broadcasts = again.deal_all().await;
    assert_all_equal(&again.complete(&broadcasts).await);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_holding_a_key_refuses_a_new_ceremony() {
    // The cluster ran its ceremony at start: every member holds a key share.
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let mut relay = Relay::new(&cluster, b"re-key").await;
    for node in 0..3 {
        let refused = relay
            .deal(node)
            .await
            .expect_err("a member holding a key dealt a new one");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("holds the committee's key share"),
            "{refused:?}"
        );
    }
    // The key in use was not touched: an order is released as before.
    let buyer = buyer(&cluster).await;
    query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dealing_twice_in_one_session_is_refused() {
    let (_dir, cluster) = start_without_a_key().await;
    let mut relay = Relay::new(&cluster, b"deal-twice").await;
    relay.deal_all().await;
    // A second polynomial in the same session would let the relay pair it with the member's
    // first, signed broadcast and draw complaints (and so other dealers' shares) out of it.
    let refused = relay
        .deal(1)
        .await
        .expect_err("a member dealt twice in one session");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_restarted_mid_ceremony_is_not_shown_its_old_broadcast() {
    let (_dir, mut cluster) = start_without_a_key().await;
    let session = b"restart-mid-ceremony".to_vec();
    let mut relay = Relay::new(&cluster, &session).await;
    let first = relay.deal_all().await;
    let complaints_of_1 = relay.receive(0, &first).await.unwrap();
    let complaints_of_3 = relay.receive(2, &first).await.unwrap();
    // Member 2 restarts and forgets the session; the relay has it deal again, then shows it
    // the broadcasts of the first dealing, its own old one among them: answered, that would
    // draw complaints against honest dealers out of a member whose shares no longer match.
    cluster.restart_node(1).await.unwrap();
    let mut relay = Relay::new(&cluster, &session).await;
    let again = relay.deal(1).await.unwrap();
    let refused = relay
        .receive(1, &first)
        .await
        .expect_err("a restarted member took a broadcast set without its current dealing");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("not the one this member dealt"),
        "{refused:?}"
    );
    // Shown its new broadcast, it answers; but its complaints name other broadcasts than the
    // other members saw, and they refuse them.
    let mut shown = first.clone();
    shown[1] = again;
    let complaints_of_2 = relay.receive(1, &shown).await.unwrap();
    let complaints = [complaints_of_1, complaints_of_2, complaints_of_3];
    for node in [0, 2] {
        let refused = relay
            .justify(node, &complaints)
            .await
            .expect_err("a member answered complaints over broadcasts it never saw");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("checked other broadcasts"),
            "{refused:?}"
        );
    }
    cluster.shutdown();
}
