//! The DKG and threshold key switching: honest runs over many (t, n), a cheating dealer, bad
//! key-switch shares, and fewer than t shares. Every check decrypts and compares with the
//! plaintext that was encrypted.

mod common;

use proptest::prelude::*;
use zk::dkg::messages::{DealerShare, Justification};
use zk::dkg::{deal_with_rng, DkgParameters};
use zk::errors::DkgFault;
use zk::{BsgsConfig, DecryptionTable, KeyPair, KeySwitchError, KeySwitchShare, MemberIndex, Wire};

fn member(index: u16) -> MemberIndex {
    MemberIndex::new(index).expect("nonzero")
}

fn small_table() -> DecryptionTable {
    DecryptionTable::build(BsgsConfig {
        table_bits: 12,
        max_abs: 1 << 30,
    })
    .expect("table")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn any_t_of_n_members_switch_to_the_buyer_who_decrypts(
        (threshold, members) in (1u16..=5).prop_flat_map(|n| (1..=n, Just(n))),
        values in prop::collection::vec(-1_000_000i64..1_000_000, 1..4),
        seed in any::<u64>(),
    ) {
        let mut rng = common::rng(seed);
        let outputs = common::committee(threshold, members, seed);
        let committee = &outputs[0].committee;
        for output in &outputs {
            prop_assert_eq!(&output.committee, committee);
            prop_assert!(output.excluded.is_empty());
        }
        let buyer = KeyPair::generate_with_rng(&mut rng);
        let (ciphertexts, _) = committee.collective_key().encrypt_vector_with_rng(&values, &mut rng);
        let context = common::context("query-1", "committee");
        // The last t members answer.
        let shares: Vec<KeySwitchShare> = outputs
            .iter()
            .rev()
            .take(usize::from(threshold))
            .map(|o| o.share.key_switch_with_rng(&context, &ciphertexts.0, &buyer.public, &mut rng))
            .collect();
        let outcome = committee.combine(&context, &ciphertexts.0, &buyer.public, &shares).expect("t shares");
        prop_assert!(outcome.rejected.is_empty());
        let decrypted = buyer.secret.decrypt_vector(&outcome.ciphertexts, &small_table()).expect("decrypts");
        prop_assert_eq!(decrypted, values);
    }
}

#[test]
fn cheating_dealer_is_excluded_and_named() {
    let parameters = DkgParameters::new(2, 3, b"cheat").expect("parameters");
    let mut rng = common::rng(7);
    let (s1, b1, shares1) = deal_with_rng(&parameters, member(1), &mut rng).expect("deal");
    let (s2, b2, shares2) = deal_with_rng(&parameters, member(2), &mut rng).expect("deal");
    let (s3, b3, mut shares3) = deal_with_rng(&parameters, member(3), &mut rng).expect("deal");
    // Dealer 3 sends member 1 a share that does not match its commitments.
    for share in shares3.iter_mut().filter(|s| s.recipient == member(1)) {
        share.share += curve25519_dalek::scalar::Scalar::ONE;
    }
    let broadcasts = vec![b1, b2, b3];
    let all: Vec<DealerShare> = shares1.into_iter().chain(shares2).chain(shares3).collect();
    let for_member = |m: u16| -> Vec<DealerShare> {
        all.iter()
            .filter(|s| s.recipient == member(m))
            .cloned()
            .collect()
    };
    let (r1, c1) = s1.receive(&broadcasts, &for_member(1)).expect("receive");
    let (r2, c2) = s2.receive(&broadcasts, &for_member(2)).expect("receive");
    let (r3, c3) = s3.receive(&broadcasts, &for_member(3)).expect("receive");
    assert_eq!(c1.len(), 1, "member 1 complains about dealer 3");
    assert_eq!(c1[0].dealer, member(3));
    assert!(c2.is_empty() && c3.is_empty());
    let complaints: Vec<_> = c1.into_iter().chain(c2).chain(c3).collect();

    // Dealer 3 answers with a wrong share again: it is excluded, and the fault names it.
    let mut bad_answers = r3.justify(&complaints);
    for answer in &mut bad_answers {
        answer.share += curve25519_dalek::scalar::Scalar::ONE;
    }
    let output = r1
        .finish(&complaints, &bad_answers)
        .expect("two dealers remain");
    assert_eq!(output.qualified, vec![member(1), member(2)]);
    assert_eq!(
        output.excluded,
        vec![DkgFault::BadShare {
            dealer: member(3),
            recipient: member(1)
        }]
    );
    assert!(output.excluded[0].to_string().contains("dealer 3"));

    // A dealer that stays silent is excluded too, and the others agree on the same key.
    let silent: Vec<Justification> = Vec::new();
    let output2 = r2.finish(&complaints, &silent).expect("two dealers remain");
    assert_eq!(
        output2.excluded,
        vec![DkgFault::UnansweredComplaint {
            dealer: member(3),
            recipient: member(1)
        }]
    );
    assert_eq!(
        output2.committee.collective_key(),
        output.committee.collective_key()
    );
}

