//! The contract between the coordinator and a node's Compute service (feature `protocol`):
//! the method paths requests are signed for, the proof contexts that bind shares to an order,
//! the wire form of noise shares, and the key committee as a node pins it. The coordinator
//! links this without the node's vault, evaluation or service.

use cohortex_types::AccountId;
use tonic::Status;
use zk::{MemberIndex, ProofContext, Wire};

use crate::noise::NoiseShare;

/// Method paths, as signed in requests (defined once, in `cohortex_proto::methods`).
pub use cohortex_proto::methods::compute as methods;

/// The context key-switch shares of an order are bound to.
pub fn release_context(order_id: &[u8]) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, b"release")
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// The context key-switch shares of an order's count slots are bound to.
pub fn counts_context(order_id: &[u8]) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, b"release/counts")
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// The context member `member`'s noise share for an order is bound to.
pub fn noise_context(order_id: &[u8], member: u16) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, format!("noise/{member}").as_bytes())
        .map_err(|error| Status::invalid_argument(format!("order_id: {error}")))
}

/// Decodes a wire noise share, naming `field` in errors.
pub fn decode_noise_share(
    share: &cohortex_proto::v1::NoiseShare,
    field: &str,
) -> Result<NoiseShare, Status> {
    let member = u16::try_from(share.member)
        .map_err(|_| Status::invalid_argument(format!("{field}.member: not a member index")))?;
    Ok(NoiseShare {
        member,
        ciphertexts: decode_all(&share.ciphertexts, &format!("{field}.ciphertexts"))?,
        proof: decode(&share.proof, &format!("{field}.proof"))?,
    })
}

/// Encodes a noise share for the wire.
pub fn encode_noise_share(share: &NoiseShare) -> cohortex_proto::v1::NoiseShare {
    cohortex_proto::v1::NoiseShare {
        member: u32::from(share.member),
        ciphertexts: share.ciphertexts.iter().map(Wire::to_bytes).collect(),
        proof: share.proof.to_bytes(),
    }
}

/// The context a node's contribution to an order is bound to.
pub fn contribution_context(order_id: &[u8], listing: &str) -> Result<ProofContext, Status> {
    ProofContext::new(order_id, listing.as_bytes())
        .map_err(|error| Status::invalid_argument(format!("order_id or listing: {error}")))
}

/// The smallest committee threshold a node serves in: with t = 1 any single member (or
/// whoever receives one member's share) could decrypt alone.
pub const MIN_THRESHOLD: u16 = market::MIN_COMMITTEE_THRESHOLD;

/// One seat of the key committee, as pinned in a node's own configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitteeSeat {
    /// The seat's 1-based member index.
    pub member: MemberIndex,
    /// The account whose key signs that member's requests.
    pub account: AccountId,
    /// Where that member's Compute service answers (`https://host:port`).
    pub endpoint: String,
}

