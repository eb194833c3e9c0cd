//! Decoding of untrusted bytes (non-canonical and identity points, truncation, lengths,
//! headers) and golden vectors that must keep decoding and verifying.

mod common;

use curve25519_dalek::scalar::Scalar;
use zk::dkg::messages::DealerBroadcast;
use zk::wire::Wire;
use zk::{
    BsgsConfig, Ciphertext, CiphertextRangeProof, CiphertextVector, CommitteePublic, DecodeError,
    DecryptionTable, KeyPair, KeySwitchShare, OneHotProof, PublicKey, SecretKey,
};

fn header(tag: u8) -> Vec<u8> {
    let mut bytes = b"CXZK".to_vec();
    bytes.push(1);
    bytes.push(tag);
    bytes
}

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// RFC 9496 (ristretto255), appendix A.1: encodings of multiples of the generator.
#[test]
fn public_keys_match_rfc_9496_multiples_of_the_generator() {
    let vectors = [
        (
            1u64,
            "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
        ),
        (
            2,
            "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
        ),
        (
            3,
            "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
        ),
        (
            4,
            "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
        ),
        (
            5,
            "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
        ),
    ];
    for (multiple, encoding) in vectors {
        let public = SecretKey::from_scalar(Scalar::from(multiple)).public_key();
        assert_eq!(public.to_bytes()[6..], hex32(encoding), "{multiple}·B");
        assert_eq!(PublicKey::from_bytes(&public.to_bytes()), Ok(public));
    }
}

/// RFC 9496 appendix A.2: encodings that must be rejected (non-canonical field elements,
/// negative field elements, non-square x², …).
#[test]
fn non_canonical_point_encodings_are_rejected() {
    let bad = [
        "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0100000000000000000000000000000000000000000000000000000000000000",
    ];
    for encoding in bad {
        let mut bytes = header(zk::wire::tags::PUBLIC_KEY);
        bytes.extend_from_slice(&hex32(encoding));
        assert_eq!(
            PublicKey::from_bytes(&bytes),
            Err(DecodeError::NonCanonicalPoint {
                field: "public key"
            }),
            "{encoding}"
        );
    }
}

#[test]
fn identity_point_is_rejected() {
    let mut bytes = header(zk::wire::tags::CIPHERTEXT);
    bytes.extend_from_slice(&[0u8; 32]);
    bytes.extend_from_slice(&hex32(
        "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    ));
    assert_eq!(
        Ciphertext::from_bytes(&bytes),
        Err(DecodeError::IdentityPoint {
            field: "ciphertext c1"
        })
    );
}

#[test]
fn headers_truncation_lengths_and_trailing_bytes_are_checked() {
    let mut rng = common::rng(1);
    let keys = KeyPair::generate_with_rng(&mut rng);
    let encoded = keys.public.to_bytes();
    assert_eq!(
        PublicKey::from_bytes(&encoded[..20]),
        Err(DecodeError::Truncated {
            field: "public key"
        })
    );
    let mut trailing = encoded.clone();
    trailing.push(0);
    assert_eq!(
        PublicKey::from_bytes(&trailing),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    let mut magic = encoded.clone();
    magic[0] = b'X';
    assert_eq!(PublicKey::from_bytes(&magic), Err(DecodeError::BadMagic));
    let mut version = encoded.clone();
    version[4] = 2;
    assert_eq!(
        PublicKey::from_bytes(&version),
        Err(DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );
    assert_eq!(
        Ciphertext::from_bytes(&encoded),
        Err(DecodeError::WrongType {
            expected: "ciphertext",
            found: zk::wire::tags::PUBLIC_KEY
        })
    );
    // A vector that claims 4 billion elements is refused before anything is allocated.
    let mut huge = header(zk::wire::tags::CIPHERTEXT_VECTOR);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        CiphertextVector::from_bytes(&huge),
        Err(DecodeError::LengthTooLarge { .. })
    ));
    // A plausible length with too few bytes behind it is refused as truncated.
    let mut short = header(zk::wire::tags::CIPHERTEXT_VECTOR);
    short.extend_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        CiphertextVector::from_bytes(&short),
        Err(DecodeError::Truncated { .. })
    ));
    // A non-canonical scalar in a proof is refused.
    let context = common::context("q", "n");
    let (ciphertext, opening) = keys
        .public
        .encrypt_with_opening(Scalar::from(3u64), &mut rng);
    let proof = CiphertextRangeProof::prove_with_rng(
        &context,
        &keys.public,
        8,
        &[ciphertext],
        &[opening],
        &mut rng,
    )
    .expect("honest");
    let mut bytes = proof.to_bytes();
    let t_x_offset = 6 + 1 + 4 + 1 + 4 * 32;
    bytes[t_x_offset..t_x_offset + 32].copy_from_slice(&[0xff; 32]);
    assert_eq!(
        CiphertextRangeProof::from_bytes(&bytes),
        Err(DecodeError::NonCanonicalScalar {
            field: "range proof t_x"
        })
    );
}

#[test]
fn every_public_type_round_trips() {
    let mut rng = common::rng(2);
    let outputs = common::committee(2, 3, 2);
    let committee = &outputs[0].committee;
    assert_eq!(
        CommitteePublic::from_bytes(&committee.to_bytes()).as_ref(),
        Ok(committee)
    );
    let key = *committee.collective_key();
    let (vector, openings) = key.encrypt_vector_with_rng(&[1, 2, 3], &mut rng);
    assert_eq!(
        CiphertextVector::from_bytes(&vector.to_bytes()),
        Ok(vector.clone())
    );
    let context = common::context("q", "n");
    let proof =
        CiphertextRangeProof::prove_with_rng(&context, &key, 16, &vector.0, &openings, &mut rng)
            .expect("proof");
    assert_eq!(
        CiphertextRangeProof::from_bytes(&proof.to_bytes()),
        Ok(proof)
    );
    let buyer = KeyPair::generate_with_rng(&mut rng);
    let share = outputs[0]
        .share
        .key_switch_with_rng(&context, &vector.0, &buyer.public, &mut rng);
    assert_eq!(KeySwitchShare::from_bytes(&share.to_bytes()), Ok(share));
}

