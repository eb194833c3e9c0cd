//! One-hot proofs for histogram contributions.
//!
//! A patient's histogram contribution is a vector of bin ciphertexts b_1 … b_k and a match-bit
//! ciphertext μ, all under the collective key Y. The proof shows, without revealing which bin
//! (or whether the patient matched):
//!
//! 1. every b_i and μ encrypts 0 or 1, and
//! 2. Σ_i b_i − μ encrypts 0,
//!
//! so a matching patient lands in exactly one bin and a non-matching one in none.
//!
//! **Bit proof** (a Cramer–Damgård–Schoenmakers OR of two Chaum–Pedersen proofs). For
//! (C1, C2) = (r·G, β·G + r·Y), branch β' ∈ {0, 1} claims log_G C1 = log_Y (C2 − β'·G). The
//! prover runs the true branch honestly (T1 = k·G, T2 = k·Y) and simulates the other
//! (pick c', z'; T1' = z'·G − c'·C1, T2' = z'·Y − c'·(C2 − β'·G)). With challenge c it sets the
//! true branch's challenge to c − c'. The verifier checks c_0 + c_1 = c and, for both β',
//!
//! ```text
//! z_β'·G = T1_β' + c_β'·C1        z_β'·Y = T2_β' + c_β'·(C2 − β'·G)
//! ```
//!
//! **Zero proof** (Chaum–Pedersen). For D = Σ b_i − μ = (r_D·G, r_D·Y):
//! K1 = k·G, K2 = k·Y, z = k + c·r_D; check z·G = K1 + c·D1 and z·Y = K2 + c·D2.
//!
//! One Fiat–Shamir challenge c covers all bit proofs and the zero proof; the transcript binds
//! the context, Y and every ciphertext.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};

use super::batch::{verify_alone, verify_each, BatchVerifier};
use super::sigma::{queue_equation, Base};
use crate::elgamal::{Ciphertext, Opening, PublicKey};
use crate::errors::{DecodeError, ProofError};
use crate::transcript::{labels, ProofContext, TranscriptProtocol};
use crate::wire::{tags, Reader, Wire, Writer};

const NAME: &str = "one-hot";

/// Most bins a histogram may have.
pub const MAX_BINS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BitProof {
    /// T1 for branches 0 and 1.
    t1: [RistrettoPoint; 2],
    /// T2 for branches 0 and 1.
    t2: [RistrettoPoint; 2],
    /// The challenge of branch 0 (branch 1's is c − c_0).
    c0: Scalar,
    /// Responses for branches 0 and 1.
    z: [Scalar; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ZeroProof {
    k1: RistrettoPoint,
    k2: RistrettoPoint,
    z: Scalar,
}

/// Proof that a histogram vector is one-hot with respect to its match bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneHotProof {
    bins: Vec<BitProof>,
    matched: BitProof,
    zero: ZeroProof,
}

/// One statement for batch verification.
#[derive(Clone, Copy)]
pub struct OneHotStatement<'a> {
    /// The proof context.
    pub context: &'a ProofContext,
    /// The collective key Y.
    pub key: &'a PublicKey,
    /// The bin ciphertexts.
    pub bins: &'a [Ciphertext],
    /// The match-bit ciphertext.
    pub matched: &'a Ciphertext,
    /// The proof.
    pub proof: &'a OneHotProof,
}

fn statement_transcript(
    context: &ProofContext,
    key: &PublicKey,
    bins: &[Ciphertext],
    matched: &Ciphertext,
) -> Transcript {
    let mut transcript = context.transcript(labels::ONE_HOT);
    transcript.append_point(b"collective-key", key.as_point());
    transcript.append_u64(b"bins", bins.len() as u64);
    for bin in bins {
        transcript.append_point(b"bin-c1", &bin.c1);
        transcript.append_point(b"bin-c2", &bin.c2);
    }
    transcript.append_point(b"match-c1", &matched.c1);
    transcript.append_point(b"match-c2", &matched.c2);
    transcript
}