#[test]
fn dealer_that_justifies_correctly_stays_qualified() {
    let parameters = DkgParameters::new(2, 3, b"justify").expect("parameters");
    let mut rng = common::rng(8);
    let (s1, b1, shares1) = deal_with_rng(&parameters, member(1), &mut rng).expect("deal");
    let (s2, b2, mut shares2) = deal_with_rng(&parameters, member(2), &mut rng).expect("deal");
    let (s3, b3, shares3) = deal_with_rng(&parameters, member(3), &mut rng).expect("deal");
    // Member 3's share from dealer 2 is lost in transit.
    shares2.retain(|s| s.recipient != member(3));
    let broadcasts = vec![b1, b2, b3];
    let all: Vec<DealerShare> = shares1.into_iter().chain(shares2).chain(shares3).collect();
    let for_member = |m: u16| -> Vec<DealerShare> {
        all.iter()
            .filter(|s| s.recipient == member(m))
            .cloned()
            .collect()
    };
    let (r1, c1) = s1.receive(&broadcasts, &for_member(1)).expect("receive");
    let (r2, c2) = s2.receive(&broadcasts, &for_member(2)).expect("receive");
    let (r3, c3) = s3.receive(&broadcasts, &for_member(3)).expect("receive");
    let complaints: Vec<_> = c1.into_iter().chain(c2).chain(c3).collect();
    assert_eq!(complaints.len(), 1);
    let answers = r2.justify(&complaints);
    let outputs = [
        r1.finish(&complaints, &answers).expect("finish"),
        r2.finish(&complaints, &answers).expect("finish"),
        r3.finish(&complaints, &answers).expect("finish"),
    ];
    for output in &outputs {
        assert_eq!(output.qualified.len(), 3);
        assert!(output.excluded.is_empty());
    }
    // Members 1 and 3 (who adopted the revealed share) can key-switch together.
    let buyer = KeyPair::generate_with_rng(&mut rng);
    let committee = &outputs[0].committee;
    let ciphertext = committee.collective_key().encrypt_with_rng(4242, &mut rng);
    let context = common::context("q", "committee");
    let shares: Vec<KeySwitchShare> = [&outputs[0], &outputs[2]]
        .iter()
        .map(|o| {
            o.share
                .key_switch_with_rng(&context, &[ciphertext], &buyer.public, &mut rng)
        })
        .collect();
    let outcome = committee
        .combine(&context, &[ciphertext], &buyer.public, &shares)
        .expect("combine");
    assert_eq!(
        buyer
            .secret
            .decrypt_vector(&outcome.ciphertexts, &small_table()),
        Ok(vec![4242])
    );
}

