//! Range proofs bound to ElGamal ciphertexts.
//!
//! For ciphertexts (C1_i, C2_i) = (r_i·G, v_i·G + r_i·Y) under the collective key Y, a
//! [`CiphertextRangeProof`] shows that every v_i ∈ [0, 2^n), n ∈ {8, 16, 32, 64}:
//!
//! * the `bulletproofs` crate proves the range statement for the Pedersen commitments
//!   V_i = v_i·B + r_i·B̃ with (B, B̃) = (G, Y), so V_i is exactly C2_i; values are aggregated
//!   in chunks of a power of two (at most 64 per chunk: a vector of 7 becomes 4 + 2 + 1);
//! * a [`LinkingProof`] shows each C1_i = r_i·G with the same r_i.
//!
//! Each chunk's transcript binds the proof context, the collective key, the bit size, the
//! chunk's offset and the vector length before the crate appends its own messages, so a proof
//! does not verify for another query, node, key, or position.
//!
//! Verification replays the crate's Fiat–Shamir transcript (its labels are a published part
//! of the proof format) and queues the crate's single verification equation into a
//! [`BatchVerifier`]. With x, y, z, w the transcript challenges, u_k the inner-product
//! challenges, s_i the inner-product verification scalars, a random c and the batch weight ρ:
//!
//! ```text
//! ρ·[ A + x·S + c·x·T1 + c·x²·T2 + Σ_k (u_k²·L_k + u_k⁻²·R_k)
//!     + (−ẽ − c·t̃)·Y + (w·(t − a·b) + c·(δ(y,z) − t))·G
//!     + Σ_i (−z − a·s_i)·G_i + Σ_i (z + y^−i·(z^(2+j(i))·2^(i mod n) − b·s_{nm−1−i}))·H_i
//!     + Σ_j c·z^(2+j)·V_j ] = 0
//! δ(y,z) = (z − z²)·Σ_{i<nm} y^i − z³·(2^n − 1)·Σ_{j<m} z^j
//! ```
//!
//! where j(i) = ⌊i/n⌋ is the value the i-th bit belongs to. See `docs/zk.md`.

use bulletproofs::RangeProof;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};

use super::batch::{verify_alone, verify_each, BatchVerifier};
use super::linking::{compress_all, LinkingProof};
use crate::elgamal::{Ciphertext, Opening, PublicKey, MAX_VECTOR_LEN};
use crate::errors::{DecodeError, ProofError};
use crate::generators::{pedersen_gens, RangeGenerators, MAX_AGGREGATION};
use crate::transcript::{labels, ProofContext, TranscriptProtocol};
use crate::wire::{tags, Reader, Wire, Writer};

const NAME: &str = "range";

/// Bit sizes a range proof supports.
pub const SUPPORTED_BITS: [usize; 4] = [8, 16, 32, 64];

/// A point kept in both forms: compressed for the transcript, decompressed for the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProofPoint {
    compressed: CompressedRistretto,
    point: RistrettoPoint,
}

impl ProofPoint {
    fn read(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let compressed = reader.compressed(field)?;
        let point = crate::wire::decode_point(&compressed.0, field)?;
        Ok(Self { compressed, point })
    }
}

/// One aggregated bulletproof over a power-of-two chunk of values.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RangeChunk {
    a: ProofPoint,
    s: ProofPoint,
    t1: ProofPoint,
    t2: ProofPoint,
    t_x: Scalar,
    t_x_blinding: Scalar,
    e_blinding: Scalar,
    /// Inner-product rounds (L_k, R_k), log2(n·m) of them.
    rounds: Vec<(ProofPoint, ProofPoint)>,
    ipp_a: Scalar,
    ipp_b: Scalar,
}

impl RangeChunk {
    /// Number of values the chunk covers for bit size `bits`.
    fn values(&self, bits: usize) -> usize {
        (1usize << self.rounds.len()) / bits
    }

    fn encode_into(&self, writer: &mut Writer) {
        writer.u8(self.rounds.len() as u8);
        for point in [&self.a, &self.s, &self.t1, &self.t2] {
            writer.compressed(&point.compressed);
        }
        writer.scalar(&self.t_x);
        writer.scalar(&self.t_x_blinding);
        writer.scalar(&self.e_blinding);
        for (l, r) in &self.rounds {
            writer.compressed(&l.compressed);
            writer.compressed(&r.compressed);
        }
        writer.scalar(&self.ipp_a);
        writer.scalar(&self.ipp_b);
    }

