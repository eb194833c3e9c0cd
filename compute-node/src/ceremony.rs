//! The key ceremony's public messages as committee members sign and check them.
//!
//! The coordinator relays every public DKG message (`zk::dkg`), and the operator who runs it
//! is not trusted. So each message a member sends is a statement it signs with its pinned
//! account key, and each member checks every statement against its own pinned committee:
//!
//! ```text
//! digest = H("cohortex/dkg/message/v1"; chain id, session id, round, member, body)
//! ```
//!
//! | round | body | signed by |
//! |---|---|---|
//! | `broadcast` | the dealer's `DealerBroadcast` (Feldman commitments, proof of knowledge) | the dealer |
//! | `complaints` | `DkgComplaints`: the digest of the broadcasts it checked and its complaints | each member |
//! | `justifications` | `DkgJustifications`: the digest of the complaints it saw and its answers | each dealer |
//! | `confirmation` | `DkgConfirmation`: the digest of the whole transcript and the committee it derived | each member |
//!
//! A relay can then neither substitute a dealer's commitments nor answer a complaint with a
//! share of its own polynomial: neither would carry the dealer's signature. What a relay (or a
//! dealer that signs two broadcasts) can still do is show members different messages. The
//! chained digests close that: every member's complaints name the broadcasts it saw, every
//! justification names the complaints its dealer saw, and a member uses its key only once all
//! n members have confirmed the same transcript and committee. One statement is required
//! from every seat in every round, so nothing can be left out for some members only.

use cohortex_proto::v1::{DkgComplaints, DkgConfirmation, DkgJustifications, SignedDkgMessage};
use cohortex_types::labels::{LABEL_DKG_MESSAGE, LABEL_DKG_TRANSCRIPT};
use cohortex_types::{tagged_hash, Hash32, TaggedHasher};
use ed25519_dalek::{Signature, Signer, SigningKey};
use prost::Message;
use tonic::{Code, Status};
use zk::MemberIndex;

use crate::protocol::PinnedCommittee;

/// The rounds whose statements members sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeremonyRound {
    /// A dealer's Feldman commitments and proof of knowledge (`DealerBroadcast`).
    Broadcast,
    /// A member's complaints (`DkgComplaints`).
    Complaints,
    /// A dealer's answers to complaints (`DkgJustifications`).
    Justifications,
    /// A member's confirmation of the transcript (`DkgConfirmation`).
    Confirmation,
}

impl CeremonyRound {
    /// The round's name, as signed.
    pub fn name(self) -> &'static str {
        match self {
            CeremonyRound::Broadcast => "broadcast",
            CeremonyRound::Complaints => "complaints",
            CeremonyRound::Justifications => "justifications",
            CeremonyRound::Confirmation => "confirmation",
        }
    }
}

/// Why a member refuses a ceremony message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeremonyError {
    /// The round does not carry exactly one statement per seat of the pinned committee.
    #[error("{field}: {found} statements, the pinned committee has {seats} members")]
    WrongCount {
        /// The request field.
        field: String,
        /// How many were sent.
        found: usize,
        /// How many seats the committee has.
        seats: usize,
    },
    /// A statement names a member with no seat, or a seat twice.
    #[error("{field}: member {member} {reason}")]
    BadMember {
        /// The request field, with its index.
        field: String,
        /// The member named.
        member: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The signature is not the named member's pinned account key's over this chain, session
    /// and round.
    #[error(
        "{field}: not signed by member {member}'s pinned account key for this session and round"
    )]
    NotSignedByMember {
        /// The request field, with its index.
        field: String,
        /// The member named.
        member: u16,
    },
    /// The statement's body does not decode, or speaks for another member.
    #[error("{field}: {reason}")]
    Malformed {
        /// The request field, with its index.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The broadcasts shown name, for this member, a broadcast other than the one it dealt in
    /// this session.
    #[error("broadcasts: the broadcast signed in member {member}'s name is not the one this member dealt in this session")]
    NotOwnBroadcast {
        /// This member.
        member: u16,
    },
    /// A member saw other messages than this one: the members were shown different
    /// broadcasts, complaints or justifications, and the ceremony is abandoned.
    #[error("{field}: member {member} {what} than this member; the members were shown different messages, so this ceremony is abandoned")]
    Diverged {
        /// The request field, with its index.
        field: String,
        /// The member whose view differs.
        member: u16,
        /// What differs.
        what: &'static str,
    },
}