#[test]
fn dealer_with_a_bad_proof_of_knowledge_is_excluded() {
    let parameters = DkgParameters::new(2, 3, b"pok").expect("parameters");
    let mut rng = common::rng(9);
    let (s1, b1, _) = deal_with_rng(&parameters, member(1), &mut rng).expect("deal");
    let (_, b2, shares2) = deal_with_rng(&parameters, member(2), &mut rng).expect("deal");
    let (_, mut b3, shares3) = deal_with_rng(&parameters, member(3), &mut rng).expect("deal");
    b3.proof_response += curve25519_dalek::scalar::Scalar::ONE;
    let mine: Vec<DealerShare> = shares2
        .into_iter()
        .chain(shares3)
        .filter(|s| s.recipient == member(1))
        .collect();
    let (r1, complaints) = s1.receive(&[b1, b2, b3], &mine).expect("receive");
    assert!(complaints.is_empty());
    let output = r1.finish(&[], &[]).expect("finish");
    assert_eq!(
        output.excluded,
        vec![DkgFault::BadProofOfKnowledge { dealer: member(3) }]
    );
}

#[test]
fn invalid_dkg_parameters_are_refused() {
    assert!(DkgParameters::new(0, 3, b"s").is_err());
    assert!(DkgParameters::new(4, 3, b"s").is_err());
    assert!(DkgParameters::new(2, 3, b"").is_err());
}

struct Setup {
    outputs: Vec<zk::dkg::DkgOutput>,
    buyer: KeyPair,
    ciphertexts: Vec<zk::Ciphertext>,
    context: zk::ProofContext,
    rng: rand_chacha::ChaCha20Rng,
}

fn setup(seed: u64) -> Setup {
    let mut rng = common::rng(seed);
    let outputs = common::committee(2, 3, seed);
    let buyer = KeyPair::generate_with_rng(&mut rng);
    let (ciphertexts, _) = outputs[0]
        .committee
        .collective_key()
        .encrypt_vector_with_rng(&[17, -3], &mut rng);
    Setup {
        outputs,
        buyer,
        ciphertexts: ciphertexts.0,
        context: common::context("q", "committee"),
        rng,
    }
}

#[test]
fn key_switch_share_with_a_wrong_proof_is_rejected_and_named() {
    let mut s = setup(10);
    let committee = &s.outputs[0].committee;
    let honest = s.outputs[1].share.key_switch_with_rng(
        &s.context,
        &s.ciphertexts,
        &s.buyer.public,
        &mut s.rng,
    );
    // Relabel member 2's share as member 3's: the proof is for X_2, not X_3.
    let mut bytes = honest.to_bytes();
    bytes[6..8].copy_from_slice(&3u16.to_le_bytes());
    let relabelled = KeySwitchShare::from_bytes(&bytes).expect("decodes");
    assert_eq!(
        committee.verify_share(&s.context, &s.ciphertexts, &s.buyer.public, &relabelled),
        Err(KeySwitchError::BadProof { member: member(3) })
    );
    // Replace R with another valid point: the DLEQ equations fail.
    let mut bytes = honest.to_bytes();
    let offset = 6 + 2 + 4; // header, member, length
    bytes[offset..offset + 32]
        .copy_from_slice(curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED.as_bytes());
    let forged = KeySwitchShare::from_bytes(&bytes).expect("decodes");
    assert_eq!(
        committee.verify_share(&s.context, &s.ciphertexts, &s.buyer.public, &forged),
        Err(KeySwitchError::BadProof { member: member(2) })
    );
    // A share made for another query does not verify for this one.
    let other = common::context("another-query", "committee");
    let replayed =
        s.outputs[1]
            .share
            .key_switch_with_rng(&other, &s.ciphertexts, &s.buyer.public, &mut s.rng);
    assert_eq!(
        committee.verify_share(&s.context, &s.ciphertexts, &s.buyer.public, &replayed),
        Err(KeySwitchError::BadProof { member: member(2) })
    );
    // With the forged share and two honest ones, combining skips the forgery and still decrypts.
    let share1 = s.outputs[0].share.key_switch_with_rng(
        &s.context,
        &s.ciphertexts,
        &s.buyer.public,
        &mut s.rng,
    );
    let share3 = s.outputs[2].share.key_switch_with_rng(
        &s.context,
        &s.ciphertexts,
        &s.buyer.public,
        &mut s.rng,
    );
    let outcome = committee
        .combine(
            &s.context,
            &s.ciphertexts,
            &s.buyer.public,
            &[forged, share1, share3],
        )
        .expect("two valid shares");
    assert_eq!(
        outcome.rejected,
        vec![KeySwitchError::BadProof { member: member(2) }]
    );
    assert_eq!(outcome.used, vec![member(1), member(3)]);
    assert_eq!(
        s.buyer
            .secret
            .decrypt_vector(&outcome.ciphertexts, &small_table()),
        Ok(vec![17, -3])
    );
}

