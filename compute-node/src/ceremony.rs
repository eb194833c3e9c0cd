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
//! | `complaints` | [`ComplaintsBody`]: the digest of the broadcasts it checked and its complaints | each member |
//! | `justifications` | [`JustificationsBody`]: the digest of the complaints it saw and its answers | each dealer |
//! | `confirmation` | [`ConfirmationBody`]: the digest of the whole transcript and the committee it derived | each member |
//!
//! A relay can then neither substitute a dealer's commitments nor answer a complaint with a
//! share of its own polynomial: neither would carry the dealer's signature. What a relay (or a
//! dealer that signs two broadcasts) can still do is show members different messages. The
//! chained digests close that: every member's complaints name the broadcasts it saw, every
//! justification names the complaints its dealer saw, and a member uses its key only once all
//! n members have confirmed the same transcript and committee. One statement is required
//! from every seat in every round, so nothing can be left out for some members only.

use cohortex_types::labels::{LABEL_DKG_MESSAGE, LABEL_DKG_TRANSCRIPT};
use cohortex_types::{tagged_hash, Hash32, TaggedHasher};
use ed25519_dalek::{Signature, Signer, SigningKey};
use zk::MemberIndex;

use crate::protocol::PinnedCommittee;

/// The rounds whose statements members sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeremonyRound {
    /// A dealer's Feldman commitments and proof of knowledge (`DealerBroadcast`).
    Broadcast,
    /// A member's complaints ([`ComplaintsBody`]).
    Complaints,
    /// A dealer's answers to complaints ([`JustificationsBody`]).
    Justifications,
    /// A member's confirmation of the transcript ([`ConfirmationBody`]).
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

/// A statement as a member signed it, or as the relay claims one did: checked only by
/// [`verify_round`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedStatement {
    /// The member the statement claims to come from (1-based, as sent: not yet checked).
    pub member: u32,
    /// The round's statement: a `DealerBroadcast`, or a [`ComplaintsBody`],
    /// [`JustificationsBody`] or [`ConfirmationBody`] in its signed encoding.
    pub body: Vec<u8>,
    /// The Ed25519 signature over [`message_digest`], as sent.
    pub signature: Vec<u8>,
}

/// `key`'s signed statement for `member` in `round`.
pub fn sign_statement(
    key: &SigningKey,
    chain_id: &Hash32,
    session: &[u8],
    round: CeremonyRound,
    member: MemberIndex,
    body: Vec<u8>,
) -> SignedStatement {
    let digest = message_digest(chain_id, session, round, member, &body);
    SignedStatement {
        member: u32::from(member.get()),
        signature: key.sign(digest.as_bytes()).to_bytes().to_vec(),
        body,
    }
}

/// The body of a statement in its signed encoding (protobuf, `ceremony_wire`): the bytes a
/// member signs are the bytes every other member decodes.
pub trait SignedBody: Sized {
    /// The signed encoding.
    fn to_bytes(&self) -> Vec<u8>;
    /// Reads a signed encoding; the error says why it does not decode.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String>;
}

/// A member's complaints (possibly none), over the broadcasts it checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComplaintsBody {
    /// The digest of every member's signed broadcast, as this member received them (32 bytes
    /// when honest; checked by [`complaints_over`]).
    pub broadcasts_digest: Vec<u8>,
    /// Each an encoded `Complaint` naming this member as complainer.
    pub complaints: Vec<Vec<u8>>,
}

/// A dealer's answers to the complaints against it (possibly none), over the complaints it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JustificationsBody {
    /// The digest of every member's signed complaints, as this dealer received them.
    pub complaints_digest: Vec<u8>,
    /// Each an encoded `Justification` naming this dealer.
    pub justifications: Vec<Vec<u8>>,
}

/// A member's confirmation of the whole ceremony.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmationBody {
    /// The digest of every signed broadcast, complaint and justification this member used.
    pub transcript_digest: Vec<u8>,
    /// The encoded `CommitteePublic` it derived.
    pub committee: Vec<u8>,
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
    messages: &[SignedStatement],
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

fn decode_body<T: SignedBody>(statement: &Statement, field: &str) -> Result<T, CeremonyError> {
    T::from_bytes(&statement.body).map_err(|error| CeremonyError::Malformed {
        field: field.to_string(),
        reason: format!("the statement does not decode: {error}"),
    })
}

/// Decodes a member's [`ComplaintsBody`] and checks it names the broadcasts this member saw.
pub fn complaints_over(
    statement: &Statement,
    broadcasts_digest: &Hash32,
    field: &str,
) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let body: ComplaintsBody = decode_body(statement, field)?;
    require_same_view(
        statement,
        &body.broadcasts_digest,
        broadcasts_digest,
        field,
        "checked other broadcasts",
    )?;
    Ok(body.complaints)
}

/// Decodes a dealer's [`JustificationsBody`] and checks it names the complaints this member saw.
pub fn justifications_over(
    statement: &Statement,
    complaints_digest: &Hash32,
    field: &str,
) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let body: JustificationsBody = decode_body(statement, field)?;
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
    ConfirmationBody {
        transcript_digest: transcript_digest.as_bytes().to_vec(),
        committee,
    }
    .to_bytes()
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

    fn signed(keys: &[SigningKey], chain: &Hash32, round: CeremonyRound) -> Vec<SignedStatement> {
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
            assert!(matches!(
                crate::error::NodeError::from(refused),
                crate::error::NodeError::NotPermitted(_)
            ));
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
            body: ComplaintsBody {
                broadcasts_digest: vec![7; 32],
                complaints: Vec::new(),
            }
            .to_bytes(),
        };
        assert!(complaints_over(&statement, &Hash32([7; 32]), "c").is_ok());
        let diverged = complaints_over(&statement, &Hash32([8; 32]), "c").unwrap_err();
        assert!(matches!(
            diverged,
            CeremonyError::Diverged { member: 2, .. }
        ));
    }
}
