//! A verifying follower of the ledger: the node's own replica of the market's state.
//!
//! A node believes only what it can verify. The market process serves the ledger, but the
//! market's operator (who also runs the order coordinator) may be hostile, so the node does
//! not ask it "is this order real?" or "who consents now?". It replays the ledger itself:
//!
//! 1. the genesis the market serves must hash to the **chain id pinned in the node's own
//!    configuration** and name the **pinned ledger key**;
//! 2. every block is fetched with its signed tree head and its signed envelopes, and
//!    [`market::audit::Auditor`] checks it exactly as `cohortex ledger verify` does: the head's
//!    signature under the pinned key, the chain id, the hash link to the previous block, every
//!    transaction's own signature, every state rule (escrow, budgets, consent, roles, nonces),
//!    and that the recomputed RFC 6962 root and state hash equal the signed header's.
//!
//! What the node then reads (the order, its status, expiry and ε, the listings' terms and
//! `schema_hash`, the consents and personal limits) comes from that verified replica. A
//! transaction that was never appended cannot appear in it, and a block that breaks a rule
//! or a signature is refused; the replica stays at the last block that verified, and the next
//! read resumes from there.
//!
//! What a hostile market can still do is withhold the newest blocks (the node then acts on a
//! verified but older prefix: a consent revoked in a withheld block would still count, and
//! the ledger refuses the receipt only if the revocation is on the chain it extends) or, holding
//! the ledger key, show different nodes different chains. Both are visible to anyone who
//! compares signed heads (`docs/privacy.md`, threat model).

use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::{
    GetBlockRequest, GetBlockTransactionsRequest, GetGenesisRequest, GetSignedTreeHeadRequest,
};
use ed25519_dalek::VerifyingKey;
use market::audit::{AuditFailure, AuditProblem, Auditor, StoredBlock, StoredTx};
use market::log::SignedTreeHead;
use market::machine::{Genesis, StateMachine};
use market::tx::txid_of;
use market::{Hash32, Replica};
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

/// What a node pins about its ledger, from its own configuration (never from the market).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLedger {
    /// The chain id: the tagged hash of the genesis configuration.
    pub chain_id: Hash32,
    /// The key that signs tree heads.
    pub ledger_key: VerifyingKey,
}

