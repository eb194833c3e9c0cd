//! Versioned, domain-separated hashing.
//!
//! Every hash the ledger computes goes through [`tagged_hash`], which binds a label such as
//! `cohortex/ledger/txid/v1` to the hashed bytes so that a digest made for one purpose can never
//! be replayed as a digest for another. The encoding is unambiguous:
//!
//! ```text
//! tagged_hash(label, parts) = SHA-256( u8(len(label)) || label
//!                                      || for each part: u64_be(len(part)) || part )
//! ```
//!
//! The only hashes that do not use this encoding are the RFC 6962 Merkle hashes
//! (`SHA-256(0x00 || leaf)` and `SHA-256(0x01 || left || right)`), which `ct-merkle` computes and
//! whose prefixes are fixed by the RFC.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::labels::{LABEL_CONTRIBUTION, LABEL_CONTRIBUTIONS, LABEL_MANIFEST, LABEL_QUERY};

/// A 32-byte SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

/// Hashes `parts` under the domain-separation `label` (see the module documentation).
pub fn tagged_hash(label: &str, parts: &[&[u8]]) -> Hash32 {
    debug_assert!(label.len() <= usize::from(u8::MAX), "label too long");
    let mut hasher = TaggedHasher::new(label);
    for part in parts {
        hasher.update_part(part);
    }
    hasher.finalize()
}

/// Incremental form of [`tagged_hash`] for values too large to build as one buffer.
///
/// [`TaggedHasher::update_part`] frames each part with its length; the [`std::io::Write`]
/// implementation instead feeds a single unframed stream and is used for the state hash, whose
/// input is one postcard encoding (self-delimiting).
pub struct TaggedHasher {
    inner: Sha256,
}

impl TaggedHasher {
    /// Starts a hash under `label`.
    pub fn new(label: &str) -> Self {
        let mut inner = Sha256::new();
        // Labels are short constants; truncation cannot happen (checked in debug builds).
        let label_len = u8::try_from(label.len()).unwrap_or(u8::MAX);
        inner.update([label_len]);
        inner.update(label.as_bytes());
        TaggedHasher { inner }
    }

    /// Adds one length-framed part.
    pub fn update_part(&mut self, part: &[u8]) {
        self.inner.update((part.len() as u64).to_be_bytes());
        self.inner.update(part);
    }

    /// Finishes the hash.
    pub fn finalize(self) -> Hash32 {
        Hash32(self.inner.finalize().into())
    }
}

impl std::io::Write for TaggedHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hash an order carries for its SQL text.
pub fn query_hash(sql: &str) -> Hash32 {
    tagged_hash(LABEL_QUERY, &[sql.as_bytes()])
}

/// The hash a listing carries for its manifest text: a node calibrates noise only from a
/// manifest that hashes to the listing's `schema_hash` on the ledger.
pub fn manifest_hash(manifest: &str) -> Hash32 {
    tagged_hash(LABEL_MANIFEST, &[manifest.as_bytes()])
}

/// The hash of one listing's contribution as its node returned it: every CXZK-encoded
/// ciphertext, in slot order, then the CXZK-encoded range proof.
pub fn contribution_hash(ciphertexts: &[Vec<u8>], proof: &[u8]) -> Hash32 {
    let mut hasher = TaggedHasher::new(LABEL_CONTRIBUTION);
    hasher.update_part(&(ciphertexts.len() as u64).to_be_bytes());
    for ciphertext in ciphertexts {
        hasher.update_part(ciphertext);
    }
    hasher.update_part(proof);
    hasher.finalize()
}

/// A receipt's `contributions_root`: the listings' contribution hashes, in the order's listing
/// order.
pub fn contributions_root<'a>(hashes: impl IntoIterator<Item = &'a Hash32>) -> Hash32 {
    let mut hasher = TaggedHasher::new(LABEL_CONTRIBUTIONS);
    for hash in hashes {
        hasher.update_part(hash.as_bytes());
    }
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{LABEL_BLOCK, LABEL_TXID};

    #[test]
    fn tagged_hash_matches_its_documented_encoding() {
        let label = "cohortex/test/v1";
        let mut manual = Vec::new();
        manual.push(label.len() as u8);
        manual.extend_from_slice(label.as_bytes());
        manual.extend_from_slice(&3u64.to_be_bytes());
        manual.extend_from_slice(b"abc");
        let expected: [u8; 32] = Sha256::digest(&manual).into();
        assert_eq!(tagged_hash(label, &[b"abc"]).0, expected);
    }

    #[test]
    fn different_labels_give_different_hashes() {
        assert_ne!(
            tagged_hash(LABEL_TXID, &[b"x"]),
            tagged_hash(LABEL_BLOCK, &[b"x"])
        );
    }

    #[test]
    fn part_boundaries_are_bound() {
        assert_ne!(
            tagged_hash(LABEL_TXID, &[b"ab", b"c"]),
            tagged_hash(LABEL_TXID, &[b"a", b"bc"])
        );
    }
}
