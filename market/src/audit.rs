//! Re-verification of a whole ledger from genesis, as an auditor does.
//!
//! [`Auditor`] replays stored blocks through a fresh [`StateMachine`] and, for each block, checks
//! in this order: the height follows the previous one; the signed tree head decodes and its
//! signature verifies under the genesis ledger key; the chain id and the hash link to the
//! previous block match; the stored block hash matches; the transactions are numbered
//! contiguously and their count matches the header; every transaction parses, its signature
//! verifies, and its stored id and leaf index match; every transaction applies under the state
//! rules; and the recomputed tree size, RFC 6962 root and state hash equal the header's. At the
//! end the state stored beside the blocks must equal the replayed state. The first failure is
//! reported with its block height and, where one is to blame, its transaction position.

use crate::error::TxError;
use crate::hash::Hash32;
use crate::log::SignedTreeHead;
use crate::machine::{BlockError, FinalizedBlock, Genesis, ProposedBlock, StateMachine};
use crate::state::State;
use crate::tx::{verify_all, verify_block};
use std::fmt;
use thiserror::Error;

/// A block as stored.
#[derive(Clone, Debug)]
pub struct StoredBlock {
    /// Height column.
    pub height: u64,
    /// Signed tree head bytes (header || signature).
    pub head: Vec<u8>,
    /// Stored block hash.
    pub block_hash: Vec<u8>,
    /// Its transactions, by position.
    pub txs: Vec<StoredTx>,
}

/// A transaction as stored.
#[derive(Clone, Debug)]
pub struct StoredTx {
    /// Position in the block.
    pub position: u32,
    /// Index of its leaf in the log.
    pub leaf_index: u64,
    /// Stored transaction id.
    pub txid: Vec<u8>,
    /// Envelope bytes.
    pub bytes: Vec<u8>,
}

/// What is wrong.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuditProblem {
    /// The genesis configuration is unreadable or invalid.
    #[error("genesis: {0}")]
    Genesis(String),
    /// A block is missing or out of sequence.
    #[error("expected block {expected}, found block {found}")]
    MissingBlock {
        /// Height expected.
        expected: u64,
        /// Height found.
        found: u64,
    },
    /// The signed tree head does not decode.
    #[error("signed tree head unreadable: {0}")]
    HeadUnreadable(String),
    /// The tree-head signature does not verify under the ledger key.
    #[error("tree head signature does not verify under the ledger key")]
    BadHeadSignature,
    /// The header names another chain or height.
    #[error("header is for chain {chain_id} height {height}")]
    WrongHeader {
        /// Chain id in the header.
        chain_id: Hash32,
        /// Height in the header.
        height: u64,
    },
    /// The header does not link to the previous block.
    #[error("previous-block hash {got} does not match {expected}")]
    BrokenHashLink {
        /// The previous block's hash (or the chain id for block 1).
        expected: Hash32,
        /// The link in the header.
        got: Hash32,
    },
    /// The stored block hash does not match the head.
    #[error("stored block hash does not match the signed head")]
    BlockHashMismatch,
    /// The transactions do not match the header's count or are not numbered 0..n.
    #[error("block holds {stored} transactions, header says {header}")]
    TxCountMismatch {
        /// Stored.
        stored: usize,
        /// In the header.
        header: u32,
    },
    /// A transaction's position, leaf index or id column is wrong.
    #[error("stored {0} does not match the transaction")]
    TxColumnMismatch(&'static str),
    /// A transaction is malformed or its signature does not verify.
    #[error("{0}")]
    BadTransaction(TxError),
    /// A transaction breaks a state rule on replay.
    #[error("refused on replay: {0}")]
    Refused(TxError),
    /// The block cannot be applied.
    #[error("{0}")]
    Block(BlockError),
    /// The block verified but could not be stored (a replica's database failed).
    #[error("the verified block could not be stored: {0}")]
    NotStored(String),
    /// The recomputed log does not match the header.
    #[error("merkle root mismatch: header says size {header_size} root {header_root}, replay gives size {size} root {root}")]
    MerkleRootMismatch {
        /// Size in the header.
        header_size: u64,
        /// Root in the header.
        header_root: Hash32,
        /// Size recomputed.
        size: u64,
        /// Root recomputed.
        root: Hash32,
    },
    /// The replayed state does not hash to the header's state hash.
    #[error("state hash mismatch: header says {header}, replay gives {replayed}")]
    StateHashMismatch {
        /// In the header.
        header: Hash32,
        /// Replayed.
        replayed: Hash32,
    },
    /// The header's time is not the block time used (cannot happen for a replayed block).
    #[error("header does not match the replayed header")]
    HeaderMismatch,
    /// Stored transactions exist outside every block.
    #[error("{0} stored transactions belong to no block")]
    OrphanTransactions(u64),
    /// The state stored beside the blocks is not the replayed state.
    #[error("stored state does not match the replayed state: {0}")]
    StoredStateMismatch(String),
}

