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
