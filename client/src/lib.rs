//! The clients of a Cohortex market: the buyer (order, decrypt, combine, verify the receipt),
//! the patient (register, consent, revoke, read consents and earnings), the recruiter (blind
//! feasibility search and sealed trial replies, feature `tfhe`), the market's `public.toml`,
//! and key files. The CLI and the Python module are both built on this crate.
//!
//! It links the ledger as its pure state machine (no SQLite), compiles queries without a
//! vault (no polars), and holds no server: a client only signs, sends and verifies.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod arrow_release;
pub mod buyer;
pub mod keys;
pub mod link;
pub mod patient;
pub mod public;
#[cfg(feature = "tfhe")]
pub mod recruiter;

pub use buyer::{Buyer, Release};
pub use patient::{ConsentGrant, Patient};
pub use public::MarketPublic;
