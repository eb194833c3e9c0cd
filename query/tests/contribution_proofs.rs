//! Contributions: honest ones verify in a batch; tampered, replayed or oversized ones are
//! rejected and named.

use cohortex_query::contribution::{ContributionError, ContributionStatement};
use cohortex_query::{build_contribution, compile, verify_contributions, Schema, Statistics};
use curve25519_dalek::scalar::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zk::{KeyPair, ProofContext};

fn setup() -> (
    ChaCha20Rng,
    zk::PublicKey,
    cohortex_query::QueryPlan,
    Statistics,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let key = KeyPair::generate_with_rng(&mut rng).public;
    let plan = compile("SELECT COUNT(*), SUM(hba1c) FROM patients", &Schema::fhir()).unwrap();
    // participants, COUNT(*), n with hba1c, Σx̃ (offset hba1c in tenths).
    let statistics = Statistics {
        values: vec![900, 450, 400, 400 * 35],
        clipped: vec![],
    };
    (rng, key, plan, statistics)
}

#[test]
fn honest_contributions_from_several_nodes_verify_in_one_batch() {
    let (mut rng, key, plan, statistics) = setup();
    let contexts: Vec<ProofContext> = (0..3)
        .map(|node| ProofContext::new(b"q", &[node]).unwrap())
        .collect();
    let contributions: Vec<_> = contexts
        .iter()
        .map(|context| {
            build_contribution(context, &key, &plan, &statistics, 1024, &mut rng).unwrap()
        })
        .collect();
    let statements: Vec<_> = contexts
        .iter()
        .zip(&contributions)
        .map(|(context, contribution)| ContributionStatement {
            context,
            capacity: 1024,
            contribution,
        })
        .collect();
    verify_contributions(&key, &plan, &statements, &mut rng).unwrap();
}

#[test]
fn contribution_replayed_into_another_query_is_rejected() {
    let (mut rng, key, plan, statistics) = setup();
    let original = ProofContext::new(b"q1", b"node").unwrap();
    let contribution =
        build_contribution(&original, &key, &plan, &statistics, 1024, &mut rng).unwrap();
    let replayed = ProofContext::new(b"q2", b"node").unwrap();
    let honest_context = ProofContext::new(b"q2", b"other").unwrap();
    let honest =
        build_contribution(&honest_context, &key, &plan, &statistics, 1024, &mut rng).unwrap();
    let statements = [
        ContributionStatement {
            context: &honest_context,
            capacity: 1024,
            contribution: &honest,
        },
        ContributionStatement {
            context: &replayed,
            capacity: 1024,
            contribution: &contribution,
        },
    ];
    let failed = verify_contributions(&key, &plan, &statements, &mut rng).unwrap_err();
    assert_eq!(
        failed
            .iter()
            .map(|(position, _)| *position)
            .collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn contribution_with_a_slot_pushed_past_its_bound_is_rejected() {
    let (mut rng, key, plan, statistics) = setup();
    let context = ProofContext::new(b"q", b"node").unwrap();
    let mut contribution =
        build_contribution(&context, &key, &plan, &statistics, 1024, &mut rng).unwrap();
    // Homomorphically add 10^9 to the Σx̃ slot: the value is now far above capacity × span.
    contribution.ciphertexts[3] =
        contribution.ciphertexts[3].add_plaintext(&Scalar::from(1_000_000_000u64));
    let statements = [ContributionStatement {
        context: &context,
        capacity: 1024,
        contribution: &contribution,
    }];
    let failed = verify_contributions(&key, &plan, &statements, &mut rng).unwrap_err();
    assert_eq!(failed[0].0, 0);
}

#[test]
fn node_cannot_prove_statistics_beyond_its_capacity() {
    let (mut rng, key, plan, _) = setup();
    let context = ProofContext::new(b"q", b"node").unwrap();
    // 2000 participants in a vault of capacity 1024.
    let inflated = Statistics {
        values: vec![2000, 10, 10, 10],
        clipped: vec![],
    };
    let error = build_contribution(&context, &key, &plan, &inflated, 1024, &mut rng).unwrap_err();
    assert!(
        matches!(error, ContributionError::OutOfBounds { slot: 0, .. }),
        "{error}"
    );
}

#[test]
fn contribution_of_the_wrong_length_is_rejected() {
    let (mut rng, key, plan, statistics) = setup();
    let context = ProofContext::new(b"q", b"node").unwrap();
    let mut contribution =
        build_contribution(&context, &key, &plan, &statistics, 1024, &mut rng).unwrap();
    contribution.ciphertexts.pop();
    let statements = [ContributionStatement {
        context: &context,
        capacity: 1024,
        contribution: &contribution,
    }];
    let failed = verify_contributions(&key, &plan, &statements, &mut rng).unwrap_err();
    assert!(matches!(failed[0].1, ContributionError::Length { .. }));
}
