//! The node's side of the key ceremony (`zk::dkg`: Pedersen DKG with complaints), one type per
//! round. A node that dealt holds [`Dealt`]; checking every dealer's broadcast and share turns
//! it into [`Received`]; finishing turns that into [`Finished`], a key not yet used; only when
//! every member confirms the same transcript does the key share become the node's. Each step
//! consumes the round before it, so no round runs twice or out of order, and a step that fails
//! leaves the node idle, for the coordinator to start a new session.
//!
//! Every public message is a statement signed by the member it comes from and checked against
//! the node's own pinned committee ([`crate::ceremony`]): the coordinator only relays. A node
//! that holds a key refuses a new ceremony.

use crate::calls::{
    CeremonyFinished, ConfirmCall, DealCall, FinishCall, JustifyCall, ReceiveCall, ShareDelivery,
};
use crate::error::NodeError;
use cohortex_proto::tls::endpoint as link;
use cohortex_proto::v1::DeliverShareRequest;
use cohortex_types::auth::signed_request_to;
use cohortex_types::Hash32;
use market::AccountId;
use rand::rngs::OsRng;
use zk::dkg::messages::{Complaint, DealerBroadcast, DealerShare, Justification};
use zk::dkg::{deal_with_rng, AwaitingJustifications, AwaitingShares, DkgOutput, DkgParameters};
use zk::{CommitteePublic, KeyShare, MemberIndex, Wire};

use super::{NodeConfig, NodeService};
use crate::ceremony::{
    check_confirmations, complaints_over, confirmation_body, justifications_over, round_digest,
    sign_statement, verify_round, CeremonyError, CeremonyRound, ComplaintsBody, JustificationsBody,
    SignedBody, SignedStatement, Statement,
};
use crate::protocol::{decode, methods, normal_endpoint, CommitteeError};
use crate::sealed_share::{open_share, seal_share_with_rng, SealError};

/// How many ceremony sessions a node remembers having dealt in.
pub(super) const SESSIONS_REMEMBERED: usize = 64;

/// Where the node stands in the current key ceremony.
pub(super) enum DkgRound {
    /// No ceremony in progress (or the last one failed).
    Idle,
    /// Round 1 done: this node dealt.
    Dealt(Dealt),
    /// Round 2 done: the dealers' broadcasts and shares checked, complaints filed.
    Received(Received),
    /// Round 4 done: the key derived, awaiting every member's confirmation.
    Finished(Finished),
}

/// Round 1 of a session: this node dealt, and awaits the other dealers' shares.
pub(super) struct Dealt {
    session: Vec<u8>,
    state: AwaitingShares,
    /// The broadcast this node signed for the session: the one every member must be shown.
    broadcast: Vec<u8>,
}

/// Round 2 of a session: shares checked; awaits the justifications of complaints.
pub(super) struct Received {
    session: Vec<u8>,
    state: AwaitingJustifications,
    /// The digest of every member's signed broadcast, as this node checked them.
    broadcasts_digest: Hash32,
}

/// Round 4 of a session: the key derived from the transcript, not yet in use.
pub(super) struct Finished {
    session: Vec<u8>,
    output: DkgOutput,
    /// The confirmation this node signed: the transcript digest and the committee.
    confirmation: Vec<u8>,
}

fn not_current() -> NodeError {
    NodeError::bad_request("session_id: not the current session")
}

impl DkgRound {
    /// Takes round 1 of `session` out, leaving the node idle. A request for another session
    /// leaves the round as it was.
    fn take_dealt(&mut self, session: &[u8]) -> Result<Dealt, NodeError> {
        match std::mem::replace(self, DkgRound::Idle) {
            DkgRound::Dealt(dealt) if dealt.session.as_slice() == session => Ok(dealt),
            DkgRound::Dealt(dealt) => {
                *self = DkgRound::Dealt(dealt);
                Err(not_current())
            }
            other => {
                *self = other;
                Err(NodeError::not_ready("no DKG round 1 in progress"))
            }
        }
    }

    /// Takes round 2 of `session` out, leaving the node idle. A request for another session
    /// leaves the round as it was.
    fn take_received(&mut self, session: &[u8]) -> Result<Received, NodeError> {
        match std::mem::replace(self, DkgRound::Idle) {
            DkgRound::Received(received) if received.session.as_slice() == session => Ok(received),
            DkgRound::Received(received) => {
                *self = DkgRound::Received(received);
                Err(not_current())
            }
            other => {
                *self = other;
                Err(NodeError::not_ready("no DKG round 2 completed"))
            }
        }
    }

