//! DKG shares sealed to their recipient's long-term key.
//!
//! A dealer's private share f_i(j) travels to member j over mutual TLS, but TLS trusts the
//! federation's authority: whoever holds the authority's key could stand in the middle of a
//! link and read t shares of every dealer. So each share is also sealed to the recipient's
//! account key, pinned in the dealer's own committee config, with HPKE (RFC 9180) in base mode:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305.
//!
//! The recipient's X25519 key is its Ed25519 account key in Montgomery form, and its secret is
//! the account key's clamped scalar (the birational map libsodium calls
//! `crypto_sign_ed25519_pk_to_curve25519`). Using one key for Ed25519 signatures and an
//! X25519-based KEM is shown secure by Thormarker, "On using the same key pair for Ed25519 and
//! an X25519 based KEM" (ePrint 2021/509); it spares the committee a second pinned key per
//! member.
//!
//! The additional data binds the session, the dealer's seat and the recipient's seat, so a
//! sealed share cannot be replayed into another ceremony or credited to another dealer.
//!
//! Wire format: the 32-byte encapsulated key, then the ciphertext of the share's CXZK
//! encoding (with its 16-byte tag).

use ed25519_dalek::{SigningKey, VerifyingKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;
use zk::dkg::messages::DealerShare;
use zk::{MemberIndex, Wire};

/// HPKE's `info`: what the key schedule is for, versioned.
const INFO: &[u8] = cohortex_types::labels::LABEL_DKG_SHARE_HPKE.as_bytes();

/// Bytes of an X25519 encapsulated key.
const ENCAPPED_BYTES: usize = 32;

/// Why a share could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed bytes are shorter than an encapsulated key.
    #[error("sealed share: {0} bytes is too short")]
    TooShort(usize),
    /// HPKE refused: the share was sealed to another key, or for another session or seats,
    /// or altered on the way.
    #[error("sealed share does not open under this member's key for this session and seats")]
    DoesNotOpen,
    /// The opened bytes are not a share.
    #[error("sealed share: {0}")]
    Malformed(String),
    /// The opened share names other seats than the additional data it was sealed under.
    #[error("sealed share names dealer {dealer} and recipient {recipient}, not the seats it was delivered for")]
    WrongSeats {
        /// The dealer the share names.
        dealer: u16,
        /// The recipient the share names.
        recipient: u16,
    },
    /// Sealing failed.
    #[error("sealing the share failed")]
    Seal,
}

fn additional_data(session: &[u8], dealer: MemberIndex, recipient: MemberIndex) -> Vec<u8> {
    let mut aad = Vec::with_capacity(session.len() + 12);
    aad.extend_from_slice(&(session.len() as u64).to_be_bytes());
    aad.extend_from_slice(session);
    aad.extend_from_slice(&dealer.get().to_be_bytes());
    aad.extend_from_slice(&recipient.get().to_be_bytes());
    aad
}

/// Seals `share` to `recipient` (the account key pinned for `share.recipient`'s seat) for
/// `session`.
pub fn seal_share_with_rng<R: RngCore + CryptoRng>(
    share: &DealerShare,
    session: &[u8],
    recipient: &VerifyingKey,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let public =
        <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(recipient.to_montgomery().as_bytes())
            .map_err(|_| SealError::Seal)?;
    let plaintext = Zeroizing::new(share.to_bytes());
    let aad = additional_data(session, share.dealer, share.recipient);
    let (encapped, ciphertext) = hpke::single_shot_seal::<
        ChaCha20Poly1305,
        HkdfSha256,
        X25519HkdfSha256,
        _,
    >(&OpModeS::Base, &public, INFO, &plaintext, &aad, rng)
    .map_err(|_| SealError::Seal)?;
    let mut sealed = encapped.to_bytes().to_vec();
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Opens a share that `dealer` sealed to this member (`me`, holding `account`) for `session`,
/// and checks that it names those seats.
pub fn open_share(
    sealed: &[u8],
    session: &[u8],
    dealer: MemberIndex,
    me: MemberIndex,
    account: &SigningKey,
) -> Result<DealerShare, SealError> {
    if sealed.len() < ENCAPPED_BYTES {
        return Err(SealError::TooShort(sealed.len()));
    }
    let (encapped, ciphertext) = sealed.split_at(ENCAPPED_BYTES);
    let encapped = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(encapped)
        .map_err(|_| SealError::DoesNotOpen)?;
    let secret = Zeroizing::new(account.to_scalar_bytes());
    let private = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(secret.as_slice())
        .map_err(|_| SealError::DoesNotOpen)?;
    let aad = additional_data(session, dealer, me);
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &private,
            &encapped,
            INFO,
            ciphertext,
            &aad,
        )
        .map_err(|_| SealError::DoesNotOpen)?,
    );
    let share = DealerShare::from_bytes(&plaintext)
        .map_err(|error| SealError::Malformed(error.to_string()))?;
    if share.dealer != dealer || share.recipient != me {
        return Err(SealError::WrongSeats {
            dealer: share.dealer.get(),
            recipient: share.recipient.get(),
        });
    }
    Ok(share)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use curve25519_dalek::Scalar;
    use rand::rngs::OsRng;

    fn member(index: u16) -> MemberIndex {
        MemberIndex::new(index).unwrap()
    }

    fn share() -> DealerShare {
        DealerShare {
            dealer: member(1),
            recipient: member(2),
            share: Scalar::from(123_456_789u64),
        }
    }

    #[test]
    fn a_sealed_share_opens_for_its_recipient_only() {
        let recipient = SigningKey::generate(&mut OsRng);
        let sealed =
            seal_share_with_rng(&share(), b"s1", &recipient.verifying_key(), &mut OsRng).unwrap();
        let opened = open_share(&sealed, b"s1", member(1), member(2), &recipient).unwrap();
        assert_eq!(opened.share, Scalar::from(123_456_789u64));
        // The share's scalar is not in the sealed bytes.
        let plain = share().to_bytes();
        assert!(!sealed
            .windows(32)
            .any(|window| window == &plain[plain.len() - 32..]));
        let other = SigningKey::generate(&mut OsRng);
        assert!(matches!(
            open_share(&sealed, b"s1", member(1), member(2), &other),
            Err(SealError::DoesNotOpen)
        ));
    }

    #[test]
    fn a_sealed_share_does_not_open_in_another_session_or_for_another_dealer() {
        let recipient = SigningKey::generate(&mut OsRng);
        let sealed =
            seal_share_with_rng(&share(), b"s1", &recipient.verifying_key(), &mut OsRng).unwrap();
        assert!(matches!(
            open_share(&sealed, b"s2", member(1), member(2), &recipient),
            Err(SealError::DoesNotOpen)
        ));
        assert!(matches!(
            open_share(&sealed, b"s1", member(3), member(2), &recipient),
            Err(SealError::DoesNotOpen)
        ));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            open_share(&altered, b"s1", member(1), member(2), &recipient),
            Err(SealError::DoesNotOpen)
        ));
        assert!(matches!(
            open_share(&sealed[..10], b"s1", member(1), member(2), &recipient),
            Err(SealError::TooShort(10))
        ));
    }
}
