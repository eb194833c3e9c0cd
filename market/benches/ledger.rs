//! Ledger throughput and proof verification.
//!
//! * `append/deposits_1000_per_block`: signed transactions appended per second, batched into
//!   blocks of 1000: parsing, ed25519 verification, state rules (prepare and finalize), Merkle
//!   append, state hash, head signature, and the durable SQLite commit (WAL, synchronous=FULL).
//!   Signing is the clients' work and happens outside the timed section.
//! * `inclusion/verify_2^20`: verifying one RFC 6962 inclusion proof in a log of 2^20 leaves.
//! * `receipt/verify`: verifying a full receipt offline (head signature, transaction signature,
//!   inclusion proof).
//! * `signatures/one_by_one_4096` and `signatures/batched_4096`: parsing and checking the
//!   signatures of a block of 4,096 transactions from 4,096 signers, as the sequencer admits
//!   them (`verify_all`, each with `verify_strict`) and as a replica replays them
//!   (`verify_block`, in batches).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use market::{
    verify_inclusion, AccountId, Action, Genesis, Hash32, InProcessSequencer, Ledger, MerkleLog,
    Role, TxBody, TxId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BLOCK: usize = 1000;

struct Setup {
    ledger: Ledger,
    issuer: SigningKey,
    issuer_nonce: u64,
    buyers: Vec<AccountId>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ledger_key = SigningKey::generate(&mut rng);
    let issuer = SigningKey::generate(&mut rng);
    let genesis = Genesis {
        name: "bench".into(),
        ledger_key: ledger_key.verifying_key().to_bytes(),
        accounts: vec![(AccountId::of(&issuer), Role::Issuer)],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ledger = Ledger::create(
        dir.path().join("bench.db"),
        genesis,
        InProcessSequencer::new(ledger_key),
    )
    .expect("create");
    let chain_id = ledger.chain_id();
    let buyer_keys: Vec<SigningKey> = (0..BLOCK).map(|_| SigningKey::generate(&mut rng)).collect();
    let registrations = buyer_keys
        .iter()
        .map(|key| {
            TxBody {
                chain_id,
                signer: AccountId::of(key),
                nonce: 0,
                action: Action::RegisterAccount {
                    account: AccountId::of(key),
                    role: Role::Buyer,
                },
            }
            .sign(key)
            .expect("sign")
            .bytes
        })
        .collect();
    let outcome = ledger.append(registrations).expect("register buyers");
    assert!(outcome.refused.is_empty());
    Setup {
        ledger,
        issuer,
        issuer_nonce: 0,
        buyers: buyer_keys.iter().map(AccountId::of).collect(),
        _dir: dir,
    }
}

fn signed_deposits(setup: &mut Setup, count: usize) -> Vec<Vec<u8>> {
    let chain_id = setup.ledger.chain_id();
    (0..count)
        .map(|i| {
            let body = TxBody {
                chain_id,
                signer: AccountId::of(&setup.issuer),
                nonce: setup.issuer_nonce,
                action: Action::Deposit {
                    to: setup.buyers[i % setup.buyers.len()],
                    amount: 1,
                },
            };
            setup.issuer_nonce += 1;
            body.sign(&setup.issuer).expect("sign").bytes
        })
        .collect()
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BLOCK as u64));
    let mut state = setup();
    group.bench_function(BenchmarkId::new("deposits_per_block", BLOCK), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let block = signed_deposits(&mut state, BLOCK);
                let start = Instant::now();
                let outcome = state.ledger.append(block).expect("append");
                elapsed += start.elapsed();
                assert!(outcome.refused.is_empty());
            }
            elapsed
        })
    });
    group.finish();
}

fn bench_inclusion(c: &mut Criterion) {
    let leaves: u64 = 1 << 20;
    let mut log = MerkleLog::new();
    for i in 0..leaves {
        let mut leaf = [0u8; 32];
        leaf[..8].copy_from_slice(&i.to_be_bytes());
        log.push(TxId(Hash32(leaf)));
    }
    let index = leaves / 3;
    let txid = log.leaf(index).expect("leaf");
    let proof = log.prove_inclusion(index).expect("proof");
    let root = log.root();
    let mut group = c.benchmark_group("inclusion");
    group.sample_size(20);
    group.bench_function("verify_2^20", |b| {
        b.iter(|| {
            verify_inclusion(&root, leaves, black_box(&txid), index, black_box(&proof))
                .expect("verifies")
        })
    });
    group.finish();

    let mut setup = setup();
    let deposits = signed_deposits(&mut setup, BLOCK);
    let last = market::tx::txid_of(&deposits[BLOCK - 1]);
    setup.ledger.append(deposits).expect("append");
    let receipt = setup.ledger.receipt(&last).expect("receipt");
    let ledger_key = setup.ledger.machine().ledger_key();
    let mut group = c.benchmark_group("receipt");
    group.sample_size(20);
    group.bench_function("verify", |b| {
        b.iter(|| black_box(&receipt).verify(&ledger_key).expect("verifies"))
    });
    group.finish();
}

fn bench_signatures(c: &mut Criterion) {
    const TXS: usize = 4096;
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let chain_id = Hash32([7; 32]);
    let envelopes: Vec<Vec<u8>> = (0..TXS)
        .map(|_| {
            let key = SigningKey::generate(&mut rng);
            TxBody {
                chain_id,
                signer: AccountId::of(&key),
                nonce: 0,
                action: Action::RegisterAccount {
                    account: AccountId::of(&key),
                    role: Role::Patient,
                },
            }
            .sign(&key)
            .expect("sign")
            .bytes
        })
        .collect();
    let mut group = c.benchmark_group("signatures");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TXS as u64));
    group.bench_function(BenchmarkId::new("one_by_one", TXS), |b| {
        b.iter(|| {
            let checked = market::verify_all(black_box(envelopes.clone()));
            assert!(checked.iter().all(Result::is_ok));
        })
    });
    group.bench_function(BenchmarkId::new("batched", TXS), |b| {
        b.iter(|| {
            let checked = market::verify_block(black_box(envelopes.clone()));
            assert!(checked.iter().all(Result::is_ok));
        })
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_inclusion, bench_signatures);
criterion_main!(benches);