    /// Takes round 4 of `session` out, leaving the node idle. A request for another session
    /// leaves the round as it was.
    fn take_finished(&mut self, session: &[u8]) -> Result<Finished, NodeError> {
        match std::mem::replace(self, DkgRound::Idle) {
            DkgRound::Finished(finished) if finished.session.as_slice() == session => Ok(finished),
            DkgRound::Finished(finished) => {
                *self = DkgRound::Finished(finished);
                Err(not_current())
            }
            other => {
                *self = other;
                Err(NodeError::not_ready("no DKG round 4 completed"))
            }
        }
    }

    /// The broadcast this node dealt in `session`, while it awaits round 2.
    fn dealt_broadcast(&self, session: &[u8]) -> Result<&[u8], NodeError> {
        match self {
            DkgRound::Dealt(dealt) if dealt.session.as_slice() == session => Ok(&dealt.broadcast),
            DkgRound::Dealt(_) => Err(not_current()),
            _ => Err(NodeError::not_ready("no DKG round 1 in progress")),
        }
    }

    /// Round 2 of `session`, left in place (justifying does not end it).
    fn received(&self, session: &[u8]) -> Result<&Received, NodeError> {
        match self {
            DkgRound::Received(received) if received.session.as_slice() == session => Ok(received),
            DkgRound::Received(_) => Err(not_current()),
            _ => Err(NodeError::not_ready("no DKG round 2 completed")),
        }
    }
}

impl Dealt {
    /// Checks every dealer's broadcast and the shares delivered to this node.
    fn receive(
        self,
        broadcasts: &[DealerBroadcast],
        shares: &[DealerShare],
        broadcasts_digest: Hash32,
    ) -> Result<(Received, Vec<Complaint>), NodeError> {
        let (state, complaints) = self
            .state
            .receive(broadcasts, shares)
            .map_err(|error| NodeError::bad_request(format!("broadcasts: {error}")))?;
        let received = Received {
            session: self.session,
            state,
            broadcasts_digest,
        };
        Ok((received, complaints))
    }
}

impl Received {
    /// This node's answers to complaints against it.
    fn justify(&self, complaints: &[Complaint]) -> Vec<Justification> {
        self.state.justify(complaints)
    }

    /// The node's key share and the committee's public data.
    fn finish(
        self,
        complaints: &[Complaint],
        justifications: &[Justification],
    ) -> Result<DkgOutput, NodeError> {
        self.state
            .finish(complaints, justifications)
            .map_err(|error| NodeError::not_ready(format!("dkg: {error}")))
    }
}

/// Every member's complaints, checked: signed by their member, over the broadcasts this node
/// saw, each naming its signer as the complainer. Returns the complaints and the digest that
/// the dealers' justifications must name.
fn checked_complaints(
    statements: &[Statement],
    broadcasts_digest: &Hash32,
    session: &[u8],
) -> Result<(Vec<Complaint>, Hash32), NodeError> {
    let mut complaints = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let field = format!("complaints[{index}]");
        for bytes in complaints_over(statement, broadcasts_digest, &field)? {
            let complaint: Complaint = decode(&bytes, &field)?;
            if complaint.complainer != statement.member {
                return Err(CeremonyError::Malformed {
                    field,
                    reason: format!(
                        "member {} complains in member {}'s name",
                        statement.member, complaint.complainer
                    ),
                }
                .into());
            }
            complaints.push(complaint);
        }
    }
    let digest = round_digest(
        session,
        CeremonyRound::Complaints,
        Some(broadcasts_digest),
        statements,
    );
    Ok((complaints, digest))
}

/// A live key is never replaced at the relay's request: re-keying would let whoever runs the
/// ceremony start over until it can cheat, and would strand every release encrypted under the
/// current key. Retiring a key is the member's own decision.
fn refuse_if_keyed(holds_key: bool) -> Result<(), NodeError> {
    if holds_key {
        return Err(NodeError::not_ready(
            "this node holds the committee's key share; it takes part in no new key ceremony \
             until its operator retires the share (docs/privacy.md, key rotation)",
        ));
    }
    Ok(())
}

