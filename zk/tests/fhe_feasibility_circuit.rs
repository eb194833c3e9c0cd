//! The TFHE feasibility circuit's pieces against plaintext truth tables and sums (issue 13):
//! sanitising table entries, `all_of`, `any_of`, the weighted column sum and the release with
//! noise and the minimum cohort. One key serves every test (key generation takes seconds).

#![cfg(feature = "tfhe")]

use std::sync::OnceLock;

use zk::fhe::{Block, EncryptedCount, EvaluationKey, Evaluator, FheSecretKey, RadixCiphertext};

struct Keys {
    secret: FheSecretKey,
    evaluator: Evaluator,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = FheSecretKey::generate();
        let evaluator = EvaluationKey::from_bytes(&secret.evaluation_key().to_bytes())
            .expect("a fresh key decodes")
            .expand();
        Keys { secret, evaluator }
    })
}

fn bit(value: bool) -> Block {
    keys().evaluator.sanitize(&keys().secret.encrypt_bit(value))
}

/// Releases `count` with no noise and a minimum cohort of 1, and decrypts it (0 reads None).
fn open(count: &RadixCiphertext) -> Option<i64> {
    let released = keys()
        .evaluator
        .release(count, 0, 5, 1, 1 << 20)
        .expect("fits");
    keys().secret.decrypt_count(&released)
}

/// A clean 0/1 block opened through the count circuit: its match bit, counted once.
fn open_bit(block: &Block) -> Option<i64> {
    let bit = keys().evaluator.match_bit(&[block]).expect("combines");
    match bit {
        Some(bit) => open(&keys().evaluator.weighted_count(&[(&bit, 1)])),
        None => None,
    }
}

#[test]
fn table_entry_encrypting_more_than_one_is_sanitised_to_zero() {
    // A recruiter that encrypts 2 or 3 where a bit belongs tries to make one patient move the
    // count by more than the sensitivity of 1 the noise is calibrated to.
    for (value, expected) in [(0u64, None), (1, Some(1)), (2, None), (3, None)] {
        let entry = keys().secret.encrypt_raw_entry(value);
        let sanitised = keys().evaluator.sanitize(&entry);
        assert_eq!(open_bit(&sanitised), expected, "entry {value}");
    }
}

#[test]
fn all_of_and_any_of_follow_their_truth_tables() {
    let bits: Vec<Block> = [true, false, true, true, true, true].map(bit).to_vec();
    let refs = |indices: &[usize]| -> Vec<&Block> { indices.iter().map(|&i| &bits[i]).collect() };
    let evaluator = &keys().evaluator;
    // Five ones (two levels of groups of four).
    let all_ones = evaluator.all_of(&refs(&[0, 2, 3, 4, 5])).expect("combines");
    assert_eq!(open_bit(&all_ones), Some(1));
    let with_a_zero = evaluator
        .all_of(&refs(&[0, 2, 1, 3, 4, 5]))
        .expect("combines");
    assert_eq!(open_bit(&with_a_zero), None);
    let one_zero = evaluator.any_of(&refs(&[1])).expect("combines");
    assert_eq!(open_bit(&one_zero), None);
    let some_one = evaluator.any_of(&refs(&[1, 1, 1, 1, 0])).expect("combines");
    assert_eq!(open_bit(&some_one), Some(1));
    // A match bit over more than four clauses: one level of groups, then the final bootstrap.
    let count_of = |indices: &[usize]| {
        let bit = evaluator
            .match_bit(&refs(indices))
            .expect("combines")
            .expect("not public");
        open(&evaluator.weighted_count(&[(&bit, 5)]))
    };
    assert_eq!(count_of(&[0, 2, 3, 4, 5]), Some(5));
    assert_eq!(count_of(&[0, 2, 3, 4, 5, 1]), None);
    // A public zero decides `all_of` without any bootstrap, and adds nothing to `any_of`.
    let zero = evaluator.zero();
    let decided = evaluator.all_of(&[&bits[0], &zero]).expect("combines");
    assert!(Evaluator::is_public_zero(&decided));
    let any = evaluator.any_of(&[&zero, &bits[0]]).expect("combines");
    assert_eq!(open_bit(&any), Some(1));
}

