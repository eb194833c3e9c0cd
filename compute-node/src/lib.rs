//! Cohortex compute node core: patient vaults, FHIR R4 and manifest-described CSV/Parquet
//! ingest, the aggregate-only SQL dialect, local evaluation with polars, and encrypted,
//! range-proven contributions.
//!
//! Data flows one way:
//!
//! ```text
//! FHIR bundles ─┐
//! CSV/Parquet ──┴─ ingest ─▶ Vault ─┐
//! SQL ─ sql::compile ─▶ QueryPlan ──┴─ evaluate (consenting patients only) ─▶ Statistics
//!   Statistics ─ build_contribution ─▶ Contribution (encrypted under the collective key, proven)
//!   Σ contributions ─ key switch to the buyer ─ decrypt ─ combine ─▶ QueryAnswer
//! ```
//!
//! Nothing but a [`contribution::Contribution`] leaves a node.
//!
//! Features: `vault` (on by default) holds records and evaluates with polars; `protocol` is the
//! coordinator's side of the node's wire contract, without either; `server` is the node's gRPC
//! service and needs both; `tfhe` adds blind feasibility search.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

#[cfg(feature = "protocol")]
pub mod ceremony;
pub mod combine;
pub mod contribution;
pub mod dp;
pub mod durable;
#[cfg(feature = "vault")]
pub mod evaluate;
#[cfg(feature = "tfhe")]
pub mod feasibility;
#[cfg(all(feature = "protocol", feature = "tfhe"))]
pub mod feasibility_wire;
pub mod fhir;
#[cfg(feature = "server")]
pub mod follower;
#[cfg(feature = "vault")]
pub mod ingest;
pub mod noise;
pub mod plan;
#[cfg(feature = "protocol")]
pub mod protocol;
pub mod record;
#[cfg(feature = "protocol")]
pub mod recruitment;
pub mod schema;
pub mod sealed_share;
#[cfg(feature = "server")]
pub mod server;
pub mod sql;
pub mod synth;
#[cfg(feature = "vault")]
pub mod vault;

pub use combine::{combine, Cell, QueryAnswer};
pub use contribution::{build_contribution, verify_contributions, Contribution, Statistics};
#[cfg(feature = "vault")]
pub use evaluate::evaluate;
pub use plan::QueryPlan;
pub use schema::Schema;
pub use sql::{compile, QueryError};
#[cfg(feature = "vault")]
pub use vault::{ConsentBook, Vault};
