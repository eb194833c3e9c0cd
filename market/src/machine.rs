//! The ledger as an ABCI++-shaped state machine: check → prepare → finalize → commit.
//!
//! * [`StateMachine::check_txs`] (CheckTx): parse and verify signatures; stateless, so it can run
//!   before ordering.
//! * [`StateMachine::prepare_block`] (PrepareProposal): the proposer applies the checked
//!   transactions, in the sequencer's order, to a scratch copy of the state and keeps those that
//!   apply; the refused ones come back with their [`TxError`].
//! * [`StateMachine::finalize_block`] (ProcessProposal + FinalizeBlock): applies a proposed
//!   block; every transaction must apply, or the whole block is refused. It yields the unsigned
//!   header (tree root and state hash after the block).
//! * [`StateMachine::commit`] (Commit): takes the sequencer's signature over that header and
//!   makes the new state current.
//!
//! The types carry the stage: a [`ProposedBlock`] can only be finalized, a [`FinalizedBlock`]
//! can only be committed, and while one is outstanding the machine refuses to start another.
//! Nothing here does I/O; storage (`storage.rs`) persists a committed block before it calls
//! [`StateMachine::commit`].

use crate::error::TxError;
use crate::hash::{tagged_hash, Hash32, LABEL_GENESIS};
use crate::log::{BlockHeader, LogError, MerkleLog, SignedTreeHead};
use crate::state::{BlockContext, State};
use crate::tx::{verify_all, AccountId, Role, VerifiedTx};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most transactions in one block.
pub const MAX_TXS_PER_BLOCK: usize = 100_000;

/// The genesis configuration; its hash is the chain id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// Human-readable name of the ledger.
    pub name: String,
    /// Key that signs tree heads (the sequencer's).
    pub ledger_key: [u8; 32],
    /// Accounts that exist from the start (at least one issuer, to admit everyone else).
    pub accounts: Vec<(AccountId, Role)>,
}

impl Genesis {
    /// Encoded form (postcard), as stored and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        match postcard::to_stdvec(self) {
            Ok(bytes) => bytes,
            Err(error) => unreachable!("genesis serialisation failed: {error}"),
        }
    }

    /// Decodes a genesis configuration.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlockError> {
        postcard::from_bytes(bytes).map_err(|e| BlockError::BadGenesis(e.to_string()))
    }

    /// `tagged_hash("cohortex/ledger/genesis/v1", [postcard(genesis)])`.
    pub fn chain_id(&self) -> Hash32 {
        tagged_hash(LABEL_GENESIS, &[&self.to_bytes()])
    }

    /// The ledger's verifying key.
    pub fn ledger_verifying_key(&self) -> Result<VerifyingKey, BlockError> {
        VerifyingKey::from_bytes(&self.ledger_key)
            .map_err(|_| BlockError::BadGenesis("ledger key is not an ed25519 key".into()))
    }
}

