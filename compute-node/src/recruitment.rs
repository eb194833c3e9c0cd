//! Trial recruitment (issue 13): what a patient sends when accepting a trial's invitation, and
//! how the recruiter opens the reply.
//!
//! Three layers, each an HPKE (RFC 9180) seal with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256
//! and ChaCha20-Poly1305:
//!
//! 1. **The contact**, sealed by the patient to the recruiter's contact key in PSK mode, under
//!    a fresh random 32-byte pre-shared key. Opening it needs both the recruiter's secret and
//!    that key.
//! 2. **The acceptance**: the sealed contact, the pre-shared key, the patient's account and
//!    their Ed25519 signature, sealed in base mode to the account key of the node holding the
//!    patient's record (its Montgomery form, as for DKG shares). The market relays it without
//!    learning who accepted or the pre-shared key.
//! 3. **The gate**: the node multiplies the pre-shared key, under the recruiter's TFHE key,
//!    by the patient's encrypted match bit ([`zk::fhe::Evaluator::gate_key`]). The recruiter
//!    decrypts the key only when the patient meets the criteria, so it opens the contacts of
//!    matching patients who accepted, and nothing of anyone else.
//!
//! The additional data of every seal binds the trial and the listing, so a sealed contact or
//! acceptance cannot be replayed into another trial or to another node.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, PskBundle, Serializable};
use market::hash::Hash32;
use market::{AccountId, ListingId};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// HPKE `info` of a sealed contact.
const INFO_CONTACT: &[u8] = cohortex_types::labels::LABEL_TRIAL_CONTACT_HPKE.as_bytes();
/// HPKE `info` of a sealed acceptance.
const INFO_ACCEPTANCE: &[u8] = cohortex_types::labels::LABEL_TRIAL_ACCEPTANCE_HPKE.as_bytes();
/// HPKE `psk_id` of the gated pre-shared key.
const PSK_ID: &[u8] = cohortex_types::labels::LABEL_TRIAL_GATED_KEY_PSK.as_bytes();
/// Bytes of an X25519 encapsulated key.
const ENCAPPED_BYTES: usize = 32;
/// Longest contact a patient may leave, in bytes.
pub const MAX_CONTACT_BYTES: usize = 1024;
/// Largest sealed acceptance a node opens, in bytes.
pub const MAX_SEALED_ACCEPTANCE_BYTES: usize = 4096;

