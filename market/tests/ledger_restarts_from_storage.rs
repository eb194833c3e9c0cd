//! Restart: the state and log come back from SQLite and are checked against the last signed
//! head; tampered storage is refused on open and named by the audit.

#![cfg(feature = "storage")]

mod common;

use common::*;
use market::machine::ResumeError;
use market::{audit_database, AuditError, AuditProblem, Ledger, LedgerError};

#[test]
fn ledger_reopens_with_the_same_state_log_and_head() {
    let mut scene = Scene::new();
    let order = scene.order();
    let ids = scene.patient_ids();
    scene.record(order, ids);
    let state_hash = scene.f.ledger.state().hash();
    let head = scene.f.ledger.head().cloned().expect("head");
    let path = scene.f.ledger.path().to_path_buf();
    let Scene { f, .. } = scene;
    let Fixture {
        ledger,
        ledger_key,
        clock,
        dir,
        ..
    } = f;
    drop(ledger);

    let reopened = Ledger::open(&path, ledger_sequencer(&ledger_key, &clock)).expect("reopen");
    assert_eq!(reopened.state().hash(), state_hash);
    assert_eq!(reopened.head(), Some(&head));
    assert_eq!(reopened.machine().log().size(), head.header.tree_size);
    let report = audit_database(&path).expect("audit passes");
    assert_eq!(report.blocks, head.header.height);
    assert_eq!(report.state_hash, state_hash);
    drop(dir);
}

#[test]
fn ledger_refuses_to_open_when_stored_state_disagrees_with_the_signed_head() {
    let scene = Scene::new();
    let buyer = scene.buyer.id;
    let path = scene.f.ledger.path().to_path_buf();
    let Fixture {
        ledger,
        ledger_key,
        clock,
        dir,
        ..
    } = scene.f;
    drop(ledger);

    // Give the buyer a million credits behind the ledger's back.
    let conn = rusqlite::Connection::open(&path).expect("open");
    let key = postcard::to_stdvec(&market::state::StateKey::Account(buyer)).expect("key");
    let value: Vec<u8> = conn
        .query_row(
            "SELECT value FROM state_entries WHERE key = ?1",
            [&key],
            |row| row.get(0),
        )
        .expect("buyer entry");
    let mut account: market::state::Account = postcard::from_bytes(&value).expect("decode");
    account.balance += 1_000_000;
    conn.execute(
        "UPDATE state_entries SET value = ?1 WHERE key = ?2",
        rusqlite::params![postcard::to_stdvec(&account).expect("encode"), key],
    )
    .expect("update");
    drop(conn);

    let reopened = Ledger::open(&path, ledger_sequencer(&ledger_key, &clock));
    assert!(matches!(
        reopened,
        Err(LedgerError::Resume(ResumeError::StateMismatch))
    ));
    match audit_database(&path) {
        Err(AuditError::Failed(failure)) => {
            assert!(matches!(
                failure.problem,
                AuditProblem::StoredStateMismatch(_)
            ))
        }
        other => panic!("audit must fail, got {other:?}"),
    }
    drop(dir);
}

#[test]
fn ledger_refuses_a_sequencer_with_another_key() {
    let scene = Scene::new();
    let path = scene.f.ledger.path().to_path_buf();
    let Fixture {
        ledger, clock, dir, ..
    } = scene.f;
    drop(ledger);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    assert!(matches!(
        Ledger::open(&path, ledger_sequencer(&stranger, &clock)),
        Err(LedgerError::SequencerKeyMismatch)
    ));
    drop(dir);
}