impl CeremonyError {
    /// The gRPC code the refusal carries.
    pub fn code(&self) -> Code {
        match self {
            CeremonyError::WrongCount { .. } | CeremonyError::Malformed { .. } => {
                Code::InvalidArgument
            }
            CeremonyError::BadMember { .. } | CeremonyError::NotSignedByMember { .. } => {
                Code::PermissionDenied
            }
            CeremonyError::Diverged { .. } | CeremonyError::NotOwnBroadcast { .. } => {
                Code::FailedPrecondition
            }
        }
    }
}

/// A ceremony message refused, as the node's refusal of the same kind.
impl From<CeremonyError> for crate::error::NodeError {
    fn from(error: CeremonyError) -> Self {
        use crate::error::NodeError;
        let message = error.to_string();
        match error {
            CeremonyError::WrongCount { .. } | CeremonyError::Malformed { .. } => {
                NodeError::BadRequest(message)
            }
            CeremonyError::BadMember { .. } | CeremonyError::NotSignedByMember { .. } => {
                NodeError::NotPermitted(message)
            }
            CeremonyError::Diverged { .. } | CeremonyError::NotOwnBroadcast { .. } => {
                NodeError::NotReady(message)
            }
        }
    }
}

impl From<CeremonyError> for Status {
    fn from(error: CeremonyError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// What a member signs for one statement.
pub fn message_digest(
    chain_id: &Hash32,
    session: &[u8],
    round: CeremonyRound,
    member: MemberIndex,
    body: &[u8],
) -> Hash32 {
    tagged_hash(
        LABEL_DKG_MESSAGE,
        &[
            chain_id.as_bytes(),
            session,
            round.name().as_bytes(),
            &member.get().to_be_bytes(),
            body,
        ],
    )
}

/// `key`'s signed statement for `member` in `round`.
pub fn sign_statement(
    key: &SigningKey,
    chain_id: &Hash32,
    session: &[u8],
    round: CeremonyRound,
    member: MemberIndex,
    body: Vec<u8>,
) -> SignedDkgMessage {
    let digest = message_digest(chain_id, session, round, member, &body);
    SignedDkgMessage {
        member: u32::from(member.get()),
        signature: key.sign(digest.as_bytes()).to_bytes().to_vec(),
        body,
    }
}

/// One checked statement: the member that signed it and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The signing member.
    pub member: MemberIndex,
    /// The signed body.
    pub body: Vec<u8>,
}

/// Checks that `messages` hold exactly one statement per seat of `committee`, each signed by
/// that seat's pinned account key for this chain, session and round; returns them in member
/// order.
pub fn verify_round(
    committee: &PinnedCommittee,
    chain_id: &Hash32,
    session: &[u8],
    round: CeremonyRound,
    messages: &[SignedDkgMessage],
    field: &str,
) -> Result<Vec<Statement>, CeremonyError> {
    let seats = committee.seats().len();
    if messages.len() != seats {
        return Err(CeremonyError::WrongCount {
            field: field.to_string(),
            found: messages.len(),
            seats,
        });
    }
    let mut statements: Vec<Statement> = Vec::with_capacity(seats);
    for (index, message) in messages.iter().enumerate() {
        let at = || format!("{field}[{index}]");
        let bad_member = |reason| CeremonyError::BadMember {
            field: at(),
            member: message.member,
            reason,
        };
        let seat = u16::try_from(message.member)
            .ok()
            .and_then(MemberIndex::new)
            .and_then(|member| committee.seat(member))
            .ok_or_else(|| bad_member("holds no seat in the pinned committee"))?;
        if statements
            .iter()
            .any(|statement| statement.member == seat.member)
        {
            return Err(bad_member("sent two statements in this round"));
        }
        let not_signed = || CeremonyError::NotSignedByMember {
            field: at(),
            member: seat.member.get(),
        };
        let key = seat.account.verifying_key().map_err(|_| not_signed())?;
        let signature =
            <[u8; 64]>::try_from(message.signature.as_slice()).map_err(|_| not_signed())?;
        let digest = message_digest(chain_id, session, round, seat.member, &message.body);
        key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| not_signed())?;
        statements.push(Statement {
            member: seat.member,
            body: message.body.clone(),
        });
    }
    statements.sort_by_key(|statement| statement.member);
    Ok(statements)
}