/// Why a committee cannot be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitteeError {
    /// The threshold is below [`MIN_THRESHOLD`].
    #[error("threshold {0} is below {MIN_THRESHOLD}: one member alone could decrypt")]
    ThresholdTooLow(u16),
    /// The threshold exceeds the number of seats.
    #[error("threshold {threshold} exceeds the committee's {members} members")]
    ThresholdTooHigh {
        /// The threshold.
        threshold: u16,
        /// Seats.
        members: usize,
    },
    /// The seats are not numbered 1, 2, … in order.
    #[error("seat {position} is member {member}; seats must be members 1, 2, … in order")]
    SeatOutOfOrder {
        /// 0-based position in the list.
        position: usize,
        /// The member index found there.
        member: u16,
    },
    /// Two seats share an account.
    #[error("members {0} and {1} have the same account")]
    SharedAccount(u16, u16),
    /// Two seats share an endpoint.
    #[error("members {0} and {1} have the same endpoint")]
    SharedEndpoint(u16, u16),
    /// This node's member index has no seat.
    #[error("member {0} has no seat in the committee")]
    NoSeat(u16),
    /// The record of answered feasibility searches cannot be read.
    #[error("the record of answered feasibility searches {path}: {reason}")]
    AnsweredRecord {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A release this member wrote to disk cannot be read back.
    #[error("the stored release {path}: {reason}")]
    StoredRelease {
        /// The file or folder.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The stored key share cannot be used.
    #[error("the stored key share {path}: {reason}")]
    StoredKeyShare {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// This node's own seat names another account.
    #[error("member {member}'s seat names account {seat}, but this node's key is account {own}")]
    NotOwnSeat {
        /// This node's member index.
        member: u16,
        /// The account on the seat.
        seat: AccountId,
        /// This node's account.
        own: AccountId,
    },
}

/// The key committee as a node pins it: threshold, members, accounts and endpoints come from
/// the node's own configuration, never from the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedCommittee {
    threshold: u16,
    seats: Vec<CommitteeSeat>,
}

/// An endpoint without a trailing slash, so that `http://a:1/` and `http://a:1` compare equal.
pub(crate) fn normal_endpoint(endpoint: &str) -> &str {
    endpoint.trim_end_matches('/')
}

impl PinnedCommittee {
    /// Checks and pins a committee: t ≥ [`MIN_THRESHOLD`], t ≤ n, seats numbered 1..=n in
    /// order, no account or endpoint on two seats.
    pub fn new(threshold: u16, seats: Vec<CommitteeSeat>) -> Result<Self, CommitteeError> {
        if threshold < MIN_THRESHOLD {
            return Err(CommitteeError::ThresholdTooLow(threshold));
        }
        if usize::from(threshold) > seats.len() {
            return Err(CommitteeError::ThresholdTooHigh {
                threshold,
                members: seats.len(),
            });
        }
        for (position, seat) in seats.iter().enumerate() {
            if usize::from(seat.member.get()) != position + 1 {
                return Err(CommitteeError::SeatOutOfOrder {
                    position,
                    member: seat.member.get(),
                });
            }
            for earlier in &seats[..position] {
                if earlier.account == seat.account {
                    return Err(CommitteeError::SharedAccount(
                        earlier.member.get(),
                        seat.member.get(),
                    ));
                }
                if normal_endpoint(&earlier.endpoint) == normal_endpoint(&seat.endpoint) {
                    return Err(CommitteeError::SharedEndpoint(
                        earlier.member.get(),
                        seat.member.get(),
                    ));
                }
            }
        }
        Ok(Self { threshold, seats })
    }

    /// t.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The seats, member 1 first.
    pub fn seats(&self) -> &[CommitteeSeat] {
        &self.seats
    }

    /// Refuses a ledger whose registered committee is not this one: the same threshold and
    /// the same accounts in the same seats. The ledger counts receipt co-signatures against its
    /// committee, so a node serves only when that committee is the one it pinned.
    pub fn check_ledger(
        &self,
        registered: Option<&market::state::CommitteeRecord>,
    ) -> Result<(), Status> {
        let Some(registered) = registered else {
            return Err(Status::failed_precondition(
                "ledger: no key committee is registered on the ledger; this node serves only \
                 once the committee pinned in its configuration is",
            ));
        };
        let accounts: Vec<AccountId> = self.seats.iter().map(|seat| seat.account).collect();
        if registered.threshold != self.threshold || registered.members != accounts {
            return Err(Status::failed_precondition(format!(
                "ledger: the key committee registered on the ledger ({} of {}) is not the one \
                 pinned in this node's configuration ({} of {})",
                registered.threshold,
                registered.members.len(),
                self.threshold,
                accounts.len()
            )));
        }
        Ok(())
    }

    /// The seat of `member`.
    pub fn seat(&self, member: MemberIndex) -> Option<&CommitteeSeat> {
        self.seats.iter().find(|seat| seat.member == member)
    }

    /// The seat held by `account`.
    pub fn seat_of(&self, account: &AccountId) -> Option<&CommitteeSeat> {
        self.seats.iter().find(|seat| &seat.account == account)
    }
}

/// Decodes one wire value, naming `field` in the error.
pub(crate) fn decode<T: Wire>(bytes: &[u8], field: &str) -> Result<T, Status> {
    T::from_bytes(bytes).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

/// Decodes wire values, naming `field[index]` in the error.
pub(crate) fn decode_all<T: Wire>(items: &[Vec<u8>], field: &str) -> Result<Vec<T>, Status> {
    items
        .iter()
        .enumerate()
        .map(|(index, bytes)| decode(bytes, &format!("{field}[{index}]")))
        .collect()
}