    fn decode_from(reader: &mut Reader<'_>, bits: usize) -> Result<Self, DecodeError> {
        let rounds = reader.u8("range proof rounds")? as usize;
        let lg_bits = bits.trailing_zeros() as usize;
        let lg_max = lg_bits + MAX_AGGREGATION.trailing_zeros() as usize;
        if rounds < lg_bits || rounds > lg_max {
            return Err(DecodeError::Invalid {
                field: "range proof rounds",
                reason: "does not match a power-of-two aggregation of at most 64 values",
            });
        }
        Self::read_body(reader, rounds)
    }

    /// Reads the body in the `bulletproofs` crate's byte layout (after the rounds count).
    fn read_body(reader: &mut Reader<'_>, rounds: usize) -> Result<Self, DecodeError> {
        let a = ProofPoint::read(reader, "range proof A")?;
        let s = ProofPoint::read(reader, "range proof S")?;
        let t1 = ProofPoint::read(reader, "range proof T1")?;
        let t2 = ProofPoint::read(reader, "range proof T2")?;
        let t_x = reader.scalar("range proof t_x")?;
        let t_x_blinding = reader.scalar("range proof t_x_blinding")?;
        let e_blinding = reader.scalar("range proof e_blinding")?;
        let mut round_points = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let l = ProofPoint::read(reader, "range proof L")?;
            let r = ProofPoint::read(reader, "range proof R")?;
            round_points.push((l, r));
        }
        Ok(Self {
            a,
            s,
            t1,
            t2,
            t_x,
            t_x_blinding,
            e_blinding,
            rounds: round_points,
            ipp_a: reader.scalar("range proof a")?,
            ipp_b: reader.scalar("range proof b")?,
        })
    }

    /// Converts the crate's proof (layout: A, S, T1, T2, t_x, t̃_x, ẽ, (L_k, R_k)…, a, b).
    fn from_crate(proof: &RangeProof) -> Result<Self, DecodeError> {
        let bytes = proof.to_bytes();
        let rounds = (bytes.len() / 32 - 9) / 2;
        let mut reader = Reader::new(&bytes);
        let chunk = Self::read_body(&mut reader, rounds)?;
        reader.finish()?;
        Ok(chunk)
    }

    #[cfg(test)]
    fn to_crate(&self) -> RangeProof {
        let mut writer = Writer::default();
        self.encode_into(&mut writer);
        // Skip our one-byte rounds prefix: the rest is the crate's layout.
        RangeProof::from_bytes(&writer.into_bytes()[1..])
            .expect("our encoding is the crate's layout")
    }
}

/// A range proof for a vector of ciphertexts under a collective key, with its linking proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CiphertextRangeProof {
    bits: usize,
    chunks: Vec<RangeChunk>,
    linking: LinkingProof,
}

/// One statement for batch verification: these ciphertexts, under this key and context, are
/// in range according to this proof.
#[derive(Clone, Copy)]
pub struct RangeStatement<'a> {
    /// The proof context (query id, node id).
    pub context: &'a ProofContext,
    /// The collective key Y.
    pub key: &'a PublicKey,
    /// The ciphertexts.
    pub ciphertexts: &'a [Ciphertext],
    /// The proof.
    pub proof: &'a CiphertextRangeProof,
}

/// Power-of-two chunk sizes (largest first, at most 64) that add up to `total`.
pub fn chunk_sizes(total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut remaining = total;
    while remaining > 0 {
        let size = (1usize << (usize::BITS - 1 - remaining.leading_zeros())).min(MAX_AGGREGATION);
        sizes.push(size);
        remaining -= size;
    }
    sizes
}

fn chunk_transcript(
    context: &ProofContext,
    key: &PublicKey,
    bits: usize,
    offset: usize,
    total: usize,
) -> Transcript {
    let mut transcript = context.transcript(labels::RANGE);
    transcript.append_point(b"collective-key", key.as_point());
    transcript.append_u64(b"bits", bits as u64);
    transcript.append_u64(b"offset", offset as u64);
    transcript.append_u64(b"total", total as u64);
    transcript
}

