//! The RFC 6962 transaction log, block headers, signed tree heads and receipts.
//!
//! The log is a Merkle tree (RFC 6962 §2.1, computed by `ct-merkle`) whose leaves are
//! transaction ids in the order the blocks commit them. Leaf hash = `SHA-256(0x00 || txid)`,
//! node hash = `SHA-256(0x01 || left || right)`, empty tree = `SHA-256("")`.
//!
//! Each block ends with a *signed tree head*: the block header (which carries the tree size and
//! root after the block) and the sequencer's ed25519 signature over
//! `tagged_hash("cohortex/ledger/tree-head/v1", [header bytes])`. A [`Receipt`] is a signed
//! transaction, its leaf index, an inclusion proof and a signed tree head: anyone holding the
//! ledger's public key can check it offline with [`Receipt::verify`].

use crate::hash::{tagged_hash, Hash32, LABEL_BLOCK, LABEL_TREE_HEAD};
use crate::tx::{txid_of, TxId, UncheckedTx, VerifiedTx};
use crate::TxError;
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::Sha256;
use thiserror::Error;

/// Version byte of the block header layout.
pub const BLOCK_HEADER_VERSION: u8 = 1;
/// Encoded size of a [`BlockHeader`].
pub const BLOCK_HEADER_LEN: usize = 1 + 32 + 8 + 8 + 32 + 4 + 8 + 32 + 32;
/// Encoded size of a [`SignedTreeHead`].
pub const SIGNED_TREE_HEAD_LEN: usize = BLOCK_HEADER_LEN + 64;
/// Version byte of the receipt layout.
pub const RECEIPT_VERSION: u8 = 1;
/// Largest inclusion proof accepted when decoding (64 hashes cover any tree).
pub const MAX_PROOF_HASHES: usize = 64;

/// Errors reading or checking log objects.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The bytes have the wrong length for the layout.
    #[error("{what} has {got} bytes, expected {expected}")]
    WrongLength {
        /// Which object.
        what: &'static str,
        /// Bytes found.
        got: usize,
        /// Bytes the layout needs.
        expected: usize,
    },
    /// The version byte is not one this code reads.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which object.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// The bytes are truncated or carry a length field that does not fit.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The tree-head signature does not verify under the ledger key.
    #[error("tree head signature does not verify under the ledger key")]
    BadHeadSignature,
    /// The leaf is not in the tree the head commits to.
    #[error("inclusion proof does not verify: {0}")]
    InclusionFailed(String),
    /// The two heads do not describe one append-only log.
    #[error("consistency proof does not verify: {0}")]
    ConsistencyFailed(String),
    /// The receipt's transaction is not a validly signed transaction.
    #[error("receipt transaction is invalid: {0}")]
    InvalidTransaction(TxError),
    /// A proof was asked for a leaf or size the log does not have.
    #[error("log has {size} leaves; {what} {requested} is out of range")]
    OutOfRange {
        /// What was asked for.
        what: &'static str,
        /// The value asked for.
        requested: u64,
        /// Leaves in the log.
        size: u64,
    },
    /// The two heads are for different chains.
    #[error("tree heads are for different chains")]
    DifferentChains,
}

/// The header of a block. Fixed layout, big-endian integers:
///
/// ```text
/// version u8 | chain_id [32] | height u64 | time u64 | prev_block_hash [32]
/// | tx_count u32 | tree_size u64 | tree_root [32] | state_hash [32]        (157 bytes)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    /// Chain id (hash of the genesis configuration).
    pub chain_id: Hash32,
    /// Height, starting at 1.
    pub height: u64,
    /// Block time, unix seconds.
    pub time: u64,
    /// Hash of the previous block; the chain id for block 1.
    pub prev_block_hash: Hash32,
    /// Transactions in the block.
    pub tx_count: u32,
    /// Leaves in the log after this block.
    pub tree_size: u64,
    /// RFC 6962 root of the log after this block.
    pub tree_root: Hash32,
    /// [`crate::State::hash`] after this block.
    pub state_hash: Hash32,
}

