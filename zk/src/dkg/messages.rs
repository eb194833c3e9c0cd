//! The messages of the distributed key generation, in the order they are sent.
//!
//! | round | message | channel |
//! |---|---|---|
//! | 1 | [`DealerBroadcast`]: Feldman commitments and a proof of knowledge | broadcast |
//! | 1 | [`DealerShare`]: f_i(j) for member j | private and confidential (TLS) |
//! | 2 | [`Complaint`]: "dealer i's share for me is missing or wrong" | broadcast |
//! | 3 | [`Justification`]: dealer i reveals f_i(j) for each complaint against it | broadcast |

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::errors::DecodeError;
use crate::keyswitch::{read_member, MAX_COMMITTEE};
use crate::shamir::MemberIndex;
use crate::wire::{tags, Reader, Wire, Writer};

/// Round 1, broadcast: dealer i's commitments A_ik = a_ik·G to its polynomial's coefficients
/// and a Schnorr proof of knowledge of a_i0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DealerBroadcast {
    /// The dealer i.
    pub dealer: MemberIndex,
    /// A_i0 … A_i,t−1.
    pub commitments: Vec<RistrettoPoint>,
    /// Schnorr commitment R = k·G of the proof of knowledge of a_i0.
    pub proof_commitment: RistrettoPoint,
    /// Schnorr response z = k + c·a_i0.
    pub proof_response: Scalar,
}

/// Round 1, private: dealer i's share f_i(j) for member j. Secret: send it only over a
/// confidential, authenticated channel. Zeroised on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct DealerShare {
    /// The dealer i.
    #[zeroize(skip)]
    pub dealer: MemberIndex,
    /// The recipient j.
    #[zeroize(skip)]
    pub recipient: MemberIndex,
    /// f_i(j).
    pub share: Scalar,
}

impl std::fmt::Debug for DealerShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DealerShare(dealer {} to member {}, <redacted>)",
            self.dealer, self.recipient
        )
    }
}

/// Round 2, broadcast: member `complainer` says dealer `dealer`'s share is missing or does not
/// match the dealer's commitments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Complaint {
    /// The member that complains.
    pub complainer: MemberIndex,
    /// The dealer complained about.
    pub dealer: MemberIndex,
}

/// Round 3, broadcast: dealer `dealer` answers a complaint by revealing f_dealer(recipient).
/// Everyone checks it against the dealer's commitments; a dealer that cannot answer is
/// excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Justification {
    /// The dealer.
    pub dealer: MemberIndex,
    /// The complaining member.
    pub recipient: MemberIndex,
    /// The revealed share f_dealer(recipient).
    pub share: Scalar,
}

impl Wire for DealerBroadcast {
    const TAG: u8 = tags::DKG_BROADCAST;
    const NAME: &'static str = "dkg dealer broadcast";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.dealer.get());
        writer.len(self.commitments.len());
        for commitment in &self.commitments {
            writer.point(commitment);
        }
        writer.point(&self.proof_commitment);
        writer.scalar(&self.proof_response);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let dealer = read_member(reader, "dkg dealer")?;
        let count = reader.len("dkg commitment count", MAX_COMMITTEE, 32)?;
        let mut commitments = Vec::with_capacity(count);
        for _ in 0..count {
            commitments.push(reader.point("dkg commitment")?);
        }
        Ok(Self {
            dealer,
            commitments,
            proof_commitment: reader.point("dkg proof commitment")?,
            proof_response: reader.scalar("dkg proof response")?,
        })
    }
}

impl Wire for DealerShare {
    const TAG: u8 = tags::DKG_SHARE;
    const NAME: &'static str = "dkg dealer share";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.dealer.get());
        writer.u16(self.recipient.get());
        writer.scalar(&self.share);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            dealer: read_member(reader, "dkg dealer")?,
            recipient: read_member(reader, "dkg recipient")?,
            share: reader.scalar("dkg share")?,
        })
    }
}

impl Wire for Complaint {
    const TAG: u8 = tags::DKG_COMPLAINT;
    const NAME: &'static str = "dkg complaint";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.complainer.get());
        writer.u16(self.dealer.get());
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            complainer: read_member(reader, "dkg complainer")?,
            dealer: read_member(reader, "dkg dealer")?,
        })
    }
}

impl Wire for Justification {
    const TAG: u8 = tags::DKG_JUSTIFICATION;
    const NAME: &'static str = "dkg justification";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u16(self.dealer.get());
        writer.u16(self.recipient.get());
        writer.scalar(&self.share);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            dealer: read_member(reader, "dkg dealer")?,
            recipient: read_member(reader, "dkg recipient")?,
            share: reader.scalar("dkg revealed share")?,
        })
    }
}
