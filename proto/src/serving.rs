//! What every Cohortex server runs beside its own services: the standard gRPC health checking
//! and server reflection, so that grpcurl, grpc_health_probe and any language's stubs work.

use thiserror::Error;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::tls::TlsIdentity;

/// Why a server stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The reflection service could not read a descriptor set.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The standard `grpc.health.v1.Health` and `grpc.reflection.v1.ServerReflection` services for
/// a process that serves the Cohortex services named in `served` (e.g.
/// [`crate::v1::ledger_server::SERVICE_NAME`]): each is marked `SERVING` (as is the
/// whole server, the empty name), and reflection describes the Cohortex and health descriptor
/// sets but lists only `served`, health and reflection itself. Keep the reporter to mark a
/// service `NOT_SERVING` later.
pub async fn health_and_reflection(
    served: &[&str],
) -> Result<
    (
        HealthReporter,
        HealthServer<impl Health>,
        ServerReflectionServer<impl ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in served {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let listed: Vec<&str> = served
        .iter()
        .copied()
        .chain([
            tonic_health::pb::health_server::SERVICE_NAME,
            tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
        ])
        .collect();
    let builder = || {
        listed.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    // v1 for current tools; v1alpha too, which older grpcurl and Python's grpcio-reflection use.
    let reflection = builder().build_v1()?;
    let reflection_v1alpha = builder().build_v1alpha()?;
    Ok((reporter, health, reflection, reflection_v1alpha))
}

/// A server builder: mutual TLS when `tls` is given.
pub fn server_builder(tls: Option<&TlsIdentity>) -> Result<tonic::transport::Server, ServeError> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => Ok(builder.tls_config(tls.server())?),
        None => Ok(builder),
    }
}