#[test]
fn weighted_count_equals_the_plaintext_weighted_sum() {
    // Weights with every base-4 digit, large enough to carry across many columns.
    let weights = [1u64, 3, 7, 15, 64, 255, 1000, 4095, 65_537, 3, 2, 10];
    let flags = [
        true, true, false, true, true, true, false, true, true, true, true, true,
    ];
    let bits: Vec<Block> = flags.iter().map(|&f| bit(f)).collect();
    let evaluator = &keys().evaluator;
    let matched: Vec<_> = bits
        .iter()
        .map(|bit| {
            evaluator
                .match_bit(&[bit])
                .expect("combines")
                .expect("not public")
        })
        .collect();
    let terms: Vec<_> = matched.iter().zip(weights).collect();
    let expected: u64 = weights
        .iter()
        .zip(flags)
        .filter(|(_, flag)| *flag)
        .map(|(weight, _)| weight)
        .sum();
    let count = evaluator.weighted_count(&terms);
    assert_eq!(open(&count), Some(expected as i64));
    // A tuple ruled out by a public zero adds nothing and costs no bootstrap.
    let zero = evaluator.zero();
    assert!(evaluator
        .match_bit(&[&bits[0], &zero])
        .expect("combines")
        .is_none());
}

#[test]
fn release_adds_the_noise_and_suppresses_below_the_minimum_cohort() {
    let evaluator = &keys().evaluator;
    let ones: Vec<_> = (0..3)
        .map(|_| {
            evaluator
                .match_bit(&[&bit(true)])
                .expect("combines")
                .expect("not public")
        })
        .collect();
    let terms: Vec<_> = ones.iter().map(|b| (b, 4)).collect();
    let count = evaluator.weighted_count(&terms); // 12
    let secret = &keys().secret;
    let noisy = evaluator.release(&count, -5, 9, 1, 100).expect("fits");
    assert_eq!(secret.decrypt_count(&noisy), Some(7));
    let noisy = evaluator.release(&count, 9, 9, 1, 100).expect("fits");
    assert_eq!(secret.decrypt_count(&noisy), Some(21));
    // 12 − 3 = 9 is below a minimum of 10: nothing but "suppressed" comes out.
    let hidden = evaluator.release(&count, -3, 9, 10, 100).expect("fits");
    assert_eq!(secret.decrypt_count(&hidden), None);
    // The ciphertext round-trips through its bytes.
    let bytes = noisy.to_bytes();
    let decoded = EncryptedCount::from_bytes(&bytes).expect("decodes");
    assert_eq!(secret.decrypt_count(&decoded), Some(21));
    // Noise beyond its bound, or a count that cannot fit, is refused.
    assert!(evaluator.release(&count, 10, 9, 1, 100).is_err());
    assert!(evaluator.release(&count, 0, 9, 1, u64::MAX).is_err());
}

#[test]
fn gated_key_opens_to_the_key_when_the_bit_is_one_and_to_nothing_when_zero() {
    // Every two-bit chunk value (0, 1, 2, 3) appears in the key.
    let mut secret = [0u8; 32];
    for (index, byte) in secret.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(37) ^ 0b1110_0100;
    }
    let evaluator = &keys().evaluator;
    let one = evaluator.gate_key(&bit(true), &secret).expect("gates");
    let decoded = zk::fhe::GatedKey::from_bytes(&one.to_bytes()).expect("round trip");
    assert_eq!(
        keys().secret.open_gated_key(&decoded).map(|key| *key),
        Some(secret)
    );
    let zero = evaluator.gate_key(&bit(false), &secret).expect("gates");
    assert_eq!(keys().secret.open_gated_key(&zero).map(|key| *key), None);
    // A bit the public domain decided (a trivial 0) is replaced by a fresh encryption of 0,
    // which gates like any other 0.
    let fresh = evaluator.fresh_zero(&bit(true));
    assert!(!fresh.is_trivial());
    let gated = evaluator.gate_key(&fresh, &secret).expect("gates");
    assert_eq!(keys().secret.open_gated_key(&gated).map(|key| *key), None);
    assert!(
        evaluator.gate_key(&evaluator.zero(), &secret).is_err(),
        "a trivial bit is refused"
    );
}

#[test]
fn gated_key_metadata_does_not_depend_on_the_key() {
    // tfhe records each block's degree in the clear; a degree equal to the chunk would show
    // the key to anyone relaying the reply.
    let evaluator = &keys().evaluator;
    let zeros = evaluator.gate_key(&bit(true), &[0u8; 32]).expect("gates");
    let ones = evaluator.gate_key(&bit(true), &[0xff; 32]).expect("gates");
    assert_eq!(zeros.to_bytes().len(), ones.to_bytes().len());
    assert_eq!(zeros.degrees(), ones.degrees());
}
