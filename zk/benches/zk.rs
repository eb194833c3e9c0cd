//! Criterion benchmarks for the zk crate: `cargo bench -p zk` (reports in target/criterion).
//!
//! Groups: elgamal (encrypt, add, BSGS decrypt), dkg (n = 3, 5, 7), key_switch (share + verify),
//! range_prove / range_verify (n = 8, 16, 32, 64 bits × m = 1, 4, 16 values), batch_verify
//! (64 proofs of 32 bits, one by one vs in one multiscalar multiplication), and the
//! bulletproofs crate's own 64-bit verifier for reference.

use std::time::Duration;

use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use curve25519_dalek::scalar::Scalar;
use merlin::Transcript;
use rand::rngs::OsRng;
use zk::dkg::{run_local_ceremony_with_rng, DkgParameters};
use zk::proofs::range::RangeStatement;
use zk::{
    BsgsConfig, Ciphertext, CiphertextRangeProof, DecryptionTable, KeyPair, Opening, ProofContext,
};

fn context() -> ProofContext {
    ProofContext::new(b"bench-query", b"bench-node").expect("context")
}

fn encrypt_values(keys: &KeyPair, values: &[u64]) -> (Vec<Ciphertext>, Vec<Opening>) {
    values
        .iter()
        .map(|&v| {
            keys.public
                .encrypt_with_opening(Scalar::from(v), &mut OsRng)
        })
        .unzip()
}

fn elgamal(c: &mut Criterion) {
    let keys = KeyPair::generate_with_rng(&mut OsRng);
    let mut group = c.benchmark_group("elgamal");
    group.bench_function("encrypt", |b| {
        b.iter(|| keys.public.encrypt_with_rng(123_456, &mut OsRng))
    });
    let x = keys.public.encrypt_with_rng(5, &mut OsRng);
    let y = keys.public.encrypt_with_rng(7, &mut OsRng);
    group.bench_function("add", |b| b.iter(|| &x + &y));
    group.finish();
    let mut group = c.benchmark_group("bsgs");
    group.sample_size(10);
    let cache = std::env::temp_dir().join("cohortex-bench-bsgs");
    let table = DecryptionTable::load_or_build(&cache, BsgsConfig::default()).expect("table");
    for value in [1_000i64, 1 << 32, 1 << 40] {
        let ciphertext = keys.public.encrypt_with_rng(value, &mut OsRng);
        group.bench_with_input(
            BenchmarkId::new("decrypt_k20", value),
            &ciphertext,
            |b, ct| b.iter(|| keys.secret.decrypt(ct, &table).expect("decrypts")),
        );
    }
    group.finish();
}

fn dkg(c: &mut Criterion) {
    let mut group = c.benchmark_group("dkg");
    group.sample_size(10);
    for members in [3u16, 5, 7] {
        let parameters =
            DkgParameters::new(members / 2 + 1, members, b"bench").expect("parameters");
        group.bench_with_input(
            BenchmarkId::new("local_ceremony", members),
            &parameters,
            |b, p| b.iter(|| run_local_ceremony_with_rng(p, &mut OsRng).expect("ceremony")),
        );
    }
    group.finish();
}

fn key_switch(c: &mut Criterion) {
    let parameters = DkgParameters::new(2, 3, b"bench").expect("parameters");
    let outputs = run_local_ceremony_with_rng(&parameters, &mut OsRng).expect("ceremony");
    let committee = &outputs[0].committee;
    let buyer = KeyPair::generate_with_rng(&mut OsRng);
    let ciphertext = committee.collective_key().encrypt_with_rng(42, &mut OsRng);
    let context = context();
    let mut group = c.benchmark_group("key_switch");
    group.bench_function("share_plus_verify", |b| {
        b.iter(|| {
            let share = outputs[0].share.key_switch_with_rng(
                &context,
                &[ciphertext],
                &buyer.public,
                &mut OsRng,
            );
            committee
                .verify_share(&context, &[ciphertext], &buyer.public, &share)
                .expect("valid")
        })
    });
    group.finish();
}

