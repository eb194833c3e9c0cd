//! Threshold key switching from the collective key Y to a recipient's key P.
//!
//! Member j holds the Shamir share x_j of the collective secret x (Y = x·G) and the public
//! verification key X_j = x_j·G. To move a ciphertext (C1, C2) = (r·G, m·G + r·Y) to P without
//! anyone but the recipient learning m, member j picks a fresh k_j and publishes
//!
//! ```text
//! R_j = k_j·G        S_j = x_j·C1 − k_j·P
//! ```
//!
//! with a Chaum–Pedersen-style proof of knowledge of (x_j, k_j) satisfying X_j = x_j·G,
//! R_j = k_j·G and S_j = x_j·C1 − k_j·P (nonces a, b; T1 = a·G, T2 = b·G, T3 = a·C1 − b·P;
//! z_x = a + c·x_j, z_k = b + c·k_j; the verifier checks z_x·G = T1 + c·X_j,
//! z_k·G = T2 + c·R_j and z_x·C1 − z_k·P = T3 + c·S_j). Any t valid shares from a set Q
//! combine with the Lagrange coefficients λ_j of Q:
//!
//! ```text
//! C1' = Σ λ_j·R_j = k·G
//! C2' = C2 − Σ λ_j·S_j = m·G + r·Y − x·r·G + k·P = m·G + k·P
//! ```
//!
//! a fresh encryption of m under P with k = Σ λ_j·k_j. A single share S_j is masked by k_j·P,
//! which only the holder of log_G P can remove, so no committee member — nor anyone who sees the
//! shares — obtains m·G; fewer than t members learn nothing about x.

use std::collections::BTreeMap;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::elgamal::{Ciphertext, CiphertextVector, PublicKey, MAX_VECTOR_LEN};
use crate::errors::{DecodeError, KeySwitchError};
use crate::proofs::batch::BatchVerifier;
use crate::proofs::sigma::{queue_equation, Base};
use crate::shamir::{lagrange_coefficients_at_zero, MemberIndex};
use crate::transcript::{labels, ProofContext, TranscriptProtocol};
use crate::wire::{tags, Reader, Wire, Writer};

/// Largest committee size.
pub const MAX_COMMITTEE: usize = 255;

/// A member's share x_j of the collective secret. Zeroised on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyShare {
    #[zeroize(skip)]
    member: MemberIndex,
    secret: Scalar,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyShare(member {}, <redacted>)", self.member)
    }
}

/// The committee's public data: threshold, collective key, and every member's verification
/// key X_j = x_j·G.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitteePublic {
    threshold: u16,
    collective_key: PublicKey,
    verification_keys: BTreeMap<MemberIndex, RistrettoPoint>,
}

/// One member's key-switch share for a vector of ciphertexts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySwitchShare {
    member: MemberIndex,
    items: Vec<KeySwitchItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeySwitchItem {
    /// R_j = k_j·G.
    r: RistrettoPoint,
    /// S_j = x_j·C1 − k_j·P.
    s: RistrettoPoint,
    t1: RistrettoPoint,
    t2: RistrettoPoint,
    t3: RistrettoPoint,
    z_secret: Scalar,
    z_nonce: Scalar,
}

/// The result of combining shares.
#[derive(Debug, Clone)]
pub struct KeySwitchOutcome {
    /// The ciphertexts re-encrypted under the recipient's key.
    pub ciphertexts: CiphertextVector,
    /// The members whose shares were combined.
    pub used: Vec<MemberIndex>,
    /// Shares that were rejected, each naming its member.
    pub rejected: Vec<KeySwitchError>,
}