/// Why a seal could not be made or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecruitmentError {
    /// The contact is empty or longer than [`MAX_CONTACT_BYTES`].
    #[error("contact: 1 to {MAX_CONTACT_BYTES} bytes are accepted, not {0}")]
    ContactLength(usize),
    /// The key to seal to is not an X25519 public key.
    #[error("{0}: not a 32-byte X25519 public key")]
    BadKey(&'static str),
    /// The sealed bytes are too short or too long.
    #[error("{what}: {len} bytes is not a sealed message")]
    Length {
        /// What was sealed.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// HPKE refused: sealed to another key, for another trial or listing, or altered.
    #[error("{0} does not open under this key for this trial and listing")]
    DoesNotOpen(&'static str),
    /// The opened acceptance does not decode.
    #[error("acceptance: {0}")]
    Malformed(String),
    /// The acceptance's signature is not the named patient's.
    #[error("acceptance: the signature is not patient {0}'s over this trial, listing and contact")]
    BadSignature(AccountId),
    /// Sealing failed.
    #[error("sealing failed")]
    Seal,
}

fn additional_data(trial: &str, listing: &ListingId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + trial.len() + listing.0.len());
    aad.extend_from_slice(&(trial.len() as u64).to_be_bytes());
    aad.extend_from_slice(trial.as_bytes());
    aad.extend_from_slice(&(listing.0.len() as u64).to_be_bytes());
    aad.extend_from_slice(listing.0.as_bytes());
    aad
}

fn public_key(
    bytes: &[u8; 32],
    what: &'static str,
) -> Result<<X25519HkdfSha256 as Kem>::PublicKey, RecruitmentError> {
    <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(bytes)
        .map_err(|_| RecruitmentError::BadKey(what))
}

/// The recruiter's contact key pair (X25519): patients seal their contact to its public half.
pub struct ContactKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl ContactKey {
    /// A fresh key pair.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let (secret, public) = X25519HkdfSha256::gen_keypair(rng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&secret.to_bytes());
        let mut public_bytes = [0u8; 32];
        public_bytes.copy_from_slice(&public.to_bytes());
        Self {
            secret: bytes,
            public: public_bytes,
        }
    }

    /// The public key, as posted with a trial.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The secret key's bytes.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }

    /// Reads [`ContactKey::secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, RecruitmentError> {
        let secret = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| RecruitmentError::BadKey("contact key"))?;
        let public = X25519HkdfSha256::sk_to_pk(&secret);
        let mut secret_bytes = Zeroizing::new([0u8; 32]);
        secret_bytes.copy_from_slice(&secret.to_bytes());
        let mut public_bytes = [0u8; 32];
        public_bytes.copy_from_slice(&public.to_bytes());
        Ok(Self {
            secret: secret_bytes,
            public: public_bytes,
        })
    }

    /// Opens a contact sealed to this key for `trial` and `listing` under `psk` (the gated
    /// key the recruiter decrypted).
    pub fn open_contact(
        &self,
        sealed: &[u8],
        psk: &[u8; 32],
        trial: &str,
        listing: &ListingId,
    ) -> Result<String, RecruitmentError> {
        if sealed.len() < ENCAPPED_BYTES + 16
            || sealed.len() > ENCAPPED_BYTES + 16 + MAX_CONTACT_BYTES
        {
            return Err(RecruitmentError::Length {
                what: "sealed contact",
                len: sealed.len(),
            });
        }
        let (encapped, ciphertext) = sealed.split_at(ENCAPPED_BYTES);
        let encapped = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(encapped)
            .map_err(|_| RecruitmentError::DoesNotOpen("the sealed contact"))?;
        let private = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(self.secret.as_slice())
            .map_err(|_| RecruitmentError::BadKey("contact key"))?;
        let mode = OpModeR::Psk(PskBundle {
            psk: psk.as_slice(),
            psk_id: PSK_ID,
        });
        let plaintext = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &mode,
            &private,
            &encapped,
            INFO_CONTACT,
            ciphertext,
            &additional_data(trial, listing),
        )
        .map_err(|_| RecruitmentError::DoesNotOpen("the sealed contact"))?;
        String::from_utf8(plaintext)
            .map_err(|_| RecruitmentError::Malformed("the contact is not UTF-8".into()))
    }
}

/// Seals `contact` to the recruiter's `contact_key` for `trial` and `listing` under a fresh
/// pre-shared key, returned with it.
pub fn seal_contact<R: RngCore + CryptoRng>(
    contact: &str,
    contact_key: &[u8; 32],
    trial: &str,
    listing: &ListingId,
    rng: &mut R,
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>), RecruitmentError> {
    if contact.is_empty() || contact.len() > MAX_CONTACT_BYTES {
        return Err(RecruitmentError::ContactLength(contact.len()));
    }
    let public = public_key(contact_key, "contact_key")?;
    let mut psk = Zeroizing::new([0u8; 32]);
    // A key of all zeros reads as "no match" once gated; redraw the (2⁻²⁵⁶) case.
    while psk.iter().all(|byte| *byte == 0) {
        rng.fill_bytes(psk.as_mut_slice());
    }
    let mode = OpModeS::Psk(PskBundle {
        psk: psk.as_slice(),
        psk_id: PSK_ID,
    });
    let (encapped, ciphertext) =
        hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
            &mode,
            &public,
            INFO_CONTACT,
            contact.as_bytes(),
            &additional_data(trial, listing),
            rng,
        )
        .map_err(|_| RecruitmentError::Seal)?;
    let mut sealed = encapped.to_bytes().to_vec();
    sealed.extend_from_slice(&ciphertext);
    Ok((sealed, psk))
}

