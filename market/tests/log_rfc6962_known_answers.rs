//! The log against independent RFC 6962 computations, receipts verified offline, consistency
//! proofs between heads, and a proptest that honest proofs verify and mutated ones do not.

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::{verify_consistency, verify_inclusion, Hash32, LogError, MerkleLog, Receipt, TxId};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn leaf(byte: u8) -> TxId {
    TxId(Hash32([byte; 32]))
}

/// RFC 6962 §2.1 computed by hand with sha2: MTH({d}) = SHA-256(0x00 || d).
fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 §2.1: node hash = SHA-256(0x01 || left || right).
fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

#[test]
fn empty_log_root_is_sha256_of_the_empty_string() {
    let log = MerkleLog::new();
    assert_eq!(
        log.root().to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn single_leaf_root_is_the_prefixed_leaf_hash() {
    let mut log = MerkleLog::new();
    log.push(leaf(0xAA));
    assert_eq!(log.root().0, leaf_hash(&[0xAA; 32]));
    // The same value computed outside Rust: python3 hashlib.sha256(b"\x00" + b"\xaa" * 32).
    assert_eq!(
        log.root().to_hex(),
        "e0bb82791bae3c50bd9c20fa4ccdcb8064a56e5c12bc69b07e6712ac9b4429e6"
    );
}

#[test]
fn three_leaf_tree_matches_hand_computed_root_inclusion_and_consistency() {
    let (a, b, c) = (leaf(1), leaf(2), leaf(3));
    let (ha, hb, hc) = (
        leaf_hash(a.as_ref()),
        leaf_hash(b.as_ref()),
        leaf_hash(c.as_ref()),
    );
    let hab = node_hash(&ha, &hb);
    let root3 = node_hash(&hab, &hc);

    let mut log = MerkleLog::new();
    log.push(a);
    log.push(b);
    let root2 = log.root();
    assert_eq!(root2.0, hab);
    log.push(c);
    assert_eq!(log.root().0, root3);

    // Inclusion of leaf 0 in the 3-leaf tree: audit path [hb, hc] (RFC 6962 §2.1.1).
    let proof = log.prove_inclusion(0).expect("proof");
    assert_eq!(proof, [hb, hc].concat());
    verify_inclusion(&Hash32(root3), 3, &a, 0, &proof).expect("verifies");
    // Inclusion of leaf 2: path [hab].
    let proof = log.prove_inclusion(2).expect("proof");
    assert_eq!(proof, hab.to_vec());
    verify_inclusion(&Hash32(root3), 3, &c, 2, &proof).expect("verifies");
    // Consistency 2 → 3: PROOF(2, D[3]) = [hc] (RFC 6962 §2.1.2, old tree is a full subtree).
    let consistency = log.prove_consistency(2).expect("proof");
    assert_eq!(consistency, hc.to_vec());
}

#[test]
fn five_leaf_tree_inclusion_path_matches_hand_computation() {
    // RFC 6962 §2.1.1: in a 5-leaf tree the split is k = 4, so the path of leaf 1 is
    // [h0, MTH(D[2:4]), h4].
    let leaves: Vec<TxId> = (0..5).map(|i| leaf(i as u8 + 10)).collect();
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    let h23 = node_hash(&hashes[2], &hashes[3]);
    let h0123 = node_hash(&node_hash(&hashes[0], &hashes[1]), &h23);
    let root = node_hash(&h0123, &hashes[4]);
    let mut log = MerkleLog::new();
    for l in &leaves {
        log.push(*l);
    }
    assert_eq!(log.root().0, root);
    let proof = log.prove_inclusion(1).expect("proof");
    assert_eq!(proof, [hashes[0], h23, hashes[4]].concat());
}

#[test]
fn receipt_verifies_offline_with_the_ledger_key_only() {
    let mut scene = Scene::new();
    let order = scene.order();
    let ids = scene.patient_ids();
    let receipt_id = scene.record(order, ids);
    // More blocks after the receipt: the proof is against the latest head.
    scene.f.deposit(&scene.buyer, 1);
    let receipt = scene.f.ledger.receipt(&receipt_id.0).expect("receipt");
    let bytes = receipt.to_bytes().expect("encode");

    // Offline: decode the bytes and verify with nothing but the ledger's public key.
    let decoded = Receipt::from_bytes(&bytes).expect("decode");
    assert_eq!(decoded, receipt);
    let ledger_key = scene.f.ledger_key.verifying_key();
    let tx = decoded.verify(&ledger_key).expect("receipt verifies");
    assert_eq!(tx.id(), receipt_id.0);
    assert!(matches!(tx.body().action, market::Action::RecordReceipt(_)));

    // Another key refuses it.
    let other = ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key();
    assert_eq!(
        decoded.verify(&other).err(),
        Some(LogError::BadHeadSignature)
    );

    // A modified transaction, index or proof is refused.
    let mut tampered = receipt.clone();
    let last = tampered.tx.len() - 1;
    tampered.tx[last] ^= 1;
    assert!(tampered.verify(&ledger_key).is_err());
    let mut tampered = receipt.clone();
    tampered.leaf_index ^= 1;
    assert!(tampered.verify(&ledger_key).is_err());
    let mut tampered = receipt.clone();
    tampered.inclusion_proof[0] ^= 1;
    assert!(matches!(
        tampered.verify(&ledger_key),
        Err(LogError::InclusionFailed(_))
    ));
    // Truncated bytes do not decode.
    assert!(Receipt::from_bytes(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn consistency_proof_links_an_old_head_to_the_current_one() {
    let mut scene = Scene::new();
    let old_head = scene.f.ledger.head_at(3).expect("read").expect("block 3");
    scene.order();
    scene.f.deposit(&scene.buyer, 5);
    let new_head = scene.f.ledger.head().cloned().expect("head");
    let proof = scene
        .f
        .ledger
        .consistency_proof(old_head.header.tree_size)
        .expect("proof");
    let key = scene.f.ledger_key.verifying_key();
    verify_consistency(&old_head, &new_head, &proof, &key).expect("consistent");

    // A head from a different history is not consistent.
    let mut forged = old_head.clone();
    forged.header.tree_root.0[0] ^= 1;
    assert_eq!(
        verify_consistency(&forged, &new_head, &proof, &key),
        Err(LogError::BadHeadSignature)
    );
    let mut bad_proof = proof.clone();
    if let Some(byte) = bad_proof.first_mut() {
        *byte ^= 1;
        assert!(matches!(
            verify_consistency(&old_head, &new_head, &bad_proof, &key),
            Err(LogError::ConsistencyFailed(_))
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_verify_and_mutations_do_not(
        leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..80),
        index_seed in any::<u64>(),
        flip_seed in any::<u64>(),
    ) {
        let mut log = MerkleLog::new();
        for l in &leaves {
            log.push(TxId(Hash32(*l)));
        }
        let size = leaves.len() as u64;
        let index = index_seed % size;
        let txid = TxId(Hash32(leaves[index as usize]));
        let root = log.root();
        let proof = log.prove_inclusion(index).expect("proof");
        prop_assert!(verify_inclusion(&root, size, &txid, index, &proof).is_ok());

        // A different leaf.
        let mut other = txid;
        other.0 .0[(flip_seed % 32) as usize] ^= 1;
        prop_assert!(verify_inclusion(&root, size, &other, index, &proof).is_err());
        // A flipped bit in the proof.
        if !proof.is_empty() {
            let mut mutated = proof.clone();
            let at = (flip_seed as usize) % mutated.len();
            mutated[at] ^= 1 << (flip_seed % 8);
            prop_assert!(verify_inclusion(&root, size, &txid, index, &mutated).is_err());
        }
        // A wrong root.
        let mut wrong_root = root;
        wrong_root.0[(flip_seed % 32) as usize] ^= 1;
        prop_assert!(verify_inclusion(&wrong_root, size, &txid, index, &proof).is_err());
        // A wrong index (unless the leaves at both positions are equal).
        if size > 1 {
            let other_index = (index + 1) % size;
            if leaves[other_index as usize] != leaves[index as usize] {
                prop_assert!(verify_inclusion(&root, size, &txid, other_index, &proof).is_err());
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_between_any_two_sizes(
        leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..60),
        old_seed in any::<u64>(),
    ) {
        let mut log = MerkleLog::new();
        let mut roots = Vec::new();
        for l in &leaves {
            log.push(TxId(Hash32(*l)));
            roots.push(log.root());
        }
        let size = leaves.len() as u64;
        let old_size = 1 + old_seed % size;
        let proof = log.prove_consistency(old_size).expect("proof");
        let old_root = ct_merkle_root(roots[(old_size - 1) as usize], old_size);
        let new_root = ct_merkle_root(log.root(), size);
        let proof = ct_merkle::ConsistencyProof::<Sha256>::try_from_bytes(proof).expect("decode");
        prop_assert!(new_root.verify_consistency(&old_root, &proof).is_ok());
    }
}

fn ct_merkle_root(root: Hash32, size: u64) -> ct_merkle::RootHash<Sha256> {
    ct_merkle::RootHash::new(root.0.into(), size)
}
