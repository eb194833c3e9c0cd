//! The market process's order coordinator and Market service (see `docs/services.md`). The
//! buyer, patient and recruiter clients are the `cohortex-client` crate. The in-process cluster is the `cohortex-cluster` crate.
//!
//! This crate depends on both `market` and `compute-node`: the coordinator compiles queries,
//! batch-verifies contributions and combines results (compute-node, feature `protocol` only:
//! no vault, no polars), and records receipts and settlements (market). It sits in its own
//! crate so that neither of those depends on the other's services.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod coordinator;
pub mod error;
#[cfg(feature = "tfhe")]
pub mod evaluation_keys;
mod kept_orders;
pub mod market_service;
pub mod serve;
pub mod standalone;
mod status;

pub use coordinator::{query_hash, Coordinator};
pub use error::{CoordinatorError, OrderError};