/// A patient's acceptance, as the node opens it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Acceptance {
    /// The patient's account.
    pub patient: [u8; 32],
    /// The contact sealed to the recruiter ([`seal_contact`]).
    pub sealed_contact: Vec<u8>,
    /// The pre-shared key the contact is sealed under, which the node gates.
    pub psk: [u8; 32],
    /// When the patient signed (Unix seconds).
    pub signed_at: u64,
    /// The patient's signature over [`market::tx::trial_acceptance_digest`].
    pub signature: Vec<u8>,
}

impl Drop for Acceptance {
    fn drop(&mut self) {
        self.psk.zeroize();
    }
}

impl std::fmt::Debug for Acceptance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptance")
            .field("sealed_contact_bytes", &self.sealed_contact.len())
            .field("signed_at", &self.signed_at)
            .finish_non_exhaustive()
    }
}

impl Acceptance {
    /// The patient's signed acceptance of `trial` for the record in `listing`.
    pub fn sign(
        patient: &SigningKey,
        chain_id: &Hash32,
        (trial, listing): (&str, &ListingId),
        sealed_contact: Vec<u8>,
        psk: &[u8; 32],
        signed_at: u64,
    ) -> Self {
        let digest = market::tx::trial_acceptance_digest(
            chain_id,
            trial,
            listing,
            &sealed_contact,
            psk,
            signed_at,
        );
        Self {
            patient: patient.verifying_key().to_bytes(),
            sealed_contact,
            psk: *psk,
            signed_at,
            signature: patient.sign(digest.as_bytes()).to_bytes().to_vec(),
        }
    }