/// The digest of one round's statements (in member order), chained to `previous`: what the
/// next round's statements name, so that a member whose view differs is found out.
pub fn round_digest(
    session: &[u8],
    round: CeremonyRound,
    previous: Option<&Hash32>,
    statements: &[Statement],
) -> Hash32 {
    let mut hasher = TaggedHasher::new(LABEL_DKG_TRANSCRIPT);
    hasher.update_part(session);
    hasher.update_part(round.name().as_bytes());
    hasher.update_part(previous.map_or(&[][..], |digest| digest.as_bytes()));
    for statement in statements {
        hasher.update_part(&statement.member.get().to_be_bytes());
        hasher.update_part(&statement.body);
    }
    hasher.finalize()
}

fn digest_field(bytes: &[u8], field: &str) -> Result<Hash32, CeremonyError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash32)
        .map_err(|_| CeremonyError::Malformed {
            field: field.to_string(),
            reason: "the digest is not 32 bytes".into(),
        })
}

fn decode_body<T: Message + Default>(
    statement: &Statement,
    field: &str,
) -> Result<T, CeremonyError> {
    T::decode(statement.body.as_slice()).map_err(|error| CeremonyError::Malformed {
        field: field.to_string(),
        reason: format!("the statement does not decode: {error}"),
    })
}

/// Decodes a member's `DkgComplaints` and checks it names the broadcasts this member saw.
pub fn complaints_over(
    statement: &Statement,
    broadcasts_digest: &Hash32,
    field: &str,
) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let body: DkgComplaints = decode_body(statement, field)?;
    require_same_view(
        statement,
        &body.broadcasts_digest,
        broadcasts_digest,
        field,
        "checked other broadcasts",
    )?;
    Ok(body.complaints)
}

/// Decodes a dealer's `DkgJustifications` and checks it names the complaints this member saw.
pub fn justifications_over(
    statement: &Statement,
    complaints_digest: &Hash32,
    field: &str,
) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let body: DkgJustifications = decode_body(statement, field)?;
    require_same_view(
        statement,
        &body.complaints_digest,
        complaints_digest,
        field,
        "answered other complaints",
    )?;
    Ok(body.justifications)
}

/// Refuses a statement whose named digest of the round before is not this member's.
fn require_same_view(
    statement: &Statement,
    named: &[u8],
    own: &Hash32,
    field: &str,
    what: &'static str,
) -> Result<(), CeremonyError> {
    if digest_field(named, field)? != *own {
        return Err(CeremonyError::Diverged {
            field: field.to_string(),
            member: statement.member.get(),
            what,
        });
    }
    Ok(())
}

/// The confirmation body a member signs: the transcript digest and the committee it derived.
pub fn confirmation_body(transcript_digest: &Hash32, committee: Vec<u8>) -> Vec<u8> {
    DkgConfirmation {
        transcript_digest: transcript_digest.as_bytes().to_vec(),
        committee,
    }
    .encode_to_vec()
}

