//! The linking proof: each ciphertext (C1, C2) is a well-formed encryption whose C1 = r·G
//! uses the randomness r inside C2 = m·G + r·Y.
//!
//! A range proof shows that C2 = v·G + r·Y with v in range, but says nothing about C1; a node
//! could pair a valid C2 with a C1 of its choosing and make the committee decrypt garbage.
//! This sigma protocol proves knowledge of (m, r) with
//!
//! ```text
//! C1 = r·G        C2 = m·G + r·Y
//! ```
//!
//! Prover: for each ciphertext pick k_m, k_r; send K1 = k_r·G, K2 = k_m·G + k_r·Y.
//! Challenge c = H(context, Y, all (C1, C2), all (K1, K2)).
//! Response z_m = k_m + c·m, z_r = k_r + c·r.
//! Verifier: z_r·G = K1 + c·C1 and z_m·G + z_r·Y = K2 + c·C2.
//!
//! Special soundness gives (m, r) from two transcripts; with the bulletproof's own extraction
//! of (v, r') from C2 = v·G + r'·Y, binding of the Pedersen commitment (nobody knows log_G Y
//! unless t committee members collude) gives m = v and r = r', so C1 = r'·G. One challenge
//! covers the whole vector.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};

use super::batch::{verify_alone, BatchVerifier};
use super::sigma::{queue_equation, Base};
use crate::elgamal::{Ciphertext, Opening, PublicKey};
use crate::errors::{DecodeError, ProofError};
use crate::transcript::{labels, ProofContext, TranscriptProtocol};
use crate::wire::{tags, Reader, Wire, Writer};

const NAME: &str = "linking";

/// Proof that each ciphertext's C1 and C2 share their randomness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkingProof {
    items: Vec<LinkingItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkingItem {
    /// K1 = k_r·G.
    k1: RistrettoPoint,
    /// K2 = k_m·G + k_r·Y.
    k2: RistrettoPoint,
    /// K1 and K2 compressed, as the transcript absorbs them.
    k1_compressed: CompressedRistretto,
    k2_compressed: CompressedRistretto,
    /// z_m = k_m + c·m.
    z_message: Scalar,
    /// z_r = k_r + c·r.
    z_randomness: Scalar,
}

/// (C1, C2) compressed once per verification and shared by the transcripts that absorb them.
pub(crate) fn compress_all(
    ciphertexts: &[Ciphertext],
) -> Vec<(CompressedRistretto, CompressedRistretto)> {
    ciphertexts
        .iter()
        .map(|ciphertext| (ciphertext.c1.compress(), ciphertext.c2.compress()))
        .collect()
}

fn statement_transcript(
    context: &ProofContext,
    key: &PublicKey,
    compressed: &[(CompressedRistretto, CompressedRistretto)],
) -> Transcript {
    let mut transcript = context.transcript(labels::LINKING);
    transcript.append_point(b"collective-key", key.as_point());
    transcript.append_u64(b"count", compressed.len() as u64);
    for (c1, c2) in compressed {
        transcript.append_compressed(b"c1", c1);
        transcript.append_compressed(b"c2", c2);
    }
    transcript
}

