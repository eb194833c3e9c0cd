//! Distributed key generation, t of n (joint-Feldman with complaints).
//!
//! Every member i acts as a dealer of a random secret a_i0:
//!
//! 1. **Deal.** Pick f_i(z) = a_i0 + a_i1·z + … + a_i,t−1·z^{t−1}. Broadcast the Feldman
//!    commitments A_ik = a_ik·G and a Schnorr proof of knowledge of a_i0 (bound to the session,
//!    t, n, i and the commitments, which stops rogue-key choices of A_i0). Send f_i(j) to each
//!    member j privately.
//! 2. **Verify.** Member j checks each received share against the commitments:
//!
//!    ```text
//!    f_i(j)·G = Σ_k j^k·A_ik
//!    ```
//!
//!    and broadcasts a [`Complaint`](messages::Complaint) against every dealer whose share is
//!    missing or wrong. A dealer whose broadcast is missing, malformed, or whose proof of
//!    knowledge fails is excluded at once.
//! 3. **Justify.** A dealer answers each complaint by revealing f_i(j). Everyone checks the
//!    revealed share; if it verifies the complainer adopts it, otherwise (or if the dealer stays
//!    silent) the dealer is excluded with a [`DkgFault`] that names it.
//! 4. **Finish.** With QUAL the dealers not excluded (at least t of them, so at least one
//!    honest dealer when at most t − 1 members are corrupt): the collective key is
//!    Y = Σ_{i∈QUAL} A_i0, member j's share is x_j = Σ_{i∈QUAL} f_i(j), and everyone's
//!    verification key is X_j = Σ_{i∈QUAL} Σ_k j^k·A_ik = x_j·G. The collective secret
//!    x = Σ a_i0 is never assembled anywhere.
//!
//! The rounds are typestates: [`deal_with_rng`] returns [`AwaitingShares`], whose `receive`
//! returns [`AwaitingJustifications`], whose `finish` returns the [`DkgOutput`]. The protocol
//! assumes a broadcast channel on which all honest members see the same broadcasts, complaints
//! and justifications, and confidential point-to-point channels for
//! [`DealerShare`](messages::DealerShare)s. The market's relay is not such a channel: the
//! compute node builds one over it (`compute_node::ceremony`) by having every member sign its
//! messages and echo the digest of what it saw, and using its key only once all members
//! confirmed the same transcript. Joint-Feldman lets a
//! rushing adversary bias the distribution of Y slightly (Gennaro et al. 1999); that bias does
//! not help against ElGamal's semantic security, which is all the key is used for here.

pub mod messages;

use std::collections::{BTreeMap, BTreeSet};

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};

use self::messages::{Complaint, DealerBroadcast, DealerShare, Justification};
use crate::elgamal::PublicKey;
use crate::errors::{DkgError, DkgFault};
use crate::keyswitch::{CommitteePublic, KeyShare, MAX_COMMITTEE};
use crate::shamir::{MemberIndex, SecretPolynomial};
use crate::transcript::{labels, TranscriptProtocol, TRANSCRIPT_LABEL};

/// The committee shape and the session the keys belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgParameters {
    threshold: u16,
    members: u16,
    session_id: Vec<u8>,
}

impl DkgParameters {
    /// t of n, for the session `session_id` (1 to 256 bytes, unique per ceremony).
    pub fn new(threshold: u16, members: u16, session_id: &[u8]) -> Result<Self, DkgError> {
        let invalid = |reason: String| DkgError::InvalidParameters { reason };
        if threshold == 0 {
            return Err(invalid("threshold must be at least 1".into()));
        }
        if threshold > members {
            return Err(invalid(format!(
                "threshold {threshold} exceeds the committee size {members}"
            )));
        }
        if usize::from(members) > MAX_COMMITTEE {
            return Err(invalid(format!(
                "committee size {members} exceeds {MAX_COMMITTEE}"
            )));
        }
        if session_id.is_empty() || session_id.len() > 256 {
            return Err(invalid("session id must be 1 to 256 bytes".into()));
        }
        Ok(Self {
            threshold,
            members,
            session_id: session_id.to_vec(),
        })
    }

    /// The threshold t.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The committee size n.
    pub fn members(&self) -> u16 {
        self.members
    }

    /// All member indices 1..=n.
    pub fn member_indices(&self) -> impl Iterator<Item = MemberIndex> {
        (1..=self.members).filter_map(MemberIndex::new)
    }

    fn check_member(&self, member: MemberIndex) -> Result<(), DkgError> {
        if member.get() > self.members {
            return Err(DkgError::UnknownMember {
                index: member.get(),
                members: self.members,
            });
        }
        Ok(())
    }
}