fn append_commitments(
    transcript: &mut Transcript,
    bits: &[BitProof],
    zero: (&RistrettoPoint, &RistrettoPoint),
) {
    for bit in bits {
        for branch in 0..2 {
            transcript.append_point(b"t1", &bit.t1[branch]);
            transcript.append_point(b"t2", &bit.t2[branch]);
        }
    }
    transcript.append_point(b"zero-k1", zero.0);
    transcript.append_point(b"zero-k2", zero.1);
}

fn bit_of(opening: &Opening) -> Option<usize> {
    if opening.message == Scalar::ZERO {
        Some(0)
    } else if opening.message == Scalar::ONE {
        Some(1)
    } else {
        None
    }
}

/// The prover's half-built bit proof: the true branch's nonce and which branch is true.
struct PendingBit {
    proof: BitProof,
    bit: usize,
    nonce: Scalar,
    fake_challenge: Scalar,
}

fn start_bit_proof<R: RngCore + CryptoRng>(
    key: &PublicKey,
    ciphertext: &Ciphertext,
    bit: usize,
    rng: &mut R,
) -> PendingBit {
    let y = key.as_point();
    let nonce = Scalar::random(rng);
    let fake = 1 - bit;
    let fake_challenge = Scalar::random(rng);
    let fake_response = Scalar::random(rng);
    let mut proof = BitProof {
        t1: [RistrettoPoint::default(); 2],
        t2: [RistrettoPoint::default(); 2],
        c0: Scalar::ZERO,
        z: [Scalar::ZERO; 2],
    };
    proof.t1[bit] = &nonce * RISTRETTO_BASEPOINT_TABLE;
    proof.t2[bit] = nonce * y;
    let shifted_c2 = ciphertext.c2 - &Scalar::from(fake as u64) * RISTRETTO_BASEPOINT_TABLE;
    proof.t1[fake] = &fake_response * RISTRETTO_BASEPOINT_TABLE - fake_challenge * ciphertext.c1;
    proof.t2[fake] = fake_response * y - fake_challenge * shifted_c2;
    proof.z[fake] = fake_response;
    PendingBit {
        proof,
        bit,
        nonce,
        fake_challenge,
    }
}

fn finish_bit_proof(pending: PendingBit, challenge: &Scalar, randomness: &Scalar) -> BitProof {
    let mut proof = pending.proof;
    let real_challenge = challenge - pending.fake_challenge;
    proof.z[pending.bit] = pending.nonce + real_challenge * randomness;
    proof.c0 = if pending.bit == 0 {
        real_challenge
    } else {
        pending.fake_challenge
    };
    proof
}

fn queue_bit_proof(
    proof: &BitProof,
    challenge: &Scalar,
    key: &PublicKey,
    ciphertext: &Ciphertext,
    verifier: &mut BatchVerifier,
) {
    let challenges = [proof.c0, challenge - proof.c0];
    for (branch, c) in challenges.into_iter().enumerate() {
        // z·G − T1 − c·C1 = 0
        queue_equation(
            verifier,
            &[
                (proof.z[branch], Base::G),
                (-Scalar::ONE, Base::Own(proof.t1[branch])),
                (-c, Base::Own(ciphertext.c1)),
            ],
        );
        // z·Y − T2 − c·C2 + c·β·G = 0
        queue_equation(
            verifier,
            &[
                (proof.z[branch], Base::Shared(key.as_point())),
                (-Scalar::ONE, Base::Own(proof.t2[branch])),
                (-c, Base::Own(ciphertext.c2)),
                (c * Scalar::from(branch as u64), Base::G),
            ],
        );
    }
}

fn difference(bins: &[Ciphertext], matched: &Ciphertext) -> Ciphertext {
    let sum: Ciphertext = bins.iter().copied().sum();
    &sum - matched
}

