//! Merlin transcripts with versioned domain separation.
//!
//! Every proof in this crate starts from [`ProofContext::transcript`], which commits to a
//! protocol label (with its version) and to the context the proof is made for: the query id and
//! the id of the node (or committee member) that proves. A proof made for one query therefore
//! produces different Fiat–Shamir challenges under any other query or node and does not verify
//! there: it cannot be replayed.
//!
//! All labels go through the one extension trait [`TranscriptProtocol`], so the full list of
//! domain separators lives in this file.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;

use crate::errors::DecodeError;

/// Label of the outermost transcript; bump the version when any proof's transcript changes.
pub const TRANSCRIPT_LABEL: &[u8] = b"cohortex.zk.v1";

/// Longest query or node id accepted in a context, in bytes.
pub const MAX_CONTEXT_ID_LEN: usize = 256;

/// Domain separators of the protocols in this crate, each with its version.
pub mod labels {
    /// Range proofs bound to ElGamal ciphertexts (bulletproofs over (G, Y)).
    pub const RANGE: &[u8] = b"cohortex.range.v1";
    /// The sigma proof tying C1 = r·G to the randomness in C2.
    pub const LINKING: &[u8] = b"cohortex.linking.v1";
    /// One-hot histogram proofs (bit OR-proofs plus a zero proof for the sum).
    pub const ONE_HOT: &[u8] = b"cohortex.one-hot.v1";
    /// Threshold key-switch shares.
    pub const KEY_SWITCH: &[u8] = b"cohortex.key-switch.v1";
    /// The DKG dealer's proof of knowledge of its constant term.
    pub const DKG_POK: &[u8] = b"cohortex.dkg.pok.v1";
}

/// What a proof is bound to: the query it answers and the party that made it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProofContext {
    /// Identifier of the query (or DKG session) the proof belongs to.
    query_id: Vec<u8>,
    /// Identifier of the proving node or committee member.
    node_id: Vec<u8>,
}

impl ProofContext {
    /// Builds a context; each id must be 1 to [`MAX_CONTEXT_ID_LEN`] bytes.
    pub fn new(query_id: &[u8], node_id: &[u8]) -> Result<Self, DecodeError> {
        check_id("query_id", query_id)?;
        check_id("node_id", node_id)?;
        Ok(Self {
            query_id: query_id.to_vec(),
            node_id: node_id.to_vec(),
        })
    }

    /// The query id.
    pub fn query_id(&self) -> &[u8] {
        &self.query_id
    }

    /// The node id.
    pub fn node_id(&self) -> &[u8] {
        &self.node_id
    }

    /// A fresh transcript for `protocol`, bound to this context.
    pub fn transcript(&self, protocol: &'static [u8]) -> Transcript {
        let mut transcript = Transcript::new(TRANSCRIPT_LABEL);
        transcript.append_message(b"protocol", protocol);
        transcript.append_message(b"query-id", &self.query_id);
        transcript.append_message(b"node-id", &self.node_id);
        transcript
    }
}

fn check_id(field: &'static str, id: &[u8]) -> Result<(), DecodeError> {
    if id.is_empty() {
        return Err(DecodeError::Invalid {
            field,
            reason: "must not be empty",
        });
    }
    if id.len() > MAX_CONTEXT_ID_LEN {
        return Err(DecodeError::LengthTooLarge {
            field,
            len: id.len() as u64,
            max: MAX_CONTEXT_ID_LEN as u64,
        });
    }
    Ok(())
}

/// The one place where points, scalars and challenges enter a transcript.
pub trait TranscriptProtocol {
    /// Appends a point under `label`.
    fn append_point(&mut self, label: &'static [u8], point: &RistrettoPoint);
    /// Appends an already-compressed point under `label`.
    fn append_compressed(&mut self, label: &'static [u8], point: &CompressedRistretto);
    /// Appends a scalar under `label`.
    fn append_scalar(&mut self, label: &'static [u8], scalar: &Scalar);
    /// Derives a uniformly distributed challenge scalar from 64 transcript bytes.
    fn challenge_scalar(&mut self, label: &'static [u8]) -> Scalar;
}

impl TranscriptProtocol for Transcript {
    fn append_point(&mut self, label: &'static [u8], point: &RistrettoPoint) {
        self.append_message(label, point.compress().as_bytes());
    }

    fn append_compressed(&mut self, label: &'static [u8], point: &CompressedRistretto) {
        self.append_message(label, point.as_bytes());
    }

    fn append_scalar(&mut self, label: &'static [u8], scalar: &Scalar) {
        self.append_message(label, scalar.as_bytes());
    }

    fn challenge_scalar(&mut self, label: &'static [u8]) -> Scalar {
        let mut wide = [0u8; 64];
        self.challenge_bytes(label, &mut wide);
        Scalar::from_bytes_mod_order_wide(&wide)
    }
}