fn share_transcript(
    context: &ProofContext,
    member: MemberIndex,
    verification_key: &RistrettoPoint,
    recipient: &PublicKey,
    ciphertexts: &[Ciphertext],
) -> Transcript {
    let mut transcript = context.transcript(labels::KEY_SWITCH);
    transcript.append_u64(b"member", u64::from(member.get()));
    transcript.append_point(b"verification-key", verification_key);
    transcript.append_point(b"recipient", recipient.as_point());
    transcript.append_u64(b"count", ciphertexts.len() as u64);
    for ciphertext in ciphertexts {
        transcript.append_point(b"c1", &ciphertext.c1);
        transcript.append_point(b"c2", &ciphertext.c2);
    }
    transcript
}

fn append_item_commitments(transcript: &mut Transcript, items: &[KeySwitchItem]) {
    for item in items {
        transcript.append_point(b"r", &item.r);
        transcript.append_point(b"s", &item.s);
        transcript.append_point(b"t1", &item.t1);
        transcript.append_point(b"t2", &item.t2);
        transcript.append_point(b"t3", &item.t3);
    }
}

impl KeyShare {
    pub(crate) fn new(member: MemberIndex, secret: Scalar) -> Self {
        Self { member, secret }
    }

    /// The member index j.
    pub fn member(&self) -> MemberIndex {
        self.member
    }

    /// X_j = x_j·G.
    pub fn verification_key(&self) -> RistrettoPoint {
        &self.secret * RISTRETTO_BASEPOINT_TABLE
    }

    /// This member's key-switch share for `ciphertexts`, towards `recipient`.
    pub fn key_switch_with_rng<R: RngCore + CryptoRng>(
        &self,
        context: &ProofContext,
        ciphertexts: &[Ciphertext],
        recipient: &PublicKey,
        rng: &mut R,
    ) -> KeySwitchShare {
        let verification_key = self.verification_key();
        let mut transcript = share_transcript(
            context,
            self.member,
            &verification_key,
            recipient,
            ciphertexts,
        );
        let mut nonce_rng = transcript
            .build_rng()
            .rekey_with_witness_bytes(b"x", self.secret.as_bytes())
            .finalize(rng);
        let p = recipient.as_point();
        let mut secrets = Vec::with_capacity(ciphertexts.len());
        let items: Vec<KeySwitchItem> = ciphertexts
            .iter()
            .map(|ciphertext| {
                let k = Scalar::random(&mut nonce_rng);
                let a = Scalar::random(&mut nonce_rng);
                let b = Scalar::random(&mut nonce_rng);
                secrets.push((k, a, b));
                KeySwitchItem {
                    r: &k * RISTRETTO_BASEPOINT_TABLE,
                    s: self.secret * ciphertext.c1 - k * p,
                    t1: &a * RISTRETTO_BASEPOINT_TABLE,
                    t2: &b * RISTRETTO_BASEPOINT_TABLE,
                    t3: a * ciphertext.c1 - b * p,
                    z_secret: Scalar::ZERO,
                    z_nonce: Scalar::ZERO,
                }
            })
            .collect();
        append_item_commitments(&mut transcript, &items);
        let challenge = transcript.challenge_scalar(b"challenge");
        let items = items
            .into_iter()
            .zip(secrets.iter_mut())
            .map(|(mut item, (k, a, b))| {
                item.z_secret = *a + challenge * self.secret;
                item.z_nonce = *b + challenge * *k;
                k.zeroize();
                a.zeroize();
                b.zeroize();
                item
            })
            .collect();
        KeySwitchShare {
            member: self.member,
            items,
        }
    }
}

impl KeySwitchShare {
    /// The member that made the share.
    pub fn member(&self) -> MemberIndex {
        self.member
    }

    /// Number of ciphertexts covered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the share covers no ciphertext.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl CommitteePublic {
    pub(crate) fn new(
        threshold: u16,
        collective_key: PublicKey,
        verification_keys: BTreeMap<MemberIndex, RistrettoPoint>,
    ) -> Self {
        Self {
            threshold,
            collective_key,
            verification_keys,
        }
    }

