//! Versioned, size-checked binary encoding of every public type.
//!
//! An encoded object is
//!
//! ```text
//! magic "CXZK" (4 bytes) ‖ version (1 byte, currently 1) ‖ type tag (1 byte) ‖ body
//! ```
//!
//! Bodies are fixed-width little-endian integers, 32-byte compressed Ristretto points and
//! 32-byte canonical scalars, and vectors prefixed by a `u32` length. Decoding
//!
//! * rejects non-canonical point encodings and the identity point,
//! * rejects non-canonical scalars,
//! * checks every declared length against a per-field limit *and* against the bytes that remain
//!   before allocating anything, and
//! * rejects trailing bytes,
//!
//! so a hostile peer cannot make a decoder allocate more than the message it sent.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;

use crate::errors::DecodeError;

/// The four bytes every encoded object starts with.
pub const MAGIC: [u8; 4] = *b"CXZK";
/// The encoding version this build writes and reads.
pub const VERSION: u8 = 1;

/// Type tags of the encoded objects. Never reuse a retired tag.
pub mod tags {
    /// [`crate::PublicKey`].
    pub const PUBLIC_KEY: u8 = 1;
    /// [`crate::Ciphertext`].
    pub const CIPHERTEXT: u8 = 2;
    /// [`crate::CiphertextVector`].
    pub const CIPHERTEXT_VECTOR: u8 = 3;
    /// [`crate::CiphertextRangeProof`].
    pub const RANGE_PROOF: u8 = 4;
    /// [`crate::OneHotProof`].
    pub const ONE_HOT_PROOF: u8 = 5;
    /// [`crate::dkg::messages::DealerBroadcast`].
    pub const DKG_BROADCAST: u8 = 6;
    /// [`crate::dkg::messages::DealerShare`] (secret: send only over a confidential channel).
    pub const DKG_SHARE: u8 = 7;
    /// [`crate::dkg::messages::Complaint`].
    pub const DKG_COMPLAINT: u8 = 8;
    /// [`crate::dkg::messages::Justification`].
    pub const DKG_JUSTIFICATION: u8 = 9;
    /// [`crate::KeySwitchShare`].
    pub const KEY_SWITCH_SHARE: u8 = 10;
    /// [`crate::CommitteePublic`].
    pub const COMMITTEE_PUBLIC: u8 = 11;
    /// [`crate::proofs::linking::LinkingProof`].
    pub const LINKING_PROOF: u8 = 12;
    /// [`crate::KeyShare`] (secret: for the member's own storage only).
    pub const KEY_SHARE: u8 = 13;
}

/// A type with a versioned binary encoding.
pub trait Wire: Sized {
    /// The type tag written after the version byte.
    const TAG: u8;
    /// Human-readable type name used in errors.
    const NAME: &'static str;

    /// Writes the body (everything after the header).
    fn encode_body(&self, writer: &mut Writer);

    /// Reads the body; the header has been checked.
    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Encodes the object with its header.
    fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::default();
        writer.bytes.extend_from_slice(&MAGIC);
        writer.u8(VERSION);
        writer.u8(Self::TAG);
        self.encode_body(&mut writer);
        writer.bytes
    }

    /// Decodes an object, checking magic, version, tag, every field and that no bytes remain.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let magic = reader.take(4, "magic")?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = reader.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let tag = reader.u8("type tag")?;
        if tag != Self::TAG {
            return Err(DecodeError::WrongType {
                expected: Self::NAME,
                found: tag,
            });
        }
        let value = Self::decode_body(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

/// Appends encoded fields to a buffer.
#[derive(Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// Writes one byte.
    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }
    /// Writes a little-endian `u16`.
    pub fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// Writes a little-endian `u32`.
    pub fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// Writes a compressed point.
    pub fn point(&mut self, point: &RistrettoPoint) {
        self.bytes.extend_from_slice(point.compress().as_bytes());
    }
    /// Writes an already-compressed point.
    pub fn compressed(&mut self, point: &CompressedRistretto) {
        self.bytes.extend_from_slice(point.as_bytes());
    }
    /// Writes a scalar.
    pub fn scalar(&mut self, scalar: &Scalar) {
        self.bytes.extend_from_slice(scalar.as_bytes());
    }
    /// Writes a `u32` length prefix. Lengths are bounded by the types' own limits.
    pub fn len(&mut self, len: usize) {
        debug_assert!(u32::try_from(len).is_ok(), "length prefix overflows u32");
        self.u32(len as u32);
    }
    /// Writes a length-prefixed byte string.
    pub fn byte_string(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.bytes.extend_from_slice(bytes);
    }
    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// Writes raw bytes with no prefix (for fixed-size fields).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

/// Reads encoded fields from untrusted bytes.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Takes exactly `count` bytes.
    pub fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < count {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn array32(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32, field)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Reads a point, rejecting non-canonical encodings and the identity.
    pub fn point(&mut self, field: &'static str) -> Result<RistrettoPoint, DecodeError> {
        decode_point(&self.array32(field)?, field)
    }

    /// Reads a compressed point after checking that it decompresses and is not the identity.
    pub fn compressed(&mut self, field: &'static str) -> Result<CompressedRistretto, DecodeError> {
        let bytes = self.array32(field)?;
        decode_point(&bytes, field)?;
        Ok(CompressedRistretto(bytes))
    }

    /// Reads a canonical scalar.
    pub fn scalar(&mut self, field: &'static str) -> Result<Scalar, DecodeError> {
        let bytes = self.array32(field)?;
        Option::from(Scalar::from_canonical_bytes(bytes))
            .ok_or(DecodeError::NonCanonicalScalar { field })
    }

    /// Reads a `u32` length, checking it against `max` and against the remaining input, given
    /// that each element takes at least `min_element_size` bytes. Nothing is allocated here;
    /// callers may allocate `len` elements afterwards.
    pub fn len(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_size: usize,
    ) -> Result<usize, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::LengthTooLarge {
                field,
                len: len as u64,
                max: max as u64,
            });
        }
        let needed = len.saturating_mul(min_element_size);
        if needed > self.rest.len() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(len)
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn byte_string(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.len(field, max, 1)?;
        Ok(self.take(len, field)?.to_vec())
    }

    /// Fails if any bytes remain.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }
}

/// Decompresses a point, rejecting non-canonical encodings and the identity.
pub fn decode_point(bytes: &[u8; 32], field: &'static str) -> Result<RistrettoPoint, DecodeError> {
    let point = CompressedRistretto(*bytes)
        .decompress()
        .ok_or(DecodeError::NonCanonicalPoint { field })?;
    if point.is_identity() {
        return Err(DecodeError::IdentityPoint { field });
    }
    Ok(point)
}