fn sign_body<T: SignedBody>(
    config: &NodeConfig,
    session: &[u8],
    round: CeremonyRound,
    body: &T,
) -> SignedStatement {
    sign_statement(
        &config.account,
        &config.ledger.chain_id,
        session,
        round,
        config.member,
        body.to_bytes(),
    )
}

impl NodeService {
    /// Checks one round's signed statements against the pinned committee.
    fn verified(
        &self,
        session: &[u8],
        round: CeremonyRound,
        messages: &[SignedStatement],
        field: &str,
    ) -> Result<Vec<Statement>, NodeError> {
        Ok(verify_round(
            &self.config.committee,
            &self.config.ledger.chain_id,
            session,
            round,
            messages,
            field,
        )?)
    }

    /// Round 1: deals to the committee pinned in the node's own configuration, which the
    /// request may only name back, and delivers each private share straight to its member.
    pub(super) async fn deal(&self, message: DealCall) -> Result<SignedStatement, NodeError> {
        // The committee is this node's own: the coordinator may only name it back. A request
        // naming another threshold, member or endpoint (say, the coordinator's own endpoint
        // on two seats, to collect t shares) gets nothing.
        let committee = &self.config.committee;
        if message.threshold != u32::from(committee.threshold()) {
            return Err(NodeError::not_permitted(format!(
                "threshold: {} is not this node's pinned threshold {}",
                message.threshold,
                committee.threshold()
            )));
        }
        if message.peers.len() != committee.seats().len() {
            return Err(NodeError::not_permitted(format!(
                "peers: {} named, this node's pinned committee has {} members",
                message.peers.len(),
                committee.seats().len()
            )));
        }
        for (index, peer) in message.peers.iter().enumerate() {
            let pinned = u16::try_from(peer.member)
                .ok()
                .and_then(MemberIndex::new)
                .and_then(|member| committee.seat(member));
            let matches = pinned.is_some_and(|seat| {
                normal_endpoint(&seat.endpoint) == normal_endpoint(&peer.endpoint)
            });
            if !matches {
                return Err(NodeError::not_permitted(format!(
                    "peers[{index}]: member {} at that endpoint is not in this node's pinned \
                     committee",
                    peer.member
                )));
            }
        }
        {
            let mut state = self.lock()?;
            refuse_if_keyed(state.key.is_some())?;
            // One polynomial per session: dealing again in a session would let the relay pair
            // this node's new dealing with its old, signed broadcast, so that it complains about
            // honest dealers and makes them reveal their shares for it.
            if state.dealt_sessions.contains(&message.session) {
                return Err(NodeError::already_answered(
                    "session_id: this node already dealt in this session",
                ));
            }
            if state.dealt_sessions.len() >= SESSIONS_REMEMBERED {
                state.dealt_sessions.pop_front();
            }
            state.dealt_sessions.push_back(message.session.clone());
        }
        let parameters = DkgParameters::new(
            committee.threshold(),
            committee.seats().len() as u16,
            &message.session,
        )
        .map_err(|error| NodeError::bad_request(format!("session_id: {error}")))?;
        let (state, broadcast, shares) = deal_with_rng(&parameters, self.config.member, &mut OsRng)
            .map_err(|error| NodeError::internal(format!("dealing failed: {error}")))?;
        // Deliver each private share straight to its recipient, at its pinned endpoint, sealed
        // to its pinned account key (TLS alone would trust the federation's authority).
        for share in shares {
            let seat = committee.seat(share.recipient).ok_or_else(|| {
                NodeError::internal(format!("no seat for member {}", share.recipient.get()))
            })?;
            let recipient_key = seat.account.verifying_key().map_err(|error| {
                NodeError::internal(format!(
                    "member {}'s pinned account is not a key: {error}",
                    seat.member.get()
                ))
            })?;
            let sealed_share =
                seal_share_with_rng(&share, &message.session, &recipient_key, &mut OsRng)
                    .map_err(|error| NodeError::internal(error.to_string()))?;
            let channel = link(&seat.endpoint, self.config.tls.as_ref())
                .map_err(|error| NodeError::internal(format!("member endpoint: {error}")))?
                .connect()
                .await
                .map_err(|error| {
                    NodeError::unavailable(format!(
                        "member {} unreachable: {error}",
                        seat.member.get()
                    ))
                })?;
            let mut client = cohortex_proto::v1::compute_client::ComputeClient::new(channel);
            client
                .deliver_share(signed_request_to(
                    &self.config.account,
                    &seat.endpoint,
                    methods::DELIVER_SHARE,
                    DeliverShareRequest {
                        session_id: message.session.clone(),
                        sealed_share,
                    },
                ))
                .await?;
        }
        let broadcast = broadcast.to_bytes();
        let signed = sign_statement(
            &self.config.account,
            &self.config.ledger.chain_id,
            &message.session,
            CeremonyRound::Broadcast,
            self.config.member,
            broadcast.clone(),
        );
        let mut node = self.lock()?;
        // A ceremony confirmed while this one was dealing leaves the key in place.
        refuse_if_keyed(node.key.is_some())?;
        node.round = DkgRound::Dealt(Dealt {
            session: message.session,
            state,
            broadcast,
        });
        Ok(signed)
    }

