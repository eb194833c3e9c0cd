//! Exponential ElGamal on Ristretto255.
//!
//! With generator G and a public key Y = x·G, a message m ∈ ℤ_ℓ is encrypted with fresh
//! randomness r as
//!
//! ```text
//! (C1, C2) = (r·G, m·G + r·Y)
//! ```
//!
//! and decrypted as M = C2 − x·C1 = m·G followed by a discrete-log search for small |m|
//! ([`crate::bsgs`]). The scheme is additively homomorphic:
//! Enc(a; r) + Enc(b; s) = Enc(a + b; r + s) and k·Enc(a; r) = Enc(k·a; k·r). Re-randomising
//! adds an encryption of zero. Under the DDH assumption in the Ristretto group a ciphertext
//! reveals nothing about m (IND-CPA); it is malleable by design, which is why contributions carry
//! range and linking proofs ([`crate::proofs`]).
//!
//! Negative integers are encoded as ℓ − |m|, so sums of signed values decrypt correctly as long
//! as the total stays inside the decryption range.

use std::ops::{Add, Sub};

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::bsgs::DecryptionTable;
use crate::errors::{DecodeError, DecryptError};
use crate::wire::{tags, Reader, Wire, Writer};

/// Largest number of ciphertexts accepted in one encoded vector.
pub const MAX_VECTOR_LEN: usize = 1 << 16;

/// Converts a signed integer to a scalar (negative values wrap to ℓ − |m|).
pub fn scalar_from_i64(value: i64) -> Scalar {
    let magnitude = Scalar::from(value.unsigned_abs());
    if value < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// m·G computed with the precomputed basepoint table.
pub fn encode_message(message: &Scalar) -> RistrettoPoint {
    RISTRETTO_BASEPOINT_TABLE * message
}

/// An ElGamal secret key x. Zeroised on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(pub(crate) Scalar);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Samples a uniformly random secret key.
    pub fn random_with_rng<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self(Scalar::random(rng))
    }

    /// Wraps a scalar; the caller is responsible for its secrecy and uniformity.
    pub fn from_scalar(scalar: Scalar) -> Self {
        Self(scalar)
    }

    /// The matching public key Y = x·G.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(&self.0 * RISTRETTO_BASEPOINT_TABLE)
    }

    /// Returns M = C2 − x·C1 = m·G, the message as a group element.
    pub fn decrypt_to_point(&self, ciphertext: &Ciphertext) -> RistrettoPoint {
        ciphertext.c2 - self.0 * ciphertext.c1
    }

    /// Decrypts a bounded integer with a baby-step giant-step table.
    pub fn decrypt(
        &self,
        ciphertext: &Ciphertext,
        table: &DecryptionTable,
    ) -> Result<i64, DecryptError> {
        table.discrete_log(&self.decrypt_to_point(ciphertext))
    }

    /// Decrypts every element of a vector.
    pub fn decrypt_vector(
        &self,
        ciphertexts: &CiphertextVector,
        table: &DecryptionTable,
    ) -> Result<Vec<i64>, DecryptError> {
        ciphertexts
            .iter()
            .map(|ciphertext| self.decrypt(ciphertext, table))
            .collect()
    }
}

/// An ElGamal public key Y = x·G (for the committee: the collective key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub(crate) RistrettoPoint);

impl PublicKey {
    /// Wraps a point. Use [`Wire::from_bytes`] for untrusted input.
    pub fn from_point(point: RistrettoPoint) -> Self {
        Self(point)
    }

    /// The point Y.
    pub fn as_point(&self) -> &RistrettoPoint {
        &self.0
    }

    /// Encrypts `message` with randomness drawn from `rng`; returns the ciphertext and its
    /// opening (needed to prove statements about it).
    pub fn encrypt_with_opening<R: RngCore + CryptoRng>(
        &self,
        message: Scalar,
        rng: &mut R,
    ) -> (Ciphertext, Opening) {
        let randomness = Scalar::random(rng);
        let ciphertext = self.encrypt_with_randomness(&message, &randomness);
        (
            ciphertext,
            Opening {
                message,
                randomness,
            },
        )
    }

    /// Encrypts a signed integer.
    pub fn encrypt_with_rng<R: RngCore + CryptoRng>(
        &self,
        message: i64,
        rng: &mut R,
    ) -> Ciphertext {
        self.encrypt_with_opening(scalar_from_i64(message), rng).0
    }

    /// Encrypts with caller-chosen randomness: (r·G, m·G + r·Y).
    pub fn encrypt_with_randomness(&self, message: &Scalar, randomness: &Scalar) -> Ciphertext {
        Ciphertext {
            c1: randomness * RISTRETTO_BASEPOINT_TABLE,
            c2: encode_message(message) + randomness * self.0,
        }
    }

    /// Encrypts a vector of signed integers.
    pub fn encrypt_vector_with_rng<R: RngCore + CryptoRng>(
        &self,
        messages: &[i64],
        rng: &mut R,
    ) -> (CiphertextVector, Vec<Opening>) {
        let (ciphertexts, openings) = messages
            .iter()
            .map(|&message| self.encrypt_with_opening(scalar_from_i64(message), rng))
            .unzip();
        (CiphertextVector(ciphertexts), openings)
    }

    /// Adds a fresh encryption of zero: the result decrypts to the same message but is
    /// unlinkable to the input.
    pub fn rerandomize_with_rng<R: RngCore + CryptoRng>(
        &self,
        ciphertext: &Ciphertext,
        rng: &mut R,
    ) -> Ciphertext {
        let zero = self.encrypt_with_randomness(&Scalar::ZERO, &Scalar::random(rng));
        ciphertext + &zero
    }
}

