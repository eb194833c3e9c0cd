//! The types every Cohortex party shares, and nothing heavier: ids and purposes, the
//! domain-separation labels and the hashing they go through, request authentication, and the
//! bounds on messages.
//!
//! The ledger (`market`), the compute node, the coordinator and the clients all depend on this
//! crate; it depends on none of them, so a node links no SQLite and a coordinator no polars
//! only to agree on what an account or a purpose is.
#![deny(clippy::unwrap_used)]
#![deny(missing_docs)]

#[cfg(feature = "rpc")]
pub mod auth;
pub mod hash;
pub mod ids;
pub mod labels;
pub mod private_file;
#[cfg(feature = "rpc")]
pub mod rpc;
pub mod text;

pub use hash::{tagged_hash, Hash32, TaggedHasher};
pub use ids::{
    purpose_name, AccountId, InvalidKey, ListingId, OrderId, Purpose, ReceiptId, Role, TxId,
    PURPOSE_NAMES,
};
