//! The `cohortex.v1.Ledger` service: submit a signed transaction, and read the public log.
//!
//! **Reads are public.** The ledger exists so that anyone holding its public key can audit it
//! (docs/ledger.md): tree heads, blocks, transactions, proofs and balances are served to any
//! caller without a request signature, as a certificate-transparency log serves its entries.
//! Nothing secret is on the ledger: consent and balances are public by design, and query
//! contents are only hashes. Submissions need no request signature either: a transaction is
//! self-authenticating (its envelope is signed by its signer, and the ledger checks it).
//!
//! Every answer carries what a client needs to verify it offline: proofs come with the signed
//! tree head they lead to, and blocks with their signed head.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use cohortex_proto::v1;
use cohortex_proto::v1::ledger_server::Ledger as LedgerRpc;

use super::rate::{caller_of, RateLimiter};
use super::{
    account_field, action_name, envelope_field, latest_head, ledger_error_status, read_ledger,
    submit, tx_error_status, tx_id_field, SharedLedger,
};
use crate::log::SignedTreeHead;
use crate::storage::{Ledger, LedgerError};
use crate::tx::{Action, TxId, UncheckedTx};
use crate::wire::split_hashes;

/// The Ledger service over a shared ledger.
pub struct LedgerService {
    ledger: SharedLedger,
    /// Self-registrations per client certificate (shared with the Consent service).
    registrations: Arc<RateLimiter>,
    /// Direct submissions per signing account.
    submissions: RateLimiter,
}

impl LedgerService {
    /// A service answering from `ledger`.
    pub fn new(ledger: SharedLedger) -> Self {
        LedgerService {
            ledger,
            registrations: Arc::new(RateLimiter::registrations()),
            submissions: RateLimiter::submissions(),
        }
    }

    /// The same service, counting self-registrations in `registrations` (which the Consent
    /// service counts in too).
    pub fn sharing_registrations(mut self, registrations: Arc<RateLimiter>) -> Self {
        self.registrations = registrations;
        self
    }
}

/// The signed head of block `height` and its transaction ids, or `NOT_FOUND`.
fn block_at(ledger: &Ledger, height: u64) -> Result<(SignedTreeHead, Vec<TxId>), Status> {
    let head = ledger
        .head_at(height)
        .map_err(|error| ledger_error_status(&error))?
        .ok_or_else(|| Status::not_found(format!("no block at height {height}")))?;
    let tx_ids = ledger
        .block_tx_ids(height)
        .map_err(|error| ledger_error_status(&error))?;
    Ok((head, tx_ids))
}

/// The latest head and the consistency proof to it from the tree of `from_tree_size` leaves
/// (at least 1; beyond the current size is `OUT_OF_RANGE`).
fn consistency_from(
    ledger: &Ledger,
    from_tree_size: u64,
) -> Result<(SignedTreeHead, Vec<u8>), Status> {
    let head = latest_head(ledger)?;
    if from_tree_size > head.header.tree_size {
        return Err(Status::out_of_range(format!(
            "from_tree_size {from_tree_size} is beyond the tree size {}",
            head.header.tree_size
        )));
    }
    let proof = ledger
        .consistency_proof(from_tree_size)
        .map_err(|error| ledger_error_status(&error))?;
    Ok((head, proof))
}

