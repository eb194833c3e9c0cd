//! One error enum per API layer. Every variant names what failed so that a caller can
//! report it (which dealer, which member, which field) without guessing.

use crate::shamir::MemberIndex;

/// Errors from decoding untrusted bytes (see [`crate::wire`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before `field` was complete.
    #[error("input truncated while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The first four bytes are not the Cohortex zk magic.
    #[error("bad magic: not a cohortex zk object")]
    BadMagic,
    /// The encoding version is not one this build reads.
    #[error("unsupported encoding version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The type tag names a different object than the one requested.
    #[error("wrong object type: expected {expected}, found tag {found}")]
    WrongType {
        /// The type the caller asked for.
        expected: &'static str,
        /// The tag found in the input.
        found: u8,
    },
    /// `field` is not a canonical Ristretto encoding.
    #[error("{field} is not a canonical ristretto255 point encoding")]
    NonCanonicalPoint {
        /// The field being read.
        field: &'static str,
    },
    /// `field` encodes the identity point, which no honest message contains.
    #[error("{field} is the identity point")]
    IdentityPoint {
        /// The field being read.
        field: &'static str,
    },
    /// `field` is not a canonical (fully reduced) scalar.
    #[error("{field} is not a canonical scalar")]
    NonCanonicalScalar {
        /// The field being read.
        field: &'static str,
    },
    /// A declared length exceeds the limit for `field`.
    #[error("{field} has length {len}, more than the limit {max}")]
    LengthTooLarge {
        /// The field being read.
        field: &'static str,
        /// The declared length.
        len: u64,
        /// The largest length accepted.
        max: u64,
    },
    /// Bytes remain after the object was decoded.
    #[error("{count} trailing bytes after the object")]
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
    /// `field` decoded but violates an invariant of its type.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Errors from verifying a zero-knowledge proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof does not verify against its statement and context.
    #[error("{proof} proof does not verify")]
    VerificationFailed {
        /// Which kind of proof failed.
        proof: &'static str,
    },
    /// The statement and the proof disagree in shape (number of values, bit size).
    #[error("{proof} proof has the wrong shape: {reason}")]
    Malformed {
        /// Which kind of proof.
        proof: &'static str,
        /// What does not match.
        reason: String,
    },
    /// The bit size is not one of 8, 16, 32 or 64.
    #[error("unsupported range bit size {bits}: use 8, 16, 32 or 64")]
    UnsupportedBitSize {
        /// The requested bit size.
        bits: usize,
    },
    /// A prover was asked to prove a value that is outside the range.
    #[error("value at index {index} is outside [0, 2^{bits})")]
    ValueOutOfRange {
        /// Position of the value in the vector.
        index: usize,
        /// The bit size of the range.
        bits: usize,
    },
    /// A prover was given openings that do not match the ciphertexts.
    #[error("opening at index {index} does not match its ciphertext")]
    OpeningMismatch {
        /// Position of the value in the vector.
        index: usize,
    },
    /// One or more proofs in a batch failed; the indices name them.
    #[error("batch verification failed for items {failed:?}")]
    BatchFailed {
        /// Indices (in insertion order) of the items that fail on their own.
        failed: Vec<usize>,
    },
}

/// Errors from the distributed key generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkgError {
    /// The threshold and committee size are not usable.
    #[error("invalid dkg parameters: {reason}")]
    InvalidParameters {
        /// What is wrong.
        reason: String,
    },
    /// A message names a member outside 1..=n.
    #[error("member index {index} is outside the committee 1..={members}")]
    UnknownMember {
        /// The index in the message.
        index: u16,
        /// Committee size.
        members: u16,
    },
    /// Two messages claim the same sender for the same round.
    #[error("duplicate {round} message from member {member}")]
    DuplicateMessage {
        /// The round.
        round: &'static str,
        /// The sender.
        member: MemberIndex,
    },
    /// A message was meant for another member or another session.
    #[error("{round} message is for {reason}")]
    Misaddressed {
        /// The round.
        round: &'static str,
        /// Why it is not for this member.
        reason: String,
    },
    /// Fewer than `threshold` dealers remain qualified.
    #[error("only {qualified} dealers are qualified, fewer than the threshold {threshold}; excluded: {excluded}")]
    NotEnoughQualified {
        /// Qualified dealers.
        qualified: usize,
        /// The threshold t.
        threshold: u16,
        /// The exclusions, rendered.
        excluded: String,
    },
}

