//! `cohortex ledger verify` passes on a database written through the market API, and after one
//! byte of a stored transaction (or block head) is flipped it exits non-zero and names the block
//! and transaction.

use ed25519_dalek::SigningKey;
use market::{AccountId, Action, Genesis, InProcessSequencer, Ledger, Role, TxBody};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::path::Path;
use std::process::{Command, Output};

const START_TIME: u64 = 1_700_000_000;

/// Writes a ledger with three blocks; block 2 holds three transactions.
fn write_ledger(path: &Path) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let ledger_key = SigningKey::generate(&mut rng);
    let issuer = SigningKey::generate(&mut rng);
    let buyers: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut rng)).collect();
    let genesis = Genesis {
        name: "cli-test".into(),
        ledger_key: ledger_key.verifying_key().to_bytes(),
        accounts: vec![(AccountId::of(&issuer), Role::Issuer)],
    };
    let sequencer = InProcessSequencer::with_clock(ledger_key, Box::new(|| START_TIME));
    let mut ledger = Ledger::create(path, genesis, sequencer).expect("create");
    let chain_id = ledger.chain_id();
    let sign = |key: &SigningKey, nonce: u64, action: Action| {
        TxBody {
            chain_id,
            signer: AccountId::of(key),
            nonce,
            action,
        }
        .sign(key)
        .expect("sign")
        .bytes
    };
    // Block 1: buyer 0 registers.
    let register = |key: &SigningKey| Action::RegisterAccount {
        account: AccountId::of(key),
        role: Role::Buyer,
    };
    let outcome = ledger
        .append(vec![sign(&buyers[0], 0, register(&buyers[0]))])
        .expect("block 1");
    assert!(outcome.refused.is_empty());
    // Block 2: buyers 1 and 2 register, the issuer deposits to buyer 0.
    let outcome = ledger
        .append(vec![
            sign(&buyers[1], 0, register(&buyers[1])),
            sign(&buyers[2], 0, register(&buyers[2])),
            sign(
                &issuer,
                0,
                Action::Deposit {
                    to: AccountId::of(&buyers[0]),
                    amount: 500,
                },
            ),
        ])
        .expect("block 2");
    assert!(outcome.refused.is_empty());
    // Block 3: another deposit.
    let outcome = ledger
        .append(vec![sign(
            &issuer,
            1,
            Action::Deposit {
                to: AccountId::of(&buyers[1]),
                amount: 70,
            },
        )])
        .expect("block 3");
    assert!(outcome.refused.is_empty());
    assert_eq!(ledger.machine().height(), 3);
}

fn verify(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(["ledger", "verify"])
        .arg(path)
        .output()
        .expect("run cohortex")
}

fn flip_tx_byte(path: &Path, height: u64, position: u32, byte: usize) {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut tx: Vec<u8> = conn
        .query_row(
            "SELECT tx FROM transactions WHERE height = ?1 AND position = ?2",
            rusqlite::params![height as i64, position],
            |row| row.get(0),
        )
        .expect("stored transaction");
    tx[byte] ^= 0x01;
    let changed = conn
        .execute(
            "UPDATE transactions SET tx = ?1 WHERE height = ?2 AND position = ?3",
            rusqlite::params![tx, height as i64, position],
        )
        .expect("update");
    assert_eq!(changed, 1);
}

#[test]
fn ledger_verify_passes_on_a_database_written_by_the_market() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.db");
    write_ledger(&path);
    let output = verify(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stdout.contains("blocks           3"), "{stdout}");
    assert!(stdout.contains("transactions     5"), "{stdout}");
}

#[test]
fn ledger_verify_names_the_block_and_transaction_of_a_flipped_body_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.db");
    write_ledger(&path);
    // Byte 70 lies in the body (after the version byte and the 64-byte signature).
    flip_tx_byte(&path, 2, 1, 70);
    let output = verify(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("block 2, transaction 1"), "{stderr}");
    assert!(stderr.contains("first failing block: 2"), "{stderr}");
}

#[test]
fn ledger_verify_names_the_block_and_transaction_of_a_flipped_signature_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.db");
    write_ledger(&path);
    flip_tx_byte(&path, 3, 0, 10);
    let output = verify(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("block 3, transaction 0: bad signature"),
        "{stderr}"
    );
}

#[test]
fn ledger_verify_names_the_block_of_a_flipped_tree_head_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.db");
    write_ledger(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mut head: Vec<u8> = conn
        .query_row("SELECT head FROM blocks WHERE height = 2", [], |row| {
            row.get(0)
        })
        .expect("head");
    // Inside the tree root field of the header.
    head[1 + 32 + 8 + 8 + 32 + 4 + 8 + 5] ^= 0x80;
    conn.execute(
        "UPDATE blocks SET head = ?1 WHERE height = 2",
        rusqlite::params![head],
    )
    .expect("update");
    drop(conn);
    let output = verify(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("block 2: tree head signature does not verify"),
        "{stderr}"
    );
}

#[test]
fn ledger_verify_fails_cleanly_on_a_missing_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = verify(&dir.path().join("absent.db"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
}