impl BlockHeader {
    /// Encodes the header (see the type documentation for the layout).
    pub fn to_bytes(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut out = [0u8; BLOCK_HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&[BLOCK_HEADER_VERSION]);
        put(self.chain_id.as_bytes());
        put(&self.height.to_be_bytes());
        put(&self.time.to_be_bytes());
        put(self.prev_block_hash.as_bytes());
        put(&self.tx_count.to_be_bytes());
        put(&self.tree_size.to_be_bytes());
        put(self.tree_root.as_bytes());
        put(self.state_hash.as_bytes());
        out
    }

    /// Decodes a header.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() != BLOCK_HEADER_LEN {
            return Err(LogError::WrongLength {
                what: "block header",
                got: bytes.len(),
                expected: BLOCK_HEADER_LEN,
            });
        }
        let mut reader = Reader::new(bytes, "block header");
        let version = reader.u8()?;
        if version != BLOCK_HEADER_VERSION {
            return Err(LogError::UnsupportedVersion {
                what: "block header",
                version,
            });
        }
        Ok(BlockHeader {
            chain_id: reader.hash()?,
            height: reader.u64()?,
            time: reader.u64()?,
            prev_block_hash: reader.hash()?,
            tx_count: reader.u32()?,
            tree_size: reader.u64()?,
            tree_root: reader.hash()?,
            state_hash: reader.hash()?,
        })
    }

    /// The digest the sequencer signs.
    pub fn signing_digest(&self) -> Hash32 {
        tagged_hash(LABEL_TREE_HEAD, &[&self.to_bytes()])
    }

    /// The tree root and size as `ct-merkle` sees them.
    pub fn root(&self) -> RootHash<Sha256> {
        RootHash::new(self.tree_root.0.into(), self.tree_size)
    }
}

/// A block header with the sequencer's signature: the signed tree head.
///
/// Layout: `header (157 bytes) || signature (64 bytes)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The header.
    pub header: BlockHeader,
    /// ed25519 over `tagged_hash("cohortex/ledger/tree-head/v1", [header bytes])`.
    pub signature: Signature,
}

impl SignedTreeHead {
    /// Checks the signature under the ledger key.
    pub fn verify(&self, ledger_key: &VerifyingKey) -> Result<(), LogError> {
        ledger_key
            .verify_strict(self.header.signing_digest().as_bytes(), &self.signature)
            .map_err(|_| LogError::BadHeadSignature)
    }

    /// The block hash: `tagged_hash("cohortex/ledger/block/v1", [header bytes, signature])`.
    pub fn block_hash(&self) -> Hash32 {
        tagged_hash(
            LABEL_BLOCK,
            &[&self.header.to_bytes(), &self.signature.to_bytes()],
        )
    }

    /// Encodes the head.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNED_TREE_HEAD_LEN);
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// Decodes a head (does not check the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() != SIGNED_TREE_HEAD_LEN {
            return Err(LogError::WrongLength {
                what: "signed tree head",
                got: bytes.len(),
                expected: SIGNED_TREE_HEAD_LEN,
            });
        }
        let (header, signature) = bytes.split_at(BLOCK_HEADER_LEN);
        Ok(SignedTreeHead {
            header: BlockHeader::from_bytes(header)?,
            signature: Signature::from_slice(signature)
                .map_err(|_| LogError::Malformed("signature"))?,
        })
    }
}

/// Proof that a signed transaction is in the log a signed tree head commits to.
///
/// Layout (big-endian):
///
/// ```text
/// version u8 (=1) | signed tree head (221) | leaf_index u64
/// | proof_hashes u8 | proof (32 × proof_hashes) | tx_len u32 | signed tx (tx_len)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The signed transaction (envelope bytes); its txid is the leaf.
    pub tx: Vec<u8>,
    /// Index of the leaf in the log.
    pub leaf_index: u64,
    /// RFC 6962 audit path, leaf to root.
    pub inclusion_proof: Vec<u8>,
    /// The head the proof leads to.
    pub head: SignedTreeHead,
}

impl Receipt {
    /// The transaction id the receipt proves.
    pub fn txid(&self) -> TxId {
        txid_of(&self.tx)
    }