    /// Keeps a share another member dealt to this one: `caller` (authenticated) must hold a
    /// seat, and the share must open as its seat's, sealed to this member for the session.
    pub(super) fn take_share(
        &self,
        caller: AccountId,
        message: ShareDelivery,
    ) -> Result<(), NodeError> {
        let Some(caller_seat) = self.config.committee.seat_of(&caller) else {
            return Err(NodeError::not_permitted(format!(
                "account {caller} is not a committee member"
            )));
        };
        let caller_member = caller_seat.member;
        // A member deals only its own shares: the share must open as the caller's seat's, sealed
        // to this member's account key for this session.
        let share: DealerShare = open_share(
            &message.sealed_share,
            &message.session,
            caller_member,
            self.config.member,
            &self.config.account,
        )
        .map_err(|error| match error {
            SealError::WrongSeats { .. } => {
                NodeError::not_permitted(format!("sealed_share: {error}"))
            }
            _ => NodeError::bad_request(format!("sealed_share: {error}")),
        })?;
        let mut state = self.lock()?;
        let inbox = state.inbox.entry(message.session).or_default();
        if inbox.iter().any(|held| held.dealer == share.dealer) {
            return Err(NodeError::already_answered(
                "share: this dealer's share for the session was already delivered",
            ));
        }
        inbox.push(share);
        Ok(())
    }

    /// Round 2: checks every member's signed broadcast against the shares delivered for the
    /// session; answers with this node's signed complaints, which name what it checked.
    pub(super) fn receive_broadcasts(
        &self,
        message: ReceiveCall,
    ) -> Result<SignedStatement, NodeError> {
        let session = message.session;
        let statements = self.verified(
            &session,
            CeremonyRound::Broadcast,
            &message.broadcasts,
            "broadcasts",
        )?;
        let mut broadcasts = Vec::with_capacity(statements.len());
        for (index, statement) in statements.iter().enumerate() {
            let field = format!("broadcasts[{index}]");
            let broadcast: DealerBroadcast = decode(&statement.body, &field)?;
            if broadcast.dealer != statement.member {
                return Err(CeremonyError::Malformed {
                    field,
                    reason: format!(
                        "member {} signed dealer {}'s broadcast",
                        statement.member, broadcast.dealer
                    ),
                }
                .into());
            }
            broadcasts.push(broadcast);
        }
        let broadcasts_digest = round_digest(&session, CeremonyRound::Broadcast, None, &statements);
        let mut state = self.lock()?;
        refuse_if_keyed(state.key.is_some())?;
        // The broadcast signed in this node's name must be the one it dealt now: after a
        // restart, a relay holding an older signed broadcast of this node's must not get
        // complaints from it over that one.
        let own = statements
            .iter()
            .find(|statement| statement.member == self.config.member)
            .map(|statement| statement.body.as_slice());
        if own != Some(state.round.dealt_broadcast(&session)?) {
            return Err(CeremonyError::NotOwnBroadcast {
                member: self.config.member.get(),
            }
            .into());
        }
        let dealt = state.round.take_dealt(&session)?;
        let shares = state.inbox.remove(&session).unwrap_or_default();
        let (received, complaints) = dealt.receive(&broadcasts, &shares, broadcasts_digest)?;
        state.round = DkgRound::Received(received);
        let body = ComplaintsBody {
            broadcasts_digest: broadcasts_digest.as_bytes().to_vec(),
            complaints: complaints.iter().map(Wire::to_bytes).collect(),
        };
        Ok(sign_body(
            &self.config,
            &session,
            CeremonyRound::Complaints,
            &body,
        ))
    }