#[test]
fn fewer_than_t_key_switch_shares_cannot_decrypt() {
    let mut s = setup(11);
    let committee = &s.outputs[0].committee;
    let one = s.outputs[0].share.key_switch_with_rng(
        &s.context,
        &s.ciphertexts,
        &s.buyer.public,
        &mut s.rng,
    );
    let duplicate = one.clone();
    let error = committee
        .combine(
            &s.context,
            &s.ciphertexts,
            &s.buyer.public,
            &[one, duplicate],
        )
        .expect_err("one distinct share is below t = 2");
    assert_eq!(
        error,
        KeySwitchError::NotEnoughShares {
            valid: 1,
            threshold: 2,
            rejected: vec![KeySwitchError::DuplicateShare { member: member(1) }],
        }
    );
}

#[test]
fn a_single_share_does_not_reveal_the_plaintext_to_its_holder() {
    // With t = 2, one member's share combined alone (λ = 1) is not a decryption for the buyer.
    let mut s = setup(12);
    let share = s.outputs[0].share.key_switch_with_rng(
        &s.context,
        &s.ciphertexts,
        &s.buyer.public,
        &mut s.rng,
    );
    let threshold_one = zk::CommitteePublic::from_bytes(&{
        let mut bytes = s.outputs[0].committee.to_bytes();
        bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
        bytes
    })
    .expect("decodes");
    let outcome = threshold_one
        .combine(&s.context, &s.ciphertexts, &s.buyer.public, &[share])
        .expect("one share passes its own proof");
    let table = small_table();
    let result = s.buyer.secret.decrypt_vector(&outcome.ciphertexts, &table);
    assert_ne!(result, Ok(vec![17, -3]));
}

#[test]
fn a_stored_key_share_still_switches_and_only_to_its_own_committee() {
    let mut s = setup(11);
    // A member stores its share and reads it back (a restart): the share still key-switches,
    // and t shares, one of them restored, decrypt to the plaintext.
    let stored = s.outputs[0].share.to_bytes();
    let restored = zk::KeyShare::from_bytes(&stored).unwrap();
    assert!(restored.belongs_to(&s.outputs[0].committee));
    let recipient = s.buyer.public;
    let shares = vec![
        restored.key_switch_with_rng(&s.context, &s.ciphertexts, &recipient, &mut s.rng),
        s.outputs[1]
            .share
            .key_switch_with_rng(&s.context, &s.ciphertexts, &recipient, &mut s.rng),
    ];
    let switched = s.outputs[0]
        .committee
        .combine(&s.context, &s.ciphertexts, &recipient, &shares)
        .unwrap();
    let opened = s
        .buyer
        .secret
        .decrypt_vector(&switched.ciphertexts, &small_table())
        .unwrap();
    assert_eq!(opened, vec![17, -3]);
    // Another committee's share, or a share with a flipped byte, is not this committee's.
    let other = setup(12);
    assert!(!other.outputs[0].share.belongs_to(&s.outputs[0].committee));
    let mut flipped = stored.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    if let Ok(corrupted) = zk::KeyShare::from_bytes(&flipped) {
        assert!(!corrupted.belongs_to(&s.outputs[0].committee));
    }
}
