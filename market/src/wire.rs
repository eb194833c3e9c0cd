//! The ledger's proofs on the wire (feature `wire`): tree heads and inclusion proofs to and
//! from their `cohortex.v1` messages. Clients that verify receipts need these and nothing of
//! the server.

use cohortex_proto::v1;

use crate::log::{LogError, Receipt, SignedTreeHead};

/// Splits a concatenation of 32-byte hashes (an RFC 6962 proof) into the hashes.
pub(crate) fn split_hashes(proof: &[u8]) -> Vec<Vec<u8>> {
    debug_assert_eq!(proof.len() % 32, 0, "proofs are whole hashes");
    proof.chunks(32).map(<[u8]>::to_vec).collect()
}

impl From<&SignedTreeHead> for v1::SignedTreeHead {
    fn from(head: &SignedTreeHead) -> Self {
        v1::SignedTreeHead {
            tree_size: head.header.tree_size,
            root: head.header.tree_root.as_bytes().to_vec(),
            height: head.header.height,
            signature: head.signature.to_bytes().to_vec(),
            encoded: head.header.to_bytes().to_vec(),
        }
    }
}

/// Reads a tree head received over gRPC (does not check the signature: call
/// [`SignedTreeHead::verify`]). The convenience copies of size, root and height must equal the
/// encoded header's.
impl TryFrom<v1::SignedTreeHead> for SignedTreeHead {
    type Error = LogError;

    fn try_from(message: v1::SignedTreeHead) -> Result<Self, LogError> {
        let mut bytes = message.encoded;
        bytes.extend_from_slice(&message.signature);
        let head = SignedTreeHead::from_bytes(&bytes)?;
        let copies_agree = head.header.tree_size == message.tree_size
            && head.header.tree_root.as_bytes().as_slice() == message.root.as_slice()
            && head.header.height == message.height;
        if !copies_agree {
            return Err(LogError::Malformed(
                "tree head fields disagree with the encoded header",
            ));
        }
        Ok(head)
    }
}

impl From<&Receipt> for v1::InclusionProof {
    fn from(receipt: &Receipt) -> Self {
        v1::InclusionProof {
            leaf_index: receipt.leaf_index,
            tree_size: receipt.head.header.tree_size,
            hashes: split_hashes(&receipt.inclusion_proof),
            tree_head: Some((&receipt.head).into()),
        }
    }
}
