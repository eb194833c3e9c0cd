//! Zero-knowledge proofs about ElGamal ciphertexts under a collective key.
//!
//! * [`range`]: the values inside a vector of ciphertexts lie in [0, 2^n) (bulletproofs whose
//!   commitments are the ciphertexts' C2), together with [`linking`] proofs that each C1 uses
//!   the same randomness.
//! * [`onehot`]: a histogram vector is one-hot: every bin holds 0 or 1 and the bins sum to the
//!   match bit.
//! * [`batch`]: every proof above is verified by adding its equations, each multiplied by a
//!   fresh random weight, to one multiscalar multiplication.
//!
//! Each proof's transcript starts from a [`crate::ProofContext`] (query id, node id), so a
//! proof cannot be replayed into another query or attributed to another node.

pub mod batch;
pub mod linking;
pub mod onehot;
pub mod range;
pub(crate) mod sigma;
