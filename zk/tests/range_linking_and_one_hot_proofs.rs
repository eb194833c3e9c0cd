//! Range, linking and one-hot proofs: honest proptests over values and sizes, and one test per
//! broken invariant (value out of range, wrong C1, replay into another context, wrong key),
//! verified both alone and in batches.

mod common;

use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use zk::proofs::onehot::OneHotStatement;
use zk::proofs::range::RangeStatement;
use zk::{Ciphertext, CiphertextRangeProof, KeyPair, OneHotProof, Opening, ProofError, PublicKey};

fn encrypt(key: &PublicKey, values: &[u64], seed: u64) -> (Vec<Ciphertext>, Vec<Opening>) {
    let mut rng = common::rng(seed);
    values
        .iter()
        .map(|&v| key.encrypt_with_opening(Scalar::from(v), &mut rng))
        .unzip()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]

    #[test]
    fn honest_range_proofs_verify_for_every_bit_size_and_length(
        bits in prop::sample::select(vec![8usize, 16, 32, 64]),
        raw in prop::collection::vec(any::<u64>(), 1..10),
        seed in any::<u64>(),
    ) {
        let mut rng = common::rng(seed);
        let key = KeyPair::generate_with_rng(&mut rng).public;
        let values: Vec<u64> = raw.iter().map(|v| if bits == 64 { *v } else { v % (1 << bits) }).collect();
        let (ciphertexts, openings) = encrypt(&key, &values, seed);
        let context = common::context("q", "node-a");
        let proof = CiphertextRangeProof::prove_with_rng(&context, &key, bits, &ciphertexts, &openings, &mut rng)
            .expect("honest proof");
        prop_assert_eq!(proof.verify(&context, &key, &ciphertexts), Ok(()));
    }

    #[test]
    fn honest_one_hot_proofs_verify(bins in 1usize..12, hot in any::<prop::sample::Index>(), matched in any::<bool>(), seed in any::<u64>()) {
        let mut rng = common::rng(seed);
        let key = KeyPair::generate_with_rng(&mut rng).public;
        let hot = hot.index(bins);
        let values: Vec<u64> = (0..bins).map(|i| u64::from(matched && i == hot)).collect();
        let (bin_ciphertexts, bin_openings) = encrypt(&key, &values, seed);
        let (match_ciphertext, match_opening) = key.encrypt_with_opening(Scalar::from(u64::from(matched)), &mut rng);
        let context = common::context("histogram", "node-a");
        let proof = OneHotProof::prove_with_rng(&context, &key, &bin_ciphertexts, &bin_openings, &match_ciphertext, &match_opening, &mut rng)
            .expect("honest proof");
        prop_assert_eq!(proof.verify(&context, &key, &bin_ciphertexts, &match_ciphertext), Ok(()));
    }
}

#[test]
fn value_out_of_range_is_refused_by_the_prover_and_rejected_by_the_verifier() {
    let mut rng = common::rng(1);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let (ciphertexts, openings) = encrypt(&key, &[5, 256], 2);
    let context = common::context("q", "node-a");
    assert_eq!(
        CiphertextRangeProof::prove_with_rng(&context, &key, 8, &ciphertexts, &openings, &mut rng),
        Err(ProofError::ValueOutOfRange { index: 1, bits: 8 })
    );
    // A cheating node that skips the check gets a proof that does not verify.
    let cheat = CiphertextRangeProof::hazmat_prove_without_range_check(
        &context,
        &key,
        8,
        &ciphertexts,
        &openings,
        &mut rng,
    )
    .expect("cheating prover runs");
    assert_eq!(
        cheat.verify(&context, &key, &ciphertexts),
        Err(ProofError::VerificationFailed { proof: "range" })
    );
    // Negative values wrap to ℓ − |m| and are out of every range.
    let (negative, negative_opening) = key.encrypt_with_opening(-Scalar::ONE, &mut rng);
    let cheat = CiphertextRangeProof::hazmat_prove_without_range_check(
        &context,
        &key,
        64,
        &[negative],
        &[negative_opening],
        &mut rng,
    )
    .expect("cheating prover runs");
    assert!(cheat.verify(&context, &key, &[negative]).is_err());
}

#[test]
fn wrong_c1_is_rejected_by_the_linking_proof() {
    let mut rng = common::rng(3);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let (mut ciphertexts, openings) = encrypt(&key, &[10, 20], 4);
    let context = common::context("q", "node-a");
    let proof =
        CiphertextRangeProof::prove_with_rng(&context, &key, 16, &ciphertexts, &openings, &mut rng)
            .expect("honest proof");
    // Swap in a C1 from an unrelated encryption: C2 (the commitment) is unchanged.
    ciphertexts[1].c1 = key.encrypt_with_rng(20, &mut rng).c1;
    assert_eq!(
        proof.verify(&context, &key, &ciphertexts),
        Err(ProofError::VerificationFailed { proof: "range" })
    );
    // A node that proves the wrong C1 with a fresh linking proof cannot: it has no opening.
    let fresh = zk::proofs::linking::LinkingProof::prove_with_rng(
        &context,
        &key,
        &ciphertexts,
        &openings,
        &mut rng,
    );
    assert_eq!(fresh.err(), Some(ProofError::OpeningMismatch { index: 1 }));
}