/// Why a dealer was excluded from the qualified set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkgFault {
    /// The dealer's proof of knowledge of its secret does not verify.
    #[error("dealer {dealer}: proof of knowledge of its constant term does not verify")]
    BadProofOfKnowledge {
        /// The dealer.
        dealer: MemberIndex,
    },
    /// The dealer's commitment vector has the wrong length for the threshold.
    #[error("dealer {dealer}: {found} commitments, expected {expected}")]
    WrongCommitmentCount {
        /// The dealer.
        dealer: MemberIndex,
        /// Commitments found.
        found: usize,
        /// Commitments expected (= t).
        expected: usize,
    },
    /// The dealer sent no broadcast.
    #[error("dealer {dealer}: sent no commitments")]
    MissingBroadcast {
        /// The dealer.
        dealer: MemberIndex,
    },
    /// A member complained about its share and the dealer's public answer does not verify.
    #[error("dealer {dealer}: share for member {recipient} does not match its commitments")]
    BadShare {
        /// The dealer.
        dealer: MemberIndex,
        /// The member whose share failed.
        recipient: MemberIndex,
    },
    /// A member complained and the dealer did not answer with the share.
    #[error("dealer {dealer}: did not answer the complaint of member {recipient}")]
    UnansweredComplaint {
        /// The dealer.
        dealer: MemberIndex,
        /// The complaining member.
        recipient: MemberIndex,
    },
}

/// Errors from threshold key switching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySwitchError {
    /// The share's Chaum-Pedersen proof does not verify.
    #[error("key-switch share from member {member} has an invalid proof")]
    BadProof {
        /// The member whose share was rejected.
        member: MemberIndex,
    },
    /// The share comes from a member the committee does not know.
    #[error("key-switch share from unknown member {member}")]
    UnknownMember {
        /// The claimed member.
        member: MemberIndex,
    },
    /// Two shares claim the same member.
    #[error("duplicate key-switch share from member {member}")]
    DuplicateShare {
        /// The member.
        member: MemberIndex,
    },
    /// The share covers a different number of ciphertexts than requested.
    #[error(
        "key-switch share from member {member} covers {found} ciphertexts, expected {expected}"
    )]
    WrongLength {
        /// The member.
        member: MemberIndex,
        /// Ciphertexts covered.
        found: usize,
        /// Ciphertexts expected.
        expected: usize,
    },
    /// Fewer than t valid shares: the committee cannot switch the key.
    #[error("{valid} valid key-switch shares, the threshold is {threshold}{}", render_rejections(.rejected))]
    NotEnoughShares {
        /// Shares that verified.
        valid: usize,
        /// The threshold t.
        threshold: u16,
        /// Shares that were rejected, with why.
        rejected: Vec<KeySwitchError>,
    },
}

fn render_rejections(rejected: &[KeySwitchError]) -> String {
    if rejected.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = rejected.iter().map(ToString::to_string).collect();
    format!("; rejected: {}", parts.join("; "))
}

/// Errors from decrypting a bounded integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The plaintext is not within ±`max_abs` of zero.
    #[error("plaintext is outside the decryptable range ±{max_abs}")]
    OutOfRange {
        /// The table's configured bound.
        max_abs: u64,
    },
    /// The decryption table configuration cannot be used.
    #[error("invalid decryption table configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The on-disk table cache could not be read or written.
    #[error("decryption table cache at {path}: {reason}")]
    Cache {
        /// The cache file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}
