//! ElGamal round trips and homomorphic operations, checked against plain integer arithmetic,
//! and the baby-step giant-step table (range, caching, corrupt cache).

mod common;

use std::sync::OnceLock;

use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use zk::{BsgsConfig, DecryptionTable, FixedPoint, KeyPair};

fn table() -> &'static DecryptionTable {
    static TABLE: OnceLock<DecryptionTable> = OnceLock::new();
    TABLE.get_or_init(|| DecryptionTable::build(BsgsConfig::default()).expect("table"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn homomorphic_operations_match_integer_arithmetic(
        a in -1_000_000_000i64..1_000_000_000,
        b in -1_000_000_000i64..1_000_000_000,
        k in -1000i64..1000,
        seed in any::<u64>(),
    ) {
        let mut rng = common::rng(seed);
        let keys = KeyPair::generate_with_rng(&mut rng);
        let ca = keys.public.encrypt_with_rng(a, &mut rng);
        let cb = keys.public.encrypt_with_rng(b, &mut rng);
        let decrypt = |c: &zk::Ciphertext| keys.secret.decrypt(c, table()).expect("in range");
        prop_assert_eq!(decrypt(&ca), a);
        prop_assert_eq!(decrypt(&(&ca + &cb)), a + b);
        prop_assert_eq!(decrypt(&(&ca - &cb)), a - b);
        prop_assert_eq!(decrypt(&ca.scalar_mul(&zk::elgamal::scalar_from_i64(k))), a * k);
        let rerandomized = keys.public.rerandomize_with_rng(&ca, &mut rng);
        prop_assert_ne!(rerandomized, ca);
        prop_assert_eq!(decrypt(&rerandomized), a);
    }
}

#[test]
fn vectors_add_elementwise() {
    let mut rng = common::rng(1);
    let keys = KeyPair::generate_with_rng(&mut rng);
    let (x, _) = keys.public.encrypt_vector_with_rng(&[1, -2, 300], &mut rng);
    let (y, _) = keys
        .public
        .encrypt_vector_with_rng(&[10, 20, -30], &mut rng);
    let sum = x.checked_add(&y).expect("same length");
    assert_eq!(
        keys.secret.decrypt_vector(&sum, table()).expect("decrypts"),
        vec![11, 18, 270]
    );
    let (short, _) = keys.public.encrypt_vector_with_rng(&[1], &mut rng);
    assert!(x.checked_add(&short).is_none());
}

#[test]
fn decryption_covers_plus_minus_two_to_the_forty() {
    let mut rng = common::rng(2);
    let keys = KeyPair::generate_with_rng(&mut rng);
    let edge = 1i64 << 40;
    for value in [
        0,
        1,
        -1,
        (1 << 20) - 1,
        1 << 20,
        -(1 << 20),
        edge,
        -edge,
        123_456_789_012,
    ] {
        let ciphertext = keys.public.encrypt_with_rng(value, &mut rng);
        assert_eq!(
            keys.secret.decrypt(&ciphertext, table()),
            Ok(value),
            "value {value}"
        );
    }
}

#[test]
fn decryption_outside_the_configured_range_is_an_error() {
    let mut rng = common::rng(3);
    let keys = KeyPair::generate_with_rng(&mut rng);
    let small = DecryptionTable::build(BsgsConfig {
        table_bits: 10,
        max_abs: 5000,
    })
    .expect("table");
    let inside = keys.public.encrypt_with_rng(-5000, &mut rng);
    assert_eq!(keys.secret.decrypt(&inside, &small), Ok(-5000));
    let outside = keys.public.encrypt_with_rng(5001, &mut rng);
    assert_eq!(
        keys.secret.decrypt(&outside, &small),
        Err(zk::DecryptError::OutOfRange { max_abs: 5000 })
    );
}

#[test]
fn table_is_cached_on_disk_and_a_corrupt_cache_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BsgsConfig {
        table_bits: 12,
        max_abs: 1 << 24,
    };
    let path = dir.path().join(config.file_name());
    let first = DecryptionTable::load_or_build(dir.path(), config).expect("build");
    let written = std::fs::read(&path).expect("cache file written");
    let mut rng = common::rng(4);
    let keys = KeyPair::generate_with_rng(&mut rng);
    let ciphertext = keys.public.encrypt_with_rng(-9_999_999, &mut rng);
    assert_eq!(keys.secret.decrypt(&ciphertext, &first), Ok(-9_999_999));

    // Loading again reads the same file and leaves it untouched.
    let second = DecryptionTable::load_or_build(dir.path(), config).expect("load");
    assert_eq!(keys.secret.decrypt(&ciphertext, &second), Ok(-9_999_999));
    assert_eq!(std::fs::read(&path).expect("file"), written);

    // A flipped byte fails the checksum: the table is rebuilt and rewritten, and still right.
    let mut corrupt = written.clone();
    corrupt[100] ^= 0x40;
    std::fs::write(&path, &corrupt).expect("write corrupt");
    let rebuilt = DecryptionTable::load_or_build(dir.path(), config).expect("rebuild");
    assert_eq!(keys.secret.decrypt(&ciphertext, &rebuilt), Ok(-9_999_999));
    assert_eq!(std::fs::read(&path).expect("file"), written);
}

#[test]
fn fixed_point_clips_to_bounds_and_round_trips() {
    let hba1c = FixedPoint::new(3.0, 20.0, 2).expect("codec");
    assert_eq!(hba1c.encode(6.54).expect("encode").value, 654);
    let high = hba1c.encode(25.0).expect("encode");
    assert_eq!((high.value, high.clipped), (2000, true));
    let low = hba1c.encode(-1.0).expect("encode");
    assert_eq!((low.value, low.clipped), (300, true));
    assert_eq!(hba1c.encode_offset(6.54).expect("offset"), 354);
    assert_eq!(hba1c.range_bits(), 16);
    assert!(hba1c.encode(f64::NAN).is_err());
    assert!(FixedPoint::new(2.0, 1.0, 2).is_err());
    // A sum of encoded values decodes to the sum of the clipped reals.
    let values = [5.5, 7.25, 30.0];
    let sum: i64 = values
        .iter()
        .map(|v| hba1c.encode(*v).expect("encode").value)
        .sum();
    assert!((hba1c.decode(sum) - (5.5 + 7.25 + 20.0)).abs() < 1e-9);
}

#[test]
fn scalar_from_negative_integer_is_the_additive_inverse() {
    assert_eq!(
        zk::elgamal::scalar_from_i64(-7) + Scalar::from(7u64),
        Scalar::ZERO
    );
}
