//! Serving: the market process (Ledger, Consent, Market) and a node process (Compute), each
//! with health checking, reflection, a request deadline and message-size limits.

use std::future::Future;
use std::sync::Arc;

use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::compute_server::ComputeServer;
use cohortex_proto::v1::consent_server::ConsentServer;
use cohortex_proto::v1::ledger_server::LedgerServer;
use cohortex_proto::v1::market_server::MarketServer;
use compute_node::server::NodeService;
use market::server::{
    health_and_reflection, ConsentService, LedgerService, ServeError, MAX_MESSAGE_BYTES,
    REQUEST_TIMEOUT,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::coordinator::Coordinator;
use crate::market_service::MarketService;

/// A server builder: mutual TLS when `tls` is given.
fn server_builder(tls: Option<&TlsIdentity>) -> Result<tonic::transport::Server, ServeError> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => Ok(builder.tls_config(tls.server())?),
        None => Ok(builder),
    }
}

/// Serves the market process's Ledger, Consent and Market services until `shutdown`.
pub async fn serve_market(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: Option<&TlsIdentity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (_reporter, health, reflection, reflection_v1alpha) = health_and_reflection(&[
        cohortex_proto::v1::ledger_server::SERVICE_NAME,
        cohortex_proto::v1::consent_server::SERVICE_NAME,
        cohortex_proto::v1::market_server::SERVICE_NAME,
    ])
    .await?;
    let ledger = Arc::clone(coordinator.ledger());
    tracing::info!(address = ?listener.local_addr().ok(), "serving market, consent and ledger");
    server_builder(tls)?
        .timeout(REQUEST_TIMEOUT)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            LedgerServer::new(LedgerService::new(Arc::clone(&ledger)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ConsentServer::new(ConsentService::new(ledger))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MarketServer::new(MarketService::new(coordinator))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Serves a node's Compute service until `shutdown`.
pub async fn serve_node(
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