    /// Verifies the receipt offline: the head's signature under `ledger_key`, the transaction's
    /// own signature, and the inclusion of its id at `leaf_index` under the head's root.
    /// Returns the verified transaction.
    pub fn verify(&self, ledger_key: &VerifyingKey) -> Result<VerifiedTx, LogError> {
        self.head.verify(ledger_key)?;
        let tx = UncheckedTx::parse(self.tx.clone())
            .and_then(UncheckedTx::verify)
            .map_err(LogError::InvalidTransaction)?;
        verify_inclusion(
            &self.head.header.tree_root,
            self.head.header.tree_size,
            &tx.id(),
            self.leaf_index,
            &self.inclusion_proof,
        )?;
        Ok(tx)
    }

    /// Encodes the receipt (see the type documentation for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, LogError> {
        let proof_hashes = u8::try_from(self.inclusion_proof.len() / 32)
            .map_err(|_| LogError::Malformed("inclusion proof too long"))?;
        let tx_len = u32::try_from(self.tx.len())
            .map_err(|_| LogError::Malformed("transaction too long"))?;
        let mut out = Vec::with_capacity(
            1 + SIGNED_TREE_HEAD_LEN + 8 + 1 + self.inclusion_proof.len() + 4 + self.tx.len(),
        );
        out.push(RECEIPT_VERSION);
        out.extend_from_slice(&self.head.to_bytes());
        out.extend_from_slice(&self.leaf_index.to_be_bytes());
        out.push(proof_hashes);
        out.extend_from_slice(&self.inclusion_proof);
        out.extend_from_slice(&tx_len.to_be_bytes());
        out.extend_from_slice(&self.tx);
        Ok(out)
    }

    /// Decodes a receipt (does not verify it); lengths are checked before allocating.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        let mut reader = Reader::new(bytes, "receipt");
        let version = reader.u8()?;
        if version != RECEIPT_VERSION {
            return Err(LogError::UnsupportedVersion {
                what: "receipt",
                version,
            });
        }
        let head = SignedTreeHead::from_bytes(reader.take(SIGNED_TREE_HEAD_LEN)?)?;
        let leaf_index = reader.u64()?;
        let proof_hashes = usize::from(reader.u8()?);
        if proof_hashes > MAX_PROOF_HASHES {
            return Err(LogError::Malformed("inclusion proof too long"));
        }
        let inclusion_proof = reader.take(proof_hashes * 32)?.to_vec();
        let tx_len = reader.u32()? as usize;
        if tx_len > crate::tx::MAX_SIGNED_TX_LEN {
            return Err(LogError::Malformed("transaction too long"));
        }
        let tx = reader.take(tx_len)?.to_vec();
        if !reader.is_empty() {
            return Err(LogError::Malformed("trailing bytes after receipt"));
        }
        Ok(Receipt {
            tx,
            leaf_index,
            inclusion_proof,
            head,
        })
    }
}

/// Checks an RFC 6962 inclusion proof of `txid` at `leaf_index` in the tree with `tree_size`
/// leaves and root `tree_root`.
pub fn verify_inclusion(
    tree_root: &Hash32,
    tree_size: u64,
    txid: &TxId,
    leaf_index: u64,
    proof: &[u8],
) -> Result<(), LogError> {
    let proof = InclusionProof::<Sha256>::try_from_bytes(proof.to_vec())
        .map_err(|e| LogError::InclusionFailed(e.to_string()))?;
    RootHash::<Sha256>::new(tree_root.0.into(), tree_size)
        .verify_inclusion(txid, leaf_index, &proof)
        .map_err(|e| LogError::InclusionFailed(e.to_string()))
}

/// Checks that `new` extends `old` (both signed by `ledger_key`) using an RFC 6962 consistency
/// proof, as an auditor does between two heads it has seen.
pub fn verify_consistency(
    old: &SignedTreeHead,
    new: &SignedTreeHead,
    proof: &[u8],
    ledger_key: &VerifyingKey,
) -> Result<(), LogError> {
    old.verify(ledger_key)?;
    new.verify(ledger_key)?;
    if old.header.chain_id != new.header.chain_id {
        return Err(LogError::DifferentChains);
    }
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.to_vec())
        .map_err(|e| LogError::ConsistencyFailed(e.to_string()))?;
    new.header
        .root()
        .verify_consistency(&old.header.root(), &proof)
        .map_err(|e| LogError::ConsistencyFailed(e.to_string()))
}

/// The in-memory Merkle tree over transaction ids (rebuilt from storage on open).
#[derive(Default, Clone)]
pub struct MerkleLog {
    tree: MemoryBackedTree<Sha256, TxId>,
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf.
    pub fn push(&mut self, txid: TxId) {
        self.tree.push(txid);
    }