/// The first thing found wrong, and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct AuditFailure {
    /// Block height, when a block is to blame.
    pub block: Option<u64>,
    /// Transaction position in that block, when a transaction is to blame.
    pub transaction: Option<u32>,
    /// What.
    pub problem: AuditProblem,
}

impl fmt::Display for AuditFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.block, self.transaction) {
            (Some(block), Some(tx)) => {
                write!(f, "block {block}, transaction {tx}: {}", self.problem)
            }
            (Some(block), None) => write!(f, "block {block}: {}", self.problem),
            _ => write!(f, "{}", self.problem),
        }
    }
}

/// What a successful audit covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Chain id.
    pub chain_id: Hash32,
    /// Blocks verified.
    pub blocks: u64,
    /// Transactions verified (= log size).
    pub transactions: u64,
    /// Final RFC 6962 root.
    pub tree_root: Hash32,
    /// Final state hash.
    pub state_hash: Hash32,
    /// Hash of the last block (the chain id when there are no blocks).
    pub last_block_hash: Hash32,
}

/// Replays blocks one at a time.
pub struct Auditor {
    machine: StateMachine,
    signatures: SignatureCheck,
}

/// How an [`Auditor`] checks the signatures of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// In batches ([`crate::tx::verify_block`]): a replica following the ledger.
    Batched,
    /// Each alone with `verify_strict` ([`verify_all`], the admission rule itself): `ledger
    /// verify`.
    OneByOne,
}

impl Auditor {
    /// Starts from the stored genesis bytes.
    pub fn new(genesis_bytes: &[u8]) -> Result<Self, Box<AuditFailure>> {
        let fail = |e: BlockError| {
            Box::new(AuditFailure {
                block: None,
                transaction: None,
                problem: AuditProblem::Genesis(e.to_string()),
            })
        };
        let genesis = Genesis::from_bytes(genesis_bytes).map_err(fail)?;
        let machine = StateMachine::from_genesis(genesis).map_err(fail)?;
        Ok(Auditor::from_machine(machine))
    }

    /// Goes on from `machine`, a state already verified up to its last head (a replica
    /// reopened from its own storage, [`StateMachine::check_resumed`]).
    pub fn from_machine(machine: StateMachine) -> Self {
        Auditor {
            machine,
            signatures: SignatureCheck::Batched,
        }
    }

    /// Checks signatures as `check` says (batched unless told otherwise).
    pub fn checking_signatures(mut self, check: SignatureCheck) -> Self {
        self.signatures = check;
        self
    }

    /// What has been replayed and verified so far: the state, the log and the last head.
    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// Checks the next block (see the module documentation for the checks and their order)
    /// and, if it verifies, applies it. A block that fails leaves the auditor at the last
    /// verified block, ready for the next one.
    pub fn check_block(&mut self, block: StoredBlock) -> Result<(), Box<AuditFailure>> {
        self.check_block_and_store(block, |_, _| Ok(()))
    }

