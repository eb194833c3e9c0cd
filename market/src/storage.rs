//! SQLite storage: the durable ledger.
//!
//! One file, WAL journal, `synchronous=FULL`, one writer. A block, its transactions (the log's
//! leaves) and the state entries it wrote are inserted in ONE SQL transaction, so after a crash
//! a block is either entirely present or absent. On open, the state is loaded from
//! `state_entries`, the Merkle tree is rebuilt from the stored transaction ids, and both are
//! checked against the last signed tree head before anything is appended.
//!
//! Schema (see `docs/ledger.md` for the column meanings):
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value BLOB)            -- 'schema_version', 'genesis'
//! blocks(height INTEGER PRIMARY KEY, head BLOB, block_hash BLOB, time INTEGER, tree_size INTEGER)
//! transactions(leaf_index INTEGER PRIMARY KEY, height INTEGER, position INTEGER,
//!              txid BLOB UNIQUE, tx BLOB)
//! state_entries(key BLOB PRIMARY KEY, value BLOB, height INTEGER)
//! ```

use crate::audit::{AuditFailure, AuditReport, Auditor, SignatureCheck, StoredBlock, StoredTx};
use crate::error::TxError;
use crate::hash::Hash32;
use crate::log::{LogError, MerkleLog, Receipt, SignedTreeHead};
use crate::machine::{BlockError, FinalizedBlock, Genesis, ResumeError, StateMachine};
use crate::sequencer::{InProcessSequencer, Sequencer};
use crate::state::State;
use crate::tx::{TxId, VerifiedTx};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Version of the SQL schema.
/// Version 2: listings carry a per-order ε cap and receipts carry each node's attestation, so
/// transactions and state entries of version 1 no longer decode.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    height     INTEGER PRIMARY KEY,
    head       BLOB NOT NULL,
    block_hash BLOB NOT NULL,
    time       INTEGER NOT NULL,
    tree_size  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    leaf_index INTEGER PRIMARY KEY,
    height     INTEGER NOT NULL REFERENCES blocks(height),
    position   INTEGER NOT NULL,
    txid       BLOB NOT NULL UNIQUE,
    tx         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state_entries (
    key    BLOB PRIMARY KEY,
    value  BLOB NOT NULL,
    height INTEGER NOT NULL
);
";

/// Errors of the durable ledger.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database already holds a ledger.
    #[error("database {0} already holds a ledger")]
    AlreadyInitialised(PathBuf),
    /// The database holds no ledger.
    #[error("database {0} holds no ledger")]
    NotInitialised(PathBuf),
    /// The schema version is not this code's.
    #[error(
        "database schema version {0} is not this cohortex's (version 2): the ledger was written \
         by an older release whose transactions no longer decode; start a new ledger (remove the \
         state directory) rather than reuse it"
    )]
    UnsupportedSchema(i64),
    /// The sequencer's key is not the genesis ledger key.
    #[error("sequencer key does not match the genesis ledger key")]
    SequencerKeyMismatch,
    /// Stored data does not decode.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Stored state or log does not match the last signed head.
    #[error("stored ledger does not match its last signed head: {0}")]
    Resume(#[from] ResumeError),
    /// The block could not be built or committed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A proof could not be produced.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Another writer appended to the database.
    #[error("another writer appended block {0}; reopen the ledger")]
    ConcurrentWriter(u64),
    /// No stored transaction has this id.
    #[error("no transaction {0} in the log")]
    UnknownTransaction(TxId),
}

/// A transaction left out of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Position in the input to [`Ledger::append`].
    pub index: usize,
    /// Why.
    pub error: TxError,
}

/// A transaction as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    /// The signed envelope.
    pub envelope: Vec<u8>,
    /// Height of the block that holds it.
    pub height: u64,
    /// Its position in the log (the Merkle leaf index).
    pub leaf_index: u64,
}