#[test]
fn block_pages_return_every_envelope_of_the_block_in_order() {
    let mut f = Fixture::new();
    let patients: Vec<Party> = (0..5).map(|_| Party::new(&mut f.rng)).collect();
    let envelopes: Vec<Vec<u8>> = patients
        .iter()
        .map(|patient| {
            f.sign(
                patient,
                market::Action::RegisterAccount {
                    account: patient.id,
                    role: market::Role::Patient,
                },
            )
        })
        .collect();
    let outcome = f.ledger.append(envelopes.clone()).expect("append");
    assert!(outcome.refused.is_empty());
    let height = f.ledger.head().expect("head").header.height;
    // A page limit of one byte still carries one envelope a page: five pages, in order.
    let mut start = 0;
    let mut pages = 0;
    let mut served = Vec::new();
    while start < 5 {
        let page = f
            .ledger
            .block_envelopes(height, start, 1)
            .expect("read")
            .expect("the block exists");
        assert_eq!(page.tx_count, 5);
        assert_eq!(page.envelopes.len(), 1);
        served.extend(page.envelopes);
        start = page.next;
        pages += 1;
    }
    assert_eq!(pages, 5);
    assert_eq!(served, envelopes);
    // One large page holds the whole block; a height past the chain has no block.
    let whole = f
        .ledger
        .block_envelopes(height, 0, 1 << 20)
        .expect("read")
        .expect("the block exists");
    assert_eq!(whole.envelopes, envelopes);
    assert_eq!(whole.next, 5);
    assert!(f
        .ledger
        .block_envelopes(height + 1, 0, 1 << 20)
        .expect("read")
        .is_none());
}

/// Block `height` of `ledger` as a replica fetches it: its signed head and every envelope.
fn stored_block(ledger: &Ledger, height: u64) -> market::audit::StoredBlock {
    let head = ledger.head_at(height).unwrap().expect("the block exists");
    let first_leaf = head.header.tree_size - u64::from(head.header.tx_count);
    let page = ledger
        .block_envelopes(height, 0, usize::MAX)
        .unwrap()
        .expect("the block exists");
    market::audit::StoredBlock {
        height,
        head: head.to_bytes(),
        block_hash: head.block_hash().as_bytes().to_vec(),
        txs: page
            .envelopes
            .into_iter()
            .enumerate()
            .map(|(position, bytes)| market::audit::StoredTx {
                position: position as u32,
                leaf_index: first_leaf + position as u64,
                txid: market::tx::txid_of(&bytes).0.as_bytes().to_vec(),
                bytes,
            })
            .collect(),
    }
}

/// A replica of `ledger` that has verified every block but the last, and the last height.
fn replica_one_block_behind(ledger: &Ledger) -> (market::Auditor, u64) {
    let last = ledger.head().expect("head").header.height;
    let mut replica = market::Auditor::new(&ledger.machine().genesis().to_bytes()).unwrap();
    for height in 1..last {
        replica.check_block(stored_block(ledger, height)).unwrap();
    }
    (replica, last)
}

#[test]
fn replica_stays_at_its_last_verified_block_after_a_forged_one() {
    use ed25519_dalek::Signer;
    let mut scene = Scene::new();
    let order = scene.order();
    scene.record(order, scene.patient_ids());
    let ledger = &scene.f.ledger;
    let (mut replica, last) = replica_one_block_behind(ledger);

    // The operator, holding the ledger key, signs a last block whose header claims another
    // state: everything checks until the replayed state hash.
    let honest = stored_block(ledger, last);
    let mut forged_head = ledger.head_at(last).unwrap().unwrap();
    forged_head.header.state_hash = market::Hash32([0x42; 32]);
    forged_head.signature = scene
        .f
        .ledger_key
        .sign(forged_head.header.signing_digest().as_bytes());
    let forged = market::audit::StoredBlock {
        head: forged_head.to_bytes(),
        block_hash: forged_head.block_hash().as_bytes().to_vec(),
        ..honest.clone()
    };
    let failure = replica.check_block(forged).unwrap_err();
    assert!(
        matches!(failure.problem, AuditProblem::StateHashMismatch { .. }),
        "{failure}"
    );
    assert_eq!(replica.machine().height(), last - 1);
    assert_eq!(
        replica.machine().log().size(),
        ledger.head_at(last - 1).unwrap().unwrap().header.tree_size,
        "the forged block's leaves are gone"
    );

    // The honest block then applies on the replica as it stands, with no replay from genesis.
    replica.check_block(honest).unwrap();
    assert_eq!(replica.machine().height(), last);
    assert_eq!(replica.machine().state().hash(), ledger.state().hash());
}

