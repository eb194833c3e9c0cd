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

/// The calls a market answers without a client certificate: reading the posted trials, and a
/// patient's acceptance of one, so that the market relays an acceptance without learning
/// whose it is (the acceptance itself is signed and sealed to the listing's node).
pub const ANONYMOUS_CALLS: &[&str] = &[
    "/cohortex.v1.Market/ListTrials",
    "/cohortex.v1.Market/AcceptInvitation",
];

/// A server builder for a market: TLS that lets clients present no certificate, behind
/// [`CertificateRequiredLayer`], which refuses every call but [`ANONYMOUS_CALLS`] made
/// without one. Without `tls`, plaintext (in-process tests), as [`server_builder`].
pub fn market_server_builder(
    tls: Option<&TlsIdentity>,
) -> Result<
    tonic::transport::Server<
        tower::layer::util::Stack<CertificateRequiredLayer, tower::layer::util::Identity>,
    >,
    ServeError,
> {
    let builder = tonic::transport::Server::builder();
    let builder = match tls {
        Some(tls) => builder.tls_config(tls.server_allowing_anonymous_clients())?,
        None => builder,
    };
    Ok(builder.layer(CertificateRequiredLayer {
        required: tls.is_some(),
    }))
}

/// Refuses, with `UNAUTHENTICATED`, every call made without a client certificate except
/// [`ANONYMOUS_CALLS`] (when `required`; a plaintext server has no certificates to check).
#[derive(Clone, Copy, Debug)]
pub struct CertificateRequiredLayer {
    required: bool,
}

impl<S> tower::Layer<S> for CertificateRequiredLayer {
    type Service = CertificateRequired<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CertificateRequired {
            inner,
            required: self.required,
        }
    }
}

/// The service [`CertificateRequiredLayer`] makes.
#[derive(Clone, Debug)]
pub struct CertificateRequired<S> {
    inner: S,
    required: bool,
}

type BoxedResponse<R, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, E>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for CertificateRequired<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedResponse<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let presented = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certificates| !certificates.is_empty());
        if !self.required || presented || ANONYMOUS_CALLS.contains(&request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let refused = tonic::Status::unauthenticated(format!(
            "{} needs a client certificate from the federation's authority; only {} may be \
             called without one",
            request.uri().path(),
            ANONYMOUS_CALLS.join(" and ")
        ))
        .into_http();
        Box::pin(async move { Ok(refused) })
    }
}