/// What [`Ledger::append`] did.
#[derive(Debug, Clone)]
pub struct AppendOutcome {
    /// The signed head of the new block, if any transaction was accepted.
    pub head: Option<SignedTreeHead>,
    /// Transactions refused; the state is as if they had never been sent.
    pub refused: Vec<Refusal>,
}

/// The durable ledger: state machine + SQLite + sequencer.
pub struct Ledger<S: Sequencer = InProcessSequencer> {
    conn: Connection,
    path: PathBuf,
    machine: StateMachine,
    sequencer: S,
}

fn open_connection(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn corrupt(what: &'static str) -> impl Fn(String) -> LedgerError {
    move |reason| LedgerError::Corrupt { what, reason }
}

fn read_genesis(conn: &Connection, path: &Path) -> Result<Genesis, LedgerError> {
    let version: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    match version {
        None => return Err(LedgerError::NotInitialised(path.to_path_buf())),
        Some(SCHEMA_VERSION) => {}
        Some(other) => return Err(LedgerError::UnsupportedSchema(other)),
    }
    let bytes: Vec<u8> =
        conn.query_row("SELECT value FROM meta WHERE key = 'genesis'", [], |row| {
            row.get(0)
        })?;
    Genesis::from_bytes(&bytes).map_err(|e| corrupt("genesis")(e.to_string()))
}

fn load_state(conn: &Connection) -> Result<Result<State, String>, rusqlite::Error> {
    let mut statement = conn.prepare("SELECT key, value FROM state_entries")?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        State::from_entries(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(|e| e.to_string()),
    )
}

/// Writes a verified block (its head, transactions and the state entries it changed) in one
/// SQLite transaction; refuses if the database is not at the block's parent height.
fn store_block(
    conn: &mut Connection,
    head: &SignedTreeHead,
    block: &FinalizedBlock,
) -> Result<(), LedgerError> {
    let height = head.header.height;
    let sql = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored_height: u64 =
        sql.query_row("SELECT COALESCE(MAX(height), 0) FROM blocks", [], |row| {
            row.get(0)
        })?;
    if stored_height + 1 != height {
        return Err(LedgerError::ConcurrentWriter(stored_height));
    }
    sql.execute(
        "INSERT INTO blocks (height, head, block_hash, time, tree_size) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            height,
            head.to_bytes(),
            head.block_hash().as_bytes().to_vec(),
            head.header.time,
            head.header.tree_size
        ],
    )?;
    {
        let mut insert_tx = sql.prepare_cached(
            "INSERT INTO transactions (leaf_index, height, position, txid, tx) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let first_leaf = head.header.tree_size - u64::from(head.header.tx_count);
        for (position, tx) in block.txs.iter().enumerate() {
            insert_tx.execute(params![
                first_leaf + position as u64,
                height,
                position as u64,
                tx.id().0.as_bytes().to_vec(),
                tx.bytes()
            ])?;
        }
        let mut upsert_state = sql.prepare_cached(
            "INSERT INTO state_entries (key, value, height) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, height = excluded.height",
        )?;
        let mut delete_state = sql.prepare_cached("DELETE FROM state_entries WHERE key = ?1")?;
        for (key, value) in &block.changes {
            // An empty value is a removed entry (`State::take_changes`).
            if value.is_empty() {
                delete_state.execute(params![key])?;
            } else {
                upsert_state.execute(params![key, value, height])?;
            }
        }
    }
    sql.commit()?;
    Ok(())
}

/// Writes the schema, the genesis and the genesis state into a new database at `path`.
fn initialise(
    conn: &mut Connection,
    path: &Path,
    genesis: &Genesis,
    machine: &mut StateMachine,
) -> Result<(), LedgerError> {
    let sql = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    sql.execute_batch(SCHEMA)?;
    let existing: Option<i64> = sql
        .query_row("SELECT COUNT(*) FROM meta", [], |row| row.get(0))
        .optional()?;
    if existing.unwrap_or(0) > 0 {
        return Err(LedgerError::AlreadyInitialised(path.to_path_buf()));
    }
    sql.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
        params![SCHEMA_VERSION],
    )?;
    sql.execute(
        "INSERT INTO meta (key, value) VALUES ('genesis', ?1)",
        params![genesis.to_bytes()],
    )?;
    // An empty value is a removed entry (`State::take_changes`): nothing to store.
    for (key, value) in machine.take_state_changes() {
        if value.is_empty() {
            continue;
        }
        sql.execute(
            "INSERT INTO state_entries (key, value, height) VALUES (?1, ?2, 0)",
            params![key, value],
        )?;
    }
    sql.commit()?;
    Ok(())
}

