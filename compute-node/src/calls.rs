//! What the coordinator asks of a node, as domain values: each call's fields checked and
//! decoded once, at the gRPC edge (`TryFrom<proto>` in `server/grpc.rs`, each error naming
//! the field), so that the node's operations take these and never a wire message.
//!
//! Built so far for an order's contribution and its participant pages, a member's noise
//! share and its receipt co-signature. The key ceremony's rounds, key-switch shares, blind
//! feasibility and trial acceptances still take their proto messages (docs/services.md).

use crate::contribution::Contribution;
use market::{ListingId, OrderId, QueryReceipt};

/// A listing's node is asked for its contribution to an order.
#[derive(Clone, Debug)]
pub struct ContributeCall {
    /// The order (its ledger id).
    pub order: OrderId,
    /// The listing the coordinator believes this node serves.
    pub listing: ListingId,
    /// The order's SQL, which must be the buyer's signed query.
    pub sql: String,
    /// The order's purpose, by its wire name; never empty.
    pub purpose: String,
}

/// The next page of the participants of a node's answer to an order.
#[derive(Clone, Copy, Debug)]
pub struct ParticipantsPageCall {
    /// The order.
    pub order: OrderId,
    /// Where the page starts in the list.
    pub offset: u64,
}

/// One listing's verified contribution, as the coordinator passes it to the committee.
#[derive(Clone, Debug)]
pub struct ListedContribution {
    /// The listing, by id as sent.
    pub listing: String,
    /// The listing's public capacity (the proof's bound).
    pub capacity: u64,
    /// The ciphertexts and their range proof.
    pub contribution: Contribution,
    /// The contribution's hash over its wire bytes (what the ledger commits).
    pub hash: market::Hash32,
}

/// A committee member is asked to verify and sum an order's contributions and add its noise
/// share.
#[derive(Clone, Debug)]
pub struct NoiseCall {
    /// The order.
    pub order: OrderId,
    /// The order's SQL.
    pub sql: String,
    /// The contributions to sum, as sent (each listing's presence and uniqueness is checked
    /// against the order by the member).
    pub contributions: Vec<ListedContribution>,
}

/// A committee member is asked to co-sign an order's receipt.
#[derive(Clone, Debug)]
pub struct CosignCall {
    /// The receipt as the ledger will carry it.
    pub receipt: QueryReceipt,
}