impl LinkingProof {
    /// Proves the statement for `ciphertexts` given their `openings`.
    pub fn prove_with_rng<R: RngCore + CryptoRng>(
        context: &ProofContext,
        key: &PublicKey,
        ciphertexts: &[Ciphertext],
        openings: &[Opening],
        rng: &mut R,
    ) -> Result<Self, ProofError> {
        if ciphertexts.len() != openings.len() {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "{} ciphertexts but {} openings",
                    ciphertexts.len(),
                    openings.len()
                ),
            });
        }
        for (index, (ciphertext, opening)) in ciphertexts.iter().zip(openings).enumerate() {
            if !opening.opens(key, ciphertext) {
                return Err(ProofError::OpeningMismatch { index });
            }
        }
        let mut transcript = statement_transcript(context, key, &compress_all(ciphertexts));
        let mut nonce_rng = {
            let mut builder = transcript.build_rng();
            for opening in openings {
                builder = builder
                    .rekey_with_witness_bytes(b"m", opening.message.as_bytes())
                    .rekey_with_witness_bytes(b"r", opening.randomness.as_bytes());
            }
            builder.finalize(rng)
        };
        let nonces: Vec<(Scalar, Scalar)> = openings
            .iter()
            .map(|_| {
                (
                    Scalar::random(&mut nonce_rng),
                    Scalar::random(&mut nonce_rng),
                )
            })
            .collect();
        let commitments: Vec<(RistrettoPoint, RistrettoPoint)> = nonces
            .iter()
            .map(|(k_message, k_randomness)| {
                (
                    k_randomness * RISTRETTO_BASEPOINT_TABLE,
                    k_message * RISTRETTO_BASEPOINT_TABLE + k_randomness * key.as_point(),
                )
            })
            .collect();
        let compressed_commitments: Vec<(CompressedRistretto, CompressedRistretto)> = commitments
            .iter()
            .map(|(k1, k2)| (k1.compress(), k2.compress()))
            .collect();
        for (k1, k2) in &compressed_commitments {
            transcript.append_compressed(b"k1", k1);
            transcript.append_compressed(b"k2", k2);
        }
        let challenge = transcript.challenge_scalar(b"challenge");
        let items = commitments
            .into_iter()
            .zip(compressed_commitments)
            .zip(nonces)
            .zip(openings)
            .map(
                |(
                    (((k1, k2), (k1_compressed, k2_compressed)), (k_message, k_randomness)),
                    opening,
                )| LinkingItem {
                    k1,
                    k2,
                    k1_compressed,
                    k2_compressed,
                    z_message: k_message + challenge * opening.message,
                    z_randomness: k_randomness + challenge * opening.randomness,
                },
            )
            .collect();
        Ok(Self { items })
    }

    /// Queues the verification equations into `verifier`.
    pub fn queue(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        ciphertexts: &[Ciphertext],
        verifier: &mut BatchVerifier,
    ) -> Result<(), ProofError> {
        let mut c2_coefficients = vec![Scalar::ZERO; ciphertexts.len()];
        self.queue_sharing_c2(
            context,
            key,
            ciphertexts,
            &compress_all(ciphertexts),
            verifier,
            &mut c2_coefficients,
        )?;
        for (coefficient, ciphertext) in c2_coefficients.into_iter().zip(ciphertexts) {
            verifier.add_point(coefficient, ciphertext.c2);
        }
        Ok(())
    }

    /// Queues the equations, but adds the (weighted) coefficients of each C2 to
    /// `c2_coefficients` instead of the verifier, so a caller whose own equations also contain
    /// C2 (the range proof) puts each C2 into the multiscalar multiplication once.
    pub(crate) fn queue_sharing_c2(
        &self,
        context: &ProofContext,
        key: &PublicKey,
        ciphertexts: &[Ciphertext],
        compressed: &[(CompressedRistretto, CompressedRistretto)],
        verifier: &mut BatchVerifier,
        c2_coefficients: &mut [Scalar],
    ) -> Result<(), ProofError> {
        if self.items.len() != ciphertexts.len() {
            return Err(ProofError::Malformed {
                proof: NAME,
                reason: format!(
                    "proof covers {} ciphertexts, statement has {}",
                    self.items.len(),
                    ciphertexts.len()
                ),
            });
        }
        debug_assert_eq!(compressed.len(), ciphertexts.len());
        debug_assert_eq!(c2_coefficients.len(), ciphertexts.len());
        let mut transcript = statement_transcript(context, key, compressed);
        for item in &self.items {
            transcript.append_compressed(b"k1", &item.k1_compressed);
            transcript.append_compressed(b"k2", &item.k2_compressed);
        }
        let challenge = transcript.challenge_scalar(b"challenge");
        let y = key.as_point();
        for ((item, ciphertext), c2_coefficient) in self
            .items
            .iter()
            .zip(ciphertexts)
            .zip(c2_coefficients.iter_mut())
        {
            // z_r·G − K1 − c·C1 = 0
            queue_equation(
                verifier,
                &[
                    (item.z_randomness, Base::G),
                    (-Scalar::ONE, Base::Own(item.k1)),
                    (-challenge, Base::Own(ciphertext.c1)),
                ],
            );
            // z_m·G + z_r·Y − K2 − c·C2 = 0 (the C2 term goes to c2_coefficients)
            let weight = verifier.weight();
            verifier.add_basepoint(weight * item.z_message);
            verifier.add_shared(y, weight * item.z_randomness);
            verifier.add_point(-weight, item.k2);
            *c2_coefficient -= weight * challenge;
        }
        Ok(())
    }

    /// Verifies on its own.
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

    /// Number of ciphertexts covered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the proof covers no ciphertext.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn encode_into(&self, writer: &mut Writer) {
        writer.len(self.items.len());
        for item in &self.items {
            writer.compressed(&item.k1_compressed);
            writer.compressed(&item.k2_compressed);
            writer.scalar(&item.z_message);
            writer.scalar(&item.z_randomness);
        }
    }

    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = reader.len("linking proof length", crate::elgamal::MAX_VECTOR_LEN, 128)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            let k1_compressed = reader.compressed("linking k1")?;
            let k2_compressed = reader.compressed("linking k2")?;
            items.push(LinkingItem {
                k1: crate::wire::decode_point(&k1_compressed.0, "linking k1")?,
                k2: crate::wire::decode_point(&k2_compressed.0, "linking k2")?,
                k1_compressed,
                k2_compressed,
                z_message: reader.scalar("linking z_m")?,
                z_randomness: reader.scalar("linking z_r")?,
            });
        }
        Ok(Self { items })
    }
}

impl Wire for LinkingProof {
    const TAG: u8 = tags::LINKING_PROOF;
    const NAME: &'static str = "linking proof";

    fn encode_body(&self, writer: &mut Writer) {
        self.encode_into(writer);
    }

    fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_from(reader)
    }
}