fn check_bits(bits: usize) -> Result<(), ProofError> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(ProofError::UnsupportedBitSize { bits })
    }
}

/// The low 64 bits of an opening's value.
fn low_u64(opening: &Opening) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&opening.message.as_bytes()[..8]);
    u64::from_le_bytes(low)
}

/// Whether an opening's value lies in [0, 2^bits).
fn in_range(opening: &Opening, bits: usize) -> bool {
    let high_bytes_zero = opening.message.as_bytes()[8..]
        .iter()
        .all(|&byte| byte == 0);
    high_bytes_zero && (bits == 64 || low_u64(opening) < (1u64 << bits))
}

impl CiphertextRangeProof {
    /// Proves that each ciphertext encrypts a value in [0, 2^`bits`). Refuses values outside
    /// the range and openings that do not open their ciphertexts.
    pub fn prove_with_rng<R: RngCore + CryptoRng>(
        context: &ProofContext,
        key: &PublicKey,
        bits: usize,
        ciphertexts: &[Ciphertext],
        openings: &[Opening],
        rng: &mut R,
    ) -> Result<Self, ProofError> {
        check_bits(bits)?;
        if let Some(index) = openings.iter().position(|opening| !in_range(opening, bits)) {
            return Err(ProofError::ValueOutOfRange { index, bits });
        }
        Self::prove_unchecked(context, key, bits, ciphertexts, openings, rng)
    }

    fn prove_unchecked<R: RngCore + CryptoRng>(
        context: &ProofContext,
        key: &PublicKey,
        bits: usize,
        ciphertexts: &[Ciphertext],
        openings: &[Opening],
        rng: &mut R,
    ) -> Result<Self, ProofError> {
        check_bits(bits)?;
        if ciphertexts.is_empty() || ciphertexts.len() > MAX_VECTOR_LEN {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "{} ciphertexts; a proof covers 1 to {MAX_VECTOR_LEN}",
                    ciphertexts.len()
                ),
            });
        }
        // The linking proof checks lengths and that every opening opens its ciphertext.
        let linking = LinkingProof::prove_with_rng(context, key, ciphertexts, openings, rng)?;
        let generators = RangeGenerators::shared();
        let pedersen = pedersen_gens(key);
        let mut chunks = Vec::new();
        let mut offset = 0;
        for size in chunk_sizes(ciphertexts.len()) {
            let chunk_openings = &openings[offset..offset + size];
            // Low 64 bits of each value; an out-of-range value (only via the hazmat path)
            // yields a proof that does not verify.
            let values: Vec<u64> = chunk_openings.iter().map(low_u64).collect();
            let blindings: Vec<Scalar> = chunk_openings.iter().map(|o| o.randomness).collect();
            let mut transcript = chunk_transcript(context, key, bits, offset, ciphertexts.len());
            let (proof, _commitments) = RangeProof::prove_multiple_with_rng(
                generators.bulletproof_gens(),
                &pedersen,
                &mut transcript,
                &values,
                &blindings,
                bits,
                rng,
            )
            .map_err(|error| ProofError::Malformed {
                proof: NAME,
                reason: error.to_string(),
            })?;
            chunks.push(
                RangeChunk::from_crate(&proof).map_err(|error| ProofError::Malformed {
                    proof: NAME,
                    reason: error.to_string(),
                })?,
            );
            offset += size;
        }
        Ok(Self {
            bits,
            chunks,
            linking,
        })
    }

    /// The bit size n of the range [0, 2^n).
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Number of ciphertexts the proof covers.
    pub fn len(&self) -> usize {
        self.linking.len()
    }

    /// Whether the proof covers no ciphertext (never true for a decoded proof).
    pub fn is_empty(&self) -> bool {
        self.linking.is_empty()
    }

    /// Queues the range and linking equations into `verifier`.
    pub fn queue(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        ciphertexts: &[Ciphertext],
        verifier: &mut BatchVerifier,
    ) -> Result<(), ProofError> {
        check_bits(self.bits)?;
        let covered: usize = self.chunks.iter().map(|c| c.values(self.bits)).sum();
        let expected_sizes = chunk_sizes(ciphertexts.len());
        let sizes: Vec<usize> = self.chunks.iter().map(|c| c.values(self.bits)).collect();
        if covered != ciphertexts.len() || sizes != expected_sizes {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "proof chunks cover {covered} values as {sizes:?}, statement has {} ({expected_sizes:?})",
                    ciphertexts.len()
                ),
            });
        }
        // Each C2 is compressed once and enters the multiscalar multiplication once, with the
        // range and linking coefficients summed.
        let compressed = compress_all(ciphertexts);
        let mut c2_coefficients = vec![Scalar::ZERO; ciphertexts.len()];
        let mut offset = 0;
        for (chunk, size) in self.chunks.iter().zip(sizes) {
            let transcript = chunk_transcript(context, key, self.bits, offset, ciphertexts.len());
            queue_chunk(
                chunk,
                self.bits,
                key,
                &compressed[offset..offset + size],
                &mut c2_coefficients[offset..offset + size],
                transcript,
                verifier,
            );
            offset += size;
        }
        self.linking.queue_sharing_c2(
            context,
            key,
            ciphertexts,
            &compressed,
            verifier,
            &mut c2_coefficients,
        )?;
        for (coefficient, ciphertext) in c2_coefficients.into_iter().zip(ciphertexts) {
            verifier.add_point(coefficient, ciphertext.c2);
        }
        Ok(())
    }

    /// Verifies on its own (one multiscalar multiplication).
    pub fn verify(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        ciphertexts: &[Ciphertext],
    ) -> Result<(), ProofError> {
        verify_alone(NAME, |verifier| {
            self.queue(context, key, ciphertexts, verifier)
        })
    }

    /// Verifies many statements in one multiscalar multiplication; on failure the error names
    /// the statements that fail on their own.
    pub fn verify_batch<R: RngCore + CryptoRng>(
        statements: &[RangeStatement<'_>],
        rng: &mut R,
    ) -> Result<(), ProofError> {
        verify_each(statements, rng, |statement, verifier| {
            statement.proof.queue(
                statement.context,
                statement.key,
                statement.ciphertexts,
                verifier,
            )
        })
    }
}