    /// The threshold t.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The collective public key Y.
    pub fn collective_key(&self) -> &PublicKey {
        &self.collective_key
    }

    /// The members, in order.
    pub fn members(&self) -> impl Iterator<Item = MemberIndex> + '_ {
        self.verification_keys.keys().copied()
    }

    /// Member j's verification key X_j.
    pub fn verification_key(&self, member: MemberIndex) -> Option<&RistrettoPoint> {
        self.verification_keys.get(&member)
    }

    /// Checks one share's proofs; the error names the member.
    pub fn verify_share(
        &self,
        context: &ProofContext,
        ciphertexts: &[Ciphertext],
        recipient: &PublicKey,
        share: &KeySwitchShare,
    ) -> Result<(), KeySwitchError> {
        let member = share.member;
        let verification_key = self
            .verification_keys
            .get(&member)
            .ok_or(KeySwitchError::UnknownMember { member })?;
        if share.items.len() != ciphertexts.len() {
            return Err(KeySwitchError::WrongLength {
                member,
                found: share.items.len(),
                expected: ciphertexts.len(),
            });
        }
        let mut transcript =
            share_transcript(context, member, verification_key, recipient, ciphertexts);
        append_item_commitments(&mut transcript, &share.items);
        let challenge = transcript.challenge_scalar(b"challenge");
        let mut verifier = BatchVerifier::new();
        let p = recipient.as_point();
        for (item, ciphertext) in share.items.iter().zip(ciphertexts) {
            // z_x·G − T1 − c·X_j = 0
            queue_equation(
                &mut verifier,
                &[
                    (item.z_secret, Base::G),
                    (-Scalar::ONE, Base::Own(item.t1)),
                    (-challenge, Base::Shared(verification_key)),
                ],
            );
            // z_k·G − T2 − c·R_j = 0
            queue_equation(
                &mut verifier,
                &[
                    (item.z_nonce, Base::G),
                    (-Scalar::ONE, Base::Own(item.t2)),
                    (-challenge, Base::Own(item.r)),
                ],
            );
            // z_x·C1 − z_k·P − T3 − c·S_j = 0
            queue_equation(
                &mut verifier,
                &[
                    (item.z_secret, Base::Own(ciphertext.c1)),
                    (-item.z_nonce, Base::Shared(p)),
                    (-Scalar::ONE, Base::Own(item.t3)),
                    (-challenge, Base::Own(item.s)),
                ],
            );
        }
        if verifier.verify() {
            Ok(())
        } else {
            Err(KeySwitchError::BadProof { member })
        }
    }

    /// Verifies the shares, rejects (and names) every bad one, and combines the first t valid
    /// shares into ciphertexts under `recipient`. The context is the query's; each share's
    /// transcript also binds its member index.
    pub fn combine(
        &self,
        context: &ProofContext,
        ciphertexts: &[Ciphertext],
        recipient: &PublicKey,
        shares: &[KeySwitchShare],
    ) -> Result<KeySwitchOutcome, KeySwitchError> {
        let mut rejected = Vec::new();
        let mut valid: Vec<&KeySwitchShare> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for share in shares {
            if !seen.insert(share.member) {
                rejected.push(KeySwitchError::DuplicateShare {
                    member: share.member,
                });
                continue;
            }
            match self.verify_share(context, ciphertexts, recipient, share) {
                Ok(()) => valid.push(share),
                Err(error) => rejected.push(error),
            }
        }
        let threshold = usize::from(self.threshold);
        if valid.len() < threshold {
            return Err(KeySwitchError::NotEnoughShares {
                valid: valid.len(),
                threshold: self.threshold,
                rejected,
            });
        }
        valid.truncate(threshold);
        let used: Vec<MemberIndex> = valid.iter().map(|share| share.member).collect();
        let lambdas = lagrange_coefficients_at_zero(&used);
        let switched = ciphertexts
            .iter()
            .enumerate()
            .map(|(position, ciphertext)| {
                let mut c1 = RistrettoPoint::default();
                let mut masked = RistrettoPoint::default();
                for (share, lambda) in valid.iter().zip(&lambdas) {
                    c1 += lambda * share.items[position].r;
                    masked += lambda * share.items[position].s;
                }
                Ciphertext {
                    c1,
                    c2: ciphertext.c2 - masked,
                }
            })
            .collect();
        Ok(KeySwitchOutcome {
            ciphertexts: CiphertextVector(switched),
            used,
            rejected,
        })
    }
}