fn range(c: &mut Criterion) {
    let keys = KeyPair::generate_with_rng(&mut OsRng);
    let context = context();
    let mut prove = c.benchmark_group("range_prove");
    prove
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for bits in [8usize, 16, 32, 64] {
        for m in [1usize, 4, 16] {
            let values: Vec<u64> = (0..m as u64).map(|i| i * 3 % (1 << bits.min(63))).collect();
            let (ciphertexts, openings) = encrypt_values(&keys, &values);
            prove.bench_function(BenchmarkId::new(format!("n{bits}"), format!("m{m}")), |b| {
                b.iter(|| {
                    CiphertextRangeProof::prove_with_rng(
                        &context,
                        &keys.public,
                        bits,
                        &ciphertexts,
                        &openings,
                        &mut OsRng,
                    )
                    .expect("proof")
                })
            });
        }
    }
    prove.finish();
    let mut verify = c.benchmark_group("range_verify");
    verify
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for bits in [8usize, 16, 32, 64] {
        for m in [1usize, 4, 16] {
            let values: Vec<u64> = (0..m as u64).collect();
            let (ciphertexts, openings) = encrypt_values(&keys, &values);
            let proof = CiphertextRangeProof::prove_with_rng(
                &context,
                &keys.public,
                bits,
                &ciphertexts,
                &openings,
                &mut OsRng,
            )
            .expect("proof");
            verify.bench_function(BenchmarkId::new(format!("n{bits}"), format!("m{m}")), |b| {
                b.iter(|| {
                    proof
                        .verify(&context, &keys.public, &ciphertexts)
                        .expect("valid")
                })
            });
        }
    }
    verify.finish();
}

fn batch_verify(c: &mut Criterion) {
    const PROOFS: usize = 64;
    let keys = KeyPair::generate_with_rng(&mut OsRng);
    let contexts: Vec<ProofContext> = (0..PROOFS)
        .map(|i| {
            ProofContext::new(b"bench-query", format!("node-{i}").as_bytes()).expect("context")
        })
        .collect();
    let items: Vec<(Vec<Ciphertext>, CiphertextRangeProof)> = contexts
        .iter()
        .enumerate()
        .map(|(i, context)| {
            let (ciphertexts, openings) = encrypt_values(&keys, &[i as u64 * 1000]);
            let proof = CiphertextRangeProof::prove_with_rng(
                context,
                &keys.public,
                32,
                &ciphertexts,
                &openings,
                &mut OsRng,
            )
            .expect("proof");
            (ciphertexts, proof)
        })
        .collect();
    let statements: Vec<RangeStatement<'_>> = items
        .iter()
        .zip(&contexts)
        .map(|((ciphertexts, proof), context)| RangeStatement {
            context,
            key: &keys.public,
            ciphertexts,
            proof,
        })
        .collect();
    let mut group = c.benchmark_group("batch_verify_64_proofs_32_bits");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("one_by_one", |b| {
        b.iter(|| {
            for statement in &statements {
                statement
                    .proof
                    .verify(statement.context, statement.key, statement.ciphertexts)
                    .expect("valid");
            }
        })
    });
    group.bench_function("batched", |b| {
        b.iter(|| CiphertextRangeProof::verify_batch(&statements, &mut OsRng).expect("valid"))
    });
    group.finish();
}

/// The bulletproofs crate's own single 64-bit proof, for comparison with its README figures.
fn crate_reference(c: &mut Criterion) {
    let bp_gens = BulletproofGens::new(64, 1);
    let pc_gens = PedersenGens::default();
    let mut group = c.benchmark_group("bulletproofs_crate_reference_n64");
    group.sample_size(10);
    group.bench_function("prove", |b| {
        b.iter_batched(
            || Scalar::random(&mut OsRng),
            |blinding| {
                RangeProof::prove_single(
                    &bp_gens,
                    &pc_gens,
                    &mut Transcript::new(b"ref"),
                    1 << 40,
                    &blinding,
                    64,
                )
                .expect("proof")
            },
            BatchSize::SmallInput,
        )
    });
    let (proof, commitment) = RangeProof::prove_single(
        &bp_gens,
        &pc_gens,
        &mut Transcript::new(b"ref"),
        1 << 40,
        &Scalar::random(&mut OsRng),
        64,
    )
    .expect("proof");
    group.bench_function("verify", |b| {
        b.iter(|| {
            proof
                .verify_single(
                    &bp_gens,
                    &pc_gens,
                    &mut Transcript::new(b"ref"),
                    &commitment,
                    64,
                )
                .expect("valid")
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    elgamal,
    dkg,
    key_switch,
    range,
    batch_verify,
    crate_reference
);
criterion_main!(benches);