/// The secret behind a ciphertext: the message m and the randomness r. Zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Opening {
    /// The plaintext m.
    pub message: Scalar,
    /// The encryption randomness r.
    pub randomness: Scalar,
}

impl std::fmt::Debug for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opening(<redacted>)")
    }
}

impl Opening {
    /// Whether this opening opens `ciphertext` under `public_key`.
    pub fn opens(&self, public_key: &PublicKey, ciphertext: &Ciphertext) -> bool {
        public_key.encrypt_with_randomness(&self.message, &self.randomness) == *ciphertext
    }
}

/// A key pair, for a buyer or for tests.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The secret key x.
    pub secret: SecretKey,
    /// The public key x·G.
    pub public: PublicKey,
}

impl KeyPair {
    /// Generates a key pair.
    pub fn generate_with_rng<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let secret = SecretKey::random_with_rng(rng);
        let public = secret.public_key();
        Self { secret, public }
    }
}

/// An exponential ElGamal ciphertext (C1, C2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    /// C1 = r·G.
    pub c1: RistrettoPoint,
    /// C2 = m·G + r·Y.
    pub c2: RistrettoPoint,
}

impl Ciphertext {
    /// The encryption of zero with zero randomness: the neutral element for sums.
    pub fn zero() -> Self {
        Self {
            c1: RistrettoPoint::identity(),
            c2: RistrettoPoint::identity(),
        }
    }

    /// Multiplies the plaintext by a public scalar.
    pub fn scalar_mul(&self, factor: &Scalar) -> Self {
        Self {
            c1: factor * self.c1,
            c2: factor * self.c2,
        }
    }

    /// Adds a public plaintext without touching the randomness.
    pub fn add_plaintext(&self, message: &Scalar) -> Self {
        Self {
            c1: self.c1,
            c2: self.c2 + encode_message(message),
        }
    }
}

impl Add<&Ciphertext> for &Ciphertext {
    type Output = Ciphertext;
    fn add(self, other: &Ciphertext) -> Ciphertext {
        Ciphertext {
            c1: self.c1 + other.c1,
            c2: self.c2 + other.c2,
        }
    }
}

impl Sub<&Ciphertext> for &Ciphertext {
    type Output = Ciphertext;
    fn sub(self, other: &Ciphertext) -> Ciphertext {
        Ciphertext {
            c1: self.c1 - other.c1,
            c2: self.c2 - other.c2,
        }
    }
}

impl std::iter::Sum for Ciphertext {
    fn sum<I: Iterator<Item = Ciphertext>>(iter: I) -> Self {
        iter.fold(Ciphertext::zero(), |acc, item| &acc + &item)
    }
}

/// A vector of ciphertexts, e.g. a node's vector of sufficient statistics.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CiphertextVector(pub Vec<Ciphertext>);

impl CiphertextVector {
    /// A vector of `len` zero ciphertexts.
    pub fn zeros(len: usize) -> Self {
        Self(vec![Ciphertext::zero(); len])
    }

    /// Number of ciphertexts.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the ciphertexts.
    pub fn iter(&self) -> std::slice::Iter<'_, Ciphertext> {
        self.0.iter()
    }

    /// Element-wise sum; `None` if the lengths differ.
    pub fn checked_add(&self, other: &CiphertextVector) -> Option<CiphertextVector> {
        if self.len() != other.len() {
            return None;
        }
        Some(CiphertextVector(
            self.iter().zip(other.iter()).map(|(a, b)| a + b).collect(),
        ))
    }

    /// Element-wise difference; `None` if the lengths differ.
    pub fn checked_sub(&self, other: &CiphertextVector) -> Option<CiphertextVector> {
        if self.len() != other.len() {
            return None;
        }
        Some(CiphertextVector(
            self.iter().zip(other.iter()).map(|(a, b)| a - b).collect(),
        ))
    }

    /// Multiplies every plaintext by the same public scalar.
    pub fn scalar_mul(&self, factor: &Scalar) -> CiphertextVector {
        CiphertextVector(self.iter().map(|c| c.scalar_mul(factor)).collect())
    }
}

impl Wire for PublicKey {
    const TAG: u8 = tags::PUBLIC_KEY;
    const NAME: &'static str = "public key";

    fn encode_body(&self, writer: &mut Writer) {
        writer.point(&self.0);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(reader.point("public key")?))
    }
}

impl Ciphertext {
    pub(crate) fn encode_into(&self, writer: &mut Writer) {
        writer.point(&self.c1);
        writer.point(&self.c2);
    }

    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            c1: reader.point("ciphertext c1")?,
            c2: reader.point("ciphertext c2")?,
        })
    }
}

impl Wire for Ciphertext {
    const TAG: u8 = tags::CIPHERTEXT;
    const NAME: &'static str = "ciphertext";

    fn encode_body(&self, writer: &mut Writer) {
        self.encode_into(writer);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_from(reader)
    }
}

impl Wire for CiphertextVector {
    const TAG: u8 = tags::CIPHERTEXT_VECTOR;
    const NAME: &'static str = "ciphertext vector";

    fn encode_body(&self, writer: &mut Writer) {
        writer.len(self.len());
        for ciphertext in self.iter() {
            ciphertext.encode_into(writer);
        }
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = reader.len("ciphertext vector length", MAX_VECTOR_LEN, 64)?;
        let mut ciphertexts = Vec::with_capacity(len);
        for _ in 0..len {
            ciphertexts.push(Ciphertext::decode_from(reader)?);
        }
        Ok(Self(ciphertexts))
    }
}