/// Replays the bulletproofs transcript for one chunk and queues its verification equation.
/// `compressed` holds the chunk's (C1, C2) encodings; the coefficient of each C2 = V_j is added
/// to `c2_coefficients` rather than to the verifier.
fn queue_chunk(
    chunk: &RangeChunk,
    bits: usize,
    key: &PublicKey,
    compressed: &[(CompressedRistretto, CompressedRistretto)],
    c2_coefficients: &mut [Scalar],
    mut transcript: Transcript,
    verifier: &mut BatchVerifier,
) {
    let m = compressed.len();
    let nm = bits * m;
    debug_assert_eq!(1usize << chunk.rounds.len(), nm);

    // The crate's transcript, message for message (its published proof format).
    transcript.append_message(b"dom-sep", b"rangeproof v1");
    transcript.append_u64(b"n", bits as u64);
    transcript.append_u64(b"m", m as u64);
    for (_, c2) in compressed {
        transcript.append_compressed(b"V", c2);
    }
    transcript.append_compressed(b"A", &chunk.a.compressed);
    transcript.append_compressed(b"S", &chunk.s.compressed);
    let y = transcript.challenge_scalar(b"y");
    let z = transcript.challenge_scalar(b"z");
    transcript.append_compressed(b"T_1", &chunk.t1.compressed);
    transcript.append_compressed(b"T_2", &chunk.t2.compressed);
    let x = transcript.challenge_scalar(b"x");
    transcript.append_scalar(b"t_x", &chunk.t_x);
    transcript.append_scalar(b"t_x_blinding", &chunk.t_x_blinding);
    transcript.append_scalar(b"e_blinding", &chunk.e_blinding);
    let w = transcript.challenge_scalar(b"w");
    transcript.append_message(b"dom-sep", b"ipp v1");
    transcript.append_u64(b"n", nm as u64);
    let mut u: Vec<Scalar> = Vec::with_capacity(chunk.rounds.len());
    for (l, r) in &chunk.rounds {
        transcript.append_compressed(b"L", &l.compressed);
        transcript.append_compressed(b"R", &r.compressed);
        u.push(transcript.challenge_scalar(b"u"));
    }

    // Inner-product verification scalars: s_0 = Π u_k⁻¹, s_i = s_{i−2^⌊lg i⌋}·u²_{lg n − 1 − ⌊lg i⌋}.
    // y joins the u_k in one batch inversion.
    let mut u_inverse = u.clone();
    u_inverse.push(y);
    let product_of_inverses = Scalar::batch_invert(&mut u_inverse) * y;
    let y_inverse = u_inverse[u.len()];
    u_inverse.truncate(u.len());
    let u_squared: Vec<Scalar> = u.iter().map(|value| value * value).collect();
    let u_inverse_squared: Vec<Scalar> = u_inverse.iter().map(|value| value * value).collect();
    let lg_nm = chunk.rounds.len();
    let mut s = Vec::with_capacity(nm);
    s.push(product_of_inverses);
    for i in 1..nm {
        let lg_i = (usize::BITS - 1 - i.leading_zeros()) as usize;
        let k = 1usize << lg_i;
        s.push(s[i - k] * u_squared[(lg_nm - 1) - lg_i]);
    }

    let weight = verifier.weight();
    let c = verifier.random_scalar();
    let a = chunk.ipp_a;
    let b = chunk.ipp_b;
    let zz = z * z;

    // δ(y, z) = (z − z²)·Σ_{i<nm} y^i − z³·(2^n − 1)·Σ_{j<m} z^j
    let sum_y: Scalar = powers(y).take(nm).sum();
    let sum_z: Scalar = powers(z).take(m).sum();
    // Σ_{i<n} 2^i = 2^n − 1, which fits a u64 for n ≤ 64.
    let sum_2 = Scalar::from(u64::MAX >> (64 - bits));
    let delta = (z - zz) * sum_y - zz * z * sum_2 * sum_z;

    verifier.add_point(weight, chunk.a.point);
    verifier.add_point(weight * x, chunk.s.point);
    verifier.add_point(weight * c * x, chunk.t1.point);
    verifier.add_point(weight * c * x * x, chunk.t2.point);
    for (((l, r), u_sq), u_inv_sq) in chunk.rounds.iter().zip(&u_squared).zip(&u_inverse_squared) {
        verifier.add_point(weight * u_sq, l.point);
        verifier.add_point(weight * u_inv_sq, r.point);
    }
    verifier.add_shared(
        key.as_point(),
        weight * (-chunk.e_blinding - c * chunk.t_x_blinding),
    );
    verifier.add_basepoint(weight * (w * (chunk.t_x - a * b) + c * (delta - chunk.t_x)));

    let powers_of_2: Vec<Scalar> = powers(Scalar::from(2u64)).take(bits).collect();
    let mut y_inverse_power = Scalar::ONE;
    let mut z_power = zz; // z^(2 + j)
    for (party, c2_coefficient) in c2_coefficients.iter_mut().enumerate() {
        let base = party * bits;
        let g_coefficients: Vec<Scalar> = (0..bits)
            .map(|bit| weight * (-z - a * s[base + bit]))
            .collect();
        let mut h_coefficients = Vec::with_capacity(bits);
        for (bit, power_of_2) in powers_of_2.iter().enumerate() {
            let i = base + bit;
            let s_inverse = s[nm - 1 - i];
            h_coefficients
                .push(weight * (z + y_inverse_power * (z_power * power_of_2 - b * s_inverse)));
            y_inverse_power *= y_inverse;
        }
        verifier.add_vector_generators(
            party,
            g_coefficients.into_iter(),
            h_coefficients.into_iter(),
        );
        *c2_coefficient += weight * c * z_power;
        z_power *= z;
    }
}

