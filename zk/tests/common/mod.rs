#![allow(dead_code)]
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zk::dkg::{run_local_ceremony_with_rng, DkgOutput, DkgParameters};
use zk::ProofContext;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn context(query: &str, node: &str) -> ProofContext {
    ProofContext::new(query.as_bytes(), node.as_bytes()).expect("valid context")
}

pub fn committee(threshold: u16, members: u16, seed: u64) -> Vec<DkgOutput> {
    let parameters = DkgParameters::new(threshold, members, b"test-session").expect("parameters");
    run_local_ceremony_with_rng(&parameters, &mut rng(seed)).expect("honest ceremony")
}
