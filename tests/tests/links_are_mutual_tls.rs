//! Every link is mutual TLS: the market and the nodes refuse clients without a certificate
//! from the federation's authority, and clients refuse servers without one for the host they
//! dial. Each attack is checked against a control that succeeds over the same link.

use std::sync::Arc;

use cohortex_proto::certs::Authority;
use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::ledger_server::LedgerServer;
use cohortex_proto::v1::GetSignedTreeHeadRequest;
use market::server::LedgerService;
use testkit::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Asks `channel`'s Ledger for its signed head: the cheapest call every market answers.
async fn head(channel: Channel) -> Result<(), tonic::Status> {
    LedgerClient::new(channel)
        .get_signed_tree_head(GetSignedTreeHeadRequest {})
        .await
        .map(|_| ())
}

/// Connects with `config` and asks for the head; a refusal may come at the handshake or at
/// the first call, depending on which side refuses.
async fn head_over(endpoint: &str, config: ClientTlsConfig) -> Result<(), String> {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    head(channel).await.map_err(|status| format!("{status:?}"))
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // Control: the cluster's own client certificate is accepted.
    head(cluster.market_channel().await.unwrap()).await.unwrap();
    // The authority is trusted, so the client knows it talks to the market, but it presents
    // nothing: the market refuses the call (it answers only reading the trials and relaying
    // acceptances without a certificate), and every node refuses the connection.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cluster.authority().certificate_pem()));
    let refused = head_over(&cluster.market_endpoint, anonymous.clone()).await;
    assert!(refused.is_err(), "the market served an anonymous client");
    let node = &cluster.nodes[0].endpoint;
    let refused = head_over(node, anonymous).await;
    assert!(refused.is_err(), "a node served an anonymous client");
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_authority_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let stranger = Authority::generate().unwrap();
    let issued = stranger.issue("stranger", &loopback()).unwrap();
    // The stranger trusts the right authority (the market's certificate checks out) but its
    // own certificate comes from an authority the federation never named.
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cluster.authority().certificate_pem()))
        .identity(tonic::transport::Identity::from_pem(
            &issued.certificate_pem,
            &issued.key_pem,
        ));
    let refused = head_over(&cluster.market_endpoint, config).await;
    assert!(
        refused.is_err(),
        "the market served a client certified by another authority"
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let plaintext = cluster.market_endpoint.replacen("https://", "http://", 1);
    // Our own link code will not even try: a party with TLS never dials http://.
    let refusal = link(&plaintext, Some(cluster.client_tls())).unwrap_err();
    assert!(refusal.to_string().contains("plaintext"), "{refusal}");
    // A plaintext client dialling the TLS port gets no answer.
    let answered = match Endpoint::from_shared(plaintext).unwrap().connect().await {
        Ok(channel) => head(channel).await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "the market answered plaintext gRPC");
    cluster.shutdown();
}