/// What a member holds after the ceremony.
#[derive(Debug, Clone)]
pub struct DkgOutput {
    /// This member's share x_j of the collective secret (secret).
    pub share: KeyShare,
    /// Threshold, collective key and every member's verification key (public).
    pub committee: CommitteePublic,
    /// The dealers whose secrets make up the collective key.
    pub qualified: Vec<MemberIndex>,
    /// The dealers that were excluded, each with the reason.
    pub excluded: Vec<DkgFault>,
}

/// Round 1: deal. Returns the state for round 2, the broadcast, and one private share for
/// every other member.
pub fn deal_with_rng<R: RngCore + CryptoRng>(
    parameters: &DkgParameters,
    me: MemberIndex,
    rng: &mut R,
) -> Result<(AwaitingShares, DealerBroadcast, Vec<DealerShare>), DkgError> {
    parameters.check_member(me)?;
    let polynomial = SecretPolynomial::random_with_rng(parameters.threshold, rng);
    let commitments: Vec<RistrettoPoint> = polynomial
        .coefficients()
        .iter()
        .map(|coefficient| coefficient * RISTRETTO_BASEPOINT_TABLE)
        .collect();
    let mut transcript = pok_transcript(parameters, me, &commitments);
    let nonce = Scalar::random(
        &mut transcript
            .build_rng()
            .rekey_with_witness_bytes(b"a0", polynomial.coefficients()[0].as_bytes())
            .finalize(rng),
    );
    let proof_commitment = &nonce * RISTRETTO_BASEPOINT_TABLE;
    transcript.append_point(b"R", &proof_commitment);
    let challenge = transcript.challenge_scalar(b"challenge");
    let proof_response = nonce + challenge * polynomial.coefficients()[0];
    let broadcast = DealerBroadcast {
        dealer: me,
        commitments,
        proof_commitment,
        proof_response,
    };
    let shares = parameters
        .member_indices()
        .filter(|&member| member != me)
        .map(|recipient| DealerShare {
            dealer: me,
            recipient,
            share: polynomial.evaluate(recipient),
        })
        .collect();
    Ok((
        AwaitingShares {
            parameters: parameters.clone(),
            me,
            polynomial,
        },
        broadcast,
        shares,
    ))
}

fn pok_transcript(
    parameters: &DkgParameters,
    dealer: MemberIndex,
    commitments: &[RistrettoPoint],
) -> Transcript {
    let mut transcript = Transcript::new(TRANSCRIPT_LABEL);
    transcript.append_message(b"protocol", labels::DKG_POK);
    transcript.append_message(b"session-id", &parameters.session_id);
    transcript.append_u64(b"threshold", u64::from(parameters.threshold));
    transcript.append_u64(b"members", u64::from(parameters.members));
    transcript.append_u64(b"dealer", u64::from(dealer.get()));
    for commitment in commitments {
        transcript.append_point(b"A", commitment);
    }
    transcript
}

fn verify_proof_of_knowledge(parameters: &DkgParameters, broadcast: &DealerBroadcast) -> bool {
    let mut transcript = pok_transcript(parameters, broadcast.dealer, &broadcast.commitments);
    transcript.append_point(b"R", &broadcast.proof_commitment);
    let challenge = transcript.challenge_scalar(b"challenge");
    // z·G − c·A_0 = R
    let expected = RistrettoPoint::vartime_double_scalar_mul_basepoint(
        &-challenge,
        &broadcast.commitments[0],
        &broadcast.proof_response,
    );
    expected == broadcast.proof_commitment
}

/// Σ_k j^k·A_k, the public image of f(j).
fn evaluate_commitments(commitments: &[RistrettoPoint], at: MemberIndex) -> RistrettoPoint {
    let x = at.scalar();
    let powers: Vec<Scalar> = std::iter::successors(Some(Scalar::ONE), |power| Some(power * x))
        .take(commitments.len())
        .collect();
    RistrettoPoint::vartime_multiscalar_mul(&powers, commitments)
}

fn share_matches(commitments: &[RistrettoPoint], at: MemberIndex, share: &Scalar) -> bool {
    share * RISTRETTO_BASEPOINT_TABLE == evaluate_commitments(commitments, at)
}

/// Round 2 state: waiting for every dealer's broadcast and this member's private shares.
pub struct AwaitingShares {
    parameters: DkgParameters,
    me: MemberIndex,
    polynomial: SecretPolynomial,
}