    /// Round 3: checks every member's signed complaints (over the broadcasts this node saw)
    /// and answers those against this node's dealing, signed.
    pub(super) fn justify(&self, message: JustifyCall) -> Result<SignedStatement, NodeError> {
        let session = message.session;
        let statements = self.verified(
            &session,
            CeremonyRound::Complaints,
            &message.complaints,
            "complaints",
        )?;
        let state = self.lock()?;
        let received = state.round.received(&session)?;
        let (complaints, complaints_digest) =
            checked_complaints(&statements, &received.broadcasts_digest, &session)?;
        let body = JustificationsBody {
            complaints_digest: complaints_digest.as_bytes().to_vec(),
            justifications: received
                .justify(&complaints)
                .iter()
                .map(Wire::to_bytes)
                .collect(),
        };
        Ok(sign_body(
            &self.config,
            &session,
            CeremonyRound::Justifications,
            &body,
        ))
    }

    /// Round 4: derives the key from every member's signed complaints and every dealer's
    /// signed justifications (over the same complaints), and signs a confirmation of the whole
    /// transcript. The key is not used until every member confirms the same.
    pub(super) fn finish_dkg(&self, message: FinishCall) -> Result<CeremonyFinished, NodeError> {
        let session = message.session;
        let complaint_statements = self.verified(
            &session,
            CeremonyRound::Complaints,
            &message.complaints,
            "complaints",
        )?;
        let justification_statements = self.verified(
            &session,
            CeremonyRound::Justifications,
            &message.justifications,
            "justifications",
        )?;
        let mut state = self.lock()?;
        refuse_if_keyed(state.key.is_some())?;
        let received = state.round.take_received(&session)?;
        let (complaints, complaints_digest) =
            checked_complaints(&complaint_statements, &received.broadcasts_digest, &session)?;
        let mut justifications = Vec::new();
        for (index, statement) in justification_statements.iter().enumerate() {
            let field = format!("justifications[{index}]");
            for bytes in justifications_over(statement, &complaints_digest, &field)? {
                let justification: Justification = decode(&bytes, &field)?;
                // A statement answers only for its signer's own dealing: a share revealed in
                // another dealer's name is refused, whoever relays it.
                if justification.dealer != statement.member {
                    return Err(CeremonyError::Malformed {
                        field,
                        reason: format!(
                            "member {} answers for dealer {}",
                            statement.member, justification.dealer
                        ),
                    }
                    .into());
                }
                justifications.push(justification);
            }
        }
        let transcript_digest = round_digest(
            &session,
            CeremonyRound::Justifications,
            Some(&complaints_digest),
            &justification_statements,
        );
        let output = received.finish(&complaints, &justifications)?;
        let committee = output.committee.clone();
        let confirmation = confirmation_body(&transcript_digest, committee.to_bytes());
        let signed = sign_statement(
            &self.config.account,
            &self.config.ledger.chain_id,
            &session,
            CeremonyRound::Confirmation,
            self.config.member,
            confirmation.clone(),
        );
        state.round = DkgRound::Finished(Finished {
            session,
            output,
            confirmation,
        });
        Ok(CeremonyFinished {
            committee,
            confirmation: signed,
        })
    }

    /// Round 5: every member confirmed the transcript and committee this node derived; the key
    /// share is stored (if configured) and used from now on. A confirmation that differs
    /// abandons the ceremony.
    pub(super) fn confirm_dkg(&self, message: ConfirmCall) -> Result<CommitteePublic, NodeError> {
        let session = message.session;
        let statements = self.verified(
            &session,
            CeremonyRound::Confirmation,
            &message.confirmations,
            "confirmations",
        )?;
        let mut state = self.lock()?;
        if state.key.is_some() {
            return Err(NodeError::not_ready(
                "this node already holds the committee's key share",
            ));
        }
        let finished = state.round.take_finished(&session)?;
        check_confirmations(&statements, &finished.confirmation, "confirmations")?;
        let output = finished.output;
        let committee = output.committee.clone();
        if let Some(path) = &self.config.key_share_file {
            store_key_share(path, &output.share, &output.committee).map_err(|error| {
                tracing::error!(path = %path.display(), %error, "storing the key share");
                NodeError::internal("the node could not store its key share")
            })?;
        }
        state.key = Some((output.share, output.committee));
        Ok(committee)
    }
}