#[test]
fn proof_replayed_into_another_query_or_node_is_rejected() {
    let mut rng = common::rng(5);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let (ciphertexts, openings) = encrypt(&key, &[1, 2, 3], 6);
    let context = common::context("query-1", "node-a");
    let proof =
        CiphertextRangeProof::prove_with_rng(&context, &key, 32, &ciphertexts, &openings, &mut rng)
            .expect("honest proof");
    assert_eq!(proof.verify(&context, &key, &ciphertexts), Ok(()));
    for other in [
        common::context("query-2", "node-a"),
        common::context("query-1", "node-b"),
    ] {
        assert_eq!(
            proof.verify(&other, &key, &ciphertexts),
            Err(ProofError::VerificationFailed { proof: "range" })
        );
    }
    let (bins, bin_openings) = encrypt(&key, &[0, 1], 7);
    let (matched, match_opening) = key.encrypt_with_opening(Scalar::ONE, &mut rng);
    let one_hot = OneHotProof::prove_with_rng(
        &context,
        &key,
        &bins,
        &bin_openings,
        &matched,
        &match_opening,
        &mut rng,
    )
    .expect("honest");
    assert!(one_hot
        .verify(&common::context("query-2", "node-a"), &key, &bins, &matched)
        .is_err());
}

#[test]
fn proof_under_another_collective_key_is_rejected() {
    let mut rng = common::rng(8);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let other_key = KeyPair::generate_with_rng(&mut rng).public;
    let (ciphertexts, openings) = encrypt(&key, &[9], 9);
    let context = common::context("q", "node-a");
    let proof =
        CiphertextRangeProof::prove_with_rng(&context, &key, 8, &ciphertexts, &openings, &mut rng)
            .expect("honest proof");
    assert!(proof.verify(&context, &other_key, &ciphertexts).is_err());
}

#[test]
fn non_one_hot_histograms_are_refused_and_mismatched_statements_rejected() {
    let mut rng = common::rng(10);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let context = common::context("h", "node-a");
    let (matched, match_opening) = key.encrypt_with_opening(Scalar::ONE, &mut rng);
    // Two bins set for one match.
    let (two_hot, two_hot_openings) = encrypt(&key, &[1, 1, 0], 11);
    assert!(OneHotProof::prove_with_rng(
        &context,
        &key,
        &two_hot,
        &two_hot_openings,
        &matched,
        &match_opening,
        &mut rng
    )
    .is_err());
    // A bin holding 2.
    let (big, big_openings) = encrypt(&key, &[2, 0, 0], 12);
    assert_eq!(
        OneHotProof::prove_with_rng(
            &context,
            &key,
            &big,
            &big_openings,
            &matched,
            &match_opening,
            &mut rng
        )
        .err(),
        Some(ProofError::ValueOutOfRange { index: 0, bits: 1 })
    );
    // An honest proof does not verify against a bin vector with the hot bin moved.
    let (bins, bin_openings) = encrypt(&key, &[0, 1, 0], 13);
    let proof = OneHotProof::prove_with_rng(
        &context,
        &key,
        &bins,
        &bin_openings,
        &matched,
        &match_opening,
        &mut rng,
    )
    .expect("honest");
    let moved = vec![bins[1], bins[0], bins[2]];
    assert!(
        proof.verify(&context, &key, &moved, &matched).is_err(),
        "the proof binds the bin order"
    );
    let (not_matched, _) = key.encrypt_with_opening(Scalar::ZERO, &mut rng);
    assert!(proof.verify(&context, &key, &bins, &not_matched).is_err());
    let doubled = vec![bins[1], bins[1], bins[2]];
    assert!(proof.verify(&context, &key, &doubled, &matched).is_err());
}

#[test]
fn batch_verification_accepts_honest_batches_and_names_the_bad_item() {
    let mut rng = common::rng(14);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let mut items = Vec::new();
    for node in 0..6u64 {
        let (ciphertexts, openings) = encrypt(&key, &[node, node * 100, 7], 20 + node);
        let context = common::context("q", &format!("node-{node}"));
        let proof = CiphertextRangeProof::prove_with_rng(
            &context,
            &key,
            16,
            &ciphertexts,
            &openings,
            &mut rng,
        )
        .expect("honest");
        items.push((context, ciphertexts, proof));
    }
    let batch: Vec<RangeStatement<'_>> = items
        .iter()
        .map(|(context, ciphertexts, proof)| RangeStatement {
            context,
            key: &key,
            ciphertexts,
            proof,
        })
        .collect();
    assert_eq!(CiphertextRangeProof::verify_batch(&batch, &mut rng), Ok(()));

    // Node 4's ciphertext is tampered with after proving.
    let mut tampered = items.clone();
    tampered[4].1[2] = key.encrypt_with_rng(7, &mut rng);
    let batch: Vec<RangeStatement<'_>> = tampered
        .iter()
        .map(|(context, ciphertexts, proof)| RangeStatement {
            context,
            key: &key,
            ciphertexts,
            proof,
        })
        .collect();
    assert_eq!(
        CiphertextRangeProof::verify_batch(&batch, &mut rng),
        Err(ProofError::BatchFailed { failed: vec![4] })
    );

    // One-hot batches work the same way.
    let context = common::context("h", "node");
    let mut one_hot_items = Vec::new();
    for hot in 0..3 {
        let values: Vec<u64> = (0..3).map(|i| u64::from(i == hot)).collect();
        let (bins, openings) = encrypt(&key, &values, 40 + hot as u64);
        let (matched, match_opening) = key.encrypt_with_opening(Scalar::ONE, &mut rng);
        let proof = OneHotProof::prove_with_rng(
            &context,
            &key,
            &bins,
            &openings,
            &matched,
            &match_opening,
            &mut rng,
        )
        .expect("honest");
        one_hot_items.push((bins, matched, proof));
    }
    let statements: Vec<OneHotStatement<'_>> = one_hot_items
        .iter()
        .map(|(bins, matched, proof)| OneHotStatement {
            context: &context,
            key: &key,
            bins,
            matched,
            proof,
        })
        .collect();
    assert_eq!(OneHotProof::verify_batch(&statements, &mut rng), Ok(()));
}
