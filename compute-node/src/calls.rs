//! What the coordinator asks of a node, as domain values: each call's fields checked and
//! decoded once, at the gRPC edge (`TryFrom<proto>` in `server/grpc.rs`, each error naming
//! the field), so that the node's operations take these and never a wire message.
//!
//! Built for every call of an order (the contribution and its participant pages, a member's
//! noise share, its key-switch shares and its receipt co-signature), for a blind feasibility
//! count, for a patient's trial acceptance and for each round of the key ceremony. An
//! evaluation-key upload is a stream of chunks, which the node reassembles at the edge.

use market::{ListingId, OrderId, QueryReceipt};
use zk::{KeySwitchShare, PublicKey};

use crate::ceremony::SignedStatement;
use crate::contribution::Contribution;
use crate::noise::NoiseShare;

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

/// A committee member is asked for its key-switch share of an order's release.
#[derive(Clone, Debug)]
pub struct KeySwitchCall {
    /// The order.
    pub order: OrderId,
    /// The noise shares summed into the release (at least t, this member's among them).
    pub noise: Vec<NoiseShare>,
    /// What is switched.
    pub phase: SwitchPhase,
}

/// The two phases of a release's key switch.
#[derive(Clone, Debug)]
pub enum SwitchPhase {
    /// The count slots, towards the public count key.
    Counts,
    /// The values of the cells that pass the minimum cohort, towards the buyer.
    Values(Box<ValuesSwitch>),
}

/// What phase VALUES needs beyond the order: where the values go, and the opened counts that
/// say which cells are released.
#[derive(Clone, Debug)]
pub struct ValuesSwitch {
    /// The buyer's result key (the ledger's record of the order must name it).
    pub recipient: PublicKey,
    /// The COUNTS phase's key-switch shares.
    pub count_shares: Vec<KeySwitchShare>,
    /// The noisy counts those shares decrypt to.
    pub noisy_counts: Vec<i64>,
}

/// A listing's node is asked for a noisy count of the patients meeting encrypted criteria
/// (feature `tfhe`).
#[cfg(feature = "tfhe")]
#[derive(Clone)]
pub struct FeasibilityCall {
    /// The order.
    pub order: OrderId,
    /// The listing the coordinator believes this node serves.
    pub listing: ListingId,
    /// The fingerprint of the evaluation key the criteria are encrypted for.
    pub fingerprint: [u8; 32],
    /// The criteria, decoded.
    pub criteria: crate::feasibility::EncryptedCriteria,
    /// Their hash as sent, which must be the order's `query_hash`.
    pub criteria_hash: market::Hash32,
}

/// A patient's sealed acceptance of a trial invitation, relayed to the node holding their
/// record.
#[derive(Clone, Debug)]
pub struct AcceptanceCall {
    /// The trial.
    pub trial: String,
    /// The listing the patient's record is in.
    pub listing: ListingId,
    /// The acceptance, sealed to this node's account key.
    pub sealed: Vec<u8>,
}

/// A member of the committee as the coordinator names it for a key ceremony.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CeremonyPeer {
    /// The 1-based member index, as sent.
    pub member: u32,
    /// Where it is reached, as sent.
    pub endpoint: String,
}

/// Round 1 of a key ceremony: deal to the committee, which the call may only name back.
#[derive(Clone, Debug)]
pub struct DealCall {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// The threshold the coordinator names.
    pub threshold: u32,
    /// The members the coordinator names.
    pub peers: Vec<CeremonyPeer>,
}

/// Another member delivers this member its private share of a dealing.
#[derive(Clone, Debug)]
pub struct ShareDelivery {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// The dealer's share, sealed to this member (`sealed_share`).
    pub sealed_share: Vec<u8>,
}

/// Round 2: every member's signed broadcast.
#[derive(Clone, Debug)]
pub struct ReceiveCall {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// One signed `DealerBroadcast` per member.
    pub broadcasts: Vec<SignedStatement>,
}

/// Round 3: every member's signed complaints, for this member to answer those against it.
#[derive(Clone, Debug)]
pub struct JustifyCall {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// One signed complaints statement per member.
    pub complaints: Vec<SignedStatement>,
}

/// Round 4: every member's complaints and every dealer's answers, to derive the key from.
#[derive(Clone, Debug)]
pub struct FinishCall {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// One signed complaints statement per member.
    pub complaints: Vec<SignedStatement>,
    /// One signed justifications statement per member.
    pub justifications: Vec<SignedStatement>,
}

/// What a member derived in round 4: the committee and its signed confirmation of it.
#[derive(Clone, Debug)]
pub struct CeremonyFinished {
    /// The committee's public data, as derived.
    pub committee: zk::CommitteePublic,
    /// This member's signed confirmation of the transcript and committee.
    pub confirmation: SignedStatement,
}

/// Round 5: every member's confirmation; the key is used once they all match.
#[derive(Clone, Debug)]
pub struct ConfirmCall {
    /// The ceremony's session id.
    pub session: Vec<u8>,
    /// One signed confirmation per member.
    pub confirmations: Vec<SignedStatement>,
}
