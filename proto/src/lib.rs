//! Generated gRPC types for Cohortex (`cohortex.v1`). The types here are wire types only:
//! services convert them into validated domain types at the boundary. Every generated client
//! and server uses [`codec::CanonicalProstCodec`].
#![deny(clippy::unwrap_used)]

#[cfg(feature = "certs")]
pub mod certs;
pub mod codec;
pub mod methods;
#[cfg(feature = "serving")]
pub mod serving;
pub mod tls;

/// Package `cohortex.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("cohortex.v1");
}

/// The encoded `FileDescriptorSet` of every Cohortex service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cohortex_descriptor.bin"));