/// Why the node could not bring its replica up to date.
#[derive(Debug, Error)]
pub enum FollowError {
    /// The market could not be reached or refused a read.
    #[error("ledger read failed: {0}")]
    Unreachable(String),
    /// The genesis served does not decode.
    #[error("the genesis the market served does not decode: {0}")]
    BadGenesis(String),
    /// The genesis served is another chain's.
    #[error("the genesis the market served is chain {served}, not the pinned chain {pinned}")]
    WrongChain {
        /// Chain id of what was served.
        served: Hash32,
        /// The pinned chain id.
        pinned: Hash32,
    },
    /// The genesis served names another ledger key.
    #[error("the genesis the market served names a ledger key other than the pinned one")]
    WrongLedgerKey,
    /// The latest head served is not signed by the pinned key, or is malformed.
    #[error("the latest tree head the market served does not verify: {0}")]
    BadHead(String),
    /// A block served does not verify.
    #[error("block {height} the market served does not verify: {reason}")]
    BadBlock {
        /// Its height.
        height: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The node's verified replica of the ledger, brought up to date on every read.
pub struct LedgerFollower {
    pinned: PinnedLedger,
    /// Where the replica is kept across restarts (`None`: in memory, replayed from genesis
    /// after a restart).
    replica_file: Option<PathBuf>,
    /// `None` until the genesis has been fetched and checked, or the stored replica reopened.
    replica: tokio::sync::Mutex<Option<Verified>>,
}

/// What the follower has verified: in memory, or in a database that survives a restart.
enum Verified {
    Memory(Box<Auditor>),
    Stored(Box<Replica>),
}

impl Verified {
    fn machine(&self) -> &StateMachine {
        match self {
            Verified::Memory(auditor) => auditor.machine(),
            Verified::Stored(replica) => replica.machine(),
        }
    }

    fn check_block(&mut self, block: StoredBlock) -> Result<(), Box<AuditFailure>> {
        match self {
            Verified::Memory(auditor) => auditor.check_block(block),
            Verified::Stored(replica) => replica.check_block(block),
        }
    }
}

fn unreachable(status: tonic::Status) -> FollowError {
    FollowError::Unreachable(format!("{}: {}", status.code(), status.message()))
}

impl LedgerFollower {
    /// A follower of the chain `pinned` names, with nothing replayed yet.
    pub fn new(pinned: PinnedLedger) -> Self {
        Self {
            pinned,
            replica_file: None,
            replica: tokio::sync::Mutex::new(None),
        }
    }

    /// A follower that keeps its replica in the database `path` and, restarted, goes on from
    /// the last block verified there (checked against its signed head and the pinned chain).
    pub fn with_replica_file(pinned: PinnedLedger, path: PathBuf) -> Self {
        Self {
            replica_file: Some(path),
            ..Self::new(pinned)
        }
    }

    /// The pinned facts.
    pub fn pinned(&self) -> &PinnedLedger {
        &self.pinned
    }

    /// Replays every block up to the latest signed head the market serves over `channel`,
    /// then runs `read` on the verified state machine.
    pub async fn sync_and_read<T>(
        &self,
        channel: Channel,
        read: impl FnOnce(&StateMachine) -> T,
    ) -> Result<T, FollowError> {
        let mut client = LedgerClient::new(channel)
            .max_decoding_message_size(cohortex_types::rpc::MAX_MESSAGE_BYTES);
        let mut guard = self.replica.lock().await;
        if guard.is_none() {
            *guard = Some(self.start(&mut client).await?);
        }
        let latest = client
            .get_signed_tree_head(GetSignedTreeHeadRequest {})
            .await
            .map_err(unreachable)?
            .into_inner();
        let latest = SignedTreeHead::try_from(latest)
            .map_err(|error| FollowError::BadHead(error.to_string()))?;
        latest
            .verify(&self.pinned.ledger_key)
            .map_err(|error| FollowError::BadHead(error.to_string()))?;
        if latest.header.chain_id != self.pinned.chain_id {
            return Err(FollowError::BadHead("another chain's head".into()));
        }
        loop {
            let Some(auditor) = guard.take() else {
                unreachable!("the replica was started above");
            };
            let height = auditor.machine().height();
            if height >= latest.header.height {
                let value = read(auditor.machine());
                *guard = Some(auditor);
                return Ok(value);
            }
            let next = height + 1;
            let first_leaf = auditor.machine().log().size();
            let block = fetch_block(&mut client, next, first_leaf).await;
            let block = match block {
                Ok(block) => block,
                Err(error) => {
                    *guard = Some(auditor);
                    return Err(error);
                }
            };
            let (auditor, checked) = tokio::task::spawn_blocking(move || {
                let mut auditor = auditor;
                let checked = auditor.check_block(block);
                (auditor, checked)
            })
            .await
            .map_err(|error| FollowError::BadBlock {
                height: next,
                reason: format!("replay worker failed: {error}"),
            })?;
            // A block that fails leaves the replica at the last verified block: the next read
            // resumes from there, not from genesis. One that verified but could not be stored
            // (another writer got there first, say) drops the replica: the next read reopens
            // it from its database.
            let not_stored = matches!(
                &checked,
                Err(failure) if matches!(failure.problem, AuditProblem::NotStored(_))
            );
            if !not_stored {
                *guard = Some(auditor);
            }
            if let Err(failure) = checked {
                tracing::warn!(height = next, %failure, "the market served a block that does not verify");
                return Err(FollowError::BadBlock {
                    height: next,
                    reason: failure.to_string(),
                });
            }
        }
    }

    /// The replica to go on from: the stored one if it reopens, verified against its last
    /// signed head and the pinned chain; otherwise one started from the genesis the market
    /// serves (stored, if the follower has a replica file).
    async fn start(&self, client: &mut LedgerClient<Channel>) -> Result<Verified, FollowError> {
        let Some(path) = self.replica_file.clone() else {
            return Ok(Verified::Memory(Box::new(self.genesis(client).await?.1)));
        };
        if path.exists() {
            let pinned = self.pinned.clone();
            let reopened = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let replica = Replica::open(&path).map_err(|error| error.to_string())?;
                    let machine = replica.machine();
                    if machine.chain_id() != pinned.chain_id
                        || machine.ledger_key() != pinned.ledger_key
                    {
                        return Err("it replicates another chain".to_string());
                    }
                    Ok(replica)
                })
                .await
                .map_err(|error| FollowError::BadGenesis(format!("replica worker: {error}")))?
            };
            match reopened {
                Ok(replica) => {
                    tracing::info!(path = %path.display(), height = replica.machine().height(), "resumed the ledger replica");
                    return Ok(Verified::Stored(Box::new(replica)));
                }
                Err(reason) => {
                    // Set aside, not deleted: someone may want to know what was in it.
                    let aside = path.with_extension("refused");
                    tracing::warn!(path = %path.display(), %reason, aside = %aside.display(), "the stored ledger replica does not verify; replaying from genesis");
                    // SQLite's write-ahead log and index go with it, or the new replica would
                    // read them.
                    for suffix in ["", "-wal", "-shm"] {
                        let mut from = path.clone().into_os_string();
                        from.push(suffix);
                        let mut to = aside.clone().into_os_string();
                        to.push(suffix);
                        if std::path::Path::new(&from).exists() {
                            std::fs::rename(&from, &to).map_err(|error| {
                                FollowError::BadGenesis(format!(
                                    "setting {} aside: {error}",
                                    std::path::Path::new(&from).display()
                                ))
                            })?;
                        }
                    }
                }
            }
        }
        let (bytes, _) = self.genesis(client).await?;
        let created = tokio::task::spawn_blocking(move || Replica::create(&path, &bytes))
            .await
            .map_err(|error| FollowError::BadGenesis(format!("replica worker: {error}")))?
            .map_err(|error| FollowError::BadGenesis(format!("creating the replica: {error}")))?;
        Ok(Verified::Stored(Box::new(created)))
    }

    /// Fetches the genesis and checks it against the pinned chain id and ledger key; returns
    /// its bytes and an auditor started from it.
    async fn genesis(
        &self,
        client: &mut LedgerClient<Channel>,
    ) -> Result<(Vec<u8>, Auditor), FollowError> {
        let bytes = client
            .get_genesis(GetGenesisRequest {})
            .await
            .map_err(unreachable)?
            .into_inner()
            .genesis;
        let genesis = Genesis::from_bytes(&bytes)
            .map_err(|error| FollowError::BadGenesis(error.to_string()))?;
        let served = genesis.chain_id();
        if served != self.pinned.chain_id {
            return Err(FollowError::WrongChain {
                served,
                pinned: self.pinned.chain_id,
            });
        }
        if genesis.ledger_key != self.pinned.ledger_key.to_bytes() {
            return Err(FollowError::WrongLedgerKey);
        }
        let auditor =
            Auditor::new(&bytes).map_err(|failure| FollowError::BadGenesis(failure.to_string()))?;
        Ok((bytes, auditor))
    }
}

