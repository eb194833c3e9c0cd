//! The Cohortex query: what a buyer may ask and how every party computes, proves, noises and
//! reads it. The manifest schema, the aggregate-only SQL dialect and its plans, differential
//! privacy's calibration, encrypted range-proven contributions, distributed noise, and
//! combining a release into an answer.
//!
//! It holds no record and links no data engine: the coordinator and the clients use it
//! without a vault (`cohortex-vault` evaluates plans over records).
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod combine;
pub mod contribution;
pub mod dp;
pub mod logistic;
pub mod model;
pub mod noise;
pub mod plan;
pub mod record;
pub mod schema;
pub mod sql;
pub mod survival;
pub mod uncertainty;

pub use combine::{combine, combine_release, Cell, QueryAnswer};
pub use contribution::{build_contribution, verify_contributions, Contribution, Statistics};
pub use plan::QueryPlan;
pub use schema::Schema;
pub use sql::{compile, QueryError};
pub use uncertainty::{ErrorBar, ReleaseNoise};