/// 1, x, x², …
fn powers(x: Scalar) -> impl Iterator<Item = Scalar> {
    std::iter::successors(Some(Scalar::ONE), move |previous| Some(previous * x))
}

impl Wire for CiphertextRangeProof {
    const TAG: u8 = tags::RANGE_PROOF;
    const NAME: &'static str = "ciphertext range proof";

    fn encode_body(&self, writer: &mut Writer) {
        writer.u8(self.bits as u8);
        writer.len(self.chunks.len());
        for chunk in &self.chunks {
            chunk.encode_into(writer);
        }
        self.linking.encode_into(writer);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bits = reader.u8("range proof bits")? as usize;
        if !SUPPORTED_BITS.contains(&bits) {
            return Err(DecodeError::Invalid {
                field: "range proof bits",
                reason: "must be 8, 16, 32 or 64",
            });
        }
        // The smallest chunk is 1 + 4·32 + 3·32 + 3·2·32 + 2·32 bytes.
        let max_chunks = MAX_VECTOR_LEN.div_ceil(MAX_AGGREGATION) + 16;
        let count = reader.len("range proof chunk count", max_chunks, 481)?;
        let mut chunks = Vec::with_capacity(count);
        for _ in 0..count {
            chunks.push(RangeChunk::decode_from(reader, bits)?);
        }
        let linking = LinkingProof::decode_from(reader)?;
        let covered: usize = chunks.iter().map(|c| c.values(bits)).sum();
        if covered != linking.len()
            || chunk_sizes(covered) != chunks.iter().map(|c| c.values(bits)).collect::<Vec<_>>()
        {
            return Err(DecodeError::Invalid {
                field: "range proof chunks",
                reason: "chunk sizes do not match the linking proof",
            });
        }
        Ok(Self {
            bits,
            chunks,
            linking,
        })
    }
}