impl OneHotProof {
    /// Proves that `bins` is one-hot with respect to `matched`. Refuses a vector that is not
    /// (a bin other than 0/1, or bins that do not sum to the match bit).
    pub fn prove_with_rng<R: RngCore + CryptoRng>(
        context: &ProofContext,
        key: &PublicKey,
        bins: &[Ciphertext],
        bin_openings: &[Opening],
        matched: &Ciphertext,
        matched_opening: &Opening,
        rng: &mut R,
    ) -> Result<Self, ProofError> {
        if bins.is_empty() || bins.len() > MAX_BINS || bins.len() != bin_openings.len() {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "{} bins with {} openings; 1 to {MAX_BINS} bins, one opening each",
                    bins.len(),
                    bin_openings.len()
                ),
            });
        }
        let mut bits = Vec::with_capacity(bins.len());
        for (index, (bin, opening)) in bins.iter().zip(bin_openings).enumerate() {
            if !opening.opens(key, bin) {
                return Err(ProofError::OpeningMismatch { index });
            }
            bits.push(bit_of(opening).ok_or(ProofError::ValueOutOfRange { index, bits: 1 })?);
        }
        if !matched_opening.opens(key, matched) {
            return Err(ProofError::OpeningMismatch { index: bins.len() });
        }
        let match_bit = bit_of(matched_opening).ok_or(ProofError::ValueOutOfRange {
            index: bins.len(),
            bits: 1,
        })?;
        if bits.iter().sum::<usize>() != match_bit {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: "the bins do not sum to the match bit".into(),
            });
        }

        let mut transcript = statement_transcript(context, key, bins, matched);
        let mut nonce_rng = {
            let mut builder = transcript.build_rng();
            for opening in bin_openings.iter().chain(std::iter::once(matched_opening)) {
                builder = builder.rekey_with_witness_bytes(b"r", opening.randomness.as_bytes());
            }
            builder.finalize(rng)
        };
        let pending_bins: Vec<PendingBit> = bins
            .iter()
            .zip(&bits)
            .map(|(bin, &bit)| start_bit_proof(key, bin, bit, &mut nonce_rng))
            .collect();
        let pending_match = start_bit_proof(key, matched, match_bit, &mut nonce_rng);
        let zero_nonce = Scalar::random(&mut nonce_rng);
        let zero_k1 = &zero_nonce * RISTRETTO_BASEPOINT_TABLE;
        let zero_k2 = zero_nonce * key.as_point();

        let commitments: Vec<BitProof> = pending_bins
            .iter()
            .chain(std::iter::once(&pending_match))
            .map(|pending| pending.proof)
            .collect();
        append_commitments(&mut transcript, &commitments, (&zero_k1, &zero_k2));
        let challenge = transcript.challenge_scalar(b"challenge");

        let bin_proofs = pending_bins
            .into_iter()
            .zip(bin_openings)
            .map(|(pending, opening)| finish_bit_proof(pending, &challenge, &opening.randomness))
            .collect();
        let matched_proof =
            finish_bit_proof(pending_match, &challenge, &matched_opening.randomness);
        let difference_randomness: Scalar = bin_openings
            .iter()
            .map(|opening| opening.randomness)
            .sum::<Scalar>()
            - matched_opening.randomness;
        Ok(Self {
            bins: bin_proofs,
            matched: matched_proof,
            zero: ZeroProof {
                k1: zero_k1,
                k2: zero_k2,
                z: zero_nonce + challenge * difference_randomness,
            },
        })
    }

    /// Queues the verification equations into `verifier`.
    pub fn queue(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        bins: &[Ciphertext],
        matched: &Ciphertext,
        verifier: &mut BatchVerifier,
    ) -> Result<(), ProofError> {
        if bins.len() != self.bins.len() {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "proof covers {} bins, statement has {}",
                    self.bins.len(),
                    bins.len()
                ),
            });
        }
        let mut transcript = statement_transcript(context, key, bins, matched);
        let commitments: Vec<BitProof> = self
            .bins
            .iter()
            .chain(std::iter::once(&self.matched))
            .copied()
            .collect();
        append_commitments(
            &mut transcript,
            &commitments,
            (&self.zero.k1, &self.zero.k2),
        );
        let challenge = transcript.challenge_scalar(b"challenge");
        for (proof, bin) in self.bins.iter().zip(bins) {
            queue_bit_proof(proof, &challenge, key, bin, verifier);
        }
        queue_bit_proof(&self.matched, &challenge, key, matched, verifier);
        let d = difference(bins, matched);
        queue_equation(
            verifier,
            &[
                (self.zero.z, Base::G),
                (-Scalar::ONE, Base::Own(self.zero.k1)),
                (-challenge, Base::Own(d.c1)),
            ],
        );
        queue_equation(
            verifier,
            &[
                (self.zero.z, Base::Shared(key.as_point())),
                (-Scalar::ONE, Base::Own(self.zero.k2)),
                (-challenge, Base::Own(d.c2)),
            ],
        );
        Ok(())
    }

    /// Verifies on its own.
    pub fn verify(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        bins: &[Ciphertext],
        matched: &Ciphertext,
    ) -> Result<(), ProofError> {
        verify_alone(NAME, |verifier| {
            self.queue(context, key, bins, matched, verifier)
        })
    }

    /// Verifies many statements in one multiscalar multiplication.
    pub fn verify_batch<R: RngCore + CryptoRng>(
        statements: &[OneHotStatement<'_>],
        rng: &mut R,
    ) -> Result<(), ProofError> {
        verify_each(statements, rng, |statement, verifier| {
            statement.proof.queue(
                statement.context,
                statement.key,
                statement.bins,
                statement.matched,
                verifier,
            )
        })
    }
}