#[tonic::async_trait]
impl LedgerRpc for LedgerService {
    #[tracing::instrument(skip(self, request))]
    async fn submit_transaction(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        let caller = caller_of(&request);
        let envelope = envelope_field(request.into_inner())?;
        // Orders, listings and trial postings are placed through the Market service, which
        // checks them against what the ledger does not hold and starts the work.
        let unchecked =
            UncheckedTx::parse(envelope.clone()).map_err(|error| tx_error_status(&error))?;
        let action = &unchecked.body().action;
        if !action.submitted_directly() {
            return Err(Status::permission_denied(format!(
                "envelope: {} is placed through the Market service, not submitted to the ledger \
                 directly",
                action_name(action)
            )));
        }
        // Free transactions are rate-limited: self-registrations per client certificate, and
        // everything per signer, counted only once the signature verifies (so nobody can use
        // up another account's allowance with envelopes it did not sign).
        let now = std::time::Instant::now();
        let self_registration = matches!(action, Action::RegisterAccount { account, .. } if *account == unchecked.body().signer);
        let verified = unchecked
            .verify()
            .map_err(|error| tx_error_status(&error))?;
        if self_registration {
            self.registrations.admit(&caller, now)?;
        }
        self.submissions.admit(&verified.body().signer.0, now)?;
        let submitted = submit(&self.ledger, envelope).await?;
        Ok(Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_signed_tree_head(
        &self,
        _request: Request<v1::GetSignedTreeHeadRequest>,
    ) -> Result<Response<v1::SignedTreeHead>, Status> {
        let head = read_ledger(&self.ledger, latest_head).await?;
        Ok(Response::new((&head).into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_block(
        &self,
        request: Request<v1::GetBlockRequest>,
    ) -> Result<Response<v1::Block>, Status> {
        let height = request.into_inner().height;
        if height == 0 {
            return Err(Status::invalid_argument("height must be at least 1"));
        }
        let (head, tx_ids) =
            read_ledger(&self.ledger, move |ledger| block_at(ledger, height)).await?;
        Ok(Response::new(v1::Block {
            height,
            header: head.header.to_bytes().to_vec(),
            tx_ids: tx_ids.iter().map(|id| id.0.as_bytes().to_vec()).collect(),
            tree_head: Some((&head).into()),
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_transaction(
        &self,
        request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::TransactionRecord>, Status> {
        let tx_id = tx_id_field(&request.get_ref().tx_id, "tx_id")?;
        let record = read_ledger(&self.ledger, move |ledger| {
            ledger
                .transaction(&tx_id)
                .and_then(|found| found.ok_or(LedgerError::UnknownTransaction(tx_id)))
                .map_err(|error| ledger_error_status(&error))
        })
        .await?;
        Ok(Response::new(v1::TransactionRecord {
            envelope: record.envelope,
            height: record.height,
            leaf_index: record.leaf_index,
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_inclusion_proof(
        &self,
        request: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::InclusionProof>, Status> {
        let tx_id = tx_id_field(&request.get_ref().tx_id, "tx_id")?;
        let receipt = read_ledger(&self.ledger, move |ledger| {
            ledger
                .receipt(&tx_id)
                .map_err(|error| ledger_error_status(&error))
        })
        .await?;
        Ok(Response::new((&receipt).into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::ConsistencyProof>, Status> {
        let from_tree_size = request.into_inner().from_tree_size;
        if from_tree_size == 0 {
            return Err(Status::invalid_argument(
                "from_tree_size must be at least 1",
            ));
        }
        let consistency = read_ledger(&self.ledger, move |ledger| {
            consistency_from(ledger, from_tree_size)
        });
        let (head, proof) = consistency.await?;
        Ok(Response::new(v1::ConsistencyProof {
            from_tree_size,
            to_tree_size: head.header.tree_size,
            hashes: split_hashes(&proof),
            tree_head: Some((&head).into()),
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_balance(
        &self,
        request: Request<v1::GetBalanceRequest>,
    ) -> Result<Response<v1::Balance>, Status> {
        let account = account_field(&request.get_ref().account, "account")?;
        let available = read_ledger(&self.ledger, move |ledger| {
            ledger
                .state()
                .account(&account)
                .map(|found| found.balance)
                .ok_or_else(|| Status::not_found(format!("unknown account {account}")))
        })
        .await?;
        Ok(Response::new(v1::Balance { available }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_account(
        &self,
        request: Request<v1::GetAccountRequest>,
    ) -> Result<Response<v1::AccountRecord>, Status> {
        let account = account_field(&request.get_ref().account, "account")?;
        let found = read_ledger(&self.ledger, move |ledger| {
            ledger.state().account(&account).cloned().ok_or_else(|| {
                Status::not_found(format!(
                    "account: {account} is not registered on the ledger"
                ))
            })
        })
        .await?;
        Ok(Response::new(v1::AccountRecord {
            role: account_role(found.role) as i32,
            next_nonce: found.next_nonce,
            balance: found.balance,
        }))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_genesis(
        &self,
        _request: Request<v1::GetGenesisRequest>,
    ) -> Result<Response<v1::GenesisRecord>, Status> {
        let genesis = read_ledger(&self.ledger, |ledger| {
            Ok(ledger.machine().genesis().to_bytes())
        })
        .await?;
        Ok(Response::new(v1::GenesisRecord { genesis }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_block_transactions(
        &self,
        request: Request<v1::GetBlockTransactionsRequest>,
    ) -> Result<Response<v1::BlockTransactions>, Status> {
        let v1::GetBlockTransactionsRequest { height, start } = request.into_inner();
        if height == 0 {
            return Err(Status::invalid_argument("height must be at least 1"));
        }
        let page = read_ledger(&self.ledger, move |ledger| {
            ledger
                .block_envelopes(height, start, BLOCK_PAGE_BYTES)
                .map_err(|error| ledger_error_status(&error))?
                .ok_or_else(|| Status::not_found(format!("no block at height {height}")))
        })
        .await?;
        let crate::storage::BlockPage {
            envelopes,
            next,
            tx_count,
        } = page;
        if start > tx_count {
            return Err(Status::out_of_range(format!(
                "start {start} is beyond the block's {tx_count} transactions"
            )));
        }
        Ok(Response::new(v1::BlockTransactions {
            height,
            envelopes,
            next,
            tx_count,
        }))
    }
}

/// About how many envelope bytes one `GetBlockTransactions` answer carries: half the message
/// limit, so that a page always fits.
const BLOCK_PAGE_BYTES: usize = super::MAX_MESSAGE_BYTES / 2;

/// The wire form of a ledger role.
fn account_role(role: crate::Role) -> v1::AccountRole {
    use crate::Role;
    match role {
        Role::Patient => v1::AccountRole::Patient,
        Role::Buyer => v1::AccountRole::Buyer,
        Role::ComputeNode => v1::AccountRole::ComputeNode,
        Role::CommitteeMember => v1::AccountRole::CommitteeMember,
        Role::Auditor => v1::AccountRole::Auditor,
        Role::Issuer => v1::AccountRole::Issuer,
        Role::Fund => v1::AccountRole::Fund,
    }
}