/// Fetches block `height`: its signed head and every envelope, page by page.
async fn fetch_block(
    client: &mut LedgerClient<Channel>,
    height: u64,
    first_leaf: u64,
) -> Result<StoredBlock, FollowError> {
    let bad = |reason: String| FollowError::BadBlock { height, reason };
    let block = client
        .get_block(GetBlockRequest { height })
        .await
        .map_err(unreachable)?
        .into_inner();
    let head = block
        .tree_head
        .ok_or_else(|| bad("no signed tree head".into()))?;
    let head = SignedTreeHead::try_from(head).map_err(|error| bad(error.to_string()))?;
    let tx_count = head.header.tx_count;
    let mut envelopes: Vec<Vec<u8>> = Vec::new();
    let mut start = 0u32;
    while start < tx_count {
        let page = client
            .get_block_transactions(GetBlockTransactionsRequest { height, start })
            .await
            .map_err(unreachable)?
            .into_inner();
        let advanced = u32::try_from(page.envelopes.len()).unwrap_or(u32::MAX);
        if page.height != height
            || page.tx_count != tx_count
            || advanced == 0
            || page.next != start.saturating_add(advanced)
            || page.next > tx_count
        {
            return Err(bad(format!(
                "the page of transactions from position {start} does not fit the block's {tx_count}"
            )));
        }
        envelopes.extend(page.envelopes);
        start = page.next;
    }
    let txs = envelopes
        .into_iter()
        .enumerate()
        .map(|(position, bytes)| StoredTx {
            position: position as u32,
            leaf_index: first_leaf + position as u64,
            txid: txid_of(&bytes).0.as_bytes().to_vec(),
            bytes,
        })
        .collect();
    Ok(StoredBlock {
        height,
        head: head.to_bytes(),
        block_hash: head.block_hash().as_bytes().to_vec(),
        txs,
    })
}

/// Keeps a follower's replica warm: every `every`, brings it up to the market's latest head,
/// until its owner (the node) drops it. Reads still sync first; this only moves the replay of
/// a large ledger (the demo onboards tens of thousands of consents) off the first order.
pub async fn follow_in_background(
    follower: Weak<LedgerFollower>,
    market: Endpoint,
    every: Duration,
) {
    let channel = market.connect_lazy();
    loop {
        tokio::time::sleep(every).await;
        let Some(follower) = follower.upgrade() else {
            return;
        };
        match follower
            .sync_and_read(channel.clone(), |machine| machine.height())
            .await
        {
            Ok(height) => tracing::trace!(height, "ledger replica up to date"),
            Err(FollowError::Unreachable(reason)) => {
                tracing::debug!(%reason, "market unreachable; will retry")
            }
            Err(error) => tracing::warn!(%error, "ledger replica refused what the market served"),
        }
    }
}