/// Loads the state and rebuilds the log from storage, and checks both against the last
/// signed head.
fn load_machine(conn: &Connection, path: &Path) -> Result<StateMachine, LedgerError> {
    let genesis = read_genesis(conn, path)?;
    let state = load_state(conn)?.map_err(corrupt("state entries"))?;
    let mut log = MerkleLog::new();
    {
        let mut statement =
            conn.prepare("SELECT leaf_index, txid FROM transactions ORDER BY leaf_index")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let index: u64 = row.get(0)?;
            let txid: Vec<u8> = row.get(1)?;
            let txid: [u8; 32] = txid
                .try_into()
                .map_err(|_| corrupt("transaction id")(format!("leaf {index}")))?;
            if index != log.size() {
                return Err(corrupt("transactions")(format!(
                    "leaf {index} out of sequence"
                )));
            }
            log.push(TxId(Hash32(txid)));
        }
    }
    let head_bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT head FROM blocks ORDER BY height DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let last_head = head_bytes
        .map(|bytes| SignedTreeHead::from_bytes(&bytes))
        .transpose()
        .map_err(|e| corrupt("last tree head")(e.to_string()))?;
    let machine = StateMachine::resume(genesis, state, log, last_head)?;
    machine.check_resumed()?;
    Ok(machine)
}

/// A verifying replica of a ledger that someone else signs, kept in SQLite in the ledger's own
/// format: every block is checked by an [`Auditor`] (head signature under the pinned key, hash
/// link, transaction signatures, state rules, Merkle root and state hash) and stored, with the
/// state entries it changed, before it is applied. Reopened, the replica is checked against
/// its last signed head as a ledger is ([`StateMachine::check_resumed`]), so a node that
/// restarts goes on from the last block it verified instead of replaying from genesis.
pub struct Replica {
    conn: Connection,
    path: PathBuf,
    auditor: Auditor,
}

impl Replica {
    /// A new replica in `path` (which must not hold one) of the chain whose genesis
    /// configuration is `genesis_bytes`.
    pub fn create(path: impl AsRef<Path>, genesis_bytes: &[u8]) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let genesis =
            Genesis::from_bytes(genesis_bytes).map_err(|e| corrupt("genesis")(e.to_string()))?;
        let mut machine = StateMachine::from_genesis(genesis.clone())?;
        let mut conn = open_replica_connection(&path)?;
        initialise(&mut conn, &path, &genesis, &mut machine)?;
        Ok(Replica {
            conn,
            path,
            auditor: Auditor::from_machine(machine),
        })
    }

    /// Reopens the replica in `path`, checked against its last signed head. State, log and
    /// head are read in one transaction, so a writer finishing a block meanwhile is seen
    /// whole or not at all.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = open_replica_connection(&path)?;
        let machine = {
            let snapshot = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let machine = load_machine(&snapshot, &path)?;
            snapshot.commit()?;
            machine
        };
        Ok(Replica {
            conn,
            path,
            auditor: Auditor::from_machine(machine),
        })
    }

    /// Where the replica is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What has been verified so far.
    pub fn machine(&self) -> &StateMachine {
        self.auditor.machine()
    }

    /// Checks the next block and, if it verifies, stores and applies it. A block that fails,
    /// or that cannot be stored, leaves the replica at the last verified block.
    pub fn check_block(&mut self, block: StoredBlock) -> Result<(), Box<AuditFailure>> {
        let conn = &mut self.conn;
        self.auditor
            .check_block_and_store(block, |head, finalized| {
                store_block(conn, head, finalized).map_err(|error| error.to_string())
            })
    }
}