/// Serves the cluster's real Ledger (honest data) at a new port, presenting `tls`.
async fn impostor(cluster: &cohortex_cluster::Cluster, tls: TlsIdentity) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let ledger = LedgerService::new(Arc::clone(&cluster.ledger));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .unwrap()
            .add_service(LedgerServer::new(ledger))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certified_by_another_authority_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // Control: the same server with a certificate from the federation's authority answers.
    let genuine = cluster.authority().identity("market", &loopback()).unwrap();
    let control = impostor(&cluster, genuine).await;
    head(cluster.channel_to(&control).await.unwrap())
        .await
        .unwrap();
    // A man in the middle with its own authority's certificate: the client refuses it.
    let stranger = Authority::generate().unwrap();
    let forged = stranger.identity("market", &loopback()).unwrap();
    let endpoint = impostor(&cluster, forged).await;
    let refused = match cluster.channel_to(&endpoint).await {
        Ok(channel) => head(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a client accepted a server certified by a stranger"
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_for_another_host_is_refused() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    // Issued by the right authority, but for another host than the one dialled.
    let elsewhere = cluster
        .authority()
        .identity("market", &["market.example".to_string()])
        .unwrap();
    let endpoint = impostor(&cluster, elsewhere).await;
    let refused = match cluster.channel_to(&endpoint).await {
        Ok(channel) => head(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a client accepted a certificate for market.example at 127.0.0.1"
    );
    cluster.shutdown();
}

/// Asks node 1 for the participants of an unknown order over a link authenticated by
/// `certificate`, with the request signed by the coordinator's key.
async fn participants_as_coordinator_over(
    cluster: &cohortex_cluster::Cluster,
    certificate: &cohortex_proto::certs::IssuedCertificate,
) -> Result<(), tonic::Status> {
    use cohortex_proto::v1::compute_client::ComputeClient;
    use cohortex_proto::v1::ContributionParticipantsRequest;
    let node = &cluster.nodes[0].endpoint;
    let identity = TlsIdentity::from_pem(
        cluster.authority().certificate_pem(),
        &certificate.certificate_pem,
        &certificate.key_pem,
    );
    let channel = link(node, Some(&identity))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ComputeClient::new(channel)
        .contribution_participants(market::server::auth::signed_request_to(
            cluster.operator_key(),
            node,
            compute_node::protocol::methods::CONTRIBUTION_PARTICIPANTS,
            ContributionParticipantsRequest {
                order_id: vec![7; 32],
                offset: 0,
            },
        ))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_to_one_account_refuses_requests_signed_by_another() {
    let (_dir, cluster, _truth) = start([None, None, None]).await;
    let coordinator = market::AccountId::of(cluster.operator_key());
    // The URI the authority writes is the one servers read.
    assert_eq!(
        cohortex_proto::certs::ACCOUNT_URI_PREFIX,
        cohortex_types::auth::CERTIFICATE_ACCOUNT_PREFIX
    );

    // Control: a certificate bound to the coordinator's account carries its requests (the
    // node answers, with NOT_FOUND for an order it never contributed to).
    let bound_to_coordinator = cluster
        .authority()
        .issue_for_account("coordinator", &loopback(), &coordinator.0)
        .unwrap();
    let answered = participants_as_coordinator_over(&cluster, &bound_to_coordinator)
        .await
        .unwrap_err();
    assert_eq!(answered.code(), tonic::Code::NotFound, "{answered:?}");
    // An unbound certificate serves any account, as before.
    let unbound = cluster.authority().issue("anyone", &loopback()).unwrap();
    let answered = participants_as_coordinator_over(&cluster, &unbound)
        .await
        .unwrap_err();
    assert_eq!(answered.code(), tonic::Code::NotFound, "{answered:?}");

    // A certificate issued to another account (a stolen one, say) cannot carry the
    // coordinator's signed requests: the node refuses before any signature work.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let bound_to_other = cluster
        .authority()
        .issue_for_account(
            "someone-else",
            &loopback(),
            other.verifying_key().as_bytes(),
        )
        .unwrap();
    let refused = participants_as_coordinator_over(&cluster, &bound_to_other)
        .await
        .expect_err(
            "a node served a request signed by an account its link's certificate is not bound to",
        );
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("bound to account")
            && refused.message().contains(&coordinator.to_string()),
        "{refused:?}"
    );
    cluster.shutdown();
}

#[test]
fn certificate_naming_an_account_reads_back_as_that_account() {
    let authority = Authority::generate().unwrap();
    let account = [0x5a; 32];
    let issued = authority
        .issue_for_account("node-1", &loopback(), &account)
        .unwrap();
    let der = pem_der(&issued.certificate_pem);
    assert_eq!(
        cohortex_types::auth::certificate_account(&der).unwrap(),
        Some(market::AccountId(account))
    );
    let unbound = authority.issue("node-1", &loopback()).unwrap();
    assert_eq!(
        cohortex_types::auth::certificate_account(&pem_der(&unbound.certificate_pem)).unwrap(),
        None
    );
}

/// The DER bytes of a PEM certificate.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}
