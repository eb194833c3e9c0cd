//! Node cost for one query: local evaluation (polars) against encryption plus proofs.
//!
//! The query is `SELECT COUNT(*), AVG(hba1c), VAR_SAMP(hba1c) … WHERE age >= 40 AND
//! has_condition('E11')` over vaults of 10k and 100k synthetic patients. Evaluation should
//! grow with the patient count; encryption and proving depend only on the statistics vector
//! (4 slots here), so they should not.
//!
//! Run: `cargo bench -p compute-node --bench node`.

use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{build_contribution, compile, evaluate, ConsentBook, Schema, Vault};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zk::{KeyPair, ProofContext};

const QUERY: &str = "SELECT COUNT(*), AVG(hba1c), VAR_SAMP(hba1c) FROM patients \
                     WHERE age >= 40 AND (has_condition('E11') OR has_condition('44054006'))";

fn vault(patients: u64) -> Vault {
    let mut vault = Vault::new(Schema::fhir());
    for index in 0..patients {
        let bundle = synth::patient(1, index).to_bundle().to_string();
        let record = bundle_to_record(&bundle, &REFERENCE_DATE, &ProvenancePolicy::default())
            .expect("synthetic bundles are valid");
        vault
            .upsert(record)
            .expect("synthetic records fit the schema");
    }
    vault
}

fn node_cost(c: &mut Criterion) {
    let plan = compile(QUERY, &Schema::fhir()).expect("the query compiles");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let context = ProofContext::new(b"bench-query", b"bench-node").expect("short ids");
    let mut group = c.benchmark_group("node");
    group.sample_size(10);
    for patients in [10_000u64, 100_000] {
        let vault = vault(patients);
        let consents = ConsentBook::everyone(&vault, "research");
        group.bench_with_input(
            BenchmarkId::new("evaluate_polars", patients),
            &vault,
            |b, vault| b.iter(|| evaluate(&plan, vault, &consents, "research").expect("evaluates")),
        );
        let statistics = evaluate(&plan, &vault, &consents, "research").expect("evaluates");
        group.bench_with_input(
            BenchmarkId::new("encrypt_and_prove", patients),
            &statistics,
            |b, statistics| {
                b.iter(|| {
                    build_contribution(
                        &context,
                        &key,
                        &plan,
                        statistics,
                        vault.capacity(),
                        &mut rng,
                    )
                    .expect("proves")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, node_cost);
criterion_main!(benches);
