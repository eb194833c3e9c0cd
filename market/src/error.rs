//! Why a transaction is refused.
//!
//! A refused transaction changes nothing: the state machine checks every rule before it
//! mutates anything (see `state/mod.rs`).
//!
//! Refusals reach callers as gRPC status messages, which travel in an HTTP/2 trailer of a few
//! KiB, so no message quotes more than [`MAX_EXCERPT_BYTES`] of what a caller sent: listing ids
//! are shown through [`excerpt`] (a transaction may name an unknown listing of megabytes).

use crate::hash::Hash32;
use crate::tx::{AccountId, ListingId, OrderId, Purpose, ReceiptId, Role};
use thiserror::Error;

pub use cohortex_types::text::{
    bounded_message, excerpt, MAX_COMPOSED_MESSAGE_BYTES, MAX_EXCERPT_BYTES,
};

/// A listing id as an error message shows it ([`excerpt`]).
fn shown(listing: &ListingId) -> String {
    excerpt(&listing.0)
}

/// A transaction the ledger refuses, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxError {
    /// The envelope is larger than the ledger accepts.
    #[error("transaction is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope version byte is not one this ledger reads.
    #[error("unsupported transaction version {0}")]
    UnsupportedVersion(u8),
    /// The envelope or body does not decode.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// The signer's key is not a valid, non-weak ed25519 point.
    #[error("account key {0} is not a valid ed25519 key")]
    InvalidKey(AccountId),
    /// The signature does not verify under the signer's key.
    #[error("bad signature from {0}")]
    BadSignature(AccountId),
    /// The transaction was signed for another ledger.
    #[error("transaction is for chain {got}, this ledger is {expected}")]
    WrongChain {
        /// This ledger's chain id.
        expected: Hash32,
        /// The chain id in the transaction.
        got: Hash32,
    },
    /// The signer (or a named account) is not registered.
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    /// The account's role does not allow this action.
    #[error("account {account} is a {actual}, this needs a {required}")]
    WrongRole {
        /// The account.
        account: AccountId,
        /// Its role.
        actual: Role,
        /// The role(s) the action needs.
        required: &'static str,
    },
    /// The account is already registered.
    #[error("account {0} is already registered")]
    AlreadyRegistered(AccountId),
    /// A patient or buyer registration not signed by the account itself.
    #[error("a {role} registers itself: signer {signer} is not account {account}")]
    RegistrationNotSelfSigned {
        /// The role asked for.
        role: Role,
        /// Who signed.
        signer: AccountId,
        /// The account being registered.
        account: AccountId,
    },
    /// A privileged role (anything but patient or buyer) must be admitted by an issuer.
    #[error("a {role} must be admitted by an issuer; signer {signer} is not registered")]
    AdmissionRequiresIssuer {
        /// The role asked for.
        role: Role,
        /// Who signed.
        signer: AccountId,
    },
    /// The nonce was already used: a replayed transaction.
    #[error("replayed transaction: account {account} expects nonce {expected}, got {got}")]
    ReplayedNonce {
        /// The signer.
        account: AccountId,
        /// The next nonce the account accepts.
        expected: u64,
        /// The nonce in the transaction.
        got: u64,
    },
    /// The nonce skips ahead of the next expected one.
    #[error("nonce gap: account {account} expects nonce {expected}, got {got}")]
    NonceGap {
        /// The signer.
        account: AccountId,
        /// The next nonce the account accepts.
        expected: u64,
        /// The nonce in the transaction.
        got: u64,
    },
    /// The account's balance does not cover the amount.
    #[error("insufficient funds: {account} has {balance} credits, needs {needed}")]
    InsufficientFunds {
        /// The account.
        account: AccountId,
        /// Its balance.
        balance: u64,
        /// What the transaction needs.
        needed: u64,
    },
    /// An amount that must be positive is zero.
    #[error("amount must be positive")]
    ZeroAmount,
    /// An arithmetic result does not fit in 64 bits.
    #[error("amount overflows 64 bits")]
    AmountOverflow,
    /// A listing with this id exists already (withdrawn ids are not reused).
    #[error("listing {} already exists", shown(.0))]
    ListingExists(ListingId),
    /// No listing has this id.
    #[error("unknown listing {}", shown(.0))]
    UnknownListing(ListingId),
    /// The listing was withdrawn.
    #[error("listing {} is withdrawn", shown(.0))]
    ListingWithdrawn(ListingId),
    /// Only the owner may change or withdraw a listing.
    #[error(
        "account {signer} does not own listing {listing}",
        listing = shown(.listing)
    )]
    NotListingOwner {
        /// The listing.
        listing: ListingId,
        /// Who signed.
        signer: AccountId,
    },
    /// The listing's fields break a rule.
    #[error("invalid listing: {0}")]
    InvalidListing(&'static str),
    /// The listing does not allow this purpose.
    #[error(
        "listing {listing} does not allow purpose {purpose:?}",
        listing = shown(.listing)
    )]
    PurposeNotAllowed {
        /// The listing.
        listing: ListingId,
        /// The purpose asked for.
        purpose: Purpose,
    },
    /// A named fund is not a registered account with role fund.
    #[error("account {0} is not a registered fund")]
    NotAFund(AccountId),
    /// Consent signed by someone other than the patient it is for.
    #[error("consent for patient {patient} must be signed by the patient, not {signer}")]
    ConsentNotByPatient {
        /// The patient named in the consent.
        patient: AccountId,
        /// Who signed.
        signer: AccountId,
    },
    /// No active consent of the signer exists for this listing and purpose.
    #[error(
        "no active consent of {patient} for listing {listing} and purpose {purpose:?}",
        listing = shown(.listing)
    )]
    NoActiveConsent {
        /// The patient.
        patient: AccountId,
        /// The listing.
        listing: ListingId,
        /// The purpose.
        purpose: Purpose,
    },
    /// A personal privacy limit of zero, which would exclude the patient from every query.
    #[error("personal epsilon limit must be positive; revoke the consent instead")]
    ZeroPersonalLimit,
    /// A personal privacy limit below what the patient already spent, in every listing.
    #[error(
        "personal epsilon limit {limit_micro} for listing {listing} is below the {spent_micro} \
         micro-epsilon already spent on {patient}, over every listing",
        listing = shown(.listing)
    )]
    PersonalLimitBelowSpent {
        /// The patient.
        patient: AccountId,
        /// The listing.
        listing: ListingId,
        /// The limit asked for.
        limit_micro: u64,
        /// Already spent on the patient, over every listing.
        spent_micro: u64,
    },
    /// A time that must lie in the future does not.
    #[error("expiry {expires_at} is not after the block time {now}")]
    ExpiryNotInFuture {
        /// The expiry asked for.
        expires_at: u64,
        /// The block time.
        now: u64,
    },
    /// An order's expiry lies more than [`MAX_ORDER_LIFETIME_SECS`](crate::tx::MAX_ORDER_LIFETIME_SECS) after the block time.
    #[error("order expiry {expires_at} is more than 24 h after the block time: at most {latest}")]
    OrderExpiryTooFar {
        /// The expiry asked for.
        expires_at: u64,
        /// The latest expiry accepted now.
        latest: u64,
    },
    /// The order cannot be cancelled.
    #[error("order {order} cannot be cancelled: {reason}")]
    NotCancellable {
        /// The order.
        order: OrderId,
        /// Why.
        reason: &'static str,
    },
    /// The order's release is committed: it can no longer be cancelled, only receipted or
    /// refunded.
    #[error("order {0}'s release is committed; it can no longer be cancelled")]
    ReleaseCommitted(OrderId),
    /// An order must name at least one and at most `MAX_LISTINGS_PER_ORDER` listings, each once.
    #[error("invalid order: {0}")]
    InvalidOrder(&'static str),
    /// The listing's remaining privacy budget does not cover the request.
    #[error(
        "listing {listing} has {remaining_micro} micro-epsilon left, {requested_micro} requested",
        listing = shown(.listing)
    )]
    EpsilonBudgetExhausted {
        /// The listing.
        listing: ListingId,
        /// Budget left (total minus spent minus reserved).
        remaining_micro: u64,
        /// Requested.
        requested_micro: u64,
    },
    /// No order has this id.
    #[error("unknown order {0}")]
    UnknownOrder(OrderId),
    /// The order already has a receipt, or was settled or refunded.
    #[error("order {order} is {status}, not open")]
    OrderNotOpen {
        /// The order.
        order: OrderId,
        /// Its status.
        status: &'static str,
    },
    /// The order has passed its expiry; no receipt can be recorded for it.
    #[error("order {order} expired at {expires_at}")]
    OrderExpired {
        /// The order.
        order: OrderId,
        /// Its expiry.
        expires_at: u64,
    },
    /// The buyer asks for a refund before the order expired.
    #[error("order {order} expires at {expires_at}, block time is {now}")]
    OrderNotExpired {
        /// The order.
        order: OrderId,
        /// Its expiry.
        expires_at: u64,
        /// The block time.
        now: u64,
    },
    /// The receipt's query hash is not the order's.
    #[error("receipt query hash does not match order {0}")]
    QueryHashMismatch(OrderId),
    /// The receipt's listings are not exactly the order's, in the order's order.
    #[error("receipt listings do not match the listings of order {0}")]
    ReceiptListingsMismatch(OrderId),
    /// An order asks more ε of a listing than the listing lets one order spend.
    #[error("listing {listing} caps each order at {cap_micro} micro-epsilon; the order asks {requested_micro}")]
    EpsilonAboveOrderCap {
        /// The listing.
        listing: ListingId,
        /// Its per-order cap.
        cap_micro: u64,
        /// What the order asked.
        requested_micro: u64,
    },
    /// The receipt is over other contributions than the attested release committed for its
    /// order ([`Action::CommitAttestedRelease`](crate::tx::Action::CommitAttestedRelease)).
    #[error("receipt for order {0}: its contributions are not those of the release committed for the order")]
    ReceiptNotTheCommittedRelease(OrderId),
    /// The receipt's contributions root is not the root of its listings' contribution hashes.
    #[error("receipt for order {0}: contributions_root is not the root of its listings' contribution hashes")]
    ContributionsRootMismatch(OrderId),
    /// A listing's part of the receipt is not signed by the listing's owner.
    #[error("receipt: the contribution of listing {listing} is not attested by its owner {owner} (the node signs its participants, capacity and contribution)")]
    ContributionNotAttested {
        /// The listing.
        listing: ListingId,
        /// Its owner, whose signature is missing or wrong.
        owner: AccountId,
    },
    /// More ε debited from a listing than the order requested.
    #[error(
        "receipt debits {debited_micro} micro-epsilon from {listing}, but the order's ε, \
         to which its noise was calibrated, is {requested_micro}",
        listing = shown(.listing)
    )]
    EpsilonExceedsRequest {
        /// The listing.
        listing: ListingId,
        /// Debited in the receipt.
        debited_micro: u64,
        /// Requested in the order.
        requested_micro: u64,
    },
    /// A receipt names one patient in two of the order's listings: the privacy unit is the
    /// person, who takes part in an order once.
    #[error(
        "patient {patient} is named in listing {} and again in listing {}; a patient takes part in an order once",
        shown(.first),
        shown(.second)
    )]
    ParticipantInTwoListings {
        /// The patient.
        patient: AccountId,
        /// The first listing naming them.
        first: ListingId,
        /// The second.
        second: ListingId,
    },
    /// The participant list is not strictly ascending (so a participant could be counted twice).
    #[error("participants of listing {} are not strictly ascending", shown(.0))]
    ParticipantsNotCanonical(ListingId),
    /// Staged participants must be strictly ascending, each after the last one staged for the
    /// listing, and a chunk holds between 1 and `MAX_STAGED_PER_TX` of them.
    #[error(
        "participants staged for listing {listing} of order {order}: {reason} (a chunk holds \
         1 to {max} accounts, strictly ascending and after those staged before)",
        listing = shown(.listing),
        max = crate::tx::MAX_STAGED_PER_TX
    )]
    StagedParticipantsNotCanonical {
        /// The order.
        order: OrderId,
        /// The listing.
        listing: ListingId,
        /// Which rule the chunk breaks.
        reason: &'static str,
    },
    /// A listing the order does not name.
    #[error("order {order} does not name listing {}", shown(.listing))]
    ListingNotInOrder {
        /// The order.
        order: OrderId,
        /// The listing.
        listing: ListingId,
    },
    /// A receipt that both names a listing's participants and has them staged: the staged
    /// list is the one the listing's node attested, so the receipt's part must name none.
    #[error(
        "receipt names participants for listing {} whose participants are staged; name none",
        shown(.0)
    )]
    ParticipantsStagedAndNamed(ListingId),
    /// Fewer participants than the listing's minimum cohort size.
    #[error(
        "listing {listing} needs at least {min} participants, receipt has {got}",
        listing = shown(.listing)
    )]
    CohortTooSmall {
        /// The listing.
        listing: ListingId,
        /// Its minimum cohort size.
        min: u32,
        /// Participants in the receipt.
        got: usize,
    },
    /// A participant in the receipt has no active consent (never granted, revoked or expired).
    #[error(
        "participant {patient} has no active consent for listing {listing} and purpose {purpose:?}",
        listing = shown(.listing)
    )]
    ParticipantWithoutConsent {
        /// The participant.
        patient: AccountId,
        /// The listing.
        listing: ListingId,
        /// The order's purpose.
        purpose: Purpose,
    },
    /// A participant whose personal privacy limit the receipt's debit would exceed.
    #[error(
        "participant {patient} of listing {listing} has spent {spent_micro}, over every listing, of \
         a personal limit of {limit_micro} micro-epsilon; the receipt debits {debited_micro}",
        listing = shown(.listing)
    )]
    PersonalBudgetExceeded {
        /// The participant.
        patient: AccountId,
        /// The listing.
        listing: ListingId,
        /// Spent on the patient so far, over every listing.
        spent_micro: u64,
        /// The limit in the consent used by the order.
        limit_micro: u64,
        /// Debited by the receipt.
        debited_micro: u64,
    },
    /// No receipt has this id.
    #[error("unknown receipt {0}")]
    UnknownReceipt(ReceiptId),
    /// The receipt belongs to a different order.
    #[error("receipt {receipt} is for order {receipt_order}, not {order}")]
    ReceiptForAnotherOrder {
        /// The receipt.
        receipt: ReceiptId,
        /// The order it completes.
        receipt_order: OrderId,
        /// The order being settled.
        order: OrderId,
    },
    /// The order was settled already.
    #[error("order {0} is already settled")]
    AlreadySettled(OrderId),
    /// The order was refunded already.
    #[error("order {0} is already refunded")]
    AlreadyRefunded(OrderId),
    /// A release of the order was already committed.
    #[error("a release of order {0} is already committed")]
    ReleaseAlreadyCommitted(OrderId),
    /// The committed member sets are malformed.
    #[error("invalid release commitment: {0}")]
    InvalidRelease(&'static str),
    /// The committee registration breaks a rule (threshold, member count, duplicates).
    #[error("invalid committee: {0}")]
    InvalidCommittee(&'static str),
    /// A committee member is not a registered compute node.
    #[error("committee member {member} ({account}) is not a registered compute node")]
    CommitteeMemberNotANode {
        /// The member index.
        member: u16,
        /// Its account.
        account: AccountId,
    },
    /// The ledger already has a key committee.
    #[error("a key committee is already registered on this ledger")]
    CommitteeAlreadyRegistered,
    /// A receipt without enough valid member co-signatures.
    #[error(
        "receipt for order {order} carries {valid} valid co-signature(s) of committee members; \
         the committee's threshold is {threshold}"
    )]
    ReceiptNotCosigned {
        /// The order.
        order: OrderId,
        /// Valid co-signatures of distinct registered members.
        valid: usize,
        /// How many are needed.
        threshold: u16,
    },
    /// A co-signature names no member of the committee, repeats one, or does not verify.
    #[error("receipt for order {order}: the co-signature of member {member} {problem}")]
    BadCosignature {
        /// The order.
        order: OrderId,
        /// The member index it names.
        member: u16,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A feasibility receipt for an order whose purpose is not trial feasibility.
    #[error("order {0} is not a trial-feasibility order, so it takes no feasibility receipt")]
    NotAFeasibilityOrder(OrderId),
    /// A trial posting breaks a rule (id, summary, criteria size, listings, expiry).
    #[error("invalid trial: {0}")]
    InvalidTrial(String),
    /// A trial with this id is already on the ledger.
    #[error("trial `{0}` is already posted")]
    TrialExists(String),
    /// No trial with this id is on the ledger.
    #[error("no trial `{0}` is posted")]
    UnknownTrial(String),
    /// The trial's expiry has passed: it takes no more replies.
    #[error("trial `{trial}` expired at {expires_at}")]
    TrialExpired {
        /// The trial.
        trial: String,
        /// Its expiry.
        expires_at: u64,
    },
    /// A reply for a listing the trial was not posted to.
    #[error("trial `{trial}` was not posted to listing {listing}")]
    TrialNotOnListing {
        /// The trial.
        trial: String,
        /// The listing.
        listing: ListingId,
    },
    /// A reply whose attestation is not the listing owner's signature.
    #[error("the reply to trial `{trial}` is not attested by the owner of listing {listing}")]
    TrialReplyNotAttested {
        /// The trial.
        trial: String,
        /// The listing.
        listing: ListingId,
    },
    /// The same reply (by hash) was already recorded, or the trial holds its maximum.
    #[error("trial `{trial}`: {reason}")]
    TrialReplyRefused {
        /// The trial.
        trial: String,
        /// Why.
        reason: &'static str,
    },
    /// A co-signed receipt on a ledger with no committee registered.
    #[error("no key committee is registered on this ledger, so no co-signature can be checked")]
    NoCommittee,
    /// The order has no receipt yet, so it cannot be settled.
    #[error("order {0} has no receipt yet")]
    OrderNotComputed(OrderId),
    /// The signer may not settle or refund this order.
    #[error("account {signer} may not act on order {order}")]
    NotOrderParty {
        /// The order.
        order: OrderId,
        /// Who signed.
        signer: AccountId,
    },
}

impl From<cohortex_types::InvalidKey> for TxError {
    fn from(error: cohortex_types::InvalidKey) -> Self {
        TxError::InvalidKey(error.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_naming_a_megabyte_listing_id_stays_short() {
        let listing = ListingId::new("x".repeat(1 << 20));
        let message = TxError::UnknownListing(listing.clone()).to_string();
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(message.ends_with("(1048576 bytes)"), "{message}");
        let message = TxError::CohortTooSmall {
            listing,
            min: 5,
            got: 1,
        }
        .to_string();
        assert!(message.len() < 200, "{} bytes", message.len());
    }
}
