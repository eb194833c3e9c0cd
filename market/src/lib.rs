//! Cohortex ledger and market state.
//!
//! Layers, from the bottom:
//!
//! * [`hash`]: versioned, domain-separated hashing.
//! * [`tx`]: actions, the signed transaction envelope, signature checking.
//! * [`state`]: the market state and its rules (accounts, listings, consents, orders, escrow,
//!   receipts, ε budgets, payouts). Pure and deterministic.
//! * [`log`]: the RFC 6962 log (`ct-merkle`), block headers, signed tree heads, receipts,
//!   inclusion and consistency proofs.
//! * [`machine`]: the ABCI++-shaped state machine (check → prepare → finalize → commit).
//! * [`sequencer`]: the ordering seam, with the in-process single sequencer.
//! * [`audit`]: replay of a stored chain that names the first failing block and transaction.
//! * `storage` (feature `storage`, on by default): SQLite persistence, [`Ledger`] and
//!   [`audit_database`].
//!
//! The formats and rules are written out for auditors in `docs/ledger.md`.
#![deny(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod audit;
pub mod error;
pub mod hash;
pub mod log;
pub mod machine;
pub mod sequencer;
#[cfg(feature = "server")]
pub mod server;
pub mod state;
#[cfg(feature = "storage")]
pub mod storage;
pub mod tx;
#[cfg(feature = "wire")]
pub mod wire;

pub use audit::{AuditFailure, AuditProblem, AuditReport, Auditor, SignatureCheck};
pub use error::TxError;
pub use hash::Hash32;
pub use log::{
    verify_consistency, verify_inclusion, BlockHeader, LogError, MerkleLog, Receipt, SignedTreeHead,
};
pub use machine::{BlockError, Genesis, StateMachine};
pub use sequencer::{InProcessSequencer, Sequencer};
pub use state::State;
#[cfg(feature = "storage")]
pub use storage::{
    audit_database, AppendOutcome, AuditError, Ledger, LedgerError, Refusal, Replica,
};
pub use tx::{verify_all, verify_block, SIGNATURE_BATCH};
pub use tx::{
    AccountId, Action, AttestationKind, Compensation, ListingContribution, ListingId, ListingTerms,
    OrderId, PayoutChoice, Purpose, QueryReceipt, ReceiptCosignature, ReceiptId, Role, SignedTx,
    TrialPosting, TxBody, TxId, VerifiedTx, MAX_LISTING_ID_LEN, MAX_ORDER_LIFETIME_SECS,
    MAX_STAGED_PER_TX, MIN_COMMITTEE_THRESHOLD,
};
