//! Serving the market process (Ledger, Consent, Market) with health checking, reflection, a
//! request deadline and message-size limits. A node's Compute service is served by
//! `compute_node::server::serve`.

use std::future::Future;
use std::sync::Arc;

use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::consent_server::ConsentServer;
use cohortex_proto::v1::ledger_server::LedgerServer;
use cohortex_proto::v1::market_server::MarketServer;
use market::server::{
    health_and_reflection, ConsentService, LedgerService, ServeError, MAX_MESSAGE_BYTES,
    REQUEST_TIMEOUT,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::coordinator::Coordinator;
use crate::market_service::MarketService;

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
    // One count of self-registrations per client, whichever service registers.
    let registrations = Arc::new(market::server::rate::RateLimiter::registrations());
    tracing::info!(address = ?listener.local_addr().ok(), "serving market, consent and ledger");
    // Every call needs a client certificate but reading the trials and relaying a patient's
    // acceptance, which must not tell the market whose it is.
    cohortex_proto::serving::market_server_builder(tls)?
        .timeout(REQUEST_TIMEOUT)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            LedgerServer::new(
                LedgerService::new(Arc::clone(&ledger))
                    .sharing_registrations(Arc::clone(&registrations)),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ConsentServer::new(ConsentService::new(ledger).sharing_registrations(registrations))
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