    /// Drops every leaf from position `size` on: the log as it was at that size. Rebuilds the
    /// tree, linear in `size`; for undoing a block that failed its checks.
    pub fn truncate(&mut self, size: u64) {
        if size >= self.size() {
            return;
        }
        let kept = usize::try_from(size).unwrap_or(usize::MAX);
        let mut tree = MemoryBackedTree::new();
        for txid in &self.tree.items()[..kept] {
            tree.push(*txid);
        }
        self.tree = tree;
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.tree.len()
    }

    /// RFC 6962 root of the current tree (`SHA-256("")` when empty).
    pub fn root(&self) -> Hash32 {
        let root = self.tree.root();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(root.as_bytes());
        Hash32(bytes)
    }

    /// The leaf at `index`.
    pub fn leaf(&self, index: u64) -> Option<TxId> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.tree.get(i))
            .copied()
    }

    /// Inclusion proof of leaf `index` in the current tree.
    pub fn prove_inclusion(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let size = self.size();
        let in_range = usize::try_from(index).ok().filter(|_| index < size);
        let Some(index) = in_range else {
            return Err(LogError::OutOfRange {
                what: "leaf index",
                requested: index,
                size,
            });
        };
        Ok(self.tree.prove_inclusion(index).as_bytes().to_vec())
    }

    /// Consistency proof from the tree of `old_size` leaves to the current tree.
    pub fn prove_consistency(&self, old_size: u64) -> Result<Vec<u8>, LogError> {
        let size = self.size();
        if old_size == 0 || old_size > size {
            return Err(LogError::OutOfRange {
                what: "old tree size",
                requested: old_size,
                size,
            });
        }
        let additions = usize::try_from(size - old_size).map_err(|_| LogError::OutOfRange {
            what: "old tree size",
            requested: old_size,
            size,
        })?;
        Ok(self.tree.prove_consistency(additions).as_bytes().to_vec())
    }
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.bytes.len() < n {
            return Err(LogError::Malformed(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LogError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn hash(&mut self) -> Result<Hash32, LogError> {
        Ok(Hash32(self.array()?))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn header() -> BlockHeader {
        BlockHeader {
            chain_id: Hash32([1; 32]),
            height: 7,
            time: 1_700_000_000,
            prev_block_hash: Hash32([2; 32]),
            tx_count: 3,
            tree_size: 12,
            tree_root: Hash32([4; 32]),
            state_hash: Hash32([5; 32]),
        }
    }

    #[test]
    fn header_layout_is_157_bytes_and_round_trips() {
        let bytes = header().to_bytes();
        assert_eq!(bytes.len(), 157);
        assert_eq!(bytes[0], BLOCK_HEADER_VERSION);
        assert_eq!(&bytes[33..41], &7u64.to_be_bytes());
        assert_eq!(&bytes[81..85], &3u32.to_be_bytes());
        assert_eq!(BlockHeader::from_bytes(&bytes), Ok(header()));
        assert!(BlockHeader::from_bytes(&bytes[..156]).is_err());
        let mut wrong_version = bytes;
        wrong_version[0] = 2;
        assert!(matches!(
            BlockHeader::from_bytes(&wrong_version),
            Err(LogError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn signed_head_round_trips_and_detects_a_changed_field() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let signature = key.sign(header().signing_digest().as_bytes());
        let head = SignedTreeHead {
            header: header(),
            signature,
        };
        let decoded = SignedTreeHead::from_bytes(&head.to_bytes()).expect("decode");
        assert_eq!(decoded, head);
        assert!(decoded.verify(&key.verifying_key()).is_ok());
        let mut changed = head;
        changed.header.tree_size += 1;
        assert_eq!(
            changed.verify(&key.verifying_key()),
            Err(LogError::BadHeadSignature)
        );
    }

    #[test]
    fn receipt_decoder_refuses_oversized_lengths_before_allocating() {
        let mut bytes = vec![RECEIPT_VERSION];
        bytes.extend_from_slice(&[0u8; SIGNED_TREE_HEAD_LEN]);
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.push(200); // more proof hashes than any tree needs
        assert!(Receipt::from_bytes(&bytes).is_err());
    }
}