    /// The patient's account, once the signature verifies (strict Ed25519) for `trial`,
    /// `listing` and this chain.
    pub fn verify(
        &self,
        chain_id: &Hash32,
        trial: &str,
        listing: &ListingId,
    ) -> Result<AccountId, RecruitmentError> {
        let account = AccountId(self.patient);
        let digest = market::tx::trial_acceptance_digest(
            chain_id,
            trial,
            listing,
            &self.sealed_contact,
            &self.psk,
            self.signed_at,
        );
        let verified = VerifyingKey::from_bytes(&self.patient)
            .ok()
            .filter(|key| !key.is_weak())
            .zip(<[u8; 64]>::try_from(self.signature.as_slice()).ok())
            .is_some_and(|(key, signature)| {
                key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&signature))
                    .is_ok()
            });
        if verified {
            Ok(account)
        } else {
            Err(RecruitmentError::BadSignature(account))
        }
    }

    /// Seals the acceptance to `node`, the account key of the listing's owner.
    pub fn seal<R: RngCore + CryptoRng>(
        &self,
        node: &VerifyingKey,
        trial: &str,
        listing: &ListingId,
        rng: &mut R,
    ) -> Result<Vec<u8>, RecruitmentError> {
        let public = public_key(node.to_montgomery().as_bytes(), "listing owner")?;
        let plaintext =
            Zeroizing::new(postcard::to_stdvec(self).map_err(|_| RecruitmentError::Seal)?);
        let (encapped, ciphertext) =
            hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
                &OpModeS::Base,
                &public,
                INFO_ACCEPTANCE,
                &plaintext,
                &additional_data(trial, listing),
                rng,
            )
            .map_err(|_| RecruitmentError::Seal)?;
        let mut sealed = encapped.to_bytes().to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens an acceptance sealed to this node (`account`, the listing owner's key) for
    /// `trial` and `listing`. The signature is checked separately ([`Acceptance::verify`]).
    pub fn open(
        sealed: &[u8],
        account: &SigningKey,
        trial: &str,
        listing: &ListingId,
    ) -> Result<Self, RecruitmentError> {
        if sealed.len() < ENCAPPED_BYTES + 16 || sealed.len() > MAX_SEALED_ACCEPTANCE_BYTES {
            return Err(RecruitmentError::Length {
                what: "sealed",
                len: sealed.len(),
            });
        }
        let (encapped, ciphertext) = sealed.split_at(ENCAPPED_BYTES);
        let encapped = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(encapped)
            .map_err(|_| RecruitmentError::DoesNotOpen("the acceptance"))?;
        let secret = Zeroizing::new(account.to_scalar_bytes());
        let private = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(secret.as_slice())
            .map_err(|_| RecruitmentError::DoesNotOpen("the acceptance"))?;
        let plaintext = Zeroizing::new(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                &private,
                &encapped,
                INFO_ACCEPTANCE,
                ciphertext,
                &additional_data(trial, listing),
            )
            .map_err(|_| RecruitmentError::DoesNotOpen("the acceptance"))?,
        );
        match postcard::take_from_bytes::<Acceptance>(&plaintext) {
            Ok((acceptance, [])) => {
                if acceptance.sealed_contact.len() > ENCAPPED_BYTES + 16 + MAX_CONTACT_BYTES {
                    return Err(RecruitmentError::Length {
                        what: "sealed_contact",
                        len: acceptance.sealed_contact.len(),
                    });
                }
                Ok(acceptance)
            }
            Ok(_) => Err(RecruitmentError::Malformed("trailing bytes".into())),
            Err(error) => Err(RecruitmentError::Malformed(error.to_string())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn listing() -> ListingId {
        ListingId::new("st-mary".to_string())
    }

    #[test]
    fn contact_opens_only_with_the_recruiters_key_and_the_pre_shared_key() {
        let recruiter = ContactKey::generate(&mut OsRng);
        let (sealed, psk) = seal_contact(
            "jane@example.org",
            &recruiter.public(),
            "t1",
            &listing(),
            &mut OsRng,
        )
        .unwrap();
        assert_eq!(
            recruiter
                .open_contact(&sealed, &psk, "t1", &listing())
                .unwrap(),
            "jane@example.org"
        );
        let zeros = [0u8; 32];
        assert_eq!(
            recruiter.open_contact(&sealed, &zeros, "t1", &listing()),
            Err(RecruitmentError::DoesNotOpen("the sealed contact"))
        );
        let other = ContactKey::generate(&mut OsRng);
        assert!(other.open_contact(&sealed, &psk, "t1", &listing()).is_err());
        assert!(recruiter
            .open_contact(&sealed, &psk, "t2", &listing())
            .is_err());
        let restored = ContactKey::from_secret_bytes(recruiter.secret_bytes().as_slice()).unwrap();
        assert_eq!(restored.public(), recruiter.public());
    }

    #[test]
    fn acceptance_opens_only_at_the_node_it_was_sealed_to_and_verifies_its_patient() {
        let patient = SigningKey::generate(&mut OsRng);
        let node = SigningKey::generate(&mut OsRng);
        let chain = market::hash::tagged_hash("test", &[]);
        let acceptance = Acceptance::sign(
            &patient,
            &chain,
            ("t1", &listing()),
            vec![7; 80],
            &[9; 32],
            5,
        );
        let sealed = acceptance
            .seal(&node.verifying_key(), "t1", &listing(), &mut OsRng)
            .unwrap();
        let opened = Acceptance::open(&sealed, &node, "t1", &listing()).unwrap();
        assert_eq!(
            opened.verify(&chain, "t1", &listing()).unwrap(),
            AccountId::of(&patient)
        );
        assert!(opened.verify(&chain, "t2", &listing()).is_err());
        let stranger = SigningKey::generate(&mut OsRng);
        assert!(Acceptance::open(&sealed, &stranger, "t1", &listing()).is_err());
        assert!(Acceptance::open(&sealed, &node, "t2", &listing()).is_err());
    }
}
