#![doc = include_str!("../../docs/zk.md")]
#![deny(clippy::unwrap_used)]
#![deny(missing_docs)]
#![allow(non_snake_case)]

pub mod bsgs;
pub mod dkg;
pub mod elgamal;
pub mod errors;
#[cfg(feature = "tfhe")]
pub mod fhe;
pub mod fixed_point;
pub mod generators;
pub mod keyswitch;
pub mod proofs;
pub mod shamir;
pub mod transcript;
pub mod wire;

pub use bsgs::{BsgsConfig, DecryptionTable};
pub use elgamal::{Ciphertext, CiphertextVector, KeyPair, Opening, PublicKey, SecretKey};
pub use errors::{DecodeError, DecryptError, DkgError, KeySwitchError, ProofError};
pub use fixed_point::FixedPoint;
pub use keyswitch::{CommitteePublic, KeyShare, KeySwitchShare};
pub use proofs::batch::BatchVerifier;
pub use proofs::onehot::OneHotProof;
pub use proofs::range::CiphertextRangeProof;
pub use shamir::MemberIndex;
pub use transcript::ProofContext;
pub use wire::Wire;