fn encode_bit(writer: &mut Writer, proof: &BitProof) {
    for branch in 0..2 {
        writer.point(&proof.t1[branch]);
        writer.point(&proof.t2[branch]);
    }
    writer.scalar(&proof.c0);
    writer.scalar(&proof.z[0]);
    writer.scalar(&proof.z[1]);
}

fn decode_bit(reader: &mut Reader<'_>) -> Result<BitProof, DecodeError> {
    let t1_0 = reader.point("bit proof t1[0]")?;
    let t2_0 = reader.point("bit proof t2[0]")?;
    let t1_1 = reader.point("bit proof t1[1]")?;
    let t2_1 = reader.point("bit proof t2[1]")?;
    Ok(BitProof {
        t1: [t1_0, t1_1],
        t2: [t2_0, t2_1],
        c0: reader.scalar("bit proof c0")?,
        z: [
            reader.scalar("bit proof z[0]")?,
            reader.scalar("bit proof z[1]")?,
        ],
    })
}

/// Encoded size of one bit proof.
const BIT_PROOF_LEN: usize = 4 * 32 + 3 * 32;

impl Wire for OneHotProof {
    const TAG: u8 = tags::ONE_HOT_PROOF;
    const NAME: &'static str = "one-hot proof";

    fn encode_body(&self, writer: &mut Writer) {
        writer.len(self.bins.len());
        for bin in &self.bins {
            encode_bit(writer, bin);
        }
        encode_bit(writer, &self.matched);
        writer.point(&self.zero.k1);
        writer.point(&self.zero.k2);
        writer.scalar(&self.zero.z);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = reader.len("one-hot bin count", MAX_BINS, BIT_PROOF_LEN)?;
        if count == 0 {
            return Err(DecodeError::Invalid {
                field: "one-hot bin count",
                reason: "must be at least 1",
            });
        }
        let mut bins = Vec::with_capacity(count);
        for _ in 0..count {
            bins.push(decode_bit(reader)?);
        }
        let matched = decode_bit(reader)?;
        let zero = ZeroProof {
            k1: reader.point("zero proof k1")?,
            k2: reader.point("zero proof k2")?,
            z: reader.scalar("zero proof z")?,
        };
        Ok(Self {
            bins,
            matched,
            zero,
        })
    }
}