// ---- golden vectors ----

const GOLDEN: &str = include_str!("golden/vectors.txt");
const GOLDEN_VALUES: [i64; 3] = [3, 1000, 65535];

fn golden(name: &str) -> Vec<u8> {
    let line = GOLDEN
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("golden vector {name} missing"));
    hex::decode(line.split_whitespace().nth(1).expect("hex field")).expect("hex")
}

/// Writes `tests/golden/vectors.txt` (run with COHORTEX_WRITE_GOLDEN=1 only when the wire
/// format changes on purpose, together with a version bump).
#[test]
fn write_golden_vectors_when_asked() {
    if std::env::var("COHORTEX_WRITE_GOLDEN").is_err() {
        return;
    }
    let mut rng = common::rng(0x601d);
    let outputs = common::committee(2, 3, 0x601d);
    let committee = &outputs[0].committee;
    let key = *committee.collective_key();
    let context = common::context("golden-query", "golden-node");
    let (vector, openings) = key.encrypt_vector_with_rng(&GOLDEN_VALUES, &mut rng);
    let range =
        CiphertextRangeProof::prove_with_rng(&context, &key, 16, &vector.0, &openings, &mut rng)
            .expect("proof");
    let (bins, bin_openings) = key.encrypt_vector_with_rng(&[0, 1, 0, 0], &mut rng);
    let (matched, match_opening) = key.encrypt_with_opening(Scalar::ONE, &mut rng);
    let one_hot = OneHotProof::prove_with_rng(
        &context,
        &key,
        &bins.0,
        &bin_openings,
        &matched,
        &match_opening,
        &mut rng,
    )
    .expect("proof");
    let buyer_secret = Scalar::random(&mut rng);
    let buyer = SecretKey::from_scalar(buyer_secret).public_key();
    let share1 = outputs[0]
        .share
        .key_switch_with_rng(&context, &vector.0, &buyer, &mut rng);
    let share3 = outputs[2]
        .share
        .key_switch_with_rng(&context, &vector.0, &buyer, &mut rng);
    let parameters = zk::dkg::DkgParameters::new(2, 3, b"golden").expect("parameters");
    let (_, broadcast, _) =
        zk::dkg::deal_with_rng(&parameters, zk::MemberIndex::new(1).expect("1"), &mut rng)
            .expect("deal");
    let lines = [
        ("committee", committee.to_bytes()),
        ("ciphertexts", vector.to_bytes()),
        ("range_proof", range.to_bytes()),
        ("one_hot_bins", bins.to_bytes()),
        ("one_hot_match", matched.to_bytes()),
        ("one_hot_proof", one_hot.to_bytes()),
        ("buyer_secret", buyer_secret.to_bytes().to_vec()),
        ("buyer_key", buyer.to_bytes()),
        ("key_switch_share_1", share1.to_bytes()),
        ("key_switch_share_3", share3.to_bytes()),
        ("dkg_broadcast", broadcast.to_bytes()),
    ];
    let text: String = lines
        .iter()
        .map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes)))
        .collect();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/vectors.txt"),
        text,
    )
    .expect("write");
}

#[test]
fn golden_vectors_still_decode_and_verify() {
    let committee = CommitteePublic::from_bytes(&golden("committee")).expect("committee");
    let key = *committee.collective_key();
    let context = common::context("golden-query", "golden-node");
    let vector = CiphertextVector::from_bytes(&golden("ciphertexts")).expect("ciphertexts");
    let range = CiphertextRangeProof::from_bytes(&golden("range_proof")).expect("range proof");
    assert_eq!(range.verify(&context, &key, &vector.0), Ok(()));

    let bins = CiphertextVector::from_bytes(&golden("one_hot_bins")).expect("bins");
    let matched = Ciphertext::from_bytes(&golden("one_hot_match")).expect("match");
    let one_hot = OneHotProof::from_bytes(&golden("one_hot_proof")).expect("one-hot proof");
    assert_eq!(one_hot.verify(&context, &key, &bins.0, &matched), Ok(()));

    let buyer_secret: [u8; 32] = golden("buyer_secret").try_into().expect("32 bytes");
    let buyer_secret =
        SecretKey::from_scalar(Scalar::from_canonical_bytes(buyer_secret).expect("canonical"));
    let buyer = PublicKey::from_bytes(&golden("buyer_key")).expect("buyer key");
    assert_eq!(buyer_secret.public_key(), buyer);
    let shares = [
        KeySwitchShare::from_bytes(&golden("key_switch_share_1")).expect("share 1"),
        KeySwitchShare::from_bytes(&golden("key_switch_share_3")).expect("share 3"),
    ];
    let outcome = committee
        .combine(&context, &vector.0, &buyer, &shares)
        .expect("combine");
    let table = DecryptionTable::build(BsgsConfig {
        table_bits: 12,
        max_abs: 1 << 20,
    })
    .expect("table");
    assert_eq!(
        buyer_secret.decrypt_vector(&outcome.ciphertexts, &table),
        Ok(GOLDEN_VALUES.to_vec())
    );

    let broadcast = DealerBroadcast::from_bytes(&golden("dkg_broadcast")).expect("broadcast");
    assert_eq!(broadcast.commitments.len(), 2);
    assert_eq!(
        DealerBroadcast::from_bytes(&broadcast.to_bytes()),
        Ok(broadcast)
    );
}