impl AwaitingShares {
    /// Checks the broadcasts (including this member's own) and the shares addressed to this
    /// member. Returns the next state and this member's complaints, to broadcast.
    pub fn receive(
        self,
        broadcasts: &[DealerBroadcast],
        shares: &[DealerShare],
    ) -> Result<(AwaitingJustifications, Vec<Complaint>), DkgError> {
        let parameters = &self.parameters;
        let mut faults = Vec::new();
        let mut accepted: BTreeMap<MemberIndex, DealerBroadcast> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for broadcast in broadcasts {
            parameters.check_member(broadcast.dealer)?;
            if !seen.insert(broadcast.dealer) {
                return Err(DkgError::DuplicateMessage {
                    round: "dealer broadcast",
                    member: broadcast.dealer,
                });
            }
            if broadcast.commitments.len() != usize::from(parameters.threshold) {
                faults.push(DkgFault::WrongCommitmentCount {
                    dealer: broadcast.dealer,
                    found: broadcast.commitments.len(),
                    expected: usize::from(parameters.threshold),
                });
            } else if !verify_proof_of_knowledge(parameters, broadcast) {
                faults.push(DkgFault::BadProofOfKnowledge {
                    dealer: broadcast.dealer,
                });
            } else {
                accepted.insert(broadcast.dealer, broadcast.clone());
            }
        }
        for dealer in parameters.member_indices() {
            if !seen.contains(&dealer) {
                faults.push(DkgFault::MissingBroadcast { dealer });
            }
        }

        let mut received: BTreeMap<MemberIndex, Scalar> = BTreeMap::new();
        for share in shares {
            parameters.check_member(share.dealer)?;
            if share.recipient != self.me {
                return Err(DkgError::Misaddressed {
                    round: "dealer share",
                    reason: format!("member {}, not member {}", share.recipient, self.me),
                });
            }
            if received.insert(share.dealer, share.share).is_some() {
                return Err(DkgError::DuplicateMessage {
                    round: "dealer share",
                    member: share.dealer,
                });
            }
        }
        received.insert(self.me, self.polynomial.evaluate(self.me));

        let mut valid_shares = BTreeMap::new();
        let mut complaints = Vec::new();
        for (&dealer, broadcast) in &accepted {
            match received.get(&dealer) {
                Some(share) if share_matches(&broadcast.commitments, self.me, share) => {
                    valid_shares.insert(dealer, *share);
                }
                _ => complaints.push(Complaint {
                    complainer: self.me,
                    dealer,
                }),
            }
        }
        Ok((
            AwaitingJustifications {
                parameters: self.parameters.clone(),
                me: self.me,
                polynomial: self.polynomial.clone(),
                accepted,
                valid_shares,
                faults,
            },
            complaints,
        ))
    }
}

/// Round 3 state: complaints are out; waiting for the dealers' justifications.
pub struct AwaitingJustifications {
    parameters: DkgParameters,
    me: MemberIndex,
    polynomial: SecretPolynomial,
    accepted: BTreeMap<MemberIndex, DealerBroadcast>,
    valid_shares: BTreeMap<MemberIndex, Scalar>,
    faults: Vec<DkgFault>,
}

impl Drop for AwaitingJustifications {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for share in self.valid_shares.values_mut() {
            share.zeroize();
        }
    }
}

impl AwaitingJustifications {
    /// This member's answers to the complaints against it (all complaints, from everyone).
    pub fn justify(&self, complaints: &[Complaint]) -> Vec<Justification> {
        complaints
            .iter()
            .filter(|complaint| complaint.dealer == self.me)
            .map(|complaint| Justification {
                dealer: self.me,
                recipient: complaint.complainer,
                share: self.polynomial.evaluate(complaint.complainer),
            })
            .collect()
    }