#[test]
fn replica_refuses_a_signed_block_holding_a_transaction_whose_signature_fails() {
    let mut scene = Scene::new();
    let order = scene.order();
    scene.record(order, scene.patient_ids());
    let ledger = &scene.f.ledger;
    let (mut replica, last) = replica_one_block_behind(ledger);
    // The block as signed, but one envelope's signature has a flipped bit: the replica checks
    // the block's signatures in batches, and the failing batch one by one.
    let mut block = stored_block(ledger, last);
    let victim = block.txs.len() - 1;
    block.txs[victim].bytes[10] ^= 1;
    let failure = replica.check_block(block).unwrap_err();
    assert_eq!(failure.block, Some(last));
    assert_eq!(failure.transaction, Some(victim as u32), "{failure}");
    assert!(
        matches!(
            failure.problem,
            AuditProblem::BadTransaction(market::error::TxError::BadSignature(_))
        ),
        "{failure}"
    );
    assert_eq!(replica.machine().height(), last - 1);
    replica.check_block(stored_block(ledger, last)).unwrap();
    assert_eq!(replica.machine().state().hash(), ledger.state().hash());
}

#[test]
fn replica_reopens_at_its_last_verified_block_and_refuses_tampered_storage() {
    let mut scene = Scene::new();
    let order = scene.order();
    scene.record(order, scene.patient_ids());
    let ledger = &scene.f.ledger;
    let last = ledger.head().expect("head").header.height;
    let path = scene.f.dir.path().join("replica.db");
    let genesis = ledger.machine().genesis().to_bytes();
    {
        let mut replica = market::Replica::create(&path, &genesis).unwrap();
        for height in 1..=last {
            replica.check_block(stored_block(ledger, height)).unwrap();
        }
    }
    // Reopened, it stands where it stopped, with the ledger's state.
    let reopened = market::Replica::open(&path).unwrap();
    assert_eq!(reopened.machine().height(), last);
    assert_eq!(reopened.machine().state().hash(), ledger.state().hash());
    drop(reopened);

    // Someone with the disk credits a patient: the replica no longer matches its signed head.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (key, mut value): (Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT key, value FROM state_entries ORDER BY height DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let end = value.len() - 1;
    value[end] ^= 1;
    conn.execute(
        "UPDATE state_entries SET value = ?1 WHERE key = ?2",
        rusqlite::params![value, key],
    )
    .unwrap();
    drop(conn);
    assert!(
        matches!(
            market::Replica::open(&path),
            Err(LedgerError::Resume(ResumeError::StateMismatch) | LedgerError::Corrupt { .. })
        ),
        "a tampered replica reopened"
    );
}

#[test]
fn snapshot_of_the_ledger_opens_as_a_replica_checked_against_its_signed_head() {
    // A new node may start from a copy of the ledger's database instead of replaying from
    // genesis: it is the replica format, and opening it checks the state and the log against
    // the last head signed by the pinned ledger key.
    let mut scene = Scene::new();
    let order = scene.order();
    scene.record(order, scene.patient_ids());
    let snapshot = scene.f.dir.path().join("snapshot.db");
    let conn = rusqlite::Connection::open(scene.f.ledger.path()).unwrap();
    conn.execute(
        "VACUUM INTO ?1",
        rusqlite::params![snapshot.to_str().unwrap()],
    )
    .unwrap();
    drop(conn);
    let mut replica = market::Replica::open(&snapshot).unwrap();
    let head = scene.f.ledger.head().unwrap().clone();
    assert_eq!(replica.machine().height(), head.header.height);
    assert_eq!(replica.machine().state().hash(), head.header.state_hash);
    assert_eq!(
        replica.machine().ledger_key(),
        scene.f.ledger_key.verifying_key()
    );

    // It then follows the ledger from there like any replica.
    let later = scene.order();
    scene.record(later, scene.patient_ids());
    let last = scene.f.ledger.head().unwrap().header.height;
    for height in head.header.height + 1..=last {
        replica
            .check_block(stored_block(&scene.f.ledger, height))
            .unwrap();
    }
    assert_eq!(
        replica.machine().state().hash(),
        scene.f.ledger.state().hash()
    );
}
