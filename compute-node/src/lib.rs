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
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod combine;
pub mod contribution;
pub mod dp;
pub mod durable;
pub mod evaluate;
#[cfg(feature = "tfhe")]
pub mod feasibility;
#[cfg(all(feature = "server", feature = "tfhe"))]
pub mod feasibility_wire;
pub mod fhir;
#[cfg(feature = "server")]
pub mod follower;
pub mod ingest;
pub mod noise;
pub mod plan;
pub mod record;
#[cfg(feature = "server")]
pub mod recruitment;
pub mod schema;
pub mod sealed_share;
#[cfg(feature = "server")]
pub mod server;
pub mod sql;
pub mod synth;
pub mod vault;

pub use combine::{combine, Cell, QueryAnswer};
pub use contribution::{build_contribution, verify_contributions, Contribution};
pub use evaluate::{evaluate, Statistics};
pub use plan::QueryPlan;
pub use schema::Schema;
pub use sql::{compile, QueryError};
pub use vault::{ConsentBook, Vault};