/// A replica's connection: as a ledger's, but not synced at every commit. A replica lost to a
/// crash is rebuilt from the ledger; a torn one does not match its last head and is refused on
/// open.
fn open_replica_connection(path: &Path) -> Result<Connection, LedgerError> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl<S: Sequencer> Ledger<S> {
    /// Creates a new ledger in `path` (which must not hold one yet).
    pub fn create(
        path: impl AsRef<Path>,
        genesis: Genesis,
        sequencer: S,
    ) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        if sequencer.verifying_key().to_bytes() != genesis.ledger_key {
            return Err(LedgerError::SequencerKeyMismatch);
        }
        let mut machine = StateMachine::from_genesis(genesis.clone())?;
        let mut conn = open_connection(&path)?;
        initialise(&mut conn, &path, &genesis, &mut machine)?;
        tracing::info!(path = %path.display(), chain_id = %machine.chain_id(), "ledger created");
        Ok(Ledger {
            conn,
            path,
            machine,
            sequencer,
        })
    }

    /// Opens an existing ledger: loads the state, rebuilds the log and checks both against the
    /// last signed head.
    pub fn open(path: impl AsRef<Path>, sequencer: S) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path)?;
        let machine = load_machine(&conn, &path)?;
        if sequencer.verifying_key() != machine.ledger_key() {
            return Err(LedgerError::SequencerKeyMismatch);
        }
        tracing::info!(
            path = %path.display(),
            height = machine.height(),
            tree_size = machine.log().size(),
            "ledger opened"
        );
        Ok(Ledger {
            conn,
            path,
            machine,
            sequencer,
        })
    }

    /// The state machine (committed state, log, last head).
    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// The committed state.
    pub fn state(&self) -> &State {
        self.machine.state()
    }

    /// The chain id.
    pub fn chain_id(&self) -> Hash32 {
        self.machine.chain_id()
    }

    /// The last signed tree head.
    pub fn head(&self) -> Option<&SignedTreeHead> {
        self.machine.last_head()
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequencer.
    pub fn sequencer_mut(&mut self) -> &mut S {
        &mut self.sequencer
    }

    /// Checks, orders and applies `txs`, and commits the accepted ones as one block (durably,
    /// before returning). Refused transactions change nothing.
    pub fn append(&mut self, txs: Vec<Vec<u8>>) -> Result<AppendOutcome, LedgerError> {
        let mut refused = Vec::new();
        let mut input_index: HashMap<TxId, usize> = HashMap::new();
        let mut checked = Vec::with_capacity(txs.len());
        for (index, result) in self.machine.check_txs(txs).into_iter().enumerate() {
            match result {
                Ok(tx) => {
                    input_index.entry(tx.id()).or_insert(index);
                    checked.push(tx);
                }
                Err(error) => refused.push(Refusal { index, error }),
            }
        }
        let ordered = self.sequencer.order(checked);
        let time = self.sequencer.block_time(self.machine.last_time());
        // Indices refer to the sequencer's order; map them back to the input.
        let ordered_ids: Vec<TxId> = ordered.iter().map(VerifiedTx::id).collect();
        let mut preparation = self.machine.prepare_block(ordered, time)?;
        for (position, error) in std::mem::take(&mut preparation.refused) {
            let index = ordered_ids
                .get(position)
                .and_then(|id| input_index.get(id))
                .copied()
                .unwrap_or(position);
            refused.push(Refusal { index, error });
        }
        refused.sort_by_key(|r| r.index);
        // The block as preparing it applied it: applying it again would give the same state.
        let Some(finalized) = self.machine.finalize_prepared(preparation)? else {
            return Ok(AppendOutcome {
                head: None,
                refused,
            });
        };
        let signature = self.sequencer.sign_head(&finalized.header);
        let head = SignedTreeHead {
            header: finalized.header.clone(),
            signature,
        };
        let persisted = head
            .verify(&self.machine.ledger_key())
            .map_err(LedgerError::from)
            .and_then(|()| self.persist(&head, &finalized));
        if let Err(error) = persisted {
            // The in-memory log already holds the block's leaves; the database is the truth.
            tracing::warn!(%error, "block not persisted; reloading the ledger from storage");
            self.machine = load_machine(&self.conn, &self.path)?;
            return Err(error);
        }
        let head = self.machine.commit(finalized, signature)?;
        tracing::info!(
            height = head.header.height,
            txs = head.header.tx_count,
            refused = refused.len(),
            "block appended"
        );
        Ok(AppendOutcome {
            head: Some(head),
            refused,
        })
    }

    fn persist(
        &mut self,
        head: &SignedTreeHead,
        block: &FinalizedBlock,
    ) -> Result<(), LedgerError> {
        store_block(&mut self.conn, head, block)
    }

    /// A receipt for transaction `txid` against the current signed head.
    pub fn receipt(&self, txid: &TxId) -> Result<Receipt, LedgerError> {
        let found: Option<(u64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT leaf_index, tx FROM transactions WHERE txid = ?1",
                params![txid.0.as_bytes().to_vec()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((leaf_index, tx)) = found else {
            return Err(LedgerError::UnknownTransaction(*txid));
        };
        let head = self
            .machine
            .last_head()
            .cloned()
            .ok_or(LedgerError::UnknownTransaction(*txid))?;
        Ok(Receipt {
            tx,
            leaf_index,
            inclusion_proof: self.machine.log().prove_inclusion(leaf_index)?,
            head,
        })
    }

    /// Consistency proof from the tree of `old_size` leaves to the current head's tree.
    pub fn consistency_proof(&self, old_size: u64) -> Result<Vec<u8>, LedgerError> {
        Ok(self.machine.log().prove_consistency(old_size)?)
    }

    /// The signed head of block `height` (`None` when there is no such block, including every
    /// height SQLite's signed 64-bit integers cannot hold).
    pub fn head_at(&self, height: u64) -> Result<Option<SignedTreeHead>, LedgerError> {
        let Ok(height) = i64::try_from(height) else {
            return Ok(None);
        };
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT head FROM blocks WHERE height = ?1",
                params![height],
                |row| row.get(0),
            )
            .optional()?;
        bytes
            .map(|b| SignedTreeHead::from_bytes(&b))
            .transpose()
            .map_err(|e| corrupt("tree head")(e.to_string()))
    }

    /// The envelopes of block `height` from position `start` on, in block order, stopping
    /// once about `max_bytes` are gathered (always at least one when any is left); `None` when
    /// there is no such block.
    pub fn block_envelopes(
        &self,
        height: u64,
        start: u32,
        max_bytes: usize,
    ) -> Result<Option<BlockPage>, LedgerError> {
        let Some(head) = self.head_at(height)? else {
            return Ok(None);
        };
        let tx_count = head.header.tx_count;
        let mut statement = self.conn.prepare_cached(
            "SELECT tx FROM transactions WHERE height = ?1 AND position >= ?2 ORDER BY position",
        )?;
        let mut rows = statement.query(params![height, start])?;
        let mut envelopes = Vec::new();
        let mut gathered = 0usize;
        while let Some(row) = rows.next()? {
            let envelope: Vec<u8> = row.get(0)?;
            if !envelopes.is_empty() && gathered + envelope.len() > max_bytes {
                break;
            }
            gathered += envelope.len();
            envelopes.push(envelope);
        }
        let next = start.saturating_add(u32::try_from(envelopes.len()).unwrap_or(u32::MAX));
        Ok(Some(BlockPage {
            envelopes,
            next,
            tx_count,
        }))
    }

    /// The stored transaction with id `txid`, if the log holds it.
    pub fn transaction(&self, txid: &TxId) -> Result<Option<TxRecord>, LedgerError> {
        Ok(self
            .conn
            .query_row(
                "SELECT tx, height, leaf_index FROM transactions WHERE txid = ?1",
                params![txid.0.as_bytes().to_vec()],
                |row| {
                    Ok(TxRecord {
                        envelope: row.get(0)?,
                        height: row.get(1)?,
                        leaf_index: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// The ids of the transactions of block `height`, in block order (empty when there is no
    /// such block).
    pub fn block_tx_ids(&self, height: u64) -> Result<Vec<TxId>, LedgerError> {
        if i64::try_from(height).is_err() {
            return Ok(Vec::new());
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT txid FROM transactions WHERE height = ?1 ORDER BY position")?;
        let ids = statement
            .query_map(params![height], |row| row.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.into_iter()
            .map(|id| {
                <[u8; 32]>::try_from(id.as_slice())
                    .map(|bytes| TxId(Hash32(bytes)))
                    .map_err(|_| corrupt("transaction id")(format!("block {height}")))
            })
            .collect()
    }
}

/// A page of one block's envelopes (see [`Ledger::block_envelopes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPage {
    /// Envelopes from the requested position on, in block order.
    pub envelopes: Vec<Vec<u8>>,
    /// The position to continue from (the block's transaction count when done).
    pub next: u32,
    /// The block's transaction count.
    pub tx_count: u32,
}

/// Why an audit of a database did not complete.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The database could not be read.
    #[error("cannot read the ledger database: {0}")]
    Storage(#[from] LedgerError),
    /// Verification failed at the named block and transaction.
    #[error("verification failed at {0}")]
    Failed(Box<AuditFailure>),
}

impl From<rusqlite::Error> for AuditError {
    fn from(error: rusqlite::Error) -> Self {
        AuditError::Storage(LedgerError::Sqlite(error))
    }
}

/// Re-verifies a whole database from genesis (see [`crate::audit`]), opening it read-only.
pub fn audit_database(path: impl AsRef<Path>) -> Result<AuditReport, AuditError> {
    let path = path.as_ref();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A consistent snapshot of the whole file for the duration of the audit.
    conn.execute_batch("BEGIN")?;
    let genesis_bytes: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'genesis'", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(_, _) => LedgerError::NotInitialised(path.to_path_buf()),
            other => LedgerError::Sqlite(other),
        })?;
    let genesis_bytes =
        genesis_bytes.ok_or_else(|| LedgerError::NotInitialised(path.to_path_buf()))?;
    // The reference audit checks each signature by the admission rule itself.
    let mut auditor = Auditor::new(&genesis_bytes)
        .map_err(AuditError::Failed)?
        .checking_signatures(SignatureCheck::OneByOne);

    let mut blocks = conn.prepare("SELECT height, head, block_hash FROM blocks ORDER BY height")?;
    let mut txs = conn.prepare(
        "SELECT position, leaf_index, txid, tx FROM transactions WHERE height = ?1 ORDER BY position",
    )?;
    let mut rows = blocks.query([])?;
    while let Some(row) = rows.next()? {
        let height: u64 = row.get(0)?;
        let block_txs = txs
            .query_map(params![height], |tx| {
                Ok(StoredTx {
                    position: tx.get(0)?,
                    leaf_index: tx.get(1)?,
                    txid: tx.get(2)?,
                    bytes: tx.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        auditor
            .check_block(StoredBlock {
                height,
                head: row.get(1)?,
                block_hash: row.get(2)?,
                txs: block_txs,
            })
            .map_err(AuditError::Failed)?;
    }
    let stored_transactions: u64 =
        conn.query_row("SELECT COUNT(*) FROM transactions", [], |row| row.get(0))?;
    let stored_state = load_state(&conn)?;
    auditor
        .finish(stored_transactions, stored_state)
        .map_err(AuditError::Failed)
}
