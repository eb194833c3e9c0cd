//! Reliability: a child process appends blocks in a loop and prints each acknowledged block;
//! the parent SIGKILLs it mid-loop, reopens the database, and checks that every acknowledged
//! block is present and verifies and that no partial block is visible.
//!
//! The child is this same test binary, re-executed with `CHILD_DB_ENV` set: the test function
//! then runs the append loop instead of the parent's checks.

#![cfg(feature = "storage")]

mod common;

use common::START_TIME;
use ed25519_dalek::SigningKey;
use market::{
    audit_database, AccountId, Action, Genesis, InProcessSequencer, Ledger, Role, TxBody,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_DB_ENV: &str = "COHORTEX_SIGKILL_CHILD_DB";
const TEST_NAME: &str = "ledger_keeps_every_acknowledged_block_after_sigkill";
const TXS_PER_BLOCK: usize = 200;
const ACKS_BEFORE_KILL: usize = 25;

struct Keys {
    ledger: SigningKey,
    issuer: SigningKey,
    buyer: SigningKey,
}

fn keys() -> Keys {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    Keys {
        ledger: SigningKey::generate(&mut rng),
        issuer: SigningKey::generate(&mut rng),
        buyer: SigningKey::generate(&mut rng),
    }
}

fn sequencer(keys: &Keys) -> InProcessSequencer {
    InProcessSequencer::with_clock(keys.ledger.clone(), Box::new(|| START_TIME))
}

/// One block of deposits from the issuer, continuing from its current nonce.
fn deposits(ledger: &Ledger, keys: &Keys) -> Vec<Vec<u8>> {
    let issuer = AccountId::of(&keys.issuer);
    let first_nonce = ledger
        .state()
        .account(&issuer)
        .map_or(0, |account| account.next_nonce);
    (0..TXS_PER_BLOCK as u64)
        .map(|i| {
            TxBody {
                chain_id: ledger.chain_id(),
                signer: issuer,
                nonce: first_nonce + i,
                action: Action::Deposit {
                    to: AccountId::of(&keys.buyer),
                    amount: 1,
                },
            }
            .sign(&keys.issuer)
            .expect("sign")
            .bytes
        })
        .collect()
}

/// The child: append blocks forever (bounded), acknowledging each after `append` returns.
fn child_append_loop(path: &Path) {
    let keys = keys();
    let mut ledger = Ledger::open(path, sequencer(&keys)).expect("child opens the ledger");
    let stdout = std::io::stdout();
    for _ in 0..100_000 {
        let block = deposits(&ledger, &keys);
        let outcome = ledger.append(block).expect("append");
        assert!(outcome.refused.is_empty());
        let head = outcome.head.expect("block");
        let mut out = stdout.lock();
        writeln!(
            out,
            "acked {} {} {}",
            head.header.height,
            head.block_hash(),
            head.header.tree_size
        )
        .expect("write ack");
        out.flush().expect("flush ack");
    }
}

#[test]
fn ledger_keeps_every_acknowledged_block_after_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_DB_ENV) {
        child_append_loop(Path::new(&path));
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let keys = keys();
    let genesis = Genesis {
        name: "crash-test".into(),
        ledger_key: keys.ledger.verifying_key().to_bytes(),
        accounts: vec![(AccountId::of(&keys.issuer), Role::Issuer)],
    };
    let mut ledger = Ledger::create(&path, genesis, sequencer(&keys)).expect("create");
    let register = TxBody {
        chain_id: ledger.chain_id(),
        signer: AccountId::of(&keys.buyer),
        nonce: 0,
        action: Action::RegisterAccount {
            account: AccountId::of(&keys.buyer),
            role: Role::Buyer,
        },
    }
    .sign(&keys.buyer)
    .expect("sign")
    .bytes;
    ledger.append(vec![register]).expect("register buyer");
    drop(ledger);

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked: Vec<(u64, String, u64)> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let Some(rest) = line.strip_prefix("acked ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        assert_eq!(fields.len(), 3, "ack line: {line}");
        acked.push((
            fields[0].parse().expect("height"),
            fields[1].to_string(),
            fields[2].parse().expect("tree size"),
        ));
        if acked.len() == ACKS_BEFORE_KILL {
            // SIGKILL on Unix: no destructors, no flush, no chance to finish the block in flight.
            child.kill().expect("kill child");
            break;
        }
    }
    child.wait().expect("reap child");
    assert_eq!(
        acked.len(),
        ACKS_BEFORE_KILL,
        "child acknowledged blocks before the kill"
    );

    // Reopen: state and log are checked against the last signed head on open.
    let mut ledger = Ledger::open(&path, sequencer(&keys)).expect("reopen after SIGKILL");
    let last_acked = acked.last().expect("acks").0;
    assert!(ledger.machine().height() >= last_acked);
    for (height, block_hash, tree_size) in &acked {
        let head = ledger
            .head_at(*height)
            .expect("read head")
            .unwrap_or_else(|| panic!("acknowledged block {height} is missing"));
        assert_eq!(&head.block_hash().to_hex(), block_hash, "block {height}");
        assert_eq!(head.header.tree_size, *tree_size, "block {height}");
    }
    // Every block present is whole: each holds exactly TXS_PER_BLOCK deposits after the
    // registration block, and the balance equals the number of committed deposits.
    let height = ledger.machine().height();
    let committed_deposits = (height - 1) * TXS_PER_BLOCK as u64;
    assert_eq!(ledger.machine().log().size(), 1 + committed_deposits);
    assert_eq!(
        ledger.state().balance(&AccountId::of(&keys.buyer)),
        committed_deposits
    );
    // The full audit: signatures, links, roots, state, no orphan transactions.
    let report = audit_database(&path).expect("audit after crash");
    assert_eq!(report.blocks, height);

    // And the ledger keeps working.
    let block = deposits(&ledger, &keys);
    let outcome = ledger.append(block).expect("append after crash");
    assert_eq!(outcome.head.expect("block").header.height, height + 1);
}