    /// [`Auditor::check_block`], and `store` the block once it verifies, before it is applied:
    /// if `store` fails, the auditor stays at the last verified block.
    pub fn check_block_and_store(
        &mut self,
        block: StoredBlock,
        store: impl FnOnce(&SignedTreeHead, &FinalizedBlock) -> Result<(), String>,
    ) -> Result<(), Box<AuditFailure>> {
        let height = block.height;
        let at_block = |problem| {
            Box::new(AuditFailure {
                block: Some(height),
                transaction: None,
                problem,
            })
        };
        let at_tx = |position: usize, problem| {
            Box::new(AuditFailure {
                block: Some(height),
                transaction: Some(position as u32),
                problem,
            })
        };
        let expected = self.machine.height() + 1;
        if height != expected {
            return Err(at_block(AuditProblem::MissingBlock {
                expected,
                found: height,
            }));
        }
        let head = SignedTreeHead::from_bytes(&block.head)
            .map_err(|e| at_block(AuditProblem::HeadUnreadable(e.to_string())))?;
        head.verify(&self.machine.ledger_key())
            .map_err(|_| at_block(AuditProblem::BadHeadSignature))?;
        if head.header.chain_id != self.machine.chain_id() || head.header.height != height {
            return Err(at_block(AuditProblem::WrongHeader {
                chain_id: head.header.chain_id,
                height: head.header.height,
            }));
        }
        let expected_link = self.machine.prev_block_hash();
        if head.header.prev_block_hash != expected_link {
            return Err(at_block(AuditProblem::BrokenHashLink {
                expected: expected_link,
                got: head.header.prev_block_hash,
            }));
        }
        if block.block_hash != head.block_hash().as_bytes() {
            return Err(at_block(AuditProblem::BlockHashMismatch));
        }
        if block.txs.len() != head.header.tx_count as usize {
            return Err(at_block(AuditProblem::TxCountMismatch {
                stored: block.txs.len(),
                header: head.header.tx_count,
            }));
        }
        let first_leaf = self.machine.log().size();
        for (position, stored) in block.txs.iter().enumerate() {
            if stored.position as usize != position {
                return Err(at_tx(position, AuditProblem::TxColumnMismatch("position")));
            }
            if stored.leaf_index != first_leaf + position as u64 {
                return Err(at_tx(
                    position,
                    AuditProblem::TxColumnMismatch("leaf index"),
                ));
            }
        }
        let (stored_ids, envelopes): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            block.txs.into_iter().map(|tx| (tx.txid, tx.bytes)).unzip();
        // The signatures, in parallel.
        let checked = match self.signatures {
            SignatureCheck::Batched => verify_block(envelopes),
            SignatureCheck::OneByOne => verify_all(envelopes),
        };
        let mut verified = Vec::with_capacity(checked.len());
        for (position, (tx, stored_id)) in checked.into_iter().zip(stored_ids).enumerate() {
            let tx = tx.map_err(|e| at_tx(position, AuditProblem::BadTransaction(e)))?;
            if stored_id != tx.id().0.as_bytes() {
                return Err(at_tx(
                    position,
                    AuditProblem::TxColumnMismatch("transaction id"),
                ));
            }
            verified.push(tx);
        }
        let proposal = ProposedBlock {
            height,
            time: head.header.time,
            txs: verified,
        };
        let finalized = self.machine.finalize_block(proposal).map_err(|e| match e {
            BlockError::TxRefused { index, error } => {
                at_tx(index as usize, AuditProblem::Refused(error))
            }
            other => at_block(AuditProblem::Block(other)),
        })?;
        let replayed = &finalized.header;
        let mismatch = if replayed.tree_size != head.header.tree_size
            || replayed.tree_root != head.header.tree_root
        {
            Some(AuditProblem::MerkleRootMismatch {
                header_size: head.header.tree_size,
                header_root: head.header.tree_root,
                size: replayed.tree_size,
                root: replayed.tree_root,
            })
        } else if replayed.state_hash != head.header.state_hash {
            Some(AuditProblem::StateHashMismatch {
                header: head.header.state_hash,
                replayed: replayed.state_hash,
            })
        } else if *replayed != head.header {
            Some(AuditProblem::HeaderMismatch)
        } else {
            None
        };
        let problem = match mismatch {
            Some(problem) => Some(problem),
            None => store(&head, &finalized).err().map(AuditProblem::NotStored),
        };
        if let Some(problem) = problem {
            // Back to the last verified block: a follower goes on from there.
            self.machine.abandon(finalized);
            return Err(at_block(problem));
        }
        self.machine
            .commit(finalized, head.signature)
            .map_err(|e| at_block(AuditProblem::Block(e)))?;
        Ok(())
    }

    /// Finishes: the stored state must equal the replayed one, and no transaction may lie
    /// outside the blocks.
    pub fn finish(
        self,
        stored_transactions: u64,
        stored_state: Result<State, String>,
    ) -> Result<AuditReport, Box<AuditFailure>> {
        let last = self.machine.height();
        let tree_size = self.machine.log().size();
        if stored_transactions != tree_size {
            return Err(Box::new(AuditFailure {
                block: (last > 0).then_some(last),
                transaction: None,
                problem: AuditProblem::OrphanTransactions(
                    stored_transactions.saturating_sub(tree_size),
                ),
            }));
        }
        let replayed = self.machine.state().hash();
        let stored_failure = |reason: String| {
            Box::new(AuditFailure {
                block: None,
                transaction: None,
                problem: AuditProblem::StoredStateMismatch(reason),
            })
        };
        let stored = stored_state.map_err(stored_failure)?;
        if stored.hash() != replayed {
            return Err(stored_failure(format!(
                "stored state hashes to {}, replay to {replayed}",
                stored.hash()
            )));
        }
        Ok(AuditReport {
            chain_id: self.machine.chain_id(),
            blocks: last,
            transactions: tree_size,
            tree_root: self.machine.log().root(),
            state_hash: replayed,
            last_block_hash: self.machine.prev_block_hash(),
        })
    }
}