/// Why a block cannot be built, applied or committed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// The genesis configuration does not decode or is invalid.
    #[error("bad genesis: {0}")]
    BadGenesis(String),
    /// A transaction in the block is refused.
    #[error("transaction {index}: {error}")]
    TxRefused {
        /// Position in the block.
        index: u32,
        /// Why.
        error: TxError,
    },
    /// A block must carry at least one transaction.
    #[error("empty block")]
    Empty,
    /// A block carries more transactions than allowed.
    #[error("block has {0} transactions, more than allowed")]
    TooManyTransactions(usize),
    /// The block time is earlier than the previous block's.
    #[error("block time {time} is before the previous block time {previous}")]
    TimeWentBackwards {
        /// This block's time.
        time: u64,
        /// The previous block's time.
        previous: u64,
    },
    /// The block was built for another height.
    #[error("block is for height {got}, the next height is {expected}")]
    WrongHeight {
        /// The next height.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// A finalized block is waiting for its commit.
    #[error("a finalized block is waiting to be committed")]
    CommitPending,
    /// The head to commit is not the one finalized.
    #[error("signed head does not match the finalized header")]
    HeadMismatch,
    /// The head's signature does not verify.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Transactions chosen for the next block, applied to a scratch state by the proposer.
#[derive(Debug)]
pub struct ProposedBlock {
    /// Height of the block.
    pub height: u64,
    /// Block time.
    pub time: u64,
    /// Transactions, in block order.
    pub txs: Vec<VerifiedTx>,
}

/// The result of [`StateMachine::prepare_block`].
#[derive(Debug)]
pub struct Preparation {
    /// The block to finalize (`None` when nothing applied). Private: the state in `applied`
    /// is this block's, so the block cannot be changed before it is finalized with it.
    block: Option<ProposedBlock>,
    /// Transactions left out, with their position in the input and the reason.
    pub refused: Vec<(usize, TxError)>,
    /// The state after the block, as preparing it left it: the proposer finalizes its own
    /// block with it ([`StateMachine::finalize_prepared`]) instead of applying it again.
    applied: State,
}

/// A block applied by [`StateMachine::finalize_block`], waiting for its signature and commit.
#[derive(Debug)]
pub struct FinalizedBlock {
    /// The header to sign.
    pub header: BlockHeader,
    /// The transactions.
    pub txs: Vec<VerifiedTx>,
    /// State entries the block wrote (encoded key, encoded value), for storage.
    pub changes: Vec<(Vec<u8>, Vec<u8>)>,
    next_state: State,
}

/// The ledger state machine: state, log, and the last signed head.
pub struct StateMachine {
    genesis: Genesis,
    chain_id: Hash32,
    ledger_key: VerifyingKey,
    state: State,
    log: MerkleLog,
    last_head: Option<SignedTreeHead>,
    commit_pending: bool,
}

impl Preparation {
    /// The block to finalize (`None` when no transaction applied).
    pub fn block(&self) -> Option<&ProposedBlock> {
        self.block.as_ref()
    }
}

impl StateMachine {
    /// The machine at genesis.
    pub fn from_genesis(genesis: Genesis) -> Result<Self, BlockError> {
        let ledger_key = genesis.ledger_verifying_key()?;
        if !genesis
            .accounts
            .iter()
            .any(|(_, role)| *role == Role::Issuer)
        {
            return Err(BlockError::BadGenesis("no issuer account".into()));
        }
        for (account, _) in &genesis.accounts {
            account
                .verifying_key()
                .map_err(|e| BlockError::BadGenesis(e.to_string()))?;
        }
        let state = State::with_accounts(genesis.accounts.iter().copied());
        Ok(StateMachine {
            chain_id: genesis.chain_id(),
            genesis,
            ledger_key,
            state,
            log: MerkleLog::new(),
            last_head: None,
            commit_pending: false,
        })
    }

    /// A machine resumed from stored parts. The caller (storage) has checked them against the
    /// last signed head with [`StateMachine::check_resumed`].
    pub fn resume(
        genesis: Genesis,
        state: State,
        log: MerkleLog,
        last_head: Option<SignedTreeHead>,
    ) -> Result<Self, BlockError> {
        let mut machine = Self::from_genesis(genesis)?;
        machine.state = state;
        machine.log = log;
        machine.last_head = last_head;
        Ok(machine)
    }

    /// Checks that the state and log match the last signed head: signature, chain, tree size
    /// and root, and state hash.
    pub fn check_resumed(&self) -> Result<(), ResumeError> {
        let Some(head) = &self.last_head else {
            let genesis_state = State::with_accounts(self.genesis.accounts.iter().copied());
            if self.log.size() != 0 || self.state.hash() != genesis_state.hash() {
                return Err(ResumeError::DataWithoutHead);
            }
            return Ok(());
        };
        head.verify(&self.ledger_key)
            .map_err(|_| ResumeError::BadHeadSignature)?;
        if head.header.chain_id != self.chain_id {
            return Err(ResumeError::WrongChain);
        }
        if head.header.tree_size != self.log.size() || head.header.tree_root != self.log.root() {
            return Err(ResumeError::LogMismatch {
                head_size: head.header.tree_size,
                log_size: self.log.size(),
            });
        }
        if head.header.state_hash != self.state.hash() {
            return Err(ResumeError::StateMismatch);
        }
        Ok(())
    }

    /// The chain id.
    pub fn chain_id(&self) -> Hash32 {
        self.chain_id
    }

    /// The genesis configuration.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The key that verifies tree heads.
    pub fn ledger_key(&self) -> VerifyingKey {
        self.ledger_key
    }

    /// The committed state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Drains state entries written outside a block (the genesis accounts), for storage.
    pub fn take_state_changes(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.state.take_changes()
    }

    /// The log.
    pub fn log(&self) -> &MerkleLog {
        &self.log
    }

    /// The last signed head (`None` before the first block).
    pub fn last_head(&self) -> Option<&SignedTreeHead> {
        self.last_head.as_ref()
    }

    /// Height of the last committed block (0 before the first).
    pub fn height(&self) -> u64 {
        self.last_head.as_ref().map_or(0, |h| h.header.height)
    }

    /// Hash the next block links to.
    pub fn prev_block_hash(&self) -> Hash32 {
        self.last_head
            .as_ref()
            .map_or(self.chain_id, SignedTreeHead::block_hash)
    }

    /// Time of the last block (0 before the first).
    pub fn last_time(&self) -> u64 {
        self.last_head.as_ref().map_or(0, |h| h.header.time)
    }

    /// CheckTx: parses and verifies signatures, and refuses transactions for another chain.
    pub fn check_txs(&self, txs: Vec<Vec<u8>>) -> Vec<Result<VerifiedTx, TxError>> {
        verify_all(txs)
            .into_iter()
            .map(|checked| {
                let tx = checked?;
                if tx.body().chain_id != self.chain_id {
                    return Err(TxError::WrongChain {
                        expected: self.chain_id,
                        got: tx.body().chain_id,
                    });
                }
                Ok(tx)
            })
            .collect()
    }

    /// PrepareProposal: keeps the transactions that apply in order at block time `time`.
    pub fn prepare_block(
        &self,
        txs: Vec<VerifiedTx>,
        time: u64,
    ) -> Result<Preparation, BlockError> {
        if self.commit_pending {
            return Err(BlockError::CommitPending);
        }
        let time = time.max(self.last_time());
        let ctx = BlockContext {
            height: self.height() + 1,
            time,
        };
        let mut scratch = self.state.clone();
        let mut accepted = Vec::with_capacity(txs.len());
        let mut refused = Vec::new();
        for (index, tx) in txs.into_iter().enumerate() {
            if accepted.len() >= MAX_TXS_PER_BLOCK {
                refused.push((index, TxError::Malformed("block is full".into())));
                continue;
            }
            match scratch.apply(&tx, &self.chain_id, &ctx) {
                Ok(()) => accepted.push(tx),
                Err(error) => {
                    tracing::debug!(index, %error, "transaction refused");
                    refused.push((index, error));
                }
            }
        }
        let block = (!accepted.is_empty()).then_some(ProposedBlock {
            height: ctx.height,
            time,
            txs: accepted,
        });
        Ok(Preparation {
            block,
            refused,
            applied: scratch,
        })
    }

    /// [`StateMachine::finalize_block`] for the block this machine prepared itself: the state
    /// the preparation left is the one applying the block again would give (the rules are
    /// deterministic, and the same transactions apply in the same order at the same height
    /// and time), so the block's transactions are not applied a second time. `None` when the
    /// preparation holds no block.
    pub fn finalize_prepared(
        &mut self,
        preparation: Preparation,
    ) -> Result<Option<FinalizedBlock>, BlockError> {
        let Some(block) = preparation.block else {
            return Ok(None);
        };
        self.check_proposal(&block)?;
        self.finalize_applied(block, preparation.applied).map(Some)
    }

    /// ProcessProposal + FinalizeBlock: applies every transaction of `block` or refuses it
    /// whole, naming the first transaction that fails. On success the log holds the new leaves
    /// and the machine waits for [`StateMachine::commit`]; the state is unchanged until then.
    ///
    /// If the block is then not committed, [`StateMachine::abandon`] takes its leaves out
    /// again (or the machine is rebuilt from storage, as `Ledger` does when storage fails).
    pub fn finalize_block(&mut self, block: ProposedBlock) -> Result<FinalizedBlock, BlockError> {
        self.check_proposal(&block)?;
        let ctx = BlockContext {
            height: block.height,
            time: block.time,
        };
        let mut next_state = self.state.clone();
        for (index, tx) in block.txs.iter().enumerate() {
            next_state
                .apply(tx, &self.chain_id, &ctx)
                .map_err(|error| BlockError::TxRefused {
                    // Bounded by MAX_TXS_PER_BLOCK.
                    index: index as u32,
                    error,
                })?;
        }
        self.finalize_applied(block, next_state)
    }

    /// What a proposed block must be before it is applied: the next height, not empty, not
    /// too large, and not earlier than the last block.
    fn check_proposal(&self, block: &ProposedBlock) -> Result<(), BlockError> {
        if self.commit_pending {
            return Err(BlockError::CommitPending);
        }
        let expected_height = self.height() + 1;
        if block.height != expected_height {
            return Err(BlockError::WrongHeight {
                expected: expected_height,
                got: block.height,
            });
        }
        if block.txs.is_empty() {
            return Err(BlockError::Empty);
        }
        if block.txs.len() > MAX_TXS_PER_BLOCK {
            return Err(BlockError::TooManyTransactions(block.txs.len()));
        }
        if block.time < self.last_time() {
            return Err(BlockError::TimeWentBackwards {
                time: block.time,
                previous: self.last_time(),
            });
        }
        Ok(())
    }

    /// Appends the leaves of `block`, whose transactions made `next_state`, and hashes it.
    fn finalize_applied(
        &mut self,
        block: ProposedBlock,
        mut next_state: State,
    ) -> Result<FinalizedBlock, BlockError> {
        for tx in &block.txs {
            self.log.push(tx.id());
        }
        self.commit_pending = true;
        let changes = next_state.take_changes();
        let header = BlockHeader {
            chain_id: self.chain_id,
            height: block.height,
            time: block.time,
            prev_block_hash: self.prev_block_hash(),
            tx_count: block.txs.len() as u32,
            tree_size: self.log.size(),
            tree_root: self.log.root(),
            state_hash: next_state.hash(),
        };
        Ok(FinalizedBlock {
            header,
            txs: block.txs,
            changes,
            next_state,
        })
    }

    /// Undoes [`StateMachine::finalize_block`] for a block that will not be committed (a
    /// replayed block whose signed header does not match): the machine is back at its last
    /// committed block.
    pub fn abandon(&mut self, block: FinalizedBlock) {
        let size = self.log.size().saturating_sub(block.txs.len() as u64);
        self.log.truncate(size);
        self.commit_pending = false;
    }

    /// Commit: checks the sequencer's signature over the finalized header and makes the new
    /// state current. Returns the signed head.
    pub fn commit(
        &mut self,
        block: FinalizedBlock,
        signature: Signature,
    ) -> Result<SignedTreeHead, BlockError> {
        let head = SignedTreeHead {
            header: block.header,
            signature,
        };
        head.verify(&self.ledger_key)?;
        self.state = block.next_state;
        self.last_head = Some(head.clone());
        self.commit_pending = false;
        tracing::debug!(
            height = head.header.height,
            txs = head.header.tx_count,
            tree_size = head.header.tree_size,
            "block committed"
        );
        Ok(head)
    }
}

/// Stored parts that do not match the last signed head.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// Blocks or state exist but no head.
    #[error("stored log or state is not covered by any signed head")]
    DataWithoutHead,
    /// The last head's signature does not verify.
    #[error("last tree head signature does not verify")]
    BadHeadSignature,
    /// The last head is for another chain.
    #[error("last tree head is for another chain")]
    WrongChain,
    /// The rebuilt log does not match the head.
    #[error("rebuilt log ({log_size} leaves) does not match the last head ({head_size} leaves)")]
    LogMismatch {
        /// Leaves according to the head.
        head_size: u64,
        /// Leaves rebuilt.
        log_size: u64,
    },
    /// The loaded state does not hash to the head's state hash.
    #[error("loaded state does not match the state hash in the last head")]
    StateMismatch,
}
