//! The Cohortex compute node: its gRPC Compute service and verified ledger replica (`server`),
//! the key ceremony, the contract the coordinator speaks with it (`protocol`), blind
//! feasibility search and trial replies (`tfhe`), and its durable state.
//!
//! The node is built from two crates that do one job each, re-exported here under their old
//! paths:
//!
//! - `cohortex-query`: the query — schema, the aggregate-only SQL dialect, plans, DP
//!   calibration, encrypted range-proven contributions, noise and combining. Everything that
//!   reads a query or a release links only this (the coordinator, the clients).
//! - `cohortex-vault` (feature `vault`): the patients' records — vaults, FHIR R4 and
//!   manifest-described CSV/Parquet ingest, synthetic populations, local evaluation with
//!   polars.
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
pub mod calls;
#[cfg(feature = "protocol")]
pub mod ceremony;
#[cfg(feature = "protocol")]
pub mod ceremony_wire;
pub mod durable;
pub mod error;
#[cfg(feature = "tfhe")]
pub mod feasibility;
#[cfg(all(feature = "protocol", feature = "tfhe"))]
pub mod feasibility_wire;
#[cfg(feature = "server")]
pub mod follower;
#[cfg(feature = "protocol")]
pub mod protocol;
#[cfg(feature = "protocol")]
pub mod recruitment;
pub mod sealed_share;
#[cfg(feature = "server")]
pub mod server;

pub use cohortex_query::{
    build_contribution, compile, verify_contributions, Cell, Contribution, QueryAnswer, QueryError,
    QueryPlan, Schema, Statistics,
};
pub use cohortex_query::{
    combine, contribution, dp, logistic, model, noise, plan, record, schema, sql, survival,
    uncertainty,
};
#[cfg(feature = "vault")]
pub use cohortex_vault::{evaluate, fhir, ingest, synth, vault};
#[cfg(feature = "vault")]
pub use cohortex_vault::{ConsentBook, Vault};