/// Reads the key share and committee a node stored after its key ceremony, and checks that
/// they are this node's: its member index, the pinned committee's threshold and size, and a
/// share whose verification key the committee records.
pub(super) fn load_key_share(
    path: &std::path::Path,
    config: &NodeConfig,
) -> Result<(KeyShare, CommitteePublic), CommitteeError> {
    let bad = |reason: String| CommitteeError::StoredKeyShare {
        path: path.display().to_string(),
        reason,
    };
    // A key share others may read is not this member's alone any more.
    cohortex_types::private_file::check_owner_only(path).map_err(|error| bad(error.to_string()))?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|error| bad(error.to_string()))?,
    );
    let mut lines = text.lines();
    let (Some(share_hex), Some(committee_hex), None) = (lines.next(), lines.next(), lines.next())
    else {
        return Err(bad("expected two lines: the share and the committee".into()));
    };
    let share_bytes = zeroize::Zeroizing::new(
        hex::decode(share_hex.trim()).map_err(|_| bad("the share is not hex".into()))?,
    );
    let share = KeyShare::from_bytes(&share_bytes).map_err(|error| bad(error.to_string()))?;
    let committee_bytes =
        hex::decode(committee_hex.trim()).map_err(|_| bad("the committee is not hex".into()))?;
    let committee =
        CommitteePublic::from_bytes(&committee_bytes).map_err(|error| bad(error.to_string()))?;
    if share.member() != config.member {
        return Err(bad(format!(
            "it is member {}'s share, this node is member {}",
            share.member().get(),
            config.member.get()
        )));
    }
    if committee.threshold() != config.committee.threshold()
        || committee.members().count() != config.committee.seats().len()
    {
        return Err(bad(
            "its committee is not the one pinned in this node's configuration".into(),
        ));
    }
    if !share.belongs_to(&committee) {
        return Err(bad(
            "the share is not the committee's share for this member".into(),
        ));
    }
    Ok((share, committee))
}

/// Stores the key share and committee (hex lines) in `path`, mode 0600, replaced whole
/// ([`crate::durable::replace_file`]).
fn store_key_share(
    path: &std::path::Path,
    share: &KeyShare,
    committee: &CommitteePublic,
) -> std::io::Result<()> {
    let share_bytes = zeroize::Zeroizing::new(share.to_bytes());
    let text = zeroize::Zeroizing::new(format!(
        "{}\n{}\n",
        hex::encode(share_bytes.as_slice()),
        hex::encode(committee.to_bytes())
    ));
    crate::durable::replace_file(path, text.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic::Code;

    fn dealt(session: &[u8]) -> DkgRound {
        let parameters = DkgParameters::new(2, 3, session).unwrap();
        let member = MemberIndex::new(1).unwrap();
        let (state, broadcast, _) = deal_with_rng(&parameters, member, &mut OsRng).unwrap();
        DkgRound::Dealt(Dealt {
            session: session.to_vec(),
            state,
            broadcast: broadcast.to_bytes(),
        })
    }

    #[test]
    fn round_of_another_session_is_refused_and_kept() {
        let mut round = dealt(b"session-1");
        let refused = round.take_dealt(b"session-2").err();
        assert_eq!(
            refused.map(|status| status.code()),
            Some(Code::InvalidArgument)
        );
        assert!(round.take_dealt(b"session-1").is_ok());
        assert!(matches!(round, DkgRound::Idle));
    }

    #[test]
    fn rounds_out_of_order_are_refused() {
        let mut round = DkgRound::Idle;
        let code = |error: NodeError| error.code();
        assert_eq!(
            round.take_dealt(b"s").err().map(code),
            Some(Code::FailedPrecondition)
        );
        let mut round_one = dealt(b"s");
        assert_eq!(
            round_one.take_received(b"s").err().map(code),
            Some(Code::FailedPrecondition)
        );
        assert_eq!(
            round_one.received(b"s").err().map(code),
            Some(Code::FailedPrecondition)
        );
        assert!(matches!(round_one, DkgRound::Dealt(_)));
        assert!(matches!(round, DkgRound::Idle));
    }
}