#[cfg(feature = "hazmat")]
impl CiphertextRangeProof {
    /// **Hazmat, for tests that play a cheating node**: proves without checking that the
    /// values are in range. The result does not verify when a value is out of range.
    pub fn hazmat_prove_without_range_check<R: RngCore + CryptoRng>(
        context: &ProofContext,
        key: &PublicKey,
        bits: usize,
        ciphertexts: &[Ciphertext],
        openings: &[Opening],
        rng: &mut R,
    ) -> Result<Self, ProofError> {
        Self::prove_unchecked(context, key, bits, ciphertexts, openings, rng)
    }

    /// **Hazmat**: replaces the linking proof (to test mismatched C1 handling).
    pub fn hazmat_with_linking(mut self, linking: LinkingProof) -> Self {
        self.linking = linking;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elgamal::KeyPair;
    use crate::generators::pedersen_gens;
    use rand_core::OsRng;

    #[test]
    fn chunk_sizes_are_powers_of_two_that_add_up() {
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(7), vec![4, 2, 1]);
        assert_eq!(chunk_sizes(64), vec![64]);
        assert_eq!(chunk_sizes(130), vec![64, 64, 2]);
    }

    /// The batch equation must accept exactly what the crate's own verifier accepts.
    #[test]
    fn batch_equation_agrees_with_the_bulletproofs_verifier() {
        let mut rng = OsRng;
        let keys = KeyPair::generate_with_rng(&mut rng);
        let context = ProofContext::new(b"q", b"n").expect("valid context");
        for (bits, values) in [(8usize, vec![0u64, 255]), (32, vec![7, 1 << 31, 5, 9])] {
            let (ciphertexts, openings): (Vec<_>, Vec<_>) = values
                .iter()
                .map(|&v| keys.public.encrypt_with_opening(Scalar::from(v), &mut rng))
                .unzip();
            let proof = CiphertextRangeProof::prove_with_rng(
                &context,
                &keys.public,
                bits,
                &ciphertexts,
                &openings,
                &mut rng,
            )
            .expect("honest proof");
            proof
                .verify(&context, &keys.public, &ciphertexts)
                .expect("our verifier accepts");
            let commitments: Vec<CompressedRistretto> =
                ciphertexts.iter().map(|c| c.c2.compress()).collect();
            let crate_proof = proof.chunks[0].to_crate();
            let mut transcript = chunk_transcript(&context, &keys.public, bits, 0, values.len());
            crate_proof
                .verify_multiple_with_rng(
                    RangeGenerators::shared().bulletproof_gens(),
                    &pedersen_gens(&keys.public),
                    &mut transcript,
                    &commitments,
                    bits,
                    &mut rng,
                )
                .expect("the crate's verifier accepts the same proof");
        }
    }
}