/// Checks that every member confirmed exactly what this member did.
pub fn check_confirmations(
    statements: &[Statement],
    own_body: &[u8],
    field: &str,
) -> Result<(), CeremonyError> {
    for (index, statement) in statements.iter().enumerate() {
        if statement.body != own_body {
            return Err(CeremonyError::Diverged {
                field: format!("{field}[{index}]"),
                member: statement.member.get(),
                what: "confirmed another transcript or committee",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::CommitteeSeat;
    use cohortex_types::AccountId;
    use rand::rngs::OsRng;

    fn committee(keys: &[SigningKey]) -> PinnedCommittee {
        let seats = keys
            .iter()
            .enumerate()
            .map(|(position, key)| CommitteeSeat {
                member: MemberIndex::new(position as u16 + 1).unwrap(),
                account: AccountId::of(key),
                endpoint: format!("https://127.0.0.1:{}", 9000 + position),
            })
            .collect();
        PinnedCommittee::new(2, seats).unwrap()
    }

    fn signed(keys: &[SigningKey], chain: &Hash32, round: CeremonyRound) -> Vec<SignedDkgMessage> {
        keys.iter()
            .enumerate()
            .map(|(position, key)| {
                let member = MemberIndex::new(position as u16 + 1).unwrap();
                sign_statement(key, chain, b"s", round, member, vec![position as u8; 4])
            })
            .collect()
    }

    #[test]
    fn statements_of_every_seat_verify_in_member_order() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut OsRng)).collect();
        let chain = tagged_hash("chain", &[]);
        let mut messages = signed(&keys, &chain, CeremonyRound::Complaints);
        messages.reverse();
        let statements = verify_round(
            &committee(&keys),
            &chain,
            b"s",
            CeremonyRound::Complaints,
            &messages,
            "complaints",
        )
        .unwrap();
        let members: Vec<u16> = statements.iter().map(|s| s.member.get()).collect();
        assert_eq!(members, vec![1, 2, 3]);
    }

    #[test]
    fn statement_signed_for_another_round_session_or_chain_is_refused() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut OsRng)).collect();
        let chain = tagged_hash("chain", &[]);
        let pinned = committee(&keys);
        let messages = signed(&keys, &chain, CeremonyRound::Complaints);
        let other_chain = tagged_hash("other chain", &[]);
        for (chain_id, session, round) in [
            (&chain, &b"s"[..], CeremonyRound::Justifications),
            (&chain, &b"t"[..], CeremonyRound::Complaints),
            (&other_chain, &b"s"[..], CeremonyRound::Complaints),
        ] {
            let refused =
                verify_round(&pinned, chain_id, session, round, &messages, "x").unwrap_err();
            assert!(
                matches!(refused, CeremonyError::NotSignedByMember { member: 1, .. }),
                "{refused}"
            );
            assert_eq!(refused.code(), Code::PermissionDenied);
        }
    }

    #[test]
    fn missing_or_repeated_seat_is_refused() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut OsRng)).collect();
        let chain = tagged_hash("chain", &[]);
        let pinned = committee(&keys);
        let mut messages = signed(&keys, &chain, CeremonyRound::Broadcast);
        messages.pop();
        let short = verify_round(
            &pinned,
            &chain,
            b"s",
            CeremonyRound::Broadcast,
            &messages,
            "b",
        );
        assert!(matches!(
            short,
            Err(CeremonyError::WrongCount {
                found: 2,
                seats: 3,
                ..
            })
        ));
        messages.push(messages[0].clone());
        let repeated = verify_round(
            &pinned,
            &chain,
            b"s",
            CeremonyRound::Broadcast,
            &messages,
            "b",
        );
        assert!(matches!(
            repeated,
            Err(CeremonyError::BadMember { member: 1, .. })
        ));
    }

    #[test]
    fn complaints_over_other_broadcasts_diverge() {
        let statement = Statement {
            member: MemberIndex::new(2).unwrap(),
            body: DkgComplaints {
                broadcasts_digest: vec![7; 32],
                complaints: Vec::new(),
            }
            .encode_to_vec(),
        };
        assert!(complaints_over(&statement, &Hash32([7; 32]), "c").is_ok());
        let diverged = complaints_over(&statement, &Hash32([8; 32]), "c").unwrap_err();
        assert!(matches!(
            diverged,
            CeremonyError::Diverged { member: 2, .. }
        ));
    }
}