    /// Resolves every complaint with the justifications and derives the keys.
    pub fn finish(
        mut self,
        complaints: &[Complaint],
        justifications: &[Justification],
    ) -> Result<DkgOutput, DkgError> {
        let mut excluded: BTreeMap<MemberIndex, DkgFault> = self
            .faults
            .iter()
            .map(|fault| (fault_dealer(fault), fault.clone()))
            .collect();
        let mut unique_complaints: Vec<Complaint> = complaints.to_vec();
        unique_complaints.sort();
        unique_complaints.dedup();
        for complaint in unique_complaints {
            self.parameters.check_member(complaint.complainer)?;
            self.parameters.check_member(complaint.dealer)?;
            if excluded.contains_key(&complaint.dealer) {
                continue;
            }
            let Some(broadcast) = self.accepted.get(&complaint.dealer) else {
                continue;
            };
            let answer = justifications.iter().find(|justification| {
                justification.dealer == complaint.dealer
                    && justification.recipient == complaint.complainer
            });
            match answer {
                Some(justification)
                    if share_matches(
                        &broadcast.commitments,
                        complaint.complainer,
                        &justification.share,
                    ) =>
                {
                    if complaint.complainer == self.me {
                        self.valid_shares
                            .insert(complaint.dealer, justification.share);
                    }
                }
                Some(_) => {
                    excluded.insert(
                        complaint.dealer,
                        DkgFault::BadShare {
                            dealer: complaint.dealer,
                            recipient: complaint.complainer,
                        },
                    );
                }
                None => {
                    excluded.insert(
                        complaint.dealer,
                        DkgFault::UnansweredComplaint {
                            dealer: complaint.dealer,
                            recipient: complaint.complainer,
                        },
                    );
                }
            }
        }

        let qualified: Vec<MemberIndex> = self
            .accepted
            .keys()
            .copied()
            .filter(|dealer| !excluded.contains_key(dealer))
            .collect();
        let excluded: Vec<DkgFault> = excluded.into_values().collect();
        if qualified.len() < usize::from(self.parameters.threshold) {
            let rendered: Vec<String> = excluded.iter().map(ToString::to_string).collect();
            return Err(DkgError::NotEnoughQualified {
                qualified: qualified.len(),
                threshold: self.parameters.threshold,
                excluded: rendered.join("; "),
            });
        }

        let mut secret = Scalar::ZERO;
        for dealer in &qualified {
            let share = self.valid_shares.get(dealer).ok_or_else(|| {
                // Every qualified dealer's share was valid or justified; a gap means the
                // caller passed inconsistent complaints.
                DkgError::Misaddressed {
                    round: "justification",
                    reason: format!("no valid share from qualified dealer {dealer}"),
                }
            })?;
            secret += share;
        }
        let collective_key: RistrettoPoint = qualified
            .iter()
            .map(|dealer| self.accepted[dealer].commitments[0])
            .sum();
        let verification_keys = self
            .parameters
            .member_indices()
            .map(|member| {
                let key: RistrettoPoint = qualified
                    .iter()
                    .map(|dealer| evaluate_commitments(&self.accepted[dealer].commitments, member))
                    .sum();
                (member, key)
            })
            .collect();
        let share = KeyShare::new(self.me, secret);
        debug_assert_eq!(
            share.verification_key(),
            evaluate_all(&qualified, &self.accepted, self.me)
        );
        Ok(DkgOutput {
            share,
            committee: CommitteePublic::new(
                self.parameters.threshold,
                PublicKey::from_point(collective_key),
                verification_keys,
            ),
            qualified,
            excluded,
        })
    }
}

fn evaluate_all(
    qualified: &[MemberIndex],
    accepted: &BTreeMap<MemberIndex, DealerBroadcast>,
    member: MemberIndex,
) -> RistrettoPoint {
    qualified
        .iter()
        .map(|dealer| evaluate_commitments(&accepted[dealer].commitments, member))
        .sum()
}

fn fault_dealer(fault: &DkgFault) -> MemberIndex {
    match fault {
        DkgFault::BadProofOfKnowledge { dealer }
        | DkgFault::WrongCommitmentCount { dealer, .. }
        | DkgFault::MissingBroadcast { dealer }
        | DkgFault::BadShare { dealer, .. }
        | DkgFault::UnansweredComplaint { dealer, .. } => *dealer,
    }
}

/// Runs the whole ceremony for all n members in one process (every member honest), e.g. for
/// a single-machine cluster or a demo. Networked members drive the typestates themselves.
pub fn run_local_ceremony_with_rng<R: RngCore + CryptoRng>(
    parameters: &DkgParameters,
    rng: &mut R,
) -> Result<Vec<DkgOutput>, DkgError> {
    let mut states = Vec::new();
    let mut broadcasts = Vec::new();
    let mut all_shares = Vec::new();
    for member in parameters.member_indices() {
        let (state, broadcast, shares) = deal_with_rng(parameters, member, rng)?;
        states.push((member, state));
        broadcasts.push(broadcast);
        all_shares.extend(shares);
    }
    let mut round_three = Vec::new();
    let mut complaints = Vec::new();
    for (member, state) in states {
        let mine: Vec<DealerShare> = all_shares
            .iter()
            .filter(|share| share.recipient == member)
            .cloned()
            .collect();
        let (next, own_complaints) = state.receive(&broadcasts, &mine)?;
        complaints.extend(own_complaints);
        round_three.push(next);
    }
    let justifications: Vec<Justification> = round_three
        .iter()
        .flat_map(|state| state.justify(&complaints))
        .collect();
    round_three
        .into_iter()
        .map(|state| state.finish(&complaints, &justifications))
        .collect()
}
