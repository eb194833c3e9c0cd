//! A compute node's patient records: vaults of consenting patients' rows, ingest from FHIR R4
//! bundles and manifest-described CSV/Parquet, synthetic populations for demos and tests, and
//! the local evaluation of a query plan with polars (consenting patients only, values clipped
//! to the manifest's bounds).
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod evaluate;
pub mod fhir;
pub mod ingest;
pub mod synth;
pub mod vault;

pub use evaluate::evaluate;
pub use vault::{ConsentBook, Vault};
