//! The market process's order coordinator and Market service, and the buyer and recruiter
//! clients (see `docs/services.md`). The in-process cluster is the `cohortex-cluster` crate.
//!
//! This crate depends on both `market` and `compute-node`: the coordinator compiles queries,
//! batch-verifies contributions and combines results (compute-node, feature `protocol` only:
//! no vault, no polars), and records receipts and settlements (market). It sits in its own
//! crate so that neither of those depends on the other's services.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod arrow_release;
pub mod buyer;
pub mod coordinator;
pub mod error;
#[cfg(feature = "tfhe")]
pub mod evaluation_keys;
mod kept_orders;
pub mod market_service;
#[cfg(feature = "tfhe")]
pub mod recruiter;
pub mod serve;
pub mod standalone;

pub use buyer::{Buyer, Release};
pub use coordinator::{query_hash, Coordinator};
pub use error::OrderError;