pub(crate) fn read_member(
    reader: &mut Reader<'_>,
    field: &'static str,
) -> Result<MemberIndex, DecodeError> {
    let index = reader.u16(field)?;
    MemberIndex::new(index).ok_or(DecodeError::Invalid {
        field,
        reason: "member index 0 is not a member",
    })
}

impl Wire for KeySwitchShare {
    const TAG: u8 = tags::KEY_SWITCH_SHARE;
    const NAME: &'static str = "key-switch share";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.member.get());
        writer.len(self.items.len());
        for item in &self.items {
            for point in [&item.r, &item.s, &item.t1, &item.t2, &item.t3] {
                writer.point(point);
            }
            writer.scalar(&item.z_secret);
            writer.scalar(&item.z_nonce);
        }
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let member = read_member(reader, "key-switch member")?;
        let len = reader.len("key-switch share length", MAX_VECTOR_LEN, 7 * 32)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(KeySwitchItem {
                r: reader.point("key-switch R")?,
                s: reader.point("key-switch S")?,
                t1: reader.point("key-switch T1")?,
                t2: reader.point("key-switch T2")?,
                t3: reader.point("key-switch T3")?,
                z_secret: reader.scalar("key-switch z_x")?,
                z_nonce: reader.scalar("key-switch z_k")?,
            });
        }
        Ok(Self { member, items })
    }
}

/// A member's own key share, as it keeps it across restarts. Secret: the encoding is for the
/// member's storage only, never for the wire. Decoding checks only the encoding; check the
/// share against the committee with [`KeyShare::belongs_to`].
impl Wire for KeyShare {
    const TAG: u8 = tags::KEY_SHARE;
    const NAME: &'static str = "key share";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.member.get());
        writer.scalar(&self.secret);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let member = read_member(reader, "key share member")?;
        let secret = reader.scalar("key share secret")?;
        Ok(Self { member, secret })
    }
}

impl KeyShare {
    /// Whether this share is the one `committee` records for its member: x_j·G = X_j.
    pub fn belongs_to(&self, committee: &CommitteePublic) -> bool {
        committee.verification_key(self.member) == Some(&self.verification_key())
    }
}

impl Wire for CommitteePublic {
    const TAG: u8 = tags::COMMITTEE_PUBLIC;
    const NAME: &'static str = "committee public data";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.threshold);
        writer.point(self.collective_key.as_point());
        writer.len(self.verification_keys.len());
        for (member, key) in &self.verification_keys {
            writer.u16(member.get());
            writer.point(key);
        }
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let threshold = reader.u16("committee threshold")?;
        let collective_key = PublicKey::from_point(reader.point("collective key")?);
        let count = reader.len("committee size", MAX_COMMITTEE, 34)?;
        let mut verification_keys = BTreeMap::new();
        for _ in 0..count {
            let member = read_member(reader, "committee member")?;
            let key = reader.point("verification key")?;
            if verification_keys.insert(member, key).is_some() {
                return Err(DecodeError::Invalid {
                    field: "committee member",
                    reason: "duplicate member index",
                });
            }
        }
        if threshold == 0 || usize::from(threshold) > count {
            return Err(DecodeError::Invalid {
                field: "committee threshold",
                reason: "must be between 1 and the committee size",
            });
        }
        Ok(Self {
            threshold,
            collective_key,
            verification_keys,
        })
    }
}
